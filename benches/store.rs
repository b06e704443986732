//! The store's benchmark (issue 21), printed and written into BENCHMARKS.md as section 7,
//! "Store: PostgreSQL beside SQLite":
//!
//! - refreshes per second through each backend: the same OAuth test server (rotation and
//!   reuse detection on), the same servers, every refresh forced (`SupervisorHandle::refresh`)
//!   through the real flow: the claim (PostgreSQL: the lease row, fenced; SQLite: the file lock
//!   and the lease row), the token re-read, the token request, the fenced save and the release;
//!   and the store's part of a refresh alone (claim, re-read, fenced save with release, no
//!   token request), to see where the ceiling is;
//! - the lease hand-off: two instances on one database, the time from the instance that
//!   refreshed holding its new token (its flow has saved it and released the lease) to the
//!   other instance holding it, when that one waited on the lease and when it only listened;
//! - database statements per refresh in the three-instance scenario (three instances x 20
//!   servers at a 3 s TTL), counted by `pg_stat_statements`.
//!
//! PostgreSQL is Debian's, started by the tests' helper (`tests/common/postgres.rs`) with
//! `fsync=on` (the tests run it without) so its commits are as durable as SQLite's
//! `synchronous=FULL`. `make bench-store` runs the full sizes (a few minutes); `-- --quick`
//! small ones. Numbers only: nothing here asserts a speed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

#[path = "shared/machine.rs"]
mod machine;
#[path = "../tests/common/postgres.rs"]
#[allow(dead_code)]
mod postgres;
#[path = "shared/section.rs"]
mod section;

use machine::{load_average, machine};
use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::store::{
    ClaimRequest, FlowEnd, KeySpec, Sealing, Store, StoreChoice, StoreOptions, StoredToken, Written,
};
use mcpproxy_oauth::supervisor::{ServerTokens, SupervisorConfig, SupervisorHandle, database_path};
use oauth_test_server::{Config, OAuthTestServer};
use postgres::Postgres;
use url::Url;

const MARK_START: &str = "<!-- store bench: start -->";
const MARK_END: &str = "<!-- store bench: end -->";
/// Logins follow the test server's redirect (it approves at once), as the tests' `serve` does.
const CURL_BROWSER: &str = "curl -s -o /dev/null -L";
/// How often the hand-off watcher looks at both instances' published tokens.
const WATCH_EVERY: Duration = Duration::from_micros(100);
/// A hand-off not seen within this counts as missed.
const HANDOFF_WITHIN: Duration = Duration::from_secs(10);

fn progress(message: &str) {
    eprintln!("[store bench] {message}");
}

struct Sizes {
    quick: bool,
    /// Servers refreshed at once in the throughput rows.
    servers: usize,
    /// Forced refreshes of each server, one after the other.
    refreshes_each: usize,
    /// Store-only claims of each server.
    claims_each: usize,
    handoffs: usize,
    /// The three-instance scenario: servers, their tokens' lifetime, lifetimes observed.
    replica_servers: usize,
    ttl: Duration,
    lifetimes: u32,
}

impl Sizes {
    fn from_args() -> Sizes {
        let quick = std::env::args().any(|a| a == "--quick");
        Sizes {
            quick,
            servers: if quick { 20 } else { 50 },
            refreshes_each: if quick { 10 } else { 40 },
            claims_each: if quick { 50 } else { 200 },
            handoffs: if quick { 100 } else { 500 },
            replica_servers: 20,
            ttl: Duration::from_secs(3),
            lifetimes: if quick { 3 } else { 10 },
        }
    }
}

/// Sorted durations in microseconds.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    let i = ((sorted.len().max(1) - 1) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn runtime(workers: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mcpproxy-oauth-store-bench-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What every measure shares: the OAuth test server (on a runtime of its own), PostgreSQL,
/// the key every instance seals with, a folder.
struct Bench {
    upstream_rt: tokio::runtime::Runtime,
    srv: Option<OAuthTestServer>,
    ttl_srv: Option<OAuthTestServer>,
    pg: Postgres,
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    key_file: PathBuf,
}

impl Bench {
    fn srv(&self) -> &OAuthTestServer {
        self.srv.as_ref().unwrap()
    }

    fn refreshes(srv: &OAuthTestServer) -> u64 {
        srv.stats().token_requests_for("refresh_token")
    }

    /// A fresh database on the bench's PostgreSQL, as a `--store` choice.
    fn database(&self, name: &str) -> StoreChoice {
        let url = self.rt.block_on(self.pg.create_database(name));
        StoreChoice::from_str(&url).expect("the helper's URL is a store URL")
    }

