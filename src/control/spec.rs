//! Validating `simulator.v1` requests into domain commands: selectors, device specs (through
//! the same profile compiler as fleet files, with the original runtime's defaults) and fault
//! specs. Every refusal is an `INVALID_ARGUMENT` with the reason.

use super::plane::ControlPlane;
use super::proto;
use crate::limits;
use crate::memcheck;
use crate::shard::command::{BehaviourUpdate, Selection, SpawnSpec};
use crate::sim::fault::{CorruptionMode, DisconnectMode, FaultKind, FaultSpec};
use crate::sim::profile::Profile;
use crate::sim::selector::LabelSelector;
use crate::walk::{Problems, Table, join};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// Default StreamTelemetry batch size and flush interval (the original's).
const DEFAULT_BATCH: usize = 100;
const DEFAULT_FLUSH: Duration = Duration::from_millis(500);
/// Default interval of a spec without one (the original's).
const DEFAULT_INTERVAL_MS: u64 = 5000;
/// Longest fault duration a request may ask for (0 = until cleared has no limit).
const MAX_FAULT_MS: u64 = crate::limits::MAX_FAULT_DURATION_S * 1000;
/// Delay of a LATENCY_SPIKE without `latency_ms`: none, as in the original.
const DEFAULT_SPIKE_MS: u64 = 0;

/// Turns a request's selector into a [`Selection`]. An unset selector means every device (as in
/// the original); a selector whose oneof is unset means every device for reads and none for
/// changes (also as in the original).
pub(crate) fn selection(
    sel: Option<proto::DeviceSelector>,
    empty_oneof_is_all: bool,
) -> Result<Selection, Status> {
    use proto::device_selector::Selector;
    let Some(sel) = sel else { return Ok(Selection::All) };
    match sel.selector {
        None if empty_oneof_is_all => Ok(Selection::All),
        None => Ok(Selection::Ids(vec![])),
        Some(Selector::DeviceIds(list)) => Ok(Selection::Ids(list.ids)),
        Some(Selector::LabelSelector(s)) if s.trim().is_empty() => Err(Status::invalid_argument(
            "label_selector is empty; leave the selector unset to select every device",
        )),
        Some(Selector::LabelSelector(s)) => LabelSelector::parse(&s)
            .map(Selection::Labels)
            .map_err(|e| Status::invalid_argument(e.to_string())),
    }
}

pub(crate) fn duration_ms(d: &prost_types::Duration) -> i128 {
    d.seconds as i128 * 1000 + (d.nanos / 1_000_000) as i128
}

/// A protobuf Struct value as TOML, so specs go through the same validation as config files.
fn to_toml(v: &prost_types::Value) -> Option<toml::Value> {
    use prost_types::value::Kind;
    Some(match v.kind.as_ref()? {
        Kind::NullValue(_) => return None,
        Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 9e15 => {
            toml::Value::Integer(*n as i64)
        }
        Kind::NumberValue(n) => toml::Value::Float(*n),
        Kind::StringValue(s) => toml::Value::String(s.clone()),
        Kind::BoolValue(b) => toml::Value::Boolean(*b),
        Kind::StructValue(s) => toml::Value::Table(struct_to_toml(s)),
        Kind::ListValue(l) => toml::Value::Array(l.values.iter().filter_map(to_toml).collect()),
    })
}

fn struct_to_toml(s: &prost_types::Struct) -> toml::Table {
    s.fields.iter().filter_map(|(k, v)| Some((k.clone(), to_toml(v)?))).collect()
}

/// Every parameter name the original orchestrator may send for any generator type.
const VOCABULARY: &[&str] = &[
    "mean",
    "stddev",
    "start",
    "drift",
    "volatility",
    "mean_reversion",
    "min",
    "max",
    "baseline",
    "amplitude",
    "peak_hour",
    "noise_stddev",
    "states",
    "transition_matrix",
    "initial_state",
    "value",
];

