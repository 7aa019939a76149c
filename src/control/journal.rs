//! The session journal: every control action that changes the runtime (spawn, stop, fault,
//! clear, pause, resume, update), appended to `REPORT_DIR/journal.jsonl` as one JSON line when
//! the shards have answered, whichever front end sent it (gRPC, the admin API, the dashboard):
//! they all go through [`super::plane::ControlPlane`], which writes here. A scenario's steps
//! are journaled by `run.rs` ([`cue_entry`]) at their sim time. `iot-sim journal export`
//! (`cli/journal.rs`) turns the file into a scenario.
//!
//! Each line is one `write` (no user-space buffer), done on tokio's blocking pool before the
//! front end answers: an answered action is in the file, and a crash loses at most the line
//! being written. Writing takes a mutex for the time of that one `write` only.
//! The file is bounded (`[run] journal_max_bytes`): the line that would pass the bound is
//! replaced by a `journal_full` line and nothing more is written (a warning in the log).

use crate::shard::command::{Action, Selection, SpawnSpec};
use crate::shard::timeline::{Cue, Phase};
use crate::sim::fault::{CorruptionMode, FaultKind, FaultSpec};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The journal format's version (the header line's `journal`).
pub const VERSION: u64 = 1;
/// The journal's file name in the report directory.
pub const FILE_NAME: &str = "journal.jsonl";
/// The fault type names of a scenario's `fault` and `clear` steps, by `FaultType` number - 1.
pub const FAULT_TYPES: [&str; 5] =
    ["disconnect", "latency_spike", "data_corruption", "battery_drain", "clock_drift"];

tokio::task_local! {
    /// The front end a control-plane call comes from (`"grpc"`, `"admin"`), set around the
    /// request by the gRPC service and the admin API's mutating routes; the journal's `source`.
    pub(crate) static FRONT_END: &'static str;
}

/// When an action arrived: wall time (ms since the epoch) and sim time (ms since the epoch).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    wall_ms: u64,
    sim_ms: u64,
}

/// The run's journal file.
pub struct Journal {
    path: PathBuf,
    start_ms: u64,
    speed: f64,
    /// The monotonic ns sim time started at (0 until the shards run: sim time = start).
    origin_ns: AtomicU64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish_non_exhaustive()
    }
}

struct Inner {
    file: Option<std::fs::File>,
    bytes: u64,
    max_bytes: u64,
    seq: u64,
}

