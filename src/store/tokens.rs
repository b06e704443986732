//! The token queries: a server's token read (its times made sane, its secrets opened) and
//! written (sealed, durable), its refresh token dropped, the row deleted, and the status view
//! every process and the `sqlite3` shell read.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use super::error::StoreError;
use super::group_commit::write_tx;
use super::model::{StoredDpopKey, StoredToken, TokenStatusRow, from_columns};
use super::sealing::Seal;
use super::secret::Secret;
use super::sql::{TOKEN_COLUMNS, UPSERT_TOKEN};
use super::token_store::TokenStore;
use crate::clock::now_ms;

/// A stored token's times, made sane once for every reader (the rows come from a database
/// other processes write too): `obtained_at` not before 1970 nor after now, `expires_at` at
/// most `MAX_LIFETIME` from now.
pub(super) fn sane_times(expires_at: Option<i64>, obtained_at: i64) -> (Option<i64>, i64) {
    let now = now_ms();
    let latest = now.saturating_add(crate::oauth::token::MAX_LIFETIME.as_millis() as i64);
    (expires_at.map(|e| e.min(latest)), obtained_at.clamp(0, now))
}

/// A token row's secret columns opened with the store's seal (and registered with the log
/// scrubber).
pub(super) fn opened(
    seal: &Seal,
    path: &Path,
    mut token: StoredToken,
) -> Result<StoredToken, StoreError> {
    let key = token.server_key.clone();
    let reveal = |column, stored: Secret| {
        Ok::<_, StoreError>(
            seal.reveal(path, column, &key, Some(stored))?
                .unwrap_or_default(),
        )
    };
    token.access_token = reveal("access_token", token.access_token)?;
    token.refresh_token = seal.reveal(path, "refresh_token", &key, token.refresh_token)?;
    if let Some(dpop) = &mut token.dpop {
        dpop.private_key = reveal("dpop_key", std::mem::take(&mut dpop.private_key))?;
    }
    Ok(token)
}

/// A token row's secret columns as stored, sealed with the store's seal: the access token,
/// the refresh token and the DPoP key.
pub(super) fn sealed(seal: &Seal, t: &StoredToken) -> [Option<String>; 3] {
    let hide = |column, value| seal.hide(column, &t.server_key, value);
    [
        hide("access_token", Some(&t.access_token)),
        hide("refresh_token", t.refresh_token.as_ref()),
        hide("dpop_key", t.dpop.as_ref().map(|d| &d.private_key)),
    ]
}

/// The DPoP key of a token row: both columns or neither.
pub(super) fn dpop_of(
    server_key: &str,
    private_key: Option<Secret>,
    jkt: Option<String>,
) -> Option<StoredDpopKey> {
    match (private_key, jkt) {
        (Some(private_key), Some(jkt)) => Some(StoredDpopKey { private_key, jkt }),
        (None, None) => None,
        _ => {
            // Written half by hand, or by a build before migration 0006 still running on this
            // file: the token is used unbound.
            tracing::warn!(
                server_key,
                "the stored token has only one of dpop_key and dpop_jkt; it is used without DPoP \
                 (a refresh a DPoP server refuses leads to a login)"
            );
            None
        }
    }
}

impl TokenStore {
    /// Reads a server's token. Its times come from a file other processes write too, so they
    /// are made sane here, once, for every reader (see [`sane_times`]).
    pub fn load_token(&self, server_key: &str) -> Result<Option<StoredToken>, StoreError> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM oauth_tokens WHERE server_key = ?1"
            ))?
            .query_row([server_key], |r| {
                let (expires_at, obtained_at) = sane_times(r.get(9)?, r.get(10)?);
                Ok(StoredToken {
                    server_key: r.get(0)?,
                    server_name: r.get(1)?,
                    server_url: r.get(2)?,
                    resource: r.get(3)?,
                    issuer: r.get(4)?,
                    access_token: r.get(5)?,
                    refresh_token: r.get(6)?,
                    token_type: r.get(7)?,
                    scope: r.get(8)?,
                    expires_at,
                    obtained_at,
                    flow_id: r.get(11)?,
                    dpop: dpop_of(server_key, r.get(12)?, r.get(13)?),
                })
            })
            .optional()?;
        match row {
            Some(token) => Ok(Some(opened(&self.seal, &self.path, token)?)),
            None => Ok(None),
        }
    }

    /// Writes a token durably (the transaction commits with `synchronous=FULL`).
    pub fn save_token(&mut self, t: &StoredToken) -> Result<(), StoreError> {
        let [access, refresh, dpop_key] = sealed(&self.seal, t);
        let dpop_jkt = t.dpop.as_ref().map(|d| d.jkt.as_str());
        self.write_sealed(
            UPSERT_TOKEN,
            params![
                t.server_key,
                t.server_name,
                t.server_url,
                t.resource,
                t.issuer,
                access,
                refresh,
                t.token_type,
                t.scope,
                t.expires_at,
                t.obtained_at,
                now_ms(),
                t.flow_id,
                dpop_key,
                dpop_jkt
            ],
        )
    }

    /// Runs `sql` (an upsert of a row with sealed columns) durably, after checking inside its
    /// transaction that the file's key is still this seal's (see `Seal::check_still_ours`).
    pub(super) fn write_sealed(
        &mut self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), StoreError> {
        write_tx(&mut self.conn, self.batched, |tx| {
            self.seal.check_still_ours(tx, &self.path)?;
            tx.prepare_cached(sql)?.execute(params)?;
            Ok(())
        })
    }

    /// Forgets only the refresh token (it was refused for good); the access token stays.
    pub fn drop_refresh_token(&mut self, server_key: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE oauth_tokens SET refresh_token = NULL, refresh_ambiguous_at = NULL,
               refresh_ambiguous_flow = NULL, updated_at = ?2 WHERE server_key = ?1",
            params![server_key, now_ms()],
        )?;
        Ok(())
    }

    pub fn delete_token(&mut self, server_key: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM oauth_tokens WHERE server_key = ?1",
            [server_key],
        )?;
        Ok(())
    }

    /// Every server's row of the `oauth_token_status` view, by server name.
    pub fn token_status(&self) -> Result<Vec<TokenStatusRow>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT server_key, server_name, server_url, status, expires_at, has_refresh_token,
                    scope, updated_at
             FROM oauth_token_status ORDER BY server_name",
        )?;
        let rows = statement.query_map([], |r| {
            from_columns! {
                r => TokenStatusRow: server_key, server_name, server_url, status, expires_at,
                has_refresh_token, scope, updated_at
            }
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
