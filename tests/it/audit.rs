//! The delivery audit against real brokers: the machine's Mosquitto (127.0.0.1:1883) and
//! RabbitMQ (127.0.0.1:5672), and a mosquitto of the test's own on a free port for restarts.

use crate::common;
use crate::common::fleet::Fleet;

use common::mqtt::Broker;
use common::*;
use rumqttc::{Client, MqttOptions, QoS};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// 40 devices every 50 ms for `duration` in realtime, published to `sink` (a `[sink.*]`
/// table) under `root/{device_id}/telemetry`, audited as `audit` says.
fn fleet(protocol: &str, sink: &str, root: &str, duration: &str, audit: &str) -> String {
    Fleet::new()
        .run(3, "realtime", "2026-03-14T00:00:00Z", duration)
        .raw("")
        .raw(sink)
        .table("audit")
        .raw(audit)
        .devices("probe", 40)
        .profile("probe", protocol, "50ms")
        .set("topic", format!("{root}/{{device_id}}/telemetry"))
        .gaussian("probe", "t", 20, 1)
        .set("decimals", 2)
        .toml()
}

fn audit_of(r: &Value) -> &Value {
    let a = &r["audit"];
    assert!(a.is_object(), "no audit section in the report: {r}");
    a
}

fn n(a: &Value, k: &str) -> u64 {
    a[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {a}"))
}

/// Writes the fleet and the scenario into `dir`, runs the scenario on 2 cores (exit 0 expected)
/// and returns its report.json.
fn scenario_run(dir: &Path, fleet: &str, scenario: &str) -> Value {
    let f = dir.join("fleet.toml");
    std::fs::write(&f, fleet).unwrap();
    let s = dir.join("s.toml");
    std::fs::write(&s, scenario).unwrap();
    let rd = dir.join("report");
    let mut cmd = bin();
    cmd.args(["scenario", "run", s.to_str().unwrap(), "--config", f.to_str().unwrap()]).args([
        "--quiet",
        "--cores",
        "2",
        "--report-dir",
        rd.to_str().unwrap(),
    ]);
    let out = command_within(cmd, 60);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    report(dir)
}

#[test]
fn a_clean_mqtt_run_has_nothing_lost_or_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-clean");
    let toml = fleet(
        "mqtt",
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 1",
        &root,
        "3s",
        "qos = 1",
    );
    let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
    let a = audit_of(&r);
    // 40 devices, one tick every 50 ms for 3 s: 60 each.
    assert_eq!(n(a, "expected"), 2400, "{a}");
    assert_eq!(n(a, "received"), 2400, "{a}");
    assert_eq!((n(a, "lost"), n(a, "duplicated"), n(a, "reordered")), (0, 0, 0), "{a}");
    assert_eq!((n(a, "unparsable"), n(a, "unknown_device"), n(a, "off_grid")), (0, 0, 0), "{a}");
    assert_eq!(n(a, "silent_devices"), 0);
    assert_eq!(a["e2e_latency_us"]["count"], 2400, "{a}");
}

#[test]
fn a_clean_amqp_run_has_nothing_lost_or_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-amqp");
    let sink = format!("[sink.amqp]\nurl = \"amqp://127.0.0.1:5672/%2f\"\nexchange = \"{root}\"");
    let toml = fleet("amqp", &sink, &root, "3s", "source = \"amqp\"");
    let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
    let a = audit_of(&r);
    assert_eq!((n(a, "expected"), n(a, "received")), (2400, 2400), "{a}");
    assert_eq!((n(a, "lost"), n(a, "duplicated"), n(a, "foreign_topic")), (0, 0, 0), "{a}");
    assert!(a["source"].as_str().unwrap().starts_with("amqp"), "{a}");
}

