//! The rules the arms of [`step`](super::step) share: loading, connecting, refreshing,
//! logging in, backing off and saving, and the small table of deadlines (`due`), matched over
//! every phase. The reports about a token (a 401, a 403) are the next room, `reports`.

use super::*;

/// The first retry of a failed save comes this long after it; each later one twice as long,
/// up to [`SAVE_RETRY_CAP`].
const SAVE_RETRY_FIRST: Millis = 1_000;
const SAVE_RETRY_CAP: Millis = 30_000;

/// Shutting down: no flow starts. Whoever waits hears `stopped`, and a machine that was
/// about to run a flow comes to rest in `Idle`.
fn stopping(next: &mut State, fx: &mut Vec<Effect>) -> bool {
    if !next.draining {
        return false;
    }
    if next.phase.flow_running() {
        next.phase = Phase::Idle;
    }
    fx.push(Effect::ResolveWaiters(Resolution::Failed(Failure::Stopped)));
    true
}

pub(super) fn load(next: &mut State, fx: &mut Vec<Effect>) {
    if stopping(next, fx) {
        return;
    }
    next.phase = Phase::Loading;
    fx.push(Effect::LoadToken);
}

fn start_refresh(next: &mut State, fx: &mut Vec<Effect>, plan: RefreshPlan) {
    if stopping(next, fx) {
        return;
    }
    next.phase = Phase::Refreshing;
    fx.push(Effect::StartRefresh(RefreshPlan {
        after_refusal: next.refresh_after_refusal,
        store_behind: next.unsaved.is_some(),
        ..plan
    }));
}

/// `here`: this process logged out (the stored token is revoked and deleted); otherwise
/// another process did, or the stored token is gone.
pub(super) fn logged_out(next: &mut State, fx: &mut Vec<Effect>, here: bool) {
    if next.phase.flow_running() {
        fx.push(Effect::CancelFlow);
    }
    let kept = next.clone();
    *next = State {
        phase: Phase::LoggedOut,
        generation: kept.generation + 1,
        last_browser_failure: kept.last_browser_failure,
        fresh_client: kept.fresh_client,
        step_up_scope: kept.step_up_scope,
        logins: kept.logins,
        draining: kept.draining,
        ..State::new(kept.policy, kept.jitter)
    };
    fx.push(Effect::ForgetToken);
    if here {
        fx.push(Effect::RevokeAndDelete);
    }
    fx.push(Effect::ResolveWaiters(Resolution::Failed(
        Failure::LoggedOut,
    )));
}

/// Shutting down: a login (it only waits for a person) is cancelled and fenced; a running
/// load or refresh finishes.
pub(super) fn drain(next: &mut State, fx: &mut Vec<Effect>) {
    next.draining = true;
    if next.phase == Phase::Authorizing {
        fx.push(Effect::CancelFlow);
        next.generation += 1;
        next.phase = Phase::Idle;
        fx.push(Effect::ResolveWaiters(Resolution::Failed(Failure::Stopped)));
    }
}

/// `t` as the machine knows it: refused if it is the token the upstream refused.
pub(super) fn known(next: &State, t: TokenFacts) -> TokenFacts {
    TokenFacts {
        refused: t.refused || next.refused == Some(t.id),
        ..t
    }
}

/// Connected with `t`; its timer goes to its proactive refresh, or, without a refresh
/// token, to the moment it stops being usable.
pub(super) fn connected(next: &mut State, fx: &mut Vec<Effect>, t: TokenFacts, now: Millis) {
    next.phase = Phase::Connected;
    fx.push(Effect::ResolveWaiters(Resolution::Ready));
    next.refresh_due = if renewable(next, Some(t)) {
        // A refresh time already past (a token loaded late, or one that lived shorter than
        // its flow) waits the minimal gap, so nothing spins.
        t.refresh_at(next.jitter).map(|at| {
            if at > now {
                at
            } else {
                now + next.policy.min_timer_gap
            }
        })
    } else {
        t.unusable_at().filter(|at| *at > now)
    };
}

