//! A store that refuses writes costs neither a login nor a refresh token. The store is a real
//! SQLite file whose token table gets triggers that abort every write, as a full disk would;
//! the token serves from memory, the machine retries its save, and the store catches up.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use mcpproxy_oauth::upstream::actor::ServerStatus;
use oauth_test_server::{Config, OAuthTestServer};
use url::Url;

/// Every write to the token table fails from now on, as on a full disk.
fn refuse_token_writes(dir: &Path) {
    let conn = rusqlite::Connection::open(database_path(dir)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_token_insert BEFORE INSERT ON oauth_tokens
           BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;
         CREATE TRIGGER refuse_token_update BEFORE UPDATE ON oauth_tokens
           BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
}

fn accept_token_writes(dir: &Path) {
    let conn = rusqlite::Connection::open(database_path(dir)).unwrap();
    conn.execute_batch("DROP TRIGGER refuse_token_insert; DROP TRIGGER refuse_token_update;")
        .unwrap();
}

async fn status_of(handle: &SupervisorHandle) -> ServerStatus {
    handle.status().await.unwrap().remove(0)
}

fn newest_issued_refresh_token(srv: &OAuthTestServer) -> Option<String> {
    srv.secrets().refresh_tokens.last().cloned()
}

#[tokio::test]
async fn a_login_whose_save_fails_keeps_its_token_and_saves_it_once_the_store_takes_it() {
    let srv = start(Config::default()).await;
    let dir = temp_dir("save-failures-login");
    let (browser, launches) = following_browser();
    let server = UpstreamConfig::new("srv", Url::parse(&srv.mcp_url()).unwrap());
    let handle = SupervisorHandle::start(SupervisorConfig {
        browser,
        login_timeout: Duration::from_secs(10),
        ..SupervisorConfig::new(vec![server], dir.clone())
    })
    .await
    .unwrap();
    refuse_token_writes(&dir);

    let grant = handle
        .reconnect("srv")
        .await
        .expect("the login's token serves although the store refused it");
    let s = status_of(&handle).await;
    assert_eq!(s.phase.name(), "connected", "{s:?}");
    assert!(
        s.unsaved_token,
        "status shows the token is not stored: {s:?}"
    );
    assert_eq!(
        stored_refresh_token(&dir),
        None,
        "the store holds nothing yet"
    );
    let served = handle.access_token("srv").await.unwrap();
    assert_eq!(
        served.secret(),
        grant.access_token.secret(),
        "served from memory"
    );

    accept_token_writes(&dir);
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored_refresh_token(&dir) != newest_issued_refresh_token(&srv) {
        assert!(
            Instant::now() < deadline,
            "the retried save did not store the login's token within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(&handle).await.unsaved_token {
        assert!(
            Instant::now() < deadline,
            "status still shows the token unsaved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(launches.load(Ordering::SeqCst), 1, "one browser login");
    assert_eq!(srv.stats().token_requests_for("authorization_code"), 1);
    handle.shutdown().await;
}
