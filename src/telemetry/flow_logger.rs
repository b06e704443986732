//! The `FlowLogger` actor: every event of a flow (started, lock taken, token obtained, failed,
//! the decision taken) goes through it. It adds the flow's sequence number and elapsed time,
//! emits the event through `tracing` (target `mcpproxy_oauth::flow`, inside the flow's span
//! fields), and keeps the last events of recent flows in a bounded buffer, so the daemon can
//! show a flow's trace later. Observers (the operator API's metrics and live events) get
//! every event as a `FlowNotice` through a bounded broadcast channel: a slow observer loses
//! old notices, it never slows a flow.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Instant;

use actix::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

/// Flows whose traces are kept, and events kept per flow.
const FLOWS_KEPT: usize = 256;
const EVENTS_PER_FLOW: usize = 64;
/// Notices an observer may fall behind by before it loses the oldest.
const NOTICES_BUFFERED: usize = 1024;

/// What kind of flow: the daemon runs refreshes and logins (browser or device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    Refresh,
    Login,
}

impl FlowKind {
    pub const ALL: [FlowKind; 2] = [FlowKind::Refresh, FlowKind::Login];

    pub fn as_str(self) -> &'static str {
        match self {
            FlowKind::Refresh => "refresh",
            FlowKind::Login => "login",
        }
    }

    /// A kind as the store records it (`oauth_flows.kind`); `None` for text this build does
    /// not know.
    pub fn parse(text: &str) -> Option<FlowKind> {
        FlowKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for FlowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step of a flow's trace, as its events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum FlowStep {
    #[serde(rename = "started")]
    Started,
    /// Another process's write ended the flow: a newer token in the store, or its logout.
    #[serde(rename = "adopted")]
    Adopted,
    /// A new client was registered.
    #[serde(rename = "registered")]
    Registered,
    /// The resource names another authorization server now (SEP-2352).
    #[serde(rename = "resource moved")]
    ResourceMoved,
    #[serde(rename = "token obtained")]
    TokenObtained,
    #[serde(rename = "failed")]
    Failed,
    /// What the state machine decided on the flow's outcome (its last event).
    #[serde(rename = "decision")]
    Decision,
}

/// How a flow ended, for metrics and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEnd {
    Success,
    Adopted,
    Failure,
}

impl FlowEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowEnd::Success => "success",
            FlowEnd::Adopted => "adopted",
            FlowEnd::Failure => "failure",
        }
    }
}

impl FlowStep {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStep::Started => "started",
            FlowStep::Adopted => "adopted",
            FlowStep::Registered => "registered",
            FlowStep::ResourceMoved => "resource moved",
            FlowStep::TokenObtained => "token obtained",
            FlowStep::Failed => "failed",
            FlowStep::Decision => "decision",
        }
    }

    /// How the flow ends at this step, if it ends there.
    pub fn end(self) -> Option<FlowEnd> {
        match self {
            FlowStep::TokenObtained => Some(FlowEnd::Success),
            FlowStep::Adopted => Some(FlowEnd::Adopted),
            FlowStep::Failed => Some(FlowEnd::Failure),
            FlowStep::Started
            | FlowStep::Registered
            | FlowStep::ResourceMoved
            | FlowStep::Decision => None,
        }
    }
}

impl fmt::Display for FlowStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step compares with its name, for readers of traces that still hold text.
impl PartialEq<&str> for FlowStep {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One event of one flow, as sent by the flow.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct FlowEvent {
    pub correlation_id: String,
    pub server: String,
    pub flow_kind: FlowKind,
    /// What happened.
    pub step: FlowStep,
    /// Already redacted details (no secrets are ever put here).
    pub details: Map<String, Value>,
    pub at: Instant,
}

impl FlowEvent {
    pub fn new(
        correlation_id: &str,
        server: &str,
        flow_kind: FlowKind,
        step: FlowStep,
        details: Value,
    ) -> Self {
        let details = match details {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_string(), other)]),
        };
        FlowEvent {
            correlation_id: correlation_id.into(),
            server: server.into(),
            flow_kind,
            step,
            details,
            at: Instant::now(),
        }
    }
}

/// An event as kept in the trace buffer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceEntry {
    pub seq: u64,
    pub elapsed_ms: u64,
    pub step: FlowStep,
    pub details: Map<String, Value>,
}

#[derive(Message)]
#[rtype(result = "Vec<TraceEntry>")]
pub struct GetTrace(pub String);

/// One flow event as observers see it: the trace entry with the flow it belongs to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlowNotice {
    pub correlation_id: String,
    pub server: String,
    pub flow_kind: FlowKind,
    #[serde(flatten)]
    pub entry: TraceEntry,
}

/// Subscribes to every flow event from now on.
#[derive(Message)]
#[rtype(result = "broadcast::Receiver<FlowNotice>")]
pub struct SubscribeNotices;

struct FlowTrace {
    started: Instant,
    next_seq: u64,
    events: VecDeque<TraceEntry>,
}

pub struct FlowLogger {
    flows: HashMap<String, FlowTrace>,
    /// Oldest first, for eviction.
    order: VecDeque<String>,
    notices: broadcast::Sender<FlowNotice>,
}

impl Default for FlowLogger {
    fn default() -> Self {
        FlowLogger {
            flows: HashMap::new(),
            order: VecDeque::new(),
            notices: broadcast::channel(NOTICES_BUFFERED).0,
        }
    }
}

impl Actor for FlowLogger {
    type Context = Context<Self>;
}

