//! The proxy's upstream: an existing MCP server run as a child process over stdio and
//! spoken to with rmcp's client, so its tools can be offered through the engine.
//!
//! The upstream is supervised: its tool list is followed (`tools/list_changed`), its
//! stderr is passed on and its last lines kept, and when it exits the calls it was
//! running fail with the reason and it is started again with backoff. A call's
//! progress notifications from upstream become the call's progress; cancelling the
//! call sends `notifications/cancelled` upstream. Its log messages and resource
//! updates are relayed to the downstream sessions (module `relay`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientRequest, JsonObject,
    ServerPeerInfo, ServerResult, SubscribeRequestParams, Tool as McpTool,
    UnsubscribeRequestParams,
};
use rmcp::service::{Peer, PeerRequestOptions, ServiceError, SubscriptionSink};
use rmcp::{ErrorData, RoleClient, RoleServer};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::engine::{BoxedWork, Engine};
use crate::features::ASYNC_MODE_ARG;
use crate::jobs::JobContext;
use crate::lock::lock;
use crate::run_error::RunError;
use answer::upstream_progress;
use supervisor::{connect, supervise, Inner};

mod answer;
mod command;
mod relay;
mod supervisor;

pub(crate) use answer::{carried, rpc_error};
pub use answer::{upstream_error, MarkComplete, Proxied};
pub use command::{UpstreamCommand, DEFAULT_STARTUP_TIMEOUT};

/// How long a call waits for an upstream that is being restarted.
const RESTART_WAIT: Duration = Duration::from_secs(5);
/// The upstream could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the upstream MCP server `{command}`: {reason}")]
pub struct UpstreamStartError {
    /// The command line.
    pub command: String,
    /// Why, with its last stderr lines.
    pub reason: String,
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
        let inner = Arc::new(Inner::new(command, engine));
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

#[cfg(test)]
mod tests {
    use super::*;

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
