//! Fleets that behave like real ones, checked statistically on long virtual runs of the built
//! binary: report-on-change, Poisson events, availability, sleep windows, derived and
//! correlated fields; and determinism across runs and core counts with all of them on.

use crate::common;

use common::{bin, output_within, stderr};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DAY_MS: f64 = 86_400_000.0;

/// Two sim days of five device kinds, one feature each (plus derived fields), to a file.
fn fleet(dir: &Path) -> String {
    format!(
        r#"
[run]
seed = 11
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "2d"

[sink.file]
path = "{dir}/out.jsonl"

[[fleet]]
profile = "meter"
count = 50

[[fleet]]
profile = "alarm"
count = 100

[[fleet]]
profile = "churn"
count = 200

[[fleet]]
profile = "sleeper"
count = 50

[[fleet]]
profile = "room"
count = 50

[profiles.meter]
protocol = "file"
interval = "10s"
report = {{ mode = "on_change", max_silence = "15m" }}
[profiles.meter.fields.power]
type = "brownian"
start = 3.0
mean = 3.0
volatility = 0.05
mean_reversion = 0.01
decimals = 3
deadband = 0.5
[profiles.meter.fields.current]
type = "derived"
expr = "power * 1000 / 230"
decimals = 3

[profiles.alarm]
protocol = "file"
interval = "1h"
[profiles.alarm.fields.ok]
type = "static"
value = true
[profiles.alarm.events.overheat]
rate_per_hour = 6
fields = {{ level = {{ type = "static", value = "high" }} }}

[profiles.churn]
protocol = "file"
interval = "5m"
[profiles.churn.fields.v]
type = "gaussian"
mean = 0
stddev = 1
[profiles.churn.availability]
mtbf = "1h"
mttr = "20m"

[profiles.sleeper]
protocol = "file"
interval = "10s"
[profiles.sleeper.fields.battery]
type = "brownian"
start = 100
drift = -0.001
volatility = 0
[profiles.sleeper.sleep]
period = "10m"
awake = "1m"

[profiles.room]
protocol = "file"
interval = "1m"
[profiles.room.fields.climate]
type = "correlated_gaussian"
fields = ["temperature", "humidity"]
means = [22.0, 45.0]
stddevs = [1.5, 5.0]
correlation = [[1.0, -0.7], [-0.7, 1.0]]
[profiles.room.fields.dew_gap]
type = "derived"
expr = "temperature - (100 - humidity) / 5 + noise(0, 0)"
"#,
        dir = dir.display()
    )
}

/// Runs `toml` with `cores` shards; returns the parsed payloads, the raw per-shard files and
/// the report.
fn run(dir: &Path, toml: &str, cores: u16) -> (Vec<(String, Value)>, Vec<Vec<u8>>, Value) {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let rd = dir.join("report");
    let child = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", &cores.to_string(), "--quiet"])
        .args(["--report-dir", rd.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, 300);
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    assert_eq!(names.len(), cores as usize, "one file per shard: {names:?}");
    let (mut msgs, mut raw) = (vec![], vec![]);
    for n in names {
        let bytes = std::fs::read(&n).unwrap();
        for line in std::str::from_utf8(&bytes).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            msgs.push((v["topic"].as_str().unwrap().to_string(), v["payload"].clone()));
        }
        raw.push(bytes);
        std::fs::remove_file(n).unwrap();
    }
    let report = common::report(dir);
    (msgs, raw, report)
}

fn ms(p: &Value) -> f64 {
    let t = p["timestamp"].as_str().unwrap();
    // 2026-03-14T00:00:00.000Z -> ms since the run's start day.
    let day: f64 = t[8..10].parse().unwrap();
    let h: f64 = t[11..13].parse().unwrap();
    let m: f64 = t[14..16].parse().unwrap();
    let s: f64 = t[17..23].parse().unwrap();
    (day - 14.0) * DAY_MS + h * 3_600_000.0 + m * 60_000.0 + s * 1000.0
}

fn num(p: &Value, field: &str) -> f64 {
    p["fields"][field].as_f64().unwrap_or_else(|| panic!("{field} in {p}"))
}

/// Payloads of one device type (samples only, or events only), by device, in time order.
fn by_device(msgs: &[(String, Value)], kind: &str, events: bool) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (_, p) in msgs {
        if p["device_type"] == kind && p.get("event").is_some() == events {
            out.entry(p["device_id"].as_str().unwrap().to_string()).or_default().push(p.clone());
        }
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| ms(a).total_cmp(&ms(b)));
    }
    out
}

