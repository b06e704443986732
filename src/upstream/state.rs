//! The OAuth state machine of one upstream server, as a pure function:
//! `step(state, event, now) -> (state, effects)`. No I/O and no clock: time comes in as `now`
//! (unix milliseconds), and what must happen (load, refresh, open a browser, arm a timer, answer
//! waiters) goes out as [`Effect`]s that the `UpstreamActor` performs, feeding results back as
//! events. `step` matches every (phase, event) pair explicitly: there is no catch-all arm, so a
//! new phase or event cannot slip through unnoticed, and the tests list every pair.
//!
//! Policies (the recovery ladder):
//! - Reconnect loads the persisted token first; a usable token connects, an expired one with a
//!   refresh token refreshes; a browser opens only when no refresh token can work.
//! - Proactive refresh at 75% of the token's lifetime, minus up to 5% of it as per-server jitter;
//!   a refresh time already past waits `min_timer_gap`. A token without a refresh token arms one timer,
//!   for the moment it stops being usable.
//! - A token is handed out only while it stays valid for a safety margin (10% of its lifetime,
//!   at most 5 s).
//! - Transient refresh failures back off exponentially with jitter (`backoff_base` up to
//!   `backoff_cap`, never sooner than `Retry-After`, which is capped at one hour) for
//!   `fast_attempts`; then the server is `Retrying`, one attempt per `retry_interval`, until
//!   `retry_ceiling` after the first failure. All the while the refresh token is kept and a
//!   still-valid access token is served. Only past the ceiling does it need a login.
//! - Only a dead refresh token (`invalid_grant`) is dropped. `invalid_client` re-registers a
//!   dynamically registered client once, and is `ClientRejected` for a configured one;
//!   `invalid_scope` retries once without `scope`; anything unexplained retries slowly.
//! - The browser opens by itself unless a browser login failed within `browser_window`; a
//!   server waiting only for that window opens it when the window ends (interactive hosts). A
//!   login asked for explicitly always may.
//! - No phase is terminal: every waiting phase has a timer or a store change that leads back
//!   to `Connected` once the authorization server is healthy again.
//! - A 403 `insufficient_scope` logs in again for the union of the granted and the demanded
//!   scopes (SEP-2350), at most `max_step_ups` times until a token lives to its proactive
//!   refresh: a server that demands ever more scope cannot keep a browser opening.
//! - A refused token whose resource now names another authorization server (SEP-2352) is not
//!   refreshed at the old one: the login goes to the new server, with its own client.
//! - Flows are fenced: each carries the `generation` it started in; logout and login bump it,
//!   and a result from an older generation is ignored.

use serde::Serialize;

pub use super::failure::{Failure, LoginReason, RefreshFailure, clock};

pub type Millis = i64;

/// The longest `Retry-After` honoured: a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Millis = 3_600_000;

/// What the machine knows about the current token. No secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts {
    pub obtained_at: Millis,
    /// `None`: the server did not say; the token is used until refused.
    pub expires_at: Option<Millis>,
    pub has_refresh_token: bool,
    /// The upstream answered 401 to this token.
    pub refused: bool,
}

impl TokenFacts {
    fn lifetime(&self) -> Option<Millis> {
        self.expires_at
            .map(|e| e.saturating_sub(self.obtained_at).max(0))
    }

    /// How long before expiry a token stops being handed out.
    pub fn safety_margin(&self) -> Millis {
        self.lifetime().map(|l| (l / 10).min(5_000)).unwrap_or(0)
    }

    /// When the token stops being handed out (`None`: never, by time).
    pub fn unusable_at(&self) -> Option<Millis> {
        self.expires_at
            .map(|e| e.saturating_sub(self.safety_margin()))
    }

    /// Valid for at least the safety margin at `now`, and not refused.
    pub fn usable(&self, now: Millis) -> bool {
        !self.refused && self.unusable_at().is_none_or(|u| now < u)
    }

    /// Refused this early (within half its lifetime, at most 5 s, after issue), a token was
    /// bad from the start: the server is issuing unusable tokens, and refreshing at once would
    /// loop.
    pub fn refused_when_fresh(&self, now: Millis) -> bool {
        let window = self.lifetime().map(|l| (l / 2).min(5_000)).unwrap_or(5_000);
        now.saturating_sub(self.obtained_at) < window
    }

