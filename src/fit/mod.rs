//! `iot-sim fit`: generator parameters estimated from one recorded series, as pure functions
//! over (time, value). Each model is parametrised exactly as its generator in
//! `sim/generator.rs` steps it, so a fitted profile reproduces the series' statistics:
//!
//! - gaussian: `mean + stddev·z`;
//! - brownian (Ornstein–Uhlenbeck): `m + (x − m)·e^{−θΔ} + σ·√((1 − e^{−2θΔ})/2θ)·z` over each
//!   step's own length `Δ` (irregular sampling and gaps are the transition's own), maximum
//!   likelihood with `m` and `σ` profiled out and `θ` searched on a log grid, then refined;
//! - diurnal: `baseline + amplitude·sin(2π(h − peak_hour + 6)/24) + noise` with `h` the UTC
//!   hour of day, by harmonic (least-squares) regression, gaussian residuals;
//! - diurnal with OU residuals (a `composite` of a noiseless diurnal and a brownian around 0);
//! - markov, for text: states in order of first appearance, transition counts normalised.
//!
//! Confidence intervals (95%) come from the observed information (a numerical Hessian of the
//! log-likelihood at the estimate); models are compared by AIC; residuals are standardised
//! and tested against a normal with Kolmogorov–Smirnov.

use std::f64::consts::TAU;

/// Fewest samples for any numeric model.
pub(crate) const MIN_SAMPLES: usize = 10;
/// Fewest samples for the OU and diurnal models.
pub(crate) const MIN_SAMPLES_DYNAMIC: usize = 20;
/// Fewest distinct hours of the day (whole hours) for a diurnal fit.
pub(crate) const MIN_HOURS: usize = 8;

/// One estimated parameter with its 95% confidence interval.
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub name: &'static str,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// One fitted model.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub model: &'static str,
    pub params: Vec<Param>,
    pub loglik: f64,
    pub aic: f64,
    /// Kolmogorov–Smirnov of the standardised residuals against N(0, 1): (D, p-value).
    pub ks: Option<(f64, f64)>,
    /// The field's generator as an inline TOML table.
    pub toml: String,
}

/// What fitting one numeric field gave: every candidate (or why it could not be fitted) and
/// the index of the one with the lowest AIC.
#[derive(Debug)]
pub(crate) struct Fitted {
    pub candidates: Vec<Result<Candidate, (&'static str, String)>>,
    pub best: usize,
}

// ---------------------------------------------------------------------------------------------
// Statistics helpers.

/// The standard normal CDF (erfc by a rational Chebyshev fit, |error| < 1.2e-7).
pub(crate) fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let erfc = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { 1.0 - 0.5 * erfc } else { 0.5 * erfc }
}

