//! The daemon's answers to what a running MCP server says about its tokens, against the OAuth
//! test server over loopback with real SQLite files: a 403 `insufficient_scope` steps up once
//! to the union of scopes (SEP-2350), bounded; a resource that moves to another authorization
//! server is followed there, with a registration of its own, without a restart (SEP-2352).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use mcpproxy_oauth::mcp::{BearerChallenge, McpClient, McpError};
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use mcpproxy_oauth::upstream::state::{Failure, LoginReason, Policy};
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use serde_json::json;

/// A supervisor of `srv` as "srv" asking for `mcp:read` only, its data in a fresh folder named
/// after `name`, logging in through a following browser: (folder, supervisor, launches).
async fn supervise(
    srv: &OAuthTestServer,
    name: &str,
    policy: Policy,
) -> (PathBuf, SupervisorHandle, Arc<AtomicU32>) {
    let dir = data_dir(name);
    let (browser, launches) = following_browser();
    let mut server = upstream("srv", srv);
    // Less than the resource offers (it lists mcp:admin too), so a tool can ask for more.
    server.scope = Some("mcp:read".into());
    let handle = start_supervisor(SupervisorConfig {
        policy,
        http_timeout: Duration::from_secs(5),
        ..supervisor_config(vec![server], &dir, browser)
    })
    .await;
    (dir, handle, launches)
}

/// Stops the supervisor and removes its folder.
async fn stop(handle: &SupervisorHandle, dir: &Path) {
    handle.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn mcp(srv: &OAuthTestServer) -> McpClient {
    mcp_client(srv, Duration::from_secs(5))
}

/// The resource accepts `token` (a ping goes through); `whose` says whose it is.
async fn assert_accepted(srv: &OAuthTestServer, token: &str, whose: &str) {
    if let Err(e) = mcp(srv).ping(Some(token)).await {
        panic!("{whose} is refused: {e}");
    }
}

/// Calls `get_time` with `token`: the 403's challenge, or `None` when the call succeeded.
async fn get_time(srv: &OAuthTestServer, token: &str) -> Option<BearerChallenge> {
    let mut client = mcp(srv);
    client
        .initialize(Some(token))
        .await
        .expect("initialize is allowed without extra scope");
    match client.call_tool(Some(token), "get_time", json!({})).await {
        Ok(_) => None,
        Err(McpError::Forbidden(challenge)) => Some(challenge),
        Err(e) => panic!("get_time failed otherwise: {e}"),
    }
}

#[tokio::test]
async fn a_403_for_more_scope_logs_in_once_for_the_union_and_the_new_token_works() {
    let srv = start(admin_tool()).await;
    let (dir, handle, launches) = supervise(&srv, "step-up", Policy::default()).await;
    let first = handle.reconnect("srv").await.expect("the first login");
    let old = first.access_token.secret().clone();

    let challenge = get_time(&srv, &old)
        .await
        .expect("the first token lacks mcp:admin");
    let stepped = handle
        .report_forbidden("srv", &old, challenge.clone())
        .await
        .expect("one login for more scope answers the report");
    let new = stepped.access_token.secret().clone();
    assert_ne!(new, old, "the step-up brought a new token");
    assert!(
        get_time(&srv, &new).await.is_none(),
        "the new token may call the tool"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 2, "one step-up login");
    assert_eq!(
        srv.stats().registrations,
        1,
        "the step-up reuses the client"
    );
    assert_eq!(
        stored(&dir, "SELECT scope FROM oauth_tokens"),
        "mcp:read mcp:admin",
        "the union of the granted and the demanded scopes is stored"
    );

    // A late report about the replaced token gets the new one, not another login.
    let late = handle
        .report_forbidden("srv", &old, challenge)
        .await
        .unwrap();
    assert_eq!(late.access_token.secret(), &new);
    assert_eq!(launches.load(Ordering::SeqCst), 2);
    stop(&handle, &dir).await;
}

#[tokio::test]
async fn a_server_that_is_never_satisfied_costs_one_step_up_then_forbidden() {
    let srv = start(admin_tool()).await;
    let (dir, handle, launches) = supervise(&srv, "never-enough", Policy::default()).await;
    let mut token = handle
        .reconnect("srv")
        .await
        .expect("the first login")
        .access_token
        .secret()
        .clone();
    // Every MCP request is refused from now on, with a demand for every scope.
    srv.inject(Fault::new(FaultTarget::Mcp, FaultKind::InsufficientScope))
        .unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let mut client = mcp(&srv);
        let Err(McpError::Forbidden(challenge)) = client.ping(Some(&token)).await else {
            panic!("the fault refuses every request with 403");
        };
        match handle.report_forbidden("srv", &token, challenge).await {
            Ok(grant) => {
                outcomes.push("stepped up");
                token = grant.access_token.secret().clone();
            }
            Err(e) => {
                outcomes.push(e.code());
                assert!(
                    e.to_string().contains("no scope beyond the granted"),
                    "the error says why no login follows: {e}"
                );
            }
        }
    }
    assert_eq!(
        outcomes,
        [
            "stepped up",
            "forbidden",
            "forbidden",
            "forbidden",
            "forbidden"
        ],
        "one login for the scope the server named; none for a demand already granted"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 2);
    stop(&handle, &dir).await;
}

