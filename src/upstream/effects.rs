//! How the `UpstreamActor` performs the machine's effects that do I/O (reading and saving the
//! token, running a flow, dropping a refresh token, revoking and deleting at logout) and how
//! each result comes back to the machine as an event: a flow's outcome, its facts turned into
//! the event the machine decides on, and the decision logged at the end of the flow's trace.

use std::time::Duration;

use actix::prelude::*;

use super::actor::{Caller, UpstreamActor, Waits};
use super::flows::{self, FlowOutcome, endpoint_from_stored, facts, save_fenced};
use super::messages::UpstreamError;
use super::state::{Event, Failure, TokenId};
use crate::oauth::dpop::{Dpop, DpopKey};
use crate::store::{RefreshTokenId, Secret, Store, StoredClient, StoredToken, lock};
use crate::telemetry::flow_logger::FlowKind;

/// How long a logout waits for a running flow of another process before deleting anyway.
const LOGOUT_LOCK_WAIT: Duration = Duration::from_secs(30);

impl UpstreamActor {
    /// The key a login proves where it uses DPoP: the current token's, else the one earlier
    /// logins proved (its token endpoint's nonces carry over), else a new one.
    pub(super) fn login_key(&mut self) -> Dpop {
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
    pub(super) fn load_stored(
        &self,
    ) -> impl std::future::Future<
        Output = Result<(Option<StoredToken>, Option<StoredClient>), crate::store::StoreError>,
    > + 'static {
        let key = self.config.server_key.clone();
        let store = self.rt.store.clone();
        async move { store.load_token_and_client(&key).await }
    }

