//! Logins bounded like refreshes (issue #23), against the OAuth test server over loopback and
//! a real SQLite file: 300 servers logging in at once never run more logins than the login
//! limit nor show the browser more tabs than the tab limit, and every login succeeds; a login
//! whose registration answers 503 (or hangs) for a while recovers by itself once the server
//! is healthy, with no browser opened for the failed attempts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::scheduler::SchedulerCounters;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use url::Url;

/// What the browser saw: launches, and tabs waiting for the authorization server's answer
/// now and at most at once.
#[derive(Default)]
struct Tabs {
    launched: AtomicUsize,
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// A browser that approves at once, like the test server: it asks `/authorize`, then brings
/// the redirect to the login's loopback listener. A tab counts as open from its launch until
/// it has the redirect, before it delivers it: the login holds its tab at least that long,
/// so this count can never exceed the tab limit while the limit holds.
fn counting_browser() -> (BrowserLauncher, Arc<Tabs>) {
    let tabs = Arc::new(Tabs::default());
    let seen = tabs.clone();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let browser = BrowserLauncher::handler(move |url: Url| {
        seen.launched.fetch_add(1, Ordering::SeqCst);
        let open = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
        seen.peak.fetch_max(open, Ordering::SeqCst);
        let (tabs, client) = (seen.clone(), client.clone());
        tokio::spawn(async move {
            let redirect = client.get(url).send().await.ok().and_then(|answer| {
                let location = answer.headers().get(reqwest::header::LOCATION)?;
                Url::parse(location.to_str().ok()?).ok()
            });
            tabs.open.fetch_sub(1, Ordering::SeqCst);
            if let Some(callback) = redirect {
                let _ = client.get(callback).send().await;
            }
        });
    });
    (browser, tabs)
}

fn config(
    srv: &OAuthTestServer,
    name: &str,
    servers: usize,
    browser: BrowserLauncher,
) -> SupervisorConfig {
    let servers = (0..servers)
        .map(|i| upstream(&format!("srv-{i:03}"), srv))
        .collect();
    SupervisorConfig {
        login_timeout: Duration::from_secs(120),
        ..supervisor_config(servers, &data_dir(name), browser)
    }
}

/// Asks every server for a token at once, and waits (bounded) until all are connected.
async fn log_all_in(handle: &SupervisorHandle, within: Duration) {
    let names = handle.servers().to_vec();
    for name in &names {
        let (handle, name) = (handle.clone(), name.clone());
        // The first answer may be a failure the machine recovers from by itself.
        tokio::spawn(async move { handle.reconnect(&name).await });
    }
    for name in &names {
        wait_for_phase(handle, name, "connected", within).await;
    }
}

#[tokio::test]
async fn three_hundred_logins_at_once_stay_within_the_login_and_tab_limits() {
    const SERVERS: usize = 300;
    const LOGINS: usize = 64;
    const TABS: usize = 4;
    let srv = start(Config::default()).await;
    let (browser, tabs) = counting_browser();
    let config = SupervisorConfig {
        max_concurrent_logins: LOGINS,
        max_browser_tabs: TABS,
        ..config(&srv, "login-limits-300", SERVERS, browser)
    };
    let handle = start_supervisor(config).await;
    let names = handle.servers().to_vec();
    for name in &names {
        let (handle, name) = (handle.clone(), name.clone());
        tokio::spawn(async move { handle.reconnect(&name).await });
    }
    // While they run, the queues are seen from outside: logins wait for a slot.
    wait_until(
        "logins waiting in the queue",
        Duration::from_secs(60),
        || handle.scheduler_counters().logins_queued > 0,
    )
    .await;
    for name in &names {
        wait_for_phase(&handle, name, "connected", Duration::from_secs(300)).await;
    }
    let counters = handle.scheduler_counters();
    assert_eq!((counters.login_limit, counters.tab_limit), (LOGINS, TABS));
    assert_eq!(
        counters.logins_peak, LOGINS,
        "300 logins at once fill the login limit and never pass it: {counters:?}"
    );
    assert!(
        (1..=TABS).contains(&counters.tabs_peak),
        "tabs open at once: {counters:?}"
    );
    let (running, queued) = (counters.logins_running, counters.logins_queued);
    let (open, waiting) = (counters.tabs_open, counters.tabs_queued);
    assert_eq!(
        (running, queued, open, waiting),
        (0, 0, 0, 0),
        "every slot is given back: {counters:?}"
    );
    let browser_peak = tabs.peak.load(Ordering::SeqCst);
    assert!(
        (1..=TABS).contains(&browser_peak),
        "the browser had {browser_peak} tabs waiting at once; the limit is {TABS}"
    );
    assert_eq!(
        tabs.launched.load(Ordering::SeqCst),
        SERVERS,
        "one tab a login"
    );
    let stats = srv.stats();
    assert_eq!(stats.authorize_requests, SERVERS as u64);
    assert_eq!(
        stats.token_requests_for("authorization_code"),
        SERVERS as u64
    );
    assert_eq!(stats.registrations, SERVERS as u64);
    handle.shutdown().await;
}

/// `fault` on every registration until `times` have fired: the logins it hits fail before
/// any browser opens, back off, and log in by themselves once the server answers.
async fn registration_recovers(name: &str, fault: Fault, times: u64) {
    const SERVERS: usize = 3;
    let srv = start(Config::default()).await;
    srv.inject(fault.times(times as u32)).unwrap();
    let (browser, tabs) = counting_browser();
    let config = SupervisorConfig {
        http_timeout: Duration::from_secs(1),
        ..config(&srv, name, SERVERS, browser)
    };
    let handle = start_supervisor(config).await;
    log_all_in(&handle, Duration::from_secs(60)).await;
    let stats = srv.stats();
    assert_eq!(
        stats.faults_fired.get("register"),
        Some(&times),
        "the failing registrations were tried: {stats:?}"
    );
    assert_eq!(
        tabs.launched.load(Ordering::SeqCst),
        SERVERS,
        "no browser opened for a login that failed before it"
    );
    assert_eq!(stats.authorize_requests, SERVERS as u64);
    assert_eq!(stats.registrations, SERVERS as u64);
    let counters = handle.scheduler_counters();
    assert_eq!((counters.logins_running, counters.tabs_open), (0, 0));
    handle.shutdown().await;
}

#[tokio::test]
async fn a_registration_answering_503_for_a_while_recovers_without_a_browser() {
    let fault = Fault::new(FaultTarget::Register, FaultKind::TemporarilyUnavailable);
    registration_recovers("login-limits-503", fault, 6).await;
}

#[tokio::test]
async fn a_registration_that_hangs_for_a_while_recovers_without_a_browser() {
    let fault = Fault::new(FaultTarget::Register, FaultKind::Hang);
    registration_recovers("login-limits-hang", fault, 2).await;
}

/// Logins waiting for a person who never answers, and more waiting for their slot and for a
/// tab: a shutdown cancels them all, and every slot and every place in a queue is given back.
#[tokio::test]
async fn a_shutdown_gives_back_the_slots_of_waiting_and_queued_logins() {
    const SERVERS: usize = 12;
    let srv = start(Config::default()).await;
    let launched = Arc::new(AtomicUsize::new(0));
    let seen = launched.clone();
    // A browser whose person never answers.
    let browser = BrowserLauncher::handler(move |_url: Url| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let config = SupervisorConfig {
        max_concurrent_logins: 4,
        max_browser_tabs: 2,
        ..config(&srv, "login-limits-shutdown", SERVERS, browser)
    };
    let handle = start_supervisor(config).await;
    for name in handle.servers().to_vec() {
        let handle = handle.clone();
        tokio::spawn(async move { handle.reconnect(&name).await });
    }
    let full = |c: SchedulerCounters| {
        let logins = (c.logins_running, c.logins_queued);
        logins == (4, SERVERS - 4) && (c.tabs_open, c.tabs_queued) == (2, 2)
    };
    wait_until(
        "4 logins running (2 with an open tab, 2 waiting for one) and 8 queued",
        Duration::from_secs(30),
        || full(handle.scheduler_counters()) && launched.load(Ordering::SeqCst) == 2,
    )
    .await;
    ends_within("the shutdown", Duration::from_secs(30), handle.shutdown()).await;
    let counters = handle.scheduler_counters();
    assert_eq!(
        (
            counters.logins_running,
            counters.logins_queued,
            counters.tabs_open,
            counters.tabs_queued
        ),
        (0, 0, 0, 0),
        "{counters:?}"
    );
    assert_eq!((counters.logins_peak, counters.tabs_peak), (4, 2));
    assert_eq!(
        launched.load(Ordering::SeqCst),
        2,
        "no tab opened past the limit"
    );
}
