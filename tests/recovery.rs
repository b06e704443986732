//! The recovery model end to end: the supervisor against the OAuth test server over loopback,
//! with real SQLite files. Failure paths that must never cost a login or a refresh token, and
//! the ones that must cost exactly one login.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use mcpproxy_oauth::upstream::state::Policy;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use url::Url;

/// The test server as "srv", a browser that follows redirects (its launches counted), logins
/// within 10 s, the store looked at every 200 ms.
async fn supervisor(
    srv: &OAuthTestServer,
    dir: &Path,
    policy: Policy,
) -> (SupervisorHandle, Arc<AtomicU32>) {
    let (browser, launches) = following_browser();
    let config = SupervisorConfig {
        policy,
        login_timeout: Duration::from_secs(10),
        store_poll_interval: Duration::from_millis(200),
        ..supervisor_config(vec![upstream("srv", srv)], dir, browser)
    };
    (start_supervisor(config).await, launches)
}

/// A test server with `config`, and a supervisor of it on `policy` (as `supervisor`), its data
/// in a fresh folder named after `name`, logged in once: (server, folder, supervisor, launches).
async fn logged_in(
    config: Config,
    name: &str,
    policy: Policy,
) -> (OAuthTestServer, PathBuf, SupervisorHandle, Arc<AtomicU32>) {
    let srv = start(config).await;
    let dir = data_dir(name);
    let (handle, launches) = supervisor(&srv, &dir, policy).await;
    handle.reconnect("srv").await.expect("the first login");
    (srv, dir, handle, launches)
}

/// Waits (bounded by `within`) until "srv" is connected after `logins` browser logins in all.
async fn wait_for_logins(
    handle: &SupervisorHandle,
    launches: &AtomicU32,
    logins: u32,
    within: Duration,
) {
    let what = format!("connected after {logins} logins");
    wait_for_status(handle, "srv", &what, within, |s| {
        s.phase.name() == "connected" && launches.load(Ordering::SeqCst) == logins
    })
    .await;
}

/// The test server registered `clients` clients in all (`what` says why that many).
fn assert_registrations(srv: &OAuthTestServer, clients: u64, what: &str) {
    assert_eq!(srv.stats().registrations, clients, "{what}");
}

/// A test server with `config`, and a supervisor of it on the default policy, its data in a
/// fresh folder named after `name`, after one explicit login: (server, folder, supervisor).
async fn after_a_login(config: Config, name: &str) -> (OAuthTestServer, PathBuf, SupervisorHandle) {
    let srv = start(config).await;
    let dir = data_dir(name);
    let (handle, _) = supervisor(&srv, &dir, Policy::default()).await;
    handle.login("srv").await.expect("the first login");
    (srv, dir, handle)
}

/// Arms `kind` for the next `times` refreshes.
fn fail_refreshes(srv: &OAuthTestServer, kind: FaultKind, times: u32) {
    srv.inject(Fault::new(FaultTarget::Refresh, kind).times(times))
        .expect("a valid refresh fault");
}

/// Waits (bounded by `within`) until "srv" is connected again after `faults` refresh faults.
async fn wait_for_recovery(
    handle: &SupervisorHandle,
    srv: &OAuthTestServer,
    faults: u64,
    within: Duration,
) {
    wait_for_status(handle, "srv", "recovery", within, |s| {
        s.phase.name() == "connected" && srv.stats().faults_fired.get("refresh") == Some(&faults)
    })
    .await;
}

#[tokio::test]
async fn invalid_grant_after_a_successful_login_opens_the_browser_exactly_once_more() {
    let (srv, _, handle, launches) =
        logged_in(token_ttl(2), "invalid-grant", Policy::default()).await;
    assert_logins(&launches, 1, "browser logins");
    // The next refresh hears that the refresh token is dead. The login that just succeeded
    // must not hold back the browser (the window counts from failed logins only).
    fail_refreshes(&srv, FaultKind::InvalidGrant, 1);
    wait_for_logins(&handle, &launches, 2, Duration::from_secs(15)).await;
    let stats = srv.stats();
    assert_eq!(stats.authorize_requests, 2, "exactly one new browser login");
    assert_eq!(stats.token_errors.get("invalid_grant"), Some(&1));
    // And the new token keeps being refreshed silently.
    let refreshed = stats.token_requests_for("refresh_token");
    wait_for_status(
        &handle,
        "srv",
        "a silent refresh",
        Duration::from_secs(10),
        |_| srv.stats().token_requests_for("refresh_token") > refreshed,
    )
    .await;
    assert_logins(&launches, 2, "browser logins");
    handle.shutdown().await;
}

