//! `iot-sim report ...`: work on finished runs' reports.

use super::exit;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Compare two report.json files row by row (throughput, errors, p50/p99/p99.9/max with %
    /// change; regressions flagged) and write compare.html with both latency distributions.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The baseline report.json.
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The report.json to judge against it.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// Where the HTML comparison goes.
    #[arg(long, value_name = "PATH", default_value = "compare.html")]
    pub out: PathBuf,
}

pub fn main(cmd: &ReportCmd) -> anyhow::Result<i32> {
    match cmd {
        ReportCmd::Compare(a) => compare(a),
    }
}

fn compare(a: &CompareArgs) -> anyhow::Result<i32> {
    use crate::report::compare;
    let loaded = compare::load(&a.old).and_then(|o| Ok((o, compare::load(&a.new)?)));
    let (old, new) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::BAD_CONFIG);
        }
    };
    let c = compare::compare(&a.old, &old, &a.new, &new);
    print!("{}", compare::render(&c));
    if let Err(e) = std::fs::write(&a.out, crate::report::html::compare(&c)) {
        eprintln!("error: cannot write {}: {e}", a.out.display());
        return Ok(exit::BAD_CONFIG);
    }
    eprintln!("compare: {}", a.out.display());
    Ok(exit::OK)
}
