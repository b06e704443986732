//! The HTTP surface. Every error answers the one shape that `error` builds,
//! `{"error": {"code": "...", "message": "...", "correlation_id": "..."?}}`: unknown server or
//! path 404, wrong method 405 (with `Allow`), bad query 400, missing or wrong API key 401,
//! another web origin or a Host that is not this listener's 403 (`guard`), a failed flow 502,
//! the supervisor gone, or a cap reached, 503.

use std::sync::LazyLock;
use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::web::{self, Bytes, Data};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::{error, scrubbed, supervisor_error};
use super::guard::{Guard, KeyVia};
use super::servers;
use super::view::rfc3339;
use crate::clock::now_ms;
use crate::store::db::FlowRow;
use crate::upstream::state::{Failure, LoginReason, Phase};

pub const PAGE: &str = include_str!("page.html");
pub const OPENAPI: &str = include_str!("openapi.json");

/// The routes and methods served, for the 405 `Allow` header and the OpenAPI check.
pub const ROUTES: &[(&str, &str)] = &[
    ("/", "GET"),
    ("/metrics", "GET"),
    ("/api/v1/openapi.json", "GET"),
    ("/api/v1/servers", "GET"),
    ("/api/v1/servers/{name}", "GET"),
    ("/api/v1/servers/{name}/login", "POST"),
    ("/api/v1/servers/{name}/login/complete", "POST"),
    ("/api/v1/servers/{name}/logout", "POST"),
    ("/api/v1/servers/{name}/refresh", "POST"),
    ("/api/v1/servers/{name}/reconnect", "POST"),
    ("/api/v1/servers/{name}/diagnose", "GET"),
    ("/api/v1/flows", "GET"),
    ("/api/v1/flows/{correlation_id}", "GET"),
    ("/api/v1/events", "GET"),
];

/// Most flows listed at once.
const FLOWS_LIMIT_MAX: u32 = 500;

fn unknown_server(state: &AppState, name: &str) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "unknown_server",
        format!(
            "no server named {name:?} is configured; configured servers: {}",
            state.handle.servers().join(", ")
        ),
    )
}

/// The API's actions on a server: `POST /api/v1/servers/{name}/<action>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Login,
    Logout,
    Refresh,
    Reconnect,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Login,
        Action::Logout,
        Action::Refresh,
        Action::Reconnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Logout => "logout",
            Action::Refresh => "refresh",
            Action::Reconnect => "reconnect",
        }
    }

    /// Its route, as listed in [`ROUTES`].
    pub fn path(self) -> &'static str {
        match self {
            Action::Login => "/api/v1/servers/{name}/login",
            Action::Logout => "/api/v1/servers/{name}/logout",
            Action::Refresh => "/api/v1/servers/{name}/refresh",
            Action::Reconnect => "/api/v1/servers/{name}/reconnect",
        }
    }
}

/// Registers the API's routes and its 404 on the App (no enclosing scope, so routes others
/// register beside these, the gateway's `/mcp/` ones, are reached too).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        actix_web::error::InternalError::from_response(
            e.to_string(),
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{e}; see /api/v1/openapi.json"),
            ),
        )
        .into()
    }));
    let resource = |path: &'static str| {
        let allow = ROUTES
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, m)| *m)
            .collect::<Vec<_>>()
            .join(", ");
        web::resource(path).default_service(web::to(move |req: HttpRequest| {
            let allow = allow.clone();
            async move {
                let mut response = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} {} is not served; use {allow}", req.method(), req.path()),
                );
                if let Ok(value) = header::HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
        }))
    };
    cfg.service(resource("/").route(web::get().to(page)))
        .service(resource("/metrics").route(web::get().to(metrics)))
        .service(resource("/api/v1/openapi.json").route(web::get().to(openapi)))
        .service(resource("/api/v1/servers").route(web::get().to(list_servers)))
        .service(resource("/api/v1/servers/{name}").route(web::get().to(one_server)));
    for action in Action::ALL {
        cfg.service(resource(action.path()).route(web::post().to(
            move |state: Data<AppState>, name: web::Path<String>| {
                run_action(state, name.into_inner(), action)
            },
        )));
    }
    cfg.service(
        resource("/api/v1/servers/{name}/login/complete").route(web::post().to(complete_login)),
    );
    cfg.service(resource("/api/v1/servers/{name}/diagnose").route(web::get().to(diagnose)))
        .service(resource("/api/v1/flows").route(web::get().to(list_flows)))
        .service(resource("/api/v1/flows/{correlation_id}").route(web::get().to(one_flow)))
        .service(resource("/api/v1/events").route(web::get().to(events)))
        .default_service(web::to(|req: HttpRequest| async move {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no such path: {}; the API is described at /api/v1/openapi.json",
                    req.path()
                ),
            )
        }));
}

