//! The OAuth state machine of one upstream server, as a pure function:
//! `step(state, event, now) -> (state, effects)`. No I/O and no clock: time comes in as `now`
//! (unix milliseconds), and what must happen (load, refresh, open a browser, arm a timer, answer
//! waiters) goes out as [`Effect`]s that the `UpstreamActor` performs, feeding results back as
//! events. Every transition is listed in the tests below.
//!
//! Policies:
//! - Reconnect loads the persisted token first; a usable token connects, an expired one with a
//!   refresh token refreshes; a browser opens only when no refresh token can work.
//! - Proactive refresh at 75% of the token's lifetime, minus up to 5% of it as per-server jitter,
//!   so many servers do not refresh in the same instant.
//! - A token is handed out only while it stays valid for a safety margin (10% of its lifetime,
//!   at most 5 s).
//! - Transient refresh failures back off exponentially (with jitter, never sooner than
//!   `Retry-After`), keep the refresh token, and keep serving a still-valid access token; after
//!   `max_transient_failures` in a row the server is Failed until the next reconnect.
//! - A permanent refresh failure drops only the refresh token; a login follows.
//! - The browser opens by itself at most once per `browser_window` per server; a login asked
//!   for explicitly always may.

pub type Millis = i64;

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
        self.expires_at.map(|e| (e - self.obtained_at).max(0))
    }

    /// How long before expiry a token stops being handed out.
    pub fn safety_margin(&self) -> Millis {
        self.lifetime().map(|l| (l / 10).min(5_000)).unwrap_or(0)
    }

    /// Valid for at least the safety margin at `now`, and not refused.
    pub fn usable(&self, now: Millis) -> bool {
        !self.refused
            && self
                .expires_at
                .is_none_or(|e| e - now > self.safety_margin())
    }

    /// Refused this early (within half its lifetime, at most 5 s, after issue), a token was
    /// bad from the start: the server is issuing unusable tokens, and refreshing at once would
    /// loop.
    pub fn refused_when_fresh(&self, now: Millis) -> bool {
        let window = self.lifetime().map(|l| (l / 2).min(5_000)).unwrap_or(5_000);
        now - self.obtained_at < window
    }

    /// When to refresh ahead of expiry: 75% of the lifetime, minus `jitter` (0..1) of 5% of it.
    pub fn refresh_at(&self, jitter: f64) -> Option<Millis> {
        let lifetime = self.lifetime()?;
        let spread = (lifetime as f64 * 0.05 * jitter.clamp(0.0, 1.0)) as Millis;
        Some(self.obtained_at + lifetime * 3 / 4 - spread)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Nothing asked yet.
    Idle,
    /// Reading the persisted token.
    Loading,
    Connected,
    Refreshing,
    Authorizing,
    /// No refresh token can work and the browser may not open by itself.
    NeedsLogin {
        reason: String,
    },
    Backoff {
        attempt: u32,
        retry_at: Millis,
        last_error: String,
    },
    Failed {
        error: String,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Loading => "loading",
            Phase::Connected => "connected",
            Phase::Refreshing => "refreshing",
            Phase::Authorizing => "authorizing",
            Phase::NeedsLogin { .. } => "needs_login",
            Phase::Backoff { .. } => "backoff",
            Phase::Failed { .. } => "failed",
        }
    }

    /// A flow (refresh or login) runs: requests join it instead of starting another.
    pub fn flow_running(&self) -> bool {
        matches!(
            self,
            Phase::Loading | Phase::Refreshing | Phase::Authorizing
        )
    }
}

/// Tunables, with production defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// May open the browser without an explicit login request.
    pub interactive: bool,
    pub browser_window: Millis,
    pub backoff_base: Millis,
    pub backoff_cap: Millis,
    pub max_transient_failures: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            interactive: true,
            browser_window: 5 * 60_000,
            backoff_base: 1_000,
            backoff_cap: 5 * 60_000,
            max_transient_failures: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub phase: Phase,
    pub token: Option<TokenFacts>,
    pub transient_failures: u32,
    pub last_browser_launch: Option<Millis>,
    /// This server's fixed jitter in 0..1, drawn once by the actor.
    pub jitter: f64,
    pub policy: Policy,
    /// An explicit refresh arrived before the token was loaded: refresh once it is.
    pub refresh_after_load: bool,
    /// The last refresh was started because the upstream refused a token.
    pub refresh_after_refusal: bool,
    /// A token from such a refresh was refused while fresh too: new tokens do not clear the
    /// failure count until one lives to its proactive refresh.
    pub suspect_tokens: bool,
}

