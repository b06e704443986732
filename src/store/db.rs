//! The SQLite token store: opening (permissions, pragmas, integrity), migrations, and the
//! queries. Only the `TokenRegistry` actor's thread touches a `TokenStore`.
//!
//! Durability: WAL with `synchronous=FULL`, so a token (and a rotated refresh token) is on disk
//! when `save_token` returns; a lost rotated refresh token would force a login. A corrupt file
//! is moved aside (nothing is deleted) and the store starts empty; an unreadable one is an
//! error naming the file and the fix.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

/// Migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    (
        "0002_status_view_any_sqlite",
        include_str!("../../migrations/0002_status_view_any_sqlite.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the token database {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error(
        "the token database {path} has schema version {found}, newer than this build knows ({known}); upgrade mcpproxy-oauth or use another --data-dir"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("token database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the token registry has stopped")]
    Closed,
    #[error("another process holds the flow lock of {server_key} (waited {waited_ms} ms)")]
    LockTimeout { server_key: String, waited_ms: u64 },
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A persisted token. `Debug` shows no secret.
#[derive(Clone, PartialEq)]
pub struct StoredToken {
    pub server_key: String,
    pub server_name: String,
    pub server_url: String,
    pub resource: Option<String>,
    pub issuer: Option<String>,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub token_type: String,
    pub scope: Option<String>,
    pub expires_at: Option<i64>,
    pub obtained_at: i64,
    pub flow_id: Option<String>,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("server_key", &self.server_key)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .finish()
    }
}

/// A persisted client identity with the endpoints a refresh needs. `Debug` shows no secret.
#[derive(Clone, PartialEq)]
pub struct StoredClient {
    pub server_key: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub token_endpoint_auth_method: String,
    pub source: String,
    pub redirect_uri: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub resource: String,
    pub iss_parameter_supported: bool,
    pub registration_json: Option<String>,
}

impl fmt::Debug for StoredClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredClient")
            .field("server_key", &self.server_key)
            .field("client_id", &self.client_id)
            .field("has_client_secret", &self.client_secret.is_some())
            .finish()
    }
}

