//! `[sink.*]` tables: where each protocol connects and how it behaves. Secrets never come from
//! the file: they are read from environment variables:
//!
//! | variable | what |
//! |---|---|
//! | `IOT_SIM_MQTT_USERNAME`, `IOT_SIM_MQTT_PASSWORD` | MQTT credentials |
//! | `IOT_SIM_AMQP_USERNAME`, `IOT_SIM_AMQP_PASSWORD` | AMQP credentials (replace the URL's) |
//! | `IOT_SIM_HTTP_TOKEN` | HTTP bearer token (`Authorization: Bearer ...`) |

use crate::walk::{Problems, Table};
use std::path::PathBuf;

/// `[sink.file]`.
#[derive(Clone, Debug)]
pub struct FileSinkSettings {
    pub path: PathBuf,
}

/// Reconnect/retry backoff: exponential from `initial_ms` to `max_ms`, with jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The `attempt`-th delay (0-based), with up to 50% random jitter from `jitter` in [0, 1).
    pub fn delay_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let base = self.initial_ms.saturating_mul(1u64 << attempt.min(30)).min(self.max_ms);
        base / 2 + ((base as f64 / 2.0) * jitter.clamp(0.0, 1.0)) as u64
    }
}

/// TLS files for `mqtts://`.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Where a `ws://`/`wss://` URL upgrades: the request target (the URL's path, `/mqtt` when it
/// has none) and the `Host` header.
#[derive(Clone, Debug, PartialEq)]
pub struct WsTarget {
    pub path: String,
    pub host: String,
}

/// `[sink.mqtt]`.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsFiles>,
    /// `ws://`, `wss://`: MQTT over WebSocket (over TLS with `wss://`).
    pub ws: Option<WsTarget>,
    /// 4 = MQTT 3.1.1, 5 = MQTT 5.
    pub version: u8,
    pub qos: u8,
    pub retain: bool,
    pub pool_size: usize,
    pub keep_alive_ms: u64,
    pub client_id_prefix: String,
    pub inflight: u16,
    pub queue_size: usize,
    pub backoff: Backoff,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS server name (SNI and the name verified); `None`: the URL's host.
    pub server_name: Option<String>,
    /// ALPN protocols offered in the TLS handshake.
    pub alpn: Vec<Vec<u8>>,
    /// `[sink.mqtt.per_device]`: used by profiles with `connection = "per_device"`.
    pub per_device: super::mqtt_sessions::PerDeviceSettings,
    /// `preset` (already expanded into the other keys by `config::preset`) and Azure's `hub`.
    pub preset: Option<String>,
    pub hub: Option<String>,
}

/// `[sink.amqp]`.
#[derive(Clone, Debug)]
pub struct AmqpSettings {
    pub url: String,
    pub exchange: String,
    /// Replaces `/` in topics to make routing keys (`.` by default; empty keeps `/`).
    pub routing_separator: String,
    pub confirms: bool,
    pub confirm_window: usize,
    pub queue_size: usize,
    pub backoff: Backoff,
}

/// `[sink.http]`.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// URL template; `{topic}` and `{device_id}` are replaced.
    pub endpoint: String,
    /// Header that carries the topic (none if empty).
    pub topic_header: String,
    pub batch_size: usize,
    pub batch_linger_ms: u64,
    pub max_retries: u32,
    pub timeout_ms: u64,
    pub concurrency: usize,
    pub queue_size: usize,
    pub backoff: Backoff,
    pub token: Option<String>,
}

/// `[sink.coap]`.
#[derive(Clone, Debug)]
pub struct CoapSettings {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub confirmable: bool,
    pub ack_timeout_ms: u64,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    /// Confirmable exchanges in flight at once per shard.
    pub max_inflight: usize,
    pub queue_size: usize,
}

