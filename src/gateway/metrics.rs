//! The gateway's metrics, registered on the API's Prometheus registry (one `/metrics`):
//!
//! - `gateway_requests_total{server, status}`: answers given, by the status the client got
//! - `gateway_upstream_seconds{server}`: time until the upstream's answer began
//! - `gateway_unavailable_total{server, phase}`: 503s served while the server had no usable token
//! - `gateway_token_retries_total{server, reason}`: requests sent again with a new token or proof
//!   (`unauthorized`: a 401 reported to the server's actor; `insufficient_scope`: a 403 step-up;
//!   `dpop_nonce`: the resource asked for a nonce)
//! - `gateway_refused_total{server, limit}`: requests refused or streams cut by a bound
//! - `gateway_in_flight{server}`, `gateway_sse_streams{server}`: open now
//! - `gateway_limit{limit}`: the configured bounds
//!
//! The children the hot path touches (200, 202, the latency histogram, the gauges) are looked
//! up once per server, not per request.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::limits::GatewayLimits;

#[derive(Clone)]
pub struct GatewayMetrics {
    requests: IntCounterVec,
    upstream_seconds: HistogramVec,
    unavailable: IntCounterVec,
    retries: IntCounterVec,
    refused: IntCounterVec,
    in_flight: IntGaugeVec,
    sse_streams: IntGaugeVec,
}

/// One server's often used children.
#[derive(Clone)]
pub struct ServerMetrics {
    server: String,
    all: GatewayMetrics,
    ok: IntCounter,
    accepted: IntCounter,
    pub upstream_seconds: Histogram,
    pub in_flight: IntGauge,
    pub sse_streams: IntGauge,
}

impl GatewayMetrics {
    /// Registers on `registry` (the API's). A second gateway on the same registry (a test
    /// starting two) gets unregistered metrics instead of a panic.
    pub fn register(registry: &Registry, limits: &GatewayLimits) -> Self {
        fn add<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::warn!(error = %e, "a gateway metric is registered already");
            }
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            add(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            add(
                registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let limit = add(
            registry,
            prometheus::GaugeVec::new(
                Opts::new("gateway_limit", "The gateway's configured bounds."),
                &["limit"],
            )
            .expect("valid metric"),
        );
        for (name, value) in limits.by_name() {
            limit.with_label_values(&[name]).set(value);
        }
        GatewayMetrics {
            requests: counter(
                "gateway_requests_total",
                "Gateway answers by server and the HTTP status the client got.",
                &["server", "status"],
            ),
            upstream_seconds: add(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gateway_upstream_seconds",
                        "Time from sending a request upstream until its answer began.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 15.0, 60.0,
                    ]),
                    &["server"],
                )
                .expect("valid metric"),
            ),
            unavailable: counter(
                "gateway_unavailable_total",
                "503 answers served because the server had no usable token, by its phase.",
                &["server", "phase"],
            ),
            retries: counter(
                "gateway_token_retries_total",
                "Requests sent again with a new token or proof (unauthorized, insufficient_scope, dpop_nonce).",
                &["server", "reason"],
            ),
            refused: counter(
                "gateway_refused_total",
                "Requests refused or streams cut by a gateway bound, by limit.",
                &["server", "limit"],
            ),
            in_flight: gauge(
                "gateway_in_flight",
                "Gateway requests in flight now.",
                &["server"],
            ),
            sse_streams: gauge(
                "gateway_sse_streams",
                "Standalone SSE streams open now.",
                &["server"],
            ),
        }
    }

    /// Metrics on a registry of their own (the stdio bridge has no `/metrics`).
    pub fn unregistered(limits: &GatewayLimits) -> Self {
        Self::register(&Registry::new(), limits)
    }

    pub fn server(&self, server: &str) -> ServerMetrics {
        ServerMetrics {
            server: server.to_string(),
            all: self.clone(),
            ok: self.requests.with_label_values(&[server, "200"]),
            accepted: self.requests.with_label_values(&[server, "202"]),
            upstream_seconds: self.upstream_seconds.with_label_values(&[server]),
            in_flight: self.in_flight.with_label_values(&[server]),
            sse_streams: self.sse_streams.with_label_values(&[server]),
        }
    }

    /// A request for a server that is not configured.
    pub fn unknown_server(&self, status: u16) {
        self.requests
            .with_label_values(&["", status_label(status)])
            .inc();
    }
}

fn status_label(status: u16) -> &'static str {
    // Labels from a fixed set: an upstream cannot grow the series without bound.
    match status {
        200 => "200",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

impl ServerMetrics {
    pub fn answered(&self, status: u16) {
        match status {
            200 => self.ok.inc(),
            202 => self.accepted.inc(),
            s => self
                .all
                .requests
                .with_label_values(&[&self.server, status_label(s)])
                .inc(),
        }
    }

    pub fn unavailable(&self, phase: &str) {
        self.all
            .unavailable
            .with_label_values(&[&self.server, phase])
            .inc();
    }

    pub fn retried(&self, reason: &str) {
        self.all
            .retries
            .with_label_values(&[&self.server, reason])
            .inc();
    }

    pub fn refused(&self, limit: &str) {
        self.all
            .refused
            .with_label_values(&[&self.server, limit])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_a_bounded_label_set() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(101), "1xx");
    }

    #[test]
    fn answers_count_under_their_server_and_status() {
        let registry = Registry::new();
        let metrics = GatewayMetrics::register(&registry, &GatewayLimits::default());
        let srv = metrics.server("s");
        srv.answered(200);
        srv.answered(503);
        srv.unavailable("needs_login");
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            text.contains(r#"gateway_requests_total{server="s",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_requests_total{server="s",status="503"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_unavailable_total{phase="needs_login",server="s"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_limit{limit="max_in_flight"} 256"#),
            "{text}"
        );
    }
}