/// Runs the fleet through a private broker that hangs once a second of the run went through it
/// (SIGSTOP: the sink's writes pile up in its socket), is killed 1 s later and restarted at
/// once.
fn restart_run(qos: u8) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(port);
    let root = unique("audit-restart");
    // The sink waits 1 s before reconnecting; the auditor retries every 100 ms, so it is
    // subscribed again before the sink resends.
    let sink = format!(
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nqos = {qos}\npool_size = 2\nbackoff_initial = \"1s\"\nbackoff_max = \"1s\""
    );
    let toml = fleet("mqtt", &sink, &root, "5s", &format!("qos = {qos}\ngrace = \"5s\""));
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let sub = common::mqtt::Subscriber::start(port, &format!("{root}/#"));
    let child = spawn_run(dir.path(), &cfg, &["--cores", "2"]);
    // The run is publishing through the broker: a second's worth (800) arrived.
    assert!(
        sub.wait_count(800, Duration::from_secs(30)),
        "only {} messages through the broker before the hang",
        sub.count()
    );
    broker.signal(libc::SIGSTOP);
    // The hang itself: its length is the point (the sink keeps writing into a socket nobody
    // reads, which a QoS 0 publisher then forgets).
    std::thread::sleep(Duration::from_millis(1000));
    broker.kill();
    broker.up();
    let out = output_within(child, 60);
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    report(dir.path())
}

#[test]
fn a_broker_restart_at_qos0_shows_losses() {
    let r = restart_run(0);
    let a = audit_of(&r);
    assert!(n(a, "lost") > 0, "a QoS 0 publisher forgets what the hung broker never read: {a}");
    assert_eq!(n(a, "expected"), 4000, "{a}");
}

#[test]
fn a_broker_restart_at_qos1_loses_nothing() {
    let r = restart_run(1);
    let a = audit_of(&r);
    assert_eq!(n(a, "lost"), 0, "QoS 1 resends what the dead broker did not acknowledge: {a}");
    assert_eq!(n(a, "received"), 4000, "{a}");
    // Duplicates appear when the broker forwarded a message but died before its PUBACK;
    // they are counted, never as received twice.
    eprintln!("duplicated after the restart: {}", n(a, "duplicated"));
}

#[test]
fn a_disconnect_window_is_expected_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-disc");
    let toml =
        fleet("mqtt", "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 1", &root, "3s", "");
    let r = scenario_run(
        dir.path(),
        &toml,
        "name = \"disc\"\nduration = \"3s\"\n\n[[step]]\nat = \"1s\"\nfault = { all = true, type = \"disconnect\", duration = \"1s\" }\n",
    );
    let a = audit_of(&r);
    // One second of three was suppressed: about 800 messages, excused, none lost.
    let excused = n(a, "excused_disconnect");
    assert!((700..=900).contains(&excused), "{a}");
    assert_eq!(n(a, "lost"), 0, "{a}");
    assert_eq!(n(a, "received") + excused, 2400, "{a}");
}

/// A publisher of crafted messages.
fn publisher(port: u16) -> (Client, std::thread::JoinHandle<()>) {
    let mut opts = MqttOptions::new(unique("craft"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(opts, 100);
    let h = std::thread::spawn(move || {
        for ev in conn.iter() {
            if ev.is_err() {
                return;
            }
        }
    });
    (client, h)
}

fn envelope(id: &str, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"device_id":"{id}","device_type":"probe","timestamp":"2026-03-14T00:00:00.000Z","fields":{{"t":1}},"seq":{seq}}}"#
    )
    .into_bytes()
}

/// Starts `iot-sim audit` (stdout piped, stderr to `dir/audit.stderr`, read by
/// [`audit_consuming`] while it runs and by [`audit_output`] after).
fn audit_cmd(dir: &Path, cfg: &Path, extra: &[&str]) -> std::process::Child {
    let rd = dir.join("audit");
    let err = std::fs::File::create(dir.join("audit.stderr")).unwrap();
    bin()
        .args(["audit", "--config", cfg.to_str().unwrap(), "--report-dir", rd.to_str().unwrap()])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap()
}

/// Waits (up to 30 s) until the auditor started by [`audit_cmd`] printed "audit: consuming
/// from" (it prints that once its consumer is subscribed, or after warning that it is not yet).
fn audit_consuming(dir: &Path) {
    let path = dir.join("audit.stderr");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("audit: consuming from") {
            return;
        }
        assert!(std::time::Instant::now() < end, "the auditor did not start within 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`output_within`] for an auditor of [`audit_cmd`], its stderr read back from the file.
fn audit_output(child: std::process::Child, dir: &Path, secs: u64) -> std::process::Output {
    let mut out = output_within(child, secs);
    out.stderr = std::fs::read(dir.join("audit.stderr")).unwrap_or_default();
    out
}

fn audit_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("audit/audit.json")).unwrap()).unwrap()
}

