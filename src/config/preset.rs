//! `[sink.mqtt] preset`: a platform's login and topic conventions, written into the fleet
//! document as ordinary keys before the loader reads it.
//!
//! A preset fills only keys the document (file, then environment) leaves out: explicit keys
//! always win. What it fills is recorded ([`Filled`]) so that `iot-sim config show` can print
//! each such key with its source (`preset aws_iot`). A filled key this build's catalogue
//! ([`super::keys`]) does not know (a key of another feature, such as the per-device token) is
//! recorded but not written (`applied = false`), so that the document stays loadable; once the
//! catalogue has the key, the same expansion writes it.
//!
//! The presets:
//!
//! - `aws_iot`: AWS IoT Core. mqtts:// (8883, or 443 with ALPN `x-amzn-mqtt-ca`), client id =
//!   the thing name (`{device_id}`), one session per device with its own X.509 certificate
//!   (required), topic `dt/{device_type}/{device_id}/telemetry`, QoS 0 or 1; the sample topic
//!   and client id are held to AWS's limits (topic at most 256 bytes and 7 slashes, client id
//!   at most 128 bytes).
//! - `azure_iot_hub`: Azure IoT Hub `hub` (key `[sink.mqtt] hub`). mqtts:// on
//!   `{hub}.azure-devices.net:8883`, client id `{device_id}`, username
//!   `{hub}.azure-devices.net/{device_id}/?api-version=2021-04-12`, topic
//!   `devices/{device_id}/messages/events/`, a SAS token per device with the resource
//!   `{hub}.azure-devices.net/devices/{device_id}`, QoS 0 or 1 (Azure has no QoS 2).
//! - `thingsboard`: ThingsBoard's MQTT device API. One session per device whose username is
//!   its access token (`{device_id}` by default: provision each device's token as its id),
//!   topic `v1/devices/me/telemetry`, payload `{"ts": <epoch ms>, "values": {<fields>}}`, QoS 1.

use super::keys::{self, Spec, Ty};
use crate::sim::profile::TopicTemplate;
use crate::walk::Problems;
use std::collections::BTreeMap;
use toml::Value;

/// The presets `[sink.mqtt] preset` takes.
pub const PRESETS: &[&str] = &["aws_iot", "azure_iot_hub", "thingsboard"];

/// ThingsBoard's telemetry shape over every field of a profile, whatever they are.
pub const THINGSBOARD_TEMPLATE: &str =
    r#"{"ts": {{ timestamp_ms }}, "values": {{ fields|tojson }}}"#;

/// Azure IoT Hub's MQTT API version in the username.
pub const AZURE_API_VERSION: &str = "2021-04-12";

/// AWS IoT Core's limits (AWS IoT Core endpoints and quotas, "Message broker and protocol
/// limits and quotas").
pub const AWS_MAX_TOPIC_BYTES: usize = 256;
pub const AWS_MAX_TOPIC_SLASHES: usize = 7;
pub const AWS_MAX_CLIENT_ID_BYTES: usize = 128;
/// Azure IoT Hub: device ids (and so client ids) of at most 128 characters.
pub const AZURE_MAX_CLIENT_ID_BYTES: usize = 128;

/// One key a preset filled.
#[derive(Clone, Debug, PartialEq)]
pub struct Filled {
    /// The key's path, one segment per table (`["sink", "mqtt", "per_device", "client_id"]`).
    pub path: Vec<String>,
    pub value: Value,
    /// Written into the document; false when this build's catalogue has no such key.
    pub applied: bool,
}

impl Filled {
    /// The dotted path as problems write it (`sink.mqtt.per_device.client_id`).
    pub fn dotted(&self) -> String {
        self.path.iter().fold(String::new(), |acc, s| crate::walk::join(&acc, s))
    }
}

/// What [`expand`] did: the preset's name (if a known one is set) and the keys it filled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expansion {
    pub preset: Option<&'static str>,
    pub filled: Vec<Filled>,
}

