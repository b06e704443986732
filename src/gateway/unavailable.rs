//! The answer a client gets while a server has no usable token: never a 401 (a client would
//! start its own OAuth against the gateway) and never a `WWW-Authenticate`, but 503 with
//! `Retry-After` and a JSON-RPC error whose `data` names the server's phase, what to do
//! (`login`, `wait`, `fix_config`), the login link while a login waits for a person, and the
//! flow's `correlation_id`. Pure: the handler and the stdio bridge both send it.

use serde_json::{Value, json};

use crate::supervisor::SupervisorError;
use crate::upstream::state::Failure;

/// The JSON-RPC error code of these answers (the implementation-defined server error range).
pub const UNAVAILABLE_CODE: i64 = -32000;

/// Why a request could not be served with a token, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Unavailable {
    /// The server's phase as the API names it (`needs_login`, `backing_off`, `refreshing`,
    /// `authorizing`, ...), or `refused` (the upstream refused a token fresh from a refresh).
    pub phase: &'static str,
    /// What an operator or user should do: `login`, `wait`, `fix_config`.
    pub action: &'static str,
    /// Why, in words; no secret (the supervisor's errors carry none, and it is scrubbed).
    pub reason: String,
    pub retry_after_secs: u64,
    pub correlation_id: Option<String>,
    /// The authorization URL of a login waiting for a person.
    pub login_link: Option<String>,
}

/// Seconds until `at` (unix ms), at least 1 and at most an hour.
fn seconds_until(at: i64, now: i64) -> u64 {
    (((at - now).max(0) + 999) / 1000).clamp(1, 3600) as u64
}

impl Unavailable {
    /// From what the supervisor answered when asked for a token (or told of a refusal).
    pub fn from_error(e: &SupervisorError, now: i64) -> Self {
        let (phase, action, retry) = match e.failure() {
            Some(Failure::NeedsLogin { .. }) => ("needs_login", "login", 30),
            Some(Failure::BackingOff { retry_at, .. }) => {
                ("backing_off", "wait", seconds_until(*retry_at, now))
            }
            Some(Failure::Retrying { retry_at, .. }) => {
                ("retrying", "wait", seconds_until(*retry_at, now))
            }
            Some(Failure::ClientRejected { .. }) => ("client_rejected", "fix_config", 60),
            Some(Failure::LoginFailed { .. }) => ("needs_login", "login", 30),
            Some(Failure::LoggedOut) => ("logged_out", "login", 30),
            Some(Failure::Forbidden { .. }) => ("forbidden", "fix_config", 60),
            Some(Failure::Store { .. }) => ("store_unavailable", "wait", 5),
            Some(Failure::Stopped) | None => match e {
                SupervisorError::Store(_) => ("store_unavailable", "wait", 5),
                _ => ("stopped", "wait", 5),
            },
        };
        Unavailable {
            phase,
            action,
            reason: e.to_string(),
            retry_after_secs: retry,
            correlation_id: e.flow_id().map(String::from),
            login_link: None,
        }
    }

    /// A flow ran longer than the request may wait: a login when a link waits for a person,
    /// else a refresh.
    pub fn still_waiting(login_link: Option<String>) -> Self {
        match login_link {
            Some(link) => Unavailable {
                phase: "authorizing",
                action: "login",
                reason: "a login is waiting for a person: open the login link".into(),
                retry_after_secs: 5,
                correlation_id: None,
                login_link: Some(link),
            },
            None => Unavailable {
                phase: "refreshing",
                action: "wait",
                reason: "the token is being refreshed".into(),
                retry_after_secs: 1,
                correlation_id: None,
                login_link: None,
            },
        }
    }

    /// The upstream refused a token that a refresh had just produced for this request.
    pub fn refused_again(correlation_id: Option<String>) -> Self {
        Unavailable {
            phase: "refused",
            action: "wait",
            reason: "the server refused the token it had just been given; the daemon is recovering"
                .into(),
            retry_after_secs: 5,
            correlation_id,
            login_link: None,
        }
    }

