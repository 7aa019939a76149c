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
use crate::sim::generator::Sample;
use crate::sim::profile::{Group, Profile};
use crate::sim::time::SimMs;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Points a subscription collects before it is handed to its stream.
const POINTS_PER_SEND: usize = 1024;
/// Estimated bytes of a point besides its id, metric name and labels (the struct, allocation
/// headers, and the wire form it is turned into).
const POINT_OVERHEAD_BYTES: usize = 160;
/// Estimated bytes per label of a point besides the key and value text (map node share).
const LABEL_OVERHEAD_BYTES: usize = 64;

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

/// The shard's telemetry subscriptions.
#[derive(Default)]
pub(crate) struct Streams {
    subs: Vec<SubState>,
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
        let mut bytes = None;
        for s in &mut self.subs {
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
            let bytes = *bytes.get_or_insert_with(|| message_bytes(id, group, profile));
            let Some(charge) = s.sub.budget.try_charge(bytes) else {
                s.sub.dropped.fetch_add(profile.fields.len() as u64, Ordering::Relaxed);
                continue;
            };
            s.pending_charge.absorb(charge);
            for (field, sample) in profile.fields.iter().zip(samples) {
                s.pending.push(Point {
                    device_id: id.to_string(),
                    metric: field.name.clone(),
                    value: PointValue::of(field, *sample),
                    at_ms: t,
                    labels: group.labels.clone(),
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
    let points = std::mem::take(&mut s.pending);
    let charge = std::mem::take(&mut s.pending_charge);
    let n = points.len() as u64;
    // A full stream drops the batch (its charge is released with it).
    if let Err(mpsc::error::TrySendError::Full(_)) =
        s.sub.tx.try_send(PointBatch { points, charge })
    {
        s.sub.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Estimated bytes of the points of one message (one per field).
fn message_bytes(id: &str, group: &Group, profile: &Profile) -> usize {
    let labels: usize =
        group.labels.iter().map(|(k, v)| k.len() + v.len() + LABEL_OVERHEAD_BYTES).sum();
    profile.fields.iter().map(|f| POINT_OVERHEAD_BYTES + id.len() + f.name.len() + labels).sum()
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
}
