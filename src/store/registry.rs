//! The `TokenRegistry` actor: the only owner of the SQLite connection. It runs on its own
//! `SyncArbiter` thread, so blocking database work never runs on the async threads, and
//! requests are served one at a time in arrival order (a write is durable before its reply).
//!
//! Group commit: writes sent with `TokenRegistry::write` wait in a queue; the registry takes
//! every write waiting when it gets to them and commits them in one transaction, so one fsync
//! (`synchronous=FULL`) serves them all. Each caller is answered after that commit, with its
//! own job's result; a job that fails is rolled back alone (its savepoint), and a commit
//! that fails is answered to every caller of the group. While one group commits, the next
//! one gathers: the more writers wait, the more each fsync carries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use actix::prelude::*;

use super::ballast::Ballast;
use super::error::StoreError;
use super::group_commit::GroupJob;
use super::keys::Sealing;
use super::model::FlowRetention;
use super::open::folder_of;
use super::token_store::TokenStore;

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
    queue: Arc<WriteQueue>,
    /// The reserve a full disk releases for the saves (see `ballast`).
    ballast: Ballast,
}

/// Writes waiting for the next group commit, and counts of what was committed.
#[derive(Default)]
struct WriteQueue {
    waiting: Mutex<Vec<Box<dyn Pending>>>,
    groups: AtomicU64,
    writes: AtomicU64,
}

/// A queued write: the job, its result once run, and the caller waiting for it.
trait Pending: GroupJob {
    /// Answers the caller: its own result if the group committed, else the group's failure.
    fn answer(self: Box<Self>, group: Result<(), &StoreError>);
    fn as_job(&mut self) -> &mut dyn GroupJob;
}

struct QueuedWrite<R> {
    job: Option<Job<R>>,
    result: Option<Result<R, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<R, StoreError>>,
}

impl<R: Send> GroupJob for QueuedWrite<R> {
    fn run(&mut self, store: &mut TokenStore) -> bool {
        let Some(job) = self.job.take() else {
            return false;
        };
        let result = job(store);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }
}

impl<R: Send> Pending for QueuedWrite<R> {
    fn answer(self: Box<Self>, group: Result<(), &StoreError>) {
        let answer = match (group, self.result) {
            // The job's own failure concerns its caller alone, whatever the group did.
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(r))) => Ok(r),
            (Err(e), _) => Err(StoreError::NotCommitted(e.to_string())),
            (Ok(()), None) => Err(StoreError::NotCommitted("the write did not run".into())),
        };
        // A caller that stopped waiting has nobody to answer.
        let _ = self.reply.send(answer);
    }
    fn as_job(&mut self) -> &mut dyn GroupJob {
        self
    }
}

/// Commits every queued write in one transaction.
pub struct Flush;

impl Message for Flush {
    type Result = ();
}

impl Handler<Flush> for RegistryActor {
    type Result = ();
    fn handle(&mut self, _: Flush, _: &mut SyncContext<Self>) {
        let mut group =
            std::mem::take(&mut *self.queue.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        if group.is_empty() {
            return; // an earlier flush took them
        }
        GROUP_SIZE.observe(group.len() as f64);
        self.queue.groups.fetch_add(1, Ordering::Relaxed);
        self.queue
            .writes
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        let store = &mut self.store;
        let committed = self
            .ballast
            .write(|| store.group_commit(group.iter_mut().map(|w| w.as_job())));
        for write in group {
            write.answer(committed.as_ref().map(|_| ()));
        }
    }
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
    queue: Arc<WriteQueue>,
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
        Self::start_with_retention(path, sealing, FlowRetention::default())
    }

    /// `start_with`, keeping the flow history `retention` says (pruned at open, at most
    /// `PRUNE_STEPS_AT_OPEN` steps, then one step every `retention.every_flows` flows).
    pub fn start_with_retention(
        path: &Path,
        sealing: &Sealing,
        retention: FlowRetention,
    ) -> Result<(Self, Option<PathBuf>), StoreError> {
        let mut store = TokenStore::open_with(path, sealing)?;
        store.set_retention(retention);
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
        // Only history is at stake here too: a failure is a warning.
        match store.prune_flows_at_open(PRUNE_STEPS_AT_OPEN) {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "old flow history pruned"),
            Err(e) => tracing::warn!(error = %e, "old flow history could not be pruned now"),
        }
        let once = Mutex::new(Some((store, Ballast::keep(folder_of(path)))));
        let queue = Arc::new(WriteQueue::default());
        let actor_queue = queue.clone();
        let thread = || std::thread::Builder::new().name(THREAD_NAME.into());
        let addr = SyncArbiter::start_with_thread_builder(1, thread, move || {
            let taken = once.lock().unwrap_or_else(|p| p.into_inner()).take();
            // One thread is started, and an actor is never rebuilt without a restart request.
            let (store, ballast) = taken.expect("the registry runs on exactly one thread");
            RegistryActor {
                store,
                queue: actor_queue.clone(),
                ballast,
            }
        });
        Ok((
            TokenRegistry {
                addr,
                path: path.to_path_buf(),
                queue,
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

    /// Group commits run by this registry, and the writes they carried: (groups, writes).
    pub fn group_commits(&self) -> (u64, u64) {
        (
            self.queue.groups.load(Ordering::Relaxed),
            self.queue.writes.load(Ordering::Relaxed),
        )
    }

    /// Runs the write `job` in the next group commit and returns its result once the group's
    /// transaction is durable. Only for writes: a job must not open a transaction itself.
    pub async fn write<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut TokenStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let started = Instant::now();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(QueuedWrite {
                job: Some(Box::new(job)),
                result: None,
                reply,
            }));
        // Handled after every message sent before it: by then this write was committed by
        // this flush or an earlier one, and answered.
        self.addr
            .send(Flush)
            .await
            .map_err(|_| StoreError::Closed)?;
        let result = answer.await.map_err(|_| StoreError::Closed)?;
        STORE_CALL_SECONDS.observe(started.elapsed().as_secs_f64());
        result
    }
}

/// The registry's thread, as `ps -L` and `top -H` show it (Linux keeps 15 bytes of a name).
pub const THREAD_NAME: &str = "oauth-store";

/// Pruning steps at most at open (each at most `FlowRetention::batch` rows).
pub const PRUNE_STEPS_AT_OPEN: u32 = 20;

/// How many writes each group commit carried, for `/metrics`.
pub static GROUP_SIZE: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(
            "mcpproxy_oauth_store_group_commit_writes",
            "Writes committed together in one transaction (one fsync) by the token registry.",
        )
        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
    )
    .expect("a valid histogram")
});