#[test]
fn reordering_through_two_connections_and_bad_input_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-reorder");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        fleet("mqtt", "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"", &root, "3s", ""),
    )
    .unwrap();
    let child =
        audit_cmd(dir.path(), &cfg, &["--mqtt", "mqtt://127.0.0.1:1883", "--duration", "4s"]);
    audit_consuming(dir.path());
    let topic = format!("{root}/probe-0000/telemetry");
    let watch = common::mqtt::Subscriber::start(1883, &topic);
    let (a, _ha) = publisher(1883);
    let (b, _hb) = publisher(1883);
    for seq in [0, 1, 2, 4, 4] {
        a.publish(&topic, QoS::AtLeastOnce, false, envelope("probe-0000", seq)).unwrap();
    }
    // The broker routed all five (to the auditor as to this watcher) before anything of `b`.
    assert!(watch.wait_count(5, Duration::from_secs(30)), "{} of 5 routed", watch.count());
    // Seq 3 comes late through the second connection.
    b.publish(&topic, QoS::AtLeastOnce, false, envelope("probe-0000", 3)).unwrap();
    b.publish(&topic, QoS::AtLeastOnce, false, b"{not json".to_vec()).unwrap();
    b.publish(format!("{root}/x/telemetry"), QoS::AtLeastOnce, false, envelope("nobody-0001", 0))
        .unwrap();
    b.publish(format!("{root}/elsewhere"), QoS::AtLeastOnce, false, envelope("probe-0001", 0))
        .unwrap();
    let out = audit_output(child, dir.path(), 30);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = audit_json(dir.path());
    let au = &j["audit"];
    assert_eq!(au["mode"], "stand-alone");
    assert_eq!((n(au, "reordered"), n(au, "reorder_max")), (1, 1), "{au}");
    assert_eq!(n(au, "duplicated"), 1, "{au}");
    assert_eq!((n(au, "received"), n(au, "lost")), (5, 0), "{au}");
    assert_eq!((n(au, "unparsable"), n(au, "unknown_device")), (1, 1), "{au}");
    // Filters derived from the template (`root/+/telemetry`) never see `root/elsewhere`.
    assert_eq!(n(au, "foreign_topic"), 0, "{au}");
}

