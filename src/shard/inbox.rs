//! The shard's side of live control: it drains its command inbox once per wheel turn and
//! works through the commands under a time budget. A command that touches many devices (a
//! spawn of 50k, a fault on every device) is done in chunks over several turns, so ticks keep
//! their schedule. What commands leave on devices (faults, pauses) lives in `faults.rs`;
//! telemetry subscriptions in `streams.rs`.

use super::Shard;
use super::command::{
    Action, BehaviourUpdate, DeviceInfo, DeviceState, Reply, ScanReply, Selection, ShardCommand,
    ShardControl, SpawnReply, SpawnSpec,
};
use super::event::{DeviceEvent, EventKind};
use super::faults::{DeviceStates, Gate};
use super::streams::{Streams, group_matches};
use crate::measure::clock::mono_ns;
use crate::measure::stats::{ProfileStats, Retired};
use crate::sim::device::{DeviceTable, device_seed};
use crate::sim::profile::{self, Group, Profile, Protocol};
use crate::sim::seed;
use crate::sim::time::SimMs;
use crate::sink::Sink;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// A scenario step for this shard, in the control plane's terms.
pub(super) enum ScenarioCommand {
    /// Specs made as they are taken (a scenario's spawn of 100,000 would otherwise build
    /// every spec in one go, outside the tick budget).
    Spawn(Box<dyn Iterator<Item = SpawnSpec>>),
    Scan(Selection, Action),
}

/// Longest a shard spends on commands in one wheel turn when a device is due soon.
const BUDGET_NS: u64 = 300_000;
/// Longest a shard spends on commands in one turn when nothing is due for a while.
const IDLE_BUDGET_NS: u64 = 20_000_000;
/// Devices handled between two looks at the clock (a clock read costs ~20 ns; a spawn a few
/// µs, a selector match well under one).
const CHUNK: usize = 512;
const SPAWN_CHUNK: usize = 32;
const SCAN_CHUNK: usize = 256;

/// Shortest slice of a turn a pending command gets (each of many gets an equal share).
const MIN_SLICE_NS: u64 = 50_000;

/// A command taken from the inbox (or a realtime scenario step) and not finished yet.
struct Pending {
    work: Work,
    /// Arrival order.
    seq: u64,
    /// A scenario step: it starts only once the scenario's earlier steps have finished. gRPC
    /// commands have no order between them (a client waits for a reply before its next call),
    /// so they share each turn round robin.
    in_order: bool,
}