    fn sealing(&self) -> Sealing {
        Sealing::Encrypted(KeySpec {
            key_file: Some(self.key_file.clone()),
        })
    }

    /// An instance's config: `names` on `srv`, its own data folder, the shared store and key.
    fn config(
        &self,
        srv: &OAuthTestServer,
        names: &[String],
        data: &str,
        store: &StoreChoice,
    ) -> SupervisorConfig {
        let url = Url::parse(&srv.mcp_url()).unwrap();
        let servers = names
            .iter()
            .map(|n| UpstreamConfig::new(n, url.clone()))
            .collect();
        SupervisorConfig {
            browser: BrowserLauncher::from_settings(Some(CURL_BROWSER.into()), false),
            login_timeout: Duration::from_secs(120),
            sealing: self.sealing(),
            store: store.clone(),
            refresh_stagger: Duration::ZERO,
            ..SupervisorConfig::new(servers, self.dir.join(data))
        }
    }

    fn start(&self, config: SupervisorConfig) -> SupervisorHandle {
        self.rt
            .block_on(SupervisorHandle::start(config))
            .expect("the instance starts")
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("srv{i:03}")).collect()
}

/// Logs every server in (16 at a time), or says which could not.
async fn login_all(handle: &SupervisorHandle) {
    for chunk in handle.servers().chunks(16) {
        let calls = chunk
            .iter()
            .map(|name| async move { (handle.reconnect(name).await, name) });
        for (result, name) in futures_util::future::join_all(calls).await {
            if let Err(e) = result {
                panic!("{name} could not log in: {e}");
            }
        }
    }
}

