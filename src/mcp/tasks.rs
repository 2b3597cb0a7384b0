//! The tasks extension's face of a job: its `Task` (status, times, poll interval) and
//! its `tasks/get` detail, with the result or the error once it has ended.

use rmcp::model::{DetailedTask, ErrorData, Task, TaskPayload, TaskStatus};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use uuid::Uuid;

use super::caller::visible_job;
use super::codec::{failed_result, protocol_error, result_object, stored_result};
use super::job_tools::job_summary;
use crate::engine::{Engine, EngineError};
use crate::jobs::{now_ms, Job, JobError, JobState, JobStatus};
use crate::jsonrpc::excerpt;
use crate::principal::Caller;

/// A job as the tasks extension shows it.
pub(super) fn task_of(engine: &Engine, job: &Job) -> Task {
    let now = now_ms();
    let status = match job.status() {
        JobStatus::Pending | JobStatus::Running => TaskStatus::Working,
        JobStatus::Completed => TaskStatus::Completed,
        JobStatus::Failed if task_failure(job).is_some() => TaskStatus::Failed,
        // A tool's error is a result (`isError`), as it is inline.
        JobStatus::Failed => TaskStatus::Completed,
        JobStatus::Cancelled => TaskStatus::Cancelled,
    };
    let updated_ms = job
        .finished_at_ms
        .or(job.started_at_ms)
        .unwrap_or(job.created_at_ms);
    let retention_ms = engine.job_settings().retention.as_millis();
    let mut task = Task::new(
        job.id.to_string(),
        status,
        iso_time(job.created_at_ms),
        iso_time(updated_ms),
    )
    .with_status_message(job_summary(job, now, engine.run_slot_free()))
    .with_ttl_ms(u64::try_from(retention_ms).unwrap_or(u64::MAX));
    if !job.status().is_terminal() {
        task = task.with_poll_interval_ms((job.poll_interval_s(now) * 1000.0).round() as u64);
    }
    task
}

/// `tasks/get`: the job's state, with its result or error once it has ended.
pub(super) fn detailed_task(engine: &Engine, job: &Job) -> DetailedTask {
    let task = task_of(engine, job);
    let payload = match &job.state {
        JobState::Pending | JobState::Running => TaskPayload::Working,
        JobState::Completed { result } => TaskPayload::Completed {
            result: result_object(stored_result(result.clone())),
        },
        JobState::Failed { error } => match task_failure(job) {
            Some(failure) => TaskPayload::Failed {
                error: result_object(failure),
            },
            None => TaskPayload::Completed {
                result: result_object(failed_result(error.clone())),
            },
        },
        JobState::Cancelled => TaskPayload::Cancelled,
    };
    DetailedTask::new(task, payload)
}

/// The job behind a task id; an unknown id is invalid params, as the extension says.
/// Another principal's task is unknown to the caller.
pub(super) fn job_of_task(
    engine: &Engine,
    task_id: &str,
    caller: &Caller,
) -> Result<Job, ErrorData> {
    let unknown = || {
        ErrorData::invalid_params(
            format!(
                "unknown task '{}': it never existed or its retention has passed",
                excerpt(task_id)
            ),
            None,
        )
    };
    let id = Uuid::parse_str(task_id.trim()).map_err(|_| unknown())?;
    match visible_job(engine, id, caller) {
        Ok(job) => Ok(job),
        Err(EngineError::Job(JobError::NotFound(_))) => Err(unknown()),
        Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
    }
}

/// Whether this request's client declared the tasks extension (in the request's
/// `_meta` or at initialize).
pub(super) fn client_has_tasks(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities()
        .is_some_and(|capabilities| capabilities.supports_tasks())
}

/// The JSON-RPC error a failed job is to a tasks client, when the failure was the
/// server's (a restart cut it off) rather than the tool's.
fn task_failure(job: &Job) -> Option<ErrorData> {
    match &job.state {
        JobState::Failed { error } => protocol_error(error),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch as an RFC 3339 time, as the tasks extension
/// wants its timestamps.
fn iso_time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}
