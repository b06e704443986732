//! The two flows an upstream actor runs, as plain async functions: a refresh and a login
//! (browser or device). Each holds the server's cross-process lock for its whole length,
//! records itself in `oauth_flows`, re-reads the store once it holds the lock, and saves what
//! it obtains before returning it (so another process never presents a refresh token this one
//! has spent). A flow reports facts (a token, saved or not; a newer token in the store; why a
//! refresh failed); what follows is the state machine's decision. This module holds what both
//! flows work with ([`FlowContext`]); `rows` maps the stored rows.

mod login;
mod refresh;
mod rows;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::Addr;
use serde_json::json;

pub use login::{LoginRequest, Published, login};
pub use refresh::{RefreshRequest, refresh};
pub use rows::{dpop_binding, endpoint_from_stored, facts};

use super::state::RefreshFailure;
use crate::clock::Clock;
use crate::config::UpstreamConfig;
use crate::oauth::OAuthError;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::http::OAuthHttp;
use crate::oauth::token::TokenEndpoint;
use crate::scheduler::Scheduler;
use crate::store::db::FlowStart;
use crate::store::{StoreError, StoredClient, StoredToken, TokenRegistry};
use crate::telemetry::flow_logger::{FlowEvent, FlowKind, FlowLogger, FlowStep};

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
    /// The daemon's one clock (the machine's `now`, tokens' times, the scheduler's deadlines).
    pub clock: Clock,
    /// Logins waiting for an authorization response pasted back or sent to the public
    /// callback path (the API and `auth login --paste` deliver through it).
    pub callbacks: crate::oauth::callback::Callbacks,
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
        kind: FlowKind,
        step: FlowStep,
        details: serde_json::Value,
    ) {
        self.flow_log
            .do_send(FlowEvent::new(flow_id, server, kind, step, details));
    }
}

/// How a flow ended: the facts the actor turns into the machine's events.
// One outcome per flow, moved once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum FlowOutcome {
    Token {
        token: StoredToken,
        /// A new client identity the flow registered or used.
        endpoint: Option<TokenEndpoint>,
        /// The token is in the store. If not, it lives in memory, and `client` (a client its
        /// login obtained, whose row was in the same failed transaction) is saved with it.
        saved: bool,
        client: Option<StoredClient>,
    },
    /// Under the lock the store held a token newer than the one the flow started from
    /// (another process refreshed or logged in meanwhile); the flow stopped there.
    StoreAhead { token: StoredToken },
    RefreshFailed {
        failure: RefreshFailure,
        error: String,
        rotated_refresh_token: Option<String>,
        /// A client the flow registered (and stored) before failing: a login reuses it.
        endpoint: Option<TokenEndpoint>,
    },
    LoginFailed {
        error: String,
        /// The login went with a dynamically registered client (stored or new).
        dynamic_client: bool,
    },
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
pub enum SaveError {
    /// The flow was overtaken (logout, newer login): nothing was written, on purpose.
    Fenced,
    Store(String),
}

/// Saves `token` (and `client`, if given) in one transaction, unless `fence` says the flow
/// was overtaken; with `finish`, the flow is marked succeeded in the same transaction.
/// Concurrent saves share one commit (the registry's group commit); the answer comes once it
/// is durable.
pub async fn save_fenced(
    registry: &TokenRegistry,
    fence: &Fence,
    token: &StoredToken,
    client: Option<StoredClient>,
    finish: Option<&str>,
) -> Result<(), SaveError> {
    let (token, fence, finish) = (token.clone(), fence.clone(), finish.map(String::from));
    let saved = registry
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
        .map_err(|e| SaveError::Store(e.to_string()))?;
    if saved {
        Ok(())
    } else {
        Err(SaveError::Fenced)
    }
}

/// What one flow of one server works with: the runtime, the server, the flow's id and kind,
/// and its fence.
pub(super) struct FlowContext<'a> {
    pub rt: &'a Runtime,
    pub config: &'a UpstreamConfig,
    pub flow_id: &'a str,
    pub kind: FlowKind,
    pub fence: &'a Fence,
}

impl<'a> FlowContext<'a> {
    pub fn new(
        rt: &'a Runtime,
        config: &'a UpstreamConfig,
        flow_id: &'a str,
        kind: FlowKind,
        fence: &'a Fence,
    ) -> Self {
        FlowContext {
            rt,
            config,
            flow_id,
            kind,
            fence,
        }
    }

    /// The flow's span: every line logged inside it, by any module, carries the flow's
    /// correlation ID, server and kind.
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "oauth_flow",
            correlation_id = %self.flow_id,
            server = %self.config.name,
            flow_kind = self.kind.as_str(),
        )
    }

    /// Runs the test hook, if one is set.
    fn hook(&self) {
        if let Some(hook) = &self.rt.flow_hook {
            (hook.0)(&self.config.name, self.kind.as_str());
        }
    }

    fn event(&self, step: FlowStep, details: serde_json::Value) {
        self.rt
            .flow_event(self.flow_id, &self.config.name, self.kind, step, details);
    }

    /// Records the flow and reads what it starts from (token, client), in one registry job.
    async fn begin_and_read(&self, lease: Duration) -> Result<FlowStart, StoreError> {
        let (flow, key, name, owner, kind) = (
            self.flow_id.to_string(),
            self.config.server_key.clone(),
            self.config.name.clone(),
            self.rt.owner.clone(),
            self.kind.as_str(),
        );
        let lease_ms = lease.as_millis() as i64;
        let start = self
            .rt
            .registry
            .call(move |s| s.begin_flow_and_read(&flow, &key, &name, kind, &owner, lease_ms))
            .await?;
        if let Some(e) = &start.not_recorded {
            tracing::warn!(error = %e, "could not record the flow start");
        }
        Ok(start)
    }

    /// Records the flow's end (a failure's `error` is scrubbed by the store).
    async fn finish(&self, error: Option<String>) {
        let flow = self.flow_id.to_string();
        let finished = self
            .rt
            .registry
            .call(move |s| s.with_short_busy_timeout(|s| s.finish_flow(&flow, error.as_deref())))
            .await;
        if let Err(e) = finished {
            tracing::warn!(error = %e, "could not record the flow end");
        }
    }

    /// Saves `token` (and `client`) fenced; with `finish`, the flow is marked succeeded in
    /// the same transaction.
    async fn save(
        &self,
        token: &StoredToken,
        client: Option<StoredClient>,
        finish: bool,
    ) -> Result<(), SaveError> {
        let finish = finish.then_some(self.flow_id);
        save_fenced(&self.rt.registry, self.fence, token, client, finish).await
    }
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
    let class = if permanent { "permanent" } else { "transient" };
    json!({
        "endpoint": endpoint,
        "status": status,
        "error_code": code,
        "error": e.to_string(),
        "class": class,
        "flow_ms": elapsed.as_millis() as u64,
    })
}

/// The trace details of a token a flow obtained (no secret: times, scope, type, key id).
fn token_details(token: &StoredToken, saved: bool, elapsed: Duration) -> serde_json::Value {
    json!({
        "endpoint": "token endpoint",
        "durable": saved,
        "expires_at": token.expires_at,
        "scope": token.scope,
        "has_refresh_token": token.refresh_token.is_some(),
        "token_type": token.token_type,
        "dpop_jkt": token.dpop.as_ref().map(|d| d.jkt.clone()),
        "flow_ms": elapsed.as_millis() as u64,
    })
}