    /// When to refresh ahead of expiry: 75% of the lifetime, minus `jitter` (0..1) of 5% of it.
    pub fn refresh_at(&self, jitter: f64) -> Option<Millis> {
        let lifetime = self.lifetime()?;
        let spread = (lifetime as f64 * 0.05 * jitter.clamp(0.0, 1.0)) as Millis;
        Some(
            self.obtained_at
                .saturating_add(lifetime / 4 * 3)
                .saturating_sub(spread),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing asked yet.
    Idle,
    /// Reading the persisted token.
    Loading,
    Connected,
    Refreshing,
    Authorizing,
    /// No refresh token can work right now. `browser_at`: when the browser opens by itself
    /// (interactive hosts, once the window after a failed login ends); `refresh_at`: when a
    /// kept refresh token is tried again (past the retry ceiling).
    NeedsLogin {
        reason: LoginReason,
        browser_at: Option<Millis>,
        refresh_at: Option<Millis>,
    },
    /// The fast attempts after transient failures.
    BackingOff {
        attempt: u32,
        retry_at: Millis,
        last_error: String,
    },
    /// After the fast attempts: one attempt per `retry_interval`, until `until`.
    Retrying {
        attempt: u32,
        retry_at: Millis,
        until: Millis,
        last_error: String,
    },
    /// The authorization server refused our configured client (`invalid_client`): the
    /// configuration needs a fix; the refresh token is kept and tried again at `retry_at`.
    ClientRejected {
        retry_at: Millis,
        error: String,
    },
    /// The token store could not be read; loading is tried again at `retry_at`.
    StoreUnavailable {
        attempt: u32,
        retry_at: Millis,
        error: String,
    },
    /// Logged out (here or by another process): nothing is used or refreshed until a login.
    LoggedOut,
}

impl Phase {
    /// The stable name of the phase, as serialized.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Loading => "loading",
            Phase::Connected => "connected",
            Phase::Refreshing => "refreshing",
            Phase::Authorizing => "authorizing",
            Phase::NeedsLogin { .. } => "needs_login",
            Phase::BackingOff { .. } => "backing_off",
            Phase::Retrying { .. } => "retrying",
            Phase::ClientRejected { .. } => "client_rejected",
            Phase::StoreUnavailable { .. } => "store_unavailable",
            Phase::LoggedOut => "logged_out",
        }
    }

    /// A flow (load, refresh or login) runs: requests join it instead of starting another.
    pub fn flow_running(&self) -> bool {
        matches!(
            self,
            Phase::Loading | Phase::Refreshing | Phase::Authorizing
        )
    }

    /// When the machine acts next by itself, if it waits for time.
    pub fn next_attempt_at(&self) -> Option<Millis> {
        match self {
            Phase::BackingOff { retry_at, .. }
            | Phase::Retrying { retry_at, .. }
            | Phase::ClientRejected { retry_at, .. }
            | Phase::StoreUnavailable { retry_at, .. } => Some(*retry_at),
            Phase::NeedsLogin {
                browser_at,
                refresh_at,
                ..
            } => earliest(*browser_at, *refresh_at),
            _ => None,
        }
    }
}

fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

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
        }
    }
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
        }
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
    /// The upstream refused the current token (the actor drops reports about older tokens).
    Unauthorized,
    /// The upstream answered 403 `insufficient_scope` to the current token; `scope` is the
    /// union of the granted and the demanded scopes, which a login would ask for.
    InsufficientScope {
        scope: String,
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
    /// A refresh or login produced a token, already persisted.
    TokenObtained {
        generation: u64,
        token: TokenFacts,
    },
    RefreshFailed {
        generation: u64,
        failure: RefreshFailure,
        error: String,
    },
    LoginFailed {
        generation: u64,
        error: String,
    },
    /// The armed timer fired.
    Timer,
    Logout,
    /// Another process stored (`Some`) or deleted (`None`) this server's token.
    StoreChanged(Option<TokenFacts>),
}

