//! One shard per core: a pinned OS thread running a tokio current-thread runtime that owns its
//! devices, its timing wheel, its sinks and its statistics, and shares none of them.
//!
//! The loop: take every device due by the current sim time off the wheel, tick it (generate,
//! encode, hand to the sink, record), re-arm it at `due + interval`, then sleep until the next
//! deadline (realtime: on the wake-up grid of `pace.rs`) or jump straight to it (virtual).

pub(crate) mod command;
pub(crate) mod event;
mod faults;
mod figures;
#[cfg(test)]
mod harness;
mod inbox;
mod pace;
mod replay;
mod scan;
mod spawning;
pub(crate) mod streams;
pub(crate) mod tap;
#[cfg(test)]
mod tests;
pub(crate) mod timeline;

pub(crate) use spawning::in_due_order;

use crate::config::{ClockMode, SinkSettings};
use crate::measure::clock::{PreciseTimer, mono_ns};
use crate::measure::counters::Counters;
use crate::measure::stats::{self, ShardStats, Snapshot};
use crate::sim::behaviour::{Presence, ReportMode, StepLog};
use crate::sim::device::{DeviceTable, device_seed};
use crate::sim::generator::Sample;
use crate::sim::payload;
use crate::sim::profile::{Fleet, Profile, Protocol};
use crate::sim::seed;
use crate::sim::time::SimMs;
use crate::sim::wheel::Wheel;
use crate::sink::{Message, Sink, Submitted};
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

/// How often a shard reports progress.
const SNAPSHOT_EVERY_NS: u64 = 1_000_000_000;
/// A virtual shard lets its network sinks' tasks run after about this many messages (and
/// whenever a queue is above 80%): a few hundred per write, small next to the queues.
const VIRTUAL_YIELD_EVERY: usize = 256;

/// Longest a realtime shard sleeps before looking at the stop flag again.
const MAX_SLEEP_NS: u64 = 50_000_000;
/// How long a shard waits at the end for network sinks to settle what they hold.
const DRAIN_TIMEOUT_NS: u64 = 15_000_000_000;
/// The same after Ctrl-C or SIGTERM.
const DRAIN_ON_STOP_NS: u64 = 3_000_000_000;
/// How many due devices ahead the tick loop prefetches.
const PREFETCH_AHEAD: usize = 8;
/// How many due devices ahead the device structs themselves are prefetched (stage 1).
const PREFETCH_DEVICE_AHEAD: usize = 16;
/// A deadline closer than this is waited for awake (a timerfd round trip costs about as much).
const MIN_SLEEP_NS: u64 = 20_000;
/// How often a realtime shard flushes buffered file output.
const FILE_FLUSH_EVERY_NS: u64 = 200_000_000;

/// Everything a shard needs to start.
pub struct ShardPlan {
    pub index: usize,
    pub shards: usize,
    pub fleet: Arc<Fleet>,
    pub sinks: Arc<SinkSettings>,
    pub seed: u64,
    pub clock: ClockMode,
    pub speed: f64,
    pub start_ms: SimMs,
    pub end_ms: Option<SimMs>,
    /// Monotonic time that corresponds to `start_ms` (realtime), shared by all shards; set
    /// from the `origin` handed to [`spawn`] once every shard has built its devices.
    pub wall_origin_ns: u64,
    /// Set by the main thread to stop every shard.
    pub stop: Arc<AtomicBool>,
    /// Progress snapshots to the main thread; a full channel drops the snapshot.
    pub progress: Sender<Snapshot>,
    pub core: Option<core_affinity::CoreId>,
    /// The live-control link (gRPC): `None` for a plain run.
    pub control: Option<command::ShardControl>,
    /// The scenario's compiled timeline (shared by every shard), if a scenario drives the run.
    pub scenario: Option<Arc<timeline::Script>>,
    /// A delivery audit's per-device counters of messages faults kept from arriving intact.
    pub excuses: Option<Arc<tap::ExcuseTap>>,
    /// Virtual clock: also send a progress snapshot each time sim time passes another step
    /// of this many ms (the report's time series is sampled by sim time); 0 = wall seconds
    /// only. Skipped while the progress channel is half full (nothing is lost: counters are
    /// running totals and the latency window waits for the next snapshot).
    pub sample_every_ms: u64,
    /// Realtime clock: the shortest sleep between two wake-ups, in ns (`[run] timer_slack`;
    /// 0 = only the default wake-up grid and light-load budget of `pace.rs`). A wake-up costs a
    /// timer, an epoll round trip and two context switches, however few messages it sends;
    /// with slack the shard sends the slots that fell due meanwhile together, each message
    /// still carrying its intended time.
    pub timer_slack_ns: u64,
}

/// What a shard hands back when it ends.
pub struct ShardOutcome {
    pub stats: ShardStats,
    pub sim_end_ms: SimMs,
    pub pinned: bool,
    /// The shard's fleet at the end: the run's fleet plus the profiles and groups of devices
    /// spawned or changed over gRPC (`stats.profiles` is indexed like its `profiles`).
    pub fleet: Arc<Fleet>,
}

/// Starts a shard thread. The shard builds its devices, waits on `ready` (twice: once to say
/// it is built, once for the main thread to publish the common time origin in `origin`), then
/// runs.
pub fn spawn(
    mut plan: ShardPlan,
    ready: Arc<Barrier>,
    origin: Arc<AtomicU64>,
) -> std::io::Result<std::thread::JoinHandle<Result<ShardOutcome, String>>> {
    std::thread::Builder::new().name(format!("shard-{}", plan.index)).spawn(move || {
        let pinned = plan.core.is_some_and(core_affinity::set_for_current);
        // The kernel may fire a thread's sleeps up to its timer slack late (50 µs by default);
        // a realtime shard's lateness is measured against its deadlines, so none.
        // SAFETY: PR_SET_TIMERSLACK only sets this thread's slack; the result is not needed.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        crate::memcheck::reserve_heap(crate::memcheck::THREAD_HEAP_RESERVE);
        let index = plan.index;
        let stop = plan.stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        // Build, then meet the others whatever happened, so that no one waits forever.
        let built = Shard::build_with(&mut plan);
        // The realtime timer is made before the shards meet: once they run, the gRPC server
        // accepts clients, and those may use up the file descriptors.
        let timer = match (&rt, plan.clock) {
            (Ok(rt), ClockMode::Realtime) => {
                let _in = rt.enter();
                Some(PreciseTimer::new())
            }
            _ => None,
        };
        ready.wait();
        ready.wait();
        plan.wall_origin_ns = origin.load(Ordering::Acquire);
        let rt = rt.map_err(|e| format!("shard {index}: cannot start its runtime: {e}"));
        let result = match (rt, built) {
            (Ok(rt), Ok(parts)) => {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let mut shard = Shard::assemble(plan, parts);
                    shard.pinned = pinned;
                    shard.timer = timer;
                    shard.run().await
                })
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if result.is_err() {
            // One shard failing stops the others, so the run ends with a report.
            stop.store(true, Ordering::Relaxed);
        }
        result
    })
}

