//! The CoAP sink against libcoap's `coap-server` (Debian package `libcoap3-bin`; `.ci/run`
//! installs it), driven through the built binary. A UDP proxy in the test sits between the two:
//! it records every datagram each way (so the test sees what reached the server) and can drop
//! chosen ones, which exercises retransmission.

use crate::common;
use crate::common::fleet::Fleet;
use common::{assert_same, run_env, sink_row};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The libcoap server binary: `coap-server`, or one of the Debian package's variants.
fn coap_server_bin() -> String {
    for name in ["coap-server", "coap-server-notls", "coap-server-openssl", "coap-server-gnutls"] {
        if Command::new(name).arg("-?").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
        {
            return name.to_string();
        }
    }
    panic!("coap-server not found: install libcoap3-bin (apt-get install -y libcoap3-bin)");
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `coap-server` on a free port that accepts POSTs to any path (dynamic resources).
struct CoapServer {
    port: u16,
    child: Child,
}

impl CoapServer {
    fn start() -> CoapServer {
        let port = free_udp_port();
        let child = Command::new(coap_server_bin())
            .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "100000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = CoapServer { port, child };
        server.wait_until_up();
        server
    }

    /// Sends a CON GET until the server answers (it needs a moment to bind).
    fn wait_until_up(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(coap_lite::RequestType::Get);
        p.header.message_id = 1;
        let ping = p.to_bytes().unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..100 {
            sock.send_to(&ping, ("127.0.0.1", self.port)).unwrap();
            if sock.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("coap-server did not answer on port {}", self.port);
    }
}

impl Drop for CoapServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One datagram the proxy saw.
#[derive(Clone, Debug)]
struct Datagram {
    client: SocketAddr,
    mid: u16,
    kind: MessageType,
    code: u8,
    path: String,
    payload: Vec<u8>,
    dropped: bool,
}

/// Decides whether to drop a datagram: (message id, how many times this (client, id) was seen
/// before in this direction, true for client -> server).
type Policy = fn(u16, usize, bool) -> bool;

#[derive(Default)]
struct Log {
    requests: Vec<Datagram>,
    responses: Vec<Datagram>,
}

/// A UDP proxy: one upstream socket per client, so the server sees each client apart.
struct Proxy {
    port: u16,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
}

fn parse(client: SocketAddr, data: &[u8]) -> Datagram {
    let p = Packet::from_bytes(data).expect("the proxy got a malformed CoAP datagram");
    let path: Vec<String> = p
        .get_option(CoapOption::UriPath)
        .map(|l| l.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default();
    Datagram {
        client,
        mid: p.header.message_id,
        kind: p.header.get_type(),
        code: u8::from(p.header.code),
        path: path.join("/"),
        payload: p.payload.clone(),
        dropped: false,
    }
}

/// A receive buffer large enough for a burst of NON datagrams while the proxy thread is not
/// scheduled (the default ~208 KiB holds ~100 small datagrams; a busy machine lost some).
/// SO_RCVBUFFORCE passes `rmem_max` as root; otherwise SO_RCVBUF takes what the kernel allows.
fn big_receive_buffer(s: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a socket we own, with a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

impl Proxy {
    fn start(server_port: u16, policy: Policy) -> Proxy {
        let listener = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        listener.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        big_receive_buffer(&listener);
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, lg, st) = (listener.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut seen: HashMap<(SocketAddr, u16), usize> = HashMap::new();
            let mut buf = vec![0u8; 70_000];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, client)) = l.recv_from(&mut buf) else { continue };
                let mut d = parse(client, &buf[..n]);
                let nth = seen.entry((client, d.mid)).or_insert(0);
                d.dropped = policy(d.mid, *nth, true);
                *nth += 1;
                let dropped = d.dropped;
                lg.lock().unwrap().requests.push(d);
                if dropped {
                    continue;
                }
                let up = upstream.entry(client).or_insert_with(|| {
                    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                    up.connect(("127.0.0.1", server_port)).unwrap();
                    up.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let (up2, l2, lg2, st2) = (up.clone(), l.clone(), lg.clone(), st.clone());
                    std::thread::spawn(move || {
                        let mut seen: HashMap<u16, usize> = HashMap::new();
                        let mut buf = vec![0u8; 70_000];
                        while !st2.load(Ordering::Relaxed) {
                            let Ok(n) = up2.recv(&mut buf) else { continue };
                            let mut d = parse(client, &buf[..n]);
                            let nth = seen.entry(d.mid).or_insert(0);
                            d.dropped = policy(d.mid, *nth, false);
                            *nth += 1;
                            let dropped = d.dropped;
                            lg2.lock().unwrap().responses.push(d);
                            if !dropped {
                                let _ = l2.send_to(&buf[..n], client);
                            }
                        }
                    });
                    up
                });
                let _ = up.send(&buf[..n]);
            }
        });
        Proxy { port, log, stop }
    }

    fn requests(&self) -> Vec<Datagram> {
        self.log.lock().unwrap().requests.clone()
    }

    fn responses(&self) -> Vec<Datagram> {
        self.log.lock().unwrap().responses.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A virtual-clock fleet of `devices` meters sending every second for 10 s (10 messages each).
fn fleet(dir: &Path, protocol: &str, devices: usize, coap: &str, profile_extra: &str) -> String {
    Fleet::new()
        .run(5, "virtual", "2026-03-14T08:00:00Z", "10s")
        .sink("file")
        .set("path", dir.join("out.jsonl"))
        .sink("coap")
        .raw(coap)
        .devices("meter", devices)
        .profile("meter", protocol, "1s")
        .set("topic", "meters/{device_id}/telemetry")
        .raw(profile_extra)
        .gaussian("meter", "power", 100.0, 5.0)
        .toml()
}

fn run(dir: &Path, toml: &str, cores: &str) -> serde_json::Value {
    let out = run_env(dir, toml, &["--cores", cores], &[]);
    assert!(out.status.success(), "iot-sim failed: {}", common::stderr(&out));
    common::report(dir)
}

/// The (topic, payload) pairs the same fleet writes to a file sink, sorted.
fn expected_messages(devices: usize) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &fleet(dir.path(), "file", devices, "", ""), "1");
    common::file_messages(&dir.path().join("out.jsonl"))
}

