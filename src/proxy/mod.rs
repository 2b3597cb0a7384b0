//! The proxy's upstream: an existing MCP server run as a child process over stdio and
//! spoken to with rmcp's client, so its tools can be offered through the engine.
//!
//! The upstream is supervised: its tool list is followed (`tools/list_changed`), its
//! stderr is passed on and its last lines kept, and when it exits the calls it was
//! running fail with the reason and it is started again with backoff. A call's
//! progress notifications from upstream become the call's progress; cancelling the
//! call sends `notifications/cancelled` upstream. Its log messages and resource
//! updates are relayed to the downstream sessions (module `relay`).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientRequest, CompleteResult, GetPromptResponse,
    GetPromptResult, Implementation, JsonObject, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ProgressNotificationParam, ReadResourceResponse, ReadResourceResult,
    ResourceUpdatedNotificationParam, ResultType, ServerPeerInfo, ServerResult,
    SubscribeRequestParams, Tool as McpTool, UnsubscribeRequestParams,
};
use rmcp::service::{
    NotificationContext, Peer, PeerRequestOptions, RunningService, ServiceError, SubscriptionSink,
};
use rmcp::{ClientHandler, ErrorData, RoleClient, RoleServer, ServiceExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{BoxedWork, Engine, ToolOptions, WorkOutput};
use crate::features::ASYNC_MODE_ARG;
use crate::job_answer::or_job_answer;
use crate::jobs::{JobContext, Progress};
use crate::lock::lock;
use crate::run_error::RunError;
// Logging is deprecated in MCP, and still sent by the servers the proxy fronts.
#[allow(deprecated)]
use rmcp::model::LoggingMessageNotificationParam;

mod relay;
use crate::tools::with_async_mode;

/// How long the upstream may take to answer the MCP handshake, by default: long
/// enough for `npx -y` to fetch a server on its first run.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a call waits for an upstream that is being restarted.
const RESTART_WAIT: Duration = Duration::from_secs(5);
/// The first wait before a restart; it doubles up to [`MAX_BACKOFF`] while restarts
/// keep failing, and starts over once the upstream has run [`STABLE_RUN`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// See [`FIRST_BACKOFF`].
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// See [`FIRST_BACKOFF`].
const STABLE_RUN: Duration = Duration::from_secs(30);
/// Lines of the upstream's stderr kept for error messages.
const STDERR_LINES: usize = 20;
/// How long to wait for the last stderr lines of an upstream that exited.
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// The upstream server's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCommand {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long it may take to answer the MCP handshake (see
    /// [`DEFAULT_STARTUP_TIMEOUT`]).
    pub startup_timeout: Duration,
}