/// What a refresh should do besides presenting the refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefreshPlan {
    /// Register a new client first (the authorization server forgot ours).
    pub reregister: bool,
    /// Send no `scope` (the server refused the one we asked for).
    pub omit_scope: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Read the stored token and client (tagged with the current generation).
    LoadToken,
    StartRefresh(RefreshPlan),
    StartLogin,
    /// Abandon the running load or flow; its result, if any, is ignored.
    CancelFlow,
    /// Replaces any armed timer; `at` is always later than now.
    ArmTimer {
        at: Millis,
    },
    CancelTimer,
    /// Answer everyone waiting for a token.
    ResolveWaiters(Resolution),
    /// The refresh token was refused for good: forget it, keep the access token.
    DropRefreshToken,
    /// Forget the token in memory (a logout, here or elsewhere, deletes the stored row).
    ForgetToken,
    /// Log "re-authentication required for <server>: <reason>".
    AnnounceReauthentication {
        reason: LoginReason,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
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
        (every_phase!(), Logout) => logged_out(&mut next, fx),

        // -- Requests while a flow runs join it.
        (
            Loading | Refreshing | Authorizing,
            Reconnect | Refresh | Unauthorized | InsufficientScope { .. },
        ) => {}
        (Loading | Refreshing, Login) => next.login_after_flow = true,
        (Authorizing, Login) => {}

        // -- Idle: the first request loads the persisted token.
        (Idle, Reconnect | Unauthorized | InsufficientScope { .. }) => load(&mut next, fx),
        (Idle, Refresh) => {
            next.refresh_after_load = true;
            load(&mut next, fx);
        }
        (Idle, Login) => {
            next.login_after_flow = true;
            load(&mut next, fx);
        }

        // -- An explicit login: from any phase without a running flow.
        (settled_phase!(), Login) => start_login(&mut next, fx, None),

        // -- Loading.
        (Loading, Loaded { generation, token }) if generation == current => {
            next.token = token;
            next.store_failures = 0;
            if std::mem::take(&mut next.login_after_flow) {
                next.refresh_after_load = false;
                start_login(&mut next, fx, None);
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
            fx.push(Effect::ArmTimer { at: retry_at });
            fx.push(Effect::ResolveWaiters(Resolution::Failed(Failure::Store {
                error,
            })));
        }

        // -- Connected.
        (Connected, Reconnect) => match next.token {
            Some(t) => decide(&mut next, fx, t, now),
            None => needs_login(&mut next, fx, now, LoginReason::NoStoredToken),
        },
        (Connected, Unauthorized) => {
            let fresh = next.token.is_some_and(|t| t.refused_when_fresh(now));
            if let Some(t) = next.token.as_mut() {
                t.refused = true;
            }
            if fresh && state.refresh_after_refusal {
                // Refused again, fresh from a refresh that answered a refusal: the server
                // issues unusable tokens. Refreshing at once would loop; back off instead.
                next.suspect_tokens = true;
                transient_failure(
                    &mut next,
                    fx,
                    now,
                    None,
                    false,
                    "the server refused a token it had just issued".into(),
                );
            } else {
                next.refresh_after_refusal = true;
                refresh_or_login(&mut next, fx, now);
            }
        }
        (Connected, InsufficientScope { scope }) => step_up(&mut next, fx, now, scope),
        (Connected, Refresh) => {
            next.transient_failures = 0;
            refresh_or_login(&mut next, fx, now);
        }
        (Connected, Timer) => {
            // This token lived to its proactive refresh: the server's tokens work again.
            next.suspect_tokens = false;
            next.refresh_after_refusal = false;
            next.transient_failures = 0;
            next.failing_since = None;
            next.step_ups = 0;
            refresh_or_login(&mut next, fx, now);
        }

        // -- Results of flows.
        (Refreshing | Authorizing, TokenObtained { generation, token })
            if generation == current =>
        {
            let login_wanted = std::mem::take(&mut next.login_after_flow);
            next.token = Some(token);
            next.reregistered = false;
            next.scope_omitted = false;
            if matches!(state.phase, Authorizing) {
                next.last_browser_failure = None;
            }
            if login_wanted {
                start_login(&mut next, fx, None);
            } else if token.usable(now) {
                if !next.suspect_tokens {
                    next.transient_failures = 0;
                    next.failing_since = None;
                }
                connected(&mut next, fx, token, now);
            } else {
                // A "successful" flow whose token is already unusable is a failure, never a
                // success: back off instead of looping.
                transient_failure(
                    &mut next,
                    fx,
                    now,
                    None,
                    false,
                    "the server issued a token that is already expired".into(),
                );
            }
        }
        (
            Refreshing,
            RefreshFailed {
                generation,
                failure,
                error,
            },
        ) if generation == current => refresh_failed(&mut next, fx, now, failure, error),
        (Authorizing, LoginFailed { generation, error }) if generation == current => {
            next.last_browser_failure = Some(now);
            fx.push(Effect::ResolveWaiters(Resolution::Failed(
                Failure::LoginFailed {
                    error: error.clone(),
                },
            )));
            // A failed login does not throw away a token that still works.
            match next.token {
                Some(t) if t.usable(now) || t.has_refresh_token => decide(&mut next, fx, t, now),
                _ => needs_login(&mut next, fx, now, LoginReason::LoginFailed { error }),
            }
        }
        // A result from an older generation (a flow that was cancelled or fenced), or for a
        // flow of another kind: ignored.
        (
            every_phase!(),
            Loaded { .. }
            | LoadFailed { .. }
            | TokenObtained { .. }
            | RefreshFailed { .. }
            | LoginFailed { .. },
        ) => {}

        // -- Backing off and retrying: the timer brings the next attempt.
        // A step-up waits for the refresh to recover: it needs the authorization server too.
        (
            BackingOff { .. } | Retrying { .. } | ClientRejected { .. },
            Reconnect | InsufficientScope { .. },
        ) => serve_or_explain(&next, fx, now),
        (BackingOff { .. } | Retrying { .. } | ClientRejected { .. }, Unauthorized) => {
            if let Some(t) = next.token.as_mut() {
                t.refused = true;
            }
            serve_or_explain(&next, fx, now);
        }
        (BackingOff { .. } | Retrying { .. } | ClientRejected { .. }, Refresh) => {
            next.transient_failures = 0;
            next.failing_since = None;
            refresh_or_login(&mut next, fx, now);
        }
        (BackingOff { .. } | Retrying { .. } | ClientRejected { .. }, Timer) => {
            refresh_or_login(&mut next, fx, now)
        }

        // -- Waiting for a login. Another process (`auth login`, another daemon) may have
        // stored a token meanwhile: read the store again before deciding.
        (NeedsLogin { .. }, Reconnect | Unauthorized | InsufficientScope { .. }) => {
            load(&mut next, fx)
        }
        (NeedsLogin { .. }, Refresh) => {
            next.transient_failures = 0;
            next.failing_since = None;
            refresh_or_login(&mut next, fx, now);
        }
        (
            NeedsLogin {
                reason,
                browser_at,
                refresh_at,
            },
            Timer,
        ) => {
            if browser_at.is_some_and(|at| at <= now) {
                start_login(&mut next, fx, Some(reason.clone()));
            } else if refresh_at.is_some_and(|at| at <= now)
                && next.token.is_some_and(|t| t.has_refresh_token)
            {
                next.phase = Refreshing;
                fx.push(Effect::StartRefresh(RefreshPlan::default()));
            } else if let Some(at) = earliest(*browser_at, *refresh_at).filter(|at| *at > now) {
                // Early (a timer of another phase): wait for the right moment.
                fx.push(Effect::ArmTimer { at });
            }
        }

        // -- The store could not be read: try again.
        (StoreUnavailable { .. }, Reconnect | Unauthorized | InsufficientScope { .. } | Timer) => {
            load(&mut next, fx)
        }
        (StoreUnavailable { .. }, Refresh) => {
            next.refresh_after_load = true;
            load(&mut next, fx);
        }

        // -- Logged out: nothing is used or refreshed until a login (here or elsewhere).
        (LoggedOut, Reconnect | Unauthorized | InsufficientScope { .. } | Refresh) => fx.push(
            Effect::ResolveWaiters(Resolution::Failed(Failure::LoggedOut)),
        ),

        // -- Timers of a phase that has moved on are stale.
        (Idle | Loading | Refreshing | Authorizing | LoggedOut, Timer) => {}

        // -- Another process changed the stored token.
        (Idle | Loading | Refreshing | Authorizing, StoreChanged(_)) => {
            // Not loaded yet, or a flow runs: the flow re-reads the store under the lock.
        }
        (settled_phase!(), StoreChanged(Some(t))) => {
            next.token = Some(t);
            next.transient_failures = 0;
            next.failing_since = None;
            next.suspect_tokens = false;
            next.refresh_after_refusal = false;
            decide(&mut next, fx, t, now);
        }
        (settled_phase!(), StoreChanged(None)) => {
            if state.token.is_some() {
                logged_out(&mut next, fx);
            }
        }
    }
    (next, effects)
}

