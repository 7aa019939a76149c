//! The end-of-run report: per-shard histograms merged, a terminal table, `report.json`,
//! HdrHistogram percentile-distribution files (`*.hgrm`) that standard plotters read and a
//! self-contained `report.html` (see [`html`]); [`compare`] sets two reports side by side.

pub mod compare;
pub mod html;
mod merge;
pub mod timeline;
pub(crate) use merge::merge_outcomes;

use crate::measure::counters::Counters;
use crate::measure::stats::{ProfileStats, ShardStats};
use crate::sim::profile::Fleet;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// Percentiles of a µs histogram.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// One row: a (sink, device type) pair.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub sink: String,
    pub device_type: String,
    /// Devices spawned over gRPC asking for a protocol this runtime had no sink for were
    /// published to `sink` (the console) instead: the protocol they asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_protocol: Option<String>,
    pub devices: u64,
    #[serde(flatten)]
    pub counts: Counters,
    pub bytes: u64,
    /// Completed messages per wall-clock second.
    pub msgs_per_s: f64,
    /// Intended send time -> completion.
    pub latency_us: Percentiles,
    /// Hand-over to the sink -> completion.
    pub service_us: Percentiles,
    /// Errors by kind (`timeout`, `nack`, `http_503`, `shutdown`, ...).
    pub error_kinds: BTreeMap<String, u64>,
    /// Times a connection entered slow-down (backpressure = "slow_down").
    pub slowdowns: u64,
    /// File names (inside the report folder) of the `.hgrm` files.
    pub hgrm: Vec<String>,
    /// The latency percentile distribution, `[percentile, µs]` pairs (HdrHistogram's
    /// iteration, at most `limits::MAX_DISTRIBUTION_POINTS`): what the HTML charts plot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_distribution: Vec<(f64, u64)>,
    /// Samples taken (devices down, asleep or paused take none).
    pub samples: u64,
    /// Samples handed to the sink (periodic: all; on_change: those that changed or the
    /// heartbeat). `messages` also counts event messages.
    pub published: u64,
    /// Samples on_change did not publish (nothing moved past its deadband).
    pub suppressed: u64,
    /// Event messages by event name.
    pub events: BTreeMap<String, u64>,
    /// Device-seconds offline (availability) and asleep (sleep windows), in sim time.
    pub offline_s: f64,
    pub asleep_s: f64,
    /// Derived values that came out NaN or infinite and were published as null.
    pub nonfinite_values: u64,
    /// Downlink commands (per-device MQTT sessions): absent when none was received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<Commands>,
}

/// Downlink commands of one row.
#[derive(Clone, Debug, Serialize)]
pub struct Commands {
    pub received: u64,
    /// Answered on the respond topic.
    pub answered: u64,
    /// `sent_at` -> receipt, µs (commands that carry `sent_at`; `count` says how many).
    pub round_trip_us: Percentiles,
}

/// The whole report, as written to `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The run's id (`--run-id`), as in its log lines and `iot_sim_run_info`.
    pub run_id: String,
    pub seed: u64,
    /// iot-sim's version.
    pub version: String,
    /// FNV-1a 64 of the resolved config (run settings, sinks, fleet), hex: two reports with
    /// the same hash ran the same config.
    pub config_hash: String,
    pub cores: usize,
    pub pinned_shards: usize,
    pub clock: crate::config::ClockMode,
    pub speed: f64,
    pub start_time: String,
    pub end_time: String,
    pub devices: u64,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    /// Sim seconds per wall second.
    pub sim_speed_ratio: f64,
    pub spawn_seconds: f64,
    pub peak_rss_bytes: u64,
    pub cpu_seconds: f64,
    #[serde(flatten)]
    pub counts: Counters,
    pub msgs_per_s: f64,
    pub interrupted: bool,
    pub runs: Vec<Row>,
    /// Actual fire time - intended time (realtime clock only).
    pub tick_lateness_us: Option<Percentiles>,
    /// Connection events of network sinks (`mqtt.reconnect`, `amqp.connect_error`, ...).
    pub sink_events: BTreeMap<String, u64>,
    /// The scenario that drove the run, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario: Option<ScenarioFacts>,
    /// Rows per named phase of the scenario (messages by their intended sim time).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseRows>,
    /// Every threshold with its measured value and verdict.
    pub thresholds: Vec<crate::threshold::Verdict>,
    /// Set when a threshold with `abort = true` stopped a realtime run early: what it measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted_by: Option<crate::threshold::Verdict>,
    /// The delivery audit (`[audit]` / `--audit`), if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditReport>,
    /// The run's figures over time (about one point per wall second, downsampled to at most
    /// `limits::MAX_TIMELINE_POINTS`).
    pub timeline: timeline::Timeline,
}

