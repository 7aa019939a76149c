//! A certificate per device (`[sink.mqtt.per_device.identity]`) against a private Mosquitto
//! that enforces identities: a TLS listener with `require_certificate true` and
//! `use_identity_as_username true` (the certificate's CN is the username) and an ACL
//! `pattern write devices/%u/#`, so a device may publish only under its own certificate's
//! name. A subscriber on the broker's plain listener sees what arrives. The CAs are made with
//! openssl at test time (`common::tls::make_certs`), never committed.

use crate::common;
use crate::common::fleet::Fleet;
use crate::grpc_common::{disconnect, wait_until};

use common::mqtt::{Broker, Subscriber};
use common::tls::openssl;
use common::*;
use iot_sim::control::proto::device_runtime_service_client::DeviceRuntimeServiceClient;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A temporary folder the broker (which drops root to its own user) can read, with a test CA
/// (`ca.pem`/`ca.key`, RSA) and the broker's certificate for 127.0.0.1.
fn pki_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    common::tls::make_certs(dir.path());
    dir
}

/// The `[sink.mqtt.per_device.identity]` body of certificates generated from the test CA in `d`,
/// with `extra` lines.
fn generated_identity(d: &Path, extra: &str) -> String {
    format!("ca_cert = \"{0}/ca.pem\"\nca_key = \"{0}/ca.key\"\n{extra}", d.display())
}

/// A broker with a plain listener (returned first: the subscriber's, anonymous) and a TLS
/// listener that requires a client certificate signed by `ca.pem` and takes its CN as the
/// username; devices may write only under `devices/<their CN>/`, Sparkplug edge nodes only on
/// their own node's topics (`spBv1.0/GROUP/TYPE/<their CN>/...`). The anonymous subscriber may
/// read both.
fn identity_broker(d: &Path) -> (u16, u16, Broker) {
    let acl = d.join("acl");
    std::fs::write(
        &acl,
        "# anonymous (the test's subscribers on the plain listener)\ntopic readwrite devices/#\n\
         topic readwrite spBv1.0/#\n\
         # every client with a name: its own subtree only (a Sparkplug edge node: its own\n\
         # node's topics, spBv1.0/GROUP/TYPE/NODE[/DEVICE])\npattern write devices/%u/#\n\
         pattern readwrite spBv1.0/+/+/%u/#\n",
    )
    .unwrap();
    std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (plain, tls) = (free_port(), free_port());
    let broker = Broker::with_conf(
        plain,
        d,
        &format!(
            "allow_anonymous true\nacl_file {acl}\nlistener {tls} 127.0.0.1\n\
             cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\n",
            acl = acl.display(),
            d = d.display()
        ),
    );
    assert!(wait_port(tls), "the TLS listener did not open:\n{}", broker.log());
    (plain, tls, broker)
}

/// A fleet of per-device sessions over `mqtts://127.0.0.1:PORT`, MQTT 5 (a refused publish
/// comes back as a PUBACK with "not authorized"), 10 msg/s per device for 2 s.
fn fleet(port: u16, d: &Path, identity: &str, profiles: &[(&str, u32, &str)]) -> String {
    let mut f = Fleet::new()
        .run(7, "realtime", "2026-03-14T00:00:00Z", "2s")
        .sink("mqtt")
        .set("url", format!("mqtts://127.0.0.1:{port}"))
        .set("version", 5)
        .set("qos", 1)
        .set("backoff_initial", "50ms")
        .set("backoff_max", "400ms")
        .set("ca_file", format!("{}/ca.pem", d.display()))
        .raw(&format!("\n[sink.mqtt.per_device.identity]\n{identity}\n"));
    for (name, count, topic) in profiles {
        f = f
            .devices(name, *count)
            .profile(name, "mqtt", "100ms")
            .set("connection", "per_device")
            .set("topic", *topic)
            .set("seq", true)
            .gaussian(name, "t", 20, 1);
    }
    f.toml()
}

/// Every message the subscriber got came on its own device's topic; the devices seen.
fn own_topics(got: &[(String, Vec<u8>)]) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for (topic, payload) in got {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let id = v["device_id"].as_str().unwrap();
        assert_eq!(topic, &format!("devices/{id}/telemetry"), "a device on another's topic");
        *seen.entry(id.to_string()).or_insert(0) += 1;
    }
    seen
}

