//! Compatibility with the original runtime's clients: requests its orchestrator sends that
//! the original accepts, spoken over `simulator.v1` as its Python client does (labels carry a
//! `device_type`, `--type` selects with `device_type=T`).

use crate::common;
use crate::common::Running;
use crate::grpc_common;

use common::mqtt::Subscriber;
use grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

type Client = DeviceRuntimeServiceClient<Channel>;

/// `iot-sim serve` with `fleet` (TOML, may be empty) and extra flags; report in `dir/report`.
fn serve(dir: &std::path::Path, fleet: &str, extra: &[&str]) -> Running {
    let cfg = dir.join("fleet.toml");
    std::fs::write(&cfg, fleet).unwrap();
    Running::with_config("serve", &cfg, Some(&dir.join("report")), extra)
}

async fn spawn(c: &mut Client, specs: Vec<proto::DeviceSpec>) -> proto::SpawnDevicesResponse {
    c.spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner()
}

fn report(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report/report.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_without_a_sink_publishes_to_the_console_with_one_warning_per_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = serve(dir.path(), "[run]\nseed = 1\nspeed = 20.0\n", &["--cores", "2"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    let mut events =
        c.stream_events(proto::StreamEventsRequest { selector: None }).await.unwrap().into_inner();
    let mut specs: Vec<_> = (0..3)
        .map(|i| spec(&format!("m-{i}"), "meter", &[("device_type", "meter")], 1000, "mqtt"))
        .collect();
    specs.push(spec("z-0", "zig", &[("device_type", "zig")], 1000, "zigbee"));
    let r = spawn(&mut c, specs).await;
    assert_eq!(r.spawned, 4, "{r:?}");
    assert!(r.failed_device_ids.is_empty(), "{r:?}");
    // A second spawn on the same protocol: no second warning.
    let r = spawn(&mut c, vec![spec("m-9", "meter", &[], 1000, "mqtt")]).await;
    assert_eq!(r.spawned, 1, "{r:?}");

    let mut warnings = vec![];
    let mut spawned = 0;
    while spawned < 5 {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        match proto::DeviceEventType::try_from(e.event_type) {
            Ok(proto::DeviceEventType::Warning) => warnings.push(e),
            Ok(proto::DeviceEventType::Spawned) => spawned += 1,
            _ => {}
        }
    }
    let asked: Vec<&str> =
        warnings.iter().map(|w| w.metadata["requested_protocol"].as_str()).collect();
    assert_eq!(asked, ["mqtt", "zigbee"], "{warnings:?}");
    assert!(warnings.iter().all(|w| w.metadata["warning"] == "protocol_fallback"));
    assert!(warnings[0].message.contains("console"), "{}", warnings[0].message);

    let st = c.get_runtime_status(()).await.unwrap().into_inner();
    assert_eq!(st.fallback_devices.get("mqtt"), Some(&4), "{st:?}");
    assert_eq!(st.fallback_devices.get("zigbee"), Some(&1), "{st:?}");
    // Stopping fallback devices is counted too.
    let stopped = c
        .stop_devices(proto::StopDevicesRequest {
            selector: labels("device_type=zig"),
            graceful: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.stopped, 1);
    let st = c.get_runtime_status(()).await.unwrap().into_inner();
    assert_eq!(st.fallback_devices.get("zigbee"), None, "{st:?}");

    // Let them publish, then the report shows their rows as console rows that asked for mqtt.
    let mut sent = 0;
    for _ in 0..200 {
        sent = c.get_runtime_status(()).await.unwrap().into_inner().messages_sent_total;
        if sent >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent >= 20, "only {sent} messages");
    let exit = rt.terminate();
    assert!(exit.success(), "{exit:?}\n{}", rt.stderr.lock().unwrap());
    assert!(rt.stderr.lock().unwrap().contains("publish to the console sink"));
    let r = report(dir.path());
    let row = r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["device_type"] == "meter")
        .unwrap_or_else(|| panic!("no meter row: {r}"))
        .clone();
    assert_eq!(row["sink"], "console", "{row}");
    assert_eq!(row["requested_protocol"], "mqtt", "{row}");
    assert_eq!(row["devices"], 4, "{row}");
    assert!(row["messages"].as_u64().unwrap() > 0, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_protocols_keeps_refusing_a_protocol_without_a_sink() {
    let dir = tempfile::tempdir().unwrap();
    let _rt = serve(dir.path(), "", &["--cores", "2", "--strict-protocols"]);
    let mut c = Client::connect(_rt.url()).await.unwrap();
    let r = spawn(
        &mut c,
        vec![spec("m-0", "meter", &[], 1000, "mqtt"), spec("c-0", "c", &[], 1000, "console")],
    )
    .await;
    assert_eq!(r.spawned, 1, "{r:?}");
    assert_eq!(r.failed_device_ids, ["m-0"]);
    let why = &r.failure_reasons["m-0"];
    assert!(why.contains("[sink.mqtt]") && why.contains("--strict-protocols"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_with_empty_or_no_fields_publishes_an_envelope_with_no_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let fleet = format!("[run]\nseed = 1\nspeed = 20.0\n[sink.file]\npath = {:?}\n", out);
    let mut rt = serve(dir.path(), &fleet, &["--cores", "1"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    let mut empty = spec("e-0", "bare", &[], 1000, "file");
    empty.behavior_params = Some(obj(vec![("fields", objv(vec![]))]));
    let mut none = spec("n-0", "bare", &[], 1000, "file");
    none.behavior_params = None;
    let r = spawn(&mut c, vec![empty, none]).await;
    assert_eq!(r.spawned, 2, "{r:?}");
    let mut lines = vec![];
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines =
            std::fs::read_to_string(&out).unwrap_or_default().lines().map(String::from).collect();
        if lines.len() >= 4 {
            break;
        }
    }
    assert!(rt.terminate().success());
    let lines: Vec<String> =
        std::fs::read_to_string(&out).unwrap().lines().map(String::from).collect();
    assert!(lines.len() >= 4, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["payload"]["fields"], serde_json::json!({}), "{l}");
        assert_eq!(v["payload"]["device_type"], "bare");
    }
}

/// An empty `device_type` (the original keeps `""`) is refused per device with its reason, as
/// the Limits table says (1-128 bytes); the other specs of the request spawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_device_type_fails_that_device_and_spawns_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let rt = serve(dir.path(), "", &["--cores", "1"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    let r = spawn(
        &mut c,
        vec![spec("untyped-0", "", &[], 1000, "null"), spec("typed-0", "t", &[], 1000, "null")],
    )
    .await;
    assert_eq!(r.spawned, 1, "{r:?}");
    assert_eq!(r.failed_device_ids, ["untyped-0"], "{r:?}");
    assert!(r.failure_reasons["untyped-0"].contains("device_type: must not be empty"), "{r:?}");
    let st =
        c.get_fleet_status(proto::GetFleetStatusRequest::default()).await.unwrap().into_inner();
    let ids: Vec<(&str, &str)> =
        st.devices.iter().map(|d| (d.device_id.as_str(), d.device_type.as_str())).collect();
    assert_eq!(ids, [("typed-0", "t")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_types_are_selected_literally_where_the_original_would() {
    let dir = tempfile::tempdir().unwrap();
    let rt = serve(dir.path(), "", &["--cores", "2"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    // Each case: the literal device type, and a decoy the Kubernetes reading would select.
    let cases = [("a,b", "a"), ("=x", "x"), ("Acme Thermo/v2", "Acme"), ("k=v", "k")];
    let mut specs = vec![];
    for (i, (t, decoy)) in cases.iter().enumerate() {
        // As the original orchestrator does: a `device_type` label on every spec, and for the
        // first case a `b` label on the decoy, which `device_type=a,b` read as AND would select.
        specs.push(spec(&format!("t{i}"), t, &[("device_type", t)], 1000, "null"));
        specs.push(spec(
            &format!("d{i}"),
            decoy,
            &[("device_type", decoy), ("b", "1")],
            1000,
            "null",
        ));
    }
    assert_eq!(spawn(&mut c, specs).await.spawned, 8);
    for (i, (t, _)) in cases.iter().enumerate() {
        let sel = format!("device_type={t}");
        let st = c
            .get_fleet_status(proto::GetFleetStatusRequest {
                selector: labels(&sel),
                counts_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<&str> = st.devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, [format!("t{i}")], "{sel:?}");
        let stopped = c
            .stop_devices(proto::StopDevicesRequest { selector: labels(&sel), graceful: true })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stopped.stopped, 1, "{sel:?}");
    }
    let st =
        c.get_fleet_status(proto::GetFleetStatusRequest::default()).await.unwrap().into_inner();
    assert_eq!(st.total_devices, 4, "only the decoys are left: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_spike_without_latency_ms_is_accepted_and_a_negative_duration_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let rt = serve(dir.path(), "", &["--cores", "2"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    assert_eq!(spawn(&mut c, vec![spec("s-0", "s", &[("g", "1")], 1000, "null")]).await.spawned, 1);
    let fault = |t: proto::FaultType, d: Option<prost_types::Duration>| proto::InjectFaultRequest {
        selector: labels("g=1"),
        fault_type: t as i32,
        duration: d,
        parameters: None,
    };
    c.inject_fault(fault(proto::FaultType::LatencySpike, None)).await.unwrap();
    let st = c.get_runtime_status(()).await.unwrap().into_inner();
    assert_eq!(st.faults_active, 1);
    for (secs, nanos) in [(-5, 0), (0, -1), (i64::MIN, 0), (1, 1_000_000_000)] {
        let d = Some(prost_types::Duration { seconds: secs, nanos });
        let e = c.inject_fault(fault(proto::FaultType::Disconnect, d)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{secs}s {nanos}ns");
        assert!(e.message().contains("duration"), "{}", e.message());
    }
    let st = c.get_runtime_status(()).await.unwrap().into_inner();
    assert_eq!(st.faults_active, 1, "refused faults were not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_devices_spawned_into_a_file_fleet_open_and_start_the_mqtt_sink() {
    let root = common::unique("late-mqtt");
    let sub = Subscriber::start(1883, &format!("{root}/#"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let fleet = format!(
        r#"[run]
seed = 2
speed = 10.0

[sink.file]
path = {out:?}

[sink.mqtt]
url = "mqtt://127.0.0.1:1883"

[[fleet]]
profile = "f"
count = 2

[profiles.f]
protocol = "file"
interval = "1s"
[profiles.f.fields.x]
type = "static"
value = 1
"#
    );
    let mut rt = serve(dir.path(), &fleet, &["--cores", "1"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    let mut specs = vec![];
    for i in 0..3 {
        let mut s = spec(&format!("late-{i}"), "late", &[], 1000, "mqtt");
        s.topic_template = format!("{root}/{{device_id}}");
        specs.push(s);
    }
    assert_eq!(spawn(&mut c, specs).await.spawned, 3);
    let got = sub.wait_for(15);
    assert!(got.len() >= 15, "the broker delivered {} messages", got.len());
    assert!(got.iter().all(|(t, _)| t.starts_with(&format!("{root}/late-"))));
    assert!(rt.terminate().success());
    let r = report(dir.path());
    let row = r["runs"].as_array().unwrap().iter().find(|x| x["sink"] == "mqtt").unwrap().clone();
    assert!(row["messages"].as_u64().unwrap() >= 15, "{row}");
    assert_eq!(row["errors"], 0, "{row}");
}
