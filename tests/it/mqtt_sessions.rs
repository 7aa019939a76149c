//! Per-device MQTT sessions (`connection = "per_device"`) against private Mosquitto instances
//! (each on a free port with its own config, password file and ACL; the shared broker on 1883
//! is never touched): each device its own client, credentials, will, downlink, restarts.

use crate::common;
use crate::common::fleet::Fleet;

use common::mqtt::{Broker, DropAfterConnack, Subscriber, check_too_large, two_sizes_fleet};
use common::*;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// A fleet of `devices` per-device sessions publishing every `interval` for `duration`.
fn fleet(
    port: u16,
    root: &str,
    per_device: &str,
    devices: u32,
    interval: &str,
    duration: &str,
) -> String {
    Fleet::new()
        .run(5, "realtime", "2026-03-14T00:00:00Z", duration)
        .sink("mqtt")
        .set("url", format!("mqtt://127.0.0.1:{port}"))
        .set("qos", 1)
        .set("backoff_initial", "50ms")
        .set("backoff_max", "400ms")
        .table("sink.mqtt.per_device")
        .raw(per_device)
        .devices("probe", devices)
        .profile("probe", "mqtt", interval)
        .set("connection", "per_device")
        .set("topic", format!("{root}/{{device_id}}/telemetry"))
        .set("seq", true)
        .gaussian("probe", "t", 20, 1)
        .toml()
}

/// A temporary folder the broker (which drops root to its own user) can read.
fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The client ids the broker logged as connected ("New client connected from A as ID").
fn connected_clients(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("New client connected from ").nth(1)?;
            let (from, rest) = rest.split_once(" as ")?;
            let id = rest.split_whitespace().next()?;
            Some((from.to_string(), id.to_string()))
        })
        .collect()
}

