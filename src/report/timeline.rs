//! The run's figures over time, for the report's charts and `report compare`: one point per
//! second of wall time, built by the main thread from the progress snapshots the shards
//! already send (nothing new on the per-message path). Kept columnar (one array per figure)
//! and bounded to [`MAX_POINTS`]: when full, neighbouring points are merged in pairs and from
//! then on each new point gathers as many seconds as the old ones, so a one-hour run keeps one
//! point per two (four, ...) seconds, evenly, and the file stays small.

use crate::measure::counters::Counters;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Most points a timeline keeps (`limits.rs` documents it too).
pub const MAX_POINTS: usize = crate::limits::MAX_TIMELINE_POINTS;

/// One point as the main thread measures it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    /// Position on the axis: sim seconds since the start (virtual clock) or wall seconds
    /// since the start (realtime).
    pub t_s: f64,
    /// Wall seconds this point covers.
    pub dt_s: f64,
    pub devices: u64,
    /// Completed messages, errors, drops and sink connection events within the point.
    pub counts: Counters,
    pub sink_events: u64,
    /// Faults active at the end of the point.
    pub faults_active: u64,
    /// Latency of the messages completed within the point.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Tick lateness within the point (realtime clock only).
    pub lateness_p99_us: Option<u64>,
}

/// The time series, as in `report.json` (`timeline`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Timeline {
    /// `sim` (virtual clock: `t_s` is sim seconds) or `wall` (realtime).
    pub axis: String,
    /// Raw points merged into one (1, 2, 4, ...): the series was downsampled by this.
    pub merged: u64,
    pub t_s: Vec<f64>,
    pub dt_s: Vec<f64>,
    pub devices: Vec<u64>,
    pub messages: Vec<u64>,
    /// Messages per wall second within each point.
    pub msgs_per_s: Vec<f64>,
    pub errors: Vec<u64>,
    pub dropped: Vec<u64>,
    pub sink_events: Vec<u64>,
    pub faults_active: Vec<u64>,
    /// A merged point keeps the message-weighted mean of p50 and the larger p99.
    pub p50_us: Vec<u64>,
    pub p99_us: Vec<u64>,
    /// Empty for a virtual run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lateness_p99_us: Vec<u64>,
    /// Raw points gathered into the next point, and how many.
    #[serde(skip)]
    pending: Option<(Point, u64)>,
}

impl Timeline {
    pub fn new(axis: &str) -> Timeline {
        Timeline { axis: axis.to_string(), merged: 1, ..Default::default() }
    }

    fn len(&self) -> usize {
        self.t_s.len()
    }

    /// The point at `i`.
    pub fn point(&self, i: usize) -> Point {
        Point {
            t_s: self.t_s[i],
            dt_s: self.dt_s[i],
            devices: self.devices[i],
            counts: Counters::new(self.messages[i], self.errors[i], self.dropped[i]),
            sink_events: self.sink_events[i],
            faults_active: self.faults_active[i],
            p50_us: self.p50_us[i],
            p99_us: self.p99_us[i],
            lateness_p99_us: self.lateness_p99_us.get(i).copied(),
        }
    }

    /// Adds a raw point: into the point being gathered, which is stored once it holds
    /// `merged` raw points (a full timeline first halves itself by merging neighbours).
    pub fn push(&mut self, p: Point) {
        // Halve before gathering, so the new point gathers as many seconds as the merged ones.
        if self.pending.is_none() && self.len() >= MAX_POINTS {
            self.halve();
        }
        let (acc, n) = match self.pending.take() {
            Some((acc, n)) => (merge(&acc, &p), n + 1),
            None => (p, 1),
        };
        if n < self.merged.max(1) {
            self.pending = Some((acc, n));
            return;
        }
        self.push_raw(acc);
    }

    /// Stores the point still being gathered (at the end of the run).
    pub fn finish(&mut self) {
        if let Some((acc, _)) = self.pending.take() {
            if self.len() >= MAX_POINTS {
                self.halve();
            }
            self.push_raw(acc);
        }
    }

    fn push_raw(&mut self, p: Point) {
        self.t_s.push(round3(p.t_s));
        self.dt_s.push(round3(p.dt_s));
        self.devices.push(p.devices);
        self.messages.push(p.counts.messages);
        self.msgs_per_s.push(round1(p.counts.messages as f64 / p.dt_s.max(1e-9)));
        self.errors.push(p.counts.errors);
        self.dropped.push(p.counts.dropped);
        self.sink_events.push(p.sink_events);
        self.faults_active.push(p.faults_active);
        self.p50_us.push(p.p50_us);
        self.p99_us.push(p.p99_us);
        if let Some(l) = p.lateness_p99_us {
            self.lateness_p99_us.push(l);
        }
    }

    /// Merges points 0+1, 2+3, ...: half the points, each covering twice the time.
    fn halve(&mut self) {
        let points: Vec<Point> = (0..self.len()).map(|i| self.point(i)).collect();
        let mut out = Timeline::new(&self.axis);
        out.merged = self.merged * 2;
        for pair in points.chunks(2) {
            out.push_raw(match pair {
                [a, b] => merge(a, b),
                [a] => a.clone(),
                _ => unreachable!("chunks(2) yields one or two"),
            });
        }
        *self = out;
    }
}

