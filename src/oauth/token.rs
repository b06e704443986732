//! Authorization code + PKCE (S256) and token requests, through the `oauth2` crate and the
//! project's one HTTP client. Every request carries the RFC 8707 `resource`, refreshes
//! included.
//!
//! Policies on what servers send:
//! - The expiry is made absolute on receipt (`obtained_at + expires_in`), with the lifetime
//!   clamped to `MAX_LIFETIME` (one year): a server announcing `i64::MAX` or `u64::MAX`
//!   seconds gets a token that is refreshed ahead of a year's end, never an overflow.
//! - No `expires_in`: the lifetime is unknown (`expires_at = None`); the token is used until the
//!   resource server refuses it, then refreshed.
//! - `expires_in: 0`: the token is already expired; that is an error, never a success (the
//!   rotated refresh token in it is handed back in the error so it is not lost).
//! - A refresh without a new `refresh_token` keeps the old one (RFC 6749 §6).
//! - No `scope` in the response: the scope requested was granted (RFC 6749 §5.1).

use std::fmt;
use std::time::{Duration, SystemTime};

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    Scope, TokenResponse, TokenUrl,
};
use url::Url;

use super::client_identity::{ClientCredentials, TokenAuthMethod};
use super::dpop::Dpop;
use super::error::{Endpoint, OAuthError};
use super::http::OAuthHttp;
use super::metadata::AuthorizationServerMetadata;

/// The longest lifetime believed from a server (one year). Longer ones are clamped, so every
/// expiry is a few years from now at most: it fits any time type and arithmetic on it
/// (milliseconds since 1970 as i64, 75% refresh points) cannot overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

type ConfiguredClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// An access token with what is known about it. `Debug` never shows the tokens.
#[derive(Clone)]
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub token_type: String,
    pub scope: Option<String>,
    /// `None` when the server did not say (see the module's policy).
    pub expires_at: Option<SystemTime>,
    pub obtained_at: SystemTime,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish()
    }
}

impl TokenSet {
    /// Whether the token can still be used for at least `margin` at `now`.
    pub fn is_valid_for(&self, margin: Duration, now: SystemTime) -> bool {
        match self.expires_at {
            Some(expires_at) => now.checked_add(margin).is_some_and(|t| t < expires_at),
            None => true,
        }
    }

    /// Lifetime announced by the server, if it announced one.
    pub fn lifetime(&self) -> Option<Duration> {
        self.expires_at
            .and_then(|e| e.duration_since(self.obtained_at).ok())
    }
}

/// Where and as whom token requests go.
#[derive(Debug, Clone)]
pub struct TokenEndpoint {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub client: ClientCredentials,
    pub redirect_uri: String,
    /// RFC 8707 resource, sent on every request.
    pub resource: String,
}

impl TokenEndpoint {
    pub fn new(
        metadata: &AuthorizationServerMetadata,
        client: ClientCredentials,
        redirect_uri: String,
        resource: String,
    ) -> Self {
        TokenEndpoint {
            authorization_endpoint: metadata.authorization_endpoint.clone(),
            token_endpoint: metadata.token_endpoint.clone(),
            client,
            redirect_uri,
            resource,
        }
    }

    fn oauth2_client(&self) -> Result<ConfiguredClient, OAuthError> {
        let invalid =
            |what: &str, value: &str| OAuthError::Discovery(format!("invalid {what} {value:?}"));
        let mut client = BasicClient::new(ClientId::new(self.client.client_id.clone()))
            .set_auth_uri(
                AuthUrl::new(self.authorization_endpoint.clone())
                    .map_err(|_| invalid("authorization endpoint", &self.authorization_endpoint))?,
            )
            .set_token_uri(
                TokenUrl::new(self.token_endpoint.clone())
                    .map_err(|_| invalid("token endpoint", &self.token_endpoint))?,
            );
        // A client of a device login (RFC 8628) has no redirect URI.
        if !self.redirect_uri.is_empty() {
            client = client.set_redirect_uri(
                RedirectUrl::new(self.redirect_uri.clone())
                    .map_err(|_| invalid("redirect URI", &self.redirect_uri))?,
            );
        }
        // oauth2 sends the client_id in the body for RequestBody, with or without a secret.
        if let (TokenAuthMethod::ClientSecretBasic, Some(secret)) =
            (self.client.auth_method, &self.client.client_secret)
        {
            // The Basic credentials oauth2 sends (RFC 6749 §2.3.1): a server may echo them.
            register_basic_credentials(&self.client.client_id, secret.secret());
        }
        client = match (self.client.auth_method, &self.client.client_secret) {
            (TokenAuthMethod::ClientSecretBasic, Some(secret)) => client
                .set_client_secret(secret.clone())
                .set_auth_type(AuthType::BasicAuth),
            (TokenAuthMethod::ClientSecretPost, Some(secret)) => client
                .set_client_secret(secret.clone())
                .set_auth_type(AuthType::RequestBody),
            _ => client.set_auth_type(AuthType::RequestBody),
        };
        Ok(client)
    }

