//! `/readyz`, `/api/v1/devices` and the mutating routes. A JSON body is read into the
//! `simulator.v1` request it stands for (proto3 JSON field names) and then goes through the
//! very validation (`control/spec.rs`) and [`ControlPlane`] call the gRPC service uses: same
//! semantics, same refusals, one path.

use super::routes::{AdminState, ApiError, ApiJson};
use crate::control::plane::PlaneError;
use crate::control::proto;
use crate::control::spec;
use crate::measure::board::ShardFigures;
use crate::shard::command::{Action, DeviceState};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest page of `/api/v1/devices`.
pub const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 100;

impl From<PlaneError> for ApiError {
    fn from(e: PlaneError) -> ApiError {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        match s.code() {
            tonic::Code::Unavailable => ApiError::Unavailable(s.message().to_string()),
            _ => ApiError::BadRequest(s.message().to_string()),
        }
    }
}

/// `GET /readyz`: 200 once every shard runs and every network sink connection is up; 503 with
/// the reasons before.
pub async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    match readiness(&s.plane.published()) {
        Ok(()) => (StatusCode::OK, Json(json!({ "ready": true }))).into_response(),
        Err(waiting) => {
            ApiError::Unavailable(format!("not ready: {}", waiting.join("; "))).into_response()
        }
    }
}

/// What readiness still waits for, from the shards' published figures.
pub fn readiness(shards: &[Arc<ShardFigures>]) -> Result<(), Vec<String>> {
    let mut waiting = vec![];
    let mut sinks: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (i, f) in shards.iter().enumerate() {
        if !f.running {
            waiting.push(format!("shard {i} is not running yet"));
        }
        for k in &f.sinks {
            let e = sinks.entry(k.sink).or_default();
            e.0 += k.connected;
            e.1 += k.connections;
        }
    }
    for (sink, (up, all)) in &sinks {
        if up < all {
            waiting.push(format!("{sink}: {up} of {all} connections up"));
        }
    }
    if waiting.is_empty() { Ok(()) } else { Err(waiting) }
}

/// Query of `GET /api/v1/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesQuery {
    /// A label selector (`zone=b,kind in (x,y)`); empty or absent = every device.
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    /// The last id of the previous page.
    #[serde(default)]
    after: Option<String>,
}

/// `GET /api/v1/devices?selector=&limit=&after=`: one page of devices, sorted by id.
pub async fn devices(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<DevicesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit: must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let selector = q.selector.filter(|s| !s.trim().is_empty()).map(|s| proto::DeviceSelector {
        selector: Some(proto::device_selector::Selector::LabelSelector(s)),
    });
    let sel = spec::selection(selector, true)?;
    let after = q.after.map(|a| Arc::<str>::from(a.as_str()));
    let mut r = s.plane.scan(sel, Action::List { after, limit }).await?;
    r.devices.sort_by(|a, b| a.id.cmp(&b.id));
    r.devices.truncate(limit);
    let page = &r.devices;
    let next = (r.beyond as usize > page.len()).then(|| page.last().map(|d| d.id.clone()));
    let devices: Vec<Value> = page
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "type": d.device_type,
                "labels": d.labels,
                "state": match d.state { DeviceState::Running => "running", DeviceState::Paused => "paused" },
                "faults": d.faults.iter().map(|f| f.type_name()).collect::<Vec<_>>(),
                "messages_sent": d.messages,
            })
        })
        .collect();
    Ok(Json(json!({ "total": r.affected, "devices": devices, "next_after": next.flatten() })))
}

/// A selector as JSON: `{"device_ids": [...]}` or `{"label_selector": "..."}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorJson {
    #[serde(default)]
    device_ids: Option<Vec<String>>,
    #[serde(default)]
    label_selector: Option<String>,
}

