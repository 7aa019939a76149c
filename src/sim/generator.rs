//! Value generators: the per-field models that turn (state, sim time) into the next value.
//!
//! A generator's parameters live in a [`GenSpec`] shared by every device of a profile; its state
//! lives in [`SlotState`]s (one Xoroshiro128++ stream plus one `f64`:
//! 24 bytes) in the shard's field arena.
//! Nothing here reads a clock: the tick's scheduled sim time and interval are passed in.

use super::seed;
use super::time::{SimMs, hour_of_day};
use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoroshiro128PlusPlus;
use rand_xoshiro::rand_core::SeedableRng;

/// The state of one random stream of a field.
#[derive(Clone, Debug)]
pub struct SlotState {
    pub rng: Xoroshiro128PlusPlus,
    /// Generator memory: the current level (brownian) or state index (markov).
    pub x: f64,
}

/// A generator's parameters, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum GenSpec {
    Gaussian {
        mean: f64,
        stddev: f64,
    },
    Brownian(Brownian),
    Diurnal {
        baseline: f64,
        amplitude: f64,
        peak_hour: f64,
        noise_stddev: f64,
    },
    Markov(Markov),
    /// A constant: `json` is its JSON encoding; `number` is set when it is numeric.
    Static {
        json: String,
        number: Option<f64>,
    },
    /// The sum of numeric generators.
    Composite(Vec<GenSpec>),
    /// A function of the other fields of the same sample, evaluated after them
    /// (`DeviceTable::generate`); one slot when it calls `noise`.
    Derived(Box<super::expr::Expr>),
    /// Member `member` of the profile's correlated group `group`; the group draws all its
    /// members at once from the group's slot (`DeviceTable::generate`).
    Correlated {
        group: usize,
        member: usize,
    },
}

/// Ornstein–Uhlenbeck parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Brownian {
    pub start: f64,
    pub mean: f64,
    pub drift: f64,
    pub volatility: f64,
    pub mean_reversion: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Transition coefficients `(dt, e^{-θ·dt}, σ·√((1−e^{−2θ·dt})/(2θ)))` precomputed for the
    /// profile's interval, so the common tick costs no `exp`.
    pub cached: Option<(f64, f64, f64)>,
}

/// A Markov chain over named states.
#[derive(Clone, Debug, PartialEq)]
pub struct Markov {
    pub states: Vec<String>,
    /// Cumulative transition rows.
    pub cumulative: Vec<Vec<f64>>,
    pub initial: usize,
}

/// One generated value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sample {
    Number(f64),
    /// Index into the Markov chain's states.
    State(usize),
    /// The static value.
    Static,
}

impl GenSpec {
    /// Number of random streams (arena slots) the generator needs. Asked for every field of
    /// every sample: inlined, with a composite's sum out of line.
    #[inline]
    pub fn slots(&self) -> usize {
        match self {
            GenSpec::Static { .. } | GenSpec::Correlated { .. } => 0,
            GenSpec::Derived(e) => e.uses_noise as usize,
            GenSpec::Composite(parts) => composite_slots(parts),
            _ => 1,
        }
    }

    /// Precomputes whatever depends only on the tick interval.
    pub fn prepare(&mut self, dt: f64) {
        match self {
            GenSpec::Brownian(b) => b.prepare(dt),
            GenSpec::Composite(parts) => parts.iter_mut().for_each(|p| p.prepare(dt)),
            _ => {}
        }
    }

    /// True when the generator yields numbers.
    pub fn is_numeric(&self) -> bool {
        match self {
            GenSpec::Markov(_) => false,
            GenSpec::Static { number, .. } => number.is_some(),
            GenSpec::Composite(parts) => parts.iter().all(GenSpec::is_numeric),
            _ => true,
        }
    }

