//! Where the store key comes from, in order: an explicit key file (`--key-file`, created 0600
//! when absent), the `MCPPROXY_OAUTH_KEY` environment variable (base64 of 32 bytes), else a
//! `key` file beside the database (created 0600 when absent, which is logged). The OS keyring
//! is not a source (a documented gap): the `keyring` crate's persistent Linux backend needs a
//! Secret Service on a D-Bus session, which a headless daemon does not have, and its keyutils
//! backend forgets keys at reboot.
//!
//! A key is only ever created for a database that is not encrypted yet: for an encrypted one,
//! a missing key is an error (a new key could not open it, and nothing may be overwritten).

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::cipher::StoreKey;
use super::perms;

/// The environment variable holding a base64 key.
pub const KEY_ENV: &str = "MCPPROXY_OAUTH_KEY";
/// The default key file's name, beside the database.
pub const DEFAULT_KEY_FILE: &str = "key";

/// How the store protects its secret columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealing {
    /// Encrypted, with the key from these sources.
    Encrypted(KeySpec),
    /// `--insecure-plaintext`: secrets stored in clear (the file's 0600 mode is all).
    Plaintext,
}

impl Default for Sealing {
    fn default() -> Self {
        Sealing::Encrypted(KeySpec::default())
    }
}

/// The key sources a user gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpec {
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
}

/// Where the key in use came from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "the key file {}", path.display()),
            KeySource::Env => write!(f, "the environment variable {KEY_ENV}"),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why no key could be had. Messages never hold key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the token database is encrypted, but {looked} does not exist; nothing was changed: \
         restore that key file, set {KEY_ENV}, or pass --key-file with the key the database was \
         encrypted with"
    )]
    Missing { looked: String },
    /// The source holds something that is not a key.
    #[error("cannot use {source_}: {reason}")]
    Unusable { source_: KeySource, reason: String },
    /// The key file could not be read (or its mode fixed): a matter of the file system.
    #[error("cannot use {source_}: {reason}")]
    Unreadable { source_: KeySource, reason: String },
}

/// The key file a spec uses: `--key-file`, else `key` beside the database.
pub fn key_file_for(spec: &KeySpec, database: &Path) -> PathBuf {
    spec.key_file.clone().unwrap_or_else(|| {
        database
            .parent()
            .unwrap_or(Path::new("."))
            .join(DEFAULT_KEY_FILE)
    })
}

/// Finds the key: `--key-file` (read, or created when absent), else the environment, else
/// the `key` file beside the database (read, or created when absent). A key is created only
/// when the database is not encrypted yet.
pub fn resolve(
    spec: &KeySpec,
    database: &Path,
    encrypted: bool,
) -> Result<(StoreKey, KeySource), KeyError> {
    if let Some(found) = existing(spec, database, Tighten::Yes) {
        return found;
    }
    let file = key_file_for(spec, database);
    if encrypted {
        return Err(KeyError::Missing {
            looked: format!("the key file {}", file.display()),
        });
    }
    let key = create_key_file(&file)?;
    tracing::warn!(
        key_file = %file.display(),
        "created a new store key; back it up: without it the stored tokens cannot be read (servers then log in again)"
    );
    Ok((key, KeySource::File(file)))
}

/// Whether reading a key file may fix its mode (`Yes` for a store being opened for use; `No`
/// while the database is still being checked, before anything may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tighten {
    Yes,
    No,
}

/// The key a spec names if there is one (the environment, else the key file), read without
/// creating anything; `None` when no source exists yet.
pub(super) fn existing(
    spec: &KeySpec,
    database: &Path,
    tighten: Tighten,
) -> Option<Result<(StoreKey, KeySource), KeyError>> {
    if spec.key_file.is_none()
        && let Some(text) = std::env::var_os(KEY_ENV)
    {
        let key =
            StoreKey::from_base64(&text.to_string_lossy()).map_err(|reason| KeyError::Unusable {
                source_: KeySource::Env,
                reason: format!("{reason}; it must be the base64 of 32 random bytes"),
            });
        return Some(key.map(|key| {
            crate::telemetry::secrets::register(&key.to_base64());
            (key, KeySource::Env)
        }));
    }
    let file = key_file_for(spec, database);
    if !file.exists() {
        return None;
    }
    let key = match tighten {
        Tighten::Yes => read_key_file(&file),
        Tighten::No => read_key_bytes(&file),
    };
    Some(key.map(|key| (key, KeySource::File(file))))
}

/// The most a key file is read of: a key is 32 bytes, or 44 characters of base64 and a
/// newline. A bigger file (`/dev/zero` given by mistake) is refused without reading it all.
const KEY_FILE_READ_LIMIT: u64 = 4096;

/// Reads a key file, tightening its mode to 0600 (refused when that is impossible).
pub fn read_key_file(path: &Path) -> Result<StoreKey, KeyError> {
    perms::private_file(path).map_err(|e| KeyError::Unreadable {
        source_: KeySource::File(path.to_path_buf()),
        reason: e.to_string(),
    })?;
    read_key_bytes(path)
}

/// A key file's key: the base64 of 32 bytes (what `openssl rand -base64 32` and this program
/// write, surrounding whitespace ignored), or exactly 32 raw bytes (`head -c 32 /dev/urandom`)
/// that are not all printable text: a 32-byte line someone typed is not taken for a key (32
/// random bytes are all printable once in about 10^14). Anything else is refused with what a
/// key file must hold, never with its content.
fn read_key_bytes(path: &Path) -> Result<StoreKey, KeyError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(KEY_FILE_READ_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| KeyError::Unreadable {
            source_: KeySource::File(path.to_path_buf()),
            reason: e.to_string(),
        })?;
    let text = bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    let key = match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(raw) if !text => Ok(StoreKey::from_bytes(raw)),
        _ if bytes.len() as u64 > KEY_FILE_READ_LIMIT => {
            Err(format!("it holds more than {KEY_FILE_READ_LIMIT} bytes"))
        }
        _ if !text => Err(format!(
            "its {} bytes are neither text nor 32 raw bytes",
            bytes.len()
        )),
        _ => StoreKey::from_base64(&String::from_utf8_lossy(&bytes)),
    };
    let key = key.map_err(|reason| KeyError::Unusable {
        source_: KeySource::File(path.to_path_buf()),
        reason: format!(
            "the key file must hold base64 of 32 bytes, as `openssl rand -base64 32` prints, or \
             exactly 32 raw bytes ({reason})"
        ),
    })?;
    crate::telemetry::secrets::register(&key.to_base64());
    Ok(key)
}

/// Writes a new random key to `path`, 0600, never over an existing file (a concurrent start
/// that linked its key first wins, and its key is read back).
pub fn create_key_file(path: &Path) -> Result<StoreKey, KeyError> {
    match write_new_key_file(path, &StoreKey::generate()) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other.map_err(|e| KeyError::Unreadable {
            source_: KeySource::File(path.to_path_buf()),
            reason: e.to_string(),
        })?,
    }
    read_key_file(path)
}

/// Writes `key` to `path`, which must not exist: written beside it (0600), synced, then
/// hard-linked into place, so a reader never sees half a key and nothing is overwritten.
pub fn write_new_key_file(path: &Path, key: &StoreKey) -> std::io::Result<()> {
    // The folder is created if needed, never re-moded: `--key-file ~/key` must not change
    // the mode of a home folder.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(format!("{}\n", key.to_base64()).as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    linked
}
