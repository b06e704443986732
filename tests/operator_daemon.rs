//! The `serve` process as operators, other local users and attackers meet it (issue #20).
//!
//! Idle connections must not starve refreshes. A real `serve` process, its
//! open-file limit lowered to 1,024 (a common default soft limit), keeps three servers of the
//! OAuth test server authorized at 3 s tokens while this test opens 20,000 idle loopback
//! connections to its API (or as many as this process's own hard limit allows: the message
//! says so). Without the connection cap and the descriptor reserve, the daemon took sockets
//! until `open` failed, and every refresh failed opening its lock file until tokens expired.
//! Also: the event-subscriber cap answers 503 and the metrics count both refusals; another
//! local user can read neither the key nor the data directory, and the API refuses them.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use oauth_test_server::{Config, OAuthTestServer};
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// The daemon's open-file limit in this test (soft and hard).
const DAEMON_NOFILE: u64 = 1024;
const WANTED_CONNECTIONS: u64 = 20_000;

/// A `serve --listen 127.0.0.1:0` of this test and its folder.
struct Daemon {
    serve: Serve,
    dir: PathBuf,
}

impl std::ops::Deref for Daemon {
    type Target = Serve;
    fn deref(&self) -> &Serve {
        &self.serve
    }
}

impl Daemon {
    /// Starts `serve` on the test server under each of `names`, with `extra` flags and
    /// `nofile` as its RLIMIT_NOFILE, its standard error going to `stderr` (by default to
    /// `dir/serve.log`); returns once it printed the page's URL.
    async fn start(
        srv: &OAuthTestServer,
        names: &[&str],
        dir: &Path,
        extra: &[&str],
        nofile: Option<u64>,
        stderr: Option<Stdio>,
    ) -> Daemon {
        let stderr = stderr.unwrap_or_else(|| log_to(&dir.join("serve.log")));
        let config = write_config(dir, srv, names);
        let mut command = serve_command(&config, &dir.join("data"), CURL_BROWSER);
        command.args(extra).stderr(stderr);
        if let Some(limit) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    rustix::process::setrlimit(
                        rustix::process::Resource::Nofile,
                        rustix::process::Rlimit {
                            current: Some(limit),
                            maximum: Some(limit),
                        },
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let serve = Serve::start(command, &dir.join("serve.log"), Duration::from_secs(10)).await;
        Daemon {
            serve,
            dir: dir.to_path_buf(),
        }
    }

    /// GET with the key, retried (bounded) while the API answers 503 at its connection cap.
    async fn get_text(&self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.api(reqwest::Method::GET, path).send().await;
            match answer {
                Ok(r) if r.status() == 200 => return r.text().await.unwrap(),
                Ok(r) if r.status() == 503 => {}
                Ok(r) => panic!("GET {path}: {} {}", r.status(), r.text().await.unwrap()),
                Err(e) if e.is_connect() || e.is_request() => {}
                Err(e) => panic!("GET {path}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "GET {path}: the API did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path).await).unwrap()
    }

    /// Waits (bounded) until `n` servers are connected.
    async fn until_all_connected(&self, n: usize) {
        let deadline = Deadline::after("the servers all logged in", Duration::from_secs(30));
        loop {
            let list = self.get("/api/v1/servers").await;
            let connected = list["servers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["phase"] == "connected")
                .count();
            if connected == n {
                return;
            }
            deadline.again(list, Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.get_text("/metrics").await
    }

    async fn stop(mut self) {
        signal(&self.serve.child, "-TERM");
        let status = tokio::time::timeout(Duration::from_secs(20), self.serve.child.wait())
            .await
            .expect("serve stops within 20 s of SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "serve exited with {status}; see {}",
            self.dir.join("serve.log").display()
        );
    }
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lifts this process's soft open-file limit to its hard one; the connections it can hold.
fn connections_this_process_can_open() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(1 << 20);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        },
    )
    .expect("the soft limit may always rise to the hard one");
    // Keep room for the in-process test server, the HTTP clients and the runtime.
    let room = hard.saturating_sub(512);
    if room < WANTED_CONNECTIONS {
        eprintln!(
            "NOTE: this process's hard RLIMIT_NOFILE is {hard} (raising it needs CAP_SYS_RESOURCE, which this environment does not grant), so {room} idle connections are opened instead of {WANTED_CONNECTIONS}; the daemon's own limit is {DAEMON_NOFILE}, so it still meets far more connections than it has descriptors"
        );
    }
    room.min(WANTED_CONNECTIONS)
}

/// Opens `n` connections (bounded concurrency, each connect bounded) and keeps them open,
/// sending nothing. Returns them with how many were answered 503 at once.
async fn idle_connections(addr: &str, n: u64) -> (Vec<tokio::net::TcpStream>, u64, u64) {
    use futures_util::StreamExt;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut opened = Vec::new();
    let mut failed = 0;
    let mut attempts = futures_util::stream::iter(0..n)
        .map(|_| async move {
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await
        })
        .buffer_unordered(256);
    while let Some(result) = attempts.next().await {
        match result {
            Ok(Ok(stream)) => opened.push(stream),
            _ => failed += 1,
        }
    }
    // A sample of them: answered 503 at once, without sending a request.
    let mut refused = 0;
    for stream in opened.iter_mut().rev().take(50) {
        let mut buf = [0u8; 64];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
            && buf[..read].starts_with(b"HTTP/1.1 503")
        {
            refused += 1;
        }
    }
    (opened, failed, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_idle_connections_do_not_fail_one_refresh() {
    let n = connections_this_process_can_open();
    let srv = start(token_ttl(3)).await;
    let names = ["one", "two", "three"];
    let dir = temp_dir("limits");
    let serve = Daemon::start(&srv, &names, &dir, &[], Some(DAEMON_NOFILE), None).await;
    // The open-file limit leaves room for fewer connections than the default cap: cut.
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(
        log.contains("fewer API connections than --max-api-connections"),
        "{log}"
    );
    serve.until_all_connected(names.len()).await;
    let limit = metric(
        &serve.metrics().await,
        "mcpproxy_oauth_api_connection_limit",
    );
    assert!(
        limit >= 8.0 && limit < DAEMON_NOFILE as f64 / 2.0,
        "cap {limit}"
    );

    let flood_started = mcpproxy_oauth::store::db::now_ms();
    let refreshes_before = srv.stats().token_requests_for("refresh_token");
    let (connections, failed, refused) =
        idle_connections(serve.base.trim_start_matches("http://"), n).await;
    eprintln!(
        "{} idle connections open ({failed} connects timed out), {refused} of 50 sampled answered 503",
        connections.len()
    );
    assert!(connections.len() as u64 + failed == n);
    assert!(
        connections.len() as f64 > limit,
        "more connections were opened than the daemon serves"
    );
    assert!(
        refused > 0,
        "connections beyond the cap are answered 503 at once"
    );
    // Hold them across several refreshes of every server (3 s tokens refresh every ~2.25 s).
    let hold_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = srv.stats().token_requests_for("refresh_token") - refreshes_before;
    drop(connections);

    let flows = serve.get("/api/v1/flows?limit=500").await;
    let refreshes: Vec<&Value> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "refresh")
        .filter(|f| {
            mcpproxy_oauth::api::view::parse_rfc3339(f["started_at"].as_str().unwrap()).unwrap()
                >= flood_started
        })
        .collect();
    let failures: Vec<&&Value> = refreshes
        .iter()
        .filter(|f| f["state"] == "failed")
        .collect();
    assert!(
        failures.is_empty(),
        "refreshes failed during the flood: {failures:?}"
    );
    assert!(
        during >= names.len() as u64 * 2,
        "every server kept refreshing during the flood ({during} refreshes)"
    );
    let metrics = serve.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mcpproxy_oauth_refreshes_total{outcome=\"failure\""
        ),
        0.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "mcpproxy_oauth_api_connections_refused_total") > 0.0,
        "{metrics}"
    );
    let list = serve.get("/api/v1/servers").await;
    for s in list["servers"].as_array().unwrap() {
        assert_eq!(s["authenticated"], true, "{s}");
    }
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(
        !log.contains("Too many open files"),
        "the daemon ran out of descriptors:\n{log}"
    );
    serve.stop().await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_subscribers_beyond_the_cap_get_503() {
    let srv = start(Config::default()).await;
    let dir = temp_dir("subscribers");
    let subscribers = ["--max-sse-subscribers", "2"];
    let serve = Daemon::start(&srv, &["one"], &dir, &subscribers, None, None).await;
    let subscribe = || {
        serve
            .api(reqwest::Method::GET, "/api/v1/events")
            .timeout(Duration::from_secs(60))
            .send()
    };
    let first = subscribe().await.unwrap();
    let second = subscribe().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = subscribe().await.unwrap();
    assert_eq!(third.status(), 503);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_subscribers", "{body}");
    // One leaves: its place is free again (bounded wait for the server to see it go).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let r = subscribe().await.unwrap();
        if r.status() == 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(again);
    let metrics = serve.metrics().await;
    assert_eq!(
        metric(&metrics, "mcpproxy_oauth_sse_subscriber_limit"),
        2.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "mcpproxy_oauth_sse_subscribers_refused_total") >= 1.0,
        "{metrics}"
    );
    drop(second);
    serve.stop().await;
    srv.shutdown().await;
}

/// Runs `args` as the user `nobody` (the caller checked `second_user_available`).
fn as_nobody(args: &[&str]) -> std::process::Output {
    std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .args(args)
        .output()
        .expect("runuser runs")
}

fn second_user_available() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("the test does not run as root, so it cannot act as another user".into());
    }
    for tool in ["runuser", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} is not installed (.ci/run installs util-linux and curl)"
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_read_the_key_nor_use_the_api() {
    if let Err(why) = second_user_available() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let srv = start(Config::default()).await;
    let dir = temp_dir("second-user");
    let serve = Daemon::start(&srv, &["one"], &dir, &[], None, None).await;
    // The parent is traversable by anyone (as a home directory often is); the data
    // directory and the key are the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("data");
    let key_file = data.join("api-key");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&key_file), 0o600, "the key file");
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap().trim(),
        serve.key
    );

    let read_key = as_nobody(&["cat", key_file.to_str().unwrap()]);
    assert!(!read_key.status.success(), "nobody read the key");
    assert!(String::from_utf8_lossy(&read_key.stderr).contains("Permission denied"));
    let list = as_nobody(&["ls", data.to_str().unwrap()]);
    assert!(!list.status.success(), "nobody listed the data directory");
    assert!(read_key.stdout.is_empty() && list.stdout.is_empty());

    // The loopback API refuses them: reading state, logging a server out, the page.
    let status = |args: &[&str]| {
        let mut all = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ];
        all.extend_from_slice(args);
        let out = as_nobody(&all);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let servers = format!("{}/api/v1/servers", serve.base);
    let logout = format!("{}/api/v1/servers/one/logout", serve.base);
    let page = format!("{}/", serve.base);
    let events = format!("{}/api/v1/events", serve.base);
    assert_eq!(status(&[&servers]), "401", "GET servers without the key");
    assert_eq!(
        status(&["-X", "POST", &logout]),
        "401",
        "a logout without the key"
    );
    assert_eq!(status(&[&page]), "401", "the page without the key");
    assert_eq!(status(&[&events]), "401", "the events without the key");
    let wrong = format!("{page}?apikey=guessed-key-0123456789");
    assert_eq!(status(&[&wrong]), "401", "a guessed key");
    // The same request with the key goes through: what stops them is the key alone.
    let with_key = format!("X-API-Key: {}", serve.key);
    assert_eq!(status(&["-H", &with_key, &servers]), "200");
    let view = serve.get("/api/v1/servers/one").await;
    assert_ne!(
        view["phase"], "logged_out",
        "nobody's logout did not happen"
    );
    serve.stop().await;
    srv.shutdown().await;
}

