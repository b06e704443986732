//! The flow claim on SQLite, as queries on the one connection: the lease row of a server
//! (taken under the server's OS file lock, which is what makes it exclusive here; the row
//! carries the fence and shows the holder), writes allowed only while the row holds the
//! writer's fence, the release, the ambiguous mark, and the conditional drop of a refused
//! refresh token. The same operations on PostgreSQL are in `postgres::lease`.

use rusqlite::{Connection, OptionalExtension, params};

use super::error::StoreError;
use super::group_commit::write_tx;
use super::lease::{Ambiguous, ClaimRead, FlowEnd, LeaseRef, LeaseRow, RefreshTokenId, Written};
use super::lease::{LEASE_TAKEN_OVER, WriteGuard};
use super::model::{StoredClient, StoredToken, from_columns};
use super::secret::Secret;
use super::sql::LEASE_COLUMNS;
use super::token_store::TokenStore;
use crate::clock::now_ms;

fn lease_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    from_columns! { r => LeaseRow: server_key, owner, fence, flow_id, claimed_at, expires_at }
}

/// The fence the lease row of `server_key` holds now.
fn fence_now(conn: &Connection, server_key: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT fence FROM oauth_leases WHERE server_key = ?1",
            [server_key],
            |r| r.get(0),
        )
        .optional()?)
}

impl TokenStore {
    /// Takes the lease row of a server for a flow, one fence higher than the last claim, and
    /// records the flow as running, in one transaction; then reads what the flow starts from.
    /// The caller holds the server's file lock: a lease left by a process that died (its file
    /// lock is free now) is taken over whatever its expiry says.
    pub fn claim_and_read(
        &mut self,
        lease: &LeaseRef,
        server_name: &str,
        kind: &str,
        lease_ms: i64,
    ) -> Result<(i64, ClaimRead), StoreError> {
        let fence = self.in_one_write(|s| {
            let now = now_ms();
            let fence: i64 = s.conn.query_row(
                &format!(
                    "INSERT INTO oauth_leases ({LEASE_COLUMNS}) VALUES (?1, ?2, 1, ?3, ?4, ?5)
                     ON CONFLICT(server_key) DO UPDATE SET owner = excluded.owner,
                       fence = oauth_leases.fence + 1, flow_id = excluded.flow_id,
                       claimed_at = excluded.claimed_at, expires_at = excluded.expires_at
                     RETURNING fence"
                ),
                params![
                    lease.server_key,
                    lease.owner,
                    lease.flow_id,
                    now,
                    now.saturating_add(lease_ms)
                ],
                |r| r.get(0),
            )?;
            s.begin_flow(
                &lease.flow_id,
                &lease.server_key,
                server_name,
                kind,
                &lease.owner,
                lease_ms,
            )?;
            Ok(fence)
        })?;
        self.prune_if_due();
        Ok((fence, self.read_for_claim(&lease.server_key)?))
    }

    /// What a claim reads: the token, its client, whether a login wrote it, the ambiguous
    /// mark.
    fn read_for_claim(&self, server_key: &str) -> Result<ClaimRead, StoreError> {
        let (token, client) = self.load_token_and_client(server_key)?;
        let token_by_login = self.written_by_login(token.as_ref())?;
        Ok(ClaimRead {
            token,
            client,
            token_by_login,
            ambiguous: self.ambiguous(server_key)?,
        })
    }