impl UpstreamCommand {
    /// A file name for this command line: the program's name and a digest of the
    /// whole line (`server-everything-1a2b3c4d`).
    pub fn slug(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        digest.update(self.program.as_bytes());
        for arg in &self.args {
            digest.update([0]);
            digest.update(arg.as_bytes());
        }
        let name: String = std::path::Path::new(&self.program)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let hash: String = digest.finalize()[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("{name}-{hash}")
    }
}

impl std::fmt::Display for UpstreamCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// The upstream could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the upstream MCP server `{command}`: {reason}")]
pub struct UpstreamStartError {
    /// The command line.
    pub command: String,
    /// Why, with its last stderr lines.
    pub reason: String,
}

/// The link to the running upstream, as calls see it.
#[derive(Clone, Default)]
struct Link {
    peer: Option<Peer<RoleClient>>,
    /// Why it is down, while it is.
    down_reason: Option<String>,
}

struct Inner {
    command: UpstreamCommand,
    engine: Engine,
    link: watch::Sender<Link>,
    /// The upstream's tools as downstream sees them (with `async_mode`).
    tools: RwLock<Arc<Vec<McpTool>>>,
    info: RwLock<Option<ServerPeerInfo>>,
    progress: ProgressDispatcher,
    stderr_tail: Mutex<VecDeque<String>>,
    /// Downstream sessions (`initialize`) to tell when the tool list changes.
    downstream: Mutex<Vec<Peer<RoleServer>>>,
    /// Downstream `subscriptions/listen` streams (2026-07-28) to tell the same.
    subscriptions: Mutex<Vec<SubscriptionSink>>,
    /// Downstream sessions' resource subscriptions.
    relay: relay::Relay,
    shutdown: CancellationToken,
}

/// A supervised upstream MCP server. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
    supervisor: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Upstream {
    /// Starts the upstream and waits for its handshake and tool list; fails with the
    /// reason (not found, exit code, last stderr lines) if it does not come up.
    pub async fn start(
        command: UpstreamCommand,
        engine: Engine,
    ) -> Result<Upstream, UpstreamStartError> {
        let inner = Arc::new(Inner {
            command,
            engine,
            link: watch::Sender::new(Link::default()),
            tools: RwLock::new(Arc::new(Vec::new())),
            info: RwLock::new(None),
            progress: ProgressDispatcher::new(),
            stderr_tail: Mutex::new(VecDeque::new()),
            downstream: Mutex::new(Vec::new()),
            subscriptions: Mutex::new(Vec::new()),
            relay: relay::Relay::default(),
            shutdown: CancellationToken::new(),
        });
        let running = connect(&inner).await.map_err(|reason| UpstreamStartError {
            command: inner.command.to_string(),
            reason,
        })?;
        running
            .go_live(&inner)
            .await
            .map_err(|reason| UpstreamStartError {
                command: inner.command.to_string(),
                reason,
            })?;
        let supervisor = tokio::spawn(supervise(inner.clone(), running));
        Ok(Upstream {
            inner,
            supervisor: Arc::new(Mutex::new(Some(supervisor))),
        })
    }

    /// The upstream's tools, each with `async_mode` added.
    pub fn tools(&self) -> Arc<Vec<McpTool>> {
        self.inner
            .tools
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the upstream offers `tool`.
    pub fn has_tool(&self, tool: &str) -> bool {
        self.tools().iter().any(|t| t.name == tool)
    }

    /// What the upstream said of itself at the handshake.
    pub fn info(&self) -> Option<ServerPeerInfo> {
        self.inner
            .info
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The upstream's command line.
    pub fn command(&self) -> &UpstreamCommand {
        &self.inner.command
    }

    /// Remembers a downstream session, to tell it when the tool list changes.
    pub fn add_downstream(&self, peer: Peer<RoleServer>) {
        lock(&self.inner.downstream).push(peer);
    }

    /// Remembers a downstream subscription to tool list changes, until it ends.
    pub fn add_subscription(&self, sink: SubscriptionSink) {
        lock(&self.inner.subscriptions).push(sink);
    }

    /// Subscribes a downstream session to a resource's updates (upstream too, when it
    /// is the resource's first).
    #[allow(deprecated)] // resources/subscribe is legacy-only, and served as such
    pub async fn subscribe(&self, uri: String, session: Peer<RoleServer>) -> Result<(), ErrorData> {
        if !self.inner.relay.subscribe(&uri, session.clone()) {
            return Ok(());
        }
        let subscribed = self
            .peer()
            .await?
            .subscribe(SubscribeRequestParams::new(uri.clone()))
            .await;
        if let Err(e) = subscribed {
            self.inner.relay.refused(&uri, &session);
            return Err(upstream_error(e));
        }
        Ok(())
    }

    /// Ends a downstream session's subscription (upstream too, when it was the last).
    #[allow(deprecated)] // as `subscribe`
    pub async fn unsubscribe(
        &self,
        uri: String,
        session: &Peer<RoleServer>,
    ) -> Result<(), ErrorData> {
        if !self.inner.relay.unsubscribe(&uri, session) {
            return Ok(());
        }
        self.peer()
            .await?
            .unsubscribe(UnsubscribeRequestParams::new(uri))
            .await
            .map_err(upstream_error)
    }

    /// The client to the running upstream, waiting a little for one that is being
    /// restarted; else why it is down.
    pub async fn peer(&self) -> Result<Peer<RoleClient>, ErrorData> {
        let mut link = self.inner.link.subscribe();
        let up = tokio::time::timeout(RESTART_WAIT, link.wait_for(|l| l.peer.is_some())).await;
        if let Ok(Ok(link)) = up {
            if let Some(peer) = &link.peer {
                return Ok(peer.clone());
            }
        }
        let reason = self
            .inner
            .link
            .borrow()
            .down_reason
            .clone()
            .unwrap_or_else(|| "it is starting".to_owned());
        Err(ErrorData::internal_error(
            format!(
                "the upstream server `{}` is not running ({reason}); smart-async is restarting it: try again shortly",
                self.inner.command
            ),
            None,
        ))
    }

    /// The work of one call of the upstream tool `tool`, for the engine to run.
    pub(crate) fn call(&self, tool: &str, args: &Value) -> BoxedWork<Proxied> {
        let upstream = self.clone();
        let mut arguments = match args {
            Value::Object(map) => map.clone(),
            _ => JsonObject::new(),
        };
        arguments.remove(ASYNC_MODE_ARG);
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        Box::new(move |ctx| Box::pin(async move { upstream.run_call(params, ctx).await }))
    }

    async fn run_call(
        &self,
        params: CallToolRequestParams,
        ctx: JobContext,
    ) -> Result<Proxied, RunError> {
        let peer = self
            .peer()
            .await
            .map_err(|e| RunError::tool(e.message.into_owned()))?;
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(|e| self.lost(e))?;
        let request_id = handle.id.clone();
        let mut progress = self
            .inner
            .progress
            .subscribe(handle.progress_token.clone())
            .await;
        let response = handle.await_response();
        tokio::pin!(response);
        loop {
            tokio::select! {
                answered = &mut response => {
                    return match answered {
                        Ok(ServerResult::CallToolResult(result)) => carried(result),
                        Ok(other) => Err(RunError::tool(format!(
                            "the upstream server answered tools/call with something else: {}",
                            serde_json::to_string(&other).unwrap_or_default()
                        ))),
                        Err(ServiceError::McpError(error)) => Err(rpc_error(error)),
                        Err(e) => Err(RunError::tool(self.lost_while_running(e).await)),
                    };
                }
                Some(note) = progress.next() => ctx.report_progress(upstream_progress(note)),
                _ = ctx.cancelled() => {
                    let cancelled = CancelledNotificationParam::new(
                        Some(request_id),
                        Some("cancelled through smart-async".to_owned()),
                    );
                    if let Err(e) = peer.notify_cancelled(cancelled).await {
                        tracing::debug!(error = %e, "could not tell the upstream to cancel");
                    }
                    return Err(RunError::Cancelled);
                }
            }
        }
    }

    fn lost(&self, error: ServiceError) -> String {
        format!(
            "the call could not reach the upstream server `{}`: {error}",
            self.inner.command
        )
    }

    /// The error of a call whose upstream went away: waits briefly for the supervisor
    /// to learn why (exit code, last stderr lines).
    async fn lost_while_running(&self, error: ServiceError) -> String {
        let mut link = self.inner.link.subscribe();
        let reason = tokio::time::timeout(
            Duration::from_secs(2),
            link.wait_for(|l| l.down_reason.is_some()),
        )
        .await
        .ok()
        .and_then(|link| link.ok().and_then(|l| l.down_reason.clone()));
        match reason {
            Some(reason) => format!(
                "the upstream server `{}` stopped while the call ran: {reason}; smart-async is restarting it",
                self.inner.command
            ),
            None => self.lost(error),
        }
    }

    /// Stops the upstream: closes its stdin, then kills it if it does not exit.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let supervisor = lock(&self.supervisor).take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }
}

/// An upstream's result as the engine carries it: as it came for an inline answer, and
/// as `{UPSTREAM_RESULT: result}` in the job store.
#[derive(Debug)]
pub struct Proxied(pub CallToolResult);

impl WorkOutput for Proxied {
    fn into_json(self) -> Value {
        // A result's JSON has only string keys, so this does not fail; were it to, the
        // job says why rather than losing its end.
        serde_json::to_value(&self.0)
            .map(|result| serde_json::json!({ UPSTREAM_RESULT: result }))
            .unwrap_or_else(|e| {
                serde_json::json!({ "error": format!("the upstream's result cannot be stored: {e}") })
            })
    }
}

/// The upstream's answer as the engine carries it; an `isError` result is the call's
/// error (counted as failed, not taught): its text for people, and the whole result
/// (every content block, structured content) for the client.
pub(crate) fn carried(result: CallToolResult) -> Result<Proxied, RunError> {
    if result.is_error == Some(true) {
        let text: Vec<String> = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.clone()))
            .collect();
        return Err(RunError::Tool {
            message: text.join("\n"),
            result: serde_json::to_value(&result).ok(),
        });
    }
    Ok(Proxied(result))
}

/// A result passed on from the upstream, marked `resultType: complete`: an upstream
/// that speaks an older protocol leaves it out, and 2026-07-28 clients require it
/// (rmcp removes it again for clients of older versions).
pub trait MarkComplete {
    /// The result with its `resultType` set.
    fn complete(self) -> Self;
}

macro_rules! mark_complete {
    ($($result:ty),*) => {$(
        impl MarkComplete for $result {
            fn complete(mut self) -> Self {
                self.result_type = Some(ResultType::COMPLETE);
                self
            }
        }
    )*};
}

mark_complete!(
    CallToolResult,
    CompleteResult,
    ListPromptsResult,
    GetPromptResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ReadResourceResult
);

/// `logging/setLevel` answers an empty result, which has no result type to mark.
impl MarkComplete for () {
    fn complete(self) -> Self {}
}

impl MarkComplete for GetPromptResponse {
    fn complete(self) -> Self {
        match self {
            GetPromptResponse::Complete(result) => GetPromptResponse::Complete(result.complete()),
            other => other,
        }
    }
}

impl MarkComplete for ReadResourceResponse {
    fn complete(self) -> Self {
        match self {
            ReadResourceResponse::Complete(result) => {
                ReadResourceResponse::Complete(result.complete())
            }
            other => other,
        }
    }
}

/// The key under which a proxied result travels through the engine and the job store.
pub const UPSTREAM_RESULT: &str = "upstream_result";

/// A JSON-RPC error of the tool's server, as a run's error: given back with its code
/// and data.
pub(crate) fn rpc_error(error: ErrorData) -> RunError {
    RunError::Rpc {
        code: error.code.0,
        message: error.message.into_owned(),
        data: error.data,
    }
}

/// An upstream's error on a pass-through request, as the downstream client's error.
pub fn upstream_error(error: ServiceError) -> ErrorData {
    match error {
        ServiceError::McpError(error) => error,
        other => ErrorData::internal_error(format!("the upstream server failed: {other}"), None),
    }
}

fn upstream_progress(note: ProgressNotificationParam) -> Progress {
    Progress {
        done: note.progress,
        total: note.total,
        message: note.message,
    }
}

/// The client side the upstream talks to: it forwards progress and follows the
/// tool list.
#[derive(Clone)]
struct UpstreamClient {
    inner: Weak<Inner>,
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("smart-async-proxy", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(inner) = self.inner.upgrade() {
            inner.progress.handle_notification(params).await;
        }
    }

