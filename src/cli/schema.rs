//! `iot-sim schema`: the JSON Schema of the fleet files (or scenario or profile files), for
//! editors. `iot-sim schema > fleet.schema.json`, then `#:schema ./fleet.schema.json` at the
//! top of a fleet file (Taplo, Even Better TOML): docs/src/editor.md.

use super::exit;
use crate::config::schema::{File, render};
use clap::Args;
use std::io::Write;

#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// The schema of scenario files (`iot-sim scenario run FILE`).
    #[arg(long, conflicts_with = "profile")]
    pub scenario: bool,
    /// The schema of profile files (`[[fleet]] profile = "profiles/x.toml"`).
    #[arg(long)]
    pub profile: bool,
}

impl SchemaArgs {
    pub fn file(&self) -> File {
        match (self.scenario, self.profile) {
            (true, _) => File::Scenario,
            (_, true) => File::Profile,
            _ => File::Fleet,
        }
    }
}

/// Prints the schema to stdout.
pub fn main(a: &SchemaArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    out.write_all(render(a.file()).as_bytes())?;
    out.flush()?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<File, clap::Error> {
        match Cli::try_parse_from(args)?.command {
            Some(Command::Schema(a)) => Ok(a.file()),
            other => panic!("not the schema command: {other:?}"),
        }
    }

    #[test]
    fn schema_takes_scenario_or_profile() {
        assert_eq!(parse(&["iot-sim", "schema"]).unwrap(), File::Fleet);
        assert_eq!(parse(&["iot-sim", "schema", "--scenario"]).unwrap(), File::Scenario);
        assert_eq!(parse(&["iot-sim", "schema", "--profile"]).unwrap(), File::Profile);
        assert!(parse(&["iot-sim", "schema", "--scenario", "--profile"]).is_err());
    }
}
