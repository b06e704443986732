//! Reports about a token in every phase: a 403 `insufficient_scope` (the step-up and its
//! budget), any other 403, a report about a token already replaced, and a resource that
//! moved to another authorization server.

use super::*;

fn scoped(s: &State) -> State {
    with(s, |n| n.step_up_scope = Some("read admin".into()))
}

pub(super) fn rows(s: &Samples) -> Vec<Row> {
    [insufficient_scope(s), answered_alone(s), moved(s)].concat()
}

fn insufficient_scope(s: &Samples) -> Vec<Row> {
    let want = || LoginReason::InsufficientScope {
        scope: "read admin".into(),
    };
    let loading = |x: &State| with(&scoped(x), |n| n.phase = Phase::Loading);
    // Without a token in hand: load it first; the next login asks for the union.
    let mut rows: Vec<Row> = [&s.idle, &s.needs_login, &s.store_unavailable]
        .into_iter()
        .map(|x| (x.clone(), more_scope(), loading(x), vec![LoadToken]))
        .collect();
    // Logged out, or waiting to try again: the caller hears why; the next login asks for the
    // union.
    let refused = std::iter::once((&s.logged_out, Failure::LoggedOut)).chain(s.waiting());
    for (x, why) in refused {
        rows.push((x.clone(), more_scope(), scoped(x), vec![failed(why)]));
    }
    // A running flow is joined; the next login asks for the union.
    for x in [&s.loading, &s.refreshing, &s.authorizing] {
        rows.push((x.clone(), more_scope(), scoped(x), vec![]));
    }
    // Connected: a login for the union, counted against the budget.
    let c = &s.connected;
    let after = with(&login_started(&scoped(c)), |n| n.step_ups = 1);
    rows.push((
        c.clone(),
        more_scope(),
        after.clone(),
        vec![
            AnnounceReauthentication { reason: want() },
            login_of(&after),
        ],
    ));
    // The budget spent: the caller hears why; the token keeps serving other calls.
    let spent = with(c, |n| n.step_ups = 2);
    let limit = LoginReason::StepUpLimit {
        scope: "read admin".into(),
        logins: 2,
    };
    rows.push((
        spent.clone(),
        more_scope(),
        scoped(&spent),
        vec![
            AnnounceReauthentication {
                reason: limit.clone(),
            },
            failed(Failure::NeedsLogin { reason: limit }),
        ],
    ));
    // No browser by itself (a daemon): no login, the caller hears why.
    let headless = with(c, |n| n.policy.interactive = false);
    rows.push((
        headless.clone(),
        more_scope(),
        scoped(&headless),
        vec![
            AnnounceReauthentication { reason: want() },
            failed(Failure::NeedsLogin { reason: want() }),
        ],
    ));
    rows
}

/// Reports the machine answers at once, to their caller alone: nothing changes.
fn answered_alone(s: &Samples) -> Vec<Row> {
    let c = &s.connected;
    let alone = |r| vec![AnswerCaller(r)];
    let not_scope = Event::Forbidden {
        token: None,
        insufficient_scope: false,
        granted: Some("read".into()),
        demanded: None,
    };
    let granted = Event::Forbidden {
        token: None,
        insufficient_scope: true,
        granted: Some("read admin".into()),
        demanded: Some("admin".into()),
    };
    let mut rows: Vec<Row> = vec![
        (
            c.clone(),
            not_scope,
            c.clone(),
            alone(Resolution::Failed(Failure::Forbidden {
                error:
                    "the server answered 403 without insufficient_scope: more scope would not help"
                        .into(),
            })),
        ),
        (
            c.clone(),
            granted,
            c.clone(),
            alone(Resolution::Failed(Failure::scope_already_granted(Some(
                "read admin",
            )))),
        ),
    ];
    // About a token already replaced: the newer one is the answer, in any phase.
    let older = Some(id(9));
    let newer = [c.clone(), st(Phase::Refreshing, Some(valid()))];
    for x in newer {
        rows.push((
            x.clone(),
            Event::Refused { token: older },
            x.clone(),
            alone(Resolution::Ready),
        ));
        let forbidden = Event::Forbidden {
            token: older,
            insufficient_scope: true,
            granted: None,
            demanded: Some("admin".into()),
        };
        rows.push((x.clone(), forbidden, x.clone(), alone(Resolution::Ready)));
    }
    // About the current token, named: it is refused (and not trusted when read back).
    let (after, fx) = refused_and_refreshing(c);
    rows.push((c.clone(), Event::Refused { token: Some(id(1)) }, after, fx));
    rows
}

/// The resource moved to another authorization server: log in there, not refresh here.
fn moved(s: &Samples) -> Vec<Row> {
    let r = &s.refreshing;
    let issuer = "http://127.0.0.1:2/".to_string();
    let failure = RefreshFailure::AuthorizationServerMoved {
        issuer: issuer.clone(),
    };
    let after = with(&login_started(r), |n| {
        n.token = Some(TokenFacts {
            has_refresh_token: false,
            ..refused(expired())
        });
    });
    let reason = LoginReason::AuthorizationServerMoved { issuer };
    vec![(
        r.clone(),
        refresh_failed(0, failure, "moved"),
        after.clone(),
        vec![AnnounceReauthentication { reason }, login_of(&after)],
    )]
}