/// The state of one shard.
pub struct Shard {
    plan: ShardPlan,
    /// The realtime loop's timer, made before the run starts (see `spawn`).
    timer: Option<std::io::Result<PreciseTimer>>,
    table: DeviceTable,
    wheel: Wheel,
    sinks: Vec<Option<Sink>>,
    stats: ShardStats,
    interval_latency: hdrhistogram::Histogram<u64>,
    pinned: bool,
    // Reused buffers.
    samples: Vec<Sample>,
    payload: Vec<u8>,
    topic: Vec<u8>,
    id: String,
    due: Vec<(u32, SimMs)>,
    /// What the last behaviour step found (events due, outages), reused.
    step_log: StepLog,
    event_samples: Vec<Sample>,
    /// Sparkplug B edge nodes owned by this shard (`sim::sparkplug`).
    sparkplug: crate::sim::sparkplug::EdgeNodes,
    /// Live control: inbox, faults, pauses, streams (`inbox.rs`).
    ctl: inbox::Control,
    /// Where this shard is in the scenario, if one drives the run (`timeline.rs`).
    scn: Option<timeline::ScenarioCursor>,
    /// Replay devices' rows (`replay.rs`).
    replay: replay::Replays,
}

/// A shard's devices, wheel and sinks, built before its time starts.
pub struct Parts {
    table: DeviceTable,
    wheel: Wheel,
    sinks: Vec<Option<Sink>>,
    replay: replay::Replays,
}

/// How many entries of the fleet build's due-order list are taken before its memory is given
/// back (64K entries, 1.5 MiB).
const ORDER_SHRINK_STEP: usize = 1 << 16;

impl Shard {
    /// Creates this shard's devices (those whose id hashes to it) and opens its sinks.
    pub fn build_with(plan: &mut ShardPlan) -> Result<Parts, String> {
        let fleet = plan.fleet.clone();
        let mut table = DeviceTable::default();
        let mut wheel = Wheel::new(plan.start_ms);
        // Room for the devices a scenario will spawn too, reserved now: growing the device,
        // slot and wheel arrays of a million-device shard mid-run stalls its ticks.
        let (spawns, spawn_slots) = plan.scenario.as_ref().map_or((0, 0), |s| {
            s.timeline.iter().fold((0, 0), |acc, a| match &a.cue {
                timeline::Cue::Spawn { ids, profile, .. } => {
                    (acc.0 + ids.len(), acc.1 + ids.len() * profile.slots)
                }
                _ => acc,
            })
        });
        let expect = (fleet.device_count() as usize + spawns) / plan.shards + 64;
        let slots: usize = fleet
            .groups
            .iter()
            .map(|g| fleet.profiles[g.profile].slots * g.count as usize)
            .sum::<usize>()
            + spawn_slots;
        table.reserve(expect + expect / 16, slots / plan.shards + slots / plan.shards / 16 + 64);
        wheel.reserve_keys(expect);
        let mut id = String::with_capacity(64);
        let mut replay = replay::Replays::default();
        // The shard's devices get their keys (device, slot and wheel entries) in the order
        // they first fall due: every wheel slot then touches a run of neighbouring entries,
        // not a scattered few per cache line (issue 25). The wheel keeps insertion order
        // within a millisecond, which stays (group, index) order, as before.
        let mut order: Vec<(SimMs, u32, u32, u64)> = Vec::with_capacity(expect);
        for (gi, g) in fleet.groups.iter().enumerate() {
            let profile = &fleet.profiles[g.profile];
            for i in 0..g.count {
                g.device_id(profile, i, &mut id);
                if plan.shards > 1
                    && owner_shard(profile, &id, &g.labels, plan.shards) != plan.index
                {
                    continue;
                }
                let ds = device_seed(plan.seed, &id);
                if let Some(spec) = &profile.replay {
                    let key = table.insert(&fleet, gi as u32, i as u32, ds);
                    // A replay device is due at its first recorded row (if it has one).
                    let ordinal = g.first_ordinal + i;
                    if let Some(t) = replay.add(g.profile, spec, plan.start_ms, key, ordinal) {
                        wheel.insert(key, t);
                    }
                    continue;
                }
                order.push((
                    plan.start_ms + seed::phase_ms(ds, profile.interval_ms),
                    gi as u32,
                    i as u32,
                    ds,
                ));
            }
        }
        // Last first, taken from the end: the list gives its memory back as the table fills
        // (a shrink of a mapping is an mremap in place), so it adds nothing to the peak.
        order.sort_unstable_by_key(|&(at, gi, i, _)| std::cmp::Reverse((at, gi, i)));
        while let Some((at, gi, i, ds)) = order.pop() {
            let key = table.insert(&fleet, gi, i, ds);
            wheel.insert(key, at);
            if order.capacity() - order.len() >= ORDER_SHRINK_STEP {
                order.shrink_to_fit();
            }
        }
        let mut sinks: Vec<Option<Sink>> = (0..Protocol::ALL.len()).map(|_| None).collect();
        for proto in fleet.protocols() {
            let sink = Sink::open(proto, &plan.sinks, plan.index, plan.shards, &plan.fleet)
                .map_err(|e| format!("shard {}: cannot open the {proto} sink: {e}", plan.index))?;
            sinks[proto.index()] = Some(sink);
        }
        Ok(Parts { table, wheel, sinks, replay })
    }

    /// Per-device MQTT sessions start with the process, in `connect_rate` turns (device
    /// order), not on each device's first message: the fleet connects before it publishes.
    fn start_sessions(&mut self) {
        let fleet = self.plan.fleet.clone();
        let Some(sink) = &self.sinks[Protocol::Mqtt.index()] else { return };
        if !(0..fleet.profiles.len()).any(|p| sink.per_device(p)) {
            return;
        }
        let mut id = String::with_capacity(64);
        for g in &fleet.groups {
            let profile = &fleet.profiles[g.profile];
            if !sink.per_device(g.profile) {
                continue;
            }
            for i in 0..g.count {
                g.device_id(profile, i, &mut id);
                if self.plan.shards > 1
                    && owner_shard(profile, &id, &g.labels, self.plan.shards) != self.plan.index
                {
                    continue;
                }
                let hash = match profile.format.sparkplug() {
                    // One session per edge node, keyed by the node.
                    Some(spec) => self.sparkplug.locate(spec, &id, &profile.device_type, &g.labels),
                    None => device_hash(profile, &id),
                };
                sink.start_session(g.profile, hash, &id, &g.labels);
            }
        }
    }

    fn assemble(mut plan: ShardPlan, parts: Parts) -> Shard {
        let Parts { table, wheel, sinks, replay } = parts;
        let ctl = inbox::Control::new(plan.control.take());
        let scn = plan.scenario.take().map(|s| timeline::ScenarioCursor::new(s, plan.start_ms));
        let mut stats = ShardStats::new(plan.fleet.profiles.len());
        if let Some(c) = &scn {
            stats.phases = (0..c.phase_bounds.len())
                .map(|_| {
                    (0..plan.fleet.profiles.len()).map(|_| stats::ProfileStats::new()).collect()
                })
                .collect();
        }
        Shard {
            timer: None,
            ctl,
            scn,
            stats,
            interval_latency: stats::histogram(),
            pinned: false,
            table,
            wheel,
            sinks,
            samples: Vec::with_capacity(16),
            payload: Vec::with_capacity(512),
            topic: Vec::with_capacity(128),
            id: String::with_capacity(64),
            due: Vec::with_capacity(1024),
            step_log: StepLog::default(),
            event_samples: Vec::with_capacity(8),
            sparkplug: Default::default(),
            replay,
            plan,
        }
    }

