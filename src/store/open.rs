//! Opening the token database safely: which failures are corruption (the file may be moved
//! aside) and which are not (the file, the cause and the fix; nothing moved), and the
//! file-level steps around SQLite (creating the database 0600 before SQLite does, moving a
//! corrupt one aside). `TokenStore::open` (token_store.rs) drives these steps; whether a file
//! is ours at all is the schema's question (migrations.rs).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::perms;
use crate::clock::now_ms;

/// How long a statement waits for another connection's lock before it is an error.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Access {
    ReadWrite,
    ReadOnly,
}

/// Why an open failed. Only `Corrupt` lets the file be moved aside: any other failure says
/// nothing about the file's content, and moving a healthy database would cost every login.
pub(super) enum OpenFailure {
    /// SQLITE_NOTADB, SQLITE_CORRUPT, or a failed `quick_check`.
    Corrupt(String),
    /// SQLite kept another journal mode (WAL needs shared memory beside the file).
    NoWal(String),
    /// Anything else: busy, full, I/O, read-only, cannot open a companion file.
    Other {
        step: &'static str,
        error: rusqlite::Error,
    },
}

impl OpenFailure {
    pub(super) fn classify(step: &'static str, error: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match error.sqlite_error_code() {
            Some(NotADatabase | DatabaseCorrupt) => OpenFailure::Corrupt(short_cause(&error)),
            _ => OpenFailure::Other { step, error },
        }
    }

    /// The cause and the fix, for an error that names the file; nothing was moved.
    pub(super) fn explain(&self, path: &Path) -> String {
        use rusqlite::ErrorCode as C;
        let (step, error) = match self {
            OpenFailure::Corrupt(detail) => {
                return format!(
                    "it is corrupt ({detail}) even after a fresh start; check the disk"
                );
            }
            OpenFailure::NoWal(mode) => {
                return format!(
                    "SQLite kept journal mode {mode} instead of wal (the folder must allow shared \
                     memory files: not a network or read-only file system); nothing was moved: \
                     choose another --data-dir"
                );
            }
            OpenFailure::Other { step, error } => (step, error),
        };
        let p = path.display();
        let dir = folder_of(path).display();
        let fix = match error.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => format!(
                "another process holds a lock on it (waited {} s); stop that process or wait for \
                 it (`fuser {p}` shows it), then retry",
                BUSY_TIMEOUT.as_secs()
            ),
            Some(C::DiskFull) => {
                format!("the disk is full; free space where {dir} lives, then retry")
            }
            Some(C::ReadOnly) => format!(
                "the database or its folder is read-only (an immutable file or folder, a read-only \
                 mount, another owner); make {dir} and its files writable (`lsattr -d {dir}`, \
                 `chattr -i`, remount) or choose another --data-dir"
            ),
            Some(C::CannotOpen) | Some(C::PermissionDenied) => format!(
                "SQLite cannot open it or its companion files {p}-wal and {p}-shm; they must be \
                 regular files this user can read and write, in a folder this user can write (not \
                 read-only or immutable: `lsattr -d {dir}`, `chattr -i`, remount), or choose \
                 another --data-dir"
            ),
            Some(C::SystemIoFailure) => format!(
                "an I/O error: the disk may be full (`df {dir}`: a full disk shows up as an I/O \
                 error on {p}-shm), or {p}-wal and {p}-shm are not regular files this user can \
                 read and write, or the disk is failing"
            ),
            _ => "see the cause; fix it or choose another --data-dir".to_string(),
        };
        format!(
            "{step} failed ({}): {fix}; nothing was moved",
            short_cause(error)
        )
    }
}

/// SQLite's own words for an error, without any SQL text the error may carry.
pub(super) fn short_cause(error: &rusqlite::Error) -> String {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => match message {
            Some(message) => format!("{message}, code {}", code.extended_code),
            None => format!("{code}"),
        },
        rusqlite::Error::SqlInputError { error, msg, .. } => {
            format!("{msg}, code {}", error.extended_code)
        }
        other => other.to_string(),
    }
}

pub(super) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The database and the files SQLite keeps beside it.
pub(super) fn with_companions(path: &Path) -> [PathBuf; 3] {
    [
        path.to_path_buf(),
        PathBuf::from(format!("{}-wal", path.display())),
        PathBuf::from(format!("{}-shm", path.display())),
    ]
}

/// Creates the database file 0600 before SQLite does (SQLite gives -wal and -shm the mode of
/// the database), and checks that an existing one can be opened for reading and writing.
pub(super) fn create_private(path: &Path) -> Result<(), String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(perms::FILE_MODE)
        .open(path)
        .map(drop)
        .map_err(|e| {
            format!("{e}; make it readable and writable by this user, or choose another --data-dir")
        })
}

/// Renames the database (and its -wal/-shm files) to `<name>.corrupt-<ms>`; nothing is deleted.
pub(super) fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
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
