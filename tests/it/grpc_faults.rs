//! Faults driven over gRPC against the real binary (`iot-sim run --grpc`): each fault type's
//! effect in the published payloads (file sink) and in the telemetry stream, its revert after
//! the duration, DATA_CORRUPTION replaying identically under the same seed, and devices
//! spawned at runtime showing up in the end-of-run report.
//!
//! Nothing here asserts on speed: the runs are realtime (at 5x), the test waits for conditions
//! (with generous limits) and checks what was published against the fault's start time, which
//! the FAULT_INJECTED event carries.

use crate::common::Running;
use crate::common::fleet::{Fleet, raw};
use crate::grpc_common;

use grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use proto::telemetry_point::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

type Client = DeviceRuntimeServiceClient<tonic::transport::Channel>;

/// Sim ms between two messages of a probe device.
const INTERVAL: u64 = 200;
/// Fault duration, sim ms.
const DURATION: u64 = 6000;
/// LATENCY_SPIKE delay, sim ms.
const SPIKE: u64 = 2000;
/// BATTERY_DRAIN multiplier: 36000 points per sim hour = 0.01 per sim ms.
const DRAIN: f64 = 36_000.0;
/// CLOCK_DRIFT rate, ms per sim second.
const DRIFT: f64 = 100.0;
/// Fleet groups, 2 devices each, in fleet order: probe-0000/1 are "none", and so on.
const GROUPS: [&str; 8] =
    ["none", "disconnect", "latency", "nan", "spike", "bytes", "battery", "drift"];

fn config(dir: &Path, groups: &[&str], per_group: usize) -> std::path::PathBuf {
    let mut fleet = Fleet::new()
        .table("run")
        .set("seed", 11)
        .set("clock", "realtime")
        .set("speed", 5.0)
        .set("start_time", "2026-03-14T00:00:00Z")
        .sink("file")
        .set("path", dir.join("telemetry.jsonl"))
        .profile("probe", "file", &format!("{INTERVAL}ms"))
        .gaussian("probe", "temperature", 20.0, 1.0)
        .set("decimals", 2)
        .gaussian("probe", "battery", 80.0, 0.0);
    for g in groups {
        let labels = raw(format!("{{ fault = \"{g}\" }}"));
        fleet = fleet.devices("probe", per_group).set("labels", labels);
    }
    fleet.write(dir.join("fleet.toml"))
}

/// What the streams delivered, in order.
#[derive(Default)]
struct Seen {
    points: Vec<proto::TelemetryPoint>,
    events: Vec<proto::DeviceEvent>,
    dropped_points: i64,
}

impl Seen {
    /// `battery` points of `id` (one per published probe message), in stream order.
    fn battery(&self, id: &str) -> Vec<&proto::TelemetryPoint> {
        self.points.iter().filter(|p| p.device_id == id && p.metric_name == "battery").collect()
    }

    fn events_of(&self, kind: proto::DeviceEventType, id: &str) -> Vec<&proto::DeviceEvent> {
        self.events.iter().filter(|e| e.event_type == kind as i32 && e.device_id == id).collect()
    }

    /// Sim time at which the fault of `id` began.
    fn started(&self, id: &str) -> Option<u64> {
        self.events_of(proto::DeviceEventType::FaultInjected, id).first().map(|e| ms(&e.timestamp))
    }
}

/// Opens an event stream and a telemetry stream of every device, collected into `Seen`.
async fn watch(c: &mut Client) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut events =
        c.stream_events(proto::StreamEventsRequest { selector: None }).await.unwrap().into_inner();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(e)) = events.message().await {
            s.lock().unwrap().events.push(e);
        }
    });
    let mut points = c
        .stream_telemetry(proto::StreamTelemetryRequest {
            selector: None,
            batch_size: 64,
            flush_interval: Some(prost_types::Duration { seconds: 0, nanos: 50_000_000 }),
        })
        .await
        .unwrap()
        .into_inner();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(b)) = points.message().await {
            let mut s = s.lock().unwrap();
            s.points.extend(b.points);
            s.dropped_points = s.dropped_points.max(b.dropped_points);
        }
    });
    seen
}

