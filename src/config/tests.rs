use super::*;

const GOOD: &str = r#"
[run]
seed = 42
cores = 2
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "1h"
report_dir = "target/r"

[sink.file]
path = "out/telemetry.jsonl"

[[fleet]]
profile = "temperature_sensor"
count = 1000
labels = { site = "berlin" }

[profiles.temperature_sensor]
protocol = "file"
topic = "devices/{device_id}/telemetry"
interval = "5s"
labels = { category = "environmental", firmware = "1.2.0" }

[profiles.temperature_sensor.fields.temperature]
type = "diurnal"
baseline = 22.0
amplitude = 5.0
peak_hour = 14
noise_stddev = 0.3

[profiles.temperature_sensor.fields.humidity]
type = "brownian"
start = 55.0
mean = 55.0
volatility = 0.5
mean_reversion = 0.1
min = 20.0
max = 95.0

[profiles.temperature_sensor.fields.door]
type = "markov"
states = ["closed", "open"]
transition_matrix = [[0.95, 0.05], [0.30, 0.70]]
initial_state = "closed"

[profiles.temperature_sensor.fields.firmware]
type = "static"
value = "1.2.0"
"#;

fn problems(text: &str) -> Vec<String> {
    match parse_str(text, Path::new(".")) {
        Ok(_) => vec![],
        Err(ParseError::Invalid(p)) => p.0.iter().map(|p| p.to_string()).collect(),
        Err(ParseError::Syntax(s)) => vec![format!("syntax: {s}")],
    }
}

