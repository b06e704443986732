//! Hostile input against the real OAuth test server and the real binary: absurd lifetimes and
//! `Retry-After` values, and (below) the messages for bad input.

mod common;

use std::time::Duration;

use common::*;
use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::oauth::ErrorClass;
use mcpproxy_oauth::oauth::http::{MAX_RETRY_AFTER, OAuthHttp};
use mcpproxy_oauth::oauth::token::MAX_LIFETIME;
use mcpproxy_oauth::supervisor::{SupervisorConfig, database_path};
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};

/// `expires_in` values that once panicked or looped: i64::MAX, u64::MAX, 1e18 and 1e16 seconds.
const ABSURD: [u64; 4] = [
    i64::MAX as u64,
    u64::MAX,
    1_000_000_000_000_000_000,
    10_000_000_000_000_000,
];

async fn absurd_server(expires_in: u64) -> OAuthTestServer {
    start(Config::with(|c| c.announced_expires_in = Some(expires_in))).await
}

#[tokio::test]
async fn absurd_lifetimes_are_clamped_to_a_year_by_the_engine() {
    for expires_in in ABSURD {
        let srv = absurd_server(expires_in).await;
        let session = login(&srv, OAuthHttp::default()).await;
        let lifetime = session.token.lifetime().expect("a lifetime");
        assert_eq!(lifetime, MAX_LIFETIME, "expires_in {expires_in}");
        let refreshed = session
            .refresh_with_login_token()
            .await
            .expect("the refresh works");
        assert_eq!(
            refreshed.lifetime(),
            Some(MAX_LIFETIME),
            "expires_in {expires_in}"
        );
    }
}

