//! What every network sink shares: per-connection bounded queues of unsent messages, the
//! backpressure policy, and the completion recorder.
//!
//! Everything here lives on the shard's thread (`Rc`, `RefCell`, `Cell`): the shard's tick
//! pushes into a connection's queue and returns at once; the connection's tasks (spawned on
//! the shard's `LocalSet`) pop, send, and record completions. A shard never waits on a sink in
//! realtime; in virtual time it waits for room instead of dropping (the sink paces the clock).

use crate::config::Backoff;
use crate::measure::clock::mono_ns;
use crate::measure::stats::ProfileStats;
use crate::sim::profile::{Backpressure, Fleet};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use tokio::sync::Notify;

/// A message waiting for (or in) transmission.
#[derive(Clone, Debug)]
pub struct Queued {
    pub topic: String,
    /// Shared, so that keeping a copy for a retry costs a reference count.
    pub payload: bytes::Bytes,
    pub profile: u16,
    /// Monotonic time the message was meant to be sent (realtime) or handed over (virtual).
    pub intended_ns: u64,
    /// Monotonic time it was handed to the protocol client (set by the connection task).
    pub sent_ns: u64,
    pub device_hash: u64,
    /// The scenario phase the message's intended time falls in ([`NO_PHASE`]: none).
    pub phase: u16,
    /// The payload's kind and content type.
    pub wire: crate::sim::format::Wire,
    /// MQTT 5 PUBLISH properties (`[profiles.X.mqtt5]` on an MQTT 5 sink; else empty).
    pub mqtt5: crate::sink::mqtt::session::Props,
}

/// `Queued::phase` of a message outside every scenario phase.
pub const NO_PHASE: u16 = u16::MAX;

/// One connection's queue of unsent messages.
pub struct ConnQueue {
    items: RefCell<VecDeque<Queued>>,
    cap: usize,
    /// Wakes the connection task when a message arrives (a permit is kept if it is busy).
    pub wake: Notify,
    /// Wakes whoever waits for the queue to fall below half full.
    pub room: Notify,
    slowed: Cell<bool>,
    /// A wake-up was sent and the queue was not popped since: the task is awake or holds a
    /// permit, so the next message needs none (one wake per wheel turn, not per message).
    /// Every consumer pops until the queue is empty (or its window is full) before it waits.
    wake_sent: Cell<bool>,
    /// Someone awaits `room` ([`NetShared::wait_room`]): only then does `pop` notify.
    room_wanted: Cell<bool>,
    /// Messages handed to the protocol client and not yet completed.
    pub inflight: Cell<usize>,
    pub connected: Cell<bool>,
}

impl ConnQueue {
    fn new(cap: usize) -> ConnQueue {
        ConnQueue {
            items: RefCell::new(VecDeque::with_capacity(cap.min(4096))),
            cap,
            wake: Notify::new(),
            room: Notify::new(),
            slowed: Cell::new(false),
            wake_sent: Cell::new(false),
            room_wanted: Cell::new(false),
            inflight: Cell::new(0),
            connected: Cell::new(false),
        }
    }

    pub fn len(&self) -> usize {
        self.items.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.borrow().is_empty()
    }

    /// The profile of the oldest unsent message (to check its QoS before taking it).
    pub fn front_profile(&self) -> Option<u16> {
        self.items.borrow().front().map(|m| m.profile)
    }

    /// Takes the oldest unsent message.
    pub fn pop(&self) -> Option<Queued> {
        let m = self.items.borrow_mut().pop_front();
        self.wake_sent.set(false);
        if m.is_some() && self.len() * 2 < self.cap {
            self.slowed.set(false);
            if self.room_wanted.replace(false) {
                self.room.notify_waiters();
            }
        }
        m
    }

    /// Puts a message back at the front (it could not be sent yet).
    pub fn push_front(&self, m: Queued) {
        self.items.borrow_mut().push_front(m);
    }

    fn fill(&self) -> f64 {
        self.len() as f64 / self.cap as f64
    }
}

/// A connection-level happening, forwarded to gRPC `StreamEvents` subscribers by the shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// A connection (re)established: `conn` index, server URL.
    Connected { conn: usize, url: String },
    /// An established connection was lost.
    Disconnected { conn: usize, url: String, error: String },
    /// A connection attempt failed (reported once per outage, not per retry).
    ConnectFailed { conn: usize, url: String, error: String },
    /// A per-device MQTT session connected, or was lost or refused (`detail` says why).
    Session { device_id: String, connected: bool, detail: String },
    /// A per-device MQTT session received a command (downlink PUBLISH); `id` from its JSON.
    Command { device_id: String, topic: String, id: String },
}

