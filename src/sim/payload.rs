//! JSON payload encoding into reused buffers (the envelope; the other formats are in
//! `format.rs`).
//!
//! The envelope keeps the original runtime's field order:
//! `{"device_id","device_type","timestamp","fields":{sorted},"labels":{sorted}}`, then `"seq"`
//! when the profile asks for it; an event message (`sim/behaviour.rs`) has `"event":"NAME"`
//! between the timestamp and its own `fields`. Numbers use the shortest round-trip form (as `ryu` writes it); a
//! non-finite number (a corruption fault, or a derived field's expression) is written as
//! `null`, so the payload stays JSON.

use super::format;
use super::generator::Sample;
use super::profile::{FieldSpec, Profile};
use super::time::{SimMs, write_rfc3339_ms};
use std::collections::BTreeMap;

/// Appends `s` (what `extend_from_slice` does): a piece of up to 32 bytes (an id, a key, a
/// number) with at most two pairs of overlapping fixed-size moves instead of a call to
/// `memmove`, whose call and size dispatch were 14% of the engine for the dozen short pieces
/// of a message (issue 25).
#[inline(always)]
pub fn put(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n > 32 {
        out.extend_from_slice(s);
        return;
    }
    out.reserve(n);
    let len = out.len();
    // SAFETY: `n` bytes of spare capacity were reserved; every read is inside `s` (the two
    // moves of each size start at 0 and at n - size, both within 0..n for that size class)
    // and every write inside the reserved n bytes after `len`, which are then initialised.
    unsafe {
        let src = s.as_ptr();
        let dst = out.as_mut_ptr().add(len);
        if n >= 16 {
            let (a, b) = (src.cast::<[u8; 16]>(), src.add(n - 16).cast::<[u8; 16]>());
            let (a, b) = (a.read_unaligned(), b.read_unaligned());
            dst.cast::<[u8; 16]>().write_unaligned(a);
            dst.add(n - 16).cast::<[u8; 16]>().write_unaligned(b);
        } else if n >= 8 {
            let (a, b) = (src.cast::<u64>().read_unaligned(), src.add(n - 8).cast::<u64>());
            let b = b.read_unaligned();
            dst.cast::<u64>().write_unaligned(a);
            dst.add(n - 8).cast::<u64>().write_unaligned(b);
        } else if n >= 4 {
            let (a, b) = (src.cast::<u32>().read_unaligned(), src.add(n - 4).cast::<u32>());
            let b = b.read_unaligned();
            dst.cast::<u32>().write_unaligned(a);
            dst.add(n - 4).cast::<u32>().write_unaligned(b);
        } else {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
        }
        out.set_len(len + n);
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Ids, names and label values rarely need an escape: one pass over every byte without an
    // early exit (the compiler vectorises it), then one copy.
    if !bytes.iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\')) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        put(out, bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends a number in its shortest round-trip form (`null` if not finite).
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        write_finite(out, v);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends a finite number in its shortest round-trip form, exactly as `ryu` writes it (what
/// every payload has carried since the first release): `zmij` finds the same digits in about
/// 60% of the time (issue 25) but writes a positive exponent with a sign (`1e+16`), which is
/// dropped here. Not finite: whatever `zmij` writes (callers check first).
#[inline]
pub fn write_finite(out: &mut Vec<u8>, v: f64) {
    let mut buf = zmij::Buffer::new();
    let s = buf.format_finite(v).as_bytes();
    // Only numbers from 1e16 up are written with an exponent that is positive.
    if v.abs() >= 1e16
        && let Some(plus) = s.iter().position(|&c| c == b'+')
    {
        put(out, &s[..plus]);
        put(out, &s[plus + 1..]);
        return;
    }
    put(out, s);
}

/// A finite number's text as [`write_finite`] writes it, for writers that take a `&str`.
pub fn finite_text(v: f64) -> String {
    let mut out = Vec::with_capacity(24);
    write_finite(&mut out, v);
    // zmij writes ASCII only.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends one field value.
pub fn write_sample(out: &mut Vec<u8>, field: &FieldSpec, sample: Sample) {
    use super::generator::GenSpec;
    match (sample, &field.generator) {
        // A numeric constant is published as written (`1` stays `1`), unless a fault changed it.
        (Sample::Number(v), GenSpec::Static { json, number: Some(n) }) if v == *n => {
            out.extend_from_slice(json.as_bytes())
        }
        (Sample::Number(v), _) => write_f64(out, v),
        (Sample::State(i), GenSpec::Markov(m)) => write_json_str(out, &m.states[i]),
        (Sample::Static, GenSpec::Static { json, .. }) => out.extend_from_slice(json.as_bytes()),
        _ => out.extend_from_slice(b"null"),
    }
}

/// Encodes one message in the profile's format: `payload` is cleared first. `seq` is the
/// device's sequence number: the envelope writes it when the profile asks for it (`seq = true`),
/// a template always sees it.
pub fn encode(
    payload: &mut Vec<u8>,
    device_id: &str,
    profile: &Profile,
    timestamp: SimMs,
    samples: &[Sample],
    (labels, labels_json): (&BTreeMap<String, String>, &str),
    seq: u64,
) {
    if profile.format.is_envelope() {
        return encode_with(
            payload,
            device_id,
            profile,
            "",
            &profile.fields,
            timestamp,
            samples,
            labels_json,
            profile.seq.then_some(seq),
        );
    }
    let m = format::Msg {
        device_id,
        device_type: &profile.device_type,
        event_json: "",
        event_name: None,
        fields: &profile.fields,
        samples,
        timestamp,
        labels,
        seq: Some(seq),
        write_seq: profile.seq,
    };
    format::encode(payload, &profile.format, &m);
}

/// Encodes one event message: the envelope with `"event":"NAME"` after the timestamp and the
/// event's own fields (other formats: see `format.rs`).
pub fn encode_event(
    payload: &mut Vec<u8>,
    device_id: &str,
    profile: &Profile,
    event: &super::behaviour::EventSpec,
    timestamp: SimMs,
    samples: &[Sample],
    (labels, labels_json): (&BTreeMap<String, String>, &str),
) {
    if profile.format.is_envelope() {
        return encode_with(
            payload,
            device_id,
            profile,
            &event.event_json,
            &event.fields,
            timestamp,
            samples,
            labels_json,
            None,
        );
    }
    let m = format::Msg {
        device_id,
        device_type: &profile.device_type,
        event_json: &event.event_json,
        event_name: Some(&event.name),
        fields: &event.fields,
        samples,
        timestamp,
        labels,
        seq: None,
        write_seq: false,
    };
    format::encode(payload, &profile.format, &m);
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn encode_with(
    payload: &mut Vec<u8>,
    device_id: &str,
    profile: &Profile,
    event_json: &str,
    fields: &[FieldSpec],
    timestamp: SimMs,
    samples: &[Sample],
    labels_json: &str,
    seq: Option<u64>,
) {
    payload.clear();
    payload.extend_from_slice(b"{\"device_id\":");
    write_json_str(payload, device_id);
    payload.push(b',');
    put(payload, profile.type_json.as_bytes());
    write_rfc3339_ms(payload, timestamp);
    if event_json.is_empty() {
        payload.extend_from_slice(b"\",\"fields\":{");
    } else {
        payload.extend_from_slice(b"\",");
        payload.extend_from_slice(event_json.as_bytes());
        payload.extend_from_slice(b"\"fields\":{");
    }
    for (i, (field, sample)) in fields.iter().zip(samples).enumerate() {
        if i > 0 {
            payload.push(b',');
        }
        put(payload, field.key_json.as_bytes());
        write_sample(payload, field, *sample);
    }
    payload.push(b'}');
    put(payload, labels_json.as_bytes());
    if let Some(seq) = seq {
        payload.extend_from_slice(b",\"seq\":");
        payload.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    }
    payload.push(b'}');
}

/// `"device_type":"<t>","timestamp":"` for a profile.
pub fn type_json(device_type: &str) -> String {
    let mut v = b"\"device_type\":".to_vec();
    write_json_str(&mut v, device_type);
    v.extend_from_slice(b",\"timestamp\":\"");
    String::from_utf8(v).unwrap_or_default()
}

/// `"name":` for a field.
pub fn key_json(name: &str) -> String {
    let mut v = vec![];
    write_json_str(&mut v, name);
    v.push(b':');
    String::from_utf8(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        let mut v = vec![];
        write_json_str(&mut v, "a\"b\\c\nd\u{1}é");
        assert_eq!(String::from_utf8(v).unwrap(), r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn strings_without_escapes_take_the_fast_path_unchanged() {
        // The slow path, byte by byte, as it was before the fast path.
        fn slow(s: &str) -> Vec<u8> {
            let mut v = vec![b'"'];
            for c in s.chars() {
                match c {
                    '"' => v.extend_from_slice(b"\\\""),
                    '\\' => v.extend_from_slice(b"\\\\"),
                    '\n' => v.extend_from_slice(b"\\n"),
                    '\r' => v.extend_from_slice(b"\\r"),
                    '\t' => v.extend_from_slice(b"\\t"),
                    c if (c as u32) < 0x20 => {
                        v.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                    }
                    c => v.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            v.push(b'"');
            v
        }
        for s in ["", "sensor-0001", "é ü 漢字", "a\"b", "tab\tend", "\u{1f}", "x\\y", "ok \u{7f}"]
        {
            let mut v = b"prefix".to_vec();
            write_json_str(&mut v, s);
            assert_eq!(&v[6..], &slow(s)[..], "{s:?}");
        }
    }

    #[test]
    fn put_appends_every_length_as_extend_from_slice_does() {
        let src: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect();
        for prefix in [0, 1, 7, 31] {
            for n in 0..=40 {
                for start in [0, 3] {
                    let piece = &src[start..start + n];
                    let mut a = vec![b'x'; prefix];
                    let mut b = a.clone();
                    put(&mut a, piece);
                    b.extend_from_slice(piece);
                    assert_eq!(a, b, "prefix {prefix}, length {n}, start {start}");
                }
            }
        }
    }

    #[test]
    fn numbers_are_written_as_ryu_writes_them() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            22.5,
            1e-300,
            1.7976931348623157e308,
            5e-324,
            1e15,
            1e16,
            -1.5e16,
            1e21,
            -2.5e300,
            9007199254740993.0,
        ];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                values.push(v);
            }
            values.push((x % 2_000_000) as f64 / 1000.0 - 1000.0);
        }
        let mut v = vec![];
        for f in values {
            v.clear();
            write_f64(&mut v, f);
            assert_eq!(v, ryu::Buffer::new().format_finite(f).as_bytes(), "{f}");
        }
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let mut v = vec![];
        write_f64(&mut v, f64::NAN);
        v.push(b' ');
        write_f64(&mut v, 22.5);
        assert_eq!(v, b"null 22.5");
    }
}
