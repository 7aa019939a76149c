//! Scenarios: a test engineer's script of timed steps (spawn, stop, fault, clear, update,
//! pause, resume, log, phase), phases and pass/fail thresholds, in sim time.
//!
//! The user writes intent (`at`, `repeat`, `over`, `batches`, `{i}` templates); [`load`] checks
//! it all at once against the fleet (profiles exist, selectors parse, fault types and parameters
//! go through the same validation as gRPC's `InjectFault`) and compiles it into the shard's
//! [`Timeline`]: a list of `TimedCue`s sorted by sim-time offset, whose selections and actions
//! are the shard's own command types. Every shard gets the same timeline (an
//! `Arc`) and, before it ticks the devices due at sim time `t`, applies every cue with
//! `at <= t` to its own devices, through the same command code as gRPC. Nothing here reads a
//! clock: the timeline is a pure function of the files.
//!
//! A scenario file may also hold fleet-file tables (`[run]`, `[sink.*]`, `[profiles.*]`,
//! `[[fleet]]`), merged onto the fleet file given with `--config` (the scenario's keys win in
//! `[run]` and `[sink.*]`; a profile defined in both is an error).

mod parse;

use crate::config::{Config, ConfigError, Overrides};
use crate::shard::timeline::{Phase, Script, Timeline};
use crate::threshold::Threshold;
use crate::walk::Problems;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A validated, compiled scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    /// Sim time the run lasts, ms (the file's `duration`, else the end of the last step).
    pub duration_ms: u64,
    /// Steps as written in the file.
    pub steps: usize,
    pub(crate) timeline: Arc<Timeline>,
    pub phases: Vec<Phase>,
    /// The scenario's own thresholds (the fleet file's are in [`Config::thresholds`]).
    pub thresholds: Vec<Threshold>,
    /// Every profile's table as written, by profile name (a remote run sends the fields as a
    /// spec's `behavior_params`).
    pub profile_sources: BTreeMap<String, Arc<toml::Table>>,
}

impl Scenario {
    /// What every shard gets: the name, the timeline (shared) and the phases.
    pub(crate) fn script(&self) -> Script {
        Script {
            name: self.name.clone(),
            timeline: self.timeline.clone(),
            phases: self.phases.clone(),
            spawn_order: Arc::default(),
        }
    }

    /// The phase that sim-time offset `t_ms` falls in, if any.
    pub fn phase_at(phases: &[Phase], t_ms: u64) -> Option<usize> {
        let i = phases.partition_point(|p| p.start_ms <= t_ms);
        (i > 0 && t_ms < phases[i - 1].end_ms).then(|| i - 1)
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid scenario {path}: {problems}")]
    Invalid { path: PathBuf, problems: Problems },
    #[error("{0}")]
    Fleet(#[from] ConfigError),
}

/// Reads a scenario (on top of the fleet file `fleet`, if given), validates and compiles it;
/// returns the merged config (overrides applied; `[run] duration` set from the scenario unless
/// `--duration` was given) and the scenario.
pub fn load(
    path: &Path,
    fleet: Option<&Path>,
    overrides: &Overrides,
) -> Result<(Config, Scenario), ScenarioError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ScenarioError::Io { path: path.into(), source })?;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| ScenarioError::Syntax {
        path: path.into(),
        message: e.to_string().trim().to_string(),
    })?;
    let fleet_doc = match fleet {
        Some(f) => {
            // The fleet file must be valid on its own (its problems name it); it may leave the
            // devices to the scenario (no `[[fleet]]`), as a `serve` fleet file may.
            crate::config::load_with(f, &Overrides::default(), true)?;
            let t = std::fs::read_to_string(f)
                .map_err(|source| ConfigError::Io { path: f.into(), source })?;
            let d: toml::Table = t.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: f.into(),
                message: e.to_string().trim().to_string(),
            })?;
            Some((f, d))
        }
        None => None,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let (mut config, scenario) = parse::compile(path, &doc, base, fleet_doc)
        .map_err(|problems| ScenarioError::Invalid { path: path.into(), problems })?;
    config.run.duration_ms = Some(scenario.duration_ms);
    config.run.scenario = Some(path.to_path_buf());
    crate::config::apply(&mut config.run, overrides);
    Ok((config, scenario))
}

/// What `scenario list` shows of one file (read without validating it against a fleet).
#[derive(Clone, Debug)]
pub struct Summary {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    /// The `duration` as written, or the end of the last step when the file can be compiled
    /// on its own.
    pub duration: String,
    pub steps: usize,
    pub thresholds: usize,
    /// Set when the file is not valid TOML.
    pub error: Option<String>,
}

/// Summaries of the `*.toml` files in `dir`, sorted by file name.
pub fn list(dir: &Path) -> std::io::Result<Vec<Summary>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|p| summary(&p)).collect())
}

fn summary(path: &Path) -> Summary {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut s = Summary {
        path: path.to_path_buf(),
        name: stem,
        description: String::new(),
        duration: "-".into(),
        steps: 0,
        thresholds: 0,
        error: None,
    };
    let doc: toml::Table = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| t.parse().map_err(|e: toml::de::Error| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            s.error = Some(e.lines().next().unwrap_or("").to_string());
            return s;
        }
    };
    let get = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
    s.name = get("name").unwrap_or(s.name);
    s.description = get("description").unwrap_or_default();
    s.steps = doc.get("step").and_then(|v| v.as_array()).map_or(0, Vec::len);
    s.thresholds = doc.get("threshold").and_then(|v| v.as_array()).map_or(0, Vec::len);
    s.duration = match get("duration") {
        Some(d) => d,
        None => match load(path, None, &Overrides::default()) {
            Ok((_, sc)) => crate::sim::time::format_duration_ms(sc.duration_ms),
            Err(_) => "-".into(),
        },
    };
    s
}

#[cfg(test)]
mod tests;
