//! The MCP face: an rmcp `ServerHandler` that offers the configured tools through the
//! engine, the job tools (`job_status`, `list_jobs`, `cancel_job`) and
//! `predictor_stats`, over stdio or Streamable HTTP.
//!
//! A tool's output travels through the engine as it is and becomes the call's result
//! when it answers inline; a job keeps it as JSON that reads back into the same
//! result, so a job's result is exactly what an inline answer would have been. Bad
//! arguments and tool failures are `isError` results the model can read; only an
//! unknown tool is a protocol error.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
    CompleteRequestMethod, CompleteRequestParams, CompleteResult, ConstString, ContentBlock,
    CreateTaskResult, CustomRequest, CustomResult, DetailedTask, GetPromptRequestMethod,
    GetPromptRequestParams, GetPromptResponse, GetTaskParams, GetTaskResult, Implementation,
    JsonObject, ListPromptsRequestMethod, ListPromptsResult, ListResourceTemplatesRequestMethod,
    ListResourceTemplatesResult, ListResourcesRequestMethod, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ReadResourceRequestMethod,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    SetLevelRequestMethod, SubscribeRequestMethod, SubscribeRequestParams, SubscriptionFilter,
    Task, TaskPayload, TaskStatus, Tool as McpTool, UnsubscribeRequestMethod,
    UnsubscribeRequestParams,
};
// Logging is deprecated in MCP, and still sent by the clients the proxy serves.
#[allow(deprecated)]
use rmcp::model::SetLevelRequestParams;
use rmcp::service::{NotificationContext, Peer, RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::{
    BoxedWork, CallFuture, CallOutcome, Engine, EngineError, HearProgress, InlineProgress,
    ToolCall, WorkOutput,
};
use crate::http::{HttpLimits, SessionCount};
use crate::job_answer::JobAnswer;
use crate::jobs::{now_ms, Job, JobError, JobFilter, JobState, JobStatus};
use crate::jsonrpc::excerpt;
use crate::lock;
use crate::policy::{Seconds, Source};
use crate::proxy::{MarkComplete, Proxied, Upstream, UPSTREAM_RESULT};
use crate::run_error::RunError;
use crate::tools::{parse_args, schema_of, with_async_mode, Tool, ToolOutput};

mod behind;
mod stdio;
mod wrapped;

use behind::Behind;
use wrapped::{Handled, Handler, Wrapped};

/// The share of the budget `job_status` may wait, so its own answer stays in time.
pub const WAIT_SHARE_OF_BUDGET: f64 = 0.8;
/// `list_jobs` answers at most this many jobs when not told.
pub const DEFAULT_LIST_LIMIT: usize = 20;

/// The MCP server: cheap to clone, every clone shares the engine and tools.
#[derive(Clone)]
pub struct SmartServer {
    engine: Engine,
    backend: Backend,
    /// The job tools and `predictor_stats`, listed after the backend's tools.
    own_tools: Arc<Vec<McpTool>>,
    /// The last caller's name, kept so that a session's calls share one copy.
    last_client: Arc<Mutex<Option<Arc<str>>>>,
}

/// Where the tools come from.
#[derive(Clone)]
enum Backend {
    /// Tools of this process (built-in and configured), listed with `async_mode`.
    Local {
        tools: Arc<BTreeMap<Arc<str>, Arc<dyn Tool>>>,
        listed: Arc<Vec<McpTool>>,
    },
    /// An upstream MCP server's tools, through the proxy.
    Upstream(Upstream),
    /// The tools of an rmcp handler in this process ([`SmartServer::wrap`]).
    Wrapped(Arc<dyn Handler>),
}

/// What a backend's work returns, as the engine carries it: turned into the call's
/// result when it answers inline, kept as JSON (read back by [`stored_result`]) when
/// it runs as a job.
trait Answer: WorkOutput {
    fn into_response(self) -> CallToolResponse;
}

impl WorkOutput for ToolOutput {
    /// `{"text", "structured"}`, built by moving the parts.
    fn into_json(self) -> Value {
        let mut map = serde_json::Map::with_capacity(2);
        map.insert("text".to_owned(), Value::String(self.text));
        map.insert("structured".to_owned(), self.structured);
        Value::Object(map)
    }
}

impl Answer for ToolOutput {
    fn into_response(self) -> CallToolResponse {
        text_and_structured(self.text, self.structured).into()
    }
}

impl Answer for Proxied {
    fn into_response(self) -> CallToolResponse {
        self.0.complete().into()
    }
}

impl Answer for Handled {
    fn into_response(self) -> CallToolResponse {
        Handled::into_response(self)
    }
}

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

const JOB_STATUS: &str = "job_status";
const LIST_JOBS: &str = "list_jobs";
const CANCEL_JOB: &str = "cancel_job";
const PREDICTOR_STATS: &str = "predictor_stats";
/// The names of the tools every smart-async server offers itself (the job tools and
/// `predictor_stats`): a configured tool may not take one.
pub const OWN_TOOL_NAMES: [&str; 4] = [JOB_STATUS, LIST_JOBS, CANCEL_JOB, PREDICTOR_STATS];

impl SmartServer {
    /// A server offering `tools` through `engine`; registers each tool's options.
    pub fn new(engine: Engine, tools: Vec<Arc<dyn Tool>>) -> SmartServer {
        let mut listed = Vec::with_capacity(tools.len());
        let mut by_name = BTreeMap::new();
        for tool in tools {
            engine.register_tool(tool.name(), tool.options());
            listed.push(McpTool::new(
                tool.name().to_owned(),
                tool.description().to_owned(),
                Arc::new(with_async_mode(tool.input_schema())),
            ));
            by_name.insert(Arc::from(tool.name()), tool);
        }
        let backend = Backend::Local {
            tools: Arc::new(by_name),
            listed: Arc::new(listed),
        };
        SmartServer::with_backend(engine, backend)
    }

    /// A server offering an upstream MCP server's tools through `engine` (the proxy).
    pub fn proxy(engine: Engine, upstream: Upstream) -> SmartServer {
        for tool in upstream.tools().iter() {
            if OWN_TOOL_NAMES.contains(&tool.name.as_ref()) {
                tracing::warn!(
                    "the upstream's tool '{}' is shadowed by smart-async's own tool of that name",
                    tool.name
                );
            }
        }
        SmartServer::with_backend(engine, Backend::Upstream(upstream))
    }

    /// A server offering the tools of `handler`, an rmcp server of your own, through
    /// `engine`: a tool call that would run too long answers with a job (or a task)
    /// instead. Everything else the handler serves (prompts, resources, completions,
    /// logging) is passed on as it is. Its tools run with their request's context, but
    /// for the progress token, which smart-async's progress uses (report a tool's own
    /// through the [`JobContext`](crate::JobContext) in the context's extensions), and
    /// the cancellation token, which fires when the call or its job is cancelled.
    pub fn wrap<H: ServerHandler>(engine: Engine, handler: H) -> SmartServer {
        SmartServer::with_backend(engine, Backend::Wrapped(Arc::new(Wrapped(handler))))
    }

    fn with_backend(engine: Engine, backend: Backend) -> SmartServer {
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
        SmartServer {
            engine,
            backend,
            own_tools: Arc::new(own_tools),
            last_client: Arc::default(),
        }
    }

    /// Every tool a client sees: the backend's, then smart-async's own (ours shadow
    /// any of the same name). A wrapped handler's list may come in pages: ours follow
    /// its first.
    async fn listed(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let first_page = request.as_ref().is_none_or(|r| r.cursor.is_none());
        let (theirs, next_cursor) = match &self.backend {
            Backend::Local { listed, .. } => (listed.to_vec(), None),
            Backend::Upstream(upstream) => (upstream.tools().to_vec(), None),
            Backend::Wrapped(handler) => {
                let page = handler.list_tools(request, ctx).await?;
                let tools = page.tools.into_iter().map(with_async_mode_listed).collect();
                (tools, page.next_cursor)
            }
        };
        let mut listed = ListToolsResult::with_all_items(self.with_own_tools(theirs, first_page));
        listed.next_cursor = next_cursor;
        Ok(listed)
    }

    /// `theirs` without those ours shadow, then ours when this is the first page.
    fn with_own_tools(&self, theirs: Vec<McpTool>, first_page: bool) -> Vec<McpTool> {
        let mut tools: Vec<McpTool> = theirs
            .into_iter()
            .filter(|tool| !OWN_TOOL_NAMES.contains(&tool.name.as_ref()))
            .collect();
        if first_page {
            tools.extend(self.own_tools.iter().cloned());
        }
        tools
    }

    /// Whether the backend offers `name`: a wrapped handler is asked for it, and when it
    /// does not look tools up by name, its list is.
    async fn offers(&self, name: &str, ctx: &RequestContext<RoleServer>) -> bool {
        match &self.backend {
            Backend::Local { tools, .. } => tools.contains_key(name),
            Backend::Upstream(upstream) => upstream.has_tool(name),
            Backend::Wrapped(handler) => {
                if handler.get_tool(name).is_some() {
                    return true;
                }
                let mut cursor = None;
                loop {
                    let request = cursor
                        .map(|cursor| PaginatedRequestParams::default().with_cursor(Some(cursor)));
                    let Ok(page) = handler.list_tools(request, ctx.clone()).await else {
                        return false;
                    };
                    if page.tools.iter().any(|tool| tool.name == name) {
                        return true;
                    }
                    match page.next_cursor {
                        Some(next) => cursor = Some(next),
                        None => return false,
                    }
                }
            }
        }
    }

    /// The server behind this one, which answers what is not a tool call.
    fn behind(&self) -> Option<&dyn Behind> {
        match &self.backend {
            Backend::Upstream(upstream) => Some(upstream),
            Backend::Wrapped(handler) => Some(&**handler as &dyn Behind),
            Backend::Local { .. } => None,
        }
    }

    fn upstream(&self) -> Option<&Upstream> {
        match &self.backend {
            Backend::Upstream(upstream) => Some(upstream),
            Backend::Local { .. } | Backend::Wrapped(_) => None,
        }
    }

    /// The caller's name, from the request's `_meta` (2026-07-28) or the session's
    /// `initialize`; the same name as the last call's is not copied again.
    fn client_name(&self, ctx: &RequestContext<RoleServer>) -> Option<Arc<str>> {
        let from_meta = ctx.meta.client_info().map(|info| info.name);
        let peer_info = ctx.peer.peer_info();
        let name = from_meta.as_deref().or_else(|| {
            peer_info
                .as_deref()
                .map(|info| info.client_info.name.as_str())
        })?;
        let mut last = lock(&self.last_client);
        match &*last {
            Some(last) if **last == *name => Some(last.clone()),
            _ => {
                let name: Arc<str> = Arc::from(name);
                *last = Some(name.clone());
                Some(name)
            }
        }
    }

    /// The engine behind the server.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves one client over stdin/stdout until it disconnects.
    pub async fn serve_stdio(self) -> anyhow::Result<()> {
        let running = match self.serve(stdio::stdio()).await {
            Ok(running) => running,
            // Nobody connected: stdin ended before a first request. Not an error.
            Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => {
                tracing::info!("stdin closed before a client connected");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        running.waiting().await?;
        Ok(())
    }

    /// Serves Streamable HTTP at `http://ADDR/mcp` until `shutdown` fires, to requests
    /// whose `Host` and `Origin` `limits` allow, with at most its sessions open.
    pub async fn serve_http(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
        limits: HttpLimits,
    ) -> anyhow::Result<()> {
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(limits.allowed_hosts.clone())
            .with_max_request_body_bytes(crate::jsonrpc::MAX_MESSAGE_BYTES)
            .with_cancellation_token(shutdown.child_token());
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(crate::http::IDLE_SESSION_TTL);
        let sessions = Arc::new(sessions);
        // 2026-07-28 requests are served statelessly, one factory call each: every call
        // must share this server's engine, so the factory clones it.
        let service: StreamableHttpService<SmartServer, LocalSessionManager> =
            StreamableHttpService::new(move || Ok(self.clone()), sessions.clone(), config);
        let router = axum::Router::new().nest_service("/mcp", service).layer(
            axum::middleware::from_fn_with_state(
                (Arc::new(limits), sessions),
                crate::http::guard::<LocalSessionManager>,
            ),
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
            .await?;
        Ok(())
    }

    /// Runs a configured tool through the engine for one request: with the client's
    /// budget, its cancellation, and progress notifications when it sent a token. A job
    /// is answered as a task to clients that declared the tasks extension, and with
    /// the tool-level job answer to all others.
    ///
    /// Not an `async fn`, nor is [`SmartServer::call_tool`]: an `async fn` holds its
    /// arguments twice, and rmcp moves every request's future (as big as its biggest
    /// handler's) as it spawns it, so what a call holds costs every request.
    fn call_configured<'a, T: Answer>(
        &'a self,
        tool: Arc<str>,
        args: Value,
        work: BoxedWork<T>,
        ctx: &'a RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, ErrorData>> + Send + 'a {
        let mut call = ToolCall::new(tool, args);
        call.client = self.client_name(ctx);
        call.cancel = Some(ctx.ct.clone());
        let progress = ctx.meta.get_progress_token().map(|token| {
            // Notifications are sent from this request's own task, where rmcp knows
            // which request (and, over HTTP, which response stream) they belong to:
            // the engine leaves the latest report here and rings.
            let mailbox = Arc::new(ProgressMailbox::default());
            call.on_progress = Some(mailbox.clone());
            (token, mailbox)
        });
        let mut outcome = self.engine.call_boxed(call, work);
        async move {
            // Most calls are answered at the first poll, before any progress is due.
            let first = std::future::poll_fn(|cx| Poll::Ready(outcome.poll_unpin(cx))).await;
            let outcome = match (first, progress) {
                (Poll::Ready(outcome), _) => outcome,
                (Poll::Pending, None) => (&mut outcome).await,
                // Boxed: the select is big, and only calls still running need it.
                (Poll::Pending, Some((token, mailbox))) => {
                    Box::pin(with_progress(&mut outcome, token, &mailbox, &ctx.peer)).await
                }
            };
            self.respond(outcome, ctx)
        }
    }

    /// The answer to a call the engine ran.
    fn respond<T: Answer>(
        &self,
        outcome: Result<CallOutcome<T>, EngineError>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(match outcome {
            Ok(CallOutcome::Done {
                result: Ok(answer), ..
            }) => answer.into_response(),
            Ok(CallOutcome::Done {
                result: Err(error), ..
            }) => match protocol_error(&error) {
                // The tool's server's protocol error goes back as one, code and data.
                Some(error) => return Err(error),
                None => failed_result(error).into(),
            },
            Ok(CallOutcome::Job { job }) if client_has_tasks(ctx) => {
                CallToolResponse::Task(CreateTaskResult::new(self.task_of(&job)))
            }
            Ok(CallOutcome::Job { job }) => self.background_answer(&job).into(),
            Ok(CallOutcome::Cancelled { runtime_s, .. }) => error_result(format!(
                "the call was cancelled by the client after {}; its work was stopped",
                Seconds(runtime_s)
            ))
            .into(),
            Err(e) => error_result(format!("smart-async could not run the call: {e}")).into(),
        })
    }

    /// A job as the tasks extension shows it.
    fn task_of(&self, job: &Job) -> Task {
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
        let retention_ms = self.engine.job_settings().retention.as_millis();
        let mut task = Task::new(
            job.id.to_string(),
            status,
            iso_time(job.created_at_ms),
            iso_time(updated_ms),
        )
        .with_status_message(job_summary(job, now, self.engine.run_slot_free()))
        .with_ttl_ms(u64::try_from(retention_ms).unwrap_or(u64::MAX));
        if !job.status().is_terminal() {
            task = task.with_poll_interval_ms((job.poll_interval_s(now) * 1000.0).round() as u64);
        }
        task
    }

    /// `tasks/get`: the job's state, with its result or error once it has ended.
    fn detailed_task(&self, job: &Job) -> DetailedTask {
        let task = self.task_of(job);
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

    /// What a caller gets for a job: what happened, why, and what to call next.
    fn background_answer(&self, job: &Job) -> CallToolResult {
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
                Seconds(self.engine.deadline(decision).as_secs_f64())
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

    /// The job behind a task id; an unknown id is invalid params, as the extension says.
    fn job_of_task(&self, task_id: &str) -> Result<Job, ErrorData> {
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
        match self.engine.job(id) {
            Ok(job) => Ok(job),
            Err(EngineError::Job(JobError::NotFound(_))) => Err(unknown()),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        }
    }

    async fn job_status(
        &self,
        args: &Value,
        ctx: &RequestContext<RoleServer>,
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
        let client = self.client_name(ctx);
        let budget_s = self.engine.client_budget(client.as_deref()).budget_s;
        let wait = Duration::from_secs_f64(wait_s.min(max_wait_s(budget_s)));
        let job = self
            .engine
            .wait_job(id, wait)
            .await
            .map_err(|e| e.to_string())?;
        Ok(job_report(&job, self.engine.run_slot_free()))
    }

    fn list_jobs(&self, args: &Value) -> Result<CallToolResult, String> {
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
        };
        let jobs = self.engine.list_jobs(&filter).map_err(|e| e.to_string())?;
        let now = now_ms();
        let slot_free = self.engine.run_slot_free();
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

    async fn cancel_job(&self, args: &Value) -> Result<CallToolResult, String> {
        let args: CancelJobArgs = parse_args(CANCEL_JOB, args)?;
        let id = parse_job_id(&args.job_id)?;
        let job = self
            .engine
            .cancel_job(id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(job_report(&job, self.engine.run_slot_free()))
    }

    fn predictor_stats(&self, args: &Value) -> Result<CallToolResult, String> {
        let args: StatsArgs = parse_args(PREDICTOR_STATS, args)?;
        let report = self.engine.report(args.tool.as_deref());
        if let (Some(tool), true) = (&args.tool, report.tools.is_empty()) {
            return Err(format!(
                "{PREDICTOR_STATS}: nothing has been learned about tool '{tool}' yet"
            ));
        }
        let text = report.to_string();
        let structured = serde_json::to_value(&report).map_err(|e| e.to_string())?;
        Ok(text_and_structured(text, structured))
    }
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

/// The latest progress report of an inline call, for the request's task to send.
#[derive(Default)]
struct ProgressMailbox {
    latest: std::sync::Mutex<Option<InlineProgress>>,
    ring: tokio::sync::Notify,
}

impl HearProgress for ProgressMailbox {
    fn hear(&self, progress: InlineProgress) {
        *lock(&self.latest) = Some(progress);
        self.ring.notify_one();
    }
}

impl ProgressMailbox {
    async fn take(&self) -> InlineProgress {
        loop {
            let taken = lock(&self.latest).take();
            if let Some(progress) = taken {
                return progress;
            }
            self.ring.notified().await;
        }
    }
}

/// Waits for a call that did not end at its first poll, sending its progress as it
/// comes.
async fn with_progress<T: WorkOutput>(
    outcome: &mut CallFuture<'_, T>,
    token: ProgressToken,
    mailbox: &ProgressMailbox,
    peer: &Peer<RoleServer>,
) -> Result<CallOutcome<T>, EngineError> {
    loop {
        // The notification is sent outside the select, which would otherwise hold its
        // output (an outcome's worth of bytes) across the send.
        let progress = tokio::select! {
            biased;
            outcome = &mut *outcome => return outcome,
            progress = mailbox.take() => progress,
        };
        let note = progress_notification(token.clone(), &progress);
        // Boxed: rmcp's send future is kilobytes.
        if let Err(e) = Box::pin(peer.notify_progress(note)).await {
            tracing::debug!(error = %e, "could not send a progress notification");
        }
    }
}

/// Whether this request's client declared the tasks extension (in the request's
/// `_meta` or at initialize).
fn client_has_tasks(ctx: &RequestContext<RoleServer>) -> bool {
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

/// The JSON-RPC error a run's failure is, when it was not the tool's own: the tool's
/// server's error as it sent it, or the restart that cut the run off.
fn protocol_error(error: &RunError) -> Option<ErrorData> {
    match error {
        RunError::Rpc {
            code,
            message,
            data,
        } => Some(ErrorData::new(
            rmcp::model::ErrorCode(*code),
            message.clone(),
            data.clone(),
        )),
        RunError::Interrupted => Some(ErrorData::internal_error(
            "the job was interrupted by a restart of smart-async: call the tool again",
            None,
        )),
        _ => None,
    }
}

/// The `isError` result of a run that failed on the tool's terms: the tool's server's
/// own result whole when it sent one, else the failure in words.
fn failed_result(error: RunError) -> CallToolResult {
    match error {
        RunError::Tool {
            result: Some(result),
            message,
        } => CallToolResult::deserialize(&result)
            .map(MarkComplete::complete)
            .unwrap_or_else(|_| error_result(message)),
        other => error_result(other.to_string()),
    }
}

fn result_object(value: impl Serialize) -> JsonObject {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => JsonObject::new(),
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

/// A job's state in words, for people and models: "running for 3 s, about 7 s to go
/// (12 of 40 files)". A pending job waits for a free slot only while every slot is
/// taken (`slot_free` false); otherwise it is about to start.
fn job_summary(job: &Job, now: u64, slot_free: bool) -> String {
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

/// The notification for an inline call that is still running: the seconds it has run
/// as the progress (always rising), the prediction as the total while it lies ahead,
/// and the tool's own progress in the message.
fn progress_notification(
    token: ProgressToken,
    progress: &InlineProgress,
) -> ProgressNotificationParam {
    let mut message = format!("running for {}", Seconds(progress.elapsed_s));
    let mut note = ProgressNotificationParam::new(token, progress.elapsed_s);
    if let Some(predicted_s) = progress.predicted_s {
        message.push_str(&format!(", predicted {}", Seconds(predicted_s)));
        if predicted_s > progress.elapsed_s {
            note = note.with_total(predicted_s);
        }
    }
    if let Some(tool) = &progress.tool {
        message.push_str(&format!(" ({tool})"));
    }
    note.with_message(message)
}

/// The -32601 answer, saying what it is (rmcp's names only the method).
fn method_not_found<M: ConstString>() -> ErrorData {
    not_found_method(M::VALUE)
}

fn not_found_method(method: &str) -> ErrorData {
    ErrorData::new(
        rmcp::model::ErrorCode::METHOD_NOT_FOUND,
        format!("method not found: {}", excerpt(method)),
        None,
    )
}

fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "unknown tool '{}': tools/list shows the available ones",
            excerpt(name)
        ),
        None,
    )
}

/// A wrapped handler's tool as smart-async lists it: with `async_mode`.
fn with_async_mode_listed(mut tool: McpTool) -> McpTool {
    tool.input_schema = Arc::new(with_async_mode((*tool.input_schema).clone()));
    tool
}

fn text_and_structured(text: String, structured: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

fn error_result(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// The result for a job's stored output (a tool's `{"text", "structured"}`, or an
/// upstream's result under [`UPSTREAM_RESULT`]); any other value is shown as it is.
fn stored_result(value: Value) -> CallToolResult {
    match value {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(UPSTREAM_RESULT) => {
            let result = map.remove(UPSTREAM_RESULT).unwrap_or(Value::Null);
            CallToolResult::deserialize(&result)
                .map(MarkComplete::complete)
                .unwrap_or_else(|_| text_and_structured(result.to_string(), result))
        }
        Value::Object(mut map)
            if map.len() == 2 && map.contains_key("text") && map.contains_key("structured") =>
        {
            let text = match map.remove("text") {
                Some(Value::String(text)) => text,
                other => other.map(|v| v.to_string()).unwrap_or_default(),
            };
            text_and_structured(text, map.remove("structured").unwrap_or(Value::Null))
        }
        other => text_and_structured(other.to_string(), other),
    }
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

/// What every client is told about smart-async's tools.
const INSTRUCTIONS: &str =
    "Tools answer inline when they finish in time; otherwise they return a job_id. \
     Use job_status (with wait_s) for the result, list_jobs and cancel_job to manage jobs, \
     and predictor_stats to see what smart-async has learned. Any tool accepts \
     async_mode=true to run in the background at once.";

impl ServerHandler for SmartServer {
    fn get_info(&self) -> ServerConfig {
        let mut capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_tasks()
            .build();
        let mut instructions = INSTRUCTIONS.to_owned();
        // The proxy, or a wrapped handler, offers its prompts, resources, completions
        // and logging as they are.
        if let Some(info) = self.behind().and_then(Behind::info) {
            capabilities.prompts = info.capabilities.prompts.clone();
            capabilities.resources = info.capabilities.resources.clone();
            capabilities.completions = info.capabilities.completions.clone();
            #[allow(deprecated)] // logging is deprecated in MCP, still served to its clients
            {
                capabilities.logging = info.capabilities.logging.clone();
            }
            if let Some(theirs) = &info.instructions {
                instructions = format!("{theirs}\n\n{instructions}");
            }
        }
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "smart-async",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(instructions)
    }

    /// 2026-07-28 clients may listen for tool list changes, as `tools.listChanged`
    /// advertises: the proxy's list follows its upstream's; a server of its own tools
    /// accepts the subscription and never has a change to send (its list is fixed).
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // A wrapped handler's list is its own, and so are the changes to it.
        if let Backend::Wrapped(handler) = &self.backend {
            return handler.accepted_subscription_filter(requested);
        }
        let mut accepted = SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed;
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        if let Backend::Wrapped(handler) = &self.backend {
            return handler.listen(context).await;
        }
        if let Some(upstream) = self.upstream() {
            upstream.add_subscription(context.sink().clone());
        }
        context.cancelled().await;
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if let Some(upstream) = self.upstream() {
            upstream.add_downstream(context.peer);
        }
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<ListPromptsRequestMethod>)?;
        behind.list_prompts(request, ctx).await
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        Err(not_found_method(&request.method))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<CompleteRequestMethod>)?;
        behind.complete(request, ctx).await
    }

    #[allow(deprecated)] // logging/setLevel: deprecated in MCP, still sent by clients
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<SetLevelRequestMethod>)?;
        behind.set_level(request, ctx).await
    }

    #[allow(deprecated)] // resources/subscribe: the legacy lifecycle's, served there
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<SubscribeRequestMethod>)?;
        behind.subscribe(request, ctx).await
    }

    #[allow(deprecated)] // as `subscribe`
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<UnsubscribeRequestMethod>)?;
        behind.unsubscribe(request, ctx).await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<GetPromptRequestMethod>)?;
        behind.get_prompt(request, ctx).await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<ListResourcesRequestMethod>)?;
        behind.list_resources(request, ctx).await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<ListResourceTemplatesRequestMethod>)?;
        behind.list_resource_templates(request, ctx).await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let behind = self
            .behind()
            .ok_or_else(method_not_found::<ReadResourceRequestMethod>)?;
        behind.read_resource(request, ctx).await
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // Boxed: a wrapped handler's list is awaited, and rmcp's request future is as
        // big as its biggest handler's.
        Box::pin(self.listed(request, ctx)).await
    }

    /// rmcp asks for one tool on every `tools/call` over HTTP (to check `Mcp-Param-*`
    /// headers): found, not listed.
    fn get_tool(&self, name: &str) -> Option<McpTool> {
        if OWN_TOOL_NAMES.contains(&name) {
            return self.own_tools.iter().find(|t| t.name == name).cloned();
        }
        match &self.backend {
            Backend::Local { listed, .. } => listed.iter().find(|t| t.name == name).cloned(),
            Backend::Upstream(upstream) => {
                upstream.tools().iter().find(|t| t.name == name).cloned()
            }
            Backend::Wrapped(handler) => handler.get_tool(name).map(with_async_mode_listed),
        }
    }

    /// Not an `async fn`, for the reason `call_configured` gives.
    fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, ErrorData>> + Send + '_ {
        let name = std::mem::take(&mut request.name);
        let args = Value::Object(request.arguments.take().unwrap_or_default());
        async move {
            let answer = match name.as_ref() {
                JOB_STATUS => Box::pin(self.job_status(&args, &ctx)).await,
                LIST_JOBS => self.list_jobs(&args),
                CANCEL_JOB => Box::pin(self.cancel_job(&args)).await,
                PREDICTOR_STATS => self.predictor_stats(&args),
                name => match &self.backend {
                    Backend::Local { tools, .. } => match tools.get_key_value(name) {
                        Some((name, tool)) => match tool.start(&args) {
                            Ok(work) => {
                                let name = name.clone();
                                return self.call_configured(name, args, work, &ctx).await;
                            }
                            Err(message) => Err(message),
                        },
                        None => return Err(unknown_tool(name)),
                    },
                    Backend::Upstream(upstream) if upstream.has_tool(name) => {
                        let work = upstream.call(name, &args);
                        return self.call_configured(name.into(), args, work, &ctx).await;
                    }
                    Backend::Wrapped(handler) if Box::pin(self.offers(name, &ctx)).await => {
                        request.name = name.to_owned().into();
                        request.arguments = args.as_object().cloned();
                        let work = wrapped::call(handler.clone(), request, ctx.clone());
                        return self.call_configured(name.into(), args, work, &ctx).await;
                    }
                    Backend::Upstream(_) | Backend::Wrapped(_) => return Err(unknown_tool(name)),
                },
            };
            Ok(answer.unwrap_or_else(error_result).into())
        }
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let job = self.job_of_task(&request.task_id)?;
        Ok(GetTaskResult::new(self.detailed_task(&job)))
    }

    /// Cooperative, as the extension has it: the job is asked to stop and given its
    /// grace; `tasks/get` then reads `cancelled`. A task that has already ended is
    /// acknowledged as it is.
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let job = self.job_of_task(&request.task_id)?;
        match Box::pin(self.engine.cancel_job(job.id)).await {
            Ok(_) | Err(EngineError::Job(JobError::Finished { .. })) => Ok(()),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        }
    }
}

impl SessionCount for LocalSessionManager {
    async fn sessions(&self) -> usize {
        self.sessions.read().await.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::files::HashFiles;
    use crate::tools::roots::Roots;
    use crate::EngineConfig;

    #[tokio::test]
    async fn get_tool_finds_every_listed_tool_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
        let roots = Arc::new(Roots::new(&[dir.path().to_path_buf()]).unwrap());
        let server = SmartServer::new(engine.clone(), vec![Arc::new(HashFiles::new(roots))]);
        let Backend::Local { listed, .. } = &server.backend else {
            unreachable!("SmartServer::new serves its own tools")
        };
        let listed = server.with_own_tools(listed.to_vec(), true);
        assert_eq!(listed.len(), 1 + OWN_TOOL_NAMES.len());
        for tool in listed {
            assert_eq!(server.get_tool(&tool.name).as_ref(), Some(&tool));
        }
        assert_eq!(server.get_tool("no_such_tool"), None);
        engine.close().await.unwrap();
    }

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
