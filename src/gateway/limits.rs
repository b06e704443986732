//! The gateway's bounds, each with its `serve` flag: request and response sizes, streams and
//! requests per server, and how long anything may wait. A request beyond a bound is refused
//! with a clear answer (413, 503 + `Retry-After`, 504) and counted in
//! `mcpproxy_oauth_gateway_refused_total{limit}`; the configured values are the gauge
//! `mcpproxy_oauth_gateway_limit{limit}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The bounds, as the gateway and the stdio bridge use them.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayLimits {
    /// The largest request body (or stdio line) accepted.
    pub max_request_bytes: usize,
    /// The largest JSON answer relayed, and the largest single SSE event of a stream.
    pub max_response_bytes: usize,
    /// Standalone SSE streams (`GET`) open at once per server.
    pub max_sse_streams: usize,
    /// Requests in flight at once per server.
    pub max_in_flight: usize,
    /// The longest wait for the upstream's answer to begin, and between two pieces of it.
    pub upstream_timeout: Duration,
    /// The longest silence of a standalone SSE stream before it is closed.
    pub sse_idle_timeout: Duration,
    /// The longest a request waits for a token (a refresh or a login running) before the
    /// client hears 503 with `Retry-After`.
    pub token_wait: Duration,
    /// The longest a client may take to send its request body.
    pub client_timeout: Duration,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            max_request_bytes: 4 << 20,
            max_response_bytes: 64 << 20,
            max_sse_streams: 32,
            max_in_flight: 256,
            upstream_timeout: Duration::from_secs(60),
            sse_idle_timeout: Duration::from_secs(300),
            token_wait: Duration::from_secs(10),
            client_timeout: Duration::from_secs(30),
        }
    }
}

