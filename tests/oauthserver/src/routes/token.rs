//! `POST /token`: the `authorization_code` and `refresh_token` grants, with client
//! authentication as registered, single-use codes, PKCE S256 verification, and refresh token
//! rotation where reuse of a rotated token revokes its whole family (as real servers do). The
//! grants without a user (client credentials, token exchange, jwt-bearer) are in `grants.rs`,
//! the device grant in `device.rs`.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::authorize::check_resource;
use super::{ConnectionKill, Intercept, grants, intercept, oauth_error};
use crate::dpop::{Refusal, Refused, Role};
use crate::faults::{FaultKind, FaultTarget};
use crate::jwt::AccessClaims;
use crate::state::{
    AppState, AuthMethod, Client, Inner, RefreshRecord, RefreshStatus, random_token,
};

type Params = HashMap<String, String>;

/// The person every interactive grant is for (the server approves without a login).
pub(super) const DEMO_USER: &str = "demo-user";

/// An OAuth error decided while holding the state lock, turned into a response after it.
pub(super) struct Denied {
    pub(super) code: &'static str,
    pub(super) description: String,
}

pub(super) fn deny(code: &'static str, description: impl Into<String>) -> Denied {
    Denied {
        code,
        description: description.into(),
    }
}

/// The `echo_secrets` fault: every secret the request carried, sent back in free text and
/// under keys no client knows, with terminal escapes and a forged log line.
fn echo_secrets(headers: &HeaderMap, form: &Params) -> Response {
    let mut seen: Vec<String> = [
        "refresh_token",
        "code",
        "code_verifier",
        "client_secret",
        "client_assertion",
        "subject_token",
        "assertion",
    ]
    .iter()
    .filter_map(|name| form.get(*name).cloned())
    .collect();
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        seen.push(auth.to_string());
    }
    let joined = seen.join(" ");
    let body = serde_json::json!({
        "error": "server_error",
        "error_description": format!("could not refresh {joined}\u{1b}[2J\r\nINFO forged log line"),
        "presented": seen,
        "debugEcho": {"lastRequest": joined},
    });
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