/// Every server answers `access_token` (the instance loaded or adopted the stored tokens).
async fn all_answer(handle: &SupervisorHandle) {
    for name in handle.servers() {
        if let Err(e) = handle.access_token(name).await {
            panic!("{name}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// (a) Refreshes per second.

struct Throughput {
    backend: String,
    what: &'static str,
    servers: usize,
    done: u64,
    failed: u64,
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    reuses: u64,
}

/// Every server refreshed `each` times, all servers at once, through the daemon's own flow.
fn refresh_throughput(bench: &Bench, sizes: &Sizes, label: &str, store: StoreChoice) -> Throughput {
    let names = names(sizes.servers);
    progress(&format!(
        "(a) {label}: {} servers x {} forced refreshes",
        sizes.servers, sizes.refreshes_each
    ));
    let handle = bench.start(bench.config(bench.srv(), &names, &format!("tp-{label}"), &store));
    bench.rt.block_on(login_all(&handle));
    let srv = bench.srv();
    let (before, reuses_before) = (Bench::refreshes(srv), srv.stats().refresh_token_reuse);
    let started = Instant::now();
    let results = bench.rt.block_on(async {
        let loops = names.iter().map(|name| {
            let handle = handle.clone();
            async move {
                let mut took = Vec::with_capacity(sizes.refreshes_each);
                let mut failed = 0u64;
                for _ in 0..sizes.refreshes_each {
                    let at = Instant::now();
                    match handle.refresh(name).await {
                        Ok(_) => took.push(at.elapsed().as_micros() as u64),
                        Err(_) => failed += 1,
                    }
                }
                (took, failed)
            }
        });
        futures_util::future::join_all(loops).await
    });
    let elapsed = started.elapsed();
    let done = Bench::refreshes(srv) - before;
    let failed = results.iter().map(|(_, f)| f).sum();
    let mut took: Vec<u64> = results.into_iter().flat_map(|(t, _)| t).collect();
    took.sort_unstable();
    bench.rt.block_on(handle.shutdown());
    Throughput {
        backend: label.into(),
        what: "forced refresh, end to end",
        servers: sizes.servers,
        done,
        failed,
        per_second: done as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&took, 0.5),
        p99_us: percentile(&took, 0.99),
        reuses: srv.stats().refresh_token_reuse - reuses_before,
    }
}

fn stored_token(name: &str, n: usize) -> StoredToken {
    let url = "https://mcp.example/mcp";
    StoredToken {
        server_key: mcpproxy_oauth::config::server_key(name, url),
        server_name: name.into(),
        server_url: url.into(),
        resource: Some(url.into()),
        issuer: Some("https://as.example".into()),
        access_token: (format!("eyJ{n:08}") + &"a".repeat(800)).into(),
        refresh_token: Some((format!("rt_{n:08}") + &"b".repeat(60)).into()),
        token_type: "Bearer".into(),
        scope: Some("read write".into()),
        expires_at: Some(now_ms() + 3_600_000),
        obtained_at: now_ms(),
        flow_id: None,
        dpop: None,
    }
}

/// The store's part of a refresh alone, on every server at once, `each` times per server:
/// the claim (lease taken, flow recorded, token re-read) and its end (the new token saved
/// under the fence, the flow closed, the lease released), with no token request between.
fn claim_throughput(bench: &Bench, sizes: &Sizes, label: &str, store: StoreChoice) -> Throughput {
    progress(&format!(
        "(a) {label}: store path alone, {} servers x {} claims",
        sizes.servers, sizes.claims_each
    ));
    let names = names(sizes.servers);
    let database = database_path(&bench.dir.join(format!("claims-{label}")));
    std::fs::create_dir_all(database.parent().unwrap()).unwrap();
    let sealing = bench.sealing();
    // SQLite's registry is an actor: the whole run is inside an actix system.
    let (took, failed, elapsed) = actix_rt::System::new().block_on(async {
        let store = Store::open(&store, &database, &sealing, StoreOptions::default())
            .await
            .expect("the store opens");
        for (i, name) in names.iter().enumerate() {
            store
                .save_token(&stored_token(name, i), None, None)
                .await
                .expect("a first token");
        }
        let owner = format!("pid {} (store bench)", std::process::id());
        let started = Instant::now();
        let loops = names.iter().enumerate().map(|(i, name)| {
            let (store, owner) = (store.clone(), owner.clone());
            async move {
                let mut took = Vec::with_capacity(sizes.claims_each);
                let mut failed = 0u64;
                for n in 0..sizes.claims_each {
                    let token = stored_token(name, i * 1_000_000 + n + 1);
                    let request = ClaimRequest {
                        server_key: token.server_key.clone(),
                        server_name: name.clone(),
                        flow_id: uuid::Uuid::new_v4().to_string(),
                        kind: "refresh",
                        owner: owner.clone(),
                        lease: Duration::from_secs(90),
                        wait: Duration::from_secs(30),
                    };
                    let at = Instant::now();
                    let saved = match store.claim(&request).await {
                        Ok(mut claim) => claim
                            .finish(FlowEnd::Saved {
                                token: &token,
                                client: None,
                                guard: None,
                            })
                            .await
                            .is_ok_and(|w| matches!(w, Written::Done)),
                        Err(_) => false,
                    };
                    if saved {
                        took.push(at.elapsed().as_micros() as u64);
                    } else {
                        failed += 1;
                    }
                }
                (took, failed)
            }
        });
        let results = futures_util::future::join_all(loops).await;
        let elapsed = started.elapsed();
        let failed: u64 = results.iter().map(|(_, f)| f).sum();
        let took: Vec<u64> = results.into_iter().flat_map(|(t, _)| t).collect();
        (took, failed, elapsed)
    });
    let mut took = took;
    took.sort_unstable();
    Throughput {
        backend: label.into(),
        what: "store path alone (claim + fenced save)",
        servers: sizes.servers,
        done: took.len() as u64,
        failed,
        per_second: took.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&took, 0.5),
        p99_us: percentile(&took, 0.99),
        reuses: 0,
    }
}

// ---------------------------------------------------------------------------------------
// (b) The lease hand-off.

struct Handoff {
    how: &'static str,
    seen: Vec<u64>,
    missed: usize,
    /// Hand-offs where the second instance refreshed again instead of taking the token.
    extra_refreshes: u64,
}

/// Watches both instances' published tokens from a thread of its own until one holds a token
/// other than `old` and the other holds the same one: the time between the two moments.
fn watch(a: &ServerTokens, b: &ServerTokens, old: &str) -> Option<Duration> {
    let secret = |t: &ServerTokens| t.cached_access_token().map(|t| t.secret().clone());
    let started = Instant::now();
    let mut first: Option<(Instant, String)> = None;
    while started.elapsed() < HANDOFF_WITHIN {
        let (sa, sb) = (secret(a), secret(b));
        let now = Instant::now();
        match &first {
            None => {
                let new = [sa, sb].into_iter().flatten().find(|s| s != old);
                if let Some(new) = new {
                    first = Some((now, new));
                    continue; // both may already hold it: look again at once
                }
            }
            Some((at, new)) => {
                if sa.as_deref() == Some(new.as_str()) && sb.as_deref() == Some(new.as_str()) {
                    return Some(now - *at);
                }
            }
        }
        std::thread::sleep(WATCH_EVERY);
    }
    None
}

/// Two instances on one database, one server: `handoffs` refreshes, each by whichever instance
/// wins the lease (`both_ask`: both are told to refresh at once, the loser waits on the lease
/// and adopts) or by the first alone (the second hears the change by LISTEN/NOTIFY).
fn handoffs(bench: &Bench, sizes: &Sizes) -> Vec<Handoff> {
    let store = bench.database("handoff");
    let names = names(1);
    let name = names[0].clone();
    let a = bench.start(bench.config(bench.srv(), &names, "handoff-a", &store));
    bench.rt.block_on(login_all(&a));
    let b = bench.start(bench.config(bench.srv(), &names, "handoff-b", &store));
    bench.rt.block_on(all_answer(&b));
    let (ta, tb) = (
        a.server_tokens(&name).unwrap(),
        b.server_tokens(&name).unwrap(),
    );
    let mut rows = Vec::new();
    for (how, both_ask) in [
        (
            "the other instance waited on the lease (both asked to refresh)",
            true,
        ),
        ("the other instance only listened (LISTEN/NOTIFY)", false),
    ] {
        progress(&format!("(b) {} hand-offs: {how}", sizes.handoffs));
        let mut row = Handoff {
            how,
            seen: Vec::with_capacity(sizes.handoffs),
            missed: 0,
            extra_refreshes: 0,
        };
        for _ in 0..sizes.handoffs {
            let old = ta.cached_access_token().unwrap().secret().clone();
            // Both hold the same token before each hand-off.
            if watch(&ta, &tb, "").is_none() {
                panic!("the two instances never held the same token");
            }
            let before = Bench::refreshes(bench.srv());
            let seen = std::thread::scope(|scope| {
                let watcher = scope.spawn(|| watch(&ta, &tb, &old));
                let refreshed = bench.rt.block_on(async {
                    if both_ask {
                        let (ra, rb) = tokio::join!(a.refresh(&name), b.refresh(&name));
                        ra.and(rb).map(|_| ())
                    } else {
                        a.refresh(&name).await.map(|_| ())
                    }
                });
                refreshed.expect("the refresh succeeds");
                watcher.join().unwrap()
            });
            match seen {
                Some(d) => row.seen.push(d.as_micros() as u64),
                None => row.missed += 1,
            }
            row.extra_refreshes += (Bench::refreshes(bench.srv()) - before).saturating_sub(1);
        }
        row.seen.sort_unstable();
        rows.push(row);
    }
    bench.rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
    rows
}

// ---------------------------------------------------------------------------------------
// (c) Statements per refresh, three instances.

struct Replicas {
    servers: usize,
    lifetimes: u32,
    refreshes: u64,
    reuses: u64,
    logins_after_first: u64,
    statements: i64,
    transactions: i64,
    /// (calls, query) of the most frequent statements.
    top: Vec<(i64, String)>,
    elapsed: Duration,
}

/// The statements `pg_stat_statements` counted in `db` since its last reset: every call, the
/// transactions (COMMIT and ROLLBACK), and the most frequent ones.
async fn statements(pg: &Postgres, db: &str) -> (i64, i64, Vec<(i64, String)>) {
    let client = pg.connect("postgres").await;
    let rows = client
        .query(
            "SELECT calls, query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
              WHERE d.datname = $1 ORDER BY calls DESC",
            &[&db],
        )
        .await
        .expect("pg_stat_statements reads");
    let all: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let total = all.iter().map(|(c, _)| c).sum();
    let transactions = all
        .iter()
        .filter(|(_, q)| {
            let q = q.trim().to_ascii_uppercase();
            q.starts_with("COMMIT") || q.starts_with("ROLLBACK")
        })
        .map(|(c, _)| c)
        .sum();
    (total, transactions, all.into_iter().take(8).collect())
}

fn three_instances(bench: &Bench, sizes: &Sizes) -> Replicas {
    let db = "replicas";
    let store = bench.database(db);
    let srv = bench.ttl_srv.as_ref().unwrap();
    let names = names(sizes.replica_servers);
    progress(&format!(
        "(c) 3 instances x {} servers, {:?} tokens, {} lifetimes",
        names.len(),
        sizes.ttl,
        sizes.lifetimes
    ));
    let first = bench.start(bench.config(srv, &names, "replica-0", &store));
    bench.rt.block_on(login_all(&first));
    let logins = srv.stats().authorize_requests;
    let mut instances = vec![first];
    for n in 1..3 {
        let handle = bench.start(bench.config(srv, &names, &format!("replica-{n}"), &store));
        bench.rt.block_on(all_answer(&handle));
        instances.push(handle);
    }
    bench.rt.block_on(async {
        let client = bench.pg.connect("postgres").await;
        client
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .expect("pg_stat_statements resets");
    });
    let (before, reuses) = (Bench::refreshes(srv), srv.stats().refresh_token_reuse);
    let started = Instant::now();
    // The duration of the scenario, not a wait for something.
    std::thread::sleep(sizes.ttl * sizes.lifetimes);
    let elapsed = started.elapsed();
    let refreshes = Bench::refreshes(srv) - before;
    let (statements, transactions, top) = bench.rt.block_on(statements(&bench.pg, db));
    let result = Replicas {
        servers: names.len(),
        lifetimes: sizes.lifetimes,
        refreshes,
        reuses: srv.stats().refresh_token_reuse - reuses,
        logins_after_first: srv.stats().authorize_requests - logins,
        statements,
        transactions,
        top,
        elapsed,
    };
    bench.rt.block_on(async {
        for handle in &instances {
            handle.shutdown().await;
        }
    });
    result
}

// ---------------------------------------------------------------------------------------
// The section.

fn markdown(
    header: &str,
    throughput: &[Throughput],
    handoffs: &[Handoff],
    replicas: &Replicas,
) -> String {
    let mut doc = String::new();
    let _ = writeln!(doc, "### 7. Store: PostgreSQL beside SQLite\n");
    let _ = writeln!(doc, "{header}\n");
    let _ = writeln!(
        doc,
        "| backend | what | servers at once | refreshes | failed | refreshes/s (goal ≥ 500 on PostgreSQL) | p50 | p99 | reuse detections |"
    );
    let _ = writeln!(
        doc,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for t in throughput {
        let _ = writeln!(
            doc,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            t.backend,
            t.what,
            t.servers,
            t.done,
            t.failed,
            t.per_second,
            ms(t.p50_us),
            ms(t.p99_us),
            t.reuses
        );
    }
    let _ = writeln!(
        doc,
        "\n\"End to end\": `SupervisorHandle::refresh` on every server at once, one after the other per server, each a real refresh at the OAuth test server (RS256 JWTs, rotation and reuse detection on); refreshes are the test server's count. \"Store path alone\": `Store::claim` then `Claim::finish(Saved)` per server, one after the other, on the same servers' count, without the token request (SQLite: the file lock, then the registry; PostgreSQL: the lease row in a transaction, then the fenced save and the release in another). Encrypted at rest in every row; SQLite in WAL with synchronous=FULL, PostgreSQL with fsync=on and synchronous_commit=on (its defaults).\n"
    );
    let _ = writeln!(
        doc,
        "| lease hand-off, two instances on one PostgreSQL | hand-offs | p50 (goal < 50 ms) | p99 | max | missed (> {}s) | second refreshes |",
        HANDOFF_WITHIN.as_secs()
    );
    let _ = writeln!(doc, "| --- | --- | --- | --- | --- | --- | --- |");
    for h in handoffs {
        let _ = writeln!(
            doc,
            "| {} | {} | {} | {} | {} | {} | {} |",
            h.how,
            h.seen.len(),
            ms(percentile(&h.seen, 0.5)),
            ms(percentile(&h.seen, 0.99)),
            ms(h.seen.last().copied().unwrap_or(0) as f64),
            h.missed,
            h.extra_refreshes
        );
    }
    let _ = writeln!(
        doc,
        "\nFrom the moment one instance publishes its new token (its flow has saved it and released the lease, in one transaction, before that) to the moment the other instance's published token is the same one, both watched every {} µs from a thread of the bench; one server, tokens living an hour (no refresh of their own). \"Second refreshes\": hand-offs where the other instance made a token request of its own instead (goal 0).\n",
        WATCH_EVERY.as_micros()
    );
    let r = replicas;
    let per = |n: i64| n as f64 / r.refreshes.max(1) as f64;
    let _ = writeln!(
        doc,
        "| three instances x {} servers, {} lifetimes of 3 s | refreshes | reuse detections | logins after the first | statements | statements per refresh | transactions per refresh |",
        r.servers, r.lifetimes
    );
    let _ = writeln!(doc, "| --- | --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(
        doc,
        "| over {:.1} s | {} | {} | {} | {} | {:.1} | {:.1} |",
        r.elapsed.as_secs_f64(),
        r.refreshes,
        r.reuses,
        r.logins_after_first,
        r.statements,
        per(r.statements),
        per(r.transactions)
    );
    let _ = writeln!(
        doc,
        "\nStatements: every call `pg_stat_statements` counted in the scenario's database over the run (all three instances: claims, saves, the flow history, the re-reads after a NOTIFY, health checks; BEGIN and COMMIT included), divided by the refreshes the test server answered; transactions are its COMMIT and ROLLBACK calls. The most frequent:\n"
    );
    let _ = writeln!(doc, "| calls | statement |\n| --- | --- |");
    for (calls, query) in &r.top {
        let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = query.chars().take(90).collect();
        let more = if query.chars().count() > 90 {
            "…"
        } else {
            ""
        };
        let _ = writeln!(doc, "| {calls} | `{}{more}` |", short.replace('|', "\\|"));
    }
    doc
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "the store benchmark runs with `make bench-store` (or `cargo bench --bench store`)"
        );
        return;
    }
    let sizes = Sizes::from_args();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let load_before = load_average();
    let started = Instant::now();
    let Some(pg) = Postgres::start_with(
        "store-bench",
        &["fsync=on", "shared_preload_libraries=pg_stat_statements"],
    ) else {
        eprintln!("no PostgreSQL here: the store benchmark needs Debian's `postgresql` package");
        return;
    };
    let dir = temp_dir("run");
    let key_file = dir.join("shared.key");
    mcpproxy_oauth::store::keys::create_key_file(&key_file).unwrap();
    let upstream_rt = runtime(2, "test-server");
    let (srv, ttl_srv) = upstream_rt.block_on(async {
        let long = Config {
            access_token_ttl: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            ..Config::default()
        };
        let short = Config {
            access_token_ttl: sizes.ttl,
            ..long.clone()
        };
        let srv = OAuthTestServer::start(long).await.expect("test server");
        (
            srv,
            OAuthTestServer::start(short).await.expect("test server"),
        )
    });
    let bench = Bench {
        upstream_rt,
        srv: Some(srv),
        ttl_srv: Some(ttl_srv),
        pg,
        rt: runtime(2, "bench-instances"),
        dir,
        key_file,
    };
    bench.rt.block_on(async {
        let client = bench.pg.connect("postgres").await;
        client
            .batch_execute("CREATE EXTENSION pg_stat_statements")
            .await
            .expect("pg_stat_statements (Debian's postgresql package ships it)");
    });

    let mut throughput = Vec::new();
    for label in ["SQLite", "PostgreSQL"] {
        let store = match label {
            "SQLite" => StoreChoice::Sqlite,
            _ => bench.database("throughput"),
        };
        throughput.push(refresh_throughput(&bench, &sizes, label, store));
    }
    for label in ["SQLite", "PostgreSQL"] {
        let store = match label {
            "SQLite" => StoreChoice::Sqlite,
            _ => bench.database("claims"),
        };
        throughput.push(claim_throughput(&bench, &sizes, label, store));
    }
    let handoffs = handoffs(&bench, &sizes);
    let replicas = three_instances(&bench, &sizes);

    let Bench {
        upstream_rt,
        srv,
        ttl_srv,
        pg,
        rt,
        dir,
        ..
    } = bench;
    upstream_rt.block_on(async {
        srv.unwrap().shutdown().await;
        ttl_srv.unwrap().shutdown().await;
    });
    drop(rt);
    drop(pg);
    let header = format!(
        "`make bench-store` ({} sizes), {date}, on {}; load average {} before, {} after (a shared machine: other builds ran beside it). Whole run: {:.1?}. PostgreSQL {}, started by the bench (Debian's binaries, loopback).",
        if sizes.quick { "quick" } else { "full" },
        machine(),
        load_before,
        load_average(),
        started.elapsed(),
        postgres_version()
    );
    let tables = markdown(&header, &throughput, &handoffs, &replicas);
    println!("{tables}");
    let out =
        std::env::var("BENCH_OUT").map_or_else(|_| PathBuf::from("BENCHMARKS.md"), PathBuf::from);
    let analysis = "benches/BENCHMARKS-store-analysis.md";
    section::write_section(&out, MARK_START, MARK_END, &tables, analysis);
    progress(&format!("section written to {}", out.display()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The major version of Debian's PostgreSQL the helper runs (the newest installed).
fn postgres_version() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir(Path::new("/usr/lib/postgresql"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    versions
        .pop()
        .map_or_else(|| "unknown".into(), |v| v.to_string())
}
