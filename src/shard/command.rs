//! The shard's side of live control: its command inbox, and the per-device state that commands
//! leave behind (faults, pauses, delayed publishes, telemetry subscriptions).
//!
//! The control plane sends a closed [`ShardCommand`] over a bounded crossbeam channel. The shard
//! drains its inbox once per wheel turn ([`Shard::drain_commands`]) and works through what it
//! took under a time budget: a command that touches many devices (a spawn of 50k, a fault on
//! every device) is done in chunks over several turns, so ticks keep their schedule. Replies go
//! back over oneshot channels; events and telemetry points go out over channels whose sends
//! never block (a full channel drops and counts).

use super::Shard;
use super::clock::mono_ns;
use super::stats::ProfileStats;
use crate::control::proto;
use crate::control::selector::LabelSelector;
use crate::sim::device::device_seed;
use crate::sim::fault::{
    ActiveFault, CorruptionMode, FaultKind, FaultSpec, corrupt_value, corruption_draw, drained,
    drift_ms,
};
use crate::sim::generator::{GenSpec, Sample};
use crate::sim::profile::{self, FieldSpec, Group, Profile};
use crate::sim::seed;
use crate::sim::time::SimMs;
use crate::sink::Sink;
use crossbeam_channel::Receiver;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Longest a shard spends on commands in one wheel turn when a device is due soon.
const BUDGET_NS: u64 = 300_000;
/// Longest a shard spends on commands in one turn when nothing is due for a while.
const IDLE_BUDGET_NS: u64 = 20_000_000;
/// Devices handled between two looks at the clock (a clock read costs ~20 ns; a spawn a few
/// µs, a selector match well under one).
const CHUNK: usize = 512;
const SPAWN_CHUNK: usize = 32;
const SCAN_CHUNK: usize = 256;
/// Points a subscription collects before it is handed to its stream.
const POINTS_PER_SEND: usize = 1024;

/// A device event with the labels of its device (for label-selector filtering).
pub type Event = Arc<(proto::DeviceEvent, BTreeMap<String, String>)>;

/// Where a reply goes.
pub type Reply<T> = oneshot::Sender<T>;

/// Which devices a command applies to.
#[derive(Clone, Debug)]
pub enum Selection {
    /// Every device (the original's unset selector).
    All,
    /// These ids (each shard gets only the ids it owns).
    Ids(Vec<String>),
    /// Devices whose labels match.
    Labels(LabelSelector),
}

/// One device to spawn, validated by the control plane.
pub struct SpawnSpec {
    pub id: String,
    /// Shared by every spec of a request with the same behaviour.
    pub profile: Arc<Profile>,
    /// The spec's labels (a `device_type` label is not added: the runtime never did).
    pub labels: BTreeMap<String, String>,
}

/// What a spawn did.
#[derive(Debug, Default)]
pub struct SpawnReply {
    pub spawned: u32,
    /// (device id, reason)
    pub failed: Vec<(String, String)>,
}

/// What a selection command did.
#[derive(Debug, Default)]
pub struct ScanReply {
    /// Devices the command applied to.
    pub affected: u32,
    /// Ids of an id selection that this shard does not have.
    pub not_found: Vec<String>,
    /// Status only.
    pub by_state: BTreeMap<&'static str, u32>,
    pub by_type: BTreeMap<String, u32>,
    pub devices: Vec<proto::DeviceProfile>,
}

/// New generator fields for UpdateDeviceBehavior, compiled by the control plane.
#[derive(Debug)]
pub struct BehaviourUpdate {
    pub fields: Vec<FieldSpec>,
}

/// What a selection command does to each selected device.
#[derive(Debug)]
pub enum Action {
    Stop,
    Status {
        list: bool,
    },
    Fault(FaultSpec),
    /// Clears faults of one `FaultType` number, or every fault.
    ClearFaults(Option<i32>),
    /// true = pause, false = resume.
    Pause(bool),
    Behaviour(Arc<BehaviourUpdate>),
}

/// A telemetry stream's registration with a shard.
pub struct Subscription {
    pub id: u64,
    pub selection: Arc<Selection>,
    /// Batches of points; `try_send` only.
    pub tx: mpsc::Sender<Vec<proto::TelemetryPoint>>,
    /// Points dropped because `tx` was full.
    pub dropped: Arc<AtomicU64>,
}

/// A command from the control plane.
pub enum ShardCommand {
    Spawn { specs: Vec<SpawnSpec>, reply: Reply<SpawnReply> },
    Scan { selection: Arc<Selection>, action: Action, reply: Reply<ScanReply> },
    Subscribe(Subscription),
    Unsubscribe(u64),
}

