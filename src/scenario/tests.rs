use super::*;
use crate::config::Overrides;
use crate::shard::command::{Action, Selection};
use crate::shard::timeline::{Cue, Op, Phase};

const FLEET: &str = r#"
[run]
seed = 1
clock = "virtual"
start_time = "2026-01-01T00:00:00Z"

[sink.file]
path = "out.jsonl"

[[fleet]]
profile = "thermo"
count = 3
labels = { site = "a" }

[profiles.thermo]
protocol = "file"
interval = "1s"
fields.t = { type = "gaussian", mean = 20, stddev = 1 }
"#;

fn load_str(scenario: &str) -> Result<(Config, Scenario), String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fleet.toml");
    let s = dir.path().join("s.toml");
    std::fs::write(&f, FLEET).unwrap();
    std::fs::write(&s, scenario).unwrap();
    load(&s, Some(&f), &Overrides::default()).map_err(|e| e.to_string())
}

fn ids(a: &Cue) -> Vec<String> {
    match a {
        Cue::Spawn { ids, .. } => ids.clone(),
        Cue::Apply { selection: Selection::Ids(ids), .. } => ids.clone(),
        other => panic!("no ids in {other:?}"),
    }
}

#[test]
fn repeat_expands_with_the_index_in_every_string() {
    let (_, s) = load_str(
        r#"
        duration = "1m"
        [[step]]
        at = "10s"
        spawn = { profile = "thermo", count = 2, labels = { batch = "b{i}" } }
        repeat = { times = 3, every = "5s" }
        "#,
    )
    .unwrap();
    let times: Vec<u64> = s.timeline.iter().map(|t| t.at_ms).collect();
    assert_eq!(times, [10_000, 15_000, 20_000]);
    // Ids continue after the fleet's own devices of the profile (thermo-0000..0002).
    assert_eq!(ids(&s.timeline[0].cue), ["thermo-0003", "thermo-0004"]);
    assert_eq!(ids(&s.timeline[2].cue), ["thermo-0007", "thermo-0008"]);
    let Cue::Spawn { labels, .. } = &s.timeline[1].cue else { panic!() };
    assert_eq!(labels["batch"], "b1");
    assert_eq!(labels["device_type"], "thermo");
}

#[test]
fn spawns_over_a_window_are_spread_evenly() {
    let (_, s) = load_str(
        r#"
        [[step]]
        at = "1m"
        spawn = { profile = "thermo", count = 4, over = "2m" }
        "#,
    )
    .unwrap();
    let times: Vec<u64> = s.timeline.iter().map(|t| t.at_ms).collect();
    assert_eq!(times, [60_000, 90_000, 120_000, 150_000]);
    // The default duration is the end of the last step: the end of the spread.
    assert_eq!(s.duration_ms, 180_000);
}

#[test]
fn batches_walk_the_matching_devices_in_id_order() {
    let (_, s) = load_str(
        r#"
        duration = "1h"
        [[step]]
        at = "0s"
        spawn = { profile = "thermo", count = 3, labels = { site = "b" } }
        [[step]]
        at = "1m"
        fault = { type = "disconnect", duration = "30s", params = { reason = "firmware_update" } }
        batches = { selector = "device_type=thermo", size = 2, every = "2m" }
        "#,
    )
    .unwrap();
    let faults: Vec<(u64, Vec<String>)> = s
        .timeline
        .iter()
        .filter(|t| matches!(t.cue, Cue::Apply { .. }))
        .map(|t| (t.at_ms, ids(&t.cue)))
        .collect();
    assert_eq!(
        faults,
        [
            (60_000, vec!["thermo-0000".to_string(), "thermo-0001".into()]),
            (180_000, vec!["thermo-0002".into(), "thermo-0003".into()]),
            (300_000, vec!["thermo-0004".into(), "thermo-0005".into()]),
        ]
    );
    let Cue::Apply { op: Op { action: Action::Fault(spec), reason, .. }, .. } = &s.timeline[1].cue
    else {
        panic!()
    };
    assert_eq!(reason.as_deref(), Some("firmware_update"));
    assert_eq!(spec.duration_ms, 30_000);
}

