//! The `mcpproxy-oauth connect` binary: exit codes, output, and the conformance context.

mod common;

use common::*;
use oauth_test_server::Config;

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
    assert_eq!(
        summary["protocol_version"], "2025-11-25",
        "the version spoken is in the summary"
    );
    assert_eq!(summary["server"]["name"], "oauth-test-server");
    assert_no_secret(&srv, &stdout);
    assert_no_secret(&srv, &stderr);
}

#[tokio::test]
async fn the_conformance_context_supplies_preregistered_credentials() {
    let srv = start(preregistered_only("ctx-client", "ctx-secret")).await;
    let context = r#"{"client_id":"ctx-client","client_secret":"ctx-secret"}"#;
    let url = srv.mcp_url();
    let out = run(&connect_args(&url), &[("MCP_CONFORMANCE_CONTEXT", context)]).await;
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

#[tokio::test]
async fn two_processes_logging_in_at_once_run_one_flow() {
    let srv = start(Config::default()).await;
    let (config, data) = daemon_files(&srv, "two");
    let (config, data) = (
        config.to_str().unwrap().to_string(),
        data.to_str().unwrap().to_string(),
    );
    // The "person" takes a second to approve, so the two logins surely overlap: the second
    // waits for the first one's flow lock and uses its token (one browser for both).
    let slow_browser = format!("sleep 1; {CURL_BROWSER}");
    let args = [
        "auth",
        "login",
        "srv",
        "--config",
        &config,
        "--data-dir",
        &data,
        "--browser-command",
        &slow_browser,
    ];
    let (a, b) = tokio::join!(run(&args, &[]), run(&args, &[]));
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("srv: logged in"));
    }
    assert_eq!(
        srv.stats().authorize_requests,
        1,
        "one login for two processes"
    );

    let status = run(&["auth", "status", "--json", "--data-dir", &data], &[]).await;
    let stdout = String::from_utf8_lossy(&status.stdout);
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("JSON status");
    assert_eq!(rows[0]["server_name"], "srv");
    assert_eq!(rows[0]["status"], "valid");
    assert_eq!(rows[0]["has_refresh_token"], true);
    assert_no_secret(&srv, &stdout);

    let refreshed = run(&auth_args("refresh", &config, &data), &[]).await;
    assert!(
        refreshed.status.success(),
        "{}",
        String::from_utf8_lossy(&refreshed.stderr)
    );
    assert_eq!(srv.stats().token_requests_for("refresh_token"), 1);
    let logout = run(&auth_args("logout", &config, &data), &[]).await;
    assert!(logout.status.success());
    assert_eq!(srv.stats().revocations, 1);
    let after = run(
        &[
            "auth",
            "status",
            "--json",
            "--data-dir",
            &data,
            "--config",
            &config,
        ],
        &[],
    )
    .await;
    let rows: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(rows[0]["status"], "missing");
}

#[tokio::test]
async fn serve_authorizes_every_server_and_stops_cleanly_on_interrupt() {
    let srv = start(Config::default()).await;
    let (config, data) = daemon_files(&srv, "serve");
    let mut child = spawn(&on_files(
        &["serve"],
        config.to_str().unwrap(),
        data.to_str().unwrap(),
    ));
    // The login's token is stored before the daemon answers anyone; wait for the row.
    let db = data.join("tokens.db");
    wait_until(
        "serve logging in and storing a valid token",
        std::time::Duration::from_secs(15),
        || srv.stats().token_requests_for("authorization_code") >= 1 && valid_tokens(&db) >= 1,
    )
    .await;
    stop(&mut child, "-INT").await;
    let stderr = stderr_of(&mut child).await;
    assert!(
        stderr.contains("authorized") && stderr.contains("stopping"),
        "{stderr}"
    );
    assert_no_secret(&srv, &stderr);
}

#[tokio::test]
async fn a_bad_config_names_the_server_and_field() {
    let (dir, config) = folder_with_config(
        "cli-badcfg",
        r#"{"mcpServers": [{"name": "gh", "url": "ftp://x", "oauth": {}}]}"#,
    );
    let out = run(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.join("d").to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server gh: field url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn auth_doctor_passes_on_a_healthy_server_and_names_a_failing_step() {
    let srv = start(Config::default()).await;
    let (config, _) = daemon_files(&srv, "doctor");
    let config = config.to_str().unwrap();
    let out = run(&["auth", "doctor", "srv", "--config", config], &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("srv: every step passes"), "{stdout}");
    srv.inject(oauth_test_server::Fault::new(
        oauth_test_server::FaultTarget::Refresh,
        oauth_test_server::FaultKind::ServerError,
    ))
    .unwrap();
    let out = run(&["auth", "doctor", "srv", "--config", config], &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL token endpoint"), "{stdout}");
    assert!(
        stdout.contains("(HTTP 500)") && stdout.contains("what to do:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("srv: the token endpoint step fails"),
        "{stdout}"
    );
    let out = run(&["auth", "doctor", "nope", "--config", config], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("configured servers: srv"));
    srv.shutdown().await;
}

#[tokio::test]
async fn serve_takes_its_flow_limits_from_the_command_line_and_refuses_bad_ones() {
    let srv = start(Config::default()).await;
    let (config, data) = daemon_files(&srv, "tuning");
    let tuned = [
        "serve",
        "--non-interactive",
        "--listen",
        "127.0.0.1:0",
        "--max-concurrent-refreshes",
        "3",
        "--flow-threads",
        "2",
        "--refresh-stagger",
        "250ms",
    ];
    let mut child = spawn(&on_files(
        &tuned,
        config.to_str().unwrap(),
        data.to_str().unwrap(),
    ));
    let mut lines = stderr_lines(&mut child);
    let within = std::time::Duration::from_secs(15);
    let api = read_until(&mut lines, &mut String::new(), within, "its API", |line| {
        let at = line.find("operator API and web page on http://")?;
        let rest = &line[at + "operator API and web page on ".len()..];
        Some(rest[..rest[7..].find('/').unwrap() + 7].to_string())
    })
    .await;
    // Every request carries the API key serve created beside the database.
    let key = std::fs::read_to_string(data.join("api-key")).unwrap();
    let text = reqwest::Client::new()
        .get(format!("{api}/metrics"))
        .header("X-API-Key", key.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l == "mcpproxy_oauth_scheduler{measure=\"refresh_limit\"} 3"),
        "the limit given is the limit used:\n{text}"
    );
    stop(&mut child, "-TERM").await;

    for (flag, value, says) in [
        (
            "--max-concurrent-refreshes",
            "0",
            "--max-concurrent-refreshes",
        ),
        ("--flow-threads", "1000", "--flow-threads"),
        ("--refresh-stagger", "2h", "at most 1h"),
    ] {
        let out = run(
            &["serve", "--config", config.to_str().unwrap(), flag, value],
            &[],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}
