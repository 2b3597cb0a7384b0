//! The Streamable HTTP transport: rmcp's service at `/mcp`, behind the request guard
//! of [`crate::http`] (hosts, origins, the message sift, the session cap), until a
//! shutdown signal.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::SmartServer;
use crate::http::{HttpLimits, SessionCount};

impl SmartServer {
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
}

impl SessionCount for LocalSessionManager {
    async fn sessions(&self) -> usize {
        self.sessions.read().await.len()
    }
}
