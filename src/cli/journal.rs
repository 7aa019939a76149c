//! `iot-sim journal export JOURNAL --out SCENARIO`: a session journal (`journal.jsonl`, written
//! by the control plane, `control/journal.rs`) as a scenario whose steps reproduce the session
//! at the same sim offsets: spawns with their ids, labels and specs (as profiles), stops,
//! faults, clears, pauses, resumes and updates with their selections.
//!
//! The whole journal is read and checked before anything is written; the first line that is
//! not a valid entry is named (line number, reason), and the export stops with exit 2. The
//! scenario is written to a temporary file beside `--out` and renamed over it.

use super::exit;
use crate::control::journal::{FAULT_TYPES, VERSION};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum JournalCmd {
    /// Write a scenario whose steps reproduce a journaled session (REPORT_DIR/journal.jsonl)
    /// at the same sim offsets.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The journal (journal.jsonl in a run's report directory).
    #[arg(value_name = "JOURNAL")]
    pub journal: PathBuf,
    /// Where the scenario goes.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// The scenario's name (default: the output's file stem).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn main(cmd: &JournalCmd) -> anyhow::Result<i32> {
    match cmd {
        JournalCmd::Export(a) => match export(a) {
            Ok(()) => Ok(exit::OK),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(exit::BAD_CONFIG)
            }
        },
    }
}

fn export(a: &ExportArgs) -> Result<(), String> {
    let file = std::fs::File::open(&a.journal)
        .map_err(|e| format!("cannot read {}: {e}", a.journal.display()))?;
    let name = a.name.clone().unwrap_or_else(|| {
        a.out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or("session".into())
    });
    let text = to_scenario(std::io::BufReader::new(file), &a.journal, &name)?;
    write_atomically(&a.out, &text)
        .map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    eprintln!("journal: {} -> {}", a.journal.display(), a.out.display());
    Ok(())
}