/// Kolmogorov–Smirnov of `z` against N(0, 1): the statistic D and its asymptotic p-value.
pub(crate) fn ks_normal(z: &[f64]) -> (f64, f64) {
    let mut s: Vec<f64> = z.iter().copied().filter(|v| v.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    let mut d: f64 = 0.0;
    for (i, v) in s.iter().enumerate() {
        let f = normal_cdf(*v);
        d = d.max((f - i as f64 / n).abs()).max(((i + 1) as f64 / n - f).abs());
    }
    let en = n.sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    let mut p = 0.0;
    for k in 1..=100 {
        let term = (-2.0 * (k as f64 * lambda).powi(2)).exp();
        p += if k % 2 == 1 { 2.0 * term } else { -2.0 * term };
        if term < 1e-12 {
            break;
        }
    }
    (d, p.clamp(0.0, 1.0))
}

/// Solves `a·x = b` (Gaussian elimination with partial pivoting); None when singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-300 || !a[p][c].is_finite() {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// 95% intervals from the observed information: the inverse of the negated numerical Hessian
/// of `ll` at `p`. NaN where the information is singular (an estimate at a bound).
fn intervals(ll: impl Fn(&[f64]) -> f64, p: &[f64], names: &[&'static str]) -> Vec<Param> {
    let n = p.len();
    let h: Vec<f64> = p.iter().map(|v| 1e-4 * v.abs().max(1e-3)).collect();
    let at = |d: &[(usize, f64)]| {
        let mut q = p.to_vec();
        for &(i, s) in d {
            q[i] += s;
        }
        ll(&q)
    };
    let f0 = ll(p);
    let mut info = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in i..n {
            let v = if i == j {
                (at(&[(i, h[i])]) - 2.0 * f0 + at(&[(i, -h[i])])) / (h[i] * h[i])
            } else {
                (at(&[(i, h[i]), (j, h[j])])
                    - at(&[(i, h[i]), (j, -h[j])])
                    - at(&[(i, -h[i]), (j, h[j])])
                    + at(&[(i, -h[i]), (j, -h[j])]))
                    / (4.0 * h[i] * h[j])
            };
            info[i][j] = -v;
            info[j][i] = -v;
        }
    }
    (0..n)
        .map(|i| {
            let mut e = vec![0.0; n];
            e[i] = 1.0;
            let var = solve(info.clone(), e).map_or(f64::NAN, |col| col[i]);
            let se = if var > 0.0 { var.sqrt() } else { f64::NAN };
            Param { name: names[i], value: p[i], lo: p[i] - 1.96 * se, hi: p[i] + 1.96 * se }
        })
        .collect()
}

fn candidate(
    model: &'static str,
    params: Vec<Param>,
    loglik: f64,
    residuals: Option<&[f64]>,
    toml: String,
) -> Candidate {
    let k = params.len() as f64;
    Candidate {
        model,
        aic: 2.0 * k - 2.0 * loglik,
        loglik,
        ks: residuals.map(ks_normal),
        params,
        toml,
    }
}

fn num(v: f64) -> String {
    let mut b = ryu::Buffer::new();
    if v.is_finite() { b.format_finite(v).to_string() } else { "0.0".into() }
}

// ---------------------------------------------------------------------------------------------
// The models.

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}

fn gaussian_ll(x: &[f64], m: f64, s: f64) -> f64 {
    if s <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let n = x.len() as f64;
    -0.5 * n * (TAU * s * s).ln() - x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (2.0 * s * s)
}

pub(crate) fn gaussian(x: &[f64]) -> Candidate {
    let (m, s) = mean_sd(x);
    let ll = gaussian_ll(x, m, s);
    let params = intervals(|p| gaussian_ll(x, p[0], p[1]), &[m, s], &["mean", "stddev"]);
    let z: Vec<f64> = x.iter().map(|v| (v - m) / s).collect();
    let toml = format!("{{ type = \"gaussian\", mean = {}, stddev = {} }}", num(m), num(s));
    candidate("gaussian", params, ll, Some(&z), toml)
}

/// The OU log-likelihood of `x` at times `t` (seconds): the first value from the stationary
/// law, each next one from the exact transition over its own step. Standardised residuals
/// into `z` when given.
fn ou_ll(
    x: &[f64],
    t: &[f64],
    m: f64,
    theta: f64,
    sigma: f64,
    mut z: Option<&mut Vec<f64>>,
) -> f64 {
    if theta <= 0.0 || sigma <= 0.0 || !theta.is_finite() {
        return f64::NEG_INFINITY;
    }
    let v0 = sigma * sigma / (2.0 * theta);
    let mut ll = -0.5 * (TAU * v0).ln() - (x[0] - m).powi(2) / (2.0 * v0);
    for i in 1..x.len() {
        let dt = t[i] - t[i - 1];
        let b = (-theta * dt).exp();
        let q = sigma * sigma * (-(-2.0 * theta * dt).exp_m1()) / (2.0 * theta);
        let r = x[i] - m - (x[i - 1] - m) * b;
        ll += -0.5 * (TAU * q).ln() - r * r / (2.0 * q);
        if let Some(z) = z.as_deref_mut() {
            z.push(r / q.sqrt());
        }
    }
    ll
}

