//! One device's delivery state, free of I/O: the next expected `seq`, a 64-bit window of the
//! seqs just below it, and counters (32 B a device). Unit-tested without a broker.
//!
//! Bit `i` of `window` says whether seq `next - 1 - i` arrived. A seq at or above `next`
//! moves the window up (what it skipped is missing for now); a seq inside the window that had
//! not arrived fills its gap (out of order, by `next - 1 - seq`); one that had is a duplicate.
//! A seq more than 64 below `next` can no longer be told apart from a duplicate: it is counted
//! as `stale` and not as received.

/// How one message was classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next seq, or one past a gap (the skipped seqs are missing until they arrive).
    InOrder { skipped: u64 },
    /// It filled a gap, `by` positions behind the newest seq received.
    OutOfOrder { by: u32 },
    /// Its seq had already arrived.
    Duplicate,
    /// More than the window (64) behind the newest: duplicate or very late, not counted.
    Stale,
}

/// Size of the reorder window, in seqs.
pub const WINDOW: u64 = 64;

/// Per-device delivery state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Track {
    /// Received bits of the 64 seqs below `next`.
    window: u64,
    /// One past the newest seq received (0: nothing yet).
    next: u32,
    /// The first seq this audit counts from (0 in-run; the first seen when auditing a run
    /// that started before the auditor did).
    base: u32,
    /// Distinct seqs received.
    pub received: u32,
    pub duplicated: u32,
    pub reordered: u32,
    pub stale: u32,
}

impl Track {
    /// Classifies one arrival of `seq`. With `baseline`, the first message of the device sets
    /// the seq counting starts from.
    pub fn arrive(&mut self, seq: u64, baseline: bool) -> Arrival {
        // Seqs past u32 are clamped: a device would need 4 billion messages to get there.
        let seq = seq.min(u32::MAX as u64 - 1) as u32;
        if self.received == 0 && self.next == 0 && baseline {
            self.base = seq;
            self.next = seq;
        }
        if seq >= self.next {
            let skipped = (seq - self.next) as u64;
            let shift = seq as u64 + 1 - self.next as u64;
            self.window = if shift >= WINDOW { 0 } else { self.window << shift } | 1;
            self.next = seq + 1;
            self.received += 1;
            return Arrival::InOrder { skipped };
        }
        let by = self.next - 1 - seq;
        if seq < self.base {
            self.stale += 1;
            return Arrival::Stale;
        }
        if by as u64 >= WINDOW {
            self.stale += 1;
            return Arrival::Stale;
        }
        let bit = 1u64 << by;
        if self.window & bit != 0 {
            self.duplicated += 1;
            Arrival::Duplicate
        } else {
            self.window |= bit;
            self.received += 1;
            self.reordered += 1;
            Arrival::OutOfOrder { by }
        }
    }

    /// Seqs from `base` up to the newest received: what must have been sent so far.
    pub fn span(&self) -> u64 {
        (self.next - self.base) as u64
    }

    /// The first seq counted.
    pub fn base(&self) -> u64 {
        self.base as u64
    }

    /// Seqs missing out of `expected` (counted from `base`): never received by now.
    pub fn missing(&self, expected: u64) -> u64 {
        expected.max(self.span()).saturating_sub(self.received as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: &[u64]) -> (Track, Vec<Arrival>) {
        let mut t = Track::default();
        let a = seqs.iter().map(|&s| t.arrive(s, false)).collect();
        (t, a)
    }

    #[test]
    fn a_clean_sequence_is_all_in_order_with_nothing_missing() {
        let (t, a) = feed(&[0, 1, 2, 3]);
        assert!(a.iter().all(|x| *x == Arrival::InOrder { skipped: 0 }));
        assert_eq!((t.received, t.duplicated, t.reordered), (4, 0, 0));
        assert_eq!(t.missing(4), 0);
    }

    #[test]
    fn a_gap_that_never_fills_is_missing_at_the_end() {
        let (t, a) = feed(&[0, 1, 4, 5]);
        assert_eq!(a[2], Arrival::InOrder { skipped: 2 });
        assert_eq!(t.missing(6), 2);
    }

    #[test]
    fn a_late_message_fills_its_gap_and_counts_as_reordered_by_its_distance() {
        let (t, a) = feed(&[0, 1, 4, 2, 3]);
        assert_eq!(a[3], Arrival::OutOfOrder { by: 2 });
        assert_eq!(a[4], Arrival::OutOfOrder { by: 1 });
        assert_eq!((t.received, t.reordered), (5, 2));
        assert_eq!(t.missing(5), 0);
    }

    #[test]
    fn a_repeat_is_a_duplicate_whether_newest_or_older() {
        let (t, a) = feed(&[0, 1, 1, 2, 0]);
        assert_eq!(a[2], Arrival::Duplicate);
        assert_eq!(a[4], Arrival::Duplicate);
        assert_eq!((t.received, t.duplicated), (3, 2));
    }

    #[test]
    fn devices_that_sent_nothing_miss_everything_expected() {
        let t = Track::default();
        assert_eq!(t.missing(7), 7);
    }

    #[test]
    fn seqs_beyond_the_window_are_stale_not_received() {
        let (t, a) = feed(&[0, 100, 5]);
        assert_eq!(a[2], Arrival::Stale);
        assert_eq!((t.received, t.stale), (2, 1));
        // A jump larger than the window clears it: 100 then 99 is still a fill.
        let (_, a) = feed(&[0, 100, 99]);
        assert_eq!(a[2], Arrival::OutOfOrder { by: 1 });
    }

    #[test]
    fn a_baseline_audit_counts_from_the_first_seq_it_sees() {
        let mut t = Track::default();
        assert_eq!(t.arrive(1000, true), Arrival::InOrder { skipped: 0 });
        t.arrive(1002, true);
        assert_eq!(t.arrive(999, true), Arrival::Stale);
        assert_eq!(t.span(), 3);
        assert_eq!(t.missing(0), 1);
    }

    #[test]
    fn the_state_stays_small() {
        assert_eq!(std::mem::size_of::<Track>(), 32);
    }
}
