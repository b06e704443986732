//! The `UpstreamActor`: one per server. It owns the server's state machine and mailbox, performs
//! the machine's effects, and keeps the waiters of the running flow, so concurrent requests
//! share one flow and its outcome (single flight). Status never waits for a flow: flows run as
//! spawned futures while the mailbox stays open.
//!
//! The actor is the only writer of the server's token. It publishes each token as a snapshot
//! (`ArcSwapOption`), so `access_token()` on a still-valid token is a lock-free read that never
//! reaches this mailbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use super::flows::{
    self, Fence, FlowOutcome, LoginClient, LoginRequest, RefreshRequest, Runtime,
    endpoint_from_stored, facts,
};
use super::state::{
    Effect, Event, Failure, LoginReason, Millis, Phase, Policy, RefreshFailure, Resolution, State,
    clock, step,
};
use crate::clock::now_ms;
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::client_identity::ClientSource;
use crate::oauth::dpop::{Dpop, DpopKey};
use crate::oauth::scope::step_up;
use crate::oauth::token::TokenEndpoint;
use crate::scheduler::{Due, Owner, TimerKind, instant_at};
use crate::store::{StoredClient, StoredToken, lock};

/// How long a logout waits for a running flow of another process before deleting anyway.
const LOGOUT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// What callers may read without asking the actor. The hand-out deadline and the clock to
/// check it with are worked out once, when the actor publishes it, so the hot path is one
/// clock read and one compare.
pub struct TokenSnapshot {
    pub access_token: oauth2::AccessToken,
    pub expires_at: Option<Millis>,
    pub safety_margin: Millis,
    /// Handed out while the clock reads less than this (`expires_at - safety_margin`).
    until: Millis,
    /// The margin is wide enough for the coarse clock (`supervisor::clock`).
    coarse: bool,
    /// `Bearer`, or `DPoP` for a token bound to `dpop`'s key (RFC 9449).
    pub token_type: String,
    /// The key (and the nonces seen) to prove possession with, for a DPoP-bound token.
    pub dpop: Option<Dpop>,
}

impl TokenSnapshot {
    pub fn new(
        access_token: oauth2::AccessToken,
        expires_at: Option<Millis>,
        safety_margin: Millis,
    ) -> Self {
        TokenSnapshot {
            access_token,
            expires_at,
            safety_margin,
            until: expires_at.map_or(Millis::MAX, |e| e.saturating_sub(safety_margin)),
            coarse: crate::supervisor::clock::coarse_is_safe(safety_margin),
            token_type: "Bearer".into(),
            dpop: None,
        }
    }

    /// The token's type and, for a DPoP-bound one, its key.
    pub fn bound(mut self, token_type: &str, dpop: Option<Dpop>) -> Self {
        self.token_type = token_type.to_string();
        self.dpop = dpop;
        self
    }

    pub fn usable(&self, now: Millis) -> bool {
        now < self.until
    }

    /// Usable now, by the cheapest clock that is safe for this token.
    #[inline]
    pub fn usable_now(&self) -> bool {
        self.expires_at.is_none() || crate::supervisor::clock::now_for(self.coarse) < self.until
    }
}

pub type Snapshot = Arc<ArcSwapOption<TokenSnapshot>>;

/// A usable access token handed to a caller, with the flow that produced it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: oauth2::AccessToken,
    pub expires_at: Option<Millis>,
    /// The correlation ID of the flow this caller waited for, if it waited for one.
    pub flow_id: Option<String>,
    /// `Bearer`, or `DPoP`: then every request with the token carries a proof of `dpop`'s key.
    pub token_type: String,
    pub dpop: Option<Dpop>,
}

/// Why a server gave a caller no token: `failure` is the typed reason (match on it, not on
/// the message).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{server}: {failure}")]
pub struct UpstreamError {
    pub server: String,
    pub failure: Failure,
    pub flow_id: Option<String>,
}

/// A phase change, for subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub server: String,
    #[serde(flatten)]
    pub phase: Phase,
    pub detail: Option<String>,
    pub at: Millis,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub url: String,
    pub server_key: String,
    /// The phase with its fields (`phase` is its stable name when serialized).
    #[serde(flatten)]
    pub phase: Phase,
    /// The phase in words, for people.
    pub detail: Option<String>,
    pub expires_at: Option<Millis>,
    /// A token (usable or not) is held.
    pub has_token: bool,
    pub has_refresh_token: bool,
    pub scope: Option<String>,
    /// When the machine acts next by itself (a retry, the browser, a refresh), if it waits.
    pub next_attempt_at: Option<Millis>,
    /// The proactive refresh time of the current token.
    pub next_refresh_at: Option<Millis>,
    /// Failed refreshes in a row.
    pub refresh_failures: u32,
    /// The current token is not in the store yet (its save failed; it is retried).
    pub unsaved_token: bool,
    /// How often this server's timer fired since start (refreshes, retries, browser window).
    pub timers_fired: u64,
    /// While a browser login waits: its authorization URL (open it by hand if no browser
    /// opened). It holds no secret.
    pub auth_url: Option<String>,
    /// While a device login (RFC 8628) waits: the user code, where to enter it, and when it
    /// expires. Holds no secret (the device code stays in the flow).
    pub device_login: Option<crate::oauth::device::DevicePrompt>,
    pub running_flow: Option<String>,
    /// Kind (`refresh` / `login`) and start (unix ms) of the running flow.
    pub running_flow_kind: Option<String>,
    pub running_flow_started_at: Option<Millis>,
    pub last_flow: Option<String>,
    /// When the armed timer fires: the proactive refresh, or the retry in backoff.
    pub timer_at: Option<Millis>,
    /// The current token's type: `Bearer`, or `DPoP` (RFC 9449).
    pub token_type: Option<String>,
    /// For a DPoP-bound token: the RFC 7638 thumbprint of its key (public; the `cnf.jkt`).
    pub dpop_jkt: Option<String>,
    /// The MCP protocol version the embedding runtime reported for this server
    /// (`SupervisorHandle::report_protocol_version`).
    pub protocol_version: Option<String>,
}

