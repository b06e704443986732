//! Traceable flows (SC-002, SC-003, FR-007) against the OAuth test server, with the project's
//! own JSON log layer capturing every line at trace level.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use mcpproxy_oauth::upstream::state::Policy;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use serde_json::Value;
use url::Url;

fn flow_lines(id: &str) -> Vec<Value> {
    project_log_lines()
        .into_iter()
        .filter(|l| l["correlation_id"].as_str() == Some(id))
        .collect()
}

async fn supervisor(
    servers: Vec<UpstreamConfig>,
    dir: &Path,
    browser: BrowserLauncher,
) -> SupervisorHandle {
    project_logs();
    start_supervisor(SupervisorConfig {
        policy: Policy {
            backoff_base: 100,
            backoff_cap: 1_000,
            ..Policy::default()
        },
        http_timeout: Duration::from_millis(800),
        ..supervisor_config(servers, dir, browser)
    })
    .await
}

/// Flow lines from modules that only ever run inside a flow.
fn is_flow_internal(line: &Value) -> bool {
    let target = line["target"].as_str().unwrap_or("");
    [
        "mcpproxy_oauth::http",
        "mcpproxy_oauth::flow",
        "mcpproxy_oauth::oauth::",
        "mcpproxy_oauth::upstream::flows",
    ]
    .iter()
    .any(|t| target.starts_with(t))
}

#[tokio::test]
async fn sc_002_every_flow_line_carries_its_own_correlation_id() {
    let servers: Vec<OAuthTestServer> = futures_like_join(3).await;
    let dir = data_dir("sc002");
    let (browser, _) = following_browser();
    let names = ["alpha", "beta", "gamma"];
    let configs = names
        .iter()
        .zip(&servers)
        .map(|(n, s)| upstream(n, s))
        .collect();
    let handle = supervisor(configs, &dir, browser).await;
    let mut flows = Vec::new();
    for round in 0..2 {
        let mut calls = tokio::task::JoinSet::new();
        for name in names {
            let handle = handle.clone();
            calls.spawn(async move {
                let grant = if round == 0 {
                    handle.reconnect(name).await
                } else {
                    handle.refresh(name).await
                };
                (
                    name,
                    grant
                        .expect("the flow succeeds")
                        .flow_id
                        .expect("a correlation id"),
                )
            });
        }
        flows.extend(calls.join_all().await);
    }
    handle.shutdown().await;
    let ids: HashSet<&String> = flows.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 6, "each flow has a distinct ID");
    for (server, id) in &flows {
        let lines = flow_lines(id);
        assert!(
            lines.iter().all(|l| l["server"] == *server),
            "filtering {id} yields only {server}'s lines"
        );
        assert!(
            lines.iter().any(|l| l["message"] == "oauth response"),
            "{server}: the flow's HTTP exchanges are in its trace"
        );
        assert!(
            lines.iter().any(|l| l["step"] == "decision"),
            "{server}: the flow's decision is in its trace"
        );
    }
    let internal: Vec<Value> = project_log_lines()
        .into_iter()
        .filter(is_flow_internal)
        .collect();
    assert!(!internal.is_empty());
    let without: Vec<&Value> = internal
        .iter()
        .filter(|l| l["correlation_id"].as_str().is_none())
        .collect();
    assert!(
        without.is_empty(),
        "{} flow lines without a correlation_id, e.g. {}",
        without.len(),
        without[0]
    );
}

async fn futures_like_join(n: usize) -> Vec<OAuthTestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(start(Config::default()).await);
    }
    servers
}

