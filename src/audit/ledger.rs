//! The auditor's books: every consumed message classified against its device's [`Track`],
//! bad input counted by kind, end-to-end latency per profile, and at the end the expected
//! messages of every device (from the schedule where the profile is periodic) against what
//! arrived. Free of I/O: the consumers hand it (topic, payload, arrival time).

use super::roster::{Roster, first_tick, scheduled};
use super::track::{Arrival, Track};
use super::values::{ValueCounts, Values};
use crate::limits::MAX_AUDIT_MESSAGE_BYTES;
use crate::measure::stats::{histogram, record};
use crate::shard::tap::ExcuseTap;
use crate::sim::behaviour::ReportMode;
use crate::sim::device::device_seed;
use crate::sim::profile::{Fleet, Group, Profile};
use crate::sim::seed::phase_ms;
use crate::sim::time::parse_rfc3339;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;

/// How intended send times map to wall time, for end-to-end latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LatencyClock {
    /// Not measured (a virtual-clock run: its timestamps are not wall times).
    Off,
    /// `intended wall µs = wall0_us + (timestamp_ms - start_ms) * 1000 / speed`.
    Wall { wall0_us: u64, start_ms: u64, speed: f64 },
}

/// Counts of every kind of arrival and of bad input.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Counts {
    /// Every message consumed.
    pub consumed: u64,
    pub in_order: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// The largest distance (in seqs) an out-of-order message arrived behind the newest.
    pub reorder_max: u64,
    /// More than 64 seqs behind the newest: duplicate or very late, not counted as received.
    pub stale: u64,
    /// Not JSON, not an envelope, or larger than the limit.
    pub unparsable: u64,
    /// A `device_id` the fleet does not have.
    pub unknown_device: u64,
    /// A fleet device on a topic its profile does not publish to.
    pub foreign_topic: u64,
    /// Envelope inconsistent with the device: wrong `device_type` or unreadable timestamp.
    pub corrupted: u64,
    /// A periodic device's timestamp off its tick grid (first tick + k * interval).
    pub off_grid: u64,
    /// Messages without `"seq"` (events, or profiles with `seq = false`): not classified.
    pub no_seq: u64,
    /// `verify = "values"`: the field checks (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<ValueCounts>,
}

/// What the auditor knows at the end about how the run ended.
#[derive(Clone, Copy, Debug)]
pub struct EndFacts {
    pub seed: u64,
    pub start_ms: u64,
    /// The sim time up to which periodic devices certainly ticked (`None`: unknown, e.g. a
    /// stand-alone audit: only seq gaps count).
    pub schedule_end_ms: Option<u64>,
}

/// One device type's delivery figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TypeRow {
    pub device_type: String,
    pub devices: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub e2e_latency_us: Option<Latency>,
}

/// Percentiles of an end-to-end latency histogram, µs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// A device that did worst.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WorstDevice {
    pub device_id: String,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

/// The whole audit's outcome (`report.json` `audit`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AuditReport {
    /// Where the messages were read (`mqtt URL filter ...`, `amqp URL queue ...`).
    pub source: String,
    /// `in-run` or `stand-alone`.
    pub mode: &'static str,
    pub devices: u64,
    /// Devices expected to publish that nothing arrived from.
    pub silent_devices: u64,
    pub expected: u64,
    /// Distinct (device, seq) pairs received.
    pub received: u64,
    pub lost: u64,
    /// Gaps a DISCONNECT fault made (suppressed on purpose): not losses.
    pub excused_disconnect: u64,
    /// Gaps a `bytes` DATA_CORRUPTION fault made (unparsable on purpose): not losses.
    pub excused_corrupted: u64,
    /// `verify = "values"`: messages whose fields did not match and that no value-changing
    /// fault (DATA_CORRUPTION `nan`/`zero`/`spike`, BATTERY_DRAIN) explains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values_corrupted: Option<u64>,
    /// `verify = "values"`: mismatched messages a value-changing fault explains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excused_values: Option<u64>,
    #[serde(flatten)]
    pub counts: Counts,
    /// Connection errors and refusals (a missing queue) of the consumer.
    pub consumer_errors: u64,
    /// Bytes of per-device audit state (32 B per fleet device; with `verify = "values"` plus
    /// the generator state, see `values.rs`).
    pub state_bytes: u64,
    /// Wall seconds from the first message consumed to the last.
    pub consume_seconds: f64,
    /// CPU seconds the consumer thread used (parsing and classifying included).
    pub consumer_cpu_seconds: f64,
    pub e2e_latency_us: Option<Latency>,
    pub by_device_type: Vec<TypeRow>,
    pub worst: Vec<WorstDevice>,
    /// What the figures mean here (clock mapping, profiles audited by seq only, ...).
    pub notes: Vec<String>,
    /// Sparkplug B profiles: `seq` continuity per edge node (`sparkplug.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparkplug: Option<super::sparkplug::SparkplugAudit>,
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    #[serde(borrow)]
    device_type: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    event: Option<serde::de::IgnoredAny>,
}

