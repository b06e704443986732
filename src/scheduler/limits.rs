//! The scheduler's queues for work that holds something scarce: refreshes (a connection and a
//! lock file each), logins (a lock file, a redirect listener, discovery and registration
//! requests) and browser tabs (a person's attention: nobody answers 2,000 at once).
//!
//! Each is a [`Limit`]: a fair semaphore (tokio's hands permits out in the order they were
//! asked for) with the counts tests and metrics read. A slot is a [`Permit`] held by the
//! work's future, so it is given back however the work ends: success, failure, a cancelled
//! flow or a stopped actor (dropping the future drops the permit, or leaves the queue). A
//! limit can be closed (shutting down): whoever waits in its queue gives up, and nobody else
//! is let in.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Logins at once by default: each holds a lock file and a redirect listener, and runs
/// discovery and registration; 2,000 unbounded ones starved each other into timeouts.
pub const DEFAULT_LOGIN_LIMIT: usize = 64;

/// Browser tabs open at once by default (logins waiting for a person).
pub const DEFAULT_TAB_LIMIT: usize = 4;

/// One limit's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LimitCounts {
    /// Holding a slot now.
    pub running: usize,
    /// Waiting for a slot now.
    pub queued: usize,
    /// The most that ever held a slot at once (never above `limit`).
    pub peak: usize,
    pub limit: usize,
}

/// At most `limit` holders at once; the others wait in a first-come queue.
pub struct Limit {
    permits: Semaphore,
    limit: usize,
    running: AtomicUsize,
    queued: AtomicUsize,
    peak: AtomicUsize,
}

/// A slot of a [`Limit`], given back when dropped.
pub struct Permit<'a> {
    limit: &'a Limit,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // Counted down before the semaphore's permit (a field) is released: `running` never
        // exceeds the limit, even for an instant.
        self.limit.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one waiter while it waits, also when its future is dropped while queued.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limit {
    /// A limit of `limit` (at least 1: callers reject 0 before it gets here).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Limit {
            permits: Semaphore::new(limit),
            limit,
            running: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Waits for a slot, behind everyone who asked before; `None` once the limit is closed.
    pub async fn acquire(&self) -> Option<Permit<'_>> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let queued = Queued(&self.queued);
        let permit = self.permits.acquire().await.ok()?;
        drop(queued);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(running, Ordering::SeqCst);
        Some(Permit {
            limit: self,
            _permit: permit,
        })
    }

    /// Lets nobody in any more; waiters get `None`, held slots stay until dropped.
    pub fn close(&self) {
        self.permits.close();
    }

    pub fn counts(&self) -> LimitCounts {
        LimitCounts {
            running: self.running.load(Ordering::SeqCst),
            queued: self.queued.load(Ordering::SeqCst),
            peak: self.peak.load(Ordering::SeqCst),
            limit: self.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn waiters_are_served_in_order_and_counted_until_they_leave() {
        let limit = Limit::new(1);
        let first = limit.acquire().await.unwrap();
        let order = std::sync::Mutex::new(Vec::new());
        let waiter = |n: u32| {
            let (limit, order) = (&limit, &order);
            async move {
                let _slot = limit.acquire().await.unwrap();
                order.lock().unwrap().push(n);
            }
        };
        let (a, b) = (Box::pin(waiter(1)), Box::pin(waiter(2)));
        let mut both = Box::pin(async { tokio::join!(a, b) });
        // Both wait behind `first`.
        assert!((&mut both).now_or_never().is_none());
        assert_eq!(limit.counts().queued, 2);
        assert_eq!(limit.counts().running, 1);
        drop(first);
        both.await;
        assert_eq!(*order.lock().unwrap(), vec![1, 2]);
        let counts = limit.counts();
        assert_eq!((counts.running, counts.queued, counts.peak), (0, 0, 1));
    }

    #[tokio::test]
    async fn a_waiter_dropped_in_the_queue_leaves_it() {
        let limit = Limit::new(1);
        let held = limit.acquire().await.unwrap();
        let mut waiting = Box::pin(limit.acquire());
        assert!((&mut waiting).now_or_never().is_none());
        assert_eq!(limit.counts().queued, 1);
        drop(waiting);
        assert_eq!(limit.counts().queued, 0);
        drop(held);
        let again = limit.acquire().await.unwrap();
        assert_eq!(limit.counts().running, 1);
        drop(again);
        assert_eq!(limit.counts().running, 0);
    }

    #[tokio::test]
    async fn a_closed_limit_sends_its_waiters_away_and_lets_nobody_in() {
        let limit = Limit::new(1);
        let held = limit.acquire().await.unwrap();
        let mut waiting = Box::pin(limit.acquire());
        assert!((&mut waiting).now_or_never().is_none());
        limit.close();
        assert!(waiting.await.is_none(), "the waiter gives up");
        assert!(limit.acquire().await.is_none(), "nobody is let in");
        assert_eq!((limit.counts().running, limit.counts().queued), (1, 0));
        drop(held);
        assert_eq!(limit.counts().running, 0);
    }

    #[test]
    fn zero_is_one() {
        assert_eq!(Limit::new(0).counts().limit, 1);
    }
}
