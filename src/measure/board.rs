//! What the shards publish for observers (the admin server's `/metrics`): per-profile counters
//! and fixed-bucket latency histograms, copied out of a shard's own statistics about once a
//! second of wall time (with the progress snapshot).
//!
//! The per-message path never sees this module: a shard counts in its own `ProfileStats` (plain
//! integers and an HDR histogram) and, about once a second, turns them into a
//! [`ShardFigures`] and drops it into its [`Slot`] (in the shard's published counters) with
//! `try_lock`: a scrape that holds the lock at that moment just gets the previous figures. The
//! collector reads the slots at scrape time and merges the shards by label set.

use super::counters::Counters;
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};

/// Upper bounds (µs) of the latency and tick-lateness buckets: 10 µs to 60 s, then `+Inf`.
pub const BUCKETS_US: [u64; 21] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A histogram in the fixed [`BUCKETS_US`] (counts per bucket, not cumulative; the last one
/// is `+Inf`), with its sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    pub counts: [u64; BUCKETS_US.len() + 1],
    pub sum_us: f64,
}

impl Buckets {
    /// The buckets of an HDR histogram of µs values. Runs at publish time (cost: one step per
    /// distinct recorded value), never per message.
    pub fn from_hdr(h: &Histogram<u64>) -> Buckets {
        let mut b = Buckets::default();
        for v in h.iter_recorded() {
            // HDR keeps 3 significant digits; place each of its buckets by its middle value.
            let value = h.median_equivalent(v.value_iterated_to());
            let i = BUCKETS_US.partition_point(|&bound| bound < value);
            b.counts[i] += v.count_at_value();
        }
        b.sum_us = h.mean() * h.len() as f64;
        b
    }

    /// An HDR histogram holding each bucket's count at the bucket's upper bound (the last
    /// finite bound for `+Inf`): quantiles of it are the bucket upper bounds.
    pub fn to_hdr(&self) -> Histogram<u64> {
        let mut h = crate::measure::stats::histogram();
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 {
                let v = BUCKETS_US.get(i).copied().unwrap_or(BUCKETS_US[BUCKETS_US.len() - 1]);
                let _ = h.record_n(v, n);
            }
        }
        h
    }

    pub fn add(&mut self, o: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.sum_us += o.sum_us;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One profile's figures on one shard.
#[derive(Clone, Debug, Default)]
pub struct ProfileFigures {
    pub device_type: Arc<str>,
    /// Protocol name (`mqtt`, `file`, ...); also the sink's name.
    pub protocol: &'static str,
    pub devices: u64,
    pub counts: Counters,
    pub slowdowns: u64,
    /// Errors by kind (`timeout`, `nack`, `http_503`, ...), sorted.
    pub error_kinds: Vec<(String, u64)>,
    /// Intended send time -> completion.
    pub latency: Buckets,
    /// Downlink commands received / answered (per-device MQTT sessions) and their round trip.
    pub commands: u64,
    pub commands_answered: u64,
    pub command_rtt: Buckets,
}

/// The state of a sink's connections on one shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkFigures {
    pub sink: &'static str,
    /// Connections up / configured.
    pub connected: u64,
    pub connections: u64,
    /// Messages waiting in its queues.
    pub queue_depth: u64,
}

/// Everything one shard publishes.
#[derive(Clone, Debug, Default)]
pub struct ShardFigures {
    pub profiles: Vec<ProfileFigures>,
    /// Fire time - intended time (realtime clock).
    pub lateness: Buckets,
    pub sinks: Vec<SinkFigures>,
    /// Connection-level events by `sink.event` (`mqtt.reconnect`, ...), sorted.
    pub sink_events: Vec<(String, u64)>,
    /// Active faults and faults injected so far, by fault type name.
    pub faults_active: Vec<(&'static str, u64)>,
    pub faults_injected: Vec<(&'static str, u64)>,
    /// Paused devices.
    pub paused: u64,
    /// Set once the shard has built its devices and ticks.
    pub running: bool,
    /// The scenario that drives the run and its current phase (by sim time), if any.
    pub scenario_phase: Option<(String, String)>,
}

/// Where one shard publishes its figures: the shard writes, scrapes read.
#[derive(Debug, Default)]
pub struct Slot(Mutex<Arc<ShardFigures>>);

impl Slot {
    /// Publishes new figures unless a reader holds the slot right now (then they are dropped:
    /// the next publish replaces them anyway). Never blocks the shard.
    pub fn publish(&self, figures: ShardFigures) {
        if let Ok(mut s) = self.0.try_lock() {
            *s = Arc::new(figures);
        }
    }

    /// The latest figures.
    pub fn read(&self) -> Arc<ShardFigures> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdr_values_land_in_the_bucket_of_their_upper_bound() {
        let mut h = crate::measure::stats::histogram();
        h.record(5).unwrap(); // <= 10 µs
        h.record(10).unwrap(); // <= 10 µs
        h.record(11).unwrap(); // <= 25 µs
        h.record(900).unwrap(); // <= 1 ms
        h.record(3_000_000_000).unwrap(); // beyond 60 s
        let b = Buckets::from_hdr(&h);
        assert_eq!(b.counts[0], 2);
        assert_eq!(b.counts[1], 1);
        assert_eq!(b.counts[6], 1);
        assert_eq!(b.counts[BUCKETS_US.len()], 1);
        assert_eq!(b.count(), 5);
        let exact = 5.0 + 10.0 + 11.0 + 900.0 + 3e9;
        assert!((b.sum_us - exact).abs() / exact < 1e-3, "{}", b.sum_us);
    }

    #[test]
    fn a_slot_keeps_the_latest_figures() {
        let slot = Slot::default();
        assert!(!slot.read().running);
        slot.publish(ShardFigures { running: true, ..Default::default() });
        assert!(slot.read().running);
    }
}
