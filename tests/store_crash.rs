//! Persistence across close and reopen, interrupted jobs, and the clear errors for a
//! database that is in use, corrupt, unwritable or from another format version.

use std::time::Duration;

use serde_json::json;
use smart_async::{
    CallOutcome, Engine, EngineConfig, EngineError, JobFilter, JobState, JobStatus, RunError,
    Store, StoreError, ToolCall,
};

async fn open(dir: &std::path::Path) -> Engine {
    Engine::open(EngineConfig::new(dir)).await.unwrap()
}

fn job_id(outcome: CallOutcome) -> uuid::Uuid {
    match outcome {
        CallOutcome::Job { job } => job.id,
        other => panic!("expected a job, got {other:?}"),
    }
}

#[tokio::test]
async fn close_and_reopen_keeps_samples_models_and_finished_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    for n in 1..=12 {
        engine
            .call(
                ToolCall::new("count", json!({"n": n})),
                move |_| async move { Ok(json!(n)) },
            )
            .await
            .unwrap();
    }
    let id = job_id(
        engine
            .call(
                ToolCall::new("count", json!({"n": 99, "async_mode": true})),
                |_| async { Ok(json!({"answer": 42})) },
            )
            .await
            .unwrap(),
    );
    engine.wait_job(id, Duration::from_secs(10)).await.unwrap();
    let before = engine.stats(None);
    engine.close().await.unwrap();
    drop(engine);

    let engine = open(dir.path()).await;
    assert_eq!(engine.stats(None), before, "models and counters survive");
    let job = engine.job(id).unwrap();
    assert_eq!(
        job.state,
        JobState::Completed {
            result: json!({"answer": 42}).into()
        }
    );
    engine.close().await.unwrap();
    drop(engine);

    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let samples: Vec<_> = store
        .samples(Some("count"))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(samples.len(), 13);
    assert_eq!(
        samples[0].features.get("n"),
        Some(1.0),
        "in the order they were written"
    );
}

#[tokio::test]
async fn jobs_running_at_close_come_back_failed_interrupted_by_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let running = job_id(
        engine
            .call(
                ToolCall::new("long", json!({"async_mode": true})),
                |_| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(json!(null))
                },
            )
            .await
            .unwrap(),
    );
    engine.close().await.unwrap();
    drop(engine);

    let engine = open(dir.path()).await;
    let job = engine.job(running).unwrap();
    assert_eq!(
        job.state,
        JobState::Failed {
            error: RunError::Interrupted
        }
    );
    assert!(job.finished_at_ms.is_some());
    let failed = engine
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Failed),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(failed.len(), 1);
}

#[tokio::test]
async fn a_second_open_of_the_same_database_says_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _engine = open(dir.path()).await;
    let err = Engine::open(EngineConfig::new(dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::InUse { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("in use by another process"), "{message}");
    assert!(message.contains("--data-dir"), "says what to do: {message}");
}

#[test]
fn a_directory_that_cannot_be_created_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = Store::open(&file.join("data"), 1 << 20).unwrap_err();
    assert!(matches!(err, StoreError::Unwritable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("choose a writable --data-dir"),
        "{err}"
    );
}

/// Overwrites the files whose name passes `pick` with garbage and opens again.
fn open_after_garbage(pick: fn(&str) -> bool) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        block_on(store.save_record(Some("t"), &smart_async::ToolRecord::new(true))).unwrap();
        drop(store);
    }
    let files: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| pick(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert!(!files.is_empty());
    for file in files {
        std::fs::write(&file, vec![0xA5; 4096]).unwrap();
    }
    Store::open(dir.path(), 1 << 20).unwrap_err()
}

#[test]
fn a_corrupt_database_says_so_and_how_to_recover() {
    for (what, pick) in [
        ("every file", (|_| true) as fn(&str) -> bool),
        ("the config file", |name| name == "conf"),
        ("the data file", |name| name == "db"),
    ] {
        let err = open_after_garbage(pick);
        assert!(matches!(err, StoreError::Corrupt { .. }), "{what}: {err:?}");
        assert!(
            err.to_string().contains("move the directory aside"),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_database_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Version {
                found: 99,
                expected: smart_async::FORMAT_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn samples_keep_their_order_and_pruning_drops_whole_old_writes() {
    use smart_async::{Features, Outcome, Sample};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let sample = |tool: &str, n: u32| Sample {
        tool: tool.into(),
        features: Features::from_args(&json!({ "n": n })),
        runtime_s: f64::from(n),
        outcome: Outcome::Completed,
        finished_at_ms: 0,
    };
    for write in 0..3 {
        let batch: Vec<Sample> = (0..4)
            .flat_map(|i| [sample("a", write * 4 + i), sample("b", i)])
            .collect();
        block_on(store.append_samples(&batch)).unwrap();
    }
    let a: Vec<f64> = store
        .samples(Some("a"))
        .map(|s| s.unwrap().runtime_s)
        .collect();
    assert_eq!(a, (0..12).map(f64::from).collect::<Vec<_>>());
    assert_eq!(store.samples(None).count(), 24);
    // 12 samples in writes of 4: keeping at least 5 drops the oldest write only.
    assert_eq!(block_on(store.prune_samples("a", 5)).unwrap(), 4);
    let a: Vec<f64> = store
        .samples(Some("a"))
        .map(|s| s.unwrap().runtime_s)
        .collect();
    assert_eq!(a, (4..12).map(f64::from).collect::<Vec<_>>());
    assert_eq!(
        store.samples(Some("b")).count(),
        12,
        "other tools untouched"
    );
}

/// Runs a store write to its end from a test without a runtime.
fn block_on<F: std::future::Future>(write: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(write)
}
