//! OAuth 2.0 Protected Resource Metadata (RFC 9728): the document that tells a client
//! which authorization servers issue tokens for this server, and which scopes it
//! knows. A client that gets a 401 reads its URL from the `WWW-Authenticate` header.
//!
//! The resource is this server's canonical URL: the JWT audience when access tokens
//! are accepted, else `[http] public_url`, else the URL the request was sent to.

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

use super::Authenticator;

/// Where the metadata is served (and, with the MCP endpoint's path after it, for
/// that resource).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The canonical URL of the MCP endpoint: `configured`, else the scheme and `Host`
/// of the request with `/mcp`.
pub fn resource_url(configured: Option<&str>, headers: &HeaderMap, tls: bool) -> String {
    if let Some(resource) = configured {
        return resource.to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}/mcp")
}

/// Where the metadata of `resource` is: the well-known path between its host and
/// its path (RFC 9728 §3.1).
pub fn metadata_url(resource: &str) -> String {
    let after_scheme = resource.find("://").map_or(0, |at| at + 3);
    let (origin, path) = match resource[after_scheme..].find('/') {
        Some(at) => resource.split_at(after_scheme + at),
        None => (resource, ""),
    };
    let path = path.trim_end_matches('/');
    format!("{origin}{METADATA_PATH}{path}")
}

/// The metadata document of `resource`.
pub fn document(resource: &str, auth: &Authenticator) -> Value {
    let mut document = json!({
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": "smart-async",
    });
    if let Some(jwt) = auth.jwt() {
        let servers = if jwt.authorization_servers.is_empty() {
            vec![jwt.issuer.clone()]
        } else {
            jwt.authorization_servers.clone()
        };
        document["authorization_servers"] = json!(servers);
        document["scopes_supported"] = json!(jwt.scopes);
    } else {
        // Static tokens only: no authorization server issues them.
        document["authorization_servers"] = json!([]);
        document["scopes_supported"] = json!([]);
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_url_puts_the_well_known_path_before_the_resource_path() {
        assert_eq!(
            metadata_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080/team/mcp/"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/team/mcp"
        );
        assert_eq!(
            metadata_url("https://mcp.example.com"),
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn the_resource_is_the_configured_url_or_the_requests() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "localhost:9000".parse().unwrap());
        assert_eq!(
            resource_url(None, &headers, false),
            "http://localhost:9000/mcp"
        );
        assert_eq!(
            resource_url(None, &headers, true),
            "https://localhost:9000/mcp"
        );
        assert_eq!(
            resource_url(Some("https://x.example/mcp"), &headers, false),
            "https://x.example/mcp"
        );
    }
}
