//! The grants' servers: an enterprise IdP and the authorization server that trusts it, and a
//! call of the MCP endpoint with a token.

use oauth_test_server::{Config, JwtClient, OAuthTestServer};

use super::start;

/// The HTTP status of a `ping` to `srv`'s MCP endpoint with `token`.
pub async fn mcp_status(srv: &OAuthTestServer, token: &str) -> u16 {
    reqwest::Client::new()
        .post(srv.mcp_url())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// An IdP whose client `idp-client` authenticates with private_key_jwt (the test ES256 key),
/// mapped to `xaa-client` at the authorization server, which trusts the IdP and knows
/// `xaa-client` by `xaa_secret` (the conformance suite's shape); `auth` sets the rest of the
/// authorization server. Returns (IdP, authorization server).
pub async fn enterprise_servers(
    xaa_secret: &str,
    auth: Config,
) -> (OAuthTestServer, OAuthTestServer) {
    let idp = start(Config {
        idp: true,
        private_key_jwt: true,
        jwt_clients: vec![JwtClient::es256("idp-client")],
        idp_client_ids: vec![("idp-client".into(), "xaa-client".into())],
        ..Config::default()
    })
    .await;
    let auth = start(Config {
        jwt_bearer: true,
        preregistered_client: Some(("xaa-client".into(), Some(xaa_secret.into()))),
        trusted_idps: vec![idp.as_trusted_issuer()],
        ..auth
    })
    .await;
    (idp, auth)
}
