//! `iot-sim report compare OLD NEW`: sets two `report.json` files side by side, row by row
//! (sink, device type), prints what changed and flags regressions, and renders
//! `compare.html` with both latency distributions on one chart per row.
//!
//! Reports are read as plain JSON rather than into [`super::Report`]: an older or newer
//! report with other fields still compares on what both have, and what could not be compared
//! is said, not guessed.

use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// A change worse than this (percent) is flagged as a regression.
pub const REGRESSION_PCT: f64 = 10.0;

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: not a report.json: {reason}")]
    Shape { path: String, reason: String },
}

/// One side's run facts.
#[derive(Debug, Serialize)]
pub struct Side {
    pub path: String,
    pub run_id: String,
    pub seed: Value,
    pub version: String,
    pub config_hash: String,
    pub clock: String,
    pub devices: u64,
    pub messages: u64,
    pub msgs_per_s: f64,
}

/// One figure of one row in both reports.
#[derive(Debug, Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub old: f64,
    pub new: f64,
    /// `None` when the old value is 0 and the new one is not.
    pub change_pct: Option<f64>,
    pub regression: bool,
}

/// A row both reports have.
#[derive(Debug, Serialize)]
pub struct RowChange {
    pub sink: String,
    pub device_type: String,
    pub metrics: Vec<Metric>,
    pub old_distribution: Vec<(f64, f64)>,
    pub new_distribution: Vec<(f64, f64)>,
}

/// What `report compare` found.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub old: Side,
    pub new: Side,
    pub rows: Vec<RowChange>,
    /// Rows or figures only one report has, and other differences in shape.
    pub not_compared: Vec<String>,
}

/// Whether a higher value is better or worse.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// Figures compared per row: name, JSON path inside the row, which way is better.
const METRICS: [(&str, &[&str], Better); 8] = [
    ("msg/s", &["msgs_per_s"], Better::Higher),
    ("messages", &["messages"], Better::Higher),
    ("errors", &["errors"], Better::Lower),
    ("dropped", &["dropped"], Better::Lower),
    ("p50 µs", &["latency_us", "p50"], Better::Lower),
    ("p99 µs", &["latency_us", "p99"], Better::Lower),
    ("p99.9 µs", &["latency_us", "p999"], Better::Lower),
    ("max µs", &["latency_us", "max"], Better::Lower),
];

/// Reads a report.json (bounded in size).
pub fn load(path: &Path) -> Result<Value, CompareError> {
    let shown = path.display().to_string();
    let read = |reason: String| CompareError::Read { path: shown.clone(), reason };
    let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
    if !meta.is_file() {
        return Err(read("not a regular file".into()));
    }
    let max = crate::limits::MAX_REPORT_FILE_BYTES;
    if meta.len() > max {
        return Err(read(format!("{} bytes is larger than the limit of {max} bytes", meta.len())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CompareError::Shape { path: shown.clone(), reason: e.to_string() })?;
    if !v.get("runs").is_some_and(Value::is_array) {
        return Err(CompareError::Shape {
            path: shown,
            reason: "expected an object with a \"runs\" array (the rows of `iot-sim run`)".into(),
        });
    }
    Ok(v)
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".into(),
        Some(other) => other.to_string(),
    }
}

fn side(path: &Path, v: &Value) -> Side {
    Side {
        path: path.display().to_string(),
        run_id: text(v, "run_id"),
        seed: v.get("seed").cloned().unwrap_or(Value::Null),
        version: text(v, "version"),
        config_hash: text(v, "config_hash"),
        clock: text(v, "clock"),
        devices: num(v, &["devices"]).unwrap_or(0.0) as u64,
        messages: num(v, &["messages"]).unwrap_or(0.0) as u64,
        msgs_per_s: num(v, &["msgs_per_s"]).unwrap_or(0.0),
    }
}

fn key(row: &Value) -> (String, String) {
    (text(row, "sink"), text(row, "device_type"))
}

fn distribution(row: &Value) -> Vec<(f64, f64)> {
    row.get("latency_distribution")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter().filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?))).collect()
        })
        .unwrap_or_default()
}

/// The change from `old` to `new` in percent (`None` when old is 0 and new is not).
fn change_pct(old: f64, new: f64) -> Option<f64> {
    if old == new {
        Some(0.0)
    } else if old == 0.0 {
        None
    } else {
        Some((new - old) / old.abs() * 100.0)
    }
}

fn is_regression(better: Better, old: f64, new: f64) -> bool {
    match (better, change_pct(old, new)) {
        (Better::Lower, None) => new > 0.0,
        (Better::Lower, Some(p)) => p > REGRESSION_PCT,
        (Better::Higher, Some(p)) => p < -REGRESSION_PCT,
        (Better::Higher, None) => false,
    }
}