/// A stored or obtained token: use it, refresh it, or log in.
pub(super) fn decide(next: &mut State, fx: &mut Vec<Effect>, t: TokenFacts, now: Millis) {
    if t.usable(now) {
        connected(next, fx, t, now);
    } else {
        refresh_or_login(next, fx, now);
    }
}

/// Another process stored `t`: the failure series ends, and `t` is used, refreshed, or
/// replaced by a login.
pub(super) fn adopt(next: &mut State, fx: &mut Vec<Effect>, t: TokenFacts, now: Millis) {
    next.token = Some(t);
    next.transient_failures = 0;
    next.failing_since = None;
    next.suspect_tokens = false;
    next.refresh_after_refusal = false;
    decide(next, fx, t, now);
}

/// Whether `t` can be renewed without a person: it has a refresh token, or the server's
/// tokens come from a grant (`Policy::grant`), which is simply run again.
pub(super) fn renewable(next: &State, t: Option<TokenFacts>) -> bool {
    next.policy.grant || t.is_some_and(|t| t.has_refresh_token)
}

pub(super) fn refresh_or_login(next: &mut State, fx: &mut Vec<Effect>, now: Millis) {
    match next.token {
        _ if renewable(next, next.token) => start_refresh(next, fx, RefreshPlan::default()),
        Some(t) if t.usable(now) => connected(next, fx, t, now),
        Some(_) => needs_login(next, fx, now, LoginReason::NoRefreshToken),
        None => needs_login(next, fx, now, LoginReason::NoStoredToken),
    }
}

/// The browser may open by itself now, or from when (`None`: never, by itself).
fn browser_allowed_at(next: &State, now: Millis) -> Option<Millis> {
    if !next.policy.interactive || next.policy.grant {
        return None;
    }
    Some(match next.last_browser_failure {
        Some(failed) => (failed + next.policy.browser_window).max(now),
        None => now,
    })
}

/// No refresh token can work now: open the browser if allowed, else wait (with a timer for
/// the end of the browser window, and for a kept refresh token).
pub(super) fn needs_login(
    next: &mut State,
    fx: &mut Vec<Effect>,
    now: Millis,
    reason: LoginReason,
) {
    // A grant server's first token (none stored yet) is a grant, at once.
    if next.policy.grant && reason == LoginReason::NoStoredToken {
        start_refresh(next, fx, RefreshPlan::default());
        return;
    }
    let browser_at = browser_allowed_at(next, now);
    if browser_at == Some(now) {
        start_login(next, fx, Some(reason), now);
        return;
    }
    let refresh_at = renewable(next, next.token).then(|| now + retry_delay(next));
    fx.push(Effect::AnnounceReauthentication {
        reason: reason.clone(),
    });
    match next.token {
        Some(t) if t.usable(now) => fx.push(Effect::ResolveWaiters(Resolution::Ready)),
        _ => fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::NeedsLogin {
                reason: reason.clone(),
            },
        ))),
    }
    next.phase = Phase::NeedsLogin {
        reason,
        browser_at,
        refresh_at,
    };
}

fn login_plan(next: &State, now: Millis, adopt: bool) -> LoginPlan {
    LoginPlan {
        fresh_client: next.fresh_client,
        step_up_scope: next.step_up_scope.clone(),
        requested_at: now,
        adopt,
        after_refusal: next.refresh_after_refusal,
    }
}

/// `reason`: why the login starts by itself; `None` for an explicit login.
pub(super) fn start_login(
    next: &mut State,
    fx: &mut Vec<Effect>,
    reason: Option<LoginReason>,
    now: Millis,
) {
    if stopping(next, fx) {
        return;
    }
    if let Some(max) = next.policy.max_logins
        && next.logins >= max
    {
        let reason = LoginReason::LoginLimit {
            logins: next.logins,
        };
        fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::NeedsLogin {
                reason: reason.clone(),
            },
        )));
        next.phase = Phase::NeedsLogin {
            reason,
            browser_at: None,
            refresh_at: None,
        };
        return;
    }
    match reason {
        Some(reason) => fx.push(Effect::AnnounceReauthentication { reason }),
        // Asked for by someone: the step-up budget starts again.
        None => next.step_ups = 0,
    }
    next.logins += 1;
    next.generation += 1;
    next.login_after_flow = false;
    next.phase = Phase::Authorizing;
    fx.push(Effect::StartLogin(login_plan(next, now, true)));
}

