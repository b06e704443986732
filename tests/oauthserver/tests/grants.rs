//! The grants without a user, over loopback: client credentials (client_secret_basic and
//! private_key_jwt with a `jwks` or a `jwks_uri`), the enterprise IdP's token exchange for an
//! ID-JAG under its policy, the jwt-bearer grant with an ID-JAG or a workload JWT, their
//! metadata, counters and faults.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth_test_server::grants::{
    CLIENT_ASSERTION_TYPE as ASSERTION_TYPE, CLIENT_CREDENTIALS, ID_JAG_TOKEN_TYPE as ID_JAG,
    ID_TOKEN_TYPE as ID_TOKEN, JWT_BEARER, TOKEN_EXCHANGE,
};
use oauth_test_server::test_keys::{CLIENT_ES256_PEM, CLIENT_RS256_PEM, client_rs256_jwks};
use oauth_test_server::{
    Config, Fault, FaultKind, FaultTarget, IdpPolicy, JwtClient, KeySource, OAuthTestServer,
    Platform, TrustedIssuer,
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "conformance-like-secret";

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A client assertion (RFC 7523 §2.2) as a client would sign it, with `claims` overriding.
fn assertion(pem: &str, alg: Algorithm, client_id: &str, aud: &str, overrides: Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    };
    let mut claims = json!({
        "iss": client_id, "sub": client_id, "aud": aud,
        "iat": now_s(), "exp": now_s() + 60,
        "jti": format!("jti-{}", rand::random::<u64>()),
    });
    for (k, v) in overrides.as_object().unwrap() {
        claims[k] = v.clone();
    }
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

async fn post_token(
    srv: &OAuthTestServer,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Response {
    let mut request = http().post(format!("{}/token", srv.issuer()));
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    request.form(form).send().await.unwrap()
}

/// The jwt-bearer grant with `assertion`, the client authenticated with `basic` if any.
async fn jwt_bearer(
    srv: &OAuthTestServer,
    basic: Option<(&str, &str)>,
    assertion: &str,
) -> Response {
    post_token(
        srv,
        basic,
        &[("grant_type", JWT_BEARER), ("assertion", assertion)],
    )
    .await
}

/// `client-a`'s credentials, for HTTP Basic.
const CLIENT_A: Option<(&str, &str)> = Some(("client-a", SECRET));

async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A server that knows the pre-registered confidential client `client-a` / SECRET, as
/// `configure` changes it further.
fn knowing_client_a(configure: impl FnOnce(&mut Config)) -> Config {
    Config::with(|c| {
        c.preregistered_client = Some(("client-a".into(), Some(SECRET.into())));
        configure(c);
    })
}

#[tokio::test]
async fn metadata_lists_each_grant_and_private_key_jwt_only_when_enabled() {
    let plain = start(Config::default()).await;
    let doc = as_metadata(&plain).await;
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        doc.get("token_endpoint_auth_signing_alg_values_supported"),
        None
    );

    let all = start(Config {
        client_credentials: true,
        private_key_jwt: true,
        idp: true,
        jwt_bearer: true,
        ..Config::default()
    })
    .await;
    let doc = as_metadata(&all).await;
    assert_eq!(
        doc["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            CLIENT_CREDENTIALS,
            TOKEN_EXCHANGE,
            JWT_BEARER
        ])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!([
            "none",
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ])
    );
    assert_eq!(
        doc["token_endpoint_auth_signing_alg_values_supported"],
        json!(["ES256", "RS256"])
    );
}

