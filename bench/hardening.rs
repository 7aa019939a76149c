//! Hardening benchmarks (issue 15), run by `bench/hardening.sh` against a running
//! `iot-sim serve`. Each case prints one JSON object on stdout.
//!
//! - `churn ADDR CYCLES COUNT`: the runtime's RSS idle (baseline), then after each of CYCLES
//!   rounds of "spawn COUNT devices (one request per 10,000), stop all"; then 500 rounds of
//!   "spawn one device with its own profile, stop it". RSS is `RuntimeStatus.memory_bytes`.
//! - `streams ADDR STREAMS SECONDS`: GetRuntimeStatus latency (100 calls) and RSS with no
//!   stream open (baseline), then with STREAMS `StreamTelemetry` calls that are opened and
//!   never read, after SECONDS; how many of them were refused (RESOURCE_EXHAUSTED); and the
//!   RSS after the calls are cancelled.
//!
//! - `selector ADDR DEVICES`: spawns DEVICES devices with distinct `zone` labels (60 s
//!   interval, null sink), then times GetFleetStatus (counts) with the largest selector the
//!   limits allow (`zone in (...)` with `MAX_SELECTOR_VALUES` values, at most
//!   `MAX_SELECTOR_BYTES`) against a one-value selector in the same run, and the latency of a
//!   one-value call made while the large one runs (one call must not block the others).
//!
//! Usage: hardening_bench churn|streams|selector ADDR ...

use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use proto::device_selector::Selector;
use std::time::{Duration, Instant};

type Client = DeviceRuntimeServiceClient<tonic::transport::Channel>;

fn num(v: f64) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(v)) }
}
fn text(s: &str) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s.into())) }
}
fn obj(pairs: Vec<(&str, prost_types::Value)>) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
            fields: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        })),
    }
}

/// A spec whose behaviour differs by `mean` (a distinct mean = a distinct profile).
fn spec(id: String, mean: f64) -> proto::DeviceSpec {
    let behaviour = prost_types::Struct {
        fields: [(
            "fields".to_string(),
            obj(vec![(
                "temperature",
                obj(vec![("type", text("gaussian")), ("mean", num(mean)), ("stddev", num(1.0))]),
            )]),
        )]
        .into_iter()
        .collect(),
    };
    proto::DeviceSpec {
        device_id: id,
        device_type: "churn".into(),
        labels: [("bench".to_string(), "churn".to_string())].into_iter().collect(),
        telemetry_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        behavior_params: Some(behaviour),
        protocol: "null".into(),
        topic_template: String::new(),
    }
}

fn all() -> Option<proto::DeviceSelector> {
    // Every device the bench spawned carries bench=churn.
    Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector("bench=churn".into())) })
}

async fn connect(addr: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    Client::new(channel).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20)
}

async fn rss(c: &mut Client) -> i64 {
    c.get_runtime_status(()).await.expect("status").into_inner().memory_bytes
}

/// RSS after the allocator had a moment to hand memory back.
async fn settled_rss(c: &mut Client) -> i64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rss(c).await
}

