//! The `UpstreamActor`: one per server. It owns the server's state machine and mailbox, performs
//! the machine's effects, and keeps the waiters of the running flow, so concurrent requests
//! share one flow and its outcome (single flight). Status never waits for a flow: flows run as
//! spawned futures while the mailbox stays open.
//!
//! The actor is the only writer of the server's token. It publishes each token as a snapshot
//! (`ArcSwapOption`), so `access_token()` on a still-valid token is a lock-free read that never
//! reaches this mailbox.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use super::flows::{self, FlowOutcome, Runtime, endpoint_from_stored, facts};
use super::state::{Effect, Event, Millis, Phase, Policy, Resolution, State, step};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::token::TokenEndpoint;
use crate::store::StoredToken;
use crate::store::db::now_ms;

/// What callers may read without asking the actor.
pub struct TokenSnapshot {
    pub access_token: oauth2::AccessToken,
    pub expires_at: Option<Millis>,
    pub safety_margin: Millis,
}

impl TokenSnapshot {
    pub fn usable(&self, now: Millis) -> bool {
        self.expires_at.is_none_or(|e| e - now > self.safety_margin)
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
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{server}: {message}")]
pub struct UpstreamError {
    pub server: String,
    pub message: String,
    pub flow_id: Option<String>,
}

/// A phase change, for subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub server: String,
    pub phase: String,
    pub detail: Option<String>,
    pub at: Millis,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub url: String,
    pub server_key: String,
    pub phase: String,
    pub detail: Option<String>,
    pub expires_at: Option<Millis>,
    /// A token (usable or not) is held.
    pub has_token: bool,
    pub has_refresh_token: bool,
    pub scope: Option<String>,
    pub running_flow: Option<String>,
    /// Kind (`refresh` / `login`) and start (unix ms) of the running flow.
    pub running_flow_kind: Option<String>,
    pub running_flow_started_at: Option<Millis>,
    pub last_flow: Option<String>,
    /// When the armed timer fires: the proactive refresh, or the retry in backoff.
    pub timer_at: Option<Millis>,
    /// Transient failures in a row.
    pub transient_failures: u32,
}

type Reply = Result<Grant, UpstreamError>;

pub struct UpstreamActor {
    config: Arc<UpstreamConfig>,
    rt: Arc<Runtime>,
    policy: Policy,
    snapshot: Snapshot,
    events: broadcast::Sender<StateChange>,
    state: State,
    current: Option<StoredToken>,
    endpoint: Option<TokenEndpoint>,
    /// The access token the upstream refused, so a reload does not trust it again.
    refused: Option<String>,
    last_challenge: Option<BearerChallenge>,
    waiters: Vec<oneshot::Sender<Reply>>,
    running_flow: Option<String>,
    running_flow_kind: &'static str,
    running_flow_started_at: Millis,
    last_flow: Option<String>,
    timer: Option<SpawnHandle>,
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
            config,
            rt,
            policy,
            snapshot,
            events,
            current: None,
            endpoint: None,
            refused: None,
            last_challenge: None,
            waiters: Vec::new(),
            running_flow: None,
            running_flow_kind: "",
            running_flow_started_at: 0,
            last_flow: None,
            timer: None,
            timer_at: None,
        }
    }

    fn apply(&mut self, event: Event, ctx: &mut Context<Self>) {
        let before = self.state.phase.clone();
        let (next, effects) = step(&self.state, event, now_ms());
        self.state = next;
        if self.state.phase != before {
            let detail = phase_detail(&self.state.phase);
            tracing::info!(server = %self.config.name, from = before.name(), to = self.state.phase.name(), detail = detail.as_deref().unwrap_or(""), "state changed");
            let _ = self.events.send(StateChange {
                server: self.config.name.clone(),
                phase: self.state.phase.name().into(),
                detail,
                at: now_ms(),
            });
        }
        for effect in effects {
            self.perform(effect, ctx);
        }
    }

    fn perform(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        match effect {
            Effect::LoadToken => {
                let key = self.config.server_key.clone();
                let registry = self.rt.registry.clone();
                let load = async move {
                    registry
                        .call(move |s| Ok((s.load_token(&key)?, s.load_client(&key)?)))
                        .await
                };
                ctx.spawn(load.into_actor(self).map(|result, act, ctx| match result {
                    Ok((token, client)) => {
                        act.endpoint = client.as_ref().map(endpoint_from_stored);
                        let token_facts = token.as_ref().map(|t| {
                            let mut f = facts(t);
                            f.refused = act.refused.as_deref() == Some(t.access_token.as_str());
                            f
                        });
                        act.set_current(token);
                        act.apply(Event::Loaded(token_facts), ctx);
                    }
                    Err(e) => act.apply(
                        Event::LoadFailed {
                            error: format!("cannot read the token store: {e}"),
                        },
                        ctx,
                    ),
                }));
            }
            Effect::StartRefresh => {
                let (Some(endpoint), Some(current)) = (self.endpoint.clone(), self.current.clone())
                else {
                    // No client identity or token to refresh with: the machine must log in.
                    let error = "no stored client identity to refresh with".to_string();
                    self.apply(
                        Event::RefreshFailed {
                            permanent: true,
                            retry_after: None,
                            error,
                        },
                        ctx,
                    );
                    return;
                };
                let flow_id = self.begin_flow("refresh");
                let flow = flows::refresh(
                    self.rt.clone(),
                    self.config.clone(),
                    flow_id.clone(),
                    endpoint,
                    current,
                );
                ctx.spawn(
                    flow.into_actor(self)
                        .map(move |outcome, act, ctx| act.flow_done(flow_id, outcome, ctx)),
                );
            }
            Effect::StartLogin => {
                let flow_id = self.begin_flow("login");
                let ours = self.current.as_ref().map(|t| t.access_token.clone());
                let flow = flows::login(
                    self.rt.clone(),
                    self.config.clone(),
                    flow_id.clone(),
                    self.endpoint.clone(),
                    self.last_challenge.clone(),
                    ours,
                );
                ctx.spawn(
                    flow.into_actor(self)
                        .map(move |outcome, act, ctx| act.flow_done(flow_id, outcome, ctx)),
                );
            }
            Effect::ArmTimer { at } => {
                if let Some(previous) = self.timer.take() {
                    ctx.cancel_future(previous);
                }
                let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
                self.timer_at = Some(at);
                self.timer = Some(ctx.run_later(delay, |act, ctx| {
                    act.timer = None;
                    act.timer_at = None;
                    act.apply(Event::Timer, ctx);
                }));
            }
            Effect::ResolveWaiters(resolution) => self.resolve(resolution),
            Effect::DropRefreshToken => {
                if let Some(t) = self.current.as_mut() {
                    t.refresh_token = None;
                }
                let key = self.config.server_key.clone();
                let registry = self.rt.registry.clone();
                ctx.spawn(
                    async move {
                        if let Err(e) = registry.call(move |s| s.drop_refresh_token(&key)).await {
                            tracing::error!(error = %e, "could not forget the refused refresh token");
                        }
                    }
                    .into_actor(self),
                );
            }
            Effect::ForgetToken => {
                self.set_current(None);
                self.endpoint = None;
                if let Some(timer) = self.timer.take() {
                    ctx.cancel_future(timer);
                }
            }
            Effect::AnnounceReauthentication { reason } => {
                tracing::warn!(server = %self.config.name, "re-authentication required for {}: {reason}", self.config.name);
            }
        }
    }

    fn begin_flow(&mut self, kind: &'static str) -> String {
        let flow_id = uuid::Uuid::new_v4().to_string();
        self.running_flow = Some(flow_id.clone());
        self.running_flow_kind = kind;
        self.running_flow_started_at = now_ms();
        flow_id
    }

    fn flow_done(&mut self, flow_id: String, outcome: FlowOutcome, ctx: &mut Context<Self>) {
        // The decision taken on this outcome (connected, retry at T, re-login, give up) is
        // logged inside the flow's span, so the flow's trace ends with it.
        let span = tracing::info_span!("oauth_flow", correlation_id = %flow_id, server = %self.config.name, flow_kind = self.running_flow_kind);
        let _entered = span.enter();
        let kind = self.running_flow_kind;
        // This flow is over before the machine reacts: the reaction may start the next one.
        self.last_flow = Some(flow_id.clone());
        self.running_flow = None;
        let event = match outcome {
            FlowOutcome::Token { token, endpoint } => {
                if let Some(endpoint) = endpoint {
                    self.endpoint = Some(endpoint);
                }
                let token_facts = facts(&token);
                self.refused = None;
                self.set_current(Some(token));
                Event::TokenObtained(token_facts)
            }
            FlowOutcome::RefreshFailed {
                permanent,
                retry_after,
                error,
                rotated_refresh_token,
            } => {
                if let (Some(rotated), Some(current)) =
                    (rotated_refresh_token, self.current.as_mut())
                {
                    current.refresh_token = Some(rotated);
                }
                Event::RefreshFailed {
                    permanent,
                    retry_after,
                    error,
                }
            }
            FlowOutcome::LoginFailed { error } => Event::LoginFailed { error },
        };
        self.apply(event, ctx);
        self.announce_decision(&flow_id, kind);
    }

    /// The flow's last trace event: what the machine decided on its outcome.
    fn announce_decision(&self, flow_id: &str, kind: &'static str) {
        let decision = match &self.state.phase {
            Phase::Connected => {
                serde_json::json!({"decision": "use the new token", "next_refresh_at": self.state.token.and_then(|t| t.refresh_at(self.state.jitter))})
            }
            Phase::Backoff {
                attempt,
                retry_at,
                last_error,
            } => {
                serde_json::json!({"decision": format!("retry at {retry_at}"), "retry_at": retry_at, "attempt": attempt, "error": last_error})
            }
            Phase::Authorizing => {
                serde_json::json!({"decision": "re-login: a browser login started"})
            }
            Phase::NeedsLogin { reason } => {
                serde_json::json!({"decision": "wait for a login", "reason": reason})
            }
            Phase::Failed { error } => {
                serde_json::json!({"decision": "give up until the next reconnect", "error": error})
            }
            other => serde_json::json!({"decision": other.name()}),
        };
        tracing::info!(decision = %decision["decision"].as_str().unwrap_or(""), "decision taken");
        self.rt
            .flow_event(flow_id, &self.config.name, kind, "decision", decision);
    }

    /// Replaces the current token and publishes its snapshot (or its absence).
    fn set_current(&mut self, token: Option<StoredToken>) {
        let snapshot = token
            .as_ref()
            .filter(|t| self.refused.as_deref() != Some(t.access_token.as_str()))
            .map(|t| {
                Arc::new(TokenSnapshot {
                    access_token: oauth2::AccessToken::new(t.access_token.clone()),
                    expires_at: t.expires_at,
                    safety_margin: facts(t).safety_margin(),
                })
            });
        self.snapshot.store(snapshot);
        self.current = token;
    }

    fn resolve(&mut self, resolution: Resolution) {
        let flow_id = self.running_flow.clone().or_else(|| self.last_flow.clone());
        let reply: Reply = match (&resolution, &self.current) {
            (Resolution::Ready, Some(token)) => Ok(Grant {
                access_token: oauth2::AccessToken::new(token.access_token.clone()),
                expires_at: token.expires_at,
                flow_id: flow_id.clone(),
            }),
            (Resolution::Ready, None) => {
                Err(self.error("no token after all".into(), flow_id.clone()))
            }
            (Resolution::Failed(message), _) => Err(self.error(message.clone(), flow_id.clone())),
        };
        if let Err(e) = &reply {
            tracing::debug!(server = %self.config.name, waiters = self.waiters.len(), error = %e.message, "answering waiters with a failure");
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(reply.clone());
        }
    }

    fn error(&self, message: String, flow_id: Option<String>) -> UpstreamError {
        UpstreamError {
            server: self.config.name.clone(),
            message,
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
            rx.await.unwrap_or_else(|_| {
                Err(UpstreamError {
                    server,
                    message: "the server's actor stopped".into(),
                    flow_id: None,
                })
            })
        })
    }

    fn usable_grant(&self) -> Option<Grant> {
        let snapshot = self.snapshot.load_full()?;
        snapshot.usable(now_ms()).then(|| Grant {
            access_token: snapshot.access_token.clone(),
            expires_at: snapshot.expires_at,
            flow_id: None,
        })
    }
}