impl Expansion {
    /// The preset that filled `path` (dotted), if one did and the key was written.
    pub fn source_of(&self, dotted: &str) -> Option<&'static str> {
        self.filled.iter().find(|f| f.applied && f.dotted() == dotted).and(self.preset)
    }
}

/// Whether this build's catalogue accepts the key at `path`: `sink.mqtt...` through
/// [`keys::SINK_MQTT`], `profiles.NAME.KEY` through [`keys::PROFILE`].
pub fn known(path: &[String]) -> bool {
    fn walk(spec: &Spec, rest: &[String]) -> bool {
        let Some((first, rest)) = rest.split_first() else { return false };
        let Some(key) = spec.keys.iter().find(|k| k.name == first) else { return false };
        match (rest.is_empty(), key.ty) {
            (true, _) => true,
            (false, Ty::Table(inner)) => walk(inner, rest),
            (false, Ty::Map(_)) => true,
            _ => false,
        }
    }
    match path {
        [s, m, rest @ ..] if s == "sink" && m == "mqtt" => walk(&keys::SINK_MQTT, rest),
        [p, _name, rest @ ..] if p == "profiles" => walk(&keys::PROFILE, rest),
        _ => false,
    }
}

/// Fills `path` with `value` unless the document has it (explicit keys win); a table on the
/// way that is missing is created, one that is not a table leaves the key alone (the loader
/// reports its type).
fn fill(doc: &mut toml::Table, out: &mut Vec<Filled>, path: &[&str], value: Value) {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    let applied = known(&path);
    let (last, tables) = path.split_last().expect("a path has a key");
    // A table on the way that is there but is not one: the loader reports it.
    let mut t: &toml::Table = doc;
    for seg in tables {
        match t.get(seg.as_str()) {
            None => break,
            Some(Value::Table(inner)) => t = inner,
            Some(_) => return,
        }
    }
    if get(doc, &path).is_some() {
        return;
    }
    if applied {
        let mut t = &mut *doc;
        for seg in tables {
            let next = t.entry(seg.as_str()).or_insert_with(|| Value::Table(toml::Table::new()));
            t = match next {
                Value::Table(inner) => inner,
                _ => return,
            };
        }
        t.insert(last.clone(), value.clone());
    }
    out.push(Filled { path, value, applied });
}

/// The value at `path`, if every table on the way is one.
fn get<'a>(doc: &'a toml::Table, path: &[String]) -> Option<&'a Value> {
    let (last, tables) = path.split_last()?;
    let mut t = doc;
    for seg in tables {
        t = t.get(seg.as_str())?.as_table()?;
    }
    t.get(last.as_str())
}