impl Handler<FlowEvent> for FlowLogger {
    type Result = ();
    fn handle(&mut self, event: FlowEvent, _: &mut Context<Self>) {
        if !self.flows.contains_key(&event.correlation_id) {
            if self.order.len() == FLOWS_KEPT
                && let Some(oldest) = self.order.pop_front()
            {
                self.flows.remove(&oldest);
            }
            self.order.push_back(event.correlation_id.clone());
            self.flows.insert(
                event.correlation_id.clone(),
                FlowTrace {
                    started: event.at,
                    next_seq: 1,
                    events: VecDeque::new(),
                },
            );
        }
        let trace = self
            .flows
            .get_mut(&event.correlation_id)
            .expect("inserted above");
        let entry = TraceEntry {
            seq: trace.next_seq,
            elapsed_ms: event
                .at
                .saturating_duration_since(trace.started)
                .as_millis() as u64,
            step: event.step,
            details: event.details,
        };
        trace.next_seq += 1;
        // The flow's steps are detail (debug); the one info line of a refresh is "token
        // refreshed", and failures are warnings of their own. The details are copied and
        // serialised only when the line is written (not at info, the daemon's default).
        if tracing::enabled!(target: "mcpproxy_oauth::flow", tracing::Level::DEBUG) {
            let details = Value::Object(entry.details.clone()).to_string();
            tracing::debug!(
                target: "mcpproxy_oauth::flow",
                correlation_id = %event.correlation_id,
                server = %event.server,
                flow_kind = event.flow_kind.as_str(),
                seq = entry.seq,
                elapsed_ms = entry.elapsed_ms,
                step = event.step.as_str(),
                details = %details,
                "flow {}", event.step
            );
        }
        if self.notices.receiver_count() > 0 {
            let _ = self.notices.send(FlowNotice {
                correlation_id: event.correlation_id.clone(),
                server: event.server.clone(),
                flow_kind: event.flow_kind,
                entry: entry.clone(),
            });
        }
        if trace.events.len() == EVENTS_PER_FLOW {
            trace.events.pop_front();
        }
        trace.events.push_back(entry);
    }
}

impl Handler<SubscribeNotices> for FlowLogger {
    type Result = MessageResult<SubscribeNotices>;
    fn handle(&mut self, _: SubscribeNotices, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.notices.subscribe())
    }
}

impl Handler<GetTrace> for FlowLogger {
    type Result = MessageResult<GetTrace>;
    fn handle(&mut self, GetTrace(id): GetTrace, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.flows
                .get(&id)
                .map(|t| t.events.iter().cloned().collect())
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[actix::test]
    async fn events_get_sequence_numbers_and_buffers_stay_bounded() {
        let logger = FlowLogger::default().start();
        for i in 0..(EVENTS_PER_FLOW + 5) {
            logger.do_send(FlowEvent::new(
                "f1",
                "srv",
                FlowKind::Refresh,
                FlowStep::Registered,
                json!({"i": i}),
            ));
        }
        logger.do_send(FlowEvent::new(
            "f2",
            "srv",
            FlowKind::Login,
            FlowStep::Started,
            Value::Null,
        ));
        let trace = logger.send(GetTrace("f1".into())).await.unwrap();
        assert_eq!(trace.len(), EVENTS_PER_FLOW, "bounded per flow");
        assert_eq!(
            trace.first().unwrap().seq,
            6,
            "the oldest events are dropped"
        );
        assert_eq!(trace.last().unwrap().seq, (EVENTS_PER_FLOW + 5) as u64);
        assert!(trace.windows(2).all(|w| w[0].elapsed_ms <= w[1].elapsed_ms));
        assert_eq!(
            logger.send(GetTrace("f2".into())).await.unwrap()[0].step,
            FlowStep::Started
        );
        for i in 0..FLOWS_KEPT {
            logger.do_send(FlowEvent::new(
                &format!("g{i}"),
                "srv",
                FlowKind::Refresh,
                FlowStep::Started,
                Value::Null,
            ));
        }
        assert!(
            logger.send(GetTrace("f1".into())).await.unwrap().is_empty(),
            "old flows are evicted"
        );
    }

    #[test]
    fn kinds_and_steps_keep_their_names_in_json_and_the_store() {
        for kind in FlowKind::ALL {
            assert_eq!(FlowKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(FlowKind::parse("something else"), None);
        assert_eq!(
            serde_json::to_value(FlowStep::TokenObtained).unwrap(),
            "token obtained"
        );
        assert_eq!(FlowStep::ResourceMoved.to_string(), "resource moved");
        assert_eq!(FlowStep::Adopted.end(), Some(FlowEnd::Adopted));
        assert_eq!(FlowStep::Decision.end(), None);
    }

    #[actix::test]
    async fn observers_get_every_event_with_its_flow() {
        let logger = FlowLogger::default().start();
        let mut notices = logger.send(SubscribeNotices).await.unwrap();
        logger.do_send(FlowEvent::new(
            "f1",
            "srv",
            FlowKind::Refresh,
            FlowStep::Started,
            Value::Null,
        ));
        logger.do_send(FlowEvent::new(
            "f1",
            "srv",
            FlowKind::Refresh,
            FlowStep::Failed,
            json!({"status": 503}),
        ));
        let first = notices.recv().await.unwrap();
        assert_eq!(
            (
                first.correlation_id.as_str(),
                first.server.as_str(),
                first.flow_kind,
                first.entry.step,
                first.entry.seq
            ),
            ("f1", "srv", FlowKind::Refresh, FlowStep::Started, 1)
        );
        let second = notices.recv().await.unwrap();
        assert_eq!(second.entry.seq, 2);
        assert_eq!(second.entry.details["status"], 503);
    }
}
