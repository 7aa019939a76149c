//! `[sink.mqtt.per_device]`: how devices of profiles with `connection = "per_device"` connect,
//! each as its own MQTT client (own TCP connection, client id, credentials, will, downlink).
//!
//! Templates (`client_id`, `username`, `will_topic`, `will_payload`, `subscribe`, `respond`)
//! take `{device_id}`, `{device_type}` and `{labels.KEY}` like topics. Secrets come from the
//! environment only: `password_env` names a variable holding one password for every device;
//! `password_hmac_secret_env` names a variable holding a secret, and each device's password is
//! the hex HMAC-SHA256 of its client id under that secret (the way fleets are provisioned).

use crate::sim::profile::TopicTemplate;
use crate::walk::{Problems, Table};
use std::net::IpAddr;

use crate::limits::{MAX_CONNECT_RATE, MAX_CONNECTING, MAX_DEVICE_QUEUE, MAX_SOURCE_ADDRESSES};

/// Where a device's password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Password {
    None,
    /// The same for every device (read from the environment at load time).
    Fixed(String),
    /// hex(HMAC-SHA256(secret, client_id)); the secret is read from the environment.
    Hmac(Vec<u8>),
}

/// A last will template.
#[derive(Clone, Debug)]
pub struct WillTemplate {
    pub topic: TopicTemplate,
    pub payload: TopicTemplate,
    pub qos: u8,
    pub retain: bool,
}

/// Resolved `[sink.mqtt.per_device]`.
#[derive(Clone, Debug)]
pub struct PerDeviceSettings {
    pub client_id: TopicTemplate,
    pub username: Option<TopicTemplate>,
    pub password: Password,
    pub clean_session: bool,
    /// MQTT 5 session expiry interval, seconds.
    pub session_expiry_s: Option<u32>,
    pub keep_alive_ms: u64,
    /// Unacknowledged QoS 1/2 messages per device.
    pub inflight: u16,
    /// Unsent messages kept per device (while connecting or disconnected).
    pub queue_size: usize,
    /// New connections per second, for the whole runtime (split evenly across shards).
    pub connect_rate: u64,
    /// Sessions connecting at once (TCP connect, TLS handshake, CONNACK pending), for the whole
    /// runtime (split evenly across shards, at least one per shard). A broker's listen backlog
    /// (Mosquitto's is 100) drops the SYNs of a burst beyond it, and a dropped SYN is only sent
    /// again after a second: the bound keeps a ramp at the rate the broker accepts instead.
    pub max_connecting: u64,
    pub connect_timeout_ms: u64,
    pub source_addresses: Vec<IpAddr>,
    pub will: Option<WillTemplate>,
    pub subscribe: Option<TopicTemplate>,
    pub subscribe_qos: u8,
    pub respond: Option<TopicTemplate>,
    /// The QoS of a command's answer (`respond`); `None`: the QoS the command arrived at.
    pub answer_qos: Option<u8>,
    /// `[sink.mqtt.per_device.token]`: an expiring token as the password (then `password`
    /// is `None`).
    pub token: Option<std::sync::Arc<super::token::TokenSettings>>,
    /// `[sink.mqtt.per_device.identity]`: a TLS client certificate per device.
    pub identity: Option<std::sync::Arc<super::identity::IdentitySettings>>,
}

impl Default for PerDeviceSettings {
    fn default() -> Self {
        PerDeviceSettings {
            client_id: TopicTemplate::parse("{device_id}").expect("valid template"),
            username: None,
            password: Password::None,
            clean_session: true,
            session_expiry_s: None,
            keep_alive_ms: 60_000,
            inflight: 8,
            queue_size: 100,
            connect_rate: 1000,
            max_connecting: 100,
            connect_timeout_ms: 10_000,
            source_addresses: vec![],
            will: None,
            subscribe: None,
            subscribe_qos: 1,
            respond: None,
            answer_qos: None,
            token: None,
            identity: None,
        }
    }
}

fn template(t: &mut Table<'_>, key: &str, p: &mut Problems) -> Option<TopicTemplate> {
    let s = t.str(key, p)?;
    match TopicTemplate::parse(s) {
        Ok(tpl) => Some(tpl),
        Err(e) => {
            p.add(t.path_of(key), e);
            None
        }
    }
}