#[test]
fn batches_see_devices_stopped_and_relabelled_before_them() {
    let (_, s) = load_str(
        r#"
        duration = "1h"
        [[step]]
        at = "0s"
        stop = { ids = ["thermo-0001"] }
        [[step]]
        at = "0s"
        update = { selector = "site=a", labels = { site = "z" } }
        [[step]]
        at = "1m"
        pause = {}
        batches = { selector = "site=z", size = 10, every = "1m" }
        "#,
    )
    .unwrap();
    let last = s.timeline.last().unwrap();
    assert_eq!(ids(&last.cue), ["thermo-0000", "thermo-0002"]);
}

#[test]
fn phases_run_until_the_next_phase_or_the_end() {
    let (_, s) = load_str(
        r#"
        duration = "20m"
        [[step]]
        at = "0s"
        phase = "ramp"
        [[step]]
        at = "5m"
        phase = "steady"
        [[step]]
        at = "6m"
        log = "halfway"
        [[threshold]]
        metric = "latency_p99"
        max = "50ms"
        phase = "steady"
        "#,
    )
    .unwrap();
    assert_eq!(
        s.phases,
        [
            Phase { name: "ramp".into(), start_ms: 0, end_ms: 300_000 },
            Phase { name: "steady".into(), start_ms: 300_000, end_ms: 1_200_000 },
        ]
    );
    assert_eq!(Scenario::phase_at(&s.phases, 299_999), Some(0));
    assert_eq!(Scenario::phase_at(&s.phases, 300_000), Some(1));
    assert_eq!(Scenario::phase_at(&s.phases, 1_200_000), None);
    assert_eq!(s.thresholds.len(), 1);
}

#[test]
fn scenario_profiles_merge_into_the_fleet_and_an_empty_fleet_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("own.toml");
    std::fs::write(
        &s,
        r#"
        duration = "1m"
        [sink.file]
        path = "x.jsonl"
        [profiles.lock]
        protocol = "file"
        interval = "10s"
        fields.open = { type = "static", value = false }
        [[step]]
        at = "0s"
        spawn = { profile = "lock", count = 5 }
        "#,
    )
    .unwrap();
    let (config, sc) = load(&s, None, &Overrides::default()).unwrap();
    assert_eq!(config.fleet.device_count(), 0);
    assert_eq!(config.run.duration_ms, Some(60_000));
    assert_eq!(ids(&sc.timeline[0].cue)[4], "lock-0004");
}

#[test]
fn every_bad_step_is_reported_at_once_with_its_index_path_and_value() {
    let e = load_str(
        r#"
        colour = "blue"
        [[step]]
        at = "-5s"
        spawn = { profile = "thermo", count = 1 }
        [[step]]
        at = "soon"
        log = "x"
        [[step]]
        at = "1s"
        fault = { selector = "a in (b", type = "disconnect" }
        [[step]]
        at = "1s"
        fault = { all = true, type = "meltdown" }
        [[step]]
        at = "1s"
        spawn = { profile = "nope", count = 1 }
        [[step]]
        at = "1s"
        log = "a"
        stop = { all = true }
        [[step]]
        at = "1s"
        explode = { all = true }
        [[step]]
        at = "1s"
        log = "x"
        repeat = { times = 0, every = "1s" }
        [[step]]
        at = "1s"
        fault = { all = true, type = "latency_spike", params = { latency_ms = -5 } }
        [[step]]
        at = "1s"
        fault = { all = true, type = "data_corruption", params = { mode = "melt", colour = 1 } }
        [[threshold]]
        metric = "latency_p42"
        max = "1ms"
        "#,
    )
    .unwrap_err();
    for want in [
        "s.toml",
        "colour: unknown key",
        "step[0].at: must not be negative, got \"-5s\"",
        "step[1].at: missing number",
        "\"soon\"",
        "step[2].fault.selector: label selector \"a in (b\"",
        "step[3].fault.type: unknown fault type \"meltdown\"",
        "step[4].spawn.profile: unknown profile \"nope\"; profiles of the fleet and the scenario: thermo",
        "step[5]: two actions in one step (stop, log)",
        "step[6].explode: unknown key",
        "step[6]: no action",
        "step[7].repeat.times: must be between 1 and 1000000, got 0",
        "step[8].fault: params.latency_ms: must be between 0 and 3600000, got -5",
        "step[9].fault.params.colour: unknown parameter",
        "step[9].fault: params.mode: unknown mode \"melt\"",
        "threshold[0].metric: unknown metric \"latency_p42\"",
    ] {
        assert!(e.contains(want), "{want:?} not in:\n{e}");
    }
}

