//! A sans-IO MQTT client session: protocol state as data, driven by bytes, events and `now`.
//!
//! The session owns no socket and reads no clock. Its driver (a connection task on the shard's
//! runtime) feeds it what arrived ([`Session::read`]), what the sink wants sent
//! ([`Session::publish`], [`Session::subscribe`], [`Session::disconnect`]) and the current
//! monotonic time; the session appends every packet it produces to one output buffer
//! ([`Session::take_output`]) so that the driver writes all packets of one turn in one write,
//! says when it next needs to be woken ([`Session::next_timeout_ns`]) and reports what became
//! of things as [`Outcome`]s ([`Session::poll_outcome`]).
//!
//! What it does, MQTT 3.1.1 and 5 (packets encoded and decoded by `rumqttc::mqttbytes`):
//! - CONNECT / CONNACK, with a connect timeout; a refusal is reported with its reason.
//! - Keep-alive: a PINGREQ when nothing was written for the keep-alive interval (the first one
//!   moved earlier by a per-session phase, so a fleet's pings do not all fire on one tick), and
//!   a close when the PINGRESP does not come within another interval.
//! - PUBLISH at QoS 0 (delivered when written), 1 (PUBACK) and 2 (PUBREC, PUBREL, PUBCOMP),
//!   packet ids `1..=inflight` reused as acknowledgements free them, at most `inflight`
//!   unacknowledged messages.
//! - After a lost connection everything unacknowledged stays; after the next CONNACK it is sent
//!   again in its original order, PUBLISH with DUP set, PUBREL where PUBREC had arrived.
//! - SUBSCRIBE / SUBACK; incoming PUBLISH (downlink) at QoS 0/1/2, acknowledged, reported as
//!   [`Outcome::Command`]; a QoS 2 command is reported once, on PUBLISH, and released on PUBREL.
//! - DISCONNECT (graceful close, no will).
//! - MQTT 5 CONNACK properties: Receive Maximum narrows the in-flight window, Maximum Packet
//!   Size ([MQTT-3.2.2-15]) refuses a PUBLISH that would not fit (reported as
//!   [`Outcome::Rejected`] with `too_large`, never written, never retried), Server Keep Alive
//!   ([MQTT-3.2.2-21]) replaces the keep-alive asked for, for that connection.
//! - MQTT 5 PUBLISH properties ([`Session::publish_props`]): a pre-encoded property block per
//!   message (content type, expiry, user properties: the driver's, per device), and topic
//!   aliases up to the CONNACK's Topic Alias Maximum: a topic gets the next alias on its first
//!   PUBLISH (topic and alias), later ones carry the alias and an empty topic; the aliases
//!   belong to the connection and start over after every CONNECT (a resend after a reconnect
//!   sets them up again).

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use std::collections::{HashMap, VecDeque};

/// The MQTT protocol version a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// A last will, published by the broker when the session ends without DISCONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// What goes into one CONNECT. Built by the driver per attempt, not kept by the session (a
/// per-device session stays small).
#[derive(Clone, Debug, Default)]
pub struct ConnectParams {
    pub client_id: String,
    pub clean_session: bool,
    /// MQTT 5 session expiry interval, seconds (ignored by 3.1.1).
    pub session_expiry_s: Option<u32>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
}

/// Why a session closed itself (the driver then closes the socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No CONNACK within the connect timeout.
    ConnectTimeout,
    /// No PINGRESP within a keep-alive interval of the PINGREQ.
    PingTimeout,
    /// The broker sent something that is not valid MQTT, or not valid at this point.
    ProtocolError,
    /// The broker sent DISCONNECT (MQTT 5).
    ServerDisconnect,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::ServerDisconnect => "server_disconnect",
        }
    }
}

