//! Property-based fuzz of the config loader: mutated fleet files never panic the loader, and
//! whatever it accepts is runnable (finite parameters, topic labels present, times the clock
//! holds, bounded names and labels).
//!
//! Bounded in CI (256 cases per property); run longer on demand with
//! `PROPTEST_CASES=20000 cargo test --release --lib fuzz`.

use super::{ParseError, parse_str};
use crate::limits;
use crate::sim::generator::GenSpec;
use crate::sim::profile::TopicPart;
use crate::sim::time::LAST_SIM_MS;
use proptest::prelude::*;
use std::path::Path;

const TEMPLATE: &str = r#"
[run]
seed = 42
clock = "virtual"
start_time = @START@
duration = @DURATION@

[sink.file]
path = "out/telemetry.jsonl"

[[fleet]]
profile = "thermo"
count = @COUNT@
labels = { site = @LABEL@ }

[profiles.thermo]
protocol = "file"
topic = @TOPIC@
interval = @INTERVAL@

[profiles.thermo.fields.@FIELD@]
type = "diurnal"
baseline = @F1@
amplitude = @F2@
peak_hour = @F3@
noise_stddev = @F4@

[profiles.thermo.fields.humidity]
type = "brownian"
start = @F5@
volatility = @F6@
mean_reversion = @F7@
min = @F8@
max = 95.0

[profiles.thermo.fields.model]
type = "static"
value = @F9@
"#;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// Values that once slipped through or that sit on a boundary.
fn nasty_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("-0.0".to_string()),
        Just("1e308".to_string()),
        Just("-1e308".to_string()),
        Just("1e-18".to_string()),
        Just("5e-324".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("\"12\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        (-1e6f64..1e6).prop_map(|f| format!("{f:?}")),
        (-1000i64..1000).prop_map(|i| i.to_string()),
    ]
}

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("\"a\\u0000b\"".to_string()),
        Just("\"a\\nb\"".to_string()),
        Just("\"x\\u202Ey\"".to_string()),
        Just(format!("\"{}\"", "v".repeat(limits::MAX_LABEL_VALUE_BYTES + 1))),
        Just("\"berlin\"".to_string()),
        Just("42".to_string()),
        "[a-z0-9{}./_-]{0,24}".prop_map(|s| format!("{s:?}")),
    ]
}

fn nasty_topic() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"devices/{device_id}/telemetry\"".to_string()),
        Just("\"s/{labels.site}/{device_type}\"".to_string()),
        Just("\"s/{labels.nosuch}\"".to_string()),
        Just("\"{labels.}\"".to_string()),
        Just("\"{\"".to_string()),
        Just("\"}\"".to_string()),
        "[a-z{}./_-]{0,24}".prop_map(|s| format!("{s:?}")),
    ]
}

fn nasty_time() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"2026-03-14T00:00:00Z\"".to_string()),
        Just("\"4199-11-24T01:22:57.664Z\"".to_string()),
        Just("\"4099-12-31T23:59:59Z\"".to_string()),
        Just("\"9999-12-31T23:59:59Z\"".to_string()),
        Just("\"1969-12-31T23:59:59Z\"".to_string()),
        Just("\"2026-02-30T00:00:00Z\"".to_string()),
        Just("2026-03-14T00:00:00Z".to_string()),
        Just("\"now\"".to_string()),
        (0u64..8000).prop_map(|y| format!("\"{y:04}-01-01T00:00:00Z\"")),
    ]
}

fn nasty_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"0s\"".to_string()),
        Just("\"1h\"".to_string()),
        Just("\"1000000000000000ms\"".to_string()),
        Just("\"99999999999d\"".to_string()),
        Just("\"-1s\"".to_string()),
        Just("\"1.5ms\"".to_string()),
        Just("\"31d\"".to_string()),
        Just("5".to_string()),
        "[0-9.]{1,6}(ms|s|m|h|d)".prop_map(|s| format!("{s:?}")),
    ]
}

fn nasty_field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("temperature".to_string()),
        Just("\"\"".to_string()),
        Just(format!("\"{}\"", "f".repeat(limits::MAX_NAME_BYTES + 1))),
        Just("\"a\\tb\"".to_string()),
        "[a-z_]{1,12}",
    ]
}