/// The books.
pub struct Ledger {
    fleet: Arc<Fleet>,
    roster: Roster,
    tracks: Vec<Track>,
    /// Stand-alone: each device's first message sets where its seqs count from.
    baseline: bool,
    /// AMQP routing keys replace `/` with this (None: topics are compared as they are).
    separator: Option<String>,
    pub clock: LatencyClock,
    seed: u64,
    start_ms: Option<u64>,
    pub counts: Counts,
    /// Per profile.
    latency: Vec<Histogram<u64>>,
    topic: Vec<u8>,
    id: String,
    /// Arrival (wall µs) of the first and the last message.
    first_us: u64,
    last_us: u64,
    /// `verify = "values"`: per-device generator state.
    values: Option<Values>,
    /// Where the shards hand over devices spawned at runtime (in-run audits).
    spawns: Option<Arc<ExcuseTap>>,
    /// Per group: the spawn time of a group spawned at runtime (`None`: the fleet file's).
    spawned_at: Vec<Option<u64>>,
    /// Profiles of spawned devices already added, by the address of their shared `Arc`.
    spawned_profiles: Vec<(Arc<Profile>, usize)>,
    /// Sparkplug B edge nodes (`spBv1.0/` topics).
    sparkplug: super::sparkplug::SeqAudit,
}

impl Ledger {
    pub fn new(
        fleet: Arc<Fleet>,
        seed: u64,
        start_ms: Option<u64>,
        baseline: bool,
        separator: Option<String>,
    ) -> Ledger {
        let roster = Roster::new(&fleet);
        let n = roster.len() as usize;
        let groups = fleet.groups.len();
        Ledger {
            latency: (0..fleet.profiles.len()).map(|_| histogram()).collect(),
            fleet,
            roster,
            tracks: vec![Track::default(); n],
            baseline,
            separator,
            clock: LatencyClock::Off,
            seed,
            start_ms,
            counts: Counts::default(),
            topic: Vec::with_capacity(128),
            id: String::with_capacity(64),
            first_us: 0,
            last_us: 0,
            values: None,
            spawns: None,
            spawned_at: vec![None; groups],
            spawned_profiles: vec![],
            sparkplug: Default::default(),
        }
    }

    /// Learns devices spawned at runtime from `tap` (an in-run audit): their messages are
    /// expected from their spawn on instead of counted as unknown devices.
    pub fn follow_spawns(mut self, tap: Arc<ExcuseTap>) -> Ledger {
        self.spawns = Some(tap);
        self
    }

    /// Adds the devices spawned since the last call; false when there were none.
    fn learn_spawns(&mut self) -> bool {
        let Some(tap) = &self.spawns else { return false };
        let notes = tap.take_spawns();
        if notes.is_empty() {
            return false;
        }
        let fleet = Arc::make_mut(&mut self.fleet);
        for n in notes {
            let pi = match self.spawned_profiles.iter().find(|(p, _)| Arc::ptr_eq(p, &n.profile)) {
                Some(&(_, pi)) => pi,
                None => {
                    fleet.profiles.push((*n.profile).clone());
                    self.latency.push(histogram());
                    let pi = fleet.profiles.len() - 1;
                    self.spawned_profiles.push((n.profile.clone(), pi));
                    pi
                }
            };
            fleet.groups.push(Group {
                profile: pi,
                count: 1,
                first_ordinal: 0,
                labels: n.labels,
                labels_json: n.labels_json,
                ids: vec![n.id.clone()],
            });
            let gi = fleet.groups.len() - 1;
            self.spawned_at.push(Some(n.at_ms));
            self.roster.push_spawned(&n.id);
            self.tracks.push(Track::default());
            if let Some(v) = &mut self.values {
                v.push_spawned(fleet, gi, &n.id, self.seed);
            }
        }
        true
    }

