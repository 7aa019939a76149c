//! The HTTP sink (reqwest): each shard owns one client with a keep-alive connection pool and
//! POSTs JSON to the profile's endpoint.
//!
//! - The endpoint is a URL template: `{topic}` (slashes kept) and `{device_id}` are replaced,
//!   percent-encoded. The topic also travels in `topic_header` (`X-Topic` by default); a batch
//!   whose messages do not share one topic carries no topic header.
//! - The *pump* moves messages from the shard's queue into requests. With `batch_size = 1` each
//!   message is one request whose body is the payload; with `batch_size = N > 1` messages are
//!   grouped per resolved URL and sent as a JSON array when N are there or when the oldest has
//!   waited `batch_linger`.
//! - At most `concurrency` requests are in flight (a semaphore); while all permits are taken the
//!   pump waits and the queue — and so backpressure — builds up.
//! - A request that gets a 5xx, 429 or 408, times out or cannot connect is retried with
//!   exponential backoff plus jitter, up to `max_retries` times; then every message of it is
//!   an error of kind `http_<status>`, `timeout`, `connect` or `io`. Other statuses are not
//!   retried. Completion = a 2xx response, recorded for each message of the request.

use super::net::{NetShared, Queued};
use crate::config::HttpSettings;
use crate::measure::clock::mono_ns;
use crate::sim::profile::Fleet;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A piece of an endpoint template.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Topic,
    DeviceId,
}

/// A compiled endpoint template.
#[derive(Clone, Debug)]
pub struct Endpoint {
    parts: Vec<Part>,
}

impl Endpoint {
    /// Compiles `template` and checks that it makes an http(s) URL.
    pub fn parse(template: &str) -> Result<Endpoint, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(i) = rest.find('{') {
            let (lit, tail) = rest.split_at(i);
            if !lit.is_empty() {
                parts.push(Part::Literal(lit.to_string()));
            }
            if let Some(t) = tail.strip_prefix("{topic}") {
                parts.push(Part::Topic);
                rest = t;
            } else if let Some(t) = tail.strip_prefix("{device_id}") {
                parts.push(Part::DeviceId);
                rest = t;
            } else {
                return Err(format!(
                    "{template:?}: unknown placeholder at {tail:?}; use {{topic}} or {{device_id}}"
                ));
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let e = Endpoint { parts };
        let sample = e.render("devices/d-1/telemetry", Some("d-1"));
        match reqwest::Url::parse(&sample) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(e),
            Ok(u) => Err(format!(
                "{template:?}: scheme {:?} is not supported; use http or https",
                u.scheme()
            )),
            Err(err) => Err(format!("{template:?}: {err}")),
        }
    }

    /// True when the URL is the same for every message.
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    fn needs_device_id(&self) -> bool {
        self.parts.contains(&Part::DeviceId)
    }

    /// The URL for one message.
    pub fn render(&self, topic: &str, device_id: Option<&str>) -> String {
        let mut out = String::with_capacity(64 + topic.len());
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Topic => percent_encode(&mut out, topic, true),
                Part::DeviceId => percent_encode(&mut out, device_id.unwrap_or(""), false),
            }
        }
        out
    }
}

/// Appends `s` with every byte outside the unreserved set (and `/` when `keep_slash`)
/// percent-encoded.
fn percent_encode(out: &mut String, s: &str, keep_slash: bool) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
}

/// The device id of an encoded envelope (it is the first member; see `sim::payload`).
pub fn device_id_of(payload: &[u8]) -> Option<String> {
    let rest = payload.strip_prefix(b"{\"device_id\":\"")?;
    let mut escaped = false;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'\\' if !escaped => escaped = true,
            b'"' if !escaped => return serde_json::from_slice(&payload[13..13 + i + 2]).ok(),
            _ => escaped = false,
        }
    }
    None
}

/// Whether a message may join a batch (a JSON array): JSON payloads only; a CBOR or text
/// payload is always a request of its own.
fn batched(m: &Queued) -> bool {
    m.wire.body == crate::sim::format::Body::Json
}

/// The body of a batch: a JSON array of the payloads.
pub fn batch_body(items: &[Queued]) -> Bytes {
    let mut body = Vec::with_capacity(2 + items.iter().map(|m| m.payload.len() + 1).sum::<usize>());
    body.push(b'[');
    for (i, m) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&m.payload);
    }
    body.push(b']');
    Bytes::from(body)
}

/// Whether a failed attempt is worth retrying, and the error kind it counts as.
#[derive(Debug, PartialEq)]
pub struct Failure {
    pub kind: String,
    pub retry: bool,
}

/// Classifies a response status: `None` for 2xx.
pub fn classify_status(status: u16) -> Option<Failure> {
    if (200..300).contains(&status) {
        return None;
    }
    Some(Failure {
        kind: format!("http_{status}"),
        retry: status >= 500 || status == 429 || status == 408,
    })
}

