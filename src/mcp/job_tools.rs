//! The tools every smart-async server offers itself: `job_status`, `list_jobs`,
//! `cancel_job` and `predictor_stats`, and the words and views of a job they answer
//! with (also the answer of a call that went to the background).

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, JsonObject, Tool as McpTool};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::caller::{listed_owner, visible_job};
use super::codec::{failed_result, stored_result, text_and_structured};
use crate::engine::Engine;
use crate::job_answer::JobAnswer;
use crate::jobs::{now_ms, Job, JobFilter, JobState, JobStatus};
use crate::jsonrpc::excerpt;
use crate::policy::{Seconds, Source};
use crate::principal::Caller;
use crate::run_error::RunError;
use crate::tools::{parse_args, schema_of};

/// The share of the budget `job_status` may wait, so its own answer stays in time.
pub const WAIT_SHARE_OF_BUDGET: f64 = 0.8;
/// `list_jobs` answers at most this many jobs when not told.
pub const DEFAULT_LIST_LIMIT: usize = 20;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JobStatusArgs {
    /// The job_id a background answer gave.
    job_id: String,
    /// Wait up to this many seconds for the job to end before answering (capped
    /// below the budget), so one call can wait instead of polling.
    wait_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListJobsArgs {
    /// Only jobs with this status: pending, running, completed, failed or cancelled.
    status: Option<String>,
    /// Only jobs of this tool.
    tool: Option<String>,
    /// At most this many, newest first (default 20).
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CancelJobArgs {
    /// The job to cancel.
    job_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StatsArgs {
    /// Only this tool (all tools and the pooled model `*` when absent).
    tool: Option<String>,
}

pub(super) const JOB_STATUS: &str = "job_status";
pub(super) const LIST_JOBS: &str = "list_jobs";
pub(super) const CANCEL_JOB: &str = "cancel_job";
pub(super) const PREDICTOR_STATS: &str = "predictor_stats";
/// The names of the tools every smart-async server offers itself (the job tools and
/// `predictor_stats`): a configured tool may not take one.
pub const OWN_TOOL_NAMES: [&str; 4] = [JOB_STATUS, LIST_JOBS, CANCEL_JOB, PREDICTOR_STATS];

/// The job tools and `predictor_stats`, as every smart-async server lists them.
pub(super) fn own_tools() -> Vec<McpTool> {
    let own = |name: &'static str, description: &'static str, schema: JsonObject| {
        McpTool::new(name, description, Arc::new(schema))
    };
    let own_tools = vec![
        own(
            JOB_STATUS,
            "Status of a background job: timings, ETA, and the result or error once it has ended. \
             Pass wait_s to wait for the end in this same call instead of polling.",
            schema_of::<JobStatusArgs>(),
        ),
        own(
            LIST_JOBS,
            "Background jobs, newest first, optionally by status or tool.",
            schema_of::<ListJobsArgs>(),
        ),
        own(
            CANCEL_JOB,
            "Cancel a pending or running background job.",
            schema_of::<CancelJobArgs>(),
        ),
        own(
            PREDICTOR_STATS,
            "What smart-async has learned per tool: samples, warm or cold, effect of each argument, \
             bound coverage, decisions by source, promotions and needless backgrounds.",
            schema_of::<StatsArgs>(),
        ),
    ];
    own_tools
}

/// What a caller gets for a job: what happened, why, and what to call next.
pub(super) fn background_answer(engine: &Engine, job: &Job) -> CallToolResult {
    let now = now_ms();
    let decision = &job.decision;
    let smart_async = decision.source != Source::Explicit;
    let eta_s = job.eta_s(now);
    let wait_s = max_wait_s(decision.budget_s);
    let next = format!(
        "call job_status with job_id=\"{}\" (add wait_s up to {} to wait for the end in one call)",
        job.id,
        Seconds(wait_s).to_string().trim_end_matches(" s")
    );
    let why = if job.promoted {
        format!(
            "it was still running at the {} deadline, so it continues as a job",
            Seconds(engine.deadline(decision).as_secs_f64())
        )
    } else if smart_async {
        "smart-async predicted it would take too long to answer inline".to_owned()
    } else {
        "the call asked for async_mode=true".to_owned()
    };
    let mut text = format!(
        "Started in the background as job {} ({}): {why}.\nReason: {}\n",
        job.id,
        job.status().name(),
        decision.reason()
    );
    if let Some(eta_s) = eta_s {
        text.push_str(&format!(
            "Expected to finish in about {}.\n",
            Seconds(eta_s)
        ));
    }
    text.push_str(&format!("Next: {next}.\n"));
    let structured = JobAnswer {
        job_id: job.id.to_string(),
        status: job.status().name(),
        smart_async,
        promoted: job.promoted,
        reason: decision.reason(),
        predicted_s: decision.predicted_s,
        eta_s,
        next,
    };
    text_and_structured(
        text,
        serde_json::to_value(structured).unwrap_or(Value::Null),
    )
}

/// `job_status`: waits at most the share of `budget_s` (the caller's) that keeps the
/// answer in time.
pub(super) async fn job_status(
    engine: &Engine,
    args: &Value,
    budget_s: f64,
    caller: &Caller,
) -> Result<CallToolResult, String> {
    let args: JobStatusArgs = parse_args(JOB_STATUS, args)?;
    let id = parse_job_id(&args.job_id)?;
    let wait_s = args.wait_s.unwrap_or(0.0);
    if !(wait_s.is_finite() && wait_s >= 0.0) {
        return Err(format!(
            "{JOB_STATUS}: wait_s must be a number of seconds ≥ 0, got {wait_s}"
        ));
    }
    // The wait must end inside this client's own budget, or the answer comes late.
    let wait = Duration::from_secs_f64(wait_s.min(max_wait_s(budget_s)));
    visible_job(engine, id, caller).map_err(|e| e.to_string())?;
    let job = engine.wait_job(id, wait).await.map_err(|e| e.to_string())?;
    Ok(job_report(&job, engine.run_slot_free()))
}

pub(super) fn list_jobs(
    engine: &Engine,
    args: &Value,
    caller: &Caller,
) -> Result<CallToolResult, String> {
    let args: ListJobsArgs = parse_args(LIST_JOBS, args)?;
    let status = args
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|e| format!("{LIST_JOBS}: {e}"))?;
    let filter = JobFilter {
        status,
        tool: args.tool,
        limit: Some(args.limit.unwrap_or(DEFAULT_LIST_LIMIT)),
        owner: listed_owner(caller),
    };
    let jobs = engine.list_jobs(&filter).map_err(|e| e.to_string())?;
    let now = now_ms();
    let slot_free = engine.run_slot_free();
    let mut text = format!("{} jobs\n", jobs.len());
    for job in &jobs {
        text.push_str(&format!(
            "{} {}: {}\n",
            job.id,
            job.tool,
            job_summary(job, now, slot_free)
        ));
    }
    let structured =
        json!({ "jobs": jobs.iter().map(|job| job_view(job, now)).collect::<Vec<_>>() });
    Ok(text_and_structured(text, structured))
}

pub(super) async fn cancel_job(
    engine: &Engine,
    args: &Value,
    caller: &Caller,
) -> Result<CallToolResult, String> {
    let args: CancelJobArgs = parse_args(CANCEL_JOB, args)?;
    let id = parse_job_id(&args.job_id)?;
    visible_job(engine, id, caller).map_err(|e| e.to_string())?;
    let job = engine.cancel_job(id).await.map_err(|e| e.to_string())?;
    Ok(job_report(&job, engine.run_slot_free()))
}

/// What is learned per tool is everyone's; the client budgets shown are the caller's
/// own (an admin's: all), so one principal does not learn who else calls.
pub(super) fn predictor_stats(
    engine: &Engine,
    args: &Value,
    caller: &Caller,
) -> Result<CallToolResult, String> {
    let args: StatsArgs = parse_args(PREDICTOR_STATS, args)?;
    let mut report = engine.report(args.tool.as_deref());
    report
        .clients
        .retain(|client| caller.admin || client.principal.as_deref() == caller.principal.name());
    if let (Some(tool), true) = (&args.tool, report.tools.is_empty()) {
        return Err(format!(
            "{PREDICTOR_STATS}: nothing has been learned about tool '{tool}' yet"
        ));
    }
    let text = report.to_string();
    let structured = serde_json::to_value(&report).map_err(|e| e.to_string())?;
    Ok(text_and_structured(text, structured))
}

/// The longest `job_status` may wait for a client with this budget.
fn max_wait_s(budget_s: f64) -> f64 {
    budget_s * WAIT_SHARE_OF_BUDGET
}

fn parse_job_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        format!(
            "'{}' is not a job id: use the job_id from a background answer or list_jobs",
            excerpt(text)
        )
    })
}

