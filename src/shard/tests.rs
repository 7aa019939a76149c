//! The shard in virtual time through its test harness (`harness.rs`): ticking, spawning,
//! scanning, stopping, faults, pauses and published figures, each checked against the sim
//! time it happened at, without a process.

use super::command::{Action, DeviceState, Selection};
use super::event::EventKind;
use super::harness::{TestShard, labels};
use crate::sim::fault::{DisconnectMode, FaultKind, FaultSpec};

/// 6 sensors in zone a and 4 in zone b, one message a second each, on the null sink.
const FLEET: &str = r#"
[run]
seed = 42
start_time = "2026-01-01T00:00:00Z"

[[fleet]]
profile = "sensor"
count = 6
labels = { zone = "a" }

[[fleet]]
profile = "sensor"
count = 4
labels = { zone = "b" }

[profiles.sensor]
protocol = "null"
interval = "1s"
fields.t = { type = "gaussian", mean = 20, stddev = 1 }
"#;

fn status(s: &mut TestShard, sel: Selection) -> super::command::ScanReply {
    s.scan(sel, Action::Status { list: true })
}

#[test]
fn every_device_ticks_once_per_interval_in_virtual_time() {
    let mut s = TestShard::new(FLEET);
    assert_eq!(s.devices(), 10);
    // Each device's first tick is at a phase within its first interval, so by any whole
    // number of intervals each has ticked exactly that many times.
    s.run_until(10_000);
    assert_eq!(s.messages(), 100);
    s.run_until(25_000);
    assert_eq!(s.messages(), 250);
}

#[test]
fn virtual_service_times_are_recorded_once_and_settled_as_the_latencies() {
    let mut s = TestShard::new(FLEET);
    s.run_until(5_000);
    let st = &s.stats().profiles[0];
    // One histogram record per message while the shard runs...
    assert_eq!((st.latency.len(), st.service.len()), (50, 0));
    // ...and the service times, the same on the virtual clock, when the figures leave it.
    let st = &s.settled_stats().profiles[0];
    assert_eq!(st.service.len(), 50);
    assert!(st.latency.iter_recorded().eq(st.service.iter_recorded()));
}

#[test]
fn a_label_scan_counts_only_the_selected_devices() {
    let mut s = TestShard::new(FLEET);
    s.run_until(3_000);
    let r = status(&mut s, labels("zone=a"));
    assert_eq!(r.affected, 6);
    assert_eq!(r.by_state.get(&DeviceState::Running), Some(&6));
    assert_eq!(r.devices.len(), 6);
    assert!(r.devices.iter().all(|d| d.labels["zone"] == "a" && d.messages == 3), "{r:?}");
    assert_eq!(status(&mut s, labels("zone notin (a)")).affected, 4);
    assert_eq!(status(&mut s, Selection::All).affected, 10);
}

#[test]
fn an_id_selection_names_the_ids_the_shard_does_not_have() {
    let mut s = TestShard::new(FLEET);
    let r = status(&mut s, Selection::Ids(vec!["sensor-0001".into(), "nobody".into()]));
    assert_eq!(r.affected, 1);
    assert_eq!(r.not_found, ["nobody"]);
}

#[test]
fn stopped_devices_leave_the_shard_and_tick_no_more() {
    let mut s = TestShard::new(FLEET);
    s.run_until(5_000);
    assert_eq!(s.scan(labels("zone=b"), Action::Stop).affected, 4);
    assert_eq!(s.devices(), 6);
    let before = s.messages();
    s.run_until(15_000);
    // Only zone a's 6 devices tick from here on.
    assert_eq!(s.messages() - before, 60);
    let stopped = s.take_events().iter().filter(|e| e.kind == EventKind::Stopped).count();
    assert_eq!(stopped, 4);
}

#[test]
fn spawned_devices_tick_from_their_spawn_and_are_selected_like_the_others() {
    let mut s = TestShard::new(FLEET);
    s.run_until(10_000);
    let specs = (0..5).map(|i| s.spec(&format!("new-{i}"), "sensor", &[("zone", "c")])).collect();
    let r = s.spawn(specs);
    assert_eq!((r.spawned, r.failed.len()), (5, 0), "{r:?}");
    assert_eq!(s.devices(), 15);
    // A duplicate id is refused with its reason; the shard is unchanged.
    let r = s.spawn(vec![s.spec("new-0", "sensor", &[])]);
    assert_eq!(r.spawned, 0);
    assert_eq!(r.failed.len(), 1);
    assert!(r.failed[0].1.contains("already exists"), "{r:?}");
    s.run_until(20_000);
    let c = status(&mut s, labels("zone=c"));
    assert_eq!(c.affected, 5);
    // The spawned devices ticked within (10 s, 20 s]: 10 each, give or take the first one's
    // phase.
    assert!(c.devices.iter().all(|d| (9..=10).contains(&d.messages)), "{c:?}");
    let spawned = s.take_events().iter().filter(|e| e.kind == EventKind::Spawned).count();
    assert_eq!(spawned, 5);
}

