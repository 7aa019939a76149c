//! DISCONNECT on per-device MQTT sessions, over gRPC against a private Mosquitto: `abrupt`
//! closes the socket (the broker publishes the device's will), `graceful` sends DISCONNECT (no
//! will), `storm` drops every selected session at once and lets them straight back; what the
//! devices produce meanwhile is queued and delivered after the reconnect.

use crate::common;
use crate::common::Running;
use crate::grpc_common;

use common::mqtt::{Broker, Subscriber};
use common::{free_port, unique};
use grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A private anonymous Mosquitto on a free port, in its own (broker-readable) folder, and a
/// unique topic root.
fn private_broker(tag: &str) -> (tempfile::TempDir, u16, Broker, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    (dir, port, broker, unique(tag))
}

/// How many times the broker logged a connection of client `id`.
fn connections(broker: &Broker, id: &str) -> usize {
    broker.log().matches(&format!(" as {id} ")).count()
}

/// Whether the broker logged a PUBLISH from client `id` after its latest connection (a session
/// publishes only once it has its CONNACK).
fn published_since_connect(broker: &Broker, id: &str) -> bool {
    let log = broker.log();
    log.rfind(&format!(" as {id} "))
        .is_some_and(|at| log[at..].contains(&format!("Received PUBLISH from {id} ")))
}

