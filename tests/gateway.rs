//! The gateway (`/mcp/{server}` on the API listener) and the stdio bridge against the OAuth
//! test server on loopback, with a real supervisor and SQLite store: the daemon's token on
//! every request, a refused token reported and the call retried, the step-up, DPoP proofs,
//! an anonymous `initialize` with 401 only on `tools/call`, 503 with `Retry-After` instead of
//! a 401, the header policy (a raw upstream echoes what it received), hostile clients (a huge
//! body, a slow client, many connections, a saturated server beside a healthy one, paths that
//! try to leave `/mcp/`), and no token, API key or DPoP proof in any log line (every line captured at trace
//! level, as JSON without the project's redaction: nothing may rely on it).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin_tool, following_browser, temp_dir, token_ttl};
use mcpproxy_oauth::api::{ApiConfig, ApiKey, ApiServer, AuthLinks};
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::gateway::metrics::GatewayMetrics;
use mcpproxy_oauth::gateway::stdio::{self, InputLine};
use mcpproxy_oauth::gateway::upstream::{Upstream, http_client};
use mcpproxy_oauth::gateway::{GatewayConfig, GatewayLimits, Passthrough};
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use mcpproxy_oauth::upstream::state::Policy;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, NonceRotation, OAuthTestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

const KEY: &str = "gateway-test-key-0123456789";

/// The OAuth test server, with every log line of this test binary captured from now on.
async fn test_server(config: Config) -> OAuthTestServer {
    common::captured_logs();
    common::start(config).await
}

/// No token, code, client secret, DPoP proof or the API key in any log line so far.
fn assert_no_secret_logged(srv: &OAuthTestServer) {
    let text = common::captured_logs();
    let secrets = srv.secrets();
    for secret in secrets
        .all()
        .chain(secrets.dpop_proofs.iter().map(String::as_str))
    {
        assert!(
            !text.contains(secret),
            "a secret of the test server was logged"
        );
    }
    assert!(!text.contains(KEY), "the API key was logged");
}

/// Polls `done` until it holds, at most `within`.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Daemon {
    handle: SupervisorHandle,
    api: ApiServer,
    base: String,
    http: reqwest::Client,
}

struct Setup {
    servers: Vec<UpstreamConfig>,
    passthrough: Vec<Passthrough>,
    limits: GatewayLimits,
    interactive: bool,
}

impl Setup {
    fn oauth(srv: &OAuthTestServer, name: &str) -> Self {
        Setup {
            servers: vec![UpstreamConfig::new(
                name,
                Url::parse(&srv.mcp_url()).unwrap(),
            )],
            passthrough: Vec::new(),
            limits: GatewayLimits {
                token_wait: Duration::from_secs(10),
                ..GatewayLimits::default()
            },
            interactive: true,
        }
    }

    async fn start(self) -> Daemon {
        let links = AuthLinks::new(&self.servers);
        let (browser, _) = following_browser();
        let config = SupervisorConfig {
            browser: links.wrap(browser),
            policy: Policy {
                interactive: self.interactive,
                backoff_base: 100,
                backoff_cap: 2_000,
                ..Policy::default()
            },
            login_timeout: Duration::from_secs(20),
            http_timeout: Duration::from_secs(5),
            ..SupervisorConfig::new(self.servers.clone(), temp_dir("gateway"))
        };
        let handle = SupervisorHandle::start(config).await.expect("supervisor");
        let mut api = ApiConfig::new("127.0.0.1:0".parse().unwrap());
        api.api_key = Some(ApiKey::new(KEY).unwrap());
        api.servers = self.servers;
        api.gateway = GatewayConfig {
            limits: self.limits,
            passthrough: self.passthrough,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        match ApiServer::start(handle.clone(), links, api).await {
            Ok(api) => Daemon {
                base: format!("http://{}", api.addr()),
                handle,
                api,
                http,
            },
            Err(e) => panic!("the API does not start: {e}"),
        }
    }
}

/// An MCP answer as a client sees it.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// The JSON body, or the last message of an SSE body.
    body: Value,
}