type Reply = Result<Grant, UpstreamError>;

pub struct UpstreamActor {
    config: Arc<UpstreamConfig>,
    rt: Arc<Runtime>,
    policy: Policy,
    snapshot: Snapshot,
    events: broadcast::Sender<StateChange>,
    state: State,
    /// The newest token this process holds (the machine has its facts, this has its secrets).
    current: Option<StoredToken>,
    /// `current` is in the store; `false` after a failed save, until a later save succeeds.
    current_durable: bool,
    endpoint: Option<TokenEndpoint>,
    /// The last browser login with a registered client failed: the next one registers anew
    /// (the authorization server may have forgotten the client).
    fresh_client: bool,
    /// The access token the upstream refused, so a reload does not trust it again.
    refused: Option<String>,
    last_challenge: Option<BearerChallenge>,
    /// After a 403 `insufficient_scope`: the scope the next login asks for on top (the union
    /// of the granted and the demanded ones); cleared by a login's token.
    step_up_scope: Option<String>,
    waiters: Vec<oneshot::Sender<Reply>>,
    running_flow: Option<String>,
    running_flow_kind: &'static str,
    /// The running load or flow, so a logout can cancel it.
    flow_handle: Option<SpawnHandle>,
    last_flow: Option<String>,
    /// This actor's id in the scheduler, which holds all its deadlines.
    owner: Owner,
    /// The arming of the machine's timer waiting in the scheduler (a `Due` for another one is
    /// stale).
    timer: Option<u64>,
    /// The machine's generation, shared with running flows, which check it before each write.
    generation: Arc<AtomicU64>,
    /// How often the timer fired, for status: a spinning machine shows here first.
    timers_fired: u64,
    /// The pending retry of a failed token save: its arming and its delay.
    save_retry: Option<(u64, Duration)>,
    /// Shutting down: no new flow starts; `drained` hears when the running one is over.
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
    /// Restarted after a panic: reload from the store as soon as the actor runs again.
    reload_on_start: bool,
    /// The running login's authorization URL, published by its launcher.
    auth_url: Arc<std::sync::Mutex<Option<String>>>,
    /// The running device login's prompt (user code, verification URL, expiry).
    device_prompt: Arc<std::sync::Mutex<Option<crate::oauth::device::DevicePrompt>>>,
    /// The DPoP key of the current token (RFC 9449) with the nonces its servers handed out,
    /// shared with the published snapshot and the flows.
    dpop: Option<Dpop>,
    /// The key logins prove where they use DPoP (kept across failed logins, with the nonces
    /// their token endpoint handed out); becomes `dpop` when a login's token is bound to it.
    login_dpop: Option<Dpop>,
    /// What the embedding runtime last reported having negotiated with the server.
    protocol_version: Option<String>,
    running_flow_started_at: Millis,
    timer_at: Option<Millis>,
}

impl UpstreamActor {
    pub fn new(
        config: Arc<UpstreamConfig>,
        rt: Arc<Runtime>,
        policy: Policy,
        snapshot: Snapshot,
        events: broadcast::Sender<StateChange>,
    ) -> Self {
        UpstreamActor {
            state: State::new(policy, rand::random::<f64>()),
            owner: rt.scheduler.new_owner(),
            config,
            rt,
            policy,
            snapshot,
            events,
            current: None,
            current_durable: true,
            endpoint: None,
            fresh_client: false,
            refused: None,
            last_challenge: None,
            step_up_scope: None,
            waiters: Vec::new(),
            running_flow: None,
            running_flow_kind: "",
            flow_handle: None,
            last_flow: None,
            timer: None,
            generation: Arc::new(AtomicU64::new(0)),
            timers_fired: 0,
            save_retry: None,
            draining: false,
            drained: Vec::new(),
            reload_on_start: false,
            auth_url: Arc::default(),
            device_prompt: Arc::default(),
            dpop: None,
            login_dpop: None,
            protocol_version: None,
            running_flow_started_at: 0,
            timer_at: None,
        }
    }

    fn apply(&mut self, event: Event, ctx: &mut Context<Self>) {
        let before = self.state.phase.clone();
        let (next, effects) = step(&self.state, event, now_ms());
        self.state = next;
        // Before any effect: a flow overtaken by this step must not write any more.
        self.generation
            .store(self.state.generation, Ordering::SeqCst);
        if self.state.phase != before {
            let detail = phase_detail(&self.state.phase);
            // A routine refresh is one line at info ("token refreshed"); its phase changes are
            // detail. Every other change is news.
            let routine = matches!(
                (before.name(), self.state.phase.name()),
                ("connected", "refreshing")
                    | ("refreshing", "connected")
                    | ("idle", "loading")
                    | ("loading", "connected")
            );
            if routine {
                tracing::debug!(server = %self.config.name, from = before.name(), to = self.state.phase.name(), "state changed");
            } else {
                tracing::info!(server = %self.config.name, from = before.name(), to = self.state.phase.name(), detail = detail.as_deref().unwrap_or(""), "state changed");
            }
            let _ = self.events.send(StateChange {
                server: self.config.name.clone(),
                phase: self.state.phase.clone(),
                detail,
                at: now_ms(),
            });
        }
        for effect in effects {
            self.perform(effect, ctx);
        }
    }

