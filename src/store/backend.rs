//! One store, two backends: `Store` is SQLite (the `TokenRegistry` actor over `tokens.db`,
//! with the per-server OS file lock) or PostgreSQL (`PgStore`), with the same async operations
//! for the flows, the status and API readers and the CLI: tokens and clients read and written,
//! the flow claim (`claim`), the status view and flow history, the store's changes and its
//! health. An enum rather than a trait object: two backends, no boxing of futures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::changes::StoreChanges;
use super::choice::StoreChoice;
use super::error::StoreError;
use super::keys::Sealing;
use super::lease::{Ambiguous, LeaseRef, LeaseRow, RefreshTokenId, WriteGuard, Written};
use super::lock::lock_dir_beside;
use super::model::{FlowRow, StoredClient, StoredToken, TokenStatusRow};
use super::options::StoreOptions;
use super::postgres::PgStore;
use super::registry::TokenRegistry;

/// The token store of one instance. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// The SQLite backend: the registry actor (the one connection, group commit) and the folder of
/// the per-server flow locks beside the database.
#[derive(Clone)]
pub struct SqliteStore {
    registry: TokenRegistry,
    lock_dir: PathBuf,
    /// How often `changes` looks at `data_version`.
    poll: Duration,
}

impl SqliteStore {
    pub fn registry(&self) -> &TokenRegistry {
        &self.registry
    }

    pub fn lock_dir(&self) -> &Path {
        &self.lock_dir
    }
}

/// Whether the store answers, for the API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The database file, or `postgres://USER@HOST:PORT/DB` (no password).
    pub target: String,
    pub reachable: bool,
    /// How long the check took.
    pub latency_ms: u64,
    /// Why it is not reachable.
    pub error: Option<String>,
    /// PostgreSQL: whether changes are heard at once (LISTEN) or by the fallback poll.
    /// SQLite: `None` (always a poll).
    pub listening: Option<bool>,
}

/// How long a health check of a SQLite store may take (the registry may be busy).
const SQLITE_HEALTH_WAIT: Duration = Duration::from_secs(5);

/// `Store` methods that act on one server's row: SQLite's through the registry (`call` to
/// read, `write` to write), PostgreSQL's directly, with the same arguments.
macro_rules! by_server_key {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $out:ty, $how:ident;)+) => {$(
        $(#[$doc])*
        pub async fn $name(&self, server_key: &str $(, $arg: $ty)*) -> Result<$out, StoreError> {
            match self {
                Store::Sqlite(s) => {
                    let key = server_key.to_string();
                    s.registry.$how(move |db| db.$name(&key $(, $arg)*)).await
                }
                Store::Postgres(pg) => pg.$name(server_key $(, $arg)*).await,
            }
        }
    )+};
}

impl Store {
    /// Opens the store `choice` names. SQLite: `database` (created if needed; its registry is
    /// an actor, so call this inside an actix `System`), changes polled every `options.
    /// poll_interval`; PostgreSQL: `database` is not used.
    pub async fn open(
        choice: &StoreChoice,
        database: &Path,
        sealing: &Sealing,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        match choice {
            StoreChoice::Sqlite => {
                let (registry, _) =
                    TokenRegistry::start_with_retention(database, sealing, options.retention)?;
                Ok(Store::sqlite(registry, options.poll_interval))
            }
            StoreChoice::Postgres(url) => {
                Ok(Store::Postgres(PgStore::open(url, sealing, options).await?))
            }
        }
    }

