//! Payload formats other than the envelope: `flat`, `template`, `cbor`, `senml`,
//! `senml_cbor` and `protobuf` (issue 22; the protobuf writer is `proto.rs`), each a per-profile choice (`format = "..."`).
//!
//! Every encoder writes into the shard's reused buffer and is a function of the message alone
//! (device, time, values, labels, seq), so a seed gives the same bytes on any number of cores.
//! A template is compiled once per profile when the profile is loaded; rendering it builds a
//! small context per message (the one format that allocates per message).

use super::cbor;
use super::generator::{GenSpec, Sample};
use super::payload::{write_f64, write_json_str, write_sample};
use super::profile::FieldSpec;
use super::time::{SimMs, write_rfc3339_ms};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The names `format` accepts.
pub const FORMATS: &[&str] =
    &["envelope", "flat", "template", "cbor", "senml", "senml_cbor", "sparkplug_b", "protobuf"];

/// What a payload is, for sinks that write text (file, console).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Body {
    /// A JSON document: written as is.
    #[default]
    Json,
    /// Text that is not JSON (a CSV or line-protocol template).
    Text,
    /// Binary (CBOR, protobuf): base64 in the file sink, hex on the console.
    Binary,
}

/// What travels with a payload to the sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wire {
    pub body: Body,
    /// HTTP `Content-Type`, AMQP `content_type`.
    pub content_type: &'static str,
    /// CoAP Content-Format (RFC 7252 registry).
    pub coap: u16,
}

impl Default for Wire {
    fn default() -> Self {
        Wire { body: Body::Json, content_type: "application/json", coap: 50 }
    }
}

/// How `flat` writes the timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsMode {
    Rfc3339,
    Ms,
    S,
}

impl TsMode {
    pub const NAMES: &[&str] = &["rfc3339", "ms", "s"];
    pub fn parse(s: &str) -> Option<TsMode> {
        Some(match s {
            "rfc3339" => TsMode::Rfc3339,
            "ms" => TsMode::Ms,
            "s" => TsMode::S,
            _ => return None,
        })
    }
}

/// `flat`: the fields at the top level, the id and the timestamp under configurable keys.
#[derive(Clone, Debug)]
pub struct Flat {
    /// `"KEY":` (empty: no id).
    pub id_key_json: String,
    /// `"KEY":` (empty: no timestamp).
    pub ts_key_json: String,
    pub ts: TsMode,
}

/// A compiled template.
pub struct Template {
    env: minijinja::Environment<'static>,
    pub source: String,
    /// The fast path of a simple template (`super::fast_template`), minijinja's otherwise.
    fast: Option<super::fast_template::Fast>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").field("source", &self.source).finish()
    }
}

const TEMPLATE_NAME: &str = "payload";

