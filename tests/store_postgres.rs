//! What only the PostgreSQL store has to prove, against a real PostgreSQL started by the test
//! (Debian's `postgresql`): its schema is the SQLite one (tables, columns, keys and view); the
//! lease holds under contention from several instances (pools) and their tasks; a change made
//! by any connection reaches another instance at once; a database that is stopped makes every
//! operation fail fast and clearly, one that does not answer at all too, and after a restart
//! everything stored is there and the store works again by itself.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mcpproxy_oauth::store::{
    Claim, ClaimRequest, FlowEnd, KeySpec, Sealing, Store, StoreChange, StoreChoice, StoreError,
    StoreOptions, StoredToken, TokenStore, Written,
};

fn token(key: &str, access: &str) -> StoredToken {
    StoredToken {
        issuer: Some("http://127.0.0.1:2".into()),
        ..stored_token(key, access, Some(format!("rt-of-{access}")))
    }
}

fn request(key: &str, owner: &str, flow: &str, wait: Duration) -> ClaimRequest {
    ClaimRequest {
        server_key: key.into(),
        server_name: key.into(),
        flow_id: flow.into(),
        kind: "refresh",
        owner: owner.into(),
        lease: Duration::from_secs(60),
        wait,
    }
}

/// Claims `key` at once (no wait).
async fn claim_now(store: &Store, key: &str, owner: &str, flow: &str) -> Claim {
    store
        .claim(&request(key, owner, flow, Duration::ZERO))
        .await
        .unwrap_or_else(|e| panic!("{flow}: {e}"))
}

fn sealing(dir: &Path) -> Sealing {
    Sealing::Encrypted(KeySpec {
        key_file: Some(dir.join("key")),
    })
}

async fn open(url: &str, dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
    let choice: StoreChoice = url.parse().unwrap();
    Store::open(&choice, Path::new("/unused"), &sealing(dir), options).await
}

/// A column as the comparison sees it: its type's meaning, whether it may be NULL (primary
/// key columns aside: SQLite lets a TEXT primary key be NULL, PostgreSQL never).
#[derive(Debug, PartialEq, Eq)]
struct Column {
    name: String,
    meaning: String,
    not_null: bool,
}

/// Table or view -> its columns in order, and its primary key.
type Schema = BTreeMap<String, (Vec<Column>, BTreeSet<String>)>;

/// SQLite has no boolean type: these INTEGER columns hold 0/1, BOOLEAN on PostgreSQL.
const SQLITE_BOOLEANS: &[(&str, &str)] = &[("oauth_clients", "iss_parameter_supported")];

fn meaning(table: &str, column: &str, declared: &str) -> String {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" if SQLITE_BOOLEANS.contains(&(table, column)) => "boolean".into(),
        "integer" | "bigint" => "integer".into(),
        other => other.into(),
    }
}

fn sqlite_schema(path: &Path) -> Schema {
    let conn = rusqlite::Connection::open(path).unwrap();
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') \
             AND name NOT LIKE 'sqlite_%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut schema = Schema::new();
    for table in names {
        let mut columns = Vec::new();
        let mut key = BTreeSet::new();
        let mut info = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap();
        let rows = info
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (name, declared, not_null, pk) = row.unwrap();
            if pk > 0 {
                key.insert(name.clone());
            }
            columns.push(Column {
                meaning: meaning(&table, &name, &declared),
                not_null: not_null && pk == 0,
                name,
            });
        }
        schema.insert(table, (columns, key));
    }
    schema
}

async fn postgres_schema(client: &tokio_postgres::Client) -> Schema {
    let rows = client
        .query(
            "SELECT c.table_name::TEXT, c.column_name::TEXT, c.data_type::TEXT,
                    c.is_nullable = 'NO',
                    EXISTS (SELECT 1 FROM information_schema.table_constraints t
                            JOIN information_schema.key_column_usage k
                              ON k.constraint_name = t.constraint_name
                             AND k.table_name = t.table_name
                            WHERE t.constraint_type = 'PRIMARY KEY'
                              AND t.table_name = c.table_name
                              AND k.column_name = c.column_name)
             FROM information_schema.columns c
             WHERE c.table_schema = current_schema()
             ORDER BY c.table_name, c.ordinal_position",
            &[],
        )
        .await
        .unwrap();
    let mut schema = Schema::new();
    for row in rows {
        let (table, name, declared): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let (not_null, pk): (bool, bool) = (row.get(3), row.get(4));
        let entry = schema.entry(table.clone()).or_default();
        if pk {
            entry.1.insert(name.clone());
        }
        entry.0.push(Column {
            meaning: meaning("", &name, &declared),
            not_null: not_null && !pk,
            name,
        });
    }
    schema
}

