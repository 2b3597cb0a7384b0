//! Online calibration of a model's bound: how the bounds that decided calls held, and
//! the offset that keeps their miss rate at the risk asked for, whatever the model's
//! own spread says.
//!
//! # The rule: quantile tracking (conformal PID control, its P part)
//! The bound is `location + (t_{1−α}(ν) + offset) · scale` in `ln(runtime)`: the model's
//! own Student-t quantile plus an offset in units of its scale. After each checked call,
//!
//! ```text
//! offset ← clamp(offset + η · (miss − α), −MAX_CALIBRATION_OFFSET, MAX_CALIBRATION_OFFSET)
//! ```
//!
//! with `miss = 1` when the runtime went past the bound. This is online gradient descent
//! on the pinball loss of the bound: the quantile tracker of Angelopoulos, Candès &
//! Tibshirani, *Conformal PID Control for Time Series Prediction* (NeurIPS 2023, §2.1),
//! which refines adaptive conformal inference (Gibbs & Candès, NeurIPS 2021) by moving
//! the bound itself rather than its level, so no inverse CDF is taken per call.
//!
//! **The guarantee** (their Proposition 1): for any sequence of runtimes, drifting or
//! adversarial, while the offset stays inside the clamp, the realised miss rate over
//! `T` checked calls is within `(MAX_CALIBRATION_OFFSET + η) / (η·T)` of α. A model whose
//! spread is too wide (runs that repeat: coverage 0.97–0.98 against 0.95) gets its bound
//! pulled in; one that is too narrow gets it pushed out.
//!
//! **The step** η = [`CALIBRATION_STEP`] = 0.05 scales: near the bound a Student-t's
//! density is about 0.1–0.3 per scale, so the offset corrects a coverage error with a
//! time constant of roughly `1/(η · 0.2) ≈ 100` checked calls, about twice the model's
//! own memory (50 calls, see `FORGETTING_FACTOR`), and its stationary jitter moves
//! coverage by about ±2 points. A step of 0.02 took several hundred calls to follow
//! the drift trace; 0.1 made bounds jitter enough to cost waste on stationary traces.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// η: how far one checked call moves the offset, in units of the bound's scale.
pub const CALIBRATION_STEP: f64 = 0.05;
/// The offset never moves the bound more than this many scales from the model's own
/// quantile: a tool whose runtimes jumped by orders of magnitude is followed by the
/// model itself within its memory, and the guarantee above needs a bounded offset.
pub const MAX_CALIBRATION_OFFSET: f64 = 4.0;

/// How well the bounds a model gave for the calls they decided held, and the offset
/// that calibrates the next ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Deciding predictions checked against the runtime that followed.
    pub checked: u64,
    /// Of those, how many runtimes were at or under the upper bound.
    pub covered: u64,
    /// Sum of `|ln(runtime) - location|` over the checked predictions with a runtime.
    pub abs_error_ln_sum: f64,
    /// Added to the model's own quantile, in units of its scale (see the module docs).
    pub offset: f64,
}

impl Calibration {
    /// Share of runtimes at or under the bound; `None` before any check.
    pub fn coverage(&self) -> Option<f64> {
        (self.checked > 0).then(|| self.covered as f64 / self.checked as f64)
    }

    /// Mean absolute error of `ln(runtime)`; `None` before any check.
    pub fn mean_abs_error_ln(&self) -> Option<f64> {
        (self.checked > 0).then(|| self.abs_error_ln_sum / self.checked as f64)
    }

    /// Hears whether a bound that aimed at missing with probability `risk` missed.
    pub fn track(&mut self, missed: bool, risk: f64) {
        self.checked += 1;
        self.covered += u64::from(!missed);
        let step = CALIBRATION_STEP * (f64::from(u8::from(missed)) - risk);
        self.offset = (self.offset + step).clamp(-MAX_CALIBRATION_OFFSET, MAX_CALIBRATION_OFFSET);
    }
}