fn int_in(t: &mut Table<'_>, key: &str, lo: i64, hi: i64, p: &mut Problems) -> Option<i64> {
    match t.int(key, p) {
        Some(n) if (lo..=hi).contains(&n) => Some(n),
        Some(n) => {
            p.add(t.path_of(key), format!("must be between {lo} and {hi}, got {n}"));
            None
        }
        None => None,
    }
}

/// A topic template rendered for a made-up device, to check what it can produce.
fn sample(tpl: &TopicTemplate) -> String {
    let mut out = vec![];
    tpl.render(&mut out, "d", "t", &Default::default());
    String::from_utf8_lossy(&out).into_owned()
}

/// Compiles `[sink.mqtt.per_device]`; every problem is added with its path and value.
pub fn compile(mut t: Table<'_>, p: &mut Problems) -> PerDeviceSettings {
    let mut s = PerDeviceSettings::default();
    if let Some(tpl) = template(&mut t, "client_id", p) {
        // Device ids are unique in a runtime; a client id without one is shared by every
        // device, and the broker would keep only the newest connection of each.
        if !tpl.parts.contains(&crate::sim::profile::TopicPart::DeviceId) {
            p.add(
                t.path_of("client_id"),
                format!(
                    "must contain {{device_id}} (client ids must be unique per device), got {:?}",
                    tpl.source
                ),
            );
        }
        s.client_id = tpl;
    }
    s.username = template(&mut t, "username", p);
    let password_env = t.str("password_env", p);
    let hmac_env = t.str("password_hmac_secret_env", p);
    // `IOT_SIM_*` is iot-sim's own namespace: an unknown name there is refused before any
    // config is read (`config::env::check_process`), so a secret must live elsewhere.
    for (key, var) in [("password_env", password_env), ("password_hmac_secret_env", hmac_env)] {
        if let Some(var) =
            var.filter(|v| v.starts_with(super::env::PREFIX) && !super::env::OTHER_VARS.contains(v))
        {
            p.add(
                t.path_of(key),
                format!(
                    "{var:?}: names starting with {} are iot-sim's own settings; put the secret \
                     in a variable of another name",
                    super::env::PREFIX
                ),
            );
        }
    }
    match (password_env, hmac_env) {
        (Some(_), Some(_)) => p.add(
            t.path_of("password_env"),
            "password_env and password_hmac_secret_env exclude each other",
        ),
        (Some(var), None) => match std::env::var(var) {
            Ok(v) => s.password = Password::Fixed(v),
            Err(_) => {
                p.add(t.path_of("password_env"), format!("environment variable {var:?} is not set"))
            }
        },
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => s.password = Password::Hmac(v.into_bytes()),
            _ => p.add(
                t.path_of("password_hmac_secret_env"),
                format!("environment variable {var:?} holds no secret (unset or empty)"),
            ),
        },
        (None, None) => {}
    }
    // MQTT 3.1.1 sends a password only with a user name: without one the broker would see an
    // anonymous login, not the password the file asked for.
    if s.username.is_none() && (password_env.is_some() || hmac_env.is_some()) {
        let key = if password_env.is_some() { "password_env" } else { "password_hmac_secret_env" };
        p.add(
            t.path_of(key),
            "a password needs username (a template, e.g. \"{device_id}\"): MQTT 3.1.1 sends \
             a password only with a user name",
        );
    }
    if let Some(b) = t.bool("clean_session", p) {
        s.clean_session = b;
    }
    if let Some(ms) = t.duration_ms("session_expiry", p) {
        if ms / 1000 > u32::MAX as u64 {
            p.add(
                t.path_of("session_expiry"),
                format!("must be at most {}s, got {ms}ms", u32::MAX),
            );
        } else {
            s.session_expiry_s = Some((ms / 1000) as u32);
        }
    }
    if let Some(ms) = t.duration_ms("keep_alive", p) {
        if ms != 0 && !(1000..=65_535_000).contains(&ms) {
            p.add(
                t.path_of("keep_alive"),
                format!("must be 0 (off) or between 1s and 65535s, got {ms}ms"),
            );
        } else {
            s.keep_alive_ms = ms;
        }
    }
    if let Some(n) = int_in(&mut t, "inflight", 1, 65_534, p) {
        s.inflight = n as u16;
    }
    if let Some(n) = int_in(&mut t, "queue_size", 1, MAX_DEVICE_QUEUE as i64, p) {
        s.queue_size = n as usize;
    }
    if let Some(n) = int_in(&mut t, "connect_rate", 1, MAX_CONNECT_RATE as i64, p) {
        s.connect_rate = n as u64;
    }
    if let Some(n) = int_in(&mut t, "max_connecting", 1, MAX_CONNECTING as i64, p) {
        s.max_connecting = n as u64;
    }
    if let Some(ms) = t.duration_ms("connect_timeout", p) {
        if ms == 0 {
            p.add(t.path_of("connect_timeout"), "must be greater than 0, got 0");
        } else {
            s.connect_timeout_ms = ms;
        }
    }
    if let Some(list) = t.array("source_addresses", p) {
        let path = t.path_of("source_addresses");
        if list.len() > MAX_SOURCE_ADDRESSES {
            p.add(&path, format!("at most {MAX_SOURCE_ADDRESSES} addresses, got {}", list.len()));
        }
        for (i, v) in list.iter().enumerate().take(MAX_SOURCE_ADDRESSES) {
            let at = format!("{path}[{i}]");
            let Some(text) = v.as_str() else {
                p.add(at, format!("expected an IP address string, got {}", crate::walk::show(v)));
                continue;
            };
            match text.parse::<IpAddr>() {
                // Binding once here turns "cannot assign requested address" into a config
                // error instead of every device failing to connect.
                Ok(ip) => match std::net::TcpListener::bind((ip, 0)) {
                    Ok(_) => s.source_addresses.push(ip),
                    Err(e) => p.add(at, format!("cannot bind {text:?}: {e}")),
                },
                Err(_) => p.add(at, format!("expected an IP address, got {text:?}")),
            }
        }
    }
    let will_topic = template(&mut t, "will_topic", p);
    let will_payload = template(&mut t, "will_payload", p);
    let will_qos = int_in(&mut t, "will_qos", 0, 2, p);
    let will_retain = t.bool("will_retain", p);
    match will_topic {
        Some(topic) => {
            if !rumqttc::mqttbytes::valid_topic(&sample(&topic)) {
                p.add(
                    t.path_of("will_topic"),
                    format!("not a valid MQTT topic name (no wildcards), got {:?}", topic.source),
                );
            }
            s.will = Some(WillTemplate {
                topic,
                payload: will_payload
                    .unwrap_or_else(|| TopicTemplate::parse("").expect("valid template")),
                qos: will_qos.unwrap_or(0) as u8,
                retain: will_retain.unwrap_or(false),
            });
        }
        None => {
            for key in ["will_payload", "will_qos", "will_retain"] {
                if t.has(key) {
                    p.add(t.path_of(key), "a will needs will_topic");
                }
            }
        }
    }
    s.subscribe = template(&mut t, "subscribe", p);
    if let Some(sub) = &s.subscribe
        && !rumqttc::mqttbytes::valid_filter(&sample(sub))
    {
        p.add(
            t.path_of("subscribe"),
            format!("not a valid MQTT topic filter, got {:?}", sub.source),
        );
    }
    if let Some(q) = int_in(&mut t, "subscribe_qos", 0, 2, p) {
        s.subscribe_qos = q as u8;
    }
    if let Some(q) = int_in(&mut t, "answer_qos", 0, 2, p) {
        s.answer_qos = Some(q as u8);
    }
    s.respond = template(&mut t, "respond", p);
    if s.respond.is_none() && t.has("answer_qos") {
        p.add(t.path_of("answer_qos"), "answer_qos needs respond (the topic of the answers)");
    }
    if let Some(r) = &s.respond {
        if s.subscribe.is_none() {
            p.add(t.path_of("respond"), "respond needs subscribe (commands to answer)");
        }
        if !rumqttc::mqttbytes::valid_topic(&sample(r)) {
            p.add(
                t.path_of("respond"),
                format!("not a valid MQTT topic name (no wildcards), got {:?}", r.source),
            );
        }
    }
    if let Some(tok) = t.table("token", p) {
        // One source of passwords: a token replaces the fixed and HMAC ones.
        for key in ["password_env", "password_hmac_secret_env"] {
            if t.has(key) {
                p.add(t.path_of(key), format!("{key} and token exclude each other"));
            }
        }
        s.token = super::token::compile(tok, p).map(std::sync::Arc::new);
        // MQTT 3.1.1 sends a password only with a user name.
        if s.username.is_none() {
            p.add(
                t.path_of("token"),
                "a token is sent as the password, which needs username (a template, e.g. \"{device_id}\")",
            );
        }
    }
    if let Some(it) = t.table("identity", p) {
        s.identity = super::identity::compile(it, p).map(std::sync::Arc::new);
    }
    t.finish_with(&super::keys::MQTT_PER_DEVICE.names(), p);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<String> {
        let table: toml::Table = toml::from_str(toml_text).unwrap();
        let mut p = Problems::default();
        compile(Table::new("sink.mqtt.per_device", &table), &mut p);
        p.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_use_the_device_id_as_client_id() {
        let table = toml::Table::new();
        let mut p = Problems::default();
        let s = compile(Table::new("sink.mqtt.per_device", &table), &mut p);
        assert!(p.is_empty());
        assert_eq!(s.client_id.source, "{device_id}");
        assert_eq!(s.password, Password::None);
        // A command is answered at the QoS it arrived at.
        assert_eq!(s.answer_qos, None);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_path() {
        let errs = problems(
            r#"
            client_id = "fleet-a"
            connect_rate = 0
            max_connecting = 0
            will_payload = "gone"
            subscribe = "devices/#/cmd"
            source_addresses = ["203.0.113.9", "nope"]
            password_hmac_secret_env = "FLEET_TEST_SURELY_UNSET_SECRET"
            answer_qos = 3
            "#,
        )
        .join("\n");
        for want in [
            "sink.mqtt.per_device.client_id: must contain {device_id}",
            "\"fleet-a\"",
            "sink.mqtt.per_device.connect_rate: must be between 1 and 1000000, got 0",
            "sink.mqtt.per_device.max_connecting: must be between 1 and 1000000, got 0",
            "sink.mqtt.per_device.will_payload: a will needs will_topic",
            "sink.mqtt.per_device.subscribe: not a valid MQTT topic filter, got \"devices/#/cmd\"",
            "sink.mqtt.per_device.source_addresses[0]: cannot bind \"203.0.113.9\"",
            "sink.mqtt.per_device.source_addresses[1]: expected an IP address, got \"nope\"",
            "sink.mqtt.per_device.password_hmac_secret_env: environment variable \"FLEET_TEST_SURELY_UNSET_SECRET\" holds no secret",
            "sink.mqtt.per_device.answer_qos: must be between 0 and 2, got 3",
            "sink.mqtt.per_device.answer_qos: answer_qos needs respond",
            "sink.mqtt.per_device.password_hmac_secret_env: a password needs username",
        ] {
            assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
        }
    }

    #[test]
    fn loopback_source_addresses_and_templates_compile() {
        let table: toml::Table = toml::from_str(
            r#"
            client_id = "sim-{device_id}"
            username = "{labels.tenant}"
            source_addresses = ["127.0.0.2", "127.0.0.3"]
            will_topic = "devices/{device_id}/status"
            will_payload = "{device_id} offline"
            will_qos = 1
            subscribe = "devices/{device_id}/cmd"
            respond = "devices/{device_id}/cmd/ack"
            answer_qos = 2
            "#,
        )
        .unwrap();
        let mut p = Problems::default();
        let s = compile(Table::new("sink.mqtt.per_device", &table), &mut p);
        assert!(p.is_empty(), "{:?}", p.0);
        assert_eq!(s.source_addresses.len(), 2);
        assert_eq!(s.will.as_ref().map(|w| w.qos), Some(1));
        assert!(s.respond.is_some());
        assert_eq!(s.answer_qos, Some(2));
    }
}
