//! The one scheduler: entries fire in deadline order and never before their time, re-arming
//! replaces, a stopped actor's entries are dropped, deadlines due together are staggered
//! within their bounds; and the supervisor's actors keep their deadlines there. Real actix
//! actors receive the `Due` messages; every wait is bounded.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use common::*;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::scheduler::{Due, Scheduler, SchedulerConfig, TimerKind};
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use url::Url;

/// An actor that reports every `Due` it receives, with the time it arrived.
struct Recorder {
    name: &'static str,
    seen: mpsc::UnboundedSender<(&'static str, Due, Instant)>,
    stopped: Option<oneshot::Sender<()>>,
}

impl Actor for Recorder {
    type Context = Context<Self>;
    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(tx) = self.stopped.take() {
            let _ = tx.send(());
        }
    }
}

impl Handler<Due> for Recorder {
    type Result = ();
    fn handle(&mut self, due: Due, _: &mut Context<Self>) {
        let _ = self.seen.send((self.name, due, Instant::now()));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for Recorder {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

type Seen = mpsc::UnboundedReceiver<(&'static str, Due, Instant)>;

fn recorder(name: &'static str, seen: &Sent) -> (Addr<Recorder>, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    let addr = Recorder {
        name,
        seen: seen.clone(),
        stopped: Some(tx),
    }
    .start();
    (addr, rx)
}

type Sent = mpsc::UnboundedSender<(&'static str, Due, Instant)>;

/// A running scheduler staggering by `stagger`, and the channel its recorders report on.
fn scheduler(stagger: Duration) -> (Scheduler, Sent, Seen) {
    let scheduler = Scheduler::new(SchedulerConfig {
        stagger,
        ..SchedulerConfig::default()
    });
    actix_rt::spawn(scheduler.clone().run());
    let (tx, seen) = mpsc::unbounded_channel();
    (scheduler, tx, seen)
}

async fn next(seen: &mut Seen) -> (&'static str, Due, Instant) {
    tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a due entry arrives within 5 s")
        .expect("the channel stays open")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[actix_rt::test]
async fn entries_fire_in_deadline_order_and_never_before_their_time() {
    let (sched, tx, mut seen) = scheduler(Duration::ZERO);
    let start = Instant::now();
    let (mut expected, mut actors) = (Vec::new(), Vec::new());
    // Armed out of order: 150, 50, 100 ms.
    for (name, after) in [("late", 150), ("early", 50), ("middle", 100)] {
        let (addr, _) = recorder(name, &tx);
        // Entries hold weak addresses: the test keeps the actors alive.
        actors.push(addr.clone());
        let owner = sched.new_owner();
        let at = start + ms(after);
        let (arming, when) = sched.arm(
            owner,
            TimerKind::Machine,
            at,
            None,
            addr.downgrade().recipient(),
        );
        assert_eq!(when, at, "no stagger without room");
        expected.push((name, arming, at));
    }
    assert_eq!(sched.counters().entries, 3);
    let mut order = Vec::new();
    for _ in 0..3 {
        let (name, due, arrived) = next(&mut seen).await;
        let (_, arming, at) = expected.iter().find(|e| e.0 == name).unwrap();
        assert_eq!(due.arming, *arming);
        assert_eq!(due.kind, TimerKind::Machine);
        assert!(arrived >= *at, "{name} fired {:?} early", *at - arrived);
        order.push(name);
    }
    assert_eq!(order, ["early", "middle", "late"]);
    let counters = sched.counters();
    assert_eq!(
        (counters.entries, counters.fired, counters.armed),
        (0, 3, 3)
    );
    sched.stop();
}

#[actix_rt::test]
async fn re_arming_replaces_the_waiting_entry() {
    let (sched, tx, mut seen) = scheduler(Duration::ZERO);
    let (addr, _) = recorder("a", &tx);
    let owner = sched.new_owner();
    let start = Instant::now();
    let to = || addr.downgrade().recipient();
    let (first, _) = sched.arm(owner, TimerKind::Machine, start + ms(200), None, to());
    let (second, _) = sched.arm(owner, TimerKind::Machine, start + ms(50), None, to());
    assert_ne!(first, second);
    assert_eq!(sched.counters().entries, 1, "one entry per owner and kind");
    // Another kind of the same owner is its own entry.
    let (poll, _) = sched.arm(owner, TimerKind::SaveRetry, start + ms(300), None, to());
    let (_, due, _) = next(&mut seen).await;
    assert_eq!((due.kind, due.arming), (TimerKind::Machine, second));
    // The replaced entry (due at 200 ms) would arrive before the 300 ms one.
    let (_, due, _) = next(&mut seen).await;
    assert_eq!((due.kind, due.arming), (TimerKind::SaveRetry, poll));
    let counters = sched.counters();
    assert_eq!((counters.replaced, counters.fired), (1, 2));
    // A cancelled entry never fires either: a later marker arrives first.
    sched.arm(
        owner,
        TimerKind::Machine,
        Instant::now() + ms(20),
        None,
        to(),
    );
    sched.cancel(owner, TimerKind::Machine);
    let (marker, _) = sched.arm(
        sched.new_owner(),
        TimerKind::Machine,
        Instant::now() + ms(60),
        None,
        to(),
    );
    let (_, due, _) = next(&mut seen).await;
    assert_eq!(due.arming, marker);
    let counters = sched.counters();
    assert_eq!((counters.cancelled, counters.fired), (1, 3));
    sched.stop();
}

#[actix_rt::test]
async fn a_stopped_actors_entries_are_dropped() {
    let (sched, tx, mut seen) = scheduler(Duration::ZERO);
    let (gone, stopped) = recorder("gone", &tx);
    let (alive, _) = recorder("alive", &tx);
    let start = Instant::now();
    let gone_owner = sched.new_owner();
    sched.arm(
        gone_owner,
        TimerKind::Machine,
        start + ms(50),
        None,
        gone.downgrade().recipient(),
    );
    sched.arm(
        gone_owner,
        TimerKind::SaveRetry,
        start + ms(500),
        None,
        gone.downgrade().recipient(),
    );
    sched.arm(
        sched.new_owner(),
        TimerKind::Machine,
        start + ms(100),
        None,
        alive.downgrade().recipient(),
    );
    gone.do_send(Stop);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the actor stops within 5 s")
        .unwrap();
    drop(gone);
    let (name, _, _) = next(&mut seen).await;
    assert_eq!(name, "alive", "the stopped actor got nothing");
    let counters = sched.counters();
    assert_eq!(counters.dropped, 1, "{counters:?}");
    assert_eq!(counters.fired, 1);
    assert_eq!(
        counters.entries, 0,
        "the stopped owner's other entry went with it"
    );
    sched.stop();
}

#[actix_rt::test]
async fn deadlines_due_together_are_staggered_within_their_bounds() {
    let (sched, tx, mut seen) = scheduler(ms(400));
    let (addr, _) = recorder("many", &tx);
    let at = Instant::now() + ms(50);
    let latest = at + ms(200);
    let mut whens = Vec::new();
    for _ in 0..20 {
        let (_, when) = sched.arm(
            sched.new_owner(),
            TimerKind::Machine,
            at,
            Some(latest),
            addr.downgrade().recipient(),
        );
        assert!(
            when >= at && when <= latest,
            "staggered within [at, latest]"
        );
        whens.push(when);
    }
    whens.sort();
    whens.dedup();
    assert!(
        whens.len() >= 15,
        "20 deadlines at once are spread: {} distinct",
        whens.len()
    );
    assert!(
        *whens.last().unwrap() - whens[0] >= ms(100),
        "over most of the 200 ms allowed"
    );
    // A deadline in the past is placed at now, not before.
    let before = Instant::now();
    let (_, when) = sched.arm(
        sched.new_owner(),
        TimerKind::Machine,
        before - ms(1_000),
        None,
        addr.downgrade().recipient(),
    );
    assert!(when >= before, "never in the past");
    for _ in 0..21 {
        next(&mut seen).await;
    }
    assert_eq!(sched.counters().fired, 21);
    sched.stop();
}

/// The supervisor's actors: every connected server's proactive refresh and the store poll are
/// scheduler entries; they fire (each refresh is counted) and a logout removes its entry.
#[tokio::test]
async fn the_supervisors_deadlines_live_in_the_scheduler() {
    let srv = start(token_ttl(6)).await;
    let (browser, launches) = following_browser();
    let dir = std::env::temp_dir().join(format!(
        "mcpproxy-oauth-sched-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let servers = ["a", "b", "c"]
        .iter()
        .map(|n| UpstreamConfig::new(n, Url::parse(&srv.mcp_url()).unwrap()))
        .collect();
    let handle = SupervisorHandle::start(SupervisorConfig {
        browser,
        ..SupervisorConfig::new(servers, dir)
    })
    .await
    .unwrap();
    for name in ["a", "b", "c"] {
        handle.reconnect(name).await.expect("login");
    }
    let counters = handle.scheduler_counters();
    assert_eq!(
        counters.entries, 4,
        "three refresh deadlines and the store poll: {counters:?}"
    );
    assert_eq!(counters.logins_running, 0);
    assert!(counters.logins_peak >= 1);
    // The proactive refreshes fire (at 75% of 6 s) through the scheduler.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let statuses = handle.status().await.unwrap();
        let refreshes = srv.stats().token_requests_for("refresh_token");
        if statuses
            .iter()
            .all(|s| s.timers_fired >= 1 && s.phase.name() == "connected")
            && refreshes >= 3
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every server refreshed by its timer within 20 s: {:?}",
            statuses
                .iter()
                .map(|s| (&s.name, s.timers_fired))
                .collect::<Vec<_>>()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), handle.subscribe().recv()).await;
    }
    assert!(handle.scheduler_counters().fired >= 3);
    assert_eq!(launches.load(Ordering::SeqCst), 3, "no login but the first");
    handle.logout("a").await.unwrap();
    let statuses = handle.status().await.unwrap();
    let waiting = statuses.iter().filter(|s| s.timer_at.is_some()).count();
    assert_eq!(waiting, 2);
    assert_eq!(
        handle.scheduler_counters().entries,
        3,
        "the logged-out server's deadline is gone"
    );
    handle.shutdown().await;
}
