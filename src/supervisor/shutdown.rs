//! Shutdown, as one concept (as mini-redis's `shutdown.rs`), and every part that takes part:
//! - each server's actor drains (`Drain`): it starts nothing new, cancels a login (a login
//!   only waits for a person), and answers once its running refresh and any unsaved token are
//!   in the store;
//! - the handle waits for the drains at most the grace (`SupervisorConfig::shutdown_grace`);
//! - then it signals the actors' thread (`stop`): the scheduler's task ends (waiting deadlines
//!   never fire), queued store writes finish, and the actix system ends;
//! - the thread shuts the flow runtime down (flows still running a second later are dropped
//!   with it) and signals back (`stopped`).
//!
//! The handle's side is [`Shutdown`], shared by every clone of the handle: the first
//! `shutdown()` does the work, a later one finds the signals taken and returns. The thread's
//! side is [`Stopping`].

use std::sync::Mutex;
use std::time::Duration;

use actix::Addr;
use tokio::sync::oneshot;

use crate::upstream::actor::{self, UpstreamActor};

pub(super) struct Shutdown {
    grace: Duration,
    /// Tells the actors' thread to stop (taken by the first shutdown).
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Heard once the thread has stopped and its flow runtime is gone.
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

/// The actors' thread's side of the shutdown.
pub(super) struct Stopping {
    stop: Option<oneshot::Receiver<()>>,
    stopped: oneshot::Sender<()>,
}

/// The two sides of one shutdown.
pub(super) fn shutdown(grace: Duration) -> (Shutdown, Stopping) {
    let (stop_tx, stop_rx) = oneshot::channel();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    let shutdown = Shutdown {
        grace,
        stop: Mutex::new(Some(stop_tx)),
        stopped: Mutex::new(Some(stopped_rx)),
    };
    let stopping = Stopping {
        stop: Some(stop_rx),
        stopped: stopped_tx,
    };
    (shutdown, stopping)
}

impl Shutdown {
    /// Drains every server's actor within the grace, then stops the actors' thread and waits
    /// until it has stopped.
    pub(super) async fn run<'a>(&self, upstreams: impl Iterator<Item = &'a Addr<UpstreamActor>>) {
        let drains = upstreams.map(|addr| addr.send(actor::Drain));
        let drained = futures_util::future::join_all(drains);
        if tokio::time::timeout(self.grace, drained).await.is_err() {
            tracing::warn!(grace = ?self.grace, "stopping with flows still running");
        }
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}

impl Stopping {
    /// What returns when the handle asks the thread to stop (or every handle is gone).
    pub(super) fn requested(&mut self) -> impl Future<Output = ()> + use<> {
        let stop = self.stop.take();
        async move {
            if let Some(stop) = stop {
                let _ = stop.await;
            }
        }
    }

    /// The thread has stopped.
    pub(super) fn done(self) {
        let _ = self.stopped.send(());
    }
}
