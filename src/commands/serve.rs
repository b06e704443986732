//! `serve`: the daemon, with the operator API when `--listen` is given.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use mcpproxy_oauth::api::auth::resolve_key;
use mcpproxy_oauth::api::{ApiConfig, ApiServer, AuthLinks};
use mcpproxy_oauth::config;
use mcpproxy_oauth::upstream::state::Policy;

use super::{Common, fail, start_with};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Never open a browser by itself: servers needing a login wait for `auth login`.
    #[arg(long)]
    non_interactive: bool,
    /// How long refreshing is retried after the first failure before a login is needed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    retry_ceiling: Duration,
    /// The delay between slow retries, after the fast ones.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    retry_interval: Duration,
    /// Serve the operator API, live events, /metrics and the web page on this address
    /// (e.g. 127.0.0.1:8080). Every request needs the API key; the page's URL with it is
    /// printed at start.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// File holding the API key (at least 16 characters); else the environment variable
    /// MCPPROXY_OAUTH_API_KEY; else DATA_DIR/api-key, created (0600) on the first start.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// The most API connections open at once (the page, clients, event streams); beyond,
    /// a connection is answered 503 and closed. Lowered at start when the open-file limit
    /// leaves less room beside what refreshes need.
    #[arg(long, default_value_t = mcpproxy_oauth::api::limits::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_api_connections: u32,
    /// The most live event subscribers (GET /api/v1/events) at once; beyond, 503.
    #[arg(long, default_value_t = mcpproxy_oauth::api::limits::DEFAULT_MAX_SSE_SUBSCRIBERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_sse_subscribers: u32,
    /// The public redirect URI for logins, for a daemon behind a reverse proxy or in a
    /// container (e.g. https://proxy.example/oauth/callback): https, or http on loopback. The
    /// proxy forwards its path unchanged to --listen, which serves it. A server's own
    /// oauth.callback_url wins.
    #[arg(long, value_parser = callback_url)]
    callback_url: Option<Box<url::Url>>,
    #[command(flatten)]
    tuning: Tuning,
    /// The gateway's bounds (`/mcp/{server}` on --listen).
    #[command(flatten)]
    gateway: mcpproxy_oauth::gateway::GatewayFlags,
}

/// How many flows run at once and on how many threads: the defaults fit a laptop and 10,000
/// servers alike (see BENCHMARKS.md); these are for an operator who measured otherwise.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Tuning {
    /// At most this many refreshes at once, over all servers (default: 16 per core, 8 to
    /// 256). Each holds a connection and a lock file.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(super) max_concurrent_refreshes: Option<u32>,
    /// At most this many logins at once, over all servers (default 64); the others wait
    /// before they take their lock or start discovery.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(super) max_concurrent_logins: Option<u32>,
    /// At most this many browser tabs open at once for logins (default 4); the other logins
    /// wait for one.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(super) max_browser_tabs: Option<u32>,
    /// Worker threads for the flows' HTTP and TLS (default: one per core, 2 to 8).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(super) flow_threads: Option<u32>,
    /// The most a proactive refresh is moved later so that refreshes due together are
    /// spread (never past the moment its token stops being handed out). Default 1s; at most 1h.
    #[arg(long, value_parser = stagger)]
    pub(super) refresh_stagger: Option<Duration>,
}

fn callback_url(text: &str) -> Result<Box<url::Url>, String> {
    config::callback_url(text).map(Box::new)
}

fn stagger(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(3600) {
        return Err("at most 1h: a longer stagger only delays refreshes".into());
    }
    Ok(d)
}

/// The URL that opens the page with the key (the key is in it: printed, never logged).
fn page_url(addr: std::net::SocketAddr, key: &str) -> String {
    use std::net::IpAddr;
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!(
        "http://{host}:{}/?{}={key}",
        addr.port(),
        mcpproxy_oauth::api::guard::KEY_PARAM
    )
}

/// Lifts the open-file limit and fits the API's connection cap under it, beside the
/// descriptors kept for refreshes and the store.
fn fit_connection_cap(api: &mut ApiConfig, refresh_limit: usize, servers: usize) {
    use mcpproxy_oauth::api::limits;
    let nofile = match limits::raise_nofile_limit() {
        Ok((soft, hard)) => {
            tracing::debug!(soft, hard, "open-file limit");
            soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "the open-file limit could not be read or raised");
            return;
        }
    };
    let reserve = limits::reserve(refresh_limit, servers);
    if let Some(fits) = limits::connection_budget(nofile, reserve, api.max_connections, 2) {
        tracing::warn!(
            wanted = api.max_connections,
            using = fits,
            open_file_limit = nofile,
            kept_for_refreshes = reserve,
            "the open-file limit leaves room for fewer API connections than \
             --max-api-connections; raise `ulimit -n` (the hard limit) for more"
        );
        api.max_connections = fits;
    }
    api.max_sse_subscribers = api.max_sse_subscribers.min(api.max_connections);
}

