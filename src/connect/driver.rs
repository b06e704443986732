//! The daemon's state machine driven for one run: every event goes through
//! [`step`](crate::upstream::state::step), and its effects (load, refresh, login, grant) are
//! performed here at once, with no store, lock or timer. The driver keeps no policy of its own.

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::clock::now_ms;
use crate::mcp::BearerChallenge;
use crate::oauth::OAuthError;
use crate::oauth::token::TokenSet;
use crate::upstream::state::{
    Effect, Event, Failure, LoginPlan, LoginReason, Policy, RefreshFailure, RefreshPlan,
    Resolution, State, TokenFacts, TokenId, step,
};

use super::authorizer::Authorizer;
use super::options::{ConnectError, MAX_AUTHORIZATIONS};

/// The daemon's state machine with connect's effects: what it asks for (load, refresh, login)
/// runs here at once and its result goes back in, until it answers the caller.
pub(super) struct Driver {
    state: State,
    pub(super) auth: Authorizer,
    /// The engine error behind the machine's last failed flow, returned typed.
    last_error: Option<ConnectError>,
    /// The resource metadata was read again since the last refusal: once per refusal is
    /// enough, whether the refresh or the login reads it.
    reread_since_refusal: bool,
}

/// Machine events one question may take (a load, a refresh, a login and their results).
const MAX_EVENTS_PER_QUESTION: usize = 16;

impl Driver {
    pub(super) fn new(auth: Authorizer) -> Self {
        // The daemon's policy, with a run's differences: the browser opens at once (the user
        // ran `connect` for it), logins are bounded, and nothing is registered again.
        let policy = Policy {
            interactive: true,
            max_logins: Some(MAX_AUTHORIZATIONS),
            reregister: false,
            grant: auth.options.grant.is_some(),
            ..Policy::default()
        };
        Driver {
            state: State::new(policy, 0.0),
            auth,
            last_error: None,
            reread_since_refusal: false,
        }
    }

    /// Feeds `event`, performing the machine's effects, until it answers: `Ok` when a usable
    /// token is at hand.
    pub(super) async fn ask(
        &mut self,
        event: Event,
        challenge: &BearerChallenge,
    ) -> Result<(), ConnectError> {
        if matches!(event, Event::Refused { .. }) {
            self.reread_since_refusal = false;
        }
        let mut queue = VecDeque::from([event]);
        let mut answer = None;
        for _ in 0..MAX_EVENTS_PER_QUESTION {
            let Some(event) = queue.pop_front() else {
                break;
            };
            let (next, effects) = step(&self.state, event, now_ms());
            self.state = next;
            for effect in effects {
                match effect {
                    // Nothing is stored between runs: what this run holds is the "store".
                    Effect::LoadToken => queue.push_back(Event::Loaded {
                        generation: self.state.generation,
                        token: self.auth.token.as_ref().map(token_facts),
                    }),
                    Effect::StartRefresh(plan) => {
                        queue.push_back(self.refresh(plan, challenge).await?)
                    }
                    Effect::StartLogin(plan) => queue.push_back(self.login(plan, challenge).await?),
                    Effect::ResolveWaiters(resolution) | Effect::AnswerCaller(resolution) => {
                        answer = Some(resolution)
                    }
                    Effect::DropRefreshToken => {
                        if let Some(token) = self.auth.token.as_mut() {
                            token.refresh_token = None;
                        }
                    }
                    Effect::ForgetToken => self.auth.token = None,
                    Effect::AnnounceReauthentication { reason } => {
                        tracing::info!(reason = %reason, "re-authentication required: {reason}")
                    }
                    // Every token of a run is "saved" (there is no store), no run logs out or
                    // drains, and no flow outlives its effect here.
                    Effect::SaveToken
                    | Effect::RevokeAndDelete
                    | Effect::CancelFlow
                    | Effect::Drained => {}
                }
            }
        }
        match answer {
            Some(Resolution::Ready) => Ok(()),
            Some(Resolution::Failed(failure)) => Err(self.explain(failure)),
            None => Err(ConnectError::Undecided {
                steps: MAX_EVENTS_PER_QUESTION,
                phase: self.state.phase.name(),
            }),
        }
    }

    /// The engine's own error where one explains the failure, else the machine's.
    fn explain(&mut self, failure: Failure) -> ConnectError {
        match (&failure, self.last_error.take()) {
            (
                Failure::NeedsLogin {
                    reason: LoginReason::StepUpLimit { .. } | LoginReason::LoginLimit { .. },
                },
                _,
            ) => ConnectError::OAuth(OAuthError::TooManyAuthorizations {
                attempts: self.auth.authorizations,
            }),
            (
                Failure::NeedsLogin { .. }
                | Failure::LoginFailed { .. }
                | Failure::BackingOff { .. }
                | Failure::Retrying { .. }
                | Failure::ClientRejected { .. },
                Some(e),
            ) => e,
            _ => ConnectError::Policy(failure),
        }
    }

