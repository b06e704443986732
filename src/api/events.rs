//! Live events for `GET /api/v1/events` (Server-Sent Events). One pump task reads the
//! supervisor's phase changes, the `FlowLogger`'s flow notices and new authorization links,
//! feeds the metrics, and publishes `ApiEvent`s to the `EventHub`. The hub gives each
//! subscriber a bounded queue and never waits: a subscriber whose queue is full is dropped
//! (its stream ends; it may reconnect), so a slow reader cannot slow anything upstream. The
//! supervisor's own channels are broadcasts that drop old items for a lagging reader too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::metrics::Metrics;
use super::servers;
use super::view::rfc3339;
use crate::auth_links::AuthLinks;
use crate::clock::now_ms;
use crate::supervisor::SupervisorHandle;
use crate::telemetry::flow_logger::{FlowEnd, FlowKind, FlowNotice, FlowStep};
use crate::upstream::actor::StateChange;
use crate::upstream::state::Phase;

/// One event: its SSE `event:` name and its JSON `data:`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApiEvent {
    pub event: &'static str,
    pub data: Value,
}

impl ApiEvent {
    /// The SSE frame, known secrets scrubbed (authorization links excepted). JSON keeps the
    /// frame on one `data:` line: a server's newline is escaped by construction.
    pub fn frame(&self) -> String {
        let mut data = self.data.clone();
        crate::telemetry::secrets::scrub_json(&mut data, super::error::UNSCRUBBED);
        format!("event: {}\ndata: {}\n\n", self.event, data)
    }
}

/// Fan-out to subscribers, each with a bounded queue.
pub struct EventHub {
    subscribers: Mutex<Vec<mpsc::Sender<Arc<ApiEvent>>>>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl EventHub {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        EventHub {
            subscribers: Mutex::new(Vec::new()),
            capacity: capacity.max(1),
            metrics,
        }
    }

    pub fn subscribe(&self) -> mpsc::Receiver<Arc<ApiEvent>> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.push(tx);
        self.metrics.sse_subscribers.set(subscribers.len() as i64);
        rx
    }

    /// Hands `event` to every subscriber without waiting; drops those that are full or gone.
    /// Dropped subscribers make one log line per publish, written after the lock is let go:
    /// however many idle subscribers there are, they cannot flood the log.
    pub fn publish(&self, event: ApiEvent) {
        let event = Arc::new(event);
        let mut dropped = 0u64;
        {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subscribers.retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            self.metrics.sse_subscribers.set(subscribers.len() as i64);
        }
        if dropped > 0 {
            self.metrics.sse_dropped.inc_by(dropped);
            tracing::warn!(
                dropped,
                queued = self.capacity,
                "event subscribers read too slowly; dropping them"
            );
        }
    }
}

/// The event a flow notice announces, if any.
pub fn notice_event(n: &FlowNotice) -> Option<ApiEvent> {
    let base = |extra: Value| {
        let mut data = json!({
            "server": n.server,
            "correlation_id": n.correlation_id,
            "kind": n.flow_kind,
            "at": rfc3339(now_ms()),
        });
        if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        data
    };
    let detail = |key: &str| n.entry.details.get(key).cloned().unwrap_or(Value::Null);
    let event = match (n.entry.step, n.flow_kind) {
        (FlowStep::Started, _) => "oauth.flow_started",
        (FlowStep::TokenObtained | FlowStep::Adopted, FlowKind::Refresh) => "oauth.token_refreshed",
        (FlowStep::TokenObtained | FlowStep::Adopted, FlowKind::Login) => "oauth.login_completed",
        (FlowStep::Failed, FlowKind::Refresh) => "oauth.refresh_failed",
        (FlowStep::Failed, FlowKind::Login) => "oauth.login_failed",
        (FlowStep::Registered | FlowStep::ResourceMoved | FlowStep::Decision, _) => return None,
    };
    let extra = match n.entry.step.end() {
        Some(FlowEnd::Failure) => json!({
            "endpoint": detail("endpoint"),
            "status": detail("status"),
            "error": detail("error"),
            "class": detail("class"),
            "duration_ms": n.entry.elapsed_ms,
        }),
        Some(end) => json!({
            "outcome": end.as_str(),
            "token_expires_at": detail("expires_at").as_i64().map(rfc3339),
            "duration_ms": n.entry.elapsed_ms,
        }),
        None => json!({}),
    };
    Some(ApiEvent {
        event,
        data: base(extra),
    })
}

