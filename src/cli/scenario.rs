//! `iot-sim scenario run|validate|list`.

use super::{RunArgs, exit, remote, run_options, verdict_code};
use crate::config::Overrides;
use crate::scenario::{self, ScenarioError};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum ScenarioCmd {
    /// Run a scenario on a fleet (--config) or on its own profiles; exit 3 if a threshold fails.
    Run(Box<ScenarioRunArgs>),
    /// Check a scenario against its fleet without running it; lists every problem.
    Validate(ScenarioValidateArgs),
    /// List the scenarios in a folder: name, description, sim duration, steps.
    List(ScenarioListArgs),
}

#[derive(Args, Debug)]
pub struct ScenarioRunArgs {
    /// The scenario file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
    /// Drive runtimes that are already serving (host:port or dns:///name:port, comma
    /// separated) over gRPC, in realtime, instead of running the fleet in this process.
    #[arg(short, long, value_name = "HOST:PORT", value_delimiter = ',')]
    pub runtime: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ScenarioValidateArgs {
    /// The scenario file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The fleet file the scenario runs on.
    #[arg(short, long, value_name = "FLEET")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ScenarioListArgs {
    /// The folder to list.
    #[arg(value_name = "DIR", default_value = "scenarios")]
    pub dir: PathBuf,
}

pub fn main(cmd: &ScenarioCmd) -> anyhow::Result<i32> {
    match cmd {
        ScenarioCmd::Run(a) if !a.runtime.is_empty() => run_remote(a),
        ScenarioCmd::Run(a) => run_local(&a.file, a.run.config.as_deref(), &a.run),
        ScenarioCmd::Validate(a) => validate(&a.file, a.config.as_deref()),
        ScenarioCmd::List(a) => list(&a.dir),
    }
}

fn load(
    file: &Path,
    fleet: Option<&Path>,
    o: &Overrides,
) -> Result<(crate::config::Config, scenario::Scenario), i32> {
    scenario::load(file, fleet, o).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            ScenarioError::Io { .. }
            | ScenarioError::Syntax { .. }
            | ScenarioError::Invalid { .. }
            | ScenarioError::Fleet(_) => exit::BAD_CONFIG,
        }
    })
}

/// Runs a scenario in this process, on `fleet` (if given) with the flags in `args`.
pub fn run_local(file: &Path, fleet: Option<&Path>, args: &RunArgs) -> anyhow::Result<i32> {
    let (config, sc) = match load(file, fleet, &args.overrides()) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let opts = run_options(args, args.grpc, false, Some(Arc::new(sc)));
    let report = crate::run::run(config, &opts)
        .with_context(|| format!("scenario {} failed", file.display()))?;
    Ok(verdict_code(&report))
}

fn run_remote(a: &ScenarioRunArgs) -> anyhow::Result<i32> {
    let (config, sc) = match load(&a.file, a.run.config.as_deref(), &a.run.overrides()) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    if matches!(a.run.clock, Some(super::ClockArg::Virtual)) {
        eprintln!(
            "error: a remote run is realtime (the runtimes serve in realtime); drop --clock virtual or --runtime"
        );
        return Ok(exit::BAD_CONFIG);
    }
    let thresholds: Vec<_> = config.thresholds.iter().chain(&sc.thresholds).cloned().collect();
    let bad = remote::unsupported(&thresholds);
    if !bad.is_empty() {
        eprintln!("error: invalid scenario {} for a remote run:", a.file.display());
        for b in bad {
            eprintln!("  - {b}");
        }
        return Ok(exit::BAD_CONFIG);
    }
    // A `dns:///` name that resolves to nothing is bad input (exit 2), found before any step.
    if let Err(e) = crate::control::client::resolve(&a.runtime) {
        eprintln!("error: {e}");
        return Ok(exit::BAD_CONFIG);
    }
    let report = remote::run(&sc, &config, &thresholds, &a.runtime, a.run.quiet)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("remote scenario {} failed", a.file.display()))?;
    print!("{}", remote::render(&report));
    let dir = &config.run.report_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("report: {}", path.display());
    Ok(if report.thresholds.iter().any(|v| !v.passed) { exit::THRESHOLD_FAILED } else { exit::OK })
}

fn validate(file: &Path, fleet: Option<&Path>) -> anyhow::Result<i32> {
    let (config, sc) = match load(file, fleet, &Overrides::default()) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    println!(
        "{}: ok — scenario {:?}: {} steps -> {} actions over {}, {} phase(s), {} threshold(s); fleet: {} devices, {} profile(s)",
        file.display(),
        sc.name,
        sc.steps,
        sc.timeline.len(),
        crate::sim::time::format_duration_ms(sc.duration_ms),
        sc.phases.len(),
        sc.thresholds.len() + config.thresholds.len(),
        config.fleet.device_count(),
        config.fleet.profiles.len()
    );
    Ok(exit::OK)
}

fn list(dir: &Path) -> anyhow::Result<i32> {
    let all = scenario::list(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    if all.is_empty() {
        println!("no scenarios (*.toml) in {}", dir.display());
        return Ok(exit::OK);
    }
    println!("{:<20} {:>10} {:>6} {:>11}  description", "name", "duration", "steps", "thresholds");
    for s in all {
        match &s.error {
            Some(e) => println!("{:<20} (not valid TOML: {e}) {}", s.name, s.path.display()),
            None => println!(
                "{:<20} {:>10} {:>6} {:>11}  {}",
                s.name, s.duration, s.steps, s.thresholds, s.description
            ),
        }
    }
    Ok(exit::OK)
}
