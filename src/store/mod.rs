//! Persistence: the token store, SQLite (the registry actor over `tokens.db`, with the
//! cross-process flow lock) or PostgreSQL (instances on several hosts), behind one `Store`.
//! One room a concern, from the bottom up:
//!
//! - `model`: the rows (token, DPoP key, client, status, flow) and the flow retention;
//!   `secret`: the type a row holds a secret in;
//!   `error`: `StoreError`; `lease`: the claim's vocabulary (lease, fence, ambiguous mark, a
//!   refresh token's id); `choice`: which store (`--store`); `options`: how it runs;
//!   `sql`: the statements both backends run word for word;
//! - `cipher` (one value sealed), `keys` (where the key comes from), `perms` (file modes),
//!   `lock` (the per-server flow lock), `holder` (who has the database open: shared, or
//!   alone for a rekey), `preflight` (the checks before any change), `open` (open failures, the
//!   file-level steps);
//! - `migrations`: the schema, its check and its migrations; `sealing`: the secret columns;
//! - `token_store`: `TokenStore`, the one SQLite connection, and the open sequence;
//! - its queries: `group_commit` (writes that commit together), `tokens`, `clients`,
//!   `flow_history` (flows, retention, pruning), `leases` (the claim on SQLite);
//! - `registry`: the `TokenRegistry` actor that owns the `TokenStore`;
//! - `postgres`: the PostgreSQL backend (its own rooms inside);
//! - `backend`: `Store`, the one interface over both; `claim`: the flow claim (`Claim`);
//!   `changes`: one stream of store changes for both;
//! - `ballast`: the reserve of free space that a full disk releases for the saves.

mod backend;
mod ballast;
mod changes;
mod choice;
pub mod cipher;
mod claim;
mod clients;
pub mod db;
mod error;
mod flow_history;
mod group_commit;
pub mod holder;
pub mod keys;
mod lease;
mod leases;
pub mod lock;
mod migrations;
mod model;
mod open;
mod options;
pub mod perms;
pub mod postgres;
mod preflight;
pub mod registry;
mod sealing;
mod secret;
mod sql;
#[cfg(test)]
mod tests;
mod token_store;
mod tokens;

pub use backend::{SqliteStore, Store, StoreHealth};
pub use ballast::{BALLAST_BYTES, BALLAST_FILE};
pub use changes::{StoreChange, StoreChanges};
pub use choice::{PgUrl, STORE_ENV, StoreChoice, StoreChoiceError};
pub use claim::{Busy, Claim};
pub use error::StoreError;
pub use flow_history::RECENT_FLOWS_SQL;
pub use group_commit::GroupJob;
pub use keys::{KeySpec, Sealing};
pub use lease::{
    Ambiguous, ClaimRead, ClaimRequest, FlowEnd, LEASE_MARGIN, LeaseRef, LeaseRow, RefreshTokenId,
    WriteGuard, Written, lease_for,
};
pub use model::{
    FlowRetention, FlowRow, FlowStart, StoredClient, StoredDpopKey, StoredToken, TokenStatusRow,
};
pub use options::StoreOptions;
pub use postgres::PgStore;
pub use registry::TokenRegistry;
pub use sealing::SECRET_COLUMNS;
pub use secret::{Secret, fingerprint};
pub use token_store::TokenStore;
