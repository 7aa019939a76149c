//! Devices spawned over gRPC onto a network sink that the run's fleet already opened: the sink
//! records them under their new profile (no out-of-range profile index in its statistics), and
//! the end-of-run report has their row.

mod grpc_common;

use grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

/// An HTTP/1.1 server answering 200 to every request (keep-alive), counting requests.
fn http_ok() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let n = n.clone();
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                loop {
                    let (mut line, mut len) = (String::new(), 0usize);
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if w.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_devices_on_an_open_network_sink_are_counted_and_reported() {
    let (port, requests) = http_ok();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[run]
seed = 5
clock = "realtime"
speed = 10.0

[sink.http]
endpoint = "http://127.0.0.1:{port}/ingest"

[[fleet]]
profile = "meter"
count = 2

[profiles.meter]
protocol = "http"
interval = "1s"
[profiles.meter.fields.power]
type = "gaussian"
mean = 100.0
stddev = 5.0
"#
        ),
    )
    .unwrap();
    let report = dir.path().join("report");
    let mut rt = Runtime::with_config("run", &cfg, Some(&report), &["--cores", "1"]);
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    let specs = (0..3).map(|i| spec(&format!("late-{i}"), "late", &[], 1000, "http")).collect();
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 3, "{r:?}");
    // 5 devices at 10 messages per wall second: wait for 60 messages in the runtime's count.
    let mut sent = 0;
    for _ in 0..600 {
        sent = c.get_runtime_status(()).await.unwrap().into_inner().messages_sent_total;
        if sent >= 60 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(sent >= 60, "messages_sent_total stayed at {sent}\n{}", rt.stderr.lock().unwrap());
    let exit = rt.terminate();
    assert!(exit.success(), "{exit:?}\n{}", rt.stderr.lock().unwrap());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let row = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["device_type"] == "late")
        .unwrap_or_else(|| panic!("no row for the spawned devices: {report}"))
        .clone();
    assert_eq!(row["sink"], "http", "{row}");
    assert_eq!(row["devices"], 3, "{row}");
    assert!(row["messages"].as_u64().unwrap() > 0, "{row}");
    assert_eq!(row["errors"], 0, "{row}");
    assert_eq!(report["devices"], 5, "{report}");
    let total = report["messages"].as_u64().unwrap();
    assert!(total <= requests.load(std::sync::atomic::Ordering::Relaxed), "{report}");
}
