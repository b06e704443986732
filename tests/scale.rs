//! Many servers at once: a restart with 300 expired tokens runs no more refreshes at a time
//! than the limit, and every server ends connected. Against the OAuth test server over
//! loopback, with a real SQLite file.

mod common;

use std::time::Duration;

use common::*;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use oauth_test_server::Config;

const SERVERS: usize = 300;
const LIMIT: usize = 8;

fn config(srv: &oauth_test_server::OAuthTestServer, dir: &std::path::Path) -> SupervisorConfig {
    let (browser, _) = following_browser();
    let servers = (0..SERVERS)
        .map(|i| upstream(&format!("srv-{i:03}"), srv))
        .collect();
    SupervisorConfig {
        browser,
        login_timeout: Duration::from_secs(60),
        max_concurrent_refreshes: LIMIT,
        ..SupervisorConfig::new(servers, dir.to_path_buf())
    }
}

/// Reconnects every server, `at_once` at a time.
async fn reconnect_all(handle: &SupervisorHandle, at_once: usize) {
    for names in handle.servers().chunks(at_once) {
        let calls = names.iter().map(|name| {
            let (handle, name) = (handle.clone(), name.clone());
            async move { (handle.reconnect(&name).await, name) }
        });
        let results = tokio::time::timeout(
            Duration::from_secs(120),
            futures_util::future::join_all(calls),
        )
        .await
        .expect("every server answers within 120 s");
        for (result, name) in results {
            if let Err(e) = result {
                panic!("{name}: {e}");
            }
        }
    }
}

#[tokio::test]
async fn a_restart_with_300_expired_tokens_refreshes_them_all_within_the_flow_limit() {
    let srv = start(Config::default()).await;
    let dir = std::env::temp_dir().join(format!(
        "mcpproxy-oauth-scale-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    // The logins, a few at a time (each runs a loopback browser and a registration).
    let first = SupervisorHandle::start(config(&srv, &dir)).await.unwrap();
    let started = std::time::Instant::now();
    reconnect_all(&first, 20).await;
    eprintln!("{SERVERS} logins took {:?}", started.elapsed());
    let counters = first.scheduler_counters();
    assert_eq!(counters.logins_running, 0);
    assert!(
        (1..=20).contains(&counters.logins_peak),
        "logins are counted: {counters:?}"
    );
    first.shutdown().await;
    assert_eq!(srv.stats().authorize_requests, SERVERS as u64);
    let expired = rusqlite::Connection::open(database_path(&dir))
        .unwrap()
        .execute("UPDATE oauth_tokens SET expires_at = obtained_at + 1", [])
        .unwrap();
    assert_eq!(expired, SERVERS);

    // The restart: every server at once, so only the limit holds the refreshes back.
    let handle = SupervisorHandle::start(config(&srv, &dir)).await.unwrap();
    let started = std::time::Instant::now();
    reconnect_all(&handle, SERVERS).await;
    eprintln!("{SERVERS} refreshes took {:?}", started.elapsed());
    // The scheduler owns the limit and counts the flows it let run.
    let counters = handle.scheduler_counters();
    assert_eq!(counters.flow_limit, LIMIT);
    assert_eq!(counters.flows_running, 0);
    let peak = counters.flows_peak;
    assert!(
        peak <= LIMIT,
        "{peak} refreshes ran at once; the limit is {LIMIT}"
    );
    assert!(
        peak >= 2,
        "refreshes of different servers run in parallel (peak {peak})"
    );
    assert_eq!(handle.refresh_concurrency(), (0, peak));
    assert_eq!(
        counters.entries,
        SERVERS + 1,
        "one proactive refresh per server and the store poll: {counters:?}"
    );
    let stats = srv.stats();
    assert_eq!(stats.token_requests_for("refresh_token"), SERVERS as u64);
    assert_eq!(stats.authorize_requests, SERVERS as u64, "no login");
    assert_eq!(stats.refresh_token_reuse, 0);
    let statuses = handle.status().await.unwrap();
    assert!(statuses.iter().all(|s| s.phase.name() == "connected"));
    handle.shutdown().await;
}