#[test]
fn a_step_after_the_end_and_a_phase_used_twice_are_errors() {
    let e = load_str(
        r#"
        duration = "1m"
        [[step]]
        at = "2m"
        phase = "a"
        [[step]]
        at = "0s"
        log = "x"
        repeat = { times = 10, every = "10s" }
        "#,
    )
    .unwrap_err();
    assert!(e.contains("step[0].at: \"2m\" is after the end of the scenario"), "{e}");
    assert!(e.contains("step[1].repeat: the last repetition is at 1m30s"), "{e}");
    let e = load_str(
        "duration = \"1m\"\n[[step]]\nat = \"0s\"\nphase = \"a\"\n[[step]]\nat = \"1s\"\nphase = \"a\"\n",
    )
    .unwrap_err();
    assert!(e.contains("step[1].phase: phase \"a\" starts twice"), "{e}");
}

#[test]
fn a_profile_defined_in_both_files_and_a_missing_sink_are_errors() {
    let e = load_str(
        r#"
        [profiles.thermo]
        protocol = "null"
        interval = "1s"
        fields.t = { type = "gaussian", mean = 0, stddev = 1 }
        [profiles.mq]
        protocol = "mqtt"
        interval = "1s"
        fields.t = { type = "gaussian", mean = 0, stddev = 1 }
        [[step]]
        at = "1s"
        spawn = { profile = "mq", count = 1 }
        "#,
    )
    .unwrap_err();
    assert!(
        e.contains("profiles.thermo: profile \"thermo\" is already defined in the fleet file"),
        "{e}"
    );
    let e = load_str(
        r#"
        [profiles.mq]
        protocol = "mqtt"
        interval = "1s"
        fields.t = { type = "gaussian", mean = 0, stddev = 1 }
        [[step]]
        at = "1s"
        spawn = { profile = "mq", count = 1 }
        "#,
    )
    .unwrap_err();
    assert!(
        e.contains(
            "step[0].spawn.profile: profile \"mq\" publishes over mqtt, so [sink.mqtt] is needed"
        ),
        "{e}"
    );
}

#[test]
fn fleet_file_thresholds_may_name_the_scenarios_phases_only() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fleet.toml");
    let s = dir.path().join("s.toml");
    std::fs::write(
        &f,
        format!("{FLEET}\n[[threshold]]\nmetric = \"error_rate\"\nmax = 0\nphase = \"steady\"\n"),
    )
    .unwrap();
    std::fs::write(&s, "duration = \"1m\"\n[[step]]\nat = \"0s\"\nphase = \"ramp\"\n").unwrap();
    let e = load(&s, Some(&f), &Overrides::default()).unwrap_err().to_string();
    assert!(
        e.contains("threshold[0].phase: unknown phase \"steady\"; phases of this scenario: ramp"),
        "{e}"
    );
    std::fs::write(&s, "duration = \"1m\"\n[[step]]\nat = \"0s\"\nphase = \"steady\"\n").unwrap();
    let (c, _) = load(&s, Some(&f), &Overrides::default()).unwrap();
    assert_eq!(c.thresholds.len(), 1);
}

#[test]
fn the_timeline_is_the_same_on_every_load() {
    let text = r#"
        duration = "1h"
        [[step]]
        at = "0s"
        spawn = { profile = "thermo", count = 50, labels = { batch = "{i}" }, over = "10s" }
        repeat = { times = 4, every = "1m" }
        [[step]]
        at = "30m"
        stop = {}
        batches = { all = true, size = 7, every = "1m" }
    "#;
    let a = load_str(text).unwrap().1;
    let b = load_str(text).unwrap().1;
    assert_eq!(format!("{:?}", a.timeline), format!("{:?}", b.timeline));
}