impl Journal {
    /// Creates (truncates) `dir/journal.jsonl` and writes its header line: the run's identity,
    /// seed, start, clock and speed.
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        start_ms: u64,
        speed: f64,
        header: Map<String, Value>,
    ) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let file =
            std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        let j = Journal {
            path,
            start_ms,
            speed,
            origin_ns: AtomicU64::new(0),
            inner: Mutex::new(Inner { file: Some(file), bytes: 0, max_bytes, seq: 0 }),
        };
        let mut h = Map::new();
        h.insert("journal".into(), VERSION.into());
        h.insert("start".into(), crate::sim::time::rfc3339_ms(start_ms).into());
        h.insert("speed".into(), json!(speed));
        h.extend(header);
        j.write(Value::Object(h), true, None);
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sim time starts now (at monotonic `origin_ns`).
    pub(crate) fn set_origin(&self, origin_ns: u64) {
        self.origin_ns.store(origin_ns, Ordering::Release);
    }

    /// The wall and sim time of now, the way a realtime shard reads sim time.
    pub(crate) fn stamp(&self) -> Stamp {
        let origin = self.origin_ns.load(Ordering::Acquire);
        let sim_ms = if origin == 0 {
            self.start_ms
        } else {
            let elapsed = crate::measure::clock::mono_ns().saturating_sub(origin);
            let ms = if self.speed == 1.0 {
                elapsed / 1_000_000
            } else {
                (elapsed as f64 * self.speed / 1e6 + 1e-6) as u64
            };
            self.start_ms + ms
        };
        Stamp { wall_ms: crate::measure::clock::now_ms(), sim_ms }
    }

    /// Appends one action taken at `at`.
    pub(crate) fn record(&self, at: Stamp, entry: Map<String, Value>) {
        self.record_with(at, entry, None);
    }

    /// Appends one action taken at `at`, with `raw = (key, json)`: a member written as it is
    /// (already JSON text) after the entry's own.
    pub(crate) fn record_with(
        &self,
        at: Stamp,
        mut entry: Map<String, Value>,
        raw: Option<(&str, &str)>,
    ) {
        let mut line = Map::new();
        line.insert("wall".into(), crate::sim::time::rfc3339_ms(at.wall_ms).into());
        line.insert("sim".into(), crate::sim::time::rfc3339_ms(at.sim_ms).into());
        line.insert("offset_ms".into(), at.sim_ms.saturating_sub(self.start_ms).into());
        line.append(&mut entry);
        self.write(Value::Object(line), false, raw);
    }

    /// The wall time of now with a known sim time (a scenario step's).
    pub(crate) fn stamp_at(&self, sim_ms: u64) -> Stamp {
        Stamp { wall_ms: crate::measure::clock::now_ms(), sim_ms }
    }

    /// The run's end (at `sim_ms`, else the sim time of now): the exported scenario's
    /// duration.
    pub(crate) fn end(&self, sim_ms: Option<u64>) {
        let mut m = Map::new();
        m.insert("action".into(), "end".into());
        self.record(sim_ms.map_or_else(|| self.stamp(), |t| self.stamp_at(t)), m);
    }

    fn write(&self, mut v: Value, header: bool, raw: Option<(&str, &str)>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        if inner.file.is_none() {
            return;
        }
        if !header {
            inner.seq += 1;
            if let Value::Object(m) = &mut v {
                let mut with_seq = Map::new();
                with_seq.insert("seq".into(), inner.seq.into());
                with_seq.append(m);
                *m = with_seq;
            }
        }
        let mut text = v.to_string();
        if let Some((key, json)) = raw {
            // `{...}` -> `{...,"key":json}`
            text.pop();
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&Value::from(key).to_string());
            text.push(':');
            text.push_str(json);
            text.push('}');
        }
        text.push('\n');
        // Room is kept for the closing `journal_full` line.
        const CLOSING_ROOM: u64 = 256;
        let full = inner.bytes + text.len() as u64 + CLOSING_ROOM > inner.max_bytes;
        if full {
            text =
                json!({"seq": inner.seq, "action": "journal_full", "max_bytes": inner.max_bytes})
                    .to_string();
            text.push('\n');
            tracing::warn!(
                path = %self.path.display(),
                max_bytes = inner.max_bytes,
                "the journal reached journal_max_bytes; later control actions are not journaled"
            );
        }
        let Some(f) = inner.file.as_mut() else { return };
        if let Err(e) = f.write_all(text.as_bytes()) {
            tracing::warn!(path = %self.path.display(), "cannot write the journal: {e}; journaling stops");
            inner.file = None;
            return;
        }
        inner.bytes += text.len() as u64;
        if full {
            inner.file = None;
        }
    }
}

/// A selection as a scenario step writes it: `{"all": true}`, `{"ids": [...]}` (less the ids
/// not found) or `{"selector": "..."}`.
fn selection(sel: &Selection, not_found: &[String]) -> Map<String, Value> {
    let mut m = Map::new();
    match sel {
        Selection::All => {
            m.insert("all".into(), true.into());
        }
        Selection::Ids(ids) => {
            let missing: std::collections::BTreeSet<&str> =
                not_found.iter().map(String::as_str).collect();
            let found: Vec<Value> = ids
                .iter()
                .filter(|i| !missing.contains(i.as_str()))
                .map(|i| Value::from(i.as_str()))
                .collect();
            m.insert("ids".into(), Value::Array(found));
        }
        Selection::Labels(s) => {
            m.insert("selector".into(), s.to_string().into());
        }
    }
    m
}

