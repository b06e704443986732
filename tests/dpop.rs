//! DPoP (RFC 9449) end to end against the OAuth test server on loopback: bound tokens through
//! several lifetimes with rotating nonces, replayed proofs refused, refresh tokens bound to
//! their key, the Bearer/DPoP token type policy, `connect` choosing DPoP where the server
//! requires it, and no proof, private key or token in any log line (the project's own JSON
//! layer captures every line at trace level).

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::*;
use mcpproxy_oauth::connect::{ConnectOptions, connect};
use mcpproxy_oauth::mcp::McpClient;
use mcpproxy_oauth::oauth::OAuthError;
use mcpproxy_oauth::oauth::dpop::{Dpop, DpopKey};
use mcpproxy_oauth::oauth::http::OAuthHttp;
use mcpproxy_oauth::oauth::login::browser_login;
use mcpproxy_oauth::oauth::token::{TokenEndpoint, TokenSet};
use oauth_test_server::{Config, NonceRotation, OAuthTestServer};
use serde_json::json;

const TTL: Duration = Duration::from_secs(60);
const NONCE_LIFETIME: Duration = Duration::from_secs(20);

/// A server that requires DPoP.
fn dpop_required() -> Config {
    Config {
        dpop_required: true,
        ..Config::default()
    }
}

/// A server that requires DPoP, with access tokens living `TTL` and nonces `NONCE_LIFETIME`
/// of its (adjustable) clock.
fn dpop_server_config() -> Config {
    Config {
        access_token_ttl: TTL,
        dpop_nonce: Some(NonceRotation::EveryMs(NONCE_LIFETIME.as_millis() as u64)),
        ..dpop_required()
    }
}

struct Session {
    http: OAuthHttp,
    endpoint: TokenEndpoint,
    token: TokenSet,
    dpop: Dpop,
    mcp: McpClient,
}

/// Discovery, registration and a browser login whose code exchange carries a proof of `key`.
async fn dpop_login(srv: &OAuthTestServer, key: DpopKey) -> Session {
    project_logs();
    let http = OAuthHttp::default();
    let discovery = discovered(srv, &http).await;
    assert!(
        discovery
            .protected_resource
            .as_ref()
            .is_some_and(|p| p.dpop_bound_access_tokens_required),
        "the resource metadata says DPoP is required"
    );
    let dpop = Dpop::new(key).with_required(true);
    let settings = login_settings();
    let (endpoint, token) = tokio::time::timeout(
        Duration::from_secs(10),
        browser_login(&http, &discovery, &settings, None, None, Some(&dpop)),
    )
    .await
    .expect("the login finishes within 10 s")
    .expect("the DPoP login succeeds");
    let mut mcp = mcp_client(srv, Duration::from_secs(10));
    mcp.set_dpop(Some(dpop.clone()));
    Session {
        http,
        endpoint,
        token,
        dpop,
        mcp,
    }
}

impl Session {
    fn access(&self) -> String {
        self.token.access_token.secret().clone()
    }

    async fn refresh_with(&self, dpop: Option<&Dpop>) -> Result<TokenSet, OAuthError> {
        let refresh_token = self.token.refresh_token.as_ref().expect("a refresh token");
        self.endpoint
            .refresh(&self.http, refresh_token, None, SystemTime::now(), dpop)
            .await
    }

    /// A refresh with the session's own key, which must succeed (`why` says what it shows)
    /// with a DPoP-bound token.
    async fn refresh_own(&self, why: &str) -> TokenSet {
        let fresh = self.refresh_with(Some(&self.dpop)).await;
        let fresh = fresh.unwrap_or_else(|e| panic!("{why}: {e}"));
        assert_eq!(fresh.token_type, "DPoP", "{why}");
        fresh
    }

    async fn echo(&mut self, message: &str) -> serde_json::Value {
        let token = self.access();
        self.mcp
            .call_tool(Some(&token), "echo", json!({"message": message}))
            .await
            .unwrap_or_else(|e| panic!("the tool call {message:?} succeeds: {e}"))
    }
}