#[tokio::test]
async fn client_credentials_with_basic_issues_a_working_token_and_no_refresh_token() {
    let srv = start(knowing_client_a(|c| c.client_credentials = true)).await;
    let form = [
        ("grant_type", CLIENT_CREDENTIALS),
        ("scope", "mcp:read"),
        ("resource", &srv.mcp_url()),
    ];
    let (status, body) = json_of(post_token(&srv, CLIENT_A, &form).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "mcp:read");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token: {body}"
    );
    assert_eq!(
        ping(&srv, body["access_token"].as_str()).await,
        StatusCode::OK
    );

    let (status, body) = json_of(post_token(&srv, Some(("client-a", "wrong")), &form).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let admin = [("grant_type", CLIENT_CREDENTIALS), ("scope", "admin")];
    let (_, body) = json_of(post_token(&srv, CLIENT_A, &admin).await).await;
    assert_eq!(body["error"], "invalid_scope");

    let stats = srv.stats();
    assert_eq!(stats.token_requests_for(CLIENT_CREDENTIALS), 3);
    assert_eq!(stats.client_credentials_grants, 1);
}

#[tokio::test]
async fn client_credentials_is_refused_to_public_clients_and_when_off() {
    let srv = start(Config::with(|c| c.client_credentials = true)).await;
    let public = register(&srv, "none").await;
    let response = post_token(
        &srv,
        None,
        &[
            ("grant_type", CLIENT_CREDENTIALS),
            ("client_id", &public.client_id),
        ],
    )
    .await;
    assert_eq!(oauth_error_code(response).await, "unauthorized_client");

    let off = start(knowing_client_a(|_| {})).await;
    let response = post_token(&off, CLIENT_A, &[("grant_type", CLIENT_CREDENTIALS)]).await;
    assert_eq!(oauth_error_code(response).await, "unsupported_grant_type");
    assert_eq!(off.stats().client_credentials_grants, 0);
}

/// A loopback server answering every GET with `body` (a client's or a platform's jwks_uri).
async fn serve_json(body: Value) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || async move { axum::Json(body) }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

fn jwt_form<'a>(assertion: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", CLIENT_CREDENTIALS),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    form
}

#[tokio::test]
async fn private_key_jwt_es256_from_registered_jwks_once_per_jti() {
    let srv = start(Config {
        client_credentials: true,
        private_key_jwt: true,
        jwt_clients: vec![JwtClient::es256("jwt-client")],
        ..Config::default()
    })
    .await;
    let es256 = |aud: &str, overrides: Value| {
        assertion(
            CLIENT_ES256_PEM,
            Algorithm::ES256,
            "jwt-client",
            aud,
            overrides,
        )
    };
    // The issuer or the token endpoint as aud, both accepted.
    for aud in [srv.issuer(), format!("{}/token", srv.issuer())] {
        let signed = es256(&aud, json!({}));
        let (status, body) = json_of(post_token(&srv, None, &jwt_form(&signed, &[])).await).await;
        assert_eq!(status, StatusCode::OK, "aud {aud}: {body}");
        assert!(body.get("refresh_token").is_none());
        if aud == srv.issuer() {
            let (status, body) =
                json_of(post_token(&srv, None, &jwt_form(&signed, &[])).await).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("invalid_client")),
                "a replayed jti"
            );
        }
    }
    let issuer = srv.issuer();
    let refused = [
        ("audience", es256("https://elsewhere.example", json!({}))),
        ("expired", es256(&issuer, json!({"exp": now_s() - 5}))),
        ("mismatch", es256(&issuer, json!({"sub": "someone-else"}))),
        ("malformed", es256(&issuer, json!({"jti": null}))),
        // Signed with a key the client never registered.
        (
            "signature",
            assertion(
                CLIENT_RS256_PEM,
                Algorithm::RS256,
                "jwt-client",
                &srv.issuer(),
                json!({}),
            ),
        ),
    ];
    for (reason, signed) in &refused {
        let response = post_token(&srv, None, &jwt_form(signed, &[])).await;
        assert_eq!(
            oauth_error_code(response).await,
            "invalid_client",
            "{reason}"
        );
    }
    // The wrong client_assertion_type is refused too.
    let signed = es256(&issuer, json!({}));
    let mut form = jwt_form(&signed, &[]);
    form[1].1 = "urn:example:other";
    assert_eq!(
        oauth_error_code(post_token(&srv, None, &form).await).await,
        "invalid_client"
    );

    let stats = srv.stats();
    assert_eq!(stats.client_assertions, 2);
    assert_eq!(stats.client_credentials_grants, 2);
    for reason in ["replay", "audience", "expired", "mismatch", "signature"] {
        assert_eq!(
            stats.client_assertion_refusals_for(reason),
            1,
            "{reason}: {stats:?}"
        );
    }
    assert_eq!(stats.client_assertion_refusals_for("malformed"), 2);
    assert!(
        srv.secrets().assertions.contains(&signed),
        "received assertions are listed as secrets"
    );
}