/// At most this many connection events wait for the shard to forward them.
const CONN_EVENTS_MAX: usize = 1024;

/// Per-profile outcomes of one network sink on one shard.
pub struct NetShared {
    pub conns: Vec<ConnQueue>,
    pub stats: RefCell<Vec<ProfileStats>>,
    /// The same per scenario phase (`[phase][profile]`), grown as messages of a phase arrive.
    pub phase_stats: RefCell<Vec<Vec<ProfileStats>>>,
    /// Latency of completions since the last progress snapshot (taken by the shard).
    pub window: RefCell<hdrhistogram::Histogram<u64>>,
    /// Connection-level events: `connect_error`, `reconnect`, `disconnect`.
    pub events: RefCell<BTreeMap<&'static str, u64>>,
    /// Connection events not yet forwarded to event subscribers (bounded; oldest kept).
    pub conn_events: RefCell<Vec<ConnEvent>>,
    /// Set at shutdown: connection tasks finish what is queued, then close.
    pub closing: Cell<bool>,
    /// Set when the shutdown drain timed out: tasks count what they still hold as errors of
    /// kind `unconfirmed` and stop. `abandon` wakes them.
    pub abandoned: Cell<bool>,
    pub abandon: Notify,
    pub backoff: Backoff,
    /// Per profile: messages queued or in flight (the shard frees a runtime profile only
    /// when none is left, see `shard/inbox.rs` `retire_profiles`).
    pending: RefCell<Vec<u32>>,
    policies: Vec<Backpressure>,
    name: &'static str,
    shard: usize,
    /// Messages queued or in flight outside `conns` (per-device MQTT sessions).
    extra: Cell<usize>,
    /// MQTT connections open now (pooled connections and per-device sessions); `drain` gives
    /// them a moment to close cleanly (DISCONNECT, so the broker sees a graceful close and
    /// publishes no will at shutdown).
    pub open_sessions: Cell<usize>,
    /// Notified (all waiters) when `closing` is set.
    pub close: Notify,
}

