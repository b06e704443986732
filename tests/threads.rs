//! Every thread the project starts has a name of its own that Linux shows whole (the kernel
//! keeps 15 bytes of a thread's name: "mcpproxy-oauth-actors", "-flows" and "-api" all showed
//! as "mcpproxy-oauth-"). Read from /proc, as `ps -L` and `top -H` read them.

mod common;

use std::time::Duration;

use common::*;
use mcpproxy_oauth::api::{ApiConfig, ApiKey, ApiServer, AuthLinks};
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use oauth_test_server::Config;

/// The names of this process's threads, as the kernel keeps them.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task (Linux)")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

#[tokio::test]
async fn the_supervisor_store_flows_and_api_threads_show_their_whole_names() {
    let srv = start(Config::default()).await;
    let servers = upstreams(&srv, &["srv"]);
    let links = AuthLinks::new(&servers);
    let config = supervisor_config(servers, &data_dir("threads"), BrowserLauncher::PrintOnly);
    let handle = start_supervisor(config).await;
    let mut api = ApiConfig::new("127.0.0.1:0".parse().unwrap());
    api.api_key = Some(ApiKey::new("threads-test-api-key-0123").unwrap());
    let api = ApiServer::start(handle.clone(), links, api)
        .await
        .expect("the API starts");
    // The flow runtime's workers start with the supervisor; a status call passes the actors.
    handle.status().await.unwrap();
    let names = thread_names();
    for name in ["oauth-actors", "oauth-flows", "oauth-store", "oauth-api"] {
        assert!(name.len() <= 15, "{name} is longer than Linux keeps");
        assert!(
            names.iter().any(|n| n == name),
            "no thread {name}: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("mcpproxy-oauth")),
        "a name cut short: {names:?}"
    );
    ends_within("the API stopping", Duration::from_secs(10), api.stop()).await;
    handle.shutdown().await;
}
