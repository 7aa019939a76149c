//! Profile keys for fleets that behave like real ones: `report` (on_change with deadbands and a
//! heartbeat), `events`, `availability`, `sleep`, and the fields computed from others
//! (`derived`, `correlated_gaussian`). Every problem is recorded with its TOML path and value.

use super::keys;
use crate::sim::behaviour::{Availability, Behaviour, EventSpec, ReportMode, Sleep};
use crate::sim::correlated::{CorrelatedGroup, MAX_MEMBERS, cholesky_psd};
use crate::sim::expr::Expr;
use crate::sim::generator::GenSpec;
use crate::sim::payload;
use crate::sim::profile::{FieldSpec, TopicTemplate};
use crate::walk::{Problems, Table, join, show};
use toml::Value;

/// A correlated group read from its field table, before field indices are known.
pub(super) struct GroupDraft {
    pub name: String,
    pub path: String,
    pub members: Vec<String>,
    pub means: Vec<f64>,
    pub factor: Vec<f64>,
    pub decimals: Option<u32>,
    pub deadband: Option<f64>,
}

/// A derived field read from its table, compiled once every field is known.
pub(super) struct DerivedDraft {
    pub name: String,
    pub path: String,
    pub source: String,
}

/// The `type` of a field table, without marking it read.
pub(super) fn field_type<'a>(t: &Table<'a>) -> Option<&'a str> {
    t.table.get("type").and_then(Value::as_str)
}

/// `deadband`: a non-negative number.
pub(super) fn deadband(t: &mut Table<'_>, p: &mut Problems) -> Option<f64> {
    let v = t.f64("deadband", p)?;
    if !(v >= 0.0 && v.is_finite()) {
        p.add(t.path_of("deadband"), format!("must be a non-negative number, got {v}"));
        return None;
    }
    Some(v)
}

/// The accepted keys of a computed field type: `type` and the catalogue's keys.
fn field_keys(kind: &str) -> Vec<&'static str> {
    let own = keys::field_kind(kind).map(keys::Variant::names).unwrap_or_default();
    ["type"].into_iter().chain(own).collect()
}

/// A `type = "derived"` field: `expr`, optional `decimals`, `deadband`.
pub(super) fn derived(name: &str, mut t: Table<'_>, p: &mut Problems) -> Option<DerivedDraft> {
    t.allow("type");
    t.allow("decimals");
    t.allow("deadband");
    let source = t.req_str("expr", p);
    let path = t.path_of("expr");
    t.finish_with(&field_keys("derived"), p);
    Some(DerivedDraft { name: name.to_string(), path, source: source?.into() })
}

fn numbers(t: &mut Table<'_>, key: &str, p: &mut Problems) -> Option<Vec<f64>> {
    let Some(a) = t.array(key, p) else {
        if !t.has(key) {
            p.add(t.path_of(key), "missing: one number per member field");
        }
        return None;
    };
    let mut out = vec![];
    for (i, v) in a.iter().enumerate() {
        match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(x) if x.is_finite() => out.push(x),
            _ => p.add(
                format!("{}[{i}]", t.path_of(key)),
                format!("expected a number, got {}", show(v)),
            ),
        }
    }
    (out.len() == a.len()).then_some(out)
}