fn load(next: &mut State, fx: &mut Vec<Effect>) {
    next.phase = Phase::Loading;
    fx.push(Effect::LoadToken);
}

fn logged_out(next: &mut State, fx: &mut Vec<Effect>) {
    if next.phase.flow_running() {
        fx.push(Effect::CancelFlow);
    }
    let (policy, jitter, last_browser_failure) =
        (next.policy, next.jitter, next.last_browser_failure);
    *next = State {
        phase: Phase::LoggedOut,
        generation: next.generation + 1,
        last_browser_failure,
        ..State::new(policy, jitter)
    };
    fx.push(Effect::CancelTimer);
    fx.push(Effect::ForgetToken);
    fx.push(Effect::ResolveWaiters(Resolution::Failed(
        Failure::LoggedOut,
    )));
}

/// Connected with `t`; the one timer goes to its proactive refresh, or, without a refresh
/// token, to the moment it stops being usable.
fn connected(next: &mut State, fx: &mut Vec<Effect>, t: TokenFacts, now: Millis) {
    next.phase = Phase::Connected;
    fx.push(Effect::ResolveWaiters(Resolution::Ready));
    let at = if t.has_refresh_token {
        // A refresh time already past (a token loaded late, or one that lived shorter than its
        // flow) waits the minimal gap, so nothing spins.
        t.refresh_at(next.jitter).map(|at| {
            if at > now {
                at
            } else {
                now + next.policy.min_timer_gap
            }
        })
    } else {
        t.unusable_at().filter(|at| *at > now)
    };
    match at {
        Some(at) => fx.push(Effect::ArmTimer { at }),
        None => fx.push(Effect::CancelTimer),
    }
}

