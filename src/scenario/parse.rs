//! Scenario file -> [`Scenario`]: every problem collected with its step index, TOML path and the
//! bad value; `repeat`, `over`, `batches` and `{i}` expanded into a sorted timeline.

use super::Scenario;
use crate::config::{Config, MAX_COUNT, MAX_INTERVAL_MS, SinkSettings};
use crate::shard::command::{Action, Selection};
use crate::shard::timeline::{Cue, Op, Phase, TimedCue};
use crate::sim::generator::GenSpec;
use crate::sim::profile::{BehaviourUpdate, Fleet, Profile, Protocol};
use crate::sim::selector::LabelSelector;
use crate::sim::time::{format_duration_ms, parse_duration_ms};
use crate::threshold::{self, check_phase};
use crate::walk::{Problems, Table, show, type_name};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use toml::Value;

/// The actions a step may hold (one per step).
pub const ACTIONS: &[&str] =
    &["spawn", "stop", "fault", "clear", "update", "pause", "resume", "log", "phase"];
const STEP_KEYS: &[&str] = &[
    "at", "repeat", "batches", "spawn", "stop", "fault", "clear", "update", "pause", "resume",
    "log", "phase",
];
const TOP_KEYS: &[&str] =
    &["name", "description", "duration", "step", "threshold", "run", "sink", "profiles", "fleet"];
/// Fault type names as a scenario writes them.
pub const FAULT_TYPES: &[&str] =
    &["disconnect", "latency_spike", "data_corruption", "battery_drain", "clock_drift"];

/// Something compiled from a step, before batches are resolved.
enum Item {
    Act(Cue),
    /// Apply `op` to the devices `target` selects at this time, `size` at a time in device-id
    /// order, one batch every `every_ms`.
    Batch {
        target: Selection,
        size: usize,
        every_ms: u64,
        op: Op,
    },
}

/// Sort key: time, then file order (step, then expansion index).
type Key = (u64, usize, u64);

struct Ctx<'a> {
    fleet: &'a Fleet,
    sinks: &'a SinkSettings,
    base: &'a Path,
    /// One shared `Arc` per fleet profile, so each shard interns it once.
    shared: BTreeMap<usize, Arc<Profile>>,
    files: BTreeMap<PathBuf, Arc<Profile>>,
    /// Profile tables as written, by name.
    sources: BTreeMap<String, Arc<toml::Table>>,
    /// Next device ordinal per profile name.
    next_ordinal: BTreeMap<String, u64>,
}

/// Merges the fleet and scenario documents, compiles the config, then the steps.
pub(super) fn compile(
    path: &Path,
    doc: &toml::Table,
    base: &Path,
    fleet: Option<(&Path, toml::Table)>,
) -> Result<(Config, Scenario), Problems> {
    let mut p = Problems::default();
    let (merged, config_base) = merge_docs(doc, base, fleet.as_ref().map(|(f, d)| (*f, d)), &mut p);
    let mut config = match crate::config::compile_doc(&merged, &config_base, true) {
        Ok(c) => c,
        Err(mut q) => {
            q.0.splice(0..0, p.0);
            return Err(q);
        }
    };
    let mut sources = BTreeMap::new();
    if let Some(Value::Table(pt)) = merged.get("profiles") {
        for (k, v) in pt {
            if let Value::Table(t) = v {
                sources.insert(k.clone(), Arc::new(t.clone()));
            }
        }
    }
    let scenario = compile_steps(path, doc, base, &mut config, fleet.map(|f| f.0), sources, &mut p);
    match scenario {
        Some(s) if p.is_empty() => Ok((config, s)),
        _ => Err(p),
    }
}

/// The fleet file's document with the scenario's `[run]`, `[sink.*]`, `[profiles.*]` and
/// `[[fleet]]` laid over it. Returns it with the folder its profile-file paths are relative to.
fn merge_docs(
    doc: &toml::Table,
    base: &Path,
    fleet: Option<(&Path, &toml::Table)>,
    p: &mut Problems,
) -> (toml::Table, PathBuf) {
    let mut merged = toml::Table::new();
    let mut config_base = base.to_path_buf();
    if let Some((f, fdoc)) = fleet {
        merged = fdoc.clone();
        config_base = f.parent().unwrap_or(Path::new(".")).to_path_buf();
    }
    for key in ["run", "sink"] {
        match (merged.get_mut(key), doc.get(key)) {
            (Some(Value::Table(into)), Some(Value::Table(from))) => {
                for (k, v) in from {
                    into.insert(k.clone(), v.clone());
                }
            }
            (_, Some(v)) => {
                merged.insert(key.into(), v.clone());
            }
            _ => {}
        }
    }
    match (merged.get_mut("profiles"), doc.get("profiles")) {
        (Some(Value::Table(into)), Some(Value::Table(from))) => {
            for (k, v) in from {
                if into.contains_key(k) {
                    let f = fleet.map(|f| f.0.display().to_string()).unwrap_or_default();
                    p.add(
                        format!("profiles.{k}"),
                        format!(
                            "profile {k:?} is already defined in the fleet file {f}; give the scenario's profile another name"
                        ),
                    );
                } else {
                    into.insert(k.clone(), v.clone());
                }
            }
        }
        (_, Some(v)) => {
            merged.insert("profiles".into(), v.clone());
        }
        _ => {}
    }
    if let Some(Value::Array(entries)) = doc.get("fleet") {
        // Profile files named by the scenario's entries are relative to the scenario's folder.
        let entries: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if let Some(Value::String(s)) = e.get_mut("profile")
                    && (s.ends_with(".toml") || s.contains('/'))
                {
                    *s = base.join(&*s).display().to_string();
                }
                e
            })
            .collect();
        match merged.get_mut("fleet") {
            Some(Value::Array(into)) => into.extend(entries),
            _ => {
                merged.insert("fleet".into(), Value::Array(entries));
            }
        }
    } else if let Some(v) = doc.get("fleet") {
        merged.insert("fleet".into(), v.clone());
    }
    (merged, config_base)
}

