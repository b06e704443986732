//! The credential kinds in `serve` (the supervisor and its per-server actors), end to end
//! against the OAuth test server over loopback with real SQLite files, for each kind: client
//! credentials with a secret file and with a private key file, enterprise-managed
//! authorization (ID token at the IdP, ID-JAG, jwt-bearer) and workload identity (a platform
//! JWT file). For each: several token lifetimes at a 4 s TTL with every token read answered,
//! a renewal under an injected fault with every read still answered, a restart that uses the
//! stored token and renews by the grant, a refused credential that waits in `client_rejected`
//! (never a browser) until it is repaired, and every log line and status scanned for the
//! secrets (client secret, key, ID token, workload JWT, assertions, ID-JAGs, tokens).
//! And the binary on a config file: `oauth.grant` read (its secret from the environment), the
//! grant run by `auth login`, a malformed grant named by its field.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::oauth::grants::credentials::{
    ClientAuthConfig, ClientConfigured, GrantConfig, IdpConfig, SecretSource,
};
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use oauth_test_server::test_keys::CLIENT_ES256_PEM;
use oauth_test_server::{
    Config, Fault, FaultKind, FaultTarget, IdpPolicy, JwtClient, OAuthTestServer, Platform,
};

const CC: &str = "client_credentials";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CC_SECRET: &str = "daemon-cc-secret-5b1f";
const XAA_SECRET: &str = "daemon-xaa-secret-9c2d";
const TTL: u64 = 4;

/// One credential kind under test: its servers (the MCP server's authorization server
/// first), its config, and how to break and repair its credential.
struct Kind {
    name: &'static str,
    /// The grant type the authorization server counts for each token.
    grant_type: &'static str,
    grant: GrantConfig,
    auth: OAuthTestServer,
    /// The server and target the renewal fault is injected at (the IdP for `enterprise`).
    fault_at: Option<OAuthTestServer>,
    fault: FaultTarget,
    /// Secrets the client holds (the servers record what they issued and received).
    held: Vec<String>,
    dir: PathBuf,
}

impl Kind {
    fn fault_server(&self) -> &OAuthTestServer {
        self.fault_at.as_ref().unwrap_or(&self.auth)
    }

    fn grants(&self) -> u64 {
        self.auth.stats().token_requests_for(self.grant_type)
    }
}

/// A file of the client's (a secret, a key, a token) in a folder of its own.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let files = dir.with_extension("files");
    std::fs::create_dir_all(&files).unwrap();
    let path = files.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn pem_lines() -> Vec<String> {
    CLIENT_ES256_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(String::from)
        .collect()
}

async fn client_credentials_basic() -> Kind {
    let dir = data_dir("grants-daemon-cc-basic");
    let auth = start(Config {
        client_credentials: true,
        preregistered_client: Some(("cc-client".into(), Some(CC_SECRET.into()))),
        ..token_ttl(TTL)
    })
    .await;
    let secret = write(&dir, "client-secret", &format!("{CC_SECRET}\n"));
    Kind {
        name: "client_credentials (client_secret_basic)",
        grant_type: CC,
        grant: GrantConfig::ClientCredentials {
            client: ClientConfigured {
                client_id: "cc-client".into(),
                auth: ClientAuthConfig::SecretBasic(SecretSource::File(secret)),
            },
        },
        auth,
        fault_at: None,
        fault: FaultTarget::ClientCredentials,
        held: vec![CC_SECRET.into()],
        dir,
    }
}

async fn client_credentials_jwt() -> Kind {
    let dir = data_dir("grants-daemon-cc-jwt");
    let auth = start(Config {
        client_credentials: true,
        private_key_jwt: true,
        jwt_clients: vec![JwtClient::es256("es-client")],
        ..token_ttl(TTL)
    })
    .await;
    let key = write(&dir, "client.pem", CLIENT_ES256_PEM);
    Kind {
        name: "client_credentials (private_key_jwt)",
        grant_type: CC,
        grant: GrantConfig::ClientCredentials {
            client: ClientConfigured {
                client_id: "es-client".into(),
                auth: ClientAuthConfig::PrivateKeyJwt {
                    key: SecretSource::File(key),
                    alg: None,
                    kid: None,
                },
            },
        },
        auth,
        fault_at: None,
        fault: FaultTarget::ClientCredentials,
        held: pem_lines(),
        dir,
    }
}