fn probe_id(i: usize) -> String {
    format!("probe-{i:04}")
}

/// One line of the file sink.
struct Line {
    id: String,
    raw: Vec<u8>,
    json: Option<serde_json::Value>,
}

impl Line {
    fn ts(&self) -> Option<u64> {
        let t = self.json.as_ref()?["payload"]["timestamp"].as_str()?;
        Some(iot_sim::sim::time::parse_rfc3339(t).unwrap())
    }
    fn field(&self, name: &str) -> &serde_json::Value {
        &self.json.as_ref().expect("valid JSON")["payload"]["fields"][name]
    }
    fn nuls(&self) -> usize {
        self.raw.iter().filter(|&&b| b == 0).count()
    }
}

/// The file sink's lines in publish order.
fn read_lines(path: &Path) -> Vec<Line> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|raw| {
            let s = String::from_utf8_lossy(raw);
            let id = s
                .strip_prefix("{\"topic\":\"devices/")
                .and_then(|r| r.split_once("/telemetry\""))
                .map(|(id, _)| id.to_string())
                .unwrap_or_else(|| panic!("unexpected line {s}"));
            Line { id, raw: raw.to_vec(), json: serde_json::from_slice(raw).ok() }
        })
        .collect()
}

fn fault(group: &str) -> proto::InjectFaultRequest {
    use proto::FaultType as F;
    let (t, params) = match group {
        "disconnect" => (F::Disconnect, vec![]),
        "latency" => (F::LatencySpike, vec![("latency_ms", num(SPIKE as f64))]),
        "nan" | "spike" | "bytes" => {
            (F::DataCorruption, vec![("corruption_rate", num(1.0)), ("mode", text(group))])
        }
        "battery" => (F::BatteryDrain, vec![("drain_multiplier", num(DRAIN))]),
        "drift" => (F::ClockDrift, vec![("drift_rate_ms_per_sec", num(DRIFT))]),
        g => panic!("no fault for {g}"),
    };
    proto::InjectFaultRequest {
        selector: labels(&format!("fault={group}")),
        fault_type: t as i32,
        duration: Some(prost_types::Duration { seconds: (DURATION / 1000) as i64, nanos: 0 }),
        parameters: Some(obj(params)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_shows_in_payloads_and_stream_then_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &GROUPS, 2);
    let report_dir = dir.path().join("report");
    let mut rt = Running::with_config("run", &cfg, Some(&report_dir), &["--cores", "1"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    let seen = watch(&mut c).await;
    let probes: Vec<String> = (0..GROUPS.len() * 2).map(probe_id).collect();
    let group_of = |id: &str| GROUPS[id["probe-".len()..].parse::<usize>().unwrap() / 2];

    // Three devices spawned at runtime, on the file sink: they must reach the report.
    let specs = (0..3)
        .map(|i| spec(&format!("spawned-{i}"), "spawned", &[("fault", "spawned")], 200, "file"));
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest {
            specs: specs.collect(),
            scenario_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 3, "{r:?}");

    // A few clean messages first, then every fault at once, each on its own group.
    wait_until(60, "5 messages of every probe", || {
        let s = seen.lock().unwrap();
        probes.iter().all(|id| s.battery(id).len() >= 5)
    })
    .await;
    for g in &GROUPS[1..] {
        c.inject_fault(fault(g)).await.unwrap_or_else(|e| panic!("inject {g}: {e}"));
    }
    // Wait for every fault to end and for 5 messages of every device after its end (+ SPIKE,
    // for the delayed publishes to catch up).
    wait_until(120, "faults to end and 5 messages after", || {
        let s = seen.lock().unwrap();
        probes.iter().filter(|id| group_of(id) != "none").all(|id| {
            let Some(start) = s.started(id) else { return false };
            !s.events_of(proto::DeviceEventType::FaultCleared, id).is_empty()
                && s.battery(id)
                    .iter()
                    .filter(|p| ms(&p.timestamp) >= start + DURATION + SPIKE)
                    .count()
                    >= 5
        })
    })
    .await;
    let streamed_spawned =
        seen.lock().unwrap().points.iter().filter(|p| p.device_id.starts_with("spawned-")).count();
    // The runtime's total has caught up with what was streamed (at most 30 s).
    let t0 = std::time::Instant::now();
    let status = loop {
        let s = c.get_runtime_status(()).await.unwrap().into_inner();
        if s.messages_sent_total as usize >= streamed_spawned || t0.elapsed().as_secs() > 30 {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // DISCONNECT: 2 devices, ~30 messages each suppressed.
    let per_device = (DURATION / INTERVAL - 2) as i64;
    assert!(status.messages_suppressed_total >= 2 * per_device, "{status:?}");
    assert!(status.active_devices == 19, "{status:?}");
    assert!(status.messages_sent_total as usize >= streamed_spawned, "{status:?}");
    let exit = rt.terminate();
    assert!(exit.success(), "{exit:?}\n{}", rt.stderr.lock().unwrap());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.dropped_points, 0, "the test reads its stream fast enough");

    let lines = read_lines(&dir.path().join("telemetry.jsonl"));
    let mut by_id: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for l in &lines {
        by_id.entry(&l.id).or_default().push(l);
    }
    // Publish order of the file (one shard): the largest unmodified timestamp written before
    // each line, from the groups whose timestamps are not moved or damaged.
    let mut max_before = vec![0u64; lines.len()];
    let mut m = 0;
    for (i, l) in lines.iter().enumerate() {
        max_before[i] = m;
        if l.id.starts_with("probe-")
            && ["none", "nan", "spike", "battery"].contains(&group_of(&l.id))
        {
            m = m.max(l.ts().unwrap());
        }
    }
    let index_of: HashMap<*const Line, usize> =
        lines.iter().enumerate().map(|(i, l)| (l as *const Line, i)).collect();

    for id in &probes {
        let group = group_of(id);
        let own = &by_id[id.as_str()];
        let first = own[0].ts().expect("the first message is clean");
        let (start, end) = match seen.started(id) {
            Some(s) => (s, s + DURATION),
            None => {
                assert_eq!(group, "none", "{id}: no FAULT_INJECTED event");
                (u64::MAX, u64::MAX)
            }
        };
        let in_window = |due: u64| due >= start && due < end;
        let points = seen.battery(id);
        let (mut inside, mut after) = (0, 0);
        if group == "disconnect" {
            for l in own {
                let t = l.ts().unwrap();
                assert!(!in_window(t), "{id}: published at {t} while disconnected from {start}");
                after += (t >= end) as usize;
            }
            for p in &points {
                assert!(!in_window(ms(&p.timestamp)), "{id}: streamed while disconnected: {p:?}");
            }
            assert!(after >= 5, "{id}: publishing resumed after the fault");
            continue;
        }
        // Every other group publishes every message: the k-th line is the one due at
        // first + k * INTERVAL.
        for (k, l) in own.iter().enumerate() {
            let due = first + k as u64 * INTERVAL;
            let hit = in_window(due);
            inside += hit as usize;
            after += (due >= end) as usize;
            let ctx = || {
                format!(
                    "{id} ({group}) line {k} due {due}, fault {start}..{end}: {}",
                    String::from_utf8_lossy(&l.raw)
                )
            };
            if group == "bytes" {
                assert_eq!(
                    l.nuls(),
                    if hit { iot_sim::sim::fault::CORRUPT_BYTES } else { 0 },
                    "{}",
                    ctx()
                );
                continue;
            }
            let published_ts = l.ts().unwrap_or_else(|| panic!("{}", ctx()));
            let battery = l.field("battery");
            match (group, hit) {
                ("drift", true) => {
                    let off = (DRIFT * (due - start) as f64 / 1000.0).trunc() as u64;
                    assert_eq!(published_ts, due + off, "{}", ctx());
                }
                _ => assert_eq!(published_ts, due, "{}", ctx()),
            }
            match (group, hit) {
                ("nan", true) => {
                    assert!(battery.is_null() && l.field("temperature").is_null(), "{}", ctx())
                }
                ("spike", true) => assert_eq!(battery.as_f64(), Some(800.0), "{}", ctx()),
                ("battery", true) => {
                    let want = 80.0 - DRAIN * (due - start) as f64 / 3_600_000.0;
                    let got = battery.as_f64().unwrap();
                    assert!((got - want).abs() < 1e-6, "{} (want {want})", ctx());
                }
                _ => assert_eq!(battery.as_f64(), Some(80.0), "{}", ctx()),
            }
            if group == "latency" {
                let before = max_before[index_of[&(*l as *const Line)]];
                if hit {
                    assert!(
                        before + INTERVAL >= due + SPIKE,
                        "{}: published after {before}",
                        ctx()
                    );
                } else if due < start || due >= end + SPIKE {
                    assert!(before < due + SPIKE / 2, "{}: published after {before}", ctx());
                }
            }
        }
        if group != "none" {
            assert!(inside >= 10, "{id}: only {inside} messages inside the fault");
            assert!(after >= 5, "{id}: only {after} messages after the fault");
        }

        // The stream shows the same (bytes corruption damages only the encoded payload).
        let mut max_seen = 0u64;
        let ref_ids: Vec<&str> = ["none", "nan", "spike", "battery"]
            .iter()
            .flat_map(|g| {
                let i = GROUPS.iter().position(|x| x == g).unwrap();
                [i * 2, i * 2 + 1]
            })
            .map(|i| probes[i].as_str())
            .collect();
        // The stream began after the run did: it starts at a clean message of the file.
        let stream_first = points.first().map(|p| ms(&p.timestamp)).unwrap();
        assert!(stream_first >= first && (stream_first - first).is_multiple_of(INTERVAL));
        let mut k = ((stream_first - first) / INTERVAL) as usize;
        for p in seen.points.iter().filter(|p| p.metric_name == "battery") {
            if p.device_id != *id {
                if ref_ids.contains(&p.device_id.as_str()) {
                    max_seen = max_seen.max(ms(&p.timestamp));
                }
                continue;
            }
            let due = first + k as u64 * INTERVAL;
            k += 1;
            let hit = in_window(due);
            let t = ms(&p.timestamp);
            let v = match p.value {
                Some(Value::DoubleValue(v)) => v,
                ref other => panic!("{id}: {other:?}"),
            };
            let ctx = format!("{id} ({group}) point due {due}, fault {start}..{end}: {p:?}");
            match (group, hit) {
                ("drift", true) => {
                    assert_eq!(
                        t,
                        due + (DRIFT * (due - start) as f64 / 1000.0).trunc() as u64,
                        "{ctx}"
                    )
                }
                _ => assert_eq!(t, due, "{ctx}"),
            }
            match (group, hit) {
                ("nan", true) => assert!(v.is_nan(), "{ctx}"),
                ("spike", true) => assert_eq!(v, 800.0, "{ctx}"),
                ("battery", true) => {
                    assert!(
                        (v - (80.0 - DRAIN * (due - start) as f64 / 3_600_000.0)).abs() < 1e-6,
                        "{ctx}"
                    )
                }
                _ => assert_eq!(v, 80.0, "{ctx}"),
            }
            if group == "latency" && hit {
                assert!(max_seen + INTERVAL >= due + SPIKE, "{ctx}: streamed after {max_seen}");
            }
        }
        // Every published message was streamed, except the last few (published while the
        // runtime was shutting down).
        assert!(k <= own.len() && k + 3 >= own.len(), "{id}: streamed {k} of {}", own.len());
    }

    // Devices spawned at runtime are in the file and in the report.
    for i in 0..3 {
        assert!(by_id.get(format!("spawned-{i}").as_str()).is_some_and(|v| !v.is_empty()));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["devices"], 19, "{report}");
    let row = |t: &str| {
        report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["device_type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} row in {report}"))
    };
    let spawned = row("spawned");
    assert_eq!(spawned["devices"], 3, "{spawned}");
    let spawned_lines = lines.iter().filter(|l| l.id.starts_with("spawned-")).count() as u64;
    assert_eq!(spawned["messages"].as_u64(), Some(spawned_lines), "{spawned}");
    assert_eq!(report["messages"].as_u64(), Some(lines.len() as u64), "{report}");
    // The spike shows in measured latency: 2000 sim ms at 5x = 400 ms of wall time.
    let probe = row("probe");
    let max_us = probe["latency_us"]["max"].as_u64().unwrap();
    assert!(max_us >= SPIKE * 1000 / 5, "{probe}");
}

/// One run of the determinism test: 4 devices under DATA_CORRUPTION (bytes, rate 0.5, until
/// cleared). Returns each device's lines and the fault's start.
async fn corruption_run(dir: &Path) -> (BTreeMap<String, Vec<Vec<u8>>>, HashMap<String, u64>) {
    let cfg = config(dir, &["bytes"], 4);
    let mut rt = Running::grpc(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--cores",
        "2",
        "--grpc",
        "127.0.0.1:0",
        "--quiet",
        "--report-dir",
        dir.join("report").to_str().unwrap(),
    ]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    let seen = watch(&mut c).await;
    let ids: Vec<String> = (0..4).map(probe_id).collect();
    wait_until(60, "3 messages of every device", || {
        let s = seen.lock().unwrap();
        ids.iter().all(|id| s.battery(id).len() >= 3)
    })
    .await;
    let mut req = fault("bytes");
    req.parameters = Some(obj(vec![("corruption_rate", num(0.5)), ("mode", text("bytes"))]));
    req.duration = None;
    req.selector = labels("fault");
    c.inject_fault(req).await.unwrap();
    wait_until(120, "25 messages of every device under the fault", || {
        let s = seen.lock().unwrap();
        ids.iter().all(|id| {
            s.started(id).is_some_and(|t0| {
                s.battery(id).iter().filter(|p| ms(&p.timestamp) >= t0).count() >= 25
            })
        })
    })
    .await;
    let exit = rt.terminate();
    assert!(exit.success(), "{exit:?}");
    let mut lines: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for shard in 0..2 {
        for l in read_lines(&dir.join(format!("telemetry.shard-{shard}.jsonl"))) {
            lines.entry(l.id).or_default().push(l.raw);
        }
    }
    let s = seen.lock().unwrap();
    let started = ids.iter().map(|id| (id.clone(), s.started(id).unwrap())).collect();
    (lines, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_corruption_replays_the_same_bytes_under_the_same_seed() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (lines_a, start_a) = corruption_run(a.path()).await;
    let (lines_b, start_b) = corruption_run(b.path()).await;
    assert_eq!(lines_a.len(), 4);
    let (mut compared, mut corrupted) = (0, 0);
    for (id, la) in &lines_a {
        let lb = &lines_b[id];
        let first: serde_json::Value = serde_json::from_slice(&la[0]).unwrap();
        let first =
            iot_sim::sim::time::parse_rfc3339(first["payload"]["timestamp"].as_str().unwrap())
                .unwrap();
        // First line whose due time is at or after the fault's start, in each run.
        let k_of = |t0: u64| t0.saturating_sub(first).div_ceil(INTERVAL) as usize;
        let (ka, kb) = (k_of(start_a[id]), k_of(start_b[id]));
        for (lines, k0) in [(la, ka), (lb, kb)] {
            assert!(
                lines[..k0.min(lines.len())].iter().all(|l| !l.contains(&0)),
                "{id}: corrupted before the fault"
            );
        }
        let n = la.len().min(lb.len());
        for k in 0..n {
            if k < ka.min(kb) || k >= ka.max(kb) {
                // Both clean, or both under the fault: the same bytes.
                assert_eq!(
                    String::from_utf8_lossy(&la[k]),
                    String::from_utf8_lossy(&lb[k]),
                    "{id}: message {k} differs (fault from {ka} / {kb})"
                );
            }
            if k >= ka.max(kb) {
                compared += 1;
                corrupted += la[k].contains(&0) as usize;
            }
        }
    }
    assert!(compared >= 80, "only {compared} messages under the fault in both runs");
    // Rate 0.5: some are damaged and some are not.
    assert!(corrupted > compared / 5 && corrupted < compared * 4 / 5, "{corrupted} of {compared}");
}

/// The original's orchestrator injects DATA_CORRUPTION without a `mode`; the original zeroes
/// payload bytes and streams clean values (a NaN would reach its REST API's Server-Sent Events
/// as a bare `NaN`, which is not JSON). With no mode, iot-sim does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_corruption_without_a_mode_damages_bytes_and_streams_clean_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["plain"], 2);
    let mut rt =
        Running::with_config("run", &cfg, Some(&dir.path().join("report")), &["--cores", "1"]);
    let mut c = Client::connect(rt.url()).await.unwrap();
    let seen = watch(&mut c).await;
    let ids: Vec<String> = (0..2).map(probe_id).collect();
    wait_until(60, "3 messages of every device", || {
        let s = seen.lock().unwrap();
        ids.iter().all(|id| s.battery(id).len() >= 3)
    })
    .await;
    c.inject_fault(proto::InjectFaultRequest {
        selector: labels("fault=plain"),
        fault_type: proto::FaultType::DataCorruption as i32,
        duration: None,
        parameters: Some(obj(vec![("corruption_rate", num(1.0))])),
    })
    .await
    .unwrap();
    wait_until(120, "10 streamed messages of every device under the fault", || {
        let s = seen.lock().unwrap();
        ids.iter().all(|id| {
            s.started(id).is_some_and(|t0| {
                s.battery(id).iter().filter(|p| ms(&p.timestamp) >= t0).count() >= 10
            })
        })
    })
    .await;
    assert!(rt.terminate().success());
    let s = seen.lock().unwrap();
    for id in &ids {
        let t0 = s.started(id).unwrap();
        // The stream carries the generated values, never NaN.
        for p in s.points.iter().filter(|p| &p.device_id == id) {
            let Some(Value::DoubleValue(v)) = p.value else { continue };
            assert!(v.is_finite(), "{id}: {} streamed {v}", p.metric_name);
            if p.metric_name == "battery" {
                assert_eq!(v, 80.0, "{id}");
            }
        }
        // Every published message from the fault on has zeroed bytes; none before it.
        let lines: Vec<Line> = read_lines(&dir.path().join("telemetry.jsonl"))
            .into_iter()
            .filter(|l| &l.id == id)
            .collect();
        let first = lines[0].ts().unwrap();
        let k0 = t0.saturating_sub(first).div_ceil(INTERVAL) as usize;
        assert!(lines[..k0].iter().all(|l| l.nuls() == 0), "{id}: damaged before the fault");
        assert!(lines.len() >= k0 + 10, "{id}: {} lines, fault from {k0}", lines.len());
        assert!(lines[k0..].iter().all(|l| l.nuls() > 0), "{id}: a clean line under the fault");
    }
}