/// A stored or obtained token: use it, refresh it, or log in.
fn decide(next: &mut State, fx: &mut Vec<Effect>, t: TokenFacts, now: Millis) {
    if t.usable(now) {
        connected(next, fx, t, now);
    } else {
        refresh_or_login(next, fx, now);
    }
}

fn refresh_or_login(next: &mut State, fx: &mut Vec<Effect>, now: Millis) {
    match next.token {
        Some(t) if t.has_refresh_token => {
            next.phase = Phase::Refreshing;
            fx.push(Effect::StartRefresh(RefreshPlan::default()));
        }
        Some(t) if t.usable(now) => connected(next, fx, t, now),
        Some(_) => needs_login(next, fx, now, LoginReason::NoRefreshToken),
        None => needs_login(next, fx, now, LoginReason::NoStoredToken),
    }
}

/// The browser may open by itself now, or from when (`None`: never, by itself).
fn browser_allowed_at(next: &State, now: Millis) -> Option<Millis> {
    if !next.policy.interactive {
        return None;
    }
    Some(match next.last_browser_failure {
        Some(failed) => (failed + next.policy.browser_window).max(now),
        None => now,
    })
}

/// No refresh token can work now: open the browser if allowed, else wait (with a timer for
/// the end of the browser window, and for a kept refresh token).
fn needs_login(next: &mut State, fx: &mut Vec<Effect>, now: Millis, reason: LoginReason) {
    let browser_at = browser_allowed_at(next, now);
    if browser_at == Some(now) {
        start_login(next, fx, Some(reason));
        return;
    }
    let refresh_at = next
        .token
        .is_some_and(|t| t.has_refresh_token)
        .then(|| now + retry_delay(next));
    fx.push(Effect::AnnounceReauthentication {
        reason: reason.clone(),
    });
    match next.token {
        Some(t) if t.usable(now) => fx.push(Effect::ResolveWaiters(Resolution::Ready)),
        _ => fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::NeedsLogin {
                reason: reason.clone(),
            },
        ))),
    }
    match earliest(browser_at, refresh_at) {
        Some(at) => fx.push(Effect::ArmTimer { at }),
        None => fx.push(Effect::CancelTimer),
    }
    next.phase = Phase::NeedsLogin {
        reason,
        browser_at,
        refresh_at,
    };
}