/// The login found another process's token in the store, which is of no use: it logs in
/// after all, without looking again (the same login, not counted twice).
fn login_without_adopting(next: &mut State, fx: &mut Vec<Effect>, now: Millis) {
    if stopping(next, fx) {
        return;
    }
    next.generation += 1;
    next.phase = Phase::Authorizing;
    fx.push(Effect::StartLogin(login_plan(next, now, false)));
}

/// A flow brought `token`: use it (`saved`: it is in the store; if not, it serves from
/// memory while its save is retried).
pub(super) fn obtained(
    state: &State,
    next: &mut State,
    fx: &mut Vec<Effect>,
    token: TokenFacts,
    saved: bool,
    now: Millis,
) {
    let token = known(next, token);
    let login_wanted = std::mem::take(&mut next.login_after_flow);
    next.token = Some(token);
    next.reregistered = false;
    next.scope_omitted = false;
    next.unsaved = (!saved).then_some(Unsaved {
        token: token.id,
        attempts: 1,
        retry_at: Some(now + SAVE_RETRY_FIRST),
    });
    if state.phase == Phase::Authorizing {
        next.last_browser_failure = None;
        next.fresh_client = false;
        next.step_up_scope = None;
    }
    if login_wanted {
        start_login(next, fx, None, now);
    } else if token.usable(now) {
        if !next.suspect_tokens {
            next.transient_failures = 0;
            next.failing_since = None;
        }
        connected(next, fx, token, now);
    } else {
        // A "successful" flow whose token is already unusable is a failure, never a
        // success: back off instead of looping.
        bad_token(
            next,
            fx,
            now,
            "the server issued a token that is already expired",
        );
    }
}

/// Under the lock the flow found another process's newer token: used if it works; else a
/// refresh goes on from it, and a login logs in after all.
pub(super) fn store_ahead(
    state: &State,
    next: &mut State,
    fx: &mut Vec<Effect>,
    token: TokenFacts,
    now: Millis,
) {
    let token = known(next, token);
    if token.usable(now) {
        obtained(state, next, fx, token, true, now);
        return;
    }
    next.token = Some(token);
    next.unsaved = None;
    if state.phase != Phase::Refreshing {
        login_without_adopting(next, fx, now);
    } else if std::mem::take(&mut next.login_after_flow) {
        start_login(next, fx, None, now);
    } else {
        refresh_or_login(next, fx, now);
    }
}

