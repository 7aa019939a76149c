//! When a realtime shard wakes next: the wake-up grid and the light-load budget.
//!
//! A wake-up (timer, epoll round trip, two context switches) costs about as much as twenty
//! messages on a small VM, however few messages it carries, so the number of wake-ups, not the
//! number of wheel slots, sets the CPU of a realtime run away from saturation:
//!
//! - **The grid**: a shard wakes only on whole wall-clock milliseconds counted from the run's
//!   time origin, and each wake-up takes every slot due by then off the wheel. At `--speed 1`
//!   every slot is on the grid already (nothing changes); at `--speed 30` one wall millisecond
//!   covers 30 sim slots, which used to mean 30 wake-ups and now means one. A tick is late by
//!   at most one grid step for this.
//! - **The light-load budget**: while the shard sends fewer than [`LIGHT_MSGS_PER_MS`] messages
//!   per wall millisecond (a recent average), it waits one more grid step, so the slots due
//!   within a millisecond of the next one go out together: at most 1 ms more lateness, about
//!   half the wake-ups of a fleet whose every millisecond has a message or two.
//!
//! `[run] timer_slack` (the shortest sleep between wake-ups) applies on top of both. A shard
//! without a network sink sleeps with one `clock_nanosleep` (`measure::clock::sleep_until`),
//! not the runtime's timer: nothing else on its thread waits for anything.

/// The wake-up grid, in wall ns.
pub(crate) const GRID_NS: u64 = 1_000_000;
/// Below this many messages per wall millisecond (per shard), a shard is lightly loaded and
/// coalesces one more grid step.
pub(crate) const LIGHT_MSGS_PER_MS: f64 = 8.0;
/// How long the message-rate average remembers, in wall ns.
const RATE_WINDOW_NS: f64 = 100_000_000.0;

/// A shard's recent message rate and the wake-up rule that follows from it.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    /// Messages per wall millisecond, averaged over about [`RATE_WINDOW_NS`].
    rate_per_ms: f64,
    last_ns: Option<u64>,
}

impl Pace {
    pub fn new() -> Pace {
        Pace { rate_per_ms: 0.0, last_ns: None }
    }

    /// Notes a wake-up at `now_ns` that sent `msgs` messages.
    pub fn note(&mut self, now_ns: u64, msgs: usize) {
        let Some(last) = self.last_ns.replace(now_ns) else { return };
        let dt = now_ns.saturating_sub(last) as f64;
        if dt <= 0.0 {
            // Same instant: count the messages with the next interval.
            self.last_ns = Some(last);
            return;
        }
        let inst = msgs as f64 * 1e6 / dt;
        let alpha = (dt / RATE_WINDOW_NS).min(1.0);
        self.rate_per_ms += alpha * (inst - self.rate_per_ms);
    }

    /// Whether the shard is lightly loaded (see the module comment).
    pub fn light(&self) -> bool {
        self.rate_per_ms < LIGHT_MSGS_PER_MS
    }

    /// Recent messages per wall millisecond.
    #[cfg(test)]
    pub fn rate_per_ms(&self) -> f64 {
        self.rate_per_ms
    }

    /// The monotonic time to sleep until, given `next_ns` (when the earliest pending slot falls
    /// due), `origin_ns` (the run's time origin: the grid counts from it), `turn_ns` (when this
    /// wake-up began) and `slack_ns` (`[run] timer_slack`).
    pub fn deadline(&self, next_ns: u64, origin_ns: u64, turn_ns: u64, slack_ns: u64) -> u64 {
        let extra = if self.light() { GRID_NS } else { 0 };
        wake_at(next_ns, origin_ns, extra).max(turn_ns.saturating_add(slack_ns))
    }
}

/// `next_ns` rounded up to the grid counted from `origin_ns`, plus `extra_ns`.
pub(crate) fn wake_at(next_ns: u64, origin_ns: u64, extra_ns: u64) -> u64 {
    let since = next_ns.saturating_sub(origin_ns);
    let up = since.div_ceil(GRID_NS).saturating_mul(GRID_NS);
    origin_ns.saturating_add(up).saturating_add(extra_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: u64 = 5_000_123_456; // an origin off any round number

    #[test]
    fn slots_on_the_grid_wake_on_time() {
        for ms in [0, 1, 2, 17, 86_400_000] {
            let t = O + ms * GRID_NS;
            assert_eq!(wake_at(t, O, 0), t);
        }
    }

    #[test]
    fn slots_between_grid_points_wait_for_the_next_one() {
        // --speed 30: sim slots 33.3 µs apart all fall to the next wall millisecond.
        for k in 1..30u64 {
            let t = O + 7 * GRID_NS + k * 1_000_000 / 30;
            assert_eq!(wake_at(t, O, 0), O + 8 * GRID_NS);
        }
        // Never earlier than the slot, never more than a grid step later.
        for t in (O..O + 3 * GRID_NS).step_by(7_919) {
            let w = wake_at(t, O, 0);
            assert!(w >= t && w - t < GRID_NS, "{t} -> {w}");
        }
        // A deadline before the origin wakes at the origin.
        assert_eq!(wake_at(O - 5, O, 0), O);
    }

    #[test]
    fn the_light_budget_adds_one_grid_step() {
        assert_eq!(wake_at(O + 3 * GRID_NS, O, GRID_NS), O + 4 * GRID_NS);
        assert_eq!(wake_at(O + 3 * GRID_NS + 1, O, GRID_NS), O + 5 * GRID_NS);
    }

    #[test]
    fn the_rate_follows_the_messages_sent() {
        let mut p = Pace::new();
        assert!(p.light(), "a shard starts light");
        let mut now = O;
        // 36 messages each millisecond (the 71,600 msg/s fleet on 2 shards).
        for _ in 0..1000 {
            p.note(now, 36);
            now += GRID_NS;
        }
        assert!((p.rate_per_ms() - 36.0).abs() < 0.5, "{}", p.rate_per_ms());
        assert!(!p.light());
        // The rate falls to one message every 2 ms: light again within a few windows.
        for _ in 0..500 {
            p.note(now, 1);
            now += 2 * GRID_NS;
        }
        assert!((p.rate_per_ms() - 0.5).abs() < 0.1, "{}", p.rate_per_ms());
        assert!(p.light());
        // Two wake-ups at the same instant: the second's messages wait for the next interval.
        let before = p.rate_per_ms();
        p.note(now - 2 * GRID_NS, 1000);
        assert_eq!(p.rate_per_ms(), before);
    }

    #[test]
    fn the_deadline_combines_grid_budget_and_slack() {
        let mut busy = Pace::new();
        let mut now = O;
        for _ in 0..1000 {
            busy.note(now, 50);
            now += GRID_NS;
        }
        let light = Pace::new();
        let next = O + 10 * GRID_NS + 400_000;
        let turn = O + 10 * GRID_NS + 100_000;
        assert_eq!(busy.deadline(next, O, turn, 0), O + 11 * GRID_NS);
        assert_eq!(light.deadline(next, O, turn, 0), O + 12 * GRID_NS);
        // timer_slack is the shortest sleep: it wins when it reaches further.
        assert_eq!(busy.deadline(next, O, turn, 5_000_000), turn + 5_000_000);
        assert_eq!(light.deadline(next, O, turn, 1_500_000), O + 12 * GRID_NS);
        // A slot already due when the turn began: at once (the turn's start is past).
        assert_eq!(busy.deadline(O + 10 * GRID_NS, O, turn, 0), turn);
    }
}
