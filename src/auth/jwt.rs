//! OAuth 2.1 access tokens as JWTs from an external authorization server: the
//! signature checked against the issuer's published keys (JWKS), then the issuer, the
//! audience, expiry and not-before, and the scopes.
//!
//! The audience must be this server's own canonical URL (RFC 8707, as the MCP
//! authorization specification requires): a token the same issuer made for another
//! service is refused, so a service that receives tokens cannot replay them here.
//! Only asymmetric algorithms are accepted (no `none`, and no HS* whose "key" would be
//! the issuer's public key). Keys from a URL are cached and fetched again when a token
//! names a key id the cache does not hold (the issuer rotated its keys), at most
//! every [`REFETCH_GAP`], and after [`KEYS_MAX_AGE`] in any case.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::lock::{read, write};

/// The `[auth.jwt]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The authorization server's issuer identifier, exactly as its tokens' `iss`.
    pub issuer: String,
    /// Where its keys are: an `https://` (or `http://`) URL of its JWKS, or a file.
    pub jwks: String,
    /// This server's canonical URL (`https://mcp.example.com/mcp`): tokens must be
    /// issued for it (`aud`).
    pub audience: String,
    /// Scopes every token must carry (in `scope` or `scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The claim that names the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// The authorization servers the metadata names [default: the issuer].
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
}

fn default_principal_claim() -> String {
    "sub".to_owned()
}

fn default_leeway_s() -> u64 {
    DEFAULT_LEEWAY_S
}

/// Seconds of clock skew allowed by default.
pub const DEFAULT_LEEWAY_S: u64 = 30;
/// Keys from a URL are fetched again at most this often for unknown key ids.
pub const REFETCH_GAP: Duration = Duration::from_secs(2);
/// Keys from a URL are fetched again once this old.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The algorithms a token may be signed with: asymmetric ones only.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwtRefusal {
    /// It is not valid here: the reason, for the `error_description`.
    Invalid(String),
    /// It lacks these of the required scopes.
    Scope(Vec<String>),
    /// The issuer's keys could not be fetched.
    KeysUnavailable(String),
}

/// A JWT that passed: who it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) principal: String,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    Url(String),
    File(PathBuf),
}

