//! The schema: an old store migrates and keeps its tokens, a held lock stops a migration but
//! not an up-to-date open, a foreign, half-migrated or newer schema is refused.

use std::fs;

use rusqlite::Connection;

use super::support::{healthy, listing, refused, set_user_version, temp_dir, version_1_store};
use crate::store::migrations::MIGRATIONS;
use crate::store::{StoreError, TokenStore};

#[test]
fn a_version_1_store_migrates_and_keeps_its_tokens() {
    let path = version_1_store("v1");
    let store = TokenStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert_eq!(store.token_status().unwrap()[0].status, "expired");
    assert!(store.load_token("k1").unwrap().is_some());
    // Migration 0007 rebuilt oauth_clients with (server_key, issuer) as its key.
    let client = store.load_client_for("k1", "https://as").unwrap().unwrap();
    assert_eq!(client.client_id, "cid-v1");
    let token = store.load_token("k1").unwrap();
    assert_eq!(
        store
            .client_for_token("k1", token.as_ref())
            .unwrap()
            .map(|c| c.client_id),
        Some("cid-v1".into()),
        "a token without an issuer (rows from before issuers) still finds its client"
    );
    let view: String = store
        .conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'oauth_token_status'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        !view.contains("unixepoch"),
        "no function newer than SQLite 3.40: {view}"
    );
}

#[test]
fn a_held_write_lock_stops_a_migration_clearly_but_not_an_up_to_date_open() {
    let path = version_1_store("locked-migration");
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let before = listing(path.parent().unwrap());
    let message = refused(&path);
    assert!(
        message.contains("another process holds a lock") && message.contains("nothing was moved"),
        "{message}"
    );
    assert_eq!(listing(path.parent().unwrap()), before, "nothing moved");
    other.execute_batch("ROLLBACK").unwrap();
    drop(TokenStore::open(&path).unwrap());
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let store = TokenStore::open(&path).expect("an up-to-date store opens under a held lock");
    assert!(store.load_token("k1").unwrap().is_some(), "and reads");
}

#[test]
fn a_foreign_or_half_migrated_schema_is_refused_briefly() {
    let path = temp_dir("foreign").join("tokens.db");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE recipes (id INTEGER PRIMARY KEY); PRAGMA user_version = 1;")
        .unwrap();
    let message = refused(&path);
    assert!(
        message.contains("is not an mcpproxy-oauth token database")
            && message.contains("no oauth_clients"),
        "{message}"
    );
    set_user_version(&path, 0);
    let message = refused(&path);
    assert!(message.contains("other tables: recipes"), "{message}");
    let read_only = TokenStore::open_read_only(&path)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        read_only.contains("not an mcpproxy-oauth token database"),
        "{read_only}"
    );

    let half = healthy("half");
    set_user_version(&half, 0);
    let message = refused(&half);
    assert!(message.contains("schema version 0"), "{message}");
    assert!(
        !message.contains("CREATE"),
        "no SQL in the message: {message}"
    );
    assert!(message.len() < 400, "short: {message}");
    assert_eq!(
        Connection::open(&half)
            .unwrap()
            .query_row("SELECT count(*) FROM oauth_tokens", [], |r| r
                .get::<_, i64>(0))
            .unwrap(),
        1,
        "nothing changed"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let path = temp_dir("newer").join("tokens.db");
    drop(TokenStore::open(&path).unwrap());
    set_user_version(&path, 99);
    assert!(matches!(
        TokenStore::open(&path),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}
