//! Correlated gaussian fields: one Cholesky factor per profile group, one random stream per
//! device and group.
//!
//! For a correlation matrix `R = L·Lᵀ`, `x = mean + diag(stddev)·L·z` with `z` independent unit
//! normals has covariance `diag(stddev)·R·diag(stddev)`. The factor is computed once at load and
//! stored already scaled by the standard deviations. A positive semi-definite (singular) matrix
//! is accepted: a zero pivot gives a zero column, as when two fields are perfectly correlated.

use super::generator::{Sample, SlotState, round_to};
use rand_distr::{Distribution, StandardNormal};

/// A named group of correlated gaussian fields of one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct CorrelatedGroup {
    pub name: String,
    /// The member fields' indices in the profile, in the order of `means`.
    pub members: Vec<usize>,
    pub means: Vec<f64>,
    /// `diag(stddev)·L`, row-major, lower triangle (`n × n`).
    pub factor: Vec<f64>,
    /// The members' `decimals`.
    pub decimals: Vec<Option<u32>>,
    /// The group's slot within the device's slot block.
    pub slot: usize,
}

impl CorrelatedGroup {
    /// Draws one vector and writes it into the members' samples.
    #[inline]
    pub fn draw(&self, slot: &mut SlotState, out: &mut [Sample]) {
        let n = self.members.len();
        let mut z = [0f64; MAX_MEMBERS];
        for zi in z.iter_mut().take(n) {
            *zi = StandardNormal.sample(&mut slot.rng);
        }
        for i in 0..n {
            let row = &self.factor[i * n..i * n + i + 1];
            let mut v = self.means[i];
            for (f, zk) in row.iter().zip(&z) {
                v += f * zk;
            }
            if let Some(d) = self.decimals[i] {
                v = round_to(v, d);
            }
            out[self.members[i]] = Sample::Number(v);
        }
    }
}

/// Most fields one group may hold.
pub const MAX_MEMBERS: usize = 16;

/// The lower Cholesky factor of a symmetric positive semi-definite matrix (row-major), or why
/// the matrix is not one.
// Index loops read as the textbook algorithm; iterators would hide the i/j symmetry.
#[allow(clippy::needless_range_loop)]
pub fn cholesky_psd(r: &[Vec<f64>]) -> Result<Vec<f64>, String> {
    let n = r.len();
    const TOL: f64 = 1e-9;
    for i in 0..n {
        for j in 0..i {
            if (r[i][j] - r[j][i]).abs() > TOL {
                return Err(format!(
                    "must be symmetric: [{i}][{j}] = {} but [{j}][{i}] = {}",
                    r[i][j], r[j][i]
                ));
            }
        }
    }
    let mut l = vec![0f64; n * n];
    for j in 0..n {
        let d = r[j][j] - (0..j).map(|k| l[j * n + k] * l[j * n + k]).sum::<f64>();
        if d < -TOL {
            return Err(format!("is not positive semi-definite (pivot {j} is {d:.3e})"));
        }
        let pivot = if d > TOL { d.sqrt() } else { 0.0 };
        l[j * n + j] = pivot;
        for i in j + 1..n {
            let s = r[i][j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if pivot == 0.0 {
                if s.abs() > 1e-7 {
                    return Err(format!(
                        "is not positive semi-definite (row {i} leans on the degenerate row {j})"
                    ));
                }
            } else {
                l[i * n + j] = s / pivot;
            }
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_xoshiro::Xoroshiro128PlusPlus;
    use rand_xoshiro::rand_core::SeedableRng;

    #[test]
    fn the_factor_multiplies_back_to_the_matrix() {
        let r = vec![vec![1.0, 0.6, -0.3], vec![0.6, 1.0, 0.2], vec![-0.3, 0.2, 1.0]];
        let l = cholesky_psd(&r).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| l[i * 3 + k] * l[j * 3 + k]).sum();
                assert!((v - r[i][j]).abs() < 1e-12, "[{i}][{j}] {v}");
            }
        }
    }

    #[test]
    fn a_singular_but_semi_definite_matrix_is_accepted() {
        let l = cholesky_psd(&[vec![1.0, 1.0], vec![1.0, 1.0]]).unwrap();
        assert_eq!(l, vec![1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn asymmetric_or_indefinite_matrices_are_refused() {
        assert!(cholesky_psd(&[vec![1.0, 0.5], vec![0.4, 1.0]]).unwrap_err().contains("symmetric"));
        let e = cholesky_psd(&[vec![1.0, 0.9, 0.9], vec![0.9, 1.0, -0.9], vec![0.9, -0.9, 1.0]]);
        assert!(e.unwrap_err().contains("positive semi-definite"));
    }

    #[test]
    fn draws_have_the_configured_moments() {
        let r = vec![vec![1.0, -0.7], vec![-0.7, 1.0]];
        let sd = [2.0, 5.0];
        let mut factor = cholesky_psd(&r).unwrap();
        for i in 0..2 {
            for k in 0..2 {
                factor[i * 2 + k] *= sd[i];
            }
        }
        let g = CorrelatedGroup {
            name: "env".into(),
            members: vec![1, 0],
            means: vec![22.0, 50.0],
            factor,
            decimals: vec![None, None],
            slot: 0,
        };
        let mut slot = SlotState { rng: Xoroshiro128PlusPlus::seed_from_u64(1), x: 0.0 };
        let n = 100_000;
        let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut out = [Sample::Static; 2];
        for _ in 0..n {
            g.draw(&mut slot, &mut out);
            if let [Sample::Number(y), Sample::Number(x)] = out {
                a.push(x);
                b.push(y);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (ma, mb) = (mean(&a), mean(&b));
        let sa = (a.iter().map(|x| (x - ma).powi(2)).sum::<f64>() / n as f64).sqrt();
        let sb = (b.iter().map(|x| (x - mb).powi(2)).sum::<f64>() / n as f64).sqrt();
        let rho =
            a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / (n as f64 * sa * sb);
        // Standard errors at n = 1e5: mean 0.006 and 0.016, sd ~0.5%, rho (1-rho²)/sqrt(n) = 0.0016.
        assert!((ma - 22.0).abs() < 0.03 && (mb - 50.0).abs() < 0.08, "means {ma} {mb}");
        assert!((sa / 2.0 - 1.0).abs() < 0.02 && (sb / 5.0 - 1.0).abs() < 0.02, "sds {sa} {sb}");
        assert!((rho + 0.7).abs() < 0.01, "rho {rho}");
    }
}
