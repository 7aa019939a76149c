//! Configuration: the fleet file (TOML) -> a validated [`Config`].
//!
//! Reading goes through [`crate::walk`], which collects **every** problem with its TOML path and the
//! bad value, so a user fixes a file in one pass. Relative `[sink.*]` paths and `report_dir`
//! are relative to the working directory; profile files named by `fleet[].profile` are
//! relative to the fleet file's folder.

pub mod audit;
mod behaviour;
pub mod env;
pub mod format;
pub mod identity;
pub mod keys;
mod mqtt5;
pub mod mqtt_sessions;
pub mod preset;
mod replay;
pub mod schema;
pub mod sinks;
pub mod token;

use crate::limits;
use crate::sim::generator::{Brownian, GenSpec, Markov};
use crate::sim::payload;
use crate::sim::profile::{self, FieldSpec, Fleet, Group, Profile, Protocol, TopicTemplate};
use crate::sim::time::{LAST_SIM_MS, SimMs, check_span, parse_rfc3339};
use crate::walk::{Problems, Table, join, show, type_name};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Value;

/// The longest interval accepted (devices keep it in a `u32` of milliseconds).
pub const MAX_INTERVAL_MS: u64 = 30 * 86_400_000;
/// The most devices one fleet entry may ask for.
pub const MAX_COUNT: i64 = 100_000_000;

/// How sim time relates to wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// Sim time follows the wall clock, scaled by `speed`.
    Realtime,
    /// No sleeping: each shard jumps to its next event.
    Virtual,
}

impl ClockMode {
    pub fn parse(s: &str) -> Option<ClockMode> {
        match s {
            "realtime" => Some(ClockMode::Realtime),
            "virtual" => Some(ClockMode::Virtual),
            _ => None,
        }
    }
}

/// The `[run]` table.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub seed: Option<u64>,
    pub cores: Option<usize>,
    pub clock: ClockMode,
    pub speed: f64,
    pub start_ms: Option<SimMs>,
    pub duration_ms: Option<u64>,
    pub report_dir: PathBuf,
    pub progress_interval_ms: u64,
    /// `[run] timer_slack`: a realtime shard sleeps at least this long between wake-ups, on top
    /// of its default wake-up grid and light-load budget (`shard/pace.rs`; 0 = those alone).
    /// Messages keep their intended times; what waits is measured as latency and tick lateness.
    pub timer_slack_ms: u64,
    /// `[run] pin`: pin each shard's thread to its core (default). `false` leaves the threads
    /// to the scheduler: better when a broker or other busy processes share the cores.
    pub pin: bool,
    /// `[run] scenario = "path"`: a scenario file to run on this fleet (relative to the fleet
    /// file's folder).
    pub scenario: Option<PathBuf>,
    /// `[run] journal_max_bytes`: the bound of the session journal (`REPORT_DIR/journal.jsonl`,
    /// written while gRPC or the admin API is on); 0 = no journal.
    pub journal_max_bytes: u64,
}

/// The default bound of the session journal (64 MiB).
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 64 << 20;

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            seed: None,
            cores: None,
            clock: ClockMode::Realtime,
            speed: 1.0,
            start_ms: None,
            duration_ms: None,
            report_dir: PathBuf::from("iot-sim-report"),
            progress_interval_ms: 5000,
            timer_slack_ms: 0,
            pin: true,
            scenario: None,
            journal_max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
        }
    }
}

pub use sinks::{AmqpSettings, Backoff, CoapSettings, HttpSettings, MqttSettings, SinkSettings};

/// A validated fleet file.
#[derive(Clone, Debug)]
pub struct Config {
    pub run: RunSettings,
    pub sinks: SinkSettings,
    pub fleet: Fleet,
    /// `[[threshold]]`: pass/fail bounds judged at the end of the run (exit code 3).
    pub thresholds: Vec<crate::threshold::Threshold>,
    /// `[audit]` (or `--audit`): the delivery audit run next to the fleet.
    pub audit: Option<audit::AuditSettings>,
}

/// Command-line values that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub seed: Option<u64>,
    pub cores: Option<usize>,
    pub duration_ms: Option<u64>,
    pub clock: Option<ClockMode>,
    pub speed: Option<f64>,
    pub report_dir: Option<PathBuf>,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid config {path}: {problems}")]
    Invalid { path: PathBuf, problems: Problems },
}

/// Reads, validates and compiles a fleet file, then applies the overrides.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    load_with(path, overrides, false)
}

/// [`load`]; with `fleet_optional` the file may have no `[[fleet]]` (see [`parse_str`]).
pub fn load_with(
    path: &Path,
    overrides: &Overrides,
    fleet_optional: bool,
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Io { path: path.into(), source })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let vars = env::process_vars();
    let mut config = parse_str_with(&text, base, fleet_optional, &vars).map_err(|e| match e {
        ParseError::Syntax(message) => ConfigError::Syntax { path: path.into(), message },
        ParseError::Invalid(problems) => ConfigError::Invalid { path: path.into(), problems },
    })?;
    apply(&mut config.run, overrides);
    if let (Some(start), Some(_)) = (config.run.start_ms, overrides.duration_ms)
        && let Err(e) = check_span(start, config.run.duration_ms)
    {
        let mut problems = Problems::default();
        problems.add("--duration", e);
        return Err(ConfigError::Invalid { path: path.into(), problems });
    }
    Ok(config)
}

/// The default fleet built into the binary (`configs/fleet.toml`), used by `iot-sim run`
/// without `--config`.
pub const DEFAULT_FLEET: &str = include_str!("../../configs/fleet.toml");
/// How the built-in fleet is named in messages.
pub const DEFAULT_FLEET_NAME: &str = "<built-in configs/fleet.toml>";

