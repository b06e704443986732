//! The opening of a bench that writes a table (shared by the benches): only `cargo bench`
//! runs it, and the table says when it ran and how loaded the machine was.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

/// When a bench run started, its date (RFC 3339) and the load average then.
pub struct Run {
    pub started: Instant,
    pub date: String,
    pub load_before: String,
}

/// The run, under `cargo bench` (which passes `--bench`). Under `cargo test --benches` (which
/// does not) the tables would take minutes: it says `how_to_run` instead and gives `None`.
pub fn begin(how_to_run: &str) -> Option<Run> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("{how_to_run}");
        return None;
    }
    Some(Run {
        started: Instant::now(),
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        load_before: crate::machine::load_average(),
    })
}

/// An empty folder `mcpproxy-oauth-{name}-{pid}` under the system temp dir (what a run before
/// with the same pid left there is removed first).
#[allow(dead_code)] // not every bench keeps files
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcpproxy-oauth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
