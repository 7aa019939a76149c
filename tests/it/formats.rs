//! Payload formats (issue 22) through the built binary: the same bytes for every format across
//! runs and `--cores` 1, 2, 3; CBOR and SenML-CBOR decoded by an independent decoder (Python's
//! `cbor2`), protobuf by Python's `protobuf` runtime from code `protoc` generated from the same
//! `.proto`; `iot-sim payload preview`; bad format keys listed with their paths (exit 2).

use crate::common::{bin, stderr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A virtual-clock fleet of `format` (with `extra` profile keys) writing to `dir/out.jsonl`:
/// 30 thermostats (numbers, a Markov state, a static string and boolean, an event) and 10
/// meters, over 20 minutes.
fn fleet(dir: &Path, format: &str, extra: &str) -> PathBuf {
    if format == "protobuf" {
        write_proto(dir);
    }
    let text = format!(
        r#"
[run]
seed = 11
clock = "virtual"
start_time = "2026-03-14T22:30:00Z"
duration = "20m"
report_dir = "{report}"

[sink.file]
path = "{out}"

[[fleet]]
profile = "thermo"
count = 30
labels = {{ site = "berlin" }}

[[fleet]]
profile = "meter"
count = 10

[profiles.thermo]
protocol = "file"
interval = "7s"
seq = true
format = "{format}"
{extra}

[profiles.thermo.fields.temperature]
type = "diurnal"
baseline = 22.0
amplitude = 5.0
peak_hour = 14
noise_stddev = 0.3
unit = "Cel"

[profiles.thermo.fields.door]
type = "markov"
states = ["closed", "open"]
transition_matrix = [[0.9, 0.1], [0.5, 0.5]]

[profiles.thermo.fields.fw]
type = "static"
value = "1.4.2"

[profiles.thermo.fields.online]
type = "static"
value = true

[profiles.thermo.events.reboot]
rate_per_hour = 6.0

[profiles.meter]
protocol = "file"
interval = "1m"
format = "{format}"
{extra}

[profiles.meter.fields.power]
type = "gaussian"
mean = 230
stddev = 4
unit = "W"
"#,
        report = dir.join("report").display(),
        out = dir.join("out.jsonl").display(),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const TEMPLATE: &str = r#"template = '''{"ts": {{ timestamp_ms }}, "id": {{ device_id|tojson }}, "values": {% if event %}{"event": {{ event|tojson }}}{% else %}{{ fields|tojson }}{% endif %}}'''"#;

/// Every format with the profile keys it is tested with.
const FORMATS: &[(&str, &str)] = &[
    ("envelope", ""),
    ("flat", "timestamp = \"ms\"\nid_key = \"id\""),
    ("template", TEMPLATE),
    ("cbor", ""),
    ("senml", ""),
    ("senml_cbor", ""),
    ("protobuf", PROTOBUF),
];

/// The protobuf keys: the message of `configs/telemetry.proto`, copied next to the fleet file.
const PROTOBUF: &str =
    "proto_file = \"telemetry.proto\"\nmessage = \"iotsim.example.v1.Telemetry\"";

/// The shipped example `.proto` (its Telemetry message has every field of [`fleet`]).
fn write_proto(dir: &Path) -> PathBuf {
    let path = dir.join("telemetry.proto");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/telemetry.proto"), &path)
        .unwrap();
    path
}

/// Runs the fleet with `cores` shards: every output file's bytes (in file-name order) and all
/// lines, sorted.
fn run(dir: &Path, cfg: &Path, cores: u16) -> (Vec<Vec<u8>>, Vec<String>) {
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", &cores.to_string(), "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    assert_eq!(names.len(), cores as usize);
    let (mut raw, mut lines) = (vec![], vec![]);
    for n in names {
        let bytes = std::fs::read(&n).unwrap();
        lines.extend(String::from_utf8(bytes.clone()).unwrap().lines().map(String::from));
        raw.push(bytes);
        std::fs::remove_file(n).unwrap();
    }
    lines.sort();
    (raw, lines)
}

#[test]
fn every_format_gives_the_same_bytes_across_runs_and_core_counts() {
    let mut sizes = vec![];
    for (format, extra) in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fleet(dir.path(), format, extra);
        let (one, one_lines) = run(dir.path(), &cfg, 1);
        let (again, _) = run(dir.path(), &cfg, 1);
        assert!(one == again, "{format}: two one-core runs differ byte for byte");
        // 30 thermostats every 7 s and 10 meters a minute, for 20 minutes, plus reboots.
        assert!(one_lines.len() > 30 * (1200 / 7) + 10 * 20, "{format}: {}", one_lines.len());
        for line in &one_lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{format}: not a JSON line ({e}): {line}"));
            let binary = matches!(*format, "cbor" | "senml_cbor" | "protobuf");
            assert_eq!(v["encoding"].as_str() == Some("base64"), binary, "{format}: {line}");
        }
        for cores in [2, 3] {
            let (n, n_lines) = run(dir.path(), &cfg, cores);
            assert!(
                n_lines == one_lines,
                "{format}, {cores} cores: the lines differ from one core's"
            );
            let (n2, _) = run(dir.path(), &cfg, cores);
            assert!(n == n2, "{format}, {cores} cores: the shard files differ between runs");
        }
        sizes.push((format, one[0].len()));
    }
    // The envelope is today's: every line carries the envelope's keys.
    assert!(sizes.iter().all(|(_, n)| *n > 0));
}

/// A Python with `cbor2` (Debian's python3-cbor2 installs for /usr/bin/python3).
fn python() -> Command {
    for p in ["/usr/bin/python3", "python3"] {
        let ok =
            Command::new(p).args(["-c", "import cbor2"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Command::new(p);
        }
    }
    panic!("python3 with cbor2 is needed: apt-get install python3-cbor2 (scripts/services.sh)");
}

/// Decodes every payload of `file` with cbor2 and checks it; prints a JSON summary.
const DECODE: &str = r#"
import base64, json, math, re, sys, cbor2
fmt, path = sys.argv[1], sys.argv[2]
name_re = re.compile(r'^[A-Za-z0-9][-:./_A-Za-z0-9]*$')
out = {"messages": 0, "events": 0, "nan": 0, "units": {}, "seq_max": -1, "sample": None}
for line in open(path):
    rec = json.loads(line)
    assert rec["encoding"] == "base64", rec
    raw = base64.b64decode(rec["payload"])
    doc = cbor2.loads(raw)
    assert cbor2.dumps(doc, canonical=False) is not None
    out["messages"] += 1
    if fmt == "cbor":
        assert isinstance(doc, dict), doc
        assert list(doc)[:3] == ["device_id", "device_type", "timestamp"], list(doc)
        assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$', doc["timestamp"]), doc
        assert rec["topic"].split("/")[1] == doc["device_id"], (rec["topic"], doc)
        if "event" in doc:
            out["events"] += 1
        else:
            assert isinstance(doc["fields"], dict)
        if doc["device_type"] == "thermo" and "event" not in doc:
            f = doc["fields"]
            assert f["door"] in ("closed", "open") and f["fw"] == "1.4.2" and f["online"] is True, f
            assert isinstance(f["temperature"], float), f
            assert doc["labels"]["site"] == "berlin", doc
            out["seq_max"] = max(out["seq_max"], doc["seq"])
        out["sample"] = out["sample"] or {k: v for k, v in doc.items()}
    else:
        # RFC 8428: an array of maps with integer labels; bn and bt on the first record only;
        # each record's full name matches section 4.5.1; one value each, typed as the label says.
        assert isinstance(doc, list) and doc, doc
        bn = doc[0][-2]
        assert isinstance(doc[0][-3], (int, float)), doc
        assert bn.endswith(":") and rec["topic"].split("/")[1] + ":" == bn, (bn, rec["topic"])
        for i, r in enumerate(doc):
            assert isinstance(r, dict) and all(isinstance(k, int) for k in r), r
            assert set(r) <= {-2, -3, 0, 1, 2, 3, 4}, r
            if i > 0:
                assert -2 not in r and -3 not in r, r
            assert name_re.match(bn + r[0]), bn + r[0]
            values = [k for k in (2, 3, 4) if k in r]
            assert len(values) == 1, r
            k = values[0]
            assert {2: (int, float), 3: (str,), 4: (bool,)}[k] and isinstance(r[k], {2: (int, float), 3: str, 4: bool}[k]), r
            if k == 2 and isinstance(r[2], float) and math.isnan(r[2]):
                out["nan"] += 1
            if 1 in r:
                out["units"][r[0]] = r[1]
            if r[0] == "event":
                out["events"] += 1
            if r[0] == "seq":
                out["seq_max"] = max(out["seq_max"], r[2])
        out["sample"] = out["sample"] or [{str(k): v for k, v in r.items()} for r in doc]
print(json.dumps(out))
"#;

fn decode(format: &str, extra: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path(), format, extra);
    run_once(&cfg);
    let out = python()
        .args(["-c", DECODE, format, dir.path().join("out.jsonl").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{format}: cbor2 refused a payload:\n{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run_once(cfg: &Path) {
    let out = bin()
        .args(["--config", cfg.to_str().unwrap(), "--cores", "1", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "run failed: {}", stderr(&out));
}

#[test]
fn cbor_payloads_decode_with_python_cbor2() {
    let s = decode("cbor", "");
    assert!(s["messages"].as_u64().unwrap() > 5000, "{s}");
    assert!(s["events"].as_u64().unwrap() > 0, "{s}");
    assert!(s["seq_max"].as_i64().unwrap() >= 170, "{s}");
}

#[test]
fn senml_cbor_payloads_decode_with_python_cbor2_and_follow_rfc_8428() {
    let s = decode("senml_cbor", "");
    assert!(s["messages"].as_u64().unwrap() > 5000, "{s}");
    assert_eq!(s["units"], serde_json::json!({"temperature": "Cel", "power": "W"}), "{s}");
    assert!(s["events"].as_u64().unwrap() > 0, "{s}");
    assert!(s["seq_max"].as_i64().unwrap() >= 170, "{s}");
}

/// A Python with the `protobuf` runtime, and `protoc` (Debian: python3-protobuf,
/// protobuf-compiler and libprotobuf-dev for the well-known types, installed by
/// scripts/services.sh).
fn python_protobuf() -> Command {
    let protoc = Command::new("protoc").arg("--version").output();
    assert!(
        protoc.is_ok_and(|o| o.status.success()),
        "protoc is needed: apt-get install protobuf-compiler (scripts/services.sh)"
    );
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import google.protobuf"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Command::new(p);
        }
    }
    panic!(
        "python3 with protobuf is needed: apt-get install python3-protobuf (scripts/services.sh)"
    );
}

/// Decodes every protobuf payload (base64 in the file sink) with the generated Python class
/// and compares it, message by message, with the envelope run of the same seed: the same
/// devices, topics, times, seqs, labels, events and values.
const PROTO_CHECK: &str = r#"
import base64, json, math, struct, sys
sys.path.insert(0, sys.argv[1])
import telemetry_pb2 as pb
env_lines = open(sys.argv[2]).read().splitlines()
pb_lines = open(sys.argv[3]).read().splitlines()
assert len(env_lines) == len(pb_lines) > 0, (len(env_lines), len(pb_lines))
out = {"messages": 0, "events": 0, "doors": {}, "seq_max": -1}
def ms(rfc):
    # 2026-03-14T22:30:07.000Z -> epoch ms
    import datetime
    d = datetime.datetime.strptime(rfc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return int(round(d.timestamp() * 1000))
for a, b in zip(env_lines, pb_lines):
    ea, rb = json.loads(a), json.loads(b)
    assert rb["encoding"] == "base64" and ea["topic"] == rb["topic"], (ea, rb)
    env = ea["payload"]
    m = pb.Telemetry()
    m.ParseFromString(base64.b64decode(rb["payload"]))
    out["messages"] += 1
    assert m.device_id == env["device_id"] and m.device_type == env["device_type"], (m, env)
    assert m.timestamp.ToMilliseconds() == ms(env["timestamp"]), (m.timestamp, env["timestamp"])
    assert dict(m.labels) == env.get("labels", {}), (m.labels, env)
    if "event" in env:
        out["events"] += 1
        assert m.event == env["event"] and m.seq == 0, m
        continue
    assert m.event == "" and m.seq == env.get("seq", 0), (m, env)
    out["seq_max"] = max(out["seq_max"], m.seq)
    f = env["fields"]
    if env["device_type"] == "thermo":
        assert m.temperature == f["temperature"], (m.temperature, f)
        assert pb.DoorState.Name(m.door) == f["door"], (m.door, f)
        out["doors"][f["door"]] = out["doors"].get(f["door"], 0) + 1
        assert m.fw == f["fw"] and m.online == f["online"], (m, f)
    else:
        # float: the value rounded to single precision.
        assert m.power == struct.unpack("<f", struct.pack("<f", f["power"]))[0], (m.power, f)
print(json.dumps(out))
"#;

#[test]
fn protobuf_payloads_decode_with_python_protobuf_and_match_the_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let proto = write_proto(dir.path());
    let generated = dir.path().join("gen");
    std::fs::create_dir(&generated).unwrap();
    let out = Command::new("protoc")
        .arg(format!("-I{}", dir.path().display()))
        // The well-known types' .proto files (Debian: libprotobuf-dev).
        .arg("-I/usr/include")
        .arg(format!("--python_out={}", generated.display()))
        .arg(&proto)
        .output()
        .unwrap();
    assert!(out.status.success(), "protoc: {}", stderr(&out));
    let envelope = dir.path().join("envelope");
    std::fs::create_dir(&envelope).unwrap();
    run_once(&fleet(&envelope, "envelope", ""));
    let protobuf = dir.path().join("protobuf");
    std::fs::create_dir(&protobuf).unwrap();
    run_once(&fleet(&protobuf, "protobuf", PROTOBUF));
    let out = python_protobuf()
        .args([
            "-c",
            PROTO_CHECK,
            generated.to_str().unwrap(),
            envelope.join("out.jsonl").to_str().unwrap(),
            protobuf.join("out.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "the Python protobuf runtime disagrees:\n{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["messages"].as_u64().unwrap() > 5000, "{s}");
    assert!(s["events"].as_u64().unwrap() > 0, "{s}");
    assert!(s["seq_max"].as_i64().unwrap() >= 170, "{s}");
    assert!(s["doors"]["open"].as_u64().unwrap() > 0 && s["doors"]["closed"].as_u64().unwrap() > 0);
    // `payload preview` decodes with the message's descriptor (protobuf text format).
    let cfg = protobuf.join("fleet.toml");
    let out = bin()
        .args(["payload", "preview", "--config", cfg.to_str().unwrap(), "--count", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("format protobuf, content type application/x-protobuf"), "{text}");
    assert!(
        text.contains(r#"decoded (iotsim.example.v1.Telemetry): device_id:"thermo-0000",device_type:"thermo",timestamp{seconds:1773527400}"#),
        "{text}"
    );
}

#[test]
fn payload_preview_prints_the_first_messages_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path(), "senml_cbor", "");
    let out = bin()
        .args([
            "payload",
            "preview",
            "--config",
            cfg.to_str().unwrap(),
            "--profile",
            "meter",
            "--count",
            "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("format senml_cbor") && lines[0].contains("application/senml+cbor"),
        "{text}"
    );
    assert!(lines[0].contains("CoAP Content-Format 112"), "{text}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("topic: devices/meter-")).count(),
        3,
        "{text}"
    );
    assert!(lines.iter().any(|l| l.starts_with("payload (") && l.contains("hex): 81a5")), "{text}");
    assert!(
        text.contains(
            r#"decoded (CBOR): [{-2: "meter-0000:", -3: 1773527400, 0: "power", 1: "W", 2: "#
        ),
        "{text}"
    );
    // Nothing ran: no telemetry, no report.
    assert!(!dir.path().join("out.jsonl").exists() && !dir.path().join("report").exists());
    // Text formats print as text.
    let cfg = fleet(dir.path(), "flat", "timestamp = \"s\"");
    let out =
        bin().args(["payload", "preview", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(r#"{"device_id":"thermo-0000","timestamp":1773527400,"door":"#),
        "{text}"
    );
    // An unknown profile is a usage problem.
    let out = bin()
        .args(["payload", "preview", "--config", cfg.to_str().unwrap(), "--profile", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no profile \"nope\""));
}

#[test]
fn bad_format_keys_are_listed_with_paths_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleet(dir.path(), "template", "template = '{\"t\": {{ fields.temperature }'");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // The meter: an undefined variable; and a thermostat syntax error, together.
    let text = text.replacen(
        "format = \"template\"\ntemplate = '{\"t\": {{ fields.temperature }'\n\n[profiles.meter.fields",
        "format = \"template\"\ntemplate = '''{\"p\": {{ fields.power }},\n\"x\": {{ fields.nope }}}'''\n\n[profiles.meter.fields",
        1,
    );
    std::fs::write(&cfg, &text).unwrap();
    for args in [vec!["validate", "--config"], vec!["--config"]] {
        let mut a = args.clone();
        a.push(cfg.to_str().unwrap());
        let out = bin().args(&a).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let e = stderr(&out);
        for want in [
            "profiles.thermo.template: template syntax error at line 1, column",
            "profiles.meter.template: the sample message does not render: line 2",
            "undefined",
        ] {
            assert!(e.contains(want), "{args:?}: missing {want:?} in:\n{e}");
        }
    }
    let cfg = fleet(dir.path(), "xml", "timestamp = \"ns\"");
    let out = bin().args(["validate", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("profiles.thermo.format: unknown format \"xml\""), "{e}");
    assert!(e.contains("profiles.meter.format: unknown format \"xml\""), "{e}");
    assert!(e.contains("profiles.thermo.timestamp: only applies to format = \"flat\""), "{e}");
    // Protobuf without its file and message, and with a message that lacks a field.
    let cfg = fleet(dir.path(), "protobuf", "");
    let e = stderr(&bin().args(["validate", "--config", cfg.to_str().unwrap()]).output().unwrap());
    assert!(e.contains("profiles.thermo.proto_file: missing"), "{e}");
    assert!(e.contains("profiles.meter.message: missing"), "{e}");
    let proto = std::fs::read_to_string(write_proto(dir.path())).unwrap();
    // `fleet` writes the shipped .proto; this one lacks `online`.
    let cfg = fleet(dir.path(), "protobuf", PROTOBUF);
    std::fs::write(dir.path().join("telemetry.proto"), proto.replace("bool online = 13;", ""))
        .unwrap();
    let out = bin().args(["validate", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("profiles.thermo.fields.online: field \"online\" has no counterpart in message iotsim.example.v1.Telemetry"),
        "{e}"
    );
    let cfg = fleet(dir.path(), "flat", "timestamp = \"ns\"");
    let e = stderr(&bin().args(["validate", "--config", cfg.to_str().unwrap()]).output().unwrap());
    assert!(
        e.contains(
            "profiles.thermo.timestamp: unknown timestamp mode \"ns\"; accepted: rfc3339, ms, s"
        ),
        "{e}"
    );
    let cfg = fleet(
        dir.path(),
        "template",
        "template = 'x={{ seq }}'\ncontent_type = \"application/json\"",
    );
    let e = stderr(&bin().args(["validate", "--config", cfg.to_str().unwrap()]).output().unwrap());
    assert!(
        e.contains("renders text that is not JSON, while content_type is \"application/json\""),
        "{e}"
    );
}

/// gRPC SpawnDevices takes the format keys in `behavior_params`; a bad template is refused
/// with its problem, and the server keeps serving.
#[tokio::test(flavor = "current_thread")]
async fn grpc_spawns_take_the_format_keys() {
    use crate::common::Running;
    use crate::grpc_common::{obj, spec, text};
    use iot_sim::control::proto::{
        self, device_runtime_service_client::DeviceRuntimeServiceClient,
    };

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, format!("[sink.file]\npath = \"{}\"\n", out.display())).unwrap();
    let mut server = Running::with_config("serve", &cfg, None, &["--speed", "600", "--cores", "1"]);
    let mut c = DeviceRuntimeServiceClient::connect(server.url()).await.unwrap();
    let with = |id: &str, keys: Vec<(&str, prost_types::Value)>| {
        let mut s = spec(id, "meter", &[("site", "x")], 1000, "file");
        let fields = s.behavior_params.take().unwrap().fields["fields"].clone();
        let mut all = vec![("fields", fields)];
        all.extend(keys);
        s.behavior_params = Some(obj(all));
        s
    };
    let specs = vec![
        with(
            "flat-1",
            vec![("format", text("flat")), ("id_key", text("id")), ("timestamp", text("ms"))],
        ),
        with("cbor-1", vec![("format", text("cbor"))]),
        with(
            "tpl-1",
            vec![
                ("format", text("template")),
                (
                    "template",
                    text("{\"site\": {{ labels.site|tojson }}, \"t\": {{ fields.temperature }}}"),
                ),
            ],
        ),
        // proto_file: relative to the runtime's working directory (the tests run in the
        // package's root, as the server they start).
        with(
            "pb-1",
            vec![
                ("format", text("protobuf")),
                ("proto_file", text("configs/telemetry.proto")),
                ("message", text("Telemetry")),
            ],
        ),
    ];
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spawned, 4, "{r:?}");
    // Protobuf problems are INVALID_ARGUMENT with the reason: a path outside the working
    // directory, a message that lacks a field.
    for (keys, want) in [
        (
            vec![("proto_file", text("../telemetry.proto")), ("message", text("Telemetry"))],
            "stays inside",
        ),
        (
            vec![("proto_file", text("configs/telemetry.proto")), ("message", text("Nope"))],
            "Nope\\\" in configs/telemetry.proto",
        ),
    ] {
        let mut all = vec![("format", text("protobuf"))];
        all.extend(keys);
        let r = c
            .spawn_devices(proto::SpawnDevicesRequest {
                specs: vec![with("pb-bad", all)],
                scenario_id: String::new(),
            })
            .await;
        let text = match r {
            Err(e) => e.message().to_string(),
            Ok(r) => format!("{:?}", r.into_inner()),
        };
        assert!(text.contains(want), "{text}");
    }
    let bad =
        with("bad-1", vec![("format", text("template")), ("template", text("{{ fields.nope }}"))]);
    let r = c
        .spawn_devices(proto::SpawnDevicesRequest { specs: vec![bad], scenario_id: String::new() })
        .await;
    let text = match r {
        Err(e) => e.message().to_string(),
        Ok(r) => format!("{:?}", r.into_inner()),
    };
    assert!(text.contains("undefined") && text.contains("template"), "{text}");
    // Every device has published once 30 messages are out (each ticks once a sim second, at
    // a phase inside its first second); the file sink writes them out at the end.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while c.get_runtime_status(()).await.unwrap().into_inner().messages_sent_total < 30 {
        assert!(std::time::Instant::now() < end, "30 messages were not sent within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.terminate();
    let lines = std::fs::read_to_string(&out).unwrap();
    let first = |id: &str| lines.lines().find(|l| l.contains(id)).map(str::to_string);
    let flat = first("\"id\":\"flat-1\"").unwrap_or_else(|| panic!("no flat line in {lines}"));
    assert!(flat.contains("\"payload\":{\"id\":\"flat-1\",\"timestamp\":"), "{flat}");
    assert!(lines.lines().any(|l| l.contains("\"encoding\":\"base64\"")), "no CBOR line");
    let tpl = first("\"site\": \"x\"").unwrap_or_else(|| panic!("no template line in {lines}"));
    assert!(tpl.contains("\"t\": "), "{tpl}");
    // The protobuf device's payload: `device_id = "pb-1"` (field 1) in base64.
    assert!(lines.lines().any(|l| l.contains("\"payload\":\"CgRwYi0x")), "no protobuf line");
}

/// The console prints a protobuf payload as hex and its fields by number (no descriptor at
/// hand there), a CBOR one as hex and diagnostic notation.
#[test]
fn the_console_prints_binary_payloads_as_hex_and_decoded() {
    let dir = tempfile::tempdir().unwrap();
    write_proto(dir.path());
    let cfg = dir.path().join("console.toml");
    for (format, extra, decoded) in [
        (
            "protobuf",
            PROTOBUF,
            " protobuf:{ 1: \"c-0000\" 2: \"c\" 3 { 1: 1773446400 2: 401000000 } 10: 21.5 4: 0 6 { 1: \"device_type\" 2: \"c\" } }",
        ),
        ("cbor", "", " cbor:{\"device_id\": \"c-0000\", \"device_type\": \"c\", "),
    ] {
        std::fs::write(
            &cfg,
            format!(
                "[run]\nseed = 1\nclock = \"virtual\"\nstart_time = \"2026-03-14T00:00:00Z\"\nduration = \"2s\"\nreport_dir = \"{}/r\"\n\n[[fleet]]\nprofile = \"c\"\ncount = 1\n\n[profiles.c]\nprotocol = \"console\"\ninterval = \"1s\"\nseq = true\nformat = \"{format}\"\n{extra}\n[profiles.c.fields.temperature]\ntype = \"static\"\nvalue = 21.5\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let out = bin().args(["--config", cfg.to_str().unwrap(), "--quiet"]).output().unwrap();
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let first = text.lines().next().unwrap_or_default();
        assert!(first.starts_with("[devices/c-0000/telemetry] hex:"), "{format}: {text}");
        assert!(first.contains(decoded), "{format}: {first}");
    }
}
