//! Writes the synthetic runtime traces in `data/traces/`, one per runtime shape, so
//! `smart-async replay` can be measured on shapes real tools have.
//!
//! Run: `cargo run --release --example make_traces [-- OUT_DIR]` (default
//! `data/traces`). Deterministic: the same seed gives the same files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use serde_json::{json, Value};

/// Calls per trace.
const CALLS: usize = 3000;
const SEED: u64 = 20261124;
/// The recency trace's own seed (see there).
const RECENCY_SEED: u64 = 5;

/// Multiplicative noise with the given spread of ln(runtime).
fn noise(rng: &mut StdRng, sigma: f64) -> f64 {
    LogNormal::new(0.0, sigma).map_or(1.0, |d| d.sample(rng))
}

/// A value spread evenly in log space between `low` and `high`.
fn log_uniform(rng: &mut StdRng, low: f64, high: f64) -> f64 {
    (rng.random_range(low.ln()..high.ln())).exp()
}

fn write(
    dir: &Path,
    name: &str,
    calls: impl Iterator<Item = (String, Value, f64)>,
) -> std::io::Result<()> {
    let path = dir.join(format!("{name}.jsonl"));
    let mut out = BufWriter::new(File::create(&path)?);
    for (tool, args, runtime_s) in calls {
        let line =
            json!({"tool": tool, "args": args, "runtime_s": (runtime_s * 1000.0).round() / 1000.0});
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("data/traces"), PathBuf::from);
    std::fs::create_dir_all(&dir)?;
    let mut rng = StdRng::seed_from_u64(SEED);

    // Hashing: 0.4 s start-up plus 60 MB/s, inputs from 1 MB to 20 GB.
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let bytes = log_uniform(&mut rng, 1e6, 2e10).round();
            let files = (bytes / log_uniform(&mut rng, 1e5, 1e7)).ceil();
            let runtime = (0.4 + bytes / 60e6) * noise(&mut rng, 0.15);
            (
                "hash_tree".to_owned(),
                json!({"path": "data", "bytes": bytes, "files": files}),
                runtime,
            )
        })
        .collect();
    write(&dir, "linear_bytes", calls.into_iter())?;

    // Batch work: 0.05 s × items^1.3, 1 to 5,000 items.
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let items = log_uniform(&mut rng, 1.0, 5000.0).round();
            let runtime = 0.05 * items.powf(1.3) * noise(&mut rng, 0.2);
            (
                "embed_batch".to_owned(),
                json!({"count": items, "model": "small"}),
                runtime,
            )
        })
        .collect();
    write(&dir, "power_items", calls.into_iter())?;

    // A slow mode: a deep scan takes 12× a quick one of the same size.
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let mb = log_uniform(&mut rng, 1.0, 2000.0).round();
            let deep = rng.random_bool(0.3);
            let runtime = (0.2 + mb * 0.02) * if deep { 12.0 } else { 1.0 } * noise(&mut rng, 0.2);
            (
                "scan".to_owned(),
                json!({"size_mb": mb, "deep": deep}),
                runtime,
            )
        })
        .collect();
    write(&dir, "slow_mode", calls.into_iter())?;

    // Noise that grows with size: σ of ln(runtime) from 0.1 to 0.9.
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let rows = log_uniform(&mut rng, 100.0, 1e7).round();
            let sigma = 0.1 + 0.8 * (rows.ln() - 100f64.ln()) / (1e7f64.ln() - 100f64.ln());
            let runtime = 1e-5 * rows * noise(&mut rng, sigma) + 0.1;
            (
                "query".to_owned(),
                json!({"table": "events", "limit": rows}),
                runtime,
            )
        })
        .collect();
    write(&dir, "growing_noise", calls.into_iter())?;

    // A tool whose speed changes half way: the same inputs take 3× longer.
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let tests = log_uniform(&mut rng, 10.0, 2000.0).round();
            let slowdown = if i < CALLS / 2 { 1.0 } else { 3.0 };
            let runtime = (2.0 + tests * 0.03) * slowdown * noise(&mut rng, 0.15);
            (
                "run_tests".to_owned(),
                json!({"tests": tests, "filter": "all"}),
                runtime,
            )
        })
        .collect();
    write(&dir, "drift", calls.into_iter())?;

    // Runtime that does not depend on the arguments: a lognormal around 40 s.
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let runtime = 40.0 * noise(&mut rng, 0.5);
            let seed: u32 = rng.random();
            let verbose = rng.random_bool(0.5);
            let ignored: f64 = Normal::new(100.0_f64, 30.0).map_or(100.0, |d| d.sample(&mut rng));
            let ignored = ignored.abs().round();
            (
                "deploy".to_owned(),
                json!({"seed": seed, "verbose": verbose, "replicas": ignored}),
                runtime,
            )
        })
        .collect();
    write(&dir, "no_signal", calls.into_iter())?;

    // Runs that repeat: a user's simulations come in long sessions of similar size
    // (about 200 calls each, the size in the arguments) and in one of two hidden modes
    // (a full solve takes 8× a quick pass of the same mesh) that switches about once in
    // 250 calls. As on a real cluster log, about 97% of consecutive calls fall on the
    // same side of a 50 s budget: the last run says much the arguments do not.
    // A seed of its own: the share of same-side pairs swings from 92% to 99% between
    // seeds (it hangs on how many sessions land near the budget); of seeds 1 to 8, this
    // is the one nearest the 97% measured on the real log. The traces above keep theirs.
    let mut rng = StdRng::seed_from_u64(RECENCY_SEED);
    let mut session_cells = 0.0;
    let mut full_solve = false;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            if i == 0 || rng.random_bool(0.005) {
                session_cells = log_uniform(&mut rng, 20.0, 20_000.0);
            }
            if rng.random_bool(0.004) {
                full_solve = !full_solve;
            }
            let cells = (session_cells * noise(&mut rng, 0.15)).round().max(1.0);
            let mode = if full_solve { 8.0 } else { 1.0 };
            let runtime = 0.02 * cells.powf(0.9) * mode * noise(&mut rng, 0.25);
            (
                "simulate".to_owned(),
                json!({"cells": cells, "solver": "implicit"}),
                runtime,
            )
        })
        .collect();
    let same_side = calls
        .windows(2)
        .filter(|pair| (pair[0].2 > 50.0) == (pair[1].2 > 50.0))
        .count();
    println!(
        "recency: {:.1}% of consecutive calls on the same side of 50 s",
        100.0 * same_side as f64 / (CALLS - 1) as f64
    );
    write(&dir, "recency", calls.into_iter())?;
    Ok(())
}
