//! One store test suite, run against both backends: real SQLite files, and a real PostgreSQL
//! started by the test (Debian's `postgresql`). Two instances of the store (two registries on
//! one file; two pools on one database) play two processes or hosts. The checks: save, load,
//! seal and open; clients by issuer; flow history and its retention; the status view; the
//! claim protocol (claim, busy, adopt, a stale fence refused, takeover, release on failure and
//! on drop, the guard, ambiguous marking, the conditional drop after `invalid_grant`); one
//! winner under contention; the change stream.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::store::{
    Claim, ClaimRequest, FlowEnd, FlowRetention, KeySpec, RefreshTokenId, Sealing, Store,
    StoreChange, StoreChoice, StoreError, StoreOptions, StoredClient, StoredDpopKey, StoredToken,
    WriteGuard, Written,
};

/// Every secret the suite stores has this prefix, so a scan can find any that leaks.
const SECRET: &str = "sekret-";

fn token(key: &str, access: &str, refresh: Option<&str>) -> StoredToken {
    let refresh = refresh.map(|r| format!("{SECRET}{r}"));
    StoredToken {
        server_name: format!("name-{key}"),
        resource: Some("http://127.0.0.1:1/mcp".into()),
        issuer: Some("http://127.0.0.1:2".into()),
        scope: Some("read".into()),
        ..stored_token(key, &format!("{SECRET}{access}"), refresh)
    }
}

fn client(key: &str, issuer: &str, id: &str) -> StoredClient {
    StoredClient {
        server_key: key.into(),
        issuer: issuer.into(),
        client_id: id.into(),
        client_secret: Some(format!("{SECRET}cs-{id}").into()),
        token_endpoint_auth_method: "client_secret_post".into(),
        source: "registered".into(),
        redirect_uri: "http://127.0.0.1:3/callback".into(),
        authorization_endpoint: format!("{issuer}/authorize"),
        token_endpoint: format!("{issuer}/token"),
        revocation_endpoint: None,
        resource: "http://127.0.0.1:1/mcp".into(),
        iss_parameter_supported: true,
        registration_json: Some(
            r#"{"client_id":"x","registration_access_token":"sekret-rat"}"#.into(),
        ),
    }
}

fn request(key: &str, owner: &str, flow: &str, lease: Duration, wait: Duration) -> ClaimRequest {
    ClaimRequest {
        server_key: key.into(),
        server_name: format!("name-{key}"),
        flow_id: flow.into(),
        kind: "refresh",
        owner: owner.into(),
        lease,
        wait,
    }
}

const LONG: Duration = Duration::from_secs(60);

/// Stores a token outside any claim.
async fn put(store: &Store, token: &StoredToken) {
    let written = store.save_token(token, None, None).await.unwrap();
    assert_eq!(written, Written::Done);
}

/// Claims `key` at once (no wait) with a long lease.
async fn claim_now(store: &Store, key: &str, owner: &str, flow: &str) -> Claim {
    claim_within(store, key, owner, flow, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{flow}: {e}"))
}

/// Claims `key` with a long lease, waiting up to `wait` for another holder to let go.
async fn claim_within(
    store: &Store,
    key: &str,
    owner: &str,
    flow: &str,
    wait: Duration,
) -> Result<Claim, StoreError> {
    store.claim(&request(key, owner, flow, LONG, wait)).await
}

/// Two instances of one store, and a way to look at its rows as another tool would.
struct Pair {
    a: Store,
    b: Store,
    raw: Raw,
}

enum Raw {
    Sqlite(PathBuf),
    Postgres(tokio_postgres::Client),
}

impl Raw {
    /// The rows of `sql` (which selects text columns, or casts to text), as another tool
    /// reading the database sees them.
    async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut statement = conn.prepare(sql).unwrap();
                let width = statement.column_count();
                statement
                    .query_map([], |r| (0..width).map(|i| r.get(i)).collect())
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Raw::Postgres(c) => c
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
                .collect(),
        }
    }

    /// The stored (sealed) refresh token of a server, as it is in the database.
    async fn refresh_token(&self, key: &str) -> Option<String> {
        let sql = format!("SELECT refresh_token FROM oauth_tokens WHERE server_key = '{key}'");
        self.rows(&sql)
            .await
            .pop()
            .and_then(|mut row| row.pop().flatten())
    }

    /// The flows that wrote a stored token.
    async fn token_flows(&self) -> Vec<String> {
        let sql = "SELECT flow_id FROM oauth_tokens WHERE flow_id IS NOT NULL";
        self.rows(sql)
            .await
            .into_iter()
            .filter_map(|mut r| r.pop().flatten())
            .collect()
    }

    /// Every flow's id, start and state, newest first.
    async fn flows(&self) -> Vec<(String, i64, String)> {
        let sql = "SELECT flow_id, CAST(started_at AS TEXT), state FROM oauth_flows \
                   ORDER BY started_at DESC, flow_id";
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        self.rows(sql)
            .await
            .iter()
            .map(|r| (text(&r[0]), text(&r[1]).parse().unwrap(), text(&r[2])))
            .collect()
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        retention: FlowRetention {
            max_count: 3,
            every_flows: 1,
            ..FlowRetention::default()
        },
        poll_interval: Duration::from_millis(100),
        ..StoreOptions::default()
    }
}