fn at<'a>(doc: &'a toml::Table, path: &[&str]) -> Option<&'a Value> {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    get(doc, &path)
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// The inline profiles that publish over MQTT, by name.
fn mqtt_profiles(doc: &toml::Table) -> Vec<String> {
    let Some(profiles) = doc.get("profiles").and_then(Value::as_table) else { return vec![] };
    let mut names: Vec<String> = profiles
        .iter()
        .filter(|(_, v)| v.get("protocol").and_then(Value::as_str) == Some("mqtt"))
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

/// Expands `[sink.mqtt] preset` in `doc` (file and environment already laid over each other);
/// every problem (an unknown preset, what a platform needs and the document does not give) is
/// added to `p` with its path and value.
pub fn expand(doc: &mut toml::Table, p: &mut Problems) -> Expansion {
    let mut e = Expansion::default();
    let Some(mqtt) = at(doc, &["sink", "mqtt"]).and_then(Value::as_table) else {
        return e;
    };
    let hub = mqtt.get("hub").cloned();
    let name = match mqtt.get("preset") {
        None => {
            if let Some(h) = hub {
                p.add(
                    "sink.mqtt.hub",
                    format!(
                        "{} is only read with preset = \"azure_iot_hub\", and no preset is set",
                        crate::walk::show(&h)
                    ),
                );
            }
            return e;
        }
        // Not a string: the loader reports its type.
        Some(Value::String(n)) => n.clone(),
        Some(_) => return e,
    };
    let Some(preset) = PRESETS.iter().copied().find(|k| *k == name) else {
        p.add(
            "sink.mqtt.preset",
            format!("unknown preset {name:?}; known presets: {}", PRESETS.join(", ")),
        );
        return e;
    };
    e.preset = Some(preset);
    if let Some(h) = &hub
        && preset != "azure_iot_hub"
    {
        p.add(
            "sink.mqtt.hub",
            format!(
                "{} is only read with preset = \"azure_iot_hub\", not {preset:?}",
                crate::walk::show(h)
            ),
        );
    }
    let profiles = mqtt_profiles(doc);
    let out = &mut e.filled;
    // Every platform authenticates each device on its own: one session per device.
    for name in &profiles {
        fill(doc, out, &["profiles", name, "connection"], s("per_device"));
    }
    match preset {
        "aws_iot" => aws_iot(doc, out, &profiles, p),
        "azure_iot_hub" => azure_iot_hub(doc, out, &profiles, hub.as_ref(), p),
        _ => thingsboard(doc, out, &profiles),
    }
    e
}

fn url_parts(doc: &toml::Table) -> Option<super::sinks::UrlParts> {
    let url = at(doc, &["sink", "mqtt", "url"])?.as_str()?;
    super::sinks::split_url(url).ok()
}

fn per_device_profiles(doc: &toml::Table, profiles: &[String]) -> Vec<String> {
    profiles
        .iter()
        .filter(|n| {
            at(doc, &["profiles", n, "connection"]).and_then(Value::as_str) == Some("per_device")
        })
        .cloned()
        .collect()
}

fn aws_iot(doc: &mut toml::Table, out: &mut Vec<Filled>, profiles: &[String], p: &mut Problems) {
    let has_url = at(doc, &["sink", "mqtt", "url"]).is_some();
    match (has_url, url_parts(doc)) {
        (false, _) => p.add(
            "sink.mqtt.url",
            "missing: preset aws_iot needs your account's AWS IoT Core endpoint, such as \
             url = \"mqtts://PREFIX-ats.iot.REGION.amazonaws.com:8883\" (aws iot \
             describe-endpoint --endpoint-type iot:Data-ATS)",
        ),
        (true, Some(u)) if !matches!(u.scheme.as_str(), "mqtts" | "ssl") => p.add(
            "sink.mqtt.url",
            format!(
                "scheme {:?}: preset aws_iot connects with a client certificate over TLS, \
                 mqtts:// on port 8883 (or 443 with ALPN x-amzn-mqtt-ca)",
                u.scheme
            ),
        ),
        (true, Some(u)) if u.port == Some(443) => {
            fill(doc, out, &["sink", "mqtt", "alpn"], Value::Array(vec![s("x-amzn-mqtt-ca")]))
        }
        _ => {}
    }
    need_ca_file(doc, "aws_iot", "Amazon Root CA 1 (AmazonRootCA1.pem)", p);
    fill(doc, out, &["sink", "mqtt", "per_device", "client_id"], s("{device_id}"));
    for name in profiles {
        fill(doc, out, &["profiles", name, "topic"], s("dt/{device_type}/{device_id}/telemetry"));
    }
    no_qos_2(doc, profiles, "aws_iot", "AWS IoT Core takes QoS 0 and 1 only", p);
    // A certificate per thing: per-device sessions need the identity table, pooled ones the
    // shared client certificate.
    let per_device = per_device_profiles(doc, profiles);
    if !per_device.is_empty() && at(doc, &["sink", "mqtt", "per_device", "identity"]).is_none() {
        p.add(
            "sink.mqtt.per_device.identity",
            format!(
                "missing: preset aws_iot (profiles {}): AWS IoT Core authenticates each thing by \
                 its own X.509 client certificate (mutual TLS), registered in AWS IoT and \
                 attached to a policy that allows iot:Connect and iot:Publish; set \
                 [sink.mqtt.per_device.identity] with ca_cert and ca_key (a certificate per \
                 device, signed by a CA registered in AWS IoT) or cert_file and key_file \
                 (pre-provisioned, `iot-sim certs issue`)",
                per_device.join(", ")
            ),
        );
    }
    if per_device.len() < profiles.len() && at(doc, &["sink", "mqtt", "client_cert"]).is_none() {
        p.add(
            "sink.mqtt.client_cert",
            "missing: preset aws_iot with pooled connections: AWS IoT Core takes only clients \
             with an X.509 certificate; set client_cert and client_key",
        );
    }
    check_samples(doc, profiles, "aws_iot", AWS_MAX_CLIENT_ID_BYTES, true, p);
}

fn azure_iot_hub(
    doc: &mut toml::Table,
    out: &mut Vec<Filled>,
    profiles: &[String],
    hub: Option<&Value>,
    p: &mut Problems,
) {
    // Without a usable hub the keys made of it are left out; the other checks still run, so
    // that every problem is listed at once.
    let hub = match hub {
        None => {
            p.add(
                "sink.mqtt.hub",
                "missing: preset azure_iot_hub needs the IoT hub's name, hub = \"NAME\" for \
                 NAME.azure-devices.net",
            );
            None
        }
        Some(Value::String(h))
            if (3..=50).contains(&h.len())
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Some(format!("{h}.azure-devices.net"))
        }
        Some(other) => {
            p.add(
                "sink.mqtt.hub",
                format!(
                    "expected an IoT hub name (3 to 50 letters, digits and '-', the NAME of \
                     NAME.azure-devices.net), got {}",
                    crate::walk::show(other)
                ),
            );
            None
        }
    };
    if let Some(host) = &hub {
        fill(doc, out, &["sink", "mqtt", "url"], s(&format!("mqtts://{host}:8883")));
    }
    if let Some(u) = url_parts(doc)
        && !matches!(u.scheme.as_str(), "mqtts" | "ssl" | "wss")
    {
        p.add(
            "sink.mqtt.url",
            format!(
                "scheme {:?}: Azure IoT Hub takes MQTT over TLS only: mqtts:// on port 8883, \
                 or wss:// on port 443 with path /$iothub/websocket",
                u.scheme
            ),
        );
    }
    if hub.is_some() {
        need_ca_file(doc, "azure_iot_hub", "DigiCert Global Root G2", p);
    }
    fill(doc, out, &["sink", "mqtt", "per_device", "client_id"], s("{device_id}"));
    let authenticated = ["token", "identity", "password_env", "password_hmac_secret_env"]
        .iter()
        .any(|k| at(doc, &["sink", "mqtt", "per_device", k]).is_some());
    if let Some(host) = &hub {
        fill(
            doc,
            out,
            &["sink", "mqtt", "per_device", "username"],
            s(&format!("{host}/{{device_id}}/?api-version={AZURE_API_VERSION}")),
        );
        // The SAS token's kind and resource complete the user's `token` table (its key is the
        // user's); another login (a password, a certificate) leaves it out.
        if at(doc, &["sink", "mqtt", "per_device", "token"]).is_some() {
            fill(doc, out, &["sink", "mqtt", "per_device", "token", "kind"], s("sas"));
            fill(
                doc,
                out,
                &["sink", "mqtt", "per_device", "token", "resource"],
                s(&format!("{host}/devices/{{device_id}}")),
            );
        }
    }
    for name in profiles {
        fill(doc, out, &["profiles", name, "topic"], s("devices/{device_id}/messages/events/"));
    }
    no_qos_2(doc, profiles, "azure_iot_hub", "Azure IoT Hub has no QoS 2 (it takes 0 or 1)", p);
    if !per_device_profiles(doc, profiles).is_empty() && !authenticated {
        p.add(
            "sink.mqtt.per_device.token",
            "missing: preset azure_iot_hub: Azure IoT Hub authenticates each device by a SAS \
             token signed with its key (or by an X.509 certificate); set \
             [sink.mqtt.per_device.token] secret_env = \"VAR\" (a variable holding the key, \
             base64, as the portal shows it), or [sink.mqtt.per_device.identity]",
        );
    }
    check_samples(doc, profiles, "azure_iot_hub", AZURE_MAX_CLIENT_ID_BYTES, false, p);
}

