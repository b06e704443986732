//! The transition table (every (phase, event) pair, each row asserting the whole next state
//! and every effect) and property tests over random sequences of events and times.

use super::*;
use Effect::*;

const NOW: Millis = 1_000_000;
const HOUR: Millis = 3_600_000;

fn token(expires_in: Millis, has_refresh_token: bool) -> TokenFacts {
    TokenFacts {
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
/// A token just issued, valid for an hour.
fn fresh() -> TokenFacts {
    TokenFacts {
        obtained_at: NOW,
        expires_at: Some(NOW + HOUR),
        has_refresh_token: true,
        refused: false,
    }
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
fn arm_refresh(t: TokenFacts) -> Effect {
    ArmTimer {
        at: t.refresh_at(0.0).unwrap(),
    }
}
fn refresh() -> Effect {
    StartRefresh(RefreshPlan::default())
}
fn logged_out_effects(flow: bool) -> Vec<Effect> {
    let mut fx = if flow { vec![CancelFlow] } else { vec![] };
    fx.extend([CancelTimer, ForgetToken, failed(Failure::LoggedOut)]);
    fx
}

/// The state `s` becomes on logout.
fn logged_out_state(s: &State) -> State {
    State {
        phase: Phase::LoggedOut,
        generation: s.generation + 1,
        last_browser_failure: s.last_browser_failure,
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

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Reconnect => "reconnect",
        Event::Login => "login",
        Event::Refresh => "refresh",
        Event::Unauthorized => "unauthorized",
        Event::InsufficientScope { .. } => "insufficient_scope",
        Event::Loaded { .. } => "loaded",
        Event::LoadFailed { .. } => "load_failed",
        Event::TokenObtained { .. } => "token_obtained",
        Event::RefreshFailed { .. } => "refresh_failed",
        Event::LoginFailed { .. } => "login_failed",
        Event::Timer => "timer",
        Event::Logout => "logout",
        Event::StoreChanged(_) => "store_changed",
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
const EVENTS: [&str; 13] = [
    "reconnect",
    "login",
    "refresh",
    "unauthorized",
    "insufficient_scope",
    "loaded",
    "load_failed",
    "token_obtained",
    "refresh_failed",
    "login_failed",
    "timer",
    "logout",
    "store_changed",
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

fn samples() -> Samples {
    let needs_login = Phase::NeedsLogin {
        reason: LoginReason::NoStoredToken,
        browser_at: Some(NOW + 60_000),
        refresh_at: None,
    };
    Samples {
        idle: st(Phase::Idle, None),
        loading: st(Phase::Loading, None),
        connected: st(Phase::Connected, Some(valid())),
        refreshing: st(Phase::Refreshing, Some(expired())),
        authorizing: State {
            generation: 1,
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
        Event::TokenObtained {
            generation,
            token: fresh(),
        },
        refresh_failed(generation, transient(None), "server_error"),
        Event::LoginFailed {
            generation,
            error: "access_denied".into(),
        },
    ]
}

fn ignored(s: &State, events: Vec<Event>) -> Vec<Row> {
    events
        .into_iter()
        .map(|e| (s.clone(), e, s.clone(), vec![]))
        .collect()
}

fn login_started(s: &State) -> State {
    with(s, |n| {
        n.phase = Phase::Authorizing;
        n.generation += 1;
        n.login_after_flow = false;
    })
}

/// Connected to `t` from `s`, with the failure series cleared as a store change does.
fn adopted(s: &State, t: TokenFacts) -> State {
    with(s, |n| {
        n.phase = Phase::Connected;
        n.token = Some(t);
        n.transient_failures = 0;
        n.failing_since = None;
        n.suspect_tokens = false;
        n.refresh_after_refusal = false;
    })
}

fn table() -> Vec<Row> {
    let s = samples();
    let mut rows: Vec<Row> = Vec::new();
    let sc = || Event::StoreChanged(Some(fresh()));

    // Idle
    let i = &s.idle;
    rows.push((
        i.clone(),
        Event::Reconnect,
        with(i, |n| n.phase = Phase::Loading),
        vec![LoadToken],
    ));
    rows.push((
        i.clone(),
        Event::Unauthorized,
        with(i, |n| n.phase = Phase::Loading),
        vec![LoadToken],
    ));
    rows.push((
        i.clone(),
        Event::Login,
        with(i, |n| {
            n.phase = Phase::Loading;
            n.login_after_flow = true;
        }),
        vec![LoadToken],
    ));
    rows.push((
        i.clone(),
        Event::Refresh,
        with(i, |n| {
            n.phase = Phase::Loading;
            n.refresh_after_load = true;
        }),
        vec![LoadToken],
    ));
    rows.extend(ignored(i, results(0)));
    rows.extend(ignored(i, vec![Event::Timer, sc()]));
    rows.push((
        i.clone(),
        Event::Logout,
        logged_out_state(i),
        logged_out_effects(false),
    ));

    // Loading
    let l = &s.loading;
    rows.extend(ignored(
        l,
        vec![
            Event::Reconnect,
            Event::Refresh,
            Event::Unauthorized,
            Event::Timer,
            sc(),
        ],
    ));
    rows.push((
        l.clone(),
        Event::Login,
        with(l, |n| n.login_after_flow = true),
        vec![],
    ));
    rows.push((
        l.clone(),
        Event::Loaded {
            generation: 0,
            token: Some(valid()),
        },
        with(l, |n| {
            n.phase = Phase::Connected;
            n.token = Some(valid());
        }),
        vec![ready(), arm_refresh(valid())],
    ));
    rows.push((
        l.clone(),
        Event::Loaded {
            generation: 0,
            token: Some(expired()),
        },
        with(l, |n| {
            n.phase = Phase::Refreshing;
            n.token = Some(expired());
        }),
        vec![refresh()],
    ));
    rows.push((
        l.clone(),
        Event::Loaded {
            generation: 0,
            token: Some(token(-1_000, false)),
        },
        with(l, |n| {
            n.phase = Phase::Authorizing;
            n.token = Some(token(-1_000, false));
            n.generation = 1;
        }),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::NoRefreshToken,
            },
            StartLogin,
        ],
    ));
    rows.push((
        l.clone(),
        Event::Loaded {
            generation: 0,
            token: None,
        },
        with(l, |n| {
            n.phase = Phase::Authorizing;
            n.generation = 1;
        }),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::NoStoredToken,
            },
            StartLogin,
        ],
    ));
    let wants_login = with(l, |n| n.login_after_flow = true);
    rows.push((
        wants_login.clone(),
        Event::Loaded {
            generation: 0,
            token: Some(valid()),
        },
        with(&wants_login, |n| {
            n.phase = Phase::Authorizing;
            n.token = Some(valid());
            n.generation = 1;
            n.login_after_flow = false;
        }),
        vec![StartLogin],
    ));
    let wants_refresh = with(l, |n| n.refresh_after_load = true);
    rows.push((
        wants_refresh.clone(),
        Event::Loaded {
            generation: 0,
            token: Some(valid()),
        },
        with(&wants_refresh, |n| {
            n.phase = Phase::Refreshing;
            n.token = Some(valid());
            n.refresh_after_load = false;
        }),
        vec![refresh()],
    ));
    rows.push((
        l.clone(),
        Event::Loaded {
            generation: 7,
            token: Some(valid()),
        },
        l.clone(),
        vec![],
    ));
    rows.push((
        l.clone(),
        Event::LoadFailed {
            generation: 0,
            error: "db".into(),
        },
        with(l, |n| {
            n.phase = Phase::StoreUnavailable {
                attempt: 1,
                retry_at: NOW + 1_000,
                error: "db".into(),
            };
            n.store_failures = 1;
        }),
        vec![
            ArmTimer { at: NOW + 1_000 },
            failed(Failure::Store { error: "db".into() }),
        ],
    ));
    let second = with(l, |n| n.store_failures = 1);
    rows.push((
        second.clone(),
        Event::LoadFailed {
            generation: 0,
            error: "db".into(),
        },
        with(&second, |n| {
            n.phase = Phase::StoreUnavailable {
                attempt: 2,
                retry_at: NOW + 2_000,
                error: "db".into(),
            };
            n.store_failures = 2;
        }),
        vec![
            ArmTimer { at: NOW + 2_000 },
            failed(Failure::Store { error: "db".into() }),
        ],
    ));
    rows.extend(ignored(l, results(0).into_iter().skip(2).collect()));
    rows.push((
        l.clone(),
        Event::Logout,
        logged_out_state(l),
        logged_out_effects(true),
    ));

    // Connected
    let c = &s.connected;
    rows.push((
        c.clone(),
        Event::Reconnect,
        c.clone(),
        vec![ready(), arm_refresh(valid())],
    ));
    rows.push((c.clone(), Event::Login, login_started(c), vec![StartLogin]));
    rows.push((
        c.clone(),
        Event::Refresh,
        with(c, |n| n.phase = Phase::Refreshing),
        vec![refresh()],
    ));
    rows.push((
        c.clone(),
        Event::Unauthorized,
        with(c, |n| {
            n.phase = Phase::Refreshing;
            n.refresh_after_refusal = true;
            n.token = Some(TokenFacts {
                refused: true,
                ..valid()
            });
        }),
        vec![refresh()],
    ));
    let just_refreshed = State {
        refresh_after_refusal: true,
        ..st(Phase::Connected, Some(fresh()))
    };
    rows.push((
        just_refreshed.clone(),
        Event::Unauthorized,
        with(&just_refreshed, |n| {
            n.suspect_tokens = true;
            n.transient_failures = 1;
            n.failing_since = Some(NOW);
            n.token = Some(TokenFacts {
                refused: true,
                ..fresh()
            });
            n.phase = Phase::BackingOff {
                attempt: 1,
                retry_at: NOW + 1_000,
                last_error: "the server refused a token it had just issued".into(),
            };
        }),
        vec![
            ArmTimer { at: NOW + 1_000 },
            failed(Failure::BackingOff {
                retry_at: NOW + 1_000,
                last_error: "the server refused a token it had just issued".into(),
            }),
        ],
    ));
    let no_rt = st(Phase::Connected, Some(token(HOUR, false)));
    rows.push((
        no_rt.clone(),
        Event::Unauthorized,
        with(&no_rt, |n| {
            n.phase = Phase::Authorizing;
            n.generation = 1;
            n.refresh_after_refusal = true;
            n.token = Some(TokenFacts {
                refused: true,
                ..token(HOUR, false)
            });
        }),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::NoRefreshToken,
            },
            StartLogin,
        ],
    ));
    rows.push((
        no_rt.clone(),
        Event::Reconnect,
        no_rt.clone(),
        vec![
            ready(),
            ArmTimer {
                at: token(HOUR, false).unusable_at().unwrap(),
            },
        ],
    ));
    rows.extend(ignored(c, results(0)));
    rows.push((
        c.clone(),
        Event::Timer,
        with(c, |n| n.phase = Phase::Refreshing),
        vec![refresh()],
    ));
    // Without a refresh token the one timer fires when the token stops being usable.
    let no_rt_due = st(Phase::Connected, Some(token(1_000, false)));
    rows.push((
        no_rt_due.clone(),
        Event::Timer,
        with(&no_rt_due, |n| {
            n.phase = Phase::Authorizing;
            n.generation = 1;
        }),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::NoRefreshToken,
            },
            StartLogin,
        ],
    ));
    rows.push((
        c.clone(),
        Event::Logout,
        logged_out_state(c),
        logged_out_effects(false),
    ));
    rows.push((
        c.clone(),
        sc(),
        adopted(c, fresh()),
        vec![ready(), arm_refresh(fresh())],
    ));
    rows.push((
        c.clone(),
        Event::StoreChanged(None),
        logged_out_state(c),
        logged_out_effects(false),
    ));

    // Refreshing
    let r = &s.refreshing;
    rows.extend(ignored(
        r,
        vec![
            Event::Reconnect,
            Event::Refresh,
            Event::Unauthorized,
            Event::Timer,
            sc(),
        ],
    ));
    rows.push((
        r.clone(),
        Event::Login,
        with(r, |n| n.login_after_flow = true),
        vec![],
    ));
    rows.extend(ignored(
        r,
        vec![
            results(0)[0].clone(),
            results(0)[1].clone(),
            results(0)[4].clone(),
        ],
    ));
    rows.push((
        r.clone(),
        Event::TokenObtained {
            generation: 0,
            token: fresh(),
        },
        with(r, |n| {
            n.phase = Phase::Connected;
            n.token = Some(fresh());
        }),
        vec![ready(), arm_refresh(fresh())],
    ));
    rows.push((
        r.clone(),
        Event::TokenObtained {
            generation: 3,
            token: fresh(),
        },
        r.clone(),
        vec![],
    ));
    rows.push((
        r.clone(),
        Event::TokenObtained {
            generation: 0,
            token: expired(),
        },
        with(r, |n| {
            n.token = Some(expired());
            n.transient_failures = 1;
            n.failing_since = Some(NOW);
            n.phase = Phase::BackingOff {
                attempt: 1,
                retry_at: NOW + 1_000,
                last_error: "the server issued a token that is already expired".into(),
            };
        }),
        vec![
            ArmTimer { at: NOW + 1_000 },
            failed(Failure::BackingOff {
                retry_at: NOW + 1_000,
                last_error: "the server issued a token that is already expired".into(),
            }),
        ],
    ));
    let backing_off = |n: &mut State, attempt: u32, retry_at: Millis, error: &str| {
        n.transient_failures = attempt;
        n.failing_since = Some(NOW);
        n.phase = Phase::BackingOff {
            attempt,
            retry_at,
            last_error: error.into(),
        };
    };
    rows.push((
        r.clone(),
        refresh_failed(0, transient(None), "server_error"),
        with(r, |n| backing_off(n, 1, NOW + 1_000, "server_error")),
        vec![
            ArmTimer { at: NOW + 1_000 },
            failed(Failure::BackingOff {
                retry_at: NOW + 1_000,
                last_error: "server_error".into(),
            }),
        ],
    ));
    let r_valid = st(Phase::Refreshing, Some(valid()));
    rows.push((
        r_valid.clone(),
        refresh_failed(0, transient(Some(30_000)), "e"),
        with(&r_valid, |n| backing_off(n, 1, NOW + 30_000, "e")),
        vec![ArmTimer { at: NOW + 30_000 }, ready()],
    ));
    rows.push((
        r_valid.clone(),
        refresh_failed(0, transient(Some(10 * HOUR)), "e"),
        with(&r_valid, |n| backing_off(n, 1, NOW + HOUR, "e")),
        vec![ArmTimer { at: NOW + HOUR }, ready()],
    ));
    let ninth = State {
        transient_failures: 8,
        failing_since: Some(NOW - 500_000),
        ..r.clone()
    };
    rows.push((
        ninth.clone(),
        refresh_failed(0, transient(None), "e"),
        with(&ninth, |n| {
            n.transient_failures = 9;
            n.phase = Phase::Retrying {
                attempt: 9,
                retry_at: NOW + 300_000,
                until: NOW - 500_000 + 24 * HOUR,
                last_error: "e".into(),
            };
        }),
        vec![
            ArmTimer { at: NOW + 300_000 },
            failed(Failure::Retrying {
                retry_at: NOW + 300_000,
                until: NOW - 500_000 + 24 * HOUR,
                last_error: "e".into(),
            }),
        ],
    ));
    let past_ceiling = State {
        transient_failures: 40,
        failing_since: Some(NOW - 24 * HOUR),
        ..r.clone()
    };
    rows.push((
        past_ceiling.clone(),
        refresh_failed(0, transient(None), "e"),
        with(&past_ceiling, |n| {
            n.transient_failures = 41;
            n.phase = Phase::Authorizing;
            n.generation = 1;
        }),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::RetryCeiling { error: "e".into() },
            },
            StartLogin,
        ],
    ));
    let past_ceiling_quiet = State {
        policy: Policy {
            interactive: false,
            ..Policy::default()
        },
        ..past_ceiling.clone()
    };
    rows.push((
        past_ceiling_quiet.clone(),
        refresh_failed(0, transient(None), "e"),
        with(&past_ceiling_quiet, |n| {
            n.transient_failures = 41;
            n.phase = Phase::NeedsLogin {
                reason: LoginReason::RetryCeiling { error: "e".into() },
                browser_at: None,
                refresh_at: Some(NOW + 300_000),
            };
        }),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::RetryCeiling { error: "e".into() },
            },
            failed(Failure::NeedsLogin {
                reason: LoginReason::RetryCeiling { error: "e".into() },
            }),
            ArmTimer { at: NOW + 300_000 },
        ],
    ));
    let dead = || refresh_failed(0, RefreshFailure::RefreshTokenDead, "invalid_grant");
    rows.push((
        r.clone(),
        dead(),
        with(r, |n| {
            n.token = Some(token(-1_000, false));
            n.phase = Phase::Authorizing;
            n.generation = 1;
        }),
        vec![
            DropRefreshToken,
            AnnounceReauthentication {
                reason: LoginReason::RefreshTokenRejected {
                    error: "invalid_grant".into(),
                },
            },
            StartLogin,
        ],
    ));
    rows.push((
        r_valid.clone(),
        dead(),
        with(&r_valid, |n| {
            n.token = Some(token(HOUR, false));
            n.phase = Phase::Connected;
        }),
        vec![
            DropRefreshToken,
            ready(),
            ArmTimer {
                at: token(HOUR, false).unusable_at().unwrap(),
            },
        ],
    ));
    let client = |registered| {
        refresh_failed(
            0,
            RefreshFailure::ClientRejected { registered },
            "invalid_client",
        )
    };
    rows.push((
        r.clone(),
        client(true),
        with(r, |n| n.reregistered = true),
        vec![StartRefresh(RefreshPlan {
            reregister: true,
            omit_scope: false,
        })],
    ));
    let reregistered = State {
        reregistered: true,
        ..r.clone()
    };
    let rejected = |n: &mut State| {
        n.phase = Phase::ClientRejected {
            retry_at: NOW + 300_000,
            error: "invalid_client".into(),
        }
    };
    rows.push((
        reregistered.clone(),
        client(true),
        with(&reregistered, rejected),
        vec![
            ArmTimer { at: NOW + 300_000 },
            failed(Failure::ClientRejected {
                error: "invalid_client".into(),
            }),
        ],
    ));
    rows.push((
        r.clone(),
        client(false),
        with(r, rejected),
        vec![
            ArmTimer { at: NOW + 300_000 },
            failed(Failure::ClientRejected {
                error: "invalid_client".into(),
            }),
        ],
    ));
    rows.push((
        r_valid.clone(),
        client(false),
        with(&r_valid, rejected),
        vec![ArmTimer { at: NOW + 300_000 }, ready()],
    ));
    let scope = || refresh_failed(0, RefreshFailure::ScopeRejected, "invalid_scope");
    rows.push((
        r.clone(),
        scope(),
        with(r, |n| n.scope_omitted = true),
        vec![StartRefresh(RefreshPlan {
            reregister: false,
            omit_scope: true,
        })],
    ));
    let slow = |n: &mut State, error: &str| {
        n.transient_failures = 1;
        n.failing_since = Some(NOW);
        n.phase = Phase::Retrying {
            attempt: 1,
            retry_at: NOW + 300_000,
            until: NOW + 24 * HOUR,
            last_error: error.into(),
        };
    };
    let slow_failure = |error: &str| {
        failed(Failure::Retrying {
            retry_at: NOW + 300_000,
            until: NOW + 24 * HOUR,
            last_error: error.into(),
        })
    };
    let omitted = State {
        scope_omitted: true,
        ..r.clone()
    };
    rows.push((
        omitted.clone(),
        scope(),
        with(&omitted, |n| slow(n, "invalid_scope")),
        vec![
            ArmTimer { at: NOW + 300_000 },
            slow_failure("invalid_scope"),
        ],
    ));
    rows.push((
        r.clone(),
        refresh_failed(0, RefreshFailure::Unexplained, "HTTP 403"),
        with(r, |n| slow(n, "HTTP 403")),
        vec![ArmTimer { at: NOW + 300_000 }, slow_failure("HTTP 403")],
    ));
    rows.push((
        r.clone(),
        refresh_failed(0, RefreshFailure::TokenGone, "gone"),
        logged_out_state(r),
        logged_out_effects(true),
    ));
    rows.push((
        r.clone(),
        refresh_failed(2, RefreshFailure::RefreshTokenDead, "stale"),
        r.clone(),
        vec![],
    ));
    let r_login = State {
        login_after_flow: true,
        ..r.clone()
    };
    rows.push((
        r_login.clone(),
        refresh_failed(0, transient(None), "e"),
        with(&r_login, |n| {
            n.phase = Phase::Authorizing;
            n.generation = 1;
            n.login_after_flow = false;
        }),
        vec![StartLogin],
    ));
    rows.push((
        r_login.clone(),
        Event::TokenObtained {
            generation: 0,
            token: fresh(),
        },
        with(&r_login, |n| {
            n.phase = Phase::Authorizing;
            n.generation = 1;
            n.login_after_flow = false;
            n.token = Some(fresh());
        }),
        vec![StartLogin],
    ));
    rows.push((
        r.clone(),
        Event::Logout,
        logged_out_state(r),
        logged_out_effects(true),
    ));

    // Authorizing
    let a = &s.authorizing;
    rows.extend(ignored(
        a,
        vec![
            Event::Reconnect,
            Event::Refresh,
            Event::Unauthorized,
            Event::Login,
            Event::Timer,
            sc(),
        ],
    ));
    rows.extend(ignored(
        a,
        vec![
            results(1)[0].clone(),
            results(1)[1].clone(),
            results(1)[3].clone(),
        ],
    ));
    let a_failed = State {
        last_browser_failure: Some(NOW - 1_000),
        ..a.clone()
    };
    rows.push((
        a_failed.clone(),
        Event::TokenObtained {
            generation: 1,
            token: fresh(),
        },
        with(&a_failed, |n| {
            n.phase = Phase::Connected;
            n.token = Some(fresh());
            n.last_browser_failure = None;
        }),
        vec![ready(), arm_refresh(fresh())],
    ));
    let denied = LoginReason::LoginFailed {
        error: "access_denied".into(),
    };
    rows.push((
        a.clone(),
        Event::LoginFailed {
            generation: 1,
            error: "access_denied".into(),
        },
        with(a, |n| {
            n.last_browser_failure = Some(NOW);
            n.phase = Phase::NeedsLogin {
                reason: denied.clone(),
                browser_at: Some(NOW + 300_000),
                refresh_at: None,
            };
        }),
        vec![
            failed(Failure::LoginFailed {
                error: "access_denied".into(),
            }),
            AnnounceReauthentication {
                reason: denied.clone(),
            },
            failed(Failure::NeedsLogin {
                reason: denied.clone(),
            }),
            ArmTimer { at: NOW + 300_000 },
        ],
    ));
    let a_with_token = State {
        token: Some(valid()),
        ..a.clone()
    };
    rows.push((
        a_with_token.clone(),
        Event::LoginFailed {
            generation: 1,
            error: "access_denied".into(),
        },
        with(&a_with_token, |n| {
            n.last_browser_failure = Some(NOW);
            n.phase = Phase::Connected;
        }),
        vec![
            failed(Failure::LoginFailed {
                error: "access_denied".into(),
            }),
            ready(),
            arm_refresh(valid()),
        ],
    ));
    rows.push((
        a.clone(),
        Event::LoginFailed {
            generation: 0,
            error: "stale".into(),
        },
        a.clone(),
        vec![],
    ));
    rows.push((
        a.clone(),
        Event::Logout,
        logged_out_state(a),
        logged_out_effects(true),
    ));

    // NeedsLogin
    let n = &s.needs_login;
    rows.push((
        n.clone(),
        Event::Reconnect,
        with(n, |x| x.phase = Phase::Loading),
        vec![LoadToken],
    ));
    rows.push((
        n.clone(),
        Event::Unauthorized,
        with(n, |x| x.phase = Phase::Loading),
        vec![LoadToken],
    ));
    rows.push((n.clone(), Event::Login, login_started(n), vec![StartLogin]));
    rows.push((
        n.clone(),
        Event::Refresh,
        n.clone(),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::NoStoredToken,
            },
            failed(Failure::NeedsLogin {
                reason: LoginReason::NoStoredToken,
            }),
            ArmTimer { at: NOW + 60_000 },
        ],
    ));
    rows.extend(ignored(n, results(0)));
    rows.push((
        n.clone(),
        Event::Timer,
        n.clone(),
        vec![ArmTimer { at: NOW + 60_000 }],
    ));
    let window_over = with(n, |x| {
        x.phase = Phase::NeedsLogin {
            reason: LoginReason::NoStoredToken,
            browser_at: Some(NOW),
            refresh_at: None,
        }
    });
    rows.push((
        window_over.clone(),
        Event::Timer,
        login_started(&window_over),
        vec![
            AnnounceReauthentication {
                reason: LoginReason::NoStoredToken,
            },
            StartLogin,
        ],
    ));
    let kept_rt = State {
        token: Some(expired()),
        phase: Phase::NeedsLogin {
            reason: LoginReason::RetryCeiling { error: "e".into() },
            browser_at: None,
            refresh_at: Some(NOW),
        },
        ..n.clone()
    };
    rows.push((
        kept_rt.clone(),
        Event::Timer,
        with(&kept_rt, |x| x.phase = Phase::Refreshing),
        vec![refresh()],
    ));
    rows.push((
        n.clone(),
        Event::Logout,
        logged_out_state(n),
        logged_out_effects(false),
    ));
    rows.push((
        n.clone(),
        sc(),
        adopted(n, fresh()),
        vec![ready(), arm_refresh(fresh())],
    ));
    rows.push((n.clone(), Event::StoreChanged(None), n.clone(), vec![]));

    // BackingOff, Retrying, ClientRejected: the same rules, each explaining itself.
    let waiting = [
        (
            &s.backing_off,
            Failure::BackingOff {
                retry_at: NOW + 1_000,
                last_error: "e".into(),
            },
        ),
        (
            &s.retrying,
            Failure::Retrying {
                retry_at: NOW + 1_000,
                until: NOW + 10_000_000,
                last_error: "e".into(),
            },
        ),
        (
            &s.client_rejected,
            Failure::ClientRejected {
                error: "invalid_client".into(),
            },
        ),
    ];
    for (w, why) in waiting {
        rows.push((
            w.clone(),
            Event::Reconnect,
            w.clone(),
            vec![failed(why.clone())],
        ));
        rows.push((
            w.clone(),
            Event::Unauthorized,
            with(w, |x| {
                x.token = Some(TokenFacts {
                    refused: true,
                    ..expired()
                })
            }),
            vec![failed(why.clone())],
        ));
        rows.push((w.clone(), Event::Login, login_started(w), vec![StartLogin]));
        rows.push((
            w.clone(),
            Event::Refresh,
            with(w, |x| {
                x.phase = Phase::Refreshing;
                x.transient_failures = 0;
                x.failing_since = None;
            }),
            vec![refresh()],
        ));
        rows.extend(ignored(w, results(0)));
        rows.push((
            w.clone(),
            Event::Timer,
            with(w, |x| x.phase = Phase::Refreshing),
            vec![refresh()],
        ));
        rows.push((
            w.clone(),
            Event::Logout,
            logged_out_state(w),
            logged_out_effects(false),
        ));
        rows.push((
            w.clone(),
            sc(),
            adopted(w, fresh()),
            vec![ready(), arm_refresh(fresh())],
        ));
        rows.push((
            w.clone(),
            Event::StoreChanged(None),
            logged_out_state(w),
            logged_out_effects(false),
        ));
        let serving = with(w, |x| x.token = Some(valid()));
        rows.push((
            serving.clone(),
            Event::Reconnect,
            serving.clone(),
            vec![ready()],
        ));
    }

    // StoreUnavailable
    let u = &s.store_unavailable;
    for e in [Event::Reconnect, Event::Unauthorized, Event::Timer] {
        rows.push((
            u.clone(),
            e,
            with(u, |x| x.phase = Phase::Loading),
            vec![LoadToken],
        ));
    }
    rows.push((
        u.clone(),
        Event::Refresh,
        with(u, |x| {
            x.phase = Phase::Loading;
            x.refresh_after_load = true;
        }),
        vec![LoadToken],
    ));
    rows.push((u.clone(), Event::Login, login_started(u), vec![StartLogin]));
    rows.extend(ignored(u, results(0)));
    rows.push((
        u.clone(),
        Event::Logout,
        logged_out_state(u),
        logged_out_effects(false),
    ));
    rows.push((
        u.clone(),
        sc(),
        adopted(u, fresh()),
        vec![ready(), arm_refresh(fresh())],
    ));

    // LoggedOut
    let o = &s.logged_out;
    for e in [Event::Reconnect, Event::Unauthorized, Event::Refresh] {
        rows.push((o.clone(), e, o.clone(), vec![failed(Failure::LoggedOut)]));
    }
    rows.push((o.clone(), Event::Login, login_started(o), vec![StartLogin]));
    rows.extend(ignored(o, results(1)));
    rows.extend(ignored(o, vec![Event::Timer, Event::StoreChanged(None)]));
    rows.push((
        o.clone(),
        Event::Logout,
        logged_out_state(o),
        logged_out_effects(false),
    ));
    rows.push((
        o.clone(),
        sc(),
        adopted(o, fresh()),
        vec![ready(), arm_refresh(fresh())],
    ));

    rows.extend(step_up_rows(&s));
    rows
}

