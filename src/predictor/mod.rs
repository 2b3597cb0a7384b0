//! A tool's runtime model: learns `ln(runtime)` from a call's features and predicts a
//! median and an upper bound for the next call.
//!
//! Pure: plain data in, plain data out; no clock, disk or async. The engine owns one
//! [`RuntimeModel`] per tool plus one pooled over all tools, and persists them.
//!
//! # The model
//! Bayesian linear regression of `y = ln(runtime_s)` on
//! `x = [1, u_1-c_1, (u_1-c_1)², u_2-c_2, (u_2-c_2)², …]` with `u_i = ln(1+|f_i|)` and
//! `c_i` the first value of `u_i` the model saw, under a Normal–Inverse-Gamma prior `β | σ² ~ N(0, σ² Λ₀⁻¹)`, `σ² ~ IG(a₀, b₀)`
//! (a ridge Λ₀, so the posterior exists from the first sample; see [`posterior::ridge`]). The state is the
//! sufficient statistics `XᵀX, Xᵀy, yᵀy, n`, each scaled by [`FORGETTING_FACTOR`]
//! before an update so the model follows drift. The posterior (Bishop, *PRML* §3.3;
//! Murphy, *Conjugate Bayesian analysis of the Gaussian distribution*, 2007, §7.6):
//!
//! ```text
//! Λₙ = Λ₀ + XᵀX      mₙ = Λₙ⁻¹ Xᵀy      aₙ = a₀ + n/2      bₙ = b₀ + ½(yᵀy − mₙᵀ Xᵀy)
//! y* | x* ~ Student-t(ν = 2aₙ, loc = x*ᵀmₙ, scale² = bₙ/aₙ · (1 + x*ᵀ Λₙ⁻¹ x*))
//! ```
//!
//! The upper bound is the predictive quantile at `1 - risk`, in seconds. The risk is the
//! caller's to choose per prediction ([`RuntimeModel::predict`]): it is no part of what
//! a model learned.
//!
//! The square terms are a departure from a plain log-log line, and they earn their
//! place: runtimes are usually a fixed start-up plus work in proportion to the input
//! (`a + b·bytes`), which is flat then rising in log-log space; one slope per feature
//! missed that curve by 36% (median) on such a tool, the squares bring it under 25%.
//! The ridge pulls the square coefficients to 0, so with little data the model is the
//! plain line. Outside the range of `u` it was taught, a feature's square term follows
//! its tangent at the edge of that range: a parabola fitted to 1–40 MB would bend back
//! down at 400 MB (it predicted half the runtime there), the tangent keeps the slope.
//!
//! # Recency
//! Runtimes often repeat what the last call did beyond what the arguments say (see
//! DESIGN.md, "What measurement has taught us"). The model keeps an AR(1) term on its
//! one-step residuals: it adds `φ · last_residual` to the mean and scales the spread by
//! the innovations' share of the residuals. It is used only while its own one-step
//! record is better than the plain model's, so tools whose runtimes do not repeat are
//! not hurt.
//!
//! # Features that come and go
//! A model has one slot per feature name, in order of first appearance, up to
//! [`MAX_SLOTS`]. A new name grows the model with the prior (past samples count as 0
//! for it, that is, at the slot's center); a name absent from a call is unknown and
//! counts at the center too, so it neither teaches nor moves a prediction; names past
//! the cap are ignored. Counting an absent name as `ln(1+0) = 0` put every call of one
//! tool far out along the other tools' arguments in the model pooled over all tools:
//! a cold tool's first call got a bound of 10¹⁹ s and went to the background.

use std::cell::{Cell, OnceCell};

use serde::{Deserialize, Serialize};

use crate::features::{Features, MAX_FEATURES_PER_CALL};

mod calibration;
mod censored;
mod legacy;
mod linalg;
mod posterior;
mod recency;
mod spread;
#[cfg(test)]
mod tests;