/// Figures a shard publishes for GetRuntimeStatus, refreshed every turn.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub devices: AtomicU64,
    pub messages: AtomicU64,
    pub errors: AtomicU64,
    pub suppressed: AtomicU64,
    pub faults_active: AtomicU64,
    /// Tick lateness in µs: the largest seen since the control plane last reset it to 0.
    pub lateness_us_max: AtomicU64,
}

/// The control plane's link to one shard, handed to it in its plan.
pub struct ShardControl {
    /// Commands from the control plane (bounded).
    pub inbox: Receiver<ShardCommand>,
    /// Device events to every StreamEvents subscriber; sent only while someone listens.
    pub events: broadcast::Sender<Event>,
    pub counters: Arc<ShardCounters>,
}

/// Work taken from the inbox and not finished yet.
enum Work {
    Spawn { specs: std::vec::IntoIter<SpawnSpec>, acc: SpawnReply, reply: Reply<SpawnReply> },
    Scan(Scan),
}

struct Scan {
    selection: Arc<Selection>,
    action: Action,
    /// Next key (or id index) to look at.
    cursor: usize,
    /// Per group: 0 = not evaluated, 1 = matches, 2 = does not.
    group_match: Vec<u8>,
    acc: ScanReply,
    reply: Reply<ScanReply>,
    /// UpdateDeviceBehavior: old profile index -> the updated profile's index.
    remap: HashMap<usize, usize>,
}

struct SubState {
    sub: Subscription,
    ids: Option<HashSet<String>>,
    group_match: Vec<u8>,
    pending: Vec<proto::TelemetryPoint>,
}

/// The shard's live-control state.
#[derive(Default)]
pub struct Control {
    link: Option<ShardControl>,
    work: VecDeque<Work>,
    /// Device id -> key; built on the first command that needs it, in steps (keys below
    /// `ids_cursor` are indexed) so that a million ids do not stall the ticks.
    ids: Option<HashMap<String, u32>>,
    ids_cursor: usize,
    ids_ready: bool,
    /// Active faults per device, in injection order.
    faults: HashMap<u32, Vec<ActiveFault>>,
    faults_active: u64,
    paused: HashSet<u32>,
    /// Devices whose publish is being delayed by a latency spike: key -> intended time.
    deferred: HashMap<u32, SimMs>,
    subs: Vec<SubState>,
    /// Spawned profiles (by the address of their shared `Arc`) -> profile index.
    profiles: HashMap<usize, usize>,
    kept: Vec<Arc<Profile>>,
    /// (profile index, labels) -> group index of spawned devices.
    groups: HashMap<(usize, BTreeMap<String, String>), usize>,
    suppressed: u64,
    /// Largest tick lateness (µs) since the counters were last published.
    pub lateness_max_us: u64,
}

/// What the active faults do to one message.
pub struct Effects {
    /// False under DISCONNECT.
    pub publish: bool,
    /// The timestamp to publish (moved by CLOCK_DRIFT).
    pub timestamp: SimMs,
    /// Set when DATA_CORRUPTION in `bytes` mode hits this message.
    pub corrupt_bytes: Option<u64>,
}

impl Control {
    /// Wraps the link from the shard's plan.
    pub fn new(link: Option<ShardControl>) -> Control {
        Control { link, ..Control::default() }
    }

    /// True while commands are being worked through (the shard should not sleep long).
    pub fn busy(&self) -> bool {
        !self.work.is_empty()
    }

    /// Messages not published because of DISCONNECT.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Counts a message suppressed by DISCONNECT.
    pub fn count_suppressed(&mut self) {
        self.suppressed += 1;
    }

