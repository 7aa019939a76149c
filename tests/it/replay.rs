//! Trace replay (`[profiles.X.replay]`): values and offsets as recorded, beside a synthetic
//! fleet byte-identical across runs and `--cores`, the file sink's own output replayed, and
//! bad traces refused with their line and column.

use crate::common::{bin, stderr};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const START: &str = "2026-01-01T00:00:00Z";
const START_MS: u64 = 1_767_225_600_000;
const T0_MS: u64 = 1_700_000_000_000;

/// A recorded trace: four sensors in turn with irregular steps (two rows of one sensor at the
/// same time), a text column, and a `rare` sensor whose three rows are far apart in the file
/// (its rows reach it through its own reader: more than 8 rows of others lie between).
/// Returns the CSV and each sensor's rows as (recorded offset ms, temperature, state).
/// Each sensor's rows as (recorded offset ms, temperature, state).
type Rows = BTreeMap<String, Vec<(u64, f64, String)>>;

fn trace() -> (String, Rows) {
    let mut csv = String::from("when,sensor,temperature,state,ignored\n");
    let mut rows: Rows = BTreeMap::new();
    let mut t = T0_MS;
    for i in 0..400u64 {
        t += 700 + (i % 5) * 311;
        let mut put = |name: &str, t: u64, v: f64, s: &str| {
            csv.push_str(&format!("{},{name},{v},{s},x\n", t as f64 / 1000.0));
            rows.entry(name.to_string()).or_default().push((t - T0_MS, v, s.to_string()));
        };
        if i % 150 == 0 {
            put("rare", t, -40.125 + i as f64, "alarm");
        }
        let name = ["a", "b", "c", "d"][(i % 4) as usize];
        let v = ((i * 37 % 1000) as f64) / 8.0 - 20.0;
        put(name, t, v, if i % 3 == 0 { "open" } else { "closed" });
        if i == 17 {
            put(name, t, 99.5, "open");
        }
    }
    (csv, rows)
}

fn replay_fleet(dir: &Path, extra: &str) -> PathBuf {
    let (csv, _) = trace();
    std::fs::write(dir.join("trace.csv"), csv).unwrap();
    let toml = format!(
        r#"
[run]
seed = 7
clock = "virtual"
start_time = "{START}"
duration = "2h"
[sink.file]
path = "{out}"
[profiles.rec]
protocol = "file"
topic = "rec/{{device_id}}"
[profiles.rec.replay]
file = "trace.csv"
time = "when"
device = "sensor"
fields = ["temperature", "state"]
speed = 2.0
[[fleet]]
profile = "rec"
{extra}
"#,
        out = dir.join("out.jsonl").display()
    );
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    cfg
}

fn run(cfg: &Path, cores: u16) -> std::process::Output {
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", &cores.to_string(), "--quiet"])
        .args(["--report-dir", cfg.with_file_name("report").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    out
}

/// Every shard file's lines (then removed), sorted, and the raw bytes of each file.
fn outputs(dir: &Path) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "jsonl") && p.to_str().unwrap().contains("out")
        })
        .collect();
    names.sort();
    let (mut lines, mut raw) = (vec![], vec![]);
    for n in names {
        let bytes = std::fs::read(&n).unwrap();
        lines.extend(String::from_utf8(bytes.clone()).unwrap().lines().map(String::from));
        raw.push(bytes);
        std::fs::remove_file(n).unwrap();
    }
    lines.sort();
    (lines, raw)
}

fn rfc3339_ms(s: &str) -> u64 {
    // 2026-01-01T00:MM:SS.mmmZ within the first day.
    let h: u64 = s[11..13].parse().unwrap();
    let m: u64 = s[14..16].parse().unwrap();
    let sec: u64 = s[17..19].parse().unwrap();
    let ms: u64 = s[20..23].parse().unwrap();
    assert!(s.starts_with("2026-01-01T"), "{s}");
    START_MS + ((h * 60 + m) * 60 + sec) * 1000 + ms
}

