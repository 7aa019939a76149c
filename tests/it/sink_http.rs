//! The HTTP sink against a real HTTP/1.1 keep-alive server started by the test (tokio), driven
//! through the built binary. Every body the server accepted is compared with what the same
//! fleet writes to a file sink (the envelope is deterministic in virtual time).

use crate::common;
use crate::common::fleet::{Fleet, raw};
use common::{assert_same, run_env, sink_row};

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request the server received, with the status it answered.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    topic: Option<String>,
    auth: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    status: u16,
}

#[derive(Clone, Copy)]
enum Mode {
    /// 200 to everything.
    Accept,
    /// 503 the first time a body is seen, 200 after.
    FailFirst,
    /// 503 to everything.
    AlwaysFail,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(mode: Mode) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(HashSet::new()));
        let log = seen.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, mode, log.clone(), bodies.clone()));
            }
        });
        Server { port, seen, _rt: rt }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves requests on one keep-alive connection until the client closes it.
async fn serve(
    stream: TcpStream,
    mode: Mode,
    log: Arc<Mutex<Vec<Seen>>>,
    bodies: Arc<Mutex<HashSet<Vec<u8>>>>,
) {
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let (Some(method), Some(path)) = (words.next(), words.next()) else { return };
        assert_eq!(method, "POST");
        let path = path.to_string();
        let (mut len, mut topic, mut auth, mut close) = (0usize, None, None, false);
        let mut content_type = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else { return };
            let v = v.trim().to_string();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "x-topic" => topic = Some(v),
                "authorization" => auth = Some(v),
                "content-type" => content_type = Some(v),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                "transfer-encoding" => panic!("chunked bodies are not expected"),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let status = match mode {
            Mode::Accept => 200,
            Mode::AlwaysFail => 503,
            Mode::FailFirst => {
                if bodies.lock().unwrap().insert(body.clone()) {
                    503
                } else {
                    200
                }
            }
        };
        log.lock().unwrap().push(Seen { path, topic, auth, content_type, body, status });
        let reason = if status == 200 { "OK" } else { "Service Unavailable" };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
        );
        if r.get_mut().write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// A virtual-clock fleet of `devices` meters sending every second for 10 s (10 messages each).
fn fleet(dir: &Path, protocol: &str, devices: usize, http: &str) -> String {
    Fleet::new()
        .run(11, "virtual", "2026-03-14T08:00:00Z", "10s")
        .sink("file")
        .set("path", dir.join("out.jsonl"))
        .sink("http")
        .raw(http)
        .devices("meter", devices)
        .set("labels", raw(r#"{ site = "lab" }"#))
        .profile("meter", protocol, "1s")
        .set("topic", "meters/{device_id}/telemetry")
        .gaussian("meter", "power", 100.0, 5.0)
        .toml()
}

fn run(dir: &Path, toml: &str, cores: &str) -> serde_json::Value {
    let out = run_env(dir, toml, &["--cores", cores], &[("IOT_SIM_HTTP_TOKEN", "s3cret")]);
    assert!(out.status.success(), "iot-sim failed: {}", common::stderr(&out));
    common::report(dir)
}

/// The (topic, payload) pairs the same fleet writes to a file sink, sorted.
fn expected_messages(devices: usize) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet(dir.path(), "file", devices, "endpoint = \"http://127.0.0.1:1/\"");
    run(dir.path(), &toml, "1");
    common::file_messages(&dir.path().join("out.jsonl"))
}

fn http_row(r: &serde_json::Value) -> serde_json::Value {
    sink_row(r, "http")
}

fn count(row: &serde_json::Value, key: &str) -> u64 {
    row[key].as_u64().unwrap_or_else(|| panic!("{key} in {row}"))
}

/// The elements of a JSON array as their exact text (panics if `body` is no array of values).
fn split_array(body: &[u8]) -> Vec<String> {
    let parsed: Vec<serde_json::Value> =
        serde_json::from_slice(body).expect("a batch body is a JSON array");
    let text = std::str::from_utf8(body).unwrap();
    let (mut out, mut depth, mut in_str, mut esc, mut start) = (Vec::new(), 0, false, false, 1);
    for (i, c) in text.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' if in_str => esc = true,
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 && i > start {
                    out.push(text[start..i].to_string());
                }
            }
            ',' if depth == 1 => {
                out.push(text[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    assert_eq!(out.len(), parsed.len());
    out
}

fn device_id(payload: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    v["device_id"].as_str().unwrap().to_string()
}

#[test]
fn every_message_arrives_once_with_its_body_topic_header_url_and_token() {
    let server = Server::start(Mode::Accept);
    let dir = tempfile::tempdir().unwrap();
    let http = format!(
        "endpoint = \"http://127.0.0.1:{}/ingest/{{topic}}\"\nconcurrency = 8",
        server.port
    );
    let r = run(dir.path(), &fleet(dir.path(), "http", 20, &http), "2");
    let row = http_row(&r);
    assert_eq!(count(&row, "messages"), 200, "{row}");
    assert_eq!(count(&row, "errors"), 0, "{row}");
    assert_eq!(count(&row, "dropped"), 0, "{row}");
    assert!(row["latency_us"]["p99"].is_u64());

    let seen = server.seen();
    assert_eq!(seen.len(), 200);
    // The server got exactly the envelopes (and topics) a file sink writes.
    let mut got: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.topic.clone().unwrap_or_default(), String::from_utf8(s.body.clone()).unwrap()))
        .collect();
    got.sort();
    assert_same(&got, &expected_messages(20));
    for s in &seen {
        let topic = format!("meters/{}/telemetry", device_id(&s.body));
        assert_eq!(s.path, format!("/ingest/{topic}"));
        assert_eq!(s.topic.as_deref(), Some(topic.as_str()));
        assert_eq!(s.auth.as_deref(), Some("Bearer s3cret"));
        assert_eq!(s.status, 200);
    }
}

#[test]
fn a_cbor_profile_posts_one_message_per_request_with_its_content_type() {
    let server = Server::start(Mode::Accept);
    let dir = tempfile::tempdir().unwrap();
    let http = format!("endpoint = \"http://127.0.0.1:{}/in\"\nbatch_size = 50", server.port);
    let toml = fleet(dir.path(), "http", 5, &http)
        .replace("[profiles.meter]\n", "[profiles.meter]\nformat = \"cbor\"\n");
    assert!(toml.contains("format = \"cbor\""), "{toml}");
    let r = run(dir.path(), &toml, "1");
    assert_eq!(count(&http_row(&r), "messages"), 50);
    let seen = server.seen();
    // CBOR is never batched into a JSON array: 50 requests, each one CBOR map.
    assert_eq!(seen.len(), 50);
    for s in &seen {
        assert_eq!(s.content_type.as_deref(), Some("application/cbor"));
        assert_eq!(s.body[0] & 0xe0, 0xa0, "a CBOR map: {:02x?}", &s.body[..4]);
    }
    // A JSON profile's content type stays application/json.
    let server = Server::start(Mode::Accept);
    let http = format!("endpoint = \"http://127.0.0.1:{}/in\"", server.port);
    let toml = fleet(dir.path(), "http", 1, &http)
        .replace("[profiles.meter]\n", "[profiles.meter]\nformat = \"senml\"\n");
    run(dir.path(), &toml, "1");
    let seen = server.seen();
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|s| s.content_type.as_deref() == Some("application/senml+json")));
}