fn compile_steps(
    path: &Path,
    doc: &toml::Table,
    base: &Path,
    config: &mut Config,
    fleet_path: Option<&Path>,
    sources: BTreeMap<String, Arc<toml::Table>>,
    p: &mut Problems,
) -> Option<Scenario> {
    let mut top = Table::new("", doc);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = top.str("name", p).map(str::to_string).unwrap_or(stem);
    let description = top.str("description", p).map(str::to_string).unwrap_or_default();
    let duration_ms = match top.duration_ms("duration", p) {
        Some(0) => {
            p.add("duration", "must be greater than 0, got \"0s\"");
            None
        }
        d => d,
    };
    for k in ["run", "sink", "profiles", "fleet"] {
        top.allow(k);
    }
    let thresholds_v = top.get("threshold");
    let steps_v = top.get("step");
    top.finish_with(TOP_KEYS, p);

    let mut ctx = Ctx {
        fleet: &config.fleet,
        sinks: &config.sinks,
        base,
        shared: BTreeMap::new(),
        files: BTreeMap::new(),
        sources,
        next_ordinal: BTreeMap::new(),
    };
    for g in &config.fleet.groups {
        let name = &config.fleet.profiles[g.profile].name;
        let e = ctx.next_ordinal.entry(name.clone()).or_insert(0);
        *e = (*e).max(g.first_ordinal + g.count);
    }

    let mut items: BTreeMap<Key, Item> = BTreeMap::new();
    let mut ends: Vec<(usize, u64)> = vec![];
    let mut phase_steps: Vec<(usize, String)> = vec![];
    let steps = match steps_v {
        None => {
            p.add("step", "missing: add at least one [[step]] (at = ..., and one action)");
            vec![]
        }
        Some(Value::Array(a)) if a.is_empty() => {
            p.add("step", "must list at least one step");
            vec![]
        }
        Some(Value::Array(a)) => a.clone(),
        Some(v) => {
            p.add(
                "step",
                format!("expected an array of tables ([[step]]), got {} {}", type_name(v), show(v)),
            );
            vec![]
        }
    };
    for (si, v) in steps.iter().enumerate() {
        let Some(mut t) = Table::from_value(format!("step[{si}]"), v, p) else { continue };
        let at = step_time(&mut t, p);
        let present: Vec<&str> = ACTIONS.iter().copied().filter(|a| t.has(a)).collect();
        match present.len() {
            0 => p.add(t.path.clone(), format!("no action: give one of {}", ACTIONS.join(", "))),
            1 => {}
            _ => p.add(
                t.path.clone(),
                format!(
                    "two actions in one step ({}); give one action per step",
                    present.join(", ")
                ),
            ),
        }
        let repeat = t.table("repeat", p).and_then(|r| repeat(r, p));
        let batches = t.table("batches", p).and_then(|b| batches(b, p));
        for a in ACTIONS {
            t.allow(a);
        }
        let (apath_base, table) = (t.path.clone(), t.table);
        t.finish_with(STEP_KEYS, p);
        if present.len() > 1 {
            // Still check each action, so that every problem is listed at once.
            for kind in &present {
                let path = crate::walk::join(&apath_base, kind);
                action(kind, &table[*kind], &path, batches.is_some(), &mut ctx, p);
            }
        }
        let [kind] = present[..] else { continue };
        let apath = crate::walk::join(&apath_base, kind);
        let raw = &table[kind];
        let (times, every) = repeat.unwrap_or((1, 0));
        if let (Some(at), Some(d), Some((times, every))) = (at, duration_ms, repeat)
            && at + (times - 1) * every > d
        {
            p.add(
                format!("step[{si}].repeat"),
                format!(
                    "the last repetition is at {}, after the end of the scenario (duration = {:?})",
                    format_duration_ms(at + (times - 1) * every),
                    format_duration_ms(d)
                ),
            );
        }
        if let (Some(at), Some(d)) = (at, duration_ms)
            && at > d
        {
            p.add(
                format!("step[{si}].at"),
                format!(
                    "{:?} is after the end of the scenario (duration = {:?})",
                    format_duration_ms(at),
                    format_duration_ms(d)
                ),
            );
        }
        let templated = has_template(raw);
        for i in 0..times {
            let v = if templated { template(raw, i) } else { raw.clone() };
            let before = p.0.len();
            let at_i = at.unwrap_or(0) + i * every;
            let parsed = action(kind, &v, &apath, batches.is_some(), &mut ctx, p);
            if p.0.len() > before {
                if i > 0 {
                    for q in &mut p.0[before..] {
                        q.message.push_str(&format!(" (repetition i = {i})"));
                    }
                }
                break;
            }
            let sub = i << 32;
            for (k, (offset, item, end)) in parsed.into_iter().enumerate() {
                let item = match (item, &batches) {
                    (Item::Act(Cue::Apply { op, .. }), Some((target, size, every_ms))) => {
                        Item::Batch { target: target.clone(), size: *size, every_ms: *every_ms, op }
                    }
                    (item, _) => item,
                };
                if let Item::Act(Cue::Phase(_)) = &item
                    && let Value::String(n) = &v
                {
                    phase_steps.push((si, n.clone()));
                }
                ends.push((si, at_i + offset + end));
                items.insert((at_i + offset, si, sub + k as u64), item);
            }
        }
    }
    let phase_names: Vec<String> = phase_steps.iter().map(|x| x.1.clone()).collect();
    let thresholds = thresholds_v
        .map(|v| threshold::parse_list(v, "threshold", Some(&phase_names), p))
        .unwrap_or_default();
    for (i, t) in config.thresholds.iter().enumerate() {
        if let Some(ph) = &t.phase {
            let f = fleet_path.map(|f| f.display().to_string()).unwrap_or_default();
            check_phase(ph, &phase_names, format!("{f}: threshold[{i}].phase"), p);
        }
    }
    if !p.is_empty() {
        return None;
    }
    let mut timeline = resolve_batches(items, &config.fleet, &mut ends, p);
    if !p.is_empty() {
        return None;
    }
    let last = ends.iter().map(|e| e.1).max().unwrap_or(0);
    let duration_ms = match duration_ms {
        Some(d) => d,
        None if last == 0 => {
            p.add("duration", "missing, and every step is at 0s: give the run's length, such as duration = \"10m\"");
            return None;
        }
        None => last,
    };

    // Phases, in time order; each lasts until the next one or the end.
    let mut phases: Vec<Phase> = vec![];
    let mut names: BTreeSet<String> = BTreeSet::new();
    for ta in &mut timeline {
        if let Cue::Phase(ix) = &mut ta.cue {
            let name = phase_steps.iter().find(|(s, _)| *s == ta.step).map(|x| x.1.clone());
            let name = name.unwrap_or_default();
            if !names.insert(name.clone()) {
                p.add(
                    format!("step[{}].phase", ta.step),
                    format!("phase {name:?} starts twice; give each phase its own name"),
                );
            }
            if let Some(prev) = phases.last_mut() {
                prev.end_ms = ta.at_ms;
            }
            *ix = phases.len();
            phases.push(Phase { name, start_ms: ta.at_ms, end_ms: duration_ms });
        }
    }
    if !p.is_empty() {
        return None;
    }
    Some(Scenario {
        name,
        description,
        path: path.to_path_buf(),
        duration_ms,
        steps: steps.len(),
        timeline: Arc::new(timeline),
        phases,
        thresholds,
        profile_sources: ctx.sources,
    })
}