    fn fence(&self) -> Fence {
        Fence::new(self.generation.clone(), self.state.generation)
    }

    fn perform(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        if self.draining
            && matches!(
                effect,
                Effect::LoadToken
                    | Effect::StartRefresh(_)
                    | Effect::StartLogin
                    | Effect::ArmTimer { .. }
            )
        {
            // Shutting down: nothing new starts; whoever waits for it hears why.
            self.resolve(Resolution::Failed(Failure::Stopped));
            return;
        }
        match effect {
            Effect::LoadToken => {
                let generation = self.state.generation;
                let handle = ctx.spawn(self.load_stored().into_actor(self).map(
                    move |result, act, ctx| {
                        act.flow_handle = None;
                        match result {
                            Ok((token, client)) => {
                                if generation != act.state.generation {
                                    return;
                                }
                                act.adopt_client(client.as_ref());
                                let token_facts = token.as_ref().map(|t| act.facts_of(t));
                                act.set_current(token, true);
                                act.apply(
                                    Event::Loaded {
                                        generation,
                                        token: token_facts,
                                    },
                                    ctx,
                                );
                            }
                            Err(e) => act.apply(
                                Event::LoadFailed {
                                    generation,
                                    error: format!("cannot read the token store: {e}"),
                                },
                                ctx,
                            ),
                        }
                    },
                ));
                self.flow_handle = Some(handle);
            }
            Effect::StartRefresh(plan) => {
                let generation = self.state.generation;
                let Some(current) = self.current.clone() else {
                    // The machine only refreshes a token it knows; nothing to present.
                    self.apply(
                        Event::RefreshFailed {
                            generation,
                            failure: RefreshFailure::RefreshTokenDead,
                            error: "no token to refresh".into(),
                        },
                        ctx,
                    );
                    return;
                };
                let flow_id = self.begin_flow("refresh");
                let request = RefreshRequest {
                    current,
                    current_durable: self.current_durable,
                    endpoint: self.endpoint.clone(),
                    plan,
                    after_refusal: self.state.refresh_after_refusal,
                    challenge: self.last_challenge.clone(),
                    dpop: self.dpop.clone(),
                };
                let flow = flows::refresh(
                    self.rt.clone(),
                    self.config.clone(),
                    flow_id.clone(),
                    self.fence(),
                    request,
                );
                self.spawn_flow(flow_id, generation, flow, ctx);
            }
            Effect::StartLogin => {
                let generation = self.state.generation;
                let counted = self.rt.scheduler.login_running();
                let flow_id = self.begin_flow("login");
                // A login that uses DPoP proves this key; the token it brings back is bound
                // to it, and the nonces its token endpoint hands out carry over to refreshes.
                let dpop = match (&self.dpop, &self.login_dpop) {
                    (Some(current), _) => current.clone(),
                    (None, Some(earlier)) => earlier.clone(),
                    (None, None) => self
                        .login_dpop
                        .insert(Dpop::new(DpopKey::generate()))
                        .clone(),
                };
                let request = LoginRequest {
                    previous: self.endpoint.clone(),
                    fresh_client: self.fresh_client,
                    challenge: self.last_challenge.clone(),
                    requested_at: now_ms(),
                    auth_url: self.auth_url.clone(),
                    step_up_scope: self.step_up_scope.clone(),
                    device_prompt: self.device_prompt.clone(),
                    dpop,
                };
                let login = flows::login(
                    self.rt.clone(),
                    self.config.clone(),
                    flow_id.clone(),
                    self.fence(),
                    request,
                );
                let flow = async move {
                    let _counted = counted;
                    login.await
                };
                self.spawn_flow(flow_id, generation, flow, ctx);
            }
            Effect::CancelFlow => {
                if let Some(handle) = self.flow_handle.take() {
                    ctx.cancel_future(handle);
                }
                if let Some(flow) = self.running_flow.take() {
                    tracing::info!(server = %self.config.name, correlation_id = %flow, "the running flow was cancelled");
                    self.last_flow = Some(flow);
                }
            }
            Effect::ArmTimer { at } => {
                // Re-arming replaces the waiting entry. A proactive refresh may be staggered,
                // but never past the moment the token stops being handed out.
                let now = now_ms();
                let latest = match self.state.phase {
                    Phase::Connected => self.state.token.and_then(|t| t.unusable_at()),
                    _ => None,
                };
                let (arming, when) = self.rt.scheduler.arm(
                    self.owner,
                    TimerKind::Machine,
                    instant_at(at, now),
                    latest.map(|l| instant_at(l, now)),
                    ctx.address().downgrade().recipient(),
                );
                let wait = when.saturating_duration_since(tokio::time::Instant::now());
                self.timer_at = Some(at.max(now + wait.as_millis() as Millis));
                self.timer = Some(arming);
            }
            Effect::CancelTimer => {
                if self.timer.take().is_some() {
                    self.rt.scheduler.cancel(self.owner, TimerKind::Machine);
                }
            }
            Effect::ResolveWaiters(resolution) => self.resolve(resolution),
            Effect::DropRefreshToken => {
                if let Some(t) = self.current.as_mut() {
                    t.refresh_token = None;
                }
                let key = self.config.server_key.clone();
                let registry = self.rt.registry.clone();
                let fence = self.fence();
                ctx.spawn(
                    async move {
                        let result = registry
                            .call(move |s| {
                                if fence.is_current() {
                                    s.drop_refresh_token(&key)?;
                                }
                                Ok(())
                            })
                            .await;
                        if let Err(e) = result {
                            tracing::error!(error = %e, "could not forget the refused refresh token");
                        }
                    }
                    .into_actor(self),
                );
            }
            Effect::ForgetToken => {
                self.set_current(None, true);
                self.refused = None;
            }
            Effect::AnnounceReauthentication { reason } => {
                tracing::warn!(server = %self.config.name, reason = ?reason, "re-authentication required for {}: {reason}", self.config.name);
            }
        }
    }

