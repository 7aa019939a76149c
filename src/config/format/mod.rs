//! A profile's payload format keys: `format`, `id_key`, `timestamp_key`, `timestamp`,
//! `template`, `template_file` and `content_type`, and a field's `unit` (issue 22).
//!
//! A template is compiled here, once per profile; [`check_sample`] renders one message per
//! fleet entry (and per event) at load, so an undefined variable, or output that is not JSON
//! while the content type says JSON, is a problem of the file and not of the run.

use crate::sim::format::{self, Body, Flat, Kind, PayloadFormat, TsMode, Wire};
use crate::sim::generator::{GenSpec, Sample};
use crate::sim::payload;
use crate::sim::profile::{FieldSpec, Profile, TopicPart, TopicTemplate};
use crate::sim::sparkplug;
use crate::walk::{Problems, Table};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

thread_local! {
    /// The folder of the fleet file being compiled: `template_file` is relative to it.
    static BASE: RefCell<PathBuf> = RefCell::new(PathBuf::from("."));
}

/// Sets the folder `template_file` paths resolve against while `f` runs.
pub fn with_base<T>(base: &Path, f: impl FnOnce() -> T) -> T {
    let old = BASE.with(|b| b.replace(base.to_path_buf()));
    let out = f();
    BASE.with(|b| *b.borrow_mut() = old);
    out
}

/// Content types live as long as the process: each distinct one is stored once, so a
/// message carries a `&'static str`.
fn intern(s: &str) -> &'static str {
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(x) = seen.iter().find(|x| **x == s) {
        return x;
    }
    let x: &'static str = Box::leak(s.to_string().into_boxed_str());
    seen.push(x);
    x
}

/// Whether a content type is JSON (`application/json`, `application/senml+json`, ...).
pub fn is_json(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    base == "application/json" || base.ends_with("+json")
}

/// Reads the format keys of a profile table. `fields` gives the units (`unit` of each field,
/// already read by the field compiler).
pub fn compile(t: &mut Table<'_>, units: Vec<(String, String)>, p: &mut Problems) -> PayloadFormat {
    let name = t.str("format", p).unwrap_or("envelope");
    if !format::FORMATS.contains(&name) {
        p.add(
            t.path_of("format"),
            format!("unknown format {name:?}; accepted: {}", format::FORMATS.join(", ")),
        );
    }
    let only = |t: &Table<'_>, key: &str, want: &str, p: &mut Problems| {
        if t.has(key) && name != want {
            p.add(t.path_of(key), format!("only applies to format = \"{want}\""));
        }
    };
    for k in ["id_key", "timestamp_key", "timestamp"] {
        only(t, k, "flat", p);
        t.allow(k);
    }
    for k in ["template", "template_file"] {
        only(t, k, "template", p);
        t.allow(k);
    }
    only(t, "sparkplug", "sparkplug_b", p);
    t.allow("sparkplug");
    let mut wire = PayloadFormat::default_wire(name);
    let kind = match name {
        "flat" => {
            let id_key = t.str("id_key", p).unwrap_or("device_id");
            let ts_key = t.str("timestamp_key", p).unwrap_or("timestamp");
            let ts = match t.str("timestamp", p) {
                None => TsMode::Rfc3339,
                Some(s) => TsMode::parse(s).unwrap_or_else(|| {
                    p.add(
                        t.path_of("timestamp"),
                        format!(
                            "unknown timestamp mode {s:?}; accepted: {}",
                            TsMode::NAMES.join(", ")
                        ),
                    );
                    TsMode::Rfc3339
                }),
            };
            if !id_key.is_empty() && id_key == ts_key {
                p.add(t.path_of("timestamp_key"), format!("{ts_key:?} is also the id_key"));
            }
            let key = |k: &str| if k.is_empty() { String::new() } else { payload::key_json(k) };
            Kind::Flat(Flat { id_key_json: key(id_key), ts_key_json: key(ts_key), ts })
        }
        "template" => match template_source(t, p) {
            Some(src) => match format::Template::compile(src) {
                Ok(tpl) => Kind::Template(Arc::new(tpl)),
                Err(e) => {
                    let key = if t.has("template") { "template" } else { "template_file" };
                    p.add(t.path_of(key), format!("template syntax error at {e}"));
                    Kind::Envelope
                }
            },
            None => Kind::Envelope,
        },
        "cbor" => Kind::Cbor,
        "senml" => Kind::Senml,
        "senml_cbor" => Kind::SenmlCbor,
        "sparkplug_b" => match sparkplug_spec(t, p) {
            Some(s) => Kind::Sparkplug(Arc::new(s)),
            None => Kind::Envelope,
        },
        _ => Kind::Envelope,
    };
    if let Some(ct) = t.str("content_type", p) {
        if ct.trim().is_empty() || !ct.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            p.add(t.path_of("content_type"), format!("not a content type: {ct:?}"));
        } else {
            wire.content_type = intern(ct);
            if name == "template" {
                wire.body = if is_json(ct) { Body::Json } else { Body::Text };
                wire.coap = coap_of(ct);
            }
        }
    } else if name == "template" {
        // Without a content type, a template is JSON if its sample renders as JSON
        // (`check_sample` settles it).
        wire = Wire::default();
    }
    let typed = t.has("content_type");
    let path = t.path_of(if t.has("template_file") { "template_file" } else { "template" });
    PayloadFormat { kind, wire, units, typed, path }
}

