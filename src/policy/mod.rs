//! The decision for one call: inline or background, with its source and a reason a
//! person can read, and the risk it is taken at (by default the break-even risk of the
//! call's budget and the poll cost). The static cold-start table is in [`table`].
//!
//! Pure: the engine hands in the call's features and the models it holds; nothing here
//! reads a clock or a disk (the table is parsed from text the caller loaded).
//!
//! Precedence, first match wins:
//! 1. `async_mode=true` in the call → background ([`Source::Explicit`]).
//! 2. The tool's own model is warm → background iff its upper bound exceeds the
//!    budget ([`Source::Learned`]).
//! 3. The tool is cold but the model pooled over all tools is warm → the same test on
//!    the pooled prediction ([`Source::Pooled`]). Measurement showed cold calls cost as
//!    much as all warm ones, and a shared model halves that (DESIGN.md).
//! 4. Nothing learned: the static table → background if a rule fires
//!    ([`Source::Static`]), else inline ([`Source::Default`]).

mod table;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::features::Features;
use crate::predictor::{Prediction, RuntimeModel};
#[cfg(test)]
use table::BUILTIN_STATIC_TABLE;
pub use table::{StaticRule, StaticTable, StaticTableError};

/// Seconds a call may take inline before clients start giving up. Most clients with a
/// fixed timeout use 60 s; 50 s leaves room for transport and the model's own turn.
pub const DEFAULT_BUDGET_S: f64 = 50.0;
/// Share of runtimes allowed above the upper bound when a fixed risk is asked for
/// without a number (the default is the break-even risk, [`break_even_risk`]).
pub const DEFAULT_RISK: f64 = 0.05;
/// Seconds one poll costs a caller (a model turn), by default: what a call sent to the
/// background needlessly costs.
pub const DEFAULT_POLL_COST_S: f64 = 5.0;

/// The probability of overrunning the budget past which a call is better sent to the
/// background: `P / (D + P)` for budget D and poll cost P.
///
/// Inline, a call that overruns costs the caller the whole budget of waiting (D);
/// in the background, one that would have fit costs one poll (P). With probability p
/// of overrunning, inline costs `p·D` and background `(1 − p)·P`: background is cheaper
/// exactly when `p > P / (D + P)`. With the defaults (50 s, 5 s) that is 1/11 ≈ 0.091.
pub fn break_even_risk(budget_s: f64, poll_cost_s: f64) -> f64 {
    poll_cost_s / (budget_s + poll_cost_s)
}

/// Where a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Run and answer in the same request (still promoted to a job at the deadline).
    Inline,
    /// Start a job and answer with its handle.
    Background,
}

/// What made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The caller asked with `async_mode=true`.
    Explicit,
    /// The tool's own warm model.
    Learned,
    /// The model pooled over all tools, while this tool is cold.
    Pooled,
    /// A static-table rule fired.
    Static,
    /// Nothing learned and no rule fired.
    Default,
}

impl Source {
    /// Every source, in precedence order.
    pub const ALL: [Source; 5] = [
        Source::Explicit,
        Source::Learned,
        Source::Pooled,
        Source::Static,
        Source::Default,
    ];