    #[allow(deprecated)] // see the import
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(inner) = self.inner.upgrade() {
            let sessions = lock(&inner.downstream).clone();
            relay::log_message(sessions, params).await;
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(inner) = self.inner.upgrade() {
            inner.relay.resource_updated(params).await;
        }
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        if let Some(inner) = self.inner.upgrade() {
            let peer = context.peer.clone();
            tokio::spawn(async move {
                if let Err(e) = refresh_tools(&inner, &peer).await {
                    tracing::warn!("could not read the upstream's new tool list: {e}");
                }
            });
        }
    }
}

/// One run of the upstream process with its MCP session.
struct Running {
    service: RunningService<RoleClient, UpstreamClient>,
    child: Child,
    stderr: JoinHandle<()>,
}

impl Running {
    /// Reads the tool list and opens the link for calls.
    async fn go_live(&self, inner: &Arc<Inner>) -> Result<(), String> {
        let peer = self.service.peer().clone();
        *inner
            .info
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            peer.peer_info().map(|i| (*i).clone());
        refresh_tools(inner, &peer)
            .await
            .map_err(|e| format!("it did not list its tools: {e}"))?;
        inner.link.send_replace(Link {
            peer: Some(peer),
            down_reason: None,
        });
        Ok(())
    }
}

/// Spawns the upstream and speaks the MCP handshake with it.
async fn connect(inner: &Arc<Inner>) -> Result<Running, String> {
    let mut command = Command::new(&inner.command.program);
    command
        .args(&inner.command.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "command not found: `{}` (is it installed and on PATH?)",
            inner.command.program
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!(
                "`{}` cannot be executed: permission denied",
                inner.command.program
            )
        }
        _ => format!("it could not be spawned: {e}"),
    })?;
    lock(&inner.stderr_tail).clear();
    let stderr = tokio::spawn(pass_stderr(Arc::downgrade(inner), child.stderr.take()));
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err("its stdin and stdout could not be connected".to_owned());
    };
    let client = UpstreamClient {
        inner: Arc::downgrade(inner),
    };
    let printed = Arc::new(Mutex::new(Some(Vec::new())));
    let stdout = Recorded {
        inner: stdout,
        printed: printed.clone(),
    };
    let startup_timeout = inner.command.startup_timeout;
    let handshake = tokio::time::timeout(startup_timeout, client.serve((stdout, stdin)));
    // Whether the failure already says how the process ended (or that it had none).
    let (failure, says_exit) = tokio::select! {
        served = handshake => match served {
            Ok(Ok(service)) => {
                lock(&printed).take();
                return Ok(Running { service, child, stderr });
            }
            Ok(Err(e)) => (format!("the MCP handshake failed: {e}"), false),
            Err(_) => (format!(
                "it did not answer the MCP handshake within {} s (is it an MCP server \
                 speaking stdio? a slow one needs a longer --startup-timeout-s)",
                startup_timeout.as_secs_f64()
            ), true),
        },
        status = child.wait() => (format!(
            "{} before answering the MCP handshake (is it an MCP server speaking stdio?)",
            exit_description(status)
        ), true),
    };
    // A handshake that failed because the process is ending: its exit says more.
    let failure = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
        Ok(status) if !says_exit => format!("{failure} ({})", exit_description(status)),
        Ok(_) => failure,
        Err(_) => {
            let _ = child.kill().await;
            format!("{failure} (it was still running and has been stopped)")
        }
    };
    let failure = match lock(&printed).take() {
        Some(bytes) if !bytes.is_empty() => {
            let text = String::from_utf8_lossy(&bytes);
            let shown: String = text.trim().chars().take(MAX_PRINTED_SHOWN).collect();
            format!("{failure}; instead of MCP it printed on stdout: {shown:?}")
        }
        _ => failure,
    };
    Err(with_stderr(inner, failure, stderr).await)
}