/// Writes `text` to a temporary file beside `out`, then renames it over `out`.
fn write_atomically(out: &Path, text: &str) -> std::io::Result<()> {
    let stem = out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = out.with_file_name(format!(".{stem}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// One journal entry as scenario steps.
struct Entry {
    offset_ms: u64,
    seq: u64,
    /// (action key, action table)
    steps: Vec<(String, toml::Value)>,
}

/// The scenario text of a journal read from `r` (named `path` in errors).
pub(crate) fn to_scenario(r: impl BufRead, path: &Path, name: &str) -> Result<String, String> {
    let mut header: Option<Map<String, Value>> = None;
    let mut entries: Vec<Entry> = vec![];
    let mut end_ms: Option<u64> = None;
    // Profile tables by their JSON text -> name (identical specs share one profile).
    let mut profiles: BTreeMap<String, (String, toml::Table)> = BTreeMap::new();
    for (i, line) in r.lines().enumerate() {
        let n = i + 1;
        let bad = |m: String| format!("{}:{n}: {m}", path.display());
        let line = line.map_err(|e| bad(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            return Err(bad("an empty line (a journal has one JSON object per line)".into()));
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Value::Object(o) = v else {
            return Err(bad("expected a JSON object".into()));
        };
        if header.is_none() {
            match o.get("journal") {
                Some(Value::Number(v)) if v.as_u64() == Some(VERSION) => {}
                Some(v) => return Err(bad(format!("journal version {v} is not {VERSION}"))),
                None => {
                    return Err(bad(
                        "not a journal header (the first line holds \"journal\": 1, the run's seed and start)".into(),
                    ));
                }
            }
            header = Some(o);
            continue;
        }
        if end_ms.is_some() {
            return Err(bad("an entry after the run's \"end\"".into()));
        }
        let seq = u64_of(&o, "seq").map_err(&bad)?;
        let action = str_of(&o, "action").map_err(&bad)?;
        if action == "journal_full" {
            eprintln!(
                "warning: {}:{n}: the journal reached journal_max_bytes; the session after it \
                 was not recorded and is not in the scenario",
                path.display()
            );
            break;
        }
        let offset_ms = u64_of(&o, "offset_ms").map_err(&bad)?;
        let steps = match action {
            "end" => {
                end_ms = Some(offset_ms);
                continue;
            }
            "spawn" => spawn(&o, &mut profiles).map_err(&bad)?,
            "stop" | "pause" | "resume" | "fault" | "clear" | "update" => {
                vec![(action.to_string(), selected(action, &o).map_err(&bad)?)]
            }
            "log" | "phase" => {
                let k = if action == "log" { "message" } else { "name" };
                let s = str_of(&o, k).map_err(&bad)?;
                if s.trim().is_empty() {
                    return Err(bad(format!("{k}: empty")));
                }
                vec![(action.to_string(), toml::Value::String(s.to_string()))]
            }
            other => return Err(bad(format!("unknown action {other:?}"))),
        };
        if let Some(last) = entries.last()
            && last.seq >= seq
        {
            return Err(bad(format!("seq {seq} does not follow {}", last.seq)));
        }
        entries.push(Entry { offset_ms, seq, steps });
    }
    let Some(header) = header else {
        return Err(format!("{}: empty: not a journal", path.display()));
    };
    // Lines are written when the shards answered; steps go by the time the actions came in.
    entries.sort_by_key(|e| (e.offset_ms, e.seq));
    let mut doc = toml::Table::new();
    doc.insert("name".into(), name.into());
    let field = |k: &str| header.get(k).map(|v| v.to_string()).unwrap_or("?".into());
    doc.insert(
        "description".into(),
        format!(
            "control session of run {} (seed {}, start {}), exported from its journal",
            field("run_id").trim_matches('"'),
            field("seed").trim_matches('"'),
            field("start").trim_matches('"'),
        )
        .into(),
    );
    if let Some(end) = end_ms.filter(|&e| e > 0) {
        doc.insert("duration".into(), format!("{end}ms").into());
    }
    if !profiles.is_empty() {
        let mut t = toml::Table::new();
        for (name, table) in profiles.into_values() {
            t.insert(name, toml::Value::Table(table));
        }
        doc.insert("profiles".into(), toml::Value::Table(t));
    }
    let mut steps = vec![];
    for e in entries {
        for (k, v) in e.steps {
            let mut s = toml::Table::new();
            s.insert("at".into(), format!("{}ms", e.offset_ms).into());
            s.insert(k, v);
            steps.push(toml::Value::Table(s));
        }
    }
    if steps.is_empty() {
        return Err(format!(
            "{}: no control action was journaled: nothing to export",
            path.display()
        ));
    }
    doc.insert("step".into(), toml::Value::Array(steps));
    let body = toml::to_string(&doc).map_err(|e| format!("cannot write the scenario: {e}"))?;
    let seed = field("seed");
    Ok(format!(
        "# Exported by `iot-sim journal export` from {}.\n# Replay on the run's fleet file: \
         iot-sim scenario run FILE --config FLEET --clock virtual --seed {} (start_time {}).\n{}",
        path.display(),
        seed.trim_matches('"'),
        field("start").trim_matches('"'),
        body
    ))
}

fn u64_of(o: &Map<String, Value>, k: &str) -> Result<u64, String> {
    match o.get(k) {
        Some(v) => v.as_u64().ok_or_else(|| format!("{k}: expected a whole number, got {v}")),
        None => Err(format!("missing {k:?}")),
    }
}

fn str_of<'a>(o: &'a Map<String, Value>, k: &str) -> Result<&'a str, String> {
    match o.get(k) {
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("{k}: expected a string, got {v}")),
        None => Err(format!("missing {k:?}")),
    }
}

fn obj_of<'a>(o: &'a Map<String, Value>, k: &str) -> Result<&'a Map<String, Value>, String> {
    match o.get(k) {
        Some(Value::Object(m)) => Ok(m),
        Some(v) => Err(format!("{k}: expected an object, got {v}")),
        None => Err(format!("missing {k:?}")),
    }
}

/// A JSON value as TOML (`null` has no TOML form).
fn to_toml(v: &Value, path: &str) -> Result<toml::Value, String> {
    Ok(match v {
        Value::Null => return Err(format!("{path}: null has no TOML form")),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(
                n.as_f64().ok_or_else(|| format!("{path}: number {n} out of range"))?,
            ),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| to_toml(x, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => toml::Value::Table(table(o, path)?),
    })
}

fn table(o: &Map<String, Value>, path: &str) -> Result<toml::Table, String> {
    o.iter().map(|(k, v)| Ok((k.clone(), to_toml(v, &format!("{path}.{k}"))?))).collect()
}

fn labels_of(v: Option<&Value>, path: &str) -> Result<BTreeMap<String, String>, String> {
    match v {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!("{path}.{k}: a label value must be a string, got {other}")),
            })
            .collect(),
        Some(other) => Err(format!("{path}: expected an object of labels, got {other}")),
    }
}

