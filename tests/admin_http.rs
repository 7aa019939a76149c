//! The admin HTTP server of a running fleet: health, Prometheus metrics, JSON status.

mod common;

use common::{output_within, sigterm};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn healthz_metrics_and_status_describe_the_running_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        "[run]\nseed = 1\nclock = \"realtime\"\n\n[[fleet]]\nprofile = \"p\"\ncount = 40\n\n[profiles.p]\nprotocol = \"null\"\ninterval = \"50ms\"\n[profiles.p.fields.x]\ntype = \"gaussian\"\nmean = 0\nstddev = 1\n",
    )
    .unwrap();
    let rd = dir.path().join("report");
    let mut child = Command::new(env!("CARGO_BIN_EXE_iot-sim"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--cores",
            "2",
            "--admin",
            "127.0.0.1:0",
            "--quiet",
        ])
        .args(["--report-dir", rd.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the admin address is printed").unwrap();
        if let Some(a) = line.strip_prefix("admin: listening on http://") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    // Poll until the shards have published figures (they do so every wheel turn).
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        let (code, body) = get(&addr, "/status");
        assert_eq!(code, "HTTP/1.1 200 OK");
        status = serde_json::from_str(&body).unwrap();
        if status["messages_total"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status["devices_total"], 40, "{status}");
    assert!(status["messages_total"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(get(&addr, "/healthz"), ("HTTP/1.1 200 OK".to_string(), "ok\n".to_string()));
    let (code, metrics) = get(&addr, "/metrics");
    assert_eq!(code, "HTTP/1.1 200 OK");
    assert!(metrics.contains("# TYPE iot_sim_messages_total counter"), "{metrics}");
    let devices: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("iot_sim_devices{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(devices, 40);
    assert_eq!(get(&addr, "/nope").0, "HTTP/1.1 404 Not Found");
    // SIGTERM ends the run normally, with a report.
    sigterm(&child);
    assert!(output_within(child, 60).status.success());
    assert!(rd.join("report.json").exists());
}
