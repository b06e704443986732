//! The `UpstreamActor`: one per server, the thin driver of the server's state machine
//! ([`step`]). It feeds the machine what happens (requests, flows' results, saves, expired
//! timers, other processes' writes) and performs the effects it returns; it takes no
//! decision of its own. It holds what the machine must not: the token's secrets (following
//! the machine's facts), the callers waiting, the running flow, the DPoP keys.
//!
//! Status never waits for a flow: flows run on the flow threads while the mailbox stays open.
//! The actor publishes the token the machine deems usable as a snapshot (`ArcSwapOption`), so
//! `access_token()` on a still-valid token is a lock-free read that never reaches this
//! mailbox.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{broadcast, oneshot};

use super::flows::{
    self, Fence, FlowOutcome, LoginRequest, RefreshRequest, Runtime, endpoint_from_stored, facts,
    save_fenced,
};
pub use super::messages::*;
pub use super::snapshot::{Snapshot, TokenSnapshot};
use super::state::{
    Effect, Event, Failure, Millis, Phase, Policy, RefreshFailure, Resolution, State, TokenFacts,
    TokenId, step,
};
pub use super::status::{ServerStatus, StateChange};
use super::status::{phase_detail, routine_change};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::dpop::{Dpop, DpopKey};
use crate::oauth::token::TokenEndpoint;
use crate::scheduler::{Owner, TimerKind};
use crate::store::{StoredClient, StoredToken, lock};
use crate::telemetry::flow_logger::{FlowKind, FlowStep};

/// How long a logout waits for a running flow of another process before deleting anyway.
const LOGOUT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Who fed an event, for the effects that answer callers.
pub struct Caller {
    waits: Waits,
    /// The challenge the caller's report came with: kept for the next flow unless the
    /// machine answered the caller alone (the report changed nothing).
    challenge: Option<BearerChallenge>,
}

enum Waits {
    Nobody,
    /// Wants a token: answered alone (`AnswerCaller`), with everyone (`ResolveWaiters`), or
    /// it waits with them.
    Token(oneshot::Sender<Reply>),
    /// Logged out: answered once the stored token is revoked and deleted.
    Logout(oneshot::Sender<Result<(), UpstreamError>>),
}

impl Caller {
    pub fn nobody() -> Caller {
        Caller {
            waits: Waits::Nobody,
            challenge: None,
        }
    }

    pub fn logout(tx: oneshot::Sender<Result<(), UpstreamError>>) -> Caller {
        Caller {
            waits: Waits::Logout(tx),
            challenge: None,
        }
    }

    fn answer(&mut self, reply: Reply) {
        if let Waits::Token(tx) = std::mem::replace(&mut self.waits, Waits::Nobody) {
            let _ = tx.send(reply);
        }
    }
}

/// The deadline handed to the scheduler, so an unchanged one is not armed again.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scheduled {
    at: Millis,
    latest: Option<Millis>,
    /// When the scheduler fires it (`at`, moved later by its stagger).
    fires_at: Millis,
}

