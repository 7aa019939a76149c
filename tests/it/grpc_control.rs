//! `iot-sim serve` driven over gRPC by the generated client: every RPC, bad requests, faults
//! seen in the telemetry stream.

use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use proto::device_selector::Selector;
use tonic::Code;

use crate::common::Running;
use crate::grpc_common;

use grpc_common::{labels, num, obj, objv, text};

fn serve() -> Running {
    Running::grpc(&["serve", "--cores", "2", "--grpc", "127.0.0.1:0", "--seed", "7", "--quiet"])
}

fn spec(id: &str, group: &str, interval_ms: i32) -> proto::DeviceSpec {
    proto::DeviceSpec {
        device_id: id.into(),
        device_type: "thermo".into(),
        labels: [("group".to_string(), group.to_string())].into_iter().collect(),
        telemetry_interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: interval_ms * 1_000_000,
        }),
        behavior_params: Some(obj(vec![(
            "fields",
            objv(vec![(
                "temperature",
                objv(vec![("type", text("gaussian")), ("mean", num(22.0)), ("stddev", num(1.0))]),
            )]),
        )])),
        protocol: "null".into(),
        topic_template: String::new(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_rpc_answers_and_bad_requests_get_invalid_argument() {
    let server = serve();
    let mut c = DeviceRuntimeServiceClient::connect(server.url()).await.unwrap();

    // Spawn: 3 in group a, 2 in group b, a duplicate and two invalid specs.
    let mut specs: Vec<_> = (0..3).map(|i| spec(&format!("a-{i}"), "a", 100)).collect();
    specs.extend((0..2).map(|i| spec(&format!("b-{i}"), "b", 100)));
    specs.push(spec("a-0", "a", 100));
    specs.push(spec("zero", "a", 0));
    let mut ragged = spec("ragged", "a", 100);
    ragged.behavior_params = Some(obj(vec![(
        "fields",
        objv(vec![(
            "s",
            objv(vec![
                ("type", text("markov")),
                (
                    "states",
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
                            values: vec![text("x"), text("y")],
                        })),
                    },
                ),
                (
                    "transition_matrix",
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
                            values: vec![prost_types::Value {
                                kind: Some(prost_types::value::Kind::ListValue(
                                    prost_types::ListValue { values: vec![num(1.0)] },
                                )),
                            }],
                        })),
                    },
                ),
            ]),
        )]),
    )]));
    specs.push(ragged);
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 5, "{r:?}");
    assert_eq!(r.failed_device_ids, vec!["a-0", "ragged", "zero"]);
    assert_eq!(r.failure_reasons["a-0"], "device \"a-0\" already exists");
    assert!(r.failure_reasons["zero"].contains("telemetry_interval"), "{r:?}");
    assert!(r.failure_reasons["ragged"].contains("transition_matrix"), "{r:?}");

    let e = c.spawn_devices(proto::SpawnDevicesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("specs must not be empty"));

    // Status: all, then by label.
    let s = c.get_fleet_status(proto::GetFleetStatusRequest::default()).await.unwrap().into_inner();
    assert_eq!(s.total_devices, 5);
    assert_eq!(s.by_type["thermo"], 5);
    assert_eq!(s.devices.len(), 5);
    let s = c
        .get_fleet_status(proto::GetFleetStatusRequest {
            selector: labels("group in (b)"),
            counts_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.total_devices, 2);
    assert!(s.devices.iter().all(|d| d.labels["group"] == "b"));

    // A selector syntax error names the position.
    let e = c
        .stop_devices(proto::StopDevicesRequest { selector: labels("group in (a"), graceful: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("position 11"), "{}", e.message());

    // Faults: bad parameters are refused.
    for (t, params) in [
        (proto::FaultType::Unspecified, vec![]),
        (proto::FaultType::DataCorruption, vec![("corruption_rate", num(1.5))]),
        (proto::FaultType::DataCorruption, vec![("mode", text("melt"))]),
        (proto::FaultType::LatencySpike, vec![("latency_ms", num(-5.0))]),
        (proto::FaultType::BatteryDrain, vec![("drain_multiplier", num(-1.0))]),
    ] {
        let e = c
            .inject_fault(proto::InjectFaultRequest {
                selector: labels("group=a"),
                fault_type: t as i32,
                duration: None,
                parameters: Some(obj(params)),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{t:?}: {}", e.message());
        assert!(!e.message().is_empty());
    }
    let e = c
        .stream_telemetry(proto::StreamTelemetryRequest {
            selector: None,
            batch_size: 10,
            flush_interval: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // DATA_CORRUPTION (zero, rate 1) on group a: every streamed point of group a is 0, group b
    // untouched; the label selector filters the stream.
    c.inject_fault(proto::InjectFaultRequest {
        selector: labels("group=a"),
        fault_type: proto::FaultType::DataCorruption as i32,
        duration: None,
        parameters: Some(obj(vec![("corruption_rate", num(1.0)), ("mode", text("zero"))])),
    })
    .await
    .unwrap();
    let mut stream = c
        .stream_telemetry(proto::StreamTelemetryRequest {
            selector: labels("group=a"),
            batch_size: 5,
            flush_interval: Some(prost_types::Duration { seconds: 0, nanos: 100_000_000 }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut points = vec![];
    while points.len() < 12 {
        let b = stream.message().await.unwrap().expect("stream stays open");
        assert!(b.sequence_number >= 1);
        points.extend(b.points);
    }
    drop(stream);
    for p in &points {
        assert!(p.device_id.starts_with("a-"), "{p:?}");
        assert_eq!(p.tags["group"], "a");
        assert_eq!(p.value, Some(proto::telemetry_point::Value::DoubleValue(0.0)), "{p:?}");
    }
    let mut stream = c
        .stream_telemetry(proto::StreamTelemetryRequest {
            selector: labels("group=b"),
            batch_size: 4,
            flush_interval: None,
        })
        .await
        .unwrap()
        .into_inner();
    let b = stream.message().await.unwrap().unwrap();
    assert!(b.points.iter().all(|p| p.device_id.starts_with("b-")
        && p.value != Some(proto::telemetry_point::Value::DoubleValue(0.0))));
    drop(stream);

    // Clear, pause/resume, update behaviour, runtime status.
    let cleared = c
        .clear_faults(proto::ClearFaultsRequest { selector: labels("group=a"), fault_type: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.cleared, 3);
    let p = c
        .pause_devices(proto::PauseDevicesRequest { selector: labels("group=b") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.affected, 2);
    let s = c.get_fleet_status(proto::GetFleetStatusRequest::default()).await.unwrap().into_inner();
    assert_eq!(s.by_state["DEVICE_STATE_PAUSED"], 2);
    let p = c
        .resume_devices(proto::ResumeDevicesRequest { selector: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.affected, 2);
    let e = c
        .update_device_behavior(proto::UpdateDeviceBehaviorRequest {
            selector: None,
            behavior_params: Some(obj(vec![("fields", text("temperature"))])),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    c.update_device_behavior(proto::UpdateDeviceBehaviorRequest {
        selector: labels("group=b"),
        behavior_params: Some(obj(vec![(
            "fields",
            objv(vec![("temperature", objv(vec![("type", text("static")), ("value", num(42.0))]))]),
        )])),
    })
    .await
    .unwrap();
    let mut stream = c
        .stream_telemetry(proto::StreamTelemetryRequest {
            selector: labels("group=b"),
            batch_size: 4,
            flush_interval: None,
        })
        .await
        .unwrap()
        .into_inner();
    let b = stream.message().await.unwrap().unwrap();
    assert!(
        b.points.iter().all(|p| p.value == Some(proto::telemetry_point::Value::DoubleValue(42.0))),
        "{b:?}"
    );
    drop(stream);
    let rs = c.get_runtime_status(()).await.unwrap().into_inner();
    assert_eq!(rs.active_devices, 5);
    assert_eq!(rs.shards, 2);
    assert!(rs.goroutine_count >= 3);
    assert!(rs.memory_bytes > 0);

    // Stop by ids (one unknown) and by label; the server keeps serving throughout.
    let st = c
        .stop_devices(proto::StopDevicesRequest {
            selector: Some(proto::DeviceSelector {
                selector: Some(Selector::DeviceIds(proto::DeviceIdList {
                    ids: vec!["a-0".into(), "nope".into()],
                })),
            }),
            graceful: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.stopped, st.failed_device_ids.clone()), (1, vec!["nope".to_string()]));
    let st = c
        .stop_devices(proto::StopDevicesRequest { selector: labels("group=a"), graceful: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.stopped, 2);
    let st = c
        .stop_devices(proto::StopDevicesRequest { selector: None, graceful: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.stopped, 2);
    let s = c.get_fleet_status(proto::GetFleetStatusRequest::default()).await.unwrap().into_inner();
    assert_eq!(s.total_devices, 0);
}
