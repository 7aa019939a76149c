//! Pooled MQTT connections (`connection = "pooled"`, the default): each shard keeps
//! `pool_size` connections, and a device's messages always take the same one (by its hash).
//!
//! One local task per connection drives a [`Session`] (the same sans-IO protocol state as the
//! per-device sessions) over its socket. Each turn it:
//! 1. moves queued messages into the session while the in-flight window has room (QoS 0 has
//!    none to fill) and the turn's output stays under [`TURN_BYTES_MAX`];
//! 2. writes every packet the turn produced in one write: with the shard filling the queue once
//!    per wheel turn, that is one write per wheel turn per connection, not one per message;
//! 3. settles what the session reports: QoS 0 completes once its bytes were written ("handed to
//!    the socket"), QoS 1 on PUBACK, QoS 2 on PUBCOMP; an MQTT 5 reason code >= 0x80 is a nack;
//! 4. waits for bytes from the broker, new messages, the session's next timer (keep-alive,
//!    connect timeout) or shutdown, or goes round at once when it stopped for the byte bound.
//!
//! A lost connection is counted and retried with the sink's jittered exponential backoff; the
//! backoff starts over only after a connection that stayed up for the stable period
//! ([`crate::sink::net::Retry`]). The session keeps every unacknowledged message and, after the
//! next CONNACK, sends them again in their original order (PUBLISH with DUP, PUBREL where
//! PUBREC had arrived): at least once. Queued messages wait in the connection's queue under the
//! profile's backpressure policy. A message larger than an MQTT 5 broker's Maximum Packet Size
//! is never sent: it is counted as an error of kind `too_large`.
//!
//! At the end of a run the connection sends DISCONNECT, flushes it and closes the socket;
//! `NetShared::drain` waits for that (the connection counts in `open_sessions` while its
//! socket is open).