    /// Reads the server's stored token and client.
    fn load_stored(
        &self,
    ) -> impl std::future::Future<
        Output = Result<(Option<StoredToken>, Option<StoredClient>), crate::store::StoreError>,
    > + 'static {
        let key = self.config.server_key.clone();
        let registry = self.rt.registry.clone();
        async move { registry.call(move |s| s.load_token_and_client(&key)).await }
    }

    /// The machine's facts about a stored token, remembering a refusal of the same token.
    fn facts_of(&self, token: &StoredToken) -> super::state::TokenFacts {
        let mut f = facts(token);
        f.refused = self.refused.as_deref() == Some(token.access_token.as_str());
        f
    }

    fn adopt_client(&mut self, client: Option<&StoredClient>) {
        if let Some(client) = client {
            self.endpoint = Some(endpoint_from_stored(client));
        }
    }

    /// Runs a flow as this actor's one flow, on the flow threads (its HTTP and TLS do not hold
    /// up the actors' mailboxes); its outcome comes back here. Cancelling the actor's future
    /// (a logout) aborts the task. A panic inside it is caught: the actor stops, and its
    /// supervisor restarts it with its state reloaded from the store (other servers go on).
    fn spawn_flow(
        &mut self,
        flow_id: String,
        generation: u64,
        flow: impl std::future::Future<Output = FlowOutcome> + Send + 'static,
        ctx: &mut Context<Self>,
    ) {
        let flow = AbortOnDrop(self.rt.flow_threads.spawn(flow));
        let handle = ctx.spawn(flow.into_actor(self).map(move |outcome, act, ctx| {
            match outcome {
                Ok(outcome) => act.flow_done(flow_id, generation, outcome, ctx),
                Err(_) => {
                    tracing::error!(server = %act.config.name, correlation_id = %flow_id, "the flow panicked; restarting the server's actor, which reloads its state from the store");
                    act.reload_on_start = true;
                    ctx.stop();
                }
            }
        }));
        self.flow_handle = Some(handle);
    }

    /// A token whose save failed lives in memory (and is the one the next refresh presents);
    /// its save is retried with backoff until the store takes it.
    fn retry_save(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if self.save_retry.is_some() {
            return;
        }
        let (arming, _) = self.rt.scheduler.arm(
            self.owner,
            TimerKind::SaveRetry,
            tokio::time::Instant::now() + delay,
            None,
            ctx.address().downgrade().recipient(),
        );
        self.save_retry = Some((arming, delay));
    }

    /// The save retry is due: save the token kept in memory, or arm the next retry.
    fn save_again(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        let Some(token) = self.current.clone().filter(|_| !self.current_durable) else {
            return;
        };
        let (registry, fence, saved) = (
            self.rt.registry.clone(),
            self.fence(),
            token.access_token.clone(),
        );
        let save = async move {
            registry
                .call(move |s| {
                    if fence.is_current() {
                        s.save_token(&token)?;
                    }
                    Ok(())
                })
                .await
        };
        ctx.spawn(save.into_actor(self).map(move |result, act, ctx| match result {
            Ok(()) => {
                if act.current.as_ref().is_some_and(|t| t.access_token == saved) {
                    act.current_durable = true;
                    tracing::info!(server = %act.config.name, "the token kept in memory is now in the store");
                }
                act.notify_drained();
            }
            Err(e) => {
                tracing::warn!(server = %act.config.name, error = %e, "the token still cannot be saved; it stays in memory and is retried");
                act.retry_save((delay * 2).min(Duration::from_secs(30)), ctx);
            }
        }));
    }

    fn busy(&self) -> bool {
        self.flow_handle.is_some() || (self.current.is_some() && !self.current_durable)
    }

    fn notify_drained(&mut self) {
        if self.draining && !self.busy() {
            for done in self.drained.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn begin_flow(&mut self, kind: &'static str) -> String {
        *self.auth_url.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let flow_id = uuid::Uuid::new_v4().to_string();
        self.running_flow = Some(flow_id.clone());
        self.running_flow_kind = kind;
        self.running_flow_started_at = now_ms();
        flow_id
    }

    fn flow_done(
        &mut self,
        flow_id: String,
        generation: u64,
        outcome: FlowOutcome,
        ctx: &mut Context<Self>,
    ) {
        // The decision taken on this outcome (connected, retry at T, re-login, wait) is
        // logged inside the flow's span, so the flow's trace ends with it.
        let span = tracing::info_span!("oauth_flow", correlation_id = %flow_id, server = %self.config.name, flow_kind = self.running_flow_kind);
        let _entered = span.enter();
        let kind = self.running_flow_kind;
        self.flow_handle = None;
        if generation != self.state.generation {
            tracing::info!(
                "the flow was overtaken (logout or a newer login); its result is ignored"
            );
            return;
        }
        // This flow is over before the machine reacts: the reaction may start the next one.
        self.last_flow = Some(flow_id.clone());
        self.running_flow = None;
        let event = match outcome {
            FlowOutcome::Token {
                token,
                endpoint,
                durable,
            } => {
                if let Some(endpoint) = endpoint {
                    self.endpoint = Some(endpoint);
                }
                if kind == "login" {
                    self.fresh_client = false;
                    self.step_up_scope = None;
                }
                let token_facts = facts(&token);
                self.refused = None;
                self.set_current(Some(token), durable);
                Event::TokenObtained {
                    generation,
                    token: token_facts,
                }
            }
            FlowOutcome::RefreshFailed {
                failure,
                error,
                rotated_refresh_token,
                endpoint,
            } => {
                if let Some(endpoint) = endpoint {
                    self.endpoint = Some(endpoint);
                }
                if let (Some(rotated), Some(current)) =
                    (rotated_refresh_token, self.current.as_mut())
                {
                    current.refresh_token = Some(rotated);
                }
                Event::RefreshFailed {
                    generation,
                    failure,
                    error,
                }
            }
            FlowOutcome::LoginFailed { error, client } => {
                // The dynamically registered client the login used may be unknown to the
                // authorization server now (it forgot it, or never had it): the next login
                // registers again. A login that failed before choosing a client says nothing.
                let registered = matches!(
                    client,
                    LoginClient::New | LoginClient::Reused(ClientSource::Registered)
                );
                if registered && self.config.client.client_id.is_none() {
                    self.fresh_client = true;
                }
                Event::LoginFailed { generation, error }
            }
        };
        self.apply(event, ctx);
        self.announce_decision(&flow_id, kind);
        if self.current.is_some() && !self.current_durable {
            self.retry_save(Duration::from_secs(1), ctx);
        }
        self.notify_drained();
    }

    /// The flow's last trace event: what the machine decided on its outcome.
    fn announce_decision(&self, flow_id: &str, kind: &'static str) {
        let phase = &self.state.phase;
        let decision = match phase {
            Phase::Connected => "use the new token".to_string(),
            Phase::BackingOff { retry_at, .. } => format!("retry at {retry_at}"),
            Phase::Retrying {
                retry_at, until, ..
            } => {
                format!("retry slowly: next at {retry_at}, until {until}")
            }
            Phase::Authorizing => "re-login: a browser login started".into(),
            Phase::Refreshing if self.state.reregistered => {
                "register a new client and refresh again".into()
            }
            Phase::Refreshing if self.state.scope_omitted => "refresh again without scope".into(),
            Phase::Refreshing => "refresh again".into(),
            Phase::NeedsLogin { .. } => "wait for a login".into(),
            Phase::ClientRejected { retry_at, .. } => {
                format!("fix the configured client; retry at {retry_at}")
            }
            Phase::LoggedOut => "logged out".into(),
            other => other.name().to_string(),
        };
        let mut details = serde_json::to_value(phase).unwrap_or_default();
        details["decision"] = decision.clone().into();
        if let Phase::Connected = phase {
            details["next_refresh_at"] = self
                .state
                .token
                .and_then(|t| t.refresh_at(self.state.jitter))
                .into();
        }
        if matches!(phase, Phase::Connected) {
            tracing::debug!(decision = %decision, "decision taken");
        } else {
            tracing::info!(decision = %decision, "decision taken");
        }
        self.rt
            .flow_event(flow_id, &self.config.name, kind, "decision", details);
    }

    /// Replaces the current token and publishes its snapshot (or its absence).
    fn set_current(&mut self, token: Option<StoredToken>, durable: bool) {
        let jkt = token
            .as_ref()
            .and_then(|t| t.dpop.as_ref())
            .map(|d| d.jkt.as_str());
        let known = [self.dpop.as_ref(), self.login_dpop.as_ref()]
            .into_iter()
            .flatten()
            .find(|d| Some(d.key().thumbprint()) == jkt)
            .cloned();
        self.dpop = match token
            .as_ref()
            .map(|t| flows::dpop_binding(t, known.as_ref()))
        {
            Some(Ok(dpop)) => dpop,
            Some(Err(e)) => {
                // The refresh reports it too (and asks for a login); the access token is
                // still handed out: the resource decides.
                tracing::warn!(server = %self.config.name, error = %e, "the stored DPoP key cannot be used");
                None
            }
            None => None,
        };
        let snapshot = token
            .as_ref()
            .filter(|t| self.refused.as_deref() != Some(t.access_token.as_str()))
            .map(|t| {
                Arc::new(
                    TokenSnapshot::new(
                        oauth2::AccessToken::new(t.access_token.clone()),
                        t.expires_at,
                        facts(t).safety_margin(),
                    )
                    .bound(&t.token_type, self.dpop.clone()),
                )
            });
        self.snapshot.store(snapshot);
        self.current = token;
        self.current_durable = durable;
    }

    fn resolve(&mut self, resolution: Resolution) {
        let flow_id = self.running_flow.clone().or_else(|| self.last_flow.clone());
        let reply: Reply = match (resolution, &self.current) {
            (Resolution::Ready, Some(token)) => Ok(Grant {
                access_token: oauth2::AccessToken::new(token.access_token.clone()),
                expires_at: token.expires_at,
                flow_id: flow_id.clone(),
                token_type: token.token_type.clone(),
                dpop: self.dpop.clone(),
            }),
            (Resolution::Ready, None) => Err(self.error(
                Failure::NeedsLogin {
                    reason: LoginReason::NoStoredToken,
                },
                flow_id.clone(),
            )),
            (Resolution::Failed(failure), _) => Err(self.error(failure, flow_id.clone())),
        };
        if let Err(e) = &reply {
            tracing::debug!(server = %self.config.name, waiters = self.waiters.len(), error = %e.failure, "answering waiters with a failure");
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(reply.clone());
        }
    }

    fn error(&self, failure: Failure, flow_id: Option<String>) -> UpstreamError {
        UpstreamError {
            server: self.config.name.clone(),
            failure,
            flow_id,
        }
    }

    /// Queues a waiter, feeds the event, and returns the future of the waiter's answer.
    fn wait_for(&mut self, event: Event, ctx: &mut Context<Self>) -> ResponseFuture<Reply> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        if let Some(flow) = &self.running_flow {
            tracing::debug!(server = %self.config.name, correlation_id = %flow, "joining the running flow");
        }
        self.apply(event, ctx);
        let server = self.config.name.clone();
        Box::pin(async move {
            rx.await.unwrap_or(Err(UpstreamError {
                server,
                failure: Failure::Stopped,
                flow_id: None,
            }))
        })
    }

    /// A usable token other than `reported` (a report about a token already replaced).
    fn newer_grant(&self, reported: &str) -> Option<Grant> {
        self.current
            .as_ref()
            .filter(|current| current.access_token != reported)
            .and_then(|_| self.usable_grant())
    }

    fn usable_grant(&self) -> Option<Grant> {
        let snapshot = self.snapshot.load_full()?;
        snapshot.usable(now_ms()).then(|| Grant {
            access_token: snapshot.access_token.clone(),
            expires_at: snapshot.expires_at,
            flow_id: None,
            token_type: snapshot.token_type.clone(),
            dpop: snapshot.dpop.clone(),
        })
    }

    /// Another process may have changed the store: compare with what this actor holds and
    /// feed `StoreChanged` when it differs. Skipped while a flow runs: flows re-read the store
    /// under the lock.
    fn check_store(&mut self, ctx: &mut Context<Self>) {
        if self.state.phase.flow_running() || matches!(self.state.phase, Phase::Idle) {
            return;
        }
        if !self.current_durable {
            // The store is behind us (a failed save): what it holds is older, not newer.
            return;
        }
        let generation = self.state.generation;
        ctx.spawn(self.load_stored().into_actor(self).map(move |result, act, ctx| {
            let Ok((stored, client)) = result else { return };
            if generation != act.state.generation || act.state.phase.flow_running() {
                return;
            }
            let same = match (&stored, &act.current) {
                (Some(s), Some(c)) => {
                    s.access_token == c.access_token && s.refresh_token == c.refresh_token
                }
                (None, None) => true,
                _ => false,
            };
            if same {
                return;
            }
            tracing::info!(server = %act.config.name, stored = stored.is_some(), "another process changed the stored token");
            act.adopt_client(client.as_ref());
            let token_facts = stored.as_ref().map(|t| act.facts_of(t));
            if stored.is_some() {
                act.refused = None;
                act.set_current(stored, true);
            }
            act.apply(Event::StoreChanged(token_facts), ctx);
        }));
    }
}

