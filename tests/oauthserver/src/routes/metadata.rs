//! Discovery documents: RFC 8414 / OIDC authorization server metadata, RFC 9728 protected
//! resource metadata, and the JWKS.

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};

use super::{ConnectionKill, Intercept, fault_answer, intercept_if};
use crate::faults::{FaultKind, FaultTarget};
use crate::state::AppState;

async fn faulted(state: &AppState, target: FaultTarget, kill: &ConnectionKill) -> Option<Response> {
    // wrong_issuer concerns the authorization server metadata only.
    let applies: fn(FaultKind) -> bool = |k| k != FaultKind::WrongIssuer;
    fault_answer(state, target, kill, applies, "invalid_request").await
}

pub async fn authorization_server_metadata(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
) -> Response {
    let wrong_issuer = matches!(
        intercept_if(&state, FaultTarget::Metadata, &kill, |k| k
            == FaultKind::WrongIssuer)
        .await,
        Intercept::Shape(FaultKind::WrongIssuer)
    );
    if let Some(r) = faulted(&state, FaultTarget::Metadata, &kill).await {
        return r;
    }
    let issuer = state.issuer();
    let mut auth_methods = vec!["none", "client_secret_basic", "client_secret_post"];
    if state.config.private_key_jwt {
        auth_methods.push("private_key_jwt");
    }
    let mut doc = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "jwks_uri": format!("{}/jwks.json", state.base_url),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grant_types(&state.config),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": state.config.authorization_server_scopes(),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "authorization_response_iss_parameter_supported": true,
    });
    if state.config.dpop_enabled() {
        doc["dpop_signing_alg_values_supported"] = serde_json::json!(["ES256"]);
    }
    if state.config.dynamic_registration {
        doc["registration_endpoint"] = format!("{issuer}/register").into();
    }
    if state.config.device_grant {
        doc["device_authorization_endpoint"] = format!("{issuer}/device_authorization").into();
    }
    if state.config.private_key_jwt {
        doc["token_endpoint_auth_signing_alg_values_supported"] =
            serde_json::json!(crate::grants::SIGNING_ALGS);
    }
    if wrong_issuer {
        doc["issuer"] = format!("{issuer}/impostor").into();
    }
    Json(doc).into_response()
}

/// Every grant this server serves, as its metadata lists them.
fn grant_types(config: &crate::Config) -> Vec<&'static str> {
    use super::grants::{CLIENT_CREDENTIALS, JWT_BEARER, TOKEN_EXCHANGE};
    let mut grants = vec!["authorization_code", "refresh_token"];
    for (on, grant) in [
        (config.device_grant, super::device::GRANT_TYPE),
        (config.client_credentials, CLIENT_CREDENTIALS),
        (config.idp, TOKEN_EXCHANGE),
        (config.jwt_bearer, JWT_BEARER),
    ] {
        if on {
            grants.push(grant);
        }
    }
    grants
}

pub async fn protected_resource_metadata(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
) -> Response {
    if let Some(r) = faulted(&state, FaultTarget::Metadata, &kill).await {
        return r;
    }
    let mut doc = serde_json::json!({
        "resource": state.mcp_resource(),
        "authorization_servers": [state.resource_issuer()],
        "scopes_supported": state.config.all_scopes(),
        "bearer_methods_supported": ["header"],
        "resource_name": "OAuth test server MCP endpoint",
    });
    if state.config.dpop_enabled() {
        // RFC 9728 §2: the proof algorithms accepted, and whether only DPoP-bound tokens are.
        doc["dpop_signing_alg_values_supported"] = serde_json::json!(["ES256"]);
        doc["dpop_bound_access_tokens_required"] = state.config.dpop_required.into();
    }
    Json(doc).into_response()
}

pub async fn jwks(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
) -> Response {
    if let Some(r) = faulted(&state, FaultTarget::Jwks, &kill).await {
        return r;
    }
    Json(state.signer.jwks().clone()).into_response()
}