    /// A server's lease row, if it was ever claimed.
    pub fn lease(&self, server_key: &str) -> Result<Option<LeaseRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {LEASE_COLUMNS} FROM oauth_leases WHERE server_key = ?1"),
                [server_key],
                lease_row,
            )
            .optional()?)
    }

    /// Every lease row, by server key.
    pub fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let mut statement = self.conn.prepare(&format!(
            "SELECT {LEASE_COLUMNS} FROM oauth_leases ORDER BY server_key"
        ))?;
        let rows = statement.query_map([], lease_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Saves `token` (and `client`) under `lease`: only while the lease row holds its fence
    /// and `guard` allows; the lease is kept.
    pub fn save_under_lease(
        &mut self,
        lease: &LeaseRef,
        token: &StoredToken,
        client: Option<&StoredClient>,
        guard: Option<&WriteGuard>,
    ) -> Result<Written, StoreError> {
        self.in_one_write(|s| {
            if let Some(lost) = s.lost(lease)? {
                return Ok(lost);
            }
            if !WriteGuard::allows(guard) {
                return Ok(Written::Overtaken);
            }
            if let Some(client) = client {
                s.save_client(client)?;
            }
            s.save_token(token)?;
            Ok(Written::Done)
        })
    }

    /// Ends a claimed flow as `end` says, in one transaction: the save (fenced, guarded), the
    /// flow's row, and the release. A claim taken over since writes nothing and releases
    /// nothing (the lease is another flow's now); its flow row is still closed.
    pub fn finish_claim(
        &mut self,
        lease: &LeaseRef,
        end: &FlowEnd<'_>,
    ) -> Result<Written, StoreError> {
        self.in_one_write(|s| {
            if let Some(lost) = s.lost(lease)? {
                s.finish_flow(&lease.flow_id, Some(LEASE_TAKEN_OVER))?;
                return Ok(lost);
            }
            let plan = end.plan();
            if let Some((token, client)) = plan.save {
                if let Some(client) = client {
                    s.save_client(client)?;
                }
                s.save_token(token)?;
            }
            s.finish_flow(&lease.flow_id, plan.error)?;
            s.release_lease(lease)?;
            Ok(plan.written)
        })
    }

    /// `Some(LeaseLost)` when the lease row no longer holds `lease`'s fence.
    fn lost(&self, lease: &LeaseRef) -> Result<Option<Written>, StoreError> {
        let fence_now = fence_now(&self.conn, &lease.server_key)?;
        Ok((fence_now != Some(lease.fence)).then_some(Written::LeaseLost { fence_now }))
    }

    /// Releases `lease` if the row still holds its fence; whether it did.
    pub fn release_lease(&mut self, lease: &LeaseRef) -> Result<bool, StoreError> {
        let changed = write_tx(&mut self.conn, self.batched, |tx| {
            Ok(tx.execute(
                "UPDATE oauth_leases SET expires_at = NULL
                 WHERE server_key = ?1 AND fence = ?2 AND expires_at IS NOT NULL",
                params![lease.server_key, lease.fence],
            )?)
        })?;
        Ok(changed > 0)
    }

    /// Closes the flow of `lease` as failed with `error` (a flow that ended without
    /// finishing) and releases the lease if the row still holds its fence. Whether it
    /// released.
    pub fn release_claim(&mut self, lease: &LeaseRef, error: &str) -> Result<bool, StoreError> {
        self.in_one_write(|s| {
            s.finish_flow(&lease.flow_id, Some(error))?;
            s.release_lease(lease)
        })
    }

    /// The ambiguous mark of a server's token, if a refresh was left without an answer.
    pub fn ambiguous(&self, server_key: &str) -> Result<Option<Ambiguous>, StoreError> {
        let mark: Option<(Option<i64>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT refresh_ambiguous_at, refresh_ambiguous_flow FROM oauth_tokens
                 WHERE server_key = ?1",
                [server_key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match mark {
            Some((Some(since), flow_id)) => Some(Ambiguous { since, flow_id }),
            _ => None,
        })
    }

    /// The id of the refresh token the row of `server_key` holds (opened with the seal).
    fn stored_refresh_id(&self, server_key: &str) -> Result<Option<RefreshTokenId>, StoreError> {
        let stored: Option<Option<Secret>> = self
            .conn
            .query_row(
                "SELECT refresh_token FROM oauth_tokens WHERE server_key = ?1",
                [server_key],
                |r| r.get(0),
            )
            .optional()?;
        let opened = self
            .seal
            .reveal(&self.path, "refresh_token", server_key, stored.flatten())?;
        Ok(opened.as_ref().map(RefreshTokenId::of_secret))
    }

    /// Marks the token of `lease`'s server ambiguous (a refresh presenting `presented` was
    /// sent and never answered): only under the lease's fence, and only while the row still
    /// holds that refresh token. Whether it marked.
    pub fn mark_ambiguous(
        &mut self,
        lease: &LeaseRef,
        presented: RefreshTokenId,
    ) -> Result<bool, StoreError> {
        self.in_one_write(|s| {
            if s.lost(lease)?.is_some()
                || s.stored_refresh_id(&lease.server_key)? != Some(presented)
            {
                return Ok(false);
            }
            s.conn.execute(
                "UPDATE oauth_tokens SET refresh_ambiguous_at = ?2, refresh_ambiguous_flow = ?3
                 WHERE server_key = ?1",
                params![lease.server_key, now_ms(), lease.flow_id],
            )?;
            Ok(true)
        })
    }

    /// Forgets the refresh token of `server_key` (the access token stays) only if the row
    /// still holds the one that was refused: another instance's newer refresh token is never
    /// dropped for an `invalid_grant` its older one got. Whether it dropped.
    pub fn drop_refresh_token_if(
        &mut self,
        server_key: &str,
        refused: RefreshTokenId,
    ) -> Result<bool, StoreError> {
        self.in_one_write(|s| {
            if s.stored_refresh_id(server_key)? != Some(refused) {
                return Ok(false);
            }
            s.drop_refresh_token(server_key)?;
            Ok(true)
        })
    }
}
