//! The grants without a user (oauth/grants) against the OAuth test server over loopback:
//! client credentials with a secret or a private key read from a PEM file, the enterprise
//! IdP's token exchange for an ID-JAG and its redemption with the jwt-bearer grant, workload
//! identity with a platform JWT; faults injected on each endpoint and classified; every log
//! line and error message scanned for secrets.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::{captured_logs, enterprise_servers, mcp_status, start, temp_dir};
use mcpproxy_oauth::oauth::dpop::{Dpop, DpopKey};
use mcpproxy_oauth::oauth::error::{ErrorClass, OAuthError};
use mcpproxy_oauth::oauth::grants::client_key::{ClientKey, ClientKeyError, SigningAlg};
use mcpproxy_oauth::oauth::grants::jwt_bearer::{self, Assertion};
use mcpproxy_oauth::oauth::grants::token_exchange::{self, IdJag, IdJagTarget, SubjectToken};
use mcpproxy_oauth::oauth::grants::{
    ClientAuth, GrantClient, GrantError, TokenServer, client_credentials,
};
use mcpproxy_oauth::oauth::http::OAuthHttp;
use mcpproxy_oauth::oauth::token::TokenSet;
use oauth_test_server::grants::{CLIENT_CREDENTIALS as CC, JWT_BEARER, TOKEN_EXCHANGE};
use oauth_test_server::test_keys::{
    CLIENT_ES256_PEM, CLIENT_ES256_SEC1_PEM, CLIENT_RS256_PEM, CLIENT_RS256_PKCS1_PEM,
};
use oauth_test_server::{
    Config, Fault, FaultKind, FaultTarget, IdpPolicy, JwtClient, NonceRotation, OAuthTestServer,
    Platform,
};
use oauth2::ClientSecret;

const CC_SECRET: &str = "cc-client-secret-7d1e";
const XAA_SECRET: &str = "xaa-client-secret-42b9";

/// An authorization server taking `platform`'s workload JWTs in the jwt-bearer grant.
fn trusting_workloads_of(platform: &Platform) -> Config {
    Config {
        jwt_bearer: true,
        trusted_workload_issuers: vec![platform.trusted()],
        ..Config::default()
    }
}

fn token_server(srv: &OAuthTestServer) -> TokenServer {
    TokenServer {
        issuer: srv.issuer(),
        token_endpoint: format!("{}/token", srv.issuer()),
    }
}

fn basic(id: &str, secret: &str) -> GrantClient {
    GrantClient::new(
        id,
        ClientAuth::SecretBasic(ClientSecret::new(secret.into())),
    )
}

