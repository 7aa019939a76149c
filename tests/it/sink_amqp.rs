//! The AMQP sink against the machine's RabbitMQ (127.0.0.1:5672, guest/guest): a queue bound to
//! the exchange receives exactly what the report says was confirmed.

use crate::common;
use crate::common::fleet::Fleet;

use common::*;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use std::collections::BTreeMap;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn fleet(exchange: &str, devices: u32, clock: &str, duration: &str, interval: &str) -> String {
    Fleet::new()
        .run(5, clock, "2026-03-14T00:00:00Z", duration)
        .sink("amqp")
        .set("url", "amqp://127.0.0.1:5672/%2f")
        .set("exchange", exchange)
        .devices("meter", devices)
        .profile("meter", "amqp", interval)
        .set("topic", "meters/{device_id}/telemetry")
        .set("seq", true)
        .gaussian("meter", "kw", 3, 0.5)
        .toml()
}

/// Declares `exchange` (as iot-sim does) and a queue bound to it with `#`.
async fn bind(exchange: &str, queue: &str) -> Connection {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions { durable: false, auto_delete: false, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn
}

/// Takes everything in `queue`: (routing key, payload).
async fn drain(conn: &Connection, queue: &str) -> Vec<(String, Vec<u8>)> {
    let ch = conn.create_channel().await.unwrap();
    let mut out = vec![];
    while let Some(m) = ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap()
    {
        out.push((m.delivery.routing_key.to_string(), m.delivery.data.clone()));
    }
    ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await.unwrap();
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn the_bound_queue_receives_exactly_what_was_confirmed() {
    let rt = rt();
    let exchange = unique("iot.test");
    let queue = unique("iotsim-q");
    let conn = rt.block_on(bind(&exchange, &queue));
    let dir = tempfile::tempdir().unwrap();
    // Virtual clock: 150 devices x 2 minutes at 1 s, as fast as the broker confirms.
    let r = run_ok(dir.path(), &fleet(&exchange, 150, "virtual", "2m", "1s"), &["--cores", "2"]);
    let row = &r["runs"][0];
    assert_eq!(row["sink"], "amqp");
    assert_eq!(row["messages"], 150 * 120, "{row}");
    assert_eq!(row["errors"], 0);
    assert_eq!(row["dropped"], 0, "virtual time waits for the broker instead of dropping");
    let got = rt.block_on(drain(&conn, &queue));
    assert_eq!(
        got.len() as u64,
        row["messages"].as_u64().unwrap(),
        "queue count = confirmed count"
    );
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, payload) in &got {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let id = v["device_id"].as_str().unwrap().to_string();
        assert_eq!(key, &format!("meters.{id}.telemetry"), "routing key = topic with / -> .");
        seqs.entry(id).or_default().push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), 150);
    for (id, mut s) in seqs {
        s.sort_unstable();
        assert_eq!(s, (0..120).collect::<Vec<u64>>(), "{id}");
    }
}

#[test]
fn a_cbor_profile_s_messages_carry_its_content_type() {
    let rt = rt();
    let exchange = unique("iot.test");
    let queue = unique("iotsim-q");
    let conn = rt.block_on(bind(&exchange, &queue));
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet(&exchange, 5, "virtual", "10s", "1s")
        .replace("[profiles.meter]\n", "[profiles.meter]\nformat = \"cbor\"\n");
    assert!(toml.contains("format = \"cbor\""), "{toml}");
    let r = run_ok(dir.path(), &toml, &["--cores", "1"]);
    assert_eq!(r["runs"][0]["messages"], 50);
    let got = rt.block_on(async {
        let ch = conn.create_channel().await.unwrap();
        let mut out = vec![];
        while let Some(m) =
            ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap()
        {
            let ct = m.delivery.properties.content_type().as_ref().map(|c| c.to_string());
            out.push((ct, m.delivery.data.clone()));
        }
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
        out
    });
    assert_eq!(got.len(), 50);
    for (ct, body) in &got {
        assert_eq!(ct.as_deref(), Some("application/cbor"));
        assert_eq!(body[0] & 0xe0, 0xa0, "a CBOR map");
    }
}

#[test]
fn realtime_publishing_is_confirmed_with_measured_latency() {
    let rt = rt();
    let exchange = unique("iot.test.rt");
    let queue = unique("iotsim-qrt");
    let conn = rt.block_on(bind(&exchange, &queue));
    let dir = tempfile::tempdir().unwrap();
    let r = run_ok(dir.path(), &fleet(&exchange, 50, "realtime", "2s", "50ms"), &["--cores", "1"]);
    let row = &r["runs"][0];
    assert_eq!(row["messages"], 2000, "{row}");
    assert!(row["latency_us"]["p50"].as_u64().unwrap() > 0);
    assert_eq!(rt.block_on(drain(&conn, &queue)).len(), 2000);
}

#[test]
fn an_unreachable_amqp_broker_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = fleet("x", 1, "virtual", "1m", "1s")
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{port}"));
    let out = run(dir.path(), &toml, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains(&format!("cannot reach the amqp server at amqp://127.0.0.1:{port}/%2f")),
        "{}",
        stderr(&out)
    );
}
