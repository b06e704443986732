//! The supervisor and the library API. `SupervisorHandle::start` runs an actix `System` on its
//! own thread (the embedding runtime need not run actix), opens the token registry, and starts
//! one `UpstreamActor` per server under `actix::Supervisor`, which restarts an actor that
//! stops. The handle routes calls by server name straight to the actors; `access_token()` first
//! reads the server's published snapshot without touching any mailbox.
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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwapOption;
use tokio::sync::{broadcast, oneshot};

pub mod clock;

use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::http::OAuthHttp;
use crate::scheduler::{Due, Owner, Scheduler, SchedulerConfig, SchedulerCounters, TimerKind};
use crate::store::db::FlowRow;
use crate::store::{StoreError, TokenRegistry, TokenStatusRow};
use crate::telemetry::flow_logger::{
    FlowLogger, FlowNotice, GetTrace, SubscribeNotices, TraceEntry,
};
use crate::upstream::actor::{
    self, Grant, ServerStatus, Snapshot, StateChange, TokenSnapshot, UpstreamActor, UpstreamError,
};
pub use crate::upstream::flows::FlowHook;
use crate::upstream::flows::Runtime;
use crate::upstream::state::Policy;

/// Everything the supervisor needs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub servers: Vec<UpstreamConfig>,
    /// Holds `tokens.db` and the `locks/` folder.
    pub data_dir: PathBuf,
    pub browser: BrowserLauncher,
    pub policy: Policy,
    /// How long a browser login may take.
    pub login_timeout: Duration,
    /// Bound of every OAuth HTTP request but refreshes.
    pub http_timeout: Duration,
    /// Bound of a refresh request: generous, because abandoning a refresh the server has
    /// already processed costs the refresh token on servers that rotate it.
    pub refresh_timeout: Duration,
    /// How long `shutdown` waits for running refreshes and their saves.
    pub shutdown_grace: Duration,
    /// At most this many refreshes run at once, over all servers (the scheduler's flow limit).
    pub max_concurrent_refreshes: usize,
    /// Worker threads of the runtime that runs flows' HTTP and TLS.
    pub flow_threads: usize,
    /// The most a proactive refresh is moved later so refreshes due together are spread
    /// (never past the moment its token stops being handed out).
    pub refresh_stagger: Duration,
    /// Test-only: called at the start of every flow with the server's name and the flow's
    /// kind (tests inject panics with it).
    #[doc(hidden)]
    pub flow_hook: Option<FlowHook>,
    /// How often the store is checked for tokens stored or deleted by another process
    /// (`auth login`, `auth logout`, another daemon).
    pub store_poll_interval: Duration,
    /// How the store's secret columns are protected (default: encrypted, see `store::keys`).
    pub sealing: crate::store::Sealing,
    /// Where the tokens live (default: SQLite, `data_dir/tokens.db`). PostgreSQL is refused
    /// by `SupervisorHandle::start` until the daemon is wired to it (#21, part 2).
    pub store: crate::store::StoreChoice,
}

impl SupervisorConfig {
    pub fn new(servers: Vec<UpstreamConfig>, data_dir: PathBuf) -> Self {
        SupervisorConfig {
            servers,
            data_dir,
            browser: BrowserLauncher::from_settings(None, false),
            policy: Policy::default(),
            login_timeout: Duration::from_secs(300),
            http_timeout: Duration::from_secs(15),
            refresh_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            flow_hook: None,
            max_concurrent_refreshes: default_refresh_limit(),
            flow_threads: default_flow_threads(),
            refresh_stagger: SchedulerConfig::default().stagger,
            store_poll_interval: Duration::from_secs(1),
            sealing: crate::store::Sealing::default(),
            store: crate::store::StoreChoice::default(),
        }
    }
}

/// 16 refreshes per core, between 8 and 256: each holds a connection and a lock file.
pub fn default_refresh_limit() -> usize {
    crate::scheduler::default_flow_limit()
}

/// One flow thread per core, between 2 and 8: flows mostly wait for the network.
pub fn default_flow_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.clamp(2, 8)
}

/// `$XDG_DATA_HOME/mcpproxy-oauth`, else `~/.local/share/mcpproxy-oauth`.
pub fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("mcpproxy-oauth")
}

pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens.db")
}

/// What the library's calls can fail with. Match on the variants (and on
/// `UpstreamError::failure`), or use [`SupervisorError::code`]: never on the message.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown server {name:?}; configured servers: {configured}")]
    UnknownServer { name: String, configured: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the OAuth supervisor has stopped")]
    Stopped,
    /// An argument the caller gave is not what the call takes (the message says what).
    #[error("{0}")]
    InvalidInput(String),
}

impl SupervisorError {
    /// A stable name for the error: `unknown_server`, `stopped`, `store`, or the upstream
    /// failure's kind (`needs_login`, `backing_off`, `retrying`, `client_rejected`,
    /// `login_failed`, `logged_out`, `forbidden`, `store`, `stopped`).
    pub fn code(&self) -> &'static str {
        use crate::upstream::state::Failure;
        match self {
            SupervisorError::UnknownServer { .. } => "unknown_server",
            SupervisorError::Store(_) => "store",
            SupervisorError::Stopped => "stopped",
            SupervisorError::InvalidInput(_) => "invalid_input",
            SupervisorError::Upstream(e) => match e.failure {
                Failure::NeedsLogin { .. } => "needs_login",
                Failure::BackingOff { .. } => "backing_off",
                Failure::Retrying { .. } => "retrying",
                Failure::ClientRejected { .. } => "client_rejected",
                Failure::LoginFailed { .. } => "login_failed",
                Failure::LoggedOut => "logged_out",
                Failure::Forbidden { .. } => "forbidden",
                Failure::Store { .. } => "store",
                Failure::Stopped => "stopped",
            },
        }
    }

    /// The typed failure of the server, where the server answered.
    pub fn failure(&self) -> Option<&crate::upstream::state::Failure> {
        match self {
            SupervisorError::Upstream(e) => Some(&e.failure),
            _ => None,
        }
    }

    /// The correlation ID of the flow that failed, where a flow failed.
    pub fn flow_id(&self) -> Option<&str> {
        match self {
            SupervisorError::Upstream(e) => e.flow_id.as_deref(),
            _ => None,
        }
    }
}

/// Answers for all servers at once, and watches the store for other processes' writes.
pub struct SupervisorActor {
    upstreams: Vec<Addr<UpstreamActor>>,
    registry: TokenRegistry,
    scheduler: Scheduler,
    /// This actor's id in the scheduler and its waiting store poll.
    owner: Owner,
    poll: Option<u64>,
    store_poll_interval: Duration,
    /// `PRAGMA data_version` at the last look: it changes only when another connection (another
    /// process) commits, so polling it costs one pragma, not a query per server.
    data_version: Option<i64>,
}

impl SupervisorActor {
    /// Arms the next look at the store, one interval from now (at least 10 ms: a zero
    /// interval would look without pause).
    fn arm_poll(&mut self, ctx: &mut Context<Self>) {
        let (arming, _) = self.scheduler.arm(
            self.owner,
            TimerKind::StorePoll,
            tokio::time::Instant::now() + self.store_poll_interval.max(Duration::from_millis(10)),
            None,
            ctx.address().downgrade().recipient(),
        );
        self.poll = Some(arming);
    }
}

impl Actor for SupervisorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.arm_poll(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.scheduler.forget(self.owner);
    }
}

impl Handler<Due> for SupervisorActor {
    type Result = ();
    fn handle(&mut self, due: Due, ctx: &mut Context<Self>) {
        if due.kind != TimerKind::StorePoll || self.poll != Some(due.arming) {
            return;
        }
        let registry = self.registry.clone();
        let look = async move { registry.call(|s| s.data_version()).await };
        ctx.spawn(look.into_actor(self).map(|version, act, ctx| {
            // The next look is armed once this one is answered: a slow registry never has
            // looks piling up in its queue.
            act.arm_poll(ctx);
            let Ok(version) = version else { return };
            // The first look checks too: another process may have written between the
            // actors' first loads and this baseline.
            let changed = act.data_version != Some(version);
            act.data_version = Some(version);
            if changed {
                tracing::debug!("the token store was changed by another process");
                for upstream in &act.upstreams {
                    upstream.do_send(actor::CheckStore);
                }
            }
        }));
    }
}

