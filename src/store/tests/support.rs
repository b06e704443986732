//! What the store's tests share: temporary folders, a token and a client to save, healthy and
//! old stores to open, and the looks at the files that show what a refusal left alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rusqlite::Connection;

use crate::clock::now_ms;
use crate::store::keys::KeySpec;
use crate::store::migrations::MIGRATIONS;
use crate::store::{Sealing, StoredClient, StoredToken, TokenStore};

/// The client secret of [`client`].
pub const SECRET: &str = "cs-sealed-client-secret-0001";

/// A folder of its own for one test (not created; an old one of the same name is removed).
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mcpproxy-oauth-{name}-{}-{}-{}",
        std::process::id(),
        now_ms(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// [`temp_dir`], created.
pub fn made_dir(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file in the folder, to show that a refusal moved nothing.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Sets (`+i`) or clears (`-i`) the immutable attribute; false where `chattr` does not work.
pub fn chattr(flag: &str, path: &Path) -> bool {
    std::process::Command::new("chattr")
        .args([flag, path.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success())
}

/// A healthy store with one token, closed again.
pub fn healthy(name: &str) -> PathBuf {
    let path = temp_dir(name).join("tokens.db");
    let mut store = TokenStore::open(&path).unwrap();
    store.save_token(&token("k1")).unwrap();
    drop(store);
    path
}

/// The error a read-write open of `path` gives (a panic if it opens).
pub fn refused(path: &Path) -> String {
    match TokenStore::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Sets the schema version of the database at `path`, behind the store's back.
pub fn set_user_version(path: &Path, version: i64) {
    Connection::open(path)
        .unwrap()
        .pragma_update(None, "user_version", version)
        .unwrap();
}

/// A store as a build that knew only migration 0001 left it, with one token.
pub fn version_1_store(name: &str) -> PathBuf {
    let path = temp_dir(name).join("tokens.db");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    conn.execute_batch(MIGRATIONS[0].1).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    conn.execute(
        "INSERT INTO oauth_tokens (server_key, server_name, server_url, access_token, obtained_at,
           updated_at, expires_at) VALUES ('k1', 'srv', 'u', 'at-secret', 1, 1, 2)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO oauth_clients (server_key, issuer, client_id, token_endpoint_auth_method,
           source, redirect_uri, authorization_endpoint, token_endpoint, resource, registered_at,
           updated_at)
         VALUES ('k1', 'https://as', 'cid-v1', 'none', 'registered', 'r', 'https://as/authorize',
           'https://as/token', 'u', 1, 1)",
        [],
    )
    .unwrap();
    path
}

/// A valid token of `key`, with a refresh token, for an hour.
pub fn token(key: &str) -> StoredToken {
    StoredToken {
        server_key: key.into(),
        server_name: "srv".into(),
        server_url: "http://127.0.0.1:1/mcp".into(),
        resource: Some("http://127.0.0.1:1/mcp".into()),
        issuer: Some("http://127.0.0.1:1".into()),
        access_token: "at-secret".into(),
        refresh_token: Some("rt-secret".into()),
        token_type: "Bearer".into(),
        scope: Some("read".into()),
        expires_at: Some(now_ms() + 3_600_000),
        obtained_at: now_ms(),
        flow_id: Some("f1".into()),
        dpop: None,
    }
}

/// A registered client of `key`, with a secret, and a registration response that still holds
/// RFC 7592's management token (which must never be stored).
pub fn client(key: &str) -> StoredClient {
    StoredClient {
        server_key: key.into(),
        issuer: "http://127.0.0.1:1".into(),
        client_id: "cid".into(),
        client_secret: Some(SECRET.into()),
        token_endpoint_auth_method: "client_secret_post".into(),
        source: "registered".into(),
        redirect_uri: "http://127.0.0.1:2/callback".into(),
        authorization_endpoint: "http://127.0.0.1:1/authorize".into(),
        token_endpoint: "http://127.0.0.1:1/token".into(),
        revocation_endpoint: None,
        resource: "http://127.0.0.1:1/mcp".into(),
        iss_parameter_supported: false,
        registration_json: Some(
            r#"{"client_id":"cid","registration_access_token":"rat-management-0001"}"#.into(),
        ),
    }
}

/// Sealing with the key in `path` (created 0600 if missing and the database is plain text).
pub fn with_key_file(path: &Path) -> Sealing {
    Sealing::Encrypted(KeySpec {
        key_file: Some(path.to_path_buf()),
    })
}