/// A fleet with a derived field and a correlated group, for the update checks.
const LINKED: &str = r#"
[[fleet]]
profile = "meter"
count = 2
labels = { site = "m" }

[profiles.meter]
protocol = "file"
interval = "1s"
fields.power = { type = "gaussian", mean = 3, stddev = 1 }
fields.current = { type = "derived", expr = "power * 1000 / 230" }
fields.climate = { type = "correlated_gaussian", fields = ["temperature", "humidity"], means = [22.0, 45.0], stddevs = [1.5, 5.0], correlation = [[1.0, -0.7], [-0.7, 1.0]] }
"#;

fn load_linked(steps: &str) -> Result<(Config, Scenario), String> {
    load_str(&format!("duration = \"1h\"\n{steps}\n{LINKED}"))
}

fn only_update(s: &Scenario) -> Arc<crate::sim::profile::BehaviourUpdate> {
    let Some(Cue::Apply { op: Op { action: Action::Behaviour(u), .. }, .. }) =
        s.timeline.iter().map(|t| &t.cue).find(|a| matches!(a, Cue::Apply { .. }))
    else {
        panic!("no update in {:?}", s.timeline)
    };
    u.clone()
}

#[test]
fn update_takes_report_events_availability_and_sleep_like_grpc() {
    let (_, s) = load_str(
        r#"
        [[step]]
        at = "10s"
        update = { all = true, report = { mode = "on_change", max_silence = "1m" }, availability = { mtbf = "1h", mttr = "5m" }, sleep = { period = "10m", awake = "1m" }, events.alarm = { rate_per_hour = 6.0 } }
        "#,
    )
    .unwrap();
    let u = only_update(&s);
    use crate::sim::behaviour::{Availability, ReportMode, Sleep};
    assert_eq!(u.report, Some(ReportMode::OnChange { max_silence_ms: Some(60_000) }));
    assert_eq!(u.availability, Some(Some(Availability { mtbf_ms: 3_600_000, mttr_ms: 300_000 })));
    assert_eq!(u.sleep, Some(Some(Sleep { period_ms: 600_000, awake_ms: 60_000 })));
    let events = u.events.as_ref().unwrap();
    assert_eq!((events[0].name.as_str(), events[0].rate_per_hour), ("alarm", 6.0));
    // No `fields`: the device keeps its own; the update merges, as a scenario's does.
    assert!(u.keep_fields && u.merge);
    // `{}` turns a feature off.
    let (_, s) =
        load_str("[[step]]\nat = \"1s\"\nupdate = { all = true, availability = {}, sleep = {} }\n")
            .unwrap();
    let u = only_update(&s);
    assert_eq!((u.availability, u.sleep), (Some(None), Some(None)));
}

