//! Store changes on PostgreSQL, announced at once: a dedicated connection (never a pooled one:
//! a LISTEN belongs to its session) LISTENs on `mcpproxy_oauth_changes`, which the schema's
//! triggers notify at commit when a token is written or deleted or a lease released. The
//! changes go to every subscriber of this instance (a broadcast). The fallback is a bounded
//! poll: while the connection is down, a change of unknown kind is announced every poll
//! interval (readers re-read) while it reconnects, and once more when it is back (whatever
//! happened meanwhile was not heard). A heartbeat finds a connection that died silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::super::changes::StoreChange;

/// The channel the schema's triggers notify.
pub const CHANNEL: &str = "mcpproxy_oauth_changes";

/// How many changes a subscriber may lag before it is told to re-read everything.
const BACKLOG: usize = 1024;

/// The listener of one store: its subscribers' channel and whether it is connected. The task
/// stops when the last clone of the store is dropped.
pub struct Listener {
    changes: broadcast::Sender<StoreChange>,
    connected: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts listening on the current tokio runtime.
    pub(super) fn start(config: tokio_postgres::Config, poll: Duration, target: String) -> Self {
        let (changes, _) = broadcast::channel(BACKLOG);
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(listen(
            config,
            poll,
            target,
            changes.clone(),
            connected.clone(),
        ));
        Listener {
            changes,
            connected,
            task,
        }
    }

    /// The changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    /// Whether the listening connection is up (changes are heard at once) or the fallback
    /// poll is running.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// A notification's payload as a change: `token:<server_key>` or `lease:<server_key>`.
fn change_of(payload: &str) -> StoreChange {
    match payload.split_once(':') {
        Some(("token", key)) => StoreChange::Token(key.to_string()),
        Some(("lease", key)) => StoreChange::Lease(key.to_string()),
        _ => StoreChange::Any,
    }
}

async fn listen(
    config: tokio_postgres::Config,
    poll: Duration,
    target: String,
    changes: broadcast::Sender<StoreChange>,
    connected: Arc<AtomicBool>,
) {
    let poll = poll.max(Duration::from_millis(10));
    let mut was_heard = true;
    loop {
        let reason = listen_once(&config, poll, &changes, &connected).await;
        let was_connected = connected.swap(false, Ordering::Relaxed);
        if was_connected || was_heard {
            tracing::warn!(
                store = %target, reason = %reason, poll_ms = poll.as_millis() as u64,
                "store changes are not heard at once; readers are told to re-read every poll \
                 interval until the listener reconnects"
            );
        }
        was_heard = false;
        // Readers re-read: something may have changed while nobody listened.
        let _ = changes.send(StoreChange::Any);
        tokio::time::sleep(poll).await;
    }
}

/// Connects, LISTENs and forwards notifications until the connection fails; returns why.
async fn listen_once(
    config: &tokio_postgres::Config,
    poll: Duration,
    changes: &broadcast::Sender<StoreChange>,
    connected: &AtomicBool,
) -> String {
    let connect_deadline = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(3));
    let (client, mut connection) =
        match tokio::time::timeout(connect_deadline, config.connect(NoTls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return crate::telemetry::secrets::scrub(&e.to_string()).into_owned(),
            Err(_) => return "no connection within the connect timeout".into(),
        };
    // The connection is driven here: notifications arrive as its messages.
    let forward = async {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = changes.send(change_of(n.payload()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "the connection closed".to_string(),
            }
        }
    };
    tokio::pin!(forward);
    let listening = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| e.to_string())?;
        connected.store(true, Ordering::Relaxed);
        tracing::debug!("listening for store changes");
        // Anything written while this connection was being made was not heard.
        let _ = changes.send(StoreChange::Any);
        // The heartbeat: a connection that died without a word is found within two beats.
        let beat = (poll * 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            tokio::time::sleep(beat).await;
            match tokio::time::timeout(beat, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err::<(), String>(e.to_string()),
                Err(_) => return Err("the heartbeat was not answered".to_string()),
            }
        }
    };
    tokio::select! {
        reason = &mut forward => reason,
        result = listening => result.err().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_change_and_anything_else_means_re_read() {
        assert_eq!(change_of("token:srv_1"), StoreChange::Token("srv_1".into()));
        assert_eq!(change_of("lease:a:b"), StoreChange::Lease("a:b".into()));
        assert_eq!(change_of("other"), StoreChange::Any);
    }
}
