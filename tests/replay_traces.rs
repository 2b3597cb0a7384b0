//! The learned policy on every shipped trace, and on the public NASA log when it is
//! beside the checkout, held to issue 18's targets: late at most 1% of calls, at most
//! 0.6× the wasted seconds of the best baseline (`no_signal`: within 3% of the floor no
//! causal policy can pass), and bound coverage within 2 points of its target after the
//! first 1,000 calls. A change to the model that loses any of them fails here, with the
//! figures.

use std::path::{Path, PathBuf};

use smart_async::{
    Policy, PolicyScore, Replay, ReplayConfig, ReplayReport, StaticTable, TraceFile,
};

const BASELINES: [&str; 4] = ["static", "always_sync", "last2_avg", "p90_history"];

fn replayed(path: &Path) -> ReplayReport {
    let policy = Policy::break_even(50.0, 5.0, StaticTable::default()).unwrap();
    let mut replay = Replay::new(ReplayConfig {
        policy,
        policies: Vec::new(),
    })
    .unwrap();
    TraceFile::open(path)
        .unwrap()
        .for_each(&mut (), |record| replay.step(record))
        .unwrap();
    replay.report()
}

fn score<'a>(report: &'a ReplayReport, name: &str) -> &'a PolicyScore {
    report.policies.iter().find(|p| p.name == name).unwrap()
}

fn check(path: &Path) {
    let report = replayed(path);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let learned = score(&report, "learned");
    let best = BASELINES
        .iter()
        .map(|b| score(&report, b).wasted_s)
        .fold(f64::INFINITY, f64::min);
    assert!(
        learned.late_rate <= 0.01,
        "{name}: late {:.4}",
        learned.late_rate
    );
    if name.starts_with("no_signal") {
        // Runtimes ignore the arguments and a third overrun: every call to the
        // background is the best causal policy, each that fits costing one poll.
        let fits = score(&report, "oracle").sync;
        let floor = fits as f64 * report.poll_cost_s;
        assert!(
            learned.wasted_s <= 1.03 * floor,
            "{name}: {} > 1.03 × {floor}",
            learned.wasted_s
        );
    } else {
        assert!(
            learned.wasted_s <= 0.6 * best,
            "{name}: {} > 0.6 × {best}",
            learned.wasted_s
        );
    }
    let target = 1.0 - report.risk;
    let coverage = learned.coverage_after_1000.unwrap();
    assert!(
        (coverage - target).abs() <= 0.02,
        "{name}: coverage {coverage} against {target}"
    );
}

#[test]
fn the_learned_policy_meets_its_targets_on_every_shipped_trace() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/traces");
    let mut traces: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    traces.sort();
    assert_eq!(traces.len(), 7, "{traces:?}");
    for trace in &traces {
        check(trace);
    }
}

#[test]
fn the_learned_policy_meets_its_targets_on_the_public_nasa_log() {
    let nasa =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces/nasa-ipsc-app.jsonl.gz");
    if !nasa.is_file() {
        eprintln!("the public NASA log is not beside this checkout: not checked here");
        return;
    }
    check(&nasa);
}
