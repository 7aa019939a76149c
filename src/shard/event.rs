//! What shards tell the outside world, in domain terms: device events (spawned, stopped, faults,
//! pauses, connection changes) and telemetry points for live streams. The control plane maps
//! them to `simulator.v1` wire types (`control/wire.rs`); shards never build wire types.

use crate::sim::generator::{GenSpec, Sample};
use crate::sim::profile::FieldSpec;
use crate::sim::time::SimMs;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Spawned,
    Connected,
    Disconnected,
    Error,
    FaultInjected,
    Stopped,
    FaultCleared,
    Paused,
    Resumed,
    /// The device went down (availability); sent as DISCONNECTED with `cause = availability`.
    Offline,
    /// The device came back up; sent as CONNECTED with `cause = availability`.
    Online,
    /// Something the runtime did differently from what was asked (a protocol fallback).
    Warning,
    /// A scenario's `log` step.
    ScenarioLog,
}

/// One device event (or a connection event of a pooled sink, with an empty `device_id`).
#[derive(Clone, Debug)]
pub(crate) struct DeviceEvent {
    pub device_id: String,
    pub kind: EventKind,
    pub message: String,
    /// Sim time of the event.
    pub at_ms: SimMs,
    pub metadata: Vec<(&'static str, String)>,
    /// The device's labels, for label-selector filtering by subscribers.
    pub labels: BTreeMap<String, String>,
}

/// Events are shared by every subscriber.
pub(crate) type Event = Arc<DeviceEvent>;

/// One field of one published message, for a telemetry stream. The text it names is shared:
/// the id by the points of one message, the metric name by every point of the field, the
/// labels by every point of the device's group (`shard::streams` keeps them), so that what an
/// unread stream holds is mostly the points themselves (issue 25: a point with its own copy of
/// the labels map cost ~3x what the stream budget was charged).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Point {
    pub device_id: Arc<str>,
    pub metric: Arc<str>,
    pub value: Option<PointValue>,
    pub at_ms: SimMs,
    pub labels: Arc<BTreeMap<String, String>>,
}

/// A point's value (the original's oneof rules: numbers, Markov states and string or boolean
/// statics; other statics have no value).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PointValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl PointValue {
    /// The value of one field's sample.
    pub fn of(field: &FieldSpec, sample: Sample) -> Option<PointValue> {
        match (sample, &field.generator) {
            (Sample::Number(v), _) => Some(PointValue::Number(v)),
            (Sample::State(i), GenSpec::Markov(m)) => Some(PointValue::Text(m.states[i].clone())),
            (Sample::Static, GenSpec::Static { json, .. }) => match serde_json::from_str(json) {
                Ok(serde_json::Value::String(s)) => Some(PointValue::Text(s)),
                Ok(serde_json::Value::Bool(b)) => Some(PointValue::Bool(b)),
                _ => None,
            },
            _ => None,
        }
    }
}
