//! One error type for everything that can go wrong talking OAuth, each variant knowing whether
//! it is permanent (retrying cannot help: drop what is invalid, ask for a login or a fix) or
//! transient (back off and try again with the same credentials). The supervisor decides from
//! [`OAuthError::class`], never from message text.

use std::fmt;
use std::time::Duration;

/// Which OAuth or MCP endpoint an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ProtectedResourceMetadata,
    AuthorizationServerMetadata,
    Registration,
    Authorization,
    Token,
    Revocation,
    Callback,
    Mcp,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::ProtectedResourceMetadata => "protected resource metadata",
            Endpoint::AuthorizationServerMetadata => "authorization server metadata",
            Endpoint::Registration => "registration endpoint",
            Endpoint::Authorization => "authorization endpoint",
            Endpoint::Token => "token endpoint",
            Endpoint::Revocation => "revocation endpoint",
            Endpoint::Callback => "redirect callback",
            Endpoint::Mcp => "MCP server",
        })
    }
}

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retrying with the same inputs cannot succeed.
    Permanent,
    /// Try again later with the same credentials, not before `retry_after` when given.
    Transient { retry_after: Option<Duration> },
}

/// Everything that can go wrong in the OAuth protocol engine. Messages name the server's
/// endpoint and what to do; they never contain a token, secret, code or raw response body.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The server answered with an OAuth error (RFC 6749 §5.2 or an error redirect).
    #[error("{endpoint} answered {code}{}{}", status_suffix(*status), description_suffix(description))]
    Server {
        endpoint: Endpoint,
        code: String,
        description: Option<String>,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// An HTTP error status without a usable OAuth error body.
    #[error("{endpoint} answered HTTP {status}")]
    Http {
        endpoint: Endpoint,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("{endpoint} did not answer within {after:?}")]
    Timeout { endpoint: Endpoint, after: Duration },
    /// Refused, reset or dropped connections and other transport failures.
    #[error("cannot talk to the {endpoint}: {reason}")]
    Transport { endpoint: Endpoint, reason: String },
    #[error("the {endpoint} sent an unusable response: {reason}")]
    Malformed { endpoint: Endpoint, reason: String },
    #[error(
        "authorization server metadata names issuer {found}, but it was fetched for {expected}; \
         refusing to use it (RFC 8414 §3.3)"
    )]
    IssuerMismatch { expected: String, found: String },
    #[error(
        "the protected resource metadata is for {resource}, not for {server_url}; refusing to \
         authorize (RFC 9728 §3.3)"
    )]
    ResourceMismatch {
        server_url: String,
        resource: String,
    },
    /// Discovery found something unusable (no PKCE S256, no endpoints...).
    #[error("{0}")]
    Discovery(String),
    #[error(
        "no client identity for {issuer}: it offers no dynamic registration; configure a client ID \
         (--client-id, or oauth.client_id in the config)"
    )]
    NoClientIdentity { issuer: String },
    /// The server issued a token that had already expired (expires_in <= 0).
    #[error("the {endpoint} issued a token that is already expired")]
    TokenAlreadyExpired {
        endpoint: Endpoint,
        rotated_refresh_token: Option<oauth2::RefreshToken>,
    },
    #[error(
        "refusing insecure URL {url}: OAuth endpoints must use https (plain http only on loopback)"
    )]
    InsecureUrl { url: String },
    /// The redirect never arrived, or arrived unusable.
    #[error("{0}")]
    Callback(String),
    #[error("the browser could not be opened: {0}")]
    Browser(String),
    #[error("authorization was retried {attempts} times without success (step-up limit)")]
    TooManyAuthorizations { attempts: u32 },
    #[error(
        "the authorization server {issuer} offers no device authorization endpoint (RFC 8628): log \
         in with the browser instead (without --device-code / oauth.device_code)"
    )]
    DeviceGrantUnsupported { issuer: String },
    #[error("the device login was denied at {verification_uri}; start the login again to retry")]
    DeviceAccessDenied { verification_uri: String },
    #[error(
        "the device code expired after {after:?} before the login was approved; start the login again for a new code"
    )]
    DeviceCodeExpired { after: Duration },
    #[error("the device login was polled {polls} times without an answer; start it again")]
    TooManyPolls { polls: u32 },
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

