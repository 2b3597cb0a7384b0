//! The library in a few lines: an engine with a 2 s budget learns how long a tool takes
//! per image, then sends a call it predicts to be long to the background.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use serde_json::json;
use smart_async::{CallOutcome, Engine, EngineConfig, JobOutput, JobState, RunError, ToolCall};

/// The tool: 50 ms per image, and it stops early when cancelled.
async fn resize_images(
    count: u64,
    ctx: smart_async::JobContext,
) -> Result<serde_json::Value, RunError> {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50 * count)) => Ok(json!({ "resized": count })),
        _ = ctx.cancelled() => Err(RunError::Cancelled),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = tempfile::tempdir()?;
    let mut config = EngineConfig::new(data_dir.path());
    config.budget_s = 2.0;
    // A poll scaled with the budget, as the default 5 s is to 50 s: with a 5 s poll, a
    // 2 s budget would make waiting inline the cheaper mistake almost always.
    config.poll_cost_s = 0.2;
    let engine = Engine::open(config).await?;

    // Calls of 1 to 20 images: all within the budget, answered inline, and learned.
    for i in 0..15 {
        let count = 1 + (i * 7) % 20;
        let call = ToolCall::new(
            "resize_images",
            json!({ "images": vec!["img.png"; count as usize] }),
        );
        let outcome = engine
            .call(call, move |ctx| resize_images(count, ctx))
            .await?;
        if let CallOutcome::Done {
            result, runtime_s, ..
        } = outcome
        {
            println!("{count:>3} images inline in {runtime_s:.2} s: {}", result?);
        }
    }

    // 100 images: the model predicts about 5 s, over the 2 s budget.
    let call = ToolCall::new("resize_images", json!({ "images": vec!["img.png"; 100] }));
    match engine.call(call, |ctx| resize_images(100, ctx)).await? {
        CallOutcome::Job { job } => {
            println!("100 images went to the background as job {}", job.id);
            println!("  why: {}", job.decision.reason());
            let done = engine.wait_job(job.id, Duration::from_secs(30)).await?;
            if let JobState::Completed {
                result: JobOutput::Value { value },
            } = done.state
            {
                println!("  finished: {value}");
            }
        }
        CallOutcome::Done { .. } => println!("100 images ran inline"),
        CallOutcome::Cancelled { .. } => unreachable!("this call carries no cancel token"),
    }

    for stats in engine.stats(Some("resize_images")) {
        println!("\n{stats}");
    }
    engine.close().await?;
    Ok(())
}
