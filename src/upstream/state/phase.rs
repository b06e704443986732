//! The phases of one server's authorization, as status and events show them.

use serde::Serialize;

use super::{Failure, LoginReason, Millis};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing asked yet.
    Idle,
    /// Reading the persisted token.
    Loading,
    Connected,
    Refreshing,
    Authorizing,
    /// No refresh token can work right now. `browser_at`: when the browser opens by itself
    /// (interactive hosts, once the window after a failed login ends); `refresh_at`: when a
    /// kept refresh token is tried again (past the retry ceiling).
    NeedsLogin {
        reason: LoginReason,
        browser_at: Option<Millis>,
        refresh_at: Option<Millis>,
    },
    /// The fast attempts after transient failures.
    BackingOff {
        attempt: u32,
        retry_at: Millis,
        last_error: String,
    },
    /// After the fast attempts: one attempt per `retry_interval`, until `until`.
    Retrying {
        attempt: u32,
        retry_at: Millis,
        until: Millis,
        last_error: String,
    },
    /// The authorization server refused our configured client (`invalid_client`): the
    /// configuration needs a fix; the refresh token is kept and tried again at `retry_at`.
    ClientRejected {
        retry_at: Millis,
        error: String,
    },
    /// The token store could not be read; loading is tried again at `retry_at`.
    StoreUnavailable {
        attempt: u32,
        retry_at: Millis,
        error: String,
    },
    /// Logged out (here or by another process): nothing is used or refreshed until a login.
    LoggedOut,
}

impl Phase {
    /// The stable name of the phase, as serialized.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Loading => "loading",
            Phase::Connected => "connected",
            Phase::Refreshing => "refreshing",
            Phase::Authorizing => "authorizing",
            Phase::NeedsLogin { .. } => "needs_login",
            Phase::BackingOff { .. } => "backing_off",
            Phase::Retrying { .. } => "retrying",
            Phase::ClientRejected { .. } => "client_rejected",
            Phase::StoreUnavailable { .. } => "store_unavailable",
            Phase::LoggedOut => "logged_out",
        }
    }

    /// A flow (load, refresh or login) runs: requests join it instead of starting another.
    pub fn flow_running(&self) -> bool {
        matches!(
            self,
            Phase::Loading | Phase::Refreshing | Phase::Authorizing
        )
    }

    /// When the machine acts next by itself, if it waits for time.
    pub fn next_attempt_at(&self) -> Option<Millis> {
        match self {
            Phase::BackingOff { retry_at, .. }
            | Phase::Retrying { retry_at, .. }
            | Phase::ClientRejected { retry_at, .. }
            | Phase::StoreUnavailable { retry_at, .. } => Some(*retry_at),
            Phase::NeedsLogin {
                browser_at,
                refresh_at,
                ..
            } => earliest(*browser_at, *refresh_at),
            _ => None,
        }
    }

    /// Why a caller gets no token while the machine waits to try the refresh token again
    /// (backing off, retrying, or the configured client refused); `None` in any other phase.
    pub fn waiting_failure(&self) -> Option<Failure> {
        match self {
            Phase::BackingOff {
                retry_at,
                last_error,
                ..
            } => Some(Failure::BackingOff {
                retry_at: *retry_at,
                last_error: last_error.clone(),
            }),
            Phase::Retrying {
                retry_at,
                until,
                last_error,
                ..
            } => Some(Failure::Retrying {
                retry_at: *retry_at,
                until: *until,
                last_error: last_error.clone(),
            }),
            Phase::ClientRejected { error, .. } => Some(Failure::ClientRejected {
                error: error.clone(),
            }),
            _ => None,
        }
    }
}

pub(super) fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