/// What became of something the session was given, or what the broker did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// CONNACK accepted.
    Connected { session_present: bool },
    /// CONNACK refused; the reason is a short stable name (a counter label).
    Refused { reason: &'static str },
    /// The message is delivered: QoS 0 written, QoS 1 PUBACK, QoS 2 PUBCOMP.
    Delivered(T),
    /// Not delivered: the broker answered with an MQTT 5 error reason code, or the message is
    /// larger than the broker's Maximum Packet Size (`too_large`: never written, not retried).
    Rejected(T, &'static str),
    /// SUBACK: the granted QoS, or `None` when the broker refused the filter.
    Subscribed { granted_qos: Option<u8> },
    /// A PUBLISH from the broker (a downlink command), with the QoS it arrived at.
    Command { topic: Bytes, payload: Bytes, qos: u8 },
    /// The session closed itself; the driver closes the socket.
    Closed(CloseReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Disconnected,
    Connecting { since_ns: u64 },
    Connected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent (QoS 1: waiting for PUBACK; QoS 2: for PUBREC).
    Published,
    /// QoS 2: PUBREC arrived, PUBREL sent, waiting for PUBCOMP.
    Released,
}

struct Flight<T> {
    topic: Bytes,
    payload: Bytes,
    /// MQTT 5 properties (without the topic alias), and whether it may take an alias.
    props: Bytes,
    alias: bool,
    qos: u8,
    retain: bool,
    stage: Stage,
    /// Hand-over order: resent in this order after a reconnect.
    order: u64,
    token: T,
}

/// At most this many bytes of an incoming packet are accepted (a downlink command is small);
/// a larger one closes the session as a protocol error.
const INCOMING_PACKET_MAX: usize = crate::limits::MAX_INCOMING_MQTT_PACKET;

/// One MQTT client session. `T` is what the sink attaches to each message (handed back in
/// [`Outcome::Delivered`]).
pub struct Session<T> {
    version: Version,
    state: State,
    /// The keep-alive asked for in CONNECT.
    keep_alive_ms: u32,
    /// The keep-alive of this connection: `keep_alive_ms`, or an MQTT 5 broker's Server Keep
    /// Alive from CONNACK.
    keep_alive_now_ms: u32,
    /// An MQTT 5 broker's Maximum Packet Size from CONNACK (`None`: no limit but the protocol's).
    max_packet_size: Option<u32>,
    /// An MQTT 5 broker's Topic Alias Maximum from CONNACK (0: no aliases).
    alias_max: u16,
    /// The topic aliases of this connection (alias `n` is the `n`-th topic given one).
    aliases: HashMap<Bytes, u16>,
    connect_timeout_ms: u32,
    /// Moves the first PINGREQ after a CONNACK this much earlier (spreads a fleet's pings).
    ping_phase_ms: u32,
    inflight_max: u16,
    /// The in-flight window of this connection: `inflight_max`, or less when an MQTT 5 broker's
    /// CONNACK names a smaller Receive Maximum.
    window: u16,
    inflight: u16,
    /// The last packet id handed out (ids are `1..=inflight_max`).
    last_pkid: u16,
    next_order: u64,
    /// Indexed by `pkid - 1`; grown on first use up to `inflight_max`.
    flights: Vec<Option<Flight<T>>>,
    /// Packet id of the SUBSCRIBE waiting for its SUBACK (`inflight_max + 1`, outside the
    /// publish range, so the two never collide).
    sub_pending: bool,
    /// QoS 2 commands received (PUBREC sent) and not yet released by PUBREL.
    incoming_qos2: Vec<u16>,
    last_write_ns: u64,
    ping_sent_ns: Option<u64>,
    out: BytesMut,
    inbuf: BytesMut,
    outcomes: VecDeque<Outcome<T>>,
}

const MS: u64 = 1_000_000;

impl<T> Session<T> {
    /// A disconnected session. `keep_alive_ms` 0 turns keep-alive off; `inflight` (at least 1)
    /// bounds unacknowledged QoS 1/2 messages.
    pub fn new(version: Version, keep_alive_ms: u32, inflight: u16) -> Session<T> {
        Session {
            version,
            state: State::Disconnected,
            keep_alive_ms: keep_alive_ms.min(u16::MAX as u32 * 1000),
            keep_alive_now_ms: keep_alive_ms.min(u16::MAX as u32 * 1000),
            max_packet_size: None,
            alias_max: 0,
            aliases: HashMap::new(),
            connect_timeout_ms: 10_000,
            ping_phase_ms: 0,
            inflight_max: inflight.clamp(1, u16::MAX - 1),
            window: inflight.clamp(1, u16::MAX - 1),
            inflight: 0,
            last_pkid: 0,
            next_order: 0,
            flights: Vec::new(),
            sub_pending: false,
            incoming_qos2: Vec::new(),
            last_write_ns: 0,
            ping_sent_ns: None,
            out: BytesMut::new(),
            inbuf: BytesMut::new(),
            outcomes: VecDeque::new(),
        }
    }

    /// How long to wait for CONNACK (default 10 s).
    pub fn set_connect_timeout_ms(&mut self, ms: u32) {
        self.connect_timeout_ms = ms.max(1);
    }

    /// Moves the first PINGREQ after each CONNACK `ms` earlier (modulo the connection's
    /// keep-alive, so less than it).
    pub fn set_ping_phase_ms(&mut self, ms: u32) {
        self.ping_phase_ms = ms;
    }

    /// The keep-alive of the current connection, ms: the one asked for, or the Server Keep
    /// Alive an MQTT 5 broker returned in CONNACK (0: off).
    #[cfg(test)]
    fn keep_alive_now_ms(&self) -> u32 {
        self.keep_alive_now_ms
    }

    /// The largest packet the broker takes, from an MQTT 5 CONNACK's Maximum Packet Size.
    #[cfg(test)]
    fn max_packet_size(&self) -> Option<u32> {
        self.max_packet_size
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    #[cfg(test)]
    fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    /// Unacknowledged QoS 1/2 messages.
    #[cfg(test)]
    fn inflight(&self) -> usize {
        self.inflight as usize
    }

    /// Whether [`Session::publish`] would take a message of this QoS now.
    pub fn can_publish(&self, qos: u8) -> bool {
        self.is_connected() && (qos == 0 || self.inflight < self.window)
    }

    /// Starts a connection attempt on a freshly opened transport: writes CONNECT.
    pub fn connect(&mut self, p: &ConnectParams, now_ns: u64) {
        self.inbuf.clear();
        self.out.clear();
        self.ping_sent_ns = None;
        self.sub_pending = false;
        self.incoming_qos2.clear();
        self.keep_alive_now_ms = self.keep_alive_ms;
        self.max_packet_size = None;
        self.alias_max = 0;
        self.aliases.clear();
        let keep_alive = (self.keep_alive_ms / 1000) as u16;
        match self.version {
            Version::V311 => {
                let mut c = v4::Connect::new(p.client_id.clone());
                c.keep_alive = keep_alive;
                c.clean_session = p.clean_session;
                if let Some(u) = &p.username {
                    c.set_login(u.clone(), p.password.clone().unwrap_or_default());
                }
                c.last_will = p.will.as_ref().map(|w| v4::LastWill {
                    topic: w.topic.clone(),
                    message: w.payload.clone(),
                    qos: qos4(w.qos),
                    retain: w.retain,
                });
                self.write4(v4::Packet::Connect(c));
            }
            Version::V5 => {
                let mut props = v5::ConnectProperties::new();
                props.session_expiry_interval = p.session_expiry_s;
                props.receive_maximum = Some(u16::MAX);
                let c = v5::Connect {
                    keep_alive,
                    client_id: p.client_id.clone(),
                    clean_start: p.clean_session,
                    properties: Some(props),
                };
                let will = p.will.as_ref().map(|w| v5::LastWill {
                    topic: Bytes::copy_from_slice(w.topic.as_bytes()),
                    message: w.payload.clone(),
                    qos: qos5(w.qos),
                    retain: w.retain,
                    properties: None,
                });
                let login = p
                    .username
                    .as_ref()
                    .map(|u| v5::Login::new(u.clone(), p.password.clone().unwrap_or_default()));
                self.write5(v5::Packet::Connect(c, will, login));
            }
        }
        self.state = State::Connecting { since_ns: now_ns };
        self.last_write_ns = now_ns;
    }

    /// Publishes a message. QoS 0 is delivered as soon as it is written (an outcome now);
    /// QoS 1/2 take a packet id. Gives the token back when not connected or the in-flight
    /// window is full.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
        token: T,
        now_ns: u64,
    ) -> Result<(), T> {
        self.publish_bytes(
            Bytes::copy_from_slice(topic.as_bytes()),
            payload,
            qos,
            retain,
            token,
            now_ns,
        )
    }

    /// [`Session::publish`] with the topic as `Bytes` (UTF-8, checked by the caller's config):
    /// the drivers' hot path, which hands over a message's own topic without a copy (a driver
    /// checks [`Session::can_publish`] first, so the topic is not given away for nothing). A
    /// QoS 0 message is encoded straight into the output buffer and not kept.
    pub fn publish_bytes(
        &mut self,
        topic: Bytes,
        payload: Bytes,
        qos: u8,
        retain: bool,
        token: T,
        now_ns: u64,
    ) -> Result<(), T> {
        self.publish_props(topic, payload, Props::default(), qos, retain, token, now_ns)
    }

    /// [`Session::publish_bytes`] with MQTT 5 PUBLISH properties (ignored by 3.1.1): `props.
    /// block` goes out as it is, and with `props.alias` the topic takes an alias when the broker
    /// allows them.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_props(
        &mut self,
        topic: Bytes,
        payload: Bytes,
        props: Props,
        qos: u8,
        retain: bool,
        token: T,
        now_ns: u64,
    ) -> Result<(), T> {
        if !self.can_publish(qos) {
            return Err(token);
        }
        if !self.fits(&topic, &payload, &props, qos) {
            // [MQTT-3.2.2-15]: never sent; a broker would drop the connection for it, and the
            // resend after the reconnect would do it again.
            self.outcomes.push_back(Outcome::Rejected(token, TOO_LARGE));
            return Ok(());
        }
        if qos == 0 {
            self.write_publish(&topic, &payload, &props, 0, retain, 0, false);
            self.outcomes.push_back(Outcome::Delivered(token));
        } else {
            let pkid = self.next_pkid();
            self.write_publish(&topic, &payload, &props, qos.min(2), retain, pkid, false);
            let order = self.next_order;
            self.next_order += 1;
            let slot = pkid as usize - 1;
            if self.flights.len() <= slot {
                self.flights.resize_with(slot + 1, || None);
            }
            self.flights[slot] = Some(Flight {
                topic,
                payload,
                props: props.block,
                alias: props.alias,
                qos: qos.min(2),
                retain,
                stage: Stage::Published,
                order,
                token,
            });
            self.inflight += 1;
        }
        self.last_write_ns = now_ns;
        Ok(())
    }

    /// Whether a PUBLISH of this topic, payload and QoS fits the broker's Maximum Packet Size.
    /// (With properties: their block and a topic alias, whether or not one is used.)
    fn fits(&self, topic: &[u8], payload: &[u8], props: &Props, qos: u8) -> bool {
        self.max_packet_size.is_none_or(|max| {
            let extra = match self.version {
                Version::V5 if !props.block.is_empty() || props.alias => {
                    let n = props.block.len() + if props.alias { 3 } else { 0 };
                    n + varint_len(n) - 1
                }
                _ => 0,
            };
            publish_len(self.version, topic.len(), payload.len() + extra, qos) <= max as usize
        })
    }

    /// Subscribes to one filter (answered by [`Outcome::Subscribed`]). Only while connected.
    pub fn subscribe(&mut self, filter: &str, qos: u8, now_ns: u64) -> bool {
        if !self.is_connected() {
            return false;
        }
        let pkid = self.inflight_max + 1;
        match self.version {
            Version::V311 => {
                let mut s = v4::Subscribe::new(filter, qos4(qos));
                s.pkid = pkid;
                self.write4(v4::Packet::Subscribe(s))
            }
            Version::V5 => {
                let mut s = v5::Subscribe::new(v5::Filter::new(filter, qos5(qos)), None);
                s.pkid = pkid;
                self.write5(v5::Packet::Subscribe(s))
            }
        }
        self.sub_pending = true;
        self.last_write_ns = now_ns;
        true
    }

    /// Closes gracefully: writes DISCONNECT (the broker discards the will). Unacknowledged
    /// messages stay for the next connection.
    pub fn disconnect(&mut self) {
        if self.state != State::Disconnected {
            match self.version {
                Version::V311 => self.write4(v4::Packet::Disconnect),
                Version::V5 => self.write5(v5::Packet::Disconnect(v5::Disconnect::new(
                    v5::DisconnectReasonCode::NormalDisconnection,
                ))),
            }
        }
        self.state = State::Disconnected;
        self.ping_sent_ns = None;
    }

    /// The transport is gone (closed by either side or failed). Unacknowledged messages stay
    /// and are sent again after the next CONNACK; unwritten output is dropped.
    pub fn connection_lost(&mut self) {
        self.state = State::Disconnected;
        self.ping_sent_ns = None;
        self.sub_pending = false;
        self.out.clear();
        self.inbuf.clear();
    }

    /// Takes every unacknowledged message back, oldest first (to fail or requeue them).
    pub fn take_unacked(&mut self) -> Vec<T> {
        let mut all: Vec<Flight<T>> = self.flights.iter_mut().filter_map(Option::take).collect();
        all.sort_by_key(|f| f.order);
        self.inflight = 0;
        all.into_iter().map(|f| f.token).collect()
    }

    /// Bytes to write, all packets produced since the last call, in order.
    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    /// The bytes to write (all packets produced since the last [`Session::clear_output`]),
    /// for a driver that writes from the session's own buffer and then clears it.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the output after it was written; the buffer's memory is kept for the next turn.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// Bytes waiting in the output buffer.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Frees the memory of buffers with nothing in them (output, input, outcomes, and the
    /// in-flight slots when nothing is in flight), for a session about to wait: an idle
    /// session then holds only its fixed state. Each comes back on its next use.
    pub fn release_buffers(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = BytesMut::new();
        }
        if self.outcomes.is_empty() && self.outcomes.capacity() > 0 {
            self.outcomes = VecDeque::new();
        }
        if self.inflight == 0 && self.flights.capacity() > 0 {
            // Every id is free: numbering starts over with the smallest slot.
            self.flights = Vec::new();
            self.last_pkid = 0;
        }
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn poll_outcome(&mut self) -> Option<Outcome<T>> {
        self.outcomes.pop_front()
    }

    /// The monotonic time at which [`Session::handle_timeout`] has something to do.
    pub fn next_timeout_ns(&self) -> Option<u64> {
        match self.state {
            State::Disconnected => None,
            State::Connecting { since_ns } => Some(since_ns + self.connect_timeout_ms as u64 * MS),
            State::Connected if self.keep_alive_now_ms == 0 => None,
            State::Connected => Some(match self.ping_sent_ns {
                Some(sent) => sent + self.keep_alive_now_ms as u64 * MS,
                None => self.last_write_ns + self.keep_alive_now_ms as u64 * MS,
            }),
        }
    }

    /// Acts on the timers due at `now_ns`: connect timeout, PINGREQ, ping timeout.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        let Some(due) = self.next_timeout_ns() else { return };
        if now_ns < due {
            return;
        }
        match self.state {
            State::Disconnected => {}
            State::Connecting { .. } => self.close(CloseReason::ConnectTimeout),
            State::Connected if self.ping_sent_ns.is_some() => self.close(CloseReason::PingTimeout),
            State::Connected => {
                match self.version {
                    Version::V311 => self.write4(v4::Packet::PingReq),
                    Version::V5 => self.write5(v5::Packet::PingReq(v5::PingReq)),
                }
                self.ping_sent_ns = Some(now_ns);
                self.last_write_ns = now_ns;
            }
        }
    }

    /// Feeds bytes read from the transport; complete packets are handled at once.
    pub fn read(&mut self, bytes: &[u8], now_ns: u64) {
        if self.state == State::Disconnected {
            return;
        }
        self.inbuf.extend_from_slice(bytes);
        loop {
            let packet = match self.version {
                Version::V311 => match v4::Packet::read(&mut self.inbuf, INCOMING_PACKET_MAX) {
                    Ok(p) => In::from4(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return,
                    Err(_) => None,
                },
                Version::V5 => {
                    match v5::Packet::read(&mut self.inbuf, Some(INCOMING_PACKET_MAX as u32)) {
                        Ok(p) => In::from5(p),
                        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => return,
                        Err(_) => None,
                    }
                }
            };
            match packet {
                Some(p) => self.handle(p, now_ns),
                None => self.close(CloseReason::ProtocolError),
            }
            if self.state == State::Disconnected {
                return;
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.connection_lost();
        self.outcomes.push_back(Outcome::Closed(reason));
    }

    fn handle(&mut self, p: In, now_ns: u64) {
        // Anything from the broker answers an outstanding ping as well as PINGRESP does.
        if self.state == State::Connected {
            self.ping_sent_ns = None;
        }
        match (self.state, p) {
            (State::Connecting { .. }, In::ConnAck(Ok(ack))) => {
                self.state = State::Connected;
                // An MQTT 5 broker may take fewer unacknowledged messages than configured.
                self.window = match ack.receive_max {
                    Some(m) if m > 0 => m.min(self.inflight_max),
                    _ => self.inflight_max,
                };
                // [MQTT-3.2.2-15]: nothing larger than the broker's Maximum Packet Size.
                self.max_packet_size = ack.max_packet_size.filter(|m| *m > 0);
                self.alias_max = ack.topic_alias_max.unwrap_or(0);
                // [MQTT-3.2.2-21]: the broker's Server Keep Alive replaces the one asked for.
                if let Some(k) = ack.server_keep_alive {
                    self.keep_alive_now_ms = k as u32 * 1000;
                }
                self.outcomes
                    .push_back(Outcome::Connected { session_present: ack.session_present });
                self.resend(now_ns);
                let phase = match self.keep_alive_now_ms {
                    0 => 0,
                    k => self.ping_phase_ms % k,
                };
                self.last_write_ns = now_ns.saturating_sub(phase as u64 * MS);
            }
            (State::Connecting { .. }, In::ConnAck(Err(reason))) => {
                self.connection_lost();
                self.outcomes.push_back(Outcome::Refused { reason });
            }
            (State::Connecting { .. }, _) => self.close(CloseReason::ProtocolError),
            (_, In::ConnAck(_)) => self.close(CloseReason::ProtocolError),
            (_, In::PubAck { pkid, error }) => {
                if let Some(f) = self.take_flight(pkid, 1, Stage::Published) {
                    self.outcomes.push_back(match error {
                        None => Outcome::Delivered(f.token),
                        Some(r) => Outcome::Rejected(f.token, r),
                    });
                }
            }
            (_, In::PubRec { pkid, error }) => {
                let slot = pkid as usize;
                let known = slot >= 1
                    && matches!(self.flights.get(slot - 1), Some(Some(f)) if f.qos == 2 && f.stage == Stage::Published);
                if !known {
                    return;
                }
                if let Some(r) = error {
                    if let Some(f) = self.take_flight(pkid, 2, Stage::Published) {
                        self.outcomes.push_back(Outcome::Rejected(f.token, r));
                    }
                    return;
                }
                if let Some(Some(f)) = self.flights.get_mut(slot - 1) {
                    f.stage = Stage::Released;
                }
                self.write_pubrel(pkid);
                self.last_write_ns = now_ns;
            }
            (_, In::PubComp { pkid, error }) => {
                if let Some(f) = self.take_flight(pkid, 2, Stage::Released) {
                    self.outcomes.push_back(match error {
                        None => Outcome::Delivered(f.token),
                        Some(r) => Outcome::Rejected(f.token, r),
                    });
                }
            }
            (_, In::Publish { qos, pkid, topic, payload }) => {
                match qos {
                    0 => {}
                    1 => self.write_ack(AckKind::Ack, pkid),
                    _ => {
                        self.write_ack(AckKind::Rec, pkid);
                        if self.incoming_qos2.contains(&pkid) {
                            // A resent QoS 2 command already reported: exactly once.
                            self.last_write_ns = now_ns;
                            return;
                        }
                        if self.incoming_qos2.len() >= 64 {
                            self.incoming_qos2.remove(0);
                        }
                        self.incoming_qos2.push(pkid);
                    }
                }
                if qos > 0 {
                    self.last_write_ns = now_ns;
                }
                self.outcomes.push_back(Outcome::Command { topic, payload, qos });
            }
            (_, In::PubRel { pkid }) => {
                self.incoming_qos2.retain(|p| *p != pkid);
                self.write_ack(AckKind::Comp, pkid);
                self.last_write_ns = now_ns;
            }
            (_, In::SubAck { pkid, granted_qos }) => {
                if self.sub_pending && pkid == self.inflight_max + 1 {
                    self.sub_pending = false;
                    self.outcomes.push_back(Outcome::Subscribed { granted_qos });
                }
            }
            (_, In::PingResp) => {}
            (_, In::Disconnect) => self.close(CloseReason::ServerDisconnect),
            (_, In::Unexpected) => self.close(CloseReason::ProtocolError),
        }
    }

    fn take_flight(&mut self, pkid: u16, qos: u8, stage: Stage) -> Option<Flight<T>> {
        let slot = (pkid as usize).checked_sub(1)?;
        let f = self.flights.get_mut(slot)?;
        if !matches!(f, Some(fl) if fl.qos == qos && fl.stage == stage) {
            return None;
        }
        self.inflight -= 1;
        f.take()
    }

    /// The next free packet id after the last one handed out (ids cycle through
    /// `1..=inflight_max`, so a freed id is reused once the others have had their turn).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid =
                if self.last_pkid >= self.inflight_max { 1 } else { self.last_pkid + 1 };
            let slot = self.last_pkid as usize - 1;
            if !matches!(self.flights.get(slot), Some(Some(_))) {
                return self.last_pkid;
            }
        }
    }

    /// After CONNACK: everything unacknowledged again, in hand-over order.
    fn resend(&mut self, now_ns: u64) {
        let mut order: Vec<(u64, u16)> = self
            .flights
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (f.order, i as u16 + 1)))
            .collect();
        if order.is_empty() {
            return;
        }
        order.sort_unstable();
        for (_, pkid) in order {
            let Some(f) = self.flights[pkid as usize - 1].take() else { continue };
            let props = Props { block: f.props.clone(), alias: f.alias };
            match f.stage {
                // This broker takes smaller packets than the one it was sent to: it cannot go.
                Stage::Published if !self.fits(&f.topic, &f.payload, &props, f.qos) => {
                    self.inflight -= 1;
                    self.outcomes.push_back(Outcome::Rejected(f.token, TOO_LARGE));
                    continue;
                }
                Stage::Published => {
                    self.write_publish(&f.topic, &f.payload, &props, f.qos, f.retain, pkid, true)
                }
                Stage::Released => self.write_pubrel(pkid),
            }
            self.flights[pkid as usize - 1] = Some(f);
        }
        self.last_write_ns = now_ns;
    }

    #[allow(clippy::too_many_arguments)]
    fn write_publish(
        &mut self,
        topic: &Bytes,
        payload: &Bytes,
        props: &Props,
        qos: u8,
        retain: bool,
        pkid: u16,
        dup: bool,
    ) {
        if self.version == Version::V311 {
            encode_publish(&mut self.out, self.version, topic, payload, qos, retain, pkid, dup);
            return;
        }
        let alias = if props.alias && self.alias_max > 0 && !topic.is_empty() {
            match self.aliases.get(topic) {
                Some(&a) => Some((a, false)),
                None if self.aliases.len() < self.alias_max as usize => {
                    let a = self.aliases.len() as u16 + 1;
                    self.aliases.insert(topic.clone(), a);
                    Some((a, true))
                }
                // Every alias is taken: the full topic, no alias.
                None => None,
            }
        } else {
            None
        };
        let p = Publish { topic, payload, props: &props.block, alias, qos, retain, pkid, dup };
        encode_publish5(&mut self.out, &p);
    }

    fn write_pubrel(&mut self, pkid: u16) {
        match self.version {
            Version::V311 => self.write4(v4::Packet::PubRel(v4::PubRel::new(pkid))),
            Version::V5 => self.write5(v5::Packet::PubRel(v5::PubRel::new(pkid, None))),
        }
    }

    fn write_ack(&mut self, kind: AckKind, pkid: u16) {
        match (self.version, kind) {
            (Version::V311, AckKind::Ack) => self.write4(v4::Packet::PubAck(v4::PubAck::new(pkid))),
            (Version::V311, AckKind::Rec) => self.write4(v4::Packet::PubRec(v4::PubRec::new(pkid))),
            (Version::V311, AckKind::Comp) => {
                self.write4(v4::Packet::PubComp(v4::PubComp::new(pkid)))
            }
            (Version::V5, AckKind::Ack) => {
                self.write5(v5::Packet::PubAck(v5::PubAck::new(pkid, None)))
            }
            (Version::V5, AckKind::Rec) => {
                self.write5(v5::Packet::PubRec(v5::PubRec::new(pkid, None)))
            }
            (Version::V5, AckKind::Comp) => {
                self.write5(v5::Packet::PubComp(v5::PubComp::new(pkid, None)))
            }
        }
    }

    fn write4(&mut self, p: v4::Packet) {
        // Only oversized packets fail to encode, and nothing here is near the 1 MiB limit
        // the codec is given (payload sizes are bounded by the config).
        let _ = p.write(&mut self.out, usize::MAX);
    }

    fn write5(&mut self, p: v5::Packet) {
        let _ = p.write(&mut self.out, None);
    }
}

