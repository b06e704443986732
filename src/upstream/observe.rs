//! What the actor tells observers: its status when asked, its phase changes as they happen
//! (a log line and a `StateChange` for subscribers), and, at the end of each flow's trace, the
//! decision its machine took on the flow's outcome.

use super::actor::UpstreamActor;
use super::state::Phase;
use super::status::{ServerStatus, StateChange, phase_detail, routine_change};
use crate::telemetry::flow_logger::{FlowKind, FlowStep};

impl UpstreamActor {
    pub(super) fn announce_phase(&self, before: &Phase) {
        let phase = &self.state.phase;
        if phase == before {
            return;
        }
        let detail = phase_detail(phase);
        let (server, from, to) = (&self.config.name, before.name(), phase.name());
        if routine_change(before, phase) {
            tracing::debug!(server = %server, from, to, "state changed");
        } else {
            let detail = detail.as_deref().unwrap_or("");
            tracing::info!(server = %server, from, to, detail, "state changed");
        }
        let _ = self.events.send(StateChange {
            server: self.config.name.clone(),
            phase: phase.clone(),
            detail,
            at: self.now(),
        });
    }

    /// The flow's last trace event: what the machine decided on its outcome.
    pub(super) fn announce_decision(&self, flow_id: &str, kind: FlowKind) {
        let phase = &self.state.phase;
        let decision = match phase {
            Phase::Connected => "use the new token".to_string(),
            Phase::BackingOff { retry_at, .. } => format!("retry at {retry_at}"),
            Phase::Retrying {
                retry_at, until, ..
            } => {
                format!("retry slowly: next at {retry_at}, until {until}")
            }
            Phase::Authorizing => "re-login: a browser login started".into(),
            Phase::Refreshing if self.state.reregistered => {
                "register a new client and refresh again".into()
            }
            Phase::Refreshing if self.state.scope_omitted => "refresh again without scope".into(),
            Phase::Refreshing => "refresh again".into(),
            Phase::NeedsLogin { .. } => "wait for a login".into(),
            Phase::ClientRejected { retry_at, .. } => {
                format!("fix the configured client; retry at {retry_at}")
            }
            Phase::LoggedOut => "logged out".into(),
            Phase::Idle | Phase::Loading | Phase::StoreUnavailable { .. } => {
                phase.name().to_string()
            }
        };
        let mut details = serde_json::to_value(phase).unwrap_or_default();
        details["decision"] = decision.clone().into();
        if let Phase::Connected = phase {
            details["next_refresh_at"] = self
                .state
                .token
                .and_then(|t| t.refresh_at(self.state.jitter))
                .into();
            details["unsaved"] = self.state.unsaved.is_some().into();
            tracing::debug!(decision = %decision, "decision taken");
        } else {
            tracing::info!(decision = %decision, "decision taken");
        }
        self.rt.flow_event(
            flow_id,
            &self.config.name,
            kind,
            FlowStep::Decision,
            details,
        );
    }

    pub(super) fn status(&self) -> ServerStatus {
        let token = self.current.as_ref();
        let connected = matches!(self.state.phase, Phase::Connected);
        let authorizing = matches!(self.state.phase, Phase::Authorizing);
        fn published<T: Clone>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
            slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
        ServerStatus {
            name: self.config.name.clone(),
            url: self.config.url.to_string(),
            server_key: self.config.server_key.clone(),
            phase: self.state.phase.clone(),
            detail: phase_detail(&self.state.phase),
            expires_at: token.and_then(|t| t.expires_at),
            has_token: token.is_some(),
            has_refresh_token: token.is_some_and(|t| t.refresh_token.is_some()),
            scope: token.and_then(|t| t.scope.clone()),
            next_attempt_at: self.state.phase.next_attempt_at(),
            next_refresh_at: self
                .state
                .token
                // A grant server renews by its grant, refresh token or not.
                .filter(|t| connected && (t.has_refresh_token || self.policy.grant))
                .and_then(|t| t.refresh_at(self.state.jitter)),
            refresh_failures: self.state.transient_failures,
            unsaved_token: self.state.unsaved.is_some(),
            timers_fired: self.timers_fired,
            auth_url: authorizing.then(|| published(&self.auth_url)).flatten(),
            device_login: authorizing
                .then(|| published(&self.device_prompt))
                .flatten(),
            running_flow: self.running_flow.clone(),
            running_flow_kind: self.running_flow.as_ref().map(|_| self.running_flow_kind),
            running_flow_started_at: self
                .running_flow
                .as_ref()
                .map(|_| self.running_flow_started_at),
            last_flow: self.last_flow.clone(),
            timer_at: self.scheduled.map(|s| s.fires_at),
            token_type: token.map(|t| t.token_type.clone()),
            dpop_jkt: token.and_then(|t| t.dpop.as_ref().map(|d| d.jkt.clone())),
            protocol_version: self.protocol_version.clone(),
        }
    }
}
