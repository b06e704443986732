//! The binary: its path, a browser command that follows the redirect to the loopback
//! listener, a command run to its end within a bound, the config file naming the test
//! server, and a running `serve` with its API.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use oauth_test_server::OAuthTestServer;

pub const BIN: &str = env!("CARGO_BIN_EXE_mcpproxy-oauth");
/// A "browser" that follows the redirect to the loopback listener.
pub const CURL_BROWSER: &str = "curl -s -o /dev/null -L";

/// The binary with `args`, without the environment a developer's shell may lend it (a
/// `BROWSER`, a conformance context).
pub fn bin(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("BROWSER")
        .env_remove("MCP_CONFORMANCE_CONTEXT");
    command
}

/// Runs `command` to its end; fails if it takes longer than `within`.
pub async fn output_within(mut command: tokio::process::Command, within: Duration) -> Output {
    tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("the command did not end within {within:?}"))
        .expect("the binary runs")
}

/// The binary with `args` and `env`, run to its end within 30 s.
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = bin(args);
    command.envs(env.iter().copied());
    output_within(command, Duration::from_secs(30)).await
}

/// stdout then stderr, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `dir/mcp_config.json`, naming the test server under each of `names`.
pub fn write_config(dir: &Path, srv: &OAuthTestServer, names: &[&str]) -> PathBuf {
    let servers: Vec<(String, &OAuthTestServer)> =
        names.iter().map(|name| (name.to_string(), srv)).collect();
    write_servers_config(dir, &servers)
}

/// `dir/mcp_config.json`, naming each test server under its name.
pub fn write_servers_config(dir: &Path, named: &[(String, &OAuthTestServer)]) -> PathBuf {
    let servers: Vec<serde_json::Value> = named
        .iter()
        .map(|(name, srv)| serde_json::json!({"name": name, "url": srv.mcp_url(), "oauth": {}}))
        .collect();
    let config = dir.join("mcp_config.json");
    std::fs::write(
        &config,
        serde_json::json!({ "mcpServers": servers }).to_string(),
    )
    .unwrap();
    config
}

/// A fresh folder holding a config file that names the test server `srv`, and the path of a
/// data directory in it (not created): (config, data).
pub fn daemon_files(srv: &OAuthTestServer, name: &str) -> (PathBuf, PathBuf) {
    let dir = super::temp_dir(name);
    (write_config(&dir, srv, &["srv"]), dir.join("data"))
}

/// A fresh folder named after `name` holding `mcp_config.json` with `text` as it stands (a
/// config a test writes by hand, broken or hostile): (folder, config).
pub fn folder_with_config(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = super::temp_dir(name);
    let config = dir.join("mcp_config.json");
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

/// `command` on `config` and `data`, logging in with the curl browser.
pub fn on_files<'a>(command: &[&'a str], config: &'a str, data: &'a str) -> Vec<&'a str> {
    let files = [
        "--config",
        config,
        "--data-dir",
        data,
        "--browser-command",
        CURL_BROWSER,
    ];
    command.iter().copied().chain(files).collect()
}

/// The arguments of `connect` to `url`, logging in with the curl browser within 20 s.
pub fn connect_args(url: &str) -> [&str; 6] {
    [
        "connect",
        "--browser-command",
        CURL_BROWSER,
        "--timeout",
        "20s",
        url,
    ]
}

/// The arguments of `auth VERB srv` on `config` and `data`, with the curl browser.
pub fn auth_args<'a>(verb: &'a str, config: &'a str, data: &'a str) -> Vec<&'a str> {
    on_files(&["auth", verb, "srv"], config, data)
}

/// The binary with `args` started in the background: stderr piped, killed if the test ends
/// first.
pub fn spawn(args: &[&str]) -> tokio::process::Child {
    bin(args)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

/// Sends `signal` (`-INT`, `-TERM`, ...) to a running child.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the child runs").to_string();
    std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
}

/// Sends `signal` to a running `serve` and checks it stops cleanly within 10 s.
pub async fn stop(child: &mut tokio::process::Child, signal: &str) {
    self::signal(child, signal);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("serve stops within 10 s")
        .unwrap();
    assert!(status.success(), "serve exits 0 on {signal}: {status}");
}

