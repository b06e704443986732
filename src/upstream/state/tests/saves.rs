//! A token whose save failed, and the drain: the machine decides when the save is retried,
//! holds back the proactive refresh of a refresh token the store does not have, and ends a
//! shutdown once nothing runs or waits to be saved.

use super::*;

fn unsaved(s: &State, retry_at: Option<Millis>) -> State {
    let token = s.token.map_or(id(0), |t| t.id);
    with(s, |n| {
        n.unsaved = Some(Unsaved {
            token,
            attempts: 1,
            retry_at,
        })
    })
}

pub(super) fn rows(s: &Samples) -> Vec<Row> {
    [every_phase(s), saving(s), draining(s)].concat()
}

/// Reports about a save of another token change nothing; a drain in every phase.
fn every_phase(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for x in s.all() {
        rows.extend(ignored(
            x,
            vec![
                Event::Saved { token: id(9) },
                Event::SaveFailed {
                    token: id(9),
                    error: "disk full".into(),
                },
            ],
        ));
        let mut after = with(x, |n| n.draining = true);
        let mut fx = vec![];
        if x.phase == Phase::Authorizing {
            // A login only waits for a person: cancelled, fenced, answered.
            after.phase = Phase::Idle;
            after.generation += 1;
            fx.extend([CancelFlow, failed(Failure::Stopped)]);
        }
        if !after.phase.flow_running() {
            fx.push(Drained);
        }
        rows.push((x.clone(), Event::Drain, after, fx));
    }
    rows
}

fn saving(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    // A refresh whose save failed: the token serves from memory, its save retried in 1 s. A
    // login's just the same: the token is kept, the login succeeded.
    for (x, generation) in [(&s.refreshing, 0), (&s.authorizing, 1)] {
        let token = fresh();
        let obtained = Event::TokenObtained {
            generation,
            token,
            saved: false,
        };
        let kept = unsaved(&connected_to(x, token), Some(NOW + 1_000));
        rows.push((x.clone(), obtained, kept, vec![ready()]));
    }
    let c = &s.connected;
    let waiting = unsaved(c, Some(NOW));
    rows.push((
        waiting.clone(),
        Event::Due(Timer::Save),
        unsaved(c, None),
        vec![SaveToken],
    ));
    let saving = unsaved(c, None);
    rows.push((
        saving.clone(),
        Event::Saved { token: id(1) },
        c.clone(),
        vec![],
    ));
    rows.push((
        saving.clone(),
        Event::SaveFailed {
            token: id(1),
            error: "disk full".into(),
        },
        with(&saving, |n| {
            n.unsaved = Some(Unsaved {
                token: id(1),
                attempts: 2,
                retry_at: Some(NOW + 2_000),
            })
        }),
        vec![],
    ));
    // The store is behind: another process's writes are older than the token in memory.
    rows.push((saving.clone(), sc(), saving.clone(), vec![]));
    rows.push((
        saving.clone(),
        Event::StoreChanged(None),
        saving.clone(),
        vec![],
    ));
    // An explicit refresh goes ahead, telling the flow that memory holds the newest token.
    rows.push((
        saving.clone(),
        Event::Refresh,
        with(&saving, |n| n.phase = Phase::Refreshing),
        vec![refresh_with(RefreshPlan {
            store_behind: true,
            ..RefreshPlan::default()
        })],
    ));
    // The proactive refresh held back for the save is due once it succeeds (never in the
    // past).
    let held_back = with(&saving, |n| n.refresh_due = Some(NOW - 5_000));
    rows.push((
        held_back,
        Event::Saved { token: id(1) },
        with(c, |n| n.refresh_due = Some(NOW + 1_000)),
        vec![],
    ));
    rows
}

fn draining(s: &Samples) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let drained = |x: &State| with(x, |n| n.draining = true);
    // Nothing starts: a caller that needs a flow hears `stopped`.
    let c = drained(&connected_to(&s.connected, expired()));
    rows.push((
        c.clone(),
        Event::Reconnect,
        c.clone(),
        vec![failed(Failure::Stopped), Drained],
    ));
    // A running refresh finishes, and its token serves.
    let r = drained(&s.refreshing);
    rows.push((
        r.clone(),
        obtained(0, fresh()),
        connected_to(&r, fresh()),
        vec![ready(), Drained],
    ));
    // ... but what it would start next does not: the machine comes to rest.
    rows.push((
        r.clone(),
        refresh_failed(0, RefreshFailure::ScopeRejected, "invalid_scope"),
        with(&r, |n| {
            n.scope_omitted = true;
            n.phase = Phase::Idle;
        }),
        vec![failed(Failure::Stopped), Drained],
    ));
    // An unsaved token holds the drain until its save succeeds.
    let u = drained(&unsaved(&s.connected, None));
    rows.push((
        u.clone(),
        Event::Saved { token: id(1) },
        drained(&s.connected),
        vec![Drained],
    ));
    rows
}

#[test]
fn an_unsaved_refresh_token_is_spent_again_only_at_the_last_moment() {
    let c = samples().connected;
    let t = valid();
    assert_eq!(c.timer(Timer::Refresh), t.refresh_at(0.0));
    let held = unsaved(&c, Some(NOW + 1_000));
    let last = t.last_refresh_at().unwrap();
    assert!(last > t.refresh_at(0.0).unwrap());
    assert_eq!(held.timer(Timer::Refresh), Some(last));
    assert_eq!(
        held.deadline().map(|d| d.timer),
        Some(Timer::Save),
        "the save comes first"
    );
}

#[test]
fn no_save_runs_beside_a_flow_and_a_drain_keeps_only_the_save() {
    let s = samples();
    let refreshing = unsaved(&s.refreshing, Some(NOW));
    assert_eq!(
        refreshing.timer(Timer::Save),
        None,
        "the flow's own save first"
    );
    let draining = with(&unsaved(&s.backing_off, Some(NOW + 5)), |n| {
        n.draining = true
    });
    assert_eq!(draining.timer(Timer::Retry), None);
    assert_eq!(draining.timer(Timer::Save), Some(NOW + 5));
}
