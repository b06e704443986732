//! Reaching the database, bounded everywhere: the pool (deadpool) with bounded waits for a
//! connection, for a new connection and for its recycling; the server-side statement, lock and
//! idle-in-transaction timeouts set on every connection; a client-side deadline around every
//! store operation (it also covers a host that vanished, where no server-side timeout can
//! fire); and the errors, classified into "unreachable" (retry later, keep what is in memory)
//! and "refused" (the database answered no), each naming the store without its password.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::super::error::StoreError;
use super::super::options::StoreOptions;
use crate::telemetry::secrets;

/// The connection settings every connection of the store gets (pooled, and the listener's):
/// the timeouts above, keepalives, and an application name that shows in pg_stat_activity.
pub(super) fn connection_config(
    base: &tokio_postgres::Config,
    options: &StoreOptions,
) -> tokio_postgres::Config {
    let mut config = base.clone();
    let ms = |d: Duration| d.as_millis().max(1);
    let server_side = format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        ms(options.statement_timeout),
        ms(options.statement_timeout),
        ms(options.statement_timeout) * 2
    );
    let options_text = match base.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {server_side}"),
        _ => server_side,
    };
    config
        .options(options_text)
        .connect_timeout(options.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(options.operation_timeout);
    if base.get_application_name().is_none() {
        config.application_name("mcpproxy-oauth");
    }
    config
}

/// The pool: bounded waits for a free connection, for a new one, and for a recycle (a cheap
/// check that the connection is open; a broken one is replaced).
pub(super) fn pool(config: tokio_postgres::Config, options: &StoreOptions) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.operation_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| e.to_string())
}

/// Whether an error from the server means the server is going away or not reachable.
fn unreachable_state(code: &SqlState) -> bool {
    let code = code.code();
    code.starts_with("08") // connection exceptions
        || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
        || code == "53300" // too many connections
}

/// A database error as the store reports it: the store (no password), what was being done,
/// and the cause, scrubbed of known secrets; classified unreachable or refused.
pub(super) fn db_failure(target: &str, what: &str, e: &tokio_postgres::Error) -> StoreError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    };
    let reason = secrets::scrub(&reason).into_owned();
    let unreachable = match e.as_db_error() {
        Some(db) => unreachable_state(db.code()),
        None => true,
    };
    if unreachable {
        StoreError::Unreachable {
            target: target.to_string(),
            reason: format!("{what}: {reason}"),
        }
    } else {
        StoreError::Refused {
            target: target.to_string(),
            what: what.to_string(),
            reason,
        }
    }
}

/// A pool error as the store reports it.
pub(super) fn pool_failure(target: &str, e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_failure(target, "connecting", &e),
        PoolError::Timeout(kind) => StoreError::Unreachable {
            target: target.to_string(),
            reason: match kind {
                TimeoutType::Wait => "no pooled connection was free within the deadline",
                TimeoutType::Create => "no new connection within the connect deadline",
                TimeoutType::Recycle => "a pooled connection did not pass its check in time",
            }
            .to_string(),
        },
        other => StoreError::Unreachable {
            target: target.to_string(),
            reason: secrets::scrub(&other.to_string()).into_owned(),
        },
    }
}

/// Runs one store operation within `deadline`: past it, the operation is dropped (its
/// connection with it) and the store is reported unreachable.
pub(super) async fn bounded<R>(
    target: &str,
    what: &str,
    deadline: Duration,
    operation: impl Future<Output = Result<R, StoreError>>,
) -> Result<R, StoreError> {
    match tokio::time::timeout(deadline, operation).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unreachable {
            target: target.to_string(),
            reason: format!("{what}: no answer within {} ms", deadline.as_millis()),
        }),
    }
}
