//! The MQTT sink against real brokers: the machine's Mosquitto on 127.0.0.1:1883, and for the
//! restart tests a `mosquitto` of our own on a free port.

use crate::common;
use crate::common::fleet::Fleet;

use common::mqtt::{Broker, DropAfterConnack, Subscriber, check_too_large, two_sizes_fleet};
use common::*;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn fleet(
    port: u16,
    topic_root: &str,
    extra_sink: &str,
    devices: u32,
    interval: &str,
    duration: &str,
) -> String {
    Fleet::new()
        .run(3, "realtime", "2026-03-14T00:00:00Z", duration)
        .sink("mqtt")
        .set("url", format!("mqtt://127.0.0.1:{port}"))
        .set("pool_size", 3)
        .raw(extra_sink)
        .devices("probe", devices)
        .profile("probe", "mqtt", interval)
        .set("topic", format!("{topic_root}/{{device_id}}/telemetry"))
        .set("seq", true)
        .gaussian("probe", "t", 20, 1)
        .set("decimals", 2)
        .toml()
}

/// Checks every received payload and that each device's sequence is complete: 0..per_device.
fn check_delivery(got: &[(String, Vec<u8>)], topic_root: &str, devices: u32, per_device: u64) {
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (topic, payload) in got {
        let v: serde_json::Value = serde_json::from_slice(payload).expect("payload is JSON");
        let id = v["device_id"].as_str().unwrap().to_string();
        assert_eq!(topic, &format!("{topic_root}/{id}/telemetry"));
        assert_eq!(v["device_type"], "probe");
        assert!(v["fields"]["t"].is_f64());
        seqs.entry(id).or_default().push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), devices as usize, "every device published");
    for (id, mut s) in seqs {
        s.sort_unstable();
        let want: Vec<u64> = (0..per_device).collect();
        assert_eq!(s, want, "{id}: messages lost or duplicated");
    }
}

fn qos_run(qos: u8, version: u8) {
    let dir = tempfile::tempdir().unwrap();
    let root = unique(&format!("iotsim-q{qos}-v{version}"));
    // A broker of the test's own, with no limit on what it queues for the subscriber: with
    // Mosquitto's default (1,000 messages per client) a QoS 2 subscriber that falls behind on a
    // busy machine has the rest dropped by the broker, which is not what this test checks.
    let port = free_port();
    let _broker = Broker::with_conf(
        port,
        dir.path(),
        "allow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0",
    );
    let sub = Subscriber::start(port, &format!("{root}/#"));
    // 40 devices every 50 ms for 3 s: exactly 60 messages each (first tick phased inside the
    // first interval, last one before the end).
    let toml = fleet(port, &root, &format!("qos = {qos}\nversion = {version}"), 40, "50ms", "3s");
    let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
    let row = &r["runs"][0];
    assert_eq!(row["sink"], "mqtt");
    assert_eq!(row["messages"], 2400, "report: {row}");
    assert_eq!(row["errors"], 0);
    assert_eq!(row["dropped"], 0);
    assert!(row["latency_us"]["p99"].as_u64().unwrap() > 0);
    let got = sub.wait_for(2400);
    assert_eq!(got.len(), 2400, "the subscriber counts what the report says was sent");
    check_delivery(&got, &root, 40, 60);
}

#[test]
fn qos1_loses_nothing() {
    qos_run(1, 4);
}

#[test]
fn qos2_loses_nothing() {
    qos_run(2, 4);
}

#[test]
fn mqtt5_works() {
    qos_run(1, 5);
}

#[test]
fn qos0_messages_arrive() {
    qos_run(0, 4);
}