impl Daemon {
    fn url(&self, server: &str) -> String {
        format!("{}/mcp/{server}", self.base)
    }

    async fn post(&self, server: &str, message: Value, extra: &[(&str, &str)]) -> Reply {
        let mut request = self
            .http
            .post(self.url(server))
            .header("x-api-key", KEY)
            .header("accept", "application/json, text/event-stream")
            .json(&message);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"))
        {
            mcpproxy_oauth::mcp::client::sse_data_fields(&text)
                .last()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null)
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn initialize(&self, server: &str) -> Reply {
        self.post(
            server,
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "gateway-test", "version": "1"}}}),
            &[],
        )
        .await
    }

    async fn call(&self, server: &str, tool: &str, id: u64) -> Reply {
        self.post(
            server,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": tool, "arguments": {"message": format!("call {id}")}}}),
            &[],
        )
        .await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the API and the supervisor, then scans the logs for the servers' secrets.
    async fn finish(self, servers: &[&OAuthTestServer]) {
        self.api.stop().await;
        self.handle.shutdown().await;
        for srv in servers {
            assert_no_secret_logged(srv);
        }
    }
}

/// The test server refuses the next token it is shown (401 invalid_token).
fn refuse_next_token(srv: &OAuthTestServer) {
    srv.inject(Fault {
        target: FaultTarget::Mcp,
        kind: FaultKind::InvalidGrant,
        count: Some(1),
        delay_ms: None,
    })
    .unwrap();
}

