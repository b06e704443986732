//! A model of the actor around the machine, for the property tests: the one load or flow in
//! flight, the save in flight, the callers waiting and the clock, with every invariant checked
//! on every step.

use proptest::prelude::*;

use super::*;

/// What the actor would be doing: the one load or flow in flight, and its generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    Load(u64),
    Refresh(u64),
    Login(u64),
}

#[derive(Debug, Clone)]
pub(super) enum Action {
    Caller(u8),
    Advance(Millis),
    Complete(u8, Millis),
    /// Deliver the result of an op that was cancelled (a late, stale result).
    Stale(u8),
    StoreChanged(bool, Millis),
    /// The save in flight answers: stored, or not.
    Save(bool),
}

pub(super) fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0u8..8).prop_map(Action::Caller),
        (1i64..3 * HOUR).prop_map(Action::Advance),
        (0u8..17, 1i64..2 * HOUR).prop_map(|(k, l)| Action::Complete(k, l)),
        (0u8..3).prop_map(Action::Stale),
        (any::<bool>(), 1i64..2 * HOUR).prop_map(|(b, l)| Action::StoreChanged(b, l)),
        any::<bool>().prop_map(Action::Save),
    ]
}

pub(super) struct World {
    pub state: State,
    pub now: Millis,
    pub op: Option<Op>,
    cancelled: Vec<Op>,
    /// The token whose save is in flight.
    pub saving: Option<TokenId>,
    waiters: u32,
    pub events: u32,
    /// Tokens issued so far (each gets its own id).
    issued: u32,
}

impl World {
    pub fn new(policy: Policy, jitter: f64) -> Self {
        World {
            state: State::new(policy, jitter),
            now: NOW,
            op: None,
            cancelled: Vec::new(),
            saving: None,
            waiters: 0,
            events: 0,
            issued: 0,
        }
    }

    /// A new token, obtained `age` ago, living `lifetime`.
    pub fn issue(&mut self, age: Millis, lifetime: Millis, rt: bool) -> TokenFacts {
        self.issued += 1;
        TokenFacts {
            id: TokenId::of(&format!("issued-{}", self.issued)),
            obtained_at: self.now - age,
            expires_at: Some(self.now - age + lifetime),
            has_refresh_token: rt,
            refused: false,
        }
    }

