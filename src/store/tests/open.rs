//! Opening: modes tightened, corruption moved aside, every other failure (a folder for a WAL,
//! an immutable folder, a held lock, a full disk, an unreadable file) an error naming the file
//! and the fix with nothing moved; read-only opens create and move nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::support::{chattr, healthy, listing, mode, refused, temp_dir, version_1_store};
use crate::store::TokenStore;
use crate::store::migrations::MIGRATIONS;

#[test]
fn loose_existing_modes_are_tightened_and_a_quarantine_starts_private() {
    let path = healthy("loose");
    let dir = path.parent().unwrap().to_path_buf();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let store = TokenStore::open(&path).unwrap();
    assert_private(&path, "tightened");
    drop(store);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(&path, vec![0x5a; 8192]).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let store = TokenStore::open(&path).unwrap();
    assert!(store.moved_aside.is_some(), "random bytes are quarantined");
    assert_private(&path, "after a quarantine");
}

/// Asserts the database's folder is 0700 and the database and its `-wal` and `-shm` 0600.
fn assert_private(path: &Path, when: &str) {
    let dir = path.parent().unwrap();
    assert_eq!((mode(dir), mode(path)), (0o700, 0o600), "{when}");
    for companion in ["-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{companion}", path.display()));
        assert_eq!(mode(&file), 0o600, "{when}: {}", file.display());
    }
}

/// Asserts that a refused open names the database, says that nothing was moved, and says
/// each of `phrases`.
fn assert_clear_refusal(message: &str, path: &Path, phrases: &[&str]) {
    let named = message.contains(&path.display().to_string());
    let says_all = phrases.iter().all(|phrase| message.contains(phrase));
    assert!(
        named && message.contains("nothing was moved") && says_all,
        "{message}"
    );
}

/// Opens the database again and finds the token `k1` that `healthy` saved.
fn assert_token_survived(path: &Path) {
    let store = TokenStore::open(path).unwrap();
    assert!(
        store.load_token("k1").unwrap().is_some(),
        "the token survived"
    );
}

#[test]
fn a_truncated_database_is_quarantined() {
    let path = healthy("truncated");
    // Checkpointed on close: the content is in the main file; keep its first page only.
    let bytes = fs::read(&path).unwrap();
    assert!(bytes.len() > 4096, "the database has more than one page");
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let store = TokenStore::open(&path).unwrap();
    let aside = store.moved_aside.clone().expect("moved aside");
    assert_eq!(fs::read(&aside).unwrap(), &bytes[..bytes.len() / 2]);
    assert!(store.load_token("k1").unwrap().is_none(), "a fresh store");
}

#[test]
fn a_wal_that_is_a_directory_is_an_error_and_nothing_moves() {
    let path = healthy("waldir");
    let dir = path.parent().unwrap().to_path_buf();
    fs::create_dir(format!("{}-wal", path.display())).unwrap();
    let before = listing(&dir);
    let message = refused(&path);
    assert_clear_refusal(&message, &path, &["-wal"]);
    assert_eq!(listing(&dir), before, "nothing moved");
    let read_only = TokenStore::open_read_only(&path)
        .err()
        .expect("refused")
        .to_string();
    assert!(read_only.contains("nothing was moved"), "{read_only}");
    assert_eq!(listing(&dir), before, "nothing moved");
    fs::remove_dir(format!("{}-wal", path.display())).unwrap();
    assert_token_survived(&path);
}

#[test]
fn an_immutable_data_dir_is_an_error_and_nothing_moves() {
    let path = healthy("immutable");
    let dir = path.parent().unwrap().to_path_buf();
    let chattr = |flag: &str| chattr(flag, &dir);
    if !chattr("+i") {
        eprintln!(
            "SKIPPED: `chattr +i` does not work on {} (no chattr, or a file system without attributes)",
            dir.display()
        );
        return;
    }
    let before = listing(&dir);
    let message = refused(&path);
    let read_only = TokenStore::open_read_only(&path).map(|s| s.is_some());
    let after = listing(&dir);
    assert!(chattr("-i"), "chattr -i");
    assert_clear_refusal(&message, &path, &[]);
    assert!(
        message.contains("read-only") || message.contains("chattr"),
        "{message}"
    );
    assert_eq!(after, before, "nothing moved");
    // Reading needs the -shm file, which an immutable folder cannot get; either way
    // nothing is moved and the message is clear.
    if let Err(e) = read_only {
        assert!(e.to_string().contains("nothing was moved"), "{e}");
    }
    assert_token_survived(&path);
}