fn phase_detail(phase: &Phase) -> Option<String> {
    match phase {
        Phase::NeedsLogin {
            reason, browser_at, ..
        } => Some(match browser_at {
            Some(at) => format!(
                "{reason}; the browser opens by itself at {}, or run a login",
                clock(*at)
            ),
            None => format!("{reason}; run a login"),
        }),
        Phase::BackingOff {
            attempt,
            retry_at,
            last_error,
        } => Some(format!(
            "attempt {attempt} failed ({last_error}); retry at {}",
            clock(*retry_at)
        )),
        Phase::Retrying {
            attempt,
            retry_at,
            until,
            last_error,
        } => Some(format!(
            "attempt {attempt} failed ({last_error}); retrying slowly, next at {}, a login is needed after {}",
            clock(*retry_at),
            clock(*until)
        )),
        Phase::ClientRejected { error, .. } => Some(format!(
            "the authorization server rejected the configured client ({error}); fix oauth.client_id / oauth.client_secret"
        )),
        Phase::StoreUnavailable {
            error, retry_at, ..
        } => Some(format!("{error}; retry at {}", clock(*retry_at))),
        Phase::LoggedOut => Some("logged out; run a login".into()),
        _ => None,
    }
}

impl Actor for UpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Waiting callers must not block behind a full mailbox for long.
        ctx.set_mailbox_capacity(1024);
        if std::mem::take(&mut self.reload_on_start) {
            self.apply(Event::Reconnect, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.rt.scheduler.forget(self.owner);
    }
}

