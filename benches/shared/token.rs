//! A stored token of the size servers issue (shared by the benches that save tokens).

use mcpproxy_oauth::store::StoredToken;

#[path = "../../tests/common/tokens.rs"]
mod rows;

/// The token of `server_name` (stored under `server_key`) at `https://mcp.example/mcp`: a
/// typical JWT access token (about 800 bytes) and a refresh token, both starting with `tag`
/// after their prefix, valid for an hour.
pub fn sample_token(server_key: String, server_name: &str, tag: &str) -> StoredToken {
    let url = "https://mcp.example/mcp";
    let access = format!("eyJ{tag}") + &"a".repeat(800);
    let refresh = format!("rt_{tag}") + &"b".repeat(60);
    StoredToken {
        server_name: server_name.into(),
        server_url: url.into(),
        resource: Some(url.into()),
        issuer: Some("https://as.example".into()),
        scope: Some("read write".into()),
        ..rows::stored_token(&server_key, &access, Some(refresh))
    }
}
