//! Scenarios run by the built binary: each action's effect in the file sink, in its time window
//! and nowhere else; determinism across runs and core counts; phases and thresholds in the
//! report (exit code 3); abort; every shipped example; bad input; a remote run against two
//! `serve` runtimes.

use crate::common;
use crate::common::fleet::{Fleet, raw};

use common::{bin, stderr};

/// Runs `cmd` to its end with its output piped, failing the test if it outlives `secs`.
fn output_within(cmd: &mut std::process::Command, secs: u64) -> std::process::Output {
    use std::process::Stdio;
    common::output_within(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(), secs)
}
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Longest any scenario run here may take before it is killed.
const LIMIT_S: u64 = 240;

fn fleet(dir: &Path) -> PathBuf {
    Fleet::new()
        .table("run")
        .set("seed", 3)
        .set("clock", "virtual")
        .set("start_time", "2026-01-01T00:00:00Z")
        .set("progress_interval", "500ms")
        .sink("file")
        .set("path", dir.join("out/t.jsonl"))
        .devices("thermo", 4)
        .set("labels", raw(r#"{ site = "a" }"#))
        .profile("thermo", "file", "10s")
        .set("fields.t", raw(r#"{ type = "gaussian", mean = 20, stddev = 1 }"#))
        .set("fields.fw", raw(r#"{ type = "static", value = "1.0" }"#))
        .write(dir.join("fleet.toml"))
}

/// A scenario that uses every action.
const EVERY_ACTION: &str = r#"
name = "every_action"
duration = "10m"

[[step]]
at = "0s"
phase = "early"

[[step]]
at = "1m"
spawn = { profile = "thermo", count = 3, labels = { site = "b" } }

[[step]]
at = "2m"
fault = { selector = "site=b", type = "disconnect", duration = "1m" }

[[step]]
at = "3m"
fault = { ids = ["thermo-0001"], type = "data_corruption", params = { corruption_rate = 1.0, mode = "zero" } }

[[step]]
at = "4m"
phase = "late"

[[step]]
at = "4m"
update = { selector = "site=a", labels = { fw = "2" }, interval = "5s", fields = { fw = { type = "static", value = "2.0" } } }

[[step]]
at = "5m"
clear = { ids = ["thermo-0001"] }

[[step]]
at = "5m"
pause = { ids = ["thermo-0000"] }

[[step]]
at = "6m"
resume = { all = true }

[[step]]
at = "7m"
stop = { selector = "site=b" }

[[step]]
at = "8m"
log = "hello from step 10"

[[step]]
at = "8m30s"
pause = {}
batches = { selector = "site=a", size = 2, every = "30s" }
"#;

/// One published message: (device, sim ms since the start, payload).
type Line = (String, u64, Value);

fn read_lines(dir: &Path) -> (Vec<String>, Vec<Line>) {
    let mut raw = vec![];
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        raw.extend(std::fs::read_to_string(f).unwrap().lines().map(str::to_string));
    }
    let start = 1_767_225_600_000u64; // 2026-01-01T00:00:00Z
    let lines = raw
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let p = v["payload"].clone();
            let ts = p["timestamp"].as_str().unwrap();
            let (h, m, s) = (&ts[11..13], &ts[14..16], &ts[17..23]);
            let ms = h.parse::<u64>().unwrap() * 3_600_000
                + m.parse::<u64>().unwrap() * 60_000
                + (s.parse::<f64>().unwrap() * 1000.0).round() as u64;
            let _ = start;
            (p["device_id"].as_str().unwrap().to_string(), ms, p)
        })
        .collect();
    raw.sort();
    (raw, lines)
}

fn scenario_run(dir: &Path, scenario: &str, extra: &[&str]) -> std::process::Output {
    let f = fleet(dir);
    let s = dir.join("s.toml");
    std::fs::write(&s, scenario).unwrap();
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let rd = dir.join("report");
    let mut cmd = bin();
    cmd.args(["scenario", "run", s.to_str().unwrap(), "--config", f.to_str().unwrap()])
        .args(["--quiet", "--report-dir", rd.to_str().unwrap()])
        .args(extra);
    output_within(&mut cmd, LIMIT_S)
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report/report.json")).unwrap()).unwrap()
}

const M: u64 = 60_000;

fn times(lines: &[Line], id: &str) -> Vec<u64> {
    let mut t: Vec<u64> = lines.iter().filter(|l| l.0 == id).map(|l| l.1).collect();
    t.sort();
    t
}

fn within(t: &[u64], from: u64, to: u64) -> usize {
    t.iter().filter(|&&x| x >= from && x < to).count()
}

#[test]
fn every_action_takes_effect_in_its_time_window_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = scenario_run(dir.path(), EVERY_ACTION, &["--cores", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, lines) = read_lines(dir.path());

    // spawn at 1m: the new devices publish from 1m on, never before.
    for id in ["thermo-0004", "thermo-0005", "thermo-0006"] {
        let t = times(&lines, id);
        assert_eq!(within(&t, 0, M), 0, "{id} before its spawn");
        assert!(within(&t, M, 2 * M) >= 5, "{id} after its spawn: {t:?}");
        // fault disconnect on site=b from 2m for 1m: silent in [2m, 3m) only.
        assert_eq!(within(&t, 2 * M, 3 * M), 0, "{id} while disconnected");
        assert!(within(&t, 3 * M, 4 * M) >= 5, "{id} after the fault: {t:?}");
        // stop at 7m: nothing from 7m on.
        assert!(within(&t, 6 * M, 7 * M) >= 5);
        assert_eq!(within(&t, 7 * M, 11 * M), 0, "{id} after its stop");
    }
    // data corruption (zero) on thermo-0001 from 3m, cleared at 5m.
    for (id, ms, p) in &lines {
        if id != "thermo-0001" {
            continue;
        }
        let zero = p["fields"]["t"].as_f64() == Some(0.0);
        assert_eq!(zero, (3 * M..5 * M).contains(ms), "thermo-0001 at {ms} ms: {p}");
    }
    // update at 4m: site=a gets label fw=2, the new static field and a 5 s interval.
    for id in ["thermo-0000", "thermo-0001", "thermo-0002", "thermo-0003"] {
        for (_, ms, p) in lines.iter().filter(|l| l.0 == id) {
            let new = *ms >= 4 * M;
            assert_eq!(p["fields"]["fw"] == "2.0", new, "{id} at {ms}: {p}");
            assert_eq!(p["labels"]["fw"] == "2", new, "{id} at {ms}: {p}");
        }
        let t = times(&lines, id);
        assert_eq!(within(&t, 3 * M, 4 * M), 6, "{id}: 10 s interval before the update");
        if id != "thermo-0000" {
            assert_eq!(within(&t, 6 * M, 7 * M), 12, "{id}: 5 s interval after it: {t:?}");
        }
    }
    // pause thermo-0000 at 5m, resume all at 6m.
    let t0 = times(&lines, "thermo-0000");
    assert_eq!(within(&t0, 5 * M, 6 * M), 0, "paused: {t0:?}");
    assert!(within(&t0, 6 * M, 7 * M) >= 11, "resumed: {t0:?}");
    // batches of 2 in id order every 30 s from 8m30s: 0000 and 0001 first, then 0002 and 0003.
    for (id, paused_at) in [
        ("thermo-0000", 8 * M + 30_000),
        ("thermo-0001", 8 * M + 30_000),
        ("thermo-0002", 9 * M),
        ("thermo-0003", 9 * M),
    ] {
        let t = times(&lines, id);
        assert!(within(&t, paused_at - 30_000, paused_at) >= 5, "{id} before its batch: {t:?}");
        assert_eq!(within(&t, paused_at, 11 * M), 0, "{id} after its batch: {t:?}");
    }

    let r = report(dir.path());
    let sc = &r["scenario"];
    assert_eq!(sc["name"], "every_action");
    assert_eq!(sc["log"][0]["message"], "hello from step 10");
    assert_eq!(sc["log"][0]["sim_time"], "2026-01-01T00:08:00.000Z");
    assert_eq!(sc["actions_applied"], sc["actions"]);
    // Phases: rows by intended time; together they hold every message of the run.
    let phases = r["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["early", "late"]);
    let sum: u64 = phases.iter().map(|p| p["messages"].as_u64().unwrap()).sum();
    assert_eq!(sum, r["messages"].as_u64().unwrap());
    assert_eq!(sum, lines.len() as u64);
    let early = lines.iter().filter(|l| l.1 < 4 * M).count() as u64;
    assert_eq!(phases[0]["messages"].as_u64().unwrap(), early);
    assert_eq!(phases[0]["runs"][0]["sink"], "file");
}

#[test]
fn a_scenario_run_is_byte_identical_and_the_same_for_any_core_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut sorted = vec![];
    for cores in ["1", "2", "3"] {
        let out = scenario_run(dir.path(), EVERY_ACTION, &["--cores", cores]);
        assert!(out.status.success(), "{}", stderr(&out));
        let files = |d: &Path| -> BTreeMap<String, Vec<u8>> {
            std::fs::read_dir(d.join("out"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| {
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    )
                })
                .collect()
        };
        let first = files(dir.path());
        let (raw, _) = read_lines(dir.path());
        sorted.push((cores, raw));
        let out = scenario_run(dir.path(), EVERY_ACTION, &["--cores", cores]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(first == files(dir.path()), "{cores} cores: per-shard files differ between runs");
    }
    assert!(!sorted[0].1.is_empty());
    for (cores, raw) in &sorted[1..] {
        assert!(raw == &sorted[0].1, "{cores} cores: sorted lines differ from 1 core");
    }
}

#[test]
fn thresholds_pass_or_fail_with_exit_code_3_and_are_listed_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let pass = format!(
        "{EVERY_ACTION}\n[[threshold]]\nmetric = \"error_rate\"\nmax = 0\n\n[[threshold]]\nmetric = \"messages_per_second\"\nmin = 0.1\nphase = \"late\"\n"
    );
    let out = scenario_run(dir.path(), &pass, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(dir.path());
    let t = r["thresholds"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    assert!(t.iter().all(|v| v["passed"] == true), "{t:?}");
    assert_eq!(t[1]["phase"], "late");

    // 4 devices every 10 s in the early phase: 0.4 per sim second, never 100.
    let fail = format!(
        "{EVERY_ACTION}\n[[threshold]]\nmetric = \"messages_per_second\"\nmin = 100\nphase = \"early\"\n\n[[threshold]]\nmetric = \"latency_max\"\nmax = \"1h\"\n"
    );
    let out = scenario_run(dir.path(), &fail, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[FAIL] messages_per_second {phase=early}"), "{text}");
    assert!(text.contains("[pass] latency_max"), "{text}");
    let r = report(dir.path());
    let v = &r["thresholds"][0];
    assert_eq!(v["passed"], false);
    assert!(v["value"].as_f64().unwrap() > 0.1 && v["value"].as_f64().unwrap() < 1.0, "{v}");
}

#[test]
fn a_fleet_file_names_its_scenario_and_carries_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path());
    std::fs::write(dir.path().join("s.toml"), EVERY_ACTION).unwrap();
    let mut text = std::fs::read_to_string(&f).unwrap();
    text = text.replace("[run]\n", "[run]\nscenario = \"s.toml\"\n");
    text.push_str("\n[[threshold]]\nmetric = \"drop_rate\"\nmax = \"0%\"\n\n[[threshold]]\nmetric = \"error_rate\"\nmin = 0.5\nphase = \"late\"\n");
    std::fs::write(&f, text).unwrap();
    let rd = dir.path().join("report");
    let mut cmd = bin();
    cmd.args(["--config", f.to_str().unwrap(), "--quiet", "--report-dir", rd.to_str().unwrap()]);
    let out = output_within(&mut cmd, LIMIT_S);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let r = report(dir.path());
    assert_eq!(r["scenario"]["name"], "every_action");
    assert_eq!(r["thresholds"][0]["passed"], true);
    assert_eq!(r["thresholds"][1]["passed"], false);
    assert_eq!(r["thresholds"][1]["phase"], "late");
}

#[test]
fn an_abort_threshold_stops_a_realtime_run_early_with_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let s = r#"
duration = "10m"
[run]
clock = "realtime"
[[step]]
at = "0s"
spawn = { profile = "thermo", count = 500 }
[[threshold]]
metric = "messages_per_second"
max = 1
abort = true
"#;
    let out = scenario_run(dir.path(), s, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("abort: threshold messages_per_second"), "{}", stderr(&out));
    let r = report(dir.path());
    assert_eq!(r["aborted_by"]["metric"], "messages_per_second");
    // Stopped after a progress interval or a few, not after 10 minutes.
    assert!(r["sim_seconds"].as_f64().unwrap() < 60.0, "{r}");
    assert!(r["scenario"]["step_lateness_us"]["count"].as_u64().unwrap() >= 1);
}

/// Runs a shipped example in `dir` (its relative output paths land there).
fn example(dir: &Path, name: &str, extra: &[&str]) -> (std::process::Output, Value) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name);
    let mut cmd = bin();
    cmd.current_dir(dir)
        .args(["scenario", "run", file.to_str().unwrap(), "--clock", "virtual", "--quiet"])
        .args(["--report-dir", "report"])
        .args(extra);
    let out = output_within(&mut cmd, LIMIT_S);
    assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report/report.json")).unwrap())
            .unwrap();
    for t in r["thresholds"].as_array().unwrap() {
        assert_eq!(t["passed"], true, "{name}: {t}");
    }
    (out, r)
}

fn phase_names(r: &Value) -> Vec<String> {
    r["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().into()).collect()
}

#[test]
fn ramp_up_runs_on_a_fleet_with_its_profile() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fleet.toml");
    std::fs::write(
        &f,
        r#"
[run]
seed = 1
start_time = "2026-03-14T08:00:00Z"
[[fleet]]
profile = "temperature_sensor"
count = 1
[profiles.temperature_sensor]
protocol = "null"
interval = "5s"
fields.temperature = { type = "diurnal", baseline = 22.0, amplitude = 5.0, peak_hour = 14 }
"#,
    )
    .unwrap();
    let (_, r) = example(dir.path(), "ramp_up.toml", &["--config", f.to_str().unwrap()]);
    assert_eq!(phase_names(&r), ["ramp", "steady", "teardown"]);
    // 100 waves of 100, 200 stopped at 15m: the steady phase sees all 10,001 devices.
    let steady = &r["phases"][1];
    let per_s = steady["msgs_per_sim_s"].as_f64().unwrap();
    assert!(per_s > 1900.0 && per_s < 2001.0, "{steady}");
    assert_eq!(r["scenario"]["log"].as_array().unwrap().len(), 2);
}

#[test]
fn rolling_firmware_updates_each_batch_after_its_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = example(dir.path(), "rolling_firmware.toml", &[]);
    assert_eq!(phase_names(&r), ["before", "rollout", "after"]);
    let mut text = String::new();
    for e in std::fs::read_dir(dir.path().join("out")).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    let mut n = 0;
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let p = &v["payload"];
        let id = p["device_id"].as_str().unwrap();
        let k: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
        let ts = p["timestamp"].as_str().unwrap();
        let ms = ts[11..13].parse::<u64>().unwrap() * 3_600_000
            + ts[14..16].parse::<u64>().unwrap() * 60_000
            + (ts[17..23].parse::<f64>().unwrap() * 1000.0) as u64
            - 9 * 3_600_000;
        // Batch b = k / 100 goes down at 5m + b * 2m for 30 s, then runs 1.5.0.
        let down = 5 * M + (k / 100) * 2 * M;
        assert!(!(down..down + 30_000).contains(&ms), "{id} published while updating: {ts}");
        let new = ms >= down + 30_000;
        assert_eq!(p["labels"]["firmware"] == "1.5.0", new, "{id} at {ts}: {p}");
        assert_eq!(p["fields"]["firmware"] == "1.5.0", new, "{id} at {ts}: {p}");
        n += 1;
    }
    assert!(n > 100_000, "{n} lines");
}

