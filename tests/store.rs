//! The token store as the CLI uses it, against the OAuth test server: file modes under any
//! umask, server names that are not file names, stale flow rows.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use oauth_test_server::{Config, OAuthTestServer};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The CLI under `umask`, through `sh` (the umask is process-wide, so it is set in the child).
fn command_with_umask(umask: &str, args: &[&str]) -> tokio::process::Command {
    let line = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", &format!("umask {umask}; exec {line}")])
        .env_remove("BROWSER")
        .kill_on_drop(true);
    command
}

/// Runs `serve` under `umask` until every server has a valid token, checks the modes of every
/// file while it runs (the -wal and -shm files exist only then), stops it, returns its stderr.
async fn serve_and_check_modes(umask: &str, config: &Path, data: &Path, servers: i64) -> String {
    let mut child = command_with_umask(
        umask,
        &on_files(&["serve"], config.to_str().unwrap(), data.to_str().unwrap()),
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let db = data.join("tokens.db");
    let what = format!("serve (umask {umask}) storing {servers} valid token(s)");
    wait_until(&what, Duration::from_secs(30), || {
        valid_tokens(&db) >= servers
    })
    .await;
    let mut checked = vec![
        (data.to_path_buf(), 0o700),
        (db.clone(), 0o600),
        (data.join("tokens.db-wal"), 0o600),
        (data.join("tokens.db-shm"), 0o600),
        (data.join("locks"), 0o700),
    ];
    for lock in std::fs::read_dir(data.join("locks")).unwrap() {
        checked.push((lock.unwrap().path(), 0o600));
    }
    assert!(checked.len() > 5, "a lock file exists");
    let modes: Vec<(PathBuf, u32, u32)> = checked
        .into_iter()
        .map(|(path, want)| {
            let got = mode(&path);
            (path, got, want)
        })
        .collect();
    signal(&child, "-INT");
    let status = ends_within("serve stopping", Duration::from_secs(10), child.wait())
        .await
        .unwrap();
    let stderr = stderr_of(&mut child).await;
    assert!(status.success(), "serve failed: {stderr}");
    for (path, got, want) in modes {
        assert_eq!(
            got,
            want,
            "umask {umask}: {} is {got:04o}, not {want:04o}",
            path.display()
        );
    }
    stderr
}

#[derive(Clone, Copy, Debug)]
enum Start {
    /// No data dir yet.
    First,
    /// A data dir, locks/ and an (empty) database that are readable by everyone.
    Loose,
    /// A world-readable data dir with a corrupt database in it.
    Corrupt,
}

async fn modes_scenario(umask: &'static str, start: Start) {
    let srv = start_server().await;
    let dir = temp_dir(&format!("store-modes-{umask}-{start:?}"));
    let config = write_config(&dir, &srv, &["srv"]);
    let data = dir.join("data");
    let loosen = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    match start {
        Start::First => {}
        Start::Loose => {
            std::fs::create_dir_all(data.join("locks")).unwrap();
            std::fs::write(data.join("tokens.db"), b"").unwrap();
            loosen(&data, 0o777);
            loosen(&data.join("locks"), 0o777);
            loosen(&data.join("tokens.db"), 0o666);
        }
        Start::Corrupt => {
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("tokens.db"), vec![0x5au8; 8192]).unwrap();
            loosen(&data, 0o755);
            loosen(&data.join("tokens.db"), 0o644);
        }
    }
    let stderr = serve_and_check_modes(umask, &config, &data, 1).await;
    assert_no_secret(&srv, &stderr);
    match start {
        Start::First => {}
        Start::Loose => assert!(stderr.contains("tightened"), "a warning: {stderr}"),
        Start::Corrupt => {
            assert!(stderr.contains("moved aside"), "{stderr}");
            let aside: Vec<PathBuf> = std::fs::read_dir(&data)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().contains("tokens.db.corrupt-"))
                .collect();
            assert_eq!(aside.len(), 1, "the corrupt file was kept: {aside:?}");
            assert_eq!(mode(&aside[0]), 0o600, "the corrupt file holds tokens too");
        }
    }
}

async fn start_server() -> OAuthTestServer {
    start(Config::default()).await
}

#[tokio::test]
async fn modes_are_private_under_umask_022_and_000_first_loose_and_after_a_quarantine() {
    let mut runs = Vec::new();
    for umask in ["022", "000"] {
        for start in [Start::First, Start::Loose, Start::Corrupt] {
            runs.push(tokio::spawn(modes_scenario(umask, start)));
        }
    }
    for run in runs {
        run.await.expect("scenario passes");
    }
}

