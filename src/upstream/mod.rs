//! One upstream server: its pure OAuth state machine (`state`, with the failure types of
//! `failure`); the actor that drives it (`actor`), performing the `effects`, answering the
//! `messages` (`handlers`), publishing a `snapshot` and telling observers its `status`
//! (`observe`); and the flows it runs (`flows`).

pub mod actor;
mod effects;
pub mod failure;
pub mod flows;
mod handlers;
pub mod messages;
mod observe;
pub mod snapshot;
pub mod state;
pub mod status;
