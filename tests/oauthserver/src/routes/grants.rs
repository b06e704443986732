//! The grants without a user at the token endpoint, and the client authentication they bring:
//!
//! - `client_credentials` (RFC 6749 §4.4) for confidential clients, no refresh token;
//! - `private_key_jwt` client authentication (RFC 7523 §2.2): `iss` = `sub` = the client,
//!   `aud` the issuer or the token endpoint, `exp` in the future (wall clock: the client signs
//!   with the real clock), a single-use `jti`, signed by a key of the client's `jwks` or
//!   `jwks_uri`;
//! - the enterprise IdP's RFC 8693 token exchange: an ID token this server issued (or one of
//!   its refresh tokens) for an ID-JAG (SEP-990: a JWT with `typ: oauth-id-jag+jwt`, `aud` the
//!   resource authorization server, `client_id` the client there, `resource`, `scope`), under
//!   the IdP's policy (`access_denied` otherwise);
//! - the RFC 7523 `jwt-bearer` grant, no refresh token: an ID-JAG of a trusted IdP from the
//!   client it names (authenticated as registered; single use), or a workload JWT (a
//!   Kubernetes projected token, a SPIFFE JWT-SVID) of a trusted platform, no client needed
//!   (reusable until it expires, as platforms hand out one token for its whole life).
//!
//! ID tokens and ID-JAGs come from test servers and are checked against this server's clock
//! (advance the IdP's and the authorization server's clocks together); client assertions and
//! workload JWTs come from parties on the real clock and are checked against it.

use std::collections::HashMap;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::authorize::check_resource;
use super::token::{Denied, Grant, authenticate, deny, issue_tokens, missing_access_token_body};
use crate::dpop::wall_clock_s;
use crate::faults::FaultKind;
use crate::grants::{JwtRefusal, Refused, audience_matches, claim, expiry_s, peek, verify};
use crate::state::{AppState, AuthMethod, Client, Inner, random_token};

pub use crate::grants::{
    CLIENT_ASSERTION_TYPE, CLIENT_CREDENTIALS, ID_JAG_TOKEN_TYPE, ID_JAG_TYP, ID_TOKEN_TYPE,
    JWT_BEARER, REFRESH_TOKEN_TYPE, TOKEN_EXCHANGE,
};

type Params = HashMap<String, String>;

/// Public keys fetched before the state lock is taken (a `jwks_uri` is an HTTP request): the
/// client's, for a client assertion, and the signer's, for a jwt-bearer assertion.
#[derive(Default)]
pub(super) struct Prefetched {
    client_keys: Option<Result<Value, String>>,
    issuer_keys: Option<Result<Value, String>>,
}

/// Resolves the keys a request will need. Unknown clients and issuers resolve to nothing; the
/// grant refuses them with the state in hand.
pub(super) async fn prefetch_keys(state: &AppState, grant_type: &str, form: &Params) -> Prefetched {
    let mut prefetched = Prefetched::default();
    if let Some(assertion) = form.get("client_assertion") {
        let client_id = form.get("client_id").cloned().or_else(|| {
            peek(assertion).and_then(|(_, claims)| claim(&claims, "iss").map(String::from))
        });
        let source = client_id.and_then(|id| {
            let inner = state.lock();
            inner.clients.get(&id).and_then(|c| c.keys.clone())
        });
        if let Some(source) = source {
            prefetched.client_keys = Some(source.resolve().await);
        }
    }
    if grant_type == JWT_BEARER
        && let Some(assertion) = form.get("assertion")
        && let Some((_, claims)) = peek(assertion)
        && let Some(iss) = claim(&claims, "iss")
    {
        let source = {
            let inner = state.lock();
            inner
                .trusted_idps
                .iter()
                .chain(&inner.trusted_workload_issuers)
                .find(|t| t.issuer == iss)
                .map(|t| t.keys.clone())
        };
        if let Some(source) = source {
            prefetched.issuer_keys = Some(source.resolve().await);
        }
    }
    prefetched
}

