//! Live telemetry subscriptions on one shard: each published message of a selected device
//! becomes one [`Point`] per field, collected per subscription and handed to its stream in
//! batches by `try_send` (a full stream drops the batch and counts it; the shard never waits).

use super::command::{Selection, Subscription};
use super::event::{Point, PointValue};
use crate::sim::generator::Sample;
use crate::sim::profile::{Group, Profile};
use crate::sim::time::SimMs;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// Points a subscription collects before it is handed to its stream.
const POINTS_PER_SEND: usize = 1024;

struct SubState {
    sub: Subscription,
    ids: Option<HashSet<String>>,
    /// Per group: 0 = not evaluated, 1 = matches, 2 = does not.
    group_match: Vec<u8>,
    pending: Vec<Point>,
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
        self.subs.push(SubState { sub, ids, group_match: vec![], pending: vec![] });
    }

    pub fn remove(&mut self, id: u64) {
        self.subs.retain(|s| s.sub.id != id);
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
        for s in &mut self.subs {
            let wanted = match &s.ids {
                Some(ids) => ids.contains(id),
                None => group_matches(&mut s.group_match, group_ix, group, &s.sub.selection),
            };
            if !wanted {
                continue;
            }
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
    let batch = std::mem::take(&mut s.pending);
    let n = batch.len() as u64;
    if let Err(mpsc::error::TrySendError::Full(_)) = s.sub.tx.try_send(batch) {
        s.sub.dropped.fetch_add(n, Ordering::Relaxed);
    }
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
