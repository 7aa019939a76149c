//! Pass/fail thresholds (`[[threshold]]` in a scenario or a fleet file), judged on the merged
//! statistics at the end of a run, for the whole run or for one phase.
//!
//! A threshold names a metric, a bound (`max` or `min`, with units where the metric has them),
//! and optionally a phase, a sink and a device type that narrow what it looks at. `abort = true`
//! makes a realtime run check it at every progress interval and stop early when it fails.

use crate::measure::stats::{ProfileStats, histogram};
use crate::sim::profile::{Fleet, Protocol};
use crate::walk::{Problems, Table, show, type_name};
use hdrhistogram::Histogram;
use serde::Serialize;
use toml::Value;

/// What a threshold measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// A latency quantile (0.5, 0.9, 0.99, 0.999) or the maximum (1.0), µs.
    Latency(Quantile),
    /// errors / (messages + errors + drops).
    ErrorRate,
    /// drops / (messages + errors + drops).
    DropRate,
    /// Completed messages per second (wall seconds in realtime, sim seconds in virtual time).
    MessagesPerSecond,
    /// Tick lateness p99, µs (realtime only).
    TickLatenessP99,
    /// Delivery audit: messages that never arrived (faults' gaps excluded).
    Lost,
    /// Delivery audit: messages that arrived more than once (extra copies).
    Duplicated,
    /// Delivery audit: messages that arrived after a later one of their device.
    Reordered,
    /// Delivery audit: end-to-end latency p99 (arrival - intended send time), µs.
    E2eLatencyP99,
}

/// A latency quantile, kept as an enum so it compares exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantile {
    P50,
    P90,
    P99,
    P999,
    Max,
}

impl Quantile {
    fn value(self, h: &Histogram<u64>) -> u64 {
        if h.is_empty() {
            return 0;
        }
        match self {
            Quantile::P50 => h.value_at_quantile(0.5),
            Quantile::P90 => h.value_at_quantile(0.9),
            Quantile::P99 => h.value_at_quantile(0.99),
            Quantile::P999 => h.value_at_quantile(0.999),
            Quantile::Max => h.max(),
        }
    }
}

/// Every metric name accepted, in the order the docs list them.
pub const METRICS: &[&str] = &[
    "latency_p50",
    "latency_p90",
    "latency_p99",
    "latency_p999",
    "latency_max",
    "error_rate",
    "drop_rate",
    "messages_per_second",
    "tick_lateness_p99",
    "lost",
    "duplicated",
    "reordered",
    "e2e_latency_p99",
];

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "latency_p50" => Metric::Latency(Quantile::P50),
            "latency_p90" => Metric::Latency(Quantile::P90),
            "latency_p99" => Metric::Latency(Quantile::P99),
            "latency_p999" => Metric::Latency(Quantile::P999),
            "latency_max" => Metric::Latency(Quantile::Max),
            "error_rate" => Metric::ErrorRate,
            "drop_rate" => Metric::DropRate,
            "messages_per_second" => Metric::MessagesPerSecond,
            "tick_lateness_p99" => Metric::TickLatenessP99,
            "lost" => Metric::Lost,
            "duplicated" => Metric::Duplicated,
            "reordered" => Metric::Reordered,
            "e2e_latency_p99" => Metric::E2eLatencyP99,
            _ => return None,
        })
    }

    /// True for metrics measured in µs (bounds are written as durations).
    fn is_time(self) -> bool {
        matches!(self, Metric::Latency(_) | Metric::TickLatenessP99 | Metric::E2eLatencyP99)
    }

    /// True for the delivery audit's metrics (judged on the audit, at the end of the run).
    pub fn is_audit(self) -> bool {
        matches!(
            self,
            Metric::Lost | Metric::Duplicated | Metric::Reordered | Metric::E2eLatencyP99
        )
    }

    fn is_rate(self) -> bool {
        matches!(self, Metric::ErrorRate | Metric::DropRate)
    }
}

/// Which way a bound goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Max,
    Min,
}