fn event(r: &serde_json::Value, name: &str) -> u64 {
    r["sink_events"][format!("mqtt.{name}")].as_u64().unwrap_or(0)
}

#[test]
fn generated_certificates_put_each_device_on_its_own_topic_and_a_foreign_topic_is_refused() {
    let dir = pki_dir();
    let d = dir.path();
    let (plain, tls, broker) = identity_broker(d);
    let sub = Subscriber::start(plain, "devices/#");
    let identity = generated_identity(d, "subject_cn = \"{device_id}\"");
    let toml = fleet(
        tls,
        d,
        &identity,
        &[
            ("meter", 5, "devices/{device_id}/telemetry"),
            // Its CN is sneaky-0000: the ACL lets it write under devices/sneaky-0000/ only.
            ("sneaky", 1, "devices/elsewhere/{device_id}"),
        ],
    );
    let r = run_ok(d, &toml, &["--cores", "2"]);
    let rows = r["runs"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|x| x["device_type"] == name).unwrap().clone();
    let (meter, sneaky) = (row("meter"), row("sneaky"));
    assert_eq!(meter["messages"], 100, "{r}");
    assert_eq!(meter["errors"], 0, "{r}");
    // The broker refuses every publish outside the device's own subtree, counted by reason;
    // the other devices run on.
    assert_eq!(sneaky["published"], 20, "{r}");
    assert_eq!(sneaky["errors"], 20, "{r}");
    assert_eq!(sneaky["error_kinds"]["not_authorized"], 20, "{r}");
    // One certificate per device, made once.
    assert_eq!(event(&r, "session_identity_issued"), 6, "{r}");
    assert_eq!(event(&r, "session_connected"), 6, "{r}");
    let got = sub.wait_for(100);
    let seen = own_topics(&got);
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.values().all(|n| *n == 20), "{seen:?}");
    // The broker saw each device under its certificate's name.
    let log = broker.log();
    for i in 0..5 {
        assert!(log.contains(&format!("u'meter-000{i}'")), "meter-000{i} not seen by name:\n{log}");
    }
}