/// What the report says about the scenario.
#[derive(Clone, Debug, Serialize, Default)]
pub struct ScenarioFacts {
    pub name: String,
    pub file: String,
    /// Steps in the file and actions they expanded into.
    pub steps: usize,
    pub actions: usize,
    /// Actions that took effect before the run ended.
    pub actions_applied: usize,
    /// `log` steps that were reached: sim time and message.
    pub log: Vec<LogLine>,
    /// Realtime: how late each action took effect against its intended wall time (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_lateness_us: Option<Percentiles>,
}

/// One `log` step that was reached.
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub sim_time: String,
    pub step: usize,
    pub message: String,
}

/// A phase's rows: the same columns as the run's, for messages intended within the phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRows {
    pub name: String,
    pub start_time: String,
    pub end_time: String,
    pub sim_seconds: f64,
    #[serde(flatten)]
    pub counts: Counters,
    /// Messages per sim second of the phase.
    pub msgs_per_sim_s: f64,
    pub runs: Vec<Row>,
}

/// Inputs the report needs besides the merged statistics.
pub struct RunFacts {
    pub run_id: String,
    pub seed: u64,
    pub cores: usize,
    pub pinned_shards: usize,
    pub clock: crate::config::ClockMode,
    pub speed: f64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub wall_seconds: f64,
    pub spawn_seconds: f64,
    pub interrupted: bool,
}

/// Builds the report and the histograms to write.
pub fn build(
    facts: &RunFacts,
    fleet: &Fleet,
    stats: &ShardStats,
) -> (Report, Vec<(String, Histogram<u64>)>) {
    let wall = facts.wall_seconds.max(1e-9);
    let mut files = vec![];
    let runs = rows_of(fleet, &stats.profiles, wall, Some(&mut files));
    let realtime = facts.clock == crate::config::ClockMode::Realtime;
    if realtime {
        files.push(("tick_lateness.hgrm".into(), stats.lateness.clone()));
    }
    let sim_seconds = facts.end_ms.saturating_sub(facts.start_ms) as f64 / 1000.0;
    let report = Report {
        run_id: facts.run_id.clone(),
        seed: facts.seed,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: String::new(),
        cores: facts.cores,
        pinned_shards: facts.pinned_shards,
        clock: facts.clock,
        speed: facts.speed,
        start_time: crate::sim::time::rfc3339_ms(facts.start_ms),
        end_time: crate::sim::time::rfc3339_ms(facts.end_ms),
        devices: fleet.device_count(),
        sim_seconds,
        wall_seconds: round3(facts.wall_seconds),
        sim_speed_ratio: round1(sim_seconds / wall),
        spawn_seconds: round3(facts.spawn_seconds),
        peak_rss_bytes: peak_rss_bytes(),
        cpu_seconds: round3(cpu_seconds()),
        counts: stats.counts(),
        msgs_per_s: round1(stats.counts().messages as f64 / wall),
        interrupted: facts.interrupted,
        runs,
        tick_lateness_us: realtime.then(|| Percentiles::of(&stats.lateness)),
        sink_events: stats.sink_events.clone(),
        scenario: None,
        phases: vec![],
        thresholds: vec![],
        aborted_by: None,
        audit: None,
        timeline: timeline::Timeline::default(),
    };
    (report, files)
}