fn sealing(dir: &Path) -> Sealing {
    Sealing::Encrypted(KeySpec {
        key_file: Some(dir.join("key")),
    })
}

/// The whole suite against one pair of instances. Each check uses servers of its own.
async fn suite(pair: &Pair) {
    saved_tokens_are_sealed_and_read_back_by_the_other_instance(pair).await;
    clients_are_kept_by_issuer(pair).await;
    the_status_view_shows_no_secret_and_the_right_status(pair).await;
    a_claim_is_exclusive_and_released_on_failure(pair).await;
    a_claim_reads_another_instance_s_token_to_adopt(pair).await;
    a_taken_over_lease_refuses_the_stale_holder_s_writes(pair).await;
    a_guard_that_says_overtaken_writes_nothing_and_still_releases(pair).await;
    a_dropped_claim_is_released(pair).await;
    an_unanswered_refresh_is_marked_and_reported_to_the_next_claim(pair).await;
    invalid_grant_drops_only_the_refresh_token_that_was_refused(pair).await;
    one_winner_among_many_claimants_of_both_instances(pair).await;
    the_other_instance_hears_of_a_change(pair).await;
    flow_history_keeps_the_newest_and_the_token_s_flow(pair).await;
}

async fn saved_tokens_are_sealed_and_read_back_by_the_other_instance(p: &Pair) {
    let mut t = token("seal", "at-1", Some("rt-1"));
    t.dpop = Some(StoredDpopKey {
        private_key: format!("{SECRET}dpop-key").into(),
        jkt: "jkt-1".into(),
    });
    assert_eq!(
        p.a.save_token(&t, Some(&client("seal", "http://127.0.0.1:2", "c1")), None)
            .await
            .unwrap(),
        Written::Done
    );
    let (read, read_client) = p.b.load_token_and_client("seal").await.unwrap();
    assert_eq!(read.as_ref(), Some(&t), "the other instance reads it whole");
    let read_client = read_client.expect("the client of the token's issuer");
    assert_eq!(read_client.client_secret, Some("sekret-cs-c1".into()));
    assert!(
        !read_client
            .registration_json
            .unwrap()
            .contains("registration_access_token"),
        "RFC 7592's management token is never stored"
    );
    let raw = p.raw.refresh_token("seal").await.unwrap();
    assert!(
        raw.starts_with("enc1:") && !raw.contains(SECRET),
        "sealed at rest: {raw}"
    );
    assert!(
        !format!("{read:?}").contains(SECRET),
        "Debug shows no secret"
    );
    p.a.delete_token("seal").await.unwrap();
    assert_eq!(p.b.load_token("seal").await.unwrap(), None);
}

