//! The store's old paths (`store::db::...`), kept while branches written against them merge.
//! New code imports from [`crate::store`], and the clock from [`crate::clock`].

pub use super::error::StoreError;
pub use super::flow_history::RECENT_FLOWS_SQL;
pub use super::group_commit::GroupJob;
pub use super::model::{
    FlowRetention, FlowRow, FlowStart, StoredClient, StoredDpopKey, StoredToken, TokenStatusRow,
};
pub use super::sealing::SECRET_COLUMNS;
pub use super::token_store::TokenStore;
pub use crate::clock::now_ms;