fn thingsboard(doc: &mut toml::Table, out: &mut Vec<Filled>, profiles: &[String]) {
    fill(doc, out, &["sink", "mqtt", "qos"], Value::Integer(1));
    fill(doc, out, &["sink", "mqtt", "per_device", "username"], s("{device_id}"));
    for name in profiles {
        fill(doc, out, &["profiles", name, "topic"], s("v1/devices/me/telemetry"));
        // The payload only where the profile says nothing of its own.
        let has_format = ["format", "template", "template_file", "proto_file"]
            .iter()
            .any(|k| at(doc, &["profiles", name, k]).is_some());
        if !has_format {
            fill(doc, out, &["profiles", name, "format"], s("template"));
            fill(doc, out, &["profiles", name, "template"], s(THINGSBOARD_TEMPLATE));
            fill(doc, out, &["profiles", name, "content_type"], s("application/json"));
        }
    }
}

/// iot-sim trusts no public roots: a cloud broker's certificate is checked against `ca_file`.
fn need_ca_file(doc: &toml::Table, preset: &str, root: &str, p: &mut Problems) {
    let tls = url_parts(doc).is_none_or(|u| matches!(u.scheme.as_str(), "mqtts" | "ssl" | "wss"));
    if tls && at(doc, &["sink", "mqtt", "ca_file"]).is_none() {
        p.add(
            "sink.mqtt.ca_file",
            format!(
                "missing: preset {preset}: the broker's certificate is checked against ca_file                  only (iot-sim trusts no system roots); set it to the platform's root CA,                  {root}, as a PEM file"
            ),
        );
    }
}

