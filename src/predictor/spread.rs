//! How the spread of a tool's runtimes changes with its arguments: a second, small
//! regression, of the log squared one-step residual on the features' linear terms.
//!
//! The main model's residual spread σ is one number per tool; a query over a few rows is
//! steady while one over ten million rows may run anywhere from a quarter to four times
//! its median. With one σ the bound is too wide for small calls and too narrow for the
//! large ones, which are the calls that sit near the budget: a calibrated bound there
//! still let them run late. So each call's scale is multiplied by `√f(x)` with
//!
//! ```text
//! z = ln(e² + ε)      ẑ(x) = xᵀγ  (ridge regression on x = [1, u₁−c₁, u₂−c₂, …])
//! f(x) = exp(ẑ(x) − z̄),   clamped to [1/MAX_SPREAD_FACTOR, MAX_SPREAD_FACTOR]
//! ```
//!
//! where `e` is the residual of a run under the model before it was taught, `z̄` the
//! discounted mean of `z` (so a tool whose spread does not move keeps `f ≈ 1`: the
//! fitted values of a regression with an intercept average to the mean), and the
//! statistics are discounted by the same forgetting factor as the main model's. This is
//! the log-variance regression of Harvey (*Estimating regression models with
//! multiplicative heteroscedasticity*, Econometrica 44, 1976), fitted online; the
//! constant `E[ln χ²₁]` it leaves in the intercept cancels in `ẑ − z̄`. The slopes are
//! ridged to a few pseudo-observations, so with little data `f` is 1.
//!
//! Like the recency term, it is used only while its own record is better: each run's
//! residual is scored under a normal with the plain variance `v` and with `v·f(x)`
//! (`ln f + e²/(v f)` against `e²/v`, discounted), and `f` moves bounds only while its
//! loss is the lower. Where the spread ignores the arguments (a tool whose runtime is
//! noise), slopes fitted to noise would narrow some bounds for nothing.

use serde::{Deserialize, Serialize};

use super::linalg::{cholesky_into, cholesky_solve_into, discounted_update, dot, grow_system};
use super::{FORGETTING_FACTOR, MIN_SCALE};

/// The factor on the variance never leaves `[1/16, 16]`: the scale moves by ×4 at most.
pub const MAX_SPREAD_FACTOR: f64 = 16.0;
/// Prior precision of each slope of the log-variance, in pseudo-observations at the
/// feature's typical scale. Light, because the record decides whether the fit is used
/// at all: on the replay traces 20 left `growing_noise` 9% worse, and 2 with the record
/// left `no_signal` (whose spread ignores its arguments) where 20 did.
pub const SPREAD_RIDGE: f64 = 2.0;
/// Discounted runs the spread model needs before it moves a bound.
pub const SPREAD_MIN_WEIGHT: f64 = 10.0;
/// Squared residuals are floored here before the log: a run that hit its prediction
/// exactly would otherwise pull `ln(e²)` to minus infinity.
const MIN_SQUARED_RESIDUAL: f64 = 1e-6;

/// The discounted sufficient statistics of the log-variance regression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Spread {
    /// `XᵀX` over `[1, u₁−c₁, …]`, row-major, `(1 + slots)²`.
    xtx: Vec<f64>,
    /// `Xᵀz`; its first cell is `Σz`.
    xtz: Vec<f64>,
    weight: f64,
    /// Discounted Gaussian losses of the residuals, without the factor and with it.
    plain_loss: f64,
    spread_loss: f64,
}

/// The fitted log-variance: formed with the posterior, never persisted.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SpreadFit {
    coefficients: Vec<f64>,
    mean_z: f64,
    /// The factorisation it was solved with, kept to be formed again in place.
    lower: Vec<f64>,
}

impl Spread {
    /// Statistics for `slots` features, nothing learned.
    pub(super) fn new(slots: usize) -> Spread {
        let dim = 1 + slots;
        Spread {
            xtx: vec![0.0; dim * dim],
            xtz: vec![0.0; dim],
            weight: 0.0,
            plain_loss: 0.0,
            spread_loss: 0.0,
        }
    }

    /// Whether the sizes fit `slots` features (a stored state is checked).
    pub(super) fn fits(&self, slots: usize) -> bool {
        let dim = 1 + slots;
        self.xtx.len() == dim * dim && self.xtz.len() == dim
    }

    /// Makes room for features added since: their past rows count at the center, 0.
    pub(super) fn grow(&mut self, slots: usize) {
        grow_system(&mut self.xtx, &mut self.xtz, 1 + slots);
    }

    /// Whether the factor's record beats the plain spread's.
    pub(super) fn helps(&self) -> bool {
        self.weight >= SPREAD_MIN_WEIGHT && self.spread_loss < self.plain_loss
    }

