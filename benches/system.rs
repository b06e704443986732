//! The system-level benchmarks of issue 13, in one run, printed as five tables side by side
//! and written to BENCHMARKS.md with the machine and the date:
//!
//! 1. the hot path (ours by name and per server, a bare `RwLock`, rmcp's `AuthClient`),
//! 2. stampedes on one expired / one stale token (ours and rmcp, same OAuth test server),
//! 3. scale: many supervised servers at a short TTL for a few lifetimes,
//! 4. cold start with valid tokens, and a restart with expired ones,
//! 5. durable token writes per second with and without group commit.
//!
//! `make bench` runs the sizes; `cargo bench --bench system -- --quick` runs small
//! ones (for iterating). Everything runs against the real OAuth test server on loopback and
//! real SQLite files in a temp folder that is removed at the end. Progress goes to stderr.
//! Numbers only: nothing here asserts a speed.

use std::alloc::{GlobalAlloc, Layout, System as SystemAlloc};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mcpproxy_oauth::clock::now_ms;
#[path = "shared/machine.rs"]
mod machine;
use machine::{load_average, machine};

use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::store::db::StoredToken;
use mcpproxy_oauth::store::{Sealing, TokenRegistry};
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle, database_path};
use oauth_test_server::{Config, OAuthTestServer};
use rmcp::transport::auth::{AuthClient, AuthorizationManager, InMemoryCredentialStore};
use url::Url;

// ---------------------------------------------------------------------------------------
// Allocation counting: the hot-path table says how many allocations one call makes.

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { SystemAlloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { SystemAlloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { SystemAlloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------
// Sizes.

struct Sizes {
    quick: bool,
    /// `--only scale` (or hot, stampede, writes): run that part alone, print its tables, and
    /// leave BENCHMARKS.md alone unless BENCH_OUT names a file (for profiling one part).
    only: Option<String>,
    hot_ops: u64,
    stampede: usize,
    scale: Vec<usize>,
    ttl: Duration,
    lifetimes: u32,
    cold: usize,
    /// The large point: this many servers at `large_ttl`, idle for `large_idle`, then their
    /// cold start and restart (0: none). `--only large` runs it alone.
    large: usize,
    large_ttl: Duration,
    large_idle: Duration,
    writes: usize,
}

impl Sizes {
    fn from_args() -> Sizes {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned());
        let mut sizes = if quick {
            Sizes {
                quick,
                only,
                hot_ops: 200_000,
                stampede: 1_000,
                scale: vec![100, 300],
                ttl: Duration::from_secs(8),
                lifetimes: 2,
                cold: 300,
                large: 0,
                large_ttl: Duration::from_secs(3_600),
                large_idle: Duration::from_secs(10),
                writes: 400,
            }
        } else {
            Sizes {
                quick,
                only,
                hot_ops: 2_000_000,
                stampede: 1_000,
                scale: vec![1_000, 10_000],
                ttl: Duration::from_secs(60),
                lifetimes: 3,
                cold: 10_000,
                // The point. Every server logs in through a loopback redirect
                // listener of its own: the browser resets its callback connection so that
                // no TIME_WAIT holds a listener's port (see `deliver_callback`).
                large: 100_000,
                large_ttl: Duration::from_secs(3_600),
                large_idle: Duration::from_secs(60),
                writes: 2_000,
            }
        };
        // Overrides, for profiling one size or trying a larger point: BENCH_SCALE=10000
        // (comma-separated), BENCH_TTL=60s, BENCH_LIFETIMES=1, BENCH_COLD=10000 (0: none),
        // BENCH_LARGE=50000 (0: none), BENCH_LARGE_IDLE=60s.
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(list) = env("BENCH_SCALE") {
            sizes.scale = list
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse()
                        .expect("BENCH_SCALE: numbers, comma-separated")
                })
                .collect();
        }
        if let Some(ttl) = env("BENCH_TTL") {
            sizes.ttl = humantime::parse_duration(&ttl).expect("BENCH_TTL: a duration, e.g. 60s");
        }
        if let Some(n) = env("BENCH_LIFETIMES") {
            sizes.lifetimes = n.parse().expect("BENCH_LIFETIMES: a number");
        }
        if let Some(n) = env("BENCH_COLD") {
            sizes.cold = n.parse().expect("BENCH_COLD: a number");
        }
        if let Some(n) = env("BENCH_LARGE") {
            sizes.large = n.parse().expect("BENCH_LARGE: a number");
        }
        if let Some(idle) = env("BENCH_LARGE_IDLE") {
            sizes.large_idle =
                humantime::parse_duration(&idle).expect("BENCH_LARGE_IDLE: a duration, e.g. 60s");
        }
        sizes
    }

    fn runs(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == part)
    }
}