#[test]
fn update_behaviour_keys_are_checked_with_their_paths_and_values() {
    let err = load_str(
        r#"
        [[step]]
        at = "10s"
        update = { all = true, availability = { mtbf = "0s", mttr = "5m" }, fields = { t = { type = "gaussian", mean = 1, stddev = 1, deadband = -1 } }, events.alarm = { rate_per_hour = -2.0 } }
        "#,
    )
    .unwrap_err();
    for want in [
        "step[0].update.availability.mtbf",
        "step[0].update.fields.t.deadband: must be a non-negative number, got -1",
        "step[0].update.events.alarm.rate_per_hour",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
}

#[test]
fn update_that_makes_a_derived_input_non_numeric_is_refused_with_its_path() {
    let err = load_linked(
        r#"
        [[step]]
        at = "10s"
        update = { selector = "site=m", fields = { power = { type = "static", value = "off" } } }
        "#,
    )
    .unwrap_err();
    assert!(err.contains("step[0].update.fields"), "{err}");
    assert!(err.contains("\"current\""), "{err}");
    assert!(err.contains("field \"power\" is not numeric"), "{err}");
}

#[test]
fn update_that_replaces_one_member_of_a_correlated_group_is_refused() {
    let err = load_linked(
        r#"
        [[step]]
        at = "10s"
        update = { all = true, fields = { humidity = { type = "gaussian", mean = 40, stddev = 1 } } }
        "#,
    )
    .unwrap_err();
    assert!(err.contains("step[0].update.fields"), "{err}");
    assert!(err.contains("correlated group \"climate\" lost a member"), "{err}");
    assert!(err.contains("\"temperature\""), "{err}");
}

#[test]
fn update_that_brings_what_it_breaks_or_misses_the_linked_profile_is_accepted() {
    // The derived field comes along: nothing breaks.
    load_linked(
        r#"
        [[step]]
        at = "10s"
        update = { all = true, fields = { power = { type = "static", value = "off" }, current = { type = "static", value = 0 } } }
        "#,
    )
    .unwrap();
    // Only thermo devices are selected: the meter's expression is not touched.
    load_linked(
        r#"
        [[step]]
        at = "10s"
        update = { selector = "site=a", fields = { power = { type = "static", value = "off" } } }
        "#,
    )
    .unwrap();
    // A later update breaks what an earlier one added.
    let err = load_linked(
        r#"
        [[step]]
        at = "10s"
        update = { selector = "site=a", fields = { u = { type = "gaussian", mean = 1, stddev = 1 }, double = { type = "derived", expr = "u * 2" } } }
        [[step]]
        at = "20s"
        update = { selector = "site=a", fields = { u = { type = "static", value = "x" } } }
        "#,
    )
    .unwrap_err();
    assert!(err.contains("step[1].update.fields"), "{err}");
    assert!(!err.contains("step[0]"), "{err}");
}

#[test]
fn a_disconnect_step_takes_a_mode_and_a_remote_run_forwards_it() {
    use crate::sim::fault::DisconnectMode;
    let (_, s) = load_str(
        r#"
        duration = "1m"
        [[step]]
        at = "10s"
        fault = { ids = ["thermo-0000"], type = "disconnect", duration = "5s", params = { mode = "graceful" } }
        [[step]]
        at = "20s"
        fault = { ids = ["thermo-0001"], type = "disconnect", duration = "5s" }
        "#,
    )
    .unwrap();
    let spec = |i: usize| match &s.timeline[i].cue {
        Cue::Apply { op: Op { action: Action::Fault(spec), .. }, .. } => spec.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(spec(0).disconnect, DisconnectMode::Graceful);
    assert_eq!(spec(1).disconnect, DisconnectMode::Abrupt);
    // `scenario run --runtime` sends the mode in InjectFault's parameters, and the runtime reads
    // back the same spec.
    for i in 0..2 {
        let params = crate::cli::remote::fault_params(&spec(i), &None);
        let req = crate::control::proto::InjectFaultRequest {
            selector: None,
            fault_type: spec(i).kind.type_number(),
            duration: None,
            parameters: Some(params),
        };
        let back = crate::control::spec::fault_spec(&req).unwrap();
        assert_eq!(back.disconnect, spec(i).disconnect);
    }
    // A bad mode is a scenario error with its path.
    let e = load_str(
        r#"
        duration = "1m"
        [[step]]
        at = "10s"
        fault = { ids = ["thermo-0000"], type = "disconnect", params = { mode = "politely" } }
        "#,
    )
    .unwrap_err();
    assert!(e.contains("params.mode: unknown mode \"politely\""), "{e}");
}

#[test]
fn a_spawn_with_ids_spawns_exactly_those_ids_with_exactly_its_labels() {
    let (_, s) = load_str(
        r#"
        [[step]]
        at = "1s"
        spawn = { profile = "thermo", ids = ["x-1", "x-2"], labels = { site = "b" } }
        "#,
    )
    .unwrap();
    let Cue::Spawn { ids, labels, .. } = &s.timeline[0].cue else { panic!() };
    assert_eq!(ids, &["x-1", "x-2"]);
    // No profile labels and no device_type label: as SpawnDevices.
    assert_eq!(labels.iter().collect::<Vec<_>>(), [(&"site".to_string(), &"b".to_string())]);
    let e = load_str(
        r#"
        [[step]]
        at = "1s"
        spawn = { profile = "thermo", ids = ["x-1", ""], count = 2 }
        [[step]]
        at = "2s"
        spawn = { profile = "thermo", ids = [] }
        "#,
    )
    .unwrap_err();
    assert!(e.contains("step[0].spawn.count: give count or ids, not both"), "{e}");
    assert!(e.contains("step[0].spawn.ids[1]"), "{e}");
    assert!(e.contains("step[1].spawn.ids: must list at least one device id"), "{e}");
}

#[test]
fn replace_fields_makes_an_update_replace_every_field() {
    let (_, s) = load_str(
        r#"
        [[step]]
        at = "1s"
        update = { all = true, replace_fields = true, fields = { u = { type = "static", value = 1 } } }
        [[step]]
        at = "2s"
        update = { all = true, fields = { u = { type = "static", value = 1 } } }
        "#,
    )
    .unwrap();
    let merge = |i: usize| match &s.timeline[i].cue {
        Cue::Apply { op: Op { action: Action::Behaviour(u), .. }, .. } => u.merge,
        other => panic!("{other:?}"),
    };
    assert!(!merge(0));
    assert!(merge(1));
    let e = load_str(
        r#"
        [[step]]
        at = "1s"
        update = { all = true, replace_fields = true, interval = "2s" }
        "#,
    )
    .unwrap_err();
    assert!(e.contains("step[0].update.replace_fields: replaces the fields with `fields`"), "{e}");
}

#[test]
fn update_takes_the_mqtt5_block_and_refuses_sparkplug() {
    let (_, s) = load_str(
        r#"
        [[step]]
        at = "10s"
        update = { all = true, mqtt5 = { user_properties = { fw = "3.0" }, message_expiry = "30s" } }
        "#,
    )
    .unwrap();
    let u = only_update(&s);
    let m = u.mqtt5.clone().expect("an mqtt5 update").expect("a block");
    assert_eq!(m.message_expiry_s, Some(30));
    assert_eq!(m.user_properties.len(), 1);
    // The format stays the devices' own (only `mqtt5` was given).
    assert!(u.format.is_none());
    let err = load_str(
        "[[step]]\nat = \"1s\"\nupdate = { all = true, mqtt5 = { message_expiry = \"1500ms\" } }\n\
         [[step]]\nat = \"2s\"\nupdate = { all = true, format = \"sparkplug_b\" }\n",
    )
    .unwrap_err();
    assert!(err.contains("step[0].update.mqtt5.message_expiry"), "{err}");
    assert!(err.contains("step[1].update.format"), "{err}");
    assert!(err.contains("cannot make devices Sparkplug"), "{err}");
}

#[test]
fn a_script_spawns_each_cue_in_the_order_its_devices_fall_due() {
    let (_, s) = load_str(
        r#"
        duration = "1m"
        [[step]]
        at = "0s"
        spawn = { profile = "thermo", count = 200 }
        [[step]]
        at = "5s"
        log = "between"
        [[step]]
        at = "10s"
        spawn = { profile = "thermo", count = 1 }
        "#,
    )
    .unwrap();
    let mut script = s.script();
    assert!(script.spawn_order.is_empty(), "the file's order until a seed is given");
    script.order_spawns(77);
    assert_eq!(script.spawn_order.len(), 3);
    let order = script.spawn_order[0].as_ref().expect("the 200-device spawn is ordered");
    let all = ids(&s.timeline[0].cue);
    let phase = |i: u32| {
        let ds = crate::sim::device::device_seed(77, &all[i as usize]);
        crate::sim::seed::phase_ms(ds, 1_000)
    };
    assert!(order.iter().map(|&i| phase(i)).is_sorted());
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert!(sorted.into_iter().eq(0..200));
    // A log and a one-device spawn have nothing to order.
    assert!(script.spawn_order[1].is_none() && script.spawn_order[2].is_none());
}