#[test]
fn reconnect_storm_and_diurnal_week_run_with_their_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = example(dir.path(), "reconnect_storm.toml", &[]);
    assert_eq!(phase_names(&r), ["steady", "outage", "storm", "recovered"]);
    assert_eq!(r["phases"][1]["messages"], 0);
    let (_, r) = example(dir.path(), "diurnal_week.toml", &[]);
    assert_eq!(phase_names(&r), ["weekdays", "weekend"]);
    assert_eq!(r["sim_seconds"].as_f64().unwrap(), 7.0 * 86_400.0);
    assert_eq!(r["scenario"]["log"][0]["message"], "weekend: the building empties");
}

#[test]
fn every_bad_input_is_listed_at_once_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"
[[step]]
at = "-1m"
stop = { all = true }
[[step]]
at = "1m"
fault = { selector = "site in (a", type = "meltdown" }
[[step]]
at = "2m"
spawn = { profile = "ghost", count = 1 }
log = "two"
[[step]]
at = "3m"
dance = true
[[step]]
at = "4m"
log = "x"
repeat = { times = 0 }
[[threshold]]
metric = "latency_p42"
max = "1ms"
"#;
    let out = scenario_run(dir.path(), bad, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    for want in [
        "s.toml",
        "step[0].at: must not be negative, got \"-1m\"",
        "step[1].fault.selector: label selector \"site in (a\"",
        "step[1].fault.type: unknown fault type \"meltdown\"",
        "step[2]: two actions in one step (spawn, log)",
        "step[2].spawn.profile: unknown profile \"ghost\"",
        "step[3].dance: unknown key",
        "step[3]: no action",
        "step[4].repeat.times: must be between 1 and 1000000, got 0",
        "threshold[0].metric: unknown metric \"latency_p42\"",
    ] {
        assert!(e.contains(want), "{want:?} not in:\n{e}");
    }
    assert!(!dir.path().join("out").exists(), "something ran");
    assert!(!dir.path().join("report").exists(), "something ran");

    // validate says the same, list still shows the file.
    let s = dir.path().join("s.toml");
    let f = dir.path().join("fleet.toml");
    let mut cmd = bin();
    cmd.args(["scenario", "validate", s.to_str().unwrap(), "--config", f.to_str().unwrap()]);
    let out = output_within(&mut cmd, 30);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("step[4].repeat.times"), "{}", stderr(&out));
    // Not TOML at all; a missing file.
    std::fs::write(&s, "at = = 1").unwrap();
    let mut cmd = bin();
    cmd.args(["scenario", "validate", s.to_str().unwrap()]);
    let out = output_within(&mut cmd, 30);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not valid TOML"), "{}", stderr(&out));
    let mut cmd = bin();
    cmd.args(["scenario", "run", "/nonexistent/s.toml"]);
    let out = output_within(&mut cmd, 30);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read scenario /nonexistent/s.toml"), "{}", stderr(&out));
}