/// One validated `[[threshold]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// The metric's name as written.
    pub name: String,
    pub metric: Metric,
    pub bound: Bound,
    /// µs for time metrics, a fraction for rates, messages per second otherwise.
    pub limit: f64,
    /// The bound as written (`"50ms"`, `0.01`, `"1%"`).
    pub limit_text: String,
    pub phase: Option<String>,
    pub sink: Option<Protocol>,
    pub device_type: Option<String>,
    pub abort: bool,
}

/// A value with a unit: µs for `us`/`µs`, `ms`, `s`, `m`.
pub fn parse_time_us(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("expected a duration such as \"50ms\", \"250us\" or \"1.5s\", got {s:?}")
    })?;
    let f = match unit.trim() {
        "us" | "µs" => 1.0,
        "ms" => 1_000.0,
        "s" => 1_000_000.0,
        "m" => 60_000_000.0,
        "h" => 3_600_000_000.0,
        "" => return Err(format!("missing unit: expected a duration such as \"50ms\", got {s:?}")),
        u => return Err(format!("unknown unit {u:?}: accepted us, ms, s, m, h (got {s:?})")),
    };
    Ok(n * f)
}

fn parse_limit(metric: Metric, v: &Value) -> Result<f64, String> {
    if metric.is_time() {
        return match v {
            Value::String(s) => parse_time_us(s),
            other => Err(format!(
                "expected a duration such as \"50ms\", got {} {}",
                type_name(other),
                show(other)
            )),
        };
    }
    let x = match v {
        Value::Integer(i) => *i as f64,
        Value::Float(f) => *f,
        Value::String(s) if metric.is_rate() && s.trim_end().ends_with('%') => {
            let n = s.trim().trim_end_matches('%').trim();
            n.parse::<f64>().map(|x| x / 100.0).map_err(|_| {
                format!("expected a fraction (0.01) or a percentage (\"1%\"), got {s:?}")
            })?
        }
        other => {
            return Err(format!(
                "expected a number{}, got {} {}",
                if metric.is_rate() { " (a fraction such as 0.01) or \"1%\"" } else { "" },
                type_name(other),
                show(other)
            ));
        }
    };
    if !x.is_finite() || x < 0.0 {
        return Err(format!("must be a non-negative number, got {}", show(v)));
    }
    if metric.is_rate() && x > 1.0 {
        return Err(format!("a rate lies between 0 and 1 (or 0% and 100%), got {}", show(v)));
    }
    Ok(x)
}

