//! The grant flow: what a server with `oauth.grant` runs wherever another server would refresh
//! or log in. Under the server's lock (the same single flight across processes as a refresh)
//! it re-reads the store, stops at another process's newer token, discovers the server's
//! authorization server, runs the configured grant once ([`credentials::obtain`]: every secret
//! read now, so a rotated workload token or ID token file is picked up) and saves the token.
//! No refresh token is kept: renewal is this flow again, when the machine says so.
//!
//! A refused credential (`invalid_client`, an IdP's policy denial, a key that cannot sign, a
//! secret file that cannot be read) is reported as a rejected configured client: the machine
//! waits in `client_rejected` and tries again later; it never turns into a browser login.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::Instrument;

use super::rows::{TokenRow, rebased};
use super::{FlowContext, FlowOutcome, token_details};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::discovery::discover;
use crate::oauth::dpop::{self, Dpop};
use crate::oauth::error::ErrorClass;
use crate::oauth::grants::credentials::{self, GrantConfig, GrantTarget};
use crate::oauth::grants::{GrantError, TokenServer};
use crate::oauth::scope::select_scope;
use crate::oauth::token::TokenSet;
use crate::store::StoredToken;
use crate::telemetry::flow_logger::{FlowKind, FlowStep};
use crate::upstream::flows::{Fence, Runtime};
use crate::upstream::state::{MAX_RETRY_AFTER, Millis, RefreshFailure};

/// How long a grant waits for another process's flow of the same server: a grant is one or
/// two HTTP exchanges, so a longer wait means that flow is stuck.
const GRANT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// What a grant flow starts from.
pub struct GrantRequest {
    /// The token this process holds, if any (the store's newer one is reported instead).
    pub current: Option<StoredToken>,
    /// The upstream's last challenge (its `resource_metadata` and `scope`).
    pub challenge: Option<BearerChallenge>,
    /// The actor's DPoP key, proven when the server (or `oauth.dpop`) asks for DPoP.
    pub dpop: Dpop,
    /// The machine asked for a login: failures are reported as a failed login (the machine
    /// hears about the flow it started), and still never open a browser.
    pub as_login: bool,
}

pub async fn grant(
    rt: Arc<Runtime>,
    config: Arc<UpstreamConfig>,
    flow_id: String,
    fence: Fence,
    request: GrantRequest,
) -> FlowOutcome {
    let kind = if request.as_login {
        FlowKind::Login
    } else {
        FlowKind::Refresh
    };
    let cx = FlowContext::new(&rt, &config, &flow_id, kind, &fence);
    let as_login = request.as_login;
    match run(&cx, request).instrument(cx.span()).await {
        FlowOutcome::RefreshFailed { error, .. } if as_login => FlowOutcome::LoginFailed {
            error,
            dynamic_client: false,
        },
        outcome => outcome,
    }
}

/// What the machine makes of a failed grant: a refused credential waits as a rejected
/// configured client; anything else is transient (backoff, `Retry-After` honoured).
pub fn failure_of(e: &GrantError) -> RefreshFailure {
    match e.class() {
        ErrorClass::Permanent => RefreshFailure::ClientRejected { registered: false },
        ErrorClass::Transient { retry_after } => RefreshFailure::Transient {
            retry_after: retry_after.map(|d| (d.as_millis() as Millis).min(MAX_RETRY_AFTER)),
        },
    }
}

async fn run(cx: &FlowContext<'_>, request: GrantRequest) -> FlowOutcome {
    let Some(grant) = cx.config.grant.as_ref() else {
        return FlowOutcome::refresh_failed(
            RefreshFailure::NoClient,
            "the server has no oauth.grant".into(),
        );
    };
    cx.hook();
    cx.event(FlowStep::Started, json!({"grant": grant.kind()}));
    let (_lock, start) = match cx.lock_and_begin(GRANT_LOCK_WAIT).await {
        Ok(locked) => locked,
        Err(outcome) => return outcome,
    };
    if let Some(outcome) = store_moved_on(cx, start.token, request.current.as_ref()).await {
        return outcome;
    }
    let started = Instant::now();
    match obtain(cx, grant, request.challenge.as_ref(), request.dpop).await {
        Ok((set, issuer, resource, dpop)) => {
            let token = stored(cx, &set, issuer, resource, dpop.as_ref());
            saved(cx, token, started).await
        }
        Err(e) => {
            let failure = failure_of(&e);
            let error = e.to_string();
            tracing::warn!(error = %error, failure = ?failure, grant = grant.kind(), "grant failed");
            let class = if e.is_transient() {
                "transient"
            } else {
                "permanent"
            };
            cx.event(
                FlowStep::Failed,
                json!({
                    "grant": grant.kind(),
                    "error_code": e.oauth_code(),
                    "error": error,
                    "class": class,
                    "flow_ms": started.elapsed().as_millis() as u64,
                }),
            );
            cx.finish(Some(error.clone())).await;
            FlowOutcome::refresh_failed(failure, error)
        }
    }
}

