//! One scheduler for every deadline of every actor, as mini-redis keeps one sorted map of
//! expirations instead of a timer per key: a `BTreeSet` of `(when, arming)` and one task that
//! sleeps until the earliest entry and is woken by a `Notify` when an earlier one is armed.
//! When an entry is due the task sends its owner a [`Due`] message. An upstream actor asks its
//! state machine what expired (a stale message finds nothing); other owners act on it only if
//! it is still their newest arming of that kind.
//!
//! Time is the daemon's [`Clock`]: deadlines are kept on a timeline counted from the
//! scheduler's start, which is the system clock's (to the nanosecond, so an `Instant` armed is
//! the `Instant` fired) or a manual clock's, on which tests run servers through many token
//! lifetimes without waiting.
//!
//! Why one place: 10,000 servers are 10,000 deadlines, not 10,000 timers on the actors'
//! thread; deadlines due together can be spread (a bounded per-owner stagger, never past the
//! latest moment the owner allows, never in the past); and the global limits on work that
//! holds something scarce live here too ([`limits`]: refreshes, logins, browser tabs, each a
//! fair queue), so tests and metrics read one set of counters ([`Scheduler::counters`]).

pub mod limits;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Message, WeakRecipient};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::{Clock, Millis};
pub use limits::{DEFAULT_LOGIN_LIMIT, DEFAULT_TAB_LIMIT, Limit, LimitCounts, Permit};

/// Which of an owner's deadlines: each owner has at most one entry per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The state machine's timer: proactive refresh, backoff, retrying, the browser window.
    Machine,
    /// The retry of a failed token save.
    SaveRetry,
    /// The supervisor's look at the store for other processes' writes.
    StorePoll,
}

/// Sent to an entry's owner when it is due. `arming` is the value `arm` returned: an owner
/// that re-armed since ignores the older one.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Due {
    pub kind: TimerKind,
    pub arming: u64,
}

/// Who owns entries: one id per actor, from [`Scheduler::new_owner`].
pub type Owner = u64;

/// How the scheduler spreads and limits work.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// The most an entry that allows it is moved later, so deadlines due together are spread.
    pub stagger: Duration,
    /// A firing later than this after its time counts as late.
    pub late_after: Duration,
    /// At most this many refresh flows run at once, over all servers.
    pub flow_limit: usize,
    /// At most this many logins run at once (past their queue: the lock, discovery,
    /// registration, the browser), over all servers.
    pub login_limit: usize,
    /// At most this many of those logins have a browser tab open at once.
    pub tab_limit: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            stagger: Duration::from_secs(1),
            late_after: Duration::from_millis(100),
            flow_limit: default_flow_limit(),
            login_limit: DEFAULT_LOGIN_LIMIT,
            tab_limit: DEFAULT_TAB_LIMIT,
        }
    }
}

/// 16 refreshes per core, between 8 and 256: each holds a connection and a lock file.
pub fn default_flow_limit() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 16).clamp(8, 256)
}

/// What the scheduler has done, for tests, status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedulerCounters {
    /// Entries waiting now.
    pub entries: usize,
    pub armed: u64,
    /// Armings that replaced a waiting entry of the same owner and kind.
    pub replaced: u64,
    pub cancelled: u64,
    /// Due entries sent to their owner.
    pub fired: u64,
    /// Entries dropped because their owner had stopped.
    pub dropped: u64,
    /// Firings later than `late_after`, and the worst lateness seen.
    pub late: u64,
    pub worst_lateness_ms: u64,
    /// Refresh flows running now, waiting for a slot, the most that ran at once, and the
    /// limit.
    pub flows_running: usize,
    pub flows_queued: usize,
    pub flows_peak: usize,
    pub flow_limit: usize,
    /// Logins the same way (their own limit: a login may wait minutes for a person, and
    /// must not hold back refreshes).
    pub logins_running: usize,
    pub logins_queued: usize,
    pub logins_peak: usize,
    pub login_limit: usize,
    /// Browser tabs: logins that opened the browser and wait for its answer, and logins
    /// ready to open it that wait for a tab.
    pub tabs_open: usize,
    pub tabs_queued: usize,
    pub tabs_peak: usize,
    pub tab_limit: usize,
}