#[test]
fn certs_issue_output_verifies_and_a_device_with_a_foreign_ca_is_refused_while_the_others_run() {
    let dir = pki_dir();
    let d = dir.path();
    let (plain, tls, _broker) = identity_broker(d);
    // `certs issue` for the fleet, with the generated identity's settings.
    let generated = generated_identity(
        d,
        "not_before = 2026-01-01T00:00:00Z\nvalidity = \"3650d\"\n\
         sans = [\"{device_id}.devices.example\"]",
    );
    let profiles = [("meter", 5, "devices/{device_id}/telemetry")];
    let cfg = d.join("issue.toml");
    std::fs::write(&cfg, fleet(tls, d, &generated, &profiles)).unwrap();
    let issue = |out: &str, seed: &str| {
        let o = bin()
            .args(["certs", "issue", "--config", cfg.to_str().unwrap(), "--out"])
            .arg(d.join(out))
            .args(["--seed", seed])
            .output()
            .unwrap();
        assert!(o.status.success(), "certs issue: {}", stderr(&o));
    };
    issue("certs", "11");
    issue("again", "11");
    issue("other", "12");
    let certs = d.join("certs");
    let manifest = std::fs::read_to_string(certs.join("manifest.csv")).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(
        lines[0],
        "device_id,client_id,subject,serial,fingerprint_sha256,not_after,cert_path,key_path"
    );
    assert_eq!(lines.len(), 6, "{manifest}");
    for (i, line) in lines[1..].iter().enumerate() {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols[0], format!("meter-000{i}"), "{line}");
        assert_eq!(cols[2], format!("CN=meter-000{i}"), "{line}");
        assert_eq!(cols[5], "2035-12-30T00:00:00.000Z", "{line}");
        // The fingerprint and serial are the certificate's, as openssl reads them.
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-fingerprint", "-sha256", "-in", cols[6]])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains(&format!("serial={}", cols[3])), "{text} vs {line}");
        let fp = cols[4].to_uppercase();
        let colons: Vec<String> =
            fp.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        assert!(text.contains(&colons.join(":")), "{text} vs {line}");
    }
    // openssl accepts every certificate against the CA, for client authentication.
    let pems: Vec<String> =
        (0..5).map(|i| certs.join(format!("meter-000{i}.pem")).display().to_string()).collect();
    let mut args = vec!["verify", "-purpose", "sslclient", "-CAfile"];
    let ca = d.join("ca.pem").display().to_string();
    args.push(&ca);
    args.extend(pems.iter().map(String::as_str));
    let out = std::process::Command::new("openssl").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches(": OK").count(), 5, "{text}");
    // The same seed gives the same files; another seed other ones.
    for f in ["meter-0003.pem", "meter-0003.key"] {
        let a = std::fs::read(certs.join(f)).unwrap();
        assert_eq!(a, std::fs::read(d.join("again").join(f)).unwrap(), "{f}");
        assert_ne!(a, std::fs::read(d.join("other").join(f)).unwrap(), "{f}");
    }
    // meter-0004 gets a certificate of a CA the broker does not know.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rogue CA",
        ],
    );
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "certs/meter-0004.key",
            "-out",
            "m4.csr",
            "-subj",
            "/CN=meter-0004",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "m4.csr",
            "-CA",
            "rogue.pem",
            "-CAkey",
            "rogue.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "certs/meter-0004.pem",
            "-extfile",
            "client.ext",
        ],
    );
    // The run reads each device's files (pre-provisioned identities).
    let files = format!(
        "cert_file = \"{0}/{{device_id}}.pem\"\nkey_file = \"{0}/{{device_id}}.key\"",
        certs.display()
    );
    let sub = Subscriber::start(plain, "devices/#");
    let r = run_ok(d, &fleet(tls, d, &files, &profiles), &["--cores", "1"]);
    assert_eq!(event(&r, "session_identity_loaded"), 5, "{r}");
    assert_eq!(event(&r, "session_connected"), 4, "{r}");
    let refused: u64 = r["sink_events"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("mqtt.session_refused_tls_"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert!(refused >= 1, "the foreign certificate's refusal is counted by reason: {r}");
    let got = sub.wait_for(80);
    let seen = own_topics(&got);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["meter-0000", "meter-0001", "meter-0002", "meter-0003"]
    );
    assert!(seen.values().all(|n| *n == 20), "{seen:?}");
}

#[test]
fn bad_identity_settings_are_each_listed_with_their_path_and_exit_2() {
    let dir = pki_dir();
    let d = dir.path();
    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
    // ca.key of make_certs is RSA; server.pem is another certificate: the key does not match.
    let identity = format!(
        "ca_cert = \"{0}/server.pem\"\nca_key = \"{0}/ca.key\"\nsubject_cn = \"fleet\"\n\
         key = \"dsa_1024\"\nvalidity = \"soon\"",
        d.display()
    );
    let toml = fleet(8883, d, &identity, &[("meter", 2, "devices/{device_id}/telemetry")]);
    let out = validate_within(d, &toml, 30);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for want in [
        "sink.mqtt.per_device.identity.ca_key: ",
        "does not match ca_cert",
        "sink.mqtt.per_device.identity.subject_cn: must contain {device_id}",
        "sink.mqtt.per_device.identity.key: unknown key type \"dsa_1024\"",
        "sink.mqtt.per_device.identity.validity: ",
        "\"soon\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Unreadable and malformed PEM, and both kinds of identity at once.
    let identity = format!(
        "ca_cert = \"{0}/junk.pem\"\nca_key = \"{0}/nowhere.key\"\n\
         cert_file = \"c/{{device_id}}.pem\"\nkey_file = \"c/{{device_id}}.key\"",
        d.display()
    );
    let toml = fleet(8883, d, &identity, &[("meter", 2, "devices/{device_id}/telemetry")]);
    let out = validate_within(d, &toml, 30);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("exclude each other"), "{err}");
    let identity = format!("ca_cert = \"{0}/junk.pem\"\nca_key = \"{0}/nowhere.key\"", d.display());
    let toml = fleet(8883, d, &identity, &[("meter", 2, "devices/{device_id}/telemetry")]);
    let err = stderr(&validate_within(d, &toml, 30));
    assert!(err.contains("sink.mqtt.per_device.identity.ca_key: cannot read"), "{err}");
    assert!(err.contains("sink.mqtt.per_device.identity.ca_cert: "), "{err}");
    assert!(err.contains("no PEM CERTIFICATE block"), "{err}");
    // An identity on a plain mqtt:// URL.
    let toml = fleet(
        8883,
        d,
        &generated_identity(d, ""),
        &[("meter", 2, "devices/{device_id}/telemetry")],
    )
    .replace("mqtts://", "mqtt://");
    let err = stderr(&validate_within(d, &toml, 30));
    assert!(err.contains("sink.mqtt.url: TLS settings"), "{err}");
}

