//! Decoders of the model as older store formats kept it (2 and 3), so a database an
//! older release wrote opens as the current model without loss.

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::recency::Recency;
use super::{Calibration, ModelState, RuntimeModel};

/// A model as store format 2 kept it, before feature scales: the same state, with
/// every scale 1 (which is what format 2 computed with), so it reads back exactly.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ModelStateV2")]
pub struct ModelV2(pub RuntimeModel);

/// A model as store format 3 kept it: this state, then the risk its cached bound was
/// computed for (since format 4 the risk is each prediction's own, not the model's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "(ModelState, f64)")]
pub struct ModelV3(pub RuntimeModel);

impl TryFrom<(ModelState, f64)> for ModelV3 {
    type Error = String;

    fn try_from((state, _risk): (ModelState, f64)) -> Result<Self, Self::Error> {
        RuntimeModel::try_from(state).map(ModelV3)
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
        calibration: state.calibration,
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
    calibration: Calibration,
    risk: f64,
}

impl TryFrom<ModelStateV2> for ModelV2 {
    type Error = String;

    fn try_from(v2: ModelStateV2) -> Result<Self, Self::Error> {
        let scales = vec![1.0; v2.feature_names.len()];
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
            recency: v2.recency,
            calibration: v2.calibration,
        })
        .map(ModelV2)
    }
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
        assert_eq!(back, model);
    }
}
