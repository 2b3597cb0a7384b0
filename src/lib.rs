//! smart-async keeps long MCP tool calls from ever timing out.
//!
//! For every call it predicts, from the call's own arguments, how long the tool will
//! take (learned from the tool's past runtimes and persisted in sled), and decides:
//! answer inline, or run in the background and hand back a job handle. A call decided
//! inline that overruns its deadline becomes a job, so a wrong guess costs waiting,
//! never a timeout.
//!
//! The core is pure ([`Features`], [`RuntimeModel`], [`Policy`]); the [`Engine`] is
//! the shell that runs calls, keeps jobs and learns, and the [`SmartServer`] serves it
//! over MCP: with tools of its own ([`Tool`]), in front of another server
//! ([`Upstream`]), or around an rmcp handler of yours ([`SmartServer::wrap`]).
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

mod auth;
mod clients;
mod config;
mod engine;
mod features;
mod http;
mod job;
mod job_answer;
mod jobs;
mod jsonrpc;
mod learner;
mod lock;
mod mcp;
mod policy;
mod predictor;
mod principal;
mod proxy;
mod reap;
mod replay;
mod run_error;
mod settings;
mod stats;
mod store;
mod tls;
mod tools;
mod trace;

// Serving MCP: the server, the tools it offers, the upstream it fronts, its settings.
pub use auth::jwt::JwtConfig;
pub use auth::tokens::{new_token, TokenEntry};
pub use auth::{AuthConfig, AuthConfigError, Authenticator};
pub use config::{ConfigError, FileConfig};
pub use http::{HttpAccess, HttpLimits};
pub use mcp::{SmartServer, OWN_TOOL_NAMES};
pub use principal::{Caller, Principal};
pub use proxy::{Upstream, UpstreamCommand, UpstreamStartError, DEFAULT_STARTUP_TIMEOUT};
pub use settings::{data_dir_or_default, default_config_path, default_data_dir};
pub use settings::{HttpListen, ServerFlags, Settings, SettingsError};
pub use tls::{TlsError, TlsFiles};
pub use tools::command::{CommandSpec, CommandTool, ParamSpec, ParamType};
pub use tools::files::{HashFiles, SearchText};
pub use tools::roots::{RootError, Roots};
pub use tools::{output_schema_of, parse_args, schema_of, Tool, ToolFuture, ToolOutput, ToolWork};

// The engine: calls, jobs and what a run ends in.
pub use engine::{CallOutcome, Engine, EngineConfig, EngineError, ToolCall, ToolOptions};
pub use engine::{HearProgress, InlineProgress, ProgressSink, WorkOutput};
pub use engine::{PROGRESS_INTERVAL, PROGRESS_MIN_GAP};
pub use jobs::{Job, JobContext, JobError, JobFilter, JobOutput, JobSettings, JobState};
pub use jobs::{JobStatus, Progress};
pub use run_error::RunError;

// Deciding and learning: the pure core, and what the store keeps of it.
pub use clients::{BudgetSource, ClientBudget, ClientStats};
pub use features::{Feature, FeatureExtractor, FeatureKind, Features};
pub use learner::POOLED_TOOL;
pub use policy::DEFAULT_RISK;
pub use policy::{break_even_risk, StaticTableError, DEFAULT_BUDGET_S, DEFAULT_POLL_COST_S};
pub use policy::{Call, Decision, Mode, Policy, PolicyError, Source, StaticRule, StaticTable};
pub use predictor::{Calibration, FeatureEffect, Prediction, RuntimeModel};
pub use stats::{Counters, Outcome, StatsReport, ToolRecord, ToolStats};
pub use store::{Sample, Store, StoreError, FORMAT_VERSION};

// Replaying a trace of runtimes against the policies people use.
pub use replay::{PolicyScore, Replay, ReplayConfig, ReplayReport, UnknownPolicy};
pub use replay::{POLICY_NAMES, WARMUP_CALLS};
pub use trace::{export_trace, TraceCount, TraceError, TraceFile, TraceRecord, TraceWatch};

/// The README's examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
