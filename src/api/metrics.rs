//! `GET /metrics`: Prometheus text format through the `prometheus` crate, on a registry of
//! the API's own (two daemons in one test process do not share counters). Counters move with
//! the flow events the `FlowLogger` publishes; the per-server gauges (phase, seconds to expiry,
//! failures in a row) and the scheduler's counters are set from the supervisor at each
//! scrape. The store's call latency is the process-wide histogram of `store::registry`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::scheduler::SchedulerCounters;
use crate::store::StoreHealth;
use crate::telemetry::flow_logger::{FlowEnd, FlowKind, FlowNotice};
use crate::upstream::actor::ServerStatus;

pub struct Metrics {
    registry: Registry,
    /// The token store's health, by backend and measure.
    store: prometheus::GaugeVec,
    refreshes: IntCounterVec,
    logins: IntCounterVec,
    flow_duration: HistogramVec,
    phase: IntGaugeVec,
    expiry: prometheus::GaugeVec,
    failures: IntGaugeVec,
    browser: IntCounterVec,
    pub sse_subscribers: IntGauge,
    pub sse_dropped: IntCounter,
    /// Event subscribers refused beyond `--max-sse-subscribers`, and that cap.
    pub sse_refused: IntCounter,
    pub sse_subscriber_limit: IntGauge,
    /// Open API connections (the ones being refused included), refusals beyond
    /// `--max-api-connections`, and that cap.
    pub api_connections: IntGauge,
    pub api_connections_refused: IntCounter,
    pub api_connection_limit: IntGauge,
    /// The scheduler's counters, copied in at each scrape.
    scheduler: IntGaugeVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("mcpproxy_oauth".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let refreshes = counter(
            "refreshes_total",
            "Finished refresh flows by server and outcome (success, adopted, failure).",
            &["server", "outcome"],
        );
        let logins = counter(
            "logins_total",
            "Finished login flows by server and outcome (success, adopted, failure).",
            &["server", "outcome"],
        );
        let browser = counter(
            "browser_launches_total",
            "Authorization URLs handed to the browser, by server and outcome (opened, failed).",
            &["server", "outcome"],
        );
        let flow_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("flow_duration_seconds", "Duration of finished flows.").buckets(
                    vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0],
                ),
                &["kind", "outcome"],
            )
            .expect("valid metric"),
        );
        let int_gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let phase = int_gauges(
            "server_phase",
            "1 for the phase each server is in.",
            &["server", "phase"],
        );
        let expiry = gauges(
            "token_expiry_seconds",
            "Seconds until the held access token expires (negative: expired).",
            &["server"],
        );
        let failures = int_gauges(
            "refresh_failures",
            "Transient refresh failures in a row.",
            &["server"],
        );
        let sse_subscribers = register(
            &registry,
            IntGauge::new("sse_subscribers", "Connected /api/v1/events subscribers.")
                .expect("valid metric"),
        );
        let sse_dropped = register(
            &registry,
            IntCounter::new(
                "sse_subscribers_dropped_total",
                "Event subscribers dropped because they read too slowly.",
            )
            .expect("valid metric"),
        );
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let plain_counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let sse_refused = plain_counter(
            "sse_subscribers_refused_total",
            "Event subscribers refused (503) because --max-sse-subscribers were connected.",
        );
        let sse_subscriber_limit = gauge(
            "sse_subscriber_limit",
            "The most event subscribers served at once (--max-sse-subscribers).",
        );
        let api_connections = gauge(
            "api_connections",
            "Open connections to the API listener, those being refused included.",
        );
        let api_connections_refused = plain_counter(
            "api_connections_refused_total",
            "Connections answered 503 and closed because --max-api-connections were open.",
        );
        let api_connection_limit = gauge(
            "api_connection_limit",
            "The most API connections served at once (--max-api-connections).",
        );
        let scheduler = int_gauges(
            "scheduler",
            "The deadline scheduler and its limits, by measure: entries (waiting now), armed, \
             replaced, cancelled, fired, dropped, late (counts since start), worst_lateness_ms; \
             refreshes_running, refreshes_queued, refreshes_peak, refresh_limit; logins_running, \
             logins_queued, logins_peak, login_limit; tabs_open, tabs_queued, tabs_peak, \
             tab_limit (browser tabs of logins).",
            &["measure"],
        );
        let store = gauges(
            "store",
            "The token store at this scrape, by backend and measure: up (1 when it answered a \
             bounded check), check_seconds (how long the check took), listening (PostgreSQL: 1 \
             when changes are heard at once, 0 while the listener falls back to polling).",
            &["backend", "measure"],
        );
        Metrics {
            registry,
            store,
            refreshes,
            logins,
            flow_duration,
            phase,
            expiry,
            failures,
            browser,
            sse_subscribers,
            sse_dropped,
            sse_refused,
            sse_subscriber_limit,
            api_connections,
            api_connections_refused,
            api_connection_limit,
            scheduler,
        }
    }

    /// The registry, for other parts of the listener (the gateway) to register their own
    /// metrics on, so one scrape shows them all.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn observe_notice(&self, notice: &FlowNotice) {
        let Some(outcome) = notice.entry.step.end().map(FlowEnd::as_str) else {
            return;
        };
        let counter = match notice.flow_kind {
            FlowKind::Refresh => &self.refreshes,
            FlowKind::Login => &self.logins,
        };
        counter
            .with_label_values(&[notice.server.as_str(), outcome])
            .inc();
        self.flow_duration
            .with_label_values(&[notice.flow_kind.as_str(), outcome])
            .observe(notice.entry.elapsed_ms as f64 / 1000.0);
    }

    pub fn observe_browser(&self, server: &str, opened: bool) {
        self.browser
            .with_label_values(&[server, if opened { "opened" } else { "failed" }])
            .inc();
    }

    /// The text exposition, with the gauges set from `statuses`, `scheduler` and `store`
    /// first.
    pub fn render(
        &self,
        statuses: &[ServerStatus],
        scheduler: &SchedulerCounters,
        store: &StoreHealth,
        now_ms: i64,
    ) -> String {
        self.store.reset();
        let mut measures = vec![
            ("up", if store.reachable { 1.0 } else { 0.0 }),
            ("check_seconds", store.latency_ms as f64 / 1000.0),
        ];
        if let Some(listening) = store.listening {
            measures.push(("listening", if listening { 1.0 } else { 0.0 }));
        }
        for (measure, value) in measures {
            self.store
                .with_label_values(&[store.backend, measure])
                .set(value);
        }
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (measure, value) in [
            ("entries", count(scheduler.entries as u64)),
            ("armed", count(scheduler.armed)),
            ("replaced", count(scheduler.replaced)),
            ("cancelled", count(scheduler.cancelled)),
            ("fired", count(scheduler.fired)),
            ("dropped", count(scheduler.dropped)),
            ("late", count(scheduler.late)),
            ("worst_lateness_ms", count(scheduler.worst_lateness_ms)),
            ("refreshes_running", count(scheduler.flows_running as u64)),
            ("refreshes_queued", count(scheduler.flows_queued as u64)),
            ("refreshes_peak", count(scheduler.flows_peak as u64)),
            ("refresh_limit", count(scheduler.flow_limit as u64)),
            ("logins_running", count(scheduler.logins_running as u64)),
            ("logins_queued", count(scheduler.logins_queued as u64)),
            ("logins_peak", count(scheduler.logins_peak as u64)),
            ("login_limit", count(scheduler.login_limit as u64)),
            ("tabs_open", count(scheduler.tabs_open as u64)),
            ("tabs_queued", count(scheduler.tabs_queued as u64)),
            ("tabs_peak", count(scheduler.tabs_peak as u64)),
            ("tab_limit", count(scheduler.tab_limit as u64)),
        ] {
            self.scheduler.with_label_values(&[measure]).set(value);
        }
        self.phase.reset();
        self.expiry.reset();
        for s in statuses {
            self.phase
                .with_label_values(&[s.name.as_str(), s.phase.name()])
                .set(1);
            if let Some(expires_at) = s.expires_at.filter(|_| s.has_token) {
                self.expiry
                    .with_label_values(&[s.name.as_str()])
                    .set((expires_at - now_ms) as f64 / 1000.0);
            }
            self.failures
                .with_label_values(&[s.name.as_str()])
                .set(i64::from(s.refresh_failures));
        }
        let mut families = self.registry.gather();
        families.extend(prometheus::core::Collector::collect(
            &*crate::store::registry::STORE_CALL_SECONDS,
        ));
        families.extend(prometheus::core::Collector::collect(
            &*crate::store::registry::GROUP_SIZE,
        ));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