fn mode_name(m: CorruptionMode) -> &'static str {
    match m {
        CorruptionMode::Nan => "nan",
        CorruptionMode::Zero => "zero",
        CorruptionMode::Spike => "spike",
        CorruptionMode::Bytes => "bytes",
    }
}

/// A fault as a scenario's `fault` step writes it.
fn fault(spec: &FaultSpec) -> Value {
    let mut params = Map::new();
    match spec.kind {
        FaultKind::Disconnect => {
            params.insert("mode".into(), spec.disconnect.name().into());
        }
        FaultKind::LatencySpike { latency_ms } => {
            params.insert("latency_ms".into(), latency_ms.into());
        }
        FaultKind::DataCorruption { rate, mode } => {
            params.insert("corruption_rate".into(), json!(rate));
            params.insert("mode".into(), mode_name(mode).into());
        }
        FaultKind::BatteryDrain { multiplier } => {
            params.insert("drain_multiplier".into(), json!(multiplier));
        }
        FaultKind::ClockDrift { rate_ms_per_s } => {
            params.insert("drift_rate_ms_per_sec".into(), json!(rate_ms_per_s));
        }
    }
    json!({
        "type": FAULT_TYPES[spec.kind.type_number() as usize - 1],
        "duration_ms": spec.duration_ms,
        "params": params,
    })
}

/// The journal entry of a selection command that affected `affected` devices; `None` for the
/// commands that change nothing (status, list, count).
pub(crate) fn scan_entry(
    sel: &Selection,
    action: &Action,
    affected: u32,
    not_found: &[String],
) -> Option<Map<String, Value>> {
    let name = match action {
        Action::Stop => "stop",
        Action::Fault(_) => "fault",
        Action::ClearFaults(_) => "clear",
        Action::Pause(true) => "pause",
        Action::Pause(false) => "resume",
        Action::Behaviour(_) => "update",
        Action::Status { .. } | Action::List { .. } | Action::CountBy(_) => return None,
    };
    let mut m = Map::new();
    m.insert("action".into(), name.into());
    m.insert("selection".into(), Value::Object(selection(sel, not_found)));
    match action {
        Action::Fault(spec) => {
            m.insert("fault".into(), fault(spec));
        }
        Action::ClearFaults(t) => {
            let t = t.and_then(|n| FAULT_TYPES.get((n - 1) as usize));
            m.insert("type".into(), t.map_or(Value::Null, |t| (*t).into()));
        }
        Action::Behaviour(u) => {
            let mut up = match u.source.as_deref() {
                Some(t) => match serde_json::to_value(t) {
                    Ok(Value::Object(o)) => o,
                    _ => Map::new(),
                },
                None => Map::new(),
            };
            if let Some(ms) = u.interval_ms {
                up.insert("interval".into(), format!("{ms}ms").into());
            }
            if !u.labels.is_empty() {
                up.insert("labels".into(), json!(u.labels));
            }
            if !u.merge && !u.keep_fields {
                up.insert("replace_fields".into(), true.into());
            }
            m.insert("update".into(), Value::Object(up));
        }
        _ => {}
    }
    m.insert("affected".into(), affected.into());
    Some(m)
}