/// How many times the broker logged a connection of client `id` with username `id` (the CN of
/// the certificate it presented).
fn connections_as(broker: &Broker, id: &str) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains(&format!(" as {id} ")) && l.contains(&format!("u'{id}'")))
        .count()
}

/// Whether the broker logged a PUBLISH from client `id` on its own topic after its latest
/// connection.
fn published_own_since_connect(broker: &Broker, id: &str) -> bool {
    let log = broker.log();
    log.rfind(&format!(" as {id} ")).is_some_and(|at| {
        log[at..].lines().any(|l| {
            l.contains(&format!("Received PUBLISH from {id} "))
                && l.contains(&format!("'devices/{id}/telemetry'"))
        })
    })
}

/// A DISCONNECT fault drops two sessions; each reconnects presenting the certificate it was
/// issued at its first connect (made once: `session_identity_issued` stays at one per device
/// while `session_connected` counts the reconnects), is seen by the broker under its CN again,
/// and publishes on its own topic again; what it produced while down arrives too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_reconnect_presents_the_same_certificate_and_publishes_on_its_own_topic() {
    let dir = pki_dir();
    let d = dir.path();
    let (plain, tls, broker) = identity_broker(d);
    let sub = Subscriber::start(plain, "devices/#");
    let identity = generated_identity(d, "subject_cn = \"{device_id}\"");
    // Until terminated (the 5 minutes only bound a test gone wrong).
    let toml = fleet(tls, d, &identity, &[("meter", 3, "devices/{device_id}/telemetry")])
        .replace("duration = \"2s\"", "duration = \"5m\"");
    let cfg = d.join("fleet.toml");
    std::fs::write(&cfg, toml).unwrap();
    let report_dir = d.join("report");
    let mut rt = Running::with_config("run", &cfg, Some(&report_dir), &[]);
    let ids = ["meter-0000", "meter-0001", "meter-0002"];
    // Publishing: the session has its CONNACK (a drop before it would not be a reconnect).
    wait_until(60, "every session connected under its CN and publishing", || {
        ids.iter()
            .all(|id| connections_as(&broker, id) == 1 && published_own_since_connect(&broker, id))
    })
    .await;
    let mut c = DeviceRuntimeServiceClient::connect(rt.url()).await.unwrap();
    c.inject_fault(disconnect(&ids[..2], "abrupt", 2)).await.unwrap();
    wait_until(60, "both faulted sessions back under their CN", || {
        connections_as(&broker, ids[0]) == 2 && connections_as(&broker, ids[1]) == 2
    })
    .await;
    wait_until(30, "both publishing on their own topics after the reconnect", || {
        published_own_since_connect(&broker, ids[0]) && published_own_since_connect(&broker, ids[1])
    })
    .await;
    assert_eq!(connections_as(&broker, ids[2]), 1, "an untouched device kept its session");
    assert!(rt.terminate().success(), "{:?}", rt.lines());
    let log = broker.log();
    assert!(!log.contains("Denied PUBLISH"), "a publish outside its own subtree:\n{log}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    // Made once per device, presented on every connect.
    assert_eq!(event(&r, "session_identity_issued"), 3, "{r}");
    assert_eq!(event(&r, "session_connected"), 5, "{r}");
    assert_eq!(event(&r, "session_reconnected"), 2, "{r}");
    assert_eq!(event(&r, "session_dropped_abrupt"), 2, "{r}");
    // Each reconnect resumed the device's own TLS session from the ticket it kept (the broker
    // issues TLS 1.3 tickets; the certificate is not sent again).
    assert_eq!(event(&r, "session_tls_resumed"), 2, "{r}");
    // What the devices produced while down was queued and delivered on their own topics.
    let row = &r["runs"][0];
    assert_eq!(row["errors"], 0, "{row}");
    assert_eq!(row["dropped"], 0, "{row}");
    let sent = row["messages"].as_u64().unwrap() as usize;
    let got = sub.wait_for(sent);
    assert_eq!(own_topics(&got).len(), 3);
    // At least once: what was in flight at the drop may come twice; every seq comes.
    let mut seqs = std::collections::BTreeSet::new();
    for (_, payload) in &got {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        seqs.insert((v["device_id"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap()));
    }
    assert_eq!(seqs.len(), sent, "{row}");
}

/// `key = "rsa_2048"`: each device's generated certificate has an RSA-2048 key (the same one
/// `certs issue` writes for the seed: generation is deterministic), the broker accepts it and
/// sees the device under its CN, and every message arrives on the device's own topic.
#[test]
fn rsa_2048_device_certificates_are_accepted_and_each_device_publishes_on_its_own_topic() {
    let dir = pki_dir();
    let d = dir.path();
    let (plain, tls, broker) = identity_broker(d);
    let sub = Subscriber::start(plain, "devices/#");
    let identity = generated_identity(
        d,
        "key = \"rsa_2048\"\nnot_before = 2026-01-01T00:00:00Z\nvalidity = \"3650d\"",
    );
    let toml = fleet(tls, d, &identity, &[("meter", 2, "devices/{device_id}/telemetry")]);
    let t0 = std::time::Instant::now();
    let r = run_ok(d, &toml, &["--cores", "1"]);
    let run_s = t0.elapsed().as_secs_f64();
    assert_eq!(event(&r, "session_identity_issued"), 2, "{r}");
    assert_eq!(event(&r, "session_connected"), 2, "{r}");
    let row = &r["runs"][0];
    assert_eq!(row["errors"], 0, "{r}");
    let sent = row["messages"].as_u64().unwrap() as usize;
    assert!(sent >= 20, "{r}");
    let got = sub.wait_for(sent);
    assert_eq!(got.len(), sent);
    let seen = own_topics(&got);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["meter-0000", "meter-0001"]);
    let log = broker.log();
    for id in ["meter-0000", "meter-0001"] {
        assert!(log.contains(&format!("u'{id}'")), "{id} not seen by name:\n{log}");
    }
    // The certificates presented (same config, same seed) carry RSA-2048 keys.
    let cfg = d.join("rsa.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let t0 = std::time::Instant::now();
    let o = bin()
        .args(["certs", "issue", "--config", cfg.to_str().unwrap(), "--out"])
        .arg(d.join("rsa"))
        .output()
        .unwrap();
    let issue_s = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "certs issue: {}", stderr(&o));
    for id in ["meter-0000", "meter-0001"] {
        let pem = d.join("rsa").join(format!("{id}.pem"));
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("rsaEncryption"), "{text}");
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains(&format!("Subject: CN = {id}")), "{text}");
    }
    // The debug build's cost of RSA key generation (deps are built at opt-level 2).
    eprintln!(
        "rsa_2048: run of 2 s with 2 devices took {run_s:.1} s; certs issue for 2: {issue_s:.1} s"
    );
}

