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