    fn emit(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        kind: proto::DeviceEventType,
        message: String,
        t: SimMs,
        meta: &[(&str, String)],
    ) {
        let Some(link) = &self.link else { return };
        if link.events.receiver_count() == 0 {
            return;
        }
        let event = proto::DeviceEvent {
            device_id: id.to_string(),
            event_type: kind as i32,
            message,
            timestamp: Some(timestamp(t)),
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        let _ = link.events.send(Arc::new((event, labels.clone())));
    }

    /// Applies the device's active faults to a generated message (`samples`), expiring those
    /// whose time is up, and feeds the telemetry subscriptions.
    #[allow(clippy::too_many_arguments)]
    pub fn effects(
        &mut self,
        key: u32,
        due: SimMs,
        seq: u64,
        master_seed: u64,
        id: &str,
        group_ix: usize,
        group: &Group,
        profile: &Profile,
        samples: &mut [Sample],
    ) -> Effects {
        let mut fx = Effects { publish: true, timestamp: due, corrupt_bytes: None };
        if !self.faults.is_empty()
            && let Some(list) = self.faults.get_mut(&key)
        {
            let mut cleared: Vec<FaultKind> = vec![];
            list.retain(|f| {
                let keep = !f.expired(due);
                if !keep {
                    cleared.push(f.kind);
                }
                keep
            });
            // A fault applies to messages intended from its injection on (a device ticked late
            // for an earlier time is not affected).
            for f in list.iter().filter(|f| f.started_ms <= due) {
                match f.kind {
                    FaultKind::Disconnect => fx.publish = false,
                    FaultKind::LatencySpike { .. } => {}
                    FaultKind::DataCorruption { rate, mode } => {
                        let (u, word) = corruption_draw(device_seed(master_seed, id), seq);
                        if u < rate {
                            if mode == CorruptionMode::Bytes {
                                fx.corrupt_bytes = Some(word);
                            } else {
                                for s in samples.iter_mut() {
                                    if let Sample::Number(v) = s {
                                        *v = corrupt_value(mode, *v);
                                    }
                                }
                            }
                        }
                    }
                    FaultKind::BatteryDrain { multiplier } => {
                        for (s, field) in samples.iter_mut().zip(&profile.fields) {
                            if let (true, Sample::Number(v)) = (field.battery, &mut *s) {
                                *v = drained(*v, multiplier, f.started_ms, due);
                            }
                        }
                    }
                    FaultKind::ClockDrift { rate_ms_per_s } => {
                        let off = drift_ms(rate_ms_per_s, f.started_ms, due);
                        fx.timestamp = fx.timestamp.saturating_add_signed(off);
                    }
                }
            }
            if list.is_empty() {
                self.faults.remove(&key);
            }
            self.faults_active -= cleared.len() as u64;
            for kind in cleared {
                self.emit(
                    id,
                    &group.labels,
                    proto::DeviceEventType::FaultCleared,
                    format!("{kind} ended"),
                    due,
                    &[
                        ("fault_type", kind.type_name().to_string()),
                        ("device_type", profile.device_type.clone()),
                    ],
                );
            }
        }
        if fx.publish && !self.subs.is_empty() {
            self.stream(id, group_ix, group, profile, samples, fx.timestamp);
        }
        fx
    }

    fn stream(
        &mut self,
        id: &str,
        group_ix: usize,
        group: &Group,
        profile: &Profile,
        samples: &[Sample],
        t: SimMs,
    ) {
        for s in &mut self.subs {
            let wanted = match &s.ids {
                Some(ids) => ids.contains(id),
                None => group_matches(&mut s.group_match, group_ix, group, &s.sub.selection),
            };
            if !wanted {
                continue;
            }
            for (field, sample) in profile.fields.iter().zip(samples) {
                s.pending.push(proto::TelemetryPoint {
                    device_id: id.to_string(),
                    metric_name: field.name.clone(),
                    value: point_value(field, *sample),
                    timestamp: Some(timestamp(t)),
                    tags: group.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                });
            }
            if s.pending.len() >= POINTS_PER_SEND {
                send_points(s);
            }
        }
    }

    fn flush_streams(&mut self) {
        for s in &mut self.subs {
            if !s.pending.is_empty() {
                send_points(s);
            }
        }
        self.subs.retain(|s| !s.sub.tx.is_closed());
    }
}

fn send_points(s: &mut SubState) {
    let batch = std::mem::take(&mut s.pending);
    let n = batch.len() as u64;
    if let Err(mpsc::error::TrySendError::Full(_)) = s.sub.tx.try_send(batch) {
        s.sub.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

fn group_matches(cache: &mut Vec<u8>, gi: usize, group: &Group, sel: &Selection) -> bool {
    if cache.len() <= gi {
        cache.resize(gi + 1, 0);
    }
    if cache[gi] == 0 {
        let m = match sel {
            Selection::All => true,
            Selection::Labels(l) => l.matches(&group.labels),
            Selection::Ids(_) => false,
        };
        cache[gi] = if m { 1 } else { 2 };
    }
    cache[gi] == 1
}

/// The value of one field as a stream point (the original's oneof rules).
fn point_value(field: &FieldSpec, sample: Sample) -> Option<proto::telemetry_point::Value> {
    use proto::telemetry_point::Value;
    match (sample, &field.generator) {
        (Sample::Number(v), _) => Some(Value::DoubleValue(v)),
        (Sample::State(i), GenSpec::Markov(m)) => Some(Value::StringValue(m.states[i].clone())),
        (Sample::Static, GenSpec::Static { json, .. }) => match serde_json::from_str(json) {
            Ok(serde_json::Value::String(s)) => Some(Value::StringValue(s)),
            Ok(serde_json::Value::Bool(b)) => Some(Value::BoolValue(b)),
            _ => None,
        },
        _ => None,
    }
}

/// Sim time as a protobuf timestamp.
pub fn timestamp(t: SimMs) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (t / 1000) as i64, nanos: ((t % 1000) * 1_000_000) as i32 }
}

/// The `by_state` key of a device.
const RUNNING: &str = "DEVICE_STATE_RUNNING";
const PAUSED: &str = "DEVICE_STATE_PAUSED";

impl Shard {
    /// Sim time now, as far as commands are concerned.
    fn control_now(&self) -> SimMs {
        match self.plan.clock {
            crate::config::ClockMode::Virtual => self.wheel.elapsed(),
            crate::config::ClockMode::Realtime => self.sim_at(mono_ns()).max(self.wheel.elapsed()),
        }
    }