pub async fn token(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    Form(form): Form<Params>,
) -> Response {
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    {
        let mut inner = state.lock();
        *inner
            .stats
            .token_requests
            .entry(grant_type.clone())
            .or_default() += 1;
        if let Some(resource) = form.get("resource") {
            inner.stats.resources_received.push(resource.clone());
        }
        if let Some(verifier) = form.get("code_verifier") {
            inner.secrets.code_verifiers.push(verifier.clone());
        }
        for name in ["client_assertion", "subject_token", "assertion"] {
            inner.secrets.assertions.extend(form.get(name).cloned());
        }
    }
    let target = match grant_type.as_str() {
        "refresh_token" => FaultTarget::Refresh,
        grants::CLIENT_CREDENTIALS => FaultTarget::ClientCredentials,
        grants::TOKEN_EXCHANGE => FaultTarget::TokenExchange,
        grants::JWT_BEARER => FaultTarget::JwtBearer,
        _ => FaultTarget::Token,
    };
    let shape = match intercept(&state, target, &kill).await {
        Intercept::Proceed => None,
        Intercept::Respond(response) => return response,
        Intercept::Shape(kind) => Some(kind),
    };
    if shape == Some(FaultKind::EchoSecrets) {
        return echo_secrets(&headers, &form);
    }

    // A jwks_uri is fetched before the state lock is taken.
    let keys = grants::prefetch_keys(&state, &grant_type, &form).await;
    let mut inner = state.lock();
    let jkt = match dpop_proof(&state, &mut inner, &headers) {
        Ok(jkt) => jkt,
        Err(response) => return *response,
    };
    let outcome = if grant_type == grants::JWT_BEARER && state.config.jwt_bearer {
        // Client authentication is the grant's to decide: a workload presents none.
        grants::jwt_bearer_grant(
            &state,
            &mut inner,
            &headers,
            &form,
            &keys,
            shape,
            jkt.as_deref(),
        )
    } else {
        let authenticated = grants::authenticate_any(&state, &mut inner, &headers, &form, &keys);
        authenticated.and_then(|client| {
            if let Some(code) = shape.and_then(FaultKind::oauth_error_code) {
                return Err(deny(code, "injected fault"));
            }
            let grant = Grant(&client, &form, shape, jkt.as_deref());
            match grant_type.as_str() {
                "authorization_code" => authorization_code_grant(&state, &mut inner, grant),
                "refresh_token" => refresh_token_grant(&state, &mut inner, grant),
                super::device::GRANT_TYPE if state.config.device_grant => {
                    super::device::device_code_grant(&state, &mut inner, grant)
                }
                grants::CLIENT_CREDENTIALS if state.config.client_credentials => {
                    grants::client_credentials_grant(&state, &mut inner, grant)
                }
                grants::TOKEN_EXCHANGE if state.config.idp => {
                    grants::token_exchange_grant(&state, &mut inner, &client, &form, shape)
                }
                "" => Err(deny("invalid_request", "grant_type is required")),
                other => Err(deny(
                    "unsupported_grant_type",
                    format!("grant_type {other:?} is not supported"),
                )),
            }
        })
    };
    match outcome {
        Ok(body) => {
            let nonce = inner.dpop_nonce_for(&state.config, Role::Token, state.now_ms());
            drop(inner);
            let mut response = axum::Json(body).into_response();
            let h = response.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            if let Some(nonce) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                h.insert("dpop-nonce", nonce);
            }
            response
        }
        Err(Denied { code, description }) => {
            inner.count_token_error(code);
            drop(inner);
            if code == "invalid_client" {
                let mut response = oauth_error(StatusCode::UNAUTHORIZED, code, &description);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"oauth-test-server\""),
                );
                response
            } else {
                oauth_error(StatusCode::BAD_REQUEST, code, &description)
            }
        }
    }
}

/// The token request's DPoP proof (RFC 9449 §5), when the server speaks DPoP: `Ok(Some(jkt))`
/// binds what is issued to that key, `Ok(None)` issues Bearer tokens. A refused proof is
/// answered here: `use_dpop_nonce` with a `DPoP-Nonce` header (§8), else
/// `invalid_dpop_proof`; so is a missing proof when DPoP is required.
fn dpop_proof(
    state: &AppState,
    inner: &mut Inner,
    headers: &HeaderMap,
) -> Result<Option<String>, Box<Response>> {
    if !state.config.dpop_enabled() {
        return Ok(None);
    }
    let now = state.now_ms();
    let token_url = format!("{}/token", state.issuer());
    let refused =
        match inner.check_dpop(&state.config, headers, Role::Token, "POST", &token_url, now) {
            Ok(Some(proof)) => return Ok(Some(proof.jkt)),
            Ok(None) if !state.config.dpop_required => return Ok(None),
            Ok(None) => {
                inner.count_dpop_refusal(Refusal::Missing);
                (
                    "invalid_dpop_proof",
                    "this server requires a DPoP proof".to_string(),
                )
            }
            Err(Refused {
                why: Refusal::Nonce,
                description,
            }) => ("use_dpop_nonce", description),
            Err(Refused { description, .. }) => ("invalid_dpop_proof", description),
        };
    inner.count_token_error(refused.0);
    let nonce = (refused.0 == "use_dpop_nonce")
        .then(|| inner.dpop_nonce_for(&state.config, Role::Token, now))
        .flatten();
    let mut response = oauth_error(StatusCode::BAD_REQUEST, refused.0, &refused.1);
    if let Some(nonce) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("dpop-nonce", nonce);
    }
    Err(Box::new(response))
}

