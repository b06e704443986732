//! The operator surfaces of `serve --listen`: the REST API under `/api/v1`, live events (SSE),
//! `/metrics` and the web page at `/`, on actix-web.
//!
//! actix-web's `HttpServer` runs on an actix `System` of its own, on the thread
//! `oauth-api`, beside the supervisor's System thread: the API reaches the actors only
//! through the `SupervisorHandle` (which works from any tokio runtime), so neither runtime
//! waits on the other.
//!
//! - `view`: the one mapping from `ServerStatus` to the API's server fields
//! - `servers`: gathering what a view needs from the supervisor
//! - `events`: the event pump and the bounded fan-out to SSE subscribers
//! - `metrics`: the Prometheus registry
//! - `auth`: the API key (constant-time check; where it comes from)
//! - `guard`: Host, Origin and the key, checked on every request the listener serves
//! - `limits`: the caps on connections and event subscribers, and the descriptor budget
//! - `error`: the one JSON error shape, and what each supervisor error answers
//! - `routes`: the handlers

pub mod auth;
pub(crate) mod error;
pub(crate) mod events;
pub mod guard;
pub mod limits;
pub(crate) mod metrics;
pub mod routes;
pub(crate) mod servers;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

pub use crate::auth_links::AuthLinks;
pub use auth::ApiKey;

use crate::supervisor::SupervisorHandle;
use events::EventHub;
use metrics::Metrics;

/// How the API is served.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Required on every listener, loopback included (`ApiServer::start` refuses to start
    /// without one); checked on every request.
    pub api_key: Option<ApiKey>,
    /// The most API connections open at once; beyond, a connection is answered 503 and closed.
    pub max_connections: usize,
    /// The most event subscribers at once; beyond, `GET /api/v1/events` answers 503.
    pub max_sse_subscribers: usize,
    /// Interval of the SSE `heartbeat` event.
    pub heartbeat: Duration,
    /// Events queued per SSE subscriber before it is dropped as too slow.
    pub subscriber_queue: usize,
    /// How long a POST action waits for its flow (or its authorization link) before
    /// answering 202 with the running flow's correlation ID.
    pub action_wait: Duration,
    /// The configured servers, for `diagnose` (which needs their client settings).
    pub servers: Vec<crate::config::UpstreamConfig>,
    /// The gateway's bounds and the servers it relays without OAuth (`/mcp/{server}`).
    pub gateway: crate::gateway::GatewayConfig,
}

impl ApiConfig {
    pub fn new(listen: SocketAddr) -> Self {
        ApiConfig {
            listen,
            api_key: None,
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            max_sse_subscribers: limits::DEFAULT_MAX_SSE_SUBSCRIBERS,
            heartbeat: Duration::from_secs(15),
            subscriber_queue: 256,
            action_wait: Duration::from_secs(20),
            servers: Vec::new(),
            gateway: crate::gateway::GatewayConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "--listen {0}: an API key is required on every listener, loopback included; serve creates \
         DATA_DIR/api-key, or give one with --api-key-file FILE or the environment variable {env}",
        env = auth::API_KEY_ENV
    )]
    KeyRequired(SocketAddr),
    #[error("cannot listen on {addr}: {source}; pick another --listen address or port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("API key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the API server thread could not start")]
    Thread,
    #[error("the OAuth supervisor has stopped; start the API on a running one")]
    SupervisorStopped,
}