    /// Runs until the end time or the stop flag, flushes the sinks and returns the figures.
    pub async fn run(mut self) -> Result<ShardOutcome, String> {
        for s in self.sinks.iter_mut().flatten() {
            s.start().map_err(|e| {
                format!("shard {}: cannot start the {} sink: {e}", self.plan.index, s.name())
            })?;
        }
        self.start_sessions();
        let sim_end = match self.plan.clock {
            ClockMode::Virtual => self.run_virtual().await,
            ClockMode::Realtime => self.run_realtime().await?,
        };
        for s in self.sinks.iter_mut().flatten() {
            if let Err(e) = s.flush() {
                tracing::warn!(shard = self.plan.index, sink = s.name(), error = %e, "flush at shutdown failed");
            }
        }
        self.account_lost();
        self.settle_service(None);
        // Network sinks: wait for what is queued or in flight, then fold their figures in.
        // A run stopped by a signal should exit within a few seconds, so it drains for less.
        let drain_ns = if self.plan.stop.load(Ordering::Relaxed) {
            DRAIN_ON_STOP_NS
        } else {
            DRAIN_TIMEOUT_NS
        };
        for s in self.sinks.iter().flatten() {
            if let Some(net) = s.net_shared() {
                net.drain(drain_ns).await;
            }
        }
        for s in self.sinks.iter().flatten() {
            if let Some(own) = s.own_stats() {
                for (a, b) in self.stats.profiles.iter_mut().zip(&own) {
                    a.merge(b);
                }
            }
            if let Some(own) = s.own_phase_stats() {
                for (a, b) in self.stats.phases.iter_mut().zip(&own) {
                    for (x, y) in a.iter_mut().zip(b) {
                        x.merge(y);
                    }
                }
            }
            if let Some(net) = s.net_shared() {
                for (k, v) in net.events.borrow().iter() {
                    *self.stats.sink_events.entry(format!("{}.{k}", s.name())).or_insert(0) += v;
                }
            }
        }
        self.snapshot(sim_end);
        if let Some(c) = &self.scn {
            self.stats.step_lateness = c.lateness.clone();
        }
        Ok(ShardOutcome {
            stats: self.stats,
            sim_end_ms: sim_end,
            pinned: self.pinned,
            fleet: self.plan.fleet.clone(),
        })
    }