/// 403 `insufficient_scope` in every phase, the step-up budget, and a resource that moved to
/// another authorization server.
fn step_up_rows(s: &Samples) -> Vec<Row> {
    let more = || Event::InsufficientScope {
        scope: "read admin".into(),
    };
    let want = || LoginReason::InsufficientScope {
        scope: "read admin".into(),
    };
    let loading = |x: &State| with(x, |n| n.phase = Phase::Loading);
    let mut rows: Vec<Row> = vec![
        (s.idle.clone(), more(), loading(&s.idle), vec![LoadToken]),
        (
            s.needs_login.clone(),
            more(),
            loading(&s.needs_login),
            vec![LoadToken],
        ),
        (
            s.store_unavailable.clone(),
            more(),
            loading(&s.store_unavailable),
            vec![LoadToken],
        ),
        (
            s.logged_out.clone(),
            more(),
            s.logged_out.clone(),
            vec![failed(Failure::LoggedOut)],
        ),
        (
            s.backing_off.clone(),
            more(),
            s.backing_off.clone(),
            vec![failed(Failure::BackingOff {
                retry_at: NOW + 1_000,
                last_error: "e".into(),
            })],
        ),
        (
            s.retrying.clone(),
            more(),
            s.retrying.clone(),
            vec![failed(Failure::Retrying {
                retry_at: NOW + 1_000,
                until: NOW + 10_000_000,
                last_error: "e".into(),
            })],
        ),
        (
            s.client_rejected.clone(),
            more(),
            s.client_rejected.clone(),
            vec![failed(Failure::ClientRejected {
                error: "invalid_client".into(),
            })],
        ),
    ];
    // A running flow is joined.
    for x in [&s.loading, &s.refreshing, &s.authorizing] {
        rows.push((x.clone(), more(), x.clone(), vec![]));
    }
    // Connected: a login for the union, counted against the budget.
    let c = &s.connected;
    rows.push((
        c.clone(),
        more(),
        with(&login_started(c), |n| n.step_ups = 1),
        vec![AnnounceReauthentication { reason: want() }, StartLogin],
    ));
    // The budget spent: the caller hears why; the token keeps serving other calls.
    let spent = with(c, |n| n.step_ups = 2);
    let limit = LoginReason::StepUpLimit {
        scope: "read admin".into(),
        logins: 2,
    };
    rows.push((
        spent.clone(),
        more(),
        spent.clone(),
        vec![
            AnnounceReauthentication {
                reason: limit.clone(),
            },
            failed(Failure::NeedsLogin { reason: limit }),
        ],
    ));
    // A token that lives to its proactive refresh restores the budget.
    rows.push((
        spent.clone(),
        Event::Timer,
        with(c, |n| n.phase = Phase::Refreshing),
        vec![refresh()],
    ));
    // No browser by itself (a daemon): no login, the caller hears why.
    let headless = with(c, |n| n.policy.interactive = false);
    rows.push((
        headless.clone(),
        more(),
        headless.clone(),
        vec![
            AnnounceReauthentication { reason: want() },
            failed(Failure::NeedsLogin { reason: want() }),
        ],
    ));
    // The resource moved to another authorization server: log in there, not refresh here.
    let r = &s.refreshing;
    let moved = LoginReason::AuthorizationServerMoved {
        issuer: "http://127.0.0.1:2/".into(),
    };
    rows.push((
        r.clone(),
        refresh_failed(
            0,
            RefreshFailure::AuthorizationServerMoved {
                issuer: "http://127.0.0.1:2/".into(),
            },
            "moved",
        ),
        with(&login_started(r), |n| {
            let t = n.token.as_mut().unwrap();
            t.has_refresh_token = false;
            t.refused = true;
        }),
        vec![AnnounceReauthentication { reason: moved }, StartLogin],
    ));
    rows
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

#[test]
fn backoff_reaches_its_cap_then_retries_slowly_until_the_ceiling() {
    let mut s = st(Phase::Refreshing, Some(expired()));
    let mut now = NOW;
    let mut delays = Vec::new();
    loop {
        let (after, effects) = step(&s, refresh_failed(s.generation, transient(None), "e"), now);
        if !matches!(
            after.phase,
            Phase::BackingOff { .. } | Phase::Retrying { .. }
        ) {
            assert_eq!(
                after.phase.name(),
                "authorizing",
                "past the ceiling a login starts (interactive)"
            );
            break;
        }
        let Some(ArmTimer { at }) = effects.first() else {
            panic!("{effects:?}")
        };
        delays.push(at - now);
        now = *at;
        s = step(&after, Event::Timer, now).0;
        assert_eq!(s.phase.name(), "refreshing");
        assert!(delays.len() < 400, "bounded: {delays:?}");
    }
    assert_eq!(
        delays[..9],
        [
            1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 120_000, 300_000
        ],
        "exponential up to the cap (2 min, jittered) in 8 attempts, then every 5 min"
    );
    let total: Millis = delays.iter().sum();
    assert!(
        (24 * HOUR..=24 * HOUR + 300_000).contains(&total),
        "the ceiling is 24 h after the first failure: {total}"
    );
}

// ---- Property tests: random sequences of events and times against a model of the actor.

use proptest::prelude::*;

/// What the actor would be doing: the one load or flow in flight, and its generation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Load(u64),
    Refresh(u64),
    Login(u64),
}

