//! The AMQP 0-9-1 sink (lapin): one connection and channel per shard, a durable topic exchange,
//! routing key = the topic with `/` replaced, persistent messages, publisher confirms.
//!
//! The pump publishes from the queue and hands each publisher-confirm future to a small local
//! task; at most `confirm_window` confirms are outstanding. Completion is the broker's ack; a
//! nack is an error of kind `nack`. When the connection fails, unsent messages stay queued, the
//! ones awaiting a confirm are counted as `connection_lost` (the broker may or may not have
//! them), and the task reconnects with exponential backoff plus jitter.

use super::net::{ConnEvent, NetShared, Queued};
use crate::config::AmqpSettings;
use crate::measure::clock::mono_ns;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use std::rc::Rc;

/// Starts the shard's AMQP connection task.
pub fn start(s: &AmqpSettings, shared: Rc<NetShared>) -> Result<(), String> {
    tokio::task::spawn_local(run(s.clone(), shared));
    Ok(())
}

async fn connect(s: &AmqpSettings) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(&s.url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    if s.confirms {
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    channel
        .exchange_declare(
            s.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel))
}

/// The routing key for a topic.
pub fn routing_key(topic: &str, separator: &str) -> String {
    if separator.is_empty() || separator == "/" {
        topic.to_string()
    } else {
        topic.replace('/', separator)
    }
}

async fn run(s: AmqpSettings, shared: Rc<NetShared>) {
    let q = &shared.conns[0];
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(s.confirm_window));
    let mut attempt = 0u32;
    let mut ever = false;
    let mut failing = false;
    'connect: loop {
        if shared.closing.get() && q.is_empty() {
            return;
        }
        let (conn, channel) = match connect(&s).await {
            Ok(c) => c,
            Err(e) => {
                shared.event("connect_error");
                if !failing {
                    failing = true;
                    shared.conn_event(ConnEvent::ConnectFailed {
                        conn: 0,
                        url: redact(&s.url),
                        error: e.to_string(),
                    });
                }
                tracing::warn!(sink = "amqp", shard = shared.shard(), url = %redact(&s.url), error = %e, "connect failed; retrying with backoff");
                if shared.closing.get() {
                    return;
                }
                shared.backoff_sleep(attempt).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        if ever {
            shared.event("reconnect");
        }
        ever = true;
        attempt = 0;
        q.connected.set(true);
        shared.conn_event(ConnEvent::Connected { conn: 0, url: redact(&s.url) });
        loop {
            if shared.closing.get() && q.is_empty() {
                // Wait for outstanding confirms, then close.
                let _ = window.acquire_many(s.confirm_window as u32).await;
                let _ = conn.close(200, "bye".into()).await;
                return;
            }
            let Some(mut m) = q.pop() else {
                tokio::select! {
                    _ = q.wake.notified() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
                continue;
            };
            let Ok(permit) = window.clone().acquire_owned().await else { return };
            m.sent_ns = mono_ns();
            let key = routing_key(&m.topic, &s.routing_separator);
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(m.wire.content_type.into());
            shared.sent(0);
            match channel
                .basic_publish(
                    s.exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &m.payload,
                    props,
                )
                .await
            {
                Ok(confirm) => {
                    let shared = shared.clone();
                    tokio::task::spawn_local(async move {
                        tokio::select! {
                            r = confirm => settle(&shared, &m, r),
                            _ = shared.abandon.notified() => {
                                shared.fail(&m, "unconfirmed");
                                shared.settled(0);
                            }
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Not sent: keep it for the next connection.
                    shared.settled(0);
                    q.push_front(m);
                    drop(permit);
                    q.connected.set(false);
                    shared.event("disconnect");
                    failing = true;
                    shared.conn_event(ConnEvent::Disconnected {
                        conn: 0,
                        url: redact(&s.url),
                        error: e.to_string(),
                    });
                    tracing::warn!(sink = "amqp", shard = shared.shard(), error = %e, "publish failed; reconnecting");
                    shared.backoff_sleep(0).await;
                    continue 'connect;
                }
            }
        }
    }
}

fn settle(shared: &NetShared, m: &Queued, r: Result<Confirmation, lapin::Error>) {
    match r {
        Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => shared.complete(m),
        Ok(Confirmation::Nack(_)) => shared.fail(m, "nack"),
        Err(_) => shared.fail(m, "connection_lost"),
    }
    shared.settled(0);
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_replace_slashes() {
        assert_eq!(routing_key("devices/a-0001/telemetry", "."), "devices.a-0001.telemetry");
        assert_eq!(routing_key("devices/a", ""), "devices/a");
    }

    #[test]
    fn passwords_are_redacted_in_logs() {
        assert_eq!(redact("amqp://guest:secret@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
    }
}
