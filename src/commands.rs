//! The daemon and operator commands: `serve` and `auth login|status|logout|refresh`. They work
//! on the same database as a running daemon; the per-server flow lock keeps their flows from
//! colliding with the daemon's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use mcpproxy_oauth::api::{ApiConfig, ApiKey, ApiServer, AuthLinks};
use mcpproxy_oauth::config::{self, UpstreamConfig};
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::store::cipher::StoreKey;
use mcpproxy_oauth::store::db::now_ms;
use mcpproxy_oauth::store::keys::{self, KeySource};
use mcpproxy_oauth::store::{KeySpec, Sealing, TokenStore};
use mcpproxy_oauth::supervisor::{
    SupervisorConfig, SupervisorHandle, database_path, default_data_dir,
};
use mcpproxy_oauth::telemetry::inert::safe;
use mcpproxy_oauth::telemetry::trace;
use mcpproxy_oauth::upstream::state::Policy;

#[derive(Args, Debug)]
pub struct Common {
    /// mcpproxy's mcp_config.json (servers with an "oauth" object are managed).
    #[arg(long)]
    config: PathBuf,
    /// Where tokens.db and the flow locks live (default: $XDG_DATA_HOME/mcpproxy-oauth).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Command that opens a URL (`%s` marks it, else it is appended). Default: $BROWSER, then xdg-open/open.
    #[arg(long)]
    browser_command: Option<String>,
    /// Print authorization URLs instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// How long a browser login may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    login_timeout: Duration,
    /// How long a refresh request may take (abandoning one the server processed costs the
    /// refresh token on servers that rotate it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    refresh_timeout: Duration,
    #[command(flatten)]
    key: KeyArgs,
}

/// How the token database's secrets are protected.
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// The store key file (base64 of 32 bytes; created 0600 when absent). Default: the
    /// MCPPROXY_OAUTH_KEY environment variable, else `key` beside tokens.db.
    #[arg(long, conflicts_with = "insecure_plaintext")]
    key_file: Option<PathBuf>,
    /// Store tokens and client secrets in clear (the old format): anyone who can read
    /// tokens.db or a backup of it can use them.
    #[arg(long)]
    insecure_plaintext: bool,
}

