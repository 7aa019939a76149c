//! Per-device MQTT sessions (`connection = "per_device"`): every device of such a profile is its
//! own MQTT client, with its own TCP (or TLS) connection, client id, credentials, keep-alive,
//! last will and command subscription.
//!
//! One local task per device on the shard's `LocalSet`, created when the shard starts (every
//! device it built; a device spawned later starts its session on its first message). The task owns the socket and a [`Session`] (the sans-IO protocol state); each
//! turn it moves what the device queued into the session (up to the in-flight window), writes
//! every packet the turn produced in one write, then waits for bytes, a wake-up (new messages,
//! a fault, shutdown) or the session's next timer. Per device this keeps a small queue, the
//! session, the connect parameters and no read buffer (one per shard): no per-device thread, no big
//! buffers (see `bench/mqtt_sessions.sh` for the measured memory per session).
//!
//! Connections are paced by `connect_rate` (per runtime, split evenly across shards) and bounded
//! by `max_connecting`: at most that many sessions of the runtime (split the same way) are between
//! their connect turn and their CONNACK at once (TCP connect, TLS handshake, CONNECT written).
//! A burst beyond the broker's listen backlog (Mosquitto's is 100) has its SYNs dropped, and the
//! kernel sends a dropped SYN again only after 1 s, then 3 s, ...: without the bound a fleet
//! ramping faster than the broker accepts spends seconds in retransmits and connect timeouts;
//! with it the ramp runs at what the broker takes. A refused
//! or failed attempt is counted by reason and retried after the sink's jittered backoff. Counts
//! go to the sink's event counters (report `sink_events`, Prometheus): `session_connect_attempt`,
//! `session_connected`, `session_reconnected`, `session_refused_<reason>`, `session_lost`,
//! `session_connect_error`, `command_received`, `command_responded`.
//!
//! A downlink command may carry its send time: a JSON object with `sent_at` (milliseconds since
//! the Unix epoch, or an RFC 3339 date-time) and optionally `id`, e.g.
//! `{"id": "c-1", "sent_at": 1764489600250, "op": "reboot"}`. Its round trip (receipt wall
//! clock - `sent_at`, µs; 0 if `sent_at` is ahead of this host's clock) goes to the profile's
//! `command_rtt` histogram; commands received and answered are counted per profile too.

use super::session::{ConnectParams, Outcome, Session, Version, Will};
use crate::config::MqttSettings;
use crate::config::mqtt_sessions::{Password, PerDeviceSettings};
use crate::measure::clock::{mono_ns, wall_us};
use crate::sim::profile::{Backpressure, Fleet};
use crate::sink::net::{ConnEvent, NetShared, Queued, Retry};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// What a fault asks of a device's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Send DISCONNECT, then close (the broker discards the will).
    Graceful,
    /// Close the socket without DISCONNECT (the broker publishes the will).
    Abrupt,
}

/// How long a session dropped by a fault stays down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Not at all: it reconnects at once (the reconnect storm).
    No,
    /// Until [`Devices::release`] (availability: the device's tick finds it up again).
    Released,
    /// Until this monotonic time (ns; a DISCONNECT fault's end), or until released if that
    /// comes first. The session reconnects then with the backoff's jitter (up to
    /// `backoff_initial`), not at its device's next tick.
    Until(u64),
}

/// One device's side of the sink: its unsent messages and how to reach its task.
struct Device {
    queue: RefCell<VecDeque<Queued>>,
    wake: Notify,
    /// A drop a fault asked for, not yet acted on.
    drop: Cell<Option<Drop>>,
    /// Held down by a DISCONNECT fault or an outage: no reconnect until it is released ...
    held: Cell<bool>,
    /// ... or until this monotonic time (ns), when the task releases it itself.
    held_until: Cell<Option<u64>>,
    /// In slow-down (`backpressure = "slow_down"`): its interval is doubled.
    slowed: Cell<bool>,
    /// Its queue's bound: `queue_size`, times `SPARKPLUG_QUEUE_FACTOR` for an edge node (the
    /// session of many devices: its NBIRTH and their DBIRTHs queue before its CONNACK).
    cap: usize,
}

/// The shard's read buffer for its sessions: PUBACKs, downlink commands, a burst after a
/// reconnect.
const READ_BUF_BYTES: usize = 16 * 1024;

/// The longest one TCP connect try of a session waits for its SYN-ACK ([`Devices::open`]):
/// past the kernel's first SYN retransmit (1 s), short of its second (3 s).
const SYN_TRY: Duration = Duration::from_millis(1500);

/// An edge node's queue holds this many times `queue_size`.
const SPARKPLUG_QUEUE_FACTOR: usize = 100;

/// Per profile of `fleet`: (qos, retain, per_device), `defaults` where the profile sets none.
fn delivery_of(fleet: &Fleet, defaults: (u8, bool)) -> Vec<(u8, bool, bool)> {
    fleet
        .profiles
        .iter()
        .map(|p| {
            (
                p.delivery.qos.unwrap_or(defaults.0),
                p.delivery.retain.unwrap_or(defaults.1),
                p.delivery.per_device,
            )
        })
        .collect()
}

