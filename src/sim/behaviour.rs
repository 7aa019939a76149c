//! How a device behaves beyond "a full sample every interval": report-on-change with deadbands
//! and a heartbeat, Poisson events, availability (up and down times), sleep windows.
//!
//! Everything is a pure function of the device's slot block and the tick's sim time: the
//! random draws come from streams seeded from the device seed plus a salt per feature (and per
//! event name), so the same seed gives the same events, outages and sleep phases whatever the
//! shard count. The state lives in the device's slot arena after its generator slots, and only
//! profiles that use a feature pay for it:
//!
//! | feature | slots | `x` holds |
//! |---|---|---|
//! | each event | 1 + its fields' | the next event time (ms) |
//! | availability | 1 | the next transition: `T` (up, goes down at `T`) or `-(U + 1)` (down, back at `U`) |
//! | sleep | 1 | the phase of the awake window (ms; `-(phase + 1)` before the first tick) |
//! | on_change | 1 + one per watched field | the last publish time, then the last published values |
//!
//! A slot not yet started holds NaN: the first tick draws its first time from that tick on.
//! Events are not wheel entries: each tick delivers the events whose time has come (with their
//! own timestamps), which keeps one wheel entry per device.

use super::generator::{Sample, SlotState};
use super::profile::{FieldSpec, TopicTemplate};
use super::time::SimMs;
use rand::RngExt;

/// When a sample is published.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ReportMode {
    /// Every sample.
    #[default]
    Periodic,
    /// When a watched field moved (see [`Watch`]) or `max_silence_ms` passed since the last
    /// publish (`None`: no heartbeat).
    OnChange { max_silence_ms: Option<u64> },
}

/// How a field takes part in report-on-change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Watch {
    /// Changed when `|value - last published| > deadband`.
    Deadband(f64),
    /// Changed when the value differs from the last published one (Markov states).
    Differs,
}

/// One event stream of a profile: a Poisson process per device.
#[derive(Clone, Debug)]
pub struct EventSpec {
    pub name: String,
    pub rate_per_hour: f64,
    pub fields: Vec<FieldSpec>,
    /// Slots of its fields.
    pub field_slots: usize,
    pub topic: TopicTemplate,
    /// True when `topic` is the profile's topic + `/events/NAME` (re-derived when the event
    /// moves to another profile by a behaviour update).
    pub topic_is_default: bool,
    /// `"event":"NAME",`, JSON-encoded once.
    pub event_json: String,
}

impl EventSpec {
    /// Mean time between events, ms (infinite at rate 0).
    pub fn mean_gap_ms(&self) -> f64 {
        if self.rate_per_hour > 0.0 { 3_600_000.0 / self.rate_per_hour } else { f64::INFINITY }
    }
}

/// Exponential up and down times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Availability {
    pub mtbf_ms: u64,
    pub mttr_ms: u64,
}

/// Duty cycle: awake for `awake_ms` at the start of every `period_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sleep {
    pub period_ms: u64,
    pub awake_ms: u64,
}

/// A profile's behaviour, compiled. `Default` is the plain periodic, always-on device.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    pub report: ReportMode,
    /// Fields watched by on_change: (field index, how).
    pub watch: Vec<(usize, Watch)>,
    /// On_change with a random numeric field without a deadband: every sample counts as changed.
    pub always_changed: bool,
    pub events: Vec<EventSpec>,
    pub availability: Option<Availability>,
    pub sleep: Option<Sleep>,
    /// First slot of each event (its timer, then its fields' slots).
    pub event_at: Vec<usize>,
    pub availability_at: usize,
    pub sleep_at: usize,
    pub watch_at: usize,
    /// Slots these features add after the generator slots.
    pub slots: usize,
    /// Set by [`Behaviour::lay_out`] when any feature is on (the tick's one test on the plain
    /// path).
    pub active: bool,
}

/// Salts of the features' streams (mixed into the device seed by name).
pub const AVAILABILITY_SALT: &str = "~availability";
pub const SLEEP_SALT: &str = "~sleep";
/// An event's stream is seeded with `"~event:" + name`.
pub const EVENT_SALT: &str = "~event:";

impl Behaviour {
    /// True when the device is periodic and always on: the tick skips everything here.
    #[inline]
    pub fn is_plain(&self) -> bool {
        !self.active
    }