#[test]
fn validate_and_list_describe_the_shipped_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut cmd = bin();
    cmd.args(["scenario", "list", dir.to_str().unwrap()]);
    let out = output_within(&mut cmd, 30);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["ramp_up", "rolling_firmware", "reconnect_storm", "diurnal_week", "7d", "2h"] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/fleet.toml");
    for name in ["ramp_up", "rolling_firmware", "reconnect_storm", "diurnal_week"] {
        let s = dir.join(format!("{name}.toml"));
        let mut cmd = bin();
        cmd.args([
            "scenario",
            "validate",
            s.to_str().unwrap(),
            "--config",
            fleet.to_str().unwrap(),
        ]);
        let out = output_within(&mut cmd, 30);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"), "{name}");
    }
}

#[test]
fn a_remote_run_drives_two_serving_runtimes_and_names_one_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [common::free_port(), common::free_port()];
    let mut servers = vec![];
    for p in ports {
        let child = bin()
            .args(["serve", "--cores", "1", "--grpc", &format!("127.0.0.1:{p}"), "--quiet"])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        servers.push(child);
        assert!(common::wait_port(p), "serve did not listen on {p}");
    }
    let s = dir.path().join("remote.toml");
    std::fs::write(
        &s,
        r#"
duration = "3s"
[profiles.n]
protocol = "null"
interval = "100ms"
fields.t = { type = "gaussian", mean = 0, stddev = 1 }
[[step]]
at = "0s"
spawn = { profile = "n", count = 60, labels = { w = "{i}" } }
repeat = { times = 2, every = "500ms" }
[[step]]
at = "1s"
fault = { selector = "w=0", type = "disconnect" }
[[step]]
at = "2s"
stop = { selector = "w=1" }
[[threshold]]
metric = "error_rate"
max = 0
"#,
    )
    .unwrap();
    let runtimes = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let rd = dir.path().join("report");
    let mut cmd = bin();
    cmd.args(["scenario", "run", s.to_str().unwrap(), "--runtime", &runtimes, "--quiet"])
        .args(["--report-dir", rd.to_str().unwrap()]);
    let out = output_within(&mut cmd, 60);
    let r: Option<Value> = std::fs::read_to_string(rd.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    // Down runtime: a clear error naming it.
    let mut cmd = bin();
    let dead = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], common::free_port());
    cmd.args(["scenario", "run", s.to_str().unwrap(), "--runtime", &dead, "--quiet"]);
    let down = output_within(&mut cmd, 60);
    for mut c in servers {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = r.unwrap();
    assert_eq!(r["devices_spawned"], 120);
    assert_eq!(r["actions_applied"], r["actions"]);
    let st = r["runtime_status"].as_array().unwrap();
    let devices: i64 = st.iter().map(|s| s["active_devices"].as_i64().unwrap()).sum();
    assert_eq!(devices, 60, "the 60 of wave 1 were stopped: {st:?}");
    // Both runtimes got devices (rendezvous hashing spreads 120 ids) and the fault suppressed
    // wave 0's messages on both.
    for s in st {
        assert!(s["active_devices"].as_i64().unwrap() > 0, "{st:?}");
        assert!(s["messages_suppressed_total"].as_i64().unwrap() > 0, "{st:?}");
        assert!(s["faults_active"].as_i64().unwrap() > 0, "{st:?}");
    }
    assert_eq!(down.status.code(), Some(1), "{}", stderr(&down));
    let bad = dead.split(',').nth(1).unwrap();
    assert!(stderr(&down).contains(&format!("runtime {bad} is unavailable")), "{}", stderr(&down));
}

