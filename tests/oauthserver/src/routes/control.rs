//! The control API, which exists only in the test server: arm and clear faults, read counters
//! and every secret issued, revoke everything, move the clock, issue an ID token (the IdP's
//! SSO login), set the IdP's policy.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::faults::Fault;
use crate::grants::IdpPolicy;
use crate::state::{AppState, RefreshStatus};

pub async fn arm_fault(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid fault: {e}")).into_response(),
    };
    if let Err(e) = fault.validate() {
        return (StatusCode::BAD_REQUEST, e).into_response();
    }
    state.lock().faults.arm(fault.clone());
    (StatusCode::CREATED, Json(fault)).into_response()
}

pub async fn clear_faults(State(state): State<AppState>) -> StatusCode {
    state.lock().faults.clear();
    StatusCode::NO_CONTENT
}

pub async fn list_faults(State(state): State<AppState>) -> Json<Vec<Fault>> {
    Json(state.lock().faults.list())
}

pub async fn stats(State(state): State<AppState>) -> Response {
    Json(state.lock().stats.clone()).into_response()
}

pub async fn secrets(State(state): State<AppState>) -> Response {
    Json(state.lock().secrets.clone()).into_response()
}

pub async fn revoke_all(State(state): State<AppState>) -> StatusCode {
    let mut inner = state.lock();
    let families: Vec<u64> = inner.refresh_tokens.values().map(|r| r.family).collect();
    for family in families {
        inner.revoke_family(family);
    }
    for record in inner.refresh_tokens.values_mut() {
        record.status = RefreshStatus::Revoked;
    }
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
pub struct Advance {
    advance_ms: u64,
}

pub async fn advance_clock(
    State(state): State<AppState>,
    Json(advance): Json<Advance>,
) -> StatusCode {
    state.advance_clock(Duration::from_millis(advance.advance_ms));
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
pub struct IdTokenRequest {
    client_id: String,
    #[serde(default = "default_subject")]
    subject: String,
}

fn default_subject() -> String {
    super::token::DEMO_USER.into()
}

/// `POST /control/id-token`: what an SSO login at this IdP would hand the client.
pub async fn id_token(
    State(state): State<AppState>,
    Json(asked): Json<IdTokenRequest>,
) -> Response {
    let mut inner = state.lock();
    let id_token =
        super::grants::issue_id_token(&state, &mut inner, &asked.client_id, &asked.subject);
    Json(serde_json::json!({"id_token": id_token})).into_response()
}

/// `POST /control/idp-policy`: `"allow_all"`, `"deny_all"` or `{"allow_audiences": [...]}`.
pub async fn idp_policy(
    State(state): State<AppState>,
    Json(policy): Json<IdpPolicy>,
) -> StatusCode {
    state.lock().idp_policy = policy;
    StatusCode::NO_CONTENT
}