/// A PEM key written to a file of its own, as a user holds it.
fn key_file(name: &str, pem: &str) -> PathBuf {
    let path = temp_dir("grants-keys").join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn jwt_key(pem: &str, alg: Option<SigningAlg>) -> ClientKey {
    ClientKey::read_pem_file(&key_file("client.pem", pem), alg).expect("the client key loads")
}

fn cc_server_config() -> Config {
    Config {
        client_credentials: true,
        private_key_jwt: true,
        preregistered_client: Some(("cc-client".into(), Some(CC_SECRET.into()))),
        jwt_clients: vec![JwtClient::es256("es-client"), JwtClient::rs256("rs-client")],
        ..Config::default()
    }
}

#[tokio::test]
async fn client_credentials_with_a_secret_gets_a_token_without_refresh_token() {
    let srv = start(cc_server_config()).await;
    let http = OAuthHttp::default();
    let server = token_server(&srv);
    let resource = srv.mcp_url();
    for client in [
        basic("cc-client", CC_SECRET),
        GrantClient::new(
            "cc-client",
            ClientAuth::SecretPost(ClientSecret::new(CC_SECRET.into())),
        ),
    ] {
        let set = client_credentials::obtain(
            &http,
            &server,
            &client,
            Some("mcp:read"),
            Some(&resource),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", client.method()));
        assert!(set.refresh_token.is_none(), "no refresh token");
        assert_eq!(set.scope.as_deref(), Some("mcp:read"));
        assert_eq!(set.token_type, "Bearer");
        assert!(set.is_valid_for(Duration::from_secs(3000), SystemTime::now()));
        assert_eq!(mcp_status(&srv, set.access_token.secret()).await, 200);
    }
    let stats = srv.stats();
    assert_eq!(stats.token_requests_for(CC), 2);
    assert_eq!(stats.client_credentials_grants, 2);
    assert_eq!(stats.resources_received, vec![resource.clone(), resource]);
}

#[tokio::test]
async fn private_key_jwt_signs_with_es256_and_rs256_keys_read_from_pem_files() {
    let srv = start(cc_server_config()).await;
    let http = OAuthHttp::default();
    for (client_id, pem, alg) in [
        ("es-client", CLIENT_ES256_PEM, None),
        ("es-client", CLIENT_ES256_PEM, Some(SigningAlg::Es256)),
        ("rs-client", CLIENT_RS256_PEM, None),
        ("rs-client", CLIENT_RS256_PKCS1_PEM, Some(SigningAlg::Rs256)),
    ] {
        let client = GrantClient::new(client_id, ClientAuth::PrivateKeyJwt(jwt_key(pem, alg)));
        let set = client_credentials::obtain(&http, &token_server(&srv), &client, None, None, None)
            .await
            .unwrap_or_else(|e| panic!("{client_id} {alg:?}: {e}"));
        assert!(set.refresh_token.is_none());
        assert_eq!(mcp_status(&srv, set.access_token.secret()).await, 200);
    }
    let stats = srv.stats();
    assert_eq!(stats.client_assertions, 4, "{stats:?}");
    assert_eq!(stats.token_requests_for(CC), 4);
    assert!(stats.client_assertion_refusals.is_empty(), "{stats:?}");

    // A key the server does not know for this client is refused, permanently.
    let wrong = GrantClient::new(
        "es-client",
        ClientAuth::PrivateKeyJwt(jwt_key(CLIENT_RS256_PEM, None)),
    );
    let e = client_credentials::obtain(&http, &token_server(&srv), &wrong, None, None, None)
        .await
        .unwrap_err();
    assert_eq!(e.oauth_code(), Some("invalid_client"), "{e}");
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert_eq!(srv.stats().client_assertion_refusals_for("signature"), 1);
}

#[test]
fn key_files_that_cannot_sign_are_refused_with_the_file_and_the_fix() {
    let sec1 = key_file("sec1.pem", CLIENT_ES256_SEC1_PEM);
    let e = ClientKey::read_pem_file(&sec1, None).unwrap_err();
    assert!(matches!(e, ClientKeyError::Sec1 { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains(&sec1.display().to_string()) && message.contains("openssl pkcs8 -topk8"),
        "{message}"
    );
    let missing = sec1.with_file_name("absent.pem");
    let e = ClientKey::read_pem_file(&missing, None).unwrap_err();
    assert!(matches!(e, ClientKeyError::Read { .. }));
    assert!(e.to_string().contains("absent.pem"), "{e}");
    let e = ClientKey::read_pem_file(
        &key_file("es.pem", CLIENT_ES256_PEM),
        Some(SigningAlg::Rs256),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot sign RS256"), "{e}");
    for error in [
        ClientKey::read_pem_file(&sec1, None)
            .unwrap_err()
            .to_string(),
        e.to_string(),
    ] {
        for line in CLIENT_ES256_PEM
            .lines()
            .chain(CLIENT_ES256_SEC1_PEM.lines())
        {
            assert!(
                line.starts_with("-----") || !error.contains(line),
                "{error}"
            );
        }
    }
}

/// `e` is the grant refused as `invalid_grant`, permanently: asking again will not help.
fn assert_refused_for_good(e: &GrantError, what: &str) {
    assert_eq!(
        (e.oauth_code(), e.class()),
        (Some("invalid_grant"), ErrorClass::Permanent),
        "{what}: {e}"
    );
}

/// Arms `fault`, runs `attempt`, clears the fault and returns the attempt's error.
async fn faulted<F, Fut, T>(srv: &OAuthTestServer, fault: Fault, attempt: F) -> GrantError
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, GrantError>>,
    T: std::fmt::Debug,
{
    srv.inject(fault).unwrap();
    let e = attempt().await.expect_err("the fault makes the grant fail");
    srv.clear_faults();
    e
}

#[tokio::test]
async fn client_credentials_faults_are_classified_and_each_is_one_request() {
    let srv = start(cc_server_config()).await;
    let http = OAuthHttp::new(Duration::from_millis(800));
    let server = token_server(&srv);
    let client = GrantClient::new(
        "es-client",
        ClientAuth::PrivateKeyJwt(jwt_key(CLIENT_ES256_PEM, None)),
    );
    let attempt = || client_credentials::obtain(&http, &server, &client, None, None, None);
    let transient = |retry_after| ErrorClass::Transient { retry_after };
    let cases = [
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::ServerError),
            transient(None),
        ),
        (
            Fault::new(
                FaultTarget::ClientCredentials,
                FaultKind::TemporarilyUnavailable,
            ),
            transient(None),
        ),
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::RateLimited).delay_ms(3_000),
            transient(Some(Duration::from_secs(3))),
        ),
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::MalformedJson),
            transient(None),
        ),
        (
            Fault::new(
                FaultTarget::ClientCredentials,
                FaultKind::MissingAccessToken,
            ),
            transient(None),
        ),
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::ExpiresInZero),
            transient(None),
        ),
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::DropConnection),
            transient(None),
        ),
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::Hang),
            transient(None),
        ),
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::InvalidClient),
            ErrorClass::Permanent,
        ),
        (
            Fault::new(FaultTarget::ClientCredentials, FaultKind::HtmlForbidden),
            ErrorClass::Permanent,
        ),
    ];
    let attempts = cases.len() as u64;
    for (fault, class) in cases {
        let kind = fault.kind;
        let e = faulted(&srv, fault, attempt).await;
        assert_eq!(e.class(), class, "{kind}: {e}");
        match kind {
            FaultKind::Hang => assert!(
                matches!(e, GrantError::OAuth(OAuthError::Timeout { .. })),
                "{e:?}"
            ),
            FaultKind::ExpiresInZero => assert!(
                matches!(e, GrantError::OAuth(OAuthError::TokenAlreadyExpired { .. })),
                "{e:?}"
            ),
            FaultKind::MissingAccessToken | FaultKind::MalformedJson => assert!(
                matches!(e, GrantError::OAuth(OAuthError::Malformed { .. })),
                "{e:?}"
            ),
            _ => {}
        }
    }
    let stats = srv.stats();
    assert_eq!(
        stats.token_requests_for(CC),
        attempts,
        "one request per attempt, no retry"
    );
    assert_eq!(
        stats.faults_fired.get("client_credentials"),
        Some(&attempts)
    );
    let set = attempt().await.expect("the server recovered");
    assert!(set.refresh_token.is_none());
}

