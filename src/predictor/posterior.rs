//! The posterior a model's sufficient statistics give under its Normal–Inverse-Gamma
//! prior, and the Student-t quantile of its bound: formed on demand from the state,
//! never persisted.

use statrs::distribution::{ContinuousCDF, StudentsT};

use super::linalg::{cholesky_into, cholesky_solve_into, dot};
use super::{
    dim_for, ModelState, INTERCEPT_RIDGE, LINEAR_RIDGE, MIN_SCALE, PRIOR_SCALE, PRIOR_SHAPE,
    SQUARE_RIDGE,
};

/// Derived from the state; never persisted.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Posterior {
    pub(super) mean: Vec<f64>,
    /// Lower Cholesky factor of Λₙ, row-major.
    pub(super) cholesky: Vec<f64>,
    /// `bₙ / aₙ`
    pub(super) variance: f64,
    pub(super) dof: f64,
    /// How the variance moves with the features, once learned.
    pub(super) spread: Option<super::spread::SpreadFit>,
}

/// The Student-t quantile at `1 - risk` for `dof` on the grid ([`quantile_dof`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BoundQuantile {
    /// The grid point and risk it is for.
    key: (f64, f64),
    pub(super) value: f64,
}

/// The degrees of freedom the bound's quantile is computed at: rounded down (a little
/// wider, never narrower) to a grid, so the costly inverse CDF runs only when the grid
/// point changes, and the quantile stays a pure function of the state.
#[inline]
fn quantile_dof(dof: f64) -> f64 {
    if dof < 16.0 {
        (dof * 4.0).floor() / 4.0
    } else {
        dof.floor()
    }
}

/// The bound quantile for `dof` and `risk`, reusing `previous` when it is for the same
/// grid point.
#[inline]
pub(super) fn bound_quantile(
    dof: f64,
    risk: f64,
    previous: Option<BoundQuantile>,
) -> Option<BoundQuantile> {
    let key = (quantile_dof(dof), risk);
    if let Some(previous) = previous.filter(|previous| previous.key == key) {
        return Some(previous);
    }
    let value = StudentsT::new(0.0, 1.0, key.0)
        .ok()?
        .inverse_cdf(1.0 - risk);
    value.is_finite().then_some(BoundQuantile { key, value })
}

/// The prior precision `Λ₀ᵢᵢ` of coefficient `index`, given `Σx²` of its regressor.
///
/// The ridge is scaled to each regressor's mean square, so it means the same number of
/// pseudo-observations whether a feature counts files (u ≈ 2) or bytes (u² ≈ 400):
/// with one fixed ridge the square of a large feature would soak up the first samples
/// and the intercept would stay at its prior.
pub fn ridge(index: usize, sum_of_squares: f64, weight: f64) -> f64 {
    let strength = match index {
        0 => INTERCEPT_RIDGE,
        i if i % 2 == 1 => LINEAR_RIDGE,
        _ => SQUARE_RIDGE,
    };
    strength * (sum_of_squares / weight.max(1.0)).max(MIN_SCALE)
}

/// The posterior of `state`, formed in the buffers of `previous`.
pub(super) fn posterior(state: &ModelState, previous: Option<Posterior>) -> Option<Posterior> {
    let dim = dim_for(state.feature_names.len());
    let (mut cholesky, mut mean, spread) = match previous {
        Some(p) => (p.cholesky, p.mean, p.spread),
        None => (Vec::new(), Vec::new(), None),
    };
    let matrix = |i: usize, j: usize| {
        let cell = state.xtx[i * dim + j];
        if i == j {
            cell + ridge(i, cell, state.weight)
        } else {
            cell
        }
    };
    if !cholesky_into(&mut cholesky, dim, matrix) {
        return None;
    }
    cholesky_solve_into(&mut mean, &cholesky, dim, &state.xty);
    let shape = PRIOR_SHAPE + state.weight / 2.0;
    // yᵀy − mₙᵀXᵀy is a sum of squares; rounding can push it a hair below zero.
    let scale = PRIOR_SCALE + 0.5 * (state.yty - dot(&mean, &state.xty)).max(0.0);
    let dof = 2.0 * shape;
    Some(Posterior {
        mean,
        cholesky,
        variance: scale / shape,
        dof,
        spread: state.spread.as_ref().and_then(|model| model.fit(spread)),
    })
}
