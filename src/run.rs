//! `iot-sim run`: start one shard per core, wait for the end (or a signal) while printing
//! progress, merge what the shards measured and write the report.

use crate::config::{ClockMode, Config};
use crate::measure::clock::{mono_ns, now_ms};
use crate::measure::run_identity::RunIdentity;
use crate::measure::stats::{Snapshot, histogram};
use crate::report::{self, Report, RunFacts};
use crate::scenario::Scenario;
use crate::shard::timeline::{Cue, Phase, Script};
use crate::shard::{self, ShardOutcome, ShardPlan};
use crate::sim::profile::Fleet;
use crate::sim::time::{LAST_SIM_MS, format_duration_ms, rfc3339_ms};
use crate::threshold::{Span, Threshold};
use anyhow::{Context, bail};
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Options of a run besides the config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// No progress lines.
    pub quiet: bool,
    /// Retry unreachable brokers this long before failing.
    pub wait_for_sinks_ms: Option<u64>,
    /// Serve live gRPC control (`simulator.v1`) on this address while running.
    pub grpc: Option<std::net::SocketAddr>,
    /// Serve the admin HTTP endpoints (`/healthz`, `/metrics`, `/status`) on this address.
    pub admin: Option<std::net::SocketAddr>,
    /// Refuse spawn requests for a protocol this runtime has no sink for, instead of
    /// publishing those devices to the console.
    pub strict_protocols: bool,
    /// The scenario that drives the run (its timeline goes to every shard).
    pub scenario: Option<Arc<Scenario>>,
    /// This run's id (in every log line, `report.json` and `iot_sim_run_info`).
    pub run_id: String,
}

/// A random seed, for runs that name none.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Keep seeds within i64 so they can be written back into a TOML file.
    RandomState::new().hash_one(nanos ^ std::process::id() as u64) >> 1
}

/// Runs the fleet to its end and returns the report (already printed and written), in stages
/// over one [`Prepared`] context: [`prepare`], [`open_outputs`], [`start_control`],
/// [`start_shards`], [`wait`] and [`finish`].
pub fn run(config: Config, opts: &RunOptions) -> anyhow::Result<Report> {
    crate::sim::mem::set_huge_pages(config.run.clock == ClockMode::Virtual);
    let prep = prepare(&config, opts);
    let (auditor, end_ms) = open_outputs(&config, opts, &prep)?;
    let control = start_control(&config, opts, &prep, auditor.as_ref())?;
    let Control { waiter, plane, links, mut server, admin: _admin, dashboard } = control;
    let shards = start_shards(&config, &prep, end_ms, links, auditor.as_ref())?;
    let journal = plane.as_ref().and_then(|p| p.options.journal.clone());
    if let Some(j) = &journal {
        j.set_origin(shards.origin_ns);
    }
    let scenario_journal = match (&journal, &opts.scenario) {
        (Some(j), Some(sc)) => {
            Some(journal_scenario(j.clone(), sc.clone(), &config, &prep, end_ms, shards.origin_ns)?)
        }
        _ => None,
    };
    // Every shard holds its descriptors now: clients may connect.
    if let Some(s) = &mut server {
        s.open();
    }
    // `abort = true` thresholds are checked on the running figures at every progress interval
    // (realtime only: a virtual run is judged at its end).
    let aborts: Vec<&Threshold> = prep
        .thresholds
        .iter()
        .filter(|t| t.abort && config.run.clock == ClockMode::Realtime)
        .collect();
    let run = &config.run;
    let (interrupted, aborted_by, timeline) = wait(
        waiter,
        &shards.handles,
        &shards.progress,
        Progress {
            every_ms: run.progress_interval_ms,
            quiet: opts.quiet,
            clock: run.clock,
            start_ms: prep.start_ms,
            sample_step_ms: prep.sample_step_ms,
        },
        &aborts,
    )?;
    if let Some((done, h)) = scenario_journal {
        done.store(true, Ordering::Release);
        let _ = h.join();
    }
    if let Some(j) = &journal {
        // A run that reached its duration ended exactly there; a stopped one now.
        let reached = end_ms.filter(|&e| !interrupted && aborted_by.is_none() && e < LAST_SIM_MS);
        j.end(reached);
    }
    let ended = Ended { interrupted, aborted_by, timeline };
    finish(&config, opts, &prep, shards, ended, auditor, &dashboard)
}

/// Journals a scenario's steps beside the control plane's actions (a session that mixes a
/// scenario and live steering exports as one scenario): in realtime each step when its wall
/// time comes, under the virtual clock every step up to the end at once; each at its exact sim
/// time. The thread stops when `done` is set (the run ended).
fn journal_scenario(
    journal: Arc<crate::control::journal::Journal>,
    sc: Arc<Scenario>,
    config: &Config,
    prep: &Prepared,
    end_ms: Option<u64>,
    origin_ns: u64,
) -> anyhow::Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    let done = Arc::new(AtomicBool::new(false));
    let (start_ms, speed, clock) = (prep.start_ms, config.run.speed, config.run.clock);
    let stop = done.clone();
    let h = std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            for tc in sc.timeline.iter() {
                let sim = start_ms + tc.at_ms;
                if end_ms.is_some_and(|e| sim > e) {
                    return;
                }
                if clock == ClockMode::Realtime {
                    let target = origin_ns + (tc.at_ms as f64 * 1e6 / speed) as u64;
                    loop {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let now = mono_ns();
                        if now >= target {
                            break;
                        }
                        std::thread::sleep(Duration::from_nanos((target - now).min(50_000_000)));
                    }
                }
                match crate::control::journal::cue_entry(&tc.cue, &sc.phases, &sc.profile_sources) {
                    Some(entry) => journal.record(journal.stamp_at(sim), entry),
                    None => tracing::warn!(
                        step = tc.step,
                        "scenario step not journaled: its profile's table is not known"
                    ),
                }
            }
        })
        .context("cannot start the journal thread")?;
    Ok((done, h))
}