/// Runs a 6 s realtime fleet (200 msg/s) against our own broker, killing it once a second of
/// the run's messages went through it and restarting it 1.5 s later. Returns the report.
fn restart_run(extra_sink: &str, extra_profile: &str) -> serde_json::Value {
    let port = free_port();
    let mut broker = Broker::start(port);
    let dir = tempfile::tempdir().unwrap();
    let root = unique("iotsim-restart");
    let toml = fleet(port, &root, extra_sink, 20, "100ms", "6s")
        .replace("seq = true", &format!("seq = true\n{extra_profile}"));
    std::fs::write(dir.path().join("fleet.toml"), &toml).unwrap();
    let cfg = dir.path().join("fleet.toml");
    let sub = Subscriber::start(port, &format!("{root}/#"));
    let child = spawn_run(dir.path(), &cfg, &["--cores", "2"]);
    // The run is publishing through the broker: a second's worth (200) arrived.
    assert!(
        sub.wait_count(200, Duration::from_secs(30)),
        "only {} messages through the broker before the outage",
        sub.count()
    );
    broker.kill();
    // The outage itself: its length is the point (messages wait more than 1 s, and a 1.5 s
    // outage at 200 msg/s overflows the small queues of the drop and slow-down tests).
    std::thread::sleep(Duration::from_millis(1500));
    broker.up();
    let out = output_within(child, 120);
    assert!(out.status.success(), "{}", stderr(&out));
    report(dir.path())
}

#[test]
fn a_broker_restart_is_survived_and_nothing_queued_is_lost() {
    let r = restart_run("qos = 1\nbackoff_initial = \"50ms\"\nbackoff_max = \"400ms\"", "");
    let row = &r["runs"][0];
    // 20 devices every 100 ms for 6 s.
    assert_eq!(row["messages"], 1200, "{r}");
    assert_eq!(row["errors"], 0, "{row}");
    assert_eq!(row["dropped"], 0, "{row}");
    let ev = &r["sink_events"];
    assert!(ev["mqtt.reconnect"].as_u64().unwrap() >= 1, "{ev}");
    assert!(ev["mqtt.connect_error"].as_u64().unwrap() >= 1, "{ev}");
    // Messages held during the outage waited: latency shows it.
    assert!(row["latency_us"]["max"].as_u64().unwrap() > 1_000_000, "{row}");
}

#[test]
fn drop_oldest_counts_what_a_full_queue_evicts_during_an_outage() {
    let r = restart_run(
        "qos = 1\nqueue_size = 10\nbackoff_initial = \"50ms\"\nbackoff_max = \"400ms\"",
        "backpressure = \"drop_oldest\"",
    );
    let row = &r["runs"][0];
    let (m, e, d) = (
        row["messages"].as_u64().unwrap(),
        row["errors"].as_u64().unwrap(),
        row["dropped"].as_u64().unwrap(),
    );
    assert!(d > 0, "a 1.5 s outage at 200 msg/s overflows 3 x 10 slots: {row}");
    assert_eq!(m + e + d, 1200, "every message is accounted for: {row}");
}

#[test]
fn slow_down_stretches_intervals_while_the_queue_is_full() {
    let r = restart_run(
        "qos = 1\nqueue_size = 10\nbackoff_initial = \"50ms\"\nbackoff_max = \"400ms\"",
        "backpressure = \"slow_down\"",
    );
    let row = &r["runs"][0];
    assert!(row["slowdowns"].as_u64().unwrap() >= 1, "{row}");
    let total = row["messages"].as_u64().unwrap()
        + row["dropped"].as_u64().unwrap()
        + row["errors"].as_u64().unwrap();
    assert!(total < 1200, "slowed devices produce fewer messages: {row}");
}