    /// True when a tick must ask [`Behaviour::step`] first.
    #[inline]
    pub fn has_presence(&self) -> bool {
        !self.events.is_empty() || self.availability.is_some() || self.sleep.is_some()
    }

    /// Which fields on_change watches, and whether some field always counts as changed: a
    /// deadband field by its deadband, a Markov field when its state differs, a random numeric
    /// field without a deadband always; constants never, and a derived field without a
    /// deadband follows the fields it reads.
    pub fn watch_fields(&mut self, fields: &[FieldSpec]) {
        use super::generator::GenSpec;
        self.watch.clear();
        self.always_changed = false;
        for (i, f) in fields.iter().enumerate() {
            match (f.deadband, &f.generator) {
                (Some(d), _) => self.watch.push((i, Watch::Deadband(d))),
                (None, GenSpec::Markov(_)) => self.watch.push((i, Watch::Differs)),
                (None, GenSpec::Static { .. } | GenSpec::Derived(_)) => {}
                (None, _) => self.always_changed = true,
            }
        }
    }

    /// Gives events with the default topic the one of a profile whose topic is `topic`.
    pub fn retopic(&mut self, topic: &TopicTemplate) {
        for e in self.events.iter_mut().filter(|e| e.topic_is_default) {
            if let Ok(t) = TopicTemplate::parse(&format!("{}/events/{}", topic.source, e.name)) {
                e.topic = t;
            }
        }
    }

    /// Lays the features' slots out from `first` on; returns the count.
    pub fn lay_out(&mut self, first: usize) -> usize {
        let mut at = first;
        self.event_at.clear();
        for e in &mut self.events {
            self.event_at.push(at);
            // An event's fields' slots follow its timer; `first_slot` counts from there.
            let mut rel = 0;
            for f in &mut e.fields {
                f.first_slot = rel;
                rel += f.generator.slots();
            }
            e.field_slots = rel;
            at += 1 + rel;
        }
        if self.availability.is_some() {
            self.availability_at = at;
            at += 1;
        }
        if self.sleep.is_some() {
            self.sleep_at = at;
            at += 1;
        }
        if self.report != ReportMode::Periodic {
            self.watch_at = at;
            at += 1 + self.watch.len();
        }
        self.slots = at - first;
        self.active = self.report != ReportMode::Periodic
            || !self.events.is_empty()
            || self.availability.is_some()
            || self.sleep.is_some();
        self.slots
    }

    /// Appends the features' initial slots for a device with seed `device_seed`.
    pub fn init_slots(&self, device_seed: u64, out: &mut Vec<SlotState>) {
        use super::seed;
        use rand_xoshiro::Xoroshiro128PlusPlus;
        use rand_xoshiro::rand_core::SeedableRng;
        let fresh = |s: u64, x: f64| SlotState { rng: Xoroshiro128PlusPlus::seed_from_u64(s), x };
        let mut name = String::new();
        for e in &self.events {
            name.clear();
            name.push_str(EVENT_SALT);
            name.push_str(&e.name);
            let es = seed::derive(device_seed, &name);
            out.push(fresh(es, f64::NAN));
            for f in &e.fields {
                f.generator.init_slots(seed::derive(es, &f.name), 0, out);
            }
        }
        if self.availability.is_some() {
            out.push(fresh(seed::derive(device_seed, AVAILABILITY_SALT), f64::NAN));
        }
        if let Some(s) = self.sleep {
            let ss = seed::derive(device_seed, SLEEP_SALT);
            // Negative until the first tick (which counts sleep from itself, not from before
            // the device existed).
            let phase = seed::mix64(ss) % s.period_ms.max(1);
            out.push(fresh(ss, -(phase as f64) - 1.0));
        }
        if self.report != ReportMode::Periodic {
            for _ in 0..1 + self.watch.len() {
                out.push(fresh(0, f64::NAN));
            }
        }
    }

