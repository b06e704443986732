//! Helpers for the engine's end-to-end tests: a "browser" that follows redirects in-process
//! (the OAuth test server approves at once) and a login straight through the engine.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use mcpproxy_oauth::oauth::OAuthError;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::oauth::client_identity::ClientConfig;
use mcpproxy_oauth::oauth::discovery::{Discovery, discover};
use mcpproxy_oauth::oauth::http::OAuthHttp;
use mcpproxy_oauth::oauth::login::{LoginSettings, browser_login};
use mcpproxy_oauth::oauth::scope::select_scope;
use mcpproxy_oauth::oauth::token::{TokenEndpoint, TokenSet};
use oauth_test_server::{Config, OAuthTestServer};
use url::Url;

pub async fn start(config: Config) -> OAuthTestServer {
    OAuthTestServer::start(config)
        .await
        .expect("the OAuth test server starts on loopback")
}

/// A browser that follows the authorization redirect to the loopback listener, counting launches.
pub fn following_browser() -> (BrowserLauncher, Arc<AtomicU32>) {
    let launches = Arc::new(AtomicU32::new(0));
    let counter = launches.clone();
    let browser = BrowserLauncher::handler(move |url: Url| {
        counter.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(5))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let _ = client.get(url).send().await;
        });
    });
    (browser, launches)
}

pub struct LoggedIn {
    pub http: OAuthHttp,
    pub discovery: Discovery,
    pub endpoint: TokenEndpoint,
    pub token: TokenSet,
}

impl LoggedIn {
    /// Refreshes with the refresh token the login produced.
    pub async fn refresh_with_login_token(&self) -> Result<TokenSet, OAuthError> {
        let refresh_token = self
            .token
            .refresh_token
            .as_ref()
            .expect("the login produced a refresh token");
        self.endpoint
            .refresh(&self.http, refresh_token, None, SystemTime::now(), None)
            .await
    }
}

/// Discovery, dynamic registration and a browser login through the engine's own functions.
pub async fn login(srv: &OAuthTestServer, http: OAuthHttp) -> LoggedIn {
    let server_url = Url::parse(&srv.mcp_url()).unwrap();
    let discovery = discover(&http, &server_url, None).await.expect("discovery");
    let (browser, _) = following_browser();
    let settings = LoginSettings {
        client: ClientConfig::default(),
        browser,
        redirect_port: 0,
        extra_params: Vec::new(),
    };
    let scope = select_scope(None, discovery.resource_scopes());
    let (endpoint, token) = tokio::time::timeout(
        Duration::from_secs(10),
        browser_login(&http, &discovery, &settings, None, scope.as_deref(), None),
    )
    .await
    .expect("the login finishes within 10 s")
    .expect("login");
    LoggedIn {
        http,
        discovery,
        endpoint,
        token,
    }
}

/// Fails if any secret the server issued appears in `text`.
pub fn assert_no_secret(srv: &OAuthTestServer, text: &str) {
    for secret in srv.secrets().all() {
        assert!(!text.contains(secret), "a secret leaked into: {text}");
    }
}

/// `assert_no_secret` for text that may carry an authorization link a person must open: a
/// `state` may appear there (as `state=...` in the URL), and nowhere else.
pub fn assert_no_secret_but_auth_links(srv: &OAuthTestServer, text: &str) {
    let secrets = srv.secrets();
    for secret in secrets
        .all()
        .filter(|s| !secrets.states.iter().any(|st| st == s))
    {
        assert!(!text.contains(secret), "a secret leaked into: {text}");
    }
    for state in &secrets.states {
        for (at, _) in text.match_indices(state.as_str()) {
            assert!(
                text[..at].ends_with("state="),
                "a state appears outside an authorization link: {text}"
            );
        }
    }
}

/// A fresh, empty folder under the system temp dir, unique to this call.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mcpproxy-oauth-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// Every log line this test binary writes from now on, at trace level as JSON (one global
/// subscriber per binary; later calls share it). For tests that scan logs for secrets.
pub fn captured_logs() -> String {
    use std::sync::{Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .json()
            .with_writer(move || Sink(writer.clone()))
            .init();
        buffer
    });
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}
