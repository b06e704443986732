//! Secrets stay secret: `Debug` of every public config and credential type, and the redaction
//! net of the log formats, checked against every secret a run holds.

mod common;

use std::process::Output;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::{
    CURL_BROWSER, bin, folder_with_config, output_within, preregistered_only, start, text,
};
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget};

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
use mcpproxy_oauth::store::{StoredClient, StoredDpopKey, StoredToken};
use mcpproxy_oauth::supervisor::SupervisorConfig;

const CLIENT_SECRET: &str = "configured-client-secret-0451";
const ACCESS: &str = "eyJ-access-token-debug-check";
const REFRESH: &str = "rt-refresh-token-debug-check";
const DPOP_KEY: &str = "dpop-private-key-debug-check";

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "the Debug output of {what} shows a secret: {text}"
        );
    }
}

/// A value's type, as the compiler names it, and its Debug output.
fn debug_of<T: std::fmt::Debug>(value: &T) -> (&'static str, String) {
    (std::any::type_name::<T>(), format!("{value:?}"))
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
        dpop: Some(StoredDpopKey {
            private_key: DPOP_KEY.into(),
            jkt: "jkt-shown".into(),
        }),
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
        device_code: false,
        grant: None,
        timeout: Duration::from_secs(1),
        dpop: false,
    };
    let supervisor = SupervisorConfig::new(servers.clone(), dir.clone());
    let secrets = [CLIENT_SECRET, ACCESS, REFRESH, DPOP_KEY, state.as_str()];
    let shown: Vec<(&str, String)> = vec![
        debug_of(&servers[0]),
        debug_of(&client),
        debug_of(&credentials),
        debug_of(&endpoint),
        debug_of(&pending),
        debug_of(&expected),
        debug_of(&set),
        debug_of(&reply),
        debug_of(&stored_token),
        debug_of(&stored_client),
        debug_of(&login),
        debug_of(&connect),
        debug_of(&supervisor),
    ];
    for (what, text) in &shown {
        assert_clean(what, text, &secrets);
    }
    // The redacted forms still say something was there.
    assert!(shown[1].1.contains("ClientSecret"), "{}", shown[1].1);
    assert!(shown[7].1.contains("body_bytes"), "{}", shown[7].1);
    assert!(shown[8].1.contains("jkt-shown"), "{}", shown[8].1);
    let _ = std::fs::remove_dir_all(&dir);
}

const HOSTILE_CLIENT: &str = "cid-hostile";
const HOSTILE_SECRET: &str = "configured-secret-of-the-hostile-run";

fn as_refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn run(args: &[&str]) -> Output {
    run_env(args, &[]).await
}

