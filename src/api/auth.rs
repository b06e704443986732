//! The API key. Every listener requires one, loopback included: another user of the same
//! machine reaches a loopback port as easily as its owner does. The key comes from
//! `--api-key-file`, the environment variable [`API_KEY_ENV`], or `DATA_DIR/api-key`, which
//! `serve` creates (0600, 32 random bytes in base64url) on its first start and reuses after.
//!
//! Both sides of a comparison are hashed and compared in constant time (`subtle`), so neither
//! the key's bytes nor its length leak through timing. The key is registered with
//! `telemetry::secrets` as soon as it is known, so no log line, answer or event can carry it;
//! only `serve` prints it, once, in the page's URL on its standard output.
//!
//! The page keeps the key as a cookie (see [`ApiKey::cookie_value`]): not the key itself but a
//! value derived from it, HttpOnly and SameSite=Strict, so the page's script never holds the
//! key and no other site's request carries it.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::store::perms;

/// The environment variable that may hold the key.
pub const API_KEY_ENV: &str = "MCPPROXY_OAUTH_API_KEY";
/// The key file `serve` creates in the data directory when no key is given.
pub const API_KEY_FILE: &str = "api-key";
/// Shortest key accepted, in characters.
pub const MIN_KEY_CHARS: usize = 16;

#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
    /// What the page's cookie holds: `hex(sha256("mcpproxy-oauth page\n" + key))`.
    cookie: String,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl ApiKey {
    /// A key of at least 16 characters (surrounding whitespace ignored).
    pub fn new(key: &str) -> Result<Self, String> {
        let key = key.trim();
        if key.chars().count() < MIN_KEY_CHARS {
            return Err(format!(
                "the API key must be at least {MIN_KEY_CHARS} characters long"
            ));
        }
        let cookie: String = Sha256::digest(format!("mcpproxy-oauth page\n{key}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        crate::telemetry::secrets::register(key);
        crate::telemetry::secrets::register(&cookie);
        Ok(ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
            cookie,
        })
    }

    /// The key held in `path`. Its mode is tightened to 0600 (refused when that fails).
    pub fn from_file(path: &Path) -> Result<Self, ApiError> {
        read_key_text(path).and_then(|text| ApiKey::new(&text).map_err(key_file_error(path)))
    }

    /// Whether `presented` is the key, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        self.digest.ct_eq(&digest).into()
    }

    /// Whether `presented` is the page's cookie value, in constant time.
    pub fn matches_cookie(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let expected: [u8; 32] = Sha256::digest(self.cookie.as_bytes()).into();
        expected.ct_eq(&digest).into()
    }

    /// The value the page's cookie carries (as strong as the key for this API, but not the
    /// key: a key shared with other tools does not sit in the browser's cookie jar).
    pub fn cookie_value(&self) -> &str {
        &self.cookie
    }
}

