//! Credentials changed by another process reach a running daemon: real `serve` and `auth`
//! processes on one data directory, against the OAuth test server over loopback.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

struct Files {
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

fn files(srv: &oauth_test_server::OAuthTestServer, name: &str) -> Files {
    let (config, data) = daemon_files(srv, name);
    let log = data.with_file_name("serve.log");
    Files { config, data, log }
}

async fn auth(files: &Files, command: &str) -> std::process::Output {
    let args = auth_args(
        command,
        files.config.to_str().unwrap(),
        files.data.to_str().unwrap(),
    );
    let out = output_within(bin(&args), Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "auth {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The daemon's phase changes so far, from its JSON log.
fn phases(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "state changed")
        .filter_map(|l| l["to"].as_str().map(String::from))
        .collect()
}

/// Waits (bounded) until the daemon's log shows `count` changes to `phase`.
async fn wait_for_phase(log: &Path, phase: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen = phases(log);
        if seen.iter().filter(|p| *p == phase).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not reach {phase} (x{count}) within {within:?}; its phases: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stored_rows(data: &Path) -> i64 {
    rusqlite::Connection::open(data.join("tokens.db"))
        .and_then(|c| c.query_row("SELECT count(*) FROM oauth_tokens", [], |r| r.get(0)))
        .unwrap_or(-1)
}

#[tokio::test]
async fn auth_login_and_logout_in_another_terminal_reach_a_non_interactive_daemon() {
    let srv = start(token_ttl(2)).await;
    let files = files(&srv, "daemon");
    let mut daemon = bin(&[
        "serve",
        "--non-interactive",
        "--config",
        files.config.to_str().unwrap(),
        "--data-dir",
        files.data.to_str().unwrap(),
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--log-file",
        files.log.to_str().unwrap(),
    ])
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    wait_for_phase(&files.log, "needs_login", 1, Duration::from_secs(15)).await;
    assert_eq!(
        srv.stats().authorize_requests,
        0,
        "a non-interactive daemon opens no browser"
    );

    let login = auth(&files, "login").await;
    assert!(String::from_utf8_lossy(&login.stdout).starts_with("srv: logged in"));
    wait_for_phase(&files.log, "connected", 1, Duration::from_secs(5)).await;
    // The daemon now keeps the token fresh on its own (2 s tokens).
    let refreshes = srv.stats().token_requests_for("refresh_token");
    wait_until(
        "the daemon refreshing the token it adopted",
        Duration::from_secs(10),
        || srv.stats().token_requests_for("refresh_token") != refreshes,
    )
    .await;

    // `auth login` with a valid stored token still runs a real browser login.
    auth(&files, "login").await;
    assert_eq!(srv.stats().authorize_requests, 2, "a real login every time");
    assert_eq!(
        srv.stats().registrations,
        1,
        "it reuses the registered client"
    );

    auth(&files, "logout").await;
    wait_for_phase(&files.log, "logged_out", 1, Duration::from_secs(5)).await;
    let refreshes = srv.stats().token_requests_for("refresh_token");
    // For longer than a token lifetime: nothing refreshed, the row stays deleted.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            stored_rows(&files.data),
            0,
            "the daemon wrote the token back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(srv.stats().token_requests_for("refresh_token"), refreshes);

    stop(&mut daemon, "-INT").await;
    let log = std::fs::read_to_string(&files.log).unwrap();
    assert_no_secret(&srv, &log);
}
