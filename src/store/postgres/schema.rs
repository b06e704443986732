//! The PostgreSQL schema: its migrations in order (`migrations/postgres/`), the version counted
//! in `oauth_meta` ('schema_version'), and applying what is pending in one transaction under a
//! transaction-level advisory lock (released at commit or rollback, so it never outlives the
//! transaction on a pooled connection and works behind PgBouncer's transaction mode): instances
//! starting together migrate once, the others wait and find the schema current.

use std::path::Path;

use tokio_postgres::Client;

use super::super::error::StoreError;
use super::connect::db_failure;

/// Migrations, applied in order; `oauth_meta.schema_version` counts those applied.
pub(in crate::store) const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_init",
    include_str!("../../../migrations/postgres/0001_init.sql"),
)];

/// The schema version this build migrates to.
pub const KNOWN_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock key of migrations ("mcpoauth" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d63_706f_6175_7468;

/// Applies pending migrations, or refuses a database whose schema is not one this build
/// knows: newer than it, or our tables without a version (changed outside mcpproxy-oauth).
pub(super) async fn migrate(
    client: &mut Client,
    target: &str,
    place: &Path,
) -> Result<(), StoreError> {
    let fail = |what: &'static str| move |e: tokio_postgres::Error| db_failure(target, what, &e);
    let tx = client.transaction().await.map_err(fail("migrating"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail("waiting for another instance's migration"))?;
    let found = tx
        .query_one(
            "SELECT to_regclass('oauth_meta') IS NOT NULL, to_regclass('oauth_tokens') IS NOT NULL",
            &[],
        )
        .await
        .map_err(fail("reading the schema"))?;
    let (has_meta, has_tokens): (bool, bool) = (found.get(0), found.get(1));
    let version: i64 = if has_meta {
        let row = tx
            .query_opt(
                "SELECT value FROM oauth_meta WHERE name = 'schema_version'",
                &[],
            )
            .await
            .map_err(fail("reading the schema version"))?;
        match row.map(|r| r.get::<_, String>(0)) {
            Some(text) => text.parse().map_err(|_| StoreError::Foreign {
                path: place.to_path_buf(),
                detail: "its oauth_meta.schema_version is not a number".into(),
            })?,
            None => 0,
        }
    } else {
        0
    };
    if version == 0 && (has_meta || has_tokens) {
        return Err(StoreError::HalfMigrated {
            path: place.to_path_buf(),
        });
    }
    if version > KNOWN_VERSION {
        return Err(StoreError::TooNew {
            path: place.to_path_buf(),
            found: version,
            known: KNOWN_VERSION,
        });
    }
    for (name, sql) in &MIGRATIONS[version as usize..] {
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Unusable {
                path: place.to_path_buf(),
                reason: format!(
                    "migration postgres/{name} failed ({}); nothing was changed",
                    db_failure(target, "migrating", &e)
                ),
            })?;
    }
    if version < KNOWN_VERSION {
        tx.execute(
            "INSERT INTO oauth_meta (name, value) VALUES ('schema_version', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&KNOWN_VERSION.to_string()],
        )
        .await
        .map_err(fail("recording the schema version"))?;
        tracing::info!(
            target,
            from = version,
            to = KNOWN_VERSION,
            "the PostgreSQL token store was migrated"
        );
    }
    tx.commit().await.map_err(fail("committing the migration"))
}
