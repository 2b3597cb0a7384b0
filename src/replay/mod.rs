//! Offline backtest of decision policies on a runtime trace.
//!
//! Replay is online, as a server lives it: for each call every policy decides first,
//! then learns the call's runtime (a failed call is scored but not learned from, as
//! in the engine; a censored call, one cut off, teaches the learned policy a lower
//! bound and the baselines nothing). The trace's format is [`TraceRecord`]'s.
//!
//! Metrics for budget D and poll cost P: *late* = decided inline and runtime > D (the
//! caller waited the whole budget for nothing); *needless* = decided background and
//! runtime ≤ D (one poll too many); `wasted_s = late·D + needless·P`;
//! `accuracy = 1 − (late + needless)/calls`; rates are shares of the scored calls;
//! *coverage* = share of a policy's bounds that the runtime stayed under, also after
//! the first [`WARMUP_CALLS`] calls. A censored call cut off within the budget has no
//! known side of it and is not scored.
//!
//! Only the policies asked for run ([`ReplayConfig::policies`]), each at a cost per
//! call that does not grow with the trace.
//!
//! Pure over plain data: [`crate::TraceFile`] reads the file, the CLI draws the
//! progress bar.

mod baselines;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::features::{Features, ASYNC_MODE_ARG};
use crate::learner::Learner;
use crate::policy::{break_even_risk, Call, Decision, Mode, Policy};
use crate::stats::Outcome;
use crate::trace::TraceRecord;
use baselines::{AlwaysSync, LastTwo, P90History, StaticOnly};

/// Every policy replay knows, in the order it reports them.
pub const POLICY_NAMES: [&str; 6] = [
    "learned",
    "static",
    "always_sync",
    "last2_avg",
    "p90_history",
    "oracle",
];

/// Calls after which coverage is scored a second time, once calibration has had time
/// to settle (`coverage_after_1000`).
pub const WARMUP_CALLS: u64 = 1000;

/// The policy to replay and the policies to score it against.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The policy the `learned` and `static` entries use (budget, risk, poll cost,
    /// table); the poll cost is also what a needless background is scored at.
    pub policy: Policy,
    /// The names of the policies to run ([`POLICY_NAMES`]); empty for all.
    pub policies: Vec<String>,
}

/// A policy replay does not know.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no policy is named '{0}': the policies are learned, static, always_sync, last2_avg, p90_history and oracle")]
pub struct UnknownPolicy(pub String);

/// One policy's score.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyScore {
    /// The policy.
    pub name: String,
    /// Calls decided inline.
    pub sync: u64,
    /// Calls decided background.
    pub background: u64,
    /// Inline calls that overran the budget.
    pub late: u64,
    /// Background calls that fit the budget.
    pub needless: u64,
    /// `late / calls`.
    pub late_rate: f64,
    /// `needless / calls`.
    pub needless_rate: f64,
    /// `1 − (late + needless) / calls`.
    pub accuracy: f64,
    /// `late·budget + needless·poll_cost`.
    pub wasted_s: f64,
    /// Share of the policy's bounds the runtime stayed under; `None` without bounds.
    pub coverage: Option<f64>,
    /// The same, over the calls after the first [`WARMUP_CALLS`].
    pub coverage_after_1000: Option<f64>,
}

/// A whole replay's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The budget.
    pub budget_s: f64,
    /// The poll cost a needless background is scored at.
    pub poll_cost_s: f64,
    /// The risk behind the learned policy's bound.
    pub risk: f64,
    /// The break-even risk of the budget and poll cost, `P / (D + P)`: the risk unless
    /// `--risk` fixed another.
    pub break_even_risk: f64,
    /// Calls scored.
    pub calls: u64,
    /// Censored calls cut off within the budget: learned from, not scored.
    pub unscored: u64,
    /// Every policy's score, in [`POLICY_NAMES`] order.
    pub policies: Vec<PolicyScore>,
}

/// What a policy said about one call: its mode and, if it has one, its bound.
type Said = (Mode, Option<f64>);

