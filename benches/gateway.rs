//! The gateway's benchmark (issue 19), printed and written into BENCHMARKS.md as table 6:
//!
//! - added latency of a proxied `tools/call`: the same call straight to the upstream and
//!   through `/mcp/{server}`, on loopback with keep-alive, 1 client and 32 concurrent clients,
//!   p50 and p99 (the runs alternate, so drift hits both alike);
//! - the stdio bridges: ours (`mcpproxy-oauth stdio`, sharing the in-process daemon's data
//!   directory) and mcp-remote (the npm package, installed by `benches/gateway/package.json`,
//!   given the daemon's token with `--header`), each driven by sequential `tools/call` lines on
//!   stdin against the same upstream: per-call latency and the bridge process's peak RSS.
//!
//! The upstream is the OAuth test server (its MCP endpoint validates the JWT on every call) on
//! a runtime of its own. `make bench-gateway` runs it alone (about a minute); `make bench` runs
//! it after the other tables. `-- --quick` runs fewer calls. Numbers only: nothing asserts a speed.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "shared/machine.rs"]
mod machine;
#[path = "shared/run.rs"]
mod run;
#[path = "shared/section.rs"]
mod section;
use machine::{load_average, machine};

use mcpproxy_oauth::api::{ApiConfig, ApiKey, ApiServer, AuthLinks};
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use oauth_test_server::{Config, OAuthTestServer};
use serde_json::Value;
use url::Url;

const KEY: &str = "gateway-bench-key-0123456789";
const MARK_START: &str = "<!-- gateway bench: start -->";
const MARK_END: &str = "<!-- gateway bench: end -->";

fn progress(message: &str) {
    eprintln!("[gateway bench] {message}");
}

/// Latencies in nanoseconds, sorted.
struct Samples(Vec<u64>);

impl Samples {
    fn new(mut all: Vec<u64>) -> Self {
        all.sort_unstable();
        Samples(all)
    }
    fn at(&self, q: f64) -> f64 {
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0.get(i).copied().unwrap_or(0) as f64 / 1_000.0
    }
    fn p50(&self) -> f64 {
        self.at(0.50)
    }
    fn p99(&self) -> f64 {
        self.at(0.99)
    }
}

fn us(v: f64) -> String {
    if v.abs() >= 1_000.0 {
        format!("{:.2} ms", v / 1_000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn call_body(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"bench"}}}}}}"#
    )
}

/// One HTTP target: a URL and the header that lets us in.
#[derive(Clone)]
struct Target {
    url: String,
    header: (&'static str, String),
}

async fn one_call(http: &reqwest::Client, target: &Target, id: u64) -> u64 {
    let started = Instant::now();
    let response = http
        .post(&target.url)
        .header(target.header.0, &target.header.1)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(call_body(id))
        .send()
        .await
        .expect("the call is answered");
    assert_eq!(response.status(), 200, "{}", target.url);
    let body = response.bytes().await.expect("the answer's body");
    let elapsed = started.elapsed().as_nanos() as u64;
    assert!(body.windows(5).any(|w| w == b"bench"), "the echo came back");
    elapsed
}

/// `calls` calls spread over `clients` concurrent clients, each sequential.
async fn run_http(
    http: &reqwest::Client,
    target: &Target,
    clients: usize,
    calls: usize,
) -> Vec<u64> {
    let per_client = calls / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, target) = (http.clone(), target.clone());
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    out.push(one_call(&http, &target, (c * per_client + i) as u64).await);
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for task in tasks {
        all.extend(task.await.expect("a client task"));
    }
    all
}

struct HttpRow {
    clients: usize,
    calls: usize,
    direct: Samples,
    gateway: Samples,
    direct_rate: f64,
    gateway_rate: f64,
}

