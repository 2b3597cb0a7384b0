//! A write that fails loses nothing: what it did not store is kept for the next one,
//! and a job's state the store refused is answered from memory until it is stored.
//! The disk's failure is injected at the store's `fail_point!`s, so this suite needs
//! `--features failpoints` (`scripts/test.sh` passes it).

use std::time::Duration;

use serde_json::json;
use smart_async::{
    CallOutcome, Engine, EngineConfig, Job, JobFilter, JobState, JobStatus, Store, ToolCall,
};
use tempfile::TempDir;

async fn open(dir: &TempDir) -> Engine {
    Engine::open(EngineConfig::new(dir.path())).await.unwrap()
}

async fn count(engine: &Engine, numbers: std::ops::RangeInclusive<u32>) {
    for n in numbers {
        engine
            .call(
                ToolCall::new("count", json!({ "n": n })),
                move |_| async move { Ok(json!(n)) },
            )
            .await
            .unwrap();
    }
}

fn stored_numbers(dir: &TempDir) -> Vec<f64> {
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    store
        .samples(Some("count"))
        .map(|sample| sample.unwrap().features.get("n").unwrap())
        .collect()
}

/// An engine on a fresh database, and the fail points to set, which no other test
/// sets meanwhile.
async fn fresh() -> (fail::FailScenario<'static>, TempDir, Engine) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir).await;
    (scenario, dir, engine)
}

/// A fresh engine that has counted 1 to `last`.
async fn counted_to(last: u32) -> (fail::FailScenario<'static>, TempDir, Engine) {
    let (scenario, dir, engine) = fresh().await;
    count(&engine, 1..=last).await;
    (scenario, dir, engine)
}

/// A `build` call sent to the background, its work `until` resolved, then done.
async fn build_job(engine: &Engine, until: impl std::future::Future + Send + 'static) -> Job {
    let outcome = engine
        .call(
            ToolCall::new("build", json!({ "async_mode": true })),
            move |_| async move {
                until.await;
                Ok(json!({ "built": true }))
            },
        )
        .await
        .unwrap();
    let CallOutcome::Job { job } = outcome else {
        panic!("async_mode runs in the background: {outcome:?}");
    };
    *job
}

/// Lets the engine's once-a-second write run.
async fn one_write_later() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(start_paused = true)]
async fn samples_a_failed_write_did_not_store_are_stored_next_ahead_of_newer_ones() {
    let (scenario, dir, engine) = counted_to(6).await;
    fail::cfg("store::append_samples", "1*return").unwrap();
    one_write_later().await;
    count(&engine, 7..=9).await;
    let stats = engine.stats(None);
    let pooled = stats.iter().find(|tool| tool.tool == "*").unwrap();
    assert_eq!(pooled.samples, 9, "the pooled model learned each run once");
    // The failure was spent by the periodic write; had it not been, this one fails.
    engine.close().await.unwrap();
    drop(engine);
    scenario.teardown();

    let expected: Vec<f64> = (1..=9).map(f64::from).collect();
    assert_eq!(stored_numbers(&dir), expected, "all of them, in order");
}

#[tokio::test(start_paused = true)]
async fn models_a_failed_write_did_not_store_are_stored_next_without_repeating_samples() {
    let (scenario, dir, engine) = counted_to(6).await;
    fail::cfg("store::save_record", "1*return").unwrap();
    one_write_later().await;
    // No call since: only the failed write had marked the model to be written.
    let learned = engine.stats(None);
    engine.close().await.unwrap();
    drop(engine);
    scenario.teardown();

    let expected: Vec<f64> = (1..=6).map(f64::from).collect();
    assert_eq!(stored_numbers(&dir), expected, "each sample once");
    let engine = open(&dir).await;
    assert_eq!(engine.stats(None), learned, "the model and the pooled one");
    engine.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_write_that_keeps_failing_is_reported_and_loses_nothing_once_the_disk_is_back() {
    let (scenario, dir, engine) = counted_to(3).await;
    fail::cfg("store::append_samples", "return").unwrap();
    one_write_later().await;
    count(&engine, 4..=5).await;
    let error = engine.close().await.unwrap_err();
    assert!(
        error.to_string().contains("database I/O failed"),
        "says what failed: {error}"
    );
    fail::remove("store::append_samples");
    engine.close().await.unwrap();
    drop(engine);
    scenario.teardown();

    let expected: Vec<f64> = (1..=5).map(f64::from).collect();
    assert_eq!(stored_numbers(&dir), expected);
}

#[tokio::test(start_paused = true)]
async fn a_job_end_the_store_refused_is_answered_from_memory_and_stored_once_the_disk_is_back() {
    let (scenario, dir, engine) = fresh().await;
    let job = build_job(&engine, async {}).await;
    // Before the job's task first runs: its start and its end are refused.
    fail::cfg("store::put_job", "return").unwrap();
    let completed = JobState::Completed {
        result: json!({ "built": true }).into(),
    };
    let ended = engine
        .wait_job(job.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ended.state, completed, "the result, from memory");
    one_write_later().await;
    let listed = engine
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Completed),
            ..JobFilter::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1, "listed as completed after a failed retry");
    assert!(
        engine.close().await.is_err(),
        "close says it could not store it"
    );
    fail::remove("store::put_job");
    engine.close().await.unwrap();
    drop(engine);
    scenario.teardown();

    let engine = open(&dir).await;
    assert_eq!(engine.job(job.id).unwrap().state, completed, "stored");
    engine.close().await.unwrap();
}

// On tokio's real clock: the end's durable write waits on sled's flusher thread, and a
// paused clock would run the wait for it out meanwhile.
#[tokio::test]
async fn a_job_start_the_store_refused_reads_running_and_its_end_supersedes_it() {
    let (scenario, dir, engine) = fresh().await;
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let job = build_job(&engine, finished).await;
    // Only the start is refused: the first write after the job's creation.
    fail::cfg("store::put_job", "1*return").unwrap();
    let mut status = JobStatus::Pending;
    for _ in 0..500 {
        status = engine.job(job.id).unwrap().status();
        if status != JobStatus::Pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, JobStatus::Running, "from memory");
    finish.send(()).unwrap();
    let ended = engine
        .wait_job(job.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ended.status(), JobStatus::Completed);
    // The stored end is not overwritten by a retry of the start.
    one_write_later().await;
    engine.close().await.unwrap();
    drop(engine);
    scenario.teardown();

    let engine = open(&dir).await;
    assert_eq!(engine.job(job.id).unwrap().status(), JobStatus::Completed);
    engine.close().await.unwrap();
}
