//! The CoAP Content-Format of every payload format (issue 22), as libcoap decodes it: libcoap's
//! own `coap-server` (Debian `libcoap3-bin`, installed by `scripts/services.sh`) logs every PDU
//! it receives at `-v 8`, options decoded by libcoap (`Content-Format:application/cbor`); the
//! test reads that log, not our encoder's view.

use crate::common::{report, sigterm, stderr};
use coap_lite::{MessageType, Packet};
use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

fn coap_server_bin() -> String {
    for name in ["coap-server", "coap-server-notls", "coap-server-openssl", "coap-server-gnutls"] {
        if Command::new(name).arg("-?").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
        {
            return name.to_string();
        }
    }
    panic!("coap-server not found: install libcoap3-bin (scripts/services.sh)");
}

/// Sends a CON GET until the server answers (it needs a moment to bind).
fn wait_until_up(port: u16) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = coap_lite::MessageClass::Request(coap_lite::RequestType::Get);
    p.header.message_id = 1;
    let bytes = p.to_bytes().unwrap();
    let mut buf = [0u8; 1500];
    for _ in 0..100 {
        sock.send_to(&bytes, ("127.0.0.1", port)).unwrap();
        if sock.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("coap-server did not answer on 127.0.0.1:{port}");
}

/// (profile keys, the content format libcoap names) per profile.
const FORMATS: &[(&str, &str, &str)] = &[
    ("envelope", "", "application/json"),
    ("flat", "", "application/json"),
    ("cbor", "", "application/cbor"),
    ("senml", "", "application/senml+json"),
    ("senml_cbor", "", "application/senml+cbor"),
    (
        "template",
        "template = '{{ device_id }},{{ fields.p }}'\ncontent_type = \"text/plain\"",
        "text/plain",
    ),
];

#[test]
fn libcoaps_server_decodes_the_content_format_of_every_payload_format() {
    let dir = tempfile::tempdir().unwrap();
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(dir.path().join("coap-server.log")).unwrap();
    let mut server = Command::new(coap_server_bin())
        .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "100000", "-v", "8"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until_up(port);
    let mut toml = format!(
        r#"
[run]
seed = 3
clock = "virtual"
start_time = "2026-03-14T08:00:00Z"
duration = "5s"
report_dir = "{}"

[sink.coap]
url = "coap://127.0.0.1:{port}"
"#,
        dir.path().join("report").display()
    );
    for (format, extra, _) in FORMATS {
        toml.push_str(&format!(
            r#"
[[fleet]]
profile = "{format}"
count = 2

[profiles.{format}]
protocol = "coap"
interval = "1s"
topic = "fmt/{format}/{{device_id}}"
format = "{format}"
{extra}

[profiles.{format}.fields.p]
type = "gaussian"
mean = 100
stddev = 5
"#
        ));
    }
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = crate::common::bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let r = report(dir.path());
    assert_eq!(r["errors"], 0, "{r}");
    let sent = r["messages"].as_u64().unwrap();
    // coap-server writes its log at exit (SIGTERM ends it cleanly).
    sigterm(&server);
    server.wait().unwrap();
    let text = std::fs::read_to_string(dir.path().join("coap-server.log")).unwrap();
    // `v:1 t:CON c:POST i:29dc {..} [ Uri-Path:fmt, Uri-Path:cbor, Uri-Path:DEVICE, ...,
    // Content-Format:application/cbor ] :: ...`, once per datagram (a retransmission is the
    // same message id again).
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut devices: BTreeSet<String> = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("v:1 t:CON c:POST")) {
        let mid = line.split_whitespace().nth(3).unwrap().to_string();
        let opts = &line[line.find('[').unwrap() + 1..line.find(']').unwrap()];
        let mut path = vec![];
        let mut cf = None;
        for o in opts.split(", ").map(str::trim) {
            if let Some(p) = o.strip_prefix("Uri-Path:") {
                path.push(p.to_string());
            } else if let Some(c) = o.strip_prefix("Content-Format:") {
                cf = Some(c.to_string());
            }
        }
        assert_eq!(path.len(), 3, "{line}");
        devices.insert(path[2].clone());
        let cf = cf.unwrap_or_else(|| panic!("no Content-Format: {line}"));
        seen.insert((mid, path.join("/")), format!("{}={cf}", path[1]));
    }
    assert_eq!(seen.len() as u64, sent, "every message reached the server once:\n{text}");
    assert_eq!(devices.len(), FORMATS.len() * 2);
    for got in seen.values() {
        let (format, cf) = got.split_once('=').unwrap();
        let want = FORMATS.iter().find(|f| f.0 == format).unwrap().2;
        assert_eq!(cf, want, "{format}");
    }
    let formats: BTreeSet<&str> = seen.values().map(|v| v.split('=').next().unwrap()).collect();
    assert_eq!(formats.len(), FORMATS.len());
}
