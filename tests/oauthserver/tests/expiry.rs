mod common;

use std::time::{Duration, Instant};

use common::*;
use oauth_test_server::{Config, OAuthTestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The test server with access tokens living `ttl`, and the tokens of a public client's login.
async fn logged_in_for(ttl: Duration) -> (OAuthTestServer, Value) {
    let (srv, _reg, tokens) = logged_in_with(Config::with(|c| c.access_token_ttl = ttl)).await;
    (srv, tokens)
}

#[tokio::test]
async fn an_access_token_is_refused_once_its_lifetime_has_passed() {
    let (srv, tokens) = logged_in_for(Duration::from_secs(30)).await;
    let access = tokens["access_token"].as_str();
    assert_eq!(tokens["expires_in"], 30);
    srv.advance_clock(Duration::from_secs(29));
    assert_eq!(
        ping(&srv, access).await,
        StatusCode::OK,
        "valid before expiry"
    );
    // exp is rounded up to a whole second, so 31 s after issue it has passed for sure.
    srv.advance_clock(Duration::from_millis(2_001));
    let refused = mcp(&srv, access, "ping", json!({})).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let challenge = challenge(&refused);
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains("expired"),
        "{challenge}"
    );
}

/// Real time, no clock offset: the token is never refused before its announced lifetime.
#[tokio::test]
async fn sub_second_ttls_are_announced_rounded_up_and_honoured_in_real_time() {
    let (srv, reg) = with_public_client(Config::with(|c| {
        c.access_token_ttl = Duration::from_millis(500)
    }))
    .await;
    let issued = Instant::now();
    let tokens = login(&srv, &reg).await;
    assert_eq!(tokens["expires_in"], 1, "500ms is announced as 1 s");
    let access = tokens["access_token"].as_str();
    // Poll until refused, bounded: it must not be refused before 1 s, and must be by 2.5 s.
    let deadline = issued + Duration::from_millis(2_500);
    let refused_at = loop {
        let asked_at = Instant::now();
        if ping(&srv, access).await == StatusCode::UNAUTHORIZED {
            break asked_at;
        }
        assert!(
            Instant::now() < deadline,
            "the token was still accepted 2.5 s after issue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused_at.duration_since(issued) >= Duration::from_secs(1),
        "refused after {:?}",
        refused_at.duration_since(issued)
    );
}

#[tokio::test]
async fn codes_expire_after_the_code_ttl() {
    let (srv, reg) =
        with_public_client(Config::with(|c| c.code_ttl = Duration::from_secs(10))).await;
    let (code, verifier) = authorize(&srv, &reg, &[]).await;
    srv.advance_clock(Duration::from_secs(11));
    let response = exchange(&srv, &reg, &code, &verifier).await;
    assert_eq!(oauth_error_code(response).await, "invalid_grant");
}

#[tokio::test]
async fn refresh_tokens_expire_after_their_ttl_counted_from_each_rotation() {
    let (srv, reg, tokens) = logged_in_with(Config::with(|c| {
        c.refresh_token_ttl = Duration::from_secs(60)
    }))
    .await;
    srv.advance_clock(Duration::from_secs(50));
    let rotated = body_of(refresh(&srv, &reg, field(&tokens, "refresh_token")).await).await;
    srv.advance_clock(Duration::from_secs(50));
    let again = refresh(&srv, &reg, field(&rotated, "refresh_token")).await;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "100 s after login, but 50 s after rotation"
    );
    let body = body_of(again).await;
    srv.advance_clock(Duration::from_secs(61));
    let expired = refresh(&srv, &reg, field(&body, "refresh_token")).await;
    assert_eq!(oauth_error_code(expired).await, "invalid_grant");
}

#[tokio::test]
async fn the_control_api_moves_the_clock() {
    let (srv, tokens) = logged_in_for(Duration::from_secs(5)).await;
    let clock = format!("{}/control/clock", srv.url());
    let moved = post_json(clock, &json!({"advance_ms": 6000})).await;
    assert_eq!(moved.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ping(&srv, tokens["access_token"].as_str()).await,
        StatusCode::UNAUTHORIZED
    );
}
