//! The API's one JSON error shape, `{"error": {"code": "...", "message": "..."}}`, and the
//! mapping from a supervisor error to its status. It stands apart from the handlers so that
//! the request guard and the connection limits, which answer before any handler runs, use the
//! same shape without reaching into `routes`.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::json;

use crate::supervisor::SupervisorError;

/// Keys whose values a person must use as they are: an authorization URL carries `state`.
pub(super) const UNSCRUBBED: &[&str] = &["auth_url", "login_link"];

/// An answer with every known secret scrubbed (a server's echo in an error text, a view's
/// last error), the authorization links excepted.
pub(super) fn scrubbed(value: impl serde::Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(value).unwrap_or_default();
    crate::telemetry::secrets::scrub_json(&mut value, UNSCRUBBED);
    value
}

/// An error answer in the API's one shape, scrubbed of every known secret.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(scrubbed(
        json!({"error": {"code": code, "message": message.into()}}),
    ))
}

/// A failed flow, with the server's typed failure (`needs_login`, `backing_off`, ...) beside
/// the message, so clients decide on `failure.kind`, never on the text.
fn upstream_error(e: &SupervisorError) -> HttpResponse {
    HttpResponse::build(StatusCode::BAD_GATEWAY).json(scrubbed(json!({"error": {
        "code": "flow_failed",
        "message": e.to_string(),
        "correlation_id": e.flow_id(),
        "failure": e.failure(),
    }})))
}

/// The answer for a supervisor error: 404 unknown server, 502 failed flow, 500 store, 503
/// stopped, 400 bad input.
pub(super) fn supervisor_error(e: &SupervisorError) -> HttpResponse {
    match e {
        SupervisorError::UnknownServer { .. } => {
            error(StatusCode::NOT_FOUND, "unknown_server", e.to_string())
        }
        SupervisorError::Upstream(_) => upstream_error(e),
        SupervisorError::Store(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            format!("{e}; see the daemon's log"),
        ),
        SupervisorError::Stopped => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the daemon is shutting down",
        ),
        SupervisorError::InvalidInput(_) => {
            error(StatusCode::BAD_REQUEST, "invalid_input", e.to_string())
        }
    }
}
