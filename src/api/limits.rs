//! Limits that keep the API from taking what refreshes need. An idle connection costs the
//! daemon a file descriptor, and so does every flow's lock file, its HTTP connection and the
//! database's files: without a cap, enough idle connections leave refreshes failing to open
//! their lock files until tokens expire.
//!
//! - **Connections**: every accepted connection takes a [`Ticket`] (counted until the
//!   connection closes). Beyond `max_connections` the connection is answered at once with a
//!   503 `too_many_connections` and closed, idle or not, so it holds its descriptor for
//!   microseconds; a burst faster than that is held in the kernel's accept queue (the
//!   per-worker ceiling), not in the daemon.
//! - **Event subscribers**: beyond `max_sse_subscribers`, `GET /api/v1/events` answers 503
//!   `too_many_subscribers`. A [`SubscriberSlot`] is held by the stream and freed when it ends.
//! - **Descriptors**: [`raise_nofile_limit`] lifts the soft RLIMIT_NOFILE to the hard one at
//!   start, and [`connection_budget`] keeps the connection cap below it by a reserve sized
//!   for the flows (lock file, socket) and the store, so API sockets stop well before the
//!   refresh path needs a descriptor.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web::Data};
use serde_json::json;

use super::AppState;
use super::error::error;
use super::metrics::Metrics;

/// Default cap of open API connections (page, clients, event streams, the gateway's).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default cap of live event subscribers.
pub const DEFAULT_MAX_SSE_SUBSCRIBERS: usize = 64;
/// Descriptors kept for everything but the API, beyond the flows' own: the database and its
/// WAL and shared-memory files, the runtimes' epoll and event descriptors, the log file,
/// standard streams, callback listeners, a browser command's pipes.
pub const BASE_RESERVE: u64 = 512;
/// Descriptors a running refresh may hold: its lock file, its connection, a re-registration
/// or discovery connection, and one spare.
pub const PER_REFRESH: u64 = 4;
/// Connections being refused at once, per worker, beyond the cap (a burst).
const REFUSING_PER_WORKER: usize = 64;

/// Counts the API's connections and its event subscribers against their caps.
pub struct Limits {
    max_connections: usize,
    max_sse_subscribers: usize,
    connections: AtomicUsize,
    subscribers: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Held for one accepted connection (in its `Extensions`), released when it closes.
pub struct Ticket {
    limits: Arc<Limits>,
    /// Accepted beyond the cap: answered 503 and closed.
    pub over: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let open = self.limits.connections.fetch_sub(1, Ordering::SeqCst) - 1;
        self.limits.metrics.api_connections.set(open as i64);
    }
}

/// Held by one event stream; frees its place when the stream is dropped.
pub struct SubscriberSlot {
    limits: Arc<Limits>,
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.limits.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limits {
    pub fn new(max_connections: usize, max_sse_subscribers: usize, metrics: Arc<Metrics>) -> Self {
        let (max_connections, max_sse_subscribers) =
            (max_connections.max(1), max_sse_subscribers.max(1));
        metrics.api_connection_limit.set(max_connections as i64);
        metrics.sse_subscriber_limit.set(max_sse_subscribers as i64);
        Limits {
            max_connections,
            max_sse_subscribers,
            connections: AtomicUsize::new(0),
            subscribers: AtomicUsize::new(0),
            metrics,
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The most connections one HTTP worker holds before the listener stops accepting: the
    /// cap's share plus room for the ones being refused.
    pub fn per_worker_ceiling(&self, workers: usize) -> usize {
        self.max_connections.div_ceil(workers.max(1)) + REFUSING_PER_WORKER
    }

    /// Counts a new connection; `over` when the cap is already reached.
    pub fn admit(self: &Arc<Self>) -> Ticket {
        let open = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.api_connections.set(open as i64);
        let over = open > self.max_connections;
        if over {
            self.metrics.api_connections_refused.inc();
        }
        Ticket {
            limits: self.clone(),
            over,
        }
    }

    /// A place for one more event subscriber, if there is one.
    pub fn subscriber_slot(self: &Arc<Self>) -> Option<SubscriberSlot> {
        let taken = self
            .subscribers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_sse_subscribers).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(SubscriberSlot {
                limits: self.clone(),
            }),
            Err(_) => {
                self.metrics.sse_refused.inc();
                None
            }
        }
    }

    pub fn too_many_subscribers(&self) -> HttpResponse {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "{} event subscribers are connected, the most this daemon serves \
                 (--max-sse-subscribers); close one, or retry later",
                self.max_sse_subscribers
            ),
        );
        response.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("5"),
        );
        response
    }

    /// The raw answer written to a connection refused beyond the cap, before any request.
    fn refusal_bytes(&self) -> Vec<u8> {
        let body = json!({"error": {
            "code": "too_many_connections",
            "message": format!(
                "this daemon holds its limit of {} API connections (--max-api-connections); close \
                 idle ones, or retry later",
                self.max_connections
            ),
        }})
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// `HttpServer::on_connect`: counts the connection; beyond the cap writes the 503 and
    /// shuts the socket, so the connection ends before it reads a request.
    pub fn on_connect(self: &Arc<Self>, connection: &dyn std::any::Any, data: &mut Extensions) {
        let ticket = self.admit();
        if ticket.over
            && let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
        {
            refuse_now(stream, &self.refusal_bytes());
        }
        data.insert(ticket);
    }
}

