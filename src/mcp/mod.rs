//! The MCP face: an rmcp `ServerHandler` that offers the configured tools through the
//! engine, the job tools (`job_status`, `list_jobs`, `cancel_job`) and
//! `predictor_stats`, over stdio or Streamable HTTP.
//!
//! This module routes each request; the faces are its submodules, none of which
//! imports it back: `codec` (what work becomes for the client), `job_tools`, `tasks`
//! (the tasks extension's view of a job), `progress`, `behind` and `wrapped` (what is
//! served besides tools: an upstream's or a wrapped handler's), and `stdio`.
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

use futures_util::FutureExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, CompleteRequestMethod,
    CompleteRequestParams, CompleteResult, CreateTaskResult, CustomRequest, CustomResult,
    GetPromptRequestMethod, GetPromptRequestParams, GetPromptResponse, GetTaskParams,
    GetTaskResult, Implementation, ListPromptsRequestMethod, ListPromptsResult,
    ListResourceTemplatesRequestMethod, ListResourceTemplatesResult, ListResourcesRequestMethod,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestMethod,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    SetLevelRequestMethod, SubscribeRequestMethod, SubscribeRequestParams, SubscriptionFilter,
    Tool as McpTool, UnsubscribeRequestMethod, UnsubscribeRequestParams,
};
// Logging is deprecated in MCP, and still sent by the clients the proxy serves.
#[allow(deprecated)]
use rmcp::model::SetLevelRequestParams;
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use crate::engine::{BoxedWork, CallOutcome, Engine, EngineError, ToolCall};
use crate::jobs::JobError;
use crate::lock::lock;
use crate::policy::Seconds;
use crate::proxy::Upstream;
use crate::tools::{with_async_mode, Tool};

mod behind;
mod caller;
mod codec;
mod http;
mod job_tools;
mod progress;
mod stdio;
mod tasks;
mod wrapped;

use behind::Behind;
use codec::{error_result, failed_result, method_not_found, not_found_method, protocol_error};
use codec::{unknown_tool, Answer};
pub use job_tools::OWN_TOOL_NAMES;
use job_tools::{CANCEL_JOB, JOB_STATUS, LIST_JOBS, PREDICTOR_STATS};
use progress::{with_progress, ProgressMailbox};
use wrapped::{Handler, Wrapped};

/// The MCP server: cheap to clone, every clone shares the engine and tools.
///
/// Served here over an in-memory pipe to an rmcp client; [`SmartServer::serve_stdio`]
/// and [`SmartServer::serve_http`] serve it to real ones.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use rmcp::model::CallToolRequestParams;
/// use rmcp::ServiceExt;
/// use smart_async::{Engine, EngineConfig, HashFiles, Roots, SmartServer};
///
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("notes.txt"), "hello")?;
/// let engine = Engine::open(EngineConfig::new(dir.path().join("db"))).await?;
/// let roots = Arc::new(Roots::new(&[dir.path().to_path_buf()])?);
/// let server = SmartServer::new(engine.clone(), vec![Arc::new(HashFiles::new(roots))]);
///
/// let (client_end, server_end) = tokio::io::duplex(1 << 16);
/// tokio::spawn(async move {
///     if let Ok(running) = server.serve(server_end).await {
///         let _ = running.waiting().await;
///     }
/// });
/// let client = ().serve(client_end).await?;
/// let tools = client.list_all_tools().await?;
/// // The tool, then the job tools and predictor_stats that come with every server.
/// assert!(tools.iter().any(|tool| tool.name == "hash_files"));
/// assert!(tools.iter().any(|tool| tool.name == "job_status"));
/// let args = serde_json::json!({ "path": "notes.txt" });
/// let call = CallToolRequestParams::new("hash_files").with_arguments(args.as_object().unwrap().clone());
/// let result = client.call_tool(call).await?;
/// assert_ne!(result.is_error, Some(true), "{result:?}");
/// client.cancel().await?;
/// engine.close().await?;
/// # Ok(()) }
/// ```
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
        let own_tools = job_tools::own_tools();
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
        call.owner = caller::caller(ctx).principal;
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
            Ok(CallOutcome::Job { job }) if tasks::client_has_tasks(ctx) => {
                CallToolResponse::Task(CreateTaskResult::new(tasks::task_of(&self.engine, &job)))
            }
            Ok(CallOutcome::Job { job }) => job_tools::background_answer(&self.engine, &job).into(),
            Ok(CallOutcome::Cancelled { runtime_s, .. }) => error_result(format!(
                "the call was cancelled by the client after {}; its work was stopped",
                Seconds(runtime_s)
            ))
            .into(),
            Err(e) => error_result(format!("smart-async could not run the call: {e}")).into(),
        })
    }
}

/// A wrapped handler's tool as smart-async lists it: with `async_mode`.
fn with_async_mode_listed(mut tool: McpTool) -> McpTool {
    tool.input_schema = Arc::new(with_async_mode((*tool.input_schema).clone()));
    tool
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
                JOB_STATUS => {
                    let client = self.client_name(&ctx);
                    let caller = caller::caller(&ctx);
                    let budget =
                        (self.engine).client_budget_of(client.as_deref(), &caller.principal);
                    let budget_s = budget.budget_s;
                    Box::pin(job_tools::job_status(
                        &self.engine,
                        &args,
                        budget_s,
                        &caller,
                    ))
                    .await
                }
                LIST_JOBS => job_tools::list_jobs(&self.engine, &args, &caller::caller(&ctx)),
                CANCEL_JOB => {
                    let caller = caller::caller(&ctx);
                    Box::pin(job_tools::cancel_job(&self.engine, &args, &caller)).await
                }
                PREDICTOR_STATS => {
                    job_tools::predictor_stats(&self.engine, &args, &caller::caller(&ctx))
                }
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
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let job = tasks::job_of_task(&self.engine, &request.task_id, &caller::caller(&ctx))?;
        Ok(GetTaskResult::new(tasks::detailed_task(&self.engine, &job)))
    }

    /// Cooperative, as the extension has it: the job is asked to stop and given its
    /// grace; `tasks/get` then reads `cancelled`. A task that has already ended is
    /// acknowledged as it is.
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let job = tasks::job_of_task(&self.engine, &request.task_id, &caller::caller(&ctx))?;
        match Box::pin(self.engine.cancel_job(job.id)).await {
            Ok(_) | Err(EngineError::Job(JobError::Finished { .. })) => Ok(()),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        }
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
}
