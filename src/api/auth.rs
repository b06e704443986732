//! The API key. A loopback listener needs none (only this machine's users reach it); any other
//! address refuses to start without one. When a key is set, every request but the static page
//! must carry it (`Authorization: Bearer KEY` or `X-API-Key: KEY`). Both sides are hashed and
//! compared in constant time (`subtle`), so neither the key's bytes nor its length leak
//! through timing; the key is never logged, echoed or put in an error.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;

/// The environment variable that may hold the key.
pub const API_KEY_ENV: &str = "MCPPROXY_OAUTH_API_KEY";

#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl ApiKey {
    /// A key of at least 16 characters (surrounding whitespace ignored).
    pub fn new(key: &str) -> Result<Self, String> {
        let key = key.trim();
        if key.chars().count() < 16 {
            return Err("the API key must be at least 16 characters long".into());
        }
        Ok(ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ApiError> {
        let error = |reason: String| ApiError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        ApiKey::new(&text).map_err(error)
    }

    /// Whether `presented` is the key, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        self.digest.ct_eq(&digest).into()
    }
}

/// A non-loopback address needs a key.
pub fn check_listen(listen: SocketAddr, key: Option<&ApiKey>) -> Result<(), ApiError> {
    if !listen.ip().is_loopback() && key.is_none() {
        return Err(ApiError::KeyRequired(listen));
    }
    Ok(())
}

/// The key a request presents, from `Authorization: Bearer` or `X-API-Key`.
pub fn presented(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v);
    }
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_and_never_print() {
        let key = ApiKey::new("0123456789abcdef-key").unwrap();
        assert!(key.matches("0123456789abcdef-key"));
        assert!(!key.matches("0123456789abcdef-kez"));
        assert!(!key.matches(""));
        assert!(!format!("{key:?}").contains("0123"));
        assert!(ApiKey::new("short").is_err());
    }

    #[test]
    fn only_loopback_may_go_without_a_key() {
        let key = ApiKey::new("0123456789abcdef-key").unwrap();
        assert!(check_listen("127.0.0.1:0".parse().unwrap(), None).is_ok());
        assert!(check_listen("[::1]:0".parse().unwrap(), None).is_ok());
        let err = check_listen("0.0.0.0:8080".parse().unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("--api-key-file"), "{err}");
        assert!(check_listen("0.0.0.0:8080".parse().unwrap(), Some(&key)).is_ok());
    }
}
