//! The grants without a user at the keyboard, as pure request builders and response handling:
//!
//! - [`client_credentials`]: RFC 6749 §4.4, with `client_secret_basic`/`_post` or
//!   `private_key_jwt` (RFC 7523 §2.2, the key in [`client_key`]);
//! - [`token_exchange`]: RFC 8693 at the enterprise IdP, an ID token (or refresh token) for an
//!   ID-JAG (the MCP enterprise-managed authorization extension, SEP-990);
//! - [`jwt_bearer`]: RFC 7523 §2.1 at the MCP authorization server, with an ID-JAG or a
//!   workload's platform JWT (a Kubernetes projected token, a SPIFFE JWT-SVID).
//!
//! Each builds a [`TokenRequest`] from its inputs and a clock reading (no I/O: unit tests read
//! the form), sends it through [`OAuthHttp`] (its timeouts, size cap and redacted debug
//! logging), and turns the answer into a [`TokenSet`] or an [`IdJag`](token_exchange::IdJag).
//! Errors are [`GrantError`]s, which carry `OAuthError`'s permanent/transient class. None of
//! these grants issues a refresh token as a rule: renewal means the grant again.
//!
//! Every secret sent (client secret, client assertion, subject token, assertion) or received
//! (ID-JAG, tokens) is registered with the log scrubber before it can reach a log line or an
//! error message; a server's `error_description` is scrubbed too (a hostile server may echo
//! what it was sent).

pub mod client_credentials;
pub mod client_key;
pub mod credentials;
pub mod jwt_bearer;
pub mod token_exchange;

use std::fmt;
use std::time::{Duration, SystemTime};

use oauth2::ClientSecret;
use oauth2::basic::BasicTokenResponse;
use url::Url;

use super::discovery::AuthorizationServerMetadata;
use super::dpop::Dpop;
use super::error::{Endpoint, ErrorClass, OAuthError};
use super::http::{HttpReply, OAuthHttp, secure_endpoint_url};
use super::token::{TokenSet, token_set};
use client_key::{ClientKey, ClientKeyError};

/// RFC 7523 §2.2's `client_assertion_type`.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the client authenticates at a token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// A public client: `client_id` in the form.
    None,
    /// RFC 6749 §2.3.1 HTTP Basic.
    SecretBasic(ClientSecret),
    /// RFC 6749 §2.3.1, the secret in the form.
    SecretPost(ClientSecret),
    /// RFC 7523 §2.2: a fresh assertion signed with this key on every request.
    PrivateKeyJwt(ClientKey),
}

/// A client at one token endpoint: its ID there and how it proves it. `Debug` shows the ID and
/// the method, never a secret or a key.
#[derive(Clone)]
pub struct GrantClient {
    pub client_id: String,
    pub auth: ClientAuth,
}

impl GrantClient {
    pub fn new(client_id: impl Into<String>, auth: ClientAuth) -> Self {
        GrantClient {
            client_id: client_id.into(),
            auth,
        }
    }

    /// The RFC 8414 name of the method.
    pub fn method(&self) -> &'static str {
        match self.auth {
            ClientAuth::None => "none",
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
        }
    }
}

impl fmt::Debug for GrantClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("GrantClient");
        s.field("client_id", &self.client_id)
            .field("method", &self.method());
        if let ClientAuth::PrivateKeyJwt(key) = &self.auth {
            s.field("key", key);
        }
        s.finish()
    }
}

/// Where a token request goes: an authorization server's (or IdP's) issuer, which client
/// assertions name as their audience, and its token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenServer {
    pub issuer: String,
    pub token_endpoint: String,
}

impl From<&AuthorizationServerMetadata> for TokenServer {
    fn from(metadata: &AuthorizationServerMetadata) -> Self {
        TokenServer {
            issuer: metadata.issuer.clone(),
            token_endpoint: metadata.token_endpoint.clone(),
        }
    }
}

/// Everything that can go wrong in these grants. [`GrantError::class`] says whether trying
/// again with the same inputs can help.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// At the authorization server (or the request could not be sent).
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// At the enterprise IdP's token endpoint.
    #[error("the enterprise IdP {idp}: {source}")]
    Idp {
        idp: String,
        #[source]
        source: OAuthError,
    },
    /// The IdP's administrator policy refused the exchange (`access_denied`). Permanent, and
    /// no reason to fall back to a personal browser login: the enterprise said no.
    #[error(
        "the enterprise IdP {idp} refused access by policy (access_denied){}; ask its \
         administrator to allow this client for the MCP server",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    PolicyDenied {
        idp: String,
        description: Option<String>,
    },
    /// The client's key cannot sign.
    #[error(transparent)]
    Key(#[from] ClientKeyError),
    /// A configured secret (client secret, ID token, workload token) cannot be read: the
    /// config or the file needs a fix. Names the source, never the value.
    #[error("cannot read {what} from {source_name}: {reason}")]
    Credential {
        what: String,
        source_name: String,
        reason: String,
    },
}

