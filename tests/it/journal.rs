//! The session journal: a live realtime session steered over gRPC and the admin API (spawns,
//! faults, an update, stops) is journaled in `REPORT_DIR/journal.jsonl`; `iot-sim journal
//! export` turns it into a scenario, which, run with the run's seed under the virtual clock,
//! publishes byte for byte what a scenario written by hand with the same steps publishes, for
//! the same devices as the live session. The live run is realtime, so its sim offsets are
//! whatever the wall clock gave: the hand-written scenario takes its `at` values from the
//! journal (the only thing it takes from there); everything else in it is written here.

use crate::common::{Running, bin, command_within, http_json};
use crate::grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use proto::device_selector::Selector;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SEED: u64 = 5;

/// The fleet file: two devices of `base` from the start, a file sink at `out`.
fn fleet(dir: &Path, name: &str, clock: &str, out: &Path) -> PathBuf {
    let text = format!(
        "[run]\nseed = {SEED}\nclock = \"{clock}\"\nstart_time = \"2026-05-01T00:00:00Z\"\n\n\
         [sink.file]\npath = \"{}\"\n\n\
         [profiles.base]\nprotocol = \"file\"\ninterval = \"200ms\"\n\
         [profiles.base.fields.level]\ntype = \"gaussian\"\nmean = 5\nstddev = 1\n\n\
         [[fleet]]\nprofile = \"base\"\ncount = 2\nlabels = {{ site = \"c\" }}\n",
        out.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn ids(list: &[&str]) -> Option<proto::DeviceSelector> {
    Some(proto::DeviceSelector {
        selector: Some(Selector::DeviceIds(proto::DeviceIdList {
            ids: list.iter().map(|s| s.to_string()).collect(),
        })),
    })
}

fn read_journal(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The lines of a file sink's output at `path` (one file per shard: `NAME.shard-N.jsonl`),
/// sorted (each shard writes its own devices in its own order).
fn sink_lines(path: &Path) -> Vec<String> {
    let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
    let mut lines = vec![];
    for e in std::fs::read_dir(path.parent().unwrap()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with(&format!("{stem}.shard-")) {
            let text = std::fs::read_to_string(path.with_file_name(&name)).unwrap();
            lines.extend(text.lines().map(String::from));
        }
    }
    assert!(!lines.is_empty(), "no output at {}", path.display());
    lines.sort();
    lines
}

/// Device ids in a file sink's output.
fn devices_in(path: &Path) -> BTreeSet<String> {
    sink_lines(path)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let p = &v["payload"];
            p["device_id"].as_str().unwrap_or_else(|| panic!("no device_id: {l}")).to_string()
        })
        .collect()
}

/// The live session: returns the journal's lines and the devices the live file sink saw.
async fn live_session(dir: &Path) -> (PathBuf, BTreeSet<String>) {
    let out = dir.join("live.jsonl");
    let cfg = fleet(dir, "live.toml", "realtime", &out);
    let rd = dir.join("live-report");
    let mut run = Running::grpc_cmd(bin().args([
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--grpc",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--quiet",
        "--cores",
        "2",
        "--report-dir",
        rd.to_str().unwrap(),
    ]));
    let admin = run.admin_addr();
    let mut c = DeviceRuntimeServiceClient::connect(run.url()).await.unwrap();
    // The gaps between actions are what the test is about: the journal records each action's
    // sim offset and the export must reproduce them, so the steps are spread out on purpose.
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    // gRPC: three thermometers on two sites.
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest {
            specs: vec![
                spec("th-1", "thermo", &[("site", "a")], 100, "file"),
                spec("th-2", "thermo", &[("site", "a")], 100, "file"),
                spec("th-3", "thermo", &[("site", "b")], 100, "file"),
            ],
            scenario_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 3, "{r:?}");
    pause().await;
    // Admin API: a meter (and an id that is taken: refused, not journaled as spawned).
    let body = r#"{"specs":[{"device_id":"m-1","device_type":"meter","protocol":"file",
        "telemetry_interval":"150ms","labels":{"site":"b"},
        "behavior_params":{"fields":{"power":{"type":"gaussian","mean":100.5,"stddev":2}}}},
        {"device_id":"th-1","device_type":"thermo","protocol":"file"}]}"#;
    let (code, answer) = http_json(&admin, "POST", "/api/v1/spawn", body, None);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("\"spawned\":1"), "{answer}");
    pause().await;
    // gRPC: a latency spike on site a.
    c.inject_fault(proto::InjectFaultRequest {
        selector: labels("site=a"),
        fault_type: proto::FaultType::LatencySpike as i32,
        duration: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        parameters: Some(obj(vec![("latency_ms", num(250.0))])),
    })
    .await
    .unwrap();
    pause().await;
    // Admin API: the meter disconnected until cleared, and a corruption of th-3.
    let (code, answer) = http_json(
        &admin,
        "POST",
        "/api/v1/faults",
        r#"{"selector":{"device_ids":["m-1"]},"fault_type":"disconnect"}"#,
        None,
    );
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = http_json(
        &admin,
        "POST",
        "/api/v1/faults",
        r#"{"selector":{"label_selector":"site=b"},"fault_type":"data_corruption",
            "duration":"600ms","parameters":{"corruption_rate":0.5,"mode":"spike"}}"#,
        None,
    );
    assert_eq!(code, 200, "{answer}");
    pause().await;
    // gRPC: site b's fields replaced.
    c.update_device_behavior(proto::UpdateDeviceBehaviorRequest {
        selector: labels("site=b"),
        behavior_params: Some(obj(vec![(
            "fields",
            objv(vec![(
                "temperature",
                objv(vec![("type", text("gaussian")), ("mean", num(30.0)), ("stddev", num(0.5))]),
            )]),
        )])),
    })
    .await
    .unwrap();
    pause().await;
    // Admin API: the meter's faults cleared; gRPC: th-2 and an unknown id stopped.
    let (code, answer) = http_json(
        &admin,
        "DELETE",
        "/api/v1/faults",
        r#"{"selector":{"device_ids":["m-1"]}}"#,
        None,
    );
    assert_eq!(code, 200, "{answer}");
    let r = c
        .stop_devices(proto::StopDevicesRequest {
            selector: ids(&["th-2", "nope"]),
            graceful: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stopped, 1, "{r:?}");
    pause().await;
    // Admin API: site b stopped; a stop that matches nothing changes nothing.
    let (code, answer) = http_json(
        &admin,
        "POST",
        "/api/v1/stop",
        r#"{"selector":{"label_selector":"site=b"}}"#,
        None,
    );
    assert_eq!(code, 200, "{answer}");
    let (code, _) = http_json(
        &admin,
        "POST",
        "/api/v1/stop",
        r#"{"selector":{"label_selector":"site=zz"}}"#,
        None,
    );
    assert_eq!(code, 200);
    pause().await;
    assert!(run.terminate().success(), "{:?}", run.lines());
    (rd.join("journal.jsonl"), devices_in(&out))
}

