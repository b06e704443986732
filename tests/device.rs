//! Headless login (RFC 8628 device authorization grant) end to end against the OAuth test
//! server over loopback: `connect --device-code` as a process, `connect` in-process for the
//! denied and expired codes, and the daemon's login flow with the user code in its status.
//! The test server announces a 1 s interval so polls come quickly; the 5 s a `slow_down` adds
//! is RFC 8628's and is waited for real. Every log line (the process's and this binary's, at
//! debug and trace) is scanned for the device codes and tokens the server issued.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::connect::{ConnectError, ConnectOptions, ConnectReport, connect};
use mcpproxy_oauth::oauth::OAuthError;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::supervisor::SupervisorHandle;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use tokio::sync::mpsc;
use url::Url;

/// What a person does at the verification page: approve, or deny.
async fn answer(verification_url: &str, approve: bool) {
    let mut url = Url::parse(verification_url).unwrap();
    if !approve {
        url.query_pairs_mut().append_pair("decision", "deny");
    }
    let response = reqwest::get(url)
        .await
        .expect("the verification page answers");
    assert!(
        response.status().is_success(),
        "the verification page accepted the decision: {}",
        response.status()
    );
}

async fn next_url(urls: &mut mpsc::UnboundedReceiver<Url>) -> Url {
    tokio::time::timeout(Duration::from_secs(10), urls.recv())
        .await
        .expect("the device login shows its verification URL within 10 s")
        .expect("the launcher is alive")
}

#[tokio::test]
async fn connect_device_code_logs_in_after_one_slow_down() {
    let srv = start(Config {
        device_slow_down_polls: 1,
        ..device_grant_server()
    })
    .await;
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "connect",
            "--device-code",
            "--no-browser",
            "--call-tool",
            "echo",
            "--args",
            r#"{"message":"device"}"#,
            "--timeout",
            "40s",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            &srv.mcp_url(),
        ])
        .env_remove("BROWSER")
        .env_remove("MCP_CONFORMANCE_CONTEXT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary runs");
    let mut stderr = stderr_lines(&mut child);
    let mut seen = String::new();
    // The instructions line: "To sign in, open URI and enter the code CODE (or open URL)".
    let within = Duration::from_secs(20);
    let complete = read_until(&mut stderr, &mut seen, within, "a user code", |line| {
        let rest = line.strip_prefix("To sign in, open ")?;
        let code = rest.split("enter the code ").nth(1).unwrap();
        let complete = code.split("(or open ").nth(1).unwrap();
        Some(complete.trim_end_matches(')').to_string())
    })
    .await;
    assert!(complete.contains("user_code="), "{complete}");
    answer(&complete, true).await;
    let rest = rest_of(stderr);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("connect ends within 30 s of the approval")
        .unwrap();
    let logs = format!("{seen}{}", rest.await.unwrap());
    assert!(out.status.success(), "stderr: {logs}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["tool_result"]["content"][0]["text"], "device");
    assert_eq!(summary["authorizations"], 1);

    let stats = srv.stats();
    assert_eq!(stats.device_authorizations, 1);
    assert_eq!(
        stats.device_slow_downs, 1,
        "exactly the one slow_down asked for"
    );
    assert_eq!(
        stats.token_requests_for("authorization_code"),
        0,
        "no browser login"
    );
    // Poll 1 was slowed down; poll 2 came at least interval + 5 s later (RFC 8628 §3.5).
    assert_eq!(stats.device_polls, 2, "{stats:?}");
    assert!(
        stats.device_poll_gaps_ms.len() == 1 && stats.device_poll_gaps_ms[0] >= 6_000,
        "the poll after slow_down waited 1 s + 5 s: {:?}",
        stats.device_poll_gaps_ms
    );
    assert!(
        logs.contains("device login: the server asked to slow down"),
        "{logs}"
    );
    // The user code is for the person and is logged; the device code and tokens never are.
    let secrets = srv.secrets();
    assert_eq!(secrets.device_codes.len(), 1);
    assert_no_secret(&srv, &logs);
    assert_no_secret(&srv, &String::from_utf8_lossy(&out.stdout));
}

fn options(srv: &OAuthTestServer, browser: BrowserLauncher) -> ConnectOptions {
    ConnectOptions {
        device_code: true,
        grant: None,
        ..connect_options(srv, browser)
    }
}

type ConnectRun = tokio::task::JoinHandle<Result<ConnectReport, ConnectError>>;

/// A device-grant server, `connect` to it started in the background, and the verification URL
/// it showed first: (server, the run, URL). Log capture starts before.
async fn device_connect_started() -> (OAuthTestServer, ConnectRun, Url) {
    captured_logs();
    let srv = start(device_grant_server()).await;
    let (browser, mut urls) = reporting_browser();
    let run = tokio::spawn(connect(options(&srv, browser)));
    let url = next_url(&mut urls).await;
    (srv, run, url)
}

/// `error` is the OAuth error `is` picks out, and its message says each of `says`.
fn assert_oauth_error(error: &ConnectError, is: fn(&OAuthError) -> bool, says: &[&str]) {
    assert!(
        matches!(error, ConnectError::OAuth(e) if is(e)),
        "{error:?}"
    );
    let message = error.to_string();
    for said in says {
        assert!(message.contains(said), "{said:?} not in: {message}");
    }
}

