//! Expiring tokens (`[sink.mqtt.per_device.token]`) and MQTT over WebSocket against a private
//! RabbitMQ with its bundled plugins (`common::rabbit`): JWTs verified by
//! `rabbitmq_auth_backend_oauth2` with the test's signing key, Azure IoT Hub SAS tokens verified
//! by a test service behind `rabbitmq_auth_backend_http`, pooled and per-device sessions over
//! `rabbitmq_web_mqtt`. Renewal runs in realtime with the shortest ttl (1 minute) and a long
//! `renew_before`, so each device renews within ~5-20 s.

use crate::common;
use crate::common::fleet::Fleet;
use crate::grpc_common::{disconnect, wait_until};
use common::mqtt::Subscriber;
use common::rabbit::{Rabbit, SasVerifier};
use common::*;
use iot_sim::control::proto::device_runtime_service_client::DeviceRuntimeServiceClient;

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// `devices` per-device sessions publishing at 2 msg/s (QoS 1) for `duration`, with `extra`
/// appended to `[sink.mqtt]` (the per-device tables).
fn fleet(url: &str, root: &str, devices: u32, duration: &str, extra: &str) -> String {
    Fleet::new()
        .run(11, "realtime", "2026-03-14T00:00:00Z", duration)
        .sink("mqtt")
        .set("url", url)
        .set("qos", 1)
        .set("backoff_initial", "100ms")
        .set("backoff_max", "500ms")
        .raw(extra)
        .devices("probe", devices)
        .profile("probe", "mqtt", "500ms")
        .set("connection", "per_device")
        .set("topic", format!("{root}/{{device_id}}/telemetry"))
        .set("seq", true)
        .gaussian("probe", "t", 20, 1)
        .toml()
}

/// Every device's messages arrived, each sequence complete from 0 (renewals lose nothing), and
/// `sent` messages in all.
fn assert_complete(got: &[(String, Vec<u8>)], devices: usize, sent: usize) {
    let mut seqs = std::collections::BTreeMap::<String, std::collections::BTreeSet<u64>>::new();
    for (_, payload) in got {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        seqs.entry(v["device_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), devices, "{:?}", seqs.keys());
    assert_eq!(seqs.values().map(|s| s.len()).sum::<usize>(), sent);
    for (id, s) in seqs {
        let last = *s.last().unwrap();
        assert_eq!(s, (0..=last).collect(), "{id}: messages lost");
    }
}

/// A JWT signed with `key` (PEM) by openssl, not by iot-sim: claims for RabbitMQ's oauth2
/// backend, valid from `iat` to `exp` (seconds since the epoch).
fn openssl_jwt(dir: &std::path::Path, key: &std::path::Path, iat: u64, exp: u64) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"sub":"probe","aud":"rabbitmq","scope":"rabbitmq.read:*/* rabbitmq.write:*/*/* rabbitmq.configure:*/*","iat":{iat},"exp":{exp}}}"#
    );
    let signed = format!("{header}.{}", b64(claims.as_bytes()));
    let input = dir.join(unique("jwt-input"));
    std::fs::write(&input, &signed).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("{signed}.{}", b64(&out.stdout))
}

