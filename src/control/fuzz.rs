//! Property-based fuzz of gRPC request validation: whatever a client sends, validation answers
//! (never panics), and what it accepts is within the limits (the user guide's "Limits" chapter, docs/src/limits.md).
//!
//! Bounded in CI (256 cases per property); run longer on demand with
//! `PROPTEST_CASES=20000 cargo test --release --lib control::fuzz`.

use super::proto;
use super::spec::{check_identity, fault_spec, selection, stream_shape};
use crate::limits;
use crate::shard::command::Selection;
use proptest::prelude::*;
use std::collections::BTreeMap;
use tonic::Code;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// Integers that sit on or near a boundary, or anywhere.
fn edgy_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(1 << 61),
        Just((1 << 61) + 1),
        Just(limits::MAX_FAULT_DURATION_S as i64),
        Just(limits::MAX_FLUSH_INTERVAL_S as i64),
        any::<i64>(),
        -100i64..100_000,
    ]
}

fn edgy_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0i32),
        Just(-1),
        Just(i32::MAX),
        Just(i32::MIN),
        Just(999_999_999),
        Just(1_000_000_000),
        Just(limits::MAX_STREAM_BATCH as i32),
        any::<i32>(),
        -10i32..20_000,
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(1e308),
        any::<f64>(),
        -10.0f64..10.0,
    ]
}

fn param() -> impl Strategy<Value = prost_types::Value> {
    use prost_types::value::Kind;
    prop_oneof![
        number().prop_map(Kind::NumberValue),
        "[a-z]{0,8}".prop_map(Kind::StringValue),
        any::<bool>().prop_map(Kind::BoolValue),
        Just(Kind::NullValue(0)),
    ]
    .prop_map(|k| prost_types::Value { kind: Some(k) })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a\0b".to_string()),
        Just("a\nb".to_string()),
        Just("x\u{202E}y".to_string()),
        Just("i".repeat(limits::MAX_ID_BYTES + 1)),
        Just("v".repeat(limits::MAX_LABEL_VALUE_BYTES + 1)),
        "\\PC{0,12}",
        "[a-z0-9_./-]{1,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fault_requests_are_answered_and_accepted_durations_are_in_range(
        fault_type in -2i32..8,
        duration in proptest::option::of((edgy_i64(), edgy_i32())),
        params in proptest::collection::btree_map(
            prop_oneof![Just("latency_ms"), Just("corruption_rate"), Just("mode"), Just("drain_multiplier"), Just("drift_rate_ms_per_sec"), Just("other")],
            param(),
            0..4,
        ),
    ) {
        let req = proto::InjectFaultRequest {
            selector: None,
            fault_type,
            duration: duration.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
            parameters: Some(prost_types::Struct {
                fields: params.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            }),
        };
        match fault_spec(&req) {
            Ok(spec) => {
                prop_assert!(spec.duration_ms <= limits::MAX_FAULT_DURATION_S * 1000);
                if let Some((s, n)) = duration {
                    prop_assert!(s >= 0 && (0..1_000_000_000).contains(&n), "{s}s {n}ns accepted");
                }
            }
            Err(e) => prop_assert_eq!(e.code(), Code::InvalidArgument),
        }
    }

    #[test]
    fn stream_requests_are_answered_and_accepted_shapes_are_bounded(
        batch_size in edgy_i32(),
        flush in proptest::option::of((edgy_i64(), edgy_i32())),
    ) {
        let req = proto::StreamTelemetryRequest {
            selector: None,
            batch_size,
            flush_interval: flush.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        };
        match stream_shape(&req) {
            Ok((batch, every)) => {
                prop_assert!((1..=limits::MAX_STREAM_BATCH).contains(&batch));
                prop_assert!(every.as_secs() <= limits::MAX_FLUSH_INTERVAL_S);
                prop_assert!(!every.is_zero());
            }
            Err(e) => prop_assert_eq!(e.code(), Code::InvalidArgument),
        }
    }

    #[test]
    fn selectors_are_answered_and_accepted_ones_are_within_the_limits(
        s in prop_oneof![
            "[a-z=!,() ]{0,40}",
            "\\PC{0,40}",
            (1usize..6000).prop_map(|n| format!("k in ({})", vec!["v"; n].join(","))),
        ],
    ) {
        let sel = proto::DeviceSelector {
            selector: Some(proto::device_selector::Selector::LabelSelector(s.clone())),
        };
        match selection(Some(sel), true) {
            Ok(Selection::Labels(l)) => {
                prop_assert!(s.len() <= limits::MAX_SELECTOR_BYTES);
                let _ = l.matches(&BTreeMap::new());
            }
            Ok(_) => {}
            Err(e) => {
                prop_assert_eq!(e.code(), Code::InvalidArgument);
                // The reason fits in a gRPC status header.
                prop_assert!(e.message().len() < 1024, "{} bytes", e.message().len());
            }
        }
    }

    #[test]
    fn spawned_ids_and_labels_are_refused_or_within_the_limits(
        id in text(),
        labels in proptest::collection::btree_map(text(), text(), 0..4),
    ) {
        if check_identity(&id, &labels).is_ok() {
            prop_assert!(limits::check_device_id(&id).is_ok());
            prop_assert!(!id.chars().any(limits::is_forbidden));
            for (k, v) in &labels {
                prop_assert!(!k.is_empty() && k.len() <= limits::MAX_LABEL_KEY_BYTES);
                prop_assert!(v.len() <= limits::MAX_LABEL_VALUE_BYTES);
            }
        }
    }
}