pub struct UpstreamActor {
    config: Arc<UpstreamConfig>,
    rt: Arc<Runtime>,
    policy: Policy,
    snapshot: Snapshot,
    events: broadcast::Sender<StateChange>,
    state: State,
    /// The secrets of the token whose facts the machine holds.
    current: Option<StoredToken>,
    /// The token the published snapshot shows.
    published: Option<TokenId>,
    /// A client a login obtained whose save failed with its token: saved with it.
    unsaved_client: Option<StoredClient>,
    endpoint: Option<TokenEndpoint>,
    last_challenge: Option<BearerChallenge>,
    waiters: Vec<oneshot::Sender<Reply>>,
    /// Whoever waits for the drain (shutdown), answered on `Effect::Drained`.
    pub(super) drained: Vec<oneshot::Sender<()>>,
    /// The running flow: its id (the correlation ID), kind and start.
    running_flow: Option<String>,
    running_flow_kind: FlowKind,
    running_flow_started_at: Millis,
    /// The running load or flow, so a logout can cancel it.
    flow_handle: Option<SpawnHandle>,
    last_flow: Option<String>,
    /// This actor's id in the scheduler, which holds its one deadline.
    owner: Owner,
    scheduled: Option<Scheduled>,
    /// The machine's generation, shared with running flows, which check it before each write.
    generation: Arc<AtomicU64>,
    /// How often a timer fired, for status: a spinning machine shows here first.
    timers_fired: u64,
    /// Events the effects of a step produced at once, fed after it: `apply` is never
    /// re-entered.
    queue: VecDeque<Event>,
    /// Restarted after a panic: reload from the store as soon as the actor runs again.
    reload_on_start: bool,
    /// The running login's authorization URL, published by its launcher.
    auth_url: flows::Published<String>,
    /// The running device login's prompt (user code, verification URL, expiry).
    device_prompt: flows::Published<crate::oauth::device::DevicePrompt>,
    /// The DPoP key of the current token (RFC 9449) with the nonces its servers handed out,
    /// shared with the published snapshot and the flows.
    dpop: Option<Dpop>,
    /// The key logins prove where they use DPoP (kept across failed logins, with the nonces
    /// their token endpoint handed out); becomes `dpop` when a login's token is bound to it.
    login_dpop: Option<Dpop>,
    /// What the embedding runtime last reported having negotiated with the server.
    protocol_version: Option<String>,
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
            published: None,
            unsaved_client: None,
            endpoint: None,
            last_challenge: None,
            waiters: Vec::new(),
            drained: Vec::new(),
            running_flow: None,
            running_flow_kind: FlowKind::Refresh,
            running_flow_started_at: 0,
            flow_handle: None,
            last_flow: None,
            scheduled: None,
            generation: Arc::new(AtomicU64::new(0)),
            timers_fired: 0,
            queue: VecDeque::new(),
            reload_on_start: false,
            auth_url: Arc::default(),
            device_prompt: Arc::default(),
            dpop: None,
            login_dpop: None,
            protocol_version: None,
        }
    }

    fn now(&self) -> Millis {
        self.rt.clock.now_ms()
    }

    /// Feeds `event` (with the token it brings, `offered`), then whatever its effects
    /// produced at once; answers or queues `caller`; arms the machine's next deadline.
    pub(super) fn apply(
        &mut self,
        event: Event,
        offered: Option<StoredToken>,
        mut caller: Caller,
        ctx: &mut Context<Self>,
    ) {
        self.feed(event, offered, &mut caller, ctx);
        while let Some(event) = self.queue.pop_front() {
            self.feed(event, None, &mut Caller::nobody(), ctx);
        }
        if let Some(challenge) = caller.challenge.take() {
            self.last_challenge = Some(challenge);
        }
        if let Waits::Token(tx) = caller.waits {
            self.waiters.push(tx);
        }
        self.arm_deadline(ctx);
    }

    fn feed(
        &mut self,
        event: Event,
        offered: Option<StoredToken>,
        caller: &mut Caller,
        ctx: &mut Context<Self>,
    ) {
        let (before, held) = (self.state.phase.clone(), self.state.token);
        let (next, effects) = step(&self.state, event, self.now());
        self.state = next;
        // Before any effect: a flow overtaken by this step must not write any more.
        self.generation
            .store(self.state.generation, Ordering::SeqCst);
        self.follow_token(held, offered);
        self.announce_phase(&before);
        for effect in effects {
            match effect {
                // The machine answered the report alone: it changed nothing, nor its challenge.
                Effect::AnswerCaller(_) => caller.challenge = None,
                _ => {
                    if let Some(challenge) = caller.challenge.take() {
                        self.last_challenge = Some(challenge);
                    }
                }
            }
            self.perform(effect, caller, ctx);
        }
    }

    /// The secrets follow the machine's facts: a token the machine took from an event
    /// becomes the current one, and the snapshot shows the current token while the machine
    /// holds it unrefused.
    fn follow_token(&mut self, held: Option<TokenFacts>, offered: Option<StoredToken>) {
        match self.state.token {
            None => {
                if self.current.is_some() {
                    self.set_current(None);
                }
            }
            Some(facts) if Some(facts) != held => {
                if let Some(token) = offered.filter(|t| TokenId::of(&t.access_token) == facts.id) {
                    self.set_current(Some(token));
                }
            }
            Some(_) => {}
        }
        let shown = self.state.token.filter(|t| !t.refused).map(|t| t.id);
        if shown != self.published {
            self.published = shown;
            let snapshot = shown.and(self.current.as_ref()).map(|t| {
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
        }
    }

    fn announce_phase(&self, before: &Phase) {
        let phase = &self.state.phase;
        if phase == before {
            return;
        }
        let detail = phase_detail(phase);
        let (server, from, to) = (&self.config.name, before.name(), phase.name());
        if routine_change(before, phase) {
            tracing::debug!(server = %server, from, to, "state changed");
        } else {
            let detail = detail.as_deref().unwrap_or("");
            tracing::info!(server = %server, from, to, detail, "state changed");
        }
        let _ = self.events.send(StateChange {
            server: self.config.name.clone(),
            phase: phase.clone(),
            detail,
            at: self.now(),
        });
    }

    /// Hands the machine's earliest deadline to the scheduler (or takes it back).
    fn arm_deadline(&mut self, ctx: &mut Context<Self>) {
        let deadline = self.state.deadline();
        let armed = self.scheduled.map(|s| (s.at, s.latest));
        if deadline.map(|d| (d.at, d.latest)) == armed {
            return;
        }
        let Some(deadline) = deadline else {
            self.scheduled = None;
            self.rt.scheduler.cancel(self.owner, TimerKind::Machine);
            return;
        };
        let to = ctx.address().downgrade().recipient();
        let (_, when) = self.rt.scheduler.arm_at(
            self.owner,
            TimerKind::Machine,
            deadline.at,
            deadline.latest,
            to,
        );
        self.scheduled = Some(Scheduled {
            at: deadline.at,
            latest: deadline.latest,
            fires_at: deadline.at.max(when),
        });
    }

    /// The scheduler fired: every timer due now is handled, earliest first (each one handled
    /// moves on, so this ends), and the next deadline armed.
    pub(super) fn handle_timeout(&mut self, ctx: &mut Context<Self>) {
        self.scheduled = None;
        for _ in 0..super::state::Timer::ALL.len() {
            let Some(timer) = self.state.expired(self.now()) else {
                break;
            };
            self.timers_fired += 1;
            self.apply(Event::Due(timer), None, Caller::nobody(), ctx);
        }
        self.arm_deadline(ctx);
    }

    fn fence(&self) -> Fence {
        Fence::new(self.generation.clone(), self.state.generation)
    }

    fn perform(&mut self, effect: Effect, caller: &mut Caller, ctx: &mut Context<Self>) {
        match effect {
            Effect::LoadToken => self.load(ctx),
            Effect::StartRefresh(plan) => {
                let generation = self.state.generation;
                let Some(current) = self.current.clone() else {
                    // The machine refreshes only a token it holds; nothing to present.
                    self.queue.push_back(Event::RefreshFailed {
                        generation,
                        failure: RefreshFailure::NoRefreshToken,
                        error: "no token to refresh".into(),
                    });
                    return;
                };
                let flow_id = self.begin_flow(FlowKind::Refresh);
                let request = RefreshRequest {
                    current,
                    endpoint: self.endpoint.clone(),
                    plan,
                    challenge: self.last_challenge.clone(),
                    dpop: self.dpop.clone(),
                };
                let (rt, config, fence) = (self.rt.clone(), self.config.clone(), self.fence());
                let flow = flows::refresh(rt, config, flow_id.clone(), fence, request);
                self.spawn_flow(flow_id, generation, flow, ctx);
            }
            Effect::StartLogin(plan) => {
                let generation = self.state.generation;
                let counted = self.rt.scheduler.login_running();
                let flow_id = self.begin_flow(FlowKind::Login);
                let request = LoginRequest {
                    previous: self.endpoint.clone(),
                    plan,
                    challenge: self.last_challenge.clone(),
                    auth_url: self.auth_url.clone(),
                    device_prompt: self.device_prompt.clone(),
                    dpop: self.login_key(),
                };
                let (rt, config, fence) = (self.rt.clone(), self.config.clone(), self.fence());
                let login = flows::login(rt, config, flow_id.clone(), fence, request);
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
            Effect::SaveToken => self.save_token(ctx),
            Effect::RevokeAndDelete => self.revoke_and_delete(caller),
            Effect::ResolveWaiters(resolution) => {
                let reply = self.reply(resolution);
                if let Err(e) = &reply {
                    tracing::debug!(server = %self.config.name, waiters = self.waiters.len(), error = %e.failure, "answering waiters with a failure");
                }
                for waiter in self.waiters.drain(..) {
                    let _ = waiter.send(reply.clone());
                }
                caller.answer(reply);
            }
            Effect::AnswerCaller(resolution) => {
                let reply = self.reply(resolution);
                if let Err(e) = &reply {
                    tracing::warn!(server = %self.config.name, "{}", e.failure);
                }
                caller.answer(reply);
            }
            Effect::DropRefreshToken => self.drop_refresh_token(ctx),
            Effect::ForgetToken => self.set_current(None),
            Effect::AnnounceReauthentication { reason } => {
                tracing::warn!(server = %self.config.name, reason = ?reason, "re-authentication required for {}: {reason}", self.config.name);
            }
            Effect::Drained => {
                for done in self.drained.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }

    /// The key a login proves where it uses DPoP: the current token's, else the one earlier
    /// logins proved (its token endpoint's nonces carry over), else a new one.
    fn login_key(&mut self) -> Dpop {
        match (&self.dpop, &self.login_dpop) {
            (Some(current), _) => current.clone(),
            (None, Some(earlier)) => earlier.clone(),
            (None, None) => self
                .login_dpop
                .insert(Dpop::new(DpopKey::generate()))
                .clone(),
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

    fn load(&mut self, ctx: &mut Context<Self>) {
        let generation = self.state.generation;
        let load = self.load_stored().into_actor(self);
        let handle = ctx.spawn(load.map(move |result, act, ctx| {
            act.flow_handle = None;
            let event = match result {
                Ok((token, client)) => {
                    if generation != act.state.generation {
                        return;
                    }
                    act.adopt_client(client.as_ref());
                    let event = Event::Loaded {
                        generation,
                        token: token.as_ref().map(facts),
                    };
                    return act.apply(event, token, Caller::nobody(), ctx);
                }
                Err(e) => Event::LoadFailed {
                    generation,
                    error: format!("cannot read the token store: {e}"),
                },
            };
            act.apply(event, None, Caller::nobody(), ctx);
        }));
        self.flow_handle = Some(handle);
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

    /// Saves the token in memory (and the client its login obtained) again, fenced; the
    /// machine hears how it went.
    fn save_token(&mut self, ctx: &mut Context<Self>) {
        let Some(token) = self.current.clone() else {
            return;
        };
        let id = TokenId::of(&token.access_token);
        let (registry, fence, client) = (
            self.rt.registry.clone(),
            self.fence(),
            self.unsaved_client.clone(),
        );
        let save = async move { save_fenced(&registry, &fence, &token, client, None).await };
        ctx.spawn(save.into_actor(self).map(move |result, act, ctx| {
            let event = match result {
                Ok(()) => {
                    tracing::info!(server = %act.config.name, "the token kept in memory is now in the store");
                    act.unsaved_client = None;
                    Event::Saved { token: id }
                }
                Err(flows::SaveError::Fenced) => return,
                Err(flows::SaveError::Store(error)) => {
                    tracing::warn!(server = %act.config.name, error = %error, "the token still cannot be saved; it stays in memory and is retried");
                    Event::SaveFailed { token: id, error }
                }
            };
            act.apply(event, None, Caller::nobody(), ctx);
        }));
    }

    fn drop_refresh_token(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.current.as_mut() {
            t.refresh_token = None;
        }
        let key = self.config.server_key.clone();
        let registry = self.rt.registry.clone();
        let fence = self.fence();
        let dropped = async move {
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
        };
        ctx.spawn(dropped.into_actor(self));
    }

    /// Logout: under the flow lock (so another process's refresh cannot write the token back
    /// after the delete; a flow stuck for longer does not stop the logout), the stored token
    /// is revoked where the server offers it and deleted; the caller hears how it went.
    fn revoke_and_delete(&mut self, caller: &mut Caller) {
        let Waits::Logout(done) = std::mem::replace(&mut caller.waits, Waits::Nobody) else {
            return;
        };
        let (registry, http) = (self.rt.registry.clone(), self.rt.http.clone());
        let lock_dir = self.rt.lock_dir.clone();
        let key = self.config.server_key.clone();
        let server = self.config.name.clone();
        // On the flow threads, like every flow: the revocation is HTTP.
        self.rt.flow_threads.spawn(async move {
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
                let refresh_token = token.refresh_token.as_deref();
                let revoked = endpoint
                    .revoke(&http, revocation, refresh_token, &token.access_token)
                    .await;
                if let Err(e) = revoked {
                    tracing::warn!(server = %server, error = %e, "revocation at the authorization server failed");
                }
            }
            let deleted = registry.call(move |s| s.delete_token(&key)).await;
            let _ = done.send(deleted.map_err(|e| UpstreamError {
                server,
                failure: Failure::Store {
                    error: e.to_string(),
                },
                flow_id: None,
            }));
        });
    }

    fn begin_flow(&mut self, kind: FlowKind) -> String {
        *self.auth_url.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let flow_id = uuid::Uuid::new_v4().to_string();
        self.running_flow = Some(flow_id.clone());
        self.running_flow_kind = kind;
        self.running_flow_started_at = self.now();
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
        let span = tracing::info_span!("oauth_flow", correlation_id = %flow_id, server = %self.config.name, flow_kind = self.running_flow_kind.as_str());
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
        let (event, offered) = match outcome {
            FlowOutcome::Token {
                token,
                endpoint,
                saved,
                client,
            } => {
                if let Some(endpoint) = endpoint {
                    self.endpoint = Some(endpoint);
                }
                self.unsaved_client = client;
                let token_facts = facts(&token);
                let event = Event::TokenObtained {
                    generation,
                    token: token_facts,
                    saved,
                };
                (event, Some(token))
            }
            FlowOutcome::StoreAhead { token } => {
                let event = Event::StoreAhead {
                    generation,
                    token: facts(&token),
                };
                (event, Some(token))
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
                let event = Event::RefreshFailed {
                    generation,
                    failure,
                    error,
                };
                (event, None)
            }
            FlowOutcome::LoginFailed {
                error,
                dynamic_client,
            } => {
                let event = Event::LoginFailed {
                    generation,
                    error,
                    dynamic_client,
                };
                (event, None)
            }
        };
        self.apply(event, offered, Caller::nobody(), ctx);
        self.announce_decision(&flow_id, kind);
    }

    /// The flow's last trace event: what the machine decided on its outcome.
    fn announce_decision(&self, flow_id: &str, kind: FlowKind) {
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
            Phase::Idle | Phase::Loading | Phase::StoreUnavailable { .. } => {
                phase.name().to_string()
            }
        };
        let mut details = serde_json::to_value(phase).unwrap_or_default();
        details["decision"] = decision.clone().into();
        if let Phase::Connected = phase {
            details["next_refresh_at"] = self
                .state
                .token
                .and_then(|t| t.refresh_at(self.state.jitter))
                .into();
            details["unsaved"] = self.state.unsaved.is_some().into();
            tracing::debug!(decision = %decision, "decision taken");
        } else {
            tracing::info!(decision = %decision, "decision taken");
        }
        self.rt.flow_event(
            flow_id,
            &self.config.name,
            kind,
            FlowStep::Decision,
            details,
        );
    }

    /// Replaces the current token (the machine took it), binding its DPoP key.
    fn set_current(&mut self, token: Option<StoredToken>) {
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
                // The refresh reports it too (and the machine asks for a login); the access
                // token is still handed out: the resource decides.
                tracing::warn!(server = %self.config.name, error = %e, "the stored DPoP key cannot be used");
                None
            }
            None => None,
        };
        if token.is_none() {
            self.published = None;
            self.snapshot.store(None);
        }
        self.current = token;
    }

    fn reply(&self, resolution: Resolution) -> Reply {
        let flow_id = self.running_flow.clone().or_else(|| self.last_flow.clone());
        match (resolution, &self.current) {
            (Resolution::Ready, Some(token)) => Ok(Grant {
                access_token: oauth2::AccessToken::new(token.access_token.clone()),
                expires_at: token.expires_at,
                flow_id,
                token_type: token.token_type.clone(),
                dpop: self.dpop.clone(),
            }),
            (Resolution::Ready, None) => {
                // The machine says `Ready` only while it holds a usable token, whose secrets
                // this actor took with it (property-tested): never reached.
                tracing::error!(server = %self.config.name, "the machine handed out a token this actor does not hold");
                Err(self.error(Failure::Stopped, flow_id))
            }
            (Resolution::Failed(failure), _) => Err(self.error(failure, flow_id)),
        }
    }

    pub(super) fn error(&self, failure: Failure, flow_id: Option<String>) -> UpstreamError {
        UpstreamError {
            server: self.config.name.clone(),
            failure,
            flow_id,
        }
    }

    /// Feeds `event` for a caller who wants a token (reporting `challenge`, if any), and
    /// returns the future of its answer.
    pub(super) fn wait_for(
        &mut self,
        event: Event,
        challenge: Option<BearerChallenge>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Reply> {
        let (tx, rx) = oneshot::channel();
        if let Some(flow) = &self.running_flow {
            tracing::debug!(server = %self.config.name, correlation_id = %flow, "joining the running flow");
        }
        let caller = Caller {
            waits: Waits::Token(tx),
            challenge,
        };
        self.apply(event, None, caller, ctx);
        let stopped = self.error(Failure::Stopped, None);
        Box::pin(async move { rx.await.unwrap_or(Err(stopped)) })
    }

    /// The scope granted to the current token.
    pub(super) fn granted_scope(&self) -> Option<String> {
        self.current.as_ref().and_then(|t| t.scope.clone())
    }

    pub(super) fn usable_grant(&self) -> Option<Grant> {
        let snapshot = self.snapshot.load_full()?;
        snapshot.usable(self.now()).then(|| Grant {
            access_token: snapshot.access_token.clone(),
            expires_at: snapshot.expires_at,
            flow_id: None,
            token_type: snapshot.token_type.clone(),
            dpop: snapshot.dpop.clone(),
        })
    }

    pub(super) fn report_protocol_version(&mut self, version: String) {
        if self.protocol_version.as_deref() != Some(version.as_str()) {
            tracing::info!(server = %self.config.name, protocol_version = %version, "the MCP protocol version in use");
            self.protocol_version = Some(version);
        }
    }

    /// Another process may have changed the store: the stored token goes to the machine
    /// (`StoreChanged`), which compares it with its own. Only while the machine watches.
    pub(super) fn check_store(&mut self, ctx: &mut Context<Self>) {
        if !self.state.watches_store() {
            return;
        }
        let generation = self.state.generation;
        ctx.spawn(self.load_stored().into_actor(self).map(move |result, act, ctx| {
            let Ok((stored, client)) = result else { return };
            if generation != act.state.generation || !act.state.watches_store() {
                return;
            }
            let held = act.state.token.map(|t| t.id);
            let stored_id = stored.as_ref().map(|t| TokenId::of(&t.access_token));
            if stored_id.is_some() && stored_id != held {
                act.adopt_client(client.as_ref());
            }
            let stored_facts = stored.as_ref().map(facts);
            act.apply(Event::StoreChanged(stored_facts), stored, Caller::nobody(), ctx);
            if act.state.token.map(|t| t.id) != held {
                tracing::info!(server = %act.config.name, stored = stored_id.is_some(), "another process changed the stored token");
            }
        }));
    }

    pub(super) fn status(&self) -> ServerStatus {
        let token = self.current.as_ref();
        let connected = matches!(self.state.phase, Phase::Connected);
        let authorizing = matches!(self.state.phase, Phase::Authorizing);
        fn published<T: Clone>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
            slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
        ServerStatus {
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
            unsaved_token: self.state.unsaved.is_some(),
            timers_fired: self.timers_fired,
            auth_url: authorizing.then(|| published(&self.auth_url)).flatten(),
            device_login: authorizing
                .then(|| published(&self.device_prompt))
                .flatten(),
            running_flow: self.running_flow.clone(),
            running_flow_kind: self.running_flow.as_ref().map(|_| self.running_flow_kind),
            running_flow_started_at: self
                .running_flow
                .as_ref()
                .map(|_| self.running_flow_started_at),
            last_flow: self.last_flow.clone(),
            timer_at: self.scheduled.map(|s| s.fires_at),
            token_type: token.map(|t| t.token_type.clone()),
            dpop_jkt: token.and_then(|t| t.dpop.as_ref().map(|d| d.jkt.clone())),
            protocol_version: self.protocol_version.clone(),
        }
    }
}

impl Actor for UpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Waiting callers must not block behind a full mailbox for long.
        ctx.set_mailbox_capacity(1024);
        if std::mem::take(&mut self.reload_on_start) {
            self.apply(Event::Reconnect, None, Caller::nobody(), ctx);
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
        self.published = None;
        self.unsaved_client = None;
        self.endpoint = None;
        self.running_flow = None;
        self.flow_handle = None;
        self.queue.clear();
        self.rt.scheduler.forget(self.owner);
        self.scheduled = None;
        self.snapshot.store(None);
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
