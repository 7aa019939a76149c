//! Reading the device id, type, timestamp, seq and event out of a payload in every built-in
//! format: the envelope (borrowed, no allocation), flat, CBOR, SenML (JSON and CBOR), a JSON
//! template through its `audit = { device_id, seq }` pointers, and protobuf through its
//! profile's plan. A fleet whose profiles use several formats tries each format it has; the
//! ledger takes the first reading whose device's profile has that format.

use crate::sim::format::{Flat, Kind, PayloadFormat, TsMode};
use crate::sim::proto::{self, Proto};
use crate::sim::time::parse_rfc3339;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// A message's timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ts {
    /// The format has none (a template, SenML without `bt`).
    Absent,
    /// Present but not a time: the message was corrupted.
    Bad,
    Ms(u64),
}

/// What the audit reads out of one message.
#[derive(Debug)]
pub struct Meta<'a> {
    pub device_id: Cow<'a, str>,
    /// `None`: the format does not carry it.
    pub device_type: Option<Cow<'a, str>>,
    pub ts: Ts,
    pub seq: Option<u64>,
    pub event: bool,
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    #[serde(borrow)]
    device_type: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    event: Option<serde::de::IgnoredAny>,
}

/// How to read one format.
#[derive(Clone, Debug)]
pub enum Decoder {
    Envelope,
    Flat {
        id: String,
        ts: Option<String>,
        mode: TsMode,
    },
    /// The envelope as a CBOR map.
    Cbor,
    Senml,
    SenmlCbor,
    /// JSON pointers to the id and the seq.
    Template {
        id: String,
        seq: String,
    },
    Protobuf(Arc<Proto>),
}

/// The text of a JSON object key written as `"KEY":`.
fn key_of(key_json: &str) -> Option<String> {
    serde_json::from_str(key_json.strip_suffix(':')?).ok()
}

impl Decoder {
    /// The decoder of a profile's format (`None`: one the audit config refuses).
    pub fn of(f: &PayloadFormat) -> Option<Decoder> {
        Some(match &f.kind {
            Kind::Envelope => Decoder::Envelope,
            Kind::Flat(Flat { id_key_json, ts_key_json, ts }) => {
                Decoder::Flat { id: key_of(id_key_json)?, ts: key_of(ts_key_json), mode: *ts }
            }
            Kind::Cbor => Decoder::Cbor,
            Kind::Senml => Decoder::Senml,
            Kind::SenmlCbor => Decoder::SenmlCbor,
            Kind::Template(_) => {
                let (id, seq) = f.audit.clone()?;
                Decoder::Template { id, seq }
            }
            Kind::Protobuf(p) => Decoder::Protobuf(p.clone()),
            // Audited by `seq` per edge node (`audit/sparkplug.rs`).
            Kind::Sparkplug(_) => return None,
        })
    }

    /// Whether a profile with format `f` publishes what this decoder reads.
    pub fn fits(&self, f: &PayloadFormat) -> bool {
        match (self, &f.kind) {
            (Decoder::Protobuf(a), Kind::Protobuf(b)) => Arc::ptr_eq(a, b),
            (Decoder::Envelope, Kind::Envelope)
            | (Decoder::Cbor, Kind::Cbor)
            | (Decoder::Senml, Kind::Senml)
            | (Decoder::SenmlCbor, Kind::SenmlCbor) => true,
            (Decoder::Flat { .. } | Decoder::Template { .. }, _) => {
                Decoder::of(f).is_some_and(|d| d.same(self))
            }
            _ => false,
        }
    }

    fn same(&self, o: &Decoder) -> bool {
        match (self, o) {
            (Decoder::Flat { id, ts, mode }, Decoder::Flat { id: i, ts: t, mode: m }) => {
                id == i && ts == t && mode == m
            }
            (Decoder::Template { id, seq }, Decoder::Template { id: i, seq: s }) => {
                id == i && seq == s
            }
            (Decoder::Protobuf(a), Decoder::Protobuf(b)) => Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }

    /// The decoders of a set of formats, each once.
    pub fn all<'a>(formats: impl Iterator<Item = &'a PayloadFormat>) -> Vec<Decoder> {
        let mut out: Vec<Decoder> = vec![];
        for d in formats.filter_map(Decoder::of) {
            if !out.iter().any(|o| o.same(&d)) {
                out.push(d);
            }
        }
        out
    }