/// The stall of issue #20 ("the other server's refreshes stopped for the rest of the run while
/// the API still answered"): every thread wrote its log lines synchronously, under one
/// process-wide lock, to standard error. When whoever reads that stops reading (a pipe to a
/// harness that only waited for the start-up line, a paused terminal), the first refresh that
/// logged "token refreshed" after the pipe filled blocked on the write, inside its flow; its
/// actor stayed `refreshing` for good, and every other thread that logged joined it, while the
/// API (whose handlers do not log) still answered. Log lines now leave through a bounded,
/// lossy queue (`telemetry/logging.rs`): a stuck reader costs lines, never a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_go_on_when_the_log_reader_stops_reading() {
    let srv = start(token_ttl(2)).await;
    let names = ["a", "b", "c", "d"];
    let dir = temp_dir("log-reader");
    // Standard error is a pipe this test holds and never reads, as a harness that waited
    // for the start-up line would.
    let serve = Daemon::start(
        &srv,
        &names,
        &dir,
        &["--log-level", "mcpproxy_oauth=debug,warn"],
        None,
        Some(Stdio::piped()),
    )
    .await;
    serve.until_all_connected(names.len()).await;
    // 2 s tokens refresh every ~1.5 s: four servers fill a 64 KiB pipe of debug lines in
    // well under 40 s. Every 5 s window must still see refreshes.
    for window in 0..8 {
        let before = srv.stats().token_requests_for("refresh_token");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let during = srv.stats().token_requests_for("refresh_token") - before;
        let list = serve.get("/api/v1/servers").await;
        let phases = field_of_each(&list["servers"], "phase");
        assert!(
            during >= names.len() as u64,
            "window {window}: {during} refreshes in 5 s; the API still answers, with phases {phases:?}"
        );
    }
    drop(serve);
    srv.shutdown().await;
}

