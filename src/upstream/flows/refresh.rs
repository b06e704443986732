//! The refresh flow: under the server's lock, present the newest refresh token and save what
//! comes back. It stops at the first fact the machine must decide on: another process's
//! newer token in the store, no refresh token, no client, a resource that moved, an unusable
//! DPoP key, or the token endpoint's answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::RefreshToken;
use serde_json::json;
use tracing::Instrument;

use super::rows::{TokenRow, endpoint_from_stored, stored_client};
use super::{FlowContext, FlowOutcome, SaveError, failure_details, token_details};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::OAuthError;
use crate::oauth::client_identity::obtain_client;
use crate::oauth::discovery::{discover, protected_resource_metadata, same_issuer};
use crate::oauth::dpop::{self, Dpop};
use crate::oauth::scope::select_scope;
use crate::oauth::token::TokenEndpoint;
use crate::store::{Secret, StoredClient, StoredToken};
use crate::telemetry::flow_logger::{FlowKind, FlowStep};
use crate::upstream::flows::{Fence, Runtime, dpop_binding};
use crate::upstream::state::{RefreshFailure, RefreshPlan};

/// How long a refresh waits for another process's flow of the same server: a refresh is one
/// HTTP exchange, so a longer wait means that flow is stuck (its lease shows whose it is).
const REFRESH_LOCK_WAIT: Duration = Duration::from_secs(30);

/// What a refresh flow starts from.
pub struct RefreshRequest {
    /// The newest token this process holds.
    pub current: StoredToken,
    pub endpoint: Option<TokenEndpoint>,
    /// The machine's plan (re-register first, omit the scope, check the resource after a
    /// refusal, trust memory over a store that is behind).
    pub plan: RefreshPlan,
    /// The refusal's challenge (its `resource_metadata` says where to look).
    pub challenge: Option<BearerChallenge>,
    /// The actor's DPoP state for `current`'s key (its nonces), if the token is bound.
    pub dpop: Option<Dpop>,
}

fn failed(failure: RefreshFailure, error: String) -> FlowOutcome {
    FlowOutcome::RefreshFailed {
        failure,
        error,
        rotated_refresh_token: None,
        endpoint: None,
    }
}

pub async fn refresh(
    rt: Arc<Runtime>,
    config: Arc<UpstreamConfig>,
    flow_id: String,
    fence: Fence,
    request: RefreshRequest,
) -> FlowOutcome {
    let cx = FlowContext::new(&rt, &config, &flow_id, FlowKind::Refresh, &fence);
    run(&cx, request).instrument(cx.span()).await
}

