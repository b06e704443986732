//! Bounded waits: a test never sleeps to synchronise; it looks again until a deadline and then
//! fails saying what it waited for.

use std::future::Future;
use std::time::{Duration, Instant};

/// Waits until `check` holds, looking every 50 ms; fails after `within`.
pub async fn wait_until<F: Fn() -> bool>(what: &str, within: Duration, check: F) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `future`'s output, or a failure saying `what` did not end within `within`.
pub async fn ends_within<T>(what: &str, within: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(within, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {within:?}"))
}

/// A bound on a loop that looks again until something holds: `again` waits before the next
/// look, or fails naming what was awaited and what was seen last once the bound has passed.
pub struct Deadline {
    what: String,
    within: Duration,
    at: Instant,
}

impl Deadline {
    /// `within` from now, for `what`.
    pub fn after(what: impl Into<String>, within: Duration) -> Deadline {
        Deadline {
            what: what.into(),
            within,
            at: Instant::now() + within,
        }
    }

    /// Fails if the deadline has passed, saying `last` was seen; else sleeps `every`.
    pub async fn again(&self, last: impl std::fmt::Display, every: Duration) {
        self.check(&format!("; last seen: {last}"));
        tokio::time::sleep(every).await;
    }

    /// Fails if the deadline has passed; else sleeps `every`.
    pub async fn wait(&self, every: Duration) {
        self.check("");
        tokio::time::sleep(every).await;
    }

    fn check(&self, seen: &str) {
        let (what, within) = (&self.what, self.within);
        assert!(
            Instant::now() < self.at,
            "{what}: not within {within:?}{seen}"
        );
    }
}