impl KeyArgs {
    fn sealing(&self) -> Sealing {
        if self.insecure_plaintext {
            Sealing::Plaintext
        } else {
            Sealing::Encrypted(KeySpec {
                key_file: self.key_file.clone(),
            })
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Re-encrypt every stored secret with a new random key (stop running daemons first:
    /// they hold the old key).
    Rekey {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The current key file (default: MCPPROXY_OAUTH_KEY, else `key` beside tokens.db).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Where the new key goes (must not exist). Default: replaces the current key file.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

pub fn tokens(command: TokensCommand) -> ExitCode {
    let TokensCommand::Rekey {
        data_dir,
        key_file,
        new_key_file,
    } = command;
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let database = database_path(&data_dir);
    if !database.exists() {
        return fail(format!(
            "no token database at {}; nothing to rekey (pass --data-dir)",
            database.display()
        ));
    }
    let spec = KeySpec { key_file };
    let mut store = match TokenStore::open_with(&database, &Sealing::Encrypted(spec)) {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let current = match store.key_source() {
        Some(KeySource::File(path)) => Some(path.clone()),
        _ => None,
    };
    let (target, staged) = match (new_key_file, current) {
        (Some(new), _) => (new.clone(), new),
        (None, Some(current)) => (current.clone(), current.with_extension("new")),
        (None, None) => {
            return fail(format!(
                "the key comes from {}: pass --new-key-file for the new key, then set {} to it",
                keys::KEY_ENV,
                keys::KEY_ENV
            ));
        }
    };
    let key = StoreKey::generate();
    if let Err(e) = keys::write_new_key_file(&staged, &key) {
        return fail(format!(
            "cannot write the new key to {}: {e}; nothing was changed (a file left there by an interrupted rekey: check which key opens the database, then remove the other)",
            staged.display()
        ));
    }
    if let Err(e) = store.rekey(key, KeySource::File(target.clone())) {
        let _ = std::fs::remove_file(&staged);
        return fail(e);
    }
    if staged != target
        && let Err(e) = std::fs::rename(&staged, &target)
    {
        return fail(format!(
            "the database now uses the key in {}, but it could not replace {}: {e}; move it there by hand",
            staged.display(),
            target.display()
        ));
    }
    println!(
        "re-encrypted every stored secret; the key is now in {}",
        safe(&target.display().to_string())
    );
    ExitCode::SUCCESS
}

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
}

/// How many flows run at once and on how many threads: the defaults fit a laptop and 10,000
/// servers alike (see BENCHMARKS.md); these are for an operator who measured otherwise.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Tuning {
    /// At most this many refreshes at once, over all servers (default: 16 per core, 8 to
    /// 256). Each holds a connection and a lock file.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_concurrent_refreshes: Option<u32>,
    /// Worker threads for the flows' HTTP and TLS (default: one per core, 2 to 8).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    flow_threads: Option<u32>,
    /// The most a proactive refresh is moved later so that refreshes due together are
    /// spread (never past the moment its token stops being handed out). Default 1s; at most 1h.
    #[arg(long, value_parser = stagger)]
    refresh_stagger: Option<Duration>,
}

fn stagger(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(3600) {
        return Err("at most 1h: a longer stagger only delays refreshes".into());
    }
    Ok(d)
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Log in to a server (or all), opening the browser.
    Login {
        /// The server's name in the config.
        server: Option<String>,
        #[arg(long, conflicts_with = "server")]
        all: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Token status of every server, from the database (no secrets).
    Status {
        #[arg(long)]
        json: bool,
        /// Also list configured servers that have no token yet.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Forget a server's token (revoking it at the server where possible).
    Logout {
        server: String,
        #[command(flatten)]
        common: Common,
    },
    /// Walk what a login needs (MCP endpoint, discovery, client identity, token endpoint)
    /// without a browser or side effects, and name the first failing step.
    Doctor {
        server: String,
        /// mcpproxy's mcp_config.json.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Refresh a server's token now.
    Refresh {
        server: String,
        #[command(flatten)]
        common: Common,
    },
}

async fn doctor(name: &str, path: &std::path::Path, json: bool) -> ExitCode {
    let servers = match config::load(path) {
        Ok(servers) => servers,
        Err(e) => return fail(e),
    };
    let Some(server) = servers.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        return fail(format!(
            "unknown server {name:?}; configured servers: {}",
            names.join(", ")
        ));
    };
    let timeout = Duration::from_secs(10);
    let http = mcpproxy_oauth::oauth::http::OAuthHttp::new(timeout);
    let report = mcpproxy_oauth::oauth::diagnose::diagnose(&http, server, timeout).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for step in &report.steps {
            let mark = if step.ok { "ok  " } else { "FAIL" };
            let status = step
                .status
                .map(|s| format!(" (HTTP {s})"))
                .unwrap_or_default();
            // A step's detail and action can quote a server: made inert.
            println!("{mark} {}: {}{status}", step.step, safe(&step.detail));
            if let Some(action) = &step.action {
                println!("     what to do: {}", safe(action));
            }
        }
        match report.failed_step {
            Some(step) => println!("{}: the {step} step fails", safe(name)),
            None => println!("{}: every step passes", safe(name)),
        }
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints an error: known secrets scrubbed and control characters escaped, since an error
/// can quote a server's text.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mcpproxy-oauth: {}", safe(&message.to_string()));
    ExitCode::FAILURE
}

async fn start(
    common: &Common,
    interactive: bool,
    links: Option<&AuthLinks>,
) -> Result<(SupervisorHandle, Vec<UpstreamConfig>), String> {
    let policy = Policy {
        interactive,
        ..Policy::default()
    };
    start_with(common, policy, links, &Tuning::default()).await
}

async fn start_with(
    common: &Common,
    policy: Policy,
    links: Option<&AuthLinks>,
    tuning: &Tuning,
) -> Result<(SupervisorHandle, Vec<UpstreamConfig>), String> {
    let servers = config::load(&common.config).map_err(|e| e.to_string())?;
    let data_dir = common.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut supervisor = SupervisorConfig::new(servers.clone(), data_dir);
    let browser = BrowserLauncher::from_settings(common.browser_command.clone(), common.no_browser);
    // With the API, authorization links are remembered for the page and the login answer.
    supervisor.browser = match links {
        Some(links) => links.wrap(browser),
        None => browser,
    };
    supervisor.login_timeout = common.login_timeout;
    supervisor.refresh_timeout = common.refresh_timeout;
    supervisor.policy = policy;
    supervisor.sealing = common.key.sealing();
    if let Some(n) = tuning.max_concurrent_refreshes {
        supervisor.max_concurrent_refreshes = n as usize;
    }
    if let Some(n) = tuning.flow_threads {
        supervisor.flow_threads = n as usize;
    }
    if let Some(stagger) = tuning.refresh_stagger {
        supervisor.refresh_stagger = stagger;
    }
    let handle = SupervisorHandle::start(supervisor)
        .await
        .map_err(|e| e.to_string())?;
    Ok((handle, servers))
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
    let api = match args.listen {
        Some(listen) => {
            let mut api = ApiConfig::new(listen);
            api.servers = match config::load(&args.common.config) {
                Ok(servers) => servers,
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
    let links = match config::load(&args.common.config) {
        Ok(servers) => AuthLinks::new(&servers),
        Err(e) => return fail(e),
    };
    let (handle, servers) = match start_with(
        &args.common,
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

pub async fn auth(command: AuthCommand) -> ExitCode {
    match command {
        AuthCommand::Status {
            json,
            config,
            data_dir,
        } => status(json, config, data_dir),
        AuthCommand::Login {
            server,
            all,
            common,
        } => {
            let (handle, servers) = match start(&common, true, None).await {
                Ok(started) => started,
                Err(e) => return fail(e),
            };
            let names: Vec<String> = match (server, all) {
                (Some(name), _) => vec![name],
                (None, true) => servers.iter().map(|s| s.name.clone()).collect(),
                (None, false) => return fail("name a server, or pass --all"),
            };
            let mut failed = false;
            for name in names {
                match handle.login(&name).await {
                    Ok(grant) => println!(
                        "{}: logged in (flow {})",
                        safe(&name),
                        grant.flow_id.unwrap_or_default()
                    ),
                    Err(e) => {
                        failed = true;
                        eprintln!("mcpproxy-oauth: {}", safe(&e.to_string()));
                    }
                }
            }
            handle.shutdown().await;
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        AuthCommand::Logout { server, common } => {
            let (handle, _) = match start(&common, false, None).await {
                Ok(started) => started,
                Err(e) => return fail(e),
            };
            let result = handle.logout(&server).await;
            handle.shutdown().await;
            match result {
                Ok(()) => {
                    println!("{}: logged out", safe(&server));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        AuthCommand::Doctor {
            server,
            config: path,
            json,
        } => doctor(&server, &path, json).await,
        AuthCommand::Refresh { server, common } => {
            let (handle, _) = match start(&common, false, None).await {
                Ok(started) => started,
                Err(e) => return fail(e),
            };
            let result = handle.refresh(&server).await;
            handle.shutdown().await;
            match result {
                Ok(grant) => {
                    println!(
                        "{}: refreshed (flow {}), valid for {}",
                        safe(&server),
                        grant.flow_id.unwrap_or_default(),
                        remaining(grant.expires_at)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn remaining(expires_at: Option<i64>) -> String {
    match expires_at {
        None => "an unknown time".into(),
        Some(at) if at <= now_ms() => "no time (expired)".into(),
        Some(at) => {
            humantime::format_duration(Duration::from_secs(((at - now_ms()) / 1000) as u64))
                .to_string()
        }
    }
}

fn status(json: bool, config_path: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    // Read-only: no migration, nothing created; no database yet means no token yet.
    let rows = match TokenStore::open_read_only(&database_path(&data_dir)) {
        Ok(Some(store)) => store.token_status(),
        Ok(None) => Ok(Vec::new()),
        Err(e) => return fail(e),
    };
    let mut rows: Vec<serde_json::Value> = match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect(),
        Err(e) => return fail(e),
    };
    if let Some(path) = config_path {
        match config::load(&path) {
            Ok(servers) => {
                for server in servers {
                    if !rows
                        .iter()
                        .any(|r| r["server_key"] == server.server_key.as_str())
                    {
                        rows.push(serde_json::json!({"server_key": server.server_key, "server_name": server.name, "server_url": server.url.as_str(), "status": "missing", "has_refresh_token": false}));
                    }
                }
            }
            Err(e) => return fail(e),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:<20} {:<9} {:<22} {:<8} SCOPE",
            "SERVER", "STATUS", "EXPIRES IN", "REFRESH"
        );
        for row in &rows {
            println!(
                "{:<20} {:<9} {:<22} {:<8} {}",
                safe(row["server_name"].as_str().unwrap_or("")),
                safe(row["status"].as_str().unwrap_or("")),
                remaining(row["expires_at"].as_i64()),
                if row["has_refresh_token"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                safe(row["scope"].as_str().unwrap_or(""))
            );
        }
    }
    ExitCode::SUCCESS
}

#[derive(Subcommand, Debug)]
pub enum LogsCommand {
    /// One flow's events in order, from a JSON log (`--log-format json`), as a timeline.
    Trace {
        correlation_id: String,
        /// The log file (default: standard input).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Recent flows from the database: server, kind, outcome, duration.
    Flows {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

pub fn logs(command: LogsCommand) -> ExitCode {
    match command {
        LogsCommand::Trace {
            correlation_id,
            file,
        } => {
            let text = match &file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display())),
                None => std::io::read_to_string(std::io::stdin())
                    .map_err(|e| format!("cannot read standard input: {e}")),
            };
            let text = match text {
                Ok(text) => text,
                Err(e) => return fail(e),
            };
            let lines = trace::flow_lines(&correlation_id, text.lines());
            match trace::render(&correlation_id, &lines) {
                Some(timeline) => {
                    print!("{timeline}");
                    ExitCode::SUCCESS
                }
                None => fail(format!(
                    "no line with correlation_id {correlation_id} (was the log written with --log-format json?)"
                )),
            }
        }
        LogsCommand::Flows {
            data_dir,
            limit,
            json,
        } => {
            let data_dir = data_dir.unwrap_or_else(default_data_dir);
            let flows = match TokenStore::open_read_only(&database_path(&data_dir))
                .and_then(|s| s.map_or(Ok(Vec::new()), |s| s.recent_flows(limit)))
            {
                Ok(flows) => flows,
                Err(e) => return fail(e),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&flows).unwrap_or_default()
                );
                return ExitCode::SUCCESS;
            }
            println!(
                "{:<26} {:<16} {:<8} {:<10} {:>9}  {:<36} ERROR",
                "STARTED", "SERVER", "KIND", "OUTCOME", "DURATION", "CORRELATION ID"
            );
            for flow in flows {
                // Rows come from a file others write too: times outside 1970..9999 (which
                // RFC 3339 cannot show) are clamped, never a panic.
                const LAST_RFC3339_MS: i64 = 253_402_300_799_999;
                let started = std::time::UNIX_EPOCH
                    + Duration::from_millis(flow.started_at.clamp(0, LAST_RFC3339_MS) as u64);
                let duration = flow
                    .finished_at
                    .map(|f| format!("{} ms", f.saturating_sub(flow.started_at)))
                    .unwrap_or_else(|| "running".into());
                println!(
                    "{:<26} {:<16} {:<8} {:<10} {:>9}  {:<36} {}",
                    humantime::format_rfc3339_millis(started).to_string(),
                    safe(&flow.server_name),
                    safe(&flow.kind),
                    safe(&flow.state),
                    duration,
                    safe(&flow.flow_id),
                    safe(&flow.error.unwrap_or_default())
                );
            }
            ExitCode::SUCCESS
        }
    }
}
