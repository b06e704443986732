//! The two flows an upstream actor runs, as plain async functions: a refresh and a browser
//! login. Each holds the server's cross-process lock for its whole length, records itself in
//! `oauth_flows`, re-reads the store once it holds the lock (another process may have done the
//! work meanwhile), and persists what it obtains before returning it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use actix::Addr;
use oauth2::RefreshToken;
use serde_json::json;
use tracing::Instrument;

use super::state::{Millis, RefreshFailure, RefreshPlan, TokenFacts};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::client_identity::{
    ClientCredentials, ClientSource, TokenAuthMethod, obtain_client,
};
use crate::oauth::device::DevicePrompt;
use crate::oauth::discovery::{Discovery, discover, protected_resource_metadata, same_issuer};
use crate::oauth::dpop::{self, BadKey, Dpop, DpopKey};
use crate::oauth::http::OAuthHttp;
use crate::oauth::login::{LoginSettings, browser_login};
use crate::oauth::scope::{select_scope, union, with_offline_access};
use crate::oauth::token::{TokenEndpoint, TokenSet};
use crate::oauth::{ErrorClass, OAuthError};
use crate::scheduler::Scheduler;
use crate::store::db::{FlowStart, now_ms};
use crate::store::{StoreError, StoredClient, StoredDpopKey, StoredToken, TokenRegistry, lock};
use crate::telemetry::flow_logger::{FlowEvent, FlowLogger};

/// How long a refresh waits for another process's flow of the same server: a refresh is one
/// HTTP exchange, so a longer wait means that flow is stuck (its lease shows whose it is).
const REFRESH_LOCK_WAIT: Duration = Duration::from_secs(30);

/// What every flow of every server shares.
pub struct Runtime {
    pub registry: TokenRegistry,
    pub http: OAuthHttp,
    /// The same client with the longer refresh deadline.
    pub refresh_http: OAuthHttp,
    pub lock_dir: PathBuf,
    pub browser: BrowserLauncher,
    /// Who runs flows here, as recorded in `oauth_flows.owner`.
    pub owner: String,
    pub login_timeout: Duration,
    /// Where flow events go (sequence numbers, elapsed time, the bounded trace buffer).
    pub flow_log: Addr<FlowLogger>,
    pub flow_hook: Option<FlowHook>,
    /// Every deadline, and the bound on how many refreshes run at once across all servers (a
    /// restart with thousands of expired tokens must not open thousands of connections and
    /// lock files at once).
    pub scheduler: Scheduler,
    /// The multi-threaded runtime that runs flows' HTTP and TLS, off the actors' thread.
    pub flow_threads: tokio::runtime::Handle,
}

/// A test-only hook run at the start of every flow with `(server, kind)`.
#[derive(Clone)]
pub struct FlowHook(pub Arc<FlowHookFn>);

pub type FlowHookFn = dyn Fn(&str, &str) + Send + Sync;

impl std::fmt::Debug for FlowHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowHook")
    }
}

impl Runtime {
    /// Records one event of a flow. Details must already be free of secrets.
    pub fn flow_event(
        &self,
        flow_id: &str,
        server: &str,
        kind: &'static str,
        step: &'static str,
        details: serde_json::Value,
    ) {
        self.flow_log
            .do_send(FlowEvent::new(flow_id, server, kind, step, details));
    }
}

/// How a flow ended.
// One outcome per flow, moved once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum FlowOutcome {
    Token {
        token: StoredToken,
        /// A new client identity the flow registered or used.
        endpoint: Option<TokenEndpoint>,
        /// The token is in the store (`false`: the save failed; it lives in memory only).
        durable: bool,
    },
    RefreshFailed {
        failure: RefreshFailure,
        error: String,
        rotated_refresh_token: Option<String>,
        /// A client the flow registered (and stored) before failing: a login reuses it.
        endpoint: Option<TokenEndpoint>,
    },
    LoginFailed {
        error: String,
        /// The client identity the login went with, so the actor can tell whether the next
        /// login should register a new one.
        client: LoginClient,
    },
}

/// Which client identity a failed login used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginClient {
    /// It failed before choosing one (the lock, discovery): it says nothing about a client.
    NotTried,
    /// A stored or previous client of this source.
    Reused(ClientSource),
    /// A new one (configured, metadata document or a registration).
    New,
}