#[tokio::test]
async fn a_headless_daemon_names_the_scope_and_an_explicit_login_asks_for_it() {
    let srv = start(admin_tool()).await;
    let policy = Policy {
        interactive: false,
        ..Policy::default()
    };
    let (dir, handle, launches) = supervise(&srv, "headless", policy).await;
    let first = handle.login("srv").await.expect("an explicit first login");
    let old = first.access_token.secret().clone();
    let challenge = get_time(&srv, &old).await.expect("403 for mcp:admin");
    let e = handle
        .report_forbidden("srv", &old, challenge)
        .await
        .expect_err("no browser opens by itself in a headless daemon");
    assert_eq!(
        e.failure(),
        Some(&Failure::NeedsLogin {
            reason: LoginReason::InsufficientScope {
                scope: "mcp:read mcp:admin".into()
            }
        }),
        "{e}"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 1);
    assert_eq!(
        handle.access_token("srv").await.unwrap().secret(),
        &old,
        "the token keeps serving the calls that need no more scope"
    );
    let stepped = handle.login("srv").await.expect("the explicit login");
    assert!(
        get_time(&srv, stepped.access_token.secret())
            .await
            .is_none(),
        "the explicit login asked for the scope the server named"
    );
    stop(&handle, &dir).await;
}

#[tokio::test]
async fn a_moved_authorization_server_is_followed_by_a_running_daemon() {
    // After two accepted requests the resource trusts only `new_as`.
    let (new_as, srv) = moving_authorization_server(2).await;
    let (dir, handle, launches) = supervise(&srv, "moved", Policy::default()).await;
    let old = handle
        .reconnect("srv")
        .await
        .expect("the first login, at the old server")
        .access_token
        .secret()
        .clone();
    let mut refused = None;
    for _ in 0..4 {
        match mcp(&srv).ping(Some(&old)).await {
            Ok(_) => {}
            Err(McpError::Unauthorized(challenge)) => {
                refused = Some(challenge);
                break;
            }
            Err(e) => panic!("ping failed otherwise: {e}"),
        }
    }
    let challenge = refused.expect("the resource refuses the old server's token once it moved");
    let moved = handle
        .report_unauthorized("srv", &old, Some(challenge))
        .await
        .expect("the daemon logs in at the new server");
    assert_accepted(&srv, moved.access_token.secret(), "the new server's token").await;
    assert_eq!(
        launches.load(Ordering::SeqCst),
        2,
        "one login at each server"
    );
    let (old_stats, new_stats) = (srv.stats(), new_as.stats());
    assert_eq!(
        old_stats.token_requests_for("refresh_token"),
        0,
        "the old server's refresh token is not presented once the resource moved"
    );
    assert_eq!(
        new_stats.registrations_and_logins(),
        (1, 1),
        "the new server got its own registration and one login"
    );
    assert_eq!(
        stored(
            &dir,
            "SELECT group_concat(issuer, ' ') FROM (SELECT issuer FROM oauth_clients ORDER BY issuer)"
        ),
        {
            let mut both = [srv.issuer(), new_as.issuer()];
            both.sort();
            both.join(" ")
        },
        "a client per authorization server, keyed by issuer"
    );
    assert_eq!(
        stored(&dir, "SELECT issuer FROM oauth_tokens"),
        new_as.issuer()
    );

    // The resource moves back. Its server's client is still stored: the login there reuses
    // it (no second registration), and the new server's client is never presented there.
    srv.trust_authorization_server(&srv.issuer());
    let refused = mcp(&srv).ping(Some(moved.access_token.secret())).await;
    let Err(McpError::Unauthorized(challenge)) = refused else {
        panic!("the resource refuses the new server's token once it moved back: {refused:?}");
    };
    // A token refused within seconds of its login makes the daemon wary of a loop: it backs
    // off once (1 s), then reads the metadata again and follows the move by itself.
    let mut changes = handle.subscribe();
    let back = match handle
        .report_unauthorized("srv", moved.access_token.secret(), Some(challenge))
        .await
    {
        Ok(grant) => grant.access_token.secret().clone(),
        Err(e) => {
            assert_eq!(e.code(), "backing_off", "{e}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(token) = handle.cached_access_token("srv").unwrap()
                    && token.secret() != moved.access_token.secret()
                {
                    break token.secret().clone();
                }
                tokio::time::timeout_at(deadline, changes.recv())
                    .await
                    .expect("the daemon follows the move back within 20 s")
                    .expect("state changes are delivered");
            }
        }
    };
    assert_accepted(&srv, &back, "the first server's new token").await;
    let (old_stats, new_stats) = (srv.stats(), new_as.stats());
    assert_eq!(
        old_stats.registrations_and_logins(),
        (1, 2),
        "the first server's stored client was reused for the second login there"
    );
    assert_eq!(
        new_stats.token_requests_for("refresh_token"),
        0,
        "the new server's refresh token is not presented once the resource moved back"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 3);
    assert_eq!(
        stored(&dir, "SELECT issuer FROM oauth_tokens"),
        srv.issuer()
    );
    assert_eq!(
        stored(&dir, "SELECT count(*) || '' FROM oauth_clients"),
        "2",
        "both clients are kept"
    );
    stop(&handle, &dir).await;
}

