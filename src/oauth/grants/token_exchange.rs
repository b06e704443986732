//! RFC 8693 token exchange at the enterprise IdP, for an ID-JAG (Identity Assertion JWT
//! Authorization Grant; the MCP enterprise-managed authorization extension, SEP-990, and
//! draft-ietf-oauth-identity-assertion-authz-grant): the client hands the IdP the user's ID
//! token (or its refresh token there) and names the MCP authorization server (`audience`,
//! its issuer) and the MCP server (`resource`); the IdP, if its policy allows, answers with an
//! ID-JAG, which [`super::jwt_bearer`] redeems at the authorization server.
//!
//! The IdP's `access_denied` is its administrator's policy: [`GrantError::PolicyDenied`],
//! permanent, never a reason for a personal browser login.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{
    GrantClient, GrantError, TokenRequest, TokenServer, optional, reply_error, send, unix_seconds,
};
use crate::oauth::error::{Endpoint, OAuthError};
use crate::oauth::http::{HttpReply, OAuthHttp};
use crate::oauth::token::MAX_LIFETIME;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The requested (and issued) token type of an ID-JAG.
pub const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";

/// What the client proves the user with at the IdP. A secret: `Debug` shows the kind only.
#[derive(Clone)]
pub enum SubjectToken {
    /// An OpenID Connect ID token the IdP issued to this client (its `aud`).
    IdToken(String),
    /// A refresh token of this client at the IdP.
    RefreshToken(String),
}

impl SubjectToken {
    fn parts(&self) -> (&str, &'static str) {
        match self {
            SubjectToken::IdToken(t) => (t, ID_TOKEN_TYPE),
            SubjectToken::RefreshToken(t) => (t, REFRESH_TOKEN_TYPE),
        }
    }
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (token, kind) = match self {
            SubjectToken::IdToken(t) => (t, "IdToken"),
            SubjectToken::RefreshToken(t) => (t, "RefreshToken"),
        };
        write!(f, "{kind}([redacted:{}])", token.len())
    }
}

/// What the ID-JAG is asked for: the MCP authorization server's issuer (`audience`), the MCP
/// server (`resource`, RFC 8707) and the scopes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdJagTarget {
    pub audience: String,
    pub resource: Option<String>,
    pub scope: Option<String>,
}

/// An ID-JAG the IdP issued: a secret (it is a grant at the authorization server until it
/// expires); `Debug` shows its length, scope and expiry.
#[derive(Clone)]
pub struct IdJag {
    assertion: String,
    /// The scope granted, when the IdP named one (else the scope asked).
    pub scope: Option<String>,
    /// From `expires_in`, else from the JWT's `exp`; `None` when neither says.
    pub expires_at: Option<SystemTime>,
}

impl IdJag {
    pub fn secret(&self) -> &str {
        &self.assertion
    }
}

impl fmt::Debug for IdJag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdJag")
            .field(
                "assertion",
                &format_args!("[redacted:{}]", self.assertion.len()),
            )
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The exchange request (not sent): RFC 8693 §2.1 with SEP-990's parameters, authenticated as
/// `client` at the IdP.
pub fn request(
    idp: &TokenServer,
    client: &GrantClient,
    subject: &SubjectToken,
    target: &IdJagTarget,
    now: SystemTime,
) -> Result<TokenRequest, GrantError> {
    let (token, token_type) = subject.parts();
    crate::telemetry::secrets::register(token);
    let mut params = vec![
        ("grant_type", GRANT_TYPE.to_string()),
        ("requested_token_type", ID_JAG_TOKEN_TYPE.to_string()),
        ("subject_token", token.to_string()),
        ("subject_token_type", token_type.to_string()),
        ("audience", target.audience.clone()),
    ];
    optional(
        &mut params,
        [
            ("resource", target.resource.as_deref()),
            ("scope", target.scope.as_deref()),
        ],
    );
    TokenRequest::new(idp, Some(client), params, now).map_err(|e| at_idp(idp, e))
}

