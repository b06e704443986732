//! The JWT bearer grant (RFC 7523 §2.1) at the MCP authorization server, with either
//! - an ID-JAG from the enterprise IdP ([`super::token_exchange`]), sent by the client it
//!   names, authenticated as registered there (SEP-990); or
//! - a workload's platform JWT (a Kubernetes projected service account token, a SPIFFE
//!   JWT-SVID; workload identity federation, SEP-1933), with no client authentication.
//!
//! No refresh token is expected: renewal is a new assertion (a new exchange at the IdP, or the
//! platform's current token).

use std::fmt;
use std::time::SystemTime;

use super::token_exchange::IdJag;
use super::{GrantClient, GrantError, TokenRequest, TokenServer, optional, send, token_response};
use crate::oauth::dpop::Dpop;
use crate::oauth::http::OAuthHttp;
use crate::oauth::token::TokenSet;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The JWT presented as the grant. A secret: `Debug` shows its kind and length.
#[derive(Clone)]
pub enum Assertion {
    IdJag(String),
    /// A platform-issued workload JWT, as read from its file.
    Workload(String),
}

impl Assertion {
    pub fn secret(&self) -> &str {
        match self {
            Assertion::IdJag(jwt) | Assertion::Workload(jwt) => jwt,
        }
    }

    /// A workload JWT as a file holds it: surrounding whitespace (a trailing newline) dropped.
    pub fn workload(jwt: &str) -> Self {
        Assertion::Workload(jwt.trim().to_string())
    }
}

impl From<&IdJag> for Assertion {
    fn from(id_jag: &IdJag) -> Self {
        Assertion::IdJag(id_jag.secret().to_string())
    }
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Assertion::IdJag(_) => "IdJag",
            Assertion::Workload(_) => "Workload",
        };
        write!(f, "{kind}([redacted:{}])", self.secret().len())
    }
}

/// The token request (not sent): `grant_type=...jwt-bearer`, the `assertion`, `scope` and the
/// RFC 8707 `resource` when given, and the client's authentication when there is a client.
pub fn request(
    server: &TokenServer,
    client: Option<&GrantClient>,
    assertion: &Assertion,
    scope: Option<&str>,
    resource: Option<&str>,
    now: SystemTime,
) -> Result<TokenRequest, GrantError> {
    crate::telemetry::secrets::register(assertion.secret());
    let mut params = vec![
        ("grant_type", GRANT_TYPE.to_string()),
        ("assertion", assertion.secret().to_string()),
    ];
    optional(&mut params, [("scope", scope), ("resource", resource)]);
    TokenRequest::new(server, client, params, now)
}

/// Redeems `assertion` at `server` for a token, with a DPoP proof when `dpop` is given.
pub async fn obtain(
    http: &OAuthHttp,
    server: &TokenServer,
    client: Option<&GrantClient>,
    assertion: &Assertion,
    scope: Option<&str>,
    resource: Option<&str>,
    dpop: Option<&Dpop>,
) -> Result<TokenSet, GrantError> {
    let build = || {
        request(
            server,
            client,
            assertion,
            scope,
            resource,
            SystemTime::now(),
        )
    };
    let reply = send(http, build, dpop).await?;
    token_response(reply, GRANT_TYPE, scope, SystemTime::now(), dpop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::grants::ClientAuth;

    #[test]
    fn a_workload_grant_needs_no_client_and_an_id_jag_grant_names_one() {
        let server = TokenServer {
            issuer: "https://as.example".into(),
            token_endpoint: "https://as.example/token".into(),
        };
        let workload = Assertion::workload("eyJ.workload.jwt\n");
        assert_eq!(workload.secret(), "eyJ.workload.jwt");
        let built =
            super::request(&server, None, &workload, None, None, SystemTime::now()).unwrap();
        assert_eq!(built.param_names(), ["grant_type", "assertion"]);
        assert_eq!(built.param("grant_type"), Some(GRANT_TYPE));
        assert_eq!(built.param("assertion"), Some("eyJ.workload.jwt"));

        let client = GrantClient::new(
            "xaa-client",
            ClientAuth::SecretBasic(oauth2::ClientSecret::new("xaa-secret".into())),
        );
        let id_jag = Assertion::IdJag("eyJ.id-jag.jwt".into());
        let built = super::request(
            &server,
            Some(&client),
            &id_jag,
            Some("mcp:read"),
            Some("https://mcp.example/mcp"),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(
            built.param_names(),
            ["grant_type", "assertion", "scope", "resource"]
        );
        assert_eq!(built.basic_user(), Some("xaa-client"));
        assert_eq!(format!("{id_jag:?}"), "IdJag([redacted:14])");
    }
}
