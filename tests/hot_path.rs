//! The token hot path allocates nothing: a still-valid token is handed out as a shared value,
//! read lock-free from the published snapshot. Counted by a global allocator that counts only
//! the allocations of the measuring thread.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use mcpproxy_oauth::supervisor::SupervisorConfig;
use oauth_test_server::Config;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[tokio::test]
async fn a_valid_token_is_handed_out_without_any_allocation() {
    let srv = start(Config::default()).await;
    let (browser, _) = following_browser();
    let dir = data_dir("hot");
    let server = upstream("srv", &srv);
    let handle = start_supervisor(SupervisorConfig {
        browser,
        ..SupervisorConfig::new(vec![server], dir)
    })
    .await;
    handle.reconnect("srv").await.expect("login");
    let tokens = handle.server_tokens("srv").unwrap();
    // The counter itself works.
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 16]))) >= 1);
    // The first read on a thread registers it with arc-swap (one allocation, once per thread).
    let mut lengths = tokens.cached_access_token().unwrap().secret().len();
    let per_server = allocations_in(|| {
        for _ in 0..1_000 {
            let token = tokens.cached_access_token().expect("a valid token");
            lengths += token.secret().len();
        }
    });
    assert_eq!(per_server, 0, "the per-server handle allocated");
    let by_name = allocations_in(|| {
        for _ in 0..1_000 {
            let token = handle
                .cached_access_token("srv")
                .unwrap()
                .expect("a valid token");
            lengths += token.secret().len();
        }
    });
    assert_eq!(by_name, 0, "the lookup by name allocated");
    assert!(lengths > 0);
    // And the async path on a valid token does not reach the actor.
    let token = handle.access_token("srv").await.unwrap();
    assert!(srv.secrets().access_tokens.contains(token.secret()));
    handle.shutdown().await;
}

/// The hot path reads a coarse clock where the token's safety margin allows it: it still never
/// hands a token out past its expiry, and stops handing it out around its hand-out deadline
/// (expiry minus the margin). A server without refresh tokens and no browser: the token is
/// not replaced, it just runs out.
#[tokio::test]
async fn a_token_is_never_handed_out_past_its_expiry() {
    use mcpproxy_oauth::clock::now_ms;
    use mcpproxy_oauth::upstream::state::Policy;
    let srv = start(Config {
        issue_refresh_tokens: false,
        access_token_ttl: std::time::Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let (browser, _) = following_browser();
    let dir = data_dir("hot-expiry");
    let server = upstream("srv", &srv);
    let handle = start_supervisor(SupervisorConfig {
        browser,
        policy: Policy {
            interactive: false,
            ..Policy::default()
        },
        ..SupervisorConfig::new(vec![server], dir)
    })
    .await;
    handle.login("srv").await.expect("login");
    let tokens = handle.server_tokens("srv").unwrap();
    let first = tokens.cached_access_token().expect("a fresh token");
    let expires_at = first.expires_at().expect("the test server says expires_in");
    let (mut reads, mut stopped_at) = (0u64, None);
    while now_ms() < expires_at + 1_000 {
        match tokens.cached_access_token() {
            Some(token) => {
                let now = now_ms();
                assert_eq!(
                    token.secret(),
                    first.secret(),
                    "no other token was obtained"
                );
                assert!(
                    now < expires_at,
                    "handed out {} ms past its expiry",
                    now - expires_at
                );
                reads += 1;
            }
            None => {
                stopped_at = Some(now_ms());
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let stopped_at = stopped_at.expect("the token stopped being handed out");
    // The margin of a 2 s token is 200 ms: it stops after expiry - 200 ms, before expiry.
    assert!(
        stopped_at >= expires_at - 200,
        "stopped {} ms before its hand-out deadline",
        expires_at - 200 - stopped_at
    );
    assert!(reads > 0);
    handle.shutdown().await;
}
