//! `POST /mcp`: a protected MCP Streamable HTTP endpoint. It validates the bearer token as a
//! real resource server would (signature, audience, expiry with no leeway, revocation) and
//! answers challenges with `WWW-Authenticate` as the MCP authorization specification asks.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ConnectionKill, Intercept, intercept};
use crate::dpop::{self, Refusal, Refused, Role};
use crate::faults::{FaultKind, FaultTarget};
use crate::jwt::AccessClaims;
use crate::state::{AppState, random_token};

pub async fn get_not_allowed() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

pub async fn post(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut response = answer(state.clone(), kill, headers, body).await;
    // RFC 9449 §9: a resource server using nonces may announce the next one on any answer.
    let now = state.now_ms();
    if !response.headers().contains_key("dpop-nonce")
        && let Some(nonce) = state
            .lock()
            .dpop_nonce_for(&state.config, Role::Mcp, now)
            .and_then(|n| HeaderValue::from_str(&n).ok())
    {
        response.headers_mut().insert("dpop-nonce", nonce);
    }
    response
}

async fn answer(
    state: AppState,
    kill: ConnectionKill,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let injected_token_error = match intercept(&state, FaultTarget::Mcp, &kill).await {
        Intercept::Proceed => false,
        Intercept::Respond(response) => return response,
        Intercept::Shape(FaultKind::InsufficientScope) => return never_enough_scope(&state),
        Intercept::Shape(_) => true,
    };
    state.lock().stats.mcp_requests += 1;
    let anonymous = state.config.mcp_anonymous_discovery && {
        let method = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|m| m.get("method").and_then(Value::as_str).map(String::from));
        method.as_deref() != Some("tools/call")
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(scheme, token)| (scheme.to_ascii_lowercase(), token.trim()));
    let (dpop_scheme, bearer) = match &presented {
        Some((scheme, token)) if scheme == "bearer" => (false, Some(*token)),
        Some((scheme, token)) if scheme == "dpop" && state.config.dpop_enabled() => {
            (true, Some(*token))
        }
        _ => (false, None),
    };
    let claims = match (bearer, injected_token_error) {
        _ if anonymous => None,
        (None, _) => return unauthorized(&state, None),
        (Some(_), true) => {
            return unauthorized(&state, Some("the token was refused (injected fault)"));
        }
        (Some(token), false) => match validate(&state, token) {
            Ok(claims) => Some(claims),
            Err(reason) => return unauthorized(&state, Some(&reason)),
        },
    };
    if let Some(token) = bearer.filter(|_| !anonymous)
        && let Err(refused) = check_dpop_use(&state, &headers, dpop_scheme, token)
    {
        return *refused;
    }

    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return rpc_response(
            &state,
            json!({"jsonrpc": "2.0", "id": null,
            "error": {"code": -32700, "message": "parse error"}}),
            None,
        );
    };
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        return rpc_response(
            &state,
            json!({"jsonrpc": "2.0", "id": null,
            "error": {"code": -32600, "message": "invalid request: one JSON-RPC request object expected"}}),
            None,
        );
    };
    let Some(id) = message.get("id").cloned() else {
        // A notification (e.g. notifications/initialized): accepted, no body.
        return StatusCode::ACCEPTED.into_response();
    };
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    if state.config.mcp_stateless
        && let Some(refused) = refuse_stateless(&headers, &params, &id)
    {
        return refused;
    }
    let mut session = None;
    let outcome: Result<Value, (i64, String)> = match method {
        "server/discover" if state.config.mcp_stateless => Ok(json!({
            "supportedVersions": [STATELESS_VERSION],
            "capabilities": {"tools": {"listChanged": false}},
            "_meta": {"io.modelcontextprotocol/serverInfo":
                {"name": "oauth-test-server", "version": env!("CARGO_PKG_VERSION")}},
        })),
        "initialize" if !state.config.mcp_stateless => {
            session = Some(random_token("session_"));
            let version = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-06-18");
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "oauth-test-server", "version": env!("CARGO_PKG_VERSION")},
            }))
        }
        "ping" => Ok(json!({})),
        // `progress` and `progress_release` are callable but not listed: tests name them.
        "tools/list" => Ok(json!({"tools": [
            {"name": "echo", "description": "Returns its message argument.",
             "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}},
            {"name": "get_time", "description": "Returns the server's time in unix milliseconds.",
             "inputSchema": {"type": "object", "properties": {}}},
        ]})),
        "tools/call" => {
            let tool = params
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(claims) = &claims else {
                return unauthorized(&state, None);
            };
            if let Some(denied) = missing_tool_scope(&state, tool, claims) {
                return denied;
            }
            match tool {
                "progress" => return progress(&params, id),
                "progress_release" => {
                    let key = params
                        .pointer("/arguments/key")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let released = release(key);
                    Ok(
                        json!({"content": [{"type": "text", "text": released.to_string()}], "isError": !released}),
                    )
                }
                "echo" => {
                    let text = params
                        .pointer("/arguments/message")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Ok(json!({"content": [{"type": "text", "text": text}], "isError": false}))
                }
                "get_time" => Ok(
                    json!({"content": [{"type": "text", "text": state.now_ms().to_string()}], "isError": false}),
                ),
                other => Err((-32602, format!("unknown tool {other:?}"))),
            }
        }
        other => Err((-32601, format!("method {other:?} not found"))),
    };
    let reply = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    };
    rpc_response(&state, reply, session)
}

