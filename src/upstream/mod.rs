//! One upstream server: its pure OAuth state machine and the actor that drives it.

pub mod actor;
pub mod failure;
pub mod flows;
pub mod state;