#[test]
fn values_and_offsets_are_as_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = replay_fleet(dir.path(), "");
    run(&cfg, 1);
    let (lines, _) = outputs(dir.path());
    let (_, want) = trace();
    // Devices in order of first appearance: rare (row 0, before a), a, b, c, d.
    let order = ["rare", "a", "b", "c", "d"];
    let mut got: Rows = BTreeMap::new();
    let mut seen_times: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let p = &v["payload"];
        let id = p["device_id"].as_str().unwrap();
        let k: usize = id.strip_prefix("rec-").unwrap().parse().unwrap();
        let at = rfc3339_ms(p["timestamp"].as_str().unwrap()) - START_MS;
        let f = &p["fields"];
        got.entry(order[k].to_string()).or_default().push((
            at,
            f["temperature"].as_f64().unwrap(),
            f["state"].as_str().unwrap().to_string(),
        ));
        seen_times.entry(id.to_string()).or_default().push(at);
        assert!(f.get("ignored").is_none(), "only the listed fields are published: {l}");
        assert_eq!(v["topic"], format!("rec/{id}"));
    }
    for (name, rows) in &want {
        // Recorded offsets from the first row (700 ms after T0), halved (speed 2), to the
        // millisecond.
        let mut expect: Vec<(u64, f64, String)> = rows
            .iter()
            .map(|(off, v, s)| ((((off - 700) as f64) / 2.0).round() as u64, *v, s.clone()))
            .collect();
        let mut mine = got.remove(name).unwrap_or_default();
        // Lines were sorted as text; put each device's back in time order (stable for the
        // two rows at one time: compare as sets then).
        mine.sort_by(|a, b| a.partial_cmp(b).unwrap());
        expect.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(mine, expect, "sensor {name}");
    }
    assert!(got.is_empty(), "devices nobody recorded: {:?}", got.keys());
}

#[test]
fn beside_a_synthetic_fleet_any_core_count_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let synthetic = r#"
[profiles.thermo]
protocol = "file"
interval = "7s"
[profiles.thermo.fields.t]
type = "brownian"
start = 20.0
mean = 20.0
volatility = 0.3
mean_reversion = 0.05
[[fleet]]
profile = "thermo"
count = 40
[profiles.dealt]
protocol = "file"
[profiles.dealt.replay]
file = "trace.csv"
time = "when"
devices = 7
loop = true
speed = 4.0
offset = { temperature = 0.5 }
[[fleet]]
profile = "dealt"
"#;
    let cfg = replay_fleet(dir.path(), synthetic);
    run(&cfg, 1);
    let (one, one_raw) = outputs(dir.path());
    run(&cfg, 1);
    let (again, again_raw) = outputs(dir.path());
    assert_eq!(one_raw, again_raw, "two runs with one core differ byte for byte");
    assert_eq!(one, again);
    let count = |k: &str| one.iter().filter(|l| l.contains(k)).count();
    assert!(count("\"device_type\":\"thermo\"") > 40 * 1000);
    assert_eq!(count("\"device_type\":\"rec\""), 404);
    // Looped at 4x for 2 h: many laps of the 404 rows, dealt to 7 devices.
    assert!(count("\"device_type\":\"dealt\"") > 404 * 10);
    for k in 0..7 {
        assert!(count(&format!("\"dealt-000{k}\"")) > 0, "dealt-000{k} got no row");
    }
    for cores in [2, 3] {
        run(&cfg, cores);
        let (n, n_raw) = outputs(dir.path());
        assert_eq!(n_raw.len(), cores as usize);
        assert!(n == one, "{cores} cores: the sorted lines differ from one core's");
        run(&cfg, cores);
        let (n2, n2_raw) = outputs(dir.path());
        assert_eq!(n_raw, n2_raw, "{cores} cores: per-shard files differ between runs");
        assert_eq!(n, n2);
    }
}