    /// The SQLite backend over a running registry (its flow locks beside its database).
    pub fn sqlite(registry: TokenRegistry, poll: Duration) -> Store {
        let lock_dir = lock_dir_beside(registry.path());
        Store::Sqlite(SqliteStore {
            registry,
            lock_dir,
            poll,
        })
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The database file, or `postgres://USER@HOST:PORT/DB` (no password).
    pub fn target(&self) -> String {
        match self {
            Store::Sqlite(s) => s.registry.path().display().to_string(),
            Store::Postgres(pg) => pg.target().to_string(),
        }
    }

    by_server_key! {
        /// A server's token.
        load_token() -> Option<StoredToken>, call;
        /// A server's token and the client it is refreshed with.
        load_token_and_client() -> (Option<StoredToken>, Option<StoredClient>), call;
        /// Deletes a server's token (a logout).
        delete_token() -> (), write;
        /// After `invalid_grant`: forgets the refresh token only if the row still holds the
        /// one that was refused (never a newer one another instance stored). Whether it
        /// dropped.
        drop_refresh_token_if(refused: RefreshTokenId) -> bool, write;
        /// The ambiguous mark of a server's token.
        ambiguous() -> Option<Ambiguous>, call;
    }

    /// The server's client identity at the authorization server `issuer`.
    pub async fn load_client_for(
        &self,
        server_key: &str,
        issuer: &str,
    ) -> Result<Option<StoredClient>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (key, issuer) = (server_key.to_string(), issuer.to_string());
                s.registry
                    .call(move |db| db.load_client_for(&key, &issuer))
                    .await
            }
            Store::Postgres(pg) => pg.load_client_for(server_key, issuer).await,
        }
    }

    /// Saves a token (and a client) outside any claim, unless `guard` says no: for a process
    /// that holds no claim. A flow writes under its claim instead ([`super::Claim::save`]).
    pub async fn save_token(
        &self,
        token: &StoredToken,
        client: Option<&StoredClient>,
        guard: Option<&WriteGuard>,
    ) -> Result<Written, StoreError> {
        if !WriteGuard::allows(guard) {
            return Ok(Written::Overtaken);
        }
        match self {
            Store::Sqlite(s) => {
                let (token, client, guard) = (token.clone(), client.cloned(), guard.cloned());
                s.registry
                    .write(move |db| {
                        if !WriteGuard::allows(guard.as_ref()) {
                            return Ok(Written::Overtaken);
                        }
                        if let Some(client) = &client {
                            db.save_client(client)?;
                        }
                        db.save_token(&token)?;
                        Ok(Written::Done)
                    })
                    .await
            }
            Store::Postgres(pg) => {
                if let Some(client) = client {
                    pg.save_client(client).await?;
                }
                pg.save_token(token).await?;
                Ok(Written::Done)
            }
        }
    }

    /// The fenced write a claim makes ([`super::Claim::save`]), for a lease named as data:
    /// written only while the lease row holds `lease`'s fence and `guard` allows.
    pub async fn save_under_lease(
        &self,
        lease: &LeaseRef,
        token: &StoredToken,
        client: Option<&StoredClient>,
        guard: Option<&WriteGuard>,
    ) -> Result<Written, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (lease, token, client, guard) = (
                    lease.clone(),
                    token.clone(),
                    client.cloned(),
                    guard.cloned(),
                );
                s.registry
                    .write(move |db| {
                        db.save_under_lease(&lease, &token, client.as_ref(), guard.as_ref())
                    })
                    .await
            }
            Store::Postgres(pg) => pg.save_under_lease(lease, token, client, guard).await,
        }
    }

    pub async fn save_client(&self, client: &StoredClient) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let client = client.clone();
                s.registry.write(move |db| db.save_client(&client)).await
            }
            Store::Postgres(pg) => pg.save_client(client).await,
        }
    }

    /// Records a flow's end on its own (a flow without a claim).
    pub async fn finish_flow(&self, flow_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (flow, error) = (flow_id.to_string(), error.map(String::from));
                s.registry
                    .call(move |db| {
                        db.with_short_busy_timeout(|db| db.finish_flow(&flow, error.as_deref()))
                    })
                    .await
            }
            Store::Postgres(pg) => pg.finish_flow(flow_id, error).await,
        }
    }

    /// Every server's row of the `oauth_token_status` view, by server name.
    pub async fn token_status(&self) -> Result<Vec<TokenStatusRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.registry.call(|db| db.token_status()).await,
            Store::Postgres(pg) => pg.token_status().await,
        }
    }

    /// The newest flows first.
    pub async fn recent_flows(&self, limit: u32) -> Result<Vec<FlowRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.registry.call(move |db| db.recent_flows(limit)).await,
            Store::Postgres(pg) => pg.recent_flows(limit).await,
        }
    }

    /// The newest flows first, of one server and/or one flow ID when given.
    pub async fn flows(
        &self,
        server_name: Option<&str>,
        flow_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FlowRow>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (name, flow) = (server_name.map(String::from), flow_id.map(String::from));
                s.registry
                    .call(move |db| db.flows(name.as_deref(), flow.as_deref(), limit))
                    .await
            }
            Store::Postgres(pg) => pg.flows(server_name, flow_id, limit).await,
        }
    }

    /// Every server's lease row: who holds (or last held) it, its fence, until when.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.registry.call(|db| db.leases()).await,
            Store::Postgres(pg) => pg.leases().await,
        }
    }

    /// A server's lease row.
    pub async fn lease(&self, server_key: &str) -> Result<Option<LeaseRow>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let key = server_key.to_string();
                s.registry.call(move |db| db.lease(&key)).await
            }
            Store::Postgres(pg) => pg.lease(server_key).await,
        }
    }

    /// The store's changes from now on.
    pub async fn changes(&self) -> StoreChanges {
        match self {
            Store::Sqlite(s) => StoreChanges::polling(s.registry.clone(), s.poll).await,
            Store::Postgres(pg) => {
                StoreChanges::listening(pg.listener().subscribe(), pg.options().poll_interval)
            }
        }
    }

    /// Whether the store answers now (bounded: an unreachable database is reported within the
    /// operation deadline, never waited for).
    pub async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        let (answer, listening) = match self {
            Store::Sqlite(s) => {
                let look = s.registry.call(|db| db.schema_version());
                let answer = match tokio::time::timeout(SQLITE_HEALTH_WAIT, look).await {
                    Ok(answer) => answer.map(|_| ()),
                    Err(_) => Err(StoreError::Unusable {
                        path: s.registry.path().to_path_buf(),
                        reason: format!(
                            "the token registry did not answer within {SQLITE_HEALTH_WAIT:?}"
                        ),
                    }),
                };
                (answer, None)
            }
            Store::Postgres(pg) => (
                pg.ping().await.map(|_| ()),
                Some(pg.listener().is_connected()),
            ),
        };
        StoreHealth {
            backend: self.backend(),
            target: self.target(),
            reachable: answer.is_ok(),
            latency_ms: started.elapsed().as_millis() as u64,
            error: answer.err().map(|e| e.to_string()),
            listening,
        }
    }
}