/// The level of the model's own predictive distribution (Student-t with `dof`) that a
/// bound at risk `risk` plus `offset` sits at: `F(t_{1−risk} + offset)`. With a
/// well-spread model it is `1 − risk`; below it, the model was too wide.
pub fn bound_level(dof: f64, risk: f64, offset: f64) -> Option<f64> {
    let t = StudentsT::new(0.0, 1.0, dof).ok()?;
    let level = t.cdf(t.inverse_cdf(1.0 - risk) + offset);
    level.is_finite().then_some(level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// Tracks a stream of standard normal scores against a base quantile `z` (what the
    /// model thinks its 1−risk quantile is), `scale` the true spread of the scores.
    fn tracked(
        calibration: &mut Calibration,
        rng: &mut StdRng,
        calls: usize,
        z: f64,
        shift: f64,
    ) -> f64 {
        let mut missed = 0;
        for _ in 0..calls {
            let score: f64 = Normal::new(shift, 1.0).map_or(0.0, |d| d.sample(rng));
            let miss = score > z + calibration.offset;
            missed += usize::from(miss);
            calibration.track(miss, 0.1);
        }
        missed as f64 / calls as f64
    }

    #[test]
    fn it_converges_on_a_stationary_stream() {
        // The model's quantile is far too wide (3 instead of 1.28): the tracker pulls it
        // in until 10% miss.
        let mut rng = StdRng::seed_from_u64(1);
        let mut calibration = Calibration::default();
        tracked(&mut calibration, &mut rng, 1000, 3.0, 0.0);
        let miss_rate = tracked(&mut calibration, &mut rng, 20_000, 3.0, 0.0);
        assert!((miss_rate - 0.1).abs() < 0.01, "{miss_rate}");
        assert!(
            (calibration.offset - (1.2816 - 3.0)).abs() < 0.3,
            "{calibration:?}"
        );
    }

    #[test]
    fn it_follows_a_step_change() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut calibration = Calibration::default();
        tracked(&mut calibration, &mut rng, 2000, 1.2816, 0.0);
        let before = calibration.offset;
        // The runtimes jump by two scales: the bound follows within a few hundred calls.
        tracked(&mut calibration, &mut rng, 500, 1.2816, 2.0);
        let after = tracked(&mut calibration, &mut rng, 5000, 1.2816, 2.0);
        assert!(
            (calibration.offset - before - 2.0).abs() < 0.4,
            "{before} → {calibration:?}"
        );
        assert!((after - 0.1).abs() < 0.015, "{after}");
    }

    #[test]
    fn a_calibrated_model_sits_at_its_own_level() {
        let level = bound_level(1e6, 0.05, 0.0).unwrap();
        assert!((level - 0.95).abs() < 1e-6, "{level}");
        assert!(bound_level(10.0, 0.05, -1.0).unwrap() < 0.95);
    }

    proptest! {
        /// The offset stays inside its clamp and the counts stay consistent, whatever
        /// the sequence of misses and risks.
        #[test]
        fn it_stays_in_range(misses in prop::collection::vec((any::<bool>(), 0.001f64..0.999), 0..2000)) {
            let mut calibration = Calibration::default();
            for (missed, risk) in misses {
                calibration.track(missed, risk);
                prop_assert!(calibration.offset.abs() <= MAX_CALIBRATION_OFFSET);
                prop_assert!(calibration.covered <= calibration.checked);
            }
        }

        /// The guarantee: over any sequence that keeps the offset off its clamp, the
        /// miss rate is within (B + η)/(ηT) of the risk.
        #[test]
        fn the_long_run_miss_rate_is_the_risk(seed in 0u64..1000, shift in -2.0f64..2.0) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut calibration = Calibration::default();
            let calls = 4000;
            let mut missed = 0;
            for _ in 0..calls {
                let score = shift + rng.random_range(-1.0..1.0);
                let miss = score > calibration.offset;
                missed += usize::from(miss);
                calibration.track(miss, 0.2);
            }
            let bound = (MAX_CALIBRATION_OFFSET + CALIBRATION_STEP) / (CALIBRATION_STEP * calls as f64);
            prop_assert!((missed as f64 / calls as f64 - 0.2).abs() <= bound);
        }
    }
}