/// Rows per (sink, device type) of per-profile statistics; `files` collects the `.hgrm`
/// histograms to write (the run's rows have them, a phase's do not).
fn rows_of(
    fleet: &Fleet,
    profiles: &[ProfileStats],
    seconds: f64,
    mut files: Option<&mut Vec<(String, Histogram<u64>)>>,
) -> Vec<Row> {
    type Key = (String, String, Option<String>);
    let mut rows: BTreeMap<Key, (ProfileStats, u64)> = BTreeMap::new();
    let mut events: BTreeMap<Key, BTreeMap<String, u64>> = BTreeMap::new();
    for (i, prof) in fleet.profiles.iter().enumerate() {
        let devices: u64 = fleet.groups.iter().filter(|g| g.profile == i).map(|g| g.count).sum();
        let key = (
            prof.protocol.name().to_string(),
            prof.device_type.clone(),
            prof.requested_protocol.clone(),
        );
        // Event counts are kept by the profile's event index; the row names them.
        let ev = events.entry(key.clone()).or_default();
        if let Some(st) = profiles.get(i) {
            for (spec, n) in prof.behaviour.events.iter().zip(&st.events) {
                *ev.entry(spec.name.clone()).or_insert(0) += n;
            }
        }
        let e = rows.entry(key).or_default();
        if let Some(st) = profiles.get(i) {
            e.0.merge(st);
        }
        e.1 += devices;
    }
    rows.into_iter()
        .map(|(key, (mut s, devices))| {
            let events = events.remove(&key).unwrap_or_default();
            let (sink, device_type, requested_protocol) = key;
            let base = match &requested_protocol {
                None => format!("{sink}_{}", sanitize(&device_type)),
                Some(asked) => format!("{sink}_{}_as_{}", sanitize(&device_type), sanitize(asked)),
            };
            let (latency_us, service_us) =
                (Percentiles::of(&s.latency), Percentiles::of(&s.service));
            let (mut hgrm, mut latency_distribution) = (vec![], vec![]);
            if let Some(files) = files.as_deref_mut() {
                // Moved, not copied: a fleet file with 4,000 device types has 8,000 of them.
                hgrm = vec![format!("latency_{base}.hgrm"), format!("service_{base}.hgrm")];
                latency_distribution = distribution(&s.latency);
                files.push((hgrm[0].clone(), std::mem::take(&mut s.latency).into_inner()));
                files.push((hgrm[1].clone(), std::mem::take(&mut s.service).into_inner()));
            }
            Row {
                msgs_per_s: round1(s.counts.messages as f64 / seconds),
                latency_us,
                service_us,
                error_kinds: s.error_kinds.clone(),
                slowdowns: s.slowdowns,
                counts: s.counts,
                bytes: s.bytes,
                devices,
                sink,
                device_type,
                requested_protocol,
                hgrm,
                latency_distribution,
                samples: s.samples,
                published: s.published,
                suppressed: s.suppressed,
                events,
                offline_s: round3(s.offline_ms as f64 / 1000.0),
                asleep_s: round3(s.asleep_ms as f64 / 1000.0),
                nonfinite_values: s.nonfinite,
                commands: (s.commands > 0).then(|| Commands {
                    received: s.commands,
                    answered: s.commands_answered,
                    round_trip_us: Percentiles::of(&s.command_rtt),
                }),
            }
        })
        .collect()
}

/// A phase's rows (`start_ms`/`end_ms` are absolute sim times; msg/s per sim second).
pub fn phase_rows(
    name: &str,
    start_ms: u64,
    end_ms: u64,
    fleet: &Fleet,
    profiles: &[ProfileStats],
) -> PhaseRows {
    let sim_seconds = end_ms.saturating_sub(start_ms) as f64 / 1000.0;
    let runs = rows_of(fleet, profiles, sim_seconds.max(1e-9), None);
    let counts: Counters = runs.iter().map(|r| r.counts).sum();
    PhaseRows {
        name: name.to_string(),
        start_time: crate::sim::time::rfc3339_ms(start_ms),
        end_time: crate::sim::time::rfc3339_ms(end_ms),
        sim_seconds,
        counts,
        msgs_per_sim_s: round1(counts.messages as f64 / sim_seconds.max(1e-9)),
        runs,
    }
}