const STATELESS_VERSION: &str = "2026-07-28";

/// How long a `progress` call waits for each release before it gives up.
const PROGRESS_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The releases waiting `progress` calls listen for, by key (the client picks the key).
static RELEASES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
> = std::sync::LazyLock::new(Default::default);

fn releases_of(key: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
    let mut book = RELEASES.lock().unwrap_or_else(|p| p.into_inner());
    book.entry(key.to_string())
        .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(0)))
        .clone()
}

/// Lets the `progress` call with `key` send its next message; false if none is running.
fn release(key: &str) -> bool {
    let book = RELEASES.lock().unwrap_or_else(|p| p.into_inner());
    match book.get(key) {
        Some(releases) => {
            releases.add_permits(1);
            true
        }
        None => false,
    }
}

/// The `progress` tool: an SSE answer that sends `steps` `notifications/progress` (with the
/// request's `progressToken`), each after the client released the previous one with
/// `progress_release(key)`, then the result. A client that sees a notification only when
/// the stream ends (a buffering proxy) never releases it: after `PROGRESS_RELEASE_WAIT` the
/// result says so (`isError`).
fn progress(params: &Value, id: Value) -> Response {
    let steps = params
        .pointer("/arguments/steps")
        .and_then(Value::as_u64)
        .unwrap_or(3)
        .clamp(1, 20);
    let key = params
        .pointer("/arguments/key")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let token = params
        .pointer("/_meta/progressToken")
        .cloned()
        .unwrap_or(Value::Null);
    let releases = releases_of(&key);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let event = |message: Value| Bytes::from(format!("event: message\ndata: {message}\n\n"));
        let mut released = 0;
        for step in 1..=steps {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": token, "progress": step, "total": steps}});
            if tx.send(event(note)).await.is_err() {
                break;
            }
            match tokio::time::timeout(PROGRESS_RELEASE_WAIT, releases.acquire()).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    released += 1;
                }
                _ => break,
            }
        }
        RELEASES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let text = format!("{released} of {steps} notifications released");
        let result = json!({"jsonrpc": "2.0", "id": id,
            "result": {"content": [{"type": "text", "text": text}], "isError": released != steps}});
        let _ = tx.send(event(result)).await;
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::new(ChannelBody(rx)),
    )
        .into_response()
}

