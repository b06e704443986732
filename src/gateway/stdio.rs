//! The stdio bridge: newline-delimited JSON-RPC from a client that spawned us (stdin) to a
//! Streamable HTTP server, and every message the server sends back (JSON answers, SSE events,
//! the standalone GET stream) to stdout, one line each. Requests go through
//! [`Upstream::send`], so the bridge uses the daemon's tokens, refreshes and 503 answers alike
//! (a 503 becomes the JSON-RPC error for that request's id).
//!
//! The session (`Mcp-Session-Id` from the server, the protocol version from `initialize`'s
//! result) is kept and sent on every request; for the stateless 2026-07-28 wire the version,
//! `Mcp-Method` and `Mcp-Name` come from each message itself. Messages are handled
//! concurrently (at most `max_in_flight`), lines are bounded by `max_request_bytes`; each
//! answer is written by the task that has it. When
//! stdin closes, the requests in flight finish (each bounded), the session is ended with a
//! `DELETE`, and [`run`] returns.

use std::io::{BufRead, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::sse::SseReader;
use super::upstream::{Answer, Failed, Outgoing, Upstream};

/// A line read from stdin.
#[derive(Debug)]
pub enum InputLine {
    Message(Vec<u8>),
    /// A line longer than the bound (its bytes were skipped).
    TooLong,
}

/// The first protocol version whose requests carry `Mcp-Method`/`Mcp-Name` and no session.
const STATELESS_WIRE: &str = "2026-07-28";

#[derive(Default)]
struct Session {
    id: Mutex<Option<HeaderValue>>,
    version: Mutex<Option<String>>,
}

impl Session {
    fn headers(&self, message: &Value) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "accept",
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        if let Some(id) = self.id.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            headers.insert("mcp-session-id", id);
        }
        let stated = message
            .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
            .and_then(Value::as_str)
            .map(String::from);
        let version = stated.or_else(|| {
            self.version
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
        if let Some(version) = version.as_deref() {
            if let Ok(v) = HeaderValue::from_str(version) {
                headers.insert("mcp-protocol-version", v);
            }
            if version >= STATELESS_WIRE {
                add_method_headers(&mut headers, message);
            }
        }
        headers
    }

    /// Remembers what an answer tells about the session.
    fn learn(&self, headers: &HeaderMap) {
        if let Some(id) = headers.get("mcp-session-id") {
            *self.id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        }
    }

    fn learn_version(&self, result: &Value) {
        if let Some(v) = result
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
        {
            *self.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.to_string());
        }
    }
}

/// `Mcp-Method`, and `Mcp-Name` for the methods that name a tool, prompt or resource.
fn add_method_headers(headers: &mut HeaderMap, message: &Value) {
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(method) {
        headers.insert("mcp-method", v);
    }
    let name = match method {
        "tools/call" | "prompts/get" => message.pointer("/params/name"),
        "resources/read" => message.pointer("/params/uri"),
        _ => None,
    };
    if let Some(v) = name
        .and_then(Value::as_str)
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        headers.insert("mcp-name", v);
    }
}

/// A JSON-RPC error for request `id`.
fn rpc_error(id: &Value, message: String) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": message}}),
    )
    .unwrap_or_default()
}