    /// The lower-case name used in reasons and stats.
    pub fn name(self) -> &'static str {
        match self {
            Source::Explicit => "explicit",
            Source::Learned => "learned",
            Source::Pooled => "pooled",
            Source::Static => "static",
            Source::Default => "default",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decision and why it was made.
///
/// The reason a person reads ([`Decision::reason`]) is rendered from these fields when
/// asked for, not at decision time: formatting numbers costs more than deciding. It is
/// included as `reason` when the decision is serialised.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Decision {
    /// Inline or background.
    pub mode: Mode,
    /// What decided.
    pub source: Source,
    /// Predicted median runtime, when a model spoke.
    pub predicted_s: Option<f64>,
    /// The upper bound at `1 - risk`, when a model spoke.
    pub upper_bound_s: Option<f64>,
    /// The budget the bound was held against.
    pub budget_s: f64,
    /// The risk behind the bound.
    pub risk: f64,
    /// For a static decision, what fired.
    pub rule: Option<String>,
}

impl Decision {
    /// For people: "learned: predicted 72 s, 95% bound 140 s > budget 50 s".
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source, self.predicted_s, self.upper_bound_s) {
            (Source::Explicit, ..) => f.write_str("explicit: the call asked for async_mode=true"),
            (Source::Static, ..) => {
                write!(
                    f,
                    "static: {}",
                    self.rule.as_deref().unwrap_or("a threshold was crossed")
                )
            }
            (Source::Learned | Source::Pooled, Some(predicted_s), Some(upper_bound_s)) => {
                let what = match self.source {
                    Source::Pooled => "pooled over all tools (this one is still cold)",
                    _ => "learned",
                };
                write!(
                    f,
                    "{what}: predicted {}, {}% bound {} {} budget {}",
                    Seconds(predicted_s),
                    Percent(1.0 - self.risk),
                    Seconds(upper_bound_s),
                    if self.mode == Mode::Background {
                        ">"
                    } else {
                        "≤"
                    },
                    Seconds(self.budget_s),
                )
            }
            _ => f.write_str(
                "default: nothing learned for this tool yet and no static threshold crossed",
            ),
        }
    }
}

impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Decision", 8)?;
        out.serialize_field("mode", &self.mode)?;
        out.serialize_field("source", &self.source)?;
        out.serialize_field("reason", &self.reason())?;
        out.serialize_field("predicted_s", &self.predicted_s)?;
        out.serialize_field("upper_bound_s", &self.upper_bound_s)?;
        out.serialize_field("budget_s", &self.budget_s)?;
        out.serialize_field("risk", &self.risk)?;
        out.serialize_field("rule", &self.rule)?;
        out.end()
    }
}

/// What the policy needs to know about one call.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The tool's name.
    pub tool: &'a str,
    /// The call's features.
    pub features: &'a Features,
    /// Whether the call said `async_mode=true`.
    pub async_mode: bool,
    /// Whether the tool was registered as expensive.
    pub expensive: bool,
    /// The budget for this call's client, when it has its own (else the policy's).
    pub budget_s: Option<f64>,
}

impl<'a> Call<'a> {
    /// A call of an ordinary tool (not expensive) against the policy's own budget.
    pub fn new(tool: &'a str, features: &'a Features, async_mode: bool) -> Call<'a> {
        Call {
            tool,
            features,
            async_mode,
            expensive: false,
            budget_s: None,
        }
    }
}

/// Budget, risk and the static table: what decides a call, from its features and the
/// models learned so far.
///
/// ```
/// use serde_json::json;
/// use smart_async::{Call, Features, Mode, Policy, RuntimeModel, Source, StaticTable};
///
/// let policy = Policy::new(50.0, 0.05, StaticTable::default())?;
/// // A tool that takes 2 s per 100 pages, learned from its runs.
/// let mut model = RuntimeModel::new(false);
/// for pages in [100, 200, 400, 800, 1200, 1600] {
///     let features = Features::from_args(&json!({ "pages": pages }));
///     model.observe(&features, 0.02 * f64::from(pages));
/// }
/// let small = Features::from_args(&json!({ "pages": 300 }));
/// let decision = policy.decide(Call::new("render", &small, false), Some(&model), None);
/// assert_eq!((decision.mode, decision.source), (Mode::Inline, Source::Learned));
/// let large = Features::from_args(&json!({ "pages": 20000 }));
/// let decision = policy.decide(Call::new("render", &large, false), Some(&model), None);
/// assert_eq!(decision.mode, Mode::Background, "{}", decision.reason());
/// # Ok::<(), smart_async::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    budget_s: f64,
    /// A risk fixed for every call, else each call's break-even risk.
    fixed_risk: Option<f64>,
    poll_cost_s: f64,
    table: StaticTable,
}

/// Bad policy settings.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The budget is not a positive number of seconds.
    #[error("budget {0} s is not a positive number of seconds: use for example 50")]
    Budget(f64),
    /// The risk is not strictly between 0 and 1.
    #[error("risk {0} is not between 0 and 1 (exclusive): use for example 0.05 for a 95% bound")]
    Risk(f64),
    /// The poll cost is not a positive number of seconds.
    #[error("poll cost {0} s is not a positive number of seconds: use for example 5")]
    PollCost(f64),
}

