//! What `GET /api/v1/servers` answers for one server. `server_view` is the one place that turns
//! the supervisor's `ServerStatus` (plus the flow rows and the last failure's trace) into API
//! fields: when the phases change shape, only this function changes. No field ever holds a
//! token, a code or a secret: `ServerStatus` carries none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::store::LeaseRow;
use crate::store::db::FlowRow;
use crate::telemetry::flow_logger::{FlowKind, TraceEntry};
use crate::upstream::actor::ServerStatus;
use crate::upstream::state::Phase;

/// RFC 3339 UTC with milliseconds, the format of every `*_at` field.
pub fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// The inverse of `rfc3339`, for clients and tests.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let at: SystemTime = humantime::parse_rfc3339(s).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// `healthy`, `degraded` or `unhealthy`.
    pub level: &'static str,
    pub summary: String,
    /// What an operator should do: `none`, `login`, `reconnect` or `wait`.
    pub action: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActiveFlow {
    pub correlation_id: String,
    pub kind: FlowKind,
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastError {
    pub endpoint: Option<String>,
    pub status: Option<u64>,
    pub error: String,
    /// The flow that failed.
    pub correlation_id: Option<String>,
    pub at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuthLinkView {
    pub url: String,
    pub browser_opened: bool,
    pub browser_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerView {
    pub name: String,
    pub url: String,
    pub authenticated: bool,
    /// `authenticated`, `expired`, `error` or `none` (mcpproxy's values).
    pub oauth_status: &'static str,
    pub token_expires_at: Option<String>,
    pub health: Health,
    pub phase: String,
    pub phase_detail: Option<String>,
    pub active_flow: Option<ActiveFlow>,
    pub last_flow_id: Option<String>,
    pub last_refresh_at: Option<String>,
    pub next_refresh_at: Option<String>,
    pub refresh_failures: u32,
    pub retry_at: Option<String>,
    pub has_refresh_token: bool,
    pub scopes: Vec<String>,
    pub last_error: Option<LastError>,
    /// The pending authorization link while a login waits for a person.
    pub login_link: Option<AuthLinkView>,
    /// While a device login waits: the user code, where to enter it, when it expires.
    pub device_login: Option<DeviceLoginView>,
    /// `Bearer`, or `DPoP` for a token bound to a key (RFC 9449); `None` without a token.
    pub token_type: Option<String>,
    /// The bound key's public thumbprint (RFC 7638), for a DPoP token.
    pub dpop_jkt: Option<String>,
    /// The MCP protocol version the embedding runtime reported for this server.
    pub protocol_version: Option<String>,
    /// The server's lease row; `None` until a flow claimed it (or when it cannot be read).
    pub lease: Option<LeaseView>,
}

/// Who holds (or last held) a server's lease: with several instances on one PostgreSQL
/// store, which one refreshes it; on SQLite, which process.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseView {
    /// The instance (`pid N (uuid)`, as it records itself in `oauth_flows.owner`).
    pub holder: String,
    /// Whether it holds it now (a claim not released and not expired).
    pub held: bool,
    /// One higher at every claim of the server.
    pub fence: i64,
    pub flow_id: Option<String>,
    pub claimed_at: String,
    /// Until when a held lease holds without a release.
    pub expires_at: Option<String>,
}

fn lease_view(row: &LeaseRow, now: i64) -> LeaseView {
    LeaseView {
        holder: row.owner.clone(),
        held: row.expires_at.is_some_and(|e| e > now),
        fence: row.fence,
        flow_id: row.flow_id.clone(),
        claimed_at: rfc3339(row.claimed_at),
        expires_at: row.expires_at.map(rfc3339),
    }
}

/// A device login's prompt (RFC 8628) as the API shows it; no secret in it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceLoginView {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_at: String,
}

/// What `server_view` needs besides the status.
pub struct ViewInputs<'a> {
    /// This server's recent flows from the database, newest first.
    pub flows: &'a [FlowRow],
    /// The `failed` event of the last flow, when it failed and its trace is still kept.
    pub last_failure: Option<&'a TraceEntry>,
    pub login_link: Option<AuthLinkView>,
    /// The server's lease row.
    pub lease: Option<&'a LeaseRow>,
    pub now: i64,
}

