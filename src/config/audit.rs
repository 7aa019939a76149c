//! `[audit]`: the delivery audit that consumes what the fleet publishes (MQTT or AMQP) and
//! checks that every message arrived, once, in order, and how late (`src/audit/`).
//!
//! Every problem is reported with its TOML path and the bad value; every size a file controls
//! is bounded (`src/limits.rs`).

use crate::limits::{
    MAX_AUDIT_FILTER_BYTES, MAX_AUDIT_FILTERS, MAX_AUDIT_GRACE_MS, MAX_AUDIT_WORST,
};
use crate::sim::profile::{Fleet, Protocol, TopicPart};
use crate::walk::{Problems, Table, show};

/// Where the auditor reads the messages from.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditSource {
    /// Subscribe to `filters` (shared subscriptions `$share/g/...` allowed) at `qos`.
    Mqtt { url: String, host: String, port: u16, filters: Vec<String>, qos: u8 },
    /// Consume from `queue`; with `declare`, declare it (auto-delete unless named) and bind it
    /// to `exchange` with `bindings`.
    Amqp { url: String, queue: String, declare: bool, exchange: String, bindings: Vec<String> },
    /// Serve the endpoint the HTTP sink posts to: one payload or a JSON array (a batch) per
    /// request; the topic comes from `topic_header` when the request carries it.
    Http { listen: std::net::SocketAddr, topic_header: String },
}

impl AuditSource {
    /// One line naming the source, for the report and the logs (credentials left out).
    pub fn describe(&self) -> String {
        match self {
            AuditSource::Mqtt { url, filters, qos, .. } => {
                format!("mqtt {} filter {} qos {qos}", without_userinfo(url), filters.join(","))
            }
            AuditSource::Amqp { url, queue, .. } => {
                let q = if queue.is_empty() { "(its own)" } else { queue };
                format!("amqp {} queue {q}", without_userinfo(url))
            }
            AuditSource::Http { listen, .. } => format!("http receiver on {listen}"),
        }
    }
}

/// `scheme://user:password@host/...` without `user:password@`.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// A validated `[audit]` table (or `--audit` with its defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditSettings {
    pub source: AuditSource,
    /// How long consumers keep reading after the shards stopped (in-run audits).
    pub grace_ms: u64,
    /// How many of the worst devices the report lists.
    pub worst: usize,
    /// The separator the AMQP sink puts in routing keys (to match topics to devices).
    pub routing_separator: String,
    /// `verify = "values"`: recompute each message's field values from the seed.
    pub values: bool,
}

/// The default MQTT filters: each MQTT profile's topic template with every level that holds a
/// placeholder replaced by `+`.
pub fn derived_filters(fleet: &Fleet, protocol: Protocol) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for p in fleet.profiles.iter().filter(|p| p.protocol == protocol) {
        // A Sparkplug profile publishes under its group, not its topic template.
        if let Some(sp) = p.format.sparkplug() {
            let f = format!("spBv1.0/{}/#", sp.group_id);
            if !out.contains(&f) {
                out.push(f);
            }
            continue;
        }
        // Levels of the rendered template: a level with any placeholder becomes `+`.
        let mut levels: Vec<(String, bool)> = vec![(String::new(), false)];
        for part in &p.topic.parts {
            match part {
                TopicPart::Literal(s) => {
                    let mut pieces = s.split('/');
                    if let (Some(first), Some(last)) = (pieces.next(), levels.last_mut()) {
                        last.0.push_str(first);
                    }
                    for piece in pieces {
                        levels.push((piece.to_string(), false));
                    }
                }
                _ => {
                    if let Some(last) = levels.last_mut() {
                        last.1 = true;
                    }
                }
            }
        }
        let f: Vec<&str> =
            levels.iter().map(|(s, wild)| if *wild { "+" } else { s.as_str() }).collect();
        let f = f.join("/");
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// An MQTT filter as an AMQP topic-exchange binding key.
pub fn binding_of(filter: &str, separator: &str) -> String {
    let sep = if separator.is_empty() { "/" } else { separator };
    filter.split('/').map(|l| if l == "+" { "*" } else { l }).collect::<Vec<_>>().join(sep)
}

fn check_filter(path: &str, f: &str, p: &mut Problems) {
    if f.is_empty() || f.len() > MAX_AUDIT_FILTER_BYTES {
        p.add(
            path,
            format!("must hold 1 to {MAX_AUDIT_FILTER_BYTES} bytes, got {} bytes", f.len()),
        );
        return;
    }
    let plain = f.strip_prefix("$share/").and_then(|r| r.split_once('/')).map_or(f, |(_, r)| r);
    let levels: Vec<&str> = plain.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let bad = (l.contains('#') && (*l != "#" || i + 1 != levels.len()))
            || (l.contains('+') && *l != "+")
            || l.contains('\0');
        if bad {
            p.add(
                path,
                format!("{f:?} is not a valid MQTT filter ('+' and '#' must fill a level, '#' only last)"),
            );
            return;
        }
    }
}

