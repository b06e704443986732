//! The store's unit tests, a file per room, on real SQLite files in temporary folders.

mod clients;
mod flow_history;
mod migrations;
mod open;
mod sealing;
/// Shared with the other rooms' own tests (`holder`, `perms`).
pub(super) mod support;
mod tokens;
