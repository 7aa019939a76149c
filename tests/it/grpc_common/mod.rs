//! Helpers shared by the gRPC integration tests: device specs, selectors, protobuf values. The
//! process harness is `common::Running` (`Running::grpc`, `Running::with_config`).
#![allow(dead_code)]

use iot_sim::control::proto;
use proto::device_selector::Selector;
use std::time::{Duration, Instant};

pub fn num(v: f64) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(v)) }
}
pub fn text(s: &str) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s.into())) }
}
pub fn obj(pairs: Vec<(&str, prost_types::Value)>) -> prost_types::Struct {
    prost_types::Struct { fields: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
}
pub fn objv(pairs: Vec<(&str, prost_types::Value)>) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::StructValue(obj(pairs))) }
}

/// A device spec with one gaussian `temperature` field.
pub fn spec(
    id: &str,
    device_type: &str,
    labels: &[(&str, &str)],
    interval_ms: i32,
    protocol: &str,
) -> proto::DeviceSpec {
    proto::DeviceSpec {
        device_id: id.into(),
        device_type: device_type.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        telemetry_interval: Some(prost_types::Duration {
            seconds: (interval_ms / 1000) as i64,
            nanos: (interval_ms % 1000) * 1_000_000,
        }),
        behavior_params: Some(obj(vec![(
            "fields",
            objv(vec![(
                "temperature",
                objv(vec![("type", text("gaussian")), ("mean", num(22.0)), ("stddev", num(1.0))]),
            )]),
        )])),
        protocol: protocol.into(),
        topic_template: String::new(),
    }
}

pub fn labels(s: &str) -> Option<proto::DeviceSelector> {
    Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector(s.into())) })
}

/// Sim ms of a protobuf timestamp.
pub fn ms(t: &Option<prost_types::Timestamp>) -> u64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000
}

/// Waits (polling every 20 ms, at most `secs`) until `f` holds; panics with `what` otherwise.
pub async fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A DISCONNECT fault on the devices `ids` for `seconds`, in `mode` (`abrupt`, `graceful`,
/// `storm`).
pub fn disconnect(ids: &[&str], mode: &str, seconds: i64) -> proto::InjectFaultRequest {
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