/// Runs the CLI (umask 022) to completion, within 60 s.
async fn run(args: &[&str]) -> std::process::Output {
    let command = command_with_umask("022", args).output();
    tokio::time::timeout(Duration::from_secs(60), command)
        .await
        .expect("the command ends within 60 s")
        .expect("the binary runs")
}

#[tokio::test]
async fn server_names_that_are_not_file_names_log_in_with_their_locks_inside_locks() {
    let srv = start_server().await;
    let dir = temp_dir("store-names");
    let names = ["../../x", "/abs", "org/server"];
    let config = write_config(&dir, &srv, &names);
    let data = dir.join("data");
    let (config_str, data_str) = (config.to_str().unwrap(), data.to_str().unwrap());
    let out = run(&on_files(&["auth", "login", "--all"], config_str, data_str)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    for name in names {
        assert!(
            stdout.contains(&format!("{name}: logged in")),
            "{name}: {stdout}"
        );
    }
    assert_eq!(srv.stats().token_requests_for("authorization_code"), 3);
    let locks: Vec<String> = std::fs::read_dir(data.join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        locks.len(),
        3,
        "one lock file per server in locks/: {locks:?}"
    );
    for lock in &locks {
        assert!(
            lock.len() == 37 && lock.ends_with(".lock"),
            "named from a hash: {lock}"
        );
    }
    for name in names {
        let key = mcpproxy_oauth::config::server_key(name, &srv.mcp_url());
        let raw = data.join("locks").join(format!("{key}.lock"));
        assert!(
            !raw.exists(),
            "no lock file from the raw name: {}",
            raw.display()
        );
    }
    // The database keeps mcpproxy's key (name + hash) for each server.
    let rows = json_of(&["auth", "status"], &data).await;
    let mut keys: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["server_key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    let mut expected: Vec<String> = names
        .iter()
        .map(|n| mcpproxy_oauth::config::server_key(n, &srv.mcp_url()))
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn the_sqlite3_shell_reads_the_status_view_right_whatever_its_version() {
    let version = match std::process::Command::new("sqlite3")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            eprintln!("SKIPPED: no sqlite3 shell on PATH (.ci/run installs Debian's sqlite3)");
            return;
        }
    };
    let path = temp_dir("store-sqlite3").join("tokens.db");
    let mut store = mcpproxy_oauth::store::TokenStore::open(&path).unwrap();
    let now = mcpproxy_oauth::clock::now_ms();
    for (name, expires_at) in [
        ("a-expired", Some(now - 1_000)),
        ("b-expiring", Some(now + 60_000)),
        ("c-valid", Some(now + 3_600_000)),
        ("d-unknown", None),
    ] {
        store
            .save_token(&mcpproxy_oauth::store::StoredToken {
                server_key: format!("{name}_0"),
                server_name: name.into(),
                server_url: "http://127.0.0.1:1/mcp".into(),
                resource: None,
                issuer: None,
                access_token: "at".into(),
                refresh_token: None,
                token_type: "Bearer".into(),
                scope: None,
                expires_at,
                obtained_at: now,
                flow_id: None,
                dpop: None,
            })
            .unwrap();
    }
    drop(store);
    // The README's query, through the shell the reader has (Debian 12: 3.40).
    let out = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("select server_name, status from oauth_token_status order by server_name")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a-expired|expired\nb-expiring|expiring\nc-valid|valid\nd-unknown|valid\n",
        "sqlite3 {version}"
    );
}

/// What `command --json` prints about a data dir (it succeeds).
async fn json_of(command: &[&str], data: &Path) -> serde_json::Value {
    let mut args = command.to_vec();
    args.extend(["--json", "--data-dir", data.to_str().unwrap()]);
    let out = run(&args).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON: {e}"))
}

/// `logs flows --json` of a data dir.
async fn flows(data: &Path) -> Vec<serde_json::Value> {
    serde_json::from_value(json_of(&["logs", "flows"], data).await).expect("a list of flows")
}