fn step_time(t: &mut Table<'_>, p: &mut Problems) -> Option<u64> {
    let path = t.path_of("at");
    match t.get("at") {
        None => {
            p.add(path, "missing: when the step happens, as a sim-time offset such as at = \"5m\"");
            None
        }
        Some(Value::String(s)) if s.trim_start().starts_with('-') => {
            p.add(path, format!("must not be negative, got {s:?}"));
            None
        }
        Some(Value::String(s)) => parse_duration_ms(s).map_err(|e| p.add(path, e)).ok(),
        Some(v) => {
            p.add(
                path,
                format!(
                    "expected a duration string such as \"5m\", got {} {}",
                    type_name(v),
                    show(v)
                ),
            );
            None
        }
    }
}

fn repeat(mut t: Table<'_>, p: &mut Problems) -> Option<(u64, u64)> {
    let times = match t.get("times") {
        None => {
            p.add(t.path_of("times"), "missing: how many times, such as times = 10");
            None
        }
        Some(Value::Integer(n)) if (1..=1_000_000).contains(n) => Some(*n as u64),
        Some(Value::Integer(n)) => {
            p.add(t.path_of("times"), format!("must be between 1 and 1000000, got {n}"));
            None
        }
        Some(v) => {
            p.add(
                t.path_of("times"),
                format!("expected an integer, got {} {}", type_name(v), show(v)),
            );
            None
        }
    };
    let every = t.duration_ms("every", p);
    if every == Some(0) {
        p.add(t.path_of("every"), "must be greater than 0, got \"0s\"");
    }
    if !t.has("every") && times.is_some_and(|n| n > 1) {
        p.add(t.path_of("every"), "missing: the time between repetitions, such as every = \"3s\"");
    }
    t.finish_with(&["times", "every"], p);
    Some((times?, every.filter(|e| *e > 0).or(times.filter(|n| *n == 1).map(|_| 0))?))
}

