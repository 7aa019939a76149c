//! MQTT 5 PUBLISH properties (`[profiles.X.mqtt5]`, issue 22) as an independent client sees
//! them: a paho-mqtt v5 subscriber (Python) on the machine's Mosquitto (127.0.0.1:1883) reads
//! the user properties, content type, message expiry and payload format indicator of every
//! message, from pooled connections and per-device sessions, and every topic the broker
//! resolved from our topic aliases. On MQTT 3.1.1 the block is ignored with a warning.

use crate::common::{bin, report, stderr, unique};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A paho-mqtt MQTT 5 subscriber to `ROOT/#` (QoS 1): prints `ready` once subscribed, then
/// reads the number of messages to wait for from stdin and prints them all as one JSON array
/// (topic, payload, and the properties paho decoded).
const SUBSCRIBER: &str = r#"
import json, sys, threading, time
import paho.mqtt.client as mqtt
root = sys.argv[1]
kw = {}
if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
    kw["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION1
c = mqtt.Client(client_id=root + "-sub", protocol=mqtt.MQTTv5, **kw)
msgs, lock, ready = [], threading.Lock(), threading.Event()
def on_connect(c, u, flags, rc, props=None):
    c.subscribe(root + "/#", qos=1)
def on_subscribe(c, u, mid, rcs, props=None):
    ready.set()
def on_message(c, u, m):
    p = getattr(m, "properties", None)
    d = {"topic": m.topic, "payload": m.payload.decode("utf-8", "replace")}
    for key, name in [("user", "UserProperty"), ("content_type", "ContentType"),
                      ("expiry", "MessageExpiryInterval"), ("pfi", "PayloadFormatIndicator")]:
        v = getattr(p, name, None) if p is not None else None
        d[key] = [list(x) for x in v] if key == "user" and v is not None else v
    with lock:
        msgs.append(d)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", 1883)
c.loop_start()
if not ready.wait(30):
    sys.exit("no SUBACK from 127.0.0.1:1883")
print("ready", flush=True)
n = int(sys.stdin.readline())
deadline = time.time() + 60
while time.time() < deadline:
    with lock:
        if len(msgs) >= n:
            break
    time.sleep(0.05)
c.loop_stop()
print(json.dumps(msgs), flush=True)
"#;

/// `/usr/bin/python3` with paho-mqtt (Debian's python3-paho-mqtt), else the first python3.
fn python() -> Command {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import paho.mqtt.client"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Command::new(p);
        }
    }
    panic!(
        "python3 with paho-mqtt is needed: apt-get install python3-paho-mqtt (scripts/services.sh)"
    );
}

struct Sub {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Sub {
    fn start(root: &str) -> Sub {
        let mut child = python()
            .args(["-c", SUBSCRIBER, root])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the paho subscriber did not subscribe");
        Sub { child, out }
    }