async fn clients_are_kept_by_issuer(p: &Pair) {
    let (one, two) = ("http://127.0.0.1:11", "http://127.0.0.1:12");
    p.a.save_client(&client("by-issuer", one, "c-one"))
        .await
        .unwrap();
    p.a.save_client(&client("by-issuer", two, "c-two"))
        .await
        .unwrap();
    for (issuer, id) in [(one, "c-one"), (two, "c-two")] {
        let found =
            p.b.load_client_for("by-issuer", issuer)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(found.client_id, id);
    }
    let mut t = token("by-issuer", "at", Some("rt"));
    t.issuer = Some(one.into());
    put(&p.a, &t).await;
    let (_, chosen) = p.b.load_token_and_client("by-issuer").await.unwrap();
    assert_eq!(
        chosen.unwrap().client_id,
        "c-one",
        "the client of the token's issuer"
    );
    assert!(
        p.b.load_client_for("by-issuer", "http://other")
            .await
            .unwrap()
            .is_none()
    );
}

async fn the_status_view_shows_no_secret_and_the_right_status(p: &Pair) {
    let now = now_ms();
    for (key, expires_at, refresh) in [
        ("status-a-valid", Some(now + 3_600_000), Some("rt")),
        ("status-b-expiring", Some(now + 120_000), None),
        ("status-c-expired", Some(now - 60_000), Some("rt")),
        ("status-d-forever", None, None),
    ] {
        let mut t = token(key, "at", refresh);
        t.expires_at = expires_at;
        put(&p.a, &t).await;
    }
    let rows: Vec<_> =
        p.b.token_status()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.server_key.starts_with("status-"))
            .collect();
    let seen: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.server_key.as_str(),
                r.status.as_str(),
                r.has_refresh_token,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("status-a-valid", "valid", true),
            ("status-b-expiring", "expiring", false),
            ("status-c-expired", "expired", true),
            ("status-d-forever", "valid", false),
        ],
        "by server name"
    );
    assert!(!serde_json::to_string(&rows).unwrap().contains(SECRET));
}

async fn a_claim_is_exclusive_and_released_on_failure(p: &Pair) {
    let key = "exclusive";
    put(&p.a, &token(key, "at", Some("rt"))).await;
    let mut first = claim_now(&p.a, key, "instance-a", "f-excl-1").await;
    assert!(first.lease().fence >= 1 && !first.waited());
    assert_eq!(
        first.read().token.as_ref().unwrap().access_token,
        "sekret-at"
    );
    let busy =
        p.b.try_claim(&request(
            key,
            "instance-b",
            "f-excl-2",
            LONG,
            Duration::ZERO,
        ))
        .await
        .unwrap()
        .err()
        .expect("another instance's claim is refused while the lease is held");
    if let Some(holder) = busy.holder {
        assert_eq!(
            (holder.owner.as_str(), holder.fence),
            ("instance-a", first.lease().fence)
        );
        assert!(holder.expires_at.is_some());
    }
    let fence = first.lease().fence;
    assert_eq!(
        first
            .finish(FlowEnd::Failed("the token endpoint said no".into()))
            .await
            .unwrap(),
        Written::Done
    );
    let lease = p.b.lease(key).await.unwrap().unwrap();
    assert_eq!(lease.expires_at, None, "released on failure");
    let flows = p.b.flows(None, Some("f-excl-1"), 1).await.unwrap();
    assert_eq!(flows[0].state, "failed");
    let mut second = claim_now(&p.b, key, "instance-b", "f-excl-2").await;
    assert_eq!(second.lease().fence, fence + 1, "one fence higher");
    second.finish(FlowEnd::Succeeded).await.unwrap();
}

async fn a_claim_reads_another_instance_s_token_to_adopt(p: &Pair) {
    let key = "adopt";
    let old = token(key, "at-old", Some("rt-old"));
    p.a.save_token(&old, None, None).await.unwrap();
    // Instance b refreshes first and saves under its claim.
    let mut b = claim_now(&p.b, key, "instance-b", "f-adopt-b").await;
    let newer = StoredToken {
        flow_id: Some("f-adopt-b".into()),
        ..token(key, "at-new", Some("rt-new"))
    };
    let end = saved(&newer);
    assert_eq!(b.finish(end).await.unwrap(), Written::Done);
    // Instance a, which still holds the old token, claims: it reads b's and sends nothing.
    let mut a = claim_now(&p.a, key, "instance-a", "f-adopt-a").await;
    let adopted = a
        .read()
        .newer_than(&old)
        .expect("the newer token is read under the claim");
    assert_eq!(adopted.refresh_token, Some("sekret-rt-new".into()));
    assert!(a.read().newer_than(&newer).is_none());
    a.finish(FlowEnd::Succeeded).await.unwrap();
}

