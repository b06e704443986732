//! The transition table: every (phase, event) pair, each row asserting the whole next state
//! and every effect, split by phase (`idle`, `connected`, `flows`, `waiting`), with the
//! reports about a token (`reports`), saves and the drain (`saves`) and the deadlines
//! (`timers`) in their own rooms; and property tests over random sequences of events and times
//! (`model`, `properties`). This file holds the samples and helpers the rows share.

use super::*;
use Effect::*;

mod connected;
mod flows;
mod grants;
mod idle;
mod model;
mod properties;
mod reports;
mod saves;
mod timers;
mod waiting;

const NOW: Millis = 1_000_000;
const HOUR: Millis = 3_600_000;

/// The id of the test token number `n`.
fn id(n: u8) -> TokenId {
    TokenId::of(&format!("access-token-{n}"))
}

/// Token 1, obtained 10 s ago, expiring in `expires_in`.
fn token(expires_in: Millis, has_refresh_token: bool) -> TokenFacts {
    TokenFacts {
        id: id(1),
        obtained_at: NOW - 10_000,
        expires_at: Some(NOW + expires_in),
        has_refresh_token,
        refused: false,
    }
}

fn valid() -> TokenFacts {
    token(HOUR, true)
}
fn expired() -> TokenFacts {
    token(-1_000, true)
}
/// Token 2, just issued, valid for an hour.
fn fresh() -> TokenFacts {
    TokenFacts {
        id: id(2),
        obtained_at: NOW,
        expires_at: Some(NOW + HOUR),
        has_refresh_token: true,
        refused: false,
    }
}
fn refused(t: TokenFacts) -> TokenFacts {
    TokenFacts { refused: true, ..t }
}

fn st(phase: Phase, token: Option<TokenFacts>) -> State {
    State {
        phase,
        token,
        ..State::new(Policy::default(), 0.0)
    }
}

fn with(state: &State, change: impl FnOnce(&mut State)) -> State {
    let mut s = state.clone();
    change(&mut s);
    s
}

fn ready() -> Effect {
    ResolveWaiters(Resolution::Ready)
}
fn failed(f: Failure) -> Effect {
    ResolveWaiters(Resolution::Failed(f))
}
fn refresh() -> Effect {
    StartRefresh(RefreshPlan::default())
}
fn refresh_with(plan: RefreshPlan) -> Effect {
    StartRefresh(plan)
}

/// Connected to `t` from `s`, its refresh due at 75% of its life (the samples' jitter is 0).
fn connected_to(s: &State, t: TokenFacts) -> State {
    with(s, |n| {
        n.phase = Phase::Connected;
        n.token = Some(t);
        n.refresh_due = if t.has_refresh_token {
            t.refresh_at(0.0)
        } else {
            t.unusable_at()
        };
    })
}

/// The login `s` (the state after the step) starts at `NOW`.
fn login_of(s: &State) -> Effect {
    StartLogin(LoginPlan {
        fresh_client: s.fresh_client,
        step_up_scope: s.step_up_scope.clone(),
        requested_at: NOW,
        adopt: true,
        after_refusal: s.refresh_after_refusal,
    })
}

/// Announced because of `reason`, the login `after` starts.
fn announced_login(reason: LoginReason, after: &State) -> Vec<Effect> {
    vec![AnnounceReauthentication { reason }, login_of(after)]
}

/// From `s`, `event` starts a login, announced because of `reason`.
fn announces_login(s: &State, event: Event, reason: LoginReason) -> Row {
    let after = login_started(s);
    (
        s.clone(),
        event,
        after.clone(),
        announced_login(reason, &after),
    )
}

/// `s` once the upstream refused its token `t`: the token marked refused and its id kept, so
/// it is not trusted again.
fn with_refused(s: &State, t: TokenFacts) -> State {
    with(s, |n| {
        n.token = Some(refused(t));
        n.refused = Some(id(1));
    })
}

/// A refusal of the current token of `c` (connected to `valid()`): refused, and refreshed
/// after checking where the resource's authorization server is now.
fn refused_and_refreshing(c: &State) -> (State, Vec<Effect>) {
    let after = with(&with_refused(c, valid()), |n| {
        n.phase = Phase::Refreshing;
        n.refresh_after_refusal = true;
    });
    let plan = RefreshPlan {
        after_refusal: true,
        ..RefreshPlan::default()
    };
    (after, vec![refresh_with(plan)])
}

fn login_started(s: &State) -> State {
    with(s, |n| {
        n.phase = Phase::Authorizing;
        n.generation += 1;
        n.logins += 1;
        n.login_after_flow = false;
    })
}

/// `flow`: one was running (it is cancelled); `here`: this process logged out (revoke and
/// delete the stored token).
fn logged_out_effects(flow: bool, here: bool) -> Vec<Effect> {
    let mut fx = if flow { vec![CancelFlow] } else { vec![] };
    fx.push(ForgetToken);
    if here {
        fx.push(RevokeAndDelete);
    }
    fx.push(failed(Failure::LoggedOut));
    fx
}

