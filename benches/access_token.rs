//! The `access_token()` hot path (a published snapshot read, no mailbox) next to a bare
//! `RwLock` read of the same token, single-threaded and with 8 threads competing.
//! Run: `make bench` (criterion prints the numbers).

use std::hint::black_box;
use std::sync::{Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mcpproxy_oauth::config::UpstreamConfig;
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
use oauth_test_server::{Config, OAuthTestServer};

/// Runs `op` `iters` times on each of `threads` threads at once; the slowest thread's time.
fn contended(threads: usize, iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let started = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    started.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap()
    })
}

fn access_token(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_server, handle) = runtime.block_on(async {
        let server = OAuthTestServer::start(Config::default()).await.unwrap();
        let browser = BrowserLauncher::handler(|url| {
            tokio::spawn(async move {
                let _ = reqwest::Client::new().get(url).send().await;
            });
        });
        let data_dir =
            std::env::temp_dir().join(format!("mcpproxy-oauth-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let upstream = UpstreamConfig::new("srv", server.mcp_url().parse().unwrap());
        let handle = SupervisorHandle::start(SupervisorConfig {
            browser,
            ..SupervisorConfig::new(vec![upstream], data_dir)
        })
        .await
        .unwrap();
        handle.reconnect("srv").await.expect("logged in");
        (server, handle)
    });
    let token = handle
        .cached_access_token("srv")
        .unwrap()
        .expect("a usable token");
    let rwlock = RwLock::new(Some(token));

    let server = handle.server_tokens("srv").unwrap();
    let mut group = c.benchmark_group("access_token");
    group.bench_function("server handle, 1 thread", |b| {
        b.iter(|| black_box(server.cached_access_token()))
    });
    group.bench_function("server handle, 8 threads", |b| {
        b.iter_custom(|iters| {
            contended(8, iters, &|| drop(black_box(server.cached_access_token())))
        })
    });
    group.bench_function("snapshot, 1 thread", |b| {
        b.iter(|| black_box(handle.cached_access_token("srv").unwrap()))
    });
    group.bench_function("bare RwLock, 1 thread", |b| {
        b.iter(|| black_box(rwlock.read().unwrap().clone()))
    });
    group.bench_function("snapshot, 8 threads", |b| {
        b.iter_custom(|iters| {
            contended(8, iters, &|| {
                drop(black_box(handle.cached_access_token("srv").unwrap()))
            })
        })
    });
    group.bench_function("bare RwLock, 8 threads", |b| {
        b.iter_custom(|iters| {
            contended(8, iters, &|| {
                drop(black_box(rwlock.read().unwrap().clone()))
            })
        })
    });
    group.bench_function("access_token().await, 1 task", |b| {
        b.iter(|| runtime.block_on(async { black_box(handle.access_token("srv").await.unwrap()) }))
    });
    group.finish();
    runtime.block_on(handle.shutdown());
}

criterion_group!(benches, access_token);
criterion_main!(benches);