/// Client authentication (RFC 6749 §2.3): HTTP Basic, secret in the body, or a public client
/// naming itself. The method used must be one the client registered. A client assertion
/// (`private_key_jwt`) is `grants::authenticate_any`'s, at the token endpoint only.
pub(super) fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
    form: &Params,
) -> Result<Client, Denied> {
    if form.contains_key("client_assertion") {
        return Err(deny(
            "invalid_client",
            "private_key_jwt client authentication is accepted at the token endpoint only",
        ));
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .map(|encoded| {
            parse_basic(encoded.trim())
                .ok_or_else(|| deny("invalid_client", "malformed Basic credentials"))
        });
    let (method, client_id, secret) = match basic {
        Some(Err(denied)) => return Err(denied),
        Some(Ok((id, secret))) => {
            if form.get("client_id").is_some_and(|body_id| *body_id != id) {
                return Err(deny(
                    "invalid_request",
                    "client_id in the body differs from the Basic credentials",
                ));
            }
            (AuthMethod::ClientSecretBasic, id, Some(secret))
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (
                AuthMethod::ClientSecretPost,
                id.clone(),
                Some(secret.clone()),
            ),
            (Some(id), None) => (AuthMethod::None, id.clone(), None),
            (None, _) => {
                return Err(deny(
                    "invalid_client",
                    "no client authentication and no client_id",
                ));
            }
        },
    };
    let Some(client) = inner.clients.get(&client_id) else {
        return Err(deny(
            "invalid_client",
            format!("unknown client {client_id:?}"),
        ));
    };
    if !client.auth_methods.contains(&method) {
        return Err(deny(
            "invalid_client",
            format!(
                "client authenticated with {method:?} but is registered for {:?}",
                client.auth_methods
            ),
        ));
    }
    if client.client_secret.is_some() && client.client_secret != secret {
        return Err(deny("invalid_client", "client authentication failed"));
    }
    Ok(client.clone())
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, as RFC 6749 §2.3.1 specifies.
fn parse_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// What a grant at the token endpoint works from: the authenticated client, the form, the
/// fault that shapes the answer, and the thumbprint of the request's DPoP proof (the tokens
/// are bound to it, RFC 9449 §5).
#[derive(Clone, Copy)]
pub(super) struct Grant<'a>(
    pub &'a Client,
    pub &'a Params,
    pub Option<FaultKind>,
    pub Option<&'a str>,
);

/// The form's `name`, which the grant requires.
pub(super) fn required<'a>(form: &'a Params, name: &str) -> Result<&'a String, Denied> {
    form.get(name)
        .ok_or_else(|| deny("invalid_request", format!("{name} is required")))
}

/// The token request's `resource`: the one `granted` (when both name one; else `differs`
/// says why not) and one this server serves.
fn requested_resource(
    state: &AppState,
    form: &Params,
    granted: Option<&String>,
    differs: &str,
) -> Result<Option<String>, Denied> {
    let resource = form.get("resource").cloned();
    if let (Some(granted), Some(asked)) = (granted, &resource)
        && granted != asked
    {
        return Err(deny("invalid_target", differs));
    }
    check_resource(state, resource.as_deref()).map_err(|d| deny("invalid_target", d))?;
    Ok(resource)
}

