//! The system clock: wall time in milliseconds since the Unix epoch, the unit every stored,
//! compared and reported time uses. It stands at the bottom of the house and imports nothing
//! of it, so any module may read the time without reaching up into the store or the daemon.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 for a clock set before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
