//! Sealing on PostgreSQL: the same secret columns, cipher, associated data and key check as
//! on SQLite (`sealing`), with the key every instance shares: `--key-file` (created when
//! absent, for a store not encrypted yet) or `MCPPROXY_OAUTH_KEY`. There is no key beside a
//! data directory here: instances on several hosts must be given the same key. Every write
//! checks the key check inside its transaction, as on SQLite.

use std::path::Path;

use tokio_postgres::{Client, GenericClient};

use super::super::error::StoreError;
use super::super::keys::{self, KEY_ENV, Sealing};
use super::super::sealing::{Seal, key_check_value, verify_key};
use super::connect::db_failure;

/// The sealed key check, if the store is encrypted.
pub(super) async fn read_key_check(
    client: &(impl GenericClient + Sync),
    target: &str,
) -> Result<Option<String>, StoreError> {
    let row = client
        .query_opt("SELECT value FROM oauth_meta WHERE name = 'key_check'", &[])
        .await
        .map_err(|e| db_failure(target, "reading the key check", &e))?;
    Ok(row.map(|r| r.get(0)))
}

/// The seal of an opened store, as `sealing` says: an encrypted store needs its key, and a
/// wrong one changes nothing; a new store gets the key check of the key given.
pub(super) async fn apply(
    client: &mut Client,
    target: &str,
    place: &Path,
    sealing: &Sealing,
) -> Result<Seal, StoreError> {
    let check = read_key_check(&*client, target).await?;
    let Sealing::Encrypted(spec) = sealing else {
        if check.is_some() {
            return Err(StoreError::EncryptedNeedsKey {
                path: place.to_path_buf(),
            });
        }
        tracing::warn!(
            store = target,
            "--insecure-plaintext: tokens and client secrets are stored in clear in PostgreSQL"
        );
        return Ok(Seal::unknown());
    };
    let key_error = |reason: String| StoreError::Key {
        path: place.to_path_buf(),
        reason,
    };
    if spec.key_file.is_none() && std::env::var_os(KEY_ENV).is_none() {
        return Err(key_error(format!(
            "a PostgreSQL store is shared by instances, which need the same key: pass \
             --key-file or set {KEY_ENV} (the same key on every instance)"
        )));
    }
    // With `--key-file` or the environment set, the database path is not consulted.
    let (key, source) =
        keys::resolve(spec, place, check.is_some()).map_err(|e| key_error(e.to_string()))?;
    if let Some(check) = check {
        verify_key(place, &key, &source, &check)?;
        return Ok(Seal::keyed(key, source));
    }
    let fail = |what: &'static str| move |e: tokio_postgres::Error| db_failure(target, what, &e);
    let tx = client.transaction().await.map_err(fail("sealing"))?;
    let clear: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM oauth_tokens)
                 OR EXISTS (SELECT 1 FROM oauth_clients WHERE client_secret IS NOT NULL)",
            &[],
        )
        .await
        .map_err(fail("looking for secrets in clear"))?
        .get(0);
    if clear {
        return Err(key_error(
            "it holds secrets in clear (written with --insecure-plaintext), and encrypting a \
             PostgreSQL store in place is not supported yet; nothing was changed: keep \
             --insecure-plaintext, or log the servers out and in again with a key"
                .into(),
        ));
    }
    // Another instance starting now may write its key check first: its key must be ours.
    tx.execute(
        "INSERT INTO oauth_meta (name, value) VALUES ('key_check', $1) ON CONFLICT (name) DO NOTHING",
        &[&key_check_value(&key)],
    )
    .await
    .map_err(fail("writing the key check"))?;
    let written = read_key_check(&tx, target).await?.unwrap_or_default();
    tx.commit()
        .await
        .map_err(fail("committing the key check"))?;
    verify_key(place, &key, &source, &written)?;
    Ok(Seal::keyed(key, source))
}