/// Client authentication, `private_key_jwt` included: a request with a `client_assertion` is
/// checked here, any other by `token::authenticate`.
pub(super) fn authenticate_any(
    state: &AppState,
    inner: &mut Inner,
    headers: &HeaderMap,
    form: &Params,
    keys: &Prefetched,
) -> Result<Client, Denied> {
    if form.contains_key("client_assertion") {
        return authenticate_assertion(state, inner, headers, form, keys).map_err(|(why, d)| {
            *inner
                .stats
                .client_assertion_refusals
                .entry(why.as_str().to_string())
                .or_default() += 1;
            deny("invalid_client", d)
        });
    }
    authenticate(inner, headers, form)
}

fn authenticate_assertion(
    state: &AppState,
    inner: &mut Inner,
    headers: &HeaderMap,
    form: &Params,
    keys: &Prefetched,
) -> Result<Client, Refused> {
    let mismatch = |d: &str| (JwtRefusal::Mismatch, d.to_string());
    if !state.config.private_key_jwt {
        return Err(mismatch("this server does not accept private_key_jwt"));
    }
    if headers.contains_key(axum::http::header::AUTHORIZATION) || form.contains_key("client_secret")
    {
        return Err(mismatch(
            "a request authenticates one way only (RFC 6749 §2.3): a client assertion and a secret were both sent",
        ));
    }
    if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE) {
        return Err((
            JwtRefusal::Malformed,
            format!("client_assertion_type must be {CLIENT_ASSERTION_TYPE}"),
        ));
    }
    let assertion = &form["client_assertion"];
    let (_, unverified) = peek(assertion).ok_or((
        JwtRefusal::Malformed,
        "the client assertion is not a JWT".to_string(),
    ))?;
    let client_id = claim(&unverified, "iss")
        .ok_or((
            JwtRefusal::Malformed,
            "the client assertion has no iss".to_string(),
        ))?
        .to_string();
    if form.get("client_id").is_some_and(|id| *id != client_id) {
        return Err(mismatch(
            "client_id differs from the client assertion's iss",
        ));
    }
    let client = inner
        .clients
        .get(&client_id)
        .cloned()
        .ok_or_else(|| mismatch(&format!("unknown client {client_id:?}")))?;
    if !client.auth_methods.contains(&AuthMethod::PrivateKeyJwt) {
        return Err(mismatch(&format!(
            "client {client_id:?} is not registered for private_key_jwt"
        )));
    }
    let jwks = match &keys.client_keys {
        Some(Ok(jwks)) => jwks,
        Some(Err(e)) => return Err((JwtRefusal::Signature, e.clone())),
        None => {
            return Err((
                JwtRefusal::Signature,
                "the client has no registered keys".to_string(),
            ));
        }
    };
    let (_, claims) = verify(assertion, jwks)?;
    if claim(&claims, "iss") != Some(client_id.as_str())
        || claim(&claims, "sub") != Some(client_id.as_str())
    {
        return Err(mismatch(
            "the client assertion's iss and sub must both be the client_id",
        ));
    }
    let token_endpoint = format!("{}/token", state.issuer());
    if !audience_matches(&claims, &[&state.issuer(), &token_endpoint]) {
        return Err((
            JwtRefusal::Audience,
            "the client assertion's aud must be the issuer or the token endpoint".to_string(),
        ));
    }
    let now_s = wall_clock_s();
    let exp = expiry_s(&claims)?;
    if exp <= now_s {
        return Err((
            JwtRefusal::Expired,
            "the client assertion has expired".to_string(),
        ));
    }
    let jti = claim(&claims, "jti").ok_or((
        JwtRefusal::Malformed,
        "the client assertion has no jti".to_string(),
    ))?;
    if !inner.assertion_jtis.first_use(jti, exp, now_s) {
        return Err((
            JwtRefusal::Replay,
            "the client assertion was used before (jti)".to_string(),
        ));
    }
    inner.stats.client_assertions += 1;
    Ok(client)
}