/// The journal entry of a spawn: each distinct profile once (its spec as a profile table) and
/// every device spawned (id, profile, labels); `failed` ids are left out.
pub(crate) fn spawn_entry(specs: &[Journaled], failed: &[(String, String)]) -> Map<String, Value> {
    let refused: std::collections::BTreeSet<&str> =
        failed.iter().map(|(id, _)| id.as_str()).collect();
    let mut profiles = Map::new();
    let mut keys: Vec<(*const toml::Table, String)> = vec![];
    let mut devices = vec![];
    for s in specs {
        if refused.contains(s.id.as_str()) {
            continue;
        }
        let ptr = std::sync::Arc::as_ptr(&s.source);
        let key = match keys.iter().find(|(p, _)| *p == ptr) {
            Some((_, k)) => k.clone(),
            None => {
                let k = format!("p{}", keys.len() + 1);
                profiles.insert(k.clone(), profile_value(&s.source, &s.device_type));
                keys.push((ptr, k.clone()));
                k
            }
        };
        devices.push(json!({"id": s.id, "profile": key, "labels": s.labels}));
    }
    let mut m = Map::new();
    m.insert("action".into(), "spawn".into());
    m.insert("profiles".into(), Value::Object(profiles));
    m.insert("spawned".into(), devices.len().into());
    m.insert("devices".into(), Value::Array(devices));
    m
}

/// The devices of a gRPC or admin-API spawn as the journal writes them (`spawn_entry`'s
/// `devices`), made as JSON text while the specs are at hand: no copy of each spec waits for
/// the shards, and no `Value` per device is built (for 100,000 specs the `Value`s took ~0.3 s
/// that the reply waited for, issue 25).
pub(crate) struct SpawnText {
    /// The profile tables, `p1`, `p2`, ... in order.
    profiles: Vec<Value>,
    /// `{"id":..,"profile":"pN","labels":{..}}` per device, one after the other.
    devices: Vec<u8>,
    /// Per device: where its object and its escaped id lie in `devices`, and the index of its
    /// profile.
    marks: Vec<(std::ops::Range<usize>, std::ops::Range<usize>, usize)>,
}

impl SpawnText {
    /// The specs that carry a profile table (all but a scenario's).
    pub(crate) fn of(specs: &[SpawnSpec]) -> SpawnText {
        let mut profiles = vec![];
        let mut keys: Vec<*const toml::Table> = vec![];
        let mut devices = Vec::with_capacity(specs.len() * 64);
        let mut marks = Vec::with_capacity(specs.len());
        for s in specs {
            let Some(source) = &s.source else { continue };
            let ptr = std::sync::Arc::as_ptr(source);
            let ix = keys.iter().position(|p| *p == ptr).unwrap_or_else(|| {
                keys.push(ptr);
                profiles.push(profile_value(source, &s.profile.device_type));
                keys.len() - 1
            });
            let at = devices.len();
            devices.extend_from_slice(b"{\"id\":");
            let id_at = devices.len();
            let _ = serde_json::to_writer(&mut devices, &s.id);
            let id = id_at..devices.len();
            let _ = write!(devices, ",\"profile\":\"p{}\",\"labels\":", ix + 1);
            let _ = serde_json::to_writer(&mut devices, &s.labels);
            devices.push(b'}');
            marks.push((at..devices.len(), id, ix));
        }
        SpawnText { profiles, devices, marks }
    }

