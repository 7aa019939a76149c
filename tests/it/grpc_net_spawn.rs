//! Devices spawned over gRPC onto a network sink that the run's fleet already opened: the sink
//! records them under their new profile (no out-of-range profile index in its statistics), and
//! the end-of-run report has their row.

use crate::common::Running;
use crate::grpc_common;

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
    let mut rt = Running::with_config("run", &cfg, Some(&report), &["--cores", "1"]);
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

/// 500 x "spawn one device with its own profile, stop it": every shard frees each profile once
/// its device stopped and its messages settled (`runtime_profiles` goes back to 0), and the
/// end-of-run report still counts what those devices sent and how many there were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_of_stopped_devices_are_freed_and_their_messages_stay_in_the_report() {
    let (port, requests) = http_ok();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nseed = 5\nclock = \"realtime\"\nspeed = 20.0\n\n\
             [sink.http]\nendpoint = \"http://127.0.0.1:{port}/ingest\"\n"
        ),
    )
    .unwrap();
    let report = dir.path().join("report");
    let mut rt = Running::with_config("serve", &cfg, Some(&report), &["--cores", "2"]);
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    let status = |c: &mut DeviceRuntimeServiceClient<_>| {
        let mut c = c.clone();
        async move { c.get_runtime_status(()).await.unwrap().into_inner() }
    };
    let profiles_back_to_zero = |c: DeviceRuntimeServiceClient<tonic::transport::Channel>| async {
        let mut c = c;
        let mut held = 0;
        for _ in 0..400 {
            held = c.get_runtime_status(()).await.unwrap().into_inner().runtime_profiles;
            if held == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("{held} runtime profiles still held");
    };
    assert_eq!(status(&mut c).await.runtime_profiles, 0);
    const CYCLES: usize = 500;
    for i in 0..CYCLES {
        // Its own behaviour (a distinct mean), so its own compiled profile.
        let mut s = spec(&format!("d-{i}"), "once", &[], 100, "http");
        s.behavior_params = Some(obj(vec![(
            "fields",
            objv(vec![(
                "power",
                objv(vec![
                    ("type", text("gaussian")),
                    ("mean", num(i as f64)),
                    ("stddev", num(1.0)),
                ]),
            )]),
        )]));
        let r = c
            .spawn_devices(proto::SpawnDevicesRequest {
                specs: vec![s],
                scenario_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.spawned, 1, "{r:?}");
        if i == 0 {
            assert_eq!(status(&mut c).await.runtime_profiles, 1, "the spawn's shard holds it");
        }
        let stop = proto::StopDevicesRequest {
            selector: Some(proto::DeviceSelector {
                selector: Some(proto::device_selector::Selector::DeviceIds(proto::DeviceIdList {
                    ids: vec![format!("d-{i}")],
                })),
            }),
            graceful: true,
        };
        assert_eq!(c.stop_devices(stop).await.unwrap().into_inner().stopped, 1);
    }
    profiles_back_to_zero(c.clone()).await;
    let base = status(&mut c).await.messages_sent_total;
    // One device that certainly publishes before it stops (a message every 5 ms of wall time).
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest {
            specs: vec![spec("keep", "kept", &[], 100, "http")],
            scenario_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 1);
    let mut sent = 0;
    for _ in 0..600 {
        sent = status(&mut c).await.messages_sent_total;
        if sent >= base + 40 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        sent >= base + 40,
        "messages_sent_total stayed at {sent}\n{}",
        rt.stderr.lock().unwrap()
    );
    let stop = proto::StopDevicesRequest { selector: None, graceful: true };
    assert_eq!(c.stop_devices(stop).await.unwrap().into_inner().stopped, 1);
    profiles_back_to_zero(c.clone()).await;
    // Freed profiles' counts stay in the runtime's (monotone) totals.
    let before = status(&mut c).await;
    assert!(before.messages_sent_total >= sent, "{before:?}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let after = status(&mut c).await;
    assert_eq!(after.messages_sent_total, before.messages_sent_total);
    let exit = rt.terminate();
    assert!(exit.success(), "{exit:?}\n{}", rt.stderr.lock().unwrap());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
    let rows = report["runs"].as_array().unwrap();
    let row = |t: &str| {
        rows.iter()
            .find(|r| r["device_type"] == t)
            .unwrap_or_else(|| panic!("no row for {t}: {report}"))
            .clone()
    };
    let (once, kept) = (row("once"), row("kept"));
    assert_eq!(rows.len(), 2, "one row per sink and device type: {report}");
    assert_eq!(once["devices"], CYCLES as u64, "{once}");
    assert_eq!(kept["devices"], 1, "{kept}");
    assert_eq!(kept["sink"], "http");
    assert!(kept["messages"].as_u64().unwrap() >= 40, "{kept}");
    assert_eq!(once["messages"].as_u64().unwrap() as i64, base, "{once}");
    let total = once["messages"].as_u64().unwrap() + kept["messages"].as_u64().unwrap();
    assert_eq!(report["messages"].as_u64().unwrap(), total, "{report}");
    assert_eq!(total as i64, after.messages_sent_total, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(total <= requests.load(std::sync::atomic::Ordering::Relaxed), "{report}");
    // The report's latency histogram of a freed profile's row is the one it recorded.
    assert_eq!(kept["latency_us"]["count"].as_u64().unwrap(), kept["messages"].as_u64().unwrap());
}

/// A pooled MQTT device spawned into a run whose fleet has only per-device sessions (so its
/// MQTT sink opened without pooled connections): the pooled connections start with it and its
/// messages arrive; the per-device device runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_mqtt_device_spawned_beside_per_device_sessions_is_delivered() {
    use crate::common::mqtt::Subscriber;
    let dir = tempfile::tempdir().unwrap();
    let root = crate::common::unique("pool-later");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[run]
seed = 5
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "5m"

[sink.mqtt]
url = "mqtt://127.0.0.1:1883"
qos = 1
client_id_prefix = "{root}"

[sink.mqtt.per_device]
client_id = "{root}-{{device_id}}"

[[fleet]]
profile = "session"
count = 1

[profiles.session]
protocol = "mqtt"
connection = "per_device"
topic = "{root}/{{device_id}}"
interval = "200ms"
fields.t = {{ type = "gaussian", mean = 20, stddev = 1 }}
"#
        ),
    )
    .unwrap();
    let sub = Subscriber::start(1883, &format!("{root}/#"));
    let mut rt = Running::with_config("run", &cfg, None, &["--cores", "2"]);
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    let mut s = spec("pooled-1", "meter", &[], 200, "mqtt");
    s.topic_template = format!("{root}/{{device_id}}");
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs: vec![s], scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 1, "{r:?}");
    let pooled =
        |sub: &Subscriber| sub.topics().iter().filter(|t| t.ends_with("/pooled-1")).count();
    wait_until(30, "10 messages of the spawned pooled device", || pooled(&sub) >= 10).await;
    let sessions_before = sub.topics().iter().filter(|t| t.ends_with("/session-0000")).count();
    wait_until(30, "the per-device session publishing on", || {
        sub.topics().iter().filter(|t| t.ends_with("/session-0000")).count() > sessions_before
    })
    .await;
    assert!(rt.terminate().success());
}
