//! `POST /register`: RFC 7591 dynamic client registration for public and confidential clients,
//! `private_key_jwt` clients (with `jwks` or `jwks_uri`) among them when enabled.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{ConnectionKill, fault_answer, oauth_error};
use crate::faults::FaultTarget;
use crate::grants::KeySource;
use crate::state::{AppState, AuthMethod, Client, random_token};

pub async fn register(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
    body: Bytes,
) -> Response {
    let fault = fault_answer(
        &state,
        FaultTarget::Register,
        &kill,
        |_| true,
        "invalid_client_metadata",
    );
    if let Some(response) = fault.await {
        return response;
    }
    let invalid = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", d);
    let Ok(serde_json::Value::Object(mut metadata)) =
        serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return invalid("the body must be a JSON object of client metadata");
    };
    let grant_types: Vec<String> = match metadata.get("grant_types") {
        None => vec!["authorization_code".into()],
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(g) => g,
            Err(_) => return invalid("grant_types must be an array of strings"),
        },
    };
    let redirect_uris: Vec<String> = match metadata.get("redirect_uris") {
        None => Vec::new(),
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(uris) => uris,
            Err(_) => return invalid("redirect_uris must be an array of strings"),
        },
    };
    if grant_types.iter().any(|g| g == "authorization_code") && redirect_uris.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "redirect_uris is required for authorization_code",
        );
    }
    if let Some(bad) = redirect_uris
        .iter()
        .find(|u| !matches!(url::Url::parse(u), Ok(p) if p.fragment().is_none()))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            &format!("{bad:?} is not an absolute URI without fragment"),
        );
    }
    // RFC 7591 §2: the default method is client_secret_basic.
    let method_name = metadata
        .get("token_endpoint_auth_method")
        .and_then(|v| v.as_str())
        .unwrap_or("client_secret_basic")
        .to_string();
    let Some(method) = AuthMethod::parse(&method_name)
        .filter(|m| *m != AuthMethod::PrivateKeyJwt || state.config.private_key_jwt)
    else {
        return invalid(&format!(
            "token_endpoint_auth_method {method_name:?} is not supported"
        ));
    };
    let keys = match client_keys(&metadata) {
        Ok(keys) => keys,
        Err(e) => return invalid(&e),
    };
    if method == AuthMethod::PrivateKeyJwt && keys.is_none() {
        return invalid("private_key_jwt needs the client's public keys: jwks or jwks_uri");
    }

    let client_id = random_token("client_");
    let client_secret = matches!(
        method,
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
    )
    .then(|| random_token("secret_"));
    let now_secs = state.now_ms() / 1000;
    {
        let mut inner = state.lock();
        inner.stats.registrations += 1;
        inner.stats.registered_application_types.push(
            metadata
                .get("application_type")
                .and_then(|v| v.as_str())
                .map(String::from),
        );
        if let Some(secret) = &client_secret {
            inner.secrets.client_secrets.push(secret.clone());
        }
        inner.clients.insert(
            client_id.clone(),
            Client {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                auth_methods: vec![method],
                redirect_uris,
                client_name: metadata
                    .get("client_name")
                    .and_then(|v| v.as_str())
                    .map(String::from),
                keys,
            },
        );
    }
    // The response echoes the registered metadata with the server's additions (RFC 7591 §3.2.1).
    metadata.insert("client_id".into(), client_id.into());
    metadata.insert("client_id_issued_at".into(), now_secs.into());
    metadata.insert("token_endpoint_auth_method".into(), method_name.into());
    metadata.insert("grant_types".into(), grant_types.into());
    metadata
        .entry("response_types")
        .or_insert_with(|| serde_json::json!(["code"]));
    if let Some(secret) = client_secret {
        metadata.insert("client_secret".into(), secret.into());
        metadata.insert("client_secret_expires_at".into(), 0.into());
    }
    (
        StatusCode::CREATED,
        Json(serde_json::Value::Object(metadata)),
    )
        .into_response()
}

/// The client's public keys (RFC 7591 §2): `jwks` (a JWK Set) or `jwks_uri`, never both.
fn client_keys(
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<KeySource>, String> {
    match (metadata.get("jwks"), metadata.get("jwks_uri")) {
        (Some(_), Some(_)) => Err("jwks and jwks_uri must not both be given (RFC 7591 §2)".into()),
        (Some(jwks), None) if jwks.get("keys").is_some_and(|k| k.is_array()) => {
            Ok(Some(KeySource::Jwks(jwks.clone())))
        }
        (Some(_), None) => Err("jwks must be a JWK Set: {\"keys\": [...]}".into()),
        (None, Some(serde_json::Value::String(uri))) if url::Url::parse(uri).is_ok() => {
            Ok(Some(KeySource::JwksUri(uri.clone())))
        }
        (None, Some(_)) => Err("jwks_uri must be an absolute URL".into()),
        (None, None) => Ok(None),
    }
}
