//! The catalogue against the loader (drift, both ways), and the schema against the shipped
//! files with an independent validator (Python's `jsonschema`).
//!
//! Drift: for every table of the catalogue, a probe document holds every catalogue key of the
//! table plus one bogus key, and goes through the real loader. The loader must refuse the
//! bogus key and nothing else (so it reads every catalogue key), and the accepted list its
//! message gives must be the catalogue's (so the catalogue holds every key the loader takes,
//! as the walker refuses any key read but not in that list).

use super::super::keys::{self, Key, Spec, Ty};
use super::{File, render};
use crate::walk::{Problem, join};
use std::path::{Path, PathBuf};
use toml::Value;

const BOGUS: &str = "zz_not_a_key";

const FLEET: &str = r#"
[run]
clock = "virtual"
duration = "1h"
[sink.file]
path = "out.jsonl"
[[fleet]]
profile = "p"
count = 1
[profiles.p]
protocol = "file"
interval = "1s"
[profiles.p.fields.t]
type = "gaussian"
mean = 0
stddev = 1
"#;

/// A scenario on its own fleet, with one step.
fn scenario_base() -> String {
    format!("duration = \"1h\"\n{FLEET}\n[[step]]\nat = \"0s\"\nlog = \"hi\"\n")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Fleet,
    Scenario,
}

/// A value of the key's type, to put in a probe.
fn sample(t: &Ty) -> Value {
    match t {
        Ty::Str | Ty::Any => Value::String("x".into()),
        Ty::Pattern(_) => Value::String("1".into()),
        Ty::Bool => Value::Boolean(true),
        Ty::Int(lo, _) => Value::Integer(*lo),
        Ty::IntEnum(v) => Value::Integer(v[0]),
        Ty::Num => Value::Float(1.0),
        Ty::Range(lo, _) if *lo == f64::MIN_POSITIVE => Value::Float(1.0),
        Ty::Range(lo, _) => Value::Float(*lo),
        Ty::Duration => Value::String("1s".into()),
        Ty::DateTime => Value::String("2026-01-01T00:00:00Z".into()),
        Ty::Enum(v) => Value::String(v[0].into()),
        Ty::Protocol => Value::String("file".into()),
        Ty::Labels | Ty::Table(_) | Ty::Map(_) | Ty::Def(_) => Value::Table(Default::default()),
        Ty::Array(_) => Value::Array(vec![]),
        Ty::AnyOf(alts) => sample(&alts[0]),
    }
}

/// Values that must make sense for the loader to get to its key check.
fn special(key: &str) -> Option<Value> {
    let text = match key {
        "states" => r#"v = ["a", "b"]"#,
        "transition_matrix" => "v = [[0.5, 0.5], [0.5, 0.5]]",
        "initial_state" => r#"v = "a""#,
        _ => return None,
    };
    text.parse::<toml::Table>().ok()?.remove("v")
}

/// The table at `at` (`["fleet", "0"]` is the first `[[fleet]]`), made if missing.
fn table_at<'a>(doc: &'a mut toml::Table, at: &[&str]) -> &'a mut toml::Table {
    let Some((first, rest)) = at.split_first() else { return doc };
    if let Some((n, rest)) =
        rest.split_first().and_then(|(n, r)| Some((n.parse::<usize>().ok()?, r)))
    {
        let a = doc.entry(*first).or_insert(Value::Array(vec![]));
        let a = a.as_array_mut().expect("an array");
        while a.len() <= n {
            a.push(Value::Table(Default::default()));
        }
        return table_at(a[n].as_table_mut().expect("a table"), rest);
    }
    let t = doc.entry(*first).or_insert(Value::Table(Default::default()));
    table_at(t.as_table_mut().expect("a table"), rest)
}

/// The walker's path of `at`: `fleet[0].labels`.
fn walker_path(at: &[&str]) -> String {
    let mut out = String::new();
    for seg in at {
        if seg.parse::<usize>().is_ok() {
            out.push_str(&format!("[{seg}]"));
        } else {
            out = join(&out, seg);
        }
    }
    out
}

