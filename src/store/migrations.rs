//! The schema: the migrations in order (`PRAGMA user_version` counts those applied), the check
//! that a file holds our schema at a version this build knows before anything writes to it,
//! and applying what is pending.

use std::path::Path;

use rusqlite::Connection;

use super::error::StoreError;
use super::open::{OpenFailure, short_cause};

/// Migrations, applied in order; `PRAGMA user_version` counts those applied.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    (
        "0002_portable_status_view",
        include_str!("../../migrations/0002_portable_status_view.sql"),
    ),
    (
        "0003_abandoned_flows",
        include_str!("../../migrations/0003_abandoned_flows.sql"),
    ),
    ("0004_meta", include_str!("../../migrations/0004_meta.sql")),
    (
        "0005_flow_history_index",
        include_str!("../../migrations/0005_flow_history_index.sql"),
    ),
    (
        "0006_dpop_key",
        include_str!("../../migrations/0006_dpop_key.sql"),
    ),
    (
        "0007_clients_by_issuer",
        include_str!("../../migrations/0007_clients_by_issuer.sql"),
    ),
    (
        "0008_leases",
        include_str!("../../migrations/0008_leases.sql"),
    ),
];

/// The schema version this build migrates to.
fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Tables added by later migrations: ours, but not required of an older version.
const LATER_OBJECTS: &[&str] = &["oauth_meta", "oauth_leases"];

/// The tables and views of our schema; a file with none of them and other tables is foreign.
const OUR_OBJECTS: &[&str] = &[
    "oauth_clients",
    "oauth_flows",
    "oauth_token_status",
    "oauth_tokens",
];

/// Refuses a file that is not ours (or not all ours) before anything writes to it: a
/// foreign SQLite database, our tables under `user_version` 0 (a migration that ran
/// outside this code, or a reset version), a version newer than this build.
fn check_schema(conn: &Connection, path: &Path, version: i64) -> Result<(), StoreError> {
    let known = known_version();
    if version > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    let mut statement = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE \
         'sqlite_%' ORDER BY name",
    )?;
    let names: Vec<String> = statement
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let ours =
        |n: &String| OUR_OBJECTS.contains(&n.as_str()) || LATER_OBJECTS.contains(&n.as_str());
    let foreign: Vec<&String> = names.iter().filter(|n| !ours(n)).collect();
    let list = |v: &[&String]| {
        let shown: Vec<&str> = v.iter().take(5).map(|s| s.as_str()).collect();
        let more = v.len().saturating_sub(5);
        format!(
            "{}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    if version == 0 {
        return match (names.iter().any(ours), foreign.is_empty()) {
            (_, false) => Err(StoreError::Foreign {
                path: path.to_path_buf(),
                detail: format!("it has other tables: {}", list(&foreign)),
            }),
            (true, true) => Err(StoreError::HalfMigrated {
                path: path.to_path_buf(),
            }),
            (false, true) => Ok(()),
        };
    }
    let missing: Vec<&str> = OUR_OBJECTS
        .iter()
        .copied()
        .filter(|o| !names.iter().any(|n| n == o))
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            detail: format!("schema version {version}, but no {}", missing.join(", ")),
        });
    }
    Ok(())
}

/// Returns the schema version, once the file is known to be ours. Version and tables are read
/// in one read transaction, so a process migrating the same new file at this moment is seen
/// before or after, never halfway (which would look like our tables under version 0).
pub(super) fn checked_version(conn: &mut Connection, path: &Path) -> Result<i64, StoreError> {
    let tx = conn.transaction()?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    check_schema(&tx, path, version)?;
    tx.commit()?;
    Ok(version)
}

/// Applies pending migrations, one transaction each. The version is read inside the
/// write transaction, so processes opening the same new file at once migrate it once;
/// an up-to-date file needs no write at all (so a held write lock does not stop a start).
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = known_version();
    let version = checked_version(conn, path)?;
    if version == known {
        return Ok(());
    }
    let failed = |step: &'static str| {
        move |e| StoreError::Unusable {
            reason: OpenFailure::classify(step, e).explain(path),
            path: path.to_path_buf(),
        }
    };
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed("migrate"))?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > known {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        let Some((name, sql)) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql).map_err(|e| StoreError::Unusable {
            path: path.to_path_buf(),
            reason: format!(
                "migration {name} failed ({}); nothing was changed",
                short_cause(&e)
            ),
        })?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit().map_err(failed("migrate"))?;
    }
}