/// Which acknowledgement of an incoming PUBLISH to write.
#[derive(Clone, Copy)]
enum AckKind {
    Ack,
    Rec,
    Comp,
}

/// What an accepted CONNACK says (the properties are MQTT 5's; `None` from a 3.1.1 broker).
#[derive(Default)]
struct ConnAckOk {
    session_present: bool,
    receive_max: Option<u16>,
    max_packet_size: Option<u32>,
    server_keep_alive: Option<u16>,
    topic_alias_max: Option<u16>,
}

/// An incoming packet, the same for both versions.
enum In {
    /// Accepted, or refused with a reason.
    ConnAck(Result<ConnAckOk, &'static str>),
    PubAck {
        pkid: u16,
        error: Option<&'static str>,
    },
    PubRec {
        pkid: u16,
        error: Option<&'static str>,
    },
    PubComp {
        pkid: u16,
        error: Option<&'static str>,
    },
    PubRel {
        pkid: u16,
    },
    Publish {
        qos: u8,
        pkid: u16,
        topic: Bytes,
        payload: Bytes,
    },
    SubAck {
        pkid: u16,
        granted_qos: Option<u8>,
    },
    PingResp,
    Disconnect,
    /// A packet a broker never sends to a client.
    Unexpected,
}

impl In {
    fn from4(p: v4::Packet) -> Option<In> {
        use v4::ConnectReturnCode as C;
        Some(match p {
            v4::Packet::ConnAck(a) => In::ConnAck(match a.code {
                C::Success => {
                    Ok(ConnAckOk { session_present: a.session_present, ..Default::default() })
                }
                C::RefusedProtocolVersion => Err("protocol_version"),
                C::BadClientId => Err("bad_client_id"),
                C::ServiceUnavailable => Err("server_unavailable"),
                C::BadUserNamePassword => Err("bad_credentials"),
                C::NotAuthorized => Err("not_authorized"),
            }),
            v4::Packet::PubAck(a) => In::PubAck { pkid: a.pkid, error: None },
            v4::Packet::PubRec(a) => In::PubRec { pkid: a.pkid, error: None },
            v4::Packet::PubComp(a) => In::PubComp { pkid: a.pkid, error: None },
            v4::Packet::PubRel(a) => In::PubRel { pkid: a.pkid },
            v4::Packet::Publish(p) => In::Publish {
                qos: p.qos as u8,
                pkid: p.pkid,
                topic: Bytes::from(p.topic.into_bytes()),
                payload: p.payload,
            },
            v4::Packet::SubAck(s) => In::SubAck {
                pkid: s.pkid,
                granted_qos: match s.return_codes.first() {
                    Some(v4::SubscribeReasonCode::Success(q)) => Some(*q as u8),
                    _ => None,
                },
            },
            v4::Packet::PingResp => In::PingResp,
            v4::Packet::Disconnect => In::Disconnect,
            _ => In::Unexpected,
        })
    }