/// Loads the built-in default fleet ([`DEFAULT_FLEET`]); relative paths in it (its file
/// sink's output) resolve against the current directory.
pub fn load_default(overrides: &Overrides) -> Result<Config, ConfigError> {
    let path = Path::new(DEFAULT_FLEET_NAME);
    let vars = env::process_vars();
    let mut config =
        parse_str_with(DEFAULT_FLEET, Path::new("."), false, &vars).map_err(|e| match e {
            ParseError::Syntax(message) => ConfigError::Syntax { path: path.into(), message },
            ParseError::Invalid(problems) => ConfigError::Invalid { path: path.into(), problems },
        })?;
    apply(&mut config.run, overrides);
    Ok(config)
}

/// How a configuration made of the environment and flags alone (no file) is named.
pub const NO_FILE_NAME: &str = "<no --config: defaults, environment, flags>";

/// The configuration of `serve` without `--config`: no devices, `[run]` and `[sink.*]` from
/// the environment ([`env`]), then the overrides.
pub fn load_empty(overrides: &Overrides) -> Result<Config, ConfigError> {
    let path = Path::new(NO_FILE_NAME);
    let mut config =
        compile_with_env(&toml::Table::new(), Path::new("."), true, &env::process_vars())
            .map_err(|problems| ConfigError::Invalid { path: path.into(), problems })?;
    apply(&mut config.run, overrides);
    Ok(config)
}

/// Applies command-line overrides.
pub fn apply(run: &mut RunSettings, o: &Overrides) {
    if o.seed.is_some() {
        run.seed = o.seed;
    }
    if o.cores.is_some() {
        run.cores = o.cores;
    }
    if o.duration_ms.is_some() {
        run.duration_ms = o.duration_ms;
    }
    if let Some(c) = o.clock {
        run.clock = c;
    }
    if let Some(s) = o.speed {
        run.speed = s;
    }
    if let Some(d) = &o.report_dir {
        run.report_dir = d.clone();
    }
}

/// A TOML text that failed.
#[derive(Debug)]
pub enum ParseError {
    Syntax(String),
    Invalid(Problems),
}

/// Parses and validates a fleet file's text; `base` resolves profile file paths.
/// No environment layer: the text alone.
#[cfg(test)]
pub fn parse_str(text: &str, base: &Path) -> Result<Config, ParseError> {
    parse_str_with(text, base, false, &[])
}

/// [`parse_str`]; with `fleet_optional` a file without `[[fleet]]` is a runtime with no
/// devices yet (`serve`: devices come from spawn requests).
/// `vars` are the environment layer's `IOT_SIM_*` variables ([`env`]).
fn parse_str_with(
    text: &str,
    base: &Path,
    fleet_optional: bool,
    vars: &[(String, String)],
) -> Result<Config, ParseError> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ParseError::Syntax(e.to_string().trim().to_string()))?;
    compile_with_env(&doc, base, fleet_optional, vars).map_err(ParseError::Invalid)
}

/// Compiles a parsed fleet document with the process's environment layer over it.
/// `fleet_optional` is true for `serve` and for a scenario, which may start from an empty
/// fleet and spawn every device itself.
pub fn compile_doc(
    doc: &toml::Table,
    base: &Path,
    fleet_optional: bool,
) -> Result<Config, Problems> {
    compile_with_env(doc, base, fleet_optional, &env::process_vars())
}

/// [`compile_doc`] with the given `IOT_SIM_*` variables laid over the document's `[run]` and
/// `[sink.*]` tables; problems with a value from a variable name the variable.
pub fn compile_with_env(
    doc: &toml::Table,
    base: &Path,
    fleet_optional: bool,
    vars: &[(String, String)],
) -> Result<Config, Problems> {
    let mut layered = doc.clone();
    let applied = env::overlay(&mut layered, vars);
    // A preset fills what the file and the environment leave out (explicit keys win).
    let mut problems = Problems::default();
    preset::expand(&mut layered, &mut problems);
    let compiled = compile_file_doc(&layered, base, fleet_optional);
    let mut p = match compiled {
        Ok(c) if problems.is_empty() => return Ok(c),
        Ok(_) => problems,
        Err(p) => {
            problems.0.extend(p.0);
            problems
        }
    };
    if !applied.is_empty() {
        env::name_vars(&mut p, &applied);
    }
    Err(p)
}

fn compile_file_doc(
    doc: &toml::Table,
    base: &Path,
    fleet_optional: bool,
) -> Result<Config, Problems> {
    let mut p = Problems::default();
    let config = format::with_base(base, || compile(doc, base, fleet_optional, &mut p));
    match config {
        Some(c) if p.is_empty() => Ok(c),
        _ => Err(p),
    }
}