#[tokio::test]
async fn connect_does_not_panic_on_absurd_lifetimes_and_asks_for_one_token() {
    for expires_in in ABSURD {
        let srv = absurd_server(expires_in).await;
        let url = srv.mcp_url();
        let out = run(&connect_args(&url), &[]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "expires_in {expires_in}: {:?} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let stats = srv.stats();
        assert_eq!(
            (
                stats.token_requests_for("authorization_code"),
                stats.token_requests_for("refresh_token")
            ),
            (1, 0),
            "expires_in {expires_in}: one token request, no loop"
        );
    }
}

#[tokio::test]
async fn the_supervisor_stores_a_sane_expiry_for_absurd_lifetimes_and_does_not_loop() {
    for expires_in in ABSURD {
        let srv = absurd_server(expires_in).await;
        let dir = temp_dir("hostile-supervisor");
        let (browser, _) = following_browser();
        let config = SupervisorConfig {
            browser,
            login_timeout: Duration::from_secs(20),
            ..SupervisorConfig::new(vec![upstream("srv", &srv)], dir.clone())
        };
        let handle = start_supervisor(config).await;
        let before = now_ms();
        let grant = tokio::time::timeout(Duration::from_secs(30), handle.reconnect("srv"))
            .await
            .expect("the login ends within 30 s")
            .expect("logged in");
        let year_ms = MAX_LIFETIME.as_millis() as i64;
        let expires_at = grant.expires_at.expect("an expiry");
        assert!(
            expires_at >= before + year_ms && expires_at <= now_ms() + year_ms,
            "expires_in {expires_in}: expiry {expires_at} is a year from now"
        );
        // Asked again and again, the token is served as it is: no refresh, no login.
        for _ in 0..3 {
            let token = handle.access_token("srv").await.expect("served");
            assert_eq!(token.secret(), grant.access_token.secret());
        }
        let status = handle.status().await.unwrap();
        assert_eq!(status[0].phase.name(), "connected", "{:?}", status[0]);
        handle.shutdown().await;
        let stored: i64 = rusqlite::Connection::open(database_path(&dir))
            .unwrap()
            .query_row("SELECT expires_at FROM oauth_tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, expires_at, "the stored expiry is the same sane one");
        let stats = srv.stats();
        assert_eq!(
            (
                stats.token_requests_for("authorization_code"),
                stats.token_requests_for("refresh_token")
            ),
            (1, 0),
            "expires_in {expires_in}: no loop"
        );
    }
}

#[tokio::test]
async fn an_absurd_retry_after_is_clamped_to_an_hour() {
    let srv = start(Config::default()).await;
    let session = login(&srv, OAuthHttp::default()).await;
    srv.inject(Fault {
        count: Some(1),
        delay_ms: Some(u64::MAX),
        ..Fault::new(FaultTarget::Refresh, FaultKind::RateLimited)
    })
    .unwrap();
    let e = session
        .refresh_with_login_token()
        .await
        .expect_err("rate limited");
    assert_eq!(
        e.class(),
        ErrorClass::Transient {
            retry_after: Some(MAX_RETRY_AFTER)
        }
    );
}

/// Runs the binary to completion within `within`.
async fn run_bin(args: &[&str], within: Duration) -> std::process::Output {
    let mut command = bin(args);
    command.kill_on_drop(true);
    output_within(command, within).await
}

#[tokio::test]
async fn config_errors_are_bounded_and_say_what_is_wrong() {
    let dir = temp_dir("hostile-config");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let out = run_bin(
        &["serve", "--config", "/dev/zero", "--data-dir", data],
        Duration::from_secs(10),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/dev/zero") && stderr.contains("larger than 4 MiB"),
        "{stderr}"
    );
    let cases = [
        (
            r#"{"mcpServers": {"gh": {"url": "https://gh.example/mcp", "oauth": {}}}}"#,
            r#"valid JSON of the wrong shape: "mcpServers" is an object"#,
        ),
        (
            r#"{"mcpServers": [{"name": "gh", "url": "https://gh.example/mcp", "oauth": {"redirect_port": "high"}}]}"#,
            "server gh: field oauth.redirect_port:",
        ),
        (
            r#"{"mcpServers": [{"name": "gh", "url": "https://bob:pw-hunter2@gh.example/mcp", "oauth": {}}]}"#,
            "server gh: field url: it holds a user name or password",
        ),
    ];
    for (text, says) in cases {
        let config = dir.join("mcp_config.json");
        std::fs::write(&config, text).unwrap();
        let out = run_bin(
            &[
                "auth",
                "login",
                "--all",
                "--config",
                config.to_str().unwrap(),
                "--data-dir",
                data,
            ],
            Duration::from_secs(10),
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

#[tokio::test]
async fn a_failing_browser_command_prints_the_url_and_the_login_completes_by_hand() {
    login_by_hand_after_a_failed_launch(
        &["--browser-command", "/nonexistent/browser"],
        None,
        "The browser could not be opened (it exited with exit status: 127)",
    )
    .await;
}

#[tokio::test]
async fn a_browser_that_cannot_start_prints_the_url_and_the_login_completes_by_hand() {
    // No --browser-command and no BROWSER: the platform opener, which this PATH cannot find.
    login_by_hand_after_a_failed_launch(
        &[],
        Some("/nonexistent-bin"),
        "The browser could not be opened (it cannot start:",
    )
    .await;
}

/// `auth login` with a browser launch that fails: the URL must be printed, and fetching it
/// (playing the browser the user opens by hand) must complete the login.
async fn login_by_hand_after_a_failed_launch(
    browser_args: &[&str],
    path_env: Option<&str>,
    reason: &str,
) {
    let srv = start(Config::default()).await;
    let dir = temp_dir("hostile-browser");
    let config = write_config(&dir, &srv, &["srv"]);
    let mut command = tokio::process::Command::new(BIN);
    command
        .args([
            "auth",
            "login",
            "srv",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--login-timeout",
            "30s",
            "--log-level",
            "info",
        ])
        .args(browser_args)
        .env_remove("BROWSER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = path_env {
        command.env("PATH", path);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = stderr_lines(&mut child);
    let prefix = format!("  {}/authorize?", srv.issuer());
    let mut seen = String::new();
    let within = Duration::from_secs(20);
    let url = read_until(&mut lines, &mut seen, within, "the URL", |line| {
        let url = line
            .strip_prefix("  ")
            .filter(|_| line.starts_with(&prefix));
        url.map(String::from)
    })
    .await;
    // Play the user's browser: the test server approves at once and redirects to the callback.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    browser
        .get(&url)
        .send()
        .await
        .expect("the callback answers");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the login ends within 20 s of the callback")
        .unwrap();
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    // Log lines leave through a queue, so the warning may follow the printed URL: read
    // standard error to its end (the process has exited) before looking for it.
    let stderr = seen + &rest_of(lines).await.unwrap();
    assert!(stderr.contains(reason), "{stderr}");
    assert!(
        stderr.contains("the browser command failed"),
        "logged too: {stderr}"
    );
    assert!(status.success(), "{stdout} {stderr}");
    assert!(stdout.starts_with("srv: logged in"), "{stdout}");
    assert_eq!(srv.stats().token_requests_for("authorization_code"), 1);
    // The printed URL carries `state` by design (the user opens it); nothing else may.
    let besides_the_url: Vec<&str> = stderr.lines().filter(|l| !l.starts_with(&prefix)).collect();
    assert_no_secret(&srv, &besides_the_url.join("\n"));
}
