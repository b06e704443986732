//! Who has the token database open for writing. Every read-write open (a daemon, `auth
//! login|logout|refresh`, a program embedding the library) holds a shared OS lock on
//! `tokens.db.lock` beside the database for as long as its store lives, so any number of them work side
//! by side, as before. `tokens rekey` must be alone: every other holder keeps the old key in
//! memory, so it takes the lock exclusively, without waiting, and is refused while anyone holds
//! it. The kernel releases the lock when its holder dies (kill -9 included): nothing stale is
//! left to clean up, and no process id in a file is trusted.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::StoreError;
use super::open::{BUSY_TIMEOUT, folder_of};
use super::perms;

/// How a store holds the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Beside any other read-write user (daemons and `auth` commands).
    Shared,
    /// Alone (`tokens rekey`): refused at once while anyone else holds it.
    Alone,
}

/// The held lock; dropping it (or the process ending) releases it.
pub struct Holding {
    _file: File,
}

impl std::fmt::Debug for Holding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Holding")
    }
}

/// The lock file of the database at `database`: `tokens.db.lock` for `tokens.db`.
pub fn hold_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the data directory's hold for the database at `database`. `Shared` waits (bounded)
/// for a running rekey to end; `Alone` is refused at once while another process holds it,
/// with the error naming the holders and what to do. Creates the data directory (0700) and
/// the lock file (0600) when missing.
pub fn hold(database: &Path, how: Hold) -> Result<Holding, StoreError> {
    let unusable = |reason: String| StoreError::Unusable {
        path: database.to_path_buf(),
        reason,
    };
    perms::private_dir(folder_of(database)).map_err(|e| unusable(e.to_string()))?;
    let path = hold_path(database);
    let file = perms::open_private_file(&path).map_err(|e| unusable(e.to_string()))?;
    let cannot_lock = |e: std::io::Error| unusable(format!("cannot lock {}: {e}", path.display()));
    match how {
        Hold::Alone => match file.try_lock() {
            Ok(()) => Ok(Holding { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(unusable(format!(
                "it is open in another process ({}): a daemon (`serve`, or a program embedding \
                 mcpproxy-oauth) or an `auth` command, which keeps the current key in memory and \
                 would go on using it; nothing was changed: stop it first (and start it again \
                 afterwards)",
                describe(&holders(&path))
            ))),
            Err(fs::TryLockError::Error(e)) => Err(cannot_lock(e)),
        },
        Hold::Shared => {
            let started = Instant::now();
            loop {
                match file.try_lock_shared() {
                    Ok(()) => return Ok(Holding { _file: file }),
                    Err(fs::TryLockError::WouldBlock) if started.elapsed() < BUSY_TIMEOUT => {
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    Err(fs::TryLockError::WouldBlock) => {
                        return Err(unusable(format!(
                            "a `tokens rekey` ({}) has held it for {} s; wait for it to end, \
                             then retry",
                            describe(&holders(&path)),
                            BUSY_TIMEOUT.as_secs()
                        )));
                    }
                    Err(fs::TryLockError::Error(e)) => return Err(cannot_lock(e)),
                }
            }
        }
    }
}

/// A process holding the lock: its id and what it runs (the program's name and its
/// subcommand; no other argument, which could be anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
}

/// The processes holding a lock on `path`, from `/proc/locks` (Linux); empty where that
/// cannot be read or nothing matches.
pub fn holders(path: &Path) -> Vec<Holder> {
    let (Ok(meta), Ok(locks)) = (fs::metadata(path), fs::read_to_string("/proc/locks")) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = locks
        .lines()
        .filter_map(|line| locked_by(line, meta.dev(), meta.ino()))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| Holder {
            pid,
            command: command_of(pid),
        })
        .collect()
}

/// The pid in a `/proc/locks` line granting a lock on the file (`dev`, `ino`), if it is one:
/// `1: FLOCK  ADVISORY  READ  4242 fd:01:1234567 0 EOF` (waiters' lines carry `->`).
fn locked_by(line: &str, dev: u64, ino: u64) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(1) == Some(&"->") || fields.len() < 6 {
        return None;
    }
    let mut place = fields[5].split(':');
    let (major, minor, inode) = (place.next()?, place.next()?, place.next()?);
    let same = u64::from_str_radix(major, 16).ok()? == major_of(dev)
        && u64::from_str_radix(minor, 16).ok()? == minor_of(dev)
        && inode.parse::<u64>().ok()? == ino;
    same.then(|| fields[4].parse().ok()).flatten()
}

/// Linux's encoding of a device number (glibc's `gnu_dev_major` / `gnu_dev_minor`).
fn major_of(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn minor_of(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// `mcpproxy-oauth serve`: the program's file name and its first argument that is not a flag.
fn command_of(pid: u32) -> String {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return "?".into();
    };
    let mut args = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let program = args.next().unwrap_or_default();
    let program = Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(program);
    let verb = args.find(|a| !a.is_empty() && !a.starts_with('-'));
    let shown = match verb {
        Some(verb) => format!("{program} {verb}"),
        None => program,
    };
    shown.chars().take(80).collect()
}

/// `pid 4242: mcpproxy-oauth serve, pid 4300: ...`, or a plain word when nobody can be named.
pub fn describe(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "which one cannot be said here: /proc/locks names none".into();
    }
    holders
        .iter()
        .map(|h| format!("pid {}: {}", h.pid, h.command))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::support::temp_dir;

    #[test]
    fn a_proc_locks_line_names_its_holder_only_for_the_same_file() {
        let dev = (0xfd << 8) | 0x01; // fd:01
        let line = "1: FLOCK  ADVISORY  READ  4242 fd:01:1234567 0 EOF";
        assert_eq!(locked_by(line, dev, 1234567), Some(4242));
        assert_eq!(locked_by(line, dev, 1234568), None, "another inode");
        assert_eq!(locked_by(line, 0x0801, 1234567), None, "another device");
        let waiter = "1: -> FLOCK  ADVISORY  WRITE 4300 fd:01:1234567 0 EOF";
        assert_eq!(
            locked_by(waiter, dev, 1234567),
            None,
            "a waiter holds nothing"
        );
        assert_eq!(locked_by("garbage", dev, 1), None);
    }

    #[test]
    fn a_shared_hold_allows_others_and_refuses_one_alone() {
        let dir = temp_dir("holder");
        let db = dir.join("tokens.db");
        let first = hold(&db, Hold::Shared).unwrap();
        let second = hold(&db, Hold::Shared).expect("shared holds work side by side");
        let refused = hold(&db, Hold::Alone).unwrap_err().to_string();
        assert!(
            refused.contains("it is open in another process")
                && refused.contains("nothing was changed"),
            "{refused}"
        );
        drop((first, second));
        let alone = hold(&db, Hold::Alone).expect("alone once nobody holds it");
        drop(alone);
        fs::remove_dir_all(&dir).unwrap();
    }
}