#[test]
fn phases_count_the_messages_of_network_sinks_too() {
    // Mosquitto on 127.0.0.1:1883 (started by .ci/run when it is down).
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("mqtt.toml");
    std::fs::write(
        &s,
        format!(
            r#"
duration = "2m"
[run]
seed = 5
clock = "virtual"
start_time = "2026-01-01T00:00:00Z"
[sink.mqtt]
url = "mqtt://127.0.0.1:1883"
qos = 1
client_id_prefix = "{}"
[profiles.m]
protocol = "mqtt"
interval = "1s"
topic = "iot-sim-test/scenario/{{device_id}}"
fields.t = {{ type = "gaussian", mean = 0, stddev = 1 }}
[[step]]
at = "0s"
spawn = {{ profile = "m", count = 20 }}
[[step]]
at = "0s"
phase = "one"
[[step]]
at = "1m"
phase = "two"
[[step]]
at = "1m"
stop = {{ ids = ["m-0000", "m-0001", "m-0002", "m-0003", "m-0004", "m-0005", "m-0006", "m-0007", "m-0008", "m-0009"] }}
[[threshold]]
metric = "error_rate"
max = 0
phase = "two"
"#,
            common::unique("scn")
        ),
    )
    .unwrap();
    let rd = dir.path().join("report");
    let mut cmd = bin();
    cmd.args(["scenario", "run", s.to_str().unwrap(), "--quiet", "--cores", "2"])
        .args(["--report-dir", rd.to_str().unwrap()]);
    let out = output_within(&mut cmd, LIMIT_S);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = report(dir.path());
    let p = r["phases"].as_array().unwrap();
    let (one, two) = (p[0]["messages"].as_u64().unwrap(), p[1]["messages"].as_u64().unwrap());
    // 20 devices for 60 s, then 10: each message once, counted by its intended time.
    assert_eq!(one, 20 * 60, "{p:?}");
    assert_eq!(two, 10 * 60, "{p:?}");
    assert_eq!(one + two, r["messages"].as_u64().unwrap());
    assert_eq!(p[0]["runs"][0]["sink"], "mqtt");
    assert!(p[1]["runs"][0]["latency_us"]["count"].as_u64().unwrap() == two);
}

