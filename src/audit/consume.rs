//! The consumers: an MQTT subscriber (rumqttc) and an AMQP queue consumer (lapin) that hand
//! every message to the [`Ledger`](super::ledger::Ledger) with its arrival time. A connection
//! error or a refusal (a missing queue) is counted and retried; the consumer never stops on
//! bad input, only when told to.

use super::Shared;
use crate::config::audit::AuditSource;
use crate::limits::MAX_AUDIT_MESSAGE_BYTES;
use crate::measure::clock::wall_us;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Runs the source's consumer until `shared.stop` is notified. `ready` gets one message once
/// the subscription (or the consume) is in place, or the first attempt failed.
pub async fn run(source: AuditSource, shared: Arc<Shared>, ready: Sender<Result<(), String>>) {
    match source {
        AuditSource::Mqtt { host, port, filters, qos, .. } => {
            mqtt(host, port, filters, qos, shared, ready).await
        }
        AuditSource::Amqp { url, queue, declare, exchange, bindings } => {
            amqp(url, queue, declare, exchange, bindings, shared, ready).await
        }
        AuditSource::Http { listen, topic_header } => {
            http(listen, topic_header, shared, ready).await
        }
    }
}

/// Largest request body the HTTP receiver takes (a batch of payloads); larger: 413, counted.
const MAX_HTTP_BODY_BYTES: usize = 16 << 20;

/// What each HTTP request handler needs.
#[derive(Clone)]
struct Receiver {
    shared: Arc<Shared>,
    topic_header: Arc<str>,
}

async fn http(
    listen: std::net::SocketAddr,
    topic_header: String,
    shared: Arc<Shared>,
    ready: Sender<Result<(), String>>,
) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(Err(format!("cannot listen on {listen}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let state = Receiver { shared: shared.clone(), topic_header: topic_header.into() };
    let app = axum::Router::new()
        .fallback(receive)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_HTTP_BODY_BYTES))
        .with_state(state);
    tokio::select! {
        _ = shared.stop.notified() => {}
        r = axum::serve(listener, app) => {
            if let Err(e) = r {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "audit: the HTTP receiver stopped");
            }
        }
    }
}

/// One POST: a payload, or a JSON array of payloads (the HTTP sink's batch). Always 200 once
/// read: what is wrong with it is counted, not refused (the sink would retry it).
async fn receive(
    axum::extract::State(rx): axum::extract::State<Receiver>,
    headers: axum::http::HeaderMap,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    let now = wall_us();
    let Ok(mut l) = rx.shared.ledger.lock() else { return StatusCode::INTERNAL_SERVER_ERROR };
    let Ok(body) = body else {
        l.observe(None, b"", now);
        return StatusCode::PAYLOAD_TOO_LARGE;
    };
    let topic = headers.get(&*rx.topic_header).and_then(|v| v.to_str().ok());
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    match batch.then(|| serde_json::from_slice::<Vec<serde_json::Value>>(&body)) {
        Some(Ok(items)) => {
            // A batch is re-encoded item by item (an HTTP-path cost the MQTT and AMQP
            // consumers do not pay).
            let mut buf = Vec::with_capacity(512);
            for item in items {
                buf.clear();
                let _ = serde_json::to_writer(&mut buf, &item);
                l.observe(topic, &buf, now);
            }
        }
        _ => l.observe(topic, &body, now),
    }
    StatusCode::OK
}

async fn mqtt(
    host: String,
    port: u16,
    filters: Vec<String>,
    qos: u8,
    shared: Arc<Shared>,
    ready: Sender<Result<(), String>>,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
    // Unique per process and start: two auditors on one broker must not kick each other off.
    let id = format!("iot-sim-audit-{}-{}", std::process::id(), wall_us() % 1_000_000_000);
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MAX_AUDIT_MESSAGE_BYTES + 4096, 64 << 10);
    opts.set_clean_session(true);
    // The sink's credentials (`IOT_SIM_MQTT_USERNAME` / `_PASSWORD`), never from a file.
    if let Ok(user) = std::env::var("IOT_SIM_MQTT_USERNAME") {
        opts.set_credentials(user, std::env::var("IOT_SIM_MQTT_PASSWORD").unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    let q = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let mut ready = Some(ready);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shared.stop.notified() => break,
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    // A clean session forgets subscriptions: subscribe on every connection.
                    let subs = filters.iter().map(|f| SubscribeFilter::new(f.clone(), q));
                    if let Err(e) = client.try_subscribe_many(subs) {
                        tracing::warn!(error = %e, "audit: cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = wall_us();
                    if let Ok(mut l) = shared.ledger.lock() {
                        l.observe(Some(&p.topic), &p.payload, now);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "audit: MQTT connection error; reconnecting");
                    }
                    if failures >= 50 && let Some(r) = ready.take() {
                        let _ = r.send(Err(format!("cannot subscribe: {e}")));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

async fn amqp(
    url: String,
    queue: String,
    declare: bool,
    exchange: String,
    bindings: Vec<String>,
    shared: Arc<Shared>,
    ready: Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    loop {
        let session =
            amqp_session(&url, &queue, declare, &exchange, &bindings, &shared, &mut ready);
        tokio::select! {
            _ = shared.stop.notified() => break,
            r = session => {
                if let Err(e) = r {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, queue = %queue, "audit: AMQP consumer error; retrying in 1s");
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e.to_string()));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn amqp_session(
    url: &str,
    queue: &str,
    declare: bool,
    exchange: &str,
    bindings: &[String],
    shared: &Shared,
    ready: &mut Option<Sender<Result<(), String>>>,
) -> Result<(), lapin::Error> {
    use lapin::options::{
        BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties, ExchangeKind};
    use tokio_stream::StreamExt;
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut name = queue.to_string();
    if declare {
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?;
        // A queue the auditor names for itself goes away with it.
        let own = queue.is_empty();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { exclusive: own, auto_delete: own, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        name = q.name().as_str().to_string();
        for b in bindings {
            ch.queue_bind(
                name.as_str().into(),
                exchange.into(),
                b.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    ch.basic_qos(2000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            name.as_str().into(),
            "iot-sim-audit".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    if let Some(r) = ready.take() {
        let _ = r.send(Ok(()));
    }
    while let Some(d) = consumer.next().await {
        let d = d?;
        let now = wall_us();
        if let Ok(mut l) = shared.ledger.lock() {
            l.observe(Some(d.routing_key.as_str()), &d.data, now);
        }
    }
    Ok(())
}