fn batches(mut t: Table<'_>, p: &mut Problems) -> Option<(Selection, usize, u64)> {
    let target = select(&mut t, true, p);
    let size = match t.get("size") {
        None => {
            p.add(t.path_of("size"), "missing: devices per batch, such as size = 100");
            None
        }
        Some(Value::Integer(n)) if *n >= 1 && *n <= MAX_COUNT => Some(*n as usize),
        Some(v) => {
            p.add(
                t.path_of("size"),
                format!("must be a whole number of at least 1, got {}", show(v)),
            );
            None
        }
    };
    let every = match (t.has("every"), t.duration_ms("every", p)) {
        (false, _) => {
            p.add(t.path_of("every"), "missing: the time between batches, such as every = \"2m\"");
            None
        }
        (true, Some(0)) => {
            p.add(t.path_of("every"), "must be greater than 0, got \"0s\"");
            None
        }
        (true, e) => e,
    };
    t.finish_with(&["selector", "all", "ids", "size", "every"], p);
    Some((target?, size?, every?))
}

/// Reads `selector`, `all = true` or `ids = [...]` (exactly one when `required`; none allowed
/// otherwise).
fn select(t: &mut Table<'_>, required: bool, p: &mut Problems) -> Option<Selection> {
    let given: Vec<&str> = ["selector", "all", "ids"].into_iter().filter(|k| t.has(k)).collect();
    if !required {
        for k in &given {
            p.add(
                t.path_of(k),
                "the devices come from this step's batches; leave the selection out here",
            );
            t.allow(k);
        }
        return None;
    }
    match given.len() {
        0 => {
            p.add(
                t.path.clone(),
                "missing: which devices, selector = \"k=v\", all = true or ids = [\"...\"]",
            );
            return None;
        }
        1 => {}
        _ => {
            p.add(
                t.path.clone(),
                format!("give one of selector, all, ids; got {}", given.join(", ")),
            );
            for k in &given {
                t.allow(k);
            }
            return None;
        }
    }
    match given[0] {
        "selector" => {
            let s = t.str("selector", p)?;
            if s.trim().is_empty() {
                p.add(t.path_of("selector"), "is empty; use all = true to select every device");
                return None;
            }
            match LabelSelector::parse(s) {
                Ok(sel) => Some(Selection::Labels(sel)),
                Err(e) => {
                    p.add(t.path_of("selector"), e.to_string());
                    None
                }
            }
        }
        "all" => match t.bool("all", p)? {
            true => Some(Selection::All),
            false => {
                p.add(t.path_of("all"), "only all = true is meaningful; give a selector instead");
                None
            }
        },
        _ => {
            let a = t.array("ids", p)?;
            let mut ids = vec![];
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) if !s.is_empty() => ids.push(s.to_string()),
                    _ => p.add(
                        format!("{}[{i}]", t.path_of("ids")),
                        format!("expected a device id (a non-empty string), got {}", show(v)),
                    ),
                }
            }
            if a.is_empty() {
                p.add(t.path_of("ids"), "must list at least one device id");
            }
            (ids.len() == a.len() && !ids.is_empty()).then_some(Selection::Ids(ids))
        }
    }
}

fn labels(t: &mut Table<'_>, p: &mut Problems) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(lt) = t.table("labels", p) else { return out };
    for (k, v) in lt.table {
        let path = lt.path_of(k);
        if k.is_empty() {
            p.add(path, "label keys must not be empty");
            continue;
        }
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => {
                out.insert(k.clone(), v.to_string());
            }
            other => p.add(
                path,
                format!("label values must be strings, got {} {}", type_name(other), show(other)),
            ),
        }
    }
    out
}

/// Parses one action; returns (offset from the step's time, item, how long it lasts after).
fn action(
    kind: &str,
    v: &Value,
    path: &str,
    batched: bool,
    ctx: &mut Ctx<'_>,
    p: &mut Problems,
) -> Vec<(u64, Item, u64)> {
    let one = |a: Cue| vec![(0, Item::Act(a), 0)];
    match kind {
        "log" | "phase" => {
            if batched {
                p.add(path, format!("batches applies to stop, fault, clear, update, pause and resume, not {kind}"));
            }
            match v {
                Value::String(s) if !s.trim().is_empty() => {
                    one(if kind == "log" { Cue::Log(s.clone()) } else { Cue::Phase(0) })
                }
                other => {
                    p.add(
                        path,
                        format!(
                            "expected a non-empty string ({}), got {} {}",
                            if kind == "log" { "the message" } else { "the phase's name" },
                            type_name(other),
                            show(other)
                        ),
                    );
                    vec![]
                }
            }
        }
        "spawn" => {
            if batched {
                p.add(
                    path,
                    "batches applies to stop, fault, clear, update, pause and resume, not spawn",
                );
            }
            let Some(t) = Table::from_value(path.to_string(), v, p) else { return vec![] };
            spawn(t, ctx, p)
        }
        _ => {
            let Some(mut t) = Table::from_value(path.to_string(), v, p) else { return vec![] };
            let target = select(&mut t, !batched, p);
            let mut accepted = vec!["selector", "all", "ids"];
            let mut end = 0;
            let op = match kind {
                "stop" => Some(Op::of(Action::Stop)),
                "pause" => Some(Op::of(Action::Pause(true))),
                "resume" => Some(Op::of(Action::Pause(false))),
                "fault" => {
                    accepted.extend(["type", "duration", "params"]);
                    let op = fault(&mut t, p);
                    if let Some(Op { action: Action::Fault(spec), .. }) = &op {
                        end = spec.duration_ms;
                    }
                    op
                }
                "clear" => {
                    accepted.push("type");
                    match t.str("type", p) {
                        None => Some(Op::of(Action::ClearFaults(None))),
                        Some(s) => fault_type(s, &t.path_of("type"), p)
                            .map(|ft| Op::of(Action::ClearFaults(Some(ft)))),
                    }
                }
                _ => {
                    accepted.extend(["interval", "labels", "fields", "replace_fields"]);
                    accepted.extend(crate::control::spec::BEHAVIOUR_KEYS);
                    update(&mut t, p)
                }
            };
            t.finish_with(&accepted, p);
            let target = if batched { Some(Selection::All) } else { target };
            match (target, op) {
                (Some(selection), Some(op)) => {
                    vec![(0, Item::Act(Cue::Apply { selection, op }), end)]
                }
                _ => vec![],
            }
        }
    }
}