impl Supervised for UpstreamActor {
    /// A restarted actor forgets everything and reloads from the registry on the next request.
    fn restarting(&mut self, _: &mut Context<Self>) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(UpstreamError {
                server: self.config.name.clone(),
                failure: Failure::Stopped,
                flow_id: None,
            }));
        }
        // A new generation: nothing a flow of the old actor still holds may be written.
        let generation = self.state.generation + 1;
        self.state = State {
            generation,
            ..State::new(self.policy, self.state.jitter)
        };
        self.generation.store(generation, Ordering::SeqCst);
        self.current = None;
        self.current_durable = true;
        self.endpoint = None;
        self.running_flow = None;
        self.flow_handle = None;
        self.rt.scheduler.forget(self.owner);
        self.timer = None;
        self.save_retry = None;
        self.snapshot.store(None);
    }
}

/// A caller needs a usable token: load, refresh or log in as needed (FR-001..003).
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct Reconnect;

/// `access_token()` found no usable snapshot.
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct AccessToken;

/// The upstream answered 401 to `access_token`.
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct ReportUnauthorized {
    pub access_token: String,
    pub challenge: Option<BearerChallenge>,
}

#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct Login;

#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct Refresh;

#[derive(Message)]
#[rtype(result = "Result<(), UpstreamError>")]
pub struct Logout;

