//! The shard's side of live control: it drains its command inbox once per wheel turn and
//! works through the commands under a time budget. A command that touches many devices (a
//! spawn of 50k, a fault on every device) is done in chunks over several turns, so ticks keep
//! their schedule. What commands leave on devices (faults, pauses) lives in `faults.rs`;
//! telemetry subscriptions in `streams.rs`. The work itself is split by job: spawns in
//! `spawning.rs`, selection scans and their actions in `scan.rs`, what the shard publishes
//! about itself in `figures.rs`.

use super::Shard;
use super::command::{
    Action, Reply, ScanReply, Selection, ShardCommand, ShardControl, SpawnReply, SpawnSpec,
};
use super::event::{DeviceEvent, EventKind};
use super::faults::DeviceStates;
use super::streams::Streams;
use crate::measure::clock::mono_ns;
use crate::sim::profile::Profile;
use crate::sim::time::SimMs;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::oneshot;

/// A scenario step for this shard, in the control plane's terms.
pub(super) enum ScenarioCommand {
    /// Specs made as they are taken (a scenario's spawn of 100,000 would otherwise build
    /// every spec in one go, outside the tick budget).
    Spawn(Box<dyn Iterator<Item = SpawnSpec>>),
    Scan(Selection, Action),
}

/// Longest a shard spends on commands in one wheel turn when a device is due soon.
pub(super) const BUDGET_NS: u64 = 300_000;
/// Longest a shard spends on commands in one turn when nothing is due for a while.
pub(super) const IDLE_BUDGET_NS: u64 = 20_000_000;
/// Devices handled between two looks at the clock (a clock read costs ~20 ns; a spawn a few
/// µs, a selector match well under one).
pub(super) const CHUNK: usize = 512;
pub(super) const SPAWN_CHUNK: usize = 32;
pub(super) const SCAN_CHUNK: usize = 256;

/// Shortest slice of a turn a pending command gets (each of many gets an equal share).
pub(super) const MIN_SLICE_NS: u64 = 50_000;

/// A command taken from the inbox (or a realtime scenario step) and not finished yet.
pub(super) struct Pending {
    pub(super) work: Work,
    /// Arrival order.
    pub(super) seq: u64,
    /// A scenario step: it starts only once the scenario's earlier steps have finished. gRPC
    /// commands have no order between them (a client waits for a reply before its next call),
    /// so they share each turn round robin.
    pub(super) in_order: bool,
}

/// Work taken from the inbox and not finished yet.
pub(super) enum Work {
    Spawn { specs: Box<dyn Iterator<Item = SpawnSpec>>, acc: SpawnReply, reply: Reply<SpawnReply> },
    Scan(Scan),
}

impl Work {
    /// Relative cost per device: a label selector's match cost, 1 for the rest (spawns and
    /// id lookups).
    fn cost(&self) -> u64 {
        match self {
            Work::Scan(Scan { selection, .. }) => match &**selection {
                Selection::Labels(l) => l.match_cost(),
                _ => 1,
            },
            Work::Spawn { .. } => 1,
        }
    }
}

pub(super) struct Scan {
    pub(super) selection: Arc<Selection>,
    pub(super) action: Action,
    /// Next key (or id index) to look at.
    pub(super) cursor: usize,
    /// Per group: 0 = not evaluated, 1 = matches, 2 = does not.
    pub(super) group_match: Vec<u8>,
    pub(super) acc: ScanReply,
    pub(super) reply: Reply<ScanReply>,
    /// UpdateDeviceBehavior: old profile index -> the updated profile's index.
    pub(super) remap: HashMap<usize, usize>,
}