#[tokio::test]
async fn an_outage_of_the_token_endpoint_ends_connected_with_the_same_grant_and_no_login() {
    let (srv, _, handle, launches) = logged_in(token_ttl(2), "outage", fast_policy()).await;
    let mut changes = handle.subscribe();
    // 3 fast attempts and then the slow ones: the access token expires during the outage.
    fail_refreshes(&srv, FaultKind::TemporarilyUnavailable, 14);
    let retrying = wait_for_phase(&handle, "srv", "retrying", Duration::from_secs(10)).await;
    assert!(retrying.has_refresh_token, "the refresh token is kept");
    assert!(retrying.next_attempt_at.is_some());
    let expired = wait_for_status(
        &handle,
        "srv",
        "the access token to expire",
        Duration::from_secs(10),
        |s| {
            s.expires_at
                .is_some_and(|e| e < mcpproxy_oauth::clock::now_ms())
        },
    )
    .await;
    let failure = handle
        .access_token("srv")
        .await
        .expect_err("no usable token meanwhile");
    assert!(
        matches!(failure.code(), "retrying" | "backing_off"),
        "callers hear the typed reason: {failure}"
    );
    assert!(expired.has_refresh_token);
    wait_for_recovery(&handle, &srv, 14, Duration::from_secs(20)).await;
    let stats = srv.stats();
    assert_eq!(stats.authorize_requests, 1, "no login");
    assert_logins(&launches, 1, "browser logins");
    assert_eq!(stats.refresh_token_reuse, 0);
    assert_eq!(
        stats.token_errors.get("invalid_grant"),
        None,
        "the same grant throughout"
    );
    let token = handle.access_token("srv").await.expect("a token again");
    assert!(
        srv.secrets()
            .access_tokens
            .contains(&token.secret().to_string())
    );
    let mut seen = Vec::new();
    while let Ok(change) = changes.try_recv() {
        seen.push(change.phase.name());
    }
    assert!(
        seen.contains(&"backing_off") && seen.contains(&"retrying"),
        "the ladder was climbed: {seen:?}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn invalid_client_on_a_registered_client_registers_again_once() {
    let (srv, _, handle, launches) = logged_in(token_ttl(3), "invalid-client", fast_policy()).await;
    assert_eq!(srv.stats().registrations, 1);
    fail_refreshes(&srv, FaultKind::InvalidClient, 1);
    // The refresh is rejected for the client: a fresh client is registered and the refresh
    // token tried with it. The test server binds refresh tokens to their client, so that
    // refresh answers invalid_grant, and one login follows, with the new client.
    wait_for_logins(&handle, &launches, 2, Duration::from_secs(15)).await;
    let stats = srv.stats();
    assert_eq!(stats.registrations, 2, "registered again exactly once");
    assert_eq!(stats.authorize_requests, 2);
    assert_eq!(stats.token_errors.get("invalid_client"), Some(&1));
    handle.shutdown().await;
}

#[tokio::test]
async fn a_configured_client_that_is_rejected_keeps_its_refresh_token() {
    let srv = start(Config {
        preregistered_client: Some(("configured-client".into(), None)),
        ..token_ttl(2)
    })
    .await;
    let dir = data_dir("client-rejected");
    let (browser, launches) = following_browser();
    let mut server = UpstreamConfig::new("srv", Url::parse(&srv.mcp_url()).unwrap());
    server.client.client_id = Some("configured-client".into());
    let handle = SupervisorHandle::start(SupervisorConfig {
        browser,
        policy: fast_policy(),
        login_timeout: Duration::from_secs(10),
        http_timeout: Duration::from_secs(2),
        ..SupervisorConfig::new(vec![server], dir.clone())
    })
    .await
    .unwrap();
    handle.reconnect("srv").await.expect("the first login");
    fail_refreshes(&srv, FaultKind::InvalidClient, 2);
    let rejected = wait_for_phase(&handle, "srv", "client_rejected", Duration::from_secs(10)).await;
    assert!(rejected.has_refresh_token);
    assert!(stored_refresh_token(&dir).is_some(), "kept in the store");
    assert!(
        rejected.detail.unwrap().contains("oauth.client_id"),
        "says what to fix"
    );
    wait_for_recovery(&handle, &srv, 2, Duration::from_secs(15)).await;
    assert_logins(&launches, 1, "no login");
    assert_registrations(&srv, 0, "a configured client is never registered");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_firewall_html_403_on_the_token_endpoint_keeps_the_refresh_token() {
    let (srv, dir, handle, launches) = logged_in(token_ttl(2), "html-403", fast_policy()).await;
    let before = stored_refresh_token(&dir).expect("a refresh token");
    fail_refreshes(&srv, FaultKind::HtmlForbidden, 3);
    let retrying = wait_for_phase(&handle, "srv", "retrying", Duration::from_secs(10)).await;
    assert!(retrying.has_refresh_token);
    assert_eq!(
        stored_refresh_token(&dir),
        Some(before),
        "the stored refresh token is kept"
    );
    wait_for_recovery(&handle, &srv, 3, Duration::from_secs(15)).await;
    assert_logins(&launches, 1, "no login");
    assert_eq!(srv.stats().refresh_token_reuse, 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_server_without_refresh_tokens_fires_one_timer_per_token_lifetime() {
    let srv = start(Config {
        issue_refresh_tokens: false,
        ..token_ttl(1)
    })
    .await;
    let dir = data_dir("no-refresh-token");
    let (handle, launches) = supervisor(&srv, &dir, Policy::default()).await;
    handle.reconnect("srv").await.expect("the first login");
    // Each token is used until it stops being usable, then a login gets the next one: one
    // timer event per lifetime, never a spin until the safety margin.
    let s = wait_for_status(
        &handle,
        "srv",
        "three more lifetimes",
        Duration::from_secs(20),
        |_| launches.load(Ordering::SeqCst) >= 4,
    )
    .await;
    let logins = launches.load(Ordering::SeqCst) as u64;
    assert!(
        s.timers_fired <= logins,
        "{} timer events for {logins} token lifetimes",
        s.timers_fired
    );
    assert!(
        s.timers_fired >= 3,
        "the timer drove the logins: {}",
        s.timers_fired
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_non_interactive_server_needing_a_login_connects_when_another_process_stores_one() {
    let srv = start(Config::default()).await;
    let dir = data_dir("store-watch");
    let (daemon, _) = supervisor(
        &srv,
        &dir,
        Policy {
            interactive: false,
            ..Policy::default()
        },
    )
    .await;
    let failure = daemon.reconnect("srv").await.expect_err("no token yet");
    assert_eq!(failure.code(), "needs_login");
    // Another process (a second supervisor on the same files, as `auth login` is) logs in.
    let (other, _) = supervisor(&srv, &dir, Policy::default()).await;
    other.login("srv").await.expect("the other process logs in");
    other.shutdown().await;
    let connected = wait_for_phase(&daemon, "srv", "connected", Duration::from_secs(5)).await;
    assert!(connected.has_refresh_token);
    let token = daemon
        .access_token("srv")
        .await
        .expect("the daemon uses the new token");
    assert!(
        srv.secrets()
            .access_tokens
            .contains(&token.secret().to_string())
    );
    assert_eq!(srv.stats().authorize_requests, 1);
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_logout_by_another_process_stops_the_daemon_and_the_row_stays_deleted() {
    let (srv, dir, daemon, _) =
        logged_in(token_ttl(2), "logout-elsewhere", Policy::default()).await;
    let (other, _) = supervisor(&srv, &dir, Policy::default()).await;
    other
        .logout("srv")
        .await
        .expect("the other process logs out");
    other.shutdown().await;
    wait_for_phase(&daemon, "srv", "logged_out", Duration::from_secs(5)).await;
    let failure = daemon
        .access_token("srv")
        .await
        .expect_err("no token after logout");
    assert_eq!(failure.code(), "logged_out");
    // Over more than a token lifetime (the old token would have been refreshed at 1.5 s),
    // nothing is refreshed and nothing is written back.
    let refreshes = srv.stats().token_requests_for("refresh_token");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(stored_refresh_token(&dir), None, "the row stays deleted");
        let _ = tokio::time::timeout(Duration::from_millis(200), daemon.subscribe().recv()).await;
    }
    assert_eq!(srv.stats().token_requests_for("refresh_token"), refreshes);
    assert_eq!(status_of(&daemon, "srv").await.phase.name(), "logged_out");
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_logout_during_a_refresh_discards_the_refresh_and_never_writes_it_back() {
    let (srv, dir, handle, _) = logged_in(token_ttl(2), "logout-fence", fast_policy()).await;
    // The next refresh answers only after 1 s: log out while it is in flight.
    slow_next_refresh(&srv, 1_000);
    wait_for_phase(&handle, "srv", "refreshing", Duration::from_secs(5)).await;
    handle.logout("srv").await.expect("logout");
    assert_eq!(status_of(&handle, "srv").await.phase.name(), "logged_out");
    // Bounded wait for the slow answer to have arrived at the server side and beyond.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            stored_refresh_token(&dir),
            None,
            "the refresh is never written back"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), handle.subscribe().recv()).await;
    }
    let s = status_of(&handle, "srv").await;
    assert_eq!(s.phase.name(), "logged_out");
    assert!(handle.cached_access_token("srv").unwrap().is_none());
    // A login after the logout runs exactly one flow and works.
    handle.login("srv").await.expect("a new login");
    assert_eq!(status_of(&handle, "srv").await.phase.name(), "connected");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_failed_login_with_a_forgotten_client_registers_again_before_the_next() {
    // The authorization server restarts and forgets its clients (as the demo's does).
    let first = start(Config::default()).await;
    let port = Url::parse(first.url()).unwrap().port().unwrap();
    let dir = data_dir("forgotten-client");
    {
        let (handle, _) = supervisor(&first, &dir, Policy::default()).await;
        handle.login("srv").await.expect("the first login");
        handle.shutdown().await;
    }
    first.shutdown().await;
    let srv = start(Config {
        port,
        ..Config::default()
    })
    .await;
    let (browser, _) = following_browser();
    let server = UpstreamConfig::new("srv", Url::parse(&srv.mcp_url()).unwrap());
    let handle = SupervisorHandle::start(SupervisorConfig {
        browser,
        login_timeout: Duration::from_secs(2),
        http_timeout: Duration::from_secs(2),
        ..SupervisorConfig::new(vec![server], dir.clone())
    })
    .await
    .unwrap();
    // The stored client is unknown now: the browser sees an error page, no callback comes.
    let failure = handle
        .login("srv")
        .await
        .expect_err("the stale client fails");
    assert_eq!(failure.code(), "login_failed");
    assert_eq!(srv.stats().registrations, 0);
    handle
        .login("srv")
        .await
        .expect("the next login registers again");
    assert_eq!(srv.stats().registrations, 1);
    assert_eq!(status_of(&handle, "srv").await.phase.name(), "connected");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_login_that_fails_before_choosing_a_client_keeps_the_registered_one() {
    let (srv, _, handle) = after_a_login(Config::default(), "discovery-failed-login").await;
    assert_eq!(srv.stats().registrations, 1);
    // Discovery fails: the login ends before any client is presented.
    srv.inject(Fault::new(FaultTarget::Metadata, FaultKind::ServerError))
        .unwrap();
    let failure = handle
        .login("srv")
        .await
        .expect_err("no metadata, no login");
    assert_eq!(failure.code(), "login_failed", "{failure}");
    srv.clear_faults();
    handle.login("srv").await.expect("the next login succeeds");
    assert_registrations(
        &srv,
        1,
        "the registered client was not thrown away: the failed login never used it",
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_waiting_login_shows_its_authorization_url_and_completes_when_it_is_opened_by_hand() {
    let srv = start(Config::default()).await;
    let dir = data_dir("auth-url");
    // A browser that never opens anything.
    let browser = mcpproxy_oauth::oauth::browser::BrowserLauncher::handler(|_| {});
    let config = supervisor_config(upstreams(&srv, &["srv"]), &dir, browser);
    let handle = start_supervisor(config).await;
    let login = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.login("srv").await })
    };
    let waiting = wait_for_status(
        &handle,
        "srv",
        "the authorization URL in status",
        Duration::from_secs(10),
        |s| s.auth_url.is_some(),
    )
    .await;
    assert_eq!(waiting.phase.name(), "authorizing");
    let url = waiting.auth_url.unwrap();
    assert!(
        url.starts_with(&srv.url().to_string()) && url.contains("code_challenge_method=S256"),
        "{url}"
    );
    // The person opens it by hand; the login completes.
    let person = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .unwrap();
    let _ = person.get(&url).send().await;
    login.await.unwrap().expect("the login completes");
    let s = status_of(&handle, "srv").await;
    assert_eq!(s.phase.name(), "connected");
    assert_eq!(s.auth_url, None, "shown only while a login waits");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_login_whose_registered_port_is_busy_uses_another_port_and_registers_again() {
    let (srv, dir, handle) = after_a_login(Config::default(), "busy-port").await;
    assert_eq!(srv.stats().registrations, 1);
    // A second login reuses the registered client...
    handle.login("srv").await.expect("the second login");
    assert_registrations(&srv, 1, "the registered client is reused");
    // ...unless its redirect port is taken by someone else.
    let redirect_uri: String = rusqlite::Connection::open(database_path(&dir))
        .unwrap()
        .query_row("SELECT redirect_uri FROM oauth_clients", [], |r| r.get(0))
        .unwrap();
    let port = Url::parse(&redirect_uri).unwrap().port().unwrap();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    handle.login("srv").await.expect("a login on another port");
    assert_registrations(&srv, 2, "registered again for the new redirect URI");
    assert_eq!(srv.stats().authorize_requests, 3);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_daemon_login_asks_for_offline_access_where_the_authorization_server_lists_it() {
    let (_srv, _, handle) =
        after_a_login(Config::with(|c| c.offline_access = true), "offline-access").await;
    let s = status_of(&handle, "srv").await;
    let scope = s.scope.expect("a scope");
    assert!(
        scope.split(' ').any(|s| s == "offline_access"),
        "offline_access requested (SEP-2207): {scope}"
    );
    assert!(s.has_refresh_token);
    handle.shutdown().await;
}
