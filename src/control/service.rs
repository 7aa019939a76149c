//! The `simulator.v1.DeviceRuntimeService` server.
//!
//! Runs on its own small tokio runtime (thread `control`), never on a shard thread. Every RPC
//! is turned into [`ShardCommand`]s: id selections go to the shard that owns each id, label and
//! "all" selections to every shard, which each apply them to their own devices in parallel; the
//! replies are merged here. Specs are validated here, before any shard sees them.

use super::proto::{self, device_runtime_service_server as server};
use super::selector::LabelSelector;
use crate::config::walk::{Problems, Table};
use crate::shard::command::{
    Action, BehaviourUpdate, Event, ScanReply, Selection, ShardCommand, ShardControl,
    ShardCounters, SpawnReply, SpawnSpec, Subscription,
};
use crate::sim::fault::{CorruptionMode, FaultKind, FaultSpec};
use crate::sim::profile::Profile;
use crate::sim::seed;
use crossbeam_channel::{Sender, TrySendError};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Largest gRPC message accepted or sent: the original client sends every spec of a spawn in
/// one request (~400 B per device), and GetFleetStatus lists every device.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Capacity of each shard's command inbox.
const INBOX: usize = 1024;
/// Device events buffered for StreamEvents subscribers; a slower subscriber loses the oldest.
const EVENT_BUFFER: usize = 65_536;
/// Point batches (of up to 1024 points) buffered per telemetry stream before shards drop.
const STREAM_BUFFER: usize = 64;
/// Default StreamTelemetry batch size and flush interval (the original's).
const DEFAULT_BATCH: usize = 100;
const DEFAULT_FLUSH: Duration = Duration::from_millis(500);
/// How long a shutdown waits for open gRPC calls (streams) before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);
/// Default interval of a spec without one (the original's).
const DEFAULT_INTERVAL_MS: u64 = 5000;

/// What the control plane holds: the shards' inboxes, counters and the event fan-out.
/// The runtime's figures, per shard where they are counted per shard.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figures {
    pub devices: Vec<u64>,
    pub messages: Vec<u64>,
    pub errors: Vec<u64>,
    pub suppressed: Vec<u64>,
    pub faults_active: Vec<u64>,
    pub messages_per_second: f64,
    pub telemetry_points_dropped: u64,
    pub uptime_seconds: f64,
}

pub struct ControlPlane {
    inboxes: Vec<Sender<ShardCommand>>,
    counters: Vec<Arc<ShardCounters>>,
    events: broadcast::Sender<Event>,
    started: Instant,
    next_stream: AtomicU64,
    /// (instant, messages total, rate) for messages_per_second.
    rate: Mutex<(Instant, u64, f64)>,
    dropped_points: Arc<AtomicU64>,
    threads: usize,
}

