//! The store watcher: one actor that notices another process's writes to the token store
//! (`auth login`, `auth logout`, another daemon) and tells every server's actor to look. It
//! looks every `store_poll_interval` (a scheduler entry, on the daemon's clock) at
//! `PRAGMA data_version`, which changes only when another connection commits: a look costs one
//! pragma, not a query per server.

use std::time::Duration;

use actix::prelude::*;

use crate::clock::{Clock, Millis};
use crate::scheduler::{Due, Owner, Scheduler, TimerKind};
use crate::store::TokenRegistry;
use crate::upstream::actor::{self, UpstreamActor};

pub struct StoreWatcher {
    upstreams: Vec<Addr<UpstreamActor>>,
    registry: TokenRegistry,
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
        upstreams: Vec<Addr<UpstreamActor>>,
        registry: TokenRegistry,
        scheduler: Scheduler,
        clock: Clock,
        interval: Duration,
    ) -> Self {
        StoreWatcher {
            upstreams,
            registry,
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
        self.arm_poll(ctx);
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
        let registry = self.registry.clone();
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
                for upstream in &act.upstreams {
                    upstream.do_send(actor::CheckStore);
                }
            }
        }));
    }
}