    /// Where the device is at its tick at `t` (`block` = its slot block, `end` = the run's end,
    /// for clipping the time counted offline or asleep); fills `log` with what happened since
    /// the last tick: outages begun and ended, events due, time offline and asleep.
    pub fn step(
        &self,
        block: &mut [SlotState],
        t: SimMs,
        end: SimMs,
        log: &mut StepLog,
    ) -> Presence {
        log.clear();
        for (e, &at) in self.events.iter().zip(&self.event_at) {
            if block[at].x.is_nan() {
                block[at].x = t as f64 + exp_ms(&mut block[at], e.mean_gap_ms());
            }
        }
        if let Some(a) = self.availability {
            let slot_at = self.availability_at;
            if block[slot_at].x.is_nan() {
                // Start in the stationary state, so a run has no warm-up bias.
                let s = &mut block[slot_at];
                let p_down = a.mttr_ms as f64 / (a.mtbf_ms + a.mttr_ms) as f64;
                if s.rng.random::<f64>() < p_down {
                    let back = t + exp_ms(s, a.mttr_ms as f64) as u64;
                    s.x = -(back as f64) - 1.0;
                    log.went_down.push((t, back));
                    log.offline_ms += back.min(end).saturating_sub(t);
                } else {
                    s.x = t as f64 + exp_ms(s, a.mtbf_ms as f64);
                }
            }
            loop {
                let x = block[slot_at].x;
                if x < 0.0 {
                    let back = (-x - 1.0) as SimMs;
                    if t < back {
                        return Presence::Away { until: back, on_grid: true };
                    }
                    // Back up: what fell inside the outage is lost.
                    self.skip_events(block, back);
                    let s = &mut block[slot_at];
                    s.x = back as f64 + exp_ms(s, a.mtbf_ms as f64);
                    log.came_up.push(back);
                } else {
                    let down = x as SimMs;
                    if t < down {
                        break;
                    }
                    // Events before the outage were sent while the device was up.
                    self.due_events(block, down.saturating_sub(1), log);
                    let s = &mut block[slot_at];
                    let back = down + exp_ms(s, a.mttr_ms as f64) as u64;
                    s.x = -(back as f64) - 1.0;
                    log.went_down.push((down, back));
                    log.offline_ms += back.min(end).saturating_sub(down.min(end));
                }
            }
        }
        if let Some(s) = self.sleep {
            let x = block[self.sleep_at].x;
            let first = x < 0.0;
            let phase = if first { (-x - 1.0) as u64 } else { x as u64 };
            block[self.sleep_at].x = phase as f64;
            let period = s.period_ms;
            // `phase < period` (drawn so at init): one division per tick.
            let pos = (t + period - phase) % period;
            if pos >= s.awake_ms {
                // `pos < period`, but `t` may be smaller than `pos` (a tick before the first
                // whole period, at tiny sim times): the window began before time 0.
                let wake = t + (period - pos);
                let slept_from = if first { t } else { (t + s.awake_ms).saturating_sub(pos) };
                log.asleep_ms += wake.min(end).saturating_sub(slept_from.min(end));
                return Presence::Away { until: wake, on_grid: false };
            }
        }
        self.due_events(block, t, log);
        Presence::Here
    }

    /// Where a device that just took a sample re-arms, given its grid's `next` tick: a sleeper
    /// whose awake window ends before `next` goes straight to the start of its next window,
    /// with the time asleep (clipped to `end`) returned to be counted now: the tick at `next`
    /// would only have found it asleep and done exactly that (`step` draws nothing for a
    /// sleeper it sends away). With availability too, the tick stays: an outage found there
    /// re-arms on the grid of `next`, which decides when the device samples after it.
    #[inline]
    pub fn after_sample(&self, block: &[SlotState], next: SimMs, end: SimMs) -> (SimMs, u64) {
        let Some(s) = self.sleep else { return (next, 0) };
        let x = block[self.sleep_at].x;
        if self.availability.is_some() || x < 0.0 {
            return (next, 0);
        }
        let period = s.period_ms;
        let pos = (next + period - x as u64) % period;
        if pos < s.awake_ms {
            return (next, 0);
        }
        let wake = next + (period - pos);
        let slept_from = (next + s.awake_ms).saturating_sub(pos);
        (wake, wake.min(end).saturating_sub(slept_from.min(end)))
    }

    /// Moves the device's events due by `t` (inclusive) into `log.events`.
    fn due_events(&self, block: &mut [SlotState], t: SimMs, log: &mut StepLog) {
        for (i, &at) in self.event_at.iter().enumerate() {
            let gap = self.events[i].mean_gap_ms();
            let s = &mut block[at];
            while s.x <= t as f64 {
                log.events.push((i as u32, s.x as SimMs));
                s.x += exp_ms(s, gap);
            }
        }
    }