#[tokio::test]
async fn private_key_jwt_rs256_registered_with_a_jwks_uri() {
    let (jwks_uri, _jwks_server) = serve_json(client_rs256_jwks()).await;
    let srv = start(Config {
        client_credentials: true,
        private_key_jwt: true,
        ..Config::default()
    })
    .await;
    let register = format!("{}/register", srv.issuer());
    let response = post_json(register.clone(), &json!({"grant_types": [CLIENT_CREDENTIALS], "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": jwks_uri})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let registered: Value = response.json().await.unwrap();
    assert!(
        registered.get("client_secret").is_none(),
        "a private_key_jwt client gets no secret"
    );
    let client_id = registered["client_id"].as_str().unwrap();
    let signed = assertion(
        CLIENT_RS256_PEM,
        Algorithm::RS256,
        client_id,
        &srv.issuer(),
        json!({}),
    );
    let (status, body) =
        json_of(post_token(&srv, None, &jwt_form(&signed, &[("client_id", client_id)])).await)
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Registration needs the keys, and only one form of them.
    for bad in [
        json!({"grant_types": [CLIENT_CREDENTIALS], "token_endpoint_auth_method": "private_key_jwt"}),
        json!({"grant_types": [CLIENT_CREDENTIALS], "token_endpoint_auth_method": "private_key_jwt", "jwks": client_rs256_jwks(), "jwks_uri": jwks_uri}),
    ] {
        let response = post_json(register.clone(), &bad).await;
        assert_eq!(
            oauth_error_code(response).await,
            "invalid_client_metadata",
            "{bad}"
        );
    }
}

/// An IdP and an authorization server trusting it, with the client `client-a` registered at
/// both (the same ID: no mapping needed).
async fn idp_and_as(policy: IdpPolicy) -> (OAuthTestServer, OAuthTestServer) {
    let idp = start(knowing_client_a(|c| {
        c.idp = true;
        c.idp_policy = policy;
    }))
    .await;
    let auth = trusting(&idp).await;
    (idp, auth)
}

/// An authorization server trusting `idp`'s ID-JAGs, with the client `client-a`.
async fn trusting(idp: &OAuthTestServer) -> OAuthTestServer {
    start(knowing_client_a(|c| {
        c.jwt_bearer = true;
        c.trusted_idps = vec![idp.as_trusted_issuer()];
    }))
    .await
}

async fn exchange(
    idp: &OAuthTestServer,
    subject_token: &str,
    subject_type: &str,
    audience: &str,
    resource: &str,
) -> (StatusCode, Value) {
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", ID_JAG),
        ("subject_token", subject_token),
        ("subject_token_type", subject_type),
        ("audience", audience),
        ("resource", resource),
        ("scope", "mcp:read"),
    ];
    json_of(post_token(idp, CLIENT_A, &form).await).await
}

fn decode_unverified(jwt: &str) -> (Value, Value) {
    use base64::Engine as _;
    let part = |i: usize| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    (part(0), part(1))
}

