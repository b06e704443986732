//! A stored token row as a test (or a bench) writes it straight into a store.

use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::store::StoredToken;

/// The token of the server `key` (also its name) at a loopback URL, with `access` and
/// `refresh`: a Bearer token valid for an hour, no resource, issuer or scope. A test sets
/// the rest with struct update syntax.
pub fn stored_token(key: &str, access: &str, refresh: Option<String>) -> StoredToken {
    StoredToken {
        server_key: key.into(),
        server_name: key.into(),
        server_url: "http://127.0.0.1:1/mcp".into(),
        resource: None,
        issuer: None,
        access_token: access.into(),
        refresh_token: refresh.map(Into::into),
        token_type: "Bearer".into(),
        scope: None,
        expires_at: Some(now_ms() + 3_600_000),
        obtained_at: now_ms(),
        flow_id: None,
        dpop: None,
    }
}
