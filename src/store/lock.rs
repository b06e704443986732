//! The cross-process flow lock: an OS file lock per server beside the database, held for the
//! whole flow. The kernel releases it if the process dies, so a crash never wedges a server;
//! two handles in one process conflict too, which keeps it testable in one test binary.
//! The folder is kept 0700 and the files 0600 (see `perms`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

use super::error::StoreError;
use super::perms;

/// Held while it lives; dropping it releases the lock.
pub struct FlowLock {
    _file: File,
}

/// How often a waiting process looks at the lock again.
const POLL: Duration = Duration::from_millis(25);

/// The lock file of a server: named from a hash of its `server_key` only. The key starts with
/// the server's name as written in the config, which may hold `/`, `..` or anything else a
/// file name cannot; the hash keeps every lock file inside `lock_dir`, for any name.
pub fn lock_path(lock_dir: &Path, server_key: &str) -> PathBuf {
    let digest = Sha256::digest(server_key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    lock_dir.join(format!("{hex}.lock"))
}

/// The lock file of `server_key`, opened (created 0600 in a 0700 folder), not locked yet.
fn open_lock_file(lock_dir: &Path, server_key: &str) -> Result<(File, PathBuf), StoreError> {
    let unusable = |reason: String| StoreError::Unusable {
        path: lock_dir.to_path_buf(),
        reason,
    };
    perms::private_dir(lock_dir).map_err(|e| unusable(e.to_string()))?;
    let path = lock_path(lock_dir, server_key);
    let file = perms::open_private_file(&path).map_err(|e| unusable(e.to_string()))?;
    Ok((file, path))
}

/// Takes the flow lock of `server_key` if it is free right now; `None` if another holds it.
pub fn try_acquire(lock_dir: &Path, server_key: &str) -> Result<Option<FlowLock>, StoreError> {
    let (file, path) = open_lock_file(lock_dir, server_key)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(FlowLock { _file: file })),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(StoreError::Unusable {
            path: lock_dir.to_path_buf(),
            reason: format!("cannot lock {}: {e}", path.display()),
        }),
    }
}

/// The lock folder beside a database: `DATA_DIR/locks` for `DATA_DIR/tokens.db`. The
/// supervisor builds the same path from its data dir; both must name one folder.
pub fn lock_dir_beside(database: &Path) -> PathBuf {
    database
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("locks")
}

/// Takes the flow lock of `server_key`, waiting at most `wait`.
pub async fn acquire(
    lock_dir: &Path,
    server_key: &str,
    wait: Duration,
) -> Result<FlowLock, StoreError> {
    let (file, path) = open_lock_file(lock_dir, server_key)?;
    let unusable = |reason: String| StoreError::Unusable {
        path: lock_dir.to_path_buf(),
        reason,
    };
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(FlowLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                tokio::time::sleep(POLL).await
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::LockTimeout {
                    server_key: server_key.into(),
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(unusable(format!("cannot lock {}: {e}", path.display())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_stay_in_the_lock_folder_for_any_name() {
        let dir = Path::new("/data/locks");
        for key in [
            "../../x_0123456789abcdef",
            "/abs_0123456789abcdef",
            "org/server_01",
            "srv_1",
        ] {
            let path = lock_path(dir, key);
            assert_eq!(path.parent(), Some(dir), "{key} -> {}", path.display());
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(name.len() == 37 && name.ends_with(".lock"), "{name}");
            assert!(name[..32].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        }
        assert_ne!(
            lock_path(dir, "a_1"),
            lock_path(dir, "a_2"),
            "one file per server"
        );
    }

    #[tokio::test]
    async fn a_held_lock_blocks_another_holder_until_released() {
        let dir = std::env::temp_dir().join(format!("mcpproxy-oauth-lock-{}", std::process::id()));
        let first = acquire(&dir, "srv_1", Duration::from_millis(10))
            .await
            .unwrap();
        let blocked = acquire(&dir, "srv_1", Duration::from_millis(60)).await;
        assert!(matches!(blocked, Err(StoreError::LockTimeout { .. })));
        let other_server = acquire(&dir, "srv_2", Duration::from_millis(10)).await;
        assert!(other_server.is_ok(), "locks are per server");
        drop(first);
        // Bounded, not instant: a process forked by a concurrent test keeps a duplicate of the
        // lock's descriptor until its exec.
        assert!(acquire(&dir, "srv_1", Duration::from_secs(5)).await.is_ok());
    }
}
