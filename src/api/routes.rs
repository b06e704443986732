//! The HTTP surface. Every error answers the one shape
//! `{"error": {"code": "...", "message": "...", "correlation_id": "..."?}}`: unknown server or
//! path 404, wrong method 405 (with `Allow`), bad query 400, missing or wrong API key 401,
//! another web origin or a non-loopback Host on a loopback listener 403, a failed flow 502,
//! the supervisor gone 503.

use std::time::Duration;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::web::{self, Bytes, Data};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::servers;
use super::view::rfc3339;
use crate::store::db::{FlowRow, now_ms};
use crate::supervisor::SupervisorError;

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

/// Keys whose values a person must use as they are: an authorization URL carries `state`.
pub(super) const UNSCRUBBED: &[&str] = &["auth_url", "login_link"];

/// An answer with every known secret scrubbed (a server's echo in an error text, a view's
/// last error), the authorization links excepted.
fn scrubbed(value: impl serde::Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(value).unwrap_or_default();
    crate::telemetry::secrets::scrub_json(&mut value, UNSCRUBBED);
    value
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(scrubbed(
        json!({"error": {"code": code, "message": message.into()}}),
    ))
}

/// A failed flow, with the server's typed failure (`needs_login`, `backing_off`, ...) beside
/// the message, so clients decide on `failure.kind`, never on the text.
fn upstream_error(e: &SupervisorError) -> HttpResponse {
    HttpResponse::build(StatusCode::BAD_GATEWAY).json(scrubbed(json!({"error": {
        "code": "flow_failed",
        "message": e.to_string(),
        "correlation_id": e.flow_id(),
        "failure": e.failure(),
    }})))
}

fn supervisor_error(e: &SupervisorError) -> HttpResponse {
    match e {
        SupervisorError::UnknownServer { .. } => {
            error(StatusCode::NOT_FOUND, "unknown_server", e.to_string())
        }
        SupervisorError::Upstream(_) => upstream_error(e),
        SupervisorError::Store(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            format!("{e}; see the daemon's log"),
        ),
        SupervisorError::Stopped => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the daemon is shutting down",
        ),
        SupervisorError::InvalidInput(_) => {
            error(StatusCode::BAD_REQUEST, "invalid_input", e.to_string())
        }
    }
}

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
    let api = web::scope("")
        .wrap(from_fn(require_key))
        .service(resource("/").route(web::get().to(page)))
        .service(resource("/metrics").route(web::get().to(metrics)))
        .service(resource("/api/v1/openapi.json").route(web::get().to(openapi)))
        .service(resource("/api/v1/servers").route(web::get().to(list_servers)))
        .service(resource("/api/v1/servers/{name}").route(web::get().to(one_server)));
    let api = ["login", "logout", "refresh", "reconnect"]
        .into_iter()
        .fold(api, |api, action| {
            let path: &'static str = match action {
                "login" => "/api/v1/servers/{name}/login",
                "logout" => "/api/v1/servers/{name}/logout",
                "refresh" => "/api/v1/servers/{name}/refresh",
                _ => "/api/v1/servers/{name}/reconnect",
            };
            api.service(resource(path).route(web::post().to(
                move |state: Data<AppState>, name: web::Path<String>| {
                    run_action(state, name.into_inner(), action)
                },
            )))
        })
        .service(resource("/api/v1/servers/{name}/diagnose").route(web::get().to(diagnose)))
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
    cfg.service(api);
}

/// The API key, when one is set, on everything but the static page (which holds no data
/// and asks for the key itself).
async fn require_key(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    let state = req.app_data::<Data<AppState>>().cloned();
    if let Some(refusal) = foreign_request(&req, state.as_ref().map(|s| s.get_ref())) {
        return Ok(req.into_response(refusal).map_into_right_body());
    }
    let key = state.as_ref().and_then(|s| s.config.api_key.clone());
    let open = req.path() == "/" && req.method() == Method::GET;
    if let Some(key) = key
        && !open
        && !super::auth::presented(req.headers()).is_some_and(|k| key.matches(k))
    {
        let response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
        );
        return Ok(req.into_response(response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Another web site's page in the user's browser must not drive the API (a cross-site POST
/// needs no preflight), nor a DNS name rebound to loopback: a request whose `Origin` is not
/// this server, or, on a loopback listener, whose `Host` is not a loopback name, is refused.
fn foreign_request(req: &ServiceRequest, state: Option<&AppState>) -> Option<HttpResponse> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Some(error(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "requests from another web origin are refused; use the page this daemon serves, or a client without an Origin header",
            ));
        }
    }
    let loopback_listener = state.is_some_and(|s| s.config.listen.ip().is_loopback());
    let hostname = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    let loopback_name =
        matches!(hostname, "127.0.0.1" | "localhost" | "[::1]") || hostname.starts_with("127.");
    if loopback_listener && !loopback_name {
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!("Host {hostname:?} is not a loopback name; use http://127.0.0.1:PORT/"),
        ));
    }
    None
}

