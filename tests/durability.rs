//! Nothing lost when the store, the network or the process misbehave: a locked database, a
//! shutdown during a refresh, a slow token endpoint, a panicking flow. The supervisor against
//! the OAuth test server over loopback, with real SQLite files.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::supervisor::{FlowHook, SupervisorConfig, SupervisorHandle, database_path};
use mcpproxy_oauth::upstream::state::Policy;
use oauth_test_server::{Config, OAuthTestServer};

/// The test server under `names`, a browser that follows redirects (its launches counted),
/// logins within 10 s, backoff from 200 ms up to 1 s.
fn counting_config(
    srv: &OAuthTestServer,
    names: &[&str],
    dir: &Path,
) -> (SupervisorConfig, Arc<AtomicU32>) {
    let (browser, launches) = following_browser();
    let config = SupervisorConfig {
        policy: Policy {
            backoff_base: 200,
            backoff_cap: 1_000,
            ..Policy::default()
        },
        login_timeout: Duration::from_secs(10),
        ..supervisor_config(upstreams(srv, names), dir, browser)
    };
    (config, launches)
}

/// A test server with `config` and a supervisor of it as "srv" on `counting_config`, its data
/// in a fresh folder named after `name`, logged in once: (server, folder, supervisor, launches).
async fn logged_in(
    config: Config,
    name: &str,
) -> (OAuthTestServer, PathBuf, SupervisorHandle, Arc<AtomicU32>) {
    let srv = start(config).await;
    let dir = data_dir(name);
    let (config, launches) = counting_config(&srv, &["srv"], &dir);
    let handle = SupervisorHandle::start(config).await.unwrap();
    handle.reconnect("srv").await.expect("login");
    (srv, dir, handle, launches)
}

fn newest_issued_refresh_token(srv: &OAuthTestServer) -> String {
    srv.secrets()
        .refresh_tokens
        .last()
        .cloned()
        .expect("a refresh token was issued")
}

#[tokio::test]
async fn a_locked_database_never_costs_the_newest_refresh_token() {
    let (srv, dir, handle, launches) = logged_in(token_ttl(2), "locked").await;
    // Another connection holds the write lock for longer than the 5 s busy timeout, across
    // more than one refresh (2 s tokens refresh every 1.5 s).
    let db = database_path(&dir);
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let _ = released.recv_timeout(Duration::from_secs(30));
        conn.execute_batch("COMMIT").unwrap();
    });
    let refreshes = srv.stats().token_requests_for("refresh_token");
    wait_until(
        "a save to fail and the token to live in memory",
        Duration::from_secs(40),
        || srv.stats().token_requests_for("refresh_token") >= refreshes + 2,
    )
    .await;
    let s = status_of(&handle, "srv").await;
    assert!(s.unsaved_token, "status shows the unsaved token: {s:?}");
    assert_ne!(
        stored_refresh_token(&dir),
        Some(newest_issued_refresh_token(&srv)),
        "the store is behind while locked"
    );
    release.send(()).unwrap();
    holder.join().unwrap();
    wait_until(
        "the newest token reaches the store",
        Duration::from_secs(20),
        || stored_refresh_token(&dir) == Some(newest_issued_refresh_token(&srv)),
    )
    .await;
    // Refreshing goes on with the newest refresh token: no reuse, no revoked family, no login.
    let after = srv.stats().token_requests_for("refresh_token");
    wait_until("another refresh", Duration::from_secs(10), || {
        srv.stats().token_requests_for("refresh_token") > after
    })
    .await;
    assert_no_token_lost(&srv, &launches, 1, "no login");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_shutdown_during_a_slow_refresh_keeps_the_rotated_refresh_token() {
    let (srv, dir, handle, _) = logged_in(Config::default(), "shutdown").await;
    slow_next_refresh(&srv, 1_500);
    let refreshing = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.refresh("srv").await })
    };
    wait_until(
        "the refresh to reach the server",
        Duration::from_secs(5),
        || srv.stats().faults_fired.get("refresh") == Some(&1),
    )
    .await;
    handle.shutdown().await;
    let _ = refreshing.await;
    assert_eq!(srv.stats().token_requests_for("refresh_token"), 1);
    assert_eq!(
        stored_refresh_token(&dir),
        Some(newest_issued_refresh_token(&srv)),
        "shutdown waited for the refresh and its save"
    );
    // The next start refreshes with it.
    let (config, launches) = counting_config(&srv, &["srv"], &dir);
    let again = SupervisorHandle::start(config).await.unwrap();
    again.reconnect("srv").await.unwrap();
    again
        .refresh("srv")
        .await
        .expect("the rotated refresh token works");
    assert_no_token_lost(&srv, &launches, 0, "no login after the restart");
    again.shutdown().await;
}

#[tokio::test]
async fn a_token_endpoint_answering_refreshes_after_20_s_costs_no_grant() {
    let srv = start(Config::default()).await;
    let dir = data_dir("slow");
    let (mut config, launches) = counting_config(&srv, &["srv"], &dir);
    // The production deadlines: 15 s for other calls, 60 s for a refresh.
    config.http_timeout = SupervisorConfig::new(vec![], dir.clone()).http_timeout;
    config.refresh_timeout = SupervisorConfig::new(vec![], dir.clone()).refresh_timeout;
    assert!(config.http_timeout < Duration::from_secs(20));
    let handle = SupervisorHandle::start(config).await.unwrap();
    handle.reconnect("srv").await.expect("login");
    slow_next_refresh(&srv, 20_000);
    handle
        .refresh("srv")
        .await
        .expect("the slow refresh succeeds");
    let stats = srv.stats();
    assert_eq!(
        stats.token_requests_for("refresh_token"),
        1,
        "one token request"
    );
    assert_no_token_lost(&srv, &launches, 1, "no login");
    assert_eq!(
        stored_refresh_token(&dir),
        Some(newest_issued_refresh_token(&srv))
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_panicking_flow_restarts_only_its_server_which_reloads_from_the_store() {
    let srv = start(Config::default()).await;
    let dir = data_dir("panic");
    let (mut config, _) = counting_config(&srv, &["a", "b"], &dir);
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    config.flow_hook = Some(FlowHook(Arc::new(move |server: &str, kind: &str| {
        if server == "a" && kind == "refresh" && trigger.swap(false, Ordering::SeqCst) {
            panic!("injected panic in a's refresh");
        }
    })));
    let handle = SupervisorHandle::start(config).await.unwrap();
    handle.reconnect("a").await.expect("a logs in");
    handle.reconnect("b").await.expect("b logs in");
    armed.store(true, Ordering::SeqCst);
    let failure = handle
        .refresh("a")
        .await
        .expect_err("the panicking flow fails");
    assert_eq!(
        failure.code(),
        "stopped",
        "its waiter hears at once: {failure}"
    );
    // b is untouched and works.
    handle.refresh("b").await.expect("b refreshes");
    // a was restarted and reloaded its token from the store by itself.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(&handle, "a").await.phase.name() != "connected" {
        assert!(
            Instant::now() < deadline,
            "a did not reconnect from the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.refresh("a").await.expect("a refreshes again");
    assert_eq!(
        srv.stats().authorize_requests,
        2,
        "no login after the restart"
    );
    handle.shutdown().await;
}
