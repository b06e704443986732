mod common;

use common::*;
use oauth_test_server::Config;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn no_token_gets_401_with_resource_metadata_and_scope_but_no_error() {
    let srv = start(Config::default()).await;
    let response = mcp(&srv, None, "initialize", json!({})).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = challenge(&response);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(&format!(
        "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        srv.url()
    )));
    assert!(
        challenge.contains("scope=\"mcp:read mcp:write\""),
        "{challenge}"
    );
    assert!(
        !challenge.contains("error="),
        "RFC 6750 §3.1: no error without a token"
    );
    assert_eq!(srv.stats().mcp_401, 1);
}

#[tokio::test]
async fn a_bad_token_gets_invalid_token() {
    let srv = start(Config::default()).await;
    for token in ["garbage", "eyJhbGciOiJIUzI1NiJ9.e30.sig"] {
        let response = mcp(&srv, Some(token), "ping", json!({})).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(challenge(&response).contains("error=\"invalid_token\""));
    }
}

#[tokio::test]
async fn a_token_for_another_resource_is_refused() {
    let srv = start(Config::default()).await;
    let reg = register(&srv, "none").await;
    let (code, verifier) =
        authorize(&srv, &reg, &[("resource", "https://other.example/mcp")]).await;
    let response = token_request(
        &srv,
        &reg,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
            ("resource", "https://other.example/mcp"),
        ],
    )
    .await;
    let tokens: serde_json::Value = response.json().await.unwrap();
    let refused = mcp(&srv, tokens["access_token"].as_str(), "ping", json!({})).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&refused).contains("audience"),
        "{}",
        challenge(&refused)
    );
}

#[tokio::test]
async fn a_tool_scope_missing_from_the_token_gets_403_insufficient_scope_then_step_up_works() {
    let srv = start(Config {
        tool_scopes: vec![("get_time".into(), "mcp:admin".into())],
        ..Config::default()
    })
    .await;
    let reg = register(&srv, "none").await;
    let unauthenticated = mcp(&srv, None, "ping", json!({})).await;
    assert!(
        challenge(&unauthenticated).contains("scope=\"mcp:read mcp:write\""),
        "the reserved scope is not in the 401"
    );

    let (code, verifier) = authorize(&srv, &reg, &[("scope", "mcp:read")]).await;
    let tokens: serde_json::Value = exchange(&srv, &reg, &code, &verifier)
        .await
        .json()
        .await
        .unwrap();
    let ok = mcp(
        &srv,
        tokens["access_token"].as_str(),
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "x"}}),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK, "echo needs no extra scope");
    let denied = mcp(
        &srv,
        tokens["access_token"].as_str(),
        "tools/call",
        json!({"name": "get_time", "arguments": {}}),
    )
    .await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let challenge = challenge(&denied);
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"mcp:read mcp:admin\""),
        "the union of granted and needed: {challenge}"
    );
    assert_eq!(srv.stats().mcp_403, 1);

    let (code, verifier) = authorize(&srv, &reg, &[("scope", "mcp:read mcp:admin")]).await;
    let stepped: serde_json::Value = exchange(&srv, &reg, &code, &verifier)
        .await
        .json()
        .await
        .unwrap();
    let ok = mcp(
        &srv,
        stepped["access_token"].as_str(),
        "tools/call",
        json!({"name": "get_time", "arguments": {}}),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn json_rpc_errors_and_notifications() {
    let srv = start(Config::default()).await;
    let reg = register(&srv, "none").await;
    let access = login(&srv, &reg).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let unknown: serde_json::Value = mcp(&srv, Some(&access), "resources/list", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unknown["error"]["code"], -32601);
    let notification = http()
        .post(srv.mcp_url())
        .bearer_auth(&access)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(notification.status(), StatusCode::ACCEPTED);
    let get = http()
        .get(srv.mcp_url())
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
}
