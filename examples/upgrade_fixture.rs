//! Writes a database with one of everything the store keeps, for the upgrade test
//! (`tests/upgrade.rs`): samples of completed, failed and cancelled runs, tool models
//! and the pooled model, a client budget learned from cancels, and completed, failed,
//! cancelled and promoted jobs. It also writes what that release's `list_jobs` shows
//! (`jobs.json`), so the test can hold a newer release to it.
//!
//! Run it at the release whose format the fixture is to keep, then record its `stats`
//! and `export` beside it:
//!
//! ```text
//! cargo run --example upgrade_fixture -- tests/fixtures/format-N
//! smart-async stats --json --data-dir tests/fixtures/format-N/db > tests/fixtures/format-N/stats.json
//! smart-async export --data-dir tests/fixtures/format-N/db > tests/fixtures/format-N/export.jsonl
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use smart_async::{CallOutcome, Engine, EngineConfig, JobContext, JobFilter, RunError, ToolCall};
use tokio_util::sync::CancellationToken;

/// Work that takes `ms`, or stops when cancelled.
async fn sleep_ms(ms: u64, ctx: JobContext) -> Result<serde_json::Value, RunError> {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept_ms": ms })),
        _ = ctx.cancelled() => Err(RunError::Cancelled),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or("usage: upgrade_fixture OUT_DIR")?
        .into();
    let db = out.join("db");
    if db.exists() {
        return Err(format!("{} exists: remove it first", db.display()).into());
    }
    let mut config = EngineConfig::new(&db);
    config.budget_s = 1.0;
    let engine = Engine::open(config).await?;

    // Inline runs that complete: the tool's model and the pooled model learn them.
    for i in 0..12u64 {
        let ms = 10 + 7 * i;
        let call = ToolCall::new("resize", json!({ "images": ms, "format": "png" }));
        engine.call(call, move |ctx| sleep_ms(ms, ctx)).await?;
    }
    // Inline runs that fail: counted, not learned.
    for _ in 0..2 {
        let call = ToolCall::new("flaky", json!({ "url": "https://example.com" }));
        engine
            .call(call, |_ctx| async {
                Err::<serde_json::Value, _>(RunError::Tool {
                    message: "the host did not answer".to_owned(),
                    result: Some(json!({
                        "content": [{ "type": "text", "text": "the host did not answer" }],
                        "isError": true
                    })),
                })
            })
            .await?;
    }
    // A client that cancels inline calls at about 0.6 s: its budget is learned.
    for _ in 0..3 {
        let mut call = ToolCall::new("wait", json!({ "seconds": 5 }));
        call.client = Some("impatient-client".into());
        let cancel = CancellationToken::new();
        call.cancel = Some(cancel.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            cancel.cancel();
        });
        engine.call(call, |ctx| sleep_ms(5_000, ctx)).await?;
    }
    // Background jobs: one completes, one fails, one is cancelled.
    let background =
        |tool: &str, ms: u64| ToolCall::new(tool, json!({ "frames": ms, "async_mode": true }));
    let completed = engine.call(background("render", 50), |ctx| sleep_ms(50, ctx));
    let CallOutcome::Job { job: completed } = completed.await? else {
        return Err("async_mode did not start a job".into());
    };
    let failed = engine.call(background("render", 60), |_ctx| async {
        Err::<serde_json::Value, _>(RunError::Rpc {
            code: -32603,
            message: "renderer crashed".to_owned(),
            data: Some(json!({ "frame": 12 })),
        })
    });
    let CallOutcome::Job { job: failed } = failed.await? else {
        return Err("async_mode did not start a job".into());
    };
    let cancelled = engine.call(background("render", 60_000), |ctx| sleep_ms(60_000, ctx));
    let CallOutcome::Job { job: cancelled } = cancelled.await? else {
        return Err("async_mode did not start a job".into());
    };
    // An inline call that overruns the 1 s deadline and finishes as a job.
    let promoted = engine.call(ToolCall::new("compile", json!({ "files": 3 })), |ctx| {
        sleep_ms(1_300, ctx)
    });
    let CallOutcome::Job { job: promoted } = promoted.await? else {
        return Err("the slow inline call was not promoted".into());
    };
    engine
        .wait_job(completed.id, Duration::from_secs(10))
        .await?;
    engine.wait_job(failed.id, Duration::from_secs(10)).await?;
    engine.cancel_job(cancelled.id).await?;
    engine
        .wait_job(cancelled.id, Duration::from_secs(10))
        .await?;
    engine
        .wait_job(promoted.id, Duration::from_secs(10))
        .await?;

    let jobs = engine.list_jobs(&JobFilter::default())?;
    engine.close().await?;
    std::fs::write(out.join("jobs.json"), serde_json::to_string_pretty(&jobs)?)?;
    println!("wrote {} with {} jobs", db.display(), jobs.len());
    Ok(())
}
