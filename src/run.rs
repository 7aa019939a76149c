//! `iot-sim run`: start one shard per core, wait for the end (or a signal) while printing
//! progress, merge what the shards measured and write the report.

use crate::config::{ClockMode, Config};
use crate::measure::clock::mono_ns;
use crate::measure::stats::{Snapshot, histogram};
use crate::report::{self, Report, RunFacts};
use crate::shard::{self, ShardOutcome, ShardPlan};
use crate::sim::time::{format_duration_ms, rfc3339_ms};
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
    /// This run's id (in every log line, `report.json` and `iot_sim_run_info`).
    pub run_id: String,
}

/// What identifies a run to an observer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunIdentity {
    pub run_id: String,
    pub seed: u64,
    pub version: &'static str,
    pub clock: &'static str,
}

/// A random run id: 16 hex digits.
pub fn random_run_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:016x}", RandomState::new().hash_one(nanos ^ ((std::process::id() as u64) << 32)))
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

/// Wall-clock "now" in ms since the epoch: the default sim start.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    if cores > core_ids.len() {
        tracing::warn!(
            shards = cores,
            cores = core_ids.len(),
            "more shards than usable cores: shards beyond core {} run unpinned",
            core_ids.len()
        );
    }
    crate::sink::preflight::check(
        &config.fleet,
        &config.sinks,
        opts.wait_for_sinks_ms.map(std::time::Duration::from_millis),
    )
    .map_err(anyhow::Error::msg)?;
    let end_ms = run.duration_ms.map(|d| start_ms + d);
    let fleet = Arc::new(config.fleet.clone());
    let sinks = Arc::new(config.sinks.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let (progress_tx, progress_rx) = crossbeam_channel::bounded::<Snapshot>(cores * 16);
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
    let _server = match (opts.grpc, &plane) {
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
    let _admin = match (opts.admin, &plane) {
        (Some(addr), Some(p)) => {
            let s = crate::control::admin::start(addr, p.clone(), identity.clone())
                .with_context(|| format!("cannot serve admin HTTP on {addr}"))?;
            crate::logs::notice(
                &format!("admin: listening on http://{}", s.addr),
                &[("admin", s.addr.to_string().into())],
            );
            Some(s)
        }
        _ => None,
    };
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
            core: core_ids.get(index).copied(),
            control: links.next(),
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
    ready.wait();

    let interrupted = wait(
        &handles,
        &stop,
        &progress_rx,
        run.progress_interval_ms,
        opts.quiet,
        run.clock,
        start_ms,
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
    let (report, files) = report::build(&facts, &fleet, &stats);
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

/// Waits for the shards to end, handling Ctrl-C/SIGTERM and printing progress. Returns whether
/// the run was interrupted.
fn wait(
    handles: &[std::thread::JoinHandle<Result<ShardOutcome, String>>],
    stop: &Arc<AtomicBool>,
    progress: &Receiver<Snapshot>,
    progress_ms: u64,
    quiet: bool,
    clock: ClockMode,
    start_ms: u64,
) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    rt.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        let mut latest: Vec<Option<Snapshot>> = (0..handles.len()).map(|_| None).collect();
        let mut window = histogram();
        let (mut last_print, mut last_total) = (mono_ns(), 0u64);
        let began = last_print;
        let mut interrupted = false;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
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
                        let i = s.shard;
                        latest[i] = Some(s);
                    }
                    let now = mono_ns();
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
        Ok(interrupted)
    })
}
