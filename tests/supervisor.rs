//! The supervisor against the OAuth test server over loopback, with real SQLite files: the
//! spec's scenarios 1, 2, 5 and 6, both tokens expired, two supervisors on one database, a
//! corrupt database, and no secret in any log line.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::mcp::McpError;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use mcpproxy_oauth::upstream::messages::Grant;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use url::Url;

/// Every supervisor of this binary logs into the capture the secret scan reads.
async fn start_supervisor(config: SupervisorConfig) -> SupervisorHandle {
    captured_logs();
    common::start_supervisor(config).await
}

/// A supervisor of the test server as "srv" in `dir`, logging in through a browser that
/// follows redirects (its launches counted).
async fn supervise(srv: &OAuthTestServer, dir: &Path) -> (SupervisorHandle, Arc<AtomicU32>) {
    let (browser, launches) = following_browser();
    let config = supervisor_config(vec![upstream("srv", srv)], dir, browser);
    (start_supervisor(config).await, launches)
}

/// The default test server and a data directory for the test `name`, not yet created.
async fn server_and_dir(name: &str) -> (OAuthTestServer, PathBuf) {
    (start(Config::default()).await, data_dir(name))
}

/// The access token "srv" reconnects with.
async fn connected_token(handle: &SupervisorHandle) -> String {
    let grant = handle.reconnect("srv").await.expect("connected");
    grant.access_token.secret().clone()
}

/// Makes the stored access token of every server expired (the supervisor must be stopped).
fn expire_stored_tokens(dir: &Path) {
    let conn = rusqlite::Connection::open(database_path(dir)).unwrap();
    conn.execute("UPDATE oauth_tokens SET expires_at = obtained_at + 1", [])
        .unwrap();
}

async fn mcp_ping(srv: &OAuthTestServer, token: &str) -> Result<(), McpError> {
    let mut client = mcp_client(srv, Duration::from_secs(5));
    client.ping(Some(token)).await.map(drop)
}

fn assert_logs_free_of_secrets(srv: &OAuthTestServer) {
    assert_no_secret(srv, &captured_logs());
}

/// Logs in once through a first supervisor, stops it, and expires the stored access token.
async fn persisted_expired_token(srv: &OAuthTestServer, dir: &Path) {
    let (first, _) = supervise(srv, dir).await;
    first.reconnect("srv").await.expect("the first login");
    first.shutdown().await;
    expire_stored_tokens(dir);
}

/// Reconnects "srv" (`what` says how it connects) and proves the token works at the server.
async fn reconnected(handle: &SupervisorHandle, srv: &OAuthTestServer, what: &str) -> Grant {
    let grant = handle.reconnect("srv").await.expect(what);
    mcp_ping(srv, grant.access_token.secret()).await.unwrap();
    grant
}

/// The scene of every restart scenario: a first supervisor logged in and stopped, its stored
/// access token expired, `while_down` applied to the server (e.g. arming a fault), and a second
/// supervisor started on the same database.
struct Restarted {
    srv: OAuthTestServer,
    handle: SupervisorHandle,
    launches: Arc<AtomicU32>,
}

impl Restarted {
    /// Stops the second supervisor and scans the run's logs for the server's secrets.
    async fn shutdown(self) {
        self.handle.shutdown().await;
        assert_logs_free_of_secrets(&self.srv);
    }
}

async fn restarted_with_expired_token(
    name: &str,
    while_down: impl FnOnce(&OAuthTestServer),
) -> Restarted {
    let (srv, dir) = server_and_dir(name).await;
    persisted_expired_token(&srv, &dir).await;
    while_down(&srv);
    let (handle, launches) = supervise(&srv, &dir).await;
    Restarted {
        srv,
        handle,
        launches,
    }
}

