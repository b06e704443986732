//! The ballast: a few MiB of real blocks (`DATA_DIR/.ballast`) kept in the data directory so
//! that a full disk can still take the save of a rotated refresh token. Without it, a full
//! disk leaves the newest refresh token in memory only; a crash then leaves the database with
//! one the server has rotated away, and servers that detect reuse revoke the whole family.
//!
//! The registry holds one `Ballast` and runs each group commit through [`Ballast::write`]:
//! before the write, when less than [`LOW_WATER`] is free on the disk, the ballast is deleted
//! (so the write has room); when the write fails for a full disk anyway, it is deleted too (the
//! flow's save retry then has room). It is re-created at the next start, or after a write once
//! the disk has room again. Deleting it by hand is safe: it holds nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::StoreError;
use super::perms;

/// The ballast's name in the data directory.
pub const BALLAST_FILE: &str = ".ballast";
/// Its size: room for hundreds of token saves (a save writes a few 4 KiB pages to the WAL).
pub const BALLAST_BYTES: u64 = 4 << 20;
/// Below this much free space, the ballast is released before a write.
pub const LOW_WATER: u64 = 1 << 20;
/// Free space needed to re-create it after a release: its size and room to spare, so that
/// it is not created and released again at every write of a nearly full disk.
const ROOM_TO_RECREATE: u64 = 4 * BALLAST_BYTES;

/// The data directory's ballast, as the registry thread keeps it.
pub(super) struct Ballast {
    path: PathBuf,
    /// Whether the file is there, at its full size, as far as this process knows.
    held: bool,
}

impl Ballast {
    /// The ballast of the data directory `dir`, created (or completed) if missing. A ballast
    /// that cannot be created is a warning, once: tokens are saved as before without it.
    pub(super) fn keep(dir: &Path) -> Ballast {
        let mut ballast = Ballast {
            path: dir.join(BALLAST_FILE),
            held: false,
        };
        if let Err(e) = ballast.create() {
            tracing::warn!(
                path = %ballast.path.display(), error = %e,
                "the ballast (a {} MiB reserve that lets a full disk still take token saves) \
                 could not be created; tokens are saved as before, without that reserve: free \
                 space in {} (`df {}`)",
                BALLAST_BYTES >> 20, dir.display(), dir.display()
            );
        }
        ballast
    }

    /// Runs `write` (a group commit) with the ballast's room behind it: released first when
    /// the disk is nearly full, released after a write that failed for a full disk, created
    /// again after a write once the disk has room.
    pub(super) fn write<R>(
        &mut self,
        write: impl FnOnce() -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let free = self.free_bytes();
        if self.held && free.is_some_and(|f| f < LOW_WATER) {
            self.release(free);
        }
        let result = write();
        match &result {
            Err(e) if self.held && self.disk_full(e) => self.release(self.free_bytes()),
            Ok(_) if !self.held && self.free_bytes().is_some_and(|f| f >= ROOM_TO_RECREATE) => {
                match self.create() {
                    Ok(()) => tracing::info!(
                        path = %self.path.display(),
                        "the disk has room again: the ballast was re-created"
                    ),
                    // Whatever took the room back, the next write tries again.
                    Err(e) => tracing::debug!(error = %e, "the ballast could not be re-created"),
                }
            }
            _ => {}
        }
        result
    }

