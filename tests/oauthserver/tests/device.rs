//! The RFC 8628 device authorization grant of the test server: the endpoint and its metadata,
//! `authorization_pending`, `slow_down` for a poll sooner than the interval (which then grows by
//! 5 s), approval at the verification page, tokens with a refresh token, one redemption only.

mod common;

use std::time::Duration;

use common::*;
use oauth_test_server::{Config, OAuthTestServer};
use reqwest::{Response, StatusCode};
use serde_json::Value;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn poll(srv: &OAuthTestServer, reg: &Registered, code: &str) -> Value {
    body_of(token_request(srv, reg, &[("grant_type", GRANT), ("device_code", code)]).await).await
}

/// A device authorization request of `reg` for `scope`.
async fn device_authorization(srv: &OAuthTestServer, reg: &Registered, scope: &str) -> Response {
    http()
        .post(format!("{}/device_authorization", srv.issuer()))
        .form(&[("client_id", reg.client_id.as_str()), ("scope", scope)])
        .send()
        .await
        .unwrap()
}

/// The test server with the device grant on (`interval` s between polls) and a public client.
async fn device_server(interval: u64) -> (OAuthTestServer, Registered) {
    with_public_client(Config {
        device_grant: true,
        device_interval_secs: interval,
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn metadata_lists_the_device_endpoint_only_when_enabled() {
    for enabled in [false, true] {
        let srv = start(Config::with(|c| c.device_grant = enabled)).await;
        let doc = as_metadata(&srv).await;
        let endpoint = doc["device_authorization_endpoint"].as_str();
        if enabled {
            assert_eq!(
                endpoint,
                Some(format!("{}/device_authorization", srv.issuer()).as_str())
            );
            assert!(
                doc["grant_types_supported"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == GRANT)
            );
        } else {
            assert_eq!(endpoint, None);
        }
    }
}

#[tokio::test]
async fn a_device_code_is_pending_slowed_down_approved_and_redeemed_once() {
    let (srv, reg) = device_server(2).await;
    let response = device_authorization(&srv, &reg, "mcp:read").await;
    assert_eq!(response.status(), StatusCode::OK);
    let grant = body_of(response).await;
    assert_eq!(grant["interval"], 2);
    assert_eq!(grant["expires_in"], 600);
    let code = grant["device_code"].as_str().unwrap();
    let user_code = grant["user_code"].as_str().unwrap();
    assert_eq!(
        grant["verification_uri_complete"],
        format!("{}/device?user_code={user_code}", srv.issuer())
    );

    assert_eq!(
        poll(&srv, &reg, code).await["error"],
        "authorization_pending"
    );
    // At once again: sooner than the 2 s interval.
    assert_eq!(poll(&srv, &reg, code).await["error"], "slow_down");
    // The interval is now 7 s: a poll 5 s later is still too soon.
    srv.advance_clock(Duration::from_secs(5));
    assert_eq!(poll(&srv, &reg, code).await["error"], "slow_down");
    srv.advance_clock(Duration::from_secs(13));
    assert_eq!(
        poll(&srv, &reg, code).await["error"],
        "authorization_pending"
    );

    let page = http()
        .get(grant["verification_uri_complete"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    srv.advance_clock(Duration::from_secs(20));
    let tokens = poll(&srv, &reg, code).await;
    assert!(tokens["access_token"].is_string(), "{tokens}");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    assert_eq!(tokens["scope"], "mcp:read");
    srv.advance_clock(Duration::from_secs(20));
    assert_eq!(poll(&srv, &reg, code).await["error"], "invalid_grant");

    let stats = srv.stats();
    assert_eq!(stats.device_authorizations, 1);
    assert_eq!(stats.device_polls, 6);
    assert_eq!(stats.device_slow_downs, 2);
    assert_eq!(stats.token_requests_for(GRANT), 6);
    assert_eq!(srv.secrets().device_codes, vec![code.to_string()]);
}

#[tokio::test]
async fn unknown_scopes_and_unknown_user_codes_are_refused() {
    let (srv, reg) = device_server(Config::default().device_interval_secs).await;
    let response = device_authorization(&srv, &reg, "admin").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = body_of(response).await;
    assert_eq!(body["error"], "invalid_scope");
    let page = http()
        .get(format!("{}/device?user_code=NOPE-NOPE", srv.issuer()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
}