/// The binary without a key or client secret from the environment, within 60 s.
async fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = bin(args);
    command
        .env_remove("MCPPROXY_OAUTH_KEY")
        .env_remove("MCPPROXY_OAUTH_CLIENT_SECRET")
        .envs(env.iter().copied());
    output_within(command, Duration::from_secs(60)).await
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A login, two refreshes against a server that echoes every secret it receives (pretty and
/// JSON logs at trace level), a good refresh, and a `connect` whose code exchange is echoed;
/// then every log, every CLI output, `logs flows`, `logs trace` and the database file with
/// its WAL are scanned for every secret of the run.
#[tokio::test]
async fn a_hostile_server_echoing_secrets_leaks_them_nowhere_and_the_store_holds_none_in_clear() {
    let srv = start(preregistered_only(HOSTILE_CLIENT, HOSTILE_SECRET)).await;
    let (dir, config) = folder_with_config(
        "hostile-secrets",
        &format!(
            r#"{{"mcpServers": [{{"name": "srv", "url": "{}", "oauth": {{"client_id": "{HOSTILE_CLIENT}", "client_secret": "{HOSTILE_SECRET}"}}}}]}}"#,
            srv.mcp_url()
        ),
    );
    let data = dir.join("data");
    let (config_arg, data_arg) = (config.display().to_string(), data.display().to_string());
    let log = |name: &str| dir.join(name).display().to_string();
    let common = |command: &[&'static str], format: &'static str, log_file: String| {
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "--config",
                &config_arg,
                "--data-dir",
                &data_arg,
                "--browser-command",
                CURL_BROWSER,
                "--log-level",
                "trace",
                "--log-format",
                format,
                "--log-file",
                &log_file,
            ]
            .map(String::from),
        );
        args
    };
    let mut outputs = Vec::new();

    let args = common(&["auth", "login", "srv"], "json", log("login.log"));
    let login = run(&as_refs(&args)).await;
    assert!(login.status.success(), "the login works: {}", text(&login));
    outputs.push(text(&login));

    for (format, file) in [("pretty", "pretty.log"), ("json", "json.log")] {
        srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::EchoSecrets).times(1))
            .unwrap();
        let args = common(&["auth", "refresh", "srv"], format, log(file));
        let out = run(&as_refs(&args)).await;
        outputs.push(text(&out));
    }
    let args = common(&["auth", "refresh", "srv"], "json", log("good.log"));
    let good = run(&as_refs(&args)).await;
    assert!(
        good.status.success() && text(&good).contains("refreshed"),
        "after the hostile answers the stored token still refreshes: {}",
        text(&good)
    );
    outputs.push(text(&good));

    srv.inject(Fault::new(FaultTarget::Token, FaultKind::EchoSecrets).times(1))
        .unwrap();
    let connect_log = log("connect.log");
    let connect = run(&[
        "connect",
        "--client-id",
        HOSTILE_CLIENT,
        "--browser-command",
        CURL_BROWSER,
        "--timeout",
        "20s",
        "--log-level",
        "trace",
        "--log-format",
        "pretty",
        "--log-file",
        &connect_log,
        &srv.mcp_url(),
    ])
    .await;
    outputs.push(text(&connect));

    let flows = run(&["logs", "flows", "--data-dir", &data_arg]).await;
    let flows_json = run(&["logs", "flows", "--json", "--data-dir", &data_arg]).await;
    assert!(flows.status.success() && flows_json.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&flows_json.stdout).unwrap();
    let failed: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "failed")
        .filter_map(|r| r["flow_id"].as_str().map(String::from))
        .collect();
    assert!(!failed.is_empty(), "the hostile refreshes failed: {rows}");
    let failed_error = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["state"] == "failed")
        .map(|r| r["error"].to_string())
        .unwrap_or_default();
    outputs.push(text(&flows));
    outputs.push(text(&flows_json));
    for id in &failed {
        let trace = run(&["logs", "trace", id, "--file", &log("json.log")]).await;
        outputs.push(text(&trace));
    }

    // Every secret of the run.
    let issued = srv.secrets();
    assert!(
        !issued.refresh_tokens.is_empty()
            && !issued.code_verifiers.is_empty()
            && !issued.states.is_empty()
            && !issued.authorization_codes.is_empty(),
        "the run issued and received secrets"
    );
    let key = std::fs::read_to_string(data.join("key")).expect("the default key file exists");
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{HOSTILE_CLIENT}:{HOSTILE_SECRET}"));
    let mut secrets: Vec<String> = issued.all().map(String::from).collect();
    secrets.extend([HOSTILE_SECRET.to_string(), basic, key.trim().to_string()]);

    let mut texts: Vec<(String, Vec<u8>)> = outputs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("CLI output {i}"), t.clone().into_bytes()))
        .collect();
    for file in [
        "login.log",
        "pretty.log",
        "json.log",
        "good.log",
        "connect.log",
    ] {
        texts.push((
            file.into(),
            std::fs::read(dir.join(file)).unwrap_or_default(),
        ));
    }
    let db = data.join("tokens.db");
    for file in [db.clone(), data.join("tokens.db-wal")] {
        texts.push((
            file.display().to_string(),
            std::fs::read(&file).unwrap_or_default(),
        ));
    }
    for (what, bytes) in &texts {
        for secret in &secrets {
            assert!(
                !contains(bytes, secret),
                "{what} holds a secret of the run ({} bytes)",
                secret.len()
            );
        }
    }
    // The echo arrived, and was scrubbed rather than dropped.
    let json_log = String::from_utf8_lossy(&texts.iter().find(|(w, _)| w == "json.log").unwrap().1)
        .into_owned();
    assert!(
        json_log.contains("could not refresh [redacted:"),
        "the echoed description is logged, scrubbed"
    );
    assert!(
        failed_error.contains("[redacted:") || !failed_error.contains("could not refresh"),
        "{failed_error}"
    );
    // ESC and newlines from the server are inert wherever a person reads them.
    let pretty_log =
        String::from_utf8_lossy(&std::fs::read(dir.join("pretty.log")).unwrap()).into_owned();
    for (what, t) in [
        ("pretty.log", pretty_log.as_str()),
        ("logs flows", &text(&flows)),
    ] {
        assert!(!t.contains('\u{1b}'), "{what} holds a raw ESC");
        assert!(
            !t.lines().any(|l| l.starts_with("INFO forged")),
            "{what} has a forged line"
        );
    }
    assert!(
        pretty_log.contains("\\u{1b}[2J"),
        "the pretty log shows the escape escaped"
    );
    // The store: no token in clear, the status view works for an outside reader, and the
    // daemon's store opens again with its key (each command above was a restart).
    let outside = rusqlite::Connection::open(&db).unwrap();
    let status: String = outside
        .query_row("SELECT status FROM oauth_token_status", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "valid");
    let sealed: String = outside
        .query_row("SELECT access_token FROM oauth_tokens", [], |r| r.get(0))
        .unwrap();
    assert!(sealed.starts_with("enc1:"));
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("KEPT {}", dir.display());
    }
}