async fn http_table(direct: &Target, gateway: &Target, calls: usize) -> Vec<HttpRow> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for clients in [1usize, 32] {
        // Warm both paths: connections, the gateway's pool, caches.
        run_http(&http, direct, clients, clients * 20).await;
        run_http(&http, gateway, clients, clients * 20).await;
        let rounds = 4;
        let (mut d, mut g) = (Vec::new(), Vec::new());
        let (mut d_time, mut g_time) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..rounds {
            let t = Instant::now();
            d.extend(run_http(&http, direct, clients, calls / rounds).await);
            d_time += t.elapsed();
            let t = Instant::now();
            g.extend(run_http(&http, gateway, clients, calls / rounds).await);
            g_time += t.elapsed();
        }
        progress(&format!("HTTP, {clients} client(s): done"));
        rows.push(HttpRow {
            clients,
            calls: d.len(),
            direct_rate: d.len() as f64 / d_time.as_secs_f64(),
            gateway_rate: g.len() as f64 / g_time.as_secs_f64(),
            direct: Samples::new(d),
            gateway: Samples::new(g),
        });
    }
    rows
}

struct BridgeRow {
    name: String,
    calls: usize,
    latency: Option<Samples>,
    rate: f64,
    peak_rss_kib: Option<u64>,
    private_kib: Option<u64>,
    note: String,
}

/// A memory figure of a process from `/proc/PID/status` (`VmHWM`: peak resident; `RssAnon`:
/// resident private memory, without the pages of its binary and libraries), in KiB.
fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
}

/// Drives a spawned bridge: initialize, then `warmup + calls` sequential tools/call lines,
/// each timed from writing the line to reading its answer. The child is killed at the end.
fn drive_bridge(name: &str, mut child: Child, warmup: usize, calls: usize) -> BridgeRow {
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut send = |line: &str| -> Result<Instant, String> {
        let started = Instant::now();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("stdin: {e}"))?;
        Ok(started)
    };
    // The answer to request `id` (other messages, like notifications, are skipped).
    let answer = |id: u64, started: Instant| -> Result<u64, String> {
        loop {
            let answer = lines
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| format!("no answer to request {id} within 30 s"))?;
            let parsed: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
            if parsed["id"] == id && parsed.get("method").is_none() {
                if parsed.get("error").is_some() {
                    return Err(format!("request {id} failed: {answer}"));
                }
                return Ok(started.elapsed().as_nanos() as u64);
            }
        }
    };
    let mut run = || -> Result<(Vec<u64>, Duration), String> {
        let sent = send(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#,
        )?;
        answer(0, sent)?;
        send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)?;
        for id in 1..=warmup as u64 {
            let sent = send(&call_body(id))?;
            answer(id, sent)?;
        }
        let started = Instant::now();
        let mut out = Vec::with_capacity(calls);
        for id in 0..calls as u64 {
            let id = id + 1 + warmup as u64;
            let sent = send(&call_body(id))?;
            out.push(answer(id, sent)?);
        }
        Ok((out, started.elapsed()))
    };
    let outcome = run();
    let (rss, private) = (memory_kib(pid, "VmHWM"), memory_kib(pid, "RssAnon"));
    let _ = child.kill();
    let _ = child.wait();
    match outcome {
        Ok((latencies, took)) => {
            progress(&format!("{name}: done"));
            BridgeRow {
                name: name.into(),
                calls,
                rate: calls as f64 / took.as_secs_f64(),
                latency: Some(Samples::new(latencies)),
                peak_rss_kib: rss,
                private_kib: private,
                note: String::new(),
            }
        }
        Err(e) => {
            progress(&format!("{name}: {e}"));
            BridgeRow {
                name: name.into(),
                calls: 0,
                rate: 0.0,
                latency: None,
                peak_rss_kib: rss,
                private_kib: private,
                note: e,
            }
        }
    }
}

fn mcp_remote_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules/mcp-remote/package.json")).ok()?;
    let manifest: Value = serde_json::from_str(&text).ok()?;
    manifest["version"].as_str().map(String::from)
}