/// Compiles `[audit]`. `fleet` and the sinks give the defaults (the broker the fleet publishes
/// to, filters from the topic templates).
pub fn compile(
    mut t: Table<'_>,
    fleet: &Fleet,
    sinks: &super::SinkSettings,
    p: &mut Problems,
) -> Option<AuditSettings> {
    let before = p.0.len();
    refuse_other_formats(fleet, p);
    let protocols = fleet.protocols();
    let default_source =
        if protocols.contains(&Protocol::Amqp) && !protocols.contains(&Protocol::Mqtt) {
            "amqp"
        } else {
            "mqtt"
        };
    let source_name = t.str("source", p).unwrap_or(default_source);
    let grace_ms = match t.duration_ms("grace", p) {
        Some(g) if g > MAX_AUDIT_GRACE_MS => {
            p.add(
                t.path_of("grace"),
                format!("must be at most {}s, got {}ms", MAX_AUDIT_GRACE_MS / 1000, g),
            );
            0
        }
        Some(g) => g,
        None => 2000,
    };
    let worst = match t.int("worst", p) {
        Some(w) if w < 0 || w as usize > MAX_AUDIT_WORST => {
            p.add(t.path_of("worst"), format!("must be between 0 and {MAX_AUDIT_WORST}, got {w}"));
            0
        }
        Some(w) => w as usize,
        None => 10,
    };
    let values = match t.str("verify", p) {
        None | Some("envelope") => false,
        Some("values") => {
            if let Some(r) = fleet.profiles.iter().find(|x| x.replay.is_some()) {
                p.add(
                    t.path_of("verify"),
                    format!(
                        "\"values\" recomputes values from the seed, and profile {:?} replays a \
                         trace; use \"envelope\"",
                        r.name
                    ),
                );
            }
            true
        }
        Some(v) => {
            p.add(
                t.path_of("verify"),
                format!(
                    "{v:?} is not supported; accepted: \"envelope\" (parse, device, seq, type and timestamp-on-grid checks) or \"values\" (also every field's value recomputed from the seed)"
                ),
            );
            false
        }
    };
    let filters: Vec<String> = match t.get("filter") {
        None => derived_filters(fleet, Protocol::Mqtt),
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) if a.iter().all(|v| v.is_str()) => {
            a.iter().filter_map(|v| v.as_str().map(String::from)).collect()
        }
        Some(v) => {
            p.add(
                t.path_of("filter"),
                format!("expected a string or an array of strings, got {}", show(v)),
            );
            vec![]
        }
    };
    if filters.len() > MAX_AUDIT_FILTERS {
        p.add(
            t.path_of("filter"),
            format!("at most {MAX_AUDIT_FILTERS} filters, got {}", filters.len()),
        );
    }
    for f in &filters {
        check_filter(&t.path_of("filter"), f, p);
    }
    let qos = match t.int("qos", p) {
        Some(q @ 0..=2) => q as u8,
        Some(q) => {
            p.add(t.path_of("qos"), format!("expected 0, 1 or 2, got {q}"));
            1
        }
        None => 1,
    };
    let url = t.str("url", p).map(String::from);
    let explicit_url = url.is_some();
    if let Some(u) = &url
        && super::sinks::split_url(u).is_ok_and(|parts| parts.password)
    {
        p.add(
            t.path_of("url"),
            "must not contain a password: set it in the environment instead (see the user guide, docs/src/network-sinks.md, Secrets)",
        );
    }
    let queue = t.str("queue", p).map(String::from);
    let declare = t.bool("declare", p);
    let listen = t.str("listen", p).map(String::from);
    let routing_separator =
        sinks.amqp.as_ref().map_or(".".to_string(), |a| a.routing_separator.clone());
    let source = match source_name {
        "mqtt" => {
            let url = url
                .or_else(|| sinks.mqtt.as_ref().map(|m| m.url.clone()))
                .unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
            if filters.is_empty() {
                p.add(
                    t.path_of("filter"),
                    "missing: no MQTT profile to derive a filter from; set filter = \"devices/#\"",
                );
            }
            match super::sinks::split_url(&url) {
                Ok(u) if u.scheme == "mqtt" || u.scheme == "tcp" => Some(AuditSource::Mqtt {
                    url: url.clone(),
                    host: u.host,
                    port: u.port.unwrap_or(1883),
                    filters: filters.clone(),
                    qos,
                }),
                Ok(u) => {
                    p.add(
                        t.path_of("url"),
                        format!("scheme {:?} is not supported here; use mqtt or tcp", u.scheme),
                    );
                    None
                }
                Err(e) => {
                    p.add(t.path_of("url"), e);
                    None
                }
            }
        }
        "amqp" => {
            let url = url
                .or_else(|| sinks.amqp.as_ref().map(|a| a.url.clone()))
                .unwrap_or_else(|| "amqp://127.0.0.1:5672/%2f".into());
            // An explicit URL takes the environment's credentials like the sink's does.
            let url = match super::sinks::split_url(&url) {
                Ok(parts) if explicit_url => super::sinks::amqp_url_with_env(url, &parts),
                Ok(_) => url,
                Err(e) => {
                    p.add(t.path_of("url"), e);
                    url
                }
            };
            let exchange =
                sinks.amqp.as_ref().map_or("iot.telemetry".into(), |a| a.exchange.clone());
            let explicit = t.has("filter");
            let mut filters = filters.clone();
            if !explicit {
                filters = derived_filters(fleet, Protocol::Amqp);
            }
            let bindings = filters.iter().map(|f| binding_of(f, &routing_separator)).collect();
            let declare = declare.unwrap_or(true);
            let queue = queue.unwrap_or_default();
            if queue.len() > MAX_AUDIT_FILTER_BYTES {
                p.add(
                    t.path_of("queue"),
                    format!("at most {MAX_AUDIT_FILTER_BYTES} bytes, got {}", queue.len()),
                );
            }
            if queue.is_empty() && !declare {
                p.add(
                    t.path_of("queue"),
                    "missing: name the queue to consume from (or set declare = true)",
                );
            }
            Some(AuditSource::Amqp { url, queue, declare, exchange, bindings })
        }
        "http" => {
            // Default: where the HTTP sink posts (its endpoint's host and port).
            let from_sink = sinks.http.as_ref().and_then(|h| {
                let u = super::sinks::split_url(&h.endpoint).ok()?;
                let host = if u.host == "localhost" { "127.0.0.1".to_string() } else { u.host };
                Some(format!("{host}:{}", u.port.unwrap_or(80)))
            });
            let topic_header =
                sinks.http.as_ref().map_or("X-Topic".to_string(), |h| h.topic_header.clone());
            match listen.or(from_sink) {
                None => {
                    p.add(t.path_of("listen"), "missing: the address to serve (\"127.0.0.1:8088\"), or a [sink.http] endpoint to take it from");
                    None
                }
                Some(l) => match l.parse::<std::net::SocketAddr>() {
                    Ok(listen) => Some(AuditSource::Http { listen, topic_header }),
                    Err(_) => {
                        p.add(t.path_of("listen"), format!("expected an IP address and port such as \"127.0.0.1:8088\", got {l:?}"));
                        None
                    }
                },
            }
        }
        other => {
            p.add(
                t.path_of("source"),
                format!("expected \"mqtt\", \"amqp\" or \"http\", got {other:?}"),
            );
            None
        }
    };
    t.finish_with(&super::keys::AUDIT.names(), p);
    let source = source?;
    (p.0.len() == before).then_some(AuditSettings {
        source,
        grace_ms,
        worst,
        routing_separator,
        values,
    })
}