/// A spawn entry: one `spawn` step per (profile, labels), devices in journal order.
fn spawn(
    o: &Map<String, Value>,
    profiles: &mut BTreeMap<String, (String, toml::Table)>,
) -> Result<Vec<(String, toml::Value)>, String> {
    let specs = obj_of(o, "profiles")?;
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    for (key, spec) in specs {
        let Value::Object(spec) = spec else {
            return Err(format!("profiles.{key}: expected an object (a profile), got {spec}"));
        };
        let t = table(spec, &format!("profiles.{key}"))?;
        for must in ["protocol", "interval", "device_type"] {
            if !t.contains_key(must) {
                return Err(format!("profiles.{key}: missing {must:?}"));
            }
        }
        let text = Value::Object(spec.clone()).to_string();
        let next = profiles.len() + 1;
        let (name, _) = profiles.entry(text).or_insert_with(|| (format!("journal_{next}"), t));
        names.insert(key, name.clone());
    }
    let Some(Value::Array(devices)) = o.get("devices") else {
        return Err("devices: expected an array".into());
    };
    if devices.is_empty() {
        return Err("devices: empty (a spawn entry lists the devices spawned)".into());
    }
    // (profile name, labels) -> ids, in order of first appearance.
    let mut groups: Vec<(String, BTreeMap<String, String>, Vec<String>)> = vec![];
    for (i, d) in devices.iter().enumerate() {
        let Value::Object(d) = d else {
            return Err(format!("devices[{i}]: expected an object, got {d}"));
        };
        let id = str_of(d, "id").map_err(|e| format!("devices[{i}].{e}"))?;
        crate::limits::check_device_id(id).map_err(|e| format!("devices[{i}].id: {e}"))?;
        let key = str_of(d, "profile").map_err(|e| format!("devices[{i}].{e}"))?;
        let Some(profile) = names.get(key) else {
            return Err(format!(
                "devices[{i}].profile: {key:?} is not one of this entry's profiles"
            ));
        };
        let labels = labels_of(d.get("labels"), &format!("devices[{i}].labels"))?;
        match groups.iter_mut().find(|(p, l, _)| p == profile && *l == labels) {
            Some(g) => g.2.push(id.to_string()),
            None => groups.push((profile.clone(), labels, vec![id.to_string()])),
        }
    }
    Ok(groups
        .into_iter()
        .map(|(profile, labels, ids)| {
            let mut t = toml::Table::new();
            t.insert("profile".into(), profile.into());
            t.insert("ids".into(), toml::Value::Array(ids.into_iter().map(Into::into).collect()));
            if !labels.is_empty() {
                t.insert(
                    "labels".into(),
                    toml::Value::Table(labels.into_iter().map(|(k, v)| (k, v.into())).collect()),
                );
            }
            ("spawn".to_string(), toml::Value::Table(t))
        })
        .collect())
}

