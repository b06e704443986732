//! The machine's table of reports about a token, over every phase: a 401 (`Refused`) and a
//! 403 (`Forbidden`). A report about a token already replaced is answered with the newer one;
//! a 403 that more scope would not cure is answered at once, to its caller alone.

use super::rules::*;
use super::*;
use crate::oauth::scope;

/// What a 403 reports.
pub(super) struct ForbiddenReport {
    pub token: Option<TokenId>,
    pub insufficient_scope: bool,
    pub granted: Option<String>,
    pub demanded: Option<String>,
}

/// A report about `token` while `state` holds a newer usable one: that one is the answer.
fn newer_held(state: &State, token: Option<TokenId>, now: Millis) -> bool {
    token.is_some_and(|id| state.token.is_some_and(|t| t.id != id && t.usable(now)))
}

/// The current token is refused: it is not handed out, nor trusted again when read back.
fn refuse_current(next: &mut State) {
    if let Some(t) = next.token.as_mut() {
        t.refused = true;
        next.refused = Some(t.id);
    }
}

/// A 401, in every phase.
pub(super) fn refused(
    state: &State,
    next: &mut State,
    fx: &mut Vec<Effect>,
    token: Option<TokenId>,
    now: Millis,
) {
    // A 401 for a token already replaced: hand out the newer one, do not refresh again
    // (rotating servers revoke the whole family on reuse).
    if newer_held(state, token, now) {
        fx.push(Effect::AnswerCaller(Resolution::Ready));
        return;
    }
    let current = state.token.map(|t| t.id);
    if token.is_none() || current.is_none() || token == current {
        if let Some(id) = token {
            next.refused = Some(id);
        }
        refuse_current(next);
    }
    use Phase::*;
    match &state.phase {
        Idle | NeedsLogin { .. } | StoreUnavailable { .. } => load(next, fx),
        // A flow runs: the caller joins it.
        Loading | Refreshing | Authorizing => {}
        Connected => {
            refuse_current(next);
            let fresh = state.token.is_some_and(|t| t.refused_when_fresh(now));
            if fresh && state.refresh_after_refusal {
                // Refused again, fresh from a refresh that answered a refusal: the server
                // issues unusable tokens. Refreshing at once would loop; back off instead.
                next.suspect_tokens = true;
                bad_token(
                    next,
                    fx,
                    now,
                    "the server refused a token it had just issued",
                );
            } else {
                next.refresh_after_refusal = true;
                refresh_or_login(next, fx, now);
            }
        }
        BackingOff { .. } | Retrying { .. } | ClientRejected { .. } => {
            refuse_current(next);
            serve_or_explain(next, fx, now);
        }
        LoggedOut => fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::LoggedOut,
        ))),
    }
}

/// A 403, in every phase. Only a demand for scope not yet granted is worth a login: anything
/// else would open the browser for the same token again, and the caller hears so at once.
pub(super) fn forbidden(
    state: &State,
    next: &mut State,
    fx: &mut Vec<Effect>,
    report: ForbiddenReport,
    now: Millis,
) {
    // A 403 for a token already replaced: the newer one may hold the scope.
    if newer_held(state, report.token, now) {
        fx.push(Effect::AnswerCaller(Resolution::Ready));
        return;
    }
    if !report.insufficient_scope {
        fx.push(Effect::AnswerCaller(Resolution::Failed(
            Failure::Forbidden {
                error:
                    "the server answered 403 without insufficient_scope: more scope would not help"
                        .into(),
            },
        )));
        return;
    }
    let granted = report.granted.as_deref();
    let Some(scope) = scope::step_up(granted, report.demanded.as_deref()) else {
        fx.push(Effect::AnswerCaller(Resolution::Failed(
            Failure::scope_already_granted(granted),
        )));
        return;
    };
    next.step_up_scope = Some(scope.clone());
    use Phase::*;
    match &state.phase {
        Idle | NeedsLogin { .. } | StoreUnavailable { .. } => load(next, fx),
        // A flow runs: the caller joins it.
        Loading | Refreshing | Authorizing => {}
        Connected => step_up(next, fx, now, scope),
        // A step-up waits for the refresh to recover: it needs the authorization server too.
        BackingOff { .. } | Retrying { .. } | ClientRejected { .. } => {
            serve_or_explain(next, fx, now)
        }
        LoggedOut => fx.push(Effect::ResolveWaiters(Resolution::Failed(
            Failure::LoggedOut,
        ))),
    }
}
