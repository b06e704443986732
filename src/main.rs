//! The `mcpproxy-oauth` command line.

mod commands;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mcpproxy_oauth::connect::{ConnectOptions, connect};
use mcpproxy_oauth::oauth::browser::BrowserLauncher;
use mcpproxy_oauth::oauth::client_identity::ClientConfig;
use mcpproxy_oauth::telemetry::inert::safe;
use mcpproxy_oauth::telemetry::logging::{self, LogFormat};
use serde_json::{Value, json};
use url::Url;

#[derive(Parser, Debug)]
#[command(
    name = "mcpproxy-oauth",
    version,
    about = "Keeps OAuth-protected MCP servers authorized."
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace (or a tracing filter). Default: info for
    /// serve, warn otherwise.
    #[arg(long, global = true, env = "MCPPROXY_OAUTH_LOG")]
    log_level: Option<String>,
    /// json: one JSON object per line, with the flow's correlation_id at the top level.
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    /// Append log lines to this file (created 0600) instead of stderr.
    #[arg(long, global = true)]
    log_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to one MCP server, authorizing as needed, then initialize and list its tools.
    Connect(ConnectArgs),
    /// Keep every configured OAuth server authorized until Ctrl-C.
    Serve(commands::ServeArgs),
    /// Log in, out, refresh, or show token status, on the same database as a running daemon.
    #[command(subcommand)]
    Auth(commands::AuthCommand),
    /// Read flows back: one flow's timeline from a JSON log, or recent flows from the database.
    #[command(subcommand)]
    Logs(commands::LogsCommand),
    /// Bridge one server to stdin/stdout (newline-delimited JSON-RPC) with the daemon's tokens.
    Stdio(commands::StdioArgs),
    /// Manage the stored secrets: `tokens rekey` re-encrypts them with a new key.
    #[command(subcommand)]
    Tokens(commands::TokensCommand),
}

#[derive(clap::Args, Debug)]
struct ConnectArgs {
    /// The MCP server's URL (Streamable HTTP endpoint).
    server_url: String,
    /// A pre-registered client ID (else: client ID metadata document or dynamic registration).
    #[arg(long)]
    client_id: Option<String>,
    /// The pre-registered client's secret (prefer the environment variable: the command line is
    /// visible to other users).
    /// (An `oauth2::ClientSecret`: its `Debug` is redacted.)
    #[arg(long, env = "MCPPROXY_OAUTH_CLIENT_SECRET", hide_env_values = true,
          value_parser = |s: &str| Ok::<_, String>(oauth2::ClientSecret::new(s.to_string())))]
    client_secret: Option<oauth2::ClientSecret>,
    /// The URL of this client's ID metadata document, used as client ID where the server supports it.
    #[arg(long)]
    client_metadata_url: Option<String>,
    /// Scope to request (else the server's challenge, else the resource's scopes_supported).
    #[arg(long)]
    scope: Option<String>,
    /// Command that opens a URL (`%s` marks the URL, else it is appended). Default: $BROWSER, then xdg-open/open.
    #[arg(long)]
    browser_command: Option<String>,
    /// Print the authorization URL instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// Port of the loopback redirect listener (0 = ephemeral).
    #[arg(long, default_value_t = 0)]
    redirect_port: u16,
    /// Call this tool after listing tools.
    #[arg(long)]
    call_tool: Option<String>,
    /// JSON arguments for --call-tool.
    #[arg(long, default_value = "{}", requires = "call_tool")]
    args: String,
    /// Overall deadline, login included (e.g. 20s, 5m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: Duration,
    /// Log in with the device authorization grant (RFC 8628): a code to enter at a URL on any
    /// device, for hosts without a browser. The server must offer it.
    #[arg(long)]
    device_code: bool,
    /// Use DPoP-bound tokens (RFC 9449) even where the server does not require them.
    #[arg(long)]
    dpop: bool,
    #[command(flatten)]
    grant: mcpproxy_oauth::connect::GrantArgs,
}

/// Credentials handed over by the MCP conformance runner, where it runs us.
fn conformance_context() -> Option<Value> {
    serde_json::from_str(&std::env::var("MCP_CONFORMANCE_CONTEXT").ok()?).ok()
}

fn connect_options(args: ConnectArgs) -> Result<ConnectOptions, String> {
    let server_url = Url::parse(&args.server_url)
        .map_err(|e| format!("invalid server URL {:?}: {e}", args.server_url))?;
    let call_tool = match args.call_tool {
        Some(name) => {
            let parsed: Value =
                serde_json::from_str(&args.args).map_err(|e| format!("--args is not JSON: {e}"))?;
            Some((name, parsed))
        }
        None => None,
    };
    let context = conformance_context();
    let from_context = |key: &str| {
        context
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let grant = mcpproxy_oauth::connect::grant_config(
        &args.grant,
        args.client_id.clone(),
        args.client_secret.as_ref().map(|s| s.secret().clone()),
        context.as_ref(),
    )?;
    let client = ClientConfig {
        client_id: args.client_id.or_else(|| from_context("client_id")),
        client_secret: args
            .client_secret
            .or_else(|| from_context("client_secret").map(oauth2::ClientSecret::new)),
        client_metadata_url: args.client_metadata_url,
        client_name: Some("mcpproxy-oauth".into()),
    };
    Ok(ConnectOptions {
        server_url,
        client,
        scope: args.scope,
        browser: BrowserLauncher::from_settings(args.browser_command, args.no_browser),
        redirect_port: args.redirect_port,
        call_tool,
        timeout: args.timeout,
        device_code: args.device_code,
        dpop: args.dpop,
        grant,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    // Held to the end of main: its drop writes out the queued log lines.
    let _log = match logging::init(
        cli.log_format,
        cli.log_level.as_deref().unwrap_or(default_level),
        cli.log_file.as_ref(),
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("mcpproxy-oauth: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => commands::serve(args).await,
        Command::Stdio(args) => commands::stdio(args).await,
        Command::Auth(command) => commands::auth(command).await,
        Command::Logs(command) => commands::logs(command).await,
        Command::Tokens(command) => commands::tokens(command),
        Command::Connect(args) => {
            let options = match connect_options(args) {
                Ok(options) => options,
                Err(message) => {
                    eprintln!("mcpproxy-oauth connect: {}", safe(&message));
                    return ExitCode::from(2);
                }
            };
            match connect(options).await {
                Ok(report) => {
                    let tool_names: Vec<&str> = report.tools["tools"]
                        .as_array()
                        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
                        .unwrap_or_default();
                    let summary = json!({
                        "server": mcpproxy_oauth::mcp::client::server_info(&report.server_info),
                        "protocol_version": report.protocol_version,
                        "tools": tool_names,
                        "tool_result": report.tool_result,
                        "authorizations": report.authorizations,
                        "refreshes": report.refreshes,
                    });
                    // JSON escapes control characters itself; known secrets are scrubbed.
                    println!(
                        "{}",
                        mcpproxy_oauth::telemetry::secrets::scrub(
                            &serde_json::to_string_pretty(&summary).unwrap_or_default()
                        )
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mcpproxy-oauth connect: {}", safe(&e.to_string()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