#[tokio::test]
async fn a_dpop_nonce_retry_signs_a_fresh_client_assertion() {
    let srv = start(Config {
        dpop_nonce: Some(NonceRotation::EveryRequest),
        ..cc_server_config()
    })
    .await;
    let client = GrantClient::new(
        "es-client",
        ClientAuth::PrivateKeyJwt(jwt_key(CLIENT_ES256_PEM, None)),
    );
    let dpop = Dpop::new(DpopKey::generate());
    let set = client_credentials::obtain(
        &OAuthHttp::default(),
        &token_server(&srv),
        &client,
        None,
        None,
        Some(&dpop),
    )
    .await
    .expect("one use_dpop_nonce, then the token");
    assert_eq!(set.token_type, "DPoP");
    let stats = srv.stats();
    assert_eq!(stats.token_requests_for(CC), 2);
    assert_eq!(stats.dpop_bound_tokens, 1);
    assert_eq!(
        stats.client_assertions, 1,
        "the nonce refusal came before authentication"
    );
    assert_eq!(stats.client_assertion_refusals_for("replay"), 0);
}

/// An IdP whose client `idp-client` authenticates with private_key_jwt (ES256), mapping it to
/// `xaa-client` at the authorization server, which trusts the IdP and knows `xaa-client` by
/// its secret (the conformance suite's shape).
async fn enterprise() -> (OAuthTestServer, OAuthTestServer) {
    enterprise_servers(XAA_SECRET, Config::default()).await
}

