//! The OAuth state machine of one upstream server, as a pure function:
//! `step(state, event, now) -> (state, effects)`. No I/O and no clock: time comes in as `now`
//! (unix milliseconds), and what must happen (load, refresh, log in, save, answer waiters)
//! goes out as [`Effect`]s that the `UpstreamActor` (or `connect`'s driver) performs, feeding
//! results back as events. The machine takes every decision; the drivers report facts. Its
//! deadlines are named [`Timer`]s read from the state ([`State::deadline`]), never armed and
//! forgotten: quinn-proto's `poll_timeout` / `handle_timeout` shape.
//!
//! `step` matches every (phase, event) pair explicitly: there is no catch-all arm, so a new
//! phase or event cannot slip through unnoticed, and the tests list every pair.
//!
//! Policies (the recovery ladder):
//! - Reconnect loads the persisted token first; a usable token connects, an expired one with a
//!   refresh token refreshes; a browser opens only when no refresh token can work.
//! - Proactive refresh at 75% of the token's lifetime, minus up to 5% of it as per-server
//!   jitter; a refresh time already past waits `min_timer_gap`. A token without a refresh
//!   token has its timer at the moment it stops being usable.
//! - A token is handed out only while it stays valid for a safety margin (10% of its lifetime,
//!   at most 5 s).
//! - A token whose save failed keeps serving from memory; its save is retried (1 s, doubling
//!   to 30 s), and its refresh token is not spent again (no rotation the store would miss)
//!   until the access token is about to stop being handed out.
//! - Transient refresh failures back off exponentially with jitter (`backoff_base` up to
//!   `backoff_cap`, never sooner than `Retry-After`, which is capped at one hour) for
//!   `fast_attempts`; then the server is `Retrying`, one attempt per `retry_interval`, until
//!   `retry_ceiling` after the first failure. All the while the refresh token is kept and a
//!   still-valid access token is served. Only past the ceiling does it need a login.
//! - Only a dead refresh token (`invalid_grant`, or a DPoP key it is bound to that cannot be
//!   used) is dropped. `invalid_client` re-registers a dynamically registered client once (or,
//!   where `Policy::reregister` is off, logs in with a new one), and is `ClientRejected` for a
//!   configured one; `invalid_scope` retries once without `scope`; anything unexplained
//!   retries slowly.
//! - The browser opens by itself unless a browser login failed within `browser_window`; a
//!   server waiting only for that window opens it when the window ends (interactive hosts). A
//!   login asked for explicitly always may. A failed login with a dynamic client makes the
//!   next one register a new client. A login that fails before any browser opened, for a
//!   reason that passes (discovery or registration timed out, refused the connection,
//!   answered 5xx or 429), asked nobody anything: it spends no browser launch and starts no
//!   window; it backs off like a transient refresh (`backoff_base` doubling to `backoff_cap`,
//!   never before `Retry-After`, no ceiling) and tries again by itself.
//! - No phase is terminal: every waiting phase has a timer or a store change that leads back
//!   to `Connected` once the authorization server is healthy again.
//! - A 403 `insufficient_scope` demanding scope not yet granted logs in again for the union
//!   of the granted and the demanded scopes (SEP-2350), at most `max_step_ups` times until a
//!   token lives to its proactive refresh; any other 403 is `forbidden` at once.
//! - A refused token whose resource now names another authorization server (SEP-2352) is not
//!   refreshed at the old one: the login goes to the new server, with its own client.
//! - Flows are fenced: each carries the `generation` it started in; logout and login bump it,
//!   and a result from an older generation is ignored.
//! - A grant server (`Policy::grant`) renews by running its grant again where another server
//!   presents its refresh token: the same proactive margin, backoff, retries and ceiling. It
//!   never waits for a browser: its first token is a grant, and past the retry ceiling (or
//!   after a refused credential, which is `ClientRejected`) it tries again every
//!   `retry_interval`.
//! - Draining (shutdown): nothing new starts, a login is cancelled, a running refresh and an
//!   unsaved token get to finish; `Drained` says when nothing is left.

mod phase;
mod reports;
mod rules;
mod timer;
mod token;

pub use super::failure::{Failure, LoginReason, MAX_RETRY_AFTER, RefreshFailure, clock};
pub use phase::Phase;
pub use timer::{Deadline, Timer};
pub use token::{TokenFacts, TokenId};

use reports::{ForbiddenReport, forbidden, refused};
use rules::*;

pub use crate::clock::Millis;

