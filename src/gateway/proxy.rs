//! `/mcp/{server}`: one request relayed. The server is looked up by the path's one segment
//! (percent-decoded: `org%2Fserver` names `org/server`); the upstream URL is the configured
//! one, never built from the request's path or query, so no path reaches anything but the
//! configured server. Bounds first (in flight, SSE streams, the body's size and time), then the
//! upstream exchange, then the answer streamed back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::{StatusCode, header};
use actix_web::web::{self, Bytes, BytesMut, Data};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::Gateway;
use super::headers;
use super::relay::{self, Bounds};
use super::unavailable::{self, Unavailable};
use super::upstream::{Answer, Failed, Outgoing, Upstream};

const ALLOW: &str = "GET, POST, DELETE";

/// A JSON-RPC error answer of the gateway's own (no upstream answer to relay).
fn rpc_error(status: StatusCode, code: i64, message: String, id: Option<&Value>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": {"code": code, "message": message},
        }))
}

/// 503 with `Retry-After`: never a 401, never a `WWW-Authenticate`.
fn unavailable(u: &Unavailable, server: &str, id: Option<&Value>) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, u.retry_after_secs.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(u.body(server, id))
}

/// A request refused (or an answer dropped) by a bound: counted under `limit`.
fn refused(upstream: &Upstream, limit: &str, status: StatusCode, message: String) -> HttpResponse {
    upstream.metrics.refused(limit);
    rpc_error(status, -32600, message, None)
}

/// A bound reached before anything went upstream: 503 with `Retry-After: 1`.
fn busy(server: &str, what: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, "1"))
        .json(json!({
            "jsonrpc": "2.0", "id": null,
            "error": {"code": unavailable::UNAVAILABLE_CODE,
                      "message": format!("mcpproxy-oauth: {what} for server {server:?}; retry after 1 s")},
        }))
}

enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

/// The whole request body, at most `max` bytes, within `deadline`. One chunk (the usual
/// case) is kept as it came, without a copy.
async fn read_body(
    mut payload: web::Payload,
    max: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    let read = async {
        let mut first: Option<Bytes> = None;
        let mut rest: Option<BytesMut> = None;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| BodyError::Broken)?;
            let so_far =
                first.as_ref().map_or(0, Bytes::len) + rest.as_ref().map_or(0, BytesMut::len);
            if so_far + chunk.len() > max {
                return Err(BodyError::TooLarge);
            }
            match (&first, &mut rest) {
                (None, _) => first = Some(chunk),
                (Some(head), None) => {
                    let mut joined = BytesMut::with_capacity(head.len() + chunk.len());
                    joined.extend_from_slice(head);
                    joined.extend_from_slice(&chunk);
                    rest = Some(joined);
                }
                (Some(_), Some(joined)) => joined.extend_from_slice(&chunk),
            }
        }
        Ok(match rest {
            Some(joined) => joined.freeze(),
            None => first.unwrap_or_default(),
        })
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// The handler of `/mcp/{server}`.
pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    server: web::Path<String>,
    gateway: Data<Gateway>,
) -> HttpResponse {
    let name = server.into_inner();
    let Some(upstream) = gateway.upstream(&name) else {
        gateway.metrics.unknown_server(404);
        let shown = crate::telemetry::inert::safe(&name);
        return rpc_error(
            StatusCode::NOT_FOUND,
            -32000,
            format!(
                "mcpproxy-oauth: no server named {shown:?} is configured; configured servers: {}",
                gateway.names.join(", ")
            ),
            None,
        );
    };
    let started = Instant::now();
    let response = relay_request(&req, payload, upstream).await;
    let status = response.status().as_u16();
    upstream.metrics.answered(status);
    if status >= 500 {
        tracing::warn!(
            server = %name,
            method = %req.method(),
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "gateway request not served"
        );
    }
    response
}