fn idp_client() -> GrantClient {
    GrantClient::new(
        "idp-client",
        ClientAuth::PrivateKeyJwt(jwt_key(CLIENT_ES256_PEM, Some(SigningAlg::Es256))),
    )
}

fn target(auth: &OAuthTestServer) -> IdJagTarget {
    IdJagTarget {
        audience: auth.issuer(),
        resource: Some(auth.mcp_url()),
        scope: Some("mcp:read".into()),
    }
}

async fn id_jag(
    http: &OAuthHttp,
    idp: &OAuthTestServer,
    auth: &OAuthTestServer,
) -> Result<IdJag, GrantError> {
    let subject = SubjectToken::IdToken(idp.issue_id_token("idp-client", "alice"));
    token_exchange::exchange(
        http,
        &token_server(idp),
        &idp_client(),
        &subject,
        &target(auth),
    )
    .await
}

/// Redeems `id_jag` at `auth` as `xaa-client` (client_secret_basic).
async fn redeem(
    http: &OAuthHttp,
    auth: &OAuthTestServer,
    id_jag: &IdJag,
    resource: Option<&str>,
) -> Result<TokenSet, GrantError> {
    let xaa = basic("xaa-client", XAA_SECRET);
    let assertion = Assertion::from(id_jag);
    jwt_bearer::obtain(
        http,
        &token_server(auth),
        Some(&xaa),
        &assertion,
        None,
        resource,
        None,
    )
    .await
}

#[tokio::test]
async fn enterprise_managed_authorization_from_id_token_to_mcp_call() {
    let (idp, auth) = enterprise().await;
    let http = OAuthHttp::default();
    let before = SystemTime::now();
    let first = id_jag(&http, &idp, &auth)
        .await
        .expect("the IdP issues an ID-JAG");
    let lifetime = first.expires_at.unwrap().duration_since(before).unwrap();
    assert!(
        lifetime <= Duration::from_secs(301) && lifetime >= Duration::from_secs(299),
        "{lifetime:?}"
    );
    assert_eq!(first.scope.as_deref(), Some("mcp:read"));

    let resource = auth.mcp_url();
    let set = redeem(&http, &auth, &first, Some(&resource))
        .await
        .expect("the authorization server redeems the ID-JAG");
    assert!(set.refresh_token.is_none(), "renewal is a new exchange");
    assert_eq!(set.scope.as_deref(), Some("mcp:read"), "the ID-JAG's scope");
    assert_eq!(mcp_status(&auth, set.access_token.secret()).await, 200);

    // Renewal: a new exchange and a new grant (an ID-JAG is used once).
    let again = redeem(&http, &auth, &first, None).await.unwrap_err();
    assert_eq!(
        (again.oauth_code(), again.class()),
        (Some("invalid_grant"), ErrorClass::Permanent)
    );
    let fresh = id_jag(&http, &idp, &auth).await.unwrap();
    redeem(&http, &auth, &fresh, None)
        .await
        .expect("a fresh ID-JAG is redeemed");

    let (idp_stats, as_stats) = (idp.stats(), auth.stats());
    assert_eq!(idp_stats.token_requests_for(TOKEN_EXCHANGE), 2);
    assert_eq!(idp_stats.id_jags_issued, 2);
    assert_eq!(idp_stats.client_assertions, 2, "private_key_jwt at the IdP");
    assert_eq!(as_stats.token_requests_for(JWT_BEARER), 3);
    assert_eq!(as_stats.jwt_bearer_grants_for("id_jag"), 2);
    assert_eq!(as_stats.jwt_bearer_refusals_for("replay"), 1);
}

