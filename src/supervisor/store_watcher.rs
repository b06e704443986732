//! The store watcher: one actor that notices another process's writes to the token store
//! (`auth login`, `auth logout`, another daemon) and tells every server's actor to look. It
//! looks every `store_poll_interval` (a scheduler entry, on the daemon's clock) at
//! `PRAGMA data_version`, which changes only when another connection commits: a look costs one
//! pragma, not a query per server. On PostgreSQL it hears the store's changes instead
//! (LISTEN/NOTIFY, naming the server, with the listener's bounded poll as fallback) and tells
//! only the server whose token changed: waiters on every instance learn a new token at once.

use std::time::Duration;

use actix::prelude::*;

use crate::clock::{Clock, Millis};
use crate::scheduler::{Due, Owner, Scheduler, TimerKind};
use crate::store::{Store, StoreChange};
use crate::upstream::actor::{self, UpstreamActor};

pub struct StoreWatcher {
    /// Every server's actor, with its server key.
    upstreams: Vec<(String, Addr<UpstreamActor>)>,
    store: Store,
    scheduler: Scheduler,
    clock: Clock,
    /// This actor's id in the scheduler, and the arming of its waiting look (a `Due` for an
    /// older one is stale).
    owner: Owner,
    poll: Option<u64>,
    interval: Duration,
    /// `PRAGMA data_version` at the last look.
    data_version: Option<i64>,
}

impl StoreWatcher {
    pub fn new(
        upstreams: Vec<(String, Addr<UpstreamActor>)>,
        store: Store,
        scheduler: Scheduler,
        clock: Clock,
        interval: Duration,
    ) -> Self {
        StoreWatcher {
            upstreams,
            store,
            owner: scheduler.new_owner(),
            scheduler,
            clock,
            poll: None,
            interval,
            data_version: None,
        }
    }

    /// Arms the next look, one interval from now (at least 10 ms: a zero interval would look
    /// without pause).
    fn arm_poll(&mut self, ctx: &mut Context<Self>) {
        let interval = self.interval.max(Duration::from_millis(10));
        let at = self.clock.now_ms() + interval.as_millis() as Millis;
        let to = ctx.address().downgrade().recipient();
        let (arming, _) = self
            .scheduler
            .arm_at(self.owner, TimerKind::StorePoll, at, None, to);
        self.poll = Some(arming);
    }
}

impl Actor for StoreWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match &self.store {
            Store::Sqlite(_) => self.arm_poll(ctx),
            Store::Postgres(_) => {
                let (store, me) = (self.store.clone(), ctx.address().downgrade());
                actix::spawn(async move {
                    let mut changes = store.changes().await;
                    loop {
                        let change = changes.next().await;
                        let Some(me) = me.upgrade() else { return };
                        if me.send(Changed(change)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.scheduler.forget(self.owner);
    }
}

impl Handler<Due> for StoreWatcher {
    type Result = ();
    fn handle(&mut self, due: Due, ctx: &mut Context<Self>) {
        if due.kind != TimerKind::StorePoll || self.poll != Some(due.arming) {
            return;
        }
        let Store::Sqlite(sqlite) = &self.store else {
            return;
        };
        let registry = sqlite.registry().clone();
        let look = async move { registry.call(|s| s.data_version()).await };
        ctx.spawn(look.into_actor(self).map(|version, act, ctx| {
            // The next look is armed once this one is answered: a slow registry never has
            // looks piling up in its queue.
            act.arm_poll(ctx);
            let Ok(version) = version else { return };
            // The first look checks too: another process may have written between the
            // actors' first loads and this baseline.
            let changed = act.data_version != Some(version);
            act.data_version = Some(version);
            if changed {
                tracing::debug!("the token store was changed by another process");
                for (_, upstream) in &act.upstreams {
                    upstream.do_send(actor::CheckStore);
                }
            }
        }));
    }
}

/// PostgreSQL: one change the listener heard.
#[derive(Message)]
#[rtype(result = "()")]
struct Changed(StoreChange);

impl Handler<Changed> for StoreWatcher {
    type Result = ();
    fn handle(&mut self, Changed(change): Changed, _: &mut Context<Self>) {
        let only = match &change {
            StoreChange::Token(key) => Some(key.as_str()),
            // A released lease: the claim that waits for it hears it itself.
            StoreChange::Lease(_) => return,
            StoreChange::Any => None,
        };
        for (key, upstream) in &self.upstreams {
            if only.is_none_or(|only| only == key) {
                upstream.do_send(actor::CheckStore);
            }
        }
    }
}
