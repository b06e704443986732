//! Fault injection: a fault is armed for one target (an endpoint family) and fires on the
//! next `count` requests there, then the server recovers by itself.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    /// Token endpoint, `authorization_code` grant.
    Token,
    /// Token endpoint, `refresh_token` grant.
    Refresh,
    Authorize,
    Register,
    /// Both authorization server metadata and protected resource metadata documents.
    Metadata,
    Jwks,
    Mcp,
    /// Token endpoint, `client_credentials` grant.
    ClientCredentials,
    /// Token endpoint, RFC 8693 token exchange (the IdP's ID-JAG issuance).
    TokenExchange,
    /// Token endpoint, RFC 7523 `jwt-bearer` grant (ID-JAGs and workload JWTs).
    JwtBearer,
}

impl FaultTarget {
    /// Targets whose successful answer is a token response (the token-shape kinds apply).
    pub fn issues_tokens(self) -> bool {
        matches!(
            self,
            FaultTarget::Token
                | FaultTarget::Refresh
                | FaultTarget::ClientCredentials
                | FaultTarget::TokenExchange
                | FaultTarget::JwtBearer
        )
    }
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    InvalidGrant,
    InvalidClient,
    InvalidScope,
    /// OAuth error JSON `server_error` with HTTP 500.
    ServerError,
    /// OAuth error JSON `temporarily_unavailable` with HTTP 503.
    TemporarilyUnavailable,
    /// HTTP 429 with `Retry-After` (seconds: `delay_ms` rounded up, at least 1).
    RateLimited,
    /// Waits `delay_ms`, then answers normally.
    Slow,
    /// Never answers.
    Hang,
    /// HTTP 200 with a truncated JSON body.
    MalformedJson,
    /// A token response without `access_token` (token/refresh only).
    MissingAccessToken,
    /// A token response with `expires_in: 0` and a JWT that expires at once (token/refresh only).
    ExpiresInZero,
    /// A token response without `expires_in` (token/refresh only).
    ExpiresInMissing,
    /// A token response announcing the usual `expires_in`, but whose JWT `exp` is a minute in
    /// the past: only the resource server notices (token/refresh only).
    AlreadyExpired,
    /// Closes the TCP connection without any response.
    DropConnection,
    /// HTTP 403 `insufficient_scope` naming every known scope, whatever the token holds
    /// (mcp only): a server whose step-up can never be satisfied.
    InsufficientScope,
    /// (metadata only) The authorization server metadata names another issuer than the one it
    /// is served for (RFC 8414 §3.3 says clients must refuse it).
    WrongIssuer,
    /// HTTP 403 with an HTML page and no OAuth error (a firewall or proxy in the way).
    HtmlForbidden,
    /// (token/refresh only) A hostile server: HTTP 500 `server_error` whose
    /// `error_description` and unknown JSON keys echo every secret the request carried
    /// (refresh token, code, PKCE verifier, client secret, the Authorization header), with an
    /// ESC sequence and a forged log line.
    EchoSecrets,
    /// OAuth error JSON `access_denied` with HTTP 400 (an IdP policy refusing an exchange).
    AccessDenied,
}

impl FaultKind {
    /// Kinds that change a successful token response rather than replace it.
    pub fn shapes_token_response(self) -> bool {
        matches!(
            self,
            FaultKind::MissingAccessToken
                | FaultKind::ExpiresInZero
                | FaultKind::ExpiresInMissing
                | FaultKind::AlreadyExpired
        )
    }

    /// The OAuth `error` code this kind answers with, where it is an OAuth error.
    pub fn oauth_error_code(self) -> Option<&'static str> {
        Some(match self {
            FaultKind::InvalidGrant => "invalid_grant",
            FaultKind::InvalidClient => "invalid_client",
            FaultKind::InvalidScope => "invalid_scope",
            FaultKind::ServerError => "server_error",
            FaultKind::TemporarilyUnavailable => "temporarily_unavailable",
            FaultKind::AccessDenied => "access_denied",
            _ => return None,
        })
    }

    pub const ALL: [FaultKind; 19] = [
        FaultKind::InvalidGrant,
        FaultKind::InvalidClient,
        FaultKind::InvalidScope,
        FaultKind::ServerError,
        FaultKind::TemporarilyUnavailable,
        FaultKind::RateLimited,
        FaultKind::Slow,
        FaultKind::Hang,
        FaultKind::MalformedJson,
        FaultKind::MissingAccessToken,
        FaultKind::ExpiresInZero,
        FaultKind::ExpiresInMissing,
        FaultKind::AlreadyExpired,
        FaultKind::DropConnection,
        FaultKind::InsufficientScope,
        FaultKind::WrongIssuer,
        FaultKind::HtmlForbidden,
        FaultKind::EchoSecrets,
        FaultKind::AccessDenied,
    ];
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(v.as_str().unwrap_or_default())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            let all: Vec<String> = FaultKind::ALL.iter().map(|k| k.to_string()).collect();
            format!(
                "unknown fault kind {s:?}; expected one of: {}",
                all.join(", ")
            )
        })
    }
}

