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

use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, oneshot};

use super::flows::{self, Fence, LoginRequest, RefreshRequest, Runtime, facts, handed_out};
pub use super::messages::*;
pub use super::snapshot::{Snapshot, TokenSnapshot};
use super::state::{
    Effect, Event, Failure, Millis, Policy, RefreshFailure, Resolution, State, TokenFacts, TokenId,
    step,
};
pub use super::status::{ServerStatus, StateChange};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::dpop::Dpop;
use crate::oauth::token::TokenEndpoint;
use crate::scheduler::{Owner, TimerKind};
use crate::store::{StoredClient, StoredToken};
use crate::telemetry::flow_logger::FlowKind;

/// Who fed an event, for the effects that answer callers.
pub struct Caller {
    pub(super) waits: Waits,
    /// The challenge the caller's report came with: kept for the next flow unless the
    /// machine answered the caller alone (the report changed nothing).
    challenge: Option<BearerChallenge>,
}

pub(super) enum Waits {
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
pub(super) struct Scheduled {
    at: Millis,
    latest: Option<Millis>,
    /// When the scheduler fires it (`at`, moved later by its stagger).
    pub(super) fires_at: Millis,
}

pub struct UpstreamActor {
    pub(super) config: Arc<UpstreamConfig>,
    pub(super) rt: Arc<Runtime>,
    pub(super) policy: Policy,
    pub(super) snapshot: Snapshot,
    pub(super) events: broadcast::Sender<StateChange>,
    pub(super) state: State,
    /// The secrets of the token whose facts the machine holds.
    pub(super) current: Option<StoredToken>,
    /// The token the published snapshot shows.
    published: Option<TokenId>,
    /// A client a login obtained whose save failed with its token: saved with it.
    pub(super) unsaved_client: Option<StoredClient>,
    pub(super) endpoint: Option<TokenEndpoint>,
    pub(super) last_challenge: Option<BearerChallenge>,
    pub(super) waiters: Vec<oneshot::Sender<Reply>>,
    /// Whoever waits for the drain (shutdown), answered on `Effect::Drained`.
    pub(super) drained: Vec<oneshot::Sender<()>>,
    /// The running flow: its id (the correlation ID), kind and start.
    pub(super) running_flow: Option<String>,
    pub(super) running_flow_kind: FlowKind,
    pub(super) running_flow_started_at: Millis,
    /// The running load or flow, so a logout can cancel it.
    pub(super) flow_handle: Option<SpawnHandle>,
    pub(super) last_flow: Option<String>,
    /// This actor's id in the scheduler, which holds its one deadline.
    pub(super) owner: Owner,
    pub(super) scheduled: Option<Scheduled>,
    /// The machine's generation, shared with running flows, which check it before each write.
    pub(super) generation: Arc<AtomicU64>,
    /// How often a timer fired, for status: a spinning machine shows here first.
    pub(super) timers_fired: u64,
    /// Events the effects of a step produced at once, fed after it: `apply` is never
    /// re-entered.
    pub(super) queue: VecDeque<Event>,
    /// Restarted after a panic: reload from the store as soon as the actor runs again.
    pub(super) reload_on_start: bool,
    /// The running login's authorization URL, published by its launcher.
    pub(super) auth_url: flows::Published<String>,
    /// The running device login's prompt (user code, verification URL, expiry).
    pub(super) device_prompt: flows::Published<crate::oauth::device::DevicePrompt>,
    /// The DPoP key of the current token (RFC 9449) with the nonces its servers handed out,
    /// shared with the published snapshot and the flows.
    pub(super) dpop: Option<Dpop>,
    /// The key logins prove where they use DPoP (kept across failed logins, with the nonces
    /// their token endpoint handed out); becomes `dpop` when a login's token is bound to it.
    pub(super) login_dpop: Option<Dpop>,
    /// What the embedding runtime last reported having negotiated with the server.
    pub(super) protocol_version: Option<String>,
}

impl UpstreamActor {
    pub fn new(
        config: Arc<UpstreamConfig>,
        rt: Arc<Runtime>,
        policy: Policy,
        snapshot: Snapshot,
        events: broadcast::Sender<StateChange>,
    ) -> Self {
        // A grant server's policy: renewal is the grant, and no browser ever opens.
        let policy = if config.grant.is_some() {
            Policy {
                grant: true,
                interactive: false,
                ..policy
            }
        } else {
            policy
        };
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

    pub(super) fn now(&self) -> Millis {
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
                if let Some(token) =
                    offered.filter(|t| TokenId::of_secret(&t.access_token) == facts.id)
                {
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
                    TokenSnapshot::new(handed_out(t), t.expires_at, facts(t).safety_margin())
                        .bound(&t.token_type, self.dpop.clone()),
                )
            });
            self.snapshot.store(snapshot);
        }
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