    fn from5(p: v5::Packet) -> Option<In> {
        use v5::ConnectReturnCode as C;
        Some(match p {
            v5::Packet::ConnAck(a) => In::ConnAck(match a.code {
                C::Success => {
                    let p = a.properties.as_ref();
                    Ok(ConnAckOk {
                        session_present: a.session_present,
                        receive_max: p.and_then(|p| p.receive_max),
                        max_packet_size: p.and_then(|p| p.max_packet_size),
                        server_keep_alive: p.and_then(|p| p.server_keep_alive),
                        topic_alias_max: p.and_then(|p| p.topic_alias_max),
                    })
                }
                C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
                    Err("protocol_version")
                }
                C::BadClientId | C::ClientIdentifierNotValid => Err("bad_client_id"),
                C::BadUserNamePassword | C::BadAuthenticationMethod => Err("bad_credentials"),
                C::NotAuthorized | C::Banned => Err("not_authorized"),
                C::ServiceUnavailable | C::ServerUnavailable | C::ServerBusy => {
                    Err("server_unavailable")
                }
                C::QuotaExceeded | C::ConnectionRateExceeded => Err("quota_exceeded"),
                _ => Err("other"),
            }),
            v5::Packet::PubAck(a) => {
                use v5::PubAckReason as R;
                let error = match a.reason {
                    R::Success | R::NoMatchingSubscribers => None,
                    R::NotAuthorized => Some("not_authorized"),
                    R::QuotaExceeded => Some("quota_exceeded"),
                    _ => Some("nack"),
                };
                In::PubAck { pkid: a.pkid, error }
            }
            v5::Packet::PubRec(a) => {
                use v5::PubRecReason as R;
                let error = match a.reason {
                    R::Success | R::NoMatchingSubscribers => None,
                    R::NotAuthorized => Some("not_authorized"),
                    R::QuotaExceeded => Some("quota_exceeded"),
                    _ => Some("nack"),
                };
                In::PubRec { pkid: a.pkid, error }
            }
            v5::Packet::PubComp(a) => In::PubComp {
                pkid: a.pkid,
                error: (a.reason != v5::PubCompReason::Success).then_some("nack"),
            },
            v5::Packet::PubRel(a) => In::PubRel { pkid: a.pkid },
            v5::Packet::Publish(p) => {
                In::Publish { qos: p.qos as u8, pkid: p.pkid, topic: p.topic, payload: p.payload }
            }
            v5::Packet::SubAck(s) => In::SubAck {
                pkid: s.pkid,
                granted_qos: match s.return_codes.first() {
                    Some(v5::SubscribeReasonCode::Success(q)) => Some(*q as u8),
                    _ => None,
                },
            },
            v5::Packet::PingResp(_) => In::PingResp,
            v5::Packet::Disconnect(_) => In::Disconnect,
            _ => In::Unexpected,
        })
    }
}

/// The error kind of a message larger than the broker's Maximum Packet Size.
pub const TOO_LARGE: &str = "too_large";

/// The remaining length of a PUBLISH (no properties) with this topic and payload.
fn publish_remaining(version: Version, topic_len: usize, payload_len: usize, qos: u8) -> usize {
    2 + topic_len
        + if qos > 0 { 2 } else { 0 }
        + if version == Version::V5 { 1 } else { 0 }
        + payload_len
}

/// The whole size of such a PUBLISH on the wire: fixed header byte, remaining length, rest.
fn publish_len(version: Version, topic_len: usize, payload_len: usize, qos: u8) -> usize {
    let remaining = publish_remaining(version, topic_len, payload_len, qos.min(2));
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining
}

/// Encodes one PUBLISH (MQTT 3.1.1 or 5, no properties) straight into `out`: the hot path of
/// every message, so no intermediate packet struct, topic `String` or allocation. Checked
/// against `rumqttc::mqttbytes`'s decoder by the tests.
#[allow(clippy::too_many_arguments)]
fn encode_publish(
    out: &mut BytesMut,
    version: Version,
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    dup: bool,
) {
    let qos = qos.min(2);
    let remaining = publish_remaining(version, topic.len(), payload.len(), qos);
    out.reserve(1 + 4 + remaining);
    out.put_u8(0x30 | (dup as u8) << 3 | qos << 1 | retain as u8);
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_u16(topic.len() as u16);
    out.put_slice(topic);
    if qos > 0 {
        out.put_u16(pkid);
    }
    if version == Version::V5 {
        // Property length 0.
        out.put_u8(0);
    }
    out.put_slice(payload);
}