/// Every key placeholder filled from its strategy.
fn fleet_text() -> impl Strategy<Value = String> {
    (
        (nasty_time(), nasty_duration(), prop_oneof![Just("1000".to_string()), nasty_number()]),
        (nasty_string(), nasty_topic(), nasty_duration(), nasty_field_name()),
        proptest::collection::vec(nasty_number(), 9),
    )
        .prop_map(|((start, duration, count), (label, topic, interval, field), f)| {
            let mut t = TEMPLATE
                .replace("@START@", &start)
                .replace("@DURATION@", &duration)
                .replace("@COUNT@", &count)
                .replace("@LABEL@", &label)
                .replace("@TOPIC@", &topic)
                .replace("@INTERVAL@", &interval)
                .replace("@FIELD@", &field);
            for (i, v) in f.iter().enumerate() {
                t = t.replace(&format!("@F{}@", i + 1), v);
            }
            t
        })
}

/// What an accepted config must satisfy.
fn check_accepted(text: &str) -> Result<(), TestCaseError> {
    let c = match parse_str(text, Path::new(".")) {
        Ok(c) => c,
        Err(ParseError::Invalid(p)) => {
            prop_assert!(!p.0.is_empty());
            for q in &p.0 {
                prop_assert!(!q.message.is_empty(), "a problem without a message: {q:?}");
            }
            return Ok(());
        }
        Err(ParseError::Syntax(s)) => {
            prop_assert!(!s.is_empty());
            return Ok(());
        }
    };
    if let Some(start) = c.run.start_ms {
        prop_assert!(start < LAST_SIM_MS);
        prop_assert!(start + c.run.duration_ms.unwrap_or(0) <= LAST_SIM_MS);
    }
    prop_assert!(c.fleet.device_count() <= u32::MAX as u64);
    for p in &c.fleet.profiles {
        prop_assert!(p.interval_ms > 0);
        for f in &p.fields {
            prop_assert!(limits::check_name("field name", &f.name).is_ok(), "{:?}", f.name);
            prop_assert!(finite(&f.generator), "{:?}", f.generator);
        }
    }
    for g in &c.fleet.groups {
        prop_assert!(g.labels.len() <= limits::MAX_LABELS);
        for (k, v) in &g.labels {
            prop_assert!(limits::check_label(k, v).is_ok(), "{k:?}={v:?}");
        }
        for part in &c.fleet.profiles[g.profile].topic.parts {
            if let TopicPart::Label(k) = part {
                prop_assert!(g.labels.contains_key(k), "topic label {k} missing");
            }
        }
    }
    Ok(())
}

/// No parameter of an accepted generator is nan or infinite.
fn finite(g: &GenSpec) -> bool {
    match g {
        GenSpec::Gaussian { mean, stddev } => mean.is_finite() && stddev.is_finite(),
        GenSpec::Brownian(b) => {
            [b.start, b.mean, b.drift, b.volatility, b.mean_reversion].iter().all(|x| x.is_finite())
                && b.min.is_none_or(f64::is_finite)
                && b.max.is_none_or(f64::is_finite)
        }
        GenSpec::Diurnal { baseline, amplitude, peak_hour, noise_stddev } => {
            [baseline, amplitude, peak_hour, noise_stddev].iter().all(|x| x.is_finite())
        }
        GenSpec::Static { number, json } => {
            number.is_none_or(f64::is_finite) && !json.contains("null")
        }
        GenSpec::Composite(parts) => parts.iter().all(finite),
        GenSpec::Markov(_) | GenSpec::Correlated { .. } => true,
        GenSpec::Derived(e) => e.ops.iter().all(|op| match op {
            crate::sim::expr::Op::Const(c) => c.is_finite(),
            _ => true,
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn nasty_values_in_every_key_are_refused_or_runnable(text in fleet_text()) {
        check_accepted(&text)?;
    }

    #[test]
    fn byte_mutations_never_panic_the_loader(
        base in fleet_text(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..8, "[ -~\n]{0,6}"), 1..6),
    ) {
        let mut bytes = base.into_bytes();
        for (at, cut, insert) in edits {
            let i = at.index(bytes.len().max(1)).min(bytes.len());
            let j = (i + cut).min(bytes.len());
            bytes.splice(i..j, insert.bytes());
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        check_accepted(&text)?;
    }
}