    /// Builds an authorization request with a fresh `state` and PKCE S256 pair.
    /// `extra_params` are added, except any that would override the protocol's own.
    pub fn authorization_request(
        &self,
        scope: Option<&str>,
        extra_params: &[(String, String)],
    ) -> Result<PendingAuthorization, OAuthError> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.oauth2_client()?;
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge)
            .add_extra_param("resource", self.resource.clone());
        for s in scope.into_iter().flat_map(str::split_whitespace) {
            request = request.add_scope(Scope::new(s.to_string()));
        }
        // The protocol's own parameters cannot be overridden this way.
        const RESERVED: &[&str] = &[
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "code_challenge",
            "code_challenge_method",
            "resource",
        ];
        for (name, value) in extra_params
            .iter()
            .filter(|(name, _)| !RESERVED.contains(&name.as_str()))
        {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        let (url, state) = request.url();
        crate::telemetry::secrets::register_all([
            Some(state.secret().as_str()),
            Some(verifier.secret().as_str()),
        ]);
        Ok(PendingAuthorization {
            url,
            state: state.secret().clone(),
            verifier: verifier.secret().clone(),
            scope: scope.map(String::from),
        })
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3 with RFC 7636's verifier), with a
    /// DPoP proof when `dpop` is given (RFC 9449 §5; the module's policy on the token types
    /// that may come back).
    pub async fn exchange_code(
        &self,
        http: &OAuthHttp,
        code: &str,
        pending: &PendingAuthorization,
        now: SystemTime,
        dpop: Option<&Dpop>,
    ) -> Result<TokenSet, OAuthError> {
        crate::telemetry::secrets::register(code);
        let client = self.oauth2_client()?;
        let call = http.token_call(dpop);
        let result = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .add_extra_param("resource", self.resource.clone())
            .request_async(&call)
            .await;
        let response = result.map_err(|e| token_error(e, call.reply_status()))?;
        let set = token_set(response, None, pending.scope.as_deref(), now, dpop)?;
        log_token_metadata("authorization_code", &set, false);
        Ok(set)
    }

    /// Refreshes with a refresh token (RFC 6749 §6), keeping it when no new one comes back;
    /// with a DPoP proof when `dpop` is given: a refresh token bound to a key is refreshed
    /// only with a proof of that key (RFC 9449 §5).
    pub async fn refresh(
        &self,
        http: &OAuthHttp,
        refresh_token: &RefreshToken,
        scope: Option<&str>,
        now: SystemTime,
        dpop: Option<&Dpop>,
    ) -> Result<TokenSet, OAuthError> {
        crate::telemetry::secrets::register(refresh_token.secret());
        let client = self.oauth2_client()?;
        let call = http.token_call(dpop);
        let result = client
            .exchange_refresh_token(refresh_token)
            .add_extra_param("resource", self.resource.clone())
            .request_async(&call)
            .await;
        let response = result.map_err(|e| token_error(e, call.reply_status()))?;
        let set = token_set(response, Some(refresh_token.clone()), scope, now, dpop)?;
        let rotated = set
            .refresh_token
            .as_ref()
            .is_some_and(|r| r.secret() != refresh_token.secret());
        log_token_metadata("refresh_token", &set, rotated);
        Ok(set)
    }
}

impl TokenEndpoint {
    /// RFC 7009 revocation: the refresh token when there is one (that ends the whole grant),
    /// else the access token. Sent through `OAuthHttp` rather than oauth2, whose revocation
    /// refuses plain http even on loopback.
    pub async fn revoke(
        &self,
        http: &OAuthHttp,
        revocation_endpoint: &str,
        refresh_token: Option<&str>,
        access_token: &str,
    ) -> Result<(), OAuthError> {
        let url = super::http::secure_endpoint_url("revocation endpoint", revocation_endpoint)?;
        let (token, hint) = match refresh_token {
            Some(r) => (r, "refresh_token"),
            None => (access_token, "access_token"),
        };
        let mut form = vec![
            ("token", token.to_string()),
            ("token_type_hint", hint.to_string()),
        ];
        let request = client_authenticated(http.client().post(url), &mut form, &self.client);
        let reply = http.send(Endpoint::Revocation, request.form(&form)).await?;
        if reply.status.is_success() {
            return Ok(());
        }
        Err(reply.error(Endpoint::Revocation))
    }
}