/// What a failure says, for the flow's trace: endpoint, HTTP status, OAuth error code, class.
fn failure_details(e: &OAuthError, permanent: bool, elapsed: Duration) -> serde_json::Value {
    let (endpoint, status, code) = match e {
        OAuthError::Server {
            endpoint,
            status,
            code,
            ..
        } => (Some(endpoint.to_string()), *status, Some(code.clone())),
        OAuthError::Http {
            endpoint, status, ..
        } => (Some(endpoint.to_string()), Some(*status), None),
        OAuthError::Timeout { endpoint, .. }
        | OAuthError::Transport { endpoint, .. }
        | OAuthError::Malformed { endpoint, .. }
        | OAuthError::TokenAlreadyExpired { endpoint, .. } => {
            (Some(endpoint.to_string()), None, None)
        }
        _ => (None, None, None),
    };
    json!({"endpoint": endpoint, "status": status, "error_code": code, "error": e.to_string(), "class": if permanent { "permanent" } else { "transient" }, "flow_ms": elapsed.as_millis() as u64})
}

/// The facts the state machine needs about a stored token.
pub fn facts(token: &StoredToken) -> TokenFacts {
    TokenFacts {
        obtained_at: token.obtained_at,
        expires_at: token.expires_at,
        has_refresh_token: token.refresh_token.is_some(),
        refused: false,
    }
}

fn stored_token(
    config: &UpstreamConfig,
    endpoint: &TokenEndpoint,
    issuer: Option<String>,
    set: &TokenSet,
    flow_id: &str,
    dpop: Option<&Dpop>,
) -> StoredToken {
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    StoredToken {
        server_key: config.server_key.clone(),
        server_name: config.name.clone(),
        server_url: config.url.to_string(),
        resource: Some(endpoint.resource.clone()),
        issuer,
        access_token: set.access_token.secret().clone(),
        refresh_token: set.refresh_token.as_ref().map(|r| r.secret().clone()),
        token_type: set.token_type.clone(),
        scope: set.scope.clone(),
        expires_at: set.expires_at.map(ms),
        obtained_at: ms(set.obtained_at),
        flow_id: Some(flow_id.to_string()),
        // The key the token request was proven with: a server that bound the tokens to it
        // refuses a refresh without it, and a resource refuses the access token.
        dpop: dpop.map(|d| StoredDpopKey {
            private_key: d.key().encoded_secret(),
            jkt: d.key().thumbprint().to_string(),
        }),
    }
}

/// The DPoP state a stored token is used with: `known` (the actor's, with the nonces it has
/// seen) when it holds the token's key, else one rebuilt from the stored key. `None` for a
/// token without a key.
pub fn dpop_binding(token: &StoredToken, known: Option<&Dpop>) -> Result<Option<Dpop>, BadKey> {
    let Some(stored) = &token.dpop else {
        return Ok(None);
    };
    if let Some(known) = known.filter(|d| d.key().thumbprint() == stored.jkt) {
        return Ok(Some(known.clone()));
    }
    let key = DpopKey::from_encoded_secret(&stored.private_key, &stored.jkt)?;
    Ok(Some(Dpop::new(key)))
}

/// Rebuilds the token endpoint (client identity included) from its stored row.
pub fn endpoint_from_stored(client: &StoredClient) -> TokenEndpoint {
    let source = match client.source.as_str() {
        "configured" => ClientSource::Configured,
        "metadata_document" => ClientSource::MetadataDocument,
        _ => ClientSource::Registered,
    };
    TokenEndpoint {
        authorization_endpoint: client.authorization_endpoint.clone(),
        token_endpoint: client.token_endpoint.clone(),
        client: ClientCredentials {
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone().map(oauth2::ClientSecret::new),
            auth_method: TokenAuthMethod::parse(&client.token_endpoint_auth_method)
                .unwrap_or(TokenAuthMethod::None),
            source,
            registration: client
                .registration_json
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok()),
        },
        redirect_uri: client.redirect_uri.clone(),
        resource: client.resource.clone(),
    }
}

