//! The Streamable HTTP transport: rmcp's service at `/mcp`, behind the request guard
//! of [`crate::http`] (hosts, origins, authentication, sessions, limits, the message
//! sift), with the Protected Resource Metadata beside it when callers authenticate,
//! over plain TCP or TLS, until a shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::SmartServer;
use crate::auth::metadata::{self, METADATA_PATH};
use crate::http::{Guard, HttpAccess, HttpLimits, Sessions};

/// How long open connections (event streams) may take to end after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl SmartServer {
    /// Serves Streamable HTTP at `http://ADDR/mcp` (`https` with `access.tls`) until
    /// `shutdown` fires, to requests whose `Host` and `Origin` `limits` allow and, with
    /// `access.auth`, that carry a valid bearer token, within the limits.
    pub async fn serve_http(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
        limits: HttpLimits,
        access: HttpAccess,
    ) -> anyhow::Result<()> {
        let tls = match &access.tls {
            Some(files) => Some(crate::tls::server_config(files).await?),
            None => None,
        };
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(limits.allowed_hosts.clone())
            .with_max_request_body_bytes(limits.max_request_bytes)
            .with_cancellation_token(shutdown.child_token());
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(crate::http::IDLE_SESSION_TTL);
        let sessions = Arc::new(sessions);
        // 2026-07-28 requests are served statelessly, one factory call each: every call
        // must share this server's engine, so the factory clones it.
        let service: StreamableHttpService<SmartServer, LocalSessionManager> =
            StreamableHttpService::new(move || Ok(self.clone()), sessions.clone(), config);
        let guard = Arc::new(Guard::new(limits, access, sessions));
        let router = axum::Router::new()
            .nest_service("/mcp", service)
            .route(METADATA_PATH, axum::routing::get(resource_metadata))
            .route(
                &format!("{METADATA_PATH}/mcp"),
                axum::routing::get(resource_metadata),
            )
            .with_state(guard.clone())
            .layer(axum::middleware::from_fn_with_state(
                guard,
                crate::http::guard::<LocalSessionManager>,
            ));
        match tls {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
                    .await?
            }
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let stopping = handle.clone();
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    stopping.graceful_shutdown(Some(SHUTDOWN_GRACE));
                });
                axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                    .handle(handle)
                    .serve(router.into_make_service())
                    .await?
            }
        }
        Ok(())
    }
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: the metadata, when callers
/// authenticate (404 otherwise: there is nothing to authorize).
async fn resource_metadata(
    State(guard): State<Arc<Guard<LocalSessionManager>>>,
    headers: HeaderMap,
) -> Response {
    let access = guard.access();
    match &access.auth {
        Some(auth) => {
            let resource = access.resource(&headers);
            axum::Json(metadata::document(&resource, auth)).into_response()
        }
        None => (
            axum::http::StatusCode::NOT_FOUND,
            "this server does not authenticate its callers: it has no protected resource metadata",
        )
            .into_response(),
    }
}

impl Sessions for LocalSessionManager {
    async fn count(&self) -> usize {
        self.sessions.read().await.len()
    }

    async fn ids(&self) -> Vec<String> {
        let sessions = self.sessions.read().await;
        sessions.keys().map(|id| id.to_string()).collect()
    }
}
