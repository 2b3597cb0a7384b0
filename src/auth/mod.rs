//! Who is calling over HTTP: the server as an OAuth 2.1 resource server, as the MCP
//! authorization specification has it.
//!
//! A request carries `Authorization: Bearer TOKEN`: a static token of the config
//! ([`tokens`]) or an access token (a JWT) of an external authorization server
//! ([`jwt`]). Without a valid one it gets `401` with a `WWW-Authenticate` header that
//! names the Protected Resource Metadata (RFC 9728, [`metadata`]), from which a client
//! finds the authorization server; with too little scope, `403 insufficient_scope`.
//! stdio is one local user and is never asked.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::principal::{Caller, Principal};

pub mod jwt;
pub mod metadata;
pub mod tokens;

use jwt::{JwtConfig, JwtConfigError, JwtRefusal, JwtVerifier};
use tokens::{StaticTokens, TokenEntry, TokenEntryError};

/// The config file's `[auth]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens (`[[auth.tokens]]`).
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// Principals that see and may cancel every principal's jobs.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Access tokens of an OAuth 2.1 authorization server (`[auth.jwt]`).
    pub jwt: Option<JwtConfig>,
}

impl AuthConfig {
    /// Whether any way to authenticate is configured.
    pub fn is_configured(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }
}

/// An `[auth]` table that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// A static token entry is not valid.
    #[error(transparent)]
    Token(#[from] TokenEntryError),
    /// The JWT table is not valid.
    #[error(transparent)]
    Jwt(#[from] JwtConfigError),
    /// `admins` is given with no way to authenticate.
    #[error(
        "[auth] admins is given, but no [[auth.tokens]] or [auth.jwt] says who anyone is: add one"
    )]
    AdminsWithoutAuth,
}

/// Checks each HTTP request's bearer token.
pub struct Authenticator {
    tokens: StaticTokens,
    jwt: Option<JwtVerifier>,
    admins: Vec<String>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// It carried no bearer token.
    Missing,
    /// Its token is not valid here, and why.
    Invalid(String),
    /// Its token lacks these required scopes.
    InsufficientScope(Vec<String>),
    /// The authorization server's keys could not be fetched.
    KeysUnavailable(String),
}

impl Authenticator {
    /// The authenticator of `config`, `None` when it configures no way to
    /// authenticate; relative paths are relative to `base_dir`.
    pub fn new(
        config: &AuthConfig,
        base_dir: &std::path::Path,
    ) -> Result<Option<Authenticator>, AuthConfigError> {
        if !config.is_configured() {
            if !config.admins.is_empty() {
                return Err(AuthConfigError::AdminsWithoutAuth);
            }
            return Ok(None);
        }
        let tokens = StaticTokens::new(&config.tokens)?;
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::new(jwt.clone(), base_dir)?),
            None => None,
        };
        Ok(Some(Authenticator {
            tokens,
            jwt,
            admins: config.admins.clone(),
        }))
    }

    /// The caller a request is made for, from its bearer token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
        let token = bearer_token(headers)?;
        let principal = match self.tokens.principal_of(token) {
            Some(principal) => principal.to_owned(),
            None => match &self.jwt {
                Some(jwt) => {
                    jwt.expire_old_keys();
                    match jwt.verify(token).await {
                        Ok(verified) => verified.principal,
                        Err(JwtRefusal::Invalid(why)) => {
                            return Err(AuthFailure::Invalid(format!("the access token is refused: {why}")))
                        }
                        Err(JwtRefusal::Scope(scopes)) => {
                            return Err(AuthFailure::InsufficientScope(scopes))
                        }
                        Err(JwtRefusal::KeysUnavailable(why)) => {
                            return Err(AuthFailure::KeysUnavailable(why))
                        }
                    }
                }
                None if self.tokens.is_empty() => {
                    return Err(AuthFailure::Invalid("no token is accepted".to_owned()))
                }
                None => {
                    return Err(AuthFailure::Invalid(
                        "the token is not one of this server's: ask its operator for one (smart-async token new NAME)".to_owned(),
                    ))
                }
            },
        };
        let admin = self.admins.contains(&principal);
        Ok(Caller {
            principal: Principal::named(principal),
            admin,
        })
    }

    /// The JWT table, when access tokens are accepted.
    pub fn jwt(&self) -> Option<&JwtConfig> {
        self.jwt.as_ref().map(JwtVerifier::config)
    }

    /// The scopes every token must carry.
    pub fn required_scopes(&self) -> &[String] {
        self.jwt().map_or(&[], |jwt| jwt.scopes.as_slice())
    }
}