fn stored_client(
    config: &UpstreamConfig,
    discovery: &Discovery,
    endpoint: &TokenEndpoint,
) -> StoredClient {
    let metadata = &discovery.authorization_server;
    StoredClient {
        server_key: config.server_key.clone(),
        issuer: metadata.issuer.clone(),
        client_id: endpoint.client.client_id.clone(),
        client_secret: endpoint
            .client
            .client_secret
            .as_ref()
            .map(|s| s.secret().clone()),
        token_endpoint_auth_method: endpoint.client.auth_method.as_str().into(),
        source: match endpoint.client.source {
            ClientSource::Configured => "configured",
            ClientSource::MetadataDocument => "metadata_document",
            ClientSource::Registered => "registered",
        }
        .into(),
        redirect_uri: endpoint.redirect_uri.clone(),
        authorization_endpoint: endpoint.authorization_endpoint.clone(),
        token_endpoint: endpoint.token_endpoint.clone(),
        revocation_endpoint: metadata.revocation_endpoint.clone(),
        resource: endpoint.resource.clone(),
        iss_parameter_supported: metadata.authorization_response_iss_parameter_supported,
        registration_json: endpoint
            .client
            .registration
            .as_ref()
            .map(|r| serde_json::Value::Object(r.clone()).to_string()),
    }
}

/// The generation a flow started in, checked on the registry thread right before each write:
/// a flow that a logout (or a newer login) has overtaken never writes its token back.
#[derive(Clone)]
pub struct Fence {
    shared: Arc<AtomicU64>,
    generation: u64,
}

impl Fence {
    pub fn new(shared: Arc<AtomicU64>, generation: u64) -> Self {
        Fence { shared, generation }
    }

    pub fn is_current(&self) -> bool {
        self.shared.load(Ordering::SeqCst) == self.generation
    }
}

/// Why a save did not happen.
enum SaveError {
    /// The flow was overtaken (logout, newer login): nothing was written, on purpose.
    Fenced,
    Store(String),
}

/// Saves `token` (and `client`, if given) in one transaction, unless the flow is fenced off;
/// with `finish`, the flow is marked succeeded in the same transaction. Concurrent saves
/// share one commit (the registry's group commit); the answer comes once it is durable.
async fn save_fenced(
    rt: &Runtime,
    fence: &Fence,
    token: &StoredToken,
    client: Option<StoredClient>,
    finish: Option<&str>,
) -> Result<(), SaveError> {
    let (token, fence, finish) = (token.clone(), fence.clone(), finish.map(String::from));
    rt.registry
        .write(move |s| {
            if !fence.is_current() {
                return Ok(false);
            }
            match &finish {
                Some(flow) => s.save_and_finish(&token, client.as_ref(), flow)?,
                None => {
                    if let Some(client) = &client {
                        s.save_client(client)?;
                    }
                    s.save_token(&token)?;
                }
            }
            Ok(true)
        })
        .await
        .map_err(|e| SaveError::Store(e.to_string()))
        .and_then(|saved| {
            if saved {
                Ok(())
            } else {
                Err(SaveError::Fenced)
            }
        })
}

/// Records the flow and reads what it starts from (token, client), in one registry job.
async fn begin_and_read(
    rt: &Runtime,
    config: &UpstreamConfig,
    flow_id: &str,
    kind: &'static str,
    lease: Duration,
) -> Result<FlowStart, StoreError> {
    let (flow, key, name, owner) = (
        flow_id.to_string(),
        config.server_key.clone(),
        config.name.clone(),
        rt.owner.clone(),
    );
    let lease_ms = lease.as_millis() as i64;
    let start = rt
        .registry
        .call(move |s| s.begin_flow_and_read(&flow, &key, &name, kind, &owner, lease_ms))
        .await?;
    if let Some(e) = &start.not_recorded {
        tracing::warn!(error = %e, "could not record the flow start");
    }
    Ok(start)
}

async fn finish(rt: &Runtime, flow_id: &str, error: Option<String>) {
    let flow = flow_id.to_string();
    if let Err(e) = rt
        .registry
        .call(move |s| s.with_short_busy_timeout(|s| s.finish_flow(&flow, error.as_deref())))
        .await
    {
        tracing::warn!(error = %e, "could not record the flow end");
    }
}