#[test]
fn an_unreachable_broker_is_a_clear_error_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = run(dir.path(), &fleet(port, "x", "", 1, "1s", "2s"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains(&format!("cannot reach the mqtt server at mqtt://127.0.0.1:{port}")), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn bad_urls_and_tls_files_are_config_errors_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet(1883, "x", "", 1, "1s", "2s").replace(
        "url = \"mqtt://127.0.0.1:1883\"",
        "url = \"mqtts://127.0.0.1:8883\"\nca_file = \"/nonexistent/ca.pem\"\nqos = 3",
    );
    let out = run(dir.path(), &toml, &[]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("sink.mqtt.ca_file: /nonexistent/ca.pem is not a readable file"), "{e}");
    assert!(e.contains("sink.mqtt.qos: must be between 0 and 2, got 3"), "{e}");
    let toml = fleet(1883, "x", "", 1, "1s", "2s")
        .replace("mqtt://127.0.0.1:1883", "mqtt://user:secret@127.0.0.1:1883");
    let out = run(dir.path(), &toml, &[]);
    assert!(
        stderr(&out).contains("sink.mqtt.url: must not contain a password"),
        "{}",
        stderr(&out)
    );
    let toml =
        fleet(1883, "x", "", 1, "1s", "2s").replace("mqtt://127.0.0.1:1883", "carrier://pigeon");
    let out = run(dir.path(), &toml, &[]);
    assert!(
        stderr(&out).contains("sink.mqtt.url: scheme \"carrier\" is not supported"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mqtts_with_a_private_ca_and_a_client_certificate_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::tls::make_certs(d);
    let port = free_port();
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
        d.display()
    );
    std::fs::write(d.join("mosquitto.conf"), conf).unwrap();
    let mut child = std::process::Command::new("mosquitto")
        .args(["-c", d.join("mosquitto.conf").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_port(port), "the TLS mosquitto did not start");
    let tls = format!(
        "qos = 1\nca_file = \"{0}/ca.pem\"\nclient_cert = \"{0}/client.pem\"\nclient_key = \"{0}/client.key\"",
        d.display()
    );
    let toml = fleet(port, "tls", &tls, 10, "100ms", "2s")
        .replace("mqtt://127.0.0.1", "mqtts://127.0.0.1");
    let r = run_ok(d, &toml, &["--cores", "1"]);
    let _ = child.kill();
    let _ = child.wait();
    let row = &r["runs"][0];
    assert_eq!(row["messages"], 200, "{r}");
    assert_eq!(row["errors"], 0);
    assert!(r["sink_events"].get("mqtt.connect_error").is_none(), "TLS handshake failed: {r}");
}

#[test]
fn wait_for_sinks_waits_for_a_broker_that_starts_late() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, fleet(port, "late", "qos = 1", 5, "100ms", "1s")).unwrap();
    let rd = dir.path().join("report");
    let mut run =
        Running::start(bin().args(["--config", cfg.to_str().unwrap(), "--quiet"]).args([
            "--report-dir",
            rd.to_str().unwrap(),
            "--wait-for-sinks",
            "30s",
        ]));
    // The run found no broker and is waiting for it.
    run.wait_line("waiting for the server");
    let _broker = Broker::start(port);
    let status = run.wait_exit_within(120);
    assert!(status.success(), "{:?}", run.lines());
    assert_eq!(report(dir.path())["runs"][0]["messages"], 50);
}

#[test]
fn retained_messages_are_kept_by_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("iotsim-retain");
    // One device, 5 messages, per-profile retain overriding the sink's default.
    let toml = fleet(1883, &root, "qos = 1", 1, "100ms", "500ms")
        .replace("seq = true", "seq = true\nretain = true");
    let r = run_ok(dir.path(), &toml, &["--cores", "1"]);
    assert_eq!(r["runs"][0]["messages"], 5);
    // A subscriber that arrives afterwards still gets the last message, flagged as retained.
    let mut opts = MqttOptions::new(unique("late-sub"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut conn) = Client::new(opts, 10);
    client.subscribe(format!("{root}/#"), QoS::AtLeastOnce).unwrap();
    let mut got = None;
    for ev in conn.iter().take(50) {
        if let Ok(Event::Incoming(Packet::Publish(p))) = ev {
            got = Some(p);
            break;
        }
    }
    let p = got.expect("the retained message");
    assert!(p.retain);
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["seq"], 4, "the last message is the retained one");
    // Clear it, as a polite test does.
    client.publish(p.topic.clone(), QoS::AtLeastOnce, true, Vec::<u8>::new()).unwrap();
    for ev in conn.iter().take(10) {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = ev {
            break;
        }
    }
}

