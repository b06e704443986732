//! Persistence: the SQLite token store, the registry actor that owns it, and the cross-process
//! flow lock.

pub mod cipher;
pub mod db;
pub mod keys;
pub mod lock;
mod open;
pub mod perms;
pub mod registry;
#[cfg(test)]
mod sealing_tests;

pub use db::{
    FlowRetention, StoreError, StoredClient, StoredDpopKey, StoredToken, TokenStatusRow, TokenStore,
};
pub use keys::{KeySpec, Sealing};
pub use registry::TokenRegistry;
