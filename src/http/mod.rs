//! What only the HTTP face has: which `Host` and `Origin` a request may come with, who
//! is calling ([`crate::auth`]), and how much the server takes at once.
//!
//! rmcp checks the `Host` header against a list (DNS rebinding), but served a request
//! from `Origin: http://evil.example`, and each `initialize` over HTTP opened a session
//! that stayed until it had been idle 5 minutes (3,000 idle sessions took the server
//! from 13 to 191 MB). This layer, in front of the MCP service, refuses a missing or
//! foreign `Host` and a browser `Origin` that was not allowed with 403, and a new session
//! past the cap with 503, each with a message that says what to do. A POST body is
//! sifted as a stdio line is ([`crate::jsonrpc`]): what is not a request MCP accepts
//! gets 400 with a JSON-RPC error, params that do not fit their method get that error
//! as the request's answer.
//!
//! In order, a request to `/mcp` is checked for its `Host` and `Origin`, its bearer
//! token (when authentication is configured; the caller it names rides in the
//! request's extensions to the handlers), the session it names (a session is its
//! opener's: another principal's request with its id is answered as for an unknown
//! session), the requests in flight and the session cap, then its body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::auth::metadata::{metadata_url, resource_url, METADATA_PATH};
use crate::auth::Authenticator;
use crate::jsonrpc::MAX_MESSAGE_BYTES;
use crate::lock::lock;
use crate::principal::{Caller, Principal};
use crate::tls::TlsFiles;

mod body;

/// Sessions held at most (each costs about 60 KB while it lives).
pub const DEFAULT_MAX_SESSIONS: usize = 1000;
/// Requests served at once at most, by default; each open event stream is one.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;
/// The largest request body taken by default: what stdio takes as one line.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = MAX_MESSAGE_BYTES;
/// The header of a session's id.
const SESSION_ID: &str = "mcp-session-id";
/// A session idle this long is closed.
pub const IDLE_SESSION_TTL: Duration = Duration::from_secs(300);

/// Who may reach the HTTP face.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Host names the `Host` header may carry (with any port).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed, exactly as a browser sends them (`http://localhost:5173`);
    /// requests without an `Origin` (every non-browser client) always pass.
    pub allowed_origins: Vec<String>,
    /// Sessions held at most.
    pub max_sessions: usize,
    /// The largest request body taken, in bytes.
    pub max_request_bytes: usize,
    /// Requests served at once at most (an event stream counts until it ends).
    pub max_concurrent_requests: usize,
}

impl HttpLimits {
    /// Loopback names and `bound_ip`, no browser origin, at most 1000 sessions.
    pub fn loopback(bound_ip: std::net::IpAddr) -> HttpLimits {
        let mut allowed_hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let bound = bound_ip.to_string();
        if !allowed_hosts.contains(&bound) {
            allowed_hosts.push(bound);
        }
        HttpLimits {
            allowed_hosts,
            allowed_origins: Vec::new(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
        }
    }

    /// 403 for a missing or foreign `Host`, or an `Origin` that was not allowed.
    fn forbidden(&self, headers: &HeaderMap) -> Option<Response> {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(host_name)
            .unwrap_or_default();
        if host.is_empty()
            || !self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
        {
            let message = format!(
                "Forbidden: the Host header must name this server ({}); a request for another host is refused (DNS rebinding): start the server with --allowed-host NAME for each name it is reached by",
                self.allowed_hosts.join(", ")
            );
            return Some((StatusCode::FORBIDDEN, message).into_response());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("(not text)");
            if !self.allowed_origins.iter().any(|allowed| allowed == origin)
                && !self.is_own_host(origin)
            {
                let shown: String = origin.chars().take(100).collect();
                let message = format!(
                    "Forbidden: requests from web pages at origin {shown} are not allowed; start the server with --allowed-origin {shown} to allow that page"
                );
                return Some((StatusCode::FORBIDDEN, message).into_response());
            }
        }
        None
    }

    /// 503 for a request that would open a session past the cap.
    fn past_session_cap(
        &self,
        method: &Method,
        headers: &HeaderMap,
        sessions: usize,
    ) -> Option<Response> {
        let opens_session = method == Method::POST
            && !headers.contains_key(SESSION_ID)
            && !headers.contains_key("mcp-protocol-version");
        if opens_session && sessions >= self.max_sessions {
            let message = format!(
                "the server holds its maximum of {} sessions: end one (DELETE /mcp with its Mcp-Session-Id) or retry once idle ones have expired (after {} s)",
                self.max_sessions,
                IDLE_SESSION_TTL.as_secs()
            );
            return Some((StatusCode::SERVICE_UNAVAILABLE, message).into_response());
        }
        None
    }
}

impl HttpLimits {
    /// Whether a browser origin is a page on a host this server answers to (on any
    /// port): a local page talking to a local server. A rebinding page's origin names
    /// the attacker's domain.
    fn is_own_host(&self, origin: &str) -> bool {
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        let host = host_name(authority);
        !host.is_empty()
            && self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
    }
}

/// The host part of a `Host` header value (`[::1]:8080` → `::1`).
fn host_name(value: &str) -> &str {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    value.split(':').next().unwrap_or("")
}

/// The sessions the server holds now.
pub trait Sessions: Send + Sync + 'static {
    /// How many.
    fn count(&self) -> impl std::future::Future<Output = usize> + Send;
    /// Their ids.
    fn ids(&self) -> impl std::future::Future<Output = Vec<String>> + Send;
}

