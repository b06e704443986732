//! Folders of their own for each test, under the system temp dir.

use std::path::PathBuf;

fn unique(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "mcpproxy-oauth-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ))
}

/// A fresh, empty folder under the system temp dir, unique to this call.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = unique(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A data directory unique to this call, not created: the supervisor or the binary makes it
/// (private, as it does for a user's).
pub fn data_dir(name: &str) -> PathBuf {
    unique(name)
}