/// The `[sink.*]` tables.
#[derive(Clone, Debug, Default)]
pub struct SinkSettings {
    pub file: Option<FileSinkSettings>,
    pub mqtt: Option<MqttSettings>,
    pub amqp: Option<AmqpSettings>,
    pub http: Option<HttpSettings>,
    pub coap: Option<CoapSettings>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn usize_in(
    t: &mut Table<'_>,
    key: &str,
    lo: i64,
    hi: i64,
    default: usize,
    p: &mut Problems,
) -> usize {
    match t.int(key, p) {
        Some(n) if (lo..=hi).contains(&n) => n as usize,
        Some(n) => {
            p.add(t.path_of(key), format!("must be between {lo} and {hi}, got {n}"));
            default
        }
        None => default,
    }
}

fn dur(t: &mut Table<'_>, key: &str, default: u64, p: &mut Problems) -> u64 {
    match t.duration_ms(key, p) {
        Some(0) => {
            p.add(t.path_of(key), "must be greater than 0");
            default
        }
        Some(ms) => ms,
        None => default,
    }
}

fn backoff(t: &mut Table<'_>, p: &mut Problems) -> Backoff {
    let b = Backoff {
        initial_ms: dur(t, "backoff_initial", 100, p),
        max_ms: dur(t, "backoff_max", 10_000, p),
    };
    if b.initial_ms > b.max_ms {
        p.add(
            t.path_of("backoff_initial"),
            format!("({}ms) must not exceed backoff_max ({}ms)", b.initial_ms, b.max_ms),
        );
    }
    b
}

/// Splits `scheme://[user[:pass]@]host[:port][/rest]`.
pub struct UrlParts {
    pub scheme: String,
    pub user: Option<String>,
    pub password: bool,
    pub host: String,
    pub port: Option<u16>,
    pub rest: String,
}

/// Parses a URL into its parts (no percent-decoding; enough for broker addresses).
pub fn split_url(url: &str) -> Result<UrlParts, String> {
    let (scheme, after) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (scheme://host:port)"))?;
    let (authority, rest) = match after.find('/') {
        Some(i) => (&after[..i], after[i..].to_string()),
        None => (after, String::new()),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            let port = p.parse::<u16>().map_err(|_| format!("{url:?} has a bad port {p:?}"))?;
            (h.trim_start_matches('[').trim_end_matches(']').to_string(), Some(port))
        }
        _ => (hostport.trim_start_matches('[').trim_end_matches(']').to_string(), None),
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((name, _)) => (Some(name.to_string()), true),
            None => (Some(u.to_string()), false),
        },
        None => (None, false),
    };
    Ok(UrlParts { scheme: scheme.to_ascii_lowercase(), user, password, host, port, rest })
}

fn url_key(
    t: &mut Table<'_>,
    default: &str,
    schemes: &[&str],
    p: &mut Problems,
) -> Option<(String, UrlParts)> {
    let url = t.str("url", p).unwrap_or(default).to_string();
    match split_url(&url) {
        Ok(parts) if schemes.contains(&parts.scheme.as_str()) => {
            if parts.password {
                p.add(t.path_of("url"), "must not contain a password: set it in the environment instead (see the user guide, docs/src/network-sinks.md, Secrets)");
                return None;
            }
            Some((url, parts))
        }
        Ok(parts) => {
            p.add(
                t.path_of("url"),
                format!(
                    "scheme {:?} is not supported here; use {}",
                    parts.scheme,
                    schemes.join(" or ")
                ),
            );
            None
        }
        Err(e) => {
            p.add(t.path_of("url"), e);
            None
        }
    }
}

fn existing_file(t: &mut Table<'_>, key: &str, p: &mut Problems) -> Option<PathBuf> {
    let f = PathBuf::from(t.str(key, p)?);
    if !f.is_file() {
        p.add(t.path_of(key), format!("{} is not a readable file", f.display()));
    }
    Some(f)
}

/// Compiles the `[sink]` table.
/// The keys of `[sink.file]`.
pub const FILE_KEYS: &[&str] = &["path"];

/// Every `[sink.NAME]` table that has settings, with its keys: the schema the environment
/// layer (`config::env`) derives its `IOT_SIM_SINK_<NAME>_<KEY>` names from. (`console` and
/// `null` take no settings.)
pub const TABLES: &[(&str, &[&str])] = &[
    ("file", FILE_KEYS),
    ("mqtt", MQTT_KEYS),
    ("amqp", AMQP_KEYS),
    ("http", HTTP_KEYS),
    ("coap", COAP_KEYS),
];

pub fn compile(mut t: Table<'_>, p: &mut Problems) -> SinkSettings {
    let mut s = SinkSettings::default();
    if let Some(mut f) = t.table("file", p) {
        if let Some(path) = f.req_str("path", p) {
            if path.is_empty() {
                p.add(f.path_of("path"), "must not be empty");
            } else {
                s.file = Some(FileSinkSettings { path: PathBuf::from(path) });
            }
        }
        f.finish_with(FILE_KEYS, p);
    }
    for name in ["console", "null"] {
        if let Some(tt) = t.table(name, p) {
            tt.finish_with(&[], p);
        }
    }
    if let Some(m) = t.table("mqtt", p) {
        s.mqtt = compile_mqtt(m, p);
    }
    if let Some(a) = t.table("amqp", p) {
        s.amqp = compile_amqp(a, p);
    }
    if let Some(h) = t.table("http", p) {
        s.http = compile_http(h, p);
    }
    if let Some(c) = t.table("coap", p) {
        s.coap = compile_coap(c, p);
    }
    t.finish_with(&super::keys::SINK.names(), p);
    s
}