#[test]
fn a_virtual_run_waiting_on_a_dead_broker_still_stops_on_sigterm() {
    let port = free_port();
    let mut broker = Broker::start(port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    // Virtual clock, no end: the sink paces the run; then the broker goes away for good.
    let toml = fleet(port, "dead", "qos = 1\nqueue_size = 100", 50, "1s", "1h")
        .replace("clock = \"realtime\"", "clock = \"virtual\"")
        .replace("duration = \"1h\"\n", "");
    std::fs::write(&cfg, toml).unwrap();
    let sub = Subscriber::start(port, "dead/#");
    let rd = dir.path().join("report");
    let mut run = Running::start(bin().args([
        "--config",
        cfg.to_str().unwrap(),
        "--quiet",
        "--report-dir",
        rd.to_str().unwrap(),
    ]));
    // Messages went through the broker (and were acknowledged) before it goes away.
    assert!(
        sub.wait_count(100, Duration::from_secs(30)),
        "only {} messages through the broker: {:?}",
        sub.count(),
        run.lines()
    );
    broker.kill();
    // The sink saw the broker go: the run now waits on it.
    run.wait_line("connection lost; reconnecting with backoff");
    let status = run.terminate();
    assert!(status.success(), "{:?}", run.lines());
    let r = report(dir.path());
    let row = &r["runs"][0];
    assert_eq!(r["interrupted"], true);
    assert!(row["messages"].as_u64().unwrap() > 0, "{row}");
    // What the dead broker never took is counted, not lost from the books.
    assert!(row["errors"].as_u64().unwrap() > 0, "{row}");
}

/// A private Mosquitto with `extra` in its config, in a folder it can read, logging everything.
fn logging_broker(extra: &str) -> (tempfile::TempDir, u16, Broker) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let broker = Broker::with_conf(port, dir.path(), &format!("allow_anonymous true\n{extra}"));
    (dir, port, broker)
}

#[test]
fn a_message_over_the_brokers_maximum_packet_size_is_never_sent_and_counted_too_large() {
    // [MQTT-3.2.2-15]: Mosquitto tells MQTT 5 clients its Maximum Packet Size in CONNACK and
    // drops a client that sends more.
    let (dir, port, broker) = logging_broker("max_packet_size 300");
    let root = unique("toolarge");
    let r = run_ok(dir.path(), &two_sizes_fleet(port, &root, "pooled", ""), &["--cores", "1"]);
    check_too_large(&r);
    // The connection was never dropped for it: no reconnect storm.
    let ev = &r["sink_events"];
    for e in ["mqtt.reconnect", "mqtt.disconnect", "mqtt.connect_error"] {
        assert!(ev.get(e).is_none(), "{e}: {ev}");
    }
    let log = broker.log();
    assert_eq!(log.matches("New client connected").count(), 1, "{log}");
}

#[test]
fn a_connection_the_broker_drops_right_after_connack_is_retried_with_a_growing_backoff() {
    let fake = DropAfterConnack::start();
    let dir = tempfile::tempdir().unwrap();
    let root = unique("flap");
    let cfg = dir.path().join("fleet.toml");
    let toml = fleet(
        fake.port,
        &root,
        "qos = 0\nbackoff_initial = \"50ms\"\nbackoff_max = \"400ms\"",
        1,
        "20ms",
        "1h",
    )
    .replace("pool_size = 3", "pool_size = 1");
    std::fs::write(&cfg, toml).unwrap();
    let child = spawn_run(dir.path(), &cfg, &["--cores", "1"]);
    let at = fake.wait_connects(9, 60);
    sigterm(&child);
    let out = output_within(child, 60);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(at.len() >= 9, "only {} connects: {}", at.len(), stderr(&out));
    // Backoff 50 ms doubling up to 400 ms, with jitter down to half: the 4th retry on waits
    // at least 200 ms. Reset at every CONNACK, each retry would wait 25-50 ms.
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate().skip(4).take(4) {
        assert!(*g >= Duration::from_millis(200), "retry {i} after {g:?}: {gaps:?}");
    }
}

#[test]
fn pooled_connections_send_disconnect_when_a_run_ends() {
    for version in [4, 5] {
        let (dir, port, broker) = logging_broker("");
        let root = unique("bye");
        // One shard, three pooled connections.
        let toml = fleet(port, &root, &format!("version = {version}\nqos = 1"), 6, "100ms", "1s");
        let r = run_ok(dir.path(), &toml, &["--cores", "1"]);
        assert_eq!(r["runs"][0]["errors"], 0, "{r}");
        // Each connection closed gracefully: DISCONNECT before the socket closed.
        assert!(
            broker.wait_log("Received DISCONNECT from iot-sim-", 3),
            "MQTT {version}: {}",
            broker.log()
        );
        let log = broker.log();
        // (The start's reachability probe, a bare TCP connect, is `<unknown>`.)
        let abrupt =
            log.lines().filter(|l| l.contains("closed its connection") && l.contains("iot-sim-"));
        assert_eq!(abrupt.count(), 0, "MQTT {version}: {log}");
        assert_eq!(log.matches("New client connected").count(), 3, "{log}");
    }
}