/// A message's MQTT 5 PUBLISH properties, as the session takes them.
#[derive(Clone, Debug, Default)]
pub struct Props {
    /// Encoded properties (identifier, value; no length), sent as they are: see [`props`].
    pub block: Bytes,
    /// Give the topic an alias (Topic Alias Maximum permitting).
    pub alias: bool,
}

/// Encodes MQTT 5 PUBLISH properties into a [`Props::block`].
pub mod props {
    use bytes::{BufMut, BytesMut};

    /// Payload Format Indicator (byte).
    pub fn payload_format_indicator(out: &mut BytesMut, v: u8) {
        out.put_u8(0x01);
        out.put_u8(v);
    }

    /// Message Expiry Interval, seconds.
    pub fn message_expiry(out: &mut BytesMut, s: u32) {
        out.put_u8(0x02);
        out.put_u32(s);
    }

    /// Content Type (UTF-8 string).
    pub fn content_type(out: &mut BytesMut, ct: &str) {
        out.put_u8(0x03);
        string(out, ct);
    }

    /// One User Property (a UTF-8 string pair).
    pub fn user_property(out: &mut BytesMut, k: &str, v: &str) {
        out.put_u8(0x26);
        string(out, k);
        string(out, v);
    }

    /// A UTF-8 string, cut at 65535 bytes (on a char boundary).
    fn string(out: &mut BytesMut, s: &str) {
        let mut n = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        out.put_u16(n as u16);
        out.put_slice(&s.as_bytes()[..n]);
    }
}

/// The bytes of an MQTT variable byte integer.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// One MQTT 5 PUBLISH with properties, for [`encode_publish5`].
struct Publish<'a> {
    topic: &'a [u8],
    payload: &'a [u8],
    props: &'a [u8],
    /// The topic alias, and whether the topic goes too (the alias's first use).
    alias: Option<(u16, bool)>,
    qos: u8,
    retain: bool,
    pkid: u16,
    dup: bool,
}

/// Encodes an MQTT 5 PUBLISH with its properties straight into `out` (as [`encode_publish`]).
fn encode_publish5(out: &mut BytesMut, p: &Publish<'_>) {
    let qos = p.qos.min(2);
    let topic: &[u8] = match p.alias {
        Some((_, false)) => &[],
        _ => p.topic,
    };
    let props_len = p.props.len() + if p.alias.is_some() { 3 } else { 0 };
    let remaining = 2
        + topic.len()
        + if qos > 0 { 2 } else { 0 }
        + varint_len(props_len)
        + props_len
        + p.payload.len();
    out.reserve(1 + 4 + remaining);
    out.put_u8(0x30 | (p.dup as u8) << 3 | qos << 1 | p.retain as u8);
    put_varint(out, remaining);
    out.put_u16(topic.len() as u16);
    out.put_slice(topic);
    if qos > 0 {
        out.put_u16(p.pkid);
    }
    put_varint(out, props_len);
    if let Some((a, _)) = p.alias {
        out.put_u8(0x23);
        out.put_u16(a);
    }
    out.put_slice(p.props);
    out.put_slice(p.payload);
}

