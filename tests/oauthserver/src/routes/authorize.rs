//! `GET /authorize` (authorization code + PKCE S256) and, in interactive mode, `POST
//! /authorize` where the login + consent page posts its decision.
//!
//! Errors that make the redirect URI untrustworthy (unknown client, unregistered redirect URI)
//! are shown as a page; every other error is sent back to the client's redirect URI, as RFC 6749
//! §4.1.2.1 requires.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Extension, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::{ConnectionKill, Intercept, intercept};
use crate::faults::FaultTarget;
use crate::state::{AppState, AuthorizationRequest, CodeGrant, random_token};

pub async fn start(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let param = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    {
        let mut inner = state.lock();
        inner.stats.authorize_requests += 1;
        if let Some(resource) = param("resource") {
            inner.stats.resources_received.push(resource.to_string());
        }
        if let Some(st) = param("state") {
            inner.secrets.states.push(st.to_string());
        }
    }

    let Some(client_id) = param("client_id") else {
        return error_page("The request has no client_id.");
    };
    let client = state.lock().clients.get(client_id).cloned();
    let Some(client) = client else {
        return error_page(&format!(
            "Unknown client_id {client_id:?}: register the client first."
        ));
    };
    let redirect_uri = match param("redirect_uri") {
        Some(uri) => uri.to_string(),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => return error_page("The request has no redirect_uri."),
    };
    if !redirect_uri_allowed(&client.redirect_uris, &redirect_uri) {
        return error_page(&format!(
            "redirect_uri {redirect_uri:?} is not registered for this client."
        ));
    }
    let state_param = param("state").map(String::from);
    let reject = |code: &str, description: &str| {
        error_redirect(
            &state,
            &redirect_uri,
            state_param.as_deref(),
            code,
            description,
        )
    };

    match intercept(&state, FaultTarget::Authorize, &kill).await {
        Intercept::Proceed => {}
        Intercept::Respond(response) => return response,
        Intercept::Shape(kind) => {
            return reject(
                kind.oauth_error_code().unwrap_or("server_error"),
                "injected fault",
            );
        }
    }

    if param("response_type") != Some("code") {
        return reject(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let Some(code_challenge) = param("code_challenge") else {
        return reject(
            "invalid_request",
            "code_challenge is required (PKCE with S256)",
        );
    };
    // RFC 7636 §4.3: a missing method means "plain", which OAuth 2.1 forbids.
    if param("code_challenge_method") != Some("S256") {
        return reject("invalid_request", "code_challenge_method must be S256");
    }
    let scope = param("scope").unwrap_or("").to_string();
    let known = state.config.authorization_server_scopes();
    if let Some(unknown) = scope
        .split_whitespace()
        .find(|s| !known.iter().any(|k| k == s))
    {
        return reject("invalid_scope", &format!("unknown scope {unknown:?}"));
    }
    let resource = param("resource").map(String::from);
    if let Err(description) = check_resource(&state, resource.as_deref()) {
        return reject("invalid_target", &description);
    }

    let request = AuthorizationRequest {
        client_id: client.client_id.clone(),
        redirect_uri,
        state: state_param,
        code_challenge: code_challenge.to_string(),
        scope,
        resource,
    };
    if state.config.interactive {
        let request_id = random_token("req_");
        let page = consent_page(&state, &request_id, &request, client.client_name.as_deref());
        state
            .lock()
            .interactive_requests
            .insert(request_id, request);
        return page;
    }
    approve(&state, request)
}

/// The decision posted by the interactive consent page.
pub async fn decide(
    State(state): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let request_id = form.get("request_id").cloned().unwrap_or_default();
    let Some(request) = state.lock().interactive_requests.remove(&request_id) else {
        return error_page("This login request is unknown or was already answered. Start again.");
    };
    if form.get("decision").map(String::as_str) == Some("approve") {
        approve(&state, request)
    } else {
        let AuthorizationRequest {
            redirect_uri,
            state: st,
            ..
        } = request;
        error_redirect(
            &state,
            &redirect_uri,
            st.as_deref(),
            "access_denied",
            "the user denied access",
        )
    }
}

/// Validates an RFC 8707 resource: an absolute URI without fragment, and when the server
/// requires it, exactly the MCP endpoint.
pub fn check_resource(state: &AppState, resource: Option<&str>) -> Result<(), String> {
    if let Some(r) = resource {
        match url::Url::parse(r) {
            Ok(u) if u.fragment().is_none() => {}
            _ => {
                return Err(format!(
                    "resource {r:?} is not an absolute URI without fragment"
                ));
            }
        }
    }
    if state.config.require_resource {
        let expected = state.mcp_resource();
        if resource != Some(expected.as_str()) {
            return Err(format!("resource must be {expected}"));
        }
    }
    Ok(())
}

fn approve(state: &AppState, request: AuthorizationRequest) -> Response {
    let code = random_token("code_");
    let redirect_uri = request.redirect_uri.clone();
    let st = request.state.clone();
    {
        let mut inner = state.lock();
        let expires_at_ms = state.now_ms() + state.config.code_ttl.as_millis() as i64;
        inner.secrets.authorization_codes.push(code.clone());
        inner.codes.insert(
            code.clone(),
            CodeGrant {
                request,
                expires_at_ms,
                redeemed_family: None,
            },
        );
    }
    redirect_with(
        state,
        &redirect_uri,
        &[("code", Some(code.as_str())), ("state", st.as_deref())],
    )
}

fn error_redirect(
    state: &AppState,
    redirect_uri: &str,
    st: Option<&str>,
    code: &str,
    description: &str,
) -> Response {
    redirect_with(
        state,
        redirect_uri,
        &[
            ("error", Some(code)),
            ("error_description", Some(description)),
            ("state", st),
        ],
    )
}

/// A 302 to the redirect URI with the given parameters plus `iss` (RFC 9207).
fn redirect_with(
    state: &AppState,
    redirect_uri: &str,
    params: &[(&str, Option<&str>)],
) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page("The redirect_uri is not a valid URL.");
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            if let Some(v) = v {
                query.append_pair(k, v);
            }
        }
        query.append_pair("iss", &state.issuer());
    }
    let mut response = Redirect::to(url.as_str()).into_response();
    *response.status_mut() = StatusCode::FOUND;
    response
}

