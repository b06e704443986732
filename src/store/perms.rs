//! File modes of everything that holds tokens: the data dir and `locks/` are 0700, the
//! database and its `-wal`/`-shm` files (and lock files) 0600, whatever the umask and whatever
//! modes files that already existed had. A looser mode is tightened with a warning; when it
//! cannot be tightened (another owner, an immutable file) the caller decides whether that is
//! a refusal (anything that writes tokens) or a warning (read-only commands).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
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

/// Creates `dir` (and its parents) if needed, then makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), ModeError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| {
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

fn tighten(path: &Path, meta: &fs::Metadata, want: u32, chmod: &str) -> Result<(), ModeError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode == want {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(want)).map_err(|e| {
        ModeError(format!(
            "{} is mode {mode:04o}, open to other users, and cannot be restricted to {want:04o}: {e}; \
             run `chmod {chmod} {}` as its owner (and `chattr -i` if it is immutable), or choose another --data-dir",
            path.display(),
            path.display()
        ))
    })?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{mode:04o}"),
        now = format!("{want:04o}"),
        "a file or folder holding tokens was open to other users; its mode was tightened"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn loose_modes_are_tightened_and_missing_files_are_fine() {
        let dir = std::env::temp_dir().join(format!(
            "mcpproxy-oauth-perms-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
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