#[test]
fn a_stand_alone_audit_checks_a_run_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-standalone");
    // No start time: the run starts now, so its timestamps are wall times.
    let toml = fleet(
        "mqtt",
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 1",
        &root,
        "2s",
        "verify = \"values\"",
    )
    .replace("start_time = \"2026-03-14T00:00:00Z\"\n", "");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let child = audit_cmd(dir.path(), &cfg, &["--duration", "6s"]);
    audit_consuming(dir.path());
    let run = run_within(dir.path(), &toml, &["--cores", "2"], 60);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let out = audit_output(child, dir.path(), 30);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = audit_json(dir.path());
    let a = &j["audit"];
    assert_eq!((n(a, "received"), n(a, "lost"), n(a, "duplicated")), (1600, 0, 0), "{a}");
    assert_eq!(n(a, "off_grid"), 0, "{a}");
    assert!(n(&a["e2e_latency_us"], "count") == 1600, "{a}");
    // The auditor (started first) recomputed every value from the seed.
    assert_eq!(n(&a["values"], "verified"), 1600, "{a}");
    assert_eq!(n(a, "values_corrupted"), 0, "{a}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("delivery audit (stand-alone"), "{text}");
}

#[test]
fn audit_thresholds_fail_the_run_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-threshold");
    let toml = fleet("mqtt", "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"", &root, "2s", "")
        + "\n[[threshold]]\nmetric = \"lost\"\nmax = 0\n[[threshold]]\nmetric = \"e2e_latency_p99\"\nmax = \"10s\"\n";
    let out = run_within(dir.path(), &toml, &["--cores", "1"], 60);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Now a threshold no run can pass: at least one duplicate.
    let toml2 = toml.replace("metric = \"lost\"\nmax = 0", "metric = \"duplicated\"\nmin = 1");
    let out = run_within(dir.path(), &toml2, &["--cores", "1"], 60);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let r = report(dir.path());
    let v = &r["thresholds"][0];
    assert_eq!((v["metric"].as_str(), v["passed"].as_bool()), (Some("duplicated"), Some(false)));
}

#[test]
fn bad_audit_settings_are_listed_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet(
        "mqtt",
        "",
        "x",
        "1s",
        "source = \"kafka\"\nqos = 7\nfilter = \"a/#/b\"\ngrace = \"10m\"\nverify = \"fields\"\nnope = 1",
    ) + "\n[[threshold]]\nmetric = \"lost\"\nmax = 0\nabort = true\n";
    let out = validate_within(dir.path(), &toml, 30);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    for want in [
        "audit.source: expected \"mqtt\", \"amqp\" or \"http\", got \"kafka\"",
        "audit.qos: expected 0, 1 or 2, got 7",
        "audit.filter: \"a/#/b\" is not a valid MQTT filter",
        "audit.grace: must be at most 60s",
        "audit.verify: \"fields\" is not supported; accepted: \"envelope\"",
        "audit.nope: unknown key",
        "threshold[0].metric: \"lost\" is judged on the delivery audit",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn metrics_show_the_audit_counts_and_an_interrupted_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-metrics");
    let toml =
        fleet("mqtt", "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 1", &root, "60s", "");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let rd = dir.path().join("report");
    let mut cmd = bin();
    cmd.args(["--config", cfg.to_str().unwrap(), "--cores", "2", "--admin", "127.0.0.1:0"])
        .args(["--report-dir", rd.to_str().unwrap()]);
    let mut run = Running::start(&mut cmd);
    let admin = run.admin_addr();
    let in_order_of = |metrics: &str| -> Option<f64> {
        let l = metrics
            .lines()
            .find(|l| l.starts_with("iot_sim_audit_messages_total{kind=\"in_order\"}"))?;
        l.rsplit(' ').next()?.parse().ok()
    };
    // Polls /metrics until the audit counted more than the report check below needs (about
    // 1.3 s of the run's 800 msg/s), for at most 30 s.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let (code, metrics) = loop {
        let (code, metrics) = http_get(&admin, "/metrics");
        let enough = in_order_of(&metrics).is_some_and(|v| v > 1000.0);
        if code != 200 || enough || std::time::Instant::now() > end {
            break (code, metrics);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 200);
    let in_order = metrics
        .lines()
        .find(|l| l.starts_with("iot_sim_audit_messages_total{kind=\"in_order\"}"))
        .unwrap_or_else(|| panic!("no audit counter in:\n{metrics}"));
    let v: f64 = in_order.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(v > 0.0, "{in_order}");
    assert!(metrics.contains("iot_sim_audit_consumer_errors_total 0"), "{metrics}");
    // Stopped by SIGTERM mid-interval: the schedule is cut where the shards certainly were.
    let status = run.stop();
    assert_eq!(status.code(), Some(0));
    let r = report(dir.path());
    let a = audit_of(&r);
    assert_eq!((n(a, "lost"), n(a, "duplicated")), (0, 0), "{a}");
    assert!(n(a, "received") > 1000, "{a}");
}

#[test]
fn the_http_receiver_audits_what_the_http_sink_posts_single_and_batched() {
    for batch in [1, 20] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let root = unique("audit-http");
        let sink = format!(
            "[sink.http]\nendpoint = \"http://127.0.0.1:{port}/ingest/{{topic}}\"\nbatch_size = {batch}\nbatch_linger = \"20ms\""
        );
        // The receiver listens where the sink's endpoint points.
        let toml = fleet("http", &sink, &root, "2s", "source = \"http\"");
        let r = run_ok(dir.path(), &toml, &["--cores", "2"]);
        let a = audit_of(&r);
        assert_eq!((n(a, "expected"), n(a, "received")), (1600, 1600), "batch {batch}: {a}");
        assert_eq!((n(a, "lost"), n(a, "duplicated"), n(a, "unparsable")), (0, 0, 0), "{a}");
        assert!(a["source"].as_str().unwrap().starts_with("http receiver"), "{a}");
    }
}

#[test]
fn a_missing_queue_is_counted_and_the_auditor_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    let sink = "[sink.amqp]\nurl = \"amqp://127.0.0.1:5672/%2f\"";
    std::fs::write(&cfg, fleet("amqp", sink, "x", "1s", "")).unwrap();
    let queue = unique("no-such-queue");
    let child = audit_cmd(
        dir.path(),
        &cfg,
        &["--amqp", "amqp://127.0.0.1:5672/%2f", "--queue", &queue, "--duration", "3s"],
    );
    let out = audit_output(child, dir.path(), 30);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = audit_json(dir.path());
    // Refused at once, retried every second until the end.
    assert!(n(&j["audit"], "consumer_errors") >= 2, "{}", j["audit"]);
}

