//! Connected: the token serves; a refusal refreshes (or backs off when fresh tokens keep
//! being refused); its timer brings the proactive refresh; other processes' writes are
//! adopted.

use super::*;

pub(super) fn rows(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let c = &s.connected;
    rows.push((c.clone(), Event::Reconnect, c.clone(), vec![ready()]));
    rows.push(logs_in(c));
    rows.push((
        c.clone(),
        Event::Refresh,
        with(c, |n| n.phase = Phase::Refreshing),
        vec![refresh()],
    ));
    let (after, fx) = refused_and_refreshing(c);
    rows.push((c.clone(), refused_now(), after, fx));
    let just_refreshed = State {
        refresh_after_refusal: true,
        ..connected_to(c, fresh())
    };
    let error = "the server refused a token it had just issued";
    rows.push((
        just_refreshed.clone(),
        refused_now(),
        with(&just_refreshed, |n| {
            n.suspect_tokens = true;
            n.transient_failures = 1;
            n.failing_since = Some(NOW);
            n.token = Some(refused(fresh()));
            n.refused = Some(id(2));
            n.phase = Phase::BackingOff {
                attempt: 1,
                retry_at: NOW + 1_000,
                last_error: error.into(),
            };
        }),
        vec![failed(Failure::BackingOff {
            retry_at: NOW + 1_000,
            last_error: error.into(),
        })],
    ));
    let no_rt = connected_to(c, token(HOUR, false));
    let after = login_started(&with(&with_refused(&no_rt, token(HOUR, false)), |n| {
        n.refresh_after_refusal = true
    }));
    rows.push((
        no_rt.clone(),
        refused_now(),
        after.clone(),
        announced_login(LoginReason::NoRefreshToken, &after),
    ));
    rows.push((
        no_rt.clone(),
        Event::Reconnect,
        no_rt.clone(),
        vec![ready()],
    ));
    rows.extend(ignored(c, results(0)));
    // Its timer not due yet: nothing happens.
    rows.push((c.clone(), Event::Due(Timer::Refresh), c.clone(), vec![]));
    // Due: the proactive refresh, and this token lived to it (the step-up budget is back).
    let due = with(&due_now(c), |n| n.step_ups = 2);
    rows.push((
        due.clone(),
        Event::Due(Timer::Refresh),
        with(&due, |n| {
            n.phase = Phase::Refreshing;
            n.step_ups = 0;
        }),
        vec![refresh()],
    ));
    // Without a refresh token the timer fires when the token stops being usable.
    let no_rt_due = due_now(&connected_to(c, token(1_000, false)));
    rows.push(announces_login(
        &no_rt_due,
        Event::Due(Timer::Refresh),
        LoginReason::NoRefreshToken,
    ));
    rows.extend(logout_and_adopt(c));
    // The store holds what this process holds: nothing changed.
    rows.push((
        c.clone(),
        Event::StoreChanged(Some(valid())),
        c.clone(),
        vec![],
    ));
    rows.push((
        c.clone(),
        Event::StoreChanged(None),
        logged_out_state(c),
        logged_out_effects(false, false),
    ));
    rows
}