trait Contender {
    fn name(&self) -> &'static str;
    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said;
    /// Learns a run that succeeded.
    fn learn(&mut self, tool: &str, features: &Features, runtime_s: f64);
    /// Hears of a run that failed: not learned from, as in the engine.
    fn failed(&mut self, _tool: &str, _features: &Features, _runtime_s: f64) {}
    /// Hears of a run cut off after `runtime_s`: the baselines drop it, as their
    /// authors' policies do.
    fn cut(&mut self, _tool: &str, _features: &Features, _runtime_s: f64) {}
}

/// The engine's own policy, deciding and learning through the server's own learner.
struct EnginePolicy {
    policy: Policy,
    learner: Learner,
    /// The decision on the call being replayed, which its run is learned against.
    decided: Option<Decision>,
}

impl EnginePolicy {
    fn finished(&mut self, tool: &str, features: &Features, runtime_s: f64, outcome: Outcome) {
        if let Some(decision) = self.decided.take() {
            (self.learner).learn(tool, features, runtime_s, outcome, &decision);
        }
    }
}

impl Contender for EnginePolicy {
    fn name(&self) -> &'static str {
        "learned"
    }

    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said {
        let call = Call::new(tool, features, async_mode);
        let decision = self.learner.decide(&self.policy, call);
        let said = (decision.mode, decision.upper_bound_s);
        self.decided = Some(decision);
        said
    }

    fn learn(&mut self, tool: &str, features: &Features, runtime_s: f64) {
        self.finished(tool, features, runtime_s, Outcome::Completed);
    }

    fn failed(&mut self, tool: &str, features: &Features, runtime_s: f64) {
        self.finished(tool, features, runtime_s, Outcome::Failed);
    }

    fn cut(&mut self, tool: &str, features: &Features, runtime_s: f64) {
        self.finished(tool, features, runtime_s, Outcome::Cancelled);
    }
}

#[derive(Debug, Default, Clone)]
struct Tally {
    sync: u64,
    background: u64,
    late: u64,
    needless: u64,
    bounds: u64,
    covered: u64,
    bounds_after_warmup: u64,
    covered_after_warmup: u64,
}

impl Tally {
    fn count(&mut self, mode: Mode, fits: bool) {
        match mode {
            Mode::Inline => {
                self.sync += 1;
                self.late += u64::from(!fits);
            }
            Mode::Background => {
                self.background += 1;
                self.needless += u64::from(fits);
            }
        }
    }

    fn bound(&mut self, covered: bool, after_warmup: bool) {
        self.bounds += 1;
        self.covered += u64::from(covered);
        if after_warmup {
            self.bounds_after_warmup += 1;
            self.covered_after_warmup += u64::from(covered);
        }
    }

    fn add(&mut self, other: &Tally) {
        self.sync += other.sync;
        self.background += other.background;
        self.late += other.late;
        self.needless += other.needless;
        self.bounds += other.bounds;
        self.covered += other.covered;
        self.bounds_after_warmup += other.bounds_after_warmup;
        self.covered_after_warmup += other.covered_after_warmup;
    }
}

/// A replay in progress: feed it records, then read the report.
pub struct Replay {
    budget_s: f64,
    poll_cost_s: f64,
    risk: f64,
    contenders: Vec<Box<dyn Contender + Send>>,
    tallies: Vec<Tally>,
    /// Sync iff the runtime fits, scored last; `None` when not asked for.
    oracle: Option<Tally>,
    calls: u64,
    unscored: u64,
}