/// Deadband + heartbeat from 10m, an event stream from 30m, outages (and periodic again) from
/// 60m: all through `update` steps.
const BEHAVIOUR_UPDATES: &str = r#"
duration = "2h"

[[step]]
at = "10m"
update = { selector = "site=a", fields = { t = { type = "gaussian", mean = 20, stddev = 1, deadband = 5 } }, report = { mode = "on_change", max_silence = "5m" } }

[[step]]
at = "30m"
update = { all = true, events = { alarm = { rate_per_hour = 60.0 } } }

[[step]]
at = "60m"
update = { all = true, report = { mode = "periodic" }, availability = { mtbf = "5m", mttr = "5m" } }
"#;

#[test]
fn update_steps_change_deadband_events_and_availability_from_their_sim_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut sorted = vec![];
    for cores in ["1", "2"] {
        let out = scenario_run(dir.path(), BEHAVIOUR_UPDATES, &["--cores", cores]);
        assert!(out.status.success(), "{}", stderr(&out));
        let (raw, lines) = read_lines(dir.path());
        sorted.push(raw);
        let (mut on_change, mut outage) = (0, 0);
        for d in 0..4 {
            let id = format!("thermo-{d:04}");
            let samples: Vec<u64> = times(
                &lines.iter().filter(|l| l.2.get("event").is_none()).cloned().collect::<Vec<_>>(),
                &id,
            );
            // Periodic every 10 s until the first update.
            assert_eq!(within(&samples, 0, 10 * M), 60, "{id}: before the deadband");
            // A deadband of 5 stddevs: the 5-minute heartbeat and hardly anything else.
            let n = within(&samples, 10 * M, 60 * M);
            assert!((10..=20).contains(&n), "{id}: {n} samples under the deadband");
            on_change += n;
            // Periodic again, but down about half the time.
            outage += within(&samples, 60 * M, 120 * M);
        }
        assert!(on_change >= 40);
        assert!((360..=1080).contains(&outage), "{outage} of 1440 samples with mtbf = mttr");
        let events: Vec<u64> =
            lines.iter().filter(|l| l.2["event"] == "alarm").map(|l| l.1).collect();
        assert_eq!(within(&events, 0, 30 * M), 0, "no event before the events update");
        // 4 devices x 30 min at 1 per minute: 120 expected before the outages start.
        let n = within(&events, 30 * M, 60 * M);
        assert!((70..=170).contains(&n), "{n} alarms between 30m and 60m");
    }
    assert!(sorted[0] == sorted[1], "2 cores: sorted lines differ from 1 core");
}