async fn relay_request(
    req: &HttpRequest,
    payload: web::Payload,
    upstream: &Arc<Upstream>,
) -> HttpResponse {
    let name = upstream.name.as_str();
    let method = match req.method().as_str() {
        "POST" => reqwest::Method::POST,
        "GET" => reqwest::Method::GET,
        "DELETE" => reqwest::Method::DELETE,
        other => {
            let mut response = rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                -32600,
                format!(
                    "mcpproxy-oauth: {other} is not part of the MCP Streamable HTTP transport; use {ALLOW}"
                ),
                None,
            );
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(ALLOW));
            return response;
        }
    };
    let limits = &upstream.limits;
    let mut slots = Vec::with_capacity(2);
    let standalone_stream = method == reqwest::Method::GET;
    let bounds = [
        (
            true,
            &upstream.in_flight,
            &upstream.metrics.in_flight,
            "max_in_flight",
            "too many requests in flight",
        ),
        (
            standalone_stream,
            &upstream.sse_streams,
            &upstream.metrics.sse_streams,
            "max_sse_streams",
            "too many SSE streams open",
        ),
    ];
    for (applies, gauge, shown, limit, what) in bounds {
        if !applies {
            continue;
        }
        match gauge.try_take(Some(shown)) {
            Some(slot) => slots.push(slot),
            None => {
                upstream.metrics.refused(limit);
                return busy(name, what);
            }
        }
    }
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_request_bytes as u64) {
        return too_large(upstream);
    }
    let body = match read_body(payload, limits.max_request_bytes, limits.client_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(upstream),
        Err(BodyError::Timeout) => {
            return refused(
                upstream,
                "client_timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "mcpproxy-oauth: the request body did not arrive within {:?}",
                    limits.client_timeout
                ),
            );
        }
        Err(BodyError::Broken) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                -32600,
                "mcpproxy-oauth: the request body could not be read".into(),
                None,
            );
        }
    };
    let out = Outgoing {
        method,
        headers: headers::to_upstream(req.headers()),
        body,
    };
    match upstream.send(&out).await {
        Ok(answer) => answered(answer, upstream, slots, standalone_stream, req),
        Err(Failed::Unavailable(u)) => {
            upstream.metrics.unavailable(u.phase);
            tracing::warn!(
                server = name,
                phase = u.phase,
                correlation_id = u.correlation_id.as_deref(),
                retry_after_s = u.retry_after_secs,
                "no usable token: answered 503 with Retry-After"
            );
            unavailable(&u, name, unavailable::request_id(&out.body).as_ref())
        }
        Err(Failed::Timeout) => rpc_error(
            StatusCode::GATEWAY_TIMEOUT,
            -32000,
            format!(
                "mcpproxy-oauth: server {name:?} did not answer within {:?}",
                limits.upstream_timeout
            ),
            unavailable::request_id(&out.body).as_ref(),
        ),
        Err(Failed::Transport(reason)) => rpc_error(
            StatusCode::BAD_GATEWAY,
            -32000,
            format!("mcpproxy-oauth: server {name:?}: {reason}"),
            unavailable::request_id(&out.body).as_ref(),
        ),
    }
}

fn too_large(upstream: &Upstream) -> HttpResponse {
    refused(
        upstream,
        "max_request_bytes",
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "mcpproxy-oauth: the request body is larger than the gateway's bound of {} bytes \
             (--gateway-max-request-bytes)",
            upstream.limits.max_request_bytes
        ),
    )
}

/// The upstream's answer, streamed back with the client's share of its headers.
fn answered(
    answer: Answer,
    upstream: &Arc<Upstream>,
    slots: Vec<super::limits::Slot>,
    standalone_stream: bool,
    req: &HttpRequest,
) -> HttpResponse {
    let Answer {
        response,
        correlation_id,
        retries,
    } = answer;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let limits = &upstream.limits;
    let length = response.content_length().filter(|_| !is_sse);
    if correlation_id.is_some() || retries > 0 {
        tracing::info!(
            server = %upstream.name,
            method = %req.method(),
            status = status.as_u16(),
            correlation_id = correlation_id.as_deref(),
            retries,
            "proxied after a token flow"
        );
    } else {
        tracing::debug!(
            server = %upstream.name,
            method = %req.method(),
            status = status.as_u16(),
            sse = is_sse,
            "proxied"
        );
    }
    if length.is_some_and(|n| n > limits.max_response_bytes as u64) {
        return refused(
            upstream,
            "max_response_bytes",
            StatusCode::BAD_GATEWAY,
            format!(
                "mcpproxy-oauth: server {:?} answered more than the gateway's bound of {} bytes \
                 (--gateway-max-response-bytes)",
                upstream.name, limits.max_response_bytes
            ),
        );
    }
    let mut builder = HttpResponse::build(status);
    for (name, value) in headers::to_client(response.headers()) {
        builder.append_header((name, value));
    }
    if let Some(via) = headers::via_to_client(response.headers()) {
        builder.insert_header(("via", via.as_bytes()));
    }
    let bounds = Bounds {
        max_bytes: limits.max_response_bytes,
        per_event: is_sse,
        idle: if is_sse && standalone_stream {
            limits.sse_idle_timeout
        } else {
            limits.upstream_timeout
        },
    };
    let body = relay::body(response, bounds, upstream.metrics.clone(), slots);
    match length {
        Some(n) => builder.body(SizedStream::new(n, Box::pin(body))),
        None => builder.streaming(Box::pin(body)),
    }
}