pub(super) fn refresh_failed(
    next: &mut State,
    fx: &mut Vec<Effect>,
    now: Millis,
    failure: RefreshFailure,
    error: String,
) {
    if failure == RefreshFailure::TokenGone {
        logged_out(next, fx, false);
        return;
    }
    let dead = matches!(
        failure,
        RefreshFailure::RefreshTokenDead | RefreshFailure::DpopKeyUnusable
    );
    if dead {
        fx.push(Effect::DropRefreshToken);
    }
    if (dead || failure == RefreshFailure::NoRefreshToken)
        && let Some(t) = next.token.as_mut()
    {
        t.has_refresh_token = false;
    }
    if std::mem::take(&mut next.login_after_flow) {
        start_login(next, fx, None, now);
        return;
    }
    let usable = next.token.filter(|t| t.usable(now));
    match failure {
        RefreshFailure::RefreshTokenDead | RefreshFailure::DpopKeyUnusable => match usable {
            Some(t) => connected(next, fx, t, now),
            None => needs_login(next, fx, now, LoginReason::RefreshTokenRejected { error }),
        },
        RefreshFailure::NoRefreshToken => match usable {
            Some(t) => connected(next, fx, t, now),
            None => needs_login(next, fx, now, LoginReason::NoRefreshToken),
        },
        RefreshFailure::ClientRejected { registered: true } | RefreshFailure::NoClient
            if !next.reregistered && next.policy.reregister =>
        {
            next.reregistered = true;
            let omit_scope = next.scope_omitted;
            start_refresh(
                next,
                fx,
                RefreshPlan {
                    reregister: true,
                    omit_scope,
                    ..RefreshPlan::default()
                },
            );
        }
        RefreshFailure::ClientRejected { registered: true } if !next.reregistered => {
            // No registration to repair here: a login registers a new client.
            next.reregistered = true;
            next.fresh_client = true;
            needs_login(next, fx, now, LoginReason::ClientRejected { error });
        }
        RefreshFailure::ClientRejected { .. } => {
            next.phase = Phase::ClientRejected {
                retry_at: now + retry_delay(next),
                error: error.clone(),
            };
            match usable {
                Some(_) => fx.push(Effect::ResolveWaiters(Resolution::Ready)),
                None => fx.push(Effect::ResolveWaiters(Resolution::Failed(
                    Failure::ClientRejected { error },
                ))),
            }
        }
        RefreshFailure::ScopeRejected if !next.scope_omitted => {
            next.scope_omitted = true;
            let plan = RefreshPlan {
                omit_scope: true,
                ..RefreshPlan::default()
            };
            start_refresh(next, fx, plan);
        }
        RefreshFailure::ScopeRejected | RefreshFailure::Unexplained | RefreshFailure::NoClient => {
            transient_failure(next, fx, now, None, true, error)
        }
        RefreshFailure::Transient { retry_after } => {
            transient_failure(next, fx, now, retry_after, false, error)
        }
        RefreshFailure::AuthorizationServerMoved { issuer } => {
            // The refresh token belongs to the old server; the stored row keeps it until a
            // login at the new one replaces it (each server's client stays, by issuer).
            if let Some(t) = next.token.as_mut() {
                t.has_refresh_token = false;
                t.refused = true;
            }
            needs_login(
                next,
                fx,
                now,
                LoginReason::AuthorizationServerMoved { issuer },
            );
        }
        // Handled before anything else, above.
        RefreshFailure::TokenGone => {}
    }
}

pub(super) fn login_failed(
    next: &mut State,
    fx: &mut Vec<Effect>,
    error: String,
    dynamic_client: bool,
    now: Millis,
) {
    // The authorization server may have forgotten the client (or never had it): the next
    // login registers a new one.
    if dynamic_client {
        next.fresh_client = true;
    }
    next.last_browser_failure = Some(now);
    fx.push(Effect::ResolveWaiters(Resolution::Failed(
        Failure::LoginFailed {
            error: error.clone(),
        },
    )));
    // A failed login does not throw away a token that still works.
    match next.token {
        Some(t) if t.usable(now) || t.has_refresh_token => decide(next, fx, t, now),
        _ => needs_login(next, fx, now, LoginReason::LoginFailed { error }),
    }
}

/// A login failed before any browser opened, for a reason that passes: the authorization
/// server was unreachable or unwell and nobody was asked, so no browser launch is spent (the
/// browser window does not start). It backs off and tries again by itself: the retry timer
/// leads to `refresh_or_login`, which logs in again unless a token serves or renews. No
/// ceiling: with no refresh token at stake there is nothing to give up on, and the delay is
/// capped at `backoff_cap`, so the attempts stay bounded in rate.
pub(super) fn login_unreachable(
    next: &mut State,
    fx: &mut Vec<Effect>,
    now: Millis,
    retry_after: Option<Millis>,
    error: String,
) {
    next.transient_failures += 1;
    let attempt = next.transient_failures;
    let retry_at = now + fast_delay(next, attempt, retry_after);
    next.phase = Phase::BackingOff {
        attempt,
        retry_at,
        last_error: error.clone(),
    };
    // Whoever waits for this login hears that it failed, as after any failed login.
    fx.push(Effect::ResolveWaiters(Resolution::Failed(
        Failure::LoginFailed { error },
    )));
}

