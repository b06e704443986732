//! The client credentials grant (RFC 6749 §4.4; the MCP client-credentials extension,
//! SEP-1046): a confidential client asks for a token as itself, authenticated with its secret
//! (`client_secret_basic`, `client_secret_post`) or a signed assertion (`private_key_jwt`).
//! No refresh token is expected (§4.4.3): renewal is the grant again.

use std::time::SystemTime;

use super::{GrantClient, GrantError, TokenRequest, TokenServer, optional, send, token_response};
use crate::oauth::dpop::Dpop;
use crate::oauth::http::OAuthHttp;
use crate::oauth::token::TokenSet;

pub const GRANT_TYPE: &str = "client_credentials";

/// The token request (not sent): `grant_type=client_credentials`, `scope` and the RFC 8707
/// `resource` when given, the client's authentication (a client assertion signed for `now`).
pub fn request(
    server: &TokenServer,
    client: &GrantClient,
    scope: Option<&str>,
    resource: Option<&str>,
    now: SystemTime,
) -> Result<TokenRequest, GrantError> {
    let mut params = vec![("grant_type", GRANT_TYPE.to_string())];
    optional(&mut params, [("scope", scope), ("resource", resource)]);
    TokenRequest::new(server, Some(client), params, now)
}

/// Asks `server` for a token as `client`, with a DPoP proof when `dpop` is given.
pub async fn obtain(
    http: &OAuthHttp,
    server: &TokenServer,
    client: &GrantClient,
    scope: Option<&str>,
    resource: Option<&str>,
    dpop: Option<&Dpop>,
) -> Result<TokenSet, GrantError> {
    let build = || request(server, client, scope, resource, SystemTime::now());
    let reply = send(http, build, dpop).await?;
    token_response(reply, GRANT_TYPE, scope, SystemTime::now(), dpop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::grants::ClientAuth;

    fn server() -> TokenServer {
        TokenServer {
            issuer: "https://as.example".into(),
            token_endpoint: "https://as.example/oauth/token".into(),
        }
    }

    #[test]
    fn basic_puts_the_credentials_in_the_header_and_the_grant_in_the_form() {
        let client = GrantClient::new(
            "my client",
            ClientAuth::SecretBasic(oauth2::ClientSecret::new("s+cret".into())),
        );
        let built = super::request(
            &server(),
            &client,
            Some("mcp:read"),
            Some("https://mcp.example/mcp"),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(built.param_names(), ["grant_type", "scope", "resource"]);
        assert_eq!(built.param("grant_type"), Some("client_credentials"));
        assert_eq!(built.basic_user(), Some("my+client"), "form-urlencoded");
        assert_eq!(built.url().as_str(), "https://as.example/oauth/token");
    }

    #[test]
    fn post_and_none_name_the_client_in_the_form_and_empty_options_are_left_out() {
        let post = GrantClient::new(
            "c",
            ClientAuth::SecretPost(oauth2::ClientSecret::new("secret".into())),
        );
        let built = super::request(&server(), &post, Some(""), None, SystemTime::now()).unwrap();
        assert_eq!(
            built.param_names(),
            ["grant_type", "client_id", "client_secret"]
        );
        assert_eq!(built.basic_user(), None);
    }
}
