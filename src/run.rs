//! `iot-sim run`: start one shard per core, wait for the end (or a signal) while printing
//! progress, merge what the shards measured and write the report.

use crate::config::{ClockMode, Config};
use crate::measure::clock::{mono_ns, now_ms};
use crate::measure::run_identity::RunIdentity;
use crate::measure::stats::{Snapshot, histogram};
use crate::report::{self, Report, RunFacts};
use crate::scenario::Scenario;
use crate::shard::timeline::{Cue, Phase};
use crate::shard::{self, ShardOutcome, ShardPlan};
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

/// Runs the fleet to its end and returns the report (already printed and written).
pub fn run(config: Config, opts: &RunOptions) -> anyhow::Result<Report> {
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
    // The delivery audit subscribes before the first message is sent (and its HTTP receiver
    // listens before the preflight looks for the sink's server).
    let auditor = match &config.audit {
        Some(a) => Some(
            crate::audit::Auditor::start(
                a,
                Arc::new(config.fleet.clone()),
                seed,
                Some(start_ms),
                false,
            )
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    crate::sink::preflight::check(
        &reachable,
        &config.sinks,
        opts.wait_for_sinks_ms.map(std::time::Duration::from_millis),
    )
    .map_err(anyhow::Error::msg)?;
    // The end never passes the last time the sim clock holds: a run with no duration (or a
    // virtual one that outruns the calendar) stops there instead of repeating one timestamp.
    crate::sim::time::check_span(start_ms, run.duration_ms).map_err(anyhow::Error::msg)?;
    let end_ms = Some(run.duration_ms.map_or(LAST_SIM_MS, |d| start_ms + d));
    let fleet = Arc::new(config.fleet.clone());
    let sinks = Arc::new(config.sinks.clone());
    let stop = Arc::new(AtomicBool::new(false));
    // A virtual run sampled by sim time sends a snapshot per step: room for a few polls' worth.
    let per_shard = if run.clock == ClockMode::Virtual { 256 } else { 16 };
    let (progress_tx, progress_rx) = crossbeam_channel::bounded::<Snapshot>(cores * per_shard);
    let ready = Arc::new(Barrier::new(cores + 1));
    let origin = Arc::new(AtomicU64::new(0));
    if !opts.quiet {
        let line = format!(
            "iot-sim: {} devices, {} profile(s), {} shard(s), {:?} clock, from {}{}",
            fleet.device_count(),
            fleet.profiles.len(),
            cores,
            run.clock,
            rfc3339_ms(start_ms),
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
    let waiter = Waiter::new(stop.clone())?;
    // Live control: bound before the shards start, so a bad address fails the run at once.
    let (plane, links) = match opts.grpc.or(opts.admin) {
        Some(_) => {
            let options = crate::control::plane::PlaneOptions {
                sinks: Arc::new(config.sinks.clone()),
                strict_protocols: opts.strict_protocols,
            };
            let (p, l) = crate::control::plane::ControlPlane::new(cores, options);
            (Some(p), l)
        }
        None => (None, vec![]),
    };
    let mut links = links.into_iter();
    let mut server = match (opts.grpc, &plane) {
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
    // The dashboard's thresholds (the same list, in the same order, the report judges).
    let dashboard_thresholds = Arc::new(crate::control::admin::dashboard::Thresholds::new(
        config
            .thresholds
            .iter()
            .chain(opts.scenario.iter().flat_map(|s| s.thresholds.iter()))
            .cloned()
            .collect(),
        run.clock == ClockMode::Realtime,
    ));
    let _admin = match (opts.admin, &plane) {
        (Some(addr), Some(p)) => {
            let s = crate::control::admin::start(
                addr,
                p.clone(),
                identity.clone(),
                auditor.as_ref().map(|a| a.probe()),
                dashboard_thresholds.clone(),
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
    // A virtual run's time series is sampled by sim time (a scenario's run lasts its span).
    let sample_step = sample_step_ms(
        run.clock,
        run.duration_ms.or(opts.scenario.as_ref().map(|s| s.duration_ms)),
    );
    let script = opts.scenario.as_ref().map(|s| Arc::new(s.script()));
    let t0 = mono_ns();
    let mut handles = Vec::with_capacity(cores);
    for index in 0..cores {
        let plan = ShardPlan {
            index,
            shards: cores,
            fleet: fleet.clone(),
            sinks: sinks.clone(),
            seed,
            clock: run.clock,
            speed: run.speed,
            start_ms,
            end_ms,
            wall_origin_ns: 0,
            stop: stop.clone(),
            progress: progress_tx.clone(),
            core: if run.pin { core_ids.get(index).copied() } else { None },
            control: links.next(),
            scenario: script.clone(),
            excuses: auditor.as_ref().map(|a| a.excuses()),
            sample_every_ms: sample_step,
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
    if let Some(a) = &auditor {
        a.set_clock(match run.clock {
            ClockMode::Realtime => crate::audit::LatencyClock::Wall {
                wall0_us: crate::measure::clock::wall_us(),
                start_ms,
                speed: run.speed,
            },
            ClockMode::Virtual => crate::audit::LatencyClock::Off,
        });
    }
    ready.wait();
    // Every shard holds its descriptors now: clients may connect.
    if let Some(s) = &mut server {
        s.open();
    }

    // `abort = true` thresholds are checked on the running figures at every progress interval
    // (realtime only: a virtual run is judged at its end).
    let aborts: Vec<&Threshold> = config
        .thresholds
        .iter()
        .chain(opts.scenario.iter().flat_map(|s| s.thresholds.iter()))
        .filter(|t| t.abort && run.clock == ClockMode::Realtime)
        .collect();
    let (interrupted, aborted_by, timeline) = wait(
        waiter,
        &handles,
        &progress_rx,
        Progress {
            every_ms: run.progress_interval_ms,
            quiet: opts.quiet,
            clock: run.clock,
            start_ms,
            sample_step_ms: sample_step,
        },
        &aborts,
    )?;
    let mut outcomes: Vec<ShardOutcome> = vec![];
    let mut errors = vec![];
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a shard thread panicked".to_string()),
        }
    }
    let wall_seconds = (mono_ns() - origin_ns) as f64 / 1e9;
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    // Each shard's fleet includes the devices spawned on it over gRPC.
    let parts: Vec<_> = outcomes.iter().map(|o| (&*o.fleet, &o.stats)).collect();
    let (fleet, stats) = report::merge_outcomes(&fleet, &parts);
    let sim_end = outcomes.iter().map(|o| o.sim_end_ms).max().unwrap_or(start_ms);
    // A stopped run's shards were somewhere in their last 50 ms (wall) of ticks: the schedule
    // is only trusted up to 100 ms (wall, in sim time) before the end they reported.
    let audit = auditor.map(|a| {
        let margin =
            if interrupted || aborted_by.is_some() { (100.0 * run.speed) as u64 } else { 0 };
        let end = crate::audit::EndFacts {
            seed,
            start_ms,
            schedule_end_ms: Some(sim_end.saturating_sub(margin).max(start_ms)),
        };
        a.finish(&end, true)
    });
    let audit_rows = audit.as_ref().map(|o| o.rows());
    let facts = RunFacts {
        run_id: opts.run_id.clone(),
        seed,
        cores,
        pinned_shards: outcomes.iter().filter(|o| o.pinned).count(),
        clock: run.clock,
        speed: run.speed,
        start_ms,
        end_ms: sim_end.max(start_ms),
        wall_seconds,
        spawn_seconds,
        interrupted,
    };
    let (mut report, files) = report::build(&facts, &fleet, &stats);
    report.aborted_by = aborted_by;
    report.timeline = timeline;
    report.config_hash = config_hash(&config);
    let thresholds: Vec<&Threshold> = config
        .thresholds
        .iter()
        .chain(opts.scenario.iter().flat_map(|s| s.thresholds.iter()))
        .collect();
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
    report.thresholds = thresholds
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
    dashboard_thresholds.finish(&report.thresholds);
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
    let table = report::render_table(&report);
    let console_in_use =
        fleet.profiles.iter().any(|p| p.protocol == crate::sim::profile::Protocol::Console);
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
        totals.messages += s.messages;
        totals.errors += s.errors;
        totals.dropped += s.dropped;
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
                        let total: u64 = latest.iter().flatten().map(|s| s.messages).sum();
                        let secs = (now - last_print) as f64 / 1e9;
                        let devices: usize = latest.iter().flatten().map(|s| s.devices).sum();
                        let errors: u64 = latest.iter().flatten().map(|s| s.errors).sum();
                        let dropped: u64 = latest.iter().flatten().map(|s| s.dropped).sum();
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
        messages: shards().map(|s| s.messages).sum(),
        errors: shards().map(|s| s.errors).sum(),
        dropped: shards().map(|s| s.dropped).sum(),
        sink_events: shards().map(|s| s.sink_events).sum(),
        faults_active: shards().map(|s| s.faults_active).sum(),
        lateness,
    }
}