/// The `client_credentials` grant: a confidential client, scopes the server knows, no
/// refresh token.
pub(super) fn client_credentials_grant(
    state: &AppState,
    inner: &mut Inner,
    grant: Grant,
) -> Result<Value, Denied> {
    let Grant(client, form, shape, jkt) = grant;
    if client.auth_methods.iter().all(|m| *m == AuthMethod::None) {
        return Err(deny(
            "unauthorized_client",
            "client_credentials needs a confidential client",
        ));
    }
    let scope = known_scope(state, form.get("scope"))?;
    let resource = form.get("resource").cloned();
    check_resource(state, resource.as_deref()).map_err(|d| deny("invalid_target", d))?;
    let body = issue_without_refresh(
        state,
        inner,
        client,
        &client.client_id,
        &scope,
        resource,
        shape,
        jkt,
    );
    inner.stats.client_credentials_grants += 1;
    Ok(body)
}

/// A requested scope, every part of which the server knows.
fn known_scope(state: &AppState, asked: Option<&String>) -> Result<String, Denied> {
    let asked = asked.cloned().unwrap_or_default();
    let known = state.config.authorization_server_scopes();
    if let Some(unknown) = asked
        .split_whitespace()
        .find(|s| !known.iter().any(|k| k == s))
    {
        return Err(deny("invalid_scope", format!("unknown scope {unknown:?}")));
    }
    Ok(asked)
}

/// Tokens of a grant without a refresh token, in a family of their own.
#[allow(clippy::too_many_arguments)]
fn issue_without_refresh(
    state: &AppState,
    inner: &mut Inner,
    client: &Client,
    subject: &str,
    scope: &str,
    resource: Option<String>,
    shape: Option<FaultKind>,
    jkt: Option<&str>,
) -> Value {
    let family = inner.next_family;
    inner.next_family += 1;
    if shape == Some(FaultKind::MissingAccessToken) {
        return missing_access_token_body(state);
    }
    issue_tokens(
        state, inner, family, client, subject, scope, resource, shape, false, jkt,
    )
}

/// Issues an ID token for `client_id` about `subject`, as an SSO login at this IdP would.
pub(crate) fn issue_id_token(
    state: &AppState,
    inner: &mut Inner,
    client_id: &str,
    subject: &str,
) -> String {
    let now_s = state.now_ms() / 1000;
    let jti = random_token("idt_");
    let token = state.signer.sign(&json!({
        "iss": state.issuer(),
        "sub": subject,
        "aud": client_id,
        "email": format!("{subject}@example.com"),
        "iat": now_s,
        "auth_time": now_s,
        "exp": now_s + state.config.id_jag_ttl.as_secs().max(1) as i64,
        "jti": jti,
    }));
    inner.id_token_jtis.insert(jti);
    inner.secrets.id_tokens.push(token.clone());
    token
}