/// The paths of the servers' public callback URLs, each once.
fn callback_paths(servers: &[crate::config::UpstreamConfig]) -> Vec<String> {
    let mut paths: Vec<String> = servers
        .iter()
        .filter_map(|s| s.callback_url.as_ref().map(|u| u.path().to_string()))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// HTTP worker threads of the API.
const WORKERS: usize = 2;

/// What every handler shares.
pub struct AppState {
    pub handle: SupervisorHandle,
    pub links: AuthLinks,
    pub hub: Arc<EventHub>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<limits::Limits>,
    pub config: ApiConfig,
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    stopped: Option<oneshot::Receiver<()>>,
}

impl ApiServer {
    /// Binds `config.listen` (errors are immediate) and serves on a thread of its own.
    /// `links` must be the one whose `wrap`ped launcher the supervisor uses.
    pub async fn start(
        handle: SupervisorHandle,
        links: AuthLinks,
        config: ApiConfig,
    ) -> Result<ApiServer, ApiError> {
        let Some(key) = config.api_key.clone() else {
            return Err(ApiError::KeyRequired(config.listen));
        };
        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| ApiError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: config.listen,
            source,
        })?;
        links.attach(handle.clone());
        let sources = events::Sources::subscribe(&handle, &links)
            .await
            .map_err(|_| ApiError::SupervisorStopped)?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("oauth-api".into())
            .spawn(move || {
                let served = actix_web::rt::System::new().block_on(async move {
                    let metrics = Arc::new(Metrics::new());
                    let limits = Arc::new(limits::Limits::new(
                        config.max_connections,
                        config.max_sse_subscribers,
                        metrics.clone(),
                    ));
                    let callback_paths = callback_paths(&config.servers);
                    let guard = actix_web::web::Data::new(
                        guard::Guard::new(key, addr).with_callback_paths(&callback_paths),
                    );
                    let hub = Arc::new(EventHub::new(config.subscriber_queue, metrics.clone()));
                    actix_web::rt::spawn(events::pump(
                        handle.clone(),
                        links.clone(),
                        hub.clone(),
                        metrics.clone(),
                        sources,
                    ));
                    let gateway = actix_web::web::Data::new(
                        crate::gateway::Gateway::new(
                            &handle,
                            Some(&links),
                            &config.gateway,
                            metrics.registry(),
                        )
                        .await,
                    );
                    let state = actix_web::web::Data::new(AppState {
                        handle,
                        links,
                        hub,
                        metrics,
                        limits: limits.clone(),
                        config,
                    });
                    let counted = limits.clone();
                    let server = actix_web::HttpServer::new(move || {
                        // Every route on the listener, whoever registers it, is behind the
                        // guard (but the public callback paths, see `guard`); the connection
                        // cap is checked before anything else.
                        actix_web::App::new()
                            .app_data(state.clone())
                            .app_data(guard.clone())
                            .app_data(gateway.clone())
                            // Before the API's routes: their scope answers every other path.
                            .configure(crate::gateway::configure)
                            .configure(|cfg| routes::configure_callbacks(cfg, &callback_paths))
                            .configure(routes::configure)
                            .wrap(routes::security_headers())
                            .wrap(actix_web::middleware::from_fn(guard::guard))
                            .wrap(actix_web::middleware::from_fn(limits::refuse_over_cap))
                    })
                    .on_connect(move |connection, data| counted.on_connect(connection, data))
                    .max_connections(limits.per_worker_ceiling(WORKERS))
                    // A client that goes away ends its connection at once (an event stream
                    // would otherwise keep its subscriber place until the next heartbeat).
                    .h1_allow_half_closed(false)
                    .workers(WORKERS)
                    .disable_signals()
                    // SSE streams never end by themselves: do not wait long for them.
                    .shutdown_timeout(1)
                    .listen(listener);
                    let server = match server {
                        Ok(s) => s.run(),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok(server.handle()));
                    server.await
                });
                if let Err(e) = served {
                    tracing::error!(error = %e, "the API server stopped with an error");
                }
                let _ = stopped_tx.send(());
            })
            .map_err(|_| ApiError::Thread)?;
        let server = ready_rx
            .await
            .map_err(|_| ApiError::Thread)?
            .map_err(|source| ApiError::Bind { addr, source })?;
        tracing::info!(%addr, "operator API and web page on http://{addr}/ (every request needs the API key)");
        Ok(ApiServer {
            addr,
            server,
            stopped: Some(stopped_rx),
        })
    }

    /// The bound address (the port is the ephemeral one when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends open connections, and waits for the API thread to finish.
    pub async fn stop(mut self) {
        self.server.stop(true).await;
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}
