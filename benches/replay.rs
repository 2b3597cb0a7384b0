//! Replay throughput: the learned policy alone and every policy, on a trace of 504,000
//! lines (the shipped traces, 21,000 calls, taken 24 times) against its first 21,000
//! lines, parsed line by line as the CLI does. Equal throughput on both says the cost
//! per call does not grow with the trace.
//!
//! Run: `cargo bench --bench replay`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smart_async::{Policy, Replay, ReplayConfig, StaticTable, TraceRecord};

const TRACES: [&str; 7] = [
    include_str!("../data/traces/linear_bytes.jsonl"),
    include_str!("../data/traces/power_items.jsonl"),
    include_str!("../data/traces/slow_mode.jsonl"),
    include_str!("../data/traces/growing_noise.jsonl"),
    include_str!("../data/traces/drift.jsonl"),
    include_str!("../data/traces/no_signal.jsonl"),
    include_str!("../data/traces/recency.jsonl"),
];
const REPEATS: usize = 24;

fn replay_lines(lines: &[&str], policies: &[&str]) -> usize {
    let policy = Policy::break_even(50.0, 5.0, StaticTable::default()).expect("valid policy");
    let config = ReplayConfig {
        policy,
        policies: policies.iter().map(|name| (*name).to_owned()).collect(),
    };
    let mut replay = Replay::new(config).expect("known policies");
    for line in lines {
        replay.step(&TraceRecord::parse(line).expect("a valid line"));
    }
    black_box(replay.report()).policies.len()
}

fn replay(c: &mut Criterion) {
    let once: Vec<&str> = TRACES.iter().flat_map(|trace| trace.lines()).collect();
    let long: Vec<&str> = (0..REPEATS).flat_map(|_| once.iter().copied()).collect();
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    for (label, policies) in [("learned", &["learned"][..]), ("all policies", &[][..])] {
        for (size, lines) in [("21,000 lines", &once), ("504,000 lines", &long)] {
            group.throughput(Throughput::Elements(lines.len() as u64));
            group.bench_function(format!("{label}, {size}"), |b| {
                b.iter(|| replay_lines(lines, policies))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
