//! The waiting phases: NeedsLogin, BackingOff, Retrying, ClientRejected, StoreUnavailable and
//! LoggedOut. Each explains itself to callers, waits for its deadline, and takes what another
//! process stores.

use super::*;

pub(super) fn rows(s: &Samples) -> Vec<Row> {
    [
        needs_login(s),
        retrying(s),
        store_unavailable(s),
        logged_out(s),
    ]
    .concat()
}

fn needs_login(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let n = &s.needs_login;
    let loading = with(n, |x| x.phase = Phase::Loading);
    rows.push((
        n.clone(),
        Event::Reconnect,
        loading.clone(),
        vec![LoadToken],
    ));
    rows.push((n.clone(), refused_now(), loading, vec![LoadToken]));
    rows.push(logs_in(n));
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
        ],
    ));
    rows.extend(ignored(n, results(0)));
    // The browser window has not ended: nothing happens.
    rows.push((n.clone(), Event::Due(Timer::Browser), n.clone(), vec![]));
    let window_over = due_now(n);
    rows.push(announces_login(
        &window_over,
        Event::Due(Timer::Browser),
        LoginReason::NoStoredToken,
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
        Event::Due(Timer::Retry),
        with(&kept_rt, |x| x.phase = Phase::Refreshing),
        vec![refresh()],
    ));
    // The kept refresh token went meanwhile: its timer ends, nothing else happens.
    let gone_rt = with(&kept_rt, |x| x.token = Some(token(-1_000, false)));
    rows.push((
        gone_rt.clone(),
        Event::Due(Timer::Retry),
        with(&gone_rt, |x| {
            x.phase = Phase::NeedsLogin {
                reason: LoginReason::RetryCeiling { error: "e".into() },
                browser_at: None,
                refresh_at: None,
            }
        }),
        vec![],
    ));
    rows.extend(logout_and_adopt(n));
    rows.push((n.clone(), Event::StoreChanged(None), n.clone(), vec![]));
    rows
}

/// BackingOff, Retrying, ClientRejected: the same rules, each explaining itself.
fn retrying(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for (w, why) in s.waiting() {
        rows.push((
            w.clone(),
            Event::Reconnect,
            w.clone(),
            vec![failed(why.clone())],
        ));
        rows.push((
            w.clone(),
            refused_now(),
            with_refused(w, expired()),
            vec![failed(why.clone())],
        ));
        rows.push(logs_in(w));
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
        rows.push((w.clone(), Event::Due(Timer::Retry), w.clone(), vec![]));
        let due = due_now(w);
        rows.push((
            due.clone(),
            Event::Due(Timer::Retry),
            with(&due, |x| x.phase = Phase::Refreshing),
            vec![refresh()],
        ));
        rows.extend(logout_and_adopt(w));
        rows.push((
            w.clone(),
            Event::StoreChanged(None),
            logged_out_state(w),
            logged_out_effects(false, false),
        ));
        let serving = with(w, |x| x.token = Some(valid()));
        rows.push((
            serving.clone(),
            Event::Reconnect,
            serving.clone(),
            vec![ready()],
        ));
    }
    rows
}

fn store_unavailable(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let u = &s.store_unavailable;
    for e in [Event::Reconnect, refused_now()] {
        rows.push((
            u.clone(),
            e,
            with(u, |x| x.phase = Phase::Loading),
            vec![LoadToken],
        ));
    }
    let due = due_now(u);
    rows.push((
        due.clone(),
        Event::Due(Timer::Retry),
        with(&due, |x| x.phase = Phase::Loading),
        vec![LoadToken],
    ));
    rows.push((
        u.clone(),
        Event::Refresh,
        with(u, |x| {
            x.phase = Phase::Loading;
            x.refresh_after_load = true;
        }),
        vec![LoadToken],
    ));
    rows.push(logs_in(u));
    rows.extend(ignored(u, results(0)));
    rows.extend(logout_and_adopt(u));
    rows.push((u.clone(), Event::StoreChanged(None), u.clone(), vec![]));
    rows
}

fn logged_out(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let o = &s.logged_out;
    for e in [Event::Reconnect, refused_now(), Event::Refresh] {
        rows.push((o.clone(), e, o.clone(), vec![failed(Failure::LoggedOut)]));
    }
    rows.push(logs_in(o));
    rows.extend(ignored(o, results(1)));
    rows.extend(ignored(
        o,
        vec![Event::Due(Timer::Retry), Event::StoreChanged(None)],
    ));
    rows.extend(logout_and_adopt(o));
    rows
}