/// Tunables, with production defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// May open the browser without an explicit login request.
    pub interactive: bool,
    /// After a failed browser login, the browser does not open by itself for this long.
    pub browser_window: Millis,
    pub backoff_base: Millis,
    /// The longest delay between fast attempts (reached at the last one with the defaults).
    pub backoff_cap: Millis,
    /// Transient failures retried with exponential backoff before `Retrying`.
    pub fast_attempts: u32,
    /// The delay between attempts while `Retrying` (and for unexplained or client errors).
    pub retry_interval: Millis,
    /// How long after the first failure of a series refreshing is retried before a login.
    pub retry_ceiling: Millis,
    /// No timer is armed sooner than this after now, so nothing spins.
    pub min_timer_gap: Millis,
    /// Logins for more scope (403 `insufficient_scope`) allowed until a token lives to its
    /// proactive refresh.
    pub max_step_ups: u32,
    /// Logins allowed in all (`None`: no bound). `connect` bounds one run's authorization
    /// requests (the MCP specification asks clients to bound step-up retries); a daemon
    /// does not.
    pub max_logins: Option<u32>,
    /// A dynamically registered client the authorization server rejects is registered again
    /// before the refresh is retried. `false` (`connect`: one run has no registration to
    /// repair): a login with a new client follows instead.
    pub reregister: bool,
    /// The server's tokens come from a grant without a user (client credentials,
    /// enterprise-managed authorization, workload identity): no refresh token is needed to
    /// renew, the grant is run again (`StartRefresh`) at the same proactive margin, and the
    /// grant is what runs where a login would (the driver never opens a browser for such a
    /// server). A token that cannot be renewed waits for the next attempt, never for a person.
    pub grant: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            interactive: true,
            browser_window: 5 * 60_000,
            backoff_base: 1_000,
            backoff_cap: 2 * 60_000,
            fast_attempts: 8,
            retry_interval: 5 * 60_000,
            retry_ceiling: 24 * 3_600_000,
            min_timer_gap: 1_000,
            max_step_ups: 2,
            max_logins: None,
            reregister: true,
            grant: false,
        }
    }
}

/// The token in memory is not in the store: its save failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsaved {
    pub token: TokenId,
    /// Failed saves of it so far.
    pub attempts: u32,
    /// When the save is tried again (`None` while one runs).
    pub retry_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub phase: Phase,
    pub token: Option<TokenFacts>,
    /// Bumped by logout and by every login: results of flows from older generations are
    /// ignored.
    pub generation: u64,
    pub transient_failures: u32,
    /// Failed loads of the token store in a row.
    pub store_failures: u32,
    /// When the current series of failed refreshes began.
    pub failing_since: Option<Millis>,
    /// When the last browser login failed (the browser window counts from it).
    pub last_browser_failure: Option<Millis>,
    /// This server's fixed jitter in 0..1, drawn once by the actor.
    pub jitter: f64,
    pub policy: Policy,
    /// An explicit refresh arrived before the token was loaded: refresh once it is.
    pub refresh_after_load: bool,
    /// An explicit login arrived while a load or refresh ran: log in once it ends.
    pub login_after_flow: bool,
    /// The last refresh was started because the upstream refused a token.
    pub refresh_after_refusal: bool,
    /// A token from such a refresh was refused while fresh too: new tokens do not clear the
    /// failure count until one lives to its proactive refresh.
    pub suspect_tokens: bool,
    /// The client was registered again once for this refresh token (`invalid_client`).
    pub reregistered: bool,
    /// The refresh was retried once without `scope` (`invalid_scope`).
    pub scope_omitted: bool,
    /// Logins for more scope since a token last lived to its proactive refresh.
    pub step_ups: u32,
    /// Connected: when the current token's proactive refresh is due (for a token without a
    /// refresh token: when it stops being handed out). Read through [`Timer::Refresh`].
    pub refresh_due: Option<Millis>,
    /// The token in memory whose save failed, until a save of it (or a newer token) succeeds.
    pub unsaved: Option<Unsaved>,
    /// The access token the upstream refused, so a reload or another process's store does
    /// not make it trusted again.
    pub refused: Option<TokenId>,
    /// After a 403 `insufficient_scope`: the union of the granted and the demanded scopes,
    /// asked for by the next login; cleared by a login's token.
    pub step_up_scope: Option<String>,
    /// The last login with a dynamically registered client failed: the next one registers a
    /// new client (the authorization server may have forgotten ours).
    pub fresh_client: bool,
    /// Logins started, for `Policy::max_logins`.
    pub logins: u32,
    /// Shutting down: no flow starts; [`Effect::Drained`] once nothing runs or waits to be
    /// saved.
    pub draining: bool,
}

