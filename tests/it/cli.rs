//! Runs the built binary as a user would.

use crate::common;
use crate::common::fleet::{Fleet, raw};

use common::{bin, output_within, sigterm, stderr};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A small virtual-clock fleet with every generator, writing to `dir/out.jsonl`.
fn fleet(dir: &Path) -> PathBuf {
    Fleet::new()
        .run(7, "virtual", "2026-03-14T22:30:00Z", "3h")
        .set("report_dir", dir.join("report"))
        .sink("file")
        .set("path", dir.join("out.jsonl"))
        .devices("thermo", 40)
        .set("labels", raw(r#"{ site = "berlin" }"#))
        .devices("thermo", 25)
        .devices("door", 30)
        .profile("thermo", "file", "7s")
        .set("seq", true)
        .field("thermo", "temperature", "diurnal")
        .set("baseline", 22.0)
        .set("amplitude", 5.0)
        .set("peak_hour", 14)
        .set("noise_stddev", 0.3)
        .field("thermo", "humidity", "brownian")
        .set("start", 55.0)
        .set("volatility", 0.5)
        .set("mean_reversion", 0.1)
        .set("min", 20.0)
        .set("max", 95.0)
        .field("thermo", "outdoor", "composite")
        .set("decimals", 2)
        .set(
            "parts",
            raw(r#"[{ type = "diurnal", baseline = 10, amplitude = 8, peak_hour = 15 }, { type = "gaussian", mean = 0, stddev = 0.5 }]"#),
        )
        .profile("door", "file", "1m")
        .set("topic", "doors/{device_id}")
        .field("door", "state", "markov")
        .set("states", raw(r#"["closed", "open"]"#))
        .set("transition_matrix", raw("[[0.9, 0.1], [0.5, 0.5]]"))
        .field("door", "model", "static")
        .set("value", raw(r#"{ vendor = "acme", rev = 3 }"#))
        .write(dir.join("fleet.toml"))
}

/// Runs the fleet with `cores` shards and returns every output line, sorted.
fn run_sorted(dir: &Path, cores: u16) -> (Vec<String>, Vec<Vec<u8>>) {
    let cfg = fleet(dir);
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", &cores.to_string(), "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let mut lines = vec![];
    let mut raw = vec![];
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    assert_eq!(names.len(), cores as usize, "one file per shard: {names:?}");
    for n in names {
        let bytes = std::fs::read(&n).unwrap();
        lines.extend(String::from_utf8(bytes.clone()).unwrap().lines().map(String::from));
        raw.push(bytes);
        std::fs::remove_file(n).unwrap();
    }
    lines.sort();
    (lines, raw)
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_any_core_count_the_same_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (one, one_raw) = run_sorted(dir.path(), 1);
    let (again, again_raw) = run_sorted(dir.path(), 1);
    assert_eq!(one_raw, again_raw, "two runs with one core differ byte for byte");
    assert_eq!(one, again);
    // 65 thermo devices every 7 s and 30 doors every minute, over 3 hours.
    let thermo = 65 * (3 * 3600 / 7 + 1);
    assert!(
        (thermo - 65..=thermo).contains(&one.iter().filter(|l| l.contains("\"thermo\"")).count())
    );
    assert_eq!(one.iter().filter(|l| l.contains("\"door\"")).count(), 30 * 180);
    for cores in [2, 3] {
        let (n, n_raw) = run_sorted(dir.path(), cores);
        assert_eq!(n.len(), one.len(), "{cores} cores: line count");
        assert!(n == one, "{cores} cores: the sorted lines differ from one core's");
        let (n2, n2_raw) = run_sorted(dir.path(), cores);
        assert_eq!(n_raw, n2_raw, "{cores} cores: per-shard files differ between runs");
        assert_eq!(n, n2);
    }
    // Another seed gives other values.
    let cfg = fleet(dir.path());
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", "1", "--seed", "8", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let other = std::fs::read(dir.path().join("out.jsonl")).unwrap();
    assert_ne!(other, one_raw[0]);
}

#[test]
fn payloads_follow_the_envelope_and_generators_behave() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = run_sorted(dir.path(), 2);
    let mut seqs: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut states = BTreeSet::new();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let p = &v["payload"];
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        let id = p["device_id"].as_str().unwrap().to_string();
        let ts = p["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 24, "ms precision RFC 3339: {ts}");
        assert!(ts.ends_with('Z'));
        if p["device_type"] == "thermo" {
            assert_eq!(v["topic"], format!("devices/{id}/telemetry"));
            assert_eq!(p["labels"]["device_type"], "thermo");
            let h = p["fields"]["humidity"].as_f64().unwrap();
            assert!((20.0..=95.0).contains(&h));
            let o = p["fields"]["outdoor"].as_f64().unwrap();
            assert_eq!((o * 100.0).round() / 100.0, o, "decimals = 2");
            seqs.entry(id).or_default().push(p["seq"].as_u64().unwrap());
        } else {
            assert_eq!(v["topic"], format!("doors/{id}"));
            assert_eq!(p["fields"]["model"], serde_json::json!({"rev": 3, "vendor": "acme"}));
            states.insert(p["fields"]["state"].as_str().unwrap().to_string());
            assert!(p.get("seq").is_none());
        }
        let _ = keys;
    }
    assert_eq!(states, BTreeSet::from(["closed".to_string(), "open".to_string()]));
    // Ids: thermo-0000..thermo-0064 across two fleet entries, each with a gap-free sequence.
    assert_eq!(seqs.len(), 65);
    assert!(seqs.contains_key("thermo-0000") && seqs.contains_key("thermo-0064"));
    for (id, mut s) in seqs {
        s.sort_unstable();
        assert!(s.iter().enumerate().all(|(i, x)| *x == i as u64), "{id}: gaps in seq");
    }
    // The envelope keeps the original field order.
    let first = &lines[0];
    let order = ["\"device_id\"", "\"device_type\"", "\"timestamp\"", "\"fields\""];
    let pos: Vec<usize> = order.iter().map(|k| first.find(k).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{first}");
}

#[test]
fn the_report_is_written_with_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    run_sorted(dir.path(), 2);
    let text = std::fs::read_to_string(dir.path().join("report/report.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["seed"], 7);
    assert_eq!(r["cores"], 2);
    assert_eq!(r["sim_seconds"], 10800.0);
    assert!(r["wall_seconds"].as_f64().unwrap() > 0.0);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let total: u64 = runs.iter().map(|x| x["messages"].as_u64().unwrap()).sum();
    assert_eq!(total, r["messages"].as_u64().unwrap());
    for row in runs {
        assert_eq!(row["sink"], "file");
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(row["latency_us"][k].is_u64(), "latency_us.{k}");
        }
        assert_eq!(row["errors"], 0);
        assert_eq!(row["dropped"], 0);
        for f in row["hgrm"].as_array().unwrap() {
            let h = std::fs::read_to_string(dir.path().join("report").join(f.as_str().unwrap()))
                .unwrap();
            assert!(h.contains("Percentile"));
        }
    }
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("count = 40", "count = 0")
        .replace("interval = \"7s\"", "interval = \"-7s\"")
        .replace("[[0.9, 0.1], [0.5, 0.5]]", "[[0.9, 0.1], [0.5]]")
        .replace(
            "protocol = \"file\"\ninterval = \"1m\"",
            "protocol = \"carrier-pigeon\"\ninterval = \"1m\"",
        );
    std::fs::write(&cfg, text).unwrap();
    for args in [vec!["validate", "--config"], vec!["--config"], vec!["run", "--config"]] {
        let mut a = args.clone();
        a.push(cfg.to_str().unwrap());
        let out = bin().args(&a).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let e = stderr(&out);
        for want in [
            "fleet[0].count: must be between 1 and",
            "profiles.thermo.interval: missing number",
            "profiles.door.fields.state.transition_matrix[1]: needs 2 entries",
            "profiles.door.protocol: unknown protocol \"carrier-pigeon\"",
        ] {
            assert!(e.contains(want), "{args:?}: missing {want:?} in:\n{e}");
        }
        assert!(!e.contains("panicked") && !e.contains("RUST_BACKTRACE"), "{e}");
    }
}

#[test]
fn validate_accepts_the_shipped_configs() {
    for f in [
        "configs/fleet.toml",
        "configs/thingsboard.toml",
        "configs/influx.toml",
        "bench/million.toml",
    ] {
        let out = bin().args(["validate", "--config", f]).output().unwrap();
        assert!(out.status.success(), "{f}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
}

#[test]
fn a_missing_file_and_bad_flags_are_clear_errors() {
    let out = bin().args(["--config", "/nonexistent/fleet.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read config /nonexistent/fleet.toml"));
    let out =
        bin().args(["--config", "configs/fleet.toml", "--duration", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected a duration"));
    let out = bin().args(["--config", "configs/fleet.toml", "--cores", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn without_a_config_the_built_in_fleet_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["--clock", "virtual", "--duration", "1m", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("built-in fleet"), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/report/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["seed"], 42);
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
    let files = std::fs::read_dir(dir.path().join("out")).unwrap();
    let telemetry =
        files.flatten().filter(|f| f.file_name().to_string_lossy().starts_with("telemetry"));
    assert!(telemetry.count() > 0, "no telemetry file in out/");
}

#[test]
fn without_a_seed_one_is_chosen_and_printed_for_replay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("seed = 7\n", "")
        .replace("duration = \"3h\"", "duration = \"1m\"");
    std::fs::write(&cfg, text).unwrap();
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = stderr(&out);
    let seed: u64 = e
        .split("--seed ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .expect(&e);
    let first = std::fs::read(dir.path().join("out.jsonl")).unwrap();
    let out = bin()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--cores",
            "1",
            "--quiet",
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("out.jsonl")).unwrap(),
        first,
        "replaying the printed seed"
    );
}

#[test]
fn sigterm_stops_a_realtime_run_flushes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("clock = \"virtual\"", "clock = \"realtime\"")
        .replace("duration = \"3h\"\n", "");
    std::fs::write(&cfg, text).unwrap();
    let child = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", "2", "--speed", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped once it produces: a line in one of its output files (at most 60 s).
    let t0 = std::time::Instant::now();
    let produced = || {
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).any(|p| {
            p.extension().is_some_and(|e| e == "jsonl")
                && std::fs::read_to_string(&p).is_ok_and(|t| t.contains('\n'))
        })
    };
    while !produced() {
        assert!(t0.elapsed().as_secs() < 60, "no output line within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sigterm(&child);
    let out = output_within(child, 60);
    assert!(out.status.success(), "exit {:?}: {}", out.status, stderr(&out));
    assert!(stderr(&out).contains("SIGTERM"));
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["interrupted"], true);
    let reported = r["messages"].as_u64().unwrap();
    assert!(reported > 0);
    let written: usize = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum();
    assert_eq!(written as u64, reported, "every reported message is in the files (flushed)");
    assert!(r["tick_lateness_us"]["p99"].is_u64());
}

#[test]
fn the_console_sink_prints_topic_and_payload_lines_and_keeps_stdout_clean() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("console.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nseed = 1\nclock = \"virtual\"\nstart_time = \"2026-03-14T00:00:00Z\"\nduration = \"3s\"\nreport_dir = \"{}/r\"\n\n[[fleet]]\nprofile = \"c\"\ncount = 2\n\n[profiles.c]\nprotocol = \"console\"\ninterval = \"1s\"\n[profiles.c.fields.v]\ntype = \"static\"\nvalue = 1\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", "2", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "2 devices x 3 messages, and nothing else on stdout:\n{stdout}");
    for l in lines {
        let (topic, payload) = l.split_once(' ').unwrap();
        assert!(topic.starts_with("[devices/c-000") && topic.ends_with("/telemetry]"), "{l}");
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(v["fields"]["v"], 1);
    }
    // With a console sink the report goes to stderr.
    assert!(stderr(&out).contains("iot-sim report"));
}

/// Writes `toml` as `NAME.toml`, runs it on one core and returns its report.json.
fn run_one_core(dir: &Path, name: &str, toml: &str) -> serde_json::Value {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let rd = dir.join(format!("{name}-report"));
    let out = output_within(
        bin()
            .args(["--config", cfg.to_str().unwrap(), "--cores", "1", "--quiet"])
            .args(["--report-dir", rd.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        60,
    );
    assert!(out.status.success(), "exit {:?}: {}", out.status, stderr(&out));
    serde_json::from_str(&std::fs::read_to_string(rd.join("report.json")).unwrap()).unwrap()
}

#[test]
fn timer_slack_batches_a_realtime_shards_wake_ups_and_the_wait_shows_as_lateness() {
    // 200 devices every 100 ms for 2 s: without slack a 1-ms wheel slot wakes the shard; with
    // 50 ms slack it sleeps at least 50 ms, so most messages wait (counted as tick lateness,
    // from their intended times) and none is lost. A lower bound: load only adds lateness.
    let dir = tempfile::tempdir().unwrap();
    let r = run_one_core(
        dir.path(),
        "slack",
        "[run]\nseed = 4\nclock = \"realtime\"\nduration = \"2s\"\ntimer_slack = \"50ms\"\n\n\
         [[fleet]]\nprofile = \"p\"\ncount = 200\n\n[profiles.p]\nprotocol = \"null\"\n\
         interval = \"100ms\"\n[profiles.p.fields.x]\ntype = \"static\"\nvalue = 1\n",
    );
    assert_eq!(r["messages"].as_u64(), Some(4000), "every intended message is sent");
    let p50 = r["tick_lateness_us"]["p50"].as_u64().unwrap();
    assert!(p50 >= 10_000, "with 50 ms slack the median message waits, got p50 {p50} µs");
}

#[test]
fn an_accelerated_realtime_run_sends_each_slot_at_its_intended_time_in_order() {
    // At --speed 30 one wall millisecond covers 30 sim slots, taken off the wheel in one
    // wake-up: every intended message is still sent, stamped with its intended time (each
    // device's on its own whole-second grid), and the shard's output is in deadline order.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let r = run_one_core(
        dir.path(),
        "speed30",
        &format!(
            "[run]\nseed = 4\nclock = \"realtime\"\nspeed = 30.0\n\
             start_time = \"2026-03-14T00:00:00Z\"\nduration = \"60s\"\n\n\
             [sink.file]\npath = {out:?}\n\n\
             [[fleet]]\nprofile = \"p\"\ncount = 50\n\n[profiles.p]\nprotocol = \"file\"\n\
             interval = \"1s\"\n[profiles.p.fields.x]\ntype = \"static\"\nvalue = 1\n"
        ),
    );
    assert_eq!(r["messages"].as_u64(), Some(3000), "50 devices x 60 sim seconds");
    let text = std::fs::read_to_string(&out).unwrap();
    let mut last = String::new();
    let mut per_device: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in text.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let v = &line["payload"];
        let ts = v["timestamp"].as_str().unwrap().to_string();
        assert!(ts >= last, "deadline order: {ts} after {last}");
        last.clone_from(&ts);
        per_device.entry(v["device_id"].as_str().unwrap().to_string()).or_default().push(ts);
    }
    assert_eq!(per_device.len(), 50);
    for (id, ts) in per_device {
        assert_eq!(ts.len(), 60, "{id}");
        // Same millisecond of the second each time: whole intervals from the first.
        let phase = &ts[0][19..];
        assert!(ts.iter().all(|t| &t[19..] == phase), "{id}: {ts:?}");
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{id}: {ts:?}");
    }
}

#[test]
fn pin_false_leaves_the_shard_threads_to_the_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let mut pinned = vec![];
    for pin in ["true", "false"] {
        let r = run_one_core(
            dir.path(),
            &format!("pin-{pin}"),
            &format!(
                "[run]\nseed = 4\nclock = \"virtual\"\nduration = \"10s\"\npin = {pin}\n\n\
                 [[fleet]]\nprofile = \"p\"\ncount = 10\n\n[profiles.p]\nprotocol = \"null\"\n\
                 interval = \"1s\"\n[profiles.p.fields.x]\ntype = \"static\"\nvalue = 1\n"
            ),
        );
        assert_eq!(r["messages"].as_u64(), Some(100));
        pinned.push(r["pinned_shards"].as_u64().unwrap());
    }
    assert_eq!(pinned, [1, 0], "pinned by default, not with pin = false");
}
