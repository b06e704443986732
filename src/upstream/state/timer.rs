//! The machine's named timers, kept inside the machine as quinn-proto keeps its own
//! (`connection/timer.rs`): every deadline is read from the state by a pure getter
//! ([`State::deadline`], quinn's `poll_timeout`), and [`Event::Due`](super::Event::Due)
//! handles one that expired (quinn's `handle_timeout` walks them all; the actor does, with
//! [`State::expired`]). A deadline is a function of the state, so no timer can be stale: a
//! phase that moved on has no deadline of the old one, and a firing that finds its timer not
//! yet due changes nothing.

use super::{Millis, Phase, State};

/// Which deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// Connected: the proactive refresh of a token with a refresh token (held back to its
    /// last moment while the token is not in the store), or the moment a token without one
    /// stops being handed out.
    Refresh,
    /// The next attempt while backing off, retrying, with a rejected client or an unreadable
    /// store; waiting for a login, the kept refresh token tried again.
    Retry,
    /// Waiting for a login on an interactive host: the browser opens by itself when the
    /// window after a failed login ends.
    Browser,
    /// The token in memory is saved again (its save failed). Not while a flow runs: the
    /// flow's own save comes first.
    Save,
}

impl Timer {
    pub const ALL: [Timer; 4] = [Timer::Refresh, Timer::Retry, Timer::Browser, Timer::Save];
}

/// The earliest deadline: what the driver sleeps until.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub timer: Timer,
    pub at: Millis,
    /// How late it may fire (a scheduler spreading deadlines due together moves it no later
    /// than this): a proactive refresh, until its token stops being handed out.
    pub latest: Option<Millis>,
}

impl State {
    /// When `timer` is due, if it is set.
    pub fn timer(&self, timer: Timer) -> Option<Millis> {
        if self.draining && timer != Timer::Save {
            // Shutting down: nothing starts by itself, but an unsaved token is still saved.
            return None;
        }
        match (timer, &self.phase) {
            (Timer::Refresh, Phase::Connected) => {
                let due = self.refresh_due?;
                match self.token {
                    Some(t) if t.has_refresh_token && self.unsaved.is_some() => {
                        Some(t.last_refresh_at().map_or(due, |last| due.max(last)))
                    }
                    _ => Some(due),
                }
            }
            (
                Timer::Retry,
                Phase::BackingOff { retry_at, .. }
                | Phase::Retrying { retry_at, .. }
                | Phase::ClientRejected { retry_at, .. }
                | Phase::StoreUnavailable { retry_at, .. },
            ) => Some(*retry_at),
            (Timer::Retry, Phase::NeedsLogin { refresh_at, .. }) => *refresh_at,
            (Timer::Browser, Phase::NeedsLogin { browser_at, .. }) => *browser_at,
            (Timer::Save, phase) if !phase.flow_running() => self.unsaved.and_then(|u| u.retry_at),
            _ => None,
        }
    }

    /// The earliest deadline, if any timer is set.
    pub fn deadline(&self) -> Option<Deadline> {
        let (timer, at) = Timer::ALL
            .into_iter()
            .filter_map(|t| self.timer(t).map(|at| (t, at)))
            .min_by_key(|(_, at)| *at)?;
        let latest = match timer {
            Timer::Refresh => self.token.and_then(|t| t.unusable_at()).filter(|l| *l > at),
            Timer::Retry | Timer::Browser | Timer::Save => None,
        };
        Some(Deadline { timer, at, latest })
    }

    /// The earliest timer due at `now`: feed it as `Event::Due`, and ask again.
    pub fn expired(&self, now: Millis) -> Option<Timer> {
        self.deadline().filter(|d| d.at <= now).map(|d| d.timer)
    }
}
