//! smart-async keeps long MCP tool calls from ever timing out.
//!
//! For every call it predicts, from the call's own arguments, how long the tool will
//! take (learned from the tool's past runtimes and persisted in sled), and decides:
//! answer inline, or run in the background and hand back a job handle. A call decided
//! inline that overruns its deadline becomes a job, so a wrong guess costs waiting,
//! never a timeout.
//!
//! The core is pure ([`features`], [`predictor`], [`policy`]); the [`Engine`] is the
//! shell that runs calls, keeps jobs and learns.
//!
//! ```no_run
//! # async fn demo() -> Result<(), smart_async::EngineError> {
//! use smart_async::{CallOutcome, Engine, EngineConfig, ToolCall};
//! let engine = Engine::open(EngineConfig::new("smart-async-data")).await?;
//! let call = ToolCall::new("build", serde_json::json!({"target": "release"}));
//! match engine.call(call, |_ctx| async { Ok(serde_json::json!("built")) }).await? {
//!     CallOutcome::Done { result, .. } => println!("inline: {result:?}"),
//!     CallOutcome::Job { job } => println!("background job {}: {}", job.id, job.decision.reason()),
//!     CallOutcome::Cancelled { .. } => println!("the caller gave up"),
//! }
//! # Ok(()) }
//! ```

pub mod clients;
pub mod config;
pub mod engine;
pub mod features;
pub mod http;
pub mod job;
mod job_answer;
pub mod jobs;
pub mod jsonrpc;
mod learner;
mod lock;
pub mod mcp;
pub mod policy;
pub mod predictor;
pub mod proxy;
mod reap;
pub mod replay;
mod run_error;
pub mod stats;
pub mod store;
pub mod tools;

pub use clients::{BudgetSource, ClientBudget, ClientStats};
pub use engine::{
    CallOutcome, Engine, EngineConfig, EngineError, HearProgress, InlineProgress, ProgressSink,
    ToolCall, ToolOptions, WorkOutput,
};
pub use features::{Feature, FeatureExtractor, FeatureKind, Features};
pub use jobs::{
    Job, JobContext, JobError, JobFilter, JobOutput, JobSettings, JobState, JobStatus, Progress,
};
pub use learner::POOLED_TOOL;
pub use policy::{
    Call, Decision, Mode, Policy, PolicyError, Source, StaticRule, StaticTable, StaticTableError,
    DEFAULT_BUDGET_S, DEFAULT_RISK,
};
pub use predictor::{Calibration, FeatureEffect, Prediction, RuntimeModel};
pub use run_error::RunError;
pub use stats::{Counters, Outcome, StatsReport, ToolRecord, ToolStats};
pub use store::{Sample, Store, StoreError};

/// The README's examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
