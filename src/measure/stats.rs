//! Per-shard counters and HDR histograms, merged across shards at report time.

use hdrhistogram::Histogram;

/// Highest value a histogram keeps exactly: one hour in microseconds. Larger values are clamped.
pub const HIGHEST_US: u64 = 3_600_000_000;

/// Range a new histogram covers before it grows: 2 ms.
const INITIAL_HIGHEST_US: u64 = 2048;

/// A microsecond histogram with 3 significant digits that starts small (16 KiB, values up to
/// 2 ms) and grows with the largest value recorded, one doubling of the range at a time (8 KiB
/// each). A histogram sized for an hour from the start costs 184 KiB, and every profile of
/// every shard has two: 1,000 profiles on 2 shards took 1.5 GB.
pub fn histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, INITIAL_HIGHEST_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    h.auto(true);
    h
}

/// Records `v` µs, clamped to [`HIGHEST_US`].
pub fn record(h: &mut Histogram<u64>, v: u64) {
    // With auto-resize on, recording fails only if the grown array cannot be allocated; the
    // value is then left out rather than failing the tick.
    let _ = h.record(v.min(HIGHEST_US));
}

/// Counters and latency for one profile (one sink and device type) on one shard.
#[derive(Clone)]
pub struct ProfileStats {
    pub messages: u64,
    pub errors: u64,
    pub dropped: u64,
    pub bytes: u64,
    /// Errors by kind (`timeout`, `nack`, `http_503`, `shutdown`, ...).
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// Times a connection entered slow-down (backpressure = "slow_down").
    pub slowdowns: u64,
    /// Samples taken (a device down, asleep or paused takes none).
    pub samples: u64,
    /// Samples handed to the sink (on_change: those that changed, or the heartbeat).
    pub published: u64,
    /// Samples not published by on_change (nothing moved past its deadband).
    pub suppressed: u64,
    /// Event messages by the profile's event index.
    pub events: Vec<u64>,
    /// Sim time devices spent offline (availability) and asleep (sleep windows), ms.
    pub offline_ms: u64,
    pub asleep_ms: u64,
    /// Derived values that came out NaN or infinite (published as null).
    pub nonfinite: u64,
    /// Intended send time -> completion, µs.
    pub latency: Histogram<u64>,
    /// Actual hand-over to the sink -> completion, µs.
    pub service: Histogram<u64>,
    /// Downlink commands received by per-device MQTT sessions, and those answered.
    pub commands: u64,
    pub commands_answered: u64,
    /// Command round trip: the command's `sent_at` -> its receipt (wall clock), µs; only
    /// commands that carry a `sent_at` are recorded.
    pub command_rtt: Histogram<u64>,
}

impl ProfileStats {
    pub fn new() -> ProfileStats {
        ProfileStats {
            messages: 0,
            errors: 0,
            dropped: 0,
            bytes: 0,
            error_kinds: Default::default(),
            slowdowns: 0,
            samples: 0,
            published: 0,
            suppressed: 0,
            events: vec![],
            offline_ms: 0,
            asleep_ms: 0,
            nonfinite: 0,
            latency: histogram(),
            service: histogram(),
            commands: 0,
            commands_answered: 0,
            command_rtt: histogram(),
        }
    }

    /// Adds another shard's figures.
    pub fn merge(&mut self, o: &ProfileStats) {
        self.messages += o.messages;
        self.errors += o.errors;
        self.dropped += o.dropped;
        self.bytes += o.bytes;
        self.slowdowns += o.slowdowns;
        self.samples += o.samples;
        self.published += o.published;
        self.suppressed += o.suppressed;
        if self.events.len() < o.events.len() {
            self.events.resize(o.events.len(), 0);
        }
        for (a, b) in self.events.iter_mut().zip(&o.events) {
            *a += b;
        }
        self.offline_ms += o.offline_ms;
        self.asleep_ms += o.asleep_ms;
        self.nonfinite += o.nonfinite;
        for (k, v) in &o.error_kinds {
            *self.error_kinds.entry(k.clone()).or_insert(0) += v;
        }
        let _ = self.latency.add(&o.latency);
        let _ = self.service.add(&o.service);
        self.commands += o.commands;
        self.commands_answered += o.commands_answered;
        let _ = self.command_rtt.add(&o.command_rtt);
    }
}

impl Default for ProfileStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a shard measured.
#[derive(Clone)]
pub struct ShardStats {
    /// Indexed like `Fleet::profiles`.
    pub profiles: Vec<ProfileStats>,
    /// Actual fire time - intended time, µs (realtime clock only).
    pub lateness: Histogram<u64>,
    /// Connection-level events of network sinks, by `sink.event` (`mqtt.reconnect`, ...).
    pub sink_events: std::collections::BTreeMap<String, u64>,
    /// Per scenario phase, indexed like `profiles`: the messages intended within the phase.
    pub phases: Vec<Vec<ProfileStats>>,
    /// Realtime scenario: how late each step was applied against its intended wall time, µs.
    pub step_lateness: Histogram<u64>,
}

impl ShardStats {
    pub fn new(profiles: usize) -> ShardStats {
        ShardStats {
            profiles: (0..profiles).map(|_| ProfileStats::new()).collect(),
            lateness: histogram(),
            sink_events: Default::default(),
            phases: vec![],
            step_lateness: histogram(),
        }
    }

    pub fn messages(&self) -> u64 {
        self.profiles.iter().map(|p| p.messages).sum()
    }
    pub fn errors(&self) -> u64 {
        self.profiles.iter().map(|p| p.errors).sum()
    }
    pub fn dropped(&self) -> u64 {
        self.profiles.iter().map(|p| p.dropped).sum()
    }
}

/// A periodic progress report from a shard to the main thread.
pub struct Snapshot {
    pub shard: usize,
    pub devices: usize,
    pub messages: u64,
    pub errors: u64,
    pub dropped: u64,
    pub sim_now_ms: u64,
    /// Latency of the messages completed since the previous snapshot.
    pub latency: Histogram<u64>,
    /// Realtime: the shard's tick lateness since the start (for `abort` thresholds).
    pub lateness: Option<Histogram<u64>>,
    /// Connection events of its network sinks since the start (the report's time series
    /// marks where they happened).
    pub sink_events: u64,
    /// Faults active on its devices now.
    pub faults_active: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_start_small_and_grow_with_what_they_record() {
        let mut h = histogram();
        let small = h.distinct_values();
        record(&mut h, 500);
        assert_eq!(h.distinct_values(), small);
        record(&mut h, 90_000_000_000);
        assert!(h.distinct_values() > small);
        assert_eq!(h.max(), h.highest_equivalent(HIGHEST_US));
        let mut other = histogram();
        record(&mut other, 3);
        other.add(&h).unwrap();
        assert_eq!(other.len(), 3);
    }
}