fn classify_error(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure { kind: "timeout".into(), retry: true }
    } else if e.is_connect() {
        Failure { kind: "connect".into(), retry: true }
    } else if e.is_builder() {
        Failure { kind: "bad_request".into(), retry: false }
    } else {
        Failure { kind: "io".into(), retry: true }
    }
}

/// What every request of a shard shares.
struct Ctx {
    client: reqwest::Client,
    endpoints: Vec<Endpoint>,
    /// `sink.http.endpoint`, for profiles the sink did not know when it started.
    default: Endpoint,
    /// Per profile: the URL when it does not depend on the message.
    fixed: Vec<Option<String>>,
    topic_header: Option<HeaderName>,
    batch_size: usize,
    linger_ns: u64,
    max_retries: u32,
    permits: Arc<Semaphore>,
    shared: Rc<NetShared>,
}

impl Ctx {
    fn url_of(&self, m: &Queued) -> String {
        let p = m.profile as usize;
        if let Some(Some(u)) = self.fixed.get(p) {
            return u.clone();
        }
        // A profile created after the sink started (spawned over gRPC) uses the sink's endpoint.
        let e = self.endpoints.get(p).unwrap_or(&self.default);
        let id = if e.needs_device_id() { device_id_of(&m.payload) } else { None };
        e.render(&m.topic, id.as_deref())
    }
}

/// Starts the shard's HTTP pump.
pub fn start(s: &HttpSettings, fleet: &Fleet, shared: Rc<NetShared>) -> Result<(), String> {
    // reqwest is built without a default crypto provider; another sink may have installed it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut endpoints = Vec::with_capacity(fleet.profiles.len());
    for p in &fleet.profiles {
        let template = p.delivery.endpoint.as_deref().unwrap_or(&s.endpoint);
        endpoints.push(
            Endpoint::parse(template).map_err(|e| format!("profiles.{}.endpoint: {e}", p.name))?,
        );
    }
    let fixed = endpoints.iter().map(|e| e.is_fixed().then(|| e.render("", None))).collect();
    let default = Endpoint::parse(&s.endpoint).map_err(|e| format!("sink.http.endpoint: {e}"))?;
    let mut headers = HeaderMap::new();
    if let Some(token) = &s.token {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "IOT_SIM_HTTP_TOKEN: not a valid header value".to_string())?;
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
    }
    let topic_header = if s.topic_header.is_empty() {
        None
    } else {
        Some(HeaderName::from_bytes(s.topic_header.as_bytes()).map_err(|_| {
            format!("sink.http.topic_header: {:?} is not a header name", s.topic_header)
        })?)
    };
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_millis(s.timeout_ms))
        .connect_timeout(Duration::from_millis(s.timeout_ms))
        .pool_max_idle_per_host(s.concurrency)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the http client: {e}"))?;
    let ctx = Rc::new(Ctx {
        client,
        endpoints,
        default,
        fixed,
        topic_header,
        batch_size: s.batch_size.max(1),
        linger_ns: s.batch_linger_ms.saturating_mul(1_000_000),
        max_retries: s.max_retries,
        permits: Arc::new(Semaphore::new(s.concurrency.max(1))),
        shared,
    });
    tokio::task::spawn_local(pump(ctx));
    Ok(())
}

/// Messages waiting to fill a batch for one URL.
struct Batch {
    items: Vec<Queued>,
    generation: u64,
}