/// A fault type's `FaultType` number (its index in [`FAULT_TYPES`], from 1).
fn fault_type(s: &str, path: &str, p: &mut Problems) -> Option<i32> {
    let t = FAULT_TYPES.iter().position(|n| *n == s).map(|i| i as i32 + 1);
    if t.is_none() {
        p.add(path, format!("unknown fault type {s:?}; accepted: {}", FAULT_TYPES.join(", ")));
    }
    t
}

/// A fault step, validated by the same code as gRPC's `InjectFault`.
fn fault(t: &mut Table<'_>, p: &mut Problems) -> Option<Op> {
    let kind = t.req_str("type", p).and_then(|s| fault_type(s, &t.path_of("type"), p));
    let duration_ms = t.duration_ms("duration", p).unwrap_or(0);
    let mut reason = None;
    let mut params = prost_types::Struct::default();
    if let Some(pt) = t.table("params", p) {
        let accepted: &[&str] = match kind.map(|k| FAULT_TYPES[k as usize - 1]) {
            Some("latency_spike") => &["latency_ms", "reason"],
            Some("data_corruption") => &["corruption_rate", "mode", "reason"],
            Some("battery_drain") => &["drain_multiplier", "reason"],
            Some("clock_drift") => &["drift_rate_ms_per_sec", "reason"],
            Some("disconnect") => &["mode", "reason"],
            _ => &["reason"],
        };
        for (k, v) in pt.table {
            if !accepted.contains(&k.as_str()) {
                p.add(
                    pt.path_of(k),
                    format!(
                        "unknown parameter (value {}); accepted here: {}",
                        show(v),
                        accepted.join(", ")
                    ),
                );
                continue;
            }
            if k == "reason" {
                match v.as_str() {
                    Some(s) => reason = Some(s.to_string()),
                    None => p.add(pt.path_of(k), format!("expected a string, got {}", show(v))),
                }
                continue;
            }
            use prost_types::value::Kind;
            let kind = match v {
                Value::Integer(i) => Kind::NumberValue(*i as f64),
                Value::Float(f) => Kind::NumberValue(*f),
                Value::String(s) => Kind::StringValue(s.clone()),
                Value::Boolean(b) => Kind::BoolValue(*b),
                other => {
                    p.add(
                        pt.path_of(k),
                        format!("expected a number or a string, got {}", show(other)),
                    );
                    continue;
                }
            };
            params.fields.insert(k.clone(), prost_types::Value { kind: Some(kind) });
        }
    }
    let kind = kind?;
    match crate::control::spec::fault_of(kind, &Some(params), duration_ms) {
        Ok(spec) => Some(Op { action: Action::Fault(spec), reason, params: None }),
        Err(message) => {
            p.add(t.path.clone(), message.replace("parameters.", "params."));
            None
        }
    }
}

fn update(t: &mut Table<'_>, p: &mut Problems) -> Option<Op> {
    use crate::control::spec::{BEHAVIOUR_KEYS, compile_update};
    let mut u = BehaviourUpdate { merge: true, keep_fields: true, ..BehaviourUpdate::default() };
    let before = p.0.len();
    if t.has("interval") {
        match t.duration_ms("interval", p) {
            Some(ms) if ms > 0 && ms <= MAX_INTERVAL_MS => u.interval_ms = Some(ms),
            Some(ms) => {
                p.add(t.path_of("interval"), format!("must be between 1ms and 30d, got {ms}ms"))
            }
            None => {}
        }
    }
    u.labels = labels(t, p);
    let fields = t.table("fields", p).map(|ft| ft.table.clone());
    // `fields`, `report`, `events`, `availability` and `sleep` as written: compiled like an
    // UpdateDeviceBehavior's params (and sent as those by a remote run).
    let mut params = toml::Table::new();
    if let Some(f) = &fields {
        params.insert("fields".into(), Value::Table(f.clone()));
    }
    for k in BEHAVIOUR_KEYS {
        if let Some(v) = t.get(k) {
            params.insert(k.into(), v.clone());
        }
    }
    // `replace_fields = true`: the fields replace every field, as UpdateDeviceBehavior's do.
    let replace = t.bool("replace_fields", p).unwrap_or(false);
    if replace && fields.is_none() {
        p.add(t.path_of("replace_fields"), "replaces the fields with `fields`, which is missing");
    }
    if !params.is_empty()
        && let Some(c) = compile_update(&t.path, fields, &params, p)
    {
        u = BehaviourUpdate { merge: !replace, interval_ms: u.interval_ms, labels: u.labels, ..c };
    }
    if u.interval_ms.is_none() && u.labels.is_empty() && params.is_empty() && p.0.len() == before {
        p.add(
            t.path.clone(),
            "nothing to change: give interval, labels, fields, report, events, availability \
             and/or sleep",
        );
    }
    let params = (!params.is_empty()).then(|| Arc::new(params));
    u.source = params.clone();
    (p.0.len() == before).then(|| Op {
        action: Action::Behaviour(Arc::new(u)),
        reason: None,
        params,
    })
}