/// [`restarted_with_expired_token`], the next refresh meeting `fault` once.
async fn restarted_with_refresh_fault(name: &str, fault: FaultKind) -> Restarted {
    restarted_with_expired_token(name, |srv| {
        srv.inject(Fault::new(FaultTarget::Refresh, fault).times(1))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn scenario_1_stays_connected_through_ten_refreshes_with_one_login() {
    let srv = start(token_ttl(2)).await;
    let dir = data_dir("s1");
    let (handle, launches) = supervise(&srv, &dir).await;
    handle.reconnect("srv").await.expect("connected");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut calls = 0;
    while srv.stats().token_requests_for("refresh_token") < 10 {
        assert!(
            Instant::now() < deadline,
            "fewer than 10 refreshes in 40 s: {:?}",
            srv.stats().token_requests
        );
        let token = handle.access_token("srv").await.expect("a token");
        mcp_ping(&srv, token.secret())
            .await
            .expect("no MCP call fails between refreshes");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing of the calls, not synchronisation
    }
    let stats = srv.stats();
    assert_eq!(
        (
            stats.authorize_requests,
            stats.token_requests_for("authorization_code")
        ),
        (1, 1),
        "exactly one authorization"
    );
    assert_logins(&launches, 1, "browser logins");
    assert_eq!(stats.mcp_401, 0, "{calls} calls, none refused");
    assert_eq!(stats.refresh_token_reuse, 0);
    handle.shutdown().await;
    assert_logs_free_of_secrets(&srv);
}

#[tokio::test]
async fn scenario_2_a_restart_refreshes_the_persisted_token_without_a_login() {
    let restarted = restarted_with_expired_token("s2", |_| {}).await;
    let grant = reconnected(&restarted.handle, &restarted.srv, "connected after restart").await;
    let stats = restarted.srv.stats();
    assert_eq!(stats.token_requests_for("refresh_token"), 1);
    assert_eq!(
        stats.authorize_requests, 1,
        "only the first process's login"
    );
    assert_logins(&restarted.launches, 0, "browser logins");
    assert!(
        grant.flow_id.is_some(),
        "the caller learns the flow's correlation ID"
    );
    restarted.shutdown().await;
}

#[tokio::test]
async fn both_tokens_expired_open_the_browser_once_with_a_clear_message() {
    let (srv, dir) = server_and_dir("both").await;
    persisted_expired_token(&srv, &dir).await;
    reqwest::Client::new()
        .post(format!("{}/control/revoke-all", srv.url()))
        .send()
        .await
        .unwrap();
    let (handle, launches) = supervise(&srv, &dir).await;
    reconnected(&handle, &srv, "connected after a new login").await;
    assert_logins(&launches, 1, "exactly one browser launch");
    assert_eq!(srv.stats().authorize_requests, 2);
    assert!(captured_logs().contains("re-authentication required for srv: the refresh token was rejected (token endpoint answered invalid_grant"), "the clear message is logged");
    handle.shutdown().await;
    assert_logs_free_of_secrets(&srv);
}

#[tokio::test]
async fn scenario_5_a_hundred_concurrent_callers_cause_one_refresh() {
    let restarted = restarted_with_expired_token("s5", |_| {}).await;
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..100 {
        let handle = restarted.handle.clone();
        callers.spawn(async move {
            if i % 2 == 0 {
                handle
                    .reconnect("srv")
                    .await
                    .map(|g| g.access_token.secret().clone())
            } else {
                handle.access_token("srv").await.map(|t| t.secret().clone())
            }
        });
    }
    let tokens: Vec<String> = callers
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("every caller gets a token"))
        .collect();
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "all 100 callers get the same new token"
    );
    assert_eq!(
        restarted.srv.stats().token_requests_for("refresh_token"),
        1,
        "one refresh for 100 callers"
    );
    mcp_ping(&restarted.srv, &tokens[0]).await.unwrap();
    restarted.shutdown().await;
}

#[tokio::test]
async fn scenario_5_a_hundred_401_reports_for_one_token_cause_one_refresh() {
    let srv = start(token_ttl(600)).await;
    let dir = data_dir("s5-401");
    let (handle, _) = supervise(&srv, &dir).await;
    let old = connected_token(&handle).await;
    srv.advance_clock(Duration::from_secs(601)); // the server now refuses it; the supervisor cannot know
    let refused = mcp_ping(&srv, &old).await.unwrap_err();
    let McpError::Unauthorized(challenge) = refused else {
        panic!("{refused:?}")
    };
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (handle, old, challenge) = (handle.clone(), old.clone(), challenge.clone());
        callers.spawn(async move {
            handle
                .report_unauthorized("srv", &old, Some(challenge))
                .await
        });
    }
    let tokens: Vec<String> = callers
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("a new token").access_token.secret().clone())
        .collect();
    assert!(tokens.iter().all(|t| *t == tokens[0] && *t != old));
    let stats = srv.stats();
    assert_eq!(
        stats.token_requests_for("refresh_token"),
        1,
        "one refresh for 100 reports of the same token"
    );
    assert_eq!(
        stats.refresh_token_reuse, 0,
        "no rotated refresh token was presented again"
    );
    // A late report about the old token returns the new one without refreshing again.
    let late = handle.report_unauthorized("srv", &old, None).await.unwrap();
    assert_eq!(late.access_token.secret(), &tokens[0]);
    assert_eq!(srv.stats().token_requests_for("refresh_token"), 1);
    mcp_ping(&srv, &tokens[0]).await.unwrap();
    handle.shutdown().await;
}