/// The key reaches the operator's terminal once, in the printed URL, and nothing else: not the
/// log file at trace level (the HTTP server's own lines included), whichever way requests
/// carried it (header, query, the page's cookie).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_reaches_the_log_at_any_level() {
    let srv = start(Config::default()).await;
    let dir = temp_dir("key-log");
    let log_file = dir.join("trace.log");
    let flags = [
        "--log-level",
        "trace",
        "--log-file",
        log_file.to_str().unwrap(),
    ];
    let serve = Daemon::start(&srv, &["one"], &dir, &flags, None, None).await;
    serve.until_all_connected(1).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let opened = no_redirects
        .get(format!("{}/?apikey={}", serve.base, serve.key))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 303);
    let cookie = opened.headers()["set-cookie"].to_str().unwrap().to_string();
    let pair = cookie.split(';').next().unwrap();
    let cookie_value = pair.split_once('=').unwrap().1.to_string();
    for request in [
        serve
            .http
            .get(format!("{}/api/v1/servers", serve.base))
            .header("Cookie", pair),
        serve
            .http
            .get(format!("{}/api/v1/flows?apikey={}", serve.base, serve.key)),
        serve
            .http
            .post(format!("{}/api/v1/servers/one/refresh", serve.base))
            .bearer_auth(&serve.key),
        // A wrong key is not logged either.
        serve
            .http
            .get(format!("{}/metrics", serve.base))
            .header("X-API-Key", "a-wrong-key-0123456789"),
    ] {
        request.send().await.unwrap();
    }
    serve.stop().await;
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.lines().count() > 50, "a trace log was written:\n{log}");
    for (what, secret) in [
        ("the key", serve_key_of(&dir)),
        ("the cookie", cookie_value),
        ("a wrong key", "a-wrong-key-0123456789".into()),
    ] {
        assert!(!log.contains(&secret), "{what} is in the trace log");
    }
    srv.shutdown().await;
}

fn serve_key_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data").join("api-key"))
        .unwrap()
        .trim()
        .to_string()
}