impl State {
    pub fn new(policy: Policy, jitter: f64) -> Self {
        State {
            phase: Phase::Idle,
            token: None,
            generation: 0,
            transient_failures: 0,
            store_failures: 0,
            failing_since: None,
            last_browser_failure: None,
            jitter,
            policy,
            refresh_after_load: false,
            login_after_flow: false,
            refresh_after_refusal: false,
            suspect_tokens: false,
            reregistered: false,
            scope_omitted: false,
            step_ups: 0,
            refresh_due: None,
            unsaved: None,
            refused: None,
            step_up_scope: None,
            fresh_client: false,
            logins: 0,
            draining: false,
        }
    }

    /// Whether another process's writes to the store matter now: not while a flow runs (it
    /// re-reads the store under the lock), not before the first load, and not while the
    /// store is behind this process (a failed save).
    pub fn watches_store(&self) -> bool {
        !self.phase.flow_running() && self.phase != Phase::Idle && self.unsaved.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A caller needs a usable token (a reconnect, or `access_token()` without one).
    Reconnect,
    /// An explicit login: the browser may open whatever the window says.
    Login,
    /// An explicit refresh.
    Refresh,
    /// The upstream answered 401 to the token `token` (`None`: the current one).
    Refused {
        token: Option<TokenId>,
    },
    /// The upstream answered 403 to the token `token` (`None`: the current one), with
    /// `insufficient_scope` or not, demanding `demanded`; `granted` is the token's scope.
    Forbidden {
        token: Option<TokenId>,
        insufficient_scope: bool,
        granted: Option<String>,
        demanded: Option<String>,
    },
    Loaded {
        generation: u64,
        token: Option<TokenFacts>,
    },
    /// The registry could not be read.
    LoadFailed {
        generation: u64,
        error: String,
    },
    /// A refresh or login produced a token; `saved`: it is in the store.
    TokenObtained {
        generation: u64,
        token: TokenFacts,
        saved: bool,
    },
    /// Under the flow lock, the store held a token newer than the one the flow started from
    /// (another process refreshed or logged in meanwhile). The flow stopped there.
    StoreAhead {
        generation: u64,
        token: TokenFacts,
    },
    RefreshFailed {
        generation: u64,
        failure: RefreshFailure,
        error: String,
    },
    /// `dynamic_client`: the login went with a dynamically registered client (a stored one
    /// or one it obtained), which the authorization server may have forgotten.
    LoginFailed {
        generation: u64,
        error: String,
        dynamic_client: bool,
    },
    /// A login failed before any browser opened, for a reason that passes (a timeout, a
    /// refused connection, a 5xx or 429 at discovery or registration): nobody was asked.
    LoginFailedBeforeBrowser {
        generation: u64,
        error: String,
        retry_after: Option<Millis>,
    },
    /// The save of the token `token` asked for by [`Effect::SaveToken`] succeeded.
    Saved {
        token: TokenId,
    },
    SaveFailed {
        token: TokenId,
        error: String,
    },
    /// `timer` is due (the driver feeds every expired timer, earliest first).
    Due(Timer),
    Logout,
    /// Another process stored (`Some`) or deleted (`None`) this server's token.
    StoreChanged(Option<TokenFacts>),
    /// Shutting down.
    Drain,
}

/// What a refresh should do besides presenting the refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefreshPlan {
    /// Register a new client first (the authorization server forgot ours, or none is known).
    pub reregister: bool,
    /// Send no `scope` (the server refused the one we asked for).
    pub omit_scope: bool,
    /// The upstream refused the token: first check that the resource still trusts the
    /// authorization server that issued it (SEP-2352).
    pub after_refusal: bool,
    /// The store is behind this process (a failed save): the token in memory is the newest,
    /// whatever the store holds.
    pub store_behind: bool,
}