/// The keys of `[sink.mqtt]` (accepted by the walker; `IOT_SIM_SINK_MQTT_*` in the environment).
pub const MQTT_KEYS: &[&str] = &[
    "url",
    "version",
    "qos",
    "retain",
    "pool_size",
    "keep_alive",
    "client_id_prefix",
    "inflight",
    "queue_size",
    "backoff_initial",
    "backoff_max",
    "ca_file",
    "client_cert",
    "client_key",
    "preset",
    "hub",
    "server_name",
    "alpn",
];

fn compile_mqtt(mut t: Table<'_>, p: &mut Problems) -> Option<MqttSettings> {
    let before = p.0.len();
    let parsed =
        url_key(&mut t, "mqtt://127.0.0.1:1883", &["mqtt", "tcp", "mqtts", "ssl", "ws", "wss"], p);
    let version = match t.int("version", p) {
        None | Some(4) => 4,
        Some(5) => 5,
        Some(3) => 4,
        Some(v) => {
            p.add(t.path_of("version"), format!("expected 4 (3.1.1) or 5, got {v}"));
            4
        }
    };
    let qos = usize_in(&mut t, "qos", 0, 2, 1, p) as u8;
    let retain = t.bool("retain", p).unwrap_or(false);
    let pool_size = usize_in(&mut t, "pool_size", 1, 1024, 4, p);
    let keep_alive_ms = dur(&mut t, "keep_alive", 30_000, p);
    if keep_alive_ms < 1000 {
        p.add(t.path_of("keep_alive"), "must be at least 1s");
    }
    let client_id_prefix = t.str("client_id_prefix", p).unwrap_or("iot-sim").to_string();
    let inflight = usize_in(&mut t, "inflight", 1, 65_535, 100, p) as u16;
    let queue_size = usize_in(&mut t, "queue_size", 1, 10_000_000, 10_000, p);
    let backoff = backoff(&mut t, p);
    // Expanded before the loader runs (`config::preset`), which also checked the names.
    let preset = t.str("preset", p).map(String::from);
    let hub = t.str("hub", p).map(String::from);
    let per_device = match t.table("per_device", p) {
        Some(pd) => super::mqtt_sessions::compile(pd, p),
        None => Default::default(),
    };
    let server_name = t.str("server_name", p).map(str::to_string);
    if let Some(n) = &server_name
        && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
    {
        p.add(t.path_of("server_name"), format!("not a DNS name or IP address, got {n:?}"));
    }
    let mut alpn = vec![];
    if let Some(list) = t.array("alpn", p) {
        let path = t.path_of("alpn");
        for (i, v) in list.iter().enumerate() {
            match v.as_str() {
                Some(s) if !s.is_empty() && s.len() < 256 => alpn.push(s.as_bytes().to_vec()),
                _ => p.add(
                    format!("{path}[{i}]"),
                    format!(
                        "expected a protocol name (1 to 255 bytes), got {}",
                        crate::walk::show(v)
                    ),
                ),
            }
        }
    }
    let tls_keys = [
        t.has("ca_file"),
        t.has("client_cert"),
        t.has("client_key"),
        t.has("server_name"),
        t.has("alpn"),
        per_device.identity.is_some(),
    ];
    let tls_files = TlsFiles {
        ca_file: existing_file(&mut t, "ca_file", p),
        client_cert: existing_file(&mut t, "client_cert", p),
        client_key: existing_file(&mut t, "client_key", p),
    };
    if tls_files.client_cert.is_some() != tls_files.client_key.is_some() {
        p.add(t.path_of("client_cert"), "client_cert and client_key go together");
    }
    // `per_device` is a table of its own (file only: the environment carries scalar settings).
    let keys: Vec<&str> = MQTT_KEYS.iter().copied().chain(["per_device"]).collect();
    t.finish_with(&keys, p);
    let (url, parts) = parsed?;
    let tls = matches!(parts.scheme.as_str(), "mqtts" | "ssl" | "wss");
    if !tls && tls_keys.iter().any(|k| *k) {
        p.add(
            t_path(&url),
            format!(
                "TLS settings (ca_file, client_cert, client_key, server_name, alpn or \
                 per_device.identity) are set but the URL is not mqtts:// or wss://, got {url:?}"
            ),
        );
    }
    if p.0.len() > before {
        return None;
    }
    let is_ws = matches!(parts.scheme.as_str(), "ws" | "wss");
    let port = parts.port.unwrap_or(match (is_ws, tls) {
        (false, false) => 1883,
        (false, true) => 8883,
        (true, false) => 80,
        (true, true) => 443,
    });
    let ws = is_ws.then(|| ws_target(&parts, port));
    Some(MqttSettings {
        port,
        ws,
        host: parts.host,
        tls: tls.then_some(tls_files),
        url,
        version,
        qos,
        retain,
        pool_size,
        keep_alive_ms,
        client_id_prefix,
        inflight,
        queue_size,
        backoff,
        username: env("IOT_SIM_MQTT_USERNAME").or(parts.user),
        password: env("IOT_SIM_MQTT_PASSWORD"),
        server_name,
        alpn,
        per_device,
        preset,
        hub,
    })
}