/// For a fixed θ: the mean and σ that maximise the transitions' likelihood (weighted least
/// squares), and that likelihood.
fn ou_profile(x: &[f64], t: &[f64], theta: f64) -> (f64, f64, f64) {
    let (mut sww, mut swy) = (0.0, 0.0);
    let mut rows = Vec::with_capacity(x.len());
    let mut log_q = 0.0;
    for i in 1..x.len() {
        let dt = t[i] - t[i - 1];
        let b = (-theta * dt).exp();
        let q = (-(-2.0 * theta * dt).exp_m1()) / (2.0 * theta);
        let sq = q.sqrt();
        let y = (x[i] - b * x[i - 1]) / sq;
        let w = (1.0 - b) / sq;
        sww += w * w;
        swy += w * y;
        log_q += q.ln();
        rows.push((y, w));
    }
    let m = if sww > 0.0 { swy / sww } else { x.iter().sum::<f64>() / x.len() as f64 };
    let n = rows.len() as f64;
    let s2 = rows.iter().map(|(y, w)| (y - m * w).powi(2)).sum::<f64>() / n;
    let ll = -0.5 * n * (TAU * s2).ln() - 0.5 * log_q - 0.5 * n;
    (m, s2.sqrt(), ll)
}

/// The OU maximum-likelihood estimate: (mean, θ, σ).
fn ou_estimate(x: &[f64], t: &[f64]) -> (f64, f64, f64) {
    let mut steps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    steps.sort_by(f64::total_cmp);
    let dt = steps[steps.len() / 2].max(1e-6);
    // θ·Δ from 1e-7 (a random walk over the trace) to 30 (no memory from one step to the next).
    let (lo, hi) = ((1e-7 / dt).ln(), (30.0 / dt).ln());
    let grid = 80;
    let score = |lt: f64| ou_profile(x, t, lt.exp()).2;
    let mut best = (lo, f64::NEG_INFINITY);
    for i in 0..=grid {
        let lt = lo + (hi - lo) * i as f64 / grid as f64;
        let s = score(lt);
        if s > best.1 {
            best = (lt, s);
        }
    }
    // Golden-section search around the best grid point.
    let step = (hi - lo) / grid as f64;
    let (mut a, mut b) = ((best.0 - step).max(lo), (best.0 + step).min(hi));
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (score(c), score(d));
    for _ in 0..60 {
        if fc > fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = score(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = score(d);
        }
    }
    let theta = ((a + b) / 2.0).exp();
    let (m, s, _) = ou_profile(x, t, theta);
    // σ of the generator: the transitions' scale (the profile's s is already per √s).
    (m, theta, s)
}

pub(crate) fn brownian(x: &[f64], t: &[f64]) -> Candidate {
    let (m, theta, sigma) = ou_estimate(x, t);
    let mut z = Vec::with_capacity(x.len());
    let ll = ou_ll(x, t, m, theta, sigma, Some(&mut z));
    let params = intervals(
        |p| ou_ll(x, t, p[0], p[1], p[2], None),
        &[m, theta, sigma],
        &["mean", "mean_reversion", "volatility"],
    );
    let toml = format!(
        "{{ type = \"brownian\", start = {}, mean = {}, volatility = {}, mean_reversion = {} }}",
        num(x[0]),
        num(m),
        num(sigma),
        num(theta)
    );
    candidate("brownian", params, ll, Some(&z), toml)
}

const W: f64 = TAU / 24.0;

fn wave(h: f64, amplitude: f64, peak: f64) -> f64 {
    amplitude * (W * (h - peak + 6.0)).sin()
}

/// Harmonic regression: (baseline, amplitude, peak hour).
fn harmonic(x: &[f64], hours: &[f64]) -> Option<(f64, f64, f64)> {
    let mut a = vec![vec![0.0; 3]; 3];
    let mut b = vec![0.0; 3];
    for (v, h) in x.iter().zip(hours) {
        let r = [1.0, (W * h).sin(), (W * h).cos()];
        for i in 0..3 {
            for j in 0..3 {
                a[i][j] += r[i] * r[j];
            }
            b[i] += r[i] * v;
        }
    }
    let c = solve(a, b)?;
    // c1·sin(ωh) + c2·cos(ωh) = A·sin(ωh + φ), φ = ω(6 − peak).
    let amplitude = c[1].hypot(c[2]);
    let phi = c[2].atan2(c[1]);
    let peak = (6.0 - phi / W).rem_euclid(24.0);
    Some((c[0], amplitude, peak))
}

fn diurnal_ll(x: &[f64], hours: &[f64], p: &[f64]) -> f64 {
    let (b, a, peak, s) = (p[0], p[1], p[2], p[3]);
    if s <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let n = x.len() as f64;
    -0.5 * n * (TAU * s * s).ln()
        - x.iter().zip(hours).map(|(v, h)| (v - b - wave(*h, a, peak)).powi(2)).sum::<f64>()
            / (2.0 * s * s)
}

