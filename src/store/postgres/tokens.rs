//! The token queries on PostgreSQL, as on SQLite (`store::tokens`): a token read (times made
//! sane, secrets opened) and written (sealed, the key check verified in the transaction, the
//! ambiguous mark cleared), deleted, its refresh token dropped only if it is the one refused,
//! and the status view.

use tokio_postgres::{GenericClient, Row, Transaction};

use super::super::error::StoreError;
use super::super::lease::{Ambiguous, RefreshTokenId};
use super::super::model::{StoredToken, TokenStatusRow};
use super::super::sql::{TOKEN_COLUMNS, UPSERT_TOKEN};
use super::super::tokens::{dpop_of, opened, sane_times, sealed};
use super::PgStore;
use super::seal::read_key_check;
use crate::clock::now_ms;

fn token_of(row: &Row) -> StoredToken {
    let server_key: String = row.get(0);
    let (expires_at, obtained_at) = sane_times(row.get(9), row.get(10));
    let dpop = dpop_of(&server_key, row.get(12), row.get(13));
    StoredToken {
        server_key,
        server_name: row.get(1),
        server_url: row.get(2),
        resource: row.get(3),
        issuer: row.get(4),
        access_token: row.get(5),
        refresh_token: row.get(6),
        token_type: row.get(7),
        scope: row.get(8),
        expires_at,
        obtained_at,
        flow_id: row.get(11),
        dpop,
    }
}