#[test]
fn a_spawn_in_due_order_takes_keys_in_the_order_its_devices_fall_due() {
    let mut s = TestShard::new(FLEET);
    let specs = |s: &TestShard| -> Vec<_> {
        (0..400).map(|i| s.spec(&format!("new-{i}"), "sensor", &[])).collect()
    };
    // As the control plane hands them over (seed 42, the fleet's).
    let r = s.spawn(super::in_due_order(42, specs(&s)));
    assert_eq!((r.spawned, r.failed.len()), (400, 0), "{r:?}");
    let due: Vec<u64> = s.deadlines_by_key()[10..].iter().map(|d| d.expect("a live key")).collect();
    assert_eq!(due.len(), 400);
    assert!(due.is_sorted(), "keys not in due order: {due:?}");
    // In the request's order they are not (the check above can fail).
    let mut t = TestShard::new(FLEET);
    t.spawn(specs(&t));
    let due: Vec<u64> = t.deadlines_by_key()[10..].iter().map(|d| d.expect("a live key")).collect();
    assert!(!due.is_sorted());
}

#[test]
fn a_disconnect_fault_suppresses_what_it_covers_until_it_ends() {
    let mut s = TestShard::new(FLEET);
    s.run_until(10_000);
    let fault = FaultSpec {
        kind: FaultKind::Disconnect,
        duration_ms: 5_000,
        disconnect: DisconnectMode::Abrupt,
    };
    assert_eq!(s.scan(labels("zone=a"), Action::Fault(fault)).affected, 6);
    s.run_until(20_000);
    // Zone a published nothing for 5 of the last 10 s; zone b all the time.
    assert_eq!(s.suppressed(), 30);
    // 100 in the first 10 s; then zone a 60 less the 30 suppressed, zone b 40.
    assert_eq!(s.messages(), 100 + (60 - 30) + 40);
    let kinds: Vec<EventKind> = s.take_events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::FaultInjected).count(), 6);
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::FaultCleared).count(), 6);
}

#[test]
fn paused_devices_keep_their_place_and_resume_on_schedule() {
    let mut s = TestShard::new(FLEET);
    s.run_until(5_000);
    assert_eq!(s.scan(labels("zone=b"), Action::Pause(true)).affected, 4);
    assert_eq!(status(&mut s, labels("zone=b")).by_state.get(&DeviceState::Paused), Some(&4));
    s.run_until(10_000);
    assert_eq!(s.messages(), 50 + 30);
    assert_eq!(s.scan(labels("zone=b"), Action::Pause(false)).affected, 4);
    s.run_until(20_000);
    assert_eq!(s.messages(), 80 + 100);
}

#[test]
fn published_figures_and_counters_match_the_shards_statistics() {
    let mut s = TestShard::new(FLEET);
    s.run_until(7_000);
    let by_type = s.figures_by_type();
    assert_eq!(by_type.get("sensor"), Some(&70), "{by_type:?}");
    // A command's reply comes after the counters were refreshed.
    status(&mut s, Selection::All);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s.counters.messages.load(Relaxed), s.messages());
    assert_eq!(s.counters.devices.load(Relaxed), 10);
    assert_eq!(s.stats().counts().messages, 70);
}

#[test]
fn stopping_what_a_spawn_added_gives_its_keys_back_and_the_fleet_ticks_on() {
    let mut s = TestShard::new(FLEET);
    let n = crate::sim::device::TRIM_MIN_KEYS + 500;
    let spawn = |s: &mut TestShard| {
        let specs =
            (0..n).map(|i| s.spec(&format!("extra-{i}"), "sensor", &[("kind", "extra")])).collect();
        let r = s.spawn(specs);
        assert_eq!(r.spawned as usize, n, "{:?}", r.failed.first());
    };
    spawn(&mut s);
    assert_eq!(s.key_capacity(), 10 + n);
    s.run_until(3_000);
    let before = s.messages();
    assert_eq!(before, 3 * (10 + n as u64));
    assert_eq!(s.scan(labels("kind=extra"), Action::Stop).affected as usize, n);
    assert_eq!((s.devices(), s.key_capacity()), (10, 10));
    // The fleet's own devices tick on, once a second each; the stopped ones never again.
    s.run_until(8_000);
    assert_eq!(s.messages(), before + 50);
    // The same ids spawn again into the grown table.
    spawn(&mut s);
    s.run_until(10_000);
    assert_eq!(s.devices(), 10 + n);
    assert!(s.messages() > before + 50 + 10, "{}", s.messages());
}
