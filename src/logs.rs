//! Log lines: `--log-format text|json` (or `IOT_SIM_LOG_FORMAT`), the run id in every line.
//!
//! Two kinds of lines go to stderr: `tracing` events (filtered by `IOT_SIM_LOG`, default
//! `info`) and the run's notices (the seed, the listening addresses, progress, the report
//! path), written by [`notice`]. Both are formatted here, so that in JSON mode every line on
//! stderr is one JSON object carrying `run_id`:
//!
//! ```text
//! {"timestamp":"2026-11-30T03:20:00.123Z","level":"INFO","run_id":"9f2c...","thread":"shard-0","message":"...","devices":100000}
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How lines are written, and the run id they carry; set once at start.
#[derive(Clone, Debug)]
struct Style {
    json: bool,
    run_id: String,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Installs the `tracing` subscriber (stderr, `IOT_SIM_LOG` filter) and the line style.
pub fn init(json: bool, run_id: &str) {
    let style = Style { json, run_id: run_id.to_string() };
    let _ = STYLE.set(style.clone());
    let filter = tracing_subscriber::EnvFilter::try_from_env("IOT_SIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .event_format(LineFormat(style))
        .try_init();
}

fn style() -> Style {
    STYLE.get().cloned().unwrap_or(Style { json: false, run_id: String::new() })
}

/// Whether lines are JSON.
pub fn json() -> bool {
    STYLE.get().is_some_and(|s| s.json)
}

/// A notice of the run (not subject to the `IOT_SIM_LOG` filter): as text, `message` alone, as
/// it always was; as JSON, an `INFO` line with `fields` beside the message.
pub fn notice(message: &str, fields: &[(&str, serde_json::Value)]) {
    notice_at("INFO", message, fields);
}

/// As [`notice`], at another level (`ERROR` for the final error of a failed command).
pub fn notice_at(level: &str, message: &str, fields: &[(&str, serde_json::Value)]) {
    let s = style();
    let line = if s.json {
        let mut o = header(level, &s.run_id);
        o.insert("message".into(), message.into());
        for (k, v) in fields {
            o.insert((*k).to_string(), v.clone());
        }
        serde_json::Value::Object(o).to_string()
    } else {
        message.to_string()
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn header(level: &str, run_id: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut o = serde_json::Map::new();
    o.insert(
        "timestamp".into(),
        crate::sim::time::rfc3339_ms(crate::measure::clock::now_ms()).into(),
    );
    o.insert("level".into(), level.into());
    o.insert("run_id".into(), run_id.into());
    if let Some(name) = std::thread::current().name() {
        o.insert("thread".into(), name.into());
    }
    o
}

/// Formats `tracing` events as text (`time LEVEL message k=v run_id=...`) or JSON.
struct LineFormat(Style);

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = event.metadata().level().as_str();
        let mut fields = Fields::default();
        event.record(&mut fields);
        if self.0.json {
            let mut o = header(level, &self.0.run_id);
            o.insert("message".into(), fields.message.into());
            for (k, v) in fields.rest {
                o.insert(k, v);
            }
            writeln!(writer, "{}", serde_json::Value::Object(o))
        } else {
            let ts = crate::sim::time::rfc3339_ms(crate::measure::clock::now_ms());
            let mut line = format!("{ts} {level:>5} {}", fields.message);
            for (k, v) in fields.rest {
                match v {
                    serde_json::Value::String(s) => write!(line, " {k}={s}")?,
                    other => write!(line, " {k}={other}")?,
                }
            }
            writeln!(writer, "{line} run_id={}", self.0.run_id)
        }
    }
}

/// An event's fields: the message apart, the others in order.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push((field.name().to_string(), value.into()));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.push((field.name().to_string(), value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.push((field.name().to_string(), value.into()));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.rest.push((field.name().to_string(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.push((field.name().to_string(), value.into()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push((field.name().to_string(), format!("{value:?}").into()));
        }
    }
}