/// A response body fed by a channel: each message is sent to the client as it comes.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// The 2026-07-28 request checks: the version header, the same version in `_meta`, and the
/// client capabilities beside it. A refusal is HTTP 400 with a JSON-RPC error body.
fn refuse_stateless(headers: &HeaderMap, params: &Value, id: &Value) -> Option<Response> {
    let refuse = |code: i64, message: &str, data: Option<Value>| {
        let mut error = json!({"code": code, "message": message});
        if let Some(data) = data {
            error["data"] = data;
        }
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "error": error})),
        )
            .into_response()
    };
    let Some(header) = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
    else {
        return Some(refuse(-32020, "missing MCP-Protocol-Version header", None));
    };
    if header != STATELESS_VERSION {
        return Some(refuse(
            -32022,
            "Unsupported protocol version",
            Some(json!({"supported": [STATELESS_VERSION], "requested": header})),
        ));
    }
    let meta = params.get("_meta");
    if meta
        .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
        .and_then(Value::as_str)
        != Some(header)
        || meta
            .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
            .is_none()
    {
        return Some(refuse(
            -32602,
            "params._meta must carry the header's protocol version and the client capabilities",
            None,
        ));
    }
    None
}

fn validate(state: &AppState, token: &str) -> Result<AccessClaims, String> {
    let issuer = state.resource_issuer();
    let claims = state
        .signer
        .verify(token, &issuer, &state.mcp_resource())
        .map_err(|e| {
            if issuer == state.issuer() {
                e
            } else {
                "the authorization server has changed".into()
            }
        })?;
    if state.now_ms() >= claims.exp as i64 * 1000 {
        return Err("the access token expired".into());
    }
    let mut inner = state.lock();
    if inner.revoked_jtis.contains(&claims.jti) {
        return Err("the access token was revoked".into());
    }
    inner.accepted_mcp_requests += 1;
    Ok(claims)
}

/// How the token was presented, checked against its binding (RFC 9449 §7): a DPoP-bound
/// token only with the DPoP scheme and a valid proof of its key whose `ath` is the token's
/// hash; a Bearer token only when DPoP is not required.
fn check_dpop_use(
    state: &AppState,
    headers: &HeaderMap,
    dpop_scheme: bool,
    token: &str,
) -> Result<(), Box<Response>> {
    let bound_to = dpop::token_jkt(token);
    if !dpop_scheme {
        return match bound_to {
            Some(_) => Err(Box::new(unauthorized(
                state,
                Some("a DPoP-bound token must be presented with the DPoP scheme"),
            ))),
            None if state.config.dpop_required => Err(Box::new(unauthorized(
                state,
                Some("this resource accepts only DPoP-bound tokens"),
            ))),
            None => Ok(()),
        };
    }
    let now = state.now_ms();
    let mut inner = state.lock();
    let refused = match inner.check_dpop(
        &state.config,
        headers,
        Role::Mcp,
        "POST",
        &state.mcp_resource(),
        now,
    ) {
        Ok(Some(proof)) => {
            if proof.ath.as_deref() != Some(dpop::ath_of(token).as_str()) {
                inner.count_dpop_refusal(Refusal::BadProof);
                "the proof's ath is not the hash of the presented token"
            } else if bound_to.as_deref() != Some(proof.jkt.as_str()) {
                inner.count_dpop_refusal(Refusal::KeyMismatch);
                "the proof's key is not the key the token is bound to"
            } else {
                inner.stats.mcp_dpop_requests += 1;
                return Ok(());
            }
        }
        Ok(None) => {
            inner.count_dpop_refusal(Refusal::Missing);
            "the DPoP scheme needs a DPoP proof"
        }
        Err(Refused {
            why: Refusal::Nonce,
            ..
        }) => {
            let nonce = inner.dpop_nonce_for(&state.config, Role::Mcp, now);
            drop(inner);
            let mut response = dpop_challenge(state, "use_dpop_nonce", "a DPoP nonce is required");
            if let Some(nonce) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                response.headers_mut().insert("dpop-nonce", nonce);
            }
            return Err(Box::new(response));
        }
        Err(Refused { description, .. }) => {
            drop(inner);
            return Err(Box::new(dpop_challenge(
                state,
                "invalid_dpop_proof",
                &description,
            )));
        }
    };
    drop(inner);
    Err(Box::new(dpop_challenge(
        state,
        "invalid_dpop_proof",
        refused,
    )))
}