/// Writes the 503 straight to the socket (a fresh socket's send buffer takes it without
/// waiting; tokio's `try_write` would refuse before the reactor reported the socket
/// writable) and shuts it both ways, so its dispatcher ends at once.
#[cfg(target_os = "linux")]
fn refuse_now(stream: &actix_web::rt::net::TcpStream, answer: &[u8]) {
    use rustix::net::{SendFlags, Shutdown, send, shutdown};
    let _ = send(stream, answer, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
    let _ = shutdown(stream, Shutdown::Both);
}

#[cfg(not(target_os = "linux"))]
fn refuse_now(_: &actix_web::rt::net::TcpStream, _: &[u8]) {
    // The middleware answers the connection's first request with the 503 instead.
}

/// The middleware behind `on_connect`: a request on a connection admitted beyond the cap
/// (where the socket could not be shut at once) gets the 503 and `Connection: close`.
pub async fn refuse_over_cap<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let over = req.conn_data::<Ticket>().is_some_and(|t| t.over);
    if over && let Some(state) = req.app_data::<Data<AppState>>() {
        let limits = &state.limits;
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "this daemon holds its limit of {} API connections (--max-api-connections); close \
                 idle ones, or retry later",
                limits.max_connections
            ),
        );
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// The soft and hard RLIMIT_NOFILE, after lifting the soft limit to the hard one.
pub fn raise_nofile_limit() -> Result<(u64, u64), String> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        // Linux caps descriptors at fs.nr_open (1,048,576 by default) even when the hard
        // limit says unlimited.
        const CEILING: u64 = 1 << 20;
        let limit = getrlimit(Resource::Nofile);
        let hard = limit.maximum.unwrap_or(CEILING);
        let soft = limit.current.unwrap_or(CEILING);
        if soft < hard {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard),
                    maximum: limit.maximum,
                },
            )
            .map_err(|e| format!("cannot raise the open-file limit from {soft} to {hard}: {e}"))?;
        }
        let now = getrlimit(Resource::Nofile);
        Ok((
            now.current.unwrap_or(CEILING),
            now.maximum.unwrap_or(CEILING),
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("the open-file limit is left as it is on this platform".into())
    }
}

/// The descriptors kept for the refresh path and the store: never given to API connections.
pub fn reserve(max_concurrent_refreshes: usize, servers: usize) -> u64 {
    BASE_RESERVE + PER_REFRESH * max_concurrent_refreshes as u64 + servers as u64
}

/// The connection cap that fits under `nofile` with `reserve` kept, at most `wanted` (and the
/// event subscribers' cap within it); `None` when `wanted` fits as it is. The budget counts
/// the connections being refused at once beyond the cap too.
pub fn connection_budget(
    nofile: u64,
    reserve: u64,
    wanted: usize,
    workers: usize,
) -> Option<usize> {
    let refusing = (REFUSING_PER_WORKER * workers.max(1)) as u64;
    let room = nofile.saturating_sub(reserve).saturating_sub(refusing);
    (wanted as u64 > room).then(|| room.max(8) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_beyond_the_cap_are_marked_and_counted_back_down() {
        let metrics = Arc::new(Metrics::new());
        let limits = Arc::new(Limits::new(2, 1, metrics.clone()));
        let a = limits.admit();
        let b = limits.admit();
        let c = limits.admit();
        assert!(!a.over && !b.over && c.over);
        assert_eq!(metrics.api_connections.get(), 3);
        assert_eq!(metrics.api_connections_refused.get(), 1);
        drop(c);
        drop(a);
        assert!(!limits.admit().over, "a closed connection frees its place");
        drop(b);
        let slot = limits.subscriber_slot().expect("one place");
        assert!(limits.subscriber_slot().is_none(), "the cap is 1");
        assert_eq!(metrics.sse_refused.get(), 1);
        drop(slot);
        assert!(limits.subscriber_slot().is_some());
        let refusal = String::from_utf8(limits.refusal_bytes()).unwrap();
        assert!(refusal.starts_with("HTTP/1.1 503 "), "{refusal}");
        assert!(refusal.contains("too_many_connections"));
    }

    #[test]
    fn the_budget_keeps_the_reserve_for_the_refresh_path() {
        let reserve = reserve(16, 10);
        assert_eq!(reserve, 512 + 64 + 10);
        assert_eq!(connection_budget(1 << 20, reserve, 512, 2), None, "plenty");
        assert_eq!(
            connection_budget(1024, reserve, 512, 2),
            Some(1024 - 586 - 128),
            "cut to what is left"
        );
        assert_eq!(
            connection_budget(256, reserve, 512, 2),
            Some(8),
            "never below 8"
        );
    }
}
