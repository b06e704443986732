//! Secrets stay secret: `Debug` of every public config and credential type, and the redaction
//! net of the log formats, checked against every secret a run holds.

use std::time::{Duration, SystemTime};

use mcpproxy_oauth::config;
use mcpproxy_oauth::connect::ConnectOptions;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::oauth::callback::ExpectedCallback;
use mcpproxy_oauth::oauth::client_identity::{
    ClientConfig, ClientCredentials, ClientSource, TokenAuthMethod,
};
use mcpproxy_oauth::oauth::http::HttpReply;
use mcpproxy_oauth::oauth::login::LoginSettings;
use mcpproxy_oauth::oauth::token::{TokenEndpoint, TokenSet};
use mcpproxy_oauth::store::db::{StoredClient, StoredToken};
use mcpproxy_oauth::supervisor::SupervisorConfig;

const CLIENT_SECRET: &str = "configured-client-secret-0451";
const ACCESS: &str = "eyJ-access-token-debug-check";
const REFRESH: &str = "rt-refresh-token-debug-check";

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "the Debug output of {what} shows a secret: {text}"
        );
    }
}

#[test]
fn debug_of_every_public_config_and_credential_type_shows_no_secret() {
    let dir = std::env::temp_dir().join(format!("secrets-debug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mcp_config.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"mcpServers": [{{"name": "srv", "url": "http://127.0.0.1:9/mcp",
                "oauth": {{"client_id": "cid", "client_secret": "{CLIENT_SECRET}"}}}}]}}"#
        ),
    )
    .unwrap();
    let servers = config::load(&path).expect("the config loads");
    assert!(
        servers[0].client.client_secret.is_some(),
        "the secret was read, so its absence from Debug means something"
    );
    let client: ClientConfig = servers[0].client.clone();
    let credentials = ClientCredentials {
        client_id: "cid".into(),
        client_secret: client.client_secret.clone(),
        auth_method: TokenAuthMethod::ClientSecretPost,
        source: ClientSource::Configured,
        registration: None,
    };
    let endpoint = TokenEndpoint {
        authorization_endpoint: "http://127.0.0.1:9/authorize".into(),
        token_endpoint: "http://127.0.0.1:9/token".into(),
        client: credentials.clone(),
        redirect_uri: "http://127.0.0.1:9/callback".into(),
        resource: "http://127.0.0.1:9/mcp".into(),
    };
    let pending = endpoint
        .authorization_request(Some("read"), &[])
        .expect("an authorization request");
    let expected = ExpectedCallback {
        state: pending.state.clone(),
        issuer: "http://127.0.0.1:9".into(),
        iss_required: false,
    };
    let state = pending.state.clone();
    let set = TokenSet {
        access_token: oauth2::AccessToken::new(ACCESS.into()),
        refresh_token: Some(oauth2::RefreshToken::new(REFRESH.into())),
        token_type: "Bearer".into(),
        scope: None,
        expires_at: None,
        obtained_at: SystemTime::now(),
    };
    let reply = HttpReply {
        status: reqwest::StatusCode::OK,
        headers: {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("set-cookie", format!("sid={ACCESS}").parse().unwrap());
            h
        },
        body: format!(r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}"}}"#).into_bytes(),
    };
    let stored_token = StoredToken {
        server_key: "k".into(),
        server_name: "srv".into(),
        server_url: "u".into(),
        resource: None,
        issuer: None,
        access_token: ACCESS.into(),
        refresh_token: Some(REFRESH.into()),
        token_type: "Bearer".into(),
        scope: None,
        expires_at: None,
        obtained_at: 0,
        flow_id: None,
    };
    let stored_client = StoredClient {
        server_key: "k".into(),
        issuer: "i".into(),
        client_id: "cid".into(),
        client_secret: Some(CLIENT_SECRET.into()),
        token_endpoint_auth_method: "client_secret_post".into(),
        source: "configured".into(),
        redirect_uri: "r".into(),
        authorization_endpoint: "a".into(),
        token_endpoint: "t".into(),
        revocation_endpoint: None,
        resource: "res".into(),
        iss_parameter_supported: false,
        registration_json: None,
    };
    let login = LoginSettings {
        client: client.clone(),
        browser: BrowserLauncher::from_settings(None, true),
        redirect_port: 0,
        extra_params: Vec::new(),
    };
    let connect = ConnectOptions {
        server_url: url::Url::parse("http://127.0.0.1:9/mcp").unwrap(),
        client: client.clone(),
        scope: None,
        browser: BrowserLauncher::from_settings(None, true),
        redirect_port: 0,
        call_tool: None,
        timeout: Duration::from_secs(1),
    };
    let supervisor = SupervisorConfig::new(servers.clone(), dir.clone());
    let secrets = [CLIENT_SECRET, ACCESS, REFRESH, state.as_str()];
    let shown: Vec<(&str, String)> = vec![
        ("UpstreamConfig", format!("{:?}", servers[0])),
        ("ClientConfig", format!("{client:?}")),
        ("ClientCredentials", format!("{credentials:?}")),
        ("TokenEndpoint", format!("{endpoint:?}")),
        ("PendingAuthorization", format!("{pending:?}")),
        ("ExpectedCallback", format!("{expected:?}")),
        ("TokenSet", format!("{set:?}")),
        ("HttpReply", format!("{reply:?}")),
        ("StoredToken", format!("{stored_token:?}")),
        ("StoredClient", format!("{stored_client:?}")),
        ("LoginSettings", format!("{login:?}")),
        ("ConnectOptions", format!("{connect:?}")),
        ("SupervisorConfig", format!("{supervisor:?}")),
    ];
    for (what, text) in &shown {
        assert_clean(what, text, &secrets);
    }
    // The redacted forms still say something was there.
    assert!(shown[1].1.contains("ClientSecret"), "{}", shown[1].1);
    assert!(shown[7].1.contains("body_bytes"), "{}", shown[7].1);
    let _ = std::fs::remove_dir_all(&dir);
}
