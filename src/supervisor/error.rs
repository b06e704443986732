//! What the library's calls fail with: one enum whose variants (and the server's typed
//! failure inside `Upstream`) carry the decision, with a stable code for each.

use crate::store::StoreError;
use crate::upstream::actor::UpstreamError;
use crate::upstream::state::Failure;

/// What the library's calls can fail with. Match on the variants (and on
/// `UpstreamError::failure`), or use [`SupervisorError::code`]: never on the message.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown server {name:?}; configured servers: {configured}")]
    UnknownServer { name: String, configured: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the OAuth supervisor has stopped")]
    Stopped,
    /// An argument the caller gave is not what the call takes (the message says what).
    #[error("{0}")]
    InvalidInput(String),
}

impl SupervisorError {
    /// A stable name for the error: `unknown_server`, `stopped`, `store`, or the upstream
    /// failure's kind (`needs_login`, `backing_off`, `retrying`, `client_rejected`,
    /// `login_failed`, `logged_out`, `forbidden`, `store`, `stopped`).
    pub fn code(&self) -> &'static str {
        match self {
            SupervisorError::UnknownServer { .. } => "unknown_server",
            SupervisorError::Store(_) => "store",
            SupervisorError::Stopped => "stopped",
            SupervisorError::InvalidInput(_) => "invalid_input",
            SupervisorError::Upstream(e) => match e.failure {
                Failure::NeedsLogin { .. } => "needs_login",
                Failure::BackingOff { .. } => "backing_off",
                Failure::Retrying { .. } => "retrying",
                Failure::ClientRejected { .. } => "client_rejected",
                Failure::LoginFailed { .. } => "login_failed",
                Failure::LoggedOut => "logged_out",
                Failure::Forbidden { .. } => "forbidden",
                Failure::Store { .. } => "store",
                Failure::Stopped => "stopped",
            },
        }
    }

    /// The typed failure of the server, where the server answered.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            SupervisorError::Upstream(e) => Some(&e.failure),
            _ => None,
        }
    }

    /// The correlation ID of the flow that failed, where a flow failed.
    pub fn flow_id(&self) -> Option<&str> {
        match self {
            SupervisorError::Upstream(e) => e.flow_id.as_deref(),
            _ => None,
        }
    }
}
