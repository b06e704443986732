//! The flow history on PostgreSQL, as on SQLite (`store::flow_history`): a flow recorded as
//! running and finished (its error scrubbed), the listings, flows whose lease ended before
//! they did closed as abandoned, and the bounded pruning that applies `FlowRetention`.

use std::sync::atomic::Ordering;

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Transaction};

use super::super::error::StoreError;
use super::super::model::FlowRow;
use super::{DB_NOW_MS, PgStore};
use crate::clock::now_ms;

const FLOW_COLUMNS: &str =
    "flow_id, server_name, kind, state, owner, started_at, finished_at, error";

fn flow_of(row: &Row) -> FlowRow {
    FlowRow {
        flow_id: row.get(0),
        server_name: row.get(1),
        kind: row.get(2),
        state: row.get(3),
        owner: row.get(4),
        started_at: row.get(5),
        finished_at: row.get(6),
        error: row.get(7),
    }
}

/// A flow as `begin_flow_in` records it.
pub(super) struct NewFlow<'a> {
    pub flow_id: &'a str,
    pub server_key: &'a str,
    pub server_name: &'a str,
    pub kind: &'a str,
    pub owner: &'a str,
    pub lease_ms: i64,
}

impl PgStore {
    /// Records a flow as running inside `tx`.
    pub(super) async fn begin_flow_in(
        &self,
        tx: &Transaction<'_>,
        flow: &NewFlow<'_>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        tx.execute(
            "INSERT INTO oauth_flows (flow_id, server_key, server_name, kind, state, owner,
               lease_expires_at, started_at) VALUES ($1, $2, $3, $4, 'running', $5, $6, $7)",
            &[
                &flow.flow_id,
                &flow.server_key,
                &flow.server_name,
                &flow.kind,
                &flow.owner,
                &now.saturating_add(flow.lease_ms),
                &now,
            ],
        )
        .await
        .map_err(|e| self.fail("recording a flow", &e))?;
        self.inner.flows_since_prune.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records a flow's end inside `tx` (an error is scrubbed of known secrets).
    pub(super) async fn finish_flow_in(
        &self,
        client: &(impl GenericClient + Sync),
        flow_id: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let error = error.map(|e| crate::telemetry::secrets::scrub(e).into_owned());
        client
            .execute(
                "UPDATE oauth_flows SET state = $2, finished_at = $3, lease_expires_at = NULL,
                   error = $4 WHERE flow_id = $1",
                &[&flow_id, &state, &now_ms(), &error],
            )
            .await
            .map_err(|e| self.fail("recording a flow's end", &e))?;
        Ok(())
    }

    /// Records a flow's end on its own.
    pub async fn finish_flow(&self, flow_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        self.pooled("recording a flow's end", async |client| {
            self.finish_flow_in(client, flow_id, error).await
        })
        .await
    }

    /// The kind (`refresh` or `login`) of a recorded flow, read with `client`.
    pub(super) async fn flow_kind_with(
        &self,
        client: &(impl GenericClient + Sync),
        flow_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let sql = "SELECT kind FROM oauth_flows WHERE flow_id = $1";
        let row = self
            .row_with(client, "reading a flow", sql, &[&flow_id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The newest flows first (the index `oauth_flows_by_start`).
    pub async fn recent_flows(&self, limit: u32) -> Result<Vec<FlowRow>, StoreError> {
        self.flows(None, None, limit).await
    }

    /// The newest flows first, of one server and/or one flow ID when given.
    pub async fn flows(
        &self,
        server_name: Option<&str>,
        flow_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FlowRow>, StoreError> {
        let sql = format!(
            "SELECT {FLOW_COLUMNS} FROM oauth_flows
             WHERE ($1::TEXT IS NULL OR server_name = $1)
               AND ($2::TEXT IS NULL OR flow_id = $2)
             ORDER BY started_at DESC LIMIT $3"
        );
        let params: [&(dyn ToSql + Sync); 3] = [&server_name, &flow_id, &i64::from(limit)];
        let rows = self.query_pooled("reading flows", &sql, &params).await?;
        Ok(rows.iter().map(flow_of).collect())
    }

    /// Closes, as `abandoned`, every `running` flow that no live lease covers: its instance
    /// ended (or lost the database) and its lease was released or ran out. Returns them.
    pub async fn close_abandoned_flows(&self) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "UPDATE oauth_flows f SET state = 'abandoned', finished_at = $1,
               lease_expires_at = NULL,
               error = 'its lease ended before the flow finished (its instance \
                        stopped or lost the database)'
             WHERE f.state = 'running' AND NOT EXISTS (
               SELECT 1 FROM oauth_leases l WHERE l.server_key = f.server_key
                 AND l.flow_id = f.flow_id AND l.expires_at > {DB_NOW_MS})
             RETURNING f.flow_id"
        );
        let rows = (self.query_pooled("closing abandoned flows", &sql, &[&now_ms()])).await?;
        let mut closed: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        closed.sort();
        Ok(closed)
    }

    /// One bounded pruning step (at most `retention.batch` rows, the oldest first), by the
    /// same rules as on SQLite. Returns the rows deleted.
    pub async fn prune_flows(&self) -> Result<usize, StoreError> {
        self.inner.flows_since_prune.store(0, Ordering::Relaxed);
        let r = self.inner.options.retention;
        let oldest_kept =
            now_ms().saturating_sub(r.max_age.as_millis().min(i64::MAX as u128) as i64);
        self.pooled("pruning flow history", async |client| {
            let deleted = client
                .execute(
                    "DELETE FROM oauth_flows WHERE flow_id IN (
                       SELECT flow_id FROM oauth_flows
                       WHERE state <> 'running'
                         AND (started_at < $1
                              OR started_at < (SELECT started_at FROM oauth_flows
                                               ORDER BY started_at DESC LIMIT 1 OFFSET $2))
                         AND flow_id NOT IN (SELECT flow_id FROM oauth_tokens
                                             WHERE flow_id IS NOT NULL)
                       ORDER BY started_at LIMIT $3)",
                    &[
                        &oldest_kept,
                        &(i64::from(r.max_count.max(1)) - 1),
                        &i64::from(r.batch),
                    ],
                )
                .await
                .map_err(|e| self.fail("pruning flow history", &e))?;
            Ok(deleted as usize)
        })
        .await
    }

    /// `prune_flows` until nothing is left to delete, at most `steps` steps.
    pub async fn prune_flows_at_open(&self, steps: u32) -> Result<usize, StoreError> {
        let mut total = 0;
        for _ in 0..steps {
            let deleted = self.prune_flows().await?;
            total += deleted;
            if deleted < self.inner.options.retention.batch as usize {
                break;
            }
        }
        Ok(total)
    }

    /// One pruning step once `every_flows` flows were recorded since the last (a failure is
    /// a warning: only history is at stake).
    pub(super) async fn prune_if_due(&self) {
        let due = self.inner.options.retention.every_flows;
        if self.inner.flows_since_prune.load(Ordering::Relaxed) < due {
            return;
        }
        match self.prune_flows().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "old flow history pruned"),
            Err(e) => tracing::warn!(error = %e, "old flow history could not be pruned now"),
        }
    }
}
