//! The store's rough edges an operator hit (issue #20): `tokens rekey` beside a running daemon
//! is refused with nothing changed (also after the daemon was killed with -9, the refusal
//! goes away), a foreign or refused database is left exactly as it was by every command that
//! opens one, a key file of 32 raw bytes is a key and any other content is named exactly, and
//! a fresh data directory starts without a warning about its modes.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use mcpproxy_oauth::store::cipher::StoreKey;
use mcpproxy_oauth::store::{KeySpec, Sealing, TokenStore};
use oauth_test_server::{Config, OAuthTestServer};

/// A file as these tests compare it: its bytes, mode and modification time.
#[derive(PartialEq, Eq)]
struct Seen {
    bytes: Vec<u8>,
    mode: u32,
    modified: SystemTime,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::hash::{Hash, Hasher};
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        self.bytes.hash(&mut hash);
        write!(
            f,
            "{} bytes (hash {:016x}), mode {:04o}, modified {:?}",
            self.bytes.len(),
            hash.finish(),
            self.mode,
            self.modified
        )
    }
}

/// What differs between two looks at a folder: a line per entry added, gone or changed.
fn differences(before: &BTreeMap<String, Seen>, after: &BTreeMap<String, Seen>) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .map(|name| format!("{name}: {:?} -> {:?}", before.get(name), after.get(name)))
        .collect()
}

fn seen(path: &Path) -> Seen {
    let meta = std::fs::metadata(path).unwrap();
    Seen {
        bytes: if meta.is_file() {
            std::fs::read(path).unwrap()
        } else {
            Vec::new()
        },
        mode: meta.permissions().mode() & 0o7777,
        modified: meta.modified().unwrap(),
    }
}

/// The folder itself (its mode) and every entry in it, by name. Of a `-shm` file only its
/// mode: it is SQLite's shared-memory index, where every reader writes its read marks.
fn everything_in(dir: &Path) -> BTreeMap<String, Seen> {
    let mut all = BTreeMap::from([(".".to_string(), seen(dir))]);
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut seen = seen(&entry.path());
        if name.ends_with("-shm") {
            (seen.bytes, seen.modified) = (Vec::new(), SystemTime::UNIX_EPOCH);
        }
        all.insert(name, seen);
    }
    all
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `serve` with `args` (it never opens a browser by itself), once it says it is keeping
/// servers authorized: the child, its stderr so far, and the rest of its stderr (read on, so
/// that serve never blocks on a full pipe) when it ends.
async fn serve_until_ready(
    args: &[&str],
) -> (
    tokio::process::Child,
    String,
    tokio::task::JoinHandle<String>,
) {
    let mut child = spawn(&[&["serve", "--non-interactive"], args].concat());
    let mut lines = stderr_lines(&mut child);
    let mut seen = String::new();
    let within = Duration::from_secs(30);
    read_until(&mut lines, &mut seen, within, "serve's start", |line| {
        line.contains("keeping servers authorized").then_some(())
    })
    .await;
    let rest = rest_of(lines);
    (child, seen, rest)
}

/// `--config CONFIG --data-dir DATA`.
fn on<'a>(config: &'a Path, data: &'a Path) -> [&'a str; 4] {
    [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]
}

/// Logs `srv` in with `auth login` on `config` and `data` (with `extra` flags).
async fn logged_in(config: &Path, data: &Path, extra: &[&str]) {
    let mut args = auth_args("login", config.to_str().unwrap(), data.to_str().unwrap());
    args.extend_from_slice(extra);
    let out = run(&args, &[]).await;
    assert!(out.status.success(), "auth login: {}", text(&out));
}

async fn rekey(data: &Path) -> std::process::Output {
    run(
        &["tokens", "rekey", "--data-dir", data.to_str().unwrap()],
        &[],
    )
    .await
}

