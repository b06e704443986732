//! The RFC 8628 device authorization grant: `POST /device_authorization` hands out a device
//! code (secret, for the polling client) and a user code (for the person); the verification
//! page `/device` is where the person approves or denies; the token endpoint's
//! `urn:ietf:params:oauth:grant-type:device_code` polls land in [`device_code_grant`].
//!
//! Like `/authorize`, the verification page approves at once when given a user code (a test
//! fetches `verification_uri_complete` as a browser would); `decision=deny` denies. Polls
//! answer `authorization_pending` until then, `slow_down` to the first
//! `Config::device_slow_down_polls` polls and to any poll sooner than the interval (which then
//! grows by 5 s, RFC 8628 §3.5), `expired_token` after `expires_in`, `access_denied` after a
//! denial. Approved codes are redeemed once, for tokens as the code grant issues them.
//! `Config::device_announced` makes the answer announce other verification URIs or another
//! user code (a hostile server, for the client's checks).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use rand::Rng;

use super::authorize::check_resource;
use super::token::{Denied, Grant, authenticate, deny, issue_tokens};
use super::{ConnectionKill, fault_answer, oauth_error};
use crate::faults::FaultTarget;
use crate::state::{AppState, Inner, random_token};

/// The grant type of device code polls.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How far the person got with a device code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pending,
    Approved,
    Denied,
    /// Approved and exchanged for tokens: a second exchange is refused.
    Redeemed,
}

/// One device authorization, keyed by its device code.
#[derive(Debug, Clone)]
pub struct DeviceGrant {
    pub client_id: String,
    pub user_code: String,
    pub scope: String,
    pub resource: Option<String>,
    pub expires_at_ms: i64,
    /// The polling interval now in force (grows by 5 s with each `slow_down`).
    pub interval_ms: i64,
    pub last_poll_ms: Option<i64>,
    pub polls: u32,
    pub decision: Decision,
}

type Params = HashMap<String, String>;

/// `POST /device_authorization` (RFC 8628 §3.1): client authentication as at the token
/// endpoint, `scope` checked against the known scopes, `resource` as on `/authorize`.
pub async fn authorize(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    Form(form): Form<Params>,
) -> Response {
    if let Some(resource) = form.get("resource") {
        state.lock().stats.resources_received.push(resource.clone());
    }
    let fault = fault_answer(&state, FaultTarget::Token, &kill, |_| true, "server_error");
    if let Some(response) = fault.await {
        return response;
    }
    let mut inner = state.lock();
    let client = match authenticate(&inner, &headers, &form) {
        Ok(client) => client,
        Err(denied) => {
            drop(inner);
            let status = if denied.code == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            };
            return oauth_error(status, denied.code, &denied.description);
        }
    };
    let scope = form.get("scope").cloned().unwrap_or_default();
    let known = state.config.authorization_server_scopes();
    if let Some(unknown) = scope
        .split_whitespace()
        .find(|s| !known.iter().any(|k| k == s))
    {
        drop(inner);
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("unknown scope {unknown:?}"),
        );
    }
    let resource = form.get("resource").cloned();
    if let Err(description) = check_resource(&state, resource.as_deref()) {
        drop(inner);
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_target", &description);
    }
    let device_code = random_token("dc_");
    let user_code = user_code();
    let now = state.now_ms();
    let ttl_ms = state.config.device_code_ttl.as_millis() as i64;
    let interval_secs = state.config.device_interval_secs;
    inner.stats.device_authorizations += 1;
    inner.secrets.device_codes.push(device_code.clone());
    inner.device_grants.insert(
        device_code.clone(),
        DeviceGrant {
            client_id: client.client_id.clone(),
            user_code: user_code.clone(),
            scope,
            resource,
            expires_at_ms: now + ttl_ms,
            interval_ms: interval_secs as i64 * 1000,
            last_poll_ms: None,
            polls: 0,
            decision: Decision::Pending,
        },
    );
    drop(inner);
    let announced = &state.config.device_announced;
    let verification_uri = announced
        .verification_uri
        .clone()
        .unwrap_or_else(|| format!("{}/device", state.issuer()));
    let complete = announced
        .verification_uri_complete
        .clone()
        .unwrap_or_else(|| format!("{verification_uri}?user_code={user_code}"));
    let user_code = announced.user_code.clone().unwrap_or(user_code);
    let body = serde_json::json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "verification_uri_complete": complete,
        "expires_in": (ttl_ms as u64).div_ceil(1000),
        "interval": interval_secs,
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Eight letters from RFC 8628 §6.1's unambiguous set, shown as `XXXX-XXXX`.
fn user_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rng();
    let mut code: String = (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    code.insert(4, '-');
    code
}

/// `GET /device`: with `user_code`, the person's decision (approve at once, or `decision=deny`);
/// without, a page asking for the code.
pub async fn verify(State(state): State<AppState>, Query(params): Query<Params>) -> Response {
    decide(&state, &params)
}