/// Applies the original runtime's defaults to one field table, and drops parameters of the
/// orchestrator's vocabulary that the field's type does not use (the original ignored them).
fn original_defaults(field: &mut toml::Table) {
    let kind = field.get("type").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let accepted: &[&str] = match kind.as_str() {
        "gaussian" => &["mean", "stddev"],
        "brownian" => &["start", "mean", "drift", "volatility", "mean_reversion", "min", "max"],
        "diurnal" => &["baseline", "amplitude", "peak_hour", "noise_stddev", "stddev"],
        "markov" => &["states", "transition_matrix", "initial_state"],
        "static" => &["value"],
        _ => return,
    };
    field.retain(|k, _| !VOCABULARY.contains(&k) || accepted.contains(&k));
    let num = |f: &toml::Table, k: &str| {
        f.get(k).and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
    };
    match kind.as_str() {
        "brownian" => {
            field.entry("start").or_insert(toml::Value::Float(0.0));
            field.entry("mean").or_insert(toml::Value::Float(0.0));
            // The original clamps only when max > min (both default to 0).
            if let (Some(lo), Some(hi)) = (num(field, "min"), num(field, "max"))
                && hi <= lo
            {
                field.remove("min");
                field.remove("max");
            }
        }
        "diurnal" => {
            field.entry("peak_hour").or_insert(toml::Value::Float(0.0));
            if field.contains_key("noise_stddev") && field.contains_key("stddev") {
                let drop =
                    if num(field, "noise_stddev") == Some(0.0) { "noise_stddev" } else { "stddev" };
                field.remove(drop);
            }
        }
        _ => {}
    }
}

/// The `fields` table of a behaviour Struct, with the original's defaults applied. Missing
/// params, or params without `fields`, mean no fields (the original spawns such a device; it
/// publishes an envelope with an empty `fields` object).
pub(crate) fn behaviour_fields(
    params: Option<&prost_types::Struct>,
) -> Result<toml::Table, String> {
    let Some(params) = params else { return Ok(toml::Table::new()) };
    let mut t = struct_to_toml(params);
    let mut fields = match t.remove("fields") {
        None => return Ok(toml::Table::new()),
        Some(toml::Value::Table(f)) => f,
        Some(_) => {
            return Err("behavior_params.fields: expected an object {NAME: {\"type\": ...}}".into());
        }
    };
    for (name, v) in fields.iter_mut() {
        match v {
            toml::Value::Table(f) => original_defaults(f),
            _ => return Err(format!("behavior_params.fields.{name}: expected an object")),
        }
    }
    Ok(fields)
}

/// The new fields and behaviour of an UpdateDeviceBehavior request, validated exactly like a
/// spawn's. Params with `fields` replace the fields (none: no fields, as in the original);
/// `report`, `events`, `availability` and `sleep` replace those (`{}` for availability or
/// sleep turns it off). Params with only behaviour keys keep the fields.
pub(crate) fn behaviour_update(
    params: Option<&prost_types::Struct>,
) -> Result<BehaviourUpdate, Status> {
    let fields = behaviour_fields(params).map_err(Status::invalid_argument)?;
    let top = params.map(struct_to_toml).unwrap_or_default();
    let keeps_fields = !top.contains_key("fields")
        && BEHAVIOUR_KEYS.iter().chain(&FORMAT_KEYS).any(|k| top.contains_key(*k));
    let mut p = Problems::default();
    // What the journal records: the fields as compiled (defaults applied), the behaviour keys
    // and the format keys.
    let mut source = toml::Table::new();
    if !keeps_fields {
        source.insert("fields".into(), toml::Value::Table(fields.clone()));
    }
    for k in BEHAVIOUR_KEYS.iter().chain(&FORMAT_KEYS) {
        if let Some(v) = top.get(*k) {
            source.insert((*k).into(), v.clone());
        }
    }
    let u =
        compile_update("", (!keeps_fields).then_some(fields), &top, &mut p).ok_or_else(|| {
            Status::invalid_argument(format!("invalid behavior_params: {}", problems_text(&p)))
        })?;
    Ok(BehaviourUpdate { source: Some(Arc::new(source)), ..u })
}

