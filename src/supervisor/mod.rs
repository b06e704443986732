//! The supervisor and the library API. `SupervisorHandle::start` runs an actix `System` on its
//! own thread (the embedding runtime need not run actix), opens the token registry, and starts
//! one `UpstreamActor` per server under `actix::Supervisor`, which restarts an actor that
//! stops, and the `StoreWatcher`. The handle routes calls by server name straight to the
//! actors; `access_token()` first reads the server's published snapshot without touching any
//! mailbox (`tokens`). Its other rooms: `config` (what it starts with), `error` (what its calls
//! fail with), `store_watcher`, `shutdown`.
//!
//! ```no_run
//! # async fn embed() -> Result<(), Box<dyn std::error::Error>> {
//! use mcpproxy_oauth::config::UpstreamConfig;
//! use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
//! let server = UpstreamConfig::new("github", "https://api.example/mcp".parse()?);
//! let oauth = SupervisorHandle::start(SupervisorConfig::new(vec![server], "/var/lib/mcpproxy".into())).await?;
//! oauth.reconnect("github").await?;                 // loads, refreshes or logs in
//! let token = oauth.access_token("github").await?;  // lock-free while valid
//! // ... call the MCP server with `token.secret()`; on a 401:
//! let fresh = oauth.report_unauthorized("github", token.secret(), None).await?;
//! oauth.shutdown().await;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwapOption;
use tokio::sync::{broadcast, oneshot};

mod config;
mod error;
mod shutdown;
mod store_watcher;
mod tokens;

/// The hot path's clock (moved to [`crate::clock::coarse`]).
pub use crate::clock::coarse as clock;
pub use config::{
    SupervisorConfig, database_path, default_data_dir, default_flow_threads, default_refresh_limit,
};
pub use error::SupervisorError;
pub use store_watcher::StoreWatcher;
pub use tokens::{ServerTokens, SharedAccessToken};

use crate::mcp::BearerChallenge;
use crate::oauth::http::OAuthHttp;
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerCounters};
use crate::store::db::FlowRow;
use crate::store::{
    LeaseRow, Store, StoreChoice, StoreHealth, StoreOptions, TokenRegistry, TokenStatusRow,
};
use crate::telemetry::flow_logger::{
    FlowLogger, FlowNotice, GetTrace, SubscribeNotices, TraceEntry,
};
use crate::upstream::actor::{
    self, Grant, ServerStatus, Snapshot, StateChange, UpstreamActor, UpstreamError,
};
pub use crate::upstream::flows::FlowHook;
use crate::upstream::flows::Runtime;
use crate::upstream::state::TokenId;
use shutdown::{Shutdown, Stopping};
use tokens::{Upstream, Upstreams, usable_token};

struct Parts {
    runtime: Arc<Runtime>,
    upstreams: Upstreams,
    store_watcher: Addr<StoreWatcher>,
    store: Store,
    moved_aside: Option<PathBuf>,
    flow_log: Addr<FlowLogger>,
}

struct Inner {
    runtime: Arc<Runtime>,
    upstreams: Upstreams,
    /// Held so the watcher lives as long as the handle (an actor whose addresses are all
    /// gone stops).
    _store_watcher: Addr<StoreWatcher>,
    names: Vec<String>,
    store: Store,
    events: broadcast::Sender<StateChange>,
    moved_aside: Option<PathBuf>,
    flow_log: Addr<FlowLogger>,
    shutdown: Shutdown,
}

/// The library API: `Send + Sync + Clone`, usable from any tokio runtime.
#[derive(Clone)]
pub struct SupervisorHandle {
    inner: Arc<Inner>,
}

/// Opens the store `config.store` names: SQLite in the data directory (the registry actor,
/// a corrupt file moved aside), or PostgreSQL (the pool and its change listener).
async fn open_store(
    config: &SupervisorConfig,
) -> Result<(Store, Option<PathBuf>), SupervisorError> {
    match &config.store {
        StoreChoice::Sqlite => {
            let (registry, moved_aside) =
                TokenRegistry::start_with(&database_path(&config.data_dir), &config.sealing)?;
            Ok((
                Store::sqlite(registry, config.store_poll_interval),
                moved_aside,
            ))
        }
        StoreChoice::Postgres(_) => {
            let options = StoreOptions {
                poll_interval: config.store_poll_interval,
                ..StoreOptions::default()
            };
            let database = database_path(&config.data_dir);
            let store = Store::open(&config.store, &database, &config.sealing, options).await?;
            Ok((store, None))
        }
    }
}