/// RFC 8693 token exchange at the IdP: the subject token (an ID token for this client, or its
/// refresh token) for an ID-JAG for `audience`, if the policy allows it.
pub(super) fn token_exchange_grant(
    state: &AppState,
    inner: &mut Inner,
    client: &Client,
    form: &Params,
    shape: Option<FaultKind>,
) -> Result<Value, Denied> {
    let requested = form.get("requested_token_type").map(String::as_str);
    if requested != Some(ID_JAG_TOKEN_TYPE) {
        return Err(deny(
            "invalid_request",
            format!("requested_token_type must be {ID_JAG_TOKEN_TYPE}"),
        ));
    }
    let subject_token = form
        .get("subject_token")
        .ok_or_else(|| deny("invalid_request", "subject_token is required"))?;
    let audience = form
        .get("audience")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            deny(
                "invalid_request",
                "audience (the authorization server's issuer) is required",
            )
        })?;
    let subject = match form.get("subject_token_type").map(String::as_str) {
        Some(ID_TOKEN_TYPE) => id_token_subject(state, inner, client, subject_token)?,
        Some(REFRESH_TOKEN_TYPE) => refresh_token_subject(state, inner, client, subject_token)?,
        _ => {
            return Err(deny(
                "invalid_request",
                format!("subject_token_type must be {ID_TOKEN_TYPE} or {REFRESH_TOKEN_TYPE}"),
            ));
        }
    };
    let resource = form.get("resource").cloned();
    check_resource(state, resource.as_deref()).map_err(|d| deny("invalid_target", d))?;
    if !inner.idp_policy.allows(audience) {
        inner.stats.token_exchange_denials += 1;
        return Err(deny(
            "access_denied",
            format!("the IdP's policy does not let this client reach {audience}"),
        ));
    }
    let scope = form.get("scope").filter(|s| !s.is_empty()).cloned();
    let now_ms = state.now_ms();
    let ttl_s = state.config.id_jag_ttl.as_secs().max(1) as i64;
    let mut exp = now_ms / 1000 + ttl_s;
    let mut expires_in = Some(ttl_s);
    match shape {
        Some(FaultKind::ExpiresInZero) => {
            exp = now_ms / 1000;
            expires_in = Some(0);
        }
        Some(FaultKind::AlreadyExpired) => exp = now_ms / 1000 - 60,
        Some(FaultKind::ExpiresInMissing) => expires_in = None,
        _ => {}
    }
    let mapped_client_id = state
        .config
        .idp_client_ids
        .iter()
        .find(|(here, _)| *here == client.client_id)
        .map_or(client.client_id.clone(), |(_, there)| there.clone());
    let mut claims = json!({
        "iss": state.issuer(),
        "sub": subject,
        "aud": audience,
        "client_id": mapped_client_id,
        "jti": random_token("jag_"),
        "iat": now_ms / 1000,
        "exp": exp,
    });
    if let Some(resource) = &resource {
        claims["resource"] = resource.clone().into();
    }
    if let Some(scope) = &scope {
        claims["scope"] = scope.clone().into();
    }
    let id_jag = state.signer.sign_typed(&claims, ID_JAG_TYP);
    inner.secrets.id_jags.push(id_jag.clone());
    inner.stats.id_jags_issued += 1;
    let mut body = json!({
        "issued_token_type": ID_JAG_TOKEN_TYPE,
        "token_type": "N_A",
    });
    if shape != Some(FaultKind::MissingAccessToken) {
        body["access_token"] = id_jag.into();
    }
    if let Some(expires_in) = expires_in {
        body["expires_in"] = expires_in.into();
    }
    if let Some(scope) = scope {
        body["scope"] = scope.into();
    }
    Ok(body)
}

/// The subject of an ID token this IdP issued to `client` (SEP-990: the ID token's `aud` is
/// the client authenticating the exchange), still valid.
fn id_token_subject(
    state: &AppState,
    inner: &Inner,
    client: &Client,
    token: &str,
) -> Result<String, Denied> {
    let invalid = |d: &str| deny("invalid_grant", d);
    let claims = state
        .signer
        .verified_claims(token)
        .ok_or_else(|| invalid("the subject token is not an ID token of this IdP"))?;
    let issued_here = claim(&claims, "jti").is_some_and(|j| inner.id_token_jtis.contains(j));
    if !issued_here || claim(&claims, "iss") != Some(state.issuer().as_str()) {
        return Err(invalid("the subject token is not an ID token of this IdP"));
    }
    if claim(&claims, "aud") != Some(client.client_id.as_str()) {
        return Err(invalid("the ID token was issued to another client"));
    }
    if claims.get("exp").and_then(Value::as_i64).unwrap_or(0) * 1000 <= state.now_ms() {
        return Err(invalid("the ID token has expired"));
    }
    claim(&claims, "sub")
        .map(String::from)
        .ok_or_else(|| invalid("the ID token has no sub"))
}

/// The subject of an active refresh token of `client` at this IdP.
fn refresh_token_subject(
    state: &AppState,
    inner: &Inner,
    client: &Client,
    token: &str,
) -> Result<String, Denied> {
    let record = inner
        .refresh_tokens
        .get(token)
        .ok_or_else(|| deny("invalid_grant", "unknown refresh token"))?;
    if record.client_id != client.client_id {
        return Err(deny(
            "invalid_grant",
            "the refresh token was issued to another client",
        ));
    }
    if record.status != crate::state::RefreshStatus::Active
        || state.now_ms() >= record.expires_at_ms
    {
        return Err(deny(
            "invalid_grant",
            "the refresh token is no longer active",
        ));
    }
    Ok(super::token::DEMO_USER.into())
}

