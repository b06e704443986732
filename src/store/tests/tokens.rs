//! Tokens: a round trip through a new store, stored times read back sane, and the status view
//! (through the library and through the system's `sqlite3`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::support::{temp_dir, token};
use crate::clock::now_ms;
use crate::store::migrations::MIGRATIONS;
use crate::store::{StoredToken, TokenStore};

#[test]
fn a_new_store_is_private_migrated_and_round_trips_tokens() {
    let dir = temp_dir("new").join("data");
    let path = dir.join("tokens.db");
    let mut store = TokenStore::open(&path).unwrap();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let t = token("k1");
    store.save_token(&t).unwrap();
    assert_eq!(store.load_token("k1").unwrap(), Some(t.clone()));
    store.drop_refresh_token("k1").unwrap();
    assert_eq!(store.load_token("k1").unwrap().unwrap().refresh_token, None);
    let status = store.token_status().unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].status.as_str(), status[0].has_refresh_token),
        ("valid", false)
    );
    assert!(
        !format!("{t:?} {status:?}").contains("secret"),
        "no secret in Debug or the status view"
    );
    drop(store);
    let reopened = TokenStore::open(&path).unwrap();
    assert_eq!(
        reopened.schema_version().unwrap(),
        MIGRATIONS.len() as i64,
        "migrations run once"
    );
    assert!(reopened.load_token("k1").unwrap().is_some());
}

/// A new store in a folder of its own (named after `name`) holding `tokens`, and its path.
fn store_with(name: &str, tokens: impl IntoIterator<Item = StoredToken>) -> (TokenStore, PathBuf) {
    let path = temp_dir(name).join("tokens.db");
    let mut store = TokenStore::open(&path).unwrap();
    for token in tokens {
        store.save_token(&token).unwrap();
    }
    (store, path)
}

#[test]
fn absurd_stored_times_are_read_back_sane() {
    let (store, _) = store_with(
        "absurd",
        [StoredToken {
            expires_at: Some(i64::MAX),
            obtained_at: i64::MIN,
            ..token("k")
        }],
    );
    let read = store.load_token("k").unwrap().unwrap();
    let year = crate::oauth::token::MAX_LIFETIME.as_millis() as i64;
    assert_eq!(read.obtained_at, 0);
    let expires_at = read.expires_at.unwrap();
    assert!(
        expires_at <= now_ms() + year && expires_at > now_ms(),
        "{expires_at}"
    );
}

#[test]
fn the_status_view_says_expired_and_expiring() {
    let expired = StoredToken {
        expires_at: Some(now_ms() - 1),
        ..token("a")
    };
    let expiring = StoredToken {
        server_name: "b".into(),
        expires_at: Some(now_ms() + 60_000),
        ..token("b")
    };
    let (store, _) = store_with("view", [expired, expiring]);
    let status: Vec<String> = store
        .token_status()
        .unwrap()
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        status,
        ["expiring", "expired"],
        "ordered by server name: b, srv"
    );
}

/// The README's query through the sqlite3 a user has (Debian 12: 3.40, without
/// `unixepoch('subsec')`), not only through the bundled library.
#[test]
fn the_status_view_reads_the_same_with_the_system_sqlite3() {
    let tokens = [
        ("a", now_ms() - 1_000),
        ("b", now_ms() + 60_000),
        ("c", now_ms() + 3_600_000),
    ]
    .map(|(name, expires_at)| StoredToken {
        server_key: format!("{name}_key"),
        server_name: name.into(),
        expires_at: Some(expires_at),
        ..token(name)
    });
    let (_, path) = store_with("cli-view", tokens);
    let out = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("select server_name, status from oauth_token_status order by server_name")
        .output()
        .expect("the sqlite3 command (Debian package sqlite3; .ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a|expired\nb|expiring\nc|valid\n"
    );
}
