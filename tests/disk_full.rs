//! A full disk costs no login (issue #20). The real `serve` keeps its data directory on a
//! small tmpfs mounted for the test (so root only: skipped with a message otherwise), against
//! the OAuth test server, which rotates refresh tokens and revokes a whole family when a
//! rotated one comes back. A filler file takes every free byte of the tmpfs.
//!
//! - With the ballast (`DATA_DIR/.ballast`), the saves of rotated refresh tokens still go
//!   through: the ballast is released, the token row holds the newest refresh token, and a
//!   kill -9 followed by a restart needs no login and presents no spent refresh token.
//! - Without room (the disk filled again after the ballast was released), the rotated token
//!   serves from memory, no refresh spends it again while its save fails (the machine holds a
//!   proactive refresh back for it: shown on virtual time in `tests/save_failures.rs`), and
//!   once the filler is deleted the save retry stores it by itself; the ballast comes back.
#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    CURL_BROWSER, Deadline, Serve, assert_no_secret, log_to, serve_command, start,
    stored_refresh_token, temp_dir, wait_until, write_config,
};
use mcpproxy_oauth::store::{BALLAST_BYTES, BALLAST_FILE};
use oauth_test_server::{Config, OAuthTestServer};
use serde_json::Value;

/// The tmpfs's size: the database, the ballast, and room to re-create it (16 MiB free).
const TMPFS_MIB: u64 = 32;

