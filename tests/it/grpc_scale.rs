//! Commands on a fleet large enough that the shard works through them over several wheel
//! turns (the id index, selector scans): the results must be the same as in one go.

use crate::common::Running;
use crate::grpc_common;

use grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use proto::device_selector::Selector;

const FLEET: usize = 200_000;

fn ids(list: &[String]) -> Option<proto::DeviceSelector> {
    Some(proto::DeviceSelector {
        selector: Some(Selector::DeviceIds(proto::DeviceIdList { ids: list.to_vec() })),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_commands_on_a_large_fleet_see_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nseed = 3\nclock = \"realtime\"\n\n[[fleet]]\nprofile = \"s\"\ncount = {}\nlabels = {{ half = \"a\" }}\n\n[[fleet]]\nprofile = \"s\"\ncount = {}\nlabels = {{ half = \"b\" }}\n\n[profiles.s]\nprotocol = \"null\"\ninterval = \"10s\"\n\n[profiles.s.fields.x]\ntype = \"gaussian\"\nmean = 1.0\nstddev = 1.0\n",
            FLEET / 2,
            FLEET / 2
        ),
    )
    .unwrap();
    let report = dir.path().join("report");
    let rt = Running::grpc(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--cores",
        "2",
        "--grpc",
        "127.0.0.1:0",
        "--quiet",
        "--report-dir",
        report.to_str().unwrap(),
    ]);
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    // Spread over the whole key range of both shards: the first, the last, and a stride.
    let picked: Vec<String> =
        (0..FLEET).step_by(997).chain([FLEET - 1]).map(|i| format!("s-{i:04}")).collect();

    // Spawning existing ids fails for each of them (the index must be complete to know).
    let specs = picked.iter().map(|id| spec(id, "s", &[], 1000, "null")).collect();
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 0, "{r:?}");
    assert_eq!(r.failed_device_ids.len(), picked.len());
    assert!(r.failure_reasons.values().all(|w| w.ends_with("already exists")), "{r:?}");

    // A label fault on half the fleet, then stop by ids: every picked id is found.
    c.inject_fault(proto::InjectFaultRequest {
        selector: labels("half=b"),
        fault_type: proto::FaultType::Disconnect as i32,
        duration: None,
        parameters: None,
    })
    .await
    .unwrap();
    let st = c.get_runtime_status(()).await.unwrap().into_inner();
    assert_eq!(st.faults_active as usize, FLEET / 2);
    let r = c
        .stop_devices(proto::StopDevicesRequest { selector: ids(&picked), graceful: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.stopped as usize, r.failed_device_ids.len()), (picked.len(), 0), "{r:?}");
    let s = c
        .get_fleet_status(proto::GetFleetStatusRequest { selector: None, counts_only: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.total_devices as usize, FLEET - picked.len());
    // The stopped ids can be spawned again, and then exist once.
    let specs = picked.iter().map(|id| spec(id, "s", &[], 1000, "null")).collect();
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned as usize, picked.len(), "{r:?}");
    let s = c
        .get_fleet_status(proto::GetFleetStatusRequest { selector: None, counts_only: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.total_devices as usize, FLEET);
}
