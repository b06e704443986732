//! `serve`: the daemon, with the operator API when `--listen` is given.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use mcpproxy_oauth::api::{ApiConfig, ApiKey, ApiServer, AuthLinks};
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
    /// (e.g. 127.0.0.1:8080). A non-loopback address requires an API key.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// File holding the API key (at least 16 characters); also read from the environment
    /// variable MCPPROXY_OAUTH_API_KEY. Checked on every request but the page itself.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
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
    /// Worker threads for the flows' HTTP and TLS (default: one per core, 2 to 8).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(super) flow_threads: Option<u32>,
    /// The most a proactive refresh is moved later so that refreshes due together are
    /// spread (never past the moment its token stops being handed out). Default 1s; at most 1h.
    #[arg(long, value_parser = stagger)]
    pub(super) refresh_stagger: Option<Duration>,
}

fn stagger(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(3600) {
        return Err("at most 1h: a longer stagger only delays refreshes".into());
    }
    Ok(d)
}

/// The API key from `--api-key-file`, else the environment, else none.
fn api_key(file: Option<&std::path::Path>) -> Result<Option<ApiKey>, String> {
    if let Some(path) = file {
        return ApiKey::from_file(path).map(Some).map_err(|e| e.to_string());
    }
    match std::env::var(mcpproxy_oauth::api::auth::API_KEY_ENV) {
        Ok(key) if !key.trim().is_empty() => ApiKey::new(&key)
            .map(Some)
            .map_err(|e| format!("{}: {e}", mcpproxy_oauth::api::auth::API_KEY_ENV)),
        _ => Ok(None),
    }
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
    let servers = match config::load(&args.common.config) {
        Ok(servers) => servers,
        Err(e) => return fail(e),
    };
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
            api.api_key = match api_key(args.api_key_file.as_deref()) {
                Ok(key) => key,
                Err(e) => return fail(e),
            };
            if let Err(e) = mcpproxy_oauth::api::auth::check_listen(listen, api.api_key.as_ref()) {
                return fail(e);
            }
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
            Ok(server) => Some(server),
            Err(e) => {
                handle.shutdown().await;
                return fail(e);
            }
        },
        None => None,
    };
    if servers.is_empty() {
        tracing::warn!(config = %args.common.config.display(), "no server in the config has an \"oauth\" object; nothing to keep authorized");
    }
    tracing::info!(
        servers = servers.len(),
        "mcpproxy-oauth is keeping servers authorized; Ctrl-C or SIGTERM stops"
    );
    for server in &servers {
        let (handle, name) = (handle.clone(), server.name.clone());
        tokio::spawn(async move {
            match handle.reconnect(&name).await {
                Ok(grant) => {
                    tracing::info!(server = %name, correlation_id = grant.flow_id.as_deref().unwrap_or(""), expires_at = grant.expires_at, "authorized")
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
