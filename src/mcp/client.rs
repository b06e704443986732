//! The MCP Streamable HTTP client: JSON-RPC over POST, answered with JSON or an SSE stream.
//! Authorization is the caller's business: this client only sends the token it is given (as
//! Bearer, or DPoP-bound with a proof per request when given a key) and reports 401/403 as
//! typed challenges.
//!
//! Two wires. The 2026-07-28 revision is stateless: no `initialize`, no session; every
//! request carries the `MCP-Protocol-Version` and `Mcp-Method` headers and, in `params._meta`,
//! the protocol version, client info and client capabilities. Older revisions open a session
//! with `initialize`. [`McpClient::initialize`] asks for 2026-07-28 first (`server/discover`)
//! and falls back to an `initialize` offering 2025-11-25 when the server does not speak it
//! (an HTTP 4xx, a JSON-RPC error, or -32022 "unsupported protocol version" listing what it
//! speaks); the server may then answer with any older revision this client knows.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use url::Url;

use crate::oauth::challenge::BearerChallenge;
use crate::oauth::dpop::Dpop;

/// The stateless revision, asked for first.
pub const LATEST_PROTOCOL_VERSION: &str = "2026-07-28";
/// Session-based revisions this client speaks, newest first; the first is offered in
/// `initialize`, any of them is accepted in the answer.
pub const SESSION_PROTOCOL_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// JSON-RPC error code of 2026-07-28 for a protocol version the server does not speak.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How much of a server's error message is kept in an error (a hostile server could send
/// megabytes).
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("the MCP server requires authorization (HTTP 401)")]
    Unauthorized(BearerChallenge),
    #[error(
        "the MCP server refused the request (HTTP 403{})",
        .0.error.as_deref().map(|e| format!(", {e}")).unwrap_or_default()
    )]
    Forbidden(BearerChallenge),
    #[error("the MCP server answered HTTP {status}")]
    Http { status: u16 },
    #[error("cannot reach the MCP server: {0}")]
    Transport(String),
    /// A JSON-RPC error, in a 200 answer (`status: None`) or as the body of an HTTP error.
    #[error(
        "the MCP server answered {}JSON-RPC error {code}: {message}",
        .status.map(|s| format!("HTTP {s} with ")).unwrap_or_default()
    )]
    Rpc {
        status: Option<u16>,
        code: i64,
        message: String,
        data: Option<Value>,
    },
    #[error("the MCP server sent an unusable response: {0}")]
    Malformed(String),
    #[error(
        "no common MCP protocol version: the server speaks {server}, this client {client}; upgrade whichever is older"
    )]
    NoCommonVersion { server: String, client: String },
}

impl McpError {
    /// Whether this answer to a 2026-07-28 request means "this server does not speak it":
    /// the request was understood as far as HTTP goes and refused, not a failure to reach the
    /// server, an authorization challenge or a server fault.
    fn means_unsupported_wire(&self) -> bool {
        match self {
            McpError::Http { status } => (400..500).contains(status),
            McpError::Rpc { status, .. } => status.is_none_or(|s| (400..500).contains(&s)),
            _ => false,
        }
    }

    /// The versions a -32022 error says the server speaks.
    fn supported_versions(&self) -> Option<Vec<String>> {
        let McpError::Rpc {
            code: UNSUPPORTED_PROTOCOL_VERSION,
            data: Some(data),
            ..
        } = self
        else {
            return None;
        };
        let list = data.get("supported")?.as_array()?;
        Some(
            list.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        )
    }
}

/// Which wire a client speaks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Not negotiated yet: 2026-07-28 is tried first.
    Unknown,
    /// 2026-07-28: every request stands alone.
    Stateless,
    /// An `initialize`d session of an older revision.
    Session,
}

/// One MCP connection with one server.
pub struct McpClient {
    http: reqwest::Client,
    url: Url,
    wire: Wire,
    session_id: Option<String>,
    protocol_version: Option<String>,
    next_id: u64,
    /// Present tokens with the DPoP scheme and a proof of this key (RFC 9449 §7).
    dpop: Option<Dpop>,
}

impl McpClient {
    pub fn new(url: Url, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("mcpproxy-oauth/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with these settings always builds");
        McpClient {
            http,
            url,
            wire: Wire::Unknown,
            session_id: None,
            protocol_version: None,
            next_id: 1,
            dpop: None,
        }
    }

