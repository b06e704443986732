//! How an `UpstreamActor` answers each message: the handler turns its message into the
//! machine's event (with the facts it carries: which token, which challenge) and leaves every
//! decision to the machine.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::{Caller, UpstreamActor};
use super::messages::*;
use super::state::{Event, Failure};
use crate::scheduler::{Due, TimerKind};

impl Handler<ReportProtocolVersion> for UpstreamActor {
    type Result = ();
    fn handle(&mut self, message: ReportProtocolVersion, _: &mut Context<Self>) {
        self.report_protocol_version(message.0);
    }
}

/// Messages that are each one event for the machine, their caller waiting for its answer.
macro_rules! waits_for {
    ($($message:ty => $event:expr),+ $(,)?) => {$(
        impl Handler<$message> for UpstreamActor {
            type Result = ResponseFuture<Reply>;
            fn handle(&mut self, _: $message, ctx: &mut Context<Self>) -> Self::Result {
                self.wait_for($event, None, ctx)
            }
        }
    )+};
}

// An explicit refresh of a server never loaded starts by loading (the machine decides).
waits_for!(Reconnect => Event::Reconnect, Login => Event::Login, Refresh => Event::Refresh);

impl Handler<AccessToken> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, _: AccessToken, ctx: &mut Context<Self>) -> Self::Result {
        // The published token may have become usable while this message queued.
        if let Some(grant) = self.usable_grant() {
            return Box::pin(async move { Ok(grant) });
        }
        self.wait_for(Event::Reconnect, None, ctx)
    }
}

impl Handler<ReportUnauthorized> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, report: ReportUnauthorized, ctx: &mut Context<Self>) -> Self::Result {
        let token = Some(report.token);
        self.wait_for(Event::Refused { token }, report.challenge, ctx)
    }
}

impl Handler<ReportForbidden> for UpstreamActor {
    type Result = ResponseFuture<Reply>;
    fn handle(&mut self, report: ReportForbidden, ctx: &mut Context<Self>) -> Self::Result {
        let event = Event::Forbidden {
            token: Some(report.token),
            insufficient_scope: report.challenge.is_insufficient_scope(),
            granted: self.granted_scope(),
            demanded: report.challenge.scope.clone(),
        };
        self.wait_for(event, Some(report.challenge), ctx)
    }
}

impl Handler<Logout> for UpstreamActor {
    type Result = ResponseFuture<Result<(), UpstreamError>>;
    fn handle(&mut self, _: Logout, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let stopped = self.error(Failure::Stopped, None);
        // The machine cancels the running flow and fences it; the stored token is revoked and
        // deleted (`RevokeAndDelete`), and this caller answered when that is done.
        self.apply(Event::Logout, None, Caller::logout(tx), ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(stopped)) })
    }
}

impl Handler<Drain> for UpstreamActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.apply(Event::Drain, None, Caller::nobody(), ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<Due> for UpstreamActor {
    type Result = ();
    fn handle(&mut self, due: Due, ctx: &mut Context<Self>) {
        if due.kind == TimerKind::Machine {
            self.handle_timeout(ctx);
        }
    }
}

impl Handler<CheckStore> for UpstreamActor {
    type Result = ();
    fn handle(&mut self, _: CheckStore, ctx: &mut Context<Self>) {
        self.check_store(ctx);
    }
}

impl Handler<GetStatus> for UpstreamActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}