async fn run(cx: &FlowContext<'_>, request: RefreshRequest) -> FlowOutcome {
    let RefreshRequest {
        current,
        endpoint,
        plan,
        challenge,
        dpop,
    } = request;
    cx.hook();
    cx.event(
        FlowStep::Started,
        json!({
            "token_endpoint": endpoint.as_ref().map(|e| e.token_endpoint.clone()),
            "reregister": plan.reregister,
            "omit_scope": plan.omit_scope,
        }),
    );
    let rt = cx.rt;
    let _slot = rt.scheduler.refresh_slot().await;
    // Claimed before any token request: on PostgreSQL the lease row (fenced, shared by every
    // instance), on SQLite the file lock; the token is re-read under it.
    let deadline = rt.refresh_timeout;
    let began = match cx.begin(REFRESH_LOCK_WAIT, deadline).await {
        Ok(began) => began,
        Err(e) => {
            return failed(
                RefreshFailure::Transient { retry_after: None },
                e.to_string(),
            );
        }
    };
    let _lock = began._lock;
    let start = match began.read {
        Ok(start) => start,
        Err(e) => {
            let error = format!("cannot read the token store: {e}");
            cx.finish(Some(error.clone())).await;
            return failed(RefreshFailure::Transient { retry_after: None }, error);
        }
    };
    // The newest refresh token wins: presenting an older one than the server last issued
    // revokes the whole family on servers that detect reuse. Unless the store is behind this
    // process (a failed save), what it holds under the lock is the newest.
    if !plan.store_behind
        && let Some(outcome) = store_moved_on(cx, start.token.as_ref(), &current).await
    {
        return outcome;
    }
    if let Some(mark) = &began.ambiguous {
        // The stored token is still the one this instance holds: nobody recorded an answer
        // to that refresh. Presenting it again is the only way on; a server that did rotate
        // it refuses it (`invalid_grant`), and the refused token alone is then dropped.
        tracing::warn!(
            ambiguous_flow = mark.flow_id.as_deref().unwrap_or("unknown"),
            ambiguous_since = mark.since,
            "an earlier refresh got no answer and no newer token was stored; presenting the stored refresh token again",
        );
    }
    let stored_client = start.client;
    let Some(refresh_token) = current.refresh_token.clone() else {
        cx.finish(Some("no refresh token".into())).await;
        return failed(RefreshFailure::NoRefreshToken, "no refresh token".into());
    };
    let issuer = current
        .issuer
        .clone()
        .or_else(|| stored_client.as_ref().map(|c| c.issuer.clone()));
    if plan.after_refusal
        && let Some(issuer) = issuer
        && let Some(moved_to) = moved_authorization_server(cx, challenge.as_ref(), &issuer).await
    {
        return resource_moved(cx, &issuer, moved_to, None).await;
    }
    let endpoint = endpoint.or_else(|| stored_client.as_ref().map(endpoint_from_stored));
    let (endpoint, registered) = match (endpoint, plan.reregister) {
        (Some(endpoint), false) => (endpoint, false),
        (None, false) => {
            let error = "no client identity is known to refresh with".to_string();
            cx.finish(Some(error.clone())).await;
            return failed(RefreshFailure::NoClient, error);
        }
        (old, true) => match reregister(cx, &current, old, stored_client.as_ref()).await {
            Ok(endpoint) => (endpoint, true),
            Err(outcome) => return outcome,
        },
    };
    // A token bound to a key is refreshed with proofs of that key (RFC 9449 §5): the one
    // stored with it, whichever process wrote it. A DPoP token stays one: a Bearer answer to
    // its refresh is refused.
    let bound = dpop::is_dpop_type(&current.token_type);
    let dpop = match dpop_binding(&current, dpop.as_ref()) {
        Ok(dpop) => dpop.map(|d| {
            let required = d.required() || bound;
            d.with_required(required)
        }),
        Err(e) => {
            let error = format!(
                "the stored DPoP key cannot be used ({e}): the refresh token is bound to it, so a login is needed"
            );
            tracing::warn!(error = %error, "refresh impossible");
            cx.event(FlowStep::Failed, json!({"error": error}));
            cx.finish(Some(error.clone())).await;
            return failed(RefreshFailure::DpopKeyUnusable, error);
        }
    };
    let call = Call {
        current: &current,
        endpoint,
        registered,
        omit_scope: plan.omit_scope,
        dpop,
    };
    present(
        cx,
        call,
        RefreshToken::new(refresh_token.expose().to_string()),
    )
    .await
}

/// Another process changed the stored token since this one was read: the store's is the
/// newest (the machine decides what to do with it), or, gone, it logged out.
async fn store_moved_on(
    cx: &FlowContext<'_>,
    stored: Option<&StoredToken>,
    current: &StoredToken,
) -> Option<FlowOutcome> {
    match stored {
        None => {
            tracing::info!("the stored token is gone: another process logged out");
            let reason = "the token was deleted by another process (logout)";
            cx.event(FlowStep::Adopted, json!({"reason": reason}));
            let error = "logged out by another process".to_string();
            cx.finish(Some(error.clone())).await;
            Some(failed(RefreshFailure::TokenGone, error))
        }
        Some(stored) if stored.access_token != current.access_token => {
            tracing::info!("another process refreshed meanwhile; its token is the newest");
            let reason = "another process refreshed meanwhile";
            cx.event(
                FlowStep::Adopted,
                json!({"reason": reason, "expires_at": stored.expires_at}),
            );
            cx.finish(None).await;
            Some(FlowOutcome::StoreAhead {
                token: stored.clone(),
            })
        }
        Some(_) => None,
    }
}