/// `[percentile, µs]` pairs of a histogram, as HdrHistogram's percentile iteration walks it
/// (5 steps per halving of the distance to 100%), thinned to at most
/// `limits::MAX_DISTRIBUTION_POINTS` (the last point, the max, is always kept).
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return vec![];
    }
    let all: Vec<(f64, u64)> = h
        .iter_quantiles(5)
        .map(|v| {
            let q = (v.quantile_iterated_to() * 1e9).round() / 1e9;
            (q, h.highest_equivalent(v.value_iterated_to()))
        })
        .collect();
    let max = crate::limits::MAX_DISTRIBUTION_POINTS;
    let step = all.len().div_ceil(max).max(1);
    let mut out: Vec<(f64, u64)> = all.iter().step_by(step).copied().collect();
    if let Some(&last) = all.last()
        && out.last() != Some(&last)
    {
        if out.len() >= max {
            out.pop();
        }
        out.push(last);
    }
    out
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect()
}

/// Writes `report.json` and the `.hgrm` files; returns the report's path.
pub fn write(
    dir: &Path,
    report: &Report,
    files: &[(String, Histogram<u64>)],
) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
    for (name, h) in files {
        std::fs::write(dir.join(name), percentile_distribution(h))?;
    }
    let path = dir.join("report.json");
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    std::fs::write(&path, json + "\n")?;
    let t0 = std::time::Instant::now();
    let page = html::report(report);
    std::fs::write(dir.join("report.html"), &page)?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    crate::logs::notice(
        &format!("report.html: {} bytes, rendered and written in {ms:.3} ms", page.len()),
        &[("report_html_bytes", page.len().into()), ("report_html_ms", ms.into())],
    );
    Ok(path)
}

