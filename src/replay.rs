//! Offline backtest of decision policies on a runtime trace.
//!
//! Replay is online, as a server lives it: for each call every policy decides first,
//! then learns the call's runtime (a failed call is scored but not learned from, as
//! in the engine). The trace's format is [`TraceRecord`]'s.
//!
//! Metrics for budget D and poll cost P: *late* = decided inline and runtime > D (the
//! caller waited the whole budget for nothing); *needless* = decided background and
//! runtime ≤ D (one poll too many); `wasted_s = late·D + needless·P`;
//! `accuracy = 1 − (late + needless)/calls`; rates are shares of all calls;
//! *coverage* = share of a policy's bounds that the runtime stayed under.
//!
//! Pure over plain data: [`crate::TraceFile`] reads the file, the CLI draws the
//! progress bar.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::features::{Features, ASYNC_MODE_ARG};
use crate::learner::Learner;
use crate::policy::{Call, Decision, Mode, Policy, StaticTable};
use crate::stats::Outcome;
use crate::trace::TraceRecord;

/// Seconds one poll costs a caller (a model turn), by default.
pub const DEFAULT_POLL_COST_S: f64 = 5.0;

/// Budget, risk, poll cost and table for a replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The policy the `learned` and `static` entries use (budget, risk, table).
    pub policy: Policy,
    /// Seconds a needless background costs.
    pub poll_cost_s: f64,
}

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
}

/// A whole replay's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The budget.
    pub budget_s: f64,
    /// Calls replayed.
    pub calls: u64,
    /// Every policy's score, in a fixed order.
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
}

/// The cold-start table alone.
struct StaticOnly {
    table: StaticTable,
}

impl StaticOnly {
    fn mode(table: &StaticTable, tool: &str, features: &Features, async_mode: bool) -> Mode {
        let call = Call::new(tool, features, async_mode);
        if async_mode || table.check(call).is_some() {
            Mode::Background
        } else {
            Mode::Inline
        }
    }
}

impl Contender for StaticOnly {
    fn name(&self) -> &'static str {
        "static"
    }

    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said {
        (Self::mode(&self.table, tool, features, async_mode), None)
    }

    fn learn(&mut self, _: &str, _: &Features, _: f64) {}
}

/// A plain server with deadline promotion: everything inline.
struct AlwaysSync;

impl Contender for AlwaysSync {
    fn name(&self) -> &'static str {
        "always_sync"
    }

    fn decide(&mut self, _: &str, _: &Features, _: bool) -> Said {
        (Mode::Inline, None)
    }

    fn learn(&mut self, _: &str, _: &Features, _: f64) {}
}

/// Per tool, the mean of its last two runtimes (Tsafrir, Etsion & Feitelson 2007);
/// the static table until a tool has two.
struct LastTwo {
    table: StaticTable,
    budget_s: f64,
    last: HashMap<String, (Option<f64>, Option<f64>)>,
}

impl Contender for LastTwo {
    fn name(&self) -> &'static str {
        "last2_avg"
    }

    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said {
        match self.last.get(tool) {
            Some((Some(a), Some(b))) if !async_mode => {
                let mode = if (a + b) / 2.0 > self.budget_s {
                    Mode::Background
                } else {
                    Mode::Inline
                };
                (mode, None)
            }
            _ => (
                StaticOnly::mode(&self.table, tool, features, async_mode),
                None,
            ),
        }
    }

    fn learn(&mut self, tool: &str, _: &Features, runtime_s: f64) {
        let entry = self.last.entry(tool.to_owned()).or_default();
        *entry = (Some(runtime_s), entry.0);
    }
}

/// Per tool, the 90th percentile of all its past runtimes once it has five; the
/// static table before. The history is a log-spaced histogram (1% wide bins), so memory
/// stays bounded however long the trace.
struct P90History {
    table: StaticTable,
    budget_s: f64,
    histograms: HashMap<String, LogHistogram>,
}

impl Contender for P90History {
    fn name(&self) -> &'static str {
        "p90_history"
    }

    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said {
        match self.histograms.get(tool) {
            Some(history) if history.count >= 5 && !async_mode => {
                let p90 = history.quantile(0.9);
                let mode = if p90 > self.budget_s {
                    Mode::Background
                } else {
                    Mode::Inline
                };
                (mode, Some(p90))
            }
            _ => (
                StaticOnly::mode(&self.table, tool, features, async_mode),
                None,
            ),
        }
    }

    fn learn(&mut self, tool: &str, _: &Features, runtime_s: f64) {
        self.histograms
            .entry(tool.to_owned())
            .or_default()
            .add(runtime_s);
    }
}

/// Runtimes from 1 ms to ~10⁷ s in bins 1% wide.
#[derive(Debug, Clone, Default)]
struct LogHistogram {
    bins: HashMap<u32, u64>,
    count: u64,
}

const HISTOGRAM_MIN_S: f64 = 1e-3;
const HISTOGRAM_BIN_RATIO_LN: f64 = 0.01;

impl LogHistogram {
    fn add(&mut self, runtime_s: f64) {
        let bin = ((runtime_s.max(HISTOGRAM_MIN_S) / HISTOGRAM_MIN_S).ln() / HISTOGRAM_BIN_RATIO_LN)
            as u32;
        *self.bins.entry(bin).or_default() += 1;
        self.count += 1;
    }

    /// The upper edge of the bin holding the q-quantile.
    fn quantile(&self, q: f64) -> f64 {
        let mut bins: Vec<(&u32, &u64)> = self.bins.iter().collect();
        bins.sort_unstable();
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bin, count) in bins {
            seen += count;
            if seen >= rank {
                return HISTOGRAM_MIN_S * ((*bin + 1) as f64 * HISTOGRAM_BIN_RATIO_LN).exp();
            }
        }
        f64::INFINITY
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