/// QoS 2 anywhere the platform would see it: the sink's, a profile's, the will's, the
/// subscription's and the answers'.
fn no_qos_2(doc: &toml::Table, profiles: &[String], preset: &str, why: &str, p: &mut Problems) {
    let mut paths: Vec<Vec<String>> = ["qos"]
        .iter()
        .map(|k| vec!["sink".into(), "mqtt".into(), k.to_string()])
        .chain(
            ["will_qos", "subscribe_qos", "answer_qos"]
                .iter()
                .map(|k| vec!["sink".into(), "mqtt".into(), "per_device".into(), k.to_string()]),
        )
        .collect();
    paths.extend(profiles.iter().map(|n| vec!["profiles".into(), n.clone(), "qos".into()]));
    for path in paths {
        if let Some(v @ Value::Integer(2)) = get(doc, &path) {
            let dotted = path.iter().fold(String::new(), |acc, s| crate::walk::join(&acc, s));
            p.add(dotted, format!("{v}: preset {preset}: {why}"));
        }
    }
}

/// The labels of a fleet entry's devices as the loader makes them (profile labels, then the
/// entry's, then `device_type`), from the raw document.
fn entry_labels(
    profile: &toml::Table,
    entry: &toml::Table,
    name: &str,
) -> BTreeMap<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut labels = BTreeMap::new();
    for t in [profile.get("labels"), entry.get("labels")].into_iter().flatten() {
        if let Some(t) = t.as_table() {
            labels.extend(t.iter().map(|(k, v)| (k.clone(), text(v))));
        }
    }
    let device_type = profile.get("device_type").and_then(Value::as_str).unwrap_or(name);
    labels.insert("device_type".into(), device_type.to_string());
    labels
}