/// One output line: the message as it came when it holds no line break, else re-encoded.
fn one_line(bytes: &[u8]) -> Option<Vec<u8>> {
    if !bytes.contains(&b'\n') && !bytes.contains(&b'\r') {
        return Some(bytes.to_vec());
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    serde_json::to_vec(&value).ok()
}

/// Relays messages from `input` to `upstream` and its answers to `output` until `input`
/// ends. See the module doc.
pub async fn run(upstream: Arc<Upstream>, mut input: mpsc::Receiver<InputLine>, output: Output) {
    let session = Arc::new(Session::default());
    let permits = Arc::new(Semaphore::new(upstream.limits.max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let mut listener: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(line) = input.recv().await {
        let line = match line {
            InputLine::Message(line) => line,
            InputLine::TooLong => {
                let _ = output
                    .send(rpc_error(
                        &Value::Null,
                        format!(
                            "mcpproxy-oauth stdio: a message longer than {} bytes was dropped",
                            upstream.limits.max_request_bytes
                        ),
                    ))
                    .await;
                continue;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message: Value = match serde_json::from_slice(&line) {
            Ok(message) => message,
            Err(e) => {
                let _ = output
                    .send(
                        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": null,
                            "error": {"code": -32700, "message": format!("parse error: {e}")}}))
                        .unwrap_or_default(),
                    )
                    .await;
                continue;
            }
        };
        // The standalone stream opens once the session is initialized.
        if listener.is_none()
            && message.get("method").and_then(Value::as_str) == Some("notifications/initialized")
        {
            listener = Some(tokio::spawn(listen(
                upstream.clone(),
                session.clone(),
                output.clone(),
            )));
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (upstream, session, output) = (upstream.clone(), session.clone(), output.clone());
        tasks.spawn(async move {
            exchange(&upstream, &session, message, Bytes::from(line), &output).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    if let Some(listener) = listener {
        listener.abort();
    }
    end_session(&upstream, &session).await;
}

/// One message to the server, its answers to the client.
async fn exchange(
    upstream: &Upstream,
    session: &Session,
    message: Value,
    body: Bytes,
    output: &Output,
) {
    let request_id = message.get("method").and(message.get("id")).cloned();
    let initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
    let out = Outgoing {
        method: Method::POST,
        headers: session.headers(&message),
        body,
    };
    let failed = match upstream.send(&out).await {
        Ok(answer) => {
            relay(
                upstream,
                session,
                answer,
                request_id.as_ref(),
                initialize,
                output,
            )
            .await;
            return;
        }
        Err(failed) => failed,
    };
    let Some(id) = request_id else {
        tracing::warn!(server = %upstream.name, ?failed, "a notification could not be delivered");
        return;
    };
    let line = match failed {
        Failed::Unavailable(u) => {
            tracing::warn!(
                server = %upstream.name,
                phase = u.phase,
                correlation_id = u.correlation_id.as_deref(),
                "no usable token: the request is answered with an error"
            );
            serde_json::to_vec(&u.body(&upstream.name, Some(&id))).unwrap_or_default()
        }
        Failed::Timeout => rpc_error(
            &id,
            format!(
                "mcpproxy-oauth: server {:?} did not answer within {:?}",
                upstream.name, upstream.limits.upstream_timeout
            ),
        ),
        Failed::Transport(reason) => rpc_error(
            &id,
            format!("mcpproxy-oauth: server {:?}: {reason}", upstream.name),
        ),
    };
    let _ = output.send(line).await;
}

/// The server's answer to one message: nothing (202), one JSON message, or SSE events.
async fn relay(
    upstream: &Upstream,
    session: &Session,
    answer: Answer,
    request_id: Option<&Value>,
    initialize: bool,
    output: &Output,
) {
    let mut response = answer.response;
    let status = response.status();
    session.learn(response.headers());
    if status == StatusCode::NOT_FOUND
        && session
            .id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    {
        // The server ended the session: the client must initialize again.
        *session.id.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let limits = &upstream.limits;
    let mut answered = false;
    if is_sse {
        let mut reader = SseReader::new(limits.max_response_bytes);
        loop {
            let chunk = match tokio::time::timeout(limits.upstream_timeout, response.chunk()).await
            {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                _ => {
                    tracing::warn!(server = %upstream.name, "the server's event stream failed or went silent");
                    break;
                }
            };
            let events = match reader.feed(&chunk) {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(server = %upstream.name, error = %e, "event stream cut");
                    break;
                }
            };
            for event in events {
                let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                if request_id.is_some_and(|id| value.get("id") == Some(id))
                    && value.get("method").is_none()
                {
                    answered = true;
                    if initialize {
                        session.learn_version(&value);
                    }
                }
                if let Ok(line) = serde_json::to_vec(&value) {
                    let _ = output.send(line).await;
                }
            }
        }
    } else if status != StatusCode::ACCEPTED && status != StatusCode::NO_CONTENT {
        let body = read_capped(
            &mut response,
            limits.max_response_bytes,
            limits.upstream_timeout,
        )
        .await;
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            let value: Option<Value> = serde_json::from_slice(&body).ok();
            let is_message = value
                .as_ref()
                .is_some_and(|v| v.get("jsonrpc").is_some() || v.is_array());
            if is_message {
                if initialize && let Some(v) = &value {
                    session.learn_version(v);
                }
                if let Some(line) = one_line(&body) {
                    answered = true;
                    let _ = output.send(line).await;
                }
            }
        }
    }
    // A request always gets an answer, so the client never waits for one that cannot come.
    if !answered && let Some(id) = request_id {
        let _ = output
            .send(rpc_error(
                id,
                format!(
                    "mcpproxy-oauth: server {:?} answered HTTP {} without a JSON-RPC answer",
                    upstream.name,
                    status.as_u16()
                ),
            ))
            .await;
    }
}

/// A whole body within `max` bytes, each piece within `idle`.
async fn read_capped(
    response: &mut reqwest::Response,
    max: usize,
    idle: Duration,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > max {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => return Some(body),
            _ => return None,
        }
    }
}

/// The standalone GET stream: messages the server sends on its own (notifications, requests).
/// Reopened with `Last-Event-ID` when it ends; given up when the server does not offer one
/// (405, or any other refusal).
async fn listen(upstream: Arc<Upstream>, session: Arc<Session>, output: Output) {
    let mut last_event_id: Option<String> = None;
    let mut pause = Duration::from_secs(1);
    loop {
        let mut headers = session.headers(&Value::Null);
        headers.insert("accept", HeaderValue::from_static("text/event-stream"));
        headers.remove("content-type");
        if let Some(id) = last_event_id
            .as_deref()
            .and_then(|i| HeaderValue::from_str(i).ok())
        {
            headers.insert("last-event-id", id);
        }
        let out = Outgoing {
            method: Method::GET,
            headers,
            body: Bytes::new(),
        };
        match upstream.send(&out).await {
            Ok(answer) if answer.response.status().is_success() => {
                pause = Duration::from_secs(1);
                let mut response = answer.response;
                let mut reader = SseReader::new(upstream.limits.max_response_bytes);
                while let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(upstream.limits.sse_idle_timeout, response.chunk()).await
                {
                    let Ok(events) = reader.feed(&chunk) else {
                        break;
                    };
                    for event in events {
                        if event.id.is_some() {
                            last_event_id = event.id.clone();
                        }
                        if let Some(line) = one_line(event.data.as_bytes())
                            && serde_json::from_slice::<Value>(&line).is_ok()
                        {
                            let _ = output.send(line).await;
                        }
                    }
                }
            }
            Ok(answer) => {
                tracing::debug!(
                    server = %upstream.name,
                    status = answer.response.status().as_u16(),
                    "no standalone event stream"
                );
                return;
            }
            Err(_) => pause = (pause * 2).min(Duration::from_secs(30)),
        }
        tokio::time::sleep(pause).await;
    }
}

/// Ends the server's session, if it gave one (a server that keeps none answers 405: fine).
async fn end_session(upstream: &Upstream, session: &Session) {
    let id = session.id.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(id) = id else { return };
    let mut headers = HeaderMap::new();
    headers.insert("mcp-session-id", id);
    let out = Outgoing {
        method: Method::DELETE,
        headers,
        body: Bytes::new(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), upstream.send(&out)).await;
}

/// Reads stdin on a thread of its own (no blocking pool in the way): each line, bounded by
/// `max` bytes, goes to the returned channel; the channel closes when stdin does.
pub fn read_lines(
    input: impl std::io::Read + Send + 'static,
    max: usize,
) -> mpsc::Receiver<InputLine> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::Builder::new()
        .name("mcpproxy-oauth-stdin".into())
        .spawn(move || {
            let mut reader = std::io::BufReader::with_capacity(64 * 1024, input);
            loop {
                match read_line(&mut reader, max) {
                    Ok(Some(line)) => {
                        if tx.blocking_send(line).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .expect("a thread for stdin");
    rx
}

/// One line without its terminator; `None` at the end of input.
fn read_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Option<InputLine>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((!line.is_empty() || too_long).then_some(if too_long {
                InputLine::TooLong
            } else {
                InputLine::Message(line)
            }));
        }
        let (piece, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..at], Some(at + 1)),
            None => (available, None),
        };
        if !too_long && line.len() + piece.len() > max {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(piece);
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(if too_long {
                InputLine::TooLong
            } else {
                InputLine::Message(line)
            }));
        }
    }
}

/// Where answers go, one line per message: a channel (tests, embedders), or a writer written
/// by the task that has the line (stdout: a pipe write is one syscall, with no thread to wake
/// in between; a client that stops reading holds its own answers back, nothing else).
#[derive(Clone)]
pub enum Output {
    Channel(mpsc::Sender<Vec<u8>>),
    Writer(Arc<Mutex<Box<dyn std::io::Write + Send>>>),
}

impl Output {
    /// A writer (stdout), flushed after each line.
    pub fn writer(out: impl std::io::Write + Send + 'static) -> Self {
        Output::Writer(Arc::new(Mutex::new(Box::new(
            std::io::BufWriter::with_capacity(64 * 1024, out),
        ))))
    }

    /// Sends one line; an error means nobody reads any more.
    pub async fn send(&self, line: Vec<u8>) -> Result<(), ()> {
        match self {
            Output::Channel(tx) => tx.send(line).await.map_err(|_| ()),
            Output::Writer(out) => {
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                out.write_all(&line)
                    .and_then(|_| out.write_all(b"\n"))
                    .and_then(|_| out.flush())
                    .map_err(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_split_on_newlines() {
        let input = b"{\"a\":1}\r\n\n0123456789abcdef-too-long\n{\"b\":2}".to_vec();
        let mut reader = std::io::BufReader::with_capacity(4, &input[..]);
        let mut lines = Vec::new();
        while let Some(line) = read_line(&mut reader, 16).unwrap() {
            lines.push(match line {
                InputLine::Message(m) => String::from_utf8(m).unwrap(),
                InputLine::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(lines, ["{\"a\":1}", "", "<too long>", "{\"b\":2}"]);
    }

    #[test]
    fn session_headers_follow_the_wire() {
        let session = Session::default();
        let call =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}});
        let headers = session.headers(&call);
        assert!(headers.get("mcp-protocol-version").is_none());
        assert!(headers.get("mcp-method").is_none());
        session.learn_version(&json!({"result": {"protocolVersion": "2025-11-25"}}));
        let mut answer = HeaderMap::new();
        answer.insert("mcp-session-id", HeaderValue::from_static("s-1"));
        session.learn(&answer);
        let headers = session.headers(&call);
        assert_eq!(headers["mcp-protocol-version"], "2025-11-25");
        assert_eq!(headers["mcp-session-id"], "s-1");
        assert!(headers.get("mcp-method").is_none(), "not at 2025-11-25");
        let stateless = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "echo", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        let headers = session.headers(&stateless);
        assert_eq!(headers["mcp-protocol-version"], "2026-07-28");
        assert_eq!(headers["mcp-method"], "tools/call");
        assert_eq!(headers["mcp-name"], "echo");
    }

    #[test]
    fn output_is_one_line_per_message() {
        assert_eq!(one_line(b"{\"a\":1}").unwrap(), b"{\"a\":1}");
        assert_eq!(one_line(b"{\n  \"a\": 1\n}").unwrap(), b"{\"a\":1}");
        assert!(one_line(b"{\n broken").is_none());
    }
}
