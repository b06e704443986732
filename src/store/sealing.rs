//! Sealing of the secret columns: each value sealed on save and opened on load with the
//! store's key (`cipher`, the associated data naming the table, column and server), the key
//! check in `oauth_meta` that proves a key is the file's, a plain-text file encrypted in place
//! (one transaction), and rekeying. Every save checks the key check inside its transaction,
//! so a rekey by another process cannot slip in between.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::cipher::{self, StoreKey};
use super::error::StoreError;
use super::keys::{self, KeySource, Sealing};
use super::model::without_management_token;
use super::secret::Secret;

/// The secret columns, sealed when the store is encrypted: (table, column).
pub const SECRET_COLUMNS: &[(&str, &str)] = &[
    ("oauth_tokens", "access_token"),
    ("oauth_tokens", "refresh_token"),
    ("oauth_tokens", "dpop_key"),
    ("oauth_clients", "client_secret"),
];

/// What the key check value says, sealed; it proves a key is the database's key.
const KEY_CHECK: &str = "mcpproxy-oauth store key check";

/// The key check value for `key`: sealed, it proves a key is the database's key.
pub(super) fn key_check_value(key: &StoreKey) -> String {
    cipher::seal(key, &key_check_place(), KEY_CHECK)
}

fn key_check_place() -> String {
    cipher::place("oauth_meta", "key_check", "")
}

fn table_of(column: &str) -> &'static str {
    SECRET_COLUMNS
        .iter()
        .find(|(_, c)| *c == column)
        .map(|(t, _)| *t)
        .unwrap_or("oauth_tokens")
}

fn seal_column(
    key: &StoreKey,
    column: &'static str,
    server_key: &str,
    value: Option<&str>,
) -> Option<String> {
    value.map(|v| cipher::seal(key, &cipher::place(table_of(column), column, server_key), v))
}

/// The sealed key check, if the file is encrypted (also for files older than `oauth_meta`).
/// Read inside every save: both statements stay prepared (parsing them was 4% of a
/// refresh's CPU).
pub(super) fn read_key_check(conn: &Connection) -> Result<Option<String>, StoreError> {
    let has_meta: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'oauth_meta')",
        )?
        .query_row([], |r| r.get(0))?;
    if !has_meta {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached("SELECT value FROM oauth_meta WHERE name = 'key_check'")?
        .query_row([], |r| r.get(0))
        .optional()?)
}

pub(super) fn verify_key(
    path: &Path,
    key: &StoreKey,
    source: &KeySource,
    check: &str,
) -> Result<(), StoreError> {
    match cipher::open(key, &key_check_place(), check) {
        Ok(text) if text == KEY_CHECK => Ok(()),
        _ => Err(StoreError::WrongKey {
            path: path.to_path_buf(),
            source_: source.clone(),
        }),
    }
}

/// How the secret columns of one open database are sealed: the key in use, and whether the
/// file holds sealed secrets.
pub(super) struct Seal {
    /// The key of an encrypted store; `None` for plain text (and for read-only opens, which
    /// read no secret column).
    key: Option<(StoreKey, KeySource)>,
    /// Whether the file holds sealed secrets (its key check is present).
    encrypted: bool,
}

impl Seal {
    /// No key, nothing known of the file yet.
    pub(super) fn unknown() -> Self {
        Seal {
            key: None,
            encrypted: false,
        }
    }

    /// An encrypted store's seal with its key (the backend has checked the key).
    pub(super) fn keyed(key: StoreKey, source: KeySource) -> Self {
        Seal {
            key: Some((key, source)),
            encrypted: true,
        }
    }

    /// For a read-only open: no key (no secret column is read), encrypted if the file says so.
    pub(super) fn read_only(conn: &Connection) -> Result<Self, StoreError> {
        Ok(Seal {
            key: None,
            encrypted: read_key_check(conn)?.is_some(),
        })
    }