/// Waits (up to 20 s) until the broker logged the end of client `id`'s connection, graceful
/// ("Client ID disconnected.") or not ("Client ID closed its connection.", "Socket error on
/// client ID, ..."); true if it did.
fn session_ended(broker: &Broker, id: &str) -> bool {
    let (graceful, other) = (format!("Client {id} "), format!("client {id},"));
    for _ in 0..400 {
        if broker.log().lines().any(|l| l.contains(&graceful) || l.contains(&other)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn each_device_connects_as_its_own_client_and_every_qos1_message_arrives() {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("sessions");
    let toml = fleet(port, &root, "client_id = \"sim-{device_id}\"", 8, "100ms", "3s");
    let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
    let row = &r["runs"][0];
    // 8 devices every 100 ms for 3 s, each over its own connection, all acknowledged.
    assert_eq!(row["messages"], 240, "{r}");
    assert_eq!(row["errors"], 0, "{row}");
    let ids: BTreeSet<String> =
        connected_clients(&broker.log()).into_iter().map(|(_, id)| id).collect();
    let want: BTreeSet<String> = (0..8).map(|i| format!("sim-probe-{i:04}")).collect();
    assert_eq!(ids, want, "client ids the broker saw");
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_connected"], 8, "{ev}");
    assert_eq!(ev["mqtt.session_connect_attempt"], 8, "{ev}");
    // The pool was not used for this profile.
    assert!(ev.get("mqtt.reconnect").is_none(), "{ev}");
}

#[test]
fn sessions_connect_and_keep_alive_at_start_before_their_devices_publish() {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("early");
    // Devices that publish once an hour, in a 3.5 s run, with a 1 s keep-alive and a will.
    let per_device = format!(
        "keep_alive = \"1s\"\nwill_topic = \"{root}/{{device_id}}/status\"\nwill_payload = \"gone\""
    );
    let toml = fleet(port, &root, &per_device, 4, "1h", "3500ms");
    let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
    let row = &r["runs"][0];
    assert_eq!(row["published"], 0, "no device had anything to send yet: {row}");
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_connected"], 4, "{ev}");
    let log = broker.log();
    let ids: BTreeSet<String> = connected_clients(&log).into_iter().map(|(_, id)| id).collect();
    let want: BTreeSet<String> = (0..4).map(|i| format!("probe-{i:04}")).collect();
    assert_eq!(ids, want, "client ids the broker saw");
    // Each kept its session alive with PINGREQs while it had nothing to publish.
    for id in &want {
        assert!(log.contains(&format!("Received PINGREQ from {id}")), "{id}:\n{log}");
    }
}

#[test]
fn availability_outages_drop_the_session_abruptly_and_the_device_reconnects_when_back() {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("avail");
    let per_device = format!(
        "will_topic = \"{root}/{{device_id}}/status\"\nwill_payload = \"{{device_id}} lost\"\nwill_qos = 1"
    );
    let wills = Subscriber::start(port, &format!("{root}/+/status"));
    // Outages of about 1 s every 2 s of uptime, in a 6 s run.
    let toml = fleet(port, &root, &per_device, 4, "100ms", "6s")
        + "[profiles.probe.availability]\nmtbf = \"2s\"\nmttr = \"1s\"\n";
    let r = run_ok(dir.path(), &toml, &["--cores", "1"]);
    let row = &r["runs"][0];
    assert!(row["offline_s"].as_f64().unwrap() > 0.0, "{row}");
    let ev = &r["sink_events"];
    let drops = ev["mqtt.session_dropped_abrupt"].as_u64().unwrap_or(0);
    assert!(drops >= 1, "an outage drops the session: {ev}");
    // Back up, the device connects again (at least once more than it started).
    let reconnected = ev["mqtt.session_reconnected"].as_u64().unwrap_or(0);
    assert!(reconnected >= 1, "{ev}");
    assert!(connected_clients(&broker.log()).len() as u64 >= 4 + reconnected, "{ev}");
    // Abrupt: the broker published the device's will.
    let got = wills.wait_for(1);
    assert!(String::from_utf8_lossy(&got[0].1).ends_with(" lost"), "{got:?}");
    // Nothing sent while up was lost on the way.
    assert_eq!(row["errors"], 0, "{row}");
}

#[test]
fn slow_down_doubles_a_backed_up_devices_interval_until_its_queue_drains() {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("slow");
    let toml = fleet(port, &root, "inflight = 2\nqueue_size = 5", 2, "100ms", "4s").replace(
        "connection = \"per_device\"",
        "connection = \"per_device\"\nbackpressure = \"slow_down\"",
    );
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let child = spawn_run(dir.path(), &cfg, &["--cores", "1"]);
    assert!(broker.wait_log("New client connected from", 2), "{}", broker.log());
    // Both sessions are up (CONNACK taken) and publishing.
    for id in ["probe-0000", "probe-0001"] {
        assert!(broker.wait_log(&format!("Received PUBLISH from {id} "), 1), "{}", broker.log());
    }
    // The broker stops answering for 2.5 s: each device's window (2) and then its queue fill.
    // The length of the hang is the point (the queues fill and the devices slow down).
    broker.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2500));
    broker.signal(libc::SIGCONT);
    let out = output_within(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let row = &report(dir.path())["runs"][0];
    // Each device entered slow-down once (above 80% of 5), and left it when its queue drained.
    assert_eq!(row["slowdowns"], 2, "{row}");
    // At 100 ms for 4 s each device would take 40 samples: slowed, it took fewer.
    let published = row["published"].as_u64().unwrap();
    assert!(published <= 2 * 40 - 6, "{row}");
    // What was queued went out once the broker answered; only the newest found a full queue.
    assert_eq!(row["errors"], 0, "{row}");
    assert_eq!(row["messages"].as_u64().unwrap() + row["dropped"].as_u64().unwrap(), published);
}

#[test]
fn hmac_credentials_and_an_acl_admit_provisioned_devices_and_refusals_are_counted() {
    let dir = readable_dir();
    let d = dir.path();
    let secret = "fleet-secret";
    // Provision devices 0..3 with hex(HMAC-SHA256(secret, client id)); device 3 is missing.
    let pw = d.join("passwd");
    for i in 0..3 {
        let id = format!("probe-{i:04}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, id.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd.arg("-b").arg(&pw).arg(&id).arg(&hex).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The ACL lets probe-0000 write its own telemetry topic; probe-0001 may only write
    // probe-0000's; probe-0002 nothing. MQTT 5 makes the broker say so (PUBACK 0x87).
    let root = unique("acl");
    let acl = format!(
        "user probe-0000\ntopic write {root}/probe-0000/telemetry\nuser probe-0001\ntopic write {root}/probe-0000/telemetry\n"
    );
    std::fs::write(d.join("acl"), acl).unwrap();
    for f in ["passwd", "acl"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let port = free_port();
    let conf = format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}",
        pw.display(),
        d.join("acl").display()
    );
    let broker = Broker::with_conf(port, d, &conf);
    let per_device =
        "username = \"{device_id}\"\npassword_hmac_secret_env = \"FLEET_DEVICE_SECRET\"";
    let toml = fleet(port, &root, per_device, 4, "200ms", "3s")
        .replace("qos = 1\n", "qos = 1\nversion = 5\n");
    let out = run_env(d, &toml, &["--cores", "1"], &[("FLEET_DEVICE_SECRET", secret)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(d);
    let ev = &r["sink_events"];
    // Three provisioned devices connected; the fourth is refused, counted by reason, retried.
    assert_eq!(ev["mqtt.session_connected"], 3, "{ev}");
    let refused = ev["mqtt.session_refused_not_authorized"].as_u64().unwrap_or(0)
        + ev["mqtt.session_refused_bad_credentials"].as_u64().unwrap_or(0);
    assert!(refused >= 1, "{ev}");
    let ids: BTreeSet<String> =
        connected_clients(&broker.log()).into_iter().map(|(_, id)| id).collect();
    assert!(!ids.contains("probe-0003"), "{ids:?}");
    // Only probe-0000 may write its topic: its 15 messages are delivered; the broker refuses
    // the others' publishes (counted as errors), and the refused device delivers nothing.
    let row = &r["runs"][0];
    assert_eq!(row["messages"], 15, "{row}");
    assert!(row["errors"].as_u64().unwrap() >= 30, "{row}");
}

#[test]
fn commands_reach_their_device_and_are_answered_with_their_id() {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("cmd");
    let per_device = format!(
        "subscribe = \"{root}/{{device_id}}/cmd\"\nsubscribe_qos = 1\nrespond = \"{root}/{{device_id}}/cmd/ack\""
    );
    let toml = fleet(port, &root, &per_device, 3, "500ms", "6s");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let acks = Subscriber::start(port, &format!("{root}/+/cmd/ack"));
    // As `spawn_run`, with stdout kept: the terminal summary is checked too.
    let rd = dir.path().join("report");
    let child = bin()
        .args(["--config", cfg.to_str().unwrap(), "--quiet", "--cores", "1", "--report-dir"])
        .arg(&rd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the three command subscriptions.
    assert!(broker.wait_log(&format!("{root}/probe-"), 3), "{}", broker.log());
    assert!(broker.wait_log("Sending SUBACK to probe-", 3), "{}", broker.log());
    // Two commands carry their send time, 300 ms in the past (so the round trip the sink
    // measures is at least that): as epoch milliseconds and as RFC 3339; the third has none.
    let sent_at = |i: u32| {
        let ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64
                - 300;
        match i {
            0 => format!(",\"sent_at\":{ms}"),
            1 => format!(",\"sent_at\":\"{}\"", iot_sim::sim::time::rfc3339_ms(ms)),
            _ => String::new(),
        }
    };
    for i in 0..3 {
        let out = std::process::Command::new("mosquitto_pub")
            .args(["-p", &port.to_string(), "-q", "1", "-t"])
            .arg(format!("{root}/probe-{i:04}/cmd"))
            .arg("-m")
            .arg(format!("{{\"id\":\"c-{i}\",\"op\":\"reboot\"{}}}", sent_at(i)))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let got = acks.wait_for(3);
    let out = output_within(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut answered: Vec<(String, String)> = got
        .iter()
        .map(|(topic, payload)| {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(v["status"], "ok");
            (
                topic.clone(),
                format!("{}/{}", v["device_id"].as_str().unwrap(), v["id"].as_str().unwrap()),
            )
        })
        .collect();
    answered.sort();
    let want: Vec<(String, String)> = (0..3)
        .map(|i| (format!("{root}/probe-{i:04}/cmd/ack"), format!("probe-{i:04}/c-{i}")))
        .collect();
    assert_eq!(answered, want);
    let ev = &report(dir.path())["sink_events"];
    assert_eq!(ev["mqtt.command_received"], 3, "{ev}");
    assert_eq!(ev["mqtt.command_responded"], 3, "{ev}");
    // The report row counts them and gives the round trip of the two that carried sent_at.
    let c = &report(dir.path())["runs"][0]["commands"];
    assert_eq!(c["received"], 3, "{c}");
    assert_eq!(c["answered"], 3, "{c}");
    let rtt = &c["round_trip_us"];
    assert_eq!(rtt["count"], 2, "{c}");
    let (p50, max) = (rtt["p50"].as_u64().unwrap(), rtt["max"].as_u64().unwrap());
    assert!((300_000..30_000_000).contains(&p50) && max >= p50, "{c}");
    // So does the terminal summary.
    let table = String::from_utf8_lossy(&out.stdout);
    let line =
        format!("commands received 3, answered 3; round trip p50 {:.1} ms", p50 as f64 / 1e3);
    assert!(table.contains(&line), "{line:?} not in\n{table}");
}

#[test]
fn sessions_come_back_after_a_broker_restart_and_nothing_is_lost_at_qos1() {
    let dir = readable_dir();
    let port = free_port();
    let mut broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("restart");
    let toml = fleet(port, &root, "queue_size = 1000\nkeep_alive = \"5s\"", 10, "100ms", "6s");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let child = spawn_run(dir.path(), &cfg, &["--cores", "2"]);
    // Every session is up (CONNACK taken) and publishing.
    for i in 0..10 {
        let marker = format!("Received PUBLISH from probe-{i:04} ");
        assert!(broker.wait_log(&marker, 1), "{}", broker.log());
    }
    broker.kill();
    // The outage itself: a broker that stays away a while (its length is the scenario; what
    // the devices produce meanwhile queues).
    std::thread::sleep(Duration::from_millis(1500));
    broker.up();
    let out = output_within(child, 120);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(dir.path());
    let row = &r["runs"][0];
    // 10 devices every 100 ms for 6 s: everything queued during the outage was sent after.
    assert_eq!(row["messages"], 600, "{r}");
    assert_eq!(row["errors"], 0, "{row}");
    assert_eq!(row["dropped"], 0, "{row}");
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_reconnected"], 10, "{ev}");
    assert_eq!(ev["mqtt.session_lost"], 10, "{ev}");
}

/// Distinct client ids the broker logged as connected in `log`.
fn distinct_connected(log: &str) -> BTreeSet<String> {
    connected_clients(log).into_iter().map(|(_, id)| id).collect()
}

#[test]
fn a_reconnect_storm_brings_every_session_back_and_counts_each() {
    // The storm tail (issue 25): after a broker restart every session must come back, not
    // most of them and the rest at the pace of a few connects stuck in SYN retransmits. Many
    // sessions, few `max_connecting` slots, both source addresses (a reconnect may meet a
    // 4-tuple the killed broker left in TIME_WAIT), a restart while they reconnect. The wait
    // is bounded (120 s) only so that a failure ends; nothing here is timed.
    const N: usize = 400;
    let dir = readable_dir();
    let port = free_port();
    let mut broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("storm");
    let per_device = "connect_rate = 2000\nmax_connecting = 8\nkeep_alive = \"60s\"\n\
        source_addresses = [\"127.0.0.2\", \"127.0.0.3\"]";
    let toml = fleet(port, &root, per_device, N as u32, "1s", "10m");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let child = spawn_run(dir.path(), &cfg, &["--cores", "2", "--admin", "127.0.0.1:0"]);
    let all_in = |from: usize, broker: &Broker| {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let n = distinct_connected(&broker.log()[from..]).len();
            if n >= N || Instant::now() > end {
                return n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(all_in(0, &broker), N, "not every session connected at first");
    broker.kill();
    // Down while every session tries again (refused, or a SYN met by a TIME_WAIT socket).
    std::thread::sleep(Duration::from_millis(1500));
    let from = broker.log().len();
    broker.up();
    assert_eq!(all_in(from, &broker), N, "not every session came back after the restart");
    sigterm(&child);
    let out = output_within(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(dir.path());
    let ev = &r["sink_events"];
    // Each session lost its connection once and was counted back once.
    assert_eq!(ev["mqtt.session_lost"], N, "{ev}");
    assert_eq!(ev["mqtt.session_reconnected"], N, "{ev}");
    assert_eq!(ev["mqtt.session_connected"], 2 * N, "{ev}");
    // Every message is accounted for: delivered, or counted as an error or drop.
    let row = &r["runs"][0];
    let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k} in {row}"));
    assert!(n("published") > 0, "{row}");
    assert_eq!(n("published"), n("messages") + n("errors") + n("dropped"), "{row}");
}

#[test]
fn sockets_bind_round_robin_to_the_source_addresses() {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("src");
    let toml =
        fleet(port, &root, "source_addresses = [\"127.0.0.2\", \"127.0.0.3\"]", 6, "200ms", "2s");
    let r = run_ok(dir.path(), &toml, &["--cores", "1"]);
    assert_eq!(r["runs"][0]["messages"], 60, "{r}");
    let from: Vec<String> = connected_clients(&broker.log())
        .into_iter()
        .map(|(addr, _)| addr.rsplit_once(':').unwrap().0.to_string())
        .collect();
    let n = |ip: &str| from.iter().filter(|a| *a == ip).count();
    assert_eq!((n("127.0.0.2"), n("127.0.0.3")), (3, 3), "{from:?}");
}

#[test]
fn max_connecting_bounds_the_sessions_waiting_for_their_connack() {
    // A listener that takes every connection and never answers CONNECT: each attempt waits its
    // connect timeout (500 ms), closes and retries. It notes when each connection came and went.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans =
        std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, Option<Instant>)>::new()));
    let seen = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let i = {
                let mut s = seen.lock().unwrap();
                s.push((Instant::now(), None));
                s.len() - 1
            };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while matches!(std::io::Read::read(&mut conn, &mut buf), Ok(n) if n > 0) {}
                seen.lock().unwrap()[i].1 = Some(Instant::now());
            });
        }
    });
    let dir = readable_dir();
    let per_device = "max_connecting = 2\nconnect_rate = 1000\nconnect_timeout = \"500ms\"";
    let toml = fleet(port, "unused", per_device, 6, "1h", "2s");
    let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
    let spans = spans.lock().unwrap().clone();
    // Every device got its turn, two at a time (one per shard).
    assert!(spans.len() >= 6, "{} connections", spans.len());
    // Open at a connection's arrival + 100 ms (past the few ms the listener takes to notice a
    // close): never more than max_connecting.
    let end = Instant::now();
    for (at, _) in &spans {
        let t = *at + Duration::from_millis(100);
        let open = spans.iter().filter(|(a, e)| *a <= t && e.unwrap_or(end) > t).count();
        assert!(open <= 2, "{open} connections waiting for CONNACK at once: {spans:?}");
    }
    let ev = &r["sink_events"];
    assert!(ev["mqtt.session_connect_error"].as_u64().unwrap_or(0) >= 6, "{ev}");
}

#[test]
fn bad_per_device_settings_are_config_errors_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet(
        1,
        "x",
        "client_id = \"all-the-same\"\nconnect_rate = 0\nmax_connecting = -1\nwill_payload = \"bye\"\nsubscribe = \"a/#/b\"\nsource_addresses = [\"192.0.2.1\"]\nanswer_qos = 5",
        1,
        "1s",
        "1s",
    )
    .replace("connection = \"per_device\"", "connection = \"per_device\"\nqos = 1");
    let out = run(dir.path(), &toml, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    for want in [
        "sink.mqtt.per_device.client_id: must contain {device_id}",
        "sink.mqtt.per_device.connect_rate: must be between 1 and 1000000, got 0",
        "sink.mqtt.per_device.max_connecting: must be between 1 and 1000000, got -1",
        "sink.mqtt.per_device.will_payload: a will needs will_topic",
        "sink.mqtt.per_device.subscribe: not a valid MQTT topic filter",
        "sink.mqtt.per_device.source_addresses[0]: cannot bind \"192.0.2.1\"",
        "sink.mqtt.per_device.answer_qos: must be between 0 and 2, got 5",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let bad = fleet(1, "x", "", 1, "1s", "1s").replace("\"per_device\"", "\"per_devise\"");
    let e = stderr(&run(dir.path(), &bad, &[]));
    assert!(
        e.contains(
            "profiles.probe.connection: expected \"pooled\" or \"per_device\", got \"per_devise\""
        ),
        "{e}"
    );
}

#[test]
fn each_device_opens_its_own_tls_session_with_a_client_certificate() {
    let dir = readable_dir();
    let d = dir.path();
    common::tls::make_certs(d);
    let port = free_port();
    let conf = format!(
        "allow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true",
        d.display()
    );
    let broker = Broker::with_conf(port, d, &conf);
    let root = unique("tls");
    let tls = format!(
        "ca_file = \"{0}/ca.pem\"\nclient_cert = \"{0}/client.pem\"\nclient_key = \"{0}/client.key\"",
        d.display()
    );
    let toml = fleet(port, &root, "", 4, "200ms", "2s")
        .replace("mqtt://127.0.0.1", "mqtts://127.0.0.1")
        .replace("qos = 1\n", &format!("qos = 1\n{tls}\n"));
    let r = run_ok(d, &toml, &["--cores", "1"]);
    assert_eq!(r["runs"][0]["messages"], 40, "{r}");
    let ids: BTreeSet<String> =
        connected_clients(&broker.log()).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 4, "one TLS connection per device: {ids:?}");
    assert_eq!(r["sink_events"]["mqtt.session_connected"], 4, "{r}");
}

#[test]
fn a_message_over_the_brokers_maximum_packet_size_is_counted_too_large_and_the_session_stays() {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true\nmax_packet_size 300");
    let root = unique("toolarge-pd");
    let wills = Subscriber::start(port, &format!("{root}/+/status"));
    let per_device =
        format!("will_topic = \"{root}/{{device_id}}/status\"\nwill_payload = \"lost\"");
    let r = run_ok(
        dir.path(),
        &two_sizes_fleet(port, &root, "per_device", &per_device),
        &["--cores", "1"],
    );
    check_too_large(&r);
    // No session was dropped for it, so no will fired and none reconnected.
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_connected"], 4, "{ev}");
    for e in ["mqtt.session_lost", "mqtt.session_reconnected", "mqtt.session_connect_error"] {
        assert!(ev.get(e).is_none(), "{e}: {ev}");
    }
    // Every device's session ended at the broker (a will is published as it ends), so
    // `wait_for`'s flush comes after any will there was.
    for i in 0..2 {
        for kind in ["small", "big"] {
            let id = format!("{kind}-{i:04}");
            assert!(session_ended(&broker, &id), "{id}: {}", broker.log());
        }
    }
    assert!(wills.wait_for(0).is_empty());
    // Each device connected once (the other client is the will subscriber).
    let log = broker.log();
    let devices = connected_clients(&log).into_iter().filter(|(_, id)| !id.starts_with("sub-"));
    assert_eq!(devices.count(), 4, "{log}");
}

#[test]
fn a_session_the_broker_drops_right_after_connack_is_retried_with_a_growing_backoff() {
    let fake = DropAfterConnack::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    // Backoff 50 ms doubling up to 400 ms (see `fleet`).
    std::fs::write(&cfg, fleet(fake.port, "flap", "", 1, "20ms", "1h")).unwrap();
    let child = spawn_run(dir.path(), &cfg, &["--cores", "1"]);
    let at = fake.wait_connects(9, 60);
    sigterm(&child);
    let out = output_within(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(at.len() >= 9, "only {} connects: {}", at.len(), stderr(&out));
    // With jitter down to half the step, the 4th retry on waits at least 200 ms.
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate().skip(4).take(4) {
        assert!(*g >= Duration::from_millis(200), "retry {i} after {g:?}: {gaps:?}");
    }
}

#[test]
fn pooled_and_per_device_connections_use_the_server_keep_alive_of_an_mqtt5_broker() {
    // Mosquitto's `max_keepalive` (10 s at least) is sent as Server Keep Alive in CONNACK to an
    // MQTT 5 client asking for more; a client keeping its own 120 s would be timed out at 15 s.
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true\nmax_keepalive 10");
    let root = unique("ka");
    let toml = format!(
        r#"
[run]
seed = 5
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
version = 5
pool_size = 1
keep_alive = "120s"

[sink.mqtt.per_device]
keep_alive = "120s"

[[fleet]]
profile = "probe"
count = 1

[[fleet]]
profile = "pooled"
count = 1

[profiles.probe]
protocol = "mqtt"
connection = "per_device"
topic = "{root}/{{device_id}}/telemetry"
interval = "24h"
[profiles.probe.fields.t]
type = "static"
value = 1

[profiles.pooled]
protocol = "mqtt"
topic = "{root}/{{device_id}}/telemetry"
interval = "24h"
[profiles.pooled.fields.t]
type = "static"
value = 1
"#
    );
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let child = spawn_run(dir.path(), &cfg, &["--cores", "1"]);
    // Both ping within the broker's 10 s (their devices publish nothing meanwhile).
    let per_device = broker.wait_log("Received PINGREQ from probe-0000", 1);
    let pooled = broker.wait_log("Received PINGREQ from iot-sim-", 1);
    sigterm(&child);
    let out = output_within(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = broker.log();
    assert!(per_device && pooled, "per-device {per_device}, pooled {pooled}:\n{log}");
    assert!(!log.contains("exceeded timeout"), "{log}");
    assert_eq!(connected_clients(&log).len(), 2, "{log}");
}

/// Runs 2 per-device sessions with commands at `subscribe_qos = 2` (and `extra` settings),
/// sends each device a command at the QoS given, and returns the QoS of each answer, as the
/// broker logged receiving it.
fn answer_qos(extra: &str, command_qos: [u8; 2]) -> Vec<String> {
    let dir = readable_dir();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), "allow_anonymous true");
    let root = unique("aq");
    let per_device = format!(
        "subscribe = \"{root}/{{device_id}}/cmd\"\nsubscribe_qos = 2\nrespond = \"{root}/{{device_id}}/cmd/ack\"\n{extra}"
    );
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, fleet(port, &root, &per_device, 2, "1h", "1h")).unwrap();
    let child = spawn_run(dir.path(), &cfg, &["--cores", "1"]);
    assert!(broker.wait_log("Sending SUBACK to probe-", 2), "{}", broker.log());
    for (i, q) in command_qos.iter().enumerate() {
        let out = std::process::Command::new("mosquitto_pub")
            .args(["-p", &port.to_string(), "-q", &q.to_string(), "-t"])
            .arg(format!("{root}/probe-{i:04}/cmd"))
            .args(["-m", &format!("{{\"id\":\"c-{i}\"}}")])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // "Received PUBLISH from probe-0000 (d0, q2, r0, m1, '<root>/probe-0000/cmd/ack', ...".
    let ack = |i: usize| format!("'{root}/probe-{i:04}/cmd/ack'");
    let ok = broker.wait_log(&ack(0), 1) && broker.wait_log(&ack(1), 1);
    sigterm(&child);
    let out = output_within(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = broker.log();
    assert!(ok, "answers missing:\n{log}");
    (0..2)
        .map(|i| {
            let line = log
                .lines()
                .find(|l| {
                    l.contains(&format!("Received PUBLISH from probe-{i:04} ("))
                        && l.contains(&ack(i))
                })
                .unwrap_or_else(|| panic!("no answer of probe-{i:04}:\n{log}"));
            line.split(", ").nth(1).unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn commands_are_answered_at_their_own_qos_unless_answer_qos_says_otherwise() {
    // By default an answer goes out at the QoS its command arrived at, 2 included.
    assert_eq!(answer_qos("", [2, 0]), vec!["q2", "q0"]);
    // `answer_qos` sets it for every answer.
    assert_eq!(answer_qos("answer_qos = 2", [1, 0]), vec!["q2", "q2"]);
}
