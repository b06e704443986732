//! A store that refuses writes costs neither a login nor a refresh token. The store is a real
//! SQLite file whose token table gets triggers that abort every write, as a full disk would;
//! the token serves from memory, the machine retries its save, and the store catches up.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use mcpproxy_oauth::upstream::actor::ServerStatus;
use oauth_test_server::{Config, OAuthTestServer};

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
    let handle = start_supervisor(SupervisorConfig {
        browser,
        login_timeout: Duration::from_secs(10),
        ..SupervisorConfig::new(vec![upstream("srv", &srv)], dir.clone())
    })
    .await;
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
    let deadline = Deadline::after(
        "the retried save storing the login's token",
        Duration::from_secs(15),
    );
    while stored_refresh_token(&dir) != newest_issued_refresh_token(&srv) {
        deadline.wait(Duration::from_millis(50)).await;
    }
    let deadline = Deadline::after("status showing the token saved", Duration::from_secs(5));
    while status_of(&handle).await.unsaved_token {
        deadline.wait(Duration::from_millis(50)).await;
    }
    assert_eq!(launches.load(Ordering::SeqCst), 1, "one browser login");
    assert_eq!(srv.stats().token_requests_for("authorization_code"), 1);
    handle.shutdown().await;
}

/// On virtual time: a refresh whose save fails leaves the store with a refresh token the
/// server has rotated away. Until the store takes the new one, the machine does not rotate
/// again at the usual 75%: only when the access token is about to stop being handed out.
#[tokio::test]
async fn an_unsaved_refresh_token_is_not_spent_again_until_the_token_is_about_to_expire() {
    let (srv, clock, dir, handle, launches) =
        logged_in_on_virtual_time("save-failures-rotation").await;
    let advance = |by: Duration| {
        srv.advance_clock(by);
        clock.advance(by);
    };
    let refreshes = || srv.stats().token_requests_for("refresh_token");
    refuse_token_writes(&dir);
    // Past the proactive refresh of an hour-long token: it rotates, and the save fails.
    advance(Duration::from_secs(2_710));
    let deadline = Deadline::after("the rotated token kept in memory", Duration::from_secs(20));
    while !(refreshes() == 1 && status_of(&handle).await.unsaved_token) {
        deadline.wait(Duration::from_millis(20)).await;
    }
    let rotated_away = stored_refresh_token(&dir);
    assert_ne!(
        rotated_away,
        newest_issued_refresh_token(&srv),
        "the store is behind"
    );
    // The usual 75% of the new token's hour passes: no second rotation while unsaved. The
    // machine has acted on the clock once its timers fired (a save retry, which fails) and its
    // next deadline is ahead again.
    let fired = status_of(&handle).await.timers_fired;
    advance(Duration::from_secs(2_710));
    let deadline = Deadline::after("the machine acting on the clock", Duration::from_secs(20));
    let s = loop {
        let s = status_of(&handle).await;
        if s.timers_fired > fired && s.timer_at.is_some_and(|at| at > clock.now_ms()) {
            break s;
        }
        deadline
            .again(format!("{s:?}"), Duration::from_millis(20))
            .await;
    };
    assert_eq!(s.phase.name(), "connected", "no refresh started: {s:?}");
    assert!(s.unsaved_token, "{s:?}");
    assert_eq!(
        refreshes(),
        1,
        "an unsaved refresh token was spent at 75% of its token"
    );
    // Once the token is about to stop being handed out (its hour less two safety margins of
    // 5 s), it is spent after all.
    advance(Duration::from_secs(885));
    let deadline = Deadline::after(
        "a refresh at the token's last moment",
        Duration::from_secs(20),
    );
    while refreshes() < 2 {
        deadline.wait(Duration::from_millis(20)).await;
    }
    // The store takes writes again: the newest refresh token reaches it (its save retry, at
    // most 30 s later on the virtual clock).
    accept_token_writes(&dir);
    let deadline = Deadline::after(
        "the newest refresh token reaching the store",
        Duration::from_secs(20),
    );
    while stored_refresh_token(&dir) != newest_issued_refresh_token(&srv) {
        advance(Duration::from_secs(5));
        deadline.wait(Duration::from_millis(20)).await;
    }
    assert_no_token_lost(&srv, &launches, 1, "no login but the first");
    handle.shutdown().await;
}