fn row<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["runs"].as_array().unwrap().iter().find(|r| r["device_type"] == kind).unwrap()
}

#[test]
fn realistic_fleets_follow_their_configured_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (msgs, _, report) = run(dir.path(), &fleet(dir.path()), 2);

    // Report on change: consecutive published values of the deadband field differ by more
    // than the deadband unless the heartbeat fired; the heartbeat keeps gaps within
    // max_silence (+ one interval, the sampling grid); the derived field equals its expression.
    let (mut moved, mut heartbeats) = (0, 0);
    let meters = by_device(&msgs, "meter", false);
    assert_eq!(meters.len(), 50);
    for series in meters.values() {
        for w in series.windows(2) {
            let gap = ms(&w[1]) - ms(&w[0]);
            let delta = (num(&w[1], "power") - num(&w[0], "power")).abs();
            assert!(gap <= 910_000.0, "gap {gap} ms: {} -> {}", w[0], w[1]);
            if gap >= 900_000.0 {
                heartbeats += 1;
            } else {
                assert!(delta > 0.5, "published with |Δ| {delta} after {gap} ms: {}", w[1]);
                moved += 1;
            }
        }
        for p in series {
            let want = num(p, "power") * 1000.0 / 230.0;
            assert!((num(p, "current") - want).abs() <= 0.0005 + 1e-9, "{p}");
        }
    }
    assert!(moved > 1000 && heartbeats > 100, "moved {moved}, heartbeats {heartbeats}");
    let m = row(&report, "meter");
    let published: usize = meters.values().map(Vec::len).sum();
    assert_eq!(m["published"].as_u64().unwrap() as usize, published);
    assert_eq!(m["samples"], m["published"].as_u64().unwrap() + m["suppressed"].as_u64().unwrap());
    assert!(m["suppressed"].as_u64().unwrap() > published as u64, "{m}");

    // Events: inter-arrival times are exponential with the configured rate (KS test).
    let alarms = by_device(&msgs, "alarm", true);
    let mut gaps = vec![];
    for series in alarms.values() {
        for p in series {
            assert_eq!(p["event"], "overheat");
            assert_eq!(p["fields"]["level"], "high");
        }
        gaps.extend(series.windows(2).map(|w| ms(&w[1]) - ms(&w[0])));
    }
    let events: usize = alarms.values().map(Vec::len).sum();
    // A device's events start at its first tick (uniform in the first hour) and those after
    // its last tick (the last hour) are not sent before the end: 100 devices * 47 h * 6 per
    // hour = 28 200 expected; Poisson sd 168.
    assert!((events as f64 - 28_200.0).abs() < 600.0, "{events} events");
    assert_eq!(row(&report, "alarm")["events"]["overheat"].as_u64().unwrap() as usize, events);
    let topic = &msgs.iter().find(|(_, p)| p.get("event").is_some()).unwrap().0;
    assert!(topic.ends_with("/telemetry/events/overheat"), "{topic}");
    gaps.sort_by(f64::total_cmp);
    let n = gaps.len() as f64;
    let mean_gap = 600_000.0;
    let d = gaps
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let f = 1.0 - (-g / mean_gap).exp();
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max);
    // Kolmogorov-Smirnov critical value at alpha = 0.001: 1.95 / sqrt(n) (~0.012 here).
    assert!(d < 1.95 / n.sqrt(), "KS D = {d} over {n} gaps");

    // Availability: the share of time online is close to mtbf / (mtbf + mttr) = 0.75, by the
    // report's offline time and by the samples taken.
    let churn = row(&report, "churn");
    let device_ms = 200.0 * 2.0 * DAY_MS;
    let offline = churn["offline_s"].as_f64().unwrap() * 1000.0 / device_ms;
    // Asymptotic sd of the down share here is ~0.003 (alternating renewal, ~7 000 cycles).
    assert!((offline - 0.25).abs() < 0.015, "offline share {offline}");
    let samples = churn["samples"].as_f64().unwrap() / (200.0 * 2.0 * 288.0);
    assert!((samples - 0.75).abs() < 0.02, "share of samples taken {samples}");

    // Sleep: every message of a sleeper falls inside its awake minute of each 10 minutes.
    let sleepers = by_device(&msgs, "sleeper", false);
    assert_eq!(sleepers.len(), 50);
    for series in sleepers.values() {
        let t0 = ms(&series[0]);
        for p in series {
            let pos = (ms(p) - t0).rem_euclid(600_000.0);
            assert!(!(60_000.0..=540_000.0).contains(&pos), "outside the window: {p}");
        }
        // 288 windows of six 10 s samples (the first and last windows may be cut by the run).
        assert!((6 * 287..=6 * 289).contains(&series.len()), "{} samples", series.len());
    }
    let asleep =
        row(&report, "sleeper")["asleep_s"].as_f64().unwrap() * 1000.0 / (50.0 * 2.0 * DAY_MS);
    assert!((asleep - 0.9).abs() < 0.005, "asleep share {asleep}");

    // Correlated fields: sample correlation, means and spreads match; derived equals its
    // expression of the same message.
    let rooms: Vec<&Value> =
        msgs.iter().map(|(_, p)| p).filter(|p| p["device_type"] == "room").collect();
    let t: Vec<f64> = rooms.iter().map(|p| num(p, "temperature")).collect();
    let h: Vec<f64> = rooms.iter().map(|p| num(p, "humidity")).collect();
    for (p, (ti, hi)) in rooms.iter().zip(t.iter().zip(&h)) {
        assert!((num(p, "dew_gap") - (ti - (100.0 - hi) / 5.0)).abs() < 1e-9, "{p}");
    }
    let n = t.len() as f64;
    let (mt, mh) = (t.iter().sum::<f64>() / n, h.iter().sum::<f64>() / n);
    let st = (t.iter().map(|x| (x - mt).powi(2)).sum::<f64>() / n).sqrt();
    let sh = (h.iter().map(|x| (x - mh).powi(2)).sum::<f64>() / n).sqrt();
    let rho = t.iter().zip(&h).map(|(a, b)| (a - mt) * (b - mh)).sum::<f64>() / (n * st * sh);
    // n = 144 000: standard errors ~0.004 (mean t), ~0.013 (mean h), ~0.3% (sds), 0.0013 (rho).
    assert!((mt - 22.0).abs() < 0.03 && (mh - 45.0).abs() < 0.08, "means {mt} {mh}");
    assert!((st / 1.5 - 1.0).abs() < 0.015 && (sh / 5.0 - 1.0).abs() < 0.015, "sds {st} {sh}");
    assert!((rho + 0.7).abs() < 0.008, "correlation {rho}");
    eprintln!(
        "figures: on_change moved {moved} heartbeats {heartbeats}; {events} events, KS D {d:.4}; \
         offline share {offline:.4}, samples share {samples:.4}; asleep share {asleep:.4}; \
         means {mt:.3} {mh:.3} sds {st:.3} {sh:.3} rho {rho:.4}"
    );
}

