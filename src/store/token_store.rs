//! `TokenStore`: the one connection to the token database, and the open sequence (the checks
//! before any change, the data directory's hold, modes, pragmas, integrity, schema check,
//! migrations, sealing; the steps live in `preflight`, `holder`, `open`, `perms`,
//! `migrations` and `sealing`). The queries are in the rooms beside it (`tokens`, `clients`,
//! `flow_history`, `group_commit`). Only the `TokenRegistry` actor's thread touches a
//! `TokenStore`.
//!
//! Durability: WAL with `synchronous=FULL`, so a token (and a rotated refresh token) is on disk
//! when `save_token` returns; a lost rotated refresh token would force a login. Only a corrupt
//! file is moved aside (nothing is deleted) and the store starts empty; any other failure is an
//! error naming the file, the cause and the fix, with nothing moved.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::cipher::StoreKey;
use super::error::StoreError;
use super::holder::{self, Hold, Holding};
use super::keys::{KeySource, Sealing};
use super::migrations::{checked_version, migrate};
use super::model::FlowRetention;
use super::open::{
    Access, BUSY_TIMEOUT, OpenFailure, create_private, folder_of, move_aside, with_companions,
};
use super::perms;
use super::preflight::{check_before_changes, check_schema_first};
use super::sealing::Seal;

pub struct TokenStore {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    /// How the secret columns are sealed: the key in use, whether the file is encrypted.
    pub(super) seal: Seal,
    /// Where a corrupt database was moved at open, if it was.
    pub moved_aside: Option<PathBuf>,
    /// Inside a group commit: writes join the group's transaction.
    pub(super) batched: bool,
    pub(super) retention: FlowRetention,
    /// Flows recorded since the last pruning step.
    pub(super) flows_since_prune: u32,
    /// The data directory's hold (see `holder`), for as long as this store lives.
    hold: Option<Holding>,
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
    /// key, and nothing is changed when it is missing or wrong. A foreign, half-migrated or
    /// newer file is refused before anything changes too. Holds the data directory shared
    /// (beside other daemons and commands) while the store lives.
    pub fn open_with(path: &Path, sealing: &Sealing) -> Result<Self, StoreError> {
        Self::open_held(path, sealing, Hold::Shared)
    }

    /// `open_with`, alone: refused, with nothing changed, while another process has the
    /// database open for writing (a daemon, an `auth` command: they keep the key in memory).
    /// For `tokens rekey`.
    pub fn open_alone(path: &Path, sealing: &Sealing) -> Result<Self, StoreError> {
        Self::open_held(path, sealing, Hold::Alone)
    }