/// The CONNACK a broker gives a client logging in with `password`.
fn connack(port: u16, password: &str) -> Result<(), String> {
    use rumqttc::{Client, ConnectReturnCode, Event, MqttOptions, Packet};
    let mut opts = MqttOptions::new(unique("jwt-probe"), "127.0.0.1", port);
    opts.set_credentials("probe", password);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (_client, mut conn) = Client::new(opts, 10);
    for ev in conn.iter().take(5) {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == ConnectReturnCode::Success => {
                return Ok(());
            }
            Ok(Event::Incoming(Packet::ConnAck(a))) => return Err(format!("{:?}", a.code)),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("no CONNACK".into())
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The broker's oauth2 backend refuses a token past its expiry and takes a current one (both
/// signed by openssl with the node's key): the check the renewal below relies on.
#[test]
fn rabbitmq_oauth2_refuses_an_expired_jwt_and_accepts_a_current_one() {
    let rabbit = Rabbit::shared();
    let dir = tempfile::tempdir().unwrap();
    let now = now_s();
    let expired = openssl_jwt(dir.path(), &rabbit.signing_key(), now - 300, now - 120);
    let current = openssl_jwt(dir.path(), &rabbit.signing_key(), now, now + 120);
    let refused = connack(rabbit.mqtt, &expired);
    assert!(refused.is_err(), "an expired JWT was accepted");
    assert_eq!(connack(rabbit.mqtt, &current), Ok(()), "{}", rabbit.log());
    // Refused for its expiry, not for anything else (the node writes its log a moment later).
    assert!(rabbit.wait_log("has expired"), "{}", rabbit.log());
}

/// iot-sim signs a JWT per device with the node's RSA key (RS256); RabbitMQ's oauth2 backend
/// verifies each; before a token expires the session reconnects with a fresh one (counted
/// `session_token_renewed`), every renewal accepted, and nothing published is lost.
#[test]
fn per_device_jwts_are_verified_by_rabbitmq_oauth2_and_renewed_before_expiry() {
    let rabbit = Rabbit::shared();
    let dir = tempfile::tempdir().unwrap();
    let root = unique("iotsim-jwt");
    let sub = Subscriber::start_login(rabbit.mqtt, &format!("{root}/#"), GUEST);
    let devices = 3;
    // ttl 60 s renewed 55 s before expiry: each device renews between 5 s and 19 s after
    // each connect; the 26 s run sees at least one renewal per device.
    let extra = format!(
        r#"[sink.mqtt.per_device]
client_id = "jwt-{{device_id}}"
username = "jwt-{{device_id}}"
[sink.mqtt.per_device.token]
kind = "jwt"
key_file = "{}"
ttl = "1m"
renew_before = "55s"
claims = {{ sub = "{{device_id}}", aud = "rabbitmq", scope = "rabbitmq.read:*/* rabbitmq.write:*/*/* rabbitmq.configure:*/*" }}"#,
        rabbit.signing_key().display()
    );
    let url = format!("mqtt://127.0.0.1:{}", rabbit.mqtt);
    let toml = fleet(&url, &root, devices, "26s", &extra);
    let out = run_env(dir.path(), &toml, &[], &[("IOT_SIM_LOG", "iot_sim=debug")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(dir.path());
    let ev = &r["sink_events"];
    let renewed = ev["mqtt.session_token_renewed"].as_u64().unwrap_or(0);
    let tail = |s: String| s[s.len().saturating_sub(4000)..].to_string();
    assert!(
        renewed >= devices as u64,
        "every device renews at least once: {ev}\n{}\n{}",
        tail(stderr(&out)),
        tail(rabbit.log())
    );
    assert!(ev.get("mqtt.session_refused_bad_credentials").is_none(), "{ev}");
    assert!(ev.get("mqtt.session_refused_not_authorized").is_none(), "{ev}");
    // The renewals are reconnects, not losses.
    assert!(ev.get("mqtt.session_lost").is_none(), "{ev}");
    let row = &r["runs"][0];
    assert_eq!(row["errors"], 0, "{r}");
    let sent = row["messages"].as_u64().unwrap() as usize;
    let got = sub.wait_for(sent);
    assert!(got.len() >= sent, "{} of {sent} arrived", got.len());
    assert_complete(&got, devices as usize, sent);
    // The broker verified every JWT: the node refused no login of these devices.
    assert!(!rabbit.log().contains("login failed for user 'jwt-"), "{}", rabbit.log());
}

/// A key the broker does not know: every session's JWT is refused, counted by reason, and the
/// run still ends normally.
#[test]
fn jwts_signed_with_an_unknown_key_are_refused_and_counted() {
    let rabbit = Rabbit::shared();
    let dir = tempfile::tempdir().unwrap();
    common::tls::openssl(
        dir.path(),
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "other.pem"],
    );
    let extra = format!(
        r#"[sink.mqtt.per_device]
client_id = "badjwt-{{device_id}}"
username = "{{device_id}}"
[sink.mqtt.per_device.token]
kind = "jwt"
key_file = "{}"
ttl = "1m"
claims = {{ aud = "rabbitmq", scope = "rabbitmq.write:*/*/*" }}"#,
        dir.path().join("other.pem").display()
    );
    let url = format!("mqtt://127.0.0.1:{}", rabbit.mqtt);
    let r = run_ok(dir.path(), &fleet(&url, &unique("iotsim-badjwt"), 2, "3s", &extra), &[]);
    let ev = &r["sink_events"];
    let refused = ev["mqtt.session_refused_bad_credentials"].as_u64().unwrap_or(0)
        + ev["mqtt.session_refused_not_authorized"].as_u64().unwrap_or(0);
    assert!(refused >= 2, "{ev}");
    assert!(ev.get("mqtt.session_connected").is_none(), "{ev}");
}

/// Azure IoT Hub SAS tokens, verified by the test's service behind
/// `rabbitmq_auth_backend_http` (signature, expiry, device named by username and `sr`): all
/// accepted and renewed; then, with the service refusing every renewal, the refusals are
/// counted by reason while the first logins stand.
#[test]
fn sas_tokens_are_verified_over_rabbitmq_auth_backend_http_and_refused_renewals_counted() {
    let rabbit = Rabbit::shared();
    let dir = tempfile::tempdir().unwrap();
    let root = unique("iotsim-sas");
    let sub = Subscriber::start_login(rabbit.mqtt, &format!("{root}/#"), GUEST);
    let devices = 3;
    let extra = r#"[sink.mqtt.per_device]
client_id = "sas-{device_id}"
username = "testhub.azure-devices.net/{device_id}/?api-version=2021-04-12"
[sink.mqtt.per_device.token]
kind = "sas"
secret_env = "IOTSIM_TEST_SAS_KEY"
resource = "testhub.azure-devices.net/devices/{device_id}"
ttl = "1m"
renew_before = "55s""#;
    let url = format!("mqtt://127.0.0.1:{}", rabbit.mqtt);
    let toml = fleet(&url, &root, devices, "22s", extra);
    let env = [("IOTSIM_TEST_SAS_KEY", SasVerifier::KEY_B64)];
    let out = run_env(dir.path(), &toml, &[], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(dir.path());
    let ev = &r["sink_events"];
    assert!(ev["mqtt.session_token_renewed"].as_u64().unwrap_or(0) >= devices as u64, "{ev}");
    assert!(ev.get("mqtt.session_refused_bad_credentials").is_none(), "{ev}");
    let logins = rabbit.sas.logins();
    let ours: Vec<_> = logins.iter().filter(|l| l.username.contains("/probe-")).collect();
    assert!(ours.len() >= 2 * devices as usize, "{ours:?}");
    assert!(ours.iter().all(|l| l.allowed), "{ours:?}");
    let sent = r["runs"][0]["messages"].as_u64().unwrap() as usize;
    let got = sub.wait_for(sent);
    assert_complete(&got, devices as usize, sent);

    // The platform refuses renewals: each device's first token passes, every later one is
    // refused.
    let dir = tempfile::tempdir().unwrap();
    rabbit.sas.refuse_renewals("testhub.");
    let out =
        run_env(dir.path(), &fleet(&url, &unique("iotsim-sas"), devices, "22s", extra), &[], &env);
    rabbit.sas.allow_all();
    assert!(out.status.success(), "{}", stderr(&out));
    let ev = &report(dir.path())["sink_events"];
    assert_eq!(ev["mqtt.session_connected"], devices, "{ev}");
    assert!(ev.get("mqtt.session_token_renewed").is_none(), "{ev}");
    let refused = ev["mqtt.session_refused_bad_credentials"].as_u64().unwrap_or(0)
        + ev["mqtt.session_refused_not_authorized"].as_u64().unwrap_or(0);
    assert!(refused >= devices as u64, "each refused renewal counted by reason: {ev}");
    let denied =
        rabbit.sas.logins().iter().filter(|l| l.reason.contains("renewal refused")).count();
    assert!(denied >= devices as usize, "{:?}", rabbit.sas.logins());
}

/// The expiry (`se`, seconds since the epoch) of a SAS token.
fn sas_expiry(token: &str) -> u64 {
    token
        .split(['&', ' '])
        .find_map(|kv| kv.strip_prefix("se="))
        .and_then(|se| se.parse().ok())
        .unwrap_or_else(|| panic!("no se in {token:?}"))
}

/// A DISCONNECT fault on per-device SAS sessions: each faulted device logs in again with a
/// fresh token (a later `se`), which the verifier accepts; a reconnect is not a renewal (the
/// ttl is an hour: nothing is renewed in the test), and the untouched device keeps its login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_reconnect_logs_in_with_a_fresh_sas_token_and_is_not_a_renewal() {
    let rabbit = Rabbit::shared();
    let dir = tempfile::tempdir().unwrap();
    let root = unique("iotsim-sasfault");
    // A hub of this test's own: the verifier's log is shared by the tests of the node.
    let hub = root.replace('-', "");
    let sub = Subscriber::start_login(rabbit.mqtt, &format!("{root}/#"), GUEST);
    let extra = format!(
        r#"[sink.mqtt.per_device]
client_id = "{root}-{{device_id}}"
username = "{hub}.azure-devices.net/{{device_id}}/?api-version=2021-04-12"
[sink.mqtt.per_device.token]
kind = "sas"
secret_env = "IOTSIM_TEST_SAS_KEY"
resource = "{hub}.azure-devices.net/devices/{{device_id}}"
ttl = "1h""#
    );
    let url = format!("mqtt://127.0.0.1:{}", rabbit.mqtt);
    // Until terminated (the 5 minutes only bound a test gone wrong).
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, fleet(&url, &root, 3, "5m", &extra)).unwrap();
    let report_dir = dir.path().join("report");
    let (cfg_s, report_s) = (cfg.to_str().unwrap(), report_dir.to_str().unwrap());
    let mut rt = Running::grpc_env(
        &["run", "--config", cfg_s, "--grpc", "127.0.0.1:0", "--quiet", "--report-dir", report_s],
        &[("IOTSIM_TEST_SAS_KEY", SasVerifier::KEY_B64)],
    );
    let ids = ["probe-0000", "probe-0001", "probe-0002"];
    let logins = |id: &str| -> Vec<common::rabbit::Login> {
        let user = format!("{hub}.azure-devices.net/{id}/?api-version=2021-04-12");
        rabbit.sas.logins().into_iter().filter(|l| l.username == user).collect()
    };
    // Publishing: the session has its CONNACK (a drop before it would not be a reconnect).
    wait_until(60, "every device logged in and publishing", || {
        let topics = sub.topics();
        ids.iter()
            .all(|id| logins(id).len() == 1 && topics.contains(&format!("{root}/{id}/telemetry")))
    })
    .await;
    // `se` has a resolution of a second: the fault's 2 s put the new one at least 2 s later.
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    c.inject_fault(disconnect(&ids[..2], "abrupt", 2)).await.unwrap();
    wait_until(60, "both faulted devices logged in again", || {
        logins(ids[0]).len() == 2 && logins(ids[1]).len() == 2
    })
    .await;
    // A few more messages (3 devices at 2 msg/s) before the end; what the faulted devices
    // produced while down goes out after their reconnect (the sequences checked below).
    let before = sub.count();
    assert!(sub.wait_count(before + 6, std::time::Duration::from_secs(30)), "no traffic after");
    assert!(rt.terminate().success(), "{:?}", rt.lines());
    for id in &ids[..2] {
        let l = logins(id);
        assert_eq!(l.len(), 2, "{id}: {l:?}");
        assert!(l.iter().all(|l| l.allowed), "{id}: {l:?}");
        assert_ne!(l[0].password, l[1].password, "{id}: the reconnect reused its token");
        let (first, again) = (sas_expiry(&l[0].password), sas_expiry(&l[1].password));
        assert!(again >= first + 2, "{id}: se {first} then {again}");
    }
    let l = logins(ids[2]);
    assert_eq!(l.len(), 1, "the untouched device logged in once: {l:?}");
    assert!(l[0].allowed, "{l:?}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_dropped_abrupt"], 2, "{ev}");
    assert_eq!(ev["mqtt.session_reconnected"], 2, "{ev}");
    assert_eq!(ev["mqtt.session_connected"], 5, "{ev}");
    // A reconnect after a fault is not a renewal.
    assert!(ev.get("mqtt.session_token_renewed").is_none(), "{ev}");
    assert!(ev.get("mqtt.session_refused_bad_credentials").is_none(), "{ev}");
    assert!(ev.get("mqtt.session_refused_not_authorized").is_none(), "{ev}");
    // Nothing lost across the reconnect: every device's sequence is complete.
    let row = &r["runs"][0];
    assert_eq!(row["errors"], 0, "{row}");
    let sent = row["messages"].as_u64().unwrap() as usize;
    let got = sub.wait_for(sent);
    assert_complete(&got, ids.len(), sent);
}

/// A Sparkplug edge node's token names the node: the SAS `resource` and the username render
/// `{device_id}` as the node's id, and the verifier (which checks that both name one device)
/// accepts each node's login.
#[test]
fn a_sparkplug_edge_node_logs_in_with_a_sas_token_of_its_own() {
    let rabbit = Rabbit::shared();
    let dir = tempfile::tempdir().unwrap();
    let root = unique("iotsim-sasspb");
    let hub = root.replace('-', "");
    let mut toml = format!(
        r#"
[run]
seed = 11
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "2s"

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
qos = 1

[sink.mqtt.per_device]
username = "{hub}.azure-devices.net/{{device_id}}/?api-version=2021-04-12"
[sink.mqtt.per_device.token]
kind = "sas"
secret_env = "IOTSIM_TEST_SAS_KEY"
resource = "{hub}.azure-devices.net/devices/{{device_id}}"
ttl = "1h"

[profiles.press]
protocol = "mqtt"
topic = "unused/{{device_id}}"
interval = "200ms"
format = "sparkplug_b"

[profiles.press.sparkplug]
group_id = "{hub}"
edge_node = "{{labels.line}}"

[profiles.press.fields.t]
type = "gaussian"
mean = 20
stddev = 1
"#,
        port = rabbit.mqtt
    );
    for line in ["line0", "line1"] {
        toml.push_str(&format!(
            "\n[[fleet]]\nprofile = \"press\"\ncount = 2\nlabels = {{ line = \"{line}\" }}\n"
        ));
    }
    let env = [("IOTSIM_TEST_SAS_KEY", SasVerifier::KEY_B64)];
    let out = run_env(dir.path(), &toml, &[], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report(dir.path());
    let ev = &r["sink_events"];
    assert_eq!(ev["mqtt.session_connected"], 2, "{ev}");
    assert_eq!(r["runs"][0]["errors"], 0, "{r}");
    let mut users: Vec<(String, bool)> = rabbit
        .sas
        .logins()
        .into_iter()
        .filter(|l| l.username.starts_with(&format!("{hub}.")))
        .map(|l| (l.username, l.allowed))
        .collect();
    users.sort();
    let user =
        |node: &str| (format!("{hub}.azure-devices.net/{node}/?api-version=2021-04-12"), true);
    assert_eq!(users, [user("line0"), user("line1")]);
}

/// `rabbitmq_web_mqtt`: pooled connections and per-device sessions over `ws://…/ws` deliver
/// every message (a subscriber on the node's plain MQTT listener counts them).
#[test]
fn pooled_and_per_device_sessions_over_rabbitmq_web_mqtt_deliver_every_message() {
    let rabbit = Rabbit::shared();
    let url = format!("ws://127.0.0.1:{}/ws", rabbit.web_mqtt);
    for connection in ["pooled", "per_device"] {
        let dir = tempfile::tempdir().unwrap();
        let root = unique("iotsim-webmqtt");
        let sub = Subscriber::start_login(rabbit.mqtt, &format!("{root}/#"), GUEST);
        let devices = 4;
        let toml = Fleet::new()
            .run(5, "realtime", "2026-03-14T00:00:00Z", "2s")
            .sink("mqtt")
            .set("url", url.as_str())
            .set("qos", 1)
            .set("pool_size", 2)
            .raw("[sink.mqtt.per_device]\nclient_id = \"ws-{device_id}\"\nusername = \"guest\"\npassword_env = \"IOTSIM_TEST_RABBIT_PASSWORD\"")
            .devices("probe", devices)
            .profile("probe", "mqtt", "100ms")
            .set("connection", connection)
            .set("topic", format!("{root}/{{device_id}}/telemetry"))
            .set("seq", true)
            .gaussian("probe", "t", 20, 1)
            .toml();
        let env = [
            ("IOT_SIM_MQTT_USERNAME", "guest"),
            ("IOT_SIM_MQTT_PASSWORD", "guest"),
            ("IOTSIM_TEST_RABBIT_PASSWORD", "guest"),
        ];
        let out = run_env(dir.path(), &toml, &[], &env);
        assert!(out.status.success(), "{connection}: {}", stderr(&out));
        let r = report(dir.path());
        let row = &r["runs"][0];
        assert_eq!(row["errors"], 0, "{connection}: {r}");
        let sent = row["messages"].as_u64().unwrap() as usize;
        assert_eq!(sent, devices as usize * 20, "{connection}: {r}");
        let ev = &r["sink_events"];
        assert!(ev.get("mqtt.connect_error").is_none(), "{connection}: {ev}");
        assert!(ev.get("mqtt.session_connect_error").is_none(), "{connection}: {ev}");
        let got = sub.wait_for(sent);
        assert_eq!(got.len(), sent, "{connection}");
        assert_complete(&got, devices as usize, sent);
    }
    assert!(
        rabbit.log().contains("Web MQTT") || rabbit.log().contains("web_mqtt"),
        "{}",
        rabbit.log()
    );
}

/// Bad token settings: every problem with its path and value, exit 2.
#[test]
fn bad_token_settings_are_listed_with_path_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::tls::openssl(
        d,
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem"],
    );
    std::fs::write(d.join("junk.pem"), "not a key\n").unwrap();
    let base = |extra: &str| {
        fleet("mqtt://127.0.0.1:1", "t", 1, "1s", &format!("[sink.mqtt.per_device]\n{extra}"))
    };
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!(
                "username = \"{{device_id}}\"\npassword_env = \"HOME\"\n[sink.mqtt.per_device.token]\nkind = \"jwt\"\nalg = \"ES256\"\nkey_file = \"{}\"\nttl = \"30s\"\nclaims = \"sub\"",
                d.join("rsa.pem").display()
            ),
            vec![
                "sink.mqtt.per_device.password_env: password_env and token exclude each other".into(),
                "sink.mqtt.per_device.token.ttl: must be at least 1m, got 30000ms".into(),
                "sink.mqtt.per_device.token.claims: expected a table, got a string \"sub\"".into(),
                "sink.mqtt.per_device.token.alg: the key signs RS256 only, got \"ES256\"".into(),
            ],
        ),
        (
            format!(
                "[sink.mqtt.per_device.token]\nkind = \"jwt\"\nkey_file = \"{}\"",
                d.join("junk.pem").display()
            ),
            vec![
                "sink.mqtt.per_device.token.key_file: \"".into(),
                "junk.pem".into(),
                "sink.mqtt.per_device.token: a token is sent as the password, which needs username".into(),
            ],
        ),
        (
            "username = \"u\"\n[sink.mqtt.per_device.token]\nkind = \"jwt\"\nkey_file = \"/nonexistent/key.pem\"".into(),
            vec!["sink.mqtt.per_device.token.key_file: \"/nonexistent/key.pem\"".into()],
        ),
        (
            "username = \"u\"\n[sink.mqtt.per_device.token]\nkind = \"bearer\"\nttl = \"1h\"\nrenew_before = \"1h\"".into(),
            vec![
                "sink.mqtt.per_device.token.kind: expected \"jwt\" or \"sas\", got \"bearer\"".into(),
                "sink.mqtt.per_device.token.renew_before: must be at least 1s and leave at least 5s of the ttl (3600000ms), got 3600000ms".into(),
            ],
        ),
        (
            "username = \"u\"\n[sink.mqtt.per_device.token]\nkind = \"sas\"\nsecret_env = \"IOTSIM_TEST_SURELY_UNSET_KEY\"\nclaims = { sub = \"x\" }".into(),
            vec![
                "sink.mqtt.per_device.token.secret_env: environment variable \"IOTSIM_TEST_SURELY_UNSET_KEY\" holds no secret".into(),
                "sink.mqtt.per_device.token.claims: a kind = \"jwt\" key".into(),
                "sink.mqtt.per_device.token.resource: missing".into(),
            ],
        ),
        (
            "username = \"u\"\n[sink.mqtt.per_device.token]\nkind = \"jwt\"".into(),
            vec!["sink.mqtt.per_device.token.key_file: missing: a jwt needs key_file (RS256, ES256) or secret_env (HS256)".into()],
        ),
    ];
    for (extra, wants) in cases {
        let out = validate_within(d, &base(&extra), 30);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        for want in wants {
            assert!(err.contains(&want), "missing {want:?} for\n{extra}\nin:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    // A good one passes (HS256 from an environment variable).
    let ok = base(
        "username = \"u\"\n[sink.mqtt.per_device.token]\nkind = \"jwt\"\nsecret_env = \"HOME\"\nttl = \"1m\"",
    );
    let out = validate_within(d, &ok, 30);
    assert!(out.status.success(), "{}", stderr(&out));
}
