//! Live telemetry subscriptions on one shard: each published message of a selected device
//! becomes one [`Point`] per field, collected per subscription and handed to its stream in
//! batches by `try_send` (a full stream drops the batch and counts it; the shard never waits).
//!
//! Every point is charged to one [`StreamBudget`] shared by all streams of the runtime, from
//! the moment a shard builds it until the stream's client has taken it (the [`Charge`] travels
//! with the points and is released when they are dropped, wherever that happens). A point that
//! does not fit in the budget is never built: it is dropped and counted, so unread streams cost
//! at most the budget in memory. While a stream's client is not reading, its subscription is
//! marked congested and the shard drops its points without building them, so unread streams
//! cost little shard time.

use super::command::{Selection, Subscription};
use super::event::{Point, PointValue};
use crate::sim::generator::{GenSpec, Sample};
use crate::sim::profile::{Group, Profile};
use crate::sim::time::SimMs;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Points a subscription collects before it is handed to its stream.
const POINTS_PER_SEND: usize = 1024;
/// What one point costs in the vectors that carry it: its struct, twice (a vector grown by
/// doubling holds up to as much free room as points).
const POINT_BYTES: usize = 2 * std::mem::size_of::<Point>();

/// Bytes glibc's malloc takes for a block of `n` bytes: an 8-byte header, 16-byte steps, 32 at
/// the least.
pub(crate) const fn heap_bytes(n: usize) -> usize {
    let b = (n + 8 + 15) & !15;
    if b < 32 { 32 } else { b }
}

/// The memory every telemetry stream together may hold in points not yet taken by their
/// clients. Shards charge it, whoever drops the points releases it.
#[derive(Debug)]
pub(crate) struct StreamBudget {
    used: AtomicUsize,
    limit: usize,
}

impl StreamBudget {
    pub fn new(limit: usize) -> Arc<StreamBudget> {
        Arc::new(StreamBudget { used: AtomicUsize::new(0), limit })
    }

    /// Charges `bytes` if they fit under the limit.
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(bytes).filter(|n| *n <= self.limit)?;
            match self.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Charge { bytes, budget: Some(self.clone()) }),
                Err(now) => used = now,
            }
        }
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes charged to a [`StreamBudget`], released when dropped.
#[derive(Debug, Default)]
pub(crate) struct Charge {
    bytes: usize,
    budget: Option<Arc<StreamBudget>>,
}