/// A fleet file with profiles and sinks but no `[[fleet]]` (as `serve --config` takes it):
/// the scenario spawns every device. `scenario validate` and `scenario run` accept it.
#[test]
fn a_fleet_file_without_fleet_entries_leaves_the_devices_to_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("profiles.toml");
    std::fs::write(
        &f,
        format!(
            r#"
[run]
seed = 5
clock = "virtual"
start_time = "2026-01-01T00:00:00Z"

[sink.file]
path = "{}"

[profiles.thermo]
protocol = "file"
interval = "10s"
fields.t = {{ type = "gaussian", mean = 20, stddev = 1 }}
"#,
            dir.path().join("out/t.jsonl").display()
        ),
    )
    .unwrap();
    let s = dir.path().join("s.toml");
    std::fs::write(
        &s,
        "name = \"build\"\nduration = \"1m\"\n\n[[step]]\nat = \"0s\"\nspawn = { profile = \"thermo\", count = 3 }\n",
    )
    .unwrap();
    let validate = output_within(
        bin().args(["scenario", "validate", s.to_str().unwrap(), "--config", f.to_str().unwrap()]),
        LIMIT_S,
    );
    assert!(validate.status.success(), "{}", stderr(&validate));
    let rd = dir.path().join("report");
    let run = output_within(
        bin()
            .args(["scenario", "run", s.to_str().unwrap(), "--config", f.to_str().unwrap()])
            .args(["--quiet", "--report-dir", rd.to_str().unwrap()]),
        LIMIT_S,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let (_, lines) = read_lines(dir.path());
    // 3 devices, one message every 10 s for a minute each.
    let mut per_device: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _, _) in &lines {
        *per_device.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(per_device.len(), 3, "{per_device:?}");
    assert!(per_device.values().all(|&n| (5..=6).contains(&n)), "{per_device:?}");
    // The same file is still refused by `run`, which has no scenario to spawn devices.
    let plain = output_within(bin().args(["validate", "--config", f.to_str().unwrap()]), LIMIT_S);
    assert_eq!(plain.status.code(), Some(2), "{}", stderr(&plain));
    assert!(stderr(&plain).contains("fleet: missing"), "{}", stderr(&plain));
}