/// Compares two loaded reports.
pub fn compare(old_path: &Path, old: &Value, new_path: &Path, new: &Value) -> Comparison {
    let mut not_compared = vec![];
    let empty = vec![];
    let rows_of = |v: &Value| v.get("runs").and_then(Value::as_array).unwrap_or(&empty).clone();
    let (old_rows, new_rows) = (rows_of(old), rows_of(new));
    let mut rows = vec![];
    for o in &old_rows {
        let k = key(o);
        let Some(n) = new_rows.iter().find(|n| key(n) == k) else {
            not_compared.push(format!("row {} / {}: only in the old report", k.0, k.1));
            continue;
        };
        let mut metrics = vec![];
        for (name, path, better) in METRICS {
            match (num(o, path), num(n, path)) {
                (Some(a), Some(b)) => metrics.push(Metric {
                    name,
                    old: a,
                    new: b,
                    change_pct: change_pct(a, b).map(|p| (p * 10.0).round() / 10.0),
                    regression: is_regression(better, a, b),
                }),
                _ => not_compared.push(format!(
                    "row {} / {}: {name} missing from {} report",
                    k.0,
                    k.1,
                    if num(o, path).is_none() { "the old" } else { "the new" }
                )),
            }
        }
        rows.push(RowChange {
            sink: k.0,
            device_type: k.1,
            metrics,
            old_distribution: distribution(o),
            new_distribution: distribution(n),
        });
    }
    for n in &new_rows {
        let k = key(n);
        if !old_rows.iter().any(|o| key(o) == k) {
            not_compared.push(format!("row {} / {}: only in the new report", k.0, k.1));
        }
    }
    let (a, b) = (side(old_path, old), side(new_path, new));
    if a.clock != b.clock {
        not_compared.push(format!(
            "clocks differ ({} vs {}): msg/s of a virtual run is per wall second of a sped-up clock",
            a.clock, b.clock
        ));
    }
    if a.config_hash != b.config_hash {
        not_compared.push(format!(
            "config hashes differ ({} vs {}): the runs did not use the same config",
            a.config_hash, b.config_hash
        ));
    }
    Comparison { old: a, new: b, rows, not_compared }
}

/// The terminal text.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "old: {} (run {}, {} messages)", c.old.path, c.old.run_id, c.old.messages);
    let _ =
        writeln!(out, "new: {} (run {}, {} messages)", c.new.path, c.new.run_id, c.new.messages);
    let _ = writeln!(
        out,
        "{:<8} {:<24} {:<10} {:>14} {:>14} {:>10}",
        "sink", "device_type", "metric", "old", "new", "change"
    );
    let mut regressions = 0;
    for r in &c.rows {
        for m in &r.metrics {
            let change = match m.change_pct {
                Some(p) => format!("{p:+.1}%"),
                None => "new".into(),
            };
            if m.regression {
                regressions += 1;
            }
            let _ = writeln!(
                out,
                "{:<8} {:<24} {:<10} {:>14} {:>14} {:>10}{}",
                r.sink,
                r.device_type,
                m.name,
                m.old,
                m.new,
                change,
                if m.regression { "  REGRESSION" } else { "" }
            );
        }
    }
    for n in &c.not_compared {
        let _ = writeln!(out, "not compared: {n}");
    }
    let _ = writeln!(
        out,
        "{} row(s) compared, {regressions} regression(s) (worse by more than {REGRESSION_PCT}%)",
        c.rows.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(rows: Value) -> Value {
        json!({ "run_id": "r", "seed": 1, "clock": "virtual", "config_hash": "h", "runs": rows })
    }

    fn row(device_type: &str, msgs_per_s: f64, p99: u64, errors: u64) -> Value {
        json!({ "sink": "file", "device_type": device_type, "msgs_per_s": msgs_per_s,
                "messages": 100, "errors": errors, "dropped": 0,
                "latency_us": { "p50": 10, "p99": p99, "p999": p99, "max": p99 },
                "latency_distribution": [[0.5, 10], [1.0, p99]] })
    }

    #[test]
    fn slower_latency_fewer_messages_and_new_errors_are_regressions() {
        let old = report(json!([row("a", 1000.0, 100, 0)]));
        let new = report(json!([row("a", 800.0, 150, 3)]));
        let c = compare(Path::new("old"), &old, Path::new("new"), &new);
        let flagged: Vec<_> =
            c.rows[0].metrics.iter().filter(|m| m.regression).map(|m| m.name).collect();
        assert_eq!(flagged, vec!["msg/s", "errors", "p99 µs", "p99.9 µs", "max µs"]);
        let p99 = c.rows[0].metrics.iter().find(|m| m.name == "p99 µs").unwrap();
        assert_eq!(p99.change_pct, Some(50.0));
        assert!(render(&c).contains("REGRESSION"));
        assert_eq!(c.rows[0].new_distribution, vec![(0.5, 10.0), (1.0, 150.0)]);
    }

    #[test]
    fn reports_of_different_shape_compare_what_they_share_and_say_the_rest() {
        let old = report(json!([row("a", 1000.0, 100, 0), row("gone", 1.0, 1, 0)]));
        let mut new =
            report(json!([row("a", 1000.0, 100, 0), { "sink": "file", "device_type": "b" }]));
        new["clock"] = json!("realtime");
        let c = compare(Path::new("old"), &old, Path::new("new"), &new);
        assert_eq!(c.rows.len(), 1);
        assert!(c.rows[0].metrics.iter().all(|m| !m.regression));
        let text = c.not_compared.join("\n");
        assert!(text.contains("file / gone: only in the old report"), "{text}");
        assert!(text.contains("file / b: only in the new report"), "{text}");
        assert!(text.contains("clocks differ"), "{text}");
    }

    #[test]
    fn a_file_that_is_not_a_report_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("iot-sim-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{ not json").unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("not a report.json"), "{e}");
        std::fs::write(&bad, "{\"runs\": 3}").unwrap();
        assert!(load(&bad).unwrap_err().to_string().contains("\"runs\" array"));
        let e = load(&dir.join("missing.json")).unwrap_err().to_string();
        assert!(e.contains("missing.json: cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
