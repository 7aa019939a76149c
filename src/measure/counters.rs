//! The message counters every figure of the simulator carries: completed messages, failed
//! ones and ones dropped by backpressure. One type with addition, so a shard's statistics,
//! its snapshots and figures, the report's rows and totals, the timeline, the dashboard and
//! the metrics all add them up the same way.

use serde::Serialize;
use std::ops::{Add, AddAssign};

/// Messages completed by their sink, failed, and dropped by backpressure.
///
/// Serialized (flattened into its owner) as `messages`, `errors`, `dropped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub messages: u64,
    pub errors: u64,
    pub dropped: u64,
}

impl Counters {
    pub const fn new(messages: u64, errors: u64, dropped: u64) -> Counters {
        Counters { messages, errors, dropped }
    }

    /// Every message accounted for: completed, failed or dropped.
    pub fn total(&self) -> u64 {
        self.messages + self.errors + self.dropped
    }

    /// What was counted since `earlier` (a running total's previous value), never negative.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            messages: self.messages.saturating_sub(earlier.messages),
            errors: self.errors.saturating_sub(earlier.errors),
            dropped: self.dropped.saturating_sub(earlier.dropped),
        }
    }
}

impl AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.messages += o.messages;
        self.errors += o.errors;
        self.dropped += o.dropped;
    }
}

impl AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, o: &Counters) {
        *self += *o;
    }
}

impl Add for Counters {
    type Output = Counters;
    fn add(mut self, o: Counters) -> Counters {
        self += o;
        self
    }
}

impl std::iter::Sum for Counters {
    fn sum<I: Iterator<Item = Counters>>(iter: I) -> Counters {
        iter.fold(Counters::default(), Add::add)
    }
}

impl<'a> std::iter::Sum<&'a Counters> for Counters {
    fn sum<I: Iterator<Item = &'a Counters>>(iter: I) -> Counters {
        iter.copied().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_field_by_field() {
        let mut a = Counters::new(1, 2, 3);
        a += Counters::new(10, 20, 30);
        assert_eq!(a, Counters::new(11, 22, 33));
        assert_eq!(a + Counters::new(1, 1, 1), Counters::new(12, 23, 34));
        assert_eq!(a.total(), 66);
    }

    #[test]
    fn counters_sum_over_shards() {
        let shards = [Counters::new(1, 0, 0), Counters::new(2, 1, 0), Counters::new(3, 0, 5)];
        assert_eq!(shards.iter().sum::<Counters>(), Counters::new(6, 1, 5));
        assert_eq!(shards.into_iter().sum::<Counters>(), Counters::new(6, 1, 5));
    }

    #[test]
    fn since_is_the_difference_and_never_negative() {
        let now = Counters::new(10, 4, 2);
        assert_eq!(now.since(&Counters::new(7, 1, 2)), Counters::new(3, 3, 0));
        assert_eq!(now.since(&Counters::new(20, 9, 9)), Counters::default());
    }

    #[test]
    fn counters_flatten_into_their_owner_as_three_keys() {
        #[derive(Serialize)]
        struct Row {
            devices: u64,
            #[serde(flatten)]
            counts: Counters,
            bytes: u64,
        }
        let r = Row { devices: 1, counts: Counters::new(2, 3, 4), bytes: 5 };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"devices":1,"messages":2,"errors":3,"dropped":4,"bytes":5}"#
        );
    }
}