/// Registers the public callback paths (`oauth.callback_url`, `serve --callback-url`): a
/// browser sent there by the authorization server, through the reverse proxy, finishes the
/// login waiting for its `state`. The guard lets these through without the key (the browser has
/// none); `state`, PKCE and `iss` are what protects them, as on a loopback listener.
pub fn configure_callbacks(cfg: &mut web::ServiceConfig, paths: &[String]) {
    for path in paths {
        cfg.service(web::resource(path.as_str()).route(web::get().to(public_callback)));
    }
}

/// A redirect to a public callback path: the verdict as a small page (never the code).
async fn public_callback(state: Data<AppState>, req: HttpRequest) -> HttpResponse {
    use crate::oauth::callback::DeliveryError;
    let (status, title, message) = match state
        .handle
        .callbacks()
        .redirected(req.query_string())
        .await
    {
        Ok(()) => (
            StatusCode::OK,
            "Signed in",
            "Authorization complete. You can close this tab and return to mcpproxy-oauth."
                .to_string(),
        ),
        Err(e @ DeliveryError::Failed(_)) => {
            (StatusCode::BAD_REQUEST, "Sign-in failed", e.to_string())
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            "Sign-in response rejected",
            e.to_string(),
        ),
    };
    let message = crate::telemetry::secrets::scrub(&message)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{message}</p></body></html>"
        ))
}

/// `POST /api/v1/servers/{name}/login/complete` with `{"url": "..."}`: the address a browser
/// ended on, pasted back, finishes the server's waiting login. Its verdict: 200, or an error
/// naming why (the login keeps waiting unless the error says it failed). The URL and its code
/// are secrets: registered for scrubbing, never echoed.
async fn complete_login(
    state: Data<AppState>,
    name: web::Path<String>,
    body: Bytes,
) -> HttpResponse {
    use crate::oauth::callback::DeliveryError;
    let name = name.into_inner();
    if !state.handle.servers().contains(&name) {
        return unknown_server(&state, &name);
    }
    #[derive(Deserialize)]
    struct Pasted {
        url: String,
    }
    let Ok(Pasted { url }) = serde_json::from_slice::<Pasted>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be JSON {\"url\": \"...\"}: the whole address the browser ended on after approving",
        );
    };
    crate::telemetry::secrets::register(url.trim());
    match state.handle.callbacks().paste(&name, &url).await {
        Ok(()) => {
            state.links.clear(&name);
            HttpResponse::Ok().json(json!({
                "server": name,
                "completed": true,
                "message": "the authorization response was accepted and its code exchanged; the token is being stored",
            }))
        }
        Err(e) => {
            let status = match e {
                DeliveryError::NotWaiting(_) => StatusCode::CONFLICT,
                DeliveryError::NotAResponse(_) | DeliveryError::Refused(_) => {
                    StatusCode::BAD_REQUEST
                }
                DeliveryError::Failed(_) => StatusCode::BAD_GATEWAY,
            };
            error(status, e.code(), e.to_string())
        }
    }
}

/// The page's inline script, hashed for its Content-Security-Policy (no other script runs).
static CSP: LazyLock<String> = LazyLock::new(|| {
    let script = PAGE
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
});

/// On every answer: no framing (clickjacking the page's buttons), no other script than the
/// page's own, no MIME sniffing, and no `Referer` that could carry a URL with the key.
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::CONTENT_SECURITY_POLICY, CSP.as_str()))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
}

