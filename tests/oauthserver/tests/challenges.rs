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
    let (srv, reg) = with_public_client(Config::default()).await;
    let other = [("resource", "https://other.example/mcp")];
    let (code, verifier) = authorize(&srv, &reg, &other).await;
    let tokens = body_of(exchange_with(&srv, &reg, &code, &verifier, &other).await).await;
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
    let (srv, reg) = with_public_client(Config::with(|c| {
        c.tool_scopes = vec![("get_time".into(), "mcp:admin".into())]
    }))
    .await;
    let unauthenticated = mcp(&srv, None, "ping", json!({})).await;
    assert!(
        challenge(&unauthenticated).contains("scope=\"mcp:read mcp:write\""),
        "the reserved scope is not in the 401"
    );

    let tokens = login_with(&srv, &reg, &[("scope", "mcp:read")]).await;
    let access = tokens["access_token"].as_str();
    let get_time = || json!({"name": "get_time", "arguments": {}});
    let echo = json!({"name": "echo", "arguments": {"message": "x"}});
    let ok = mcp(&srv, access, "tools/call", echo).await;
    assert_eq!(ok.status(), StatusCode::OK, "echo needs no extra scope");
    let denied = mcp(&srv, access, "tools/call", get_time()).await;
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

    let stepped = login_with(&srv, &reg, &[("scope", "mcp:read mcp:admin")]).await;
    let ok = mcp(
        &srv,
        stepped["access_token"].as_str(),
        "tools/call",
        get_time(),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn json_rpc_errors_and_notifications() {
    let (srv, _reg, tokens) = logged_in_with(Config::default()).await;
    let access = field(&tokens, "access_token");
    let unknown = body_of(mcp(&srv, Some(access), "resources/list", json!({})).await).await;
    assert_eq!(unknown["error"]["code"], -32601);
    let notification = http()
        .post(srv.mcp_url())
        .bearer_auth(access)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(notification.status(), StatusCode::ACCEPTED);
    let get = http()
        .get(srv.mcp_url())
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
}
