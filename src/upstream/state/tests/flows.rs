//! Refreshing and Authorizing: what the flows' results lead to (the recovery ladder).

use super::*;

fn backing_off(n: &mut State, attempt: u32, retry_at: Millis, error: &str) {
    n.transient_failures = attempt;
    n.failing_since = Some(NOW);
    n.phase = Phase::BackingOff {
        attempt,
        retry_at,
        last_error: error.into(),
    };
}

fn slow(n: &mut State, error: &str) {
    n.transient_failures = 1;
    n.failing_since = Some(NOW);
    n.phase = Phase::Retrying {
        attempt: 1,
        retry_at: NOW + 300_000,
        until: NOW + 24 * HOUR,
        last_error: error.into(),
    };
}

fn slow_failure(error: &str) -> Effect {
    failed(Failure::Retrying {
        retry_at: NOW + 300_000,
        until: NOW + 24 * HOUR,
        last_error: error.into(),
    })
}

fn login_after(s: &State, reason: Option<LoginReason>) -> (State, Vec<Effect>) {
    let after = login_started(s);
    let mut fx: Vec<Effect> = reason
        .map(|reason| AnnounceReauthentication { reason })
        .into_iter()
        .collect();
    fx.push(login_of(&after));
    (after, fx)
}

pub(super) fn rows(s: &Samples) -> Vec<Row> {
    [refreshing(s), refresh_failures(s), authorizing(s)].concat()
}

fn refreshing(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let r = &s.refreshing;
    rows.extend(ignored(
        r,
        vec![
            Event::Reconnect,
            Event::Refresh,
            Event::Due(Timer::Refresh),
            sc(),
        ],
    ));
    // A refusal while the refresh runs: the caller joins it, and the token is not trusted.
    rows.push((r.clone(), refused_now(), with_refused(r, expired()), vec![]));
    rows.push((
        r.clone(),
        Event::Login,
        with(r, |n| n.login_after_flow = true),
        vec![],
    ));
    let all = results(0);
    rows.extend(ignored(
        r,
        vec![
            all[0].clone(),
            all[1].clone(),
            all[4].clone(),
            all[6].clone(),
        ],
    ));
    rows.push((
        r.clone(),
        obtained(0, fresh()),
        connected_to(r, fresh()),
        vec![ready()],
    ));
    rows.push((r.clone(), obtained(3, fresh()), r.clone(), vec![]));
    let error = "the server issued a token that is already expired";
    rows.push((
        r.clone(),
        obtained(0, expired()),
        with(r, |n| backing_off(n, 1, NOW + 1_000, error)),
        vec![failed(Failure::BackingOff {
            retry_at: NOW + 1_000,
            last_error: error.into(),
        })],
    ));
    // Another process refreshed meanwhile: its token is used if it works, refreshed if not.
    rows.push((
        r.clone(),
        Event::StoreAhead {
            generation: 0,
            token: fresh(),
        },
        connected_to(r, fresh()),
        vec![ready()],
    ));
    let stale_elsewhere = TokenFacts {
        id: id(3),
        ..expired()
    };
    rows.push((
        r.clone(),
        Event::StoreAhead {
            generation: 0,
            token: stale_elsewhere,
        },
        with(r, |n| n.token = Some(stale_elsewhere)),
        vec![refresh()],
    ));
    let r_login = State {
        login_after_flow: true,
        ..r.clone()
    };
    let (after, fx) = login_after(&r_login, None);
    rows.push((
        r_login.clone(),
        refresh_failed(0, transient(None), "e"),
        after,
        fx,
    ));
    let (after, fx) = login_after(&with(&r_login, |n| n.token = Some(fresh())), None);
    rows.push((r_login.clone(), obtained(0, fresh()), after, fx));
    rows.push((
        r.clone(),
        Event::Logout,
        logged_out_state(r),
        logged_out_effects(true, true),
    ));
    rows
}

