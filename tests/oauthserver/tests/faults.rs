mod common;

use std::time::{Duration, Instant};

use common::*;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A logged-in public client and its refresh token, ready for refresh faults.
async fn logged_in() -> (OAuthTestServer, Registered, String) {
    let srv = start(Config::default()).await;
    let reg = register(&srv, "none").await;
    let tokens = login(&srv, &reg).await;
    (
        srv,
        reg,
        tokens["refresh_token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn oauth_error_kinds_answer_the_error_once_then_the_server_recovers() {
    for (kind, status, code) in [
        (
            FaultKind::InvalidGrant,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            FaultKind::InvalidClient,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            FaultKind::InvalidScope,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            FaultKind::ServerError,
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
        ),
        (
            FaultKind::TemporarilyUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
        ),
    ] {
        let (srv, reg, rt) = logged_in().await;
        srv.inject(Fault::new(FaultTarget::Refresh, kind).times(1))
            .unwrap();
        let faulted = refresh(&srv, &reg, &rt).await;
        assert_eq!(faulted.status(), status, "{kind}");
        assert_eq!(oauth_error_code(faulted).await, code, "{kind}");
        let recovered = refresh(&srv, &reg, &rt).await;
        assert_eq!(
            recovered.status(),
            StatusCode::OK,
            "{kind}: the refresh token survived the fault"
        );
        assert_eq!(srv.stats().faults_fired["refresh"], 1);
    }
}

#[tokio::test]
async fn rate_limited_sends_429_with_retry_after() {
    let (srv, reg, rt) = logged_in().await;
    srv.inject(
        Fault::new(FaultTarget::Refresh, FaultKind::RateLimited)
            .times(1)
            .delay_ms(2500),
    )
    .unwrap();
    let response = refresh(&srv, &reg, &rt).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
}

#[tokio::test]
async fn malformed_json_is_a_200_whose_body_does_not_parse() {
    let (srv, reg, rt) = logged_in().await;
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::MalformedJson).times(1))
        .unwrap();
    let response = refresh(&srv, &reg, &rt).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&response.text().await.unwrap()).is_err());
}

#[tokio::test]
async fn slow_answers_after_the_delay() {
    let (srv, reg, rt) = logged_in().await;
    srv.inject(
        Fault::new(FaultTarget::Refresh, FaultKind::Slow)
            .times(1)
            .delay_ms(300),
    )
    .unwrap();
    let started = Instant::now();
    let response = refresh(&srv, &reg, &rt).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the injected delay"
    );
}

#[tokio::test]
async fn hang_never_answers_but_other_requests_still_do() {
    let (srv, reg, rt) = logged_in().await;
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::Hang).times(1))
        .unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.as_str()),
        ("client_id", reg.client_id.as_str()),
    ];
    let err = http()
        .post(format!("{}/token", srv.issuer()))
        .timeout(Duration::from_millis(300))
        .form(&form)
        .send()
        .await
        .expect_err("a hung request times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(refresh(&srv, &reg, &rt).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn drop_connection_closes_the_socket_without_an_answer() {
    let (srv, reg, rt) = logged_in().await;
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::DropConnection).times(1))
        .unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.as_str()),
        ("client_id", reg.client_id.as_str()),
    ];
    let err = http()
        .post(format!("{}/token", srv.issuer()))
        .form(&form)
        .send()
        .await
        .expect_err("no response");
    assert!(
        !err.is_timeout() && (err.is_request() || err.is_connect() || err.is_body()),
        "{err:?}"
    );
    assert_eq!(refresh(&srv, &reg, &rt).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_shape_kinds_bend_the_token_response() {
    let (srv, reg, mut rt) = logged_in().await;

    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::MissingAccessToken).times(1))
        .unwrap();
    let body: Value = refresh(&srv, &reg, &rt).await.json().await.unwrap();
    assert!(
        body.get("access_token").is_none() && body.get("refresh_token").is_none(),
        "{body}"
    );

    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::ExpiresInMissing).times(1))
        .unwrap();
    let body: Value = refresh(&srv, &reg, &rt).await.json().await.unwrap();
    assert!(body.get("expires_in").is_none());
    rt = body["refresh_token"].as_str().unwrap().into();
    assert_eq!(
        mcp(&srv, body["access_token"].as_str(), "ping", json!({}))
            .await
            .status(),
        StatusCode::OK
    );

    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::ExpiresInZero).times(1))
        .unwrap();
    let body: Value = refresh(&srv, &reg, &rt).await.json().await.unwrap();
    assert_eq!(body["expires_in"], 0);
    rt = body["refresh_token"].as_str().unwrap().into();
    assert_eq!(
        mcp(&srv, body["access_token"].as_str(), "ping", json!({}))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::AlreadyExpired).times(1))
        .unwrap();
    let body: Value = refresh(&srv, &reg, &rt).await.json().await.unwrap();
    assert_eq!(
        body["expires_in"], 3600,
        "the lie is only in the token itself"
    );
    let refused = mcp(&srv, body["access_token"].as_str(), "ping", json!({})).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&refused).contains("error=\"invalid_token\""));
}

