//! `format = "protobuf"`: reads `proto_file` (relative to the fleet file) with `protox`, a
//! protobuf compiler in Rust (no `protoc` needed), finds `message`, and maps the message's
//! fields by name into a [`Proto`] plan:
//!
//! - the device id into the string field `id_key` (default `device_id`; `""`: left out);
//! - the timestamp into `timestamp_key` (default `timestamp`): a `google.protobuf.Timestamp`,
//!   an integer (`timestamp = "ms"`, the default for integers, or `"s"`) or a string (RFC 3339);
//! - `device_type`, `event` (strings), `seq` (an integer) and `labels` (`map<string, string>`)
//!   when the message has them;
//! - each simulated field (the profile's and its events') into the field of the same name, of
//!   the message or of its `fields` sub-message when it has one: numbers into any numeric type
//!   (rounded for integers), text into a string or an enum (by value name), booleans into bool.
//!
//! A field the message lacks, or a type that cannot take the values, is a problem naming both.

use crate::sim::behaviour::EventSpec;
use crate::sim::generator::GenSpec;
use crate::sim::profile::FieldSpec;
use crate::sim::proto::{Proto, Scalar, Slot, TsEnc};
use crate::walk::{Problems, Table, join};
use prost_reflect::{Cardinality, DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use std::path::Path;
use std::sync::Arc;

/// The proto type of a field in words (`double`, `string`, `acme.Status`, `repeated int32`).
fn type_name(f: &FieldDescriptor) -> String {
    let base = match f.kind() {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        k => format!("{k:?}").to_ascii_lowercase(),
    };
    if f.is_map() {
        match f.kind() {
            Kind::Message(m) => format!(
                "map<{}, {}>",
                type_name(&m.map_entry_key_field()),
                type_name(&m.map_entry_value_field())
            ),
            _ => base,
        }
    } else if f.is_list() {
        format!("repeated {base}")
    } else {
        base
    }
}

fn scalar(f: &FieldDescriptor) -> Option<Scalar> {
    if f.is_list() || f.is_map() {
        return None;
    }
    Some(match f.kind() {
        Kind::Double => Scalar::Double,
        Kind::Float => Scalar::Float,
        Kind::Int32 => Scalar::Int32,
        Kind::Int64 => Scalar::Int64,
        Kind::Uint32 => Scalar::Uint32,
        Kind::Uint64 => Scalar::Uint64,
        Kind::Sint32 => Scalar::Sint32,
        Kind::Sint64 => Scalar::Sint64,
        Kind::Fixed32 => Scalar::Fixed32,
        Kind::Fixed64 => Scalar::Fixed64,
        Kind::Sfixed32 => Scalar::Sfixed32,
        Kind::Sfixed64 => Scalar::Sfixed64,
        Kind::Bool => Scalar::Bool,
        Kind::String => Scalar::String,
        Kind::Bytes => Scalar::Bytes,
        Kind::Enum(_) => Scalar::Enum,
        Kind::Message(_) => return None,
    })
}

fn slot(f: &FieldDescriptor, ty: Scalar) -> Slot {
    let enum_values = match f.kind() {
        Kind::Enum(e) => e.values().map(|v| (v.name().to_string(), v.number())).collect(),
        _ => vec![],
    };
    Slot { number: f.number(), ty, enum_values }
}

/// What a simulated field publishes, in words, and whether `ty` can take it (`Err`: why not).
fn fits(field: &FieldSpec, ty: Scalar, f: &FieldDescriptor) -> Result<(), String> {
    let enum_has = |s: &str| match f.kind() {
        Kind::Enum(e) => e.get_value_by_name(s).is_some(),
        _ => false,
    };
    match &field.generator {
        GenSpec::Markov(m) => match ty {
            Scalar::String => Ok(()),
            Scalar::Enum => match m.states.iter().find(|s| !enum_has(s)) {
                None => Ok(()),
                Some(s) => Err(format!("state {s:?} is not a value of {}", type_name(f))),
            },
            _ => Err("text (markov states) needs a string or enum field".into()),
        },
        GenSpec::Static { number: Some(_), .. } => {
            if ty.is_number() {
                Ok(())
            } else {
                Err("a number needs a numeric field".into())
            }
        }
        GenSpec::Static { json, .. } => match json.as_str() {
            "null" => Ok(()),
            "true" | "false" if ty == Scalar::Bool => Ok(()),
            "true" | "false" => Err("a boolean needs a bool field".into()),
            j if j.starts_with('"') => {
                let s: String = serde_json::from_str(j).unwrap_or_default();
                match ty {
                    Scalar::String => Ok(()),
                    Scalar::Enum if enum_has(&s) => Ok(()),
                    Scalar::Enum => Err(format!("{s:?} is not a value of {}", type_name(f))),
                    _ => Err("text needs a string or enum field".into()),
                }
            }
            _ if ty == Scalar::String => Ok(()),
            _ => Err("an array or object needs a string field (it is sent as JSON text)".into()),
        },
        _ => {
            if ty.is_number() {
                Ok(())
            } else {
                Err("a number needs a numeric field (double, float or an integer type)".into())
            }
        }
    }
}

/// `line L, column C: ` of a compile error in the main file (`text`), from its label.
fn locate(e: &protox::Error, text: &str, name: &str) -> String {
    use miette::Diagnostic;
    if e.file().is_some_and(|f| f != name) {
        return String::new();
    }
    let Some(label) = e.labels().and_then(|mut l| l.next()) else { return String::new() };
    let off = label.offset().min(text.len());
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
    format!("line {line}, column {col}: ")
}

/// Loads `file` (relative to `base`) and finds `message` in it: by full name, or by its
/// short name when one message has it.
fn load(base: &Path, file: &str, message: &str) -> Result<MessageDescriptor, (bool, String)> {
    let path = base.join(file);
    let text = super::super::read_profile_file(&path)
        .map_err(|e| (true, format!("cannot read {}: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let mut c =
        protox::Compiler::new([&dir]).map_err(|e| (true, format!("{}: {e}", path.display())))?;
    c.include_imports(true);
    c.open_file(&name).map_err(|e| {
        let at = locate(&e, &text, &name.to_string_lossy());
        (true, format!("{} does not compile: {at}{e}", path.display()))
    })?;
    let pool: DescriptorPool = c.descriptor_pool();
    if let Some(m) = pool.get_message_by_name(message.trim_start_matches('.')) {
        return Ok(m);
    }
    let local: Vec<MessageDescriptor> = pool
        .all_messages()
        .filter(|m| m.parent_file().name() == name.to_string_lossy() && !m.is_map_entry())
        .collect();
    let short: Vec<&MessageDescriptor> = local.iter().filter(|m| m.name() == message).collect();
    match short.as_slice() {
        [m] => Ok((*m).clone()),
        _ => Err((
            false,
            format!(
                "no message {message:?} in {file}; its messages: {}",
                local.iter().map(|m| m.full_name()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Reads `proto_file` and `message` and maps the profile's fields (and its events') into a
/// plan. `id_key`, `timestamp_key` and `timestamp` name the id and timestamp fields.
pub fn compile(
    t: &mut Table<'_>,
    base: &Path,
    fields: &[FieldSpec],
    events: &[EventSpec],
    p: &mut Problems,
) -> Option<Proto> {
    let file = t.str("proto_file", p);
    let message = t.str("message", p);
    let (Some(file), Some(message)) = (file, message) else {
        for k in ["proto_file", "message"] {
            if !t.has(k) {
                p.add(t.path_of(k), "missing: format = \"protobuf\" needs proto_file and message");
            }
        }
        return None;
    };
    let md = match load(base, file, message) {
        Ok(m) => m,
        Err((on_file, e)) => {
            p.add(t.path_of(if on_file { "proto_file" } else { "message" }), e);
            return None;
        }
    };
    let before = p.0.len();
    let msg_name = md.full_name().to_string();
    let mut plan = Proto { message: msg_name.clone(), ..Proto::default() };
    // The proto fields taken by the id, timestamp, ...: a simulated field may not take them too.
    let mut taken: Vec<(String, &str)> = vec![];
    let id_key = t.str("id_key", p).unwrap_or("device_id");
    let ts_key = t.str("timestamp_key", p).unwrap_or("timestamp");
    let ts_mode = t.str("timestamp", p);
    let explicit = |t: &Table<'_>, k: &str| t.has(k);
    if !id_key.is_empty() {
        match md.get_field_by_name(id_key) {
            Some(f) if scalar(&f) == Some(Scalar::String) => {
                plan.device_id = Some(f.number());
                taken.push((id_key.to_string(), "the device id"));
            }
            Some(f) => p.add(
                t.path_of("id_key"),
                format!("{msg_name}.{id_key} is {}; the device id needs a string", type_name(&f)),
            ),
            None if explicit(t, "id_key") => p.add(
                t.path_of("id_key"),
                format!("message {msg_name} has no field {id_key:?} for the device id"),
            ),
            None => {}
        }
    }
    if !ts_key.is_empty() {
        let path = if explicit(t, "timestamp_key") { "timestamp_key" } else { "timestamp" };
        match md.get_field_by_name(ts_key) {
            Some(f) => {
                let enc = match (f.kind(), scalar(&f), ts_mode) {
                    (Kind::Message(m), _, None | Some("rfc3339"))
                        if m.full_name() == "google.protobuf.Timestamp" && !f.is_list() =>
                    {
                        Ok(TsEnc::Timestamp)
                    }
                    (_, Some(Scalar::String), None | Some("rfc3339")) => Ok(TsEnc::Rfc3339),
                    (_, Some(ty), None | Some("ms")) if ty.is_integer() && !ty.is_32() => {
                        Ok(TsEnc::Ms(ty))
                    }
                    (_, Some(ty), Some("s")) if ty.is_integer() => Ok(TsEnc::S(ty)),
                    (_, Some(ty), None | Some("ms")) if ty.is_integer() => Err(format!(
                        "{msg_name}.{ts_key} is {}: too small for epoch milliseconds; use \
                         timestamp = \"s\" or a 64-bit integer",
                        type_name(&f)
                    )),
                    (_, _, mode) => Err(format!(
                        "{msg_name}.{ts_key} is {}{}; the timestamp needs a \
                         google.protobuf.Timestamp, an integer (timestamp = \"ms\" or \"s\") or a \
                         string (RFC 3339)",
                        type_name(&f),
                        mode.map(|m| format!(", which cannot take timestamp = {m:?}"))
                            .unwrap_or_default()
                    )),
                };
                match enc {
                    Ok(e) => {
                        plan.timestamp = Some((f.number(), e));
                        taken.push((ts_key.to_string(), "the timestamp"));
                    }
                    Err(e) => p.add(t.path_of(path), e),
                }
            }
            None if explicit(t, "timestamp_key") => p.add(
                t.path_of("timestamp_key"),
                format!("message {msg_name} has no field {ts_key:?} for the timestamp"),
            ),
            None => {}
        }
    }
    // The optional parts, by their names.
    let mut named = |name: &str,
                     what: &'static str,
                     ok: &dyn Fn(&FieldDescriptor) -> bool,
                     need: &str,
                     p: &mut Problems| {
        let f = md.get_field_by_name(name)?;
        if taken.iter().any(|(n, _)| n == name) {
            return None;
        }
        taken.push((name.to_string(), what));
        if ok(&f) {
            Some(f)
        } else {
            p.add(
                t.path_of("message"),
                format!("{msg_name}.{name} is {}; {what} needs {need}", type_name(&f)),
            );
            None
        }
    };
    let is_string = |f: &FieldDescriptor| scalar(f) == Some(Scalar::String);
    plan.device_type =
        named("device_type", "the device type", &is_string, "a string", p).map(|f| f.number());
    plan.event = named("event", "an event's name", &is_string, "a string", p).map(|f| f.number());
    plan.seq = named(
        "seq",
        "the sequence number",
        &|f| scalar(f).is_some_and(Scalar::is_integer),
        "an integer",
        p,
    )
    .map(|f| slot(&f, scalar(&f).unwrap_or(Scalar::Uint64)));
    let string_map = |f: &FieldDescriptor| {
        f.is_map()
            && matches!(f.kind(), Kind::Message(m)
                if m.map_entry_key_field().kind() == Kind::String
                    && m.map_entry_value_field().kind() == Kind::String)
    };
    plan.labels =
        named("labels", "the labels", &string_map, "a map<string, string>", p).map(|f| f.number());
    // The simulated fields: of a `fields` sub-message, or of the message itself.
    let nested = md.get_field_by_name("fields").and_then(|f| match f.kind() {
        Kind::Message(m) if !f.is_list() && !f.is_map() => Some((f.number(), m)),
        _ => None,
    });
    let holder = match &nested {
        Some((n, m)) => {
            plan.nested = Some(*n);
            taken.clear();
            m.clone()
        }
        None => md.clone(),
    };
    let holder_name = holder.full_name().to_string();
    let fields_path = t.path_of("fields");
    let mut all: Vec<(String, &FieldSpec)> =
        fields.iter().map(|f| (join(&fields_path, &f.name), f)).collect();
    for e in events {
        let ep = join(&join(&t.path_of("events"), &e.name), "fields");
        all.extend(e.fields.iter().map(|f| (join(&ep, &f.name), f)));
    }
    for (path, field) in all {
        let name = field.name.as_str();
        if plan.fields.iter().any(|(n, _)| n == name) {
            continue;
        }
        if let Some((_, what)) = taken.iter().find(|(n, _)| n == name) {
            p.add(path, format!("field {name:?}: {holder_name}.{name} already carries {what}"));
            continue;
        }
        let Some(f) = holder.get_field_by_name(name) else {
            p.add(
                path,
                format!(
                    "field {name:?} has no counterpart in message {holder_name} (its fields: {})",
                    holder.fields().map(|f| f.name().to_string()).collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        };
        let Some(ty) = scalar(&f) else {
            p.add(
                path,
                format!(
                    "field {name:?} cannot be written to {holder_name}.{name}, which is {}",
                    type_name(&f)
                ),
            );
            continue;
        };
        match fits(field, ty, &f) {
            Ok(()) => plan.fields.push((name.to_string(), slot(&f, ty))),
            Err(why) => p.add(
                path,
                format!(
                    "field {name:?} cannot be written to {holder_name}.{name} ({}): {why}",
                    type_name(&f)
                ),
            ),
        }
    }
    // A proto2 `required` field nobody fills would make every message invalid.
    for (m, filled) in [(&md, true), (&holder, false)] {
        for f in m.fields() {
            if f.cardinality() == Cardinality::Required {
                let name = f.name();
                let has = if filled {
                    [id_key, ts_key, "device_type", "event", "seq", "labels", "fields"]
                        .contains(&name)
                        || plan.fields.iter().any(|(n, _)| n == name)
                } else {
                    plan.fields.iter().any(|(n, _)| n == name)
                };
                if !has {
                    p.add(
                        t.path_of("message"),
                        format!(
                            "{}.{name} is required, and no part of the message fills it",
                            m.full_name()
                        ),
                    );
                }
            }
        }
    }
    if p.0.len() > before {
        return None;
    }
    plan.fields.sort_by(|a, b| a.0.cmp(&b.0));
    let view_md = md.clone();
    plan.view = Some(Arc::new(move |bytes: &[u8]| {
        match prost_reflect::DynamicMessage::decode(view_md.clone(), bytes) {
            Ok(m) => m.to_text_format(),
            Err(e) => format!("(not a {}: {e})", view_md.full_name()),
        }
    }));
    Some(plan)
}
