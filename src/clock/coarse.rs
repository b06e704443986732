//! The hot path's clock. `SystemTime::now()` costs about as much as the rest of a token read;
//! the kernel's coarse realtime clock (the time at the last tick, read from the vDSO without a
//! syscall or `rdtsc`) costs a few nanoseconds. It lags true time by about a tick, and more on
//! a virtual machine whose CPU just woke (7 ms with a 4 ms tick was seen), so a token read with
//! it may be handed out a little past its hand-out deadline: that is safe only while the
//! token's safety margin is several ticks, and [`coarse_is_safe`] says when it is (otherwise
//! the precise clock is read). Never past expiry either way.

use super::{Millis, now_ms};

/// A token's safety margin must be at least this many coarse ticks for the coarse clock.
const TICKS_OF_MARGIN: i64 = 4;

/// Unix time in ms from the coarse clock (about a tick behind [`now_ms`]).
#[cfg(target_os = "linux")]
#[inline]
pub fn coarse_now_ms() -> Millis {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    t.tv_sec * 1_000 + t.tv_nsec / 1_000_000
}

#[cfg(not(target_os = "linux"))]
#[inline]
pub fn coarse_now_ms() -> Millis {
    now_ms()
}

/// The coarse clock's tick in ms, rounded up (`None`: no coarse clock here).
#[cfg(target_os = "linux")]
fn tick_ms() -> Option<Millis> {
    let r = rustix::time::clock_getres(rustix::time::ClockId::RealtimeCoarse);
    let nanos = r
        .tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(r.tv_nsec);
    (nanos > 0).then(|| (nanos + 999_999) / 1_000_000)
}

#[cfg(not(target_os = "linux"))]
fn tick_ms() -> Option<Millis> {
    None
}

/// Whether a token with this safety margin may be checked against the coarse clock.
pub fn coarse_is_safe(safety_margin: Millis) -> bool {
    tick_ms().is_some_and(|tick| safety_margin >= TICKS_OF_MARGIN * tick)
}

/// The clock a snapshot is checked against.
#[inline]
pub fn now_for(coarse: bool) -> Millis {
    if coarse { coarse_now_ms() } else { now_ms() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_lags_the_precise_one_by_less_than_the_margin_it_needs() {
        // The bound the hand-out relies on is the margin of TICKS_OF_MARGIN ticks, not one
        // tick: a woken virtual CPU's coarse clock was seen a tick and more behind.
        let margin = TICKS_OF_MARGIN * tick_ms().unwrap_or(0);
        // The precise clock read on both sides: a preemption between two reads widens the
        // window, never the bound, so the check holds on a loaded machine.
        for _ in 0..1_000 {
            let before = now_ms();
            let coarse = coarse_now_ms();
            let after = now_ms();
            assert!(
                coarse <= after + 1 && before - coarse <= margin + 1,
                "coarse {coarse} precise {before}..{after} margin {margin}"
            );
        }
    }

    #[test]
    fn short_margins_use_the_precise_clock() {
        assert!(!coarse_is_safe(0));
        if let Some(tick) = tick_ms() {
            assert!(!coarse_is_safe(TICKS_OF_MARGIN * tick - 1));
            assert!(coarse_is_safe(TICKS_OF_MARGIN * tick));
        }
    }
}