fn at(e: &Value) -> String {
    format!("{}ms", e["offset_ms"].as_u64().unwrap())
}

/// The scenario a person would write for the session, at the journal's offsets.
fn by_hand(journal: &[Value]) -> String {
    let a: Vec<String> = journal[1..].iter().map(at).collect();
    let end = a.last().unwrap();
    format!(
        r#"name = "by_hand"
duration = "{end}"

[profiles.thermo]
protocol = "file"
interval = "100ms"
[profiles.thermo.fields.temperature]
type = "gaussian"
mean = 22
stddev = 1

[profiles.meter]
protocol = "file"
interval = "150ms"
[profiles.meter.fields.power]
type = "gaussian"
mean = 100.5
stddev = 2

[[step]]
at = "{}"
spawn = {{ profile = "thermo", ids = ["th-1", "th-2"], labels = {{ site = "a" }} }}

[[step]]
at = "{}"
spawn = {{ profile = "thermo", ids = ["th-3"], labels = {{ site = "b" }} }}

[[step]]
at = "{}"
spawn = {{ profile = "meter", ids = ["m-1"], labels = {{ site = "b" }} }}

[[step]]
at = "{}"
fault = {{ selector = "site=a", type = "latency_spike", duration = "1s", params = {{ latency_ms = 250 }} }}

[[step]]
at = "{}"
fault = {{ ids = ["m-1"], type = "disconnect" }}

[[step]]
at = "{}"
fault = {{ selector = "site=b", type = "data_corruption", duration = "600ms", params = {{ corruption_rate = 0.5, mode = "spike" }} }}

[[step]]
at = "{}"
update = {{ selector = "site=b", replace_fields = true, fields = {{ temperature = {{ type = "gaussian", mean = 30, stddev = 0.5 }} }} }}

[[step]]
at = "{}"
clear = {{ ids = ["m-1"] }}

[[step]]
at = "{}"
stop = {{ ids = ["th-2"] }}

[[step]]
at = "{}"
stop = {{ selector = "site=b" }}
"#,
        a[0], a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]
    )
}