#[tokio::test]
async fn the_token_target_is_the_code_exchange_only() {
    let srv = start(Config::default()).await;
    let reg = register(&srv, "none").await;
    srv.inject(Fault::new(FaultTarget::Token, FaultKind::InvalidGrant).times(1))
        .unwrap();
    let (code, verifier) = authorize(&srv, &reg, &[]).await;
    assert_eq!(
        oauth_error_code(exchange(&srv, &reg, &code, &verifier).await).await,
        "invalid_grant"
    );
    let tokens = login(&srv, &reg).await;
    assert_eq!(
        refresh(&srv, &reg, tokens["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn faults_at_other_targets() {
    let srv = start(Config::default()).await;
    let reg = register(&srv, "none").await;

    srv.inject(Fault::new(FaultTarget::Authorize, FaultKind::TemporarilyUnavailable).times(1))
        .unwrap();
    let pkce = pkce();
    let q = redirect_params(
        &authorize_raw(
            &srv,
            &[
                ("response_type", "code"),
                ("client_id", &reg.client_id),
                ("redirect_uri", REDIRECT_URI),
                ("state", "s"),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await,
    );
    assert_eq!(
        q["error"], "temporarily_unavailable",
        "authorize errors are redirects"
    );

    srv.inject(Fault::new(FaultTarget::Metadata, FaultKind::ServerError).times(1))
        .unwrap();
    let url = format!("{}/.well-known/oauth-authorization-server", srv.url());
    assert_eq!(
        http().get(&url).send().await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        http().get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );

    srv.inject(Fault::new(FaultTarget::Jwks, FaultKind::MalformedJson).times(1))
        .unwrap();
    let jwks = http()
        .get(format!("{}/jwks.json", srv.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(serde_json::from_str::<Value>(&jwks).is_err());

    srv.inject(Fault::new(FaultTarget::Register, FaultKind::RateLimited).times(1))
        .unwrap();
    let response = http()
        .post(format!("{}/register", srv.url()))
        .json(&json!({"redirect_uris": [REDIRECT_URI]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    let tokens = login(&srv, &reg).await;
    srv.inject(Fault::new(FaultTarget::Mcp, FaultKind::InvalidGrant).times(1))
        .unwrap();
    let refused = mcp(&srv, tokens["access_token"].as_str(), "ping", json!({})).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&refused).contains("invalid_token"));
    assert_eq!(
        mcp(&srv, tokens["access_token"].as_str(), "ping", json!({}))
            .await
            .status(),
        StatusCode::OK
    );

    srv.inject(Fault::new(FaultTarget::Mcp, FaultKind::InsufficientScope).times(1))
        .unwrap();
    let forbidden = mcp(&srv, tokens["access_token"].as_str(), "ping", json!({})).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let challenge = challenge(&forbidden);
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"mcp:read mcp:write\""),
        "{challenge}"
    );
    assert!(
        srv.inject(Fault::new(
            FaultTarget::Refresh,
            FaultKind::InsufficientScope
        ))
        .is_err(),
        "mcp only"
    );
}

#[tokio::test]
async fn faults_are_switchable_at_run_time_over_the_control_api() {
    let (srv, reg, rt) = logged_in().await;
    let faults = format!("{}/control/faults", srv.url());
    let armed = http()
        .post(&faults)
        .json(&json!({"target": "refresh", "kind": "server_error"}))
        .send()
        .await
        .unwrap();
    assert_eq!(armed.status(), StatusCode::CREATED);
    let listed: Value = http()
        .get(&faults)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed,
        json!([{"target": "refresh", "kind": "server_error", "count": null, "delay_ms": null}])
    );
    for _ in 0..3 {
        assert_eq!(
            refresh(&srv, &reg, &rt).await.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "uncounted faults persist"
        );
    }
    assert_eq!(
        http().delete(&faults).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(refresh(&srv, &reg, &rt).await.status(), StatusCode::OK);

    let refused = http()
        .post(&faults)
        .json(&json!({"target": "mcp", "kind": "already_expired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "a fault that cannot fire is refused"
    );
    let unknown = http()
        .post(&faults)
        .json(&json!({"target": "refresh", "kind": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);

    let stats: Value = http()
        .get(format!("{}/control/stats", srv.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["faults_fired"]["refresh"], 3);
    assert_eq!(stats["token_requests"]["refresh_token"], 4);
}

#[tokio::test]
async fn startup_faults_with_a_count_come_from_the_config() {
    let fault = Fault::new(FaultTarget::Refresh, FaultKind::TemporarilyUnavailable).times(2);
    let srv = start(Config {
        faults: vec![fault],
        ..Config::default()
    })
    .await;
    let reg = register(&srv, "none").await;
    let rt = login(&srv, &reg).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        refresh(&srv, &reg, &rt).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        refresh(&srv, &reg, &rt).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(refresh(&srv, &reg, &rt).await.status(), StatusCode::OK);
}
