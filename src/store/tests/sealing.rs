//! Encryption at rest, at the store level: no secret in clear in the file or its WAL, the
//! status view without the key, a plain-text file encrypted in place with every token kept,
//! and wrong key, missing key, corrupted ciphertext and plain-text mode each refused with the
//! file unchanged byte for byte.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::support::{self, SECRET, client, made_dir, with_key_file};
use crate::store::cipher::StoreKey;
use crate::store::keys::{self, KeySource};
use crate::store::{Sealing, StoreError, StoredDpopKey, StoredToken, TokenStore};

const ACCESS: &str = "at-sealed-access-token-0001";
const REFRESH: &str = "rt-sealed-refresh-token-0001";
const DPOP_KEY: &str = "dk-sealed-dpop-private-key-0001";

/// The shared token with secrets of its own (a DPoP key too), and no issuer, resource or flow.
fn token(key: &str) -> StoredToken {
    StoredToken {
        resource: None,
        issuer: None,
        access_token: format!("{ACCESS}-{key}").into(),
        refresh_token: Some(format!("{REFRESH}-{key}").into()),
        flow_id: None,
        dpop: Some(StoredDpopKey {
            private_key: format!("{DPOP_KEY}-{key}").into(),
            jkt: format!("jkt-{key}"),
        }),
        ..support::token(key)
    }
}

/// Every byte of the database and its WAL (the `-shm` index is a cache SQLite rebuilds).
fn file_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(bytes) = fs::read(PathBuf::from(name)) {
            all.extend(bytes);
        }
    }
    all
}

/// Asserts the database file still holds exactly the bytes `before`.
fn assert_unchanged(db: &Path, before: &[u8], why: &str) {
    assert!(file_bytes(db) == before, "{why}");
}

/// The column a `StoreError::Undecryptable` names; `None` for another error.
fn undecryptable_column(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::Undecryptable { column, .. } => Some(*column),
        _ => None,
    }
}