    /// The entry (`action`, `profiles`, `spawned`) and its `devices` array as text, less the
    /// ids in `failed` (and the profiles only they used).
    pub(crate) fn entry(self, failed: &[(String, String)]) -> (Map<String, Value>, String) {
        let refused: std::collections::BTreeSet<String> =
            failed.iter().map(|(id, _)| Value::from(id.as_str()).to_string()).collect();
        // Written by serde_json and from `str`s: UTF-8.
        let text_of = |r: &std::ops::Range<usize>| std::str::from_utf8(&self.devices[r.clone()]);
        let mut used = vec![false; self.profiles.len()];
        let mut kept = vec![];
        for (object, id, ix) in &self.marks {
            if refused.is_empty() || !refused.contains(text_of(id).unwrap_or("")) {
                kept.push(text_of(object).unwrap_or("{}"));
                used[*ix] = true;
            }
        }
        let text = format!("[{}]", kept.join(","));
        let profiles = self.profiles.into_iter().enumerate().filter(|(ix, _)| used[*ix]);
        let mut m = Map::new();
        m.insert("action".into(), "spawn".into());
        m.insert(
            "profiles".into(),
            Value::Object(profiles.map(|(ix, p)| (format!("p{}", ix + 1), p)).collect()),
        );
        m.insert("spawned".into(), kept.len().into());
        (m, text)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

/// A spawned profile as the journal writes it: its table, with its `device_type`.
fn profile_value(source: &toml::Table, device_type: &str) -> Value {
    let mut t = serde_json::to_value(source).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut t {
        o.insert("device_type".into(), device_type.into());
    }
    t
}

/// `entry` with `"source": via` when the front end is known.
pub(crate) fn with_source(mut entry: Map<String, Value>, via: Option<&str>) -> Map<String, Value> {
    if let Some(v) = via {
        entry.insert("source".into(), v.into());
    }
    entry
}

/// The journal entry of a scenario step (`"source": "scenario"`): a spawn with its profile's
/// table as written (`sources`, by profile name; `None` when it is not known), a selection
/// command, a log line or a phase.
pub(crate) fn cue_entry(
    cue: &Cue,
    phases: &[Phase],
    sources: &std::collections::BTreeMap<String, std::sync::Arc<toml::Table>>,
) -> Option<Map<String, Value>> {
    let mut m = match cue {
        Cue::Spawn { profile, labels, ids } => {
            let source = sources.get(&profile.name)?.clone();
            let specs: Vec<Journaled> = ids
                .iter()
                .map(|id| Journaled {
                    id: id.clone(),
                    device_type: profile.device_type.clone(),
                    labels: labels.clone(),
                    source: source.clone(),
                })
                .collect();
            spawn_entry(&specs, &[])
        }
        Cue::Apply { selection, op } => {
            let mut m = scan_entry(selection, &op.action, 0, &[])?;
            m.remove("affected");
            if let (Some(r), Some(Value::Object(f))) = (&op.reason, m.get_mut("fault"))
                && let Some(Value::Object(p)) = f.get_mut("params")
            {
                p.insert("reason".into(), r.clone().into());
            }
            m
        }
        Cue::Log(text) => {
            let mut m = Map::new();
            m.insert("action".into(), "log".into());
            m.insert("message".into(), text.clone().into());
            m
        }
        Cue::Phase(i) => {
            let mut m = Map::new();
            m.insert("action".into(), "phase".into());
            m.insert("name".into(), phases.get(*i)?.name.clone().into());
            m
        }
    };
    m.insert("source".into(), "scenario".into());
    Some(m)
}

/// What the journal keeps of a spawn spec (the spec itself moves into a shard).
pub(crate) struct Journaled {
    id: String,
    device_type: String,
    labels: std::collections::BTreeMap<String, String>,
    source: std::sync::Arc<toml::Table>,
}

impl Journaled {
    /// The spec's id, labels and profile table; `None` for a spec without one (a scenario's).
    #[cfg(test)]
    pub(crate) fn of(s: &SpawnSpec) -> Option<Journaled> {
        Some(Journaled {
            id: s.id.clone(),
            device_type: s.profile.device_type.clone(),
            labels: s.labels.clone(),
            source: s.source.clone()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop_all() -> Map<String, Value> {
        scan_entry(&Selection::All, &Action::Stop, 3, &[]).unwrap()
    }

    #[test]
    fn a_spawn_written_as_text_is_the_entry_of_its_specs_less_the_refused() {
        use crate::walk::{Problems, Table};
        let doc: toml::Table = "protocol = \"null\"\ninterval = \"1s\"\nfields.x = { type = \"gaussian\", mean = 0, stddev = 1 }".parse().unwrap();
        let mut p = Problems::default();
        let profile = std::sync::Arc::new(
            crate::config::compile_profile("t", Table::new("", &doc), &mut p).unwrap(),
        );
        let source = std::sync::Arc::new(doc.clone());
        let other = std::sync::Arc::new(doc);
        let spec =
            |id: &str, labels: &[(&str, &str)], src: &std::sync::Arc<toml::Table>| SpawnSpec {
                id: id.into(),
                profile: profile.clone(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                source: Some(src.clone()),
            };
        let specs = vec![
            spec("a", &[("zone", "n\"orth")], &source),
            spec("b\u{e9}", &[], &other),
            spec("c", &[("z", "1"), ("a", "2")], &source),
            SpawnSpec { source: None, ..spec("scenario's", &[], &source) },
        ];
        let failed = vec![("b\u{e9}".to_string(), "already exists".to_string())];
        let journaled: Vec<Journaled> = specs.iter().filter_map(Journaled::of).collect();
        let want = Value::Object(spawn_entry(&journaled, &failed));
        let (mut entry, devices) = SpawnText::of(&specs).entry(&failed);
        entry.insert("devices".into(), serde_json::from_str(&devices).unwrap());
        assert_eq!(Value::Object(entry), want);
        // And in a journal line, after the entry's own members.
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 1 << 20, 1_000, 1.0, Map::new()).unwrap();
        let (entry, devices) = SpawnText::of(&specs).entry(&[]);
        j.record_with(
            j.stamp_at(1_000),
            with_source(entry, Some("grpc")),
            Some(("devices", &devices)),
        );
        let text = std::fs::read_to_string(j.path()).unwrap();
        let line: Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(line["spawned"], 3);
        assert_eq!(line["source"], "grpc");
        assert_eq!(line["devices"][1]["id"], "b\u{e9}");
        assert_eq!(line["devices"][0]["labels"], json!({"zone": "n\"orth"}));
    }

    #[test]
    fn lines_carry_seq_times_and_the_action_and_the_bound_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 800, 1_000, 1.0, Map::new()).unwrap();
        j.record(j.stamp_at(1_250), stop_all());
        let text = std::fs::read_to_string(j.path()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["journal"], 1);
        assert_eq!(lines[0]["start"], "1970-01-01T00:00:01.000Z");
        assert_eq!(lines[1]["seq"], 1);
        assert_eq!(lines[1]["offset_ms"], 250);
        assert_eq!(lines[1]["action"], "stop");
        assert_eq!(lines[1]["selection"], json!({"all": true}));
        assert_eq!(lines[1]["affected"], 3);
        for _ in 0..20 {
            j.record(j.stamp_at(2_000), stop_all());
        }
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert!(text.len() <= 800, "{} bytes", text.len());
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["action"], "journal_full", "{text}");
        // Nothing after it.
        j.end(None);
        assert_eq!(std::fs::read_to_string(j.path()).unwrap(), text);
    }

    #[test]
    fn a_selector_is_journaled_as_text_that_parses_back_to_it() {
        use crate::sim::selector::LabelSelector;
        for text in [
            "site=berlin",
            "device_type=a,b",
            "a=b=c",
            "device_type=Acme Thermo/v2",
            "device_type==x",
            "site in (a, b),zone notin (c),!gone,here",
            "c,a=b",
            "a in (b),c",
            "k!=v,x=y",
            "key=",
        ] {
            let sel = LabelSelector::parse(text).unwrap();
            let e = scan_entry(&Selection::Labels(sel.clone()), &Action::Stop, 1, &[]).unwrap();
            let back = e["selection"]["selector"].as_str().unwrap();
            assert_eq!(LabelSelector::parse(back).unwrap(), sel, "{text:?} journaled as {back:?}");
        }
    }

    #[test]
    fn reads_change_nothing_and_are_not_journaled() {
        assert!(scan_entry(&Selection::All, &Action::Status { list: true }, 3, &[]).is_none());
        let sel = Selection::Ids(vec!["a".into(), "b".into()]);
        let e = scan_entry(&sel, &Action::Pause(false), 1, &["b".into()]).unwrap();
        assert_eq!(e["action"], "resume");
        assert_eq!(e["selection"], json!({"ids": ["a"]}));
    }
}
