//! What can go wrong with the token store. Every error names the file (or the server), the
//! cause, and what to do; none quotes a secret or SQL text.

use std::path::PathBuf;

use super::keys::KeySource;

/// Where an error names a `path`, a PostgreSQL store is named by its URL without a password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the token database {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error(
        "the token database {path} has schema version {found}, newer than this build knows \
         ({known}); nothing was changed: upgrade mcpproxy-oauth or use another --data-dir"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "the file {path} is not an mcpproxy-oauth token database ({detail}); nothing was \
         changed: choose another --data-dir, or move the file away"
    )]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "the token database {path} has the mcpproxy-oauth tables but schema version 0 (a \
         migration ran outside mcpproxy-oauth, or the version was reset); nothing was changed: \
         restore a backup, or move it aside (servers then log in again)"
    )]
    HalfMigrated { path: PathBuf },
    #[error("token database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the PostgreSQL token store {target} is unreachable ({reason}); tokens in memory stay \
         in use and it is tried again: check that the database runs and this host reaches it"
    )]
    Unreachable { target: String, reason: String },
    #[error("the PostgreSQL token store {target} refused {what}: {reason}")]
    Refused {
        target: String,
        what: String,
        reason: String,
    },
    #[error("the token registry has stopped")]
    Closed,
    #[error("the token database did not commit the write ({0}); nothing of it was stored")]
    NotCommitted(String),
    #[error("another process holds the flow lock of {server_key} (waited {waited_ms} ms)")]
    LockTimeout { server_key: String, waited_ms: u64 },
    #[error(
        "the token database {path} is encrypted, and --insecure-plaintext was given; nothing \
         was changed: drop --insecure-plaintext and give its key (--key-file, \
         MCPPROXY_OAUTH_KEY, or the key file beside it)"
    )]
    EncryptedNeedsKey { path: PathBuf },
    #[error(
        "the token database {path} was encrypted with another key than {source_}; nothing was \
         changed: give the key it was encrypted with (--key-file or MCPPROXY_OAUTH_KEY)"
    )]
    WrongKey { path: PathBuf, source_: KeySource },
    #[error("cannot open the token database {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "the stored {column} of {server_key} cannot be decrypted (its bytes were altered, or it \
         was moved from another row); nothing was changed: restore a backup of the database, \
         or `auth logout` the server and log in again"
    )]
    Undecryptable {
        server_key: String,
        column: &'static str,
    },
}
