//! Time. [`Clock`] is the one clock the daemon reads: the state machine's driver (the actor),
//! the scheduler and the flows all take it from the supervisor, so a test can run servers
//! through many token lifetimes on virtual time ([`Clock::manual`]) without waiting. The
//! system clock is at the bottom ([`now_ms`]); the hot path reads its own, cheaper one
//! ([`coarse`]), against a deadline worked out when the token was published.

pub mod coarse;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Unix time in milliseconds, as the machine counts it.
pub type Millis = i64;

/// The system clock in unix milliseconds.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The daemon's clock: the system's, or a manual one that moves only when told.
#[derive(Clone, Default)]
pub struct Clock(Source);

#[derive(Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<Manual>),
}

struct Manual {
    now: AtomicI64,
    /// Woken whenever time moves, so sleepers on this clock look again.
    moved: Notify,
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `start` until [`Clock::advance`] moves it (tests).
    pub fn manual(start: Millis) -> Clock {
        Clock(Source::Manual(Arc::new(Manual {
            now: AtomicI64::new(start),
            moved: Notify::new(),
        })))
    }

    pub fn now_ms(&self) -> Millis {
        match &self.0 {
            Source::System => now_ms(),
            Source::Manual(m) => m.now.load(Ordering::SeqCst),
        }
    }

    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms().max(0) as u64)
    }

    pub fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }

    /// Moves a manual clock forward by `by`, waking everything that sleeps on it. A system
    /// clock cannot be moved: this does nothing there.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(m) = &self.0 {
            m.now.fetch_add(by.as_millis() as Millis, Ordering::SeqCst);
            m.moved.notify_waiters();
        }
    }

    /// Returns once this clock reads `at` or later.
    pub async fn sleep_until(&self, at: Millis) {
        match &self.0 {
            Source::System => {
                let wait = at.saturating_sub(now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Source::Manual(m) => loop {
                let moved = m.moved.notified();
                tokio::pin!(moved);
                // Registered before the look, so an advance in between is not missed.
                moved.as_mut().enable();
                if m.now.load(Ordering::SeqCst) >= at {
                    return;
                }
                moved.await;
            },
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::System"),
            Source::Manual(m) => write!(f, "Clock::Manual({})", m.now.load(Ordering::SeqCst)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_told_and_wakes_its_sleepers() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(61_000).await }
        });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(30));
        assert!(!sleeper.is_finished() || clock.now_ms() >= 61_000);
        clock.advance(Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("the sleeper wakes once the clock reads its deadline")
            .unwrap();
        assert_eq!(clock.now_ms(), 61_000);
    }

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let clock = Clock::system();
        let (before, read, after) = (now_ms(), clock.now_ms(), now_ms());
        assert!(before <= read && read <= after);
        clock.advance(Duration::from_secs(60));
        assert!(
            clock.now_ms() - now_ms() < 1_000,
            "a system clock is not moved"
        );
    }
}
