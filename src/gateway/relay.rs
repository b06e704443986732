//! The upstream's answer body, relayed to the client as it arrives (an SSE event reaches the
//! client when the upstream sends it, not when the stream ends), within bounds: a JSON answer
//! of at most `max_response_bytes`, an SSE stream whose every event is at most that, and no
//! wait between two pieces longer than the idle bound. Past a bound the stream ends with an
//! error, which cuts the client's connection (its answer would be incomplete anyway). The
//! slots the request holds (in flight, SSE stream) go back when the stream ends or the client
//! goes away.

use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::Stream;

use super::limits::Slot;
use super::metrics::ServerMetrics;

/// Finds SSE event boundaries (an empty line: `\n\n`, `\r\r`, `\r\n\r\n`) across chunks, to
/// bound each event's size without keeping it.
#[derive(Debug, Default, Clone)]
pub struct EventSizer {
    /// Bytes since the last boundary.
    pub pending: usize,
    at_line_start: bool,
    after_cr: bool,
}

impl EventSizer {
    /// Feeds a chunk; returns the largest event size seen in it (the open one included).
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut largest = 0;
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => {
                    // The LF of a CRLF: part of the line it ends (none, after a boundary).
                    self.after_cr = false;
                    if self.pending > 0 {
                        self.pending += 1;
                    }
                }
                b'\n' | b'\r' => {
                    self.pending += 1;
                    if self.at_line_start {
                        largest = largest.max(self.pending);
                        self.pending = 0;
                    }
                    self.at_line_start = true;
                    self.after_cr = b == b'\r';
                }
                _ => {
                    self.pending += 1;
                    self.at_line_start = false;
                    self.after_cr = false;
                }
            }
        }
        largest.max(self.pending)
    }
}

/// How a body is bounded.
pub struct Bounds {
    pub max_bytes: usize,
    /// Bound each SSE event instead of the whole body.
    pub per_event: bool,
    /// The longest wait for the next piece.
    pub idle: Duration,
}

struct Relay {
    response: reqwest::Response,
    bounds: Bounds,
    sizer: EventSizer,
    total: usize,
    metrics: ServerMetrics,
    _slots: Vec<Slot>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the upstream answer exceeded the gateway's size bound")]
    TooLarge,
    #[error("the upstream sent nothing for longer than the gateway's idle bound")]
    Idle,
    #[error("the upstream connection failed mid-answer")]
    Broken,
}

/// The body of `response` as a stream of chunks for actix, bounded by `bounds`.
pub fn body(
    response: reqwest::Response,
    bounds: Bounds,
    metrics: ServerMetrics,
    slots: Vec<Slot>,
) -> impl Stream<Item = Result<Bytes, RelayError>> + 'static {
    let relay = Relay {
        response,
        bounds,
        sizer: EventSizer::default(),
        total: 0,
        metrics,
        _slots: slots,
    };
    futures_util::stream::unfold(Some(relay), |relay| async move {
        let mut relay = relay?;
        let chunk = match tokio::time::timeout(relay.bounds.idle, relay.response.chunk()).await {
            Err(_) => {
                relay.metrics.refused(if relay.bounds.per_event {
                    "sse_idle_timeout"
                } else {
                    "upstream_timeout"
                });
                return Some((Err(RelayError::Idle), None));
            }
            Ok(Err(_)) => return Some((Err(RelayError::Broken), None)),
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(chunk))) => chunk,
        };
        let size = if relay.bounds.per_event {
            relay.sizer.feed(&chunk)
        } else {
            relay.total += chunk.len();
            relay.total
        };
        if size > relay.bounds.max_bytes {
            relay.metrics.refused(if relay.bounds.per_event {
                "max_sse_event_bytes"
            } else {
                "max_response_bytes"
            });
            return Some((Err(RelayError::TooLarge), None));
        }
        Some((Ok(chunk), Some(relay)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_sized_between_empty_lines_of_any_line_ending() {
        let mut sizer = EventSizer::default();
        assert_eq!(sizer.feed(b"data: 1\n\n"), 9);
        assert_eq!(sizer.pending, 0);
        assert_eq!(sizer.feed(b"data: 22\r\n\r\ndata: 3"), 11);
        assert_eq!(sizer.pending, 7, "the open event");
        // A boundary split across chunks.
        assert_eq!(sizer.feed(b"\n"), 8);
        assert_eq!(sizer.feed(b"\n"), 9);
        assert_eq!(sizer.pending, 0);
        assert_eq!(sizer.feed(b"data: x\r\r"), 9);
        // A long event over several chunks grows until its end.
        assert_eq!(sizer.feed(b"data: aaaa"), 10);
        assert_eq!(sizer.feed(b"aaaa"), 14);
        assert_eq!(sizer.feed(b"\n\ndata:"), 16);
        assert_eq!(sizer.pending, 5);
    }
}
