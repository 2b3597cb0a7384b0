//! A job's record: what was called, how it was decided, and where it stands (pending,
//! running, or ended with a result, an error or a cancel). It is what the store keeps,
//! as JSON, and what the job tools and the tasks face show; the live part of a job
//! (its handles, its run) is [`crate::jobs`]'.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::policy::Decision;
use crate::principal::Principal;
use crate::run_error::RunError;

/// A job's status, without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a free slot.
    Pending,
    /// Running.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl JobStatus {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|status| status.name() == s)
        .ok_or_else(|| {
            format!(
                "unknown job status '{s}': use pending, running, completed, failed or cancelled"
            )
        })
    }
}

/// A job's state with what it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a free slot.
    Pending,
    /// Running.
    Running,
    /// Finished with this result.
    Completed {
        /// What the work returned.
        result: JobOutput,
    },
    /// Finished with this error.
    Failed {
        /// Why. A database of the release before kept a message: it reads back as the
        /// kind it named.
        #[serde(deserialize_with = "crate::run_error::stored")]
        error: RunError,
    },
    /// Stopped on request.
    Cancelled,
}

impl JobState {
    /// The status without its payload.
    pub fn status(&self) -> JobStatus {
        match self {
            JobState::Pending => JobStatus::Pending,
            JobState::Running => JobStatus::Running,
            JobState::Completed { .. } => JobStatus::Completed,
            JobState::Failed { .. } => JobStatus::Failed,
            JobState::Cancelled => JobStatus::Cancelled,
        }
    }
}

/// What a job's work returned, kept by the kind of work that returned it so that it
/// reads back into the answer it would have been inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobOutput {
    /// The value a work run through the engine's own API returned, as it is.
    Value {
        /// The value.
        value: Value,
    },
    /// A configured tool's text and structured content.
    Tool {
        /// The text for people.
        text: String,
        /// The same as structured content.
        structured: Value,
    },
    /// A whole MCP `CallToolResult`, as JSON, from an upstream server or a wrapped
    /// handler: every content block and the structured content as they came.
    CallResult {
        /// The result.
        result: Value,
    },
}

impl JobOutput {
    /// What a database of format 3 or 4 kept as a job's result, by the shapes its
    /// release wrote: `{"upstream_result": result}` for a proxied or wrapped result,
    /// `{"text", "structured"}` for a tool's, any other value as it was.
    pub(crate) fn from_untyped(value: Value) -> JobOutput {
        match value {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("upstream_result") => {
                JobOutput::CallResult {
                    result: map.remove("upstream_result").unwrap_or(Value::Null),
                }
            }
            Value::Object(mut map)
                if map.len() == 2 && map.contains_key("text") && map.contains_key("structured") =>
            {
                let text = match map.remove("text") {
                    Some(Value::String(text)) => text,
                    other => other.map(|v| v.to_string()).unwrap_or_default(),
                };
                JobOutput::Tool {
                    text,
                    structured: map.remove("structured").unwrap_or(Value::Null),
                }
            }
            value => JobOutput::Value { value },
        }
    }
}

impl From<Value> for JobOutput {
    fn from(value: Value) -> JobOutput {
        JobOutput::Value { value }
    }
}

/// One background job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Random (v4) id: the job handle.
    pub id: Uuid,
    /// The tool that runs.
    pub tool: String,
    /// A short description for lists.
    pub label: String,
    /// Where it is, with its result or error.
    #[serde(flatten)]
    pub state: JobState,
    /// When the job was created (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the work started.
    pub started_at_ms: Option<u64>,
    /// When it ended.
    pub finished_at_ms: Option<u64>,
    /// The decision that made it.
    pub decision: Decision,
    /// Whether it began inline and overran the deadline.
    pub promoted: bool,
    /// The id its run's processes carry ([`crate::jobs::JobContext::run_id`]); nil in jobs stored
    /// before it was recorded.
    #[serde(default)]
    pub run_id: Uuid,
    /// Who started it: only they (and admins) see it. Jobs stored before owners were
    /// recorded, and every job over stdio, are the local user's.
    #[serde(default, skip_serializing_if = "Principal::is_local")]
    pub owner: Principal,
    /// What the work last reported of its progress, while it runs (live only, never
    /// stored).
    #[serde(skip)]
    pub progress: Option<Progress>,
}

impl Job {
    /// The status.
    pub fn status(&self) -> JobStatus {
        self.state.status()
    }

    /// The predicted runtime from the decision, if a model spoke.
    pub fn predicted_s(&self) -> Option<f64> {
        self.decision.predicted_s
    }

    /// Seconds until the predicted end: the prediction less the time run so far, at
    /// least 0; `None` once ended or when nothing was predicted.
    pub fn eta_s(&self, now_ms: u64) -> Option<f64> {
        let predicted_s = self.predicted_s()?;
        match self.status() {
            JobStatus::Pending => Some(predicted_s),
            JobStatus::Running => {
                let elapsed_s = self.elapsed_s(now_ms).unwrap_or(0.0);
                Some((predicted_s - elapsed_s).max(0.0))
            }
            _ => None,
        }
    }

    /// Seconds the work has run (to its end, once ended).
    pub fn elapsed_s(&self, now_ms: u64) -> Option<f64> {
        let started = self.started_at_ms?;
        let end = self.finished_at_ms.unwrap_or(now_ms);
        Some(end.saturating_sub(started) as f64 / 1000.0)
    }
}

/// The shortest and longest poll interval suggested to clients.
pub const MIN_POLL_S: f64 = 0.5;
/// See [`MIN_POLL_S`].
pub const MAX_POLL_S: f64 = 30.0;
/// Once a job runs past its prediction (or has none), the suggested poll interval is
/// this share of the time it has run: patient with long jobs, quick with short ones.
const OVERDUE_POLL_SHARE: f64 = 0.25;

impl Job {
    /// Seconds a client should wait before asking again: until the predicted end
    /// while one is ahead, then a share of the time run so far; between
    /// 0.5 s and 30 s.
    pub fn poll_interval_s(&self, now_ms: u64) -> f64 {
        let wait_s = match (self.eta_s(now_ms), self.elapsed_s(now_ms)) {
            (Some(eta_s), _) if eta_s > 0.0 => eta_s,
            (_, Some(elapsed_s)) => elapsed_s * OVERDUE_POLL_SHARE,
            _ => MIN_POLL_S,
        };
        wait_s.clamp(MIN_POLL_S, MAX_POLL_S)
    }
}

/// How far a tool's work has come, as the tool reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units of work done.
    pub done: f64,
    /// Units in all, when known.
    pub total: Option<f64>,
    /// What the units are, or any short note ("12 of 40 files").
    pub message: Option<String>,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.message, self.total) {
            (Some(message), _) => f.write_str(message),
            (None, Some(total)) => write!(f, "{} of {}", self.done, total),
            (None, None) => write!(f, "{} done", self.done),
        }
    }
}