#[tokio::test]
async fn a_bound_token_is_refreshed_and_used_through_several_lifetimes_with_rotating_nonces() {
    let srv = start(dpop_server_config()).await;
    let key = DpopKey::generate();
    let key_secret = key.secret_bytes();
    let mut s = dpop_login(&srv, key).await;
    assert_eq!(s.token.token_type, "DPoP");
    let token = s.access();
    s.mcp.initialize(Some(&token)).await.expect("initialize");
    assert_eq!(s.echo("first").await["content"][0]["text"], "first");

    for lifetime in 1..=3 {
        // The token expires and the nonces of both endpoints rotate. The refusal brings the
        // MCP endpoint's new nonce (RFC 9449 §9 lets any answer carry one).
        srv.advance_clock(TTL + Duration::from_secs(1));
        let token = s.access();
        let refused = s.mcp.call_tool(Some(&token), "echo", json!({})).await;
        assert!(
            matches!(&refused, Err(mcpproxy_oauth::mcp::McpError::Unauthorized(c)) if c.dpop),
            "lifetime {lifetime}: the expired token is refused with a DPoP challenge: {refused:?}"
        );
        let fresh = s
            .refresh_own(&format!("lifetime {lifetime}: the refresh succeeds"))
            .await;
        assert_ne!(fresh.access_token.secret(), &token, "a new access token");
        s.token = fresh;
        let said = format!("lifetime {lifetime}");
        assert_eq!(s.echo(&said).await["content"][0]["text"], said.as_str());
        // Within the token's life the MCP endpoint's nonce rotates: use_dpop_nonce, one retry.
        srv.advance_clock(NONCE_LIFETIME + Duration::from_secs(1));
        let said = format!("lifetime {lifetime}, new nonce");
        assert_eq!(s.echo(&said).await["content"][0]["text"], said.as_str());
    }

    let stats = srv.stats();
    assert_eq!(
        stats.token_requests_for("refresh_token"),
        3 * 2,
        "each refresh retried once for the nonce"
    );
    assert_eq!(stats.dpop_bound_tokens, 4, "the login and three refreshes");
    assert_eq!(
        stats.dpop_refusals_for("nonce"),
        1 + 1 + 3 * 2,
        "one use_dpop_nonce per endpoint at the start, then one per endpoint per lifetime"
    );
    assert_eq!(
        stats.mcp_dpop_requests,
        3 + 1 + 3 * 2,
        "server/discover, initialize and its notification, the first call, two calls per lifetime"
    );
    for reason in ["replay", "bad_proof", "key_mismatch", "missing"] {
        assert_eq!(stats.dpop_refusals_for(reason), 0, "no {reason} refusal");
    }

    // No proof, token, code, verifier or private key in any log line.
    let text = project_logs();
    assert!(
        text.contains("token_type") && text.contains("DPoP"),
        "the capture holds this run's lines"
    );
    assert_no_secret(&srv, &text);
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for shown in [
        engine.encode(key_secret),
        base64::engine::general_purpose::STANDARD.encode(key_secret),
        key_secret.iter().map(|b| format!("{b:02x}")).collect(),
    ] {
        assert!(
            !text.contains(&shown),
            "the private key appears in a log line"
        );
    }
    assert!(
        !format!("{:?}", s.dpop).contains(&engine.encode(key_secret)),
        "Debug of the DPoP state hides the private key"
    );
}