fn description_suffix(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// An OAuth error code (RFC 6749 §5.2 and §4.1.2.1, RFC 8628 §3.5, RFC 7591 §3.2.2, RFC 8707
/// §2, RFC 9449 §7), every code this client knows by name and every other one as `Extension`,
/// as oauth2-rs's `BasicErrorResponseType` does. Decisions match on this, never on the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    AccessDenied,
    UnsupportedResponseType,
    ServerError,
    TemporarilyUnavailable,
    InvalidTarget,
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    InvalidClientMetadata,
    InvalidRedirectUri,
    InvalidDpopProof,
    UseDpopNonce,
    /// A code no specification above defines: it says nothing by itself (the HTTP status does).
    Extension(String),
}

/// What an error code says about the request that drew it: the one table both of the
/// decisions read ([`OAuthError::class`] for a one-shot call, and the daemon's refresh
/// classifier, `upstream::failure::RefreshFailure::classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeMeaning {
    /// The grant presented (code, refresh token, device code) is dead: `invalid_grant`,
    /// `expired_token`.
    GrantDead,
    /// The client is unknown or refused: `invalid_client`, `unauthorized_client`.
    ClientRejected,
    /// The scope asked for is refused: `invalid_scope`.
    ScopeRejected,
    /// The server is busy or down: `server_error`, `temporarily_unavailable`, `slow_down`.
    RetryLater,
    /// This request was refused for a reason that says nothing about the grant or the client
    /// (`invalid_request`, `unsupported_grant_type`, `access_denied`, ...): sending the same
    /// request again cannot succeed, but the credentials behind it may still be good.
    RequestRefused,
    /// The code alone says nothing (a device login's `authorization_pending`, a DPoP nonce
    /// demand, an extension code): the HTTP status decides.
    SaysNothing,
}

impl ErrorCode {
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "invalid_request" => ErrorCode::InvalidRequest,
            "invalid_client" => ErrorCode::InvalidClient,
            "invalid_grant" => ErrorCode::InvalidGrant,
            "unauthorized_client" => ErrorCode::UnauthorizedClient,
            "unsupported_grant_type" => ErrorCode::UnsupportedGrantType,
            "invalid_scope" => ErrorCode::InvalidScope,
            "access_denied" => ErrorCode::AccessDenied,
            "unsupported_response_type" => ErrorCode::UnsupportedResponseType,
            "server_error" => ErrorCode::ServerError,
            "temporarily_unavailable" => ErrorCode::TemporarilyUnavailable,
            "invalid_target" => ErrorCode::InvalidTarget,
            "authorization_pending" => ErrorCode::AuthorizationPending,
            "slow_down" => ErrorCode::SlowDown,
            "expired_token" => ErrorCode::ExpiredToken,
            "invalid_client_metadata" => ErrorCode::InvalidClientMetadata,
            "invalid_redirect_uri" => ErrorCode::InvalidRedirectUri,
            "invalid_dpop_proof" => ErrorCode::InvalidDpopProof,
            "use_dpop_nonce" => ErrorCode::UseDpopNonce,
            other => ErrorCode::Extension(other.to_string()),
        }
    }

    pub fn meaning(&self) -> CodeMeaning {
        use CodeMeaning::*;
        match self {
            ErrorCode::InvalidGrant | ErrorCode::ExpiredToken => GrantDead,
            ErrorCode::InvalidClient | ErrorCode::UnauthorizedClient => ClientRejected,
            ErrorCode::InvalidScope => ScopeRejected,
            ErrorCode::ServerError | ErrorCode::TemporarilyUnavailable | ErrorCode::SlowDown => {
                RetryLater
            }
            ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedGrantType
            | ErrorCode::UnsupportedResponseType
            | ErrorCode::InvalidTarget
            | ErrorCode::AccessDenied
            | ErrorCode::InvalidClientMetadata
            | ErrorCode::InvalidRedirectUri => RequestRefused,
            ErrorCode::AuthorizationPending
            | ErrorCode::InvalidDpopProof
            | ErrorCode::UseDpopNonce
            | ErrorCode::Extension(_) => SaysNothing,
        }
    }
}

/// An HTTP status that means "later": 5xx, 429, 408.
pub fn transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

