//! The flow claim on PostgreSQL: a lease row per server, taken in one transaction before any
//! token request (one statement: insert, or take over a released or expired lease one fence
//! higher; concurrent claims serialize on the row, and exactly one gets it), with the flow
//! recorded and the token, client and ambiguous mark re-read in the same transaction. Writes
//! under the claim lock the lease row and go ahead only while it holds the writer's fence, so
//! a holder taken over after its expiry writes nothing. No session-level advisory lock is
//! held across a flow: nothing outlives a transaction on a pooled connection.

use tokio_postgres::Transaction;

use super::super::error::StoreError;
use super::super::lease::{ClaimRead, FlowEnd, LeaseRef, LeaseRow, RefreshTokenId, WriteGuard};
use super::super::lease::{LEASE_TAKEN_OVER, Written};
use super::super::sql::LEASE_COLUMNS;
use super::flows::NewFlow;
use super::{DB_NOW_MS, PgStore};
use crate::clock::now_ms;

fn lease_of(row: &tokio_postgres::Row) -> LeaseRow {
    LeaseRow {
        server_key: row.get(0),
        owner: row.get(1),
        fence: row.get(2),
        flow_id: row.get(3),
        claimed_at: row.get(4),
        expires_at: row.get(5),
    }
}

/// One claim attempt's answer.
// One per attempt, moved once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Attempt {
    /// The lease is ours with this fence; what the flow starts from was read under it.
    Claimed { fence: i64, read: ClaimRead },
    /// Another flow holds it (its row, with the expiry on the database's clock).
    Busy(LeaseRow),
}

impl PgStore {
    /// One attempt to claim `lease.server_key` for `lease.flow_id` (its `fence` is ignored:
    /// the database gives the next one).
    pub async fn try_claim(
        &self,
        lease: &LeaseRef,
        server_name: &str,
        kind: &str,
        lease_ms: i64,
    ) -> Result<Attempt, StoreError> {
        let attempt = self
            .in_transaction("claiming a server", async |tx| {
                let fail = |e: tokio_postgres::Error| self.fail("claiming a server", &e);
                let taken = tx
                    .query_opt(
                        &format!(
                            "WITH now AS (SELECT {DB_NOW_MS} AS ms)
                             INSERT INTO oauth_leases AS l ({LEASE_COLUMNS})
                             SELECT $1, $2, 1, $3, now.ms, now.ms + $4 FROM now
                             ON CONFLICT (server_key) DO UPDATE SET owner = excluded.owner,
                               fence = l.fence + 1, flow_id = excluded.flow_id,
                               claimed_at = excluded.claimed_at, expires_at = excluded.expires_at
                             WHERE l.expires_at IS NULL OR l.expires_at <= excluded.claimed_at
                             RETURNING fence"
                        ),
                        &[&lease.server_key, &lease.owner, &lease.flow_id, &lease_ms],
                    )
                    .await
                    .map_err(fail)?;
                let Some(taken) = taken else {
                    let holder = tx
                        .query_one(
                            &format!(
                                "SELECT {LEASE_COLUMNS} FROM oauth_leases WHERE server_key = $1"
                            ),
                            &[&lease.server_key],
                        )
                        .await
                        .map_err(fail)?;
                    // Nothing was written: committing this changes nothing.
                    return Ok(Attempt::Busy(lease_of(&holder)));
                };
                let flow = NewFlow {
                    flow_id: &lease.flow_id,
                    server_key: &lease.server_key,
                    server_name,
                    kind,
                    owner: &lease.owner,
                    lease_ms,
                };
                self.begin_flow_in(tx, &flow).await?;
                let read = self.read_for_claim(tx, &lease.server_key).await?;
                Ok(Attempt::Claimed {
                    fence: taken.get(0),
                    read,
                })
            })
            .await?;
        if matches!(attempt, Attempt::Claimed { .. }) {
            self.prune_if_due().await;
        }
        Ok(attempt)
    }

    /// What a claim reads, inside its transaction.
    async fn read_for_claim(
        &self,
        tx: &Transaction<'_>,
        server_key: &str,
    ) -> Result<ClaimRead, StoreError> {
        let token = self.load_token_with(tx, server_key).await?;
        let client = self
            .client_for_token_with(tx, server_key, token.as_ref())
            .await?;
        let token_by_login = match token.as_ref().and_then(|t| t.flow_id.as_deref()) {
            Some(flow) => self.flow_kind_with(tx, flow).await?.as_deref() == Some("login"),
            None => false,
        };
        Ok(ClaimRead {
            token,
            client,
            token_by_login,
            ambiguous: self.ambiguous_with(tx, server_key).await?,
        })
    }