/// A point on the scheduler's timeline: how long after its start.
type Tick = Duration;

/// The scheduler's timeline on its clock.
struct Timeline {
    clock: Clock,
    /// The start, on the system clock (`Instant`s convert exactly) and on `clock`.
    start: Instant,
    start_ms: Millis,
}

impl Timeline {
    fn new(clock: Clock) -> Self {
        Timeline {
            start: Instant::now(),
            start_ms: clock.now_ms(),
            clock,
        }
    }

    fn now(&self) -> Tick {
        if self.clock.is_manual() {
            self.of_ms(self.clock.now_ms())
        } else {
            Instant::now().saturating_duration_since(self.start)
        }
    }

    fn of_ms(&self, at: Millis) -> Tick {
        if self.clock.is_manual() {
            Duration::from_millis(at.saturating_sub(self.start_ms).max(0) as u64)
        } else {
            self.of_instant(Instant::now() + ms_after(at, self.clock.now_ms()))
        }
    }

    fn of_instant(&self, at: Instant) -> Tick {
        if self.clock.is_manual() {
            self.now() + at.saturating_duration_since(Instant::now())
        } else {
            at.saturating_duration_since(self.start)
        }
    }

    fn to_ms(&self, tick: Tick) -> Millis {
        let now = self.now();
        let ms = |d: Duration| d.as_millis() as Millis;
        match tick.checked_sub(now) {
            Some(ahead) => self.clock.now_ms() + ms(ahead),
            None => self.clock.now_ms() - ms(now - tick),
        }
    }

    fn to_instant(&self, tick: Tick) -> Instant {
        if self.clock.is_manual() {
            Instant::now() + tick.saturating_sub(self.now())
        } else {
            self.start + tick
        }
    }

    async fn sleep_until(&self, tick: Tick) {
        if self.clock.is_manual() {
            let at = self.start_ms + tick.as_millis() as Millis;
            self.clock.sleep_until(at).await;
        } else {
            tokio::time::sleep_until(self.start + tick).await;
        }
    }
}

/// How long from `now` until `at` (zero if past).
fn ms_after(at: Millis, now: Millis) -> Duration {
    Duration::from_millis(at.saturating_sub(now).max(0) as u64)
}

struct Entry {
    when: Tick,
    arming: u64,
    to: WeakRecipient<Due>,
}

type Key = (Owner, TimerKind);

#[derive(Default)]
struct Book {
    /// `(when, arming)` sorted: the first is the next to fire; arming ids break ties in
    /// arming order.
    queue: BTreeSet<(Tick, u64, Key)>,
    entries: HashMap<Key, Entry>,
}

impl Book {
    fn remove(&mut self, key: &Key) -> bool {
        match self.entries.remove(key) {
            Some(e) => self.queue.remove(&(e.when, e.arming, *key)),
            None => false,
        }
    }
}

struct Inner {
    config: SchedulerConfig,
    timeline: Timeline,
    book: Mutex<Book>,
    wake: Notify,
    stopped: AtomicBool,
    next_owner: AtomicU64,
    next_arming: AtomicU64,
    armed: AtomicU64,
    replaced: AtomicU64,
    cancelled: AtomicU64,
    fired: AtomicU64,
    dropped: AtomicU64,
    late: AtomicU64,
    worst_lateness_ms: AtomicU64,
    refreshes: Limit,
    logins: Limit,
    tabs: Limit,
}

/// The scheduler: cheap to clone, shared by every actor. [`Scheduler::run`] is its one task.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("counters", &self.counters())
            .finish()
    }
}

