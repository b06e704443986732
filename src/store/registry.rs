//! The `TokenRegistry` actor: the only owner of the SQLite connection. It runs on its own
//! `SyncArbiter` thread, so blocking database work never runs on the async threads, and
//! requests are served one at a time in arrival order (a write is durable before its reply).

use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use actix::prelude::*;

use super::db::{StoreError, TokenStore};
use super::keys::Sealing;

/// Time of every store job (reads and writes alike: a job is a closure), queueing included,
/// for `/metrics`. Process-wide: every registry of the process counts into it.
pub static STORE_CALL_SECONDS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(
            "mcpproxy_oauth_store_call_seconds",
            "Time of each token-store job (reads and writes, durable writes included), queueing included.",
        )
        .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
    )
    .expect("a valid histogram")
});

pub struct RegistryActor {
    store: TokenStore,
}

impl Actor for RegistryActor {
    type Context = SyncContext<Self>;
}

type Job<R> = Box<dyn FnOnce(&mut TokenStore) -> Result<R, StoreError> + Send>;

/// One unit of work on the store. A closure keeps the registry's surface as small as the
/// store's own methods, with no message type per query.
pub struct Exec<R>(Job<R>);

impl<R: 'static> Message for Exec<R> {
    type Result = Result<R, StoreError>;
}

impl<R: 'static> Handler<Exec<R>> for RegistryActor {
    type Result = Result<R, StoreError>;
    fn handle(&mut self, job: Exec<R>, _: &mut SyncContext<Self>) -> Self::Result {
        (job.0)(&mut self.store)
    }
}

/// A cheap, cloneable way to reach the registry actor.
#[derive(Clone)]
pub struct TokenRegistry {
    addr: Addr<RegistryActor>,
    path: PathBuf,
}

impl TokenRegistry {
    /// Opens the store, closes flows abandoned by dead processes, and starts its actor. Call
    /// inside an actix `System`. Returns where a corrupt database was moved aside, if it was.
    pub fn start(path: &Path) -> Result<(Self, Option<PathBuf>), StoreError> {
        Self::start_with(path, &Sealing::default())
    }

    /// `start`, with the secret columns protected as `sealing` says.
    pub fn start_with(
        path: &Path,
        sealing: &Sealing,
    ) -> Result<(Self, Option<PathBuf>), StoreError> {
        let mut store = TokenStore::open_with(path, sealing)?;
        let moved_aside = store.moved_aside.clone();
        // Flows left `running` by a process that died are closed before any flow starts.
        // Only history is at stake: a failure (another process holds the write lock) is a
        // warning, and the next start tries again.
        match store.close_abandoned_flows(&super::lock::lock_dir_beside(path)) {
            Ok(closed) if closed.is_empty() => {}
            Ok(closed) => tracing::warn!(
                flows = ?closed,
                "flows left running by a process that ended were closed as abandoned"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "flows left running by ended processes could not be closed now; the next start tries again"
            ),
        }
        let once = Mutex::new(Some(store));
        let addr = SyncArbiter::start(1, move || {
            let store = once.lock().unwrap_or_else(|p| p.into_inner()).take();
            // One thread is started, and an actor is never rebuilt without a restart request.
            RegistryActor {
                store: store.expect("the registry runs on exactly one thread"),
            }
        });
        Ok((
            TokenRegistry {
                addr,
                path: path.to_path_buf(),
            },
            moved_aside,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` on the registry thread and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut TokenStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let started = Instant::now();
        let result = self
            .addr
            .send(Exec(Box::new(job)))
            .await
            .map_err(|_| StoreError::Closed)?;
        STORE_CALL_SECONDS.observe(started.elapsed().as_secs_f64());
        result
    }
}
