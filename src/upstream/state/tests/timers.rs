//! The deadlines a state sets, read by `deadline()` and handled by `Due`: one per phase that
//! waits, none in a phase that moved on, and `expired` walking them earliest first.

use super::*;

#[test]
fn every_waiting_phase_has_its_deadline_and_no_other_phase_has_one() {
    let s = samples();
    let expected = [
        (&s.idle, None),
        (&s.loading, None),
        (
            &s.connected,
            Some((Timer::Refresh, valid().refresh_at(0.0).unwrap())),
        ),
        (&s.refreshing, None),
        (&s.authorizing, None),
        (&s.needs_login, Some((Timer::Browser, NOW + 60_000))),
        (&s.backing_off, Some((Timer::Retry, NOW + 1_000))),
        (&s.retrying, Some((Timer::Retry, NOW + 1_000))),
        (&s.client_rejected, Some((Timer::Retry, NOW + 1_000))),
        (&s.store_unavailable, Some((Timer::Retry, NOW + 1_000))),
        (&s.logged_out, None),
    ];
    for (state, deadline) in expected {
        assert_eq!(
            state.deadline().map(|d| (d.timer, d.at)),
            deadline,
            "{:?}",
            state.phase
        );
    }
}

#[test]
fn a_proactive_refresh_may_fire_late_until_its_token_stops_being_handed_out() {
    let c = samples().connected;
    let deadline = c.deadline().unwrap();
    assert_eq!(deadline.latest, valid().unusable_at());
    let retry = samples().backing_off.deadline().unwrap();
    assert_eq!(
        retry.latest, None,
        "retries are spread by their jitter already"
    );
}

#[test]
fn expired_timers_come_earliest_first_and_each_one_handled_moves_on() {
    let mut s = with(&samples().needs_login, |n| {
        n.token = Some(expired());
        n.phase = Phase::NeedsLogin {
            reason: LoginReason::NoStoredToken,
            browser_at: Some(NOW - 10),
            refresh_at: Some(NOW - 20),
        };
        n.unsaved = Some(Unsaved {
            token: id(1),
            attempts: 1,
            retry_at: Some(NOW - 5),
        });
    });
    assert_eq!(s.expired(NOW - 30), None);
    let mut handled = Vec::new();
    while let Some(timer) = s.expired(NOW) {
        handled.push(timer);
        s = step(&s, Event::Due(timer), NOW).0;
        assert!(handled.len() <= Timer::ALL.len(), "{handled:?}");
    }
    // The kept refresh token first (a refresh starts; the browser's deadline goes with the
    // phase, and the save waits for the flow).
    assert_eq!(handled, [Timer::Retry]);
    assert_eq!(s.phase, Phase::Refreshing);
}

#[test]
fn a_firing_before_its_deadline_changes_nothing() {
    let s = samples().backing_off;
    let (after, effects) = step(&s, Event::Due(Timer::Retry), NOW);
    assert_eq!((after, effects), (s, vec![]));
}