impl Charge {
    /// Takes over `other`'s bytes (both must come from the same budget).
    pub fn absorb(&mut self, mut other: Charge) {
        if self.budget.is_none() {
            self.budget = other.budget.take();
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Splits `bytes` (at most what is held) off into a charge of their own.
    pub fn split(&mut self, bytes: usize) -> Charge {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Charge { bytes, budget: self.budget.clone() }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(b) = &self.budget
            && self.bytes > 0
        {
            b.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// Points on their way to a stream, with what they are charged.
pub(crate) struct PointBatch {
    pub points: Vec<Point>,
    pub charge: Charge,
}

struct SubState {
    sub: Subscription,
    ids: Option<HashSet<String>>,
    /// Per group: 0 = not evaluated, 1 = matches, 2 = does not.
    group_match: Vec<u8>,
    pending: Vec<Point>,
    pending_charge: Charge,
}

/// Labels shared by the points of a group.
type Labels = Arc<BTreeMap<String, String>>;
/// Field names shared by the points of a profile.
type Metrics = Arc<[Arc<str>]>;

/// The shard's telemetry subscriptions.
#[derive(Default)]
pub(crate) struct Streams {
    subs: Vec<SubState>,
    /// Per group index: its labels, shared by every point of its devices.
    labels: Vec<Option<Labels>>,
    /// Per profile index: its field names, shared by every point of the field.
    metrics: Vec<Metrics>,
}

impl Streams {
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    pub fn add(&mut self, sub: Subscription) {
        let ids = match &*sub.selection {
            Selection::Ids(v) => Some(v.iter().cloned().collect()),
            _ => None,
        };
        self.subs.push(SubState {
            sub,
            ids,
            group_match: vec![],
            pending: vec![],
            pending_charge: Charge::default(),
        });
    }

    pub fn remove(&mut self, id: u64) {
        self.subs.retain(|s| s.sub.id != id);
    }

    /// Forgets whether group `gi` matches: the shard reuses the index for another group.
    pub fn forget_group(&mut self, gi: usize) {
        for s in &mut self.subs {
            if let Some(m) = s.group_match.get_mut(gi) {
                *m = 0;
            }
        }
        if let Some(l) = self.labels.get_mut(gi) {
            *l = None;
        }
    }

    /// The shared labels of group `gi` (made again if the group's labels changed).
    fn shared_labels(&mut self, gi: usize, group: &Group) -> Labels {
        if self.labels.len() <= gi {
            self.labels.resize(gi + 1, None);
        }
        match &self.labels[gi] {
            Some(l) if **l == group.labels => l.clone(),
            _ => {
                let l = Arc::new(group.labels.clone());
                self.labels[gi] = Some(l.clone());
                l
            }
        }
    }

    /// The shared field names of profile `pi` (made again if its fields changed).
    fn shared_metrics(&mut self, pi: usize, profile: &Profile) -> Metrics {
        if self.metrics.len() <= pi {
            self.metrics.resize(pi + 1, Arc::from([]));
        }
        let same = |m: &[Arc<str>]| {
            m.len() == profile.fields.len()
                && m.iter().zip(&profile.fields).all(|(a, f)| **a == *f.name)
        };
        if !same(&self.metrics[pi]) {
            self.metrics[pi] = profile.fields.iter().map(|f| Arc::from(f.name.as_str())).collect();
        }
        self.metrics[pi].clone()
    }

    /// Offers one published message to every subscription that selects its device.
    pub fn feed(
        &mut self,
        id: &str,
        group_ix: usize,
        group: &Group,
        profile: &Profile,
        samples: &[Sample],
        t: SimMs,
    ) {
        // Made once per message, for the first subscription that takes it.
        let mut shared: Option<(Arc<str>, Labels, Metrics)> = None;
        let mut bytes = None;
        for si in 0..self.subs.len() {
            let s = &mut self.subs[si];
            let wanted = match &s.ids {
                Some(ids) => ids.contains(id),
                None => group_matches(&mut s.group_match, group_ix, group, &s.sub.selection),
            };
            if !wanted {
                continue;
            }
            if s.sub.congested.load(Ordering::Relaxed) {
                s.sub.dropped.fetch_add(profile.fields.len() as u64, Ordering::Relaxed);
                continue;
            }
            let bytes = *bytes.get_or_insert_with(|| message_bytes(id, profile, samples));
            let Some(charge) = s.sub.budget.try_charge(bytes) else {
                s.sub.dropped.fetch_add(profile.fields.len() as u64, Ordering::Relaxed);
                continue;
            };
            if shared.is_none() {
                let labels = self.shared_labels(group_ix, group);
                let metrics = self.shared_metrics(group.profile, profile);
                shared = Some((Arc::from(id), labels, metrics));
            }
            let (id, labels, metrics) = shared.as_ref().expect("made above");
            let s = &mut self.subs[si];
            s.pending_charge.absorb(charge);
            for ((field, sample), metric) in profile.fields.iter().zip(samples).zip(metrics.iter())
            {
                s.pending.push(Point {
                    device_id: id.clone(),
                    metric: metric.clone(),
                    value: PointValue::of(field, *sample),
                    at_ms: t,
                    labels: labels.clone(),
                });
            }
            if s.pending.len() >= POINTS_PER_SEND {
                send_points(s);
            }
        }
    }

    /// Hands what was collected to the streams and forgets the streams that ended.
    pub fn flush(&mut self) {
        for s in &mut self.subs {
            if !s.pending.is_empty() {
                send_points(s);
            }
        }
        self.subs.retain(|s| !s.sub.tx.is_closed());
    }
}

fn send_points(s: &mut SubState) {
    let mut points = std::mem::take(&mut s.pending);
    // A point is charged the room of two (`POINT_BYTES`): a small batch may hold more.
    if points.capacity() > 2 * points.len() {
        points.shrink_to_fit();
    }
    let charge = std::mem::take(&mut s.pending_charge);
    let n = points.len() as u64;
    // A full stream drops the batch (its charge is released with it).
    if let Err(mpsc::error::TrySendError::Full(_)) =
        s.sub.tx.try_send(PointBatch { points, charge })
    {
        s.sub.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// The bytes the points of one message hold (one per field): their structs with the room of
/// their vectors, the id they share, and the text of text values. The labels and field names
/// are shared with every other point of the group and profile ([`Streams`] keeps one copy), so
/// they cost nothing per point.
fn message_bytes(id: &str, profile: &Profile, samples: &[Sample]) -> usize {
    // `Arc<str>`: two counters and the text.
    let id_bytes = heap_bytes(16 + id.len());
    let text: usize = profile
        .fields
        .iter()
        .zip(samples)
        .map(|(f, s)| match (s, &f.generator) {
            (Sample::State(i), GenSpec::Markov(m)) => heap_bytes(m.states[*i].len()),
            (Sample::Static, GenSpec::Static { json, .. }) => heap_bytes(json.len()),
            _ => 0,
        })
        .sum();
    id_bytes + text + profile.fields.len() * POINT_BYTES
}

/// Whether group `gi` is selected, evaluated once per group and cached in `cache`.
pub(crate) fn group_matches(
    cache: &mut Vec<u8>,
    gi: usize,
    group: &Group,
    sel: &Selection,
) -> bool {
    if cache.len() <= gi {
        cache.resize(gi + 1, 0);
    }
    if cache[gi] == 0 {
        let m = match sel {
            Selection::All => true,
            Selection::Labels(l) => l.matches(&group.labels),
            Selection::Ids(_) => false,
        };
        cache[gi] = if m { 1 } else { 2 };
    }
    cache[gi] == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_charges_come_back_when_dropped() {
        let b = StreamBudget::new(1000);
        let a = b.try_charge(600).unwrap();
        assert!(b.try_charge(500).is_none());
        let mut c = b.try_charge(400).unwrap();
        assert_eq!(b.used(), 1000);
        let part = c.split(150);
        assert_eq!((part.bytes(), c.bytes()), (150, 250));
        drop(part);
        assert_eq!(b.used(), 850);
        let mut held = Charge::default();
        held.absorb(a);
        held.absorb(c);
        assert_eq!(b.used(), 850);
        drop(held);
        assert_eq!(b.used(), 0);
    }

    /// Two devices with two labels and a Markov field, every message of theirs selected.
    const FLEET: &str = r#"
[run]
seed = 1

[[fleet]]
profile = "p"
count = 2
labels = { zone = "a", site = "a-much-longer-label-value-than-a-zone-name" }

[profiles.p]
protocol = "null"
interval = "1s"
fields.t = { type = "gaussian", mean = 20, stddev = 1 }
fields.s = { type = "markov", states = ["idle", "a-state-name-long-enough-to-allocate"], transition_matrix = [[0.5, 0.5], [0.5, 0.5]], initial_state = "idle" }
"#;

    /// Heap bytes of what the points hold on their own (their shared text counted once, as
    /// it is held once).
    fn held_bytes(points: &Vec<Point>) -> usize {
        let mut seen = HashSet::new();
        let mut n = points.capacity() * std::mem::size_of::<Point>();
        for p in points {
            if seen.insert(Arc::as_ptr(&p.device_id) as *const u8 as usize) {
                n += heap_bytes(16 + p.device_id.len());
            }
            if let Some(PointValue::Text(t)) = &p.value {
                n += heap_bytes(t.capacity());
            }
        }
        n
    }

    #[test]
    fn points_share_their_text_and_are_charged_at_least_what_they_hold() {
        let config = crate::config::parse_str(FLEET, std::path::Path::new(".")).unwrap();
        let fleet = &config.fleet;
        let g = &fleet.groups[0];
        let profile = &fleet.profiles[g.profile];
        let budget = StreamBudget::new(1 << 30);
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let mut streams = Streams::default();
        streams.add(Subscription {
            id: 1,
            selection: Arc::new(Selection::All),
            tx,
            budget: budget.clone(),
            congested: Default::default(),
            dropped: Default::default(),
        });
        let mut id = String::new();
        for m in 0..5_000u64 {
            let i = m % 2;
            g.device_id(profile, i, &mut id);
            let samples = [Sample::Number(m as f64), Sample::State((m % 2) as usize)];
            streams.feed(&id, 0, g, profile, &samples, m as SimMs);
        }
        streams.flush();
        let mut batches = vec![];
        while let Ok(b) = rx.try_recv() {
            batches.push(b);
        }
        let points: Vec<&Point> = batches.iter().flat_map(|b| &b.points).collect();
        assert_eq!(points.len(), 10_000);
        // The labels and field names are one copy for all; the id one per message.
        let first = points[0];
        assert!(points.iter().all(|p| Arc::ptr_eq(&p.labels, &first.labels)));
        assert_eq!(*first.labels, g.labels);
        let t = points.iter().filter(|p| &*p.metric == "t").collect::<Vec<_>>();
        assert!(t.iter().all(|p| Arc::ptr_eq(&p.metric, &t[0].metric)));
        assert!(points.chunks(2).all(|m| Arc::ptr_eq(&m[0].device_id, &m[1].device_id)));
        // What the budget was charged covers what the batches hold.
        let held: usize = batches.iter().map(|b| held_bytes(&b.points)).sum();
        let charged: usize = batches.iter().map(|b| b.charge.bytes()).sum();
        assert_eq!(charged, budget.used());
        assert!(charged >= held, "charged {charged} for {held} bytes held");
        // And not far more (the vectors' room is charged in full, used or not).
        assert!(charged <= 3 * held, "charged {charged} for {held} bytes held");
        drop(batches);
        assert_eq!(budget.used(), 0);
    }
}