fn refresh_failures(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let r = &s.refreshing;
    rows.push((
        r.clone(),
        refresh_failed(0, transient(None), "server_error"),
        with(r, |n| backing_off(n, 1, NOW + 1_000, "server_error")),
        vec![failed(Failure::BackingOff {
            retry_at: NOW + 1_000,
            last_error: "server_error".into(),
        })],
    ));
    let r_valid = st(Phase::Refreshing, Some(valid()));
    rows.push((
        r_valid.clone(),
        refresh_failed(0, transient(Some(30_000)), "e"),
        with(&r_valid, |n| backing_off(n, 1, NOW + 30_000, "e")),
        vec![ready()],
    ));
    rows.push((
        r_valid.clone(),
        refresh_failed(0, transient(Some(10 * HOUR)), "e"),
        with(&r_valid, |n| backing_off(n, 1, NOW + HOUR, "e")),
        vec![ready()],
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
        vec![failed(Failure::Retrying {
            retry_at: NOW + 300_000,
            until: NOW - 500_000 + 24 * HOUR,
            last_error: "e".into(),
        })],
    ));
    let past_ceiling = State {
        transient_failures: 40,
        failing_since: Some(NOW - 24 * HOUR),
        ..r.clone()
    };
    let ceiling = LoginReason::RetryCeiling { error: "e".into() };
    let (after, fx) = login_after(
        &with(&past_ceiling, |n| n.transient_failures = 41),
        Some(ceiling.clone()),
    );
    rows.push((
        past_ceiling.clone(),
        refresh_failed(0, transient(None), "e"),
        after,
        fx,
    ));
    let past_ceiling_quiet = with(&past_ceiling, |n| n.policy.interactive = false);
    rows.push((
        past_ceiling_quiet.clone(),
        refresh_failed(0, transient(None), "e"),
        with(&past_ceiling_quiet, |n| {
            n.transient_failures = 41;
            n.phase = Phase::NeedsLogin {
                reason: ceiling.clone(),
                browser_at: None,
                refresh_at: Some(NOW + 300_000),
            };
        }),
        vec![
            AnnounceReauthentication {
                reason: ceiling.clone(),
            },
            failed(Failure::NeedsLogin { reason: ceiling }),
        ],
    ));
    let rejected = LoginReason::RefreshTokenRejected {
        error: "invalid_grant".into(),
    };
    for dead in [
        RefreshFailure::RefreshTokenDead,
        RefreshFailure::DpopKeyUnusable,
    ] {
        let (after, mut fx) = login_after(
            &with(r, |n| n.token = Some(token(-1_000, false))),
            Some(rejected.clone()),
        );
        fx.insert(0, DropRefreshToken);
        rows.push((
            r.clone(),
            refresh_failed(0, dead.clone(), "invalid_grant"),
            after,
            fx,
        ));
        rows.push((
            r_valid.clone(),
            refresh_failed(0, dead, "invalid_grant"),
            connected_to(&r_valid, token(HOUR, false)),
            vec![DropRefreshToken, ready()],
        ));
    }
    // No refresh token after all: nothing to drop; a login where the token does not serve.
    let (after, fx) = login_after(
        &with(r, |n| n.token = Some(token(-1_000, false))),
        Some(LoginReason::NoRefreshToken),
    );
    rows.push((
        r.clone(),
        refresh_failed(0, RefreshFailure::NoRefreshToken, "no refresh token"),
        after,
        fx,
    ));
    let client = |registered| {
        refresh_failed(
            0,
            RefreshFailure::ClientRejected { registered },
            "invalid_client",
        )
    };
    let reregister = refresh_with(RefreshPlan {
        reregister: true,
        ..RefreshPlan::default()
    });
    rows.push((
        r.clone(),
        client(true),
        with(r, |n| n.reregistered = true),
        vec![reregister.clone()],
    ));
    // No client known: one registration, as for a rejected one.
    rows.push((
        r.clone(),
        refresh_failed(0, RefreshFailure::NoClient, "no client"),
        with(r, |n| n.reregistered = true),
        vec![reregister],
    ));
    // Where nothing is registered again (`connect`): a login with a new client instead.
    let no_reregistering = with(r, |n| n.policy.reregister = false);
    let why = LoginReason::ClientRejected {
        error: "invalid_client".into(),
    };
    let (after, fx) = login_after(
        &with(&no_reregistering, |n| {
            n.reregistered = true;
            n.fresh_client = true;
        }),
        Some(why),
    );
    rows.push((no_reregistering, client(true), after, fx));
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
    let client_failure = failed(Failure::ClientRejected {
        error: "invalid_client".into(),
    });
    rows.push((
        reregistered.clone(),
        client(true),
        with(&reregistered, rejected),
        vec![client_failure.clone()],
    ));
    rows.push((
        r.clone(),
        client(false),
        with(r, rejected),
        vec![client_failure],
    ));
    rows.push((
        r_valid.clone(),
        client(false),
        with(&r_valid, rejected),
        vec![ready()],
    ));
    let scope = || refresh_failed(0, RefreshFailure::ScopeRejected, "invalid_scope");
    rows.push((
        r.clone(),
        scope(),
        with(r, |n| n.scope_omitted = true),
        vec![refresh_with(RefreshPlan {
            omit_scope: true,
            ..RefreshPlan::default()
        })],
    ));
    let omitted = State {
        scope_omitted: true,
        ..r.clone()
    };
    rows.push((
        omitted.clone(),
        scope(),
        with(&omitted, |n| slow(n, "invalid_scope")),
        vec![slow_failure("invalid_scope")],
    ));
    rows.push((
        r.clone(),
        refresh_failed(0, RefreshFailure::Unexplained, "HTTP 403"),
        with(r, |n| slow(n, "HTTP 403")),
        vec![slow_failure("HTTP 403")],
    ));
    rows.push((
        r.clone(),
        refresh_failed(0, RefreshFailure::TokenGone, "gone"),
        logged_out_state(r),
        logged_out_effects(true, false),
    ));
    rows.push((
        r.clone(),
        refresh_failed(2, RefreshFailure::RefreshTokenDead, "stale"),
        r.clone(),
        vec![],
    ));
    rows
}