pub use calibration::Calibration;
#[cfg(test)]
pub(crate) use legacy::v2_bytes;
pub use legacy::{ModelV2, ModelV3, ModelV5};
use linalg::{discounted_update, dot, grow_system, leverage};
use posterior::{bound_quantile, posterior, BoundQuantile, Posterior};
use recency::Recency;
use spread::Spread;

/// Weight kept by past statistics at each update: a memory of about
/// `1 / (1 - 0.98) = 50` calls, short enough to follow a tool that got slower within
/// tens of calls, long enough for 16 features.
pub const FORGETTING_FACTOR: f64 = 0.98;
/// Prior precision of the intercept, in pseudo-observations: barely there, so the
/// first sample sets the level.
pub const INTERCEPT_RIDGE: f64 = 1e-3;
/// Prior precision of each linear coefficient, in pseudo-observations at the
/// feature's typical scale: a few samples outweigh it.
pub const LINEAR_RIDGE: f64 = 0.1;
/// Prior precision of each square coefficient, in pseudo-observations: a curve needs
/// the support of several samples before it bends the line.
pub const SQUARE_RIDGE: f64 = 1.0;
/// Floor of a regressor's mean square in the ridge. A feature that has barely varied
/// is priced as if it had varied by about ×e: a new value of it widens the bound, as
/// it should, without blowing it up to infinity (and `Λ₀` stays positive definite).
pub const MIN_SCALE: f64 = 1.0;
/// Prior shape of σ²: worth `2·a₀ = 2` pseudo-observations.
pub const PRIOR_SHAPE: f64 = 1.0;
/// Prior scale of σ²: `b₀ / a₀ = 0.25`, a spread of about ×1.6 in runtime until data
/// says otherwise, so the first bounds are wide, not absent.
pub const PRIOR_SCALE: f64 = 0.25;
/// A model is warm once it has this many samples more than it has coefficients.
pub const WARM_EXTRA_SAMPLES: u64 = 3;
/// Most feature slots one model holds; see the module docs for the rule past it.
pub const MAX_SLOTS: usize = MAX_FEATURES_PER_CALL;
/// The AR(1) coefficient is shrunk towards 0 as if this much squared residual with no
/// correlation had been seen, and kept inside ±[`MAX_AR_COEFFICIENT`].
pub const AR_PRIOR_WEIGHT: f64 = 1.0;
/// Bound on |φ|: a unit root would let one outlier steer every later prediction.
pub const MAX_AR_COEFFICIENT: f64 = 0.95;
/// One-step errors the recency term needs before it can be chosen.
pub const AR_MIN_ERRORS: f64 = 5.0;
/// Runtimes under a millisecond are taught as a millisecond: `ln(0)` has no meaning and
/// sub-millisecond differences never change a decision.
pub const MIN_RUNTIME_S: f64 = 1e-3;

/// A tool's runtime model: serialisable state plus a posterior formed from it on demand.
///
/// ```
/// use smart_async::{Features, RuntimeModel};
/// let mut model = RuntimeModel::new(true);
/// for mb in [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0] {
///     let features = Features::from_args(&serde_json::json!({ "mb": mb }));
///     model.observe(&features, 0.1 * mb);
/// }
/// let next = Features::from_args(&serde_json::json!({ "mb": 128.0 }));
/// let prediction = model.predict(&next, 0.05);
/// assert!(model.is_warm());
/// assert!(prediction.is_some_and(|p| (p.median_s / 12.8 - 1.0).abs() < 0.25));
/// assert!(prediction.is_some_and(|p| p.upper_bound_s > p.median_s));
/// ```
#[derive(Serialize, Deserialize)]
#[serde(try_from = "ModelState", into = "ModelState")]
pub struct RuntimeModel {
    state: ModelState,
    /// Formed from `state` when first asked for after an update: an update costs
    /// `O(dim²)`, and the factorisation is paid once per prediction, not per sample
    /// (a model pooled over every tool learns far more often than it predicts).
    posterior: OnceCell<Option<Posterior>>,
    /// The last posterior, kept across an update to form the next one in its buffers.
    spare: Cell<Option<Posterior>>,
    /// The last bound quantile: the inverse CDF is costly, and its grid point and risk
    /// seldom change.
    quantile: Cell<Option<BoundQuantile>>,
}