use super::session::{ConnectParams, Outcome, Session, Version};
use super::transport::{Tls, open_tcp};
use crate::config::MqttSettings;
use crate::measure::clock::mono_ns;
use crate::sim::profile::Fleet;
use crate::sink::net::{ConnEvent, NetShared, Queued, Retry};
use bytes::Bytes;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A turn stops taking messages once this much output is waiting (bounds the write buffer and
/// lets the connection read acknowledgements in between).
const TURN_BYTES_MAX: usize = 256 * 1024;

/// Bytes read per read call: a burst of PUBACKs (4 bytes each) is read in one go.
const READ_BUF_BYTES: usize = 16 * 1024;

/// A pooled connection's CONNECT (and TCP connect) timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection of one shard's pooled sink shares.
struct Pool {
    settings: MqttSettings,
    version: Version,
    tls: Option<Tls>,
    /// Per-profile (qos, retain).
    delivery: Vec<(u8, bool)>,
    shared: Rc<NetShared>,
}

/// Starts every pooled connection of this shard's MQTT sink.
pub fn start(s: &MqttSettings, fleet: &Fleet, shared: Rc<NetShared>) -> Result<(), String> {
    let pool = Rc::new(Pool {
        settings: s.clone(),
        version: if s.version == 5 { Version::V5 } else { Version::V311 },
        tls: super::transport::tls(s)?,
        delivery: fleet
            .profiles
            .iter()
            .map(|p| (p.delivery.qos.unwrap_or(s.qos), p.delivery.retain.unwrap_or(s.retain)))
            .collect(),
        shared,
    });
    for conn in 0..pool.shared.conns.len() {
        let params = ConnectParams {
            client_id: format!(
                "{}-{}-s{}-c{conn}",
                s.client_id_prefix,
                std::process::id(),
                pool.shared.shard()
            ),
            clean_session: true,
            session_expiry_s: None,
            username: s.username.clone(),
            password: s.username.as_ref().map(|_| s.password.clone().unwrap_or_default()),
            will: None,
        };
        tokio::task::spawn_local(run(pool.clone(), conn, params));
    }
    Ok(())
}

/// Why one connection ended.
enum End {
    /// Refused by CONNACK, or lost: counted, retried after backoff.
    Lost(String),
    /// Shutdown: DISCONNECT sent (`abandon` counts what is still unacknowledged), or the
    /// drain gave up on the connection.
    Closing,
}

/// What a connection's task remembers across connections.
#[derive(Default)]
struct Link {
    /// The backoff step, and when the connection came up.
    retry: Retry,
    ever_connected: bool,
    /// In an outage: reported once (StreamEvents), not once per retry.
    failing: bool,
}

/// One pooled connection's task: connect, drive the session, reconnect with backoff.
async fn run(pool: Rc<Pool>, conn: usize, params: ConnectParams) {
    let shared = &pool.shared;
    let s = &pool.settings;
    let mut session: Session<Queued> =
        Session::new(pool.version, s.keep_alive_ms.min(u32::MAX as u64) as u32, s.inflight);
    session.set_connect_timeout_ms(CONNECT_TIMEOUT.as_millis() as u32);
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut link = Link::default();
    loop {
        if shared.abandoned.get() || (shared.closing.get() && settled(&pool, conn)) {
            abandon(&pool, conn, &mut session);
            return;
        }
        let opened = tokio::select! {
            r = open_tcp(&s.host, s.port, None, CONNECT_TIMEOUT) => r,
            _ = shared.close.notified() => continue,
            _ = shared.abandon.notified() => continue,
        };
        let end = match opened {
            Err(e) => End::Lost(format!("connect: {e}")),
            Ok(tcp) => match &pool.tls {
                None => over_ws(&pool, conn, &mut session, &params, tcp, &mut buf, &mut link).await,
                Some(tls) => match tls.connect(tcp, CONNECT_TIMEOUT).await {
                    Ok(tls) => {
                        Box::pin(over_ws(
                            &pool,
                            conn,
                            &mut session,
                            &params,
                            tls,
                            &mut buf,
                            &mut link,
                        ))
                        .await
                    }
                    Err(e) => End::Lost(format!("tls: {e}")),
                },
            },
        };
        session.connection_lost();
        let q = &shared.conns[conn];
        let error = match end {
            End::Closing => {
                abandon(&pool, conn, &mut session);
                return;
            }
            End::Lost(e) => e,
        };
        let Link { retry, ever_connected, failing } = &mut link;
        if q.connected.replace(false) {
            shared.event("disconnect");
            shared.conn_event(ConnEvent::Disconnected {
                conn,
                url: s.url.clone(),
                error: error.clone(),
            });
            tracing::warn!(sink = "mqtt", shard = shared.shard(), conn, %error, "connection lost; reconnecting with backoff");
            *failing = true;
        } else {
            if !*failing {
                *failing = true;
                shared.conn_event(ConnEvent::ConnectFailed {
                    conn,
                    url: s.url.clone(),
                    error: error.clone(),
                });
            }
            tracing::debug!(sink = "mqtt", shard = shared.shard(), conn, %error, "connect failed");
        }
        shared.event("connect_error");
        if shared.closing.get() && !*ever_connected {
            // Never reached the broker: `drain` counts the queue as `shutdown`.
            abandon(&pool, conn, &mut session);
            return;
        }
        let attempt = retry.lost(&shared.backoff, mono_ns());
        tokio::select! {
            _ = shared.backoff_sleep(attempt) => {}
            _ = shared.abandon.notified() => {}
        }
    }
}

/// Nothing of this connection is queued or unacknowledged.
fn settled(pool: &Pool, conn: usize) -> bool {
    let q = &pool.shared.conns[conn];
    q.is_empty() && q.inflight.get() == 0
}

/// At shutdown: what the session still holds unacknowledged is counted (`unconfirmed`).
fn abandon(pool: &Pool, conn: usize, session: &mut Session<Queued>) {
    for m in session.take_unacked() {
        pool.shared.fail(&m, "unconfirmed");
        pool.shared.settled(conn);
    }
}

/// Settles what the session reports. Returns why the connection ends, if it does.
fn settle(pool: &Pool, conn: usize, session: &mut Session<Queued>, link: &mut Link) -> Option<End> {
    let shared = &pool.shared;
    let q = &shared.conns[conn];
    let mut end = None;
    let now = mono_ns();
    while let Some(o) = session.poll_outcome() {
        match o {
            Outcome::Delivered(m) => {
                shared.complete_at(&m, now);
                shared.settled(conn);
            }
            Outcome::Rejected(m, reason) => {
                shared.fail(&m, reason);
                shared.settled(conn);
            }
            Outcome::Connected { .. } => {
                link.retry.connected(now);
                link.failing = false;
                if std::mem::replace(&mut link.ever_connected, true) {
                    shared.event("reconnect");
                    tracing::info!(sink = "mqtt", shard = shared.shard(), conn, "reconnected");
                }
                q.connected.set(true);
                shared.conn_event(ConnEvent::Connected { conn, url: pool.settings.url.clone() });
            }
            Outcome::Refused { reason } => end = Some(End::Lost(format!("refused: {reason}"))),
            Outcome::Closed(reason) => end = Some(End::Lost(reason.as_str().to_string())),
            // A pooled connection subscribes to nothing.
            Outcome::Subscribed { .. } | Outcome::Command { .. } => {}
        }
    }
    end
}

/// [`drive`] over `stream`, or over a WebSocket on it for `ws://`/`wss://` (a refused
/// handshake is a lost connection, counted as `connect_error` and `ws_refused_<reason>`).
async fn over_ws<S: AsyncRead + AsyncWrite + Unpin>(
    pool: &Pool,
    conn: usize,
    session: &mut Session<Queued>,
    params: &ConnectParams,
    stream: S,
    buf: &mut [u8],
    link: &mut Link,
) -> End {
    match &pool.settings.ws {
        None => drive(pool, conn, session, params, stream, buf, link).await,
        Some(target) => match Box::pin(super::ws::connect(stream, target, CONNECT_TIMEOUT)).await {
            Ok(ws) => Box::pin(drive(pool, conn, session, params, ws, buf, link)).await,
            Err(e) => {
                if let Some(r) = super::ws::refusal(&e) {
                    pool.shared.event(r.event());
                }
                End::Lost(format!("websocket: {e}"))
            }
        },
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    pool: &Pool,
    conn: usize,
    session: &mut Session<Queued>,
    params: &ConnectParams,
    mut stream: S,
    buf: &mut [u8],
    link: &mut Link,
) -> End {
    let shared = &pool.shared;
    shared.open_sessions.set(shared.open_sessions.get() + 1);
    let end = drive_open(pool, conn, session, params, &mut stream, buf, link).await;
    shared.open_sessions.set(shared.open_sessions.get().saturating_sub(1));
    end
}

/// [`drive`] while the socket is open.
async fn drive_open<S: AsyncRead + AsyncWrite + Unpin>(
    pool: &Pool,
    conn: usize,
    session: &mut Session<Queued>,
    params: &ConnectParams,
    stream: &mut S,
    buf: &mut [u8],
    link: &mut Link,
) -> End {
    let shared = &pool.shared;
    let q = &shared.conns[conn];
    session.connect(params, mono_ns());
    // The session's timer (CONNACK timeout, keep-alive) as one sleep for the whole connection,
    // armed for `armed_ns`, and the three wake-ups as futures that live across turns: a new
    // sleep and three new `Notified` per turn put a timer entry in and out of the runtime's
    // wheel and three waiters in and out of their lists for every PUBACK read at QoS 1. The
    // sleep is re-armed only when the deadline comes earlier than the armed one (a later one is
    // taken up when the armed one fires: `handle_timeout` does nothing before it is due); a
    // `Notified` is renewed only once it fired (one made before a `notify_waiters` still sees it).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed_ns: Option<u64> = None;
    let wake = q.wake.notified();
    let close = shared.close.notified();
    let abandon = shared.abandon.notified();
    tokio::pin!(wake, close, abandon);
    loop {
        // 1. Queued messages into the session.
        let mut more = false;
        if session.is_connected() {
            let now = mono_ns();
            while let Some(profile) = q.front_profile() {
                let (qos, retain) = pool
                    .delivery
                    .get(profile as usize)
                    .copied()
                    .unwrap_or((pool.settings.qos, pool.settings.retain));
                if !session.can_publish(qos) {
                    break;
                }
                let Some(mut m) = q.pop() else { break };
                m.sent_ns = now;
                let topic = Bytes::from(std::mem::take(&mut m.topic));
                let payload = m.payload.clone();
                let props = std::mem::take(&mut m.mqtt5);
                shared.sent(conn);
                if let Err(m) = session.publish_props(topic, payload, props, qos, retain, m, now) {
                    // Not reached (the window was checked above); counted, never lost silently.
                    shared.fail(&m, "window_full");
                    shared.settled(conn);
                    break;
                }
                if session.output_len() >= TURN_BYTES_MAX {
                    more = true;
                    break;
                }
            }
        }
        // 2. One write for the turn.
        if session.has_output() {
            if let Err(e) = stream.write_all(session.output()).await {
                return End::Lost(format!("write: {e}"));
            }
            session.clear_output();
        }
        // 3. Outcomes (QoS 0 completes here, after its bytes were written).
        if let Some(end) = settle(pool, conn, session, link) {
            return end;
        }
        if shared.abandoned.get() {
            return End::Closing;
        }
        if shared.closing.get() {
            // `drain` waited for what was queued and in flight; what is still unacknowledged
            // is counted by `abandon` (`unconfirmed`). A graceful close: DISCONNECT, flushed
            // (TLS buffers it), then the socket's FIN.
            session.disconnect();
            let _ = stream.write_all(session.output()).await;
            session.clear_output();
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
            return End::Closing;
        }
        // 4. Wait for something to do.
        if more {
            // Stopped for the byte bound: read what is ready, let the shard run, go on.
            tokio::task::yield_now().await;
        }
        if let Some(due) = session.next_timeout_ns()
            && armed_ns.is_none_or(|a| due < a)
        {
            let wait = Duration::from_nanos(due.saturating_sub(mono_ns()));
            timer.as_mut().reset(tokio::time::Instant::now() + wait);
            armed_ns = Some(due);
        }
        tokio::select! {
            biased;
            r = stream.read(buf) => match r {
                Ok(0) => return End::Lost("closed by the broker".into()),
                Ok(n) => session.read(&buf[..n], mono_ns()),
                Err(e) => return End::Lost(format!("read: {e}")),
            },
            _ = std::future::ready(()), if more => {}
            _ = &mut wake => wake.set(q.wake.notified()),
            _ = &mut timer, if armed_ns.is_some() => {
                armed_ns = None;
                session.handle_timeout(mono_ns());
            }
            _ = &mut close => close.set(shared.close.notified()),
            _ = &mut abandon => abandon.set(shared.abandon.notified()),
        }
    }
}