/// Both migrations end in the same tables, columns (names, order, meaning of their types,
/// NULL or not), primary keys and status view. A view's computed columns have no declared
/// type on SQLite: there the PostgreSQL type is checked against what the view computes.
#[actix::test]
async fn both_migrations_produce_the_same_tables_columns_and_view() {
    let Some(server) = Postgres::start("schema") else {
        return;
    };
    let dir = temp_dir("schema");
    let sqlite_path = dir.join("tokens.db");
    drop(TokenStore::open_with(&sqlite_path, &sealing(&dir)).unwrap());
    let url = server.create_database("schema").await;
    let _store = open(&url, &dir, StoreOptions::default()).await.unwrap();
    let sqlite = sqlite_schema(&sqlite_path);
    let postgres = postgres_schema(&server.connect("schema").await).await;
    assert_eq!(
        sqlite.keys().collect::<Vec<_>>(),
        postgres.keys().collect::<Vec<_>>(),
        "the same tables and views"
    );
    for (table, (columns, key)) in &sqlite {
        let (pg_columns, pg_key) = &postgres[table];
        assert_eq!(key, pg_key, "{table}: the same primary key");
        let names = |c: &[Column]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(columns),
            names(pg_columns),
            "{table}: the same columns in order"
        );
        for (ours, theirs) in columns.iter().zip(pg_columns) {
            let view = table == "oauth_token_status";
            match (view, ours.meaning.as_str()) {
                // Computed in the view: the status is text, has_refresh_token a truth value.
                (true, "") => {
                    let expected = match ours.name.as_str() {
                        "status" => "text",
                        "has_refresh_token" => "boolean",
                        other => panic!("{table}.{other}: an unexpected computed column"),
                    };
                    assert_eq!(theirs.meaning, expected, "{table}.{}", ours.name);
                }
                _ => {
                    assert_eq!(ours.meaning, theirs.meaning, "{table}.{}", ours.name);
                    if !view {
                        assert_eq!(
                            ours.not_null, theirs.not_null,
                            "{table}.{}: NULL",
                            ours.name
                        );
                    }
                }
            }
        }
    }
    assert!(sqlite.contains_key("oauth_leases") && sqlite.contains_key("oauth_token_status"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three instances (three pools), six tasks each, all after one server's lease at once and
/// waiting for it: every task gets it in turn, never two at a time, each with the next
/// fence; and at any moment one attempt without a wait wins at most.
#[actix::test]
async fn the_lease_has_one_holder_at_a_time_across_instances_and_tasks() {
    const INSTANCES: usize = 3;
    const TASKS: usize = 6;
    let Some((_server, url, dir)) = postgres_database("contention").await else {
        return;
    };
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        let options = StoreOptions {
            pool_size: 4,
            ..StoreOptions::default()
        };
        instances.push(open(&url, &dir, options).await.unwrap());
    }
    let holders = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tasks = (0..INSTANCES * TASKS).map(|i| {
        let store = instances[i % INSTANCES].clone();
        let (holders, most) = (holders.clone(), most.clone());
        async move {
            let r = request(
                "contended",
                &format!("instance-{}", i % INSTANCES),
                &format!("f-{i}"),
                Duration::from_secs(60),
            );
            let mut claim = store.claim(&r).await.unwrap();
            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Hold it across a few round trips of its own.
            let t = token("contended", &format!("at-{i}"));
            assert_eq!(claim.save(&t, None, None).await.unwrap(), Written::Done);
            tokio::task::yield_now().await;
            holders.fetch_sub(1, Ordering::SeqCst);
            let fence = claim.lease().fence;
            let end = saved(&t);
            assert_eq!(claim.finish(end).await.unwrap(), Written::Done);
            fence
        }
    });
    let mut fences = ends_within(
        "every task holding the lease in turn",
        Duration::from_secs(120),
        futures_util::future::join_all(tasks),
    )
    .await;
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two holders at once");
    fences.sort();
    assert_eq!(
        fences,
        (1..=(INSTANCES * TASKS) as i64).collect::<Vec<_>>(),
        "one fence each, in turn"
    );
    // Racing attempts without a wait, from every instance at once: one winner a round.
    for round in 0..10 {
        let attempts = (0..INSTANCES * TASKS).map(|i| {
            let store = instances[i % INSTANCES].clone();
            async move {
                let r = request("raced", "racer", &format!("r-{round}-{i}"), Duration::ZERO);
                store.try_claim(&r).await.unwrap()
            }
        });
        let results = futures_util::future::join_all(attempts).await;
        let mut winners: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
        assert_eq!(winners.len(), 1, "round {round}: one winner");
        winners[0].finish(FlowEnd::Succeeded).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token written by any connection (here a plain one, as psql would) and a lease released
/// by another instance reach an instance's change stream at once: well before its fallback
/// poll, which is set to a minute here.
#[actix::test]
async fn a_change_by_any_connection_reaches_another_instance_at_once() {
    let Some((server, url, dir)) = postgres_database("notify").await else {
        return;
    };
    let slow_poll = StoreOptions {
        poll_interval: Duration::from_secs(60),
        ..StoreOptions::default()
    };
    let writer = open(&url, &dir, StoreOptions::default()).await.unwrap();
    let watcher = open(&url, &dir, slow_poll).await.unwrap();
    wait_until_listening(&watcher).await;
    let mut changes = watcher.changes().await;
    let raw = server.connect("notify").await;
    writer
        .save_token(&token("heard", "at-1"), None, None)
        .await
        .unwrap();
    expect_change(&mut changes, StoreChange::Token("heard".into())).await;
    raw.execute(
        "UPDATE oauth_tokens SET scope = 'changed by hand' WHERE server_key = 'heard'",
        &[],
    )
    .await
    .unwrap();
    expect_change(&mut changes, StoreChange::Token("heard".into())).await;
    raw.execute("DELETE FROM oauth_tokens WHERE server_key = 'heard'", &[])
        .await
        .unwrap();
    expect_change(&mut changes, StoreChange::Token("heard".into())).await;
    let mut claim = claim_now(&writer, "heard", "writer", "f-heard").await;
    claim
        .finish(FlowEnd::Failed("gave up".into()))
        .await
        .unwrap();
    expect_change(&mut changes, StoreChange::Lease("heard".into())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn wait_until_listening(store: &Store) {
    let started = Instant::now();
    while store.health().await.listening != Some(true) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the listener connects within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `expected` arrives within 5 s (changes made earlier, or `Any`, may come first).
async fn expect_change(changes: &mut mcpproxy_oauth::store::StoreChanges, expected: StoreChange) {
    let what = format!("{expected:?} reaching the other instance");
    ends_within(&what, Duration::from_secs(5), async {
        while changes.next().await != expected {}
    })
    .await;
}

fn assert_unreachable(
    what: &str,
    result: Result<impl std::fmt::Debug, StoreError>,
    took: Duration,
) {
    let error = result.expect_err(what);
    assert!(
        matches!(error, StoreError::Unreachable { .. }),
        "{what}: {error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("unreachable") && text.contains("@127.0.0.1:"),
        "{what}: {text}"
    );
    assert!(
        !text.contains("pw-sekret"),
        "{what}: the password shows: {text}"
    );
    assert!(
        took < Duration::from_secs(5),
        "{what}: failed after {took:?}, not fast"
    );
}

/// PostgreSQL stopped: every operation fails within its deadline with an error naming the
/// store (never its password) and the fix; health says so. Started again: the store comes
/// back by itself, everything stored before is there, claims and the listener work again.
#[actix::test]
async fn a_stopped_database_fails_fast_and_after_a_restart_nothing_is_lost() {
    let Some(mut server) = Postgres::start("restart") else {
        return;
    };
    let dir = temp_dir("restart");
    let url = server.create_database("restart").await;
    // Trusted on loopback, the password is never asked for: it is there to be kept secret.
    let url = url.replace("postgres@", "postgres:pw-sekret-0123456789@");
    let options = StoreOptions {
        connect_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(3),
        poll_interval: Duration::from_millis(200),
        ..StoreOptions::default()
    };
    let store = open(&url, &dir, options.clone()).await.unwrap();
    for i in 0..20 {
        store
            .save_token(
                &token(&format!("srv-{i:02}"), &format!("at-{i}")),
                None,
                None,
            )
            .await
            .unwrap();
    }
    let mut claim = claim_now(&store, "srv-00", "me", "f-before").await;
    let fence_before = claim.lease().fence;
    claim.finish(FlowEnd::Succeeded).await.unwrap();
    wait_until_listening(&store).await;
    let health = store.health().await;
    assert!(health.reachable && health.error.is_none(), "{health:?}");

    let mut changes = store.changes().await;
    server.stop();
    // Not heard at once any more: the fallback tells readers to re-read, every poll.
    // (A change heard before the stop may come first.)
    for _ in 0..2 {
        ends_within("the fallback poll", Duration::from_secs(5), async {
            while changes.next().await != StoreChange::Any {}
        })
        .await;
    }
    let started = Instant::now();
    assert_unreachable("load", store.load_token("srv-01").await, started.elapsed());
    let started = Instant::now();
    assert_unreachable("status", store.token_status().await, started.elapsed());
    let started = Instant::now();
    assert_unreachable(
        "save",
        store
            .save_token(&token("srv-new", "at-new"), None, None)
            .await,
        started.elapsed(),
    );
    let started = Instant::now();
    let claimed = store
        .claim(&request("srv-01", "me", "f-down", Duration::from_secs(30)))
        .await
        .map(|_| ());
    assert_unreachable("claim", claimed, started.elapsed());
    let started = Instant::now();
    let health = store.health().await;
    assert!(
        !health.reachable && started.elapsed() < Duration::from_secs(5),
        "{health:?}"
    );
    let error = health.error.unwrap_or_default();
    assert!(
        error.contains("unreachable") && !error.contains("pw-sekret"),
        "{error}"
    );
    let listening_down = Instant::now();
    while store.health().await.listening == Some(true) {
        assert!(
            listening_down.elapsed() < Duration::from_secs(30),
            "the listener notices the loss"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server.start_again();
    let back = Instant::now();
    while !store.health().await.reachable {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the store is back within 30 s of the database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..20 {
        let kept = store.load_token(&format!("srv-{i:02}")).await.unwrap();
        assert_eq!(
            kept.map(|t| t.access_token),
            Some(format!("at-{i}").into()),
            "srv-{i:02} kept"
        );
    }
    assert_eq!(
        store.load_token("srv-new").await.unwrap(),
        None,
        "the refused save wrote nothing"
    );
    let mut claim = claim_now(&store, "srv-00", "me", "f-after").await;
    assert_eq!(claim.lease().fence, fence_before + 1);
    claim.finish(FlowEnd::Succeeded).await.unwrap();
    wait_until_listening(&store).await;
    let mut changes = store.changes().await;
    let other = open(&url, &dir, options).await.unwrap();
    other
        .save_token(&token("srv-03", "at-3b"), None, None)
        .await
        .unwrap();
    expect_change(&mut changes, StoreChange::Token("srv-03".into())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that takes the connection and never answers (no refusal to learn from): opening
/// the store fails within the connect deadline, it does not hang.
#[actix::test]
async fn a_database_that_never_answers_fails_within_the_connect_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://u:pw-sekret-0123456789@127.0.0.1:{}/db",
        silent.local_addr().unwrap().port()
    );
    let dir = temp_dir("silent");
    let options = StoreOptions {
        connect_timeout: Duration::from_secs(1),
        operation_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    };
    let started = Instant::now();
    let opened = open(&url, &dir, options).await.map(|_| ());
    assert_unreachable("open", opened, started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A logout on one instance ends the lease of a refresh running on another: the refresh's
/// token is refused (`LeaseLost`), the logout stands, and the lease is free for the next claim.
#[actix::test]
async fn a_logout_is_not_undone_by_a_refresh_in_flight_elsewhere() {
    let Some((_server, url, dir)) = postgres_database("logout").await else {
        return;
    };
    let a = open(&url, &dir, StoreOptions::default()).await.unwrap();
    let b = open(&url, &dir, StoreOptions::default()).await.unwrap();
    a.save_token(&token("srv", "at-1"), None, None)
        .await
        .unwrap();
    let mut claim = claim_now(&a, "srv", "a", "f-1").await;
    b.delete_token("srv").await.unwrap();
    let refreshed = token("srv", "at-2");
    let written = claim.finish(saved(&refreshed)).await.unwrap();
    assert!(matches!(written, Written::LeaseLost { .. }), "{written:?}");
    assert!(
        b.load_token("srv").await.unwrap().is_none(),
        "the logout stands"
    );
    let next = b
        .try_claim(&request("srv", "b", "f-2", Duration::ZERO))
        .await
        .unwrap();
    if let Err(busy) = &next {
        panic!("the lease is free after the logout: {busy:?}");
    }
}

/// The library's config names the store: a daemon on a PostgreSQL store that does not answer
/// fails to start within the connect deadline, saying which store (without its password), and
/// never falls back to SQLite (nothing is created in the data directory).
#[actix::test]
async fn the_daemon_on_an_unreachable_postgres_store_fails_with_the_reason() {
    use mcpproxy_oauth::supervisor::{SupervisorConfig, SupervisorHandle};
    let dir = data_dir("refused-store");
    let config = SupervisorConfig::new(Vec::new(), dir.clone());
    assert_eq!(config.store, StoreChoice::Sqlite, "SQLite by default");
    let config = SupervisorConfig {
        store: "postgres://u:pw-sekret-0123456789@127.0.0.1:1/db"
            .parse()
            .unwrap(),
        ..config
    };
    let started = std::time::Instant::now();
    let Err(error) = SupervisorHandle::start(config).await else {
        panic!("started on a PostgreSQL store that does not answer");
    };
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed within the connect deadline"
    );
    let text = error.to_string();
    assert!(text.contains("postgres://u@127.0.0.1:1/db"), "{text}");
    assert!(!text.contains("pw-sekret"), "{text}");
    assert!(!dir.exists(), "nothing was created");
}

/// Instances share one key: a store opened with another key, with no key at all, or in plain
/// text is refused with the fix, and nothing is changed; a plain-text store that holds
/// secrets is not encrypted in place (a gap, refused with the reason).
#[actix::test]
async fn a_shared_store_opens_only_with_its_key() {
    let Some((server, url, dir)) = postgres_database("keys").await else {
        return;
    };
    let store = open(&url, &dir, StoreOptions::default()).await.unwrap();
    store
        .save_token(&token("srv", "at-keyed"), None, None)
        .await
        .unwrap();
    let choice: StoreChoice = url.parse().unwrap();
    let other_dir = temp_dir("keys-other");
    let refusal = |sealing: Sealing| {
        let choice = choice.clone();
        async move {
            match Store::open(
                &choice,
                Path::new("/unused"),
                &sealing,
                StoreOptions::default(),
            )
            .await
            {
                Ok(_) => panic!("opened with {sealing:?}"),
                Err(e) => e,
            }
        }
    };
    let missing = refusal(sealing(&other_dir)).await;
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    mcpproxy_oauth::store::keys::create_key_file(&other_dir.join("key")).unwrap();
    let wrong = refusal(sealing(&other_dir)).await;
    assert!(matches!(wrong, StoreError::WrongKey { .. }), "{wrong}");
    let plain = refusal(Sealing::Plaintext).await;
    assert!(
        matches!(plain, StoreError::EncryptedNeedsKey { .. }),
        "{plain}"
    );
    let none = refusal(Sealing::Encrypted(KeySpec { key_file: None })).await;
    assert!(
        none.to_string().contains("the same key on every instance"),
        "{none}"
    );
    assert_eq!(
        store.load_token("srv").await.unwrap().unwrap().access_token,
        "at-keyed"
    );

    let plain_url = server.create_database("keys_plain").await;
    let plain_choice: StoreChoice = plain_url.parse().unwrap();
    let clear = Store::open(
        &plain_choice,
        Path::new("/unused"),
        &Sealing::Plaintext,
        StoreOptions::default(),
    )
    .await
    .unwrap();
    clear
        .save_token(&token("srv", "at-clear"), None, None)
        .await
        .unwrap();
    let keyed = Store::open(
        &plain_choice,
        Path::new("/unused"),
        &sealing(&dir),
        StoreOptions::default(),
    )
    .await;
    let error = keyed
        .err()
        .expect("a plain-text store with secrets is not encrypted in place");
    assert!(error.to_string().contains("not supported yet"), "{error}");
    assert_eq!(
        clear.load_token("srv").await.unwrap().unwrap().access_token,
        "at-clear"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other_dir);
}