async fn enterprise() -> Kind {
    let dir = data_dir("grants-daemon-enterprise");
    let (idp, auth) = enterprise_servers(XAA_SECRET, token_ttl(TTL)).await;
    let id_token = idp.issue_id_token("idp-client", "alice");
    let id_token_file = write(&dir, "id-token", &id_token);
    let key = write(&dir, "idp-client.pem", CLIENT_ES256_PEM);
    let secret = write(&dir, "xaa-secret", XAA_SECRET);
    let mut held = pem_lines();
    held.extend([XAA_SECRET.to_string(), id_token]);
    Kind {
        name: "enterprise",
        grant_type: JWT_BEARER,
        grant: GrantConfig::Enterprise {
            idp: IdpConfig {
                issuer: idp.issuer(),
                token_endpoint: format!("{}/token", idp.issuer()),
                client: ClientConfigured {
                    client_id: "idp-client".into(),
                    auth: ClientAuthConfig::PrivateKeyJwt {
                        key: SecretSource::File(key),
                        alg: None,
                        kid: None,
                    },
                },
            },
            subject: SecretSource::File(id_token_file),
            subject_is_refresh_token: false,
            client: ClientConfigured {
                client_id: "xaa-client".into(),
                auth: ClientAuthConfig::SecretBasic(SecretSource::File(secret)),
            },
        },
        auth,
        fault_at: Some(idp),
        fault: FaultTarget::TokenExchange,
        held,
        dir,
    }
}

fn platform() -> Platform {
    Platform::kubernetes("https://kubernetes.default.svc")
}

async fn workload() -> Kind {
    let dir = data_dir("grants-daemon-workload");
    let auth = start(Config {
        jwt_bearer: true,
        trusted_workload_issuers: vec![platform().trusted()],
        ..token_ttl(TTL)
    })
    .await;
    let jwt = platform().token(&auth.issuer(), Duration::from_secs(3600));
    let file = write(&dir, "token", &format!("{jwt}\n"));
    Kind {
        name: "workload",
        grant_type: JWT_BEARER,
        grant: GrantConfig::Workload {
            token: SecretSource::File(file),
        },
        auth,
        fault_at: None,
        fault: FaultTarget::JwtBearer,
        held: vec![jwt],
        dir,
    }
}

async fn supervisor(
    kind: &Kind,
) -> (
    SupervisorHandle,
    std::sync::Arc<std::sync::atomic::AtomicU32>,
) {
    let (browser, launches) = following_browser();
    let mut server = upstream("srv", &kind.auth);
    server.grant = Some(kind.grant.clone());
    let config = SupervisorConfig {
        policy: fast_policy(),
        ..supervisor_config(vec![server], &kind.dir, browser)
    };
    (start_supervisor(config).await, launches)
}

