//! Decoders of the model as older store formats kept it (2 to 5), so a database an
//! older release wrote opens as the current model without loss: what it learned reads
//! back the same, and what it did not keep (the calibration offset, the count of
//! censored runs) starts at zero.

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::recency::Recency;
use super::spread::Spread;
use super::{Calibration, ModelState, RuntimeModel};

/// A model as store formats 4 and 5 kept it: before censored runs were counted and the
/// calibration kept an offset.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "StateV5")]
pub struct ModelV5(pub RuntimeModel);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StateV5 {
    feature_names: Vec<String>,
    ranges_ln: Vec<(f64, f64)>,
    centers_ln: Vec<f64>,
    scales: Vec<f64>,
    xtx: Vec<f64>,
    xty: Vec<f64>,
    yty: f64,
    weight: f64,
    samples: u64,
    recency: Option<Recency>,
    calibration: CalibrationV5,
}

/// The calibration record before it kept an offset.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct CalibrationV5 {
    checked: u64,
    covered: u64,
    abs_error_ln_sum: f64,
}

impl From<CalibrationV5> for Calibration {
    fn from(old: CalibrationV5) -> Calibration {
        Calibration {
            checked: old.checked,
            covered: old.covered,
            abs_error_ln_sum: old.abs_error_ln_sum,
            offset: 0.0,
        }
    }
}

impl From<StateV5> for ModelState {
    fn from(old: StateV5) -> ModelState {
        let slots = old.feature_names.len();
        ModelState {
            feature_names: old.feature_names,
            ranges_ln: old.ranges_ln,
            centers_ln: old.centers_ln,
            scales: old.scales,
            xtx: old.xtx,
            xty: old.xty,
            yty: old.yty,
            weight: old.weight,
            samples: old.samples,
            censored: 0,
            spread: old.recency.is_some().then(|| Spread::new(slots)),
            recency: old.recency,
            calibration: old.calibration.into(),
        }
    }
}

impl TryFrom<StateV5> for ModelV5 {
    type Error = String;

    fn try_from(old: StateV5) -> Result<Self, Self::Error> {
        RuntimeModel::try_from(ModelState::from(old)).map(ModelV5)
    }
}

/// A model as store format 2 kept it, before feature scales: the same state, with
/// every scale 1 (which is what format 2 computed with), so it reads back exactly.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ModelStateV2")]
pub struct ModelV2(pub RuntimeModel);

/// A model as store format 3 kept it: this state, then the risk its cached bound was
/// computed for (since format 4 the risk is each prediction's own, not the model's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "(StateV5, f64)")]
pub struct ModelV3(pub RuntimeModel);

impl TryFrom<(StateV5, f64)> for ModelV3 {
    type Error = String;

    fn try_from((state, _risk): (StateV5, f64)) -> Result<Self, Self::Error> {
        RuntimeModel::try_from(ModelState::from(state)).map(ModelV3)
    }
}

/// The format-2 state of a model whose scales are all 1, as format 2 wrote it (for
/// tests of the migration).
#[cfg(test)]
pub(crate) fn v2_bytes(model: &RuntimeModel) -> Vec<u8> {
    let state = &model.state;
    assert!(
        state.scales.iter().all(|s| *s == 1.0),
        "format 2 had no scales"
    );
    postcard::to_stdvec(&ModelStateV2 {
        feature_names: state.feature_names.clone(),
        ranges_ln: state.ranges_ln.clone(),
        centers_ln: state.centers_ln.clone(),
        xtx: state.xtx.clone(),
        xty: state.xty.clone(),
        yty: state.yty,
        weight: state.weight,
        samples: state.samples,
        recency: state.recency.clone(),
        calibration: v5_calibration(state.calibration),
        risk: 0.05,
    })
    .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ModelStateV2 {
    feature_names: Vec<String>,
    ranges_ln: Vec<(f64, f64)>,
    centers_ln: Vec<f64>,
    xtx: Vec<f64>,
    xty: Vec<f64>,
    yty: f64,
    weight: f64,
    samples: u64,
    recency: Option<Recency>,
    calibration: CalibrationV5,
    risk: f64,
}

impl TryFrom<ModelStateV2> for ModelV2 {
    type Error = String;

    fn try_from(v2: ModelStateV2) -> Result<Self, Self::Error> {
        let slots = v2.feature_names.len();
        let scales = vec![1.0; slots];
        RuntimeModel::try_from(ModelState {
            feature_names: v2.feature_names,
            ranges_ln: v2.ranges_ln,
            centers_ln: v2.centers_ln,
            scales,
            xtx: v2.xtx,
            xty: v2.xty,
            yty: v2.yty,
            weight: v2.weight,
            samples: v2.samples,
            censored: 0,
            spread: v2.recency.is_some().then(|| Spread::new(slots)),
            recency: v2.recency,
            calibration: v2.calibration.into(),
        })
        .map(ModelV2)
    }
}

#[cfg(test)]
fn v5_calibration(calibration: Calibration) -> CalibrationV5 {
    CalibrationV5 {
        checked: calibration.checked,
        covered: calibration.covered,
        abs_error_ln_sum: calibration.abs_error_ln_sum,
    }
}

/// The format-5 state of a model that has no offset and no censored run yet, as
/// format 5 wrote it (for tests of the migration).
#[cfg(test)]
pub(crate) fn v5_bytes(model: &RuntimeModel) -> Vec<u8> {
    let state = &model.state;
    assert!(state.censored == 0 && state.calibration.offset == 0.0);
    postcard::to_stdvec(&StateV5 {
        feature_names: state.feature_names.clone(),
        ranges_ln: state.ranges_ln.clone(),
        centers_ln: state.centers_ln.clone(),
        scales: state.scales.clone(),
        xtx: state.xtx.clone(),
        xty: state.xty.clone(),
        yty: state.yty,
        weight: state.weight,
        samples: state.samples,
        recency: state.recency.clone(),
        calibration: v5_calibration(state.calibration),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;

    #[test]
    fn a_format_2_model_reads_back_the_same() {
        let mut model = RuntimeModel::new(true);
        for n in 1..=10 {
            let features = Features::from_args(&serde_json::json!({ "n": n * 10 }));
            model.observe(&features, f64::from(n));
        }
        let ModelV2(back) = postcard::from_bytes(&v2_bytes(&model)).unwrap();
        assert_eq!(back, without_spread(model));
    }

    #[test]
    fn a_format_5_model_reads_back_the_same() {
        let mut model = RuntimeModel::new(true);
        for n in 1..=10 {
            let features = Features::from_args(&serde_json::json!({ "mb": f64::from(n) / 20.0 }));
            model.observe(&features, f64::from(n));
        }
        let ModelV5(back) = postcard::from_bytes(&v5_bytes(&model)).unwrap();
        assert_eq!(back, without_spread(model));
    }

    /// What an older format kept of a model: all but the spread it had not learned.
    fn without_spread(mut model: RuntimeModel) -> RuntimeModel {
        let slots = model.state.feature_names.len();
        model.state.spread = Some(Spread::new(slots));
        model
    }
}