impl SelectorJson {
    fn into_proto(self) -> Result<proto::DeviceSelector, ApiError> {
        use proto::device_selector::Selector;
        let selector = match (self.device_ids, self.label_selector) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "selector: give device_ids or label_selector, not both".into(),
                ));
            }
            (Some(ids), None) => Some(Selector::DeviceIds(proto::DeviceIdList { ids })),
            (None, Some(l)) => Some(Selector::LabelSelector(l)),
            (None, None) => None,
        };
        Ok(proto::DeviceSelector { selector })
    }
}

fn selector(sel: Option<SelectorJson>) -> Result<Option<proto::DeviceSelector>, ApiError> {
    sel.map(SelectorJson::into_proto).transpose()
}

/// Body of stop, pause and resume.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectBody {
    /// Absent = every device, as in the gRPC calls.
    #[serde(default)]
    selector: Option<SelectorJson>,
}

async fn select_action(
    s: &AdminState,
    body: SelectBody,
    action: Action,
) -> Result<crate::shard::command::ScanReply, ApiError> {
    let sel = spec::selection(selector(body.selector)?, false)?;
    Ok(s.plane.scan(sel, action).await?)
}

pub async fn stop(
    State(s): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<SelectBody>,
) -> Result<Json<Value>, ApiError> {
    let r = select_action(&s, body, Action::Stop).await?;
    Ok(Json(json!({ "stopped": r.affected, "failed_device_ids": r.not_found })))
}

pub async fn pause(
    State(s): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<SelectBody>,
) -> Result<Json<Value>, ApiError> {
    let r = select_action(&s, body, Action::Pause(true)).await?;
    Ok(Json(json!({ "affected": r.affected, "failed_device_ids": r.not_found })))
}

pub async fn resume(
    State(s): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<SelectBody>,
) -> Result<Json<Value>, ApiError> {
    let r = select_action(&s, body, Action::Pause(false)).await?;
    Ok(Json(json!({ "affected": r.affected, "failed_device_ids": r.not_found })))
}

/// One device spec, as `simulator.v1.DeviceSpec` in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecJson {
    device_id: String,
    #[serde(default)]
    device_type: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// A duration such as `"5s"` or `"250ms"`.
    #[serde(default)]
    telemetry_interval: Option<String>,
    #[serde(default)]
    behavior_params: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    topic_template: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnBody {
    specs: Vec<SpecJson>,
}

pub async fn spawn(
    State(s): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<SpawnBody>,
) -> Result<Json<Value>, ApiError> {
    let mut specs = Vec::with_capacity(body.specs.len());
    for (i, j) in body.specs.into_iter().enumerate() {
        let telemetry_interval = match j.telemetry_interval {
            None => None,
            Some(d) => Some(duration(&d).map_err(|e| {
                ApiError::BadRequest(format!("specs[{i}].telemetry_interval: {e}"))
            })?),
        };
        specs.push(proto::DeviceSpec {
            device_id: j.device_id,
            device_type: j.device_type,
            labels: j.labels.into_iter().collect(),
            telemetry_interval,
            behavior_params: j.behavior_params.map(to_struct),
            protocol: j.protocol,
            topic_template: j.topic_template,
        });
    }
    let (specs, mut failed) = spec::compile_specs(specs, &s.plane)?;
    let r = s.plane.spawn(specs).await?;
    failed.extend(r.failed);
    failed.sort();
    let reasons: BTreeMap<_, _> = failed.iter().cloned().collect();
    let ids: Vec<_> = failed.into_iter().map(|(id, _)| id).collect();
    Ok(Json(json!({ "spawned": r.spawned, "failed_device_ids": ids, "failure_reasons": reasons })))
}

/// Body of `POST /api/v1/faults`, as `InjectFaultRequest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultBody {
    #[serde(default)]
    selector: Option<SelectorJson>,
    /// `disconnect`, `FAULT_TYPE_DISCONNECT` or its number.
    fault_type: Value,
    /// A duration such as `"60s"`; absent or `"0s"` = until cleared.
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
}

/// Body of `DELETE /api/v1/faults`, as `ClearFaultsRequest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    #[serde(default)]
    selector: Option<SelectorJson>,
    /// Absent = every fault type.
    #[serde(default)]
    fault_type: Option<Value>,
}