/// The upgrade target of a `ws://`/`wss://` URL: its path (`/mqtt` when it has none) and the
/// `Host` header (with the port when the URL names one).
pub fn ws_target(parts: &UrlParts, port: u16) -> WsTarget {
    let host =
        if parts.host.contains(':') { format!("[{}]", parts.host) } else { parts.host.clone() };
    WsTarget {
        path: if parts.rest.is_empty() { "/mqtt".to_string() } else { parts.rest.clone() },
        host: if parts.port.is_some() { format!("{host}:{port}") } else { host },
    }
}

fn t_path(_url: &str) -> String {
    "sink.mqtt.url".to_string()
}

/// The keys of `[sink.amqp]` (accepted by the walker; `IOT_SIM_SINK_AMQP_*` in the environment).
pub const AMQP_KEYS: &[&str] = &[
    "url",
    "exchange",
    "routing_separator",
    "confirms",
    "confirm_window",
    "queue_size",
    "backoff_initial",
    "backoff_max",
];
/// An AMQP URL with the credentials from the environment (`IOT_SIM_AMQP_USERNAME`,
/// `IOT_SIM_AMQP_PASSWORD`), which replace the URL's user: the password never is in the file.
pub fn amqp_url_with_env(url: String, parts: &UrlParts) -> String {
    match (env("IOT_SIM_AMQP_USERNAME").or(parts.user.clone()), env("IOT_SIM_AMQP_PASSWORD")) {
        (Some(u), Some(pw)) => format!(
            "{}://{u}:{pw}@{}:{}{}",
            parts.scheme,
            parts.host,
            parts.port.unwrap_or(5672),
            parts.rest
        ),
        (Some(u), None) => {
            format!(
                "{}://{u}@{}:{}{}",
                parts.scheme,
                parts.host,
                parts.port.unwrap_or(5672),
                parts.rest
            )
        }
        _ => url,
    }
}

fn compile_amqp(mut t: Table<'_>, p: &mut Problems) -> Option<AmqpSettings> {
    let before = p.0.len();
    let parsed = url_key(&mut t, "amqp://127.0.0.1:5672/%2f", &["amqp", "amqps"], p);
    let exchange = t.str("exchange", p).unwrap_or("iot.telemetry").to_string();
    let routing_separator = t.str("routing_separator", p).unwrap_or(".").to_string();
    let confirms = t.bool("confirms", p).unwrap_or(true);
    let confirm_window = usize_in(&mut t, "confirm_window", 1, 1_000_000, 1000, p);
    let queue_size = usize_in(&mut t, "queue_size", 1, 10_000_000, 10_000, p);
    let backoff = backoff(&mut t, p);
    t.finish_with(AMQP_KEYS, p);
    let (url, parts) = parsed?;
    if p.0.len() > before {
        return None;
    }
    let url = amqp_url_with_env(url, &parts);
    Some(AmqpSettings {
        url,
        exchange,
        routing_separator,
        confirms,
        confirm_window,
        queue_size,
        backoff,
    })
}

/// The keys of `[sink.http]` (accepted by the walker; `IOT_SIM_SINK_HTTP_*` in the environment).
pub const HTTP_KEYS: &[&str] = &[
    "endpoint",
    "topic_header",
    "batch_size",
    "batch_linger",
    "max_retries",
    "timeout",
    "concurrency",
    "queue_size",
    "backoff_initial",
    "backoff_max",
];