/// Compiles an update's fields (`None`: keep the device's) and its behaviour keys (`report`,
/// `events`, `availability`, `sleep` of `top`) through a throwaway profile, so they are
/// validated exactly like a spawn's; problems are recorded under `base` (the scenario step's
/// `update` table, or `""` for gRPC). The one front end of UpdateDeviceBehavior and a
/// scenario's `update`.
pub(crate) fn compile_update(
    base: &str,
    fields: Option<toml::Table>,
    top: &toml::Table,
    p: &mut Problems,
) -> Option<BehaviourUpdate> {
    let before = p.0.len();
    let mut refused = false;
    if top.contains_key("sparkplug")
        || top.get("format").and_then(|v| v.as_str()) == Some("sparkplug_b")
    {
        let k = if top.contains_key("sparkplug") { "sparkplug" } else { "format" };
        p.add(
            join(base, k),
            "an update cannot make devices Sparkplug B edge-node devices; spawn them with \
             format = \"sparkplug_b\"",
        );
        refused = true;
    }
    let mut t = toml::Table::new();
    // `[mqtt5]` is checked against protocol "mqtt" (it applies to MQTT devices only).
    let protocol = if top.contains_key("mqtt5") { "mqtt" } else { "null" };
    t.insert("protocol".into(), protocol.into());
    t.insert("interval".into(), "1ms".into());
    t.insert("fields".into(), toml::Value::Table(fields.clone().unwrap_or_default()));
    for k in BEHAVIOUR_KEYS {
        match top.get(k) {
            // An empty table turns the feature off.
            Some(toml::Value::Table(v)) if v.is_empty() && k != "events" => {}
            Some(v) => {
                t.insert(k.into(), v.clone());
            }
            None => {}
        }
    }
    // Format keys: a new payload format for the devices (checked against the update's fields).
    for k in FORMAT_KEYS {
        if let Some(v) = top.get(k) {
            t.insert(k.into(), v.clone());
        }
    }
    if let Some(why) = remote_path(top) {
        p.add(join(base, "proto_file"), why);
        return None;
    }
    if refused {
        return None;
    }
    let profile = crate::config::compile_profile_with("update", Table::new(base, &t), p, true)
        .filter(|_| p.0.len() == before)?;
    let given = |k: &str| top.contains_key(k);
    let b = profile.behaviour;
    Some(BehaviourUpdate {
        fields: profile.fields,
        correlated: profile.correlated,
        keep_fields: fields.is_none(),
        report: given("report").then_some(b.report),
        events: given("events").then_some(b.events),
        availability: given("availability").then_some(b.availability),
        sleep: given("sleep").then_some(b.sleep),
        format: FORMAT_KEYS.iter().any(|k| *k != "mqtt5" && given(k)).then_some(profile.format),
        mqtt5: given("mqtt5").then_some(profile.delivery.mqtt5),
        ..BehaviourUpdate::default()
    })
}

/// A `proto_file` from a request or a scenario step: relative to the runtime's working
/// directory, and inside it (no absolute path, no `..`), so a remote client cannot have the
/// runtime read files elsewhere. The reason it is refused, if it is.
fn remote_path(top: &toml::Table) -> Option<String> {
    let f = top.get("proto_file")?.as_str()?;
    let path = std::path::Path::new(f);
    let outside = path.is_absolute()
        || path.components().any(|c| matches!(c, std::path::Component::ParentDir));
    outside.then(|| {
        format!(
            "{f:?}: a proto_file in a request is relative to the runtime's working directory \
             and stays inside it (no absolute path, no \"..\")"
        )
    })
}

/// Top-level keys of `behavior_params` (and of a scenario's `update`) that change a device's
/// behaviour beyond its fields (the fleet file's profile keys of the same names).
pub(crate) const BEHAVIOUR_KEYS: [&str; 4] = ["report", "events", "availability", "sleep"];

/// Payload format keys a spawn's or an update's `behavior_params` (and a scenario's `update`)
/// may carry (the fleet file's profile keys of the same names; an extension of the
/// original's contract). `template_file` is left out: a remote request does not name files on
/// the runtime's machine; `proto_file` is taken relative to the runtime's working directory
/// and must stay inside it ([`remote_path`]).
/// `sparkplug` only in a spawn (an update cannot move devices onto edge nodes); `mqtt5` (the
/// `[profiles.X.mqtt5]` block) in both.
pub(crate) const FORMAT_KEYS: [&str; 11] = [
    "format",
    "id_key",
    "timestamp_key",
    "timestamp",
    "template",
    "content_type",
    "proto_file",
    "message",
    "audit",
    "sparkplug",
    "mqtt5",
];