/// One key of the issuer.
#[derive(Clone)]
struct Key {
    id: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

/// The keys held, and when they were fetched.
struct Keys {
    keys: Vec<Key>,
    fetched: Option<Instant>,
}

/// A `[auth.jwt]` table that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[auth.jwt] {0}")]
pub struct JwtConfigError(String);

/// Checks JWTs against one issuer's keys.
pub(crate) struct JwtVerifier {
    config: JwtConfig,
    source: Source,
    keys: RwLock<Keys>,
    /// Held while keys are fetched, so that a burst of tokens with an unknown key id
    /// makes one fetch.
    fetching: tokio::sync::Mutex<()>,
    client: ureq::Agent,
}

impl JwtVerifier {
    /// A verifier for `config`; `jwks` names a URL or a file (relative to `base_dir`),
    /// and a file is read now.
    pub(crate) fn new(
        config: JwtConfig,
        base_dir: &std::path::Path,
    ) -> Result<JwtVerifier, JwtConfigError> {
        for (name, value) in [
            ("issuer", &config.issuer),
            ("audience", &config.audience),
            ("jwks", &config.jwks),
        ] {
            if value.trim().is_empty() {
                return Err(JwtConfigError(format!("{name} must not be empty")));
            }
        }
        if !(config.audience.starts_with("https://") || config.audience.starts_with("http://")) {
            return Err(JwtConfigError(format!(
                "audience '{}' must be this server's canonical URL, such as https://mcp.example.com/mcp",
                config.audience
            )));
        }
        let source = if config.jwks.starts_with("https://") || config.jwks.starts_with("http://") {
            Source::Url(config.jwks.clone())
        } else {
            Source::File(base_dir.join(&config.jwks))
        };
        let mut held = Keys {
            keys: Vec::new(),
            fetched: None,
        };
        if let Source::File(path) = &source {
            let bytes = std::fs::read(path).map_err(|e| {
                JwtConfigError(format!("cannot read the JWKS file {}: {e}", path.display()))
            })?;
            held.keys = parse_keys(&bytes)
                .map_err(|e| JwtConfigError(format!("the JWKS file {} {e}", path.display())))?;
        }
        let client = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(FETCH_TIMEOUT))
                .build(),
        );
        Ok(JwtVerifier {
            config,
            source,
            keys: RwLock::new(held),
            fetching: tokio::sync::Mutex::new(()),
            client,
        })
    }

    /// The table it was made from.
    pub(crate) fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Checks a token: its algorithm, its signature by one of the issuer's keys, its
    /// issuer, audience, expiry, not-before, principal claim and scopes.
    pub(crate) async fn verify(&self, token: &str) -> Result<Verified, JwtRefusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtRefusal::Invalid(format!("it is not a signed JWT ({e})")))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(JwtRefusal::Invalid(format!(
                "it is signed with {:?}, and only asymmetric algorithms (RS*, PS*, ES256, ES384, EdDSA) are accepted",
                header.alg
            )));
        }
        let kid = header.kid.as_deref();
        let claims = match self.check(token, header.alg, kid) {
            Some(checked) => checked?,
            None => {
                self.refetch(kid).await?;
                self.check(token, header.alg, kid).ok_or_else(|| {
                    JwtRefusal::Invalid(match kid {
                        Some(kid) => format!("its key id '{kid}' is not one of the issuer's keys"),
                        None => {
                            "it names no key id, and the issuer has no single key for its algorithm"
                                .to_owned()
                        }
                    })
                })??
            }
        };
        let claim = &self.config.principal_claim;
        let principal = match claims.get(claim) {
            Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
            _ => {
                return Err(JwtRefusal::Invalid(format!(
                    "it has no '{claim}' claim to name its principal"
                )))
            }
        };
        let granted = scopes_of(&claims);
        if (self.config.scopes.iter()).any(|scope| !granted.contains(&scope.as_str())) {
            return Err(JwtRefusal::Scope(self.config.scopes.clone()));
        }
        Ok(Verified { principal })
    }

    /// Checks the token with the held key it names; `None` when no held key fits.
    fn check(
        &self,
        token: &str,
        algorithm: Algorithm,
        kid: Option<&str>,
    ) -> Option<Result<serde_json::Map<String, Value>, JwtRefusal>> {
        let keys = read(&self.keys);
        let fits = |key: &&Key| {
            key.key.family() == algorithm.family()
                && key.algorithm.is_none_or(|alg| alg == algorithm)
        };
        let key = match kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(fits)
                .find(|key| key.id.as_deref() == Some(kid))?,
            None => {
                let mut fitting = keys.keys.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => only,
                    _ => return None,
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_s;
        Some(
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map(|data| data.claims)
                .map_err(|e| JwtRefusal::Invalid(self.refusal(e.kind()))),
        )
    }

    /// What a validation error means for the caller.
    fn refusal(&self, kind: &ErrorKind) -> String {
        match kind {
            ErrorKind::ExpiredSignature => "it has expired: get a new access token".to_owned(),
            ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
            ErrorKind::InvalidAudience => format!(
                "it was issued for another audience: this server accepts only tokens for {}",
                self.config.audience
            ),
            ErrorKind::InvalidIssuer => format!(
                "it was issued by another issuer: this server accepts tokens of {}",
                self.config.issuer
            ),
            ErrorKind::InvalidSignature => {
                "its signature does not verify with the issuer's key".to_owned()
            }
            ErrorKind::MissingRequiredClaim(claim) => format!("it has no '{claim}' claim"),
            other => format!("it cannot be read ({other:?})"),
        }
    }

    /// Fetches the keys again, when they come from a URL and were not fetched within
    /// [`REFETCH_GAP`]. An error only when nothing is held to check tokens with.
    async fn refetch(&self, kid: Option<&str>) -> Result<(), JwtRefusal> {
        let Source::Url(url) = &self.source else {
            return Ok(());
        };
        let _one_at_a_time = self.fetching.lock().await;
        let fetched = read(&self.keys).fetched;
        if fetched.is_some_and(|at| at.elapsed() < REFETCH_GAP) {
            return Ok(());
        }
        tracing::info!(url, kid, "fetching the authorization server's keys");
        match self.fetch(url).await {
            Ok(keys) => {
                *write(&self.keys) = Keys {
                    keys,
                    fetched: Some(Instant::now()),
                };
                Ok(())
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "cannot fetch the authorization server's keys");
                let mut held = write(&self.keys);
                // Tried: the next unknown key id waits for the gap too.
                held.fetched = Some(Instant::now());
                if held.keys.is_empty() {
                    return Err(JwtRefusal::KeysUnavailable(e));
                }
                Ok(())
            }
        }
    }

    /// Keys from a URL are dropped once [`KEYS_MAX_AGE`] old, so the next token fetches.
    pub(crate) fn expire_old_keys(&self) {
        let stale = |held: &Keys| {
            matches!(self.source, Source::Url(_))
                && held.fetched.is_some_and(|at| at.elapsed() > KEYS_MAX_AGE)
        };
        // Read first: every request passes here, and only an hourly one writes.
        if !stale(&read(&self.keys)) {
            return;
        }
        let mut held = write(&self.keys);
        if stale(&held) {
            held.keys.clear();
            held.fetched = None;
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<Key>, String> {
        let client = self.client.clone();
        let owned = url.to_owned();
        // ureq blocks: off the async threads.
        let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let mut response = client.get(&owned).call().map_err(|e| e.to_string())?;
            response
                .body_mut()
                .with_config()
                .limit(MAX_JWKS_BYTES as u64)
                .read_to_vec()
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|fetched| fetched)
        .map_err(|e| format!("GET {url}: {e}"))?;
        parse_keys(&bytes).map_err(|e| format!("{url} {e}"))
    }
}