async fn churn(addr: &str, cycles: usize, count: usize) -> serde_json::Value {
    let mut c = connect(addr).await;
    let idle = settled_rss(&mut c).await;
    let mut after = vec![];
    for cycle in 0..cycles {
        for start in (0..count).step_by(10_000) {
            let specs = (start..(start + 10_000).min(count))
                .map(|i| spec(format!("c-{i}"), 20.0))
                .collect();
            let r = c
                .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
                .await
                .expect("spawn")
                .into_inner();
            assert!(r.failed_device_ids.is_empty(), "cycle {cycle}: {:?}", r.failure_reasons);
        }
        let r = c
            .stop_devices(proto::StopDevicesRequest { selector: all(), graceful: true })
            .await
            .expect("stop")
            .into_inner();
        assert_eq!(r.stopped as usize, count);
        after.push(settled_rss(&mut c).await);
    }
    let before_singles = rss(&mut c).await;
    for i in 0..500 {
        let s = spec(format!("one-{i}"), 100.0 + i as f64);
        c.spawn_devices(proto::SpawnDevicesRequest { specs: vec![s], scenario_id: String::new() })
            .await
            .expect("spawn one");
        c.stop_devices(proto::StopDevicesRequest { selector: all(), graceful: true })
            .await
            .expect("stop one");
    }
    let after_singles = settled_rss(&mut c).await;
    let held = c.get_runtime_status(()).await.expect("status").into_inner().runtime_profiles;
    let first = after[0];
    let last = *after.last().unwrap();
    serde_json::json!({
        "cycles": cycles,
        "devices_per_cycle": count,
        "idle_rss_bytes": idle,
        "rss_after_first_cycle_bytes": first,
        "rss_after_last_cycle_bytes": last,
        "growth_per_cycle_bytes": (last - first) / (cycles.max(2) as i64 - 1),
        "last_over_idle_ratio": (last as f64 / idle as f64 * 100.0).round() / 100.0,
        "rss_after_each_cycle_bytes": after,
        "own_profile_spawn_stop_calls": 500,
        "own_profile_rss_before_bytes": before_singles,
        "own_profile_rss_after_bytes": after_singles,
        "own_profile_bytes_per_call": (after_singles - before_singles) / 500,
        "own_profile_runtime_profiles_held_after": held,
    })
}

/// Median and p99 of `n` GetRuntimeStatus calls, µs.
async fn status_latency(c: &mut Client, n: usize) -> (f64, f64) {
    let mut v = vec![];
    for _ in 0..n {
        let t0 = Instant::now();
        c.get_runtime_status(()).await.expect("status");
        v.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    (v[n / 2].round(), v[(n * 99 / 100).min(n - 1)].round())
}

async fn streams(addr: &str, n: usize, seconds: u64) -> serde_json::Value {
    let mut c = connect(addr).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss(&mut c).await;
    let (p50_idle, p99_idle) = status_latency(&mut c, 100).await;
    // Several connections, as several clients would use (h2 caps streams per connection).
    let mut conns = vec![];
    for _ in 0..n.div_ceil(100) {
        conns.push(connect(addr).await);
    }
    let mut open = vec![];
    let (mut refused, mut other) = (0, 0);
    for i in 0..n {
        let mut cc = conns[i / 100].clone();
        let req =
            proto::StreamTelemetryRequest { selector: None, batch_size: 0, flush_interval: None };
        match cc.stream_telemetry(req).await {
            Ok(r) => open.push(r.into_inner()),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => refused += 1,
            Err(_) => other += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let with = rss(&mut c).await;
    let (p50, p99) = status_latency(&mut c, 100).await;
    let dropped = c.get_runtime_status(()).await.expect("status").into_inner();
    drop(open);
    drop(conns);
    let after = settled_rss(&mut c).await;
    serde_json::json!({
        "streams_asked": n,
        "streams_refused_resource_exhausted": refused,
        "streams_failed_otherwise": other,
        "unread_for_seconds": seconds,
        "idle_rss_bytes": idle,
        "rss_with_streams_bytes": with,
        "rss_over_idle_ratio": (with as f64 / idle as f64 * 100.0).round() / 100.0,
        "rss_after_cancel_bytes": after,
        "status_latency_us_idle": { "p50": p50_idle, "p99": p99_idle },
        "status_latency_us_with_streams": { "p50": p50, "p99": p99 },
        "points_dropped_total": dropped.telemetry_points_dropped_total,
        // Unread streams may hold at most the points budget; 128 MiB over it is the allowance
        // for the runtime's own buffers (h2 windows, batches in flight). Unbounded, 1,000 such
        // streams reached 6.9 GB in 10 s.
        "stream_budget_bytes": iot_sim::limits::STREAM_BUDGET_BYTES,
        "rss_growth_bytes": with as i64 - idle as i64,
        "rss_growth_within_budget": (with as i64 - idle as i64)
            < iot_sim::limits::STREAM_BUDGET_BYTES as i64 + (128 << 20),
    })
}

fn labels(s: String) -> Option<proto::DeviceSelector> {
    Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector(s)) })
}