/// The state `s` becomes on logout.
fn logged_out_state(s: &State) -> State {
    State {
        phase: Phase::LoggedOut,
        generation: s.generation + 1,
        last_browser_failure: s.last_browser_failure,
        fresh_client: s.fresh_client,
        step_up_scope: s.step_up_scope.clone(),
        logins: s.logins,
        draining: s.draining,
        ..State::new(s.policy, s.jitter)
    }
}

fn transient(retry_after: Option<Millis>) -> RefreshFailure {
    RefreshFailure::Transient { retry_after }
}

fn refresh_failed(generation: u64, failure: RefreshFailure, error: &str) -> Event {
    Event::RefreshFailed {
        generation,
        failure,
        error: error.into(),
    }
}

fn obtained(generation: u64, token: TokenFacts) -> Event {
    Event::TokenObtained {
        generation,
        token,
        saved: true,
    }
}

fn login_failed(generation: u64, error: &str) -> Event {
    Event::LoginFailed {
        generation,
        error: error.into(),
        dynamic_client: false,
    }
}

/// A 401 for the current token.
fn refused_now() -> Event {
    Event::Refused { token: None }
}

/// A 403 `insufficient_scope` demanding "read admin" of a token granted nothing.
fn more_scope() -> Event {
    Event::Forbidden {
        token: None,
        insufficient_scope: true,
        granted: None,
        demanded: Some("read admin".into()),
    }
}

/// Another process stored token 2.
fn sc() -> Event {
    Event::StoreChanged(Some(fresh()))
}

/// Connected to `t` from `s` after another process stored it: the failure series ends.
fn adopted(s: &State, t: TokenFacts) -> State {
    with(&connected_to(s, t), |n| {
        n.transient_failures = 0;
        n.failing_since = None;
        n.suspect_tokens = false;
        n.refresh_after_refusal = false;
    })
}

/// `s` with its phase's deadlines (retry, browser, kept refresh token) due at `NOW`.
fn due_now(s: &State) -> State {
    with(s, |n| match &mut n.phase {
        Phase::BackingOff { retry_at, .. }
        | Phase::Retrying { retry_at, .. }
        | Phase::ClientRejected { retry_at, .. }
        | Phase::StoreUnavailable { retry_at, .. } => *retry_at = NOW,
        Phase::NeedsLogin {
            browser_at,
            refresh_at,
            ..
        } => {
            *browser_at = browser_at.map(|_| NOW);
            *refresh_at = refresh_at.map(|_| NOW);
        }
        Phase::Connected => n.refresh_due = Some(NOW),
        Phase::Idle
        | Phase::Loading
        | Phase::Refreshing
        | Phase::Authorizing
        | Phase::LoggedOut => {}
    })
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Reconnect => "reconnect",
        Event::Login => "login",
        Event::Refresh => "refresh",
        Event::Refused { .. } => "refused",
        Event::Forbidden { .. } => "forbidden",
        Event::Loaded { .. } => "loaded",
        Event::LoadFailed { .. } => "load_failed",
        Event::TokenObtained { .. } => "token_obtained",
        Event::StoreAhead { .. } => "store_ahead",
        Event::RefreshFailed { .. } => "refresh_failed",
        Event::LoginFailed { .. } => "login_failed",
        Event::LoginFailedBeforeBrowser { .. } => "login_failed_before_browser",
        Event::Saved { .. } => "saved",
        Event::SaveFailed { .. } => "save_failed",
        Event::Due(_) => "due",
        Event::Logout => "logout",
        Event::StoreChanged(_) => "store_changed",
        Event::Drain => "drain",
    }
}

const PHASES: [&str; 11] = [
    "idle",
    "loading",
    "connected",
    "refreshing",
    "authorizing",
    "needs_login",
    "backing_off",
    "retrying",
    "client_rejected",
    "store_unavailable",
    "logged_out",
];
const EVENTS: [&str; 18] = [
    "reconnect",
    "login",
    "refresh",
    "refused",
    "forbidden",
    "loaded",
    "load_failed",
    "token_obtained",
    "store_ahead",
    "refresh_failed",
    "login_failed",
    "login_failed_before_browser",
    "saved",
    "save_failed",
    "due",
    "logout",
    "store_changed",
    "drain",
];

/// One sample state per phase.
struct Samples {
    idle: State,
    loading: State,
    connected: State,
    refreshing: State,
    authorizing: State,
    needs_login: State,
    backing_off: State,
    retrying: State,
    client_rejected: State,
    store_unavailable: State,
    logged_out: State,
}

impl Samples {
    fn all(&self) -> [&State; 11] {
        [
            &self.idle,
            &self.loading,
            &self.connected,
            &self.refreshing,
            &self.authorizing,
            &self.needs_login,
            &self.backing_off,
            &self.retrying,
            &self.client_rejected,
            &self.store_unavailable,
            &self.logged_out,
        ]
    }

