//! What a store test starts from: a real PostgreSQL with a database of its own, and a fresh
//! folder for the key file and anything else the test writes.

use std::path::PathBuf;

use mcpproxy_oauth::store::{FlowEnd, StoredToken};

use super::Postgres;

/// A PostgreSQL server with the database `name`, and a fresh folder named after `name`:
/// (server, database URL, folder). `None` where no server can run (`Postgres::start` says why).
pub async fn postgres_database(name: &str) -> Option<(Postgres, String, PathBuf)> {
    let server = Postgres::start(name)?;
    let url = server.create_database(name).await;
    Some((server, url, super::temp_dir(name)))
}

/// The end of a flow that obtained `token` alone: no client identity, no write guard.
pub fn saved(token: &StoredToken) -> FlowEnd<'_> {
    FlowEnd::Saved {
        token,
        client: None,
        guard: None,
    }
}