/// The distinct requests (client, message id) that reached the server, as sorted (topic, payload).
fn delivered(requests: &[Datagram]) -> Vec<(String, String)> {
    let mut by_id: BTreeMap<(SocketAddr, u16), &Datagram> = BTreeMap::new();
    for d in requests.iter().filter(|d| !d.dropped) {
        by_id.entry((d.client, d.mid)).or_insert(d);
    }
    let mut out: Vec<(String, String)> = by_id
        .values()
        .map(|d| (d.path.clone(), String::from_utf8(d.payload.clone()).unwrap()))
        .collect();
    out.sort();
    out
}

fn coap_row(r: &serde_json::Value) -> serde_json::Value {
    sink_row(r, "coap")
}

fn count(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn no_loss(_: u16, _: usize, _: bool) -> bool {
    false
}

#[test]
fn confirmable_posts_are_acknowledged_and_every_message_reaches_the_server_once() {
    let server = CoapServer::start();
    let proxy = Proxy::start(server.port, no_loss);
    let dir = tempfile::tempdir().unwrap();
    let coap = format!("url = \"coap://127.0.0.1:{}\"", proxy.port);
    let r = run(dir.path(), &fleet(dir.path(), "coap", 20, &coap, ""), "2");
    let row = coap_row(&r);
    assert_eq!(count(&row, "messages"), 200, "{row}");
    assert_eq!(count(&row, "errors"), 0, "{row}");
    assert_eq!(count(&row, "dropped"), 0, "{row}");
    assert!(row["latency_us"]["p99"].is_u64());

    let requests = proxy.requests();
    assert!(
        requests.iter().all(|d| d.kind == MessageType::Confirmable && d.code == 0x02),
        "all CON POSTs"
    );
    assert_same(&delivered(&requests), &expected_messages(20));
    let acks: Vec<Datagram> = proxy.responses();
    assert_eq!(acks.len(), requests.len());
    assert!(
        acks.iter().all(|d| d.kind == MessageType::Acknowledgement && d.code >> 5 == 2),
        "piggybacked 2.xx"
    );
    let retransmits = requests.len() - delivered(&requests).len();
    assert_eq!(count(&r["sink_events"], "coap.retransmit"), retransmits as u64, "{r}");
}

#[test]
fn non_confirmable_posts_complete_at_send_and_reach_the_server() {
    let server = CoapServer::start();
    let proxy = Proxy::start(server.port, no_loss);
    let dir = tempfile::tempdir().unwrap();
    // The sink says CON; the profile overrides it.
    let coap = format!("url = \"coap://127.0.0.1:{}\"\nconfirmable = true", proxy.port);
    let r = run(dir.path(), &fleet(dir.path(), "coap", 20, &coap, "confirmable = false"), "2");
    let row = coap_row(&r);
    assert_eq!(count(&row, "messages"), 200, "{row}");
    assert_eq!(count(&row, "errors"), 0, "{row}");
    let requests = proxy.requests();
    assert!(requests.iter().all(|d| d.kind == MessageType::NonConfirmable), "all NON");
    assert_eq!(requests.len(), 200, "NON messages are never retransmitted");
    assert_same(&delivered(&requests), &expected_messages(20));
}

/// Drops every transmission of the requests with id % 17 == 5 (they exhaust their
/// retransmissions), the first transmission of those with id % 3 == 0, and the first ACK of
/// those with id % 3 == 1.
fn lossy(mid: u16, nth: usize, request: bool) -> bool {
    if mid % 17 == 5 {
        return request;
    }
    nth == 0 && if request { mid.is_multiple_of(3) } else { mid % 3 == 1 }
}

#[test]
fn lost_requests_and_acks_are_retransmitted_and_exhausted_ones_are_counted_as_timeouts() {
    let server = CoapServer::start();
    let proxy = Proxy::start(server.port, lossy);
    let dir = tempfile::tempdir().unwrap();
    let coap = format!(
        "url = \"coap://127.0.0.1:{}\"\nack_timeout = \"40ms\"\nmax_retransmit = 3",
        proxy.port
    );
    let r = run(dir.path(), &fleet(dir.path(), "coap", 20, &coap, ""), "2");
    let row = coap_row(&r);
    let requests = proxy.requests();

    // What the proxy let through reached the server; the rest timed out.
    let mut lost: BTreeMap<(SocketAddr, u16), usize> = BTreeMap::new();
    for d in requests.iter().filter(|d| d.mid % 17 == 5) {
        *lost.entry((d.client, d.mid)).or_insert(0) += 1;
    }
    assert!(!lost.is_empty(), "each shard's 100 consecutive ids hold some with id % 17 == 5");
    assert!(lost.values().all(|&n| n == 4), "one try and three retransmissions each: {lost:?}");
    let reached = delivered(&requests);
    assert_eq!(count(&row, "messages"), reached.len() as u64, "{row}");
    assert_eq!(count(&row, "errors"), lost.len() as u64, "{row}");
    assert_eq!(count(&row, "messages") + count(&row, "errors"), 200, "{row}");
    if !lost.is_empty() {
        assert_eq!(row["error_kinds"], serde_json::json!({ "coap_timeout": lost.len() }), "{row}");
    }

    // Every datagram beyond the first of an exchange is a retransmission, and the report
    // counts them all.
    let distinct: std::collections::BTreeSet<(SocketAddr, u16)> =
        requests.iter().map(|d| (d.client, d.mid)).collect();
    assert_eq!(distinct.len(), 200);
    let retransmits = (requests.len() - distinct.len()) as u64;
    assert!(
        retransmits >= 200 / 3,
        "a third of the first tries and ACKs were dropped: {retransmits}"
    );
    assert_eq!(count(&r["sink_events"], "coap.retransmit"), retransmits, "{r}");

    // Each message that was not lost for good arrived, with its payload, and nothing else did.
    let want: Vec<(String, String)> = expected_messages(20);
    assert!(reached.iter().all(|m| want.binary_search(m).is_ok()));
}