pub(crate) fn problems_text(p: &Problems) -> String {
    p.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Checks a spec's id and labels against [`crate::limits`]: the reason it is refused, if it is.
pub(crate) fn check_identity(id: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
    limits::check_device_id(id)?;
    limits::check_label_count(labels.len())?;
    for (k, v) in labels {
        limits::check_label(k, v)?;
    }
    Ok(())
}

/// Validates one spec (everything but its id and labels) into a profile, and the profile table
/// it was compiled from. A protocol this runtime has no sink for goes to the fallback sink (see
/// [`ControlPlane::sink_for`]).
pub(crate) fn compile_spec(
    spec: &proto::DeviceSpec,
    plane: &ControlPlane,
) -> Result<(Profile, toml::Table), String> {
    // The type names the device's report row, metric labels and profile: it may not be empty
    // (`limits::check_name`, 1-128 bytes, checked with the profile below).
    if spec.device_type.is_empty() {
        return Err("device_type: must not be empty (1-128 bytes)".into());
    }
    let interval_ms = match &spec.telemetry_interval {
        None => DEFAULT_INTERVAL_MS as i128,
        Some(d) => duration_ms(d),
    };
    if interval_ms <= 0 {
        return Err(format!("telemetry_interval must be at least 1ms, got {interval_ms}ms"));
    }
    let asked = if spec.protocol.is_empty() { "console" } else { spec.protocol.as_str() };
    let (protocol, requested_protocol) = plane.sink_for(asked)?;
    let mut t = toml::Table::new();
    t.insert("protocol".into(), protocol.name().into());
    if !spec.topic_template.is_empty() {
        t.insert("topic".into(), spec.topic_template.clone().into());
    }
    t.insert("interval".into(), format!("{interval_ms}ms").into());
    t.insert("fields".into(), toml::Value::Table(behaviour_fields(spec.behavior_params.as_ref())?));
    // Realistic-fleet keys (`report`, `events`, `availability`, `sleep`) as in a fleet file.
    if let Some(params) = &spec.behavior_params {
        let top = struct_to_toml(params);
        for k in BEHAVIOUR_KEYS.iter().chain(&FORMAT_KEYS) {
            if let Some(v) = top.get(*k) {
                t.insert((*k).into(), v.clone());
            }
        }
    }
    if let Some(why) = spec.behavior_params.as_ref().and_then(|b| remote_path(&struct_to_toml(b))) {
        return Err(format!("invalid spec: proto_file: {why}"));
    }
    let mut p = Problems::default();
    let profile =
        crate::config::compile_profile_with(&spec.device_type, Table::new("", &t), &mut p, true);
    match profile {
        Some(prof) if p.is_empty() => Ok((Profile { requested_protocol, ..prof }, t)),
        _ => Err(format!("invalid spec: {}", problems_text(&p))),
    }
}

/// The specs of a spawn request that passed validation, and the ids refused with their reason.
pub(crate) type CompiledSpecs = (Vec<SpawnSpec>, Vec<(String, String)>);

/// Validates the specs of a spawn request. Specs that differ only in id and labels share one
/// compiled profile.
pub(crate) fn compile_specs(
    specs: Vec<proto::DeviceSpec>,
    plane: &ControlPlane,
) -> Result<CompiledSpecs, Status> {
    if specs.is_empty() {
        return Err(Status::invalid_argument("specs must not be empty"));
    }
    let mut c = Compiler::new(plane, specs.len());
    for mut spec in specs {
        let id = std::mem::take(&mut spec.device_id);
        let labels: BTreeMap<String, String> =
            std::mem::take(&mut spec.labels).into_iter().collect();
        let compiled = match check_identity(&id, &labels) {
            Err(reason) => Err(reason),
            Ok(()) => c.compile(&spec),
        };
        c.push(id, labels, compiled);
    }
    c.finish()
}

/// Validates the specs of a spawn request from its encoded body (`SpawnDevicesRequest`), one
/// spec at a time: a spec whose bytes (besides id and labels) were seen before takes their
/// compiled profile without being decoded at all, so a 100,000-spec request never exists as
/// 100,000 decoded `Struct`s (~250 MB for `bench/grpc_control.sh`'s, issue 25). Malformed
/// bytes are an `INVALID_ARGUMENT` naming the spec.
pub(crate) fn compile_encoded_specs(
    body: &[u8],
    plane: &ControlPlane,
) -> Result<CompiledSpecs, Status> {
    let specs = super::spawn_wire::request_specs(body)?;
    if specs.is_empty() {
        return Err(Status::invalid_argument("specs must not be empty"));
    }
    let mut c = Compiler::new(plane, specs.len());
    let mut key = Vec::with_capacity(256);
    let mut seen: HashMap<Vec<u8>, Compiled> = HashMap::new();
    for (i, bytes) in specs.into_iter().enumerate() {
        let bad =
            |e: String| Status::invalid_argument(format!("specs[{i}]: malformed DeviceSpec: {e}"));
        let (id, labels) = super::spawn_wire::id_labels_rest(bytes, &mut key).map_err(bad)?;
        let compiled = match check_identity(&id, &labels) {
            Err(reason) => Err(reason),
            Ok(()) => match seen.get(key.as_slice()) {
                Some(done) => done.clone(),
                None => {
                    let mut spec =
                        proto::DeviceSpec::decode(bytes).map_err(|e| bad(e.to_string()))?;
                    spec.device_id.clear();
                    spec.labels.clear();
                    let done = c.compile(&spec);
                    seen.insert(key.clone(), done.clone());
                    done
                }
            },
        };
        c.push(id, labels, compiled);
    }
    c.finish()
}

/// A spec compiled (or refused): its shared profile and the profile table it came from.
type Compiled = Result<(Arc<Profile>, Arc<toml::Table>), String>;

/// What `compile_specs` and `compile_encoded_specs` share: the compile cache of one request,
/// the per-device checks, the memory pre-check.
struct Compiler<'p> {
    plane: &'p ControlPlane,
    ok: Vec<SpawnSpec>,
    failed: Vec<(String, String)>,
    /// Compiled profiles by the canonical encoding of the spec without id and labels (prost
    /// writes `Struct` fields in key order), within this request; across requests see
    /// `ControlPlane::shared_profile`.
    cache: HashMap<Vec<u8>, Compiled>,
}