    /// Initial states of the generator's slots, seeded from `field_seed`; `first_part` numbers
    /// the first slot within the field (for composite parts).
    pub fn init_slots(&self, field_seed: u64, first_part: usize, out: &mut Vec<SlotState>) {
        let mut push = |x: f64, part: usize| {
            out.push(SlotState {
                rng: Xoroshiro128PlusPlus::seed_from_u64(seed::part_seed(field_seed, part)),
                x,
            })
        };
        match self {
            GenSpec::Static { .. } | GenSpec::Correlated { .. } => {}
            GenSpec::Derived(e) => {
                if e.uses_noise {
                    push(0.0, first_part)
                }
            }
            GenSpec::Brownian(b) => push(b.start, first_part),
            // A negative value marks "initial state not yet emitted".
            GenSpec::Markov(m) => push(-(m.initial as f64) - 1.0, first_part),
            GenSpec::Gaussian { .. } | GenSpec::Diurnal { .. } => push(0.0, first_part),
            GenSpec::Composite(parts) => {
                let mut part = first_part;
                for p in parts {
                    p.init_slots(field_seed, part, out);
                    part += p.slots();
                }
            }
        }
    }

    /// The next value. `slots` are this generator's slots; `t` is the tick's scheduled sim
    /// time and `dt_s` the scheduled interval in seconds.
    pub fn next(&self, slots: &mut [SlotState], t: SimMs, dt_s: f64) -> Sample {
        match self {
            GenSpec::Markov(m) => Sample::State(m.step(&mut slots[0])),
            GenSpec::Static { number: None, .. } => Sample::Static,
            _ => Sample::Number(self.next_number(slots, t, dt_s)),
        }
    }

    fn next_number(&self, slots: &mut [SlotState], t: SimMs, dt_s: f64) -> f64 {
        match self {
            GenSpec::Gaussian { mean, stddev } => mean + stddev * normal(&mut slots[0]),
            GenSpec::Brownian(b) => b.step(&mut slots[0], dt_s),
            GenSpec::Diurnal { baseline, amplitude, peak_hour, noise_stddev } => {
                let wave = diurnal_wave(t, *peak_hour);
                let noise =
                    if *noise_stddev > 0.0 { noise_stddev * normal(&mut slots[0]) } else { 0.0 };
                baseline + amplitude * wave + noise
            }
            GenSpec::Static { number, .. } => number.unwrap_or(0.0),
            GenSpec::Markov(m) => m.step(&mut slots[0]) as f64,
            // Filled in after the other fields by the device table.
            GenSpec::Derived(_) | GenSpec::Correlated { .. } => f64::NAN,
            GenSpec::Composite(parts) => {
                let mut sum = 0.0;
                let mut at = 0;
                for p in parts {
                    let n = p.slots();
                    sum += p.next_number(&mut slots[at..at + n], t, dt_s);
                    at += n;
                }
                sum
            }
        }
    }
}

/// The daily wave at `t` for a peak at `peak_hour`, from -1 to 1. Every device due in the same
/// millisecond reads the same one: the last is kept per thread (a `sin` per message was 3% of
/// the engine, issue 25); the value is the same either way.
fn diurnal_wave(t: SimMs, peak_hour: f64) -> f64 {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<(SimMs, u64, f64)> = const { Cell::new((SimMs::MAX, 0, 0.0)) };
    }
    LAST.with(|last| {
        let (at, peak, wave) = last.get();
        if at == t && peak == peak_hour.to_bits() {
            return wave;
        }
        let h = hour_of_day(t);
        let wave = (std::f64::consts::TAU * (h - peak_hour + 6.0) / 24.0).sin();
        last.set((t, peak_hour.to_bits(), wave));
        wave
    })
}

#[inline(never)]
fn composite_slots(parts: &[GenSpec]) -> usize {
    parts.iter().map(GenSpec::slots).sum()
}

fn normal(slot: &mut SlotState) -> f64 {
    StandardNormal.sample(&mut slot.rng)
}

