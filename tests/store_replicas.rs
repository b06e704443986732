//! Several instances, one set of tokens (#21): real `serve` binaries on one real PostgreSQL
//! (Debian's, started by `common::postgres`), each configured with the same servers, against
//! real OAuth test servers that rotate refresh tokens and count a presented, already rotated
//! one as a reuse (which would revoke the family). The lease claimed before any token request
//! must make every lifetime of every server cost exactly one refresh across all instances, and
//! an instance killed in the middle of a refresh must leave its lease to another one once it
//! expires, without a login and without a reuse.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};

const SERVERS: usize = 20;
const INSTANCES: usize = 3;
/// The test servers' access-token lifetime.
const TTL: Duration = Duration::from_secs(3);
/// Lifetimes observed with every instance running.
const LIFETIMES: u64 = 10;
/// The shortest time between two refreshes of one server by one instance: a token is
/// refreshed at 75% of its lifetime, at most 5% sooner (jitter).
const SHORTEST_CYCLE: Duration = Duration::from_millis(2_100);
/// Each instance's refresh request deadline: the lease is this plus `LEASE_MARGIN` (30 s).
const REFRESH_TIMEOUT: &str = "2s";

/// Everything the instances share: the database, the key, the config naming every server.
struct Shared {
    store_url: String,
    key_file: PathBuf,
    config: PathBuf,
    dir: PathBuf,
}

impl Shared {
    /// `args` on the shared store, key and config, logins through the curl browser.
    fn args<'a>(&'a self, command: &[&'a str], data: &'a str) -> Vec<&'a str> {
        let mut args = command.to_vec();
        args.extend([
            "--config",
            self.config.to_str().unwrap(),
            "--data-dir",
            data,
            "--store",
            &self.store_url,
            "--key-file",
            self.key_file.to_str().unwrap(),
            "--browser-command",
            CURL_BROWSER,
            "--refresh-timeout",
            REFRESH_TIMEOUT,
        ]);
        args
    }
}

