//! The two flows an upstream actor runs, as plain async functions: a refresh and a browser
//! login. Each holds the server's cross-process lock for its whole length, records itself in
//! `oauth_flows`, re-reads the store once it holds the lock (another process may have done the
//! work meanwhile), and persists what it obtains before returning it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::Addr;
use oauth2::RefreshToken;
use serde_json::json;
use tracing::Instrument;

use super::state::{Millis, TokenFacts};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::client_identity::{ClientCredentials, ClientSource, TokenAuthMethod};
use crate::oauth::discovery::{Discovery, discover};
use crate::oauth::http::OAuthHttp;
use crate::oauth::login::{LoginSettings, browser_login};
use crate::oauth::scope::select_scope;
use crate::oauth::token::{TokenEndpoint, TokenSet};
use crate::oauth::{ErrorClass, OAuthError};
use crate::store::db::now_ms;
use crate::store::{StoredClient, StoredToken, TokenRegistry, lock};
use crate::telemetry::flow_logger::{FlowEvent, FlowLogger};

/// How long a refresh waits for another process's flow of the same server: a refresh is one
/// HTTP exchange, so a longer wait means that flow is stuck (its lease shows whose it is).
const REFRESH_LOCK_WAIT: Duration = Duration::from_secs(30);

/// What every flow of every server shares.
pub struct Runtime {
    pub registry: TokenRegistry,
    pub http: OAuthHttp,
    pub lock_dir: PathBuf,
    pub browser: BrowserLauncher,
    /// Who runs flows here, as recorded in `oauth_flows.owner`.
    pub owner: String,
    pub login_timeout: Duration,
    /// Where flow events go (sequence numbers, elapsed time, the bounded trace buffer).
    pub flow_log: Addr<FlowLogger>,
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
        endpoint: Option<TokenEndpoint>,
    },
    RefreshFailed {
        permanent: bool,
        retry_after: Option<Millis>,
        error: String,
        rotated_refresh_token: Option<String>,
    },
    LoginFailed {
        error: String,
    },
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
    }
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

/// A token in the store that is newer than ours and still usable: another process did the work.
async fn newer_stored_token(rt: &Runtime, key: &str, ours: Option<&str>) -> Option<StoredToken> {
    let key = key.to_string();
    let stored = rt.registry.call(move |s| s.load_token(&key)).await.ok()??;
    (Some(stored.access_token.as_str()) != ours && facts(&stored).usable(now_ms()))
        .then_some(stored)
}

async fn begin(
    rt: &Runtime,
    config: &UpstreamConfig,
    flow_id: &str,
    kind: &'static str,
    lease: Duration,
) {
    let (flow, key, name, owner) = (
        flow_id.to_string(),
        config.server_key.clone(),
        config.name.clone(),
        rt.owner.clone(),
    );
    let lease_ms = lease.as_millis() as i64;
    if let Err(e) = rt
        .registry
        .call(move |s| s.begin_flow(&flow, &key, &name, kind, &owner, lease_ms))
        .await
    {
        tracing::warn!(error = %e, "could not record the flow start");
    }
}

async fn finish(rt: &Runtime, flow_id: &str, error: Option<String>) {
    let flow = flow_id.to_string();
    if let Err(e) = rt
        .registry
        .call(move |s| s.finish_flow(&flow, error.as_deref()))
        .await
    {
        tracing::warn!(error = %e, "could not record the flow end");
    }
}

async fn save_token(rt: &Runtime, token: &StoredToken) -> Result<(), String> {
    let copy = token.clone();
    rt.registry
        .call(move |s| s.save_token(&copy))
        .await
        .map_err(|e| e.to_string())
}

pub async fn refresh(
    rt: Arc<Runtime>,
    config: Arc<UpstreamConfig>,
    flow_id: String,
    endpoint: TokenEndpoint,
    current: StoredToken,
) -> FlowOutcome {
    let span = tracing::info_span!("oauth_flow", correlation_id = %flow_id, server = %config.name, flow_kind = "refresh");
    async move {
        let wait = REFRESH_LOCK_WAIT;
        let event = |step: &'static str, details: serde_json::Value| rt.flow_event(&flow_id, &config.name, "refresh", step, details);
        event("started", json!({"token_endpoint": endpoint.token_endpoint}));
        let _lock = match lock::acquire(&rt.lock_dir, &config.server_key, wait).await {
            Ok(lock) => lock,
            Err(e) => return FlowOutcome::RefreshFailed { permanent: false, retry_after: None, error: e.to_string(), rotated_refresh_token: None },
        };
        begin(&rt, &config, &flow_id, "refresh", wait).await;
        let key = config.server_key.clone();
        let latest = rt.registry.call(move |s| s.load_token(&key)).await.ok().flatten();
        if let Some(stored) = &latest
            && stored.access_token != current.access_token
            && facts(stored).usable(now_ms())
        {
            tracing::info!("another process refreshed meanwhile; using its token");
            event("adopted", json!({"reason": "another process refreshed meanwhile", "expires_at": stored.expires_at}));
            finish(&rt, &flow_id, None).await;
            return FlowOutcome::Token { token: stored.clone(), endpoint: None };
        }
        // The stored refresh token is the newest: another process may have rotated ours away,
        // and presenting a rotated one revokes the whole family.
        let current = match latest {
            Some(stored) if stored.refresh_token.is_some() => stored,
            _ => current,
        };
        let Some(refresh_token) = current.refresh_token.clone() else {
            finish(&rt, &flow_id, Some("no refresh token".into())).await;
            return FlowOutcome::RefreshFailed { permanent: true, retry_after: None, error: "no refresh token".into(), rotated_refresh_token: None };
        };
        let started = std::time::Instant::now();
        match endpoint.refresh(&rt.http, &RefreshToken::new(refresh_token), current.scope.as_deref(), SystemTime::now()).await {
            Ok(set) => {
                let token = stored_token(&config, &endpoint, current.issuer.clone(), &set, &flow_id);
                let rotated = token.refresh_token != current.refresh_token;
                if let Err(e) = save_token(&rt, &token).await {
                    tracing::error!(error = %e, "the refreshed token could not be persisted; it is kept in memory");
                }
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, rotated, expires_at = token.expires_at, "token refreshed");
                event("token obtained", json!({"endpoint": "token endpoint", "rotated": rotated, "expires_at": token.expires_at, "scope": token.scope, "has_refresh_token": token.refresh_token.is_some(), "flow_ms": started.elapsed().as_millis() as u64}));
                finish(&rt, &flow_id, None).await;
                FlowOutcome::Token { token, endpoint: None }
            }
            Err(e) => {
                let (permanent, retry_after) = match e.class() {
                    ErrorClass::Permanent => (true, None),
                    ErrorClass::Transient { retry_after } => (false, retry_after.map(|d| d.as_millis() as Millis)),
                };
                // A rotated refresh token must never be lost, even in a failed response.
                let rotated = match &e {
                    OAuthError::TokenAlreadyExpired { rotated_refresh_token: Some(r), .. } => Some(r.secret().clone()),
                    _ => None,
                };
                if let Some(rotated) = &rotated {
                    let token = StoredToken { refresh_token: Some(rotated.clone()), ..current.clone() };
                    if let Err(e) = save_token(&rt, &token).await {
                        tracing::error!(error = %e, "the rotated refresh token could not be persisted");
                    }
                }
                tracing::warn!(error = %e, permanent, retry_after_ms = retry_after, "refresh failed");
                event("failed", failure_details(&e, permanent, started.elapsed()));
                finish(&rt, &flow_id, Some(e.to_string())).await;
                FlowOutcome::RefreshFailed { permanent, retry_after, error: e.to_string(), rotated_refresh_token: rotated }
            }
        }
    }
    .instrument(span)
    .await
}