impl OAuthError {
    pub fn class(&self) -> ErrorClass {
        use OAuthError::*;
        let transient = |retry_after: &Option<Duration>| ErrorClass::Transient {
            retry_after: *retry_after,
        };
        match self {
            Server {
                code,
                status,
                retry_after,
                ..
            } => match ErrorCode::parse(code).meaning() {
                CodeMeaning::RetryLater => transient(retry_after),
                CodeMeaning::SaysNothing if status.is_some_and(transient_status) => {
                    transient(retry_after)
                }
                CodeMeaning::GrantDead
                | CodeMeaning::ClientRejected
                | CodeMeaning::ScopeRejected
                | CodeMeaning::RequestRefused
                | CodeMeaning::SaysNothing => ErrorClass::Permanent,
            },
            Http {
                status,
                retry_after,
                ..
            } if transient_status(*status) => transient(retry_after),
            Http { .. } => ErrorClass::Permanent,
            Timeout { .. } | Transport { .. } | Malformed { .. } | TokenAlreadyExpired { .. } => {
                ErrorClass::Transient { retry_after: None }
            }
            IssuerMismatch { .. }
            | ResourceMismatch { .. }
            | Discovery(_)
            | NoClientIdentity { .. }
            | InsecureUrl { .. }
            | Callback(_)
            | Browser(_)
            | TooManyAuthorizations { .. }
            | DeviceGrantUnsupported { .. }
            | DeviceAccessDenied { .. }
            | DeviceCodeExpired { .. }
            | TooManyPolls { .. } => ErrorClass::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self.class(), ErrorClass::Transient { .. })
    }

    /// The OAuth error code, where the server sent one.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            OAuthError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The OAuth error code as a value to match on, where the server sent one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.oauth_code().map(ErrorCode::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, status: Option<u16>) -> OAuthError {
        OAuthError::Server {
            endpoint: Endpoint::Token,
            code: code.into(),
            description: None,
            status,
            retry_after: None,
        }
    }

    #[test]
    fn the_classification_table() {
        let permanent = [
            server("invalid_grant", Some(400)),
            server("invalid_client", Some(401)),
            server("unauthorized_client", Some(400)),
            server("invalid_scope", Some(400)),
            server("invalid_grant", Some(503)),
            server("something_new", Some(400)),
            OAuthError::Http {
                endpoint: Endpoint::Token,
                status: 404,
                retry_after: None,
            },
            OAuthError::IssuerMismatch {
                expected: "a".into(),
                found: "b".into(),
            },
            OAuthError::ResourceMismatch {
                server_url: "a".into(),
                resource: "b".into(),
            },
            OAuthError::Discovery("no S256".into()),
            OAuthError::NoClientIdentity { issuer: "i".into() },
            OAuthError::InsecureUrl {
                url: "http://x".into(),
            },
        ];
        for e in permanent {
            assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
        }
        let wait = Some(Duration::from_secs(3));
        let transient = [
            (server("server_error", Some(500)), None),
            (server("temporarily_unavailable", Some(503)), None),
            (server("something_new", Some(502)), None),
            (
                OAuthError::Server {
                    endpoint: Endpoint::Token,
                    code: "temporarily_unavailable".into(),
                    description: None,
                    status: Some(429),
                    retry_after: wait,
                },
                wait,
            ),
            (
                OAuthError::Http {
                    endpoint: Endpoint::Token,
                    status: 429,
                    retry_after: wait,
                },
                wait,
            ),
            (
                OAuthError::Http {
                    endpoint: Endpoint::Token,
                    status: 503,
                    retry_after: None,
                },
                None,
            ),
            (
                OAuthError::Timeout {
                    endpoint: Endpoint::Token,
                    after: Duration::from_secs(1),
                },
                None,
            ),
            (
                OAuthError::Transport {
                    endpoint: Endpoint::Token,
                    reason: "connection refused".into(),
                },
                None,
            ),
            (
                OAuthError::Malformed {
                    endpoint: Endpoint::Token,
                    reason: "not JSON".into(),
                },
                None,
            ),
            (
                OAuthError::TokenAlreadyExpired {
                    endpoint: Endpoint::Token,
                    rotated_refresh_token: None,
                },
                None,
            ),
        ];
        for (e, retry_after) in transient {
            assert_eq!(e.class(), ErrorClass::Transient { retry_after }, "{e}");
        }
    }

    #[test]
    fn codes_parse_to_their_names_and_unknown_ones_are_extensions() {
        assert_eq!(ErrorCode::parse("invalid_grant"), ErrorCode::InvalidGrant);
        assert_eq!(ErrorCode::parse("use_dpop_nonce"), ErrorCode::UseDpopNonce);
        assert_eq!(
            ErrorCode::parse("something_new"),
            ErrorCode::Extension("something_new".into())
        );
        assert_eq!(
            server("invalid_request", Some(400)).error_code(),
            Some(ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn messages_name_the_endpoint_and_the_code() {
        let e = OAuthError::Server {
            endpoint: Endpoint::Token,
            code: "invalid_grant".into(),
            description: Some("refresh token expired".into()),
            status: Some(400),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "token endpoint answered invalid_grant (HTTP 400): refresh token expired"
        );
    }
}