#[tokio::test]
async fn a_replayed_proof_is_refused_and_the_client_carries_on_with_fresh_ones() {
    let srv = start(dpop_required()).await;
    let mut s = dpop_login(&srv, DpopKey::generate()).await;
    let token = s.access();
    s.mcp.initialize(Some(&token)).await.expect("initialize");
    let proofs = srv.secrets().dpop_proofs;
    let captured = proofs
        .last()
        .expect("the MCP request carried a proof")
        .clone();

    // Someone who captured the request replays it, proof and token alike.
    let replay = reqwest::Client::new()
        .post(srv.mcp_url())
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", &captured)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    let challenge = replay.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains("invalid_dpop_proof"),
        "{challenge}"
    );
    assert_eq!(srv.stats().dpop_refusals_for("replay"), 1);

    // The client's own next requests carry fresh proofs and are served.
    assert_eq!(
        s.echo("after the replay").await["content"][0]["text"],
        "after the replay"
    );
    let token = s.access();
    s.mcp.ping(Some(&token)).await.expect("a second request");
    let stats = srv.stats();
    assert_eq!(
        stats.dpop_refusals_for("replay"),
        1,
        "no proof of the client was ever reused"
    );
    let proofs = srv.secrets().dpop_proofs;
    let mut distinct = proofs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len() + 1,
        proofs.len(),
        "only the replay repeated a proof"
    );

    // A replayed token request proof is refused as well.
    let refresh_token = s.token.refresh_token.as_ref().unwrap().secret().clone();
    let token_proof = srv.secrets().dpop_proofs[0].clone();
    let replay = reqwest::Client::new()
        .post(format!("{}/token", srv.issuer()))
        .header("dpop", token_proof)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
            ("client_id", &s.endpoint.client.client_id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    let body: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(body["error"], "invalid_dpop_proof");
    assert_eq!(srv.stats().dpop_refusals_for("replay"), 2);
    s.refresh_own("the client's own refresh works").await;
}

#[tokio::test]
async fn a_refresh_token_is_bound_to_its_key() {
    let srv = start(dpop_required()).await;
    let s = dpop_login(&srv, DpopKey::generate()).await;
    let other = Dpop::new(DpopKey::generate()).with_required(true);
    let refused = s.refresh_with(Some(&other)).await;
    assert!(
        matches!(&refused, Err(OAuthError::Server { code, .. }) if code == "invalid_dpop_proof"),
        "another key is refused: {refused:?}"
    );
    assert_eq!(srv.stats().dpop_refusals_for("key_mismatch"), 1);
    let refused = s.refresh_with(None).await;
    assert!(
        matches!(&refused, Err(OAuthError::Server { code, .. }) if code == "invalid_dpop_proof"),
        "no proof at all is refused: {refused:?}"
    );
    assert_eq!(srv.stats().dpop_refusals_for("missing"), 1);
    s.refresh_own("the bound key refreshes").await;
}

#[tokio::test]
async fn a_bearer_token_to_a_dpop_request_is_used_only_where_dpop_is_not_required() {
    // A server without DPoP ignores the proof and issues Bearer tokens (RFC 9449 §5).
    let srv = start(Config::default()).await;
    let http = OAuthHttp::default();
    let discovery = discovered(&srv, &http).await;
    let settings = login_settings();
    let optional = Dpop::new(DpopKey::generate());
    let (endpoint, token) =
        browser_login(&http, &discovery, &settings, None, None, Some(&optional))
            .await
            .expect("an opt-in DPoP login accepts a Bearer token");
    assert_eq!(token.token_type, "Bearer");
    let required = Dpop::new(DpopKey::generate()).with_required(true);
    let refused = endpoint
        .refresh(
            &http,
            token.refresh_token.as_ref().unwrap(),
            None,
            SystemTime::now(),
            Some(&required),
        )
        .await;
    match refused {
        Err(OAuthError::Malformed { reason, .. }) => {
            assert!(
                reason.contains("accepts only DPoP-bound tokens"),
                "{reason}"
            )
        }
        other => panic!("a Bearer token where DPoP is required is an error: {other:?}"),
    }
}

/// `connect` calling `echo`, with DPoP when `dpop` asks for it.
fn options(srv: &OAuthTestServer, dpop: bool) -> ConnectOptions {
    let (browser, _) = following_browser();
    ConnectOptions {
        call_tool: Some(("echo".into(), json!({"message": "via dpop"}))),
        dpop,
        ..connect_options(srv, browser)
    }
}