/// The settings of `--audit` without an `[audit]` table: every default.
/// The audit decodes the envelope: a profile in another format would be mis-audited (every
/// message counted missing), so it is refused, naming the profile and its format. (Decoding
/// CBOR, SenML and flat, and JSON pointers for templates, are to come.)
fn refuse_other_formats(fleet: &Fleet, p: &mut Problems) {
    for prof in &fleet.profiles {
        // Sparkplug is audited by `seq` per edge node (`audit/sparkplug.rs`).
        if !prof.format.is_envelope() && prof.format.sparkplug().is_none() {
            p.add(
                format!("profiles.{}.format", prof.name),
                format!(
                    "profile {:?} publishes format {:?}, and the delivery audit reads the \
                     envelope only; use format = \"envelope\" or run without [audit]",
                    prof.name,
                    prof.format.name()
                ),
            );
        }
    }
}

pub fn defaults(fleet: &Fleet, sinks: &super::SinkSettings) -> Result<AuditSettings, Problems> {
    let empty = toml::Table::new();
    let mut p = Problems::default();
    match compile(Table::new("audit", &empty), fleet, sinks, &mut p) {
        Some(a) if p.is_empty() => Ok(a),
        _ => Err(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_replace_placeholder_levels_with_plus() {
        let mut prof = crate::sim::profile::Profile::for_tests("t");
        prof.protocol = Protocol::Mqtt;
        prof.topic =
            crate::sim::profile::TopicTemplate::parse("site/{labels.s}/dev-{device_id}/telemetry")
                .unwrap();
        let fleet = Fleet { profiles: vec![prof], groups: vec![] };
        assert_eq!(derived_filters(&fleet, Protocol::Mqtt), vec!["site/+/+/telemetry"]);
        assert_eq!(binding_of("site/+/+/telemetry", "."), "site.*.*.telemetry");
        assert_eq!(binding_of("devices/#", "."), "devices.#");
    }

    #[test]
    fn descriptions_leave_credentials_out() {
        let s = AuditSource::Amqp {
            url: "amqp://guest:secret@127.0.0.1:5672/%2f".into(),
            queue: String::new(),
            declare: true,
            exchange: "x".into(),
            bindings: vec![],
        };
        assert_eq!(s.describe(), "amqp amqp://127.0.0.1:5672/%2f queue (its own)");
    }

    #[test]
    fn bad_filters_are_refused_with_their_value() {
        let mut p = Problems::default();
        check_filter("audit.filter", "a/b#", &mut p);
        check_filter("audit.filter", "a/#/b", &mut p);
        check_filter("audit.filter", "$share/g/devices/+/t", &mut p);
        assert_eq!(p.0.len(), 2, "{p}");
        assert!(p.0[0].message.contains("\"a/b#\""));
    }
}
