//! Why things fail, as values the machine decides on and callers match on: why a refresh
//! failed ([`RefreshFailure`], with the one classifier from an OAuth error to it), why a
//! server needs a login ([`LoginReason`]) and why a caller gets no token ([`Failure`]).

use serde::Serialize;

use crate::clock::Millis;
use crate::oauth::OAuthError;
use crate::oauth::client_identity::ClientSource;
use crate::oauth::error::{CodeMeaning, ErrorCode, transient_status};

/// The longest `Retry-After` honoured: a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Millis = 3_600_000;

/// Why a server needs a browser login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum LoginReason {
    NoStoredToken,
    /// The access token expired (or was refused) and there is no refresh token.
    NoRefreshToken,
    /// The authorization server said the refresh token is dead (`invalid_grant`).
    RefreshTokenRejected {
        error: String,
    },
    /// Refreshing failed for longer than the retry ceiling.
    RetryCeiling {
        error: String,
    },
    /// The last browser login failed, timed out or was abandoned.
    LoginFailed {
        error: String,
    },
    /// The upstream answered 403 `insufficient_scope`: a login for `scope` (the union of the
    /// granted and the demanded scopes) is needed.
    InsufficientScope {
        scope: String,
    },
    /// As `InsufficientScope`, but `max_step_ups` logins for more scope did not satisfy the
    /// server: no more step-ups until a token lives to its proactive refresh or a login is
    /// asked for explicitly.
    StepUpLimit {
        scope: String,
        logins: u32,
    },
    /// The protected resource names another authorization server now (SEP-2352): the tokens
    /// and client of the old one are of no use there.
    AuthorizationServerMoved {
        issuer: String,
    },
    /// The authorization server rejected the dynamically registered client, and a login (not
    /// a new registration before a refresh) registers a new one (`Policy::reregister` off).
    ClientRejected {
        error: String,
    },
    /// `Policy::max_logins` logins were made already (one `connect` run).
    LoginLimit {
        logins: u32,
    },
}

impl std::fmt::Display for LoginReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginReason::NoStoredToken => f.write_str("no stored token"),
            LoginReason::NoRefreshToken => {
                f.write_str("the access token is no longer usable and there is no refresh token")
            }
            LoginReason::RefreshTokenRejected { error } => {
                write!(f, "the refresh token was rejected ({error})")
            }
            LoginReason::RetryCeiling { error } => {
                write!(
                    f,
                    "refreshing kept failing past the retry ceiling ({error})"
                )
            }
            LoginReason::LoginFailed { error } => write!(f, "the last login failed ({error})"),
            LoginReason::InsufficientScope { scope } => {
                write!(f, "the server needs the scope \"{scope}\"")
            }
            LoginReason::StepUpLimit { scope, logins } => write!(
                f,
                "the server still refuses for lack of scope after {logins} logins for more scope \
                 (\"{scope}\"); run a login to ask again"
            ),
            LoginReason::AuthorizationServerMoved { issuer } => {
                write!(f, "the resource moved to the authorization server {issuer}")
            }
            LoginReason::ClientRejected { error } => write!(
                f,
                "the authorization server rejected the registered client ({error}); a login registers a new one"
            ),
            LoginReason::LoginLimit { logins } => {
                write!(f, "{logins} logins were made already, the most allowed")
            }
        }
    }
}

/// Why a refresh failed, as far as the machine's decision goes.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshFailure {
    /// 5xx, 429, timeouts, dropped connections, malformed bodies: back off, keep everything.
    Transient { retry_after: Option<Millis> },
    /// An error that says nothing about the refresh token (a firewall's HTML 403, a proxy's
    /// 404, `invalid_request`, a missing client row): retried slowly, never a reason to drop it.
    Unexplained,
    /// `invalid_grant`: the refresh token is dead.
    RefreshTokenDead,
    /// `invalid_client`; `registered`: the client was dynamically registered (not configured).
    ClientRejected { registered: bool },
    /// `invalid_scope`.
    ScopeRejected,
    /// Under the flow lock the stored token was gone: another process logged out.
    TokenGone,
    /// The token was refused and the resource now names another authorization server than
    /// the one that issued it (`issuer`: the new one).
    AuthorizationServerMoved { issuer: String },
    /// The token the refresh started from has no refresh token.
    NoRefreshToken,
    /// The refresh token is bound to a DPoP key (RFC 9449) that cannot be used any more.
    DpopKeyUnusable,
    /// No client identity is known to refresh with (no stored client row).
    NoClient,
}

