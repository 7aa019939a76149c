//! gRPC control benchmark (issue 4), run by `bench/grpc_control.sh` against a running
//! `iot-sim serve` that ticks a large fleet (realtime). Prints one JSON object:
//!
//! - `spawn`: one SpawnDevices request with N specs (default 100,000);
//! - `stop`: StopDevices of those N by label selector;
//! - `fault`: InjectFault by label selector on every fleet device (1,000,000 over 2 shards);
//! - `clear`: ClearFaults on the same selector;
//! - `status`: GetFleetStatus (counts only) over the whole fleet;
//!
//! each with the call's wall time and the largest tick lateness of any shard during it
//! (`RuntimeStatus.tick_lateness_us_max`, reset by each status read), next to the lateness of
//! an equally long idle window before it (`idle_lateness_us_max`); and the runtime's RSS with
//! the fleet alone (`rss_fleet_bytes`, before the first call) and 2 s after the last call
//! (`rss_bytes`), with their ratio (`rss_after_cycle_over_fleet`).
//!
//! Usage: grpc_bench HOST:PORT FLEET_DEVICES SPAWN_COUNT SELECTOR

use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use proto::device_selector::Selector;
use std::time::{Duration, Instant};

type Client = DeviceRuntimeServiceClient<tonic::transport::Channel>;

fn obj(pairs: Vec<(&str, prost_types::Value)>) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
            fields: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        })),
    }
}
fn num(v: f64) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(v)) }
}
fn text(s: &str) -> prost_types::Value {
    prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(s.into())) }
}
fn labels(s: &str) -> Option<proto::DeviceSelector> {
    Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector(s.into())) })
}

/// Lateness since the previous read.
async fn lateness(c: &mut Client) -> u64 {
    c.get_runtime_status(()).await.expect("status").into_inner().tick_lateness_us_max as u64
}

/// Times `call`, with the shards' lateness during it and during an idle window as long.
async fn measure<F, Fut, T>(c: &mut Client, call: F) -> (serde_json::Value, T)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    // Settle, then an idle window (at least 1 s) for comparison.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lateness(c).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = lateness(c).await;
    let t0 = Instant::now();
    let out = call(c.clone()).await;
    let wall = t0.elapsed();
    // Let the shards publish their counters for the last turns of the call.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = lateness(c).await;
    let v = serde_json::json!({
        "wall_ms": (wall.as_secs_f64() * 1e4).round() / 10.0,
        "lateness_us_max": during,
        "idle_lateness_us_max": idle,
    });
    (v, out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, fleet, spawn_n, selector] = &args[..] else {
        eprintln!("usage: grpc_bench HOST:PORT FLEET_DEVICES SPAWN_COUNT SELECTOR");
        std::process::exit(2);
    };
    let fleet: i32 = fleet.parse().expect("FLEET_DEVICES");
    let spawn_n: usize = spawn_n.parse().expect("SPAWN_COUNT");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut c = Client::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    // Wait for the fleet to be built and ticking.
    loop {
        let s = c.get_runtime_status(()).await.expect("status").into_inner();
        if s.active_devices >= fleet && s.messages_sent_total > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fleet_rss = c.get_runtime_status(()).await.expect("status").into_inner().memory_bytes;

    let behaviour = prost_types::Struct {
        fields: [(
            "fields".to_string(),
            obj(vec![(
                "temperature",
                obj(vec![("type", text("gaussian")), ("mean", num(22.0)), ("stddev", num(1.0))]),
            )]),
        )]
        .into_iter()
        .collect(),
    };
    let specs: Vec<proto::DeviceSpec> = (0..spawn_n)
        .map(|i| proto::DeviceSpec {
            device_id: format!("bench-{i:06}"),
            device_type: "bench".into(),
            labels: [("bench".to_string(), "spawned".to_string())].into_iter().collect(),
            telemetry_interval: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            behavior_params: Some(behaviour.clone()),
            protocol: "null".into(),
            topic_template: String::new(),
        })
        .collect();
    let req = proto::SpawnDevicesRequest { specs, scenario_id: String::new() };
    let request_bytes = prost::Message::encoded_len(&req);
    let (mut spawn, r) =
        measure(&mut c, |mut c| async move { c.spawn_devices(req).await.expect("spawn") }).await;
    let r = r.into_inner();
    assert_eq!(
        r.spawned as usize,
        spawn_n,
        "{:?}",
        r.failure_reasons.iter().take(3).collect::<Vec<_>>()
    );
    spawn["devices"] = spawn_n.into();
    spawn["request_bytes"] = request_bytes.into();

    let (mut stop, r) = measure(&mut c, |mut c| async move {
        c.stop_devices(proto::StopDevicesRequest {
            selector: labels("bench=spawned"),
            graceful: true,
        })
        .await
        .expect("stop")
    })
    .await;
    assert_eq!(r.into_inner().stopped as usize, spawn_n);
    stop["devices"] = spawn_n.into();

    let sel = selector.clone();
    let (mut fault, _) = measure(&mut c, |mut c| async move {
        c.inject_fault(proto::InjectFaultRequest {
            selector: labels(&sel),
            fault_type: proto::FaultType::DataCorruption as i32,
            duration: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            parameters: Some(prost_types::Struct {
                fields: [
                    ("corruption_rate".to_string(), num(0.1)),
                    ("mode".to_string(), text("spike")),
                ]
                .into_iter()
                .collect(),
            }),
        })
        .await
        .expect("inject")
    })
    .await;
    let active = c.get_runtime_status(()).await.expect("status").into_inner().faults_active;
    fault["selector"] = selector.clone().into();
    fault["faults_active_after"] = active.into();

    let sel = selector.clone();
    let (mut clear, r) = measure(&mut c, |mut c| async move {
        c.clear_faults(proto::ClearFaultsRequest { selector: labels(&sel), fault_type: 0 })
            .await
            .expect("clear")
    })
    .await;
    clear["devices"] = r.into_inner().cleared.into();

    let (mut status, r) = measure(&mut c, |mut c| async move {
        c.get_fleet_status(proto::GetFleetStatusRequest { selector: None, counts_only: true })
            .await
            .expect("fleet status")
    })
    .await;
    status["devices"] = r.into_inner().total_devices.into();

    // What the runtime holds once the cycle is over (memory handed back after a call is handed
    // back on a blocking thread, just after its reply).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rs = c.get_runtime_status(()).await.expect("status").into_inner();
    let out = serde_json::json!({
        "fleet_devices": fleet,
        "shards": rs.shards,
        "messages_per_second": rs.messages_per_second.round(),
        "rss_fleet_bytes": fleet_rss,
        "rss_bytes": rs.memory_bytes,
        "rss_after_cycle_over_fleet": (rs.memory_bytes as f64 / fleet_rss as f64 * 100.0).round() / 100.0,
        "spawn": spawn,
        "stop": stop,
        "fault": fault,
        "clear": clear,
        "status": status,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
