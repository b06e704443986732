//! The MCP Streamable HTTP client: JSON-RPC over POST, answered with JSON or an SSE stream.
//! Authorization is the caller's business: this client only sends the bearer token it is
//! given and reports 401/403 as typed challenges.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use url::Url;

use super::challenge::BearerChallenge;

/// The protocol version this client asks for.
pub const PROTOCOL_VERSION: &str = "2025-11-25";
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("the MCP server requires authorization (HTTP 401)")]
    Unauthorized(BearerChallenge),
    #[error("the MCP server refused the request (HTTP 403{})", .0.error.as_deref().map(|e| format!(", {e}")).unwrap_or_default())]
    Forbidden(BearerChallenge),
    #[error("the MCP server answered HTTP {status}")]
    Http { status: u16 },
    #[error("cannot reach the MCP server: {0}")]
    Transport(String),
    #[error("the MCP server answered JSON-RPC error {code}: {message}")]
    Rpc { code: i64, message: String },
    #[error("the MCP server sent an unusable response: {0}")]
    Malformed(String),
}

/// One MCP session with one server.
pub struct McpClient {
    http: reqwest::Client,
    url: Url,
    session_id: Option<String>,
    protocol_version: Option<String>,
    next_id: u64,
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
            session_id: None,
            protocol_version: None,
            next_id: 1,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// `initialize` then `notifications/initialized`; returns the server's initialize result.
    pub async fn initialize(&mut self, token: Option<&str>) -> Result<Value, McpError> {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcpproxy-oauth", "version": env!("CARGO_PKG_VERSION")},
        });
        let result = self.request(token, "initialize", params).await?;
        self.protocol_version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .map(String::from);
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
        if let Some(error) = reply.get("error") {
            return Err(McpError::Rpc {
                code: error
                    .get("code")
                    .and_then(Value::as_i64)
                    .unwrap_or_default(),
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        reply
            .get("result")
            .cloned()
            .ok_or_else(|| McpError::Malformed("a JSON-RPC response without result".into()))
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

    async fn post(
        &self,
        token: Option<&str>,
        message: &Value,
    ) -> Result<reqwest::Response, McpError> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .json(message);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = &self.session_id {
            request = request.header("mcp-session-id", session);
        }
        if let Some(version) = &self.protocol_version {
            request = request.header("mcp-protocol-version", version);
        }
        let response = request
            .send()
            .await
            .map_err(|e| McpError::Transport(innermost(&e)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let values: Vec<&str> = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let challenge = BearerChallenge::from_headers(values).unwrap_or_default();
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
            return Err(McpError::Http {
                status: status.as_u16(),
            });
        }
        Ok(response)
    }
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
    use super::sse_data_fields;

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
