//! What a supervisor is started with, and where its files go by default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::SupervisorError;
use crate::clock::Clock;
use crate::config::UpstreamConfig;
use crate::oauth::browser::BrowserLauncher;
use crate::scheduler::{DEFAULT_LOGIN_LIMIT, DEFAULT_TAB_LIMIT, SchedulerConfig};
use crate::upstream::flows::FlowHook;
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
    /// At most this many logins run at once, over all servers; the others wait in the
    /// scheduler's queue before they take their lock or start discovery (default 64).
    pub max_concurrent_logins: usize,
    /// At most this many logins have a browser tab open at once (default 4): a person
    /// answers a few at a time; the others wait, prepared, for a tab.
    pub max_browser_tabs: usize,
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
    /// Where the tokens live (default: SQLite, `data_dir/tokens.db`), or a PostgreSQL database
    /// several instances share (they need the same key: `sealing` with a key file or
    /// `MCPPROXY_OAUTH_KEY`); flows then claim the server's lease row before any token request.
    pub store: crate::store::StoreChoice,
    /// The clock the daemon reads: the state machines' `now`, the scheduler's deadlines, the
    /// tokens' times. The system's; tests drive a manual one (virtual time).
    pub clock: Clock,
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
            max_concurrent_logins: DEFAULT_LOGIN_LIMIT,
            max_browser_tabs: DEFAULT_TAB_LIMIT,
            flow_threads: default_flow_threads(),
            refresh_stagger: SchedulerConfig::default().stagger,
            store_poll_interval: Duration::from_secs(1),
            sealing: crate::store::Sealing::default(),
            store: crate::store::StoreChoice::default(),
            clock: Clock::system(),
        }
    }
}

impl SupervisorConfig {
    /// The limits the scheduler enforces, each at least 1: a limit of 0 would queue every
    /// flow of its kind forever.
    pub fn check_limits(&self) -> Result<(), SupervisorError> {
        let limits = [
            ("max_concurrent_refreshes", self.max_concurrent_refreshes),
            ("max_concurrent_logins", self.max_concurrent_logins),
            ("max_browser_tabs", self.max_browser_tabs),
        ];
        match limits.into_iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(SupervisorError::InvalidInput(format!(
                "{name} is 0, which would queue every such flow forever; set it to 1 or more"
            ))),
            None => Ok(()),
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