/// A Sparkplug edge node is one MQTT session for its devices: `{device_id}` in its login names
/// the node, so its certificate's CN is the node's id; the ACL lets it write only on its own
/// node's topics, and every birth and data message arrives. Over the plain listener (no
/// certificate) the username template renders the node's id the same way.
#[test]
fn a_sparkplug_edge_node_logs_in_as_itself_with_its_own_certificate() {
    let dir = pki_dir();
    let d = dir.path();
    let (plain, tls, broker) = identity_broker(d);
    let group = "plant";
    let sub = Subscriber::start(plain, &format!("spBv1.0/{group}/#"));
    let spb = |url: &str, group: &str, sink_extra: &str| {
        let mut text = format!(
            r#"
[run]
seed = 7
clock = "realtime"
start_time = "2026-03-14T00:00:00Z"
duration = "3s"

[sink.mqtt]
url = "{url}"
version = 5
qos = 1
backoff_initial = "50ms"
backoff_max = "400ms"
{sink_extra}

[profiles.press]
protocol = "mqtt"
topic = "unused/{{device_id}}"
interval = "200ms"
format = "sparkplug_b"

[profiles.press.sparkplug]
group_id = "{group}"
edge_node = "{{labels.line}}"

[profiles.press.fields.t]
type = "gaussian"
mean = 20
stddev = 1
"#
        );
        for line in ["line0", "line1"] {
            text.push_str(&format!(
                "\n[[fleet]]\nprofile = \"press\"\ncount = 2\nlabels = {{ line = \"{line}\" }}\n"
            ));
        }
        text
    };
    let identity = format!(
        "ca_file = \"{0}/ca.pem\"\n[sink.mqtt.per_device.identity]\nca_cert = \"{0}/ca.pem\"\n\
         ca_key = \"{0}/ca.key\"\nsubject_cn = \"{{device_id}}\"",
        d.display()
    );
    let r = run_ok(d, &spb(&format!("mqtts://127.0.0.1:{tls}"), group, &identity), &[]);
    // One certificate per edge node, not per device.
    assert_eq!(event(&r, "session_identity_issued"), 2, "{r}");
    assert_eq!(event(&r, "session_connected"), 2, "{r}");
    let row = &r["runs"][0];
    assert_eq!(row["errors"], 0, "{r}");
    let sent = row["published"].as_u64().unwrap() as usize;
    let got = sub.wait_for(sent);
    let topics: std::collections::BTreeSet<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "spBv1.0/plant/NBIRTH/line0",
        "spBv1.0/plant/NBIRTH/line1",
        "spBv1.0/plant/DBIRTH/line0/press-0000",
        "spBv1.0/plant/DDATA/line0/press-0001",
        "spBv1.0/plant/DBIRTH/line1/press-0002",
        "spBv1.0/plant/DDATA/line1/press-0003",
    ] {
        assert!(topics.contains(want), "{want} missing from {topics:?}");
    }
    // The broker saw each node under its certificate's CN: the node's id.
    let log = broker.log();
    for node in ["line0", "line1"] {
        assert!(
            log.lines().any(|l| l.contains(&format!(" as spb-plant-{node} "))
                && l.contains(&format!("u'{node}'"))),
            "{node} not seen by name:\n{log}"
        );
    }
    assert!(!log.contains("u'press-"), "a node logged in as one of its devices:\n{log}");
    assert!(!log.contains("Denied PUBLISH"), "{log}");
    // `certs issue` writes the nodes' identities, as the run made them.
    let cfg = d.join("spb.toml");
    std::fs::write(&cfg, spb(&format!("mqtts://127.0.0.1:{tls}"), group, &identity)).unwrap();
    let o = bin()
        .args(["certs", "issue", "--config", cfg.to_str().unwrap(), "--out"])
        .arg(d.join("nodes"))
        .output()
        .unwrap();
    assert!(o.status.success(), "certs issue: {}", stderr(&o));
    let manifest = std::fs::read_to_string(d.join("nodes").join("manifest.csv")).unwrap();
    let rows: Vec<Vec<&str>> =
        manifest.lines().skip(1).map(|l| l.split(',').take(3).collect()).collect();
    assert_eq!(
        rows,
        [["line0", "spb-plant-line0", "CN=line0"], ["line1", "spb-plant-line1", "CN=line1"]],
        "{manifest}"
    );
    // No certificate: the username template names the node too.
    let r = run_ok(
        d,
        &spb(
            &format!("mqtt://127.0.0.1:{plain}"),
            "plain",
            "[sink.mqtt.per_device]\nusername = \"{device_id}\"",
        ),
        &[],
    );
    assert_eq!(event(&r, "session_connected"), 2, "{r}");
    assert_eq!(r["runs"][0]["errors"], 0, "{r}");
    let log = broker.log();
    for node in ["line0", "line1"] {
        assert!(
            log.lines().any(|l| l.contains(&format!(" as spb-plain-{node} "))
                && l.contains(&format!("u'{node}'"))),
            "{node} not seen by name:\n{log}"
        );
    }
}
