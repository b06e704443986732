//! `auth login|status|logout|refresh|doctor`: one-shot operations on the shared database.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use mcpproxy_oauth::clock::now_ms;
use mcpproxy_oauth::config;
use mcpproxy_oauth::store::TokenStore;
use mcpproxy_oauth::supervisor::{database_path, default_data_dir};
use mcpproxy_oauth::telemetry::inert::safe;

use super::{Common, fail, start};

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Log in to a server (or all), opening the browser.
    Login {
        /// The server's name in the config.
        server: Option<String>,
        #[arg(long, conflicts_with = "server")]
        all: bool,
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

async fn doctor(name: &str, path: &std::path::Path, json: bool) -> ExitCode {
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
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for step in &report.steps {
            let mark = if step.ok { "ok  " } else { "FAIL" };
            let status = step
                .status
                .map(|s| format!(" (HTTP {s})"))
                .unwrap_or_default();
            // A step's detail and action can quote a server: made inert.
            println!("{mark} {}: {}{status}", step.step, safe(&step.detail));
            if let Some(action) = &step.action {
                println!("     what to do: {}", safe(action));
            }
        }
        match report.failed_step {
            Some(step) => println!("{}: the {step} step fails", safe(name)),
            None => println!("{}: every step passes", safe(name)),
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
        } => status(json, config, data_dir),
        AuthCommand::Login {
            server,
            all,
            common,
        } => {
            let (handle, servers) = match start(&common, true, None).await {
                Ok(started) => started,
                Err(e) => return fail(e),
            };
            let names: Vec<String> = match (server, all) {
                (Some(name), _) => vec![name],
                (None, true) => servers.iter().map(|s| s.name.clone()).collect(),
                (None, false) => return fail("name a server, or pass --all"),
            };
            let mut failed = false;
            for name in names {
                match handle.login(&name).await {
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
            let (handle, _) = match start(&common, false, None).await {
                Ok(started) => started,
                Err(e) => return fail(e),
            };
            let result = handle.logout(&server).await;
            handle.shutdown().await;
            match result {
                Ok(()) => {
                    println!("{}: logged out", safe(&server));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        AuthCommand::Doctor {
            server,
            config: path,
            json,
        } => doctor(&server, &path, json).await,
        AuthCommand::Refresh { server, common } => {
            let (handle, _) = match start(&common, false, None).await {
                Ok(started) => started,
                Err(e) => return fail(e),
            };
            let result = handle.refresh(&server).await;
            handle.shutdown().await;
            match result {
                Ok(grant) => {
                    println!(
                        "{}: refreshed (flow {}), valid for {}",
                        safe(&server),
                        grant.flow_id.unwrap_or_default(),
                        remaining(grant.expires_at)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
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
        Ok(None) => Ok(Vec::new()),
        Err(e) => return fail(e),
    };
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
                        rows.push(serde_json::json!({"server_key": server.server_key, "server_name": server.name, "server_url": server.url.as_str(), "status": "missing", "has_refresh_token": false}));
                    }
                }
            }
            Err(e) => return fail(e),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:<20} {:<9} {:<22} {:<8} SCOPE",
            "SERVER", "STATUS", "EXPIRES IN", "REFRESH"
        );
        for row in &rows {
            println!(
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
            );
        }
    }
    ExitCode::SUCCESS
}