fn problems(kind: Kind, doc: &toml::Table) -> Vec<Problem> {
    match kind {
        Kind::Fleet => match super::super::compile_with_env(doc, Path::new("."), false, &[]) {
            Ok(_) => vec![],
            Err(p) => p.0,
        },
        Kind::Scenario => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("probe.toml");
            std::fs::write(&path, toml::to_string(doc).unwrap()).unwrap();
            match crate::scenario::load(&path, None, &Default::default()) {
                Ok(_) => vec![],
                Err(crate::scenario::ScenarioError::Invalid { problems, .. }) => problems.0,
                Err(e) => panic!("probe did not load: {e}"),
            }
        }
    }
}

/// The list after `marker` in a message: `...; accepted: a, b, c`.
fn list_after(message: &str, marker: &str) -> Option<Vec<String>> {
    let rest = &message[message.find(marker)? + marker.len()..];
    Some(rest.split(", ").filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// Loads a probe: `setup` prepares the document, then the table at `at` gets every key of
/// `fill` it lacks (`skip` aside) and the bogus key. The loader must refuse the bogus key
/// only, and list `expected` as the accepted keys.
fn probe(
    kind: Kind,
    setup: impl FnOnce(&mut toml::Table),
    at: &[&str],
    fill: &[Key],
    skip: &[&str],
    expected: &[&str],
) {
    let base = match kind {
        Kind::Fleet => FLEET.to_string(),
        Kind::Scenario => scenario_base(),
    };
    let mut doc: toml::Table = base.parse().unwrap();
    setup(&mut doc);
    let t = table_at(&mut doc, at);
    for k in fill.iter().filter(|k| !skip.contains(&k.name)) {
        if !t.contains_key(k.name) {
            t.insert(k.name.into(), special(k.name).unwrap_or_else(|| sample(&k.ty)));
        }
    }
    t.insert(BOGUS.into(), Value::String("x".into()));
    let path = walker_path(at);
    let got = problems(kind, &doc);
    let refused: Vec<(&str, &Problem)> = got
        .iter()
        .filter(|q| q.message.starts_with("unknown key") || q.message.starts_with("unknown param"))
        .filter_map(|q| {
            let key = if path.is_empty() {
                Some(q.path.as_str())
            } else {
                q.path.strip_prefix(&format!("{path}."))
            }?;
            (!key.contains(['.', '['])).then_some((key, q))
        })
        .collect();
    let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
    let others: Vec<&str> = refused.iter().map(|r| r.0).filter(|k| *k != BOGUS).collect();
    assert!(
        others.is_empty(),
        "{path:?}: the loader refuses catalogue keys {others:?}; problems: {shown:#?}"
    );
    let Some((_, bogus)) = refused.iter().find(|r| r.0 == BOGUS) else {
        panic!("{path:?}: the loader did not check the keys here; problems: {shown:#?}")
    };
    let accepted = list_after(&bogus.message, "accepted keys here: ")
        .or_else(|| list_after(&bogus.message, "accepted here: "))
        .expect("the message lists the accepted keys");
    assert_eq!(
        accepted, expected,
        "{path:?}: the loader accepts (left) what the catalogue lists (right)"
    );
}

fn table_probe(kind: Kind, at: &[&str], spec: &Spec) {
    probe(kind, |_| {}, at, spec.keys, &[], &spec.names());
}

/// Keys that exclude each other: a probe with both would refuse one. Each gets its own probe.
const ALTERNATIVES: &[(&str, &str, &str)] = &[("diurnal", "noise_stddev", "stddev")];

#[test]
fn every_fleet_table_accepts_exactly_the_catalogue_keys() {
    use Kind::Fleet;
    table_probe(Fleet, &[], &keys::FLEET_FILE);
    table_probe(Fleet, &["run"], &keys::RUN);
    table_probe(Fleet, &["sink"], &keys::SINK);
    table_probe(Fleet, &["sink", "console"], &keys::SINK_EMPTY);
    table_probe(Fleet, &["sink", "null"], &keys::SINK_EMPTY);
    table_probe(Fleet, &["sink", "file"], &keys::SINK_FILE);
    table_probe(Fleet, &["sink", "mqtt"], &keys::SINK_MQTT);
    table_probe(Fleet, &["sink", "mqtt", "per_device"], &keys::MQTT_PER_DEVICE);
    table_probe(Fleet, &["sink", "mqtt", "per_device", "token"], &keys::MQTT_TOKEN);
    table_probe(Fleet, &["sink", "amqp"], &keys::SINK_AMQP);
    table_probe(Fleet, &["sink", "http"], &keys::SINK_HTTP);
    table_probe(Fleet, &["sink", "coap"], &keys::SINK_COAP);
    table_probe(Fleet, &["fleet", "0"], &keys::FLEET_ENTRY);
    table_probe(Fleet, &["profiles", "p"], &keys::PROFILE);
    table_probe(Fleet, &["profiles", "p", "replay"], &keys::REPLAY);
    table_probe(Fleet, &["profiles", "p", "report"], &keys::REPORT);
    table_probe(Fleet, &["profiles", "p", "mqtt5"], &keys::MQTT5);
    table_probe(Fleet, &["profiles", "p", "events", "e"], &keys::EVENT);
    table_probe(Fleet, &["profiles", "p", "availability"], &keys::AVAILABILITY);
    table_probe(Fleet, &["profiles", "p", "sleep"], &keys::SLEEP);
    table_probe(Fleet, &["threshold", "0"], &keys::THRESHOLD);
    table_probe(Fleet, &["audit"], &keys::AUDIT);
}

#[test]
fn every_field_type_accepts_exactly_the_catalogue_keys() {
    let extra: Vec<&str> = keys::FIELD_EXTRA.iter().map(|k| k.name).collect();
    for v in keys::GENERATORS.iter().chain(keys::FIELD_KINDS) {
        let plain = keys::generator(v.name).is_some();
        let mut expected = vec!["type"];
        let mut fill: Vec<Key> = v.keys.to_vec();
        if plain {
            expected.extend(&extra);
            fill.extend(keys::FIELD_EXTRA);
        }
        expected.extend(v.names());
        let alts: Vec<Vec<&str>> = match ALTERNATIVES.iter().find(|a| a.0 == v.name) {
            Some((_, a, b)) => vec![vec![*a], vec![*b]],
            None => vec![vec![]],
        };
        let with_type = |doc: &mut toml::Table| {
            let t = table_at(doc, &["profiles", "p", "fields", "f"]);
            t.insert("type".into(), v.name.into());
        };
        for skip in &alts {
            probe(
                Kind::Fleet,
                with_type,
                &["profiles", "p", "fields", "f"],
                &fill,
                skip,
                &expected,
            );
        }
        if plain {
            // An event's fields take plain generators, without the profile field's keys.
            let at = ["profiles", "p", "events", "e", "fields", "f"];
            let mut expected = vec!["type"];
            expected.extend(v.names());
            for skip in &alts {
                let set = |doc: &mut toml::Table| {
                    table_at(doc, &at).insert("type".into(), v.name.into());
                };
                probe(Kind::Fleet, set, &at, v.keys, skip, &expected);
            }
        }
    }
}

#[test]
fn every_scenario_table_accepts_exactly_the_catalogue_keys() {
    use Kind::Scenario;
    table_probe(Scenario, &[], &keys::SCENARIO_FILE);
    table_probe(Scenario, &["step", "0"], &keys::STEP);
    table_probe(Scenario, &["step", "0", "repeat"], &keys::REPEAT);
    table_probe(Scenario, &["step", "0", "batches"], &keys::BATCHES);
    table_probe(Scenario, &["step", "0", "spawn"], &keys::SPAWN);
    table_probe(Scenario, &["step", "0", "stop"], &keys::STOP);
    table_probe(Scenario, &["step", "0", "pause"], &keys::PAUSE);
    table_probe(Scenario, &["step", "0", "resume"], &keys::RESUME);
    table_probe(Scenario, &["step", "0", "fault"], &keys::FAULT);
    table_probe(Scenario, &["step", "0", "clear"], &keys::CLEAR);
    table_probe(Scenario, &["step", "0", "update"], &keys::UPDATE);
    table_probe(Scenario, &["threshold", "0"], &keys::THRESHOLD);
    for v in keys::FAULT_PARAMS {
        let set = |doc: &mut toml::Table| {
            let f = table_at(doc, &["step", "0", "fault"]);
            f.insert("type".into(), v.name.into());
            f.insert("all".into(), true.into());
        };
        probe(Scenario, set, &["step", "0", "fault", "params"], v.keys, &[], &v.names());
    }
}

/// The first problem's list after `marker`, for a document with `edit` applied.
fn listed(kind: Kind, edit: impl FnOnce(&mut toml::Table), marker: &str) -> Vec<String> {
    let mut doc: toml::Table = match kind {
        Kind::Fleet => FLEET.parse().unwrap(),
        Kind::Scenario => scenario_base().parse().unwrap(),
    };
    edit(&mut doc);
    let got = problems(kind, &doc);
    got.iter()
        .find_map(|q| list_after(&q.message, marker))
        .unwrap_or_else(|| panic!("no problem lists {marker:?}: {got:#?}"))
}

fn names(v: &[keys::Variant]) -> Vec<String> {
    v.iter().map(|v| v.name.to_string()).collect()
}

#[test]
fn the_catalogue_names_every_type_metric_fault_and_action_the_loader_knows() {
    let set = |at: &'static [&'static str], key: &'static str, v: &'static str| {
        move |doc: &mut toml::Table| {
            table_at(doc, at).insert(key.into(), v.into());
        }
    };
    let mut kinds = names(keys::GENERATORS);
    assert_eq!(
        listed(Kind::Fleet, set(&["profiles", "p", "fields", "t"], "type", "zz"), "accepted: "),
        kinds,
        "generator types"
    );
    // Field types: the plain ones, and the computed ones the field table dispatches on.
    kinds.extend(names(keys::FIELD_KINDS));
    let field_doc =
        super::schema(File::Fleet)["definitions"]["field"]["properties"]["type"]["enum"].clone();
    assert_eq!(serde_json::to_value(&kinds).unwrap(), field_doc);
    for v in keys::FIELD_KINDS {
        let mut doc: toml::Table = FLEET.parse().unwrap();
        table_at(&mut doc, &["profiles", "p", "fields", "t"]).insert("type".into(), v.name.into());
        let got = problems(Kind::Fleet, &doc);
        assert!(
            got.iter().all(|q| !q.message.contains("unknown generator")),
            "{}: {got:?}",
            v.name
        );
    }
    assert_eq!(
        listed(Kind::Fleet, set(&["threshold", "0"], "metric", "zz"), "accepted: "),
        keys::METRICS
    );
    assert_eq!(
        listed(Kind::Fleet, set(&["profiles", "p"], "protocol", "zz"), "accepted: "),
        crate::sim::profile::Protocol::ALL.iter().map(|p| p.name()).collect::<Vec<_>>()
    );
    let fault = |doc: &mut toml::Table| {
        let step = table_at(doc, &["step", "0"]);
        step.remove("log");
        let f = table_at(step, &["fault"]);
        f.insert("type".into(), "zz".into());
        f.insert("all".into(), true.into());
    };
    assert_eq!(listed(Kind::Scenario, fault, "accepted: "), keys::FAULT_TYPES);
    assert_eq!(names(keys::FAULT_PARAMS), keys::FAULT_TYPES);
    let no_action = |doc: &mut toml::Table| {
        table_at(doc, &["step", "0"]).remove("log");
    };
    assert_eq!(listed(Kind::Scenario, no_action, "give one of "), keys::ACTIONS);
    let step_keys = keys::STEP.names();
    assert!(keys::ACTIONS.iter().all(|a| step_keys.contains(a)));
}

#[test]
fn defaults_and_required_keys_fit_their_schemas() {
    for spec in keys::SPECS {
        for k in spec.keys {
            if let Some(d) = k.default {
                let v: serde_json::Value = serde_json::from_str(d)
                    .unwrap_or_else(|e| panic!("{}.{}: default {d:?}: {e}", spec.path, k.name));
                assert!(!k.required, "{}.{}: required with a default", spec.path, k.name);
                assert!(!v.is_null());
            }
        }
    }
    for f in [File::Fleet, File::Scenario, File::Profile] {
        let text = render(f);
        assert!(text.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(v["additionalProperties"], false);
    }
}

// ---------------------------------------------------------------------------------------------
// The schema against the shipped files, with Python's jsonschema (an independent validator).

/// Validates TOML files against a schema: prints `OK path` or `INVALID path` then the errors.
const VALIDATE_PY: &str = r#"
import datetime, json, sys, tomllib
from jsonschema import Draft7Validator

def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    return v

with open(sys.argv[1]) as f:
    schema = json.load(f)
Draft7Validator.check_schema(schema)
validator = Draft7Validator(schema)
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        doc = plain(tomllib.load(f))
    errors = list(validator.iter_errors(doc))
    print(("INVALID " if errors else "OK ") + path)
    for e in errors:
        at = "/".join(str(p) for p in e.absolute_path)
        print(f"  {at}: {e.message}")
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python with `jsonschema`: Debian's python3-jsonschema installs for /usr/bin/python3, which
/// another `python3` first on the PATH (pyenv, a venv) may not see.
fn python() -> &'static str {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import jsonschema"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or("python3")
}

/// Runs the validator on `files`: each file's verdict line and error lines.
fn validate(dir: &Path, file: File, files: &[PathBuf]) -> Vec<(String, bool, String)> {
    let schema = dir.join(format!("{file:?}.schema.json"));
    std::fs::write(&schema, render(file)).unwrap();
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(VALIDATE_PY)
        .arg(&schema)
        .args(files)
        .output()
        .expect("python3 runs (the schema test needs python3 with jsonschema: apt-get install python3-jsonschema)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the validator failed (python3 with jsonschema is needed: apt-get install \
         python3-jsonschema): {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verdicts: Vec<(String, bool, String)> = vec![];
    for line in stdout.lines() {
        if let Some(p) = line.strip_prefix("OK ") {
            verdicts.push((p.to_string(), true, String::new()));
        } else if let Some(p) = line.strip_prefix("INVALID ") {
            verdicts.push((p.to_string(), false, String::new()));
        } else if let Some(last) = verdicts.last_mut() {
            last.2.push_str(line);
            last.2.push('\n');
        }
    }
    assert_eq!(verdicts.len(), files.len(), "{stdout}");
    verdicts
}

/// Every shipped fleet, scenario and profile file, by kind.
fn shipped() -> Vec<(File, PathBuf)> {
    let mut out = vec![];
    for dir in ["configs", "scenarios", "bench", "deploy/config", "deploy/config/profiles", "tests"]
    {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for p in paths {
            let doc: toml::Table = std::fs::read_to_string(&p).unwrap().parse().unwrap();
            let kind = if doc.contains_key("step") {
                File::Scenario
            } else if doc.contains_key("protocol") {
                File::Profile
            } else {
                File::Fleet
            };
            out.push((kind, p));
        }
    }
    out
}

#[test]
fn shipped_files_pass_the_schema_and_misspelt_keys_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let files = shipped();
    for kind in [File::Fleet, File::Scenario, File::Profile] {
        let these: Vec<PathBuf> =
            files.iter().filter(|f| f.0 == kind).map(|f| f.1.clone()).collect();
        assert!(!these.is_empty(), "no {kind:?} files found");
        for (path, ok, errors) in validate(dir.path(), kind, &these) {
            assert!(ok, "{path} does not pass the {kind:?} schema:\n{errors}");
        }
    }
    assert!(files.iter().filter(|f| f.0 == File::Fleet).count() >= 8);
    assert!(files.iter().filter(|f| f.0 == File::Scenario).count() >= 5);

    // Misspelt keys, each in a copy of a shipped file: the schema flags them, as the loader does.
    let fleet = std::fs::read_to_string(root().join("configs/fleet.toml")).unwrap();
    let scenario = std::fs::read_to_string(root().join("scenarios/diurnal_week.toml")).unwrap();
    // (file, text, replace, with, the misspelt key)
    let typos: &[(File, &str, &str, &str, &str)] = &[
        (File::Fleet, &fleet, "seed = 42", "sed = 42", "sed"),
        (File::Fleet, &fleet, "path = \"out/", "paht = \"out/", "paht"),
        (File::Fleet, &fleet, "interval = \"5s\"", "intervall = \"5s\"", "intervall"),
        (File::Fleet, &fleet, "noise_stddev = 0.3", "noise_stdev = 0.3", "noise_stdev"),
        (File::Fleet, &fleet, "count = 20000", "count = 20000\nlabel = { a = \"b\" }", "label"),
        (File::Scenario, &scenario, "at = \"5d\"", "att = \"5d\"", "att"),
        (File::Scenario, &scenario, "count = 40", "cont = 40", "cont"),
        (File::Scenario, &scenario, "max = 0", "maks = 0", "maks"),
    ];
    for (kind, text, from, to, typo) in typos {
        assert!(text.contains(from), "{from:?} is not in the file any more");
        let path = dir.path().join(format!("{typo}.toml"));
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let verdict = validate(dir.path(), *kind, std::slice::from_ref(&path)).remove(0);
        assert!(!verdict.1, "the schema accepts the misspelt {typo:?}");
        assert!(verdict.2.contains(&format!("'{typo}'")), "{typo:?}: {}", verdict.2);
        // The loader refuses it too.
        let doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let kind = if *kind == File::Fleet { Kind::Fleet } else { Kind::Scenario };
        let got = problems(kind, &doc);
        assert!(
            got.iter().any(|q| q.path.ends_with(typo) && q.message.starts_with("unknown key")),
            "the loader accepts {typo:?}: {got:?}"
        );
    }
}

/// The user guide documents every key (issue 21: "every config key documented once, with its
/// default, in the guide"): each key of the catalogue, the generators' and field kinds'
/// parameters included, appears in `docs/src/` as `` `name` `` or `name =`. A key added to the
/// loader (and so to the catalogue) without a word in the guide fails here.
#[test]
fn every_catalogue_key_is_mentioned_in_the_user_guide() {
    let mut guide = String::new();
    for entry in std::fs::read_dir(root().join("docs/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "md") {
            guide.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    let mentioned = |name: &str| {
        guide.contains(&format!("`{name}`"))
            || guide.contains(&format!("{name} ="))
            || guide.contains(&format!("`{name} "))
            || guide.contains(&format!("{name}: "))
            || guide.contains(&format!("{name}, "))
            || guide.contains(&format!("[[{name}]]"))
            || guide.contains(&format!(".{name}]"))
    };
    let mut missing = vec![];
    for spec in keys::SPECS {
        for k in spec.keys.iter().filter(|k| !mentioned(k.name)) {
            missing.push(join(spec.path, k.name));
        }
    }
    for v in keys::GENERATORS.iter().chain(keys::FIELD_KINDS) {
        for k in v.keys.iter().filter(|k| !mentioned(k.name)) {
            missing.push(format!("{} ({}).{}", "fields", v.name, k.name));
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "keys the user guide (docs/src/) does not mention: {missing:?}");
}