fn qos4(q: u8) -> rumqttc::mqttbytes::QoS {
    match q {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// A minimal broker side for the tests: decodes what the session wrote.
    fn written4(s: &mut Session<u32>) -> Vec<v4::Packet> {
        let mut buf = BytesMut::from(&s.take_output()[..]);
        let mut v = Vec::new();
        while !buf.is_empty() {
            v.push(v4::Packet::read(&mut buf, usize::MAX).expect("valid packet"));
        }
        v
    }

    fn written5(s: &mut Session<u32>) -> Vec<v5::Packet> {
        let mut buf = BytesMut::from(&s.take_output()[..]);
        let mut v = Vec::new();
        while !buf.is_empty() {
            v.push(v5::Packet::read(&mut buf, None).expect("valid packet"));
        }
        v
    }

    fn bytes4(p: v4::Packet) -> Vec<u8> {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        b.to_vec()
    }

    fn bytes5(p: v5::Packet) -> Vec<u8> {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        b.to_vec()
    }

    fn outcomes(s: &mut Session<u32>) -> Vec<Outcome<u32>> {
        std::iter::from_fn(|| s.poll_outcome()).collect()
    }

    /// MQTT 5 CONNACK properties, all absent.
    fn no_props() -> v5::ConnAckProperties {
        v5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: vec![],
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }
    }

    /// A V5 session connected by a CONNACK with these properties.
    fn connected5(keep_alive_ms: u32, inflight: u16, props: v5::ConnAckProperties) -> Session<u32> {
        let mut s: Session<u32> = Session::new(Version::V5, keep_alive_ms, inflight);
        s.connect(&ConnectParams { client_id: "d".into(), ..Default::default() }, 0);
        s.take_output();
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code: v5::ConnectReturnCode::Success,
                properties: Some(props),
            })),
            0,
        );
        s
    }

    fn connected(keep_alive_ms: u32, inflight: u16) -> Session<u32> {
        let mut s = Session::new(Version::V311, keep_alive_ms, inflight);
        s.connect(&ConnectParams { client_id: "dev-1".into(), ..Default::default() }, 0);
        s.take_output();
        s.read(
            &bytes4(v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, false))),
            0,
        );
        assert_eq!(outcomes(&mut s), vec![Outcome::Connected { session_present: false }]);
        s
    }

    fn publish_ids(packets: &[v4::Packet]) -> Vec<(u16, bool)> {
        packets
            .iter()
            .filter_map(|p| match p {
                v4::Packet::Publish(p) => Some((p.pkid, p.dup)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn connect_carries_client_id_credentials_will_and_keep_alive() {
        let mut s: Session<u32> = Session::new(Version::V311, 30_000, 4);
        let p = ConnectParams {
            client_id: "sensor-7".into(),
            clean_session: false,
            username: Some("sensor-7".into()),
            password: Some("secret".into()),
            will: Some(Will {
                topic: "devices/sensor-7/status".into(),
                payload: Bytes::from_static(b"offline"),
                qos: 1,
                retain: true,
            }),
            ..Default::default()
        };
        s.connect(&p, 5 * S);
        let w = written4(&mut s);
        let [v4::Packet::Connect(c)] = &w[..] else { panic!("one CONNECT, got {w:?}") };
        assert_eq!(c.client_id, "sensor-7");
        assert_eq!(c.keep_alive, 30);
        assert!(!c.clean_session);
        assert_eq!(c.login.as_ref().map(|l| l.password.as_str()), Some("secret"));
        let will = c.last_will.as_ref().unwrap();
        assert_eq!(
            (will.topic.as_str(), &will.message[..], will.retain),
            ("devices/sensor-7/status", &b"offline"[..], true)
        );
        assert!(s.is_connecting());
    }

    #[test]
    fn refused_connack_is_reported_with_its_reason() {
        let mut s: Session<u32> = Session::new(Version::V311, 0, 4);
        s.connect(&ConnectParams::default(), 0);
        s.read(
            &bytes4(v4::Packet::ConnAck(v4::ConnAck::new(
                v4::ConnectReturnCode::BadUserNamePassword,
                false,
            ))),
            0,
        );
        assert_eq!(outcomes(&mut s), vec![Outcome::Refused { reason: "bad_credentials" }]);
        assert!(!s.is_connected() && !s.is_connecting());
    }

    #[test]
    fn connect_times_out_without_connack() {
        let mut s: Session<u32> = Session::new(Version::V311, 0, 4);
        s.set_connect_timeout_ms(2_000);
        s.connect(&ConnectParams::default(), 10 * S);
        assert_eq!(s.next_timeout_ns(), Some(12 * S));
        s.handle_timeout(12 * S - 1);
        assert!(outcomes(&mut s).is_empty());
        s.handle_timeout(12 * S);
        assert_eq!(outcomes(&mut s), vec![Outcome::Closed(CloseReason::ConnectTimeout)]);
    }

    #[test]
    fn keep_alive_pings_only_after_an_idle_interval_and_closes_without_pingresp() {
        let mut s = connected(10_000, 4);
        assert_eq!(s.next_timeout_ns(), Some(10 * S));
        // A publish at 4 s moves the ping to 14 s: anything written counts as activity.
        s.publish("t", Bytes::from_static(b"x"), 0, false, 1, 4 * S).unwrap();
        s.take_output();
        assert_eq!(s.next_timeout_ns(), Some(14 * S));
        s.handle_timeout(13 * S);
        assert!(!s.has_output());
        s.handle_timeout(14 * S);
        assert!(matches!(&written4(&mut s)[..], [v4::Packet::PingReq]));
        // PINGRESP answers it: the next ping is one interval after the last write.
        s.read(&bytes4(v4::Packet::PingResp), 15 * S);
        assert_eq!(s.next_timeout_ns(), Some(24 * S));
        s.handle_timeout(24 * S);
        assert!(matches!(&written4(&mut s)[..], [v4::Packet::PingReq]));
        // No answer within another interval: the session closes.
        s.handle_timeout(34 * S - 1);
        assert!(s.is_connected());
        outcomes(&mut s);
        s.handle_timeout(34 * S);
        assert_eq!(outcomes(&mut s), vec![Outcome::Closed(CloseReason::PingTimeout)]);
        assert!(!s.is_connected());
    }

    #[test]
    fn ping_phase_moves_the_first_ping_earlier() {
        let mut s: Session<u32> = Session::new(Version::V311, 10_000, 4);
        s.set_ping_phase_ms(3_000);
        s.connect(&ConnectParams::default(), 100 * S);
        s.read(
            &bytes4(v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, false))),
            100 * S,
        );
        assert_eq!(s.next_timeout_ns(), Some(107 * S));
    }

    #[test]
    fn in_flight_window_bounds_unacknowledged_messages() {
        let mut s = connected(0, 2);
        assert!(s.publish("t", Bytes::new(), 1, false, 1, 0).is_ok());
        assert!(s.publish("t", Bytes::new(), 1, false, 2, 0).is_ok());
        assert_eq!(s.publish("t", Bytes::new(), 1, false, 3, 0), Err(3));
        assert!(!s.can_publish(1));
        // QoS 0 does not need a window slot.
        assert!(s.publish("t", Bytes::new(), 0, false, 4, 0).is_ok());
        let ids = publish_ids(&written4(&mut s));
        assert_eq!(ids, vec![(1, false), (2, false), (0, false)]);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(2))), 0);
        assert_eq!(outcomes(&mut s), vec![Outcome::Delivered(4), Outcome::Delivered(2)]);
        assert!(s.can_publish(1));
        assert_eq!(s.inflight(), 1);
    }

    #[test]
    fn released_buffers_keep_what_is_in_flight_and_come_back_on_use() {
        let mut s = connected(0, 3);
        s.publish("t", Bytes::new(), 1, false, 1, 0).unwrap();
        s.publish("t", Bytes::new(), 1, false, 2, 0).unwrap();
        written4(&mut s);
        // Something in flight: its slots stay, numbering goes on.
        s.release_buffers();
        assert_eq!((s.out.capacity(), s.inbuf.capacity(), s.outcomes.capacity()), (0, 0, 0));
        assert_eq!(s.inflight(), 2);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(1))), 0);
        s.publish("t", Bytes::new(), 1, false, 3, 0).unwrap();
        let ids: Vec<u16> = publish_ids(&written4(&mut s)).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![3]);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(2))), 0);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(3))), 0);
        assert_eq!(
            outcomes(&mut s),
            vec![Outcome::Delivered(1), Outcome::Delivered(2), Outcome::Delivered(3)]
        );
        // Nothing in flight: every buffer is freed, and ids start over at 1.
        s.release_buffers();
        assert_eq!(s.flights.capacity(), 0);
        s.publish("t", Bytes::new(), 1, false, 4, 0).unwrap();
        let ids: Vec<u16> = publish_ids(&written4(&mut s)).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1]);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(1))), 0);
        assert_eq!(outcomes(&mut s), vec![Outcome::Delivered(4)]);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn packet_ids_are_reused_after_acknowledgement_and_never_while_in_flight() {
        let mut s = connected(0, 3);
        for t in 1..=3 {
            s.publish("t", Bytes::new(), 1, false, t, 0).unwrap();
        }
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(2))), 0);
        s.publish("t", Bytes::new(), 1, false, 4, 0).unwrap();
        let ids: Vec<u16> = publish_ids(&written4(&mut s)).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2, 3, 2]);
        // An acknowledgement for an id not in flight (or a duplicate) changes nothing.
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(7))), 0);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(1))), 0);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(1))), 0);
        assert_eq!(outcomes(&mut s), vec![Outcome::Delivered(2), Outcome::Delivered(1)]);
        assert_eq!(s.inflight(), 2);
    }

    #[test]
    fn unacknowledged_messages_are_resent_in_order_with_dup_after_reconnect() {
        let mut s = connected(0, 4);
        for t in 1..=3 {
            s.publish("t", Bytes::from(vec![t as u8]), 1, false, t, 0).unwrap();
        }
        s.take_output();
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(1))), 0);
        s.connection_lost();
        assert!(!s.can_publish(0));
        s.connect(&ConnectParams::default(), S);
        s.take_output();
        s.read(
            &bytes4(v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, true))),
            S,
        );
        let w = written4(&mut s);
        let resent: Vec<(u16, bool, u8)> = w
            .iter()
            .filter_map(|p| match p {
                v4::Packet::Publish(p) => Some((p.pkid, p.dup, p.payload[0])),
                _ => None,
            })
            .collect();
        assert_eq!(resent, vec![(2, true, 2), (3, true, 3)]);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(3))), S);
        s.read(&bytes4(v4::Packet::PubAck(v4::PubAck::new(2))), S);
        assert_eq!(
            outcomes(&mut s),
            vec![
                Outcome::Delivered(1),
                Outcome::Connected { session_present: true },
                Outcome::Delivered(3),
                Outcome::Delivered(2)
            ]
        );
    }

    #[test]
    fn qos2_flow_publishes_releases_and_completes() {
        let mut s = connected(0, 4);
        s.publish("t", Bytes::from_static(b"p"), 2, false, 9, 0).unwrap();
        assert_eq!(publish_ids(&written4(&mut s)), vec![(1, false)]);
        // PUBCOMP before PUBREC is out of order: ignored.
        s.read(&bytes4(v4::Packet::PubComp(v4::PubComp::new(1))), 0);
        assert!(outcomes(&mut s).is_empty());
        s.read(&bytes4(v4::Packet::PubRec(v4::PubRec::new(1))), 0);
        assert!(matches!(&written4(&mut s)[..], [v4::Packet::PubRel(r)] if r.pkid == 1));
        assert!(outcomes(&mut s).is_empty());
        // Lost after PUBREC: the reconnect resends PUBREL, not the PUBLISH.
        s.connection_lost();
        s.connect(&ConnectParams::default(), 0);
        s.take_output();
        s.read(
            &bytes4(v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, true))),
            0,
        );
        assert!(matches!(&written4(&mut s)[..], [v4::Packet::PubRel(r)] if r.pkid == 1));
        s.read(&bytes4(v4::Packet::PubComp(v4::PubComp::new(1))), 0);
        assert_eq!(
            outcomes(&mut s),
            vec![Outcome::Connected { session_present: true }, Outcome::Delivered(9)]
        );
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn downlink_commands_are_acknowledged_and_qos2_reported_once() {
        let mut s = connected(0, 4);
        assert!(s.subscribe("devices/d1/cmd", 2, 0));
        let w = written4(&mut s);
        let [v4::Packet::Subscribe(sub)] = &w[..] else { panic!("{w:?}") };
        assert_eq!((sub.pkid, sub.filters[0].path.as_str()), (5, "devices/d1/cmd"));
        s.read(
            &bytes4(v4::Packet::SubAck(v4::SubAck::new(
                5,
                vec![v4::SubscribeReasonCode::Success(rumqttc::mqttbytes::QoS::ExactlyOnce)],
            ))),
            0,
        );
        let mut cmd =
            v4::Publish::new("devices/d1/cmd", rumqttc::mqttbytes::QoS::AtLeastOnce, "c1");
        cmd.pkid = 11;
        s.read(&bytes4(v4::Packet::Publish(cmd)), 0);
        assert!(matches!(&written4(&mut s)[..], [v4::Packet::PubAck(a)] if a.pkid == 11));
        let mut cmd =
            v4::Publish::new("devices/d1/cmd", rumqttc::mqttbytes::QoS::ExactlyOnce, "c2");
        cmd.pkid = 12;
        // Split across two reads: a partial packet waits for the rest.
        let b = bytes4(v4::Packet::Publish(cmd.clone()));
        s.read(&b[..3], 0);
        assert!(!s.has_output());
        s.read(&b[3..], 0);
        cmd.dup = true;
        s.read(&bytes4(v4::Packet::Publish(cmd)), 0);
        s.read(&bytes4(v4::Packet::PubRel(v4::PubRel::new(12))), 0);
        let acks: Vec<String> = written4(&mut s).iter().map(|p| format!("{p:?}")).collect();
        assert_eq!(acks.len(), 3, "{acks:?}");
        assert!(
            acks[0].starts_with("PubRec")
                && acks[1].starts_with("PubRec")
                && acks[2].starts_with("PubComp")
        );
        assert_eq!(
            outcomes(&mut s),
            vec![
                Outcome::Subscribed { granted_qos: Some(2) },
                Outcome::Command {
                    topic: Bytes::from_static(b"devices/d1/cmd"),
                    payload: Bytes::from_static(b"c1"),
                    qos: 1
                },
                Outcome::Command {
                    topic: Bytes::from_static(b"devices/d1/cmd"),
                    payload: Bytes::from_static(b"c2"),
                    qos: 2
                },
            ]
        );
    }

    #[test]
    fn all_packets_of_one_turn_come_out_in_one_buffer() {
        let mut s = connected(0, 8);
        for t in 0..5 {
            s.publish("a/b", Bytes::from_static(b"12345"), 1, false, t, 0).unwrap();
        }
        let out = s.take_output();
        // 5 PUBLISH of 2 + (2 + 3) + 2 + 5 bytes each.
        assert_eq!(out.len(), 5 * 14);
        assert!(!s.has_output());
    }

    #[test]
    fn garbage_from_the_broker_closes_the_session() {
        let mut s = connected(0, 4);
        s.read(&[0xf0, 0x00], 0);
        assert_eq!(outcomes(&mut s), vec![Outcome::Closed(CloseReason::ProtocolError)]);
        assert!(!s.is_connected());
    }

    #[test]
    fn graceful_disconnect_writes_disconnect_and_keeps_unacked_messages() {
        let mut s = connected(0, 4);
        s.publish("t", Bytes::new(), 1, false, 1, 0).unwrap();
        s.take_output();
        s.disconnect();
        assert!(matches!(&written4(&mut s)[..], [v4::Packet::Disconnect]));
        assert_eq!(s.take_unacked(), vec![1]);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn mqtt5_session_connects_publishes_and_reports_nacks() {
        let mut s: Session<u32> = Session::new(Version::V5, 60_000, 4);
        let p = ConnectParams {
            client_id: "d5".into(),
            clean_session: false,
            session_expiry_s: Some(300),
            ..Default::default()
        };
        s.connect(&p, 0);
        let w = written5(&mut s);
        let [v5::Packet::Connect(c, None, None)] = &w[..] else { panic!("{w:?}") };
        assert_eq!(c.properties.as_ref().and_then(|p| p.session_expiry_interval), Some(300));
        let mut ack = v5::ConnAck {
            session_present: false,
            code: v5::ConnectReturnCode::Success,
            properties: None,
        };
        s.read(&bytes5(v5::Packet::ConnAck(ack.clone())), 0);
        s.publish("t", Bytes::from_static(b"x"), 1, false, 1, 0).unwrap();
        s.publish("t", Bytes::from_static(b"y"), 1, false, 2, 0).unwrap();
        assert_eq!(written5(&mut s).len(), 2);
        let mut nack = v5::PubAck::new(2, None);
        nack.reason = v5::PubAckReason::NotAuthorized;
        s.read(&bytes5(v5::Packet::PubAck(v5::PubAck::new(1, None))), 0);
        s.read(&bytes5(v5::Packet::PubAck(nack)), 0);
        assert_eq!(
            outcomes(&mut s),
            vec![
                Outcome::Connected { session_present: false },
                Outcome::Delivered(1),
                Outcome::Rejected(2, "not_authorized")
            ]
        );
        // A refusal by quota is its own reason.
        ack.code = v5::ConnectReturnCode::QuotaExceeded;
        s.connection_lost();
        s.connect(&p, 0);
        s.read(&bytes5(v5::Packet::ConnAck(ack)), 0);
        assert_eq!(outcomes(&mut s), vec![Outcome::Refused { reason: "quota_exceeded" }]);
    }

    #[test]
    fn hand_encoded_publish_decodes_as_the_codec_reads_it_for_every_qos_flag_and_length() {
        // Payload sizes on both sides of each remaining-length byte boundary.
        for len in [0usize, 1, 120, 127, 128, 16_380, 16_384, 70_000] {
            let payload = Bytes::from(vec![b'p'; len]);
            for (qos, retain, dup) in [(0u8, false, false), (1, true, false), (2, false, true)] {
                let topic = Bytes::from_static(b"fleet/\xc3\xa9/t");
                let mut out = BytesMut::new();
                encode_publish(&mut out, Version::V311, &topic, &payload, qos, retain, 7, dup);
                let mut b = out.clone();
                let Ok(v4::Packet::Publish(p)) = v4::Packet::read(&mut b, usize::MAX) else {
                    panic!("len {len} qos {qos}: not a PUBLISH")
                };
                assert!(b.is_empty(), "len {len}: trailing bytes");
                assert_eq!((p.qos as u8, p.retain, p.dup), (qos, retain, dup));
                assert_eq!(p.pkid, if qos > 0 { 7 } else { 0 });
                assert_eq!(p.topic.as_bytes(), &topic[..]);
                assert_eq!(p.payload, payload);
                let mut out = BytesMut::new();
                encode_publish(&mut out, Version::V5, &topic, &payload, qos, retain, 7, dup);
                let Ok(v5::Packet::Publish(p)) = v5::Packet::read(&mut out, None) else {
                    panic!("v5 len {len} qos {qos}: not a PUBLISH")
                };
                assert!(out.is_empty());
                assert_eq!((p.qos as u8, p.retain, p.dup), (qos, retain, dup));
                assert_eq!(p.pkid, if qos > 0 { 7 } else { 0 });
                assert_eq!(&p.topic[..], &topic[..]);
                assert_eq!(p.payload, payload);
                assert!(p.properties.is_none());
            }
        }
    }

    fn ct_props(alias: bool) -> Props {
        let mut b = BytesMut::new();
        props::content_type(&mut b, "application/json");
        props::user_property(&mut b, "site", "north");
        props::message_expiry(&mut b, 600);
        Props { block: b.freeze(), alias }
    }

    /// (topic, alias, content type, dup) of each PUBLISH written.
    fn published5(s: &mut Session<u32>) -> Vec<(String, Option<u16>, Option<String>, bool)> {
        written5(s)
            .into_iter()
            .filter_map(|p| match p {
                v5::Packet::Publish(p) => {
                    let pp = p.properties.expect("properties");
                    assert_eq!(pp.user_properties, vec![("site".into(), "north".into())]);
                    assert_eq!(pp.message_expiry_interval, Some(600));
                    Some((
                        String::from_utf8(p.topic.to_vec()).unwrap(),
                        pp.topic_alias,
                        pp.content_type,
                        p.dup,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn topic_aliases_follow_the_brokers_maximum_and_start_over_after_a_reconnect() {
        let max = v5::ConnAckProperties { topic_alias_max: Some(2), ..no_props() };
        let mut s = connected5(0, 4, max);
        outcomes(&mut s);
        let ct = Some("application/json".to_string());
        for (i, t) in ["t/a", "t/b", "t/a", "t/c", "t/b"].into_iter().enumerate() {
            let b = Bytes::from_static(b"{}");
            s.publish_props(Bytes::from(t), b, ct_props(true), 0, false, i as u32, 0).unwrap();
        }
        // A QoS 1 message stays unacknowledged across the reconnect.
        s.publish_props(Bytes::from("t/a"), Bytes::new(), ct_props(true), 1, false, 9, 0).unwrap();
        assert_eq!(
            published5(&mut s),
            vec![
                ("t/a".into(), Some(1), ct.clone(), false),
                ("t/b".into(), Some(2), ct.clone(), false),
                ("".into(), Some(1), ct.clone(), false),
                // Every alias taken: the full topic.
                ("t/c".into(), None, ct.clone(), false),
                ("".into(), Some(2), ct.clone(), false),
                ("".into(), Some(1), ct.clone(), false),
            ]
        );
        // Aliases are the connection's: after the reconnect they start over, also for the
        // resent message, and this broker allows only one.
        s.connection_lost();
        s.connect(&ConnectParams { client_id: "d".into(), ..Default::default() }, S);
        s.take_output();
        let one = v5::ConnAckProperties { topic_alias_max: Some(1), ..no_props() };
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: true,
                code: v5::ConnectReturnCode::Success,
                properties: Some(one),
            })),
            S,
        );
        s.publish_props(Bytes::from("t/b"), Bytes::new(), ct_props(true), 0, false, 10, S).unwrap();
        s.publish_props(Bytes::from("t/a"), Bytes::new(), ct_props(true), 0, false, 11, S).unwrap();
        assert_eq!(
            published5(&mut s),
            vec![
                ("t/a".into(), Some(1), ct.clone(), true),
                ("t/b".into(), None, ct.clone(), false),
                ("".into(), Some(1), ct.clone(), false),
            ]
        );
        // Without the broker's Topic Alias Maximum, or without asking, no aliases.
        let mut s = connected5(0, 4, no_props());
        s.publish_props(Bytes::from("t/a"), Bytes::new(), ct_props(true), 0, false, 1, 0).unwrap();
        s.publish_props(Bytes::from("t/a"), Bytes::new(), ct_props(true), 0, false, 2, 0).unwrap();
        let max = v5::ConnAckProperties { topic_alias_max: Some(5), ..no_props() };
        let mut s2 = connected5(0, 4, max);
        s2.publish_props(Bytes::from("t/a"), Bytes::new(), ct_props(false), 0, false, 1, 0)
            .unwrap();
        s2.publish_props(Bytes::from("t/a"), Bytes::new(), ct_props(false), 0, false, 2, 0)
            .unwrap();
        for s in [&mut s, &mut s2] {
            let got: Vec<_> = published5(s).into_iter().map(|p| (p.0, p.1)).collect();
            assert_eq!(got, vec![("t/a".into(), None), ("t/a".into(), None)]);
        }
    }

    #[test]
    fn mqtt5_properties_count_toward_the_maximum_packet_size_and_311_leaves_them_out() {
        let props = ct_props(true);
        // Fits without its properties, not with them.
        let plain = publish_len(Version::V5, 3, 10, 0) as u32;
        let max = v5::ConnAckProperties { max_packet_size: Some(plain), ..no_props() };
        let mut s = connected5(0, 4, max);
        outcomes(&mut s);
        let payload = Bytes::from(vec![b'x'; 10]);
        s.publish_props(Bytes::from("t/a"), payload.clone(), props.clone(), 0, false, 1, 0)
            .unwrap();
        s.publish_bytes(Bytes::from("t/a"), payload.clone(), 0, false, 2, 0).unwrap();
        assert_eq!(outcomes(&mut s), vec![Outcome::Rejected(1, TOO_LARGE), Outcome::Delivered(2)]);
        // MQTT 3.1.1 has no properties: the plain PUBLISH, topic and all.
        let mut s = connected(0, 4);
        s.publish_props(Bytes::from("t/a"), payload.clone(), props.clone(), 1, false, 1, 0)
            .unwrap();
        s.publish_props(Bytes::from("t/a"), payload, props, 1, false, 2, 0).unwrap();
        let w = written4(&mut s);
        let topics: Vec<&str> = w
            .iter()
            .filter_map(|p| match p {
                v4::Packet::Publish(p) => Some(p.topic.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(topics, vec!["t/a", "t/a"]);
    }

    #[test]
    fn an_mqtt5_brokers_receive_maximum_narrows_the_in_flight_window() {
        let mut s: Session<u32> = Session::new(Version::V5, 0, 10);
        s.connect(&ConnectParams { client_id: "d".into(), ..Default::default() }, 0);
        s.take_output();
        let props = v5::ConnAckProperties { receive_max: Some(3), ..no_props() };
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code: v5::ConnectReturnCode::Success,
                properties: Some(props),
            })),
            0,
        );
        for i in 0..3 {
            s.publish_bytes(Bytes::from_static(b"t"), Bytes::new(), 1, false, i, 0).unwrap();
        }
        assert!(!s.can_publish(1), "the broker takes 3 unacknowledged messages, not 10");
        assert_eq!(s.publish_bytes(Bytes::from_static(b"t"), Bytes::new(), 1, false, 9, 0), Err(9));
        assert!(s.can_publish(0), "QoS 0 takes no window");
        s.read(&bytes5(v5::Packet::PubAck(v5::PubAck::new(2, None))), 0);
        assert!(s.can_publish(1));
        // Without a Receive Maximum the configured window applies again.
        s.connection_lost();
        s.connect(&ConnectParams { client_id: "d".into(), ..Default::default() }, 0);
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code: v5::ConnectReturnCode::Success,
                properties: None,
            })),
            0,
        );
        for i in 0..8 {
            assert!(s.can_publish(1), "message {i}");
            s.publish_bytes(Bytes::from_static(b"t"), Bytes::new(), 1, false, i, 0).unwrap();
        }
    }

    #[test]
    fn a_publish_larger_than_the_brokers_maximum_packet_size_is_refused_and_never_written() {
        // [MQTT-3.2.2-15]: the broker takes packets of at most 64 bytes.
        let mut s =
            connected5(0, 4, v5::ConnAckProperties { max_packet_size: Some(64), ..no_props() });
        assert_eq!(s.max_packet_size(), Some(64));
        assert_eq!(outcomes(&mut s), vec![Outcome::Connected { session_present: false }]);
        // QoS 1, topic "t": 1 + 1 + (2 + 1 + 2 + 1 + payload) bytes; 56 bytes of payload is 64.
        s.publish("t", Bytes::from(vec![b'x'; 56]), 1, false, 1, 0).unwrap();
        s.publish("t", Bytes::from(vec![b'x'; 57]), 1, false, 2, 0).unwrap();
        s.publish("t", Bytes::from(vec![b'x'; 500]), 0, false, 3, 0).unwrap();
        s.publish("t", Bytes::from(vec![b'x'; 10]), 0, false, 4, 0).unwrap();
        let out = s.take_output();
        let mut buf = BytesMut::from(&out[..]);
        let mut sizes = vec![];
        while !buf.is_empty() {
            let before = buf.len();
            let p = v5::Packet::read(&mut buf, None).expect("valid packet");
            assert!(matches!(p, v5::Packet::Publish(_)), "{p:?}");
            sizes.push(before - buf.len());
        }
        // Only what fits went out: 64 bytes exactly, and the small QoS 0 one.
        assert_eq!(sizes, vec![64, 1 + 1 + 2 + 1 + 1 + 10]);
        assert_eq!(
            outcomes(&mut s),
            vec![
                Outcome::Rejected(2, TOO_LARGE),
                Outcome::Rejected(3, TOO_LARGE),
                Outcome::Delivered(4)
            ]
        );
        // A refused message takes no window slot: only the one that went out is in flight.
        assert_eq!(s.inflight(), 1);
        // A broker without the limit (the next connection) takes it all again.
        s.connection_lost();
        s.connect(&ConnectParams { client_id: "d".into(), ..Default::default() }, 0);
        s.take_output();
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: true,
                code: v5::ConnectReturnCode::Success,
                properties: None,
            })),
            0,
        );
        assert_eq!(s.max_packet_size(), None);
        s.take_output();
        s.publish("t", Bytes::from(vec![b'x'; 500]), 0, false, 5, 0).unwrap();
        assert_eq!(written5(&mut s).len(), 1);
    }

    #[test]
    fn an_unacknowledged_message_too_large_for_the_new_broker_is_refused_not_resent() {
        let mut s = connected5(0, 4, no_props());
        s.publish("t", Bytes::from(vec![b'a'; 100]), 1, false, 1, 0).unwrap();
        s.publish("t", Bytes::from(vec![b'b'; 10]), 1, false, 2, 0).unwrap();
        s.take_output();
        outcomes(&mut s);
        s.connection_lost();
        s.connect(&ConnectParams { client_id: "d".into(), ..Default::default() }, 0);
        s.take_output();
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: true,
                code: v5::ConnectReturnCode::Success,
                properties: Some(v5::ConnAckProperties { max_packet_size: Some(50), ..no_props() }),
            })),
            0,
        );
        let w = written5(&mut s);
        let [v5::Packet::Publish(p)] = &w[..] else { panic!("{w:?}") };
        assert_eq!((p.pkid, p.dup, p.payload.len()), (2, true, 10));
        assert_eq!(
            outcomes(&mut s),
            vec![Outcome::Connected { session_present: true }, Outcome::Rejected(1, TOO_LARGE)]
        );
        assert_eq!(s.inflight(), 1);
    }

    #[test]
    fn an_mqtt5_brokers_server_keep_alive_replaces_the_one_asked_for() {
        // [MQTT-3.2.2-21]: asked for 120 s, told 60 s: pings every 60 s.
        let mut s = connected5(
            120_000,
            4,
            v5::ConnAckProperties { server_keep_alive: Some(60), ..no_props() },
        );
        assert_eq!(s.keep_alive_now_ms(), 60_000);
        assert_eq!(s.next_timeout_ns(), Some(60 * S));
        s.handle_timeout(60 * S);
        assert!(matches!(&written5(&mut s)[..], [v5::Packet::PingReq(_)]));
        // And waits one such interval for the PINGRESP.
        assert_eq!(s.next_timeout_ns(), Some(120 * S));
        // The next CONNECT asks for 120 s again; a broker saying nothing leaves it at that.
        s.connection_lost();
        s.connect(&ConnectParams { client_id: "d".into(), ..Default::default() }, 200 * S);
        let w = written5(&mut s);
        let [v5::Packet::Connect(c, None, None)] = &w[..] else { panic!("{w:?}") };
        assert_eq!(c.keep_alive, 120);
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code: v5::ConnectReturnCode::Success,
                properties: Some(no_props()),
            })),
            200 * S,
        );
        assert_eq!(s.next_timeout_ns(), Some(320 * S));
        // Server Keep Alive 0 turns keep-alive off; the ping phase stays below the interval.
        let mut s = connected5(
            120_000,
            4,
            v5::ConnAckProperties { server_keep_alive: Some(0), ..no_props() },
        );
        assert_eq!(s.next_timeout_ns(), None);
        s.handle_timeout(1_000 * S);
        assert!(!s.has_output());
        let mut s: Session<u32> = Session::new(Version::V5, 120_000, 4);
        s.set_ping_phase_ms(100_000);
        s.connect(&ConnectParams::default(), 500 * S);
        s.read(
            &bytes5(v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code: v5::ConnectReturnCode::Success,
                properties: Some(v5::ConnAckProperties {
                    server_keep_alive: Some(30),
                    ..no_props()
                }),
            })),
            500 * S,
        );
        // 100 s mod 30 s = 10 s earlier than 530 s.
        assert_eq!(s.next_timeout_ns(), Some(520 * S));
    }

    #[test]
    fn a_command_reports_the_qos_it_arrived_at() {
        let mut s = connected(0, 4);
        for (q, qos) in
            [(0u8, rumqttc::mqttbytes::QoS::AtMostOnce), (2, rumqttc::mqttbytes::QoS::ExactlyOnce)]
        {
            let mut cmd = v4::Publish::new("c", qos, "x");
            cmd.pkid = if q == 0 { 0 } else { 3 };
            s.read(&bytes4(v4::Packet::Publish(cmd)), 0);
            assert_eq!(
                outcomes(&mut s),
                vec![Outcome::Command {
                    topic: Bytes::from_static(b"c"),
                    payload: Bytes::from_static(b"x"),
                    qos: q
                }]
            );
        }
    }
}