impl RefreshFailure {
    /// What the machine should make of a refresh that failed with `e`; `source`: where the
    /// client it presented came from. The one classifier, for the daemon and `connect` alike.
    /// Only a dead grant (`invalid_grant`) says the refresh token is dead; an error that says
    /// nothing about it never costs it (slow retries instead). It reads the same table as
    /// [`OAuthError::class`], the one-shot view: a refused request (`invalid_request`) is
    /// permanent for the request, `Unexplained` for the refresh token.
    pub fn classify(e: &OAuthError, source: Option<ClientSource>) -> RefreshFailure {
        let retry_after = |r: &Option<std::time::Duration>| {
            r.map(|d| d.as_millis().min(MAX_RETRY_AFTER as u128) as Millis)
        };
        match e {
            OAuthError::Server {
                code,
                status,
                retry_after: after,
                ..
            } => match ErrorCode::parse(code).meaning() {
                CodeMeaning::GrantDead => RefreshFailure::RefreshTokenDead,
                CodeMeaning::ClientRejected => RefreshFailure::ClientRejected {
                    registered: source == Some(ClientSource::Registered),
                },
                CodeMeaning::ScopeRejected => RefreshFailure::ScopeRejected,
                CodeMeaning::RetryLater => RefreshFailure::Transient {
                    retry_after: retry_after(after),
                },
                CodeMeaning::RequestRefused | CodeMeaning::SaysNothing
                    if status.is_some_and(transient_status) =>
                {
                    RefreshFailure::Transient {
                        retry_after: retry_after(after),
                    }
                }
                CodeMeaning::RequestRefused | CodeMeaning::SaysNothing => {
                    RefreshFailure::Unexplained
                }
            },
            OAuthError::Http {
                status,
                retry_after: after,
                ..
            } if transient_status(*status) => RefreshFailure::Transient {
                retry_after: retry_after(after),
            },
            OAuthError::Http { .. } => RefreshFailure::Unexplained,
            OAuthError::Timeout { .. }
            | OAuthError::Transport { .. }
            | OAuthError::Malformed { .. }
            | OAuthError::TokenAlreadyExpired { .. } => {
                RefreshFailure::Transient { retry_after: None }
            }
            // Errors of discovery, registration or a login: nothing about the refresh token.
            OAuthError::IssuerMismatch { .. }
            | OAuthError::ResourceMismatch { .. }
            | OAuthError::Discovery(_)
            | OAuthError::NoClientIdentity { .. }
            | OAuthError::InsecureUrl { .. }
            | OAuthError::Callback(_)
            | OAuthError::Browser(_)
            | OAuthError::TooManyAuthorizations { .. }
            | OAuthError::DeviceGrantUnsupported { .. }
            | OAuthError::DeviceAccessDenied { .. }
            | OAuthError::DeviceCodeExpired { .. }
            | OAuthError::TooManyPolls { .. } => RefreshFailure::Unexplained,
        }
    }
}

/// Why a caller gets no token, as a stable, serializable value.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    #[error("re-authentication required: {reason}")]
    NeedsLogin { reason: LoginReason },
    #[error("refreshing is backing off after failures ({last_error}); next attempt at {}", clock(*retry_at))]
    BackingOff {
        retry_at: Millis,
        last_error: String,
    },
    #[error(
        "refreshing keeps failing ({last_error}); next attempt at {}, a login is needed after {}",
        clock(*retry_at),
        clock(*until)
    )]
    Retrying {
        retry_at: Millis,
        until: Millis,
        last_error: String,
    },
    #[error(
        "the authorization server rejected the configured client ({error}); check oauth.client_id \
         and oauth.client_secret in the config"
    )]
    ClientRejected { error: String },
    #[error("the login failed: {error}")]
    LoginFailed { error: String },
    #[error("logged out; run a login")]
    LoggedOut,
    /// A 403 that more scope would not cure.
    #[error("forbidden: {error}")]
    Forbidden { error: String },
    #[error("the token store failed: {error}")]
    Store { error: String },
    #[error("the server's actor stopped")]
    Stopped,
}