/// A realtime fleet of `count` per-device MQTT sessions (profile `probe`, topic
/// `ROOT/{device_id}/telemetry`, one field `t`) on the broker at `port`: `per_device` is the
/// body of `[sink.mqtt.per_device]`, `field` the body of the field's table.
fn session_fleet(
    port: u16,
    root: &str,
    per_device: &str,
    count: u32,
    interval: &str,
    field: &str,
) -> String {
    format!(
        r#"
[run]
seed = 9
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
qos = 1
backoff_initial = "50ms"
backoff_max = "200ms"

[sink.mqtt.per_device]
{per_device}

[[fleet]]
profile = "probe"
count = {count}

[profiles.probe]
protocol = "mqtt"
connection = "per_device"
topic = "{root}/{{device_id}}/telemetry"
interval = "{interval}"
[profiles.probe.fields.t]
{field}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_fires_the_will_graceful_does_not_and_a_storm_drops_all_then_all_return() {
    let (dir, port, broker, root) = private_broker("faults");
    let cfg = dir.path().join("fleet.toml");
    let per_device = format!(
        "will_topic = \"{root}/{{device_id}}/status\"\nwill_payload = \"{{device_id}} lost\"\nwill_qos = 1"
    );
    let field = "type = \"gaussian\"\nmean = 20\nstddev = 1";
    std::fs::write(&cfg, session_fleet(port, &root, &per_device, 3, "200ms", field)).unwrap();
    let wills = Subscriber::start(port, &format!("{root}/+/status"));
    let report_dir = dir.path().join("report");
    let mut rt = Running::with_config("run", &cfg, Some(&report_dir), &[]);
    let ids = ["probe-0000", "probe-0001", "probe-0002"];
    wait_until(30, "every session connected", || {
        ids.iter().all(|id| connections(&broker, id) == 1)
    })
    .await;
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    c.inject_fault(disconnect(&ids[..1], "abrupt", 2)).await.unwrap();
    c.inject_fault(disconnect(&ids[1..2], "graceful", 2)).await.unwrap();
    // Both are held down for the fault's 2 s, then reconnect.
    wait_until(30, "both sessions back", || {
        connections(&broker, ids[0]) == 2 && connections(&broker, ids[1]) == 2
    })
    .await;
    assert_eq!(connections(&broker, ids[2]), 1, "an untouched device kept its session");
    // A bad mode is refused with the reason.
    let e = c.inject_fault(disconnect(&ids[..1], "politely", 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("parameters.mode: unknown mode \"politely\""), "{e}");
    // The storm drops every selected session at the same moment; they come straight back.
    c.inject_fault(disconnect(&ids, "storm", 1)).await.unwrap();
    wait_until(30, "every session back after the storm", || {
        connections(&broker, ids[0]) == 3
            && connections(&broker, ids[1]) == 3
            && connections(&broker, ids[2]) == 2
    })
    .await;
    // Each device took its CONNACK (it counts the reconnect then) and publishes again.
    wait_until(30, "every session publishing after the storm", || {
        ids.iter().all(|id| published_since_connect(&broker, id))
    })
    .await;
    assert!(rt.terminate().success());
    let got = wills.wait_for(4);
    let mut fired: Vec<String> =
        got.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).collect();
    fired.sort();
    // Abrupt: probe-0000's will; graceful: none for probe-0001; storm: all three.
    assert_eq!(
        fired,
        vec!["probe-0000 lost", "probe-0000 lost", "probe-0001 lost", "probe-0002 lost"],
        "wills the broker published"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_dropped_abrupt"], 4, "{ev}");
    assert_eq!(ev["mqtt.session_dropped_graceful"], 1, "{ev}");
    assert_eq!(ev["mqtt.session_reconnected"], 5, "{ev}");
    // What the devices produced while down was queued and delivered: nothing lost.
    let row = &r["runs"][0];
    assert_eq!(row["errors"], 0, "{row}");
    assert_eq!(row["dropped"], 0, "{row}");
    assert_eq!(row["messages"], row["published"], "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_sent_at_reaches_stream_events_the_log_and_metrics_with_its_round_trip() {
    let (dir, port, broker, root) = private_broker("rtt");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[run]
seed = 9
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
qos = 1

[sink.mqtt.per_device]
subscribe = "{root}/{{device_id}}/cmd"
subscribe_qos = 1
respond = "{root}/{{device_id}}/cmd/ack"

[[fleet]]
profile = "probe"
count = 2

[profiles.probe]
protocol = "mqtt"
connection = "per_device"
topic = "{root}/{{device_id}}/telemetry"
interval = "200ms"
[profiles.probe.fields.t]
type = "gaussian"
mean = 20
stddev = 1
"#
        ),
    )
    .unwrap();
    let acks = Subscriber::start(port, &format!("{root}/+/cmd/ack"));
    let mut rt = Running::with_config("run", &cfg, None, &["--admin", "127.0.0.1:0"]);
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    let mut events =
        c.stream_events(proto::StreamEventsRequest { selector: None }).await.unwrap().into_inner();
    let b = &broker;
    wait_until(30, "both command subscriptions", || {
        b.log().matches("Sending SUBACK to probe-").count() == 2
    })
    .await;
    // Sent "500 ms ago": the round trip the device measures is at least that.
    let sent_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64
            - 500;
    for i in 0..2 {
        let out = std::process::Command::new("mosquitto_pub")
            .args(["-p", &port.to_string(), "-q", "1", "-t"])
            .arg(format!("{root}/probe-{i:04}/cmd"))
            .arg("-m")
            .arg(format!("{{\"id\":\"c-{i}\",\"sent_at\":{sent_ms}}}"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // StreamEvents: a WARNING with cause "command" naming the device, topic and command id.
    let mut got = vec![];
    while got.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .expect("no command event within 30 s")
            .unwrap()
            .expect("stream ended");
        if e.metadata.get("cause").map(String::as_str) == Some("command") {
            assert_eq!(e.event_type, proto::DeviceEventType::Warning as i32, "{e:?}");
            assert_eq!(e.metadata["sink"], "mqtt", "{e:?}");
            assert_eq!(e.metadata["topic"], format!("{root}/{}/cmd", e.device_id), "{e:?}");
            got.push((e.device_id.clone(), e.metadata["command_id"].clone()));
        }
    }
    got.sort();
    assert_eq!(got, vec![("probe-0000".into(), "c-0".into()), ("probe-0001".into(), "c-1".into())]);
    acks.wait_for(2);
    // /metrics: counted per device type, with the round trip as a histogram.
    let admin = {
        let err = rt.stderr.clone();
        let mut addr = None;
        wait_until(10, "the admin address", || {
            addr = err.lock().unwrap().lines().find_map(|l| {
                l.split("admin: listening on http://").nth(1).map(|a| a.trim().to_string())
            });
            addr.is_some()
        })
        .await;
        addr.unwrap()
    };
    let labels = "{device_type=\"probe\",protocol=\"mqtt\"}";
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = tokio::task::spawn_blocking({
            let a = admin.clone();
            move || common::http_get(&a, "/metrics").1
        })
        .await
        .unwrap();
        if metrics.contains(&format!("iot_sim_commands_answered_total{labels} 2")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for want in [
        format!("iot_sim_commands_received_total{labels} 2"),
        format!("iot_sim_commands_answered_total{labels} 2"),
        format!("iot_sim_command_round_trip_seconds_count{labels} 2"),
        // Nothing under 250 ms: both were sent 500 ms before they arrived.
        "iot_sim_command_round_trip_seconds_bucket{le=\"0.25\",device_type=\"probe\",protocol=\"mqtt\"} 0".into(),
    ] {
        assert!(metrics.contains(&want), "{want:?} not in /metrics:\n{metrics}");
    }
    assert!(rt.terminate().success());
    // The event log has one line per command.
    let log = rt.stderr.lock().unwrap().clone();
    for i in 0..2 {
        let line =
            format!("mqtt command \"c-{i}\" received by probe-{i:04} on {root}/probe-{i:04}/cmd");
        assert!(log.contains(&line), "{line:?} not in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_down_by_disconnect_comes_back_when_the_fault_ends_not_at_its_next_tick() {
    let (dir, port, broker, root) = private_broker("fault-end");
    let cfg = dir.path().join("fleet.toml");
    // A device that publishes once a day: its next tick is far away.
    let per_device = format!(
        "subscribe = \"{root}/{{device_id}}/cmd\"\nsubscribe_qos = 1\nrespond = \"{root}/{{device_id}}/cmd/ack\""
    );
    let field = "type = \"static\"\nvalue = 1";
    std::fs::write(&cfg, session_fleet(port, &root, &per_device, 1, "24h", field)).unwrap();
    let acks = Subscriber::start(port, &format!("{root}/+/cmd/ack"));
    let mut rt = Running::with_config("run", &cfg, None, &[]);
    let id = "probe-0000";
    let subacks = |b: &Broker| b.log().matches(&format!("Sending SUBACK to {id}")).count();
    wait_until(30, "the session subscribed", || subacks(&broker) == 1).await;
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    c.inject_fault(disconnect(&[id], "abrupt", 2)).await.unwrap();
    // Down for the fault's 2 s, then back (connected and subscribed again) by itself.
    wait_until(30, "the session back after the fault", || subacks(&broker) == 2).await;
    assert_eq!(connections(&broker, id), 2);
    // A command sent now is answered.
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-p", &port.to_string(), "-q", "1", "-t"])
        .arg(format!("{root}/{id}/cmd"))
        .args(["-m", "{\"id\":\"after\"}"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let got = tokio::task::spawn_blocking(move || acks.wait_for(1)).await.unwrap();
    assert!(rt.terminate().success());
    assert_eq!(got.len(), 1, "{got:?}");
    let v: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(v["id"], "after", "{v}");
}
