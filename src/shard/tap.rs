//! What a delivery audit (`src/audit/`) needs to hear from the shards: per fleet-file device,
//! how many messages a fault kept from arriving intact on purpose. A DISCONNECT fault
//! suppresses a message (its `seq` is used, nothing is sent); a `bytes` DATA_CORRUPTION fault
//! sends one the auditor cannot parse. Both leave a gap in the device's `seq` that is expected,
//! not a loss.
//!
//! One `AtomicU64` per device (low half: suppressed, high half: corrupted), indexed densely
//! by the fleet's group arithmetic (`offsets[group] + index`): the tick adds with a relaxed
//! `fetch_add` and never allocates. Devices spawned at runtime (groups past the fleet file's)
//! are not tracked.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message was not delivered intact on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Excuse {
    /// A DISCONNECT fault suppressed it.
    Suppressed,
    /// A `bytes` DATA_CORRUPTION fault damaged its payload.
    Corrupted,
}

/// The shared per-device excuse counters.
#[derive(Debug)]
pub struct ExcuseTap {
    /// Dense index of each fleet group's first device.
    offsets: Vec<u64>,
    counts: Vec<AtomicU64>,
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
        ExcuseTap { offsets, counts: (0..total).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Counts one excused message of device `index` in group `group`.
    pub fn note(&self, group: usize, index: u64, why: Excuse) {
        let Some(off) = self.offsets.get(group) else { return };
        if let Some(c) = self.counts.get((off + index) as usize) {
            let add = match why {
                Excuse::Suppressed => 1,
                Excuse::Corrupted => 1 << 32,
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
