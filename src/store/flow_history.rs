//! The flow history, `oauth_flows`: a flow recorded as running (with the lease that shows which
//! process owns it) and finished, the reads and writes a flow makes at its start and end in
//! one registry job each, flows of dead processes closed as abandoned, the listings, and the
//! bounded pruning that applies `FlowRetention`.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use super::error::StoreError;
use super::lock;
use super::model::{FlowRetention, FlowRow, FlowStart, StoredClient, StoredToken, from_columns};
use super::token_store::TokenStore;
use crate::clock::now_ms;

/// The newest flows first: served by the index `oauth_flows_by_start` (no sort).
pub const RECENT_FLOWS_SQL: &str = "SELECT flow_id, server_name, kind, state, owner, started_at, \
                                    finished_at, error FROM oauth_flows ORDER BY started_at DESC \
                                    LIMIT ?1";

fn flow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlowRow> {
    from_columns! {
        r => FlowRow: flow_id, server_name, kind, state, owner, started_at, finished_at, error
    }
}

impl TokenStore {
    /// The kind (`refresh` or `login`) of a recorded flow.
    pub fn flow_kind(&self, flow_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT kind FROM oauth_flows WHERE flow_id = ?1")?
            .query_row([flow_id], |r| r.get(0))
            .optional()?)
    }

    /// Records a flow as running, with a lease that shows which process owns it until when.
    pub fn begin_flow(
        &mut self,
        flow_id: &str,
        server_key: &str,
        server_name: &str,
        kind: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn
            .prepare_cached(
                "INSERT INTO oauth_flows (flow_id, server_key, server_name, kind, state, owner, \
             lease_expires_at, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)",
            )?
            .execute(params![
                flow_id,
                server_key,
                server_name,
                kind,
                owner,
                now + lease_ms,
                now
            ])?;
        self.count_flow();
        Ok(())
    }

    pub fn finish_flow(&mut self, flow_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        // The error may quote a server's text: known secrets never reach the table.
        let error = error.map(|e| crate::telemetry::secrets::scrub(e).into_owned());
        self.conn
            .prepare_cached(
                "UPDATE oauth_flows SET state = ?2, finished_at = ?3, lease_expires_at = NULL, \
             error = ?4 WHERE flow_id = ?1",
            )?
            .execute(params![flow_id, state, now_ms(), error])?;
        Ok(())
    }

    /// Closes, as `abandoned`, every `running` flow whose server's flow lock is free: the lock
    /// is held for a flow's whole life and the kernel releases it when its process dies, so a
    /// free lock means the owner is gone. The lock is held while the rows are closed, so a
    /// flow starting meanwhile cannot be taken for a stale one. Returns the flows closed.
    pub fn close_abandoned_flows(&mut self, lock_dir: &Path) -> Result<Vec<String>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT DISTINCT server_key FROM oauth_flows WHERE state = 'running' ORDER BY server_key",
        )?;
        let keys: Vec<String> = statement
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(statement);
        let mut closed = Vec::new();
        for key in keys {
            let Some(_lock) = lock::try_acquire(lock_dir, &key)? else {
                continue; // a live process runs this server's flow
            };
            let tx = self.conn.transaction()?;
            let ids: Vec<String> = tx
                .prepare(
                    "SELECT flow_id FROM oauth_flows WHERE state = 'running' AND server_key = ?1",
                )?
                .query_map([&key], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tx.execute(
                "UPDATE oauth_flows SET state = 'abandoned', finished_at = ?2, lease_expires_at = NULL,
                   error = 'its process ended before the flow finished (found at the next start)'
                 WHERE state = 'running' AND server_key = ?1",
                params![key, now_ms()],
            )?;
            tx.commit()?;
            closed.extend(ids);
        }
        Ok(closed)
    }

    /// Whether `token` was written by a login flow (its flow row says so).
    pub(super) fn written_by_login(&self, token: Option<&StoredToken>) -> Result<bool, StoreError> {
        match token.and_then(|t| t.flow_id.as_deref()) {
            Some(flow) => Ok(self.flow_kind(flow)?.as_deref() == Some("login")),
            None => Ok(false),
        }
    }

    /// Records a flow as running and reads what it starts from (the stored token, its client,
    /// whether a login wrote the token), in one registry job: one round trip instead of two.
    /// The flow row is written with a short busy timeout (history must not stall the
    /// registry); its failure is reported in `not_recorded`, and the reads still happen.
    ///
    /// The row is committed without an fsync of its own (`without_own_fsync`): it was a
    /// second durable transaction per refresh, beside the save's. Nothing needs it on disk
    /// before the flow's token request:
    /// - one flow per server across processes is the server's lock file (SQLite), never
    ///   this row; PostgreSQL's claims are another path (their row is in the claim's
    ///   transaction);
    /// - other processes (`logs flows`, another daemon) see the row as soon as it commits:
    ///   visibility does not wait for the disk, and neither does a process that crashes;
    /// - the flow's end (`save_and_finish`, `finish_flow`) is a `FULL` commit, so it makes
    ///   the start durable too, in order: a machine crash never leaves a finished flow
    ///   without its start, nor a token whose flow (`written_by_login`) is missing;
    /// - the recovery at the next start (`close_abandoned_flows`) closes the `running`
    ///   rows it finds; a row lost with the machine is a flow it has nothing to close.
    ///
    /// So a machine crash (not a process crash) between the start and the next durable
    /// write of any flow may lose the starts of the flows then in flight: the history shows
    /// nothing for them instead of `abandoned`. Their tokens are as before: the stored one
    /// is the last durably saved.
    pub fn begin_flow_and_read(
        &mut self,
        flow_id: &str,
        server_key: &str,
        server_name: &str,
        kind: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<FlowStart, StoreError> {
        let not_recorded = self
            .with_short_busy_timeout(|s| {
                s.without_own_fsync(|s| {
                    s.begin_flow(flow_id, server_key, server_name, kind, owner, lease_ms)
                })
            })
            .err()
            .map(|e| e.to_string());
        let (token, client) = self.load_token_and_client(server_key)?;
        let token_by_login = self.written_by_login(token.as_ref())?;
        Ok(FlowStart {
            not_recorded,
            token,
            client,
            token_by_login,
        })
    }

    /// Saves a flow's result (the client, if given, and the token) and marks the flow
    /// succeeded, in one transaction: one commit (and one fsync) where there were two.
    pub fn save_and_finish(
        &mut self,
        token: &StoredToken,
        client: Option<&StoredClient>,
        flow_id: &str,
    ) -> Result<(), StoreError> {
        self.in_one_write(|s| {
            if let Some(client) = client {
                s.save_client(client)?;
            }
            s.save_token(token)?;
            s.finish_flow(flow_id, None)
        })
    }

    /// The flow history kept from now on (the next pruning step applies it).
    pub fn set_retention(&mut self, retention: FlowRetention) {
        self.retention = retention;
    }

    /// One bounded pruning step of `oauth_flows` (at most `retention.batch` rows, the oldest
    /// first): flows past `max_age` or beyond the newest `max_count` go; running flows and
    /// the flow that wrote a stored token stay. Returns the rows deleted.
    pub fn prune_flows(&mut self) -> Result<usize, StoreError> {
        self.flows_since_prune = 0;
        let r = self.retention;
        let oldest_kept =
            now_ms().saturating_sub(r.max_age.as_millis().min(i64::MAX as u128) as i64);
        let deleted = self.conn.execute(
            "DELETE FROM oauth_flows WHERE rowid IN (
               SELECT rowid FROM oauth_flows
               WHERE state != 'running'
                 AND (started_at < ?1
                      OR started_at < (SELECT started_at FROM oauth_flows
                                       ORDER BY started_at DESC LIMIT 1 OFFSET ?2))
                 AND flow_id NOT IN (SELECT flow_id FROM oauth_tokens WHERE flow_id IS NOT NULL)
               ORDER BY started_at LIMIT ?3)",
            params![oldest_kept, i64::from(r.max_count.max(1)) - 1, r.batch],
        )?;
        Ok(deleted)
    }

    /// `prune_flows` until nothing is left to delete, at most `steps` steps (at open: a
    /// history left long by an older build is trimmed, in bounded time).
    pub fn prune_flows_at_open(&mut self, steps: u32) -> Result<usize, StoreError> {
        let mut total = 0;
        for _ in 0..steps {
            let deleted = self.prune_flows()?;
            total += deleted;
            if deleted < self.retention.batch as usize {
                break;
            }
        }
        Ok(total)
    }

    /// Counts a recorded flow; every `every_flows` flows, one pruning step (a failure is a
    /// warning: only history is at stake, and the next step tries again).
    fn count_flow(&mut self) {
        self.flows_since_prune += 1;
        self.prune_if_due();
    }

    /// One pruning step if `every_flows` flows were recorded since the last (not inside a
    /// transaction: a claim records its flow in one, and prunes after it).
    pub(super) fn prune_if_due(&mut self) {
        if self.batched || self.flows_since_prune < self.retention.every_flows {
            return;
        }
        match self.with_short_busy_timeout(|s| s.prune_flows()) {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "old flow history pruned"),
            Err(e) => tracing::warn!(error = %e, "old flow history could not be pruned now"),
        }
    }

    pub fn recent_flows(&self, limit: u32) -> Result<Vec<FlowRow>, StoreError> {
        let mut statement = self.conn.prepare_cached(RECENT_FLOWS_SQL)?;
        let rows = statement.query_map([limit], flow_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest flows first, of one server and/or one flow ID when given.
    pub fn flows(
        &self,
        server_name: Option<&str>,
        flow_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FlowRow>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT flow_id, server_name, kind, state, owner, started_at, finished_at, error \
             FROM oauth_flows WHERE (?1 IS NULL OR server_name = ?1) AND (?2 IS NULL OR \
             flow_id = ?2) ORDER BY started_at DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(params![server_name, flow_id, limit], flow_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `synchronous` as the store's connection has it now: 2 is FULL, 1 NORMAL.
    fn synchronous(store: &TokenStore) -> i64 {
        store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    fn flow_state(conn: &rusqlite::Connection, flow_id: &str) -> Option<String> {
        conn.query_row(
            "SELECT state FROM oauth_flows WHERE flow_id = ?1",
            [flow_id],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    }

    /// The flow's start commits without its own fsync, yet another connection (another
    /// process's `logs flows`) sees it at once, and every write after it is FULL again:
    /// after a recorded start, after one that could not be recorded (the write lock was
    /// held elsewhere), and for the flow's end.
    #[test]
    fn a_flow_start_skips_its_own_fsync_and_leaves_full_durability_behind() {
        let dir = std::env::temp_dir().join(format!(
            "mcpproxy-oauth-start-unsynced-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let path = dir.join("tokens.db");
        let mut store = TokenStore::open(&path).unwrap();
        assert_eq!(synchronous(&store), 2, "the store opens FULL");
        let other = rusqlite::Connection::open(&path).unwrap();

        let start = store
            .begin_flow_and_read("f1", "a_1", "a", "refresh", "pid 1", 60_000)
            .unwrap();
        assert!(start.not_recorded.is_none(), "{:?}", start.not_recorded);
        assert_eq!(flow_state(&other, "f1").as_deref(), Some("running"));
        assert_eq!(synchronous(&store), 2, "FULL again after the start");

        // Another connection holds the write lock: the start is not recorded, the reads
        // still happen, and the connection is FULL again all the same.
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let start = store
            .begin_flow_and_read("f2", "a_1", "a", "refresh", "pid 1", 60_000)
            .unwrap();
        other.execute_batch("COMMIT").unwrap();
        assert!(start.not_recorded.is_some(), "the write lock was held");
        assert_eq!(flow_state(&other, "f2"), None);
        assert_eq!(synchronous(&store), 2, "FULL again after a failed start");

        store.finish_flow("f1", None).unwrap();
        assert_eq!(flow_state(&other, "f1").as_deref(), Some("succeeded"));
        drop((store, other));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