    /// Presents tokens as DPoP-bound (`Authorization: DPoP`, a fresh proof per request) when
    /// `dpop` is given, as Bearer tokens otherwise. The caller sets it from the token type.
    pub fn set_dpop(&mut self, dpop: Option<Dpop>) {
        self.dpop = dpop;
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The protocol version negotiated by [`Self::initialize`], if it ran.
    pub fn protocol_version(&self) -> Option<&str> {
        self.protocol_version.as_deref()
    }

    /// Negotiates the protocol: `server/discover` at 2026-07-28, else `initialize` then
    /// `notifications/initialized` of a session revision. Returns the server's answer (the
    /// discover result or the initialize result); [`server_info`] reads either.
    pub async fn initialize(&mut self, token: Option<&str>) -> Result<Value, McpError> {
        let mut offer = SESSION_PROTOCOL_VERSIONS[0];
        // A -32022 that lists 2026-07-28 itself (a server that refused the first try for
        // its own reasons) is answered by one more try: at most two discover requests.
        let mut retried = false;
        while self.wire != Wire::Session {
            self.wire = Wire::Stateless;
            self.protocol_version = Some(LATEST_PROTOCOL_VERSION.into());
            match self.request(token, "server/discover", json!({})).await {
                Ok(result) => return Ok(result),
                Err(e) if e.means_unsupported_wire() => {
                    let supported = e.supported_versions();
                    if !retried
                        && supported
                            .as_ref()
                            .is_some_and(|s| s.iter().any(|v| v == LATEST_PROTOCOL_VERSION))
                    {
                        retried = true;
                        tracing::info!(
                            error = %e,
                            "the MCP server lists {LATEST_PROTOCOL_VERSION} as supported; asking once more"
                        );
                        continue;
                    }
                    if let Some(supported) = supported {
                        offer = SESSION_PROTOCOL_VERSIONS
                            .into_iter()
                            .find(|v| supported.iter().any(|s| s == v))
                            .ok_or_else(|| McpError::NoCommonVersion {
                                server: supported.join(", "),
                                client: client_versions(),
                            })?;
                    }
                    tracing::info!(
                        error = %e,
                        offer,
                        "the MCP server does not speak {LATEST_PROTOCOL_VERSION}; opening a session instead"
                    );
                    self.wire = Wire::Session;
                    self.protocol_version = None;
                }
                Err(e) => {
                    self.wire = Wire::Unknown;
                    self.protocol_version = None;
                    return Err(e);
                }
            }
        }
        self.initialize_session(token, offer).await
    }

    async fn initialize_session(
        &mut self,
        token: Option<&str>,
        offer: &str,
    ) -> Result<Value, McpError> {
        let params = json!({
            "protocolVersion": offer,
            "capabilities": {},
            "clientInfo": client_info(),
        });
        let result = self.request(token, "initialize", params).await?;
        let chosen = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                McpError::Malformed("an initialize result without protocolVersion".into())
            })?;
        if !SESSION_PROTOCOL_VERSIONS.contains(&chosen) {
            return Err(McpError::NoCommonVersion {
                server: chosen.to_string(),
                client: client_versions(),
            });
        }
        self.protocol_version = Some(chosen.to_string());
        self.notify(token, "notifications/initialized", json!({}))
            .await?;
        Ok(result)
    }

    pub async fn ping(&mut self, token: Option<&str>) -> Result<Value, McpError> {
        self.request(token, "ping", json!({})).await
    }

    pub async fn list_tools(&mut self, token: Option<&str>) -> Result<Value, McpError> {
        self.request(token, "tools/list", json!({})).await
    }

    pub async fn call_tool(
        &mut self,
        token: Option<&str>,
        name: &str,
        arguments: Value,
    ) -> Result<Value, McpError> {
        self.request(
            token,
            "tools/call",
            json!({"name": name, "arguments": arguments}),
        )
        .await
    }

    /// Sends a JSON-RPC request and returns its `result`.
    pub async fn request(
        &mut self,
        token: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        let id = self.next_id;
        self.next_id += 1;
        let params = self.with_meta(params);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self.post(token, &message).await?;
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if method == "initialize"
            && let Some(session) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            self.session_id = Some(session.to_string());
        }
        let reply = if is_sse {
            read_sse_reply(response, id).await?
        } else {
            read_json_reply(response).await?
        };
        if let Some(error) = rpc_error(&reply, None, token) {
            return Err(error);
        }
        reply
            .get("result")
            .cloned()
            .ok_or_else(|| McpError::Malformed("a JSON-RPC response without result".into()))
    }

    /// On the stateless wire, `params._meta` carries what `initialize` used to (2026-07-28):
    /// the protocol version, client info and capabilities, on every request.
    fn with_meta(&self, params: Value) -> Value {
        if self.wire != Wire::Stateless {
            return params;
        }
        let mut params = match params {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let meta = params.entry("_meta").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        let meta = meta.as_object_mut().expect("made an object above");
        meta.insert(
            "io.modelcontextprotocol/protocolVersion".into(),
            LATEST_PROTOCOL_VERSION.into(),
        );
        meta.insert("io.modelcontextprotocol/clientInfo".into(), client_info());
        meta.insert(
            "io.modelcontextprotocol/clientCapabilities".into(),
            json!({}),
        );
        Value::Object(params)
    }

    /// Sends a JSON-RPC notification; the server answers 202 with no body.
    pub async fn notify(
        &mut self,
        token: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<(), McpError> {
        let message = json!({"jsonrpc": "2.0", "method": method, "params": params});
        self.post(token, &message).await.map(drop)
    }

    /// Sends one message. With DPoP, a 401 `use_dpop_nonce` that brings a new nonce is
    /// answered by one more try with a fresh proof carrying it (RFC 9449 §9): at most two
    /// requests per message.
    async fn post(
        &self,
        token: Option<&str>,
        message: &Value,
    ) -> Result<reqwest::Response, McpError> {
        let dpop = self.dpop.as_ref().filter(|_| token.is_some());
        let mut response = self.send(token, message).await?;
        if let Some(dpop) = dpop {
            let fresh_nonce = dpop.remember_nonce(self.url.as_str(), response.headers());
            if fresh_nonce && response.status() == StatusCode::UNAUTHORIZED {
                let challenge = challenge_of(&response);
                if challenge.error.as_deref() == Some("use_dpop_nonce") {
                    tracing::debug!(
                        target: "mcpproxy_oauth::http",
                        "the MCP server asked for a DPoP nonce; retrying once with it"
                    );
                    response = self.send(token, message).await?;
                    dpop.remember_nonce(self.url.as_str(), response.headers());
                }
            }
        }
        self.judge(response, token).await
    }

    async fn send(
        &self,
        token: Option<&str>,
        message: &Value,
    ) -> Result<reqwest::Response, McpError> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .json(message);
        match (token, &self.dpop) {
            // RFC 9449 §7.1: the DPoP scheme and a proof bound to this token (`ath`).
            (Some(token), Some(dpop)) => {
                // Marked sensitive, as `bearer_auth` marks its header: HTTP layers keep both
                // out of their own debug output.
                let mut authorization =
                    HeaderValue::from_str(&format!("DPoP {token}")).map_err(|_| {
                        McpError::Transport(
                            "the access token is not a valid HTTP header value".into(),
                        )
                    })?;
                authorization.set_sensitive(true);
                request = request
                    .header(AUTHORIZATION, authorization)
                    .header("dpop", dpop.header("POST", self.url.as_str(), Some(token)));
            }
            (Some(token), None) => request = request.bearer_auth(token),
            (None, _) => {}
        }
        if let Some(session) = &self.session_id {
            request = request.header("mcp-session-id", session);
        }
        if let Some(version) = &self.protocol_version {
            request = request.header("mcp-protocol-version", version);
        }
        if self.wire == Wire::Stateless
            && let Some(method) = message.get("method").and_then(Value::as_str)
        {
            // 2026-07-28 routing headers: the method, and the name a call is about.
            request = request.header("mcp-method", method);
            let params = message.get("params");
            let name = match method {
                "tools/call" | "prompts/get" => params.and_then(|p| p.get("name")),
                "resources/read" => params.and_then(|p| p.get("uri")),
                _ => None,
            };
            if let Some(name) = name.and_then(Value::as_str) {
                request = request.header("mcp-name", name);
            }
        }
        request
            .send()
            .await
            .map_err(|e| McpError::Transport(innermost(&e)))
    }

    /// A response as the caller sees it: 401/403 as typed challenges, HTTP errors with their
    /// JSON-RPC body, else the response to read.
    async fn judge(
        &self,
        response: reqwest::Response,
        token: Option<&str>,
    ) -> Result<reqwest::Response, McpError> {
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let challenge = challenge_of(&response);
            tracing::debug!(
                target: "mcpproxy_oauth::http",
                endpoint = "MCP server",
                status = status.as_u16(),
                error = challenge.error.as_deref().unwrap_or(""),
                error_description = challenge.error_description.as_deref().unwrap_or(""),
                scope = challenge.scope.as_deref().unwrap_or(""),
                resource_metadata = challenge.resource_metadata.as_deref().unwrap_or(""),
                "the MCP server challenged the request"
            );
            return Err(if status == StatusCode::UNAUTHORIZED {
                McpError::Unauthorized(challenge)
            } else {
                McpError::Forbidden(challenge)
            });
        }
        if !status.is_success() {
            // The body of an HTTP error is often a JSON-RPC error saying why (an unsupported
            // protocol version, a missing header): report it rather than only the status.
            let status = status.as_u16();
            let body = read_capped(response).await.unwrap_or_default();
            let error = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|reply| rpc_error(&reply, Some(status), token));
            return Err(error.unwrap_or(McpError::Http { status }));
        }
        Ok(response)
    }
}