impl Policy {
    /// A policy whose bound is at the same `risk` for every call; `budget_s > 0` and
    /// `0 < risk < 1`.
    pub fn new(budget_s: f64, risk: f64, table: StaticTable) -> Result<Policy, PolicyError> {
        let mut policy = Policy::break_even(budget_s, DEFAULT_POLL_COST_S, table)?;
        if !(risk > 0.0 && risk < 1.0) {
            return Err(PolicyError::Risk(risk));
        }
        policy.fixed_risk = Some(risk);
        Ok(policy)
    }

    /// A policy whose risk is each call's break-even risk for its budget and this poll
    /// cost ([`break_even_risk`]): the default of the server and of replay.
    pub fn break_even(
        budget_s: f64,
        poll_cost_s: f64,
        table: StaticTable,
    ) -> Result<Policy, PolicyError> {
        if !(budget_s.is_finite() && budget_s > 0.0) {
            return Err(PolicyError::Budget(budget_s));
        }
        if !(poll_cost_s.is_finite() && poll_cost_s > 0.0) {
            return Err(PolicyError::PollCost(poll_cost_s));
        }
        Ok(Policy {
            budget_s,
            fixed_risk: None,
            poll_cost_s,
            table,
        })
    }

    /// The same policy with another poll cost (`poll_cost_s > 0`).
    pub fn with_poll_cost_s(self, poll_cost_s: f64) -> Result<Policy, PolicyError> {
        if !(poll_cost_s.is_finite() && poll_cost_s > 0.0) {
            return Err(PolicyError::PollCost(poll_cost_s));
        }
        Ok(Policy {
            poll_cost_s,
            ..self
        })
    }

    /// The budget in seconds.
    pub fn budget_s(&self) -> f64 {
        self.budget_s
    }

    /// The risk behind the upper bound of a call held against the policy's own budget.
    pub fn risk(&self) -> f64 {
        self.risk_for(self.budget_s)
    }

    /// The risk behind the upper bound of a call held against `budget_s`.
    pub fn risk_for(&self, budget_s: f64) -> f64 {
        self.fixed_risk
            .unwrap_or_else(|| break_even_risk(budget_s, self.poll_cost_s))
    }

    /// Whether the risk was fixed (`--risk`), rather than each call's break-even risk.
    pub fn has_fixed_risk(&self) -> bool {
        self.fixed_risk.is_some()
    }

    /// Seconds a needless background costs, which the break-even risk weighs.
    pub fn poll_cost_s(&self) -> f64 {
        self.poll_cost_s
    }

    /// The static table.
    pub fn table(&self) -> &StaticTable {
        &self.table
    }

    /// Decides one call. `tool_model` is the tool's own model, `pooled` the model over
    /// all tools; either may be absent.
    pub fn decide(
        &self,
        call: Call<'_>,
        tool_model: Option<&RuntimeModel>,
        pooled: Option<&RuntimeModel>,
    ) -> Decision {
        let budget_s = call.budget_s.unwrap_or(self.budget_s);
        let risk = self.risk_for(budget_s);
        let decision = |mode, source, prediction: Option<Prediction>, rule| Decision {
            mode,
            source,
            predicted_s: prediction.map(|p| p.median_s),
            upper_bound_s: prediction.map(|p| p.upper_bound_s),
            budget_s,
            risk,
            rule,
        };
        if call.async_mode {
            return decision(Mode::Background, Source::Explicit, None, None);
        }
        let warm = |model: Option<&RuntimeModel>| {
            model
                .filter(|m| m.is_warm())
                .and_then(|m| m.predict(call.features, risk))
        };
        let learned = warm(tool_model)
            .map(|p| (Source::Learned, p))
            .or_else(|| warm(pooled).map(|p| (Source::Pooled, p)));
        if let Some((source, prediction)) = learned {
            let mode = if prediction.upper_bound_s > budget_s {
                Mode::Background
            } else {
                Mode::Inline
            };
            return decision(mode, source, Some(prediction), None);
        }
        match self.table.check(call.tool, call.features, call.expensive) {
            Some(why) => decision(Mode::Background, Source::Static, None, Some(why)),
            None => decision(Mode::Inline, Source::Default, None, None),
        }
    }
}