fn authorizing(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let a = &s.authorizing;
    rows.extend(ignored(
        a,
        vec![
            Event::Reconnect,
            Event::Refresh,
            refused_now(),
            Event::Login,
            Event::Due(Timer::Browser),
            sc(),
        ],
    ));
    let all = results(1);
    rows.extend(ignored(
        a,
        vec![all[0].clone(), all[1].clone(), all[3].clone()],
    ));
    // A login's token: the browser window, the fresh-client wish and the step-up scope end.
    let a_failed = State {
        last_browser_failure: Some(NOW - 1_000),
        fresh_client: true,
        step_up_scope: Some("read admin".into()),
        ..a.clone()
    };
    let done = with(&connected_to(&a_failed, fresh()), |n| {
        n.last_browser_failure = None;
        n.fresh_client = false;
        n.step_up_scope = None;
    });
    rows.push((
        a_failed.clone(),
        obtained(1, fresh()),
        done.clone(),
        vec![ready()],
    ));
    // Another process logged in meanwhile: its token is this login's answer.
    let ahead = |token| Event::StoreAhead {
        generation: 1,
        token,
    };
    rows.push((a_failed.clone(), ahead(fresh()), done, vec![ready()]));
    // ... unless it is of no use: the login goes on, without looking again.
    let after = with(a, |n| {
        n.token = Some(expired());
        n.generation = 2;
    });
    let again = StartLogin(LoginPlan {
        adopt: false,
        ..match login_of(&after) {
            StartLogin(plan) => plan,
            other => unreachable!("{other:?}"),
        }
    });
    rows.push((a.clone(), ahead(expired()), after, vec![again]));
    let denied = LoginReason::LoginFailed {
        error: "access_denied".into(),
    };
    let waiting = |x: &State| {
        with(x, |n| {
            n.last_browser_failure = Some(NOW);
            n.phase = Phase::NeedsLogin {
                reason: denied.clone(),
                browser_at: Some(NOW + 300_000),
                refresh_at: None,
            };
        })
    };
    let login_failure = failed(Failure::LoginFailed {
        error: "access_denied".into(),
    });
    let effects = vec![
        login_failure.clone(),
        AnnounceReauthentication {
            reason: denied.clone(),
        },
        failed(Failure::NeedsLogin {
            reason: denied.clone(),
        }),
    ];
    rows.push((
        a.clone(),
        login_failed(1, "access_denied"),
        waiting(a),
        effects.clone(),
    ));
    // With a dynamically registered client, the next login registers a new one.
    rows.push((
        a.clone(),
        Event::LoginFailed {
            generation: 1,
            error: "access_denied".into(),
            dynamic_client: true,
        },
        with(&waiting(a), |n| n.fresh_client = true),
        effects,
    ));
    let a_with_token = State {
        token: Some(valid()),
        ..a.clone()
    };
    rows.push((
        a_with_token.clone(),
        login_failed(1, "access_denied"),
        with(&connected_to(&a_with_token, valid()), |n| {
            n.last_browser_failure = Some(NOW)
        }),
        vec![login_failure, ready()],
    ));
    rows.push((a.clone(), login_failed(0, "stale"), a.clone(), vec![]));
    rows.extend(unreachable_rows(a));
    rows.push((
        a.clone(),
        Event::Logout,
        logged_out_state(a),
        logged_out_effects(true, true),
    ));
    rows
}