/// Reads a `threshold` array of tables. `phases` lists the phases a threshold may name; `None`
/// leaves the names to be checked later (a fleet file's thresholds may name the phases of the
/// scenario it runs).
pub fn parse_list(
    v: &Value,
    path: &str,
    phases: Option<&[String]>,
    p: &mut Problems,
) -> Vec<Threshold> {
    let Value::Array(items) = v else {
        p.add(
            path,
            format!(
                "expected an array of tables ([[threshold]]), got {} {}",
                type_name(v),
                show(v)
            ),
        );
        return vec![];
    };
    let mut out = vec![];
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(mut t) = Table::from_value(ipath, item, p) else { continue };
        let metric = match t.req_str("metric", p) {
            Some(m) => match Metric::parse(m) {
                Some(x) => Some((m.to_string(), x)),
                None => {
                    p.add(
                        t.path_of("metric"),
                        format!("unknown metric {m:?}; accepted: {}", METRICS.join(", ")),
                    );
                    None
                }
            },
            None => None,
        };
        let bound = match (t.get("max"), t.get("min")) {
            (Some(_), Some(_)) => {
                p.add(t.path_of("min"), "give max or min, not both");
                None
            }
            (None, None) => {
                p.add(t.path.clone(), "missing: a bound, max = ... or min = ...");
                None
            }
            (Some(v), None) => Some((Bound::Max, v, "max")),
            (None, Some(v)) => Some((Bound::Min, v, "min")),
        };
        let phase = t.str("phase", p).map(str::to_string);
        if let (Some(ph), Some(phases)) = (&phase, phases) {
            check_phase(ph, phases, t.path_of("phase"), p);
        }
        let sink = match t.str("sink", p) {
            Some(s) => match Protocol::parse(s) {
                Some(pr) => Some(pr),
                None => {
                    let known: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
                    p.add(
                        t.path_of("sink"),
                        format!("unknown sink {s:?}; accepted: {}", known.join(", ")),
                    );
                    None
                }
            },
            None => None,
        };
        let device_type = t.str("device_type", p).map(str::to_string);
        let abort = t.bool("abort", p).unwrap_or(false);
        if abort && (phase.is_some() || t.has("sink") || t.has("device_type")) {
            p.add(
                t.path_of("abort"),
                "an abort threshold is checked on the whole run's running figures; give it no phase, sink or device_type",
            );
        }
        if let Some((name, m)) = &metric
            && m.is_audit()
            && (abort || phase.is_some() || sink.is_some())
        {
            p.add(
                t.path_of("metric"),
                format!("{name:?} is judged on the delivery audit at the end of the run; give it no abort, phase or sink (device_type is fine)"),
            );
        }
        let key_path = |k: &str| t.path_of(k);
        let limit_path = bound.as_ref().map(|b| key_path(b.2)).unwrap_or_default();
        t.finish_with(&["metric", "max", "min", "phase", "sink", "device_type", "abort"], p);
        let (Some((name, metric)), Some((bound, v, _))) = (metric, bound) else { continue };
        match parse_limit(metric, v) {
            Ok(limit) => out.push(Threshold {
                name,
                metric,
                bound,
                limit,
                limit_text: match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                phase,
                sink,
                device_type,
                abort,
            }),
            Err(e) => p.add(limit_path, e),
        }
    }
    out
}

/// Reports a phase name that is not one of `phases`.
pub fn check_phase(phase: &str, phases: &[String], path: String, p: &mut Problems) {
    if !phases.iter().any(|x| x == phase) {
        p.add(
            path,
            format!(
                "unknown phase {phase:?}; phases of this scenario: {}",
                if phases.is_empty() { "none".to_string() } else { phases.join(", ") }
            ),
        );
    }
}

/// What a span of the run (the whole run or one phase) measured, indexed like the fleet's
/// profiles.
pub struct Span<'a> {
    pub profiles: &'a [ProfileStats],
    pub lateness: &'a Histogram<u64>,
    /// The seconds `messages_per_second` divides by.
    pub seconds: f64,
}

/// One device type's delivery-audit figures, for the audit metrics.
pub struct AuditRow<'a> {
    pub device_type: &'a str,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// End-to-end latency (µs), when measured.
    pub e2e: Option<&'a Histogram<u64>>,
}