/// Opens the store and starts the actors, on the actors' thread.
async fn build(
    config: SupervisorConfig,
    events: broadcast::Sender<StateChange>,
    flow_threads: tokio::runtime::Handle,
) -> Result<Parts, SupervisorError> {
    config.check_limits()?;
    let (store, moved_aside) = open_store(&config).await?;
    let flow_log = FlowLogger::default().start();
    let scheduler_config = SchedulerConfig {
        stagger: config.refresh_stagger,
        flow_limit: config.max_concurrent_refreshes,
        login_limit: config.max_concurrent_logins,
        tab_limit: config.max_browser_tabs,
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::with_clock(scheduler_config, config.clock.clone());
    flow_threads.spawn(scheduler.clone().run());
    let runtime = Arc::new(Runtime {
        store: store.clone(),
        http: OAuthHttp::new(config.http_timeout),
        refresh_http: OAuthHttp::new(config.refresh_timeout),
        refresh_timeout: config.refresh_timeout,
        lock_dir: config.data_dir.join("locks"),
        browser: config.browser.clone(),
        owner: format!("pid {} ({})", std::process::id(), uuid::Uuid::new_v4()),
        login_timeout: config.login_timeout,
        flow_log: flow_log.clone(),
        flow_hook: config.flow_hook.clone(),
        scheduler: scheduler.clone(),
        flow_threads,
        clock: config.clock.clone(),
        callbacks: Default::default(),
    });
    let mut named = Vec::with_capacity(config.servers.len());
    let mut watched = Vec::with_capacity(config.servers.len());
    for server in config.servers {
        let server = Arc::new(server);
        let server_key = server.server_key.clone();
        let snapshot: Snapshot = Arc::new(ArcSwapOption::empty());
        let (rt, policy, snap, events) = (
            runtime.clone(),
            config.policy,
            snapshot.clone(),
            events.clone(),
        );
        let name = server.name.clone();
        let addr = actix::Supervisor::start(move |_| {
            let (rt, snap, events) = (rt.clone(), snap.clone(), events.clone());
            UpstreamActor::new(server.clone(), rt, policy, snap, events)
        });
        watched.push((server_key, addr.clone()));
        named.push((name, Upstream { addr, snapshot }));
    }
    let upstreams = Upstreams::new(named);
    let store_watcher = StoreWatcher::new(
        watched,
        store.clone(),
        scheduler,
        config.clock,
        config.store_poll_interval,
    )
    .start();
    Ok(Parts {
        runtime,
        upstreams,
        store_watcher,
        store,
        moved_aside,
        flow_log,
    })
}

/// The actors' thread: the actix system with every actor, until the shutdown stops it.
fn run_actors(
    config: SupervisorConfig,
    events: broadcast::Sender<StateChange>,
    flow_threads: tokio::runtime::Runtime,
    ready: oneshot::Sender<Result<Parts, SupervisorError>>,
    mut stopping: Stopping,
) {
    let flows = flow_threads.handle().clone();
    let requested = stopping.requested();
    actix_rt::System::new().block_on(async move {
        match build(config, events, flows).await {
            Ok(parts) => {
                let (store, scheduler) = (parts.store.clone(), parts.runtime.scheduler.clone());
                let _ = ready.send(Ok(parts));
                requested.await;
                scheduler.stop();
                // Queued store writes finish before the system goes away (SQLite's registry;
                // PostgreSQL's writes are answered once committed).
                if let Store::Sqlite(sqlite) = &store {
                    let _ = sqlite.registry().call(|_| Ok(())).await;
                }
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    });
    // Flows still running after the grace are dropped with the runtime.
    flow_threads.shutdown_timeout(Duration::from_secs(1));
    stopping.done();
}

impl SupervisorHandle {
    /// Opens the token store and starts one actor per server on a dedicated thread.
    pub async fn start(config: SupervisorConfig) -> Result<Self, SupervisorError> {
        let mut names: Vec<String> = config.servers.iter().map(|s| s.name.clone()).collect();
        names.sort();
        let (events, _) = broadcast::channel(256);
        let (shutdown, stopping) = shutdown::shutdown(config.shutdown_grace);
        let thread_events = events.clone();
        let flow_threads = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.flow_threads.max(1))
            .thread_name("oauth-flows")
            .enable_all()
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the flow threads");
                SupervisorError::Stopped
            })?;
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("oauth-actors".into())
            .spawn(move || run_actors(config, thread_events, flow_threads, ready_tx, stopping))
            .map_err(|_| SupervisorError::Stopped)?;
        let parts = ready_rx.await.map_err(|_| SupervisorError::Stopped)??;
        if let Some(aside) = &parts.moved_aside {
            tracing::error!(
                moved_to = %aside.display(),
                "the token database was corrupt and was moved aside; servers will log in again"
            );
        }
        Ok(SupervisorHandle {
            inner: Arc::new(Inner {
                runtime: parts.runtime,
                upstreams: parts.upstreams,
                _store_watcher: parts.store_watcher,
                names,
                store: parts.store,
                events,
                moved_aside: parts.moved_aside,
                flow_log: parts.flow_log,
                shutdown,
            }),
        })
    }

    fn upstream(&self, name: &str) -> Result<&Upstream, SupervisorError> {
        self.inner
            .upstreams
            .get(name)
            .ok_or_else(|| SupervisorError::UnknownServer {
                name: name.into(),
                configured: self.inner.names.join(", "),
            })
    }

    async fn ask<M>(&self, name: &str, message: M) -> Result<Grant, SupervisorError>
    where
        M: Message<Result = Result<Grant, UpstreamError>> + Send + 'static,
        UpstreamActor: Handler<M>,
    {
        let addr = &self.upstream(name)?.addr;
        Ok(addr
            .send(message)
            .await
            .map_err(|_| SupervisorError::Stopped)??)
    }

    /// The configured server names, sorted.
    pub fn servers(&self) -> &[String] {
        &self.inner.names
    }

    /// Where an authorization response pasted back, or sent to the public callback path,
    /// reaches its waiting login.
    pub fn callbacks(&self) -> &crate::oauth::callback::Callbacks {
        &self.inner.runtime.callbacks
    }

    /// Makes the server usable: loads the persisted token, refreshes it, or logs in.
    pub async fn reconnect(&self, name: &str) -> Result<Grant, SupervisorError> {
        self.ask(name, actor::Reconnect).await
    }

    /// A token valid for at least its safety margin. Lock-free while the current one is.
    pub async fn access_token(&self, name: &str) -> Result<SharedAccessToken, SupervisorError> {
        if let Some(token) = self.cached_access_token(name)? {
            return Ok(token);
        }
        Ok(self.ask(name, actor::AccessToken).await?.into())
    }

    /// The hot path alone: the published token if it is still usable, without any message.
    pub fn cached_access_token(
        &self,
        name: &str,
    ) -> Result<Option<SharedAccessToken>, SupervisorError> {
        Ok(usable_token(&self.upstream(name)?.snapshot))
    }

    /// One server's tokens, for callers that ask often: no lookup by name on each call.
    pub fn server_tokens(&self, name: &str) -> Result<ServerTokens, SupervisorError> {
        let upstream = self.upstream(name)?;
        Ok(ServerTokens {
            snapshot: upstream.snapshot.clone(),
            addr: upstream.addr.clone(),
        })
    }

    /// The upstream answered 401 to `access_token`: refresh once for everyone, or hand back the
    /// newer token if this one was already replaced.
    pub async fn report_unauthorized(
        &self,
        name: &str,
        access_token: &str,
        challenge: Option<BearerChallenge>,
    ) -> Result<Grant, SupervisorError> {
        self.ask(
            name,
            actor::ReportUnauthorized {
                token: TokenId::of(access_token),
                challenge,
            },
        )
        .await
    }

    /// The upstream answered 403 to `access_token` with `challenge`. For `insufficient_scope`
    /// naming scope not yet granted, one login asks for the union of the granted and the
    /// demanded scopes (SEP-2350) and everyone gets its token; a demand already granted, or a
    /// 403 of another kind, is `forbidden` (more scope would not help). Step-ups are bounded
    /// (`Policy::max_step_ups` until a token lives to its proactive refresh); a host that may
    /// not open a browser by itself hears `needs_login` with the scope to log in for.
    pub async fn report_forbidden(
        &self,
        name: &str,
        access_token: &str,
        challenge: BearerChallenge,
    ) -> Result<Grant, SupervisorError> {
        self.ask(
            name,
            actor::ReportForbidden {
                token: TokenId::of(access_token),
                challenge,
            },
        )
        .await
    }

    /// The MCP protocol version the embedding runtime negotiated with the server (it makes the
    /// MCP requests; the daemon does not), shown in status and the API until it reports
    /// another. A version is 1 to 32 characters of `A-Z a-z 0-9 . _ -` (`2026-07-28`).
    pub async fn report_protocol_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(), SupervisorError> {
        let valid = (1..=32).contains(&version.len())
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(SupervisorError::InvalidInput(format!(
                "a protocol version is 1 to 32 characters of letters, digits, '.', '_' and '-' (like \
                 2026-07-28); got {} characters that are not",
                version.chars().count()
            )));
        }
        self.upstream(name)?
            .addr
            .send(actor::ReportProtocolVersion(version.to_string()))
            .await
            .map_err(|_| SupervisorError::Stopped)
    }

    /// Runs a browser login now, whatever the browser rate limit says.
    pub async fn login(&self, name: &str) -> Result<Grant, SupervisorError> {
        self.ask(name, actor::Login).await
    }

    pub async fn refresh(&self, name: &str) -> Result<Grant, SupervisorError> {
        self.ask(name, actor::Refresh).await
    }

    /// Forgets the server's token here and revokes it at the server where it offers RFC 7009.
    pub async fn logout(&self, name: &str) -> Result<(), SupervisorError> {
        let addr = &self.upstream(name)?.addr;
        Ok(addr
            .send(actor::Logout)
            .await
            .map_err(|_| SupervisorError::Stopped)??)
    }

    /// Every server's state; never waits for a flow.
    pub async fn status(&self) -> Result<Vec<ServerStatus>, SupervisorError> {
        let asks = self
            .inner
            .upstreams
            .values()
            .map(|u| u.addr.send(actor::GetStatus));
        let mut statuses: Vec<ServerStatus> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(statuses)
    }

    /// One server's state, asking only its actor; never waits for a flow.
    pub async fn server_status(&self, name: &str) -> Result<ServerStatus, SupervisorError> {
        self.upstream(name)?
            .addr
            .send(actor::GetStatus)
            .await
            .map_err(|_| SupervisorError::Stopped)
    }

    /// The `oauth_token_status` view of the database.
    pub async fn token_status(&self) -> Result<Vec<TokenStatusRow>, SupervisorError> {
        Ok(self.inner.store.token_status().await?)
    }

    /// The last events of a recent flow (bounded), in order.
    pub async fn flow_trace(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<TraceEntry>, SupervisorError> {
        self.inner
            .flow_log
            .send(GetTrace(correlation_id.into()))
            .await
            .map_err(|_| SupervisorError::Stopped)
    }

    /// Recent flows from the database (any process's), newest first, of one server or all.
    pub async fn flows(
        &self,
        server: Option<String>,
        flow_id: Option<String>,
        limit: u32,
    ) -> Result<Vec<FlowRow>, SupervisorError> {
        Ok(self
            .inner
            .store
            .flows(server.as_deref(), flow_id.as_deref(), limit)
            .await?)
    }

    /// Every flow event of this process (the steps of `flow_trace`), from now on.
    pub async fn flow_notices(&self) -> Result<broadcast::Receiver<FlowNotice>, SupervisorError> {
        self.inner
            .flow_log
            .send(SubscribeNotices)
            .await
            .map_err(|_| SupervisorError::Stopped)
    }

    /// Refreshes running now and the most that ran at once (bounded by
    /// `max_concurrent_refreshes`).
    pub fn refresh_concurrency(&self) -> (usize, usize) {
        let c = self.scheduler_counters();
        (c.flows_running, c.flows_peak)
    }

    /// The scheduler's counters: waiting deadlines, firings (late ones and the worst
    /// lateness), flows running and their peak, logins running.
    pub fn scheduler_counters(&self) -> SchedulerCounters {
        self.inner.runtime.scheduler.counters()
    }

    /// Phase changes of every server, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.inner.events.subscribe()
    }

    /// Every server's lease row (who holds or last held it, its fence, until when), by
    /// server key.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, SupervisorError> {
        Ok(self.inner.store.leases().await?)
    }

    /// One server's lease row, by server key.
    pub async fn lease(&self, server_key: &str) -> Result<Option<LeaseRow>, SupervisorError> {
        Ok(self.inner.store.lease(server_key).await?)
    }

    /// Whether the store answers now (bounded), and where it is.
    pub async fn store_health(&self) -> StoreHealth {
        self.inner.store.health().await
    }

    /// The store this daemon runs on.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Where a corrupt database was moved at start, if it was.
    pub fn database_moved_aside(&self) -> Option<&Path> {
        self.inner.moved_aside.as_deref()
    }

    /// Stops every actor: nothing new starts, running refreshes and unsaved tokens get up to
    /// `shutdown_grace` to reach the store, then queued store writes finish. Other clones stop
    /// working too (`shutdown.rs` says how each part takes part).
    pub async fn shutdown(&self) {
        self.inner.runtime.scheduler.close_logins();
        let upstreams = self.inner.upstreams.values().map(|u| &u.addr);
        self.inner.shutdown.run(upstreams).await;
    }
}