    /// The secret columns protected as `sealing` says: a plain-text file is encrypted in place
    /// (one transaction) when a key is given; an encrypted one needs its key, and nothing is
    /// changed when it is missing or wrong.
    pub(super) fn apply(
        conn: &mut Connection,
        path: &Path,
        sealing: &Sealing,
    ) -> Result<Self, StoreError> {
        let check = read_key_check(conn)?;
        let encrypted = check.is_some();
        let Sealing::Encrypted(spec) = sealing else {
            if encrypted {
                return Err(StoreError::EncryptedNeedsKey {
                    path: path.to_path_buf(),
                });
            }
            tracing::warn!(
                path = %path.display(),
                "--insecure-plaintext: tokens and client secrets are stored in clear (protected \
                 by the file's 0600 mode only)"
            );
            return Ok(Seal::unknown());
        };
        let (key, source) = keys::resolve(spec, path, encrypted).map_err(|e| StoreError::Key {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        match check {
            Some(check) => verify_key(path, &key, &source, &check)?,
            None => encrypt_in_place(conn, path, &key, &source)?,
        }
        Ok(Seal {
            key: Some((key, source)),
            encrypted: true,
        })
    }

    /// Whether the file holds sealed secrets.
    pub(super) fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Where the key in use came from (`None`: plain text).
    pub(super) fn key_source(&self) -> Option<&KeySource> {
        self.key.as_ref().map(|(_, source)| source)
    }

    /// A secret column's value as stored: sealed when the store has a key.
    pub(super) fn hide(
        &self,
        column: &'static str,
        server_key: &str,
        value: Option<&Secret>,
    ) -> Option<String> {
        let value = value.map(Secret::expose);
        match &self.key {
            Some((key, _)) => seal_column(key, column, server_key, value),
            None => value.map(String::from),
        }
    }

    /// A secret column's value as used: opened when the file is encrypted, and registered
    /// with the log scrubber either way. `stored` is the column as read (sealed, or in clear).
    pub(super) fn reveal(
        &self,
        path: &Path,
        column: &'static str,
        server_key: &str,
        stored: Option<Secret>,
    ) -> Result<Option<Secret>, StoreError> {
        let Some(stored) = stored else {
            return Ok(None);
        };
        let plain = match (&self.key, self.encrypted) {
            (Some((key, _)), _) => {
                let place = cipher::place(table_of(column), column, server_key);
                let opened = cipher::open(key, &place, stored.expose()).map_err(|_| {
                    StoreError::Undecryptable {
                        server_key: server_key.to_string(),
                        column,
                    }
                })?;
                Secret::from(opened)
            }
            (None, true) => {
                return Err(StoreError::EncryptedNeedsKey {
                    path: path.to_path_buf(),
                });
            }
            (None, false) => stored,
        };
        crate::telemetry::secrets::register(plain.expose());
        Ok(Some(plain))
    }

    /// Refuses a write of secrets sealed with a key the file no longer uses (a `tokens rekey`
    /// by another process since this one opened it), or in clear into a file encrypted since:
    /// such a value could never be read back. Checked inside the write transaction, so a rekey
    /// cannot slip in between; costs one small query and one AEAD open of the key check per
    /// save.
    pub(super) fn check_still_ours(
        &self,
        conn: &Connection,
        path: &Path,
    ) -> Result<(), StoreError> {
        self.check_is_ours(read_key_check(conn)?.as_deref(), path)
    }

    /// The pure half of [`Self::check_still_ours`]: refuses writing under this seal into a
    /// database whose key check is `check` (read by the backend inside its transaction).
    pub(super) fn check_is_ours(&self, check: Option<&str>, path: &Path) -> Result<(), StoreError> {
        match (&self.key, check) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(StoreError::EncryptedNeedsKey {
                path: path.to_path_buf(),
            }),
            (Some((key, source)), check) => {
                let ours = check
                    .and_then(|c| cipher::open(key, &key_check_place(), c).ok())
                    .is_some_and(|text| text == KEY_CHECK);
                if ours {
                    Ok(())
                } else {
                    Err(StoreError::WrongKey {
                        path: path.to_path_buf(),
                        source_: source.clone(),
                    })
                }
            }
        }
    }

    /// Re-seals every secret with `new` in one transaction, then uses it. A value that does
    /// not open with the current key stops the rekey with nothing changed.
    pub(super) fn rekey(
        &mut self,
        conn: &mut Connection,
        path: &Path,
        new: StoreKey,
        new_source: KeySource,
    ) -> Result<(), StoreError> {
        let Some((old, _)) = &self.key else {
            return Err(StoreError::Key {
                path: path.to_path_buf(),
                reason: "the store is opened without a key (--insecure-plaintext); open it with \
                         a key first, which encrypts it"
                    .into(),
            });
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        reseal_all(&tx, |place, column, server_key, stored| {
            let plain =
                cipher::open(old, place, &stored).map_err(|_| StoreError::Undecryptable {
                    server_key: server_key.to_string(),
                    column,
                })?;
            Ok(cipher::seal(&new, place, &plain))
        })?;
        tx.execute(
            "UPDATE oauth_meta SET value = ?1 WHERE name = 'key_check'",
            [key_check_value(&new)],
        )?;
        tx.commit()?;
        self.key = Some((new, new_source));
        Ok(())
    }
}

/// Seals every secret of a plain-text file in one transaction (all or nothing), drops the
/// RFC 7592 `registration_access_token` older builds kept in `registration_json`, and
/// writes the key check. Another process that got there first is seen inside the
/// transaction, and its key is checked instead.
fn encrypt_in_place(
    conn: &mut Connection,
    path: &Path,
    key: &StoreKey,
    source: &KeySource,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some(check) = read_key_check(&tx)? {
        drop(tx);
        return verify_key(path, key, source, &check);
    }
    let sealed = reseal_all(&tx, |place, _, _, plain| {
        Ok(cipher::seal(key, place, &plain))
    })?;
    let registrations: Vec<(i64, String)> = tx
        .prepare(
            "SELECT rowid, registration_json FROM oauth_clients WHERE registration_json IS NOT NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (rowid, registration) in registrations {
        tx.execute(
            "UPDATE oauth_clients SET registration_json = ?2 WHERE rowid = ?1",
            params![rowid, without_management_token(&registration)],
        )?;
    }
    tx.execute(
        "INSERT INTO oauth_meta (name, value) VALUES ('key_check', ?1)",
        [key_check_value(key)],
    )?;
    tx.commit()?;
    if sealed > 0 {
        tracing::info!(
            path = %path.display(), values = sealed, key = %source,
            "the token database was encrypted in place"
        );
    }
    Ok(())
}

/// Rewrites every secret the file holds, inside `tx`: `reseal(place, column, server_key,
/// stored)` gives the new stored form of the value stored at `place` (see `cipher::place`).
/// Returns how many values were rewritten. By rowid: oauth_clients holds a row per
/// (server_key, issuer).
fn reseal_all(
    tx: &Connection,
    mut reseal: impl FnMut(&str, &'static str, &str, String) -> Result<String, StoreError>,
) -> Result<usize, StoreError> {
    let mut count = 0;
    for (table, column) in SECRET_COLUMNS {
        let rows: Vec<(i64, String, Option<String>)> = tx
            .prepare(&format!("SELECT rowid, server_key, {column} FROM {table}"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (rowid, server_key, stored) in rows {
            let Some(stored) = stored else { continue };
            let place = cipher::place(table, column, &server_key);
            tx.execute(
                &format!("UPDATE {table} SET {column} = ?2 WHERE rowid = ?1"),
                params![rowid, reseal(&place, column, &server_key, stored)?],
            )?;
            count += 1;
        }
    }
    Ok(count)
}