/// Asserts that `text` fails with a problem containing each of `expect`, and with no others.
fn check(text: &str, expect: &[&str]) {
    let got = problems(text);
    for e in expect {
        assert!(
            got.iter().any(|g| g.contains(e)),
            "expected a problem containing {e:?}, got:\n{got:#?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "unexpected problem count:\n{got:#?}");
}

#[test]
fn the_issue_example_compiles() {
    let c = parse_str(GOOD, Path::new(".")).unwrap();
    assert_eq!(c.run.seed, Some(42));
    assert_eq!(c.run.cores, Some(2));
    assert_eq!(c.run.clock, ClockMode::Virtual);
    assert_eq!(c.run.duration_ms, Some(3_600_000));
    assert_eq!(c.run.start_ms, Some(1_773_446_400_000));
    let prof = &c.fleet.profiles[0];
    assert_eq!(prof.interval_ms, 5000);
    let names: Vec<&str> = prof.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["door", "firmware", "humidity", "temperature"]);
    assert_eq!(prof.slots, 3);
    let g = &c.fleet.groups[0];
    assert_eq!(g.labels["site"], "berlin");
    assert_eq!(g.labels["category"], "environmental");
    assert_eq!(g.labels["device_type"], "temperature_sensor");
}

#[test]
fn every_problem_is_listed_with_its_path_and_value() {
    let text = GOOD
        .replace("count = 1000", "count = 0")
        .replace("interval = \"5s\"", "interval = \"0s\"")
        .replace("min = 20.0", "min = 99.0")
        .replace("[[0.95, 0.05], [0.30, 0.70]]", "[[0.95, 0.05], [0.30]]")
        .replace("clock = \"virtual\"", "clock = \"sundial\"\ncolour = \"blue\"")
        .replace("noise_stddev = 0.3", "noise_stddev = \"high\"");
    check(
        &text,
        &[
            "fleet[0].count: must be between 1 and 100000000, got 0",
            "profiles.temperature_sensor.interval: must be greater than 0",
            "profiles.temperature_sensor.fields.humidity.min: min (99) must not be greater than max (95)",
            "profiles.temperature_sensor.fields.humidity.start: start (55) must lie within",
            "profiles.temperature_sensor.fields.door.transition_matrix[1]: needs 2 entries (one per state), got 1 (ragged matrix)",
            "run.clock: expected \"realtime\" or \"virtual\", got \"sundial\"",
            "run.colour: unknown key (value \"blue\")",
            "profiles.temperature_sensor.fields.temperature.noise_stddev: expected a number, got a string \"high\"",
        ],
    );
}

#[test]
fn markov_rows_must_sum_to_one() {
    check(
        &GOOD.replace("[[0.95, 0.05], [0.30, 0.70]]", "[[0.9, 0.05], [0.30, 0.70]]"),
        &["transition_matrix[0]: probabilities must sum to 1, got 0.9500000000000001"],
    );
    check(
        &GOOD.replace("[[0.95, 0.05], [0.30, 0.70]]", "[[0.95, 0.05]]"),
        &["needs 2 rows (one per state), got 1"],
    );
    check(
        &GOOD.replace("initial_state = \"closed\"", "initial_state = \"ajar\""),
        &["\"ajar\" is not one of the states"],
    );
}

#[test]
fn unknown_profiles_protocols_and_generators_are_named() {
    check(
        &GOOD.replace("profile = \"temperature_sensor\"", "profile = \"thermo\""),
        &["fleet[0].profile: unknown profile \"thermo\"; defined profiles: temperature_sensor"],
    );
    check(
        &GOOD.replace("protocol = \"file\"", "protocol = \"zigbee\""),
        &["unknown protocol \"zigbee\""],
    );
    check(
        &GOOD.replace("type = \"static\"", "type = \"fractal\""),
        &["unknown generator \"fractal\""],
    );
}

#[test]
fn missing_generator_parameters_are_reported() {
    check(&GOOD.replace("baseline = 22.0\n", ""), &["fields.temperature.baseline: missing"]);
    check(&GOOD.replace("value = \"1.2.0\"", ""), &["fields.firmware.value: missing"]);
    check(
        &GOOD.replace("amplitude = 5.0", "amplitude = 5.0\nvolume = 3"),
        &["fields.temperature.volume: unknown key (value 3); accepted keys here:"],
    );
}

#[test]
fn file_protocol_needs_a_file_sink() {
    check(
        &GOOD.replace("[sink.file]\npath = \"out/telemetry.jsonl\"", ""),
        &["sink.file: missing"],
    );
}

#[test]
fn wrong_types_and_syntax_errors_are_reported_not_panicked() {
    check(
        &GOOD.replace("count = 1000", "count = \"many\""),
        &["fleet[0].count: expected an integer, got a string \"many\""],
    );
    check(
        &GOOD.replace("cores = 2", "cores = 0"),
        &["run.cores: must be between 1 and 1024, got 0"],
    );
    assert!(problems("[run\nseed=").iter().any(|p| p.starts_with("syntax:")));
    check("", &["fleet: missing"]);
}

#[test]
fn ids_continue_across_entries_of_one_profile() {
    let text = GOOD.replace(
        "[[fleet]]\nprofile = \"temperature_sensor\"\ncount = 1000",
        "[[fleet]]\nprofile = \"temperature_sensor\"\ncount = 3\n\n[[fleet]]\nprofile = \"temperature_sensor\"\ncount = 2",
    );
    let c = parse_str(&text, Path::new(".")).unwrap();
    assert_eq!(c.fleet.groups.len(), 2);
    assert_eq!(c.fleet.groups[1].first_ordinal, 3);
    // Fleet labels belong to their own entry only.
    assert!(!c.fleet.groups[0].labels.contains_key("site"));
    assert_eq!(c.fleet.groups[1].labels["site"], "berlin");
}

#[test]
fn composite_fields_sum_numeric_parts() {
    let text = GOOD.replace(
        "[profiles.temperature_sensor.fields.firmware]\ntype = \"static\"\nvalue = \"1.2.0\"",
        "[profiles.temperature_sensor.fields.outdoor]\ntype = \"composite\"\ndecimals = 1\nparts = [{ type = \"diurnal\", baseline = 10, amplitude = 8, peak_hour = 15 }, { type = \"gaussian\", mean = 0, stddev = 0.5 }]",
    );
    let c = parse_str(&text, Path::new(".")).unwrap();
    let f = c.fleet.profiles[0].fields.iter().find(|f| f.name == "outdoor").unwrap();
    assert_eq!(f.generator.slots(), 2);
    assert_eq!(f.decimals, Some(1));
    check(
        &text.replace(
            "type = \"gaussian\", mean = 0, stddev = 0.5",
            "type = \"markov\", states = [\"a\"], transition_matrix = [[1.0]]",
        ),
        &["parts[1]: composite parts must be numeric"],
    );
}

#[test]
fn profiles_can_live_in_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("thermo.toml"),
        "protocol = \"null\"\ninterval = \"1s\"\n[fields.t]\ntype = \"gaussian\"\nmean = 1\nstddev = 0\n",
    )
    .unwrap();
    let text = "[[fleet]]\nprofile = \"thermo.toml\"\ncount = 2\n";
    let c = parse_str(text, dir.path()).unwrap();
    assert_eq!(c.fleet.profiles[0].name, "thermo");
    let missing = parse_str("[[fleet]]\nprofile = \"nope.toml\"\ncount = 2\n", dir.path());
    assert!(
        matches!(missing, Err(ParseError::Invalid(p)) if p.0[0].message.contains("cannot read profile file"))
    );
}

#[test]
fn start_times_the_clock_cannot_hold_are_refused() {
    // 2^46 ms: the wheel clamped every deadline there and published one timestamp forever.
    check(
        &GOOD.replace("2026-03-14T00:00:00Z", "4199-11-24T01:22:57.664Z"),
        &["run.start_time: 4199-11-24T01:22:57.664Z is too far ahead"],
    );
    check(
        &GOOD.replace("2026-03-14T00:00:00Z", "4099-12-31T23:30:00Z"),
        &["run.duration: a run of 1h from 4099-12-31T23:30:00.000Z would end after"],
    );
    assert!(problems(&GOOD.replace("2026-03-14T00:00:00Z", "4099-12-31T22:59:59Z")).is_empty());
}