impl Replay {
    /// The policies `config` names, fresh.
    pub fn new(config: ReplayConfig) -> Result<Replay, UnknownPolicy> {
        if let Some(unknown) =
            (config.policies.iter()).find(|name| !POLICY_NAMES.contains(&name.as_str()))
        {
            return Err(UnknownPolicy(unknown.clone()));
        }
        let wanted =
            |name: &str| config.policies.is_empty() || config.policies.iter().any(|n| n == name);
        let policy = config.policy;
        let budget_s = policy.budget_s();
        let table = policy.table().clone();
        let (poll_cost_s, risk) = (policy.poll_cost_s(), policy.risk());
        let mut contenders: Vec<Box<dyn Contender + Send>> = Vec::new();
        if wanted("learned") {
            contenders.push(Box::new(EnginePolicy {
                policy,
                learner: Learner::default(),
                decided: None,
            }));
        }
        if wanted("static") {
            contenders.push(Box::new(StaticOnly {
                table: table.clone(),
            }));
        }
        if wanted("always_sync") {
            contenders.push(Box::new(AlwaysSync));
        }
        if wanted("last2_avg") {
            contenders.push(Box::new(LastTwo {
                table: table.clone(),
                budget_s,
                last: Default::default(),
            }));
        }
        if wanted("p90_history") {
            contenders.push(Box::new(P90History {
                table,
                budget_s,
                histograms: Default::default(),
            }));
        }
        let tallies = vec![Tally::default(); contenders.len()];
        Ok(Replay {
            budget_s,
            poll_cost_s,
            risk,
            contenders,
            tallies,
            oracle: wanted("oracle").then(Tally::default),
            calls: 0,
            unscored: 0,
        })
    }

    /// Every policy decides this call, is scored, then learns it.
    pub fn step(&mut self, record: &TraceRecord) {
        let features = Features::from_args(&record.args);
        let async_mode = record
            .args
            .get(ASYNC_MODE_ARG)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // A call cut off within the budget might have fit or not: not scored.
        let scored = !record.censored || record.runtime_s > self.budget_s;
        let fits = record.runtime_s <= self.budget_s;
        let after_warmup = self.calls >= WARMUP_CALLS;
        for (contender, tally) in self.contenders.iter_mut().zip(&mut self.tallies) {
            let (mode, bound) = contender.decide(&record.tool, &features, async_mode);
            if scored {
                tally.count(mode, fits);
            }
            if let Some(bound) = bound {
                let covered = record.runtime_s <= bound;
                // A cut run's bound is checked only when the run passed it.
                if !record.censored || !covered {
                    tally.bound(covered, after_warmup);
                }
            }
            if record.censored {
                contender.cut(&record.tool, &features, record.runtime_s);
            } else if record.ok {
                contender.learn(&record.tool, &features, record.runtime_s);
            } else {
                contender.failed(&record.tool, &features, record.runtime_s);
            }
        }
        if !scored {
            self.unscored += 1;
            return;
        }
        // The oracle knows the runtime: the floor no policy can beat.
        if let Some(oracle) = &mut self.oracle {
            oracle.count(if fits { Mode::Inline } else { Mode::Background }, fits);
        }
        self.calls += 1;
    }

    /// The scores so far.
    pub fn report(&self) -> ReplayReport {
        self.scored(
            &self.tallies,
            self.oracle.as_ref(),
            self.calls,
            self.unscored,
        )
    }

    /// The scores of several replays (of several traces, with one config) together:
    /// every count summed, each rate and coverage taken over all their calls; `None`
    /// for none.
    pub fn total(replays: &[Replay]) -> Option<ReplayReport> {
        let (first, rest) = replays.split_first()?;
        let mut tallies = first.tallies.clone();
        let mut oracle = first.oracle.clone();
        let (mut calls, mut unscored) = (first.calls, first.unscored);
        for replay in rest {
            for (tally, theirs) in tallies.iter_mut().zip(&replay.tallies) {
                tally.add(theirs);
            }
            if let (Some(oracle), Some(theirs)) = (&mut oracle, &replay.oracle) {
                oracle.add(theirs);
            }
            calls += replay.calls;
            unscored += replay.unscored;
        }
        Some(first.scored(&tallies, oracle.as_ref(), calls, unscored))
    }