#[tokio::test]
async fn a_re_registration_that_finds_another_authorization_server_follows_the_move() {
    let new_as = start(Config::default()).await;
    let srv = start(Config::default()).await;
    let (dir, handle, launches) = supervise(&srv, "moved-reregister", Policy::default()).await;
    handle
        .reconnect("srv")
        .await
        .expect("the first login, at the first server");
    // The resource moves before anyone was refused, and the first server rejects the client
    // at the next refresh: registering again discovers the new server.
    srv.trust_authorization_server(&new_as.issuer());
    srv.inject(Fault {
        count: Some(1),
        ..Fault::new(FaultTarget::Refresh, FaultKind::InvalidClient)
    })
    .unwrap();
    let grant = handle
        .refresh("srv")
        .await
        .expect("the daemon follows the move to the new server");
    assert_accepted(&srv, grant.access_token.secret(), "the new server's token").await;
    let (old_stats, new_stats) = (srv.stats(), new_as.stats());
    assert_eq!(old_stats.token_requests_for("refresh_token"), 1);
    assert_eq!(
        new_stats.token_requests_for("refresh_token"),
        0,
        "the first server's refresh token is never presented at the new one"
    );
    assert_eq!(
        new_stats.registrations_and_logins(),
        (1, 1),
        "the client registered during the refresh is the one the login there uses"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 2);
    assert_eq!(
        stored(&dir, "SELECT issuer FROM oauth_tokens"),
        new_as.issuer()
    );
    stop(&handle, &dir).await;
}