#[derive(Debug, Clone)]
enum Action {
    Caller(u8),
    Advance(Millis),
    Complete(u8, Millis),
    /// Deliver the result of an op that was cancelled (a late, stale result).
    Stale(u8),
    StoreChanged(bool, Millis),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0u8..6).prop_map(Action::Caller),
        (1i64..3 * HOUR).prop_map(Action::Advance),
        (0u8..13, 1i64..2 * HOUR).prop_map(|(k, l)| Action::Complete(k, l)),
        (0u8..3).prop_map(Action::Stale),
        (any::<bool>(), 1i64..2 * HOUR).prop_map(|(b, l)| Action::StoreChanged(b, l)),
    ]
}

struct World {
    state: State,
    now: Millis,
    timer: Option<Millis>,
    op: Option<Op>,
    cancelled: Vec<Op>,
    waiters: u32,
    events: u32,
}

fn issued(now: Millis, lifetime: Millis, rt: bool) -> TokenFacts {
    TokenFacts {
        obtained_at: now,
        expires_at: Some(now + lifetime),
        has_refresh_token: rt,
        refused: false,
    }
}

impl World {
    fn new(policy: Policy, jitter: f64) -> Self {
        World {
            state: State::new(policy, jitter),
            now: NOW,
            timer: None,
            op: None,
            cancelled: Vec::new(),
            waiters: 0,
            events: 0,
        }
    }

