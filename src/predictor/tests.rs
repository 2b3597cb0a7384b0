//! Unit tests of the runtime model through its public face: learning, prediction,
//! calibration, drift, recency, feature slots and serialisation.

use proptest::prelude::*;
use serde_json::json;

use super::*;

#[test]
fn a_feature_that_lives_below_1_extrapolates_along_its_own_scale() {
    // Seconds from 0.05 to 0.6 (plus 10 ms of overhead), then a call of 30 s: with
    // ln(1+|f|) alone the slope at the edge is that of ln(s) near 0 and the
    // prediction came out near 8,000 s.
    let mut model = RuntimeModel::new(true);
    for i in 0..12 {
        let seconds = 0.05 + 0.05 * f64::from(i);
        let features = Features::from_args(&serde_json::json!({ "seconds": seconds }));
        model.observe(&features, seconds + 0.01);
    }
    let long = Features::from_args(&serde_json::json!({ "seconds": 30.0 }));
    let predicted = model.predict(&long, 0.05).unwrap().median_s;
    assert!(
        (10.0..=90.0).contains(&predicted),
        "predicted {predicted} s for a 30 s call"
    );
}

/// Found by the conformance fixture: in the model pooled over all tools, a call of
/// `test_elicitation {message}` counted the `prompt` another tool had once been
/// called with as 0, far from the one value seen; the bound came out at 10¹⁹ s and
/// a 10 ms call went to the background.
#[test]
fn a_name_absent_from_a_call_is_unknown_not_zero() {
    let mut model = RuntimeModel::new(true);
    let calls = [
        (json!({}), 0.0005),
        (json!({}), 0.0004),
        (json!({}), 0.0004),
        (json!({}), 0.0005),
        (json!({}), 0.16),
        (json!({}), 3.3),
        (json!({ "prompt": "Test prompt for sampling" }), 0.01),
    ];
    for (args, runtime_s) in &calls {
        model.observe(&Features::from_args(args), *runtime_s);
    }
    let other_tool = Features::from_args(&json!({ "message": "Please provide your name" }));
    let without = model.predict(&other_tool, 0.05).unwrap();
    let none = model
        .predict(&Features::from_args(&json!({})), 0.05)
        .unwrap();
    assert!(without.upper_bound_s < 50.0, "{without:?}");
    // Absent, the argument moves nothing: the call is predicted as one without it.
    assert!((without.upper_bound_s - none.upper_bound_s).abs() < 1e-9 * none.upper_bound_s);
    // Present, it still speaks.
    let longer = Features::from_args(&json!({ "prompt": "x".repeat(5000) }));
    assert!(model.predict(&longer, 0.05).unwrap().upper_bound_s > without.upper_bound_s);
}

/// A small deterministic generator, so the statistical tests are reproducible.
struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        // Box–Muller
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn call(args: serde_json::Value) -> Features {
    Features::from_args(&args)
}

#[test]
fn an_empty_model_is_cold_and_still_has_a_wide_bound() {
    let model = RuntimeModel::new(true);
    assert!(!model.is_warm());
    let prediction = model.predict(&Features::default(), 0.05).unwrap();
    // Prior only: median 1 s, bound far above it.
    assert!((prediction.median_s - 1.0).abs() < 1e-9);
    assert!(prediction.upper_bound_s > 2.0);
}

#[test]
fn one_sample_gives_a_bound_that_is_wide() {
    let mut model = RuntimeModel::new(true);
    model.observe(&call(json!({})), 10.0);
    let p = model.predict(&call(json!({})), 0.05).unwrap();
    assert!((p.median_s.ln() - 10f64.ln()).abs() < 0.1);
    assert!(p.upper_bound_s > 1.5 * p.median_s, "{p:?}");
}

#[test]
fn zero_variance_runtimes_give_a_tight_but_positive_spread() {
    let mut model = RuntimeModel::new(false);
    for _ in 0..200 {
        model.observe(&call(json!({})), 3.0);
    }
    let p = model.predict(&call(json!({})), 0.05).unwrap();
    assert!((p.median_s - 3.0).abs() < 0.01);
    // The prior keeps a floor under the spread, sqrt(b₀ / (a₀ + 1/(2(1-λ)))) ≈ 0.1,
    // so a model never claims to know a runtime to the millisecond.
    assert!(
        p.upper_bound_s > p.median_s && p.upper_bound_s < 1.25 * p.median_s,
        "{p:?}"
    );
}