/// A scenario `update` with format keys switches the devices' payload format at its sim time.
#[test]
fn an_update_step_switches_the_payload_format() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = r#"
duration = "20m"

[[step]]
at = "10m"
update = { all = true, format = "flat", id_key = "id", timestamp = "ms" }
"#;
    let out = scenario_run(dir.path(), scenario, &["--cores", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let start = 1_767_225_600_000u64; // 2026-01-01T00:00:00Z
    let (mut envelope, mut flat) = (0, 0);
    for f in std::fs::read_dir(dir.path().join("out")).unwrap() {
        for l in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let p = serde_json::from_str::<Value>(l).unwrap()["payload"].clone();
            if let Some(ms) = p["timestamp"].as_u64() {
                assert!(p["id"].is_string() && ms >= start + 10 * M, "{l}");
                flat += 1;
            } else {
                assert!(
                    p["device_id"].is_string()
                        && p["timestamp"].as_str() < Some("2026-01-01T00:10:01"),
                    "{l}"
                );
                envelope += 1;
            }
        }
    }
    // 4 devices every 10 s: 60 messages each side of the update.
    assert_eq!((envelope, flat), (4 * 60, 4 * 60));
    // A bad format key in an update is a problem with its path, before anything runs.
    let bad = r#"
duration = "20m"

[[step]]
at = "10m"
update = { all = true, format = "protobuf", proto_file = "/etc/passwd", message = "M" }
"#;
    let out = scenario_run(dir.path(), bad, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("step[0].update.proto_file: \"/etc/passwd\""),
        "{}",
        stderr(&out)
    );
}