#[tokio::test]
async fn the_idp_exchanges_its_id_token_for_an_id_jag_the_authorization_server_redeems_once() {
    let (idp, auth) = idp_and_as(IdpPolicy::AllowAll).await;
    let id_token = idp.issue_id_token("client-a", "alice");
    let (status, body) = exchange(&idp, &id_token, ID_TOKEN, &auth.issuer(), &auth.mcp_url()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["issued_token_type"], ID_JAG);
    assert_eq!(body["token_type"], "N_A");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "mcp:read");
    let id_jag = body["access_token"].as_str().unwrap();
    let (header, claims) = decode_unverified(id_jag);
    assert_eq!(header["typ"], "oauth-id-jag+jwt");
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], auth.issuer());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "client-a");
    assert_eq!(claims["resource"], auth.mcp_url());
    assert_eq!(claims["scope"], "mcp:read");

    let grant = [
        ("grant_type", JWT_BEARER),
        ("assertion", id_jag),
        ("resource", &auth.mcp_url()),
    ];
    let (status, tokens) = json_of(post_token(&auth, CLIENT_A, &grant).await).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    assert_eq!(tokens["scope"], "mcp:read", "the ID-JAG's scope");
    assert_eq!(
        ping(&auth, tokens["access_token"].as_str()).await,
        StatusCode::OK
    );
    let (_, claims) = decode_unverified(field(&tokens, "access_token"));
    assert_eq!(claims["sub"], "alice", "the access token is the user's");

    let (_, replayed) = json_of(post_token(&auth, CLIENT_A, &grant).await).await;
    assert_eq!(replayed["error"], "invalid_grant", "an ID-JAG is used once");
    // Without client authentication an ID-JAG is refused.
    let anonymous = post_token(&auth, None, &grant).await;
    assert_eq!(oauth_error_code(anonymous).await, "invalid_client");

    let (idp_stats, as_stats) = (idp.stats(), auth.stats());
    assert_eq!(idp_stats.token_requests_for(TOKEN_EXCHANGE), 1);
    assert_eq!(idp_stats.id_jags_issued, 1);
    assert_eq!(as_stats.token_requests_for(JWT_BEARER), 3);
    assert_eq!(as_stats.jwt_bearer_grants_for("id_jag"), 1);
    assert_eq!(as_stats.jwt_bearer_refusals_for("replay"), 1);
    assert_eq!(idp.secrets().id_jags, vec![id_jag.to_string()]);
    assert_eq!(idp.secrets().id_tokens, vec![id_token]);
}

#[tokio::test]
async fn a_refresh_token_of_the_idp_is_a_subject_token_too() {
    let idp = start(Config::with(|c| c.idp = true)).await;
    let reg = register(&idp, "client_secret_basic").await;
    let tokens = login(&idp, &reg).await;
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", ID_JAG),
        ("subject_token", field(&tokens, "refresh_token")),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:refresh_token",
        ),
        ("audience", "https://as.example"),
    ];
    let (status, body) = json_of(token_request(&idp, &reg, &form).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, claims) = decode_unverified(field(&body, "access_token"));
    assert_eq!(claims["sub"], "demo-user");
    assert_eq!(
        claims.get("resource"),
        None,
        "no resource asked, none claimed"
    );
}