/// What of an upstream's stdout is kept until its handshake, to show when that fails.
const MAX_PRINTED_BYTES: usize = 2048;
/// How much of it an error shows.
const MAX_PRINTED_SHOWN: usize = 300;

/// The upstream's stdout, its first bytes kept (until the handshake succeeds and takes
/// the record) so that an upstream that prints something other than MCP can be shown
/// with what it printed (issue 14, break 11).
struct Recorded<R> {
    inner: R,
    printed: Arc<Mutex<Option<Vec<u8>>>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Recorded<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(record) = lock(&self.printed).as_mut() {
            let new = &buf.filled()[before..];
            let room = MAX_PRINTED_BYTES.saturating_sub(record.len());
            record.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

fn exit_description(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("it exited with code {code}"),
            (None, Some(signal)) => format!("it was killed by signal {signal}"),
            (None, None) => format!("it exited ({status})"),
        },
        Err(e) => format!("its exit could not be read: {e}"),
    }
}

/// `reason` with the upstream's last stderr lines, once they are read.
async fn with_stderr(inner: &Inner, reason: String, stderr: JoinHandle<()>) -> String {
    let _ = tokio::time::timeout(STDERR_DRAIN, stderr).await;
    let tail = lock(&inner.stderr_tail);
    if tail.is_empty() {
        reason
    } else {
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("{reason}; its last stderr lines:\n{}", lines.join("\n"))
    }
}