    /// The JSON-RPC error response for request `id` (null when the request had none).
    pub fn body(&self, server: &str, id: Option<&Value>) -> Value {
        let todo = match (self.action, &self.login_link) {
            (_, Some(link)) => format!("log in at {link}"),
            ("login", None) => format!(
                "log in: the daemon's page, POST /api/v1/servers/{server}/login, or \
                 `mcpproxy-oauth auth login {server}`"
            ),
            ("fix_config", None) => "fix the server's oauth settings in the config".into(),
            _ => format!("retry after {} s", self.retry_after_secs),
        };
        let mut message = format!(
            "mcpproxy-oauth: server {server:?} has no usable token ({}): {}; {todo}",
            self.phase, self.reason
        );
        message = crate::telemetry::secrets::scrub(&message).into_owned();
        let mut data = json!({
            "server": server,
            "phase": self.phase,
            "action": self.action,
            "retry_after_seconds": self.retry_after_secs,
            "correlation_id": self.correlation_id,
        });
        if let Some(link) = &self.login_link {
            data["login_link"] = json!(link);
        }
        json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": {"code": UNAVAILABLE_CODE, "message": message, "data": data},
        })
    }
}

/// The `id` of a JSON-RPC request body, if it is one request with an id.
pub fn request_id(body: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<Value>,
    }
    // Only an object: serde would also read a struct from an array (a batch).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Id>(body).ok()?.id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::actor::UpstreamError;
    use crate::upstream::state::LoginReason;

    fn upstream(failure: Failure) -> SupervisorError {
        SupervisorError::Upstream(UpstreamError {
            server: "gh".into(),
            failure,
            flow_id: Some("flow-1".into()),
        })
    }

    #[test]
    fn each_failure_names_its_phase_action_and_wait() {
        let now = 1_000_000;
        let backing = Unavailable::from_error(
            &upstream(Failure::BackingOff {
                retry_at: now + 2_500,
                last_error: "server_error".into(),
            }),
            now,
        );
        assert_eq!(
            (backing.phase, backing.action, backing.retry_after_secs),
            ("backing_off", "wait", 3)
        );
        assert_eq!(backing.correlation_id.as_deref(), Some("flow-1"));
        let past = Unavailable::from_error(
            &upstream(Failure::Retrying {
                retry_at: now - 10,
                until: now + 99,
                last_error: "x".into(),
            }),
            now,
        );
        assert_eq!(past.retry_after_secs, 1, "never 0 and never in the past");
        let login = Unavailable::from_error(
            &upstream(Failure::NeedsLogin {
                reason: LoginReason::NoStoredToken,
            }),
            now,
        );
        assert_eq!((login.phase, login.action), ("needs_login", "login"));
        let stopped = Unavailable::from_error(&SupervisorError::Stopped, now);
        assert_eq!(stopped.phase, "stopped");
    }

    #[test]
    fn the_body_is_a_json_rpc_error_for_the_request_with_what_to_do() {
        let mut waiting = Unavailable::still_waiting(Some("http://as/authorize?state=s".into()));
        waiting.correlation_id = Some("c-1".into());
        let body = waiting.body("gh", Some(&json!(7)));
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], UNAVAILABLE_CODE);
        assert_eq!(body["error"]["data"]["phase"], "authorizing");
        assert_eq!(
            body["error"]["data"]["login_link"],
            "http://as/authorize?state=s"
        );
        assert_eq!(body["error"]["data"]["correlation_id"], "c-1");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("log in at http://as/authorize"),
            "{message}"
        );
        let refreshing = Unavailable::still_waiting(None).body("gh", None);
        assert_eq!(refreshing["id"], Value::Null);
        assert!(
            refreshing["error"]["message"]
                .as_str()
                .unwrap()
                .contains("retry after 1 s")
        );
        let login = Unavailable::from_error(
            &upstream(Failure::NeedsLogin {
                reason: LoginReason::NoStoredToken,
            }),
            0,
        )
        .body("gh", None);
        assert!(
            login["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/api/v1/servers/gh/login")
        );
    }

    #[test]
    fn ids_are_read_from_single_requests_only() {
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":"a","method":"m"}"#),
            Some(json!("a"))
        );
        assert_eq!(request_id(br#"{"jsonrpc":"2.0","method":"notify"}"#), None);
        assert_eq!(request_id(br#"[{"id":1}]"#), None);
        assert_eq!(request_id(b"not json"), None);
    }
}