#[tokio::test]
async fn the_idp_refuses_foreign_expired_and_malformed_exchanges_and_what_its_policy_denies() {
    let (idp, auth) = idp_and_as(IdpPolicy::AllowAudiences(vec![
        "https://allowed.example".into(),
    ]))
    .await;
    let id_token = idp.issue_id_token("client-a", "alice");
    let (status, body) = exchange(&idp, &id_token, ID_TOKEN, &auth.issuer(), &auth.mcp_url()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("access_denied")),
        "{body}"
    );
    let mcp_url = auth.mcp_url();
    let for_allowed = || {
        exchange(
            &idp,
            &id_token,
            ID_TOKEN,
            "https://allowed.example",
            &mcp_url,
        )
    };
    let (status, _) = for_allowed().await;
    assert_eq!(status, StatusCode::OK);
    idp.set_idp_policy(IdpPolicy::DenyAll);
    let (_, body) = for_allowed().await;
    assert_eq!(body["error"], "access_denied");
    idp.set_idp_policy(IdpPolicy::AllowAll);

    let refused = [
        (
            idp.issue_id_token("client-b", "alice"),
            ID_TOKEN,
            "invalid_grant",
            "an ID token of another client",
        ),
        // Signed with the same key, but another server's.
        (
            auth.issue_id_token("client-a", "alice"),
            ID_TOKEN,
            "invalid_grant",
            "an ID token of another issuer",
        ),
        (
            id_token.clone(),
            "urn:ietf:params:oauth:token-type:saml2",
            "invalid_request",
            "a subject type it does not take",
        ),
    ];
    for (subject, subject_type, code, why) in &refused {
        let (_, body) =
            exchange(&idp, subject, subject_type, &auth.issuer(), &auth.mcp_url()).await;
        assert_eq!(body["error"], *code, "{why}");
    }
    let wrong_type = [
        ("grant_type", TOKEN_EXCHANGE),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token", id_token.as_str()),
        ("subject_token_type", ID_TOKEN),
        ("audience", "https://as.example"),
    ];
    let response = post_token(&idp, CLIENT_A, &wrong_type).await;
    assert_eq!(oauth_error_code(response).await, "invalid_request");

    idp.advance_clock(Duration::from_secs(301));
    let (_, body) = exchange(&idp, &id_token, ID_TOKEN, &auth.issuer(), &auth.mcp_url()).await;
    assert_eq!(body["error"], "invalid_grant", "an expired ID token");

    let stats = idp.stats();
    assert_eq!(stats.token_exchange_denials, 2);
    assert_eq!(stats.id_jags_issued, 1);
    assert_eq!(stats.token_requests_for(TOKEN_EXCHANGE), 8);
}

