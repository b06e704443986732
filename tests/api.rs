//! The operator API (spec scenario 8) against a real supervisor, its SQLite file and the OAuth
//! test server, all in-process on loopback: server fields against the database and the test
//! server's counters, actions, flows, live events, metrics, the error shape, the API key, and
//! no issued secret in any response or event of the run.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::api::view::parse_rfc3339;
use mcpproxy_oauth::api::{ApiConfig, ApiError, ApiKey, ApiServer, AuthLinks};
use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use serde_json::Value;
use url::Url;

struct Daemon {
    handle: SupervisorHandle,
    api: ApiServer,
    base: String,
    /// Every body the API answered, for the secret scan.
    seen: Arc<Mutex<Vec<String>>>,
    /// Every event stream read, for the secret scan.
    streams: Mutex<Vec<Arc<Mutex<String>>>>,
    http: reqwest::Client,
}

/// The key every test daemon requires (every listener requires one).
const API_KEY: &str = "test-api-key-0123456789";

async fn daemon(srv: &OAuthTestServer, names: &[&str], browser: BrowserLauncher) -> Daemon {
    let servers = upstreams(srv, names);
    let links = AuthLinks::new(&servers);
    let dir = data_dir(&format!("api-{}", names[0]));
    let config = supervisor_config(servers, &dir, links.wrap(browser));
    let handle = start_supervisor(config).await;
    let mut api = ApiConfig::new("127.0.0.1:0".parse().unwrap());
    api.api_key = Some(ApiKey::new(API_KEY).unwrap());
    api.heartbeat = Duration::from_millis(200);
    api.action_wait = Duration::from_secs(5);
    let api = ApiServer::start(handle.clone(), links, api)
        .await
        .expect("the API starts");
    Daemon {
        base: format!("http://{}", api.addr()),
        handle,
        api,
        seen: Arc::default(),
        streams: Mutex::default(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap(),
    }
}

/// The default test server and a daemon of `names` on it.
async fn default_server_daemon(
    names: &[&str],
    browser: BrowserLauncher,
) -> (OAuthTestServer, Daemon) {
    let srv = start(Config::default()).await;
    let d = daemon(&srv, names, browser).await;
    (srv, d)
}

impl Daemon {
    /// A request to `path` with the key in the X-API-Key header.
    fn with_key(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", API_KEY)
    }

    /// A request with the daemon's key.
    async fn call(&self, method: &str, path: &str) -> (u16, Value) {
        self.call_presenting(method, path, Some(API_KEY)).await
    }

    /// A request presenting `key` (`None`: no key at all).
    async fn call_presenting(&self, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        self.call("POST", path).await
    }

    /// Asks for `name`'s login, which answers 202 while it waits for a person.
    async fn login_waiting(&self, name: &str) -> Value {
        let (status, answer) = self.post(&format!("/api/v1/servers/{name}/login")).await;
        assert_eq!(
            status, 202,
            "{name}: answered while the login waits: {answer}"
        );
        answer
    }

    /// Starts `name`'s login and returns the link it answers, once `name`'s view shows it.
    async fn shown_login_link(&self, name: &str) -> String {
        let answer = self.login_waiting(name).await;
        let url = string(&answer["auth_url"], &format!("{name}'s link"));
        let view = self
            .server_until(name, "showed its link", |v| v["login_link"] != Value::Null)
            .await;
        assert_eq!(view["login_link"]["url"], url.as_str());
        url
    }

    async fn server(&self, name: &str) -> Value {
        self.get(&format!("/api/v1/servers/{name}")).await
    }

    /// Polls the server's view (bounded) until `pred` holds.
    async fn server_until(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let view = self.server(name).await;
            if pred(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "never {what}: {view}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Reads the SSE stream into a shared string until stopped.
    async fn events(&self) -> Arc<Mutex<String>> {
        let response = self
            .with_key(reqwest::Method::GET, "/api/v1/events")
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let text = Arc::new(Mutex::new(String::new()));
        self.streams.lock().unwrap().push(text.clone());
        let sink = text.clone();
        tokio::spawn(async move {
            let mut response = response;
            while let Ok(Some(chunk)) = response.chunk().await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk));
            }
        });
        text
    }

    async fn metrics(&self) -> prometheus_parse::Scrape {
        let (status, body) = self.call("GET", "/metrics").await;
        assert_eq!(status, 200);
        let text = body.as_str().expect("text format").to_string();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format")
    }

    fn assert_no_secret(&self, srv: &OAuthTestServer) {
        let seen = self.seen.lock().unwrap();
        assert!(!seen.is_empty());
        // Answers may carry a login link with its `state` (a person opens it); nothing else.
        for text in seen.iter() {
            assert_no_secret_but_auth_links(srv, text);
        }
        for stream in self.streams.lock().unwrap().iter() {
            assert_no_secret_but_auth_links(srv, &stream.lock().unwrap());
        }
    }

    /// Stops the API, the supervisor and the test server.
    async fn stop(self, srv: OAuthTestServer) {
        self.api.stop().await;
        self.handle.shutdown().await;
        srv.shutdown().await;
    }

    /// [`Daemon::stop`] once no answer or event of the run held a secret of `srv`.
    async fn stop_without_secrets(self, srv: OAuthTestServer) {
        self.assert_no_secret(&srv);
        self.stop(srv).await;
    }
}

fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Waits (bounded) until the SSE text holds `needle`.
async fn saw(events: &Arc<Mutex<String>>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = events.lock().unwrap().clone();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the events: {text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `data:` JSON of every SSE event named `name`.
fn events_named(text: &str, name: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|frame| frame.lines().any(|l| l == format!("event: {name}")))
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).expect("event data is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_actions_flows_events_and_metrics_match_the_database_and_the_server() {
    let srv = start(Config::with(|c| {
        c.scopes_supported = vec!["mcp:read".into(), "mcp:write".into()]
    }))
    .await;
    let (browser, launches) = following_browser();
    let d = daemon(&srv, &["alpha", "beta"], browser).await;
    let events = d.events().await;
    saw(&events, ": connected").await;

    // Nothing asked yet: no token, nothing running.
    let list = d.get("/api/v1/servers").await;
    assert_eq!(field_of_each(&list["servers"], "name"), ["alpha", "beta"]);
    let alpha = &list["servers"][0];
    assert_eq!(alpha["url"], srv.mcp_url());
    assert_eq!(alpha["authenticated"], false);
    assert_eq!(alpha["oauth_status"], "none");
    assert_eq!(alpha["phase"], "idle");
    assert_eq!(alpha["token_expires_at"], Value::Null);

    // Reconnect logs in (the following browser plays the person). The answer comes when the
    // browser got the link (202, the login goes on) or when the flow ended (200).
    let (status, answer) = d.post("/api/v1/servers/alpha/reconnect").await;
    assert!(status == 202 || status == 200, "{status} {answer}");
    let login_id = string(&answer["correlation_id"], "a correlation ID");
    assert_eq!(answer["browser_opened"], true);
    assert_eq!(
        answer["auth_url"],
        Value::Null,
        "no link to show: the browser opened"
    );
    d.server_until("alpha", "connected", |v| v["phase"] == "connected")
        .await;
    assert_eq!(launches.load(std::sync::atomic::Ordering::SeqCst), 1);

    let rows = d.handle.token_status().await.unwrap();
    let row = rows
        .iter()
        .find(|r| r.server_name == "alpha")
        .expect("a token row");
    let alpha = d.server("alpha").await;
    assert_eq!(alpha["authenticated"], true);
    assert_eq!(alpha["oauth_status"], "authenticated");
    assert_eq!(alpha["phase"], "connected");
    assert_eq!(alpha["health"]["level"], "healthy");
    assert_eq!(alpha["health"]["action"], "none");
    assert_eq!(
        parse_rfc3339(alpha["token_expires_at"].as_str().unwrap()),
        row.expires_at,
        "token_expires_at is the database's"
    );
    assert_eq!(alpha["has_refresh_token"], row.has_refresh_token);
    let scopes: Vec<String> = row
        .scope
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(alpha["scopes"], serde_json::json!(scopes));
    assert_eq!(alpha["last_flow_id"], login_id.as_str());
    assert_eq!(alpha["active_flow"], Value::Null);
    let next = parse_rfc3339(alpha["next_refresh_at"].as_str().unwrap()).unwrap();
    assert!(
        next > now_ms() && Some(next) < row.expires_at,
        "the proactive refresh is ahead, before expiry"
    );
    assert_eq!(alpha["last_refresh_at"], Value::Null, "no refresh yet");

    // An explicit refresh: one refresh_token request at the server, and the counters agree.
    let before = srv.stats().token_requests_for("refresh_token");
    let (status, answer) = d.post("/api/v1/servers/alpha/refresh").await;
    assert_eq!(status, 200, "{answer}");
    let refresh_id = answer["correlation_id"].as_str().unwrap().to_string();
    assert_ne!(refresh_id, login_id);
    assert_eq!(srv.stats().token_requests_for("refresh_token"), before + 1);
    let flows = d.get("/api/v1/flows?server=alpha&limit=10").await;
    let flows = flows["flows"].as_array().unwrap().clone();
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert_eq!(flows[0]["correlation_id"], refresh_id.as_str());
    assert_eq!(flows[0]["kind"], "refresh");
    assert_eq!(flows[0]["state"], "succeeded");
    assert_eq!(flows[1]["correlation_id"], login_id.as_str());
    assert_eq!(flows[1]["kind"], "login");
    let alpha = d.server("alpha").await;
    assert_eq!(
        alpha["last_refresh_at"], flows[0]["finished_at"],
        "last_refresh_at is the refresh flow's end in the database"
    );
    let db_flow = d
        .handle
        .flows(None, Some(refresh_id.clone()), 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        parse_rfc3339(flows[0]["started_at"].as_str().unwrap()),
        Some(db_flow.started_at)
    );
    let trace = d.get(&format!("/api/v1/flows/{refresh_id}")).await;
    let steps = field_of_each(&trace["events"], "step");
    assert_eq!(steps.first(), Some(&"started"), "{steps:?}");
    assert!(steps.contains(&"token obtained"), "{steps:?}");
    assert_eq!(trace["flow"]["server"], "alpha");
    assert_eq!(
        d.get("/api/v1/flows?limit=1").await["flows"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Live events of both flows, and a heartbeat.
    let text = saw(&events, "event: oauth.token_refreshed").await;
    let started: Vec<Value> = events_named(&text, "oauth.flow_started");
    assert!(
        started
            .iter()
            .any(|e| e["correlation_id"] == login_id.as_str() && e["kind"] == "login")
    );
    assert!(
        started
            .iter()
            .any(|e| e["correlation_id"] == refresh_id.as_str() && e["kind"] == "refresh")
    );
    let refreshed = events_named(&text, "oauth.token_refreshed");
    assert_eq!(refreshed[0]["correlation_id"], refresh_id.as_str());
    assert_eq!(refreshed[0]["server"], "alpha");
    assert!(
        events_named(&text, "servers.changed")
            .iter()
            .any(|e| e["server"] == "alpha" && e["view"]["phase"] == "connected")
    );
    saw(&events, "event: heartbeat").await;

    // Metrics: the counters match the server's.
    let scrape = d.metrics().await;
    let ones: [(&str, &[(&str, &str)]); 5] = [
        (
            "mcpproxy_oauth_refreshes_total",
            &[("server", "alpha"), ("outcome", "success")],
        ),
        (
            "mcpproxy_oauth_logins_total",
            &[("server", "alpha"), ("outcome", "success")],
        ),
        (
            "mcpproxy_oauth_browser_launches_total",
            &[("server", "alpha"), ("outcome", "opened")],
        ),
        (
            "mcpproxy_oauth_server_phase",
            &[("server", "alpha"), ("phase", "connected")],
        ),
        (
            "mcpproxy_oauth_server_phase",
            &[("server", "beta"), ("phase", "idle")],
        ),
    ];
    for (name, labels) in ones {
        assert_eq!(metric(&scrape, name, labels), 1.0, "{name} {labels:?}");
    }
    // The scheduler as the handle counts it: alpha's proactive refresh is armed, no refresh
    // runs now, the limit is the configured one.
    let scheduler =
        |measure: &str| metric(&scrape, "mcpproxy_oauth_scheduler", &[("measure", measure)]);
    let counters = d.handle.scheduler_counters();
    assert!(scheduler("armed") >= 1.0, "alpha's refresh was armed");
    assert!(scheduler("entries") >= 1.0, "alpha's refresh waits");
    assert_eq!(scheduler("refreshes_running"), 0.0);
    assert_eq!(scheduler("refresh_limit"), counters.flow_limit as f64);
    assert!(scheduler("refreshes_peak") >= 1.0, "alpha was refreshed");
    let ttl = metric(
        &scrape,
        "mcpproxy_oauth_token_expiry_seconds",
        &[("server", "alpha")],
    );
    assert!(
        ttl > 0.0 && ttl <= Config::default().access_token_ttl.as_secs_f64(),
        "{ttl}"
    );
    assert_eq!(
        metric(
            &scrape,
            "mcpproxy_oauth_flow_duration_seconds_count",
            &[("kind", "refresh"), ("outcome", "success")]
        ),
        1.0
    );

    // A refresh fault: the error, its endpoint and status, and its correlation ID on the view.
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::TemporarilyUnavailable).times(50))
        .unwrap();
    // Asked for through the API, the failed refresh answers 502 flow_failed with the failed
    // flow and what the server does next, though the still-valid token keeps being served.
    let (status, answer) = d.post("/api/v1/servers/alpha/refresh").await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "flow_failed", "{answer}");
    assert_eq!(
        answer["error"]["failure"]["kind"], "backing_off",
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("temporarily_unavailable"),
        "{answer}"
    );
    let alpha = d
        .server_until("alpha", "showed the refresh failure", |v| {
            v["last_error"] != Value::Null
        })
        .await;
    let failed_id = string(&alpha["last_error"]["correlation_id"], "the failed flow");
    assert_ne!(failed_id, refresh_id);
    assert_eq!(answer["error"]["correlation_id"], failed_id.as_str());
    assert_eq!(
        alpha["authenticated"], true,
        "the old token is still served"
    );
    assert_eq!(alpha["last_error"]["status"], 503, "{alpha}");
    assert_eq!(alpha["last_error"]["endpoint"], "token endpoint");
    assert!(
        alpha["last_error"]["error"]
            .as_str()
            .unwrap()
            .contains("temporarily_unavailable"),
        "{alpha}"
    );
    assert_eq!(alpha["phase"], "backing_off");
    assert!(alpha["refresh_failures"].as_u64().unwrap() >= 1);
    assert!(alpha["retry_at"].is_string());
    assert_eq!(
        alpha["authenticated"], true,
        "the access token is still valid"
    );
    let text = saw(&events, "event: oauth.refresh_failed").await;
    let failed = events_named(&text, "oauth.refresh_failed");
    assert!(
        failed
            .iter()
            .any(|e| e["correlation_id"] == failed_id.as_str() && e["status"] == 503)
    );
    let failures = metric(
        &d.metrics().await,
        "mcpproxy_oauth_refreshes_total",
        &[("server", "alpha"), ("outcome", "failure")],
    );
    assert!(failures >= 1.0);
    assert_eq!(
        failures as u64,
        srv.stats()
            .faults_fired
            .get("refresh")
            .copied()
            .unwrap_or(0),
        "every fired fault is one failed refresh: {:?}",
        srv.stats().faults_fired
    );
    srv.clear_faults();

    // Logout forgets the token: the view and the database agree.
    let (status, answer) = d.post("/api/v1/servers/alpha/logout").await;
    assert_eq!(status, 200, "{answer}");
    let alpha = d
        .server_until("alpha", "logged out", |v| v["authenticated"] == false)
        .await;
    assert_eq!(alpha["oauth_status"], "none");
    assert_eq!(alpha["token_expires_at"], Value::Null);
    assert!(
        d.handle
            .token_status()
            .await
            .unwrap()
            .iter()
            .all(|r| r.server_name != "alpha")
    );

    d.stop_without_secrets(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_waiting_for_a_person_shows_its_link_and_flow() {
    // A browser nobody looks at: the link stays pending until the test "clicks" it.
    let (srv, d) = default_server_daemon(&["gamma"], BrowserLauncher::handler(|_| {})).await;
    let events = d.events().await;
    saw(&events, ": connected").await;
    let answer = d.login_waiting("gamma").await;
    let flow = string(&answer["correlation_id"], "the running flow");
    assert_eq!(answer["browser_opened"], true);
    let gamma = d.server("gamma").await;
    assert_eq!(gamma["phase"], "authorizing");
    assert_eq!(gamma["active_flow"]["correlation_id"], flow.as_str());
    assert_eq!(gamma["active_flow"]["kind"], "login");
    assert!(
        parse_rfc3339(gamma["active_flow"]["started_at"].as_str().unwrap()).unwrap() <= now_ms()
    );
    // Asking again while the login waits answers at once with the same flow.
    let asked = Instant::now();
    let again = d.login_waiting("gamma").await;
    assert_eq!(again["correlation_id"], flow.as_str(), "the same login");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "no wait for action_wait"
    );
    let link = string(&gamma["login_link"]["url"], "the pending link");
    assert!(link.starts_with(srv.url()), "{link}");
    // The person opens the link: the test server approves and redirects to the callback.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .unwrap();
    browser.get(&link).send().await.unwrap();
    let gamma = d
        .server_until("gamma", "finished the login", |v| v["phase"] == "connected")
        .await;
    assert_eq!(gamma["login_link"], Value::Null, "a used link is gone");
    assert_eq!(gamma["last_flow_id"], flow.as_str());
    let text = saw(&events, "event: oauth.login_completed").await;
    assert_eq!(
        events_named(&text, "oauth.login_completed")[0]["correlation_id"],
        flow.as_str()
    );
    d.stop_without_secrets(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_with_one_url_each_get_their_own_login_link() {
    // Two accounts on one service: the same URL twice. The links are only printed.
    let (srv, d) = default_server_daemon(&["first", "second"], BrowserLauncher::PrintOnly).await;
    let second_url = d.shown_login_link("second").await;
    assert_eq!(
        d.server("first").await["login_link"],
        Value::Null,
        "not on first's card"
    );
    let first_url = d.shown_login_link("first").await;
    assert_ne!(first_url, second_url, "each login has its own link");
    assert_eq!(
        d.server("second").await["login_link"]["url"],
        second_url.as_str()
    );
    d.stop(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_one_documented_shape() {
    let (srv, d) = default_server_daemon(&["delta"], following_browser().0).await;
    /// An error code, the status it always comes with, and requests (method, path) that get it.
    type ErrorCase = (&'static str, u16, &'static [(&'static str, &'static str)]);
    let cases: [ErrorCase; 5] = [
        (
            "unknown_server",
            404,
            &[
                ("GET", "/api/v1/servers/nope"),
                ("POST", "/api/v1/servers/nope/refresh"),
                ("POST", "/api/v1/servers/nope/login"),
            ],
        ),
        (
            "method_not_allowed",
            405,
            &[
                ("DELETE", "/api/v1/servers"),
                ("GET", "/api/v1/servers/delta/refresh"),
                ("POST", "/api/v1/servers"),
            ],
        ),
        ("not_found", 404, &[("GET", "/api/v1/nothing")]),
        (
            "bad_request",
            400,
            &[
                ("GET", "/api/v1/flows?limit=0"),
                ("GET", "/api/v1/flows?limit=lots"),
            ],
        ),
        (
            "unknown_flow",
            404,
            &[("GET", "/api/v1/flows/00000000-0000-0000-0000-000000000000")],
        ),
    ];
    for (code, status, requests) in cases {
        for (method, path) in requests {
            let (got, body) = d.call(method, path).await;
            assert_eq!(got, status, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{body}"
            );
        }
    }
    let same_origin = d
        .with_key(reqwest::Method::GET, "/api/v1/servers")
        .header("Origin", d.base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(
        same_origin.status(),
        200,
        "the page's own origin is welcome"
    );
    let (_, body) = d.call("GET", "/api/v1/servers/nope").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("delta"),
        "names the configured servers: {body}"
    );
    let response = d
        .with_key(reqwest::Method::DELETE, "/api/v1/servers")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET");
    // A failed flow carries the server's typed failure.
    let (status, _) = d.post("/api/v1/servers/delta/logout").await;
    assert_eq!(status, 200);
    let (status, body) = d.post("/api/v1/servers/delta/refresh").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "flow_failed", "{body}");
    assert_eq!(body["error"]["failure"]["kind"], "logged_out", "{body}");
    d.stop(srv).await;
}

/// Sends `request` and returns its status, headers and body text (kept for the secret scan).
async fn answer(
    d: &Daemon,
    request: reqwest::RequestBuilder,
) -> (u16, reqwest::header::HeaderMap, String) {
    let response = request.send().await.expect("the API answers");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await.unwrap();
    d.seen.lock().unwrap().push(text.clone());
    (status, headers, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_on_every_path_and_never_echoed() {
    let (srv, d) = default_server_daemon(&["eps"], following_browser().0).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    // Without the key (or with a wrong one) nothing is served, the page and the loopback
    // listener included: another local user reaches a loopback port as easily as its owner.
    for path in [
        "/",
        "/api/v1/servers",
        "/api/v1/servers/eps",
        "/metrics",
        "/api/v1/events",
        "/api/v1/openapi.json",
        "/api/v1/flows",
    ] {
        let (status, body) = d.call_presenting("GET", path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _) = d
            .call_presenting("GET", path, Some("test-api-key-0123456780"))
            .await;
        assert_eq!(status, 401, "a wrong key: {path}");
        if path != "/" {
            assert_eq!(body["error"]["code"], "unauthorized", "{path}");
        }
    }
    for action in ["login", "logout", "refresh", "reconnect"] {
        let (status, _) = d
            .call_presenting("POST", &format!("/api/v1/servers/eps/{action}"), None)
            .await;
        assert_eq!(status, 401, "{action}");
    }
    // Under /mcp/ a refusal is 403 with a JSON-RPC body: never 401, which would start an
    // MCP client's own OAuth login against this daemon.
    let (status, body) = d.call_presenting("POST", "/mcp/eps", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert!(body["error"]["code"].is_i64(), "{body}");

    // The key is accepted from each documented place.
    let (status, body) = d.call("GET", "/api/v1/servers").await;
    assert_eq!(status, 200, "Authorization: Bearer: {body}");
    let servers = format!("{}/api/v1/servers", d.base);
    let (status, ..) = answer(&d, d.with_key(reqwest::Method::GET, "/api/v1/servers")).await;
    assert_eq!(status, 200, "X-API-Key");
    let (status, ..) = answer(&d, d.http.get(format!("{servers}?apikey={API_KEY}"))).await;
    assert_eq!(status, 200, "?apikey=");

    // The page opened with ?apikey= keeps it as an HttpOnly, SameSite=Strict cookie that is
    // not the key, and sends the browser to / (the key leaves the address bar); a reload
    // works on the cookie alone.
    let port = d.base.rsplit(':').next().unwrap().to_string();
    let (status, headers, _) = answer(
        &d,
        no_redirects.get(format!("{}/?apikey={API_KEY}", d.base)),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/");
    let cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!("mcpproxy_oauth_{port}=")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(API_KEY),
        "the cookie is not the key: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let (status, headers, page) = answer(
        &d,
        no_redirects
            .get(format!("{}/", d.base))
            .header("Cookie", &pair),
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    assert!(!page.contains(API_KEY), "the page never holds the key");
    assert_eq!(headers["x-frame-options"], "DENY", "no framing");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        csp.contains("script-src 'sha256-"),
        "only the page's own script: {csp}"
    );
    let (status, ..) = answer(&d, d.http.get(&servers).header("Cookie", &pair)).await;
    assert_eq!(status, 200, "the page's calls carry the cookie");
    let other_port = pair.replacen(&port, "1", 1);
    let (status, ..) = answer(&d, d.http.get(&servers).header("Cookie", &other_port)).await;
    assert_eq!(status, 401, "another daemon's cookie name");

    // A rebinding name that starts like loopback, as Host or as Origin, is refused even with
    // the key: the browser of a page at 127.0.0.1.evil.example would send it.
    let rebound = format!("127.0.0.1.evil.example:{port}");
    // Other origins are refused as well; the other loopback names of this listener are not.
    // Each case: the request, the header it carries, the status, and the refusal's code.
    let (get, post) = (reqwest::Method::GET, reqwest::Method::POST);
    let logout = "/api/v1/servers/eps/logout";
    let cases = [
        (
            get.clone(),
            "/api/v1/servers",
            "Host",
            rebound.clone(),
            403,
            Some("forbidden_host"),
        ),
        (
            post,
            logout,
            "Origin",
            format!("http://{rebound}"),
            403,
            Some("forbidden_origin"),
        ),
        (
            get.clone(),
            "/api/v1/servers",
            "Origin",
            "http://evil.example".into(),
            403,
            None,
        ),
        (
            get.clone(),
            "/api/v1/servers",
            "Origin",
            "null".into(),
            403,
            None,
        ),
        (
            get.clone(),
            "/api/v1/servers",
            "Host",
            format!("localhost:{port}"),
            200,
            None,
        ),
        (
            get,
            "/api/v1/servers",
            "Host",
            format!("[::1]:{port}"),
            200,
            None,
        ),
    ];
    for (method, path, header, value, expected, refusal) in cases {
        let request = d.with_key(method.clone(), path).header(header, &value);
        let (status, _, body) = answer(&d, request).await;
        assert_eq!(
            status, expected,
            "{method} {path} with {header}: {value}: {body}"
        );
        if let Some(code) = refusal {
            assert!(body.contains(code), "{body}");
        }
    }
    for text in d.seen.lock().unwrap().iter() {
        assert!(!text.contains(API_KEY), "the key was echoed: {text}");
    }
    d.stop(srv).await;

    // No key, no listener: loopback included.
    let handle = SupervisorHandle::start(SupervisorConfig::new(Vec::new(), data_dir("nokey")))
        .await
        .unwrap();
    for listen in ["127.0.0.1:0", "0.0.0.0:0"] {
        let err = ApiServer::start(
            handle.clone(),
            AuthLinks::new(&[]),
            ApiConfig::new(listen.parse().unwrap()),
        )
        .await
        .err()
        .expect("refused");
        assert!(matches!(err, ApiError::KeyRequired(_)), "{err}");
        assert!(err.to_string().contains("--api-key-file"), "{err}");
    }
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let (srv, d) = default_server_daemon(&["zeta"], following_browser().0).await;
    let doc = d.get("/api/v1/openapi.json").await;
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            documented.push((
                path.clone(),
                method.to_uppercase(),
                operation["responses"].clone(),
            ));
        }
    }
    let mut served: Vec<(String, String)> = mcpproxy_oauth::api::routes::ROUTES
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    let mut listed: Vec<(String, String)> = documented
        .iter()
        .map(|(p, m, _)| (p.clone(), m.clone()))
        .collect();
    served.sort();
    listed.sort();
    assert_eq!(listed, served, "every route is documented, and only those");
    // Every documented operation answers, with a status it documents. POSTs name an unknown
    // server (no flow runs), path parameters an unknown one.
    for (path, method, responses) in documented {
        let concrete = path
            .replace(
                "{name}",
                if method == "POST" {
                    "no-such-server"
                } else {
                    "zeta"
                },
            )
            .replace("{correlation_id}", "no-such-flow");
        let (status, body) = if concrete == "/api/v1/events" {
            // An endless stream: its status and type are the answer.
            let response = d
                .with_key(reqwest::Method::GET, &concrete)
                .send()
                .await
                .unwrap();
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            (response.status().as_u16(), Value::Null)
        } else {
            d.call(&method, &concrete).await
        };
        assert!(
            responses.get(status.to_string()).is_some(),
            "{method} {concrete} answered {status}, not documented: {body}"
        );
        if status >= 400 {
            assert!(
                body["error"]["code"].is_string(),
                "{method} {concrete}: {body}"
            );
        }
    }
    d.stop(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_walks_the_steps_and_names_the_first_failure() {
    let (srv, mut d) = default_server_daemon(&["eta"], following_browser().0).await;
    // The daemon helper does not pass the configs on; a second API with them does.
    d.api.stop().await;
    let servers = vec![UpstreamConfig::new(
        "eta",
        Url::parse(&srv.mcp_url()).unwrap(),
    )];
    let mut config = ApiConfig::new("127.0.0.1:0".parse().unwrap());
    config.servers = servers.clone();
    config.api_key = Some(ApiKey::new(API_KEY).unwrap());
    d.api = ApiServer::start(d.handle.clone(), AuthLinks::new(&servers), config)
        .await
        .unwrap();
    d.base = format!("http://{}", d.api.addr());

    let report = d.get("/api/v1/servers/eta/diagnose").await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        field_of_each(&report["steps"], "step"),
        [
            "mcp endpoint",
            "discovery",
            "client identity",
            "token endpoint"
        ]
    );
    // A made-up client and token: the server answers with an OAuth error, as it should.
    let detail = string(&report["steps"][3]["detail"], "the token step's detail");
    assert!(detail.starts_with("answers OAuth: invalid_"), "{report}");
    let stats = srv.stats();
    assert_eq!(stats.registrations, 0, "diagnose registers no client");
    assert_eq!(stats.authorize_requests, 0, "and opens no authorization");

    // The token endpoint failing: named, with its status and what to do.
    srv.inject(Fault::new(
        FaultTarget::Refresh,
        FaultKind::TemporarilyUnavailable,
    ))
    .unwrap();
    let report = d.get("/api/v1/servers/eta/diagnose").await;
    assert_eq!(report["ok"], false);
    assert_eq!(report["failed_step"], "token endpoint", "{report}");
    assert_eq!(report["steps"][3]["status"], 503, "{report}");
    let action = string(&report["steps"][3]["action"], "the token step's action");
    assert!(action.contains("retry later"), "{report}");
    srv.clear_faults();

    // Metadata failing: discovery is the first failing step, and nothing after it runs.
    srv.inject(Fault::new(FaultTarget::Metadata, FaultKind::ServerError))
        .unwrap();
    let report = d.get("/api/v1/servers/eta/diagnose").await;
    assert_eq!(report["failed_step"], "discovery", "{report}");
    assert_eq!(report["steps"].as_array().unwrap().len(), 2, "{report}");
    srv.clear_faults();

    let (status, body) = d.call("GET", "/api/v1/servers/nope/diagnose").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_server"))
    );
    d.stop_without_secrets(srv).await;
}
