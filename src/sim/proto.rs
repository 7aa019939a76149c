//! `format = "protobuf"`: a message of the user's `.proto`, written by hand from a plan made
//! once per profile at load (`config/format/proto.rs` reads the `.proto` and checks every
//! field against the message).
//!
//! The plan holds, for each part of a message (device id, type, timestamp, seq, event,
//! labels, each field by name), the proto field number and wire type it goes to; encoding
//! writes the tags and values straight into the shard's reused buffer (no message object, no
//! allocation). Fields are written in field-number order of the plan's parts, then the
//! simulated fields in name order; a value the proto type cannot take at run time (a NaN into
//! an integer, a state that is not an enum value) is left out, as proto3 leaves out defaults.

use super::format::{Msg, Val, value_of};
use super::time::write_rfc3339_ms;
use std::sync::Arc;

/// A proto scalar type (`google/protobuf/descriptor.proto`'s `FieldDescriptorProto.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// An enum: its values by name.
    Enum,
}

impl Scalar {
    pub fn is_number(self) -> bool {
        !matches!(self, Scalar::Bool | Scalar::String | Scalar::Bytes | Scalar::Enum)
    }

    pub fn is_integer(self) -> bool {
        self.is_number() && !matches!(self, Scalar::Double | Scalar::Float)
    }

    /// Whether an integer type is 32 bits wide.
    pub fn is_32(self) -> bool {
        matches!(
            self,
            Scalar::Int32 | Scalar::Uint32 | Scalar::Sint32 | Scalar::Fixed32 | Scalar::Sfixed32
        )
    }

    /// The wire type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit).
    pub fn wire_type(self) -> u32 {
        match self {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => 1,
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => 5,
            Scalar::String | Scalar::Bytes => 2,
            _ => 0,
        }
    }
}

/// One proto field a part of the message goes to.
#[derive(Clone, Debug)]
pub struct Slot {
    pub number: u32,
    pub ty: Scalar,
    /// An enum's values (name, number).
    pub enum_values: Vec<(String, i32)>,
}

/// How the timestamp is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsEnc {
    /// `google.protobuf.Timestamp` (seconds, nanos).
    Timestamp,
    /// Epoch milliseconds in an integer field.
    Ms(Scalar),
    /// Epoch seconds in an integer field.
    S(Scalar),
    /// RFC 3339 text in a string field.
    Rfc3339,
}

/// Decodes a payload into text for people.
pub type View = Arc<dyn Fn(&[u8]) -> String + Send + Sync>;

/// A profile's compiled protobuf plan.
#[derive(Default)]
pub struct Proto {
    /// The message's full name (`acme.v1.Telemetry`).
    pub message: String,
    pub device_id: Option<u32>,
    pub device_type: Option<u32>,
    pub timestamp: Option<(u32, TsEnc)>,
    pub seq: Option<Slot>,
    pub event: Option<u32>,
    /// A `map<string, string>` field.
    pub labels: Option<u32>,
    /// The field number of a `fields` sub-message holding the simulated fields (none: they
    /// are fields of the message itself).
    pub nested: Option<u32>,
    /// The simulated fields' slots, by name (sorted).
    pub fields: Vec<(String, Slot)>,
    /// Decodes a payload for people (`payload preview`): the message in protobuf text format.
    pub view: Option<View>,
}

impl std::fmt::Debug for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proto")
            .field("message", &self.message)
            .field("fields", &self.fields)
            .finish()
    }
}

impl Proto {
    fn slot(&self, name: &str) -> Option<&Slot> {
        self.fields.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(|i| &self.fields[i].1)
    }
}

#[inline]
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn key(out: &mut Vec<u8>, number: u32, wire: u32) {
    varint(out, ((number as u64) << 3) | wire as u64);
}