    /// Creates the file (0600) with real blocks: `fallocate`, or zeros written where the file
    /// system does not allocate (never a sparse file, which would free nothing).
    fn create(&mut self) -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(perms::FILE_MODE)
            .open(&self.path)?;
        let written = allocate(&file).or_else(|_| {
            let have = file.metadata()?.len().min(BALLAST_BYTES);
            let zeros = vec![0u8; 64 << 10];
            let mut left = BALLAST_BYTES - have;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(have))?;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            Ok::<(), std::io::Error>(())
        });
        if let Err(e) = written.and_then(|()| file.sync_all()) {
            // A partial ballast reserves too little to count on; its blocks go back.
            drop(file);
            let _ = std::fs::remove_file(&self.path);
            return Err(e);
        }
        self.held = true;
        Ok(())
    }

    fn release(&mut self, free: Option<u64>) {
        self.held = false;
        let dir = super::open::folder_of(&self.path).display().to_string();
        let free = free.map_or("unknown".to_string(), |f| format!("{f}"));
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::warn!(
                path = %self.path.display(), free_bytes = %free,
                "the disk holding the token database ({dir}) is full: its ballast ({} MiB) \
                 was released so that rotated refresh tokens can still be saved; free space \
                 there now (`df {dir}`): until then, a refresh whose save fails keeps its token \
                 in memory only. The ballast is re-created once there is room",
                BALLAST_BYTES >> 20
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::warn!(
                path = %self.path.display(), free_bytes = %free,
                "the disk holding the token database ({dir}) is full, and its ballast was \
                 already gone (deleted by hand?); free space there now (`df {dir}`)"
            ),
            Err(e) => tracing::warn!(
                path = %self.path.display(), free_bytes = %free, error = %e,
                "the disk holding the token database ({dir}) is full, and its ballast could \
                 not be released; free space there now (`df {dir}`)"
            ),
        }
    }

    /// Whether `e` says the disk is full: SQLITE_FULL, or an I/O error (a full disk shows up
    /// as one on the `-shm` file) while the disk has less than `LOW_WATER` free.
    fn disk_full(&self, e: &StoreError) -> bool {
        use rusqlite::ErrorCode::{DiskFull, SystemIoFailure};
        let StoreError::Sqlite(e) = e else {
            return false;
        };
        match e.sqlite_error_code() {
            Some(DiskFull) => true,
            Some(SystemIoFailure) => self.free_bytes().is_some_and(|f| f < LOW_WATER),
            _ => false,
        }
    }

    /// Bytes this user may still write on the disk of the data directory (`None`: unknown).
    fn free_bytes(&self) -> Option<u64> {
        free_bytes(super::open::folder_of(&self.path))
    }
}

#[cfg(target_os = "linux")]
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(not(target_os = "linux"))]
fn free_bytes(_: &Path) -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn allocate(file: &std::fs::File) -> std::io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    Ok(fallocate(file, FallocateFlags::empty(), 0, BALLAST_BYTES)?)
}

#[cfg(not(target_os = "linux"))]
fn allocate(_: &std::fs::File) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ballast-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn full() -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        ))
    }

    #[test]
    fn it_is_created_with_real_blocks_and_private() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = dir();
        let ballast = Ballast::keep(&dir);
        assert!(ballast.held);
        let meta = std::fs::metadata(dir.join(BALLAST_FILE)).unwrap();
        assert_eq!(meta.len(), BALLAST_BYTES);
        assert!(
            meta.blocks() * 512 >= BALLAST_BYTES,
            "not sparse: {} blocks",
            meta.blocks()
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_write_failing_for_a_full_disk_releases_it_and_other_failures_do_not() {
        let dir = dir();
        let mut ballast = Ballast::keep(&dir);
        let busy = StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ));
        assert!(ballast.write(|| Err::<(), _>(busy)).is_err());
        assert!(
            dir.join(BALLAST_FILE).exists(),
            "a busy database is not a full disk"
        );
        assert!(ballast.write(|| Err::<(), _>(full())).is_err());
        assert!(!dir.join(BALLAST_FILE).exists(), "released on SQLITE_FULL");
        // The temp dir has room: the next successful write creates it again.
        let has_room = free_bytes(&dir).is_some_and(|f| f >= ROOM_TO_RECREATE);
        ballast.write(|| Ok(())).unwrap();
        assert_eq!(dir.join(BALLAST_FILE).exists(), has_room);
    }

    #[test]
    fn a_ballast_deleted_by_hand_is_no_failure_and_comes_back() {
        let dir = dir();
        let mut ballast = Ballast::keep(&dir);
        std::fs::remove_file(dir.join(BALLAST_FILE)).unwrap();
        assert!(ballast.write(|| Err::<(), _>(full())).is_err());
        let has_room = free_bytes(&dir).is_some_and(|f| f >= ROOM_TO_RECREATE);
        ballast.write(|| Ok(())).unwrap();
        assert_eq!(dir.join(BALLAST_FILE).exists(), has_room);
    }

    #[test]
    fn a_ballast_that_cannot_be_created_is_no_failure() {
        let dir = dir().join("missing");
        let mut ballast = Ballast::keep(&dir);
        assert!(!ballast.held);
        assert_eq!(ballast.write(|| Ok(7)).unwrap(), 7);
    }
}