#[test]
fn a_shared_subscription_feeds_the_auditor() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-share");
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        fleet("mqtt", "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"", &root, "3s", ""),
    )
    .unwrap();
    let filter = format!("$share/auditors/{root}/+/telemetry");
    let child = audit_cmd(
        dir.path(),
        &cfg,
        &["--mqtt", "mqtt://127.0.0.1:1883", "--filter", &filter, "--duration", "3s"],
    );
    audit_consuming(dir.path());
    let (a, _h) = publisher(1883);
    for seq in 0..3 {
        let topic = format!("{root}/probe-0007/telemetry");
        a.publish(topic, QoS::AtLeastOnce, false, envelope("probe-0007", seq)).unwrap();
    }
    let out = audit_output(child, dir.path(), 30);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let au = &audit_json(dir.path())["audit"];
    assert_eq!((n(au, "received"), n(au, "lost"), n(au, "foreign_topic")), (3, 0, 0), "{au}");
}

/// A fleet whose fields use every stateful generator (brownian, markov, diurnal with noise,
/// composite, derived with noise), a periodic profile and a report-on-change one (its samples
/// are not all published), audited with `verify = "values"`.
fn values_fleet(root: &str, duration: &str) -> String {
    format!(
        r#"
[run]
seed = 11
clock = "realtime"
start_time = "2026-03-14T05:00:00Z"
duration = "{duration}"

[sink.mqtt]
url = "mqtt://127.0.0.1:1883"
qos = 1

[audit]
qos = 1
verify = "values"

[[fleet]]
profile = "room"
count = 20

[[fleet]]
profile = "meter"
count = 20

[profiles.room]
protocol = "mqtt"
topic = "{root}/{{device_id}}/telemetry"
interval = "50ms"
[profiles.room.fields.temperature]
type = "diurnal"
baseline = 22.0
amplitude = 5.0
peak_hour = 14
noise_stddev = 0.3
decimals = 2
[profiles.room.fields.humidity]
type = "brownian"
start = 55.0
mean = 55.0
volatility = 0.5
mean_reversion = 0.1
min = 20.0
max = 95.0
decimals = 1
[profiles.room.fields.door]
type = "markov"
states = ["closed", "open"]
transition_matrix = [[0.9, 0.1], [0.3, 0.7]]
initial_state = "closed"
[profiles.room.fields.raw]
type = "gaussian"
mean = 1.0
stddev = 0.25
[profiles.room.fields.model]
type = "static"
value = "r-1"

[profiles.meter]
protocol = "mqtt"
topic = "{root}/{{device_id}}/telemetry"
interval = "50ms"
report = {{ mode = "on_change", max_silence = "1s" }}
[profiles.meter.fields.power]
type = "brownian"
start = 3.0
mean = 3.0
volatility = 0.5
mean_reversion = 0.01
decimals = 2
deadband = 0.2
"#
    )
}

#[test]
fn verify_values_finds_every_field_as_the_seed_says_in_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-values");
    let r = run_ok(dir.path(), &values_fleet(&root, "3s"), &["--cores", "2"]);
    let a = audit_of(&r);
    let v = &a["values"];
    assert!(v.is_object(), "no values counts: {a}");
    assert_eq!((n(a, "lost"), n(a, "duplicated"), n(a, "unparsable")), (0, 0, 0), "{a}");
    assert_eq!(n(a, "values_corrupted"), 0, "{a}");
    for k in ["value_mismatch", "field_missing", "field_extra", "type_mismatch", "unverified"] {
        assert_eq!(n(v, k), 0, "{k}: {a}");
    }
    // Every message received was checked, the on_change meters' unpublished samples included
    // (generated by the auditor to stay in step).
    assert_eq!(n(v, "verified"), n(a, "received"), "{a}");
    assert!(n(a, "received") > 1200 + 20, "rooms: 1200 + meters: {a}");
    assert!(n(a, "state_bytes") > 40 * 32, "{a}");
}