#[test]
fn the_file_sinks_output_replays_to_the_same_payload_values() {
    let dir = tempfile::tempdir().unwrap();
    let first = format!(
        r#"
[run]
seed = 3
clock = "virtual"
start_time = "{START}"
duration = "20m"
[sink.file]
path = "{out}"
[profiles.src]
protocol = "file"
interval = "9s"
[profiles.src.fields.temp]
type = "gaussian"
mean = 21.5
stddev = 2.0
decimals = 3
[profiles.src.fields.door]
type = "markov"
states = ["closed", "open"]
transition_matrix = [[0.8, 0.2], [0.4, 0.6]]
[[fleet]]
profile = "src"
count = 6
"#,
        out = dir.path().join("recorded.jsonl").display()
    );
    let cfg = dir.path().join("first.toml");
    std::fs::write(&cfg, first).unwrap();
    run(&cfg, 1);
    let recorded = dir.path().join("recorded.jsonl");
    let text = std::fs::read_to_string(&recorded).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() > 6 * 100);
    let first_ts = lines[0]["payload"]["timestamp"].as_str().unwrap().to_string();
    // The recorded devices in order of first appearance, and each one's payloads.
    let mut ids: Vec<String> = vec![];
    let mut want: BTreeMap<String, Vec<(String, serde_json::Value)>> = BTreeMap::new();
    for v in &lines {
        let p = &v["payload"];
        let id = p["device_id"].as_str().unwrap().to_string();
        if !ids.contains(&id) {
            ids.push(id.clone());
        }
        want.entry(id)
            .or_default()
            .push((p["timestamp"].as_str().unwrap().into(), p["fields"].clone()));
    }
    let second = format!(
        r#"
[run]
seed = 99
clock = "virtual"
start_time = "{first_ts}"
duration = "30m"
[sink.file]
path = "{out}"
[profiles.again]
protocol = "file"
[profiles.again.replay]
file = "recorded.jsonl"
time = "timestamp"
device = "device_id"
[[fleet]]
profile = "again"
"#,
        out = dir.path().join("out.jsonl").display()
    );
    let cfg = dir.path().join("second.toml");
    std::fs::write(&cfg, second).unwrap();
    run(&cfg, 2);
    let (out, _) = outputs(dir.path());
    let mut got: BTreeMap<String, Vec<(String, serde_json::Value)>> = BTreeMap::new();
    for l in &out {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let p = &v["payload"];
        let k: usize =
            p["device_id"].as_str().unwrap().strip_prefix("again-").unwrap().parse().unwrap();
        got.entry(ids[k].clone())
            .or_default()
            .push((p["timestamp"].as_str().unwrap().into(), p["fields"].clone()));
    }
    for rows in got.values_mut() {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
    }
    assert_eq!(got, want, "the replayed payloads (by recorded device) differ from the recording");
}

