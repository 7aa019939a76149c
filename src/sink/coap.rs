//! The CoAP sink (RFC 7252 over UDP, coap-lite as the codec): one UDP socket per shard that
//! POSTs each message to `coap://host:port/<the topic's segments as Uri-Path>` with
//! `Content-Format: application/json`.
//!
//! - Confirmable (CON, the default): the exchange stays in [`Exchanges`] until the server's ACK
//!   (matched by message id, and by token when the ACK carries a response). A piggybacked 2.xx
//!   response completes the message, 4.xx/5.xx count as an error `coap_<code>` (`coap_4.04`), an
//!   RST as `coap_reset`. An empty ACK stops retransmission and the separate response (matched
//!   by token; a CON one is acknowledged) decides. Retransmission follows RFC 7252 4.2: the first
//!   timeout is random in `[ack_timeout, ack_timeout * ack_random_factor]`, it doubles after each
//!   retransmission, and after `max_retransmit` retransmissions the next timeout is an error
//!   `coap_timeout`. Each retransmission is counted as the sink event `coap.retransmit`.
//! - Non-confirmable (NON, `confirmable = false` on the sink or the profile): completion when
//!   the datagram is handed to the socket.
//! - At most `max_inflight` CONs are outstanding; beyond that the queue builds up (backpressure).
//!
//! The exchange state ([`Exchanges`]) does no I/O: the task feeds it datagrams and the clock and
//! sends what it says. Retransmission deadlines live in a `BTreeSet` owned by the task, which
//! sleeps until the earliest one.

use super::net::{NetShared, Queued};
use crate::config::CoapSettings;
use crate::measure::clock::mono_ns;
use crate::sim::profile::Fleet;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

/// The largest datagram we send or accept.
const MAX_DATAGRAM: usize = 65_000;

/// Retransmission parameters (RFC 7252 4.8).
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub ack_timeout_ns: u64,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
}

impl Params {
    /// How long to wait for a separate response after an empty ACK: MAX_TRANSMIT_WAIT.
    fn separate_wait_ns(&self) -> u64 {
        let span = (1u64 << (self.max_retransmit + 1).min(30)) - 1;
        (self.ack_timeout_ns as f64 * span as f64 * self.ack_random_factor) as u64
    }
}

/// One outstanding confirmable exchange.
struct Exchange {
    msg: Queued,
    datagram: Vec<u8>,
    mid: u16,
    token: u32,
    retransmits: u32,
    timeout_ns: u64,
    deadline_ns: u64,
    /// An empty ACK came: no more retransmissions, waiting for the separate response.
    acked: bool,
}

/// What became of an exchange, or what to send.
#[derive(Debug)]
pub enum Event {
    /// Send this datagram again (a retransmission).
    Resend(Vec<u8>),
    /// Send this datagram (an ACK or RST for the server's message).
    Reply(Vec<u8>),
    /// The message was delivered.
    Completed(Queued),
    /// The message failed, with the error kind.
    Failed(Queued, String),
}

/// The confirmable exchanges of one socket: matching, retransmission deadlines, ids.
pub struct Exchanges {
    params: Params,
    slots: Vec<Option<Exchange>>,
    free: Vec<usize>,
    by_mid: HashMap<u16, usize>,
    by_token: HashMap<u32, usize>,
    /// (deadline, slot): the earliest is the next thing to do.
    timers: BTreeSet<(u64, usize)>,
    next_mid: u16,
    next_token: u32,
}

impl Exchanges {
    /// `seed` randomises the first message id and token (RFC 7252 4.4, 5.3.1).
    pub fn new(params: Params, seed: u64) -> Exchanges {
        Exchanges {
            params,
            slots: Vec::new(),
            free: Vec::new(),
            by_mid: HashMap::new(),
            by_token: HashMap::new(),
            timers: BTreeSet::new(),
            next_mid: seed as u16,
            next_token: (seed >> 16) as u32,
        }
    }