/// Passes the upstream's stderr on to ours (as log lines) and keeps its last lines.
async fn pass_stderr(inner: Weak<Inner>, stderr: Option<ChildStderr>) {
    let Some(stderr) = stderr else {
        return;
    };
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "upstream", "{line}");
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut tail = lock(&inner.stderr_tail);
        if tail.len() == STDERR_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Reads the upstream's tool list, registers its tools with the engine and tells the
/// downstream sessions when it changed.
async fn refresh_tools(inner: &Arc<Inner>, peer: &Peer<RoleClient>) -> Result<(), ServiceError> {
    let listed = peer.list_all_tools().await?;
    let tools: Vec<McpTool> = listed
        .into_iter()
        .map(|mut tool| {
            inner
                .engine
                .register_tool(tool.name.to_string(), ToolOptions::default());
            tool.input_schema = Arc::new(with_async_mode((*tool.input_schema).clone()));
            // A call can come back as a job: its answer must pass the schema too.
            tool.output_schema = tool
                .output_schema
                .map(|schema| Arc::new(or_job_answer(&schema)));
            tool
        })
        .collect();
    let changed = {
        let mut current = inner
            .tools
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = **current != tools;
        *current = Arc::new(tools);
        changed
    };
    if changed {
        // Sessions and subscriptions that can no longer be told are dropped.
        let sessions: Vec<Peer<RoleServer>> = std::mem::take(&mut *lock(&inner.downstream));
        for session in sessions {
            if session.notify_tool_list_changed().await.is_ok() {
                lock(&inner.downstream).push(session);
            }
        }
        let sinks: Vec<SubscriptionSink> = std::mem::take(&mut *lock(&inner.subscriptions));
        for sink in sinks {
            if sink.notify_tool_list_changed().await.is_ok() {
                lock(&inner.subscriptions).push(sink);
            }
        }
    }
    Ok(())
}