/// Adds the client's authentication to a form request made without the oauth2 crate
/// (revocation, the device grant): HTTP Basic, the secret in the form, or the bare client_id.
pub(crate) fn client_authenticated(
    request: reqwest::RequestBuilder,
    form: &mut Vec<(&'static str, String)>,
    client: &ClientCredentials,
) -> reqwest::RequestBuilder {
    match (client.auth_method, &client.client_secret) {
        (TokenAuthMethod::ClientSecretBasic, Some(secret)) => {
            // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
            let encode =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            register_basic_credentials(&client.client_id, secret.secret());
            request.basic_auth(encode(&client.client_id), Some(encode(secret.secret())))
        }
        (TokenAuthMethod::ClientSecretPost, Some(secret)) => {
            form.push(("client_id", client.client_id.clone()));
            form.push(("client_secret", secret.secret().clone()));
            request
        }
        _ => {
            form.push(("client_id", client.client_id.clone()));
            request
        }
    }
}

/// Registers `base64(urlencode(id):urlencode(secret))`, the Authorization header's
/// credentials, with the log scrubber.
fn register_basic_credentials(client_id: &str, secret: &str) {
    use base64::Engine as _;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    crate::telemetry::secrets::register(
        &base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(client_id),
            encode(secret)
        )),
    );
}

/// An authorization request in flight: the URL to open and what checks its answer.
pub struct PendingAuthorization {
    pub url: Url,
    pub state: String,
    verifier: String,
    pub scope: Option<String>,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("url", &crate::telemetry::redact::url(self.url.as_str()))
            .field("scope", &self.scope)
            .finish()
    }
}

/// What a token is, never what it says: type, scope, lifetime, absolute expiry, refresh token.
fn log_token_metadata(grant_type: &str, set: &TokenSet, rotated: bool) {
    let unix_ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    tracing::debug!(
        grant_type,
        token_type = %set.token_type,
        scope = set.scope.as_deref().unwrap_or(""),
        expires_in = set.lifetime().map(|d| d.as_secs()),
        expires_at = set.expires_at.map(unix_ms),
        has_refresh_token = set.refresh_token.is_some(),
        rotated,
        "token obtained"
    );
}

fn token_error(
    e: RequestTokenError<OAuthError, BasicErrorResponse>,
    reply: Option<(u16, Option<Duration>)>,
) -> OAuthError {
    let (status, retry_after) = match reply {
        Some((status, retry_after)) => (Some(status), retry_after),
        None => (None, None),
    };
    // A failing status whose body is no OAuth error: the status is the news.
    let failed_with = |status| OAuthError::Http {
        endpoint: Endpoint::Token,
        status,
        retry_after,
    };
    match e {
        RequestTokenError::ServerResponse(body) => OAuthError::Server {
            endpoint: Endpoint::Token,
            code: body.error().as_ref().to_string(),
            description: body.error_description().cloned(),
            status,
            retry_after,
        },
        RequestTokenError::Request(e) => e,
        RequestTokenError::Parse(e, _body) => match status {
            Some(status) if !(200..300).contains(&status) => failed_with(status),
            // Only the path of the bad field: the body and serde's message may contain tokens.
            // A missing field is named (the name comes from our own types, not the body).
            _ => OAuthError::Malformed {
                endpoint: Endpoint::Token,
                reason: match missing_field(&e.inner().to_string()) {
                    Some(field) => format!(
                        "token response has no `{field}` field, which RFC 6749 §5.1 requires; the \
                         server's answer is not a token response"
                    ),
                    None => format!("token response does not parse at `{}`", e.path()),
                },
            },
        },
        RequestTokenError::Other(message) => match status {
            Some(status) if !(200..300).contains(&status) => failed_with(status),
            _ => OAuthError::Malformed {
                endpoint: Endpoint::Token,
                reason: message,
            },
        },
    }
}