    /// Takes new commands from the inbox and works on pending ones within this turn's budget;
    /// hands collected telemetry points to their streams and refreshes the shared counters.
    /// Forwards network sinks' connection events to `StreamEvents` subscribers. A pooled
    /// connection serves many devices, so these events name the connection, not a device:
    /// `device_id` is empty and `metadata` holds `sink`, `shard`, `conn`, `url` (and `error`).
    fn forward_sink_events(&mut self) {
        for s in self.sinks.iter().flatten() {
            let Some(net) = s.net_shared() else { continue };
            let events = std::mem::take(&mut *net.conn_events.borrow_mut());
            for e in events {
                use crate::sink::net::ConnEvent;
                let (kind, conn, url, error) = match e {
                    ConnEvent::Connected { conn, url } => {
                        (proto::DeviceEventType::Connected, conn, url, None)
                    }
                    ConnEvent::Disconnected { conn, url, error } => {
                        (proto::DeviceEventType::Disconnected, conn, url, Some(error))
                    }
                    ConnEvent::ConnectFailed { conn, url, error } => {
                        (proto::DeviceEventType::Error, conn, url, Some(error))
                    }
                };
                let mut meta = vec![
                    ("sink", s.name().to_string()),
                    ("shard", self.plan.index.to_string()),
                    ("conn", conn.to_string()),
                    ("url", url),
                ];
                let message = match &error {
                    Some(err) => format!(
                        "{} connection {conn} of shard {}: {err}",
                        s.name(),
                        self.plan.index
                    ),
                    None => format!(
                        "{} connection {conn} of shard {} connected",
                        s.name(),
                        self.plan.index
                    ),
                };
                if let Some(err) = error {
                    meta.push(("error", err));
                }
                self.ctl.emit("", &BTreeMap::new(), kind, message, self.wheel.elapsed(), &meta);
            }
        }
    }

    pub fn drain_commands(&mut self) {
        self.forward_sink_events();
        let Some(link) = &self.ctl.link else { return };
        let start = mono_ns();
        while self.ctl.work.len() < 64 {
            match link.inbox.try_recv() {
                Ok(ShardCommand::Spawn { specs, reply }) => self.ctl.work.push_back(Work::Spawn {
                    specs: specs.into_iter(),
                    acc: SpawnReply::default(),
                    reply,
                }),
                Ok(ShardCommand::Scan { selection, action, reply }) => {
                    self.ctl.work.push_back(Work::Scan(Scan {
                        selection,
                        action,
                        cursor: 0,
                        group_match: vec![],
                        acc: ScanReply::default(),
                        reply,
                        remap: HashMap::new(),
                    }))
                }
                Ok(ShardCommand::Subscribe(sub)) => {
                    let ids = match &*sub.selection {
                        Selection::Ids(v) => Some(v.iter().cloned().collect()),
                        _ => None,
                    };
                    self.ctl.subs.push(SubState { sub, ids, group_match: vec![], pending: vec![] });
                }
                Ok(ShardCommand::Unsubscribe(id)) => self.ctl.subs.retain(|s| s.sub.id != id),
                Err(_) => break,
            }
        }
        if !self.ctl.work.is_empty() {
            // Work until shortly before the next device is due, within bounds.
            let budget = match (self.plan.clock, self.wheel.next_expiration()) {
                (crate::config::ClockMode::Realtime, Some(t)) => self
                    .wall_at(t)
                    .saturating_sub(start + BUDGET_NS)
                    .clamp(BUDGET_NS, IDLE_BUDGET_NS),
                (crate::config::ClockMode::Realtime, None) => IDLE_BUDGET_NS,
                (crate::config::ClockMode::Virtual, _) => BUDGET_NS,
            };
            let deadline = start + budget;
            while let Some(work) = self.ctl.work.pop_front() {
                let needs_ids = match &work {
                    Work::Spawn { .. } => true,
                    Work::Scan(s) => matches!(&*s.selection, Selection::Ids(_)),
                };
                if needs_ids && !self.id_index_step(deadline) {
                    self.ctl.work.push_front(work);
                    break;
                }
                let done = match work {
                    Work::Spawn { mut specs, mut acc, reply } => {
                        let mut n = 0usize;
                        let mut finished = true;
                        for spec in specs.by_ref() {
                            self.spawn_one(spec, &mut acc);
                            n += 1;
                            if n.is_multiple_of(SPAWN_CHUNK) && mono_ns() >= deadline {
                                finished = false;
                                break;
                            }
                        }
                        if finished {
                            self.publish_counters();
                            let _ = reply.send(acc);
                            true
                        } else {
                            self.ctl.work.push_front(Work::Spawn { specs, acc, reply });
                            false
                        }
                    }
                    Work::Scan(mut scan) => {
                        if self.scan_step(&mut scan, deadline) {
                            self.publish_counters();
                            let _ = scan.reply.send(scan.acc);
                            true
                        } else {
                            self.ctl.work.push_front(Work::Scan(scan));
                            false
                        }
                    }
                };
                if !done || mono_ns() >= deadline {
                    break;
                }
            }
        }
        self.ctl.flush_streams();
        self.publish_counters();
    }

