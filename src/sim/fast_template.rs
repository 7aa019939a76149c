//! A fast path for simple templates: literal text and `{{ path }}` expressions, each with
//! optional `tojson`, `json` and `round(n)` filters, over the names a template sees
//! (`device_id`, `fields.NAME`, `labels.NAME`, `timestamp_ms`, ...). Such a template is
//! rendered here without minijinja's interpreter or a per-message context; anything else (a
//! block, a comment, whitespace control, another filter or expression, a value it cannot
//! write the way minijinja would) is left to minijinja, which stays the reference: a test
//! renders every supported shape both ways and compares the bytes.

use super::format::{Msg, Val, value_of};
use super::payload::write_json_str;
use std::borrow::Cow;

/// What a simple template is made of.
#[derive(Debug)]
enum Part {
    Lit(String),
    Expr(Path, Vec<Filter>),
}

#[derive(Debug)]
enum Path {
    DeviceId,
    DeviceType,
    Timestamp,
    TimestampMs,
    TimestampS,
    Seq,
    Event,
    Field(String),
    Label(String),
}

#[derive(Debug, Clone, Copy)]
enum Filter {
    /// minijinja's `tojson` (HTML-safe JSON).
    ToJson,
    /// The project's `json` filter.
    Json,
    /// `round` / `round(n)`, n >= 0.
    Round(i32),
}

/// A template compiled to the fast path.
#[derive(Debug)]
pub(crate) struct Fast {
    parts: Vec<Part>,
}

/// One value on its way out.
enum V<'a> {
    Str(Cow<'a, str>),
    /// Already formatted (the result of `tojson` / `json`): written as is.
    Safe(String),
    F64(f64),
    U64(u64),
    Bool(bool),
    None,
}

fn ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn path(s: &str) -> Option<Path> {
    Some(match s {
        "device_id" => Path::DeviceId,
        "device_type" => Path::DeviceType,
        "timestamp" => Path::Timestamp,
        "timestamp_ms" => Path::TimestampMs,
        "timestamp_s" => Path::TimestampS,
        "seq" => Path::Seq,
        "event" => Path::Event,
        _ => {
            let (head, name) = s.split_once('.')?;
            if !ident(name) {
                return None;
            }
            match head {
                "fields" => Path::Field(name.to_string()),
                "labels" => Path::Label(name.to_string()),
                _ => return None,
            }
        }
    })
}

fn filter(s: &str) -> Option<Filter> {
    Some(match s {
        "tojson" => Filter::ToJson,
        "json" => Filter::Json,
        "round" => Filter::Round(0),
        _ => {
            let n = s.strip_prefix("round(")?.strip_suffix(')')?.trim();
            Filter::Round(n.parse().ok().filter(|n| (0..=15).contains(n))?)
        }
    })
}

impl Fast {
    /// The fast form of `source`, when it has one.
    pub fn compile(source: &str) -> Option<Fast> {
        // minijinja drops one trailing newline (keep_trailing_newline is off).
        let src =
            source.strip_suffix("\r\n").or_else(|| source.strip_suffix('\n')).unwrap_or(source);
        let mut parts = vec![];
        let mut rest = src;
        loop {
            let Some(open) = rest.find("{{") else {
                if !rest.is_empty() {
                    parts.push(Part::Lit(rest.to_string()));
                }
                break;
            };
            let lit = &rest[..open];
            if !lit.is_empty() {
                parts.push(Part::Lit(lit.to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}")?;
            let inner = &after[..close];
            if inner.starts_with(['-', '+']) || inner.ends_with(['-', '+']) {
                return None;
            }
            let mut pieces = inner.split('|').map(str::trim);
            let p = path(pieces.next()?)?;
            let filters: Option<Vec<Filter>> = pieces.map(filter).collect();
            parts.push(Part::Expr(p, filters?));
            rest = &after[close + 2..];
        }
        // Blocks, comments and anything the split above could misread go to minijinja.
        let literal_ok = parts.iter().all(|p| match p {
            Part::Lit(s) => !s.contains("{%") && !s.contains("{#") && !s.contains("{{"),
            Part::Expr(..) => true,
        });
        literal_ok.then_some(Fast { parts })
    }

    /// Renders `m` into `out` (appending); `false` when this message needs minijinja (a value
    /// missing or of a kind the fast path does not write). `out` is then to be cleared.
    pub fn render(&self, out: &mut Vec<u8>, m: &Msg<'_>) -> bool {
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Part::Expr(p, filters) => {
                    let Some(mut v) = lookup(p, m) else { return false };
                    for f in filters {
                        match apply(v, *f) {
                            Some(x) => v = x,
                            None => return false,
                        }
                    }
                    write(out, v);
                }
            }
        }
        true
    }
}

