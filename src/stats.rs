//! What the engine has learned about each tool, as counters it keeps and the report
//! it shows (`predictor_stats`, `smart-async stats`).
//!
//! [`ToolRecord`] is what the store persists per tool: the model and its counters.
//! [`ToolStats`] is the read-only report made from it; it renders as text for people
//! and serialises as JSON for programs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clients::ClientStats;
use crate::policy::{Decision, Mode, Seconds, Source};
use crate::predictor::{FeatureEffect, ModelV2, ModelV3, ModelV5, RuntimeModel};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The work returned a result: its runtime is taught to the model.
    Completed,
    /// The work returned an error or panicked: counted, not taught (a run that fails
    /// fast says nothing about how long a good one takes).
    Failed,
    /// The run was cancelled (by its caller, `cancel_job`, or a shutdown that cut it
    /// off): its elapsed time is a lower bound on its runtime, taught as a censored
    /// sample ([`RuntimeModel::observe_at_least`]).
    Cancelled,
    /// The run passed its hard time limit and was stopped: a failure to its caller,
    /// counted with the failed runs, and taught as censored at the limit.
    TimedOut,
}

impl Outcome {
    /// Whether the run was cut off, so that its elapsed time is only a lower bound.
    pub fn is_censored(self) -> bool {
        matches!(self, Outcome::Cancelled | Outcome::TimedOut)
    }

    /// Where the run is counted in [`Counters::outcomes`]: a timeout is a failure.
    fn counted_as(self) -> usize {
        match self {
            Outcome::Completed => 0,
            Outcome::Failed | Outcome::TimedOut => 1,
            Outcome::Cancelled => 2,
        }
    }

    /// How a run that returned this error ended.
    pub fn of_error(error: &crate::RunError) -> Outcome {
        match error {
            crate::RunError::TimedOut { .. } => Outcome::TimedOut,
            _ => Outcome::Failed,
        }
    }
}

/// Counters kept per tool next to its model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Decisions made, by source, in [`Source::ALL`] order.
    pub decisions: [u64; 5],
    /// Calls decided inline that overran the deadline and became jobs (late answers).
    pub promotions: u64,
    /// Calls the engine chose to background (not asked) that finished within budget.
    pub needless_backgrounds: u64,
    /// Runs by how they ended: completed, failed (timed out included), cancelled.
    pub outcomes: [u64; 3],
}

impl Counters {
    /// Counts a decision.
    pub fn decided(&mut self, decision: &Decision) {
        self.decisions[source_index(decision.source)] += 1;
    }

    /// Counts a finished run of a call decided by `decision` (against its budget).
    pub fn finished(&mut self, decision: &Decision, outcome: Outcome, runtime_s: f64) {
        self.outcomes[outcome.counted_as()] += 1;
        let chosen_background =
            decision.mode == Mode::Background && decision.source != Source::Explicit;
        if outcome == Outcome::Completed && chosen_background && runtime_s <= decision.budget_s {
            self.needless_backgrounds += 1;
        }
    }
}

fn source_index(source: Source) -> usize {
    Source::ALL.iter().position(|s| *s == source).unwrap_or(0)
}

/// A tool's model and counters, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRecord {
    /// The runtime model.
    pub model: RuntimeModel,
    /// The counters.
    pub counters: Counters,
}

impl ToolRecord {
    /// A record with an empty model; `recency` as in [`RuntimeModel::new`].
    pub fn new(recency: bool) -> ToolRecord {
        ToolRecord {
            model: RuntimeModel::new(recency),
            counters: Counters::default(),
        }
    }

    /// Serialises compactly (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain numbers, strings and vectors into a Vec: cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads what [`ToolRecord::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<ToolRecord, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Reads a record as an earlier store format wrote it: 2 (before feature scales),
    /// 3 (when a model kept the risk of its bound), 4 or 5 (before censored runs and the
    /// calibration offset); `None` for another format.
    pub fn from_bytes_of(format: u32, bytes: &[u8]) -> Option<Result<ToolRecord, postcard::Error>> {
        let read = match format {
            2 => postcard::from_bytes::<(ModelV2, Counters)>(bytes).map(|(m, c)| (m.0, c)),
            3 => postcard::from_bytes::<(ModelV3, Counters)>(bytes).map(|(m, c)| (m.0, c)),
            4 | 5 => postcard::from_bytes::<(ModelV5, Counters)>(bytes).map(|(m, c)| (m.0, c)),
            _ => return None,
        };
        Some(read.map(|(model, counters)| ToolRecord { model, counters }))
    }