fn spawn(mut t: Table<'_>, ctx: &mut Ctx<'_>, p: &mut Problems) -> Vec<(u64, Item, u64)> {
    let profile = t.req_str("profile", p).and_then(|name| lookup_profile(&t, name, ctx, p));
    // `ids = [...]` instead of `count`: exactly these devices, with exactly `labels` (as
    // SpawnDevices does; what `iot-sim journal export` writes).
    let given = if t.has("ids") { explicit_ids(&mut t, p) } else { None };
    let count = match t.get("count") {
        None if t.has("ids") => None,
        Some(_) if t.has("ids") => {
            p.add(t.path_of("count"), "give count or ids, not both");
            None
        }
        None => {
            p.add(t.path_of("count"), "missing: the number of devices to spawn (or ids)");
            None
        }
        Some(Value::Integer(n)) if (1..=MAX_COUNT).contains(n) => Some(*n as u64),
        Some(v) => {
            p.add(
                t.path_of("count"),
                format!("must be a whole number between 1 and {MAX_COUNT}, got {}", show(v)),
            );
            None
        }
    };
    let extra = labels(&mut t, p);
    let over = t.duration_ms("over", p).unwrap_or(0);
    t.finish_with(&["profile", "count", "ids", "labels", "over"], p);
    if let (Some(profile), Some(ids)) = (&profile, given) {
        return spread(profile, &extra, ids, over);
    }
    let (Some(profile), Some(count)) = (profile, count) else { return vec![] };
    let mut labels = profile.labels.clone();
    labels.extend(extra);
    labels.insert("device_type".into(), profile.device_type.clone());
    let next = ctx.next_ordinal.entry(profile.name.clone()).or_insert(0);
    let first = *next;
    *next += count;
    let group = crate::sim::profile::Group {
        profile: 0,
        count,
        first_ordinal: first,
        labels: BTreeMap::new(),
        labels_json: String::new(),
        ids: vec![],
    };
    let ids = (0..count)
        .map(|k| {
            let mut id = String::new();
            group.device_id(&profile, k, &mut id);
            id
        })
        .collect();
    spread(&profile, &labels, ids, over)
}

/// A spawn step's `ids`: non-empty strings, at least one.
fn explicit_ids(t: &mut Table<'_>, p: &mut Problems) -> Option<Vec<String>> {
    let a = t.array("ids", p)?;
    let mut ids = vec![];
    for (i, v) in a.iter().enumerate() {
        match v.as_str() {
            Some(s) => match crate::limits::check_device_id(s) {
                Ok(()) => ids.push(s.to_string()),
                Err(e) => p.add(format!("{}[{i}]", t.path_of("ids")), e),
            },
            None => p.add(
                format!("{}[{i}]", t.path_of("ids")),
                format!("expected a device id (a string), got {}", show(v)),
            ),
        }
    }
    if a.is_empty() {
        p.add(t.path_of("ids"), "must list at least one device id");
    }
    (ids.len() == a.len() && !ids.is_empty()).then_some(ids)
}

/// Spawn items for `ids`: `over` spreads them evenly, device k at k * over / count; devices
/// that fall on the same millisecond are spawned together.
fn spread(
    profile: &Arc<Profile>,
    labels: &BTreeMap<String, String>,
    all: Vec<String>,
    over: u64,
) -> Vec<(u64, Item, u64)> {
    let count = all.len() as u64;
    let mut out: Vec<(u64, Item, u64)> = vec![];
    let mut ids: Vec<String> = vec![];
    let mut cur = 0u64;
    for (k, id) in all.into_iter().enumerate() {
        let off = (k as u128 * over as u128 / count as u128) as u64;
        if off != cur && !ids.is_empty() {
            out.push((cur, spawn_item(profile, labels, std::mem::take(&mut ids)), 0));
        }
        cur = off;
        ids.push(id);
    }
    out.push((cur, spawn_item(profile, labels, ids), over.saturating_sub(cur)));
    out
}

fn spawn_item(profile: &Arc<Profile>, labels: &BTreeMap<String, String>, ids: Vec<String>) -> Item {
    Item::Act(Cue::Spawn { profile: profile.clone(), labels: labels.clone(), ids })
}