fn progress(line: &str) {
    eprintln!(
        "[bench {}] {line}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
}

// ---------------------------------------------------------------------------------------
// Measuring the process: RSS, CPU time of the daemon's threads, open descriptors.

fn rss_bytes() -> u64 {
    rss_of("/proc/self/status")
}

/// `VmRSS` of a `/proc/<pid>/status` file.
fn rss_of(status: &str) -> u64 {
    let status = std::fs::read_to_string(status).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// CPU seconds of this process's threads, those of the OAuth test server and of the bench's
/// own driver excluded (they are named so): what the daemon itself costs.
fn daemon_cpu_seconds() -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("test-server") || comm.starts_with("bench-driver") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: utime is the 14th field, stime the 15th.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total as f64 / ticks
}

/// Samples `probe` every 5 ms on its own thread until dropped; keeps the maximum.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    fn start(probe: impl Fn() -> usize + Send + 'static) -> PeakSampler {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::Builder::new()
            .name("bench-driver-sampler".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    p.fetch_max(probe(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .unwrap();
        PeakSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------
// Setup helpers.

/// The OAuth test server on its own runtime (threads named `test-server`), so its CPU is
/// not counted as the daemon's.
struct TestServer {
    server: Option<OAuthTestServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    fn start(config: Config) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-server")
            .enable_all()
            .build()
            .unwrap();
        let server = runtime
            .block_on(OAuthTestServer::start(config))
            .expect("the OAuth test server starts on loopback");
        TestServer {
            server: Some(server),
            runtime: Some(runtime),
        }
    }
    fn get(&self) -> &OAuthTestServer {
        self.server.as_ref().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let (Some(server), Some(runtime)) = (self.server.take(), self.runtime.take()) {
            runtime.block_on(server.shutdown());
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// The OAuth test server's binary as a process of its own, for the scale and cold-start
/// tables: the RSS and CPU they report are then the daemon's alone (the server keeps every
/// client, token family and issued JWT). `make bench` builds it (`target/release`);
/// OAUTH_TEST_SERVER_BIN names another build.
struct ServerProcess {
    child: std::process::Child,
    /// `host:port` of its listener.
    addr: String,
    mcp_url: String,
}

impl ServerProcess {
    fn start(access_token_ttl: Duration) -> ServerProcess {
        use std::io::BufRead;
        let bin = std::env::var("OAUTH_TEST_SERVER_BIN").map_or_else(
            |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/oauth-test-server"),
            PathBuf::from,
        );
        let mut child = std::process::Command::new(&bin)
            .args(["--port", "0", "--access-token-ttl"])
            .arg(format!("{}ms", access_token_ttl.as_millis()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the OAuth test server {} ({e}): build it with \
                     `cargo build --release --locked -p oauth-test-server` (make bench does)",
                    bin.display()
                )
            });
        let stdout = child.stdout.take().expect("piped");
        let (mut listening, mut mcp_url) = (None, None);
        // It prints three lines at once, then nothing: read until both are known.
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("the test server's stdout");
            if let Some(url) = line.strip_prefix("listening on ") {
                listening = Some(Url::parse(url).expect("a URL"));
            } else if let Some(url) = line.strip_prefix("mcp endpoint ") {
                mcp_url = Some(url.to_string());
            }
            if listening.is_some() && mcp_url.is_some() {
                break;
            }
        }
        let (Some(listening), Some(mcp_url)) = (listening, mcp_url) else {
            let _ = child.kill();
            panic!(
                "the OAuth test server {} exited before it listened",
                bin.display()
            );
        };
        ServerProcess {
            child,
            addr: format!(
                "{}:{}",
                listening.host_str().unwrap(),
                listening.port_or_known_default().unwrap()
            ),
            mcp_url,
        }
    }

    /// Its token requests by grant type, through `GET /control/stats` (a plain HTTP/1.0
    /// exchange), read as a stream that keeps only that field.
    ///
    /// Why not the whole `Stats`: it lists every `resource` received (two per login) and every
    /// registration. Read whole once a second (a `String`, then `Vec<String>`s), that was 2.7 MiB
    /// of short-lived allocations in this process at 10,000 servers, ten times that at 100,000,
    /// and the heap they left behind was counted as the daemon's peak RSS (issue 23).
    fn token_requests_for(&self, grant_type: &str) -> u64 {
        use std::io::{BufRead, BufReader, Write};
        #[derive(serde::Deserialize)]
        struct Counters {
            token_requests: std::collections::BTreeMap<String, u64>,
        }
        let mut socket = std::net::TcpStream::connect(&self.addr).expect("the test server");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            socket,
            "GET /control/stats HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut answer = BufReader::new(socket);
        let mut line = String::new();
        // The status line and the headers, up to the empty line.
        for _ in 0..64 {
            line.clear();
            answer.read_line(&mut line).expect("the stats answer");
            if line.trim_end().is_empty() {
                break;
            }
        }
        let counters: Counters =
            serde_json::from_reader(answer).expect("the test server's stats as JSON");
        counters
            .token_requests
            .get(grant_type)
            .copied()
            .unwrap_or(0)
    }

    /// Its resident memory.
    fn rss_bytes(&self) -> u64 {
        rss_of(&format!("/proc/{}/status", self.child.id()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's own runtime: its threads are named `bench-driver`, so their CPU is not the
/// daemon's.
fn driver_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("bench-driver")
        .enable_all()
        .build()
        .unwrap()
}

/// The auto-approving browsers' client for the test server's `/authorize`: redirects are not
/// followed (the callback is delivered by [`deliver_callback`]), connections are kept alive.
fn browser_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .unwrap()
}

/// Asks the test server's `/authorize` (it approves at once) and returns where it redirects:
/// the daemon's callback, with the code.
async fn authorize_redirect(client: &reqwest::Client, url: Url) -> Option<Url> {
    let answer = client.get(url).send().await.ok()?;
    let location = answer.headers().get("location")?.to_str().ok()?;
    Url::parse(location).ok()
}

/// Delivers the redirect to the daemon's callback listener as a browser would (one GET),
/// then ends the connection with a reset (`SO_LINGER` 0) once the whole answer is read.
///
/// Why: the listener answers `connection: close` and shuts its side first, so an orderly close
/// leaves its accepted socket in TIME_WAIT for 60 s, holding the listener's port. A port with
/// a socket in any state is one `bind(127.0.0.1:0)` will not hand out, and the large point
/// logs in 200 to 350 servers a second, each on a new listener: with 28,232 ephemeral ports
/// (32768-60999) the logins ran out of ports. The reset closes both ends at once; the daemon
/// has already answered and shut its side, so nothing it does is skipped.
async fn deliver_callback(callback: &Url) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (Some(host), Some(port)) = (callback.host_str(), callback.port_or_known_default()) else {
        return;
    };
    let target = &callback[url::Position::BeforePath..url::Position::AfterQuery];
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(64 * 1024)
            .read_to_end(&mut answer)
            .await
            .ok()?;
        stream.set_zero_linger().ok()
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), exchange).await;
}

fn following_browser() -> BrowserLauncher {
    let client = browser_client(Duration::from_secs(30));
    BrowserLauncher::handler(move |url: Url| {
        let client = client.clone();
        tokio::spawn(async move {
            if let Some(callback) = authorize_redirect(&client, url).await {
                deliver_callback(&callback).await;
            }
        });
    })
}

fn supervisor_config(mcp_url: &str, names: &[String], dir: &Path) -> SupervisorConfig {
    let servers = names
        .iter()
        .map(|n| UpstreamConfig::new(n, Url::parse(mcp_url).unwrap()))
        .collect();
    SupervisorConfig {
        browser: following_browser(),
        login_timeout: Duration::from_secs(120),
        sealing: Sealing::Plaintext,
        ..SupervisorConfig::new(servers, dir.to_path_buf())
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("srv-{i:05}")).collect()
}

/// Logs every server in, `at_once` at a time.
async fn login_all(handle: &SupervisorHandle, at_once: usize) {
    let started = Instant::now();
    let total = handle.servers().len();
    for (i, chunk) in handle.servers().chunks(at_once).enumerate() {
        let calls = chunk.iter().map(|name| {
            let (handle, name) = (handle.clone(), name.clone());
            async move { (handle.reconnect(&name).await, name) }
        });
        for (result, name) in futures_util::future::join_all(calls).await {
            if let Err(e) = result {
                panic!("{name} could not log in: {e}");
            }
        }
        let done = (i + 1) * at_once;
        if done % 1_000 < at_once {
            progress(&format!(
                "  {} of {total} logged in ({:?}; TCP sockets in TIME_WAIT on this host: {})",
                done.min(total),
                started.elapsed(),
                time_wait_sockets()
            ));
        }
    }
}

/// The TCP sockets of this network namespace in TIME_WAIT (every process's): each holds its
/// local port, which `bind(127.0.0.1:0)` then does not hand out.
fn time_wait_sockets() -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| line.split_whitespace().nth(3) == Some("06"))
                .count()
        })
        .sum()
}