/// Who may call the HTTP face, and how it is reached.
#[derive(Clone, Default)]
pub struct HttpAccess {
    /// Checks each request's bearer token; `None`: every caller is the local user.
    pub auth: Option<Arc<Authenticator>>,
    /// The canonical URL of the MCP endpoint, when the request's own `Host` is not it
    /// (behind a reverse proxy); the JWT audience wins over it.
    pub public_url: Option<String>,
    /// The server's own TLS certificate and key, when it speaks TLS itself (its URLs
    /// are then `https`).
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for HttpAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAccess")
            .field("auth", &self.auth.is_some())
            .field("public_url", &self.public_url)
            .field("tls", &self.tls)
            .finish()
    }
}

impl HttpAccess {
    /// The canonical URL of the MCP endpoint, for a request with these headers.
    pub fn resource(&self, headers: &HeaderMap) -> String {
        let configured = (self.auth.as_ref())
            .and_then(|auth| auth.jwt())
            .map(|jwt| jwt.audience.as_str())
            .or(self.public_url.as_deref());
        resource_url(configured, headers, self.tls.is_some())
    }
}

/// What the request guard holds.
pub struct Guard<S> {
    limits: HttpLimits,
    access: HttpAccess,
    sessions: Arc<S>,
    in_flight: Arc<Semaphore>,
    /// The principal that opened each session, when callers are authenticated.
    session_owners: Mutex<HashMap<String, Principal>>,
}

impl<S: Sessions> Guard<S> {
    /// A guard of `sessions` with these limits and access.
    pub fn new(limits: HttpLimits, access: HttpAccess, sessions: Arc<S>) -> Guard<S> {
        let in_flight = Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1)));
        Guard {
            limits,
            access,
            sessions,
            in_flight,
            session_owners: Mutex::default(),
        }
    }

    /// The access it checks.
    pub fn access(&self) -> &HttpAccess {
        &self.access
    }

    /// Whether `caller` may use the session `id`: sessions opened by another principal
    /// are not its own.
    fn may_use_session(&self, id: &str, caller: &Caller) -> bool {
        lock(&self.session_owners)
            .get(id)
            .is_none_or(|owner| *owner == caller.principal)
    }

    /// Notes who opened session `id`; entries of sessions that have ended are dropped
    /// once there are more entries than sessions may be held.
    async fn opened_session(&self, id: &str, caller: &Caller) {
        let stale: Vec<String> = {
            let mut owners = lock(&self.session_owners);
            owners.insert(id.to_owned(), caller.principal.clone());
            if owners.len() <= self.limits.max_sessions {
                return;
            }
            owners.keys().cloned().collect()
        };
        let held = self.sessions.ids().await;
        let ended: Vec<String> = stale.into_iter().filter(|id| !held.contains(id)).collect();
        let mut owners = lock(&self.session_owners);
        for id in ended {
            owners.remove(&id);
        }
    }
}

