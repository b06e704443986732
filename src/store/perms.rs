//! File modes of everything that holds tokens: the data dir and `locks/` are 0700, the
//! database and its `-wal`/`-shm` files (and lock files) 0600, whatever the umask and whatever
//! modes files that already existed had. A looser mode is tightened with a warning; when it
//! cannot be tightened (another owner, an immutable file) the caller decides whether that is
//! a refusal (anything that writes tokens) or a warning (read-only commands). What this code
//! creates is created with its mode (never created loose and then tightened), so a fresh data
//! directory starts without a warning.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Folders: only the owner may list, enter or create files.
pub const DIR_MODE: u32 = 0o700;
/// Files: only the owner may read or write.
pub const FILE_MODE: u32 = 0o600;

/// A mode that could not be made private; the message names the path, the mode and the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeError(pub String);

impl std::fmt::Display for ModeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Creates `dir` if needed (0700; its missing parents with the umask's mode, like `mkdir
/// -p`), then makes sure it is 0700.
pub fn private_dir(dir: &Path) -> Result<(), ModeError> {
    if !dir.exists() {
        create_private_dir(dir).map_err(|e| {
            ModeError(format!(
                "cannot create the folder {}: {e}; create it (mode 0700) or choose another --data-dir",
                dir.display()
            ))
        })?;
    }
    let meta = fs::metadata(dir).map_err(|e| {
        ModeError(format!(
            "cannot read the folder {}: {e}; choose another --data-dir",
            dir.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(ModeError(format!(
            "{} is not a folder; move it away or choose another --data-dir",
            dir.display()
        )));
    }
    tighten(dir, &meta, DIR_MODE, "700")
}

/// Opens `path` for reading and writing, created 0600 when missing (a lock file), and makes
/// sure of its mode.
pub fn open_private_file(path: &Path) -> Result<fs::File, ModeError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| ModeError(format!("cannot open {}: {e}", path.display())))?;
    private_file(path)?;
    Ok(file)
}

/// Makes `path` 0600 if it exists; a missing file is fine (SQLite creates its companions
/// later, with the database's mode).
pub fn private_file(path: &Path) -> Result<(), ModeError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => tighten(path, &meta, FILE_MODE, "600"),
        // A folder where a file belongs is not a mode problem; opening it reports it.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ModeError(format!(
            "cannot read the mode of {}: {e}; make it accessible to this user or choose another --data-dir",
            path.display()
        ))),
    }
}

/// `dir` created 0700 (the umask can only take more away), its parents as `mkdir -p` makes
/// them; a folder another process created meanwhile is fine.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

fn tighten(path: &Path, meta: &fs::Metadata, want: u32, chmod: &str) -> Result<(), ModeError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode == want {
        return Ok(());
    }
    let was_open = mode & 0o077 != 0;
    fs::set_permissions(path, fs::Permissions::from_mode(want)).map_err(|e| {
        ModeError(format!(
            "{} is mode {mode:04o}, open to other users, and cannot be restricted to {want:04o}: {e}; \
             run `chmod {chmod} {}` as its owner (and `chattr -i` if it is immutable), or choose another --data-dir",
            path.display(),
            path.display()
        ))
    })?;
    if was_open {
        tracing::warn!(
            path = %path.display(),
            was = format!("{mode:04o}"),
            now = format!("{want:04o}"),
            "a file or folder holding tokens was open to other users; its mode was tightened"
        );
    } else {
        // Stricter than needed (a umask of 0277, a chmod by hand): the owner gets its access
        // back, which exposes nothing.
        tracing::debug!(path = %path.display(), was = format!("{mode:04o}"), now = format!("{want:04o}"), "mode set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::support::{mode, temp_dir};

    #[test]
    fn loose_modes_are_tightened_and_missing_files_are_fine() {
        let dir = temp_dir("perms");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing loose folder is tightened");
        let file = dir.join("f");
        private_file(&file).unwrap();
        assert!(!file.exists(), "a missing file is not created");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        let not_a_dir = private_dir(&file).unwrap_err().to_string();
        assert!(not_a_dir.contains("is not a folder"), "{not_a_dir}");
    }
}