fn bytes_field(out: &mut Vec<u8>, number: u32, b: &[u8]) {
    key(out, number, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes an integer into an integer field of type `ty`.
fn int(out: &mut Vec<u8>, number: u32, ty: Scalar, v: i64) {
    key(out, number, ty.wire_type());
    match ty {
        // Negative int32 and int64 take ten bytes (sign-extended), as the spec says.
        Scalar::Int32 => varint(out, v.clamp(i32::MIN as i64, i32::MAX as i64) as u64),
        Scalar::Int64 | Scalar::Enum | Scalar::Bool => varint(out, v as u64),
        Scalar::Uint32 => varint(out, v.clamp(0, u32::MAX as i64) as u64),
        Scalar::Uint64 => varint(out, v.max(0) as u64),
        Scalar::Sint32 => {
            let v = v.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            varint(out, ((v << 1) ^ (v >> 31)) as u32 as u64)
        }
        Scalar::Sint64 => varint(out, ((v << 1) ^ (v >> 63)) as u64),
        Scalar::Fixed32 => {
            out.extend_from_slice(&(v.clamp(0, u32::MAX as i64) as u32).to_le_bytes())
        }
        Scalar::Sfixed32 => {
            out.extend_from_slice(&(v.clamp(i32::MIN as i64, i32::MAX as i64) as i32).to_le_bytes())
        }
        Scalar::Fixed64 => out.extend_from_slice(&(v.max(0) as u64).to_le_bytes()),
        Scalar::Sfixed64 => out.extend_from_slice(&v.to_le_bytes()),
        Scalar::Double => out.extend_from_slice(&(v as f64).to_le_bytes()),
        Scalar::Float => out.extend_from_slice(&(v as f32).to_le_bytes()),
        Scalar::String | Scalar::Bytes => {}
    }
}

/// Writes one simulated value into its slot; a value the type cannot take is left out.
fn value(out: &mut Vec<u8>, s: &Slot, v: &Val<'_>) {
    match (v, s.ty) {
        (Val::Num(x), Scalar::Double) => {
            key(out, s.number, 1);
            out.extend_from_slice(&x.to_le_bytes());
        }
        (Val::Num(x), Scalar::Float) => {
            key(out, s.number, 5);
            out.extend_from_slice(&(*x as f32).to_le_bytes());
        }
        // An integer field takes the value rounded to the nearest integer.
        (Val::Num(x), ty) if ty.is_integer() && x.is_finite() => {
            int(out, s.number, ty, x.round() as i64)
        }
        (Val::Bool(b), Scalar::Bool) => int(out, s.number, Scalar::Bool, *b as i64),
        (Val::Str(t), Scalar::String) => bytes_field(out, s.number, t.as_bytes()),
        (Val::Json(j), Scalar::String) => bytes_field(out, s.number, j.as_bytes()),
        (Val::Str(t), Scalar::Enum) => {
            if let Some((_, n)) = s.enum_values.iter().find(|(name, _)| name == t) {
                int(out, s.number, Scalar::Enum, *n as i64);
            }
        }
        _ => {}
    }
}

/// Starts a length-delimited sub-message: returns where its body starts.
fn open(out: &mut Vec<u8>, number: u32) -> usize {
    key(out, number, 2);
    // One byte of length, the common case; `close` makes room when the body is longer.
    out.push(0);
    out.len()
}

fn close(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
    } else {
        let mut l = Vec::with_capacity(4);
        varint(&mut l, len as u64);
        out.splice(start - 1..start, l);
    }
}

fn fields(out: &mut Vec<u8>, p: &Proto, m: &Msg<'_>) {
    for (f, s) in m.fields.iter().zip(m.samples) {
        if let Some(slot) = p.slot(&f.name) {
            value(out, slot, &value_of(f, *s));
        }
    }
}

/// Encodes `m` with plan `p` into `out` (already cleared).
pub fn encode(out: &mut Vec<u8>, p: &Proto, m: &Msg<'_>) {
    if let Some(n) = p.device_id {
        bytes_field(out, n, m.device_id.as_bytes());
    }
    if let Some(n) = p.device_type {
        bytes_field(out, n, m.device_type.as_bytes());
    }
    if let Some((n, enc)) = p.timestamp {
        let t = m.timestamp;
        match enc {
            TsEnc::Timestamp => {
                let at = open(out, n);
                int(out, 1, Scalar::Int64, (t / 1000) as i64);
                let nanos = (t % 1000) * 1_000_000;
                if nanos != 0 {
                    int(out, 2, Scalar::Int32, nanos as i64);
                }
                close(out, at);
            }
            TsEnc::Ms(ty) => int(out, n, ty, t as i64),
            TsEnc::S(ty) => int(out, n, ty, (t / 1000) as i64),
            TsEnc::Rfc3339 => {
                key(out, n, 2);
                // RFC 3339 with milliseconds is 24 bytes.
                out.push(24);
                write_rfc3339_ms(out, t);
            }
        }
    }
    if let (Some(n), Some(e)) = (p.event, m.event_name) {
        bytes_field(out, n, e.as_bytes());
    }
    match p.nested {
        Some(n) => {
            let at = open(out, n);
            fields(out, p, m);
            close(out, at);
        }
        None => fields(out, p, m),
    }
    // As in the envelope: when the profile asks for it (`seq = true`).
    if let (Some(s), Some(seq), true) = (&p.seq, m.seq, m.write_seq) {
        int(out, s.number, s.ty, seq.min(i64::MAX as u64) as i64);
    }
    if let Some(n) = p.labels {
        for (k, v) in m.labels {
            let at = open(out, n);
            bytes_field(out, 1, k.as_bytes());
            bytes_field(out, 2, v.as_bytes());
            close(out, at);
        }
    }
}

/// What the delivery audit reads out of a payload: the parts the plan writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Meta<'a> {
    pub device_id: Option<&'a str>,
    pub device_type: Option<&'a str>,
    /// Epoch milliseconds.
    pub ts_ms: Option<u64>,
    pub seq: Option<u64>,
    pub event: Option<&'a str>,
}