/// A login that failed before any browser opened: no browser launch spent (no window), the
/// backoff ladder instead, never sooner than the server's Retry-After; whoever waits hears
/// the login failed; a stale one is ignored.
fn unreachable_rows(a: &State) -> Vec<Row> {
    let error = "registration answered 503";
    let backing = |x: &State, retry_at: Millis| {
        with(x, |n| {
            n.transient_failures = 1;
            n.phase = Phase::BackingOff {
                attempt: 1,
                retry_at,
                last_error: error.into(),
            };
        })
    };
    let waits = failed(Failure::LoginFailed {
        error: error.into(),
    });
    let with_token = State {
        token: Some(valid()),
        ..a.clone()
    };
    vec![
        (
            a.clone(),
            unreachable_login(1, None),
            backing(a, NOW + 1_000),
            vec![waits.clone()],
        ),
        (
            a.clone(),
            unreachable_login(1, Some(30_000)),
            backing(a, NOW + 30_000),
            vec![waits.clone()],
        ),
        (
            with_token.clone(),
            unreachable_login(1, None),
            backing(&with_token, NOW + 1_000),
            vec![waits.clone()],
        ),
        (a.clone(), unreachable_login(0, None), a.clone(), vec![]),
    ]
}

/// Logins failing before the browser, again and again: each is retried by itself, sooner
/// than a browser window, with delays doubling to the cap; the browser window never starts,
/// and once the server answers the login completes.
#[test]
fn a_login_failing_before_the_browser_retries_itself_on_the_backoff_ladder() {
    let mut s = samples().authorizing;
    let mut now = NOW;
    let mut delays = Vec::new();
    for _ in 0..20 {
        let (after, _) = step(&s, unreachable_login(s.generation, None), now);
        assert_eq!(after.last_browser_failure, None, "no browser launch spent");
        let deadline = after.deadline().expect("a retry is due");
        assert_eq!(deadline.timer, Timer::Retry);
        assert!(deadline.at > now, "never in the past");
        delays.push(deadline.at - now);
        now = deadline.at;
        let (again, effects) = step(&after, Event::Due(Timer::Retry), now);
        assert_eq!(again.phase, Phase::Authorizing, "retried by itself");
        assert!(matches!(effects.last(), Some(StartLogin(_))), "{effects:?}");
        s = again;
    }
    let policy = Policy::default();
    assert_eq!(delays[0], policy.backoff_base);
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert_eq!(*delays.last().unwrap(), policy.backoff_cap);
    assert!(policy.backoff_cap < policy.browser_window);
    let (done, effects) = step(&s, obtained(s.generation, fresh()), now);
    assert_eq!(done.phase, Phase::Connected);
    assert_eq!(done.transient_failures, 0);
    assert_eq!(effects, vec![ready()]);
}

/// The whole ladder of transient failures: exponential to the cap, then slow, until the
/// ceiling, then a login.
#[test]
fn backoff_reaches_its_cap_then_retries_slowly_until_the_ceiling() {
    let mut s = st(Phase::Refreshing, Some(expired()));
    let mut now = NOW;
    let mut delays = Vec::new();
    loop {
        let (after, _) = step(&s, refresh_failed(s.generation, transient(None), "e"), now);
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
        let deadline = after.deadline().expect("a retry is due");
        assert_eq!(deadline.timer, Timer::Retry);
        delays.push(deadline.at - now);
        now = deadline.at;
        s = step(&after, Event::Due(Timer::Retry), now).0;
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