#[test]
fn the_95_bound_covers_at_least_93_percent_on_log_linear_data() {
    // ln(rt) = 0.5 + 0.8 ln(1+items) - 0.3 ln(1+depth) + N(0, 0.3²)
    let mut rng = Lcg(7);
    let mut model = RuntimeModel::new(true);
    let (mut checked, mut covered) = (0, 0);
    for i in 0..2000 {
        let items = (rng.uniform() * 1000.0).floor();
        let depth = (rng.uniform() * 10.0).floor();
        let features = call(json!({"items": items, "depth": depth}));
        let y = 0.5 + 0.8 * items.ln_1p() - 0.3 * depth.ln_1p() + 0.3 * rng.normal();
        if i >= 50 {
            let prediction = model.predict(&features, 0.05).unwrap();
            checked += 1;
            covered += usize::from(y.exp() <= prediction.upper_bound_s);
            model.score(prediction.median_s, prediction.upper_bound_s, 0.05, y.exp());
        }
        model.observe(&features, y.exp());
    }
    let coverage = covered as f64 / checked as f64;
    assert!(coverage >= 0.93, "coverage {coverage}");
    assert!(
        coverage <= 0.99,
        "a bound this loose is useless: {coverage}"
    );
    let tracked = model.calibration();
    assert_eq!(tracked.checked, checked as u64);
    assert_eq!(tracked.covered, covered as u64, "scored as counted here");
    assert!(
        (coverage - 0.95).abs() < 0.015,
        "calibrated to its target: {coverage}"
    );
}

/// Censored learning (issue 18): a tool whose every call is cut off at 2 s learns that it
/// runs longer than 2 s, where a model that dropped them would know nothing.
#[test]
fn runs_always_cut_off_at_two_seconds_are_learned_as_longer() {
    let mut model = RuntimeModel::new(true);
    let features = call(json!({"scenario": "full"}));
    for _ in 0..10 {
        model.observe_at_least(&features, 2.0);
    }
    assert!(model.is_warm());
    assert_eq!((model.samples(), model.censored()), (10, 10));
    let prediction = model.predict(&features, 0.05).unwrap();
    assert!(prediction.median_s > 2.0, "{prediction:?}");
    // A run cut off after 1 ms says nothing and is not taught.
    model.observe_at_least(&features, 1e-4);
    assert_eq!(model.samples(), 10);
}

/// A run cancelled early, long before a slow tool's usual runtime, does not pull its
/// model down: it is taught about what the model already expects.
#[test]
fn an_early_cancel_leaves_a_slow_tool_slow() {
    let mut model = RuntimeModel::new(true);
    let features = call(json!({"n": 1}));
    let mut rng = Lcg(3);
    for _ in 0..40 {
        model.observe(&features, 100.0 * (0.2 * rng.normal()).exp());
    }
    let before = model.predict(&features, 0.05).unwrap().median_s;
    for _ in 0..5 {
        model.observe_at_least(&features, 1.0);
    }
    let after = model.predict(&features, 0.05).unwrap().median_s;
    assert!((after / before - 1.0).abs() < 0.05, "{before} → {after}");
}