#[tokio::test]
async fn a_flow_left_running_by_a_killed_process_is_closed_as_abandoned_at_the_next_start() {
    let srv = start_server().await;
    let (config, data) = daemon_files(&srv, "store-abandoned");
    let (config, data_str) = (config.to_str().unwrap(), data.to_str().unwrap());
    // A login that waits for a browser nobody opens; it is killed mid-flow.
    let mut waiting = command_with_umask(
        "022",
        &[
            "auth",
            "login",
            "srv",
            "--config",
            config,
            "--data-dir",
            data_str,
            "--no-browser",
            "--login-timeout",
            "60s",
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let killed_flow = loop {
        let rows = if data.join("tokens.db").exists() {
            flows(&data).await
        } else {
            Vec::new()
        };
        if let Some(row) = rows.iter().find(|r| r["state"] == "running") {
            break row["flow_id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no running login flow within 20 s: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    waiting.start_kill().unwrap(); // SIGKILL: no cleanup runs
    waiting.wait().await.unwrap();
    let rows = flows(&data).await;
    assert_eq!(
        rows[0]["state"], "running",
        "read-only logs flows changes nothing: {rows:?}"
    );

    let out = run(&auth_args("login", config, data_str)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("closed as abandoned"), "{stderr}");
    let rows = flows(&data).await;
    let killed = rows
        .iter()
        .find(|r| r["flow_id"] == killed_flow.as_str())
        .expect("the killed flow's row");
    assert_eq!(killed["state"], "abandoned", "{rows:?}");
    assert!(killed["finished_at"].is_i64(), "{killed}");
    assert!(
        rows.iter()
            .any(|r| r["state"] == "succeeded" && r["kind"] == "login"),
        "{rows:?}"
    );
    let table = run(&["logs", "flows", "--data-dir", data_str]).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains("abandoned"));
}

#[tokio::test]
async fn a_foreign_or_half_migrated_database_gets_a_short_refusal_from_every_command() {
    let srv = start_server().await;
    let (config, data) = daemon_files(&srv, "store-foreign");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("tokens.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE recipes (id INTEGER PRIMARY KEY); PRAGMA user_version = 1;")
        .unwrap();
    let (config, data_str) = (config.to_str().unwrap(), data.to_str().unwrap());
    let login = auth_args("login", config, data_str);
    for args in [
        &["auth", "status", "--data-dir", data_str][..],
        &["logs", "flows", "--data-dir", data_str],
        &login,
    ] {
        let out = run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the file {} is not an mcpproxy-oauth token database",
                db.display()
            )) && stderr.contains("choose another --data-dir"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("no such table"), "{stderr}");
    }
    assert_eq!(
        srv.stats().authorize_requests,
        0,
        "no login into a foreign file"
    );

    // Our tables under user_version 0: a short refusal, no migration SQL.
    std::fs::remove_file(&db).unwrap();
    let ok = run(&login).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 0)
        .unwrap();
    let out = run(&login).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has the mcpproxy-oauth tables but schema version 0"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("CREATE") && stderr.lines().count() <= 3,
        "short: {stderr}"
    );
}

/// Runs the CLI as user `nobody` (65534), for files owned by another user; `None` when this
/// test process cannot switch users (not root, or no `setpriv`).
async fn run_as_nobody(args: &[&str]) -> Option<std::process::Output> {
    let probe = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return None;
    }
    let command = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(args)
        .env_remove("BROWSER")
        .kill_on_drop(true)
        .output();
    Some(
        tokio::time::timeout(Duration::from_secs(30), command)
            .await
            .expect("ends within 30 s")
            .unwrap(),
    )
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
}

#[tokio::test]
async fn files_of_another_user_are_refused_with_the_fix_and_nothing_moves() {
    let srv = start_server().await;
    let dir = temp_dir("store-owner");
    chown_nobody(&dir);
    let config = write_config(&dir, &srv, &["srv"]);
    let data = dir.join("data");
    // A healthy database of user nobody, with a -wal that belongs to root.
    drop(mcpproxy_oauth::store::TokenStore::open(&data.join("tokens.db")).unwrap());
    for path in [&data, &data.join("tokens.db")] {
        chown_nobody(path);
    }
    let wal = data.join("tokens.db-wal");
    std::fs::write(&wal, b"").unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (config, data_str) = (config.to_str().unwrap(), data.to_str().unwrap());
    let login = auth_args("login", config, data_str);
    let Some(out) = run_as_nobody(&login).await else {
        eprintln!("SKIPPED: cannot run as user nobody here (needs root and setpriv)");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}-wal", data.join("tokens.db").display()))
            && stderr.contains("nothing was moved"),
        "{stderr}"
    );
    let status = run_as_nobody(&["auth", "status", "--data-dir", data_str])
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("nothing was moved"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("corrupt")),
        "nothing moved: {names:?}"
    );
    assert_eq!(srv.stats().authorize_requests, 0);

    // A loose data dir that belongs to root: user nobody cannot tighten it, so it is refused.
    std::fs::remove_file(&wal).unwrap();
    std::os::unix::fs::chown(&data, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run_as_nobody(&login).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{data_str} is mode 0777, open to other users, and cannot be restricted to 0700"
        )) && stderr.contains("as its owner"),
        "{stderr}"
    );
    assert_eq!(
        srv.stats().authorize_requests,
        0,
        "no login into a folder others can read"
    );
}