    /// Outstanding exchanges.
    pub fn len(&self) -> usize {
        // Every exchange is found by its token until it ends (by its message id only until
        // its ACK).
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// A fresh (message id, token), skipping ids and tokens still in use.
    pub fn next_ids(&mut self) -> (u16, u32) {
        loop {
            self.next_mid = self.next_mid.wrapping_add(1);
            if !self.by_mid.contains_key(&self.next_mid) {
                break;
            }
        }
        loop {
            self.next_token = self.next_token.wrapping_add(1);
            if !self.by_token.contains_key(&self.next_token) {
                break;
            }
        }
        (self.next_mid, self.next_token)
    }

    /// Starts tracking a CON that was just sent. `jitter` in [0, 1) picks the first timeout.
    pub fn insert(
        &mut self,
        msg: Queued,
        datagram: Vec<u8>,
        mid: u16,
        token: u32,
        now_ns: u64,
        jitter: f64,
    ) {
        let factor = 1.0 + (self.params.ack_random_factor - 1.0) * jitter.clamp(0.0, 1.0);
        let timeout_ns = (self.params.ack_timeout_ns as f64 * factor) as u64;
        let e = Exchange {
            msg,
            datagram,
            mid,
            token,
            retransmits: 0,
            timeout_ns,
            deadline_ns: now_ns + timeout_ns,
            acked: false,
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.timers.insert((e.deadline_ns, slot));
        self.by_mid.insert(mid, slot);
        self.by_token.insert(token, slot);
        self.slots[slot] = Some(e);
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }

    fn remove(&mut self, slot: usize) -> Option<Exchange> {
        let e = self.slots.get_mut(slot)?.take()?;
        self.timers.remove(&(e.deadline_ns, slot));
        if self.by_mid.get(&e.mid) == Some(&slot) {
            self.by_mid.remove(&e.mid);
        }
        self.by_token.remove(&e.token);
        self.free.push(slot);
        Some(e)
    }

    /// Handles the deadlines up to `now_ns`: retransmissions and give-ups.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        while let Some(&(deadline, slot)) = self.timers.first() {
            if deadline > now_ns {
                break;
            }
            self.timers.pop_first();
            let Some(e) = self.slots[slot].as_mut() else { continue };
            if !e.acked && e.retransmits < self.params.max_retransmit {
                e.retransmits += 1;
                e.timeout_ns = e.timeout_ns.saturating_mul(2);
                e.deadline_ns = now_ns + e.timeout_ns;
                self.timers.insert((e.deadline_ns, slot));
                out.push(Event::Resend(e.datagram.clone()));
            } else {
                // Put the timer back so that `remove` finds it consistent, then drop it all.
                self.timers.insert((deadline, slot));
                if let Some(e) = self.remove(slot) {
                    out.push(Event::Failed(e.msg, "coap_timeout".into()));
                }
            }
        }
    }