/// Reads the token every 20 ms until `done` holds (bounded by `within`); every read must be
/// answered with a token the MCP endpoint accepts. Returns how many reads there were.
async fn read_until(
    handle: &SupervisorHandle,
    kind: &Kind,
    what: &str,
    within: Duration,
    done: impl Fn() -> bool,
) -> u32 {
    let deadline = Instant::now() + within;
    let (mut reads, mut last) = (0, String::new());
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{}: {what}: not within {within:?}",
            kind.name
        );
        let token = handle.access_token("srv").await.unwrap_or_else(|e| {
            panic!(
                "{}: {what}: a token read failed after {reads} reads: {e}",
                kind.name
            )
        });
        reads += 1;
        if *token.secret() != last {
            last = token.secret().clone();
            assert_eq!(
                mcp_status(&kind.auth, &last).await,
                200,
                "{}: a fresh token works",
                kind.name
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reads
}

/// Breaks the kind's credential so the servers refuse it for good, or repairs it.
fn set_credential(kind: &Kind, working: bool) {
    match &kind.grant {
        GrantConfig::ClientCredentials { client } => match &client.auth {
            ClientAuthConfig::SecretBasic(SecretSource::File(path)) => {
                let secret = if working { CC_SECRET } else { "a-wrong-secret" };
                std::fs::write(path, secret).unwrap();
            }
            ClientAuthConfig::PrivateKeyJwt {
                key: SecretSource::File(path),
                ..
            } => {
                let pem = if working {
                    CLIENT_ES256_PEM
                } else {
                    "not a key"
                };
                std::fs::write(path, pem).unwrap();
            }
            other => unreachable!("{other:?}"),
        },
        GrantConfig::Enterprise { .. } => kind.fault_server().set_idp_policy(if working {
            IdpPolicy::AllowAll
        } else {
            IdpPolicy::DenyAll
        }),
        GrantConfig::Workload {
            token: SecretSource::File(path),
        } => {
            // The platform rotated the file: an expired JWT, then a fresh one.
            let jwt = if working {
                platform().token(&kind.auth.issuer(), Duration::from_secs(3600))
            } else {
                platform().expired_token(&kind.auth.issuer())
            };
            std::fs::write(path, jwt).unwrap();
        }
        other => unreachable!("{other:?}"),
    }
}

async fn lifetimes_faults_restart_and_denial(kind: &Kind) {
    let _ = captured_logs();
    let (handle, launches) = supervisor(kind).await;

    // Several lifetimes: the first grant and three renewals, every read answered.
    let reads = read_until(
        &handle,
        kind,
        "four grants",
        Duration::from_secs(40),
        || kind.grants() >= 4,
    )
    .await;
    assert!(
        reads > 50,
        "{}: the reads ran throughout ({reads})",
        kind.name
    );
    let status = wait_for_status(&handle, "srv", "connected", Duration::from_secs(10), |s| {
        s.phase.name() == "connected"
    })
    .await;
    assert!(
        !status.has_refresh_token,
        "{}: a grant keeps no refresh token",
        kind.name
    );
    let (renews, expires) = (status.next_refresh_at.unwrap(), status.expires_at.unwrap());
    assert!(
        renews < expires,
        "{}: status shows the renewal before expiry",
        kind.name
    );

    // A renewal under a fault: two failures, then the grant again, before the token is due.
    let target = serde_json::to_value(kind.fault).unwrap();
    let target = target.as_str().unwrap().to_string();
    let fired = |kind: &Kind| {
        kind.fault_server()
            .stats()
            .faults_fired
            .get(&target)
            .copied()
            .unwrap_or(0)
    };
    kind.fault_server()
        .inject(Fault::new(kind.fault, FaultKind::TemporarilyUnavailable).times(2))
        .unwrap();
    let before = kind.grants();
    read_until(
        &handle,
        kind,
        "a renewal through the fault",
        Duration::from_secs(20),
        || fired(kind) == 2 && kind.grants() > before,
    )
    .await;

    // A restart: the stored token serves at once, and the next renewal is the grant.
    handle.shutdown().await;
    let (handle, relaunches) = supervisor(kind).await;
    let before = kind.grants();
    let first = ends_within(
        "the first read after the restart",
        Duration::from_secs(5),
        handle.access_token("srv"),
    )
    .await
    .expect("the stored token");
    assert_eq!(mcp_status(&kind.auth, first.secret()).await, 200);
    read_until(
        &handle,
        kind,
        "a renewal after the restart",
        Duration::from_secs(20),
        || kind.grants() > before,
    )
    .await;

    // A refused credential waits (never a browser) until it is repaired.
    set_credential(kind, false);
    let rejected = wait_for_status(
        &handle,
        "srv",
        "client_rejected",
        Duration::from_secs(15),
        |s| s.phase.name() == "client_rejected",
    )
    .await;
    let detail = serde_json::to_string(&rejected).unwrap();
    set_credential(kind, true);
    let before = kind.grants();
    wait_for_status(
        &handle,
        "srv",
        "connected again",
        Duration::from_secs(15),
        |s| s.phase.name() == "connected" && kind.grants() > before,
    )
    .await;
    handle.access_token("srv").await.expect("a token again");

    assert_eq!(
        launches.load(Ordering::SeqCst) + relaunches.load(Ordering::SeqCst),
        0,
        "{}: no browser",
        kind.name
    );
    assert_eq!(
        kind.auth.stats().authorize_requests,
        0,
        "{}: no login",
        kind.name
    );
    let status = serde_json::to_string(&handle.status().await.unwrap()).unwrap();
    handle.shutdown().await;

    // Every secret the client held or the servers issued and received, nowhere in the logs,
    // the status or the rejected phase's detail.
    let logs = captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("token granted") && l.contains("\"correlation_id\"")),
        "the grant flow's lines carry its correlation ID"
    );
    let mut secrets = kind.held.clone();
    for srv in [Some(&kind.auth), kind.fault_at.as_ref()]
        .into_iter()
        .flatten()
    {
        secrets.extend(srv.secrets().all().map(String::from));
    }
    assert!(
        secrets.len() >= 6,
        "{}: tokens and credentials are checked",
        kind.name
    );
    for text in [&logs, &status, &detail] {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{}: a secret ({} chars) leaked",
                kind.name,
                secret.len()
            );
        }
    }
}

#[tokio::test]
async fn client_credentials_with_a_secret_file_in_serve() {
    lifetimes_faults_restart_and_denial(&client_credentials_basic().await).await;
}

#[tokio::test]
async fn client_credentials_with_a_key_file_in_serve() {
    lifetimes_faults_restart_and_denial(&client_credentials_jwt().await).await;
}