/// A `type = "correlated_gaussian"` field: `fields`, `means`, `stddevs`, `correlation`
/// (symmetric, positive semi-definite, unit diagonal), optional `decimals` and `deadband` for
/// every member. A group with problems still names its members (`Err`), so that expressions
/// reading them are not reported as well.
pub(super) fn correlated(
    name: &str,
    mut t: Table<'_>,
    decimals: Option<u32>,
    p: &mut Problems,
) -> Result<GroupDraft, Vec<String>> {
    let before = p.0.len();
    t.allow("type");
    t.allow("decimals");
    let deadband = if t.has("deadband") { deadband(&mut t, p) } else { None };
    let members: Option<Vec<String>> = match t.array("fields", p) {
        None => {
            if !t.has("fields") {
                p.add(t.path_of("fields"), "missing: the names of the fields this group draws");
            }
            None
        }
        Some(a) => {
            let mut out: Vec<String> = vec![];
            for (i, v) in a.iter().enumerate() {
                let path = format!("{}[{i}]", t.path_of("fields"));
                match v.as_str() {
                    Some(s) if out.iter().any(|o| o == s) => {
                        p.add(path, format!("duplicate field {s:?}"))
                    }
                    Some("") => p.add(path, "a field name must not be empty"),
                    Some(s) => out.push(s.to_string()),
                    None => p.add(path, format!("expected a field name, got {}", show(v))),
                }
            }
            if a.len() < 2 || a.len() > MAX_MEMBERS {
                p.add(
                    t.path_of("fields"),
                    format!("needs 2 to {MAX_MEMBERS} fields, got {}", a.len()),
                );
            }
            (out.len() == a.len()).then_some(out)
        }
    };
    let n = members.as_ref().map(Vec::len);
    let means = numbers(&mut t, "means", p);
    let stddevs = numbers(&mut t, "stddevs", p);
    for (key, v) in [("means", &means), ("stddevs", &stddevs)] {
        if let (Some(n), Some(v)) = (n, v)
            && v.len() != n
        {
            p.add(t.path_of(key), format!("needs {n} entries (one per field), got {}", v.len()));
        }
    }
    if let Some(sd) = &stddevs {
        for (i, s) in sd.iter().enumerate() {
            if *s < 0.0 {
                p.add(
                    format!("{}[{i}]", t.path_of("stddevs")),
                    format!("must be non-negative, got {s}"),
                );
            }
        }
    }
    let cpath = t.path_of("correlation");
    let matrix: Option<Vec<Vec<f64>>> = match t.array("correlation", p) {
        None => {
            if !t.has("correlation") {
                p.add(cpath.clone(), "missing: the correlation matrix, one row per field");
            }
            None
        }
        Some(rows) => {
            let mut ok = true;
            if let Some(n) = n
                && rows.len() != n
            {
                p.add(cpath.clone(), format!("needs {n} rows (one per field), got {}", rows.len()));
                ok = false;
            }
            let mut out = vec![];
            for (i, r) in rows.iter().enumerate() {
                let rpath = format!("{cpath}[{i}]");
                let Some(cells) = r.as_array() else {
                    p.add(rpath, format!("expected an array of numbers, got {}", show(r)));
                    ok = false;
                    continue;
                };
                if cells.len() != rows.len() {
                    p.add(
                        rpath.clone(),
                        format!("needs {} entries, got {}", rows.len(), cells.len()),
                    );
                    ok = false;
                }
                let mut row = vec![];
                for (j, c) in cells.iter().enumerate() {
                    match c.as_float().or_else(|| c.as_integer().map(|i| i as f64)) {
                        Some(x) if i == j && x != 1.0 => {
                            p.add(
                                format!("{rpath}[{j}]"),
                                format!("a diagonal entry must be 1, got {x}"),
                            );
                            ok = false;
                        }
                        Some(x) if (-1.0..=1.0).contains(&x) => row.push(x),
                        _ => {
                            p.add(
                                format!("{rpath}[{j}]"),
                                format!("expected a correlation in [-1, 1], got {}", show(c)),
                            );
                            ok = false;
                        }
                    }
                }
                out.push(row);
            }
            ok.then_some(out)
        }
    };
    let factor = match &matrix {
        Some(m) => match cholesky_psd(m) {
            Ok(l) => Some(l),
            Err(e) => {
                let rows: Vec<String> = m
                    .iter()
                    .map(|r| {
                        format!("[{}]", r.iter().map(f64::to_string).collect::<Vec<_>>().join(", "))
                    })
                    .collect();
                p.add(cpath, format!("{e}; got [{}]", rows.join(", ")));
                None
            }
        },
        None => None,
    };
    let path = t.path.clone();
    t.finish_with(&field_keys("correlated_gaussian"), p);
    let (Some(members), Some(means), Some(stddevs), Some(mut factor), true) =
        (members.clone(), means, stddevs, factor, p.0.len() == before)
    else {
        return Err(members.unwrap_or_default());
    };
    let n = members.len();
    for i in 0..n {
        for k in 0..n {
            factor[i * n + k] *= stddevs[i];
        }
    }
    Ok(GroupDraft { name: name.to_string(), path, members, means, factor, decimals, deadband })
}

