//! The recency term: an AR(1) model of the one-step residuals, kept as discounted sums
//! so it costs O(1) per call and is chosen only while its own record beats the plain
//! model's (see the parent module's docs, "Recency").

use serde::{Deserialize, Serialize};

use super::{AR_MIN_ERRORS, AR_PRIOR_WEIGHT, FORGETTING_FACTOR, MAX_AR_COEFFICIENT};

/// Discounted sums behind the AR(1) term on one-step residuals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Recency {
    last_residual: Option<f64>,
    /// Σ e_t · e_{t-1}
    cross: f64,
    /// Σ e_{t-1}²
    lagged: f64,
    /// Σ of squared one-step errors of the plain model, and of the model with recency.
    plain_sq: f64,
    recency_sq: f64,
    errors: f64,
}

impl Recency {
    #[inline]
    pub(super) fn coefficient(&self) -> f64 {
        (self.cross / (self.lagged + AR_PRIOR_WEIGHT))
            .clamp(-MAX_AR_COEFFICIENT, MAX_AR_COEFFICIENT)
    }

    /// The shift to add to the location and the factor on the scale, when the term's
    /// own record says it helps.
    #[inline]
    pub(super) fn adjustment(&self) -> Option<(f64, f64)> {
        let last = self.last_residual?;
        let helps = self.errors >= AR_MIN_ERRORS && self.recency_sq < self.plain_sq;
        helps.then(|| {
            (
                self.coefficient() * last,
                (self.recency_sq / self.plain_sq).sqrt(),
            )
        })
    }

    pub(super) fn learn(&mut self, residual: f64) {
        if let Some(last) = self.last_residual {
            let with_recency = residual - self.coefficient() * last;
            self.plain_sq = FORGETTING_FACTOR * self.plain_sq + residual * residual;
            self.recency_sq = FORGETTING_FACTOR * self.recency_sq + with_recency * with_recency;
            self.errors = FORGETTING_FACTOR * self.errors + 1.0;
            self.cross = FORGETTING_FACTOR * self.cross + residual * last;
            self.lagged = FORGETTING_FACTOR * self.lagged + last * last;
        }
        self.last_residual = Some(residual);
    }
}