impl PgStore {
    /// A server's token, read with `client` (a transaction's, or a pooled connection).
    pub(super) async fn load_token_with(
        &self,
        client: &(impl GenericClient + Sync),
        server_key: &str,
    ) -> Result<Option<StoredToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM oauth_tokens WHERE server_key = $1");
        let row = self
            .row_with(client, "reading a token", &sql, &[&server_key])
            .await?;
        match row {
            Some(row) => Ok(Some(opened(self.seal(), self.place(), token_of(&row))?)),
            None => Ok(None),
        }
    }

    pub async fn load_token(&self, server_key: &str) -> Result<Option<StoredToken>, StoreError> {
        self.pooled("reading a token", async |client| {
            self.load_token_with(client, server_key).await
        })
        .await
    }

    /// Refuses a write when the store's key check is not this seal's (a rekey elsewhere).
    pub(super) async fn check_key(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let check = read_key_check(tx, self.target()).await?;
        self.seal().check_is_ours(check.as_deref(), self.place())
    }

    /// Writes a token inside `tx` (sealed; clears the ambiguous mark).
    pub(super) async fn save_token_in(
        &self,
        tx: &Transaction<'_>,
        t: &StoredToken,
    ) -> Result<(), StoreError> {
        self.check_key(tx).await?;
        let [access, refresh, dpop_key] = sealed(self.seal(), t);
        let dpop_jkt = t.dpop.as_ref().map(|d| d.jkt.as_str());
        tx.execute(
            UPSERT_TOKEN,
            &[
                &t.server_key,
                &t.server_name,
                &t.server_url,
                &t.resource,
                &t.issuer,
                &access,
                &refresh,
                &t.token_type,
                &t.scope,
                &t.expires_at,
                &t.obtained_at,
                &now_ms(),
                &t.flow_id,
                &dpop_key,
                &dpop_jkt,
            ],
        )
        .await
        .map_err(|e| self.fail("saving a token", &e))?;
        Ok(())
    }

    /// Writes a token in its own transaction, with no lease: for a process that holds no
    /// claim (a login through the CLI, a test). A flow writes under its claim instead
    /// (`Claim::save`, `Claim::finish`), so a taken-over flow never overwrites a newer token.
    pub async fn save_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        self.in_transaction("saving a token", async |tx| {
            self.save_token_in(tx, token).await
        })
        .await
    }

    /// Deletes a server's token (a logout) and, in the same transaction, moves its lease one
    /// fence on (released): a refresh another instance is running now finds its fence gone
    /// and writes nothing back (`LeaseLost`). The fenced write locks the lease row, so a save
    /// in flight either commits before the delete (and is deleted) or is refused.
    pub async fn delete_token(&self, server_key: &str) -> Result<(), StoreError> {
        let fail = |e: tokio_postgres::Error| self.fail("deleting a token", &e);
        self.in_transaction("deleting a token", async |tx| {
            tx.execute(
                "UPDATE oauth_leases SET fence = fence + 1, expires_at = NULL
                 WHERE server_key = $1",
                &[&server_key],
            )
            .await
            .map_err(fail)?;
            tx.execute(
                "DELETE FROM oauth_tokens WHERE server_key = $1",
                &[&server_key],
            )
            .await
            .map_err(fail)?;
            Ok(())
        })
        .await
    }

    /// The id of the refresh token a server's row holds, read (and the row locked) in `tx`.
    pub(super) async fn stored_refresh_id(
        &self,
        tx: &Transaction<'_>,
        server_key: &str,
    ) -> Result<Option<RefreshTokenId>, StoreError> {
        let sql = "SELECT refresh_token FROM oauth_tokens WHERE server_key = $1 FOR UPDATE";
        let row = self
            .row_with(tx, "reading a refresh token", sql, &[&server_key])
            .await?;
        let stored = row.and_then(|r| r.get(0));
        let opened = self
            .seal()
            .reveal(self.place(), "refresh_token", server_key, stored)?;
        Ok(opened.as_ref().map(RefreshTokenId::of_secret))
    }

    /// Forgets the refresh token of `server_key` only if the row still holds the one that was
    /// refused (`invalid_grant`): never another instance's newer one. Whether it dropped.
    pub async fn drop_refresh_token_if(
        &self,
        server_key: &str,
        refused: RefreshTokenId,
    ) -> Result<bool, StoreError> {
        let fail = |e: tokio_postgres::Error| self.fail("dropping a refresh token", &e);
        self.in_transaction("dropping a refresh token", async |tx| {
            if self.stored_refresh_id(tx, server_key).await? != Some(refused) {
                return Ok(false);
            }
            tx.execute(
                "UPDATE oauth_tokens SET refresh_token = NULL, refresh_ambiguous_at = NULL,
                   refresh_ambiguous_flow = NULL, updated_at = $2 WHERE server_key = $1",
                &[&server_key, &now_ms()],
            )
            .await
            .map_err(fail)?;
            Ok(true)
        })
        .await
    }

    /// The ambiguous mark of a server's token, read with `client`.
    pub(super) async fn ambiguous_with(
        &self,
        client: &(impl GenericClient + Sync),
        server_key: &str,
    ) -> Result<Option<Ambiguous>, StoreError> {
        let sql = "SELECT refresh_ambiguous_at, refresh_ambiguous_flow FROM oauth_tokens
                   WHERE server_key = $1";
        let row = self
            .row_with(client, "reading the ambiguous mark", sql, &[&server_key])
            .await?;
        Ok(row.and_then(|r| {
            r.get::<_, Option<i64>>(0).map(|since| Ambiguous {
                since,
                flow_id: r.get(1),
            })
        }))
    }

    pub async fn ambiguous(&self, server_key: &str) -> Result<Option<Ambiguous>, StoreError> {
        self.pooled("reading the ambiguous mark", async |client| {
            self.ambiguous_with(client, server_key).await
        })
        .await
    }

    /// Every server's row of the `oauth_token_status` view, by server name.
    pub async fn token_status(&self) -> Result<Vec<TokenStatusRow>, StoreError> {
        let sql = "SELECT server_key, server_name, server_url, status, expires_at,
                          has_refresh_token, scope, updated_at
                   FROM oauth_token_status ORDER BY server_name";
        let rows = self
            .query_pooled("reading the token status", sql, &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| TokenStatusRow {
                server_key: r.get(0),
                server_name: r.get(1),
                server_url: r.get(2),
                status: r.get(3),
                expires_at: r.get(4),
                has_refresh_token: r.get(5),
                scope: r.get(6),
                updated_at: r.get(7),
            })
            .collect())
    }
}
