//! Logins that need no local browser (issue #22), against a real `serve` process and the OAuth
//! test server over loopback: the URL a browser on another machine ended on, pasted back
//! through the API and through `auth login --paste`, and a public callback URL (a reverse
//! proxy's) whose path the daemon's listener serves. A wrong `state`, a mismatched `iss` and a
//! replayed code are each refused with a clear error, leave the stored token as it was, and
//! leave the login waiting: the right URL still completes it. No authorization code (nor any
//! other issued secret) appears in any answer, page or log line of the run.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use oauth_test_server::{Config, OAuthTestServer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use url::Url;

/// A `serve --listen 127.0.0.1:0` process whose browser is elsewhere (`true` opens nothing).
struct Daemon {
    serve: Serve,
    dir: PathBuf,
    /// Every answer's body, for the secret scan.
    seen: Vec<String>,
}

impl std::ops::Deref for Daemon {
    type Target = Serve;
    fn deref(&self) -> &Serve {
        &self.serve
    }
}

impl Daemon {
    async fn start(srv: &OAuthTestServer, name: &str, extra: &[&str]) -> Daemon {
        let dir = temp_dir(name);
        let config = write_config(&dir, srv, &["srv"]);
        let log = dir.join("serve.log");
        let mut command = serve_command(&config, &dir.join("data"), "true");
        command
            .args(["--non-interactive", "--login-timeout", "60s"])
            .args(extra)
            .env("MCPPROXY_OAUTH_LOG", "debug")
            .stderr(log_to(&log));
        Daemon {
            serve: Serve::start(command, &log, Duration::from_secs(30)).await,
            dir,
            seen: Vec::new(),
        }
    }

    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.api(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.seen.push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Pastes `url` back through the API.
    async fn paste(&mut self, url: &str) -> (u16, Value) {
        let body = serde_json::json!({ "url": url });
        self.call(
            reqwest::Method::POST,
            "/api/v1/servers/srv/login/complete",
            Some(body),
        )
        .await
    }

    async fn server(&mut self) -> Value {
        self.call(reqwest::Method::GET, "/api/v1/servers/srv", None)
            .await
            .1
    }

    /// Starts a login and returns its authorization link once the daemon shows it.
    async fn login_link(&mut self) -> String {
        let (status, answer) = self
            .call(reqwest::Method::POST, "/api/v1/servers/srv/login", None)
            .await;
        assert!(status == 202 || status == 200, "login: {status} {answer}");
        let deadline = Deadline::after("a login link", Duration::from_secs(10));
        loop {
            let view = self.server().await;
            if view["phase"] == "authorizing"
                && let Some(url) = view["login_link"]["url"].as_str()
            {
                return url.to_string();
            }
            deadline.again(view, Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until the server is connected.
    async fn until_connected(&mut self) {
        let deadline = Deadline::after("connected", Duration::from_secs(15));
        loop {
            let view = self.server().await;
            if view["phase"] == "connected" {
                return;
            }
            deadline.again(view, Duration::from_millis(50)).await;
        }
    }

    /// The stored access token's sealed column: unchanged means the token was not touched.
    fn stored_token(&self) -> String {
        stored(
            &self.dir.join("data"),
            "SELECT access_token FROM oauth_tokens",
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// Stops the daemon and scans everything it said and answered.
    async fn stop_and_scan(mut self, srv: &OAuthTestServer) {
        stop(&mut self.serve.child, "-TERM").await;
        let everything = format!("{}\n{}", self.seen.join("\n"), self.log());
        assert_scanned(srv, &everything);
    }
}

/// Asserts an API error answer's status and code; returns its message.
fn refused(answer: &(u16, Value), status: u16, code: &str) -> String {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Not one authorization code, token or verifier in `text`; a `state` only inside a link.
fn assert_scanned(srv: &OAuthTestServer, text: &str) {
    let codes = srv.secrets().authorization_codes;
    assert!(codes.len() >= 2, "the run obtained codes: {codes:?}");
    for code in &codes {
        assert!(
            !text.contains(code.as_str()),
            "an authorization code leaked: {text}"
        );
    }
    assert_no_secret_but_auth_links(srv, text);
}

/// The person's browser on another machine: it approves at the test server and ends on the
/// redirect URI (which this "browser" does not open); that address is returned.
async fn approve(link: &str) -> String {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer = browser.get(link).send().await.unwrap();
    assert_eq!(answer.status(), 302, "the test server approves at once");
    answer.headers()["location"].to_str().unwrap().to_string()
}

/// `url` with its parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .filter(|(k, _)| k != name)
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    url.to_string()
}

fn param(url: &str, name: &str) -> String {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{url} has no {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pasted_back_through_the_api_wrong_state_iss_and_replayed_code_are_refused_and_the_right_url_completes()
 {
    let srv = start(Config::default()).await;
    let mut d = Daemon::start(&srv, "paste-api", &[]).await;

    // Nothing waits yet: a well-formed response is refused as such; a body that is not one too.
    let stray = "http://127.0.0.1:9/callback?code=stray-code-123456&state=stray-state-123456";
    refused(&d.paste(stray).await, 409, "no_login_waiting");
    let answer = d.paste("https://example.com/nothing").await;
    refused(&answer, 400, "not_an_authorization_response");
    let path = "/api/v1/servers/srv/login/complete";
    let answer = d.call(reqwest::Method::POST, path, None).await;
    refused(&answer, 400, "bad_request");

    // The first login, finished by pasting after a wrong state and a wrong issuer.
    let link = d.login_link().await;
    let ended_on = approve(&link).await;
    assert!(
        ended_on.starts_with("http://127.0.0.1:"),
        "the loopback redirect URI: {ended_on}"
    );
    let forged = with_param(&ended_on, "state", "forged-state-0123456789");
    let message = refused(&d.paste(&forged).await, 400, "response_refused");
    assert!(
        message.contains("state mismatch") && message.contains("keeps waiting"),
        "{message}"
    );
    let issuer = param(&ended_on, "iss");
    let foreign = with_param(&ended_on, "iss", &format!("{issuer}/"));
    let message = refused(&d.paste(&foreign).await, 400, "response_refused");
    assert!(
        message.contains("unexpected authorization server"),
        "{message}"
    );
    let phase = d.server().await["phase"].clone();
    assert_eq!(phase, "authorizing", "the login still waits");
    let (status, answer) = d.paste(&format!("  {ended_on}\n")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["completed"], true);
    d.until_connected().await;
    let first_token = d.stored_token();

    // The same URL again: no login waits for it any more.
    refused(&d.paste(&ended_on).await, 409, "no_login_waiting");

    // A second login: the first login's code replayed under the new state is refused by the
    // authorization server; the stored token stays; the right URL still completes the login.
    let link = d.login_link().await;
    let second = approve(&link).await;
    let replayed = with_param(&second, "code", &param(&ended_on, "code"));
    let message = refused(&d.paste(&replayed).await, 400, "response_refused");
    assert!(message.contains("invalid_grant"), "{message}");
    assert_eq!(srv.stats().token_errors.get("invalid_grant"), Some(&1));
    let stored = d.stored_token();
    assert_eq!(
        stored, first_token,
        "a refused paste leaves the stored token"
    );
    let phase = d.server().await["phase"].clone();
    assert_eq!(phase, "authorizing", "the login still waits");
    let (status, answer) = d.paste(&second).await;
    assert_eq!(status, 200, "{answer}");
    d.until_connected().await;
    let second_token = d.stored_token();
    assert_ne!(
        second_token, first_token,
        "the second login stored its token"
    );

    // The authorization server's own error ends the login, and nothing stored changes.
    let link = d.login_link().await;
    let third = approve(&link).await;
    let mut denied = Url::parse(&third).unwrap();
    let pairs = [
        ("state", param(&third, "state")),
        ("iss", issuer.clone()),
        ("error", "access_denied".to_string()),
        ("error_description", "the user said no".to_string()),
    ];
    denied.query_pairs_mut().clear().extend_pairs(pairs);
    let message = refused(&d.paste(denied.as_str()).await, 502, "login_failed");
    assert!(message.contains("access_denied"), "{message}");
    assert_eq!(
        d.stored_token(),
        second_token,
        "a failed login leaves the stored token"
    );
    let (status, _) = d.paste(&third).await;
    assert_eq!(status, 409, "the login ended with the server's error");

    d.stop_and_scan(&srv).await;
    srv.shutdown().await;
}

/// `auth login srv --paste` on `config`: the printed link approved by a "browser" elsewhere, a
/// wrong-state address pasted (refused, the login waits on), then the right one. Checks the
/// login completed with one code, and that no code is in the output; returns the link.
async fn login_by_pasting(srv: &OAuthTestServer, config: &Path, data: &Path) -> String {
    let mut child = bin(&[
        "auth",
        "login",
        "srv",
        "--paste",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .env("MCPPROXY_OAUTH_LOG", "debug")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("the binary starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = stderr_lines(&mut child);
    let mut said = String::new();
    // Reads standard error until a line holds `needle`; returns that line.
    async fn until_line(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
        said: &mut String,
        needle: &str,
    ) -> String {
        let what = format!("a line with {needle:?}");
        let within = Duration::from_secs(20);
        read_until(lines, said, within, &what, |line| {
            line.contains(needle).then(|| line.to_string())
        })
        .await
    }
    // The launcher prints the link on a line of its own, indented.
    let printed = format!("  {}/authorize?", srv.url());
    let link = until_line(&mut stderr, &mut said, &printed)
        .await
        .trim()
        .to_string();
    let ended_on = approve(&link).await;
    let forged = with_param(&ended_on, "state", "forged-state-0123456789");
    stdin
        .write_all(format!("{forged}\n").as_bytes())
        .await
        .unwrap();
    let refused = until_line(&mut stderr, &mut said, "keeps waiting").await;
    assert!(refused.contains("state mismatch"), "{refused}");
    stdin
        .write_all(format!("{ended_on}\n").as_bytes())
        .await
        .unwrap();
    until_line(&mut stderr, &mut said, "accepted").await;
    drop(stdin);
    let out = ends_within(
        "auth login --paste",
        Duration::from_secs(20),
        child.wait_with_output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{said}");
    assert!(stdout.contains("srv: logged in"), "{stdout}");
    assert_eq!(valid_tokens(&data.join("tokens.db")), 1);
    assert_eq!(
        srv.stats().token_requests.get("authorization_code"),
        Some(&1)
    );
    let codes = srv.secrets().authorization_codes;
    assert_eq!(codes.len(), 1, "one login, one code");
    let everything = format!("{stdout}{said}");
    assert!(
        !everything.contains(codes[0].as_str()),
        "the code leaked: {everything}"
    );
    assert_no_secret_but_auth_links(srv, &everything);
    link
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_paste_prints_the_link_refuses_a_wrong_state_and_completes_with_the_right_url() {
    let srv = start(Config::default()).await;
    let (config, data) = daemon_files(&srv, "paste-cli");
    let link = login_by_pasting(&srv, &config, &data).await;
    assert!(
        param(&link, "redirect_uri").starts_with("http://127.0.0.1:"),
        "the loopback redirect URI: {link}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_own_callback_url_is_used_by_auth_login_paste_and_refused_without_it() {
    let srv = start(Config::default()).await;
    let dir = temp_dir("paste-cli-public");
    let public = "https://proxy.example/srv/callback";
    let config = dir.join("mcp_config.json");
    let servers = serde_json::json!({"mcpServers": [
        {"name": "srv", "url": srv.mcp_url(), "oauth": {"callback_url": public}}
    ]});
    std::fs::write(&config, servers.to_string()).unwrap();
    let data = dir.join("data");
    let (config_text, data_text) = (config.to_str().unwrap(), data.to_str().unwrap());
    let out = run(
        &[
            "auth",
            "login",
            "srv",
            "--config",
            config_text,
            "--data-dir",
            data_text,
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("--paste"), "{}", text(&out));
    let link = login_by_pasting(&srv, &config, &data).await;
    assert_eq!(param(&link, "redirect_uri"), public);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_callback_url_is_the_redirect_uri_and_the_daemons_listener_finishes_the_login() {
    let srv = start(Config::default()).await;
    let public = "https://proxy.example/oauth/callback";
    let mut d = Daemon::start(&srv, "public-callback", &["--callback-url", public]).await;
    let link = d.login_link().await;
    assert_eq!(
        param(&link, "redirect_uri"),
        public,
        "the authorization request's redirect_uri"
    );
    let ended_on = approve(&link).await;
    assert!(
        ended_on.starts_with(&format!("{public}?")),
        "the test server redirects there: {ended_on}"
    );
    // The reverse proxy forwards the path unchanged, with its own Host and no API key.
    let base = d.base.clone();
    let forward = |url: &str| {
        let url = Url::parse(url).unwrap();
        format!("{base}{}?{}", url.path(), url.query().unwrap())
    };
    let proxy = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let through_proxy = |url: String| {
        let proxy = proxy.clone();
        async move {
            let answer = proxy
                .get(url)
                .header("Host", "proxy.example")
                .header("X-Forwarded-Proto", "https")
                .send()
                .await
                .unwrap();
            (answer.status().as_u16(), answer.text().await.unwrap())
        }
    };
    let (status, page) = through_proxy(forward(&with_param(
        &ended_on,
        "state",
        "forged-state-0123456789",
    )))
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("no sign-in in progress here matches"),
        "{page}"
    );
    let issuer = param(&ended_on, "iss");
    let (status, page) = through_proxy(forward(&with_param(
        &ended_on,
        "iss",
        &format!("{issuer}/"),
    )))
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unexpected authorization server"), "{page}");
    assert_eq!(
        d.server().await["phase"],
        "authorizing",
        "the login still waits"
    );
    let (status, page) = through_proxy(forward(&ended_on)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Authorization complete"), "{page}");
    d.seen.push(page);
    d.until_connected().await;
    // Other paths still need the key, whatever the Host.
    let (status, _) = through_proxy(format!("{base}/api/v1/servers")).await;
    assert_eq!(status, 403, "the API behind the proxy's Host is refused");
    // The pasted way works with the public URL too: the second login's response pasted back.
    let link = d.login_link().await;
    let second = approve(&link).await;
    assert!(second.starts_with(public), "{second}");
    let (status, answer) = d.paste(&second).await;
    assert_eq!(status, 200, "{answer}");
    d.until_connected().await;
    assert_eq!(
        srv.stats().registrations,
        1,
        "one client, registered for the public URL"
    );
    d.stop_and_scan(&srv).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_callback_url_that_is_not_https_or_has_no_listener_is_refused_clearly() {
    let srv = start(Config::default()).await;
    let (config, data) = daemon_files(&srv, "callback-bad");
    let (config, data): (&Path, &Path) = (&config, &data);
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = serve(&["--callback-url", "http://proxy.example/oauth/callback"]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("use https"), "{}", text(&out));
    let args = serve(&["--callback-url", "https://proxy.example/oauth/callback"]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("add --listen"), "{}", text(&out));
    srv.shutdown().await;
}