#[derive(Message)]
#[rtype(result = "Vec<ServerStatus>")]
pub struct AllStatus;

impl Handler<AllStatus> for SupervisorActor {
    type Result = ResponseFuture<Vec<ServerStatus>>;
    fn handle(&mut self, _: AllStatus, _: &mut Context<Self>) -> Self::Result {
        let upstreams = self.upstreams.clone();
        Box::pin(async move {
            let mut statuses = Vec::with_capacity(upstreams.len());
            for addr in upstreams {
                if let Ok(status) = addr.send(actor::GetStatus).await {
                    statuses.push(status);
                }
            }
            statuses
        })
    }
}

struct Upstream {
    addr: Addr<UpstreamActor>,
    snapshot: Snapshot,
}

/// The servers by name. Names come from the operator's config, not from the network, so the
/// lookup on the hot path hashes with FNV-1a (a few ns for a short name) instead of SipHash's
/// flood resistance.
type Upstreams = HashMap<String, Upstream, BuildHasherDefault<NameHasher>>;

/// FNV-1a, 64 bits.
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A usable access token as handed out: a shared, immutable value (cloning it is a reference
/// count, not a copy of the secret). `Debug` shows no secret and there is no `Display`.
#[derive(Clone)]
pub struct SharedAccessToken(Arc<TokenSnapshot>);

impl SharedAccessToken {
    /// The token itself, for the `Authorization` header.
    pub fn secret(&self) -> &String {
        self.0.access_token.secret()
    }

    /// When it expires (unix ms), if the server said.
    pub fn expires_at(&self) -> Option<i64> {
        self.0.expires_at
    }

    /// `Bearer`, or `DPoP` for a token bound to the server's key (RFC 9449): the scheme of
    /// the `Authorization` header, and the sign that each request needs [`Self::dpop_proof`].
    pub fn token_type(&self) -> &str {
        &self.0.token_type
    }

    /// Whether requests with this token must carry a DPoP proof (its type is `DPoP`).
    pub fn is_dpop(&self) -> bool {
        crate::oauth::dpop::is_dpop_type(&self.0.token_type)
    }

    /// The `Authorization` header value: `Bearer <token>` or `DPoP <token>` (a secret).
    pub fn authorization(&self) -> String {
        let scheme = if self.is_dpop() { "DPoP" } else { "Bearer" };
        format!("{scheme} {}", self.secret())
    }

    /// For a DPoP-bound token: the `DPoP` header value for one request (RFC 9449 §4, §7), a
    /// fresh proof each call, with `ath` of this token and the nonce the resource last
    /// handed out for `url`. `None` for a Bearer token (and for a DPoP token whose stored key
    /// cannot be used: the resource refuses it, and the 401 reported leads to a login). A
    /// proof is a short-lived credential: never log it.
    pub fn dpop_proof(&self, method: &str, url: &str) -> Option<String> {
        let dpop = self.0.dpop.as_ref().filter(|_| self.is_dpop())?;
        Some(dpop.proof(method, url, Some(self.secret())))
    }

    /// Give every answer of the resource to this: a `DPoP-Nonce` header (RFC 9449 §9) is
    /// remembered for the next proofs to `url`. Returns whether the answer brought one: a 401
    /// `error="use_dpop_nonce"` that did is retried once with a new proof, and is not a reason
    /// to `report_unauthorized` (the token is fine).
    pub fn remember_dpop_nonce(&self, url: &str, headers: &http::HeaderMap) -> bool {
        self.0
            .dpop
            .as_ref()
            .is_some_and(|dpop| dpop.remember_nonce(url, headers))
    }
}

impl std::fmt::Debug for SharedAccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAccessToken")
            .field("expires_at", &self.0.expires_at)
            .field("token_type", &self.0.token_type)
            .finish_non_exhaustive()
    }
}

impl From<Grant> for SharedAccessToken {
    fn from(grant: Grant) -> Self {
        SharedAccessToken(Arc::new(
            TokenSnapshot::new(grant.access_token, grant.expires_at, 0)
                .bound(&grant.token_type, grant.dpop),
        ))
    }
}

