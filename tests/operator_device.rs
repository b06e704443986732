//! A hostile device authorization endpoint (issue #20): the test server announces a
//! `javascript:` verification URI, a plain-http one on another host, or a user code no person
//! could type (an escape sequence, 200 characters). The device login fails with an error naming
//! the field, before the browser command, the prompt, a log line or the status sees the value;
//! nothing is polled. A well-behaved server's login goes through the same browser command.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use oauth_test_server::{Config, DeviceAnnounced};

/// What each hostile server announces, the field the error must name, and the text that
/// must appear nowhere.
fn hostile() -> Vec<(DeviceAnnounced, &'static str, String)> {
    let script = "javascript:alert(document.cookie)//".to_string();
    let plain = "http://evil.example/device?user_code=WDJB-MJHT".to_string();
    let escape = "\u{1b}]8;;https://evil.example\u{7}WDJB".to_string();
    let long = "W".repeat(200);
    vec![
        (
            DeviceAnnounced {
                verification_uri: Some(script.clone()),
                ..DeviceAnnounced::default()
            },
            "verification_uri must be an https URL",
            script,
        ),
        (
            DeviceAnnounced {
                verification_uri_complete: Some(plain.clone()),
                ..DeviceAnnounced::default()
            },
            "verification_uri_complete must be an https URL",
            plain,
        ),
        (
            DeviceAnnounced {
                user_code: Some(escape.clone()),
                ..DeviceAnnounced::default()
            },
            "user_code must be 1 to 64 characters",
            "evil.example".into(),
        ),
        (
            DeviceAnnounced {
                user_code: Some(long.clone()),
                ..DeviceAnnounced::default()
            },
            "user_code must be 1 to 64 characters",
            long,
        ),
    ]
}

fn device_server(announced: DeviceAnnounced) -> Config {
    Config {
        device_announced: announced,
        ..device_grant_server()
    }
}

/// A browser command that writes every URL it is given to `dir/opened`, one a line.
fn recording_browser(dir: &Path) -> String {
    let script = dir.join("record-url");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n",
            dir.join("opened").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.to_str().unwrap().to_string()
}

fn connect_by_device(mcp_url: &str, browser: &str) -> tokio::process::Command {
    let mut command = bin(&[
        "connect",
        "--device-code",
        "--browser-command",
        browser,
        "--timeout",
        "30s",
        "--log-format",
        "json",
        "--log-level",
        "info",
        mcp_url,
    ]);
    command.kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_hostile_device_prompt_before_showing_it() {
    let dir = temp_dir("device-hostile-connect");
    let browser = recording_browser(&dir);
    let opened = dir.join("opened");

    // A well-behaved server: the browser command gets the URL with the code, which approves.
    let srv = start(device_server(DeviceAnnounced::default())).await;
    let login = tokio::spawn(output_within(
        connect_by_device(&srv.mcp_url(), &browser),
        Duration::from_secs(40),
    ));
    wait_until(
        "the browser command records the verification URL",
        Duration::from_secs(20),
        || std::fs::read_to_string(&opened).is_ok_and(|t| t.ends_with('\n')),
    )
    .await;
    let url = std::fs::read_to_string(&opened).unwrap();
    assert!(url.trim().contains("user_code="), "{url}");
    let approved = reqwest::get(url.trim()).await.unwrap();
    assert!(approved.status().is_success(), "{}", approved.status());
    let out = login.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(&opened).unwrap();
    srv.shutdown().await;

    for (announced, named, value) in hostile() {
        let srv = start(device_server(announced)).await;
        let out = output_within(
            connect_by_device(&srv.mcp_url(), &browser),
            Duration::from_secs(40),
        )
        .await;
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains(named), "names the field: {said}");
        assert!(
            !said.contains(&value),
            "{named}: never shown or logged: {said}"
        );
        assert!(!said.contains("To sign in"), "{named}: no prompt: {said}");
        assert!(
            !opened.exists(),
            "{named}: the browser command was given {:?}",
            std::fs::read_to_string(&opened)
        );
        let stats = srv.stats();
        assert_eq!(stats.device_authorizations, 1, "{named}: {stats:?}");
        assert_eq!(stats.device_polls, 0, "{named}: nothing polled: {stats:?}");
        srv.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_hostile_device_prompt_before_its_status_shows_it() {
    captured_logs();
    for (announced, named, value) in hostile() {
        let srv = start(device_server(announced)).await;
        let (browser, mut urls) = reporting_browser();
        let (handle, dir) = device_code_supervisor(&srv, browser, "device-hostile-daemon").await;
        let error = ends_within(
            "the device login",
            Duration::from_secs(30),
            handle.login("dev"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains(named), "names the field: {error}");
        assert!(!error.contains(&value), "{error}");
        let status = serde_json::to_string(&handle.status().await.unwrap()).unwrap();
        assert!(
            !status.contains(&value),
            "{named}: not in the status: {status}"
        );
        assert!(
            !status.contains("\"device_login\":{"),
            "{named}: no prompt published: {status}"
        );
        assert!(
            urls.try_recv().is_err(),
            "{named}: nothing handed to the launcher"
        );
        assert_eq!(srv.stats().device_polls, 0, "{named}: nothing polled");
        handle.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        srv.shutdown().await;
    }
    // Every line but the debug HTTP exchange log (which keeps an answer's shape as the server
    // sent it, escaped) is free of the values.
    let logs = captured_logs();
    assert!(
        logs.contains("must be 1 to 64 characters"),
        "the failure is logged"
    );
    for line in logs
        .lines()
        .filter(|l| !l.contains("\"target\":\"mcpproxy_oauth::http\""))
    {
        for (_, named, value) in hostile() {
            let escaped = serde_json::to_string(&value).unwrap();
            let escaped = escaped.trim_matches('"');
            assert!(
                !line.contains(&value) && !line.contains(escaped),
                "{named}: a log line shows it: {line}"
            );
        }
    }
}