fn compile(
    doc: &toml::Table,
    base: &Path,
    fleet_optional: bool,
    p: &mut Problems,
) -> Option<Config> {
    let mut top = Table::new("", doc);
    let mut run = top.table("run", p).map(|t| compile_run(t, p)).unwrap_or_default();
    if let Some(s) = &run.scenario {
        run.scenario = Some(base.join(s));
    }
    let sinks = top.table("sink", p).map(|t| sinks::compile(t, p)).unwrap_or_default();

    // Profiles defined inline, in name order (BTreeMap-like: toml::Table keeps order, so sort).
    let mut profiles: Vec<Profile> = vec![];
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(pt) = top.table("profiles", p) {
        let mut names: Vec<&String> = pt.table.keys().collect();
        names.sort();
        for name in names {
            let path = join(&pt.path, name);
            if let Err(e) = limits::check_name("profile name", name) {
                p.add(path, e);
                continue;
            }
            if let Some(t) = Table::from_value(path, &pt.table[name.as_str()], p)
                && let Some(prof) = compile_profile_in(name, t, p, false, Some(base))
            {
                by_name.insert(name.clone(), profiles.len());
                profiles.push(prof);
            }
        }
    }

    let mut groups: Vec<Group> = vec![];
    let mut next_ordinal: BTreeMap<usize, u64> = BTreeMap::new();
    match top.get("fleet") {
        None if fleet_optional => {}
        None => {
            p.add("fleet", "missing: add at least one [[fleet]] entry (profile = ..., count = ...)")
        }
        Some(Value::Array(entries)) if entries.is_empty() && !fleet_optional => {
            p.add("fleet", "must list at least one entry")
        }
        Some(Value::Array(entries)) => {
            for (i, e) in entries.iter().enumerate() {
                let path = format!("fleet[{i}]");
                let Some(mut t) = Table::from_value(path, e, p) else { continue };
                let profile_ix = match t.req_str("profile", p) {
                    Some(name) if name.ends_with(".toml") || name.contains('/') => {
                        load_profile_file(
                            &t.path_of("profile"),
                            name,
                            base,
                            &mut profiles,
                            &mut by_name,
                            p,
                        )
                    }
                    Some(name) => match by_name.get(name) {
                        Some(ix) => Some(*ix),
                        None if doc.get("profiles").and_then(|v| v.get(name)).is_some() => None,
                        None => {
                            let known: Vec<&str> = by_name.keys().map(String::as_str).collect();
                            p.add(
                                t.path_of("profile"),
                                format!(
                                    "unknown profile {name:?}; defined profiles: {}",
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            );
                            None
                        }
                    },
                    None => None,
                };
                let replay =
                    profile_ix.and_then(|ix| profiles[ix].replay.as_ref().map(|r| (ix, r)));
                if let Some((ix, _)) = replay
                    && next_ordinal.contains_key(&ix)
                {
                    p.add(
                        t.path_of("profile"),
                        format!(
                            "replay profile {:?} is in an earlier fleet entry: its devices are one \
                             entry",
                            profiles[ix].name
                        ),
                    );
                }
                let count = match t.get("count") {
                    None if replay.is_some() => replay.map(|r| r.1.device_count()),
                    Some(Value::Integer(n))
                        if replay.is_some_and(|(_, r)| *n as u64 != r.device_count()) =>
                    {
                        let r = replay.map(|x| x.1).expect("checked by the guard");
                        p.add(
                            t.path_of("count"),
                            format!(
                                "the replay has {} devices ({}), got {n}; leave count out",
                                r.device_count(),
                                match (r.layout.has_device, r.devices) {
                                    (_, Some(_)) => "replay.devices".to_string(),
                                    (true, None) => format!(
                                        "one per value of column {:?}",
                                        r.layout.columns[1]
                                    ),
                                    (false, None) => "no device column: one".to_string(),
                                }
                            ),
                        );
                        None
                    }
                    None => {
                        p.add(t.path_of("count"), "missing: the number of devices is required");
                        None
                    }
                    Some(Value::Integer(n)) if (1..=MAX_COUNT).contains(n) => Some(*n as u64),
                    Some(Value::Integer(n)) => {
                        p.add(
                            t.path_of("count"),
                            format!("must be between 1 and {MAX_COUNT}, got {n}"),
                        );
                        None
                    }
                    Some(v) => {
                        p.add(
                            t.path_of("count"),
                            format!("expected an integer, got {} {}", type_name(v), show(v)),
                        );
                        None
                    }
                };
                let labels = labels(&mut t, p);
                let labels_path = t.path_of("labels");
                t.finish_with(&keys::FLEET_ENTRY.names(), p);
                if let (Some(ix), Some(count)) = (profile_ix, count) {
                    let prof = &profiles[ix];
                    let mut merged = prof.labels.clone();
                    merged.extend(labels);
                    merged.insert("device_type".into(), prof.device_type.clone());
                    if let Err(e) = limits::check_label_count(merged.len()) {
                        p.add(
                            labels_path.clone(),
                            format!("{e} (with the profile's labels and device_type)"),
                        );
                    }
                    if let Some(missing) = missing_topic_label(&prof.topic, &merged) {
                        p.add(
                            labels_path.clone(),
                            format!(
                                "the topic {:?} of profile {:?} uses {{labels.{missing}}}, which \
                                 these devices do not have (their labels: {})",
                                prof.topic.source,
                                prof.name,
                                merged.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                    format::check_sample(&mut profiles[ix], &merged, p);
                    if profiles[ix].format.sparkplug().is_some() {
                        let g = Group {
                            profile: ix,
                            count,
                            first_ordinal: *next_ordinal.get(&ix).unwrap_or(&0),
                            labels_json: String::new(),
                            labels: merged.clone(),
                            ids: vec![],
                        };
                        let mut id = String::new();
                        g.device_id(&profiles[ix], 0, &mut id);
                        format::check_sparkplug(&profiles[ix], &merged, &labels_path, &id, p);
                    }
                    let first = next_ordinal.entry(ix).or_insert(0);
                    groups.push(Group {
                        profile: ix,
                        count,
                        first_ordinal: *first,
                        labels_json: profile::labels_json(&merged),
                        labels: merged,
                        ids: vec![],
                    });
                    *first += count;
                }
            }
        }
        Some(v) => p.add(
            "fleet",
            format!("expected an array of tables ([[fleet]]), got {} {}", type_name(v), show(v)),
        ),
    }

    for prof in &profiles {
        // The HTTP sink reads `{device_id}` for its endpoint from the payload's first key.
        let endpoint =
            prof.delivery.endpoint.as_deref().or(sinks.http.as_ref().map(|h| h.endpoint.as_str()));
        if prof.protocol == Protocol::Http
            && endpoint.is_some_and(|e| e.contains("{device_id}"))
            && !prof.format.leads_with_device_id()
        {
            p.add(
                format!("profiles.{}.format", prof.name),
                format!(
                    "the HTTP endpoint {:?} uses {{device_id}}, which the sink reads from an \
                     envelope or flat payload (id_key = \"device_id\") only, not from format {:?}",
                    endpoint.unwrap_or_default(),
                    prof.format.name()
                ),
            );
        }
        let used = groups.iter().any(|g| profiles[g.profile].name == prof.name);
        let missing = match prof.protocol {
            Protocol::Mqtt => sinks.mqtt.is_none(),
            Protocol::Amqp => sinks.amqp.is_none(),
            Protocol::Http => sinks.http.is_none(),
            Protocol::Coap => sinks.coap.is_none(),
            _ => false,
        };
        if used
            && missing
            && !p.0.iter().any(|q| q.path.starts_with(&format!("sink.{}", prof.protocol)))
        {
            p.add(
                format!("sink.{}", prof.protocol),
                format!(
                    "missing: profile {:?} publishes over {}, so [sink.{}] is needed",
                    prof.name, prof.protocol, prof.protocol
                ),
            );
        }
        if prof.protocol == Protocol::File
            && sinks.file.is_none()
            && groups.iter().any(|g| profiles[g.profile].name == prof.name)
        {
            p.add(
                "sink.file",
                format!(
                    "missing: profile {:?} publishes to the file sink, so [sink.file] needs a path",
                    prof.name
                ),
            );
        }
    }
    let total: u64 = groups.iter().map(|g| g.count).sum();
    if total > u32::MAX as u64 {
        p.add(
            "fleet",
            format!("{total} devices in all is more than this build supports ({})", u32::MAX),
        );
    }
    // A fleet file's thresholds may name a scenario's phases; the scenario checks those names.
    let thresholds = top
        .get("threshold")
        .map(|v| crate::threshold::parse_list(v, "threshold", None, p))
        .unwrap_or_default();
    let fleet = Fleet { profiles, groups };
    let audit = top.table("audit", p).and_then(|t| audit::compile(t, &fleet, &sinks, p));
    let mut fleet = fleet;
    if top.has("audit") {
        seq_on_unless_off(&mut fleet, doc);
    }
    top.finish_with(&keys::FLEET_FILE.names(), p);
    Some(Config { run, sinks, fleet, thresholds, audit })
}

/// With an audit, profiles publish `"seq"` unless their table says `seq = false`.
pub fn seq_on_unless_off(fleet: &mut Fleet, doc: &toml::Table) {
    for prof in &mut fleet.profiles {
        let explicit = doc
            .get("profiles")
            .and_then(|v| v.get(&prof.name))
            .and_then(|v| v.get("seq"))
            .is_some();
        if !explicit {
            prof.seq = true;
        }
    }
}

/// The keys of `[run]` (the walker's accepted list, and the environment layer's `IOT_SIM_RUN_*` names).
pub const RUN_KEYS: &[&str] = &[
    "seed",
    "cores",
    "clock",
    "speed",
    "start_time",
    "duration",
    "report_dir",
    "progress_interval",
    "timer_slack",
    "pin",
    "scenario",
    "journal_max_bytes",
];

fn compile_run(mut t: Table<'_>, p: &mut Problems) -> RunSettings {
    let mut run = RunSettings::default();
    match t.get("seed") {
        None => {}
        Some(Value::Integer(n)) if *n >= 0 => run.seed = Some(*n as u64),
        Some(Value::String(s)) if s.parse::<u64>().is_ok() => run.seed = s.parse().ok(),
        Some(v) => {
            p.add(t.path_of("seed"), format!("expected a non-negative integer, got {}", show(v)))
        }
    }
    if let Some(c) = t.int("cores", p) {
        if (1..=1024).contains(&c) {
            run.cores = Some(c as usize);
        } else {
            p.add(t.path_of("cores"), format!("must be between 1 and 1024, got {c}"));
        }
    }
    if let Some(c) = t.str("clock", p) {
        match ClockMode::parse(c) {
            Some(m) => run.clock = m,
            None => p.add(
                t.path_of("clock"),
                format!("expected \"realtime\" or \"virtual\", got {c:?}"),
            ),
        }
    }
    if let Some(s) = t.f64("speed", p) {
        if s > 0.0 && s <= 1e6 {
            run.speed = s;
        } else {
            p.add(t.path_of("speed"), format!("must be greater than 0 (and at most 1e6), got {s}"));
        }
    }
    match t.get("start_time") {
        None => {}
        Some(Value::String(s)) => match parse_rfc3339(s) {
            Ok(ms) => run.start_ms = Some(ms),
            Err(e) => p.add(t.path_of("start_time"), e),
        },
        Some(Value::Datetime(d)) => match parse_rfc3339(&d.to_string()) {
            Ok(ms) => run.start_ms = Some(ms),
            Err(e) => p.add(
                t.path_of("start_time"),
                format!("{e} (a full date, time and offset is needed)"),
            ),
        },
        Some(v) => p.add(
            t.path_of("start_time"),
            format!("expected an RFC 3339 date-time, got {}", show(v)),
        ),
    }
    if let Some(d) = t.duration_ms("duration", p) {
        if d == 0 {
            p.add(
                t.path_of("duration"),
                "must be greater than 0 (leave it out to run until stopped)",
            );
        } else {
            run.duration_ms = Some(d);
        }
    }
    if let Some(start) = run.start_ms
        && let Err(e) = check_span(start, run.duration_ms)
    {
        let key = if start >= LAST_SIM_MS { "start_time" } else { "duration" };
        p.add(t.path_of(key), e);
    }
    if let Some(d) = t.str("report_dir", p) {
        run.report_dir = PathBuf::from(d);
    }
    if let Some(s) = t.str("scenario", p) {
        if s.is_empty() {
            p.add(t.path_of("scenario"), "must name a scenario file, got \"\"");
        } else {
            run.scenario = Some(PathBuf::from(s));
        }
    }
    if let Some(d) = t.duration_ms("progress_interval", p) {
        if d < 100 {
            p.add(t.path_of("progress_interval"), format!("must be at least 100ms, got {d}ms"));
        } else {
            run.progress_interval_ms = d;
        }
    }
    if let Some(b) = t.bool("pin", p) {
        run.pin = b;
    }
    if let Some(d) = t.duration_ms("timer_slack", p) {
        if d > crate::limits::MAX_TIMER_SLACK_MS {
            p.add(
                t.path_of("timer_slack"),
                format!("must be at most {}ms, got {d}ms", crate::limits::MAX_TIMER_SLACK_MS),
            );
        } else {
            run.timer_slack_ms = d;
        }
    }
    match t.get("journal_max_bytes") {
        None => {}
        Some(Value::Integer(n)) if (0..=1 << 40).contains(n) => run.journal_max_bytes = *n as u64,
        Some(v) => p.add(
            t.path_of("journal_max_bytes"),
            format!("must be a whole number of bytes between 0 and 2^40, got {v}"),
        ),
    }
    t.finish_with(RUN_KEYS, p);
    run
}

/// Reads and parses a profile file (see [`read_profile_file`]); the error names the file.
pub(crate) fn read_profile_doc(full: &Path) -> Result<toml::Table, String> {
    let text = read_profile_file(full)
        .map_err(|e| format!("cannot read profile file {}: {e}", full.display()))?;
    text.parse().map_err(|e: toml::de::Error| {
        format!("profile file {} is not valid TOML: {}", full.display(), e.to_string().trim())
    })
}

/// Reads a profile (or template) file: a regular file of at most
/// [`limits::MAX_PROFILE_FILE_BYTES`]. A device
/// (`/dev/zero`) would be read until memory runs out and a FIFO would block `validate` forever,
/// so both are refused; the size is capped while reading too, in case the file grows.
fn read_profile_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO with no writer would otherwise block here; it changes nothing
    // for the regular files that are read.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    let max = limits::MAX_PROFILE_FILE_BYTES;
    if meta.len() > max {
        return Err(format!("{} bytes, more than the {max} allowed", meta.len()));
    }
    let mut text = String::new();
    f.take(max + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > max {
        return Err(format!("more than the {max} bytes allowed"));
    }
    Ok(text)
}

fn load_profile_file(
    path: &str,
    file: &str,
    base: &Path,
    profiles: &mut Vec<Profile>,
    by_name: &mut BTreeMap<String, usize>,
    p: &mut Problems,
) -> Option<usize> {
    let full = base.join(file);
    let key = full.display().to_string();
    if let Some(ix) = by_name.get(&key) {
        return Some(*ix);
    }
    let doc = match read_profile_doc(&full) {
        Ok(d) => d,
        Err(e) => {
            p.add(path, e);
            return None;
        }
    };
    let name = full.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = full.parent().unwrap_or(base).to_path_buf();
    let prof = compile_profile_in(
        &name,
        Table::new(format!("{}:", full.display()), &doc),
        p,
        false,
        Some(&dir),
    )?;
    if let Some(existing) = profiles.iter().position(|q| q.name == prof.name) {
        p.add(
            path,
            format!(
                "profile file {} is named {:?}, like another profile",
                full.display(),
                profiles[existing].name
            ),
        );
        return None;
    }
    by_name.insert(key, profiles.len());
    profiles.push(prof);
    Some(profiles.len() - 1)
}

/// The first `{labels.KEY}` of a topic template that `labels` lacks (it would render as an
/// empty topic segment).
pub fn missing_topic_label<'a>(
    topic: &'a TopicTemplate,
    labels: &BTreeMap<String, String>,
) -> Option<&'a str> {
    topic.parts.iter().find_map(|part| match part {
        profile::TopicPart::Label(k) if !labels.contains_key(k) => Some(k.as_str()),
        _ => None,
    })
}

fn labels(t: &mut Table<'_>, p: &mut Problems) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(lt) = t.table("labels", p) else { return out };
    if let Err(e) = limits::check_label_count(lt.table.len()) {
        p.add(lt.path.clone(), e);
        return out;
    }
    for (k, v) in lt.table {
        let path = join(&lt.path, k);
        if k.is_empty() {
            p.add(path, "label keys must not be empty");
            continue;
        }
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(b) => b.to_string(),
            other => {
                p.add(
                    path,
                    format!(
                        "label values must be strings, got {} {}",
                        type_name(other),
                        show(other)
                    ),
                );
                continue;
            }
        };
        if let Err(e) = limits::check_label(k, &s) {
            p.add(path, e);
            continue;
        }
        out.insert(k.clone(), s);
    }
    out
}

/// Compiles one profile table (inline `[profiles.NAME]`, a profile file, or a spawn request).
/// A profile in a file needs at least one field.
pub fn compile_profile(name: &str, t: Table<'_>, p: &mut Problems) -> Option<Profile> {
    compile_profile_with(name, t, p, false)
}

/// [`compile_profile`], optionally accepting a profile with no fields (a spawn request may
/// have none, as the original accepts: its devices publish an envelope with empty `fields`).
pub fn compile_profile_with(
    name: &str,
    t: Table<'_>,
    p: &mut Problems,
    allow_no_fields: bool,
) -> Option<Profile> {
    compile_profile_in(name, t, p, allow_no_fields, None)
}

/// [`compile_profile_with`] for a profile of a fleet file in directory `base` (or a profile
/// file there), where a `replay` table may name a trace relative to it.
pub(crate) fn compile_profile_in(
    name: &str,
    mut t: Table<'_>,
    p: &mut Problems,
    allow_no_fields: bool,
    base: Option<&Path>,
) -> Option<Profile> {
    let before = p.0.len();
    let replay_path = t.path_of("replay");
    let replay = match (t.table("replay", p), base) {
        (Some(rt), Some(base)) => replay::compile(rt, base, p),
        (Some(_), None) => {
            p.add(
                replay_path,
                "a replay profile belongs in a fleet file (or a profile file it names), not in \
                 a spawn or update",
            );
            None
        }
        (None, _) => None,
    };
    let is_replay = t.has("replay");
    let allow_no_fields = allow_no_fields || is_replay;
    let protocol = match t.req_str("protocol", p) {
        Some(s) => match Protocol::parse(s) {
            Some(proto) => Some(proto),
            None => {
                let hint = "";
                let known: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
                p.add(
                    t.path_of("protocol"),
                    format!("unknown protocol {s:?}{hint}; accepted: {}", known.join(", ")),
                );
                None
            }
        },
        None => None,
    };
    let topic = match t.str("topic", p) {
        Some(s) => TopicTemplate::parse(s).map_err(|e| p.add(t.path_of("topic"), e)).ok(),
        None => TopicTemplate::parse("devices/{device_id}/telemetry").ok(),
    };
    let interval_ms = match (t.has("interval"), t.duration_ms("interval", p)) {
        (false, _) if is_replay => Some(1000),
        (false, _) => {
            p.add(t.path_of("interval"), "missing: how often each device sends, such as \"5s\"");
            None
        }
        (true, Some(0)) => {
            p.add(t.path_of("interval"), "must be greater than 0, got \"0s\"");
            None
        }
        (true, Some(ms)) if ms > MAX_INTERVAL_MS => {
            p.add(t.path_of("interval"), format!("must be at most 30d, got {ms}ms"));
            None
        }
        (true, ms) => ms,
    };
    let seq = t.bool("seq", p).unwrap_or(false);
    let delivery = compile_delivery(&mut t, protocol, p);
    let device_type = t.str("device_type", p).unwrap_or(name).to_string();
    if let Err(e) = limits::check_name("device type", &device_type) {
        p.add(t.path_of("device_type"), e);
    }
    let labels = labels(&mut t, p);
    let mut fields = vec![];
    let mut units = vec![];
    let (mut groups, mut derived) = (vec![], vec![]);
    let mut fields_path = t.path_of("fields");
    match t.table("fields", p) {
        None if !t.has("fields") && !allow_no_fields => {
            p.add(t.path_of("fields"), "missing: a profile needs at least one field")
        }
        None => {}
        Some(ft) if ft.table.is_empty() && !allow_no_fields => {
            p.add(ft.path.clone(), "a profile needs at least one field")
        }
        Some(ft) if ft.table.len() > limits::MAX_FIELDS => p.add(
            ft.path.clone(),
            format!("{} fields, more than the {} allowed", ft.table.len(), limits::MAX_FIELDS),
        ),
        Some(ft) => {
            fields_path = ft.path.clone();
            let mut names: Vec<&String> = ft.table.keys().collect();
            names.sort();
            for fname in names {
                let path = join(&ft.path, fname);
                if let Err(e) = limits::check_name("field name", fname) {
                    p.add(path, e);
                    continue;
                }
                if let Some(mut f) = Table::from_value(path, &ft.table[fname.as_str()], p) {
                    let decimals = match f.int("decimals", p) {
                        Some(d) if (0..=15).contains(&d) => Some(d as u32),
                        Some(d) => {
                            p.add(
                                f.path_of("decimals"),
                                format!("must be between 0 and 15, got {d}"),
                            );
                            None
                        }
                        None => None,
                    };
                    match behaviour::field_type(&f) {
                        Some("derived") => {
                            let db = behaviour::deadband(&mut f, p);
                            if let Some(d) = behaviour::derived(fname, f, p) {
                                derived.push((d, decimals, db));
                            }
                            continue;
                        }
                        Some("correlated_gaussian") => {
                            match behaviour::correlated(fname, f, decimals, p) {
                                Ok(g) => groups.push(g),
                                // Stand-ins, so expressions reading them are not reported too.
                                Err(members) => fields.extend(members.iter().map(|m| FieldSpec {
                                    name: m.clone(),
                                    key_json: String::new(),
                                    generator: GenSpec::Static {
                                        json: "0".into(),
                                        number: Some(0.0),
                                    },
                                    decimals: None,
                                    battery: false,
                                    first_slot: 0,
                                    deadband: None,
                                })),
                            }
                            continue;
                        }
                        _ => {}
                    }
                    let deadband = behaviour::deadband(&mut f, p);
                    let battery = f.bool("battery", p).unwrap_or(false) || fname == "battery";
                    if let Some(u) = f.str("unit", p) {
                        units.push((fname.clone(), u.to_string()));
                    }
                    if let Some(generator) =
                        compile_generator(f, &["decimals", "battery", "deadband", "unit"], p)
                    {
                        if battery && !generator.is_numeric() {
                            p.add(join(&ft.path, fname), "a battery field must be numeric");
                        }
                        if deadband.is_some() && !generator.is_numeric() {
                            p.add(
                                join(&join(&ft.path, fname), "deadband"),
                                "only numeric fields take a deadband",
                            );
                        }
                        fields.push(FieldSpec {
                            name: fname.clone(),
                            key_json: payload::key_json(fname),
                            generator,
                            decimals,
                            battery,
                            first_slot: 0,
                            deadband,
                        });
                    }
                }
            }
        }
    }
    let derived_meta: Vec<(String, Option<u32>, Option<f64>)> =
        derived.iter().map(|(d, dec, db)| (d.name.clone(), *dec, *db)).collect();
    let (correlated, derived_order) = behaviour::finish_fields(
        &mut fields,
        std::mem::take(&mut groups),
        derived.drain(..).map(|d| d.0).collect(),
        &fields_path,
        p,
    );
    for (name, dec, db) in derived_meta {
        if let Some(f) = fields.iter_mut().find(|f| f.name == name) {
            f.decimals = dec;
            f.deadband = db;
        }
    }
    if is_replay {
        if t.has("fields") {
            p.add(
                t.path_of("fields"),
                "a replay profile publishes the trace's columns (replay.fields), not generated fields",
            );
        }
        for key in ["report", "events", "availability", "sleep"] {
            if t.has(key) {
                p.add(
                    t.path_of(key),
                    "not with replay: a replay device publishes each recorded row",
                );
            }
        }
        if let Some((_, f)) = &replay {
            fields = f.clone();
        }
    }
    let behaviour = behaviour::compile(&mut t, interval_ms, topic.as_ref(), &fields, p);
    let sparkplug = t.get("format").and_then(|v| v.as_str()) == Some("sparkplug_b");
    let format = format::compile(&mut t, units, (&fields, &behaviour.events), p);
    let mut delivery = delivery;
    delivery.mqtt5 = mqtt5::compile(&mut t, protocol, p);
    mqtt5::check_format(&t, delivery.mqtt5.as_deref(), format.wire.body, p);
    if sparkplug {
        if protocol.is_some_and(|pr| pr != Protocol::Mqtt) {
            p.add(
                t.path_of("format"),
                format!(
                    "\"sparkplug_b\" needs protocol = \"mqtt\" (Sparkplug B is MQTT), not {:?}",
                    protocol.map_or("", |pr| pr.name())
                ),
            );
        }
        // Each edge node is one MQTT session: the per-device machinery, keyed by node.
        delivery.per_device = true;
    }
    t.finish_with(&keys::PROFILE.names(), p);
    if p.0.len() > before {
        return None;
    }
    let mut profile = Profile {
        name: name.to_string(),
        type_json: payload::type_json(&device_type),
        device_type,
        protocol: protocol?,
        topic: topic?,
        interval_ms: interval_ms?,
        seq,
        labels,
        fields,
        delivery,
        requested_protocol: None,
        correlated,
        derived: derived_order,
        behaviour,
        slots: 0,
        format: std::sync::Arc::new(format),
        replay: replay.map(|r| std::sync::Arc::new(r.0)),
    };
    profile.lay_out();
    if allow_no_fields {
        // A spawn request: its labels are the profile's.
        let mut labels = profile.labels.clone();
        labels.insert("device_type".into(), profile.device_type.clone());
        format::check_sample(&mut profile, &labels, p);
        if p.0.len() > before {
            return None;
        }
    }
    Some(profile)
}

fn compile_delivery(
    t: &mut Table<'_>,
    protocol: Option<Protocol>,
    p: &mut Problems,
) -> profile::Delivery {
    let mut d = profile::Delivery::default();
    let only = |t: &Table<'_>, key: &str, want: Protocol, p: &mut Problems| {
        if t.has(key) && protocol.is_some_and(|pr| pr != want) {
            p.add(t.path_of(key), format!("only applies to protocol \"{}\"", want.name()));
        }
    };
    only(t, "qos", Protocol::Mqtt, p);
    only(t, "retain", Protocol::Mqtt, p);
    only(t, "endpoint", Protocol::Http, p);
    only(t, "confirmable", Protocol::Coap, p);
    only(t, "connection", Protocol::Mqtt, p);
    match t.str("connection", p) {
        None | Some("pooled") => {}
        Some("per_device") => d.per_device = true,
        Some(other) => p.add(
            t.path_of("connection"),
            format!("expected \"pooled\" or \"per_device\", got {other:?}"),
        ),
    }
    match t.int("qos", p) {
        Some(q @ 0..=2) => d.qos = Some(q as u8),
        Some(q) => p.add(t.path_of("qos"), format!("expected 0, 1 or 2, got {q}")),
        None => {}
    }
    d.retain = t.bool("retain", p);
    d.confirmable = t.bool("confirmable", p);
    d.endpoint = t.str("endpoint", p).map(str::to_string);
    match t.str("backpressure", p) {
        None | Some("drop_oldest") => {}
        Some("slow_down") => d.backpressure = profile::Backpressure::SlowDown,
        Some(other) => p.add(
            t.path_of("backpressure"),
            format!("expected \"drop_oldest\" or \"slow_down\", got {other:?}"),
        ),
    }
    if t.has("backpressure") && protocol.is_some_and(|pr| !pr.is_network()) {
        p.add(
            t.path_of("backpressure"),
            "only applies to network protocols (mqtt, amqp, http, coap)",
        );
    }
    d
}