impl Brownian {
    /// The exact Ornstein–Uhlenbeck transition over `dt` seconds, plus drift, clamped.
    pub fn step(&self, slot: &mut SlotState, dt: f64) -> f64 {
        let x = slot.x;
        let z: f64 = normal(slot);
        let theta = self.mean_reversion;
        let next = if theta > 0.0 {
            let (decay, sd) = match self.cached {
                Some((cdt, decay, sd)) if cdt == dt => (decay, sd),
                _ => self.coefficients(dt),
            };
            self.mean + (x - self.mean) * decay + sd * z + self.drift * dt
        } else {
            x + self.drift * dt + self.volatility * dt.sqrt() * z
        };
        let next = match (self.min, self.max) {
            (Some(lo), _) if next < lo => lo,
            (_, Some(hi)) if next > hi => hi,
            _ => next,
        };
        slot.x = next;
        next
    }

    /// `(e^{-θ·dt}, σ·√((1−e^{−2θ·dt})/(2θ)))` for `θ > 0`.
    pub fn coefficients(&self, dt: f64) -> (f64, f64) {
        let theta = self.mean_reversion;
        let decay = (-theta * dt).exp();
        // `-expm1(-x)` rather than `1 - exp(-x)`: for a tiny θ·dt the difference cancels to 0
        // (θ = 1e-18 published a constant), while expm1 keeps the leading term 2θ·dt.
        let sd = self.volatility * (-(-2.0 * theta * dt).exp_m1() / (2.0 * theta)).sqrt();
        (decay, sd)
    }

    /// Precomputes the transition for ticks `dt` seconds apart.
    pub fn prepare(&mut self, dt: f64) {
        if self.mean_reversion > 0.0 {
            let (decay, sd) = self.coefficients(dt);
            self.cached = Some((dt, decay, sd));
        }
    }

    /// The stationary standard deviation, `volatility / sqrt(2 * mean_reversion)`.
    pub fn stationary_stddev(&self) -> Option<f64> {
        (self.mean_reversion > 0.0).then(|| self.volatility / (2.0 * self.mean_reversion).sqrt())
    }
}

impl Markov {
    /// Builds the chain; the caller has validated the matrix.
    pub fn new(states: Vec<String>, matrix: &[Vec<f64>], initial: usize) -> Markov {
        let cumulative = matrix
            .iter()
            .map(|row| {
                let mut acc = 0.0;
                row.iter()
                    .map(|p| {
                        acc += p;
                        acc
                    })
                    .collect()
            })
            .collect();
        Markov { states, cumulative, initial }
    }

    fn step(&self, slot: &mut SlotState) -> usize {
        if slot.x < 0.0 {
            let first = (-slot.x - 1.0) as usize;
            slot.x = first as f64;
            return first;
        }
        let row = &self.cumulative[slot.x as usize];
        let r: f64 = slot.rng.random::<f64>() * row.last().copied().unwrap_or(1.0);
        let next = row.iter().position(|&c| r < c).unwrap_or(row.len() - 1);
        slot.x = next as f64;
        next
    }
}

