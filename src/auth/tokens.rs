//! Static bearer tokens: for a small team, a token per person, kept in the config as
//! the hex SHA-256 of the token, never the token itself, so the file can be read
//! (and committed) without giving anyone access.
//!
//! A presented token is hashed and compared with every entry in constant time, so
//! neither the time an answer takes nor which entry matched tells an attacker how
//! close a guess was.

use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One `[[auth.tokens]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who the token is for: the owner of the jobs its calls start.
    pub principal: String,
    /// The hex SHA-256 of the token (64 hex digits).
    pub sha256: String,
}

/// The static tokens, their digests decoded.
#[derive(Debug, Clone, Default)]
pub(crate) struct StaticTokens {
    entries: Vec<([u8; 32], String)>,
}

/// A `[[auth.tokens]]` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[auth.tokens]] entry for '{principal}': {problem}")]
pub struct TokenEntryError {
    /// The entry's principal.
    pub principal: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Random bytes in a token: 256 bits, beyond any guessing.
const TOKEN_BYTES: usize = 32;
/// Tokens made by `smart-async token new` start with this, so a leaked one is easy to
/// recognise (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "sa_";

impl StaticTokens {
    /// Checks and decodes the entries: each names a principal and a 64-digit hex
    /// digest, and no digest is given twice.
    pub(crate) fn new(entries: &[TokenEntry]) -> Result<StaticTokens, TokenEntryError> {
        let mut decoded: Vec<([u8; 32], String)> = Vec::with_capacity(entries.len());
        for entry in entries {
            let refuse = |problem: &str| TokenEntryError {
                principal: entry.principal.clone(),
                problem: problem.to_owned(),
            };
            if entry.principal.trim().is_empty() || entry.principal.len() > 128 {
                return Err(refuse("principal must be a name of 1 to 128 characters"));
            }
            let digest = decode_digest(&entry.sha256).ok_or_else(|| {
                refuse("sha256 must be 64 hex digits, the SHA-256 of the token: `smart-async token new NAME` prints an entry")
            })?;
            if decoded.iter().any(|(known, _)| *known == digest) {
                return Err(refuse(
                    "its sha256 is also another entry's: each token must be its own",
                ));
            }
            decoded.push((digest, entry.principal.clone()));
        }
        Ok(StaticTokens { entries: decoded })
    }

    /// Whether there are any.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal a presented token is for, if it is one of these.
    pub(crate) fn principal_of(&self, token: &str) -> Option<&str> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, matched or not.
        let mut found = None;
        for (digest, principal) in &self.entries {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(principal.as_str());
            }
        }
        found
    }
}

/// A 64-digit hex digest as bytes.
fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// A fresh random token and its hex SHA-256.
pub fn new_token() -> (String, String) {
    use base64::Engine as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = format!("{:x}", Sha256::digest(token.as_bytes()));
    (token, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(principal: &str, sha256: &str) -> TokenEntry {
        TokenEntry {
            principal: principal.into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn a_new_token_is_found_by_its_digest_and_nothing_else_is() {
        let (alice_token, alice_digest) = new_token();
        let (bob_token, bob_digest) = new_token();
        assert!(alice_token.starts_with(TOKEN_PREFIX) && alice_token.len() > 40);
        assert_ne!(alice_token, bob_token);
        let tokens = StaticTokens::new(&[
            entry("alice", &alice_digest),
            entry("bob", &bob_digest.to_uppercase()),
        ])
        .unwrap();
        assert_eq!(tokens.principal_of(&alice_token), Some("alice"));
        assert_eq!(tokens.principal_of(&bob_token), Some("bob"));
        assert_eq!(
            tokens.principal_of(&alice_digest),
            None,
            "the digest is not the token"
        );
        assert_eq!(tokens.principal_of(""), None);
        assert_eq!(
            tokens.principal_of(&alice_token[..alice_token.len() - 1]),
            None
        );
    }

    #[test]
    fn a_bad_entry_says_what_is_wrong() {
        let (_, digest) = new_token();
        for (entries, said) in [
            (vec![entry("alice", "abc")], "64 hex digits"),
            (vec![entry("alice", &"g".repeat(64))], "64 hex digits"),
            (vec![entry("", &digest)], "principal must be"),
            (
                vec![entry("alice", &digest), entry("bob", &digest)],
                "also another entry's",
            ),
        ] {
            let error = StaticTokens::new(&entries).unwrap_err().to_string();
            assert!(error.contains(said), "{error}");
        }
    }
}