/// The signing keys of a JWKS document; symmetric keys are left out (see the module).
fn parse_keys(bytes: &[u8]) -> Result<Vec<Key>, String> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("is not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|alg| Algorithm::from_str(&alg.to_string()).ok());
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(Key {
                id: jwk.common.key_id.clone(),
                algorithm,
                key,
            }),
            Err(e) => {
                tracing::warn!(kid = ?jwk.common.key_id, error = %e, "a key of the JWKS cannot be used: it is skipped")
            }
        }
    }
    if keys.is_empty() {
        return Err("holds no signing key (RSA, EC or OKP)".to_owned());
    }
    Ok(keys)
}

/// The scopes a token carries: `scope` (space-separated, RFC 9068) or `scp` (a list
/// or a string, as some issuers send).
fn scopes_of(claims: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut scopes = Vec::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            Some(Value::String(text)) => scopes.extend(text.split_whitespace()),
            Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_read_from_scope_and_scp() {
        let claims = serde_json::json!({"scope": "a b", "scp": ["c"]});
        let claims = claims.as_object().unwrap();
        assert_eq!(scopes_of(claims), ["a", "b", "c"]);
    }

    #[test]
    fn a_jwks_without_signing_keys_is_refused() {
        let symmetric = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert!(parse_keys(symmetric)
            .err()
            .unwrap()
            .contains("no signing key"));
        assert!(parse_keys(b"[]").err().unwrap().contains("not a JWKS"));
    }

    #[test]
    fn an_audience_that_is_not_a_url_is_refused() {
        let config = JwtConfig {
            issuer: "https://issuer".into(),
            jwks: "https://issuer/jwks".into(),
            audience: "my-server".into(),
            scopes: vec![],
            principal_claim: default_principal_claim(),
            authorization_servers: vec![],
            leeway_s: DEFAULT_LEEWAY_S,
        };
        let error = JwtVerifier::new(config, std::path::Path::new("."))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("canonical URL"), "{error}");
    }
}