fn phase_detail(phase: &Phase) -> Option<String> {
    match phase {
        Phase::NeedsLogin { reason } => Some(reason.clone()),
        Phase::Backoff {
            attempt,
            retry_at,
            last_error,
        } => Some(format!(
            "attempt {attempt} failed ({last_error}); retry at {retry_at}"
        )),
        Phase::Failed { error } => Some(error.clone()),
        _ => None,
    }
}

impl Actor for UpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Waiting callers must not block behind a full mailbox for long.
        ctx.set_mailbox_capacity(1024);
    }
}

impl Supervised for UpstreamActor {
    /// A restarted actor forgets everything and reloads from the registry on the next request.
    fn restarting(&mut self, _: &mut Context<Self>) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(UpstreamError {
                server: self.config.name.clone(),
                message: "the server's actor restarted".into(),
                flow_id: None,
            }));
        }
        self.state = State::new(self.policy, self.state.jitter);
        self.current = None;
        self.endpoint = None;
        self.running_flow = None;
        self.timer = None;
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
        if let Some(current) = &self.current
            && current.access_token != report.access_token
            && let Some(grant) = self.usable_grant()
        {
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
        self.apply(Event::Logout, ctx);
        let registry = self.rt.registry.clone();
        let http = self.rt.http.clone();
        let key = self.config.server_key.clone();
        let server = self.config.name.clone();
        Box::pin(async move {
            // The store, not this actor's memory, says what to revoke: the token may have been
            // obtained by another process.
            let stored = {
                let key = key.clone();
                registry
                    .call(move |s| Ok((s.load_token(&key)?, s.load_client(&key)?)))
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
                    message: e.to_string(),
                    flow_id: None,
                })
        })
    }
}

impl Handler<GetStatus> for UpstreamActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let token = self.current.as_ref();
        MessageResult(ServerStatus {
            name: self.config.name.clone(),
            url: self.config.url.to_string(),
            server_key: self.config.server_key.clone(),
            phase: self.state.phase.name().into(),
            detail: phase_detail(&self.state.phase),
            expires_at: token.and_then(|t| t.expires_at),
            has_token: token.is_some(),
            has_refresh_token: token.is_some_and(|t| t.refresh_token.is_some()),
            scope: token.and_then(|t| t.scope.clone()),
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
            transient_failures: self.state.transient_failures,
        })
    }
}
