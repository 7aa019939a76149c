//! Real MQTT peers for tests: a subscriber that collects what the broker delivers, and a
//! mosquitto of a test's own on a port of its own (for outages and restarts).

use super::unique;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (topic, payload) pairs a subscriber received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Payloads that start with this are [`Subscriber`]'s own flush markers, never collected.
const FLUSH_MARK: &[u8] = b"iot-sim-test-flush:";

/// Subscribes to `filter` and collects (topic, payload) until dropped.
pub struct Subscriber {
    got: Received,
    /// The flush markers that came back (see [`Subscriber::wait_for`]).
    flushed: Arc<Mutex<Vec<Vec<u8>>>>,
    /// False once the connection to the broker ended (nothing more can arrive).
    alive: Arc<std::sync::atomic::AtomicBool>,
    filter: String,
    client: Client,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str) -> Subscriber {
        Subscriber::start_login(port, filter, None)
    }

    /// [`Subscriber::start`] with a username and password (a broker without anonymous access).
    pub fn start_as(port: u16, filter: &str, user: &str, password: &str) -> Subscriber {
        Subscriber::start_login(port, filter, Some((user, password)))
    }

    /// [`Subscriber::start`] with a user name and password.
    pub fn start_login(port: u16, filter: &str, login: Option<(&str, &str)>) -> Subscriber {
        let mut opts = MqttOptions::new(unique("sub"), "127.0.0.1", port);
        if let Some((user, pass)) = login {
            opts.set_credentials(user, pass);
        }
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 1000);
        client.subscribe(filter, QoS::ExactlyOnce).unwrap();
        let got = Arc::new(Mutex::new(vec![]));
        let flushed = Arc::new(Mutex::new(vec![]));
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::channel();
        let (sink, marks, up) = (got.clone(), flushed.clone(), alive.clone());
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if p.payload.starts_with(FLUSH_MARK) =>
                    {
                        marks.lock().unwrap().push(p.payload.to_vec());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            up.store(false, std::sync::atomic::Ordering::SeqCst);
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("no SUBACK from the broker");
        Subscriber { got, flushed, alive, filter: filter.to_string(), client }
    }

    /// The topics of the messages that arrived so far, in order.
    pub fn topics(&self) -> Vec<String> {
        self.got.lock().unwrap().iter().map(|(t, _)| t.clone()).collect()
    }

    /// Waits (up to `secs`) until a message arrived on `topic`; the topics so far if not.
    pub fn wait_topic(&self, topic: &str, secs: u64) -> Result<(), Vec<String>> {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let topics = self.topics();
            if topics.iter().any(|t| t == topic) {
                return Ok(());
            }
            if std::time::Instant::now() > end {
                return Err(topics);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many messages arrived so far.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits (up to `timeout`) until at least `n` messages arrived; true if they did.
    pub fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while self.count() < n {
            if std::time::Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Waits until `n` messages arrived (or a generous while passed), then until everything
    /// the broker routed to this subscriber so far has arrived too (duplicates or extras
    /// included), and returns them.
    ///
    /// That second wait is a flush: the subscriber publishes a marker of its own on a topic
    /// its filter matches and waits for it to come back. The broker queues what it routes to
    /// one subscriber in order (the marker at QoS 1 goes behind every QoS 1/2 message routed
    /// before it; QoS 0 is never held back), so once the marker is back nothing routed earlier
    /// is still on its way.
    pub fn wait_for(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        self.wait_count(n, Duration::from_secs(10));
        self.flush();
        let _ = self.client.disconnect();
        self.got.lock().unwrap().clone()
    }

    /// Publishes a flush marker on a topic the filter matches and waits (up to 10 s) until it
    /// came back; panics if it did not. Nothing to wait for once the connection ended.
    fn flush(&self) {
        let alive = || self.alive.load(std::sync::atomic::Ordering::SeqCst);
        if !alive() {
            return;
        }
        // Each wildcard level becomes a concrete one ("root/+/status" -> "root/flush/status").
        let topic: Vec<&str> = self
            .filter
            .split('/')
            .map(|level| if level == "+" || level == "#" { "flush" } else { level })
            .collect();
        let mut mark = FLUSH_MARK.to_vec();
        mark.extend_from_slice(unique("flush").as_bytes());
        self.client.publish(topic.join("/"), QoS::AtLeastOnce, false, mark.clone()).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while alive() && !self.flushed.lock().unwrap().contains(&mark) {
            assert!(
                std::time::Instant::now() < end,
                "the broker did not deliver the subscriber's flush marker within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A broker of our own that the test can kill and restart.
pub struct Broker {
    port: u16,
    child: Option<std::process::Child>,
    /// With [`Broker::with_conf`]: its config file and the log it writes (every connection,
    /// with client id and source address).
    conf: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Broker {
    pub fn start(port: u16) -> Broker {
        let mut b = Broker { port, child: None, conf: None };
        b.up();
        b
    }

    /// A broker with a config file of its own in `dir` (`extra` appended: password file, ACL,
    /// limits), listening on 127.0.0.1:`port` and logging everything to `dir/mosquitto.log`.
    pub fn with_conf(port: u16, dir: &std::path::Path, extra: &str) -> Broker {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let log = dir.join(format!("mosquitto-{port}.log"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nlog_dest stderr\nlog_type all\nconnection_messages true\n{extra}\n"
            ),
        )
        .unwrap();
        let mut b = Broker { port, child: None, conf: Some((conf, log)) };
        b.up();
        b
    }

    /// What the broker logged so far (empty without [`Broker::with_conf`]).
    pub fn log(&self) -> String {
        self.conf.as_ref().and_then(|(_, l)| std::fs::read_to_string(l).ok()).unwrap_or_default()
    }

    /// Waits (up to 20 s) until the log contains `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize) -> bool {
        for _ in 0..400 {
            if self.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn up(&mut self) {
        let mut cmd = std::process::Command::new("mosquitto");
        cmd.stdout(std::process::Stdio::null());
        match &self.conf {
            Some((conf, log)) => {
                let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
                cmd.arg("-c").arg(conf).stderr(f);
            }
            None => {
                cmd.args(["-p", &self.port.to_string()]).stderr(std::process::Stdio::null());
            }
        }
        let child = cmd.spawn().expect("mosquitto must be installed (Debian package mosquitto)");
        self.child = Some(child);
        assert!(super::wait_port(self.port), "mosquitto did not start on port {}", self.port);
    }
    /// Sends a signal (`libc::SIGSTOP`: a hung broker, for instance) to the broker.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fake MQTT 3.1.1 broker that accepts every CONNECT (CONNACK 0) and closes the connection
/// at the client's first packet after it, as a broker does that drops a client for something
/// it sends on connecting. Records when each CONNECT arrived (to see the client's reconnect backoff).
pub struct DropAfterConnack {
    pub port: u16,
    connects: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl DropAfterConnack {
    pub fn start() -> DropAfterConnack {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connects = Arc::new(Mutex::new(vec![]));
        let seen = connects.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                // The first byte of a CONNECT is 0x10 (a reachability probe sends nothing).
                let mut first = [0u8; 1];
                if conn.read_exact(&mut first).is_err() || first[0] != 0x10 {
                    continue;
                }
                // Read the whole CONNECT (closing with unread bytes would send a reset, and
                // the client might lose the CONNACK).
                let (mut len, mut shift) = (0usize, 0);
                let mut b = [0u8; 1];
                while conn.read_exact(&mut b).is_ok() {
                    len |= ((b[0] & 0x7f) as usize) << shift;
                    shift += 7;
                    if b[0] & 0x80 == 0 {
                        break;
                    }
                }
                let mut rest = vec![0u8; len];
                if conn.read_exact(&mut rest).is_err() {
                    continue;
                }
                seen.lock().unwrap().push(std::time::Instant::now());
                let _ = conn.write_all(&[0x20, 0x02, 0x00, 0x00]);
                // Close once the client sent its next packet (a PUBLISH: it took the CONNACK
                // and is connected), so the close is surely after the CONNACK.
                let _ = conn.read(&mut b);
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        DropAfterConnack { port, connects }
    }

    /// Waits (up to `secs`) for `n` CONNECTs; returns when each arrived.
    pub fn wait_connects(&self, n: usize, secs: u64) -> Vec<std::time::Instant> {
        let t0 = std::time::Instant::now();
        while self.connects.lock().unwrap().len() < n && t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.connects.lock().unwrap().clone()
    }
}

/// A fleet of two profiles on one MQTT 5 broker: `small-*` devices whose messages are about
/// 200 bytes, and `big-*` devices whose topic alone is over 300 bytes. `connection` is
/// `"pooled"` or `"per_device"`.
pub fn two_sizes_fleet(port: u16, root: &str, connection: &str, per_device: &str) -> String {
    let pad = "x".repeat(320);
    format!(
        r#"
[run]
seed = 4
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "2s"

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
version = 5
qos = 1
pool_size = 1
backoff_initial = "50ms"
backoff_max = "400ms"

[sink.mqtt.per_device]
{per_device}

[[fleet]]
profile = "small"
count = 2

[[fleet]]
profile = "big"
count = 2

[profiles.small]
protocol = "mqtt"
connection = "{connection}"
topic = "{root}/{{device_id}}/t"
interval = "100ms"
[profiles.small.fields.t]
type = "static"
value = 20

[profiles.big]
protocol = "mqtt"
connection = "{connection}"
topic = "{root}/{{device_id}}/{pad}"
interval = "100ms"
[profiles.big.fields.t]
type = "static"
value = 20
"#
    )
}

/// The report row of a device type.
pub fn type_row<'a>(r: &'a serde_json::Value, device_type: &str) -> &'a serde_json::Value {
    r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["device_type"] == device_type)
        .unwrap_or_else(|| panic!("no row for {device_type}: {r}"))
}

/// Checks a run of [`two_sizes_fleet`] against a broker taking packets of at most 300 bytes:
/// every big message counted as `too_large` and nothing else lost.
pub fn check_too_large(r: &serde_json::Value) {
    let small = type_row(r, "small");
    assert!(small["published"].as_u64().unwrap() > 0, "{small}");
    assert_eq!(small["messages"], small["published"], "{small}");
    assert_eq!(small["errors"], 0, "{small}");
    let big = type_row(r, "big");
    let n = big["published"].as_u64().unwrap();
    assert!(n > 0, "{big}");
    assert_eq!(big["messages"], 0, "{big}");
    assert_eq!(big["errors"], n, "{big}");
    assert_eq!(big["error_kinds"], serde_json::json!({ "too_large": n }), "{big}");
    assert_eq!(big["dropped"], 0, "{big}");
}
