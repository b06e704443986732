//! `POST /revoke`: RFC 7009 token revocation. Revoking a refresh token revokes its family and
//! the access tokens issued in it; the answer is 200 whether or not the token was known.

use std::collections::HashMap;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::oauth_error;
use super::token::authenticate;
use crate::state::AppState;

pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut inner = state.lock();
    let client = match authenticate(&inner, &headers, &form) {
        Ok(client) => client,
        Err(_) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    };
    let Some(token) = form.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    inner.stats.revocations += 1;
    if let Some(record) = inner.refresh_tokens.get(token).cloned() {
        if record.client_id == client.client_id {
            inner.revoke_family(record.family);
        }
    } else if let Some(claims) = state.signer.claims_ignoring_expiry(token)
        && claims.client_id == client.client_id
    {
        inner.revoked_jtis.insert(claims.jti);
    }
    StatusCode::OK.into_response()
}