async fn a_taken_over_lease_refuses_the_stale_holder_s_writes(p: &Pair) {
    let key = "takeover";
    put(&p.a, &token(key, "at-0", Some("rt-0"))).await;
    let short = Duration::from_millis(1500);
    let stalled =
        p.a.claim(&request(
            key,
            "instance-a",
            "f-take-a",
            short,
            Duration::ZERO,
        ))
        .await
        .unwrap();
    let stale = stalled.abandon();
    if matches!(p.b, Store::Postgres(_)) {
        // On PostgreSQL the row is the lock: a live lease is not taken over.
        let early =
            p.b.try_claim(&request(
                key,
                "instance-b",
                "f-take-early",
                LONG,
                Duration::ZERO,
            ))
            .await
            .unwrap();
        assert!(
            early.is_err(),
            "a lease is not taken over before it expires"
        );
    }
    // SQLite: the file lock of the holder that died is free at once; PostgreSQL: once the
    // lease expires (a bounded wait, woken by the poll).
    let mut taker = claim_within(&p.b, key, "instance-b", "f-take-b", Duration::from_secs(10))
        .await
        .expect("taken over within the wait");
    assert_eq!(taker.lease().fence, stale.fence + 1, "a higher fence");
    let late = token(key, "at-stale", Some("rt-stale"));
    assert_eq!(
        p.a.save_under_lease(&stale, &late, None, None)
            .await
            .unwrap(),
        Written::LeaseLost {
            fence_now: Some(stale.fence + 1)
        },
        "the stale holder's write is refused"
    );
    assert_eq!(
        p.b.load_token(key).await.unwrap().unwrap().access_token,
        "sekret-at-0"
    );
    let fresh = token(key, "at-1", Some("rt-1"));
    assert_eq!(taker.save(&fresh, None, None).await.unwrap(), Written::Done);
    taker.finish(FlowEnd::Succeeded).await.unwrap();
    assert_eq!(
        p.a.load_token(key).await.unwrap().unwrap().access_token,
        "sekret-at-1"
    );
    let stale_flow = p.a.flows(None, Some("f-take-a"), 1).await.unwrap();
    assert_eq!(
        stale_flow[0].state, "running",
        "closed later as abandoned, never succeeded"
    );
}

async fn a_guard_that_says_overtaken_writes_nothing_and_still_releases(p: &Pair) {
    let key = "guarded";
    put(&p.a, &token(key, "at-0", Some("rt-0"))).await;
    let mut claim = claim_now(&p.a, key, "instance-a", "f-guard").await;
    let no = WriteGuard::new(|| false);
    assert_eq!(
        claim
            .save(&token(key, "at-x", None), None, Some(&no))
            .await
            .unwrap(),
        Written::Overtaken
    );
    let fresh = token(key, "at-1", Some("rt-1"));
    let end = FlowEnd::Saved {
        token: &fresh,
        client: None,
        guard: Some(no),
    };
    assert_eq!(claim.finish(end).await.unwrap(), Written::Overtaken);
    assert_eq!(
        p.b.load_token(key).await.unwrap().unwrap().access_token,
        "sekret-at-0"
    );
    assert_eq!(
        p.b.lease(key).await.unwrap().unwrap().expires_at,
        None,
        "released"
    );
}