#[tokio::test]
async fn a_policy_denial_is_permanent_and_says_so_while_idp_outages_are_transient() {
    let (idp, auth) = enterprise().await;
    let http = OAuthHttp::default();
    idp.set_idp_policy(IdpPolicy::DenyAll);
    let e = id_jag(&http, &idp, &auth).await.unwrap_err();
    assert!(matches!(e, GrantError::PolicyDenied { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(
        e.to_string().contains(&idp.issuer()) && e.to_string().contains("policy"),
        "{e}"
    );
    idp.set_idp_policy(IdpPolicy::AllowAll);
    assert_eq!(idp.stats().token_exchange_denials, 1);

    let e = faulted(
        &idp,
        Fault::new(FaultTarget::TokenExchange, FaultKind::AccessDenied),
        || id_jag(&http, &idp, &auth),
    )
    .await;
    assert!(matches!(e, GrantError::PolicyDenied { .. }), "{e:?}");
    for (kind, class) in [
        (
            FaultKind::ServerError,
            ErrorClass::Transient { retry_after: None },
        ),
        (
            FaultKind::DropConnection,
            ErrorClass::Transient { retry_after: None },
        ),
        (
            FaultKind::MissingAccessToken,
            ErrorClass::Transient { retry_after: None },
        ),
        (FaultKind::InvalidClient, ErrorClass::Permanent),
    ] {
        let e = faulted(&idp, Fault::new(FaultTarget::TokenExchange, kind), || {
            id_jag(&http, &idp, &auth)
        })
        .await;
        assert!(matches!(e, GrantError::Idp { .. }), "{kind}: {e:?}");
        assert_eq!(e.class(), class, "{kind}: {e}");
    }
    // An ID token that expired wants a new SSO login: permanent at the IdP.
    let subject = SubjectToken::IdToken(idp.issue_id_token("idp-client", "alice"));
    idp.advance_clock(Duration::from_secs(301));
    let e = token_exchange::exchange(
        &http,
        &token_server(&idp),
        &idp_client(),
        &subject,
        &target(&auth),
    )
    .await
    .unwrap_err();
    assert_refused_for_good(&e, "an expired ID token");
    assert_eq!(idp.stats().token_requests_for(TOKEN_EXCHANGE), 7);
    assert_eq!(
        idp.stats().id_jags_issued,
        1,
        "only the missing_access_token answer issued one"
    );
}

#[tokio::test]
async fn workload_identity_redeems_a_platform_jwt_read_from_a_file() {
    let platform = Platform::kubernetes("https://kubernetes.default.svc");
    let auth = start(trusting_workloads_of(&platform)).await;
    let http = OAuthHttp::default();
    let server = token_server(&auth);
    let file = key_file(
        "token",
        &format!(
            "{}\n",
            platform.token(&auth.issuer(), Duration::from_secs(3600))
        ),
    );
    let assertion = Assertion::workload(&std::fs::read_to_string(&file).unwrap());
    for _ in 0..2 {
        let set = jwt_bearer::obtain(&http, &server, None, &assertion, None, None, None)
            .await
            .expect("the platform JWT is redeemed, again and again");
        assert!(set.refresh_token.is_none());
        assert_eq!(mcp_status(&auth, set.access_token.secret()).await, 200);
    }
    let expired = Assertion::workload(&platform.expired_token(&auth.issuer()));
    let wrong_audience =
        Assertion::workload(&platform.token("https://other.example", Duration::from_secs(60)));
    for (assertion, reason) in [(&expired, "expired"), (&wrong_audience, "audience")] {
        let e = jwt_bearer::obtain(&http, &server, None, assertion, None, None, None)
            .await
            .unwrap_err();
        assert_refused_for_good(&e, reason);
    }
    let e = faulted(
        &auth,
        Fault::new(FaultTarget::JwtBearer, FaultKind::TemporarilyUnavailable),
        || jwt_bearer::obtain(&http, &server, None, &assertion, None, None, None),
    )
    .await;
    assert!(e.is_transient(), "{e}");
    let stats = auth.stats();
    assert_eq!(stats.token_requests_for(JWT_BEARER), 5);
    assert_eq!(stats.jwt_bearer_grants_for("workload"), 2);
    assert_eq!(stats.jwt_bearer_refusals_for("expired"), 1);
    assert_eq!(stats.jwt_bearer_refusals_for("audience"), 1);
}

#[tokio::test]
async fn no_assertion_id_token_client_key_or_secret_reaches_a_log_line_or_an_error() {
    let _ = captured_logs();
    let cc = start(cc_server_config()).await;
    let (idp, auth) = enterprise().await;
    let platform = Platform::spiffe("https://spire.example.org", "spiffe://example.org/mcp");
    auth.trust_workload_issuer(platform.trusted());
    let http = OAuthHttp::default();
    let (cc_server, as_server) = (token_server(&cc), token_server(&auth));
    let mut errors = Vec::new();

    let clients = [
        basic("cc-client", CC_SECRET),
        GrantClient::new(
            "es-client",
            ClientAuth::PrivateKeyJwt(jwt_key(CLIENT_ES256_PEM, None)),
        ),
        GrantClient::new(
            "rs-client",
            ClientAuth::PrivateKeyJwt(jwt_key(CLIENT_RS256_PKCS1_PEM, None)),
        ),
    ];
    for client in &clients {
        client_credentials::obtain(&http, &cc_server, client, None, None, None)
            .await
            .unwrap();
        let e = faulted(
            &cc,
            Fault::new(FaultTarget::ClientCredentials, FaultKind::EchoSecrets),
            || client_credentials::obtain(&http, &cc_server, client, None, None, None),
        )
        .await;
        errors.push(format!("{e} {e:?}"));
    }
    let jag = id_jag(&http, &idp, &auth).await.unwrap();
    let e = faulted(
        &idp,
        Fault::new(FaultTarget::TokenExchange, FaultKind::EchoSecrets),
        || id_jag(&http, &idp, &auth),
    )
    .await;
    errors.push(format!("{e} {e:?}"));
    let e = faulted(
        &auth,
        Fault::new(FaultTarget::JwtBearer, FaultKind::EchoSecrets),
        || redeem(&http, &auth, &jag, None),
    )
    .await;
    errors.push(format!("{e} {e:?}"));
    let set = redeem(&http, &auth, &jag, None).await.unwrap();
    errors.push(format!("{set:?} {jag:?} {clients:?}"));
    let workload = Assertion::workload(&platform.token(&auth.issuer(), Duration::from_secs(600)));
    let e = faulted(
        &auth,
        Fault::new(FaultTarget::JwtBearer, FaultKind::EchoSecrets),
        || jwt_bearer::obtain(&http, &as_server, None, &workload, None, None, None),
    )
    .await;
    errors.push(format!("{e} {e:?} {workload:?}"));

    let logs = captured_logs();
    assert!(
        logs.contains("oauth request")
            && logs.contains("client_assertion")
            && logs.contains("ID-JAG obtained"),
        "the debug HTTP log ran, so its silence on secrets means something"
    );
    let mut secrets: Vec<String> = [&cc, &idp, &auth]
        .iter()
        .flat_map(|srv| srv.secrets().all().map(String::from).collect::<Vec<_>>())
        .collect();
    secrets.extend([
        CC_SECRET.to_string(),
        XAA_SECRET.to_string(),
        jag.secret().to_string(),
        workload.secret().to_string(),
    ]);
    // The Authorization header's credentials, as the echoing server sends them back.
    for (id, secret) in [("cc-client", CC_SECRET), ("xaa-client", XAA_SECRET)] {
        use base64::Engine as _;
        secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
    }
    for pem in [CLIENT_ES256_PEM, CLIENT_RS256_PEM, CLIENT_RS256_PKCS1_PEM] {
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(String::from),
        );
    }
    assert!(
        secrets.len() > 40,
        "assertions, tokens and key lines are all checked"
    );
    for text in errors.iter().chain([&logs]) {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret ({} chars) leaked into: {text}",
                secret.len()
            );
        }
    }
}