/// Two neighbouring points as one.
fn merge(a: &Point, b: &Point) -> Point {
    let n = a.counts.messages + b.counts.messages;
    let p50 = if n == 0 {
        a.p50_us.max(b.p50_us)
    } else {
        ((a.p50_us as u128 * a.counts.messages as u128
            + b.p50_us as u128 * b.counts.messages as u128)
            / n as u128) as u64
    };
    Point {
        t_s: b.t_s,
        dt_s: a.dt_s + b.dt_s,
        devices: b.devices,
        counts: a.counts + b.counts,
        sink_events: a.sink_events + b.sink_events,
        faults_active: a.faults_active.max(b.faults_active),
        p50_us: p50,
        p99_us: a.p99_us.max(b.p99_us),
        lateness_p99_us: match (a.lateness_p99_us, b.lateness_p99_us) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        },
    }
}

/// Builds the points from the shards' latest snapshots (in `run.rs`'s wait loop).
pub struct Sampler {
    pub timeline: Timeline,
    prev: (Counters, u64),
    prev_lateness: Option<Histogram<u64>>,
    /// Latency of the messages completed since the last point.
    pub window: Histogram<u64>,
}

/// What the shards' latest snapshots add up to at one moment.
pub struct Totals {
    pub t_s: f64,
    pub dt_s: f64,
    pub devices: u64,
    pub counts: Counters,
    pub sink_events: u64,
    pub faults_active: u64,
    /// Realtime: tick lateness since the start, over every shard.
    pub lateness: Option<Histogram<u64>>,
}

impl Sampler {
    pub fn new(axis: &str) -> Sampler {
        Sampler {
            timeline: Timeline::new(axis),
            prev: (Counters::default(), 0),
            prev_lateness: None,
            window: crate::measure::stats::histogram(),
        }
    }

    /// The timeline, with the point still being gathered stored.
    pub fn finish(mut self) -> Timeline {
        self.timeline.finish();
        self.timeline
    }

    /// Adds the point that ends now.
    pub fn sample(&mut self, t: Totals) {
        let q = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        let lateness_p99_us = t.lateness.as_ref().map(|now| {
            let mut delta = now.clone();
            if let Some(prev) = &self.prev_lateness {
                // Counts only grow, so the difference is the interval's lateness.
                let _ = delta.subtract(prev);
            }
            q(&delta, 0.99)
        });
        let (prev, s) = self.prev;
        self.timeline.push(Point {
            t_s: t.t_s,
            dt_s: t.dt_s,
            devices: t.devices,
            counts: t.counts.since(&prev),
            sink_events: t.sink_events.saturating_sub(s),
            faults_active: t.faults_active,
            p50_us: q(&self.window, 0.5),
            p99_us: q(&self.window, 0.99),
            lateness_p99_us,
        });
        self.prev = (t.counts, t.sink_events);
        self.prev_lateness = t.lateness;
        self.window.reset();
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, messages: u64, p99: u64) -> Point {
        Point {
            t_s: t,
            dt_s: 1.0,
            counts: Counters::new(messages, 0, 0),
            p50_us: p99 / 2,
            p99_us: p99,
            ..Point::default()
        }
    }

    #[test]
    fn a_timeline_never_holds_more_than_max_points() {
        let mut tl = Timeline::new("sim");
        for i in 0..(MAX_POINTS * 3 + 7) {
            tl.push(point(i as f64, 10, i as u64));
        }
        tl.finish();
        assert!(tl.len() <= MAX_POINTS, "{}", tl.len());
        assert!(tl.len() > MAX_POINTS / 2, "{}", tl.len());
        assert_eq!(tl.merged, 4);
        // Evenly: every point but the last covers `merged` seconds.
        let n = tl.len();
        let odd: Vec<_> = tl.dt_s[..n - 1].iter().enumerate().filter(|(_, d)| **d != 4.0).collect();
        assert!(odd.is_empty(), "{odd:?} of {n}");
        // Nothing is lost by merging: every message is still counted.
        assert_eq!(tl.messages.iter().sum::<u64>(), 10 * (MAX_POINTS * 3 + 7) as u64);
        assert_eq!(tl.t_s.last().copied(), Some((MAX_POINTS * 3 + 6) as f64));
    }

    #[test]
    fn merged_points_keep_the_rate_and_the_worse_p99() {
        let m = merge(&point(1.0, 100, 50), &point(2.0, 300, 900));
        assert_eq!((m.counts.messages, m.dt_s, m.p99_us, m.t_s), (400, 2.0, 900, 2.0));
        let mut tl = Timeline::new("wall");
        tl.push_raw(m);
        assert_eq!(tl.msgs_per_s, vec![200.0]);
    }

    #[test]
    fn the_sampler_turns_running_totals_into_per_point_deltas() {
        let mut s = Sampler::new("sim");
        let totals = |m, e| Totals {
            t_s: m as f64,
            dt_s: 1.0,
            devices: 5,
            counts: Counters::new(m, e, 0),
            sink_events: 0,
            faults_active: 0,
            lateness: None,
        };
        crate::measure::stats::record(&mut s.window, 700);
        s.sample(totals(100, 1));
        s.sample(totals(250, 1));
        assert_eq!(s.timeline.messages, vec![100, 150]);
        assert_eq!(s.timeline.errors, vec![1, 0]);
        assert_eq!(s.timeline.p99_us[1], 0, "the window starts again after each point");
        assert!(s.timeline.p99_us[0] >= 700);
    }
}
