//! What an open checks before it changes anything: a database already there is ours, at a
//! schema version this build knows, and (for a read-write open) the key it was encrypted with
//! is at hand, or no key is needed. A file refused here is left exactly as it was: no mode
//! tightened, no switch to WAL, no migration, no key file created or re-moded, no file added
//! beside it. Only reads: while no `-wal` or `-shm` file is beside it (no process has it
//! open), SQLite reads it as immutable, which creates nothing; otherwise read-only, beside the
//! companions that are there already.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::error::StoreError;
use super::keys::{self, Sealing, Tighten};
use super::migrations::checked_version;
use super::open::{BUSY_TIMEOUT, with_companions};
use super::sealing::{read_key_check, verify_key};

/// Refuses, with nothing changed, a database at `path` that is foreign, half migrated, newer
/// than this build, or encrypted with another key than `sealing` finds (or with none at hand).
/// Anything this look cannot read (a corrupt file, a busy or unreadable one) is left to the
/// open that follows, which says what it is (and moves only real corruption aside).
pub(super) fn check_before_changes(path: &Path, sealing: &Sealing) -> Result<(), StoreError> {
    let Some(conn) = look(path)? else {
        return Ok(());
    };
    let Ok(check) = read_key_check(&conn) else {
        return Ok(());
    };
    let spec = match (sealing, &check) {
        (Sealing::Plaintext, Some(_)) => {
            return Err(StoreError::EncryptedNeedsKey {
                path: path.to_path_buf(),
            });
        }
        (Sealing::Plaintext, None) => return Ok(()),
        (Sealing::Encrypted(spec), _) => spec,
    };
    let key_error = |reason: String| StoreError::Key {
        path: path.to_path_buf(),
        reason,
    };
    match (keys::existing(spec, path, Tighten::No), check) {
        // A key file this user cannot read is a matter of the file system, the open's to
        // report after its own checks (a mode it cannot fix is said first).
        (Some(Err(keys::KeyError::Unreadable { .. })), _) => Ok(()),
        (Some(Err(unusable)), _) => Err(key_error(unusable.to_string())),
        (Some(Ok((key, source))), Some(check)) => verify_key(path, &key, &source, &check),
        (None, Some(_)) => Err(key_error(
            keys::KeyError::Missing {
                looked: format!("the key file {}", keys::key_file_for(spec, path).display()),
            }
            .to_string(),
        )),
        // Plain text: the open encrypts it in place with this key, or a new one.
        (_, None) => Ok(()),
    }
}

/// The schema check alone, before a read-only open (which needs no key): a refused file gets
/// no `-wal` or `-shm` beside it.
pub(super) fn check_schema_first(path: &Path) -> Result<(), StoreError> {
    look(path).map(drop)
}

/// A connection to the database at `path` that changes nothing, once its schema passed
/// `checked_version`; `None` when there is nothing to look at or it cannot be read here.
fn look(path: &Path) -> Result<Option<Connection>, StoreError> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        return Ok(None); // nothing there yet (or an empty file a start is creating)
    }
    let [_, wal, shm] = with_companions(path);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let opened = if wal.exists() || shm.exists() {
        Connection::open_with_flags(path, flags)
    } else {
        Connection::open_with_flags(immutable_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)
    };
    let Ok(mut conn) = opened else {
        return Ok(None);
    };
    if conn.busy_timeout(BUSY_TIMEOUT).is_err() {
        return Ok(None);
    }
    match checked_version(&mut conn, path) {
        Ok(_) => Ok(Some(conn)),
        Err(StoreError::Sqlite(_)) => Ok(None),
        Err(refused) => Err(refused),
    }
}

/// `file:PATH?immutable=1`, the path percent-encoded (a `?`, `#` or `%` in a folder's name
/// must not end it).
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(byte as char);
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_immutable_uri_keeps_any_path_whole() {
        assert_eq!(
            immutable_uri(Path::new("/d/a b?c#%é/tokens.db")),
            "file:/d/a%20b%3Fc%23%25%C3%A9/tokens.db?immutable=1"
        );
    }
}