/// Publishes one server's current view as `servers.changed`.
async fn publish_view(handle: &SupervisorHandle, links: &AuthLinks, hub: &EventHub, name: &str) {
    match servers::view(handle, links, name).await {
        Ok(Some(view)) => hub.publish(ApiEvent {
            event: "servers.changed",
            data: json!({"server": view.name, "view": view}),
        }),
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "no view to publish"),
    }
}

async fn on_change(handle: &SupervisorHandle, links: &AuthLinks, hub: &EventHub, c: StateChange) {
    if matches!(c.phase, Phase::NeedsLogin { .. }) {
        hub.publish(ApiEvent {
            event: "oauth.login_required",
            data: json!({"server": c.server, "reason": c.detail, "at": rfc3339(c.at)}),
        });
    }
    if c.phase != Phase::Authorizing {
        // A login that ended, one way or the other, leaves no link to open.
        links.clear(&c.server);
    }
    publish_view(handle, links, hub, &c.server).await;
}

/// The pump's inputs, subscribed before the API answers anything, so no early flow is missed.
pub struct Sources {
    pub changes: broadcast::Receiver<StateChange>,
    pub notices: broadcast::Receiver<FlowNotice>,
    pub links: tokio::sync::watch::Receiver<u64>,
}

impl Sources {
    pub async fn subscribe(
        handle: &SupervisorHandle,
        links: &AuthLinks,
    ) -> Result<Self, crate::supervisor::SupervisorError> {
        Ok(Sources {
            changes: handle.subscribe(),
            notices: handle.flow_notices().await?,
            links: links.watch(),
        })
    }
}

/// Runs until the supervisor stops.
pub async fn pump(
    handle: SupervisorHandle,
    links: AuthLinks,
    hub: Arc<EventHub>,
    metrics: Arc<Metrics>,
    sources: Sources,
) {
    let Sources {
        mut changes,
        mut notices,
        links: mut link_changes,
    } = sources;
    let mut links_seen: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(c) => on_change(&handle, &links, &hub, c).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for name in handle.servers().to_vec() {
                        publish_view(&handle, &links, &hub, &name).await;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            notice = notices.recv() => match notice {
                Ok(n) => {
                    metrics.observe_notice(&n);
                    if let Some(event) = notice_event(&n) {
                        hub.publish(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "flow notices were missed; counters may be short");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = link_changes.changed() => {
                if changed.is_err() {
                    return;
                }
                for name in handle.servers().to_vec() {
                    let Some(link) = links.get(&name) else { continue };
                    if links_seen.get(&name) == Some(&link.at) {
                        continue;
                    }
                    links_seen.insert(name.clone(), link.at);
                    metrics.observe_browser(&name, link.browser_opened);
                    if !link.browser_opened {
                        hub.publish(ApiEvent {
                            event: "oauth.login_required",
                            data: json!({
                                "server": name,
                                "reason": "the browser could not be opened: open the link",
                                "auth_url": link.url.as_str(),
                                "browser_error": link.browser_error,
                                "at": rfc3339(link.at),
                            }),
                        });
                    }
                    publish_view(&handle, &links, &hub, &name).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> ApiEvent {
        ApiEvent {
            event: "servers.changed",
            data: json!({ "i": i }),
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_and_the_others_get_everything() {
        let metrics = Arc::new(Metrics::new());
        let hub = EventHub::new(4, metrics.clone());
        let mut reader = hub.subscribe();
        let _stalled = hub.subscribe();
        assert_eq!(metrics.sse_subscribers.get(), 2);
        let started = std::time::Instant::now();
        let mut received = Vec::new();
        for i in 0..100 {
            hub.publish(event(i));
            // The reader keeps up; the stalled subscriber never reads.
            received.push(reader.recv().await.expect("the reader stays subscribed"));
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "publishing never waits for a subscriber"
        );
        assert_eq!(received.len(), 100);
        assert_eq!(received[99].data["i"], 99);
        assert_eq!(
            metrics.sse_dropped.get(),
            1,
            "the stalled one was dropped once"
        );
        assert_eq!(metrics.sse_subscribers.get(), 1);
    }

    #[test]
    fn frames_are_sse() {
        assert_eq!(
            event(1).frame(),
            "event: servers.changed\ndata: {\"i\":1}\n\n"
        );
    }
}
