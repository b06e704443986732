//! The daemon on virtual time: the supervisor's clock is a manual one (`Clock::manual`), moved
//! in step with the OAuth test server's, so a server lives through many token lifetimes in a
//! few real seconds. Every wait below is for work to happen (HTTP over loopback), bounded;
//! none waits for time to pass.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::clock::{Clock, now_ms};
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::mcp::McpClient;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use mcpproxy_oauth::upstream::actor::ServerStatus;
use oauth_test_server::{Config, OAuthTestServer};
use url::Url;

/// Both clocks, the daemon's and the server's, move by `by`.
fn advance(clock: &Clock, srv: &OAuthTestServer, by: Duration) {
    srv.advance_clock(by);
    clock.advance(by);
}

async fn status_of(handle: &SupervisorHandle) -> ServerStatus {
    handle.server_status("srv").await.unwrap()
}

/// Waits (at most 20 s of real time, for loopback HTTP and the store) until `done` holds.
async fn until(what: &str, handle: &SupervisorHandle, done: impl Fn(&ServerStatus) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_of(handle).await;
        if done(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_lives_through_eight_token_lifetimes_on_virtual_time() {
    // Hour-long tokens: eight lifetimes are eight hours.
    let srv = start(Config::default()).await;
    let clock = Clock::manual(now_ms());
    let dir = temp_dir("virtual-time");
    let (browser, launches) = following_browser();
    let server = UpstreamConfig::new("srv", Url::parse(&srv.mcp_url()).unwrap());
    let handle = SupervisorHandle::start(SupervisorConfig {
        browser,
        clock: clock.clone(),
        login_timeout: Duration::from_secs(10),
        ..SupervisorConfig::new(vec![server], dir)
    })
    .await
    .unwrap();
    handle.reconnect("srv").await.expect("the first login");
    let real = Instant::now();
    // Past the proactive refresh of an hour-long token (75% of it, less up to 5% of jitter,
    // plus the scheduler's stagger of up to a second).
    let lifetime = Duration::from_secs(2_710);
    for n in 1..=8u64 {
        let before = status_of(&handle).await.expires_at.unwrap();
        advance(&clock, &srv, lifetime);
        until("the proactive refresh on virtual time", &handle, |s| {
            s.phase.name() == "connected" && s.expires_at.is_some_and(|e| e > before)
        })
        .await;
        assert_eq!(srv.stats().token_requests_for("refresh_token"), n);
        let s = status_of(&handle).await;
        assert!(
            s.expires_at.unwrap() >= clock.now_ms() + 3_500_000,
            "a fresh hour on the virtual clock: {s:?}"
        );
        assert!(
            s.timer_at.is_some_and(|at| at > clock.now_ms()),
            "the next refresh waits on the virtual clock: {s:?}"
        );
    }
    assert!(
        real.elapsed() < Duration::from_secs(60),
        "eight hours of tokens took {:?} of real time",
        real.elapsed()
    );
    let stats = srv.stats();
    assert_eq!(
        stats.refresh_token_reuse, 0,
        "an old refresh token was presented"
    );
    assert_eq!(stats.token_errors.get("invalid_grant"), None);
    assert_eq!(launches.load(Ordering::SeqCst), 1, "no login but the first");
    // Eight hours later on both clocks, the token handed out is one the server accepts.
    let token = handle.access_token("srv").await.unwrap();
    let mut mcp = McpClient::new(Url::parse(&srv.mcp_url()).unwrap(), Duration::from_secs(5));
    mcp.initialize(Some(token.secret()))
        .await
        .expect("the MCP server accepts the token at its own time");
    handle.shutdown().await;
}