impl<'p> Compiler<'p> {
    fn new(plane: &'p ControlPlane, n: usize) -> Self {
        Compiler { plane, ok: Vec::with_capacity(n), failed: vec![], cache: HashMap::new() }
    }

    /// Compiles `spec`, whose id and labels are empty.
    fn compile(&mut self, spec: &proto::DeviceSpec) -> Compiled {
        let plane = self.plane;
        self.cache
            .entry(spec.encode_to_vec())
            .or_insert_with_key(|key| {
                compile_spec(spec, plane).map(|(p, t)| (plane.shared_profile(key, p), Arc::new(t)))
            })
            .clone()
    }

    fn push(&mut self, id: String, labels: BTreeMap<String, String>, compiled: Compiled) {
        let compiled = compiled.and_then(|(profile, source)| {
            match crate::config::missing_topic_label(&profile.topic, &labels) {
                Some(k) => Err(format!(
                    "the topic {:?} uses {{labels.{k}}}, which this device does not have",
                    profile.topic.source
                )),
                None => Ok((profile, source)),
            }
        });
        match compiled {
            Ok((profile, source)) => {
                self.ok.push(SpawnSpec { id, profile, labels, source: Some(source) })
            }
            Err(reason) => {
                // An id too long to echo is answered by its beginning.
                let id = if id.len() > limits::MAX_ID_BYTES { limits::shorten(&id) } else { id };
                self.failed.push((id, reason));
            }
        }
    }