/// A 403 `insufficient_scope` while connected: a login for `scope` if the budget and the
/// browser allow it; otherwise the caller hears why, and the token keeps serving the calls
/// that need no more scope.
pub(super) fn step_up(next: &mut State, fx: &mut Vec<Effect>, now: Millis, scope: String) {
    if next.step_ups >= next.policy.max_step_ups {
        let reason = LoginReason::StepUpLimit {
            scope,
            logins: next.step_ups,
        };
        fx.push(Effect::AnnounceReauthentication {
            reason: reason.clone(),
        });
        fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::NeedsLogin { reason },
        )));
        return;
    }
    let reason = LoginReason::InsufficientScope { scope };
    if browser_allowed_at(next, now) == Some(now) {
        next.step_ups += 1;
        start_login(next, fx, Some(reason), now);
    } else {
        fx.push(Effect::AnnounceReauthentication {
            reason: reason.clone(),
        });
        fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::NeedsLogin { reason },
        )));
    }
}

/// The delay before fast attempt `attempt` (1-based): exponential from `backoff_base` up to
/// `backoff_cap`, jittered by 0..+20%, never sooner than `Retry-After` (at most one hour).
pub(super) fn fast_delay(next: &State, attempt: u32, retry_after: Option<Millis>) -> Millis {
    let policy = next.policy;
    let exponential = policy
        .backoff_base
        .saturating_mul(1 << (attempt.max(1) - 1).min(20))
        .min(policy.backoff_cap);
    jittered(next, exponential).max(retry_after.unwrap_or(0).min(MAX_RETRY_AFTER))
}

fn retry_delay(next: &State) -> Millis {
    jittered(next, next.policy.retry_interval)
}

/// Up to 20% later, by the server's jitter, so many servers do not retry in the same instant.
fn jittered(next: &State, delay: Millis) -> Millis {
    ((delay as f64 * (1.0 + 0.2 * next.jitter.clamp(0.0, 1.0))) as Millis)
        .max(next.policy.min_timer_gap)
}

/// A refresh failed but the refresh token may still work: back off (fast attempts), then
/// retry slowly (`long`: at once), then, past the ceiling, ask for a login keeping the token.
pub(super) fn transient_failure(
    next: &mut State,
    fx: &mut Vec<Effect>,
    now: Millis,
    retry_after: Option<Millis>,
    long: bool,
    error: String,
) {
    next.transient_failures += 1;
    let attempt = next.transient_failures;
    let since = *next.failing_since.get_or_insert(now);
    let until = since.saturating_add(next.policy.retry_ceiling);
    if now >= until {
        needs_login(next, fx, now, LoginReason::RetryCeiling { error });
        return;
    }
    let (phase, failure) = if long || attempt > next.policy.fast_attempts {
        let delay = retry_delay(next).max(retry_after.unwrap_or(0).min(MAX_RETRY_AFTER));
        let retry_at = (now + delay).min(until);
        (
            Phase::Retrying {
                attempt,
                retry_at,
                until,
                last_error: error.clone(),
            },
            Failure::Retrying {
                retry_at,
                until,
                last_error: error,
            },
        )
    } else {
        let retry_at = now + fast_delay(next, attempt, retry_after);
        (
            Phase::BackingOff {
                attempt,
                retry_at,
                last_error: error.clone(),
            },
            Failure::BackingOff {
                retry_at,
                last_error: error,
            },
        )
    };
    next.phase = phase;
    // Waiters are not held for minutes: a still-valid token serves them, else they hear why.
    match next.token {
        Some(t) if t.usable(now) => fx.push(Effect::ResolveWaiters(Resolution::Ready)),
        _ => fx.push(Effect::ResolveWaiters(Resolution::Failed(failure))),
    }
}

/// The server issues tokens that do not work: back off as after a transient failure.
pub(super) fn bad_token(next: &mut State, fx: &mut Vec<Effect>, now: Millis, error: &str) {
    transient_failure(next, fx, now, None, false, error.into());
}