    fn add(&mut self, other: &Tally) {
        self.sync += other.sync;
        self.background += other.background;
        self.late += other.late;
        self.needless += other.needless;
        self.bounds += other.bounds;
        self.covered += other.covered;
    }
}

/// A replay in progress: feed it records, then read the report.
pub struct Replay {
    budget_s: f64,
    poll_cost_s: f64,
    contenders: Vec<Box<dyn Contender + Send>>,
    tallies: Vec<Tally>,
    /// Sync iff the runtime fits, scored last.
    oracle: Tally,
    calls: u64,
}

impl Replay {
    /// Every policy, fresh.
    pub fn new(config: ReplayConfig) -> Replay {
        let budget_s = config.policy.budget_s();
        let table = config.policy.table().clone();
        let contenders: Vec<Box<dyn Contender + Send>> = vec![
            Box::new(EnginePolicy {
                policy: config.policy,
                learner: Learner::default(),
                decided: None,
            }),
            Box::new(StaticOnly {
                table: table.clone(),
            }),
            Box::new(AlwaysSync),
            Box::new(LastTwo {
                table: table.clone(),
                budget_s,
                last: HashMap::new(),
            }),
            Box::new(P90History {
                table,
                budget_s,
                histograms: HashMap::new(),
            }),
        ];
        let tallies = vec![Tally::default(); contenders.len()];
        Replay {
            budget_s,
            poll_cost_s: config.poll_cost_s,
            contenders,
            tallies,
            oracle: Tally::default(),
            calls: 0,
        }
    }

    /// Every policy decides this call, is scored, then learns it.
    pub fn step(&mut self, record: &TraceRecord) {
        let features = Features::from_args(&record.args);
        let async_mode = record
            .args
            .get(ASYNC_MODE_ARG)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let fits = record.runtime_s <= self.budget_s;
        for (contender, tally) in self.contenders.iter_mut().zip(&mut self.tallies) {
            let (mode, bound) = contender.decide(&record.tool, &features, async_mode);
            tally.count(mode, fits);
            if let Some(bound) = bound {
                tally.bounds += 1;
                tally.covered += u64::from(record.runtime_s <= bound);
            }
            if record.ok {
                contender.learn(&record.tool, &features, record.runtime_s);
            } else {
                contender.failed(&record.tool, &features, record.runtime_s);
            }
        }
        // The oracle knows the runtime: the floor no policy can beat.
        let oracle_mode = if fits { Mode::Inline } else { Mode::Background };
        self.oracle.count(oracle_mode, fits);
        self.calls += 1;
    }

    /// The scores so far.
    pub fn report(&self) -> ReplayReport {
        self.scored(&self.tallies, &self.oracle, self.calls)
    }

    /// The scores of several replays (of several traces, with one config) together:
    /// every count summed, each rate and coverage taken over all their calls; `None`
    /// for none.
    pub fn total(replays: &[Replay]) -> Option<ReplayReport> {
        let (first, rest) = replays.split_first()?;
        let mut tallies = first.tallies.clone();
        let mut oracle = first.oracle.clone();
        let mut calls = first.calls;
        for replay in rest {
            for (tally, theirs) in tallies.iter_mut().zip(&replay.tallies) {
                tally.add(theirs);
            }
            oracle.add(&replay.oracle);
            calls += replay.calls;
        }
        Some(first.scored(&tallies, &oracle, calls))
    }

    fn scored(&self, tallies: &[Tally], oracle: &Tally, calls: u64) -> ReplayReport {
        let calls_f = calls.max(1) as f64;
        let policies = self
            .contenders
            .iter()
            .map(|contender| contender.name())
            .chain(["oracle"])
            .zip(tallies.iter().chain([oracle]))
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
                coverage: (t.bounds > 0).then(|| t.covered as f64 / t.bounds as f64),
            })
            .collect();
        ReplayReport {
            budget_s: self.budget_s,
            calls,
            policies,
        }
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} calls, budget {} s", self.calls, self.budget_s)?;
        writeln!(
            f,
            "{:<12} {:>9} {:>10} {:>8} {:>9} {:>7} {:>9} {:>9} {:>12} {:>9}",
            "policy",
            "sync",
            "background",
            "late",
            "needless",
            "late%",
            "needless%",
            "accuracy",
            "wasted_s",
            "coverage"
        )?;
        for p in &self.policies {
            writeln!(
                f,
                "{:<12} {:>9} {:>10} {:>8} {:>9} {:>7.2} {:>9.2} {:>9.4} {:>12.0} {:>9}",
                p.name,
                p.sync,
                p.background,
                p.late,
                p.needless,
                p.late_rate * 100.0,
                p.needless_rate * 100.0,
                p.accuracy,
                p.wasted_s,
                p.coverage.map_or("-".to_owned(), |c| format!("{c:.3}")),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DEFAULT_BUDGET_S, DEFAULT_RISK};
    use serde_json::json;

    fn replay() -> Replay {
        let policy = Policy::new(DEFAULT_BUDGET_S, DEFAULT_RISK, StaticTable::default()).unwrap();
        Replay::new(ReplayConfig {
            policy,
            poll_cost_s: DEFAULT_POLL_COST_S,
        })
    }

    fn record(tool: &str, args: Value, runtime_s: f64) -> TraceRecord {
        TraceRecord {
            tool: tool.into(),
            args,
            runtime_s,
            ok: true,
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
    fn the_histogram_quantile_is_within_a_bin_of_the_truth() {
        let mut h = LogHistogram::default();
        for i in 1..=1000 {
            h.add(i as f64);
        }
        let p90 = h.quantile(0.9);
        assert!((p90 / 900.0 - 1.0).abs() < 0.02, "{p90}");
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