async fn a_dropped_claim_is_released(p: &Pair) {
    let key = "dropped";
    let claim = claim_now(&p.a, key, "instance-a", "f-drop").await;
    drop(claim);
    let mut next = claim_within(&p.b, key, "instance-b", "f-drop-2", Duration::from_secs(10))
        .await
        .expect("a dropped claim is released in the background, long before its lease ends");
    let flows = p.b.flows(None, Some("f-drop"), 1).await.unwrap();
    assert_eq!(flows[0].state, "failed");
    next.finish(FlowEnd::Succeeded).await.unwrap();
}

async fn an_unanswered_refresh_is_marked_and_reported_to_the_next_claim(p: &Pair) {
    let key = "ambiguous";
    put(&p.a, &token(key, "at-0", Some("rt-0"))).await;
    let mut sent = claim_now(&p.a, key, "instance-a", "f-amb-1").await;
    assert_eq!(sent.read().ambiguous, None);
    let wrong = RefreshTokenId::of("sekret-rt-other");
    assert!(
        !sent.mark_ambiguous(wrong).await.unwrap(),
        "only the refresh token the row holds"
    );
    assert!(
        sent.mark_ambiguous(RefreshTokenId::of("sekret-rt-0"))
            .await
            .unwrap()
    );
    sent.finish(FlowEnd::Failed("timed out after sending".into()))
        .await
        .unwrap();
    let mut next = claim_now(&p.b, key, "instance-b", "f-amb-2").await;
    let mark = next
        .read()
        .ambiguous
        .clone()
        .expect("the next claim is told");
    assert_eq!(mark.flow_id.as_deref(), Some("f-amb-1"));
    assert!(mark.since <= now_ms());
    assert_eq!(p.a.ambiguous(key).await.unwrap(), Some(mark));
    let fresh = token(key, "at-1", Some("rt-1"));
    next.finish(saved(&fresh)).await.unwrap();
    assert_eq!(
        p.a.ambiguous(key).await.unwrap(),
        None,
        "a new token clears the mark"
    );
}

async fn invalid_grant_drops_only_the_refresh_token_that_was_refused(p: &Pair) {
    let key = "invalid-grant";
    put(&p.a, &token(key, "at-1", Some("rt-1"))).await;
    // Another instance rotated it meanwhile: the refusal of the old one drops nothing.
    put(&p.b, &token(key, "at-2", Some("rt-2"))).await;
    let refused_old = RefreshTokenId::of("sekret-rt-1");
    assert!(!p.a.drop_refresh_token_if(key, refused_old).await.unwrap());
    assert_eq!(
        p.a.load_token(key).await.unwrap().unwrap().refresh_token,
        Some("sekret-rt-2".into()),
        "the newer refresh token is kept"
    );
    assert!(
        p.a.drop_refresh_token_if(key, RefreshTokenId::of("sekret-rt-2"))
            .await
            .unwrap()
    );
    let kept = p.b.load_token(key).await.unwrap().unwrap();
    assert_eq!(
        (kept.refresh_token, kept.access_token),
        (None, "sekret-at-2".into())
    );
    assert!(
        !p.a.drop_refresh_token_if("no-such-server", refused_old)
            .await
            .unwrap()
    );
}

async fn one_winner_among_many_claimants_of_both_instances(p: &Pair) {
    const TASKS: usize = 8;
    let key = "contended";
    let mut fences = Vec::new();
    for round in 0..5 {
        let attempts = (0..TASKS * 2).map(|i| {
            let store = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
            async move {
                let r = request(
                    key,
                    &format!("task-{i}"),
                    &format!("f-race-{round}-{i}"),
                    LONG,
                    Duration::ZERO,
                );
                store.try_claim(&r).await.unwrap()
            }
        });
        let results = futures_util::future::join_all(attempts).await;
        let mut winners: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one claimant wins");
        let mut winner = winners.pop().unwrap();
        fences.push(winner.lease().fence);
        winner.finish(FlowEnd::Succeeded).await.unwrap();
    }
    assert!(
        fences.windows(2).all(|w| w[1] == w[0] + 1),
        "fences grow by one: {fences:?}"
    );
}