/// Asks every server for a token at once; the time until the last one answers.
async fn all_answer(handle: &SupervisorHandle) -> Duration {
    let started = Instant::now();
    let calls = handle.servers().iter().map(|name| {
        let (handle, name) = (handle.clone(), name.clone());
        async move { (handle.access_token(&name).await, name) }
    });
    for (result, name) in futures_util::future::join_all(calls).await {
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
    }
    started.elapsed()
}

fn expire_all(dir: &Path) -> usize {
    rusqlite::Connection::open(database_path(dir))
        .unwrap()
        .execute(
            "UPDATE oauth_tokens SET expires_at = ?1",
            [now_ms() - 1_000],
        )
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Tables.

struct Table {
    title: String,
    note: String,
    header: Vec<String>,
    /// The columns that name a row (the first one unless `keyed` says otherwise): a row of
    /// the previous run with the same values is the one its figures are compared with.
    key: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            note: String::new(),
            header: header.iter().map(|h| h.to_string()).collect(),
            key: header.iter().take(1).map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    fn keyed(mut self, key: &[&str]) -> Table {
        self.key = key.iter().map(|h| h.to_string()).collect();
        self
    }
    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out += &line(&self.header);
        out += &line(
            &self
                .header
                .iter()
                .map(|_| "---".to_string())
                .collect::<Vec<_>>(),
        );
        for row in &self.rows {
            out += &line(row);
        }
        if !self.note.is_empty() {
            out += &format!("\n{}\n", self.note);
        }
        out
    }
}

/// A table as the previous BENCHMARKS.md printed it.
struct Printed {
    number: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// `3` of `3. Scale: ...`: tables are matched by number (a title may name the sizes).
fn table_number(title: &str) -> String {
    title
        .split_once('.')
        .map_or(title, |(n, _)| n)
        .trim()
        .to_string()
}

/// A header without its goal (`CPU per refresh (goal < 0.4 ms)` is `CPU per refresh`), so a
/// goal reworded still matches its column.
fn column_name(header: &str) -> &str {
    header.split(" (goal").next().unwrap_or(header).trim()
}

/// A cell without the previous figure a run before added to it.
fn figure(cell: &str) -> &str {
    cell.split(" (was ").next().unwrap_or(cell).trim()
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split(" | ").map(|c| c.trim().to_string()).collect()
}

/// Every numbered table of a BENCHMARKS.md.
fn printed_tables(doc: &str) -> Vec<Printed> {
    let mut tables: Vec<Printed> = Vec::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(title) = line.strip_prefix("### ") else {
            continue;
        };
        while lines
            .peek()
            .is_some_and(|l| !l.starts_with('|') && !l.starts_with('#'))
        {
            lines.next();
        }
        let Some(header) = lines.next_if(|l| l.starts_with('|')) else {
            continue;
        };
        lines.next_if(|l| l.starts_with('|')); // | --- |
        let mut rows = Vec::new();
        while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
            rows.push(cells(row));
        }
        tables.push(Printed {
            number: table_number(title),
            header: cells(header)
                .iter()
                .map(|h| column_name(h).to_string())
                .collect(),
            rows,
        });
    }
    tables
}

