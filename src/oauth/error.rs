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
        "authorization server metadata names issuer {found}, but it was fetched for {expected}; refusing to use it (RFC 8414 §3.3)"
    )]
    IssuerMismatch { expected: String, found: String },
    #[error(
        "the protected resource metadata is for {resource}, not for {server_url}; refusing to authorize (RFC 9728 §3.3)"
    )]
    ResourceMismatch {
        server_url: String,
        resource: String,
    },
    /// Discovery found something unusable (no PKCE S256, no endpoints...).
    #[error("{0}")]
    Discovery(String),
    #[error(
        "no client identity for {issuer}: it offers no dynamic registration; configure a client ID (--client-id, or oauth.client_id in the config)"
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
        "the authorization server {issuer} offers no device authorization endpoint (RFC 8628): log in with the browser instead (without --device-code / oauth.device_code)"
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

/// OAuth error codes after which the same request can never succeed.
const PERMANENT_CODES: &[&str] = &[
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "invalid_request",
    "unsupported_grant_type",
    "unsupported_response_type",
    "invalid_target",
    "access_denied",
    "invalid_client_metadata",
    "invalid_redirect_uri",
];

impl OAuthError {
    pub fn class(&self) -> ErrorClass {
        use OAuthError::*;
        match self {
            Server {
                code,
                status,
                retry_after,
                ..
            } => {
                if PERMANENT_CODES.contains(&code.as_str()) {
                    ErrorClass::Permanent
                } else if matches!(
                    code.as_str(),
                    "server_error" | "temporarily_unavailable" | "slow_down"
                ) || status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
                {
                    ErrorClass::Transient {
                        retry_after: *retry_after,
                    }
                } else {
                    ErrorClass::Permanent
                }
            }
            Http {
                status,
                retry_after,
                ..
            } => {
                if *status >= 500 || *status == 429 || *status == 408 {
                    ErrorClass::Transient {
                        retry_after: *retry_after,
                    }
                } else {
                    ErrorClass::Permanent
                }
            }
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