/// Every per-device session of one shard's MQTT sink.
pub struct Devices {
    settings: Rc<PerDeviceSettings>,
    version: Version,
    addr: (String, u16),
    tls: Option<super::transport::Tls>,
    /// `[sink.mqtt.per_device.identity]`: a client certificate per device, made by workers.
    identities: Option<super::identity::Identities>,
    /// `ws://`/`wss://`: where the WebSocket upgrades.
    ws: Option<super::ws::WsTarget>,
    /// The fleet as of the last spawned per-device profile ([`Devices::refresh`]).
    fleet: RefCell<Arc<Fleet>>,
    /// Per-profile (qos, retain, per_device).
    delivery: RefCell<Vec<(u8, bool, bool)>>,
    /// The sink's QoS and retain, for profiles that set none.
    defaults: (u8, bool),
    /// Looked up for every message (`submit`); never iterated, so its order does not matter.
    by_hash: RefCell<HashMap<u64, Rc<Device>, BuildHasherDefault<HashMixer>>>,
    /// Connect pacing: the earliest time the next attempt may start, and the spacing.
    next_connect_ns: Cell<u64>,
    connect_spacing_ns: u64,
    /// Sessions of this shard between their connect turn and their CONNACK (`max_connecting`
    /// per shard): a permit is taken before the connect slot and given back on CONNACK or
    /// when the attempt fails.
    connecting: tokio::sync::Semaphore,
    next_source: Cell<usize>,
    /// Sessions connected now.
    connected: Cell<u64>,
    /// The read buffer of every session of the shard: a session reads into it and hands the
    /// bytes to its protocol state before it yields, so no session keeps one of its own.
    read_buf: RefCell<Box<[u8]>>,
    shared: Rc<NetShared>,
    /// Sparkplug commands received by edge nodes, for the shard (`take_sparkplug`): the
    /// node's session key and what came.
    sparkplug: RefCell<Vec<(u64, SparkplugIn)>>,
}

/// What an edge node's session tells its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SparkplugIn {
    /// An NCMD asking for a rebirth.
    Rebirth,
    /// The session connected again after a loss (a new `bdSeq` in its will): the node must
    /// be born again with it.
    Reconnected,
    /// A DCMD to one of the node's devices: its payload.
    Dcmd { device: String, payload: Vec<u8> },
}

/// Hashes a device hash (FNV-1a of its id) once more with `mix64`, so the map's buckets see
/// well-spread bits: cheaper than SipHash over a key that is a hash already, and a lookup per
/// message instead of the `BTreeMap` walk that was the sink's top symbol in a 19,000-session
/// profile.
#[derive(Default)]
struct HashMixer(u64);