/// `scenario run FILE` on the fleet under the virtual clock with the run's seed; returns the
/// file sink's bytes.
fn replay(dir: &Path, name: &str, scenario: &Path) -> Vec<u8> {
    let out = dir.join(format!("{name}.jsonl"));
    let cfg = fleet(dir, &format!("{name}-fleet.toml"), "virtual", &out);
    let mut cmd = bin();
    cmd.args(["scenario", "run", scenario.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .args(["--clock", "virtual", "--seed", &SEED.to_string(), "--quiet", "--cores", "2"])
        .args(["--report-dir", dir.join(format!("{name}-report")).to_str().unwrap()]);
    let o = command_within(cmd, 120);
    assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    sink_lines(&out).join("\n").into_bytes()
}

#[tokio::test(flavor = "current_thread")]
async fn a_live_session_exported_replays_as_the_hand_written_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let (path, live_devices) = live_session(dir.path()).await;
    let journal = read_journal(&path);
    assert_eq!(journal[0]["journal"], 1, "{:?}", journal[0]);
    assert_eq!(journal[0]["seed"], SEED.to_string());
    let actions: Vec<&str> = journal[1..].iter().map(|e| e["action"].as_str().unwrap()).collect();
    // The stop that matched nothing and the refused spawn are not there; the end is.
    assert_eq!(
        actions,
        ["spawn", "spawn", "fault", "fault", "fault", "update", "clear", "stop", "stop", "end"],
        "{journal:?}"
    );
    let sources: Vec<&str> =
        journal[1..10].iter().map(|e| e["source"].as_str().unwrap_or("?")).collect();
    assert_eq!(
        sources,
        ["grpc", "admin", "grpc", "admin", "admin", "grpc", "admin", "grpc", "admin"],
        "{journal:?}"
    );
    let offsets: Vec<u64> = journal[1..].iter().map(|e| e["offset_ms"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert_eq!(journal[2]["spawned"], 1, "{}", journal[2]);
    assert_eq!(journal[8]["selection"]["ids"], serde_json::json!(["th-2"]), "{}", journal[8]);

    let exported = dir.path().join("session.toml");
    let mut cmd = bin();
    cmd.args(["journal", "export", path.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    let o = command_within(cmd, 60);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let hand = dir.path().join("by_hand.toml");
    std::fs::write(&hand, by_hand(&journal)).unwrap();
    let from_journal = replay(dir.path(), "exported", &exported);
    let from_hand = replay(dir.path(), "hand", &hand);
    assert!(!from_hand.is_empty());
    assert!(
        from_journal == from_hand,
        "the exported scenario publishes other bytes than the hand-written one:\n{}",
        std::fs::read_to_string(&exported).unwrap()
    );
    // The same devices as the live session.
    let replayed = devices_in(&dir.path().join("exported.jsonl"));
    let want: BTreeSet<String> =
        ["base-0000", "base-0001", "th-1", "th-2", "th-3", "m-1"].map(String::from).into();
    assert_eq!(replayed, want);
    assert_eq!(live_devices, want);
}

#[test]
fn a_corrupt_journal_line_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    std::fs::write(
        &journal,
        concat!(
            r#"{"journal":1,"start":"2026-05-01T00:00:00.000Z","speed":1.0,"seed":"5"}"#,
            "\n",
            r#"{"seq":1,"offset_ms":10,"action":"stop","selection":{"all":true},"affected":2}"#,
            "\n",
            r#"{"seq":2,"offset_ms":20,"action":"stop","selection":{"all":true},"affect"#,
            "\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("session.toml");
    let mut cmd = bin();
    cmd.args(["journal", "export", journal.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let o = command_within(cmd, 60);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("journal.jsonl:3: not valid JSON"), "{err}");
    assert!(!out.exists());
    // Nothing half-written beside it either.
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // An existing scenario is left as it was.
    std::fs::write(&out, "kept").unwrap();
    let mut cmd = bin();
    cmd.args(["journal", "export", journal.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(command_within(cmd, 60).status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "kept");
}

/// A scenario that uses every kind of step (repeat, over, batches, phases, a log line).
const MIXED: &str = r#"name = "mixed"
duration = "3s"

[profiles.sensor]
protocol = "file"
interval = "100ms"
labels = { kind = "s" }
[profiles.sensor.fields.t]
type = "gaussian"
mean = 20
stddev = 2
[profiles.sensor.fields.mode]
type = "markov"
states = ["idle", "busy"]
transition_matrix = [[0.9, 0.1], [0.3, 0.7]]

[[step]]
at = "0s"
phase = "ramp"

[[step]]
at = "200ms"
spawn = { profile = "sensor", count = 4, labels = { wave = "w{i}" }, over = "400ms" }
repeat = { times = 2, every = "500ms" }

[[step]]
at = "1200ms"
fault = { selector = "wave=w0", type = "data_corruption", duration = "500ms", params = { corruption_rate = 1.0, mode = "zero", reason = "test" } }

[[step]]
at = "1500ms"
update = { selector = "wave=w1", interval = "150ms", labels = { fw = "2" }, fields = { t = { type = "gaussian", mean = 50, stddev = 1 } } }

[[step]]
at = "1800ms"
log = "halfway"

[[step]]
at = "2000ms"
stop = {}
batches = { selector = "kind=s", size = 3, every = "200ms" }

[[step]]
at = "2500ms"
phase = "tail"
"#;

#[test]
fn a_scenario_run_live_is_journaled_and_exports_to_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scenario = d.join("mixed.toml");
    std::fs::write(&scenario, MIXED).unwrap();
    // Live: realtime at 4x, with the admin API on (so the run keeps a journal).
    let out = d.join("live.jsonl");
    let cfg = fleet(d, "live.toml", "realtime", &out);
    let rd = d.join("live-report");
    let mut cmd = bin();
    cmd.args(["scenario", "run", scenario.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .args(["--speed", "4", "--admin", "127.0.0.1:0", "--quiet", "--cores", "2"])
        .args(["--report-dir", rd.to_str().unwrap()]);
    let o = command_within(cmd, 120);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let journal = read_journal(&rd.join("journal.jsonl"));
    let steps: Vec<(u64, &str)> = journal[1..]
        .iter()
        .map(|e| (e["offset_ms"].as_u64().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    // Each step at its exact sim time; the batches of 3 of the 8 sensors; the end at 3 s.
    assert_eq!(
        steps,
        [
            (0, "phase"),
            (200, "spawn"),
            (300, "spawn"),
            (400, "spawn"),
            (500, "spawn"),
            (700, "spawn"),
            (800, "spawn"),
            (900, "spawn"),
            (1000, "spawn"),
            (1200, "fault"),
            (1500, "update"),
            (1800, "log"),
            (2000, "stop"),
            (2200, "stop"),
            (2400, "stop"),
            (2500, "phase"),
            (3000, "end"),
        ],
        "{journal:?}"
    );
    assert!(journal[1..16].iter().all(|e| e["source"] == "scenario"), "{journal:?}");

    let exported = d.join("session.toml");
    let mut cmd = bin();
    cmd.args(["journal", "export"])
        .arg(rd.join("journal.jsonl"))
        .args(["--out", exported.to_str().unwrap()]);
    let o = command_within(cmd, 60);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_journal = replay(d, "exported", &exported);
    let original = replay(d, "original", &scenario);
    assert!(
        from_journal == original,
        "the exported scenario publishes other bytes than the original:\n{}",
        std::fs::read_to_string(&exported).unwrap()
    );
    assert_eq!(devices_in(&d.join("exported.jsonl")).len(), 10);
}