impl Scheduler {
    /// A scheduler on the system clock.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler::with_clock(config, Clock::system())
    }

    /// A scheduler on `clock` (the daemon's: a manual one in tests).
    pub fn with_clock(config: SchedulerConfig, clock: Clock) -> Self {
        Scheduler {
            inner: Arc::new(Inner {
                config,
                timeline: Timeline::new(clock),
                book: Mutex::default(),
                wake: Notify::new(),
                stopped: AtomicBool::new(false),
                next_owner: AtomicU64::new(1),
                next_arming: AtomicU64::new(1),
                armed: AtomicU64::new(0),
                replaced: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                fired: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                late: AtomicU64::new(0),
                worst_lateness_ms: AtomicU64::new(0),
                refreshes: Limit::new(config.flow_limit),
                logins: Limit::new(config.login_limit),
                tabs: Limit::new(config.tab_limit),
            }),
        }
    }

    /// A new owner id (one per actor; a restarted actor keeps its id and forgets its entries).
    pub fn new_owner(&self) -> Owner {
        self.inner.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms `owner`'s `kind` deadline at `at`, replacing the waiting one. With `latest` later
    /// than `at`, the entry may be moved later by the owner's stagger (at most the configured
    /// `stagger`, never past `latest`); it never fires before `at` nor is placed in the past.
    /// Returns the arming id (which the [`Due`] carries) and when it will fire.
    pub fn arm(
        &self,
        owner: Owner,
        kind: TimerKind,
        at: Instant,
        latest: Option<Instant>,
        to: WeakRecipient<Due>,
    ) -> (u64, Instant) {
        let timeline = &self.inner.timeline;
        let at = timeline.of_instant(at);
        let latest = latest.map(|l| timeline.of_instant(l));
        let (arming, when) = self.arm_tick(owner, kind, at, latest, to);
        (arming, timeline.to_instant(when))
    }

    /// [`Scheduler::arm`] with times in unix ms on the scheduler's clock (the state machine's
    /// time).
    pub fn arm_at(
        &self,
        owner: Owner,
        kind: TimerKind,
        at: Millis,
        latest: Option<Millis>,
        to: WeakRecipient<Due>,
    ) -> (u64, Millis) {
        let timeline = &self.inner.timeline;
        let at = timeline.of_ms(at);
        let latest = latest.map(|l| timeline.of_ms(l));
        let (arming, when) = self.arm_tick(owner, kind, at, latest, to);
        (arming, timeline.to_ms(when))
    }

    fn arm_tick(
        &self,
        owner: Owner,
        kind: TimerKind,
        at: Tick,
        latest: Option<Tick>,
        to: WeakRecipient<Due>,
    ) -> (u64, Tick) {
        let when = self
            .staggered(owner, at, latest)
            .max(self.inner.timeline.now());
        let arming = self.inner.next_arming.fetch_add(1, Ordering::Relaxed);
        let key = (owner, kind);
        let earliest = {
            let mut book = self.book();
            if book.remove(&key) {
                self.inner.replaced.fetch_add(1, Ordering::Relaxed);
            }
            let earliest = book.queue.first().is_none_or(|(first, ..)| when < *first);
            book.queue.insert((when, arming, key));
            book.entries.insert(key, Entry { when, arming, to });
            earliest
        };
        self.inner.armed.fetch_add(1, Ordering::Relaxed);
        if earliest {
            // The task sleeps until the old earliest entry: wake it to sleep less.
            self.inner.wake.notify_one();
        }
        (arming, when)
    }

    /// `at` moved later by this owner's fixed fraction of the allowed spread.
    fn staggered(&self, owner: Owner, at: Tick, latest: Option<Tick>) -> Tick {
        let Some(room) = latest.and_then(|l| l.checked_sub(at)) else {
            return at;
        };
        let spread = room.min(self.inner.config.stagger);
        let fraction = (splitmix(owner) >> 11) as f64 / (1u64 << 53) as f64;
        at + spread.mul_f64(fraction)
    }

    /// Removes `owner`'s `kind` entry, if one waits.
    pub fn cancel(&self, owner: Owner, kind: TimerKind) {
        if self.book().remove(&(owner, kind)) {
            self.inner.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes every entry of `owner` (it stopped or restarted).
    pub fn forget(&self, owner: Owner) {
        let mut book = self.book();
        for kind in [
            TimerKind::Machine,
            TimerKind::SaveRetry,
            TimerKind::StorePoll,
        ] {
            if book.remove(&(owner, kind)) {
                self.inner.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The one task: fires due entries in deadline order, then sleeps until the next one or
    /// until an earlier one is armed. Returns after [`Scheduler::stop`].
    pub async fn run(self) {
        while !self.inner.stopped.load(Ordering::Acquire) {
            let next = self.fire_due(self.inner.timeline.now());
            let woken = self.inner.wake.notified();
            match next {
                Some(when) => {
                    tokio::select! {
                        _ = self.inner.timeline.sleep_until(when) => {}
                        _ = woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// Sends every entry due at `now` to its owner, earliest first; the next entry's time.
    fn fire_due(&self, now: Tick) -> Option<Tick> {
        let mut due = Vec::new();
        let next = {
            let mut book = self.book();
            while let Some(&(when, arming, key)) = book.queue.first() {
                if when > now {
                    break;
                }
                book.queue.pop_first();
                if let Some(entry) = book.entries.remove(&key) {
                    due.push((
                        when,
                        key,
                        Due {
                            kind: key.1,
                            arming,
                        },
                        entry.to,
                    ));
                }
            }
            book.queue.first().map(|(when, ..)| *when)
        };
        for (when, (owner, _), message, to) in due {
            // A weak address: entries never keep an actor alive.
            let Some(to) = to.upgrade().filter(|to| to.connected()) else {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                self.forget(owner);
                continue;
            };
            let lateness = now.saturating_sub(when);
            if lateness > self.inner.config.late_after {
                self.inner.late.fetch_add(1, Ordering::Relaxed);
            }
            self.inner
                .worst_lateness_ms
                .fetch_max(lateness.as_millis() as u64, Ordering::Relaxed);
            self.inner.fired.fetch_add(1, Ordering::Relaxed);
            to.do_send(message);
        }
        next
    }

    /// Ends [`Scheduler::run`]; waiting entries never fire.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    /// Waits for a refresh slot under the global flow limit.
    pub async fn refresh_slot(&self) -> Permit<'_> {
        let slot = self.inner.refreshes.acquire().await;
        slot.expect("the refresh limit is never closed: a drain lets refreshes finish")
    }

    /// Waits for a login slot: taken before the login's lock file and discovery, held until
    /// the login ends. `None`: shutting down ([`Scheduler::close_logins`]).
    pub async fn login_slot(&self) -> Option<Permit<'_>> {
        self.inner.logins.acquire().await
    }

    /// Waits for a browser tab: taken by a login ready to open the browser, held until the
    /// login ends. `None`: shutting down.
    pub async fn tab_slot(&self) -> Option<Permit<'_>> {
        self.inner.tabs.acquire().await
    }

    /// Shutting down: logins waiting for a slot or a tab give up, and no browser opens any
    /// more (the drain cancels the logins that run; a tab freed by one must not go to the
    /// next login in the queue).
    pub fn close_logins(&self) {
        self.inner.logins.close();
        self.inner.tabs.close();
    }

    pub fn counters(&self) -> SchedulerCounters {
        let i = &self.inner;
        let (flows, logins, tabs) = (i.refreshes.counts(), i.logins.counts(), i.tabs.counts());
        SchedulerCounters {
            entries: self.book().entries.len(),
            armed: i.armed.load(Ordering::Relaxed),
            replaced: i.replaced.load(Ordering::Relaxed),
            cancelled: i.cancelled.load(Ordering::Relaxed),
            fired: i.fired.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            late: i.late.load(Ordering::Relaxed),
            worst_lateness_ms: i.worst_lateness_ms.load(Ordering::Relaxed),
            flows_running: flows.running,
            flows_queued: flows.queued,
            flows_peak: flows.peak,
            flow_limit: flows.limit,
            logins_running: logins.running,
            logins_queued: logins.queued,
            logins_peak: logins.peak,
            login_limit: logins.limit,
            tabs_open: tabs.running,
            tabs_queued: tabs.queued,
            tabs_peak: tabs.peak,
            tab_limit: tabs.limit,
        }
    }
}

/// A fixed, well-spread 64-bit value per owner (SplitMix64), for the stagger.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