/// What a login should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPlan {
    /// Register a new client instead of reusing a stored one.
    pub fresh_client: bool,
    /// Scope asked for on top of the usual selection (after a 403 `insufficient_scope`).
    pub step_up_scope: Option<String>,
    /// When the login was asked for.
    pub requested_at: Millis,
    /// Report a token another process stored after `requested_at` (or by a login this one
    /// waited for) instead of logging in: [`Event::StoreAhead`].
    pub adopt: bool,
    /// The upstream refused a token: read the resource's metadata again before logging in.
    pub after_refusal: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Read the stored token and client (tagged with the current generation).
    LoadToken,
    StartRefresh(RefreshPlan),
    StartLogin(LoginPlan),
    /// Abandon the running load or flow; its result, if any, is ignored.
    CancelFlow,
    /// Save the token in memory (and a client its login obtained) again; answer with
    /// `Saved` or `SaveFailed`.
    SaveToken,
    /// Logout: revoke the stored token at the authorization server where it offers RFC 7009
    /// (best effort) and delete the stored row, under the server's flow lock; answer the
    /// caller who logged out.
    RevokeAndDelete,
    /// Answer everyone waiting for a token (the caller of this event included).
    ResolveWaiters(Resolution),
    /// Answer the caller of this event alone; whoever waits for a flow goes on waiting.
    AnswerCaller(Resolution),
    /// The refresh token was refused for good: forget it, keep the access token.
    DropRefreshToken,
    /// Forget the token in memory (a logout, here or elsewhere, deletes the stored row).
    ForgetToken,
    /// Log "re-authentication required for <server>: <reason>".
    AnnounceReauthentication {
        reason: LoginReason,
    },
    /// Draining, and nothing runs or waits to be saved: shutdown may go on.
    Drained,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The current token: the machine says so only while it holds a usable one.
    Ready,
    Failed(Failure),
}

/// The phases in which no flow runs and the token has been loaded: explicit logins and store
/// changes act at once there.
macro_rules! settled_phase {
    () => {
        Phase::Connected
            | Phase::NeedsLogin { .. }
            | Phase::BackingOff { .. }
            | Phase::Retrying { .. }
            | Phase::ClientRejected { .. }
            | Phase::StoreUnavailable { .. }
            | Phase::LoggedOut
    };
}

/// Every phase, for the arms that treat them all alike. A new phase is missing here until
/// someone decides what it does with those events (the match is exhaustive).
macro_rules! every_phase {
    () => {
        Phase::Idle | Phase::Loading | Phase::Refreshing | Phase::Authorizing | settled_phase!()
    };
}

