//! Per-shard counters and HDR histograms, merged across shards at report time.

use super::counters::Counters;
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

/// A histogram allocated on its first record: an empty one reads as [`histogram`]'s (through
/// `Deref`) and costs nothing, so the statistics of a profile that never completes a message
/// (a fleet file with 4,000 profiles, on every shard and in every network sink) stay small.
#[derive(Clone, Default)]
pub struct LazyHistogram(Option<Box<Histogram<u64>>>);

impl LazyHistogram {
    /// The histogram, allocated now if it was not yet.
    pub fn get_mut(&mut self) -> &mut Histogram<u64> {
        self.0.get_or_insert_with(|| Box::new(histogram()))
    }

    /// Records `v` µs, clamped to [`HIGHEST_US`].
    pub fn record(&mut self, v: u64) {
        record(self.get_mut(), v);
    }

    /// Adds another histogram's counts (nothing is allocated for an empty one).
    pub fn add(&mut self, o: &LazyHistogram) {
        if let Some(h) = &o.0 {
            let _ = self.get_mut().add(&**h);
        }
    }

    /// The histogram (an empty one if nothing was recorded).
    pub fn into_inner(self) -> Histogram<u64> {
        self.0.map_or_else(histogram, |h| *h)
    }

    /// True once something was recorded (or added).
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl From<Histogram<u64>> for LazyHistogram {
    fn from(h: Histogram<u64>) -> LazyHistogram {
        LazyHistogram(Some(Box::new(h)))
    }
}

impl std::ops::Deref for LazyHistogram {
    type Target = Histogram<u64>;
    fn deref(&self) -> &Histogram<u64> {
        static EMPTY: std::sync::OnceLock<Histogram<u64>> = std::sync::OnceLock::new();
        self.0.as_deref().unwrap_or_else(|| EMPTY.get_or_init(histogram))
    }
}

/// Counters and latency for one profile (one sink and device type) on one shard.
#[derive(Clone)]
pub struct ProfileStats {
    /// Completed, failed and dropped messages.
    pub counts: Counters,
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
    pub latency: LazyHistogram,
    /// Actual hand-over to the sink -> completion, µs.
    pub service: LazyHistogram,
    /// Downlink commands received by per-device MQTT sessions, and those answered.
    pub commands: u64,
    pub commands_answered: u64,
    /// Command round trip: the command's `sent_at` -> its receipt (wall clock), µs; only
    /// commands that carry a `sent_at` are recorded.
    pub command_rtt: LazyHistogram,
}

impl ProfileStats {
    /// One more event of the profile's event `ei` (by its index in the profile's events).
    pub fn count_event(&mut self, ei: usize) {
        if self.events.len() <= ei {
            self.events.resize(ei + 1, 0);
        }
        self.events[ei] += 1;
    }

    pub fn new() -> ProfileStats {
        ProfileStats {
            counts: Counters::default(),
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
            latency: LazyHistogram::default(),
            service: LazyHistogram::default(),
            commands: 0,
            commands_answered: 0,
            command_rtt: LazyHistogram::default(),
        }
    }

    /// Adds another shard's figures.
    pub fn merge(&mut self, o: &ProfileStats) {
        self.counts += o.counts;
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
        self.latency.add(&o.latency);
        self.service.add(&o.service);
        self.commands += o.commands;
        self.commands_answered += o.commands_answered;
        self.command_rtt.add(&o.command_rtt);
    }
}

/// Statistics of freed runtime profiles, folded by what names a report row: event counts are
/// kept by event name (the freed profile's event list is gone).
#[derive(Clone, Default)]
pub struct Folded {
    /// `events` stays empty: see `events`.
    pub stats: ProfileStats,
    pub events: std::collections::BTreeMap<String, u64>,
}

impl Folded {
    /// Adds one profile's statistics; `names` are its event names, by event index.
    pub fn fold(&mut self, st: &ProfileStats, names: &[&str]) {
        let events = std::mem::take(&mut self.stats.events);
        self.stats.merge(st);
        self.stats.events = events;
        for (name, n) in names.iter().zip(&st.events) {
            *self.events.entry((*name).to_string()).or_insert(0) += n;
        }
    }

    /// Adds another fold.
    pub fn merge(&mut self, o: &Folded) {
        self.fold(&o.stats, &[]);
        for (k, v) in &o.events {
            *self.events.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// What freed runtime profiles of one report row (sink, device type, requested protocol)
/// measured before they were freed, in all and per scenario phase.
#[derive(Clone, Default)]
pub struct Retired {
    pub sink: String,
    pub device_type: String,
    pub requested_protocol: Option<String>,
    /// Devices the freed profiles' groups had (the report counts stopped devices too).
    pub devices: u64,
    pub total: Folded,
    /// Indexed like `ShardStats::phases`.
    pub phases: Vec<Folded>,
}

impl Retired {
    pub fn key(&self) -> (&str, &str, Option<&str>) {
        (&self.sink, &self.device_type, self.requested_protocol.as_deref())
    }

    /// Adds another row's figures (the same key).
    pub fn merge(&mut self, o: &Retired) {
        self.devices += o.devices;
        self.total.merge(&o.total);
        if self.phases.len() < o.phases.len() {
            self.phases.resize_with(o.phases.len(), Folded::default);
        }
        for (a, b) in self.phases.iter_mut().zip(&o.phases) {
            a.merge(b);
        }
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
    /// Runtime profiles freed once no device used them, folded per report row.
    pub retired: Vec<Retired>,
}

impl ShardStats {
    pub fn new(profiles: usize) -> ShardStats {
        ShardStats {
            profiles: (0..profiles).map(|_| ProfileStats::new()).collect(),
            lateness: histogram(),
            sink_events: Default::default(),
            phases: vec![],
            step_lateness: histogram(),
            retired: vec![],
        }
    }

    /// Every profile's statistics, the freed ones' included.
    pub fn all(&self) -> impl Iterator<Item = &ProfileStats> {
        self.profiles.iter().chain(self.retired.iter().map(|r| &r.total.stats))
    }

    /// The counters of every profile, the freed ones' included.
    pub fn counts(&self) -> Counters {
        self.all().map(|p| p.counts).sum()
    }

    /// The retired entry of a report row, made if there is none.
    pub fn retired_mut(&mut self, key: (&str, &str, Option<&str>)) -> &mut Retired {
        let i = match self.retired.iter().position(|r| r.key() == key) {
            Some(i) => i,
            None => {
                self.retired.push(Retired {
                    sink: key.0.to_string(),
                    device_type: key.1.to_string(),
                    requested_protocol: key.2.map(str::to_string),
                    ..Retired::default()
                });
                self.retired.len() - 1
            }
        };
        &mut self.retired[i]
    }
}

/// A periodic progress report from a shard to the main thread.
#[derive(Clone)]
pub struct Snapshot {
    pub shard: usize,
    pub devices: usize,
    /// Completed, failed and dropped messages since the start.
    pub counts: Counters,
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