async fn page() -> HttpResponse {
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
    match state.handle.status().await {
        Ok(statuses) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(
                state
                    .metrics
                    .render(&statuses, &state.handle.scheduler_counters(), now_ms()),
            ),
        Err(e) => supervisor_error(&e),
    }
}

async fn list_servers(state: Data<AppState>) -> HttpResponse {
    match servers::views(&state.handle, &state.links).await {
        Ok(views) => HttpResponse::Ok().json(scrubbed(json!({ "servers": views }))),
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
async fn run_action(state: Data<AppState>, name: String, action: &'static str) -> HttpResponse {
    if !state.handle.servers().contains(&name) {
        return unknown_server(&state, &name);
    }
    let handle = state.handle.clone();
    if action == "logout" {
        return match handle.logout(&name).await {
            Ok(()) => {
                state.links.clear(&name);
                HttpResponse::Ok().json(json!({"correlation_id": null, "browser_opened": false}))
            }
            Err(e) => supervisor_error(&e),
        };
    }
    // A login already waiting for a person: answer with its link rather than wait again.
    if action != "refresh"
        && let Ok(all) = handle.status().await
        && let Some(status) = all.iter().find(|s| s.name == name)
        && status.running_flow_kind == Some(crate::telemetry::flow_logger::FlowKind::Login)
        && let Some(link) = state.links.get(&name)
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
            "login" => handle.login(&flow_name).await,
            "refresh" => handle.refresh(&flow_name).await,
            _ => handle.reconnect(&flow_name).await,
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
                Ok(Ok(grant)) => HttpResponse::Ok().json(json!({
                    "correlation_id": grant.flow_id,
                    "auth_url": link.as_ref().filter(|l| !l.browser_opened).map(|l| l.url.as_str()),
                    "browser_opened": link.as_ref().is_some_and(|l| l.browser_opened),
                    "browser_error": link.as_ref().and_then(|l| l.browser_error.clone()),
                })),
                Ok(Err(e)) => supervisor_error(&e),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the flow task ended unexpectedly; see the daemon's log"),
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

/// Walks discovery, client identity and the token endpoint (no browser, no side effects).
async fn diagnose(state: Data<AppState>, name: web::Path<String>) -> HttpResponse {
    let Some(server) = state.config.servers.iter().find(|s| s.name == *name) else {
        return unknown_server(&state, &name);
    };
    let timeout = Duration::from_secs(10);
    let http = crate::oauth::http::OAuthHttp::new(timeout);
    HttpResponse::Ok().json(scrubbed(
        crate::oauth::diagnose::diagnose(&http, server, timeout).await,
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
    let receiver = state.hub.subscribe();
    let heartbeat = state.config.heartbeat.max(Duration::from_millis(10));
    let ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let hello = Some(Bytes::from_static(b"retry: 2000\n: connected\n\n"));
    let stream = futures_util::stream::unfold(
        (receiver, ticks, hello),
        |(mut receiver, mut ticks, mut hello)| async move {
            if let Some(first) = hello.take() {
                return Some((Ok::<_, actix_web::Error>(first), (receiver, ticks, hello)));
            }
            let frame = tokio::select! {
                event = receiver.recv() => event?.frame(),
                _ = ticks.tick() => format!("event: heartbeat\ndata: {{\"at\":\"{}\"}}\n\n", rfc3339(now_ms())),
            };
            Some((Ok(Bytes::from(frame)), (receiver, ticks, hello)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}