fn remaining(ms: i64) -> String {
    let secs = (ms.max(0) + 999) / 1000;
    match secs {
        0..=89 => format!("{secs} s"),
        90..=5399 => format!("{} min", (secs + 30) / 60),
        _ => format!("{} h", (secs + 1800) / 3600),
    }
}

/// The one mapping from the supervisor's status to the API's fields.
pub fn server_view(status: &ServerStatus, inputs: ViewInputs<'_>) -> ServerView {
    let now = inputs.now;
    // A token without an expiry is usable until refused.
    let has_token = status.has_token;
    let unexpired = status.expires_at.is_none_or(|e| e > now);
    let authenticated = has_token && unexpired;
    let phase = &status.phase;
    let failing = matches!(
        phase,
        Phase::BackingOff { .. }
            | Phase::Retrying { .. }
            | Phase::ClientRejected { .. }
            | Phase::StoreUnavailable { .. }
    );
    let oauth_status = match phase {
        Phase::ClientRejected { .. } | Phase::StoreUnavailable { .. } => "error",
        _ if authenticated => "authenticated",
        _ if failing => "error",
        _ if has_token => "expired",
        Phase::NeedsLogin { .. } if inputs.last_failure.is_some() => "error",
        _ => "none",
    };
    let detail = status.detail.clone();
    let failing_health = |summary: String, action| Health {
        level: if authenticated {
            "degraded"
        } else {
            "unhealthy"
        },
        summary,
        action,
    };
    let health = match phase {
        Phase::Connected => Health {
            level: "healthy",
            summary: match status.expires_at {
                Some(e) => format!("authorized; the token is valid for {}", remaining(e - now)),
                None => "authorized; the token has no announced expiry".into(),
            },
            action: "none",
        },
        Phase::Loading | Phase::Refreshing => Health {
            level: if authenticated { "healthy" } else { "degraded" },
            summary: if *phase == Phase::Loading {
                "reading the stored token".into()
            } else {
                "refreshing the token".into()
            },
            action: "wait",
        },
        Phase::Authorizing => Health {
            level: "degraded",
            summary: match &status.device_login {
                Some(d) => format!(
                    "waiting for the code {} to be entered at {}",
                    d.user_code, d.verification_uri
                ),
                None => "waiting for a browser login".into(),
            },
            action: if inputs
                .login_link
                .as_ref()
                .is_some_and(|l| !l.browser_opened)
            {
                "login"
            } else {
                "wait"
            },
        },
        Phase::NeedsLogin { .. } => Health {
            level: "unhealthy",
            summary: format!(
                "a login is required: {}",
                detail.as_deref().unwrap_or("no usable token")
            ),
            action: "login",
        },
        Phase::BackingOff { .. } | Phase::Retrying { .. } => failing_health(
            if authenticated {
                "refreshing fails; retrying automatically while the current token lasts".into()
            } else {
                "refreshing fails and the token has expired; retrying automatically".into()
            },
            "wait",
        ),
        Phase::ClientRejected { .. } => failing_health(
            detail
                .clone()
                .unwrap_or_else(|| "the authorization server rejected the client".into()),
            "fix_config",
        ),
        Phase::StoreUnavailable { .. } => Health {
            level: "unhealthy",
            summary: detail
                .clone()
                .unwrap_or_else(|| "the token store cannot be read".into()),
            action: "wait",
        },
        Phase::LoggedOut => Health {
            level: "unhealthy",
            summary: "logged out".into(),
            action: "login",
        },
        Phase::Idle => Health {
            level: if authenticated { "healthy" } else { "degraded" },
            summary: "not connected yet".into(),
            action: "reconnect",
        },
    };
    let last_flow_row = status
        .last_flow
        .as_ref()
        .and_then(|id| inputs.flows.iter().find(|f| &f.flow_id == id));
    let last_error = last_flow_row.filter(|f| f.state == "failed").map(|row| {
        let details = inputs.last_failure.map(|e| &e.details);
        let text = |key: &str| details.and_then(|d| d.get(key)).and_then(Value::as_str);
        LastError {
            endpoint: text("endpoint").map(String::from),
            status: details
                .and_then(|d| d.get("status"))
                .and_then(Value::as_u64),
            error: text("error")
                .map(String::from)
                .or_else(|| row.error.clone())
                .unwrap_or_else(|| "failed".into()),
            correlation_id: Some(row.flow_id.clone()),
            at: row.finished_at.map(rfc3339),
        }
    });
    let last_refresh_at = inputs
        .flows
        .iter()
        .find(|f| FlowKind::parse(&f.kind) == Some(FlowKind::Refresh) && f.state == "succeeded")
        .and_then(|f| f.finished_at)
        .map(rfc3339);
    ServerView {
        name: status.name.clone(),
        url: status.url.clone(),
        authenticated,
        oauth_status,
        token_expires_at: status.expires_at.map(rfc3339),
        health,
        phase: phase.name().to_string(),
        phase_detail: detail,
        active_flow: status
            .running_flow
            .as_ref()
            .zip(status.running_flow_kind)
            .map(|(id, kind)| ActiveFlow {
                correlation_id: id.clone(),
                kind,
                started_at: status.running_flow_started_at.map(rfc3339),
            }),
        last_flow_id: status.last_flow.clone(),
        last_refresh_at,
        next_refresh_at: status.next_refresh_at.map(rfc3339),
        refresh_failures: status.refresh_failures,
        retry_at: status.next_attempt_at.map(rfc3339),
        has_refresh_token: status.has_refresh_token,
        scopes: status
            .scope
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect(),
        last_error,
        login_link: inputs.login_link.filter(|_| *phase == Phase::Authorizing),
        device_login: status.device_login.as_ref().map(|d| DeviceLoginView {
            user_code: d.user_code.clone(),
            verification_uri: d.verification_uri.clone(),
            verification_uri_complete: d.verification_uri_complete.clone(),
            expires_at: rfc3339(d.expires_at),
        }),
        token_type: status.token_type.clone(),
        dpop_jkt: status.dpop_jkt.clone(),
        protocol_version: status.protocol_version.clone(),
        lease: inputs.lease.map(|row| lease_view(row, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::telemetry::flow_logger::FlowStep;
    use crate::upstream::state::LoginReason;

    fn status(phase: Phase) -> ServerStatus {
        ServerStatus {
            name: "srv".into(),
            url: "http://127.0.0.1:1/mcp".into(),
            server_key: "srv_0".into(),
            phase,
            detail: None,
            expires_at: None,
            has_token: false,
            has_refresh_token: false,
            scope: None,
            running_flow: None,
            running_flow_kind: None,
            running_flow_started_at: None,
            last_flow: None,
            timer_at: None,
            refresh_failures: 0,
            next_attempt_at: None,
            next_refresh_at: None,
            unsaved_token: false,
            timers_fired: 0,
            auth_url: None,
            device_login: None,
            token_type: None,
            dpop_jkt: None,
            protocol_version: None,
        }
    }

    fn inputs(now: i64) -> ViewInputs<'static> {
        ViewInputs {
            flows: &[],
            last_failure: None,
            login_link: None,
            lease: None,
            now,
        }
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
    }

    #[test]
    fn a_connected_server_with_a_valid_token_is_authenticated_and_healthy() {
        let mut s = status(Phase::Connected);
        s.expires_at = Some(100_000);
        s.has_token = true;
        s.has_refresh_token = true;
        s.scope = Some("read write".into());
        s.next_refresh_at = Some(80_000);
        let v = server_view(&s, inputs(40_000));
        assert!(v.authenticated);
        assert_eq!(v.oauth_status, "authenticated");
        assert_eq!(v.health.level, "healthy");
        assert_eq!(v.health.summary, "authorized; the token is valid for 60 s");
        assert_eq!(v.scopes, ["read", "write"]);
        assert_eq!(v.next_refresh_at, Some(rfc3339(80_000)));
        assert_eq!(v.retry_at, None);
    }

    #[test]
    fn an_expired_token_and_a_backoff_are_told_apart() {
        let mut s = status(Phase::Idle);
        s.expires_at = Some(10);
        s.has_token = true;
        s.has_refresh_token = true;
        let v = server_view(&s, inputs(20));
        assert!(!v.authenticated);
        assert_eq!(v.oauth_status, "expired");
        s.phase = Phase::BackingOff {
            attempt: 2,
            retry_at: 30,
            last_error: "server_error".into(),
        };
        s.next_attempt_at = s.phase.next_attempt_at();
        s.refresh_failures = 2;
        let v = server_view(&s, inputs(20));
        assert_eq!(v.oauth_status, "error");
        assert_eq!(v.retry_at, Some(rfc3339(30)));
        assert_eq!(v.next_refresh_at, None);
        assert_eq!(v.refresh_failures, 2);
        assert_eq!(v.health.level, "unhealthy");
    }

    #[test]
    fn a_failed_last_flow_gives_last_error_with_its_correlation_id() {
        let mut s = status(Phase::NeedsLogin {
            reason: LoginReason::NoRefreshToken,
            browser_at: None,
            refresh_at: None,
        });
        s.detail = Some("the refresh token was refused".into());
        s.last_flow = Some("f1".into());
        let flows = [FlowRow {
            flow_id: "f1".into(),
            server_name: "srv".into(),
            kind: "refresh".into(),
            state: "failed".into(),
            owner: "me".into(),
            started_at: 1,
            finished_at: Some(2),
            error: Some("db text".into()),
        }];
        let failure = TraceEntry {
            seq: 2,
            elapsed_ms: 1,
            step: FlowStep::Failed,
            details: serde_json::from_value(serde_json::json!({
                "endpoint": "token endpoint",
                "status": 400,
                "error": "invalid_grant"
            }))
            .unwrap(),
        };
        let v = server_view(
            &s,
            ViewInputs {
                flows: &flows,
                last_failure: Some(&failure),
                login_link: None,
                lease: None,
                now: 3,
            },
        );
        let e = v.last_error.unwrap();
        assert_eq!(e.correlation_id.as_deref(), Some("f1"));
        assert_eq!(e.status, Some(400));
        assert_eq!(e.endpoint.as_deref(), Some("token endpoint"));
        assert_eq!(e.error, "invalid_grant");
        assert_eq!(v.health.action, "login");
        assert_eq!(v.oauth_status, "error");
    }

    #[test]
    fn the_token_binding_and_the_protocol_version_are_shown() {
        let mut s = status(Phase::Connected);
        s.token_type = Some("DPoP".into());
        s.dpop_jkt = Some("jkt-1".into());
        s.protocol_version = Some("2026-07-28".into());
        let v = server_view(&s, inputs(1));
        assert_eq!(
            (
                v.token_type.as_deref(),
                v.dpop_jkt.as_deref(),
                v.protocol_version.as_deref()
            ),
            (Some("DPoP"), Some("jkt-1"), Some("2026-07-28"))
        );
        let v = server_view(&status(Phase::Idle), inputs(1));
        assert_eq!(
            (v.token_type, v.dpop_jkt, v.protocol_version),
            (None, None, None)
        );
    }

    #[test]
    fn a_waiting_device_login_shows_its_user_code() {
        let mut s = status(Phase::Authorizing);
        s.device_login = Some(crate::oauth::device::DevicePrompt {
            user_code: "BCDF-GHJK".into(),
            verification_uri: "https://as.example/device".into(),
            verification_uri_complete: Some("https://as.example/device?user_code=BCDF-GHJK".into()),
            expires_at: 1_700_000_000_123,
        });
        let d = server_view(&s, inputs(1)).device_login.unwrap();
        assert_eq!(d.user_code, "BCDF-GHJK");
        assert_eq!(d.verification_uri, "https://as.example/device");
        assert_eq!(
            d.verification_uri_complete.as_deref(),
            Some("https://as.example/device?user_code=BCDF-GHJK")
        );
        assert_eq!(d.expires_at, "2023-11-14T22:13:20.123Z");
        assert_eq!(
            server_view(&s, inputs(1)).health.summary,
            "waiting for the code BCDF-GHJK to be entered at https://as.example/device"
        );
        assert_eq!(
            server_view(&status(Phase::Authorizing), inputs(1)).device_login,
            None
        );
    }
}
