//! The two flows an upstream actor runs, as plain async functions: a refresh and a login
//! (browser or device). Each holds the server's cross-process lock for its whole length,
//! records itself in `oauth_flows`, re-reads the store once it holds the lock, and saves what
//! it obtains before returning it (so another process never presents a refresh token this one
//! has spent). A flow reports facts (a token, saved or not; a newer token in the store; why a
//! refresh failed); what follows is the state machine's decision. This module holds what both
//! flows work with ([`FlowContext`]); `rows` maps the stored rows.

mod grant;
mod login;
mod refresh;
mod rows;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::Addr;
use serde_json::json;

pub use grant::{GrantRequest, failure_of as grant_failure, grant};
pub use login::{LoginRequest, Published, login};
pub use refresh::{RefreshRequest, refresh};
pub use rows::{dpop_binding, endpoint_from_stored, facts, handed_out};

use super::state::RefreshFailure;
use crate::clock::{Clock, Millis};
use crate::config::UpstreamConfig;
use crate::oauth::OAuthError;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::http::OAuthHttp;
use crate::oauth::token::TokenEndpoint;
use crate::scheduler::Scheduler;
use crate::store::db::FlowStart;
use crate::store::lock::{self, FlowLock};
use crate::store::{
    Claim, ClaimRequest, FlowEnd, Secret, Store, StoreError, StoredClient, StoredToken, WriteGuard,
    Written, lease_for,
};
use crate::telemetry::flow_logger::{FlowEvent, FlowKind, FlowLogger, FlowStep};

/// What every flow of every server shares.
pub struct Runtime {
    /// The token store: SQLite (flows exclusive by the file lock in `lock_dir`) or PostgreSQL
    /// (flows exclusive by the lease row, claimed before any token request).
    pub store: Store,
    pub http: OAuthHttp,
    /// The same client with the longer refresh deadline.
    pub refresh_http: OAuthHttp,
    /// That deadline: a PostgreSQL refresh's lease outlives it (`lease_for`).
    pub refresh_timeout: Duration,
    /// SQLite: the per-server flow locks.
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
        rotated_refresh_token: Option<Secret>,
        /// A client the flow registered (and stored) before failing: a login reuses it.
        endpoint: Option<TokenEndpoint>,
    },
    LoginFailed {
        error: String,
        /// The login went with a dynamically registered client (stored or new).
        dynamic_client: bool,
    },
    /// The login failed before any browser opened, for a reason that passes (a timeout, a
    /// refused connection, a 5xx or 429): the authorization server was unwell, nobody was
    /// asked.
    LoginFailedBeforeBrowser {
        error: String,
        retry_after: Option<Millis>,
    },
}