    async fn run_virtual(&mut self) -> SimMs {
        let mut networked = self.sinks.iter().flatten().any(|s| s.net_shared().is_some());
        let end = self.plan.end_ms.unwrap_or(u64::MAX);
        // Readiness (`/readyz`) and `/metrics` see this shard from its first turn on.
        self.publish_figures();
        let mut last_snapshot = mono_ns();
        let step = self.plan.sample_every_ms;
        let mut next_sample = self.plan.start_ms.saturating_add(step);
        let mut turns = 0u32;
        // Messages handed to network sinks since the sinks' tasks last ran.
        let mut since_yield = 0usize;
        loop {
            turns = turns.wrapping_add(1);
            // A sim-time step passed (one compare per wheel slot, not per message).
            let sim = self.wheel.elapsed();
            let step_due = step > 0
                && sim >= next_sample
                && self.plan.progress.len() * 2 < self.plan.progress.capacity().unwrap_or(2);
            if step_due || turns.is_multiple_of(64) {
                if self.plan.stop.load(Ordering::Relaxed) {
                    return sim;
                }
                self.drain_commands();
                let now = mono_ns();
                if now - last_snapshot >= SNAPSHOT_EVERY_NS || step_due {
                    last_snapshot = now;
                    if step > 0 && sim >= next_sample {
                        next_sample = sim - (sim - self.plan.start_ms) % step + step;
                    }
                    self.snapshot(sim);
                }
            }
            let next = self.wheel.next_expiration();
            // Scenario steps take effect before the devices due at their time tick.
            if let Some(at) = self.scenario_next_at()
                && at < end
                && next.is_none_or(|t| at <= t)
            {
                self.apply_scenario(at, None);
                // A spawn may have opened a network sink.
                networked = self.sinks.iter().flatten().any(|s| s.net_shared().is_some());
                continue;
            }
            let Some(t) = next else {
                // A scenario's run lasts its duration even when no device is left.
                return if self.scn.is_some() && end < u64::MAX {
                    end
                } else {
                    self.wheel.elapsed()
                };
            };
            if t >= end {
                return end;
            }
            let mut due = std::mem::take(&mut self.due);
            self.wheel.poll(t, &mut due);
            // Messages of one slot are handled back to back, so each one's handling starts
            // when the previous one completed: one clock read per message.
            let mut started_ns = mono_ns();
            for (i, &(key, at)) in due.iter().enumerate() {
                self.prefetch(&due, i);
                if networked && self.net_congested() {
                    // Virtual time waits for the network instead of dropping.
                    self.wait_net_room().await;
                    started_ns = mono_ns();
                }
                started_ns = self.tick(key, at, None, started_ns);
            }
            since_yield += due.len();
            due.clear();
            self.due = due;
            // The sinks' tasks run on this thread: let them write what the last turns queued.
            // Not after every wheel turn: a virtual run's turns are sparse (a few messages
            // each), and a yield per turn meant a write syscall per one or two messages; a
            // batch of turns makes one write per connection carry many.
            if networked && (since_yield >= VIRTUAL_YIELD_EVERY || self.net_congested()) {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    async fn run_realtime(&mut self) -> Result<SimMs, String> {
        let end = self.plan.end_ms.unwrap_or(u64::MAX);
        let mut timer = self
            .timer
            .take()
            .unwrap_or_else(PreciseTimer::new)
            .map_err(|e| format!("shard {}: timerfd: {e}", self.plan.index))?;
        // Readiness (`/readyz`) and `/metrics` see this shard from its first turn on.
        self.publish_figures();
        let mut last_snapshot = mono_ns();
        let mut last_flush = last_snapshot;
        let mut pace = pace::Pace::new();
        loop {
            if self.plan.stop.load(Ordering::Relaxed) {
                return Ok(self.sim_at(mono_ns()).min(end));
            }
            let now_ns = mono_ns();
            let sim_now = self.sim_at(now_ns);
            // Scenario steps due by now are queued (and worked through under the tick budget
            // below, like gRPC commands); their lateness is measured here.
            if self.scn.is_some() {
                self.apply_scenario(sim_now.min(end.saturating_sub(1)), Some(now_ns));
            }
            self.drain_commands();
            let turn_ns = now_ns;
            let mut due = std::mem::take(&mut self.due);
            self.wheel.poll(sim_now.min(end.saturating_sub(1)), &mut due);
            for (n, &(key, at)) in due.iter().enumerate() {
                self.prefetch(&due, n);
                self.tick(key, at, Some(self.wall_at(at)), mono_ns());
                if n % 4096 == 4095 {
                    // A large backlog must not starve the sinks' tasks on this thread.
                    tokio::task::yield_now().await;
                }
            }
            pace.note(turn_ns, due.len());
            due.clear();
            self.due = due;
            if sim_now >= end && self.wheel.next_expiration().is_none_or(|t| t >= end) {
                // Everything intended before the end has been sent, however late.
                return Ok(end);
            }
            let now_ns = mono_ns();
            if let Some(Sink::Console(c)) = &mut self.sinks[Protocol::Console.index()] {
                let _ = c.flush();
            }
            if now_ns - last_flush >= FILE_FLUSH_EVERY_NS {
                last_flush = now_ns;
                if let Some(s) = &mut self.sinks[Protocol::File.index()] {
                    let _ = s.flush();
                }
            }
            if now_ns - last_snapshot >= SNAPSHOT_EVERY_NS {
                last_snapshot = now_ns;
                self.snapshot(sim_now);
            }
            let next = match (self.wheel.next_expiration(), self.scenario_next_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next_ns = match next {
                Some(t) => self.wall_at(t.min(end)),
                None => self.wall_at(end),
            };
            // Whole wall milliseconds only, one more while the shard is lightly loaded, never
            // sooner than `timer_slack` after this turn began (`pace.rs`).
            let deadline = if self.ctl.busy() {
                now_ns
            } else {
                pace.deadline(next_ns, self.plan.wall_origin_ns, turn_ns, self.plan.timer_slack_ns)
                    .min(now_ns + MAX_SLEEP_NS)
            };
            if deadline.saturating_sub(mono_ns()) < MIN_SLEEP_NS {
                // Closer than a timer wake-up's own cost: stay awake, but let other tasks run.
                tokio::task::yield_now().await;
                continue;
            }
            if self.sinks.iter().flatten().all(|s| s.net_shared().is_none()) {
                // No network sink, so no task of this thread's runtime has anything to wait
                // for: one `clock_nanosleep` instead of the runtime's timerfd, epoll and read
                // (a light fleet's CPU is mostly its wake-ups; see `pace.rs`).
                crate::measure::clock::sleep_until(deadline);
                continue;
            }
            timer
                .sleep_until(deadline)
                .await
                .map_err(|e| format!("shard {}: timer: {e}", self.plan.index))?;
        }
    }

    /// Sim time at monotonic time `ns` (realtime clock).
    fn sim_at(&self, ns: u64) -> SimMs {
        let elapsed_ns = ns.saturating_sub(self.plan.wall_origin_ns);
        let sim_elapsed_ms = if self.plan.speed == 1.0 {
            elapsed_ns / 1_000_000
        } else {
            (elapsed_ns as f64 * self.plan.speed / 1e6 + 1e-6) as u64
        };
        self.plan.start_ms + sim_elapsed_ms
    }

    /// Monotonic time at which sim time `t` is reached (realtime clock).
    fn wall_at(&self, t: SimMs) -> u64 {
        let sim_elapsed_ms = t.saturating_sub(self.plan.start_ms);
        if self.plan.speed == 1.0 {
            self.plan.wall_origin_ns.saturating_add(sim_elapsed_ms.saturating_mul(1_000_000))
        } else {
            let ns = sim_elapsed_ms as f64 * 1e6 / self.plan.speed;
            self.plan.wall_origin_ns.saturating_add(ns.min(u64::MAX as f64 / 2.0) as u64)
        }
    }

    /// One device tick: generate, encode, hand to the sink, record, re-arm.
    /// `intended_ns` is the tick's intended monotonic time (realtime only); `fire_ns` is when
    /// handling it began. Returns the monotonic time at which it completed.
    ///
    /// A profile with a behaviour (`sim/behaviour.rs`) first asks where the device is (down or
    /// asleep: re-armed at its return, no sample), delivers its due events after the faults
    /// allowed publishing, and in on_change mode publishes the sample only when it changed.
    fn tick(&mut self, key: u32, due: SimMs, intended_ns: Option<u64>, fire_ns: u64) -> u64 {
        let Some((due, intended_ns)) = self.control_gate(key, due, intended_ns) else {
            return fire_ns;
        };
        let fleet = &*self.plan.fleet;
        let Some(dev) = self.table.get(key) else { return fire_ns };
        let (group_ix, index) = (dev.group as usize, dev.index as u64);
        let group = &fleet.groups[group_ix];
        let profile_ix = group.profile;
        let profile = &fleet.profiles[profile_ix];
        if let Some(intended) = intended_ns {
            let late_us = fire_ns.saturating_sub(intended) / 1000;
            stats::record(&mut self.stats.lateness, late_us);
            self.ctl.lateness_max_us = self.ctl.lateness_max_us.max(late_us);
        }
        let behaviour = &profile.behaviour;
        let plain = behaviour.is_plain();
        if !plain && behaviour.has_presence() {
            let end = self.plan.end_ms.unwrap_or(u64::MAX);
            let Some(block) = self.table.block_mut(fleet, key) else { return fire_ns };
            let presence = behaviour.step(block, due, end, &mut self.step_log);
            let st = &mut self.stats.profiles[profile_ix];
            st.offline_ms += self.step_log.offline_ms;
            st.asleep_ms += self.step_log.asleep_ms;
            if !self.step_log.went_down.is_empty() || !self.step_log.came_up.is_empty() {
                group.device_id(profile, index, &mut self.id);
                self.emit_availability(group, profile);
                if let Some(&(down, _)) = self.step_log.went_down.first()
                    && profile.format.sparkplug().is_some()
                {
                    self.sparkplug_death(group_ix, down, intended_ns, fire_ns);
                } else {
                    self.availability_session(profile, due);
                }
            }
            if let Presence::Away { until, on_grid } = presence {
                let interval = self.table.get(key).map_or(1, |d| d.interval_ms.max(1) as u64);
                let at =
                    if on_grid { due + (until - due).div_ceil(interval) * interval } else { until };
                self.wheel.insert(key, at);
                return mono_ns();
            }
        }
        // Borrowed again: a Sparkplug DDEATH above needed the whole shard (no `Arc` clone per
        // tick: the fleet's count is shared by every shard's core).
        let fleet = &*self.plan.fleet;
        let group = &fleet.groups[group_ix];
        let profile = &fleet.profiles[profile_ix];
        let behaviour = &profile.behaviour;
        // A replay device publishes its row scheduled at `due` and is re-armed at its next.
        let mut replay_next = None;
        let (seq, nonfinite) = match &profile.replay {
            Some(spec) => {
                let (took, next) = self.replay.take(key, due);
                if !took {
                    if let Some(t) = next {
                        self.wheel.insert(key, t);
                    }
                    return mono_ns();
                }
                replay_next = Some(next);
                spec.samples(profile, &self.replay.out, &mut self.samples);
                (self.table.next_seq(key), 0)
            }
            None => self.table.generate(fleet, key, due, &mut self.samples),
        };
        {
            let st = &mut self.stats.profiles[profile_ix];
            st.samples += 1;
            st.nonfinite += nonfinite as u64;
        }
        group.device_id(profile, index, &mut self.id);
        let (fx, expired) = self.ctl.states.effects(
            key,
            due,
            seq,
            || device_seed(self.plan.seed, &self.id),
            profile,
            &mut self.samples,
        );
        for kind in expired {
            if matches!(kind, crate::sim::fault::FaultKind::Disconnect) {
                self.release_session(profile, &self.id);
            }
            self.ctl.emit(
                &self.id,
                &group.labels,
                event::EventKind::FaultCleared,
                format!("{kind} ended"),
                due,
                vec![
                    ("fault_type", kind.type_name().to_string()),
                    ("device_type", profile.device_type.clone()),
                ],
            );
        }
        // DISCONNECT stops a device's publishing, except for a per-device MQTT session: its
        // connection is really down, so what it produces meanwhile queues in the session
        // (bounded, drop-oldest) and goes out after the reconnect.
        // Not an edge node: a device's fault is its DDEATH, not its node's session's drop.
        let sparkplug = profile.format.sparkplug().is_some();
        let per_device = !fx.publish
            && !sparkplug
            && self.sinks[profile.protocol.index()]
                .as_ref()
                .is_some_and(|s| s.per_device(profile_ix));
        if per_device {
            self.ctl.states.unsuppress();
        }
        if let Some(tap) = &self.plan.excuses {
            if !fx.publish && !per_device {
                tap.note(group_ix, index, tap::Excuse::Suppressed);
            } else if fx.corrupt_bytes.is_some() {
                tap.note(group_ix, index, tap::Excuse::Corrupted);
            } else if fx.values_changed {
                tap.note(group_ix, index, tap::Excuse::Values);
            }
        }
        if !fx.publish && !per_device {
            if sparkplug {
                self.sparkplug_death(group_ix, fx.timestamp, intended_ns, fire_ns);
            }
            if let Some(next) = replay_next {
                if let Some(t) = next {
                    self.wheel.insert(key, t);
                }
                return mono_ns();
            }
            let next = due + self.table.get(key).map_or(1, |d| d.interval_ms as u64);
            self.rearm_after_sample(key, profile_ix, next);
            return mono_ns();
        }
        let mut done_ns = fire_ns;
        // The log is this device's: `step` refilled it above (a profile without presence
        // never reads it).
        let events_due = !plain && behaviour.has_presence() && !self.step_log.events.is_empty();
        if events_due && !sparkplug {
            done_ns = self.send_events(key, group_ix, intended_ns, fire_ns);
        }
        // A Sparkplug device's events are DDATA of its own and follow its DBIRTH: one not born
        // yet publishes this sample (its DBIRTH) whatever its deadbands say.
        let unborn_events = sparkplug && events_due && !self.sparkplug_born(group_ix);
        // Borrowed again: sending events needed the whole shard.
        let fleet = &*self.plan.fleet;
        let group = &fleet.groups[group_ix];
        let profile = &fleet.profiles[profile_ix];
        let behaviour = &profile.behaviour;
        if sparkplug
            && behaviour.report != ReportMode::Periodic
            && let Some(block) = self.table.block_mut(fleet, key)
        {
            // Sparkplug DDATA on change carries only the metrics that moved.
            behaviour.changed_fields(
                &profile.fields,
                block,
                &self.samples,
                &mut self.sparkplug.changed,
            );
        }
        if !plain
            && behaviour.report != ReportMode::Periodic
            && let Some(block) = self.table.block_mut(fleet, key)
            && !behaviour.publishes(block, &self.samples, due)
            && !unborn_events
        {
            if sparkplug && events_due {
                self.sparkplug_events(key, group_ix, intended_ns, done_ns);
            }
            self.stats.profiles[profile_ix].suppressed += 1;
            let interval = self.table.get(key).map_or(1, |d| d.interval_ms.max(1) as u64);
            self.rearm_after_sample(key, profile_ix, due + interval);
            return mono_ns();
        }
        if !self.ctl.streams.is_empty() {
            self.ctl.streams.feed(&self.id, group_ix, group, profile, &self.samples, fx.timestamp);
        }
        if sparkplug {
            let done_ns = self.sparkplug_sample(
                group_ix,
                fx.timestamp,
                fx.corrupt_bytes,
                (intended_ns, due),
                done_ns,
            );
            let done_ns = if events_due {
                self.sparkplug_events(key, group_ix, intended_ns, done_ns)
            } else {
                done_ns
            };
            let profile = &self.plan.fleet.profiles[profile_ix];
            let interval =
                self.table.get(key).map_or(profile.interval_ms, |d| d.interval_ms as u64);
            self.rearm_after_sample(key, profile_ix, due + interval);
            return done_ns;
        }
        payload::encode(
            &mut self.payload,
            &self.id,
            profile,
            fx.timestamp,
            &self.samples,
            (&group.labels, &group.labels_json),
            seq,
        );
        if let Some(word) = fx.corrupt_bytes {
            crate::sim::fault::corrupt_bytes(&mut self.payload, word);
        }
        self.topic.clear();
        profile.topic.render(&mut self.topic, &self.id, &profile.device_type, &group.labels);
        self.stats.profiles[profile_ix].published += 1;
        let device_hash = device_hash(profile, &self.id);
        // A scenario's phases count each message by its intended sim time.
        let phase = self.scn.as_ref().and_then(|c| c.phase_of(due));
        let done_ns = submit(
            &mut self.sinks,
            &mut self.stats,
            &mut self.interval_latency,
            profile,
            profile_ix,
            (&self.topic, &self.payload),
            (device_hash, &self.id, &group.labels),
            (intended_ns, phase),
            // After events, the sample's handling starts when the last event's ended.
            done_ns,
        );
        if let Some(next) = replay_next {
            if let Some(t) = next {
                self.wheel.insert(key, t);
            }
            return done_ns;
        }
        let mut interval =
            self.table.get(key).map_or(profile.interval_ms, |d| d.interval_ms as u64);
        if let Some(sink) = &self.sinks[profile.protocol.index()] {
            interval *= sink.interval_factor(profile_ix, device_hash);
        }
        self.rearm_after_sample(key, profile_ix, due + interval);
        done_ns
    }

    /// A sample of a Sparkplug device (id in `self.id`, values in `self.samples`): first what
    /// its edge node's session received (rebirths, reconnects), then its node's NBIRTH if the
    /// node was not born yet, then its DBIRTH (not born yet) or DDATA. Returns when the last
    /// message was handed over.
    fn sparkplug_sample(
        &mut self,
        group_ix: usize,
        ts: SimMs,
        corrupt: Option<u64>,
        (intended_ns, due): (Option<u64>, SimMs),
        mut done_ns: u64,
    ) -> u64 {
        use crate::sim::sparkplug as sp;
        // Borrowed, not an `Arc` clone per message (the count is shared by every shard's core):
        // everything below borrows other fields of `self`.
        let fleet = &*self.plan.fleet;
        let group = &fleet.groups[group_ix];
        let profile_ix = group.profile;
        let profile = &fleet.profiles[profile_ix];
        let Some(spec) = profile.format.sparkplug() else { return done_ns };
        let phase = self.scn.as_ref().and_then(|c| c.phase_of(due));
        for (hash, what) in
            self.sinks[profile.protocol.index()].as_ref().map_or(vec![], |s| s.take_sparkplug())
        {
            use crate::sink::mqtt::devices::SparkplugIn;
            let reborn = match what {
                SparkplugIn::Rebirth => self.sparkplug.rebirth(hash),
                SparkplugIn::Reconnected => self.sparkplug.reconnected(hash),
                SparkplugIn::Dcmd { device, payload } => {
                    self.sparkplug.write(hash, &device, sp::writes(&payload));
                    None
                }
            };
            let Some(r) = reborn else { continue };
            sp::encode_nbirth(&mut self.payload, ts, r.bd_seq);
            self.topic.clear();
            sp::write_topic(&mut self.topic, &spec.group_id, "NBIRTH", &r.node, None);
            self.stats.profiles[profile_ix].published += 1;
            done_ns = submit(
                &mut self.sinks,
                &mut self.stats,
                &mut self.interval_latency,
                profile,
                profile_ix,
                (&self.topic, &self.payload),
                (hash, &self.id, &group.labels),
                (intended_ns, phase),
                done_ns,
            );
            // Then at once every born device's DBIRTH, with the values it last sent (counted
            // by the device's own profile; handed to the node's session like any of its
            // messages).
            for b in &r.births {
                let Some(bp) = fleet.profiles.get(b.profile) else { continue };
                sp::encode_dbirth(
                    &mut self.payload,
                    ts,
                    b.seq,
                    b.ordinal,
                    &bp.fields,
                    &b.samples,
                    &bp.behaviour.events,
                );
                self.topic.clear();
                sp::write_topic(
                    &mut self.topic,
                    &spec.group_id,
                    "DBIRTH",
                    &r.node,
                    Some(&b.device),
                );
                self.stats.profiles[b.profile].published += 1;
                done_ns = submit(
                    &mut self.sinks,
                    &mut self.stats,
                    &mut self.interval_latency,
                    bp,
                    b.profile,
                    (&self.topic, &self.payload),
                    (hash, &b.device, &group.labels),
                    (intended_ns, phase),
                    done_ns,
                );
            }
        }
        let hash = self.sparkplug.locate(spec, &self.id, &profile.device_type, &group.labels);
        let plan = self.sparkplug.sample(hash, &self.id);
        // The node's name stays in `self.sparkplug.name` (rendered by `locate`, UTF-8).
        if let Some(bd_seq) = plan.nbirth {
            sp::encode_nbirth(&mut self.payload, ts, bd_seq);
            self.topic.clear();
            let name = std::str::from_utf8(&self.sparkplug.name).unwrap_or_default();
            sp::write_topic(&mut self.topic, &spec.group_id, "NBIRTH", name, None);
            self.stats.profiles[profile_ix].published += 1;
            done_ns = submit(
                &mut self.sinks,
                &mut self.stats,
                &mut self.interval_latency,
                profile,
                profile_ix,
                (&self.topic, &self.payload),
                (hash, &self.id, &group.labels),
                (intended_ns, phase),
                done_ns,
            );
        }
        // DCMD writes show in this sample (and are marked changed for on_change DDATA).
        if profile.behaviour.report == ReportMode::Periodic {
            self.sparkplug.changed.clear();
        }
        self.sparkplug.apply_writes(
            hash,
            &self.id,
            plan.ordinal,
            &profile.fields,
            &mut self.samples,
        );
        let kind = if plan.birth {
            sp::encode_dbirth(
                &mut self.payload,
                ts,
                plan.seq,
                plan.ordinal,
                &profile.fields,
                &self.samples,
                &profile.behaviour.events,
            );
            "DBIRTH"
        } else {
            let which = (profile.behaviour.report != ReportMode::Periodic)
                .then_some(self.sparkplug.changed.as_slice());
            sp::encode_ddata(
                &mut self.payload,
                ts,
                plan.seq,
                plan.ordinal,
                &profile.fields,
                &self.samples,
                which,
            );
            "DDATA"
        };
        self.sparkplug.remember(hash, &self.id, profile_ix, &self.samples);
        if let Some(word) = corrupt {
            crate::sim::fault::corrupt_bytes(&mut self.payload, word);
        }
        self.topic.clear();
        let name = std::str::from_utf8(&self.sparkplug.name).unwrap_or_default();
        sp::write_topic(&mut self.topic, &spec.group_id, kind, name, Some(&self.id));
        self.stats.profiles[profile_ix].published += 1;
        submit(
            &mut self.sinks,
            &mut self.stats,
            &mut self.interval_latency,
            profile,
            profile_ix,
            (&self.topic, &self.payload),
            (hash, &self.id, &group.labels),
            (intended_ns, phase),
            done_ns,
        )
    }

    /// Whether the Sparkplug device in `self.id` (of group `group_ix`) is born.
    fn sparkplug_born(&mut self, group_ix: usize) -> bool {
        let fleet = &*self.plan.fleet;
        let group = &fleet.groups[group_ix];
        let profile = &fleet.profiles[group.profile];
        let Some(spec) = profile.format.sparkplug() else { return false };
        let hash = self.sparkplug.locate(spec, &self.id, &profile.device_type, &group.labels);
        self.sparkplug.born(hash, &self.id).is_some()
    }

    /// The events in `step_log` of the Sparkplug device in `self.id`, after its sample: each a
    /// DDATA at the event's time with the `event` metric and the event's fields (declared by
    /// its DBIRTH), in its node's `seq`. A device not born (dead) sends none. Returns when the
    /// last was handed over.
    fn sparkplug_events(
        &mut self,
        key: u32,
        group_ix: usize,
        intended_ns: Option<u64>,
        mut done_ns: u64,
    ) -> u64 {
        use crate::sim::sparkplug as sp;
        // Events are rare: the `Arc` clone lets the loop borrow the whole shard.
        let fleet = self.plan.fleet.clone();
        let group = &fleet.groups[group_ix];
        let profile_ix = group.profile;
        let profile = &fleet.profiles[profile_ix];
        let Some(spec) = profile.format.sparkplug() else { return done_ns };
        let hash = self.sparkplug.locate(spec, &self.id, &profile.device_type, &group.labels);
        let Some(ordinal) = self.sparkplug.born(hash, &self.id) else { return done_ns };
        let node = String::from_utf8_lossy(&self.sparkplug.name).into_owned();
        let log = std::mem::take(&mut self.step_log);
        let mut samples = std::mem::take(&mut self.event_samples);
        let events = &profile.behaviour.events;
        for &(ei, at) in &log.events {
            let ei = ei as usize;
            if ei >= events.len() {
                continue;
            }
            self.table.generate_event(&fleet, key, ei, at, &mut samples);
            let seq = self.sparkplug.next_seq(hash);
            sp::encode_event(
                &mut self.payload,
                at,
                seq,
                ordinal,
                profile.fields.len(),
                events,
                ei,
                &samples,
            );
            self.topic.clear();
            sp::write_topic(&mut self.topic, &spec.group_id, "DDATA", &node, Some(&self.id));
            self.stats.profiles[profile_ix].count_event(ei);
            let phase = self.scn.as_ref().and_then(|c| c.phase_of(at));
            done_ns = submit(
                &mut self.sinks,
                &mut self.stats,
                &mut self.interval_latency,
                profile,
                profile_ix,
                (&self.topic, &self.payload),
                (hash, &self.id, &group.labels),
                (intended_ns, phase),
                done_ns,
            );
        }
        self.step_log = log;
        self.event_samples = samples;
        done_ns
    }

    /// A Sparkplug device (id in `self.id`) stops, goes offline or is disconnected by a fault
    /// at `ts`: its DDEATH, once (until it is born again). Returns when it was handed over.
    pub(crate) fn sparkplug_death(
        &mut self,
        group_ix: usize,
        ts: SimMs,
        intended_ns: Option<u64>,
        fire_ns: u64,
    ) -> u64 {
        use crate::sim::sparkplug as sp;
        let fleet = self.plan.fleet.clone();
        let group = &fleet.groups[group_ix];
        let profile_ix = group.profile;
        let profile = &fleet.profiles[profile_ix];
        let Some(spec) = profile.format.sparkplug() else { return fire_ns };
        let hash = self.sparkplug.locate(spec, &self.id, &profile.device_type, &group.labels);
        let Some(seq) = self.sparkplug.death(hash, &self.id) else { return fire_ns };
        let node = String::from_utf8_lossy(&self.sparkplug.name).into_owned();
        sp::encode_ddeath(&mut self.payload, ts, seq);
        self.topic.clear();
        sp::write_topic(&mut self.topic, &spec.group_id, "DDEATH", &node, Some(&self.id));
        self.stats.profiles[profile_ix].published += 1;
        let phase = self.scn.as_ref().and_then(|c| c.phase_of(ts));
        submit(
            &mut self.sinks,
            &mut self.stats,
            &mut self.interval_latency,
            profile,
            profile_ix,
            (&self.topic, &self.payload),
            (hash, &self.id, &group.labels),
            (intended_ns, phase),
            fire_ns,
        )
    }

    /// Re-arms a device that took a sample at its grid's `next` tick, or (a sleeper whose
    /// window ends before it) at the start of its next window: see
    /// [`Behaviour::after_sample`](crate::sim::behaviour::Behaviour::after_sample).
    fn rearm_after_sample(&mut self, key: u32, profile_ix: usize, next: SimMs) {
        let fleet = &*self.plan.fleet;
        let behaviour = &fleet.profiles[profile_ix].behaviour;
        let mut at = next;
        if behaviour.sleep.is_some()
            && let Some(block) = self.table.block_mut(fleet, key)
        {
            let end = self.plan.end_ms.unwrap_or(u64::MAX);
            let asleep_ms;
            (at, asleep_ms) = behaviour.after_sample(block, next, end);
            self.stats.profiles[profile_ix].asleep_ms += asleep_ms;
        }
        self.wheel.insert(key, at);
    }

    /// Publishes the events `step_log` holds for device `key` (whose id is in `self.id`), each
    /// with its own time and fields, on the event's topic. Returns when the last completed.
    fn send_events(
        &mut self,
        key: u32,
        group_ix: usize,
        intended_ns: Option<u64>,
        fire_ns: u64,
    ) -> u64 {
        let fleet = self.plan.fleet.clone();
        let group = &fleet.groups[group_ix];
        let profile_ix = group.profile;
        let profile = &fleet.profiles[profile_ix];
        let log = std::mem::take(&mut self.step_log);
        let mut samples = std::mem::take(&mut self.event_samples);
        let device_hash = device_hash(profile, &self.id);
        let mut done_ns = fire_ns;
        for &(ei, at) in &log.events {
            let spec = &profile.behaviour.events[ei as usize];
            self.table.generate_event(&fleet, key, ei as usize, at, &mut samples);
            payload::encode_event(
                &mut self.payload,
                &self.id,
                profile,
                spec,
                at,
                &samples,
                (&group.labels, &group.labels_json),
            );
            self.topic.clear();
            spec.topic.render(&mut self.topic, &self.id, &profile.device_type, &group.labels);
            self.stats.profiles[profile_ix].count_event(ei as usize);
            let phase = self.scn.as_ref().and_then(|c| c.phase_of(at));
            done_ns = submit(
                &mut self.sinks,
                &mut self.stats,
                &mut self.interval_latency,
                profile,
                profile_ix,
                (&self.topic, &self.payload),
                (device_hash, &self.id, &group.labels),
                (intended_ns, phase),
                done_ns,
            );
        }
        self.step_log = log;
        self.event_samples = samples;
        done_ns
    }

    /// Tells StreamEvents subscribers that the device (id in `self.id`) went offline or came
    /// back, as `step_log` says.
    fn emit_availability(&self, group: &crate::sim::profile::Group, profile: &Profile) {
        let meta = || {
            vec![
                ("cause", "availability".to_string()),
                ("device_type", profile.device_type.clone()),
            ]
        };
        for &(down, back) in &self.step_log.went_down {
            self.ctl.emit(
                &self.id,
                &group.labels,
                event::EventKind::Offline,
                format!("offline until {}", crate::sim::time::rfc3339_ms(back)),
                down,
                meta(),
            );
        }
        for &back in &self.step_log.came_up {
            self.ctl.emit(
                &self.id,
                &group.labels,
                event::EventKind::Online,
                "back online".into(),
                back,
                meta(),
            );
        }
    }

    /// Two-stage prefetch for the `i`-th due device: device structs far ahead, then their
    /// generator state and wheel node (which needs the device) nearer. With a million devices
    /// each of these is otherwise a cache miss on the critical path.
    #[inline]
    fn prefetch(&self, due: &[(u32, SimMs)], i: usize) {
        if let Some(&(far, _)) = due.get(i + PREFETCH_DEVICE_AHEAD) {
            self.table.prefetch_device(far);
        }
        if let Some(&(near, _)) = due.get(i + PREFETCH_AHEAD) {
            self.table.prefetch_state(near);
            self.wheel.prefetch(near);
        }
    }

    fn net_congested(&self) -> bool {
        self.sinks.iter().flatten().any(|s| s.net_shared().is_some_and(|n| n.congested()))
    }

    /// Waits until every network sink's queues have room again — or until the run is stopped:
    /// a broker that stays down must not keep a virtual run from answering Ctrl-C.
    async fn wait_net_room(&self) {
        loop {
            if self.plan.stop.load(Ordering::Relaxed) {
                return;
            }
            let all = async {
                for s in self.sinks.iter().flatten() {
                    if let Some(n) = s.net_shared() {
                        n.wait_room().await;
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_millis(100), all).await.is_ok() {
                return;
            }
        }
    }

    /// Messages, errors and drops recorded by network sinks (not yet folded into `stats`).
    fn net_totals(&self) -> Counters {
        let mut t = Counters::default();
        for s in self.sinks.iter().flatten() {
            if let Some(n) = s.net_shared() {
                t += n.stats.borrow().iter().map(|p| p.counts).sum::<Counters>();
            }
        }
        t
    }

    /// Moves the messages a failed file write lost from delivered to errors (kind `write`):
    /// the file sink counts a message as delivered when it is buffered.
    fn account_lost(&mut self) {
        for s in self.sinks.iter_mut().flatten() {
            for (profile, n) in s.take_lost() {
                if let Some(st) = self.stats.profiles.get_mut(profile) {
                    st.counts.messages = st.counts.messages.saturating_sub(n);
                    st.counts.errors += n;
                    *st.error_kinds.entry("write".to_string()).or_insert(0) += n;
                }
            }
        }
    }

    /// On the virtual clock, `submit` records a message's service time only in the latency
    /// histogram (they are the same there): this adds it to the service histogram of profile
    /// `only` (else of every profile), scenario phases too, just before those statistics leave
    /// the shard. Once per statistics: they are taken right after.
    pub(crate) fn settle_service(&mut self, only: Option<usize>) {
        if self.plan.clock != ClockMode::Virtual {
            return;
        }
        let phases = self.stats.phases.iter_mut();
        for per_profile in std::iter::once(&mut self.stats.profiles).chain(phases) {
            for (i, st) in per_profile.iter_mut().enumerate() {
                if only.is_none_or(|ix| ix == i) {
                    st.service.add(&st.latency);
                }
            }
        }
    }

    fn snapshot(&mut self, sim_now: SimMs) {
        self.account_lost();
        let net = self.net_totals();
        for s in self.sinks.iter().flatten() {
            if let Some(n) = s.net_shared() {
                let mut w = n.window.borrow_mut();
                let _ = self.interval_latency.add(&*w);
                w.reset();
            }
        }
        let snap = Snapshot {
            shard: self.plan.index,
            devices: self.table.len(),
            counts: self.stats.counts() + net,
            sim_now_ms: sim_now,
            latency: std::mem::replace(&mut self.interval_latency, stats::histogram()),
            lateness: (self.plan.clock == ClockMode::Realtime).then(|| self.stats.lateness.clone()),
            sink_events: self
                .sinks
                .iter()
                .flatten()
                .filter_map(|s| s.net_shared())
                .map(|n| n.events.borrow().values().sum::<u64>())
                .sum(),
            faults_active: self.ctl.states.faults_active(),
        };
        let _ = self.plan.progress.try_send(snap);
        self.publish_figures();
        self.log_sink_pressure();
    }
}

impl Shard {
    /// DISCONNECT on device `id`, injected at sim time `now`: drops its per-device MQTT
    /// session (if it has one). Abrupt and graceful keep it down until the fault's end (the
    /// session reconnects by itself then, in realtime: the device's next tick may be an
    /// interval away) or [`Shard::release_session`]; a storm lets it back at once.
    pub(crate) fn drop_session(
        &self,
        profile: &Profile,
        id: &str,
        spec: &crate::sim::fault::FaultSpec,
        now: SimMs,
    ) {
        use crate::sim::fault::DisconnectMode as M;
        use crate::sink::mqtt::devices::{Drop, Hold};
        let Some(sink) = &self.sinks[profile.protocol.index()] else { return };
        let until = if spec.duration_ms > 0 && self.plan.clock == ClockMode::Realtime {
            Hold::Until(self.wall_at(now.saturating_add(spec.duration_ms)))
        } else {
            // Until cleared, or (virtual clock) until the tick finds the fault over.
            Hold::Released
        };
        let (how, hold) = match spec.disconnect {
            M::Abrupt => (Drop::Abrupt, until),
            M::Graceful => (Drop::Graceful, until),
            M::Storm => (Drop::Abrupt, Hold::No),
        };
        sink.drop_sessions(&[device_hash(profile, id)], how, hold);
    }

    /// Availability (`step_log`, device id in `self.id`): a device that went down drops its
    /// per-device MQTT session abruptly (the broker publishes its will) and stays down; one
    /// that is up again (at `due`, its tick) reconnects. An outage that began and ended between
    /// two ticks is a drop and an immediate reconnect.
    fn availability_session(&self, profile: &Profile, due: SimMs) {
        let Some(sink) = &self.sinks[profile.protocol.index()] else { return };
        let log = &self.step_log;
        let hash = device_hash(profile, &self.id);
        if !log.went_down.is_empty() {
            sink.drop_sessions(
                &[hash],
                crate::sink::mqtt::devices::Drop::Abrupt,
                crate::sink::mqtt::devices::Hold::Released,
            );
        }
        let down_now = matches!(log.went_down.last(), Some(&(_, back)) if back > due);
        if !down_now {
            sink.release_sessions(&[hash]);
        }
    }

    /// DISCONNECT ended or was cleared: device `id`'s session may reconnect.
    pub(crate) fn release_session(&self, profile: &Profile, id: &str) {
        if let Some(sink) = &self.sinks[profile.protocol.index()] {
            sink.release_sessions(&[device_hash(profile, id)]);
        }
    }
}

/// The shard of a device: its id's, or for a Sparkplug profile its edge node's (every device
/// of a node on the shard that holds the node's state and session, whatever `--cores` is).
pub(crate) fn owner_shard(
    profile: &Profile,
    id: &str,
    labels: &std::collections::BTreeMap<String, String>,
    shards: usize,
) -> usize {
    match profile.format.sparkplug() {
        Some(spec) => {
            let mut node = spec.group_id.clone().into_bytes();
            node.push(b'/');
            spec.edge_node.render(&mut node, id, &profile.device_type, labels);
            seed::shard_of(&String::from_utf8_lossy(&node), shards)
        }
        None => seed::shard_of(id, shards),
    }
}

/// The hash network sinks pick a connection by (0 for the others, which do not use it).
#[inline]
fn device_hash(profile: &Profile, id: &str) -> u64 {
    if profile.protocol.is_network() { seed::fnv1a64(id.as_bytes()) } else { 0 }
}

/// Hands one message to the profile's sink and records what completed at once (also in the
/// scenario phase `phase`); returns the monotonic time at which it did.
#[allow(clippy::too_many_arguments)]
#[inline]
fn submit(
    sinks: &mut [Option<Sink>],
    stats: &mut ShardStats,
    interval_latency: &mut hdrhistogram::Histogram<u64>,
    profile: &Profile,
    profile_ix: usize,
    (topic, payload): (&[u8], &[u8]),
    (device_hash, device_id, labels): (u64, &str, &std::collections::BTreeMap<String, String>),
    (intended_ns, phase): (Option<u64>, Option<usize>),
    fire_ns: u64,
) -> u64 {
    let outcome = match &mut sinks[profile.protocol.index()] {
        Some(sink) => sink.submit(&Message {
            topic,
            payload,
            profile: profile_ix,
            device_hash,
            device_id,
            labels,
            intended_ns: intended_ns.unwrap_or(fire_ns),
            phase: phase.map_or(crate::sink::net::NO_PHASE, |p| p as u16),
            wire: profile.format.wire,
            device_type: &profile.device_type,
            mqtt5: profile.delivery.mqtt5.as_deref(),
        }),
        None => Submitted::Failed,
    };
    let done_ns = mono_ns();
    let bytes = payload.len() as u64;
    // Realtime: from the intended time. Virtual: sim time does not pass while a message is
    // handled, so latency is the sink's own service time.
    let latency_us = done_ns.saturating_sub(intended_ns.unwrap_or(fire_ns)) / 1000;
    let service_us = done_ns.saturating_sub(fire_ns) / 1000;
    let record = |st: &mut stats::ProfileStats| match outcome {
        Submitted::Completed => {
            st.counts.messages += 1;
            st.bytes += bytes;
            st.latency.record(latency_us);
            // Virtual clock (no intended time): the service time is the latency, added to the
            // service histogram once when the statistics leave the shard
            // (`Shard::settle_service`), not recorded twice per message.
            if intended_ns.is_some() {
                st.service.record(service_us);
            }
        }
        Submitted::Failed => st.counts.errors += 1,
        Submitted::Pending => {}
    };
    record(&mut stats.profiles[profile_ix]);
    if let Some(ph) = phase {
        record(&mut stats.phases[ph][profile_ix]);
    }
    if outcome == Submitted::Completed {
        stats::record(interval_latency, latency_us);
    }
    done_ns
}