/// The middleware: the checks of the module's doc, in order, before the MCP service
/// sees the request.
pub async fn guard<S: Sessions>(
    State(guard): State<Arc<Guard<S>>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(refused) = guard.limits.forbidden(request.headers()) {
        return refused;
    }
    if request.uri().path().starts_with(METADATA_PATH) {
        return next.run(request).await;
    }
    let caller = match &guard.access.auth {
        None => Caller::local(),
        Some(auth) => match auth.authenticate(request.headers()).await {
            Ok(caller) => caller,
            Err(failure) => {
                let resource = guard.access.resource(request.headers());
                return failure.response(&metadata_url(&resource), auth.required_scopes());
            }
        },
    };
    let session = (request.headers().get(SESSION_ID))
        .and_then(|id| id.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session {
        if !guard.may_use_session(id, &caller) {
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
    }
    let Ok(permit) = guard.in_flight.clone().try_acquire_owned() else {
        let message = format!(
            "the server is serving its maximum of {} requests at once: retry in a moment",
            guard.limits.max_concurrent_requests
        );
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let held = guard.sessions.count().await;
    if let Some(refused) =
        (guard.limits).past_session_cap(request.method(), request.headers(), held)
    {
        return refused;
    }
    request.extensions_mut().insert(caller.clone());
    let response = body::serve(request, next, guard.limits.max_request_bytes).await;
    if session.is_none() && guard.access.auth.is_some() {
        let opened = (response.headers().get(SESSION_ID))
            .and_then(|id| id.to_str().ok())
            .map(str::to_owned);
        if let Some(id) = opened {
            guard.opened_session(&id, &caller).await;
        }
    }
    // The request counts until its answer has been sent, event streams included.
    let (parts, answer) = response.into_parts();
    let stream = futures_util::StreamExt::map(answer.into_data_stream(), move |chunk| {
        let _in_flight = &permit;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}
#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn status(
        limits: &HttpLimits,
        pairs: &[(&'static str, &str)],
        sessions: usize,
    ) -> Option<StatusCode> {
        let headers = headers(pairs);
        (limits.forbidden(&headers))
            .or_else(|| limits.past_session_cap(&Method::POST, &headers, sessions))
            .map(|response| response.status())
    }

    #[test]
    fn break_10_a_foreign_origin_and_a_missing_or_empty_host_are_forbidden() {
        let limits = HttpLimits::loopback([127, 0, 0, 1].into());
        assert_eq!(status(&limits, &[("host", "127.0.0.1:8080")], 0), None);
        assert_eq!(status(&limits, &[("host", "[::1]:8080")], 0), None);
        assert_eq!(status(&limits, &[("host", "LOCALHOST")], 0), None);
        let forbidden = Some(StatusCode::FORBIDDEN);
        assert_eq!(status(&limits, &[], 0), forbidden);
        assert_eq!(status(&limits, &[("host", "")], 0), forbidden);
        assert_eq!(status(&limits, &[("host", "evil.example")], 0), forbidden);
        assert_eq!(
            status(
                &limits,
                &[
                    ("host", "localhost:8080"),
                    ("origin", "http://evil.example")
                ],
                0
            ),
            forbidden
        );
        // A page on the server's own host, on any port, is a local page.
        for origin in [
            "http://127.0.0.1:8080",
            "http://localhost:5173",
            "https://[::1]",
        ] {
            assert_eq!(
                status(
                    &limits,
                    &[("host", "localhost:8080"), ("origin", origin)],
                    0
                ),
                None,
                "{origin}"
            );
        }
        for origin in [
            "http://localhost.evil.example",
            "null",
            "file://localhost",
            "http://127.0.0.1.nip.io",
        ] {
            assert_eq!(
                status(
                    &limits,
                    &[("host", "localhost:8080"), ("origin", origin)],
                    0
                ),
                forbidden,
                "{origin}"
            );
        }
        let mut allowing = limits.clone();
        allowing
            .allowed_origins
            .push("http://localhost:5173".to_owned());
        assert_eq!(
            status(
                &allowing,
                &[("host", "localhost"), ("origin", "http://localhost:5173")],
                0
            ),
            None
        );
    }

    #[test]
    fn break_10_a_new_session_past_the_cap_is_refused_and_others_pass() {
        let mut limits = HttpLimits::loopback([127, 0, 0, 1].into());
        limits.max_sessions = 2;
        let host = ("host", "localhost");
        assert_eq!(status(&limits, &[host], 1), None);
        assert_eq!(
            status(&limits, &[host], 2),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        // A request of a session that exists, and a stateless 2026-07-28 one, pass.
        assert_eq!(status(&limits, &[host, ("mcp-session-id", "abc")], 2), None);
        assert_eq!(
            status(&limits, &[host, ("mcp-protocol-version", "2026-07-28")], 2),
            None
        );
    }
}