    /// Feeds one event (`caller`: from someone who waits for its answer) and checks every
    /// invariant on the step.
    pub fn feed(&mut self, event: Event, caller: bool) -> Result<(), TestCaseError> {
        self.events += 1;
        if caller {
            self.waiters += 1;
        }
        let before = self.state.clone();
        let now = self.now;
        let current = matches!(&event, Event::RefreshFailed { generation, .. } if *generation == before.generation)
            && before.phase == Phase::Refreshing;
        let failure = match &event {
            Event::RefreshFailed { failure, .. } if current => Some(failure.clone()),
            _ => None,
        };
        let drop_allowed = matches!(
            failure,
            Some(RefreshFailure::RefreshTokenDead | RefreshFailure::DpopKeyUnusable)
        );
        // The machine stops using a refresh token (in memory; no effect drops it) when the
        // resource moved, or when the flow found none.
        let unused_allowed = drop_allowed
            || matches!(
                failure,
                Some(
                    RefreshFailure::AuthorizationServerMoved { .. }
                        | RefreshFailure::NoRefreshToken
                )
            );
        let (next, effects) = step(&self.state, event.clone(), now);
        let ready_ok = next.token.is_some_and(|t| t.usable(now));
        for effect in &effects {
            match effect {
                DropRefreshToken => prop_assert!(
                    drop_allowed,
                    "refresh token dropped on {event:?} in {:?}",
                    before.phase
                ),
                ResolveWaiters(r) => {
                    prop_assert!(
                        *r != Resolution::Ready || ready_ok,
                        "Ready without a usable token on {event:?}"
                    );
                    self.waiters = 0;
                }
                AnswerCaller(r) => {
                    prop_assert!(
                        caller && self.waiters > 0,
                        "answered a caller that is not there"
                    );
                    prop_assert!(
                        *r != Resolution::Ready || ready_ok,
                        "Ready without a usable token on {event:?}"
                    );
                    self.waiters -= 1;
                }
                CancelFlow => {
                    if let Some(op) = self.op.take() {
                        self.cancelled.push(op);
                    }
                }
                LoadToken | StartRefresh(_) | StartLogin(_) => {
                    prop_assert!(!before.draining, "{effect:?} while draining, on {event:?}");
                    prop_assert!(
                        self.op.is_none(),
                        "a second flow started ({effect:?} while {:?}) on {event:?}",
                        self.op
                    );
                    let g = next.generation;
                    self.op = Some(match effect {
                        LoadToken => Op::Load(g),
                        StartLogin(_) => Op::Login(g),
                        _ => Op::Refresh(g),
                    });
                    // (A grant server's token without a refresh token spends nothing: its
                    // grant may run at the usual margin.)
                    if let (StartRefresh(_), Event::Due(Timer::Refresh), Some(_), Some(t)) =
                        (effect, &event, before.unsaved, before.token)
                        && t.has_refresh_token
                    {
                        prop_assert!(
                            t.last_refresh_at().is_none_or(|last| now >= last),
                            "an unsaved refresh token spent at {now} before its last moment"
                        );
                    }
                }
                SaveToken => {
                    let token = next.unsaved.map(|u| u.token);
                    prop_assert!(token.is_some(), "a save of nothing");
                    prop_assert!(self.saving != token, "a second save of one token at once");
                    prop_assert!(self.op.is_none(), "a save beside a flow");
                    self.saving = token;
                }
                RevokeAndDelete => prop_assert!(event == Event::Logout, "revoked on {event:?}"),
                Drained => prop_assert!(
                    next.draining && !next.phase.flow_running() && next.unsaved.is_none(),
                    "drained with work left in {:?}",
                    next.phase
                ),
                ForgetToken | AnnounceReauthentication { .. } => {}
            }
        }
        for timer in Timer::ALL {
            let (was, is) = (before.timer(timer), next.timer(timer));
            // A save held back by a flow comes due again when it ends, at its own time.
            let resumed = timer == Timer::Save && before.phase.flow_running();
            if is != was && !resumed {
                prop_assert!(
                    is.is_none_or(|at| at > now),
                    "{timer:?} set at {is:?}, now {now}, by {event:?} in {:?}",
                    before.phase
                );
            }
        }
        prop_assert_eq!(
            next.phase.flow_running(),
            self.op.is_some(),
            "phase {:?} vs op {:?} after {:?}",
            &next.phase,
            self.op,
            &event
        );
        if !next.phase.flow_running() {
            prop_assert_eq!(
                self.waiters,
                0,
                "waiters left unanswered in {:?}",
                &next.phase
            );
        }
        let brings_a_token = matches!(
            event,
            Event::TokenObtained { .. }
                | Event::Loaded { .. }
                | Event::StoreChanged(_)
                | Event::StoreAhead { .. }
        );
        if let Some(t) = next.token
            && !brings_a_token
            && before.token.is_some_and(|b| b.has_refresh_token)
            && !t.has_refresh_token
        {
            prop_assert!(unused_allowed, "the refresh token vanished on {event:?}");
        }
        self.state = next;
        Ok(())
    }

    pub fn caller(&mut self, kind: u8) -> Result<(), TestCaseError> {
        let older = Some(TokenId::of("an-older-token"));
        let event = match kind {
            0 => Event::Reconnect,
            1 => Event::Login,
            2 => Event::Refresh,
            3 => Event::Refused { token: None },
            4 => Event::Refused { token: older },
            5 => Event::Forbidden {
                token: None,
                insufficient_scope: true,
                granted: Some("read".into()),
                demanded: Some("read admin".into()),
            },
            6 => Event::Forbidden {
                token: older,
                insufficient_scope: false,
                granted: None,
                demanded: None,
            },
            _ => return self.feed(Event::Logout, false),
        };
        self.feed(event, true)
    }

    /// Moves the clock by `by`, handling every timer that comes due on the way.
    pub fn advance(&mut self, by: Millis) -> Result<(), TestCaseError> {
        let end = self.now + by;
        while let Some(deadline) = self.state.deadline().filter(|d| d.at <= end) {
            self.now = self.now.max(deadline.at);
            self.fire()?;
        }
        self.now = end;
        Ok(())
    }

    /// Handles every expired timer, earliest first, as the actor does.
    pub fn fire(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..Timer::ALL.len() {
            let Some(timer) = self.state.expired(self.now) else {
                return Ok(());
            };
            self.feed(Event::Due(timer), false)?;
        }
        prop_assert!(
            self.state.expired(self.now).is_none(),
            "a timer stays expired after it was handled: {:?}",
            self.state
        );
        Ok(())
    }

    /// Completes the op in flight with outcome `kind` (`lifetime` for issued tokens).
    pub fn complete(&mut self, kind: u8, lifetime: Millis) -> Result<(), TestCaseError> {
        let Some(op) = self.op.take() else {
            return Ok(());
        };
        let event = self.result_of(op, kind, lifetime);
        self.feed(event, false)
    }