/// The shard's live-control state.
#[derive(Default)]
pub(crate) struct Control {
    pub(super) link: Option<ShardControl>,
    pub(super) work: VecDeque<Pending>,
    /// `Pending::seq` of the next command.
    pub(super) next_seq: u64,
    /// Device id -> key; built on the first command that needs it, in steps (keys below
    /// `ids_cursor` are indexed) so that a million ids do not stall the ticks.
    pub(super) ids: Option<super::spawning::IdIndex>,
    pub(super) ids_cursor: usize,
    pub(super) ids_ready: bool,
    /// Faults, pauses and deferrals of this shard's devices.
    pub(super) states: DeviceStates,
    pub(super) streams: Streams,
    /// Spawned profiles (by the address of their shared `Arc`) -> profile index.
    pub(super) profiles: HashMap<usize, usize>,
    /// Runtime profiles in use, by profile index (held so that the address stays theirs).
    pub(super) kept: HashMap<usize, Arc<Profile>>,
    /// Runtime profiles that may have lost their last device (see `retire_profiles`).
    pub(super) retire: BTreeSet<usize>,
    /// Indices of freed runtime profiles and groups, reused by the next ones.
    pub(super) free_profiles: Vec<usize>,
    pub(super) free_groups: BTreeSet<usize>,
    /// Profile index -> labels -> group index of spawned devices (by profile first, so that a
    /// spawn looks its labels up without a copy of them).
    pub(super) groups: HashMap<usize, HashMap<BTreeMap<String, String>, usize>>,
    /// Devices on a fallback sink, by the protocol they asked for.
    pub(super) fallback_devices: BTreeMap<String, u64>,
    /// (group, index) of spawned devices stopped or moved since the last turn: their id
    /// slots are freed and reused (see `reclaim_ids`).
    pub(super) released: Vec<(u32, u32)>,
    /// Free id slots of spawned groups, by group.
    pub(super) free_ids: HashMap<u32, Vec<u32>>,
    /// Largest tick lateness (µs) since the counters were last published.
    pub(super) lateness_max_us: u64,
    /// The sim time commands take effect at, while a scenario step is applied at its own
    /// time (instead of the wheel's or the wall clock's "now").
    pub(super) now_override: Option<SimMs>,
    /// Drops, slowdowns and publish retries already logged (the log line says what is new).
    pub(super) logged: [u64; 3],
}

impl Control {
    /// Wraps the link from the shard's plan.
    pub fn new(link: Option<ShardControl>) -> Control {
        Control { link, ..Control::default() }
    }

    /// Queues a command behind the pending ones.
    fn queue(&mut self, work: Work, in_order: bool) {
        self.work.push_back(Pending { work, seq: self.next_seq, in_order });
        self.next_seq += 1;
    }

    /// True while commands are being worked through (the shard should not sleep long).
    pub fn busy(&self) -> bool {
        !self.work.is_empty()
    }