    /// Publishes this shard's figures for GetRuntimeStatus. Also called before a command's
    /// reply is sent, so that a status read right after the reply already reflects it.
    fn publish_counters(&mut self) {
        if let Some(link) = &self.ctl.link {
            let c = &link.counters;
            c.devices.store(self.table.len() as u64, Ordering::Relaxed);
            let (net_messages, net_errors, _) = self.net_totals();
            c.messages.store(self.stats.messages() + net_messages, Ordering::Relaxed);
            c.errors.store(self.stats.errors() + net_errors, Ordering::Relaxed);
            c.suppressed.store(self.ctl.suppressed, Ordering::Relaxed);
            c.faults_active.store(self.ctl.faults_active, Ordering::Relaxed);
            c.lateness_us_max.fetch_max(self.ctl.lateness_max_us, Ordering::Relaxed);
            self.ctl.lateness_max_us = 0;
        }
    }

    /// Before a device's tick: pause and latency-spike deferral. `None` means the tick was
    /// consumed here (the device is re-armed); otherwise the (possibly earlier) intended time
    /// of the message to generate now.
    pub fn control_gate(
        &mut self,
        key: u32,
        due: SimMs,
        intended_ns: Option<u64>,
    ) -> Option<(SimMs, Option<u64>)> {
        let c = &self.ctl;
        if c.paused.is_empty() && c.deferred.is_empty() && c.faults.is_empty() {
            return Some((due, intended_ns));
        }
        if let Some(t0) = self.ctl.deferred.remove(&key) {
            // The delayed publish of the message intended at t0.
            return Some((t0, intended_ns.map(|_| self.wall_at(t0))));
        }
        let interval = self.device_interval(key);
        let c = &mut self.ctl;
        if c.paused.contains(&key) {
            self.wheel.insert(key, due + interval);
            return None;
        }
        if let Some(list) = c.faults.get(&key) {
            let live = || list.iter().filter(|f| f.started_ms <= due && !f.expired(due));
            let disconnected = live().any(|f| f.kind == FaultKind::Disconnect);
            let spike: u64 = live()
                .filter_map(|f| match f.kind {
                    FaultKind::LatencySpike { latency_ms } => Some(latency_ms),
                    _ => None,
                })
                .sum();
            if spike > 0 && !disconnected {
                c.deferred.insert(key, due);
                self.wheel.insert(key, due + spike);
                return None;
            }
        }
        Some((due, intended_ns))
    }

    fn device_interval(&self, key: u32) -> u64 {
        self.table.get(key).map_or(1000, |d| d.interval_ms.max(1) as u64)
    }

    fn id_of(&self, key: u32, out: &mut String) -> bool {
        let fleet = &*self.plan.fleet;
        match self.table.get(key) {
            Some(d) => {
                let g = &fleet.groups[d.group as usize];
                g.device_id(&fleet.profiles[g.profile], d.index as u64, out);
                true
            }
            None => false,
        }
    }

    /// Builds the id index a step at a time; true once it is complete. Stops, spawns and
    /// behaviour changes keep a partial index right (they insert and remove their own keys).
    fn id_index_step(&mut self, deadline: u64) -> bool {
        if self.ctl.ids_ready {
            return true;
        }
        let mut map = self.ctl.ids.take().unwrap_or_default();
        let mut id = String::new();
        let end = self.table.key_capacity();
        let mut n = 0usize;
        while self.ctl.ids_cursor < end {
            let k = self.ctl.ids_cursor as u32;
            self.ctl.ids_cursor += 1;
            if self.id_of(k, &mut id) {
                if map.capacity() == map.len() {
                    // Grow once to the full size rather than by doubling (each doubling
                    // rehashes everything so far in one go).
                    map.reserve(self.table.len().max(1024));
                }
                map.insert(id.clone(), k);
            }
            n += 1;
            if n.is_multiple_of(CHUNK) && mono_ns() >= deadline {
                break;
            }
        }
        self.ctl.ids = Some(map);
        self.ctl.ids_ready = self.ctl.ids_cursor >= end;
        self.ctl.ids_ready
    }