/// `tokens rekey` replaces the key file and the daemon's commands go on with the new key; the
/// environment variable is a key source; a wrong key and `--insecure-plaintext` on an
/// encrypted database stop with the fix and a failure exit.
#[tokio::test]
async fn rekey_the_environment_key_and_refusals_from_the_command_line() {
    let srv = start(Config::default()).await;
    let (dir, config) = folder_with_config(
        "rekey-cli",
        &format!(
            r#"{{"mcpServers": [{{"name": "srv", "url": "{}", "oauth": {{}}}}]}}"#,
            srv.mcp_url()
        ),
    );
    let data = dir.join("data");
    let (c, d) = (config.display().to_string(), data.display().to_string());
    let refresh = |extra: &'static [&'static str]| {
        let mut args = vec![
            "auth".to_string(),
            "refresh".into(),
            "srv".into(),
            "--config".into(),
            c.clone(),
            "--data-dir".into(),
            d.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let login = run(&[
        "auth",
        "login",
        "srv",
        "--config",
        &c,
        "--data-dir",
        &d,
        "--browser-command",
        CURL_BROWSER,
    ])
    .await;
    assert!(login.status.success(), "{}", text(&login));
    let key_file = data.join("key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();

    let rekey = run(&["tokens", "rekey", "--data-dir", &d]).await;
    assert!(rekey.status.success(), "{}", text(&rekey));
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(old_key, new_key, "the key file holds a new key");
    assert!(
        !text(&rekey).contains(new_key.trim()),
        "the key is never printed"
    );
    assert!(!data.join("key.new").exists());
    let after = run(&as_refs(&refresh(&[]))).await;
    assert!(
        after.status.success(),
        "the new key opens the store: {}",
        text(&after)
    );

    // The environment variable is a source; a wrong one is refused with the fix.
    let with_env = run_env(
        &as_refs(&refresh(&[])),
        &[("MCPPROXY_OAUTH_KEY", new_key.trim())],
    )
    .await;
    assert!(with_env.status.success(), "{}", text(&with_env));
    let wrong = run_env(
        &as_refs(&refresh(&[])),
        &[("MCPPROXY_OAUTH_KEY", old_key.trim())],
    )
    .await;
    assert!(!wrong.status.success());
    let message = text(&wrong);
    assert!(
        message.contains("another key") && message.contains("MCPPROXY_OAUTH_KEY"),
        "{message}"
    );
    assert!(!message.contains(old_key.trim()) && !message.contains(new_key.trim()));
    let plain = run(&as_refs(&refresh(&["--insecure-plaintext"]))).await;
    assert!(!plain.status.success());
    assert!(
        text(&plain).contains("drop --insecure-plaintext"),
        "{}",
        text(&plain)
    );
    // A key file elsewhere that does not exist is not invented for an encrypted store.
    let missing = dir.join("nowhere.key").display().to_string();
    let mut args = refresh(&[]);
    args.extend(["--key-file".to_string(), missing.clone()]);
    let gone = run(&as_refs(&args)).await;
    assert!(!gone.status.success());
    assert!(text(&gone).contains("nowhere.key"), "{}", text(&gone));
    assert!(!std::path::Path::new(&missing).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config name holding ESC and a newline reaches the terminal escaped (`auth status` lists
/// configured servers without a token by name).
#[tokio::test]
async fn control_characters_in_config_names_are_escaped_in_cli_tables() {
    let (dir, config) = folder_with_config(
        "inert-names",
        r#"{"mcpServers": [{"name": "evil\u001b[2J\nINFO forged", "url": "http://127.0.0.1:9/mcp", "oauth": {}}]}"#,
    );
    let out = run(&[
        "auth",
        "status",
        "--config",
        &config.display().to_string(),
        "--data-dir",
        &dir.join("data").display().to_string(),
    ])
    .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        !shown.contains('\u{1b}'),
        "a raw ESC reached the terminal: {shown:?}"
    );
    assert!(
        shown.contains("evil\\u{1b}[2J\\nINFO forged"),
        "the name is shown, escaped: {shown}"
    );
    assert!(!shown.lines().any(|l| l.starts_with("INFO forged")));
    let _ = std::fs::remove_dir_all(&dir);
}