/// `reason`: why the login starts by itself; `None` for an explicit login.
fn start_login(next: &mut State, fx: &mut Vec<Effect>, reason: Option<LoginReason>) {
    match reason {
        Some(reason) => fx.push(Effect::AnnounceReauthentication { reason }),
        // Asked for by someone: the step-up budget starts again.
        None => next.step_ups = 0,
    }
    next.generation += 1;
    next.login_after_flow = false;
    next.phase = Phase::Authorizing;
    fx.push(Effect::StartLogin);
}

fn refresh_failed(
    next: &mut State,
    fx: &mut Vec<Effect>,
    now: Millis,
    failure: RefreshFailure,
    error: String,
) {
    if failure == RefreshFailure::TokenGone {
        logged_out(next, fx);
        return;
    }
    if failure == RefreshFailure::RefreshTokenDead {
        fx.push(Effect::DropRefreshToken);
        if let Some(t) = next.token.as_mut() {
            t.has_refresh_token = false;
        }
    }
    if std::mem::take(&mut next.login_after_flow) {
        start_login(next, fx, None);
        return;
    }
    match failure {
        RefreshFailure::RefreshTokenDead => match next.token {
            Some(t) if t.usable(now) => connected(next, fx, t, now),
            _ => needs_login(next, fx, now, LoginReason::RefreshTokenRejected { error }),
        },
        RefreshFailure::ClientRejected { registered: true } if !next.reregistered => {
            next.reregistered = true;
            fx.push(Effect::StartRefresh(RefreshPlan {
                reregister: true,
                omit_scope: next.scope_omitted,
            }));
        }
        RefreshFailure::ClientRejected { .. } => {
            let retry_at = now + retry_delay(next);
            next.phase = Phase::ClientRejected {
                retry_at,
                error: error.clone(),
            };
            fx.push(Effect::ArmTimer { at: retry_at });
            match next.token {
                Some(t) if t.usable(now) => fx.push(Effect::ResolveWaiters(Resolution::Ready)),
                _ => fx.push(Effect::ResolveWaiters(Resolution::Failed(
                    Failure::ClientRejected { error },
                ))),
            }
        }
        RefreshFailure::ScopeRejected if !next.scope_omitted => {
            next.scope_omitted = true;
            fx.push(Effect::StartRefresh(RefreshPlan {
                reregister: false,
                omit_scope: true,
            }));
        }
        RefreshFailure::ScopeRejected | RefreshFailure::Unexplained => {
            transient_failure(next, fx, now, None, true, error)
        }
        RefreshFailure::Transient { retry_after } => {
            transient_failure(next, fx, now, retry_after, false, error)
        }
        RefreshFailure::AuthorizationServerMoved { issuer } => {
            // The refresh token belongs to the old server; the stored row keeps it until a
            // login at the new one replaces it (each server's client stays, by issuer).
            if let Some(t) = next.token.as_mut() {
                t.has_refresh_token = false;
                t.refused = true;
            }
            needs_login(
                next,
                fx,
                now,
                LoginReason::AuthorizationServerMoved { issuer },
            );
        }
        RefreshFailure::TokenGone => unreachable!("handled above"),
    }
}

/// A 403 `insufficient_scope` while connected: a login for `scope` if the budget and the
/// browser allow it; otherwise the caller hears why, and the token keeps serving the calls
/// that need no more scope.
fn step_up(next: &mut State, fx: &mut Vec<Effect>, now: Millis, scope: String) {
    if next.step_ups >= next.policy.max_step_ups {
        let reason = LoginReason::StepUpLimit {
            scope,
            logins: next.step_ups,
        };
        fx.push(Effect::AnnounceReauthentication {
            reason: reason.clone(),
        });
        fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::NeedsLogin { reason },
        )));
        return;
    }
    let reason = LoginReason::InsufficientScope { scope };
    if browser_allowed_at(next, now) == Some(now) {
        next.step_ups += 1;
        start_login(next, fx, Some(reason));
    } else {
        fx.push(Effect::AnnounceReauthentication {
            reason: reason.clone(),
        });
        fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::NeedsLogin { reason },
        )));
    }
}