#[tokio::test]
async fn logs_flows_shows_absurd_stored_times_without_a_panic() {
    let data = temp_dir("store-absurd-flows");
    let db = data.join("tokens.db");
    let mut store = mcpproxy_oauth::store::TokenStore::open(&db).unwrap();
    store
        .begin_flow("f-far", "srv_1", "srv", "login", "pid 1", 1)
        .unwrap();
    store.finish_flow("f-far", None).unwrap();
    drop(store);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE oauth_flows SET started_at = ?1, finished_at = ?2",
            [i64::MAX, i64::MIN],
        )
        .unwrap();
    let out = run(&["logs", "flows", "--data-dir", data.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("f-far"));
}

// ---- Transactions, group commit and flow retention, on real SQLite files ----

use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::store::db::{FlowRetention, RECENT_FLOWS_SQL};
use mcpproxy_oauth::store::{StoreError, StoredToken, TokenRegistry, TokenStore};

fn stored(key: &str, access: &str) -> StoredToken {
    stored_token(key, access, Some(format!("rt-{access}")))
}

/// 400 writers at once: every one is answered with its own result after a commit, fewer
/// commits than writes ran (they shared fsyncs), a failing job is rolled back alone, and a
/// fresh open of the file sees every acknowledged token.
#[actix::test]
async fn group_commit_answers_every_caller_and_a_reopen_sees_every_acknowledged_token() {
    const WRITERS: usize = 400;
    let dir = temp_dir("group-commit");
    let path = dir.join("tokens.db");
    let (registry, _) = TokenRegistry::start(&path).unwrap();
    let writes = (0..WRITERS).map(|i| {
        let registry = registry.clone();
        async move {
            let token = stored(&format!("srv-{i:03}"), &format!("at-{i}"));
            registry
                .write(move |s| {
                    s.save_token(&token)?;
                    // Every 50th job fails after writing: its write must not survive.
                    if i % 50 == 7 {
                        return Err(StoreError::NotCommitted(format!("job {i} refused")));
                    }
                    Ok(i)
                })
                .await
        }
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(writes),
    )
    .await
    .expect("every writer is answered within 60 s");
    let mut acknowledged = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(n) => {
                assert_eq!(n, i, "each caller gets its own job's result");
                acknowledged.push(i);
            }
            Err(e) => {
                assert_eq!(i % 50, 7, "only the failing jobs fail: {i}: {e}");
                assert!(e.to_string().contains(&format!("job {i} refused")), "{e}");
            }
        }
    }
    assert_eq!(acknowledged.len(), WRITERS - WRITERS / 50);
    let (groups, carried) = registry.group_commits();
    assert_eq!(carried, WRITERS as u64, "every write went through a group");
    assert!(
        groups < WRITERS as u64,
        "concurrent writes share commits: {groups} groups for {WRITERS} writes"
    );
    eprintln!("{WRITERS} writes in {groups} group commits");
    // A read queued behind the writes sees them (one connection, arrival order).
    let count = registry
        .call(|s| Ok(s.token_status()?.len()))
        .await
        .unwrap();
    assert_eq!(count, acknowledged.len());
    drop(registry);

    let reopened = TokenStore::open(&path).unwrap();
    for i in 0..WRITERS {
        let token = reopened.load_token(&format!("srv-{i:03}")).unwrap();
        if acknowledged.contains(&i) {
            let token = token.unwrap_or_else(|| panic!("acknowledged token {i} lost"));
            assert_eq!(token.access_token, format!("at-{i}"));
        } else {
            assert!(token.is_none(), "the failed job {i} was rolled back");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flow's start and its re-read are one job; its token save and its end are one
/// transaction: after `save_and_finish` both are there, and a failed one leaves neither.
#[actix::test]
async fn begin_and_read_is_one_job_and_save_and_finish_one_transaction() {
    let dir = temp_dir("save-and-finish");
    let path = dir.join("tokens.db");
    let (registry, _) = TokenRegistry::start(&path).unwrap();
    registry
        .write(|s| s.save_token(&stored("a", "at-old")))
        .await
        .unwrap();
    let start = registry
        .call(|s| s.begin_flow_and_read("f1", "a", "a", "refresh", "test", 60_000))
        .await
        .unwrap();
    assert!(start.not_recorded.is_none());
    assert_eq!(start.token.unwrap().access_token, "at-old");
    assert!(!start.token_by_login);
    let flow_state = |registry: &TokenRegistry, id: &'static str| {
        let registry = registry.clone();
        async move {
            registry
                .call(move |s| Ok(s.flows(None, Some(id), 1)?.pop().map(|f| f.state)))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        flow_state(&registry, "f1").await.as_deref(),
        Some("running")
    );
    let new = StoredToken {
        flow_id: Some("f1".into()),
        ..stored("a", "at-new")
    };
    registry
        .write(move |s| s.save_and_finish(&new, None, "f1"))
        .await
        .unwrap();
    assert_eq!(
        flow_state(&registry, "f1").await.as_deref(),
        Some("succeeded")
    );

    // A second flow whose save fails after its writes (inside the same group job): neither
    // the token nor the flow's end is stored.
    registry
        .call(|s| s.begin_flow_and_read("f2", "a", "a", "refresh", "test", 60_000))
        .await
        .unwrap();
    let newer = StoredToken {
        flow_id: Some("f2".into()),
        ..stored("a", "at-newer")
    };
    let failed = registry
        .write(move |s| {
            s.save_and_finish(&newer, None, "f2")?;
            Err::<(), _>(StoreError::NotCommitted("refused after the writes".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        flow_state(&registry, "f2").await.as_deref(),
        Some("running")
    );
    drop(registry);
    let reopened = TokenStore::open(&path).unwrap();
    assert_eq!(
        reopened.load_token("a").unwrap().unwrap().access_token,
        "at-new"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rows of flow history written straight into the file: (flow_id, state, started_at).
fn insert_flows(path: &Path, rows: &[(String, &str, i64)]) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    for (id, state, started_at) in rows {
        tx.execute(
            "INSERT INTO oauth_flows (flow_id, server_key, server_name, kind, state, owner, started_at, finished_at) VALUES (?1, 'k', 'srv', 'refresh', ?2, 'test', ?3, ?3)",
            rusqlite::params![id, state, started_at],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn flow_ids(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT flow_id FROM oauth_flows ORDER BY flow_id")
        .unwrap();
    statement
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Retention at open keeps the newest N, every running flow (however old) and the flow that
/// wrote a stored token; a step deletes at most `batch` rows; flows past the age go even
/// when among the newest N.
#[test]
fn retention_keeps_the_newest_n_and_the_flows_in_flight() {
    let dir = temp_dir("retention");
    let path = dir.join("tokens.db");
    let mut store = TokenStore::open(&path).unwrap();
    store
        .save_token(&StoredToken {
            flow_id: Some("old-003".into()),
            ..stored("k", "at")
        })
        .unwrap();
    drop(store);
    let now = now_ms();
    let mut rows: Vec<(String, &str, i64)> = (0..100)
        .map(|i| {
            (
                format!("old-{i:03}"),
                "succeeded",
                now - 200_000 + i * 1_000,
            )
        })
        .collect();
    rows.push(("running-old".into(), "running", now - 300_000));
    insert_flows(&path, &rows);

    let mut store = TokenStore::open(&path).unwrap();
    store.set_retention(FlowRetention {
        max_age: Duration::from_secs(3600),
        max_count: 10,
        batch: 40,
        every_flows: 1_000,
    });
    assert_eq!(store.prune_flows().unwrap(), 40, "one step is bounded");
    let deleted = store.prune_flows_at_open(20).unwrap();
    assert_eq!(
        deleted,
        100 + 1 - 40 - 10 - 1 - 1,
        "the rest, in bounded steps"
    );
    let mut expected: Vec<String> = (90..100).map(|i| format!("old-{i:03}")).collect();
    expected.push("old-003".into());
    expected.push("running-old".into());
    expected.sort();
    assert_eq!(flow_ids(&path), expected);

    // By age: of the 10 newest, all but the four newest are older than the age (with half a
    // second between the limit and the rows either side of it).
    let started_96 = now - 200_000 + 96 * 1_000;
    store.set_retention(FlowRetention {
        max_age: Duration::from_millis((now_ms() - started_96 + 500) as u64),
        max_count: 10,
        batch: 40,
        every_flows: 1_000,
    });
    store.prune_flows().unwrap();
    let mut expected: Vec<String> = (96..100).map(|i| format!("old-{i:03}")).collect();
    expected.push("old-003".into());
    expected.push("running-old".into());
    expected.sort();
    assert_eq!(flow_ids(&path), expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `recent_flows` reads the index on started_at: no sort of the table.
#[test]
fn recent_flows_is_served_by_an_index() {
    let dir = temp_dir("flows-index");
    let path = dir.join("tokens.db");
    drop(TokenStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {RECENT_FLOWS_SQL}"))
        .unwrap()
        .query_map([20], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("; ");
    assert!(plan.contains("USING INDEX oauth_flows_by_start"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    let _ = std::fs::remove_dir_all(&dir);
}