/// What a refresh flow starts from.
pub struct RefreshRequest {
    /// The newest token this process holds.
    pub current: StoredToken,
    /// `current` is in the store; `false` when its save failed (the store holds an older one).
    pub current_durable: bool,
    pub endpoint: Option<TokenEndpoint>,
    pub plan: RefreshPlan,
    /// The upstream refused the token: before refreshing, check that the resource still
    /// trusts the authorization server that issued it (SEP-2352).
    pub after_refusal: bool,
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
    let span = tracing::info_span!("oauth_flow", correlation_id = %flow_id, server = %config.name, flow_kind = "refresh");
    async move {
        let RefreshRequest { current, current_durable, endpoint, plan, after_refusal, challenge, dpop } = request;
        if let Some(hook) = &rt.flow_hook {
            (hook.0)(&config.name, "refresh");
        }
        let wait = REFRESH_LOCK_WAIT;
        let event = |step: &'static str, details: serde_json::Value| rt.flow_event(&flow_id, &config.name, "refresh", step, details);
        event("started", json!({"token_endpoint": endpoint.as_ref().map(|e| e.token_endpoint.clone()), "reregister": plan.reregister, "omit_scope": plan.omit_scope}));
        let _slot = rt.scheduler.refresh_slot().await;
        let _lock = match lock::acquire(&rt.lock_dir, &config.server_key, wait).await {
            Ok(lock) => lock,
            Err(e) => return failed(RefreshFailure::Transient { retry_after: None }, e.to_string()),
        };
        let stored = match begin_and_read(&rt, &config, &flow_id, "refresh", wait).await {
            Ok(start) => (start.token, start.client),
            Err(e) => {
                let error = format!("cannot read the token store: {e}");
                finish(&rt, &flow_id, Some(error.clone())).await;
                return failed(RefreshFailure::Transient { retry_after: None }, error);
            }
        };
        let (latest, stored_client) = stored;
        // The newest refresh token wins: presenting an older one than the server last issued
        // revokes the whole family on servers that detect reuse.
        let current = match latest {
            None if current_durable => {
                tracing::info!("the stored token is gone: another process logged out");
                event("adopted", json!({"reason": "the token was deleted by another process (logout)"}));
                finish(&rt, &flow_id, Some("logged out by another process".into())).await;
                return failed(RefreshFailure::TokenGone, "logged out by another process".into());
            }
            Some(stored) if current_durable && stored.access_token != current.access_token => {
                // Another process wrote after our last save: its token is the newest.
                if facts(&stored).usable(now_ms()) {
                    tracing::info!("another process refreshed meanwhile; using its token");
                    event("adopted", json!({"reason": "another process refreshed meanwhile", "expires_at": stored.expires_at}));
                    finish(&rt, &flow_id, None).await;
                    return FlowOutcome::Token { token: stored, endpoint: None, durable: true };
                }
                stored
            }
            // Ours is the newest (equal, or the store is behind after a failed save).
            _ => current,
        };
        if !current_durable {
            match save_fenced(&rt, &fence, &current, None, None).await {
                Ok(()) => tracing::info!("the token kept in memory is now in the store"),
                Err(SaveError::Fenced) => return failed(RefreshFailure::TokenGone, "overtaken by a logout".into()),
                Err(SaveError::Store(e)) => tracing::warn!(error = %e, "the store still refuses writes; refreshing with the newest refresh token from memory"),
            }
        }
        let Some(refresh_token) = current.refresh_token.clone() else {
            finish(&rt, &flow_id, Some("no refresh token".into())).await;
            return failed(RefreshFailure::RefreshTokenDead, "no refresh token".into());
        };
        let issuer = current.issuer.clone().or_else(|| stored_client.as_ref().map(|c| c.issuer.clone()));
        if after_refusal && let Some(issuer) = issuer
            && let Some(moved_to) = moved_authorization_server(&rt, &config, challenge.as_ref(), &issuer).await
        {
            return resource_moved(&rt, &config, &flow_id, &issuer, moved_to, None).await;
        }
        let mut endpoint = endpoint.or_else(|| stored_client.as_ref().map(endpoint_from_stored));
        let mut registered = false;
        if plan.reregister || endpoint.is_none() {
            match register_again(&rt, &config, endpoint.as_ref(), stored_client.as_ref()).await {
                Ok((fresh, client)) => {
                    event("registered", json!({"reason": if plan.reregister { "the authorization server rejected the registered client" } else { "no stored client identity" }, "client_id": fresh.client.client_id}));
                    // Discovery found another authorization server than the token's: the
                    // resource moved. Its client is kept (under its own issuer) for the login
                    // there; this server's refresh token is not presented to it.
                    let moved_to = current.issuer.as_deref().filter(|old| !same_issuer(&client.issuer, old)).map(|old| (old.to_string(), client.issuer.clone()));
                    // Stored at once: whatever the refresh says, a later login uses this client.
                    let fence_copy = fence.clone();
                    let stored = rt.registry.call(move |s| if fence_copy.is_current() { s.save_client(&client) } else { Ok(()) }).await;
                    if let Err(e) = stored {
                        tracing::warn!(error = %e, "the new client identity could not be stored");
                    }
                    if let Some((from, to)) = moved_to {
                        return resource_moved(&rt, &config, &flow_id, &from, to, Some(fresh)).await;
                    }
                    endpoint = Some(fresh);
                    registered = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not register a client to refresh with");
                    event("failed", failure_details(&e, false, Duration::ZERO));
                    finish(&rt, &flow_id, Some(e.to_string())).await;
                    return failed(RefreshFailure::classify(&e, None), e.to_string());
                }
            }
        }
        let endpoint = endpoint.expect("set above when missing");
        let source = Some(endpoint.client.source);
        let scope = if plan.omit_scope { None } else { current.scope.as_deref() };
        // A token bound to a key is refreshed with proofs of that key (RFC 9449 §5): the one
        // stored with it, whichever process wrote it.
        // A DPoP token stays one: a Bearer answer to its refresh is refused (RFC 9449 §5).
        let bound = dpop::is_dpop_type(&current.token_type);
        let dpop = match dpop_binding(&current, dpop.as_ref()) {
            Ok(dpop) => dpop.map(|d| {
                let required = d.required() || bound;
                d.with_required(required)
            }),
            Err(e) => {
                let error = format!("the stored DPoP key cannot be used ({e}): the refresh token is bound to it, so a login is needed");
                tracing::warn!(error = %error, "refresh impossible");
                event("failed", json!({"error": error}));
                finish(&rt, &flow_id, Some(error.clone())).await;
                return failed(RefreshFailure::RefreshTokenDead, error);
            }
        };
        let started = std::time::Instant::now();
        match endpoint.refresh(&rt.refresh_http, &RefreshToken::new(refresh_token), scope, SystemTime::now(), dpop.as_ref()).await {
            Ok(set) => {
                let token = stored_token(&config, &endpoint, current.issuer.clone(), &set, &flow_id, dpop.as_ref());
                let rotated = token.refresh_token != current.refresh_token;
                let durable = match save_fenced(&rt, &fence, &token, None, Some(&flow_id)).await {
                    Ok(()) => true,
                    Err(SaveError::Fenced) => {
                        tracing::info!("a logout overtook this refresh; its token is discarded");
                        finish(&rt, &flow_id, Some("overtaken by a logout".into())).await;
                        return failed(RefreshFailure::TokenGone, "overtaken by a logout".into());
                    }
                    Err(SaveError::Store(e)) => {
                        tracing::error!(error = %e, "the refreshed token could not be persisted; it is kept in memory and is the one the next refresh presents");
                        // The flow's end was in the failed transaction: recorded on its own.
                        finish(&rt, &flow_id, None).await;
                        false
                    }
                };
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, rotated, expires_at = token.expires_at, token_type = %token.token_type, "token refreshed");
                event("token obtained", json!({"endpoint": "token endpoint", "rotated": rotated, "durable": durable, "expires_at": token.expires_at, "scope": token.scope, "has_refresh_token": token.refresh_token.is_some(), "token_type": token.token_type, "dpop_jkt": token.dpop.as_ref().map(|d| d.jkt.clone()), "flow_ms": started.elapsed().as_millis() as u64}));
                FlowOutcome::Token { token, endpoint: Some(endpoint), durable }
            }
            Err(e) => {
                let failure = RefreshFailure::classify(&e, source);
                // A rotated refresh token must never be lost, even in a failed response.
                let rotated = match &e {
                    OAuthError::TokenAlreadyExpired { rotated_refresh_token: Some(r), .. } => Some(r.secret().clone()),
                    _ => None,
                };
                if let Some(rotated) = &rotated {
                    let token = StoredToken { refresh_token: Some(rotated.clone()), ..current.clone() };
                    if let Err(SaveError::Store(e)) = save_fenced(&rt, &fence, &token, None, None).await {
                        tracing::error!(error = %e, "the rotated refresh token could not be persisted");
                    }
                }
                let permanent = failure == RefreshFailure::RefreshTokenDead;
                // An abandoned refresh may have been processed: the next attempt (after the
                // backoff) presents the same refresh token, which a rotating server refuses.
                let error = match &e {
                    OAuthError::Timeout { .. } => format!("{e}; the server may have consumed the refresh token (a rotating server then refuses it and a login follows)"),
                    _ => e.to_string(),
                };
                tracing::warn!(error = %error, failure = ?failure, "refresh failed");
                event("failed", failure_details(&e, permanent, started.elapsed()));
                finish(&rt, &flow_id, Some(error.clone())).await;
                FlowOutcome::RefreshFailed { failure, error, rotated_refresh_token: rotated, endpoint: registered.then_some(endpoint) }
            }
        }
    }
    .instrument(span)
    .await
}