    /// The sim time of device `id`'s first tick (group `gi`): the run's start plus its phase,
    /// or for a device spawned at runtime its spawn time plus its phase (at least 1 ms).
    fn first_of(&self, seed: u64, start_ms: u64, gi: usize, id: &str, profile: &Profile) -> u64 {
        match self.spawned_at.get(gi).copied().flatten() {
            Some(at) => at + phase_ms(device_seed(seed, id), profile.interval_ms).max(1),
            None => first_tick(seed, id, profile, start_ms),
        }
    }

    /// Turns on `verify = "values"`: builds the generator state of every fleet device.
    pub fn verify_values(mut self) -> Ledger {
        self.values = Some(Values::new(&self.fleet, self.seed));
        self.counts.values = Some(ValueCounts::default());
        self
    }

    /// Bytes of per-device state (for the memory figure).
    fn state_bytes(&self) -> usize {
        self.tracks.capacity() * std::mem::size_of::<Track>()
            + self.values.as_ref().map_or(0, |v| v.state_bytes() as usize)
    }

    /// Classifies one message that arrived at `arrival_us` (wall µs since the epoch) on
    /// `topic` (`None`: unknown, as for an HTTP batch without a topic header; not checked).
    pub fn observe(&mut self, topic: Option<&str>, payload: &[u8], arrival_us: u64) {
        self.counts.consumed += 1;
        if self.first_us == 0 {
            self.first_us = arrival_us;
        }
        self.last_us = arrival_us;
        if payload.len() > MAX_AUDIT_MESSAGE_BYTES {
            self.counts.unparsable += 1;
            return;
        }
        if let Some(t) = topic
            && super::sparkplug::SeqAudit::is_sparkplug(t)
        {
            self.sparkplug.observe(t, payload);
            return;
        }
        let Ok(env) = serde_json::from_slice::<Envelope<'_>>(payload) else {
            self.counts.unparsable += 1;
            return;
        };
        let found = match self.roster.find(&env.device_id) {
            None if self.learn_spawns() => self.roster.find(&env.device_id),
            found => found,
        };
        let Some((dense, gi)) = found else {
            self.counts.unknown_device += 1;
            return;
        };
        let fleet = self.fleet.clone();
        let group = &fleet.groups[gi];
        let pi = group.profile;
        let profile = &fleet.profiles[pi];
        if let (None, Some(topic)) = (&env.event, topic) {
            self.topic.clear();
            profile.topic.render(
                &mut self.topic,
                &env.device_id,
                &profile.device_type,
                &group.labels,
            );
            let same = match &self.separator {
                Some(sep) if sep != "/" && !sep.is_empty() => {
                    same_with_separator(&self.topic, topic.as_bytes(), sep.as_bytes())
                }
                _ => self.topic == topic.as_bytes(),
            };
            if !same {
                self.counts.foreign_topic += 1;
                return;
            }
        }
        let ts = match parse_rfc3339(&env.timestamp) {
            Ok(t) if env.device_type == profile.device_type => t,
            _ => {
                self.counts.corrupted += 1;
                return;
            }
        };
        let Some(seq) = env.seq else {
            self.counts.no_seq += 1;
            return;
        };
        if let (Some(start), true) =
            (self.start_ms, profile.behaviour.is_plain() && profile.replay.is_none())
        {
            let first = self.first_of(self.seed, start, gi, &env.device_id, profile);
            let iv = profile.interval_ms.max(1);
            if ts < first || !(ts - first).is_multiple_of(iv) {
                self.counts.off_grid += 1;
            }
        }
        match self.tracks[dense as usize].arrive(seq, self.baseline) {
            Arrival::InOrder { .. } => self.counts.in_order += 1,
            Arrival::OutOfOrder { by } => {
                self.counts.reordered += 1;
                self.counts.reorder_max = self.counts.reorder_max.max(by as u64);
            }
            Arrival::Duplicate => {
                self.counts.duplicated += 1;
                return;
            }
            Arrival::Stale => {
                self.counts.stale += 1;
                return;
            }
        }
        if let (Some(v), Some(c)) = (&mut self.values, &mut self.counts.values) {
            match v.check(&self.fleet, dense, seq, ts, payload) {
                None => c.unverified += 1,
                Some(f) => {
                    c.verified += !f.any() as u64;
                    c.value_mismatch += f.value_mismatch as u64;
                    c.field_missing += f.field_missing as u64;
                    c.field_extra += f.field_extra as u64;
                    c.type_mismatch += f.type_mismatch as u64;
                }
            }
        }
        if let LatencyClock::Wall { wall0_us, start_ms, speed } = self.clock {
            let since_us = ts.saturating_sub(start_ms) as f64 * 1000.0 / speed;
            let intended = wall0_us.saturating_add(since_us as u64);
            record(&mut self.latency[pi], arrival_us.saturating_sub(intended));
        }
    }

    /// The outcome: expected messages per device against what arrived, faults' gaps apart.
    pub fn finish(
        &mut self,
        end: &EndFacts,
        excuses: Option<&ExcuseTap>,
        worst_n: usize,
    ) -> (AuditReport, Vec<(String, Histogram<u64>)>) {
        // Devices spawned that sent nothing are expected too (silent).
        self.learn_spawns();
        let fleet = self.fleet.clone();
        let mut by_profile: Vec<TypeRow> = fleet
            .profiles
            .iter()
            .map(|p| TypeRow {
                device_type: p.device_type.clone(),
                devices: 0,
                expected: 0,
                received: 0,
                lost: 0,
                duplicated: 0,
                reordered: 0,
                e2e_latency_us: None,
            })
            .collect();
        let (mut silent, mut exc_d, mut exc_c) = (0, 0, 0);
        let (mut exc_v, mut bad_v) = (0u64, 0u64);
        let mut worst: Vec<(u64, u64, usize)> = vec![];
        let mut notes = vec![];
        let mut on_change = false;
        let mut seq_only = false;
        for (gi, g) in fleet.groups.iter().enumerate() {
            let profile = &fleet.profiles[g.profile];
            // Sparkplug devices are audited per edge node (`sparkplug.rs`), not per device.
            if profile.format.sparkplug().is_some() {
                continue;
            }
            let periodic = profile.behaviour.is_plain() && profile.replay.is_none();
            let judged = profile.behaviour.report == ReportMode::Periodic && profile.seq;
            on_change |= profile.behaviour.report != ReportMode::Periodic;
            seq_only |= !periodic && judged;
            let row = &mut by_profile[g.profile];
            for i in 0..g.count {
                let dense = (self.roster.offsets[gi] + i) as usize;
                let t = self.tracks[dense];
                let expected = match (end.schedule_end_ms, periodic && judged) {
                    (Some(e), true) => {
                        g.device_id(profile, i, &mut self.id);
                        let id = std::mem::take(&mut self.id);
                        let first = self.first_of(end.seed, end.start_ms, gi, &id, profile);
                        self.id = id;
                        scheduled(first, profile.interval_ms, e)
                            .saturating_sub(t.base())
                            .max(t.span())
                    }
                    _ if judged => t.span(),
                    // Report-on-change leaves seq gaps on purpose: nothing is judged lost.
                    _ => t.received as u64,
                };
                // Report-on-change gaps are samples not published, on purpose: not missing.
                let missing = if judged { t.missing(expected) } else { 0 };
                let (d, c) = excuses.map_or((0, 0), |x| x.get(dense));
                let excused_d = missing.min(d as u64);
                let excused_c = (missing - excused_d).min(c as u64);
                let lost = missing - excused_d - excused_c;
                exc_d += excused_d;
                exc_c += excused_c;
                if let Some(v) = &self.values {
                    let bad = v.mismatched[dense] as u64;
                    let ok = bad.min(excuses.map_or(0, |x| x.values(dense)) as u64);
                    exc_v += ok;
                    bad_v += bad - ok;
                }
                if t.received == 0 && expected > 0 {
                    silent += 1;
                }
                row.devices += 1;
                row.expected += expected;
                row.received += t.received as u64;
                row.lost += lost;
                row.duplicated += t.duplicated as u64;
                row.reordered += t.reordered as u64;
                let score = lost + t.duplicated as u64 + t.reordered as u64;
                if score > 0 && worst_n > 0 {
                    worst.push((score, lost, dense));
                }
            }
        }
        if on_change {
            notes.push("report-on-change profiles leave seq gaps on purpose: their gaps are not counted as lost (duplicates and reordering are)".into());
        }
        if seq_only {
            notes.push("profiles with events, availability or sleep are audited by seq gaps only (not by schedule)".into());
        }
        if end.schedule_end_ms.is_none() {
            notes.push("stand-alone: each device is counted from the first seq seen; losses are seq gaps (a device that sent nothing is silent, not lost)".into());
        }
        match self.clock {
            LatencyClock::Off => notes.push("end-to-end latency not measured: virtual clock (timestamps are sim time, not wall time)".into()),
            LatencyClock::Wall { speed, .. } => notes.push(format!(
                "end-to-end latency = arrival wall time - intended send time (timestamp mapped to wall time at speed {speed})"
            )),
        }
        worst.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        worst.truncate(worst_n);
        let worst = worst
            .into_iter()
            .map(|(_, lost, dense)| {
                let gi = self.roster.offsets.partition_point(|&o| o <= dense as u64) - 1;
                let g = &fleet.groups[gi];
                g.device_id(
                    &fleet.profiles[g.profile],
                    dense as u64 - self.roster.offsets[gi],
                    &mut self.id,
                );
                let t = self.tracks[dense];
                WorstDevice {
                    device_id: self.id.clone(),
                    expected: t.received as u64 + lost,
                    received: t.received as u64,
                    lost,
                    duplicated: t.duplicated as u64,
                    reordered: t.reordered as u64,
                }
            })
            .collect();
        // Rows per device type (profiles may share one), in name order.
        let mut types: Vec<(TypeRow, Histogram<u64>)> = vec![];
        for (row, h) in by_profile.into_iter().zip(&self.latency) {
            match types.iter_mut().find(|(r, _)| r.device_type == row.device_type) {
                Some((r, hh)) => {
                    r.devices += row.devices;
                    r.expected += row.expected;
                    r.received += row.received;
                    r.lost += row.lost;
                    r.duplicated += row.duplicated;
                    r.reordered += row.reordered;
                    let _ = hh.add(h);
                }
                None => types.push((row, h.clone())),
            }
        }
        types.sort_by(|a, b| a.0.device_type.cmp(&b.0.device_type));
        let mut all = histogram();
        for (r, h) in &mut types {
            r.e2e_latency_us = Latency::of(h);
            let _ = all.add(&*h);
        }
        let sum = |f: fn(&TypeRow) -> u64| types.iter().map(|(r, _)| f(r)).sum::<u64>();
        let sparkplug = fleet.profiles.iter().any(|p| p.format.sparkplug().is_some()).then(|| {
            notes.push("Sparkplug B profiles are audited by seq continuity per edge node (audit.sparkplug); their missing messages count as lost".into());
            self.sparkplug.report()
        });
        let report = AuditReport {
            source: String::new(),
            mode: if end.schedule_end_ms.is_some() { "in-run" } else { "stand-alone" },
            devices: self.roster.len(),
            silent_devices: silent,
            expected: sum(|r| r.expected),
            received: sum(|r| r.received),
            lost: sum(|r| r.lost) + sparkplug.as_ref().map_or(0, |s| s.missing),
            excused_disconnect: exc_d,
            excused_corrupted: exc_c,
            values_corrupted: self.values.as_ref().map(|_| bad_v),
            excused_values: self.values.as_ref().map(|_| exc_v),
            counts: self.counts.clone(),
            consumer_errors: 0,
            state_bytes: self.state_bytes() as u64,
            consume_seconds: self.last_us.saturating_sub(self.first_us) as f64 / 1e6,
            consumer_cpu_seconds: 0.0,
            e2e_latency_us: Latency::of(&all),
            by_device_type: types.iter().map(|(r, _)| r.clone()).collect(),
            worst,
            notes,
            sparkplug,
        };
        (report, types.into_iter().map(|(r, h)| (r.device_type, h)).collect())
    }
}

/// Whether `rendered` (a topic) equals `got` (a routing key) once `/` is replaced by `sep`.
fn same_with_separator(rendered: &[u8], got: &[u8], sep: &[u8]) -> bool {
    let mut j = 0;
    for &b in rendered {
        if b == b'/' {
            if !got[j.min(got.len())..].starts_with(sep) {
                return false;
            }
            j += sep.len();
        } else {
            if got.get(j) != Some(&b) {
                return false;
            }
            j += 1;
        }
    }
    j == got.len()
}