    /// The memory pre-check, before the shards allocate anything.
    fn finish(self) -> Result<CompiledSpecs, Status> {
        let ok = self.ok;
        let mut profiles: Vec<&Arc<Profile>> = ok.iter().map(|s| &s.profile).collect();
        profiles.sort_by_key(|p| Arc::as_ptr(p));
        profiles.dedup_by_key(|p| Arc::as_ptr(p));
        let need = ok
            .iter()
            .map(|s| memcheck::devices_bytes(1, s.profile.slots))
            .chain(profiles.iter().map(|_| memcheck::PROFILE_BYTES * self.plane.shards() as u64))
            .fold(0u64, u64::saturating_add);
        let what = format!("spawning {} devices", ok.len());
        memcheck::check(need, &what).map_err(Status::resource_exhausted)?;
        Ok((ok, self.failed))
    }
}

/// The fault type a ClearFaults request names: `None` = every type.
pub(crate) fn clear_kind(fault_type: i32) -> Result<Option<i32>, Status> {
    match proto::FaultType::try_from(fault_type) {
        Ok(proto::FaultType::Unspecified) => Ok(None),
        Ok(t) => Ok(Some(t as i32)),
        Err(_) => Err(Status::invalid_argument(format!("unknown fault_type {fault_type}"))),
    }
}

fn number_param(params: &Option<prost_types::Struct>, key: &str) -> Result<Option<f64>, String> {
    use prost_types::value::Kind;
    match params.as_ref().and_then(|p| p.fields.get(key)).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::NumberValue(n)) if n.is_finite() => Ok(Some(*n)),
        Some(other) => Err(format!("parameters.{key}: must be a number, got {other:?}")),
    }
}

/// A fault's kind from its type (a `FaultType` number) and parameters: the checks gRPC's
/// `InjectFault` and a scenario's fault step share (a message names a parameter
/// `parameters.<key>`).
pub(crate) fn fault_kind(
    fault_type: i32,
    p: &Option<prost_types::Struct>,
) -> Result<(FaultKind, DisconnectMode), String> {
    use proto::FaultType as F;
    let bad = |m: String| Err(m);
    let mut disconnect = Default::default();
    let kind = match F::try_from(fault_type) {
        Ok(F::Unspecified) => return bad("fault_type must be specified".into()),
        Err(_) => return bad(format!("unknown fault_type {fault_type}")),
        Ok(F::Disconnect) => {
            disconnect = match p
                .as_ref()
                .and_then(|s| s.fields.get("mode"))
                .and_then(|v| v.kind.as_ref())
            {
                None => Default::default(),
                Some(prost_types::value::Kind::StringValue(m)) => {
                    match crate::sim::fault::DisconnectMode::parse(m) {
                        Some(mode) => mode,
                        None => {
                            return bad(format!(
                                "parameters.mode: unknown mode {m:?}; accepted: abrupt, graceful, storm"
                            ));
                        }
                    }
                }
                Some(_) => {
                    return bad(
                        "parameters.mode: must be a string (abrupt, graceful, storm)".into()
                    );
                }
            };
            FaultKind::Disconnect
        }
        Ok(F::LatencySpike) => match number_param(p, "latency_ms")? {
            Some(ms) if (0.0..=3_600_000.0).contains(&ms) => {
                FaultKind::LatencySpike { latency_ms: ms as u64 }
            }
            Some(ms) => {
                return bad(format!(
                    "parameters.latency_ms: must be between 0 and 3600000, got {ms}"
                ));
            }
            // The original accepts a spike without latency_ms and delays nothing: so does this
            // runtime (the fault is active, with 0 ms added).
            None => FaultKind::LatencySpike { latency_ms: DEFAULT_SPIKE_MS },
        },
        Ok(F::DataCorruption) => {
            let rate = number_param(p, "corruption_rate")?.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&rate) {
                return bad(format!(
                    "parameters.corruption_rate: must be between 0 and 1, got {rate}"
                ));
            }
            let mode = match p
                .as_ref()
                .and_then(|s| s.fields.get("mode"))
                .and_then(|v| v.kind.as_ref())
            {
                // The original zeroes payload bytes and streams clean values; a client that
                // names no mode gets that (a NaN would reach its REST API's SSE as bare `NaN`).
                None => CorruptionMode::Bytes,
                Some(prost_types::value::Kind::StringValue(m)) => match CorruptionMode::parse(m) {
                    Some(mode) => mode,
                    None => {
                        return bad(format!(
                            "parameters.mode: unknown mode {m:?}; accepted: nan, zero, spike, bytes"
                        ));
                    }
                },
                Some(_) => {
                    return bad(
                        "parameters.mode: must be a string (nan, zero, spike, bytes)".into()
                    );
                }
            };
            FaultKind::DataCorruption { rate, mode }
        }
        Ok(F::BatteryDrain) => {
            let m = number_param(p, "drain_multiplier")?.unwrap_or(10.0);
            if !(m > 0.0 && m <= 1e6) {
                return bad(format!(
                    "parameters.drain_multiplier: must be greater than 0 (at most 1e6), got {m}"
                ));
            }
            FaultKind::BatteryDrain { multiplier: m }
        }
        Ok(F::ClockDrift) => {
            let r = number_param(p, "drift_rate_ms_per_sec")?.unwrap_or(0.0);
            if r.abs() > 1e6 {
                return bad(format!(
                    "parameters.drift_rate_ms_per_sec: must be within ±1e6, got {r}"
                ));
            }
            FaultKind::ClockDrift { rate_ms_per_s: r }
        }
    };
    Ok((kind, disconnect))
}

