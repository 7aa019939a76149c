//! Sparkplug B edge nodes (`format = "sparkplug_b"`, issue 22) against an independent host:
//! `sparkplug_host.py` (pysparkplug over paho-mqtt, installed by scripts/services.sh)
//! subscribed to `spBv1.0/GROUP/#` on the Mosquitto at 127.0.0.1:1883. Births before data,
//! aliases resolving through DBIRTH, `seq` continuous per edge node, a rebirth on NCMD, NDEATH
//! with the NBIRTH's `bdSeq` when the process is killed, a DCMD write in the next DDATA; the same bytes per edge node on 1 and
//! 3 cores; DDEATH and DBIRTH again around outages; bad Sparkplug input refused (exit 2).

use crate::common::mqtt::{Broker, Subscriber};
use crate::common::{bin, free_port, output_within, stderr, unique};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HOST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/sparkplug_host.py");

/// A Python with pysparkplug (`/usr/bin/python3` first, as scripts/services.sh installs it).
fn python() -> Command {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import pysparkplug, paho.mqtt.client"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Command::new(p);
        }
    }
    panic!("python3 with pysparkplug is needed (scripts/services.sh installs it)");
}

/// A fleet of `nodes` edge nodes (`line0`...) of `per_node` presses each, in group `group`.
fn fleet(
    dir: &Path,
    group: &str,
    nodes: usize,
    per_node: usize,
    run: &str,
    extra: &str,
) -> PathBuf {
    fleet_on(1883, dir, group, (nodes, per_node), run, extra)
}