/// A job's state in words, for people and models: "running for 3 s, about 7 s to go
/// (12 of 40 files)". A pending job waits for a free slot only while every slot is
/// taken (`slot_free` false); otherwise it is about to start.
pub(super) fn job_summary(job: &Job, now: u64, slot_free: bool) -> String {
    let mut text = match job.status() {
        JobStatus::Pending if slot_free => "pending, starting".to_owned(),
        JobStatus::Pending => {
            "waiting for a free slot (the most jobs that run at once are running)".to_owned()
        }
        status => {
            let mut text = status.name().to_owned();
            if let Some(elapsed_s) = job.elapsed_s(now) {
                let verb = if status.is_terminal() { "after" } else { "for" };
                text.push_str(&format!(" {verb} {}", Seconds(elapsed_s)));
            }
            text
        }
    };
    match job.eta_s(now) {
        Some(eta_s) if eta_s > 0.0 => text.push_str(&format!(", about {} to go", Seconds(eta_s))),
        Some(_) => text.push_str(", past its predicted end"),
        None => {}
    }
    if let Some(progress) = &job.progress {
        text.push_str(&format!(" ({progress})"));
    }
    text
}

fn job_view(job: &Job, now: u64) -> Value {
    json!({
        "job_id": job.id,
        "tool": job.tool,
        "label": job.label,
        "status": job.status(),
        "promoted": job.promoted,
        "reason": job.decision.reason(),
        "predicted_s": job.decision.predicted_s,
        "eta_s": job.eta_s(now),
        "elapsed_s": job.elapsed_s(now),
        "progress": job.progress,
        "poll_after_s": (!job.status().is_terminal()).then(|| job.poll_interval_s(now)),
        "created_at_ms": job.created_at_ms,
        "started_at_ms": job.started_at_ms,
        "finished_at_ms": job.finished_at_ms,
    })
}