/// A 401 with a DPoP challenge naming the error (RFC 9449 §7.1).
fn dpop_challenge(state: &AppState, error: &str, description: &str) -> Response {
    state.lock().stats.mcp_401 += 1;
    let value = format!(
        "DPoP error=\"{error}\", error_description=\"{}\", algs=\"ES256\", resource_metadata=\"{}\"",
        description.replace('"', "'"),
        state.resource_metadata_url()
    );
    challenge_response(StatusCode::UNAUTHORIZED, value)
}

/// The 403 for a tool whose scope the token lacks, naming every scope the client should ask for.
fn missing_tool_scope(state: &AppState, tool: &str, claims: &AccessClaims) -> Option<Response> {
    let (_, needed) = state.config.tool_scopes.iter().find(|(t, _)| t == tool)?;
    let mut granted: Vec<&str> = claims.scope.split_whitespace().collect();
    if granted.contains(&needed.as_str()) {
        return None;
    }
    state.lock().stats.mcp_403 += 1;
    granted.push(needed);
    let value = format!(
        "Bearer error=\"insufficient_scope\", error_description=\"tool {tool} needs scope {needed}\", resource_metadata=\"{}\", scope=\"{}\"",
        state.resource_metadata_url(),
        granted.join(" ")
    );
    Some(challenge_response(StatusCode::FORBIDDEN, value))
}

/// The `insufficient_scope` fault: 403 asking for every scope, which no token ever satisfies.
fn never_enough_scope(state: &AppState) -> Response {
    state.lock().stats.mcp_403 += 1;
    let value = format!(
        "Bearer error=\"insufficient_scope\", error_description=\"injected fault\", resource_metadata=\"{}\", scope=\"{}\"",
        state.resource_metadata_url(),
        state.config.all_scopes().join(" ")
    );
    challenge_response(StatusCode::FORBIDDEN, value)
}

/// 401 with the challenge; `error="invalid_token"` only when a token was presented (RFC 6750 §3.1).
fn unauthorized(state: &AppState, invalid_token: Option<&str>) -> Response {
    state.lock().stats.mcp_401 += 1;
    let mut parts = Vec::new();
    if let Some(reason) = invalid_token {
        parts.push("error=\"invalid_token\"".to_string());
        parts.push(format!(
            "error_description=\"{}\"",
            reason.replace('"', "'")
        ));
    }
    parts.push(format!(
        "resource_metadata=\"{}\"",
        state.resource_metadata_url()
    ));
    let scopes = state.config.base_scopes();
    if !scopes.is_empty() {
        parts.push(format!("scope=\"{}\"", scopes.join(" ")));
    }
    // A resource that takes only DPoP-bound tokens challenges with the DPoP scheme (§7.1).
    let scheme = if state.config.dpop_required {
        parts.push("algs=\"ES256\"".into());
        "DPoP"
    } else {
        "Bearer"
    };
    challenge_response(
        StatusCode::UNAUTHORIZED,
        format!("{scheme} {}", parts.join(", ")),
    )
}

fn challenge_response(status: StatusCode, challenge: String) -> Response {
    let mut response = (status, axum::Json(json!({"error": "unauthorized"}))).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn rpc_response(state: &AppState, reply: Value, session: Option<String>) -> Response {
    let mut response = if state.config.mcp_sse_responses {
        let body = format!("event: message\ndata: {reply}\n\n");
        ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
    } else {
        axum::Json(reply).into_response()
    };
    if let Some(id) = session.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert("mcp-session-id", id);
    }
    response
}
