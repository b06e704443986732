//! The HTTP surface: one module per endpoint family, plus the helpers they share (OAuth error
//! bodies and the fault interceptor that every endpoint consults first).

mod authorize;
mod control;
pub(crate) mod device;
pub(crate) mod grants;
mod mcp;
mod metadata;
mod register;
mod revoke;
mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::faults::{FaultKind, FaultTarget};
use crate::state::AppState;

/// Lets a handler close its own TCP connection (the `drop_connection` fault). The accept loop
/// gives every connection its own instance.
#[derive(Clone, Default)]
pub struct ConnectionKill(pub Arc<Notify>);

pub fn router(state: AppState) -> Router {
    let prefix = state.config.issuer_prefix();
    let mut as_routes = Router::new()
        .route("/authorize", get(authorize::start).post(authorize::decide))
        .route("/token", post(token::token))
        .route("/revoke", post(revoke::revoke));
    if state.config.dynamic_registration {
        as_routes = as_routes.route("/register", post(register::register));
    }
    if state.config.device_grant {
        as_routes = as_routes
            .route("/device_authorization", post(device::authorize))
            .route("/device", get(device::verify).post(device::verify_form));
    }
    let as_metadata = metadata::authorization_server_metadata;
    let mut app = Router::new()
        .route(
            &format!("/.well-known/oauth-authorization-server{prefix}"),
            get(as_metadata),
        )
        .route(
            &format!("/.well-known/openid-configuration{prefix}"),
            get(as_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::protected_resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(metadata::protected_resource_metadata),
        )
        .route("/jwks.json", get(metadata::jwks))
        .route("/mcp", post(mcp::post).get(mcp::get_not_allowed))
        .route(
            "/control/faults",
            post(control::arm_fault)
                .delete(control::clear_faults)
                .get(control::list_faults),
        )
        .route("/control/stats", get(control::stats))
        .route("/control/secrets", get(control::secrets))
        .route("/control/revoke-all", post(control::revoke_all))
        .route("/control/clock", post(control::advance_clock))
        .route("/control/id-token", post(control::id_token))
        .route("/control/idp-policy", post(control::idp_policy));
    if prefix.is_empty() {
        app = app.merge(as_routes);
    } else {
        // OIDC discovery's own path-aware form: the issuer followed by the well-known suffix.
        app = app
            .route(
                &format!("{prefix}/.well-known/openid-configuration"),
                get(as_metadata),
            )
            .nest(&prefix, as_routes);
    }
    app.with_state(state)
}

/// An OAuth error response body (RFC 6749 §5.2), never cached.
pub fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": code, "error_description": description});
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// What the fault interceptor decided for one request.
pub enum Intercept {
    /// Serve the request normally.
    Proceed,
    /// Serve it, but let the handler bend its answer this way (token shape or OAuth error).
    Shape(FaultKind),
    /// Answer with this instead.
    Respond(Response),
}

/// Fires the fault armed for `target`, if any, performing the generic kinds itself.
pub async fn intercept(state: &AppState, target: FaultTarget, kill: &ConnectionKill) -> Intercept {
    intercept_if(state, target, kill, |_| true).await
}

/// The answer to a request the fault armed for `target` (those kinds of it that `applies` to)
/// takes over: its own answer, or where it only shapes the answer an OAuth error, the fault's
/// code or else `fallback_code`. `None`: serve the request.
pub async fn fault_answer(
    state: &AppState,
    target: FaultTarget,
    kill: &ConnectionKill,
    applies: fn(FaultKind) -> bool,
    fallback_code: &str,
) -> Option<Response> {
    match intercept_if(state, target, kill, applies).await {
        Intercept::Proceed => None,
        Intercept::Respond(response) => Some(response),
        Intercept::Shape(kind) => Some(oauth_error(
            StatusCode::BAD_REQUEST,
            kind.oauth_error_code().unwrap_or(fallback_code),
            "injected fault",
        )),
    }
}

/// Like `intercept`, for an endpoint that some kinds of its target's faults do not concern.
pub async fn intercept_if(
    state: &AppState,
    target: FaultTarget,
    kill: &ConnectionKill,
    applies: fn(FaultKind) -> bool,
) -> Intercept {
    let fault = {
        let mut inner = state.lock();
        let fault = inner.faults.fire_if(target, applies);
        if fault.is_some() {
            let key = serde_json::to_value(target)
                .ok()
                .and_then(|v| v.as_str().map(String::from));
            *inner
                .stats
                .faults_fired
                .entry(key.unwrap_or_default())
                .or_default() += 1;
        }
        fault
    };
    let Some(fault) = fault else {
        return Intercept::Proceed;
    };
    match fault.kind {
        FaultKind::Slow => {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms.unwrap_or(2_000))).await;
            Intercept::Proceed
        }
        FaultKind::Hang => std::future::pending().await,
        FaultKind::DropConnection => {
            kill.0.notify_one();
            std::future::pending().await
        }
        FaultKind::RateLimited => {
            let retry_after = fault.delay_ms.unwrap_or(1_000).div_ceil(1_000).max(1);
            let mut response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "rate limited (injected fault)",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            Intercept::Respond(response)
        }
        FaultKind::MalformedJson => Intercept::Respond(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"access_token\": \"trunc",
            )
                .into_response(),
        ),
        FaultKind::ServerError if target != FaultTarget::Authorize => {
            Intercept::Respond(oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "injected fault",
            ))
        }
        FaultKind::TemporarilyUnavailable if target != FaultTarget::Authorize => {
            Intercept::Respond(oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "injected fault",
            ))
        }
        FaultKind::HtmlForbidden => Intercept::Respond(
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<html><head><title>403 Forbidden</title></head><body><h1>Access denied</h1><p>Request blocked by the firewall (injected fault).</p></body></html>",
            )
                .into_response(),
        ),
        kind => Intercept::Shape(kind),
    }
}