/// The RFC 7523 jwt-bearer grant: an ID-JAG (its `typ` says so) or a workload JWT.
#[allow(clippy::too_many_arguments)]
pub(super) fn jwt_bearer_grant(
    state: &AppState,
    inner: &mut Inner,
    headers: &HeaderMap,
    form: &Params,
    keys: &Prefetched,
    shape: Option<FaultKind>,
    jkt: Option<&str>,
) -> Result<Value, Denied> {
    let assertion = form
        .get("assertion")
        .ok_or_else(|| deny("invalid_request", "assertion is required"))?;
    let is_id_jag =
        peek(assertion).is_some_and(|(header, _)| header.typ.as_deref() == Some(ID_JAG_TYP));
    let client = if is_id_jag || presents_client(inner, headers, form) {
        Some(authenticate_any(state, inner, headers, form, keys)?)
    } else {
        None
    };
    if let Some(code) = shape.and_then(FaultKind::oauth_error_code) {
        return Err(deny(code, "injected fault"));
    }
    let checked = if is_id_jag {
        check_id_jag(state, inner, assertion, client.as_ref(), keys)
    } else {
        check_workload_jwt(state, inner, assertion, keys)
    };
    let (subject, granted_scope) = checked.map_err(|(why, description)| {
        *inner
            .stats
            .jwt_bearer_refusals
            .entry(why.as_str().to_string())
            .or_default() += 1;
        deny("invalid_grant", description)
    })?;
    let asked = known_scope(state, form.get("scope"))?;
    let scope = match granted_scope {
        Some(granted) if !asked.is_empty() => {
            let granted: Vec<&str> = granted.split_whitespace().collect();
            if let Some(extra) = asked.split_whitespace().find(|s| !granted.contains(s)) {
                return Err(deny(
                    "invalid_scope",
                    format!("scope {extra:?} is beyond what the ID-JAG grants"),
                ));
            }
            asked
        }
        Some(granted) => granted,
        None => asked,
    };
    let resource = form.get("resource").cloned();
    check_resource(state, resource.as_deref()).map_err(|d| deny("invalid_target", d))?;
    let acting = client.unwrap_or_else(|| Client {
        client_id: subject.clone(),
        client_secret: None,
        auth_methods: vec![AuthMethod::None],
        redirect_uris: Vec::new(),
        client_name: None,
        keys: None,
    });
    let body = issue_without_refresh(
        state, inner, &acting, &subject, &scope, resource, shape, jkt,
    );
    let kind = if is_id_jag { "id_jag" } else { "workload" };
    *inner
        .stats
        .jwt_bearer_grants
        .entry(kind.into())
        .or_default() += 1;
    Ok(body)
}

/// Whether a request carries client authentication (a bare `client_id` counts only when it
/// names a registered client: a workload needs no registration).
fn presents_client(inner: &Inner, headers: &HeaderMap, form: &Params) -> bool {
    headers.contains_key(axum::http::header::AUTHORIZATION)
        || form.contains_key("client_secret")
        || form.contains_key("client_assertion")
        || form
            .get("client_id")
            .is_some_and(|id| inner.clients.contains_key(id))
}

fn issuer_keys(keys: &Prefetched) -> Result<&Value, Refused> {
    match &keys.issuer_keys {
        Some(Ok(jwks)) => Ok(jwks),
        Some(Err(e)) => Err((JwtRefusal::Signature, e.clone())),
        None => Err((
            JwtRefusal::UntrustedIssuer,
            "the assertion's issuer is not trusted here".to_string(),
        )),
    }
}