#[tokio::test]
async fn a_denied_device_code_ends_connect_with_a_clear_error() {
    let (srv, run, url) = device_connect_started().await;
    answer(url.as_str(), false).await;
    let error = run.await.unwrap().unwrap_err();
    let denied = |e: &OAuthError| matches!(e, OAuthError::DeviceAccessDenied { .. });
    assert_oauth_error(&error, denied, &["denied", "start the login again"]);
    assert_eq!(srv.stats().token_errors.get("access_denied"), Some(&1));
    assert_no_secret(&srv, &captured_logs());
}

#[tokio::test]
async fn an_expired_device_code_ends_connect_with_a_clear_error() {
    let (srv, run, _) = device_connect_started().await;
    // Nobody answers: the code's ten minutes pass on the server's clock.
    srv.advance_clock(Duration::from_secs(601));
    let error = run.await.unwrap().unwrap_err();
    let expired = |e: &OAuthError| matches!(e, OAuthError::DeviceCodeExpired { .. });
    assert_oauth_error(&error, expired, &["expired"]);
    assert_eq!(srv.stats().token_errors.get("expired_token"), Some(&1));
    assert_no_secret(&srv, &captured_logs());
}

#[tokio::test]
async fn a_failing_token_endpoint_slows_polling_and_the_login_still_succeeds() {
    let (srv, run, url) = device_connect_started().await;
    // The code is shown before the first poll, which waits the 1 s interval: that poll meets
    // a 500, which says nothing about the code.
    srv.inject(Fault {
        count: Some(1),
        ..Fault::new(FaultTarget::Token, FaultKind::ServerError)
    })
    .unwrap();
    answer(url.as_str(), true).await;
    let report = run
        .await
        .unwrap()
        .expect("the login survives a failing poll");
    assert_eq!(report.authorizations, 1);
    let stats = srv.stats();
    assert_eq!(stats.faults_fired.get("token"), Some(&1), "{stats:?}");
    assert!(
        stats.token_requests_for("urn:ietf:params:oauth:grant-type:device_code") >= 2,
        "the code was polled again after the failure: {stats:?}"
    );
    assert_no_secret(&srv, &captured_logs());
}

#[tokio::test]
async fn without_a_device_endpoint_the_error_says_so() {
    let srv = start(Config::default()).await;
    let (browser, _urls) = reporting_browser();
    let error = connect(options(&srv, browser)).await.unwrap_err();
    let unsupported = |e: &OAuthError| matches!(e, OAuthError::DeviceGrantUnsupported { .. });
    let issuer = srv.issuer();
    let says = ["no device authorization endpoint", issuer.as_str()];
    assert_oauth_error(&error, unsupported, &says);
    assert_eq!(srv.stats().registrations, 0, "nothing was registered");
}

/// Waits (bounded) until the status of `srv` shows a device prompt; returns its complete URL.
async fn wait_for_device_prompt(handle: &SupervisorHandle) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = handle.status().await.unwrap();
        if let Some(prompt) = &status[0].device_login {
            assert_eq!(status[0].phase.name(), "authorizing");
            return (
                prompt.user_code.clone(),
                prompt.verification_uri_complete.clone().unwrap(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "no device prompt in status within 10 s: {:?}",
            status[0]
        );
        let mut changes = handle.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.recv()).await;
    }
}

#[tokio::test]
async fn the_daemon_logs_in_by_device_code_and_keeps_the_refresh_token_on_failures() {
    captured_logs();
    let srv = start(device_grant_server()).await;
    let (browser, mut urls) = reporting_browser();
    let (handle, dir) = device_code_supervisor(&srv, browser, "device").await;

    // First login: the user code shows in status, the person approves, the prompt goes away.
    let login = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.reconnect("dev").await })
    };
    let (user_code, complete) = wait_for_device_prompt(&handle).await;
    assert!(complete.ends_with(&format!("user_code={user_code}")));
    assert_eq!(
        next_url(&mut urls).await.as_str(),
        complete,
        "shown through the launcher"
    );
    let before = srv.stats().device_polls;
    answer(&complete, true).await;
    login.await.unwrap().expect("the device login succeeds");
    assert!(srv.stats().device_polls > before);
    let status = handle.status().await.unwrap();
    assert_eq!(status[0].phase.name(), "connected");
    assert!(status[0].has_refresh_token);
    assert_eq!(
        status[0].device_login, None,
        "the prompt is gone once logged in"
    );
    assert_eq!(srv.stats().token_requests_for("authorization_code"), 0);

    // A denied login: a clear error, the stored refresh token kept.
    let login = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.login("dev").await })
    };
    let (_, complete) = wait_for_device_prompt(&handle).await;
    answer(&complete, false).await;
    let error = login.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("denied"), "{error}");
    let rows = handle.token_status().await.unwrap();
    assert!(
        rows[0].has_refresh_token,
        "the refresh token is kept: {rows:?}"
    );
    assert_eq!(
        srv.stats().registrations,
        1,
        "the client registered for the device grant is reused by the next login"
    );
    assert_eq!(handle.status().await.unwrap()[0].device_login, None);

    // An expired code: the same, and the kept refresh token still works.
    let login = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.login("dev").await })
    };
    wait_for_device_prompt(&handle).await;
    srv.advance_clock(Duration::from_secs(601));
    let error = login.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("expired"), "{error}");
    assert!(handle.token_status().await.unwrap()[0].has_refresh_token);
    handle
        .refresh("dev")
        .await
        .expect("the kept refresh token refreshes");
    assert_eq!(srv.stats().token_requests_for("refresh_token"), 1);

    handle.shutdown().await;
    let logs = captured_logs();
    assert!(
        logs.contains("device login: waiting for the user to enter the code"),
        "the prompt is logged"
    );
    assert_no_secret(&srv, &logs);
    let _ = std::fs::remove_dir_all(&dir);
}