#[derive(Message)]
#[rtype(result = "ServerStatus")]
pub struct GetStatus;

/// The MCP protocol version the embedding runtime negotiated (already checked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportProtocolVersion(pub String);

impl Handler<ReportProtocolVersion> for UpstreamActor {
    type Result = ();
    fn handle(&mut self, message: ReportProtocolVersion, _: &mut Context<Self>) {
        if self.protocol_version.as_deref() != Some(message.0.as_str()) {
            tracing::info!(server = %self.config.name, protocol_version = %message.0, "the MCP protocol version in use");
            self.protocol_version = Some(message.0);
        }
    }
}

impl Handler<Reconnect> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, _: Reconnect, ctx: &mut Context<Self>) -> Self::Result {
        self.wait_for(Event::Reconnect, ctx)
    }
}

impl Handler<AccessToken> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, _: AccessToken, ctx: &mut Context<Self>) -> Self::Result {
        // It may have become usable while this message queued.
        if let Some(grant) = self.usable_grant() {
            return Box::pin(async move { Ok(grant) });
        }
        self.wait_for(Event::Reconnect, ctx)
    }
}

impl Handler<ReportUnauthorized> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, report: ReportUnauthorized, ctx: &mut Context<Self>) -> Self::Result {
        // A 401 for a token that was already replaced: hand out the newer one, do not refresh
        // again (rotating servers revoke the whole family on reuse).
        if let Some(grant) = self.newer_grant(&report.access_token) {
            return Box::pin(async move { Ok(grant) });
        }
        if report.challenge.is_some() {
            self.last_challenge = report.challenge;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|t| t.access_token == report.access_token)
            || self.current.is_none()
        {
            self.refused = Some(report.access_token);
            self.snapshot.store(None);
        }
        self.wait_for(Event::Unauthorized, ctx)
    }
}

/// The upstream answered 403 to `access_token`; `challenge` is its `WWW-Authenticate`.
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct ReportForbidden {
    pub access_token: String,
    pub challenge: BearerChallenge,
}

impl Handler<ReportForbidden> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, report: ReportForbidden, ctx: &mut Context<Self>) -> Self::Result {
        // A 403 for a token already replaced: the newer one may hold the scope.
        if let Some(grant) = self.newer_grant(&report.access_token) {
            return Box::pin(async move { Ok(grant) });
        }
        let granted = self.current.as_ref().and_then(|t| t.scope.clone());
        let insufficient_scope = report.challenge.is_insufficient_scope();
        // Only a demand for scope not yet granted is worth a login: anything else would open
        // the browser for the same token again.
        let wanted = step_up(granted.as_deref(), report.challenge.scope.as_deref());
        let Some(scope) = wanted.filter(|_| insufficient_scope) else {
            let server = self.config.name.clone();
            let failure = if insufficient_scope {
                Failure::scope_already_granted(granted.as_deref())
            } else {
                Failure::Forbidden {
                    error: "the server answered 403 without insufficient_scope: more scope would not help".into(),
                }
            };
            tracing::warn!(server = %server, "{failure}");
            return Box::pin(async move {
                Err(UpstreamError {
                    server,
                    failure,
                    flow_id: None,
                })
            });
        };
        self.step_up_scope = Some(scope.clone());
        self.last_challenge = Some(report.challenge);
        self.wait_for(Event::InsufficientScope { scope }, ctx)
    }
}

impl Handler<Login> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, _: Login, ctx: &mut Context<Self>) -> Self::Result {
        self.wait_for(Event::Login, ctx)
    }
}

impl Handler<Refresh> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, _: Refresh, ctx: &mut Context<Self>) -> Self::Result {
        // An explicit refresh of a server never loaded starts by loading.
        self.wait_for(Event::Refresh, ctx)
    }
}