/// Wall time of a counts-only GetFleetStatus with `sel`, ms, and the devices it counted.
async fn count(c: &mut Client, sel: &str) -> (f64, i32) {
    let t0 = Instant::now();
    let r = c
        .get_fleet_status(proto::GetFleetStatusRequest {
            selector: labels(sel.to_string()),
            counts_only: true,
        })
        .await
        .expect("fleet status")
        .into_inner();
    ((t0.elapsed().as_secs_f64() * 1e4).round() / 10.0, r.total_devices)
}

async fn selector(addr: &str, devices: usize) -> serde_json::Value {
    use iot_sim::limits::{MAX_SELECTOR_BYTES, MAX_SELECTOR_VALUES};
    let mut c = connect(addr).await;
    let t0 = Instant::now();
    for start in (0..devices).step_by(100_000) {
        let specs = (start..(start + 100_000).min(devices))
            .map(|i| {
                let mut s = spec(format!("s-{i}"), 20.0);
                s.labels.insert("zone".into(), format!("z{i:07}"));
                s.telemetry_interval = Some(prost_types::Duration { seconds: 60, nanos: 0 });
                s
            })
            .collect();
        let r = c
            .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
            .await
            .expect("spawn")
            .into_inner();
        assert!(r.failed_device_ids.is_empty(), "{:?}", r.failure_reasons.iter().next());
    }
    let spawn_s = t0.elapsed().as_secs_f64();
    // The largest set the limits allow: MAX_SELECTOR_VALUES values as long as the byte limit
    // leaves room for; every other one names a device.
    let per = (MAX_SELECTOR_BYTES - 16) / MAX_SELECTOR_VALUES - 1;
    let step = (devices / MAX_SELECTOR_VALUES).max(1);
    let values: Vec<String> = (0..MAX_SELECTOR_VALUES)
        .map(|i| if i % 2 == 0 { format!("z{:07}", i * step) } else { format!("{:x<per$}", i) })
        .collect();
    let big = format!("zone in ({})", values.join(","));
    assert!(big.len() <= MAX_SELECTOR_BYTES, "{} bytes", big.len());
    let one = "zone=z0000000";
    let mut big_ms = vec![];
    let mut one_ms = vec![];
    let (mut big_n, mut one_n) = (0, 0);
    for _ in 0..3 {
        let (ms, n) = count(&mut c, &big).await;
        big_ms.push(ms);
        big_n = n;
        let (ms, n) = count(&mut c, one).await;
        one_ms.push(ms);
        one_n = n;
    }
    // A one-value call while the large one is in flight, on another connection.
    let mut other = connect(addr).await;
    let mut c2 = c.clone();
    let big2 = big.clone();
    let during = tokio::spawn(async move { count(&mut c2, &big2).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (concurrent_ms, _) = count(&mut other, one).await;
    let (big_concurrent_ms, _) = during.await.expect("large call");
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    serde_json::json!({
        "devices": devices,
        "spawn_seconds": (spawn_s * 10.0).round() / 10.0,
        "selector_bytes": big.len(),
        "selector_values": MAX_SELECTOR_VALUES,
        "max_selector_ms": big_ms,
        "max_selector_matched": big_n,
        "baseline_one_value_ms": one_ms,
        "baseline_matched": one_n,
        "ratio_best_to_baseline_best": (min(&big_ms) / min(&one_ms) * 100.0).round() / 100.0,
        "one_value_call_during_max_selector_ms": concurrent_ms,
        "max_selector_call_alongside_ms": big_concurrent_ms,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = match args.get(1).map(String::as_str) {
        Some("churn") if args.len() == 5 => {
            churn(&args[2], args[3].parse().expect("CYCLES"), args[4].parse().expect("COUNT")).await
        }
        Some("streams") if args.len() == 5 => {
            streams(&args[2], args[3].parse().expect("STREAMS"), args[4].parse().expect("SECONDS"))
                .await
        }
        Some("selector") if args.len() == 4 => {
            selector(&args[2], args[3].parse().expect("DEVICES")).await
        }
        _ => {
            eprintln!(
                "usage: hardening_bench churn ADDR CYCLES COUNT | streams ADDR STREAMS SECONDS \
                 | selector ADDR DEVICES"
            );
            std::process::exit(2);
        }
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