#[test]
fn batches_are_json_arrays_of_batch_size_and_the_rest_is_flushed_after_the_linger() {
    let server = Server::start(Mode::Accept);
    let dir = tempfile::tempdir().unwrap();
    // 103 devices x 10 messages on one shard: 20 full batches of 50 and one of 30 (after the linger).
    let http = format!(
        "endpoint = \"http://127.0.0.1:{}/bulk\"\nbatch_size = 50\nbatch_linger = \"300ms\"",
        server.port
    );
    let r = run(dir.path(), &fleet(dir.path(), "http", 103, &http), "1");
    let row = http_row(&r);
    assert_eq!(count(&row, "messages"), 1030, "{row}");
    assert_eq!(count(&row, "errors"), 0, "{row}");

    let seen = server.seen();
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    for s in &seen {
        assert_eq!(s.path, "/bulk");
        let arr = split_array(&s.body);
        sizes.push(arr.len());
        for m in arr {
            got.push((format!("meters/{}/telemetry", device_id(m.as_bytes())), m));
        }
    }
    sizes.sort();
    let mut want = vec![50; 20];
    want.insert(0, 30);
    assert_eq!(sizes, want);
    got.sort();
    assert_same(&got, &expected_messages(103));
}

#[test]
fn responses_503_are_retried_with_backoff_until_they_succeed() {
    let server = Server::start(Mode::FailFirst);
    let dir = tempfile::tempdir().unwrap();
    let http = format!(
        "endpoint = \"http://127.0.0.1:{}/in\"\nmax_retries = 3\nbackoff_initial = \"5ms\"\nbackoff_max = \"20ms\"",
        server.port
    );
    let r = run(dir.path(), &fleet(dir.path(), "http", 20, &http), "2");
    let row = http_row(&r);
    assert_eq!(count(&row, "messages"), 200, "{row}");
    assert_eq!(count(&row, "errors"), 0, "{row}");
    assert_eq!(r["sink_events"]["http.retry"], 200, "{r}");

    let seen = server.seen();
    let by_status = seen.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.status).or_insert(0) += 1;
        m
    });
    assert_eq!(by_status, BTreeMap::from([(200, 200), (503, 200)]));
    let accepted: HashSet<&[u8]> =
        seen.iter().filter(|s| s.status == 200).map(|s| &s.body[..]).collect();
    assert_eq!(accepted.len(), 200, "each message was accepted exactly once");
}

#[test]
fn a_server_that_always_fails_gives_errors_counted_after_the_retry_limit() {
    let server = Server::start(Mode::AlwaysFail);
    let dir = tempfile::tempdir().unwrap();
    let http = format!(
        "endpoint = \"http://127.0.0.1:{}/in\"\nmax_retries = 2\nbackoff_initial = \"2ms\"\nbackoff_max = \"10ms\"",
        server.port
    );
    let r = run(dir.path(), &fleet(dir.path(), "http", 10, &http), "1");
    let row = http_row(&r);
    assert_eq!(count(&row, "messages"), 0, "{row}");
    assert_eq!(count(&row, "errors"), 100, "{row}");
    assert_eq!(row["error_kinds"], serde_json::json!({ "http_503": 100 }), "{row}");
    assert_eq!(r["sink_events"]["http.retry"], 200, "two retries per message: {r}");
    assert_eq!(server.seen().len(), 300, "one try and two retries per message");
}