    /// A server's lease row, if it was ever claimed.
    pub async fn lease(&self, server_key: &str) -> Result<Option<LeaseRow>, StoreError> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM oauth_leases WHERE server_key = $1");
        let rows = self
            .query_pooled("reading a lease", &sql, &[&server_key])
            .await?;
        Ok(rows.first().map(lease_of))
    }

    /// Every lease row, by server key.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM oauth_leases ORDER BY server_key");
        let rows = self.query_pooled("reading the leases", &sql, &[]).await?;
        Ok(rows.iter().map(lease_of).collect())
    }

    /// Locks the lease row in `tx`: `Some(LeaseLost)` when it holds another fence than
    /// `lease`'s. A takeover waits for this transaction, and then sees what it wrote.
    async fn lost(
        &self,
        tx: &Transaction<'_>,
        lease: &LeaseRef,
    ) -> Result<Option<Written>, StoreError> {
        let sql = "SELECT fence FROM oauth_leases WHERE server_key = $1 FOR UPDATE";
        let row = self
            .row_with(tx, "checking a lease", sql, &[&lease.server_key])
            .await?;
        let fence_now: Option<i64> = row.map(|r| r.get(0));
        Ok((fence_now != Some(lease.fence)).then_some(Written::LeaseLost { fence_now }))
    }

    /// Saves `token` (and `client`) under `lease`: only while the lease row holds its fence
    /// and `guard` allows; the lease is kept.
    pub async fn save_under_lease(
        &self,
        lease: &LeaseRef,
        token: &super::super::model::StoredToken,
        client: Option<&super::super::model::StoredClient>,
        guard: Option<&WriteGuard>,
    ) -> Result<Written, StoreError> {
        self.in_transaction("saving under a lease", async |tx| {
            if let Some(lost) = self.lost(tx, lease).await? {
                return Ok(lost);
            }
            if !WriteGuard::allows(guard) {
                return Ok(Written::Overtaken);
            }
            if let Some(client) = client {
                self.save_client_in(tx, client).await?;
            }
            self.save_token_in(tx, token).await?;
            Ok(Written::Done)
        })
        .await
    }

    /// Ends a claimed flow as `end` says, in one transaction: the save (fenced, guarded), the
    /// flow's row, and the release (announced to every instance). A claim taken over since
    /// writes nothing and releases nothing; its flow row is still closed.
    pub async fn finish_claim(
        &self,
        lease: &LeaseRef,
        end: &FlowEnd<'_>,
    ) -> Result<Written, StoreError> {
        self.in_transaction("ending a claimed flow", async |tx| {
            if let Some(lost) = self.lost(tx, lease).await? {
                self.finish_flow_in(tx, &lease.flow_id, Some(LEASE_TAKEN_OVER))
                    .await?;
                return Ok(lost);
            }
            let plan = end.plan();
            if let Some((token, client)) = plan.save {
                if let Some(client) = client {
                    self.save_client_in(tx, client).await?;
                }
                self.save_token_in(tx, token).await?;
            }
            self.finish_flow_in(tx, &lease.flow_id, plan.error).await?;
            self.release_in(tx, lease).await?;
            Ok(plan.written)
        })
        .await
    }

    async fn release_in(&self, tx: &Transaction<'_>, lease: &LeaseRef) -> Result<bool, StoreError> {
        let changed = tx
            .execute(
                "UPDATE oauth_leases SET expires_at = NULL
                 WHERE server_key = $1 AND fence = $2 AND expires_at IS NOT NULL",
                &[&lease.server_key, &lease.fence],
            )
            .await
            .map_err(|e| self.fail("releasing a lease", &e))?;
        Ok(changed > 0)
    }

    /// Closes the flow of `lease` as failed with `error` (a flow that ended without
    /// finishing) and releases the lease if the row still holds its fence. Whether it
    /// released.
    pub async fn release(&self, lease: &LeaseRef, error: &str) -> Result<bool, StoreError> {
        self.in_transaction("releasing a lease", async |tx| {
            self.finish_flow_in(tx, &lease.flow_id, Some(error)).await?;
            self.release_in(tx, lease).await
        })
        .await
    }

    /// Marks the token of `lease`'s server ambiguous (a refresh presenting `presented` was
    /// sent and never answered): only under the lease's fence, and only while the row still
    /// holds that refresh token. Whether it marked.
    pub async fn mark_ambiguous(
        &self,
        lease: &LeaseRef,
        presented: RefreshTokenId,
    ) -> Result<bool, StoreError> {
        let what = "marking a refresh ambiguous";
        self.in_transaction(what, async |tx| {
            if self.lost(tx, lease).await?.is_some()
                || self.stored_refresh_id(tx, &lease.server_key).await? != Some(presented)
            {
                return Ok(false);
            }
            tx.execute(
                "UPDATE oauth_tokens SET refresh_ambiguous_at = $2, refresh_ambiguous_flow = $3
                 WHERE server_key = $1",
                &[&lease.server_key, &now_ms(), &lease.flow_id],
            )
            .await
            .map_err(|e| self.fail(what, &e))?;
            Ok(true)
        })
        .await
    }
}
