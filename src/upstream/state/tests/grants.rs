//! A grant server (`Policy::grant`): its first token is a grant, renewal is the grant again
//! at the usual margin though no refresh token exists, failures go down the same ladder, and
//! nothing ever waits for (or opens) a browser.

use super::*;

fn grant_policy() -> Policy {
    Policy {
        grant: true,
        interactive: false,
        ..Policy::default()
    }
}

fn gst(phase: Phase, token: Option<TokenFacts>) -> State {
    State {
        policy: grant_policy(),
        ..st(phase, token)
    }
}

/// A grant's token: no refresh token.
fn granted() -> TokenFacts {
    TokenFacts {
        has_refresh_token: false,
        ..fresh()
    }
}

/// The grant `s` runs fails with `failure` at `NOW`.
fn failed_with(s: &State, failure: RefreshFailure, error: &str) -> (State, Vec<Effect>) {
    let event = Event::RefreshFailed {
        generation: s.generation,
        failure,
        error: error.into(),
    };
    step(s, event, NOW)
}

#[test]
fn the_first_token_is_a_grant_not_a_login() {
    let s = gst(Phase::Loading, None);
    let (next, fx) = step(
        &s,
        Event::Loaded {
            generation: 0,
            token: None,
        },
        NOW,
    );
    assert_eq!(next.phase, Phase::Refreshing);
    assert_eq!(fx, vec![refresh()]);
    assert_eq!(next.logins, 0, "no login counted");
}

#[test]
fn a_granted_token_is_renewed_at_the_proactive_margin_by_the_grant() {
    let s = gst(Phase::Refreshing, None);
    let t = granted();
    let (next, fx) = step(
        &s,
        Event::TokenObtained {
            generation: 0,
            token: t,
            saved: true,
        },
        NOW,
    );
    assert_eq!(next.phase, Phase::Connected);
    assert_eq!(fx, vec![ready()]);
    let due = t.refresh_at(0.0).unwrap();
    assert_eq!(
        next.refresh_due,
        Some(due),
        "75% of its life, as with a refresh token"
    );
    assert!(due < t.unusable_at().unwrap());
    let (renewing, fx) = step(&next, Event::Due(Timer::Refresh), due);
    assert_eq!(renewing.phase, Phase::Refreshing);
    assert_eq!(fx, vec![refresh()]);
}

#[test]
fn a_transient_failure_backs_off_and_the_grant_is_tried_again() {
    let s = gst(Phase::Refreshing, Some(granted()));
    let (next, _) = failed_with(&s, RefreshFailure::Transient { retry_after: None }, "503");
    let Phase::BackingOff { retry_at, .. } = next.phase else {
        panic!("{:?}", next.phase)
    };
    let (again, fx) = step(&next, Event::Due(Timer::Retry), retry_at);
    assert_eq!(again.phase, Phase::Refreshing);
    assert_eq!(fx, vec![refresh()]);
}

#[test]
fn a_refused_credential_waits_in_client_rejected_and_never_logs_in() {
    let expired_grant = TokenFacts {
        has_refresh_token: false,
        ..expired()
    };
    let s = gst(Phase::Refreshing, Some(expired_grant));
    let (next, fx) = failed_with(
        &s,
        RefreshFailure::ClientRejected { registered: false },
        "the enterprise IdP refused access by policy",
    );
    let Phase::ClientRejected { retry_at, .. } = next.phase else {
        panic!("{:?}", next.phase)
    };
    assert!(fx.iter().all(|e| !matches!(e, StartLogin(_))), "{fx:?}");
    let (again, fx) = step(&next, Event::Due(Timer::Retry), retry_at);
    assert_eq!(again.phase, Phase::Refreshing, "the grant again, later");
    assert_eq!(fx, vec![refresh()]);
}

#[test]
fn past_the_retry_ceiling_it_keeps_trying_the_grant_and_no_browser_opens() {
    let s = with(&gst(Phase::Refreshing, None), |n| {
        n.failing_since = Some(NOW - n.policy.retry_ceiling);
        n.transient_failures = 20;
    });
    let (next, fx) = failed_with(&s, RefreshFailure::Transient { retry_after: None }, "503");
    let Phase::NeedsLogin {
        browser_at,
        refresh_at,
        ..
    } = next.phase.clone()
    else {
        panic!("{:?}", next.phase)
    };
    assert_eq!(browser_at, None, "never a browser");
    assert!(fx.iter().all(|e| !matches!(e, StartLogin(_))), "{fx:?}");
    let refresh_at = refresh_at.expect("the grant is tried again");
    let (again, fx) = step(&next, Event::Due(Timer::Retry), refresh_at);
    assert_eq!(again.phase, Phase::Refreshing);
    assert_eq!(fx, vec![refresh()]);
}

#[test]
fn a_refused_token_is_replaced_by_the_grant() {
    let s = connected_to(&gst(Phase::Connected, None), granted());
    let (next, fx) = step(&s, Event::Refused { token: None }, NOW + 60_000);
    assert_eq!(next.phase, Phase::Refreshing);
    assert!(matches!(fx.as_slice(), [StartRefresh(_)]), "{fx:?}");
}

#[test]
fn an_interactive_policy_with_grant_still_opens_no_browser() {
    let s = State {
        policy: Policy {
            grant: true,
            interactive: true,
            ..Policy::default()
        },
        ..st(Phase::Refreshing, None)
    };
    let (next, fx) = failed_with(&s, RefreshFailure::RefreshTokenDead, "invalid_grant");
    assert!(
        matches!(
            next.phase,
            Phase::NeedsLogin {
                browser_at: None,
                refresh_at: Some(_),
                ..
            }
        ),
        "{:?}",
        next.phase
    );
    assert!(fx.iter().all(|e| !matches!(e, StartLogin(_))), "{fx:?}");
}
