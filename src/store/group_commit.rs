//! Writes that commit together. A write runs in its own `BEGIN IMMEDIATE` transaction, or,
//! inside a group commit, in the group's: `group_commit` runs every job waiting in one
//! transaction, each in its own savepoint (a failing job is undone alone), and commits once,
//! so with WAL and `synchronous=FULL` one fsync carries the whole group. `TokenRegistry`
//! gathers the groups.

use rusqlite::Connection;

use super::error::StoreError;
use super::token_store::TokenStore;

/// One write of a group commit (see `TokenStore::group_commit`): `run` performs it and keeps
/// its result for the caller; it returns whether the job succeeded (a failed job's writes
/// are rolled back to its savepoint).
pub trait GroupJob: Send {
    fn run(&mut self, store: &mut TokenStore) -> bool;
}

/// Runs a transaction-control statement (`BEGIN`, `SAVEPOINT`, `COMMIT`) from the
/// connection's statement cache: every refresh runs the same few, and parsing them each time
/// showed in the refresh's profile (BENCHMARKS.md, table 3's breakdown).
pub(super) fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `f` as one write: in its own `BEGIN IMMEDIATE` transaction, or, inside a group
/// commit (`batched`), in the group's transaction (the group commits, and each job has its
/// own savepoint there).
pub(super) fn write_tx<R>(
    conn: &mut Connection,
    batched: bool,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    if batched {
        return f(conn);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let result = f(&tx)?;
    tx.commit()?;
    Ok(result)
}

impl TokenStore {
    /// Runs `f` so that every write it makes commits together (or, inside a group, joins the
    /// group's transaction).
    pub(super) fn in_one_write<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.batched {
            return f(self);
        }
        cached(&self.conn, "BEGIN IMMEDIATE")?;
        self.batched = true;
        let result = f(self);
        self.batched = false;
        match result {
            Ok(r) => match cached(&self.conn, "COMMIT") {
                Ok(()) => Ok(r),
                Err(e) => Err(self.roll_back(e)),
            },
            Err(e) => Err(self.roll_back(e)),
        }
    }

    /// Ends the open transaction, keeping nothing of it, and hands `error` on.
    fn roll_back(&mut self, error: impl Into<StoreError>) -> StoreError {
        self.batched = false;
        let _ = self.conn.execute_batch("ROLLBACK");
        error.into()
    }

    /// Group commit: opens one write transaction, runs `jobs` each in its own savepoint (a
    /// failing job's writes are undone, the others stay), and commits once: one fsync for
    /// all. Each job keeps its own result; the `Err` here is the group's (the transaction did
    /// not begin, or did not commit): then nothing of any job was stored. Only writes belong
    /// in a group (a job must not open a transaction of its own).
    pub fn group_commit<'a>(
        &mut self,
        jobs: impl Iterator<Item = &'a mut dyn GroupJob>,
    ) -> Result<(), StoreError> {
        cached(&self.conn, "BEGIN IMMEDIATE")?;
        self.batched = true;
        for job in jobs {
            if let Err(e) = cached(&self.conn, "SAVEPOINT group_job") {
                return Err(self.roll_back(e));
            }
            let ok = job.run(self);
            let end = if ok {
                cached(&self.conn, "RELEASE group_job")
            } else {
                cached(&self.conn, "ROLLBACK TO group_job")
                    .and_then(|()| cached(&self.conn, "RELEASE group_job"))
            };
            if let Err(e) = end {
                return Err(self.roll_back(e));
            }
        }
        self.batched = false;
        cached(&self.conn, "COMMIT").map_err(|e| self.roll_back(e))
    }
}