/// Work taken from the inbox and not finished yet.
enum Work {
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

/// The shard's live-control state.
#[derive(Default)]
pub(crate) struct Control {
    link: Option<ShardControl>,
    work: VecDeque<Pending>,
    /// `Pending::seq` of the next command.
    next_seq: u64,
    /// Device id -> key; built on the first command that needs it, in steps (keys below
    /// `ids_cursor` are indexed) so that a million ids do not stall the ticks.
    ids: Option<HashMap<String, u32>>,
    ids_cursor: usize,
    ids_ready: bool,
    /// Faults, pauses and deferrals of this shard's devices.
    pub states: DeviceStates,
    pub streams: Streams,
    /// Spawned profiles (by the address of their shared `Arc`) -> profile index.
    profiles: HashMap<usize, usize>,
    /// Runtime profiles in use, by profile index (held so that the address stays theirs).
    kept: HashMap<usize, Arc<Profile>>,
    /// Runtime profiles that may have lost their last device (see `retire_profiles`).
    retire: BTreeSet<usize>,
    /// Indices of freed runtime profiles and groups, reused by the next ones.
    free_profiles: Vec<usize>,
    free_groups: BTreeSet<usize>,
    /// (profile index, labels) -> group index of spawned devices.
    groups: HashMap<(usize, BTreeMap<String, String>), usize>,
    /// Devices on a fallback sink, by the protocol they asked for.
    fallback_devices: BTreeMap<String, u64>,
    /// (group, index) of spawned devices stopped or moved since the last turn: their id
    /// slots are freed and reused (see `reclaim_ids`).
    released: Vec<(u32, u32)>,
    /// Free id slots of spawned groups, by group.
    free_ids: HashMap<u32, Vec<u32>>,
    /// Largest tick lateness (µs) since the counters were last published.
    pub lateness_max_us: u64,
    /// The sim time commands take effect at, while a scenario step is applied at its own
    /// time (instead of the wheel's or the wall clock's "now").
    pub now_override: Option<SimMs>,
    /// Drops, slowdowns and publish retries already logged (the log line says what is new).
    logged: [u64; 3],
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
const FAULT_TYPES: [&str; 5] =
    ["disconnect", "latency_spike", "data_corruption", "battery_drain", "clock_drift"];

impl Shard {
    /// Sim time now, as far as commands are concerned.
    fn control_now(&self) -> SimMs {
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
    fn forward_sink_events(&mut self) {
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
    fn forward_session_event(&self, sink: &str, e: crate::sink::net::ConnEvent) {
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
    fn work_round_robin(&mut self, deadline: u64) {
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
    fn work_on(&mut self, work: Work, deadline: u64) -> Option<Work> {
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
                if matches!(scan.action, Action::Stop) && self.table.is_empty() {
                    self.release_memory();
                }
                self.publish_counters();
                let _ = scan.reply.send(scan.acc);
                None
            }
        }
    }

    /// Publishes this shard's figures for GetRuntimeStatus. Also called before a command's
    /// reply is sent, so that a status read right after the reply already reflects it.
    fn publish_counters(&mut self) {
        if let Some(link) = &self.ctl.link {
            let c = &link.counters;
            c.devices.store(self.table.len() as u64, Ordering::Relaxed);
            let counts = self.stats.counts() + self.net_totals();
            c.messages.store(counts.messages, Ordering::Relaxed);
            c.errors.store(counts.errors, Ordering::Relaxed);
            c.suppressed.store(self.ctl.states.suppressed(), Ordering::Relaxed);
            c.faults_active.store(self.ctl.states.faults_active(), Ordering::Relaxed);
            c.lateness_us_max.fetch_max(self.ctl.lateness_max_us, Ordering::Relaxed);
            c.runtime_profiles.store(self.ctl.kept.len() as u64, Ordering::Relaxed);
            self.ctl.lateness_max_us = 0;
        }
    }

    /// Publishes this shard's per-profile figures for `/metrics` (about once a second, with
    /// the progress snapshot): counters and histogram buckets copied out of its own
    /// statistics, so the tick itself never touches anything shared.
    pub(super) fn publish_figures(&self) {
        use crate::measure::board::{Buckets, ProfileFigures, ShardFigures, SinkFigures};
        let Some(link) = &self.ctl.link else { return };
        let fleet = &*self.plan.fleet;
        let live = self.table.live_by_profile();
        let mut profiles = Vec::with_capacity(fleet.profiles.len());
        for (i, p) in fleet.profiles.iter().enumerate() {
            let local = &self.stats.profiles[i];
            let mut f = ProfileFigures {
                device_type: p.device_type.as_str().into(),
                protocol: p.protocol.name(),
                devices: live.get(i).copied().unwrap_or(0),
                counts: local.counts,
                slowdowns: local.slowdowns,
                error_kinds: local.error_kinds.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                latency: Buckets::from_hdr(&local.latency),
                ..Default::default()
            };
            if let Some(net) = self.sinks[p.protocol.index()].as_ref().and_then(|s| s.net_shared())
                && let Some(n) = net.stats.borrow().get(i)
            {
                f.counts += n.counts;
                f.slowdowns += n.slowdowns;
                for (k, v) in &n.error_kinds {
                    match f.error_kinds.iter_mut().find(|(kk, _)| kk == k) {
                        Some(e) => e.1 += v,
                        None => f.error_kinds.push((k.clone(), *v)),
                    }
                }
                f.latency.add(&Buckets::from_hdr(&n.latency));
                f.commands = n.commands;
                f.commands_answered = n.commands_answered;
                if n.commands > 0 {
                    f.command_rtt = Buckets::from_hdr(&n.command_rtt);
                }
            }
            profiles.push(f);
        }
        // Freed runtime profiles: what they counted stays in the (monotone) counters.
        for r in &self.stats.retired {
            let Some(protocol) = Protocol::parse(&r.sink) else { continue };
            let st = &r.total.stats;
            profiles.push(ProfileFigures {
                device_type: r.device_type.as_str().into(),
                protocol: protocol.name(),
                devices: 0,
                counts: st.counts,
                slowdowns: st.slowdowns,
                error_kinds: st.error_kinds.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                latency: Buckets::from_hdr(&st.latency),
                commands: st.commands,
                commands_answered: st.commands_answered,
                command_rtt: Buckets::from_hdr(&st.command_rtt),
            });
        }
        let mut sinks = vec![];
        let mut sink_events = vec![];
        for s in self.sinks.iter().flatten() {
            if let Some(n) = s.net_shared() {
                sinks.push(SinkFigures {
                    sink: s.name(),
                    // Per-device MQTT sessions count as connections of the sink too.
                    connected: n.conns.iter().filter(|c| c.connected.get()).count() as u64
                        + s.sessions_connected().0,
                    connections: n.conns.len() as u64 + s.sessions_connected().1,
                    queue_depth: n.conns.iter().map(|c| c.len() as u64).sum(),
                });
                for (k, v) in n.events.borrow().iter() {
                    sink_events.push((format!("{}.{k}", s.name()), *v));
                }
            }
        }
        let by_type = |a: [u64; 5]| FAULT_TYPES.iter().copied().zip(a).collect::<Vec<_>>();
        link.counters.figures.publish(ShardFigures {
            profiles,
            lateness: Buckets::from_hdr(&self.stats.lateness),
            sinks,
            sink_events,
            faults_active: by_type(self.ctl.states.active_by_type()),
            faults_injected: by_type(self.ctl.states.injected_by_type()),
            paused: self.ctl.states.paused_count(),
            running: true,
            scenario_phase: self.scn.as_ref().and_then(|c| {
                let i = c.phase_of(self.control_now())?;
                Some((c.scenario.name.clone(), c.scenario.phases[i].name.clone()))
            }),
        });
    }

    /// Logs backpressure and publish retries since the previous call, as one line each for
    /// this shard (called about once a second with the progress snapshot), never per message.
    pub(super) fn log_sink_pressure(&mut self) {
        let mut now = [self.stats.counts().dropped, 0, 0];
        now[1] = self.stats.all().map(|p| p.slowdowns).sum();
        for s in self.sinks.iter().flatten() {
            if let Some(n) = s.net_shared() {
                for p in n.stats.borrow().iter() {
                    now[0] += p.counts.dropped;
                    now[1] += p.slowdowns;
                }
                let events = n.events.borrow();
                now[2] += ["retry", "retransmit"].iter().filter_map(|k| events.get(k)).sum::<u64>();
            }
        }
        let [d, sl, r] = [0, 1, 2].map(|i| now[i].saturating_sub(self.ctl.logged[i]));
        if d > 0 || sl > 0 {
            tracing::info!(shard = self.plan.index, dropped = d, slowdowns = sl, "backpressure");
        }
        if r > 0 {
            tracing::info!(shard = self.plan.index, retries = r, "publish retries");
        }
        self.ctl.logged = now;
    }

    /// Publishes the per-protocol count of devices on a fallback sink (spawns and stops only).
    fn publish_fallback(&self) {
        if let Some(link) = &self.ctl.link {
            let mut m = link.counters.fallback_devices.lock().unwrap_or_else(|e| e.into_inner());
            m.clone_from(&self.ctl.fallback_devices);
        }
    }

    /// Before a device's tick: pause and latency-spike deferral. `None` means the tick was
    /// consumed here (the device is re-armed); otherwise the (possibly earlier) intended time
    /// of the message to generate now, and its intended monotonic time (realtime).
    pub(crate) fn control_gate(
        &mut self,
        key: u32,
        due: SimMs,
        intended_ns: Option<u64>,
    ) -> Option<(SimMs, Option<u64>)> {
        if self.ctl.states.is_quiet() {
            return Some((due, intended_ns));
        }
        match self.ctl.states.gate(key, due, self.device_interval(key)) {
            Gate::Tick { intended } if intended == due => Some((due, intended_ns)),
            Gate::Tick { intended } => {
                Some((intended, intended_ns.map(|_| self.wall_at(intended))))
            }
            Gate::Rearm { at } => {
                if self.ctl.states.is_paused(key) {
                    // A paused device publishes nothing, events included: those due before
                    // its next look are dropped, not sent in a burst when it resumes.
                    let fleet = &*self.plan.fleet;
                    if let Some(d) = self.table.get(key) {
                        let b = &fleet.profiles[fleet.groups[d.group as usize].profile].behaviour;
                        if !b.events.is_empty()
                            && let Some(block) = self.table.block_mut(fleet, key)
                        {
                            b.skip_events(block, at);
                        }
                    }
                }
                self.wheel.insert(key, at);
                None
            }
        }
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
                    // A quarter of headroom: spawns that follow then do not rehash a full map.
                    map.reserve((self.table.len() + self.table.len() / 4).max(1024));
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
            }
        }
        self.ctl.now_override = None;
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
            // A sink opened now must also be started (its connection tasks spawned on this
            // shard's LocalSet), or its messages would only queue.
            let started = opened.map_err(|e| e.to_string()).and_then(|mut s| s.start().map(|()| s));
            match started {
                Ok(s) => self.sinks[proto_ix] = Some(s),
                Err(e) => {
                    let reason = format!("cannot open the {} sink: {e}", spec.profile.protocol);
                    acc.failed.push((spec.id, reason));
                    return;
                }
            }
        }
        if let Some(asked) = &spec.profile.requested_protocol {
            *self.ctl.fallback_devices.entry(asked.clone()).or_default() += 1;
            self.publish_fallback();
        }
        // A group index is reused only when no other command is under way: a scan caches
        // whether each group matches its selector.
        let reuse = self.ctl.work.is_empty();
        let gi = self.intern_group(profile_ix, spec.labels, reuse);
        let free = self.ctl.free_ids.get_mut(&(gi as u32)).and_then(Vec::pop);
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        let group = &mut fleet.groups[gi];
        let index = match free {
            Some(i) => {
                group.ids[i as usize] = spec.id.clone();
                i
            }
            None => {
                group.ids.push(spec.id.clone());
                group.ids.len() as u32 - 1
            }
        };
        group.count += 1;
        let ds = device_seed(self.plan.seed, &spec.id);
        let key = self.table.insert(fleet, gi as u32, index, ds);
        let now = self.control_now();
        let interval = spec.profile.interval_ms;
        self.wheel.insert(key, now + seed::phase_ms(ds, interval).max(1));
        self.ctl.emit(
            &spec.id,
            &self.plan.fleet.groups[gi].labels,
            EventKind::Spawned,
            "device started".into(),
            now,
            vec![("device_type", spec.profile.device_type.clone())],
        );
        if let Some(tap) = &self.plan.excuses {
            let g = &self.plan.fleet.groups[gi];
            tap.spawned(crate::shard::tap::SpawnNote {
                id: spec.id.clone(),
                profile: spec.profile.clone(),
                labels: g.labels.clone(),
                labels_json: g.labels_json.clone(),
                at_ms: now,
            });
        }
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
        // A freed index has empty statistics here and in every sink (`retire_profile`).
        let ix = match self.ctl.free_profiles.pop() {
            Some(ix) => {
                fleet.profiles[ix] = (**p).clone();
                ix
            }
            None => {
                fleet.profiles.push((**p).clone());
                self.stats.profiles.push(ProfileStats::new());
                for ph in &mut self.stats.phases {
                    ph.push(ProfileStats::new());
                }
                fleet.profiles.len() - 1
            }
        };
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
        self.ctl.kept.insert(ix, p.clone());
        ix
    }