/// 10,000 devices spawned, stopped (a shard then gives the end of its device table back) and
/// 10,000 more spawned after them, on 1 and 2 cores.
const SPAWN_STOP_SPAWN: &str = r#"
name = "spawn_stop_spawn"
duration = "3m"

[[step]]
at = "30s"
spawn = { profile = "thermo", count = 10000, labels = { wave = "1" } }

[[step]]
at = "60s"
stop = { selector = "wave=1" }

[[step]]
at = "90s"
spawn = { profile = "thermo", count = 10000, labels = { wave = "2" } }
"#;

#[test]
fn a_spawn_after_a_large_stop_is_byte_identical_and_the_same_for_any_core_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut sorted = vec![];
    for cores in ["1", "2"] {
        let mut runs = vec![];
        for _ in 0..2 {
            let out = scenario_run(dir.path(), SPAWN_STOP_SPAWN, &["--cores", cores]);
            assert!(out.status.success(), "{}", stderr(&out));
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("out"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            runs.push(files.iter().map(|p| std::fs::read(p).unwrap()).collect::<Vec<_>>());
        }
        assert!(runs[0] == runs[1], "{cores} cores: per-shard files differ between runs");
        let (mut raw, lines) = read_lines(dir.path());
        let ordinal = |id: &str| id.trim_start_matches("thermo-").parse::<u64>().unwrap();
        for (id, ms, _) in &lines {
            match ordinal(id) {
                0..=3 => {}
                4..=10_003 => assert!((30_000..60_000).contains(ms), "{cores}: {id} at {ms}"),
                10_004..=20_003 => assert!((90_000..180_000).contains(ms), "{cores}: {id} at {ms}"),
                _ => panic!("{cores} cores: unexpected device {id}"),
            }
        }
        // Each wave's devices all published: 3 intervals for the first, 9 for the second.
        let wave =
            |lo: u64, hi: u64| lines.iter().filter(|l| (lo..=hi).contains(&ordinal(&l.0))).count();
        assert_eq!(wave(4, 10_003), 30_000, "{cores} cores");
        assert_eq!(wave(10_004, 20_003), 90_000, "{cores} cores");
        raw.sort();
        sorted.push((cores, raw));
    }
    assert!(sorted[1].1 == sorted[0].1, "2 cores: sorted lines differ from 1 core");
}