    fn spawn_one(&mut self, spec: SpawnSpec, acc: &mut SpawnReply) {
        // The caller completed the id index first (`id_index_step`).
        if self.ctl.ids.as_ref().is_some_and(|m| m.contains_key(&spec.id)) {
            let reason = format!("device {:?} already exists", spec.id);
            acc.failed.push((spec.id, reason));
            return;
        }
        // The profile first, so that a sink opened now knows it (HTTP endpoints, per-profile
        // statistics of network sinks).
        let profile_ix = self.intern_profile(&spec.profile);
        let proto_ix = spec.profile.protocol.index();
        if self.sinks[proto_ix].is_none() {
            let opened = Sink::open(
                spec.profile.protocol,
                &self.plan.sinks,
                self.plan.index,
                self.plan.shards,
                &self.plan.fleet,
            );
            match opened {
                Ok(s) => self.sinks[proto_ix] = Some(s),
                Err(e) => {
                    let reason = format!("cannot open the {} sink: {e}", spec.profile.protocol);
                    acc.failed.push((spec.id, reason));
                    return;
                }
            }
        }
        let gi = self.intern_group(profile_ix, spec.labels);
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        let group = &mut fleet.groups[gi];
        let index = group.ids.len() as u32;
        group.ids.push(spec.id.clone());
        group.count += 1;
        let ds = device_seed(self.plan.seed, &spec.id);
        let key = self.table.insert(fleet, gi as u32, index, ds);
        let now = self.control_now();
        let interval = spec.profile.interval_ms;
        self.wheel.insert(key, now + seed::phase_ms(ds, interval).max(1));
        self.ctl.emit(
            &spec.id,
            &self.plan.fleet.groups[gi].labels,
            proto::DeviceEventType::Spawned,
            "device started".into(),
            now,
            &[("device_type", spec.profile.device_type.clone())],
        );
        if let Some(ids) = &mut self.ctl.ids {
            ids.insert(spec.id, key);
        }
        acc.spawned += 1;
    }

    fn intern_profile(&mut self, p: &Arc<Profile>) -> usize {
        let addr = Arc::as_ptr(p) as usize;
        if let Some(&ix) = self.ctl.profiles.get(&addr) {
            return ix;
        }
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        fleet.profiles.push((**p).clone());
        let ix = fleet.profiles.len() - 1;
        self.stats.profiles.push(ProfileStats::new());
        // Network sinks record per profile too: make room for the new one.
        for sink in self.sinks.iter().flatten() {
            if let Some(net) = sink.net_shared() {
                let mut st = net.stats.borrow_mut();
                if st.len() <= ix {
                    st.resize_with(ix + 1, ProfileStats::new);
                }
            }
        }
        self.ctl.profiles.insert(addr, ix);
        self.ctl.kept.push(p.clone());
        ix
    }

    fn intern_group(&mut self, profile_ix: usize, labels: BTreeMap<String, String>) -> usize {
        if let Some(&gi) = self.ctl.groups.get(&(profile_ix, labels.clone())) {
            return gi;
        }
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        fleet.groups.push(Group {
            profile: profile_ix,
            count: 0,
            first_ordinal: 0,
            labels_json: profile::labels_json(&labels),
            labels: labels.clone(),
            ids: vec![],
        });
        let gi = fleet.groups.len() - 1;
        self.ctl.groups.insert((profile_ix, labels), gi);
        gi
    }