impl GrantError {
    pub fn class(&self) -> ErrorClass {
        match self {
            GrantError::OAuth(e) | GrantError::Idp { source: e, .. } => e.class(),
            GrantError::PolicyDenied { .. }
            | GrantError::Key(_)
            | GrantError::Credential { .. } => ErrorClass::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self.class(), ErrorClass::Transient { .. })
    }

    /// The OAuth error code the server answered with, if any.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            GrantError::OAuth(e) | GrantError::Idp { source: e, .. } => e.oauth_code(),
            GrantError::PolicyDenied { .. } => Some("access_denied"),
            GrantError::Key(_) | GrantError::Credential { .. } => None,
        }
    }
}

/// One token request, built and not sent: the URL, the form, HTTP Basic credentials when the
/// client uses them. `Debug` redacts the form's secrets and shows no credentials.
pub struct TokenRequest {
    url: Url,
    form: Vec<(&'static str, String)>,
    basic: Option<(String, String)>,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        f.debug_struct("TokenRequest")
            .field("url", &self.url.as_str())
            .field("form", &crate::telemetry::redact::form(&encoded))
            .field("basic_auth", &self.basic.is_some())
            .finish()
    }
}

impl TokenRequest {
    /// A request to `server`'s token endpoint with these grant parameters, authenticated as
    /// `client` (when given) at `now`.
    fn new(
        server: &TokenServer,
        client: Option<&GrantClient>,
        params: Vec<(&'static str, String)>,
        now: SystemTime,
    ) -> Result<Self, GrantError> {
        let url = secure_endpoint_url("token endpoint", &server.token_endpoint)?;
        let mut request = TokenRequest {
            url,
            form: params,
            basic: None,
        };
        if let Some(client) = client {
            request.authenticate(client, &server.issuer, now)?;
        }
        Ok(request)
    }

    fn authenticate(
        &mut self,
        client: &GrantClient,
        issuer: &str,
        now: SystemTime,
    ) -> Result<(), GrantError> {
        let id = client.client_id.clone();
        match &client.auth {
            ClientAuth::None => self.form.push(("client_id", id)),
            ClientAuth::SecretBasic(secret) => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let (user, password) = (encode(&id), encode(secret.secret()));
                use base64::Engine as _;
                crate::telemetry::secrets::register_all([
                    Some(secret.secret().as_str()),
                    Some(password.as_str()),
                    Some(
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{user}:{password}"))
                            .as_str(),
                    ),
                ]);
                self.basic = Some((user, password));
            }
            ClientAuth::SecretPost(secret) => {
                crate::telemetry::secrets::register(secret.secret());
                self.form.push(("client_id", id));
                self.form.push(("client_secret", secret.secret().clone()));
            }
            ClientAuth::PrivateKeyJwt(key) => {
                let assertion = key.client_assertion(&id, issuer, now)?;
                self.form.push(("client_id", id));
                self.form
                    .push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_string()));
                self.form
                    .push(("client_assertion", assertion.secret().to_string()));
            }
        }
        Ok(())
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The form's value for `name`, if present (for tests and diagnostics; may be a secret).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The form's parameter names, in order.
    pub fn param_names(&self) -> Vec<&'static str> {
        self.form.iter().map(|(k, _)| *k).collect()
    }

    /// The HTTP Basic user (the client ID, form-urlencoded), when the client uses Basic.
    pub fn basic_user(&self) -> Option<&str> {
        self.basic.as_ref().map(|(user, _)| user.as_str())
    }

    fn to_reqwest(&self, http: &OAuthHttp, dpop: Option<&Dpop>) -> reqwest::RequestBuilder {
        let mut request = http
            .client()
            .post(self.url.clone())
            .header("accept", "application/json")
            .form(&self.form);
        if let Some((user, password)) = &self.basic {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(dpop) = dpop {
            request = request.header("dpop", dpop.header("POST", self.url.as_str(), None));
        }
        request
    }
}

/// Sends a token request; with `dpop`, a proof on it and, after `use_dpop_nonce` with a fresh
/// nonce, one more request built anew (a new client assertion: the first one's `jti` may be
/// spent) with a proof carrying the nonce (RFC 9449 §8).
async fn send(
    http: &OAuthHttp,
    build: impl Fn() -> Result<TokenRequest, GrantError>,
    dpop: Option<&Dpop>,
) -> Result<HttpReply, GrantError> {
    let request = build()?;
    let url = request.url.to_string();
    let reply = http
        .send(Endpoint::Token, request.to_reqwest(http, dpop))
        .await?;
    let Some(dpop) = dpop else {
        return Ok(reply);
    };
    let fresh_nonce = dpop.remember_nonce(&url, &reply.headers);
    let asks_for_nonce = reply.status == reqwest::StatusCode::BAD_REQUEST
        && reply.error(Endpoint::Token).oauth_code() == Some("use_dpop_nonce");
    if !(fresh_nonce && asks_for_nonce) {
        return Ok(reply);
    }
    tracing::debug!(target: "mcpproxy_oauth::http", "the token endpoint asked for a DPoP nonce; retrying once with it");
    let reply = http
        .send(Endpoint::Token, build()?.to_reqwest(http, Some(dpop)))
        .await?;
    dpop.remember_nonce(&url, &reply.headers);
    Ok(reply)
}

