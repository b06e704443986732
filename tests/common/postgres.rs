//! A real PostgreSQL for a test, from Debian's `postgresql` package (nothing is downloaded):
//! `initdb` into a temporary folder, as an unprivileged user when the tests run as root
//! (PostgreSQL refuses root; `nobody` owns the folder), listening on 127.0.0.1 only (no Unix
//! socket) on a free port, started by the test, ready within a bounded wait, stopped (fast
//! shutdown) on drop, even when the test panics. `stop` and `start` stop it and start it again
//! on the same folder and port. Self-contained (no other module of tests/common), so a
//! benchmark can include it with `#[path = "../tests/common/postgres.rs"]`.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A running (or stopped) PostgreSQL of one test.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The user it runs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    /// `name=value` server settings beyond the defaults below (the benchmarks'), passed with
    /// `-c` after them, so they win.
    settings: Vec<String>,
    child: Option<Child>,
}

/// The folder of Debian's PostgreSQL binaries (the newest version installed).
fn binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// `nobody`'s uid and gid, from /etc/passwd.
fn nobody() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"nobody"))
            .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
            .flatten()
    })
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Postgres {
    /// Starts a fresh server, or says why none can run here and returns `None` (outside CI
    /// only: in CI, where `.ci/run` installs `postgresql`, a missing server fails the test).
    pub fn start(name: &str) -> Option<Postgres> {
        Postgres::start_with(name, &[])
    }

    /// `start`, with `name=value` server settings that override the defaults (`fsync=on` for
    /// a benchmark that measures durable commits, `shared_preload_libraries=...`).
    pub fn start_with(name: &str, settings: &[&str]) -> Option<Postgres> {
        let Some(bin) = binaries() else {
            let why = "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (Debian's \
                       `postgresql` package; .ci/run installs it)";
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let run_as = if running_as_root() {
            match nobody() {
                Some(ids) => Some(ids),
                None => {
                    let why = "running as root and no `nobody` user to run PostgreSQL as";
                    assert!(std::env::var_os("CI").is_none(), "{why}");
                    eprintln!("SKIPPED: {why}");
                    return None;
                }
            }
        } else {
            None
        };
        // Run as `nobody`, the server must reach its folder: /tmp (1777) rather than a TMPDIR
        // that may sit in root's home.
        let base = match run_as {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!(
            "mcpproxy-oauth-pg-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let mut server = Postgres {
            bin,
            dir,
            port: 0,
            run_as,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.initdb();
        // A port taken between looking and binding: another one, a few times.
        for attempt in 1..=3 {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(log) if attempt < 3 => eprintln!("PostgreSQL did not start, again: {log}"),
                Err(log) => panic!("PostgreSQL did not start within {READY_WITHIN:?}: {log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .args(["-D"])
            .arg(self.data())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server on its folder and port and waits until it accepts connections.
    fn try_start(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=200"])
            // Tests do not survive a power cut: no fsync (commits still reach the OS before
            // they are acknowledged, so a stop, fast or immediate, loses nothing).
            .args(["-c", "fsync=off"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("it exited ({status}): {}", self.log_text()));
            }
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                self.stop();
                return Err(format!("not ready: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Starts the stopped server again on the same folder and port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        if let Err(log) = self.try_start() {
            panic!("PostgreSQL did not start again: {log}");
        }
    }

    /// Stops the server (fast shutdown: sessions ended, everything committed kept).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < STOP_WITHIN {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("PostgreSQL did not stop within {STOP_WITHIN:?}; killed");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server (user `postgres`, trusted on loopback).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database of its own for one test, and returns its URL.
    pub async fn create_database(&self, db: &str) -> String {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("the test server accepts connections");
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .expect("a database of the test's own");
        drop(client);
        let _ = driver.await;
        self.url(db)
    }

    /// A direct connection to `db` (its driver runs on the current runtime), for looking at
    /// rows as an operator's psql would.
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .expect("the test server accepts connections");
        tokio::spawn(connection);
        client
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