/// [`fleet`] to the broker on 127.0.0.1:`port`.
fn fleet_on(
    port: u16,
    dir: &Path,
    group: &str,
    (nodes, per_node): (usize, usize),
    run: &str,
    extra: &str,
) -> PathBuf {
    let mut text = format!(
        r#"
[run]
{run}

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"

[profiles.press]
protocol = "mqtt"
topic = "unused/{{device_id}}"
interval = "200ms"
format = "sparkplug_b"
{extra}

[profiles.press.sparkplug]
group_id = "{group}"
edge_node = "{{labels.line}}"

[profiles.press.fields.temperature]
type = "gaussian"
mean = 60.0
stddev = 2.0
decimals = 2

[profiles.press.fields.state]
type = "markov"
states = ["run", "idle"]
transition_matrix = [[0.9, 0.1], [0.5, 0.5]]

[profiles.press.fields.fw]
type = "static"
value = "1.4.2"
"#
    );
    for n in 0..nodes {
        text.push_str(&format!(
            "\n[[fleet]]\nprofile = \"press\"\ncount = {per_node}\nlabels = {{ line = \"line{n}\" }}\n"
        ));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn summary(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("host summary {line:?}: {e}"))
}

#[test]
fn an_independent_host_sees_births_data_seq_rebirth_dcmd_and_ndeath_on_kill() {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("spb");
    let (nodes, per_node) = (3, 4);
    // Events (one a second per device, with a field of each kind) go out as DDATA of their own.
    let events = "\n[profiles.press.events.jam]\nrate_per_hour = 3600\n\
                  fields = { force = { type = \"gaussian\", mean = 5.0, stddev = 1.0 }, \
                  level = { type = \"static\", value = \"high\" } }\n";
    let cfg = fleet(dir.path(), &group, nodes, per_node, "duration = \"5m\"", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "\n[[fleet]]",
        &format!("{events}\n[[fleet]]"),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut host = python()
        .args([HOST, "127.0.0.1", "1883", &group, &nodes.to_string(), &per_node.to_string()])
        .arg("line1")
        .env("SPB_WANT_EVENTS", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed");
    let mut sim = bin()
        .args(["--config", cfg.to_str().unwrap(), "--quiet", "--report-dir"])
        .arg(dir.path().join("report"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The host says when it has seen every device's data and the rebirth it asked for.
    let next = lines.next().unwrap().unwrap();
    // Killed: no DISCONNECT, so the broker publishes every edge node's will (NDEATH).
    sim.kill().unwrap();
    sim.wait().unwrap();
    assert_eq!(next, "kill");
    let s = summary(&lines.next().unwrap().unwrap());
    let _ = host.wait();
    assert_eq!(s["violations"], serde_json::json!([]), "{s}");
    assert_eq!(s["devices_with_data"], nodes * per_node, "{s}");
    assert_eq!(s["rebirth"]["nbirth"], true, "{s}");
    assert_eq!(s["rebirth"]["dbirths"], per_node, "{s}");
    // The rebirth's DBIRTHs follow its NBIRTH at once, before any other message of the node.
    assert_eq!(s["rebirth"]["first"], serde_json::json!(vec!["DBIRTH"; per_node]), "{s}");
    assert!(s["counts"]["events"].as_u64().unwrap() >= 3, "events as DDATA: {s}");
    assert_eq!(s["dcmd_reflected"], true, "a DCMD write shows in the next DDATA: {s}");
    assert_eq!(s["nodes"].as_object().unwrap().len(), nodes, "{s}");
    for (name, n) in s["nodes"].as_object().unwrap() {
        assert_eq!(n["ndeath_bd_seq"], n["bd_seq"], "{name}: {s}");
    }
    assert_eq!(s["nodes"]["line1"]["births"], 2, "line1 was born twice: {s}");
    assert!(s["counts"]["DDATA"].as_u64().unwrap() >= (nodes * per_node) as u64, "{s}");
}

/// Runs `cfg` (virtual clock, to its end) while a subscriber on the test's own broker (port
/// `port`, no queue limit: a virtual run publishes faster than a subscriber reads) captures
/// the group's messages; writes them to `capture-CORES.txt` as `TOPIC HEX` lines and returns
/// those lines once every message the run delivered arrived.
fn capture(dir: &Path, cfg: &Path, port: u16, group: &str, cores: &str) -> Vec<String> {
    let sub = Subscriber::start(port, &format!("spBv1.0/{group}/#"));
    let report = dir.join(format!("report-{cores}"));
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--quiet", "--cores", cores, "--report-dir"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let sent = r["messages"].as_u64().unwrap();
    let got: Vec<String> = sub
        .wait_for(sent as usize)
        .into_iter()
        .map(|(t, p)| format!("{t} {}", p.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        .collect();
    // Besides what the run counts: each edge node's NDEATH before its DISCONNECT at the end.
    let ndeaths = got.iter().filter(|l| l.contains("/NDEATH/")).count();
    assert_eq!(
        got.len() as u64 - ndeaths as u64,
        sent,
        "captured {} of {sent} messages",
        got.len()
    );
    std::fs::write(dir.join(format!("capture-{cores}.txt")), got.join("\n") + "\n").unwrap();
    got
}

/// Each edge node's messages in order (one MQTT session each, so the broker keeps its order).
fn by_node(lines: &[String]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m = std::collections::BTreeMap::<String, Vec<String>>::new();
    for l in lines {
        // NDEATH carries the wall time its session was made: not part of the comparison.
        if l.contains("/NDEATH/") {
            continue;
        }
        let node = l.split(' ').next().unwrap().split('/').nth(3).unwrap().to_string();
        m.entry(node).or_default().push(l.clone());
    }
    m
}

#[test]
fn edge_nodes_send_the_same_bytes_on_any_core_count_and_die_and_rebirth_devices() {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("spbdet");
    let run =
        "seed = 5\nclock = \"virtual\"\nstart_time = \"2026-03-14T00:00:00Z\"\nduration = \"30s\"";
    // Devices drop off and come back (DDEATH, then DBIRTH); on_change DDATA carries only
    // what moved; events are DDATA of their own.
    let extra = "qos = 1\nreport = { mode = \"on_change\", max_silence = \"5s\" }\n\
                 availability = { mtbf = \"10s\", mttr = \"2s\" }\n\
                 events = { jam = { rate_per_hour = 720, fields = { force = { type = \
                 \"gaussian\", mean = 5.0, stddev = 1.0 } } } }";
    let port = free_port();
    let _broker = Broker::with_conf(
        port,
        dir.path(),
        "allow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0",
    );
    let cfg = fleet_on(port, dir.path(), &group, (4, 5), run, extra);
    let one = capture(dir.path(), &cfg, port, &group, "1");
    let three = capture(dir.path(), &cfg, port, &group, "3");
    assert_eq!(by_node(&one), by_node(&three), "edge nodes differ between 1 and 3 cores");
    // The independent host's checks on the captured stream.
    let file = dir.path().join("capture-1.txt");
    let out = output_within(
        python().args([HOST, "--check"]).arg(&file).stdout(Stdio::piped()).spawn().unwrap(),
        120,
    );
    let s = summary(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(s["violations"], serde_json::json!([]), "{s}");
    assert!(s["counts"]["DDEATH"].as_u64().unwrap() > 0, "no DDEATH: {s}");
    assert!(s["counts"]["events"].as_u64().unwrap() > 0, "no event DDATA: {s}");
    assert_eq!(s["counts"]["NDEATH"], 4, "every node's NDEATH at the end: {s}");
    assert!(
        s["counts"]["DBIRTH"].as_u64().unwrap() > 20,
        "devices are born again after an outage: {s}"
    );
    let ddata = s["counts"]["DDATA"].as_u64().unwrap();
    assert!(
        s["counts"]["metrics"].as_u64().unwrap() < ddata * 3,
        "on_change DDATA carries only the metrics that moved: {s}"
    );
}

#[test]
fn bad_sparkplug_input_is_refused_with_path_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let validate = |text: String| {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = bin().args(["validate", "--config", cfg.to_str().unwrap()]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        stderr(&out)
    };
    // Bad ids in the profile, and Sparkplug on a file profile.
    let cfg = fleet(dir.path(), "plant/1", 1, 1, "duration = \"1s\"", "");
    let err = validate(
        std::fs::read_to_string(&cfg).unwrap()
            + "\n[profiles.other]\nprotocol = \"file\"\ninterval = \"1s\"\ntopic = \"t\"\n\
               format = \"sparkplug_b\"\n\
               sparkplug = { group_id = \"g\", edge_node = \"n#\" }\n\
               fields = { x = { type = \"gaussian\", mean = 1.0, stddev = 1.0 } }\n\
               [sink.file]\npath = \"out.jsonl\"\n",
    );
    for want in [
        "profiles.press.sparkplug.group_id: \"plant/1\"",
        "profiles.other.format: \"sparkplug_b\" needs protocol = \"mqtt\"",
        "profiles.other.sparkplug.edge_node: \"n#\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // An edge node that a fleet entry's labels make invalid, and one naming a missing label.
    let cfg = fleet(dir.path(), "plant1", 2, 1, "duration = \"1s\"", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let err = validate(
        text.replace("line = \"line0\"", "line = \"a+b\"")
            .replace("labels = { line = \"line1\" }", "labels = { site = \"x\" }"),
    );
    for want in ["fleet[0].labels", "is \"a+b\" here", "fleet[1].labels", "{labels.line}"] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn the_delivery_audit_follows_seq_per_edge_node() {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("spbaudit");
    let cfg = fleet(
        dir.path(),
        &group,
        3,
        4,
        "seed = 3\nstart_time = \"2026-03-14T00:00:00Z\"\nduration = \"3s\"\n\n[audit]\nqos = 1",
        "qos = 1",
    );
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--quiet", "--cores", "2", "--report-dir"])
        .arg(dir.path().join("report"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report/report.json")).unwrap(),
    )
    .unwrap();
    let a = &r["audit"]["sparkplug"];
    assert_eq!(a["nodes"].as_array().map(Vec::len), Some(3), "{}", r["audit"]);
    assert_eq!((a["missing"].as_u64(), a["out_of_order"].as_u64()), (Some(0), Some(0)), "{a}");
    // Every message the run sent, and each node's NDEATH at the end.
    assert!(a["messages"].as_u64().unwrap() >= r["messages"].as_u64().unwrap(), "{a}");
    for n in a["nodes"].as_array().unwrap() {
        assert_eq!(n["births"], 1, "{n}");
        assert!(n["messages"].as_u64().unwrap() > 12, "{n}");
    }
    assert_eq!(r["audit"]["lost"], 0, "{}", r["audit"]);
}

#[test]
fn stopped_and_disconnected_devices_send_ddeath_and_disconnected_ones_are_born_again() {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("spbstop");
    let port = free_port();
    let _broker =
        Broker::with_conf(port, dir.path(), "allow_anonymous true\nmax_queued_messages 0");
    let run =
        "seed = 2\nclock = \"virtual\"\nstart_time = \"2026-03-14T00:00:00Z\"\nduration = \"10s\"";
    let cfg = fleet_on(port, dir.path(), &group, (2, 3), run, "qos = 1");
    let scenario = dir.path().join("s.toml");
    std::fs::write(
        &scenario,
        "name = \"stop\"\nduration = \"10s\"\n\n[[step]]\nat = \"5s\"\nstop = { selector = \"line=line0\" }\n\n\
         [[step]]\nat = \"2s\"\n\
         fault = { selector = \"line=line1\", type = \"disconnect\", duration = \"3s\" }\n",
    )
    .unwrap();
    let sub = Subscriber::start(port, &format!("spBv1.0/{group}/#"));
    let out = bin()
        .args(["scenario", "run", scenario.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .args(["--quiet", "--report-dir"])
        .arg(dir.path().join("report"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report/report.json")).unwrap(),
    )
    .unwrap();
    let got = sub.wait_for(r["messages"].as_u64().unwrap() as usize);
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    let deaths: Vec<&&str> = topics.iter().filter(|t| t.contains("/DDEATH/line0/")).collect();
    assert_eq!(deaths.len(), 3, "{topics:?}");
    for d in deaths {
        let device = d.rsplit('/').next().unwrap();
        let at = topics.iter().position(|t| t == d).unwrap();
        assert!(
            !topics[at + 1..].iter().any(|t| t.ends_with(&format!("/{device}"))),
            "{device} sent after its DDEATH: {topics:?}"
        );
    }
    // A DISCONNECT fault on line1's devices: each one's DDEATH, then its DBIRTH once it ended
    // (the node's session stays up: no NDEATH, one NBIRTH).
    for (i, t) in topics.iter().enumerate().filter(|(_, t)| t.contains("/DDEATH/line1/")) {
        let device = t.rsplit('/').next().unwrap();
        let reborn = format!("spBv1.0/{group}/DBIRTH/line1/{device}");
        assert!(topics[i + 1..].contains(&reborn.as_str()), "{device} not born again: {topics:?}");
    }
    assert_eq!(topics.iter().filter(|t| t.contains("/DDEATH/line1/")).count(), 3, "{topics:?}");
    assert_eq!(topics.iter().filter(|t| t.contains("/NBIRTH/line1")).count(), 1, "{topics:?}");
}

#[test]
fn after_a_broker_restart_each_node_is_born_again_with_the_next_bd_seq() {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("spbrestart");
    let port = free_port();
    let mut broker = Broker::start(port);
    let cfg = fleet_on(port, dir.path(), &group, (2, 2), "duration = \"5m\"", "");
    // Reconnects wait 2 s: the second subscriber is in place before the nodes are back.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("{port}\"\n"), &format!("{port}\"\nbackoff_initial = \"2s\"\n"));
    std::fs::write(&cfg, text).unwrap();
    let filter = format!("spBv1.0/{group}/#");
    let first = Subscriber::start(port, &filter);
    let mut sim = bin()
        .args(["--config", cfg.to_str().unwrap(), "--quiet", "--report-dir"])
        .arg(dir.path().join("report"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(first.wait_count(20, std::time::Duration::from_secs(30)), "no data before the restart");
    broker.kill();
    broker.up();
    let second = Subscriber::start(port, &filter);
    let enough = second.wait_count(40, std::time::Duration::from_secs(60));
    crate::common::sigterm(&sim);
    let _ = sim.wait();
    assert!(enough, "no data after the restart");
    // The second host joined after the restart: what it saw is checked on its own.
    let got = second.wait_for(40);
    let lines: Vec<String> = got
        .iter()
        .map(|(t, p)| format!("{t} {}", p.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        .collect();
    let file = dir.path().join("after.txt");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = output_within(
        python().args([HOST, "--check"]).arg(&file).stdout(Stdio::piped()).spawn().unwrap(),
        120,
    );
    let s = summary(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(s["violations"], serde_json::json!([]), "{s}");
    for node in ["line0", "line1"] {
        assert_eq!(s["nodes"][node]["bd_seq"], 1, "{node} born again with bdSeq 1: {s}");
        assert_eq!(s["nodes"][node]["births"], 1, "{s}");
        // The NDEATH it sent before its DISCONNECT at the end carries the same bdSeq.
        assert_eq!(s["nodes"][node]["ndeath_bd_seq"], 1, "{s}");
    }
}

/// Under gRPC control with `--cores 3`, a Sparkplug device lives on its edge node's shard:
/// a stop by id finds every device once (its DDEATH, counted once; an unknown id is reported
/// once), a SpawnDevices with `format = "sparkplug_b"` in `behavior_params` births the device
/// under its node (a known one and a new one), and bad Sparkplug keys are INVALID_ARGUMENT.
#[tokio::test(flavor = "current_thread")]
async fn grpc_stops_and_spawns_sparkplug_devices_on_their_edge_nodes_shard() {
    use crate::common::Running;
    use crate::grpc_common::{obj, objv, spec, text};
    use iot_sim::control::proto::{
        self, device_runtime_service_client::DeviceRuntimeServiceClient, device_selector::Selector,
    };
    let dir = tempfile::tempdir().unwrap();
    let group = unique("spbgrpc");
    let cfg = fleet(dir.path(), &group, 2, 4, "seed = 3", "");
    let sub = Subscriber::start(1883, &format!("spBv1.0/{group}/#"));
    let mut server = Running::with_config("serve", &cfg, None, &["--cores", "3"]);
    let mut c = DeviceRuntimeServiceClient::connect(server.url()).await.unwrap();
    // Every device of line0 born: their ids from the DBIRTH topics.
    let births = format!("spBv1.0/{group}/DBIRTH/line0/");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ids = loop {
        let ids: Vec<String> = sub
            .topics()
            .iter()
            .filter_map(|t| t.strip_prefix(&births).map(str::to_string))
            .collect();
        if ids.len() == 4 {
            break ids;
        }
        assert!(std::time::Instant::now() < end, "line0 not born: {:?}", sub.topics());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let by_ids = |ids: Vec<String>| {
        Some(proto::DeviceSelector {
            selector: Some(Selector::DeviceIds(proto::DeviceIdList { ids })),
        })
    };
    let mut asked = ids.clone();
    asked.push("nobody".into());
    let r = c
        .stop_devices(proto::StopDevicesRequest { selector: by_ids(asked), graceful: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stopped, 4, "{r:?}");
    assert_eq!(r.failed_device_ids, ["nobody"], "{r:?}");
    for id in &ids {
        let death = format!("spBv1.0/{group}/DDEATH/line0/{id}");
        sub.wait_topic(&death, 30).unwrap_or_else(|t| panic!("no {death}: {t:?}"));
    }
    // Spawned Sparkplug devices: under a fleet node (line1) and under a new one (line9).
    let spb = |id: &str, line: &str, sparkplug: prost_types::Value| {
        let mut s = spec(id, "press", &[("line", line)], 200, "mqtt");
        let fields = s.behavior_params.take().unwrap().fields["fields"].clone();
        s.behavior_params = Some(obj(vec![
            ("fields", fields),
            ("format", text("sparkplug_b")),
            ("sparkplug", sparkplug),
        ]));
        s
    };
    let keys = || objv(vec![("group_id", text(&group)), ("edge_node", text("{labels.line}"))]);
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest {
            specs: vec![spb("extra-1", "line1", keys()), spb("extra-9", "line9", keys())],
            scenario_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 2, "{r:?}");
    for topic in [
        format!("spBv1.0/{group}/DBIRTH/line1/extra-1"),
        format!("spBv1.0/{group}/NBIRTH/line9"),
        format!("spBv1.0/{group}/DBIRTH/line9/extra-9"),
    ] {
        sub.wait_topic(&topic, 30).unwrap_or_else(|t| panic!("no {topic}: {t:?}"));
    }
    let topics = sub.topics();
    let at = |t: String| topics.iter().position(|x| *x == t).unwrap();
    assert!(
        at(format!("spBv1.0/{group}/NBIRTH/line9"))
            < at(format!("spBv1.0/{group}/DBIRTH/line9/extra-9")),
        "{topics:?}"
    );
    let r = c
        .stop_devices(proto::StopDevicesRequest {
            selector: by_ids(vec!["extra-1".into(), "extra-9".into()]),
            graceful: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.stopped, r.failed_device_ids.len()), (2, 0), "{r:?}");
    let death = format!("spBv1.0/{group}/DDEATH/line1/extra-1");
    sub.wait_topic(&death, 30).unwrap_or_else(|t| panic!("no {death}: {t:?}"));
    // Bad Sparkplug keys: INVALID_ARGUMENT with the reason.
    let bad = objv(vec![("group_id", text("a/b")), ("edge_node", text("{labels.line}"))]);
    let e = c
        .spawn_devices(proto::SpawnDevicesRequest {
            specs: vec![spb("bad-1", "line1", bad)],
            scenario_id: String::new(),
        })
        .await;
    let text = match e {
        Err(e) => format!("{:?} {}", e.code(), e.message()),
        Ok(r) => format!("{:?}", r.into_inner()),
    };
    assert!(text.contains("group_id") && text.contains("a/b"), "{text}");
    server.terminate();
}