impl State {
    pub fn new(policy: Policy, jitter: f64) -> Self {
        State {
            phase: Phase::Idle,
            token: None,
            transient_failures: 0,
            last_browser_launch: None,
            jitter,
            policy,
            refresh_after_load: false,
            refresh_after_refusal: false,
            suspect_tokens: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A caller needs a usable token (a reconnect, or `access_token()` without one).
    Reconnect,
    /// An explicit login: the browser may open whatever the rate limit says.
    Login,
    /// An explicit refresh.
    Refresh,
    /// The upstream refused the current token (the actor drops reports about older tokens).
    Unauthorized,
    Loaded(Option<TokenFacts>),
    /// The registry could not be read.
    LoadFailed {
        error: String,
    },
    /// A refresh or login produced a token, already persisted.
    TokenObtained(TokenFacts),
    RefreshFailed {
        permanent: bool,
        retry_after: Option<Millis>,
        error: String,
    },
    LoginFailed {
        error: String,
    },
    /// The armed timer fired (proactive refresh or end of backoff).
    Timer,
    Logout,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    LoadToken,
    StartRefresh,
    StartLogin,
    /// Replaces any armed timer.
    ArmTimer {
        at: Millis,
    },
    /// Answer everyone waiting for a token.
    ResolveWaiters(Resolution),
    /// The refresh token was refused for good: forget it, keep the access token.
    DropRefreshToken,
    /// Log out: forget the token (and revoke it where the server allows).
    ForgetToken,
    /// Log "re-authentication required for <server>: <reason>".
    AnnounceReauthentication {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Ready,
    Failed(String),
}

/// The whole machine.
pub fn step(state: &State, event: Event, now: Millis) -> (State, Vec<Effect>) {
    let mut next = state.clone();
    let mut effects = Vec::new();
    use Event::*;
    use Phase::*;
    match (&state.phase, event) {
        (_, Logout) => {
            next.phase = Idle;
            next.token = None;
            next.transient_failures = 0;
            effects.push(Effect::ForgetToken);
            effects.push(Effect::ResolveWaiters(Resolution::Failed(
                "logged out".into(),
            )));
        }
        // A running flow absorbs requests: they wait for its outcome.
        (Loading | Refreshing | Authorizing, Reconnect | Refresh | Unauthorized) => {}
        (Loading | Refreshing, Login) => {}
        (Authorizing, Login) => {}
        (_, Login) => start_login(&mut next, &mut effects, now, true, "login requested".into()),
        (Idle, event @ (Reconnect | Refresh | Unauthorized)) => {
            next.phase = Loading;
            next.refresh_after_load = event == Refresh;
            effects.push(Effect::LoadToken);
        }
        (Loading, Loaded(token)) => {
            next.token = token;
            let refresh_requested = std::mem::take(&mut next.refresh_after_load);
            match token {
                Some(_) if refresh_requested => {
                    refresh_or_login(&mut next, &mut effects, now, "refresh requested")
                }
                Some(t) => decide(&mut next, &mut effects, t, now),
                None => needs_login(&mut next, &mut effects, now, "no stored token".into()),
            }
        }
        (Loading, LoadFailed { error }) => {
            next.phase = Failed {
                error: error.clone(),
            };
            effects.push(Effect::ResolveWaiters(Resolution::Failed(error)));
        }
        (Connected, Reconnect) => match next.token {
            Some(t) => decide(&mut next, &mut effects, t, now),
            None => needs_login(&mut next, &mut effects, now, "no token".into()),
        },
        (Connected | Backoff { .. }, Unauthorized) => {
            let fresh = next.token.is_some_and(|t| t.refused_when_fresh(now));
            if let Some(t) = next.token.as_mut() {
                t.refused = true;
            }
            if matches!(state.phase, Backoff { .. }) {
                // Backing off already: the timer brings the next attempt; callers hear why.
                effects.push(Effect::ResolveWaiters(Resolution::Failed(
                    "refreshing is backing off after failures".into(),
                )));
            } else if fresh && state.refresh_after_refusal {
                // Refused again, fresh from a refresh that answered a refusal: the server issues
                // unusable tokens. Refreshing at once would loop; back off instead.
                next.suspect_tokens = true;
                transient_failure(
                    &mut next,
                    &mut effects,
                    now,
                    None,
                    "the server refused a token it had just issued".into(),
                );
            } else {
                next.refresh_after_refusal = true;
                refresh_or_login(
                    &mut next,
                    &mut effects,
                    now,
                    "the server refused the access token",
                );
            }
        }
        (Connected | NeedsLogin { .. } | Backoff { .. } | Failed { .. }, Refresh) => {
            next.transient_failures = 0;
            refresh_or_login(&mut next, &mut effects, now, "refresh requested");
        }
        (Connected, Timer) => {
            // This token lived to its proactive refresh: the server's tokens work again.
            next.suspect_tokens = false;
            next.refresh_after_refusal = false;
            next.transient_failures = 0;
            refresh_or_login(&mut next, &mut effects, now, "the access token is expiring");
        }
        (Backoff { .. }, Timer) => {
            refresh_or_login(&mut next, &mut effects, now, "the access token is expiring")
        }
        (Refreshing | Authorizing, TokenObtained(t)) => {
            if t.usable(now) {
                next.token = Some(t);
                if !next.suspect_tokens {
                    next.transient_failures = 0;
                }
                connected(&mut next, &mut effects, t);
            } else {
                // A "successful" flow whose token is already unusable is a failure, never a
                // success: back off instead of looping.
                next.token = Some(t);
                transient_failure(
                    &mut next,
                    &mut effects,
                    now,
                    None,
                    "the server issued a token that is already expired".into(),
                );
            }
        }
        (
            Refreshing,
            RefreshFailed {
                permanent: true,
                error,
                ..
            },
        ) => {
            effects.push(Effect::DropRefreshToken);
            if let Some(t) = next.token.as_mut() {
                t.has_refresh_token = false;
            }
            match next.token {
                Some(t) if t.usable(now) => connected(&mut next, &mut effects, t),
                _ => needs_login(
                    &mut next,
                    &mut effects,
                    now,
                    format!("the refresh token was rejected ({error})"),
                ),
            }
        }
        (
            Refreshing,
            RefreshFailed {
                permanent: false,
                retry_after,
                error,
            },
        ) => {
            transient_failure(&mut next, &mut effects, now, retry_after, error);
        }
        (Authorizing, LoginFailed { error }) => {
            next.phase = NeedsLogin {
                reason: format!("the login failed: {error}"),
            };
            effects.push(Effect::ResolveWaiters(Resolution::Failed(format!(
                "login failed: {error}"
            ))));
        }
        (Backoff { .. }, Reconnect) => match next.token {
            Some(t) if t.usable(now) => effects.push(Effect::ResolveWaiters(Resolution::Ready)),
            _ => {
                let Backoff {
                    retry_at,
                    last_error,
                    ..
                } = &state.phase
                else {
                    unreachable!()
                };
                effects.push(Effect::ResolveWaiters(Resolution::Failed(format!(
                    "refreshing keeps failing ({last_error}); next attempt in {} ms",
                    (retry_at - now).max(0)
                ))));
            }
        },
        // Another process (`auth login`, another daemon) may have stored a token meanwhile:
        // read the store again before deciding; the browser rate limit still applies after.
        (NeedsLogin { .. }, Reconnect | Unauthorized) => {
            next.phase = Loading;
            effects.push(Effect::LoadToken);
        }
        (Failed { .. }, Reconnect | Unauthorized) => {
            next.transient_failures = 0;
            next.phase = Loading;
            effects.push(Effect::LoadToken);
        }
        // Everything else is stale or irrelevant in this phase (a timer after logout, a
        // late result): ignored, so no event can knock the machine into a loop.
        _ => {}
    }
    (next, effects)
}

fn connected(next: &mut State, effects: &mut Vec<Effect>, t: TokenFacts) {
    next.phase = Phase::Connected;
    effects.push(Effect::ResolveWaiters(Resolution::Ready));
    if let Some(at) = t.refresh_at(next.jitter) {
        effects.push(Effect::ArmTimer { at });
    }
}

/// A stored or obtained token: use it, refresh it, or log in.
fn decide(next: &mut State, effects: &mut Vec<Effect>, t: TokenFacts, now: Millis) {
    if t.usable(now) {
        connected(next, effects, t);
    } else {
        refresh_or_login(next, effects, now, "the access token expired");
    }
}

fn refresh_or_login(next: &mut State, effects: &mut Vec<Effect>, now: Millis, why: &str) {
    match next.token {
        Some(t) if t.has_refresh_token => {
            next.phase = Phase::Refreshing;
            effects.push(Effect::StartRefresh);
        }
        Some(t) if t.usable(now) => connected(next, effects, t),
        _ => needs_login(
            next,
            effects,
            now,
            format!("{why} and there is no refresh token"),
        ),
    }
}

/// No refresh token can work: open the browser if allowed, else wait for an explicit login.
fn needs_login(next: &mut State, effects: &mut Vec<Effect>, now: Millis, reason: String) {
    let browser_allowed = next.policy.interactive
        && next
            .last_browser_launch
            .is_none_or(|last| now - last >= next.policy.browser_window);
    if browser_allowed {
        start_login(next, effects, now, false, reason);
    } else {
        let why = if next.policy.interactive {
            format!("{reason}; the browser opened recently, run a login")
        } else {
            format!("{reason}; run a login")
        };
        effects.push(Effect::AnnounceReauthentication {
            reason: why.clone(),
        });
        effects.push(Effect::ResolveWaiters(Resolution::Failed(format!(
            "re-authentication required: {why}"
        ))));
        next.phase = Phase::NeedsLogin { reason: why };
    }
}

fn start_login(
    next: &mut State,
    effects: &mut Vec<Effect>,
    now: Millis,
    explicit: bool,
    reason: String,
) {
    if !explicit {
        effects.push(Effect::AnnounceReauthentication { reason });
    }
    next.last_browser_launch = Some(now);
    next.phase = Phase::Authorizing;
    effects.push(Effect::StartLogin);
}

fn transient_failure(
    next: &mut State,
    effects: &mut Vec<Effect>,
    now: Millis,
    retry_after: Option<Millis>,
    error: String,
) {
    next.transient_failures += 1;
    let attempt = next.transient_failures;
    let policy = next.policy;
    if attempt > policy.max_transient_failures {
        next.phase = Phase::Failed {
            error: format!("gave up after {} failed attempts: {error}", attempt - 1),
        };
        effects.push(Effect::ResolveWaiters(Resolution::Failed(format!(
            "refresh keeps failing: {error}"
        ))));
        return;
    }
    let exponential = policy
        .backoff_base
        .saturating_mul(1 << (attempt - 1).min(20))
        .min(policy.backoff_cap);
    let jittered = (exponential as f64 * (0.8 + 0.4 * next.jitter)) as Millis;
    let delay = jittered.max(retry_after.unwrap_or(0));
    let retry_at = now + delay;
    next.phase = Phase::Backoff {
        attempt,
        retry_at,
        last_error: error.clone(),
    };
    effects.push(Effect::ArmTimer { at: retry_at });
    // Waiters are not held for minutes: a still-valid token serves them, else they hear why.
    match next.token {
        Some(t) if t.usable(now) => effects.push(Effect::ResolveWaiters(Resolution::Ready)),
        _ => effects.push(Effect::ResolveWaiters(Resolution::Failed(format!(
            "refresh failed, retrying in {delay} ms: {error}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;

    const NOW: Millis = 1_000_000;

    fn token(expires_in: Millis, has_refresh_token: bool) -> TokenFacts {
        TokenFacts {
            obtained_at: NOW - 10_000,
            expires_at: Some(NOW + expires_in),
            has_refresh_token,
            refused: false,
        }
    }

    fn state(phase: Phase, token: Option<TokenFacts>) -> State {
        State {
            phase,
            token,
            ..State::new(Policy::default(), 0.0)
        }
    }

    fn backoff() -> Phase {
        Phase::Backoff {
            attempt: 1,
            retry_at: NOW + 1_000,
            last_error: "e".into(),
        }
    }

    /// (state, event) -> (phase name, effects), for every transition that does something.
    #[test]
    fn the_transition_table() {
        let valid = token(3_600_000, true);
        let expired = token(-1_000, true);
        let expired_no_rt = token(-1_000, false);
        let transient = |retry_after| Event::RefreshFailed {
            permanent: false,
            retry_after,
            error: "server_error".into(),
        };
        let permanent = Event::RefreshFailed {
            permanent: true,
            retry_after: None,
            error: "invalid_grant".into(),
        };
        let ready = ResolveWaiters(Resolution::Ready);
        let arm_for_valid = ArmTimer {
            at: valid.refresh_at(0.0).unwrap(),
        };
        let reauth = |r: &str| AnnounceReauthentication { reason: r.into() };
        let rows: Vec<(State, Event, &str, Vec<Effect>)> = vec![
            (state(Phase::Idle, None), Event::Reconnect, "loading", vec![LoadToken]),
            (state(Phase::Idle, None), Event::Unauthorized, "loading", vec![LoadToken]),
            (State { refresh_after_load: true, ..state(Phase::Loading, None) }, Event::Loaded(Some(valid)), "refreshing", vec![StartRefresh]),
            (state(Phase::Loading, None), Event::Loaded(Some(valid)), "connected", vec![ready.clone(), arm_for_valid.clone()]),
            (state(Phase::Loading, None), Event::Loaded(Some(expired)), "refreshing", vec![StartRefresh]),
            (state(Phase::Loading, None), Event::Loaded(Some(expired_no_rt)), "authorizing", vec![reauth("the access token expired and there is no refresh token"), StartLogin]),
            (state(Phase::Loading, None), Event::Loaded(None), "authorizing", vec![reauth("no stored token"), StartLogin]),
            (state(Phase::Loading, None), Event::Reconnect, "loading", vec![]),
            (state(Phase::Loading, None), Event::LoadFailed { error: "db".into() }, "failed", vec![ResolveWaiters(Resolution::Failed("db".into()))]),
            (state(Phase::Connected, Some(valid)), Event::Reconnect, "connected", vec![ready.clone(), arm_for_valid.clone()]),
            (state(Phase::Connected, Some(expired)), Event::Reconnect, "refreshing", vec![StartRefresh]),
            (state(Phase::Connected, Some(valid)), Event::Unauthorized, "refreshing", vec![StartRefresh]),
            (state(Phase::Connected, Some(TokenFacts { obtained_at: NOW - 1_000, ..valid })), Event::Unauthorized, "refreshing", vec![StartRefresh]),
            (State { refresh_after_refusal: true, ..state(Phase::Connected, Some(TokenFacts { obtained_at: NOW - 1_000, ..valid })) }, Event::Unauthorized, "backoff", vec![ArmTimer { at: NOW + 800 }, ResolveWaiters(Resolution::Failed("refresh failed, retrying in 800 ms: the server refused a token it had just issued".into()))]),
            (state(backoff(), Some(valid)), Event::Unauthorized, "backoff", vec![ResolveWaiters(Resolution::Failed("refreshing is backing off after failures".into()))]),
            (state(Phase::Connected, Some(valid)), Event::Timer, "refreshing", vec![StartRefresh]),
            (state(Phase::Connected, Some(valid)), Event::Refresh, "refreshing", vec![StartRefresh]),
            (state(Phase::Refreshing, Some(expired)), Event::Reconnect, "refreshing", vec![]),
            (state(Phase::Refreshing, Some(expired)), Event::Unauthorized, "refreshing", vec![]),
            (state(Phase::Refreshing, Some(expired)), Event::TokenObtained(valid), "connected", vec![ready.clone(), arm_for_valid.clone()]),
            (state(Phase::Refreshing, Some(expired)), Event::TokenObtained(expired), "backoff", vec![ArmTimer { at: NOW + 800 }, ResolveWaiters(Resolution::Failed("refresh failed, retrying in 800 ms: the server issued a token that is already expired".into()))]),
            (state(Phase::Refreshing, Some(expired)), transient(None), "backoff", vec![ArmTimer { at: NOW + 800 }, ResolveWaiters(Resolution::Failed("refresh failed, retrying in 800 ms: server_error".into()))]),
            (state(Phase::Refreshing, Some(valid)), transient(Some(30_000)), "backoff", vec![ArmTimer { at: NOW + 30_000 }, ready.clone()]),
            (state(Phase::Refreshing, Some(valid)), permanent.clone(), "connected", vec![DropRefreshToken, ready.clone(), arm_for_valid.clone()]),
            (state(Phase::Refreshing, Some(expired)), permanent, "authorizing", vec![DropRefreshToken, reauth("the refresh token was rejected (invalid_grant)"), StartLogin]),
            (state(backoff(), Some(expired)), Event::Timer, "refreshing", vec![StartRefresh]),
            (state(backoff(), Some(valid)), Event::Reconnect, "backoff", vec![ready.clone()]),
            (state(backoff(), Some(expired)), Event::Reconnect, "backoff", vec![ResolveWaiters(Resolution::Failed("refreshing keeps failing (e); next attempt in 1000 ms".into()))]),
            (state(backoff(), Some(expired)), Event::Refresh, "refreshing", vec![StartRefresh]),
            (state(Phase::Authorizing, None), Event::Reconnect, "authorizing", vec![]),
            (state(Phase::Authorizing, None), Event::Login, "authorizing", vec![]),
            (state(Phase::Authorizing, None), Event::TokenObtained(valid), "connected", vec![ready.clone(), arm_for_valid.clone()]),
            (state(Phase::Authorizing, None), Event::LoginFailed { error: "access_denied".into() }, "needs_login", vec![ResolveWaiters(Resolution::Failed("login failed: access_denied".into()))]),
            (state(Phase::NeedsLogin { reason: "r".into() }, None), Event::Login, "authorizing", vec![StartLogin]),
            (state(Phase::NeedsLogin { reason: "r".into() }, None), Event::Reconnect, "loading", vec![LoadToken]),
            (state(Phase::Failed { error: "x".into() }, Some(expired)), Event::Reconnect, "loading", vec![LoadToken]),
            (state(Phase::Connected, Some(valid)), Event::Logout, "idle", vec![ForgetToken, ResolveWaiters(Resolution::Failed("logged out".into()))]),
            (state(Phase::Idle, None), Event::Timer, "idle", vec![]),
            (state(Phase::Connected, Some(valid)), Event::TokenObtained(valid), "connected", vec![]),
        ];
        for (i, (before, event, phase, effects)) in rows.into_iter().enumerate() {
            let (after, got) = step(&before, event.clone(), NOW);
            assert_eq!(
                (after.phase.name(), &got),
                (phase, &effects),
                "row {i}: {:?} + {event:?}",
                before.phase
            );
        }
    }

    #[test]
    fn the_browser_opens_by_itself_once_per_window_but_an_explicit_login_always_may() {
        let mut s = state(Phase::Loading, None);
        s.last_browser_launch = Some(NOW - 1_000);
        let (after, effects) = step(&s, Event::Loaded(None), NOW);
        assert_eq!(after.phase.name(), "needs_login");
        assert!(!effects.contains(&StartLogin));
        assert!(
            matches!(&effects[1], ResolveWaiters(Resolution::Failed(m)) if m.starts_with("re-authentication required: no stored token"))
        );
        let (after, effects) = step(&after, Event::Login, NOW);
        assert_eq!(
            (after.phase.name(), effects),
            ("authorizing", vec![StartLogin])
        );
        let later = NOW - 1_000 + Policy::default().browser_window;
        let waiting = State {
            last_browser_launch: Some(NOW - 1_000),
            ..state(Phase::NeedsLogin { reason: "r".into() }, None)
        };
        let (reloading, effects) = step(&waiting, Event::Reconnect, later);
        assert_eq!(
            (reloading.phase.name(), effects),
            ("loading", vec![LoadToken]),
            "the store is read again first"
        );
        let (after, effects) = step(&reloading, Event::Loaded(None), later);
        assert_eq!(after.phase.name(), "authorizing", "the window has passed");
        assert!(effects.contains(&StartLogin));
        let (found, effects) = step(&reloading, Event::Loaded(Some(token(3_600_000, true))), NOW);
        assert_eq!(
            found.phase.name(),
            "connected",
            "a token another process stored is used"
        );
        assert!(effects.contains(&ResolveWaiters(Resolution::Ready)));
    }

    #[test]
    fn non_interactive_hosts_never_open_a_browser_by_themselves() {
        let mut s = state(Phase::Loading, None);
        s.policy.interactive = false;
        let (after, effects) = step(&s, Event::Loaded(None), NOW);
        assert_eq!(after.phase.name(), "needs_login");
        assert!(!effects.contains(&StartLogin));
    }

    #[test]
    fn transient_failures_back_off_exponentially_then_give_up() {
        let mut s = state(Phase::Refreshing, Some(token(-1_000, true)));
        let mut delays = Vec::new();
        for _ in 0..s.policy.max_transient_failures {
            let (after, effects) = step(
                &s,
                Event::RefreshFailed {
                    permanent: false,
                    retry_after: None,
                    error: "e".into(),
                },
                NOW,
            );
            let Some(ArmTimer { at }) = effects.first() else {
                panic!("{effects:?}")
            };
            delays.push(at - NOW);
            s = step(&after, Event::Timer, NOW).0;
            assert_eq!(s.phase.name(), "refreshing");
        }
        assert_eq!(
            delays,
            [800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400]
        );
        let (after, effects) = step(
            &s,
            Event::RefreshFailed {
                permanent: false,
                retry_after: None,
                error: "e".into(),
            },
            NOW,
        );
        assert_eq!(after.phase.name(), "failed");
        assert!(matches!(&effects[0], ResolveWaiters(Resolution::Failed(_))));
        assert_eq!(
            step(&after, Event::Timer, NOW).1,
            vec![],
            "a failed server does not spin"
        );
    }

    #[test]
    fn a_server_issuing_refused_tokens_is_backed_off_and_given_up_on() {
        let fresh = || TokenFacts {
            obtained_at: NOW,
            ..token(3_600_000, true)
        };
        // A first refusal refreshes at once (reactive refresh)...
        let (refreshing, effects) = step(
            &state(Phase::Connected, Some(fresh())),
            Event::Unauthorized,
            NOW,
        );
        assert_eq!(effects, vec![StartRefresh]);
        let (mut s, _) = step(&refreshing, Event::TokenObtained(fresh()), NOW);
        // ...but when that refresh's fresh token is refused too, the server issues unusable
        // tokens: every further refusal backs off, exponentially, until the bound.
        let mut delays = Vec::new();
        for _ in 0..s.policy.max_transient_failures {
            let (after, effects) = step(&s, Event::Unauthorized, NOW);
            let Some(ArmTimer { at }) = effects.first() else {
                panic!("{:?}: {effects:?}", after.phase)
            };
            delays.push(at - NOW);
            let (refreshing, _) = step(&after, Event::Timer, NOW);
            // The refresh "succeeds" with another token the server will refuse.
            let (connected, _) = step(
                &refreshing,
                Event::TokenObtained(TokenFacts {
                    obtained_at: NOW,
                    ..token(3_600_000, true)
                }),
                NOW,
            );
            assert_eq!(connected.phase.name(), "connected");
            s = connected;
        }
        assert_eq!(
            delays,
            [800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400],
            "paced, never at once"
        );
        let (after, _) = step(&s, Event::Unauthorized, NOW);
        assert_eq!(after.phase.name(), "failed", "bounded");
        let healthy = State {
            suspect_tokens: true,
            transient_failures: 3,
            ..state(Phase::Connected, Some(token(3_600_000, true)))
        };
        let (after, _) = step(&healthy, Event::Timer, NOW);
        assert_eq!(
            (after.transient_failures, after.suspect_tokens),
            (0, false),
            "a token that lives to its refresh clears suspicion"
        );
    }

    #[test]
    fn refresh_timing_and_margins() {
        let t = TokenFacts {
            obtained_at: 0,
            expires_at: Some(3_600_000),
            has_refresh_token: true,
            refused: false,
        };
        assert_eq!(t.refresh_at(0.0), Some(2_700_000));
        assert_eq!(t.refresh_at(1.0), Some(2_700_000 - 180_000));
        assert_eq!(t.safety_margin(), 5_000);
        assert!(t.usable(3_594_999) && !t.usable(3_595_000));
        let short = TokenFacts {
            obtained_at: 0,
            expires_at: Some(2_000),
            has_refresh_token: true,
            refused: false,
        };
        assert_eq!(
            (short.refresh_at(0.5), short.safety_margin()),
            (Some(1_450), 200)
        );
        let unknown = TokenFacts {
            expires_at: None,
            ..short
        };
        assert!(unknown.usable(i64::MAX / 2) && unknown.refresh_at(0.0).is_none());
        assert!(!TokenFacts { refused: true, ..t }.usable(0));
    }
}