/// One running `serve`, its log in a file (a piped stderr would fill up and stall it).
struct Instance {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Instance {
    fn pid(&self) -> u32 {
        self.child.id().expect("the instance runs")
    }
}

/// Starts instance `n`; with `listen`, its operator API on that loopback address.
fn start_instance(shared: &Shared, n: usize, listen: Option<&str>) -> Instance {
    let data = shared.dir.join(format!("data-{n}"));
    let log = shared.dir.join(format!("instance-{n}.log"));
    let data = data.to_str().unwrap().to_string();
    let mut command = vec![
        "--log-format",
        "json",
        "--log-file",
        log.to_str().unwrap(),
        "serve",
        "--non-interactive",
        "--refresh-stagger",
        "0s",
    ];
    if let Some(listen) = listen {
        command.extend(["--listen", listen]);
    }
    let args = shared.args(&command, &data);
    let child = bin(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("serve starts");
    Instance { child, log }
}

/// Starts `count` instances (the first with its API on `listen`) and waits until every server
/// has been refreshed once since: the instances run and the tokens are fresh.
async fn start_instances(
    servers: &[OAuthTestServer],
    shared: &Shared,
    count: usize,
    listen: &str,
) -> Vec<Instance> {
    let first: Vec<u64> = refreshes(servers).iter().map(|n| n + 1).collect();
    let instances = (0..count)
        .map(|n| start_instance(shared, n, (n == 0).then_some(listen)))
        .collect();
    let what = "a first refresh of every server after the instances started";
    wait_for_refreshes(servers, &first, what, Duration::from_secs(60)).await;
    instances
}

/// A free loopback address for an instance's operator API.
fn free_listen_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    format!("127.0.0.1:{port}")
}

/// A request to the API of the instance whose data directory is `data` (its key is there).
fn api_request(
    data: &std::path::Path,
    listen: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let key = std::fs::read_to_string(data.join("api-key")).expect("serve wrote its API key");
    reqwest::Client::new()
        .request(method, format!("http://{listen}{path}"))
        .header("X-API-Key", key.trim())
}

/// Refresh requests each test server has answered (or held), by server.
fn refreshes(servers: &[OAuthTestServer]) -> Vec<u64> {
    servers
        .iter()
        .map(|s| {
            s.stats()
                .token_requests
                .get("refresh_token")
                .copied()
                .unwrap_or(0)
        })
        .collect()
}

fn reuses(servers: &[OAuthTestServer]) -> u64 {
    servers.iter().map(|s| s.stats().refresh_token_reuse).sum()
}

fn logins(servers: &[OAuthTestServer]) -> Vec<u64> {
    servers
        .iter()
        .map(|s| s.stats().authorize_requests)
        .collect()
}

/// Waits (bounded) until every server has answered at least `at_least[i]` refreshes.
async fn wait_for_refreshes(
    servers: &[OAuthTestServer],
    at_least: &[u64],
    what: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let now = refreshes(servers);
        if now.iter().zip(at_least).all(|(n, want)| n >= want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; refreshes per server {now:?}, wanted {at_least:?}; \
             reuses {}",
            reuses(servers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lease row of the server named `name`: (owner, held now).
async fn lease_of(db: &tokio_postgres::Client, name: &str) -> Option<(String, bool)> {
    let row = db
        .query_opt(
            "SELECT l.owner, l.expires_at IS NOT NULL
               FROM oauth_leases l JOIN oauth_tokens t ON t.server_key = l.server_key
              WHERE t.server_name = $1",
            &[&name],
        )
        .await
        .expect("the lease rows read");
    row.map(|r| (r.get(0), r.get(1)))
}

/// Fails if any secret any test server issued appears in the instances' logs.
fn assert_logs_hold_no_secret(servers: &[OAuthTestServer], instances: &[Instance]) {
    for instance in instances {
        let text = std::fs::read_to_string(&instance.log).unwrap_or_default();
        assert!(!text.is_empty(), "{} is empty", instance.log.display());
        for server in servers {
            assert_no_secret(server, &text);
        }
    }
}

fn name(i: usize) -> String {
    format!("srv{i:02}")
}

/// `count` test servers whose tokens live `ttl`, a database of the test's own, a shared key,
/// the config naming every server, and the one login of each.
async fn setup(
    pg: &Postgres,
    label: &str,
    count: usize,
    ttl: Duration,
) -> (Vec<OAuthTestServer>, Shared) {
    let mut servers = Vec::with_capacity(count);
    for _ in 0..count {
        servers.push(
            start(Config {
                access_token_ttl: ttl,
                rotate_refresh_tokens: true,
                ..Config::default()
            })
            .await,
        );
    }
    let dir = temp_dir(label);
    let named: Vec<(String, &OAuthTestServer)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (name(i), s))
        .collect();
    let config = write_servers_config(&dir, &named);
    let key_file = dir.join("shared.key");
    mcpproxy_oauth::store::keys::create_key_file(&key_file).unwrap();
    let store_url = pg.create_database(label).await;
    let shared = Shared {
        store_url,
        key_file,
        config,
        dir,
    };
    // The one login of every server, by an operator's `auth login --all` on the shared store.
    let data = shared.dir.join("data-login");
    let data = data.to_str().unwrap().to_string();
    let mut login = bin(&shared.args(&["auth", "login", "--all"], &data));
    login.kill_on_drop(true);
    let out = output_within(login, Duration::from_secs(120)).await;
    assert!(out.status.success(), "auth login --all: {}", text(&out));
    assert_eq!(logins(&servers), vec![1; count], "one login per server");
    (servers, shared)
}

/// Three daemons x 20 servers on one database, tokens living 3 s, for 10 lifetimes: every
/// lifetime of every server costs one refresh across all instances (a second presentation of
/// a rotated refresh token would be counted as a reuse, and a refresh of a token that was not
/// due would exceed the count one instance makes), no login after the first. Then the instance
/// that holds a lease in the middle of a refresh (held at the test server) is killed -9:
/// another one takes the server over once the lease expires, with no login and no reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_twenty_servers_with_one_refresh_per_lifetime() {
    let Some(pg) = Postgres::start("replicas") else {
        return;
    };
    let (servers, shared) = setup(&pg, "replicas", SERVERS, TTL).await;
    let listen = free_listen_address();
    let mut instances = start_instances(&servers, &shared, INSTANCES, &listen).await;

    let before = refreshes(&servers);
    let started = Instant::now();
    let wanted: Vec<u64> = before.iter().map(|n| n + LIFETIMES).collect();
    let within = TTL * (LIFETIMES as u32 + 10);
    wait_for_refreshes(&servers, &wanted, "10 lifetimes of every server", within).await;
    let after = refreshes(&servers);
    let elapsed = started.elapsed();
    // One instance alone refreshes a server at most once per shortest cycle; three instances
    // that single-flight make no more.
    let most = (elapsed.as_millis() / SHORTEST_CYCLE.as_millis()) as u64 + 1;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let made = a - b;
        assert!(
            made <= most,
            "{}: {made} refreshes in {elapsed:?} by {INSTANCES} instances, more than one per \
             lifetime allows ({most})",
            name(i)
        );
    }
    assert_eq!(reuses(&servers), 0, "no refresh token was presented twice");
    assert_eq!(
        logins(&servers),
        vec![1; SERVERS],
        "no login after the first"
    );

    // Every instance did some of the work: the lease moves between them.
    let db = pg.connect("replicas").await;
    let owners: i64 = db
        .query_one(
            "SELECT count(DISTINCT owner) FROM oauth_flows WHERE kind = 'refresh'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(owners >= 2, "refresh flows ran on {owners} instance(s)");
    // Every instance learned other instances' tokens from the store's changes (LISTEN/NOTIFY
    // to the store watcher), or adopted them under the lease, instead of refreshing itself.
    for instance in &instances {
        let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
        assert!(
            log.contains("another process changed the stored token")
                || log.contains("another process refreshed meanwhile"),
            "{} never took another instance's token",
            instance.log.display()
        );
        assert!(
            log.contains(&format!("\"store\":\"{}\"", shared.store_url)),
            "{} names the store it runs on",
            instance.log.display()
        );
    }

    // The operator API of instance 0 shows who holds each server's lease (one of the three)
    // and the store's health; /metrics has the store's gauges.
    let data0 = shared.dir.join("data-0");
    let get = |path: &str| api_request(&data0, &listen, reqwest::Method::GET, path).send();
    let view: serde_json::Value = ends_within(
        "GET /api/v1/servers/srv00",
        Duration::from_secs(10),
        async {
            get("/api/v1/servers/srv00")
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        },
    )
    .await;
    let holder = view["lease"]["holder"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        instances
            .iter()
            .any(|i| holder.starts_with(&format!("pid {} ", i.pid()))),
        "the lease holder shown is one of the instances: {view}"
    );
    assert!(
        view["lease"]["fence"].as_i64().unwrap_or(0) > LIFETIMES as i64,
        "{view}"
    );
    let metrics = ends_within("GET /metrics", Duration::from_secs(10), async {
        get("/metrics").await.unwrap().text().await.unwrap()
    })
    .await;
    for line in [
        "mcpproxy_oauth_store{backend=\"postgres\",measure=\"up\"} 1",
        "mcpproxy_oauth_store{backend=\"postgres\",measure=\"listening\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    for server in &servers {
        assert_no_secret(server, &view.to_string());
        assert_no_secret(server, &metrics);
    }

    // Kill -9 mid-refresh. Every refresh is held at its server (never answered, never
    // processed) from now until the kill: the killed instance dies holding leases whose
    // refreshes no server has processed (a refresh processed and then lost with its process
    // is the ambiguous case no store can repair: the next presentation is a reuse).
    let hang = || Fault::new(FaultTarget::Refresh, FaultKind::Hang).times(1_000);
    let fired = |s: &OAuthTestServer| s.stats().faults_fired.get("refresh").copied().unwrap_or(0);
    let held = &servers[0];
    let fired_before = fired(held);
    for server in &servers {
        server.inject(hang()).unwrap();
    }
    wait_until(
        "the refresh of srv00 reaching its server and being held",
        Duration::from_secs(20),
        || fired(held) > fired_before,
    )
    .await;
    let (owner, holding) = lease_of(&db, &name(0))
        .await
        .expect("srv00 has a lease row");
    assert!(
        holding,
        "the lease of srv00 is held while its refresh hangs ({owner})"
    );
    let victim = instances
        .iter()
        .position(|i| owner.starts_with(&format!("pid {} ", i.pid())))
        .unwrap_or_else(|| panic!("the lease holder {owner} is one of the instances"));
    signal(&instances[victim].child, "-KILL");
    let _ = ends_within(
        "the killed instance",
        Duration::from_secs(10),
        instances[victim].child.wait(),
    )
    .await;
    let killed_at = Instant::now();
    // The survivors' held refreshes time out (2 s): marked ambiguous, re-read, presented again.
    for server in &servers {
        server.clear_faults();
    }
    let refreshed_before = refreshes(&servers)[0];

    // Another instance claims srv00 once the lease expires (2 s + 30 s), presents the refresh
    // token the killed one presented (the server never processed it), and stores the answer.
    // Every other server is back to refreshing too.
    let mut wanted: Vec<u64> = refreshes(&servers).iter().map(|n| n + 2).collect();
    wanted[0] = refreshed_before + 2;
    wait_for_refreshes(
        &servers,
        &wanted,
        "srv00 refreshed by another instance",
        Duration::from_secs(90),
    )
    .await;
    let (new_owner, _) = lease_of(&db, &name(0)).await.unwrap();
    assert_ne!(new_owner, owner, "another instance took the lease over");
    assert!(
        killed_at.elapsed() >= Duration::from_secs(25),
        "not taken over before the lease expired ({:?})",
        killed_at.elapsed()
    );
    assert_eq!(reuses(&servers), 0, "no reuse after the take-over");
    assert_eq!(
        logins(&servers),
        vec![1; SERVERS],
        "no login after the take-over"
    );

    let survivors: Vec<Instance> = instances
        .drain(..)
        .enumerate()
        .filter_map(|(n, i)| (n != victim).then_some(i))
        .collect();
    for mut instance in survivors {
        stop(&mut instance.child, "-TERM").await;
        assert_logs_hold_no_secret(&servers, std::slice::from_ref(&instance));
    }
}

/// PostgreSQL stopped for 10 s under two running instances and started again: the tokens they
/// hold keep being served through the gateway while the database is down (nothing is refreshed
/// that could not be recorded), no refresh token is lost, and every server is refreshed again
/// afterwards without a login or a reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_for_ten_seconds_costs_no_token_and_no_login() {
    const COUNT: usize = 3;
    let Some(mut pg) = Postgres::start("replicas-down") else {
        return;
    };
    // Tokens of 13 s: refreshed 9.1 to 9.75 s after they were obtained, so every server's
    // refresh falls due while the database is down (it stops right after every server's first
    // refresh, which all come within about 2 s); handed out until 11.7 s, so every token is
    // still served when it stops.
    let (servers, shared) = setup(&pg, "replicas_down", COUNT, Duration::from_secs(13)).await;
    let listen = free_listen_address();
    let mut instances = start_instances(&servers, &shared, 2, &listen).await;
    let data0 = shared.dir.join("data-0");

    let before = refreshes(&servers);
    let refused_before: u64 = servers.iter().map(|s| s.stats().mcp_401).sum();
    pg.stop();
    let stopped = Instant::now();
    // While it is down, every server's token is served: an MCP request through the gateway
    // reaches the server with a token it accepts.
    let served = (0..COUNT).map(|i| {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "replicas-test", "version": "1"}}});
        let request = api_request(
            &data0,
            &listen,
            reqwest::Method::POST,
            &format!("/mcp/{}", name(i)),
        )
        .header("accept", "application/json, text/event-stream")
        .json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = ends_within(
        "the gateway requests while the database is down",
        Duration::from_secs(10),
        futures_util::future::join_all(served),
    )
    .await;
    assert_eq!(
        statuses,
        vec![200; COUNT],
        "every server served while the database is down"
    );
    let refused: u64 = servers.iter().map(|s| s.stats().mcp_401).sum();
    assert_eq!(refused, refused_before, "no token the servers refused");
    // The operator still sees every server, from the instance's memory, and the store's
    // health says it is down (the history read from the database is left out).
    for path in ["/api/v1/servers", "/api/v1/servers/srv00"] {
        let (status, view) = ends_within(
            "the server view while the database is down",
            Duration::from_secs(20),
            async {
                let response = api_request(&data0, &listen, reqwest::Method::GET, path)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.json::<serde_json::Value>().await.unwrap())
            },
        )
        .await;
        assert_eq!(status, 200, "GET {path} while the database is down: {view}");
        let shown: Vec<&serde_json::Value> = match view["servers"].as_array() {
            Some(list) => list.iter().collect(),
            None => vec![&view],
        };
        for server in &shown {
            assert!(
                server["phase"].is_string() && server["token_expires_at"].is_string(),
                "GET {path}: every server with its state from memory: {view}"
            );
        }
        if path == "/api/v1/servers" {
            assert_eq!(shown.len(), COUNT, "{view}");
            assert_eq!(view["store"]["backend"], "postgres", "{view}");
            assert_eq!(view["store"]["reachable"], false, "{view}");
            assert!(view["store"]["error"].is_string(), "{view}");
        }
        for server in &servers {
            assert_no_secret(server, &view.to_string());
        }
    }
    // The outage lasts 10 s (a duration of the scenario, not a wait for something).
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    let during = refreshes(&servers);
    pg.start_again();

    // Back: every server refreshed again with the refresh token the store kept.
    let wanted: Vec<u64> = during.iter().map(|n| n + 1).collect();
    wait_for_refreshes(
        &servers,
        &wanted,
        "every server refreshed after the restart",
        Duration::from_secs(60),
    )
    .await;
    // Refreshes fell due meanwhile and were not sent: their claims found the store unreachable.
    let logs: String = instances
        .iter()
        .map(|i| std::fs::read_to_string(&i.log).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("is unreachable"),
        "a refresh fell due while the database was down and was refused for it"
    );
    // A refresh claimed in the instant before the stop may still reach its server (its token
    // is then kept in memory and saved once the database is back); none starts while it is down.
    assert!(
        during.iter().zip(&before).all(|(d, b)| d - b <= 1),
        "no refresh started while its result could not be recorded: {before:?} -> {during:?}"
    );
    assert_eq!(reuses(&servers), 0, "no refresh token was presented twice");
    assert_eq!(
        logins(&servers),
        vec![1; COUNT],
        "no login after the outage"
    );
    // The instance with the API shows every server connected again (one that backed off while
    // the database was down adopts the other instance's token at its next attempt).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view: serde_json::Value =
            ends_within("GET /api/v1/servers", Duration::from_secs(20), async {
                let response =
                    api_request(&data0, &listen, reqwest::Method::GET, "/api/v1/servers");
                response.send().await.unwrap().json().await.unwrap()
            })
            .await;
        let servers_shown = view["servers"].as_array().expect("the servers");
        if servers_shown.iter().all(|s| s["phase"] == "connected") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every server connected again within 30 s: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The read-only commands read the shared store too (with the shared key), and say what
    // they cannot do there; MCPPROXY_OAUTH_STORE works as --store does.
    let key = shared.key_file.to_str().unwrap();
    let store = ["--store", shared.store_url.as_str(), "--key-file", key];
    let status = run(&[&["auth", "status", "--json"][..], &store].concat(), &[]).await;
    assert!(status.status.success(), "auth status: {}", text(&status));
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let valid = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            (r["status"] == "valid" || r["status"] == "expiring") && r["has_refresh_token"] == true
        })
        .count();
    assert_eq!(
        valid, COUNT,
        "every server's token is usable, with its refresh token, in the shared store: {rows}"
    );
    let flows = run(
        &["logs", "flows", "--json", "--key-file", key],
        &[("MCPPROXY_OAUTH_STORE", shared.store_url.as_str())],
    )
    .await;
    assert!(flows.status.success(), "logs flows: {}", text(&flows));
    let flows: serde_json::Value = serde_json::from_slice(&flows.stdout).unwrap();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "refresh" && f["state"] == "succeeded"),
        "the shared flow history: {flows}"
    );
    let rekey = run(&[&["tokens", "rekey"][..], &store[..2]].concat(), &[]).await;
    assert!(!rekey.status.success());
    assert!(
        text(&rekey).contains("SQLite store only"),
        "{}",
        text(&rekey)
    );
    for server in &servers {
        assert_no_secret(server, &format!("{rows}{flows}{}", text(&rekey)));
    }

    for mut instance in instances.drain(..) {
        stop(&mut instance.child, "-TERM").await;
        assert_logs_hold_no_secret(&servers, std::slice::from_ref(&instance));
    }
}
