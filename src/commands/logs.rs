//! `logs trace` (one flow's timeline from a JSON log) and `logs flows` (from the database).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use mcpproxy_oauth::store::TokenStore;
use mcpproxy_oauth::supervisor::{database_path, default_data_dir};
use mcpproxy_oauth::telemetry::inert::safe;
use mcpproxy_oauth::telemetry::trace;

use super::{ReadStoreArgs, Report, fail, no_database};

#[derive(Subcommand, Debug)]
pub enum LogsCommand {
    /// One flow's events in order, from a JSON log (`--log-format json`), as a timeline.
    Trace {
        correlation_id: String,
        /// The log file (default: standard input).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Recent flows from the database: server, kind, outcome, duration.
    Flows {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: ReadStoreArgs,
    },
}

pub async fn logs(command: LogsCommand) -> ExitCode {
    match command {
        LogsCommand::Trace {
            correlation_id,
            file,
        } => {
            let text = match &file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display())),
                None => std::io::read_to_string(std::io::stdin())
                    .map_err(|e| format!("cannot read standard input: {e}")),
            };
            let text = match text {
                Ok(text) => text,
                Err(e) => return fail(e),
            };
            let lines = trace::flow_lines(&correlation_id, text.lines());
            match trace::render(&correlation_id, &lines) {
                Some(timeline) => {
                    Report::new().line(timeline.trim_end_matches('\n'));
                    ExitCode::SUCCESS
                }
                None => fail(format!(
                    "no line with correlation_id {correlation_id} (was the log written with --log-format json?)"
                )),
            }
        }
        LogsCommand::Flows {
            data_dir,
            limit,
            json,
            store,
        } => {
            let data_dir = data_dir.unwrap_or_else(default_data_dir);
            let flows = match store.open_postgres().await {
                Ok(Some(shared)) => shared.recent_flows(limit).await.map_err(|e| e.to_string()),
                Ok(None) => match TokenStore::open_read_only(&database_path(&data_dir)) {
                    Ok(Some(store)) => store.recent_flows(limit).map_err(|e| e.to_string()),
                    Ok(None) => return no_database(&data_dir),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e),
            };
            let flows = match flows {
                Ok(flows) => flows,
                Err(e) => return fail(e),
            };
            let mut report = Report::new();
            if json {
                report.line(serde_json::to_string_pretty(&flows).unwrap_or_default());
                return ExitCode::SUCCESS;
            }
            report.line(format_args!(
                "{:<26} {:<16} {:<8} {:<10} {:>9}  {:<36} ERROR",
                "STARTED", "SERVER", "KIND", "OUTCOME", "DURATION", "CORRELATION ID"
            ));
            for flow in flows {
                // Rows come from a file others write too: times outside 1970..9999 (which
                // RFC 3339 cannot show) are clamped, never a panic.
                const LAST_RFC3339_MS: i64 = 253_402_300_799_999;
                let started = std::time::UNIX_EPOCH
                    + Duration::from_millis(flow.started_at.clamp(0, LAST_RFC3339_MS) as u64);
                let duration = flow
                    .finished_at
                    .map(|f| format!("{} ms", f.saturating_sub(flow.started_at)))
                    .unwrap_or_else(|| "running".into());
                report.line(format_args!(
                    "{:<26} {:<16} {:<8} {:<10} {:>9}  {:<36} {}",
                    humantime::format_rfc3339_millis(started).to_string(),
                    safe(&flow.server_name),
                    safe(&flow.kind),
                    safe(&flow.state),
                    duration,
                    safe(&flow.flow_id),
                    safe(&flow.error.unwrap_or_default())
                ));
            }
            ExitCode::SUCCESS
        }
    }
}