    /// Learns one run's residual; `design` is the main model's row
    /// (`[1, lin₁, sq₁, lin₂, sq₂, …]`), whose intercept and linear terms are used;
    /// `variance` is the plain model's and `factor` what the fit said for this run (both
    /// from before it was taught), for the record.
    pub(super) fn learn(
        &mut self,
        design: &[f64],
        residual: f64,
        variance: f64,
        factor: Option<f64>,
    ) {
        let squared = residual * residual;
        if let Some(factor) = factor.filter(|_| variance > 0.0) {
            self.plain_loss = FORGETTING_FACTOR * self.plain_loss + squared / variance;
            self.spread_loss =
                FORGETTING_FACTOR * self.spread_loss + factor.ln() + squared / (variance * factor);
        }
        let z = squared.max(MIN_SQUARED_RESIDUAL).ln();
        let dim = self.xtz.len();
        let x = linear_terms(design, dim);
        discounted_update(
            &mut self.xtx,
            &mut self.xtz,
            &x[..dim],
            z,
            FORGETTING_FACTOR,
        );
        self.weight = FORGETTING_FACTOR * self.weight + 1.0;
    }

    /// The fitted log-variance, once there are enough runs; `None` before (or if the
    /// system will not factor). Formed in the buffers of `previous`, as the posterior
    /// is: a tool's model forms both after every run, and deciding allocates nothing.
    pub(super) fn fit(&self, previous: Option<SpreadFit>) -> Option<SpreadFit> {
        if self.weight < SPREAD_MIN_WEIGHT {
            return None;
        }
        let dim = self.xtz.len();
        let weight = self.weight;
        let matrix = |i: usize, j: usize| {
            let cell = self.xtx[i * dim + j];
            match (i == j, i) {
                (false, _) => cell,
                // The intercept is barely held: the level is the data's.
                (true, 0) => cell + 1e-6 * weight,
                (true, _) => cell + SPREAD_RIDGE * (cell / weight).max(MIN_SCALE),
            }
        };
        let (mut lower, mut coefficients) =
            previous.map_or_else(Default::default, |fit| (fit.lower, fit.coefficients));
        if !cholesky_into(&mut lower, dim, matrix) {
            return None;
        }
        cholesky_solve_into(&mut coefficients, &lower, dim, &self.xtz);
        Some(SpreadFit {
            coefficients,
            mean_z: self.xtz[0] / weight,
            lower,
        })
    }
}

impl SpreadFit {
    /// The factor on the variance of a call with this design row.
    pub(super) fn factor(&self, design: &[f64]) -> f64 {
        let dim = self.coefficients.len();
        let x = linear_terms(design, dim);
        let log_factor = dot(&self.coefficients, &x[..dim]) - self.mean_z;
        log_factor
            .exp()
            .clamp(1.0 / MAX_SPREAD_FACTOR, MAX_SPREAD_FACTOR)
    }
}

/// `[1, lin₁, lin₂, …]` of a main design row, on the stack.
fn linear_terms(design: &[f64], dim: usize) -> [f64; 1 + super::MAX_SLOTS] {
    let mut x = [0.0; 1 + super::MAX_SLOTS];
    x[0] = 1.0;
    for (slot, value) in x.iter_mut().enumerate().take(dim).skip(1) {
        *value = design.get(2 * slot - 1).copied().unwrap_or(0.0);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn a_spread_that_grows_with_a_feature_is_learned_and_a_flat_one_stays_flat() {
        let mut rng = StdRng::seed_from_u64(4);
        let (mut growing, mut flat) = (Spread::new(1), Spread::new(1));
        for i in 0..2000 {
            let u = f64::from(i % 10) - 4.5;
            // σ from 0.1 to 0.9 across u
            let sigma = 0.5 + 0.08 * u;
            let e = Normal::new(0.0, sigma).map_or(0.0, |d| d.sample(&mut rng));
            let flat_e = Normal::new(0.0, 0.5).map_or(0.0, |d| d.sample(&mut rng));
            let (fit_growing, fit_flat) = (growing.fit(None), flat.fit(None));
            let factor_at = |fit: Option<SpreadFit>| fit.map(|fit| fit.factor(&[1.0, u, u * u]));
            growing.learn(&[1.0, u, u * u], e, 0.25, factor_at(fit_growing));
            flat.learn(&[1.0, u, u * u], flat_e, 0.25, factor_at(fit_flat));
        }
        assert!(growing.helps(), "{growing:?}");
        let growing = growing.fit(None).unwrap();
        let (low, high) = (
            growing.factor(&[1.0, -4.5, 0.0]),
            growing.factor(&[1.0, 4.5, 0.0]),
        );
        // The true variance ratio is (0.86/0.14)² ≈ 38: clamped, and clearly apart.
        assert!(high / low > 8.0, "{low} {high}");
        let flat = flat.fit(None).unwrap();
        for u in [-4.5, 0.0, 4.5] {
            let factor = flat.factor(&[1.0, u, 0.0]);
            assert!((factor - 1.0).abs() < 0.35, "{u}: {factor}");
        }
    }

    #[test]
    fn it_waits_for_enough_runs_and_grows_with_the_model() {
        let mut spread = Spread::new(0);
        spread.learn(&[1.0], 0.3, 0.1, None);
        assert!(spread.fit(None).is_none());
        spread.grow(2);
        assert!(spread.fits(2) && !spread.fits(1));
        for _ in 0..20 {
            spread.learn(&[1.0, 0.5, 0.25, -0.5, 0.25], 0.3, 0.1, None);
        }
        let fit = spread.fit(None).unwrap();
        // Formed again in its own buffers, it is the same fit.
        assert_eq!(spread.fit(Some(fit.clone())), Some(fit.clone()));
        assert!(fit.factor(&[1.0, 0.0, 0.0, 0.0, 0.0]).is_finite());
    }
}
