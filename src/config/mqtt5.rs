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
                format!(
                    "{} user properties, more than the {MAX_USER_PROPERTIES} allowed",
                    ut.table.len()
                ),
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

#[cfg(test)]
mod tests {
    use super::super::{ParseError, parse_str};
    use std::path::Path;

    fn fleet(protocol: &str, block: &str) -> String {
        format!(
            r#"
[sink.mqtt]
url = "mqtt://127.0.0.1:1883"
version = 5
[sink.null]
[[fleet]]
profile = "p"
count = 1
labels = {{ site = "berlin" }}
[profiles.p]
protocol = "{protocol}"
interval = "1s"
[profiles.p.mqtt5]
{block}
[profiles.p.fields.t]
type = "gaussian"
mean = 20
stddev = 1
"#
        )
    }

    fn problems(protocol: &str, block: &str) -> Vec<String> {
        match parse_str(&fleet(protocol, block), Path::new(".")) {
            Ok(_) => vec![],
            Err(ParseError::Invalid(p)) => p.0.iter().map(|p| p.to_string()).collect(),
            Err(ParseError::Syntax(s)) => vec![format!("syntax: {s}")],
        }
    }

    #[test]
    fn a_valid_block_compiles_with_templates_seconds_and_flags() {
        let block = r#"user_properties = { site = "{labels.site}", fw = "1.4.2" }
message_expiry = "10m"
topic_alias = true
payload_format_indicator = true"#;
        let c = parse_str(&fleet("mqtt", block), Path::new(".")).unwrap();
        let m = c.fleet.profiles[0].delivery.mqtt5.clone().expect("the block");
        assert_eq!(m.message_expiry_s, Some(600));
        assert!(m.topic_alias && m.payload_format_indicator && m.per_device());
        let names: Vec<&str> = m.user_properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["fw", "site"]);
    }

    #[test]
    fn every_bad_key_is_listed_with_its_path_and_value() {
        let block = r#"user_properties = { site = "{labels.site", n = 3, ok = "{nope}" }
message_expiry = "1500ms"
topic_alias = "yes"
colour = "red""#;
        let got = problems("mqtt", block).join("\n");
        for want in [
            "profiles.p.mqtt5.user_properties.site: unclosed '{' in user property \"{labels.site\"",
            "profiles.p.mqtt5.user_properties.n: expected a string (a template), got an integer 3",
            "profiles.p.mqtt5.user_properties.ok: unknown placeholder {nope}",
            "profiles.p.mqtt5.message_expiry: must be whole seconds (MQTT 5 counts seconds), got 1500ms",
            "profiles.p.mqtt5.topic_alias: expected true or false, got a string \"yes\"",
            "profiles.p.mqtt5.colour: unknown key (value \"red\")",
        ] {
            assert!(got.contains(want), "missing {want:?} in:\n{got}");
        }
        for (expiry, want) in
            [("0s", "must be at least 1s, got \"0s\""), ("soon", "profiles.p.mqtt5.message_expiry")]
        {
            let got = problems("mqtt", &format!("message_expiry = \"{expiry}\"")).join("\n");
            assert!(got.contains(want), "{expiry}: {got}");
        }
        let got = problems("null", "topic_alias = true").join("\n");
        assert!(got.contains("profiles.p.mqtt5: only applies to protocol \"mqtt\""), "{got}");
        let cbor = fleet("mqtt", "payload_format_indicator = true")
            .replace("interval = \"1s\"", "interval = \"1s\"\nformat = \"cbor\"");
        let Err(ParseError::Invalid(p)) = parse_str(&cbor, Path::new(".")) else {
            panic!("a binary format with payload_format_indicator was accepted")
        };
        assert!(p.0.iter().any(|q| q.path == "profiles.p.mqtt5.payload_format_indicator"), "{p:?}");
    }
}