/// One armed fault, as posted to `POST /control/faults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub target: FaultTarget,
    pub kind: FaultKind,
    /// How many requests it fires on before the server recovers; absent means until cleared.
    #[serde(default)]
    pub count: Option<u32>,
    /// Delay for `slow`; `Retry-After` for `rate_limited`.
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

impl Fault {
    pub fn new(target: FaultTarget, kind: FaultKind) -> Self {
        Fault {
            target,
            kind,
            count: None,
            delay_ms: None,
        }
    }

    pub fn times(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    pub fn delay_ms(mut self, delay_ms: u64) -> Self {
        self.delay_ms = Some(delay_ms);
        self
    }

    /// Refuses combinations that could never fire, so a test cannot arm a fault that does nothing.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind.shapes_token_response() && !self.target.issues_tokens() {
            return Err(format!(
                "fault kind {} only applies to the targets of token grants (token, refresh, client_credentials, token_exchange, jwt_bearer)",
                self.kind
            ));
        }
        if self.kind == FaultKind::InsufficientScope && self.target != FaultTarget::Mcp {
            return Err("fault kind insufficient_scope only applies to the mcp target".into());
        }
        if self.kind == FaultKind::WrongIssuer && self.target != FaultTarget::Metadata {
            return Err("fault kind wrong_issuer only applies to the metadata target".into());
        }
        if self.count == Some(0) {
            return Err(
                "count must be at least 1 (omit it to keep the fault until cleared)".into(),
            );
        }
        Ok(())
    }
}

/// The armed faults, one per target; a newer fault for a target replaces the older one.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    armed: HashMap<FaultTarget, Fault>,
}

impl FaultBook {
    pub fn arm(&mut self, fault: Fault) {
        self.armed.insert(fault.target, fault);
    }

    pub fn clear(&mut self) {
        self.armed.clear();
    }

    pub fn list(&self) -> Vec<Fault> {
        self.armed.values().cloned().collect()
    }

    /// Takes one firing of the fault armed for `target`, if any, disarming it when used up.
    #[cfg(test)]
    pub fn fire(&mut self, target: FaultTarget) -> Option<Fault> {
        self.fire_if(target, |_| true)
    }

    /// Like `fire`, but only for a fault whose kind `applies` (it stays armed otherwise).
    pub fn fire_if(
        &mut self,
        target: FaultTarget,
        applies: impl Fn(FaultKind) -> bool,
    ) -> Option<Fault> {
        let fault = self.armed.get_mut(&target).filter(|f| applies(f.kind))?;
        let fired = fault.clone();
        if let Some(count) = fault.count.as_mut() {
            *count -= 1;
            if *count == 0 {
                self.armed.remove(&target);
            }
        }
        Some(fired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_fault_fires_that_many_times_then_recovers() {
        let mut book = FaultBook::default();
        book.arm(Fault::new(FaultTarget::Refresh, FaultKind::ServerError).times(2));
        assert!(book.fire(FaultTarget::Token).is_none());
        assert_eq!(
            book.fire(FaultTarget::Refresh).unwrap().kind,
            FaultKind::ServerError
        );
        assert!(book.fire(FaultTarget::Refresh).is_some());
        assert!(book.fire(FaultTarget::Refresh).is_none());
    }

    #[test]
    fn an_uncounted_fault_fires_until_cleared() {
        let mut book = FaultBook::default();
        book.arm(Fault::new(FaultTarget::Mcp, FaultKind::Hang));
        for _ in 0..5 {
            assert!(book.fire(FaultTarget::Mcp).is_some());
        }
        book.clear();
        assert!(book.fire(FaultTarget::Mcp).is_none());
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.to_string().parse::<FaultKind>().unwrap(), kind);
        }
        let err = "bogus".parse::<FaultKind>().unwrap_err();
        assert!(err.contains("invalid_grant"), "{err}");
    }

    #[test]
    fn token_shape_kinds_are_refused_for_other_targets() {
        assert!(
            Fault::new(FaultTarget::Mcp, FaultKind::AlreadyExpired)
                .validate()
                .is_err()
        );
        assert!(
            Fault::new(FaultTarget::Refresh, FaultKind::AlreadyExpired)
                .validate()
                .is_ok()
        );
        assert!(
            Fault::new(FaultTarget::Token, FaultKind::Slow)
                .times(0)
                .validate()
                .is_err()
        );
    }
}