fn authorization_code_grant(
    state: &AppState,
    inner: &mut Inner,
    asked: Grant,
) -> Result<Value, Denied> {
    let Grant(client, form, shape, jkt) = asked;
    let code = required(form, "code")?;
    let now = state.now_ms();
    let grant = inner
        .codes
        .get(code)
        .cloned()
        .ok_or_else(|| deny("invalid_grant", "unknown authorization code"))?;
    if let Some(family) = grant.redeemed_family {
        // RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for.
        inner.revoke_family(family);
        return Err(deny(
            "invalid_grant",
            "authorization code was already used; its tokens are revoked",
        ));
    }
    if now >= grant.expires_at_ms {
        return Err(deny("invalid_grant", "authorization code expired"));
    }
    let request = &grant.request;
    if request.client_id != client.client_id {
        return Err(deny(
            "invalid_grant",
            "authorization code was issued to another client",
        ));
    }
    if form.get("redirect_uri") != Some(&request.redirect_uri) {
        return Err(deny(
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        ));
    }
    let verifier = form
        .get("code_verifier")
        .ok_or_else(|| deny("invalid_request", "code_verifier is required (PKCE)"))?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if challenge != request.code_challenge {
        return Err(deny(
            "invalid_grant",
            "PKCE verification failed: code_verifier does not match",
        ));
    }
    let differs = "resource differs from the authorization request";
    let resource = requested_resource(state, form, request.resource.as_ref(), differs)?;
    if shape == Some(FaultKind::MissingAccessToken) {
        return Ok(missing_access_token_body(state));
    }
    let family = inner.next_family;
    inner.next_family += 1;
    if let Some(g) = inner.codes.get_mut(code) {
        g.redeemed_family = Some(family);
    }
    let resource = resource.or_else(|| request.resource.clone());
    Ok(issue_tokens(
        state,
        inner,
        family,
        client,
        DEMO_USER,
        &request.scope.clone(),
        resource,
        shape,
        true,
        jkt,
    ))
}

fn refresh_token_grant(state: &AppState, inner: &mut Inner, grant: Grant) -> Result<Value, Denied> {
    let Grant(client, form, shape, jkt) = grant;
    let presented = required(form, "refresh_token")?;
    let record = inner
        .refresh_tokens
        .get(presented)
        .cloned()
        .ok_or_else(|| deny("invalid_grant", "unknown refresh token"))?;
    if record.client_id != client.client_id {
        return Err(deny(
            "invalid_grant",
            "refresh token was issued to another client",
        ));
    }
    match record.status {
        RefreshStatus::Active => {}
        RefreshStatus::Rotated => {
            inner.stats.refresh_token_reuse += 1;
            inner.revoke_family(record.family);
            return Err(deny(
                "invalid_grant",
                "refresh token was already used; the whole token family is revoked",
            ));
        }
        RefreshStatus::Revoked => return Err(deny("invalid_grant", "refresh token was revoked")),
    }
    if state.now_ms() >= record.expires_at_ms {
        return Err(deny("invalid_grant", "refresh token expired"));
    }
    // RFC 9449 §5: a refresh token bound to a key is refreshed only with a proof of that key.
    if let Some(bound) = &record.jkt
        && jkt != Some(bound.as_str())
    {
        let why = if jkt.is_some() {
            Refusal::KeyMismatch
        } else {
            Refusal::Missing
        };
        inner.count_dpop_refusal(why);
        return Err(deny(
            "invalid_dpop_proof",
            "the refresh token is bound to a DPoP key; present a proof of that key",
        ));
    }
    let scope = match form.get("scope") {
        Some(asked) => {
            let granted: Vec<&str> = record.scope.split_whitespace().collect();
            if let Some(extra) = asked.split_whitespace().find(|s| !granted.contains(s)) {
                return Err(deny(
                    "invalid_scope",
                    format!("scope {extra:?} was not granted originally"),
                ));
            }
            asked.clone()
        }
        None => record.scope.clone(),
    };
    let differs = "resource differs from the original grant";
    requested_resource(state, form, record.resource.as_ref(), differs)?;
    if shape == Some(FaultKind::MissingAccessToken) {
        return Ok(missing_access_token_body(state));
    }
    let rotate = state.config.rotate_refresh_tokens;
    if rotate && let Some(r) = inner.refresh_tokens.get_mut(presented) {
        r.status = RefreshStatus::Rotated;
    }
    Ok(issue_tokens(
        state,
        inner,
        record.family,
        client,
        DEMO_USER,
        &scope,
        record.resource.clone(),
        shape,
        rotate,
        jkt,
    ))
}