    /// The samples that wait to try the refresh token again (BackingOff, Retrying,
    /// ClientRejected), each with the failure a caller hears there.
    fn waiting(&self) -> [(&State, Failure); 3] {
        [
            (
                &self.backing_off,
                Failure::BackingOff {
                    retry_at: NOW + 1_000,
                    last_error: "e".into(),
                },
            ),
            (
                &self.retrying,
                Failure::Retrying {
                    retry_at: NOW + 1_000,
                    until: NOW + 10_000_000,
                    last_error: "e".into(),
                },
            ),
            (
                &self.client_rejected,
                Failure::ClientRejected {
                    error: "invalid_client".into(),
                },
            ),
        ]
    }
}

fn samples() -> Samples {
    let needs_login = Phase::NeedsLogin {
        reason: LoginReason::NoStoredToken,
        browser_at: Some(NOW + 60_000),
        refresh_at: None,
    };
    Samples {
        idle: st(Phase::Idle, None),
        loading: st(Phase::Loading, None),
        connected: connected_to(&st(Phase::Idle, None), valid()),
        refreshing: st(Phase::Refreshing, Some(expired())),
        authorizing: State {
            generation: 1,
            logins: 1,
            ..st(Phase::Authorizing, None)
        },
        needs_login: State {
            last_browser_failure: Some(NOW - 240_000),
            ..st(needs_login, None)
        },
        backing_off: State {
            transient_failures: 1,
            failing_since: Some(NOW - 1_000),
            ..st(
                Phase::BackingOff {
                    attempt: 1,
                    retry_at: NOW + 1_000,
                    last_error: "e".into(),
                },
                Some(expired()),
            )
        },
        retrying: State {
            transient_failures: 9,
            failing_since: Some(NOW - 1_000_000),
            ..st(
                Phase::Retrying {
                    attempt: 9,
                    retry_at: NOW + 1_000,
                    until: NOW + 10_000_000,
                    last_error: "e".into(),
                },
                Some(expired()),
            )
        },
        client_rejected: st(
            Phase::ClientRejected {
                retry_at: NOW + 1_000,
                error: "invalid_client".into(),
            },
            Some(expired()),
        ),
        store_unavailable: State {
            store_failures: 1,
            ..st(
                Phase::StoreUnavailable {
                    attempt: 1,
                    retry_at: NOW + 1_000,
                    error: "db".into(),
                },
                None,
            )
        },
        logged_out: State {
            generation: 1,
            ..st(Phase::LoggedOut, None)
        },
    }
}

type Row = (State, Event, State, Vec<Effect>);

/// The result events a phase that is not running that flow ignores.
fn results(generation: u64) -> Vec<Event> {
    vec![
        Event::Loaded {
            generation,
            token: Some(valid()),
        },
        Event::LoadFailed {
            generation,
            error: "db".into(),
        },
        obtained(generation, fresh()),
        refresh_failed(generation, transient(None), "server_error"),
        login_failed(generation, "access_denied"),
        Event::StoreAhead {
            generation,
            token: fresh(),
        },
        unreachable_login(generation, None),
    ]
}

/// An explicit login from `s`: it starts at once.
fn logs_in(s: &State) -> Row {
    let after = login_started(s);
    (
        s.clone(),
        Event::Login,
        after.clone(),
        vec![login_of(&after)],
    )
}

/// The rows a phase without a running flow shares: a logout forgets the token here, and
/// another process's fresh token in the store is adopted.
fn logout_and_adopt(s: &State) -> [Row; 2] {
    [
        (
            s.clone(),
            Event::Logout,
            logged_out_state(s),
            logged_out_effects(false, true),
        ),
        (s.clone(), sc(), adopted(s, fresh()), vec![ready()]),
    ]
}

/// A login failed before any browser opened: registration answered 503.
fn unreachable_login(generation: u64, retry_after: Option<Millis>) -> Event {
    Event::LoginFailedBeforeBrowser {
        generation,
        error: "registration answered 503".into(),
        retry_after,
    }
}

fn ignored(s: &State, events: Vec<Event>) -> Vec<Row> {
    events
        .into_iter()
        .map(|e| (s.clone(), e, s.clone(), vec![]))
        .collect()
}

fn table() -> Vec<Row> {
    let s = samples();
    [
        idle::rows(&s),
        connected::rows(&s),
        flows::rows(&s),
        waiting::rows(&s),
        reports::rows(&s),
        saves::rows(&s),
    ]
    .concat()
}

#[test]
fn the_transition_table() {
    for (i, (before, event, after, effects)) in table().into_iter().enumerate() {
        let (got, got_effects) = step(&before, event.clone(), NOW);
        assert_eq!(
            (&got, &got_effects),
            (&after, &effects),
            "row {i}: {:?} + {event:?}",
            before.phase
        );
    }
}

#[test]
fn the_table_lists_every_phase_and_event_pair() {
    let listed: std::collections::HashSet<(&str, &str)> = table()
        .iter()
        .map(|(before, event, _, _)| (before.phase.name(), event_name(event)))
        .collect();
    let missing: Vec<_> = PHASES
        .iter()
        .flat_map(|p| EVENTS.iter().map(move |e| (*p, *e)))
        .filter(|pair| !listed.contains(pair))
        .collect();
    assert!(missing.is_empty(), "pairs without a row: {missing:?}");
}