#[test]
fn affine_runtime_in_bytes_has_median_error_under_25_percent_after_30_samples() {
    // A hash tool: 0.2 s start-up plus 200 MB/s, on inputs from 1 MB to 2 GB.
    let runtime = |bytes: f64| 0.2 + bytes / 200e6;
    let mut rng = Lcg(11);
    let draw = |rng: &mut Lcg| (rng.uniform() * (2e9f64 / 1e6).ln()).exp() * 1e6;
    let mut model = RuntimeModel::new(true);
    for _ in 0..30 {
        let bytes = draw(&mut rng);
        let noise = (0.05 * rng.normal()).exp();
        model.observe(&call(json!({"path.bytes": bytes})), runtime(bytes) * noise);
    }
    let mut errors: Vec<f64> = (0..200)
        .map(|_| {
            let bytes = draw(&mut rng);
            let p = model
                .predict(&call(json!({"path.bytes": bytes})), 0.05)
                .unwrap();
            (p.median_s / runtime(bytes) - 1.0).abs()
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    assert!(median < 0.25, "median relative error {median}");
}

#[test]
fn follows_a_tool_that_got_three_times_slower() {
    // 20 s calls under a 50 s budget, then the same calls take 60 s.
    let mut rng = Lcg(3);
    let mut model = RuntimeModel::new(true);
    let features = call(json!({"n": 5}));
    for _ in 0..300 {
        model.observe(&features, 20.0 * (0.1 * rng.normal()).exp());
    }
    assert!(model.predict(&features, 0.05).unwrap().upper_bound_s < 50.0);
    let mut flipped_at = None;
    for i in 0..150 {
        if model.predict(&features, 0.05).unwrap().upper_bound_s > 50.0 && flipped_at.is_none() {
            flipped_at = Some(i);
        }
        model.observe(&features, 60.0 * (0.1 * rng.normal()).exp());
    }
    let flipped_at = flipped_at.expect("never followed the drift");
    assert!(flipped_at <= 100, "followed after {flipped_at} calls");
    // And it stays followed.
    let p = model.predict(&features, 0.05).unwrap();
    assert!(p.median_s > 45.0 && p.upper_bound_s > 50.0, "{p:?}");
}

#[test]
fn recency_is_chosen_where_runtimes_repeat_and_not_where_they_do_not() {
    let mut rng = Lcg(5);
    let features = call(json!({}));
    // Repeating: a level that wanders slowly (AR(1) with φ = 0.9).
    let mut repeating = RuntimeModel::new(true);
    let mut level = 0.0;
    // Not repeating: white noise.
    let mut white = RuntimeModel::new(true);
    for _ in 0..500 {
        level = 0.9 * level + 0.4 * rng.normal();
        repeating.observe(&features, (2.0 + level).exp());
        white.observe(&features, (2.0 + 0.4 * rng.normal()).exp());
    }
    let phi = repeating
        .recency_coefficient()
        .expect("recency should help here");
    assert!(phi > 0.5, "phi {phi}");
    assert!(
        white.recency_coefficient().is_none() || white.recency_coefficient().unwrap().abs() < 0.2
    );
}

#[test]
fn features_that_appear_and_disappear_are_handled() {
    let mut model = RuntimeModel::new(true);
    for i in 0..20 {
        model.observe(&call(json!({"a": i})), 1.0 + i as f64);
    }
    model.observe(&call(json!({"a": 3, "b": 100})), 5.0);
    assert_eq!(model.feature_names(), ["a", "b"]);
    assert!(model.predict(&call(json!({"b": 7})), 0.05).is_some());
    assert!(model.predict(&call(json!({"zzz": 7})), 0.05).is_some());
    let names: Vec<_> = model.effects().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn slots_stop_at_the_cap() {
    let mut model = RuntimeModel::new(true);
    for round in 0..3 {
        let args: serde_json::Map<_, _> = (0..MAX_FEATURES_PER_CALL)
            .map(|i| (format!("r{round}f{i:02}"), json!(i)))
            .collect();
        model.observe(&Features::from_args(&serde_json::Value::Object(args)), 1.0);
    }
    assert_eq!(model.feature_names().len(), MAX_SLOTS);
    assert!(model.predict(&call(json!({"r2f00": 1})), 0.05).is_some());
}

#[test]
fn bad_runtimes_are_ignored() {
    let mut model = RuntimeModel::new(true);
    for bad in [f64::NAN, f64::INFINITY, -1.0] {
        model.observe(&call(json!({})), bad);
    }
    assert_eq!(model.samples(), 0);
    model.observe(&call(json!({})), 0.0);
    assert_eq!(model.samples(), 1, "zero is a real (instant) runtime");
}

proptest! {
    #[test]
    fn serialisation_round_trips_exactly(
        runs in prop::collection::vec((0.0f64..1e6, 0u32..1000, any::<bool>()), 0..40),
    ) {
        let mut model = RuntimeModel::new(true);
        for (runtime_s, items, flag) in runs {
            model.observe(&call(json!({"items": items, "flag": flag})), runtime_s);
        }
        let back = RuntimeModel::from_bytes(&model.to_bytes()).unwrap();
        prop_assert_eq!(&back, &model);
        let features = call(json!({"items": 10, "flag": true}));
        prop_assert_eq!(back.predict(&features, 0.05), model.predict(&features, 0.05));
    }

    #[test]
    fn predictions_are_finite_and_ordered(
        runs in prop::collection::vec((0.0f64..1e9, -1e12f64..1e12), 1..60),
        probe in -1e300f64..1e300,
    ) {
        let mut model = RuntimeModel::new(true);
        for (runtime_s, size) in runs {
            model.observe(&call(json!({"size": size})), runtime_s);
        }
        if let Some(p) = model.predict(&call(json!({"size": probe})), 0.05) {
            prop_assert!(p.location_ln.is_finite() && p.scale_ln.is_finite());
            prop_assert!(p.upper_bound_s >= p.median_s);
        }
    }
}