/// The refresh ends here: the resource trusts the authorization server `to`, not the token's
/// `from` (SEP-2352), so the refresh token is not presented anywhere; a login at `to` follows,
/// with `endpoint` (a client already registered there) where there is one.
async fn resource_moved(
    rt: &Runtime,
    config: &UpstreamConfig,
    flow_id: &str,
    from: &str,
    to: String,
    endpoint: Option<TokenEndpoint>,
) -> FlowOutcome {
    let error = format!(
        "the resource now trusts the authorization server {to}, not {from}: a login there replaces this server's tokens (with that server's own client)"
    );
    tracing::info!(from, to = %to, "the resource moved to another authorization server; its refresh token is not presented there");
    rt.flow_event(
        flow_id,
        &config.name,
        "refresh",
        "resource moved",
        json!({"from": from, "to": to}),
    );
    finish(rt, flow_id, Some(error.clone())).await;
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
    rt: &Runtime,
    config: &UpstreamConfig,
    challenge: Option<&BearerChallenge>,
    issuer: &str,
) -> Option<String> {
    match protected_resource_metadata(&rt.http, &config.url, challenge).await {
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
    rt: &Runtime,
    config: &UpstreamConfig,
    old: Option<&TokenEndpoint>,
    stored: Option<&StoredClient>,
) -> Result<(TokenEndpoint, StoredClient), OAuthError> {
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

/// A launcher that publishes the URL before handing it to `browser`.
fn publishing(
    browser: BrowserLauncher,
    auth_url: Arc<std::sync::Mutex<Option<String>>>,
) -> BrowserLauncher {
    BrowserLauncher::handler(move |url: url::Url| {
        *auth_url.lock().unwrap_or_else(|p| p.into_inner()) = Some(url.to_string());
        if let Err(e) = browser.open(&url) {
            tracing::warn!(error = %e, "the browser could not be opened; the authorization URL is in the status");
        }
    })
}

/// What a login flow starts from.
pub struct LoginRequest {
    /// The client identity of an earlier login, reused unless `fresh_client`.
    pub previous: Option<TokenEndpoint>,
    /// Register a new client (the last login with the registered one failed: the
    /// authorization server may have forgotten it).
    pub fresh_client: bool,
    pub challenge: Option<BearerChallenge>,
    /// When the login was asked for: a token another process stores after this is adopted.
    pub requested_at: Millis,
    /// Where the authorization URL is published for status while the login waits (so a user
    /// whose browser did not open can use it). Not a secret: the PKCE verifier stays here.
    pub auth_url: Arc<std::sync::Mutex<Option<String>>>,
    /// After a 403 `insufficient_scope`: the union of the granted and the demanded scopes,
    /// asked for on top of the usual selection (SEP-2350).
    pub step_up_scope: Option<String>,
    /// Where a device login (`UpstreamConfig::device_code`) publishes its user code,
    /// verification URL and expiry for status while it polls; emptied when it ends.
    pub device_prompt: Published<DevicePrompt>,
    /// The actor's DPoP key (and the nonces seen), proven when this login uses DPoP.
    pub dpop: Dpop,
}

/// A value a running login publishes for status (its authorization URL, its device prompt).
pub type Published<T> = Arc<std::sync::Mutex<Option<T>>>;

pub async fn login(
    rt: Arc<Runtime>,
    config: Arc<UpstreamConfig>,
    flow_id: String,
    fence: Fence,
    request: LoginRequest,
) -> FlowOutcome {
    let span = tracing::info_span!("oauth_flow", correlation_id = %flow_id, server = %config.name, flow_kind = "login");
    async move {
        let LoginRequest { previous, fresh_client, challenge, requested_at, auth_url, step_up_scope, device_prompt, dpop } = request;
        if let Some(hook) = &rt.flow_hook {
            (hook.0)(&config.name, "login");
        }
        let event = |step: &'static str, details: serde_json::Value| rt.flow_event(&flow_id, &config.name, "login", step, details);
        event("started", json!({"server_url": config.url.as_str(), "fresh_client": fresh_client}));
        let started = std::time::Instant::now();
        // Waiting for the lock means another flow of this server ran when this login was asked
        // for: a login it completed is this one's answer too (one browser for both).
        let (_lock, waited) = match lock::acquire(&rt.lock_dir, &config.server_key, Duration::ZERO).await {
            Ok(lock) => (lock, false),
            Err(StoreError::LockTimeout { .. }) => match lock::acquire(&rt.lock_dir, &config.server_key, rt.login_timeout).await {
                Ok(lock) => (lock, true),
                Err(e) => {
                    event("failed", json!({"error": e.to_string()}));
                    return FlowOutcome::LoginFailed { error: e.to_string(), client: LoginClient::NotTried };
                }
            },
            Err(e) => {
                event("failed", json!({"error": e.to_string()}));
                return FlowOutcome::LoginFailed { error: e.to_string(), client: LoginClient::NotTried };
            }
        };
        let FlowStart { token: stored, client: stored_client, token_by_login: stored_by_login, .. } =
            begin_and_read(&rt, &config, &flow_id, "login", rt.login_timeout).await.unwrap_or_default();
        let adopt = stored.filter(|t| {
            facts(t).usable(now_ms())
                && (t.obtained_at >= requested_at || (waited && stored_by_login))
        });
        if let Some(stored) = adopt {
            tracing::info!("another process logged in meanwhile; using its token");
            event("adopted", json!({"reason": "another process logged in meanwhile", "expires_at": stored.expires_at}));
            finish(&rt, &flow_id, None).await;
            return FlowOutcome::Token { token: stored, endpoint: None, durable: true };
        }
        let previous = if fresh_client { None } else { previous.or_else(|| stored_client.as_ref().map(endpoint_from_stored)) };
        let mut tried = LoginClient::NotTried;
        let result = tokio::time::timeout(
            rt.login_timeout,
            run_login(&rt, &config, &flow_id, &fence, LoginPlan { previous, reuse_stored_client: !fresh_client, challenge, auth_url, device_prompt, step_up_scope, dpop }, &mut tried),
        )
        .await;
        let outcome = match result {
            Ok(Ok((token, endpoint))) => {
                // The flow was marked succeeded with the token's save (one transaction).
                event("token obtained", json!({"endpoint": "token endpoint", "expires_at": token.expires_at, "scope": token.scope, "has_refresh_token": token.refresh_token.is_some(), "token_type": token.token_type, "dpop_jkt": token.dpop.as_ref().map(|d| d.jkt.clone()), "flow_ms": started.elapsed().as_millis() as u64}));
                return FlowOutcome::Token { token, endpoint: Some(endpoint), durable: true };
            }
            Ok(Err(e)) => {
                event("failed", failure_details(&e, e.class() == ErrorClass::Permanent, started.elapsed()));
                e.to_string()
            }
            Err(_) => {
                let error = format!("the login was not completed within {:?}", rt.login_timeout);
                event("failed", json!({"error": error}));
                error
            }
        };
        tracing::warn!(error = %outcome, "login failed");
        finish(&rt, &flow_id, Some(outcome.clone())).await;
        FlowOutcome::LoginFailed { error: outcome, client: tried }
    }
    .instrument(span)
    .await
}

/// What a login asks for, past the lock and the adoption check.
struct LoginPlan {
    previous: Option<TokenEndpoint>,
    /// A client stored for the authorization server the login goes to may be reused (not
    /// after a failed login with a registered client: that server may have forgotten it).
    reuse_stored_client: bool,
    challenge: Option<BearerChallenge>,
    auth_url: Published<String>,
    device_prompt: Published<DevicePrompt>,
    step_up_scope: Option<String>,
    dpop: Dpop,
}

async fn run_login(
    rt: &Runtime,
    config: &UpstreamConfig,
    flow_id: &str,
    fence: &Fence,
    plan: LoginPlan,
    tried: &mut LoginClient,
) -> Result<(StoredToken, TokenEndpoint), OAuthError> {
    let LoginPlan {
        previous,
        reuse_stored_client,
        challenge,
        auth_url,
        device_prompt,
        step_up_scope,
        dpop,
    } = plan;
    let discovery = discover(&rt.http, &config.url, challenge.as_ref()).await?;
    // DPoP where the config asks for it or the resource requires it, with the actor's key;
    // the tokens are stored with it.
    let dpop = dpop::policy(config.dpop, &discovery, challenge.as_ref())
        .map(|required| dpop.with_required(required));
    let scope = config.scope.clone().or_else(|| {
        select_scope(
            challenge.as_ref().and_then(|c| c.scope.as_deref()),
            discovery.resource_scopes(),
        )
    });
    let scope = match step_up_scope {
        Some(more) => union(scope.as_deref(), Some(&more)),
        None => scope,
    };
    // A daemon wants refresh tokens: `offline_access` where the server lists it (SEP-2207).
    let scope = with_offline_access(
        scope,
        discovery.authorization_server.scopes_supported.as_deref(),
    );
    let settings = LoginSettings {
        client: config.client.clone(),
        browser: publishing(rt.browser.clone(), auth_url),
        redirect_port: config.redirect_port,
        extra_params: config.extra_params.clone().into_iter().collect(),
    };
    // A stored client is reused only at the authorization server it was registered with:
    // the previous one if that is where the login goes, else the one stored for that server
    // (a resource that moved away and back, SEP-2352), else a new one is obtained.
    let at_this_server =
        |p: &TokenEndpoint| p.token_endpoint == discovery.authorization_server.token_endpoint;
    let previous = match previous.filter(at_this_server) {
        Some(previous) => Some(previous),
        None if reuse_stored_client => {
            stored_client_at(rt, config, &discovery.authorization_server.issuer)
                .await
                .filter(at_this_server)
        }
        None => None,
    };
    *tried = previous
        .as_ref()
        .map_or(LoginClient::New, |p| LoginClient::Reused(p.client.source));
    let (endpoint, set) = if config.device_code {
        device_login_published(
            rt,
            config,
            &discovery,
            previous,
            scope.as_deref(),
            device_prompt,
            dpop.as_ref(),
        )
        .await?
    } else {
        browser_login(
            &rt.http,
            &discovery,
            &settings,
            previous,
            scope.as_deref(),
            dpop.as_ref(),
        )
        .await?
    };
    let token = stored_token(
        config,
        &endpoint,
        Some(discovery.authorization_server.issuer.clone()),
        &set,
        flow_id,
        dpop.as_ref(),
    );
    let client = stored_client(config, &discovery, &endpoint);
    match save_fenced(rt, fence, &token, Some(client), Some(flow_id)).await {
        Ok(()) => Ok((token, endpoint)),
        Err(SaveError::Fenced) => Err(OAuthError::Callback(
            "a logout or a newer login overtook this login; its token is discarded".into(),
        )),
        Err(SaveError::Store(e)) => Err(OAuthError::Callback(format!(
            "the new token could not be stored: {e}"
        ))),
    }
}

/// The client stored for this server at the authorization server `issuer`, if any and if the
/// store answers (a failed read only means a new registration).
async fn stored_client_at(
    rt: &Runtime,
    config: &UpstreamConfig,
    issuer: &str,
) -> Option<TokenEndpoint> {
    let (key, issuer) = (config.server_key.clone(), issuer.to_string());
    match rt
        .registry
        .call(move |s| s.load_client_for(&key, &issuer))
        .await
    {
        Ok(Some(client)) => {
            tracing::info!(client_id = %client.client_id, issuer = %client.issuer, "reusing the client stored for this authorization server");
            Some(endpoint_from_stored(&client))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the stored clients; obtaining a new client identity");
            None
        }
    }
}

/// A device login (RFC 8628) whose prompt is published for status (and shown through the
/// daemon's launcher) while it polls, and taken down when it ends, however it ends.
async fn device_login_published(
    rt: &Runtime,
    config: &UpstreamConfig,
    discovery: &crate::oauth::discovery::Discovery,
    previous: Option<TokenEndpoint>,
    scope: Option<&str>,
    slot: Published<DevicePrompt>,
    dpop: Option<&Dpop>,
) -> Result<(TokenEndpoint, crate::oauth::token::TokenSet), OAuthError> {
    let shown = crate::oauth::device::shown_with(rt.browser.clone());
    let published = slot.clone();
    let show = move |prompt: &DevicePrompt| {
        *published.lock().unwrap_or_else(|p| p.into_inner()) = Some(prompt.clone());
        shown(prompt);
    };
    let result = crate::oauth::device::device_login(
        &rt.http,
        discovery,
        &config.client,
        previous,
        scope,
        &show,
        dpop,
    )
    .await;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    result
}