fn compile_http(mut t: Table<'_>, p: &mut Problems) -> Option<HttpSettings> {
    let before = p.0.len();
    let endpoint = t.req_str("endpoint", p).map(str::to_string);
    if let Some(e) = &endpoint {
        match split_url(&e.replace("{topic}", "t").replace("{device_id}", "d")) {
            Ok(u) if u.scheme == "http" || u.scheme == "https" => {}
            Ok(u) => p.add(
                t.path_of("endpoint"),
                format!("scheme {:?} is not supported; use http or https", u.scheme),
            ),
            Err(err) => p.add(t.path_of("endpoint"), err),
        }
    }
    let topic_header = t.str("topic_header", p).unwrap_or("X-Topic").to_string();
    let batch_size = usize_in(&mut t, "batch_size", 1, 100_000, 1, p);
    let batch_linger_ms = dur(&mut t, "batch_linger", 50, p);
    let max_retries = usize_in(&mut t, "max_retries", 0, 100, 3, p) as u32;
    let timeout_ms = dur(&mut t, "timeout", 10_000, p);
    let concurrency = usize_in(&mut t, "concurrency", 1, 10_000, 32, p);
    let queue_size = usize_in(&mut t, "queue_size", 1, 10_000_000, 10_000, p);
    let backoff = backoff(&mut t, p);
    t.finish_with(HTTP_KEYS, p);
    if p.0.len() > before {
        return None;
    }
    Some(HttpSettings {
        endpoint: endpoint?,
        topic_header,
        batch_size,
        batch_linger_ms,
        max_retries,
        timeout_ms,
        concurrency,
        queue_size,
        backoff,
        token: env("IOT_SIM_HTTP_TOKEN"),
    })
}

/// The keys of `[sink.coap]` (accepted by the walker; `IOT_SIM_SINK_COAP_*` in the environment).
pub const COAP_KEYS: &[&str] = &[
    "url",
    "confirmable",
    "ack_timeout",
    "ack_random_factor",
    "max_retransmit",
    "max_inflight",
    "queue_size",
];

fn compile_coap(mut t: Table<'_>, p: &mut Problems) -> Option<CoapSettings> {
    let before = p.0.len();
    let parsed = url_key(&mut t, "coap://127.0.0.1:5683", &["coap"], p);
    let confirmable = t.bool("confirmable", p).unwrap_or(true);
    let ack_timeout_ms = dur(&mut t, "ack_timeout", 2000, p);
    let ack_random_factor = match t.f64("ack_random_factor", p) {
        Some(f) if (1.0..=4.0).contains(&f) => f,
        Some(f) => {
            p.add(t.path_of("ack_random_factor"), format!("must be between 1 and 4, got {f}"));
            1.5
        }
        None => 1.5,
    };
    let max_retransmit = usize_in(&mut t, "max_retransmit", 0, 20, 4, p) as u32;
    let max_inflight = usize_in(&mut t, "max_inflight", 1, 60_000, 256, p);
    let queue_size = usize_in(&mut t, "queue_size", 1, 10_000_000, 10_000, p);
    t.finish_with(COAP_KEYS, p);
    let (url, parts) = parsed?;
    if p.0.len() > before {
        return None;
    }
    Some(CoapSettings {
        port: parts.port.unwrap_or(5683),
        host: parts.host,
        url,
        confirmable,
        ack_timeout_ms,
        ack_random_factor,
        max_retransmit,
        max_inflight,
        queue_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_their_parts() {
        let u = split_url("mqtts://user@broker.example:8883/x").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.user.as_deref(), u.host.as_str(), u.port, u.rest.as_str()),
            ("mqtts", Some("user"), "broker.example", Some(8883), "/x")
        );
        assert!(split_url("amqp://guest:guest@h:5672/%2f").unwrap().password);
        assert!(split_url("broker:1883").is_err());
        assert!(split_url("mqtt://h:99999").is_err());
        assert_eq!(split_url("coap://[::1]:5683").unwrap().host, "::1");
    }

    #[test]
    fn ws_urls_default_to_the_mqtt_path() {
        let u = split_url("wss://broker.example").unwrap();
        assert_eq!(
            ws_target(&u, 443),
            WsTarget { path: "/mqtt".into(), host: "broker.example".into() }
        );
        let u = split_url("ws://[::1]:8080/ws?x=1").unwrap();
        assert_eq!(
            ws_target(&u, 8080),
            WsTarget { path: "/ws?x=1".into(), host: "[::1]:8080".into() }
        );
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let b = Backoff { initial_ms: 100, max_ms: 1000 };
        assert_eq!(b.delay_ms(0, 0.0), 50);
        assert_eq!(b.delay_ms(0, 0.999_999), 99);
        assert_eq!(b.delay_ms(2, 0.0), 200);
        assert_eq!(b.delay_ms(10, 0.0), 500);
        assert!(b.delay_ms(10, 0.99) <= 1000);
    }
}