fn markdown(http: &[HttpRow], bridges: &[BridgeRow], header: &str) -> String {
    let mut doc = String::new();
    let _ = writeln!(
        doc,
        "### 6. Gateway: a proxied `tools/call`, and the stdio bridges\n"
    );
    let _ = writeln!(doc, "{header}\n");
    let _ = writeln!(
        doc,
        "| clients | calls | direct p50 | via `/mcp/{{server}}` p50 | added p50 (goal < 50 µs) | direct p99 | via p99 | added p99 (goal < 250 µs) | direct calls/s | via calls/s |"
    );
    let _ = writeln!(
        doc,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in http {
        let _ = writeln!(
            doc,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
            r.clients,
            r.calls,
            us(r.direct.p50()),
            us(r.gateway.p50()),
            us(r.gateway.p50() - r.direct.p50()),
            us(r.direct.p99()),
            us(r.gateway.p99()),
            us(r.gateway.p99() - r.direct.p99()),
            r.direct_rate,
            r.gateway_rate,
        );
    }
    let _ = writeln!(
        doc,
        "\n| stdio bridge | calls | p50 per call | p99 per call | calls/s | peak RSS (goal < 15 MiB) | of which private |"
    );
    let _ = writeln!(doc, "| --- | --- | --- | --- | --- | --- | --- |");
    for b in bridges {
        let mib =
            |k: Option<u64>| k.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let rss = format!("{} | {}", mib(b.peak_rss_kib), mib(b.private_kib));
        match &b.latency {
            Some(l) => {
                let _ = writeln!(
                    doc,
                    "| {} | {} | {} | {} | {:.0} | {rss} |",
                    b.name,
                    b.calls,
                    us(l.p50()),
                    us(l.p99()),
                    b.rate
                );
            }
            None => {
                let _ = writeln!(doc, "| {} | not run: {} | | | | {rss} |", b.name, b.note);
            }
        }
    }
    if let (Some(ours), Some(theirs)) = (
        bridges.first().and_then(|b| b.latency.as_ref()),
        bridges.get(1).and_then(|b| b.latency.as_ref()),
    ) {
        let _ = writeln!(
            doc,
            "\nPer call, mcp-remote / ours: {:.1}x at p50, {:.1}x at p99 (goal: ours at least 5x faster).",
            theirs.p50() / ours.p50(),
            theirs.p99() / ours.p99()
        );
        if let Some(direct) = http.first().map(|r| r.direct.p50()) {
            let _ = writeln!(
                doc,
                "Without the upstream's own time (each p50 minus the direct HTTP call's p50 of {}, 1 client): ours {}, mcp-remote {}, {:.1}x.",
                us(direct),
                us(ours.p50() - direct),
                us(theirs.p50() - direct),
                (theirs.p50() - direct) / (ours.p50() - direct).max(1.0)
            );
        }
    }
    let _ = writeln!(
        doc,
        "\nThe upstream is the OAuth test server's MCP endpoint (it checks the token's RS256 signature on every call), on a runtime of its own; the client is reqwest with keep-alive, HTTP/1.1, on loopback. \"Added\" is the gateway's percentile minus the direct one; direct and gateway runs alternate in 4 rounds. The gateway is the daemon's listener in-process (`ApiServer`, 2 workers), with the API key checked on every call. Each bridge gets one line per call on stdin and answers on stdout; its peak RSS is `VmHWM` of its process after the calls (mcp-remote: the node process), and \"private\" its `RssAnon` then: the rest are pages of its binary and libraries, which every process of the same binary shares. Ours reads the daemon's token from the shared data directory; mcp-remote is given it with `--header`."
    );
    doc
}

/// What a test build of this bench says instead of running it.
const HOW_TO_RUN: &str =
    "the gateway benchmark runs with `make bench-gateway` (or `cargo bench --bench gateway`)";

fn main() {
    let Some(run) = run::begin(HOW_TO_RUN) else {
        return;
    };
    let quick = std::env::args().any(|a| a == "--quick");
    let (http_calls, bridge_calls) = if quick { (2_000, 300) } else { (20_000, 2_000) };
    let dir = run::fresh_dir("gateway-bench");

    // The upstream on a runtime (and thread) of its own.
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-upstream")
        .enable_all()
        .build()
        .unwrap();
    let srv = upstream_rt
        .block_on(OAuthTestServer::start(Config::default()))
        .expect("the OAuth test server starts");
    let mcp_url = srv.mcp_url();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    let server = UpstreamConfig::new("srv", Url::parse(&mcp_url).unwrap());
    let (handle, api, token) = rt.block_on(async {
        let links = AuthLinks::new(std::slice::from_ref(&server));
        // The test server approves at once: following its redirect is the whole login.
        let browser = BrowserLauncher::handler(|url: Url| {
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::limited(5))
                    .build()
                    .unwrap();
                let _ = client.get(url).send().await;
            });
        });
        let config = SupervisorConfig {
            browser: links.wrap(browser),
            ..SupervisorConfig::new(vec![server.clone()], dir.join("data"))
        };
        let handle = SupervisorHandle::start(config)
            .await
            .expect("the supervisor starts");
        handle.reconnect("srv").await.expect("logged in");
        let token = handle.access_token("srv").await.unwrap().secret().clone();
        let mut api = ApiConfig::new("127.0.0.1:0".parse().unwrap());
        api.api_key = Some(ApiKey::new(KEY).unwrap());
        api.servers = vec![server.clone()];
        let api = ApiServer::start(handle.clone(), links, api)
            .await
            .expect("the gateway starts");
        (handle, api, token)
    });
    let direct = Target {
        url: mcp_url.clone(),
        header: ("authorization", format!("Bearer {token}")),
    };
    let gateway = Target {
        url: format!("http://{}/mcp/srv", api.addr()),
        header: ("x-api-key", KEY.into()),
    };
    progress(&format!("HTTP: {http_calls} calls per row and path"));
    let http = rt.block_on(http_table(&direct, &gateway, http_calls));

    // The bridges, against the same upstream.
    let config = dir.join("mcp_config.json");
    std::fs::write(
        &config,
        format!(r#"{{"mcpServers": [{{"name": "srv", "url": "{mcp_url}", "oauth": {{}}}}]}}"#),
    )
    .unwrap();
    let warmup = 50;
    let ours = Command::new(env!("CARGO_BIN_EXE_mcpproxy-oauth"))
        .args(["stdio", "srv", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--non-interactive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("our bridge starts");
    let mut bridges = vec![drive_bridge(
        "ours: `mcpproxy-oauth stdio`",
        ours,
        warmup,
        bridge_calls,
    )];
    let npm_dir = PathBuf::from("benches/gateway");
    match mcp_remote_version(&npm_dir) {
        Some(version) => {
            let theirs = Command::new("node")
                .arg(npm_dir.join("node_modules/mcp-remote/dist/proxy.js"))
                .arg(&mcp_url)
                .args(["--allow-http", "--transport", "http-only", "--header"])
                .arg(format!("Authorization: Bearer {token}"))
                .env("MCP_REMOTE_CONFIG_DIR", dir.join("mcp-remote"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            bridges.push(match theirs {
                Ok(child) => drive_bridge(
                    &format!("mcp-remote {version}"),
                    child,
                    warmup,
                    bridge_calls,
                ),
                Err(e) => BridgeRow {
                    name: format!("mcp-remote {version}"),
                    calls: 0,
                    latency: None,
                    rate: 0.0,
                    peak_rss_kib: None,
                    private_kib: None,
                    note: format!("node did not start: {e}"),
                },
            });
        }
        None => bridges.push(BridgeRow {
            name: "mcp-remote".into(),
            calls: 0,
            latency: None,
            rate: 0.0,
            peak_rss_kib: None,
            private_kib: None,
            note: "not installed (make bench-gateway runs npm ci in benches/gateway)".into(),
        }),
    }
    rt.block_on(async {
        api.stop().await;
        handle.shutdown().await;
    });
    upstream_rt.block_on(srv.shutdown());
    let header = format!(
        "`make bench-gateway` ({} sizes), {}, on {}; load average {} before, {} after. Whole run: {:.1?}.",
        if quick { "quick" } else { "full" },
        run.date,
        machine(),
        run.load_before,
        load_average(),
        run.started.elapsed()
    );
    let tables = markdown(&http, &bridges, &header);
    println!("{tables}");
    let out =
        std::env::var("BENCH_OUT").map_or_else(|_| PathBuf::from("BENCHMARKS.md"), PathBuf::from);
    let analysis = "benches/BENCHMARKS-gateway-analysis.md";
    section::write_section(&out, MARK_START, MARK_END, &tables, analysis);
    progress(&format!("table written to {}", out.display()));
    let _ = std::fs::remove_dir_all(&dir);
}