/// Validates a fleet replaying `trace` (written as `trace.csv` unless empty text is wanted),
/// returns stderr; the exit code must be 2.
fn refused(trace: &str, replay_extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trace.csv"), trace).unwrap();
    let toml = format!(
        r#"
[sink.null]
[profiles.rec]
protocol = "null"
[profiles.rec.replay]
file = "trace.csv"
time = "ts"
{replay_extra}
[[fleet]]
profile = "rec"
"#
    );
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = bin().args(["validate", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "not refused with exit 2: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_traces_and_settings_are_refused_with_line_column_and_value() {
    let ok = "ts,v\n1,1.5\n2,2.5\n";
    let e = refused("time,v\n1,2\n", "");
    assert!(
        e.contains("profiles.rec.replay.file")
            && e.contains("line 1, column \"ts\": no such column; the header has: time, v"),
        "{e}"
    );
    let e = refused("ts,v\n1,2\n2,2\n", "fields = [\"v\", \"w\"]");
    assert!(e.contains("column \"w\": no such column"), "{e}");
    let e = refused("ts,v\n1,2\nlater,3\n", "");
    assert!(e.contains("line 3, column \"ts\": not a time"), "{e}");
    let e = refused("ts,v\n1,2\n2,2\n3,n/a\n", "");
    assert!(e.contains("line 4, column \"v\": \"n/a\" is not a number"), "{e}");
    let e = refused("ts,v\n5,2\n6,2\n4,2\n", "");
    assert!(
        e.contains("line 4, column \"ts\": time goes backwards") && e.contains("line 3"),
        "{e}"
    );
    let e = refused("", "");
    assert!(e.contains("the trace is empty"), "{e}");
    let e = refused("ts,v\n", "");
    assert!(e.contains("no data rows"), "{e}");
    // Settings: every problem at once, each with its path and value.
    let e = refused(ok, "devices = 0\nspeed = -1.5");
    assert!(
        e.contains("profiles.rec.replay.devices: must be between 1") && e.contains("got 0"),
        "{e}"
    );
    assert!(
        e.contains("profiles.rec.replay.speed: must be greater than 0") && e.contains("-1.5"),
        "{e}"
    );
    let e = refused(ok, "speed = 0");
    assert!(e.contains("profiles.rec.replay.speed") && e.contains("got 0"), "{e}");
    let e = refused(ok, "scale = { nope = 2 }");
    assert!(e.contains("profiles.rec.replay.scale.nope: not a published field"), "{e}");
}

/// `iot-sim fit` on a series iot-sim itself recorded (its file sink's output): the diurnal
/// model is chosen, its parameters recovered, and the written fleet file validates.
#[test]
fn fit_recovers_a_recorded_diurnal_series_and_writes_a_valid_profile() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = format!(
        r#"
[run]
seed = 11
clock = "virtual"
start_time = "{START}"
duration = "7d"
[sink.file]
path = "{out}"
[profiles.room]
protocol = "file"
interval = "1m"
[profiles.room.fields.temp]
type = "diurnal"
baseline = 20.0
amplitude = 5.0
peak_hour = 14.0
noise_stddev = 0.5
[profiles.room.fields.mode]
type = "markov"
states = ["eco", "comfort"]
transition_matrix = [[0.95, 0.05], [0.2, 0.8]]
[[fleet]]
profile = "room"
count = 1
"#,
        out = dir.path().join("rec.jsonl").display()
    );
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, fleet).unwrap();
    run(&cfg, 1);
    let out_toml = dir.path().join("fitted.toml");
    let o = bin()
        .args(["fit", dir.path().join("rec.jsonl").to_str().unwrap(), "--time", "timestamp"])
        .args(["--device", "device_id", "--out", out_toml.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "fit failed: {}\n{stdout}", stderr(&o));
    assert!(stdout.contains("10080 samples"), "{stdout}");
    for want in ["gaussian", "brownian", "diurnal", "markov", "AIC", "BIC", "95% CI", "KS D="] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    assert!(stdout.contains("chosen: diurnal (lowest BIC)"), "{stdout}");
    let doc: toml::Table = std::fs::read_to_string(&out_toml).unwrap().parse().unwrap();
    let temp = &doc["profiles"]["fitted"]["fields"]["temp"];
    assert_eq!(temp["type"].as_str(), Some("diurnal"));
    let near = |k: &str, want: f64, tol: f64| {
        let got = temp[k].as_float().unwrap();
        assert!((got - want).abs() <= tol, "{k}: {got} vs {want}");
    };
    near("baseline", 20.0, 0.1);
    near("amplitude", 5.0, 0.1);
    near("peak_hour", 14.0, 0.1);
    near("noise_stddev", 0.5, 0.02);
    let mode = &doc["profiles"]["fitted"]["fields"]["mode"];
    assert_eq!(mode["type"].as_str(), Some("markov"));
    let v = bin().args(["validate", "--config", out_toml.to_str().unwrap()]).output().unwrap();
    assert!(v.status.success(), "the fitted file does not validate: {}", stderr(&v));
}

#[test]
fn fit_refuses_what_it_cannot_fit_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fit = |csv: &str, extra: &[&str]| {
        let trace = dir.path().join("t.csv");
        std::fs::write(&trace, csv).unwrap();
        let out = dir.path().join("never.toml");
        let o = bin()
            .args(["fit", trace.to_str().unwrap(), "--time", "ts", "--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "not refused: {}", String::from_utf8_lossy(&o.stdout));
        assert!(!out.exists(), "something was written");
        stderr(&o)
    };
    let rows = |f: &dyn Fn(usize) -> String| -> String {
        let mut s = String::from("ts,v\n");
        for i in 0..40 {
            s.push_str(&format!("{},{}\n", 1000 + i, f(i)));
        }
        s
    };
    let e = fit(&rows(&|_| "7.5".into()), &[]);
    assert!(e.contains("field \"v\": constant data"), "{e}");
    let e = fit("ts,v\n1,2\n2,3\n3,1\n", &[]);
    assert!(e.contains("3 samples: at least 10"), "{e}");
    let mut dup = rows(&|i| i.to_string());
    dup = dup.replace("\n1005,5\n", "\n1004,5\n");
    let e = fit(&dup, &[]);
    assert!(e.contains("duplicate time"), "{e}");
    let e = fit(&rows(&|i| i.to_string()), &["--field", "nope"]);
    assert!(e.contains("column \"nope\": no such column"), "{e}");
    let e = fit("ts,v\n5,1\n4,2\n", &[]);
    assert!(e.contains("line 3") && e.contains("time goes backwards"), "{e}");
}

/// Replay devices take a scenario's pause, fault and stop like any device: the rows due while
/// paused are skipped (not sent in a burst at resume), a DISCONNECT's rows are not published,
/// and nothing follows the stop.
#[test]
fn a_scenario_pauses_faults_and_stops_replay_devices() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("ts,v\n");
    for i in 0..100 {
        csv.push_str(&format!("{},{i}\n", 1_000 + i));
    }
    std::fs::write(dir.path().join("t.csv"), csv).unwrap();
    let fleet = format!(
        r#"
[run]
seed = 1
clock = "virtual"
start_time = "{START}"
[sink.file]
path = "{out}"
[profiles.rec]
protocol = "file"
[profiles.rec.replay]
file = "t.csv"
time = "ts"
[[fleet]]
profile = "rec"
"#,
        out = dir.path().join("out.jsonl").display()
    );
    std::fs::write(dir.path().join("fleet.toml"), fleet).unwrap();
    let scenario = r#"
name = "replay_control"
duration = "2m"
[[step]]
at = "20s"
pause = { ids = ["rec-0000"] }
[[step]]
at = "30s"
resume = { ids = ["rec-0000"] }
[[step]]
at = "50s"
fault = { ids = ["rec-0000"], type = "disconnect", duration = "10s" }
[[step]]
at = "80s"
stop = { ids = ["rec-0000"] }
"#;
    std::fs::write(dir.path().join("s.toml"), scenario).unwrap();
    let o = bin()
        .current_dir(dir.path())
        .args(["scenario", "run", "s.toml", "--config", "fleet.toml", "--cores", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "scenario failed: {}", stderr(&o));
    let (lines, _) = outputs(dir.path());
    let mut got: Vec<(u64, i64)> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = &v["payload"];
            let at = (rfc3339_ms(p["timestamp"].as_str().unwrap()) - START_MS) / 1000;
            (at, p["fields"]["v"].as_f64().unwrap() as i64)
        })
        .collect();
    got.sort();
    let want: Vec<(u64, i64)> = (0..100)
        .filter(|i| *i < 20 || (30..50).contains(i) || (60..80).contains(i))
        .map(|i| (i as u64, i))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn replay_devices_publish_their_recorded_rows_over_their_own_mqtt_sessions() {
    use crate::common::mqtt::{Broker, Subscriber};
    use crate::common::{free_port, run_ok, unique};
    use std::os::unix::fs::PermissionsExt;
    // A broker of the test's own (its log names each client that connected).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("replay");
    // Three sensors in turn, 10 rows each over 1.45 s recorded, replayed at speed 2.
    let mut csv = String::from("ts,sensor,temperature,state\n");
    let mut want: BTreeMap<String, Vec<(u64, f64, String)>> = BTreeMap::new();
    for i in 0..30u64 {
        let t = T0_MS + i * 50;
        let name = ["north", "south", "east"][(i % 3) as usize];
        let v = (i * 7 % 31) as f64 / 4.0 - 3.0;
        let s = if i % 4 == 0 { "on" } else { "off" };
        csv.push_str(&format!("{t},{name},{v},{s}\n"));
        want.entry(name.to_string()).or_default().push((i * 25, v, s.to_string()));
    }
    std::fs::write(dir.path().join("trace.csv"), csv).unwrap();
    let toml = format!(
        r#"
[run]
seed = 3
clock = "realtime"
start_time = "{START}"
duration = "2s"
[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
qos = 1
[profiles.rec]
protocol = "mqtt"
connection = "per_device"
topic = "{root}/{{device_id}}/telemetry"
[profiles.rec.replay]
file = "trace.csv"
time = "ts"
device = "sensor"
speed = 2.0
[[fleet]]
profile = "rec"
"#
    );
    let sub = Subscriber::start(port, &format!("{root}/+/telemetry"));
    let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
    assert_eq!(r["runs"][0]["messages"], 30, "{r}");
    assert_eq!(r["runs"][0]["errors"], 0, "{r}");
    assert_eq!(r["sink_events"]["mqtt.session_connected"], 3, "{r}");
    let got = sub.wait_for(30);
    // Devices in order of first appearance: rec-0000 north, rec-0001 south, rec-0002 east.
    let order = ["north", "south", "east"];
    let mut by_device: BTreeMap<String, Vec<(u64, f64, String)>> = BTreeMap::new();
    for (topic, payload) in &got {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let id = v["device_id"].as_str().unwrap();
        assert_eq!(topic, &format!("{root}/{id}/telemetry"), "each device on its own topic");
        let k: usize = id.strip_prefix("rec-").unwrap().parse().unwrap();
        let at = rfc3339_ms(v["timestamp"].as_str().unwrap()) - START_MS;
        let f = &v["fields"];
        by_device.entry(order[k].to_string()).or_default().push((
            at,
            f["temperature"].as_f64().unwrap(),
            f["state"].as_str().unwrap().to_string(),
        ));
    }
    // Each device's rows arrive once, in order, with the recorded values at the recorded
    // offsets (halved: speed 2).
    assert_eq!(by_device, want);
    // One MQTT client per replay device.
    let log = broker.log();
    for k in 0..3 {
        assert!(log.contains(&format!(" as rec-{k:04} ")), "client rec-{k:04}:\n{log}");
    }
}

#[test]
fn payload_preview_shows_the_traces_first_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = replay_fleet(dir.path(), "");
    let out = bin()
        .args(["payload", "preview", "--config", cfg.to_str().unwrap(), "--count", "6"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    // The trace's first six rows, in file order: (time s, sensor, temperature, state).
    let (csv, _) = trace();
    let rows: Vec<Vec<&str>> =
        csv.lines().skip(1).take(6).map(|l| l.split(',').collect()).collect();
    let first_ms = (rows[0][0].parse::<f64>().unwrap() * 1000.0).round() as u64;
    let order = ["rare", "a", "b", "c", "d"];
    let topics: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("topic: ")).collect();
    let payloads: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.split_once("): ").filter(|_| l.starts_with("payload")))
        .map(|(_, p)| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!((topics.len(), payloads.len()), (6, 6), "{text}");
    for (k, row) in rows.iter().enumerate() {
        let p = &payloads[k];
        let ordinal = order.iter().position(|s| *s == row[1]).unwrap();
        let id = format!("rec-{ordinal:04}");
        assert_eq!(p["device_id"], id.as_str(), "{text}");
        assert_eq!(topics[k], format!("rec/{id}"));
        assert_eq!(p["fields"]["temperature"].as_f64().unwrap(), row[2].parse::<f64>().unwrap());
        assert_eq!(p["fields"]["state"], row[3]);
        // The recorded offset, halved (speed 2), from the run's start.
        let t = (row[0].parse::<f64>().unwrap() * 1000.0).round() as u64;
        let at = rfc3339_ms(p["timestamp"].as_str().unwrap()) - START_MS;
        assert_eq!(at, (((t - first_ms) as f64) / 2.0).round() as u64, "{text}");
    }
}