#[test]
fn a_loose_mode_that_cannot_be_tightened_is_refused_with_the_fix() {
    let path = healthy("untightenable");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let chattr = |flag: &str| chattr(flag, &path);
    if !chattr("+i") {
        eprintln!("SKIPPED: `chattr +i` does not work on {}", path.display());
        return;
    }
    let message = match TokenStore::open(&path) {
        Ok(_) => "opened".to_string(),
        Err(e) => e.to_string(),
    };
    let read_only = TokenStore::open_read_only(&path).map(|s| s.is_some());
    assert!(chattr("-i"), "chattr -i");
    assert!(
        message.contains(&format!("{} is mode 0644", path.display()))
            && message.contains("cannot be restricted to 0600")
            && message.contains("chmod 600"),
        "{message}"
    );
    assert!(
        matches!(read_only, Ok(true)),
        "reading goes on with a warning: {read_only:?}"
    );
    drop(TokenStore::open(&path).unwrap());
    assert_eq!(mode(&path), 0o600, "tightened once it can be");
}

#[test]
fn a_database_locked_by_another_connection_is_an_error_and_nothing_moves() {
    let path = temp_dir("locked").join("tokens.db");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let before = listing(path.parent().unwrap());
    let message = refused(&path);
    assert_clear_refusal(&message, &path, &["another process holds a lock"]);
    assert_eq!(listing(path.parent().unwrap()), before, "nothing moved");
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    assert_eq!(
        TokenStore::open(&path).unwrap().schema_version().unwrap(),
        MIGRATIONS.len() as i64
    );
}

/// A small tmpfs mounted for one test, unmounted when dropped (needs root).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(name: &str) -> Option<SmallDisk> {
        let dir = temp_dir(name);
        fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=512k",
                "tmpfs",
                dir.to_str().unwrap(),
            ])
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_an_error_and_nothing_moves() {
    let Some(disk) = SmallDisk::mount("full") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root, or no mount permission)");
        return;
    };
    let path = disk.0.join("data").join("tokens.db");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    // A store one migration behind, so opening it must write.
    let v1 = version_1_store("full-source");
    fs::copy(&v1, &path).unwrap();
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut file = fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
    }
    let bytes = fs::read(&path).unwrap();
    let message = refused(&path);
    assert_clear_refusal(&message, &path, &[]);
    assert!(
        message.contains("disk is full") || message.contains("disk may be full"),
        "{message}"
    );
    // SQLite may have created empty -wal/-shm files; nothing was moved or changed.
    let names = listing(path.parent().unwrap());
    assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "the database is untouched");
    fs::remove_file(&filler).unwrap();
    assert_token_survived(&path);
}

#[test]
fn read_only_opens_create_nothing_and_report_corruption_without_moving() {
    let path = temp_dir("readonly").join("tokens.db");
    assert!(TokenStore::open_read_only(&path).unwrap().is_none());
    assert!(!path.exists(), "nothing created");
    let path = healthy("readonly-ok");
    let store = TokenStore::open_read_only(&path).unwrap().expect("opens");
    assert_eq!(store.token_status().unwrap().len(), 1);
    drop(store);
    fs::write(&path, b"garbage garbage garbage garbage").unwrap();
    let before = listing(path.parent().unwrap());
    let message = TokenStore::open_read_only(&path)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        message.contains("corrupt") && message.contains("nothing was moved"),
        "{message}"
    );
    assert_eq!(listing(path.parent().unwrap()), before);
}

#[test]
fn a_corrupt_database_is_moved_aside_and_a_fresh_one_starts() {
    let path = temp_dir("corrupt").join("tokens.db");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(
        &path,
        b"this is not a SQLite database, it is garbage that once was tokens",
    )
    .unwrap();
    let store = TokenStore::open(&path).unwrap();
    let aside = store.moved_aside.clone().expect("moved aside");
    assert!(aside.to_string_lossy().contains("tokens.db.corrupt-"));
    assert_eq!(
        fs::read(&aside).unwrap(),
        b"this is not a SQLite database, it is garbage that once was tokens",
        "nothing lost"
    );
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
}

#[test]
fn an_unreadable_database_is_an_error_naming_the_file() {
    let path = temp_dir("unreadable").join("tokens.db");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::create_dir(&path).unwrap(); // a folder where the file should be
    let e = TokenStore::open(&path).err().expect("refused");
    let message = e.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("--data-dir"),
        "{message}"
    );
}