/// One threshold's verdict, as the report shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verdict {
    pub metric: String,
    pub bound: Bound,
    /// The bound as written.
    pub limit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// The measured value, in the metric's unit (µs, a fraction, msg/s).
    pub value: f64,
    /// `µs`, `ratio` or `msg/s`.
    pub unit: &'static str,
    pub passed: bool,
    pub abort: bool,
    /// Set when nothing was measured for it (no messages in its span).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Threshold {
    /// Judges this threshold on a span.
    pub fn judge(&self, fleet: &Fleet, span: &Span<'_>) -> Verdict {
        let mut merged = ProfileStats::new();
        for (i, prof) in fleet.profiles.iter().enumerate() {
            let wanted = self.sink.is_none_or(|s| s == prof.protocol)
                && self.device_type.as_deref().is_none_or(|d| d == prof.device_type);
            if wanted && let Some(st) = span.profiles.get(i) {
                merged.merge(st);
            }
        }
        self.judge_totals(&merged, span.lateness, span.seconds)
    }

    /// Judges this threshold on figures already merged (an `abort` check on the progress
    /// snapshots of a running run).
    pub fn judge_totals(
        &self,
        merged: &ProfileStats,
        lateness: &Histogram<u64>,
        seconds: f64,
    ) -> Verdict {
        let total = merged.counts.total();
        let mut note = None;
        let (value, unit) = match self.metric {
            Metric::Latency(q) => {
                if merged.latency.is_empty() {
                    note = Some("no completed messages".to_string());
                }
                (q.value(&merged.latency) as f64, "µs")
            }
            Metric::TickLatenessP99 => {
                if lateness.is_empty() {
                    note = Some("no tick lateness measured (virtual clock)".to_string());
                }
                (Quantile::P99.value(lateness) as f64, "µs")
            }
            Metric::ErrorRate | Metric::DropRate => {
                let n = if self.metric == Metric::ErrorRate {
                    merged.counts.errors
                } else {
                    merged.counts.dropped
                };
                if total == 0 {
                    note = Some("no messages".to_string());
                }
                (if total == 0 { 0.0 } else { n as f64 / total as f64 }, "ratio")
            }
            Metric::MessagesPerSecond => {
                (merged.counts.messages as f64 / seconds.max(1e-9), "msg/s")
            }
            Metric::Lost | Metric::Duplicated | Metric::Reordered | Metric::E2eLatencyP99 => {
                return self.judge_audit(None);
            }
        };
        self.verdict(value, unit, note)
    }

    /// Judges an audit metric on the audit's rows (`None`: no audit ran).
    pub fn judge_audit(&self, rows: Option<&[AuditRow<'_>]>) -> Verdict {
        let Some(rows) = rows else {
            let unit = if self.metric.is_time() { "µs" } else { "messages" };
            let mut v =
                self.verdict(0.0, unit, Some("no delivery audit ran ([audit] or --audit)".into()));
            v.passed = false;
            return v;
        };
        let wanted =
            rows.iter().filter(|r| self.device_type.as_deref().is_none_or(|d| d == r.device_type));
        let mut note = None;
        let (value, unit) = match self.metric {
            Metric::Lost => (wanted.map(|r| r.lost).sum::<u64>() as f64, "messages"),
            Metric::Duplicated => (wanted.map(|r| r.duplicated).sum::<u64>() as f64, "messages"),
            Metric::Reordered => (wanted.map(|r| r.reordered).sum::<u64>() as f64, "messages"),
            _ => {
                let mut h = histogram();
                for r in wanted {
                    if let Some(e) = r.e2e {
                        let _ = h.add(e);
                    }
                }
                if h.is_empty() {
                    note = Some("no end-to-end latency measured".to_string());
                }
                (Quantile::P99.value(&h) as f64, "µs")
            }
        };
        self.verdict(value, unit, note)
    }

    fn verdict(&self, value: f64, unit: &'static str, note: Option<String>) -> Verdict {
        let value = (value * 1e6).round() / 1e6;
        let passed = match self.bound {
            Bound::Max => value <= self.limit,
            Bound::Min => value >= self.limit,
        };
        Verdict {
            metric: self.name.clone(),
            bound: self.bound,
            limit: self.limit_text.clone(),
            phase: self.phase.clone(),
            sink: self.sink.map(|s| s.name().to_string()),
            device_type: self.device_type.clone(),
            value,
            unit,
            passed,
            abort: self.abort,
            note,
        }
    }
}

