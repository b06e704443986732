//! The OAuth test server and the engine: the server started on loopback, a "browser" that
//! follows redirects in-process (the test server approves at once), a login straight through
//! the engine's own functions, and `connect`'s options.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use mcpproxy_oauth::connect::ConnectOptions;
use mcpproxy_oauth::mcp::McpClient;
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

/// The OAuth test server with `config`, on an ephemeral loopback port.
pub async fn start(config: Config) -> OAuthTestServer {
    OAuthTestServer::start(config)
        .await
        .expect("the OAuth test server starts on loopback")
}

/// A server with the device authorization grant, announcing a 1 s polling interval so polls
/// come quickly.
pub fn device_grant_server() -> Config {
    Config {
        device_grant: true,
        device_interval_secs: 1,
        ..Config::default()
    }
}

/// A launcher that only reports the URLs it is given (the test decides what the person does).
pub fn reporting_browser() -> (BrowserLauncher, tokio::sync::mpsc::UnboundedReceiver<Url>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let browser = BrowserLauncher::handler(move |url: Url| {
        let _ = tx.send(url);
    });
    (browser, rx)
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

/// Discovery of the test server through the engine.
pub async fn discovered(srv: &OAuthTestServer, http: &OAuthHttp) -> Discovery {
    let url = Url::parse(&srv.mcp_url()).unwrap();
    discover(http, &url, None).await.expect("discovery")
}

/// Dynamic registration, a browser that follows redirects, no extras.
pub fn login_settings() -> LoginSettings {
    let (browser, _) = following_browser();
    LoginSettings {
        client: ClientConfig::default(),
        browser,
        redirect_port: 0,
        extra_params: Vec::new(),
    }
}

/// Discovery, dynamic registration and a browser login through the engine's own functions.
pub async fn login(srv: &OAuthTestServer, http: OAuthHttp) -> LoggedIn {
    let discovery = discovered(srv, &http).await;
    let settings = login_settings();
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

/// A server whose `get_time` tool needs the scope `mcp:admin`: a call of it with a token
/// without that scope is refused with 403 `insufficient_scope`.
pub fn admin_tool() -> Config {
    Config {
        tool_scopes: vec![("get_time".into(), "mcp:admin".into())],
        ..Config::default()
    }
}

/// A server without dynamic registration that knows one confidential client, `id` with
/// `secret`.
pub fn preregistered_only(id: &str, secret: &str) -> Config {
    Config {
        dynamic_registration: false,
        preregistered_client: Some((id.into(), Some(secret.into()))),
        ..Config::default()
    }
}

/// An authorization server, and a test server whose resource moves to it after `after` MCP
/// requests with a valid token: (new authorization server, resource's server).
pub async fn moving_authorization_server(after: u64) -> (OAuthTestServer, OAuthTestServer) {
    let new_as = start(Config::default()).await;
    let moves = Some((new_as.issuer(), after));
    let srv = start(Config::with(|c| c.authorization_server_moves = moves)).await;
    (new_as, srv)
}

/// The test server answers the next refresh only after `delay_ms` (then as usual).
pub fn slow_next_refresh(srv: &OAuthTestServer, delay_ms: u64) {
    let slow = oauth_test_server::Fault::new(
        oauth_test_server::FaultTarget::Refresh,
        oauth_test_server::FaultKind::Slow,
    );
    srv.inject(slow.times(1).delay_ms(delay_ms))
        .expect("a slow refresh is a valid fault");
}

/// A server whose access tokens live `seconds`.
pub fn token_ttl(seconds: u64) -> Config {
    Config {
        access_token_ttl: Duration::from_secs(seconds),
        ..Config::default()
    }
}

/// An MCP client of the test server's MCP endpoint, its requests bounded by `timeout`.
pub fn mcp_client(srv: &OAuthTestServer, timeout: Duration) -> McpClient {
    McpClient::new(Url::parse(&srv.mcp_url()).unwrap(), timeout)
}

/// `connect`'s options for the test server: a login through `browser`, dynamic registration,
/// no tool call, no device code, no DPoP, 20 s for the whole run.
pub fn connect_options(srv: &OAuthTestServer, browser: BrowserLauncher) -> ConnectOptions {
    ConnectOptions {
        server_url: Url::parse(&srv.mcp_url()).unwrap(),
        client: ClientConfig::default(),
        scope: None,
        browser,
        redirect_port: 0,
        call_tool: None,
        device_code: false,
        grant: None,
        timeout: Duration::from_secs(20),
        dpop: false,
    }
}
