mod common;

use std::time::{Duration, Instant};

use common::*;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A logged-in public client and its refresh token, ready for refresh faults.
async fn logged_in() -> (OAuthTestServer, Registered, String) {
    let (srv, reg, tokens) = logged_in_with(Config::default()).await;
    let rt = field(&tokens, "refresh_token").to_string();
    (srv, reg, rt)
}

/// Sends a refresh form with `rt` straight to the token endpoint, waiting at most `timeout`:
/// a fault that answers nothing is an error.
async fn refresh_raw(
    srv: &OAuthTestServer,
    reg: &Registered,
    rt: &str,
    timeout: Duration,
) -> reqwest::Error {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt),
        ("client_id", reg.client_id.as_str()),
    ];
    http()
        .post(format!("{}/token", srv.issuer()))
        .timeout(timeout)
        .form(&form)
        .send()
        .await
        .expect_err("the faulted request gets no response")
}

/// Arms `kind` with `delay_ms` at the refresh target, once.
fn arm_delayed(srv: &OAuthTestServer, kind: FaultKind, delay_ms: u64) {
    srv.inject(
        Fault::new(FaultTarget::Refresh, kind)
            .times(1)
            .delay_ms(delay_ms),
    )
    .unwrap();
}

/// A refresh after `kind` was armed once at the refresh target: its JSON body.
async fn refresh_bent(srv: &OAuthTestServer, reg: &Registered, rt: &str, kind: FaultKind) -> Value {
    arm_once(srv, FaultTarget::Refresh, kind);
    body_of(refresh(srv, reg, rt).await).await
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
        arm_once(&srv, FaultTarget::Refresh, kind);
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
    arm_delayed(&srv, FaultKind::RateLimited, 2500);
    let response = refresh(&srv, &reg, &rt).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
}

#[tokio::test]
async fn malformed_json_is_a_200_whose_body_does_not_parse() {
    let (srv, reg, rt) = logged_in().await;
    arm_once(&srv, FaultTarget::Refresh, FaultKind::MalformedJson);
    let response = refresh(&srv, &reg, &rt).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&response.text().await.unwrap()).is_err());
}

#[tokio::test]
async fn slow_answers_after_the_delay() {
    let (srv, reg, rt) = logged_in().await;
    arm_delayed(&srv, FaultKind::Slow, 300);
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
    arm_once(&srv, FaultTarget::Refresh, FaultKind::Hang);
    let err = refresh_raw(&srv, &reg, &rt, Duration::from_millis(300)).await;
    assert!(err.is_timeout(), "a hung request times out: {err:?}");
    assert_eq!(refresh(&srv, &reg, &rt).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn drop_connection_closes_the_socket_without_an_answer() {
    let (srv, reg, rt) = logged_in().await;
    arm_once(&srv, FaultTarget::Refresh, FaultKind::DropConnection);
    let err = refresh_raw(&srv, &reg, &rt, Duration::from_secs(10)).await;
    assert!(
        !err.is_timeout() && (err.is_request() || err.is_connect() || err.is_body()),
        "{err:?}"
    );
    assert_eq!(refresh(&srv, &reg, &rt).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_shape_kinds_bend_the_token_response() {
    let (srv, reg, mut rt) = logged_in().await;

    let body = refresh_bent(&srv, &reg, &rt, FaultKind::MissingAccessToken).await;
    assert!(
        body.get("access_token").is_none() && body.get("refresh_token").is_none(),
        "{body}"
    );

    let body = refresh_bent(&srv, &reg, &rt, FaultKind::ExpiresInMissing).await;
    assert!(body.get("expires_in").is_none());
    rt = field(&body, "refresh_token").into();
    assert_eq!(
        ping(&srv, body["access_token"].as_str()).await,
        StatusCode::OK
    );

    let body = refresh_bent(&srv, &reg, &rt, FaultKind::ExpiresInZero).await;
    assert_eq!(body["expires_in"], 0);
    rt = field(&body, "refresh_token").into();
    assert_eq!(
        ping(&srv, body["access_token"].as_str()).await,
        StatusCode::UNAUTHORIZED
    );

    let body = refresh_bent(&srv, &reg, &rt, FaultKind::AlreadyExpired).await;
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
    let (srv, reg) = with_public_client(Config::default()).await;
    arm_once(&srv, FaultTarget::Token, FaultKind::InvalidGrant);
    let (code, verifier) = authorize(&srv, &reg, &[]).await;
    assert_eq!(
        oauth_error_code(exchange(&srv, &reg, &code, &verifier).await).await,
        "invalid_grant"
    );
    let tokens = login(&srv, &reg).await;
    let refreshed = refresh(&srv, &reg, field(&tokens, "refresh_token")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
}

#[tokio::test]
async fn faults_at_other_targets() {
    let (srv, reg) = with_public_client(Config::default()).await;

    arm_once(
        &srv,
        FaultTarget::Authorize,
        FaultKind::TemporarilyUnavailable,
    );
    let q = authorize_redirect(&srv, &reg, &[("state", "s")]).await;
    assert_eq!(
        q["error"], "temporarily_unavailable",
        "authorize errors are redirects"
    );

    arm_once(&srv, FaultTarget::Metadata, FaultKind::ServerError);
    let url = format!("{}/.well-known/oauth-authorization-server", srv.url());
    assert_eq!(
        http().get(&url).send().await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        http().get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );

    arm_once(&srv, FaultTarget::Jwks, FaultKind::MalformedJson);
    let jwks = http().get(format!("{}/jwks.json", srv.url())).send();
    let jwks = jwks.await.unwrap().text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&jwks).is_err());

    arm_once(&srv, FaultTarget::Register, FaultKind::RateLimited);
    let response = post_json(
        format!("{}/register", srv.url()),
        &json!({"redirect_uris": [REDIRECT_URI]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    let tokens = login(&srv, &reg).await;
    let access = tokens["access_token"].as_str();
    arm_once(&srv, FaultTarget::Mcp, FaultKind::InvalidGrant);
    let refused = mcp(&srv, access, "ping", json!({})).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&refused).contains("invalid_token"));
    assert_eq!(ping(&srv, access).await, StatusCode::OK);

    arm_once(&srv, FaultTarget::Mcp, FaultKind::InsufficientScope);
    let forbidden = mcp(&srv, access, "ping", json!({})).await;
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
    let arm = |body: Value| {
        let faults = faults.clone();
        async move { post_json(faults, &body).await }
    };
    let armed = arm(json!({"target": "refresh", "kind": "server_error"})).await;
    assert_eq!(armed.status(), StatusCode::CREATED);
    let listed = get_json(faults.clone()).await;
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

    let refused = arm(json!({"target": "mcp", "kind": "already_expired"})).await;
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "a fault that cannot fire is refused"
    );
    let unknown = arm(json!({"target": "refresh", "kind": "explode"})).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);

    let stats = get_json(format!("{}/control/stats", srv.url())).await;
    assert_eq!(stats["faults_fired"]["refresh"], 3);
    assert_eq!(stats["token_requests"]["refresh_token"], 4);
}

#[tokio::test]
async fn startup_faults_with_a_count_come_from_the_config() {
    let fault = Fault::new(FaultTarget::Refresh, FaultKind::TemporarilyUnavailable).times(2);
    let (srv, reg, tokens) = logged_in_with(Config::with(|c| c.faults = vec![fault])).await;
    let rt = field(&tokens, "refresh_token");
    for expected in [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::OK,
    ] {
        assert_eq!(refresh(&srv, &reg, rt).await.status(), expected);
    }
}