/// Keeps the upstream running: on exit, fails its calls with the reason and starts it
/// again with backoff, until shutdown.
async fn supervise(inner: Arc<Inner>, mut running: Running) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let exit = tokio::select! {
            status = running.child.wait() => exit_description(status),
            _ = inner.shutdown.cancelled() => {
                stop(running).await;
                return;
            }
        };
        let Running {
            service, stderr, ..
        } = running;
        let reason = with_stderr(&inner, exit, stderr).await;
        tracing::warn!("the upstream server `{}` stopped: {reason}", inner.command);
        inner.link.send_replace(Link {
            peer: None,
            down_reason: Some(reason),
        });
        drop(service);
        if started.elapsed() >= STABLE_RUN {
            backoff = FIRST_BACKOFF;
        }
        running = loop {
            tracing::info!(
                "restarting the upstream server in {} ms",
                backoff.as_millis()
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = inner.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let attempt = match connect(&inner).await {
                Ok(running) => match running.go_live(&inner).await {
                    Ok(_) => Ok(running),
                    Err(reason) => {
                        stop(running).await;
                        Err(reason)
                    }
                },
                Err(reason) => Err(reason),
            };
            match attempt {
                Ok(running) => {
                    tracing::info!("the upstream server `{}` is back", inner.command);
                    break running;
                }
                Err(reason) => {
                    tracing::warn!(
                        "the upstream server `{}` did not start: {reason}",
                        inner.command
                    );
                    inner.link.send_replace(Link {
                        peer: None,
                        down_reason: Some(reason),
                    });
                }
            }
        };
    }
}