async fn pump(ctx: Rc<Ctx>) {
    let shared = ctx.shared.clone();
    let q = &shared.conns[0];
    let mut batches: HashMap<String, Batch> = HashMap::new();
    // (flush deadline, url, generation), in deadline order: the linger is the same for all.
    let mut lingering: VecDeque<(u64, String, u64)> = VecDeque::new();
    let mut generation = 0u64;
    loop {
        if shared.closing.get() {
            // The shard gave up waiting: what is still here is not in the report any more.
            for (_, b) in batches.drain() {
                for m in b.items {
                    shared.fail(&m, "shutdown");
                    shared.settled(0);
                }
            }
            return;
        }
        while let Some(m) = q.pop() {
            shared.sent(0);
            let url = ctx.url_of(&m);
            if ctx.batch_size == 1 || !batched(&m) {
                dispatch(&ctx, url, vec![m]).await;
                continue;
            }
            let full = match batches.get_mut(&url) {
                Some(b) => {
                    b.items.push(m);
                    b.items.len() >= ctx.batch_size
                }
                None => {
                    generation += 1;
                    lingering.push_back((mono_ns() + ctx.linger_ns, url.clone(), generation));
                    let mut items = Vec::with_capacity(ctx.batch_size.min(1024));
                    items.push(m);
                    batches.insert(url.clone(), Batch { items, generation });
                    ctx.batch_size <= 1
                }
            };
            if full && let Some(b) = batches.remove(&url) {
                dispatch(&ctx, url, b.items).await;
            }
        }
        let now = mono_ns();
        while let Some((deadline, _, _)) = lingering.front() {
            if *deadline > now {
                break;
            }
            let Some((_, url, gen_)) = lingering.pop_front() else { break };
            if batches.get(&url).is_some_and(|b| b.generation == gen_)
                && let Some(b) = batches.remove(&url)
            {
                dispatch(&ctx, url, b.items).await;
            }
        }
        let next = lingering.front().map_or(now + 100_000_000, |l| l.0.min(now + 100_000_000));
        let sleep = tokio::time::sleep(Duration::from_nanos(next.saturating_sub(now)));
        tokio::select! {
            _ = q.wake.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Waits for a request slot, then sends `items` to `url` on a task of its own.
async fn dispatch(ctx: &Rc<Ctx>, url: String, items: Vec<Queued>) {
    let Ok(permit) = ctx.permits.clone().acquire_owned().await else { return };
    tokio::task::spawn_local(request(ctx.clone(), url, items, permit));
}

async fn request(
    ctx: Rc<Ctx>,
    url: String,
    mut items: Vec<Queued>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let shared = &ctx.shared;
    let single = ctx.batch_size == 1 && items.len() == 1 || items.len() == 1 && !batched(&items[0]);
    let (body, content_type) = if single {
        (
            items[0].payload.clone(),
            HeaderValue::from_str(items[0].wire.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        )
    } else {
        (batch_body(&items), HeaderValue::from_static("application/json"))
    };
    let topic = match &items[..] {
        [first, rest @ ..] if rest.iter().all(|m| m.topic == first.topic) => {
            HeaderValue::from_bytes(first.topic.as_bytes()).ok()
        }
        _ => None,
    };
    let sent = mono_ns();
    for m in &mut items {
        m.sent_ns = sent;
    }
    let mut attempt = 0u32;
    let outcome = loop {
        let mut req = ctx
            .client
            .post(url.as_str())
            .header(CONTENT_TYPE, content_type.clone())
            .body(body.clone());
        if let (Some(name), Some(v)) = (&ctx.topic_header, &topic) {
            req = req.header(name.clone(), v.clone());
        }
        let failure = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the body so that the connection goes back to the pool (a failed status
                // stays that status even if its body could not be read).
                let read = resp.bytes().await;
                match classify_status(status) {
                    None if read.is_ok() => break Ok(()),
                    None => Failure { kind: "io".into(), retry: true },
                    Some(f) => f,
                }
            }
            Err(e) => classify_error(&e),
        };
        if !failure.retry || attempt >= ctx.max_retries || shared.closing.get() {
            break Err(failure.kind);
        }
        shared.event("retry");
        shared.backoff_sleep(attempt).await;
        attempt += 1;
    };
    for m in &items {
        match &outcome {
            Ok(()) => shared.complete(m),
            Err(kind) => shared.fail(m, kind),
        }
        shared.settled(0);
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_templates_replace_topic_and_device_id_percent_encoded() {
        let e = Endpoint::parse("http://h:8080/in/{topic}?id={device_id}").unwrap();
        assert_eq!(
            e.render("devices/a b/t", Some("x/y&z")),
            "http://h:8080/in/devices/a%20b/t?id=x%2Fy%26z"
        );
        assert!(!e.is_fixed());
        assert!(Endpoint::parse("http://h/ingest").unwrap().is_fixed());
    }

    #[test]
    fn endpoint_templates_reject_unknown_placeholders_and_schemes() {
        assert!(Endpoint::parse("http://h/{nope}").unwrap_err().contains("unknown placeholder"));
        assert!(Endpoint::parse("ftp://h/x").unwrap_err().contains("not supported"));
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn device_ids_are_read_from_the_envelope() {
        assert_eq!(device_id_of(br#"{"device_id":"t-0001","x":1}"#).as_deref(), Some("t-0001"));
        assert_eq!(device_id_of(br#"{"device_id":"a\"b","x":1}"#).as_deref(), Some("a\"b"));
        assert_eq!(device_id_of(br#"{"x":1}"#), None);
        assert_eq!(device_id_of(br#"{"device_id":"unterminated"#), None);
    }

    #[test]
    fn batches_are_json_arrays_of_the_payloads() {
        let m = |p: &str| Queued {
            topic: "t".into(),
            payload: p.as_bytes().to_vec().into(),
            profile: 0,
            intended_ns: 0,
            sent_ns: 0,
            device_hash: 0,
            phase: crate::sink::net::NO_PHASE,
            wire: Default::default(),
            mqtt5: Default::default(),
        };
        assert_eq!(&batch_body(&[m("{\"a\":1}"), m("{\"b\":2}")])[..], b"[{\"a\":1},{\"b\":2}]");
        assert_eq!(&batch_body(&[m("1")])[..], b"[1]");
    }

    #[test]
    fn server_errors_429_and_408_are_retried_other_4xx_are_not() {
        assert_eq!(classify_status(204), None);
        assert_eq!(classify_status(503), Some(Failure { kind: "http_503".into(), retry: true }));
        assert_eq!(classify_status(429).map(|f| f.retry), Some(true));
        assert_eq!(classify_status(408).map(|f| f.retry), Some(true));
        assert_eq!(classify_status(404), Some(Failure { kind: "http_404".into(), retry: false }));
    }
}
