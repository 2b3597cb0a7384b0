//! Engine benchmarks: the pure decision, the in-process inline path, a background
//! submit, a job's durable write, a job list among 10,000 jobs, and replay throughput.
//!
//! Run: `cargo bench --bench engine`. Targets: decide ≤ 1 µs, sync path ≤ 20 µs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use smart_async::{
    Call, CallOutcome, Engine, EngineConfig, Features, JobFilter, Policy, RuntimeModel,
    StaticTable, ToolCall,
};

/// A warm model over 8 features and a call to decide.
fn warm_model() -> (RuntimeModel, Features) {
    let mut model = RuntimeModel::new(true);
    let args = |i: u32| {
        json!({
            "files": (i % 17) * 3, "bytes": 1_000 * (i % 29 + 1), "depth": i % 5, "recursive": i % 2 == 0,
            "pattern": "x".repeat((i % 13) as usize), "opts": {"limit": i % 11, "threads": i % 3 + 1}, "tags": vec![1; (i % 7) as usize],
        })
    };
    for i in 0..200 {
        let features = Features::from_args(&args(i));
        model.observe(&features, 0.01 * f64::from(i % 29 + 1));
    }
    let features = Features::from_args(&args(7));
    assert_eq!(features.len(), 8);
    assert!(model.is_warm());
    (model, features)
}

fn decide(c: &mut Criterion) {
    let (model, features) = warm_model();
    let policy = Policy::new(50.0, 0.05, StaticTable::default()).expect("valid policy");
    let pooled = RuntimeModel::new(false);
    c.bench_function("decide (warm tool, 8 features)", |b| {
        b.iter(|| {
            let call = Call::new("scan", black_box(&features), false);
            black_box(policy.decide(call, Some(&model), Some(&pooled)))
        })
    });
    let args = json!({"files": 12, "bytes": 40_000, "depth": 3, "recursive": true, "pattern": "abc",
                      "opts": {"limit": 5, "threads": 2}, "tags": [1, 2]});
    c.bench_function("features (8 arguments)", |b| {
        b.iter(|| black_box(Features::from_args(black_box(&args))))
    });
}

fn engine_paths(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = runtime
        .block_on(Engine::open(EngineConfig::new(dir.path())))
        .expect("engine");
    c.bench_function("sync path (no-op tool, in process)", |b| {
        b.to_async(&runtime).iter(|| async {
            let outcome = engine
                .call(ToolCall::new("noop", json!({"n": 1})), |_| async {
                    Ok(json!(null))
                })
                .await
                .expect("call");
            assert!(matches!(outcome, CallOutcome::Done { .. }));
        })
    });
    c.bench_function("background submit to job handle (durable)", |b| {
        b.to_async(&runtime).iter(|| async {
            let outcome = engine
                .call(
                    ToolCall::new("noop_bg", json!({"async_mode": true})),
                    |_| async { Ok(json!(null)) },
                )
                .await
                .expect("call");
            assert!(matches!(outcome, CallOutcome::Job { .. }));
        })
    });
    // Issue 14, break 1: a burst of background submissions, each durable before its
    // handle is returned. One writer flushes once for all that queued up.
    c.bench_function(
        "100 concurrent background submits to job handles (durable)",
        |b| {
            b.to_async(&runtime).iter(|| async {
                let submits = (0..100).map(|i| {
                    engine.call(
                        ToolCall::new("noop_burst", json!({"async_mode": true, "i": i})),
                        |_| async { Ok(json!(null)) },
                    )
                });
                for outcome in futures_util::future::join_all(submits).await {
                    assert!(matches!(outcome.expect("call"), CallOutcome::Job { .. }));
                }
            })
        },
    );
    let store = smart_async::Store::open(&dir.path().join("raw"), 8 << 20).expect("store");
    let job = runtime.block_on(async {
        let outcome = engine
            .call(
                ToolCall::new("noop_bg", json!({"async_mode": true})),
                |_| async { Ok(json!({"lines": vec!["a"; 20]})) },
            )
            .await
            .expect("call");
        match outcome {
            CallOutcome::Job { job } => engine
                .wait_job(job.id, std::time::Duration::from_secs(5))
                .await
                .expect("job"),
            CallOutcome::Done { .. } | CallOutcome::Cancelled { .. } => {
                unreachable!("async_mode=true is always a job")
            }
        }
    });
    c.bench_function("job durable write", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.put_job(black_box(&job)).await.expect("write") })
    });
    runtime.block_on(engine.close()).expect("close");
}

/// `list_jobs` (20 newest) with 10,000 finished jobs stored: a86c8a7 read and decoded
/// every one of them on each call.
fn list_jobs(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = EngineConfig::new(dir.path());
    config.jobs.max_finished = 20_000;
    config.jobs.max_running = 64;
    let engine = runtime.block_on(Engine::open(config)).expect("engine");
    runtime.block_on(async {
        let submitted = (0..10_000).map(|i| {
            let engine = engine.clone();
            async move {
                let call = ToolCall::new("listed", json!({"async_mode": true, "i": i}));
                match engine
                    .call(call, |_| async { Ok(json!({"lines": vec!["a"; 20]})) })
                    .await
                {
                    Ok(CallOutcome::Job { job }) => engine
                        .wait_job(job.id, std::time::Duration::from_secs(30))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    other => Err(format!("{other:?}")),
                }
            }
        });
        for ended in futures_util::future::join_all(submitted).await {
            ended.expect("job");
        }
    });
    let filter = JobFilter {
        limit: Some(20),
        ..JobFilter::default()
    };
    c.bench_function("list_jobs (20 of 10,000 stored)", |b| {
        b.iter(|| engine.list_jobs(black_box(&filter)).expect("list"))
    });
    runtime.block_on(engine.close()).expect("close");
}

criterion_group!(benches, decide, engine_paths, list_jobs);
criterion_main!(benches);