/// A job's status for `job_status` and `cancel_job`: its result when completed.
fn job_report(job: &Job, slot_free: bool) -> CallToolResult {
    let now = now_ms();
    let mut view = job_view(job, now);
    let mut text = format!(
        "Job {} ({}): {}\n",
        job.id,
        job.tool,
        job_summary(job, now, slot_free)
    );
    match &job.state {
        JobState::Completed { result } => {
            let result = stored_result(result.clone());
            for block in &result.content {
                if let Some(content) = block.as_text() {
                    text.push_str(&content.text);
                }
            }
            view["content"] = serde_json::to_value(&result.content).unwrap_or(Value::Null);
            view["result"] = result.structured_content.unwrap_or(Value::Null);
        }
        JobState::Failed { error } => {
            text.push_str(&format!("Error: {error}\n"));
            view["error"] = json!(error.to_string());
            if let RunError::Tool {
                result: Some(_), ..
            } = error
            {
                // The tool's own error result, whole, as an inline call would give it.
                let result = failed_result(error.clone());
                view["content"] = serde_json::to_value(&result.content).unwrap_or(Value::Null);
                view["result"] = result.structured_content.unwrap_or(Value::Null);
            }
        }
        JobState::Cancelled => text.push_str("It was cancelled; nothing was returned.\n"),
        JobState::Pending | JobState::Running => text
            .push_str("Call job_status again (with wait_s to wait in one call) for the result.\n"),
    }
    text_and_structured(text, view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CallOutcome, ToolCall};
    use crate::EngineConfig;
    use tokio_util::sync::CancellationToken;

    /// Issue 15: every new job said "waiting for a free slot", even with nothing else
    /// running.
    #[tokio::test]
    async fn a_pending_job_waits_for_a_slot_only_while_every_slot_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.jobs.max_running = 1;
        let engine = Engine::open(config).await.unwrap();
        let release = CancellationToken::new();
        let call = |engine: &Engine, release: &CancellationToken| {
            let release = release.clone();
            let engine = engine.clone();
            async move {
                let call = ToolCall::new("held", json!({"async_mode": true}));
                match engine
                    .call(call, move |_| async move {
                        release.cancelled().await;
                        Ok(json!(null))
                    })
                    .await
                    .unwrap()
                {
                    CallOutcome::Job { job } => *job,
                    other => panic!("{other:?}"),
                }
            }
        };
        let first = call(&engine, &release).await;
        assert_eq!(
            job_summary(&first, first.created_at_ms, true),
            "pending, starting"
        );
        for _ in 0..2000 {
            if !engine.run_slot_free() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = call(&engine, &release).await;
        assert!(!engine.run_slot_free(), "the one slot is taken");
        let said = job_summary(
            &engine.job(second.id).unwrap(),
            now_ms(),
            engine.run_slot_free(),
        );
        assert!(said.starts_with("waiting for a free slot"), "{said}");
        release.cancel();
        engine.close().await.unwrap();
    }
}
