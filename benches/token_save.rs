//! Token saves per second with and without encryption at rest, on a real SQLite file (WAL,
//! `synchronous=FULL`, so every save waits for the disk), and the cost of sealing one value
//! alone. Run: `make bench` (criterion prints the times and saves per second).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcpproxy_oauth::store::StoredToken;
use mcpproxy_oauth::store::cipher::{self, StoreKey};
use mcpproxy_oauth::store::{KeySpec, Sealing, TokenStore};

#[path = "shared/token.rs"]
mod token;

fn token() -> StoredToken {
    token::sample_token("srv_0123456789abcdef".into(), "srv", "")
}

fn token_saves(c: &mut Criterion) {
    let dir =
        std::env::temp_dir().join(format!("mcpproxy-oauth-bench-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut group = c.benchmark_group("token_save");
    group.throughput(Throughput::Elements(1));
    for (name, sealing) in [
        ("plaintext", Sealing::Plaintext),
        (
            "encrypted",
            Sealing::Encrypted(KeySpec {
                key_file: Some(dir.join("encrypted").join("key")),
            }),
        ),
    ] {
        let mut store = TokenStore::open_with(&dir.join(name).join("tokens.db"), &sealing).unwrap();
        let t = token();
        group.bench_function(name, |b| {
            b.iter(|| store.save_token(black_box(&t)).unwrap())
        });
    }
    group.finish();

    let key = StoreKey::generate();
    let place = cipher::place("oauth_tokens", "access_token", "srv_0123456789abcdef");
    let value = token().access_token;
    let sealed = cipher::seal(&key, &place, value.expose());
    let mut group = c.benchmark_group("seal_800_byte_token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal", |b| {
        b.iter(|| cipher::seal(&key, &place, black_box(value.expose())))
    });
    group.bench_function("open", |b| {
        b.iter(|| cipher::open(&key, &place, black_box(&sealed)).unwrap())
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, token_saves);
criterion_main!(benches);
