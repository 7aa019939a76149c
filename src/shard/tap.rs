//! What a delivery audit (`src/audit/`) needs to hear from the shards: per fleet-file device,
//! how many messages a fault kept from arriving intact on purpose. A DISCONNECT fault
//! suppresses a message (its `seq` is used, nothing is sent); a `bytes` DATA_CORRUPTION fault
//! sends one the auditor cannot parse. Both leave a gap in the device's `seq` that is expected,
//! not a loss.
//!
//! One `AtomicU64` per device (low half: suppressed, high half: corrupted), indexed densely
//! by the fleet's group arithmetic (`offsets[group] + index`): the tick adds with a relaxed
//! `fetch_add` and never allocates. Devices spawned at runtime (groups past the fleet file's)
//! have no excuse counters; their spawns are handed over (`spawned`, a locked list the auditor
//! drains when it meets an id it does not know) so the audit expects them from their spawn.

use crate::sim::profile::Profile;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device spawned at runtime, as the audit needs to know it.
#[derive(Clone, Debug)]
pub struct SpawnNote {
    pub id: String,
    pub profile: Arc<Profile>,
    pub labels: BTreeMap<String, String>,
    pub labels_json: String,
    /// Sim time of the spawn: its first tick is `at_ms + max(phase, 1)`.
    pub at_ms: u64,
}

/// Why a message was not delivered intact on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Excuse {
    /// A DISCONNECT fault suppressed it.
    Suppressed,
    /// A `bytes` DATA_CORRUPTION fault damaged its payload.
    Corrupted,
    /// A DATA_CORRUPTION (`nan`/`zero`/`spike`) or BATTERY_DRAIN fault changed its field
    /// values (counted only for `verify = "values"`).
    Values,
}

/// The shared per-device excuse counters.
#[derive(Debug)]
pub struct ExcuseTap {
    /// Dense index of each fleet group's first device.
    offsets: Vec<u64>,
    counts: Vec<AtomicU64>,
    /// Messages whose values a fault changed, per device (empty unless `verify = "values"`).
    values: Vec<AtomicU32>,
    /// Spawns not yet taken by the auditor.
    spawns: Mutex<Vec<SpawnNote>>,
    pending: AtomicBool,
}

impl ExcuseTap {
    /// Counters for every device of the fleet's groups (`counts` per group).
    pub fn new(group_counts: impl Iterator<Item = u64>) -> ExcuseTap {
        let mut offsets = vec![];
        let mut total = 0u64;
        for c in group_counts {
            offsets.push(total);
            total += c;
        }
        ExcuseTap {
            offsets,
            counts: (0..total).map(|_| AtomicU64::new(0)).collect(),
            values: vec![],
            spawns: Mutex::new(vec![]),
            pending: AtomicBool::new(false),
        }
    }

    /// A device was spawned at runtime (called by the shard that spawned it).
    pub fn spawned(&self, note: SpawnNote) {
        if let Ok(mut l) = self.spawns.lock() {
            l.push(note);
            self.pending.store(true, Ordering::Release);
        }
    }

    /// The spawns since the last call (nothing locked when there are none).
    pub fn take_spawns(&self) -> Vec<SpawnNote> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return vec![];
        }
        self.spawns.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }

    /// Also counts the messages whose values a fault changed (4 B more per device).
    pub fn with_values(mut self) -> ExcuseTap {
        self.values = (0..self.counts.len()).map(|_| AtomicU32::new(0)).collect();
        self
    }

    /// Messages of device `dense` whose values a fault changed.
    pub fn values(&self, dense: usize) -> u32 {
        self.values.get(dense).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one excused message of device `index` in group `group`.
    pub fn note(&self, group: usize, index: u64, why: Excuse) {
        let Some(off) = self.offsets.get(group) else { return };
        if why == Excuse::Values {
            if let Some(c) = self.values.get((off + index) as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if let Some(c) = self.counts.get((off + index) as usize) {
            let add = match why {
                Excuse::Suppressed => 1,
                Excuse::Corrupted => 1 << 32,
                Excuse::Values => 0,
            };
            c.fetch_add(add, Ordering::Relaxed);
        }
    }

    /// (suppressed, corrupted) of the device with dense index `dense`.
    pub fn get(&self, dense: usize) -> (u32, u32) {
        let v = self.counts.get(dense).map_or(0, |c| c.load(Ordering::Relaxed));
        (v as u32, (v >> 32) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_land_on_the_dense_index_of_their_group() {
        let tap = ExcuseTap::new([3u64, 2].into_iter());
        tap.note(1, 1, Excuse::Suppressed);
        tap.note(1, 1, Excuse::Corrupted);
        tap.note(0, 0, Excuse::Suppressed);
        tap.note(7, 0, Excuse::Suppressed); // a runtime group: ignored
        assert_eq!(tap.get(4), (1, 1));
        assert_eq!(tap.get(0), (1, 0));
        assert_eq!(tap.get(3), (0, 0));
    }
}