pub async fn login(
    rt: Arc<Runtime>,
    config: Arc<UpstreamConfig>,
    flow_id: String,
    previous: Option<TokenEndpoint>,
    challenge: Option<BearerChallenge>,
    ours: Option<String>,
) -> FlowOutcome {
    let span = tracing::info_span!("oauth_flow", correlation_id = %flow_id, server = %config.name, flow_kind = "login");
    async move {
        let event = |step: &'static str, details: serde_json::Value| rt.flow_event(&flow_id, &config.name, "login", step, details);
        event("started", json!({"server_url": config.url.as_str()}));
        let started = std::time::Instant::now();
        let _lock = match lock::acquire(&rt.lock_dir, &config.server_key, rt.login_timeout).await {
            Ok(lock) => lock,
            Err(e) => {
                event("failed", json!({"error": e.to_string()}));
                return FlowOutcome::LoginFailed { error: e.to_string() };
            }
        };
        begin(&rt, &config, &flow_id, "login", rt.login_timeout).await;
        if let Some(stored) = newer_stored_token(&rt, &config.server_key, ours.as_deref()).await {
            tracing::info!("another process logged in meanwhile; using its token");
            event("adopted", json!({"reason": "another process logged in meanwhile", "expires_at": stored.expires_at}));
            finish(&rt, &flow_id, None).await;
            return FlowOutcome::Token {
                token: stored,
                endpoint: None,
            };
        }
        let result = tokio::time::timeout(
            rt.login_timeout,
            run_login(&rt, &config, &flow_id, previous, challenge),
        )
        .await;
        let outcome = match result {
            Ok(Ok((token, endpoint))) => {
                event("token obtained", json!({"endpoint": "token endpoint", "expires_at": token.expires_at, "scope": token.scope, "has_refresh_token": token.refresh_token.is_some(), "flow_ms": started.elapsed().as_millis() as u64}));
                finish(&rt, &flow_id, None).await;
                return FlowOutcome::Token {
                    token,
                    endpoint: Some(endpoint),
                };
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
        FlowOutcome::LoginFailed { error: outcome }
    }
    .instrument(span)
    .await
}

async fn run_login(
    rt: &Runtime,
    config: &UpstreamConfig,
    flow_id: &str,
    previous: Option<TokenEndpoint>,
    challenge: Option<BearerChallenge>,
) -> Result<(StoredToken, TokenEndpoint), OAuthError> {
    let discovery = discover(&rt.http, &config.url, challenge.as_ref()).await?;
    let scope = config.scope.clone().or_else(|| {
        select_scope(
            challenge.as_ref().and_then(|c| c.scope.as_deref()),
            discovery.resource_scopes(),
        )
    });
    let settings = LoginSettings {
        client: config.client.clone(),
        browser: rt.browser.clone(),
        redirect_port: config.redirect_port,
        extra_params: config.extra_params.clone().into_iter().collect(),
    };
    // A stored client is reused only at the authorization server it was registered with.
    let previous =
        previous.filter(|p| p.token_endpoint == discovery.authorization_server.token_endpoint);
    let (endpoint, set) =
        browser_login(&rt.http, &discovery, &settings, previous, scope.as_deref()).await?;
    let token = stored_token(
        config,
        &endpoint,
        Some(discovery.authorization_server.issuer.clone()),
        &set,
        flow_id,
    );
    let client = stored_client(config, &discovery, &endpoint);
    let token_copy = token.clone();
    rt.registry
        .call(move |s| {
            s.save_client(&client)?;
            s.save_token(&token_copy)
        })
        .await
        .map_err(|e| OAuthError::Callback(format!("the new token could not be stored: {e}")))?;
    Ok((token, endpoint))
}
