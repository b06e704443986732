//! The SQLite token store: the open sequence (modes, pragmas, integrity, schema check: the
//! steps live in `open` and `perms`), migrations, and the queries. Only the `TokenRegistry`
//! actor's thread touches a `TokenStore`.
//!
//! Durability: WAL with `synchronous=FULL`, so a token (and a rotated refresh token) is on disk
//! when `save_token` returns; a lost rotated refresh token would force a login. Only a corrupt
//! file is moved aside (nothing is deleted) and the store starts empty; any other failure is an
//! error naming the file, the cause and the fix, with nothing moved.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::cipher::{self, StoreKey};
use super::keys::{self, KeySource, Sealing};
use super::open::{
    Access, BUSY_TIMEOUT, OpenFailure, check_schema, create_private, folder_of, move_aside,
    short_cause, with_companions,
};
use super::perms;

/// Migrations, applied in order; `PRAGMA user_version` counts those applied.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    (
        "0002_portable_status_view",
        include_str!("../../migrations/0002_portable_status_view.sql"),
    ),
    (
        "0003_abandoned_flows",
        include_str!("../../migrations/0003_abandoned_flows.sql"),
    ),
    ("0004_meta", include_str!("../../migrations/0004_meta.sql")),
    (
        "0005_flow_history_index",
        include_str!("../../migrations/0005_flow_history_index.sql"),
    ),
    (
        "0006_dpop_key",
        include_str!("../../migrations/0006_dpop_key.sql"),
    ),
    (
        "0007_clients_by_issuer",
        include_str!("../../migrations/0007_clients_by_issuer.sql"),
    ),
];

/// The newest flows first: served by the index `oauth_flows_by_start` (no sort).
pub const RECENT_FLOWS_SQL: &str = "SELECT flow_id, server_name, kind, state, owner, started_at, finished_at, error FROM oauth_flows ORDER BY started_at DESC LIMIT ?1";

/// How much flow history `oauth_flows` keeps. Running flows and the flow that wrote a stored
/// token are always kept; any other flow goes when it is older than `max_age` or not among the
/// newest `max_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRetention {
    pub max_age: std::time::Duration,
    pub max_count: u32,
    /// Rows deleted per pruning step at most, so one step never holds the registry long.
    pub batch: u32,
    /// A pruning step runs after this many recorded flows (and at open).
    pub every_flows: u32,
}

impl Default for FlowRetention {
    /// 30 days, 10,000 flows; 500 rows a step, a step every 256 flows.
    fn default() -> Self {
        FlowRetention {
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
            max_count: 10_000,
            batch: 500,
            every_flows: 256,
        }
    }
}

/// What a flow reads when it starts, in the same registry job that records it.
#[derive(Debug, Default)]
pub struct FlowStart {
    /// The flow row could not be written (only history is at stake: the flow goes on).
    pub not_recorded: Option<String>,
    pub token: Option<StoredToken>,
    pub client: Option<StoredClient>,
    /// The stored token was written by a login flow.
    pub token_by_login: bool,
}

/// One write of a group commit (see `TokenStore::group_commit`): `run` performs it and keeps
/// its result for the caller; it returns whether the job succeeded (a failed job's writes
/// are rolled back to its savepoint).
pub trait GroupJob: Send {
    fn run(&mut self, store: &mut TokenStore) -> bool;
}

/// Runs `f` as one write: in its own `BEGIN IMMEDIATE` transaction, or, inside a group
/// commit (`batched`), in the group's transaction (the group commits, and each job has its
/// own savepoint there).
fn write_tx<R>(
    conn: &mut Connection,
    batched: bool,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    if batched {
        return f(conn);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let result = f(&tx)?;
    tx.commit()?;
    Ok(result)
}

/// The secret columns, sealed when the store is encrypted: (table, column).
pub const SECRET_COLUMNS: &[(&str, &str)] = &[
    ("oauth_tokens", "access_token"),
    ("oauth_tokens", "refresh_token"),
    ("oauth_tokens", "dpop_key"),
    ("oauth_clients", "client_secret"),
];

/// What the key check value says, sealed; it proves a key is the database's key.
const KEY_CHECK: &str = "mcpproxy-oauth store key check";

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
    #[error(
        "the file {path} is not an mcpproxy-oauth token database ({detail}); nothing was changed: choose another --data-dir, or move the file away"
    )]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "the token database {path} has the mcpproxy-oauth tables but schema version 0 (a migration ran outside mcpproxy-oauth, or the version was reset); nothing was changed: restore a backup, or move it aside (servers then log in again)"
    )]
    HalfMigrated { path: PathBuf },
    #[error("token database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the token registry has stopped")]
    Closed,
    #[error("the token database did not commit the write ({0}); nothing of it was stored")]
    NotCommitted(String),
    #[error("another process holds the flow lock of {server_key} (waited {waited_ms} ms)")]
    LockTimeout { server_key: String, waited_ms: u64 },
    #[error(
        "the token database {path} is encrypted, and --insecure-plaintext was given; nothing was changed: drop --insecure-plaintext and give its key (--key-file, MCPPROXY_OAUTH_KEY, or the key file beside it)"
    )]
    EncryptedNeedsKey { path: PathBuf },
    #[error(
        "the token database {path} was encrypted with another key than {source_}; nothing was changed: give the key it was encrypted with (--key-file or MCPPROXY_OAUTH_KEY)"
    )]
    WrongKey { path: PathBuf, source_: KeySource },
    #[error("cannot open the token database {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "the stored {column} of {server_key} cannot be decrypted (its bytes were altered, or it was moved from another row); nothing was changed: restore a backup of the database, or `auth logout` the server and log in again"
    )]
    Undecryptable {
        server_key: String,
        column: &'static str,
    },
}

fn key_check_place() -> String {
    cipher::place("oauth_meta", "key_check", "")
}

fn table_of(column: &str) -> &'static str {
    SECRET_COLUMNS
        .iter()
        .find(|(_, c)| *c == column)
        .map(|(t, _)| *t)
        .unwrap_or("oauth_tokens")
}