/// The whole machine: every (phase, event) pair has its arm.
pub fn step(state: &State, event: Event, now: Millis) -> (State, Vec<Effect>) {
    let mut next = state.clone();
    let mut effects = Vec::new();
    let fx = &mut effects;
    use Event::*;
    use Phase::*;
    let current = state.generation;
    match (&state.phase, event) {
        // -- Logout, from every phase: forget the token, cancel what runs, fence old flows.
        (every_phase!(), Logout) => logged_out(&mut next, fx, true),
        (every_phase!(), Drain) => drain(&mut next, fx),

        // -- Deadlines, saves and reports about a token: their own tables.
        (every_phase!(), Due(timer)) => due(state, &mut next, fx, timer, now),
        (every_phase!(), Saved { token }) => saved(&mut next, token, now),
        (every_phase!(), SaveFailed { token, .. }) => save_failed(&mut next, token, now),
        (every_phase!(), Refused { token }) => refused(state, &mut next, fx, token, now),
        (
            every_phase!(),
            Forbidden {
                token,
                insufficient_scope,
                granted,
                demanded,
            },
        ) => {
            let report = ForbiddenReport {
                token,
                insufficient_scope,
                granted,
                demanded,
            };
            forbidden(state, &mut next, fx, report, now)
        }

        // -- Requests while a flow runs join it.
        (Loading | Refreshing | Authorizing, Reconnect | Refresh) => {}
        (Loading | Refreshing, Login) => next.login_after_flow = true,
        (Authorizing, Login) => {}

        // -- Idle: the first request loads the persisted token.
        (Idle, Reconnect) => load(&mut next, fx),
        (Idle, Refresh) => {
            next.refresh_after_load = true;
            load(&mut next, fx);
        }
        (Idle, Login) => {
            next.login_after_flow = true;
            load(&mut next, fx);
        }

        // -- An explicit login: from any phase without a running flow.
        (settled_phase!(), Login) => start_login(&mut next, fx, None, now),

        // -- Loading.
        (Loading, Loaded { generation, token }) if generation == current => {
            let token = token.map(|t| known(&next, t));
            next.token = token;
            next.unsaved = None;
            next.store_failures = 0;
            if std::mem::take(&mut next.login_after_flow) {
                next.refresh_after_load = false;
                start_login(&mut next, fx, None, now);
            } else if std::mem::take(&mut next.refresh_after_load) && token.is_some() {
                refresh_or_login(&mut next, fx, now);
            } else {
                match token {
                    Some(t) => decide(&mut next, fx, t, now),
                    None => needs_login(&mut next, fx, now, LoginReason::NoStoredToken),
                }
            }
        }
        (Loading, LoadFailed { generation, error }) if generation == current => {
            next.refresh_after_load = false;
            next.login_after_flow = false;
            next.store_failures += 1;
            let attempt = next.store_failures;
            let retry_at = now + fast_delay(&next, attempt, None);
            next.phase = StoreUnavailable {
                attempt,
                retry_at,
                error: error.clone(),
            };
            fx.push(Effect::ResolveWaiters(Resolution::Failed(Failure::Store {
                error,
            })));
        }

        // -- Connected.
        (Connected, Reconnect) => match next.token {
            Some(t) => decide(&mut next, fx, t, now),
            None => needs_login(&mut next, fx, now, LoginReason::NoStoredToken),
        },
        (Connected, Refresh) => {
            next.transient_failures = 0;
            refresh_or_login(&mut next, fx, now);
        }

        // -- Results of flows.
        (
            Refreshing | Authorizing,
            TokenObtained {
                generation,
                token,
                saved,
            },
        ) if generation == current => obtained(state, &mut next, fx, token, saved, now),
        (Refreshing | Authorizing, StoreAhead { generation, token }) if generation == current => {
            store_ahead(state, &mut next, fx, token, now)
        }
        (
            Refreshing,
            RefreshFailed {
                generation,
                failure,
                error,
            },
        ) if generation == current => refresh_failed(&mut next, fx, now, failure, error),
        (
            Authorizing,
            LoginFailed {
                generation,
                error,
                dynamic_client,
            },
        ) if generation == current => login_failed(&mut next, fx, error, dynamic_client, now),
        (
            Authorizing,
            LoginFailedBeforeBrowser {
                generation,
                error,
                retry_after,
            },
        ) if generation == current => login_unreachable(&mut next, fx, now, retry_after, error),
        // A result from an older generation (a flow that was cancelled or fenced), or for a
        // flow of another kind: ignored.
        (
            every_phase!(),
            Loaded { .. }
            | LoadFailed { .. }
            | TokenObtained { .. }
            | StoreAhead { .. }
            | RefreshFailed { .. }
            | LoginFailed { .. }
            | LoginFailedBeforeBrowser { .. },
        ) => {}

        // -- Backing off and retrying: the timer brings the next attempt.
        (BackingOff { .. } | Retrying { .. } | ClientRejected { .. }, Reconnect) => {
            serve_or_explain(&next, fx, now)
        }
        (BackingOff { .. } | Retrying { .. } | ClientRejected { .. }, Refresh) => {
            next.transient_failures = 0;
            next.failing_since = None;
            refresh_or_login(&mut next, fx, now);
        }

        // -- Waiting for a login. Another process (`auth login`, another daemon) may have
        // stored a token meanwhile: read the store again before deciding.
        (NeedsLogin { .. }, Reconnect) => load(&mut next, fx),
        (NeedsLogin { .. }, Refresh) => {
            next.transient_failures = 0;
            next.failing_since = None;
            refresh_or_login(&mut next, fx, now);
        }

        // -- The store could not be read: try again.
        (StoreUnavailable { .. }, Reconnect) => load(&mut next, fx),
        (StoreUnavailable { .. }, Refresh) => {
            next.refresh_after_load = true;
            load(&mut next, fx);
        }

        // -- Logged out: nothing is used or refreshed until a login (here or elsewhere).
        (LoggedOut, Reconnect | Refresh) => fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::LoggedOut,
        ))),

        // -- Another process changed the stored token.
        (Idle | Loading | Refreshing | Authorizing, StoreChanged(_)) => {
            // Not loaded yet, or a flow runs: the flow re-reads the store under the lock.
        }
        (settled_phase!(), StoreChanged(_)) if next.unsaved.is_some() => {
            // The store is behind this process (a failed save): what it holds is older.
        }
        (settled_phase!(), StoreChanged(Some(t))) => {
            let t = known(&next, t);
            let ours = next
                .token
                .is_some_and(|c| c.id == t.id && c.has_refresh_token == t.has_refresh_token);
            if !ours {
                adopt(&mut next, fx, t, now);
            }
        }
        (settled_phase!(), StoreChanged(None)) => {
            if state.token.is_some() {
                logged_out(&mut next, fx, false);
            }
        }
    }
    if next.draining && !next.phase.flow_running() && next.unsaved.is_none() {
        effects.push(Effect::Drained);
    }
    (next, effects)
}

#[cfg(test)]
mod tests;