/// Compiles one generator table. `extra` names keys the caller reads itself.
pub fn compile_generator(mut t: Table<'_>, extra: &[&str], p: &mut Problems) -> Option<GenSpec> {
    for k in extra {
        t.allow(k);
    }
    let before = p.0.len();
    let kind = t.req_str("type", p)?;
    let mut accepted: Vec<&str> = vec!["type"];
    accepted.extend_from_slice(extra);
    accepted.extend(keys::generator(kind).map(keys::Variant::names).unwrap_or_default());
    let spec = match kind {
        "gaussian" => {
            let mean = t.req_f64("mean", p);
            let stddev = non_negative(&mut t, "stddev", true, p);
            GenSpec::Gaussian { mean: mean?, stddev: stddev? }
        }
        "brownian" => {
            let start = t.req_f64("start", p);
            let mean = t.f64("mean", p);
            let drift = t.f64("drift", p).unwrap_or(0.0);
            let volatility = non_negative(&mut t, "volatility", true, p);
            let mean_reversion = non_negative(&mut t, "mean_reversion", false, p).unwrap_or(0.0);
            let (min, max) = (t.f64("min", p), t.f64("max", p));
            if let (Some(lo), Some(hi)) = (min, max)
                && lo > hi
            {
                p.add(t.path_of("min"), format!("min ({lo}) must not be greater than max ({hi})"));
            }
            if let Some(s) = start
                && (min.is_some_and(|lo| s < lo) || max.is_some_and(|hi| s > hi))
            {
                p.add(t.path_of("start"), format!("start ({s}) must lie within [min, max]"));
            }
            let start = start?;
            GenSpec::Brownian(Brownian {
                start,
                mean: mean.unwrap_or(start),
                drift,
                volatility: volatility?,
                mean_reversion,
                min,
                max,
                cached: None,
            })
        }
        "diurnal" => {
            let baseline = t.req_f64("baseline", p);
            let amplitude = t.req_f64("amplitude", p);
            let peak_hour = t.req_f64("peak_hour", p);
            if let Some(h) = peak_hour
                && !(0.0..24.0).contains(&h)
            {
                p.add(t.path_of("peak_hour"), format!("must be in [0, 24), got {h}"));
            }
            if t.has("noise_stddev") && t.has("stddev") {
                p.add(t.path_of("stddev"), "give noise_stddev or stddev, not both");
            }
            let key = if t.has("stddev") { "stddev" } else { "noise_stddev" };
            let noise_stddev = non_negative(&mut t, key, false, p).unwrap_or(0.0);
            GenSpec::Diurnal {
                baseline: baseline?,
                amplitude: amplitude?,
                peak_hour: peak_hour?,
                noise_stddev,
            }
        }
        "markov" => compile_markov(&mut t, p)?,
        "static" => match t.get("value") {
            None => {
                p.add(t.path_of("value"), "missing: the constant to publish");
                return None;
            }
            Some(v) if has_non_finite(v) => {
                p.add(
                    t.path_of("value"),
                    format!(
                        "must not contain nan or inf (JSON has no such numbers), got {}",
                        show(v)
                    ),
                );
                return None;
            }
            Some(v) => {
                let mut json = vec![];
                toml_to_json(v, &mut json);
                let number = match v {
                    Value::Integer(i) => Some(*i as f64),
                    Value::Float(f) => Some(*f),
                    _ => None,
                };
                GenSpec::Static { json: String::from_utf8(json).unwrap_or_default(), number }
            }
        },
        "composite" => {
            let parts = t.array("parts", p);
            if !t.has("parts") {
                p.add(t.path_of("parts"), "missing: a list of numeric generators to add up");
            }
            let parts = parts?;
            if parts.is_empty() {
                p.add(t.path_of("parts"), "must list at least one generator");
            }
            let mut out = vec![];
            for (i, v) in parts.iter().enumerate() {
                let path = format!("{}[{i}]", t.path_of("parts"));
                if let Some(pt) = Table::from_value(path.clone(), v, p)
                    && let Some(g) = compile_generator(pt, &[], p)
                {
                    if g.is_numeric() {
                        out.push(g);
                    } else {
                        p.add(path, "composite parts must be numeric (gaussian, brownian, diurnal, numeric static, composite)");
                    }
                }
            }
            GenSpec::Composite(out)
        }
        other => {
            p.add(
                t.path_of("type"),
                format!("unknown generator {other:?}; accepted: gaussian, brownian, diurnal, markov, static, composite"),
            );
            return None;
        }
    };
    t.finish_with(&accepted, p);
    (p.0.len() == before).then_some(spec)
}