    /// Feeds one event and checks every invariant on the step.
    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        self.events += 1;
        let before = self.state.clone();
        let drop_allowed = matches!(
            (&before.phase, &event),
            (Phase::Refreshing, Event::RefreshFailed { generation, failure: RefreshFailure::RefreshTokenDead, .. })
                if *generation == before.generation
        );
        // A resource that moved to another authorization server makes the machine stop using
        // the refresh token (in memory only: the stored row keeps it; no effect drops it).
        let unused_allowed = drop_allowed
            || matches!(
                (&before.phase, &event),
                (Phase::Refreshing, Event::RefreshFailed { generation, failure: RefreshFailure::AuthorizationServerMoved { .. }, .. })
                    if *generation == before.generation
            );
        let (next, effects) = step(&self.state, event.clone(), self.now);
        for effect in &effects {
            match effect {
                ArmTimer { at } => {
                    prop_assert!(
                        *at > self.now,
                        "timer at {at} armed at now {} by {event:?} in {:?}",
                        self.now,
                        before.phase
                    );
                    self.timer = Some(*at);
                }
                CancelTimer => self.timer = None,
                DropRefreshToken => {
                    prop_assert!(
                        drop_allowed,
                        "refresh token dropped on {event:?} in {:?}",
                        before.phase
                    )
                }
                ResolveWaiters(_) => self.waiters = 0,
                CancelFlow => {
                    if let Some(op) = self.op.take() {
                        self.cancelled.push(op);
                    }
                }
                LoadToken | StartRefresh(_) | StartLogin => {
                    prop_assert!(
                        self.op.is_none(),
                        "a second flow started ({effect:?} while {:?}) on {event:?}",
                        self.op
                    );
                    let g = next.generation;
                    self.op = Some(match effect {
                        LoadToken => Op::Load(g),
                        StartLogin => Op::Login(g),
                        _ => Op::Refresh(g),
                    });
                }
                ForgetToken | AnnounceReauthentication { .. } => {}
            }
        }
        prop_assert_eq!(
            next.phase.flow_running(),
            self.op.is_some(),
            "phase {:?} vs op {:?} after {:?}",
            &next.phase,
            self.op,
            &event
        );
        if !next.phase.flow_running() {
            prop_assert_eq!(
                self.waiters,
                0,
                "waiters left unanswered in {:?}",
                &next.phase
            );
        }
        let brings_a_token = matches!(
            event,
            Event::TokenObtained { .. } | Event::Loaded { .. } | Event::StoreChanged(_)
        );
        if let Some(t) = next.token
            && !brings_a_token
            && before.token.is_some_and(|b| b.has_refresh_token)
            && !t.has_refresh_token
        {
            prop_assert!(unused_allowed, "the refresh token vanished on {event:?}");
        }
        self.state = next;
        Ok(())
    }

    fn caller(&mut self, kind: u8) -> Result<(), TestCaseError> {
        let event = match kind {
            0 => Event::Reconnect,
            1 => Event::Login,
            2 => Event::Refresh,
            3 => Event::Unauthorized,
            4 => Event::InsufficientScope {
                scope: "read admin".into(),
            },
            _ => Event::Logout,
        };
        if event != Event::Logout {
            self.waiters += 1;
        }
        self.feed(event)
    }

    fn advance(&mut self, by: Millis) -> Result<(), TestCaseError> {
        match self.timer {
            Some(at) if at <= self.now + by => {
                self.now = at;
                self.timer = None;
                self.feed(Event::Timer)
            }
            _ => {
                self.now += by;
                Ok(())
            }
        }
    }

    /// Completes the op in flight with outcome `kind` (`lifetime` for issued tokens).
    fn complete(&mut self, kind: u8, lifetime: Millis) -> Result<(), TestCaseError> {
        let Some(op) = self.op.take() else {
            return Ok(());
        };
        let event = result_of(op, kind, lifetime, self.now);
        self.feed(event)
    }

    fn stale(&mut self, kind: u8) -> Result<(), TestCaseError> {
        let Some(op) = self.cancelled.pop() else {
            return Ok(());
        };
        let before = self.state.clone();
        let (next, effects) = step(&self.state, result_of(op, kind, HOUR, self.now), self.now);
        prop_assert_eq!(&next, &before, "a stale result changed the state");
        prop_assert!(
            effects.is_empty(),
            "a stale result had effects: {:?}",
            effects
        );
        Ok(())
    }
}

