//! The `mcpproxy-oauth connect` binary: exit codes, output, and the conformance context.

mod common;

use std::process::Output;

use common::*;
use oauth_test_server::Config;

const BIN: &str = env!("CARGO_BIN_EXE_mcpproxy-oauth");
/// A "browser" that follows the redirect to the loopback listener.
const CURL_BROWSER: &str = "curl -s -o /dev/null -L";

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("BROWSER")
        .env_remove("MCP_CONFORMANCE_CONTEXT");
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(std::time::Duration::from_secs(30), command.output())
        .await
        .expect("the command ends within 30 s")
        .expect("the binary runs")
}

#[tokio::test]
async fn connect_prints_a_summary_and_exits_zero() {
    let srv = start(Config::default()).await;
    let url = srv.mcp_url();
    let out = run(
        &[
            "connect",
            "--browser-command",
            CURL_BROWSER,
            "--call-tool",
            "echo",
            "--args",
            r#"{"message":"cli"}"#,
            "--timeout",
            "20s",
            "--log-level",
            "trace",
            &url,
        ],
        &[],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).expect("stdout is the JSON summary");
    assert_eq!(summary["tools"], serde_json::json!(["echo", "get_time"]));
    assert_eq!(summary["tool_result"]["content"][0]["text"], "cli");
    assert_eq!(summary["authorizations"], 1);
    assert_no_secret(&srv, &stdout);
    assert_no_secret(&srv, &stderr);
}

#[tokio::test]
async fn the_conformance_context_supplies_preregistered_credentials() {
    let srv = start(Config {
        dynamic_registration: false,
        preregistered_client: Some(("ctx-client".into(), Some("ctx-secret".into()))),
        ..Config::default()
    })
    .await;
    let context = r#"{"client_id":"ctx-client","client_secret":"ctx-secret"}"#;
    let out = run(
        &[
            "connect",
            "--browser-command",
            CURL_BROWSER,
            "--timeout",
            "20s",
            &srv.mcp_url(),
        ],
        &[("MCP_CONFORMANCE_CONTEXT", context)],
    )
    .await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(srv.stats().token_requests_for("authorization_code"), 1);
}

#[tokio::test]
async fn failures_exit_non_zero_with_a_clear_message() {
    let out = run(&["connect", "not a url"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid server URL"));

    let srv = start(Config::default()).await;
    let url = srv.mcp_url();
    srv.shutdown().await;
    let out = run(&["connect", "--timeout", "5s", &url], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the MCP server"), "{stderr}");
}

#[tokio::test]
async fn no_browser_prints_the_authorization_url_and_waits() {
    let srv = start(Config::default()).await;
    let out = run(
        &["connect", "--no-browser", "--timeout", "1s", &srv.mcp_url()],
        &[("BROWSER", "false")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Open this URL in a browser to authorize:\n  {}/authorize?",
            srv.issuer()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("code_challenge_method=S256"));
    assert!(stderr.contains("gave up after 1s"), "{stderr}");
}
