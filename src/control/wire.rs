//! Domain answers of the shards and the control plane mapped to `simulator.v1` wire types.

use super::proto;
use crate::shard::command::{DeviceInfo, DeviceState};
use crate::shard::event::{DeviceEvent, EventKind, Point, PointValue};
use crate::sim::time::SimMs;

/// Sim time as a protobuf timestamp.
pub(crate) fn timestamp(t: SimMs) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (t / 1000) as i64, nanos: ((t % 1000) * 1_000_000) as i32 }
}

pub(crate) fn event_type(kind: EventKind) -> proto::DeviceEventType {
    use proto::DeviceEventType as T;
    match kind {
        EventKind::Spawned => T::Spawned,
        EventKind::Connected => T::Connected,
        EventKind::Disconnected => T::Disconnected,
        EventKind::Error => T::Error,
        EventKind::FaultInjected => T::FaultInjected,
        EventKind::Stopped => T::Stopped,
        EventKind::FaultCleared => T::FaultCleared,
        EventKind::Paused => T::Paused,
        EventKind::Resumed => T::Resumed,
        EventKind::Warning => T::Warning,
        EventKind::Offline => T::Disconnected,
        EventKind::Online => T::Connected,
        EventKind::ScenarioLog => T::ScenarioLog,
    }
}

pub(crate) fn event(e: &DeviceEvent) -> proto::DeviceEvent {
    proto::DeviceEvent {
        device_id: e.device_id.clone(),
        event_type: event_type(e.kind) as i32,
        message: e.message.clone(),
        timestamp: Some(timestamp(e.at_ms)),
        metadata: e.metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

pub(crate) fn point(p: Point) -> proto::TelemetryPoint {
    use proto::telemetry_point::Value;
    proto::TelemetryPoint {
        device_id: p.device_id.to_string(),
        metric_name: p.metric.to_string(),
        value: p.value.map(|v| match v {
            PointValue::Number(x) => Value::DoubleValue(x),
            PointValue::Text(s) => Value::StringValue(s),
            PointValue::Bool(b) => Value::BoolValue(b),
        }),
        timestamp: Some(timestamp(p.at_ms)),
        tags: p.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub(crate) fn state(s: DeviceState) -> proto::DeviceState {
    match s {
        DeviceState::Running => proto::DeviceState::Running,
        DeviceState::Paused => proto::DeviceState::Paused,
    }
}

/// The `by_state` key of FleetStatus: the enum value's name, as the original spells it.
pub(crate) fn state_name(s: DeviceState) -> &'static str {
    state(s).as_str_name()
}

pub(crate) fn device(d: DeviceInfo) -> proto::DeviceProfile {
    proto::DeviceProfile {
        device_id: d.id,
        device_type: d.device_type,
        labels: d.labels.into_iter().collect(),
        state: state(d.state) as i32,
    }
}