/// A non-negative integer of type `ty` from its wire value (`raw`: the varint, or the fixed
/// bytes little-endian).
fn uint_of(ty: Scalar, raw: u64) -> Option<u64> {
    let signed = match ty {
        Scalar::Sint32 | Scalar::Sint64 => ((raw >> 1) as i64) ^ -((raw & 1) as i64),
        Scalar::Sfixed32 => raw as u32 as i32 as i64,
        Scalar::Int32 => raw as i32 as i64,
        Scalar::Int64 | Scalar::Sfixed64 => raw as i64,
        _ => return Some(raw),
    };
    u64::try_from(signed).ok()
}

/// One field of a message: its number and value (a varint or fixed value as `u64`, or the
/// bytes of a length-delimited one).
enum Wv<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn next<'a>(b: &'a [u8], i: &mut usize) -> Option<(u32, Wv<'a>)> {
    let k = read_varint(b, i)?;
    let number = u32::try_from(k >> 3).ok().filter(|n| *n > 0)?;
    let v = match k & 7 {
        0 => Wv::Int(read_varint(b, i)?),
        1 => {
            let v = u64::from_le_bytes(b.get(*i..*i + 8)?.try_into().ok()?);
            *i += 8;
            Wv::Int(v)
        }
        5 => {
            let v = u32::from_le_bytes(b.get(*i..*i + 4)?.try_into().ok()?);
            *i += 4;
            Wv::Int(v as u64)
        }
        2 => {
            let len = read_varint(b, i)? as usize;
            let s = b.get(*i..i.checked_add(len)?)?;
            *i += len;
            Wv::Bytes(s)
        }
        _ => return None,
    };
    Some((number, v))
}

/// Reads the id, type, timestamp, seq and event of a payload written with plan `p`; `None`
/// when it is not a well-formed message or a part has the wrong wire type.
pub fn read_meta<'a>(p: &Proto, b: &'a [u8]) -> Option<Meta<'a>> {
    let mut m = Meta::default();
    let text = |v: Wv<'a>| match v {
        Wv::Bytes(s) => std::str::from_utf8(s).ok(),
        Wv::Int(_) => None,
    };
    let mut i = 0;
    while i < b.len() {
        let (n, v) = next(b, &mut i)?;
        if Some(n) == p.device_id {
            m.device_id = Some(text(v)?);
        } else if Some(n) == p.device_type {
            m.device_type = Some(text(v)?);
        } else if Some(n) == p.event {
            m.event = Some(text(v)?);
        } else if let Some(s) = p.seq.as_ref().filter(|s| s.number == n) {
            let Wv::Int(raw) = v else { return None };
            m.seq = Some(uint_of(s.ty, raw)?);
        } else if let Some((_, enc)) = p.timestamp.filter(|(t, _)| *t == n) {
            m.ts_ms = Some(match (enc, v) {
                (TsEnc::Timestamp, Wv::Bytes(body)) => {
                    let (mut secs, mut nanos, mut j) = (0u64, 0u64, 0);
                    while j < body.len() {
                        match next(body, &mut j)? {
                            (1, Wv::Int(s)) => secs = uint_of(Scalar::Int64, s)?,
                            (2, Wv::Int(ns)) => nanos = uint_of(Scalar::Int32, ns)?,
                            _ => {}
                        }
                    }
                    secs.checked_mul(1000)? + nanos / 1_000_000
                }
                (TsEnc::Ms(ty), Wv::Int(raw)) => uint_of(ty, raw)?,
                (TsEnc::S(ty), Wv::Int(raw)) => uint_of(ty, raw)?.checked_mul(1000)?,
                (TsEnc::Rfc3339, Wv::Bytes(s)) => {
                    super::time::parse_rfc3339(std::str::from_utf8(s).ok()?).ok()?
                }
                _ => return None,
            });
        }
    }
    Some(m)
}