/// The field named by serde's "missing field `name`" message, if that is the error.
fn missing_field(message: &str) -> Option<&str> {
    let (field, _) = message.strip_prefix("missing field `")?.split_once('`')?;
    Some(field).filter(|f| f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

pub(crate) fn token_set(
    response: BasicTokenResponse,
    previous_refresh: Option<RefreshToken>,
    requested_scope: Option<&str>,
    now: SystemTime,
    dpop: Option<&Dpop>,
) -> Result<TokenSet, OAuthError> {
    crate::telemetry::secrets::register_all([
        Some(response.access_token().secret().as_str()),
        response.refresh_token().map(|r| r.secret().as_str()),
    ]);
    let token_type = accepted_token_type(response.token_type().as_ref(), dpop)?;
    let refresh_token = response.refresh_token().cloned().or(previous_refresh);
    let expires_at = match response.expires_in() {
        Some(lifetime) if lifetime.is_zero() => {
            return Err(OAuthError::TokenAlreadyExpired {
                endpoint: Endpoint::Token,
                rotated_refresh_token: response.refresh_token().cloned(),
            });
        }
        Some(lifetime) => {
            if lifetime > MAX_LIFETIME {
                tracing::warn!(
                    expires_in = lifetime.as_secs(),
                    clamped_to = MAX_LIFETIME.as_secs(),
                    "the token endpoint announced an absurd lifetime; it is clamped to one year"
                );
            }
            // `now` is a clock reading, far from SystemTime's limits; checked all the same.
            now.checked_add(lifetime.min(MAX_LIFETIME))
        }
        None => None,
    };
    let scope = match response.scopes() {
        Some(scopes) => Some(
            scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        None => requested_scope.map(String::from),
    };
    Ok(TokenSet {
        access_token: response.access_token().clone(),
        refresh_token,
        token_type: token_type.into(),
        scope,
        expires_at,
        obtained_at: now,
    })
}

/// The token types accepted (RFC 9449 §5), returned as this crate writes them:
/// - `DPoP` only when the request carried a proof: a DPoP-bound token cannot be used without
///   the key, so one that comes back to a request without a proof is an error.
/// - `Bearer` to a request without a proof, as always. To a request with a proof it is the
///   answer of an authorization server that does not bind tokens (§5 lets it answer so); it
///   is used as a Bearer token unless the resource requires DPoP-bound tokens (its metadata
///   says `dpop_bound_access_tokens_required`, or it challenges only with DPoP), where such a
///   token would be refused anyway: then it is an error naming the mismatch.
/// - Anything else is an error.
fn accepted_token_type(token_type: &str, dpop: Option<&Dpop>) -> Result<&'static str, OAuthError> {
    let refused = |reason: String| OAuthError::Malformed {
        endpoint: Endpoint::Token,
        reason,
    };
    match (token_type.to_ascii_lowercase().as_str(), dpop) {
        ("bearer", None) => Ok("Bearer"),
        ("bearer", Some(dpop)) if dpop.required() => Err(refused(
            "the authorization server issued a Bearer token to a DPoP token request, but the \
             resource accepts only DPoP-bound tokens; the authorization server does not support \
             DPoP for this client".into(),
        )),
        ("bearer", Some(_)) => {
            tracing::info!("the authorization server issued a Bearer token to a DPoP token \
                            request; it is used as a Bearer token (RFC 9449 §5)");
            Ok("Bearer")
        }
        ("dpop", Some(_)) => Ok("DPoP"),
        ("dpop", None) => Err(refused(
            "token type \"DPoP\" came back to a request without a DPoP proof; enable DPoP for this \
             server (\"dpop\": true in its oauth config)".into(),
        )),
        _ => Err(refused(format!("token type {token_type:?} is neither Bearer nor DPoP"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::dpop::DpopKey;

    #[test]
    fn token_types_follow_rfc_9449_section_5() {
        let optional = Dpop::new(DpopKey::generate());
        let required = optional.clone().with_required(true);
        assert_eq!(accepted_token_type("Bearer", None).unwrap(), "Bearer");
        assert_eq!(
            accepted_token_type("bearer", Some(&optional)).unwrap(),
            "Bearer"
        );
        assert_eq!(
            accepted_token_type("DPoP", Some(&optional)).unwrap(),
            "DPoP"
        );
        assert_eq!(
            accepted_token_type("dpop", Some(&required)).unwrap(),
            "DPoP"
        );
        for (token_type, dpop) in [
            ("DPoP", None),
            ("Bearer", Some(&required)),
            ("mac", None),
            ("mac", Some(&optional)),
        ] {
            assert!(
                matches!(
                    accepted_token_type(token_type, dpop),
                    Err(OAuthError::Malformed { .. })
                ),
                "{token_type} with {dpop:?}"
            );
        }
    }
}