    fn scored(
        &self,
        tallies: &[Tally],
        oracle: Option<&Tally>,
        calls: u64,
        unscored: u64,
    ) -> ReplayReport {
        let calls_f = calls.max(1) as f64;
        let share = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
        let policies = (self.contenders.iter().map(|contender| contender.name()))
            .zip(tallies)
            .chain(oracle.map(|tally| ("oracle", tally)))
            .map(|(name, t)| PolicyScore {
                name: name.to_owned(),
                sync: t.sync,
                background: t.background,
                late: t.late,
                needless: t.needless,
                late_rate: t.late as f64 / calls_f,
                needless_rate: t.needless as f64 / calls_f,
                accuracy: 1.0 - (t.late + t.needless) as f64 / calls_f,
                wasted_s: t.late as f64 * self.budget_s + t.needless as f64 * self.poll_cost_s,
                coverage: share(t.covered, t.bounds),
                coverage_after_1000: share(t.covered_after_warmup, t.bounds_after_warmup),
            })
            .collect();
        ReplayReport {
            budget_s: self.budget_s,
            poll_cost_s: self.poll_cost_s,
            risk: self.risk,
            break_even_risk: break_even_risk(self.budget_s, self.poll_cost_s),
            calls,
            unscored,
            policies,
        }
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let risk = if (self.risk - self.break_even_risk).abs() < 1e-12 {
            format!(
                "risk {:.3} (break-even, poll cost {} s)",
                self.risk, self.poll_cost_s
            )
        } else {
            format!(
                "risk {} (--risk; break-even would be {:.3})",
                self.risk, self.break_even_risk
            )
        };
        write!(
            f,
            "{} calls, budget {} s, {risk}",
            self.calls, self.budget_s
        )?;
        if self.unscored > 0 {
            write!(
                f,
                ", {} cut off within the budget not scored",
                self.unscored
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<12} {:>9} {:>10} {:>8} {:>9} {:>7} {:>9} {:>9} {:>12} {:>9} {:>9}",
            "policy",
            "sync",
            "background",
            "late",
            "needless",
            "late%",
            "needless%",
            "accuracy",
            "wasted_s",
            "coverage",
            "cov>1000"
        )?;
        let rate = |value: Option<f64>| value.map_or("-".to_owned(), |c| format!("{c:.3}"));
        for p in &self.policies {
            writeln!(
                f,
                "{:<12} {:>9} {:>10} {:>8} {:>9} {:>7.2} {:>9.2} {:>9.4} {:>12.0} {:>9} {:>9}",
                p.name,
                p.sync,
                p.background,
                p.late,
                p.needless,
                p.late_rate * 100.0,
                p.needless_rate * 100.0,
                p.accuracy,
                p.wasted_s,
                rate(p.coverage),
                rate(p.coverage_after_1000),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{StaticTable, DEFAULT_BUDGET_S, DEFAULT_POLL_COST_S};
    use serde_json::json;

    fn policy() -> Policy {
        Policy::break_even(
            DEFAULT_BUDGET_S,
            DEFAULT_POLL_COST_S,
            StaticTable::default(),
        )
        .unwrap()
    }

    fn replay() -> Replay {
        Replay::new(ReplayConfig {
            policy: policy(),
            policies: Vec::new(),
        })
        .unwrap()
    }

    fn record(tool: &str, args: Value, runtime_s: f64) -> TraceRecord {
        TraceRecord {
            tool: tool.into(),
            args,
            runtime_s,
            ok: true,
            censored: false,
        }
    }

    fn score<'a>(report: &'a ReplayReport, name: &str) -> &'a PolicyScore {
        report.policies.iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn metrics_follow_their_definitions() {
        // One tool: 60 s calls under a 50 s budget. always_sync is late every time;
        // the oracle is never wrong; last2 learns after two calls.
        let mut replay = replay();
        for _ in 0..10 {
            replay.step(&record("slow", json!({}), 60.0));
        }
        let report = replay.report();
        assert_eq!(report.calls, 10);
        let sync = score(&report, "always_sync");
        assert_eq!((sync.sync, sync.late, sync.needless), (10, 10, 0));
        assert_eq!(sync.wasted_s, 10.0 * 50.0);
        assert_eq!(sync.accuracy, 0.0);
        let oracle = score(&report, "oracle");
        assert_eq!((oracle.late, oracle.needless, oracle.wasted_s), (0, 0, 0.0));
        assert_eq!(score(&report, "last2_avg").late, 2);
        assert_eq!(score(&report, "p90_history").late, 5);
        assert!(score(&report, "last2_avg").coverage.is_none());
    }

    #[test]
    fn needless_backgrounds_cost_the_poll() {
        let mut replay = replay();
        replay.step(&record("t", json!({"async_mode": true}), 1.0));
        let report = replay.report();
        assert_eq!(score(&report, "static").needless, 1);
        assert_eq!(score(&report, "static").wasted_s, DEFAULT_POLL_COST_S);
    }

    #[test]
    fn failed_calls_are_scored_but_not_learned() {
        let mut replay = replay();
        for _ in 0..3 {
            replay.step(&TraceRecord {
                ok: false,
                ..record("t", json!({}), 90.0)
            });
        }
        let report = replay.report();
        assert_eq!(
            score(&report, "last2_avg").late,
            3,
            "never learned, so never backgrounded"
        );
    }

    #[test]
    fn only_the_policies_asked_for_run_and_a_wrong_name_says_which_exist() {
        let mut replay = Replay::new(ReplayConfig {
            policy: policy(),
            policies: vec!["learned".into(), "oracle".into()],
        })
        .unwrap();
        replay.step(&record("t", json!({}), 60.0));
        let names: Vec<String> = replay
            .report()
            .policies
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["learned", "oracle"]);
        let err = Replay::new(ReplayConfig {
            policy: policy(),
            policies: vec!["lerned".into()],
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("'lerned'") && err.to_string().contains("p90_history"));
    }

    #[test]
    fn the_report_says_which_risk_the_learned_policy_used() {
        let report = replay().report();
        assert!((report.risk - 1.0 / 11.0).abs() < 1e-12);
        assert_eq!(report.risk, report.break_even_risk);
        assert!(report
            .to_string()
            .contains("risk 0.091 (break-even, poll cost 5 s)"));
        let fixed = Replay::new(ReplayConfig {
            policy: Policy::new(50.0, 0.05, StaticTable::default()).unwrap(),
            policies: Vec::new(),
        })
        .unwrap()
        .report();
        assert!(fixed
            .to_string()
            .contains("risk 0.05 (--risk; break-even would be 0.091)"));
    }

    /// Censored calls: cut off past the budget they are late for an inline policy; cut
    /// off within it they are not scored; the learned policy learns from both.
    #[test]
    fn censored_calls_teach_the_learned_policy_and_are_scored_when_their_side_is_known() {
        let mut replay = replay();
        for _ in 0..20 {
            replay.step(&TraceRecord {
                censored: true,
                ..record("stuck", json!({}), 80.0)
            });
        }
        replay.step(&TraceRecord {
            censored: true,
            ..record("stuck", json!({}), 10.0)
        });
        let report = replay.report();
        assert_eq!((report.calls, report.unscored), (20, 1));
        assert_eq!(score(&report, "always_sync").late, 20);
        assert_eq!(
            score(&report, "last2_avg").late,
            20,
            "the baselines drop cut runs"
        );
        let learned = score(&report, "learned");
        assert!(learned.late <= 5, "{learned:?}");
    }

    #[test]
    fn the_learned_policy_learns_a_slow_tool() {
        let mut replay = replay();
        for i in 0..200 {
            replay.step(&record(
                "build",
                json!({"n": i % 5}),
                120.0 + (i % 7) as f64,
            ));
        }
        let report = replay.report();
        let learned = score(&report, "learned");
        assert!(learned.late <= 10, "{learned:?}");
        assert!(learned.coverage.unwrap() > 0.9, "{learned:?}");
    }
}