/// The page. Opened with `?apikey=KEY` (the URL `serve` prints), it sets its cookie and sends
/// the browser to `/`, so the key leaves the address bar and a reload works on the cookie.
async fn page(req: HttpRequest, guard: Data<Guard>) -> HttpResponse {
    if req.extensions().get::<KeyVia>() == Some(&KeyVia::Query) {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            guard.cookie_name(),
            guard.key().cookie_value()
        );
        return HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/"))
            .insert_header((header::SET_COOKIE, cookie))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish();
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(PAGE)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn metrics(state: Data<AppState>) -> HttpResponse {
    let store = state.handle.store_health().await;
    match state.handle.status().await {
        Ok(statuses) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(state.metrics.render(
                &statuses,
                &state.handle.scheduler_counters(),
                &store,
                now_ms(),
            )),
        Err(e) => supervisor_error(&e),
    }
}

async fn list_servers(state: Data<AppState>) -> HttpResponse {
    match servers::views(&state.handle, &state.links).await {
        Ok((views, store)) => {
            HttpResponse::Ok().json(scrubbed(json!({ "servers": views, "store": store })))
        }
        Err(e) => supervisor_error(&e),
    }
}

async fn one_server(state: Data<AppState>, name: web::Path<String>) -> HttpResponse {
    match servers::view(&state.handle, &state.links, &name).await {
        Ok(Some(view)) => HttpResponse::Ok().json(scrubbed(view)),
        Ok(None) => unknown_server(&state, &name),
        Err(e) => supervisor_error(&e),
    }
}

/// Starts the action's flow and answers when it ends, when it produced an authorization link
/// (a login waiting for a person), or after `action_wait`, whichever is first. The flow keeps
/// running after the answer.
async fn run_action(state: Data<AppState>, name: String, action: Action) -> HttpResponse {
    if !state.handle.servers().contains(&name) {
        return unknown_server(&state, &name);
    }
    let handle = state.handle.clone();
    if action == Action::Logout {
        return match handle.logout(&name).await {
            Ok(()) => {
                state.links.clear(&name);
                HttpResponse::Ok().json(json!({"correlation_id": null, "browser_opened": false}))
            }
            Err(e) => supervisor_error(&e),
        };
    }
    // A login already waiting for a person: answer with its link rather than wait again.
    if action != Action::Refresh
        && let Ok(all) = handle.status().await
        && let Some(status) = all.iter().find(|s| s.name == name)
        && status.running_flow_kind == Some(crate::telemetry::flow_logger::FlowKind::Login)
        && let Some(link) = state.links.for_server(status)
    {
        return HttpResponse::Accepted().json(json!({
            "correlation_id": status.running_flow,
            "auth_url": (!link.browser_opened).then(|| link.url.as_str()),
            "browser_opened": link.browser_opened,
            "browser_error": link.browser_error,
        }));
    }
    let since = now_ms();
    let flow_name = name.clone();
    let flow = actix_web::rt::spawn(async move {
        match action {
            Action::Login => handle.login(&flow_name).await,
            Action::Refresh => handle.refresh(&flow_name).await,
            Action::Reconnect | Action::Logout => handle.reconnect(&flow_name).await,
        }
    });
    let link_or_wait = async {
        tokio::select! {
            link = state.links.wait_for(&name, since) => Some(link),
            _ = tokio::time::sleep(state.config.action_wait) => None,
        }
    };
    tokio::select! {
        done = flow => {
            let link = state.links.get(&name).filter(|l| l.at >= since);
            match done {
                Ok(Ok(grant)) => {
                    if action == Action::Refresh
                        && let Some(failed) = failed_refresh(&state, &name, grant.flow_id.as_deref()).await
                    {
                        return failed;
                    }
                    HttpResponse::Ok().json(json!({
                        "correlation_id": grant.flow_id,
                        "auth_url": link.as_ref().filter(|l| !l.browser_opened).map(|l| l.url.as_str()),
                        "browser_opened": link.as_ref().is_some_and(|l| l.browser_opened),
                        "browser_error": link.as_ref().and_then(|l| l.browser_error.clone()),
                    }))
                }
                Ok(Err(e)) => supervisor_error(&e),
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the flow task ended unexpectedly; see the daemon's log",
                ),
            }
        }
        link = link_or_wait => {
            let running = state
                .handle
                .status()
                .await
                .ok()
                .and_then(|all| all.into_iter().find(|s| s.name == name))
                .and_then(|s| s.running_flow);
            HttpResponse::Accepted().json(json!({
                "correlation_id": running,
                "auth_url": link.as_ref().filter(|l| !l.browser_opened).map(|l| l.url.as_str()),
                "browser_opened": link.as_ref().is_some_and(|l| l.browser_opened),
                "browser_error": link.as_ref().and_then(|l| l.browser_error.clone()),
            }))
        }
    }
}

