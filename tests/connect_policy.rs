//! `connect` follows the daemon's state machine with a run's policy flags, and keeps no policy
//! of its own: here, a registered client the authorization server rejects at refresh. A
//! one-shot run has no registration to repair (`Policy::reregister` off), so the machine asks
//! for a login with a new client, which is what the run does.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mcpproxy_oauth::connect::{ConnectOptions, connect};
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget};
use serde_json::json;
use url::Url;

#[tokio::test]
async fn a_rejected_registered_client_is_replaced_by_a_login_with_a_new_registration() {
    let srv = start(Config::default()).await;
    // The first token is expired when the resource sees it (a 401 after a login: a refresh),
    // and the refresh is refused as `invalid_client`.
    srv.inject(Fault::new(FaultTarget::Token, FaultKind::AlreadyExpired).times(1))
        .unwrap();
    srv.inject(Fault::new(FaultTarget::Refresh, FaultKind::InvalidClient).times(1))
        .unwrap();
    let (browser, launches) = following_browser();
    let options = ConnectOptions {
        call_tool: Some(("echo".into(), json!({"message": "hello"}))),
        timeout: Duration::from_secs(20),
        ..ConnectOptions::new(Url::parse(&srv.mcp_url()).unwrap(), browser)
    };
    let report = connect(options)
        .await
        .expect("the run logs in again with a new client and goes on");
    assert_eq!(report.tool_result.unwrap()["content"][0]["text"], "hello");
    let stats = srv.stats();
    assert_eq!(
        stats.token_requests_for("refresh_token"),
        1,
        "one refresh, refused"
    );
    assert_eq!(
        stats.registrations, 2,
        "the rejected client is replaced by a new registration"
    );
    assert_eq!(
        report.authorizations, 2,
        "a second login, with the new client"
    );
    assert_eq!(launches.load(Ordering::SeqCst), 2);
}