/// A copy of the state; the copy forms its own posterior when asked.
impl Clone for RuntimeModel {
    fn clone(&self) -> Self {
        RuntimeModel::with_state(self.state.clone())
    }
}

impl std::fmt::Debug for RuntimeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeModel")
            .field("state", &self.state)
            .field("posterior", &self.posterior.get())
            .finish_non_exhaustive()
    }
}

/// Two models are equal when their states are: the posterior is a function of it.
impl PartialEq for RuntimeModel {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
    }
}

/// How one feature moves the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureEffect {
    /// The feature's name.
    pub name: String,
    /// `d ln(runtime) / d ln(1+|f|/s)` at the typical value: near it, runtime grows
    /// like `f^elasticity` (1 = proportional, 0 = no effect).
    pub elasticity: f64,
    /// Coefficient of `u - c`, with `u = ln(1+|f|/s)` (`s` is the feature's first value
    /// when that is below 1, else 1) and `c` the first value of `u` the model saw.
    pub linear: f64,
    /// Coefficient of `(u - c)²`.
    pub square: f64,
    /// The (discounted) mean of `u`, mapped back: a typical value of the feature.
    pub typical_value: f64,
}

/// What a model says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted median runtime, `exp(location)`.
    pub median_s: f64,
    /// The runtime exceeded with probability `risk` under the model.
    pub upper_bound_s: f64,
    /// Location of the Student-t over `ln(runtime_s)`.
    pub location_ln: f64,
    /// Scale of the Student-t over `ln(runtime_s)`.
    pub scale_ln: f64,
    /// Degrees of freedom.
    pub dof: f64,
    /// Whether the recency term took part.
    pub uses_recency: bool,
}

/// The persisted part of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelState {
    feature_names: Vec<String>,
    /// Per slot, the smallest and largest `u` taught: the square term is used inside
    /// this range and continued along its tangent outside it.
    ranges_ln: Vec<(f64, f64)>,
    /// Per slot, the `u` the regressors are centred on: the first value taught.
    /// Centred, a regressor is 0 on the first call (so that call sets the intercept,
    /// not a slope), and its mean square is its spread, which is what the ridge is
    /// scaled to.
    centers_ln: Vec<f64>,
    /// Per slot, the scale `s` in `u = ln(1 + |f|/s)` (see [`scale_for`]).
    scales: Vec<f64>,
    /// `XᵀX`, row-major, `dim × dim` with `dim = 1 + 2·feature_names.len()`.
    xtx: Vec<f64>,
    xty: Vec<f64>,
    yty: f64,
    /// Discounted sample count.
    weight: f64,
    samples: u64,
    /// Of the samples, how many were runs cut off (taught as censored).
    censored: u64,
    recency: Option<Recency>,
    /// How the spread moves with the features (a tool's model; none for the pooled one).
    spread: Option<Spread>,
    calibration: Calibration,
}

impl TryFrom<ModelState> for RuntimeModel {
    type Error = String;

    /// A stored state whose parts disagree in size was written by something else
    /// (or damaged): refused, not used.
    fn try_from(state: ModelState) -> Result<Self, Self::Error> {
        let slots = state.feature_names.len();
        let dim = dim_for(slots);
        let consistent = slots <= MAX_SLOTS
            && state.ranges_ln.len() == slots
            && state.centers_ln.len() == slots
            && state.scales.len() == slots
            && state.scales.iter().all(|s| s.is_finite() && *s > 0.0)
            && state
                .spread
                .as_ref()
                .is_none_or(|spread| spread.fits(slots))
            && state.xtx.len() == dim * dim
            && state.xty.len() == dim;
        if consistent {
            Ok(RuntimeModel::with_state(state))
        } else {
            Err(format!(
                "a model state with {slots} features has parts of other sizes"
            ))
        }
    }
}

impl From<RuntimeModel> for ModelState {
    fn from(model: RuntimeModel) -> Self {
        model.state
    }
}