impl Failure {
    /// A 403 `insufficient_scope` that demands nothing beyond `granted`: a login would bring
    /// the same token again (the daemon and `connect` say it alike).
    pub fn scope_already_granted(granted: Option<&str>) -> Failure {
        Failure::Forbidden {
            error: format!(
                "the server answered 403 insufficient_scope but asks for no scope beyond the granted \"{}\"",
                granted.unwrap_or_default()
            ),
        }
    }
}

/// A time for people: RFC 3339 in UTC, to the second.
pub fn clock(at: Millis) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::Endpoint;
    use std::time::Duration;

    fn server(code: &str, status: u16) -> OAuthError {
        OAuthError::Server {
            endpoint: Endpoint::Token,
            code: code.into(),
            description: None,
            status: Some(status),
            retry_after: None,
        }
    }

    #[test]
    fn the_refresh_classification_table() {
        let registered = Some(ClientSource::Registered);
        let rows = [
            (
                server("invalid_grant", 400),
                RefreshFailure::RefreshTokenDead,
            ),
            (
                server("invalid_grant", 503),
                RefreshFailure::RefreshTokenDead,
            ),
            (
                server("invalid_client", 401),
                RefreshFailure::ClientRejected { registered: true },
            ),
            (
                server("unauthorized_client", 400),
                RefreshFailure::ClientRejected { registered: true },
            ),
            (server("invalid_scope", 400), RefreshFailure::ScopeRejected),
            // Says nothing about the refresh token: kept, retried slowly.
            (server("invalid_request", 400), RefreshFailure::Unexplained),
            (
                server("unsupported_grant_type", 400),
                RefreshFailure::Unexplained,
            ),
            (server("something_new", 400), RefreshFailure::Unexplained),
            (
                server("something_new", 502),
                RefreshFailure::Transient { retry_after: None },
            ),
            (
                server("invalid_request", 503),
                RefreshFailure::Transient { retry_after: None },
            ),
            (
                server("temporarily_unavailable", 400),
                RefreshFailure::Transient { retry_after: None },
            ),
            (
                OAuthError::Http {
                    endpoint: Endpoint::Token,
                    status: 429,
                    retry_after: Some(Duration::from_secs(7)),
                },
                RefreshFailure::Transient {
                    retry_after: Some(7_000),
                },
            ),
            (
                OAuthError::Http {
                    endpoint: Endpoint::Token,
                    status: 403,
                    retry_after: None,
                },
                RefreshFailure::Unexplained,
            ),
            (
                OAuthError::Timeout {
                    endpoint: Endpoint::Token,
                    after: Duration::from_secs(1),
                },
                RefreshFailure::Transient { retry_after: None },
            ),
            (
                OAuthError::NoClientIdentity { issuer: "i".into() },
                RefreshFailure::Unexplained,
            ),
        ];
        for (e, expected) in rows {
            assert_eq!(RefreshFailure::classify(&e, registered), expected, "{e}");
        }
        assert_eq!(
            RefreshFailure::classify(&server("invalid_client", 401), None),
            RefreshFailure::ClientRejected { registered: false },
            "a configured or unknown client is not registered again"
        );
    }

    #[test]
    fn a_retry_after_beyond_an_hour_is_capped() {
        let e = OAuthError::Http {
            endpoint: Endpoint::Token,
            status: 503,
            retry_after: Some(Duration::from_secs(86_400)),
        };
        assert_eq!(
            RefreshFailure::classify(&e, None),
            RefreshFailure::Transient {
                retry_after: Some(MAX_RETRY_AFTER)
            }
        );
    }
}