#[test]
fn realistic_fleets_give_the_same_bytes_whatever_the_core_count() {
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet(dir.path()).replace("duration = \"2d\"", "duration = \"6h\"");
    let sorted = |m: Vec<(String, Value)>| {
        let mut v: Vec<String> = m.into_iter().map(|(t, p)| format!("{t} {p}")).collect();
        v.sort();
        v
    };
    let (one, one_raw, _) = run(dir.path(), &toml, 1);
    let (_, again_raw, _) = run(dir.path(), &toml, 1);
    assert!(one_raw == again_raw, "two runs with one core differ byte for byte");
    let one = sorted(one);
    assert!(one.iter().any(|l| l.contains("\"event\":\"overheat\"")));
    for cores in [2, 3] {
        let (n, n_raw, _) = run(dir.path(), &toml, cores);
        let n = sorted(n);
        assert_eq!(n.len(), one.len(), "{cores} cores: message count");
        assert!(n == one, "{cores} cores: the sorted messages differ from one core's");
        let (_, n2_raw, _) = run(dir.path(), &toml, cores);
        assert!(n_raw == n2_raw, "{cores} cores: per-shard files differ between runs");
    }
    // Another seed gives other events and outages.
    let (other, _, _) = run(dir.path(), &toml.replace("seed = 11", "seed = 12"), 1);
    assert!(sorted(other) != one);
}

#[test]
fn a_derived_value_that_is_not_finite_is_published_as_null_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[run]
seed = 1
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "1m"
[sink.file]
path = "{dir}/out.jsonl"
[[fleet]]
profile = "p"
count = 3
[profiles.p]
protocol = "file"
interval = "10s"
[profiles.p.fields.x]
type = "gaussian"
mean = 1
stddev = 1
[profiles.p.fields.ratio]
type = "derived"
expr = "1 / (x - x)"
"#,
        dir = dir.path().display()
    );
    let (msgs, _, report) = run(dir.path(), &toml, 1);
    assert_eq!(msgs.len(), 18);
    assert!(msgs.iter().all(|(_, p)| p["fields"]["ratio"].is_null() && p["fields"]["x"].is_f64()));
    assert_eq!(row(&report, "p")["nonfinite_values"], 18);
}
