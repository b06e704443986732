//! Persistence: the SQLite token store, the registry actor that owns it, and the cross-process
//! flow lock.

pub mod db;
pub mod lock;
mod open;
pub mod perms;
pub mod registry;

pub use db::{StoreError, StoredClient, StoredToken, TokenStatusRow, TokenStore};
pub use registry::TokenRegistry;
