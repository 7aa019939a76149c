//! MQTT over WebSocket (`ws://`, `wss://`) against a private Mosquitto with a websockets
//! listener beside its plain one (Mosquitto 2.0 opens websockets only beside a plain listener);
//! a subscriber on the plain port counts what arrives.

use crate::common;
use crate::common::fleet::Fleet;

use common::mqtt::{Broker, Subscriber};
use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

/// A temporary folder the broker (which drops root to its own user) can read.
fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A broker with a plain listener (returned first) and a websockets listener (`ws_extra`
/// appended to it: TLS files for wss).
fn ws_broker(dir: &std::path::Path, ws_extra: &str) -> (u16, u16, Broker) {
    let (plain, ws) = (free_port(), free_port());
    let broker = Broker::with_conf(
        plain,
        dir,
        &format!(
            "allow_anonymous true\nmax_queued_messages 0\nlistener {ws} 127.0.0.1\nprotocol websockets\n{ws_extra}"
        ),
    );
    assert!(wait_port(ws), "the websockets listener did not open:\n{}", broker.log());
    (plain, ws, broker)
}

fn fleet(url: &str, root: &str, connection: &str, extra_sink: &str, devices: u32) -> String {
    Fleet::new()
        .run(7, "realtime", "2026-03-14T00:00:00Z", "2s")
        .sink("mqtt")
        .set("url", url)
        .set("qos", 1)
        .set("pool_size", 2)
        .set("backoff_initial", "50ms")
        .set("backoff_max", "400ms")
        .raw(extra_sink)
        .devices("probe", devices)
        .profile("probe", "mqtt", "100ms")
        .set("connection", connection)
        .set("topic", format!("{root}/{{device_id}}/telemetry"))
        .set("seq", true)
        .gaussian("probe", "t", 20, 1)
        .toml()
}

/// Runs `devices` devices for 2 s at 10 msg/s over `url` and checks that the subscriber on the
/// plain port got every message, each device's sequence complete.
fn delivers_everything(
    url: &str,
    plain: u16,
    connection: &str,
    extra_sink: &str,
    dir: &std::path::Path,
) {
    let root = unique("iotsim-ws");
    let sub = Subscriber::start(plain, &format!("{root}/#"));
    let devices = 6;
    let r = run_ok(dir, &fleet(url, &root, connection, extra_sink, devices), &["--cores", "2"]);
    let row = &r["runs"][0];
    let want = devices as usize * 20;
    assert_eq!(row["messages"], want, "{r}");
    assert_eq!(row["errors"], 0, "{r}");
    let ev = &r["sink_events"];
    assert!(ev.get("mqtt.connect_error").is_none(), "{ev}");
    assert!(ev.get("mqtt.session_connect_error").is_none(), "{ev}");
    let got = sub.wait_for(want);
    assert_eq!(got.len(), want, "the subscriber counts what the report says was sent");
    let mut seqs = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for (_, payload) in &got {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        seqs.entry(v["device_id"].as_str().unwrap().to_string())
            .or_default()
            .push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), devices as usize);
    for (id, mut s) in seqs {
        s.sort_unstable();
        assert_eq!(s, (0..20).collect::<Vec<u64>>(), "{id}: messages lost or duplicated");
    }
}

#[test]
fn pooled_connections_over_ws_deliver_every_message() {
    let dir = readable_dir();
    let (plain, ws, broker) = ws_broker(dir.path(), "");
    delivers_everything(&format!("ws://127.0.0.1:{ws}/mqtt"), plain, "pooled", "", dir.path());
    // The pooled connections came in over the websockets listener.
    assert!(broker.log().contains("iot-sim"), "{}", broker.log());
}

#[test]
fn per_device_sessions_over_ws_deliver_every_message() {
    let dir = readable_dir();
    let (plain, ws, broker) = ws_broker(dir.path(), "");
    // No path: the default `/mqtt`.
    delivers_everything(&format!("ws://127.0.0.1:{ws}"), plain, "per_device", "", dir.path());
    assert!(broker.log().contains("probe-0005"), "{}", broker.log());
}

#[test]
fn pooled_and_per_device_over_wss_with_a_private_ca_deliver_every_message() {
    let dir = readable_dir();
    let d = dir.path();
    common::tls::make_certs(d);
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let tls = format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
        d.display()
    );
    let (plain, ws, _broker) = ws_broker(d, &tls);
    let url = format!("wss://127.0.0.1:{ws}/mqtt");
    let ca = format!("ca_file = \"{}/ca.pem\"", d.display());
    delivers_everything(&url, plain, "pooled", &ca, d);
    delivers_everything(&url, plain, "per_device", &ca, d);
}

/// A tiny HTTP server that refuses every upgrade: it answers each request with `status` (a
/// full status line such as "401 Unauthorized"), or with "101" carrying a correct
/// `Sec-WebSocket-Accept` but no `mqtt` subprotocol, and closes the connection.
fn refusing_http(status: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let response = if status == "101" {
                let key = request
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key:"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let digest = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
                );
                let accept = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    digest.as_ref(),
                );
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: \
                     Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
            } else {
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n")
            };
            let _ = s.write_all(response.as_bytes());
        }
    });
    port
}

#[test]
fn a_refused_handshake_is_counted_by_reason_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    for (status, connection, event, reason) in [
        ("401 Unauthorized", "pooled", "mqtt.connect_error", "mqtt.ws_refused_unauthorized"),
        ("403 Forbidden", "per_device", "mqtt.session_connect_error", "mqtt.ws_refused_forbidden"),
        ("404 Not Found", "pooled", "mqtt.connect_error", "mqtt.ws_refused_not_found"),
        ("101", "per_device", "mqtt.session_connect_error", "mqtt.ws_refused_subprotocol"),
    ] {
        let port = refusing_http(status);
        let toml = fleet(&format!("ws://127.0.0.1:{port}/mqtt"), "x", connection, "", 2);
        let out = run(dir.path(), &toml, &["--cores", "1"]);
        let e = stderr(&out);
        assert!(!e.contains("panicked"), "{e}");
        let r = report(dir.path());
        let ev = &r["sink_events"];
        let attempts = ev[event].as_u64().unwrap_or(0);
        assert!(attempts > 0, "{status} {connection}: {r}");
        // Every attempt was this refusal, and no other reason was counted.
        assert_eq!(ev[reason].as_u64(), Some(attempts), "{status} {connection}: {ev}");
        let reasons = ev.as_object().unwrap().keys().filter(|k| k.contains("ws_refused")).count();
        assert_eq!(reasons, 1, "{status}: {ev}");
        let row = &r["runs"][0];
        assert_eq!(row["messages"], 0, "nothing was sent: {r}");
        assert!(row["published"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(row["errors"], row["published"], "every message counted: {r}");
    }
}

#[test]
fn unknown_url_schemes_are_config_errors_naming_ws_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &fleet("http://127.0.0.1:80/mqtt", "x", "pooled", "", 1), &[]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("sink.mqtt.url: scheme \"http\" is not supported here"), "{e}");
    assert!(e.contains("wss"), "{e}");
    // TLS files belong to mqtts:// and wss:// only.
    let out = run(
        dir.path(),
        &fleet("ws://127.0.0.1:80/mqtt", "x", "pooled", "ca_file = \"/etc/hostname\"", 1),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not mqtts:// or wss://"), "{}", stderr(&out));
}