fn lookup_profile(
    t: &Table<'_>,
    name: &str,
    ctx: &mut Ctx<'_>,
    p: &mut Problems,
) -> Option<Arc<Profile>> {
    let path = t.path_of("profile");
    let prof = if name.ends_with(".toml") || name.contains('/') {
        let full = ctx.base.join(name);
        if let Some(pr) = ctx.files.get(&full) {
            return Some(pr.clone());
        }
        // The same reader as the fleet file's: regular files only, size-capped.
        let doc = match crate::config::read_profile_doc(&full) {
            Ok(d) => d,
            Err(e) => {
                p.add(path, e);
                return None;
            }
        };
        let stem = full.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let pr = Arc::new(crate::config::compile_profile(
            &stem,
            Table::new(format!("{}:", full.display()), &doc),
            p,
        )?);
        ctx.files.insert(full, pr.clone());
        ctx.sources.insert(pr.name.clone(), Arc::new(doc));
        pr
    } else {
        match ctx.fleet.profiles.iter().position(|x| x.name == name) {
            Some(ix) if ctx.fleet.profiles[ix].replay.is_some() => {
                p.add(
                    path,
                    format!(
                        "profile {name:?} replays a trace: its devices are the trace's, in the \
                         fleet, and cannot be spawned"
                    ),
                );
                return None;
            }
            Some(ix) => ctx
                .shared
                .entry(ix)
                .or_insert_with(|| Arc::new(ctx.fleet.profiles[ix].clone()))
                .clone(),
            None => {
                let known: Vec<&str> = ctx.fleet.profiles.iter().map(|x| x.name.as_str()).collect();
                p.add(
                    path,
                    format!(
                        "unknown profile {name:?}; profiles of the fleet and the scenario: {}",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                );
                return None;
            }
        }
    };
    let s = ctx.sinks;
    let missing = match prof.protocol {
        Protocol::Mqtt => s.mqtt.is_none(),
        Protocol::Amqp => s.amqp.is_none(),
        Protocol::Http => s.http.is_none(),
        Protocol::Coap => s.coap.is_none(),
        Protocol::File => s.file.is_none(),
        Protocol::Console | Protocol::Null => false,
    };
    if missing {
        p.add(
            path,
            format!(
                "profile {:?} publishes over {}, so [sink.{}] is needed (in the fleet or the scenario file)",
                prof.name, prof.protocol, prof.protocol
            ),
        );
        return None;
    }
    Some(prof)
}

fn has_template(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("{i}"),
        Value::Array(a) => a.iter().any(has_template),
        Value::Table(t) => t.iter().any(|(k, v)| k.contains("{i}") || has_template(v)),
        _ => false,
    }
}

/// Replaces `{i}` with `i` in every string (and key) of an action.
fn template(v: &Value, i: u64) -> Value {
    let n = i.to_string();
    match v {
        Value::String(s) => Value::String(s.replace("{i}", &n)),
        Value::Array(a) => Value::Array(a.iter().map(|x| template(x, i)).collect()),
        Value::Table(t) => {
            Value::Table(t.iter().map(|(k, v)| (k.replace("{i}", &n), template(v, i))).collect())
        }
        other => other.clone(),
    }
}

/// (id, labels, index of its profile in [`Roster::profiles`]).
type Member = (String, Rc<BTreeMap<String, String>>, usize);

/// Who exists when, for resolving batches and checking updates: the fleet's devices and the
/// scenario's spawns, less those stopped, with labels and profiles as updated.
struct Roster {
    /// `None` once stopped.
    members: Vec<Option<Member>>,
    by_id: BTreeMap<String, usize>,
    /// The fleet's profiles, then each one an update made (first the fleet's, by name).
    profiles: Vec<Arc<Profile>>,
    /// The problems already reported: (step, message).
    reported: BTreeSet<(usize, String)>,
}

impl Roster {
    fn new(fleet: &Fleet) -> Roster {
        let mut r = Roster {
            members: vec![],
            by_id: BTreeMap::new(),
            profiles: fleet.profiles.iter().cloned().map(Arc::new).collect(),
            reported: BTreeSet::new(),
        };
        let mut id = String::new();
        for g in &fleet.groups {
            let labels = Rc::new(g.labels.clone());
            for i in 0..g.count {
                g.device_id(&fleet.profiles[g.profile], i, &mut id);
                r.add(id.clone(), labels.clone(), g.profile);
            }
        }
        r
    }

    fn add(&mut self, id: String, labels: Rc<BTreeMap<String, String>>, profile: usize) {
        self.by_id.insert(id.clone(), self.members.len());
        self.members.push(Some((id, labels, profile)));
    }

    /// The index of a spawned device's profile: the fleet's of that name, or a new entry.
    fn profile_of(&mut self, profile: &Arc<Profile>) -> usize {
        match self.profiles.iter().position(|p| p.name == profile.name) {
            Some(i) => i,
            None => {
                self.profiles.push(profile.clone());
                self.profiles.len() - 1
            }
        }
    }

