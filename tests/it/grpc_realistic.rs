//! Realistic-fleet behaviour over gRPC: spawning devices with availability and events, their
//! outages seen in StreamEvents, and UpdateDeviceBehavior changing (and refusing) it per
//! selector.

use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;

use crate::common::Running;
use crate::grpc_common;

use grpc_common::{labels, num, obj, objv, spec, text, wait_until};

fn availability(mtbf: &str, mttr: &str) -> prost_types::Value {
    objv(vec![("mtbf", text(mtbf)), ("mttr", text(mttr))])
}

#[tokio::test(flavor = "current_thread")]
async fn outages_are_device_events_and_updates_change_them_per_selector() {
    // 600 sim seconds per wall second: a 1-minute mtbf gives ~10 outages a second per device.
    let server = Running::grpc(&[
        "serve",
        "--cores",
        "2",
        "--grpc",
        "127.0.0.1:0",
        "--seed",
        "5",
        "--speed",
        "600",
        "--quiet",
    ]);
    let mut c = DeviceRuntimeServiceClient::connect(server.url()).await.unwrap();
    let seen: Arc<Mutex<Vec<proto::DeviceEvent>>> = Arc::default();
    let mut events =
        c.stream_events(proto::StreamEventsRequest { selector: None }).await.unwrap().into_inner();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(e)) = events.message().await {
            s.lock().unwrap().push(e);
        }
    });
    let specs: Vec<proto::DeviceSpec> = (0..8)
        .map(|i| {
            let mut s = spec(&format!("m-{i}"), "meter", &[("site", "x")], 1000, "null");
            let fields = s.behavior_params.take().unwrap().fields["fields"].clone();
            s.behavior_params = Some(obj(vec![
                ("fields", fields),
                ("availability", availability("1m", "1m")),
                ("events", objv(vec![("alarm", objv(vec![("rate_per_hour", num(60.0))]))])),
            ]));
            s
        })
        .collect();
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 8, "{r:?}");

    let outage =
        |e: &proto::DeviceEvent| e.metadata.get("cause").is_some_and(|c| c == "availability");
    wait_until(20, "offline and online events", || {
        let s = seen.lock().unwrap();
        let down = s
            .iter()
            .filter(|e| outage(e) && e.event_type == proto::DeviceEventType::Disconnected as i32)
            .count();
        let up = s
            .iter()
            .filter(|e| outage(e) && e.event_type == proto::DeviceEventType::Connected as i32)
            .count();
        down >= 8 && up >= 8
    })
    .await;
    {
        let s = seen.lock().unwrap();
        let e = s.iter().find(|e| outage(e)).unwrap();
        assert!(e.device_id.starts_with("m-"), "{e:?}");
        assert_eq!(e.metadata["device_type"], "meter");
    }

    // Bad values are refused with the key's path; the server keeps serving.
    let e = c
        .update_device_behavior(proto::UpdateDeviceBehaviorRequest {
            selector: labels("site=x"),
            behavior_params: Some(obj(vec![("availability", availability("0s", "1m"))])),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("availability.mtbf: must be greater than 0"), "{}", e.message());
    let e = c
        .update_device_behavior(proto::UpdateDeviceBehaviorRequest {
            selector: labels("site=x"),
            behavior_params: Some(obj(vec![(
                "events",
                objv(vec![("alarm", objv(vec![("rate_per_hour", num(-1.0))]))]),
            )])),
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("events.alarm.rate_per_hour: must be a non-negative number, got -1"),
        "{}",
        e.message()
    );

    // Fields that would leave a derived expression reading a string (or nothing): refused,
    // naming the field, and nothing applied (the telemetry below still has the gaussian field).
    // UpdateDeviceBehavior replaces every field, so the new set is checked on its own.
    let derived = |expr: &str| objv(vec![("type", text("derived")), ("expr", text(expr))]);
    for fields in [
        objv(vec![
            ("power", objv(vec![("type", text("static")), ("value", text("off"))])),
            ("current", derived("power * 1000 / 230")),
        ]),
        objv(vec![("current", derived("power * 1000 / 230"))]),
    ] {
        let e = c
            .update_device_behavior(proto::UpdateDeviceBehaviorRequest {
                selector: labels("site=x"),
                behavior_params: Some(obj(vec![("fields", fields)])),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("fields.current.expr"), "{}", e.message());
        assert!(e.message().contains("\"power\""), "{}", e.message());
    }

    // Turning availability off (keeping the fields): the outages stop.
    c.update_device_behavior(proto::UpdateDeviceBehaviorRequest {
        selector: labels("site=x"),
        behavior_params: Some(obj(vec![("availability", objv(vec![]))])),
    })
    .await
    .unwrap();
    // Events already on their way arrive within a moment; then 2 s (20 sim minutes, ~160
    // outages before the update) must bring none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = seen.lock().unwrap().iter().filter(|e| outage(e)).count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = seen.lock().unwrap().iter().filter(|e| outage(e)).count();
    assert_eq!(before, after, "outages continued after availability was turned off");
    // The devices still publish: their telemetry keeps the gaussian field.
    let mut stream = c
        .stream_telemetry(proto::StreamTelemetryRequest {
            selector: labels("site=x"),
            batch_size: 8,
            flush_interval: None,
        })
        .await
        .unwrap()
        .into_inner();
    let b = stream.message().await.unwrap().unwrap();
    assert!(b.points.iter().all(|p| p.metric_name == "temperature"), "{b:?}");
}