/// What a run settles before it starts anything: the seed, the start and the shards, and what
/// the fleet and the scenario ask for.
struct Prepared {
    seed: u64,
    /// Sim time the run starts at, ms since the epoch.
    start_ms: u64,
    /// Shards (one thread each).
    cores: usize,
    core_ids: Vec<core_affinity::CoreId>,
    /// The fleet's profiles and those a scenario spawns (whose brokers must be reachable too).
    reachable: Fleet,
    fleet: Arc<Fleet>,
    /// The fleet file's thresholds, then the scenario's: the order the report judges them in.
    thresholds: Vec<Threshold>,
    /// Sim ms between two points of a virtual run's time series; 0 = one per wall second.
    sample_step_ms: u64,
    /// What every shard gets of the scenario.
    script: Option<Arc<Script>>,
    /// Set on a signal (or an `abort` threshold): the shards stop.
    stop: Arc<AtomicBool>,
}

/// Settles the seed and the start time (at random and now when the config names none, with a
/// notice), the number of shards and what the fleet and the scenario need.
fn prepare(config: &Config, opts: &RunOptions) -> Prepared {
    let run = &config.run;
    let seed = match run.seed {
        Some(s) => s,
        None => {
            let s = random_seed();
            crate::logs::notice(
                &format!("seed: {s} (chosen at random; replay this run with --seed {s})"),
                &[("seed", s.into())],
            );
            s
        }
    };
    let start_ms = match run.start_ms {
        Some(t) => t,
        None => {
            let t = now_ms();
            crate::logs::notice(
                &format!(
                    "start_time: {} (now; set [run] start_time to replay timestamps)",
                    rfc3339_ms(t)
                ),
                &[("start_time", rfc3339_ms(t).into())],
            );
            t
        }
    };
    let cores =
        run.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    if run.pin && cores > core_ids.len() {
        tracing::warn!(
            shards = cores,
            cores = core_ids.len(),
            "more shards than usable cores: shards beyond core {} run unpinned",
            core_ids.len()
        );
    }
    // A scenario's spawns may use profiles (and brokers) the fleet's own devices do not.
    let mut reachable = config.fleet.clone();
    if let Some(sc) = &opts.scenario {
        for ta in sc.timeline.iter() {
            if let Cue::Spawn { profile, .. } = &ta.cue
                && !reachable.profiles.iter().any(|p| p.name == profile.name)
            {
                reachable.profiles.push((**profile).clone());
            }
        }
    }
    // `[mqtt5]` properties need an MQTT 5 sink: on 3.1.1 they are left out, with a warning.
    if config.sinks.mqtt.as_ref().is_some_and(|m| m.version != 5) {
        for p in reachable.profiles.iter().filter(|p| p.delivery.mqtt5.is_some()) {
            tracing::warn!(
                profile = %p.name,
                "[profiles.{}.mqtt5] is ignored: [sink.mqtt] speaks MQTT 3.1.1 (set version = 5 for MQTT 5 properties)",
                p.name
            );
        }
    }
    let thresholds = config
        .thresholds
        .iter()
        .chain(opts.scenario.iter().flat_map(|s| s.thresholds.iter()))
        .cloned()
        .collect();
    // A virtual run's time series is sampled by sim time (a scenario's run lasts its span).
    let sample_step_ms = sample_step_ms(
        run.clock,
        run.duration_ms.or(opts.scenario.as_ref().map(|s| s.duration_ms)),
    );
    Prepared {
        seed,
        start_ms,
        cores,
        core_ids,
        reachable,
        fleet: Arc::new(config.fleet.clone()),
        thresholds,
        sample_step_ms,
        script: opts.scenario.as_ref().map(|s| {
            let mut script = s.script();
            script.order_spawns(seed);
            Arc::new(script)
        }),
        stop: Arc::new(AtomicBool::new(false)),
    }
}