    pub fn save(&mut self, stored: bool) -> Result<(), TestCaseError> {
        let Some(token) = self.saving.take() else {
            return Ok(());
        };
        let event = match stored {
            true => Event::Saved { token },
            false => Event::SaveFailed {
                token,
                error: "disk full".into(),
            },
        };
        self.feed(event, false)
    }

    pub fn stale(&mut self, kind: u8) -> Result<(), TestCaseError> {
        let Some(op) = self.cancelled.pop() else {
            return Ok(());
        };
        let before = self.state.clone();
        let event = self.result_of(op, kind, HOUR);
        let (next, effects) = step(&self.state, event, self.now);
        prop_assert_eq!(&next, &before, "a stale result changed the state");
        prop_assert!(
            effects.iter().all(|e| *e == Drained),
            "a stale result had effects: {:?}",
            effects
        );
        Ok(())
    }

    fn result_of(&mut self, op: Op, kind: u8, lifetime: Millis) -> Event {
        match op {
            Op::Load(generation) => {
                let token = match kind % 4 {
                    0 => Some(self.issue(1, lifetime, true)),
                    1 => Some(self.issue(2 * lifetime, lifetime, kind % 8 < 4)),
                    2 => None,
                    _ => {
                        return Event::LoadFailed {
                            generation,
                            error: "db".into(),
                        };
                    }
                };
                Event::Loaded { generation, token }
            }
            Op::Login(generation) => match kind % 5 {
                0 if kind.is_multiple_of(3) => Event::LoginFailedBeforeBrowser {
                    generation,
                    error: "registration answered 503".into(),
                    retry_after: (kind % 2 == 1).then_some(60_000),
                },
                0 => Event::LoginFailed {
                    generation,
                    error: "timeout".into(),
                    dynamic_client: kind.is_multiple_of(2),
                },
                1 | 2 => Event::TokenObtained {
                    generation,
                    token: self.issue(0, lifetime, kind.is_multiple_of(2)),
                    saved: kind % 5 == 1,
                },
                3 => Event::StoreAhead {
                    generation,
                    token: self.issue(0, lifetime, true),
                },
                _ => Event::StoreAhead {
                    generation,
                    token: self.issue(2 * lifetime, lifetime, false),
                },
            },
            Op::Refresh(generation) => {
                let failure = match kind {
                    0 | 1 => None,
                    2 => Some(RefreshFailure::Transient { retry_after: None }),
                    3 => Some(RefreshFailure::Transient {
                        retry_after: Some(lifetime * 3),
                    }),
                    4 => Some(RefreshFailure::Unexplained),
                    5 => Some(RefreshFailure::RefreshTokenDead),
                    6 => Some(RefreshFailure::ClientRejected { registered: true }),
                    7 => Some(RefreshFailure::ClientRejected { registered: false }),
                    8 => Some(RefreshFailure::ScopeRejected),
                    9 => Some(RefreshFailure::TokenGone),
                    11 => Some(RefreshFailure::AuthorizationServerMoved {
                        issuer: "http://127.0.0.1:2/".into(),
                    }),
                    10 => {
                        return Event::TokenObtained {
                            generation,
                            token: self.issue(lifetime + 1, lifetime, true),
                            saved: true,
                        };
                    }
                    12 => {
                        return Event::TokenObtained {
                            generation,
                            token: self.issue(0, lifetime, true),
                            saved: false,
                        };
                    }
                    13 => {
                        return Event::StoreAhead {
                            generation,
                            token: self.issue(0, lifetime, true),
                        };
                    }
                    14 => Some(RefreshFailure::NoRefreshToken),
                    15 => Some(RefreshFailure::DpopKeyUnusable),
                    16 => Some(RefreshFailure::NoClient),
                    _ => Some(RefreshFailure::Transient {
                        retry_after: Some(1),
                    }),
                };
                match failure {
                    None => Event::TokenObtained {
                        generation,
                        token: self.issue(0, lifetime, true),
                        saved: true,
                    },
                    Some(failure) => Event::RefreshFailed {
                        generation,
                        failure,
                        error: "e".into(),
                    },
                }
            }
        }
    }

    pub fn run(&mut self, actions: &[Action]) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                Action::Caller(k) => self.caller(*k)?,
                Action::Advance(by) => self.advance(*by)?,
                Action::Complete(k, l) => self.complete(*k, *l)?,
                Action::Stale(k) => self.stale(*k)?,
                Action::StoreChanged(present, l) => {
                    let t = present.then(|| self.issue(0, *l, true));
                    self.feed(Event::StoreChanged(t), false)?
                }
                Action::Save(stored) => self.save(*stored)?,
            }
        }
        Ok(())
    }
}