impl ControlPlane {
    /// A control plane for `shards` shards, and the link each shard gets in its plan.
    pub fn new(shards: usize) -> (Arc<ControlPlane>, Vec<ShardControl>) {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut inboxes = vec![];
        let mut counters = vec![];
        let mut links = vec![];
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(INBOX);
            let c = Arc::new(ShardCounters::default());
            inboxes.push(tx);
            counters.push(c.clone());
            links.push(ShardControl { inbox: rx, events: events.clone(), counters: c });
        }
        let plane = ControlPlane {
            inboxes,
            counters,
            events,
            started: Instant::now(),
            next_stream: AtomicU64::new(1),
            rate: Mutex::new((Instant::now(), 0, 0.0)),
            dropped_points: Arc::new(AtomicU64::new(0)),
            threads: shards + 3,
        };
        (Arc::new(plane), links)
    }

    /// Largest tick lateness (µs) any shard saw since the last call; resets it.
    pub fn take_lateness_us_max(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.lateness_us_max.swap(0, Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    async fn send(&self, shard: usize, mut cmd: ShardCommand) -> Result<(), Status> {
        loop {
            match self.inboxes[shard].try_send(cmd) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(c)) => {
                    cmd = c;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(Status::unavailable(format!("shard {shard} has stopped")));
                }
            }
        }
    }

    /// Sends a selection command to the shards concerned and merges their replies.
    async fn scan(
        &self,
        selection: Selection,
        make: impl Fn() -> Action,
    ) -> Result<ScanReply, Status> {
        let n = self.inboxes.len();
        let mut parts: Vec<(usize, Arc<Selection>)> = vec![];
        match selection {
            Selection::Ids(ids) => {
                let mut per: Vec<Vec<String>> = vec![vec![]; n];
                for id in ids {
                    per[seed::shard_of(&id, n)].push(id);
                }
                for (i, ids) in per.into_iter().enumerate() {
                    if !ids.is_empty() {
                        parts.push((i, Arc::new(Selection::Ids(ids))));
                    }
                }
            }
            other => {
                let sel = Arc::new(other);
                parts.extend((0..n).map(|i| (i, sel.clone())));
            }
        }
        let mut waits = vec![];
        for (i, selection) in parts {
            let (reply, rx) = oneshot::channel();
            self.send(i, ShardCommand::Scan { selection, action: make(), reply }).await?;
            waits.push(rx);
        }
        let mut acc = ScanReply::default();
        for rx in waits {
            let r = rx.await.map_err(|_| Status::unavailable("a shard stopped before replying"))?;
            acc.affected += r.affected;
            acc.not_found.extend(r.not_found);
            for (k, v) in r.by_state {
                *acc.by_state.entry(k).or_default() += v;
            }
            for (k, v) in r.by_type {
                *acc.by_type.entry(k).or_default() += v;
            }
            acc.devices.extend(r.devices);
        }
        Ok(acc)
    }

    /// A snapshot of the runtime's figures, for the admin HTTP server (`/metrics`, `/status`).
    pub fn figures(&self) -> Figures {
        let per = |f: fn(&ShardCounters) -> &AtomicU64| -> Vec<u64> {
            self.counters.iter().map(|c| f(c).load(Ordering::Relaxed)).collect()
        };
        Figures {
            devices: per(|c| &c.devices),
            messages: per(|c| &c.messages),
            errors: per(|c| &c.errors),
            suppressed: per(|c| &c.suppressed),
            faults_active: per(|c| &c.faults_active),
            messages_per_second: self.messages_per_second(),
            telemetry_points_dropped: self.dropped_points.load(Ordering::Relaxed),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    fn messages_total(&self) -> u64 {
        self.counters.iter().map(|c| c.messages.load(Ordering::Relaxed)).sum()
    }

    fn messages_per_second(&self) -> f64 {
        let total = self.messages_total();
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let secs = r.0.elapsed().as_secs_f64();
        if secs >= 1.0 {
            r.2 = total.saturating_sub(r.1) as f64 / secs;
            *r = (Instant::now(), total, r.2);
        }
        r.2
    }
}

/// Turns a request's selector into a [`Selection`]. An unset selector means every device (as in
/// the original); a selector whose oneof is unset means every device for reads and none for
/// changes (also as in the original).
pub fn selection(
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

fn duration_ms(d: &prost_types::Duration) -> i128 {
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

/// The `fields` table of a behaviour Struct, with the original's defaults applied.
fn behaviour_fields(params: Option<&prost_types::Struct>) -> Result<toml::Table, String> {
    let Some(params) = params else {
        return Err(
            "behavior_params is missing: expected {\"fields\": {NAME: {\"type\": ...}}}".into()
        );
    };
    let mut t = struct_to_toml(params);
    let Some(toml::Value::Table(mut fields)) = t.remove("fields") else {
        return Err("behavior_params has no \"fields\" object: expected {\"fields\": {NAME: {\"type\": ...}}}".into());
    };
    for (name, v) in fields.iter_mut() {
        match v {
            toml::Value::Table(f) => original_defaults(f),
            _ => return Err(format!("behavior_params.fields.{name}: expected an object")),
        }
    }
    Ok(fields)
}

fn problems_text(p: &Problems) -> String {
    p.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Validates one spec (everything but its id and labels) into a profile.
fn compile_spec(spec: &proto::DeviceSpec) -> Result<Profile, String> {
    let interval_ms = match &spec.telemetry_interval {
        None => DEFAULT_INTERVAL_MS as i128,
        Some(d) => duration_ms(d),
    };
    if interval_ms <= 0 {
        return Err(format!("telemetry_interval must be at least 1ms, got {interval_ms}ms"));
    }
    let mut t = toml::Table::new();
    let protocol = if spec.protocol.is_empty() { "console" } else { spec.protocol.as_str() };
    t.insert("protocol".into(), protocol.into());
    if !spec.topic_template.is_empty() {
        t.insert("topic".into(), spec.topic_template.clone().into());
    }
    t.insert("interval".into(), format!("{interval_ms}ms").into());
    t.insert("fields".into(), toml::Value::Table(behaviour_fields(spec.behavior_params.as_ref())?));
    let name = if spec.device_type.is_empty() { "device" } else { spec.device_type.as_str() };
    let mut p = Problems::default();
    let profile = crate::config::compile_profile(name, Table::new("", &t), &mut p);
    match profile {
        Some(prof) if p.is_empty() => Ok(prof),
        _ => Err(format!("invalid spec: {}", problems_text(&p))),
    }
}

fn number_param(params: &Option<prost_types::Struct>, key: &str) -> Result<Option<f64>, Status> {
    use prost_types::value::Kind;
    match params.as_ref().and_then(|p| p.fields.get(key)).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::NumberValue(n)) if n.is_finite() => Ok(Some(*n)),
        Some(other) => Err(Status::invalid_argument(format!(
            "parameters.{key}: must be a number, got {other:?}"
        ))),
    }
}

/// Validates an InjectFault request's type and parameters.
pub fn fault_spec(req: &proto::InjectFaultRequest) -> Result<FaultSpec, Status> {
    use proto::FaultType as F;
    let p = &req.parameters;
    let bad = |m: String| Err(Status::invalid_argument(m));
    let kind = match F::try_from(req.fault_type) {
        Ok(F::Unspecified) => return bad("fault_type must be specified".into()),
        Err(_) => return bad(format!("unknown fault_type {}", req.fault_type)),
        Ok(F::Disconnect) => FaultKind::Disconnect,
        Ok(F::LatencySpike) => match number_param(p, "latency_ms")? {
            Some(ms) if (1.0..=3_600_000.0).contains(&ms) => {
                FaultKind::LatencySpike { latency_ms: ms as u64 }
            }
            Some(ms) => {
                return bad(format!(
                    "parameters.latency_ms: must be between 1 and 3600000, got {ms}"
                ));
            }
            None => {
                return bad(
                    "parameters.latency_ms: missing: the delay to add to each publish".into()
                );
            }
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
                None => CorruptionMode::Nan,
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
    let duration_ms = match &req.duration {
        None => 0,
        Some(d) => duration_ms(d).max(0) as u64,
    };
    Ok(FaultSpec { kind, duration_ms })
}

/// The gRPC service.
pub struct Service {
    plane: Arc<ControlPlane>,
}

impl Service {
    pub fn new(plane: Arc<ControlPlane>) -> Service {
        Service { plane }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl server::DeviceRuntimeService for Service {
    async fn spawn_devices(
        &self,
        req: Request<proto::SpawnDevicesRequest>,
    ) -> Result<Response<proto::SpawnDevicesResponse>, Status> {
        let req = req.into_inner();
        if req.specs.is_empty() {
            return Err(Status::invalid_argument("specs must not be empty"));
        }
        let n = self.plane.inboxes.len();
        let mut per: Vec<Vec<SpawnSpec>> = (0..n).map(|_| vec![]).collect();
        let mut out = proto::SpawnDevicesResponse::default();
        // Specs that differ only in id and labels share one compiled profile.
        let mut cache: HashMap<Vec<u8>, Result<Arc<Profile>, String>> = HashMap::new();
        for mut spec in req.specs {
            let id = std::mem::take(&mut spec.device_id);
            let labels: BTreeMap<String, String> =
                std::mem::take(&mut spec.labels).into_iter().collect();
            let key = spec.encode_to_vec();
            let compiled = cache.entry(key).or_insert_with(|| compile_spec(&spec).map(Arc::new));
            match compiled {
                Ok(profile) => per[seed::shard_of(&id, n)].push(SpawnSpec {
                    id,
                    profile: profile.clone(),
                    labels,
                }),
                Err(reason) => {
                    out.failure_reasons.insert(id.clone(), reason.clone());
                    out.failed_device_ids.push(id);
                }
            }
        }
        let mut waits = vec![];
        for (i, specs) in per.into_iter().enumerate() {
            if specs.is_empty() {
                continue;
            }
            let (reply, rx) = oneshot::channel::<SpawnReply>();
            self.plane.send(i, ShardCommand::Spawn { specs, reply }).await?;
            waits.push(rx);
        }
        for rx in waits {
            let r = rx.await.map_err(|_| Status::unavailable("a shard stopped before replying"))?;
            out.spawned += r.spawned as i32;
            for (id, reason) in r.failed {
                out.failure_reasons.insert(id.clone(), reason);
                out.failed_device_ids.push(id);
            }
        }
        out.failed_device_ids.sort();
        Ok(Response::new(out))
    }

    async fn stop_devices(
        &self,
        req: Request<proto::StopDevicesRequest>,
    ) -> Result<Response<proto::StopDevicesResponse>, Status> {
        let req = req.into_inner();
        let sel = selection(req.selector, false)?;
        let r = self.plane.scan(sel, || Action::Stop).await?;
        Ok(Response::new(proto::StopDevicesResponse {
            stopped: r.affected as i32,
            failed_device_ids: r.not_found,
        }))
    }

    async fn get_fleet_status(
        &self,
        req: Request<proto::GetFleetStatusRequest>,
    ) -> Result<Response<proto::FleetStatus>, Status> {
        let req = req.into_inner();
        let sel = selection(req.selector, true)?;
        let list = !req.counts_only;
        let mut r = self.plane.scan(sel, || Action::Status { list }).await?;
        r.devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(Response::new(proto::FleetStatus {
            total_devices: r.affected as i32,
            by_state: r.by_state.into_iter().map(|(k, v)| (k.to_string(), v as i32)).collect(),
            by_type: r.by_type.into_iter().map(|(k, v)| (k, v as i32)).collect(),
            devices: r.devices,
        }))
    }

    async fn inject_fault(
        &self,
        req: Request<proto::InjectFaultRequest>,
    ) -> Result<Response<()>, Status> {
        let req = req.into_inner();
        let spec = fault_spec(&req)?;
        let sel = selection(req.selector, false)?;
        let r = self.plane.scan(sel, || Action::Fault(spec.clone())).await?;
        tracing::info!(fault = spec.kind.type_name(), devices = r.affected, "fault injected");
        Ok(Response::new(()))
    }

    async fn update_device_behavior(
        &self,
        req: Request<proto::UpdateDeviceBehaviorRequest>,
    ) -> Result<Response<()>, Status> {
        let req = req.into_inner();
        let fields =
            behaviour_fields(req.behavior_params.as_ref()).map_err(Status::invalid_argument)?;
        // Compile through a throwaway profile so fields are validated exactly like a spawn's.
        let mut t = toml::Table::new();
        t.insert("protocol".into(), "null".into());
        t.insert("interval".into(), "1s".into());
        t.insert("fields".into(), toml::Value::Table(fields));
        let mut p = Problems::default();
        let profile = crate::config::compile_profile("update", Table::new("", &t), &mut p)
            .filter(|_| p.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(format!("invalid behavior_params: {}", problems_text(&p)))
            })?;
        let update = Arc::new(BehaviourUpdate { fields: profile.fields });
        let sel = selection(req.selector, false)?;
        self.plane.scan(sel, || Action::Behaviour(update.clone())).await?;
        Ok(Response::new(()))
    }

    type StreamTelemetryStream = BoxStream<proto::TelemetryBatch>;

    async fn stream_telemetry(
        &self,
        req: Request<proto::StreamTelemetryRequest>,
    ) -> Result<Response<Self::StreamTelemetryStream>, Status> {
        let req = req.into_inner();
        let batch_size = if req.batch_size <= 0 { DEFAULT_BATCH } else { req.batch_size as usize };
        let flush = match &req.flush_interval {
            None => DEFAULT_FLUSH,
            Some(d) if duration_ms(d) <= 0 && (d.seconds, d.nanos) <= (0, 0) => {
                return Err(Status::invalid_argument(format!(
                    "flush_interval must be greater than 0, got {}s {}ns",
                    d.seconds, d.nanos
                )));
            }
            Some(d) => Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
                .max(Duration::from_millis(1)),
        };
        let sel = Arc::new(selection(req.selector, true)?);
        let id = self.plane.next_stream.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = mpsc::channel::<Vec<proto::TelemetryPoint>>(STREAM_BUFFER);
        let n = self.plane.inboxes.len();
        for shard in 0..n {
            let selection = match &*sel {
                Selection::Ids(ids) => Arc::new(Selection::Ids(
                    ids.iter().filter(|i| seed::shard_of(i, n) == shard).cloned().collect(),
                )),
                _ => sel.clone(),
            };
            let sub = Subscription { id, selection, tx: tx.clone(), dropped: dropped.clone() };
            self.plane.send(shard, ShardCommand::Subscribe(sub)).await?;
        }
        drop(tx);
        let (out_tx, out_rx) = mpsc::channel::<Result<proto::TelemetryBatch, Status>>(4);
        let plane = self.plane.clone();
        tokio::spawn(async move {
            let mut seq = 0i64;
            let mut batch: Vec<proto::TelemetryPoint> = Vec::with_capacity(batch_size);
            let mut ticker = tokio::time::interval(flush);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut counted = 0u64;
            'outer: loop {
                tokio::select! {
                    got = rx.recv() => {
                        let Some(points) = got else { break };
                        for p in points {
                            batch.push(p);
                            if batch.len() >= batch_size {
                                seq += 1;
                                let d = dropped.load(Ordering::Relaxed);
                                let points = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                                let b = proto::TelemetryBatch { points, sequence_number: seq, dropped_points: d as i64 };
                                if out_tx.send(Ok(b)).await.is_err() {
                                    break 'outer;
                                }
                            }
                        }
                    }
                    _ = ticker.tick() => {
                        if !batch.is_empty() {
                            seq += 1;
                            let d = dropped.load(Ordering::Relaxed);
                            let points = std::mem::take(&mut batch);
                            let b = proto::TelemetryBatch { points, sequence_number: seq, dropped_points: d as i64 };
                            if out_tx.send(Ok(b)).await.is_err() {
                                break;
                            }
                        }
                        if out_tx.is_closed() {
                            break;
                        }
                    }
                }
                let d = dropped.load(Ordering::Relaxed);
                if d > counted {
                    plane.dropped_points.fetch_add(d - counted, Ordering::Relaxed);
                    counted = d;
                }
            }
            for shard in 0..plane.inboxes.len() {
                let _ = plane.send(shard, ShardCommand::Unsubscribe(id)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }

    type StreamEventsStream = BoxStream<proto::DeviceEvent>;

    async fn stream_events(
        &self,
        req: Request<proto::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let sel = selection(req.into_inner().selector, true)?;
        let ids: Option<HashSet<String>> = match &sel {
            Selection::Ids(v) => Some(v.iter().cloned().collect()),
            _ => None,
        };
        let mut rx = self.plane.events.subscribe();
        let (out_tx, out_rx) = mpsc::channel::<Result<proto::DeviceEvent, Status>>(256);
        tokio::spawn(async move {
            let mut lost = 0u64;
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        lost += n;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let (event, labels) = &*ev;
                let wanted = match (&sel, &ids) {
                    (_, Some(ids)) => ids.contains(&event.device_id),
                    (Selection::Labels(l), _) => l.matches(labels),
                    _ => true,
                };
                if !wanted {
                    continue;
                }
                let mut event = event.clone();
                if lost > 0 {
                    // Say so in-band: this subscriber read too slowly and missed events.
                    event.metadata.insert("events_dropped_before".into(), lost.to_string());
                }
                if out_tx.send(Ok(event)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }

    async fn get_runtime_status(
        &self,
        _req: Request<()>,
    ) -> Result<Response<proto::RuntimeStatus>, Status> {
        let p = &self.plane;
        let sum = |f: fn(&ShardCounters) -> &AtomicU64| -> u64 {
            p.counters.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        let up = p.started.elapsed();
        Ok(Response::new(proto::RuntimeStatus {
            active_devices: sum(|c| &c.devices) as i32,
            goroutine_count: thread_count().unwrap_or(p.threads) as i32,
            messages_sent_total: p.messages_total() as i64,
            messages_per_second: p.messages_per_second(),
            memory_bytes: crate::report::rss_bytes() as i64,
            uptime: Some(prost_types::Duration {
                seconds: up.as_secs() as i64,
                nanos: up.subsec_nanos() as i32,
            }),
            shards: p.inboxes.len() as i32,
            messages_suppressed_total: sum(|c| &c.suppressed) as i64,
            telemetry_points_dropped_total: p.dropped_points.load(Ordering::Relaxed) as i64,
            errors_total: sum(|c| &c.errors) as i64,
            faults_active: sum(|c| &c.faults_active) as i64,
            tick_lateness_us_max: p.take_lateness_us_max() as i64,
        }))
    }

    async fn pause_devices(
        &self,
        req: Request<proto::PauseDevicesRequest>,
    ) -> Result<Response<proto::PauseDevicesResponse>, Status> {
        let sel = selection(req.into_inner().selector, false)?;
        let r = self.plane.scan(sel, || Action::Pause(true)).await?;
        Ok(Response::new(proto::PauseDevicesResponse {
            affected: r.affected as i32,
            failed_device_ids: r.not_found,
        }))
    }

    async fn resume_devices(
        &self,
        req: Request<proto::ResumeDevicesRequest>,
    ) -> Result<Response<proto::PauseDevicesResponse>, Status> {
        let sel = selection(req.into_inner().selector, false)?;
        let r = self.plane.scan(sel, || Action::Pause(false)).await?;
        Ok(Response::new(proto::PauseDevicesResponse {
            affected: r.affected as i32,
            failed_device_ids: r.not_found,
        }))
    }

    async fn clear_faults(
        &self,
        req: Request<proto::ClearFaultsRequest>,
    ) -> Result<Response<proto::ClearFaultsResponse>, Status> {
        let req = req.into_inner();
        let kind = match proto::FaultType::try_from(req.fault_type) {
            Ok(proto::FaultType::Unspecified) => None,
            Ok(t) => Some(t as i32),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown fault_type {}",
                    req.fault_type
                )));
            }
        };
        let sel = selection(req.selector, false)?;
        let r = self.plane.scan(sel, || Action::ClearFaults(kind)).await?;
        Ok(Response::new(proto::ClearFaultsResponse { cleared: r.affected as i32 }))
    }
}

fn thread_count() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("Threads:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A running gRPC server.
pub struct ControlServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Stops serving and waits for the control thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `addr` and serves the runtime service, health and reflection on a new `control`
/// thread with its own tokio runtime.
pub fn start(addr: SocketAddr, plane: Arc<ControlPlane>) -> std::io::Result<ControlServer> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("control".into()).spawn(move || {
        rt.block_on(async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_serving::<server::DeviceRuntimeServiceServer<Service>>().await;
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .build_v1();
            let svc = server::DeviceRuntimeServiceServer::new(Service::new(plane))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let reflection = reflection
                .map_err(|e| tracing::warn!(error = %e, "server reflection unavailable"))
                .ok();
            let router = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(svc)
                .add_optional_service(reflection);
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let stopping = Arc::new(tokio::sync::Notify::new());
            let signal = stopping.clone();
            let serve = router.serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.await;
                signal.notify_one();
            });
            // A graceful shutdown waits for open calls, and a telemetry or event stream never
            // ends by itself: after a grace period the remaining ones are cut.
            let grace = async {
                stopping.notified().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                r = serve => if let Err(e) = r {
                    tracing::error!(error = %e, "gRPC server failed");
                },
                () = grace => tracing::info!("gRPC: closing the streams still open at shutdown"),
            }
        });
    })?;
    Ok(ControlServer { addr: local, shutdown: Some(tx), thread: Some(thread) })
}