/// Seconds for people: whole seconds from 10 s, then one or two decimals, then ms.
pub struct Seconds(pub f64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if !s.is_finite() {
            f.write_str("∞ s")
        } else if s >= 10.0 {
            write!(f, "{s:.0} s")
        } else if s >= 1.0 {
            write!(f, "{s:.1} s")
        } else if s >= 0.01 {
            write!(f, "{s:.2} s")
        } else if s >= 0.001 {
            write!(f, "{:.0} ms", s * 1000.0)
        } else {
            f.write_str("<1 ms")
        }
    }
}

struct Percent(f64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0 * 100.0;
        if (p - p.round()).abs() < 1e-9 {
            write!(f, "{p:.0}")
        } else {
            write!(f, "{p:.1}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn policy() -> Policy {
        Policy::new(DEFAULT_BUDGET_S, DEFAULT_RISK, StaticTable::default()).unwrap()
    }

    fn decide(
        tool: &str,
        args: serde_json::Value,
        models: (Option<&RuntimeModel>, Option<&RuntimeModel>),
    ) -> Decision {
        let features = Features::from_args(&args);
        let async_mode = args
            .get("async_mode")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        policy().decide(Call::new(tool, &features, async_mode), models.0, models.1)
    }

    fn trained(runtime_s: f64, calls: usize) -> RuntimeModel {
        let mut model = RuntimeModel::new(true);
        for i in 0..calls {
            // ±5% so the spread is small but not zero
            let wiggle = 1.0 + 0.05 * ((i % 3) as f64 - 1.0);
            model.observe(&Features::from_args(&json!({"x": 1})), runtime_s * wiggle);
        }
        model
    }

    #[test]
    fn the_builtin_table_parses_with_every_rule_of_the_pattern() {
        let table = StaticTable::from_toml(BUILTIN_STATIC_TABLE).unwrap();
        assert_eq!(table.rules().len(), 6);
        assert_eq!(StaticTable::default(), table);
    }

    #[test]
    fn explicit_async_mode_wins_over_a_model_that_says_fast() {
        let fast = trained(0.1, 50);
        let d = decide(
            "t",
            json!({"x": 1, "async_mode": true}),
            (Some(&fast), None),
        );
        assert_eq!((d.mode, d.source), (Mode::Background, Source::Explicit));
    }

    #[test]
    fn a_warm_model_decides_by_its_bound_and_says_why() {
        let slow = trained(72.0, 50);
        let d = decide("t", json!({"x": 1}), (Some(&slow), None));
        assert_eq!((d.mode, d.source), (Mode::Background, Source::Learned));
        assert!(
            d.reason()
                .starts_with("learned: predicted 72 s, 95% bound "),
            "{}",
            d.reason()
        );
        assert!(d.reason().ends_with("> budget 50 s"), "{}", d.reason());
        let fast = trained(2.0, 50);
        let d = decide(
            "t",
            json!({"x": 1, "files": vec!["a"; 100]}),
            (Some(&fast), None),
        );
        assert_eq!(
            (d.mode, d.source),
            (Mode::Inline, Source::Learned),
            "learning beats the table"
        );
    }

    #[test]
    fn a_cold_tool_uses_the_pooled_model_when_it_is_warm() {
        let cold = trained(72.0, 2);
        let pooled = trained(120.0, 50);
        let d = decide("t", json!({"x": 1}), (Some(&cold), Some(&pooled)));
        assert_eq!((d.mode, d.source), (Mode::Background, Source::Pooled));
        assert!(
            d.reason().starts_with("pooled over all tools"),
            "{}",
            d.reason()
        );
        let cold_pool = trained(120.0, 2);
        let d = decide("t", json!({"x": 1}), (Some(&cold), Some(&cold_pool)));
        assert_eq!(d.source, Source::Default);
    }

    #[test]
    fn static_rules_of_the_original_pattern_fire() {
        let background = |args| {
            let d = decide("tool", args, (None, None));
            assert_eq!(
                (d.mode, d.source),
                (Mode::Background, Source::Static),
                "{}",
                d.reason()
            );
            d.reason()
        };
        background(json!({"text": "x".repeat(10_001)}));
        background(json!({"files": vec!["f"; 21]}));
        background(json!({"max_items": 21}));
        background(json!({"file_size": 11 * 1024 * 1024}));
        background(json!({"batch": vec![1; 51]}));
        background(json!({"rows": 10_001}));
        let reason = background(json!({"api_calls": 101}));
        assert_eq!(
            reason,
            "static: argument 'api_calls' is 101 > 100 (more than 100 API calls)"
        );
        let d = decide("run_llm_review", json!({}), (None, None));
        assert_eq!(d.source, Source::Static);
    }

    #[test]
    fn under_every_threshold_is_inline_by_default() {
        let d = decide(
            "tool",
            json!({"text": "x".repeat(10_000), "files": vec!["f"; 20], "rows": 10_000, "batch": 50}),
            (None, None),
        );
        assert_eq!(
            (d.mode, d.source),
            (Mode::Inline, Source::Default),
            "{}",
            d.reason()
        );
    }

    #[test]
    fn a_tool_registered_expensive_goes_background_until_learned() {
        let features = Features::default();
        let call = Call {
            tool: "t",
            features: &features,
            async_mode: false,
            expensive: true,
            budget_s: None,
        };
        assert_eq!(policy().decide(call, None, None).source, Source::Static);
        let fast = trained(1.0, 50);
        assert_eq!(policy().decide(call, Some(&fast), None).mode, Mode::Inline);
    }

    #[test]
    fn the_default_risk_is_the_break_even_of_each_calls_budget() {
        let policy = Policy::break_even(50.0, 5.0, StaticTable::default()).unwrap();
        assert!((policy.risk() - 1.0 / 11.0).abs() < 1e-12);
        // A client with a 10 s budget waits less for a late call: background pays sooner.
        assert!((policy.risk_for(10.0) - 5.0 / 15.0).abs() < 1e-12);
        let slow = trained(40.0, 50);
        let features = Features::from_args(&json!({"x": 1}));
        let call = Call {
            budget_s: Some(10.0),
            ..Call::new("t", &features, false)
        };
        let d = policy.decide(call, Some(&slow), None);
        assert_eq!((d.risk, d.mode), (5.0 / 15.0, Mode::Background));
        assert!(d.reason().contains("66.7% bound"), "{}", d.reason());
        // --risk wins over the costs.
        let fixed = Policy::new(50.0, 0.2, StaticTable::default()).unwrap();
        assert_eq!((fixed.risk(), fixed.risk_for(10.0)), (0.2, 0.2));
        assert_eq!(
            Policy::break_even(50.0, 0.0, StaticTable::default()),
            Err(PolicyError::PollCost(0.0))
        );
    }

    #[test]
    fn bad_settings_and_bad_tables_say_what_is_wrong() {
        assert_eq!(
            Policy::new(0.0, 0.05, StaticTable::default()),
            Err(PolicyError::Budget(0.0))
        );
        assert_eq!(
            Policy::new(50.0, 1.0, StaticTable::default()),
            Err(PolicyError::Risk(1.0))
        );
        let err =
            StaticTable::from_toml("[[rule]]\nname = 'x'\nkinds = ['nope']\nover = 1").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = StaticTable::load(Path::new("no/such/table.toml")).unwrap_err();
        assert!(err.to_string().contains("no/such/table.toml"), "{err}");
    }

    #[test]
    fn seconds_read_well() {
        assert_eq!(Seconds(72.4).to_string(), "72 s");
        assert_eq!(Seconds(3.25).to_string(), "3.2 s");
        assert_eq!(Seconds(0.049).to_string(), "0.05 s");
        assert_eq!(Seconds(0.0042).to_string(), "4 ms");
        assert_eq!(Seconds(0.0001).to_string(), "<1 ms");
        assert_eq!(Percent(0.95).to_string(), "95");
        assert_eq!(Percent(0.975).to_string(), "97.5");
    }
}