    /// Works on a selection command until it is done (true) or the deadline passes.
    fn scan_step(&mut self, scan: &mut Scan, deadline: u64) -> bool {
        let selection = scan.selection.clone();
        match &*selection {
            Selection::Ids(ids) => {
                while scan.cursor < ids.len() {
                    let id = &ids[scan.cursor];
                    scan.cursor += 1;
                    match self.ctl.ids.as_ref().and_then(|m| m.get(id)).copied() {
                        Some(key) => self.apply(scan, key),
                        None => scan.acc.not_found.push(id.clone()),
                    }
                    if scan.cursor.is_multiple_of(SCAN_CHUNK) && mono_ns() >= deadline {
                        return false;
                    }
                }
                true
            }
            sel => {
                let end = self.table.key_capacity();
                while scan.cursor < end {
                    let key = scan.cursor as u32;
                    scan.cursor += 1;
                    if let Some(d) = self.table.get(key) {
                        let gi = d.group as usize;
                        let fleet = &*self.plan.fleet;
                        if group_matches(&mut scan.group_match, gi, &fleet.groups[gi], sel) {
                            self.apply(scan, key);
                        }
                    }
                    if scan.cursor.is_multiple_of(SCAN_CHUNK) && mono_ns() >= deadline {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// Applies a selection command's action to one device.
    fn apply(&mut self, scan: &mut Scan, key: u32) {
        let now = self.control_now();
        let mut id = String::new();
        let fleet = self.plan.fleet.clone();
        let Some(d) = self.table.get(key) else { return };
        let group = &fleet.groups[d.group as usize];
        let profile = &fleet.profiles[group.profile];
        let needs_id = !matches!(scan.action, Action::Status { list: false });
        if needs_id {
            group.device_id(profile, d.index as u64, &mut id);
        }
        scan.acc.affected += 1;
        match &scan.action {
            Action::Status { list } => {
                let state = if self.ctl.paused.contains(&key) { PAUSED } else { RUNNING };
                *scan.acc.by_state.entry(state).or_default() += 1;
                *scan.acc.by_type.entry(profile.device_type.clone()).or_default() += 1;
                if *list {
                    scan.acc.devices.push(proto::DeviceProfile {
                        device_id: id,
                        device_type: profile.device_type.clone(),
                        labels: group.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        state: if state == PAUSED {
                            proto::DeviceState::Paused as i32
                        } else {
                            proto::DeviceState::Running as i32
                        },
                    });
                }
            }
            Action::Stop => {
                self.wheel.remove(key);
                if let Some(faults) = self.ctl.faults.remove(&key) {
                    self.ctl.faults_active -= faults.len() as u64;
                }
                self.ctl.paused.remove(&key);
                self.ctl.deferred.remove(&key);
                if let Some(ids) = &mut self.ctl.ids {
                    ids.remove(&id);
                }
                self.table.remove(&fleet, key);
                self.ctl.emit(
                    &id,
                    &group.labels,
                    proto::DeviceEventType::Stopped,
                    "device stopped".into(),
                    now,
                    &[("device_type", profile.device_type.clone())],
                );
            }
            Action::Fault(spec) => {
                if self.ctl.faults.len() == self.ctl.faults.capacity() {
                    // Size the map for every device at once: growing it by doubling under a
                    // million-device injection rehashes it all in single steps of ~30 ms.
                    self.ctl.faults.reserve(self.table.len());
                }
                let list = self.ctl.faults.entry(key).or_default();
                list.push(ActiveFault {
                    kind: spec.kind,
                    started_ms: now,
                    duration_ms: spec.duration_ms,
                });
                self.ctl.faults_active += 1;
                let duration = if spec.duration_ms == 0 {
                    "until cleared".to_string()
                } else {
                    crate::sim::time::format_duration_ms(spec.duration_ms)
                };
                self.ctl.emit(
                    &id,
                    &group.labels,
                    proto::DeviceEventType::FaultInjected,
                    format!("{} for {duration}", spec.kind),
                    now,
                    &[
                        ("fault_type", spec.kind.type_name().to_string()),
                        ("device_type", profile.device_type.clone()),
                        ("duration_ms", spec.duration_ms.to_string()),
                    ],
                );
            }
            Action::ClearFaults(kind) => {
                let mut cleared = vec![];
                if let Some(list) = self.ctl.faults.get_mut(&key) {
                    list.retain(|f| {
                        let hit = kind.is_none_or(|k| f.kind.type_number() == k);
                        if hit {
                            cleared.push(f.kind);
                        }
                        !hit
                    });
                    if list.is_empty() {
                        self.ctl.faults.remove(&key);
                    }
                }
                self.ctl.faults_active -= cleared.len() as u64;
                if cleared.is_empty() {
                    scan.acc.affected -= 1;
                }
                for k in cleared {
                    self.ctl.emit(
                        &id,
                        &group.labels,
                        proto::DeviceEventType::FaultCleared,
                        format!("{k} cleared"),
                        now,
                        &[("fault_type", k.type_name().to_string())],
                    );
                }
            }
            Action::Pause(pause) => {
                if *pause && self.ctl.paused.len() == self.ctl.paused.capacity() {
                    self.ctl.paused.reserve(self.table.len());
                }
                let changed =
                    if *pause { self.ctl.paused.insert(key) } else { self.ctl.paused.remove(&key) };
                if changed {
                    let (kind, msg) = if *pause {
                        (proto::DeviceEventType::Paused, "device paused")
                    } else {
                        (proto::DeviceEventType::Resumed, "device resumed")
                    };
                    self.ctl.emit(&id, &group.labels, kind, msg.into(), now, &[]);
                } else {
                    scan.acc.affected -= 1;
                }
            }
            Action::Behaviour(update) => {
                let update = update.clone();
                self.update_behaviour(key, &id, &update, &mut scan.remap)
            }
        }
    }

    /// Swaps a device's generators. A field whose generator type (and slot count) is unchanged
    /// keeps its state, so a brownian level does not jump back to `start`.
    fn update_behaviour(
        &mut self,
        key: u32,
        id: &str,
        update: &BehaviourUpdate,
        remap: &mut HashMap<usize, usize>,
    ) {
        let fleet = self.plan.fleet.clone();
        let Some(old) = self.table.get(key).cloned() else { return };
        let old_group = &fleet.groups[old.group as usize];
        let old_profile = &fleet.profiles[old_group.profile];
        let old_slots: Vec<_> =
            self.table.slots_mut(key, old_profile.slots).map(|s| s.to_vec()).unwrap_or_default();
        let profile_ix = match remap.get(&old_group.profile) {
            Some(&ix) => ix,
            None => {
                let mut p = old_profile.clone();
                p.fields = update.fields.clone();
                let mut slots = 0;
                for f in &mut p.fields {
                    f.generator.prepare(p.interval_ms as f64 / 1000.0);
                    f.first_slot = slots;
                    slots += f.generator.slots();
                }
                p.slots = slots;
                let ix = self.intern_profile(&Arc::new(p));
                remap.insert(old_group.profile, ix);
                ix
            }
        };
        let p = self.plan.fleet.profiles[profile_ix].clone();
        let labels = old_group.labels.clone();
        let gi = self.intern_group(profile_ix, labels);
        let deadline = self.wheel.remove(key);
        self.table.remove(&fleet, key);
        let f = Arc::make_mut(&mut self.plan.fleet);
        // The device moves to the new group: the report counts it once.
        let old_count = &mut f.groups[old.group as usize].count;
        *old_count = old_count.saturating_sub(1);
        let index = f.groups[gi].ids.len() as u32;
        f.groups[gi].ids.push(id.to_string());
        f.groups[gi].count += 1;
        let new_key = self.table.insert(f, gi as u32, index, device_seed(self.plan.seed, id));
        if let Some(dev) = self.table.get_mut(new_key) {
            dev.seq = old.seq;
            dev.interval_ms = old.interval_ms;
        }
        if let Some(new_slots) = self.table.slots_mut(new_key, p.slots) {
            for nf in &p.fields {
                let Some(of) = old_profile.fields.iter().find(|of| of.name == nf.name) else {
                    continue;
                };
                let same = std::mem::discriminant(&of.generator)
                    == std::mem::discriminant(&nf.generator)
                    && of.generator.slots() == nf.generator.slots();
                if same {
                    let n = nf.generator.slots();
                    new_slots[nf.first_slot..nf.first_slot + n]
                        .clone_from_slice(&old_slots[of.first_slot..of.first_slot + n]);
                }
            }
        }
        if new_key != key {
            {
                let map_key = key;
                if let Some(v) = self.ctl.faults.remove(&map_key) {
                    self.ctl.faults.insert(new_key, v);
                }
                if self.ctl.paused.remove(&map_key) {
                    self.ctl.paused.insert(new_key);
                }
                if let Some(v) = self.ctl.deferred.remove(&map_key) {
                    self.ctl.deferred.insert(new_key, v);
                }
            }
            if let Some(ids) = &mut self.ctl.ids {
                ids.insert(id.to_string(), new_key);
            }
        }
        let now = self.control_now();
        self.wheel.insert(new_key, deadline.unwrap_or(now + old.interval_ms as u64));
    }
}

/// Merges the shards' outcomes into one fleet and one set of statistics for the report.
/// `base` is the run's fleet, which every shard started from. What a shard created at runtime
/// (the profiles and groups of devices spawned or changed over gRPC) is appended, with its
/// statistics; the count of a fleet-file group is corrected by what shards moved out of it.
pub fn merge_outcomes(
    base: &profile::Fleet,
    shards: &[(&profile::Fleet, &super::stats::ShardStats)],
) -> (profile::Fleet, super::stats::ShardStats) {
    let mut fleet = base.clone();
    let mut stats = super::stats::ShardStats::new(base.profiles.len());
    for (f, st) in shards {
        // Shard profile index -> merged index.
        let mut map: Vec<usize> = (0..base.profiles.len().min(f.profiles.len())).collect();
        for p in f.profiles.iter().skip(map.len()) {
            fleet.profiles.push(p.clone());
            stats.profiles.push(ProfileStats::new());
            map.push(fleet.profiles.len() - 1);
        }
        for (i, g) in f.groups.iter().enumerate() {
            match base.groups.get(i) {
                Some(b) => {
                    let moved = b.count.saturating_sub(g.count);
                    fleet.groups[i].count = fleet.groups[i].count.saturating_sub(moved);
                }
                None => {
                    let mut g = g.clone();
                    g.profile = map.get(g.profile).copied().unwrap_or(g.profile);
                    g.ids = vec![];
                    fleet.groups.push(g);
                }
            }
        }
        for (i, p) in st.profiles.iter().enumerate() {
            if let Some(&m) = map.get(i) {
                stats.profiles[m].merge(p);
            }
        }
        let _ = stats.lateness.add(&st.lateness);
        for (k, v) in &st.sink_events {
            *stats.sink_events.entry(k.clone()).or_insert(0) += v;
        }
    }
    (fleet, stats)
}
