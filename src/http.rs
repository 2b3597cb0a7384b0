//! What only the HTTP face has: which `Host` and `Origin` a request may come with, and
//! how many sessions the server holds.
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

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::jsonrpc::{self, Refusal, Sifted, INVALID_PARAMS, INVALID_REQUEST, MAX_MESSAGE_BYTES};

/// Sessions held at most (each costs about 60 KB while it lives).
pub const DEFAULT_MAX_SESSIONS: usize = 1000;
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
        }
    }

    /// Why a request with these headers may not be served, if it may not.
    pub fn refusal(
        &self,
        method: &Method,
        headers: &HeaderMap,
        sessions: usize,
    ) -> Option<Response> {
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
                "Forbidden: the Host header must name this server ({}); a request for another host is refused (DNS rebinding)",
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
                    "Forbidden: requests from web pages at origin {shown} are not allowed; start the server with --allow-origin {shown} to allow that page"
                );
                return Some((StatusCode::FORBIDDEN, message).into_response());
            }
        }
        let opens_session = method == Method::POST
            && !headers.contains_key("mcp-session-id")
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

/// How many sessions the server holds now.
pub trait SessionCount: Send + Sync + 'static {
    /// The count.
    fn sessions(&self) -> impl std::future::Future<Output = usize> + Send;
}

/// The middleware: [`HttpLimits::refusal`] before the MCP service sees the request.
pub async fn guard<S: SessionCount>(
    State((limits, sessions)): State<(Arc<HttpLimits>, Arc<S>)>,
    request: Request,
    next: Next,
) -> Response {
    let held = sessions.sessions().await;
    if let Some(refused) = limits.refusal(request.method(), request.headers(), held) {
        return refused;
    }
    if request.method() == Method::DELETE {
        // rmcp ends a session with 202 Accepted; clients expect it done (the Python SDK
        // warns on anything but 200 or 204).
        let mut response = next.run(request).await;
        if response.status() == StatusCode::ACCEPTED {
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.body_mut() = axum::body::Body::empty();
        }
        return response;
    }
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    // The body is sifted as a stdio line is (rmcp answers a body it cannot decode with
    // a bare 415, and a known method with params that do not fit with -32601).
    let (parts, body) = request.into_parts();
    let bytes = match read_body(body).await {
        Ok(Body::Whole(bytes)) => bytes,
        Ok(Body::Oversized(start)) => {
            return refused(StatusCode::PAYLOAD_TOO_LARGE, &jsonrpc::oversized(&start))
        }
        Err(e) => {
            let message = format!("could not read the request body: {e}");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    match jsonrpc::sift(&bytes) {
        Sifted::Message(_) => next.run(Request::from_parts(parts, bytes.into())).await,
        // A request that was understood gets its error as its answer.
        Sifted::Refused(refusal) if refusal.code == INVALID_PARAMS && !refusal.id.is_null() => {
            refused(StatusCode::OK, &refusal)
        }
        Sifted::Refused(refusal) => refused(StatusCode::BAD_REQUEST, &refusal),
        Sifted::Ignored(why) => refused(
            StatusCode::BAD_REQUEST,
            &Refusal {
                id: serde_json::Value::Null,
                code: INVALID_REQUEST,
                message: format!("invalid request: {why}"),
            },
        ),
    }
}

/// A request body as read.
enum Body {
    Whole(axum::body::Bytes),
    /// Past [`MAX_MESSAGE_BYTES`]: its start only.
    Oversized(Vec<u8>),
}

/// How much of an oversized body is read (and dropped) before it is answered: a
/// client still sending when the answer comes sees a reset, not the answer.
const DRAINED_BYTES: usize = 4 * MAX_MESSAGE_BYTES;

/// Reads a body, keeping at most [`MAX_MESSAGE_BYTES`] of it.
async fn read_body(body: axum::body::Body) -> Result<Body, axum::Error> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        let room = MAX_MESSAGE_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if seen > DRAINED_BYTES {
            break;
        }
    }
    Ok(if seen > MAX_MESSAGE_BYTES {
        Body::Oversized(kept)
    } else {
        Body::Whole(kept.into())
    })
}

/// A JSON-RPC error as the whole HTTP answer.
fn refused(status: StatusCode, refusal: &Refusal) -> Response {
    (status, axum::Json(refusal.to_json())).into_response()
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
        limits
            .refusal(&Method::POST, &headers(pairs), sessions)
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