impl GatewayLimits {
    /// Each bound by its metric label, for the `gateway_limit` gauge.
    pub fn by_name(&self) -> [(&'static str, f64); 8] {
        [
            ("max_request_bytes", self.max_request_bytes as f64),
            ("max_response_bytes", self.max_response_bytes as f64),
            ("max_sse_streams", self.max_sse_streams as f64),
            ("max_in_flight", self.max_in_flight as f64),
            (
                "upstream_timeout_seconds",
                self.upstream_timeout.as_secs_f64(),
            ),
            (
                "sse_idle_timeout_seconds",
                self.sse_idle_timeout.as_secs_f64(),
            ),
            ("token_wait_seconds", self.token_wait.as_secs_f64()),
            ("client_timeout_seconds", self.client_timeout.as_secs_f64()),
        ]
    }
}

/// The `serve` flags of the gateway (`/mcp/{server}` on `--listen`).
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayFlags {
    /// Gateway: the largest request body accepted (413 beyond), e.g. 4MiB.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    pub gateway_max_request_bytes: usize,
    /// Gateway: the largest JSON answer relayed, and the largest single SSE event (the
    /// client's connection is cut beyond).
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    pub gateway_max_response_bytes: usize,
    /// Gateway: standalone SSE streams (GET) open at once per server (503 beyond).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000), default_value_t = 32)]
    pub gateway_max_sse_streams: u32,
    /// Gateway: requests in flight at once per server (503 beyond).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000), default_value_t = 256)]
    pub gateway_max_in_flight: u32,
    /// Gateway: the longest wait for an upstream's answer to begin, and between two pieces
    /// of it (504 or a cut stream beyond).
    #[arg(long, value_parser = positive_duration, default_value = "60s")]
    pub gateway_upstream_timeout: Duration,
    /// Gateway: the longest silence of a standalone SSE stream before it is closed.
    #[arg(long, value_parser = positive_duration, default_value = "5m")]
    pub gateway_sse_idle_timeout: Duration,
    /// Gateway: the longest a request waits for a token while a refresh or login runs,
    /// before the client hears 503 with Retry-After.
    #[arg(long, value_parser = positive_duration, default_value = "10s")]
    pub gateway_token_wait: Duration,
    /// Gateway: the longest a client may take to send its request body (408 beyond).
    #[arg(long, value_parser = positive_duration, default_value = "30s")]
    pub gateway_client_timeout: Duration,
}

impl GatewayFlags {
    pub fn limits(&self) -> GatewayLimits {
        GatewayLimits {
            max_request_bytes: self.gateway_max_request_bytes,
            max_response_bytes: self.gateway_max_response_bytes,
            max_sse_streams: self.gateway_max_sse_streams as usize,
            max_in_flight: self.gateway_max_in_flight as usize,
            upstream_timeout: self.gateway_upstream_timeout,
            sse_idle_timeout: self.gateway_sse_idle_timeout,
            token_wait: self.gateway_token_wait,
            client_timeout: self.gateway_client_timeout,
        }
    }
}

/// A size: a whole number of bytes, or with a `KiB`, `MiB` or `GiB` suffix (at least 1 KiB,
/// at most 1 GiB).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" | "k" => 10,
        "MiB" | "M" => 20,
        "GiB" | "G" => 30,
        other => {
            return Err(format!(
                "unknown unit {other:?}: give bytes, or a number with KiB, MiB or GiB"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: give bytes, or e.g. 4MiB"))?;
    let bytes = n.checked_shl(shift).filter(|b| b >> shift == n);
    match bytes {
        Some(b) if (1 << 10..=1 << 30).contains(&b) => Ok(b as usize),
        _ => Err(format!("{text} is out of range: from 1KiB to 1GiB")),
    }
}

/// A duration from 1 ms to 24 h.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() || d > Duration::from_secs(24 * 3600) {
        return Err("from 1ms to 24h".into());
    }
    Ok(d)
}

/// A count of things open at once with a ceiling: `try_take` hands out a slot that gives
/// itself back when dropped (a finished, failed or abandoned request alike).
#[derive(Debug, Clone)]
pub struct Gauge {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// A held place under a [`Gauge`]'s ceiling.
#[derive(Debug)]
pub struct Slot {
    open: Arc<AtomicUsize>,
    on_drop: Option<prometheus::IntGauge>,
}

impl Gauge {
    pub fn new(max: usize) -> Self {
        Gauge {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot if fewer than `max` are held; `shown` mirrors the count for the metrics.
    pub fn try_take(&self, shown: Option<&prometheus::IntGauge>) -> Option<Slot> {
        let mut current = self.open.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        if let Some(g) = shown {
            g.inc();
        }
        Some(Slot {
            open: self.open.clone(),
            on_drop: shown.cloned(),
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.on_drop {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_their_units_and_bounds() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert!(parse_size("12").unwrap_err().contains("1KiB"));
        assert!(parse_size("2GiB").unwrap_err().contains("1GiB"));
        assert!(parse_size("4MB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn a_gauge_hands_out_at_most_its_ceiling_and_takes_back_dropped_slots() {
        let gauge = Gauge::new(2);
        let shown = prometheus::IntGauge::new("g", "g").unwrap();
        let a = gauge.try_take(Some(&shown)).unwrap();
        let b = gauge.try_take(Some(&shown)).unwrap();
        assert!(gauge.try_take(Some(&shown)).is_none());
        assert_eq!((gauge.open(), shown.get()), (2, 2));
        drop(a);
        assert_eq!((gauge.open(), shown.get()), (1, 1));
        let _c = gauge.try_take(None).unwrap();
        drop(b);
        assert_eq!(gauge.open(), 1);
    }

    #[test]
    fn flags_give_the_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            flags: GatewayFlags,
        }
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.flags.limits(), GatewayLimits::default());
        let cli = Cli::try_parse_from(["x", "--gateway-token-wait", "2s"]).unwrap();
        assert_eq!(cli.flags.limits().token_wait, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["x", "--gateway-token-wait", "0s"]).is_err());
    }
}
