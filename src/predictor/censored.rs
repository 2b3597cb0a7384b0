//! Runs that ended without a runtime: cancelled, cut off at shutdown, stopped by their
//! hard timeout. Such a run ran *at least* its elapsed time `c`: a right-censored sample.
//!
//! # The rule: one expectation step per censored run
//! The model is taught the run's expected `ln(runtime)` given that it exceeded the cut,
//! under the model's current prediction for the call, as the Buckley–James estimator for
//! censored linear regression does (Buckley & James, *Linear regression with censored
//! data*, Biometrika 66(3), 1979): the expectation step of EM for a Tobit model (Tobin,
//! *Estimation of relationships for limited dependent variables*, Econometrica 26, 1958),
//! taken once per run, online, rather than iterated over the whole history. With the
//! prediction's location μ and the residual spread σ (the posterior's, without the
//! parameters' own uncertainty), the mean of a normal truncated below at `ln c` is
//!
//! ```text
//! a = (ln c − μ) / σ        E[y | y > ln c] = μ + σ · φ(a) / (1 − Φ(a))
//! ```
//!
//! (the inverse Mills ratio; e.g. Greene, *Econometric Analysis*, §19.2). It is always
//! above the cut: a run cut off far past what the model expects teaches a value just
//! above the cut, so a tool that is always cut off at 2 s is learned as running a little
//! longer than 2 s, then longer still as the cuts keep coming; a run cut off early (a
//! user who changed their mind after a second) teaches about what the model already
//! expects, and so moves nothing.
//!
//! The normal stands in for the predictive Student-t, and σ leaves out the parameters'
//! uncertainty: with few samples the latter is huge (the intercept's prior is nearly
//! flat), and an imputation from it would send a cut at 2 s to days.

use statrs::function::erf::erfc;

/// `φ(a) / (1 − Φ(a))`, the standard normal's inverse Mills ratio, accurate in both
/// tails: past `a = 8` the survival function underflows, and the ratio is its
/// asymptotic series.
pub(super) fn inverse_mills_ratio(a: f64) -> f64 {
    if a > 8.0 {
        return a + 1.0 / a - 2.0 / (a * a * a);
    }
    let density = (-0.5 * a * a).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let survival = 0.5 * erfc(a / std::f64::consts::SQRT_2);
    density / survival
}

/// The `ln(runtime)` a run cut off at `ln_cut` is taught as, under a prediction with
/// location `location_ln` and residual spread `spread_ln`.
pub(super) fn expected_above(ln_cut: f64, location_ln: f64, spread_ln: f64) -> f64 {
    if !(spread_ln.is_finite() && spread_ln > 0.0) {
        return ln_cut.max(location_ln);
    }
    let a = (ln_cut - location_ln) / spread_ln;
    (location_ln + spread_ln * inverse_mills_ratio(a)).max(ln_cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_ratio_matches_known_values() {
        // φ(0)/(1−Φ(0)) = 2φ(0) = 0.7979
        assert!((inverse_mills_ratio(0.0) - 0.797_884_56).abs() < 1e-6);
        // At 2: 0.053991 / 0.022750 = 2.3732
        assert!((inverse_mills_ratio(2.0) - 2.373_215_7).abs() < 1e-5);
        // The series joins the exact value at the switch.
        let below = inverse_mills_ratio(7.999_999);
        let above = inverse_mills_ratio(8.000_001);
        assert!((below - above).abs() < 1e-3, "{below} {above}");
        // Far below the cut the run says nothing: the mean.
        assert!(inverse_mills_ratio(-30.0) < 1e-100);
    }

    proptest! {
        /// What a censored run teaches is above its cut, and never below the location.
        #[test]
        fn the_imputation_is_above_the_cut(cut in -10.0f64..10.0, location in -10.0f64..10.0, spread in 0.01f64..5.0) {
            let y = expected_above(cut, location, spread);
            prop_assert!(y.is_finite());
            prop_assert!(y >= cut);
            prop_assert!(y >= location - 1e-9);
        }
    }
}