    pub(super) fn fence(&self) -> Fence {
        Fence::new(self.generation.clone(), self.state.generation)
    }

    fn perform(&mut self, effect: Effect, caller: &mut Caller, ctx: &mut Context<Self>) {
        match effect {
            Effect::LoadToken => self.load(ctx),
            // A server with `oauth.grant` renews and "logs in" by its grant, never a browser.
            Effect::StartRefresh(_) if self.config.grant.is_some() => self.start_grant(false, ctx),
            Effect::StartLogin(_) if self.config.grant.is_some() => self.start_grant(true, ctx),
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
                let flow = flows::login(rt, config, flow_id.clone(), fence, request);
                self.spawn_flow(flow_id, generation, flow, ctx);
            }
            Effect::CancelFlow => {
                if let Some(handle) = self.flow_handle.take() {
                    ctx.cancel_future(handle);
                }
                if let Some(flow) = self.running_flow.take() {
                    tracing::info!(
                        server = %self.config.name,
                        correlation_id = %flow,
                        "the running flow was cancelled",
                    );
                    self.last_flow = Some(flow);
                }
            }
            Effect::SaveToken => self.save_token(ctx),
            Effect::RevokeAndDelete => self.revoke_and_delete(caller),
            Effect::ResolveWaiters(resolution) => {
                let reply = self.reply(resolution);
                if let Err(e) = &reply {
                    tracing::debug!(
                        server = %self.config.name,
                        waiters = self.waiters.len(),
                        error = %e.failure,
                        "answering waiters with a failure",
                    );
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
                tracing::warn!(
                    server = %self.config.name,
                    reason = ?reason,
                    "re-authentication required for {}: {reason}",
                    self.config.name,
                );
            }
            Effect::Drained => {
                for done in self.drained.drain(..) {
                    let _ = done.send(());
                }
            }
        }
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

    pub(super) fn reply(&self, resolution: Resolution) -> Reply {
        let flow_id = self.running_flow.clone().or_else(|| self.last_flow.clone());
        match (resolution, &self.current) {
            (Resolution::Ready, Some(token)) => Ok(Grant {
                access_token: handed_out(token),
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
        ctx.spawn(
            self.load_stored()
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let Ok((stored, client)) = result else { return };
                    if generation != act.state.generation || !act.state.watches_store() {
                        return;
                    }
                    let held = act.state.token.map(|t| t.id);
                    let stored_id = stored.as_ref().map(|t| TokenId::of_secret(&t.access_token));
                    if stored_id.is_some() && stored_id != held {
                        act.adopt_client(client.as_ref());
                    }
                    let stored_facts = stored.as_ref().map(facts);
                    act.apply(
                        Event::StoreChanged(stored_facts),
                        stored,
                        Caller::nobody(),
                        ctx,
                    );
                    if act.state.token.map(|t| t.id) != held {
                        tracing::info!(
                            server = %act.config.name,
                            stored = stored_id.is_some(),
                            "another process changed the stored token",
                        );
                    }
                }),
        );
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
