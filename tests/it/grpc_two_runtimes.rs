//! Two `iot-sim serve` runtimes driven by the client commands: `spawn --runtime a,b` routes
//! each device to exactly one runtime by rendezvous hashing of its id, and `status` fans out
//! to both and sums.

use crate::common::Running;

use iot_sim::control::client::owner;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use std::collections::BTreeSet;
use std::process::Command;

const COUNT: usize = 300;

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_iot-sim")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "iot-sim {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn device_ids(addr: &str) -> BTreeSet<String> {
    let mut c = DeviceRuntimeServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let s = c
        .get_fleet_status(proto::GetFleetStatusRequest { selector: None, counts_only: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.total_devices as usize, s.devices.len());
    s.devices.into_iter().map(|d| d.device_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_routes_each_device_to_one_runtime_and_status_sums() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("meter.toml");
    std::fs::write(
        &profile,
        "protocol = \"null\"\ninterval = \"1s\"\n\n[fields.power]\ntype = \"gaussian\"\nmean = 3.0\nstddev = 0.5\n",
    )
    .unwrap();
    let a = Running::grpc(&["serve", "--cores", "2", "--grpc", "127.0.0.1:0", "--quiet"]);
    let b = Running::grpc(&["serve", "--cores", "1", "--grpc", "127.0.0.1:0", "--quiet"]);
    let addrs = vec![a.addr.clone(), b.addr.clone()];
    let both = addrs.join(",");
    let n = COUNT.to_string();
    let out = cli(&[
        "spawn",
        "--runtime",
        &both,
        "--profile",
        profile.to_str().unwrap(),
        "--count",
        &n,
        "--labels",
        "site=berlin",
    ]);
    assert!(out.contains(&format!("Spawned {COUNT} device(s)")), "{out}");

    // Every device is on exactly one runtime: the one the hash names.
    let on_a = device_ids(&a.addr).await;
    let on_b = device_ids(&b.addr).await;
    assert!(on_a.is_disjoint(&on_b));
    assert_eq!(on_a.len() + on_b.len(), COUNT);
    let want: BTreeSet<String> = (0..COUNT).map(|i| format!("meter-{i:04}")).collect();
    assert_eq!(on_a.union(&on_b).cloned().collect::<BTreeSet<_>>(), want);
    for id in &on_a {
        assert_eq!(owner(&addrs, id), 0, "{id} is on {} but hashes elsewhere", addrs[0]);
    }
    for id in &on_b {
        assert_eq!(owner(&addrs, id), 1, "{id} is on {} but hashes elsewhere", addrs[1]);
    }
    // Neither runtime is left empty (300 ids, fair hashing).
    assert!(!on_a.is_empty() && !on_b.is_empty(), "{} / {}", on_a.len(), on_b.len());

    // Spawning the same ids again goes to the same runtimes, which refuse the duplicates.
    let out =
        cli(&["spawn", "--runtime", &both, "--profile", profile.to_str().unwrap(), "--count", "5"]);
    assert!(out.contains("Spawned 0 device(s)") && out.contains("already exists"), "{out}");

    // Fan-out status sums over both runtimes, and reports each one.
    let out = cli(&["status", "--runtime", &both]);
    assert!(out.contains(&format!("Total devices: {COUNT}")), "{out}");
    assert!(out.contains(&format!("Runtime {}: devices={} ", a.addr, on_a.len())), "{out}");
    assert!(out.contains(&format!("Runtime {}: devices={} ", b.addr, on_b.len())), "{out}");
    assert!(out.contains(&format!("\"meter\": {COUNT}")), "{out}");
    let out = cli(&["status", "--runtime", &both, "--selector", "site=berlin"]);
    assert!(out.contains(&format!("Total devices: {COUNT}")), "{out}");
    let out = cli(&["status", "--runtime", &both, "--selector", "site=paris"]);
    assert!(out.contains("Total devices: 0"), "{out}");

    // Stop fans out too.
    let out = cli(&["stop", "--runtime", &both, "--selector", "site=berlin"]);
    assert!(out.contains(&COUNT.to_string()), "{out}");
    assert!(device_ids(&a.addr).await.is_empty() && device_ids(&b.addr).await.is_empty());
}