/// Registers a new client (the machine's plan: the server rejected ours, or none is known)
/// and stores it at once, so a later login uses it whatever the refresh says. A registration
/// that finds another authorization server than the token's ends the refresh: the resource
/// moved.
async fn reregister(
    cx: &FlowContext<'_>,
    current: &StoredToken,
    old: Option<TokenEndpoint>,
    stored: Option<&StoredClient>,
) -> Result<TokenEndpoint, FlowOutcome> {
    let reason = if old.is_some() {
        "the authorization server rejected the registered client"
    } else {
        "no stored client identity"
    };
    let (fresh, client) = match register_again(cx, old.as_ref(), stored).await {
        Ok(registered) => registered,
        Err(e) => {
            tracing::warn!(error = %e, "could not register a client to refresh with");
            cx.event(FlowStep::Failed, failure_details(&e, false, Duration::ZERO));
            cx.finish(Some(e.to_string())).await;
            return Err(failed(RefreshFailure::classify(&e, None), e.to_string()));
        }
    };
    cx.event(
        FlowStep::Registered,
        json!({"reason": reason, "client_id": fresh.client.client_id}),
    );
    // Discovery found another authorization server than the token's: the resource moved.
    // Its client is kept (under its own issuer) for the login there; this server's refresh
    // token is not presented to it.
    let moved_to = current
        .issuer
        .as_deref()
        .filter(|old| !same_issuer(&client.issuer, old))
        .map(|old| (old.to_string(), client.issuer.clone()));
    let saved = match cx.fence.is_current() {
        true => cx.rt.store.save_client(&client).await,
        false => Ok(()),
    };
    if let Err(e) = saved {
        tracing::warn!(error = %e, "the new client identity could not be stored");
    }
    match moved_to {
        Some((from, to)) => Err(resource_moved(cx, &from, to, Some(fresh)).await),
        None => Ok(fresh),
    }
}

/// What a refresh presents its refresh token with.
struct Call<'a> {
    current: &'a StoredToken,
    endpoint: TokenEndpoint,
    /// The client was registered by this flow (a login reuses it even if the refresh fails).
    registered: bool,
    omit_scope: bool,
    dpop: Option<Dpop>,
}

/// Presents the refresh token and saves what comes back (a rotated refresh token too, from a
/// failed answer: it must never be lost).
async fn present(cx: &FlowContext<'_>, call: Call<'_>, refresh_token: RefreshToken) -> FlowOutcome {
    let (current, endpoint, dpop) = (call.current, call.endpoint, call.dpop);
    let rt = cx.rt;
    let scope = if call.omit_scope {
        None
    } else {
        current.scope.as_deref()
    };
    let started = Instant::now();
    let now = rt.clock.system_time();
    let answer = endpoint
        .refresh(&rt.refresh_http, &refresh_token, scope, now, dpop.as_ref())
        .await;
    let set = match answer {
        Ok(set) => set,
        Err(e) => {
            if matches!(e, OAuthError::Timeout { .. }) {
                cx.mark_ambiguous(refresh_token.secret()).await;
            }
            let failure = RefreshFailure::classify(&e, Some(endpoint.client.source));
            let rotated = keep_rotated(cx, current, &e).await;
            let permanent = failure == RefreshFailure::RefreshTokenDead;
            // An abandoned refresh may have been processed: the next attempt (after the
            // backoff) presents the same refresh token, which a rotating server refuses.
            let error = match &e {
                OAuthError::Timeout { .. } => format!(
                    "{e}; the server may have consumed the refresh token (a rotating server then \
                     refuses it and a login follows)"
                ),
                _ => e.to_string(),
            };
            tracing::warn!(error = %error, failure = ?failure, "refresh failed");
            cx.event(
                FlowStep::Failed,
                failure_details(&e, permanent, started.elapsed()),
            );
            cx.finish(Some(error.clone())).await;
            return FlowOutcome::RefreshFailed {
                failure,
                error,
                rotated_refresh_token: rotated,
                endpoint: call.registered.then_some(endpoint),
            };
        }
    };
    let row = TokenRow {
        config: cx.config,
        resource: &endpoint.resource,
        issuer: current.issuer.clone(),
        flow_id: cx.flow_id,
        dpop: dpop.as_ref(),
    };
    let token = row.of(&set);
    let rotated = token.refresh_token != current.refresh_token;
    let saved = match cx.save(&token, None, true).await {
        Ok(()) => true,
        Err(SaveError::Fenced) => {
            tracing::info!("a logout overtook this refresh; its token is discarded");
            cx.finish(Some("overtaken by a logout".into())).await;
            return failed(RefreshFailure::TokenGone, "overtaken by a logout".into());
        }
        Err(SaveError::Store(e)) => {
            tracing::error!(
                error = %e,
                "the refreshed token could not be persisted; it is kept in memory and its save is retried",
            );
            // The flow's end was in the failed transaction: recorded on its own.
            cx.finish(None).await;
            false
        }
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        rotated,
        expires_at = token.expires_at,
        token_type = %token.token_type,
        "token refreshed"
    );
    let mut details = token_details(&token, saved, started.elapsed());
    details["rotated"] = rotated.into();
    cx.event(FlowStep::TokenObtained, details);
    FlowOutcome::Token {
        token,
        endpoint: Some(endpoint),
        saved,
        client: None,
    }
}

