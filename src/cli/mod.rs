//! The command line: raw clap flags -> config overrides -> the chosen command.

use crate::config::{self, ClockMode, Overrides};
use crate::run::{self, RunOptions};
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

mod audit;
mod certs;
pub mod client;
mod fit;
pub mod journal;
pub mod preview;
pub mod probe;
pub mod remote;
pub mod report;
pub mod scenario;
pub mod schema;
pub mod show;

/// Thread-per-core IoT device simulator: a realistic fleet on one box, with numbers you can trust.
#[derive(Parser, Debug)]
#[command(
    name = "iot-sim",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run` is the default command: `iot-sim --config fleet.toml` runs the fleet.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a fleet to its end (or until Ctrl-C) and print the report (the default command).
    Run(RunArgs),
    /// Check a fleet file without running it; lists every problem.
    Validate(ValidateArgs),
    /// Long-running runtime controlled over gRPC (simulator.v1); starts empty or with --config.
    Serve(ServeArgs),
    /// Spawn devices from a profile on one or several runtimes (gRPC client).
    Spawn(client::SpawnArgs),
    /// Stop devices (--all, --selector or --ids).
    Stop(client::SelectCmd),
    /// Fleet and runtime status, summed over every --runtime.
    Status(client::SelectCmd),
    /// Print live telemetry points.
    Stream(client::StreamArgs),
    /// Inject or clear faults.
    #[command(subcommand)]
    Fault(client::FaultCmd),
    /// Pause devices (no telemetry until resumed).
    Pause(client::SelectCmd),
    /// Resume paused devices.
    Resume(client::SelectCmd),
    /// Run, check or list scenarios (timed steps, phases, thresholds).
    #[command(subcommand)]
    Scenario(scenario::ScenarioCmd),
    /// Show the effective configuration: file, then IOT_SIM_* environment, then flags.
    #[command(subcommand)]
    Config(show::ConfigCmd),
    /// Exit 0 if a runtime is ready (admin /readyz, gRPC health), else 1: a HEALTHCHECK.
    Probe(probe::ProbeArgs),
    /// Audit delivery of a fleet that runs elsewhere: consume from MQTT or AMQP until Ctrl-C,
    /// SIGTERM or --duration, then report losses, duplicates, reordering and latency.
    Audit(audit::AuditArgs),
    /// Work on finished runs' reports (`report compare OLD NEW`).
    #[command(subcommand)]
    Report(report::ReportCmd),
    /// Fit generator models to a recorded series (gaussian, OU, diurnal, markov; AIC, KS) and
    /// write a fleet file with the best profile.
    Fit(fit::FitArgs),
    /// Session journals (`journal export JOURNAL --out SCENARIO`): a live session's control
    /// actions, from REPORT_DIR/journal.jsonl, as a scenario.
    #[command(subcommand)]
    Journal(journal::JournalCmd),
    /// Print the JSON Schema of fleet files (--scenario: scenario files; --profile: profile
    /// files), for editors: `iot-sim schema > fleet.schema.json`.
    Schema(schema::SchemaArgs),
    /// Payload tools: `iot-sim payload preview --config F [--profile X] [--count N]` prints
    /// the first messages of a profile without running the fleet.
    #[command(subcommand)]
    Payload(preview::PayloadCommand),
    /// Per-device certificates (`certs issue --config F --out DIR [--seed N]`): every
    /// per-device session's certificate and key as a run with that seed makes them, and a
    /// CSV manifest, for bulk registration ahead of a test.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
}

/// The exit codes, for --help.
pub const EXIT_CODES: &str = "Exit codes: 0 done (every threshold passed), 1 run failure (a sink \
file cannot be created, a runtime is down), 2 bad config, scenario or flags (nothing started), \
3 a threshold failed or an abort threshold stopped the run (the report says which).";

/// Flags of `iot-sim serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Refuse to spawn devices whose protocol has no sink here (no [sink.NAME] settings, or
    /// an unknown protocol). By default they publish to the console, as the original runtime
    /// did, with one warning per protocol.
    #[arg(long)]
    pub strict_protocols: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClockArg {
    Realtime,
    Virtual,
}

/// Flags of `iot-sim run`; each overrides the file's `[run]` value.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The fleet file (TOML).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Number of shards (one pinned thread each). Default: the file's, else all cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub cores: Option<u16>,
    /// Master seed; the same seed, config and start time replay the same bytes.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Sim time to run, such as 90s, 10m, 1h30m.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<u64>,
    /// realtime: sim time follows the wall clock; virtual: as fast as possible.
    #[arg(long, value_enum)]
    pub clock: Option<ClockArg>,
    /// Realtime only: sim seconds per wall second.
    #[arg(long, value_name = "X", value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// Where report.json, report.html and the .hgrm files go.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Retry unreachable brokers for up to this long before failing (e.g. 60s).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub wait_for_sinks: Option<u64>,
    /// Serve live gRPC control on this address (serve: default 127.0.0.1:50051). Binding
    /// beyond loopback is an explicit choice.
    #[arg(long, value_name = "ADDR")]
    pub grpc: Option<std::net::SocketAddr>,
    /// Serve admin HTTP on this address: /healthz, /metrics (Prometheus), /status (JSON).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// This run's id, in every log line, report.json and iot_sim_run_info. Default: random hex.
    #[arg(long, value_name = "ID", value_parser = parse_run_id)]
    pub run_id: Option<String>,
    /// Log lines as text or as JSON objects (one per line). Also IOT_SIM_LOG_FORMAT.
    #[arg(long, value_enum, env = "IOT_SIM_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Audit delivery while running (the file's [audit], or its defaults: the fleet's own
    /// broker, filters from the topic templates); turns `seq` on in every profile.
    #[arg(long)]
    pub audit: bool,
}