/// A tmpfs mounted on a fresh folder for as long as this lives; unmounted on drop (lazily if
/// something still holds it: a killed daemon may not have exited yet).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str) -> Result<Tmpfs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("the test does not run as root, so it cannot mount a tmpfs".into());
        }
        let dir = temp_dir(name);
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={TMPFS_MIB}m,mode=0700"))
            .args(["tmpfs", dir.to_str().unwrap()])
            .output()
            .map_err(|e| format!("mount does not run: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t tmpfs failed ({}): this environment does not allow mounts",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |args: &[&str]| {
            std::process::Command::new("umount")
                .args(args)
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(&[]) && !umount(&["-l"]) {
            eprintln!("could not unmount {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Bytes this user may still write in `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).unwrap();
    s.f_bavail * s.f_frsize
}

/// Writes `path` until the disk is full (ENOSPC), in ever smaller pieces, down to one page
/// (quickly: a tmpfs needs no sync, and a save landing mid-fill would release the ballast early).
fn fill(path: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for piece in [1 << 20, 4096] {
        let bytes = vec![0x5a_u8; piece];
        loop {
            match file.write_all(&bytes) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    break;
                }
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let free = free_bytes(path.parent().unwrap());
    assert!(free < 4096, "the disk is full: {free} bytes free");
}

/// The ballast's size, `None` when it is not there.
fn ballast(data: &Path) -> Option<u64> {
    std::fs::metadata(data.join(BALLAST_FILE))
        .ok()
        .map(|m| m.len())
}

/// A running `serve`: its API (address and key) and the log file it writes (outside the
/// tmpfs, so that a full disk does not stop the log).
struct Daemon(Serve);

impl Daemon {
    async fn start(config: &Path, data: &Path, log: &Path) -> Daemon {
        let mut command = serve_command(config, data, CURL_BROWSER);
        command.stderr(log_to(log));
        Daemon(Serve::start(command, log, Duration::from_secs(10)).await)
    }

    /// The API's view of the server `srv`.
    async fn server(&self) -> Value {
        let answer = self
            .0
            .api(reqwest::Method::GET, "/api/v1/servers/srv")
            .send()
            .await
            .expect("the API answers");
        answer.json().await.unwrap()
    }

    /// Waits (bounded) until `srv` is connected with a token that is not expired.
    async fn until_connected(&self) -> Value {
        let deadline = Deadline::after("srv connected", Duration::from_secs(30));
        loop {
            let view = self.server().await;
            if view["phase"] == "connected" && view["authenticated"] == true {
                return view;
            }
            deadline.again(view, Duration::from_millis(50)).await;
        }
    }

    /// `POST .../refresh`: refreshes now; its HTTP status.
    async fn refresh(&self) -> u16 {
        self.0
            .api(reqwest::Method::POST, "/api/v1/servers/srv/refresh")
            .send()
            .await
            .expect("the API answers")
            .status()
            .as_u16()
    }

    /// kill -9, and waits for the process to end.
    async fn kill_9(mut self) {
        self.0.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.0.child.wait())
            .await
            .expect("a killed serve ends within 10 s")
            .unwrap();
    }
}

/// The test server (tokens of `ttl`, refresh tokens rotated, reuse revoking the family), a
/// config naming it, the tmpfs for the data directory, and where the log goes.
struct Setup {
    srv: OAuthTestServer,
    config: PathBuf,
    log: PathBuf,
    tmpfs: Tmpfs,
}

/// What each test starts from: `serve` on the tmpfs, logged in, its ballast created; `None`
/// (the test skipped, with a message) where no tmpfs can be mounted.
async fn setup(name: &str, ttl: Duration) -> Option<(Setup, Daemon)> {
    let tmpfs = match Tmpfs::mount(name) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    let srv = start(Config {
        access_token_ttl: ttl,
        rotate_refresh_tokens: true,
        ..Config::default()
    })
    .await;
    let files = temp_dir(name);
    let config = write_config(&files, &srv, &["srv"]);
    let log = files.join("serve.log");
    let daemon = Daemon::start(&config, &tmpfs.dir, &log).await;
    daemon.until_connected().await;
    assert_eq!(ballast(&tmpfs.dir), Some(BALLAST_BYTES), "created at start");
    let setup = Setup {
        srv,
        config,
        log,
        tmpfs,
    };
    Some((setup, daemon))
}

fn newest_issued(srv: &OAuthTestServer) -> Option<String> {
    srv.secrets().refresh_tokens.last().cloned()
}

fn refreshes(srv: &OAuthTestServer) -> u64 {
    srv.stats().token_requests_for("refresh_token")
}

/// Waits (bounded) until one more refresh happened and the token row holds its refresh token.
async fn until_a_refresh_is_saved(s: &Setup, what: &str) {
    let done = refreshes(&s.srv);
    wait_until(what, Duration::from_secs(20), || {
        refreshes(&s.srv) > done && stored_refresh_token(&s.tmpfs.dir) == newest_issued(&s.srv)
    })
    .await;
}

/// After the restart: connected from the stored token, a refresh works with it, and the
/// server saw one login, no reuse and no refused grant. The log holds no secret.
async fn restart_costs_no_login(s: &Setup) {
    let data = &s.tmpfs.dir;
    let again = Daemon::start(&s.config, data, &s.log).await;
    again.until_connected().await;
    assert_eq!(again.refresh().await, 200, "a refresh after the restart");
    wait_until(
        "the newest refresh token in the token row",
        Duration::from_secs(10),
        || stored_refresh_token(data) == newest_issued(&s.srv),
    )
    .await;
    let stats = s.srv.stats();
    assert_eq!(stats.authorize_requests, 1, "no login but the first");
    assert_eq!(
        stats.refresh_token_reuse, 0,
        "a spent refresh token was presented: the family is revoked"
    );
    assert_eq!(stats.token_errors.get("invalid_grant"), None);
    assert_eq!(
        ballast(data),
        Some(BALLAST_BYTES),
        "the ballast is back once there is room"
    );
    again.kill_9().await;
    assert_no_secret(&s.srv, &std::fs::read_to_string(&s.log).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_the_ballast_takes_the_saves_and_a_kill_9_costs_no_login() {
    let Some((s, daemon)) = setup("disk-full-ballast", Duration::from_secs(4)).await else {
        return;
    };
    let data = &s.tmpfs.dir;
    // Filled right after a saved refresh: the next is 3 s away, so no save lands mid-fill.
    until_a_refresh_is_saved(&s, "a refresh saved before the fill").await;
    fill(&data.join("filler"));
    // Refreshes go on (4 s tokens refresh every 3 s), each rotating the refresh token.
    let before = refreshes(&s.srv);
    wait_until(
        "two refreshes on the full disk",
        Duration::from_secs(30),
        || refreshes(&s.srv) >= before + 2,
    )
    .await;
    assert_eq!(
        ballast(data),
        None,
        "the ballast was released for the saves"
    );
    let log = std::fs::read_to_string(&s.log).unwrap();
    let released = format!(
        "is full: its ballast ({} MiB) was released",
        BALLAST_BYTES >> 20
    );
    assert!(
        log.contains(&released) && log.contains(&format!("`df {}`", data.display())),
        "a warning names the disk and what to do: {log}"
    );
    // The token row holds the newest refresh token: kill -9 right after it got there (the
    // next refresh is 3 s away).
    until_a_refresh_is_saved(&s, "the newest refresh token in the token row").await;
    daemon.kill_9().await;
    assert_eq!(
        stored_refresh_token(data),
        newest_issued(&s.srv),
        "the database holds the newest refresh token after the kill"
    );
    assert_eq!(s.srv.stats().refresh_token_reuse, 0);

    std::fs::remove_file(data.join("filler")).unwrap();
    restart_costs_no_login(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_room_a_rotated_token_serves_from_memory_until_the_disk_takes_it() {
    // Hour-long tokens: every refresh here is asked for through the API.
    let Some((s, daemon)) = setup("disk-full-no-room", Duration::from_secs(3600)).await else {
        return;
    };
    let data = &s.tmpfs.dir;
    fill(&data.join("filler"));
    assert_eq!(daemon.refresh().await, 200);
    assert_eq!(ballast(data), None, "the first save released the ballast");
    assert_eq!(stored_refresh_token(data), newest_issued(&s.srv));

    // No room left at all: the next rotation cannot be saved.
    fill(&data.join("filler-2"));
    let saved = stored_refresh_token(data);
    assert_eq!(daemon.refresh().await, 200, "the refresh itself succeeds");
    let rotated = refreshes(&s.srv);
    assert_ne!(
        stored_refresh_token(data),
        newest_issued(&s.srv),
        "without room the save fails"
    );
    assert_eq!(stored_refresh_token(data), saved, "the old row is intact");
    // The save is retried (after 1 s, then 2 s): each fails, and nothing refreshes again
    // meanwhile; the valid access token keeps serving.
    let retries = |log: &str| log.matches("the token still cannot be saved").count();
    wait_until("two failed save retries", Duration::from_secs(20), || {
        retries(&std::fs::read_to_string(&s.log).unwrap()) >= 2
    })
    .await;
    let view = daemon.until_connected().await;
    assert_eq!(
        refreshes(&s.srv),
        rotated,
        "an unsaved refresh token was spent again: {view}"
    );

    // Room again: the save retry stores the token by itself, and the ballast comes back.
    std::fs::remove_file(data.join("filler")).unwrap();
    std::fs::remove_file(data.join("filler-2")).unwrap();
    wait_until(
        "the retried save to store the newest refresh token",
        Duration::from_secs(40),
        || stored_refresh_token(data) == newest_issued(&s.srv),
    )
    .await;
    wait_until(
        "the ballast to be re-created",
        Duration::from_secs(10),
        || ballast(data) == Some(BALLAST_BYTES),
    )
    .await;
    assert_eq!(refreshes(&s.srv), rotated, "recovered without a refresh");
    daemon.kill_9().await;
    restart_costs_no_login(&s).await;
}