/// The Bearer or DPoP challenge of a 401/403 (an empty one when there is none).
fn challenge_of(response: &reqwest::Response) -> BearerChallenge {
    let values: Vec<&str> = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    BearerChallenge::from_headers(values).unwrap_or_default()
}

fn client_info() -> Value {
    json!({"name": "mcpproxy-oauth", "version": env!("CARGO_PKG_VERSION")})
}

fn client_versions() -> String {
    std::iter::once(LATEST_PROTOCOL_VERSION)
        .chain(SESSION_PROTOCOL_VERSIONS)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's name and version from either wire's answer: `serverInfo` of an initialize
/// result, `_meta["io.modelcontextprotocol/serverInfo"]` of a 2026-07-28 discover result.
pub fn server_info(opened: &Value) -> Option<&Value> {
    opened
        .get("serverInfo")
        .or_else(|| opened.pointer("/_meta/io.modelcontextprotocol~1serverInfo"))
}

/// The JSON-RPC error of a reply, if it is one; `status` is the HTTP status it came with. A
/// server that echoes the request's bearer token in its message does not get it into our
/// errors and logs: `token` is cut out of the message.
fn rpc_error(reply: &Value, status: Option<u16>, token: Option<&str>) -> Option<McpError> {
    let error = reply.get("error")?;
    let mut message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut data = error.get("data").cloned();
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        message = message.replace(token, "[redacted]");
        if data.as_ref().is_some_and(|d| d.to_string().contains(token)) {
            data = None;
        }
    }
    if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    Some(McpError::Rpc {
        status,
        code: error
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        message,
        data,
    })
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

async fn read_json_reply(response: reqwest::Response) -> Result<Value, McpError> {
    let body = read_capped(response).await?;
    serde_json::from_slice(&body).map_err(|e| McpError::Malformed(format!("invalid JSON: {e}")))
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, McpError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| McpError::Transport(innermost(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(McpError::Malformed(format!(
                "response larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
    }
    Ok(body)
}

/// Reads SSE events until the JSON-RPC response with `id` arrives; server requests and
/// notifications on the same stream are skipped.
async fn read_sse_reply(mut response: reqwest::Response, id: u64) -> Result<Value, McpError> {
    let mut buffer = String::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| McpError::Transport(innermost(&e)))?;
        let done = chunk.is_none();
        if let Some(chunk) = chunk {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            if buffer.len() > MAX_RESPONSE_BYTES {
                return Err(McpError::Malformed(
                    "event stream larger than the limit".into(),
                ));
            }
        }
        let normalized = buffer.replace("\r\n", "\n");
        let (complete, rest) = match normalized.rfind("\n\n") {
            Some(end) if !done => (
                normalized[..end].to_string(),
                normalized[end + 2..].to_string(),
            ),
            _ if done => (normalized.clone(), String::new()),
            _ => continue,
        };
        buffer = rest;
        for data in sse_data_fields(&complete) {
            if let Ok(message) = serde_json::from_str::<Value>(&data)
                && message.get("id").and_then(Value::as_u64) == Some(id)
                && (message.get("result").is_some() || message.get("error").is_some())
            {
                return Ok(message);
            }
        }
        if done {
            return Err(McpError::Malformed(
                "the event stream ended without the response".into(),
            ));
        }
    }
}

/// The `data` of each event in a block of complete SSE events (multi-line data joined by `\n`).
pub fn sse_data_fields(events: &str) -> Vec<String> {
    events
        .split("\n\n")
        .filter_map(|event| {
            let lines: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|data| data.strip_prefix(' ').unwrap_or(data))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(status: Option<u16>, code: i64, data: Option<Value>) -> McpError {
        McpError::Rpc {
            status,
            code,
            message: "m".into(),
            data,
        }
    }

    #[test]
    fn which_answers_to_a_2026_07_28_request_mean_another_wire() {
        assert!(McpError::Http { status: 400 }.means_unsupported_wire());
        assert!(McpError::Http { status: 404 }.means_unsupported_wire());
        assert!(rpc(Some(400), -32000, None).means_unsupported_wire());
        assert!(
            rpc(None, -32601, None).means_unsupported_wire(),
            "method not found"
        );
        assert!(!McpError::Http { status: 500 }.means_unsupported_wire());
        assert!(!rpc(Some(503), -32603, None).means_unsupported_wire());
        assert!(!McpError::Transport("refused".into()).means_unsupported_wire());
        assert!(!McpError::Unauthorized(BearerChallenge::default()).means_unsupported_wire());
    }

    #[test]
    fn an_unsupported_version_error_lists_what_the_server_speaks() {
        let listed = rpc(
            Some(400),
            UNSUPPORTED_PROTOCOL_VERSION,
            Some(json!({"supported": ["2025-11-25", 7, "2025-03-26"], "requested": "2026-07-28"})),
        );
        assert_eq!(
            listed.supported_versions(),
            Some(vec!["2025-11-25".to_string(), "2025-03-26".to_string()])
        );
        assert_eq!(
            rpc(Some(400), -32000, Some(json!({"supported": ["x"]}))).supported_versions(),
            None,
            "only -32022 carries the list"
        );
        assert_eq!(
            rpc(Some(400), UNSUPPORTED_PROTOCOL_VERSION, None).supported_versions(),
            None
        );
    }

    #[test]
    fn server_info_of_either_wire() {
        let session = json!({"protocolVersion": "2025-11-25", "serverInfo": {"name": "a"}});
        let stateless = json!({"supportedVersions": ["2026-07-28"],
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "b"}}});
        assert_eq!(server_info(&session).unwrap()["name"], "a");
        assert_eq!(server_info(&stateless).unwrap()["name"], "b");
        assert_eq!(server_info(&json!({})), None);
    }

    #[test]
    fn a_long_error_message_is_cut() {
        let reply = json!({"error": {"code": 1, "message": "x".repeat(10_000)}});
        let Some(McpError::Rpc { message, .. }) = rpc_error(&reply, Some(400), None) else {
            panic!("an Rpc error");
        };
        assert_eq!(message.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    }

    #[test]
    fn an_echoed_bearer_token_is_cut_out_of_the_error() {
        let reply = json!({"error": {"code": -32600, "message": "bad token eyJsecret.part, go away",
            "data": {"seen": "Bearer eyJsecret.part"}}});
        let error = rpc_error(&reply, Some(400), Some("eyJsecret.part")).unwrap();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("eyJsecret.part"), "{shown}");
        assert!(shown.contains("bad token [redacted], go away"), "{shown}");
    }

    #[test]
    fn sse_events_are_split_and_multiline_data_joined() {
        let events =
            "event: message\ndata: {\"a\":\ndata: 1}\n\n: comment\n\nid: 7\ndata:{\"b\":2}";
        assert_eq!(
            sse_data_fields(events),
            vec!["{\"a\":\n1}".to_string(), "{\"b\":2}".to_string()]
        );
    }
}