fn result_of(op: Op, kind: u8, lifetime: Millis, now: Millis) -> Event {
    match op {
        Op::Load(generation) => match kind % 4 {
            0 => Event::Loaded {
                generation,
                token: Some(issued(now - 1, lifetime, true)),
            },
            1 => Event::Loaded {
                generation,
                token: Some(issued(now - 2 * lifetime, lifetime, kind % 8 < 4)),
            },
            2 => Event::Loaded {
                generation,
                token: None,
            },
            _ => Event::LoadFailed {
                generation,
                error: "db".into(),
            },
        },
        Op::Login(generation) => match kind % 3 {
            0 => Event::LoginFailed {
                generation,
                error: "timeout".into(),
            },
            _ => Event::TokenObtained {
                generation,
                token: issued(now, lifetime, kind.is_multiple_of(2)),
            },
        },
        Op::Refresh(generation) => {
            let failure = match kind {
                0 | 1 => None,
                2 => Some(RefreshFailure::Transient { retry_after: None }),
                3 => Some(RefreshFailure::Transient {
                    retry_after: Some(lifetime * 3),
                }),
                4 => Some(RefreshFailure::Unexplained),
                5 => Some(RefreshFailure::RefreshTokenDead),
                6 => Some(RefreshFailure::ClientRejected { registered: true }),
                7 => Some(RefreshFailure::ClientRejected { registered: false }),
                8 => Some(RefreshFailure::ScopeRejected),
                9 => Some(RefreshFailure::TokenGone),
                11 => Some(RefreshFailure::AuthorizationServerMoved {
                    issuer: "http://127.0.0.1:2/".into(),
                }),
                10 => {
                    return Event::TokenObtained {
                        generation,
                        token: issued(now - lifetime - 1, lifetime, true),
                    };
                }
                _ => Some(RefreshFailure::Transient {
                    retry_after: Some(1),
                }),
            };
            match failure {
                None => Event::TokenObtained {
                    generation,
                    token: issued(now, lifetime, true),
                },
                Some(failure) => Event::RefreshFailed {
                    generation,
                    failure,
                    error: "e".into(),
                },
            }
        }
    }
}

