//! Idle and Loading: the first request loads the stored token, and the load decides.

use super::*;

pub(super) fn rows(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let i = &s.idle;
    let loading = |x: &State| with(x, |n| n.phase = Phase::Loading);
    rows.push((i.clone(), Event::Reconnect, loading(i), vec![LoadToken]));
    rows.push((i.clone(), refused_now(), loading(i), vec![LoadToken]));
    rows.push((
        i.clone(),
        Event::Login,
        with(&loading(i), |n| n.login_after_flow = true),
        vec![LoadToken],
    ));
    rows.push((
        i.clone(),
        Event::Refresh,
        with(&loading(i), |n| n.refresh_after_load = true),
        vec![LoadToken],
    ));
    rows.extend(ignored(i, results(0)));
    rows.extend(ignored(i, vec![Event::Due(Timer::Refresh), sc()]));
    rows.push((
        i.clone(),
        Event::Logout,
        logged_out_state(i),
        logged_out_effects(false, true),
    ));

    // Loading
    let l = &s.loading;
    rows.extend(ignored(
        l,
        vec![
            Event::Reconnect,
            Event::Refresh,
            refused_now(),
            Event::Due(Timer::Retry),
            sc(),
        ],
    ));
    rows.push((
        l.clone(),
        Event::Login,
        with(l, |n| n.login_after_flow = true),
        vec![],
    ));
    let loaded = |token| Event::Loaded {
        generation: 0,
        token,
    };
    rows.push((
        l.clone(),
        loaded(Some(valid())),
        connected_to(l, valid()),
        vec![ready()],
    ));
    rows.push((
        l.clone(),
        loaded(Some(expired())),
        with(l, |n| {
            n.phase = Phase::Refreshing;
            n.token = Some(expired());
        }),
        vec![refresh()],
    ));
    let no_rt = token(-1_000, false);
    let after = login_started(&with(l, |n| n.token = Some(no_rt)));
    rows.push((
        l.clone(),
        loaded(Some(no_rt)),
        after.clone(),
        announced_login(LoginReason::NoRefreshToken, &after),
    ));
    rows.push(announces_login(l, loaded(None), LoginReason::NoStoredToken));
    // A token refused before is not trusted again when read back.
    let refusing = with(l, |n| n.refused = Some(id(1)));
    let after = with(&refusing, |n| {
        n.phase = Phase::Refreshing;
        n.token = Some(refused(valid()));
    });
    rows.push((refusing, loaded(Some(valid())), after, vec![refresh()]));
    let wants_login = with(l, |n| n.login_after_flow = true);
    let after = login_started(&with(&wants_login, |n| n.token = Some(valid())));
    rows.push((
        wants_login,
        loaded(Some(valid())),
        after.clone(),
        vec![login_of(&after)],
    ));
    let wants_refresh = with(l, |n| n.refresh_after_load = true);
    rows.push((
        wants_refresh.clone(),
        loaded(Some(valid())),
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
    // A failed load waits for the store: 1 s after the first failure in a row, 2 s after the
    // second.
    for failures_before in [0, 1] {
        let before = with(l, |n| n.store_failures = failures_before);
        let attempt = failures_before + 1;
        let load_failed = Event::LoadFailed {
            generation: 0,
            error: "db".into(),
        };
        let waiting = with(&before, |n| {
            n.phase = Phase::StoreUnavailable {
                attempt,
                retry_at: NOW + Millis::from(attempt) * 1_000,
                error: "db".into(),
            };
            n.store_failures = attempt;
        });
        let told = vec![failed(Failure::Store { error: "db".into() })];
        rows.push((before, load_failed, waiting, told));
    }
    rows.extend(ignored(l, results(0).into_iter().skip(2).collect()));
    rows.push((
        l.clone(),
        Event::Logout,
        logged_out_state(l),
        logged_out_effects(true, true),
    ));
    rows
}
