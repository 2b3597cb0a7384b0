//! A request's body, sifted as a stdio line is ([`crate::jsonrpc`]): rmcp answers a
//! body it cannot decode with a bare 415, and a known method with params that do not
//! fit with -32601. What is not a request MCP accepts gets 400 with a JSON-RPC error;
//! params that do not fit their method get that error as the request's answer.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::jsonrpc::{self, Refusal, Sifted, INVALID_PARAMS, INVALID_REQUEST};

/// Serves the request with its body sifted, taking at most `max_bytes` of it.
pub(super) async fn serve(request: Request, next: Next, max_bytes: usize) -> Response {
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
    let (parts, body) = request.into_parts();
    let bytes = match read(body, max_bytes).await {
        Ok(Body::Whole(bytes)) => bytes,
        Ok(Body::Oversized(start)) => {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                &jsonrpc::oversized(&start, max_bytes),
            )
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
    /// Past the limit: its start only.
    Oversized(Vec<u8>),
}

/// How much of an oversized body is read (and dropped) before it is answered, as a
/// multiple of the limit: a client still sending when the answer comes sees a reset,
/// not the answer.
const DRAINED_LIMITS: usize = 4;

/// Reads a body, keeping at most `max_bytes` of it.
async fn read(body: axum::body::Body, max_bytes: usize) -> Result<Body, axum::Error> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        let room = max_bytes.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if seen > max_bytes.saturating_mul(DRAINED_LIMITS) {
            break;
        }
    }
    Ok(if seen > max_bytes {
        Body::Oversized(kept)
    } else {
        Body::Whole(kept.into())
    })
}

/// A JSON-RPC error as the whole HTTP answer.
fn refused(status: StatusCode, refusal: &Refusal) -> Response {
    (status, axum::Json(refusal.to_json())).into_response()
}