/// An ID-JAG of `idp` for `client-a`, for `audience` and `resource`.
async fn id_jag(idp: &OAuthTestServer, audience: &str, resource: &str) -> String {
    let id_token = idp.issue_id_token("client-a", "alice");
    let (status, body) = exchange(idp, &id_token, ID_TOKEN, audience, resource).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_authorization_server_refuses_id_jags_of_strangers_for_others_or_expired() {
    let (idp, auth) = idp_and_as(IdpPolicy::AllowAll).await;
    let stranger = start(knowing_client_a(|c| c.idp = true)).await;
    let cases = [
        (
            "untrusted_issuer",
            id_jag(&stranger, &auth.issuer(), &auth.mcp_url()).await,
        ),
        (
            "audience",
            id_jag(&idp, "https://other-as.example", &auth.mcp_url()).await,
        ),
        (
            "mismatch",
            id_jag(&idp, &auth.issuer(), "https://other.example/mcp").await,
        ),
    ];
    for (reason, id_jag) in &cases {
        let response = jwt_bearer(&auth, CLIENT_A, id_jag).await;
        assert_eq!(
            oauth_error_code(response).await,
            "invalid_grant",
            "{reason}"
        );
        assert_eq!(auth.stats().jwt_bearer_refusals_for(reason), 1, "{reason}");
    }
    let fresh = id_jag(&idp, &auth.issuer(), &auth.mcp_url()).await;
    auth.advance_clock(Duration::from_secs(301));
    let response = jwt_bearer(&auth, CLIENT_A, &fresh).await;
    assert_eq!(oauth_error_code(response).await, "invalid_grant");
    assert_eq!(auth.stats().jwt_bearer_refusals_for("expired"), 1);
    assert_eq!(auth.stats().jwt_bearer_grants_for("id_jag"), 0);
}

#[tokio::test]
async fn the_id_jag_names_the_client_as_the_authorization_server_knows_it() {
    let idp = start(Config {
        idp: true,
        preregistered_client: Some(("idp-client".into(), Some(SECRET.into()))),
        idp_client_ids: vec![("idp-client".into(), "client-a".into())],
        ..Config::default()
    })
    .await;
    let auth = trusting(&idp).await;
    let id_token = idp.issue_id_token("idp-client", "alice");
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("requested_token_type", ID_JAG),
        ("subject_token", id_token.as_str()),
        ("subject_token_type", ID_TOKEN),
        ("audience", &auth.issuer()),
    ];
    let body = body_of(post_token(&idp, Some(("idp-client", SECRET)), &form).await).await;
    let id_jag = field(&body, "access_token");
    assert_eq!(decode_unverified(id_jag).1["client_id"], "client-a");
    let response = jwt_bearer(&auth, CLIENT_A, id_jag).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn workload_jwts_of_a_trusted_platform_need_no_client_and_are_reusable() {
    let k8s = Platform::kubernetes("https://kubernetes.default.svc.cluster.local");
    let spiffe = Platform::spiffe(
        "https://spire.example.org",
        "spiffe://example.org/ns/mcp/sa/client",
    );
    let auth = start(Config {
        jwt_bearer: true,
        trusted_workload_issuers: vec![k8s.trusted().with_audience("mcp-proxy"), spiffe.trusted()],
        ..Config::default()
    })
    .await;
    let hour = Duration::from_secs(3600);
    for (platform, jwt) in [
        (&k8s, k8s.token(&auth.issuer(), hour)),
        (&k8s, k8s.token("mcp-proxy", hour)),
        (
            &spiffe,
            spiffe.token(&format!("{}/token", auth.issuer()), hour),
        ),
    ] {
        for _ in 0..2 {
            let (status, tokens) = json_of(jwt_bearer(&auth, None, &jwt).await).await;
            assert_eq!(status, StatusCode::OK, "{tokens}");
            assert!(tokens.get("refresh_token").is_none());
            let (_, claims) = decode_unverified(field(&tokens, "access_token"));
            assert_eq!(claims["sub"], platform.subject());
            assert_eq!(
                ping(&auth, tokens["access_token"].as_str()).await,
                StatusCode::OK
            );
        }
    }
    let stranger = Platform::kubernetes("https://other-cluster.example");
    for (reason, jwt) in [
        ("expired", k8s.expired_token(&auth.issuer())),
        ("audience", k8s.token("https://wrong.example", hour)),
        ("untrusted_issuer", stranger.token(&auth.issuer(), hour)),
    ] {
        let response = jwt_bearer(&auth, None, &jwt).await;
        assert_eq!(
            oauth_error_code(response).await,
            "invalid_grant",
            "{reason}"
        );
        assert_eq!(auth.stats().jwt_bearer_refusals_for(reason), 1, "{reason}");
    }
    let response = post_token(&auth, None, &[("grant_type", JWT_BEARER)]).await;
    assert_eq!(
        oauth_error_code(response).await,
        "invalid_request",
        "no assertion"
    );
    let stats = auth.stats();
    assert_eq!(stats.jwt_bearer_grants_for("workload"), 6);
    assert_eq!(stats.token_requests_for(JWT_BEARER), 10);
}

#[tokio::test]
async fn a_platform_trusted_through_its_jwks_uri() {
    let platform = Platform::spiffe("https://spire.example.org", "spiffe://example.org/client");
    let (jwks_uri, _jwks_server) = serve_json(oauth_test_server::test_keys::platform_jwks()).await;
    let auth = start(Config::with(|c| c.jwt_bearer = true)).await;
    let jwt = platform.token(&auth.issuer(), Duration::from_secs(600));
    let before = jwt_bearer(&auth, None, &jwt).await;
    assert_eq!(
        oauth_error_code(before).await,
        "invalid_grant",
        "not trusted yet"
    );
    auth.trust_workload_issuer(TrustedIssuer::new(
        platform.issuer(),
        KeySource::JwksUri(jwks_uri),
    ));
    let after = jwt_bearer(&auth, None, &jwt).await;
    assert_eq!(after.status(), StatusCode::OK);
}

#[tokio::test]
async fn faults_fire_on_each_new_grant_then_the_server_recovers() {
    let k8s = Platform::kubernetes("https://k8s.example");
    let (idp, _) = idp_and_as(IdpPolicy::AllowAll).await;
    let srv = start(knowing_client_a(|c| {
        c.client_credentials = true;
        c.jwt_bearer = true;
        c.trusted_workload_issuers = vec![k8s.trusted()];
    }))
    .await;
    let cc = [("grant_type", CLIENT_CREDENTIALS)];
    arm_once(&srv, FaultTarget::ClientCredentials, FaultKind::ServerError);
    for expected in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::OK] {
        assert_eq!(post_token(&srv, CLIENT_A, &cc).await.status(), expected);
    }

    let jwt = k8s.token(&srv.issuer(), Duration::from_secs(600));
    let bearer = [("grant_type", JWT_BEARER), ("assertion", jwt.as_str())];
    arm_once(&srv, FaultTarget::JwtBearer, FaultKind::ExpiresInMissing);
    let (_, shaped) = json_of(post_token(&srv, None, &bearer).await).await;
    assert!(
        shaped["access_token"].is_string() && shaped.get("expires_in").is_none(),
        "{shaped}"
    );
    arm_once(&srv, FaultTarget::JwtBearer, FaultKind::EchoSecrets);
    let echoed = post_token(&srv, None, &bearer).await.text().await.unwrap();
    assert!(
        echoed.contains(&jwt),
        "the hostile server echoes the assertion"
    );
    srv.inject(
        Fault::new(FaultTarget::JwtBearer, FaultKind::RateLimited)
            .delay_ms(2_000)
            .times(1),
    )
    .unwrap();
    let limited = post_token(&srv, None, &bearer).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "2");
    assert_eq!(
        post_token(&srv, None, &bearer).await.status(),
        StatusCode::OK
    );

    let id_token = idp.issue_id_token("client-a", "alice");
    let exchanged = || {
        let resource = "https://as.example/mcp";
        exchange(&idp, &id_token, ID_TOKEN, "https://as.example", resource)
    };
    arm_once(&idp, FaultTarget::TokenExchange, FaultKind::AccessDenied);
    let (_, body) = exchanged().await;
    assert_eq!(body["error"], "access_denied");
    arm_once(
        &idp,
        FaultTarget::TokenExchange,
        FaultKind::MissingAccessToken,
    );
    let (status, body) = exchanged().await;
    assert!(
        status == StatusCode::OK && body.get("access_token").is_none(),
        "{body}"
    );
    let (status, _) = exchanged().await;
    assert_eq!(status, StatusCode::OK);

    let mcp_missing = Fault::new(FaultTarget::Mcp, FaultKind::ExpiresInMissing);
    assert!(mcp_missing.validate().is_err());
    let exchange_zero = Fault::new(FaultTarget::TokenExchange, FaultKind::ExpiresInZero);
    assert!(exchange_zero.validate().is_ok());
    let fired = srv.stats().faults_fired;
    assert_eq!(fired.get("client_credentials"), Some(&1));
    assert_eq!(fired.get("jwt_bearer"), Some(&3));
    assert_eq!(idp.stats().faults_fired.get("token_exchange"), Some(&2));
}

#[tokio::test]
async fn the_control_api_issues_id_tokens_and_sets_the_idp_policy() {
    let (idp, auth) = idp_and_as(IdpPolicy::AllowAll).await;
    let issue = json!({"client_id": "client-a", "subject": "bob"});
    let body = body_of(post_json(format!("{}/control/id-token", idp.url()), &issue).await).await;
    let id_token = field(&body, "id_token");
    assert_eq!(decode_unverified(id_token).1["sub"], "bob");
    let set = post_json(
        format!("{}/control/idp-policy", idp.url()),
        &json!("deny_all"),
    )
    .await;
    assert_eq!(set.status(), StatusCode::NO_CONTENT);
    let (_, body) = exchange(&idp, id_token, ID_TOKEN, &auth.issuer(), &auth.mcp_url()).await;
    assert_eq!(body["error"], "access_denied");
}