/// Writes the previous run's figure beside each one that changed: `52 ns (was 61 ns)`. The
/// previous run is the BENCHMARKS.md this run replaces; rows are matched by their key
/// columns, cells by their column's name.
fn mark_changes(tables: &mut [Table], previous: &str) {
    let printed = printed_tables(previous);
    for table in tables {
        let Some(old) = printed
            .iter()
            .find(|p| p.number == table_number(&table.title))
        else {
            continue;
        };
        let column = |name: &str| old.header.iter().position(|h| h == column_name(name));
        let key: Vec<(usize, usize)> = table
            .key
            .iter()
            .filter_map(|k| {
                let new = table.header.iter().position(|h| h == k)?;
                Some((new, column(k)?))
            })
            .collect();
        if key.is_empty() {
            continue;
        }
        let mut changed = false;
        for row in &mut table.rows {
            let Some(old_row) = old.rows.iter().find(|o| {
                key.iter().all(|&(n, o_i)| {
                    o.get(o_i).map(|c| figure(c)) == row.get(n).map(String::as_str)
                })
            }) else {
                continue;
            };
            for (i, cell) in row.iter_mut().enumerate() {
                if key.iter().any(|&(n, _)| n == i) {
                    continue;
                }
                let Some(was) = column(&table.header[i]).and_then(|o| old_row.get(o)) else {
                    continue;
                };
                let was = figure(was);
                if was != cell.as_str() {
                    *cell = format!("{cell} (was {was})");
                    changed = true;
                }
            }
        }
        if changed {
            table.note +=
                "\n\n(was X): the figure of the same row in the BENCHMARKS.md this run replaced.";
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ns(v: f64) -> String {
    format!("{v:.0} ns")
}

// ---------------------------------------------------------------------------------------
// 1. The hot path.

/// Latency samples in ns per op (each sample: the mean of a batch of 64 calls) and ops/s.
struct HotResult {
    ops_per_sec: f64,
    p50: f64,
    p99: f64,
    allocs_per_op: f64,
}

const BATCH: u64 = 64;

fn hot_run<F, Fut>(runtime: &tokio::runtime::Runtime, tasks: usize, ops: u64, op: F) -> HotResult
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = (ops / tasks as u64 / BATCH).max(1);
    // Warm up, then count allocations over one batch on this thread's task alone.
    runtime.block_on({
        let op = op.clone();
        async move {
            for _ in 0..BATCH * 16 {
                op().await;
            }
        }
    });
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    runtime.block_on({
        let op = op.clone();
        async move {
            for _ in 0..BATCH * 16 {
                op().await;
            }
        }
    });
    let allocs_per_op = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / (BATCH * 16) as f64;
    let started = Instant::now();
    let samples: Vec<f64> = runtime.block_on(async move {
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let (op, barrier) = (op.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut samples = Vec::with_capacity(per_task as usize);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        for _ in 0..BATCH {
                            op().await;
                        }
                        samples.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
                    }
                    samples
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    let mut sorted = samples;
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q) as usize];
    HotResult {
        ops_per_sec: (per_task * BATCH * tasks as u64) as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        allocs_per_op,
    }
}

/// rmcp's client, logged in at the test server through its own AuthorizationManager
/// (discovery, registration, authorization URL, code exchange); the browser step is a
/// plain GET whose redirect carries the code.
async fn rmcp_login(
    srv: &OAuthTestServer,
) -> (AuthClient<reqwest::Client>, InMemoryCredentialStore) {
    let mut manager = AuthorizationManager::new(srv.mcp_url().as_str())
        .await
        .expect("rmcp: manager");
    let metadata = manager
        .resolve_metadata()
        .await
        .expect("rmcp: discovery")
        .metadata;
    manager.set_metadata(metadata);
    let store = InMemoryCredentialStore::new();
    manager.set_credential_store(store.clone());
    let redirect = "http://127.0.0.1:9/callback";
    manager
        .register_client("rmcp-bench", redirect, &["mcp:read"])
        .await
        .expect("rmcp: registration");
    let url = manager
        .get_authorization_url(&["mcp:read"])
        .await
        .expect("rmcp: authorization URL");
    let answer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .expect("rmcp: authorize");
    let location = answer
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("the authorization endpoint redirects")
        .to_string();
    let location = Url::parse(&location).unwrap();
    let query: HashMap<String, String> = location.query_pairs().into_owned().collect();
    manager
        .exchange_code_for_token_with_issuer(
            &query["code"],
            &query["state"],
            query.get("iss").map(String::as_str),
        )
        .await
        .expect("rmcp: code exchange");
    (AuthClient::new(reqwest::Client::new(), manager), store)
}

/// Makes rmcp's stored token look old enough to be expired (rmcp compares its receipt time
/// plus `expires_in` with its clock).
async fn rmcp_expire(store: &InMemoryCredentialStore) {
    use rmcp::transport::auth::CredentialStore;
    let mut creds = store.load().await.unwrap().expect("rmcp holds credentials");
    creds.token_received_at = Some(0);
    store.save(creds).await.unwrap();
}

fn hot_path(sizes: &Sizes) -> Table {
    progress("1/5 hot path");
    let mut table = Table::new(
        "1. Hot path: a still-valid token",
        &[
            "caller",
            "tasks",
            "ops/s",
            "p50",
            "p99",
            "p50 / bare read's (goal ours by name <= 1.5x)",
            "allocations/call (goal 0)",
        ],
    )
    .keyed(&["caller", "tasks"]);
    let runtime = driver_runtime(8);
    let srv = TestServer::start(Config::default());
    let dir = temp_dir("hot");
    let names = vec!["srv".to_string()];
    let handle = runtime.block_on(async {
        let handle = SupervisorHandle::start(supervisor_config(&srv.get().mcp_url(), &names, &dir))
            .await
            .unwrap();
        handle.reconnect("srv").await.expect("logged in");
        handle
    });
    let (rmcp, _store) = runtime.block_on(rmcp_login(srv.get()));
    let token: Arc<str> = handle
        .cached_access_token("srv")
        .unwrap()
        .unwrap()
        .secret()
        .as_str()
        .into();
    let rwlock = Arc::new(RwLock::new(Some(token)));
    // Behind an `Arc`: cloning an actix `Addr` allocates, and the bench clones per call.
    let server = Arc::new(handle.server_tokens("srv").unwrap());
    for tasks in [1usize, 8] {
        let h = handle.clone();
        let by_name = hot_run(&runtime, tasks, sizes.hot_ops, move || {
            let h = h.clone();
            async move {
                std::hint::black_box(h.access_token("srv").await.unwrap());
            }
        });
        let s = server.clone();
        let per_server = hot_run(&runtime, tasks, sizes.hot_ops, move || {
            let s = s.clone();
            async move {
                std::hint::black_box(s.access_token().await.unwrap());
            }
        });
        let l = rwlock.clone();
        let bare = hot_run(&runtime, tasks, sizes.hot_ops, move || {
            let l = l.clone();
            async move {
                std::hint::black_box(l.read().unwrap().clone());
            }
        });
        let r = rmcp.clone();
        let rmcp_result = hot_run(&runtime, tasks, sizes.hot_ops / 10, move || {
            let r = r.clone();
            async move {
                std::hint::black_box(r.get_access_token().await.unwrap());
            }
        });
        for (name, result) in [
            ("ours: `access_token(name)`", &by_name),
            ("ours: `ServerTokens::access_token()`", &per_server),
            ("bare `RwLock<Option<Arc<str>>>` read", &bare),
            ("rmcp 3.11 `AuthClient::get_access_token()`", &rmcp_result),
        ] {
            table.row(vec![
                name.into(),
                tasks.to_string(),
                format!("{:.2} M", result.ops_per_sec / 1e6),
                ns(result.p50),
                ns(result.p99),
                format!("{:.2}x", result.p50 / bare.p50.max(0.1)),
                format!("{:.2}", result.allocs_per_op),
            ]);
        }
        table.note += &format!(
            "{tasks} task(s): ours by name / bare RwLock = {:.2}x at p50; per server / bare = {:.2}x.\n",
            by_name.p50 / bare.p50.max(0.1),
            per_server.p50 / bare.p50.max(0.1)
        );
    }
    table.note += "Each sample is the mean of 64 calls inside one tokio task (8 worker threads); the \
allocation count is over 1,024 calls of one task (the tokio task machinery included: zero means \
the call allocates nothing). The clone in the bare row is the `Arc`'s, as our handles hand out.";
    runtime.block_on(handle.shutdown());
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
    table
}

// ---------------------------------------------------------------------------------------
// 2. Stampedes.

/// `n` callers of `call` at once: the time until the last one is answered, and how many
/// failed (`call` answered `false`).
async fn all_at_once<F, Fut>(n: usize, call: F) -> (Duration, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let results = futures_util::future::join_all((0..n).map(|_| call())).await;
    (started.elapsed(), results.iter().filter(|ok| !**ok).count())
}

fn stampede(sizes: &Sizes) -> Table {
    progress("2/5 stampedes");
    let n = sizes.stampede;
    let mut table = Table::new(
        &format!(
            "2. Stampede: {n} concurrent callers (OAuth test server: rotation + reuse detection)"
        ),
        &[
            "client",
            "scenario",
            "token requests (goal 1)",
            "reuse detections (goal 0)",
            "last caller holds the new token",
            "callers failed",
        ],
    )
    .keyed(&["client", "scenario"]);
    let runtime = driver_runtime(2);
    let srv = TestServer::start(Config::default());
    let dir = temp_dir("stampede");
    let names = vec!["srv".to_string()];
    runtime.block_on(async {
        let first = SupervisorHandle::start(supervisor_config(&srv.get().mcp_url(), &names, &dir))
            .await
            .unwrap();
        first.reconnect("srv").await.expect("logged in");
        first.shutdown().await;
    });
    expire_all(&dir);
    let refreshes = || srv.get().stats().token_requests_for("refresh_token");
    let reuse = || srv.get().stats().refresh_token_reuse;

    let mut row = |client: &str,
                   scenario: &str,
                   (before, reuse_before): (u64, u64),
                   (elapsed, failed): (Duration, usize)| {
        table.row(vec![
            client.into(),
            scenario.into(),
            (refreshes() - before).to_string(),
            (reuse() - reuse_before).to_string(),
            ms(elapsed),
            failed.to_string(),
        ]);
    };

    // Ours, expired token: the restart finds it expired; every caller asks at once.
    let counts = (refreshes(), reuse());
    let handle = runtime
        .block_on(SupervisorHandle::start(supervisor_config(
            &srv.get().mcp_url(),
            &names,
            &dir,
        )))
        .unwrap();
    let measured = runtime.block_on(all_at_once(n, || {
        let h = handle.clone();
        async move { h.access_token("srv").await.is_ok() }
    }));
    row("ours", "expired token", counts, measured);

    // Ours, 401 for the same stale token: a caller failed if it got the stale one back.
    let stale = handle
        .cached_access_token("srv")
        .unwrap()
        .unwrap()
        .secret()
        .clone();
    let counts = (refreshes(), reuse());
    let measured = runtime.block_on(all_at_once(n, || {
        let (h, stale) = (handle.clone(), stale.clone());
        async move {
            h.report_unauthorized("srv", &stale, None)
                .await
                .is_ok_and(|g| g.access_token.secret() != &stale)
        }
    }));
    row("ours", "401 for one stale token", counts, measured);
    runtime.block_on(handle.shutdown());

    // rmcp, expired token: one shared AuthClient, every caller asks at once.
    let (rmcp, store) = runtime.block_on(rmcp_login(srv.get()));
    runtime.block_on(rmcp_expire(&store));
    let counts = (refreshes(), reuse());
    let measured = runtime.block_on(all_at_once(n, || {
        let r = rmcp.clone();
        async move { r.get_access_token().await.is_ok() }
    }));
    row("rmcp 3.11", "expired token", counts, measured);

    // rmcp, 401: rmcp has no "this token was refused" call; a caller that got a 401 can only
    // force a refresh (`AuthorizationManager::refresh_token`) through the shared client.
    let counts = (refreshes(), reuse());
    let measured = runtime.block_on(all_at_once(n, || {
        let r = rmcp.clone();
        async move { r.auth_manager.lock().await.refresh_token().await.is_ok() }
    }));
    row("rmcp 3.11", "401 for one stale token", counts, measured);
    table.note = "Ours: the expired case restarts the daemon over a stored expired token, then all callers call \
`access_token(name)` at once; the 401 case has every caller `report_unauthorized(name, stale)`; a caller \
\"failed\" if it got an error or the stale token back. rmcp: one `AuthClient` shared by all callers \
(its token aged past expiry in its credential store); rmcp has no call to report a refused token, so the \
401 row has every caller force `refresh_token()` through the shared client's mutex."
        .into();
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
    table
}

// ---------------------------------------------------------------------------------------
// 3. Scale, and 4. cold start (over the store the scale run leaves).

struct ScaleRow {
    servers: usize,
    ttl: Duration,
    run: Duration,
    /// RSS growth once every server is logged in, before the run: the idle daemon.
    idle_rss: u64,
    /// Peak RSS growth during the run.
    peak_rss: u64,
    cpu_share: f64,
    peak_refreshes: u64,
    past_expiry: u64,
    late: u64,
    refreshes: u64,
    /// The OAuth test server's own RSS at the end (its process, not counted above).
    server_rss: u64,
}

impl ScaleRow {
    /// The daemon's CPU per refresh, in ms (none without refreshes).
    fn cpu_per_refresh_ms(&self) -> Option<f64> {
        (self.refreshes > 0)
            .then(|| self.cpu_share * self.run.as_secs_f64() * 1000.0 / self.refreshes as f64)
    }
}

/// How long a scale run lasts: `lifetimes` TTLs, or BENCH_RUN (e.g. `60s`, for a long TTL).
fn run_length(sizes: &Sizes) -> Duration {
    std::env::var("BENCH_RUN")
        .ok()
        .filter(|v| !v.is_empty())
        .map_or(sizes.ttl * sizes.lifetimes, |v| {
            humantime::parse_duration(&v).expect("BENCH_RUN: a duration, e.g. 60s")
        })
}

/// Runs `servers` servers at the test server's TTL for `run_for`; returns the row and the
/// folder whose store holds their (valid) tokens.
fn scale_run(
    servers: usize,
    ttl: Duration,
    run_for: Duration,
    runtime: &tokio::runtime::Runtime,
    srv: &ServerProcess,
) -> (ScaleRow, PathBuf) {
    let dir = temp_dir(&format!("scale-{servers}"));
    let names = names(servers);
    let rss_before = rss_bytes();
    progress(&format!("3/5 scale: {servers} servers, logging in"));
    let handle = runtime.block_on(async {
        let handle = SupervisorHandle::start(supervisor_config(&srv.mcp_url, &names, &dir))
            .await
            .unwrap();
        login_all(&handle, 64).await;
        handle
    });
    let idle_rss = rss_bytes().saturating_sub(rss_before);
    let refreshes_at = |s: &ServerProcess| s.token_requests_for("refresh_token");
    progress(&format!(
        "3/5 scale: {servers} servers for {run_for:?} (TTL {ttl:?})"
    ));
    let (cpu_start, wall_start, refreshes_start) =
        (daemon_cpu_seconds(), Instant::now(), refreshes_at(srv));
    let (mut past_expiry, mut late, mut peak_refreshes, mut peak_rss) = (0u64, 0u64, 0u64, 0u64);
    let mut last_refreshes = refreshes_start;
    let mut next_progress = Instant::now() + Duration::from_secs(30);
    // The sampling runs on a thread named like the driver's, so its CPU is not the daemon's.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("bench-driver-scale".into())
            .spawn_scoped(scope, || {
                while wall_start.elapsed() < run_for {
                    let second = Instant::now();
                    // Every server's token, once a second: a token handed out must not be expired,
                    // and a server without a usable one refreshed too late.
                    let now = now_ms();
                    // By name (the daemon's lookup), not through `ServerTokens` handles held
                    // here: each handle is a sender of the server's actor (about 90 bytes), RSS
                    // of the bench's, not the daemon's.
                    for name in &names {
                        match handle
                            .cached_access_token(name)
                            .expect("a supervised server")
                        {
                            Some(token) if token.expires_at().is_some_and(|e| e <= now) => {
                                past_expiry += 1
                            }
                            Some(_) => {}
                            None => late += 1,
                        }
                    }
                    peak_rss = peak_rss.max(rss_bytes());
                    if let Some(rest) = Duration::from_secs(1).checked_sub(second.elapsed()) {
                        std::thread::sleep(rest);
                    }
                    let refreshes = refreshes_at(srv);
                    peak_refreshes = peak_refreshes.max(refreshes - last_refreshes);
                    last_refreshes = refreshes;
                    if Instant::now() > next_progress {
                        progress(&format!(
                            "  {:?} of {:?}, {} refreshes so far",
                            wall_start.elapsed(),
                            run_for,
                            refreshes - refreshes_start
                        ));
                        next_progress += Duration::from_secs(30);
                    }
                }
            })
            .expect("a sampling thread")
            .join()
            .expect("the sampling thread ends");
    });
    let cpu = daemon_cpu_seconds() - cpu_start;
    let wall = wall_start.elapsed();
    let row = ScaleRow {
        servers,
        ttl,
        run: wall,
        idle_rss,
        peak_rss: peak_rss.saturating_sub(rss_before),
        cpu_share: cpu / wall.as_secs_f64(),
        peak_refreshes,
        past_expiry,
        late,
        refreshes: refreshes_at(srv) - refreshes_start,
        server_rss: srv.rss_bytes(),
    };
    runtime.block_on(handle.shutdown());
    (row, dir)
}