/// In a waiting phase: a still-usable token serves the caller, else it hears why it waits.
pub(super) fn serve_or_explain(next: &State, fx: &mut Vec<Effect>, now: Millis) {
    if next.token.is_some_and(|t| t.usable(now)) {
        fx.push(Effect::ResolveWaiters(Resolution::Ready));
        return;
    }
    let Some(failure) = next.phase.waiting_failure() else {
        unreachable!("serve_or_explain in {:?}", next.phase)
    };
    fx.push(Effect::ResolveWaiters(Resolution::Failed(failure)));
}

/// `timer` fired: the table of deadlines. A timer that is not due (it fired early, or the
/// state no longer sets it) changes nothing.
pub(super) fn due(
    state: &State,
    next: &mut State,
    fx: &mut Vec<Effect>,
    timer: Timer,
    now: Millis,
) {
    if state.timer(timer).is_none_or(|at| at > now) {
        return;
    }
    use Phase::*;
    match (&state.phase, timer) {
        (_, Timer::Save) => {
            if let Some(unsaved) = next.unsaved.as_mut() {
                unsaved.retry_at = None;
            }
            fx.push(Effect::SaveToken);
        }
        (Connected, Timer::Refresh) => {
            // This token lived to its proactive refresh: the server's tokens work again.
            next.suspect_tokens = false;
            next.refresh_after_refusal = false;
            next.transient_failures = 0;
            next.failing_since = None;
            next.step_ups = 0;
            refresh_or_login(next, fx, now);
        }
        (BackingOff { .. } | Retrying { .. } | ClientRejected { .. }, Timer::Retry) => {
            refresh_or_login(next, fx, now)
        }
        (StoreUnavailable { .. }, Timer::Retry) => load(next, fx),
        (NeedsLogin { reason, .. }, Timer::Browser) => {
            start_login(next, fx, Some(reason.clone()), now)
        }
        (
            NeedsLogin {
                reason, browser_at, ..
            },
            Timer::Retry,
        ) => {
            if renewable(next, next.token) {
                start_refresh(next, fx, RefreshPlan::default());
            } else {
                next.phase = NeedsLogin {
                    reason: reason.clone(),
                    browser_at: *browser_at,
                    refresh_at: None,
                };
            }
        }
        // Timers these phases never set (`State::timer` is `None` there: returned above).
        (Idle | Loading | Refreshing | Authorizing | LoggedOut, Timer::Refresh)
        | (Idle | Loading | Refreshing | Authorizing | LoggedOut, Timer::Retry)
        | (Idle | Loading | Refreshing | Authorizing | LoggedOut, Timer::Browser)
        | (Connected, Timer::Retry | Timer::Browser)
        | (
            BackingOff { .. } | Retrying { .. } | ClientRejected { .. } | StoreUnavailable { .. },
            Timer::Refresh | Timer::Browser,
        )
        | (NeedsLogin { .. }, Timer::Refresh) => {}
    }
}

/// The save asked for succeeded: the token is durable, and a proactive refresh held back
/// for it is due again (never in the past).
pub(super) fn saved(next: &mut State, token: TokenId, now: Millis) {
    if next.unsaved.is_some_and(|u| u.token == token) {
        next.unsaved = None;
        if let Some(due) = next.refresh_due {
            next.refresh_due = Some(due.max(now + next.policy.min_timer_gap));
        }
    }
}

/// The save failed again: the token keeps serving from memory, and the save is retried.
pub(super) fn save_failed(next: &mut State, token: TokenId, now: Millis) {
    if let Some(unsaved) = next.unsaved.as_mut().filter(|u| u.token == token) {
        unsaved.attempts += 1;
        let delay = SAVE_RETRY_FIRST
            .saturating_mul(1 << (unsaved.attempts - 1).min(10))
            .min(SAVE_RETRY_CAP);
        unsaved.retry_at = Some(now + delay);
    }
}
