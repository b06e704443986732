//! The PostgreSQL token store, for instances on several hosts sharing one set of tokens: the
//! same schema, status view and sealing as the SQLite store, explicit SQL over tokio-postgres
//! with a deadpool pool, every operation bounded in time. One room a concern:
//!
//! - `connect`: options, the pool, connection settings (timeouts), error classification;
//! - `schema`: migrations (`migrations/postgres/`) under a transaction-level advisory lock;
//! - `seal`: the key check at open (the shared key from `--key-file` or `MCPPROXY_OAUTH_KEY`);
//! - `tokens`, `clients`, `flows`: the queries of the SQLite rooms of the same names;
//! - `lease`: the claim (a lease row per server with a fence), fenced writes, the release, the
//!   ambiguous mark;
//! - `listen`: LISTEN/NOTIFY on a dedicated connection, with a bounded poll as fallback.

mod clients;
mod connect;
mod flows;
mod lease;
mod listen;
mod schema;
mod seal;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

pub use lease::Attempt;
pub use listen::Listener;
pub use schema::KNOWN_VERSION;

use super::choice::PgUrl;
use super::error::StoreError;
use super::keys::Sealing;
use super::options::StoreOptions;
use super::sealing::Seal;

/// The PostgreSQL store of one instance: its pool, its seal, its change listener. Cheap to
/// clone (one shared inside).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The store as shown: `postgres://USER@HOST:PORT/DB`, no password.
    target: String,
    /// The same, where an error names a path.
    place: PathBuf,
    seal: Seal,
    options: StoreOptions,
    listener: Listener,
    /// Flows recorded since the last pruning step.
    flows_since_prune: AtomicU32,
}

impl PgStore {
    /// Connects, migrates (once, whichever instance comes first), checks the key, starts the
    /// change listener (on the current tokio runtime), closes flows whose lease ended without
    /// them, and prunes old flow history. Fails within a bounded time when the database is
    /// unreachable.
    pub async fn open(
        url: &PgUrl,
        sealing: &Sealing,
        options: StoreOptions,
    ) -> Result<PgStore, StoreError> {
        let target = url.to_string();
        let place = PathBuf::from(&target);
        let config = connect::connection_config(url.config(), &options);
        let pool =
            connect::pool(config.clone(), &options).map_err(|reason| StoreError::Unusable {
                path: place.clone(),
                reason,
            })?;
        let deadline = options.operation_timeout;
        let seal = connect::bounded(&target, "opening the store", deadline, async {
            let mut client = pool
                .get()
                .await
                .map_err(|e| connect::pool_failure(&target, e))?;
            schema::migrate(&mut client, &target, &place).await?;
            seal::apply(&mut client, &target, &place, sealing).await
        })
        .await?;
        let listener = Listener::start(config, options.poll_interval, target.clone());
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                target,
                place,
                seal,
                options,
                listener,
                flows_since_prune: AtomicU32::new(0),
            }),
        };
        // Only history is at stake here: a failure is a warning, the next start tries again.
        match store.close_abandoned_flows().await {
            Ok(closed) if closed.is_empty() => {}
            Ok(closed) => tracing::warn!(
                flows = ?closed,
                "flows whose lease ended before they finished were closed as abandoned"
            ),
            Err(e) => tracing::warn!(error = %e, "abandoned flows could not be closed now"),
        }
        match store
            .prune_flows_at_open(super::registry::PRUNE_STEPS_AT_OPEN)
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "old flow history pruned"),
            Err(e) => tracing::warn!(error = %e, "old flow history could not be pruned now"),
        }
        Ok(store)
    }

    /// The store as shown to people: `postgres://USER@HOST:PORT/DB`, without a password.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Whether the secret columns are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.inner.seal.is_encrypted()
    }

    /// The options the store runs with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The change listener (its subscribers, whether it is connected).
    pub fn listener(&self) -> &Listener {
        &self.inner.listener
    }

    /// Whether the database answers a trivial query within the operation deadline, and how
    /// long it took.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        self.pooled("checking the database", async |client| {
            let answer = client.simple_query("SELECT 1").await;
            answer.map_err(|e| self.fail("checking the database", &e))?;
            Ok(started.elapsed())
        })
        .await
    }

    fn place(&self) -> &Path {
        &self.inner.place
    }

    fn seal(&self) -> &Seal {
        &self.inner.seal
    }

    /// A pooled connection, within the pool's bounded waits.
    async fn client(&self) -> Result<Object, StoreError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| connect::pool_failure(&self.inner.target, e))
    }

    /// `work` on a pooled connection, within the operation deadline; `what` names the work
    /// in an error.
    async fn pooled<R>(
        &self,
        what: &str,
        work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.bounded(what, async {
            let mut pooled = self.client().await?;
            work(plain(&mut pooled)).await
        })
        .await
    }

    /// The rows `sql` answers on a pooled connection, within the operation deadline; `what`
    /// names the work in an error.
    async fn query_pooled(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.pooled(what, async |client| {
            let rows = client.query(sql, params).await;
            rows.map_err(|e| self.fail(what, &e))
        })
        .await
    }

    /// The one row (or none) `sql` answers on `client` (a transaction's, or a pooled
    /// connection); `what` names the read in an error.
    async fn row_with(
        &self,
        client: &(impl GenericClient + Sync),
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let row = client.query_opt(sql, params).await;
        row.map_err(|e| self.fail(what, &e))
    }

    /// `work` in one transaction on a pooled connection, within the operation deadline:
    /// committed when it returns `Ok` (a transaction that only read commits nothing), rolled
    /// back when it fails; `what` names the work in an error.
    async fn in_transaction<R>(
        &self,
        what: &str,
        work: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.bounded(what, async {
            let mut pooled = self.client().await?;
            let fail = |e: tokio_postgres::Error| self.fail(what, &e);
            let tx = plain(&mut pooled).transaction().await.map_err(fail)?;
            let done = work(&tx).await?;
            tx.commit().await.map_err(fail)?;
            Ok(done)
        })
        .await
    }

    /// A database error, named with this store and what was being done.
    fn fail(&self, what: &str, e: &tokio_postgres::Error) -> StoreError {
        connect::db_failure(&self.inner.target, what, e)
    }

    /// `operation`, bounded by the operation deadline.
    async fn bounded<R>(
        &self,
        what: &str,
        operation: impl std::future::Future<Output = Result<R, StoreError>>,
    ) -> Result<R, StoreError> {
        connect::bounded(
            &self.inner.target,
            what,
            self.inner.options.operation_timeout,
            operation,
        )
        .await
    }
}

/// The plain client of a pooled connection (its transactions are tokio-postgres's, which the
/// queries here take).
fn plain(pooled: &mut Object) -> &mut tokio_postgres::Client {
    pooled
}

/// `now_ms()` on the database's clock, in SQL: what a lease's times are measured with, so
/// instances on hosts whose clocks differ agree on when a lease expires.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";
