//! Regression tests for issue 14, break 1: concurrent background submissions hung the
//! server for good (sled 0.34's deadlock of concurrent flushes). Every durable write now
//! goes through one writer that flushes once per batch. A hang shows here as a
//! submission that does not come back within minutes, not as a timing claim.

mod common;

use std::time::Duration;

use common::{call, structured, Setup};
use futures_util::future::join_all;
use serde_json::json;
use smart_async::{CallOutcome, Engine, EngineConfig, JobFilter, JobStatus, ToolCall};

/// Far longer than a thousand durable submissions take on a loaded machine: reaching it
/// means the write path hung.
const HUNG_AFTER: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_1_a_thousand_concurrent_background_submissions_all_get_durable_handles() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    let submissions = (0..1000).map(|i| {
        let engine = engine.clone();
        tokio::spawn(async move {
            let call = ToolCall::new("burst", json!({ "async_mode": true, "i": i }));
            engine
                .call(call, move |_| async move { Ok(json!({ "i": i })) })
                .await
        })
    });
    let outcomes = tokio::time::timeout(HUNG_AFTER, join_all(submissions))
        .await
        .expect("every submission gets its handle (the durable write path hung)");
    let mut ids = Vec::new();
    for outcome in outcomes {
        match outcome.unwrap().unwrap() {
            CallOutcome::Job { job } => ids.push(job.id),
            _ => panic!("async_mode answered inline"),
        }
    }
    // Durable before the handle came back: every job reads back at once.
    for id in &ids {
        engine.job(*id).unwrap();
    }
    let waits = ids
        .iter()
        .map(|id| engine.wait_job(*id, Duration::from_secs(120)));
    let ended = tokio::time::timeout(HUNG_AFTER, join_all(waits))
        .await
        .expect("every job ends");
    for job in ended {
        assert_eq!(job.unwrap().status(), JobStatus::Completed);
    }
    engine.close().await.unwrap();
    drop(engine);

    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    let stored = engine
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Completed),
            ..JobFilter::default()
        })
        .unwrap();
    assert_eq!(stored.len(), 1000, "every completed job is on disk");
}

/// Twenty fresh servers in a row, each sent 24 `async_mode` calls at once over one
/// stdio connection (16 hung every server of a86c8a7): each answers all of them with a
/// job id, and every job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_1_twenty_fresh_servers_each_take_a_burst_of_background_calls() {
    for round in 0..20 {
        let setup = Setup::new();
        let config = common::write_config(setup.data.path(), common::TEST_CONFIG);
        let client = common::connect(&setup.args(&["--config", &config])).await;
        let calls = (0..24).map(|_| {
            call(
                &client,
                "sleep",
                json!({ "seconds": 0.01, "async_mode": true }),
            )
        });
        let results = tokio::time::timeout(HUNG_AFTER, join_all(calls))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the server hung on a burst"));
        for result in results {
            let job_id = structured(&result)["job_id"].as_str().unwrap().to_owned();
            let done = call(
                &client,
                "job_status",
                json!({ "job_id": job_id, "wait_s": 30 }),
            )
            .await;
            assert_eq!(
                structured(&done)["status"],
                "completed",
                "round {round}: {done:?}"
            );
        }
        client.cancel().await.unwrap();
    }
}