/// HdrHistogram's classic percentile-distribution text, values in milliseconds.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let scale = 1000.0;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(out, "{value:12.3} {q:14.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(out, "{value:12.3} {q:14.12} {total:10}");
            }
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let _ = writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(out, "#[Max     = {max:12.3}, Total count    = {:12}]", h.len());
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values() / h.buckets().max(1) as usize
    );
    out
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// Current resident memory of this process (VmRSS), bytes.
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of this process, seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass; RUSAGE_SELF always exists.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The terminal table.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\niot-sim report  seed={}  cores={}  clock={}  devices={}  sim={:.1}s  wall={:.2}s  ({:.1} sim-s per wall-s)",
        r.seed,
        r.cores,
        serde_json::to_value(r.clock)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        r.devices,
        r.sim_seconds,
        r.wall_seconds,
        r.sim_speed_ratio
    );
    let _ = writeln!(
        out,
        "{:<8} {:<24} {:>12} {:>8} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "sink",
        "device_type",
        "messages",
        "errors",
        "drops",
        "msg/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs"
    );
    for row in &r.runs {
        let l = &row.latency_us;
        let sink = match &row.requested_protocol {
            None => row.sink.clone(),
            Some(_) => format!("{}*", row.sink),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<24} {:>12} {:>8} {:>8} {:>12.1} {:>9} {:>9} {:>9} {:>9} {:>10}",
            sink,
            row.device_type,
            row.counts.messages,
            row.counts.errors,
            row.counts.dropped,
            row.msgs_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
    }
    for row in r.runs.iter().filter(|row| row.requested_protocol.is_some()) {
        let _ = writeln!(
            out,
            "* {} {}: asked for {}, which this runtime has no sink for; published to {}",
            row.sink,
            row.device_type,
            row.requested_protocol.as_deref().unwrap_or(""),
            row.sink
        );
    }
    if let Some(l) = &r.tick_lateness_us {
        let _ = writeln!(
            out,
            "tick lateness µs: p50={} p90={} p99={} p99.9={} max={} (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
    }
    let _ = writeln!(
        out,
        "total: {} messages, {} errors, {} dropped, {:.1} msg/s; spawn {:.3}s; peak RSS {:.1} MiB; CPU {:.2}s",
        r.counts.messages,
        r.counts.errors,
        r.counts.dropped,
        r.msgs_per_s,
        r.spawn_seconds,
        r.peak_rss_bytes as f64 / 1048576.0,
        r.cpu_seconds
    );
    for row in r.runs.iter().filter(|row| !row.error_kinds.is_empty() || row.slowdowns > 0) {
        let kinds: Vec<String> = row.error_kinds.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{} {}: errors by kind: {}; slow-downs: {}",
            row.sink,
            row.device_type,
            kinds.join(" "),
            row.slowdowns
        );
    }
    for row in r.runs.iter() {
        if let Some(c) = &row.commands {
            let _ = writeln!(
                out,
                "{} {}: commands received {}, answered {}; round trip p50 {:.1} ms, p99 {:.1} ms ({} with sent_at)",
                row.sink,
                row.device_type,
                c.received,
                c.answered,
                c.round_trip_us.p50 as f64 / 1000.0,
                c.round_trip_us.p99 as f64 / 1000.0,
                c.round_trip_us.count
            );
        }
    }
    for row in r.runs.iter().filter(|row| {
        row.samples != row.published
            || !row.events.is_empty()
            || row.nonfinite_values > 0
            || row.offline_s > 0.0
            || row.asleep_s > 0.0
    }) {
        let ev: Vec<String> = row.events.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{} {}: samples {} published {} suppressed {}; events {}; offline {:.0} device-s, asleep {:.0} device-s; null values {}",
            row.sink,
            row.device_type,
            row.samples,
            row.published,
            row.suppressed,
            if ev.is_empty() { "none".to_string() } else { ev.join(" ") },
            row.offline_s,
            row.asleep_s,
            row.nonfinite_values
        );
    }
    if !r.sink_events.is_empty() {
        let ev: Vec<String> = r.sink_events.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "sink events: {}", ev.join(" "));
    }
    for ph in &r.phases {
        let _ = writeln!(
            out,
            "phase {} ({} .. {}, {:.0} sim-s): {} messages, {} errors, {} drops, {:.1} msg per sim-s",
            ph.name,
            ph.start_time,
            ph.end_time,
            ph.sim_seconds,
            ph.counts.messages,
            ph.counts.errors,
            ph.counts.dropped,
            ph.msgs_per_sim_s
        );
        for row in &ph.runs {
            let l = &row.latency_us;
            let _ = writeln!(
                out,
                "  {:<8} {:<24} {:>12} {:>8} {:>8} {:>12.1} {:>9} {:>9} {:>9} {:>9} {:>10}",
                row.sink,
                row.device_type,
                row.counts.messages,
                row.counts.errors,
                row.counts.dropped,
                row.msgs_per_s,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            );
        }
    }
    if let Some(sc) = &r.scenario {
        let _ = writeln!(
            out,
            "scenario {}: {} steps, {} of {} actions applied",
            sc.name, sc.steps, sc.actions_applied, sc.actions
        );
        if let Some(l) = &sc.step_lateness_us {
            let _ = writeln!(
                out,
                "step lateness µs: p50={} p99={} max={} (n={})",
                l.p50, l.p99, l.max, l.count
            );
        }
        for line in &sc.log {
            let _ = writeln!(out, "  log {} step[{}]: {}", line.sim_time, line.step, line.message);
        }
    }
    if let Some(a) = &r.audit {
        out.push_str(&crate::audit::render(a));
    }
    out.push_str(&crate::threshold::render(&r.thresholds));
    if let Some(v) = &r.aborted_by {
        let _ = writeln!(
            out,
            "(aborted early: threshold {} = {} {} crossed {} during the run)",
            v.metric, v.value, v.unit, v.limit
        );
    }
    if r.interrupted {
        let _ = writeln!(out, "(stopped early by a signal)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::stats::histogram;

    #[test]
    fn percentile_distribution_has_the_hdr_layout() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let text = percentile_distribution(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(text.contains("#[Max     =        1.000, Total count    =         1000]"));
        let last_data =
            text.lines().rfind(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
        assert!(last_data.contains("1.000000000000"), "{last_data}");
    }

    #[test]
    fn a_distribution_is_bounded_and_ends_at_the_max() {
        let mut h = histogram();
        for v in 1..=1_000_000u64 {
            h.record(v % 50_000 + 1).unwrap();
        }
        h.record(9_000_000).unwrap();
        let d = distribution(&h);
        assert!(d.len() <= crate::limits::MAX_DISTRIBUTION_POINTS, "{}", d.len());
        assert!(d.len() > 20, "{}", d.len());
        assert_eq!(d.last().map(|p| p.0), Some(1.0));
        assert_eq!(d.last().map(|p| p.1), Some(h.highest_equivalent(9_000_000)));
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(distribution(&histogram()).is_empty());
    }

    #[test]
    fn percentiles_of_an_empty_histogram_are_zero() {
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }
}