/// Closes the session (the upstream's stdin), then kills the process if it does not
/// exit in time.
async fn stop(running: Running) {
    let Running {
        service, mut child, ..
    } = running;
    drop(service);
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ErrorCode;

    #[test]
    fn each_command_line_has_its_own_file_name() {
        let command = |program: &str, args: &[&str]| UpstreamCommand {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        };
        let slug = command("/usr/bin/npx", &["-y", "server-everything"]).slug();
        assert!(
            slug.starts_with("npx-") && slug.len() == "npx-".len() + 8,
            "{slug}"
        );
        assert_ne!(slug, command("/usr/bin/npx", &["-y", "other"]).slug());
        assert_ne!(
            command("a", &["b c"]).slug(),
            command("a", &["b", "c"]).slug()
        );
        assert!(command("../odd name!", &[])
            .slug()
            .starts_with("odd_name_-"));
    }

    #[test]
    fn an_upstream_rpc_error_keeps_its_code_message_and_data() {
        let data = serde_json::json!({ "field": "seconds" });
        let error = ErrorData::invalid_params("missing field `seconds`", Some(data.clone()));
        assert_eq!(
            rpc_error(error),
            RunError::Rpc {
                code: ErrorCode::INVALID_PARAMS.0,
                message: "missing field `seconds`".to_owned(),
                data: Some(data),
            }
        );
    }

    #[test]
    fn an_is_error_result_is_the_call_error_with_its_text() {
        let failed = CallToolResult::error(vec![rmcp::model::ContentBlock::text("no such file")]);
        match carried(failed.clone()).err() {
            Some(RunError::Tool { message, result }) => {
                assert_eq!(message, "no such file");
                // Whole, for the client: every block, the isError flag.
                assert_eq!(result, serde_json::to_value(&failed).ok());
            }
            other => panic!("{other:?}"),
        }
        let ok = CallToolResult::success(vec![rmcp::model::ContentBlock::text("fine")]);
        let carried = carried(ok).unwrap();
        assert_eq!(carried.0.content[0].as_text().unwrap().text, "fine");
        // A job keeps it as JSON, under the key the MCP face reads it back from.
        let value = carried.into_json();
        assert_eq!(value[UPSTREAM_RESULT]["content"][0]["text"], "fine");
    }

    #[tokio::test]
    async fn a_missing_command_fails_at_once_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(crate::EngineConfig::new(dir.path()))
            .await
            .unwrap();
        let command = UpstreamCommand {
            program: "/nonexistent/mcp-server".to_owned(),
            args: vec![],
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        };
        let err = Upstream::start(command, engine.clone())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("command not found"), "{err}");
        let command = UpstreamCommand {
            program: "sh".to_owned(),
            args: vec!["-c".into(), "echo 'bad config' >&2; exit 3".into()],
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        };
        let err = Upstream::start(command, engine)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("code 3") && err.contains("bad config"),
            "{err}"
        );
    }
}