/// The token of an `Authorization: Bearer TOKEN` header. A token anywhere else (a
/// query string) is not looked at, as OAuth 2.1 asks.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(AuthFailure::Missing);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthFailure::Invalid("the Authorization header is not text".to_owned()))?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Invalid(
            "the Authorization header must be `Bearer TOKEN`".to_owned(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthFailure::Missing);
    }
    Ok(token)
}

impl AuthFailure {
    /// The HTTP answer: 401 (403 for scope, 503 when keys are unreachable) with a
    /// `WWW-Authenticate` challenge naming the metadata at `metadata_url`.
    pub fn response(&self, metadata_url: &str, required_scopes: &[String]) -> Response {
        let metadata = format!("resource_metadata=\"{}\"", quotable(metadata_url));
        let scope = if required_scopes.is_empty() {
            String::new()
        } else {
            format!(", scope=\"{}\"", quotable(&required_scopes.join(" ")))
        };
        let (status, challenge, message) = match self {
            AuthFailure::Missing => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer {metadata}{scope}"),
                format!("this server needs a bearer token: send `Authorization: Bearer TOKEN`; {metadata_url} says where to get one"),
            ),
            AuthFailure::Invalid(why) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\", {metadata}{scope}",
                    quotable(why)
                ),
                why.clone(),
            ),
            AuthFailure::InsufficientScope(scopes) => (
                StatusCode::FORBIDDEN,
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\", {metadata}",
                    quotable(&scopes.join(" "))
                ),
                format!(
                    "the access token lacks a required scope: it must carry {}",
                    scopes.join(" ")
                ),
            ),
            AuthFailure::KeysUnavailable(why) => {
                let message = format!("the authorization server's keys cannot be fetched, so no access token can be checked now; retry later ({why})");
                return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            }
        };
        let mut response = (status, message).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Text fit for a quoted-string of a header: printable ASCII without `"` or `\`.
fn quotable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn a_static_token_names_its_principal_and_admins_are_marked() {
        let (alice, alice_sha) = tokens::new_token();
        let (ops, ops_sha) = tokens::new_token();
        let config = AuthConfig {
            tokens: vec![
                TokenEntry {
                    principal: "alice".into(),
                    sha256: alice_sha,
                },
                TokenEntry {
                    principal: "ops".into(),
                    sha256: ops_sha,
                },
            ],
            admins: vec!["ops".into()],
            jwt: None,
        };
        let auth = Authenticator::new(&config, std::path::Path::new("."))
            .unwrap()
            .unwrap();
        let caller = auth
            .authenticate(&with_token(&format!("Bearer {alice}")))
            .await
            .unwrap();
        assert_eq!(caller.principal, Principal::named("alice"));
        assert!(!caller.admin);
        let caller = auth
            .authenticate(&with_token(&format!("bearer  {ops} ")))
            .await
            .unwrap();
        assert!(caller.admin);
        assert_eq!(
            auth.authenticate(&HeaderMap::new()).await,
            Err(AuthFailure::Missing)
        );
        assert!(matches!(
            auth.authenticate(&with_token("Bearer nope")).await,
            Err(AuthFailure::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate(&with_token(&format!("Basic {alice}")))
                .await,
            Err(AuthFailure::Invalid(_))
        ));
    }

    #[test]
    fn each_failure_has_its_status_and_challenge() {
        let url = "http://localhost:8080/.well-known/oauth-protected-resource/mcp";
        let challenge = |failure: AuthFailure| {
            let response = failure.response(url, &["mcp".to_owned()]);
            let header = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status(), header)
        };
        let (status, header) = challenge(AuthFailure::Missing);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            header.unwrap(),
            format!("Bearer resource_metadata=\"{url}\", scope=\"mcp\"")
        );
        let (status, header) = challenge(AuthFailure::Invalid("it has \"expired\"\n".into()));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let header = header.unwrap();
        assert!(
            header.starts_with(
                "Bearer error=\"invalid_token\", error_description=\"it has 'expired'?\""
            ),
            "{header}"
        );
        let (status, header) = challenge(AuthFailure::InsufficientScope(vec!["mcp".into()]));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(header
            .unwrap()
            .contains("error=\"insufficient_scope\", scope=\"mcp\""));
        let (status, header) = challenge(AuthFailure::KeysUnavailable("down".into()));
        assert_eq!((status, header), (StatusCode::SERVICE_UNAVAILABLE, None));
    }

    #[test]
    fn admins_without_a_way_to_authenticate_are_refused() {
        let config = AuthConfig {
            admins: vec!["ops".into()],
            ..AuthConfig::default()
        };
        let error = Authenticator::new(&config, std::path::Path::new("."))
            .err()
            .unwrap();
        assert!(error.to_string().contains("no [[auth.tokens]]"), "{error}");
    }
}
