//! `auth login|status|logout|refresh|doctor`: one-shot operations on the shared database.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::config;
use mcpproxy_oauth::store::TokenStore;
use mcpproxy_oauth::supervisor::{
    SupervisorError, SupervisorHandle, database_path, default_data_dir,
};
use mcpproxy_oauth::telemetry::inert::safe;

use super::{Common, ReadStoreArgs, Report, fail, no_database, start};

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Log in to a server (or all), opening the browser.
    Login {
        /// The server's name in the config.
        server: Option<String>,
        #[arg(long, conflicts_with = "server")]
        all: bool,
        /// For a host without a browser: print the authorization link, then read from standard
        /// input the address the browser (on any machine) ended on after approving, and finish
        /// the login with it. A wrong address is refused and another is read.
        #[arg(long, conflicts_with = "all", requires = "server")]
        paste: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Token status of every server, from the database (no secrets).
    Status {
        #[arg(long)]
        json: bool,
        /// Also list configured servers that have no token yet.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        store: ReadStoreArgs,
    },
    /// Forget a server's token (revoking it at the server where possible).
    Logout {
        server: String,
        #[command(flatten)]
        common: Common,
    },
    /// Walk what a login needs (MCP endpoint, discovery, client identity, token endpoint)
    /// without a browser or side effects, and name the first failing step.
    Doctor {
        server: String,
        /// mcpproxy's mcp_config.json.
        #[arg(long)]
        config: PathBuf,
        /// Where tokens.db lives: the server's stored token is reported beside the steps
        /// (read only; default: $XDG_DATA_HOME/mcpproxy-oauth).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Refresh a server's token now.
    Refresh {
        server: String,
        #[command(flatten)]
        common: Common,
    },
}

/// What the store holds for `server`, for `auth doctor` (read only; never a secret).
fn stored_token(server: &config::UpstreamConfig, data_dir: &std::path::Path) -> serde_json::Value {
    let database = database_path(data_dir);
    match TokenStore::open_read_only(&database) {
        Ok(Some(store)) => match store.token_status() {
            Ok(rows) => match rows.into_iter().find(|r| r.server_key == server.server_key) {
                Some(row) => serde_json::json!({
                    "database": database.display().to_string(),
                    "token": true,
                    "status": row.status,
                    "expires_at": row.expires_at,
                    "has_refresh_token": row.has_refresh_token,
                }),
                None => {
                    serde_json::json!({"database": database.display().to_string(), "token": false})
                }
            },
            Err(e) => {
                serde_json::json!({"database": database.display().to_string(), "error": e.to_string()})
            }
        },
        Ok(None) => {
            serde_json::json!({"database": database.display().to_string(), "error": "no token database there"})
        }
        Err(e) => {
            serde_json::json!({"database": database.display().to_string(), "error": e.to_string()})
        }
    }
}

async fn doctor(name: &str, path: &std::path::Path, data_dir: PathBuf, json: bool) -> ExitCode {
    let servers = match config::load(path) {
        Ok(servers) => servers,
        Err(e) => return fail(e),
    };
    let Some(server) = servers.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        return fail(format!(
            "unknown server {name:?}; configured servers: {}",
            names.join(", ")
        ));
    };
    let timeout = Duration::from_secs(10);
    let http = mcpproxy_oauth::oauth::http::OAuthHttp::new(timeout);
    let report = mcpproxy_oauth::diagnose::diagnose(&http, server, timeout).await;
    let stored = stored_token(server, &data_dir);
    let mut out = Report::new();
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["stored"] = stored;
        out.line(serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        for step in &report.steps {
            let mark = if step.ok { "ok  " } else { "FAIL" };
            let status = step
                .status
                .map(|s| format!(" (HTTP {s})"))
                .unwrap_or_default();
            // A step's detail and action can quote a server: made inert.
            out.line(format_args!(
                "{mark} {}: {}{status}",
                step.step,
                safe(&step.detail)
            ));
            if let Some(action) = &step.action {
                out.line(format_args!("     what to do: {}", safe(action)));
            }
        }
        let held = match (&stored["token"], &stored["error"]) {
            (serde_json::Value::Bool(true), _) => format!(
                "a token is stored ({}, expires in {}, refresh token: {})",
                stored["status"].as_str().unwrap_or("?"),
                remaining(stored["expires_at"].as_i64()),
                if stored["has_refresh_token"] == true {
                    "yes"
                } else {
                    "no"
                }
            ),
            (_, serde_json::Value::String(e)) => safe(e).to_string(),
            _ => "no token is stored for it".into(),
        };
        out.line(format_args!(
            "     store: {held} in {}",
            stored["database"].as_str().unwrap_or("")
        ));
        match report.failed_step {
            Some(step) => out.line(format_args!("{}: the {step} step fails", safe(name))),
            None => out.line(format_args!("{}: every step passes", safe(name))),
        }
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub async fn auth(command: AuthCommand) -> ExitCode {
    match command {
        AuthCommand::Status {
            json,
            config,
            data_dir,
            store,
        } => match store.open_postgres().await {
            Ok(Some(shared)) => match shared.token_status().await {
                Ok(rows) => status_rows(json, config, Ok(rows)),
                Err(e) => fail(e),
            },
            Ok(None) => status(json, config, data_dir),
            Err(e) => fail(e),
        },
        AuthCommand::Login {
            server,
            all,
            paste,
            mut common,
        } => {
            // The link is printed, not opened: the browser is elsewhere.
            common.no_browser |= paste;
            let (handle, servers) = match start(&common, true, None).await {
                Ok(started) => started,
                Err(e) => return fail(e),
            };
            let names: Vec<String> = match (server, all) {
                (Some(name), _) => vec![name],
                (None, true) => servers.iter().map(|s| s.name.clone()).collect(),
                (None, false) => return fail("name a server, or pass --all"),
            };
            if !paste
                && let Some(s) = servers
                    .iter()
                    .find(|s| s.callback_url.is_some() && names.contains(&s.name))
            {
                handle.shutdown().await;
                return fail(format!(
                    "{} logs in through its public callback URL, which only the daemon serves: \
                     log in through the daemon (POST /api/v1/servers/{}/login), or here with \
                     --paste",
                    s.name, s.name
                ));
            }
            let mut failed = false;
            for name in names {
                let result = match paste {
                    true => login_pasting(&handle, &name).await,
                    false => handle.login(&name).await,
                };
                match result {
                    Ok(grant) => println!(
                        "{}: logged in (flow {})",
                        safe(&name),
                        grant.flow_id.unwrap_or_default()
                    ),
                    Err(e) => {
                        failed = true;
                        eprintln!("mcpproxy-oauth: {}", safe(&e.to_string()));
                    }
                }
            }
            handle.shutdown().await;
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        AuthCommand::Logout { server, common } => {
            match one_call(&common, async |h| h.logout(&server).await).await {
                Ok(()) => {
                    println!("{}: logged out", safe(&server));
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        AuthCommand::Doctor {
            server,
            config: path,
            data_dir,
            json,
        } => {
            doctor(
                &server,
                &path,
                data_dir.unwrap_or_else(default_data_dir),
                json,
            )
            .await
        }
        AuthCommand::Refresh { server, common } => {
            match one_call(&common, async |h| h.refresh(&server).await).await {
                Ok(grant) => {
                    println!(
                        "{}: refreshed (flow {}), valid for {}",
                        safe(&server),
                        grant.flow_id.unwrap_or_default(),
                        remaining(grant.expires_at)
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
    }
}

/// Starts the servers (no browser login), makes one call on them, and shuts them down; a
/// failure to start or of the call is printed and becomes the exit code.
async fn one_call<T>(
    common: &Common,
    call: impl AsyncFnOnce(&SupervisorHandle) -> Result<T, SupervisorError>,
) -> Result<T, ExitCode> {
    let (handle, _) = start(common, false, None).await.map_err(fail)?;
    let result = call(&handle).await;
    handle.shutdown().await;
    result.map_err(fail)
}

/// A login finished by pasting: the link is printed (by the launcher), each line read from
/// standard input is delivered to the waiting login, and its verdict printed, until the login
/// ends (or its timeout). Input is read on a thread of its own, so a terminal left open does
/// not keep the command from ending.
async fn login_pasting(
    handle: &SupervisorHandle,
    name: &str,
) -> Result<mcpproxy_oauth::upstream::actor::Grant, SupervisorError> {
    use std::io::BufRead;
    let (lines, mut pasted) = tokio::sync::mpsc::channel::<String>(1);
    std::thread::Builder::new()
        .name("paste-input".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                // A secret from the moment it is read.
                mcpproxy_oauth::telemetry::secrets::register(line.trim());
                if lines.blocking_send(line).is_err() {
                    break;
                }
            }
        })
        .ok();
    eprintln!(
        "After approving, paste here the whole address your browser ended on (it may say the \
         page cannot be reached) and press Enter."
    );
    let login = handle.login(name);
    tokio::pin!(login);
    let mut reading = true;
    loop {
        tokio::select! {
            result = &mut login => return result,
            line = pasted.recv(), if reading => match line {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => match handle.callbacks().paste(name, &line).await {
                    Ok(()) => eprintln!("{}: the address was accepted; finishing the login", safe(name)),
                    Err(e) => eprintln!("mcpproxy-oauth: {}", safe(&e.to_string())),
                },
                None => {
                    reading = false;
                    eprintln!(
                        "mcpproxy-oauth: standard input ended; the login waits for its redirect \
                         until the login timeout"
                    );
                }
            },
        }
    }
}

fn remaining(expires_at: Option<i64>) -> String {
    match expires_at {
        None => "an unknown time".into(),
        Some(at) if at <= now_ms() => "no time (expired)".into(),
        Some(at) => {
            humantime::format_duration(Duration::from_secs(((at - now_ms()) / 1000) as u64))
                .to_string()
        }
    }
}

fn status(json: bool, config_path: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    // Read-only: no migration, nothing created; no database yet means no token yet.
    let rows = match TokenStore::open_read_only(&database_path(&data_dir)) {
        Ok(Some(store)) => store.token_status(),
        // With the config, every configured server is listed as missing, and why is said.
        Ok(None) if config_path.is_some() => {
            eprintln!(
                "mcpproxy-oauth: no token database in {} yet: every configured server is missing",
                data_dir.display()
            );
            Ok(Vec::new())
        }
        Ok(None) => return no_database(&data_dir),
        Err(e) => return fail(e),
    };
    status_rows(json, config_path, rows)
}

/// Prints the status rows (with `config_path`, configured servers without a row as missing).
fn status_rows(
    json: bool,
    config_path: Option<PathBuf>,
    rows: Result<Vec<mcpproxy_oauth::store::TokenStatusRow>, mcpproxy_oauth::store::StoreError>,
) -> ExitCode {
    let mut rows: Vec<serde_json::Value> = match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect(),
        Err(e) => return fail(e),
    };
    if let Some(path) = config_path {
        match config::load(&path) {
            Ok(servers) => {
                for server in servers {
                    if !rows
                        .iter()
                        .any(|r| r["server_key"] == server.server_key.as_str())
                    {
                        rows.push(serde_json::json!({
                            "server_key": server.server_key,
                            "server_name": server.name,
                            "server_url": server.url.as_str(),
                            "status": "missing",
                            "has_refresh_token": false,
                        }));
                    }
                }
            }
            Err(e) => return fail(e),
        }
    }
    let mut out = Report::new();
    if json {
        out.line(serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else {
        out.line(format_args!(
            "{:<20} {:<9} {:<22} {:<8} SCOPE",
            "SERVER", "STATUS", "EXPIRES IN", "REFRESH"
        ));
        for row in &rows {
            out.line(format_args!(
                "{:<20} {:<9} {:<22} {:<8} {}",
                safe(row["server_name"].as_str().unwrap_or("")),
                safe(row["status"].as_str().unwrap_or("")),
                remaining(row["expires_at"].as_i64()),
                if row["has_refresh_token"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                safe(row["scope"].as_str().unwrap_or(""))
            ));
        }
    }
    ExitCode::SUCCESS
}