    /// Draws past every event time before `t`, delivering none (an outage, a pause).
    pub fn skip_events(&self, block: &mut [SlotState], t: SimMs) {
        for (i, &at) in self.event_at.iter().enumerate() {
            let gap = self.events[i].mean_gap_ms();
            let s = &mut block[at];
            while s.x < t as f64 {
                s.x += exp_ms(s, gap);
            }
        }
    }

    /// Report-on-change, before [`Behaviour::publishes`] remembers the sample: which fields
    /// moved since the last published sample (`out[i]` for field `i`), for formats that send
    /// only those (Sparkplug DDATA). A watched field (deadband, Markov) when it moved; a
    /// constant never; any other field (a number without deadband, a derived one) always.
    /// All of them when nothing was published yet or none moved (a `max_silence` heartbeat).
    pub fn changed_fields(
        &self,
        fields: &[FieldSpec],
        block: &[SlotState],
        samples: &[Sample],
        out: &mut Vec<bool>,
    ) {
        use super::generator::GenSpec;
        out.clear();
        out.extend(fields.iter().map(|f| !matches!(f.generator, GenSpec::Static { .. })));
        out.resize(samples.len(), true);
        let first = block.get(self.watch_at).is_none_or(|s| s.x.is_nan());
        if matches!(self.report, ReportMode::OnChange { .. }) && !first {
            let w = &block[self.watch_at + 1..self.watch_at + 1 + self.watch.len()];
            for ((field, how), slot) in self.watch.iter().zip(w) {
                let v = value(samples[*field]);
                out[*field] = match how {
                    Watch::Deadband(d) => (v - slot.x).abs() > *d,
                    Watch::Differs => v.to_bits() != slot.x.to_bits(),
                };
            }
        } else {
            out.iter_mut().for_each(|c| *c = true);
        }
        if !out.iter().any(|c| *c) {
            out.iter_mut().for_each(|c| *c = true);
        }
    }

    /// Report-on-change: true when the sample `samples` taken at `t` is published; then the
    /// watched fields' values and the publish time are remembered.
    #[inline]
    pub fn publishes(&self, block: &mut [SlotState], samples: &[Sample], t: SimMs) -> bool {
        let ReportMode::OnChange { max_silence_ms } = self.report else { return true };
        let w = &mut block[self.watch_at..self.watch_at + 1 + self.watch.len()];
        let last = w[0].x;
        let mut publish = self.always_changed
            || last.is_nan()
            || max_silence_ms.is_some_and(|m| t as f64 - last >= m as f64);
        if !publish {
            for ((field, how), slot) in self.watch.iter().zip(&w[1..]) {
                let v = value(samples[*field]);
                let moved = match how {
                    Watch::Deadband(d) => (v - slot.x).abs() > *d,
                    Watch::Differs => v.to_bits() != slot.x.to_bits(),
                };
                if moved {
                    publish = true;
                    break;
                }
            }
        }
        if publish {
            w[0].x = t as f64;
            for ((field, _), slot) in self.watch.iter().zip(&mut w[1..]) {
                slot.x = value(samples[*field]);
            }
        }
        publish
    }
}

fn value(s: Sample) -> f64 {
    match s {
        Sample::Number(v) => v,
        Sample::State(i) => i as f64,
        Sample::Static => 0.0,
    }
}

/// An exponential draw with mean `mean_ms`, in whole milliseconds, at least 1 (infinite for an
/// infinite mean).
fn exp_ms(s: &mut SlotState, mean_ms: f64) -> f64 {
    if !mean_ms.is_finite() {
        return f64::INFINITY;
    }
    let u = 1.0 - s.rng.random::<f64>(); // (0, 1]
    (-mean_ms * u.ln()).round().max(1.0)
}

/// Where a device is at a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Sample (and maybe publish) now.
    Here,
    /// Down or asleep until this sim time: take no sample. `on_grid`: resume on the device's
    /// tick grid (after an outage); otherwise at `until` itself (the start of an awake window).
    Away { until: SimMs, on_grid: bool },
}