/// Renders the topic and client id of each fleet entry's last device (the longest id) and holds
/// them to the platform's limits.
fn check_samples(
    doc: &toml::Table,
    profiles: &[String],
    preset: &str,
    max_client_id: usize,
    aws_topic: bool,
    p: &mut Problems,
) {
    let Some(entries) = doc.get("fleet").and_then(Value::as_array) else { return };
    let client_id = at(doc, &["sink", "mqtt", "per_device", "client_id"])
        .and_then(Value::as_str)
        .and_then(|t| TopicTemplate::parse(t).ok());
    let mut ordinals: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(e) = e.as_table() else { continue };
        let (Some(name), Some(count)) = (
            e.get("profile").and_then(Value::as_str),
            e.get("count").and_then(Value::as_integer).filter(|n| *n > 0),
        ) else {
            continue;
        };
        let first = ordinals.entry(name).or_insert(0);
        let last = *first + count as u64 - 1;
        *first += count as u64;
        if !profiles.iter().any(|n| n == name) {
            continue;
        }
        let Some(profile) = at(doc, &["profiles", name]).and_then(Value::as_table) else {
            continue;
        };
        let labels = entry_labels(profile, e, name);
        let device_type = labels["device_type"].clone();
        let id = format!("{name}-{last:04}");
        let render = |tpl: &TopicTemplate| {
            let mut out = vec![];
            tpl.render(&mut out, &id, &device_type, &labels);
            String::from_utf8_lossy(&out).into_owned()
        };
        let per_device = at(doc, &["profiles", name, "connection"]).and_then(Value::as_str)
            == Some("per_device");
        if per_device
            && let Some(c) = client_id.as_ref().map(render)
            && c.len() > max_client_id
        {
            p.add(
                "sink.mqtt.per_device.client_id",
                format!(
                    "preset {preset}: the client id of {id} (fleet[{i}]) is {} bytes, more than \
                     the platform's {max_client_id}: {c:?}",
                    c.len()
                ),
            );
        }
        let topic = at(doc, &["profiles", name, "topic"])
            .and_then(Value::as_str)
            .and_then(|t| TopicTemplate::parse(t).ok());
        if aws_topic && let Some(t) = topic.as_ref().map(render) {
            let slashes = t.bytes().filter(|b| *b == b'/').count();
            if t.len() > AWS_MAX_TOPIC_BYTES || slashes > AWS_MAX_TOPIC_SLASHES {
                p.add(
                    format!("profiles.{name}.topic"),
                    format!(
                        "preset {preset}: the topic of {id} (fleet[{i}]) has {} bytes and {slashes} \
                         slashes; AWS IoT Core takes at most {AWS_MAX_TOPIC_BYTES} bytes and \
                         {AWS_MAX_TOPIC_SLASHES} slashes: {t:?}",
                        t.len()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_text(text: &str) -> (toml::Table, Expansion, Problems) {
        let mut doc: toml::Table = text.parse().unwrap();
        let mut p = Problems::default();
        let e = expand(&mut doc, &mut p);
        (doc, e, p)
    }

    /// A fleet of 3 devices of an MQTT profile `t`; `[profiles.t]` comes last, so that keys
    /// appended to it are the profile's.
    const PROFILE: &str = "[[fleet]]\nprofile = \"t\"\ncount = 3\n[profiles.t.fields.x]\n\
                           type = \"static\"\nvalue = 1\n[profiles.t]\nprotocol = \"mqtt\"\n\
                           interval = \"1s\"\n";

    #[test]
    fn no_preset_changes_nothing() {
        let text = format!("[sink.mqtt]\nurl = \"mqtt://h\"\n{PROFILE}");
        let (doc, e, p) = expand_text(&text);
        assert_eq!(doc, text.parse::<toml::Table>().unwrap());
        assert_eq!(e, Expansion::default());
        assert!(p.is_empty(), "{p}");
    }

    #[test]
    fn catalogue_decides_what_is_written() {
        let path = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert!(known(&path("sink.mqtt.per_device.client_id")));
        assert!(known(&path("profiles.any.topic")));
        assert!(!known(&path("sink.mqtt.no_such_key")));
        assert!(!known(&path("sink.mqtt.url.deeper")));
    }

    #[test]
    fn thingsboard_fills_topic_username_payload_and_keeps_explicit_keys() {
        let text = format!(
            "[sink.mqtt]\npreset = \"thingsboard\"\nqos = 0\n{PROFILE}[profiles.u]\nprotocol = \
             \"mqtt\"\ntopic = \"mine\"\nformat = \"flat\"\nconnection = \"pooled\"\n"
        );
        let (doc, e, p) = expand_text(&text);
        assert!(p.is_empty(), "{p}");
        assert_eq!(e.preset, Some("thingsboard"));
        let v = |path: &[&str]| at(&doc, path).cloned();
        assert_eq!(v(&["sink", "mqtt", "qos"]), Some(Value::Integer(0)), "explicit wins");
        assert_eq!(v(&["sink", "mqtt", "per_device", "username"]), Some(s("{device_id}")));
        assert_eq!(v(&["profiles", "t", "topic"]), Some(s("v1/devices/me/telemetry")));
        assert_eq!(v(&["profiles", "t", "template"]), Some(s(THINGSBOARD_TEMPLATE)));
        assert_eq!(v(&["profiles", "t", "connection"]), Some(s("per_device")));
        assert_eq!(v(&["profiles", "u", "topic"]), Some(s("mine")));
        assert_eq!(v(&["profiles", "u", "format"]), Some(s("flat")));
        assert_eq!(v(&["profiles", "u", "template"]), None);
        assert_eq!(v(&["profiles", "u", "connection"]), Some(s("pooled")));
        let filled: Vec<String> = e.filled.iter().map(Filled::dotted).collect();
        assert!(!filled.contains(&"sink.mqtt.qos".to_string()), "{filled:?}");
        assert!(!filled.contains(&"profiles.u.topic".to_string()), "{filled:?}");
        assert_eq!(e.source_of("profiles.t.topic"), Some("thingsboard"));
        assert_eq!(e.source_of("profiles.u.topic"), None);
    }

    #[test]
    fn unknown_preset_names_the_known_ones() {
        let (_, e, p) = expand_text(&format!("[sink.mqtt]\npreset = \"hivemq\"\n{PROFILE}"));
        assert_eq!(e.preset, None);
        assert_eq!(p.0.len(), 1, "{p}");
        assert_eq!(p.0[0].path, "sink.mqtt.preset");
        assert!(p.0[0].message.contains("\"hivemq\""), "{p}");
        assert!(p.0[0].message.contains("aws_iot, azure_iot_hub, thingsboard"), "{p}");
    }

    #[test]
    fn azure_needs_its_hub_and_refuses_qos_2() {
        let (_, _, p) = expand_text(&format!("[sink.mqtt]\npreset = \"azure_iot_hub\"\n{PROFILE}"));
        assert_eq!(p.0[0].path, "sink.mqtt.hub", "{p}");
        let text = format!(
            "[sink.mqtt]\npreset = \"azure_iot_hub\"\nhub = \"h1\"\nqos = 2\nca_file = \"c\"\n\
             [sink.mqtt.per_device]\npassword_env = \"X\"\n{PROFILE}"
        );
        let (_, _, p) = expand_text(&text);
        let paths: Vec<&str> = p.0.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, ["sink.mqtt.hub", "sink.mqtt.qos"], "{p}");
        assert!(p.0[0].message.contains("\"h1\""), "{p}");
        assert!(p.0[1].message.contains("no QoS 2"), "{p}");
    }

    #[test]
    fn azure_fills_url_username_token_and_topic() {
        let text = format!(
            "[sink.mqtt]\npreset = \"azure_iot_hub\"\nhub = \"my-hub\"\nca_file = \"c\"\n\
             [sink.mqtt.per_device.token]\nsecret_env = \"X\"\n{PROFILE}"
        );
        let (doc, e, p) = expand_text(&text);
        assert!(p.is_empty(), "{p}");
        let v = |path: &[&str]| at(&doc, path).cloned();
        assert_eq!(v(&["sink", "mqtt", "url"]), Some(s("mqtts://my-hub.azure-devices.net:8883")));
        assert_eq!(
            v(&["sink", "mqtt", "per_device", "username"]),
            Some(s("my-hub.azure-devices.net/{device_id}/?api-version=2021-04-12"))
        );
        assert_eq!(v(&["profiles", "t", "topic"]), Some(s("devices/{device_id}/messages/events/")));
        let token: Vec<&Filled> =
            e.filled.iter().filter(|f| f.path.iter().any(|s| s == "token")).collect();
        assert_eq!(token.len(), 2);
        assert_eq!(token[1].value, s("my-hub.azure-devices.net/devices/{device_id}"));
        // Another login leaves the token out.
        let text = text.replace("per_device.token]\nsecret_env", "per_device]\npassword_env");
        let (doc, e, p) = expand_text(&text);
        assert!(p.is_empty(), "{p}");
        assert!(e.filled.iter().all(|f| !f.path.iter().any(|s| s == "token")));
        assert!(at(&doc, &["sink", "mqtt", "per_device", "token"]).is_none());
        // Written exactly when this build's catalogue has the token table.
        for f in &e.filled {
            assert_eq!(f.applied, known(&f.path), "{}", f.dotted());
            assert_eq!(
                at(&doc, &f.path.iter().map(String::as_str).collect::<Vec<_>>()).is_some(),
                f.applied
            );
        }
    }

    #[test]
    fn aws_needs_tls_an_identity_and_short_topics() {
        let text = format!(
            "[sink.mqtt]\npreset = \"aws_iot\"\nurl = \"mqtt://h:1883\"\n{PROFILE}\
             topic = \"a/b/c/d/e/f/g/h/{{device_id}}\"\n"
        );
        let (_, _, p) = expand_text(&text);
        let paths: Vec<&str> = p.0.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(
            paths,
            ["sink.mqtt.url", "sink.mqtt.per_device.identity", "profiles.t.topic"],
            "{p}"
        );
        assert!(p.0[0].message.contains("\"mqtt\""), "{p}");
        assert!(p.0[1].message.contains("X.509"), "{p}");
        assert!(p.0[2].message.contains("\"a/b/c/d/e/f/g/h/t-0002\""), "{p}");
    }

    #[test]
    fn aws_on_443_asks_for_the_alpn_and_fills_the_topic() {
        let text = format!(
            "[sink.mqtt]\npreset = \"aws_iot\"\nurl = \"mqtts://x-ats.iot.eu-west-1.amazonaws.com:443\"\nca_file = \"c\"\n\
             [sink.mqtt.per_device.identity]\nca_cert = \"ca.pem\"\n{PROFILE}"
        );
        let (doc, e, p) = expand_text(&text);
        assert!(p.is_empty(), "{p}");
        let alpn = e.filled.iter().find(|f| f.dotted() == "sink.mqtt.alpn").unwrap();
        assert_eq!(alpn.value, Value::Array(vec![s("x-amzn-mqtt-ca")]));
        assert_eq!(
            at(&doc, &["profiles", "t", "topic"]),
            Some(&s("dt/{device_type}/{device_id}/telemetry"))
        );
        assert_eq!(e.source_of("sink.mqtt.per_device.client_id"), Some("aws_iot"));
    }
}
