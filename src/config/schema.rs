//! `iot-sim schema`: the key catalogue ([`super::keys`]) as a JSON Schema (draft-07), for
//! editors: Taplo and Even Better TOML complete and check keys as the user types.
//!
//! Every table is closed (`additionalProperties: false`), so a misspelt key is flagged; the
//! tables whose keys are names (`[profiles.NAME]`, `fields.NAME`, labels) take any key with the
//! entry's schema. A field's keys depend on its `type`: its table lists every key (for
//! completion) and an `if`/`then` per type narrows them (`propertyNames`) and names the
//! required ones.

use super::keys::{self, Key, Spec, Ty, Variant};
use crate::sim::profile::Protocol;
use serde_json::{Map, Value, json};

/// Which file a schema describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum File {
    /// A fleet file (`iot-sim --config`).
    Fleet,
    /// A scenario file (`iot-sim scenario run`).
    Scenario,
    /// A profile file (`[[fleet]] profile = "x.toml"`).
    Profile,
}

/// A duration as the loader reads it: numbers with units, such as `500ms`, `5s`, `1h30m`, `1d`.
pub const DURATION_PATTERN: &str = r"^\s*([0-9.]+(ms|s|m|h|d))+\s*$";

/// The JSON Schema of one kind of file.
pub fn schema(file: File) -> Value {
    let (spec, title) = match file {
        File::Fleet => (&keys::FLEET_FILE, "iot-sim fleet file"),
        File::Scenario => (&keys::SCENARIO_FILE, "iot-sim scenario file"),
        File::Profile => (&keys::PROFILE, "iot-sim profile file"),
    };
    let mut root = table(spec);
    let o = root.as_object_mut().expect("a table is an object");
    o.insert("$schema".into(), json!("http://json-schema.org/draft-07/schema#"));
    o.insert("title".into(), json!(title));
    o.insert(
        "definitions".into(),
        json!({
            "profile": table(&keys::PROFILE),
            "field": variants(
                "A telemetry field: its type and that type's parameters.",
                keys::GENERATORS,
                keys::FIELD_KINDS,
                keys::FIELD_EXTRA,
            ),
            "generator": variants(
                "A plain generator: its type and that type's parameters.",
                keys::GENERATORS,
                &[],
                &[],
            ),
        }),
    );
    root
}

/// [`schema`] as pretty JSON, with a final newline.
pub fn render(file: File) -> String {
    let mut s = serde_json::to_string_pretty(&schema(file)).expect("a JSON value serializes");
    s.push('\n');
    s
}