impl Hasher for HashMixer {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = crate::sim::seed::mix64(self.0 ^ *b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = crate::sim::seed::mix64(n);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What a message slot in a session carries: a device's message, or a command response.
enum Token {
    Msg(Queued),
    Response,
}

impl Devices {
    pub fn new(
        s: &MqttSettings,
        fleet: &Arc<Fleet>,
        shards: usize,
        shared: Rc<NetShared>,
    ) -> Result<Rc<Devices>, String> {
        let tls = super::transport::tls(s)?;
        let pd = &s.per_device;
        let identities = match &pd.identity {
            Some(id) if tls.is_some() => {
                Some(super::identity::Identities::new(s, id.clone(), shards)?)
            }
            Some(_) => return Err("sink.mqtt.per_device.identity needs mqtts:// or wss://".into()),
            None => None,
        };
        Ok(Rc::new(Devices {
            identities,
            settings: Rc::new(pd.clone()),
            version: if s.version == 5 { Version::V5 } else { Version::V311 },
            addr: (s.host.clone(), s.port),
            tls,
            ws: s.ws.clone(),
            fleet: RefCell::new(fleet.clone()),
            delivery: RefCell::new(delivery_of(fleet, (s.qos, s.retain))),
            defaults: (s.qos, s.retain),
            by_hash: RefCell::new(HashMap::default()),
            next_connect_ns: Cell::new(0),
            connect_spacing_ns: 1_000_000_000 * shards.max(1) as u64 / pd.connect_rate.max(1),
            connecting: tokio::sync::Semaphore::new(
                (pd.max_connecting / shards.max(1) as u64).max(1) as usize,
            ),
            next_source: Cell::new(shared.shard()),
            connected: Cell::new(0),
            read_buf: RefCell::new(vec![0u8; READ_BUF_BYTES].into_boxed_slice()),
            shared,
            sparkplug: RefCell::new(vec![]),
        }))
    }

    /// What edge nodes received since the last call (see [`SparkplugIn`]).
    pub fn take_sparkplug(&self) -> Vec<(u64, SparkplugIn)> {
        if self.sparkplug.borrow().is_empty() {
            return vec![];
        }
        std::mem::take(&mut *self.sparkplug.borrow_mut())
    }

    /// Whether messages of this profile go through per-device sessions.
    pub fn handles(&self, profile: usize) -> bool {
        self.delivery.borrow().get(profile).is_some_and(|d| d.2)
    }

    /// Takes the shard's fleet after a runtime spawn added a profile (a spawned per-device or
    /// Sparkplug profile gets its sessions like a fleet file's).
    pub fn refresh(&self, fleet: &Arc<Fleet>) {
        *self.delivery.borrow_mut() = delivery_of(fleet, self.defaults);
        *self.fleet.borrow_mut() = fleet.clone();
    }

    /// Sessions connected now.
    pub fn connected_now(&self) -> u64 {
        self.connected.get()
    }

    /// Sessions started (at process start, or on a later device's first message).
    pub fn started(&self) -> u64 {
        self.by_hash.borrow().len() as u64
    }

    /// Starts a device's session now (at process start), before it has anything to send: it
    /// connects in its `connect_rate` turn, subscribes and keeps alive like a real device.
    pub fn start_session(
        self: &Rc<Self>,
        hash: u64,
        profile: usize,
        device_id: &str,
        labels: &BTreeMap<String, String>,
    ) {
        if self.handles(profile) {
            self.device(hash, profile, device_id, labels);
        }
    }

    /// Queues a device's message, starting the device's session on its first one.
    pub fn submit(self: &Rc<Self>, m: Queued, device_id: &str, labels: &BTreeMap<String, String>) {
        let profile = m.profile as usize;
        let dev = self.device(m.device_hash, profile, device_id, labels);
        let cap = dev.cap;
        let slow_down = self.shared.policy(profile) == Backpressure::SlowDown;
        {
            let mut q = dev.queue.borrow_mut();
            if q.len() >= cap {
                if slow_down {
                    // Full although the device was slowed: the newest cannot wait.
                    drop(q);
                    self.shared.dropped(&m);
                    return;
                }
                if let Some(old) = q.pop_front() {
                    self.shared.dropped(&old);
                    self.shared.extra_settled();
                }
            }
            q.push_back(m);
            // As the pooled queues: above 80% full the device's interval doubles, until its
            // queue is back below half (see `drive`).
            if slow_down && !dev.slowed.get() && q.len() * 5 > cap * 4 {
                dev.slowed.set(true);
                if let Some(st) = self.shared.stats.borrow_mut().get_mut(profile) {
                    st.slowdowns += 1;
                }
            }
        }
        self.shared.extra_sent();
        dev.wake.notify_one();
    }

    /// 2 while the device is in slow-down (`backpressure = "slow_down"`), else 1.
    pub fn interval_factor(&self, device_hash: u64) -> u64 {
        match self.by_hash.borrow().get(&device_hash) {
            Some(d) if d.slowed.get() => 2,
            _ => 1,
        }
    }

    fn device(
        self: &Rc<Self>,
        hash: u64,
        profile: usize,
        device_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Rc<Device> {
        if let Some(d) = self.by_hash.borrow().get(&hash) {
            return d.clone();
        }
        let fleet = self.fleet.borrow().clone();
        let spec = fleet.profiles.get(profile).and_then(|p| p.format.sparkplug().cloned());
        let dev = Rc::new(Device {
            queue: RefCell::new(VecDeque::new()),
            wake: Notify::new(),
            drop: Cell::new(None),
            held: Cell::new(false),
            held_until: Cell::new(None),
            slowed: Cell::new(false),
            cap: self.settings.queue_size * if spec.is_some() { SPARKPLUG_QUEUE_FACTOR } else { 1 },
        });
        self.by_hash.borrow_mut().insert(hash, dev.clone());
        let device_type =
            fleet.profiles.get(profile).map_or("", |p| p.device_type.as_str()).to_string();
        let render_as = |id: &str, t: &crate::sim::profile::TopicTemplate| {
            let mut out = vec![];
            t.render(&mut out, id, &device_type, labels);
            String::from_utf8_lossy(&out).into_owned()
        };
        // An edge node's session is the node's, not its first device's: `{device_id}` in the
        // login (username, token, certificate) names the node.
        let node = spec.as_ref().map(|spec| render_as(device_id, &spec.edge_node));
        let session_id = node.as_deref().unwrap_or(device_id);
        let render = |t: &crate::sim::profile::TopicTemplate| render_as(session_id, t);
        let s = &self.settings;
        let client_id = match (&spec, &node) {
            (Some(spec), Some(node)) => format!("spb-{}-{node}", spec.group_id),
            _ => render(&s.client_id),
        };
        let password = match &s.password {
            Password::None => None,
            Password::Fixed(p) => Some(p.clone()),
            Password::Hmac(secret) => Some(hmac_password(secret, &client_id)),
        };
        let mut params = ConnectParams {
            client_id,
            clean_session: s.clean_session,
            session_expiry_s: s.session_expiry_s,
            username: s.username.as_ref().map(render),
            password,
            will: s.will.as_ref().map(|w| Will {
                topic: render(&w.topic),
                payload: render(&w.payload).into(),
                qos: w.qos,
                retain: w.retain,
            }),
        };
        let mut topics = Topics {
            subscribe: s.subscribe.as_ref().map(render),
            respond: s.respond.as_ref().map(render),
            device_id: device_id.to_string(),
            profile,
            sparkplug: None,
        };
        if let (Some(spec), Some(node)) = (&spec, &node) {
            // An edge node: its own client id (above), its NDEATH as will, NCMD and DCMD
            // subscribed.
            let g = &spec.group_id;
            params.will = Some(sparkplug_will(g, node, 0));
            topics.subscribe = Some(format!("spBv1.0/{g}/NCMD/{node}"));
            topics.respond = None;
            topics.device_id = node.clone();
            topics.sparkplug = Some(Sparkplug {
                hash,
                dcmd: format!("spBv1.0/{g}/DCMD/{node}/+"),
                group: g.clone(),
                node: node.clone(),
                bd_seq: 0,
                used: Cell::new(false),
            });
        }
        // An expiring token replaces the password: made afresh at every connect attempt.
        let token =
            s.token.as_ref().map(|t| super::token::DeviceToken::new(t, hash, &|tpl| render(tpl)));
        let identity =
            self.identities.as_ref().map(|i| i.settings().for_device(session_id, render));
        // Spread first pings over the keep-alive interval by device.
        let phase_ms = if s.keep_alive_ms > 0 {
            (crate::sim::seed::mix64(hash) % s.keep_alive_ms) as u32
        } else {
            0
        };
        tokio::task::spawn_local(run(
            self.clone(),
            dev.clone(),
            params,
            topics,
            phase_ms,
            token,
            identity,
        ));
        dev
    }

    /// Drops the connections of the devices with these hashes (a fault), and keeps them down
    /// as `hold` says.
    pub fn drop_sessions(&self, hashes: &[u64], how: Drop, hold: Hold) -> usize {
        let by = self.by_hash.borrow();
        let mut n = 0;
        for h in hashes {
            if let Some(d) = by.get(h) {
                d.drop.set(Some(how));
                d.held.set(hold != Hold::No);
                d.held_until.set(match hold {
                    // Each device its own jitter, so a fleet does not come back on one tick.
                    Hold::Until(at) => Some(
                        at.saturating_add(
                            self.shared
                                .backoff
                                .delay_ms(0, NetShared::jitter())
                                .saturating_mul(1_000_000),
                        ),
                    ),
                    _ => None,
                });
                d.wake.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Lets held devices reconnect.
    pub fn release(&self, hashes: &[u64]) {
        let by = self.by_hash.borrow();
        for h in hashes {
            if let Some(d) = by.get(h)
                && d.held.replace(false)
            {
                d.held_until.set(None);
                d.wake.notify_one();
            }
        }
    }

    /// Updates the command figures of a profile (report rows, `/metrics`).
    fn command_stats(
        &self,
        profile: usize,
        f: impl FnOnce(&mut crate::measure::stats::ProfileStats),
    ) {
        if let Some(st) = self.shared.stats.borrow_mut().get_mut(profile) {
            f(st);
        }
    }

    /// Waits for this shard's next connect slot (`connect_rate`).
    async fn connect_slot(&self) {
        let now = mono_ns();
        let at = self.next_connect_ns.get().max(now);
        self.next_connect_ns.set(at + self.connect_spacing_ns);
        if at > now {
            tokio::time::sleep(Duration::from_nanos(at - now)).await;
        }
    }

    fn source(&self) -> Option<IpAddr> {
        let list = &self.settings.source_addresses;
        if list.is_empty() {
            return None;
        }
        let i = self.next_source.get();
        self.next_source.set(i.wrapping_add(1));
        Some(list[i % list.len()])
    }

    /// Reads what `stream` has into the shard's read buffer ([`Devices::read_buf`]); the
    /// count, for the caller to take the bytes from there before it yields.
    async fn read<S: AsyncRead + Unpin>(&self, stream: &mut S) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut b = self.read_buf.borrow_mut();
            let mut rb = tokio::io::ReadBuf::new(&mut b[..]);
            std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb).map_ok(|()| rb.filled().len())
        })
        .await
    }

    /// The TCP connect of an attempt, within `connect_timeout`, in tries of at most
    /// [`SYN_TRY`]: a SYN that got no SYN-ACK by then is not left to the kernel's later
    /// retransmits (3 s, then 7 s, while the attempt holds its `max_connecting` permit) but
    /// sent again on a new socket, with a new source port. While a killed broker is down, a
    /// SYN that meets a 4-tuple it left in TIME_WAIT is answered by an ACK, not a refusal, and
    /// sits in SYN-SENT; sockets in SYN-SENT holding the permits are the suspected cause of the
    /// storm tail in bench/README.md (sessions back at ~50 a second), not a proven one.
    async fn open(&self) -> std::io::Result<tokio::net::TcpStream> {
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms);
        let start = tokio::time::Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let source = self.source();
            match super::transport::open_tcp(&self.addr.0, self.addr.1, source, left.min(SYN_TRY))
                .await
            {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && start.elapsed() < timeout => {
                    self.shared.event("session_connect_retry");
                }
                r => return r,
            }
        }
    }
}