    /// The report for this record.
    pub fn stats(&self, tool: &str, risk: f64) -> ToolStats {
        let model = &self.model;
        let calibration = model.calibration();
        let taught = model.samples() > 0;
        let decisions = Source::ALL
            .iter()
            .zip(self.counters.decisions)
            .map(|(source, count)| (source.name().to_owned(), count))
            .collect();
        ToolStats {
            tool: tool.to_owned(),
            samples: model.samples(),
            state: if model.is_warm() { "warm" } else { "cold" }.to_owned(),
            // An untaught model only echoes its prior: nothing to report.
            intercept_ln: model.intercept_ln().filter(|_| taught),
            effects: model.effects(),
            residual_spread_ln: model.residual_spread_ln().filter(|_| taught),
            recency_coefficient: model.recency_coefficient(),
            coverage: calibration.coverage(),
            coverage_target: 1.0 - risk,
            calibration_offset: calibration.offset,
            bound_level: model.bound_level(risk).filter(|_| calibration.checked > 0),
            checked_predictions: calibration.checked,
            mean_abs_error_ln: calibration.mean_abs_error_ln(),
            decisions,
            promotions: self.counters.promotions,
            needless_backgrounds: self.counters.needless_backgrounds,
            completed: self.counters.outcomes[Outcome::Completed.counted_as()],
            failed: self.counters.outcomes[Outcome::Failed.counted_as()],
            cancelled: self.counters.outcomes[Outcome::Cancelled.counted_as()],
            censored: model.censored(),
        }
    }
}

/// The report on one tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolStats {
    /// The tool, or `*` for the model pooled over all tools.
    pub tool: String,
    /// Runtimes taught.
    pub samples: u64,
    /// `warm` once the model has enough samples for its features, else `cold`.
    pub state: String,
    /// `ln` of the runtime in seconds at the reference call (each feature at the
    /// first value seen for it).
    pub intercept_ln: Option<f64>,
    /// Per feature: elasticity and coefficients.
    pub effects: Vec<FeatureEffect>,
    /// Posterior spread σ of `ln(runtime)`.
    pub residual_spread_ln: Option<f64>,
    /// φ of the recency term, while it is in use.
    pub recency_coefficient: Option<f64>,
    /// Share of the model's deciding bounds that the runtime stayed within.
    pub coverage: Option<f64>,
    /// The share the bound aims for, `1 - risk`.
    pub coverage_target: f64,
    /// What online calibration adds to the model's own quantile, in units of its
    /// scale: negative when the model's spread was too wide.
    pub calibration_offset: f64,
    /// The level of the model's own predictive distribution the calibrated bound sits
    /// at (`coverage_target` for a model whose spread is right); `None` before a check.
    pub bound_level: Option<f64>,
    /// How many of the model's bounds that decided a call the coverage is over.
    pub checked_predictions: u64,
    /// Mean absolute error of `ln(runtime)` over those predictions.
    pub mean_abs_error_ln: Option<f64>,
    /// Decisions by source name.
    pub decisions: Vec<(String, u64)>,
    /// Inline calls that overran the deadline and became jobs.
    pub promotions: u64,
    /// Background runs the engine chose that finished within the budget.
    pub needless_backgrounds: u64,
    /// Runs that completed.
    pub completed: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Runs that were cancelled.
    pub cancelled: u64,
    /// Runs cut off (cancelled, stopped at shutdown or by their hard timeout) that the
    /// model was taught as censored: they ran at least their elapsed time.
    pub censored: u64,
}

/// Everything `predictor_stats` and `smart-async stats` show: per tool (the pooled
/// model last, as `*`), and per client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// The server's budget (clients may have their own).
    pub budget_s: f64,
    /// What was learned per tool.
    pub tools: Vec<ToolStats>,
    /// Each client's budget and what it showed.
    pub clients: Vec<ClientStats>,
}

impl fmt::Display for StatsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, tool) in self.tools.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{tool}")?;
        }
        if !self.clients.is_empty() {
            writeln!(f, "\nclients (server budget {}):", Seconds(self.budget_s))?;
            for client in &self.clients {
                writeln!(f, "  {client}")?;
            }
        }
        Ok(())
    }
}

struct Opt<T>(Option<T>, fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result);