/// Logs in once, stops, expires the stored access token, arms `fault` on refresh, restarts:
/// the next reconnect runs a refresh flow that meets the fault. Returns its correlation ID.
async fn refresh_flow_meeting(fault: Fault) -> (OAuthTestServer, String) {
    let srv = start(Config::default()).await;
    let dir = data_dir("sc003");
    let (browser, _) = following_browser();
    let first = supervisor(vec![upstream("srv", &srv)], &dir, browser.clone()).await;
    first.reconnect("srv").await.unwrap();
    first.shutdown().await;
    let conn = rusqlite::Connection::open(database_path(&dir)).unwrap();
    conn.execute("UPDATE oauth_tokens SET expires_at = obtained_at + 1", [])
        .unwrap();
    srv.inject(fault).unwrap();
    let handle = supervisor(vec![upstream("srv", &srv)], &dir, browser).await;
    let _ = handle.reconnect("srv").await;
    handle.shutdown().await;
    let id: String = conn
        .query_row(
            "SELECT flow_id FROM oauth_flows WHERE kind = 'refresh' ORDER BY started_at LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (srv, id)
}

fn decision(lines: &[Value]) -> String {
    lines
        .iter()
        .rev()
        .find(|l| l["step"] == "decision")
        .map(|l| l["details"]["decision"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn sc_003_each_injected_fault_is_diagnosable_from_its_flow_alone() {
    /// A fault, and what its flow's log must show about it.
    struct Case {
        kind: FaultKind,
        delay_ms: Option<u64>,
        status: Option<u64>,
        code: Option<&'static str>,
        decision: &'static str,
    }
    let case = |kind, delay_ms, status, code, decision| Case {
        kind,
        delay_ms,
        status,
        code,
        decision,
    };
    let cases = [
        case(
            FaultKind::InvalidGrant,
            None,
            Some(400),
            Some("invalid_grant"),
            "re-login",
        ),
        case(
            FaultKind::InvalidClient,
            None,
            Some(401),
            Some("invalid_client"),
            "register a new client",
        ),
        case(
            FaultKind::ServerError,
            None,
            Some(500),
            Some("server_error"),
            "retry at",
        ),
        case(
            FaultKind::RateLimited,
            Some(1_000),
            Some(429),
            Some("temporarily_unavailable"),
            "retry at",
        ),
        case(FaultKind::Hang, None, None, None, "retry at"),
        case(FaultKind::MalformedJson, None, Some(200), None, "retry at"),
        case(
            FaultKind::MissingAccessToken,
            None,
            Some(200),
            None,
            "retry at",
        ),
        case(FaultKind::ExpiresInZero, None, Some(200), None, "retry at"),
    ];
    for Case {
        kind,
        delay_ms,
        status,
        code,
        decision: expected_decision,
    } in cases
    {
        let mut fault = Fault::new(FaultTarget::Refresh, kind).times(1);
        fault.delay_ms = delay_ms;
        let (srv, id) = refresh_flow_meeting(fault).await;
        let lines = flow_lines(&id);
        let token_lines: Vec<&Value> = lines
            .iter()
            .filter(|l| l["endpoint"] == "token endpoint")
            .collect();
        assert!(
            !token_lines.is_empty(),
            "{kind}: the flow names the token endpoint"
        );
        if let Some(status) = status {
            assert!(
                token_lines.iter().any(|l| l["status"] == status),
                "{kind}: HTTP {status} is in the flow"
            );
        } else {
            assert!(
                token_lines
                    .iter()
                    .any(|l| l["message"] == "oauth request failed"
                        && l["error"].as_str().unwrap_or("").contains("did not answer")),
                "{kind}: the timeout is in the flow"
            );
        }
        if let Some(code) = code {
            assert!(
                lines.iter().any(|l| l["response_body"]["error"] == code),
                "{kind}: the OAuth error code {code} is in the flow"
            );
        }
        let failure = lines
            .iter()
            .find(|l| l["step"] == "failed")
            .unwrap_or_else(|| panic!("{kind}: a failed event"));
        assert!(
            failure["details"]["class"].is_string(),
            "{kind}: the failure is classified"
        );
        assert!(
            decision(&lines).starts_with(expected_decision),
            "{kind}: decision {:?}",
            decision(&lines)
        );
        assert!(lines.iter().all(|l| l["server"] == "srv"));
        assert_no_secret(&srv, &serde_json::to_string(&lines).unwrap());
    }
}

#[tokio::test]
async fn sc_003_a_forged_callback_and_an_issuer_mismatch_are_in_their_login_flows() {
    // A forged callback (wrong state) arrives before the real one: rejected, logged, and the
    // login still completes.
    let srv = start(Config::default()).await;
    let (follow, _) = following_browser();
    let forging = BrowserLauncher::handler(move |url: Url| {
        let redirect = url
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let follow = follow.clone();
        tokio::spawn(async move {
            let forged = reqwest::Client::new()
                .get(format!("{redirect}?code=evil&state=forged"))
                .send()
                .await
                .unwrap();
            assert_eq!(forged.status(), 400);
            if let BrowserLauncher::Handler(inner) = &follow {
                (inner.0)(url);
            }
        });
    });
    let handle = supervisor(vec![upstream("srv", &srv)], &data_dir("forged"), forging).await;
    let grant = handle
        .reconnect("srv")
        .await
        .expect("the real callback completes the login");
    handle.shutdown().await;
    let lines = flow_lines(grant.flow_id.as_deref().unwrap());
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .contains("state does not match")),
        "the rejection is in the flow"
    );
    assert!(decision(&lines).starts_with("use the new token"));

    // An issuer mismatch stops the login at discovery.
    let srv = start(Config::default()).await;
    srv.inject(Fault::new(FaultTarget::Metadata, FaultKind::WrongIssuer).times(1))
        .unwrap();
    let (browser, launches) = following_browser();
    let dir = data_dir("issuer");
    let handle = supervisor(vec![upstream("srv", &srv)], &dir, browser).await;
    let e = handle.reconnect("srv").await.unwrap_err();
    handle.shutdown().await;
    assert!(e.to_string().contains("names issuer"), "{e}");
    assert_eq!(
        launches.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no browser for an impostor"
    );
    let lines = flow_lines(e.flow_id().expect("the error names its flow"));
    assert!(
        lines
            .iter()
            .any(|l| l["endpoint"] == "authorization server metadata" && l["status"] == 200),
        "the metadata exchange is in the flow"
    );
    let failure = lines
        .iter()
        .find(|l| l["step"] == "failed")
        .expect("a failed event");
    assert!(
        failure["details"]["error"]
            .as_str()
            .unwrap()
            .contains("impostor")
    );
    assert!(decision(&lines).starts_with("wait for a login"));
}

#[tokio::test]
async fn fr_007_no_issued_secret_in_logs_errors_or_debug_output() {
    let srv = start(Config::default()).await;
    let dir = data_dir("fr007");
    let (browser, _) = following_browser();
    let handle = supervisor(vec![upstream("srv", &srv)], &dir, browser).await;
    let grant = handle.reconnect("srv").await.unwrap();
    let refreshed = handle.refresh("srv").await.unwrap();
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::InvalidGrant).times(1))
        .unwrap();
    let refused = handle.refresh("srv").await;
    let status = handle.status().await.unwrap();
    let token_status = handle.token_status().await.unwrap();
    handle.shutdown().await;
    // What a panic would print is Debug output: none of it may hold a secret.
    let debug = format!("{grant:?} {refreshed:?} {refused:?} {status:?} {token_status:?}");
    assert_no_secret(&srv, &debug);
    let store = mcpproxy_oauth::store::TokenStore::open(&database_path(&dir)).unwrap();
    assert_no_secret(
        &srv,
        &format!(
            "{:?} {:?}",
            store.load_token(&upstream("srv", &srv).server_key).unwrap(),
            store
                .load_client(&upstream("srv", &srv).server_key)
                .unwrap()
        ),
    );
    let all = project_logs();
    assert!(
        all.contains("oauth response"),
        "the trace-level log did capture the exchanges"
    );
    assert_no_secret(&srv, &all);
}