pub async fn inject_fault(
    State(s): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<FaultBody>,
) -> Result<Json<Value>, ApiError> {
    let duration = match &body.duration {
        None => None,
        Some(d) => Some(duration(d).map_err(|e| ApiError::BadRequest(format!("duration: {e}")))?),
    };
    let req = proto::InjectFaultRequest {
        selector: selector(body.selector)?,
        fault_type: fault_type(&body.fault_type)?,
        duration,
        parameters: body.parameters.map(to_struct),
    };
    let spec = spec::fault_spec(&req)?;
    let sel = spec::selection(req.selector, false)?;
    let r = s.plane.scan(sel, Action::Fault(spec)).await?;
    Ok(Json(json!({ "affected": r.affected, "failed_device_ids": r.not_found })))
}

pub async fn clear_faults(
    State(s): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<ClearBody>,
) -> Result<Json<Value>, ApiError> {
    let number = match &body.fault_type {
        None => 0,
        Some(v) => fault_type(v)?,
    };
    let kind = spec::clear_kind(number)?;
    let sel = spec::selection(selector(body.selector)?, false)?;
    let r = s.plane.scan(sel, Action::ClearFaults(kind)).await?;
    Ok(Json(json!({ "cleared": r.affected })))
}

/// A fault type as a number, `FAULT_TYPE_DISCONNECT` or `disconnect`.
fn fault_type(v: &Value) -> Result<i32, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "fault_type: expected disconnect, latency_spike, data_corruption, battery_drain, clock_drift (or FAULT_TYPE_...), got {v}"
        ))
    };
    match v {
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(bad),
        Value::String(s) => {
            let upper = s.to_ascii_uppercase();
            let name = if upper.starts_with("FAULT_TYPE_") {
                upper
            } else {
                format!("FAULT_TYPE_{upper}")
            };
            proto::FaultType::from_str_name(&name).map(|t| t as i32).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// A duration string (`90s`, `1h30m`, `250ms`) as a protobuf Duration.
fn duration(s: &str) -> Result<prost_types::Duration, String> {
    let ms = crate::sim::time::parse_duration_ms(s)?;
    let seconds = i64::try_from(ms / 1000).map_err(|_| format!("too long: {s:?}"))?;
    Ok(prost_types::Duration { seconds, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

/// A JSON object as a protobuf Struct.
fn to_struct(m: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: m.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::board::SinkFigures;

    #[test]
    fn fault_types_are_accepted_by_short_name_wire_name_or_number() {
        assert_eq!(fault_type(&json!("disconnect")).unwrap(), 1);
        assert_eq!(fault_type(&json!("FAULT_TYPE_CLOCK_DRIFT")).unwrap(), 5);
        assert_eq!(fault_type(&json!(3)).unwrap(), 3);
        assert!(fault_type(&json!("meltdown")).unwrap_err().to_string().contains("meltdown"));
        assert!(fault_type(&json!([1])).is_err());
    }

    #[test]
    fn ready_once_every_shard_runs_and_every_connection_is_up() {
        let shard = |running, connected| {
            Arc::new(ShardFigures {
                running,
                sinks: vec![SinkFigures {
                    sink: "mqtt",
                    connected,
                    connections: 4,
                    queue_depth: 0,
                }],
                ..Default::default()
            })
        };
        assert_eq!(readiness(&[shard(true, 4), shard(true, 4)]), Ok(()));
        assert_eq!(
            readiness(&[shard(false, 0), shard(true, 4)]).unwrap_err(),
            vec!["shard 0 is not running yet".to_string(), "mqtt: 4 of 8 connections up".into()]
        );
    }

    #[test]
    fn durations_become_protobuf_durations() {
        let d = duration("1m30s").unwrap();
        assert_eq!((d.seconds, d.nanos), (90, 0));
        let d = duration("250ms").unwrap();
        assert_eq!((d.seconds, d.nanos), (0, 250_000_000));
        assert!(duration("soon").is_err());
    }
}