/// The hot path: the published snapshot if it is still usable. No lock, no message, no
/// allocation (the snapshot's `Arc` is shared); one clock read, coarse where the token's
/// safety margin allows it (`clock`).
#[inline]
fn usable_token(snapshot: &Snapshot) -> Option<SharedAccessToken> {
    let guard = snapshot.load();
    let token = guard.as_ref()?;
    token
        .usable_now()
        .then(|| SharedAccessToken(Arc::clone(token)))
}

/// A handle on one server's tokens (`Send + Sync + Clone`), from `SupervisorHandle::server_tokens`.
#[derive(Clone)]
pub struct ServerTokens {
    snapshot: Snapshot,
    addr: Addr<UpstreamActor>,
}

impl ServerTokens {
    /// The published token if it is still usable: a lock-free read, no message.
    pub fn cached_access_token(&self) -> Option<SharedAccessToken> {
        usable_token(&self.snapshot)
    }

    /// A token valid for at least its safety margin, asking the server's actor only when the
    /// published one is not.
    pub async fn access_token(&self) -> Result<SharedAccessToken, SupervisorError> {
        if let Some(token) = self.cached_access_token() {
            return Ok(token);
        }
        Ok(self
            .addr
            .send(actor::AccessToken)
            .await
            .map_err(|_| SupervisorError::Stopped)??
            .into())
    }
}

struct Parts {
    runtime: Arc<Runtime>,
    upstreams: Upstreams,
    supervisor: Addr<SupervisorActor>,
    registry: TokenRegistry,
    moved_aside: Option<PathBuf>,
    flow_log: Addr<FlowLogger>,
}

struct Inner {
    runtime: Arc<Runtime>,
    upstreams: Upstreams,
    names: Vec<String>,
    supervisor: Addr<SupervisorActor>,
    registry: TokenRegistry,
    events: broadcast::Sender<StateChange>,
    moved_aside: Option<PathBuf>,
    flow_log: Addr<FlowLogger>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
    shutdown_grace: Duration,
}

/// The library API: `Send + Sync + Clone`, usable from any tokio runtime.
#[derive(Clone)]
pub struct SupervisorHandle {
    inner: Arc<Inner>,
}

fn build(
    config: SupervisorConfig,
    events: broadcast::Sender<StateChange>,
    flow_threads: tokio::runtime::Handle,
) -> Result<Parts, SupervisorError> {
    let (registry, moved_aside) =
        TokenRegistry::start_with(&database_path(&config.data_dir), &config.sealing)?;
    let flow_log = FlowLogger::default().start();
    let scheduler = Scheduler::new(SchedulerConfig {
        stagger: config.refresh_stagger,
        flow_limit: config.max_concurrent_refreshes,
        ..SchedulerConfig::default()
    });
    flow_threads.spawn(scheduler.clone().run());
    let runtime = Arc::new(Runtime {
        registry: registry.clone(),
        http: OAuthHttp::new(config.http_timeout),
        refresh_http: OAuthHttp::new(config.refresh_timeout),
        lock_dir: config.data_dir.join("locks"),
        browser: config.browser.clone(),
        owner: format!("pid {} ({})", std::process::id(), uuid::Uuid::new_v4()),
        login_timeout: config.login_timeout,
        flow_log: flow_log.clone(),
        flow_hook: config.flow_hook.clone(),
        scheduler: scheduler.clone(),
        flow_threads,
    });
    let mut upstreams = Upstreams::default();
    for server in config.servers {
        let server = Arc::new(server);
        let snapshot: Snapshot = Arc::new(ArcSwapOption::empty());
        let (rt, policy, snap, events) = (
            runtime.clone(),
            config.policy,
            snapshot.clone(),
            events.clone(),
        );
        let name = server.name.clone();
        let addr = actix::Supervisor::start(move |_| {
            UpstreamActor::new(
                server.clone(),
                rt.clone(),
                policy,
                snap.clone(),
                events.clone(),
            )
        });
        upstreams.insert(name, Upstream { addr, snapshot });
    }
    let supervisor = SupervisorActor {
        upstreams: upstreams.values().map(|u| u.addr.clone()).collect(),
        registry: registry.clone(),
        owner: scheduler.new_owner(),
        poll: None,
        scheduler,
        store_poll_interval: config.store_poll_interval,
        data_version: None,
    }
    .start();
    Ok(Parts {
        runtime,
        upstreams,
        supervisor,
        registry,
        moved_aside,
        flow_log,
    })
}

