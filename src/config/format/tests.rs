//! The encoders of every format, through profiles compiled from fleet-file text, and the
//! problems a format's keys can have.

use super::super::{ParseError, parse_str};
use crate::sim::cbor::diagnostic;
use crate::sim::format::Body;
use crate::sim::generator::Sample;
use crate::sim::payload;
use crate::sim::profile::Profile;
use std::collections::BTreeMap;
use std::path::Path;

/// A fleet file with one profile `p` (fields t: gaussian, door: markov, fw: static string,
/// on: static bool) and `extra` added to the profile's table.
fn fleet(extra: &str) -> String {
    format!(
        r#"
[sink.null]
[[fleet]]
profile = "p"
count = 1
labels = {{ site = "berlin" }}
[profiles.p]
protocol = "null"
interval = "1s"
seq = true
{extra}
[profiles.p.fields.t]
type = "gaussian"
mean = 20
stddev = 1
unit = "Cel"
[profiles.p.fields.door]
type = "markov"
states = ["closed", "open"]
transition_matrix = [[0.9, 0.1], [0.5, 0.5]]
[profiles.p.fields.fw]
type = "static"
value = "1.2.0"
[profiles.p.fields.on]
type = "static"
value = true
"#
    )
}

fn load(extra: &str) -> (Profile, BTreeMap<String, String>) {
    let c = parse_str(&fleet(extra), Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"));
    (c.fleet.profiles[0].clone(), c.fleet.groups[0].labels.clone())
}

fn problems(extra: &str) -> Vec<String> {
    match parse_str(&fleet(extra), Path::new(".")) {
        Ok(_) => vec![],
        Err(ParseError::Invalid(p)) => p.0.iter().map(|p| p.to_string()).collect(),
        Err(ParseError::Syntax(s)) => vec![format!("syntax: {s}")],
    }
}

/// Fields in profile order: door, fw, on, t.
const SAMPLES: [Sample; 4] =
    [Sample::State(1), Sample::Static, Sample::Static, Sample::Number(21.5)];
/// 2023-11-14T22:13:20.250Z
const T: u64 = 1_700_000_000_250;

fn encode(extra: &str, samples: &[Sample]) -> (Vec<u8>, Profile) {
    let (p, labels) = load(extra);
    let lj = crate::sim::profile::labels_json(&labels);
    let mut out = vec![];
    payload::encode(&mut out, "p-0001", &p, T, samples, (&labels, &lj), 7);
    (out, p)
}

fn text(extra: &str) -> String {
    String::from_utf8(encode(extra, &SAMPLES).0).unwrap()
}

#[test]
fn the_envelope_is_the_default_and_unchanged() {
    assert_eq!(
        text(""),
        r#"{"device_id":"p-0001","device_type":"p","timestamp":"2023-11-14T22:13:20.250Z","fields":{"door":"open","fw":"1.2.0","on":true,"t":21.5},"labels":{"device_type":"p","site":"berlin"},"seq":7}"#
    );
    assert_eq!(text("format = \"envelope\""), text(""));
}

#[test]
fn flat_puts_fields_at_the_top_with_configurable_keys() {
    assert_eq!(
        text("format = \"flat\""),
        r#"{"device_id":"p-0001","timestamp":"2023-11-14T22:13:20.250Z","door":"open","fw":"1.2.0","on":true,"t":21.5,"seq":7}"#
    );
    assert_eq!(
        text("format = \"flat\"\nid_key = \"id\"\ntimestamp_key = \"ts\"\ntimestamp = \"ms\""),
        r#"{"id":"p-0001","ts":1700000000250,"door":"open","fw":"1.2.0","on":true,"t":21.5,"seq":7}"#
    );
    assert_eq!(
        text("format = \"flat\"\nid_key = \"\"\ntimestamp = \"s\""),
        r#"{"timestamp":1700000000,"door":"open","fw":"1.2.0","on":true,"t":21.5,"seq":7}"#
    );
    assert_eq!(
        text("format = \"flat\"\nid_key = \"\"\ntimestamp_key = \"\""),
        r#"{"door":"open","fw":"1.2.0","on":true,"t":21.5,"seq":7}"#
    );
}

#[test]
fn non_finite_values_are_null_in_json_and_nan_in_cbor() {
    let nan = [Sample::State(0), Sample::Static, Sample::Static, Sample::Number(f64::NAN)];
    let flat = String::from_utf8(encode("format = \"flat\"", &nan).0).unwrap();
    assert!(flat.contains(r#""t":null"#), "{flat}");
    let senml = String::from_utf8(encode("format = \"senml\"", &nan).0).unwrap();
    assert!(senml.contains(r#""n":"t","u":"Cel","v":null"#), "{senml}");
    let tpl = String::from_utf8(
        encode("format = \"template\"\ntemplate = '{\"t\": {{ fields.t }}}'", &nan).0,
    )
    .unwrap();
    assert_eq!(tpl, r#"{"t": null}"#);
    let cbor = diagnostic(&encode("format = \"cbor\"", &nan).0);
    assert!(cbor.contains(r#""t": NaN"#), "{cbor}");
    let sc = diagnostic(&encode("format = \"senml_cbor\"", &nan).0);
    assert!(sc.contains(r#"0: "t", 1: "Cel", 2: NaN"#), "{sc}");
}

#[test]
fn templates_render_every_variable_and_the_filters() {
    let tpl = r#"format = "template"
template = '''{"id": {{ device_id|tojson }}, "type": "{{ device_type }}", "site": {{ labels.site|json }}, "ts": {{ timestamp_ms }}, "s": {{ timestamp_s }}, "at": "{{ timestamp }}", "seq": {{ seq }}, "t": {{ fields.t|round(0) }}, "door": {{ fields.door|tojson }}, "on": {{ fields.on|tojson }}}'''"#;
    let (out, p) = encode(tpl, &SAMPLES);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"id": "p-0001", "type": "p", "site": "berlin", "ts": 1700000000250, "s": 1700000000, "at": "2023-11-14T22:13:20.250Z", "seq": 7, "t": 22.0, "door": "open", "on": true}"#
    );
    assert_eq!(p.format.wire.body, Body::Json);
    assert_eq!(p.format.wire.content_type, "application/json");
}

#[test]
fn a_template_that_is_not_json_is_text() {
    let (out, p) = encode(
        "format = \"template\"\ntemplate = 'env,site={{ labels.site }} t={{ fields.t }} {{ timestamp_ms * 1000000 }}'",
        &SAMPLES,
    );
    assert_eq!(String::from_utf8(out).unwrap(), "env,site=berlin t=21.5 1700000000250000000");
    assert_eq!(p.format.wire.body, Body::Text);
    assert_eq!(p.format.wire.content_type, "text/plain");
    let (_, p) = encode(
        "format = \"template\"\ntemplate = 'x {{ seq }}'\ncontent_type = \"text/csv\"",
        &SAMPLES,
    );
    assert_eq!((p.format.wire.body, p.format.wire.content_type), (Body::Text, "text/csv"));
}

#[test]
fn cbor_is_the_envelope_as_a_map() {
    let (out, p) = encode("format = \"cbor\"", &SAMPLES);
    assert_eq!(
        diagnostic(&out),
        r#"{"device_id": "p-0001", "device_type": "p", "timestamp": "2023-11-14T22:13:20.250Z", "fields": {"door": "open", "fw": "1.2.0", "on": true, "t": 21.5}, "labels": {"device_type": "p", "site": "berlin"}, "seq": 7}"#
    );
    assert_eq!((p.format.wire.body, p.format.wire.coap), (Body::Binary, 60));
    assert_eq!(p.format.wire.content_type, "application/cbor");
}

/// RFC 8428's rules for a pack: an array of records; base fields only in the first record
/// here; every record has a name whose concatenation with the base name matches section
/// 4.5.1's pattern and exactly one value (`v`, `vs` or `vb`), typed as the RFC says.
fn check_senml_pack(pack: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let records = pack.as_array().expect("a pack is an array");
    assert!(!records.is_empty());
    let bn = records[0]["bn"].as_str().expect("bn on the first record").to_string();
    assert!(records[0]["bt"].is_number(), "bt is a number");
    let mut out = vec![];
    for (i, r) in records.iter().enumerate() {
        let r = r.as_object().expect("a record is an object");
        if i > 0 {
            assert!(!r.contains_key("bn") && !r.contains_key("bt"));
        }
        for k in r.keys() {
            assert!(["bn", "bt", "n", "u", "v", "vs", "vb"].contains(&k.as_str()), "{k}");
        }
        let name = format!("{bn}{}", r["n"].as_str().expect("n is text"));
        let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-:./_".contains(c));
        assert!(ok, "name {name:?} breaks RFC 8428 section 4.5.1");
        let values: Vec<&str> =
            ["v", "vs", "vb"].into_iter().filter(|k| r.contains_key(*k)).collect();
        assert_eq!(values.len(), 1, "one value per record: {r:?}");
        let v = &r[values[0]];
        match values[0] {
            "v" => assert!(v.is_number() || v.is_null()),
            "vs" => assert!(v.is_string()),
            _ => assert!(v.is_boolean()),
        }
        out.push((name, v.clone()));
    }
    out
}

#[test]
fn senml_is_an_rfc_8428_pack() {
    let (out, p) = encode("format = \"senml\"", &SAMPLES);
    let s = String::from_utf8(out).unwrap();
    assert_eq!(
        s,
        r#"[{"bn":"p-0001:","bt":1700000000.25,"n":"door","vs":"open"},{"n":"fw","vs":"1.2.0"},{"n":"on","vb":true},{"n":"t","u":"Cel","v":21.5},{"n":"seq","v":7}]"#
    );
    let records = check_senml_pack(&serde_json::from_str(&s).unwrap());
    assert_eq!(records[3], ("p-0001:t".to_string(), serde_json::json!(21.5)));
    assert_eq!((p.format.wire.coap, p.format.wire.content_type), (110, "application/senml+json"));
}

#[test]
fn senml_cbor_uses_the_rfc_s_integer_labels() {
    let (out, p) = encode("format = \"senml_cbor\"", &SAMPLES);
    assert_eq!(
        diagnostic(&out),
        r#"[{-2: "p-0001:", -3: 1700000000.25, 0: "door", 3: "open"}, {0: "fw", 3: "1.2.0"}, {0: "on", 4: true}, {0: "t", 1: "Cel", 2: 21.5}, {0: "seq", 2: 7}]"#
    );
    assert_eq!((p.format.wire.coap, p.format.wire.body), (112, Body::Binary));
}

#[test]
fn encoding_is_a_function_of_the_message() {
    for f in ["flat", "cbor", "senml", "senml_cbor"] {
        let a = encode(&format!("format = \"{f}\""), &SAMPLES).0;
        let b = encode(&format!("format = \"{f}\""), &SAMPLES).0;
        assert_eq!(a, b, "{f}");
    }
}

#[test]
fn bad_format_keys_are_listed_with_their_paths() {
    let p = problems("format = \"xml\"");
    assert!(
        p.iter().any(|p| p.contains("profiles.p.format") && p.contains("unknown format \"xml\"")),
        "{p:?}"
    );
    let p = problems("format = \"flat\"\ntimestamp = \"ns\"");
    assert!(p.iter().any(|p| p.contains("profiles.p.timestamp") && p.contains("\"ns\"")), "{p:?}");
    let p = problems("format = \"cbor\"\ntimestamp = \"ms\"");
    assert!(
        p.iter().any(|p| p.contains("profiles.p.timestamp") && p.contains("format = \"flat\"")),
        "{p:?}"
    );
    let p = problems("format = \"template\"");
    assert!(p.iter().any(|p| p.contains("profiles.p.template") && p.contains("missing")), "{p:?}");
    let p = problems("format = \"template\"\ntemplate = '{\"a\": {{ fields.t }'");
    assert!(
        p.iter().any(|p| p.contains("profiles.p.template") && p.contains("line 1, column")),
        "{p:?}"
    );
    let p = problems("format = \"template\"\ntemplate = '''{\n\"a\": {{ fields.nope }}}'''");
    assert!(
        p.iter().any(|p| p.contains("profiles.p.template")
            && p.contains("undefined")
            && p.contains("line 2")),
        "{p:?}"
    );
    let p = problems("format = \"template\"\ntemplate = '{{ labels.floor }}'");
    assert!(p.iter().any(|p| p.contains("undefined")), "{p:?}");
    let p = problems(
        "format = \"template\"\ntemplate = 'a={{ seq }}'\ncontent_type = \"application/json\"",
    );
    assert!(
        p.iter().any(|p| p.contains("profiles.p.template")
            && p.contains("not JSON")
            && p.contains("a=0")),
        "{p:?}"
    );
    let p = problems("content_type = \"application/\u{e9}\"");
    assert!(p.iter().any(|p| p.contains("profiles.p.content_type")), "{p:?}");
    let p = problems("format = \"template\"\ntemplate_file = \"no/such.j2\"");
    assert!(
        p.iter().any(|p| p.contains("profiles.p.template_file") && p.contains("cannot read")),
        "{p:?}"
    );
}

#[test]
fn an_audit_takes_every_format_it_can_decode() {
    let audited = |extra: &str, audit: &str| {
        let text = fleet(extra).replace(
            "[sink.null]",
            &format!("[sink.null]\n[sink.mqtt]\nurl = \"mqtt://localhost:1883\"\n[audit]\n{audit}"),
        );
        let text = text.replace("protocol = \"null\"", "protocol = \"mqtt\"");
        match parse_str(&text, Path::new(".")) {
            Ok(_) => vec![],
            Err(ParseError::Invalid(p)) => p.0.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("{e:?}"),
        }
    };
    for f in ["cbor", "senml", "senml_cbor", "flat"] {
        assert_eq!(audited(&format!("format = \"{f}\""), ""), Vec::<String>::new(), "{f}");
    }
    // `values` compares the envelope's fields only.
    let p = audited("format = \"cbor\"", "verify = \"values\"");
    assert!(
        p.len() == 1 && p[0].starts_with("audit.verify:") && p[0].contains("\"cbor\""),
        "{p:?}"
    );
    // A flat payload without the id, a template without pointers or that is not JSON.
    let p = audited("format = \"flat\"\nid_key = \"\"", "");
    assert!(p.len() == 1 && p[0].starts_with("profiles.p.format:"), "{p:?}");
    let json =
        "format = \"template\"\ntemplate = '{\"i\": {{ device_id|tojson }}, \"s\": {{ seq }}}'";
    let p = audited(json, "");
    assert!(p.len() == 1 && p[0].contains("audit = { device_id"), "{p:?}");
    assert_eq!(
        audited(&format!("{json}\naudit = {{ device_id = \"/i\", seq = \"/s\" }}"), ""),
        Vec::<String>::new()
    );
    let p = audited(&format!("{json}\naudit = {{ device_id = \"i\" }}"), "");
    assert!(
        p.iter()
            .any(|x| x.contains("profiles.p.audit.device_id") && x.contains("not a JSON pointer")),
        "{p:?}"
    );
    assert!(p.iter().any(|x| x.contains("profiles.p.audit.seq: missing")), "{p:?}");
    let csv = "format = \"template\"\ntemplate = '{{ device_id }},{{ seq }}'\naudit = { device_id = \"/i\", seq = \"/s\" }";
    let p = audited(csv, "");
    assert!(p.len() == 1 && p[0].contains("not JSON"), "{p:?}");
    // Pointers belong to templates.
    let p = audited("format = \"cbor\"\naudit = { device_id = \"/i\", seq = \"/s\" }", "");
    assert!(p.iter().any(|x| x.starts_with("profiles.p.audit:")), "{p:?}");
}

#[test]
fn an_http_endpoint_with_the_device_id_needs_it_first_in_the_payload() {
    let http = |format: &str| {
        fleet(format)
            .replace("[sink.null]", "[sink.null]\n[sink.http]\nendpoint = \"http://h/{device_id}\"")
            .replace("protocol = \"null\"", "protocol = \"http\"")
    };
    let refused = |text: &str| match parse_str(text, Path::new(".")) {
        Err(ParseError::Invalid(p)) => p.0.iter().any(|q| q.path == "profiles.p.format"),
        _ => false,
    };
    assert!(!refused(&http("")));
    assert!(!refused(&http("format = \"flat\"")));
    assert!(refused(&http("format = \"flat\"\nid_key = \"id\"")));
    assert!(refused(&http("format = \"senml\"")));
}

#[test]
fn template_files_are_relative_to_the_fleet_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("t")).unwrap();
    std::fs::write(dir.path().join("t/p.j2"), "{\"v\": {{ fields.t }}}").unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, fleet("format = \"template\"\ntemplate_file = \"t/p.j2\"")).unwrap();
    let c = super::super::load(&path, &Default::default()).unwrap();
    let mut out = vec![];
    let p = &c.fleet.profiles[0];
    payload::encode(&mut out, "x", p, 0, &SAMPLES, (&BTreeMap::new(), ""), 0);
    assert_eq!(out, b"{\"v\": 21.5}");
}

#[test]
fn a_template_file_must_be_a_regular_file_of_at_most_a_mebibyte() {
    let p = problems("format = \"template\"\ntemplate_file = \"/dev/zero\"");
    assert!(
        p.iter().any(|m| m.contains("template_file") && m.contains("not a regular file")),
        "{p:?}"
    );
}

/// A `.proto` for the test profile (`t`, `door`, `fw`, `on`), in a folder of its own.
const PROTO: &str = r#"
syntax = "proto3";
package acme.v1;
import "google/protobuf/timestamp.proto";
enum Door { DOOR_UNSPECIFIED = 0; closed = 1; open = 2; }
message Fields { double t = 1; Door door = 2; string fw = 3; bool on = 4; }
message Reading {
  string device_id = 1;
  google.protobuf.Timestamp timestamp = 2;
  uint64 seq = 3;
  map<string, string> labels = 4;
  double t = 5;
  Door door = 6;
  string fw = 7;
  bool on = 8;
  int64 at_ms = 9;
  int32 small = 10;
  repeated double many = 11;
}
message Nested { string device_id = 1; Fields fields = 2; }
message Narrow { string device_id = 1; float t = 2; string door = 3; }
"#;

fn with_proto(extra: &str) -> Result<super::super::Config, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reading.proto"), PROTO).unwrap();
    let text = fleet(&format!("format = \"protobuf\"\nproto_file = \"reading.proto\"\n{extra}"));
    match parse_str(&text, dir.path()) {
        Ok(c) => Ok(c),
        Err(ParseError::Invalid(p)) => Err(p.0.iter().map(|p| p.to_string()).collect()),
        Err(ParseError::Syntax(s)) => Err(vec![format!("syntax: {s}")]),
    }
}

fn encode_first(c: &super::super::Config) -> Vec<u8> {
    let (prof, labels) = (&c.fleet.profiles[0], &c.fleet.groups[0].labels);
    let samples = [Sample::State(1), Sample::Static, Sample::Static, Sample::Number(21.5)];
    let mut out = vec![];
    payload::encode(&mut out, "dev-1", prof, 1_700_000_000_250, &samples, (labels, ""), 7);
    out
}

#[test]
fn protobuf_writes_each_part_to_the_field_of_its_name() {
    let c = with_proto("message = \"acme.v1.Reading\"").unwrap();
    let p = &c.fleet.profiles[0];
    assert_eq!(p.format.name(), "protobuf");
    assert_eq!(
        (p.format.wire.body, p.format.wire.content_type, p.format.wire.coap),
        (Body::Binary, "application/x-protobuf", 42)
    );
    let out = encode_first(&c);
    let view = crate::sim::proto::raw_view(&out).unwrap();
    // id, Timestamp {seconds, nanos}, door = open (2), fw, on, t, seq, then the label entries
    // (the envelope's labels: the group's and device_type).
    assert_eq!(
        view,
        "1: \"dev-1\" 2 { 1: 1700000000 2: 250000000 } 6: 2 7: \"1.2.0\" 8: 1 5: 21.5 3: 7 \
         4 { 1: \"device_type\" 2: \"p\" } 4 { 1: \"site\" 2: \"berlin\" }"
    );
    // The message by its short name, and the text-format view of `payload preview`.
    let c = with_proto("message = \"Reading\"").unwrap();
    let crate::sim::format::Kind::Protobuf(plan) = &c.fleet.profiles[0].format.kind else {
        panic!("not protobuf")
    };
    let text = (plan.view.as_ref().unwrap())(&encode_first(&c));
    assert!(text.contains("device_id:\"dev-1\"") && text.contains("door:open"), "{text}");
}

#[test]
fn protobuf_timestamps_as_integers_and_nested_fields() {
    let c = with_proto("message = \"acme.v1.Reading\"\ntimestamp_key = \"at_ms\"").unwrap();
    let view = crate::sim::proto::raw_view(&encode_first(&c)).unwrap();
    assert!(view.starts_with("1: \"dev-1\" 9: 1700000000250 "), "{view}");
    let c =
        with_proto("message = \"acme.v1.Reading\"\ntimestamp_key = \"small\"\ntimestamp = \"s\"")
            .unwrap();
    let view = crate::sim::proto::raw_view(&encode_first(&c)).unwrap();
    assert!(view.starts_with("1: \"dev-1\" 10: 1700000000 "), "{view}");
    let c = with_proto("message = \"acme.v1.Nested\"").unwrap();
    let view = crate::sim::proto::raw_view(&encode_first(&c)).unwrap();
    assert_eq!(view, "1: \"dev-1\" 2 { 2: 2 3: \"1.2.0\" 4: 1 1: 21.5 }");
}

#[test]
fn protobuf_problems_name_the_field_and_the_message() {
    let e = with_proto("message = \"acme.v1.Narrow\"").unwrap_err();
    let all = e.join("\n");
    // `fw` and `on` have no counterpart; `door` (text) fits a string; `t` fits a float.
    assert!(
        all.contains(
            "profiles.p.fields.fw: field \"fw\" has no counterpart in message acme.v1.Narrow"
        ),
        "{all}"
    );
    assert!(all.contains("profiles.p.fields.on:"), "{all}");
    assert_eq!(e.len(), 2, "{all}");
    let e = with_proto("message = \"acme.v1.Reading\"\ntimestamp_key = \"small\"").unwrap_err();
    assert!(e[0].contains("profiles.p.timestamp_key") && e[0].contains("int32"), "{e:?}");
    let e = with_proto("message = \"acme.v1.Reading\"\nid_key = \"many\"").unwrap_err();
    assert!(e[0].contains("acme.v1.Reading.many is repeated double"), "{e:?}");
    let e = with_proto("message = \"acme.v1.Nope\"").unwrap_err();
    assert!(e[0].starts_with("profiles.p.message:") && e[0].contains("acme.v1.Reading"), "{e:?}");
    let e = with_proto("message = \"X\"\nproto_file = \"missing.proto\"").unwrap_err();
    assert!(e.iter().any(|x| x.contains("missing.proto")), "{e:?}");
    let e = with_proto("").unwrap_err();
    assert!(e[0].starts_with("profiles.p.message: missing"), "{e:?}");
    // A file that does not compile: the compiler's message, with the file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.proto"),
        "syntax = \"proto3\";\nmessage M { int32 = 1; }\n",
    )
    .unwrap();
    let text = fleet("format = \"protobuf\"\nproto_file = \"bad.proto\"\nmessage = \"M\"");
    let Err(ParseError::Invalid(p)) = parse_str(&text, dir.path()) else { panic!("accepted") };
    let s = p.to_string();
    assert!(s.contains("profiles.p.proto_file") && s.contains("bad.proto does not compile"), "{s}");
    assert!(s.contains("does not compile: line 2, column 19: "), "{s}");
    // Keys of another format.
    let e = with_proto("message = \"Reading\"\ntemplate = \"x\"").unwrap_err();
    assert!(
        e[0].contains("only applies to format = \\\"template\\\"") || e[0].contains("template"),
        "{e:?}"
    );
}