    /// Handles one datagram from the server.
    pub fn on_datagram(&mut self, data: &[u8], now_ns: u64, out: &mut Vec<Event>) {
        let Ok(p) = Packet::from_bytes(data) else { return };
        let token = token_of(p.get_token());
        match p.header.get_type() {
            MessageType::Acknowledgement | MessageType::Reset => {
                let Some(&slot) = self.by_mid.get(&p.header.message_id) else { return };
                let Some(e) = self.slots[slot].as_mut() else { return };
                if p.header.get_type() == MessageType::Reset {
                    if let Some(e) = self.remove(slot) {
                        out.push(Event::Failed(e.msg, "coap_reset".into()));
                    }
                    return;
                }
                if p.header.code == MessageClass::Empty {
                    // Separate response to follow: stop retransmitting, wait for it by token.
                    if !e.acked {
                        e.acked = true;
                        self.timers.remove(&(e.deadline_ns, slot));
                        e.deadline_ns = now_ns + self.params.separate_wait_ns();
                        self.timers.insert((e.deadline_ns, slot));
                        self.by_mid.remove(&p.header.message_id);
                    }
                    return;
                }
                if token != Some(e.token) {
                    return;
                }
                if let Some(e) = self.remove(slot) {
                    out.push(settle(e.msg, &p));
                }
            }
            MessageType::Confirmable | MessageType::NonConfirmable => {
                let confirmable = p.header.get_type() == MessageType::Confirmable;
                let known = token.and_then(|t| self.by_token.get(&t).copied());
                match known {
                    Some(slot) if matches!(p.header.code, MessageClass::Response(_)) => {
                        if confirmable {
                            out.push(Event::Reply(empty(
                                MessageType::Acknowledgement,
                                p.header.message_id,
                            )));
                        }
                        if let Some(e) = self.remove(slot) {
                            out.push(settle(e.msg, &p));
                        }
                    }
                    _ if confirmable => {
                        out.push(Event::Reply(empty(MessageType::Reset, p.header.message_id)))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every outstanding message (at shutdown).
    pub fn take_all(&mut self) -> Vec<Queued> {
        let slots: Vec<usize> = self.by_token.values().copied().collect();
        slots.into_iter().filter_map(|s| self.remove(s)).map(|e| e.msg).collect()
    }
}

fn token_of(t: &[u8]) -> Option<u32> {
    (t.len() == 4).then(|| u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
}

/// Completed for 2.xx, else an error `coap_<class>.<detail>`.
fn settle(msg: Queued, p: &Packet) -> Event {
    let code = u8::from(p.header.code);
    if code >> 5 == 2 {
        Event::Completed(msg)
    } else {
        Event::Failed(msg, format!("coap_{}.{:02}", code >> 5, code & 0x1f))
    }
}

/// An empty ACK or RST for message `mid`.
fn empty(t: MessageType, mid: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(t);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p.to_bytes().unwrap_or_default()
}

/// Encodes a POST of `payload` to the topic's path.
pub fn encode_post(
    topic: &str,
    payload: &[u8],
    content_format: u16,
    confirmable: bool,
    mid: u16,
    token: u32,
) -> Result<Vec<u8>, String> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(if confirmable {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(token.to_be_bytes().to_vec());
    for seg in topic.split('/').filter(|s| !s.is_empty()) {
        if seg.len() > 255 {
            return Err("coap_path_too_long".into());
        }
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    // RFC 7252 section 5.10.3: a uint option, in its shortest form.
    let cf = content_format.to_be_bytes();
    let cf = if content_format == 0 {
        vec![]
    } else if content_format < 256 {
        vec![cf[1]]
    } else {
        cf.to_vec()
    };
    p.add_option(CoapOption::ContentFormat, cf);
    p.payload = payload.to_vec();
    p.to_bytes_with_limit(MAX_DATAGRAM).map_err(|_| "coap_too_large".to_string())
}

/// Starts the shard's CoAP task on its own UDP socket.
pub fn start(s: &CoapSettings, fleet: &Fleet, shared: Rc<NetShared>) -> Result<(), String> {
    let server: SocketAddr = (s.host.as_str(), s.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: cannot resolve {}: {e}", s.url, s.host))?
        .next()
        .ok_or_else(|| format!("{}: {} resolves to no address", s.url, s.host))?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = std::net::UdpSocket::bind(local)
        .map_err(|e| format!("{}: cannot open a UDP socket: {e}", s.url))?;
    sock.connect(server).map_err(|e| format!("{}: {e}", s.url))?;
    sock.set_nonblocking(true).map_err(|e| format!("{}: {e}", s.url))?;
    let sock = tokio::net::UdpSocket::from_std(sock).map_err(|e| format!("{}: {e}", s.url))?;
    let confirmable: Vec<bool> =
        fleet.profiles.iter().map(|p| p.delivery.confirmable.unwrap_or(s.confirmable)).collect();
    let params = Params {
        ack_timeout_ns: s.ack_timeout_ms.saturating_mul(1_000_000),
        ack_random_factor: s.ack_random_factor,
        max_retransmit: s.max_retransmit,
    };
    let seed = crate::sim::seed::mix64(mono_ns() ^ ((shared.shard() as u64) << 48));
    let ex = Exchanges::new(params, seed);
    tokio::task::spawn_local(run(
        sock,
        ex,
        confirmable,
        s.confirmable,
        s.max_inflight.max(1),
        shared,
    ));
    Ok(())
}

async fn run(
    sock: tokio::net::UdpSocket,
    mut ex: Exchanges,
    confirmable: Vec<bool>,
    default_confirmable: bool,
    max_inflight: usize,
    shared: Rc<NetShared>,
) {
    let q = &shared.conns[0];
    q.connected.set(true);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut events = Vec::new();
    loop {
        if shared.closing.get() {
            // The shard stopped waiting: what is left is not in the report any more.
            if !ex.is_empty() {
                for m in ex.take_all() {
                    shared.fail(&m, "shutdown");
                    shared.settled(0);
                }
            }
            return;
        }
        while ex.len() < max_inflight {
            let Some(mut m) = q.pop() else { break };
            shared.sent(0);
            // Profiles spawned at run time (gRPC) take the sink's setting.
            let con = confirmable.get(m.profile as usize).copied().unwrap_or(default_confirmable);
            let (mid, token) = ex.next_ids();
            let datagram = match encode_post(&m.topic, &m.payload, m.wire.coap, con, mid, token) {
                Ok(d) => d,
                Err(kind) => {
                    shared.fail(&m, &kind);
                    shared.settled(0);
                    continue;
                }
            };
            m.sent_ns = mono_ns();
            let sent = sock.send(&datagram).await;
            if con {
                if sent.is_err() {
                    // The retransmission timer tries again.
                    shared.event("send_error");
                }
                ex.insert(m, datagram, mid, token, mono_ns(), NetShared::jitter());
            } else {
                match sent {
                    Ok(_) => shared.complete(&m),
                    Err(_) => shared.fail(&m, "coap_send"),
                }
                shared.settled(0);
            }
        }
        let now = mono_ns();
        let wait_ns =
            ex.next_deadline().map_or(100_000_000, |d| d.saturating_sub(now).min(100_000_000));
        let room = ex.len() < max_inflight;
        tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) if n <= MAX_DATAGRAM => {
                    ex.on_datagram(&buf[..n], mono_ns(), &mut events);
                    // Take whatever else has arrived without waiting.
                    while let Ok(n) = sock.try_recv(&mut buf) {
                        if n <= MAX_DATAGRAM {
                            ex.on_datagram(&buf[..n], mono_ns(), &mut events);
                        }
                    }
                }
                Ok(_) => {}
                // ICMP port unreachable and the like: retransmission handles it.
                Err(_) => shared.event("recv_error"),
            },
            _ = tokio::time::sleep(Duration::from_nanos(wait_ns)) => {}
            _ = q.wake.notified(), if room => {}
        }
        ex.expire(mono_ns(), &mut events);
        for e in events.drain(..) {
            match e {
                Event::Resend(d) => {
                    shared.event("retransmit");
                    if sock.send(&d).await.is_err() {
                        shared.event("send_error");
                    }
                }
                Event::Reply(d) => {
                    let _ = sock.send(&d).await;
                }
                Event::Completed(m) => {
                    shared.complete(&m);
                    shared.settled(0);
                }
                Event::Failed(m, kind) => {
                    shared.fail(&m, &kind);
                    shared.settled(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params =
        Params { ack_timeout_ns: 2_000_000_000, ack_random_factor: 1.5, max_retransmit: 4 };

    fn msg(i: u64) -> Queued {
        Queued {
            topic: "t".into(),
            payload: Default::default(),
            profile: 0,
            intended_ns: i,
            sent_ns: 0,
            device_hash: 0,
            phase: crate::sink::net::NO_PHASE,
            wire: Default::default(),
            mqtt5: Default::default(),
        }
    }

    fn start_one(ex: &mut Exchanges, jitter: f64) -> (u16, u32) {
        let (mid, token) = ex.next_ids();
        let d = encode_post("a/b", b"{}", 50, true, mid, token).unwrap();
        ex.insert(msg(1), d, mid, token, 0, jitter);
        (mid, token)
    }

    fn response(t: MessageType, code: u8, mid: u16, token: Option<u32>) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(t);
        p.header.code = code.into();
        p.header.message_id = mid;
        if let Some(tk) = token {
            p.set_token(tk.to_be_bytes().to_vec());
        }
        p.to_bytes().unwrap()
    }

    #[test]
    fn posts_carry_the_format_s_content_format() {
        for (cf, want) in [(60u16, vec![60u8]), (112, vec![112]), (0, vec![]), (300, vec![1, 44])] {
            let d = encode_post("a", b"x", cf, false, 1, 2).unwrap();
            let p = Packet::from_bytes(&d).unwrap();
            let got = p.get_option(CoapOption::ContentFormat).unwrap().front().unwrap().clone();
            assert_eq!(got, want, "{cf}");
        }
    }

    #[test]
    fn posts_carry_the_topic_as_uri_path_and_json_content_format() {
        let d = encode_post("/devices/d-1//telemetry", b"{\"a\":1}", 50, true, 7, 9).unwrap();
        let p = Packet::from_bytes(&d).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(p.header.code, MessageClass::Request(RequestType::Post));
        assert_eq!(p.header.message_id, 7);
        assert_eq!(p.get_token(), &9u32.to_be_bytes());
        let path: Vec<&[u8]> =
            p.get_option(CoapOption::UriPath).unwrap().iter().map(|v| &v[..]).collect();
        assert_eq!(path, vec![&b"devices"[..], b"d-1", b"telemetry"]);
        assert_eq!(p.get_content_format(), Some(coap_lite::ContentFormat::ApplicationJSON));
        assert_eq!(p.payload, b"{\"a\":1}");
    }

    #[test]
    fn retransmission_doubles_the_timeout_and_gives_up_after_max_retransmit() {
        let mut ex = Exchanges::new(P, 0);
        start_one(&mut ex, 0.0);
        let mut ev = Vec::new();
        // Timeouts 2, 4, 8, 16 s, then 32 s more before giving up: 62 s in all (RFC 7252 4.8.2).
        let mut at = 0;
        for (i, step) in [2u64, 4, 8, 16].iter().enumerate() {
            at += step * 1_000_000_000;
            ex.expire(at - 1, &mut ev);
            assert!(ev.is_empty(), "retransmission {i} came early");
            ex.expire(at, &mut ev);
            assert!(matches!(ev.as_slice(), [Event::Resend(_)]), "retransmission {i}: {ev:?}");
            ev.clear();
        }
        at += 32_000_000_000;
        ex.expire(at - 1, &mut ev);
        assert!(ev.is_empty());
        ex.expire(at, &mut ev);
        assert!(matches!(ev.as_slice(), [Event::Failed(_, k)] if k == "coap_timeout"), "{ev:?}");
        assert!(ex.is_empty());
        assert_eq!(ex.len(), 0);
    }

    #[test]
    fn the_first_timeout_is_spread_by_the_random_factor() {
        let mut ex = Exchanges::new(P, 0);
        start_one(&mut ex, 0.5);
        assert_eq!(ex.next_deadline(), Some(2_500_000_000));
    }

    #[test]
    fn a_piggybacked_2xx_ack_completes_and_4xx_5xx_fail_with_their_code() {
        let mut ex = Exchanges::new(P, 0);
        let (mid, token) = start_one(&mut ex, 0.0);
        let mut ev = Vec::new();
        ex.on_datagram(&response(MessageType::Acknowledgement, 0x44, mid, Some(token)), 1, &mut ev);
        assert!(matches!(ev.as_slice(), [Event::Completed(_)]), "{ev:?}");
        assert!(ex.is_empty());
        ev.clear();
        let (mid, token) = start_one(&mut ex, 0.0);
        ex.on_datagram(&response(MessageType::Acknowledgement, 0x84, mid, Some(token)), 1, &mut ev);
        assert!(matches!(ev.as_slice(), [Event::Failed(_, k)] if k == "coap_4.04"), "{ev:?}");
        ev.clear();
        let (mid, token) = start_one(&mut ex, 0.0);
        ex.on_datagram(&response(MessageType::Acknowledgement, 0xA3, mid, Some(token)), 1, &mut ev);
        assert!(matches!(ev.as_slice(), [Event::Failed(_, k)] if k == "coap_5.03"), "{ev:?}");
        assert_eq!(ex.next_deadline(), None);
    }

    #[test]
    fn an_ack_with_a_wrong_token_or_unknown_id_is_ignored() {
        let mut ex = Exchanges::new(P, 0);
        let (mid, token) = start_one(&mut ex, 0.0);
        let mut ev = Vec::new();
        ex.on_datagram(
            &response(MessageType::Acknowledgement, 0x44, mid, Some(token ^ 1)),
            1,
            &mut ev,
        );
        ex.on_datagram(
            &response(MessageType::Acknowledgement, 0x44, mid.wrapping_add(1), Some(token)),
            1,
            &mut ev,
        );
        ex.on_datagram(b"\xff garbage", 1, &mut ev);
        assert!(ev.is_empty());
        assert_eq!(ex.len(), 1);
    }

    #[test]
    fn a_reset_fails_the_exchange() {
        let mut ex = Exchanges::new(P, 0);
        let (mid, _) = start_one(&mut ex, 0.0);
        let mut ev = Vec::new();
        ex.on_datagram(&response(MessageType::Reset, 0, mid, None), 1, &mut ev);
        assert!(matches!(ev.as_slice(), [Event::Failed(_, k)] if k == "coap_reset"), "{ev:?}");
        assert!(ex.is_empty());
    }

    #[test]
    fn an_empty_ack_stops_retransmission_and_the_separate_response_is_acked_and_settles() {
        let mut ex = Exchanges::new(P, 0);
        let (mid, token) = start_one(&mut ex, 0.0);
        let mut ev = Vec::new();
        ex.on_datagram(&response(MessageType::Acknowledgement, 0, mid, None), 1, &mut ev);
        assert!(ev.is_empty());
        assert_eq!(ex.len(), 1);
        ex.expire(10_000_000_000, &mut ev);
        assert!(ev.is_empty(), "no retransmission after an empty ACK: {ev:?}");
        ex.on_datagram(&response(MessageType::Confirmable, 0x41, 999, Some(token)), 2, &mut ev);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            matches!(&ev[0], Event::Reply(d) if *d == empty(MessageType::Acknowledgement, 999))
        );
        assert!(matches!(ev[1], Event::Completed(_)));
        assert!(ex.is_empty());
    }

    #[test]
    fn an_unknown_confirmable_message_gets_a_reset() {
        let mut ex = Exchanges::new(P, 0);
        let mut ev = Vec::new();
        ex.on_datagram(&response(MessageType::Confirmable, 0x45, 5, Some(77)), 1, &mut ev);
        assert!(
            matches!(ev.as_slice(), [Event::Reply(d)] if *d == empty(MessageType::Reset, 5)),
            "{ev:?}"
        );
    }

    #[test]
    fn message_ids_and_tokens_in_use_are_skipped() {
        let mut ex = Exchanges::new(P, 0xFFFF);
        let (mid, _) = start_one(&mut ex, 0.0);
        ex.next_mid = mid.wrapping_sub(1);
        let (again, _) = ex.next_ids();
        assert_ne!(again, mid);
    }
}