/// SEP-990's checks of an ID-JAG: a trusted IdP's signature, `aud` this server's issuer,
/// `client_id` the authenticated client, not expired, `resource` (if any) the MCP endpoint,
/// `jti` single use. Yields the subject and the scope it grants.
fn check_id_jag(
    state: &AppState,
    inner: &mut Inner,
    assertion: &str,
    client: Option<&Client>,
    keys: &Prefetched,
) -> Result<(String, Option<String>), Refused> {
    let (_, unverified) = peek(assertion).ok_or((JwtRefusal::Malformed, "not a JWT".into()))?;
    let iss = claim(&unverified, "iss").unwrap_or_default();
    if !inner.trusted_idps.iter().any(|t| t.issuer == iss) {
        return Err((
            JwtRefusal::UntrustedIssuer,
            format!("ID-JAGs of {iss:?} are not trusted here"),
        ));
    }
    let (_, claims) = verify(assertion, issuer_keys(keys)?)?;
    if !audience_matches(&claims, &[&state.issuer()]) {
        return Err((
            JwtRefusal::Audience,
            "the ID-JAG's aud is not this authorization server's issuer".into(),
        ));
    }
    let client_id = client.map(|c| c.client_id.as_str());
    if claim(&claims, "client_id").is_none() || claim(&claims, "client_id") != client_id {
        return Err((
            JwtRefusal::Mismatch,
            "the ID-JAG's client_id is not the authenticated client".into(),
        ));
    }
    if let Some(resource) = claim(&claims, "resource")
        && resource != state.mcp_resource()
    {
        return Err((
            JwtRefusal::Mismatch,
            "the ID-JAG is for another resource".into(),
        ));
    }
    let now_s = state.now_ms() / 1000;
    let exp = expiry_s(&claims)?;
    if exp <= now_s {
        return Err((JwtRefusal::Expired, "the ID-JAG has expired".into()));
    }
    let jti =
        claim(&claims, "jti").ok_or((JwtRefusal::Malformed, "the ID-JAG has no jti".into()))?;
    if !inner.assertion_jtis.first_use(jti, exp, now_s) {
        return Err((
            JwtRefusal::Replay,
            "the ID-JAG was used before (jti)".into(),
        ));
    }
    let subject =
        claim(&claims, "sub").ok_or((JwtRefusal::Malformed, "the ID-JAG has no sub".into()))?;
    Ok((
        subject.to_string(),
        claim(&claims, "scope").map(String::from),
    ))
}

/// A workload JWT: a trusted platform's signature, `aud` this server's issuer, its token
/// endpoint or the platform's configured audience, a `sub`, not expired (nor before `nbf`).
fn check_workload_jwt(
    state: &AppState,
    inner: &Inner,
    assertion: &str,
    keys: &Prefetched,
) -> Result<(String, Option<String>), Refused> {
    let (_, unverified) =
        peek(assertion).ok_or((JwtRefusal::Malformed, "the assertion is not a JWT".into()))?;
    let iss = claim(&unverified, "iss").unwrap_or_default();
    let Some(trusted) = inner
        .trusted_workload_issuers
        .iter()
        .find(|t| t.issuer == iss)
    else {
        return Err((
            JwtRefusal::UntrustedIssuer,
            format!("workload JWTs of {iss:?} are not trusted here"),
        ));
    };
    let (_, claims) = verify(assertion, issuer_keys(keys)?)?;
    let token_endpoint = format!("{}/token", state.issuer());
    let mut accepted = vec![state.issuer(), token_endpoint];
    accepted.extend(trusted.audience.clone());
    let accepted: Vec<&str> = accepted.iter().map(String::as_str).collect();
    if !audience_matches(&claims, &accepted) {
        return Err((
            JwtRefusal::Audience,
            "the workload JWT's aud is not this authorization server".into(),
        ));
    }
    let now_s = wall_clock_s();
    if expiry_s(&claims)? <= now_s {
        return Err((JwtRefusal::Expired, "the workload JWT has expired".into()));
    }
    if claims
        .get("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|nbf| nbf > now_s)
    {
        return Err((
            JwtRefusal::Expired,
            "the workload JWT is not valid yet (nbf)".into(),
        ));
    }
    let subject = claim(&claims, "sub")
        .ok_or((JwtRefusal::Malformed, "the workload JWT has no sub".into()))?;
    Ok((subject.to_string(), None))
}