impl Handler<Logout> for UpstreamActor {
    type Result = ResponseFuture<Result<(), UpstreamError>>;
    fn handle(&mut self, _: Logout, ctx: &mut Context<Self>) -> Self::Result {
        // The machine cancels the running flow and fences it before anything is deleted.
        self.apply(Event::Logout, ctx);
        let registry = self.rt.registry.clone();
        let http = self.rt.http.clone();
        let lock_dir = self.rt.lock_dir.clone();
        let key = self.config.server_key.clone();
        let server = self.config.name.clone();
        let stopped = self.error(Failure::Stopped, None);
        // On the flow threads, like every flow: the revocation is HTTP.
        let logout = self.rt.flow_threads.spawn(async move {
            // Under the flow lock, so another process's refresh cannot write the token back
            // after the delete; a flow stuck for longer does not stop the logout.
            let _lock = match lock::acquire(&lock_dir, &key, LOGOUT_LOCK_WAIT).await {
                Ok(lock) => Some(lock),
                Err(e) => {
                    tracing::warn!(server = %server, error = %e, "logging out without the flow lock");
                    None
                }
            };
            // The store, not this actor's memory, says what to revoke: the token may have been
            // obtained by another process.
            let stored = {
                let key = key.clone();
                registry
                    .call(move |s| s.load_token_and_client(&key))
                    .await
            };
            if let Ok((Some(token), Some(client))) = &stored
                && let Some(revocation) = &client.revocation_endpoint
            {
                // Best effort: the local forget below happens whatever the server says.
                let endpoint = endpoint_from_stored(client);
                if let Err(e) = endpoint
                    .revoke(
                        &http,
                        revocation,
                        token.refresh_token.as_deref(),
                        &token.access_token,
                    )
                    .await
                {
                    tracing::warn!(server = %server, error = %e, "revocation at the authorization server failed");
                }
            }
            registry
                .call(move |s| s.delete_token(&key))
                .await
                .map_err(|e| UpstreamError {
                    server,
                    failure: Failure::Store {
                        error: e.to_string(),
                    },
                    flow_id: None,
                })
        });
        Box::pin(async move { logout.await.unwrap_or(Err(stopped)) })
    }
}

/// Shutdown: start nothing new, cancel a login (it only waits for a person), and answer once
/// a running refresh and any unsaved token are in the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for UpstreamActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        if self.running_flow_kind == "login"
            && let Some(handle) = self.flow_handle.take()
        {
            ctx.cancel_future(handle);
            self.resolve(Resolution::Failed(Failure::Stopped));
        }
        if self.timer.take().is_some() {
            self.rt.scheduler.cancel(self.owner, TimerKind::Machine);
        }
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.notify_drained();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<Due> for UpstreamActor {
    type Result = ();
    fn handle(&mut self, due: Due, ctx: &mut Context<Self>) {
        match due.kind {
            TimerKind::Machine if self.timer == Some(due.arming) => {
                self.timer = None;
                self.timers_fired += 1;
                self.timer_at = None;
                self.apply(Event::Timer, ctx);
            }
            TimerKind::SaveRetry if self.save_retry.map(|(a, _)| a) == Some(due.arming) => {
                let (_, delay) = self.save_retry.take().expect("matched above");
                self.save_again(delay, ctx);
            }
            // Re-armed or cancelled since this was sent: stale.
            _ => {}
        }
    }
}

/// A flow task on the flow threads that is aborted when the actor drops its future.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The store may have been changed by another process (sent by the supervisor's watch).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckStore;

impl Handler<CheckStore> for UpstreamActor {
    type Result = ();
    fn handle(&mut self, _: CheckStore, ctx: &mut Context<Self>) {
        self.check_store(ctx);
    }
}

impl Handler<GetStatus> for UpstreamActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let token = self.current.as_ref();
        let connected = matches!(self.state.phase, Phase::Connected);
        MessageResult(ServerStatus {
            name: self.config.name.clone(),
            url: self.config.url.to_string(),
            server_key: self.config.server_key.clone(),
            phase: self.state.phase.clone(),
            detail: phase_detail(&self.state.phase),
            expires_at: token.and_then(|t| t.expires_at),
            has_token: token.is_some(),
            has_refresh_token: token.is_some_and(|t| t.refresh_token.is_some()),
            scope: token.and_then(|t| t.scope.clone()),
            next_attempt_at: self.state.phase.next_attempt_at(),
            next_refresh_at: self
                .state
                .token
                .filter(|t| connected && t.has_refresh_token)
                .and_then(|t| t.refresh_at(self.state.jitter)),
            refresh_failures: self.state.transient_failures,
            unsaved_token: token.is_some() && !self.current_durable,
            timers_fired: self.timers_fired,
            auth_url: matches!(self.state.phase, Phase::Authorizing)
                .then(|| {
                    self.auth_url
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                })
                .flatten(),
            device_login: matches!(self.state.phase, Phase::Authorizing)
                .then(|| {
                    self.device_prompt
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                })
                .flatten(),
            running_flow: self.running_flow.clone(),
            running_flow_kind: self
                .running_flow
                .as_ref()
                .map(|_| self.running_flow_kind.into()),
            running_flow_started_at: self
                .running_flow
                .as_ref()
                .map(|_| self.running_flow_started_at),
            last_flow: self.last_flow.clone(),
            timer_at: self.timer.as_ref().and(self.timer_at),
            token_type: token.map(|t| t.token_type.clone()),
            dpop_jkt: token.and_then(|t| t.dpop.as_ref().map(|d| d.jkt.clone())),
            protocol_version: self.protocol_version.clone(),
        })
    }
}
