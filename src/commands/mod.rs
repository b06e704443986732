//! The daemon and operator commands, one module each: `serve`, `auth login|status|logout|
//! refresh|doctor`, `logs trace|flows` and `tokens rekey`. They work on the same database as a
//! running daemon; the per-server flow lock keeps their flows from colliding with the daemon's.
//! This module holds what they share: the common flags, the key flags, starting a supervisor
//! and printing an error.

mod auth;
mod logs;
mod serve;
mod stdio;
mod tokens;

pub use auth::{AuthCommand, auth};
pub use logs::{LogsCommand, logs};
pub use serve::{ServeArgs, Tuning, serve};
pub use stdio::{StdioArgs, stdio};
pub use tokens::{TokensCommand, tokens};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use mcpproxy_oauth::api::AuthLinks;
use mcpproxy_oauth::config::{self, UpstreamConfig};
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::store::{
    KeySpec, STORE_ENV, Sealing, Store, StoreChoice, StoreChoiceError, StoreOptions,
};
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, default_data_dir};
use mcpproxy_oauth::telemetry::inert::safe;
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
    #[command(flatten)]
    store: StoreArgs,
}

/// Where the tokens live: `--store`, else `MCPPROXY_OAUTH_STORE`, else SQLite.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// `sqlite` (tokens.db in the data directory, the default) or
    /// postgres://USER@HOST:PORT/DB, one database several instances share (they need the same
    /// --key-file or MCPPROXY_OAUTH_KEY). A password goes in MCPPROXY_OAUTH_STORE, not here.
    #[arg(long, env = STORE_ENV, hide_env_values = true)]
    store: Option<String>,
}

impl StoreArgs {
    fn choice(&self) -> Result<StoreChoice, String> {
        match &self.store {
            None => Ok(StoreChoice::Sqlite),
            Some(text) => text.parse().map_err(|e: StoreChoiceError| e.to_string()),
        }
    }
}

/// The store and key flags of a command that only reads the store (`auth status`, `logs
/// flows`): the key is needed only to open a PostgreSQL store.
#[derive(Args, Debug, Clone)]
pub struct ReadStoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// PostgreSQL: the store key file every instance shares (default: MCPPROXY_OAUTH_KEY).
    #[arg(long = "key-file")]
    key_file: Option<PathBuf>,
}

impl ReadStoreArgs {
    /// The PostgreSQL store it names, opened; `None` for SQLite (the caller reads the file).
    async fn open_postgres(&self) -> Result<Option<Store>, String> {
        let choice = self.store.choice()?;
        if !choice.is_postgres() {
            return Ok(None);
        }
        let sealing = Sealing::Encrypted(KeySpec {
            key_file: self.key_file.clone(),
        });
        let nowhere = std::path::Path::new("");
        Store::open(&choice, nowhere, &sealing, StoreOptions::default())
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }
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

/// A command's report on standard output. A reader that goes away early (`logs flows |
/// head -1`) is not an error: writing stops and the command ends as it would have, instead
/// of panicking on the broken pipe like `println!`.
pub(crate) struct Report {
    out: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Report {
    pub(crate) fn new() -> Self {
        Report {
            out: std::io::stdout().lock(),
            closed: false,
        }
    }

    /// Writes `text` and a newline; nothing once the reader is gone.
    pub(crate) fn line(&mut self, text: impl std::fmt::Display) {
        use std::io::Write;
        if self.closed {
            return;
        }
        if let Err(e) = writeln!(self.out, "{text}") {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("mcpproxy-oauth: cannot write to standard output: {e}");
            }
            self.closed = true;
        }
    }
}

/// The read-only commands' answer when `data_dir` holds no database yet.
fn no_database(data_dir: &std::path::Path) -> ExitCode {
    fail(format!(
        "no token database in {}: nothing was stored there yet; pass the --data-dir that serve \
         or `auth login` use (default {})",
        data_dir.display(),
        default_data_dir().display()
    ))
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
    let servers = config::load(&common.config).map_err(|e| e.to_string())?;
    let handle = start_with(common, servers.clone(), policy, links, &Tuning::default()).await?;
    Ok((handle, servers))
}

/// Starts a supervisor for `servers` (the config, read once by the caller, so that every part
/// of a command sees the same list).
async fn start_with(
    common: &Common,
    servers: Vec<UpstreamConfig>,
    policy: Policy,
    links: Option<&AuthLinks>,
    tuning: &Tuning,
) -> Result<SupervisorHandle, String> {
    let data_dir = common.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut supervisor = SupervisorConfig::new(servers, data_dir);
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
    supervisor.store = common.store.choice()?;
    if let Some(n) = tuning.max_concurrent_refreshes {
        supervisor.max_concurrent_refreshes = n as usize;
    }
    if let Some(n) = tuning.max_concurrent_logins {
        supervisor.max_concurrent_logins = n as usize;
    }
    if let Some(n) = tuning.max_browser_tabs {
        supervisor.max_browser_tabs = n as usize;
    }
    if let Some(n) = tuning.flow_threads {
        supervisor.flow_threads = n as usize;
    }
    if let Some(stagger) = tuning.refresh_stagger {
        supervisor.refresh_stagger = stagger;
    }
    SupervisorHandle::start(supervisor)
        .await
        .map_err(|e| e.to_string())
}