impl SupervisorHandle {
    /// Opens the token store and starts one actor per server on a dedicated thread.
    pub async fn start(config: SupervisorConfig) -> Result<Self, SupervisorError> {
        if let crate::store::StoreChoice::Postgres(url) = &config.store {
            return Err(SupervisorError::InvalidInput(format!(
                "the daemon does not run on a PostgreSQL store yet ({url}); leave the store at \
                 SQLite (the library's store::Store already opens PostgreSQL)"
            )));
        }
        let mut names: Vec<String> = config.servers.iter().map(|s| s.name.clone()).collect();
        names.sort();
        let (events, _) = broadcast::channel(256);
        let shutdown_grace = config.shutdown_grace;
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
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("oauth-actors".into())
            .spawn(move || {
                let flows = flow_threads.handle().clone();
                actix_rt::System::new().block_on(async move {
                    match build(config, thread_events, flows) {
                        Ok(parts) => {
                            let (registry, scheduler) =
                                (parts.registry.clone(), parts.runtime.scheduler.clone());
                            let _ = ready_tx.send(Ok(parts));
                            let _ = stop_rx.await;
                            scheduler.stop();
                            // Queued store writes finish before the system goes away.
                            let _ = registry.call(|_| Ok(())).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                // Flows still running after the grace are dropped with the runtime.
                flow_threads.shutdown_timeout(Duration::from_secs(1));
                let _ = stopped_tx.send(());
            })
            .map_err(|_| SupervisorError::Stopped)?;
        let parts = ready_rx.await.map_err(|_| SupervisorError::Stopped)??;
        if let Some(aside) = &parts.moved_aside {
            tracing::error!(moved_to = %aside.display(), "the token database was corrupt and was moved aside; servers will log in again");
        }
        Ok(SupervisorHandle {
            inner: Arc::new(Inner {
                runtime: parts.runtime,
                upstreams: parts.upstreams,
                names,
                supervisor: parts.supervisor,
                registry: parts.registry,
                events,
                moved_aside: parts.moved_aside,
                flow_log: parts.flow_log,
                stop: Mutex::new(Some(stop_tx)),
                stopped: Mutex::new(Some(stopped_rx)),
                shutdown_grace,
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
                access_token: access_token.into(),
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
                access_token: access_token.into(),
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
                "a protocol version is 1 to 32 characters of letters, digits, '.', '_' and '-' (like 2026-07-28); got {} characters that are not",
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
        let mut statuses = self
            .inner
            .supervisor
            .send(AllStatus)
            .await
            .map_err(|_| SupervisorError::Stopped)?;
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(statuses)
    }

    /// The `oauth_token_status` view of the database.
    pub async fn token_status(&self) -> Result<Vec<TokenStatusRow>, SupervisorError> {
        Ok(self.inner.registry.call(|s| s.token_status()).await?)
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
            .registry
            .call(move |s| s.flows(server.as_deref(), flow_id.as_deref(), limit))
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

    /// Where a corrupt database was moved at start, if it was.
    pub fn database_moved_aside(&self) -> Option<&Path> {
        self.inner.moved_aside.as_deref()
    }

    /// Stops every actor: nothing new starts, running refreshes and unsaved tokens get up to
    /// `shutdown_grace` to reach the store, then queued store writes finish. Other clones stop
    /// working too.
    pub async fn shutdown(&self) {
        let drains = self
            .inner
            .upstreams
            .values()
            .map(|u| u.addr.send(actor::Drain));
        if tokio::time::timeout(
            self.inner.shutdown_grace,
            futures_util::future::join_all(drains),
        )
        .await
        .is_err()
        {
            tracing::warn!(grace = ?self.inner.shutdown_grace, "stopping with flows still running");
        }
        let stop = self
            .inner
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let stopped = self
            .inner
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}
