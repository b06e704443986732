//! A supervisor to test: its servers (the test server under some names), a config with short,
//! bounded timeouts, its start, its status, waits on its phases, and its stored rows read as an
//! outside reader reads them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use mcpproxy_oauth::clock::Clock;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use mcpproxy_oauth::upstream::actor::ServerStatus;
use mcpproxy_oauth::upstream::state::Policy;
use oauth_test_server::OAuthTestServer;
use url::Url;

/// The test server's MCP endpoint, configured as the server `name`.
pub fn upstream(name: &str, srv: &OAuthTestServer) -> UpstreamConfig {
    UpstreamConfig::new(name, Url::parse(&srv.mcp_url()).unwrap())
}

/// The test server under each of `names`.
pub fn upstreams(srv: &OAuthTestServer, names: &[&str]) -> Vec<UpstreamConfig> {
    names.iter().map(|name| upstream(name, srv)).collect()
}

/// A supervisor's config for tests: `servers` kept in `dir`, logins through `browser` within
/// 20 s, HTTP calls within 2 s, backoff from 100 ms up to 2 s. A test changes what it needs
/// with struct update syntax.
pub fn supervisor_config(
    servers: Vec<UpstreamConfig>,
    dir: &Path,
    browser: BrowserLauncher,
) -> SupervisorConfig {
    SupervisorConfig {
        browser,
        policy: Policy {
            backoff_base: 100,
            backoff_cap: 2_000,
            ..Policy::default()
        },
        login_timeout: Duration::from_secs(20),
        http_timeout: Duration::from_secs(2),
        ..SupervisorConfig::new(servers, dir.to_path_buf())
    }
}

/// The recovery ladder compressed for tests: fast attempts from 50 ms, then one attempt
/// every 300 ms, a two-minute ceiling.
pub fn fast_policy() -> Policy {
    Policy {
        backoff_base: 50,
        backoff_cap: 200,
        fast_attempts: 3,
        retry_interval: 300,
        retry_ceiling: 120_000,
        min_timer_gap: 20,
        ..Policy::default()
    }
}

pub async fn start_supervisor(config: SupervisorConfig) -> SupervisorHandle {
    SupervisorHandle::start(config)
        .await
        .expect("the supervisor starts")
}

/// A supervisor of `srv` as "dev", logging in by device code (within 30 s) through `browser`,
/// its data in a fresh folder named after `name`: (supervisor, folder).
pub async fn device_code_supervisor(
    srv: &OAuthTestServer,
    browser: BrowserLauncher,
    name: &str,
) -> (SupervisorHandle, PathBuf) {
    let mut server = upstream("dev", srv);
    server.device_code = true;
    let dir = super::data_dir(name);
    let handle = start_supervisor(SupervisorConfig {
        browser,
        login_timeout: Duration::from_secs(30),
        ..SupervisorConfig::new(vec![server], dir.clone())
    })
    .await;
    (handle, dir)
}

/// The test server (hour-long tokens) and a supervisor of it as `srv` on a virtual clock that
/// starts now, its data in a fresh folder named after `name`, logged in once through a
/// following browser (10 s at most): (server, clock, folder, supervisor, browser launches).
pub async fn logged_in_on_virtual_time(
    name: &str,
) -> (
    OAuthTestServer,
    Clock,
    PathBuf,
    SupervisorHandle,
    Arc<AtomicU32>,
) {
    let srv = super::start(oauth_test_server::Config::default()).await;
    let clock = Clock::manual(mcpproxy_oauth::clock::now_ms());
    let dir = super::temp_dir(name);
    let (browser, launches) = super::following_browser();
    let handle = start_supervisor(SupervisorConfig {
        browser,
        clock: clock.clone(),
        login_timeout: Duration::from_secs(10),
        ..SupervisorConfig::new(vec![upstream("srv", &srv)], dir.clone())
    })
    .await;
    handle.reconnect("srv").await.expect("the first login");
    (srv, clock, dir, handle, launches)
}

/// No token was lost on the test server's side: no rotated refresh token presented again, none
/// refused as `invalid_grant`; and the browser opened `logins` times (`what` says why).
pub fn assert_no_token_lost(srv: &OAuthTestServer, launches: &AtomicU32, logins: u32, what: &str) {
    let stats = srv.stats();
    assert_eq!(
        stats.refresh_token_reuse, 0,
        "an old refresh token was presented"
    );
    assert_eq!(stats.token_errors.get("invalid_grant"), None);
    assert_logins(launches, logins, what);
}

/// The browser opened `logins` times (`what` says why that many).
pub fn assert_logins(launches: &AtomicU32, logins: u32, what: &str) {
    let launched = launches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(launched, logins, "{what}");
}

/// Both supervisors log in to "srv" at once and come out holding one access token: the second
/// `who` adopted the first's instead of running a login of its own.
pub async fn assert_both_log_in_to_one_token(
    a: &SupervisorHandle,
    b: &SupervisorHandle,
    who: &str,
) {
    let (ga, gb) = tokio::join!(a.login("srv"), b.login("srv"));
    let (ga, gb) = (ga.expect("a"), gb.expect("b"));
    assert_eq!(
        ga.access_token.secret(),
        gb.access_token.secret(),
        "the second {who} adopted the first's token"
    );
}

/// The status of the server `name`.
pub async fn status_of(handle: &SupervisorHandle, name: &str) -> ServerStatus {
    handle
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

/// Waits (bounded) until `check` holds for the status of `name`, looking again at every
/// phase change (or after 100 ms); returns that status.
pub async fn wait_for_status(
    handle: &SupervisorHandle,
    name: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&ServerStatus) -> bool,
) -> ServerStatus {
    let deadline = Instant::now() + within;
    let mut changes = handle.subscribe();
    loop {
        let status = status_of(handle, name).await;
        if check(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; {name} is {} ({:?})",
            status.phase.name(),
            status.detail
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.recv()).await;
    }
}

/// Waits (bounded) until `name` reaches `phase`; returns its status then.
pub async fn wait_for_phase(
    handle: &SupervisorHandle,
    name: &str,
    phase: &str,
    within: Duration,
) -> ServerStatus {
    let what = format!("{name} reaching {phase}");
    wait_for_status(handle, name, &what, within, |s| s.phase.name() == phase).await
}

/// The text a query reads from the database in `dir` (one row, one column).
pub fn stored(dir: &Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open(database_path(dir)).unwrap();
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

/// The refresh token stored for the (only) server, read as an outside reader reads it:
/// rusqlite for the row, the library's cipher with the key file beside the database.
pub fn stored_refresh_token(dir: &std::path::Path) -> Option<String> {
    use mcpproxy_oauth::store::{cipher, keys};
    let conn = rusqlite::Connection::open(mcpproxy_oauth::supervisor::database_path(dir)).ok()?;
    let (server_key, sealed): (String, Option<String>) = conn
        .query_row(
            "SELECT server_key, refresh_token FROM oauth_tokens",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()?;
    let key = keys::read_key_file(&dir.join(keys::DEFAULT_KEY_FILE))
        .expect("the key file beside the database");
    let place = cipher::place("oauth_tokens", "refresh_token", &server_key);
    Some(cipher::open(&key, &place, &sealed?).expect("the stored refresh token opens with the key"))
}
