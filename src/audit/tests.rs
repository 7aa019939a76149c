//! Ledger tests: classification of whole messages and the end-of-run judgement.

use super::ledger::{EndFacts, LatencyClock, Ledger};
use crate::shard::tap::{Excuse, ExcuseTap};
use crate::sim::profile::{Fleet, Group, Profile, Protocol, TopicTemplate};
use std::collections::BTreeMap;
use std::sync::Arc;

const START: u64 = 1_700_000_000_000;
const SEED: u64 = 7;

fn fleet(devices: u64) -> Arc<Fleet> {
    let mut p = Profile::for_tests("thermo");
    p.protocol = Protocol::Mqtt;
    p.topic = TopicTemplate::parse("devices/{device_id}/telemetry").unwrap();
    p.seq = true;
    let g = Group {
        profile: 0,
        count: devices,
        first_ordinal: 0,
        labels: BTreeMap::new(),
        labels_json: String::new(),
        ids: vec![],
    };
    Arc::new(Fleet { profiles: vec![p], groups: vec![g] })
}

/// The message device `i` sends with `seq` (on its grid).
fn msg(i: u64, seq: u64) -> (String, Vec<u8>) {
    let f = fleet(1);
    let id = format!("thermo-{i:04}");
    let first = super::roster::first_tick(SEED, &id, &f.profiles[0], START);
    let ts = crate::sim::time::rfc3339_ms(first + seq * 1000);
    (
        format!("devices/{id}/telemetry"),
        format!(r#"{{"device_id":"{id}","device_type":"thermo","timestamp":"{ts}","fields":{{}},"seq":{seq}}}"#)
            .into_bytes(),
    )
}

fn ledger(devices: u64) -> Ledger {
    Ledger::new(fleet(devices), SEED, Some(START), false, None)
}

fn feed(l: &mut Ledger, i: u64, seq: u64) {
    let (t, p) = msg(i, seq);
    l.observe(Some(&t), &p, 0);
}

fn end(seconds: u64) -> EndFacts {
    // Every device's first tick lies in its first second: ticks before START + seconds s.
    EndFacts { seed: SEED, start_ms: START, schedule_end_ms: Some(START + seconds * 1000) }
}

#[test]
fn a_clean_run_has_nothing_lost_duplicated_or_reordered() {
    let mut l = ledger(3);
    for s in 0..5 {
        for i in 0..3 {
            feed(&mut l, i, s);
        }
    }
    let (r, _) = l.finish(&end(5), None, 10);
    assert_eq!((r.expected, r.received, r.lost), (15, 15, 0));
    assert_eq!((r.counts.duplicated, r.counts.reordered, r.counts.off_grid), (0, 0, 0));
    assert!(r.worst.is_empty());
}

#[test]
fn devices_that_sent_nothing_are_silent_and_lost_by_schedule() {
    let mut l = ledger(2);
    for s in 0..4 {
        feed(&mut l, 0, s);
    }
    let (r, _) = l.finish(&end(4), None, 10);
    assert_eq!(r.silent_devices, 1);
    assert_eq!(r.lost, 4);
    assert_eq!(r.worst[0].device_id, "thermo-0001");
}

#[test]
fn duplicates_reorders_and_gaps_are_told_apart() {
    let mut l = ledger(1);
    for s in [0, 1, 3, 2, 3, 5] {
        feed(&mut l, 0, s);
    }
    let (r, _) = l.finish(&end(6), None, 10);
    assert_eq!(r.counts.duplicated, 1);
    assert_eq!(r.counts.reordered, 1);
    assert_eq!(r.counts.reorder_max, 1);
    assert_eq!(r.lost, 1, "seq 4 never came");
}

#[test]
fn bad_input_is_counted_by_kind_and_never_stops_the_books() {
    let mut l = ledger(1);
    l.observe(Some("devices/x/telemetry"), b"not json", 0);
    l.observe(Some("devices/x/telemetry"), br#"{"device_id":"nobody-0001","device_type":"thermo","timestamp":"2026-01-01T00:00:00.000Z"}"#, 0);
    let (_, p) = msg(0, 0);
    l.observe(Some("elsewhere/thermo-0000"), &p, 0);
    let (t, p) = msg(0, 0);
    let wrong = String::from_utf8(p).unwrap().replace("\"thermo\",", "\"fridge\",");
    l.observe(Some(&t), wrong.as_bytes(), 0);
    feed(&mut l, 0, 0);
    let c = &l.counts;
    assert_eq!((c.unparsable, c.unknown_device, c.foreign_topic, c.corrupted), (1, 1, 1, 1));
    assert_eq!(c.in_order, 1);
}

#[test]
fn faults_gaps_are_excused_not_lost() {
    let mut l = ledger(1);
    let tap = ExcuseTap::new([1u64].into_iter());
    for s in [0, 1, 4] {
        feed(&mut l, 0, s);
    }
    tap.note(0, 0, Excuse::Suppressed);
    tap.note(0, 0, Excuse::Suppressed);
    let (r, _) = l.finish(&end(5), Some(&tap), 10);
    assert_eq!((r.lost, r.excused_disconnect), (0, 2));
}

#[test]
fn timestamps_off_the_grid_are_counted() {
    let mut l = ledger(1);
    let (t, p) = msg(0, 1);
    let s = String::from_utf8(p).unwrap();
    let ts_at = s.find("\"timestamp\":\"").unwrap() + 13;
    let ts = crate::sim::time::parse_rfc3339(&s[ts_at..ts_at + 24]).unwrap();
    let moved = s.replace(&s[ts_at..ts_at + 24], &crate::sim::time::rfc3339_ms(ts + 1));
    l.observe(Some(&t), moved.as_bytes(), 0);
    assert_eq!(l.counts.off_grid, 1);
}

#[test]
fn end_to_end_latency_maps_timestamps_to_wall_time_by_speed() {
    let mut l = ledger(1);
    // Sim time runs 10x: sim second 10 after START is wall second 1 after wall0.
    l.clock = LatencyClock::Wall { wall0_us: 5_000_000, start_ms: START, speed: 10.0 };
    let (t, p) = msg(0, 0);
    let s = String::from_utf8(p).unwrap();
    let ts_at = s.find("\"timestamp\":\"").unwrap() + 13;
    let ts = crate::sim::time::parse_rfc3339(&s[ts_at..ts_at + 24]).unwrap();
    let intended_us = 5_000_000 + (ts - START) * 100;
    l.observe(Some(&t), s.as_bytes(), intended_us + 2500);
    let (r, _) = l.finish(&end(1), None, 0);
    // HDR histograms keep 3 significant digits.
    let max = r.e2e_latency_us.unwrap().max;
    assert!((2497..=2503).contains(&max), "{max}");
}

#[test]
fn a_routing_key_matches_its_topic_with_the_separator() {
    let mut l = Ledger::new(fleet(1), SEED, Some(START), false, Some(".".into()));
    let (_, p) = msg(0, 0);
    l.observe(Some("devices.thermo-0000.telemetry"), &p, 0);
    l.observe(Some("devices/thermo-0000/telemetry"), &p, 0);
    assert_eq!((l.counts.in_order, l.counts.foreign_topic), (1, 1));
}

#[test]
fn without_a_topic_only_the_payload_is_checked() {
    let mut l = ledger(1);
    let (_, p) = msg(0, 0);
    l.observe(None, &p, 0);
    assert_eq!((l.counts.in_order, l.counts.foreign_topic), (1, 0));
}