#[tokio::test]
async fn connect_uses_dpop_where_the_server_requires_it_with_a_nonce_per_request() {
    project_logs();
    let srv = start(Config {
        dpop_nonce: Some(NonceRotation::EveryRequest),
        ..dpop_required()
    })
    .await;
    let report = connect(options(&srv, false))
        .await
        .expect("connect succeeds with DPoP");
    assert_eq!(
        report.tool_result.unwrap()["content"][0]["text"],
        "via dpop"
    );
    assert_eq!(report.token.unwrap().token_type, "DPoP");
    let stats = srv.stats();
    assert_eq!(
        stats.dpop_refusals_for("nonce"),
        2,
        "one use_dpop_nonce per endpoint; after that each answer's DPoP-Nonce is used"
    );
    assert!(
        stats.mcp_dpop_requests >= 3,
        "initialize, tools/list, tools/call: {stats:?}"
    );
    assert_no_secret(&srv, &project_logs());
}

#[tokio::test]
async fn connect_with_dpop_opt_in_binds_tokens_where_the_server_offers_dpop() {
    // Without the opt-in a server of the same kind gets Bearer tokens.
    for (opt_in, token_type) in [(true, "DPoP"), (false, "Bearer")] {
        let srv = start(Config::with(|c| c.dpop = true)).await;
        let report = connect(options(&srv, opt_in)).await.expect("connect");
        assert_eq!(report.token.unwrap().token_type, token_type);
        let stats = srv.stats();
        if opt_in {
            assert!(stats.mcp_dpop_requests >= 3, "{stats:?}");
        } else {
            assert_eq!(stats.dpop_bound_tokens, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemon: the key kept in the store with the tokens, proofs on its logins and refreshes,
// and `SharedAccessToken`'s proofs for the embedding runtime's resource requests.

use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::mcp::BearerChallenge;
use mcpproxy_oauth::store::{KeySpec, Sealing, TokenStore};
use mcpproxy_oauth::supervisor::{
    SharedAccessToken, SupervisorConfig, SupervisorHandle, database_path,
};
use mcpproxy_oauth::upstream::state::Policy;
use std::path::Path;

/// The test server as "srv" (`configure` adjusts it), a browser that follows redirects,
/// HTTP calls within 5 s, the default policy.
async fn supervise_with(
    srv: &OAuthTestServer,
    dir: &Path,
    configure: impl FnOnce(&mut UpstreamConfig),
) -> SupervisorHandle {
    project_logs();
    let mut server = upstream("srv", srv);
    configure(&mut server);
    let (browser, _) = following_browser();
    start_supervisor(SupervisorConfig {
        policy: Policy::default(),
        http_timeout: Duration::from_secs(5),
        ..supervisor_config(vec![server], dir, browser)
    })
    .await
}

async fn supervise(srv: &OAuthTestServer, dir: &Path, dpop: bool) -> SupervisorHandle {
    supervise_with(srv, dir, |server| server.dpop = dpop).await
}

/// What a resource request of the embedding runtime met, when it was not served.
#[derive(Debug)]
struct Refused {
    status: u16,
    challenge: Option<BearerChallenge>,
}

/// One MCP `echo` call the way an embedding runtime makes it with the library's token: the
/// `Authorization` header from `authorization()`, a fresh `dpop_proof` per request, every
/// answer given to `remember_dpop_nonce`, and one retry after a `use_dpop_nonce` refusal.
async fn echo(
    srv: &OAuthTestServer,
    token: &SharedAccessToken,
    message: &str,
) -> Result<String, Refused> {
    let url = srv.mcp_url();
    let client = reqwest::Client::new();
    for attempt in 1..=2 {
        let mut request = client
            .post(&url)
            .header("authorization", token.authorization())
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": attempt, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": message}}}),
            );
        if let Some(proof) = token.dpop_proof("POST", &url) {
            request = request.header("dpop", proof);
        }
        let reply = request.send().await.expect("the MCP endpoint answers");
        let fresh_nonce = token.remember_dpop_nonce(&url, reply.headers());
        let status = reply.status().as_u16();
        let www_authenticate: Vec<String> = reply
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect();
        let challenge = BearerChallenge::from_headers(www_authenticate.iter().map(String::as_str));
        if status == 200 {
            let body: serde_json::Value = reply.json().await.expect("a JSON-RPC answer");
            return Ok(body["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string());
        }
        let nonce_refusal = challenge
            .as_ref()
            .is_some_and(|c| c.error.as_deref() == Some("use_dpop_nonce"));
        if !(status == 401 && nonce_refusal && fresh_nonce && attempt == 1) {
            return Err(Refused { status, challenge });
        }
    }
    unreachable!("the second attempt returns")
}

/// The token the daemon hands out after `old` was refused: report the 401, then ask again.
async fn after_refusal(
    handle: &SupervisorHandle,
    old: &SharedAccessToken,
    refused: Refused,
) -> SharedAccessToken {
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(
        refused.challenge.as_ref().is_some_and(|c| c.dpop),
        "a DPoP challenge: {refused:?}"
    );
    handle
        .report_unauthorized("srv", old.secret(), refused.challenge)
        .await
        .expect("the daemon refreshes the refused token");
    let fresh = handle.access_token("srv").await.expect("a token");
    assert_ne!(fresh.secret(), old.secret(), "a new access token");
    fresh
}

/// The `dpop_jkt` the newest refresh flow's trace shows for the token it obtained.
async fn refreshed_with_jkt(handle: &SupervisorHandle) -> Option<String> {
    let flow = handle
        .status()
        .await
        .unwrap()
        .into_iter()
        .find_map(|s| s.last_flow)
        .expect("a finished flow");
    handle
        .flow_trace(&flow)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.step == "token obtained")
        .and_then(|e| e.details.get("dpop_jkt")?.as_str().map(String::from))
}