fn non_negative(t: &mut Table<'_>, key: &str, required: bool, p: &mut Problems) -> Option<f64> {
    let v = if required { t.req_f64(key, p) } else { t.f64(key, p) }?;
    if v < 0.0 || !v.is_finite() {
        p.add(t.path_of(key), format!("must be a non-negative number, got {v}"));
        return None;
    }
    Some(v)
}

fn compile_markov(t: &mut Table<'_>, p: &mut Problems) -> Option<GenSpec> {
    let states: Option<Vec<String>> = match t.array("states", p) {
        None => {
            if !t.has("states") {
                p.add(t.path_of("states"), "missing: the list of state names");
            }
            None
        }
        Some(a) if a.is_empty() => {
            p.add(t.path_of("states"), "must list at least one state");
            None
        }
        Some(a) => {
            let mut out = vec![];
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) if out.iter().any(|o: &String| o == s) => p.add(
                        format!("{}[{i}]", t.path_of("states")),
                        format!("duplicate state {s:?}"),
                    ),
                    Some(s) => out.push(s.to_string()),
                    None => p.add(
                        format!("{}[{i}]", t.path_of("states")),
                        format!("expected a string, got {}", show(v)),
                    ),
                }
            }
            (out.len() == a.len()).then_some(out)
        }
    };
    let n = states.as_ref().map(Vec::len);
    let mpath = t.path_of("transition_matrix");
    let matrix: Option<Vec<Vec<f64>>> = match t.array("transition_matrix", p) {
        None => {
            if !t.has("transition_matrix") {
                p.add(mpath.clone(), "missing: one row of probabilities per state");
            }
            None
        }
        Some(rows) => {
            let mut ok = true;
            if let Some(n) = n
                && rows.len() != n
            {
                p.add(mpath.clone(), format!("needs {n} rows (one per state), got {}", rows.len()));
                ok = false;
            }
            let mut out = vec![];
            for (i, r) in rows.iter().enumerate() {
                let rpath = format!("{mpath}[{i}]");
                let Some(cells) = r.as_array() else {
                    p.add(rpath, format!("expected an array of probabilities, got {}", show(r)));
                    ok = false;
                    continue;
                };
                if let Some(n) = n
                    && cells.len() != n
                {
                    p.add(
                        rpath.clone(),
                        format!(
                            "needs {n} entries (one per state), got {} (ragged matrix)",
                            cells.len()
                        ),
                    );
                    ok = false;
                }
                let mut row = vec![];
                for (j, c) in cells.iter().enumerate() {
                    match c.as_float().or_else(|| c.as_integer().map(|i| i as f64)) {
                        Some(x) if (0.0..=1.0).contains(&x) => row.push(x),
                        _ => {
                            p.add(
                                format!("{rpath}[{j}]"),
                                format!("expected a probability in [0, 1], got {}", show(c)),
                            );
                            ok = false;
                        }
                    }
                }
                let sum: f64 = row.iter().sum();
                if row.len() == cells.len()
                    && n.is_none_or(|n| n == cells.len())
                    && (sum - 1.0).abs() > 1e-6
                {
                    p.add(rpath, format!("probabilities must sum to 1, got {sum} ({})", show(r)));
                    ok = false;
                }
                out.push(row);
            }
            ok.then_some(out)
        }
    };
    let initial = match (t.str("initial_state", p), &states) {
        (Some(s), Some(st)) => match st.iter().position(|x| x == s) {
            Some(i) => Some(i),
            None => {
                p.add(t.path_of("initial_state"), format!("{s:?} is not one of the states {st:?}"));
                None
            }
        },
        (None, Some(_)) => Some(0),
        _ => None,
    };
    Some(GenSpec::Markov(Markov::new(states?, &matrix?, initial?)))
}

/// True if a value is, or holds, a `nan` or an infinity.
fn has_non_finite(v: &Value) -> bool {
    match v {
        Value::Float(f) => !f.is_finite(),
        Value::Array(a) => a.iter().any(has_non_finite),
        Value::Table(t) => t.values().any(has_non_finite),
        _ => false,
    }
}

/// Writes a TOML value as JSON (date-times become RFC 3339 strings).
pub fn toml_to_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::String(s) => payload::write_json_str(out, s),
        Value::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Float(f) => payload::write_f64(out, *f),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Datetime(d) => payload::write_json_str(out, &d.to_string()),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                toml_to_json(x, out);
            }
            out.push(b']');
        }
        Value::Table(t) => {
            out.push(b'{');
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                payload::write_json_str(out, k);
                out.push(b':');
                toml_to_json(&t[k.as_str()], out);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