/// Exchanges `subject` for an ID-JAG at `idp`.
pub async fn exchange(
    http: &OAuthHttp,
    idp: &TokenServer,
    client: &GrantClient,
    subject: &SubjectToken,
    target: &IdJagTarget,
) -> Result<IdJag, GrantError> {
    let build = || request(idp, client, subject, target, SystemTime::now());
    let reply = send(http, build, None).await.map_err(|e| at_idp(idp, e))?;
    let id_jag = id_jag_from_reply(idp, &reply, target, SystemTime::now())?;
    tracing::debug!(
        issued_token_type = ID_JAG_TOKEN_TYPE,
        scope = id_jag.scope.as_deref().unwrap_or(""),
        expires_in = id_jag
            .expires_at
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .map(|d| d.as_secs()),
        "ID-JAG obtained"
    );
    Ok(id_jag)
}

/// RFC 8693 §2.2.1, the fields used.
#[derive(Deserialize)]
struct ExchangeResponse {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    issued_token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

/// The IdP's answer as an ID-JAG: `issued_token_type` must say id-jag and `access_token` hold
/// it (RFC 8693 keeps that name for any issued token); `token_type` (`N_A`) is not needed.
pub fn id_jag_from_reply(
    idp: &TokenServer,
    reply: &HttpReply,
    target: &IdJagTarget,
    now: SystemTime,
) -> Result<IdJag, GrantError> {
    if !reply.status.is_success() {
        return Err(match reply_error(reply, Endpoint::Token) {
            OAuthError::Server {
                code, description, ..
            } if code == "access_denied" => GrantError::PolicyDenied {
                idp: idp.issuer.clone(),
                description,
            },
            other => at_idp(idp, other.into()),
        });
    }
    let malformed = |reason: String| {
        at_idp(
            idp,
            OAuthError::Malformed {
                endpoint: Endpoint::Token,
                reason,
            }
            .into(),
        )
    };
    let answer: ExchangeResponse = reply
        .json(Endpoint::Token)
        .map_err(|_| malformed("the token exchange answer is not an RFC 8693 response".into()))?;
    if let Some(token) = &answer.access_token {
        crate::telemetry::secrets::register(token);
    }
    match answer.issued_token_type.as_deref() {
        Some(ID_JAG_TOKEN_TYPE) => {}
        Some(other) => {
            return Err(malformed(format!(
                "the IdP issued a {other:?}, not an ID-JAG ({ID_JAG_TOKEN_TYPE})"
            )));
        }
        None => {
            return Err(malformed(
                "the token exchange answer has no issued_token_type (RFC 8693 §2.2.1)".into(),
            ));
        }
    }
    let assertion = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            malformed("the token exchange answer has no access_token (the ID-JAG)".into())
        })?;
    let expires_at = match answer.expires_in {
        Some(0) => {
            return Err(at_idp(
                idp,
                OAuthError::TokenAlreadyExpired {
                    endpoint: Endpoint::Token,
                    rotated_refresh_token: None,
                }
                .into(),
            ));
        }
        Some(secs) => now.checked_add(Duration::from_secs(secs).min(MAX_LIFETIME)),
        None => jwt_expiry(&assertion),
    };
    Ok(IdJag {
        assertion,
        scope: answer.scope.or_else(|| target.scope.clone()),
        expires_at,
    })
}

/// A JWT's `exp`, read without checking the signature (the authorization server checks it;
/// the client only wants to know when to ask again).
fn jwt_expiry(jwt: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    let now = unix_seconds(SystemTime::now());
    let lifetime = Duration::from_secs(exp.saturating_sub(now)).min(MAX_LIFETIME);
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(now) + lifetime)
}

