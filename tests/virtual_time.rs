//! The daemon on virtual time: the supervisor's clock is a manual one (`Clock::manual`), moved
//! in step with the OAuth test server's, so a server lives through many token lifetimes in a
//! few real seconds. Every wait below is for work to happen (HTTP over loopback), bounded;
//! none waits for time to pass.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::clock::Clock;
use mcpproxy_oauth::mcp::McpClient;
use mcpproxy_oauth::supervisor::SupervisorHandle;
use mcpproxy_oauth::upstream::actor::ServerStatus;
use oauth_test_server::OAuthTestServer;
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
    let deadline = Deadline::after(what, Duration::from_secs(20));
    loop {
        let status = status_of(handle).await;
        if done(&status) {
            return;
        }
        deadline
            .again(format!("{status:?}"), Duration::from_millis(20))
            .await;
    }
}

#[tokio::test]
async fn a_server_lives_through_eight_token_lifetimes_on_virtual_time() {
    // Hour-long tokens: eight lifetimes are eight hours.
    let (srv, clock, _dir, handle, launches) = logged_in_on_virtual_time("virtual-time").await;
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
    assert_no_token_lost(&srv, &launches, 1, "no login but the first");
    // Eight hours later on both clocks, the token handed out is one the server accepts.
    let token = handle.access_token("srv").await.unwrap();
    let mut mcp = McpClient::new(Url::parse(&srv.mcp_url()).unwrap(), Duration::from_secs(5));
    mcp.initialize(Some(token.secret()))
        .await
        .expect("the MCP server accepts the token at its own time");
    handle.shutdown().await;
}