#[test]
fn verify_values_excuses_what_a_value_corruption_fault_changed() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-values-fault");
    let r = scenario_run(
        dir.path(),
        &values_fleet(&root, "3s"),
        "name = \"zero\"\nduration = \"3s\"\n\n[[step]]\nat = \"1s\"\nfault = { selector = \"device_type=room\", type = \"data_corruption\", duration = \"1s\", params = { corruption_rate = 0.5, mode = \"zero\" } }\n",
    );
    let a = audit_of(&r);
    let v = &a["values"];
    // About half the rooms' 400 messages of that second arrive with zeros.
    let bad = n(v, "value_mismatch");
    assert!((100..=300).contains(&bad), "{a}");
    assert_eq!(n(a, "excused_values"), bad, "every mismatch is the fault's: {a}");
    assert_eq!(n(a, "values_corrupted"), 0, "{a}");
    assert_eq!((n(v, "field_missing"), n(v, "type_mismatch")), (0, 0), "{a}");
    assert_eq!(n(a, "lost"), 0, "{a}");
}

#[test]
fn verify_values_counts_crafted_wrong_values_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-values-craft");
    let cfg = dir.path().join("fleet.toml");
    let toml = fleet(
        "mqtt",
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"",
        &root,
        "3s",
        "verify = \"values\"",
    );
    std::fs::write(&cfg, toml).unwrap();
    let child =
        audit_cmd(dir.path(), &cfg, &["--mqtt", "mqtt://127.0.0.1:1883", "--duration", "4s"]);
    audit_consuming(dir.path());
    let topic = format!("{root}/probe-0000/telemetry");
    let (a, _ha) = publisher(1883);
    let msg = |seq: u64, fields: &str| {
        format!(
            r#"{{"device_id":"probe-0000","device_type":"probe","timestamp":"2026-03-14T00:00:00.000Z","fields":{{{fields}}},"seq":{seq}}}"#
        )
        .into_bytes()
    };
    // `t` is gaussian(20, 1) with 2 decimals: never 1e9, never a string.
    for (seq, fields) in [
        (0, r#""t":1000000000"#),
        (1, r#""t":"warm""#),
        (2, ""),
        (5, r#""t":1000000000,"extra":1"#),
        (4, r#""t":1000000000"#),
    ] {
        a.publish(&topic, QoS::AtLeastOnce, false, msg(seq, fields)).unwrap();
    }
    let out = audit_output(child, dir.path(), 30);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let au = &audit_json(dir.path())["audit"];
    let v = &au["values"];
    assert_eq!(n(v, "value_mismatch"), 2, "seqs 0 and 5: {au}");
    assert_eq!(n(v, "type_mismatch"), 1, "{au}");
    assert_eq!(n(v, "field_missing"), 1, "{au}");
    assert_eq!(n(v, "field_extra"), 1, "{au}");
    // Seq 4 came after seq 5: the state is past it, it cannot be checked.
    assert_eq!(n(v, "unverified"), 1, "{au}");
    assert_eq!(n(v, "verified"), 0, "{au}");
    assert_eq!(n(au, "values_corrupted"), 4, "a stand-alone audit excuses nothing: {au}");
}

#[test]
fn devices_spawned_at_runtime_are_expected_from_their_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("audit-spawn");
    let toml = fleet(
        "mqtt",
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 1",
        &root,
        "3s",
        "verify = \"values\"",
    );
    let r = scenario_run(
        dir.path(),
        &toml,
        "name = \"spawn\"\nduration = \"3s\"\n\n[[step]]\nat = \"1s\"\nspawn = { profile = \"probe\", count = 10 }\n",
    );
    let a = audit_of(&r);
    assert_eq!(n(a, "unknown_device"), 0, "{a}");
    assert_eq!(n(a, "devices"), 50, "40 from the file + 10 spawned: {a}");
    // The spawned ten tick every 50 ms for about 2 s: about 400 messages, all expected.
    let extra = n(a, "expected") - 2400;
    assert!((350..=410).contains(&extra), "{a}");
    assert_eq!((n(a, "lost"), n(a, "off_grid"), n(a, "silent_devices")), (0, 0, 0), "{a}");
    assert_eq!(n(a, "received"), n(a, "expected"), "{a}");
    assert_eq!(n(&a["values"], "verified"), n(a, "received"), "{a}");
}

/// A `.proto` for the probe fleet (`t`), written next to its fleet file.
const PROBE_PROTO: &str = r#"syntax = "proto3";
package probe.v1;
import "google/protobuf/timestamp.proto";
message Probe {
  string device_id = 1;
  google.protobuf.Timestamp timestamp = 2;
  uint64 seq = 3;
  double t = 4;
  string device_type = 5;
  map<string, string> labels = 6;
}
"#;

/// The probe fleet of [`fleet`] over Mosquitto, publishing `format` (with its `keys`).
fn format_fleet(root: &str, duration: &str, format: &str, keys: &str) -> String {
    Fleet::new()
        .run(3, "realtime", "2026-03-14T00:00:00Z", duration)
        .raw("[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 1")
        .table("audit")
        .raw("qos = 1")
        .devices("probe", 40)
        .profile("probe", "mqtt", "50ms")
        .set("topic", format!("{root}/{{device_id}}/telemetry"))
        .set("format", format)
        .raw(keys)
        .gaussian("probe", "t", 20, 1)
        .set("decimals", 2)
        .toml()
}

/// Every built-in format other than the envelope, with the keys the audit needs.
const AUDITED_FORMATS: &[(&str, &str)] = &[
    ("flat", "id_key = \"id\"\ntimestamp = \"ms\""),
    ("cbor", ""),
    ("senml", ""),
    ("senml_cbor", ""),
    ("protobuf", "proto_file = \"probe.proto\"\nmessage = \"probe.v1.Probe\""),
    (
        "template",
        "template = '{\"who\": {{ device_id|tojson }}, \"n\": {{ seq }}, \"t\": {{ fields.t }}}'\naudit = { device_id = \"/who\", seq = \"/n\" }",
    ),
];

#[test]
fn every_format_is_audited_clean_through_mosquitto() {
    for (format, keys) in AUDITED_FORMATS {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("probe.proto"), PROBE_PROTO).unwrap();
        let root = unique(&format!("audit-{format}"));
        let r = run_ok(dir.path(), &format_fleet(&root, "2s", format, keys), &["--cores", "2"]);
        let a = audit_of(&r);
        // 40 devices, one tick every 50 ms for 2 s: 40 each.
        assert_eq!((n(a, "expected"), n(a, "received")), (1600, 1600), "{format}: {a}");
        assert_eq!(
            (n(a, "lost"), n(a, "duplicated"), n(a, "reordered")),
            (0, 0, 0),
            "{format}: {a}"
        );
        assert_eq!(
            (n(a, "unparsable"), n(a, "unknown_device"), n(a, "corrupted")),
            (0, 0, 0),
            "{format}: {a}"
        );
        assert_eq!((n(a, "off_grid"), n(a, "silent_devices")), (0, 0), "{format}: {a}");
    }
}

/// A protobuf `Probe` (see [`PROBE_PROTO`]) written by hand: id (1), seq (3), t (4).
fn probe_protobuf(id: &str, seq: u64) -> Vec<u8> {
    let mut b = vec![0x0a, id.len() as u8];
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(&[0x18, seq as u8, 0x21]);
    b.extend_from_slice(&21.5f64.to_le_bytes());
    b
}

#[test]
fn a_protobuf_audit_finds_a_dropped_and_a_duplicated_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("probe.proto"), PROBE_PROTO).unwrap();
    let root = unique("audit-proto-gap");
    let cfg = dir.path().join("fleet.toml");
    let keys = "proto_file = \"probe.proto\"\nmessage = \"probe.v1.Probe\"";
    std::fs::write(&cfg, format_fleet(&root, "3s", "protobuf", keys)).unwrap();
    let child =
        audit_cmd(dir.path(), &cfg, &["--mqtt", "mqtt://127.0.0.1:1883", "--duration", "3s"]);
    audit_consuming(dir.path());
    let topic = format!("{root}/probe-0000/telemetry");
    let (a, _ha) = publisher(1883);
    // Seq 2 never comes; seq 3 comes twice; then an envelope, which is not this profile's.
    for seq in [0, 1, 3, 3, 4] {
        a.publish(&topic, QoS::AtLeastOnce, false, probe_protobuf("probe-0000", seq)).unwrap();
    }
    a.publish(&topic, QoS::AtLeastOnce, false, envelope("probe-0000", 5)).unwrap();
    let out = audit_output(child, dir.path(), 30);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let au = &audit_json(dir.path())["audit"];
    assert_eq!(n(au, "received"), 4, "{au}");
    assert_eq!(n(au, "duplicated"), 1, "{au}");
    assert_eq!(n(au, "lost"), 1, "{au}");
    assert_eq!(n(au, "unparsable"), 1, "{au}");
}