/// Every row of every table, as text: what the database holds, whatever its file looks like.
fn rows(db: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut all = Vec::new();
    for table in ["oauth_tokens", "oauth_clients", "oauth_flows", "oauth_meta"] {
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = statement.column_count();
        let mut query = statement.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                .collect();
            all.push(format!("{table}: {}", values.join(" | ")));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_beside_a_running_daemon_is_refused_and_changes_nothing() {
    let srv = start(Config::default()).await;
    let (config, data) = daemon_files(&srv, "rekey-daemon");
    logged_in(&config, &data, &[]).await;
    let db = data.join("tokens.db");
    let key_file = data.join("key");

    let (mut daemon, _, _) = serve_until_ready(&on(&config, &data)).await;
    let pid = daemon.id().unwrap();
    let (stored, key) = (rows(&db), seen(&key_file));
    let (db_file, files) = (seen(&db), everything_in(&data));
    let out = rekey(&data).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {}", text(&out));
    assert!(
        stderr.contains(&format!("pid {pid}: mcpproxy-oauth serve"))
            && stderr.contains("a daemon")
            && stderr.contains("nothing was changed")
            && stderr.contains("stop it first"),
        "names the daemon and what to do: {stderr}"
    );
    assert_eq!(rows(&db), stored, "the database holds what it held");
    assert_eq!(seen(&db), db_file, "the database file is untouched");
    assert_eq!(seen(&key_file), key, "the key file is untouched");
    assert_eq!(
        differences(&files, &everything_in(&data)),
        Vec::<String>::new(),
        "no file added, moved, re-moded or written"
    );

    // `auth` commands stay allowed beside the daemon.
    let refresh = run(
        &auth_args("refresh", config.to_str().unwrap(), data.to_str().unwrap()),
        &[],
    )
    .await;
    assert!(refresh.status.success(), "auth refresh: {}", text(&refresh));
    let status = run(
        &["auth", "status", "--data-dir", data.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(status.status.success(), "auth status: {}", text(&status));

    // Killed with -9, the daemon holds nothing any more: the kernel let its lock go.
    signal(&daemon, "-KILL");
    ends_within("serve dying", Duration::from_secs(10), daemon.wait())
        .await
        .unwrap();
    let out = rekey(&data).await;
    assert!(
        out.status.success(),
        "rekey once the daemon is gone: {}",
        text(&out)
    );
    assert_ne!(seen(&key_file).bytes, key.bytes, "a new key");
    let refresh = run(
        &auth_args("refresh", config.to_str().unwrap(), data.to_str().unwrap()),
        &[],
    )
    .await;
    assert!(
        refresh.status.success(),
        "the tokens open with the new key: {}",
        text(&refresh)
    );
    srv.shutdown().await;
}

/// Every command that opens a database, on `config` and `data`.
fn commands_that_open_a_database<'a>(config: &'a str, data: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec![
            "serve",
            "--non-interactive",
            "--config",
            config,
            "--data-dir",
            data,
        ],
        auth_args("login", config, data),
        auth_args("refresh", config, data),
        vec!["auth", "status", "--data-dir", data],
        vec![
            "auth",
            "status",
            "--json",
            "--config",
            config,
            "--data-dir",
            data,
        ],
        vec![
            "auth",
            "doctor",
            "srv",
            "--config",
            config,
            "--data-dir",
            data,
        ],
        vec!["logs", "flows", "--data-dir", data],
        vec!["tokens", "rekey", "--data-dir", data],
    ]
}

/// A data directory (mode `dir_mode`) beside a config naming the test server: (config, data).
/// Sets the schema version of the token database in `data` to `version`.
fn set_schema_version(data: &Path, version: i32) {
    rusqlite::Connection::open(data.join("tokens.db"))
        .unwrap()
        .pragma_update(None, "user_version", version)
        .unwrap();
}

fn files_for(srv: &OAuthTestServer, name: &str, dir_mode: u32) -> (PathBuf, PathBuf) {
    let (config, data) = daemon_files(srv, name);
    std::fs::create_dir_all(&data).unwrap();
    set_mode(&data, dir_mode);
    (config, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_or_refused_database_is_left_exactly_as_it_was() {
    let srv = start(Config::default()).await;
    let mut cases: Vec<(&str, PathBuf, PathBuf, &str)> = Vec::new();

    // Another program's SQLite file, readable by others in a folder open to others.
    let (config, data) = files_for(&srv, "foreign", 0o755);
    let db = data.join("tokens.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO recipes (name) VALUES ('bread');
             PRAGMA user_version = 3;",
        )
        .unwrap();
    set_mode(&db, 0o644);
    cases.push((
        "foreign",
        config,
        data,
        "is not an mcpproxy-oauth token database",
    ));

    // Ours, at a schema version newer than this build.
    let (config, data) = files_for(&srv, "newer", 0o700);
    logged_in(&config, &data, &[]).await;
    set_schema_version(&data, 99);
    cases.push(("newer", config, data, "newer than this build knows"));

    // Ours, encrypted with another key than the key file beside it (left loose: not re-moded).
    let (config, data) = files_for(&srv, "wrong-key", 0o700);
    logged_in(&config, &data, &[]).await;
    let key_file = data.join("key");
    std::fs::write(&key_file, format!("{}\n", StoreKey::generate().to_base64())).unwrap();
    set_mode(&key_file, 0o644);
    cases.push(("wrong key", config, data, "was encrypted with another key"));

    // Ours, with the tables but schema version 0.
    let (config, data) = files_for(&srv, "half", 0o700);
    logged_in(&config, &data, &[]).await;
    set_schema_version(&data, 0);
    cases.push(("half migrated", config, data, "schema version 0"));

    let requests_before = srv.stats().authorize_requests;
    for (case, config, data, refusal) in &cases {
        let (config, data) = (config.to_str().unwrap(), Path::new(data));
        for args in commands_that_open_a_database(config, data.to_str().unwrap()) {
            let before = everything_in(data);
            let out = run(&args, &[]).await;
            let after = everything_in(data);
            let said = text(&out);
            // `auth doctor` reports what it finds in the store beside its other steps, and a
            // wrong key does not stop the commands that read no secret: they read the file
            // (SQLite's -wal and -shm files may appear beside it) and change nothing in it.
            let doctor = args[..2] == ["auth", "doctor"];
            let reads_no_secret = matches!(args[..2], ["auth", "status"] | ["logs", "flows"]);
            let differ = differences(&before, &after);
            if doctor || (*case == "wrong key" && reads_no_secret) {
                let kept = ["tokens.db", "key"];
                let changed: Vec<&String> = differ
                    .iter()
                    .filter(|d| kept.iter().any(|k| d.starts_with(&format!("{k}: "))))
                    .collect();
                assert!(changed.is_empty(), "{case}: {args:?}: {changed:?} ({said})");
                continue;
            }
            assert_eq!(out.status.code(), Some(1), "{case}: {args:?}: {said}");
            assert!(said.contains(refusal), "{case}: {args:?}: {said}");
            assert!(
                said.contains("nothing was changed"),
                "{case}: {args:?}: {said}"
            );
            assert_eq!(
                differ,
                Vec::<String>::new(),
                "{case}: {args:?} left the database, its folder and every file in it as they were ({said})"
            );
        }
    }
    assert_eq!(
        srv.stats().authorize_requests,
        requests_before,
        "no login into a refused file"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_of_32_raw_bytes_is_a_key_and_any_other_content_is_named() {
    let srv = start(Config::default()).await;
    let (config, data) = daemon_files(&srv, "raw-key");
    let dir = config.parent().unwrap().to_path_buf();
    // 32 raw bytes, not UTF-8 (as `head -c 32 /dev/urandom` writes them).
    let mut raw = [0u8; 32];
    raw[0] = 0xff;
    for (i, b) in raw.iter_mut().enumerate().skip(1) {
        *b = (i as u8).wrapping_mul(37) ^ 0xa5;
    }
    let raw_file = dir.join("raw.key");
    std::fs::write(&raw_file, raw).unwrap();
    set_mode(&raw_file, 0o600);
    let raw_arg = raw_file.to_str().unwrap();
    logged_in(&config, &data, &["--key-file", raw_arg]).await;
    let refresh = run(
        &[
            auth_args("refresh", config.to_str().unwrap(), data.to_str().unwrap()),
            vec!["--key-file", raw_arg],
        ]
        .concat(),
        &[],
    )
    .await;
    assert!(refresh.status.success(), "{}", text(&refresh));
    assert_eq!(
        std::fs::read(&raw_file).unwrap(),
        raw,
        "the key file as written"
    );
    // The raw key is the key the file was sealed with: the library opens it too.
    let sealing = Sealing::Encrypted(KeySpec {
        key_file: Some(raw_file.clone()),
    });
    let store = TokenStore::open_with(&data.join("tokens.db"), &sealing).unwrap();
    assert!(store.is_encrypted());
    drop(store);

    // Anything else: the file named, what it must hold, never its content.
    for (name, content) in [
        ("text.key", b"not-a-key-at-all-but-some-words\n".to_vec()),
        ("short.key", b"c2hvcnQ=\n".to_vec()),
        ("binary.key", vec![0xfe; 33]),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, &content).unwrap();
        let out = run(
            &[
                auth_args("refresh", config.to_str().unwrap(), data.to_str().unwrap()),
                vec!["--key-file", file.to_str().unwrap()],
            ]
            .concat(),
            &[],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("the key file {}", file.display()))
                && stderr.contains(
                    "the key file must hold base64 of 32 bytes, as `openssl rand -base64 32` prints"
                ),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("UTF-8"), "{name}: {stderr}");
        let shown = String::from_utf8_lossy(&content);
        let shown = shown.trim();
        assert!(
            shown.len() < 4 || !stderr.contains(shown),
            "{name}: the content is not echoed: {stderr}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), content, "{name}: untouched");
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_directory_starts_without_a_warning_about_its_modes() {
    let srv = start(Config::default()).await;
    // `auth login` into a data directory that does not exist yet (nor its parent).
    let (config, data) = daemon_files(&srv, "fresh-login");
    let data = data.join("nested").join("data");
    let login = run(
        &[
            auth_args("login", config.to_str().unwrap(), data.to_str().unwrap()),
            vec!["--log-level", "debug"],
        ]
        .concat(),
        &[],
    )
    .await;
    let said = text(&login);
    assert!(login.status.success(), "{said}");
    assert!(!said.contains("open to other users"), "{said}");
    assert!(!said.contains("tightened"), "{said}");
    assert_eq!(mode(&data), 0o700, "created private");
    assert!(
        said.contains("created a new store key"),
        "the log was captured: {said}"
    );

    // `serve --listen` into a fresh one: the API key, the store key, the database, the locks.
    let (config, data) = daemon_files(&srv, "fresh-serve");
    let (mut child, log, rest) =
        serve_until_ready(&[&["--listen", "127.0.0.1:0"], &on(&config, &data)[..]].concat()).await;
    stop(&mut child, "-TERM").await;
    let log = log + &rest.await.unwrap();
    assert!(log.contains("the API key"), "the log was captured: {log}");
    assert!(!log.contains("open to other users"), "{log}");
    for (path, want) in [
        (data.clone(), 0o700),
        (data.join("api-key"), 0o600),
        (data.join("key"), 0o600),
        (data.join("tokens.db"), 0o600),
        (data.join("tokens.db.lock"), 0o600),
    ] {
        assert_eq!(mode(&path), want, "{}", path.display());
    }
    srv.shutdown().await;
}