    /// Waits for `n` messages (at most a minute) and returns every message received.
    fn collect(mut self, n: u64) -> Vec<serde_json::Value> {
        writeln!(self.child.stdin.as_mut().unwrap(), "{n}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        serde_json::from_str::<Vec<serde_json::Value>>(&line).expect("the subscriber's JSON")
    }
}

/// 12 pooled thermostats on one connection (more topics than Mosquitto's default Topic Alias
/// Maximum of 10) at two sites, and 3 meters with their own sessions, over 30 virtual seconds.
fn fleet(dir: &Path, root: &str, version: u8) -> std::path::PathBuf {
    let text = format!(
        r#"
[run]
seed = 5
clock = "virtual"
start_time = "2026-03-14T00:00:00Z"
duration = "30s"
report_dir = "{report}"

[sink.mqtt]
url = "mqtt://127.0.0.1:1883"
version = {version}
pool_size = 1
qos = 1
client_id_prefix = "{root}"

[sink.mqtt.per_device]
client_id = "{root}-{{device_id}}"

[[fleet]]
profile = "thermo"
count = 6
labels = {{ site = "north" }}

[[fleet]]
profile = "thermo"
count = 6
labels = {{ site = "south" }}

[[fleet]]
profile = "meter"
count = 3
labels = {{ site = "east" }}

[profiles.thermo]
protocol = "mqtt"
interval = "2s"
seq = true
topic = "{root}/{{labels.site}}/{{device_id}}"

[profiles.thermo.mqtt5]
user_properties = {{ site = "{{labels.site}}", fw = "1.4.2", dev = "{{device_type}}:{{device_id}}" }}
message_expiry = "10m"
topic_alias = true

[profiles.thermo.fields.t]
type = "gaussian"
mean = 20
stddev = 1

[profiles.meter]
protocol = "mqtt"
connection = "per_device"
interval = "2s"
seq = true
topic = "{root}/m/{{device_id}}"
format = "flat"
content_type = "application/vnd.acme+json"

[profiles.meter.mqtt5]
user_properties = {{ site = "{{labels.site}}" }}
message_expiry = "1h"
topic_alias = true
payload_format_indicator = true

[profiles.meter.fields.p]
type = "gaussian"
mean = 230
stddev = 4
"#,
        report = dir.join("report").display(),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the fleet with a paho subscriber listening; the run's stderr, report row and messages.
fn run(version: u8) -> (String, String, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let root = unique("iotsim-mqtt5");
    let cfg = fleet(dir.path(), &root, version);
    let sub = Sub::start(&root);
    let out = bin().args(["--config", cfg.to_str().unwrap(), "--cores", "1"]).output().unwrap();
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let r = report(dir.path());
    assert_eq!((r["errors"].as_u64(), r["dropped"].as_u64()), (Some(0), Some(0)), "{r}");
    let n = r["messages"].as_u64().unwrap();
    assert!(n >= 15 * 10, "{r}");
    let got = sub.collect(n);
    assert_eq!(got.len() as u64, n, "the subscriber got every message the run delivered");
    (stderr(&out), root, got)
}

#[test]
fn a_paho_v5_subscriber_sees_the_properties_and_every_aliased_topic_resolved() {
    let (_, root, got) = run(5);
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in &got {
        let topic = m["topic"].as_str().unwrap();
        let v: serde_json::Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
        let id = v["device_id"].as_str().unwrap();
        let user: Vec<(String, String)> =
            serde_json::from_value(m["user"].clone()).expect("user properties");
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        if id.starts_with("thermo") {
            let site = user.iter().find(|(k, _)| k == "site").map(|x| x.1.clone()).unwrap();
            assert!(site == "north" || site == "south", "{m}");
            // The topic the broker resolved (from an alias, or the topic itself) is the device's.
            assert_eq!(topic, format!("{root}/{site}/{id}"), "{m}");
            assert_eq!(
                user,
                vec![
                    pair("dev", &format!("thermo:{id}")),
                    pair("fw", "1.4.2"),
                    pair("site", &site)
                ],
                "{m}"
            );
            assert_eq!(m["content_type"], "application/json", "{m}");
            let expiry = m["expiry"].as_u64().expect("message expiry");
            assert!(expiry > 0 && expiry <= 600, "{m}");
            assert!(m["pfi"].is_null(), "{m}");
        } else {
            assert!(id.starts_with("meter"), "{m}");
            assert_eq!(topic, format!("{root}/m/{id}"), "{m}");
            assert_eq!(user, vec![pair("site", "east")], "{m}");
            assert_eq!(m["content_type"], "application/vnd.acme+json", "{m}");
            let expiry = m["expiry"].as_u64().expect("message expiry");
            assert!(expiry > 600 && expiry <= 3600, "{m}");
            assert_eq!(m["pfi"], 1, "{m}");
        }
        seqs.entry(id.to_string()).or_default().push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), 15, "every device published");
    for (id, mut s) in seqs {
        s.sort_unstable();
        let want: Vec<u64> = (0..s.len() as u64).collect();
        assert_eq!(s, want, "{id}: lost or duplicated");
    }
}

#[test]
fn on_mqtt_311_the_mqtt5_block_is_ignored_with_a_warning() {
    let (err, _, got) = run(4);
    for name in ["thermo", "meter"] {
        assert!(
            err.contains(&format!("[profiles.{name}.mqtt5] is ignored")) && err.contains("3.1.1"),
            "no warning for {name}: {err}"
        );
    }
    for m in &got {
        assert!(m["user"].is_null() && m["content_type"].is_null(), "{m}");
        assert!(m["expiry"].is_null(), "{m}");
    }
}

#[test]
fn bad_mqtt5_keys_are_listed_with_paths_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path(), "iotsim-bad", 5);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "message_expiry = \"10m\"\ntopic_alias = true",
        "message_expiry = \"0s\"\ntopic_alias = 1",
    );
    let text = text.replace("message_expiry = \"1h\"", "message_expiry = \"an hour\"");
    std::fs::write(&cfg, text).unwrap();
    let out = bin().args(["--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for want in [
        "profiles.thermo.mqtt5.message_expiry: must be at least 1s, got \"0s\"",
        "profiles.thermo.mqtt5.topic_alias: expected true or false, got an integer 1",
        "profiles.meter.mqtt5.message_expiry",
        "an hour",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn payload_preview_shows_the_mqtt5_properties_of_each_device() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path(), "iotsim-preview", 5);
    let out = bin()
        .args(["payload", "preview", "--config", cfg.to_str().unwrap(), "--profile", "thermo"])
        .args(["--count", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("mqtt5: ")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("content_type=\"application/json\", message_expiry=600s, topic_alias")
    );
    assert!(lines[0].contains("user_property \"dev\"=\"thermo:thermo-0000\""), "{text}");
    assert!(lines[1].contains("user_property \"site\"=\"north\""), "{text}");
}

/// `mqtt5` in gRPC `behavior_params`: a spawned device's PUBLISH packets carry the
/// properties as paho sees them, an UpdateDeviceBehavior replaces them, and bad values are
/// INVALID_ARGUMENT with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spawns_and_updates_take_the_mqtt5_keys() {
    use crate::common::Running;
    use crate::grpc_common::{obj, objv, spec, text};
    use iot_sim::control::proto::{
        self, device_runtime_service_client::DeviceRuntimeServiceClient, device_selector::Selector,
    };
    let dir = tempfile::tempdir().unwrap();
    let root = unique("m5grpc");
    let cfg = dir.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!("[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nversion = 5\nqos = 1\nclient_id_prefix = \"{root}\"\n"),
    )
    .unwrap();
    let sub = Sub::start(&root);
    let mut server = Running::with_config("serve", &cfg, None, &["--cores", "2"]);
    let mut c = DeviceRuntimeServiceClient::connect(server.url()).await.unwrap();
    let with = |id: &str, mqtt5: prost_types::Value| {
        let mut s = spec(id, "meter", &[("site", "x")], 500, "mqtt");
        s.topic_template = format!("{root}/{{device_id}}");
        let fields = s.behavior_params.take().unwrap().fields["fields"].clone();
        s.behavior_params = Some(obj(vec![("fields", fields), ("mqtt5", mqtt5)]));
        s
    };
    let props = || {
        objv(vec![
            ("user_properties", objv(vec![("site", text("{labels.site}")), ("fw", text("2.0"))])),
            ("message_expiry", text("10m")),
            (
                "topic_alias",
                prost_types::Value { kind: Some(prost_types::value::Kind::BoolValue(true)) },
            ),
            (
                "payload_format_indicator",
                prost_types::Value { kind: Some(prost_types::value::Kind::BoolValue(true)) },
            ),
        ])
    };
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest {
            specs: vec![with("p-1", props()), with("p-2", props())],
            scenario_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 2, "{r:?}");
    let only_p2 = Some(proto::DeviceSelector {
        selector: Some(Selector::DeviceIds(proto::DeviceIdList { ids: vec!["p-2".into()] })),
    });
    let new = objv(vec![
        ("user_properties", objv(vec![("fw", text("3.0"))])),
        ("message_expiry", text("30s")),
    ]);
    c.update_device_behavior(proto::UpdateDeviceBehaviorRequest {
        selector: only_p2.clone(),
        behavior_params: Some(obj(vec![("mqtt5", new)])),
    })
    .await
    .unwrap();
    // Bad values: INVALID_ARGUMENT with the reason, on a spawn and on an update.
    let bad = || objv(vec![("message_expiry", text("1500ms"))]);
    let e = c
        .spawn_devices(proto::SpawnDevicesRequest {
            specs: vec![with("p-bad", bad())],
            scenario_id: String::new(),
        })
        .await;
    let got = match e {
        Err(e) => e.message().to_string(),
        Ok(r) => format!("{:?}", r.into_inner()),
    };
    assert!(got.contains("mqtt5.message_expiry") && got.contains("whole seconds"), "{got}");
    let e = c
        .update_device_behavior(proto::UpdateDeviceBehaviorRequest {
            selector: only_p2,
            behavior_params: Some(obj(vec![("mqtt5", bad())])),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("whole seconds"), "{}", e.message());
    let got = tokio::task::spawn_blocking(move || sub.collect(12)).await.unwrap();
    server.terminate();
    let user = |m: &serde_json::Value| -> Vec<(String, String)> {
        serde_json::from_value(m["user"].clone()).expect("user properties")
    };
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let of = |id: &str| -> Vec<&serde_json::Value> {
        got.iter().filter(|m| m["topic"] == format!("{root}/{id}")).collect()
    };
    let (one, two) = (of("p-1"), of("p-2"));
    assert!(!one.is_empty() && !two.is_empty(), "{got:?}");
    for m in &one {
        assert_eq!(user(m), vec![pair("fw", "2.0"), pair("site", "x")], "{m}");
        let expiry = m["expiry"].as_u64().expect("message expiry");
        assert!(expiry > 30 && expiry <= 600, "{m}");
        assert_eq!(m["pfi"], 1, "{m}");
    }
    // p-2's last message is well after the update.
    let last = two.last().unwrap();
    assert_eq!(user(last), vec![pair("fw", "3.0")], "{last}");
    let expiry = last["expiry"].as_u64().expect("message expiry");
    assert!(expiry <= 30, "{last}");
}