impl Template {
    /// Compiles `source`; a syntax error says where (line and column).
    pub fn compile(source: String) -> Result<Template, String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_debug(false);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_formatter(|out, state, value| {
            let fail =
                |_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write failed");
            if value.is_none() {
                return out.write_str("null").map_err(fail);
            }
            // Floats as the envelope writes them (shortest round trip); not finite: null.
            if value.is_number()
                && !value.is_integer()
                && let Ok(f) = f64::try_from(value.clone())
            {
                if !f.is_finite() {
                    return out.write_str("null").map_err(fail);
                }
                return out.write_str(&super::payload::finite_text(f)).map_err(fail);
            }
            minijinja::escape_formatter(out, state, value)
        });
        env.add_filter("json", |v: minijinja::Value| -> Result<String, minijinja::Error> {
            let mut out = vec![];
            match v.as_str() {
                Some(s) => write_json_str(&mut out, s),
                None => out.extend_from_slice(v.to_string().as_bytes()),
            }
            Ok(String::from_utf8(out).unwrap_or_default())
        });
        env.add_template_owned(TEMPLATE_NAME, source.clone()).map_err(|e| describe(&e, &source))?;
        let fast = super::fast_template::Fast::compile(&source);
        Ok(Template { env, source, fast })
    }

    /// Renders one message into `out` (cleared first).
    pub fn render(&self, out: &mut Vec<u8>, m: &Msg<'_>) -> Result<(), String> {
        out.clear();
        if let Some(f) = &self.fast {
            if f.render(out, m) {
                return Ok(());
            }
            out.clear();
        }
        self.render_minijinja(out, m)
    }

    /// [`Template::render`] by minijinja's interpreter (the reference of the fast path).
    pub(crate) fn render_minijinja(&self, out: &mut Vec<u8>, m: &Msg<'_>) -> Result<(), String> {
        let t = self.env.get_template(TEMPLATE_NAME).map_err(|e| describe(&e, &self.source))?;
        // Short names and values are minijinja's inline strings: a map here costs two
        // allocations (its vector and its `Arc`), not one per entry.
        let fields = Pairs(
            m.fields
                .iter()
                .zip(m.samples)
                .map(|(f, s)| (Value::from(f.name.as_str()), value_of(f, *s).to_jinja()))
                .collect(),
        );
        let labels = Pairs(
            m.labels
                .iter()
                .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                .collect(),
        );
        let ctx = Value::from_object(Ctx {
            device_id: Value::from(m.device_id),
            device_type: Value::from(m.device_type),
            labels: Value::from_object(labels),
            fields: Value::from_object(fields),
            timestamp: m.timestamp,
            seq: Value::from(m.seq),
            event: Value::from(m.event_name),
        });
        let s = t.render(ctx).map_err(|e| describe(&e, &self.source))?;
        out.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

use minijinja::Value;
use minijinja::value::{Enumerator, Object, ObjectRepr};

/// A small map for a template's context (`fields`, `labels`): pairs in name order, looked up
/// by a linear scan.
#[derive(Debug)]
struct Pairs(Vec<(Value, Value)>);

impl Object for Pairs {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let k = key.as_str()?;
        self.0.iter().find(|(n, _)| n.as_str() == Some(k)).map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }
}

/// A template's variables for one message; the RFC 3339 `timestamp` is only written out when
/// the template reads it.
#[derive(Debug)]
struct Ctx {
    device_id: Value,
    device_type: Value,
    labels: Value,
    fields: Value,
    timestamp: SimMs,
    seq: Value,
    event: Value,
}

impl Object for Ctx {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "device_id" => self.device_id.clone(),
            "device_type" => self.device_type.clone(),
            "labels" => self.labels.clone(),
            "fields" => self.fields.clone(),
            "timestamp" => Value::from(super::time::rfc3339_ms(self.timestamp)),
            "timestamp_ms" => Value::from(self.timestamp),
            "timestamp_s" => Value::from(self.timestamp / 1000),
            "seq" => self.seq.clone(),
            "event" => self.event.clone(),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&[
            "device_id",
            "device_type",
            "labels",
            "fields",
            "timestamp",
            "timestamp_ms",
            "timestamp_s",
            "seq",
            "event",
        ])
    }
}

/// A template error with its line and column, and what went wrong.
fn describe(e: &minijinja::Error, source: &str) -> String {
    let what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    match (e.line(), e.range()) {
        (Some(line), Some(r)) => {
            let start = source[..r.start.min(source.len())].rfind('\n').map_or(0, |i| i + 1);
            format!("line {line}, column {}: {what}", r.start.saturating_sub(start) + 1)
        }
        (Some(line), None) => format!("line {line}: {what}"),
        _ => what,
    }
}

/// A profile's payload format.
#[derive(Clone, Debug)]
pub enum Kind {
    Envelope,
    Flat(Flat),
    Template(Arc<Template>),
    Cbor,
    Senml,
    SenmlCbor,
    Protobuf(Arc<super::proto::Proto>),
    /// Sparkplug B edge nodes: stateful per node, encoded by the shard (`sim::sparkplug`).
    Sparkplug(Arc<super::sparkplug::Spec>),
}