fn lookup<'a>(p: &Path, m: &'a Msg<'a>) -> Option<V<'a>> {
    Some(match p {
        Path::DeviceId => V::Str(Cow::Borrowed(m.device_id)),
        Path::DeviceType => V::Str(Cow::Borrowed(m.device_type)),
        Path::Timestamp => V::Str(Cow::Owned(super::time::rfc3339_ms(m.timestamp))),
        Path::TimestampMs => V::U64(m.timestamp),
        Path::TimestampS => V::U64(m.timestamp / 1000),
        Path::Seq => m.seq.map_or(V::None, V::U64),
        Path::Event => m.event_name.map_or(V::None, |e| V::Str(Cow::Borrowed(e))),
        Path::Label(k) => V::Str(Cow::Borrowed(m.labels.get(k)?.as_str())),
        Path::Field(name) => {
            let i = m.fields.iter().position(|f| f.name == *name)?;
            match value_of(&m.fields[i], *m.samples.get(i)?) {
                Val::Num(x) => V::F64(x),
                Val::Str(s) => V::Str(s),
                Val::Bool(b) => V::Bool(b),
                Val::Null => V::None,
                // A static array or object: minijinja's.
                Val::Json(_) => return None,
            }
        }
    })
}

fn apply(v: V<'_>, f: Filter) -> Option<V<'_>> {
    Some(match (f, v) {
        (Filter::Round(_), V::U64(x)) => V::U64(x),
        (Filter::Round(n), V::F64(x)) => {
            // As minijinja's `round`: formatted with round-half-even, parsed back.
            V::F64(format!("{x:.prec$}", prec = n as usize).parse::<f64>().ok()?)
        }
        (Filter::Round(_), _) => return None,
        (Filter::ToJson, v) => {
            let mut s = String::new();
            match v {
                V::Str(x) => tojson_str(&mut s, &x),
                V::Safe(x) => tojson_str(&mut s, &x),
                V::U64(x) => s.push_str(itoa::Buffer::new().format(x)),
                V::Bool(b) => s.push_str(if b { "true" } else { "false" }),
                V::None => s.push_str("null"),
                // minijinja's own float writer.
                V::F64(x) => {
                    let kw = minijinja::value::Kwargs::from_iter(std::iter::empty::<(&str, _)>());
                    let j =
                        minijinja::filters::tojson(&minijinja::Value::from(x), None, kw).ok()?;
                    s.push_str(j.as_str()?);
                }
            }
            V::Safe(s)
        }
        (Filter::Json, v) => {
            let mut b = vec![];
            match v {
                V::Str(x) => write_json_str(&mut b, &x),
                V::Safe(x) => write_json_str(&mut b, &x),
                V::U64(x) => b.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
                // minijinja's Display of a bool.
                V::Bool(b2) => b.extend_from_slice(if b2 { b"True" } else { b"False" }),
                V::None => b.extend_from_slice(b"None"),
                V::F64(x) => b.extend_from_slice(minijinja::Value::from(x).to_string().as_bytes()),
            }
            V::Safe(String::from_utf8(b).ok()?)
        }
    })
}

/// minijinja's HTML-safe JSON string (`tojson`): `"`, `\`, control characters, `<`, `>`, `&`
/// and `'` escaped.
fn tojson_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\x08' => "\\b",
            b'\x0c' => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 || matches!(b, b'<' | b'>' | b'&' | b'\'') => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Writes a value as the template's formatter does (see `format::Template::compile`).
fn write(out: &mut Vec<u8>, v: V<'_>) {
    match v {
        V::Str(s) => out.extend_from_slice(s.as_bytes()),
        V::Safe(s) => out.extend_from_slice(s.as_bytes()),
        V::U64(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
        // As minijinja prints a bool (Python's spelling).
        V::Bool(b) => out.extend_from_slice(if b { b"True" } else { b"False" }),
        V::None => out.extend_from_slice(b"null"),
        V::F64(x) if x.is_finite() => super::payload::write_finite(out, x),
        V::F64(_) => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::format::{Kind, Template};
    use crate::sim::generator::{GenSpec, Sample};
    use std::collections::BTreeMap;

    const FLEET: &str = r#"
[sink.null]
[[fleet]]
profile = "p"
count = 1
[profiles.p]
protocol = "null"
interval = "1s"
format = "template"
template = "{{ device_id }}"
[profiles.p.fields.t]
type = "gaussian"
mean = 20
stddev = 1
[profiles.p.fields.door]
type = "markov"
states = ["a\"b<c>&'\\/", "\u00e9\t\u0001\u007f x"]
transition_matrix = [[0.9, 0.1], [0.5, 0.5]]
[profiles.p.fields.fw]
type = "static"
value = "1.4.2 <&> \"q\""
[profiles.p.fields.on]
type = "static"
value = true
[profiles.p.fields.n]
type = "static"
value = 7
[profiles.p.fields.arr]
type = "static"
value = [1, 2]
"#;

    const FAST: &[&str] = &[
        r#"{"ts": {{ timestamp_ms }}, "values": {"t": {{ fields.t }}, "door": {{ fields.door|tojson }}, "fw": {{ fields.fw|tojson }}}}"#,
        "{{ device_id }},{{ device_type }},{{ timestamp }},{{ timestamp_ms }},{{ timestamp_s }},{{ seq }},{{ event }}\n",
        "{{ fields.t|round(2) }} {{ fields.t|round }} {{ fields.t| round( 1 ) |tojson }} {{ fields.t|tojson }} {{ fields.t|json }}",
        "{{ fields.door|tojson }} {{ fields.door|json }} {{ fields.door|json|tojson }} {{ fields.fw|json }}",
        "{{ fields.on }} {{ fields.on|tojson }} {{ fields.on|json }} {{ fields.n }} {{ fields.n|round(1) }} {{ fields.n|tojson }}",
        "{{ seq|tojson }} {{ event|tojson }} {{ seq|json }} {{ event|json }} {{ timestamp_ms|round(3) }} {{ labels.site|tojson }}",
        "x }}} { {{labels.site}}}}\r\n",
        "",
        "no expressions at all\n\n",
    ];

    fn template(src: &str) -> Template {
        Template::compile(src.to_string()).unwrap()
    }

    #[test]
    fn the_fast_path_writes_what_minijinja_writes() {
        let c = crate::config::parse_str(FLEET, std::path::Path::new(".")).unwrap();
        let p = &c.fleet.profiles[0];
        assert!(matches!(p.format.kind, Kind::Template(_)));
        let labels: BTreeMap<String, String> =
            [("site".to_string(), "b\"e<r>l&i'n".to_string())].into();
        let numbers = [
            21.5,
            22.0,
            -0.0,
            1e21,
            1e-7,
            0.1 + 0.2,
            2.675,
            0.5,
            1.5,
            2.5,
            -1.25,
            123456789.125,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            5e-324,
        ];
        let mut checked = 0;
        for src in FAST {
            let t = template(src);
            assert!(Fast::compile(src).is_some(), "{src:?} has no fast path");
            for (k, x) in numbers.iter().enumerate() {
                let samples: Vec<Sample> = p
                    .fields
                    .iter()
                    .map(|f| match &f.generator {
                        GenSpec::Static { .. } => Sample::Static,
                        GenSpec::Markov(_) => Sample::State(k % 2),
                        _ => Sample::Number(*x),
                    })
                    .collect();
                for (seq, event) in [(Some(k as u64), None), (None, Some("re\"boot<"))] {
                    let m = Msg {
                        device_id: "dev-\"1\"",
                        device_type: "thermo<x>",
                        event_json: "",
                        event_name: event,
                        fields: &p.fields,
                        samples: &samples,
                        timestamp: 1_700_000_000_250 + k as u64 * 999,
                        labels: &labels,
                        seq,
                        write_seq: true,
                    };
                    let (mut fast, mut slow) = (vec![], vec![]);
                    t.render(&mut fast, &m).unwrap();
                    t.render_minijinja(&mut slow, &m).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&fast),
                        String::from_utf8_lossy(&slow),
                        "{src:?} with {x}"
                    );
                    let mut direct = vec![];
                    assert!(Fast::compile(src).unwrap().render(&mut direct, &m), "{src:?}");
                    assert_eq!(direct, slow);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, FAST.len() * numbers.len() * 2);
        // What the fast path leaves to minijinja: the same output, or the same error.
        for src in [
            "{% if event %}{{ event }}{% endif %}",
            "{# c #}{{ device_id }}",
            "{{- device_id }}",
            "{{ device_id|upper }}",
            "{{ fields['t'] }}",
            "{{ fields.t|round(2, 'floor') }}",
        ] {
            assert!(Fast::compile(src).is_none(), "{src:?}");
        }
        let samples = vec![
            Sample::Static,
            Sample::State(0),
            Sample::Static,
            Sample::Static,
            Sample::Static,
            Sample::Number(1.0),
        ];
        let m = Msg {
            device_id: "d",
            device_type: "t",
            event_json: "",
            event_name: None,
            fields: &p.fields,
            samples: &samples,
            timestamp: 0,
            labels: &labels,
            seq: None,
            write_seq: false,
        };
        for src in ["{{ fields.arr }}", "{{ fields.arr|tojson }}"] {
            let (mut a, mut b) = (vec![], vec![]);
            template(src).render(&mut a, &m).unwrap();
            template(src).render_minijinja(&mut b, &m).unwrap();
            assert_eq!(a, b, "{src}");
        }
        for src in ["{{ fields.nope }}", "{{ labels.nope }}", "{{ fields.door|round }}"] {
            let (mut a, mut b) = (vec![], vec![]);
            let ea = template(src).render(&mut a, &m).unwrap_err();
            let eb = template(src).render_minijinja(&mut b, &m).unwrap_err();
            assert_eq!(ea, eb, "{src}");
        }
    }
}