fn seal_column(
    key: &StoreKey,
    column: &'static str,
    server_key: &str,
    value: Option<&str>,
) -> Option<String> {
    value.map(|v| cipher::seal(key, &cipher::place(table_of(column), column, server_key), v))
}

fn read_key_check(conn: &Connection) -> Result<Option<String>, StoreError> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'oauth_meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT value FROM oauth_meta WHERE name = 'key_check'",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

/// Refuses a write of secrets sealed with a key the file no longer uses (a `tokens rekey` by
/// another process since this one opened it), or in clear into a file encrypted since: such a
/// value could never be read back. Checked inside the write transaction, so a rekey cannot
/// slip in between; costs one small query and one AEAD open of the key check per save.
fn still_our_key(
    conn: &Connection,
    key: &Option<(StoreKey, KeySource)>,
    path: &Path,
) -> Result<(), StoreError> {
    match (key, read_key_check(conn)?) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(StoreError::EncryptedNeedsKey {
            path: path.to_path_buf(),
        }),
        (Some((key, source)), check) => {
            let ours = check
                .and_then(|c| cipher::open(key, &key_check_place(), &c).ok())
                .is_some_and(|text| text == KEY_CHECK);
            if ours {
                Ok(())
            } else {
                Err(StoreError::WrongKey {
                    path: path.to_path_buf(),
                    source_: source.clone(),
                })
            }
        }
    }
}

/// A registration response without RFC 7592's management token (older builds stored it).
fn without_management_token(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.remove("registration_access_token");
            serde_json::Value::Object(map).to_string()
        }
        _ => json.to_string(),
    }
}

/// The system clock's old path, kept while other branches move to [`crate::clock`].
pub use crate::clock::now_ms;

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
    /// The DPoP key the token is bound to (RFC 9449), if any.
    pub dpop: Option<StoredDpopKey>,
}

/// A DPoP key as stored: the private scalar (base64url, a secret) and its public thumbprint.
#[derive(Clone, PartialEq)]
pub struct StoredDpopKey {
    pub private_key: String,
    pub jkt: String,
}

impl fmt::Debug for StoredDpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredDpopKey")
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("server_key", &self.server_key)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .field("dpop_jkt", &self.dpop.as_ref().map(|d| &d.jkt))
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
    /// The key of an encrypted store; `None` for plain text (and for read-only opens, which
    /// read no secret column).
    key: Option<(StoreKey, KeySource)>,
    /// Whether the file holds sealed secrets (its key check is present).
    encrypted: bool,
    /// Where a corrupt database was moved at open, if it was.
    pub moved_aside: Option<PathBuf>,
    /// Inside a group commit: writes join the group's transaction.
    batched: bool,
    retention: FlowRetention,
    /// Flows recorded since the last pruning step.
    flows_since_prune: u32,
}