    pub(super) fn load(&mut self, ctx: &mut Context<Self>) {
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

    pub(super) fn adopt_client(&mut self, client: Option<&StoredClient>) {
        if let Some(client) = client {
            self.endpoint = Some(endpoint_from_stored(client));
        }
    }

    /// Runs a flow as this actor's one flow, on the flow threads (its HTTP and TLS do not hold
    /// up the actors' mailboxes); its outcome comes back here. Cancelling the actor's future
    /// (a logout) aborts the task. A panic inside it is caught: the actor stops, and its
    /// supervisor restarts it with its state reloaded from the store (other servers go on).
    pub(super) fn spawn_flow(
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
                    tracing::error!(
                        server = %act.config.name,
                        correlation_id = %flow_id,
                        "the flow panicked; restarting the server's actor, which reloads its state from the store",
                    );
                    act.reload_on_start = true;
                    ctx.stop();
                }
            }
        }));
        self.flow_handle = Some(handle);
    }

    /// Saves the token in memory (and the client its login obtained) again, fenced; the
    /// machine hears how it went.
    pub(super) fn save_token(&mut self, ctx: &mut Context<Self>) {
        let Some(token) = self.current.clone() else {
            return;
        };
        let id = TokenId::of_secret(&token.access_token);
        let (store, fence, client) = (
            self.rt.store.clone(),
            self.fence(),
            self.unsaved_client.clone(),
        );
        let save = async move { save_fenced(&store, &fence, &token, client, None).await };
        ctx.spawn(save.into_actor(self).map(move |result, act, ctx| {
            let event = match result {
                Ok(()) => {
                    tracing::info!(server = %act.config.name, "the token kept in memory is now in the store");
                    act.unsaved_client = None;
                    Event::Saved { token: id }
                }
                Err(flows::SaveError::Fenced) => return,
                Err(flows::SaveError::Store(error)) => {
                    tracing::warn!(
                        server = %act.config.name,
                        error = %error,
                        "the token still cannot be saved; it stays in memory and is retried",
                    );
                    Event::SaveFailed { token: id, error }
                }
            };
            act.apply(event, None, Caller::nobody(), ctx);
        }));
    }

    /// After `invalid_grant`: forgets the refused refresh token here, and in the store only if
    /// the row still holds that very token (another process's newer one is never dropped).
    pub(super) fn drop_refresh_token(&mut self, ctx: &mut Context<Self>) {
        let refused = self
            .current
            .as_mut()
            .and_then(|t| t.refresh_token.take())
            .map(|r| RefreshTokenId::of_secret(&r));
        let Some(refused) = refused else { return };
        let key = self.config.server_key.clone();
        let store = self.rt.store.clone();
        let fence = self.fence();
        let dropped = async move {
            if !fence.is_current() {
                return;
            }
            match store.drop_refresh_token_if(&key, refused).await {
                Ok(true) => {}
                Ok(false) => tracing::info!(
                    ?refused,
                    "the stored refresh token is not the refused one (another process stored a newer one); it is kept"
                ),
                Err(e) => tracing::error!(
                    ?refused, error = %e,
                    "could not forget the refused refresh token"
                ),
            }
        };
        ctx.spawn(dropped.into_actor(self));
    }

    /// Logout: under the flow lock (so another process's refresh cannot write the token back
    /// after the delete; a flow stuck for longer does not stop the logout), the stored token
    /// is revoked where the server offers it and deleted; the caller hears how it went.
    pub(super) fn revoke_and_delete(&mut self, caller: &mut Caller) {
        let Waits::Logout(done) = std::mem::replace(&mut caller.waits, Waits::Nobody) else {
            return;
        };
        let (store, http) = (self.rt.store.clone(), self.rt.http.clone());
        let lock_dir = self.rt.lock_dir.clone();
        let key = self.config.server_key.clone();
        let server = self.config.name.clone();
        // On the flow threads, like every flow: the revocation is HTTP.
        self.rt.flow_threads.spawn(async move {
            // SQLite only: PostgreSQL has no shared lock folder; there the delete moves the
            // server's lease one fence on, so a refresh running elsewhere writes nothing back.
            let _lock = match &store {
                Store::Sqlite(_) => match lock::acquire(&lock_dir, &key, LOGOUT_LOCK_WAIT).await {
                    Ok(lock) => Some(lock),
                    Err(e) => {
                        tracing::warn!(server = %server, error = %e, "logging out without the flow lock");
                        None
                    }
                },
                Store::Postgres(_) => None,
            };
            // The store, not this actor's memory, says what to revoke: the token may have been
            // obtained by another process.
            let stored = store.load_token_and_client(&key).await;
            if let Ok((Some(token), Some(client))) = &stored
                && let Some(revocation) = &client.revocation_endpoint
            {
                // Best effort: the local forget below happens whatever the server says.
                let endpoint = endpoint_from_stored(client);
                let refresh_token = token.refresh_token.as_ref().map(Secret::expose);
                let access_token = token.access_token.expose();
                let revoked = endpoint
                    .revoke(&http, revocation, refresh_token, access_token)
                    .await;
                if let Err(e) = revoked {
                    tracing::warn!(server = %server, error = %e, "revocation at the authorization server failed");
                }
            }
            let deleted = store.delete_token(&key).await;
            let _ = done.send(deleted.map_err(|e| UpstreamError {
                server,
                failure: Failure::Store {
                    error: e.to_string(),
                },
                flow_id: None,
            }));
        });
    }

    /// Runs the server's grant (`oauth.grant`) as its one flow: for a renewal, or where the
    /// machine asked for a login (`as_login`).
    pub(super) fn start_grant(&mut self, as_login: bool, ctx: &mut Context<Self>) {
        let generation = self.state.generation;
        let kind = if as_login {
            FlowKind::Login
        } else {
            FlowKind::Refresh
        };
        let flow_id = self.begin_flow(kind);
        let request = flows::GrantRequest {
            current: self.current.clone(),
            challenge: self.last_challenge.clone(),
            dpop: self.login_key(),
            as_login,
        };
        let (rt, config, fence) = (self.rt.clone(), self.config.clone(), self.fence());
        let flow = flows::grant(rt, config, flow_id.clone(), fence, request);
        self.spawn_flow(flow_id, generation, flow, ctx);
    }

    pub(super) fn begin_flow(&mut self, kind: FlowKind) -> String {
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
        let span = tracing::info_span!(
            "oauth_flow",
            correlation_id = %flow_id,
            server = %self.config.name,
            flow_kind = self.running_flow_kind.as_str(),
        );
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
                // A flow that found (or registered) a client hands it on.
                self.endpoint = endpoint.or_else(|| self.endpoint.take());
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
                // A flow that found (or registered) a client hands it on.
                self.endpoint = endpoint.or_else(|| self.endpoint.take());
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
            FlowOutcome::LoginFailedBeforeBrowser { error, retry_after } => {
                let event = Event::LoginFailedBeforeBrowser {
                    generation,
                    error,
                    retry_after,
                };
                (event, None)
            }
        };
        self.apply(event, offered, Caller::nobody(), ctx);
        self.announce_decision(&flow_id, kind);
    }
}

/// A flow task on the flow threads that is aborted when the actor drops its future.
pub(super) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

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