fn client_secret_of(store: &TokenStore, server_key: &str) -> Option<String> {
    store
        .load_client(server_key)
        .unwrap()
        .unwrap()
        .client_secret
        .map(|s| s.expose().to_string())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_in_clear_in_the_file_or_wal_and_the_view_works_without_the_key() {
    let dir = made_dir("clear");
    let db = dir.join("tokens.db");
    let key_file = dir.join("my.key");
    let mut store = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    assert!(store.is_encrypted());
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    store.save_token(&token("k1")).unwrap();
    store.save_client(&client("k1")).unwrap();
    // While open, the writes sit in the WAL: scan it too.
    let bytes = file_bytes(&db);
    for secret in [ACCESS, REFRESH, SECRET, DPOP_KEY, "rat-management-0001"] {
        assert!(
            !contains(&bytes, secret),
            "{secret} is in clear in the file or WAL"
        );
    }
    let key_text = fs::read_to_string(&key_file).unwrap();
    assert!(
        !contains(&bytes, key_text.trim()),
        "the key is not in the database"
    );
    // An outside reader without the key: the view and the non-secret columns work.
    let outside = Connection::open(&db).unwrap();
    let (status, has_refresh): (String, bool) = outside
        .query_row(
            "SELECT status, has_refresh_token FROM oauth_token_status WHERE server_key = 'k1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), has_refresh), ("valid", true));
    let stored: String = outside
        .query_row("SELECT access_token FROM oauth_tokens", [], |r| r.get(0))
        .unwrap();
    assert!(stored.starts_with(crate::store::cipher::PREFIX), "{stored}");
    drop(outside);
    // The library opens them again.
    let loaded = store.load_token("k1").unwrap().unwrap();
    assert_eq!(loaded, token_with_times(&loaded, token("k1")));
    let loaded = store.load_client("k1").unwrap().unwrap();
    assert_eq!(loaded.client_secret, Some(SECRET.into()));
    assert!(!loaded.registration_json.unwrap().contains("rat-management"));
    drop(store);
    let again = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    assert_eq!(
        again.load_token("k1").unwrap().unwrap().access_token,
        format!("{ACCESS}-k1")
    );
    let _ = fs::remove_dir_all(&dir);
}

fn token_with_times(loaded: &StoredToken, mut expected: StoredToken) -> StoredToken {
    expected.obtained_at = loaded.obtained_at;
    expected.expires_at = loaded.expires_at;
    expected
}

#[test]
fn a_plain_text_store_is_encrypted_in_place_with_every_token_intact() {
    let dir = made_dir("migrate");
    let db = dir.join("tokens.db");
    let mut plain = TokenStore::open_with(&db, &Sealing::Plaintext).unwrap();
    for k in ["k1", "k2", "k3"] {
        plain.save_token(&token(k)).unwrap();
        plain.save_client(&client(k)).unwrap();
    }
    // An older build kept the management token in registration_json.
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE oauth_clients SET registration_json = \
             '{\"client_id\":\"cid\",\"registration_access_token\":\"rat-management-0001\"}'",
            [],
        )
        .unwrap();
    assert!(!plain.is_encrypted());
    drop(plain);
    assert!(
        contains(&file_bytes(&db), ACCESS),
        "the plain-text format holds tokens in clear"
    );
    let key_file = dir.join("key");
    let store = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    for k in ["k1", "k2", "k3"] {
        let loaded = store.load_token(k).unwrap().unwrap();
        assert_eq!(loaded.access_token, format!("{ACCESS}-{k}"));
        assert_eq!(loaded.refresh_token, Some(format!("{REFRESH}-{k}").into()));
        assert_eq!(
            loaded.dpop.map(|d| (d.private_key, d.jkt)),
            Some((format!("{DPOP_KEY}-{k}").into(), format!("jkt-{k}")))
        );
        let c = store.load_client(k).unwrap().unwrap();
        assert_eq!(c.client_secret, Some(SECRET.into()));
        assert!(!c.registration_json.unwrap().contains("rat-management"));
    }
    drop(store);
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("VACUUM").unwrap();
    drop(conn);
    let bytes = file_bytes(&db);
    for secret in [ACCESS, REFRESH, SECRET, DPOP_KEY, "rat-management-0001"] {
        assert!(
            !contains(&bytes, secret),
            "{secret} left in clear after the migration"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A closed encrypted store with one token, and its key file.
fn encrypted_store(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = made_dir(name);
    let db = dir.join("tokens.db");
    let key_file = dir.join("key");
    let mut store = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    store.save_token(&token("k1")).unwrap();
    store.save_client(&client("k1")).unwrap();
    drop(store);
    (dir, db, key_file)
}

#[test]
fn wrong_key_missing_key_and_plain_text_mode_are_refused_with_the_file_unchanged() {
    let (dir, db, key_file) = encrypted_store("refused");
    let before = file_bytes(&db);
    let key_before = fs::read(&key_file).unwrap();

    let other = dir.join("other.key");
    keys::write_new_key_file(&other, &StoreKey::generate()).unwrap();
    let wrong = TokenStore::open_with(&db, &with_key_file(&other))
        .err()
        .unwrap();
    assert!(matches!(wrong, StoreError::WrongKey { .. }), "{wrong}");
    let text = wrong.to_string();
    assert!(
        text.contains("another key")
            && text.contains("--key-file")
            && text.contains("nothing was changed"),
        "{text}"
    );
    assert_unchanged(&db, &before, "a wrong key changes nothing");

    let missing = TokenStore::open_with(&db, &with_key_file(&dir.join("gone.key")))
        .err()
        .unwrap();
    let text = missing.to_string();
    assert!(matches!(missing, StoreError::Key { .. }), "{text}");
    assert!(
        text.contains("gone.key")
            && text.contains("encrypted")
            && text.contains("MCPPROXY_OAUTH_KEY"),
        "{text}"
    );
    assert!(
        !dir.join("gone.key").exists(),
        "no key is invented for an encrypted database"
    );
    assert_unchanged(&db, &before, "a missing key changes nothing");

    let plain = TokenStore::open_with(&db, &Sealing::Plaintext)
        .err()
        .unwrap();
    assert!(
        matches!(plain, StoreError::EncryptedNeedsKey { .. }),
        "{plain}"
    );
    assert!(plain.to_string().contains("--insecure-plaintext"));
    assert_unchanged(&db, &before, "plain-text mode changes nothing");
    assert_eq!(fs::read(&key_file).unwrap(), key_before);

    // A read-only reader (auth status) needs no key.
    let reader = TokenStore::open_read_only(&db).unwrap().unwrap();
    assert_eq!(reader.token_status().unwrap().len(), 1);
    assert!(matches!(
        reader.load_token("k1"),
        Err(StoreError::EncryptedNeedsKey { .. })
    ));
    drop(reader);
    assert_unchanged(&db, &before, "a read-only reader changes nothing");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupted_or_moved_ciphertext_is_a_clear_error_and_nothing_is_overwritten() {
    let (dir, db, key_file) = encrypted_store("corrupt");
    let conn = Connection::open(&db).unwrap();
    let sealed: String = conn
        .query_row("SELECT access_token FROM oauth_tokens", [], |r| r.get(0))
        .unwrap();
    let mut altered = sealed.into_bytes();
    let at = altered.len() - 3;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    conn.execute(
        "UPDATE oauth_tokens SET access_token = ?1",
        [String::from_utf8(altered).unwrap()],
    )
    .unwrap();
    // A client secret moved to another server's row (same key, other place).
    conn.execute(
        "INSERT INTO oauth_clients (server_key, issuer, client_id, client_secret,
           token_endpoint_auth_method, source, redirect_uri, authorization_endpoint, token_endpoint,
           resource, registered_at, updated_at)
         SELECT 'k2', issuer, client_id, client_secret, token_endpoint_auth_method, source,
           redirect_uri, authorization_endpoint, token_endpoint, resource, registered_at, updated_at
         FROM oauth_clients WHERE server_key = 'k1'",
        [],
    )
    .unwrap();
    drop(conn);
    let before = file_bytes(&db);
    let store = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    let e = store.load_token("k1").err().unwrap();
    let text = e.to_string();
    assert_eq!(undecryptable_column(&e), Some("access_token"), "{text}");
    assert!(
        text.contains("k1") && text.contains("nothing was changed") && text.contains("auth logout"),
        "{text}"
    );
    assert!(!text.contains(ACCESS));
    let moved = store.load_client("k2").err().unwrap();
    assert_eq!(
        undecryptable_column(&moved),
        Some("client_secret"),
        "{moved}"
    );
    assert_eq!(client_secret_of(&store, "k1").as_deref(), Some(SECRET));
    drop(store);
    assert_unchanged(&db, &before, "an undecryptable value is never overwritten");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_process_still_on_the_old_key_after_a_rekey_cannot_write_and_loses_nothing() {
    let (dir, db, key_file) = encrypted_store("stale-key");
    let mut stale = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    let mut rekeyed = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    let new_file = dir.join("new.key");
    let new = StoreKey::generate();
    keys::write_new_key_file(&new_file, &new).unwrap();
    rekeyed.rekey(new, KeySource::File(new_file)).unwrap();
    let mut newer = token("k1");
    newer.access_token = "at-written-with-the-old-key".into();
    let refused = stale.save_token(&newer).err().unwrap();
    assert!(matches!(refused, StoreError::WrongKey { .. }), "{refused}");
    assert!(matches!(
        stale.save_client(&client("k1")),
        Err(StoreError::WrongKey { .. })
    ));
    assert_eq!(
        rekeyed.load_token("k1").unwrap().unwrap().access_token,
        format!("{ACCESS}-k1"),
        "the stored token is intact"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn rekey_reseals_everything_and_the_old_key_no_longer_opens() {
    let (dir, db, key_file) = encrypted_store("rekey");
    let mut store = TokenStore::open_with(&db, &with_key_file(&key_file)).unwrap();
    let new_file = dir.join("new.key");
    let new = StoreKey::generate();
    keys::write_new_key_file(&new_file, &new).unwrap();
    store.rekey(new, KeySource::File(new_file.clone())).unwrap();
    assert_eq!(
        store.load_token("k1").unwrap().unwrap().access_token,
        format!("{ACCESS}-k1")
    );
    drop(store);
    assert!(matches!(
        TokenStore::open_with(&db, &with_key_file(&key_file)),
        Err(StoreError::WrongKey { .. })
    ));
    let store = TokenStore::open_with(&db, &with_key_file(&new_file)).unwrap();
    assert_eq!(client_secret_of(&store, "k1").as_deref(), Some(SECRET));
    let _ = fs::remove_dir_all(&dir);
}