/// GOOD with one more `[run]` line.
fn good_with_run_line(line: &str) -> String {
    GOOD.replace("report_dir = \"target/r\"", &format!("report_dir = \"target/r\"\n{line}"))
}

#[test]
fn timer_slack_is_a_bounded_duration() {
    let with = |v: &str| good_with_run_line(&format!("timer_slack = {v}"));
    check(&with("\"101ms\""), &["run.timer_slack: must be at most 100ms, got 101ms"]);
    check(&with("\"soon\""), &["run.timer_slack"]);
    check(&with("5"), &["run.timer_slack"]);
    let Ok(c) = parse_str(&with("\"5ms\""), Path::new(".")) else { panic!("5ms is valid") };
    assert_eq!(c.run.timer_slack_ms, 5);
    let Ok(c) = parse_str(GOOD, Path::new(".")) else { panic!("GOOD is valid") };
    assert_eq!(c.run.timer_slack_ms, 0, "off unless asked for");
}

#[test]
fn pin_is_on_unless_turned_off() {
    let with = |v: &str| good_with_run_line(&format!("pin = {v}"));
    check(&with("\"no\""), &["run.pin"]);
    let Ok(c) = parse_str(&with("false"), Path::new(".")) else { panic!("false is valid") };
    assert!(!c.run.pin);
    let Ok(c) = parse_str(GOOD, Path::new(".")) else { panic!("GOOD is valid") };
    assert!(c.run.pin, "pinned by default");
}

#[test]
fn nan_and_infinite_parameters_are_refused() {
    let cases = [
        (
            "baseline = 22.0",
            "baseline = inf",
            "fields.temperature.baseline: must be a finite number, got inf",
        ),
        (
            "amplitude = 5.0",
            "amplitude = -inf",
            "fields.temperature.amplitude: must be a finite number, got -inf",
        ),
        ("min = 20.0", "min = nan", "fields.humidity.min: must be a finite number, got NaN"),
        ("start = 55.0", "start = nan", "fields.humidity.start: must be a finite number, got NaN"),
        ("mean = 55.0", "mean = nan", "fields.humidity.mean: must be a finite number, got NaN"),
        (
            "value = \"1.2.0\"",
            "value = [1.0, nan]",
            "fields.firmware.value: must not contain nan or inf",
        ),
    ];
    for (from, to, want) in cases {
        check(&GOOD.replace(from, to), &[want]);
    }
}

#[test]
fn a_topic_label_the_devices_lack_is_refused() {
    let text = GOOD.replace(
        "topic = \"devices/{device_id}/telemetry\"",
        "topic = \"s/{labels.site}/{labels.nosuch}\"",
    );
    check(
        &text,
        &[
            "fleet[0].labels: the topic \"s/{labels.site}/{labels.nosuch}\" of profile \"temperature_sensor\" uses {labels.nosuch}",
        ],
    );
    // Labels from the profile, the fleet entry and device_type all count.
    let ok = GOOD.replace(
        "topic = \"devices/{device_id}/telemetry\"",
        "topic = \"{labels.site}/{labels.category}/{labels.device_type}\"",
    );
    assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
}

#[test]
fn names_ids_and_labels_are_bounded() {
    check(
        &GOOD.replace(
            "[profiles.temperature_sensor.fields.firmware]",
            "[profiles.temperature_sensor.fields.\"\"]",
        ),
        &["fields.\"\": field name must not be empty"],
    );
    let long = "x".repeat(crate::limits::MAX_LABEL_VALUE_BYTES + 1);
    check(
        &GOOD.replace("site = \"berlin\"", &format!("site = \"{long}\"")),
        &["fleet[0].labels.site: label \"site\" has a value of 1025 bytes"],
    );
    let many: Vec<String> = (0..100).map(|i| format!("k{i} = \"v\"")).collect();
    check(
        &GOOD.replace("site = \"berlin\"", &many.join(", ")),
        &["fleet[0].labels: 100 labels, more than the 64 allowed"],
    );
    check(
        &GOOD.replace("site = \"berlin\"", "site = \"a\\nb\""),
        &["fleet[0].labels.site: label \"site\" has a value with the control character U+000A"],
    );
}

#[test]
fn profile_paths_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::write(dir.path().join("big.toml"), vec![b'#'; 2 << 20]).unwrap();
    for (name, want) in [
        ("pipe.toml", "not a regular file"),
        ("/dev/zero", "not a regular file"),
        ("big.toml", "2097152 bytes, more than the 1048576 allowed"),
    ] {
        let text = format!("[[fleet]]\nprofile = \"{name}\"\ncount = 2\n");
        let got = problems_in(&text, dir.path());
        assert!(got.len() == 1 && got[0].contains(want), "{name}: {got:?}");
    }
}

fn problems_in(text: &str, base: &Path) -> Vec<String> {
    match parse_str(text, base) {
        Ok(_) => vec![],
        Err(ParseError::Invalid(p)) => p.0.iter().map(|p| p.to_string()).collect(),
        Err(ParseError::Syntax(s)) => vec![format!("syntax: {s}")],
    }
}