    /// After a refusal (the plan says so), the resource's metadata once more: the issuer it
    /// names now, if it is another one.
    async fn moved_since_refusal(
        &mut self,
        after_refusal: bool,
        challenge: &BearerChallenge,
    ) -> Result<Option<String>, ConnectError> {
        if !after_refusal || std::mem::replace(&mut self.reread_since_refusal, true) {
            return Ok(None);
        }
        Ok(self.auth.rediscover(challenge).await?)
    }

    async fn refresh(
        &mut self,
        plan: RefreshPlan,
        challenge: &BearerChallenge,
    ) -> Result<Event, ConnectError> {
        let generation = self.state.generation;
        if let Some(issuer) = self
            .moved_since_refusal(plan.after_refusal, challenge)
            .await?
        {
            return Ok(Event::RefreshFailed {
                generation,
                failure: RefreshFailure::AuthorizationServerMoved {
                    issuer: issuer.clone(),
                },
                error: format!("the resource moved to the authorization server {issuer}"),
            });
        }
        if self.auth.options.grant.is_some() {
            return Ok(self.grant(challenge).await);
        }
        // `plan.reregister` never comes: the policy has `reregister` off.
        Ok(match self.auth.refresh(plan.omit_scope).await {
            Ok(token) => obtained(generation, &token),
            Err(e) => {
                let source = self.auth.endpoint.as_ref().map(|e| e.client.source);
                let failure = RefreshFailure::classify(&e, source);
                self.failed(generation, failure, e, "refresh")
            }
        })
    }

    async fn login(
        &mut self,
        plan: LoginPlan,
        challenge: &BearerChallenge,
    ) -> Result<Event, ConnectError> {
        let generation = self.state.generation;
        if self.auth.options.grant.is_some() {
            // A grant server never logs in: the grant runs, and its failure is the login's.
            return Ok(match self.grant(challenge).await {
                Event::RefreshFailed { error, .. } => Event::LoginFailed {
                    generation,
                    error,
                    dynamic_client: false,
                },
                event => event,
            });
        }
        self.moved_since_refusal(plan.after_refusal, challenge)
            .await?;
        if plan.fresh_client {
            // The server rejected the registered client: this login registers a new one.
            self.auth.endpoint = None;
        }
        let scope = match plan.step_up_scope {
            Some(scope) => Ok(self.auth.for_refresh_tokens(Some(scope))),
            None => self.auth.initial_scope(challenge).await,
        };
        let result = match scope {
            Ok(scope) => self.auth.authorize(challenge, scope).await,
            Err(e) => Err(e),
        };
        Ok(match (result, self.auth.token.as_ref()) {
            (Ok(()), Some(token)) => obtained(generation, token),
            (Ok(()), None) => unreachable!("a login that succeeds sets the token"),
            (Err(e), _) => {
                let error = e.to_string();
                self.last_error = Some(e.into());
                Event::LoginFailed {
                    generation,
                    error,
                    dynamic_client: false,
                }
            }
        })
    }
}

impl Driver {
    /// Runs the configured grant once; its token or its failure, as the machine's event.
    async fn grant(&mut self, challenge: &BearerChallenge) -> Event {
        let generation = self.state.generation;
        match self.auth.grant(challenge).await {
            Ok(token) => obtained(generation, &token),
            Err(e) => {
                let failure = crate::upstream::flows::grant_failure(&e);
                self.failed(generation, failure, e, "grant")
            }
        }
    }

    /// A refresh or grant (`what`) failed with `e`: kept to explain the run's end, and told
    /// to the machine as `failure`.
    fn failed(
        &mut self,
        generation: u64,
        failure: RefreshFailure,
        e: impl Into<ConnectError> + std::fmt::Display,
        what: &str,
    ) -> Event {
        tracing::warn!(error = %e, failure = ?failure, "{what} failed");
        let error = e.to_string();
        self.last_error = Some(e.into());
        Event::RefreshFailed {
            generation,
            failure,
            error,
        }
    }
}

/// A token this run obtained, as the machine's event (every token of a run counts as saved:
/// there is no store).
fn obtained(generation: u64, token: &TokenSet) -> Event {
    Event::TokenObtained {
        generation,
        token: token_facts(token),
        saved: true,
    }
}

/// The machine's facts about a token of this run.
fn token_facts(token: &TokenSet) -> TokenFacts {
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    TokenFacts {
        id: TokenId::of(token.access_token.secret()),
        obtained_at: ms(token.obtained_at),
        expires_at: token.expires_at.map(ms),
        has_refresh_token: token.refresh_token.is_some(),
        refused: false,
    }
}