/// Everything a child wrote to its piped stderr, once it has ended.
pub async fn stderr_of(child: &mut tokio::process::Child) -> String {
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    stderr
}

/// Valid tokens in the database `db`, read without creating anything (0 without a database).
pub fn valid_tokens(db: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM oauth_token_status WHERE status = 'valid'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap_or(0)
}

/// Reads `lines` (a child's output) until `found` gives a value, within `within`, appending
/// every line read to `seen`; fails naming `what` and what was seen if the output ends or the
/// time runs out first.
pub async fn read_until<R, T>(
    lines: &mut tokio::io::Lines<R>,
    seen: &mut String,
    within: Duration,
    what: &str,
    mut found: impl FnMut(&str) -> Option<T>,
) -> T
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let read = tokio::time::timeout(within, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(value) = found(&line) {
                return Some(value);
            }
        }
        None
    })
    .await;
    match read {
        Ok(Some(value)) => value,
        Ok(None) => panic!("the output ended without {what}:\n{seen}"),
        Err(_) => panic!("no {what} within {within:?}:\n{seen}"),
    }
}

/// The rest of `lines`, read to their end in a task of its own.
pub fn rest_of<R>(mut lines: tokio::io::Lines<R>) -> tokio::task::JoinHandle<String>
where
    R: tokio::io::AsyncBufRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
}

/// The lines of `child`'s piped standard error.
pub fn stderr_lines(
    child: &mut tokio::process::Child,
) -> tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>> {
    use tokio::io::AsyncBufReadExt;
    let stderr = child.stderr.take().expect("standard error is piped");
    tokio::io::BufReader::new(stderr).lines()
}

/// The API of a starting `serve --listen 127.0.0.1:0`: reads its standard output (piped) until
/// it prints the page's URL, within 30 s; (base URL, API key). `log` is named if it ends first.
pub async fn serve_api(child: &mut tokio::process::Child, log: &Path) -> (String, String) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child
        .stdout
        .take()
        .expect("serve's standard output is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let what = format!("the page's URL (see {})", log.display());
    let within = Duration::from_secs(30);
    let url = read_until(&mut lines, &mut String::new(), within, &what, |line| {
        let at = line.find("http://127.0.0.1:")?;
        Some(line[at..].trim().to_string())
    })
    .await;
    let (base, key) = url
        .split_once("/?apikey=")
        .expect("the URL carries the key");
    (base.to_string(), key.to_string())
}

/// `serve` on `config` and `data`, its API on an ephemeral loopback port, logging in through
/// `browser`, no API key lent by the environment; standard output piped (the API's address is
/// read from it) and killed if the test ends first. The caller adds flags and standard error.
pub fn serve_command(config: &Path, data: &Path, browser: &str) -> tokio::process::Command {
    let mut command = bin(&["serve", "--listen", "127.0.0.1:0"]);
    command
        .args(["--config", config.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--browser-command", browser])
        .env_remove("MCPPROXY_OAUTH_API_KEY")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A daemon's standard error appended to the file `log`: a pipe nobody reads would stop the
/// daemon once full.
pub fn log_to(log: &Path) -> Stdio {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Stdio::from(file)
}

/// A running `serve --listen 127.0.0.1:0`: the process, its API's base URL and key, and a
/// client for the API whose requests are bounded.
pub struct Serve {
    pub child: tokio::process::Child,
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Serve {
    /// Starts `command` (a `serve_command`) and reads the API's address it prints (within
    /// 30 s; `log` is named if it ends first); the client's requests last at most `timeout`.
    pub async fn start(
        mut command: tokio::process::Command,
        log: &Path,
        timeout: Duration,
    ) -> Serve {
        let mut child = command.spawn().expect("serve starts");
        let (base, key) = serve_api(&mut child, log).await;
        let http = reqwest::Client::builder().timeout(timeout).build().unwrap();
        Serve {
            child,
            base,
            key,
            http,
        }
    }

    /// A request to the API's `path`, with the key.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
    }
}