/// The delay before fast attempt `attempt` (1-based): exponential from `backoff_base` up to
/// `backoff_cap`, jittered by 0..+20%, never sooner than `Retry-After` (at most one hour).
fn fast_delay(next: &State, attempt: u32, retry_after: Option<Millis>) -> Millis {
    let policy = next.policy;
    let exponential = policy
        .backoff_base
        .saturating_mul(1 << (attempt.max(1) - 1).min(20))
        .min(policy.backoff_cap);
    jittered(next, exponential).max(retry_after.unwrap_or(0).min(MAX_RETRY_AFTER))
}

fn retry_delay(next: &State) -> Millis {
    jittered(next, next.policy.retry_interval)
}

/// Up to 20% later, by the server's jitter, so many servers do not retry in the same instant.
fn jittered(next: &State, delay: Millis) -> Millis {
    ((delay as f64 * (1.0 + 0.2 * next.jitter.clamp(0.0, 1.0))) as Millis)
        .max(next.policy.min_timer_gap)
}

/// A refresh failed but the refresh token may still work: back off (fast attempts), then
/// retry slowly (`long`: at once), then, past the ceiling, ask for a login keeping the token.
fn transient_failure(
    next: &mut State,
    fx: &mut Vec<Effect>,
    now: Millis,
    retry_after: Option<Millis>,
    long: bool,
    error: String,
) {
    next.transient_failures += 1;
    let attempt = next.transient_failures;
    let since = *next.failing_since.get_or_insert(now);
    let until = since.saturating_add(next.policy.retry_ceiling);
    if now >= until {
        needs_login(next, fx, now, LoginReason::RetryCeiling { error });
        return;
    }
    let (phase, failure) = if long || attempt > next.policy.fast_attempts {
        let delay = retry_delay(next).max(retry_after.unwrap_or(0).min(MAX_RETRY_AFTER));
        let retry_at = (now + delay).min(until);
        (
            Phase::Retrying {
                attempt,
                retry_at,
                until,
                last_error: error.clone(),
            },
            Failure::Retrying {
                retry_at,
                until,
                last_error: error,
            },
        )
    } else {
        let retry_at = now + fast_delay(next, attempt, retry_after);
        (
            Phase::BackingOff {
                attempt,
                retry_at,
                last_error: error.clone(),
            },
            Failure::BackingOff {
                retry_at,
                last_error: error,
            },
        )
    };
    fx.push(Effect::ArmTimer {
        at: phase.next_attempt_at().unwrap_or(now + 1),
    });
    next.phase = phase;
    // Waiters are not held for minutes: a still-valid token serves them, else they hear why.
    match next.token {
        Some(t) if t.usable(now) => fx.push(Effect::ResolveWaiters(Resolution::Ready)),
        _ => fx.push(Effect::ResolveWaiters(Resolution::Failed(failure))),
    }
}

/// In a waiting phase: a still-usable token serves the caller, else it hears why it waits.
fn serve_or_explain(next: &State, fx: &mut Vec<Effect>, now: Millis) {
    if next.token.is_some_and(|t| t.usable(now)) {
        fx.push(Effect::ResolveWaiters(Resolution::Ready));
        return;
    }
    let failure = match &next.phase {
        Phase::BackingOff {
            retry_at,
            last_error,
            ..
        } => Failure::BackingOff {
            retry_at: *retry_at,
            last_error: last_error.clone(),
        },
        Phase::Retrying {
            retry_at,
            until,
            last_error,
            ..
        } => Failure::Retrying {
            retry_at: *retry_at,
            until: *until,
            last_error: last_error.clone(),
        },
        Phase::ClientRejected { error, .. } => Failure::ClientRejected {
            error: error.clone(),
        },
        other => unreachable!("serve_or_explain in {other:?}"),
    };
    fx.push(Effect::ResolveWaiters(Resolution::Failed(failure)));
}

#[cfg(test)]
mod tests;