/// The error a failed reply means, its `error_description` scrubbed of every registered secret.
fn reply_error(reply: &HttpReply, endpoint: Endpoint) -> OAuthError {
    match reply.error(endpoint) {
        OAuthError::Server {
            endpoint,
            code,
            description,
            status,
            retry_after,
        } => OAuthError::Server {
            endpoint,
            code: crate::telemetry::secrets::scrub(&code).into_owned(),
            description: description.map(|d| crate::telemetry::secrets::scrub(&d).into_owned()),
            status,
            retry_after,
        },
        other => other,
    }
}

/// A token response (RFC 6749 §5.1) of a grant without a refresh token, as the code grant's
/// are handled (`token::token_set`: absolute expiry, `expires_in: 0` an error, the asked scope
/// when none is named, the DPoP token-type rules).
fn token_response(
    reply: HttpReply,
    grant: &'static str,
    scope: Option<&str>,
    now: SystemTime,
    dpop: Option<&Dpop>,
) -> Result<TokenSet, GrantError> {
    if !reply.status.is_success() {
        return Err(reply_error(&reply, Endpoint::Token).into());
    }
    let response: BasicTokenResponse = reply.json(Endpoint::Token).map_err(|e| match e {
        OAuthError::Malformed { endpoint, .. } => OAuthError::Malformed {
            endpoint,
            reason: format!("the {grant} answer is not a token response (RFC 6749 §5.1)"),
        },
        other => other,
    })?;
    let set = token_set(response, None, scope, now, dpop)?;
    tracing::debug!(
        grant_type = grant,
        token_type = %set.token_type,
        scope = set.scope.as_deref().unwrap_or(""),
        expires_in = set.lifetime().map(|d| d.as_secs()),
        has_refresh_token = set.refresh_token.is_some(),
        "token obtained"
    );
    Ok(set)
}

/// Whole seconds since the epoch.
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Optional parameters, present only when non-empty.
fn optional(params: &mut Vec<(&'static str, String)>, pairs: [(&'static str, Option<&str>); 2]) {
    for (name, value) in pairs {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            params.push((name, value.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_class() {
        let denied = GrantError::PolicyDenied {
            idp: "https://idp.example".into(),
            description: Some("not for you".into()),
        };
        assert_eq!(denied.class(), ErrorClass::Permanent);
        assert_eq!(denied.oauth_code(), Some("access_denied"));
        assert!(denied.to_string().contains("not for you"), "{denied}");
        let busy = GrantError::Idp {
            idp: "https://idp.example".into(),
            source: OAuthError::Http {
                endpoint: Endpoint::Token,
                status: 503,
                retry_after: Some(Duration::from_secs(4)),
            },
        };
        assert_eq!(
            busy.class(),
            ErrorClass::Transient {
                retry_after: Some(Duration::from_secs(4))
            }
        );
        assert!(
            busy.to_string()
                .starts_with("the enterprise IdP https://idp.example")
        );
    }

    #[test]
    fn requests_go_to_https_or_loopback_only() {
        let server = |endpoint: &str| TokenServer {
            issuer: "https://as.example".into(),
            token_endpoint: endpoint.into(),
        };
        let client = GrantClient::new("c", ClientAuth::None);
        let now = SystemTime::now();
        assert!(
            TokenRequest::new(
                &server("https://as.example/token"),
                Some(&client),
                vec![],
                now
            )
            .is_ok()
        );
        assert!(
            TokenRequest::new(
                &server("http://127.0.0.1:9/token"),
                Some(&client),
                vec![],
                now
            )
            .is_ok()
        );
        for bad in ["http://as.example/token", "not a url"] {
            assert!(matches!(
                TokenRequest::new(&server(bad), Some(&client), vec![], now),
                Err(GrantError::OAuth(
                    OAuthError::InsecureUrl { .. } | OAuthError::Discovery(_)
                ))
            ));
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let secret = "basic-secret-value-1234";
        let request = TokenRequest::new(
            &TokenServer {
                issuer: "https://as.example".into(),
                token_endpoint: "https://as.example/token".into(),
            },
            Some(&GrantClient::new(
                "client",
                ClientAuth::SecretPost(ClientSecret::new(secret.into())),
            )),
            vec![("assertion", "an-assertion-jwt-value".into())],
            SystemTime::now(),
        )
        .unwrap();
        let shown = format!("{request:?}");
        assert!(
            !shown.contains(secret) && !shown.contains("an-assertion-jwt-value"),
            "{shown}"
        );
        let client = GrantClient::new(
            "client",
            ClientAuth::SecretBasic(ClientSecret::new(secret.into())),
        );
        let shown = format!("{client:?}");
        assert!(
            !shown.contains(secret) && shown.contains("client_secret_basic"),
            "{shown}"
        );
    }
}
