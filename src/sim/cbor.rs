//! A minimal CBOR (RFC 8949) writer for the payload formats: definite-length maps and arrays,
//! text strings, integers, booleans, null and floats, written straight into a reused buffer.
//!
//! Floats use preferred serialization between single and double precision: a value that
//! survives the round trip through `f32` is written in 5 bytes, any other in 9; NaN is the
//! single-precision quiet NaN. Integers use the shortest head.

/// Appends a head: major type `major` (0..=7) with argument `n`, in its shortest form.
pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// A text string.
pub fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A signed integer.
pub fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        head(out, 1, (-1 - v) as u64);
    }
}

/// An unsigned integer.
pub fn uint(out: &mut Vec<u8>, v: u64) {
    head(out, 0, v);
}

pub fn map(out: &mut Vec<u8>, len: usize) {
    head(out, 5, len as u64);
}

pub fn array(out: &mut Vec<u8>, len: usize) {
    head(out, 4, len as u64);
}

pub fn bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { 0xf5 } else { 0xf4 });
}

pub fn null(out: &mut Vec<u8>) {
    out.push(0xf6);
}

/// A float: single precision when that is exact, double otherwise.
pub fn float(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(&[0xfa, 0x7f, 0xc0, 0, 0]);
        return;
    }
    let single = v as f32;
    if single as f64 == v {
        out.push(0xfa);
        out.extend_from_slice(&single.to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A JSON value as CBOR (a static field's constant that is an array or an object).
pub fn json(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => null(out),
        Value::Bool(b) => bool(out, *b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => int(out, i),
            (None, Some(f)) => float(out, f),
            _ => null(out),
        },
        Value::String(s) => text(out, s),
        Value::Array(a) => {
            array(out, a.len());
            for x in a {
                json(out, x);
            }
        }
        Value::Object(o) => {
            map(out, o.len());
            for (k, x) in o {
                text(out, k);
                json(out, x);
            }
        }
    }
}

/// CBOR diagnostic notation (RFC 8949 section 8) of `bytes`, for the console and the preview:
/// `{"device_id": "t-0001", "fields": {"t": 21.5}}`. Text that is not well-formed CBOR ends
/// with `<malformed>`.
pub fn diagnostic(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    if item(bytes, &mut pos, &mut out, 0).is_none() {
        out.push_str("<malformed>");
    } else if pos < bytes.len() {
        out.push_str(" <trailing bytes>");
    }
    out
}

fn item(b: &[u8], pos: &mut usize, out: &mut String, depth: usize) -> Option<()> {
    use std::fmt::Write as _;
    if depth > 64 {
        return None;
    }
    let first = *b.get(*pos)?;
    *pos += 1;
    let (major, info) = (first >> 5, first & 0x1f);
    let arg = |pos: &mut usize| -> Option<u64> {
        let n = match info {
            0..=23 => return Some(info as u64),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let s = b.get(*pos..*pos + n)?;
        *pos += n;
        Some(s.iter().fold(0u64, |a, &x| a << 8 | x as u64))
    };
    match major {
        0 => write!(out, "{}", arg(pos)?).ok()?,
        1 => write!(out, "{}", -1 - arg(pos)? as i128).ok()?,
        2 | 3 => {
            let n = arg(pos)? as usize;
            let s = b.get(*pos..pos.checked_add(n)?)?;
            *pos += n;
            if major == 3 {
                let t = std::str::from_utf8(s).ok()?;
                write!(out, "{t:?}").ok()?;
            } else {
                out.push_str("h'");
                for x in s {
                    write!(out, "{x:02x}").ok()?;
                }
                out.push('\'');
            }
        }
        4 | 5 => {
            let n = arg(pos)?;
            out.push(if major == 4 { '[' } else { '{' });
            for i in 0..n {
                if i > 0 {
                    out.push_str(", ");
                }
                item(b, pos, out, depth + 1)?;
                if major == 5 {
                    out.push_str(": ");
                    item(b, pos, out, depth + 1)?;
                }
            }
            out.push(if major == 4 { ']' } else { '}' });
        }
        6 => {
            write!(out, "{}(", arg(pos)?).ok()?;
            item(b, pos, out, depth + 1)?;
            out.push(')');
        }
        _ => {
            let v = match info {
                20 => "false".to_string(),
                21 => "true".to_string(),
                22 => "null".to_string(),
                23 => "undefined".to_string(),
                25 => {
                    let h = u16::from_be_bytes(b.get(*pos..*pos + 2)?.try_into().ok()?);
                    *pos += 2;
                    float_text(half(h))
                }
                26 => {
                    let f = f32::from_be_bytes(b.get(*pos..*pos + 4)?.try_into().ok()?);
                    *pos += 4;
                    float_text(f as f64)
                }
                27 => {
                    let f = f64::from_be_bytes(b.get(*pos..*pos + 8)?.try_into().ok()?);
                    *pos += 8;
                    float_text(f)
                }
                n if n < 24 => format!("simple({n})"),
                _ => return None,
            };
            out.push_str(&v);
        }
    }
    Some(())
}

fn half(h: u16) -> f64 {
    let exp = (h >> 10) & 0x1f;
    let mant = (h & 0x3ff) as f64;
    let v = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (mant + 1024.0) * 2f64.powi(e as i32 - 25),
    };
    if h & 0x8000 != 0 { -v } else { v }
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        super::payload::finite_text(f)
    }
}

/// Reads a CBOR item as JSON (for the delivery audit): maps keyed by text or integers (an
/// integer key becomes its decimal text, `-2`), numbers, text, booleans and null; a
/// non-finite float is null. `None` when `bytes` is not one well-formed item of those kinds.
pub fn to_json(bytes: &[u8]) -> Option<serde_json::Value> {
    let mut pos = 0;
    let v = json_item(bytes, &mut pos, 0)?;
    (pos == bytes.len()).then_some(v)
}

fn json_item(b: &[u8], pos: &mut usize, depth: usize) -> Option<serde_json::Value> {
    use serde_json::Value;
    if depth > 64 {
        return None;
    }
    let first = *b.get(*pos)?;
    *pos += 1;
    let (major, info) = (first >> 5, first & 0x1f);
    let mut arg = || -> Option<u64> {
        let n = match info {
            0..=23 => return Some(info as u64),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let s = b.get(*pos..*pos + n)?;
        *pos += n;
        Some(s.iter().fold(0u64, |a, &x| a << 8 | x as u64))
    };
    Some(match major {
        0 => Value::from(arg()?),
        1 => Value::from(-1 - i64::try_from(arg()?).ok()?),
        3 => {
            let n = arg()? as usize;
            let s = b.get(*pos..pos.checked_add(n)?)?;
            *pos += n;
            Value::from(std::str::from_utf8(s).ok()?)
        }
        4 => {
            let n = arg()?;
            let mut a = Vec::with_capacity(n.min(64) as usize);
            for _ in 0..n {
                a.push(json_item(b, pos, depth + 1)?);
            }
            Value::Array(a)
        }
        5 => {
            let n = arg()?;
            let mut m = serde_json::Map::new();
            for _ in 0..n {
                let k = match json_item(b, pos, depth + 1)? {
                    Value::String(s) => s,
                    Value::Number(x) => x.to_string(),
                    _ => return None,
                };
                m.insert(k, json_item(b, pos, depth + 1)?);
            }
            Value::Object(m)
        }
        7 => match info {
            20 => Value::from(false),
            21 => Value::from(true),
            22 | 23 => Value::Null,
            25 => {
                let h = u16::from_be_bytes(b.get(*pos..*pos + 2)?.try_into().ok()?);
                *pos += 2;
                serde_json::Number::from_f64(half(h)).map_or(Value::Null, Value::Number)
            }
            26 => {
                let f = f32::from_be_bytes(b.get(*pos..*pos + 4)?.try_into().ok()?);
                *pos += 4;
                serde_json::Number::from_f64(f as f64).map_or(Value::Null, Value::Number)
            }
            27 => {
                let f = f64::from_be_bytes(b.get(*pos..*pos + 8)?.try_into().ok()?);
                *pos += 8;
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
            _ => return None,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = vec![];
        f(&mut v);
        v
    }

    #[test]
    fn heads_take_the_shortest_form() {
        // RFC 8949 Appendix A.
        assert_eq!(bytes(|o| uint(o, 0)), [0x00]);
        assert_eq!(bytes(|o| uint(o, 23)), [0x17]);
        assert_eq!(bytes(|o| uint(o, 24)), [0x18, 0x18]);
        assert_eq!(bytes(|o| uint(o, 1000)), [0x19, 0x03, 0xe8]);
        assert_eq!(bytes(|o| uint(o, 1_000_000)), [0x1a, 0x00, 0x0f, 0x42, 0x40]);
        assert_eq!(
            bytes(|o| uint(o, 1_000_000_000_000)),
            [0x1b, 0x00, 0x00, 0x00, 0xe8, 0xd4, 0xa5, 0x10, 0x00]
        );
        assert_eq!(bytes(|o| int(o, -1)), [0x20]);
        assert_eq!(bytes(|o| int(o, -1000)), [0x39, 0x03, 0xe7]);
        assert_eq!(bytes(|o| text(o, "IETF")), [0x64, 0x49, 0x45, 0x54, 0x46]);
        assert_eq!(bytes(|o| bool(o, true)), [0xf5]);
    }

    #[test]
    fn floats_are_single_when_exact() {
        assert_eq!(bytes(|o| float(o, 100000.0)), [0xfa, 0x47, 0xc3, 0x50, 0x00]);
        assert_eq!(
            bytes(|o| float(o, 1.1)),
            [0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]
        );
        assert_eq!(bytes(|o| float(o, f64::NAN)), [0xfa, 0x7f, 0xc0, 0x00, 0x00]);
    }

    #[test]
    fn diagnostic_notation_reads_what_the_writer_writes() {
        let mut v = vec![];
        map(&mut v, 3);
        text(&mut v, "a");
        int(&mut v, -3);
        text(&mut v, "b");
        array(&mut v, 2);
        float(&mut v, 21.5);
        float(&mut v, f64::NAN);
        uint(&mut v, 7);
        bool(&mut v, true);
        assert_eq!(diagnostic(&v), r#"{"a": -3, "b": [21.5, NaN], 7: true}"#);
        assert_eq!(diagnostic(&[0xf9, 0x3c, 0x00]), "1.0");
        assert!(diagnostic(&[0x82, 0x01]).ends_with("<malformed>"));
    }

    #[test]
    fn json_values_convert() {
        let v: serde_json::Value = serde_json::from_str(r#"{"a":[1,2.5,"x",null,true]}"#).unwrap();
        assert_eq!(
            bytes(|o| json(o, &v)),
            [0xa1, 0x61, b'a', 0x85, 0x01, 0xfa, 0x40, 0x20, 0, 0, 0x61, b'x', 0xf6, 0xf5]
        );
    }
}