    /// Reads `b`; `None` when it is not a message of this format.
    pub fn read<'a>(&self, b: &'a [u8]) -> Option<Meta<'a>> {
        match self {
            Decoder::Envelope => {
                let e: Envelope<'a> = serde_json::from_slice(b).ok()?;
                let ts = parse_rfc3339(&e.timestamp).map_or(Ts::Bad, Ts::Ms);
                Some(Meta {
                    device_id: e.device_id,
                    device_type: Some(e.device_type),
                    ts,
                    seq: e.seq,
                    event: e.event.is_some(),
                })
            }
            Decoder::Cbor => envelope_value(crate::sim::cbor::to_json(b)?),
            Decoder::Flat { id, ts, mode } => {
                let v: Value = serde_json::from_slice(b).ok()?;
                let o = v.as_object()?;
                let ts = match ts.as_ref().map(|k| o.get(k)) {
                    None | Some(None) => Ts::Absent,
                    Some(Some(t)) => time(t, *mode),
                };
                Some(Meta {
                    device_id: Cow::Owned(o.get(id)?.as_str()?.to_string()),
                    device_type: None,
                    ts,
                    seq: o.get("seq").and_then(Value::as_u64),
                    event: o.contains_key("event"),
                })
            }
            Decoder::Senml => senml(serde_json::from_slice(b).ok()?, ["bn", "bt", "n", "v", "vs"]),
            Decoder::SenmlCbor => senml(crate::sim::cbor::to_json(b)?, ["-2", "-3", "0", "2", "3"]),
            Decoder::Template { id, seq } => {
                let v: Value = serde_json::from_slice(b).ok()?;
                let device_id = match v.pointer(id)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some(Meta {
                    device_id: Cow::Owned(device_id),
                    device_type: None,
                    ts: Ts::Absent,
                    seq: v.pointer(seq).and_then(Value::as_u64),
                    event: false,
                })
            }
            Decoder::Protobuf(p) => {
                let m = proto::read_meta(p, b)?;
                Some(Meta {
                    device_id: Cow::Borrowed(m.device_id?),
                    device_type: m.device_type.map(Cow::Borrowed),
                    ts: m.ts_ms.map_or(Ts::Absent, Ts::Ms),
                    seq: m.seq,
                    event: m.event.is_some(),
                })
            }
        }
    }
}

fn time(v: &Value, mode: TsMode) -> Ts {
    match (mode, v) {
        (TsMode::Rfc3339, Value::String(s)) => parse_rfc3339(s).map_or(Ts::Bad, Ts::Ms),
        (TsMode::Ms, Value::Number(n)) => n.as_u64().map_or(Ts::Bad, Ts::Ms),
        (TsMode::S, Value::Number(n)) => {
            n.as_u64().and_then(|s| s.checked_mul(1000)).map_or(Ts::Bad, Ts::Ms)
        }
        _ => Ts::Bad,
    }
}

/// The envelope's keys out of a JSON value (CBOR read as JSON).
fn envelope_value<'a>(v: Value) -> Option<Meta<'a>> {
    let o = v.as_object()?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(|s| Cow::Owned(s.to_string()));
    Some(Meta {
        device_id: text("device_id")?,
        device_type: Some(text("device_type")?),
        ts: match o.get("timestamp") {
            Some(t) => time(t, TsMode::Rfc3339),
            None => Ts::Bad,
        },
        seq: o.get("seq").and_then(Value::as_u64),
        event: o.contains_key("event"),
    })
}

/// A SenML pack (RFC 8428): the id from the base name (`ID:`), the time from the base time
/// (seconds), the seq and the event from the records named so. `k`: the labels of bn, bt, n,
/// v and vs (names in JSON, integers in CBOR).
fn senml<'a>(v: Value, k: [&str; 5]) -> Option<Meta<'a>> {
    let [bn, bt, n, val, _vs] = k;
    let records = v.as_array()?;
    let first = records.first()?.as_object()?;
    let id = first.get(bn)?.as_str()?.strip_suffix(':')?.to_string();
    let ts = match first.get(bt) {
        None => Ts::Absent,
        Some(t) => match t.as_f64() {
            Some(s) if s >= 0.0 && s.is_finite() => Ts::Ms((s * 1000.0).round() as u64),
            _ => Ts::Bad,
        },
    };
    let (mut seq, mut event) = (None, false);
    for r in records {
        let r = r.as_object()?;
        match r.get(n).and_then(Value::as_str) {
            Some("seq") => seq = r.get(val).and_then(Value::as_u64),
            Some("event") => event = true,
            _ => {}
        }
    }
    Some(Meta { device_id: Cow::Owned(id), device_type: None, ts, seq, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senml_packs_give_id_time_and_seq() {
        let m = Decoder::Senml
            .read(br#"[{"bn":"t-1:","bt":1700000000.5,"n":"x","v":1},{"n":"seq","v":7}]"#)
            .unwrap();
        assert_eq!(
            (m.device_id.as_ref(), m.ts, m.seq, m.event),
            ("t-1", Ts::Ms(1_700_000_000_500), Some(7), false)
        );
        assert!(Decoder::Senml.read(br#"[{"bn":"t-1","n":"x","v":1}]"#).is_none());
    }

    #[test]
    fn templates_read_their_pointers() {
        let d = Decoder::Template { id: "/who/id".into(), seq: "/n".into() };
        let m = d.read(br#"{"who":{"id":"a-7"},"n":3}"#).unwrap();
        assert_eq!((m.device_id.as_ref(), m.seq, m.ts), ("a-7", Some(3), Ts::Absent));
        assert!(d.read(br#"{"n":3}"#).is_none());
    }
}