/// `connect` with `grant` against `srv`: the run's result and the browser launches.
async fn connect_with(
    srv: &OAuthTestServer,
    grant: mcpproxy_oauth::oauth::grants::credentials::GrantConfig,
) -> (
    Result<mcpproxy_oauth::connect::ConnectReport, mcpproxy_oauth::connect::ConnectError>,
    u32,
) {
    let (browser, launches) = common::following_browser();
    let options = mcpproxy_oauth::connect::ConnectOptions {
        call_tool: Some(("echo".into(), serde_json::json!({"message": "granted"}))),
        grant: Some(grant),
        ..common::connect_options(srv, browser)
    };
    let result = mcpproxy_oauth::connect::connect(options).await;
    (result, launches.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test]
async fn connect_with_a_grant_calls_a_tool_and_a_refused_credential_ends_the_run_at_once() {
    use mcpproxy_oauth::connect::ConnectError;
    use mcpproxy_oauth::oauth::grants::credentials::{
        ClientAuthConfig, ClientConfigured, GrantConfig, SecretSource,
    };
    let _ = captured_logs();
    let srv = start(cc_server_config()).await;
    let secret = key_file("cc-secret", CC_SECRET);
    let grant = |secret: SecretSource| GrantConfig::ClientCredentials {
        client: ClientConfigured {
            client_id: "cc-client".into(),
            auth: ClientAuthConfig::SecretBasic(secret),
        },
    };
    let (report, launches) = connect_with(&srv, grant(SecretSource::File(secret))).await;
    let report = report.expect("the grant's token calls the tool");
    assert_eq!(report.tool_result.unwrap()["content"][0]["text"], "granted");
    assert_eq!(
        (report.authorizations, report.refreshes, launches),
        (1, 0, 0)
    );

    let (failed, launches) = connect_with(
        &srv,
        grant(SecretSource::Inline("a-wrong-secret-1234".into())),
    )
    .await;
    let e = failed.expect_err("a refused secret ends the run");
    assert!(
        matches!(&e, ConnectError::Grant(g) if g.oauth_code() == Some("invalid_client")),
        "{e:?}"
    );
    assert_eq!(launches, 0, "never a browser");
    let stats = srv.stats();
    assert_eq!(stats.token_requests_for(CC), 2, "one grant a run, no retry");
    assert_eq!(stats.authorize_requests + stats.registrations, 0);

    let platform = Platform::kubernetes("https://kubernetes.default.svc");
    let wif = start(trusting_workloads_of(&platform)).await;
    let jwt = platform.token(&wif.issuer(), Duration::from_secs(600));
    let file = key_file("workload-token", &jwt);
    let (report, _) = connect_with(
        &wif,
        GrantConfig::Workload {
            token: SecretSource::File(file),
        },
    )
    .await;
    report.expect("the workload JWT's token calls the tool");
    assert_eq!(wif.stats().jwt_bearer_grants_for("workload"), 1);

    let logs = captured_logs();
    let text = format!("{logs} {e} {e:?}");
    for secret in srv.secrets().all().chain(wif.secrets().all()).chain([
        CC_SECRET,
        "a-wrong-secret-1234",
        jwt.as_str(),
    ]) {
        assert!(
            !text.contains(secret),
            "a secret ({} chars) leaked",
            secret.len()
        );
    }
}