/// hex(HMAC-SHA256(secret, client_id)).
pub fn hmac_password(secret: &[u8], client_id: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, client_id.as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

struct Topics {
    subscribe: Option<String>,
    respond: Option<String>,
    device_id: String,
    profile: usize,
    /// An edge node's session (`format = "sparkplug_b"`).
    sparkplug: Option<Sparkplug>,
}

/// An edge node's session state.
struct Sparkplug {
    /// Its session key (what the shard knows the node by).
    hash: u64,
    /// The DCMD filter, subscribed after the NCMD one.
    dcmd: String,
    group: String,
    node: String,
    /// The `bdSeq` of its will: one more on each reconnect.
    bd_seq: u64,
    /// Whether a connection was made with the current will.
    used: Cell<bool>,
}

/// An edge node's will: its NDEATH with `bdSeq`, QoS 1, not retained (Sparkplug 3.0).
fn sparkplug_will(group: &str, node: &str, bd_seq: u64) -> Will {
    let mut topic = vec![];
    crate::sim::sparkplug::write_topic(&mut topic, group, "NDEATH", node, None);
    let mut payload = vec![];
    crate::sim::sparkplug::encode_ndeath(&mut payload, wall_us() / 1000, bd_seq);
    Will {
        topic: String::from_utf8_lossy(&topic).into_owned(),
        payload: payload.into(),
        qos: 1,
        retain: false,
    }
}

/// Why one connection ended.
enum End {
    Refused(&'static str),
    Lost(String),
    Dropped,
    /// Closed (with DISCONNECT) to reconnect with a fresh token before this one expires.
    Renew,
    Closing,
}

fn refused_event(reason: &str) -> &'static str {
    match reason {
        "bad_credentials" => "session_refused_bad_credentials",
        "not_authorized" => "session_refused_not_authorized",
        "bad_client_id" => "session_refused_bad_client_id",
        "server_unavailable" => "session_refused_server_unavailable",
        "quota_exceeded" => "session_refused_quota_exceeded",
        "protocol_version" => "session_refused_protocol_version",
        _ => "session_refused_other",
    }
}

/// One device's task: connect (paced, with backoff), drive the session, reconnect.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment on the block
fn run(
    ctx: Rc<Devices>,
    dev: Rc<Device>,
    mut params: ConnectParams,
    mut topics: Topics,
    phase_ms: u32,
    mut token: Option<super::token::DeviceToken>,
    identity: Option<crate::config::identity::DeviceIdentity>,
) -> impl std::future::Future<Output = ()> {
    // An async block, not an async fn: its captures are used in place (an async fn moves its
    // arguments into locals, and the task kept room for both: ~450 bytes a session).
    async move {
        let s = &ctx.settings;
        let mut session: Session<Token> =
            Session::new(ctx.version, s.keep_alive_ms as u32, s.inflight);
        session.set_connect_timeout_ms(s.connect_timeout_ms as u32);
        session.set_ping_phase_ms(phase_ms);
        let mut retry = Retry::default();
        let mut ever_connected = false;
        // Reconnecting to renew the token: counted `session_token_renewed` once accepted.
        let mut renewing = false;
        // The device's own TLS identity, made at its first connect and kept for every reconnect.
        let mut own_tls: Option<super::transport::Tls> = None;
        loop {
            if ctx.shared.closing.get() {
                finish(&ctx, &dev, &mut session);
                return;
            }
            if dev.held.get() {
                // Down by a fault: what the device produces meanwhile queues (bounded). A fault
                // with an end lets the session back at that end, not at the device's next tick.
                let until = dev.held_until.get();
                let end = async {
                    match until {
                        Some(at) => {
                            tokio::time::sleep(Duration::from_nanos(at.saturating_sub(mono_ns())))
                                .await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = dev.wake.notified() => {}
                    _ = end => {
                        // Unless a newer fault moved the end meanwhile.
                        if dev.held_until.get() == until {
                            dev.held.set(false);
                            dev.held_until.set(None);
                        }
                    }
                    _ = ctx.shared.abandon.notified() => {}
                    _ = ctx.shared.close.notified() => {}
                }
                continue;
            }
            if own_tls.is_none()
                && let (Some(ids), Some(wanted), Some(super::transport::Tls { name, .. })) =
                    (&ctx.identities, &identity, &ctx.tls)
            {
                let made = tokio::select! {
                    r = ids.client_config(wanted.clone()) => r,
                    _ = ctx.shared.close.notified() => {
                        finish(&ctx, &dev, &mut session);
                        return;
                    }
                };
                match made {
                    Ok(cfg) => {
                        ctx.shared.event(if ids.generated() {
                            "session_identity_issued"
                        } else {
                            "session_identity_loaded"
                        });
                        own_tls = Some(super::transport::Tls { config: cfg, name: name.clone() });
                    }
                    Err(error) => {
                        ctx.shared.event("session_identity_error");
                        tracing::warn!(sink = "mqtt", device = %topics.device_id, %error, "no identity");
                        let attempt = retry.lost(&ctx.shared.backoff, mono_ns());
                        tokio::select! {
                            _ = ctx.shared.backoff_sleep(attempt) => {}
                            _ = ctx.shared.close.notified() => {}
                        }
                        continue;
                    }
                }
            }
            // Waiting for a connect slot or a TCP connect gives way to shutdown at once, so the
            // task gets to count what its device still holds.
            let open = async {
                // Never closed, so `acquire` does not fail.
                let permit = ctx.connecting.acquire().await.ok();
                ctx.connect_slot().await;
                ctx.shared.event("session_connect_attempt");
                (permit, ctx.open().await)
            };
            if let Some(sp) = &mut topics.sparkplug
                && sp.used.replace(false)
            {
                // A new MQTT session of the edge node (its last will was used by a connection): a
                // new bdSeq in its will; the shard gives the NBIRTH the same one
                // (`SparkplugIn::Reconnected`) once connected. Failed attempts keep it.
                sp.bd_seq = (sp.bd_seq + 1) % 256;
                params.will = Some(sparkplug_will(&sp.group, &sp.node, sp.bd_seq));
            }
            let (mut permit, opened) = tokio::select! {
                r = open => r,
                _ = ctx.shared.close.notified() => {
                    finish(&ctx, &dev, &mut session);
                    return;
                }
            };
            // A fresh token for every attempt (first, renewal, after a loss, a fault, an outage),
            // taken once the socket is open so its life starts with the CONNECT.
            let renew_at_ns = token.as_mut().map(|t| {
                params.password = Some(t.issue(wall_us() / 1_000_000));
                mono_ns() + t.renew_after_ms() * 1_000_000
            });
            // This attempt's borrows of the session loop's state, for either transport.
            macro_rules! link {
                () => {
                    Link {
                        params: &params,
                        topics: &topics,
                        connecting: &mut permit,
                        retry: &mut retry,
                        renew_at_ns,
                        renewing: &mut renewing,
                    }
                };
            }
            let end = match opened {
                Err(e) => End::Lost(format!("connect: {e}")),
                Ok(tcp) => match own_tls.as_ref().or(ctx.tls.as_ref()) {
                    None => {
                        let link = link!();
                        over_ws(&ctx, &dev, &mut session, link, tcp, &mut ever_connected).await
                    }
                    Some(tls) => {
                        match tls.connect(tcp, Duration::from_millis(s.connect_timeout_ms)).await {
                            // Boxed: the TLS stream is large, and a plain session should not carry
                            // room for it in its task.
                            Ok(tls) => {
                                // A reconnect that resumed the device's previous TLS session (no
                                // certificate exchange, no signature): counted.
                                if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                                    ctx.shared.event("session_tls_resumed");
                                }
                                let link = link!();
                                Box::pin(over_ws(
                                    &ctx,
                                    &dev,
                                    &mut session,
                                    link,
                                    tls,
                                    &mut ever_connected,
                                ))
                                .await
                            }
                            Err(e) => End::Lost(format!("tls: {e}")),
                        }
                    }
                },
            };
            // The attempt is over (or was connected): the next session may connect, before this
            // one's backoff.
            drop(permit);
            session.connection_lost();
            match end {
                End::Closing => {
                    finish(&ctx, &dev, &mut session);
                    return;
                }
                End::Dropped => {
                    // Closed on purpose, not by a failure.
                    renewing = false;
                    retry.reset();
                    continue;
                }
                End::Renew => {
                    // At once (in the next connect slot), with a fresh token.
                    renewing = true;
                    retry.reset();
                    continue;
                }
                End::Refused(reason) => {
                    ctx.shared.event(refused_event(reason));
                    ctx.shared.conn_event(ConnEvent::Session {
                        device_id: topics.device_id.clone(),
                        connected: false,
                        detail: format!("refused: {reason}"),
                    });
                }
                End::Lost(error) => match super::identity::tls_refusal(&error) {
                    // The broker refused the TLS handshake (a certificate it does not accept).
                    Some(event) => {
                        ctx.shared.event(event);
                        ctx.shared.conn_event(ConnEvent::Session {
                            device_id: topics.device_id.clone(),
                            connected: false,
                            detail: format!("refused: {error}"),
                        });
                    }
                    None => {
                        ctx.shared.event("session_connect_error");
                        tracing::debug!(sink = "mqtt", device = %topics.device_id, %error, "session lost");
                    }
                },
            }
            let attempt = retry.lost(&ctx.shared.backoff, mono_ns());
            if !ctx.shared.closing.get() {
                tokio::select! {
                    _ = ctx.shared.backoff_sleep(attempt) => {}
                    _ = ctx.shared.close.notified() => {}
                }
            }
        }
    }
}

/// At shutdown: what is still queued or unacknowledged is counted (`shutdown`).
fn finish(ctx: &Devices, dev: &Device, session: &mut Session<Token>) {
    for m in dev.queue.borrow_mut().drain(..) {
        ctx.shared.fail(&m, "shutdown");
        ctx.shared.extra_settled();
    }
    for t in session.take_unacked() {
        if let Token::Msg(m) = t {
            ctx.shared.fail(&m, "unconfirmed");
            ctx.shared.extra_settled();
        }
    }
}

/// What one connection of a device's task works with besides the session.
struct Link<'a, 'p> {
    params: &'a ConnectParams,
    topics: &'a Topics,
    /// The `max_connecting` permit of this attempt, given back on CONNACK.
    connecting: &'a mut Option<tokio::sync::SemaphorePermit<'p>>,
    /// The reconnect backoff: told when the connection comes up.
    retry: &'a mut Retry,
    /// When to reconnect with a fresh token (monotonic ns), with `token`.
    renew_at_ns: Option<u64>,
    /// Set when this connection renews a token: cleared (and counted) on its CONNACK.
    renewing: &'a mut bool,
}

/// [`drive`] over `stream`, or over a WebSocket on it for `ws://`/`wss://` (a refused
/// handshake is a failed attempt, counted as `session_connect_error` and
/// `ws_refused_<reason>`).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment on the block
fn over_ws<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Devices,
    dev: &Device,
    session: &mut Session<Token>,
    link: Link<'_, '_>,
    stream: S,
    ever_connected: &mut bool,
) -> impl std::future::Future<Output = End> {
    // An async block: its captures are used in place (see `run`).
    async move {
        match &ctx.ws {
            None => drive(ctx, dev, session, link, stream, ever_connected).await,
            Some(target) => {
                let timeout = Duration::from_millis(ctx.settings.connect_timeout_ms);
                match Box::pin(super::ws::connect(stream, target, timeout)).await {
                    // Boxed like TLS: a plain session's task carries no room for it.
                    Ok(ws) => Box::pin(drive(ctx, dev, session, link, ws, ever_connected)).await,
                    Err(e) => {
                        if let Some(r) = super::ws::refusal(&e) {
                            ctx.shared.event(r.event());
                        }
                        End::Lost(format!("websocket: {e}"))
                    }
                }
            }
        }
    }
}

#[allow(clippy::manual_async_fn)] // on purpose: see the comment on the block
fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Devices,
    dev: &Device,
    session: &mut Session<Token>,
    link: Link<'_, '_>,
    mut stream: S,
    ever_connected: &mut bool,
) -> impl std::future::Future<Output = End> {
    // An async block: its captures are used in place (see `run`).
    async move {
        let Link { params, topics, connecting, retry, renew_at_ns, renewing } = link;
        // Boxed, and only with a token: a session without one carries 8 bytes for it, not a
        // timer entry.
        let mut renew = renew_at_ns.map(|at| {
            Box::pin(tokio::time::sleep(Duration::from_nanos(at.saturating_sub(mono_ns()))))
        });
        let mut renew_due = false;
        session.connect(params, mono_ns());
        ctx.shared.open_sessions.set(ctx.shared.open_sessions.get() + 1);
        let mut up = false;
        let mut dcmd_subscribed = false;
        // The session's timer (CONNACK timeout, keep-alive) as one sleep for the whole connection,
        // armed for `armed_ns`. Every write moves the keep-alive deadline later; re-arming the
        // sleep on each turn put a timer entry in and out of the runtime's wheel per message. It
        // is re-armed only when the deadline comes earlier than the armed one; a later deadline
        // is taken up when the armed one fires (`handle_timeout` does nothing before it is due).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed_ns: Option<u64> = None;
        // The wake-ups live across turns for the same reason: three `Notified` made and dropped
        // per turn put a waiter in and out of each list (two of them shared by every session of
        // the shard) for every message and every PUBACK. One is renewed only once it fired (one
        // made before a `notify_waiters` still sees it).
        let wake = dev.wake.notified();
        let close = ctx.shared.close.notified();
        let abandon = ctx.shared.abandon.notified();
        tokio::pin!(wake, close, abandon);
        let end = loop {
            // Move queued messages into the session while the window has room (an edge node's
            // once its CONNACK was handled: a reconnect drops what is stale first).
            if session.is_connected() && (up || topics.sparkplug.is_none()) {
                let now = mono_ns();
                let mut q = dev.queue.borrow_mut();
                while let Some(m) = q.front() {
                    let (qos, retain, _) = ctx
                        .delivery
                        .borrow()
                        .get(m.profile as usize)
                        .copied()
                        .unwrap_or((0, false, true));
                    if !session.can_publish(qos) {
                        break;
                    }
                    let Some(mut m) = q.pop_front() else { break };
                    if q.len() * 2 < dev.cap {
                        dev.slowed.set(false);
                    }
                    m.sent_ns = now;
                    let topic = bytes::Bytes::from(std::mem::take(&mut m.topic));
                    let payload = m.payload.clone();
                    let props = std::mem::take(&mut m.mqtt5);
                    if let Err(Token::Msg(m)) = session.publish_props(
                        topic,
                        payload,
                        props,
                        qos,
                        retain,
                        Token::Msg(m),
                        now,
                    ) {
                        // Not reached (the window was checked above); counted, never lost silently.
                        ctx.shared.fail(&m, "window_full");
                        ctx.shared.extra_settled();
                        break;
                    }
                }
            }
            let mut end = None;
            while let Some(o) = session.poll_outcome() {
                match o {
                    Outcome::Connected { .. } => {
                        up = true;
                        retry.connected(mono_ns());
                        *connecting = None;
                        ctx.connected.set(ctx.connected.get() + 1);
                        ctx.shared.event("session_connected");
                        let again = std::mem::replace(ever_connected, true);
                        if again {
                            ctx.shared.event("session_reconnected");
                        }
                        if std::mem::take(renewing) {
                            ctx.shared.event("session_token_renewed");
                        }
                        if let Some(sp) = &topics.sparkplug {
                            sp.used.set(true);
                            if again {
                                // What waited for this connection continues the last session's
                                // seq: stale for a host that saw the NDEATH. The shard sends a new
                                // NBIRTH (and DBIRTHs) with its next sample.
                                for m in dev.queue.borrow_mut().drain(..) {
                                    ctx.shared.fail(&m, "sparkplug_stale");
                                    ctx.shared.extra_settled();
                                }
                                ctx.sparkplug
                                    .borrow_mut()
                                    .push((sp.hash, SparkplugIn::Reconnected));
                            }
                        }
                        ctx.shared.conn_event(ConnEvent::Session {
                            device_id: topics.device_id.clone(),
                            connected: true,
                            detail: String::new(),
                        });
                        if let Some(f) = &topics.subscribe {
                            session.subscribe(f, ctx.settings.subscribe_qos, mono_ns());
                        }
                    }
                    Outcome::Refused { reason } => end = Some(End::Refused(reason)),
                    Outcome::Delivered(Token::Msg(m)) => {
                        ctx.shared.complete(&m);
                        ctx.shared.extra_settled();
                    }
                    Outcome::Rejected(Token::Msg(m), reason) => {
                        ctx.shared.fail(&m, reason);
                        ctx.shared.extra_settled();
                    }
                    Outcome::Delivered(Token::Response) | Outcome::Rejected(Token::Response, _) => {
                    }
                    Outcome::Subscribed { granted_qos: None } => {
                        ctx.shared.event("session_subscribe_refused");
                    }
                    Outcome::Subscribed { .. } => {
                        // An edge node subscribes DCMD once NCMD is granted (one at a time).
                        if let Some(sp) = &topics.sparkplug
                            && !std::mem::replace(&mut dcmd_subscribed, true)
                        {
                            session.subscribe(&sp.dcmd, ctx.settings.subscribe_qos, mono_ns());
                        }
                    }
                    Outcome::Command { topic, payload, .. } if topics.sparkplug.is_some() => {
                        let Some(sp) = &topics.sparkplug else { continue };
                        let ncmd = topic.windows(6).any(|w| w == b"/NCMD/");
                        ctx.shared.event(if ncmd { "sparkplug_ncmd" } else { "sparkplug_dcmd" });
                        ctx.command_stats(topics.profile, |st| st.commands += 1);
                        if ncmd && crate::sim::sparkplug::is_rebirth(&payload) {
                            ctx.shared.event("sparkplug_rebirth");
                            ctx.sparkplug.borrow_mut().push((sp.hash, SparkplugIn::Rebirth));
                        } else if !ncmd {
                            for _ in 0..crate::sim::sparkplug::count_metrics(&payload) {
                                ctx.shared.event("sparkplug_dcmd_write");
                            }
                            // spBv1.0/GROUP/DCMD/NODE/DEVICE: the device is the last level.
                            let device = topic.rsplit(|b| *b == b'/').next().unwrap_or_default();
                            ctx.sparkplug.borrow_mut().push((
                                sp.hash,
                                SparkplugIn::Dcmd {
                                    device: String::from_utf8_lossy(device).into_owned(),
                                    payload: payload.to_vec(),
                                },
                            ));
                        }
                    }
                    Outcome::Command { topic, payload, qos: command_qos } => {
                        ctx.shared.event("command_received");
                        let cmd = Command::parse(&payload);
                        ctx.command_stats(topics.profile, |st| {
                            st.commands += 1;
                            if let Some(sent_us) = cmd.sent_at_us {
                                crate::measure::stats::record(
                                    st.command_rtt.get_mut(),
                                    wall_us().saturating_sub(sent_us),
                                );
                            }
                        });
                        ctx.shared.conn_event(ConnEvent::Command {
                            device_id: topics.device_id.clone(),
                            topic: String::from_utf8_lossy(&topic).into_owned(),
                            id: cmd.id.clone().unwrap_or_default(),
                        });
                        if let Some(r) = &topics.respond {
                            let body = serde_json::json!({
                                "id": cmd.id,
                                "device_id": topics.device_id,
                                "status": "ok",
                            });
                            // `answer_qos`, or the QoS the command arrived at.
                            let qos = ctx.settings.answer_qos.unwrap_or(command_qos);
                            if session
                                .publish(
                                    r,
                                    body.to_string().into(),
                                    qos,
                                    false,
                                    Token::Response,
                                    mono_ns(),
                                )
                                .is_ok()
                            {
                                ctx.shared.event("command_responded");
                                ctx.command_stats(topics.profile, |st| st.commands_answered += 1);
                            }
                        }
                    }
                    Outcome::Closed(reason) => end = Some(End::Lost(reason.as_str().to_string())),
                }
            }
            if session.has_output() {
                if let Err(e) = stream.write_all(session.output()).await {
                    break End::Lost(format!("write: {e}"));
                }
                session.clear_output();
            }
            if let Some(e) = end {
                break e;
            }
            if ctx.shared.closing.get() {
                // An edge node that leaves on purpose says so first: its NDEATH (the broker
                // discards the will on DISCONNECT).
                if let (Some(_), Some(w)) = (&topics.sparkplug, &params.will) {
                    let now = mono_ns();
                    if session
                        .publish(&w.topic, w.payload.clone(), 0, false, Token::Response, now)
                        .is_ok()
                    {
                        ctx.shared.event("sparkplug_ndeath");
                    }
                }
                // `drain` waited for what was queued and in flight; what is left is counted.
                session.disconnect();
                let _ = stream.write_all(&session.take_output()).await;
                let _ = stream.shutdown().await;
                break End::Closing;
            }
            if ctx.shared.abandoned.get() {
                break End::Closing;
            }
            if let Some(how) = dev.drop.take() {
                if how == Drop::Graceful {
                    session.disconnect();
                    let _ = stream.write_all(&session.take_output()).await;
                    let _ = stream.shutdown().await;
                }
                ctx.shared.event(match how {
                    Drop::Graceful => "session_dropped_graceful",
                    Drop::Abrupt => "session_dropped_abrupt",
                });
                break End::Dropped;
            }
            if renew_due {
                // The token expires soon: leave cleanly (the broker discards the will) and
                // connect again with a fresh one.
                session.disconnect();
                let _ = stream.write_all(&session.take_output()).await;
                let _ = stream.shutdown().await;
                break End::Renew;
            }
            if let Some(due) = session.next_timeout_ns()
                && armed_ns.is_none_or(|a| due < a)
            {
                let wait = Duration::from_nanos(due.saturating_sub(mono_ns()));
                timer.as_mut().reset(tokio::time::Instant::now() + wait);
                armed_ns = Some(due);
            }
            // A waiting session keeps no buffer memory: most of a fleet waits most of the time.
            session.release_buffers();
            tokio::select! {
                r = ctx.read(&mut stream) => match r {
                    Ok(0) => break End::Lost("closed by the broker".into()),
                    // The bytes are in the shard's read buffer: nothing else ran since the read.
                    Ok(n) => session.read(&ctx.read_buf.borrow()[..n], mono_ns()),
                    Err(e) => break End::Lost(format!("read: {e}")),
                },
                _ = &mut wake => wake.set(dev.wake.notified()),
                _ = &mut timer, if armed_ns.is_some() => {
                    armed_ns = None;
                    session.handle_timeout(mono_ns());
                }
                _ = async {
                    match renew.as_mut() {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                }, if !renew_due => renew_due = true,
                _ = &mut abandon => abandon.set(ctx.shared.abandon.notified()),
                _ = &mut close => close.set(ctx.shared.close.notified()),
            }
        };
        ctx.shared.open_sessions.set(ctx.shared.open_sessions.get().saturating_sub(1));
        if up {
            ctx.connected.set(ctx.connected.get().saturating_sub(1));
            if !matches!(end, End::Closing | End::Renew) {
                ctx.shared.event("session_lost");
                ctx.shared.conn_event(ConnEvent::Session {
                    device_id: topics.device_id.clone(),
                    connected: false,
                    detail: match &end {
                        End::Lost(e) => e.clone(),
                        End::Dropped => "dropped by a fault".into(),
                        _ => String::new(),
                    },
                });
            }
        }
        end
    }
}

/// What the sink reads of a downlink command: a JSON object's `id` (string or number) and
/// `sent_at` (when the commander sent it: milliseconds since the Unix epoch, or an RFC 3339
/// date-time), both optional. Anything else (not JSON, other fields) is accepted as is.
#[derive(Debug, Default, PartialEq)]
struct Command {
    id: Option<String>,
    /// `sent_at` in µs since the Unix epoch.
    sent_at_us: Option<u64>,
}

impl Command {
    fn parse(payload: &[u8]) -> Command {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return Command::default();
        };
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let sent_at_us = match v.get("sent_at") {
            Some(serde_json::Value::Number(n)) => {
                n.as_f64().filter(|ms| ms.is_finite() && *ms >= 0.0).map(|ms| (ms * 1000.0) as u64)
            }
            Some(serde_json::Value::String(s)) => {
                crate::sim::time::parse_rfc3339(s).ok().map(|ms| ms.saturating_mul(1000))
            }
            _ => None,
        };
        Command { id, sent_at_us }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_password_is_the_hex_hmac_sha256_of_the_client_id() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_password(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn command_ids_are_read_from_json_strings_or_numbers() {
        assert_eq!(Command::parse(br#"{"id":"c-1","op":"reboot"}"#).id.as_deref(), Some("c-1"));
        assert_eq!(Command::parse(br#"{"id":42}"#).id.as_deref(), Some("42"));
        assert_eq!(Command::parse(b"reboot"), Command::default());
    }

    #[test]
    fn command_sent_at_is_read_as_epoch_ms_or_rfc3339() {
        let c = Command::parse(br#"{"id":"a","sent_at":1764489600250}"#);
        assert_eq!(c.sent_at_us, Some(1_764_489_600_250_000));
        let c = Command::parse(br#"{"sent_at":"2025-11-30T08:00:00.250Z"}"#);
        assert_eq!(c.sent_at_us, Some(1_764_489_600_250_000));
        assert_eq!(Command::parse(br#"{"sent_at":-5}"#).sent_at_us, None);
        assert_eq!(Command::parse(br#"{"sent_at":"yesterday"}"#).sent_at_us, None);
        assert_eq!(Command::parse(br#"{"sent_at":true}"#).sent_at_us, None);
    }
}