/// Rounds to `decimals` places, as a sensor reporting fixed precision would.
pub fn round_to(v: f64, decimals: u32) -> f64 {
    let p = 10f64.powi(decimals as i32);
    let r = (v * p).round() / p;
    if r.is_finite() { r } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: &GenSpec, seed: u64, n: usize, start: SimMs, interval_ms: u64) -> Vec<Sample> {
        let mut slots = vec![];
        spec.init_slots(seed, 0, &mut slots);
        (0..n as u64)
            .map(|i| spec.next(&mut slots, start + i * interval_ms, interval_ms as f64 / 1000.0))
            .collect()
    }

    fn numbers(s: &[Sample]) -> Vec<f64> {
        s.iter()
            .map(|s| if let Sample::Number(x) = s { *x } else { panic!("not a number") })
            .collect()
    }

    fn mean_sd(v: &[f64]) -> (f64, f64) {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        (m, var.sqrt())
    }

    #[test]
    fn gaussian_has_the_configured_mean_and_spread() {
        let v = numbers(&run(&GenSpec::Gaussian { mean: 22.0, stddev: 1.5 }, 7, 100_000, 0, 1000));
        let (m, sd) = mean_sd(&v);
        // Standard error of the mean is 1.5/sqrt(1e5) ~ 0.005; of the sd ~ 0.0034.
        assert!((m - 22.0).abs() < 0.03, "mean {m}");
        assert!((sd - 1.5).abs() < 0.02, "sd {sd}");
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let g = GenSpec::Gaussian { mean: 0.0, stddev: 1.0 };
        assert_eq!(run(&g, 1, 50, 0, 1000), run(&g, 1, 50, 0, 1000));
        assert_ne!(run(&g, 1, 50, 0, 1000), run(&g, 2, 50, 0, 1000));
    }

    fn ou(theta: f64) -> Brownian {
        Brownian {
            start: 55.0,
            mean: 55.0,
            drift: 0.0,
            volatility: 0.5,
            mean_reversion: theta,
            min: None,
            max: None,
            cached: None,
        }
    }

    #[test]
    fn brownian_stationary_variance_does_not_depend_on_the_interval() {
        let want = ou(0.1).stationary_stddev().unwrap(); // 0.5/sqrt(0.2) = 1.118
        for (interval_ms, prepared) in
            [(1_000u64, false), (5_000, true), (60_000, true), (60_000, false)]
        {
            let mut b = ou(0.1);
            if prepared {
                b.prepare(interval_ms as f64 / 1000.0);
            }
            // Average over many independent paths, sampled after burn-in.
            let mut tail = vec![];
            for seed in 0..400 {
                let v = numbers(&run(&GenSpec::Brownian(b.clone()), seed, 400, 0, interval_ms));
                tail.extend(v.into_iter().skip(200).step_by(20));
            }
            let (m, sd) = mean_sd(&tail);
            assert!((m - 55.0).abs() < 0.1, "interval {interval_ms}: mean {m}");
            assert!((sd / want - 1.0).abs() < 0.06, "interval {interval_ms}: sd {sd} want {want}");
        }
    }

    #[test]
    fn brownian_with_a_tiny_reversion_still_moves_like_a_random_walk() {
        // 1 - e^{-2θdt} cancels to 0 for θ = 1e-18: the walk was frozen at its start.
        for theta in [1e-18, 1e-300] {
            let b = Brownian { start: 0.0, mean: 0.0, volatility: 1.0, ..ou(theta) };
            let mut prepared = b.clone();
            prepared.prepare(5.0);
            for g in [b, prepared] {
                let v = numbers(&run(&GenSpec::Brownian(g), 1, 2000, 0, 5000));
                let steps: Vec<f64> = v.windows(2).map(|w| w[1] - w[0]).collect();
                let (_, sd) = mean_sd(&steps);
                // A free walk with σ = 1 moves by sqrt(5 s) per tick.
                assert!((sd / 5f64.sqrt() - 1.0).abs() < 0.1, "theta {theta}: step sd {sd}");
            }
        }
    }

    #[test]
    fn brownian_without_reversion_is_a_random_walk_with_drift() {
        let b = Brownian { drift: 0.5, volatility: 0.0, ..ou(0.0) };
        let v = numbers(&run(&GenSpec::Brownian(b), 1, 3, 0, 2000));
        // First tick already moves by drift * dt, dt being the interval.
        assert_eq!(v, vec![56.0, 57.0, 58.0]);
    }

    #[test]
    fn brownian_is_clamped_to_its_bounds() {
        let b = Brownian { volatility: 20.0, min: Some(50.0), max: Some(60.0), ..ou(0.0) };
        let v = numbers(&run(&GenSpec::Brownian(b), 3, 10_000, 0, 1000));
        assert!(v.iter().all(|x| (50.0..=60.0).contains(x)));
        assert!(v.contains(&50.0) && v.contains(&60.0));
    }

    #[test]
    fn diurnal_peaks_at_the_peak_hour() {
        let g =
            GenSpec::Diurnal { baseline: 22.0, amplitude: 5.0, peak_hour: 14.0, noise_stddev: 0.0 };
        let v = numbers(&run(&g, 1, 24 * 60, 0, 60_000));
        let (imax, max) = v
            .iter()
            .enumerate()
            .fold((0, f64::MIN), |a, (i, x)| if *x > a.1 { (i, *x) } else { a });
        assert_eq!(imax, 14 * 60);
        assert!((max - 27.0).abs() < 1e-9);
        let imin = v
            .iter()
            .enumerate()
            .fold((0, f64::MAX), |a, (i, x)| if *x < a.1 { (i, *x) } else { a })
            .0;
        assert_eq!(imin, 2 * 60);
    }

    #[test]
    fn diurnal_noise_has_the_configured_spread() {
        let g =
            GenSpec::Diurnal { baseline: 0.0, amplitude: 0.0, peak_hour: 0.0, noise_stddev: 0.3 };
        let (m, sd) = mean_sd(&numbers(&run(&g, 9, 50_000, 0, 1000)));
        assert!(m.abs() < 0.01 && (sd - 0.3).abs() < 0.006, "mean {m} sd {sd}");
    }

    #[test]
    fn markov_starts_in_the_initial_state_and_follows_the_matrix() {
        let m = Markov::new(
            vec!["closed".into(), "open".into()],
            &[vec![0.95, 0.05], vec![0.30, 0.70]],
            0,
        );
        let s = run(&GenSpec::Markov(m), 11, 200_001, 0, 1000);
        assert_eq!(s[0], Sample::State(0));
        let idx: Vec<usize> =
            s.iter().map(|s| if let Sample::State(i) = s { *i } else { 9 }).collect();
        let mut counts = [[0f64; 2]; 2];
        for w in idx.windows(2) {
            counts[w[0]][w[1]] += 1.0;
        }
        let p01 = counts[0][1] / (counts[0][0] + counts[0][1]);
        let p10 = counts[1][0] / (counts[1][0] + counts[1][1]);
        assert!((p01 - 0.05).abs() < 0.004, "p01 {p01}");
        assert!((p10 - 0.30).abs() < 0.01, "p10 {p10}");
        // Stationary share of "open" is 0.05 / (0.05 + 0.30) = 0.1429.
        let open = idx.iter().filter(|&&i| i == 1).count() as f64 / idx.len() as f64;
        assert!((open - 0.142_857).abs() < 0.01, "open share {open}");
    }

    #[test]
    fn composite_sums_its_parts_with_independent_streams() {
        let g = GenSpec::Composite(vec![
            GenSpec::Diurnal { baseline: 10.0, amplitude: 0.0, peak_hour: 0.0, noise_stddev: 0.0 },
            GenSpec::Gaussian { mean: 0.0, stddev: 1.0 },
            GenSpec::Gaussian { mean: 0.0, stddev: 1.0 },
        ]);
        assert_eq!(g.slots(), 3);
        let (m, sd) = mean_sd(&numbers(&run(&g, 5, 50_000, 0, 1000)));
        // Two independent unit normals add to variance 2; identical streams would give 4.
        assert!((m - 10.0).abs() < 0.03 && (sd - 2f64.sqrt()).abs() < 0.03, "mean {m} sd {sd}");
    }

    #[test]
    fn the_kept_diurnal_wave_is_the_one_computed_for_that_time_and_peak() {
        let direct = |t: SimMs, peak: f64| {
            (std::f64::consts::TAU * (hour_of_day(t) - peak + 6.0) / 24.0).sin()
        };
        // Repeats, alternating peaks and times, as devices of two profiles due together read it.
        for (t, peak) in [(0, 14.0), (0, 14.0), (0, 3.0), (0, 14.0), (5_000, 14.0), (5_000, 3.0)]
            .into_iter()
            .chain((0..50).map(|i| (1_773_446_400_000 + i * 1_234_567, (i % 24) as f64)))
        {
            assert_eq!(diurnal_wave(t, peak).to_bits(), direct(t, peak).to_bits(), "{t} {peak}");
        }
    }

    #[test]
    fn rounding_keeps_the_requested_decimals() {
        assert_eq!(round_to(22.346, 1), 22.3);
        assert_eq!(round_to(22.35, 0), 22.0);
        assert_eq!(round_to(-1.005, 2), -1.0);
    }
}