    /// Sends an event to the StreamEvents subscribers, if any listen.
    pub fn emit(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        kind: EventKind,
        message: String,
        t: SimMs,
        meta: Vec<(&'static str, String)>,
    ) {
        // Per device only at debug: commands are logged once, with counts, by the plane.
        tracing::debug!(device_id = id, event = ?kind, "{message}");
        let Some(link) = &self.link else { return };
        if link.events.receiver_count() == 0 {
            return;
        }
        let _ = link.events.send(Arc::new(DeviceEvent {
            device_id: id.to_string(),
            kind,
            message,
            at_ms: t,
            metadata: meta,
            labels: labels.clone(),
        }));
    }
}

/// Fault type label values, by `FaultType` number - 1.
pub(super) const FAULT_TYPES: [&str; 5] =
    ["disconnect", "latency_spike", "data_corruption", "battery_drain", "clock_drift"];

impl Shard {
    /// Sim time now, as far as commands are concerned.
    pub(super) fn control_now(&self) -> SimMs {
        if let Some(t) = self.ctl.now_override {
            return t;
        }
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
    pub(super) fn forward_sink_events(&mut self) {
        for s in self.sinks.iter().flatten() {
            let Some(net) = s.net_shared() else { continue };
            let events = std::mem::take(&mut *net.conn_events.borrow_mut());
            for e in events {
                use crate::sink::net::ConnEvent;
                let (kind, conn, url, error) = match e {
                    ConnEvent::Session { .. } | ConnEvent::Command { .. } => {
                        self.forward_session_event(s.name(), e);
                        continue;
                    }
                    ConnEvent::Connected { conn, url } => (EventKind::Connected, conn, url, None),
                    ConnEvent::Disconnected { conn, url, error } => {
                        (EventKind::Disconnected, conn, url, Some(error))
                    }
                    ConnEvent::ConnectFailed { conn, url, error } => {
                        (EventKind::Error, conn, url, Some(error))
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
                self.ctl.emit("", &BTreeMap::new(), kind, message, self.wheel.elapsed(), meta);
            }
        }
    }

    /// A per-device MQTT session's event, named by its device (`metadata`: `sink`, `shard`,
    /// and `error` or the command's `topic` and `command_id`).
    pub(super) fn forward_session_event(&self, sink: &str, e: crate::sink::net::ConnEvent) {
        use crate::sink::net::ConnEvent;
        let shard = self.plan.index.to_string();
        let (device_id, kind, message, mut meta) = match e {
            ConnEvent::Session { device_id, connected: true, .. } => {
                let m = format!("{sink} session of {device_id} connected");
                (device_id, EventKind::Connected, m, vec![])
            }
            ConnEvent::Session { device_id, connected: false, detail } => {
                let m = format!("{sink} session of {device_id} down: {detail}");
                (device_id, EventKind::Disconnected, m, vec![("error", detail)])
            }
            ConnEvent::Command { device_id, topic, id } => {
                let m = format!("{sink} command {id:?} received by {device_id} on {topic}");
                let meta =
                    vec![("cause", "command".to_string()), ("topic", topic), ("command_id", id)];
                (device_id, EventKind::Warning, m, meta)
            }
            _ => return,
        };
        meta.push(("sink", sink.to_string()));
        meta.push(("shard", shard));
        if kind == EventKind::Warning {
            tracing::info!(device = %device_id, "{message}");
        }
        self.ctl.emit(&device_id, &BTreeMap::new(), kind, message, self.wheel.elapsed(), meta);
    }

    pub fn drain_commands(&mut self) {
        self.forward_sink_events();
        self.reclaim_ids();
        self.retire_profiles();
        if self.ctl.link.is_none() && self.ctl.work.is_empty() {
            return;
        }
        let start = mono_ns();
        while let Some(link) = &self.ctl.link
            && self.ctl.work.len() < 64
        {
            let work = match link.inbox.try_recv() {
                Ok(ShardCommand::Spawn { specs, reply }) => Work::Spawn {
                    specs: Box::new(specs.into_iter()),
                    acc: SpawnReply::default(),
                    reply,
                },
                Ok(ShardCommand::Scan { selection, action, reply }) => Work::Scan(Scan {
                    selection,
                    action,
                    cursor: 0,
                    group_match: vec![],
                    acc: ScanReply::default(),
                    reply,
                    remap: HashMap::new(),
                }),
                Ok(ShardCommand::Subscribe(sub)) => {
                    self.ctl.streams.add(sub);
                    continue;
                }
                Ok(ShardCommand::Unsubscribe(id)) => {
                    self.ctl.streams.remove(id);
                    continue;
                }
                Err(_) => break,
            };
            self.ctl.queue(work, false);
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
            self.work_round_robin(start + budget);
        }
        self.ctl.streams.flush();
        self.publish_counters();
    }

    /// Works on the pending commands until `deadline`, round robin: in each pass every one
    /// gets a share of what is left of the turn, in inverse proportion to its per-device cost
    /// ([`Work::cost`]), and, unfinished, goes to the back. So a small command taken while a
    /// long one (a maximal selector over a million devices) is in progress is not queued
    /// behind it: a cheap call runs at nearly its own speed, the costly one gets at least
    /// [`MIN_SLICE_NS`] a turn. Scenario steps keep their order among themselves.
    pub(super) fn work_round_robin(&mut self, deadline: u64) {
        loop {
            if self.ctl.work.is_empty() || mono_ns() >= deadline {
                return;
            }
            let first_in_order = self.ctl.work.iter().filter(|p| p.in_order).map(|p| p.seq).min();
            let runs = |p: &Pending| !p.in_order || Some(p.seq) == first_in_order;
            // The sum of 1/cost over the commands this pass works on, scaled to integers.
            const UNIT: u64 = 1 << 20;
            let mut shares: u64 =
                self.ctl.work.iter().filter(|p| runs(p)).map(|p| UNIT / p.work.cost()).sum();
            let mut worked = false;
            for _ in 0..self.ctl.work.len() {
                let Some(p) = self.ctl.work.pop_front() else { return };
                let now = mono_ns();
                if now >= deadline {
                    self.ctl.work.push_front(p);
                    return;
                }
                if !runs(&p) {
                    self.ctl.work.push_back(p);
                    continue;
                }
                let share = UNIT / p.work.cost();
                let slice =
                    ((deadline - now) as u128 * share as u128 / shares.max(1) as u128) as u64;
                shares = shares.saturating_sub(share);
                let slice = slice.max(MIN_SLICE_NS);
                worked = true;
                if let Some(work) = self.work_on(p.work, (now + slice).min(deadline)) {
                    self.ctl.work.push_back(Pending { work, ..p });
                }
            }
            if !worked {
                return;
            }
        }
    }

    /// Works on one command until `deadline`; gives it back if it is not finished.
    pub(super) fn work_on(&mut self, work: Work, deadline: u64) -> Option<Work> {
        let needs_ids = match &work {
            Work::Spawn { .. } => true,
            Work::Scan(s) => matches!(&*s.selection, Selection::Ids(_)),
        };
        if needs_ids && !self.id_index_step(deadline) {
            return Some(work);
        }
        match work {
            Work::Spawn { mut specs, mut acc, reply } => {
                let mut n = 0usize;
                for spec in specs.by_ref() {
                    self.spawn_one(spec, &mut acc);
                    n += 1;
                    if n.is_multiple_of(SPAWN_CHUNK) && mono_ns() >= deadline {
                        return Some(Work::Spawn { specs, acc, reply });
                    }
                }
                self.publish_counters();
                let _ = reply.send(acc);
                None
            }
            Work::Scan(mut scan) => {
                if !self.scan_step(&mut scan, deadline) {
                    return Some(Work::Scan(scan));
                }
                if matches!(scan.action, Action::Stop) {
                    self.after_stop();
                }
                self.publish_counters();
                let _ = scan.reply.send(scan.acc);
                None
            }
        }
    }

    /// A scenario's spawn or selection command, through the same code as the control plane's.
    /// Virtual clock: done at once, at sim time `at` (so the result is the same whatever the
    /// machine does meanwhile). Realtime: queued like a gRPC command and worked through under
    /// the tick budget, taking effect when it is reached.
    pub(super) fn scenario_command(&mut self, cmd: ScenarioCommand, at: SimMs) {
        // Nobody waits for the reply.
        let work = match cmd {
            ScenarioCommand::Spawn(specs) => {
                Work::Spawn { specs, acc: SpawnReply::default(), reply: oneshot::channel().0 }
            }
            ScenarioCommand::Scan(selection, action) => Work::Scan(Scan {
                selection: Arc::new(selection),
                action,
                cursor: 0,
                group_match: vec![],
                acc: ScanReply::default(),
                reply: oneshot::channel().0,
                remap: HashMap::new(),
            }),
        };
        if self.plan.clock == crate::config::ClockMode::Realtime {
            self.ctl.queue(work, true);
            return;
        }
        self.ctl.now_override = Some(at);
        let needs_ids = match &work {
            Work::Spawn { .. } => true,
            Work::Scan(s) => matches!(&*s.selection, Selection::Ids(_)),
        };
        if needs_ids {
            self.id_index_step(u64::MAX);
        }
        match work {
            Work::Spawn { specs, mut acc, .. } => {
                for spec in specs {
                    self.spawn_one(spec, &mut acc);
                }
            }
            Work::Scan(mut scan) => {
                self.scan_step(&mut scan, u64::MAX);
                if matches!(scan.action, Action::Stop) {
                    self.after_stop();
                }
            }
        }
        self.ctl.now_override = None;
    }
}