/// `POST /device`: the page's form (`user_code`, `decision`).
pub async fn verify_form(State(state): State<AppState>, Form(form): Form<Params>) -> Response {
    decide(&state, &form)
}

fn decide(state: &AppState, params: &Params) -> Response {
    let Some(user_code) = params.get("user_code").filter(|c| !c.is_empty()) else {
        return page(
            StatusCode::OK,
            "Enter the code your device shows",
            &format!(
                r#"<form method="post" action="{}/device"><input name="user_code" autocomplete="off"><button type="submit" name="decision" value="approve">Approve</button><button type="submit" name="decision" value="deny">Deny</button></form>"#,
                state.issuer()
            ),
        );
    };
    // RFC 8628 §6.1: case and dashes are not the person's problem.
    let normalise = |c: &str| -> String {
        c.chars()
            .filter(|ch| ch.is_ascii_alphanumeric())
            .map(|ch| ch.to_ascii_uppercase())
            .collect()
    };
    let wanted = normalise(user_code);
    let deny = params.get("decision").map(String::as_str) == Some("deny");
    let now = state.now_ms();
    let mut inner = state.lock();
    let Some(grant) = inner
        .device_grants
        .values_mut()
        .find(|g| normalise(&g.user_code) == wanted)
    else {
        return page(
            StatusCode::NOT_FOUND,
            "Unknown code",
            "No device asked for this code. Check it and try again.",
        );
    };
    if now >= grant.expires_at_ms {
        return page(
            StatusCode::BAD_REQUEST,
            "Code expired",
            "This code has expired. Start again on your device.",
        );
    }
    if grant.decision != Decision::Pending {
        return page(
            StatusCode::BAD_REQUEST,
            "Code already used",
            "This code was already answered.",
        );
    }
    if deny {
        grant.decision = Decision::Denied;
        page(
            StatusCode::OK,
            "Access denied",
            "The device was denied access.",
        )
    } else {
        grant.decision = Decision::Approved;
        page(
            StatusCode::OK,
            "Device approved",
            "You may return to your device.",
        )
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Html(format!(
            "<!doctype html><title>{title}</title><h1 id=\"title\">{title}</h1><p>{body}</p>"
        )),
    )
        .into_response()
}

/// A device code poll at the token endpoint (RFC 8628 §3.4, §3.5), for an authenticated
/// client.
pub(super) fn device_code_grant(
    state: &AppState,
    inner: &mut Inner,
    poll: Grant,
) -> Result<serde_json::Value, Denied> {
    // The tokens are bound to the poll's DPoP proof (RFC 9449 §5).
    let Grant(client, form, shape, jkt) = poll;
    inner.stats.device_polls += 1;
    let device_code = super::token::required(form, "device_code")?;
    let now = state.now_ms();
    let slow_down_polls = state.config.device_slow_down_polls;
    let Some(grant) = inner.device_grants.get_mut(device_code) else {
        return Err(deny("invalid_grant", "unknown device code"));
    };
    if grant.client_id != client.client_id {
        return Err(deny(
            "invalid_grant",
            "device code was issued to another client",
        ));
    }
    grant.polls += 1;
    let gap = grant.last_poll_ms.map(|last| (now - last).max(0) as u64);
    grant.last_poll_ms = Some(now);
    let expired = now >= grant.expires_at_ms;
    // A poll sooner than the interval in force, or one of the configured first polls: the
    // client must wait 5 s longer from now on (RFC 8628 §3.5).
    let slow_down = !expired
        && (gap.is_some_and(|g| (g as i64) < grant.interval_ms) || grant.polls <= slow_down_polls);
    if slow_down {
        grant.interval_ms += 5_000;
    }
    let decision = grant.decision;
    if decision == Decision::Approved && !expired && !slow_down {
        grant.decision = Decision::Redeemed;
    }
    let (scope, resource) = (grant.scope.clone(), grant.resource.clone());
    inner.stats.device_poll_gaps_ms.extend(gap);
    if expired {
        return Err(deny("expired_token", "the device code has expired"));
    }
    if slow_down {
        inner.stats.device_slow_downs += 1;
        return Err(deny("slow_down", "polling too fast: wait 5 s longer"));
    }
    match decision {
        Decision::Pending => Err(deny(
            "authorization_pending",
            "the user has not answered yet",
        )),
        Decision::Denied => Err(deny("access_denied", "the user denied access")),
        Decision::Redeemed => Err(deny(
            "invalid_grant",
            "the device code was already exchanged",
        )),
        Decision::Approved => {
            let family = inner.next_family;
            inner.next_family += 1;
            Ok(issue_tokens(
                state,
                inner,
                family,
                client,
                super::token::DEMO_USER,
                &scope,
                resource,
                shape,
                true,
                jkt,
            ))
        }
    }
}