impl RuntimeModel {
    /// An empty model; `recency` enables the AR(1) term and the spread model (off for a
    /// pooled model, whose consecutive samples come from different tools).
    pub fn new(recency: bool) -> RuntimeModel {
        let state = ModelState {
            feature_names: Vec::new(),
            ranges_ln: Vec::new(),
            centers_ln: Vec::new(),
            scales: Vec::new(),
            xtx: vec![0.0],
            xty: vec![0.0],
            yty: 0.0,
            weight: 0.0,
            samples: 0,
            censored: 0,
            recency: recency.then(Recency::default),
            spread: recency.then(|| Spread::new(0)),
            calibration: Calibration::default(),
        };
        RuntimeModel::with_state(state)
    }

    fn with_state(state: ModelState) -> RuntimeModel {
        RuntimeModel {
            state,
            posterior: OnceCell::new(),
            spare: Cell::new(None),
            quantile: Cell::new(None),
        }
    }

    /// The posterior of the current state, formed if an update made it stale.
    fn posterior(&self) -> Option<&Posterior> {
        self.posterior
            .get_or_init(|| posterior(&self.state, self.spare.take()))
            .as_ref()
    }

    /// The state changed: the posterior is formed again when next asked for, in this
    /// one's buffers.
    fn invalidate(&mut self) {
        if let Some(Some(old)) = self.posterior.take() {
            *self.spare.get_mut() = Some(old);
        }
    }

    /// Total samples taught, censored ones included.
    pub fn samples(&self) -> u64 {
        self.state.samples
    }

    /// Of the samples, the runs that were cut off and taught as censored
    /// ([`RuntimeModel::observe_at_least`]).
    pub fn censored(&self) -> u64 {
        self.state.censored
    }

    /// Whether the model has enough samples for its number of coefficients.
    pub fn is_warm(&self) -> bool {
        self.state.samples >= self.dim() as u64 + WARM_EXTRA_SAMPLES && self.posterior().is_some()
    }

    /// The feature names the model has slots for, in slot order.
    pub fn feature_names(&self) -> &[String] {
        &self.state.feature_names
    }

    /// The posterior mean intercept: `ln` of the runtime at the reference call (every
    /// feature at the first value the model saw for it).
    pub fn intercept_ln(&self) -> Option<f64> {
        self.posterior().map(|p| p.mean[0])
    }

