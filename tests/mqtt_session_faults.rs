//! DISCONNECT on per-device MQTT sessions, over gRPC against a private Mosquitto: `abrupt`
//! closes the socket (the broker publishes the device's will), `graceful` sends DISCONNECT (no
//! will), `storm` drops every selected session at once and lets them straight back; what the
//! devices produce meanwhile is queued and delivered after the reconnect.

mod common;
mod grpc_common;

use common::mqtt::{Broker, Subscriber};
use common::{free_port, unique};
use grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use proto::device_selector::Selector;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn disconnect(ids: &[&str], mode: &str, seconds: i64) -> proto::InjectFaultRequest {
    proto::InjectFaultRequest {
        selector: Some(proto::DeviceSelector {
            selector: Some(Selector::DeviceIds(proto::DeviceIdList {
                ids: ids.iter().map(|s| s.to_string()).collect(),
            })),
        }),
        fault_type: proto::FaultType::Disconnect as i32,
        duration: Some(prost_types::Duration { seconds, nanos: 0 }),
        parameters: Some(obj(vec![("mode", text(mode))])),
    }
}

/// How many times the broker logged a connection of client `id`.
fn connections(broker: &Broker, id: &str) -> usize {
    broker.log().matches(&format!(" as {id} ")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_fires_the_will_graceful_does_not_and_a_storm_drops_all_then_all_return() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("faults");
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
backoff_initial = "50ms"
backoff_max = "200ms"

[sink.mqtt.per_device]
will_topic = "{root}/{{device_id}}/status"
will_payload = "{{device_id}} lost"
will_qos = 1

[[fleet]]
profile = "probe"
count = 3

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
    let wills = Subscriber::start(port, &format!("{root}/+/status"));
    let report_dir = dir.path().join("report");
    let mut rt = Runtime::with_config("run", &cfg, Some(&report_dir), &[]);
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