impl FlowOutcome {
    /// A refresh (or grant) that failed with nothing rotated and no client to keep.
    fn refresh_failed(failure: RefreshFailure, error: String) -> FlowOutcome {
        FlowOutcome::RefreshFailed {
            failure,
            error,
            rotated_refresh_token: None,
            endpoint: None,
        }
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
pub enum SaveError {
    /// The flow was overtaken (logout, newer login): nothing was written, on purpose.
    Fenced,
    Store(String),
}

impl Fence {
    /// The fence as the store's guard, checked inside the write's transaction.
    pub fn guard(&self) -> WriteGuard {
        let fence = self.clone();
        WriteGuard::new(move || fence.is_current())
    }
}

/// Saves `token` (and `client`, if given) in one transaction, unless `fence` says the flow
/// was overtaken; with `finish`, the flow is marked succeeded in the same transaction.
/// SQLite: concurrent saves share one commit (the registry's group commit); the answer comes
/// once it is durable. PostgreSQL: a save outside any claim (the actor's retry of a token it
/// keeps in memory).
pub async fn save_fenced(
    store: &Store,
    fence: &Fence,
    token: &StoredToken,
    client: Option<StoredClient>,
    finish: Option<&str>,
) -> Result<(), SaveError> {
    let saved = match store {
        Store::Sqlite(s) => {
            let (token, fence, finish) = (token.clone(), fence.clone(), finish.map(String::from));
            s.registry()
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
        }
        Store::Postgres(_) => {
            let written = store
                .save_token(token, client.as_ref(), Some(&fence.guard()))
                .await;
            if let (Ok(Written::Done), Some(flow)) = (&written, finish)
                && let Err(e) = store.finish_flow(flow, None).await
            {
                tracing::warn!(error = %e, "could not record the flow end");
            }
            written.map(|w| w == Written::Done)
        }
    }
    .map_err(|e| SaveError::Store(e.to_string()))?;
    if saved {
        Ok(())
    } else {
        Err(SaveError::Fenced)
    }
}

/// What a flow holds while it runs, and what it read once it held it.
pub(super) struct Began {
    /// What the flow starts from. SQLite: a read that failed under the lock (the flow
    /// decides whether to go on).
    pub read: Result<FlowStart, StoreError>,
    /// Another flow of the server held it when this one asked.
    pub waited: bool,
    /// PostgreSQL: a refresh under an earlier claim got no answer (the server may have
    /// consumed the refresh token the row holds).
    pub ambiguous: Option<crate::store::Ambiguous>,
    /// SQLite: the server's file lock, held until the flow ends.
    pub _lock: Option<FlowLock>,
}

/// What one flow of one server works with: the runtime, the server, the flow's id and kind,
/// its fence, and (PostgreSQL) the claim it holds.
pub(super) struct FlowContext<'a> {
    pub rt: &'a Runtime,
    pub config: &'a UpstreamConfig,
    pub flow_id: &'a str,
    pub kind: FlowKind,
    pub fence: &'a Fence,
    /// PostgreSQL: the server's lease, from `begin` until `finish` (or a finishing `save`).
    claim: tokio::sync::Mutex<Option<Claim>>,
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
            claim: tokio::sync::Mutex::new(None),
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

    /// Makes this flow the server's only one (waiting up to `wait` for another's end), records
    /// it, and reads what it starts from; `deadline` bounds its token requests. SQLite: the
    /// file lock, then the flow row (a row that cannot be written does not stop the flow: the
    /// lock is what makes it exclusive). PostgreSQL: the lease row, claimed before any token
    /// request, with the re-read in the same transaction; no claim, no flow (what it obtained
    /// could not be recorded). An `Err` holds nothing and recorded nothing.
    async fn begin(&self, wait: Duration, deadline: Duration) -> Result<Began, StoreError> {
        let key = &self.config.server_key;
        match &self.rt.store {
            Store::Sqlite(_) => {
                let (held, waited) = match lock::try_acquire(&self.rt.lock_dir, key)? {
                    Some(held) => (held, false),
                    None if wait.is_zero() => {
                        return Err(StoreError::LockTimeout {
                            server_key: key.clone(),
                            waited_ms: 0,
                        });
                    }
                    None => (lock::acquire(&self.rt.lock_dir, key, wait).await?, true),
                };
                // The flow row's lease is the wait, as before the claim existed.
                Ok(Began {
                    read: self.begin_and_read(wait).await,
                    waited,
                    ambiguous: None,
                    _lock: Some(held),
                })
            }
            Store::Postgres(_) => {
                let request = ClaimRequest {
                    server_key: key.clone(),
                    server_name: self.config.name.clone(),
                    flow_id: self.flow_id.to_string(),
                    kind: self.kind.as_str(),
                    owner: self.rt.owner.clone(),
                    lease: lease_for(deadline),
                    wait,
                };
                let mut claim = self.rt.store.claim(&request).await?;
                let read = claim.take_read();
                let began = Began {
                    read: Ok(FlowStart {
                        not_recorded: None,
                        token: read.token,
                        client: read.client,
                        token_by_login: read.token_by_login,
                    }),
                    waited: claim.waited(),
                    ambiguous: read.ambiguous,
                    _lock: None,
                };
                tracing::debug!(fence = claim.lease().fence, "claimed the server's lease");
                *self.claim.lock().await = Some(claim);
                Ok(began)
            }
        }
    }

    /// SQLite: records the flow and reads what it starts from (token, client), in one
    /// registry job.
    async fn begin_and_read(&self, lease: Duration) -> Result<FlowStart, StoreError> {
        let Store::Sqlite(sqlite) = &self.rt.store else {
            unreachable!("a PostgreSQL flow begins with its claim")
        };
        let (flow, key, name, owner, kind) = (
            self.flow_id.to_string(),
            self.config.server_key.clone(),
            self.config.name.clone(),
            self.rt.owner.clone(),
            self.kind.as_str(),
        );
        let lease_ms = lease.as_millis() as i64;
        let start = sqlite
            .registry()
            .call(move |s| s.begin_flow_and_read(&flow, &key, &name, kind, &owner, lease_ms))
            .await?;
        if let Some(e) = &start.not_recorded {
            tracing::warn!(error = %e, "could not record the flow start");
        }
        Ok(start)
    }

    /// Records the flow's end (a failure's `error` is scrubbed by the store), releasing its
    /// claim.
    async fn finish(&self, error: Option<String>) {
        let claim = self.claim.lock().await.take();
        let finished = match claim {
            Some(mut claim) => {
                let end = match error {
                    Some(error) => FlowEnd::Failed(error),
                    None => FlowEnd::Succeeded,
                };
                // A claim whose finish fails is dropped: it is released in the background,
                // or expires.
                claim.finish(end).await.map(|_| ())
            }
            None => {
                self.rt
                    .store
                    .finish_flow(self.flow_id, error.as_deref())
                    .await
            }
        };
        if let Err(e) = finished {
            tracing::warn!(error = %e, "could not record the flow end");
        }
    }

    /// Saves `token` (and `client`) fenced; with `finish`, the flow is marked succeeded (and
    /// its claim released) in the same transaction. Under a claim, only while the lease row
    /// holds the claim's fence.
    async fn save(
        &self,
        token: &StoredToken,
        client: Option<StoredClient>,
        finish: bool,
    ) -> Result<(), SaveError> {
        let mut slot = self.claim.lock().await;
        let Some(claim) = slot.as_mut() else {
            let finish = finish.then_some(self.flow_id);
            return save_fenced(&self.rt.store, self.fence, token, client, finish).await;
        };
        let guard = self.fence.guard();
        let written = if finish {
            let end = FlowEnd::Saved {
                token,
                client: client.as_ref(),
                guard: Some(guard),
            };
            let written = claim.finish(end).await;
            if written.is_ok() {
                *slot = None;
            }
            written
        } else {
            claim.save(token, client.as_ref(), Some(&guard)).await
        };
        match written.map_err(|e| SaveError::Store(e.to_string()))? {
            Written::Done => Ok(()),
            Written::Overtaken => Err(SaveError::Fenced),
            Written::LeaseLost { fence_now } => {
                drop(slot);
                // A logout elsewhere moves the fence on with its delete: the token is gone,
                // and this one must not come back. Else another flow took the lease over
                // (this one outlived it): the token is kept in memory, its save retried.
                match self.rt.store.load_token(&self.config.server_key).await {
                    Ok(None) => Err(SaveError::Fenced),
                    _ => Err(SaveError::Store(format!(
                        "the server's lease was taken over by another flow (fence now \
                         {fence_now:?}); nothing was written"
                    ))),
                }
            }
        }
    }

    /// PostgreSQL: marks the stored token ambiguous under the claim (a refresh presenting
    /// `presented` got no answer); the next claim of any instance reads the mark.
    async fn mark_ambiguous(&self, presented: &str) {
        let slot = self.claim.lock().await;
        let Some(claim) = slot.as_ref() else { return };
        let id = crate::store::RefreshTokenId::of(presented);
        match claim.mark_ambiguous(id).await {
            Ok(marked) => tracing::warn!(
                marked,
                "the refresh got no answer: the stored token is marked ambiguous, and the next \
                 attempt re-reads it before presenting anything"
            ),
            Err(e) => tracing::warn!(error = %e, "could not mark the unanswered refresh"),
        }
    }
}

impl FlowContext<'_> {
    /// Takes a refresh slot and the server's cross-process lock (waiting at most `wait`),
    /// then records the flow and reads the store under the lock. A failure is transient.
    async fn lock_and_begin(
        &self,
        wait: Duration,
    ) -> Result<(crate::store::lock::FlowLock, FlowStart), FlowOutcome> {
        let failed = |error: String| {
            FlowOutcome::refresh_failed(RefreshFailure::Transient { retry_after: None }, error)
        };
        let _slot = self.rt.scheduler.refresh_slot().await;
        let lock = crate::store::lock::acquire(&self.rt.lock_dir, &self.config.server_key, wait)
            .await
            .map_err(|e| failed(e.to_string()))?;
        match self.begin_and_read(wait).await {
            Ok(start) => Ok((lock, start)),
            Err(e) => {
                let error = format!("cannot read the token store: {e}");
                self.finish(Some(error.clone())).await;
                Err(failed(error))
            }
        }
    }

    /// Saves a token the flow obtained, fenced, marking the flow succeeded: `Ok(true)` when
    /// durable, `Ok(false)` when only in memory (the machine retries the save); a flow a
    /// logout overtook ends with `TokenGone`. `what` names the token in the logs.
    async fn save_obtained(&self, token: &StoredToken, what: &str) -> Result<bool, FlowOutcome> {
        match self.save(token, None, true).await {
            Ok(()) => Ok(true),
            Err(SaveError::Fenced) => {
                tracing::info!("a logout overtook this flow; the {what} token is discarded");
                let error = "overtaken by a logout".to_string();
                self.finish(Some(error.clone())).await;
                Err(FlowOutcome::refresh_failed(
                    RefreshFailure::TokenGone,
                    error,
                ))
            }
            Err(SaveError::Store(e)) => {
                tracing::error!(
                    error = %e,
                    "the {what} token could not be persisted; it is kept in memory and its save is retried",
                );
                // The flow's end was in the failed transaction: recorded on its own.
                self.finish(None).await;
                Ok(false)
            }
        }
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