/// What [`Behaviour::step`] found; reused between ticks.
#[derive(Clone, Debug, Default)]
pub struct StepLog {
    /// (event index, event time), in stream order then time.
    pub events: Vec<(u32, SimMs)>,
    /// Outages begun: (down at, back at).
    pub went_down: Vec<(SimMs, SimMs)>,
    /// Outages ended at these times.
    pub came_up: Vec<SimMs>,
    pub offline_ms: u64,
    pub asleep_ms: u64,
}

impl StepLog {
    fn clear(&mut self) {
        self.events.clear();
        self.went_down.clear();
        self.came_up.clear();
        self.offline_ms = 0;
        self.asleep_ms = 0;
    }

    /// True when nothing beyond "here" happened.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.went_down.is_empty() && self.came_up.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rate: f64) -> EventSpec {
        EventSpec {
            name: "alarm".into(),
            rate_per_hour: rate,
            fields: vec![],
            field_slots: 0,
            topic: TopicTemplate::parse("x").unwrap(),
            topic_is_default: false,
            event_json: String::new(),
        }
    }

    fn block(b: &Behaviour, seed: u64) -> Vec<SlotState> {
        let mut v = vec![];
        b.init_slots(seed, &mut v);
        v
    }

    #[test]
    fn event_gaps_are_exponential_with_the_configured_rate() {
        let mut b = Behaviour { events: vec![event(60.0)], ..Default::default() };
        b.lay_out(0);
        let mut s = block(&b, 5);
        let mut log = StepLog::default();
        let mut times = vec![];
        for i in 0..2_000_000u64 {
            b.step(&mut s, i * 10_000, u64::MAX, &mut log);
            times.extend(log.events.iter().map(|e| e.1));
        }
        // 20 000 000 s at one per minute: ~333 000 events, mean gap 60 000 ms.
        let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean / 60_000.0 - 1.0).abs() < 0.01, "mean gap {mean}");
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn skipped_events_are_never_delivered() {
        let mut b = Behaviour { events: vec![event(3600.0)], ..Default::default() };
        b.lay_out(0);
        let mut s = block(&b, 2);
        let mut log = StepLog::default();
        b.step(&mut s, 0, u64::MAX, &mut log);
        // A pause from 0 to 60 s: about 60 events fall inside it and are dropped.
        b.skip_events(&mut s, 60_000);
        b.step(&mut s, 61_000, u64::MAX, &mut log);
        assert!(log.events.iter().all(|e| e.1 >= 60_000), "{:?}", log.events);
        assert!(log.events.len() < 10, "{} events", log.events.len());
    }

    #[test]
    fn availability_spends_the_expected_share_of_time_down() {
        let a = Availability { mtbf_ms: 3_600_000, mttr_ms: 600_000 };
        let mut b = Behaviour { availability: Some(a), ..Default::default() };
        b.lay_out(0);
        let (mut here, mut total) = (0u64, 0u64);
        for seed in 0..200 {
            let mut s = block(&b, seed);
            let mut log = StepLog::default();
            let mut t = 0;
            while t < 100 * 3_600_000 {
                total += 1;
                match b.step(&mut s, t, u64::MAX, &mut log) {
                    Presence::Here => {
                        here += 1;
                        t += 10_000;
                    }
                    Presence::Away { until, .. } => {
                        assert!(until > t);
                        total += (until - t).div_ceil(10_000) - 1;
                        t += (until - t).div_ceil(10_000) * 10_000;
                    }
                }
            }
        }
        // Up share mtbf / (mtbf + mttr) = 6/7 = 0.857; 20 000 device-hours, ~4 000 outages.
        let share = here as f64 / total as f64;
        assert!((share - 6.0 / 7.0).abs() < 0.01, "up share {share}");
    }

    #[test]
    fn a_sleeper_is_here_only_inside_its_awake_window() {
        let mut b = Behaviour {
            sleep: Some(Sleep { period_ms: 900_000, awake_ms: 30_000 }),
            ..Default::default()
        };
        b.lay_out(0);
        let mut s = block(&b, 9);
        let phase = (-s[0].x - 1.0) as u64;
        let mut log = StepLog::default();
        assert_eq!(b.step(&mut s, phase + 900_000, u64::MAX, &mut log), Presence::Here);
        assert_eq!(b.step(&mut s, phase + 929_999, u64::MAX, &mut log), Presence::Here);
        assert_eq!(
            b.step(&mut s, phase + 930_000, u64::MAX, &mut log),
            Presence::Away { until: phase + 1_800_000, on_grid: false }
        );
        assert_eq!(log.asleep_ms, 870_000);
    }

    #[test]
    fn a_sleeper_goes_from_its_last_sample_straight_to_its_next_window() {
        let mut b = Behaviour {
            sleep: Some(Sleep { period_ms: 900_000, awake_ms: 30_000 }),
            ..Default::default()
        };
        b.lay_out(0);
        let mut s = block(&b, 9);
        let phase = (-s[0].x - 1.0) as u64;
        let mut log = StepLog::default();
        // Before its first tick, nothing is skipped (the first tick counts sleep from itself).
        assert_eq!(b.after_sample(&s, phase + 940_000, u64::MAX), (phase + 940_000, 0));
        assert_eq!(b.step(&mut s, phase + 900_000, u64::MAX, &mut log), Presence::Here);
        // Inside the window: the grid's next tick.
        assert_eq!(b.after_sample(&s, phase + 920_000, u64::MAX), (phase + 920_000, 0));
        // Past it: the next window's start, with what `step` would have counted there.
        let at = phase + 940_000;
        let skipped = b.after_sample(&s, at, u64::MAX);
        assert_eq!(
            b.step(&mut s.clone(), at, u64::MAX, &mut log),
            Presence::Away { until: skipped.0, on_grid: false }
        );
        assert_eq!(skipped, (phase + 1_800_000, log.asleep_ms));
        assert_eq!(skipped.1, 870_000);
        // Clipped at the run's end, like `step`.
        assert_eq!(b.after_sample(&s, at, phase + 1_000_000).1, 70_000);
        // With availability the tick stays (an outage there decides the grid after it).
        let mut with = b.clone();
        with.availability = Some(Availability { mtbf_ms: 1000, mttr_ms: 1000 });
        with.lay_out(0);
        let mut s = block(&with, 9);
        with.step(&mut s, phase + 900_000, u64::MAX, &mut log);
        assert_eq!(with.after_sample(&s, at, u64::MAX), (at, 0));
    }

    #[test]
    fn a_sleeper_ticked_before_its_phase_does_not_underflow() {
        let mut b = Behaviour {
            sleep: Some(Sleep { period_ms: 900_000, awake_ms: 30_000 }),
            ..Default::default()
        };
        b.lay_out(0);
        // A phase past the awake window and a tick time smaller than the position in the
        // period: `t - pos` used to underflow (a panic in debug builds).
        let mut s = block(&b, 9);
        s[0].x = 500_000.0;
        let mut log = StepLog::default();
        let t = 5;
        // pos = (5 + 900_000 - 500_000) % 900_000 = 400_005: asleep until the next window.
        assert_eq!(
            b.step(&mut s, t, u64::MAX, &mut log),
            Presence::Away { until: 500_000, on_grid: false }
        );
        // Asleep since before time 0: counted from the window's end clipped at 0, to `wake`.
        assert_eq!(log.asleep_ms, 500_000);
        assert_eq!(b.after_sample(&s, 7, u64::MAX), (500_000, 500_000));
        assert_eq!(b.after_sample(&s, 7, 100), (500_000, 100));
    }

    #[test]
    fn on_change_publishes_past_the_deadband_or_after_the_silence() {
        let mut b = Behaviour {
            report: ReportMode::OnChange { max_silence_ms: Some(60_000) },
            watch: vec![(0, Watch::Deadband(0.5))],
            ..Default::default()
        };
        b.lay_out(0);
        let mut s = block(&b, 1);
        let n = |v| [Sample::Number(v)];
        assert!(b.publishes(&mut s, &n(10.0), 0), "the first sample");
        assert!(!b.publishes(&mut s, &n(10.4), 10_000));
        assert!(!b.publishes(&mut s, &n(9.6), 20_000));
        assert!(b.publishes(&mut s, &n(10.6), 30_000), "moved 0.6 from 10.0");
        assert!(!b.publishes(&mut s, &n(10.2), 40_000));
        assert!(b.publishes(&mut s, &n(10.2), 90_000), "heartbeat after 60 s");
    }
}