impl<T> fmt::Display for Opt<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => (self.1)(value, f),
            None => f.write_str("n/a"),
        }
    }
}

impl fmt::Display for ToolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} ({} samples)",
            self.tool, self.state, self.samples
        )?;
        let base = self.intercept_ln.map(f64::exp);
        writeln!(
            f,
            "  runtime at the reference call: {}",
            Opt(base, |s, f| write!(f, "{}", Seconds(*s)))
        )?;
        for effect in &self.effects {
            let near = effect.typical_value;
            let near = if near.abs() >= 1000.0 {
                format!("{near:.3e}")
            } else {
                format!("{near:.2}")
            };
            writeln!(
                f,
                "  {}: elasticity {:+.2} near {near} (linear {:+.3}, square {:+.4})",
                effect.name, effect.elasticity, effect.linear, effect.square
            )?;
        }
        writeln!(
            f,
            "  residual spread (ln): {}   recency φ: {}",
            Opt(self.residual_spread_ln, |v, f| write!(f, "{v:.3}")),
            Opt(self.recency_coefficient, |v, f| write!(f, "{v:.2}")),
        )?;
        writeln!(
            f,
            "  bound coverage: {} of {} checked (target {:.1}%)   mean |error| (ln): {}",
            Opt(self.coverage, |v, f| write!(f, "{:.1}%", v * 100.0)),
            self.checked_predictions,
            self.coverage_target * 100.0,
            Opt(self.mean_abs_error_ln, |v, f| write!(f, "{v:.3}")),
        )?;
        writeln!(
            f,
            "  calibration: offset {:+.2} scales, bound at the model's {} quantile",
            self.calibration_offset,
            Opt(self.bound_level, |v, f| write!(f, "{:.1}%", v * 100.0)),
        )?;
        let decisions: Vec<String> = self
            .decisions
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(source, n)| format!("{source} {n}"))
            .collect();
        writeln!(
            f,
            "  decisions: {}",
            if decisions.is_empty() {
                "none".to_owned()
            } else {
                decisions.join(", ")
            }
        )?;
        write!(
            f,
            "  runs: {} completed, {} failed, {} cancelled ({} taught as censored); promotions (late) {}; needless backgrounds {}",
            self.completed, self.failed, self.cancelled, self.censored, self.promotions, self.needless_backgrounds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;
    use serde_json::json;

    fn decision(mode: Mode, source: Source) -> Decision {
        Decision {
            mode,
            source,
            predicted_s: None,
            upper_bound_s: None,
            budget_s: 50.0,
            risk: 0.05,
            rule: None,
        }
    }

    #[test]
    fn needless_backgrounds_count_only_engine_choices_that_fit_the_budget() {
        let mut counters = Counters::default();
        counters.finished(
            &decision(Mode::Background, Source::Learned),
            Outcome::Completed,
            10.0,
        );
        counters.finished(
            &decision(Mode::Background, Source::Explicit),
            Outcome::Completed,
            10.0,
        );
        counters.finished(
            &decision(Mode::Background, Source::Static),
            Outcome::Completed,
            90.0,
        );
        counters.finished(
            &decision(Mode::Background, Source::Static),
            Outcome::Failed,
            1.0,
        );
        assert_eq!(counters.needless_backgrounds, 1);
        assert_eq!(counters.outcomes, [3, 1, 0]);
    }

    #[test]
    fn a_record_round_trips_and_reports_what_it_learned() {
        let mut record = ToolRecord::new(true);
        for kb in 1..=40 {
            let features = Features::from_args(&json!({"kb": kb * 100}));
            record.model.observe(&features, 0.01 * (kb * 100) as f64);
            record
                .counters
                .decided(&decision(Mode::Inline, Source::Default));
        }
        let back = ToolRecord::from_bytes(&record.to_bytes()).unwrap();
        assert_eq!(back, record);
        let stats = back.stats("scan", 0.05);
        assert_eq!((stats.samples, stats.state.as_str()), (40, "warm"));
        assert_eq!(stats.effects.len(), 1);
        assert!(stats.effects[0].elasticity > 0.8, "{:?}", stats.effects);
        assert_eq!(stats.decisions[4], ("default".to_owned(), 40));
        let text = stats.to_string();
        assert!(text.starts_with("scan: warm (40 samples)"), "{text}");
        assert!(text.contains("kb: elasticity +"), "{text}");
    }
}
