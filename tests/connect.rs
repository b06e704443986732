//! `connect` end to end against the OAuth test server over loopback.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mcpproxy_oauth::connect::{ConnectError, ConnectOptions, ConnectReport, connect};
use mcpproxy_oauth::oauth::OAuthError;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::oauth::client_identity::ClientConfig;
use mcpproxy_oauth::upstream::state::Failure;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use serde_json::json;
use url::Url;

/// `connect` calling `echo` with "hello".
fn options(srv: &OAuthTestServer, browser: BrowserLauncher) -> ConnectOptions {
    ConnectOptions {
        call_tool: Some(("echo".into(), json!({"message": "hello"}))),
        ..connect_options(srv, browser)
    }
}

#[tokio::test]
async fn connect_registers_logs_in_once_and_calls_a_tool() {
    let srv = start(Config::default()).await;
    let (browser, launches) = following_browser();
    let report = connect(options(&srv, browser))
        .await
        .expect("connect succeeds");
    assert_eq!(
        report.server_info["serverInfo"]["name"],
        "oauth-test-server"
    );
    assert_eq!(report.tool_result.unwrap()["content"][0]["text"], "hello");
    assert_eq!(report.authorizations, 1);
    assert_eq!(launches.load(Ordering::SeqCst), 1, "one browser launch");
    let stats = srv.stats();
    assert_eq!(
        (stats.registrations, stats.authorize_requests, stats.mcp_401),
        (1, 1, 1)
    );
    assert_eq!(
        stats.registered_application_types,
        [Some("native".to_string())],
        "a loopback CLI registers as a native application (SEP-837)"
    );
    assert_eq!(
        report.protocol_version.as_deref(),
        Some("2025-11-25"),
        "a server without the 2026-07-28 wire gets a 2025-11-25 session"
    );
    let token = report.token.unwrap();
    assert!(
        !token
            .scope
            .as_deref()
            .unwrap_or("")
            .contains("offline_access"),
        "offline_access is not asked for where the server does not list it"
    );
}

/// One `connect` run, with a browser that follows redirects, against a server started with
/// `config`.
async fn connect_once(config: Config) -> (OAuthTestServer, ConnectReport) {
    let srv = start(config).await;
    let (browser, _) = following_browser();
    let report = connect(options(&srv, browser))
        .await
        .expect("connect succeeds");
    (srv, report)
}

#[tokio::test]
async fn offline_access_is_requested_where_the_authorization_server_lists_it() {
    let (_srv, report) = connect_once(Config::with(|c| c.offline_access = true)).await;
    let token = report.token.expect("a token");
    assert_eq!(
        token.scope.as_deref(),
        Some("mcp:read mcp:write offline_access"),
        "the challenge's scopes plus offline_access (SEP-2207)"
    );
    assert!(token.refresh_token.is_some());
}

#[tokio::test]
async fn step_up_on_insufficient_scope_asks_for_the_union() {
    let srv = start(admin_tool()).await;
    let (browser, launches) = following_browser();
    let mut opts = options(&srv, browser);
    opts.call_tool = Some(("get_time".into(), json!({})));
    let report = connect(opts).await.expect("connect succeeds after step-up");
    assert_eq!(report.authorizations, 2);
    assert_eq!(launches.load(Ordering::SeqCst), 2);
    assert_eq!(
        report.token.unwrap().scope.as_deref(),
        Some("mcp:read mcp:write mcp:admin")
    );
    assert_eq!(
        srv.stats().registrations,
        1,
        "the second login reuses the registered client"
    );
}

#[tokio::test]
async fn rfc8707_resource_is_sent_where_the_server_requires_it() {
    let srv = start(Config {
        require_resource: true,
        issuer_path: Some("/tenant1".into()),
        ..Config::default()
    })
    .await;
    let (browser, _) = following_browser();
    connect(options(&srv, browser))
        .await
        .expect("connect with an issuer path and required resource");
    let stats = srv.stats();
    assert_eq!(
        stats.resources_received,
        vec![srv.mcp_url(), srv.mcp_url()],
        "authorize and token requests"
    );
}

#[tokio::test]
async fn sse_answers_are_read() {
    let srv = start(Config::with(|c| c.mcp_sse_responses = true)).await;
    let (browser, _) = following_browser();
    let report = connect(options(&srv, browser))
        .await
        .expect("connect over SSE answers");
    assert_eq!(report.tools["tools"][0]["name"], "echo");
}

#[tokio::test]
async fn a_preregistered_confidential_client_needs_no_registration() {
    let srv = start(preregistered_only("pre", "pre-secret-value")).await;
    let (browser, _) = following_browser();
    let mut opts = options(&srv, browser);
    opts.client = ClientConfig {
        client_id: Some("pre".into()),
        client_secret: Some(oauth2::ClientSecret::new("pre-secret-value".into())),
        ..ClientConfig::default()
    };
    connect(opts)
        .await
        .expect("connect with a pre-registered client");
    assert_eq!(srv.stats().registrations, 0);
}

