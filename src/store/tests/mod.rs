//! The store's unit tests, a file per room, on real SQLite files in temporary folders.

mod clients;
mod flow_history;
mod migrations;
mod open;
mod sealing;
mod support;
mod tokens;
