//! The protocol engine against the real OAuth test server over loopback: login, refresh with
//! rotation, invalid_grant, and every transient fault class reported as transient (with the
//! refresh token still good afterwards).

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use mcpproxy_oauth::mcp::{McpClient, McpError};
use mcpproxy_oauth::oauth::http::OAuthHttp;
use mcpproxy_oauth::oauth::{Endpoint, ErrorClass, OAuthError};
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget};
use url::Url;

#[tokio::test]
async fn login_registers_authorizes_and_the_token_calls_tools() {
    let srv = start(token_ttl(120)).await;
    let before = SystemTime::now();
    let session = login(&srv, OAuthHttp::default()).await;
    let token = &session.token;
    assert_eq!(token.token_type, "Bearer");
    assert!(token.refresh_token.is_some());
    assert_eq!(
        token.scope.as_deref(),
        Some("mcp:read mcp:write"),
        "no scope challenge: the resource's scopes_supported"
    );
    let expires_at = token.expires_at.expect("expires_in was sent");
    let lifetime = expires_at.duration_since(before).unwrap();
    assert!(
        lifetime >= Duration::from_secs(120) && lifetime < Duration::from_secs(125),
        "absolute expiry on receipt: {lifetime:?}"
    );
    let stats = srv.stats();
    assert_eq!(
        (
            stats.registrations,
            stats.authorize_requests,
            stats.token_requests_for("authorization_code")
        ),
        (1, 1, 1)
    );
    assert!(
        stats.resources_received.iter().all(|r| *r == srv.mcp_url())
            && stats.resources_received.len() == 2
    );

    let mut mcp = McpClient::new(Url::parse(&srv.mcp_url()).unwrap(), Duration::from_secs(10));
    let access = token.access_token.secret().clone();
    let init = mcp.initialize(Some(&access)).await.unwrap();
    assert_eq!(init["serverInfo"]["name"], "oauth-test-server");
    let tools = mcp.list_tools(Some(&access)).await.unwrap();
    assert_eq!(tools["tools"].as_array().unwrap().len(), 2);
    let echo = mcp
        .call_tool(Some(&access), "echo", serde_json::json!({"message": "hi"}))
        .await
        .unwrap();
    assert_eq!(echo["content"][0]["text"], "hi");
    assert!(
        !format!("{token:?}").contains(&access),
        "Debug of a token set never shows the token"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_with_a_typed_challenge_and_refresh_rotates() {
    let srv = start(token_ttl(30)).await;
    let session = login(&srv, OAuthHttp::default()).await;
    srv.advance_clock(Duration::from_secs(32));
    let mut mcp = McpClient::new(Url::parse(&srv.mcp_url()).unwrap(), Duration::from_secs(10));
    let refused = mcp
        .initialize(Some(session.token.access_token.secret()))
        .await
        .unwrap_err();
    let McpError::Unauthorized(challenge) = refused else {
        panic!("expected 401, got {refused:?}")
    };
    assert_eq!(challenge.error.as_deref(), Some("invalid_token"));
    assert_eq!(
        challenge.resource_metadata,
        Some(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            srv.url()
        ))
    );

    let old_refresh = session.token.refresh_token.clone().unwrap();
    let fresh = session.refresh_with_login_token().await.unwrap();
    assert_ne!(
        fresh.refresh_token.as_ref().unwrap().secret(),
        old_refresh.secret(),
        "rotated"
    );
    assert_eq!(fresh.scope.as_deref(), Some("mcp:read mcp:write"));
    mcp.initialize(Some(fresh.access_token.secret()))
        .await
        .expect("the refreshed token works");
    assert_eq!(
        srv.stats().resources_received.last(),
        Some(&srv.mcp_url()),
        "resource is sent on refresh too"
    );

    // Presenting the rotated-out token again is invalid_grant, permanent; the family is gone.
    let reuse = session
        .endpoint
        .refresh(&session.http, &old_refresh, None, SystemTime::now(), None)
        .await
        .unwrap_err();
    assert_eq!(reuse.oauth_code(), Some("invalid_grant"));
    assert_eq!(reuse.class(), ErrorClass::Permanent);
    let family_gone = session
        .endpoint
        .refresh(
            &session.http,
            fresh.refresh_token.as_ref().unwrap(),
            None,
            SystemTime::now(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(family_gone.oauth_code(), Some("invalid_grant"));
    assert_no_secret(
        &srv,
        &format!("{reuse} {reuse:?} {family_gone} {family_gone:?}"),
    );
}

#[tokio::test]
async fn without_rotation_the_old_refresh_token_is_kept() {
    let srv = start(Config::with(|c| c.rotate_refresh_tokens = false)).await;
    let session = login(&srv, OAuthHttp::default()).await;
    let refresh_token = session.token.refresh_token.clone().unwrap();
    let fresh = session.refresh_with_login_token().await.unwrap();
    assert_eq!(
        fresh.refresh_token.unwrap().secret(),
        refresh_token.secret()
    );
}

#[tokio::test]
async fn permanent_refusals_are_permanent() {
    for (kind, code) in [
        (FaultKind::InvalidGrant, "invalid_grant"),
        (FaultKind::InvalidClient, "invalid_client"),
        (FaultKind::InvalidScope, "invalid_scope"),
    ] {
        let srv = start(Config::default()).await;
        let session = login(&srv, OAuthHttp::default()).await;
        srv.inject(Fault::new(FaultTarget::Refresh, kind).times(1))
            .unwrap();
        let e = session.refresh_with_login_token().await.unwrap_err();
        assert_eq!(e.oauth_code(), Some(code));
        assert_eq!(e.class(), ErrorClass::Permanent, "{kind}");
        assert_no_secret(&srv, &format!("{e} {e:?}"));
    }
}

/// Each transient fault: the error says transient, names the token endpoint, leaks nothing,
/// and the same refresh token works once the server recovers.
#[tokio::test]
async fn every_transient_fault_class_is_reported_as_transient() {
    let http = OAuthHttp::new(Duration::from_millis(800));
    type Expectation = fn(&OAuthError) -> bool;
    let cases: Vec<(FaultKind, Option<u64>, Expectation)> = vec![
        (
            FaultKind::ServerError,
            None,
            |e| matches!(e, OAuthError::Server { code, status: Some(500), .. } if code == "server_error"),
        ),
        (FaultKind::TemporarilyUnavailable, None, |e| {
            matches!(
                e,
                OAuthError::Server {
                    status: Some(503),
                    ..
                }
            )
        }),
        (FaultKind::RateLimited, Some(3_000), |e| {
            e.class()
                == ErrorClass::Transient {
                    retry_after: Some(Duration::from_secs(3)),
                }
        }),
        (FaultKind::Hang, None, |e| {
            matches!(
                e,
                OAuthError::Timeout {
                    endpoint: Endpoint::Token,
                    ..
                }
            )
        }),
        (FaultKind::Slow, Some(2_000), |e| {
            matches!(e, OAuthError::Timeout { .. })
        }),
        (FaultKind::DropConnection, None, |e| {
            matches!(
                e,
                OAuthError::Transport {
                    endpoint: Endpoint::Token,
                    ..
                }
            )
        }),
        (FaultKind::MalformedJson, None, |e| {
            matches!(
                e,
                OAuthError::Malformed {
                    endpoint: Endpoint::Token,
                    ..
                }
            )
        }),
        (FaultKind::MissingAccessToken, None, |e| {
            matches!(e, OAuthError::Malformed { .. })
                && e.to_string()
                    .contains("token response has no `access_token` field")
        }),
        (FaultKind::ExpiresInZero, None, |e| {
            matches!(
                e,
                OAuthError::TokenAlreadyExpired {
                    rotated_refresh_token: Some(_),
                    ..
                }
            )
        }),
    ];
    for (kind, delay_ms, expected) in cases {
        let srv = start(Config::default()).await;
        let session = login(&srv, http.clone()).await;
        let mut refresh_token = session.token.refresh_token.clone().unwrap();
        let mut fault = Fault::new(FaultTarget::Refresh, kind).times(1);
        fault.delay_ms = delay_ms;
        srv.inject(fault).unwrap();
        let e = session
            .endpoint
            .refresh(&http, &refresh_token, None, SystemTime::now(), None)
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{kind}: {e} should be transient");
        assert!(expected(&e), "{kind}: unexpected error {e:?}");
        assert_no_secret(&srv, &format!("{e} {e:?}"));
        if let OAuthError::TokenAlreadyExpired {
            rotated_refresh_token: Some(rotated),
            ..
        } = e
        {
            refresh_token = rotated; // the server rotated: the new one is what works now
        }
        let recovered = session
            .endpoint
            .refresh(&http, &refresh_token, None, SystemTime::now(), None)
            .await;
        assert!(
            recovered.is_ok(),
            "{kind}: the refresh token survives a transient fault: {:?}",
            recovered.err()
        );
    }
}

#[tokio::test]
async fn a_response_without_expires_in_has_an_unknown_expiry() {
    let srv = start(Config::default()).await;
    let session = login(&srv, OAuthHttp::default()).await;
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::ExpiresInMissing).times(1))
        .unwrap();
    let fresh = session.refresh_with_login_token().await.unwrap();
    assert_eq!(fresh.expires_at, None);
    assert!(
        fresh.is_valid_for(Duration::from_secs(3600), SystemTime::now()),
        "unknown expiry: used until refused"
    );
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let srv = start(Config::default()).await;
    let session = login(&srv, OAuthHttp::default()).await;
    srv.shutdown().await;
    let e = session.refresh_with_login_token().await.unwrap_err();
    assert!(matches!(e, OAuthError::Transport { .. }), "{e:?}");
    assert!(e.is_transient());
}