#[tokio::test]
async fn enterprise_managed_authorization_in_serve() {
    let kind = enterprise().await;
    lifetimes_faults_restart_and_denial(&kind).await;
    let idp = kind.fault_server();
    assert!(
        idp.stats().token_requests_for(TOKEN_EXCHANGE) >= 6,
        "an exchange per grant"
    );
    assert_eq!(
        idp.stats().token_exchange_denials,
        1,
        "the policy denial was heard once, then waited on"
    );
}

#[tokio::test]
async fn workload_identity_in_serve_rereads_its_rotating_token_file() {
    let kind = workload().await;
    lifetimes_faults_restart_and_denial(&kind).await;
    assert_eq!(
        kind.auth.stats().jwt_bearer_refusals_for("expired"),
        1,
        "the expired file was read"
    );
}

/// The binary on a config file: `oauth.grant` with a secret in an environment variable, then
/// a config error for a malformed grant, naming the field; no secret in any output.
#[tokio::test]
async fn the_binary_reads_a_grant_from_the_config_and_names_a_malformed_one() {
    let srv = start(Config {
        client_credentials: true,
        preregistered_client: Some(("cc-client".into(), Some(CC_SECRET.into()))),
        ..Config::default()
    })
    .await;
    let dir = temp_dir("grants-daemon-cli");
    let config = dir.join("mcp_config.json");
    let write_config = |oauth: serde_json::Value| {
        let text = serde_json::json!({"mcpServers": [{"name": "srv", "url": srv.mcp_url(), "oauth": oauth}]});
        std::fs::write(&config, text.to_string()).unwrap();
    };
    write_config(serde_json::json!({
        "grant": "client_credentials", "client_id": "cc-client",
        "client_secret_env": "GRANTS_TEST_CC_SECRET"}));
    let data = dir.join("data");
    let (config_arg, data_arg) = (config.to_str().unwrap(), data.to_str().unwrap());
    let env = [("GRANTS_TEST_CC_SECRET", CC_SECRET)];
    let login = run(&auth_args("login", config_arg, data_arg), &env).await;
    assert!(login.status.success(), "{}", text(&login));
    assert!(text(&login).contains("srv: logged in"), "{}", text(&login));
    let status = run(
        &[
            "auth",
            "status",
            "--json",
            "--config",
            config_arg,
            "--data-dir",
            data_arg,
        ],
        &env,
    )
    .await;
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(
        valid_tokens(&mcpproxy_oauth::supervisor::database_path(&data)),
        1
    );
    let stats = srv.stats();
    assert_eq!(stats.token_requests_for(CC), 1);
    assert_eq!(stats.authorize_requests, 0, "no browser login");

    write_config(serde_json::json!({"grant": "client_credentials", "client_id": "cc-client"}));
    let refused = run(&auth_args("login", config_arg, data_arg), &env).await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("server srv: field oauth.client_secret: this client needs"),
        "{}",
        text(&refused)
    );
    for out in [&login, &status, &refused] {
        let out = text(out);
        assert!(!out.contains(CC_SECRET), "the client secret leaked: {out}");
        assert_no_secret(&srv, &out);
    }
}

/// Two daemons on one database (as two `serve` processes on one data directory): one grant
/// for a login both ask for at once, and about one grant per lifetime after that, not one per
/// daemon: the same lock and store re-read as a refresh.
#[tokio::test]
async fn two_daemons_on_one_database_share_each_grant() {
    let kind = client_credentials_basic().await;
    let (a, launches_a) = supervisor(&kind).await;
    let (b, launches_b) = supervisor(&kind).await;
    assert_both_log_in_to_one_token(&a, &b, "daemon").await;
    assert_eq!(kind.grants(), 1, "one grant for two daemons");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while kind.grants() < 4 {
        assert!(Instant::now() < deadline, "renewals went on");
        for handle in [&a, &b] {
            let token = handle
                .access_token("srv")
                .await
                .expect("every read answered");
            assert_eq!(mcp_status(&kind.auth, token.secret()).await, 200);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A token is renewed at 75% of its 4 s life at the earliest (less 5% jitter): one daemon
    // alone renews at most every 2.8 s. Two daemons each granting would be twice that.
    let lifetimes = started.elapsed().as_secs_f64() / 2.8;
    let grants = kind.grants() as f64;
    assert!(
        grants <= lifetimes + 2.0,
        "{grants} grants in {:?}: the daemons do not share them",
        started.elapsed()
    );
    assert_eq!(
        launches_a.load(Ordering::SeqCst) + launches_b.load(Ordering::SeqCst),
        0
    );
    a.shutdown().await;
    b.shutdown().await;
}