/// Adds the groups' member fields, sorts every field by name, compiles the derived
/// expressions and orders them; returns the groups and the derived evaluation order.
pub(super) fn finish_fields(
    fields: &mut Vec<FieldSpec>,
    groups: Vec<GroupDraft>,
    derived: Vec<DerivedDraft>,
    fields_path: &str,
    p: &mut Problems,
) -> (Vec<CorrelatedGroup>, Vec<usize>) {
    // Member fields: named by the group's `fields`; their values come from the group.
    for (gi, g) in groups.iter().enumerate() {
        for (mi, m) in g.members.iter().enumerate() {
            fields.push(FieldSpec {
                name: m.clone(),
                key_json: payload::key_json(m),
                generator: GenSpec::Correlated { group: gi, member: mi },
                decimals: g.decimals,
                battery: false,
                first_slot: 0,
                deadband: g.deadband,
            });
        }
    }
    for d in &derived {
        fields.push(FieldSpec {
            name: d.name.clone(),
            key_json: payload::key_json(&d.name),
            generator: GenSpec::Static { json: "null".into(), number: None },
            decimals: None,
            battery: false,
            first_slot: 0,
            deadband: None,
        });
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    for w in fields.windows(2) {
        if w[0].name == w[1].name {
            let owner = groups
                .iter()
                .find(|g| g.members.contains(&w[0].name))
                .map_or_else(|| join(fields_path, &w[0].name), |g| format!("{}.fields", g.path));
            p.add(owner, format!("field {:?} is defined twice", w[0].name));
        }
    }
    let index_of = |name: &str| fields.iter().position(|f| f.name == name);
    let mut out_groups = vec![];
    for g in groups {
        let members: Vec<usize> = g.members.iter().filter_map(|m| index_of(m)).collect();
        if members.len() == g.members.len() {
            out_groups.push(CorrelatedGroup {
                name: g.name,
                decimals: vec![g.decimals; members.len()],
                members,
                means: g.means,
                factor: g.factor,
                slot: 0,
            });
        }
    }
    // Compile each expression against the final field order.
    let mut exprs: Vec<(usize, Expr, String)> = vec![];
    for d in &derived {
        let Some(me) = index_of(&d.name) else { continue };
        let r = Expr::compile(&d.source, |name| {
            if name == d.name {
                return Err(format!("field {name:?} refers to itself"));
            }
            let Some(i) = index_of(name) else {
                let known: Vec<&str> =
                    fields.iter().map(|f| f.name.as_str()).filter(|n| *n != d.name).collect();
                return Err(format!("unknown field {name:?}; fields: {}", known.join(", ")));
            };
            let is_derived = derived.iter().any(|o| o.name == name);
            if !is_derived && !fields[i].generator.is_numeric() {
                return Err(format!("field {name:?} is not numeric"));
            }
            Ok(i)
        });
        match r {
            Ok(e) => exprs.push((me, e, d.path.clone())),
            Err(e) => p.add(d.path.clone(), format!("{e} in {:?}", d.source)),
        }
    }
    // Dependencies first; a cycle is an error naming its fields.
    let mut order = vec![];
    let mut state = vec![0u8; fields.len()]; // 0 new, 1 on the path, 2 done
    fn visit(
        i: usize,
        exprs: &[(usize, Expr, String)],
        fields: &[FieldSpec],
        state: &mut [u8],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
        p: &mut Problems,
    ) -> bool {
        let Some(k) = exprs.iter().position(|e| e.0 == i) else { return true };
        match state[i] {
            2 => return true,
            1 => {
                let from = path.iter().position(|&x| x == i).unwrap_or(0);
                let mut names: Vec<&str> =
                    path[from..].iter().map(|&x| fields[x].name.as_str()).collect();
                names.push(&fields[i].name);
                p.add(
                    exprs[k].2.clone(),
                    format!("cycle between derived fields: {}", names.join(" -> ")),
                );
                return false;
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for &d in &exprs[k].1.deps {
            if !visit(d, exprs, fields, state, path, order, p) {
                return false;
            }
        }
        path.pop();
        state[i] = 2;
        order.push(i);
        true
    }
    for (i, _, _) in &exprs {
        if !visit(*i, &exprs, fields, &mut state, &mut vec![], &mut order, p) {
            break;
        }
    }
    for (i, e, _) in exprs {
        fields[i].generator = GenSpec::Derived(Box::new(e));
    }
    (out_groups, order)
}

/// `report`, `events`, `availability` and `sleep` of a profile.
pub(super) fn compile(
    t: &mut Table<'_>,
    interval_ms: Option<u64>,
    topic: Option<&TopicTemplate>,
    fields: &[FieldSpec],
    p: &mut Problems,
) -> Behaviour {
    let mut b = Behaviour::default();
    if let Some(mut r) = t.table("report", p) {
        let mode = r.str("mode", p).unwrap_or("periodic");
        let silence = if r.has("max_silence") { r.duration_ms("max_silence", p) } else { None };
        match mode {
            "periodic" => {
                if r.has("max_silence") {
                    p.add(r.path_of("max_silence"), "only applies to mode = \"on_change\"");
                }
            }
            "on_change" => {
                if let (Some(s), Some(iv)) = (silence, interval_ms)
                    && s < iv
                {
                    p.add(
                        r.path_of("max_silence"),
                        format!("must not be shorter than the interval ({iv}ms), got {s}ms"),
                    );
                }
                b.report = ReportMode::OnChange { max_silence_ms: silence };
            }
            other => p.add(
                r.path_of("mode"),
                format!("expected \"periodic\" or \"on_change\", got {other:?}"),
            ),
        }
        r.finish_with(&keys::REPORT.names(), p);
    }
    b.watch_fields(fields);
    if let Some(et) = t.table("events", p) {
        let mut names: Vec<&String> = et.table.keys().collect();
        names.sort();
        for name in names {
            let path = join(&et.path, name);
            let Some(mut e) = Table::from_value(path.clone(), &et.table[name.as_str()], p) else {
                continue;
            };
            if let Some(ev) = event(name, &mut e, topic, p) {
                b.events.push(ev);
            }
            e.finish_with(&keys::EVENT.names(), p);
        }
    }
    if let Some(mut a) = t.table("availability", p) {
        let mut dur = |key: &str, what: &str, p: &mut Problems| match a.duration_ms(key, p) {
            None if !a.has(key) => {
                p.add(a.path_of(key), format!("missing: the mean {what}, such as \"6h\""));
                None
            }
            Some(0) => {
                p.add(a.path_of(key), "must be greater than 0, got \"0s\"");
                None
            }
            other => other,
        };
        let mtbf = dur("mtbf", "time between failures", p);
        let mttr = dur("mttr", "time to repair", p);
        if let (Some(mtbf_ms), Some(mttr_ms)) = (mtbf, mttr) {
            b.availability = Some(Availability { mtbf_ms, mttr_ms });
        }
        a.finish_with(&keys::AVAILABILITY.names(), p);
    }
    if let Some(mut s) = t.table("sleep", p) {
        let period = s.duration_ms("period", p);
        let awake = s.duration_ms("awake", p);
        for (key, v) in [("period", period), ("awake", awake)] {
            if !s.has(key) {
                p.add(s.path_of(key), "missing: a duration such as \"15m\"");
            } else if v == Some(0) {
                p.add(s.path_of(key), "must be greater than 0, got \"0s\"");
            }
        }
        match (period, awake) {
            (Some(pe), Some(aw)) if aw > pe => p.add(
                s.path_of("awake"),
                format!("must not be longer than the period ({pe}ms), got {aw}ms"),
            ),
            (Some(pe), Some(aw)) if pe > 0 && aw > 0 => {
                b.sleep = Some(Sleep { period_ms: pe, awake_ms: aw })
            }
            _ => {}
        }
        s.finish_with(&keys::SLEEP.names(), p);
    }
    b
}

fn event(
    name: &str,
    e: &mut Table<'_>,
    topic: Option<&TopicTemplate>,
    p: &mut Problems,
) -> Option<EventSpec> {
    let before = p.0.len();
    let rate = match e.f64("rate_per_hour", p) {
        None if !e.has("rate_per_hour") => {
            p.add(e.path_of("rate_per_hour"), "missing: mean events per device and hour");
            None
        }
        Some(r) if !(r >= 0.0 && r.is_finite()) => {
            p.add(e.path_of("rate_per_hour"), format!("must be a non-negative number, got {r}"));
            None
        }
        other => other,
    };
    let topic_is_default = !e.has("topic");
    let topic = match e.str("topic", p) {
        Some(s) => TopicTemplate::parse(s).map_err(|err| p.add(e.path_of("topic"), err)).ok(),
        None => {
            topic.and_then(|t| TopicTemplate::parse(&format!("{}/events/{name}", t.source)).ok())
        }
    };
    let mut fields = vec![];
    if let Some(ft) = e.table("fields", p) {
        let mut names: Vec<&String> = ft.table.keys().collect();
        names.sort();
        for fname in names {
            let path = join(&ft.path, fname);
            if let Some(f) = Table::from_value(path.clone(), &ft.table[fname.as_str()], p) {
                if matches!(field_type(&f), Some("derived" | "correlated_gaussian")) {
                    p.add(
                        join(&path, "type"),
                        "event fields take plain generators (not derived or correlated_gaussian)",
                    );
                    continue;
                }
                if let Some(generator) = super::compile_generator(f, &[], p) {
                    fields.push(FieldSpec {
                        name: fname.clone(),
                        key_json: payload::key_json(fname),
                        generator,
                        decimals: None,
                        battery: false,
                        first_slot: 0,
                        deadband: None,
                    });
                }
            }
        }
    }
    if p.0.len() > before {
        return None;
    }
    let mut event_json = b"\"event\":".to_vec();
    payload::write_json_str(&mut event_json, name);
    event_json.push(b',');
    Some(EventSpec {
        name: name.to_string(),
        rate_per_hour: rate?,
        fields,
        field_slots: 0,
        topic: topic?,
        topic_is_default,
        event_json: String::from_utf8(event_json).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{ParseError, parse_str};
    use crate::sim::behaviour::{ReportMode, Watch};
    use crate::sim::generator::GenSpec;
    use std::path::Path;

    fn problems(text: &str) -> Vec<String> {
        match parse_str(text, Path::new(".")) {
            Ok(_) => vec![],
            Err(ParseError::Invalid(p)) => p.0.iter().map(|p| p.to_string()).collect(),
            Err(ParseError::Syntax(s)) => vec![format!("syntax: {s}")],
        }
    }

    /// Asserts one problem per entry of `expect` (each contained in one problem), no others.
    fn check(text: &str, expect: &[&str]) {
        let got = problems(text);
        for e in expect {
            assert!(got.iter().any(|g| g.contains(e)), "expected {e:?} in:\n{got:#?}");
        }
        assert_eq!(got.len(), expect.len(), "unexpected problem count:\n{got:#?}");
    }

    fn example() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/realistic.toml"))
            .unwrap()
    }

    #[test]
    fn the_example_fleet_compiles_with_every_feature() {
        let c = parse_str(&example(), Path::new(".")).unwrap();
        let profile = |n: &str| c.fleet.profiles.iter().find(|p| p.name == n).unwrap();
        let meter = profile("meter");
        assert_eq!(meter.behaviour.report, ReportMode::OnChange { max_silence_ms: Some(900_000) });
        let names: Vec<&str> = meter.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["current", "power"]);
        // power has a deadband; current is derived and follows it.
        assert_eq!(meter.behaviour.watch, vec![(1, Watch::Deadband(0.5))]);
        assert!(!meter.behaviour.always_changed);
        assert_eq!(meter.derived, vec![0]);
        assert_eq!(
            meter.behaviour.events[0].topic.source,
            "devices/{device_id}/telemetry/events/overheat"
        );
        // power 1 + overheat timer 1 + availability 1 + on_change (time + power) 2.
        assert_eq!(meter.slots, 5);
        let room = profile("room");
        let names: Vec<&str> = room.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["dew_gap", "humidity", "temperature"]);
        assert_eq!(room.correlated[0].members, vec![2, 1]);
        assert!(matches!(room.fields[1].generator, GenSpec::Correlated { group: 0, member: 1 }));
        assert_eq!(room.slots, 1);
    }

    #[test]
    fn every_bad_behaviour_value_is_listed_with_its_path() {
        let text = example()
            .replace("deadband = 0.5", "deadband = -0.5")
            .replace("max_silence = \"15m\"", "max_silence = \"5s\"")
            .replace("rate_per_hour = 0.5", "rate_per_hour = -2")
            .replace("mtbf = \"6h\"", "mtbf = \"0s\"")
            .replace("mttr = \"30m\"", "mttr = \"0s\"")
            .replace("awake = \"30s\"", "awake = \"16m\"")
            .replace("[[1.0, -0.7], [-0.7, 1.0]]", "[[1.0, -0.7], [0.7, 1.0]]")
            .replace("expr = \"power * 1000 / 230\"", "expr = \"power * 1000 / (230 - 230)\"");
        check(
            &text,
            &[
                "profiles.meter.fields.power.deadband: must be a non-negative number, got -0.5",
                "profiles.meter.report.max_silence: must not be shorter than the interval (10000ms), got 5000ms",
                "profiles.meter.events.overheat.rate_per_hour: must be a non-negative number, got -2",
                "profiles.meter.availability.mtbf: must be greater than 0, got \"0s\"",
                "profiles.meter.availability.mttr: must be greater than 0, got \"0s\"",
                "profiles.tracker.sleep.awake: must not be longer than the period (900000ms), got 960000ms",
                "profiles.room.fields.climate.correlation: must be symmetric: [1][0] = 0.7 but [0][1] = -0.7",
                "profiles.meter.fields.current.expr: division by a constant 0 at position 13 in \"power * 1000 / (230 - 230)\"",
            ],
        );
    }

    #[test]
    fn a_correlation_matrix_must_be_positive_semi_definite() {
        let text = example()
            .replace(
                "fields = [\"temperature\", \"humidity\"]",
                "fields = [\"temperature\", \"humidity\", \"co2\"]",
            )
            .replace("means = [22.0, 45.0]", "means = [22.0, 45.0, 600]")
            .replace("stddevs = [1.5, 5.0]", "stddevs = [1.5, 5.0, 50]")
            .replace(
                "correlation = [[1.0, -0.7], [-0.7, 1.0]]",
                "correlation = [[1.0, 0.9, 0.9], [0.9, 1.0, -0.9], [0.9, -0.9, 1.0]]",
            );
        check(
            &text,
            &[
                "profiles.room.fields.climate.correlation: is not positive semi-definite (pivot 2 is",
            ],
        );
        let text = example().replace("[[1.0, -0.7], [-0.7, 1.0]]", "[[1.0, -1.7], [-1.7, 0.5]]");
        check(
            &text,
            &[
                "correlation[0][1]: expected a correlation in [-1, 1], got -1.7",
                "correlation[1][0]: expected a correlation in [-1, 1], got -1.7",
                "correlation[1][1]: a diagonal entry must be 1, got 0.5",
            ],
        );
    }

    #[test]
    fn expressions_that_refer_to_themselves_unknown_fields_or_cycles_are_refused() {
        let expr =
            |e: &str| example().replace("expr = \"power * 1000 / 230\"", &format!("expr = {e:?}"));
        check(
            &expr("current * 2"),
            &[
                "profiles.meter.fields.current.expr: field \"current\" refers to itself at position 0",
            ],
        );
        check(
            &expr("power + watts"),
            &[
                "profiles.meter.fields.current.expr: unknown field \"watts\"; fields: power at position 8",
            ],
        );
        check(
            &expr("power *"),
            &[
                "profiles.meter.fields.current.expr: expected a number, a field name or '(', found the end at position 7",
            ],
        );
        check(&expr("power ^ 2"), &["unexpected character '^' at position 6"]);
        let cycle = example().replace(
            "expr = \"temperature - (100 - humidity) / 5\"",
            "expr = \"temperature - other\"\n[profiles.room.fields.other]\ntype = \"derived\"\nexpr = \"dew_gap * 2\"",
        );
        check(&cycle, &["cycle between derived fields: dew_gap -> other -> dew_gap"]);
    }

    #[test]
    fn member_names_must_not_clash_and_deadbands_need_numbers() {
        let text = example().replace(
            "[profiles.room.fields.dew_gap]",
            "[profiles.room.fields.humidity]\ntype = \"static\"\nvalue = 1\n[profiles.room.fields.state]\ntype = \"markov\"\nstates = [\"a\"]\ntransition_matrix = [[1.0]]\ndeadband = 1\n[profiles.room.fields.dew_gap]",
        );
        check(
            &text,
            &[
                "profiles.room.fields.climate.fields: field \"humidity\" is defined twice",
                "profiles.room.fields.state.deadband: only numeric fields take a deadband",
            ],
        );
    }
}
