//! One upstream server: its pure OAuth state machine (`state`, with the failure types of
//! `failure`), the actor that drives it (`actor`, performing the `effects`, answering
//! `messages`, publishing a `snapshot` and a `status`), and the flows it runs (`flows`).

pub mod actor;
mod effects;
pub mod failure;
pub mod flows;
pub mod messages;
pub mod snapshot;
pub mod state;
pub mod status;