/// A schema-less view of a protobuf payload (as `protoc --decode_raw` prints it), for sinks
/// that have no descriptor at hand (the console): `1: "dev-1" 2 { 1: 1700000000 } 3: 21.5`.
/// Length-delimited values print as text when they are UTF-8 without control characters, as
/// a nested message when they parse as one, else as hex; 64-bit values as a double when they
/// look like one. `None` when the bytes are not a protobuf message.
pub fn raw_view(bytes: &[u8]) -> Option<String> {
    let mut s = String::new();
    raw(bytes, &mut s, 0)?;
    Some(s)
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

fn raw(b: &[u8], s: &mut String, depth: usize) -> Option<()> {
    use std::fmt::Write;
    if depth > 8 {
        return None;
    }
    let mut i = 0;
    let mut first = true;
    while i < b.len() {
        let k = read_varint(b, &mut i)?;
        let (number, wire) = (k >> 3, k & 7);
        if number == 0 {
            return None;
        }
        if !std::mem::take(&mut first) {
            s.push(' ');
        }
        match wire {
            0 => {
                let v = read_varint(b, &mut i)?;
                let _ = write!(s, "{number}: {v}");
            }
            1 => {
                let v = u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?);
                i += 8;
                let f = f64::from_bits(v);
                if f.is_finite() && f != 0.0 && f.abs() > 1e-300 && f.abs() < 1e300 {
                    let _ = write!(s, "{number}: {f}");
                } else {
                    let _ = write!(s, "{number}: 0x{v:016x}");
                }
            }
            5 => {
                let v = u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?);
                i += 4;
                let _ = write!(s, "{number}: {} (0x{v:08x})", f32::from_bits(v));
            }
            2 => {
                let len = read_varint(b, &mut i)? as usize;
                let body = b.get(i..i.checked_add(len)?)?;
                i += len;
                match std::str::from_utf8(body) {
                    Ok(t) if !t.chars().any(char::is_control) => {
                        let _ = write!(s, "{number}: {t:?}");
                    }
                    _ => {
                        let mut inner = String::new();
                        if !body.is_empty() && raw(body, &mut inner, depth + 1).is_some() {
                            let _ = write!(s, "{number} {{ {inner} }}");
                        } else {
                            let mut hex = vec![];
                            super::format::write_hex(&mut hex, body);
                            let _ = write!(s, "{number}: 0x{}", String::from_utf8_lossy(&hex));
                        }
                    }
                }
            }
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_follow_the_encoding_spec() {
        let mut out = vec![];
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        int(&mut out, 1, Scalar::Sint32, -1);
        assert_eq!(out, [0x08, 0x01]);
        out.clear();
        int(&mut out, 1, Scalar::Int32, -1);
        assert_eq!(out.len(), 11, "a negative int32 takes ten bytes: {out:?}");
        out.clear();
        int(&mut out, 2, Scalar::Sint64, 2);
        assert_eq!(out, [0x10, 0x04]);
    }

    #[test]
    fn a_long_sub_message_gets_a_two_byte_length() {
        let mut out = vec![];
        let at = open(&mut out, 3);
        bytes_field(&mut out, 1, &[b'x'; 200]);
        close(&mut out, at);
        // key 0x1a, length 203 as a varint (0xcb 0x01), then the body.
        assert_eq!(&out[..3], &[0x1a, 0xcb, 0x01]);
        assert_eq!(out.len(), 3 + 203);
        assert!(raw_view(&out).unwrap().len() > 200);
    }

    #[test]
    fn raw_view_reads_nested_messages_and_refuses_garbage() {
        let mut out = vec![];
        bytes_field(&mut out, 1, b"dev-1");
        let at = open(&mut out, 2);
        int(&mut out, 1, Scalar::Int64, 1_700_000_000);
        close(&mut out, at);
        key(&mut out, 3, 1);
        out.extend_from_slice(&21.5f64.to_le_bytes());
        assert_eq!(raw_view(&out).unwrap(), "1: \"dev-1\" 2 { 1: 1700000000 } 3: 21.5");
        assert_eq!(raw_view(&[0x0f]), None);
    }
}