/// Under the lock: a token another process stored since this one's is the newest (the
/// machine decides whether it serves); a token gone that this process held is a logout.
async fn store_moved_on(
    cx: &FlowContext<'_>,
    stored: Option<StoredToken>,
    current: Option<&StoredToken>,
) -> Option<FlowOutcome> {
    let held = current.map(|t| &t.access_token);
    match stored {
        Some(stored) if Some(&stored.access_token) != held => {
            tracing::info!("another process obtained a token meanwhile; its token is the newest");
            cx.event(
                FlowStep::Adopted,
                json!({"reason": "another process obtained a token meanwhile", "expires_at": stored.expires_at}),
            );
            cx.finish(None).await;
            Some(FlowOutcome::StoreAhead { token: stored })
        }
        None if held.is_some() => {
            let error = "logged out by another process".to_string();
            cx.event(FlowStep::Adopted, json!({"reason": error}));
            cx.finish(Some(error.clone())).await;
            Some(FlowOutcome::refresh_failed(
                RefreshFailure::TokenGone,
                error,
            ))
        }
        _ => None,
    }
}

/// Discovery, then the grant: the token set, the issuer and resource it was obtained for, and
/// the DPoP key it is bound to (if the server asked for DPoP).
async fn obtain(
    cx: &FlowContext<'_>,
    grant: &GrantConfig,
    challenge: Option<&BearerChallenge>,
    dpop: Dpop,
) -> Result<(TokenSet, String, String, Option<Dpop>), GrantError> {
    let rt = cx.rt;
    let discovery = discover(&rt.http, &cx.config.url, challenge).await?;
    let dpop = dpop::policy(cx.config.dpop, &discovery, challenge).map(|required| {
        let required = required || dpop.required();
        dpop.with_required(required)
    });
    let scope = cx.config.scope.clone().or_else(|| {
        select_scope(
            challenge.and_then(|c| c.scope.as_deref()),
            discovery.resource_scopes(),
        )
    });
    let target = GrantTarget {
        server: TokenServer::from(&discovery.authorization_server),
        resource: discovery.resource.clone(),
        scope,
    };
    let set = credentials::obtain(&rt.refresh_http, grant, &target, dpop.as_ref()).await?;
    Ok((
        rebased(set, rt.clock.system_time()),
        target.server.issuer,
        target.resource,
        dpop,
    ))
}

/// The row a grant's token is stored as: no refresh token (renewal is the grant), and the
/// DPoP key only for a token bound to it.
fn stored(
    cx: &FlowContext<'_>,
    set: &TokenSet,
    issuer: String,
    resource: String,
    dpop: Option<&Dpop>,
) -> StoredToken {
    let row = TokenRow {
        config: cx.config,
        resource: &resource,
        issuer: Some(issuer),
        flow_id: cx.flow_id,
        dpop: dpop.filter(|_| dpop::is_dpop_type(&set.token_type)),
    };
    StoredToken {
        refresh_token: None,
        ..row.of(set)
    }
}

/// Saves the grant's token (fenced; a failed save keeps it in memory, the machine retries
/// the save) and reports it.
async fn saved(cx: &FlowContext<'_>, token: StoredToken, started: Instant) -> FlowOutcome {
    let saved = match cx.save_obtained(&token, "granted").await {
        Ok(saved) => saved,
        Err(outcome) => return outcome,
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        expires_at = token.expires_at,
        token_type = %token.token_type,
        "token granted"
    );
    cx.event(
        FlowStep::TokenObtained,
        token_details(&token, saved, started.elapsed()),
    );
    FlowOutcome::Token {
        token,
        endpoint: None,
        saved,
        client: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::OAuthError;
    use crate::oauth::error::Endpoint;

    #[test]
    fn a_refused_credential_is_a_rejected_client_and_an_outage_is_transient() {
        let denied = GrantError::PolicyDenied {
            idp: "https://idp.example".into(),
            description: None,
        };
        assert_eq!(
            failure_of(&denied),
            RefreshFailure::ClientRejected { registered: false }
        );
        let busy = GrantError::OAuth(OAuthError::Http {
            endpoint: Endpoint::Token,
            status: 503,
            retry_after: Some(Duration::from_secs(7)),
        });
        assert_eq!(
            failure_of(&busy),
            RefreshFailure::Transient {
                retry_after: Some(7_000)
            }
        );
    }
}
