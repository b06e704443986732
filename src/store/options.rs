//! How a store runs, for both backends (PostgreSQL's pool and timeouts; the change poll and
//! the flow history kept, for both).

use std::time::Duration;

use super::model::FlowRetention;

/// How a store runs: how the PostgreSQL backend reaches its database and how long anything
/// may take there; how often changes are polled, and how much flow history is kept (both).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections in this instance's pool.
    pub pool_size: usize,
    /// Bound of a new connection: TCP, startup and authentication.
    pub connect_timeout: Duration,
    /// Bound of one statement and of one row-lock wait, on the server (`statement_timeout`,
    /// `lock_timeout`); a session idle inside a transaction longer than twice this is ended by
    /// the server (`idle_in_transaction_session_timeout`).
    pub statement_timeout: Duration,
    /// Bound of one store operation end to end, the wait for a pooled connection included.
    pub operation_timeout: Duration,
    /// SQLite: how often `data_version` is polled for other processes' commits. PostgreSQL:
    /// the change listener's fallback; while its connection is down, a change of unknown kind
    /// is announced this often (readers re-read), and it tries to reconnect.
    pub poll_interval: Duration,
    /// How much flow history is kept.
    pub retention: FlowRetention,
}

impl Default for StoreOptions {
    /// 16 connections; connect 3 s, statements 5 s, operations 10 s; fallback poll 1 s.
    fn default() -> Self {
        StoreOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            retention: FlowRetention::default(),
        }
    }
}