#[tokio::test]
async fn scenario_5_five_servers_refresh_concurrently() {
    let (srv, dir) = server_and_dir("five").await;
    let names: Vec<String> = (1..=5).map(|i| format!("srv{i}")).collect();
    let servers: Vec<UpstreamConfig> = names.iter().map(|n| upstream(n, &srv)).collect();
    let (browser, launches) = following_browser();
    let first = start_supervisor(supervisor_config(servers.clone(), &dir, browser.clone())).await;
    for name in &names {
        first.reconnect(name).await.unwrap();
    }
    first.shutdown().await;
    expire_stored_tokens(&dir);
    // Every refresh hangs until its 2 s timeout: five flows must be in flight at once.
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::Hang).times(5))
        .unwrap();
    let handle = start_supervisor(supervisor_config(servers, &dir, browser)).await;
    let mut callers = tokio::task::JoinSet::new();
    for name in names.clone() {
        let handle = handle.clone();
        callers.spawn(async move { handle.reconnect(&name).await });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.stats().token_requests_for("refresh_token") < 5 {
        assert!(
            Instant::now() < deadline,
            "not all 5 refreshes started: {:?}",
            srv.stats().token_requests
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refreshing = handle
        .status()
        .await
        .unwrap()
        .iter()
        .filter(|s| s.phase.name() == "refreshing" && s.running_flow.is_some())
        .count();
    assert_eq!(
        refreshing, 5,
        "five flows run at the same time, and status answers meanwhile"
    );
    let _ = callers.join_all().await; // they time out (transient) and back off
    for name in &names {
        wait_for_phase(&handle, name, "connected", Duration::from_secs(10)).await;
    }
    assert_logins(&launches, 5, "only the first supervisor's logins");
    handle.shutdown().await;
}

#[tokio::test]
async fn two_supervisors_on_one_database_run_one_login() {
    let (srv, dir) = server_and_dir("two").await;
    let (browser, launches) = following_browser();
    let on_the_database = || supervisor_config(upstreams(&srv, &["srv"]), &dir, browser.clone());
    let a = start_supervisor(on_the_database()).await;
    let b = start_supervisor(on_the_database()).await;
    assert_both_log_in_to_one_token(&a, &b, "supervisor").await;
    assert_eq!(
        srv.stats().authorize_requests,
        1,
        "one flow for two processes"
    );
    assert_logins(&launches, 1, "browser logins");
    a.shutdown().await;
    b.shutdown().await;
}

/// Spec scenario 6: transient faults back off and recover with the same refresh token.
#[tokio::test]
async fn scenario_6_transient_refresh_faults_back_off_and_recover_without_a_login() {
    let cases = [
        (FaultKind::ServerError, None),
        (FaultKind::TemporarilyUnavailable, None),
        (FaultKind::RateLimited, Some(1_000)),
        (FaultKind::Hang, None),
        (FaultKind::DropConnection, None),
        (FaultKind::ExpiresInZero, None),
    ];
    for (kind, delay_ms) in cases {
        let mut fault = Fault::new(FaultTarget::Refresh, kind).times(1);
        fault.delay_ms = delay_ms;
        let restarted = restarted_with_expired_token("s6", |srv| srv.inject(fault).unwrap()).await;
        let (srv, handle) = (&restarted.srv, &restarted.handle);
        let started = Instant::now();
        let first = handle.reconnect("srv").await;
        assert!(
            first.is_err(),
            "{kind}: the waiters hear of the failure: {first:?}"
        );
        wait_for_phase(handle, "srv", "connected", Duration::from_secs(10)).await;
        if kind == FaultKind::RateLimited {
            assert!(
                started.elapsed() >= Duration::from_secs(1),
                "Retry-After is honoured"
            );
        }
        let token = handle.access_token("srv").await.unwrap();
        mcp_ping(srv, token.secret())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let stats = srv.stats();
        assert_eq!(
            stats.token_requests_for("refresh_token"),
            2,
            "{kind}: one failed, one good refresh"
        );
        assert_eq!(stats.authorize_requests, 1, "{kind}: no login");
        assert_eq!(
            stats.refresh_token_reuse, 0,
            "{kind}: the refresh token survived (rotated ones were kept)"
        );
        assert_logins(&restarted.launches, 0, "browser logins");
        restarted.shutdown().await;
    }
}

#[tokio::test]
async fn scenario_6_invalid_grant_on_refresh_leads_to_one_login() {
    let restarted = restarted_with_refresh_fault("s6-ig", FaultKind::InvalidGrant).await;
    let (srv, handle) = (&restarted.srv, &restarted.handle);
    reconnected(handle, srv, "connected through one login").await;
    assert_logins(&restarted.launches, 1, "browser logins");
    assert_eq!(srv.stats().authorize_requests, 2);
    restarted.shutdown().await;
}

#[tokio::test]
async fn scenario_6_an_already_expired_token_is_refused_once_and_refreshed_again() {
    // The state machine's tests prove the other half: when the refreshed token is refused
    // fresh again, the supervisor backs off instead of looping, and gives up at its bound.
    let restarted = restarted_with_refresh_fault("s6-ae", FaultKind::AlreadyExpired).await;
    let (srv, handle) = (&restarted.srv, &restarted.handle);
    let bad = connected_token(handle).await;
    let McpError::Unauthorized(challenge) = mcp_ping(srv, &bad).await.unwrap_err() else {
        panic!()
    };
    let good = handle
        .report_unauthorized("srv", &bad, Some(challenge))
        .await
        .expect("one reactive refresh");
    assert_ne!(good.access_token.secret(), &bad);
    mcp_ping(srv, good.access_token.secret()).await.unwrap();
    assert_eq!(srv.stats().token_requests_for("refresh_token"), 2);
    assert_logins(&restarted.launches, 0, "browser logins");
    restarted.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_database_is_moved_aside_and_the_daemon_starts_fresh() {
    let (srv, dir) = server_and_dir("corrupt").await;
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(database_path(&dir), b"garbage, not a database").unwrap();
    let (handle, _) = supervise(&srv, &dir).await;
    let aside = handle
        .database_moved_aside()
        .expect("moved aside")
        .to_path_buf();
    assert_eq!(std::fs::read(&aside).unwrap(), b"garbage, not a database");
    handle.reconnect("srv").await.expect("a fresh store works");
    assert!(captured_logs().contains("the token database is corrupt"));
    handle.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_database_stops_the_start_with_the_file_and_the_fix() {
    let dir = data_dir("unreadable");
    std::fs::create_dir_all(database_path(&dir)).unwrap(); // a folder where the file belongs
    let e = SupervisorHandle::start(supervisor_config(vec![], &dir, BrowserLauncher::PrintOnly))
        .await
        .err()
        .expect("refused");
    let message = e.to_string();
    assert!(
        message.contains("tokens.db") && message.contains("--data-dir"),
        "{message}"
    );
}

#[tokio::test]
async fn unknown_servers_get_a_clear_error_and_status_lists_every_server() {
    let (srv, dir) = server_and_dir("unknown").await;
    let handle = start_supervisor(supervisor_config(
        vec![upstream("a", &srv), upstream("b", &srv)],
        &dir,
        BrowserLauncher::PrintOnly,
    ))
    .await;
    let e = handle.reconnect("nope").await.unwrap_err().to_string();
    assert_eq!(e, "unknown server \"nope\"; configured servers: a, b");
    let status = handle.status().await.unwrap();
    assert_eq!(
        status
            .iter()
            .map(|s| (s.name.as_str(), s.phase.name()))
            .collect::<Vec<_>>(),
        [("a", "idle"), ("b", "idle")]
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn logout_revokes_at_the_server_and_forgets_the_token() {
    let (srv, dir) = server_and_dir("logout").await;
    let (handle, _) = supervise(&srv, &dir).await;
    let grant = handle.reconnect("srv").await.unwrap();
    handle.logout("srv").await.unwrap();
    assert_eq!(srv.stats().revocations, 1);
    assert!(
        handle.token_status().await.unwrap().is_empty(),
        "the token row is gone"
    );
    assert!(handle.cached_access_token("srv").unwrap().is_none());
    assert!(
        handle
            .server_tokens("srv")
            .unwrap()
            .cached_access_token()
            .is_none()
    );
    assert!(
        mcp_ping(&srv, grant.access_token.secret()).await.is_err(),
        "the revoked family's access token is dead"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn non_interactive_hosts_report_needs_login_instead_of_opening_a_browser() {
    let (srv, dir) = server_and_dir("noninteractive").await;
    let launches = Arc::new(AtomicU32::new(0));
    let counter = launches.clone();
    let browser = BrowserLauncher::handler(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut cfg = supervisor_config(vec![upstream("srv", &srv)], &dir, browser);
    cfg.policy.interactive = false;
    let handle = start_supervisor(cfg).await;
    let e = handle.reconnect("srv").await.unwrap_err().to_string();
    assert!(e.contains("re-authentication required"), "{e}");
    assert_eq!(
        handle.status().await.unwrap()[0].phase.name(),
        "needs_login"
    );
    assert_logins(&launches, 0, "browser logins");
    // A login from another process (as `auth login` does) is found on the next reconnect.
    let (other, _) = supervise(&srv, &dir).await;
    let stored = other.login("srv").await.expect("the other process logs in");
    other.shutdown().await;
    let found = handle
        .reconnect("srv")
        .await
        .expect("the daemon picks the stored token up");
    assert_eq!(found.access_token.secret(), stored.access_token.secret());
    assert_logins(&launches, 0, "still no browser of its own");
    handle.shutdown().await;
}

#[tokio::test]
async fn configured_extra_params_reach_the_authorization_request_but_never_override_it() {
    let (srv, dir) = server_and_dir("extra").await;
    let seen: Arc<Mutex<Option<Url>>> = Arc::new(Mutex::new(None));
    let (follow, _) = following_browser();
    let record = seen.clone();
    let browser = BrowserLauncher::handler(move |url: Url| {
        *record.lock().unwrap() = Some(url.clone());
        if let BrowserLauncher::Handler(inner) = &follow {
            (inner.0)(url);
        }
    });
    let mut server = upstream("srv", &srv);
    server
        .extra_params
        .insert("audience".into(), "https://api.example".into());
    server.extra_params.insert("state".into(), "forged".into());
    let handle = start_supervisor(supervisor_config(vec![server], &dir, browser)).await;
    handle
        .reconnect("srv")
        .await
        .expect("the login works with extra parameters");
    let url = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the browser was given a URL");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert!(
        pairs.contains(&("audience".into(), "https://api.example".into())),
        "{url}"
    );
    let states: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "state")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(states.len(), 1);
    assert_ne!(states[0], "forged");
    handle.shutdown().await;
}
