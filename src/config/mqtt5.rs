//! A profile's `[profiles.X.mqtt5]` block: the MQTT 5 properties of its PUBLISH packets
//! (issue 22). Every problem is listed with its path and value.

use super::keys;
use crate::sim::profile::{Mqtt5, Protocol, TopicTemplate};
use crate::walk::{Problems, Table, join, show, type_name};
use std::sync::Arc;
use toml::Value;

/// At most this many user properties per profile (each is sent with every message).
const MAX_USER_PROPERTIES: usize = 32;

/// Reads `mqtt5` of a profile table, if there is one.
pub fn compile(
    t: &mut Table<'_>,
    protocol: Option<Protocol>,
    p: &mut Problems,
) -> Option<Arc<Mqtt5>> {
    if t.has("mqtt5") && protocol.is_some_and(|pr| pr != Protocol::Mqtt) {
        p.add(t.path_of("mqtt5"), "only applies to protocol \"mqtt\"");
    }
    let mut m = t.table("mqtt5", p)?;
    let mut out = Mqtt5::default();
    if let Some(ut) = m.table("user_properties", p) {
        if ut.table.len() > MAX_USER_PROPERTIES {
            p.add(
                ut.path.clone(),
                format!("{} user properties, more than the {MAX_USER_PROPERTIES} allowed", ut.table.len()),
            );
        }
        for (k, v) in ut.table {
            let path = join(&ut.path, k);
            let Value::String(s) = v else {
                p.add(
                    path,
                    format!("expected a string (a template), got {} {}", type_name(v), show(v)),
                );
                continue;
            };
            match TopicTemplate::parse(s) {
                Ok(tpl) => out.user_properties.push((k.clone(), tpl)),
                Err(e) => p.add(path, e.replace("in topic", "in user property")),
            }
        }
    }
    if m.has("message_expiry") {
        match m.duration_ms("message_expiry", p) {
            Some(0) => p.add(m.path_of("message_expiry"), "must be at least 1s, got \"0s\""),
            Some(ms) if ms % 1000 != 0 => p.add(
                m.path_of("message_expiry"),
                format!("must be whole seconds (MQTT 5 counts seconds), got {ms}ms"),
            ),
            Some(ms) if ms / 1000 > u32::MAX as u64 => p.add(
                m.path_of("message_expiry"),
                format!("must be at most {}s, got {}s", u32::MAX, ms / 1000),
            ),
            Some(ms) => out.message_expiry_s = Some((ms / 1000) as u32),
            None => {}
        }
    }
    out.topic_alias = m.bool("topic_alias", p).unwrap_or(false);
    out.payload_format_indicator = m.bool("payload_format_indicator", p).unwrap_or(false);
    m.finish_with(&keys::MQTT5.names(), p);
    Some(Arc::new(out))
}

/// `payload_format_indicator = true` says the payload is UTF-8 text: not for a binary format.
pub fn check_format(
    t: &Table<'_>,
    m: Option<&Mqtt5>,
    body: crate::sim::format::Body,
    p: &mut Problems,
) {
    if m.is_some_and(|m| m.payload_format_indicator) && body == crate::sim::format::Body::Binary {
        p.add(
            join(&t.path_of("mqtt5"), "payload_format_indicator"),
            "only applies to text formats (the payload of this format is binary)",
        );
    }
}