    /// Frees the runtime profiles that no device uses any more and of which no network sink
    /// still holds a message (`NetShared::pending`); one that still has messages out is looked
    /// at again on the next turn. Only between commands: a command in progress may hold
    /// profile and group indices (a scan's `remap`, its group matches).
    fn retire_profiles(&mut self) {
        if self.ctl.retire.is_empty() || !self.ctl.work.is_empty() {
            return;
        }
        // A failed file write is counted against its profile before the index can change.
        self.account_lost();
        let mut freed = false;
        for ix in std::mem::take(&mut self.ctl.retire) {
            if !self.ctl.kept.contains_key(&ix)
                || self.table.live_by_profile().get(ix).is_some_and(|&n| n > 0)
            {
                // A fleet-file profile, one already freed, or one with devices (it is
                // looked at again when one of them stops).
                continue;
            }
            let held =
                self.sinks.iter().flatten().filter_map(Sink::net_shared).any(|n| n.pending(ix) > 0);
            if held {
                self.ctl.retire.insert(ix);
            } else {
                self.retire_profile(ix);
                freed = true;
            }
        }
        if freed && self.table.is_empty() {
            // As in `release_memory`: the stop that emptied the shard trimmed before this.
            // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// Folds profile `ix`'s statistics (the shard's, every network sink's, per phase too) and
    /// its groups' device counts into the retired entry of its report row
    /// (`ShardStats::retired`), then frees the profile (a husk keeps its slot until a new
    /// profile takes it) and its groups (reused by the next new group).
    fn retire_profile(&mut self, ix: usize) {
        let Some(arc) = self.ctl.kept.remove(&ix) else { return };
        self.ctl.profiles.remove(&(Arc::as_ptr(&arc) as usize));
        drop(arc);
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        let p = &fleet.profiles[ix];
        let names: Vec<&str> = p.behaviour.events.iter().map(|e| e.name.as_str()).collect();
        let key = (p.protocol.name(), p.device_type.as_str(), p.requested_protocol.as_deref());
        let take = |st: &mut ProfileStats| std::mem::take(st);
        let mut folded = Retired::default();
        folded.total.fold(&take(&mut self.stats.profiles[ix]), &names);
        let nets: Vec<_> = self.sinks.iter().flatten().filter_map(Sink::net_shared).collect();
        for net in &nets {
            if let Some(st) = net.stats.borrow_mut().get_mut(ix) {
                folded.total.fold(&take(st), &names);
            }
        }
        let phases = nets.iter().map(|n| n.phase_stats.borrow().len()).max().unwrap_or(0);
        folded.phases.resize_with(self.stats.phases.len().max(phases), Default::default);
        for (ph, f) in folded.phases.iter_mut().enumerate() {
            if let Some(st) = self.stats.phases.get_mut(ph).and_then(|v| v.get_mut(ix)) {
                f.fold(&take(st), &names);
            }
            for net in &nets {
                let mut per = net.phase_stats.borrow_mut();
                if let Some(st) = per.get_mut(ph).and_then(|v| v.get_mut(ix)) {
                    f.fold(&take(st), &names);
                }
            }
        }
        // The report counts every device a row ever had (a stopped one too).
        for gi in 0..fleet.groups.len() {
            if fleet.groups[gi].profile != ix || self.ctl.free_groups.contains(&gi) {
                continue;
            }
            let g = &mut fleet.groups[gi];
            folded.devices += g.count;
            self.ctl.groups.remove(&(ix, std::mem::take(&mut g.labels)));
            g.count = 0;
            g.ids = vec![];
            g.labels_json = profile::labels_json(&g.labels);
            self.ctl.free_ids.remove(&(gi as u32));
            self.ctl.free_groups.insert(gi);
        }
        self.stats.retired_mut(key).merge(&folded);
        let husk = Profile::husk(p.protocol, &p.device_type, p.requested_protocol.clone(), &[]);
        fleet.profiles[ix] = husk;
        self.ctl.free_profiles.push(ix);
    }

    /// Gives memory back once the last device of the shard has stopped: the device table and
    /// the id index start over, the freed id slots are released, and the allocator returns
    /// what it holds free to the system (glibc keeps freed memory otherwise: 30 "spawn 50,000,
    /// stop all" cycles left a runtime at 6x its idle size).
    fn release_memory(&mut self) {
        self.reclaim_ids();
        self.table = DeviceTable::default();
        self.ctl.ids = None;
        self.ctl.ids_cursor = 0;
        self.ctl.ids_ready = false;
        // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
        unsafe { libc::malloc_trim(0) };
    }

    /// Frees the id text of stopped spawned devices and keeps their slots for the next spawn
    /// into the same group: `Group::ids` grew by every device ever spawned (measured: ~2 MiB
    /// per "spawn 50,000, stop all" cycle, never returned). Done between commands, when no
    /// clone of the fleet is held, so `Arc::make_mut` does not copy it.
    fn reclaim_ids(&mut self) {
        if self.ctl.released.is_empty() {
            return;
        }
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        for (gi, index) in self.ctl.released.drain(..) {
            // Fleet-file groups derive their ids and have no slots.
            if let Some(slot) = fleet.groups[gi as usize].ids.get_mut(index as usize) {
                *slot = String::new();
                self.ctl.free_ids.entry(gi).or_default().push(index);
            }
        }
    }

    fn intern_group(
        &mut self,
        profile_ix: usize,
        labels: BTreeMap<String, String>,
        reuse: bool,
    ) -> usize {
        if let Some(&gi) = self.ctl.groups.get(&(profile_ix, labels.clone())) {
            return gi;
        }
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        let group = Group {
            profile: profile_ix,
            count: 0,
            first_ordinal: 0,
            labels_json: profile::labels_json(&labels),
            labels: labels.clone(),
            ids: vec![],
        };
        let free = if reuse { self.ctl.free_groups.pop_first() } else { None };
        let gi = match free {
            Some(gi) => {
                fleet.groups[gi] = group;
                self.ctl.streams.forget_group(gi);
                gi
            }
            None => {
                fleet.groups.push(group);
                fleet.groups.len() - 1
            }
        };
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
        let needs_id = !matches!(scan.action, Action::Status { list: false } | Action::CountBy(_));
        if needs_id {
            group.device_id(profile, d.index as u64, &mut id);
        }
        scan.acc.affected += 1;
        match &scan.action {
            Action::Status { list } => {
                let state = if self.ctl.states.is_paused(key) {
                    DeviceState::Paused
                } else {
                    DeviceState::Running
                };
                *scan.acc.by_state.entry(state).or_default() += 1;
                *scan.acc.by_type.entry(profile.device_type.clone()).or_default() += 1;
                if *list {
                    scan.acc.devices.push(DeviceInfo {
                        id,
                        device_type: profile.device_type.clone(),
                        labels: group.labels.clone(),
                        state,
                        faults: self.ctl.states.faults_of(key),
                        messages: d.seq,
                    });
                }
            }
            Action::List { after, limit } => {
                if after.as_deref().is_some_and(|a| id.as_str() <= a) {
                    return;
                }
                scan.acc.beyond += 1;
                let state = if self.ctl.states.is_paused(key) {
                    DeviceState::Paused
                } else {
                    DeviceState::Running
                };
                scan.acc.devices.push(DeviceInfo {
                    id,
                    device_type: profile.device_type.clone(),
                    labels: group.labels.clone(),
                    state,
                    faults: self.ctl.states.faults_of(key),
                    messages: d.seq,
                });
                // Keep the `limit` smallest ids; trimming at twice that keeps it amortised.
                if scan.acc.devices.len() >= 2 * (*limit).max(1) {
                    scan.acc.devices.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                    scan.acc.devices.truncate(*limit);
                }
            }
            Action::Stop => {
                self.wheel.remove(key);
                self.ctl.states.forget(key);
                if let Some(asked) = &profile.requested_protocol
                    && let Some(n) = self.ctl.fallback_devices.get_mut(asked)
                {
                    *n = n.saturating_sub(1);
                    self.publish_fallback();
                }
                if let Some(ids) = &mut self.ctl.ids {
                    ids.remove(&id);
                }
                if let Some(d) = self.table.remove(&fleet, key) {
                    self.ctl.released.push((d.group, d.index));
                    self.ctl.retire.insert(group.profile);
                }
                self.ctl.emit(
                    &id,
                    &group.labels,
                    EventKind::Stopped,
                    "device stopped".into(),
                    now,
                    vec![("device_type", profile.device_type.clone())],
                );
            }
            Action::CountBy(label) => {
                let value = group.labels.get(&**label).cloned();
                *scan.acc.by_label.entry(value).or_default() += 1;
            }
            Action::Fault(spec) => {
                self.ctl.states.inject(key, spec, now, self.table.len());
                if matches!(spec.kind, crate::sim::fault::FaultKind::Disconnect) {
                    self.drop_session(profile, &id, spec, now);
                }
                let duration = if spec.duration_ms == 0 {
                    "until cleared".to_string()
                } else {
                    crate::sim::time::format_duration_ms(spec.duration_ms)
                };
                self.ctl.emit(
                    &id,
                    &group.labels,
                    EventKind::FaultInjected,
                    format!("{} for {duration}", spec.kind),
                    now,
                    vec![
                        ("fault_type", spec.kind.type_name().to_string()),
                        ("device_type", profile.device_type.clone()),
                        ("duration_ms", spec.duration_ms.to_string()),
                    ],
                );
            }
            Action::ClearFaults(kind) => {
                let cleared = self.ctl.states.clear(key, *kind);
                if cleared.is_empty() {
                    scan.acc.affected -= 1;
                }
                if cleared.iter().any(|k| matches!(k, crate::sim::fault::FaultKind::Disconnect)) {
                    self.release_session(profile, &id);
                }
                for k in cleared {
                    self.ctl.emit(
                        &id,
                        &group.labels,
                        EventKind::FaultCleared,
                        format!("{k} cleared"),
                        now,
                        vec![("fault_type", k.type_name().to_string())],
                    );
                }
            }
            Action::Pause(pause) => {
                let changed = self.ctl.states.set_paused(key, *pause, self.table.len());
                if changed {
                    let (kind, msg) = if *pause {
                        (EventKind::Paused, "device paused")
                    } else {
                        (EventKind::Resumed, "device resumed")
                    };
                    self.ctl.emit(&id, &group.labels, kind, msg.into(), now, vec![]);
                } else {
                    scan.acc.affected -= 1;
                }
            }
            Action::Behaviour(update) => {
                let update = update.clone();
                // No second reference to the fleet while it is changed (see update_behaviour).
                drop(fleet);
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
        // Copies of what is needed from the old group and profile: holding a second reference
        // to the fleet here would make every `Arc::make_mut` below clone the whole fleet (with
        // the ids of every spawned device), once per updated device.
        let Some(old) = self.table.get(key).cloned() else { return };
        let (old_profile_ix, old_labels, old_profile) = {
            let g = &self.plan.fleet.groups[old.group as usize];
            (g.profile, g.labels.clone(), self.plan.fleet.profiles[g.profile].clone())
        };
        let old_slots: Vec<_> =
            self.table.slots_mut(key, old_profile.slots).map(|s| s.to_vec()).unwrap_or_default();
        let profile_ix = match remap.get(&old_profile_ix) {
            Some(&ix) => ix,
            None => {
                // What broke was refused up front (gRPC compiles the whole field set, a
                // scenario checks every profile its update meets at load); anything left
                // publishes null.
                let (p, _broken) = old_profile.updated(update);
                let ix = self.intern_profile(&Arc::new(p));
                remap.insert(old_profile_ix, ix);
                ix
            }
        };
        let p = self.plan.fleet.profiles[profile_ix].clone();
        let mut labels = old_labels;
        labels.extend(update.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let gi = self.intern_group(profile_ix, labels, false);
        let deadline = self.wheel.remove(key);
        self.table.remove(&self.plan.fleet, key);
        self.ctl.released.push((old.group, old.index));
        self.ctl.retire.insert(old_profile_ix);
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
            dev.interval_ms = match update.interval_ms {
                Some(ms) => ms as u32,
                None => old.interval_ms,
            };
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
            // Event clocks, outages and sleep phases carry over where the feature stays.
            let (ob, nb) = (&old_profile.behaviour, &p.behaviour);
            for (ne, &nat) in nb.events.iter().zip(&nb.event_at) {
                if let Some((oe, &oat)) =
                    ob.events.iter().zip(&ob.event_at).find(|(oe, _)| oe.name == ne.name)
                    && oe.fields.len() == ne.fields.len()
                    && oe.field_slots == ne.field_slots
                {
                    new_slots[nat..nat + 1 + ne.field_slots]
                        .clone_from_slice(&old_slots[oat..oat + 1 + oe.field_slots]);
                }
            }
            if ob.availability.is_some() && nb.availability.is_some() {
                new_slots[nb.availability_at] = old_slots[ob.availability_at].clone();
            }
            if ob.sleep == nb.sleep && nb.sleep.is_some() {
                new_slots[nb.sleep_at] = old_slots[ob.sleep_at].clone();
            }
        }
        if new_key != key {
            self.ctl.states.rekey(key, new_key);
            if let Some(ids) = &mut self.ctl.ids {
                ids.insert(id.to_string(), new_key);
            }
        }
        let now = self.control_now();
        self.wheel.insert(new_key, deadline.unwrap_or(now + old.interval_ms as u64));
    }
}