#[tokio::test]
async fn without_registration_or_client_id_the_error_says_what_to_configure() {
    let srv = start(Config::with(|c| c.dynamic_registration = false)).await;
    let (browser, launches) = following_browser();
    let e = connect(options(&srv, browser)).await.unwrap_err();
    assert!(
        matches!(e, ConnectError::OAuth(OAuthError::NoClientIdentity { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("--client-id"), "{e}");
    assert_eq!(
        launches.load(Ordering::SeqCst),
        0,
        "no browser without a client"
    );
}

#[tokio::test]
async fn an_error_redirect_ends_the_run_with_the_servers_error() {
    let srv = start(Config::default()).await;
    srv.inject(Fault::new(FaultTarget::Authorize, FaultKind::InvalidScope))
        .unwrap();
    let (browser, _) = following_browser();
    let e = connect(options(&srv, browser)).await.unwrap_err();
    let ConnectError::OAuth(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.oauth_code(), Some("invalid_scope"));
    assert!(
        e.to_string()
            .starts_with("authorization endpoint answered invalid_scope"),
        "{e}"
    );
    assert_no_secret(&srv, &format!("{e} {e:?}"));
}

#[tokio::test]
async fn a_login_nobody_completes_ends_at_the_deadline() {
    let srv = start(Config::default()).await;
    let ignored = BrowserLauncher::handler(|_url| {});
    let mut opts = options(&srv, ignored);
    opts.timeout = Duration::from_millis(700);
    let e = connect(opts).await.unwrap_err();
    assert!(matches!(e, ConnectError::Timeout(_)), "{e:?}");
}

#[tokio::test]
async fn a_step_up_that_never_succeeds_stops_once_the_demand_is_granted() {
    let srv = start(Config::default()).await;
    let (browser, launches) = following_browser();
    let first = connect(options(&srv, browser.clone()))
        .await
        .expect("a first run logs in");
    assert_eq!(first.authorizations, 1);
    // Every MCP request is refused from now on, with a demand for every scope.
    srv.inject(Fault::new(FaultTarget::Mcp, FaultKind::InsufficientScope))
        .unwrap();
    let e = connect(options(&srv, browser)).await.unwrap_err();
    assert!(
        matches!(&e, ConnectError::Policy(Failure::Forbidden { error }) if error.contains("no scope beyond the granted")),
        "{e:?}"
    );
    assert_eq!(
        launches.load(Ordering::SeqCst),
        1 + 1,
        "one login for the scope demanded in the second run; none for a demand already granted"
    );
    assert_eq!(srv.stats().authorize_requests, 2);
}

#[tokio::test]
async fn a_2026_07_28_server_is_spoken_to_statelessly() {
    let (_srv, report) = connect_once(Config::with(|c| c.mcp_stateless = true)).await;
    assert_eq!(report.protocol_version.as_deref(), Some("2026-07-28"));
    assert_eq!(
        mcpproxy_oauth::mcp::client::server_info(&report.server_info).unwrap()["name"],
        "oauth-test-server"
    );
    assert_eq!(report.tool_result.unwrap()["content"][0]["text"], "hello");
    assert_eq!(report.tools["tools"][0]["name"], "echo");
    assert_eq!(report.authorizations, 1);
}

#[tokio::test]
async fn the_json_rpc_body_of_an_http_error_is_reported() {
    let (srv, report) = connect_once(Config::with(|c| c.mcp_stateless = true)).await;
    let token = report.token.unwrap();
    // A request without negotiation carries no version header: the server refuses it with
    // HTTP 400 and a JSON-RPC error saying why.
    let mut mcp = mcpproxy_oauth::mcp::McpClient::new(
        Url::parse(&srv.mcp_url()).unwrap(),
        Duration::from_secs(10),
    );
    let refused = mcp
        .list_tools(Some(token.access_token.secret()))
        .await
        .unwrap_err();
    let shown = refused.to_string();
    assert!(
        matches!(
            refused,
            mcpproxy_oauth::mcp::McpError::Rpc {
                status: Some(400),
                code: -32020,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(
        shown.contains("HTTP 400") && shown.contains("MCP-Protocol-Version"),
        "{shown}"
    );
    assert!(!shown.contains(token.access_token.secret()));
}

#[tokio::test]
async fn a_moved_authorization_server_gets_its_own_registration_and_login() {
    // After two accepted requests (discover and initialize) the resource trusts only `new_as`.
    let (new_as, srv) = moving_authorization_server(2).await;
    let (browser, launches) = following_browser();
    let report = connect(options(&srv, browser))
        .await
        .expect("connect follows the authorization server to its new place");
    assert_eq!(report.tool_result.unwrap()["content"][0]["text"], "hello");
    assert_eq!(report.authorizations, 2, "one login at each server");
    assert_eq!(launches.load(Ordering::SeqCst), 2);
    let (old, new) = (srv.stats(), new_as.stats());
    assert_eq!(
        old.registrations_and_logins(),
        (1, 1),
        "the old server saw one registration and one login, not repeated logins"
    );
    assert_eq!(
        new.registrations_and_logins(),
        (1, 1),
        "the new server got its own registration (an old client ID would be refused there)"
    );
    assert_eq!(
        old.token_requests_for("refresh_token"),
        0,
        "the old server's refresh token is not used once the resource has moved"
    );
}