/// An error at the IdP, said to be there (its messages would otherwise name "the token
/// endpoint", as if it were the authorization server's).
fn at_idp(idp: &TokenServer, e: GrantError) -> GrantError {
    match e {
        GrantError::OAuth(source) => GrantError::Idp {
            idp: idp.issuer.clone(),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::grants::ClientAuth;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn idp() -> TokenServer {
        TokenServer {
            issuer: "https://idp.example".into(),
            token_endpoint: "https://idp.example/oauth2/token".into(),
        }
    }

    fn target() -> IdJagTarget {
        IdJagTarget {
            audience: "https://as.example".into(),
            resource: Some("https://mcp.example/mcp".into()),
            scope: Some("mcp:read".into()),
        }
    }

    fn reply(status: u16, body: serde_json::Value) -> HttpReply {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        HttpReply {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn the_request_carries_sep_990s_parameters() {
        let client = GrantClient::new("idp-client", ClientAuth::None);
        let subject = SubjectToken::IdToken("eyJ-id-token-for-the-request".into());
        let built =
            super::request(&idp(), &client, &subject, &target(), SystemTime::now()).unwrap();
        assert_eq!(built.param("grant_type"), Some(GRANT_TYPE));
        assert_eq!(built.param("requested_token_type"), Some(ID_JAG_TOKEN_TYPE));
        assert_eq!(
            built.param("subject_token"),
            Some("eyJ-id-token-for-the-request")
        );
        assert_eq!(built.param("subject_token_type"), Some(ID_TOKEN_TYPE));
        assert_eq!(built.param("audience"), Some("https://as.example"));
        assert_eq!(built.param("resource"), Some("https://mcp.example/mcp"));
        assert_eq!(built.param("scope"), Some("mcp:read"));
        assert_eq!(built.param("client_id"), Some("idp-client"));
        let refresh = SubjectToken::RefreshToken("rt-at-the-idp-0123".into());
        let built =
            super::request(&idp(), &client, &refresh, &target(), SystemTime::now()).unwrap();
        assert_eq!(built.param("subject_token_type"), Some(REFRESH_TOKEN_TYPE));
        assert_eq!(format!("{refresh:?}"), "RefreshToken([redacted:18])");
    }

    #[test]
    fn an_answer_is_an_id_jag_only_when_it_says_so() {
        let now = SystemTime::now();
        let ok = reply(
            200,
            serde_json::json!({
                "access_token": "jag.jwt.sig",
                "issued_token_type": ID_JAG_TOKEN_TYPE,
                "token_type": "N_A",
                "expires_in": 300,
            }),
        );
        let id_jag = id_jag_from_reply(&idp(), &ok, &target(), now).unwrap();
        assert_eq!(id_jag.secret(), "jag.jwt.sig");
        assert_eq!(id_jag.expires_at, Some(now + Duration::from_secs(300)));
        assert_eq!(id_jag.scope.as_deref(), Some("mcp:read"), "the scope asked");
        assert!(!format!("{id_jag:?}").contains("jag.jwt.sig"));

        for (body, why) in [
            (
                serde_json::json!({
                    "access_token": "x.y.z",
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                }),
                "another type",
            ),
            (
                serde_json::json!({"access_token": "x.y.z"}),
                "no issued_token_type",
            ),
            (
                serde_json::json!({"issued_token_type": ID_JAG_TOKEN_TYPE}),
                "no access_token",
            ),
        ] {
            let e = id_jag_from_reply(&idp(), &reply(200, body), &target(), now).unwrap_err();
            assert!(
                matches!(
                    &e,
                    GrantError::Idp {
                        source: OAuthError::Malformed { .. },
                        ..
                    }
                ),
                "{why}: {e:?}"
            );
            assert!(e.is_transient(), "{why}");
        }
        let zero = reply(
            200,
            serde_json::json!({"access_token": "x.y.z", "issued_token_type": ID_JAG_TOKEN_TYPE, "expires_in": 0}),
        );
        assert!(id_jag_from_reply(&idp(), &zero, &target(), now).is_err());
    }

    #[test]
    fn access_denied_is_the_policy_and_other_errors_are_the_idps() {
        let now = SystemTime::now();
        let denied = reply(
            400,
            serde_json::json!({"error": "access_denied", "error_description": "not allowed"}),
        );
        let e = id_jag_from_reply(&idp(), &denied, &target(), now).unwrap_err();
        assert!(matches!(e, GrantError::PolicyDenied { .. }), "{e:?}");
        assert!(!e.is_transient());
        let expired = reply(400, serde_json::json!({"error": "invalid_grant"}));
        let e = id_jag_from_reply(&idp(), &expired, &target(), now).unwrap_err();
        assert_eq!(e.oauth_code(), Some("invalid_grant"));
        assert!(
            e.to_string()
                .starts_with("the enterprise IdP https://idp.example: "),
            "{e}"
        );
    }

    #[test]
    fn without_expires_in_the_jwt_says_when() {
        use base64::Engine as _;
        let exp = unix_seconds(SystemTime::now()) + 120;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"exp": exp}).to_string());
        let at = jwt_expiry(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(unix_seconds(at), exp);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }
}
