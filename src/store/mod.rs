//! Persistence: the SQLite token store, the registry actor that owns it, and the cross-process
//! flow lock. One room a concern, from the bottom up:
//!
//! - `model`: the rows (token, DPoP key, client, status, flow) and the flow retention;
//!   `error`: `StoreError`;
//! - `cipher` (one value sealed), `keys` (where the key comes from), `perms` (file modes),
//!   `lock` (the per-server flow lock), `holder` (who has the database open: shared, or
//!   alone for a rekey), `preflight` (the checks before any change), `open` (open failures, the
//!   file-level steps);
//! - `migrations`: the schema, its check and its migrations; `sealing`: the secret columns;
//! - `token_store`: `TokenStore`, the one connection, and the open sequence;
//! - its queries: `group_commit` (writes that commit together), `tokens`, `clients`,
//!   `flow_history` (flows, retention, pruning);
//! - `registry`: the `TokenRegistry` actor that owns the `TokenStore`.

pub mod cipher;
mod clients;
pub mod db;
mod error;
mod flow_history;
mod group_commit;
pub mod holder;
pub mod keys;
pub mod lock;
mod migrations;
mod model;
mod open;
pub mod perms;
mod preflight;
pub mod registry;
mod sealing;
#[cfg(test)]
mod tests;
mod token_store;
mod tokens;

pub use error::StoreError;
pub use flow_history::RECENT_FLOWS_SQL;
pub use group_commit::GroupJob;
pub use keys::{KeySpec, Sealing};
pub use model::{
    FlowRetention, FlowRow, FlowStart, StoredClient, StoredDpopKey, StoredToken, TokenStatusRow,
};
pub use registry::TokenRegistry;
pub use sealing::SECRET_COLUMNS;
pub use token_store::TokenStore;