/// Whole seconds announced as `expires_in`: the configured TTL rounded up (at least 1).
fn announced_lifetime_secs(state: &AppState) -> u64 {
    (state.config.access_token_ttl.as_millis() as u64)
        .div_ceil(1000)
        .max(1)
}

pub(super) fn missing_access_token_body(state: &AppState) -> serde_json::Value {
    serde_json::json!({"token_type": "Bearer", "expires_in": announced_lifetime_secs(state)})
}

/// Issues an access token (and a refresh token when asked), bound to the DPoP key `jkt` when
/// there is one: `cnf.jkt` in the access token, `token_type: DPoP`, and the refresh token bound
/// to the same key (RFC 9449 §5, §6).
#[allow(clippy::too_many_arguments)]
pub(super) fn issue_tokens(
    state: &AppState,
    inner: &mut Inner,
    family: u64,
    client: &Client,
    subject: &str,
    scope: &str,
    resource: Option<String>,
    shape: Option<FaultKind>,
    new_refresh_token: bool,
    jkt: Option<&str>,
) -> serde_json::Value {
    let now_ms = state.now_ms();
    let lifetime = announced_lifetime_secs(state);
    // exp rounds up: the token is never refused before its announced lifetime has passed.
    let mut exp = (now_ms as u64 + lifetime * 1000).div_ceil(1000);
    let mut expires_in = state.config.announced_expires_in.unwrap_or(lifetime);
    match shape {
        Some(FaultKind::ExpiresInZero) => {
            exp = now_ms as u64 / 1000;
            expires_in = 0;
        }
        Some(FaultKind::AlreadyExpired) => exp = now_ms as u64 / 1000 - 60,
        _ => {}
    }
    let claims = AccessClaims {
        iss: state.issuer(),
        sub: subject.to_string(),
        aud: resource.clone().unwrap_or_else(|| state.mcp_resource()),
        exp,
        iat: now_ms as u64 / 1000,
        jti: random_token("jti_"),
        client_id: client.client_id.clone(),
        scope: scope.to_string(),
    };
    let access_token = match jkt {
        Some(jkt) => {
            inner.stats.dpop_bound_tokens += 1;
            state.signer.sign(&BoundClaims {
                claims: &claims,
                cnf: serde_json::json!({"jkt": jkt}),
            })
        }
        None => state.signer.sign(&claims),
    };
    inner.secrets.access_tokens.push(access_token.clone());
    inner
        .family_access_jtis
        .entry(family)
        .or_default()
        .push(claims.jti);

    let mut body = serde_json::json!({
        "access_token": access_token,
        "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": expires_in,
    });
    if !scope.is_empty() {
        body["scope"] = scope.into();
    }
    if shape == Some(FaultKind::ExpiresInMissing) {
        body.as_object_mut().map(|o| o.remove("expires_in"));
    }
    if state.config.issue_refresh_tokens && new_refresh_token {
        let refresh_token = random_token("rt_");
        inner.secrets.refresh_tokens.push(refresh_token.clone());
        inner.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshRecord {
                family,
                client_id: client.client_id.clone(),
                scope: scope.to_string(),
                resource,
                expires_at_ms: now_ms + state.config.refresh_token_ttl.as_millis() as i64,
                status: RefreshStatus::Active,
                jkt: jkt.map(String::from),
            },
        );
        body["refresh_token"] = refresh_token.into();
    }
    body
}

/// The claims of a DPoP-bound access token: the usual ones plus `cnf` (RFC 9449 §6.1).
#[derive(serde::Serialize)]
struct BoundClaims<'a> {
    #[serde(flatten)]
    claims: &'a AccessClaims,
    cnf: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::parse_basic;
    use base64::Engine;

    #[test]
    fn basic_credentials_are_form_urldecoded() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%3Aclient:s%2Bcret");
        assert_eq!(
            parse_basic(&encoded),
            Some(("my:client".into(), "s+cret".into()))
        );
        assert_eq!(parse_basic("!!!"), None);
    }
}