struct ColdRow {
    servers: usize,
    valid_connected: Duration,
    expired_refreshed: Duration,
    peak_fds: usize,
    peak_flows: usize,
    limit: usize,
    /// Refreshes and logins the test server answered during the restart.
    refreshes: u64,
    logins: u64,
}

fn cold_start(
    servers: usize,
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
    srv: &ServerProcess,
) -> ColdRow {
    let names = names(servers);
    progress(&format!("4/5 cold start: {servers} valid tokens"));
    let config = supervisor_config(&srv.mcp_url, &names, dir);
    let limit = config.max_concurrent_refreshes;
    let valid_connected = runtime.block_on(async {
        let started = Instant::now();
        let handle = SupervisorHandle::start(config).await.unwrap();
        all_answer(&handle).await;
        let elapsed = started.elapsed();
        handle.shutdown().await;
        elapsed
    });
    progress(&format!("4/5 restart: {servers} expired tokens"));
    assert_eq!(expire_all(dir), servers, "every server has a stored token");
    let grants = |s: &ServerProcess| {
        (
            s.token_requests_for("refresh_token"),
            s.token_requests_for("authorization_code"),
        )
    };
    let (refreshes_before, logins_before) = grants(srv);
    let fds = PeakSampler::start(open_fds);
    let (expired_refreshed, peak_flows) = runtime.block_on(async {
        let started = Instant::now();
        let handle = SupervisorHandle::start(supervisor_config(&srv.mcp_url, &names, dir))
            .await
            .unwrap();
        all_answer(&handle).await;
        let elapsed = started.elapsed();
        let (_, peak) = handle.refresh_concurrency();
        handle.shutdown().await;
        (elapsed, peak)
    });
    let peak_fds = fds.finish();
    let (refreshes_after, logins_after) = grants(srv);
    ColdRow {
        servers,
        valid_connected,
        expired_refreshed,
        peak_fds,
        peak_flows,
        limit,
        refreshes: refreshes_after - refreshes_before,
        logins: logins_after - logins_before,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn scale_row(row: &ScaleRow) -> Vec<String> {
    vec![
        row.servers.to_string(),
        format!("{:?}", row.ttl),
        format!("{:.0} s", row.run.as_secs_f64()),
        format!("{} / {}", mib(row.idle_rss), mib(row.peak_rss)),
        format!(
            "{:.1} KiB",
            row.idle_rss as f64 / 1024.0 / row.servers as f64
        ),
        format!("{:.1}%", row.cpu_share * 100.0),
        row.cpu_per_refresh_ms()
            .map_or("-".into(), |ms| format!("{ms:.2} ms")),
        row.peak_refreshes.to_string(),
        row.refreshes.to_string(),
        row.past_expiry.to_string(),
        row.late.to_string(),
        mib(row.server_rss),
    ]
}

fn cold_row(c: &ColdRow) -> Vec<String> {
    vec![
        c.servers.to_string(),
        ms(c.valid_connected),
        ms(c.expired_refreshed),
        c.refreshes.to_string(),
        c.logins.to_string(),
        c.peak_fds.to_string(),
        format!("{} ({})", c.peak_flows, c.limit),
    ]
}

/// Tables 3 and 4: the scale points at the short TTL (`--only scale`), then the large point
/// at its long TTL (`--only large`): logged in, idle, then its cold start and restart.
fn scale_and_cold(sizes: &Sizes) -> (Table, Table) {
    let runtime = driver_runtime(2);
    let mut scale = Table::new(
        "3. Scale: supervised servers",
        &[
            "servers",
            "TTL",
            "run",
            "daemon RSS growth, idle / peak (goal < 150 MiB at 10,000; < 1 GiB at 100,000)",
            "per idle server (goal < 15 KiB)",
            "daemon CPU, share of one core (goal < 10%; idle < 2%)",
            "CPU per refresh (goal < 0.4 ms)",
            "peak refreshes/s",
            "refreshes",
            "tokens handed out past expiry (goal 0)",
            "server-seconds without a usable token (goal 0)",
            "test server RSS (own process)",
        ],
    )
    .keyed(&["servers", "TTL"]);
    let mut cold = Table::new(
        "4. Cold start and restart",
        &[
            "servers",
            "valid tokens: all usable (goal < 1 s at 10,000; < 5 s at 100,000)",
            "expired tokens: all refreshed",
            "refreshes during the restart",
            "logins during the restart (goal 0)",
            "peak open fds",
            "peak concurrent refreshes (limit)",
        ],
    );
    if sizes.runs("scale") {
        let srv = ServerProcess::start(sizes.ttl);
        for &servers in &sizes.scale {
            let (row, dir) = scale_run(servers, sizes.ttl, run_length(sizes), &runtime, &srv);
            scale.row(scale_row(&row));
            if servers == sizes.cold {
                cold.row(cold_row(&cold_start(servers, &dir, &runtime, &srv)));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    if sizes.runs("large") && sizes.large > 0 {
        let srv = ServerProcess::start(sizes.large_ttl);
        let (servers, ttl) = (sizes.large, sizes.large_ttl);
        let (row, dir) = scale_run(servers, ttl, sizes.large_idle, &runtime, &srv);
        scale.row(scale_row(&row));
        cold.row(cold_row(&cold_start(servers, &dir, &runtime, &srv)));
        let _ = std::fs::remove_dir_all(&dir);
    }
    scale.note = format!(
        "Each run logs every server in (not timed), then runs for {:?} at the short TTL ({} lifetime(s) \
unless BENCH_RUN says otherwise) and for {:?} at the long one (no refresh falls due: its CPU is the idle \
daemon's). The OAuth test server runs as its own process (its release \
binary), so RSS and CPU are the daemon's: RSS growth is this process's RSS minus its RSS before \
the daemon started, once every server is logged in (idle) and at its peak during the run; per idle \
server is the idle growth divided by the servers (the allocator keeps what the logins freed, so \
it is an upper bound). CPU: the daemon's threads only (the bench driver's threads are excluded by \
name), over the run's wall time; per refresh, that CPU divided by the refreshes the test server \
answered. Every server's token is read once a second: one handed out with its expiry passed counts \
in \"past expiry\"; a server with no usable token at that moment (its refresh came after expiry) \
counts one server-second. The daemon logs as `serve` does (JSON lines at info, to a file).",
        run_length(sizes),
        sizes.lifetimes,
        sizes.large_idle
    );
    cold.note = "Over the store the scale run left. Valid: time from `SupervisorHandle::start` until \
every server's `access_token()` has answered. Expired: every stored token's expiry set in the past, \
then the same, under the flow limit; the refreshes and logins are the test server's counts during it \
(a login would mean a refresh token was lost). Peak fds sampled every 5 ms \
(the daemon's process; the test server is another process)."
        .into();
    (scale, cold)
}

// ---------------------------------------------------------------------------------------
// 5. Durable writes.

fn token(i: usize) -> StoredToken {
    StoredToken {
        server_key: format!("srv_{i:016x}"),
        server_name: format!("srv-{i}"),
        server_url: "https://mcp.example/mcp".into(),
        resource: Some("https://mcp.example/mcp".into()),
        issuer: Some("https://as.example".into()),
        access_token: ("eyJ".to_string() + &"a".repeat(800)).into(),
        refresh_token: Some(("rt_".to_string() + &"b".repeat(60)).into()),
        token_type: "Bearer".into(),
        scope: Some("read write".into()),
        expires_at: Some(now_ms() + 3_600_000),
        obtained_at: now_ms(),
        flow_id: None,
        dpop: None,
    }
}

fn durable_writes(sizes: &Sizes) -> Table {
    progress("5/5 durable writes");
    let mut table = Table::new(
        "5. Durable token writes (WAL, synchronous=FULL, encrypted at rest)",
        &[
            "writers at once",
            "mode",
            "writes",
            "writes/s",
            "commits (fsyncs)",
        ],
    )
    .keyed(&["writers at once", "mode"]);
    let dir = temp_dir("writes");
    let rows = actix_rt::System::new().block_on(async {
        let mut rows = Vec::new();
        for (mode, grouped) in [("one transaction per write", false), ("group commit", true)] {
            for writers in [1usize, 64] {
                let path = dir.join(format!("{grouped}-{writers}")).join("tokens.db");
                let (registry, _) = TokenRegistry::start(&path).unwrap();
                let per_writer = sizes.writes / writers;
                let started = Instant::now();
                let tasks = (0..writers).map(|w| {
                    let registry = registry.clone();
                    async move {
                        for i in 0..per_writer {
                            let t = token(w * per_writer + i);
                            let r = if grouped {
                                registry.write(move |s| s.save_token(&t)).await
                            } else {
                                registry.call(move |s| s.save_token(&t)).await
                            };
                            r.expect("a durable write");
                        }
                    }
                });
                futures_util::future::join_all(tasks).await;
                let elapsed = started.elapsed();
                let total = per_writer * writers;
                let commits = if grouped {
                    registry.group_commits().0
                } else {
                    total as u64
                };
                rows.push(vec![
                    writers.to_string(),
                    mode.to_string(),
                    total.to_string(),
                    format!("{:.0}", total as f64 / elapsed.as_secs_f64()),
                    commits.to_string(),
                ]);
            }
        }
        rows
    });
    table.rows = rows;
    table.note = "Through the registry actor, as flows write (goal: at least 1,000 durable writes/s with group commit).".into();
    let _ = std::fs::remove_dir_all(&dir);
    table
}

// ---------------------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mcpproxy-oauth-bench-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------
// 6. Many logins at once (issue 23): the login and tab limits under a storm. Self-contained:
// its own browser, its own run; the limits are the defaults (64 logins, 4 tabs).

/// A browser that approves at once and counts the tabs still waiting for `/authorize`'s
/// redirect: now (`.0`), and at most at once (`.1`).
fn login_storm_browser() -> (
    BrowserLauncher,
    Arc<(AtomicUsize, AtomicUsize, AtomicUsize)>,
) {
    let tabs = Arc::new((
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ));
    let seen = tabs.clone();
    let client = browser_client(Duration::from_secs(60));
    let browser = BrowserLauncher::handler(move |url: Url| {
        let open = seen.0.fetch_add(1, Ordering::SeqCst) + 1;
        seen.1.fetch_max(open, Ordering::SeqCst);
        seen.2.fetch_add(1, Ordering::SeqCst);
        let (tabs, client) = (seen.clone(), client.clone());
        tokio::spawn(async move {
            let redirect = authorize_redirect(&client, url).await;
            tabs.0.fetch_sub(1, Ordering::SeqCst);
            if let Some(callback) = redirect {
                deliver_callback(&callback).await;
            }
        });
    });
    (browser, tabs)
}

/// 2,000 servers (300 with --quick) logging in at once, an auto-approving browser: how many
/// failed, the most logins and browser tabs at once, the wall time until all are connected.
fn login_storm(sizes: &Sizes) -> Table {
    let servers = if sizes.quick { 300 } else { 2_000 };
    let runtime = driver_runtime(2);
    let srv = ServerProcess::start(Duration::from_secs(3600));
    let dir = temp_dir("logins");
    let (browser, tabs) = login_storm_browser();
    let config = SupervisorConfig {
        browser,
        ..supervisor_config(&srv.mcp_url, &names(servers), &dir)
    };
    progress(&format!("6. {servers} logins at once"));
    let (connected, wall, counters) = runtime.block_on(async {
        let handle = SupervisorHandle::start(config)
            .await
            .expect("the supervisor starts");
        let started = Instant::now();
        let calls = handle.servers().iter().map(|name| {
            let (handle, name) = (handle.clone(), name.clone());
            async move { handle.reconnect(&name).await.is_ok() }
        });
        // A login that failed before its browser recovers by itself: look again until every
        // server is connected, for at most 10 minutes.
        let first = futures_util::future::join_all(calls).await;
        let mut connected = first.iter().filter(|ok| **ok).count();
        while connected < servers && started.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let statuses = handle.status().await.expect("the status");
            connected = statuses
                .iter()
                .filter(|s| s.phase.name() == "connected")
                .count();
        }
        let wall = started.elapsed();
        let counters = handle.scheduler_counters();
        handle.shutdown().await;
        (connected, wall, counters)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let mut table = Table::new(
        "6. Logins at once (auto-approving browser)",
        &[
            "logins",
            "failures (goal 0)",
            "browser launches",
            "max logins at once (limit; goal <= 64)",
            "max tabs at once: scheduler / browser (limit)",
            "wall time",
        ],
    );
    table.row(vec![
        servers.to_string(),
        (servers - connected).to_string(),
        tabs.2.load(Ordering::SeqCst).to_string(),
        format!("{} ({})", counters.logins_peak, counters.login_limit),
        format!(
            "{} / {} ({})",
            counters.tabs_peak,
            tabs.1.load(Ordering::SeqCst),
            counters.tab_limit
        ),
        format!("{:.1} s", wall.as_secs_f64()),
    ]);
    table.note = "A failure is a server not connected within 10 minutes; a login that failed \
                  before its browser opened backs off and logs in again by itself, so it \
                  counts only if it never recovers."
        .into();
    table
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: the tables take
    // minutes in release, so a test build only says how to run them.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "the system benchmarks run with `make bench` (or `cargo bench --bench system -- --quick`)"
        );
        return;
    }
    let sizes = Sizes::from_args();
    let started = Instant::now();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let load_before = load_average();
    progress(&format!(
        "{} run on {}",
        if sizes.quick { "quick" } else { "full" },
        machine()
    ));
    // The daemon logs as `serve` does (JSON lines at info, to a file): log lines are part
    // of a refresh's cost.
    let logs = temp_dir("logs");
    let _log = mcpproxy_oauth::telemetry::logging::init(
        mcpproxy_oauth::telemetry::logging::LogFormat::Json,
        "info",
        Some(&logs.join("daemon.log")),
    )
    .expect("the daemon's log file");
    let mut tables = Vec::new();
    if sizes.runs("hot") {
        tables.push(hot_path(&sizes));
    }
    if sizes.runs("stampede") {
        tables.push(stampede(&sizes));
    }
    if sizes.runs("scale") || sizes.runs("large") {
        let (scale, cold) = scale_and_cold(&sizes);
        tables.extend([scale, cold]);
    }
    if sizes.runs("writes") {
        tables.push(durable_writes(&sizes));
    }
    if sizes.runs("logins") {
        tables.push(login_storm(&sizes));
    }
    // The previous figures: the committed BENCHMARKS.md (or the file BENCH_OUT names, if any).
    let previous_path = std::env::var("BENCH_OUT").unwrap_or_else(|_| "BENCHMARKS.md".into());
    let previous = std::fs::read_to_string(&previous_path)
        .or_else(|_| std::fs::read_to_string("BENCHMARKS.md"))
        .unwrap_or_default();
    mark_changes(&mut tables, &previous);
    let load_after = load_average();
    println!("load average {load_before} before, {load_after} after\n");
    for table in &tables {
        println!("{}", table.markdown());
    }

    let out = match (std::env::var("BENCH_OUT"), &sizes.only) {
        (Ok(out), _) => PathBuf::from(out),
        (Err(_), None) => PathBuf::from("BENCHMARKS.md"),
        (Err(_), Some(_)) => {
            progress("--only: BENCHMARKS.md left as it was (BENCH_OUT names a file to write)");
            let _ = std::fs::remove_dir_all(&logs);
            return;
        }
    };
    let mut doc = String::new();
    let _ = write!(
        doc,
        "# Benchmarks\n\n`make bench` ({} sizes), {date}, on {}; load average {load_before} \
         before, {load_after} after. Whole run: {:?}.\n\n",
        if sizes.quick { "quick" } else { "the issue's" },
        machine(),
        started.elapsed()
    );
    for table in &tables {
        doc += &table.markdown();
        doc += "\n";
    }
    let analysis = Path::new("benches/BENCHMARKS-analysis.md");
    if let Ok(text) = std::fs::read_to_string(analysis) {
        doc += &text;
    }
    std::fs::write(&out, doc).expect("BENCHMARKS.md is writable");
    let _ = std::fs::remove_dir_all(&logs);
    progress(&format!(
        "tables written to {} ({:?})",
        out.display(),
        started.elapsed()
    ));
}