    /// Applies a fields update to the profiles of the members it selects, as the shards will
    /// ([`Profile::updated`]), and reports what it would break (a derived expression reading a
    /// field that is gone or no longer numeric, a correlated group that lost a member) at the
    /// step's `update`: such a scenario is refused, so nothing of it is ever applied.
    fn update_profiles(
        &mut self,
        step: usize,
        selected: &[usize],
        u: &BehaviourUpdate,
        p: &mut Problems,
    ) {
        let mut done: BTreeMap<usize, usize> = BTreeMap::new();
        for &i in selected {
            let Some(old) = self.members[i].as_ref().map(|m| m.2) else { continue };
            let new = match done.get(&old) {
                Some(&n) => n,
                None => {
                    let (merged, broken) = self.profiles[old].updated(u);
                    for why in broken {
                        let msg = format!(
                            "would break profile {:?}: {why}; give the fields it needs in the same update",
                            merged.name
                        );
                        if self.reported.insert((step, msg.clone())) {
                            p.add(format!("step[{step}].update.fields"), msg);
                        }
                    }
                    self.profiles.push(Arc::new(merged));
                    let n = self.profiles.len() - 1;
                    done.insert(old, n);
                    n
                }
            };
            if let Some(m) = &mut self.members[i] {
                m.2 = new;
            }
        }
    }

    /// Indexes of the live members a target selects.
    fn select(&self, target: &Selection) -> Vec<usize> {
        match target {
            Selection::Ids(ids) => ids
                .iter()
                .filter_map(|id| self.by_id.get(id).copied())
                .filter(|&i| self.members[i].is_some())
                .collect(),
            _ => (0..self.members.len())
                .filter(|&i| match (&self.members[i], target) {
                    (None, _) => false,
                    (Some((_, l, _)), Selection::Labels(sel)) => sel.matches(l),
                    _ => true,
                })
                .collect(),
        }
    }

    fn apply(&mut self, step: usize, cue: &Cue, p: &mut Problems) {
        match cue {
            Cue::Spawn { profile, labels, ids } => {
                let labels = Rc::new(labels.clone());
                let profile = self.profile_of(profile);
                for id in ids {
                    self.add(id.clone(), labels.clone(), profile);
                }
            }
            Cue::Apply { selection: target, op: Op { action: Action::Stop, .. } } => {
                for i in self.select(target) {
                    if let Some((id, ..)) = self.members[i].take() {
                        self.by_id.remove(&id);
                    }
                }
            }
            Cue::Apply { selection: target, op: Op { action: Action::Behaviour(u), .. } } => {
                let selected = self.select(target);
                if !u.keep_fields {
                    self.update_profiles(step, &selected, u, p);
                }
                if u.labels.is_empty() {
                    return;
                }
                for i in selected {
                    if let Some((_, l, _)) = &mut self.members[i] {
                        let mut m = (**l).clone();
                        m.extend(u.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                        *l = Rc::new(m);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Turns the items into the timeline: batches become id selections of `size` devices each,
/// in device-id order, of the devices their selector matches at the batch step's time.
/// Also checks each fields update against the profiles of the devices it selects at its time
/// (the roster is built for that only when some profile or update has derived or correlated
/// fields, the only ones an update can break).
fn resolve_batches(
    mut items: BTreeMap<Key, Item>,
    fleet: &Fleet,
    ends: &mut Vec<(usize, u64)>,
    p: &mut Problems,
) -> Vec<TimedCue> {
    let linked = |pr: &Profile| !pr.derived.is_empty() || !pr.correlated.is_empty();
    let fields_update = |op: &Op| matches!(&op.action, Action::Behaviour(u) if !u.keep_fields);
    let needs_check = items.values().any(|i| match i {
        Item::Act(Cue::Apply { op, .. }) | Item::Batch { op, .. } => fields_update(op),
        _ => false,
    }) && (fleet.profiles.iter().any(linked)
        || items.values().any(|i| match i {
            Item::Act(Cue::Spawn { profile, .. }) => linked(profile),
            Item::Act(Cue::Apply { op: Op { action: Action::Behaviour(u), .. }, .. })
            | Item::Batch { op: Op { action: Action::Behaviour(u), .. }, .. } => u
                .fields
                .iter()
                .any(|f| matches!(f.generator, GenSpec::Derived(_) | GenSpec::Correlated { .. })),
            _ => false,
        }));
    let needs_roster = needs_check || items.values().any(|i| matches!(i, Item::Batch { .. }));
    let mut roster = needs_roster.then(|| Roster::new(fleet));
    let mut out = vec![];
    let mut generated = 0u64;
    while let Some(((at, step, _), item)) = items.pop_first() {
        match item {
            Item::Act(cue) => {
                if let Some(r) = &mut roster {
                    r.apply(step, &cue, p);
                }
                out.push(TimedCue { at_ms: at, step, cue });
            }
            Item::Batch { target, size, every_ms, op } => {
                let Some(r) = &roster else { continue };
                let mut ids: Vec<String> = r
                    .select(&target)
                    .into_iter()
                    .filter_map(|i| r.members[i].as_ref().map(|m| m.0.clone()))
                    .collect();
                ids.sort();
                let extra = match &op.action {
                    Action::Fault(spec) => spec.duration_ms,
                    _ => 0,
                };
                for (k, chunk) in ids.chunks(size).enumerate() {
                    let t = at + k as u64 * every_ms;
                    generated += 1;
                    ends.push((step, t + extra));
                    let cue =
                        Cue::Apply { selection: Selection::Ids(chunk.to_vec()), op: op.clone() };
                    items.insert((t, step, (1 << 62) + generated), Item::Act(cue));
                }
            }
        }
    }
    out
}