/// A selection command: its selection and the action's own keys.
fn selected(action: &str, o: &Map<String, Value>) -> Result<toml::Value, String> {
    let sel = obj_of(o, "selection")?;
    let mut t = toml::Table::new();
    match (sel.get("all"), sel.get("ids"), sel.get("selector")) {
        (Some(Value::Bool(true)), None, None) => {
            t.insert("all".into(), true.into());
        }
        (None, Some(Value::Array(ids)), None) if !ids.is_empty() => {
            let ids: Vec<toml::Value> = ids
                .iter()
                .map(|v| v.as_str().map(Into::into))
                .collect::<Option<_>>()
                .ok_or("selection.ids: expected device ids (strings)")?;
            t.insert("ids".into(), toml::Value::Array(ids));
        }
        (None, None, Some(Value::String(s))) => {
            crate::sim::selector::LabelSelector::parse(s)
                .map_err(|e| format!("selection.selector: {e}"))?;
            t.insert("selector".into(), s.clone().into());
        }
        _ => {
            return Err(format!(
                "selection: expected {{\"all\": true}}, {{\"ids\": [...]}} (at least one) or \
                 {{\"selector\": \"...\"}}, got {}",
                Value::Object(sel.clone())
            ));
        }
    }
    let fault_type = |v: &Value, path: &str| -> Result<String, String> {
        match v.as_str() {
            Some(s) if FAULT_TYPES.contains(&s) => Ok(s.to_string()),
            _ => Err(format!("{path}: expected one of {}, got {v}", FAULT_TYPES.join(", "))),
        }
    };
    match action {
        "fault" => {
            let f = obj_of(o, "fault")?;
            let ty = fault_type(f.get("type").unwrap_or(&Value::Null), "fault.type")?;
            t.insert("type".into(), ty.into());
            let d = u64_of(f, "duration_ms").map_err(|e| format!("fault.{e}"))?;
            if d > 0 {
                t.insert("duration".into(), format!("{d}ms").into());
            }
            if let Some(p) = f.get("params") {
                let Value::Object(p) = p else {
                    return Err(format!("fault.params: expected an object, got {p}"));
                };
                if !p.is_empty() {
                    t.insert("params".into(), toml::Value::Table(table(p, "fault.params")?));
                }
            }
        }
        "clear" => match o.get("type") {
            None | Some(Value::Null) => {}
            Some(v) => {
                t.insert("type".into(), fault_type(v, "type")?.into());
            }
        },
        "update" => {
            let u = obj_of(o, "update")?;
            if u.is_empty() {
                return Err("update: empty (nothing to change)".into());
            }
            t.extend(table(u, "update")?);
        }
        _ => {}
    }
    Ok(toml::Value::Table(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(text: &str) -> Result<String, String> {
        to_scenario(text.as_bytes(), Path::new("j.jsonl"), "s")
    }

    const HEAD: &str = r#"{"journal":1,"start":"2026-01-01T00:00:00.000Z","speed":1.0,"run_id":"r","seed":"7","clock":"realtime"}"#;

    #[test]
    fn a_journal_becomes_steps_at_its_offsets() {
        let text = format!(
            "{HEAD}\n{}\n{}\n{}\n{}\n",
            r#"{"seq":1,"wall":"x","sim":"x","offset_ms":1500,"action":"spawn","profiles":{"p1":{"protocol":"null","interval":"100ms","fields":{},"device_type":"t"}},"spawned":2,"devices":[{"id":"a","profile":"p1","labels":{"k":"v"}},{"id":"b","profile":"p1","labels":{}}]}"#,
            r#"{"seq":2,"wall":"x","sim":"x","offset_ms":2500,"action":"stop","selection":{"ids":["a"]},"affected":1}"#,
            r#"{"seq":3,"wall":"x","sim":"x","offset_ms":2000,"action":"fault","selection":{"selector":"k=v"},"fault":{"type":"latency_spike","duration_ms":3000,"params":{"latency_ms":50}},"affected":1}"#,
            r#"{"seq":4,"wall":"x","sim":"x","offset_ms":4000,"action":"end"}"#,
        );
        let out = export(&text).unwrap();
        let doc: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(doc["duration"].as_str(), Some("4000ms"));
        let steps = doc["step"].as_array().unwrap();
        let at: Vec<&str> = steps.iter().map(|s| s["at"].as_str().unwrap()).collect();
        // Two spawn steps (two label sets), then by offset.
        assert_eq!(at, ["1500ms", "1500ms", "2000ms", "2500ms"], "{out}");
        assert_eq!(steps[0]["spawn"]["ids"].as_array().unwrap().len(), 1);
        assert_eq!(steps[0]["spawn"]["profile"].as_str(), Some("journal_1"));
        assert_eq!(steps[2]["fault"]["params"]["latency_ms"].as_integer(), Some(50));
        assert_eq!(steps[2]["fault"]["duration"].as_str(), Some("3000ms"));
        assert_eq!(doc["profiles"]["journal_1"]["device_type"].as_str(), Some("t"));
    }

    #[test]
    fn a_bad_line_is_named_with_its_number() {
        let text = format!(
            "{HEAD}\n{}\n{{\"seq\":2,\"offset_ms\":\"soon\",\"action\":\"stop\"}}\n",
            r#"{"seq":1,"wall":"x","sim":"x","offset_ms":1,"action":"stop","selection":{"all":true},"affected":1}"#
        );
        let e = export(&text).unwrap_err();
        assert!(e.starts_with("j.jsonl:3: offset_ms: expected a whole number"), "{e}");
        let e = export("{\"seq\":1}\n").unwrap_err();
        assert!(e.contains("j.jsonl:1: not a journal header"), "{e}");
        let e = export(&format!("{HEAD}\nnot json\n")).unwrap_err();
        assert!(e.starts_with("j.jsonl:2: not valid JSON"), "{e}");
        let e = export(&format!(
            "{HEAD}\n{}\n",
            r#"{"seq":1,"offset_ms":1,"action":"fault","selection":{"all":true},"fault":{"type":"meltdown","duration_ms":0}}"#
        ))
        .unwrap_err();
        assert!(e.contains("j.jsonl:2: fault.type: expected one of disconnect"), "{e}");
        assert!(export("").unwrap_err().contains("empty"));
    }
}