/// Exact match, except that loopback redirect URIs match on any port (RFC 8252 §7.3).
pub fn redirect_uri_allowed(registered: &[String], candidate: &str) -> bool {
    let Ok(candidate_url) = url::Url::parse(candidate) else {
        return false;
    };
    let loopback = |u: &url::Url| {
        u.scheme() == "http"
            && matches!(
                u.host_str(),
                Some("127.0.0.1") | Some("[::1]") | Some("localhost")
            )
    };
    if registered.is_empty() {
        return loopback(&candidate_url);
    }
    registered.iter().any(|r| {
        if r == candidate {
            return true;
        }
        let Ok(r) = url::Url::parse(r) else {
            return false;
        };
        loopback(&r)
            && loopback(&candidate_url)
            && r.host_str() == candidate_url.host_str()
            && r.path() == candidate_url.path()
            && r.query() == candidate_url.query()
    })
}

fn error_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><title>Authorization error</title><h1>Authorization error</h1><p>{}</p>",
        html_escape(message)
    );
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        Html(body),
    )
        .into_response()
}

fn consent_page(
    state: &AppState,
    request_id: &str,
    request: &AuthorizationRequest,
    client_name: Option<&str>,
) -> Response {
    let scope = if request.scope.is_empty() {
        "(no scope)"
    } else {
        request.scope.as_str()
    };
    let body = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in - OAuth test server</title></head>
<body>
<h1>Sign in to the OAuth test server</h1>
<p><strong id="client">{client}</strong> asks for access to <code id="scope">{scope}</code>.</p>
<form method="post" action="{action}">
  <input type="hidden" name="request_id" value="{request_id}">
  <label>User <input name="username" value="demo" autocomplete="username"></label>
  <label>Password <input name="password" type="password" value="demo" autocomplete="current-password"></label>
  <button type="submit" name="decision" value="approve" id="approve">Approve</button>
  <button type="submit" name="decision" value="deny" id="deny">Deny</button>
</form>
</body></html>"#,
        client = html_escape(client_name.unwrap_or(&request.client_id)),
        scope = html_escape(scope),
        action = html_escape(&format!("{}/authorize", state.issuer())),
        request_id = html_escape(request_id),
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::redirect_uri_allowed;

    #[test]
    fn loopback_redirects_match_on_any_port() {
        let registered = vec!["http://127.0.0.1:5000/callback".to_string()];
        assert!(redirect_uri_allowed(
            &registered,
            "http://127.0.0.1:5000/callback"
        ));
        assert!(redirect_uri_allowed(
            &registered,
            "http://127.0.0.1:61234/callback"
        ));
        assert!(!redirect_uri_allowed(
            &registered,
            "http://127.0.0.1:61234/other"
        ));
        assert!(!redirect_uri_allowed(
            &registered,
            "http://localhost:61234/callback"
        ));
    }

    #[test]
    fn non_loopback_redirects_match_exactly() {
        let registered = vec!["https://app.example/cb".to_string()];
        assert!(redirect_uri_allowed(&registered, "https://app.example/cb"));
        assert!(!redirect_uri_allowed(
            &registered,
            "https://app.example:8443/cb"
        ));
        assert!(!redirect_uri_allowed(&[], "https://app.example/cb"));
        assert!(redirect_uri_allowed(&[], "http://127.0.0.1:1/cb"));
    }
}