    /// Checks first (a refused file is left as it was), then opens; the hold is taken before
    /// anything changes for a store alone, and before the key is read for a shared one (a
    /// rekey is either over or has not begun: the key read matches the file's).
    fn open_held(path: &Path, sealing: &Sealing, how: Hold) -> Result<Self, StoreError> {
        check_before_changes(path, sealing)?;
        let alone = match how {
            Hold::Alone => Some(holder::hold(path, how)?),
            Hold::Shared => None,
        };
        let mut store = Self::open_unsealed(path)?;
        store.hold = Some(match alone {
            Some(holding) => holding,
            None => holder::hold(path, how)?,
        });
        store.seal = Seal::apply(&mut store.conn, &store.path, sealing)?;
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
                        "it is corrupt ({detail}) and could not be moved aside: {e}; move it \
                         away by hand (servers then log in again)"
                    ))
                })?;
                tracing::error!(
                    path = %path.display(), moved_to = %aside.display(), detail = %detail,
                    "the token database is corrupt; it was moved aside and an empty one started: \
                     servers need to log in again"
                );
                create_private(path).map_err(unusable)?;
                let mut store = Self::open_checked(path, Access::ReadWrite)
                    .map_err(|f| unusable(f.explain(path)))?;
                store.moved_aside = Some(aside);
                store
            }
            Err(failure) => return Err(unusable(failure.explain(path))),
        };
        migrate(&mut store.conn, path)?;
        // SQLite created -wal and -shm with the database's mode; make sure of it.
        for file in with_companions(path) {
            private(perms::private_file(&file))?;
        }
        Ok(store)
    }

    /// Opens an existing database read-only, for commands that only look (`auth status`,
    /// `logs flows`): no migration, nothing created or moved (a corrupt file is reported, and
    /// moved aside by the next read-write open). `None` when there is no database yet. A mode
    /// that cannot be tightened is a warning here: reading does not expose anything new. Modes
    /// are looked at once the file is known to be ours: a foreign file is left as it was.
    pub fn open_read_only(path: &Path) -> Result<Option<Self>, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            return Ok(None);
        }
        check_schema_first(path)?;
        let warn = |r: Result<(), perms::ModeError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "a token file keeps a loose mode");
            }
        };
        let mut store = match Self::open_checked(path, Access::ReadOnly) {
            Ok(store) => store,
            Err(OpenFailure::Corrupt(detail)) => {
                return Err(unusable(format!(
                    "it is corrupt ({detail}); nothing was moved: the next `serve` or `auth \
                     login` moves it aside (servers then log in again)"
                )));
            }
            Err(failure) => return Err(unusable(failure.explain(path))),
        };
        let version = checked_version(&mut store.conn, path)?;
        warn(perms::private_dir(folder_of(path)));
        for file in with_companions(path) {
            warn(perms::private_file(&file));
        }
        store.seal = Seal::read_only(&store.conn)?;
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
        // The refresh path's statements (reads, upserts, flow rows, transaction control)
        // all stay prepared: parsing them per refresh was a tenth of its CPU.
        conn.set_prepared_statement_cache_capacity(32);
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
            seal: Seal::unknown(),
            moved_aside: None,
            batched: false,
            retention: FlowRetention::default(),
            flows_since_prune: 0,
            hold: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds sealed secrets.
    pub fn is_encrypted(&self) -> bool {
        self.seal.is_encrypted()
    }

    /// Where the key in use came from (`None`: plain text).
    pub fn key_source(&self) -> Option<&KeySource> {
        self.seal.key_source()
    }

    /// Re-seals every secret with `new` in one transaction, then uses it. A value that does
    /// not open with the current key stops the rekey with nothing changed.
    pub fn rekey(&mut self, new: StoreKey, new_source: KeySource) -> Result<(), StoreError> {
        self.seal.rekey(&mut self.conn, &self.path, new, new_source)
    }

    /// Changes whenever another connection commits to the database (SQLite's
    /// `PRAGMA data_version`): the cheap way to notice another process's writes.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Runs `job`, its writes committed without an fsync of their own: WAL with
    /// `synchronous=NORMAL` for its commit, then `FULL` again. Such a commit is visible to
    /// every connection at once and survives the process's crash (it is in the WAL file);
    /// only a crash of the machine may lose it, and only until the next `FULL` commit of any
    /// write: that commit's fsync covers the WAL file up to it, earlier frames included, so
    /// what `job` wrote becomes durable with it, in order. For history that nothing reads as
    /// a promise (a flow's start, see `begin_flow_and_read`), never for a token. Inside a
    /// group commit `job` simply joins the group (whose commit is `FULL`).
    pub(super) fn without_own_fsync<R>(
        &mut self,
        job: impl FnOnce(&mut Self) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        use super::group_commit::cached;
        let own_commit = !self.batched;
        if own_commit {
            cached(&self.conn, "PRAGMA synchronous=NORMAL")?;
        }
        let result = job(self);
        // Every later write relies on FULL: failing to restore it is this call's failure.
        if own_commit {
            cached(&self.conn, "PRAGMA synchronous=FULL")?;
        }
        result
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
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        result
    }
}