/// Where the key comes from, for the start-up line (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyOrigin {
    /// `--api-key-file`.
    File(PathBuf),
    /// The environment variable [`API_KEY_ENV`].
    Environment,
    /// `DATA_DIR/api-key`, created by this start when `created`.
    DataDir { path: PathBuf, created: bool },
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::File(path) => write!(f, "--api-key-file {}", path.display()),
            KeyOrigin::Environment => write!(f, "the environment variable {API_KEY_ENV}"),
            KeyOrigin::DataDir {
                path,
                created: true,
            } => write!(f, "{} (created now)", path.display()),
            KeyOrigin::DataDir { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// The key `serve` uses, and its text (printed once, in the page's URL): `--api-key-file`,
/// else [`API_KEY_ENV`], else `data_dir/api-key`, created when absent.
pub fn resolve_key(
    file: Option<&Path>,
    env: Option<String>,
    data_dir: &Path,
) -> Result<(ApiKey, String, KeyOrigin), ApiError> {
    if let Some(path) = file {
        let text = read_key_text(path)?;
        let key = ApiKey::new(&text).map_err(key_file_error(path))?;
        return Ok((key, text, KeyOrigin::File(path.to_path_buf())));
    }
    if let Some(text) = env.filter(|v| !v.trim().is_empty()) {
        let text = text.trim().to_string();
        let key = ApiKey::new(&text).map_err(|reason| ApiError::KeyFile {
            path: API_KEY_ENV.into(),
            reason,
        })?;
        return Ok((key, text, KeyOrigin::Environment));
    }
    perms::private_dir(data_dir).map_err(|e| ApiError::KeyFile {
        path: data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let path = data_dir.join(API_KEY_FILE);
    let created = match write_new_key(&path, &generate()) {
        Ok(()) => true,
        // Kept from an earlier start (or a concurrent one that linked its key first).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(key_file_error(&path)(e.to_string())),
    };
    let text = read_key_text(&path)?;
    let key = ApiKey::new(&text).map_err(key_file_error(&path))?;
    Ok((key, text, KeyOrigin::DataDir { path, created }))
}

/// 32 random bytes, base64url without padding (43 characters: safe in a URL as it is).
pub fn generate() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn key_file_error(path: &Path) -> impl Fn(String) -> ApiError + '_ {
    move |reason| ApiError::KeyFile {
        path: path.display().to_string(),
        reason,
    }
}

/// The trimmed text of a key file, its mode tightened to 0600 first.
fn read_key_text(path: &Path) -> Result<String, ApiError> {
    let error = key_file_error(path);
    perms::private_file(path).map_err(|e| error(e.to_string()))?;
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    Ok(text.trim().to_string())
}

/// Writes `key` to `path`, which must not exist: beside it first (0600, synced), then
/// hard-linked into place, so a reader never sees half a key and nothing is overwritten.
fn write_new_key(path: &Path, key: &str) -> std::io::Result<()> {
    if path.exists() {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(perms::FILE_MODE)
            .open(&temp)?;
        file.write_all(format!("{key}\n").as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_match_exactly_and_never_print() {
        let key = ApiKey::new("0123456789abcdef-key").unwrap();
        assert!(key.matches("0123456789abcdef-key"));
        assert!(!key.matches("0123456789abcdef-kez"));
        assert!(!key.matches(""));
        assert!(!format!("{key:?}").contains("0123"));
        assert!(ApiKey::new("short").is_err());
        assert!(key.matches_cookie(key.cookie_value()));
        assert!(
            !key.matches_cookie("0123456789abcdef-key"),
            "the key is not the cookie"
        );
        assert_ne!(key.cookie_value(), "0123456789abcdef-key");
    }

    #[test]
    fn the_data_dir_key_is_created_private_once_and_reused() {
        let dir =
            std::env::temp_dir().join(format!("mcpproxy-oauth-apikey-{}", uuid::Uuid::new_v4()));
        let (first, text, origin) = resolve_key(None, None, &dir).unwrap();
        let path = dir.join(API_KEY_FILE);
        assert_eq!(
            origin,
            KeyOrigin::DataDir {
                path: path.clone(),
                created: true
            }
        );
        assert_eq!(text.len(), 43, "32 bytes in base64url");
        assert!(first.matches(&text));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let (_, again, origin) = resolve_key(None, None, &dir).unwrap();
        assert_eq!(again, text, "reused on the next start");
        assert_eq!(
            origin,
            KeyOrigin::DataDir {
                path: path.clone(),
                created: false
            }
        );
        // The environment wins over the file; a short key is refused, naming the source.
        let (_, env, origin) =
            resolve_key(None, Some("from-the-environment-0123".into()), &dir).unwrap();
        assert_eq!(
            (env.as_str(), origin),
            ("from-the-environment-0123", KeyOrigin::Environment)
        );
        let err = resolve_key(None, Some("short".into()), &dir).unwrap_err();
        assert!(err.to_string().contains(API_KEY_ENV), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