/// A profile's payload format, what travels with it and the fields' units.
#[derive(Clone, Debug)]
pub struct PayloadFormat {
    pub kind: Kind,
    pub wire: Wire,
    /// SenML units (`u`) by field name.
    pub units: Vec<(String, String)>,
    /// Whether the profile set `content_type` (a template without one is JSON when its
    /// sample renders as JSON, text otherwise).
    pub typed: bool,
    /// Where the template was given (`profiles.NAME.template`), for problems found later.
    pub path: String,
    /// A JSON template's `audit = { device_id, seq }`: JSON pointers to the id and the seq.
    pub audit: Option<(String, String)>,
}

impl Default for PayloadFormat {
    fn default() -> Self {
        PayloadFormat {
            kind: Kind::Envelope,
            wire: Wire::default(),
            units: vec![],
            typed: false,
            path: String::new(),
            audit: None,
        }
    }
}

impl PayloadFormat {
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Envelope => "envelope",
            Kind::Flat(_) => "flat",
            Kind::Template(_) => "template",
            Kind::Cbor => "cbor",
            Kind::Senml => "senml",
            Kind::SenmlCbor => "senml_cbor",
            Kind::Protobuf(_) => "protobuf",
            Kind::Sparkplug(_) => "sparkplug_b",
        }
    }

    /// The Sparkplug B settings of a `sparkplug_b` profile.
    pub fn sparkplug(&self) -> Option<&super::sparkplug::Spec> {
        match &self.kind {
            Kind::Sparkplug(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_envelope(&self) -> bool {
        matches!(self.kind, Kind::Envelope)
    }

    /// Whether a payload starts with `{"device_id":"...` (the envelope, or flat with that
    /// id key), where the HTTP sink finds the id for an endpoint's `{device_id}`.
    pub fn leads_with_device_id(&self) -> bool {
        match &self.kind {
            Kind::Envelope => true,
            Kind::Flat(f) => f.id_key_json == "\"device_id\":",
            _ => false,
        }
    }

    /// The default content type and CoAP Content-Format of a format name.
    pub fn default_wire(name: &str) -> Wire {
        match name {
            "cbor" => Wire { body: Body::Binary, content_type: "application/cbor", coap: 60 },
            "senml" => Wire { body: Body::Json, content_type: "application/senml+json", coap: 110 },
            "senml_cbor" => {
                Wire { body: Body::Binary, content_type: "application/senml+cbor", coap: 112 }
            }
            // RFC 7252's registry has no protobuf entry: 42 (application/octet-stream).
            "sparkplug_b" | "protobuf" => {
                Wire { body: Body::Binary, content_type: "application/x-protobuf", coap: 42 }
            }
            _ => Wire::default(),
        }
    }

    fn unit(&self, name: &str) -> Option<&str> {
        self.units.iter().find(|(n, _)| n == name).map(|(_, u)| u.as_str())
    }
}

/// One message to encode.
pub struct Msg<'a> {
    pub device_id: &'a str,
    pub device_type: &'a str,
    /// `"event":"NAME",` of an event message (empty otherwise).
    pub event_json: &'a str,
    pub event_name: Option<&'a str>,
    pub fields: &'a [FieldSpec],
    pub samples: &'a [Sample],
    pub timestamp: SimMs,
    pub labels: &'a BTreeMap<String, String>,
    /// Written when the profile asks for it (`seq = true`); a template always sees it.
    pub seq: Option<u64>,
    pub write_seq: bool,
}

/// One field value, typed.
pub enum Val<'a> {
    Num(f64),
    Str(std::borrow::Cow<'a, str>),
    Bool(bool),
    Null,
    /// A static array or object (JSON text).
    Json(&'a str),
}

impl Val<'_> {
    fn to_jinja(&self) -> minijinja::Value {
        use minijinja::Value;
        match self {
            Val::Num(v) => Value::from(*v),
            Val::Str(s) => Value::from(s.as_ref()),
            Val::Bool(b) => Value::from(*b),
            Val::Null => Value::from(()),
            Val::Json(j) => serde_json::from_str::<serde_json::Value>(j)
                .map(|v| json_to_jinja(&v))
                .unwrap_or(Value::from(())),
        }
    }
}

fn json_to_jinja(v: &serde_json::Value) -> minijinja::Value {
    use minijinja::Value;
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from(()),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => a.iter().map(json_to_jinja).collect(),
        serde_json::Value::Object(o) => Value::from(
            o.iter().map(|(k, x)| (k.clone(), json_to_jinja(x))).collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// The value a field's sample stands for.
pub fn value_of(field: &FieldSpec, sample: Sample) -> Val<'_> {
    match (sample, &field.generator) {
        (Sample::Number(v), _) => Val::Num(v),
        (Sample::State(i), GenSpec::Markov(m)) => Val::Str(m.states[i].as_str().into()),
        (Sample::Static, GenSpec::Static { json, number }) => match (number, json.as_str()) {
            (Some(n), _) => Val::Num(*n),
            (_, "true") => Val::Bool(true),
            (_, "false") => Val::Bool(false),
            (_, "null") => Val::Null,
            (_, j) if j.starts_with('"') => match serde_json::from_str::<&str>(j) {
                Ok(s) => Val::Str(s.into()),
                Err(_) => {
                    serde_json::from_str::<String>(j).map_or(Val::Null, |s| Val::Str(s.into()))
                }
            },
            (_, j) => Val::Json(j),
        },
        _ => Val::Null,
    }
}

/// Encodes `m` in a non-envelope format into `out` (cleared first). The envelope itself is
/// `payload::encode`'s.
pub fn encode(out: &mut Vec<u8>, f: &PayloadFormat, m: &Msg<'_>) {
    out.clear();
    match &f.kind {
        Kind::Envelope => {}
        Kind::Flat(flat) => encode_flat(out, flat, m),
        Kind::Template(t) => {
            // A template that rendered at load but fails now (a value it cannot take) sends an
            // empty payload rather than a wrong one.
            if t.render(out, m).is_err() {
                out.clear();
            }
        }
        Kind::Cbor => encode_cbor(out, m),
        Kind::Senml => encode_senml(out, f, m),
        Kind::SenmlCbor => encode_senml_cbor(out, f, m),
        Kind::Protobuf(p) => super::proto::encode(out, p, m),
        // Which message a sample becomes depends on its edge node's state: see
        // `sim::sparkplug` (the shard and `payload preview` call it); a lone message is DDATA.
        Kind::Sparkplug(_) => {
            super::sparkplug::encode_ddata(out, m.timestamp, 0, 1, m.fields, m.samples, None)
        }
    }
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn encode_flat(out: &mut Vec<u8>, flat: &Flat, m: &Msg<'_>) {
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    if !flat.id_key_json.is_empty() {
        sep(out);
        out.extend_from_slice(flat.id_key_json.as_bytes());
        write_json_str(out, m.device_id);
    }
    if !flat.ts_key_json.is_empty() {
        sep(out);
        out.extend_from_slice(flat.ts_key_json.as_bytes());
        match flat.ts {
            TsMode::Rfc3339 => {
                out.push(b'"');
                write_rfc3339_ms(out, m.timestamp);
                out.push(b'"');
            }
            TsMode::Ms => write_u64(out, m.timestamp),
            TsMode::S => write_u64(out, m.timestamp / 1000),
        }
    }
    if !m.event_json.is_empty() {
        sep(out);
        // `"event":"NAME",`: without its trailing comma.
        out.extend_from_slice(&m.event_json.as_bytes()[..m.event_json.len() - 1]);
    }
    for (field, sample) in m.fields.iter().zip(m.samples) {
        sep(out);
        out.extend_from_slice(field.key_json.as_bytes());
        write_sample(out, field, *sample);
    }
    if m.write_seq
        && let Some(seq) = m.seq
    {
        sep(out);
        out.extend_from_slice(b"\"seq\":");
        write_u64(out, seq);
    }
    out.push(b'}');
}

fn cbor_val(out: &mut Vec<u8>, v: &Val<'_>) {
    match v {
        Val::Num(x) => cbor::float(out, *x),
        Val::Str(s) => cbor::text(out, s),
        Val::Bool(b) => cbor::bool(out, *b),
        Val::Null => cbor::null(out),
        Val::Json(j) => match serde_json::from_str::<serde_json::Value>(j) {
            Ok(v) => cbor::json(out, &v),
            Err(_) => cbor::null(out),
        },
    }
}

fn encode_cbor(out: &mut Vec<u8>, m: &Msg<'_>) {
    let event = m.event_name.is_some();
    let seq = m.write_seq && m.seq.is_some();
    let n = 4 + event as usize + !m.labels.is_empty() as usize + seq as usize;
    cbor::map(out, n);
    cbor::text(out, "device_id");
    cbor::text(out, m.device_id);
    cbor::text(out, "device_type");
    cbor::text(out, m.device_type);
    cbor::text(out, "timestamp");
    // An RFC 3339 timestamp is 24 bytes.
    out.push(0x60 | 24);
    out.push(24);
    write_rfc3339_ms(out, m.timestamp);
    if let Some(e) = m.event_name {
        cbor::text(out, "event");
        cbor::text(out, e);
    }
    cbor::text(out, "fields");
    cbor::map(out, m.fields.len().min(m.samples.len()));
    for (f, s) in m.fields.iter().zip(m.samples) {
        cbor::text(out, &f.name);
        cbor_val(out, &value_of(f, *s));
    }
    if !m.labels.is_empty() {
        cbor::text(out, "labels");
        cbor::map(out, m.labels.len());
        for (k, v) in m.labels {
            cbor::text(out, k);
            cbor::text(out, v);
        }
    }
    if seq && let Some(s) = m.seq {
        cbor::text(out, "seq");
        cbor::uint(out, s);
    }
}

/// The SenML base name of a device: its id and a colon, as RFC 8428's examples write it.
fn base_name(out: &mut Vec<u8>, id: &str, json: bool) {
    if json {
        out.push(b'"');
        let start = out.len();
        write_json_str(out, id);
        // `write_json_str` added the quotes: drop them and add the colon inside.
        out.remove(start);
        out.pop();
        out.extend_from_slice(b":\"");
    } else {
        cbor::head(out, 3, id.len() as u64 + 1);
        out.extend_from_slice(id.as_bytes());
        out.push(b':');
    }
}

/// The SenML base time: seconds, an integer when whole.
fn base_time_json(out: &mut Vec<u8>, t: SimMs) {
    if t.is_multiple_of(1000) {
        write_u64(out, t / 1000);
    } else {
        write_f64(out, t as f64 / 1000.0);
    }
}

fn encode_senml(out: &mut Vec<u8>, f: &PayloadFormat, m: &Msg<'_>) {
    out.extend_from_slice(b"[{\"bn\":");
    base_name(out, m.device_id, true);
    out.extend_from_slice(b",\"bt\":");
    base_time_json(out, m.timestamp);
    let mut first = true;
    let mut open = |out: &mut Vec<u8>| {
        if std::mem::take(&mut first) {
            out.push(b',');
        } else {
            out.extend_from_slice(b"},{");
        }
    };
    if let Some(e) = m.event_name {
        open(out);
        out.extend_from_slice(b"\"n\":\"event\",\"vs\":");
        write_json_str(out, e);
    }
    for (field, sample) in m.fields.iter().zip(m.samples) {
        open(out);
        out.extend_from_slice(b"\"n\":");
        write_json_str(out, &field.name);
        if m.event_name.is_none()
            && let Some(u) = f.unit(&field.name)
        {
            out.extend_from_slice(b",\"u\":");
            write_json_str(out, u);
        }
        match value_of(field, *sample) {
            Val::Num(_) | Val::Null => {
                out.extend_from_slice(b",\"v\":");
                write_sample(out, field, *sample);
            }
            Val::Bool(b) => {
                out.extend_from_slice(if b { b",\"vb\":true" } else { b",\"vb\":false" })
            }
            Val::Str(s) => {
                out.extend_from_slice(b",\"vs\":");
                write_json_str(out, &s);
            }
            Val::Json(j) => {
                out.extend_from_slice(b",\"vs\":");
                write_json_str(out, j);
            }
        }
    }
    if m.write_seq
        && let Some(seq) = m.seq
    {
        open(out);
        out.extend_from_slice(b"\"n\":\"seq\",\"v\":");
        write_u64(out, seq);
    }
    out.extend_from_slice(b"}]");
}

/// RFC 8428 section 6: the CBOR labels.
mod label {
    pub const BN: i64 = -2;
    pub const BT: i64 = -3;
    pub const N: i64 = 0;
    pub const U: i64 = 1;
    pub const V: i64 = 2;
    pub const VS: i64 = 3;
    pub const VB: i64 = 4;
}

fn encode_senml_cbor(out: &mut Vec<u8>, f: &PayloadFormat, m: &Msg<'_>) {
    let event = m.event_name.is_some();
    let seq = m.write_seq && m.seq.is_some();
    let n_fields = m.fields.len().min(m.samples.len());
    let records = event as usize + n_fields + seq as usize;
    cbor::array(out, records.max(1));
    let mut first = true;
    // Opens a record of `n` keys besides the base ones on the first record.
    let mut open = |out: &mut Vec<u8>, n: usize| {
        if std::mem::take(&mut first) {
            cbor::map(out, n + 2);
            cbor::int(out, label::BN);
            base_name(out, m.device_id, false);
            cbor::int(out, label::BT);
            if m.timestamp.is_multiple_of(1000) {
                cbor::uint(out, m.timestamp / 1000);
            } else {
                cbor::float(out, m.timestamp as f64 / 1000.0);
            }
        } else {
            cbor::map(out, n);
        }
    };
    if let Some(e) = m.event_name {
        open(out, 2);
        cbor::int(out, label::N);
        cbor::text(out, "event");
        cbor::int(out, label::VS);
        cbor::text(out, e);
    }
    for (field, sample) in m.fields.iter().zip(m.samples) {
        let unit = if event { None } else { f.unit(&field.name) };
        open(out, 2 + unit.is_some() as usize);
        cbor::int(out, label::N);
        cbor::text(out, &field.name);
        if let Some(u) = unit {
            cbor::int(out, label::U);
            cbor::text(out, u);
        }
        match value_of(field, *sample) {
            Val::Num(v) => {
                cbor::int(out, label::V);
                cbor::float(out, v);
            }
            Val::Null => {
                cbor::int(out, label::V);
                cbor::float(out, f64::NAN);
            }
            Val::Bool(b) => {
                cbor::int(out, label::VB);
                cbor::bool(out, b);
            }
            Val::Str(s) => {
                cbor::int(out, label::VS);
                cbor::text(out, &s);
            }
            Val::Json(j) => {
                cbor::int(out, label::VS);
                cbor::text(out, j);
            }
        }
    }
    if seq && let Some(s) = m.seq {
        open(out, 2);
        cbor::int(out, label::N);
        cbor::text(out, "seq");
        cbor::int(out, label::V);
        cbor::uint(out, s);
    }
    if records == 0 {
        open(out, 0);
    }
}

/// Appends `bytes` as lowercase hex.
pub fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 0xf) as usize]);
    }
}
