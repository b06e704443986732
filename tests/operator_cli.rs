//! The rough edges a newcomer hit with the operator commands (issue #20): a report piped into
//! `head -1` ends quietly, a directory without a database is said to be one (exit 1), and
//! `auth doctor` takes `--data-dir` like every other command.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::start;
use mcpproxy_oauth::store::TokenStore;
use oauth_test_server::Config;

const BIN: &str = env!("CARGO_BIN_EXE_mcpproxy-oauth");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcpproxy-oauth-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A data directory whose database holds `n` finished flows.
fn data_with_flows(n: usize) -> PathBuf {
    let dir = temp_dir("cli-flows");
    let mut store = TokenStore::open(&dir.join("tokens.db")).unwrap();
    for i in 0..n {
        let id = format!("flow-{i:04}");
        store
            .begin_flow(
                &id,
                "srv_0123456789abcdef",
                "srv",
                "refresh",
                "test",
                60_000,
            )
            .unwrap();
        store
            .finish_flow(&id, (i % 2 == 0).then_some("a reason"))
            .unwrap();
    }
    dir
}

#[test]
fn a_report_whose_reader_left_ends_quietly() {
    let data = data_with_flows(3);
    let data = data.to_str().unwrap();
    for args in [
        &["logs", "flows", "--data-dir", data][..],
        &["logs", "flows", "--json", "--data-dir", data],
        &["auth", "status", "--data-dir", data],
    ] {
        // A pipe whose reader is already gone: the first write fails with EPIPE, as it does
        // once `head -1` has its line.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // And through a real `head -1`, on a report longer than a pipe holds.
    let many = data_with_flows(600);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{BIN}' logs flows --limit 500 --data-dir '{}' | head -1",
            many.display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("STARTED"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stderr.is_empty(),
        "no panic, no broken-pipe message: {stderr}"
    );
}

#[test]
fn a_directory_without_a_database_is_named_and_fails() {
    let empty = temp_dir("cli-empty");
    let empty_arg = empty.to_str().unwrap();
    for args in [
        &["auth", "status", "--data-dir", empty_arg][..],
        &["auth", "status", "--json", "--data-dir", empty_arg],
        &["logs", "flows", "--data-dir", empty_arg],
        &["logs", "flows", "--json", "--data-dir", empty_arg],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("no token database in {empty_arg}"))
                && stderr.contains("--data-dir"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(
            !empty.join("tokens.db").exists(),
            "{args:?}: nothing created"
        );
    }
    // With the config, the configured servers are listed as missing, and why is said.
    let config = empty.join("mcp_config.json");
    std::fs::write(
        &config,
        r#"{"mcpServers": [{"name": "srv", "url": "http://127.0.0.1:9/mcp", "oauth": {}}]}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "auth",
            "status",
            "--json",
            "--data-dir",
            empty_arg,
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no token database in"), "{stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["status"], "missing", "{rows}");
}

#[tokio::test]
async fn auth_doctor_takes_a_data_dir_and_reports_the_stored_token() {
    let srv = start(Config::default()).await;
    let (config, data) = common::daemon_files(&srv, "cli-doctor");
    let doctor = |json: bool| {
        let mut command = tokio::process::Command::new(BIN);
        command.args([
            "auth",
            "doctor",
            "srv",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
        ]);
        command.arg(&data);
        if json {
            command.arg("--json");
        }
        command.output()
    };
    let out = doctor(false).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("store: no token database there"),
        "{stdout}"
    );
    assert!(stdout.contains("srv: every step passes"), "{stdout}");
    // After a login into that directory, the doctor sees the token (never its value).
    let (config_arg, data_arg) = (config.to_str().unwrap(), data.to_str().unwrap());
    let login = common::bin(&common::auth_args("login", config_arg, data_arg));
    let login = common::output_within(login, std::time::Duration::from_secs(30)).await;
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let out = doctor(true).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stored"]["token"], true, "{report}");
    assert_eq!(report["stored"]["has_refresh_token"], true, "{report}");
    common::assert_no_secret(&srv, &String::from_utf8_lossy(&out.stdout));
    srv.shutdown().await;
}