impl TokenStore {
    /// Opens (creating if needed) the database at `path` for reading and writing: modes
    /// enforced (folder 0700, files 0600, refused when they cannot be), real corruption moved
    /// aside, every other failure an error naming the file, the cause and the fix, with
    /// nothing moved; then pending migrations; secrets sealed with the default key sources
    /// (see `keys`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &Sealing::default())
    }

    /// `open`, with the secret columns protected as `sealing` says: a plain-text database is
    /// encrypted in place (one transaction) when a key is given; an encrypted one needs its
    /// key, and nothing is changed when it is missing or wrong.
    pub fn open_with(path: &Path, sealing: &Sealing) -> Result<Self, StoreError> {
        let mut store = Self::open_unsealed(path)?;
        store.apply_sealing(sealing)?;
        Ok(store)
    }

    fn open_unsealed(path: &Path) -> Result<Self, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        let private = |r: Result<(), perms::ModeError>| r.map_err(|e| unusable(e.to_string()));
        private(perms::private_dir(folder_of(path)))?;
        for file in with_companions(path) {
            private(perms::private_file(&file))?;
        }
        create_private(path).map_err(unusable)?;
        let mut store = match Self::open_checked(path, Access::ReadWrite) {
            Ok(store) => store,
            Err(OpenFailure::Corrupt(detail)) => {
                let aside = move_aside(path).map_err(|e| {
                    unusable(format!(
                        "it is corrupt ({detail}) and could not be moved aside: {e}; move it away by hand (servers then log in again)"
                    ))
                })?;
                tracing::error!(
                    path = %path.display(), moved_to = %aside.display(), detail = %detail,
                    "the token database is corrupt; it was moved aside and an empty one started: servers need to log in again"
                );
                create_private(path).map_err(unusable)?;
                let mut store = Self::open_checked(path, Access::ReadWrite)
                    .map_err(|f| unusable(f.explain(path)))?;
                store.moved_aside = Some(aside);
                store
            }
            Err(failure) => return Err(unusable(failure.explain(path))),
        };
        store.migrate()?;
        // SQLite created -wal and -shm with the database's mode; make sure of it.
        for file in with_companions(path) {
            private(perms::private_file(&file))?;
        }
        Ok(store)
    }

    /// Opens an existing database read-only, for commands that only look (`auth status`,
    /// `logs flows`): no migration, nothing created or moved (a corrupt file is reported, and
    /// moved aside by the next read-write open). `None` when there is no database yet. A mode
    /// that cannot be tightened is a warning here: reading does not expose anything new.
    pub fn open_read_only(path: &Path) -> Result<Option<Self>, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            return Ok(None);
        }
        let warn = |r: Result<(), perms::ModeError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "a token file keeps a loose mode");
            }
        };
        warn(perms::private_dir(folder_of(path)));
        for file in with_companions(path) {
            warn(perms::private_file(&file));
        }
        let mut store = match Self::open_checked(path, Access::ReadOnly) {
            Ok(store) => store,
            Err(OpenFailure::Corrupt(detail)) => {
                return Err(unusable(format!(
                    "it is corrupt ({detail}); nothing was moved: the next `serve` or `auth login` moves it aside (servers then log in again)"
                )));
            }
            Err(failure) => return Err(unusable(failure.explain(path))),
        };
        let version = store.checked_version()?;
        for file in with_companions(path) {
            warn(perms::private_file(&file));
        }
        store.encrypted = store.key_check()?.is_some();
        // An empty file (being created by a start right now) holds no token yet.
        Ok((version > 0).then_some(store))
    }

    fn open_checked(path: &Path, access: Access) -> Result<Self, OpenFailure> {
        use rusqlite::OpenFlags;
        let flags = match access {
            Access::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
            Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let step = |step: &'static str| move |e| OpenFailure::classify(step, e);
        let conn = Connection::open_with_flags(path, flags).map_err(step("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(step("open"))?;
        if access == Access::ReadWrite {
            // Switching the journal mode needs a lock that SQLite does not wait for with the
            // busy handler (two processes creating the file at once): retry, bounded.
            let started = std::time::Instant::now();
            let mode: String = loop {
                match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if matches!(
                            e.code,
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        ) && started.elapsed() < BUSY_TIMEOUT =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => break other.map_err(step("switch to WAL"))?,
                }
            };
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(OpenFailure::NoWal(mode));
            }
            conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
                .map_err(step("set pragmas"))?;
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(step("check integrity"))?;
        if check != "ok" {
            return Err(OpenFailure::Corrupt(check));
        }
        Ok(TokenStore {
            conn,
            path: path.to_path_buf(),
            key: None,
            encrypted: false,
            moved_aside: None,
            batched: false,
            retention: FlowRetention::default(),
            flows_since_prune: 0,
        })
    }

    /// Returns the schema version. Version and tables are read in one read transaction, so
    /// a process migrating the same new file at this moment is seen before or after, never
    /// halfway (which would look like our tables under version 0).
    fn checked_version(&mut self) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        check_schema(&tx, &self.path, version)?;
        tx.commit()?;
        Ok(version)
    }

    /// Applies pending migrations, one transaction each. The version is read inside the
    /// write transaction, so processes opening the same new file at once migrate it once;
    /// an up-to-date file needs no write at all (so a held write lock does not stop a start).
    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        let version = self.checked_version()?;
        if version == known {
            return Ok(());
        }
        let path = self.path.clone();
        let failed = |step: &'static str| {
            let path = path.clone();
            move |e| StoreError::Unusable {
                reason: OpenFailure::classify(step, e).explain(&path),
                path,
            }
        };
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(failed("migrate"))?;
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
                reason: format!(
                    "migration {name} failed ({}); nothing was changed",
                    short_cause(&e)
                ),
            })?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit().map_err(failed("migrate"))?;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds sealed secrets.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Where the key in use came from (`None`: plain text).
    pub fn key_source(&self) -> Option<&KeySource> {
        self.key.as_ref().map(|(_, source)| source)
    }

    /// The sealed key check, if the file is encrypted (also for files older than `oauth_meta`).
    fn key_check(&self) -> Result<Option<String>, StoreError> {
        read_key_check(&self.conn)
    }

    fn apply_sealing(&mut self, sealing: &Sealing) -> Result<(), StoreError> {
        let check = self.key_check()?;
        self.encrypted = check.is_some();
        let Sealing::Encrypted(spec) = sealing else {
            if self.encrypted {
                return Err(StoreError::EncryptedNeedsKey {
                    path: self.path.clone(),
                });
            }
            tracing::warn!(path = %self.path.display(), "--insecure-plaintext: tokens and client secrets are stored in clear (protected by the file's 0600 mode only)");
            return Ok(());
        };
        let (key, source) =
            keys::resolve(spec, &self.path, self.encrypted).map_err(|e| StoreError::Key {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        match check {
            Some(check) => self.verify_key(&key, &source, &check)?,
            None => self.encrypt_in_place(&key, &source)?,
        }
        self.key = Some((key, source));
        self.encrypted = true;
        Ok(())
    }

    fn verify_key(
        &self,
        key: &StoreKey,
        source: &KeySource,
        check: &str,
    ) -> Result<(), StoreError> {
        match cipher::open(key, &key_check_place(), check) {
            Ok(text) if text == KEY_CHECK => Ok(()),
            _ => Err(StoreError::WrongKey {
                path: self.path.clone(),
                source_: source.clone(),
            }),
        }
    }

    /// Seals every secret of a plain-text file in one transaction (all or nothing), drops the
    /// RFC 7592 `registration_access_token` older builds kept in `registration_json`, and
    /// writes the key check. Another process that got there first is seen inside the
    /// transaction, and its key is checked instead.
    fn encrypt_in_place(&mut self, key: &StoreKey, source: &KeySource) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(check) = read_key_check(&tx)? {
            drop(tx);
            return self.verify_key(key, source, &check);
        }
        let mut sealed = 0usize;
        type TokenSecrets = (String, String, Option<String>, Option<String>);
        let tokens: Vec<TokenSecrets> = tx
            .prepare("SELECT server_key, access_token, refresh_token, dpop_key FROM oauth_tokens")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        for (server_key, access, refresh, dpop_key) in tokens {
            let access = seal_column(key, "access_token", &server_key, Some(&access));
            let refresh = seal_column(key, "refresh_token", &server_key, refresh.as_deref());
            let dpop_key = seal_column(key, "dpop_key", &server_key, dpop_key.as_deref());
            sealed += 1 + usize::from(refresh.is_some()) + usize::from(dpop_key.is_some());
            tx.execute(
                "UPDATE oauth_tokens SET access_token = ?2, refresh_token = ?3, dpop_key = ?4 WHERE server_key = ?1",
                params![server_key, access, refresh, dpop_key],
            )?;
        }
        // By rowid: a server has a client per authorization server.
        type ClientSecrets = (i64, String, Option<String>, Option<String>);
        let clients: Vec<ClientSecrets> = tx
            .prepare(
                "SELECT rowid, server_key, client_secret, registration_json FROM oauth_clients",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        for (rowid, server_key, secret, registration) in clients {
            let secret = seal_column(key, "client_secret", &server_key, secret.as_deref());
            sealed += usize::from(secret.is_some());
            tx.execute(
                "UPDATE oauth_clients SET client_secret = ?2, registration_json = ?3 WHERE rowid = ?1",
                params![rowid, secret, registration.map(|r| without_management_token(&r))],
            )?;
        }
        tx.execute(
            "INSERT INTO oauth_meta (name, value) VALUES ('key_check', ?1)",
            [cipher::seal(key, &key_check_place(), KEY_CHECK)],
        )?;
        tx.commit()?;
        if sealed > 0 {
            tracing::info!(path = %self.path.display(), values = sealed, key = %source, "the token database was encrypted in place");
        }
        Ok(())
    }

    /// Re-seals every secret with `new` in one transaction, then uses it. A value that does
    /// not open with the current key stops the rekey with nothing changed.
    pub fn rekey(&mut self, new: StoreKey, new_source: KeySource) -> Result<(), StoreError> {
        let Some((old, _)) = &self.key else {
            return Err(StoreError::Key {
                path: self.path.clone(),
                reason: "the store is opened without a key (--insecure-plaintext); open it with a key first, which encrypts it".into(),
            });
        };
        let old = old.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (table, column) in SECRET_COLUMNS {
            // By rowid: oauth_clients holds a row per (server_key, issuer).
            let rows: Vec<(i64, String, Option<String>)> = tx
                .prepare(&format!("SELECT rowid, server_key, {column} FROM {table}"))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (rowid, server_key, stored) in rows {
                let Some(stored) = stored else { continue };
                let place = cipher::place(table, column, &server_key);
                let plain =
                    cipher::open(&old, &place, &stored).map_err(|_| StoreError::Undecryptable {
                        server_key: server_key.clone(),
                        column,
                    })?;
                tx.execute(
                    &format!("UPDATE {table} SET {column} = ?2 WHERE rowid = ?1"),
                    params![rowid, cipher::seal(&new, &place, &plain)],
                )?;
            }
        }
        tx.execute(
            "UPDATE oauth_meta SET value = ?1 WHERE name = 'key_check'",
            [cipher::seal(&new, &key_check_place(), KEY_CHECK)],
        )?;
        tx.commit()?;
        self.key = Some((new, new_source));
        Ok(())
    }

    /// A secret column's value as stored: sealed when the store has a key.
    fn hide(&self, column: &'static str, server_key: &str, value: Option<&str>) -> Option<String> {
        match &self.key {
            Some((key, _)) => seal_column(key, column, server_key, value),
            None => value.map(String::from),
        }
    }

    /// A secret column's value as used: opened when the file is encrypted, and registered
    /// with the log scrubber either way.
    fn reveal(
        &self,
        column: &'static str,
        server_key: &str,
        stored: Option<String>,
    ) -> Result<Option<String>, StoreError> {
        let Some(stored) = stored else {
            return Ok(None);
        };
        let plain = match (&self.key, self.encrypted) {
            (Some((key, _)), _) => {
                let table = table_of(column);
                cipher::open(key, &cipher::place(table, column, server_key), &stored).map_err(
                    |_| StoreError::Undecryptable {
                        server_key: server_key.to_string(),
                        column,
                    },
                )?
            }
            (None, true) => {
                return Err(StoreError::EncryptedNeedsKey {
                    path: self.path.clone(),
                });
            }
            (None, false) => stored,
        };
        crate::telemetry::secrets::register(&plain);
        Ok(Some(plain))
    }

    /// Changes whenever another connection commits to the database (SQLite's
    /// `PRAGMA data_version`): the cheap way to notice another process's writes.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// The kind (`refresh` or `login`) of a recorded flow.
    pub fn flow_kind(&self, flow_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT kind FROM oauth_flows WHERE flow_id = ?1",
                [flow_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Reads a server's token. Its times come from a file other processes write too, so they
    /// are made sane here, once, for every reader: `obtained_at` not before 1970 nor after now,
    /// `expires_at` at most `MAX_LIFETIME` from now.
    pub fn load_token(&self, server_key: &str) -> Result<Option<StoredToken>, StoreError> {
        let now = now_ms();
        let latest = now.saturating_add(crate::oauth::token::MAX_LIFETIME.as_millis() as i64);
        let row = self
            .conn
            .query_row(
                "SELECT server_key, server_name, server_url, resource, issuer, access_token, refresh_token, token_type, scope, expires_at, obtained_at, flow_id, dpop_key, dpop_jkt
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
                        expires_at: r.get::<_, Option<i64>>(9)?.map(|e| e.min(latest)),
                        obtained_at: r.get::<_, i64>(10)?.clamp(0, now),
                        flow_id: r.get(11)?,
                        dpop: match (r.get::<_, Option<String>>(12)?, r.get::<_, Option<String>>(13)?) {
                            (Some(private_key), Some(jkt)) => Some(StoredDpopKey { private_key, jkt }),
                            (None, None) => None,
                            _ => {
                                // Written half by hand, or by a build before migration 0006
                                // still running on this file: the token is used unbound.
                                tracing::warn!(server_key, "the stored token has only one of dpop_key and dpop_jkt; it is used without DPoP (a refresh a DPoP server refuses leads to a login)");
                                None
                            }
                        },
                    })
                },
            )
            .optional()?;
        let Some(mut token) = row else {
            return Ok(None);
        };
        let key = token.server_key.clone();
        token.access_token = self
            .reveal("access_token", &key, Some(token.access_token))?
            .unwrap_or_default();
        token.refresh_token = self.reveal("refresh_token", &key, token.refresh_token)?;
        if let Some(dpop) = &mut token.dpop {
            dpop.private_key = self
                .reveal(
                    "dpop_key",
                    &key,
                    Some(std::mem::take(&mut dpop.private_key)),
                )?
                .unwrap_or_default();
        }
        Ok(Some(token))
    }

    /// Writes a token durably (the transaction commits with `synchronous=FULL`).
    pub fn save_token(&mut self, t: &StoredToken) -> Result<(), StoreError> {
        let access = self.hide("access_token", &t.server_key, Some(&t.access_token));
        let refresh = self.hide("refresh_token", &t.server_key, t.refresh_token.as_deref());
        let dpop_key = self.hide(
            "dpop_key",
            &t.server_key,
            t.dpop.as_ref().map(|d| d.private_key.as_str()),
        );
        let dpop_jkt = t.dpop.as_ref().map(|d| d.jkt.as_str());
        write_tx(&mut self.conn, self.batched, |tx| {
            still_our_key(tx, &self.key, &self.path)?;
            tx.execute(
            "INSERT INTO oauth_tokens (server_key, server_name, server_url, resource, issuer, access_token, refresh_token, token_type, scope, expires_at, obtained_at, updated_at, flow_id, dpop_key, dpop_jkt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
             ON CONFLICT(server_key) DO UPDATE SET server_name = excluded.server_name, server_url = excluded.server_url,
               resource = excluded.resource, issuer = excluded.issuer, access_token = excluded.access_token,
               refresh_token = excluded.refresh_token, token_type = excluded.token_type, scope = excluded.scope,
               expires_at = excluded.expires_at, obtained_at = excluded.obtained_at, updated_at = excluded.updated_at,
               flow_id = excluded.flow_id, dpop_key = excluded.dpop_key, dpop_jkt = excluded.dpop_jkt",
            params![t.server_key, t.server_name, t.server_url, t.resource, t.issuer,
                    access, refresh, t.token_type, t.scope, t.expires_at, t.obtained_at, now_ms(), t.flow_id,
                    dpop_key, dpop_jkt],
        )?;
            Ok(())
        })
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

    /// The server's newest client identity (of the authorization server it last used).
    pub fn load_client(&self, server_key: &str) -> Result<Option<StoredClient>, StoreError> {
        self.query_client(
            "WHERE server_key = ?1 ORDER BY updated_at DESC, rowid DESC LIMIT 1",
            params![server_key],
        )
    }

    /// The server's client identity at the authorization server `issuer` (exact comparison).
    pub fn load_client_for(
        &self,
        server_key: &str,
        issuer: &str,
    ) -> Result<Option<StoredClient>, StoreError> {
        self.query_client(
            "WHERE server_key = ?1 AND issuer = ?2",
            params![server_key, issuer],
        )
    }

    /// The client a stored token is refreshed with: the one of the token's issuer; the newest
    /// one for a token that names no issuer (rows from before issuers were recorded) and
    /// without a token.
    pub fn client_for_token(
        &self,
        server_key: &str,
        token: Option<&StoredToken>,
    ) -> Result<Option<StoredClient>, StoreError> {
        match token.and_then(|t| t.issuer.as_deref()) {
            Some(issuer) => self.load_client_for(server_key, issuer),
            None => self.load_client(server_key),
        }
    }

    /// A server's token and the client it is refreshed with ([`Self::client_for_token`]).
    pub fn load_token_and_client(
        &self,
        server_key: &str,
    ) -> Result<(Option<StoredToken>, Option<StoredClient>), StoreError> {
        let token = self.load_token(server_key)?;
        let client = self.client_for_token(server_key, token.as_ref())?;
        Ok((token, client))
    }

    fn query_client(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<StoredClient>, StoreError> {
        self
            .conn
            .query_row(
                &format!("SELECT server_key, issuer, client_id, client_secret, token_endpoint_auth_method, source, redirect_uri, authorization_endpoint,
                        token_endpoint, revocation_endpoint, resource, iss_parameter_supported, registration_json
                 FROM oauth_clients {filter}"),
                params,
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
            .optional()?
            .map(|mut client| {
                client.client_secret = self.reveal(
                    "client_secret",
                    &client.server_key.clone(),
                    client.client_secret.take(),
                )?;
                Ok::<_, StoreError>(client)
            })
            .transpose()
    }

    pub fn save_client(&mut self, c: &StoredClient) -> Result<(), StoreError> {
        let now = now_ms();
        let secret = self.hide("client_secret", &c.server_key, c.client_secret.as_deref());
        write_tx(&mut self.conn, self.batched, |tx| {
            still_our_key(tx, &self.key, &self.path)?;
            tx.execute(
            "INSERT INTO oauth_clients (server_key, issuer, client_id, client_secret, token_endpoint_auth_method, source, redirect_uri,
               authorization_endpoint, token_endpoint, revocation_endpoint, resource, iss_parameter_supported, registration_json, registered_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
             ON CONFLICT(server_key, issuer) DO UPDATE SET client_id = excluded.client_id, client_secret = excluded.client_secret,
               token_endpoint_auth_method = excluded.token_endpoint_auth_method, source = excluded.source, redirect_uri = excluded.redirect_uri,
               authorization_endpoint = excluded.authorization_endpoint, token_endpoint = excluded.token_endpoint,
               revocation_endpoint = excluded.revocation_endpoint, resource = excluded.resource,
               iss_parameter_supported = excluded.iss_parameter_supported, registration_json = excluded.registration_json,
               updated_at = excluded.updated_at",
            params![c.server_key, c.issuer, c.client_id,
                    secret, c.token_endpoint_auth_method, c.source, c.redirect_uri,
                    c.authorization_endpoint, c.token_endpoint, c.revocation_endpoint, c.resource, c.iss_parameter_supported,
                    c.registration_json.as_deref().map(without_management_token), now],
        )?;
            Ok(())
        })
    }

    /// Runs `job` with a short busy timeout: flow history must not stall the registry (and
    /// every server behind it) while another process holds the write lock; tokens wait the
    /// full timeout.
    pub fn with_short_busy_timeout<R>(
        &mut self,
        job: impl FnOnce(&mut Self) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.conn
            .busy_timeout(std::time::Duration::from_millis(200))?;
        let result = job(self);
        self.conn.busy_timeout(std::time::Duration::from_secs(5))?;
        result
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
        self.count_flow();
        Ok(())
    }

    pub fn finish_flow(&mut self, flow_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        // The error may quote a server's text: known secrets never reach the table.
        let error = error.map(|e| crate::telemetry::secrets::scrub(e).into_owned());
        self.conn.execute(
            "UPDATE oauth_flows SET state = ?2, finished_at = ?3, lease_expires_at = NULL, error = ?4 WHERE flow_id = ?1",
            params![flow_id, state, now_ms(), error],
        )?;
        Ok(())
    }

    /// Closes, as `abandoned`, every `running` flow whose server's flow lock is free: the lock
    /// is held for a flow's whole life and the kernel releases it when its process dies, so a
    /// free lock means the owner is gone. The lock is held while the rows are closed, so a
    /// flow starting meanwhile cannot be taken for a stale one. Returns the flows closed.
    pub fn close_abandoned_flows(&mut self, lock_dir: &Path) -> Result<Vec<String>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT DISTINCT server_key FROM oauth_flows WHERE state = 'running' ORDER BY server_key",
        )?;
        let keys: Vec<String> = statement
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(statement);
        let mut closed = Vec::new();
        for key in keys {
            let Some(_lock) = super::lock::try_acquire(lock_dir, &key)? else {
                continue; // a live process runs this server's flow
            };
            let tx = self.conn.transaction()?;
            let ids: Vec<String> = tx
                .prepare(
                    "SELECT flow_id FROM oauth_flows WHERE state = 'running' AND server_key = ?1",
                )?
                .query_map([&key], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tx.execute(
                "UPDATE oauth_flows SET state = 'abandoned', finished_at = ?2, lease_expires_at = NULL,
                   error = 'its process ended before the flow finished (found at the next start)'
                 WHERE state = 'running' AND server_key = ?1",
                params![key, now_ms()],
            )?;
            tx.commit()?;
            closed.extend(ids);
        }
        Ok(closed)
    }

    /// Records a flow as running and reads what it starts from (the stored token, its client,
    /// whether a login wrote the token), in one registry job: one round trip instead of two.
    /// The flow row is written with a short busy timeout (history must not stall the
    /// registry); its failure is reported in `not_recorded`, and the reads still happen.
    pub fn begin_flow_and_read(
        &mut self,
        flow_id: &str,
        server_key: &str,
        server_name: &str,
        kind: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<FlowStart, StoreError> {
        let not_recorded = self
            .with_short_busy_timeout(|s| {
                s.begin_flow(flow_id, server_key, server_name, kind, owner, lease_ms)
            })
            .err()
            .map(|e| e.to_string());
        let (token, client) = self.load_token_and_client(server_key)?;
        let token_by_login = match token.as_ref().and_then(|t| t.flow_id.as_deref()) {
            Some(flow) => self.flow_kind(flow)?.as_deref() == Some("login"),
            None => false,
        };
        Ok(FlowStart {
            not_recorded,
            token,
            client,
            token_by_login,
        })
    }

    /// Saves a flow's result (the client, if given, and the token) and marks the flow
    /// succeeded, in one transaction: one commit (and one fsync) where there were two.
    pub fn save_and_finish(
        &mut self,
        token: &StoredToken,
        client: Option<&StoredClient>,
        flow_id: &str,
    ) -> Result<(), StoreError> {
        self.in_one_write(|s| {
            if let Some(client) = client {
                s.save_client(client)?;
            }
            s.save_token(token)?;
            s.finish_flow(flow_id, None)
        })
    }

    /// Runs `f` so that every write it makes commits together (or, inside a group, joins the
    /// group's transaction).
    fn in_one_write<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.batched {
            return f(self);
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.batched = true;
        let result = f(self);
        self.batched = false;
        match result {
            Ok(r) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(r),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Group commit: opens one write transaction, runs `jobs` each in its own savepoint (a
    /// failing job's writes are undone, the others stay), and commits once: one fsync for
    /// all. Each job keeps its own result; the `Err` here is the group's (the transaction did
    /// not begin, or did not commit): then nothing of any job was stored. Only writes belong
    /// in a group (a job must not open a transaction of its own).
    pub fn group_commit<'a>(
        &mut self,
        jobs: impl Iterator<Item = &'a mut dyn GroupJob>,
    ) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.batched = true;
        for job in jobs {
            if let Err(e) = self.conn.execute_batch("SAVEPOINT group_job") {
                self.batched = false;
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
            let ok = job.run(self);
            let end = if ok {
                "RELEASE group_job"
            } else {
                "ROLLBACK TO group_job; RELEASE group_job"
            };
            if let Err(e) = self.conn.execute_batch(end) {
                self.batched = false;
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        self.batched = false;
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        Ok(())
    }

    /// The flow history kept from now on (the next pruning step applies it).
    pub fn set_retention(&mut self, retention: FlowRetention) {
        self.retention = retention;
    }

    /// One bounded pruning step of `oauth_flows` (at most `retention.batch` rows, the oldest
    /// first): flows past `max_age` or beyond the newest `max_count` go; running flows and
    /// the flow that wrote a stored token stay. Returns the rows deleted.
    pub fn prune_flows(&mut self) -> Result<usize, StoreError> {
        self.flows_since_prune = 0;
        let r = self.retention;
        let oldest_kept =
            now_ms().saturating_sub(r.max_age.as_millis().min(i64::MAX as u128) as i64);
        let deleted = self.conn.execute(
            "DELETE FROM oauth_flows WHERE rowid IN (
               SELECT rowid FROM oauth_flows
               WHERE state != 'running'
                 AND (started_at < ?1
                      OR started_at < (SELECT started_at FROM oauth_flows ORDER BY started_at DESC LIMIT 1 OFFSET ?2))
                 AND flow_id NOT IN (SELECT flow_id FROM oauth_tokens WHERE flow_id IS NOT NULL)
               ORDER BY started_at LIMIT ?3)",
            params![oldest_kept, i64::from(r.max_count.max(1)) - 1, r.batch],
        )?;
        Ok(deleted)
    }

    /// `prune_flows` until nothing is left to delete, at most `steps` steps (at open: a
    /// history left long by an older build is trimmed, in bounded time).
    pub fn prune_flows_at_open(&mut self, steps: u32) -> Result<usize, StoreError> {
        let mut total = 0;
        for _ in 0..steps {
            let deleted = self.prune_flows()?;
            total += deleted;
            if deleted < self.retention.batch as usize {
                break;
            }
        }
        Ok(total)
    }

    /// Counts a recorded flow; every `every_flows` flows, one pruning step (a failure is a
    /// warning: only history is at stake, and the next step tries again).
    fn count_flow(&mut self) {
        self.flows_since_prune += 1;
        if self.batched || self.flows_since_prune < self.retention.every_flows {
            return;
        }
        match self.with_short_busy_timeout(|s| s.prune_flows()) {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "old flow history pruned"),
            Err(e) => tracing::warn!(error = %e, "old flow history could not be pruned now"),
        }
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
        let mut statement = self.conn.prepare_cached(RECENT_FLOWS_SQL)?;
        let rows = statement.query_map([limit], flow_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
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
        let rows = statement.query_map(params![server_name, flow_id, limit], flow_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn flow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlowRow> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file in the folder, to show that a refusal moved nothing.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A healthy store with one token, closed again.
    fn healthy(name: &str) -> PathBuf {
        let path = temp_dir(name).join("tokens.db");
        let mut store = TokenStore::open(&path).unwrap();
        store.save_token(&token("k1")).unwrap();
        drop(store);
        path
    }

    fn refused(path: &Path) -> String {
        match TokenStore::open(path) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn loose_existing_modes_are_tightened_and_a_quarantine_starts_private() {
        let path = healthy("loose");
        let dir = path.parent().unwrap().to_path_buf();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
        for companion in ["-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{companion}", path.display()));
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        drop(store);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&path, vec![0x5a; 8192]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert!(store.moved_aside.is_some(), "random bytes are quarantined");
        assert_eq!(
            (mode(&dir), mode(&path)),
            (0o700, 0o600),
            "after a quarantine"
        );
        for companion in ["-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{companion}", path.display()));
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn a_truncated_database_is_quarantined() {
        let path = healthy("truncated");
        // Checkpointed on close: the content is in the main file; keep its first page only.
        let bytes = fs::read(&path).unwrap();
        assert!(bytes.len() > 4096, "the database has more than one page");
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let store = TokenStore::open(&path).unwrap();
        let aside = store.moved_aside.clone().expect("moved aside");
        assert_eq!(fs::read(&aside).unwrap(), &bytes[..bytes.len() / 2]);
        assert!(store.load_token("k1").unwrap().is_none(), "a fresh store");
    }

    #[test]
    fn a_wal_that_is_a_directory_is_an_error_and_nothing_moves() {
        let path = healthy("waldir");
        let dir = path.parent().unwrap().to_path_buf();
        fs::create_dir(format!("{}-wal", path.display())).unwrap();
        let before = listing(&dir);
        let message = refused(&path);
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("-wal")
                && message.contains("nothing was moved"),
            "{message}"
        );
        assert_eq!(listing(&dir), before, "nothing moved");
        let read_only = TokenStore::open_read_only(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(read_only.contains("nothing was moved"), "{read_only}");
        assert_eq!(listing(&dir), before, "nothing moved");
        fs::remove_dir(format!("{}-wal", path.display())).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert!(
            store.load_token("k1").unwrap().is_some(),
            "the token survived"
        );
    }

    #[test]
    fn an_immutable_data_dir_is_an_error_and_nothing_moves() {
        let path = healthy("immutable");
        let dir = path.parent().unwrap().to_path_buf();
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .args([flag, dir.to_str().unwrap()])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !chattr("+i") {
            eprintln!(
                "SKIPPED: `chattr +i` does not work on {} (no chattr, or a file system without attributes)",
                dir.display()
            );
            return;
        }
        let before = listing(&dir);
        let message = refused(&path);
        let read_only = TokenStore::open_read_only(&path).map(|s| s.is_some());
        let after = listing(&dir);
        assert!(chattr("-i"), "chattr -i");
        assert!(
            message.contains(&path.display().to_string()) && message.contains("nothing was moved"),
            "{message}"
        );
        assert!(
            message.contains("read-only") || message.contains("chattr"),
            "{message}"
        );
        assert_eq!(after, before, "nothing moved");
        // Reading needs the -shm file, which an immutable folder cannot get; either way
        // nothing is moved and the message is clear.
        if let Err(e) = read_only {
            assert!(e.to_string().contains("nothing was moved"), "{e}");
        }
        assert!(
            TokenStore::open(&path)
                .unwrap()
                .load_token("k1")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_loose_mode_that_cannot_be_tightened_is_refused_with_the_fix() {
        let path = healthy("untightenable");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .args([flag, path.to_str().unwrap()])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !chattr("+i") {
            eprintln!("SKIPPED: `chattr +i` does not work on {}", path.display());
            return;
        }
        let message = match TokenStore::open(&path) {
            Ok(_) => "opened".to_string(),
            Err(e) => e.to_string(),
        };
        let read_only = TokenStore::open_read_only(&path).map(|s| s.is_some());
        assert!(chattr("-i"), "chattr -i");
        assert!(
            message.contains(&format!("{} is mode 0644", path.display()))
                && message.contains("cannot be restricted to 0600")
                && message.contains("chmod 600"),
            "{message}"
        );
        assert!(
            matches!(read_only, Ok(true)),
            "reading goes on with a warning: {read_only:?}"
        );
        drop(TokenStore::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600, "tightened once it can be");
    }

    #[test]
    fn a_database_locked_by_another_connection_is_an_error_and_nothing_moves() {
        let path = temp_dir("locked").join("tokens.db");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let before = listing(path.parent().unwrap());
        let message = refused(&path);
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("another process holds a lock")
                && message.contains("nothing was moved"),
            "{message}"
        );
        assert_eq!(listing(path.parent().unwrap()), before, "nothing moved");
        other.execute_batch("ROLLBACK").unwrap();
        drop(other);
        assert_eq!(
            TokenStore::open(&path).unwrap().schema_version().unwrap(),
            MIGRATIONS.len() as i64
        );
    }

    /// A store as a build that knew only migration 0001 left it, with one token.
    fn version_1_store(name: &str) -> PathBuf {
        let path = temp_dir(name).join("tokens.db");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO oauth_tokens (server_key, server_name, server_url, access_token, obtained_at, updated_at, expires_at) VALUES ('k1', 'srv', 'u', 'at-secret', 1, 1, 2)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO oauth_clients (server_key, issuer, client_id, token_endpoint_auth_method, source, redirect_uri, authorization_endpoint, token_endpoint, resource, registered_at, updated_at)
             VALUES ('k1', 'https://as', 'cid-v1', 'none', 'registered', 'r', 'https://as/authorize', 'https://as/token', 'u', 1, 1)",
            [],
        )
        .unwrap();
        path
    }

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
            message.contains("another process holds a lock")
                && message.contains("nothing was moved"),
            "{message}"
        );
        assert_eq!(listing(path.parent().unwrap()), before, "nothing moved");
        other.execute_batch("ROLLBACK").unwrap();
        drop(TokenStore::open(&path).unwrap());
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let store = TokenStore::open(&path).expect("an up-to-date store opens under a held lock");
        assert!(store.load_token("k1").unwrap().is_some(), "and reads");
    }

    #[tokio::test]
    async fn running_flows_with_a_free_lock_are_closed_as_abandoned() {
        let path = temp_dir("abandoned").join("tokens.db");
        let locks = crate::store::lock::lock_dir_beside(&path);
        let mut store = TokenStore::open(&path).unwrap();
        store
            .begin_flow("dead", "a_1", "a", "login", "pid 1", 60_000)
            .unwrap();
        store
            .begin_flow("alive", "b_1", "b", "refresh", "pid 2", 60_000)
            .unwrap();
        store
            .begin_flow("done", "a_1", "a", "refresh", "pid 1", 60_000)
            .unwrap();
        store.finish_flow("done", None).unwrap();
        let held = crate::store::lock::acquire(&locks, "b_1", std::time::Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(store.close_abandoned_flows(&locks).unwrap(), ["dead"]);
        let states: Vec<(String, String)> = store
            .recent_flows(10)
            .unwrap()
            .into_iter()
            .map(|f| (f.flow_id, f.state))
            .collect();
        assert!(
            states.contains(&("dead".into(), "abandoned".into())),
            "{states:?}"
        );
        assert!(
            states.contains(&("alive".into(), "running".into())),
            "its lock is held: {states:?}"
        );
        assert!(
            states.contains(&("done".into(), "succeeded".into())),
            "{states:?}"
        );
        drop(held);
        // A process forked by a concurrent test holds a duplicate of every open descriptor,
        // the lock's too, until its exec closes them: wait for that (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let closed = loop {
            let closed = store.close_abandoned_flows(&locks).unwrap();
            if !closed.is_empty() || std::time::Instant::now() > deadline {
                break closed;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(closed, ["alive"]);
    }

    /// A small tmpfs mounted for one test, unmounted when dropped (needs root).
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(name: &str) -> Option<SmallDisk> {
            let dir = temp_dir(name);
            fs::create_dir_all(&dir).unwrap();
            let mounted = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    "size=512k",
                    "tmpfs",
                    dir.to_str().unwrap(),
                ])
                .status()
                .is_ok_and(|s| s.success());
            mounted.then_some(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn a_full_disk_is_an_error_and_nothing_moves() {
        let Some(disk) = SmallDisk::mount("full") else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root, or no mount permission)");
            return;
        };
        let path = disk.0.join("data").join("tokens.db");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A store one migration behind, so opening it must write.
        let v1 = version_1_store("full-source");
        fs::copy(&v1, &path).unwrap();
        let filler = disk.0.join("filler");
        {
            use std::io::Write;
            let mut file = fs::File::create(&filler).unwrap();
            while file.write_all(&[0u8; 4096]).is_ok() {}
        }
        let bytes = fs::read(&path).unwrap();
        let message = refused(&path);
        assert!(
            message.contains(&path.display().to_string()) && message.contains("nothing was moved"),
            "{message}"
        );
        assert!(
            message.contains("disk is full") || message.contains("disk may be full"),
            "{message}"
        );
        // SQLite may have created empty -wal/-shm files; nothing was moved or changed.
        let names = listing(path.parent().unwrap());
        assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "the database is untouched");
        fs::remove_file(&filler).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert!(
            store.load_token("k1").unwrap().is_some(),
            "the token survived"
        );
    }

    #[test]
    fn a_foreign_or_half_migrated_schema_is_refused_briefly() {
        let path = temp_dir("foreign").join("tokens.db");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE recipes (id INTEGER PRIMARY KEY); PRAGMA user_version = 1;",
            )
            .unwrap();
        let message = refused(&path);
        assert!(
            message.contains("is not an mcpproxy-oauth token database")
                && message.contains("no oauth_clients"),
            "{message}"
        );
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 0)
            .unwrap();
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
        Connection::open(&half)
            .unwrap()
            .pragma_update(None, "user_version", 0)
            .unwrap();
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
    fn read_only_opens_create_nothing_and_report_corruption_without_moving() {
        let path = temp_dir("readonly").join("tokens.db");
        assert!(TokenStore::open_read_only(&path).unwrap().is_none());
        assert!(!path.exists(), "nothing created");
        let path = healthy("readonly-ok");
        let store = TokenStore::open_read_only(&path).unwrap().expect("opens");
        assert_eq!(store.token_status().unwrap().len(), 1);
        drop(store);
        fs::write(&path, b"garbage garbage garbage garbage").unwrap();
        let before = listing(path.parent().unwrap());
        let message = TokenStore::open_read_only(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            message.contains("corrupt") && message.contains("nothing was moved"),
            "{message}"
        );
        assert_eq!(listing(path.parent().unwrap()), before);
    }

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
            dpop: None,
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
    fn absurd_stored_times_are_read_back_sane() {
        let path = temp_dir("absurd").join("tokens.db");
        let mut store = TokenStore::open(&path).unwrap();
        store
            .save_token(&StoredToken {
                expires_at: Some(i64::MAX),
                obtained_at: i64::MIN,
                ..token("k")
            })
            .unwrap();
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