fn echoed(reply: &Reply) -> String {
    reply.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Asserts a 503 that a client cannot mistake for its own OAuth's business.
fn assert_unavailable(reply: &Reply, phase: &str) {
    assert_eq!(reply.status, 503, "body: {}", reply.body);
    assert!(reply.headers.get("www-authenticate").is_none());
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
    assert_eq!(reply.body["jsonrpc"], "2.0");
    assert_eq!(
        reply.body["error"]["data"]["phase"], phase,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"]["data"]["retry_after_seconds"], retry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_the_daemons_token_and_a_refused_one_is_refreshed_and_retried() {
    let srv = test_server(Config::default()).await;
    let daemon = Setup::oauth(&srv, "srv").start().await;
    daemon.handle.reconnect("srv").await.expect("logged in");
    let init = daemon.initialize("srv").await;
    assert_eq!(init.status, 200, "{}", init.body);
    let session = init.headers["mcp-session-id"].to_str().unwrap().to_string();
    assert_eq!(init.headers["via"], "1.1 mcpproxy-oauth");
    let reply = daemon.call("srv", "echo", 1).await;
    assert_eq!((reply.status, echoed(&reply).as_str()), (200, "call 1"));
    assert_eq!(srv.stats().mcp_401, 0);

    // The upstream refuses the next token: reported, refreshed once, sent again.
    refuse_next_token(&srv);
    let reply = daemon
        .post(
            "srv",
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"message": "after 401"}}}),
            &[
                ("mcp-session-id", &session),
                ("authorization", "Bearer the-clients-own"),
            ],
        )
        .await;
    assert_eq!((reply.status, echoed(&reply).as_str()), (200, "after 401"));
    let stats = srv.stats();
    assert_eq!(stats.mcp_401, 1, "one refusal");
    assert_eq!(stats.token_requests_for("refresh_token"), 1, "one refresh");
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(
            r#"mcpproxy_oauth_gateway_token_retries_total{reason="unauthorized",server="srv"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mcpproxy_oauth_gateway_requests_total{server="srv",status="200"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains("mcpproxy_oauth_gateway_upstream_seconds_count{server=\"srv\"} 4"));
    // The line of the retried request names the refresh flow that served it.
    let text = common::captured_logs();
    assert!(
        text.lines()
            .any(|l| l.contains("proxied after a token flow")
                && l.contains("\"server\":\"srv\"")
                && l.contains("correlation_id")),
        "no log line for the retried request"
    );
    daemon.finish(&[&srv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_initialize_works_and_only_tools_call_needs_the_token() {
    let srv = test_server(Config::with(|c| c.mcp_anonymous_discovery = true)).await;
    // A daemon that may not open a browser, with no token yet.
    let mut setup = Setup::oauth(&srv, "anon");
    setup.interactive = false;
    let daemon = setup.start().await;
    let init = daemon.initialize("anon").await;
    assert_eq!(
        init.status, 200,
        "anonymous initialize relayed: {}",
        init.body
    );
    let list = daemon
        .post(
            "anon",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            &[],
        )
        .await;
    assert_eq!(list.status, 200);
    assert!(list.body["result"]["tools"].is_array());
    // tools/call wants a token: the client hears 503 naming the login, never the 401.
    let call = daemon.call("anon", "echo", 2).await;
    assert_unavailable(&call, "needs_login");
    assert_eq!(call.body["id"], 2);
    assert_eq!(call.body["error"]["data"]["action"], "login");
    let message = call.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/api/v1/servers/anon/login"), "{message}");
    assert!(srv.stats().mcp_401 >= 1, "the upstream did ask for a token");

    // After a login the same call goes through; a later refusal on tools/call alone is
    // reported and retried.
    daemon.handle.login("anon").await.expect("login");
    let call = daemon.call("anon", "echo", 3).await;
    assert_eq!((call.status, echoed(&call).as_str()), (200, "call 3"));
    refuse_next_token(&srv);
    let call = daemon.call("anon", "echo", 4).await;
    assert_eq!((call.status, echoed(&call).as_str()), (200, "call 4"));
    assert_eq!(srv.stats().token_requests_for("refresh_token"), 1);
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(
            r#"mcpproxy_oauth_gateway_unavailable_total{phase="needs_login",server="anon"} 1"#
        ),
        "{metrics}"
    );
    daemon.finish(&[&srv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_with_a_failing_refresh_is_a_503_until_the_server_recovers() {
    let srv = test_server(token_ttl(2)).await;
    let daemon = Setup::oauth(&srv, "ttl").start().await;
    daemon.handle.reconnect("ttl").await.expect("logged in");
    srv.inject(Fault {
        target: FaultTarget::Refresh,
        kind: FaultKind::TemporarilyUnavailable,
        count: None,
        delay_ms: None,
    })
    .unwrap();
    // Within its life the token serves; once it expires the refresh keeps failing.
    let mut seen_503 = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0;
    while seen_503.is_none() {
        assert!(Instant::now() < deadline, "no 503 after the token expired");
        id += 1;
        let reply = daemon.call("ttl", "echo", id).await;
        match reply.status {
            200 => {}
            503 => seen_503 = Some(reply),
            other => panic!("the client got {other}: {}", reply.body),
        }
    }
    let reply = seen_503.unwrap();
    assert!(
        ["backing_off", "retrying", "refreshing"]
            .contains(&reply.body["error"]["data"]["phase"].as_str().unwrap()),
        "{}",
        reply.body
    );
    assert!(reply.headers.get("www-authenticate").is_none());
    assert!(reply.headers.contains_key("retry-after"));
    srv.clear_faults();
    // No reconnect, no login: the daemon's own retry brings the calls back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        id += 1;
        let reply = daemon.call("ttl", "echo", id).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(
            Instant::now() < deadline,
            "calls did not recover by themselves"
        );
        let wait: u64 = reply.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100).min(Duration::from_secs(wait))).await;
    }
    assert_eq!(srv.stats().authorize_requests, 1, "no second login");
    daemon.finish(&[&srv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_tokens_get_a_fresh_proof_per_request_and_nonces_are_followed() {
    let srv = test_server(Config {
        dpop_required: true,
        dpop_nonce: Some(NonceRotation::EveryRequest),
        ..Config::default()
    })
    .await;
    let daemon = Setup::oauth(&srv, "bound").start().await;
    daemon.handle.reconnect("bound").await.expect("logged in");
    for id in 1..=5 {
        let reply = daemon.call("bound", "echo", id).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        // The nonce is for the gateway's proofs, not the client.
        assert!(reply.headers.get("dpop-nonce").is_none());
    }
    let stats = srv.stats();
    assert_eq!(stats.mcp_dpop_requests, 5, "every call with a valid proof");
    assert_eq!(
        stats.dpop_refusals_for("replay"),
        0,
        "a fresh proof each time"
    );
    daemon.finish(&[&srv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_scope_goes_to_the_step_up_and_the_call_is_retried() {
    let srv = test_server(admin_tool()).await;
    let mut setup = Setup::oauth(&srv, "scoped");
    // Less than the resource offers (it lists mcp:admin too), so the tool asks for more.
    setup.servers[0].scope = Some("mcp:read".into());
    let daemon = setup.start().await;
    daemon.handle.reconnect("scoped").await.expect("logged in");
    let reply = daemon.call("scoped", "get_time", 1).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stats = srv.stats();
    assert_eq!(stats.mcp_403, 1);
    assert_eq!(stats.authorize_requests, 2, "one step-up login");
    assert!(daemon.metrics().await.contains(
        r#"mcpproxy_oauth_gateway_token_retries_total{reason="insufficient_scope",server="scoped"} 1"#
    ));
    daemon.finish(&[&srv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_that_scope_cannot_cure_is_relayed_and_a_step_up_needing_a_person_is_a_503() {
    let srv = test_server(admin_tool()).await;
    // The first login asks for every scope the resource lists: a 403 naming them is not cured
    // by a login. The client gets the server's own 403, without its challenge.
    let daemon = Setup::oauth(&srv, "all").start().await;
    daemon.handle.reconnect("all").await.expect("logged in");
    srv.inject(Fault {
        target: FaultTarget::Mcp,
        kind: FaultKind::InsufficientScope,
        count: Some(1),
        delay_ms: None,
    })
    .unwrap();
    let reply = daemon.call("all", "echo", 1).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.headers.get("www-authenticate").is_none());
    assert_eq!(
        srv.stats().authorize_requests,
        1,
        "no login for scope already granted"
    );
    daemon.finish(&[&srv]).await;

    // A daemon that may not open a browser, holding less scope: the step-up needs a person.
    let mut setup = Setup::oauth(&srv, "less");
    setup.servers[0].scope = Some("mcp:read".into());
    setup.interactive = false;
    let daemon = setup.start().await;
    let logins = srv.stats().authorize_requests;
    daemon.handle.login("less").await.expect("logged in");
    let reply = daemon.call("less", "get_time", 2).await;
    assert_unavailable(&reply, "needs_login");
    assert_eq!(reply.body["error"]["data"]["action"], "login");
    assert_eq!(
        srv.stats().authorize_requests,
        logins + 1,
        "no login by itself"
    );
    daemon.finish(&[&srv]).await;
}

/// A raw HTTP/1.1 server that answers every request with the request head it received, and
/// with headers a client must not see.
async fn echo_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65_536 {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = socket.read_exact(&mut body).await;
                let answer =
                    json!({"jsonrpc": "2.0", "id": 1, "result": {"head": head}}).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close, x-hop\r\nx-hop: 1\r\nset-cookie: upstream=1\r\nwww-authenticate: Bearer realm=\"x\"\r\ndpop-nonce: n-1\r\nmcp-session-id: s-echo\r\nx-custom: kept\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/echo-mcp?fixed=1")
}

/// The request head the echo upstream saw, as its answer to `response` reports it, lowercased.
async fn head_seen_upstream(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    let head = body["result"]["head"]
        .as_str()
        .expect("the head the echo saw");
    head.to_ascii_lowercase()
}

/// A gateway (its OAuth server `srv` unused) passing requests through to an echo upstream
/// configured as "echo" without OAuth; `more` adds fields to that server's entry (JSON text
/// after a comma).
async fn echo_gateway(srv: &OAuthTestServer, more: &str) -> Daemon {
    let echo = echo_upstream().await;
    let mut setup = Setup::oauth(srv, "unused");
    setup.passthrough = mcpproxy_oauth::gateway::servers::parse_passthrough(&format!(
        r#"{{"mcpServers": [{{"name": "echo", "url": "{echo}"{more}}}]}}"#
    ))
    .unwrap();
    setup.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_oauth_gets_the_mcp_headers_and_none_of_the_clients_credentials() {
    let srv = test_server(Config::default()).await;
    let headers = r#", "headers": {"X-Upstream-Token": "static-upstream-credential"}"#;
    let daemon = echo_gateway(&srv, headers).await;
    let response = daemon
        .http
        .post(format!("{}?apikey={KEY}&other=1", daemon.url("echo")))
        .header("x-api-key", KEY)
        .header("authorization", "Bearer the-clients-own-token")
        .header("cookie", "page=1")
        .header("dpop", "client.proof")
        .header("connection", "x-private")
        .header("x-private", "hop")
        .header("mcp-session-id", "s-client")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .header("last-event-id", "17")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["mcp-session-id"], "s-echo");
    assert_eq!(headers["x-custom"], "kept");
    for gone in ["set-cookie", "www-authenticate", "dpop-nonce", "x-hop"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the client");
    }
    let head = head_seen_upstream(response).await;
    assert!(
        head.starts_with("post /echo-mcp?fixed=1 http/1.1\r\n"),
        "the configured URL only: {head}"
    );
    for sent in [
        "mcp-session-id: s-client",
        "mcp-protocol-version: 2025-11-25",
        "mcp-method: tools/call",
        "mcp-name: echo",
        "last-event-id: 17",
        "via: 1.1 mcpproxy-oauth",
        "x-upstream-token: static-upstream-credential",
    ] {
        assert!(head.contains(sent), "{sent} missing upstream: {head}");
    }
    for kept_here in [
        "authorization",
        "cookie",
        "x-api-key",
        "dpop",
        "x-private",
        "apikey",
        "the-clients-own-token",
        &KEY.to_ascii_lowercase(),
    ] {
        assert!(
            !head.contains(kept_here),
            "{kept_here} went upstream: {head}"
        );
    }
    daemon.finish(&[&srv]).await;
    let text = common::captured_logs();
    assert!(!text.contains("static-upstream-credential"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_may_come_in_the_url_and_a_missing_or_wrong_key_is_a_403_never_a_401() {
    let srv = test_server(Config::default()).await;
    let daemon = echo_gateway(&srv, "").await;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    for (what, url, header) in [
        ("no key", daemon.url("echo"), None),
        (
            "a wrong key",
            daemon.url("echo"),
            Some("not-the-key-0123456789"),
        ),
        (
            "a wrong key in the URL",
            format!("{}?apikey=not-the-key-0123456789", daemon.url("echo")),
            None,
        ),
    ] {
        let mut request = daemon
            .http
            .post(url)
            .header("content-type", "application/json");
        if let Some(key) = header {
            request = request.header("x-api-key", key);
        }
        let response = request.body(ping).send().await.unwrap();
        assert_eq!(response.status(), 403, "{what}");
        assert!(
            response.headers().get("www-authenticate").is_none(),
            "{what}: a challenge would start the client's own OAuth"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
    // A client that can set no header puts the key in the URL; it goes no further.
    let response = daemon
        .http
        .post(format!("{}?apikey={KEY}", daemon.url("echo")))
        .header("content-type", "application/json")
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let head = head_seen_upstream(response).await;
    assert!(
        !head.contains("apikey") && !head.contains(&KEY.to_ascii_lowercase()),
        "{head}"
    );
    daemon.finish(&[&srv]).await;
}

/// Sends raw bytes and reads the answer (the connection closed or `within` passed).
async fn raw(addr: &str, request: &[u8], within: Duration) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_try_to_leave_mcp_reach_nothing() {
    let srv = test_server(Config::default()).await;
    let daemon = Setup::oauth(&srv, "srv").start().await;
    daemon.handle.reconnect("srv").await.expect("logged in");
    let addr = daemon.base.trim_start_matches("http://").to_string();
    let before = srv.stats().mcp_requests;
    for path in [
        "/mcp/../api/v1/servers",
        "/mcp/srv/../../api/v1/servers",
        "/mcp/%2e%2e/api/v1/servers",
        "/mcp/..%2Fapi%2Fv1%2Fservers",
        "/mcp/%2E%2E%2Fapi%2Fv1%2Fservers",
        "/mcp/srv%2F..%2F..%2Fapi%2Fv1%2Fservers",
        "/mcp/%252e%252e%252fapi%252fv1%252fservers",
        "/mcp//api/v1/servers",
        "/mcp/srv/extra",
        "/mcp/srv%00",
    ] {
        for method in ["GET", "POST"] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
            );
            let answer = raw(&addr, request.as_bytes(), Duration::from_secs(10)).await;
            let status = answer.split(' ').nth(1).unwrap_or_default();
            assert!(
                status == "404" || status == "400",
                "{method} {path} answered {status}: {answer}"
            );
            assert!(
                !answer.contains("\"servers\""),
                "{method} {path} reached the API: {answer}"
            );
        }
    }
    assert_eq!(srv.stats().mcp_requests, before, "nothing went upstream");
    daemon.finish(&[&srv]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_bounded_and_do_not_block_others() {
    let slow = test_server(Config::default()).await;
    let healthy = test_server(Config::default()).await;
    let mut setup = Setup::oauth(&slow, "slow");
    setup.servers.push(UpstreamConfig::new(
        "healthy",
        Url::parse(&healthy.mcp_url()).unwrap(),
    ));
    setup.limits = GatewayLimits {
        max_request_bytes: 64 * 1024,
        max_in_flight: 4,
        upstream_timeout: Duration::from_secs(3),
        client_timeout: Duration::from_millis(500),
        ..GatewayLimits::default()
    };
    let daemon = setup.start().await;
    daemon.handle.reconnect("slow").await.expect("logged in");
    daemon.handle.reconnect("healthy").await.expect("logged in");
    let addr = daemon.base.trim_start_matches("http://").to_string();
    let upstream_before = slow.stats().mcp_requests;

    // A huge body, announced or chunked: 413 before anything goes upstream.
    let huge = vec![b' '; 5 << 20];
    let announced = daemon
        .http
        .post(daemon.url("slow"))
        .header("x-api-key", KEY)
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(announced.status(), 413);
    let mut chunked = tokio::net::TcpStream::connect(&addr).await.unwrap();
    chunked
        .write_all(format!("POST /mcp/slow HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\ntransfer-encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The gateway answers 413 as soon as the bound is passed, and may close the connection
    // while the client is still sending.
    for piece in huge.chunks(16 * 1024) {
        let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
        if chunked.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), chunked.read(&mut answer))
        .await
        .expect("an answer to the chunked body")
        .unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_eq!(
        slow.stats().mcp_requests,
        upstream_before,
        "no huge body went upstream"
    );

    // A slow client: its body never completes. Others are served meanwhile; it gets 408.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(format!("POST /mcp/slow HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\ncontent-length: 100\r\n\r\n{{\"jsonrpc\"").as_bytes())
        .await
        .unwrap();
    let reply = daemon.call("healthy", "echo", 1).await;
    assert_eq!(reply.status, 200, "served while a client trickles");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), trickle.read(&mut answer))
        .await
        .expect("the slow client is answered within its bound")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"));

    // Many idle connections: requests still go through.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let reply = daemon.call("healthy", "echo", 2).await;
    assert_eq!(reply.status, 200, "served beside 300 idle connections");
    drop(idle);

    // A server that never answers: at most 4 requests wait on it, the next one hears 503 at
    // once, and the other server is served all along.
    slow.inject(Fault {
        target: FaultTarget::Mcp,
        kind: FaultKind::Hang,
        count: Some(4),
        delay_ms: None,
    })
    .unwrap();
    let hung: Vec<_> = (0..4)
        .map(|i| {
            let (url, http) = (daemon.url("slow"), daemon.http.clone());
            tokio::spawn(async move {
                http.post(url)
                    .header("x-api-key", KEY)
                    .json(&json!({"jsonrpc": "2.0", "id": 100 + i, "method": "ping"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    eventually(
        "4 requests waiting on the silent server",
        Duration::from_secs(10),
        || slow.stats().faults_fired.get("mcp").copied().unwrap_or(0) == 4,
    )
    .await;
    let refused = daemon.call("slow", "echo", 3).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"], "1");
    let reply = daemon.call("healthy", "echo", 4).await;
    assert_eq!(reply.status, 200, "the other server is not blocked");
    for waiting in hung {
        assert_eq!(
            waiting.await.unwrap().unwrap(),
            504,
            "the silent server's requests time out"
        );
    }
    let reply = daemon.call("slow", "echo", 5).await;
    assert_eq!(reply.status, 200, "the server is served again");
    let metrics = daemon.metrics().await;
    for limit in [
        "max_request_bytes",
        "client_timeout",
        "max_in_flight",
        "upstream_timeout",
    ] {
        assert!(
            metrics.contains(&format!(
                "mcpproxy_oauth_gateway_refused_total{{limit=\"{limit}\",server=\"slow\"}}"
            )),
            "{limit} not counted: {metrics}"
        );
    }
    daemon.finish(&[&slow, &healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_bridge_relays_a_session_and_ends_it_when_input_closes() {
    let srv = test_server(Config::default()).await;
    let servers = vec![UpstreamConfig::new(
        "srv",
        Url::parse(&srv.mcp_url()).unwrap(),
    )];
    let (browser, _) = following_browser();
    let handle = SupervisorHandle::start(SupervisorConfig {
        browser,
        ..SupervisorConfig::new(servers.clone(), temp_dir("gateway-stdio"))
    })
    .await
    .unwrap();
    let limits = GatewayLimits {
        max_request_bytes: 4096,
        ..GatewayLimits::default()
    };
    let upstream = Arc::new(Upstream::with_oauth(
        "srv",
        servers[0].url.clone(),
        handle.clone(),
        handle.server_tokens("srv").unwrap(),
        None,
        http_client(&limits),
        limits.clone(),
        GatewayMetrics::unregistered(&limits).server("srv"),
    ));
    let (input, lines) = tokio::sync::mpsc::channel(8);
    let (output, mut answers) = tokio::sync::mpsc::channel(8);
    let bridge = tokio::spawn(stdio::run(upstream, lines, stdio::Output::Channel(output)));
    let send = |line: &str| InputLine::Message(line.as_bytes().to_vec());
    input
        .send(send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#))
        .await
        .unwrap();
    let line = tokio::time::timeout(Duration::from_secs(20), answers.recv())
        .await
        .unwrap()
        .unwrap();
    let init: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    input
        .send(send(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .await
        .unwrap();
    input
        .send(send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"over stdio"}}}"#))
        .await
        .unwrap();
    input.send(send("not json")).await.unwrap();
    input.send(InputLine::TooLong).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), answers.recv())
            .await
            .expect("an answer for each line")
            .unwrap();
        assert!(!line.contains(&b'\n'), "one line per message");
        got.push(serde_json::from_slice::<Value>(&line).unwrap());
    }
    let call = got
        .iter()
        .find(|m| m["id"] == 2)
        .expect("the call's answer");
    assert_eq!(call["result"]["content"][0]["text"], "over stdio");
    assert_eq!(
        got.iter()
            .filter(|m| m["id"].is_null() && m["error"].is_object())
            .count(),
        2
    );
    assert!(
        answers.try_recv().is_err(),
        "nothing else: the GET stream was refused (405)"
    );
    drop(input);
    tokio::time::timeout(Duration::from_secs(20), bridge)
        .await
        .expect("the bridge ends when its input closes")
        .unwrap();
    handle.shutdown().await;
    assert_no_secret_logged(&srv);
}