/// Starts the delivery audit (it subscribes before the first message is sent, and its HTTP
/// receiver listens before the preflight looks for the sink's server), checks that the sinks
/// are reachable and that the run fits the sim clock; returns the auditor and the sim end.
fn open_outputs(
    config: &Config,
    opts: &RunOptions,
    prep: &Prepared,
) -> anyhow::Result<(Option<crate::audit::Auditor>, Option<u64>)> {
    let run = &config.run;
    let auditor = match &config.audit {
        Some(a) => Some(
            crate::audit::Auditor::start(
                a,
                Arc::new(config.fleet.clone()),
                prep.seed,
                Some(prep.start_ms),
                false,
            )
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    crate::sink::preflight::check(
        &prep.reachable,
        &config.sinks,
        opts.wait_for_sinks_ms.map(std::time::Duration::from_millis),
    )
    .map_err(anyhow::Error::msg)?;
    // The end never passes the last time the sim clock holds: a run with no duration (or a
    // virtual one that outruns the calendar) stops there instead of repeating one timestamp.
    crate::sim::time::check_span(prep.start_ms, run.duration_ms).map_err(anyhow::Error::msg)?;
    let end_ms = Some(run.duration_ms.map_or(LAST_SIM_MS, |d| prep.start_ms + d));
    Ok((auditor, end_ms))
}

/// The main thread's side of a run while it lasts: signals, and the optional control plane
/// with its servers.
struct Control {
    waiter: Waiter,
    plane: Option<Arc<crate::control::plane::ControlPlane>>,
    /// One per shard, for the plane to reach it.
    links: Vec<crate::shard::command::ShardControl>,
    server: Option<crate::control::service::ControlServer>,
    admin: Option<crate::control::admin::AdminServer>,
    /// The dashboard's thresholds (the same list, in the same order, the report judges).
    dashboard: Arc<crate::control::admin::dashboard::Thresholds>,
}

/// Prints the run's banner, installs the signal handlers and binds the control plane's servers.
fn start_control(
    config: &Config,
    opts: &RunOptions,
    prep: &Prepared,
    auditor: Option<&crate::audit::Auditor>,
) -> anyhow::Result<Control> {
    let run = &config.run;
    let (fleet, cores, seed) = (&prep.fleet, prep.cores, prep.seed);
    if !opts.quiet {
        let line = format!(
            "iot-sim: {} devices, {} profile(s), {} shard(s), {:?} clock, from {}{}",
            fleet.device_count(),
            fleet.profiles.len(),
            cores,
            run.clock,
            rfc3339_ms(prep.start_ms),
            run.duration_ms
                .map(|d| format!(" for {}", format_duration_ms(d)))
                .unwrap_or_else(|| " until stopped".into())
        );
        crate::logs::notice(
            &line,
            &[
                ("devices", fleet.device_count().into()),
                ("profiles", fleet.profiles.len().into()),
                ("shards", cores.into()),
                ("seed", seed.into()),
            ],
        );
    }
    // The signal handlers and the runtime that waits for the shards, set up before any server
    // accepts connections: a client that uses up the file descriptors must not keep the run
    // from starting them (it failed with "Too many open files").
    let waiter = Waiter::new(prep.stop.clone())?;
    // Live control: bound before the shards start, so a bad address fails the run at once.
    let (plane, links) = match opts.grpc.or(opts.admin) {
        Some(_) => {
            // The session journal (`[run] journal_max_bytes = 0`: none).
            let journal = match run.journal_max_bytes {
                0 => None,
                max => {
                    let mut header = serde_json::Map::new();
                    header.insert("run_id".into(), opts.run_id.clone().into());
                    header.insert("seed".into(), seed.to_string().into());
                    header.insert(
                        "clock".into(),
                        match run.clock {
                            ClockMode::Virtual => "virtual",
                            ClockMode::Realtime => "realtime",
                        }
                        .into(),
                    );
                    // A report directory that cannot be written does not stop a runtime from
                    // serving (the report at the end says so again).
                    match crate::control::journal::Journal::open(
                        &run.report_dir,
                        max,
                        prep.start_ms,
                        run.speed,
                        header,
                    ) {
                        Ok(j) => Some(Arc::new(j)),
                        Err(e) => {
                            tracing::warn!(
                                dir = %run.report_dir.display(),
                                "no session journal: cannot create {}: {e}",
                                run.report_dir.join(crate::control::journal::FILE_NAME).display()
                            );
                            None
                        }
                    }
                }
            };
            let options = crate::control::plane::PlaneOptions {
                sinks: Arc::new(config.sinks.clone()),
                strict_protocols: opts.strict_protocols,
                journal,
                sparkplug: fleet.profiles.iter().any(|p| p.format.sparkplug().is_some()),
                seed,
            };
            let (p, l) = crate::control::plane::ControlPlane::new(cores, options);
            (Some(p), l)
        }
        None => (None, vec![]),
    };
    let server = match (opts.grpc, &plane) {
        (Some(addr), Some(p)) => {
            let s = crate::control::service::start(addr, p.clone())
                .with_context(|| format!("cannot serve gRPC on {addr}"))?;
            crate::logs::notice(
                &format!("grpc: listening on {}", s.addr),
                &[("grpc", s.addr.to_string().into())],
            );
            Some(s)
        }
        _ => None,
    };
    let identity = RunIdentity {
        run_id: opts.run_id.clone(),
        seed,
        version: env!("CARGO_PKG_VERSION"),
        clock: match run.clock {
            ClockMode::Virtual => "virtual",
            ClockMode::Realtime => "realtime",
        },
    };
    let dashboard = Arc::new(crate::control::admin::dashboard::Thresholds::new(
        prep.thresholds.clone(),
        run.clock == ClockMode::Realtime,
    ));
    let admin = match (opts.admin, &plane) {
        (Some(addr), Some(p)) => {
            let s = crate::control::admin::start(
                addr,
                p.clone(),
                identity,
                auditor.map(|a| a.probe()),
                dashboard.clone(),
                fleet.profiles.iter().map(|p| (p.device_type.clone(), p.protocol.name())).collect(),
            )
            .with_context(|| format!("cannot serve admin HTTP on {addr}"))?;
            crate::logs::notice(
                &format!("admin: listening on http://{}", s.addr),
                &[("admin", s.addr.to_string().into())],
            );
            Some(s)
        }
        _ => None,
    };
    Ok(Control { waiter, plane, links, server, admin, dashboard })
}

/// The shard threads, once every one has built its devices and sim time has started.
struct Shards {
    handles: Vec<std::thread::JoinHandle<Result<ShardOutcome, String>>>,
    /// Their progress snapshots.
    progress: Receiver<Snapshot>,
    /// Wall seconds the shards took to build their devices.
    spawn_seconds: f64,
    /// The monotonic time sim time started at.
    origin_ns: u64,
}

/// Starts one shard per core, waits until all have built their devices, then starts sim time
/// (and the audit's latency clock with it).
fn start_shards(
    config: &Config,
    prep: &Prepared,
    end_ms: Option<u64>,
    links: Vec<crate::shard::command::ShardControl>,
    auditor: Option<&crate::audit::Auditor>,
) -> anyhow::Result<Shards> {
    let run = &config.run;
    let cores = prep.cores;
    let sinks = Arc::new(config.sinks.clone().seeded(prep.seed));
    // A virtual run sampled by sim time sends a snapshot per step: room for a few polls' worth.
    let per_shard = if run.clock == ClockMode::Virtual { 256 } else { 16 };
    let (progress_tx, progress_rx) = crossbeam_channel::bounded::<Snapshot>(cores * per_shard);
    let ready = Arc::new(Barrier::new(cores + 1));
    let origin = Arc::new(AtomicU64::new(0));
    let mut links = links.into_iter();
    let t0 = mono_ns();
    let mut handles = Vec::with_capacity(cores);
    for index in 0..cores {
        let plan = ShardPlan {
            index,
            shards: cores,
            fleet: prep.fleet.clone(),
            sinks: sinks.clone(),
            seed: prep.seed,
            clock: run.clock,
            speed: run.speed,
            start_ms: prep.start_ms,
            end_ms,
            wall_origin_ns: 0,
            stop: prep.stop.clone(),
            progress: progress_tx.clone(),
            core: if run.pin { prep.core_ids.get(index).copied() } else { None },
            control: links.next(),
            scenario: prep.script.clone(),
            excuses: auditor.map(|a| a.excuses()),
            sample_every_ms: prep.sample_step_ms,
            timer_slack_ns: run.timer_slack_ms * 1_000_000,
        };
        let (ready, origin) = (ready.clone(), origin.clone());
        handles.push(shard::spawn(plan, ready, origin).context("cannot start a shard thread")?);
    }
    drop(progress_tx);
    // Every shard has built its devices: sim time starts now.
    ready.wait();
    let spawn_seconds = (mono_ns() - t0) as f64 / 1e9;
    let origin_ns = mono_ns();
    origin.store(origin_ns, Ordering::Release);
    if let Some(a) = auditor {
        a.set_clock(match run.clock {
            ClockMode::Realtime => crate::audit::LatencyClock::Wall {
                wall0_us: crate::measure::clock::wall_us(),
                start_ms: prep.start_ms,
                speed: run.speed,
            },
            ClockMode::Virtual => crate::audit::LatencyClock::Off,
        });
    }
    ready.wait();
    Ok(Shards { handles, progress: progress_rx, spawn_seconds, origin_ns })
}

/// How the wait ended.
struct Ended {
    /// Stopped by a signal.
    interrupted: bool,
    /// The `abort` threshold that stopped the run, if one did.
    aborted_by: Option<crate::threshold::Verdict>,
    /// The report's time series.
    timeline: report::timeline::Timeline,
}

/// Joins the shards, finishes the audit, builds the report, prints its table and writes it.
fn finish(
    config: &Config,
    opts: &RunOptions,
    prep: &Prepared,
    shards: Shards,
    ended: Ended,
    auditor: Option<crate::audit::Auditor>,
    dashboard: &crate::control::admin::dashboard::Thresholds,
) -> anyhow::Result<Report> {
    let mut outcomes: Vec<ShardOutcome> = vec![];
    let mut errors = vec![];
    for h in shards.handles {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a shard thread panicked".to_string()),
        }
    }
    let wall_seconds = (mono_ns() - shards.origin_ns) as f64 / 1e9;
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    let run = &config.run;
    let sim_end = outcomes.iter().map(|o| o.sim_end_ms).max().unwrap_or(prep.start_ms);
    // A stopped run's shards were somewhere in their last 50 ms (wall) of ticks: the schedule
    // is only trusted up to 100 ms (wall, in sim time) before the end they reported.
    let audit = auditor.map(|a| {
        let stopped = ended.interrupted || ended.aborted_by.is_some();
        let margin = if stopped { (100.0 * run.speed) as u64 } else { 0 };
        let end = crate::audit::EndFacts {
            seed: prep.seed,
            start_ms: prep.start_ms,
            schedule_end_ms: Some(sim_end.saturating_sub(margin).max(prep.start_ms)),
        };
        a.finish(&end, true)
    });
    let figures = Figures { outcomes, wall_seconds, spawn_seconds: shards.spawn_seconds, ended };
    let (report, files, console_in_use) = build_report(config, opts, prep, figures, audit);
    dashboard.finish(&report.thresholds);
    let table = report::render_table(&report);
    if console_in_use {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    let path = report::write(&run.report_dir, &report, &files)
        .with_context(|| format!("cannot write the report to {}", run.report_dir.display()))?;
    crate::logs::notice(
        &format!("report: {}", path.display()),
        &[("report", path.display().to_string().into())],
    );
    Ok(report)
}

/// What the shards measured and how the run ended: what the report is built from.
struct Figures {
    outcomes: Vec<ShardOutcome>,
    wall_seconds: f64,
    spawn_seconds: f64,
    ended: Ended,
}

/// The report (and its histogram files) from the figures: merged statistics, thresholds judged
/// (for the whole run or a phase), the scenario's phases and log, the audit. Also says whether
/// a console sink is in use (the table then goes to stderr).
fn build_report(
    config: &Config,
    opts: &RunOptions,
    prep: &Prepared,
    figures: Figures,
    audit: Option<crate::audit::Conclusion>,
) -> (Report, Vec<(String, hdrhistogram::Histogram<u64>)>, bool) {
    let run = &config.run;
    let Figures { outcomes, wall_seconds, spawn_seconds, ended } = figures;
    let (seed, start_ms) = (prep.seed, prep.start_ms);
    // Each shard's fleet includes the devices spawned on it over gRPC.
    let parts: Vec<_> = outcomes.iter().map(|o| (&*o.fleet, &o.stats)).collect();
    let (fleet, stats) = report::merge_outcomes(&prep.fleet, &parts);
    let sim_end = outcomes.iter().map(|o| o.sim_end_ms).max().unwrap_or(start_ms);
    let audit_rows = audit.as_ref().map(|o| o.rows());
    let facts = RunFacts {
        run_id: opts.run_id.clone(),
        seed,
        cores: prep.cores,
        pinned_shards: outcomes.iter().filter(|o| o.pinned).count(),
        clock: run.clock,
        speed: run.speed,
        start_ms,
        end_ms: sim_end.max(start_ms),
        wall_seconds,
        spawn_seconds,
        interrupted: ended.interrupted,
    };
    let (mut report, files) = report::build(&facts, &fleet, &stats);
    report.aborted_by = ended.aborted_by;
    report.timeline = ended.timeline;
    report.config_hash = config_hash(config);
    let realtime_run = run.clock == ClockMode::Realtime;
    let seconds = match run.clock {
        ClockMode::Realtime => wall_seconds,
        ClockMode::Virtual => report.sim_seconds,
    };
    let whole = Span { profiles: &stats.profiles, lateness: &stats.lateness, seconds };
    let no_profiles = vec![];
    let no_lateness = histogram();
    // A phase's span ends with the run (an interrupted run cuts the last ones short).
    let phase_span = |i: usize| -> (u64, u64) {
        let ph = &opts.scenario.as_ref().map(|s| s.phases[i].clone()).unwrap_or_else(|| Phase {
            name: String::new(),
            start_ms: 0,
            end_ms: 0,
        });
        let a = (start_ms + ph.start_ms).min(facts.end_ms);
        (a, (start_ms + ph.end_ms).min(facts.end_ms).max(a))
    };
    report.thresholds = prep
        .thresholds
        .iter()
        .map(|t| {
            let ix = t.phase.as_ref().and_then(|name| {
                opts.scenario.as_ref()?.phases.iter().position(|p| &p.name == name)
            });
            match ix {
                _ if t.metric.is_audit() => t.judge_audit(audit_rows.as_deref()),
                None => t.judge(&fleet, &whole),
                Some(i) => {
                    let (a, b) = phase_span(i);
                    let sim_s = (b - a) as f64 / 1000.0;
                    let span = Span {
                        profiles: stats.phases.get(i).unwrap_or(&no_profiles),
                        // Tick lateness is not kept per phase: the whole run's.
                        lateness: if realtime_run { &stats.lateness } else { &no_lateness },
                        seconds: if realtime_run { sim_s / run.speed } else { sim_s },
                    };
                    t.judge(&fleet, &span)
                }
            }
        })
        .collect();
    if let Some(sc) = &opts.scenario {
        report.phases = (0..sc.phases.len())
            .map(|i| {
                let (a, b) = phase_span(i);
                report::phase_rows(
                    &sc.phases[i].name,
                    a,
                    b,
                    &fleet,
                    stats.phases.get(i).unwrap_or(&no_profiles),
                )
            })
            .collect();
        let mut facts_sc = scenario_facts(sc, start_ms, facts.end_ms);
        if realtime_run {
            facts_sc.step_lateness_us = Some(report::Percentiles::of(&stats.step_lateness));
        }
        report.scenario = Some(facts_sc);
    }
    drop(audit_rows);
    report.audit = audit.map(|o| o.report);
    let console_in_use =
        fleet.profiles.iter().any(|p| p.protocol == crate::sim::profile::Protocol::Console);
    (report, files, console_in_use)
}

/// FNV-1a 64 of the resolved config's debug form (run settings, sinks, fleet, thresholds).
fn config_hash(config: &Config) -> String {
    let text =
        format!("{:?}|{:?}|{:?}|{:?}", config.run, config.sinks, config.fleet, config.thresholds);
    format!("{:016x}", crate::sim::seed::fnv1a64(text.as_bytes()))
}

/// The report's scenario section: the actions reached by the end of the run and the log.
fn scenario_facts(sc: &Scenario, start_ms: u64, end_ms: u64) -> report::ScenarioFacts {
    let reached = |t: u64| start_ms + t <= end_ms;
    report::ScenarioFacts {
        name: sc.name.clone(),
        file: sc.path.display().to_string(),
        steps: sc.steps,
        actions: sc.timeline.len(),
        actions_applied: sc.timeline.iter().filter(|a| reached(a.at_ms)).count(),
        log: sc
            .timeline
            .iter()
            .filter(|a| reached(a.at_ms))
            .filter_map(|a| match &a.cue {
                Cue::Log(m) => Some(report::LogLine {
                    sim_time: rfc3339_ms(start_ms + a.at_ms),
                    step: a.step,
                    message: m.clone(),
                }),
                _ => None,
            })
            .collect(),
        step_lateness_us: None,
    }
}

/// How `wait` reports progress.
struct Progress {
    every_ms: u64,
    quiet: bool,
    clock: ClockMode,
    start_ms: u64,
    /// Sim ms between two points of a virtual run's time series; 0 = one per wall second.
    sample_step_ms: u64,
}

/// Judges the `abort` thresholds on the latest snapshots; the first that fails.
fn check_aborts(
    aborts: &[&Threshold],
    latest: &[Option<Snapshot>],
    latency: &hdrhistogram::Histogram<u64>,
    seconds: f64,
) -> Option<crate::threshold::Verdict> {
    let mut totals = crate::measure::stats::ProfileStats::new();
    let mut lateness = histogram();
    for s in latest.iter().flatten() {
        totals.counts += s.counts;
        if let Some(l) = &s.lateness {
            let _ = lateness.add(l);
        }
    }
    totals.latency = latency.clone().into();
    aborts.iter().map(|t| t.judge_totals(&totals, &lateness, seconds)).find(|v| !v.passed)
}

/// The main thread's runtime and signal streams.
struct Waiter {
    rt: tokio::runtime::Runtime,
    /// Set on a signal: the shards stop.
    stop: Arc<AtomicBool>,
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

impl Waiter {
    fn new(stop: Arc<AtomicBool>) -> anyhow::Result<Waiter> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the control runtime")?;
        let (sigterm, sigint) = rt.block_on(async {
            let term =
                signal(SignalKind::terminate()).context("cannot install the SIGTERM handler");
            let int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler");
            (term, int)
        });
        Ok(Waiter { rt, stop, sigterm: sigterm?, sigint: sigint? })
    }
}

/// Waits for the shards to end, handling Ctrl-C/SIGTERM, printing progress and checking the
/// `abort` thresholds. Returns whether the run was interrupted, and the abort verdict if any.
fn wait(
    waiter: Waiter,
    handles: &[std::thread::JoinHandle<Result<ShardOutcome, String>>],
    progress: &Receiver<Snapshot>,
    pr: Progress,
    aborts: &[&Threshold],
) -> anyhow::Result<(bool, Option<crate::threshold::Verdict>, report::timeline::Timeline)> {
    let Progress { every_ms: progress_ms, quiet, clock, start_ms, sample_step_ms: step } = pr;
    let Waiter { rt, stop, mut sigterm, mut sigint } = waiter;
    rt.block_on(async {
        // A virtual run sampled by sim time reads its shards' snapshots more often (they come
        // at each sim step and the channel is bounded).
        let mut poll = tokio::time::interval(Duration::from_millis(if step > 0 { 2 } else { 50 }));
        let mut latest: Vec<Option<Snapshot>> = (0..handles.len()).map(|_| None).collect();
        let mut window = histogram();
        // Every completed message's latency since the start (for `abort` thresholds).
        let mut cumulative = histogram();
        let (mut last_print, mut last_total) = (mono_ns(), 0u64);
        let mut last_check = last_print;
        let began = last_print;
        let mut interrupted = false;
        let mut aborted = None;
        // The report's time series: one point per wall second.
        let mut sampler = report::timeline::Sampler::new(match clock {
            ClockMode::Virtual => "sim",
            ClockMode::Realtime => "wall",
        });
        let mut last_sample = began;
        // The sim-time step the last point of a virtual run's series ended in.
        let mut steps = StepAligner::new(handles.len(), start_ms, step);
        loop {
            tokio::select! {
                _ = sigint.recv() => {
                    if interrupted {
                        crate::logs::notice("second interrupt: exiting without a report", &[]);
                        std::process::exit(130);
                    }
                    crate::logs::notice("interrupt: stopping shards, flushing sinks (Ctrl-C again to abort)", &[]);
                    interrupted = true;
                    stop.store(true, Ordering::Relaxed);
                }
                _ = sigterm.recv() => {
                    crate::logs::notice("SIGTERM: stopping shards, flushing sinks", &[]);
                    interrupted = true;
                    stop.store(true, Ordering::Relaxed);
                }
                _ = poll.tick() => {
                    while let Ok(s) = progress.try_recv() {
                        let _ = window.add(&s.latency);
                        if !aborts.is_empty() {
                            let _ = cumulative.add(&s.latency);
                        }
                        let i = s.shard;
                        if step > 0 {
                            steps.queues[i].push_back(s.clone());
                        } else {
                            let _ = sampler.window.add(&s.latency);
                        }
                        latest[i] = Some(s);
                    }
                    let now = mono_ns();
                    if step > 0 && steps.points(&mut sampler, clock, start_ms, (now - began) as f64 / 1e9) {
                        last_sample = now;
                    }
                    if step == 0 && now - last_sample >= TIMELINE_EVERY_NS {
                        sampler.sample(totals(&latest, clock, start_ms, (now - began) as f64 / 1e9, (now - last_sample) as f64 / 1e9));
                        last_sample = now;
                    }
                    if !aborts.is_empty() && aborted.is_none() && now - last_check >= progress_ms * 1_000_000 {
                        last_check = now;
                        let secs = (now - began) as f64 / 1e9;
                        if let Some(v) = check_aborts(aborts, &latest, &cumulative, secs) {
                            eprintln!(
                                "abort: threshold {} = {} {} crossed {}; stopping the run",
                                v.metric, v.value, v.unit, v.limit
                            );
                            stop.store(true, Ordering::Relaxed);
                            aborted = Some(v);
                        }
                    }
                    if !quiet && now - last_print >= progress_ms * 1_000_000 {
                        let total: u64 = latest.iter().flatten().map(|s| s.counts.messages).sum();
                        let secs = (now - last_print) as f64 / 1e9;
                        let devices: usize = latest.iter().flatten().map(|s| s.devices).sum();
                        let errors: u64 = latest.iter().flatten().map(|s| s.counts.errors).sum();
                        let dropped: u64 = latest.iter().flatten().map(|s| s.counts.dropped).sum();
                        let sim = latest.iter().flatten().map(|s| s.sim_now_ms).min().unwrap_or(start_ms);
                        let p99 = if window.is_empty() { 0 } else { window.value_at_quantile(0.99) };
                        let simpart = match clock {
                            ClockMode::Virtual => format!(" sim={} ({:.0} sim-s/s)", rfc3339_ms(sim), (sim.saturating_sub(start_ms)) as f64 / 1000.0 / ((now - began) as f64 / 1e9)),
                            ClockMode::Realtime => String::new(),
                        };
                        let rate = (total - last_total.min(total)) as f64 / secs;
                        crate::logs::notice(
                            &format!(
                                "[{:>7.1}s] devices={devices} msg/s={rate:.0} messages={total} errors={errors} drops={dropped} p99={p99}µs{simpart}",
                                (now - began) as f64 / 1e9,
                            ),
                            &[
                                ("devices", devices.into()),
                                ("msg_per_s", rate.round().into()),
                                ("messages", total.into()),
                                ("errors", errors.into()),
                                ("drops", dropped.into()),
                                ("p99_us", p99.into()),
                            ],
                        );
                        last_print = now;
                        last_total = total;
                        window.reset();
                    }
                    if handles.iter().all(|h| h.is_finished()) {
                        break;
                    }
                }
            }
        }
        // The last stretch (shorter than a second) once every shard's final snapshot is in.
        while let Ok(s) = progress.try_recv() {
            let i = s.shard;
            if step > 0 {
                steps.queues[i].push_back(s.clone());
            } else {
                let _ = sampler.window.add(&s.latency);
            }
            latest[i] = Some(s);
        }
        if step > 0 {
            let now = mono_ns();
            if steps.points(&mut sampler, clock, start_ms, (now - began) as f64 / 1e9) {
                last_sample = now;
            }
            // What is left (past the last whole step) goes into the last point.
            for q in &mut steps.queues {
                for s in q.drain(..) {
                    let _ = sampler.window.add(&s.latency);
                }
            }
        }
        let now = mono_ns();
        if now > last_sample && latest.iter().any(Option::is_some) {
            sampler.sample(totals(&latest, clock, start_ms, (now - began) as f64 / 1e9, (now - last_sample) as f64 / 1e9));
        }
        Ok((interrupted, aborted, sampler.finish()))
    })
}

/// A virtual run's time series by sim time: each shard's snapshots wait here until every
/// shard has one past the next step; the point then adds up, per shard, the snapshot that
/// crossed it (so a shard running ahead in sim time does not put its later messages early).
/// Bounded: a shard is at most the run's steps ahead ([`TIMELINE_VIRTUAL_POINTS`]).
struct StepAligner {
    queues: Vec<std::collections::VecDeque<Snapshot>>,
    /// Per shard, the snapshot the last point used.
    at: Vec<Option<Snapshot>>,
    start_ms: u64,
    step: u64,
    last_step: u64,
    last_wall_s: f64,
}

impl StepAligner {
    fn new(shards: usize, start_ms: u64, step: u64) -> StepAligner {
        StepAligner {
            queues: (0..shards).map(|_| Default::default()).collect(),
            at: (0..shards).map(|_| None).collect(),
            start_ms,
            step,
            last_step: start_ms,
            last_wall_s: 0.0,
        }
    }

    /// Adds every point whose step each shard has passed; whether it added any.
    fn points(
        &mut self,
        sampler: &mut report::timeline::Sampler,
        clock: ClockMode,
        start_ms: u64,
        wall_s: f64,
    ) -> bool {
        let mut added = false;
        loop {
            let b = self.last_step + self.step;
            if !self.queues.iter().all(|q| q.iter().any(|s| s.sim_now_ms >= b)) {
                return added;
            }
            added = true;
            for (q, at) in self.queues.iter_mut().zip(&mut self.at) {
                while let Some(s) = q.pop_front() {
                    let _ = sampler.window.add(&s.latency);
                    let crossed = s.sim_now_ms >= b;
                    *at = Some(s);
                    if crossed {
                        break;
                    }
                }
            }
            let sim = self.at.iter().flatten().map(|s| s.sim_now_ms).min().unwrap_or(b);
            self.last_step = sim - (sim - self.start_ms) % self.step;
            sampler.sample(totals(&self.at, clock, start_ms, wall_s, wall_s - self.last_wall_s));
            self.last_wall_s = wall_s;
        }
    }
}

/// Wall time between two points of the report's time series (realtime, or a virtual run
/// with no end).
const TIMELINE_EVERY_NS: u64 = 1_000_000_000;
/// Points a virtual run's time series aims at (one per sim-time step).
pub const TIMELINE_VIRTUAL_POINTS: u64 = 500;

/// The sim-time step between two points of a virtual run's time series: the run's span over
/// [`TIMELINE_VIRTUAL_POINTS`], in whole sim seconds (at least one); 0 (sample by wall
/// second) for a realtime run or one with no end.
pub fn sample_step_ms(clock: ClockMode, duration_ms: Option<u64>) -> u64 {
    match (clock, duration_ms) {
        (ClockMode::Virtual, Some(d)) if d > 0 => {
            d.div_ceil(TIMELINE_VIRTUAL_POINTS).div_ceil(1000).max(1) * 1000
        }
        _ => 0,
    }
}

/// What the shards' latest snapshots add up to, for the report's time series.
fn totals(
    latest: &[Option<Snapshot>],
    clock: ClockMode,
    start_ms: u64,
    wall_s: f64,
    dt_s: f64,
) -> report::timeline::Totals {
    let shards = || latest.iter().flatten();
    let lateness = (clock == ClockMode::Realtime).then(|| {
        let mut h = histogram();
        for l in shards().filter_map(|s| s.lateness.as_ref()) {
            let _ = h.add(l);
        }
        h
    });
    // Until every shard has reported, the slowest one is still at the start.
    let sim = if latest.iter().all(Option::is_some) {
        shards().map(|s| s.sim_now_ms).min().unwrap_or(start_ms)
    } else {
        start_ms
    };
    report::timeline::Totals {
        t_s: match clock {
            ClockMode::Virtual => sim.saturating_sub(start_ms) as f64 / 1000.0,
            ClockMode::Realtime => wall_s,
        },
        dt_s,
        devices: shards().map(|s| s.devices as u64).sum(),
        counts: shards().map(|s| s.counts).sum(),
        sink_events: shards().map(|s| s.sink_events).sum(),
        faults_active: shards().map(|s| s.faults_active).sum(),
        lateness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::stats::ShardStats;
    use std::path::Path;

    const FLEET: &str = r#"
[run]
seed = 7
clock = "virtual"
start_time = "2026-01-01T00:00:00Z"
duration = "10s"
cores = 2

[[fleet]]
profile = "thermo"
count = 3

[profiles.thermo]
protocol = "null"
interval = "1s"
fields.t = { type = "gaussian", mean = 20, stddev = 1 }

[[threshold]]
metric = "error_rate"
max = "1%"

[[threshold]]
metric = "messages_per_second"
min = 1
"#;

    fn config() -> Config {
        crate::config::parse_str(FLEET, Path::new(".")).unwrap()
    }

    fn opts() -> RunOptions {
        RunOptions { run_id: "0123456789abcdef".into(), quiet: true, ..RunOptions::default() }
    }

    /// What one shard measured: `messages` from the fleet's one profile, `errors` of them lost.
    fn outcome(config: &Config, messages: u64, errors: u64, sim_end_ms: u64) -> ShardOutcome {
        let mut stats = ShardStats::new(1);
        stats.profiles[0].counts.messages = messages;
        stats.profiles[0].counts.errors = errors;
        ShardOutcome { stats, sim_end_ms, pinned: false, fleet: Arc::new(config.fleet.clone()) }
    }

    fn ended() -> Ended {
        Ended { interrupted: false, aborted_by: None, timeline: Default::default() }
    }

    #[test]
    fn prepare_takes_seed_start_shards_and_thresholds_from_the_config() {
        let config = config();
        let prep = prepare(&config, &opts());
        assert_eq!(prep.seed, 7);
        assert_eq!(prep.start_ms, crate::sim::time::parse_rfc3339("2026-01-01T00:00:00Z").unwrap());
        assert_eq!(prep.cores, 2);
        assert_eq!(prep.fleet.device_count(), 3);
        assert_eq!(prep.reachable.profiles.len(), 1);
        let metrics: Vec<&str> = prep.thresholds.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(metrics, ["error_rate", "messages_per_second"]);
        assert_eq!(prep.sample_step_ms, sample_step_ms(ClockMode::Virtual, Some(10_000)));
        assert!(prep.script.is_none());
        assert!(!prep.stop.load(Ordering::Relaxed));
    }

    #[test]
    fn the_report_merges_the_shards_figures_and_judges_the_thresholds() {
        let config = config();
        let opts = opts();
        let prep = prepare(&config, &opts);
        let end = prep.start_ms + 10_000;
        let figures = Figures {
            outcomes: vec![outcome(&config, 20, 1, end), outcome(&config, 10, 0, end - 5)],
            wall_seconds: 0.5,
            spawn_seconds: 0.1,
            ended: ended(),
        };
        let (report, _files, console) = build_report(&config, &opts, &prep, figures, None);
        assert!(!console);
        assert_eq!((report.counts.messages, report.counts.errors), (30, 1));
        assert_eq!(report.seed, 7);
        assert_eq!(report.cores, 2);
        assert_eq!(report.run_id, "0123456789abcdef");
        assert_eq!(report.sim_seconds, 10.0);
        assert!(!report.interrupted);
        // 1 error in 30 messages is over 1%; 30 messages in 10 sim seconds is 3 a second.
        let verdicts: Vec<(&str, bool)> =
            report.thresholds.iter().map(|v| (v.metric.as_str(), v.passed)).collect();
        assert_eq!(verdicts, [("error_rate", false), ("messages_per_second", true)]);
        assert!(report.scenario.is_none() && report.audit.is_none());
    }

    #[test]
    fn an_interrupted_run_reports_the_sim_time_its_shards_reached() {
        let config = config();
        let opts = opts();
        let prep = prepare(&config, &opts);
        let figures = Figures {
            outcomes: vec![outcome(&config, 5, 0, prep.start_ms + 4_000)],
            wall_seconds: 0.2,
            spawn_seconds: 0.1,
            ended: Ended { interrupted: true, ..ended() },
        };
        let (report, ..) = build_report(&config, &opts, &prep, figures, None);
        assert!(report.interrupted);
        assert_eq!(report.sim_seconds, 4.0);
    }
}