/// Checks a fault request's type, parameters and duration, and builds what the shards apply.
pub(crate) fn fault_spec(req: &proto::InjectFaultRequest) -> Result<FaultSpec, Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    let (kind, disconnect) =
        fault_kind(req.fault_type, &req.parameters).map_err(Status::invalid_argument)?;
    let duration_ms = match &req.duration {
        None => 0,
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            return bad(format!(
                "duration: must not be negative, got {}s {}ns (0 or unset = until cleared)",
                d.seconds, d.nanos
            ));
        }
        Some(d) if d.nanos > 999_999_999 => {
            return bad(format!("duration.nanos: must be below 1e9, got {}", d.nanos));
        }
        Some(d) if duration_ms(d) > MAX_FAULT_MS as i128 => return bad(too_long(d.seconds)),
        Some(d) => duration_ms(d) as u64,
    };
    Ok(FaultSpec { kind, duration_ms, disconnect })
}

/// A scenario's fault step: its type (a `FaultType` number), parameters and duration, checked
/// like gRPC's `InjectFault`.
pub(crate) fn fault_of(
    fault_type: i32,
    params: &Option<prost_types::Struct>,
    duration_ms: u64,
) -> Result<FaultSpec, String> {
    let (kind, disconnect) = fault_kind(fault_type, params)?;
    if duration_ms > MAX_FAULT_MS {
        return Err(too_long((duration_ms / 1000) as i64));
    }
    Ok(FaultSpec { kind, duration_ms, disconnect })
}

fn too_long(seconds: i64) -> String {
    format!("duration: must be at most 365 days ({}s), got {seconds}s", MAX_FAULT_MS / 1000)
}

/// StreamTelemetry's batch size and flush interval, within their bounds.
pub(crate) fn stream_shape(
    req: &proto::StreamTelemetryRequest,
) -> Result<(usize, Duration), Status> {
    let batch_size = match req.batch_size {
        0 => DEFAULT_BATCH,
        n if n < 0 || n as usize > limits::MAX_STREAM_BATCH => {
            return Err(Status::invalid_argument(format!(
                "batch_size must be between 1 and {} (0 = {DEFAULT_BATCH}), got {n}",
                limits::MAX_STREAM_BATCH
            )));
        }
        n => n as usize,
    };
    let flush = match &req.flush_interval {
        None => DEFAULT_FLUSH,
        Some(d) => {
            let max = limits::MAX_FLUSH_INTERVAL_S as i64;
            let in_range = (0..1_000_000_000).contains(&d.nanos)
                && (0..=max).contains(&d.seconds)
                && (d.seconds, d.nanos) > (0, 0)
                && (d.seconds < max || d.nanos == 0);
            if !in_range {
                return Err(Status::invalid_argument(format!(
                    "flush_interval must be greater than 0 and at most {max}s (nanos within \
                     0..1e9), got {}s {}ns",
                    d.seconds, d.nanos
                )));
            }
            Duration::new(d.seconds as u64, d.nanos as u32).max(Duration::from_millis(1))
        }
    };
    Ok((batch_size, flush))
}