fn ty(t: &Ty) -> Value {
    match t {
        Ty::Str => json!({"type": "string"}),
        Ty::Pattern(p) => json!({"type": "string", "pattern": p}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Int(lo, hi) => {
            let mut o = json!({"type": "integer"});
            if *lo > i64::MIN {
                o["minimum"] = json!(lo);
            }
            if *hi < i64::MAX {
                o["maximum"] = json!(hi);
            }
            o
        }
        Ty::IntEnum(v) => json!({"type": "integer", "enum": v}),
        Ty::Num => json!({"type": "number"}),
        Ty::Range(lo, hi) => {
            let mut o = json!({"type": "number"});
            if *lo == f64::MIN_POSITIVE {
                o["exclusiveMinimum"] = json!(0);
            } else {
                o["minimum"] = json!(lo);
            }
            if *hi < f64::MAX {
                o["maximum"] = json!(hi);
            }
            o
        }
        Ty::Duration => json!({"type": "string", "pattern": DURATION_PATTERN}),
        // Taplo and TOML-to-JSON converters give date-times as strings.
        Ty::DateTime => json!({"type": "string", "format": "date-time"}),
        Ty::Enum(v) => json!({"type": "string", "enum": v}),
        Ty::Protocol => {
            let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
            json!({"type": "string", "enum": names})
        }
        Ty::Labels => json!({
            "type": "object",
            "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
        }),
        Ty::Table(s) => table(s),
        Ty::Map(entry) => json!({"type": "object", "additionalProperties": ty(entry)}),
        Ty::Array(item) => json!({"type": "array", "items": ty(item)}),
        Ty::Def(name) => json!({"$ref": format!("#/definitions/{name}")}),
        Ty::AnyOf(alts) => json!({"anyOf": alts.iter().map(ty).collect::<Vec<_>>()}),
        Ty::Any => json!({}),
    }
}

fn key(k: &Key) -> Value {
    let mut v = ty(&k.ty);
    if let Some(o) = v.as_object_mut() {
        o.insert("description".into(), json!(k.doc));
        if let Some(d) = k.default {
            o.insert("default".into(), serde_json::from_str(d).expect("defaults are JSON"));
        }
    }
    v
}

fn table(s: &Spec) -> Value {
    let properties: Map<String, Value> = s.keys.iter().map(|k| (k.name.into(), key(k))).collect();
    let required: Vec<&str> = s.keys.iter().filter(|k| k.required).map(|k| k.name).collect();
    let mut o = json!({
        "type": "object",
        "description": s.doc,
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    if s.path == keys::FAULT.path {
        o["allOf"] = fault_params();
    }
    if s.path == keys::STEP.path {
        // Exactly one action per step.
        let one: Vec<Value> = keys::ACTIONS.iter().map(|a| json!({"required": [a]})).collect();
        o["oneOf"] = json!(one);
    }
    o
}

/// A table keyed by `type`: every key of every type as properties, then one `if`/`then` per
/// type with its keys and required ones. `plain` types also take the `extra` keys;
/// `computed` ones take their own keys only.
fn variants(doc: &str, plain: &[Variant], computed: &[Variant], extra: &[Key]) -> Value {
    let all: Vec<&Variant> = plain.iter().chain(computed).collect();
    let names: Vec<&str> = all.iter().map(|v| v.name).collect();
    let type_doc = all.iter().map(|v| format!("{}: {}", v.name, v.doc)).collect::<Vec<_>>();
    let mut properties = Map::new();
    properties.insert(
        "type".into(),
        json!({"type": "string", "enum": names, "description": type_doc.join(" ")}),
    );
    for k in extra {
        properties.insert(k.name.into(), key(k));
    }
    // A key several types share (`mean`, `decimals`) gets one schema, with each type's doc.
    for v in &all {
        for k in v.keys {
            if properties.contains_key(k.name) {
                continue;
            }
            let users: Vec<(&str, &Key)> = all
                .iter()
                .filter_map(|w| w.keys.iter().find(|x| x.name == k.name).map(|x| (w.name, x)))
                .collect();
            let mut s = key(k);
            if users.len() > 1 {
                let doc: Vec<String> =
                    users.iter().map(|(w, x)| format!("{w}: {}", x.doc)).collect();
                s["description"] = json!(doc.join(" "));
                if let Some(o) = s.as_object_mut() {
                    o.remove("default");
                }
            }
            properties.insert(k.name.into(), s);
        }
    }
    let cases: Vec<Value> = all
        .iter()
        .map(|v| {
            let mut allowed = vec!["type"];
            if plain.iter().any(|p| p.name == v.name) {
                allowed.extend(extra.iter().map(|k| k.name));
            }
            allowed.extend(v.names());
            let required: Vec<&str> =
                v.keys.iter().filter(|k| k.required).map(|k| k.name).collect();
            json!({
                "if": {"properties": {"type": {"const": v.name}}, "required": ["type"]},
                "then": {"propertyNames": {"enum": allowed}, "required": required},
            })
        })
        .collect();
    json!({
        "type": "object",
        "description": doc,
        "properties": properties,
        "required": ["type"],
        "additionalProperties": false,
        "allOf": cases,
    })
}

/// A fault step's `params`, by fault type.
fn fault_params() -> Value {
    let cases: Vec<Value> = keys::FAULT_PARAMS
        .iter()
        .map(|v| {
            let properties: Map<String, Value> =
                v.keys.iter().map(|k| (k.name.into(), key(k))).collect();
            json!({
                "if": {"properties": {"type": {"const": v.name}}, "required": ["type"]},
                "then": {"properties": {"params": {
                    "type": "object",
                    "description": v.doc,
                    "properties": properties,
                    "additionalProperties": false,
                }}},
            })
        })
        .collect();
    json!(cases)
}

#[cfg(test)]
mod tests;