/// An asked-for refresh whose flow failed while the current token is still valid: the server
/// goes on serving that token (its waiters get it), but the person who asked for a refresh
/// hears that it failed: 502 `flow_failed` with the flow's error and what the server does next.
async fn failed_refresh(
    state: &AppState,
    name: &str,
    flow_id: Option<&str>,
) -> Option<HttpResponse> {
    let flow_id = flow_id?;
    let row = state
        .handle
        .flows(None, Some(flow_id.to_string()), 1)
        .await
        .ok()?
        .into_iter()
        .next()
        .filter(|row| row.state == "failed")?;
    let error_text = row
        .error
        .clone()
        .unwrap_or_else(|| "the refresh failed".into());
    let status = state
        .handle
        .status()
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|s| s.name == name));
    let failure = status.as_ref().and_then(|s| match &s.phase {
        Phase::NeedsLogin { reason, .. } => Some(Failure::NeedsLogin {
            reason: reason.clone(),
        }),
        // The refresh token was refused, the access token still lasts: a login comes next.
        phase => phase.waiting_failure().or_else(|| {
            (!s.has_refresh_token).then(|| Failure::NeedsLogin {
                reason: LoginReason::RefreshTokenRejected {
                    error: error_text.clone(),
                },
            })
        }),
    });
    let next = status
        .and_then(|s| s.detail)
        .map(|d| format!("; {d}"))
        .unwrap_or_default();
    Some(HttpResponse::BadGateway().json(scrubbed(json!({"error": {
        "code": "flow_failed",
        "message": format!(
            "{name}: the refresh failed ({error_text}); the current token is served until it \
             expires{next}"
        ),
        "correlation_id": flow_id,
        "failure": failure,
    }}))))
}

/// Walks discovery, client identity and the token endpoint (no browser, no side effects).
async fn diagnose(state: Data<AppState>, name: web::Path<String>) -> HttpResponse {
    let Some(server) = state.config.servers.iter().find(|s| s.name == *name) else {
        return unknown_server(&state, &name);
    };
    let timeout = Duration::from_secs(10);
    let http = crate::oauth::http::OAuthHttp::new(timeout);
    HttpResponse::Ok().json(scrubbed(
        crate::diagnose::diagnose(&http, server, timeout).await,
    ))
}

fn flow_json(row: &FlowRow) -> Value {
    json!({
        "correlation_id": row.flow_id,
        "server": row.server_name,
        "kind": row.kind,
        "state": row.state,
        "owner": row.owner,
        "started_at": rfc3339(row.started_at),
        "finished_at": row.finished_at.map(rfc3339),
        "duration_ms": row.finished_at.map(|f| f - row.started_at),
        "error": row.error,
    })
}

#[derive(Deserialize)]
struct FlowsQuery {
    server: Option<String>,
    limit: Option<u32>,
}

async fn list_flows(state: Data<AppState>, query: web::Query<FlowsQuery>) -> HttpResponse {
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > FLOWS_LIMIT_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit must be between 1 and {FLOWS_LIMIT_MAX}"),
        );
    }
    let server = query.server.clone().filter(|s| !s.is_empty());
    match state.handle.flows(server, None, limit).await {
        Ok(rows) => HttpResponse::Ok().json(scrubbed(
            json!({"flows": rows.iter().map(flow_json).collect::<Vec<_>>()}),
        )),
        Err(e) => supervisor_error(&e),
    }
}

async fn one_flow(state: Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    let row = match state.handle.flows(None, Some(id.clone()), 1).await {
        Ok(rows) => rows.into_iter().next(),
        Err(e) => return supervisor_error(&e),
    };
    let events = match state.handle.flow_trace(&id).await {
        Ok(events) => events,
        Err(e) => return supervisor_error(&e),
    };
    if row.is_none() && events.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_flow",
            format!(
                "no flow {id:?} in the database or the recent traces; GET /api/v1/flows lists them"
            ),
        );
    }
    HttpResponse::Ok().json(scrubbed(json!({
        "correlation_id": id,
        "flow": row.as_ref().map(flow_json),
        "events": events,
    })))
}

async fn events(state: Data<AppState>) -> HttpResponse {
    let Some(slot) = state.limits.subscriber_slot() else {
        return state.limits.too_many_subscribers();
    };
    let receiver = state.hub.subscribe();
    let heartbeat = state.config.heartbeat.max(Duration::from_millis(10));
    let ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let hello = Some(Bytes::from_static(b"retry: 2000\n: connected\n\n"));
    // The slot lives in the stream's state: it is freed when the subscriber goes.
    let stream = futures_util::stream::unfold(
        (receiver, ticks, hello, slot),
        |(mut receiver, mut ticks, mut hello, slot)| async move {
            if let Some(first) = hello.take() {
                return Some((
                    Ok::<_, actix_web::Error>(first),
                    (receiver, ticks, hello, slot),
                ));
            }
            let frame = tokio::select! {
                event = receiver.recv() => event?.frame(),
                _ = ticks.tick() => format!("event: heartbeat\ndata: {{\"at\":\"{}\"}}\n\n", rfc3339(now_ms())),
            };
            Some((Ok(Bytes::from(frame)), (receiver, ticks, hello, slot)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}