async fn the_other_instance_hears_of_a_change(p: &Pair) {
    let key = "heard";
    let mut changes = p.b.changes().await;
    put(&p.a, &token(key, "at", Some("rt"))).await;
    let postgres = matches!(p.b, Store::Postgres(_));
    ends_within(
        "the change reaching the other instance",
        Duration::from_secs(10),
        async {
            loop {
                match changes.next().await {
                    StoreChange::Token(k) if k == key => break,
                    // SQLite's poll says only that another connection committed.
                    StoreChange::Any if !postgres => break,
                    _ => {}
                }
            }
        },
    )
    .await;
    if postgres {
        let mut claim = claim_now(&p.a, key, "instance-a", "f-heard").await;
        claim.finish(FlowEnd::Succeeded).await.unwrap();
        ends_within(
            "a lease release reaching the other instance",
            Duration::from_secs(10),
            async { while changes.next().await != StoreChange::Lease(key.into()) {} },
        )
        .await;
    }
}

async fn flow_history_keeps_the_newest_and_the_token_s_flow(p: &Pair) {
    // The first flow writes a token: it is kept whatever its age. Then flows end one by one;
    // retention keeps the newest 3 (and, on a tie, every flow started with the third).
    let key = "history";
    let mut first = claim_now(&p.a, key, "instance-a", "f-hist-00").await;
    let t = StoredToken {
        flow_id: Some("f-hist-00".into()),
        ..token(key, "at", Some("rt"))
    };
    first.finish(saved(&t)).await.unwrap();
    for i in 1..=8 {
        let store = if i % 2 == 0 { &p.a } else { &p.b };
        let mut c = store
            .claim(&request(
                key,
                "inst",
                &format!("f-hist-{i:02}"),
                LONG,
                Duration::ZERO,
            ))
            .await
            .unwrap();
        // The error quotes a secret the store has revealed (the refresh token it read).
        let error = format!("the server refused sekret-rt ({i})");
        c.finish(FlowEnd::Failed(error)).await.unwrap();
    }
    let kept = p.raw.flows().await;
    let token_flows = p.raw.token_flows().await;
    assert!(token_flows.contains(&"f-hist-00".to_string()));
    let ids: Vec<&str> = kept.iter().map(|(id, _, _)| id.as_str()).collect();
    assert!(
        ids.contains(&"f-hist-00"),
        "the stored token's flow is kept: {ids:?}"
    );
    assert!(
        ids.contains(&"f-hist-08") && ids.contains(&"f-hist-07"),
        "{ids:?}"
    );
    let third_newest = kept[2].1;
    for (id, started_at, state) in &kept {
        let keep = *started_at >= third_newest || token_flows.contains(id) || state == "running";
        assert!(
            keep,
            "{id} ({started_at}) should have been pruned: {kept:?}"
        );
    }
    let recent = p.b.recent_flows(5).await.unwrap();
    assert!(
        recent
            .windows(2)
            .all(|w| w[0].started_at >= w[1].started_at),
        "newest first"
    );
    let failure =
        &p.a.flows(Some("name-history"), Some("f-hist-08"), 1)
            .await
            .unwrap()[0];
    assert_eq!(failure.state, "failed");
    assert!(
        !failure
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("sekret-rt"),
        "a stored error is scrubbed of registered secrets: {:?}",
        failure.error
    );
}

#[actix::test]
async fn sqlite_passes_the_store_suite() {
    let dir = temp_dir("suite-sqlite");
    let path = dir.join("tokens.db");
    let sealed = sealing(&dir);
    let open = || Store::open(&StoreChoice::Sqlite, &path, &sealed, options());
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let pair = Pair {
        a,
        b,
        raw: Raw::Sqlite(path.clone()),
    };
    suite(&pair).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn postgres_passes_the_store_suite() {
    let Some((server, url, dir)) = postgres_database("suite").await else {
        return;
    };
    let choice: StoreChoice = url.parse().unwrap();
    let sealed = sealing(&dir);
    let open = || Store::open(&choice, Path::new("/nonexistent"), &sealed, options());
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let pair = Pair {
        a,
        b,
        raw: Raw::Postgres(server.connect("suite").await),
    };
    suite(&pair).await;
    let _ = std::fs::remove_dir_all(&dir);
}