fn run(world: &mut World, actions: &[Action]) -> Result<(), TestCaseError> {
    for a in actions {
        match a {
            Action::Caller(k) => world.caller(*k)?,
            Action::Advance(by) => world.advance(*by)?,
            Action::Complete(k, l) => world.complete(*k, *l)?,
            Action::Stale(k) => world.stale(*k)?,
            Action::StoreChanged(present, l) => {
                let t = present.then(|| issued(world.now, *l, true));
                world.feed(Event::StoreChanged(t))?
            }
        }
    }
    Ok(())
}

fn policy(interactive: bool) -> Policy {
    Policy {
        interactive,
        ..Policy::default()
    }
}

proptest! {
    // A fixed seed: the same 400 sequences every run, so a failure reproduces (and CI is
    // deterministic); change the seed locally to explore more.
    #![proptest_config(ProptestConfig {
        cases: 400,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d63_7078),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No timer in the past, refresh tokens dropped only after invalid_grant, every waiter
    /// answered, one flow at a time, stale results ignored; then, with a healthy server,
    /// connected within a bounded number of events.
    #[test]
    fn any_sequence_keeps_the_invariants_and_recovers(
        actions in proptest::collection::vec(action(), 0..60),
        interactive in any::<bool>(),
        jitter in 0.0f64..1.0,
    ) {
        let mut world = World::new(policy(interactive), jitter);
        run(&mut world, &actions)?;
        // A healthy authorization server: every load finds a valid token (someone logged
        // in), every flow succeeds. A person logs in where only a login can help.
        for _ in 0..30 {
            if world.state.phase == Phase::Connected && world.op.is_none() {
                return Ok(());
            }
            if let Some(op) = world.op.take() {
                let event = match op {
                    Op::Load(generation) => Event::Loaded { generation, token: Some(issued(world.now, HOUR, true)) },
                    Op::Refresh(generation) | Op::Login(generation) => Event::TokenObtained { generation, token: issued(world.now, HOUR, true) },
                };
                world.feed(event)?;
            } else if let Some(at) = world.timer {
                world.now = at.max(world.now);
                world.timer = None;
                world.feed(Event::Timer)?;
            } else if matches!(world.state.phase, Phase::LoggedOut | Phase::NeedsLogin { browser_at: None, refresh_at: None, .. }) {
                world.caller(1)?;
            } else {
                world.caller(0)?;
            }
        }
        prop_assert!(false, "not connected within 30 events; stuck in {:?}", world.state.phase);
    }

    /// With an authorization server that keeps failing in every way, the machine acts by
    /// itself a bounded number of times per hour (no spinning, no storm).
    #[test]
    fn a_failing_server_costs_a_bounded_number_of_events_per_hour(
        kinds in proptest::collection::vec(0u8..12, 1..200),
        interactive in any::<bool>(),
        jitter in 0.0f64..1.0,
        start in 0u8..5,
    ) {
        let mut world = World::new(policy(interactive), jitter);
        world.caller(start)?;
        let end = world.now + HOUR;
        let mut kinds = kinds.into_iter().cycle();
        while world.now < end && world.events < 10_000 {
            if world.op.is_some() {
                // Failures, or tokens that live at least a minute.
                let kind = kinds.next().unwrap_or(2);
                world.complete(kind, 60_000)?;
            } else if let Some(at) = world.timer {
                world.now = at;
                world.timer = None;
                world.feed(Event::Timer)?;
            } else {
                break;
            }
        }
        // Tokens live at least a minute, so a new token is refreshed at most every 45 s; a
        // cycle costs at most its timer, one re-registration, one retry without scope, one
        // backed-off retry (its timer and result) and the success: 8 events, 640 an hour at
        // worst. Spinning would be thousands.
        prop_assert!(world.events <= 640, "{} events in one simulated hour", world.events);
    }
}