/// One row of the `oauth_token_status` view.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenStatusRow {
    pub server_key: String,
    pub server_name: String,
    pub server_url: String,
    pub status: String,
    pub expires_at: Option<i64>,
    pub has_refresh_token: bool,
    pub scope: Option<String>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlowRow {
    pub flow_id: String,
    pub server_name: String,
    pub kind: String,
    pub state: String,
    pub owner: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

pub struct TokenStore {
    conn: Connection,
    path: PathBuf,
    /// Where a corrupt database was moved at open, if it was.
    pub moved_aside: Option<PathBuf>,
}

impl TokenStore {
    /// Opens (creating if needed) the database at `path`, with its folder 0700 and file 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            fs::create_dir_all(dir)
                .map_err(|e| unusable(format!("cannot create its folder: {e}")))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| unusable(format!("cannot restrict its folder: {e}")))?;
        }
        // Create it 0600 before SQLite does; the -wal and -shm files inherit the mode.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                unusable(format!(
                    "{e}; make it readable and writable by this user, or choose another --data-dir"
                ))
            })?;
        match Self::open_checked(path) {
            Ok(store) => Ok(store),
            Err(Corruption(detail)) => {
                let aside = move_aside(path).map_err(|e| unusable(format!("it is corrupt ({detail}) and could not be moved aside: {e}")))?;
                tracing::error!(
                    path = %path.display(), moved_to = %aside.display(), detail = %detail,
                    "the token database is corrupt; it was moved aside and an empty one started: servers need to log in again"
                );
                let mut store = Self::open_checked(path).map_err(|Corruption(d)| unusable(d))?;
                store.moved_aside = Some(aside);
                Ok(store)
            }
        }
        .and_then(|mut store| {
            store.migrate()?;
            Ok(store)
        })
    }

    fn open_checked(path: &Path) -> Result<Self, Corruption> {
        let corrupt = |e: rusqlite::Error| Corruption(e.to_string());
        let conn = Connection::open(path).map_err(corrupt)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(corrupt)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(corrupt)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Corruption(format!("journal mode {mode} instead of wal")));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(corrupt)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(Corruption(check));
        }
        Ok(TokenStore {
            conn,
            path: path.to_path_buf(),
            moved_aside: None,
        })
    }

    /// Applies pending migrations, one transaction each. The version is read inside the
    /// write transaction, so processes opening the same new file at once migrate it once.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version > known {
                return Err(StoreError::TooNew {
                    path: self.path.clone(),
                    found: version,
                    known,
                });
            }
            let Some((name, sql)) = MIGRATIONS.get(version as usize) else {
                return Ok(());
            };
            tx.execute_batch(sql).map_err(|e| StoreError::Unusable {
                path: self.path.clone(),
                reason: format!("migration {name} failed: {e}"),
            })?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub fn load_token(&self, server_key: &str) -> Result<Option<StoredToken>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT server_key, server_name, server_url, resource, issuer, access_token, refresh_token, token_type, scope, expires_at, obtained_at, flow_id
                 FROM oauth_tokens WHERE server_key = ?1",
                [server_key],
                |r| {
                    Ok(StoredToken {
                        server_key: r.get(0)?,
                        server_name: r.get(1)?,
                        server_url: r.get(2)?,
                        resource: r.get(3)?,
                        issuer: r.get(4)?,
                        access_token: r.get(5)?,
                        refresh_token: r.get(6)?,
                        token_type: r.get(7)?,
                        scope: r.get(8)?,
                        expires_at: r.get(9)?,
                        obtained_at: r.get(10)?,
                        flow_id: r.get(11)?,
                    })
                },
            )
            .optional()?)
    }

    /// Writes a token durably (the transaction commits with `synchronous=FULL`).
    pub fn save_token(&mut self, t: &StoredToken) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO oauth_tokens (server_key, server_name, server_url, resource, issuer, access_token, refresh_token, token_type, scope, expires_at, obtained_at, updated_at, flow_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(server_key) DO UPDATE SET server_name = excluded.server_name, server_url = excluded.server_url,
               resource = excluded.resource, issuer = excluded.issuer, access_token = excluded.access_token,
               refresh_token = excluded.refresh_token, token_type = excluded.token_type, scope = excluded.scope,
               expires_at = excluded.expires_at, obtained_at = excluded.obtained_at, updated_at = excluded.updated_at,
               flow_id = excluded.flow_id",
            params![t.server_key, t.server_name, t.server_url, t.resource, t.issuer, t.access_token, t.refresh_token, t.token_type, t.scope, t.expires_at, t.obtained_at, now_ms(), t.flow_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets only the refresh token (it was refused for good); the access token stays.
    pub fn drop_refresh_token(&mut self, server_key: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE oauth_tokens SET refresh_token = NULL, updated_at = ?2 WHERE server_key = ?1",
            params![server_key, now_ms()],
        )?;
        Ok(())
    }

    pub fn delete_token(&mut self, server_key: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM oauth_tokens WHERE server_key = ?1",
            [server_key],
        )?;
        Ok(())
    }

    pub fn load_client(&self, server_key: &str) -> Result<Option<StoredClient>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT server_key, issuer, client_id, client_secret, token_endpoint_auth_method, source, redirect_uri, authorization_endpoint,
                        token_endpoint, revocation_endpoint, resource, iss_parameter_supported, registration_json
                 FROM oauth_clients WHERE server_key = ?1",
                [server_key],
                |r| {
                    Ok(StoredClient {
                        server_key: r.get(0)?,
                        issuer: r.get(1)?,
                        client_id: r.get(2)?,
                        client_secret: r.get(3)?,
                        token_endpoint_auth_method: r.get(4)?,
                        source: r.get(5)?,
                        redirect_uri: r.get(6)?,
                        authorization_endpoint: r.get(7)?,
                        token_endpoint: r.get(8)?,
                        revocation_endpoint: r.get(9)?,
                        resource: r.get(10)?,
                        iss_parameter_supported: r.get(11)?,
                        registration_json: r.get(12)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn save_client(&mut self, c: &StoredClient) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO oauth_clients (server_key, issuer, client_id, client_secret, token_endpoint_auth_method, source, redirect_uri,
               authorization_endpoint, token_endpoint, revocation_endpoint, resource, iss_parameter_supported, registration_json, registered_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
             ON CONFLICT(server_key) DO UPDATE SET issuer = excluded.issuer, client_id = excluded.client_id, client_secret = excluded.client_secret,
               token_endpoint_auth_method = excluded.token_endpoint_auth_method, source = excluded.source, redirect_uri = excluded.redirect_uri,
               authorization_endpoint = excluded.authorization_endpoint, token_endpoint = excluded.token_endpoint,
               revocation_endpoint = excluded.revocation_endpoint, resource = excluded.resource,
               iss_parameter_supported = excluded.iss_parameter_supported, registration_json = excluded.registration_json,
               updated_at = excluded.updated_at",
            params![c.server_key, c.issuer, c.client_id, c.client_secret, c.token_endpoint_auth_method, c.source, c.redirect_uri,
                    c.authorization_endpoint, c.token_endpoint, c.revocation_endpoint, c.resource, c.iss_parameter_supported, c.registration_json, now],
        )?;
        Ok(())
    }

    /// Records a flow as running, with a lease that shows which process owns it until when.
    pub fn begin_flow(
        &mut self,
        flow_id: &str,
        server_key: &str,
        server_name: &str,
        kind: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO oauth_flows (flow_id, server_key, server_name, kind, state, owner, lease_expires_at, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)",
            params![flow_id, server_key, server_name, kind, owner, now + lease_ms, now],
        )?;
        Ok(())
    }

    pub fn finish_flow(&mut self, flow_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.conn.execute(
            "UPDATE oauth_flows SET state = ?2, finished_at = ?3, lease_expires_at = NULL, error = ?4 WHERE flow_id = ?1",
            params![flow_id, state, now_ms(), error],
        )?;
        Ok(())
    }

    pub fn token_status(&self) -> Result<Vec<TokenStatusRow>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT server_key, server_name, server_url, status, expires_at, has_refresh_token, scope, updated_at FROM oauth_token_status ORDER BY server_name",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(TokenStatusRow {
                server_key: r.get(0)?,
                server_name: r.get(1)?,
                server_url: r.get(2)?,
                status: r.get(3)?,
                expires_at: r.get(4)?,
                has_refresh_token: r.get(5)?,
                scope: r.get(6)?,
                updated_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn recent_flows(&self, limit: u32) -> Result<Vec<FlowRow>, StoreError> {
        self.flows(None, None, limit)
    }

    /// The newest flows first, of one server and/or one flow ID when given.
    pub fn flows(
        &self,
        server_name: Option<&str>,
        flow_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FlowRow>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT flow_id, server_name, kind, state, owner, started_at, finished_at, error FROM oauth_flows WHERE (?1 IS NULL OR server_name = ?1) AND (?2 IS NULL OR flow_id = ?2) ORDER BY started_at DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(params![server_name, flow_id, limit], |r| {
            Ok(FlowRow {
                flow_id: r.get(0)?,
                server_name: r.get(1)?,
                kind: r.get(2)?,
                state: r.get(3)?,
                owner: r.get(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
                error: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

struct Corruption(String);

/// Renames the database (and its -wal/-shm files) to `<name>.corrupt-<ms>`; nothing is deleted.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), now_ms()));
    fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", path.display()));
        if companion.exists() {
            fs::rename(&companion, format!("{}{suffix}", aside.display()))?;
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mcpproxy-oauth-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn token(key: &str) -> StoredToken {
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
        }
    }

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

    #[test]
    fn the_status_view_says_expired_and_expiring() {
        let path = temp_dir("view").join("tokens.db");
        let mut store = TokenStore::open(&path).unwrap();
        store
            .save_token(&StoredToken {
                expires_at: Some(now_ms() - 1),
                ..token("a")
            })
            .unwrap();
        store
            .save_token(&StoredToken {
                server_name: "b".into(),
                expires_at: Some(now_ms() + 60_000),
                ..token("b")
            })
            .unwrap();
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
        let path = temp_dir("cli-view").join("tokens.db");
        let mut store = TokenStore::open(&path).unwrap();
        for (name, expires_at) in [
            ("a", now_ms() - 1_000),
            ("b", now_ms() + 60_000),
            ("c", now_ms() + 3_600_000),
        ] {
            store
                .save_token(&StoredToken {
                    server_key: format!("{name}_key"),
                    server_name: name.into(),
                    expires_at: Some(expires_at),
                    ..token(name)
                })
                .unwrap();
        }
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

    #[test]
    fn a_corrupt_database_is_moved_aside_and_a_fresh_one_starts() {
        let path = temp_dir("corrupt").join("tokens.db");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            b"this is not a SQLite database, it is garbage that once was tokens",
        )
        .unwrap();
        let store = TokenStore::open(&path).unwrap();
        let aside = store.moved_aside.clone().expect("moved aside");
        assert!(aside.to_string_lossy().contains("tokens.db.corrupt-"));
        assert_eq!(
            fs::read(&aside).unwrap(),
            b"this is not a SQLite database, it is garbage that once was tokens",
            "nothing lost"
        );
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn an_unreadable_database_is_an_error_naming_the_file() {
        let path = temp_dir("unreadable").join("tokens.db");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::create_dir(&path).unwrap(); // a folder where the file should be
        let e = TokenStore::open(&path).err().expect("refused");
        let message = e.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("--data-dir"),
            "{message}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let path = temp_dir("newer").join("tokens.db");
        drop(TokenStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            TokenStore::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
