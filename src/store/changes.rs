//! "The store changed": one stream for both backends, so a watcher re-reads what another
//! process or instance wrote. On SQLite it is the `PRAGMA data_version` poll (it moves only
//! when another connection commits); on PostgreSQL the LISTEN/NOTIFY listener's changes, which
//! name the server, with its bounded poll as fallback.

use std::time::Duration;

use tokio::sync::broadcast;

use super::registry::TokenRegistry;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// The token of this server was written or deleted.
    Token(String),
    /// The lease of this server was released.
    Lease(String),
    /// Something may have changed (a poll saw a commit, the listener reconnected or a reader
    /// lagged): re-read what matters.
    Any,
}

/// The changes of one store, from when it was made.
pub struct StoreChanges {
    source: Source,
}

enum Source {
    /// SQLite: `data_version` every `every`; the last value seen.
    Poll {
        registry: TokenRegistry,
        every: Duration,
        seen: Option<i64>,
    },
    /// PostgreSQL: the listener's broadcast.
    Listen {
        changes: broadcast::Receiver<StoreChange>,
        poll: Duration,
    },
}

impl StoreChanges {
    /// Polls a SQLite store's `data_version` every `every` (the value now is the baseline).
    pub(super) async fn polling(registry: TokenRegistry, every: Duration) -> Self {
        let seen = registry.call(|s| s.data_version()).await.ok();
        StoreChanges {
            source: Source::Poll {
                registry,
                every: every.max(Duration::from_millis(10)),
                seen,
            },
        }
    }

    /// A PostgreSQL listener's changes (`poll`: how long to wait before announcing `Any` when
    /// the listener has gone).
    pub(super) fn listening(changes: broadcast::Receiver<StoreChange>, poll: Duration) -> Self {
        StoreChanges {
            source: Source::Listen { changes, poll },
        }
    }

    /// The next change. Never fails: a store that cannot be read now is looked at again at
    /// the next poll; a listener that lagged or stopped says `Any`.
    pub async fn next(&mut self) -> StoreChange {
        match &mut self.source {
            Source::Poll {
                registry,
                every,
                seen,
            } => loop {
                tokio::time::sleep(*every).await;
                let Ok(version) = registry.call(|s| s.data_version()).await else {
                    continue;
                };
                let before = seen.replace(version);
                if before.is_some_and(|b| b != version) {
                    return StoreChange::Any;
                }
            },
            Source::Listen { changes, poll } => match changes.recv().await {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(_)) => StoreChange::Any,
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(*poll).await;
                    StoreChange::Any
                }
            },
        }
    }
}
