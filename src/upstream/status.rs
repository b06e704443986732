//! What a server says about itself: its status (for the library's `status()` and the API),
//! and its phase changes (for subscribers), each with the phase in words.

use serde::Serialize;

use super::state::{Millis, Phase, clock};
use crate::telemetry::flow_logger::FlowKind;

/// A phase change, for subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub server: String,
    #[serde(flatten)]
    pub phase: Phase,
    pub detail: Option<String>,
    pub at: Millis,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub url: String,
    pub server_key: String,
    /// The phase with its fields (`phase` is its stable name when serialized).
    #[serde(flatten)]
    pub phase: Phase,
    /// The phase in words, for people.
    pub detail: Option<String>,
    pub expires_at: Option<Millis>,
    /// A token (usable or not) is held.
    pub has_token: bool,
    pub has_refresh_token: bool,
    pub scope: Option<String>,
    /// When the machine acts next by itself (a retry, the browser, a refresh), if it waits.
    pub next_attempt_at: Option<Millis>,
    /// The proactive refresh time of the current token.
    pub next_refresh_at: Option<Millis>,
    /// Failed refreshes in a row.
    pub refresh_failures: u32,
    /// The current token is not in the store yet (its save failed; it is retried).
    pub unsaved_token: bool,
    /// How often this server's timers fired since start (refreshes, retries, browser window,
    /// save retries).
    pub timers_fired: u64,
    /// While a browser login waits: its authorization URL (open it by hand if no browser
    /// opened). It holds no secret.
    pub auth_url: Option<String>,
    /// While a device login (RFC 8628) waits: the user code, where to enter it, and when it
    /// expires. Holds no secret (the device code stays in the flow).
    pub device_login: Option<crate::oauth::device::DevicePrompt>,
    pub running_flow: Option<String>,
    /// Kind and start (unix ms) of the running flow.
    pub running_flow_kind: Option<FlowKind>,
    pub running_flow_started_at: Option<Millis>,
    pub last_flow: Option<String>,
    /// When the machine's next deadline fires: the proactive refresh, a retry, a save.
    pub timer_at: Option<Millis>,
    /// The current token's type: `Bearer`, or `DPoP` (RFC 9449).
    pub token_type: Option<String>,
    /// For a DPoP-bound token: the RFC 7638 thumbprint of its key (public; the `cnf.jkt`).
    pub dpop_jkt: Option<String>,
    /// The MCP protocol version the embedding runtime reported for this server
    /// (`SupervisorHandle::report_protocol_version`).
    pub protocol_version: Option<String>,
}

/// A routine refresh is one line at info ("token refreshed"); its phase changes are detail.
pub fn routine_change(from: &Phase, to: &Phase) -> bool {
    matches!(
        (from, to),
        (Phase::Connected, Phase::Refreshing)
            | (Phase::Refreshing, Phase::Connected)
            | (Phase::Idle, Phase::Loading)
            | (Phase::Loading, Phase::Connected)
    )
}

/// The phase in words, for people (`None` where its name says it all).
pub fn phase_detail(phase: &Phase) -> Option<String> {
    match phase {
        Phase::NeedsLogin {
            reason, browser_at, ..
        } => Some(match browser_at {
            Some(at) => format!(
                "{reason}; the browser opens by itself at {}, or run a login",
                clock(*at)
            ),
            None => format!("{reason}; run a login"),
        }),
        Phase::BackingOff {
            attempt,
            retry_at,
            last_error,
        } => Some(format!(
            "attempt {attempt} failed ({last_error}); retry at {}",
            clock(*retry_at)
        )),
        Phase::Retrying {
            attempt,
            retry_at,
            until,
            last_error,
        } => Some(format!(
            "attempt {attempt} failed ({last_error}); retrying slowly, next at {}, a login is needed after {}",
            clock(*retry_at),
            clock(*until)
        )),
        Phase::ClientRejected { error, .. } => Some(format!(
            "the authorization server rejected the configured client ({error}); fix oauth.client_id \
             / oauth.client_secret"
        )),
        Phase::StoreUnavailable {
            error, retry_at, ..
        } => Some(format!("{error}; retry at {}", clock(*retry_at))),
        Phase::LoggedOut => Some("logged out; run a login".into()),
        _ => None,
    }
}