#[tokio::test]
async fn logs_trace_prints_a_refresh_timeline() {
    let srv = start(Config::default()).await;
    let dir = temp_dir("obs-cli");
    let config = write_config(&dir, &srv, &["srv"]);
    let log = dir.join("log.jsonl");
    let bin = env!("CARGO_BIN_EXE_mcpproxy-oauth");
    let data = dir.join("data");
    let common = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--log-file",
        log.to_str().unwrap(),
    ];
    let login = tokio::process::Command::new(bin)
        .args([
            "auth",
            "login",
            "srv",
            "--browser-command",
            "curl -s -o /dev/null -L",
        ])
        .args(common)
        .output()
        .await
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let refresh = tokio::process::Command::new(bin)
        .args(["auth", "refresh", "srv"])
        .args(common)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&refresh.stdout);
    let id = stdout
        .split("flow ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the refresh names its flow")
        .to_string();
    let trace = tokio::process::Command::new(bin)
        .args(["logs", "trace", &id, "--file", log.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let timeline = String::from_utf8_lossy(&trace.stdout);
    assert!(
        trace.status.success(),
        "{}",
        String::from_utf8_lossy(&trace.stderr)
    );
    assert!(
        timeline.starts_with(&format!("flow {id} (refresh, server srv)")),
        "{timeline}"
    );
    assert!(
        timeline.contains("oauth request | token endpoint POST"),
        "{timeline}"
    );
    assert!(
        timeline.contains("oauth response | token endpoint POST")
            && timeline.contains("| HTTP 200 |"),
        "{timeline}"
    );
    assert!(timeline.contains("flow token obtained"), "{timeline}");
    assert!(
        timeline.contains("outcome: decision: use the new token"),
        "{timeline}"
    );
    assert_no_secret(&srv, &timeline);
    assert_no_secret(&srv, &std::fs::read_to_string(&log).unwrap());
    let flows = tokio::process::Command::new(bin)
        .args([
            "logs",
            "flows",
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&flows.stdout);
    assert!(
        listing.contains(&id) && listing.contains("refresh") && listing.contains("succeeded"),
        "{listing}"
    );
}