    /// What each feature does to the runtime, in slot order.
    pub fn effects(&self) -> Vec<FeatureEffect> {
        let Some(posterior) = self.posterior() else {
            return Vec::new();
        };
        let weight = self.state.weight.max(f64::MIN_POSITIVE);
        self.state
            .feature_names
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                let (linear, square) = (posterior.mean[1 + 2 * slot], posterior.mean[2 + 2 * slot]);
                let center = self.state.centers_ln[slot];
                // Σ(u − c) sits in the intercept column of XᵀX (its lower triangle).
                let typical_offset = self.state.xtx[(1 + 2 * slot) * self.dim()] / weight;
                let typical_ln = center + typical_offset;
                FeatureEffect {
                    name: name.clone(),
                    elasticity: linear + 2.0 * square * typical_offset,
                    linear,
                    square,
                    typical_value: typical_ln.exp_m1() * self.state.scales[slot],
                }
            })
            .collect()
    }

    /// The posterior residual spread σ of `ln(runtime)`, as `sqrt(bₙ/aₙ)`.
    pub fn residual_spread_ln(&self) -> Option<f64> {
        self.posterior().map(|p| p.variance.sqrt())
    }

    /// The recency coefficient φ while the recency term is in use.
    pub fn recency_coefficient(&self) -> Option<f64> {
        let recency = self.state.recency.as_ref()?;
        recency.adjustment().map(|_| recency.coefficient())
    }

    /// How the bounds this model gave for calls it decided held, and the offset that
    /// calibrates its next bounds (see [`RuntimeModel::score`]).
    pub fn calibration(&self) -> Calibration {
        self.state.calibration
    }

    /// The level of the model's own predictive distribution its bound at `risk` sits
    /// at once calibrated (`1 − risk` for a model whose spread is right; lower when it
    /// was too wide); `None` before a posterior forms.
    pub fn bound_level(&self, risk: f64) -> Option<f64> {
        let dof = self.posterior()?.dof;
        calibration::bound_level(dof, risk, self.state.calibration.offset)
    }

    /// Predicts the runtime of a call with these features, its upper bound at the
    /// `1 - risk` quantile, calibrated by the offset its record of misses keeps (see
    /// [`Calibration`]); `None` if the posterior could not be formed (see
    /// [`RuntimeModel::observe`]) or `risk` is not strictly between 0 and 1.
    pub fn predict(&self, features: &Features, risk: f64) -> Option<Prediction> {
        let posterior = self.posterior()?;
        let quantile = bound_quantile(posterior.dof, risk, self.quantile.get())?;
        self.quantile.set(Some(quantile));
        let x = self.design_row(&self.inputs(features, self.in_slot_order(features)));
        let mut location_ln = dot(&posterior.mean, &x);
        let leverage = leverage(&posterior.cholesky, &x);
        let spread_factor = self.spread_factor(posterior, &x);
        let mut scale_ln = (posterior.variance * spread_factor * (1.0 + leverage)).sqrt();
        let mut uses_recency = false;
        if let Some((shift, factor)) = self.state.recency.as_ref().and_then(Recency::adjustment) {
            location_ln += shift;
            scale_ln *= factor;
            uses_recency = true;
        }
        let upper_ln = location_ln + (quantile.value + self.state.calibration.offset) * scale_ln;
        Some(Prediction {
            median_s: location_ln.exp(),
            upper_bound_s: upper_ln.exp(),
            location_ln,
            scale_ln,
            dof: posterior.dof,
            uses_recency,
        })
    }

    /// Checks a prediction of this model (its median and its bound at `risk`) that
    /// decided a call against the call's runtime: what [`RuntimeModel::calibration`]
    /// reports, and the step that calibrates the next bounds. Only predictions that were
    /// acted on are scored, so the coverage says how often a bound that decided held. A
    /// non-finite or negative runtime is ignored.
    pub fn score(&mut self, median_s: f64, upper_bound_s: f64, risk: f64, runtime_s: f64) {
        if !(runtime_s.is_finite() && runtime_s >= 0.0) {
            return;
        }
        let y = runtime_s.max(MIN_RUNTIME_S).ln();
        let calibration = &mut self.state.calibration;
        calibration.abs_error_ln_sum += (y - median_s.ln()).abs();
        calibration.track(y > upper_bound_s.ln(), risk);
    }

    /// Checks a deciding prediction against a run cut off after `cut_s`: a miss if the
    /// run had already passed the bound, else unknown and not scored (so with many cut
    /// runs the bound errs wide, never narrow). The error added is its least possible.
    pub fn score_cut(&mut self, median_s: f64, upper_bound_s: f64, risk: f64, cut_s: f64) {
        if cut_s.is_finite() && cut_s > upper_bound_s {
            let calibration = &mut self.state.calibration;
            calibration.abs_error_ln_sum += (cut_s.ln() - median_s.ln()).abs();
            calibration.track(true, risk);
        }
    }

    /// Teaches one finished run. A non-finite or negative runtime is ignored. Should
    /// the posterior fail to form (a matrix that lost positive definiteness to
    /// rounding), the model stays cold until the next update forms it.
    pub fn observe(&mut self, features: &Features, runtime_s: f64) {
        if !(runtime_s.is_finite() && runtime_s >= 0.0) {
            return;
        }
        self.teach(features, |_| runtime_s.max(MIN_RUNTIME_S).ln());
    }

    /// Teaches a run that was cut off after `cut_s` (cancelled, stopped at shutdown or
    /// by its hard timeout): it would have run at least that long. It is taught as its
    /// expected runtime beyond the cut under the current model (see the `censored`
    /// module). A cut under a millisecond says nothing and is ignored.
    pub fn observe_at_least(&mut self, features: &Features, cut_s: f64) {
        if !(cut_s.is_finite() && cut_s >= MIN_RUNTIME_S) {
            return;
        }
        self.state.censored += 1;
        let ln_cut = cut_s.ln();
        self.teach(features, |model: &RuntimeModel| {
            // The model before this run: its ranges not yet widened by it.
            let (location_ln, spread_ln) = model.location_and_spread(features, ln_cut);
            censored::expected_above(ln_cut, location_ln, spread_ln)
        });
    }

    /// The factor on a call's variance, while the spread model's record says it helps.
    #[inline]
    fn spread_factor(&self, posterior: &Posterior, x: &[f64]) -> f64 {
        let helps = self.state.spread.as_ref().is_some_and(Spread::helps);
        match &posterior.spread {
            Some(fit) if helps => fit.factor(x),
            _ => 1.0,
        }
    }

    /// The plain model's location and residual spread for a call: what a censored run
    /// is imputed from. Before any sample the location is the prior's, 1 s, which says
    /// nothing of this tool: the cut stands in for it, so the first cut run is taught as
    /// a little longer than the cut, not as 1 s.
    fn location_and_spread(&self, features: &Features, ln_cut: f64) -> (f64, f64) {
        let x = self.design_row(&self.inputs(features, false));
        match self.posterior().filter(|_| self.state.samples > 0) {
            Some(posterior) => {
                let factor = self.spread_factor(posterior, &x);
                (
                    dot(&posterior.mean, &x),
                    (posterior.variance * factor).sqrt(),
                )
            }
            None => (ln_cut, (PRIOR_SCALE / PRIOR_SHAPE).sqrt()),
        }
    }

    /// Teaches the `ln(runtime)` that `target` gives for the model as it is before this
    /// sample (after any new feature has its slot).
    fn teach(&mut self, features: &Features, target: impl FnOnce(&RuntimeModel) -> f64) {
        let in_order = self.in_slot_order(features);
        if !in_order {
            self.grow(features);
        }
        let y = target(self);
        let inputs = self.inputs(features, in_order);
        for (range, &u) in self.state.ranges_ln.iter_mut().zip(&inputs) {
            *range = (range.0.min(u), range.1.max(u));
        }
        let x = self.design_row(&inputs);
        if self.state.recency.is_some() && self.state.samples > 0 {
            // The one-step residual needs the posterior before this sample; a tool's
            // model has usually formed it already, to decide this very call.
            let fitted = self.posterior().map(|p| {
                let factor = p.spread.as_ref().map(|fit| fit.factor(&x));
                (dot(&p.mean, &x), p.variance, factor)
            });
            if let Some((fitted, variance, factor)) = fitted {
                let state = &mut self.state;
                if let Some(recency) = &mut state.recency {
                    recency.learn(y - fitted);
                }
                if let Some(spread) = &mut state.spread {
                    spread.learn(&x, y - fitted, variance, factor);
                }
            }
        }
        let state = &mut self.state;
        discounted_update(&mut state.xtx, &mut state.xty, &x, y, FORGETTING_FACTOR);
        state.yty = FORGETTING_FACTOR * state.yty + y * y;
        state.weight = FORGETTING_FACTOR * state.weight + 1.0;
        state.samples += 1;
        self.invalidate();
    }

    /// Serialises the state compactly (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain numbers, strings and vectors into a Vec cannot fail.
        postcard::to_stdvec(&self.state).unwrap_or_default()
    }

    /// Reads state written by [`RuntimeModel::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<RuntimeModel, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    fn dim(&self) -> usize {
        dim_for(self.state.feature_names.len())
    }

    /// Whether the call's features are exactly the model's slots, in slot order: the
    /// usual case, as both are sorted by name when a tool's calls carry the same
    /// arguments, and then each feature's slot is its position.
    fn in_slot_order(&self, features: &Features) -> bool {
        let names = &self.state.feature_names;
        features.len() == names.len() && features.iter().zip(names).all(|(f, n)| f.name == *n)
    }

    /// Adds slots for names this model has not seen, up to the cap.
    fn grow(&mut self, features: &Features) {
        let state = &mut self.state;
        let old_dim = dim_for(state.feature_names.len());
        for feature in features.iter() {
            if state.feature_names.len() >= MAX_SLOTS {
                break;
            }
            if !state.feature_names.contains(&feature.name) {
                let scale = scale_for(feature.value);
                state.feature_names.push(feature.name.clone());
                state.ranges_ln.push((f64::INFINITY, f64::NEG_INFINITY));
                state.centers_ln.push(transform(feature.value, scale));
                state.scales.push(scale);
            }
        }
        let dim = dim_for(state.feature_names.len());
        if dim == old_dim {
            return;
        }
        if let Some(spread) = &mut state.spread {
            spread.grow(state.feature_names.len());
        }
        grow_system(&mut state.xtx, &mut state.xty, dim);
    }

    /// Each slot's `u` for a call's features (`ln(1+0) = 0` for a feature it lacks);
    /// `in_order` is [`RuntimeModel::in_slot_order`] (false is always correct, only
    /// slower).
    #[inline]
    fn inputs(&self, features: &Features, in_order: bool) -> [f64; MAX_SLOTS] {
        let state = &self.state;
        let mut inputs = [0.0; MAX_SLOTS];
        if in_order {
            for ((u, feature), &scale) in inputs.iter_mut().zip(features.iter()).zip(&state.scales)
            {
                *u = transform(feature.value, scale);
            }
        } else {
            let slots = state.feature_names.iter().zip(&state.scales);
            for ((u, (name, &scale)), &center) in
                inputs.iter_mut().zip(slots).zip(&state.centers_ln)
            {
                // Absent is unknown, not 0: the call sits at the center, as samples
                // from before the slot existed do (see the module docs).
                *u = features
                    .get(name)
                    .map_or(center, |value| transform(value, scale));
            }
        }
        inputs
    }

    /// The regressors of a call with these [`RuntimeModel::inputs`], on the stack:
    /// deciding allocates nothing.
    #[inline]
    fn design_row(&self, inputs: &[f64; MAX_SLOTS]) -> Row {
        let mut row = Row {
            values: [0.0; MAX_DIM],
            len: self.dim(),
        };
        row.values[0] = 1.0;
        let state = &self.state;
        let slots = inputs.iter().zip(&state.ranges_ln).zip(&state.centers_ln);
        for (slot, ((&u, &(lo, hi)), &center)) in slots.enumerate() {
            // Past the taught range a parabola turns back on itself; its tangent at the
            // edge does not, so extrapolation keeps the slope seen at the edge.
            let edge = if lo <= hi { u.clamp(lo, hi) } else { u } - center;
            let offset = u - center;
            row.values[1 + 2 * slot] = offset;
            row.values[2 + 2 * slot] = edge * edge + 2.0 * edge * (offset - edge);
        }
        row
    }
}

/// The scale of a feature whose first value was `first`: its own size when that is
/// below 1, else 1. `ln(1+|f|)` is nearly linear below 1, so a feature that lives there
/// (seconds, ratios) would look flat to the model and a larger call would be
/// extrapolated along a far too steep slope; divided by its first size, it spreads
/// over `u` as a feature above 1 does. Features of 1 and more (counts, bytes) keep
/// `ln(1+|f|)`.
fn scale_for(first: f64) -> f64 {
    let size = first.abs();
    if size > 0.0 && size < 1.0 {
        size
    } else {
        1.0
    }
}

/// The regressor variable of a feature value: `u = ln(1 + |f|/s)`.
fn transform(value: f64, scale: f64) -> f64 {
    (value.abs() / scale).ln_1p()
}

/// The most coefficients a model has.
const MAX_DIM: usize = 1 + 2 * MAX_SLOTS;

struct Row {
    values: [f64; MAX_DIM],
    len: usize,
}

impl std::ops::Deref for Row {
    type Target = [f64];

    fn deref(&self) -> &[f64] {
        &self.values[..self.len]
    }
}

/// Coefficients for `slots` features: the intercept, then a linear and a square term each.
fn dim_for(slots: usize) -> usize {
    1 + 2 * slots
}