/// How log lines are written.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn parse_run_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("expected 1 to 64 letters, digits, '-', '_' or '.', got {s:?}"))
    }
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The fleet file (TOML).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    match crate::sim::time::parse_duration_ms(s)? {
        0 => Err("must be greater than 0".into()),
        ms => Ok(ms),
    }
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1e6 => Ok(x),
        _ => Err(format!("expected a number greater than 0 (at most 1e6), got {s:?}")),
    }
}

impl RunArgs {
    /// The flags that override the file's `[run]` values.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            seed: self.seed,
            cores: self.cores.map(usize::from),
            duration_ms: self.duration,
            clock: self.clock.map(|c| match c {
                ClockArg::Realtime => ClockMode::Realtime,
                ClockArg::Virtual => ClockMode::Virtual,
            }),
            speed: self.speed,
            report_dir: self.report_dir.clone(),
        }
    }
}

/// Exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const BAD_CONFIG: i32 = 2;
    pub const THRESHOLD_FAILED: i32 = 3;
}

impl Cli {
    /// The log style (JSON or not) and the run id; a run without `--run-id` gets a random one,
    /// written back into its flags so that the run uses the same id as the log lines.
    pub fn prepare_logging(&mut self) -> (bool, String) {
        let args = match &mut self.command {
            Some(Command::Run(r)) => Some(r),
            Some(Command::Serve(s)) => Some(&mut s.run),
            Some(Command::Scenario(scenario::ScenarioCmd::Run(r))) => Some(&mut r.run),
            None => Some(&mut self.run),
            Some(_) => None,
        };
        let env_json = std::env::var("IOT_SIM_LOG_FORMAT").is_ok_and(|v| v == "json");
        match args {
            Some(a) => {
                let id = a
                    .run_id
                    .get_or_insert_with(crate::measure::run_identity::random_run_id)
                    .clone();
                (a.log_format.map_or(env_json, |f| f == LogFormat::Json), id)
            }
            None => (env_json, String::new()),
        }
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> anyhow::Result<i32> {
    // A mistyped IOT_SIM_* variable would silently run another test: refuse it.
    let unknown = config::env::check_process();
    if !unknown.is_empty() {
        eprintln!("error: invalid environment: {unknown}");
        return Ok(exit::BAD_CONFIG);
    }
    let result = match cli.command {
        Some(Command::Config(c)) => show::main(&c),
        Some(Command::Probe(p)) => probe::main(&p),
        Some(Command::Validate(v)) => validate(&v.config),
        Some(Command::Serve(s)) => serve_cmd(&s),
        Some(Command::Spawn(a)) => client::spawn(&a),
        Some(Command::Stop(a)) => client::stop(&a),
        Some(Command::Status(a)) => client::status(&a),
        Some(Command::Stream(a)) => client::stream(&a),
        Some(Command::Fault(c)) => client::fault(&c),
        Some(Command::Pause(a)) => client::pause(&a, false),
        Some(Command::Resume(a)) => client::pause(&a, true),
        Some(Command::Scenario(c)) => scenario::main(&c),
        Some(Command::Audit(a)) => audit::main(&a),
        Some(Command::Report(c)) => report::main(&c),
        Some(Command::Journal(c)) => journal::main(&c),
        Some(Command::Schema(a)) => schema::main(&a),
        Some(Command::Fit(a)) => fit::main(&a),
        Some(Command::Payload(c)) => preview::main(&c),
        Some(Command::Certs(c)) => certs::main(&c),
        Some(Command::Run(r)) => run_cmd(&r),
        None => run_cmd(&cli.run),
    };
    match result {
        // A `--runtime` that names nothing is bad input, like a bad flag.
        Err(e) if e.downcast_ref::<crate::control::client::ResolveError>().is_some() => {
            crate::logs::notice_at("ERROR", &format!("error: {e:#}"), &[]);
            Ok(exit::BAD_CONFIG)
        }
        other => other,
    }
}

/// Loads a fleet file and checks that it fits in memory (before anything is allocated).
pub(crate) fn load(path: &std::path::Path, o: &Overrides) -> Result<config::Config, i32> {
    let config = config::load(path, o).map_err(|e| {
        crate::logs::notice_at("ERROR", &format!("error: {e}"), &[]);
        exit::BAD_CONFIG
    })?;
    let shards = config
        .run
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let need = crate::memcheck::fleet_bytes(&config.fleet, shards);
    let what =
        format!("{} ({} devices on {shards} shards)", path.display(), config.fleet.device_count());
    crate::memcheck::check(need, &what).map_err(|e| {
        eprintln!("error: {e}");
        exit::BAD_CONFIG
    })?;
    Ok(config)
}

fn validate(path: &std::path::Path) -> anyhow::Result<i32> {
    match load(path, &Overrides::default()) {
        Ok(c) => {
            let protos: Vec<&str> = c.fleet.protocols().iter().map(|p| p.name()).collect();
            println!(
                "{}: ok — {} devices in {} fleet entries, {} profile(s), sinks: {}",
                path.display(),
                c.fleet.device_count(),
                c.fleet.groups.len(),
                c.fleet.profiles.len(),
                protos.join(", ")
            );
            Ok(exit::OK)
        }
        Err(code) => Ok(code),
    }
}

fn run_cmd(args: &RunArgs) -> anyhow::Result<i32> {
    let (mut config, name) = match &args.config {
        Some(path) => match load(path, &args.overrides()) {
            Ok(c) => (c, path.display().to_string()),
            Err(code) => return Ok(code),
        },
        None => match config::load_default(&args.overrides()) {
            Ok(c) => {
                eprintln!(
                    "no --config given: running the built-in fleet (configs/fleet.toml: \
                     telemetry to out/telemetry.jsonl, report in out/report)"
                );
                (c, config::DEFAULT_FLEET_NAME.to_string())
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::BAD_CONFIG);
            }
        },
    };
    if let Some(sc) = config.run.scenario.clone() {
        // `[run] scenario = "path"`: the fleet file names the scenario to run on it.
        return scenario::run_local(&sc, args.config.as_deref(), args);
    }
    if let Some(t) = config.thresholds.iter().find_map(|t| t.phase.as_ref()) {
        eprintln!(
            "error: invalid config {name}: a threshold names phase {t:?}, but no scenario runs (phases come from a scenario's steps)"
        );
        return Ok(exit::BAD_CONFIG);
    }
    if args.audit && config.audit.is_none() {
        match config::audit::defaults(&config.fleet, &config.sinks) {
            Ok(a) => config.audit = Some(a),
            Err(p) => {
                eprintln!("error: --audit: {p}");
                return Ok(exit::BAD_CONFIG);
            }
        }
        for p in &mut config.fleet.profiles {
            p.seq = true;
        }
    }
    let report = run::run(config, &run_options(args, args.grpc, false, None))
        .with_context(|| format!("run of {name} failed"))?;
    Ok(verdict_code(&report))
}

/// The run options of `run`-like commands.
pub(crate) fn run_options(
    args: &RunArgs,
    grpc: Option<std::net::SocketAddr>,
    strict_protocols: bool,
    scenario: Option<std::sync::Arc<crate::scenario::Scenario>>,
) -> RunOptions {
    RunOptions {
        quiet: args.quiet,
        wait_for_sinks_ms: args.wait_for_sinks,
        grpc,
        admin: args.admin,
        run_id: args.run_id.clone().unwrap_or_else(crate::measure::run_identity::random_run_id),
        strict_protocols,
        scenario,
    }
}

/// The exit code of a finished run: 1 when a local sink (file, console) lost messages, so a
/// script never takes incomplete output for a good run (network sinks' errors are what a load
/// test measures: they are in the report and do not fail the run); else 3 when a threshold
/// failed or aborted the run; else 0.
pub(crate) fn verdict_code(report: &crate::report::Report) -> i32 {
    let mut code = exit::OK;
    for sink in ["file", "console"] {
        let lost: u64 =
            report.runs.iter().filter(|r| r.sink == sink).map(|r| r.counts.errors).sum();
        if lost > 0 {
            eprintln!(
                "error: the {sink} sink lost {lost} messages (write failures; see the report)"
            );
            code = exit::FAILED;
        }
    }
    if code != exit::OK {
        return code;
    }
    let failed = report.thresholds.iter().any(|v| !v.passed) || report.aborted_by.is_some();
    if failed { exit::THRESHOLD_FAILED } else { exit::OK }
}

/// `iot-sim serve`: a realtime run with no end (unless --duration), under gRPC control.
fn serve_cmd(s: &ServeArgs) -> anyhow::Result<i32> {
    let args = &s.run;
    let mut config = match &args.config {
        // A runtime may start with no devices: they come from spawn requests.
        Some(path) => match config::load_with(path, &args.overrides(), true) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::BAD_CONFIG);
            }
        },
        // No file: defaults, then the IOT_SIM_* environment, then the flags.
        None => match config::load_empty(&args.overrides()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::BAD_CONFIG);
            }
        },
    };
    if config.run.clock == ClockMode::Virtual {
        crate::logs::notice(
            "serve: the virtual clock needs a fixed fleet; serving in realtime",
            &[],
        );
        config.run.clock = ClockMode::Realtime;
    }
    config.run.duration_ms = args.duration;
    let grpc = args.grpc.unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 50051)));
    let report = run::run(config, &run_options(args, Some(grpc), s.strict_protocols, None))
        .context("serve failed")?;
    Ok(verdict_code(&report))
}