/// `[profiles.NAME.sparkplug]`: `group_id` (a Sparkplug id) and `edge_node` (a template over
/// the device's id, type and labels; its literal text must be a valid id too).
fn sparkplug_spec(t: &mut Table<'_>, p: &mut Problems) -> Option<sparkplug::Spec> {
    let Some(mut sp) = t.table("sparkplug", p) else {
        p.add(
            t.path_of("sparkplug"),
            "missing: format = \"sparkplug_b\" needs [profiles.NAME.sparkplug] with group_id \
             and edge_node",
        );
        return None;
    };
    let group = sp.req_str("group_id", p);
    if let Some(g) = group
        && let Some(why) = sparkplug::id_problem(g)
    {
        p.add(sp.path_of("group_id"), format!("{g:?}: a Sparkplug id {why}"));
    }
    let node = sp.req_str("edge_node", p).and_then(|n| {
        let parsed = TopicTemplate::parse(n).map_err(|e| p.add(sp.path_of("edge_node"), e)).ok()?;
        let literal: String = parsed
            .parts
            .iter()
            .filter_map(|x| match x {
                TopicPart::Literal(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        if literal.contains(['/', '+', '#']) || parsed.parts.is_empty() {
            p.add(
                sp.path_of("edge_node"),
                format!("{n:?}: a Sparkplug id must not be empty or contain '/', '+' or '#'"),
            );
            return None;
        }
        Some(parsed)
    });
    sp.finish_with(&super::keys::SPARKPLUG.names(), p);
    Some(sparkplug::Spec { group_id: group?.to_string(), edge_node: node? })
}

/// A Sparkplug profile's edge node and device ids for one fleet entry (`labels`, the path of
/// its labels; `first_id`, its first device id): each must be a valid Sparkplug id.
pub fn check_sparkplug(
    profile: &Profile,
    labels: &BTreeMap<String, String>,
    labels_path: &str,
    first_id: &str,
    p: &mut Problems,
) {
    let Some(spec) = profile.format.sparkplug() else { return };
    for part in &spec.edge_node.parts {
        if let TopicPart::Label(k) = part
            && !labels.contains_key(k)
        {
            p.add(
                labels_path,
                format!(
                    "the Sparkplug edge_node {:?} of profile {:?} uses {{labels.{k}}}, which \
                     these devices do not have",
                    spec.edge_node.source, profile.name
                ),
            );
            return;
        }
    }
    let mut node = vec![];
    spec.edge_node.render(&mut node, first_id, &profile.device_type, labels);
    let node = String::from_utf8_lossy(&node);
    if let Some(why) = sparkplug::id_problem(&node) {
        p.add(
            labels_path,
            format!(
                "the Sparkplug edge_node {:?} of profile {:?} is {node:?} here: a Sparkplug id {why}",
                spec.edge_node.source, profile.name
            ),
        );
    }
    if let Some(why) = sparkplug::id_problem(first_id) {
        p.add(
            labels_path,
            format!(
                "device id {first_id:?} of profile {:?}: a Sparkplug device id {why}",
                profile.name
            ),
        );
    }
}

/// The CoAP Content-Format of a content type (RFC 7252 section 12.3 and RFC 8428): 0 for
/// text, 50 for JSON, 60 for CBOR, 110 / 112 for SenML, 42 (octet-stream) otherwise.
pub fn coap_of(ct: &str) -> u16 {
    match ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "text/plain" => 0,
        "application/json" => 50,
        "application/cbor" => 60,
        "application/senml+json" => 110,
        "application/senml+cbor" => 112,
        s if s.ends_with("+json") => 50,
        s if s.starts_with("text/") => 0,
        _ => 42,
    }
}

fn template_source(t: &mut Table<'_>, p: &mut Problems) -> Option<String> {
    match (t.str("template", p), t.str("template_file", p)) {
        (Some(_), Some(_)) => {
            p.add(t.path_of("template_file"), "give template or template_file, not both");
            None
        }
        (Some(s), None) => Some(s.to_string()),
        (None, Some(f)) => {
            let path = BASE.with(|b| b.borrow().join(f));
            // The same bounds as a profile file: a regular file of at most 1 MiB.
            match super::read_profile_file(&path) {
                Ok(s) => Some(s),
                Err(e) => {
                    p.add(
                        t.path_of("template_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => {
            p.add(
                t.path_of("template"),
                "missing: format = \"template\" needs template (inline) or template_file",
            );
            None
        }
    }
}

/// A sample value for a field: what it could publish.
fn sample_of(f: &FieldSpec) -> Sample {
    match &f.generator {
        GenSpec::Static { .. } => Sample::Static,
        GenSpec::Markov(_) => Sample::State(0),
        _ => Sample::Number(0.5),
    }
}

/// Renders one message (and one per event) of a template profile with `labels`: the problem
/// when it cannot render, or renders text that is not JSON while its content type says JSON.
/// A template profile without a content type settles it here: JSON if the sample is.
pub fn check_sample(profile: &mut Profile, labels: &BTreeMap<String, String>, p: &mut Problems) {
    let Kind::Template(t) = &profile.format.kind else { return };
    let explicit_type = profile.format.typed;
    let path = profile.format.path.clone();
    let t = t.clone();
    let mut out = vec![];
    let samples: Vec<Sample> = profile.fields.iter().map(sample_of).collect();
    let mut msgs = vec![(
        "the sample message".to_string(),
        format::Msg {
            device_id: "sample-0000",
            device_type: &profile.device_type,
            event_json: "",
            event_name: None,
            fields: &profile.fields,
            samples: &samples,
            timestamp: 1_700_000_000_000,
            labels,
            seq: Some(0),
            write_seq: profile.seq,
        },
    )];
    let event_samples: Vec<Vec<Sample>> =
        profile.behaviour.events.iter().map(|e| e.fields.iter().map(sample_of).collect()).collect();
    for (e, s) in profile.behaviour.events.iter().zip(&event_samples) {
        msgs.push((
            format!("event {:?}", e.name),
            format::Msg {
                device_id: "sample-0000",
                device_type: &profile.device_type,
                event_json: &e.event_json,
                event_name: Some(&e.name),
                fields: &e.fields,
                samples: s,
                timestamp: 1_700_000_000_000,
                labels,
                seq: None,
                write_seq: false,
            },
        ));
    }
    let mut all_json = true;
    for (what, m) in &msgs {
        if let Err(e) = t.render(&mut out, m) {
            p.add(path.clone(), format!("{what} does not render: {e}"));
            return;
        }
        let json = serde_json::from_slice::<serde_json::Value>(&out).is_ok();
        if !json && explicit_type && profile.format.wire.body == Body::Json {
            p.add(
                path.clone(),
                format!(
                    "{what} renders text that is not JSON, while content_type is {:?}: {}",
                    profile.format.wire.content_type,
                    String::from_utf8_lossy(&out).chars().take(120).collect::<String>()
                ),
            );
            return;
        }
        all_json &= json;
    }
    if !explicit_type && !all_json {
        let f = Arc::make_mut(&mut profile.format);
        f.wire = Wire { body: Body::Text, content_type: "text/plain", coap: 0 };
    }
}

#[cfg(test)]
mod tests;