/// A failed answer that still rotated the refresh token (an already expired access token):
/// the rotated one is saved, fenced, and handed back.
async fn keep_rotated(
    cx: &FlowContext<'_>,
    current: &StoredToken,
    e: &OAuthError,
) -> Option<Secret> {
    let OAuthError::TokenAlreadyExpired {
        rotated_refresh_token: Some(rotated),
        ..
    } = e
    else {
        return None;
    };
    let rotated = Secret::new(rotated.secret().as_str());
    let token = StoredToken {
        refresh_token: Some(rotated.clone()),
        ..current.clone()
    };
    if let Err(SaveError::Store(e)) = cx.save(&token, None, false).await {
        tracing::error!(error = %e, "the rotated refresh token could not be persisted");
    }
    Some(rotated)
}

/// The refresh ends here: the resource trusts the authorization server `to`, not the token's
/// `from` (SEP-2352), so the refresh token is not presented anywhere; a login at `to` follows,
/// with `endpoint` (a client already registered there) where there is one.
async fn resource_moved(
    cx: &FlowContext<'_>,
    from: &str,
    to: String,
    endpoint: Option<TokenEndpoint>,
) -> FlowOutcome {
    let error = format!(
        "the resource now trusts the authorization server {to}, not {from}: a login there replaces \
         this server's tokens (with that server's own client)"
    );
    tracing::info!(
        from,
        to = %to,
        "the resource moved to another authorization server; its refresh token is not presented there",
    );
    cx.event(FlowStep::ResourceMoved, json!({"from": from, "to": to}));
    cx.finish(Some(error.clone())).await;
    FlowOutcome::RefreshFailed {
        failure: RefreshFailure::AuthorizationServerMoved { issuer: to },
        error,
        rotated_refresh_token: None,
        endpoint,
    }
}

/// After a refusal: the authorization server the resource names now, when it no longer lists
/// `issuer` (exact comparison, RFC 9207). A metadata read that fails says nothing: the refresh
/// goes ahead as usual.
async fn moved_authorization_server(
    cx: &FlowContext<'_>,
    challenge: Option<&BearerChallenge>,
    issuer: &str,
) -> Option<String> {
    match protected_resource_metadata(&cx.rt.http, &cx.config.url, challenge).await {
        Ok(Some(metadata)) => {
            let servers = &metadata.authorization_servers;
            let trusted = servers.is_empty() || servers.iter().any(|s| same_issuer(s, issuer));
            (!trusted).then(|| servers[0].clone())
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "could not re-read the protected resource metadata; refreshing as usual");
            None
        }
    }
}

/// Registers a fresh client at the server's authorization server (discovered again), for the
/// redirect URI of the old one, so a later login can reuse it.
async fn register_again(
    cx: &FlowContext<'_>,
    old: Option<&TokenEndpoint>,
    stored: Option<&StoredClient>,
) -> Result<(TokenEndpoint, StoredClient), OAuthError> {
    let (rt, config) = (cx.rt, cx.config);
    let discovery = discover(&rt.http, &config.url, None).await?;
    let redirect_uri = old
        .map(|e| e.redirect_uri.clone())
        .or_else(|| stored.map(|c| c.redirect_uri.clone()))
        .unwrap_or_else(|| format!("http://127.0.0.1:{}/callback", config.redirect_port));
    let scope = config
        .scope
        .clone()
        .or_else(|| select_scope(None, discovery.resource_scopes()));
    let client = obtain_client(
        &rt.http,
        &config.client,
        &discovery.authorization_server,
        &redirect_uri,
        scope.as_deref(),
    )
    .await?;
    let endpoint = TokenEndpoint::new(
        &discovery.authorization_server,
        client,
        redirect_uri,
        discovery.resource.clone(),
    );
    let stored = stored_client(config, &discovery, &endpoint);
    Ok((endpoint, stored))
}