impl NetShared {
    pub fn new(
        name: &'static str,
        shard: usize,
        fleet: &Fleet,
        conns: usize,
        queue_size: usize,
        backoff: Backoff,
    ) -> Rc<NetShared> {
        Rc::new(NetShared {
            conns: (0..conns.max(1)).map(|_| ConnQueue::new(queue_size.max(1))).collect(),
            stats: RefCell::new((0..fleet.profiles.len()).map(|_| ProfileStats::new()).collect()),
            phase_stats: RefCell::new(vec![]),
            window: RefCell::new(crate::measure::stats::histogram()),
            events: RefCell::new(BTreeMap::new()),
            conn_events: RefCell::new(Vec::new()),
            closing: Cell::new(false),
            abandoned: Cell::new(false),
            abandon: Notify::new(),
            backoff,
            pending: RefCell::new(vec![]),
            policies: fleet.profiles.iter().map(|p| p.delivery.backpressure).collect(),
            name,
            shard,
            extra: Cell::new(0),
            open_sessions: Cell::new(0),
            close: Notify::new(),
        })
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The connection a device's messages use.
    pub fn conn_of(&self, device_hash: u64) -> usize {
        (crate::sim::seed::mix64(device_hash) % self.conns.len() as u64) as usize
    }

    /// Queues a message; applies the backpressure policy when the queue is full.
    pub fn enqueue(&self, m: Queued) {
        let conn = &self.conns[self.conn_of(m.device_hash)];
        let profile = m.profile as usize;
        let policy = self.policies.get(profile).copied().unwrap_or_default();
        {
            let mut items = conn.items.borrow_mut();
            if items.len() >= conn.cap {
                match policy {
                    Backpressure::DropOldest => {
                        if let Some(old) = items.pop_front() {
                            self.unhold(&old);
                            self.stats.borrow_mut()[old.profile as usize].counts.dropped += 1;
                            self.in_phase(&old, |s| s.counts.dropped += 1);
                        }
                    }
                    Backpressure::SlowDown => {
                        // Still full although devices were slowed: the newest cannot wait.
                        drop(items);
                        self.stats.borrow_mut()[profile].counts.dropped += 1;
                        self.in_phase(&m, |s| s.counts.dropped += 1);
                        return;
                    }
                }
            }
            self.hold(&m);
            items.push_back(m);
        }
        if policy == Backpressure::SlowDown && !conn.slowed.get() && conn.fill() > 0.8 {
            conn.slowed.set(true);
            self.stats.borrow_mut()[profile].slowdowns += 1;
        }
        if !conn.wake_sent.replace(true) {
            conn.wake.notify_one();
        }
    }

    /// Messages of `profile` queued or in flight.
    pub fn pending(&self, profile: usize) -> u32 {
        self.pending.borrow().get(profile).copied().unwrap_or(0)
    }

    fn hold(&self, m: &Queued) {
        let mut p = self.pending.borrow_mut();
        let i = m.profile as usize;
        if p.len() <= i {
            p.resize(i + 1, 0);
        }
        p[i] += 1;
    }

    fn unhold(&self, m: &Queued) {
        if let Some(n) = self.pending.borrow_mut().get_mut(m.profile as usize) {
            *n = n.saturating_sub(1);
        }
    }

    /// The profile's backpressure policy.
    pub fn policy(&self, profile: usize) -> Backpressure {
        self.policies.get(profile).copied().unwrap_or_default()
    }

    /// 2 while the device's connection is in slow-down, else 1.
    pub fn interval_factor(&self, profile: usize, device_hash: u64) -> u64 {
        if self.policies.get(profile) == Some(&Backpressure::SlowDown)
            && self.conns[self.conn_of(device_hash)].slowed.get()
        {
            2
        } else {
            1
        }
    }

    /// True when some connection's queue is above 80% (virtual clock waits then).
    pub fn congested(&self) -> bool {
        self.conns.iter().any(|c| c.fill() > 0.8)
    }

    /// Waits until no queue is above half full.
    pub async fn wait_room(&self) {
        loop {
            let Some(c) = self.conns.iter().find(|c| c.len() * 2 >= c.cap) else { return };
            let notified = c.room.notified();
            c.room_wanted.set(true);
            if c.len() * 2 < c.cap {
                continue;
            }
            notified.await;
        }
    }

    /// Applies `f` to the statistics of the message's scenario phase, if it has one.
    fn in_phase(&self, m: &Queued, f: impl FnOnce(&mut ProfileStats)) {
        if m.phase == NO_PHASE {
            return;
        }
        let mut ph = self.phase_stats.borrow_mut();
        let (p, i) = (m.phase as usize, m.profile as usize);
        if ph.len() <= p {
            ph.resize_with(p + 1, Vec::new);
        }
        if ph[p].len() <= i {
            ph[p].resize_with(i + 1, ProfileStats::new);
        }
        f(&mut ph[p][i]);
    }

    /// Records a delivered message.
    pub fn complete(&self, m: &Queued) {
        self.complete_at(m, mono_ns());
    }

    /// Records a message delivered at `now` (monotonic ns): a driver settling a batch reads
    /// the clock once for all of it.
    pub fn complete_at(&self, m: &Queued, now: u64) {
        let latency_us = now.saturating_sub(m.intended_ns) / 1000;
        let service_us = now.saturating_sub(m.sent_ns.max(m.intended_ns)) / 1000;
        let record = |s: &mut ProfileStats| {
            s.counts.messages += 1;
            s.bytes += m.payload.len() as u64;
            s.latency.record(latency_us);
            s.service.record(service_us);
        };
        record(&mut self.stats.borrow_mut()[m.profile as usize]);
        self.in_phase(m, record);
        self.unhold(m);
        crate::measure::stats::record(&mut self.window.borrow_mut(), latency_us);
    }

    /// Records a message that was not delivered, by kind (`timeout`, `nack`, `http_503`, ...).
    pub fn fail(&self, m: &Queued, kind: &str) {
        let record = |s: &mut ProfileStats| {
            s.counts.errors += 1;
            *s.error_kinds.entry(kind.to_string()).or_insert(0) += 1;
        };
        record(&mut self.stats.borrow_mut()[m.profile as usize]);
        self.in_phase(m, record);
        self.unhold(m);
    }

    /// Records a connection event for the event stream.
    pub fn conn_event(&self, e: ConnEvent) {
        let mut v = self.conn_events.borrow_mut();
        if v.len() < CONN_EVENTS_MAX {
            v.push(e);
        }
    }

    /// Counts a connection-level event.
    pub fn event(&self, kind: &'static str) {
        *self.events.borrow_mut().entry(kind).or_insert(0) += 1;
    }

    /// Messages queued or in flight on every connection.
    pub fn outstanding(&self) -> usize {
        self.conns.iter().map(|c| c.len() + c.inflight.get()).sum::<usize>() + self.extra.get()
    }

    /// A message entered a queue outside `conns` (per-device sessions).
    pub fn extra_sent(&self) {
        self.extra.set(self.extra.get() + 1);
    }

    /// A message counted by [`NetShared::extra_sent`] completed, failed or was dropped.
    pub fn extra_settled(&self) {
        self.extra.set(self.extra.get().saturating_sub(1));
    }

    /// Records a message evicted from a full queue (backpressure).
    pub fn dropped(&self, m: &Queued) {
        self.stats.borrow_mut()[m.profile as usize].counts.dropped += 1;
        self.in_phase(m, |s| s.counts.dropped += 1);
    }

    /// Called by a task when a message is handed to the protocol client.
    pub fn sent(&self, conn: usize) {
        let c = &self.conns[conn];
        c.inflight.set(c.inflight.get() + 1);
    }

    /// Called by a task when a handed-over message completed or failed.
    pub fn settled(&self, conn: usize) {
        let c = &self.conns[conn];
        c.inflight.set(c.inflight.get().saturating_sub(1));
    }

    /// Waits (up to `timeout_ns`) for every queued and in-flight message to settle, then counts
    /// what is left as errors of kind `shutdown` and tells the tasks to close.
    pub async fn drain(&self, timeout_ns: u64) {
        let deadline = mono_ns() + timeout_ns;
        while self.outstanding() > 0 && mono_ns() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.closing.set(true);
        self.close.notify_waiters();
        for c in &self.conns {
            while let Some(m) = c.pop() {
                self.fail(&m, "shutdown");
            }
            c.wake.notify_one();
        }
        // MQTT connections send DISCONNECT and close; per-device sessions count what they
        // still hold (`shutdown`).
        for _ in 0..1000 {
            if self.open_sessions.get() == 0 && self.extra.get() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if self.outstanding() > 0 {
            tracing::warn!(
                sink = self.name,
                shard = self.shard,
                in_flight = self.outstanding(),
                "messages still unconfirmed at shutdown; counted as errors"
            );
            self.abandoned.set(true);
            self.abandon.notify_waiters();
            // Give the tasks a moment to count what they hold.
            for _ in 0..50 {
                if self.outstanding() == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    }

    /// Random jitter in [0, 1) for backoff, from the monotonic clock (not part of the
    /// deterministic core: it only spreads reconnect attempts).
    pub fn jitter() -> f64 {
        (crate::sim::seed::mix64(mono_ns()) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Sleeps the `attempt`-th backoff delay.
    pub async fn backoff_sleep(&self, attempt: u32) {
        let ms = self.backoff.delay_ms(attempt, NetShared::jitter());
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// A connection up at least this long, or `backoff_max` if that is longer, was stable: the
/// backoff after it is lost starts over from `backoff_initial`. A connection the broker drops
/// sooner (right after CONNACK, say, for something the client sends on connecting) keeps
/// stepping the backoff up, so the client does not reconnect at once forever.
pub const STABLE_CONNECTION_MS: u64 = 10_000;

/// One connection's place in its reconnect backoff (pooled connections and per-device
/// sessions alike).
#[derive(Debug, Default)]
pub struct Retry {
    /// The backoff step of the next retry.
    attempt: u32,
    /// When the current connection's CONNACK came (monotonic ns).
    up_since_ns: Option<u64>,
}

impl Retry {
    /// The connection is up (CONNACK accepted) at `now_ns`.
    pub fn connected(&mut self, now_ns: u64) {
        self.up_since_ns = Some(now_ns);
    }

    /// The connection was lost or the attempt failed at `now_ns`: the backoff step to wait
    /// now. It starts over only when the lost connection had been up for the stable period
    /// ([`STABLE_CONNECTION_MS`], or `backoff_max` if longer); otherwise each retry waits
    /// one step longer, up to `backoff_max`.
    pub fn lost(&mut self, backoff: &Backoff, now_ns: u64) -> u32 {
        let stable_ns = STABLE_CONNECTION_MS.max(backoff.max_ms).saturating_mul(1_000_000);
        if let Some(up) = self.up_since_ns.take()
            && now_ns.saturating_sub(up) >= stable_ns
        {
            self.attempt = 0;
        }
        let a = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        a
    }

    /// Starts over (a connection closed on purpose, not by a failure).
    pub fn reset(&mut self) {
        *self = Retry::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_starts_over_only_after_a_connection_that_stayed_up() {
        const S: u64 = 1_000_000_000;
        let b = Backoff { initial_ms: 100, max_ms: 2_000 };
        let mut r = Retry::default();
        // Refused or failed attempts step up.
        assert_eq!(r.lost(&b, 0), 0);
        assert_eq!(r.lost(&b, S), 1);
        // Accepted, then dropped at once, again and again: still stepping up.
        for (i, t) in [2u64, 3, 4, 5].iter().enumerate() {
            r.connected(t * S);
            assert_eq!(r.lost(&b, t * S + S / 10), 2 + i as u32);
        }
        // Up for just under the stable period: not yet.
        r.connected(10 * S);
        assert_eq!(r.lost(&b, 20 * S - 1), 6);
        // Up for the stable period (10 s; backoff_max is shorter): the next retry is the first.
        r.connected(30 * S);
        assert_eq!(r.lost(&b, 40 * S), 0);
        assert_eq!(r.lost(&b, 41 * S), 1);
        // A backoff_max longer than 10 s is the stable period.
        let long = Backoff { initial_ms: 100, max_ms: 60_000 };
        r.connected(50 * S);
        assert_eq!(r.lost(&long, 80 * S), 2);
        r.connected(100 * S);
        assert_eq!(r.lost(&long, 160 * S), 0);
        r.reset();
        assert_eq!(r.lost(&b, 200 * S), 0);
    }
    use crate::sim::profile::{Delivery, Fleet, Profile, Protocol};

    fn fleet(bp: Backpressure) -> Fleet {
        let profile = Profile {
            protocol: Protocol::Mqtt,
            delivery: Delivery { backpressure: bp, ..Delivery::default() },
            ..Profile::for_tests("p")
        };
        Fleet { profiles: vec![profile], groups: vec![] }
    }

    fn msg(i: u64) -> Queued {
        Queued {
            topic: "t".into(),
            payload: i.to_string().into_bytes().into(),
            profile: 0,
            intended_ns: i,
            sent_ns: 0,
            device_hash: 7,
            phase: NO_PHASE,
            wire: Default::default(),
            mqtt5: Default::default(),
        }
    }

    #[test]
    fn drop_oldest_evicts_the_oldest_unsent_message_and_counts_it() {
        let s = NetShared::new(
            "mqtt",
            0,
            &fleet(Backpressure::DropOldest),
            1,
            3,
            Backoff { initial_ms: 1, max_ms: 2 },
        );
        for i in 0..5 {
            s.enqueue(msg(i));
        }
        assert_eq!(s.stats.borrow()[0].counts.dropped, 2);
        let left: Vec<u64> =
            std::iter::from_fn(|| s.conns[0].pop()).map(|m| m.intended_ns).collect();
        assert_eq!(left, vec![2, 3, 4]);
    }

    #[test]
    fn a_profile_holds_what_is_queued_until_it_completes_fails_or_is_evicted() {
        let s = NetShared::new(
            "mqtt",
            0,
            &fleet(Backpressure::DropOldest),
            1,
            3,
            Backoff { initial_ms: 1, max_ms: 2 },
        );
        assert_eq!(s.pending(0), 0);
        for i in 0..5 {
            s.enqueue(msg(i));
        }
        // Two were evicted: three are held.
        assert_eq!(s.pending(0), 3);
        let a = s.conns[0].pop().unwrap();
        s.complete(&a);
        let b = s.conns[0].pop().unwrap();
        s.fail(&b, "nack");
        assert_eq!(s.pending(0), 1);
        let c = s.conns[0].pop().unwrap();
        s.conns[0].push_front(c);
        assert_eq!(s.pending(0), 1, "a message put back is still held");
        let c = s.conns[0].pop().unwrap();
        s.complete(&c);
        assert_eq!(s.pending(0), 0);
        assert_eq!(s.pending(9), 0);
    }

    #[test]
    fn slow_down_doubles_the_interval_above_80_percent_and_restores_below_50() {
        let s = NetShared::new(
            "mqtt",
            0,
            &fleet(Backpressure::SlowDown),
            1,
            10,
            Backoff { initial_ms: 1, max_ms: 2 },
        );
        for i in 0..8 {
            s.enqueue(msg(i));
        }
        assert_eq!(s.interval_factor(0, 7), 1, "80% is not above 80%");
        s.enqueue(msg(8));
        assert_eq!(s.interval_factor(0, 7), 2);
        assert_eq!(s.stats.borrow()[0].slowdowns, 1);
        for _ in 0..4 {
            s.conns[0].pop();
        }
        assert_eq!(s.interval_factor(0, 7), 2, "hysteresis: 5 of 10 is not below half");
        s.conns[0].pop();
        assert_eq!(s.interval_factor(0, 7), 1);
        assert_eq!(s.stats.borrow()[0].counts.dropped, 0);
    }
}