/// Ctrl-C or SIGTERM, whichever comes first: both get the same clean shutdown.
async fn stop_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops cleanly");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

pub async fn serve(args: ServeArgs) -> ExitCode {
    let millis = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    let policy = Policy {
        interactive: !args.non_interactive,
        retry_ceiling: millis(args.retry_ceiling),
        retry_interval: millis(args.retry_interval).max(1_000),
        ..Policy::default()
    };
    // Read once: the API's list and the supervisor's are the same list.
    let mut servers = match config::load(&args.common.config) {
        Ok(servers) => servers,
        Err(e) => return fail(e),
    };
    for server in servers.iter_mut().filter(|s| s.callback_url.is_none()) {
        server.callback_url = args.callback_url.as_deref().cloned();
    }
    if args.listen.is_none()
        && let Some(server) = servers.iter().find(|s| s.callback_url.is_some())
    {
        return fail(format!(
            "{} logs in through a public callback URL, which the API listener serves: add \
             --listen ADDRESS (the address the reverse proxy forwards to)",
            server.name
        ));
    }
    let data_dir = args
        .common
        .data_dir
        .clone()
        .unwrap_or_else(mcpproxy_oauth::supervisor::default_data_dir);
    let mut key_text = None;
    let api = match args.listen {
        Some(listen) => {
            let mut api = ApiConfig::new(listen);
            api.servers = servers.clone();
            api.gateway.limits = args.gateway.limits();
            api.gateway.passthrough =
                match mcpproxy_oauth::gateway::read_passthrough(&args.common.config) {
                    Ok(passthrough) => passthrough,
                    Err(e) => return fail(e),
                };
            api.max_connections = args.max_api_connections as usize;
            api.max_sse_subscribers = args.max_sse_subscribers as usize;
            let env = std::env::var(mcpproxy_oauth::api::auth::API_KEY_ENV).ok();
            match resolve_key(args.api_key_file.as_deref(), env, &data_dir) {
                Ok((key, text, origin)) => {
                    tracing::info!(key_from = %origin, "the API key");
                    api.api_key = Some(key);
                    key_text = Some(text);
                }
                Err(e) => return fail(e),
            }
            let refresh_limit = args
                .tuning
                .max_concurrent_refreshes
                .map_or_else(mcpproxy_oauth::supervisor::default_refresh_limit, |n| {
                    n as usize
                });
            fit_connection_cap(&mut api, refresh_limit, servers.len());
            Some(api)
        }
        None if args.api_key_file.is_some() => {
            return fail("--api-key-file needs --listen ADDRESS (the API it protects)");
        }
        None => None,
    };
    let links = AuthLinks::new(&servers);
    let handle = match start_with(
        &args.common,
        servers.clone(),
        policy,
        api.as_ref().map(|_| &links),
        &args.tuning,
    )
    .await
    {
        Ok(started) => started,
        Err(e) => return fail(e),
    };
    let api = match api {
        Some(config) => match ApiServer::start(handle.clone(), links, config).await {
            Ok(server) => {
                if let Some(key) = &key_text {
                    // The operator's own terminal (standard output), never a log line.
                    println!("Open the web page: {}", page_url(server.addr(), key));
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
                Some(server)
            }
            Err(e) => {
                handle.shutdown().await;
                return fail(e);
            }
        },
        None => None,
    };
    if servers.is_empty() {
        tracing::warn!(
            config = %args.common.config.display(),
            "no server in the config has an \"oauth\" object; nothing to keep authorized"
        );
    }
    tracing::info!(
        servers = servers.len(),
        store = %handle.store().target(),
        "mcpproxy-oauth is keeping servers authorized; Ctrl-C or SIGTERM stops"
    );
    for server in &servers {
        let (handle, name) = (handle.clone(), server.name.clone());
        tokio::spawn(async move {
            match handle.reconnect(&name).await {
                Ok(grant) => {
                    tracing::info!(
                        server = %name,
                        correlation_id = grant.flow_id.as_deref().unwrap_or(""),
                        expires_at = grant.expires_at,
                        "authorized"
                    )
                }
                Err(e) => tracing::warn!(server = %name, error = %e, "not authorized yet"),
            }
        });
    }
    let signal = stop_signal().await;
    tracing::info!(signal, "stopping: letting store writes finish");
    if let Some(api) = api {
        api.stop().await;
    }
    handle.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