/// One line per verdict, for the terminal report.
pub fn render(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    if verdicts.is_empty() {
        return out;
    }
    let failed = verdicts.iter().filter(|v| !v.passed).count();
    out.push_str(&format!("thresholds: {} passed, {failed} failed\n", verdicts.len() - failed));
    for v in verdicts {
        let mut scope = vec![];
        if let Some(p) = &v.phase {
            scope.push(format!("phase={p}"));
        }
        if let Some(s) = &v.sink {
            scope.push(format!("sink={s}"));
        }
        if let Some(d) = &v.device_type {
            scope.push(format!("device_type={d}"));
        }
        let bound = match v.bound {
            Bound::Max => "<=",
            Bound::Min => ">=",
        };
        out.push_str(&format!(
            "  [{}] {}{} = {} {} (want {bound} {}){}\n",
            if v.passed { "pass" } else { "FAIL" },
            v.metric,
            if scope.is_empty() { String::new() } else { format!(" {{{}}}", scope.join(", ")) },
            v.value,
            v.unit,
            v.limit,
            v.note.as_ref().map(|n| format!("  ({n})")).unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, phases: &[&str]) -> Result<Vec<Threshold>, Problems> {
        let doc: toml::Table = text.parse().unwrap();
        let mut p = Problems::default();
        let phases: Vec<String> = phases.iter().map(|s| s.to_string()).collect();
        let out = parse_list(&doc["threshold"], "threshold", Some(&phases), &mut p);
        if p.is_empty() { Ok(out) } else { Err(p) }
    }

    #[test]
    fn time_bounds_take_units_and_rates_take_fractions_or_percentages() {
        let t = parse(
            r#"
            [[threshold]]
            metric = "latency_p99"
            max = "50ms"
            [[threshold]]
            metric = "error_rate"
            max = "1%"
            [[threshold]]
            metric = "drop_rate"
            max = 0.5
            [[threshold]]
            metric = "messages_per_second"
            min = 100
            phase = "steady"
            sink = "file"
            "#,
            &["steady"],
        )
        .unwrap();
        assert_eq!(t[0].limit, 50_000.0);
        assert_eq!(t[1].limit, 0.01);
        assert_eq!(t[2].limit, 0.5);
        assert_eq!((t[3].bound, t[3].limit, t[3].sink), (Bound::Min, 100.0, Some(Protocol::File)));
    }

    #[test]
    fn every_bad_threshold_is_reported_with_its_path() {
        let e = parse(
            r#"
            [[threshold]]
            metric = "latency_p98"
            max = "5ms"
            [[threshold]]
            metric = "latency_p99"
            max = 50
            [[threshold]]
            metric = "error_rate"
            max = 2.0
            phase = "nope"
            [[threshold]]
            metric = "drop_rate"
            [[threshold]]
            metric = "drop_rate"
            max = 0.1
            colour = "red"
            "#,
            &[],
        )
        .unwrap_err()
        .to_string();
        for want in [
            "threshold[0].metric: unknown metric \"latency_p98\"",
            "threshold[1].max: expected a duration such as \"50ms\", got an integer 50",
            "threshold[2].max: a rate lies between 0 and 1",
            "threshold[2].phase: unknown phase \"nope\"",
            "threshold[3]: missing: a bound",
            "threshold[4].colour: unknown key",
        ] {
            assert!(e.contains(want), "{want:?} not in:\n{e}");
        }
    }

    #[test]
    fn a_latency_threshold_fails_above_its_bound_and_passes_at_it() {
        let fleet = Fleet::default();
        let t = parse("[[threshold]]\nmetric = \"latency_max\"\nmax = \"1ms\"", &[]).unwrap();
        let mut st = ProfileStats::new();
        st.counts.messages = 1;
        st.latency.get_mut().record(1000).unwrap();
        let lat = histogram();
        let mut fleet = fleet;
        fleet.profiles.push(test_profile());
        let span = Span { profiles: std::slice::from_ref(&st), lateness: &lat, seconds: 1.0 };
        assert!(t[0].judge(&fleet, &span).passed);
        st.latency.get_mut().record(2000).unwrap();
        let span = Span { profiles: std::slice::from_ref(&st), lateness: &lat, seconds: 1.0 };
        let v = t[0].judge(&fleet, &span);
        assert!(!v.passed);
        assert!(v.value >= 2000.0, "{v:?}");
    }

    fn test_profile() -> crate::sim::profile::Profile {
        let doc: toml::Table = "protocol = \"null\"\ninterval = \"1s\"\nfields.x = { type = \"gaussian\", mean = 0, stddev = 1 }".parse().unwrap();
        let mut p = Problems::default();
        crate::config::compile_profile("t", Table::new("", &doc), &mut p).unwrap()
    }
}