pub(crate) fn diurnal(x: &[f64], hours: &[f64]) -> Result<Candidate, String> {
    let (b, a, peak) = harmonic(x, hours).ok_or("the harmonic regression is singular")?;
    let r: Vec<f64> = x.iter().zip(hours).map(|(v, h)| v - b - wave(*h, a, peak)).collect();
    let s = (r.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
    let p = [b, a, peak, s];
    let ll = diurnal_ll(x, hours, &p);
    let params = intervals(
        |q| diurnal_ll(x, hours, q),
        &p,
        &["baseline", "amplitude", "peak_hour", "noise_stddev"],
    );
    let z: Vec<f64> = r.iter().map(|v| v / s).collect();
    let toml = format!(
        "{{ type = \"diurnal\", baseline = {}, amplitude = {}, peak_hour = {}, noise_stddev = {} }}",
        num(b),
        num(a),
        num(peak),
        num(s)
    );
    Ok(candidate("diurnal", params, ll, Some(&z), toml))
}

pub(crate) fn diurnal_ou(x: &[f64], t: &[f64], hours: &[f64]) -> Result<Candidate, String> {
    let (b, a, peak) = harmonic(x, hours).ok_or("the harmonic regression is singular")?;
    let r: Vec<f64> = x.iter().zip(hours).map(|(v, h)| v - b - wave(*h, a, peak)).collect();
    let (m, theta, sigma) = ou_estimate(&r, t);
    // The residuals' mean goes into the baseline: the brownian part reverts to 0.
    let b = b + m;
    let joint = |p: &[f64], z: Option<&mut Vec<f64>>| {
        let r: Vec<f64> =
            x.iter().zip(hours).map(|(v, h)| v - p[0] - wave(*h, p[1], p[2])).collect();
        ou_ll(&r, t, 0.0, p[3], p[4], z)
    };
    let p = [b, a, peak, theta, sigma];
    let mut z = Vec::with_capacity(x.len());
    let ll = joint(&p, Some(&mut z));
    let params = intervals(
        |q| joint(q, None),
        &p,
        &["baseline", "amplitude", "peak_hour", "mean_reversion", "volatility"],
    );
    let toml = format!(
        "{{ type = \"composite\", parts = [{{ type = \"diurnal\", baseline = {}, amplitude = {}, \
         peak_hour = {}, noise_stddev = 0.0 }}, {{ type = \"brownian\", start = {}, mean = 0.0, \
         volatility = {}, mean_reversion = {} }}] }}",
        num(b),
        num(a),
        num(peak),
        num(r[0] - m),
        num(sigma),
        num(theta)
    );
    Ok(candidate("diurnal+brownian", params, ll, Some(&z), toml))
}

/// Refuses a series whose times repeat (or go backwards): a transition needs a positive step.
pub(crate) fn check_times(t_ms: &[u64]) -> Result<(), String> {
    match t_ms.windows(2).position(|w| w[1] <= w[0]) {
        Some(i) => Err(format!(
            "duplicate time: samples {} and {} are both at {} (one value per time is needed)",
            i + 1,
            i + 2,
            crate::sim::time::rfc3339_ms(t_ms[i + 1])
        )),
        None => Ok(()),
    }
}

/// Fits every numeric model to the series `x` at times `t_ms` (sorted). Err when no model can
/// be fitted (too few samples, constant data, duplicate times).
pub(crate) fn fit_numeric(t_ms: &[u64], x: &[f64]) -> Result<Fitted, String> {
    check_times(t_ms)?;
    if x.len() < MIN_SAMPLES {
        return Err(format!(
            "{} samples: at least {MIN_SAMPLES} are needed for any model",
            x.len()
        ));
    }
    if x.iter().all(|v| *v == x[0]) {
        return Err(format!("constant data (every value is {}): nothing to fit", x[0]));
    }
    let t: Vec<f64> = t_ms.iter().map(|ms| (ms - t_ms[0]) as f64 / 1000.0).collect();
    let hours: Vec<f64> = t_ms.iter().map(|ms| crate::sim::time::hour_of_day(*ms)).collect();
    let mut distinct: Vec<u32> = hours.iter().map(|h| *h as u32).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut candidates = vec![Ok(gaussian(x))];
    let few = x.len() < MIN_SAMPLES_DYNAMIC;
    let few_why = || format!("{} samples, at least {MIN_SAMPLES_DYNAMIC} are needed", x.len());
    candidates.push(if few { Err(("brownian", few_why())) } else { Ok(brownian(x, &t)) });
    let diurnal_skip = if few {
        Some(few_why())
    } else if distinct.len() < MIN_HOURS {
        Some(format!(
            "the samples cover {} distinct hours of the day, at least {MIN_HOURS} are needed",
            distinct.len()
        ))
    } else {
        None
    };
    match &diurnal_skip {
        Some(why) => {
            candidates.push(Err(("diurnal", why.clone())));
            candidates.push(Err(("diurnal+brownian", why.clone())));
        }
        None => {
            candidates.push(diurnal(x, &hours).map_err(|e| ("diurnal", e)));
            candidates.push(diurnal_ou(x, &t, &hours).map_err(|e| ("diurnal+brownian", e)));
        }
    }
    let best = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().ok().filter(|c| c.aic.is_finite()).map(|c| (i, c.aic)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|x| x.0)
        .unwrap_or(0);
    Ok(Fitted { candidates, best })
}

/// A Markov chain over the text values: states in order of first appearance, each row the
/// observed transition frequencies (a state never left stays put).
pub(crate) fn markov(values: &[String]) -> Result<Candidate, String> {
    if values.len() < MIN_SAMPLES {
        return Err(format!("{} samples: at least {MIN_SAMPLES} are needed", values.len()));
    }
    let mut states: Vec<&str> = vec![];
    let idx: Vec<usize> = values
        .iter()
        .map(|v| match states.iter().position(|s| s == v) {
            Some(i) => i,
            None => {
                states.push(v);
                states.len() - 1
            }
        })
        .collect();
    if states.len() < 2 {
        return Err(format!("constant data (every value is {:?}): nothing to fit", values[0]));
    }
    if states.len() > 64 {
        return Err(format!(
            "{} distinct text values, a Markov chain of at most 64 states is fitted",
            states.len()
        ));
    }
    let n = states.len();
    let mut counts = vec![vec![0u64; n]; n];
    for w in idx.windows(2) {
        counts[w[0]][w[1]] += 1;
    }
    let mut params = vec![];
    let mut ll = 0.0;
    let mut matrix = vec![];
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let probs: Vec<f64> = if total == 0 {
            (0..n).map(|j| if j == i { 1.0 } else { 0.0 }).collect()
        } else {
            row.iter().map(|c| *c as f64 / total as f64).collect()
        };
        for (j, (&c, &p)) in row.iter().zip(&probs).enumerate() {
            if c > 0 {
                ll += c as f64 * p.ln();
            }
            let se = if total > 0 { (p * (1.0 - p) / total as f64).sqrt() } else { f64::NAN };
            let _ = j;
            params.push(Param {
                name: "p",
                value: p,
                lo: (p - 1.96 * se).max(0.0),
                hi: (p + 1.96 * se).min(1.0),
            });
        }
        matrix.push(probs);
    }
    let quoted: Vec<String> = states.iter().map(|s| format!("{s:?}")).collect();
    let rows: Vec<String> = matrix
        .iter()
        .map(|r| {
            // Rows sum to 1 exactly as written: the last entry takes the rounding.
            let mut r: Vec<f64> = r.iter().map(|p| (p * 1e9).round() / 1e9).collect();
            let head: f64 = r[..n - 1].iter().sum();
            r[n - 1] = (1.0 - head).max(0.0);
            format!("[{}]", r.iter().map(|p| num(*p)).collect::<Vec<_>>().join(", "))
        })
        .collect();
    let toml = format!(
        "{{ type = \"markov\", states = [{}], transition_matrix = [{}], initial_state = {} }}",
        quoted.join(", "),
        rows.join(", "),
        quoted[idx[0]]
    );
    let k = (n * (n - 1)) as f64;
    Ok(Candidate { model: "markov", params, loglik: ll, aic: 2.0 * k - 2.0 * ll, ks: None, toml })
}

#[cfg(test)]
mod tests;