/// The private DPoP key and its thumbprint as stored, read through the library with the key
/// file beside the database; and the raw column, as an outside reader sees it.
fn stored_dpop_key(dir: &std::path::Path) -> (String, String, String) {
    let path = database_path(dir);
    let store = TokenStore::open_with(&path, &Sealing::Encrypted(KeySpec::default()))
        .expect("the store opens with its key file");
    let raw: (String, String) = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT server_key, dpop_key FROM oauth_tokens", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("a token row with a DPoP key");
    let token = store.load_token(&raw.0).unwrap().expect("the stored token");
    let dpop = token.dpop.expect("the token is stored with its DPoP key");
    (dpop.private_key.expose().to_string(), dpop.jkt, raw.1)
}

/// Waits (bounded, woken by the daemon's state changes) until it hands out a token other
/// than `old`.
async fn next_token(handle: &SupervisorHandle, old: &SharedAccessToken) -> SharedAccessToken {
    let mut changes = handle.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(token) = handle.cached_access_token("srv").unwrap()
            && token.secret() != old.secret()
        {
            return token;
        }
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Ok(_) => {}
            Err(_) => panic!("the daemon did not refresh the token within 20 s"),
        }
    }
}

#[tokio::test]
async fn the_daemon_refreshes_a_bound_token_through_several_lifetimes_with_rotating_nonces() {
    // DPoP is not configured: the resource requires it, so the daemon uses it. Tokens live
    // 2 s (the daemon refreshes them ahead of expiry by itself); every answer of either
    // endpoint carries the next nonce, good for one request.
    let srv = start(Config {
        access_token_ttl: Duration::from_secs(2),
        dpop_nonce: Some(NonceRotation::EveryRequest),
        ..dpop_required()
    })
    .await;
    let dir = temp_dir("daemon-dpop-lifetimes");
    let handle = supervise(&srv, &dir, false).await;
    handle.reconnect("srv").await.expect("the login succeeds");
    let mut token = handle.access_token("srv").await.expect("a token");
    assert_eq!(token.token_type(), "DPoP");
    assert!(token.is_dpop() && token.authorization().starts_with("DPoP "));
    assert_eq!(echo(&srv, &token, "first").await.unwrap(), "first");

    for lifetime in 1..=3 {
        token = next_token(&handle, &token).await;
        assert_eq!(token.token_type(), "DPoP");
        for call in 1..=2 {
            let said = format!("lifetime {lifetime}, call {call}");
            assert_eq!(echo(&srv, &token, &said).await.unwrap(), said);
        }
    }

    let status = handle.status().await.unwrap().remove(0);
    assert_eq!(status.token_type.as_deref(), Some("DPoP"));
    // Stopped before counting: no refresh is in flight while the numbers are read.
    handle.shutdown().await;

    let stats = srv.stats();
    assert_eq!(
        stats.authorize_requests, 1,
        "one login, then only refreshes"
    );
    assert!(
        stats.dpop_bound_tokens >= 4,
        "the login and three refreshes: {stats:?}"
    );
    // Any request that needed a second try would have been refused for its nonce first.
    assert_eq!(
        stats.dpop_refusals_for("nonce"),
        2,
        "one use_dpop_nonce per endpoint, at its first request; after that each answer's \
         nonce was used by the next request, across the login and every refresh"
    );
    for reason in ["replay", "bad_proof", "key_mismatch", "missing"] {
        assert_eq!(stats.dpop_refusals_for(reason), 0, "no {reason} refusal");
    }

    // The key is in the store, sealed, and nowhere in clear: not in the file, not in a log.
    let (private_key, jkt, raw) = stored_dpop_key(&dir);
    assert!(raw.starts_with("enc1:"), "the stored key is sealed");
    assert_eq!(
        status.dpop_jkt.as_deref(),
        Some(jkt.as_str()),
        "status names the key"
    );
    let db = std::fs::read(database_path(&dir)).unwrap();
    let wal = std::fs::read(database_path(&dir).with_extension("db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(private_key.len())
                .any(|w| w == private_key.as_bytes()),
            "the private key is in clear in the database"
        );
    }
    let outside: String = rusqlite::Connection::open(database_path(&dir))
        .unwrap()
        .query_row("SELECT dpop_jkt FROM oauth_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outside, jkt, "the thumbprint is readable without the key");
    let text = project_logs();
    assert!(
        text.contains("token refreshed"),
        "the capture holds the daemon's lines"
    );
    assert_no_secret(&srv, &text);
    assert!(
        !text.contains(&private_key),
        "the private key appears in a log line"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_daemon_logs_in_by_device_code_with_dpop() {
    // A headless host: the device grant, at a server that requires DPoP with a nonce per
    // request. Every poll carries a proof; the first is refused for its nonce.
    let srv = start(Config {
        device_grant: true,
        device_interval_secs: 1,
        dpop_nonce: Some(NonceRotation::EveryRequest),
        ..dpop_required()
    })
    .await;
    let dir = temp_dir("daemon-dpop-device");
    // The launcher "enters the code": it opens the verification URL, which approves.
    let handle = supervise_with(&srv, &dir, |server| server.device_code = true).await;
    handle
        .reconnect("srv")
        .await
        .expect("the device login succeeds");
    let token = handle.access_token("srv").await.unwrap();
    assert_eq!(token.token_type(), "DPoP");
    assert_eq!(echo(&srv, &token, "headless").await.unwrap(), "headless");
    handle.shutdown().await;
    let stats = srv.stats();
    assert_eq!(stats.device_authorizations, 1);
    assert_eq!(stats.authorize_requests, 0, "no browser redirect flow");
    assert_eq!(stats.dpop_bound_tokens, 1);
    assert!(
        stats.dpop_refusals_for("nonce") >= 1,
        "the first poll had no nonce: {stats:?}"
    );
    assert_eq!(
        stats.dpop_refusals_for("missing"),
        0,
        "every poll carried a proof"
    );
    let (_, jkt, _) = stored_dpop_key(&dir);
    assert!(!jkt.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_restarted_daemon_refreshes_with_the_stored_key_and_a_replayed_proof_is_refused() {
    let srv = start(Config {
        access_token_ttl: TTL,
        ..dpop_required()
    })
    .await;
    let dir = temp_dir("daemon-dpop-restart");
    let handle = supervise(&srv, &dir, false).await;
    handle.reconnect("srv").await.expect("the login succeeds");
    let token = handle.access_token("srv").await.unwrap();
    assert_eq!(echo(&srv, &token, "before").await.unwrap(), "before");

    // Someone who captured that request replays it, proof and token alike: refused.
    let captured = srv
        .secrets()
        .dpop_proofs
        .last()
        .cloned()
        .expect("a proof was sent");
    let replay = reqwest::Client::new()
        .post(srv.mcp_url())
        .header("authorization", token.authorization())
        .header("dpop", &captured)
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    assert_eq!(srv.stats().dpop_refusals_for("replay"), 1);
    // The runtime's own next request carries a fresh proof and is served.
    assert_eq!(
        echo(&srv, &token, "after the replay").await.unwrap(),
        "after the replay"
    );
    let (_, jkt_before, _) = stored_dpop_key(&dir);
    handle.shutdown().await;

    // A new daemon on the same data directory: the token and its key come from the store.
    let handle = supervise(&srv, &dir, false).await;
    handle
        .reconnect("srv")
        .await
        .expect("the stored token is loaded");
    let token = handle.access_token("srv").await.unwrap();
    assert!(token.is_dpop());
    assert_eq!(echo(&srv, &token, "restarted").await.unwrap(), "restarted");
    srv.advance_clock(TTL + Duration::from_secs(1));
    let refused = echo(&srv, &token, "expired").await.expect_err("expired");
    let token = after_refusal(&handle, &token, refused).await;
    assert_eq!(echo(&srv, &token, "refreshed").await.unwrap(), "refreshed");
    let stats = srv.stats();
    assert_eq!(
        stats.authorize_requests, 1,
        "no second login across the restart"
    );
    assert_eq!(stats.token_requests_for("refresh_token"), 1);
    assert_eq!(
        stats.dpop_refusals_for("key_mismatch"),
        0,
        "the refresh proved the key the token is bound to"
    );
    assert_eq!(
        stored_dpop_key(&dir).1,
        jkt_before,
        "the same key after the refresh"
    );
    assert_eq!(
        refreshed_with_jkt(&handle).await.as_deref(),
        Some(jkt_before.as_str()),
        "the refresh's trace names the key's thumbprint"
    );
    handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_daemon_uses_dpop_where_configured_and_bearer_otherwise() {
    // The server offers DPoP but does not require it.
    let srv = start(Config::with(|c| c.dpop = true)).await;
    for (configured, token_type) in [(true, "DPoP"), (false, "Bearer")] {
        let dir = temp_dir("daemon-dpop-opt-in");
        let handle = supervise(&srv, &dir, configured).await;
        handle.reconnect("srv").await.expect("the login succeeds");
        let token = handle.access_token("srv").await.unwrap();
        assert_eq!(token.token_type(), token_type, "\"dpop\": {configured}");
        assert_eq!(token.is_dpop(), configured);
        assert_eq!(
            token.dpop_proof("POST", &srv.mcp_url()).is_some(),
            configured
        );
        assert_eq!(echo(&srv, &token, token_type).await.unwrap(), token_type);
        let stored: Option<String> = rusqlite::Connection::open(database_path(&dir))
            .unwrap()
            .query_row("SELECT dpop_jkt FROM oauth_tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            stored.is_some(),
            configured,
            "a key is stored only with DPoP"
        );
        let status = handle.status().await.unwrap().remove(0);
        assert_eq!(status.token_type.as_deref(), Some(token_type));
        assert_eq!(status.dpop_jkt, stored);
        // The runtime tells which MCP version it speaks with the server; status shows it.
        assert_eq!(status.protocol_version, None);
        handle
            .report_protocol_version("srv", "2025-11-25")
            .await
            .unwrap();
        let refused = handle
            .report_protocol_version("srv", "2025-11-25\nforged: line")
            .await
            .expect_err("a version with a line break is refused");
        assert_eq!(refused.code(), "invalid_input");
        assert!(!refused.to_string().contains("forged"), "{refused}");
        let status = handle.status().await.unwrap().remove(0);
        assert_eq!(status.protocol_version.as_deref(), Some("2025-11-25"));
        handle.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(srv.stats().dpop_bound_tokens, 1);
}
