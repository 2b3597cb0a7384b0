//! The upstream process's life: spawned, its MCP handshake spoken, its stderr kept for
//! error messages, its tool list followed, and restarted with a backoff when it exits,
//! while calls see the link go down and come back up.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, ProgressNotificationParam,
    ResourceUpdatedNotificationParam, ServerPeerInfo, Tool as McpTool,
};
use rmcp::service::{NotificationContext, Peer, RunningService, ServiceError, SubscriptionSink};
use rmcp::{ClientHandler, RoleClient, RoleServer, ServiceExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::UpstreamCommand;
use super::relay;
use crate::engine::{Engine, ToolOptions};
use crate::job_answer::or_job_answer;
use crate::lock::lock;
use crate::tools::with_async_mode;
// Logging is deprecated in MCP, and still sent by the servers the proxy fronts.
#[allow(deprecated)]
use rmcp::model::LoggingMessageNotificationParam;

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

/// The link to the running upstream, as calls see it.
#[derive(Clone, Default)]
pub(super) struct Link {
    pub(super) peer: Option<Peer<RoleClient>>,
    /// Why it is down, while it is.
    pub(super) down_reason: Option<String>,
}

/// What the upstream's calls and its supervisor share.
pub(super) struct Inner {
    pub(super) command: UpstreamCommand,
    pub(super) engine: Engine,
    pub(super) link: watch::Sender<Link>,
    /// The upstream's tools as downstream sees them (with `async_mode`).
    pub(super) tools: RwLock<Arc<Vec<McpTool>>>,
    pub(super) info: RwLock<Option<ServerPeerInfo>>,
    pub(super) progress: ProgressDispatcher,
    pub(super) stderr_tail: Mutex<VecDeque<String>>,
    /// Downstream sessions (`initialize`) to tell when the tool list changes.
    pub(super) downstream: Mutex<Vec<Peer<RoleServer>>>,
    /// Downstream `subscriptions/listen` streams (2026-07-28) to tell the same.
    pub(super) subscriptions: Mutex<Vec<SubscriptionSink>>,
    /// Downstream sessions' resource subscriptions.
    pub(super) relay: relay::Relay,
    pub(super) shutdown: CancellationToken,
}

impl Inner {
    pub(super) fn new(command: UpstreamCommand, engine: Engine) -> Inner {
        Inner {
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
        }
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
pub(super) struct Running {
    service: RunningService<RoleClient, UpstreamClient>,
    child: Child,
    stderr: JoinHandle<()>,
}

impl Running {
    /// Reads the tool list and opens the link for calls.
    pub(super) async fn go_live(&self, inner: &Arc<Inner>) -> Result<(), String> {
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
pub(super) async fn connect(inner: &Arc<Inner>) -> Result<Running, String> {
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
pub(super) async fn supervise(inner: Arc<Inner>, mut running: Running) {
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
