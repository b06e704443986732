//! `stdio <server>`: the stdio bridge for clients that spawn a command (Claude Desktop, an IDE):
//! JSON-RPC lines on stdin and stdout, logs on stderr. An OAuth server's tokens come from the
//! same data directory, encrypted store and per-server flow lock as a running daemon's, so any
//! number of bridges and daemons on one server share one refresh per token lifetime. A server
//! without `oauth` is relayed unchanged. Exits 0 when stdin closes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use mcpproxy_oauth::api::AuthLinks;
use mcpproxy_oauth::config;
use mcpproxy_oauth::gateway::limits::{parse_size, positive_duration};
use mcpproxy_oauth::gateway::metrics::GatewayMetrics;
use mcpproxy_oauth::gateway::upstream::{Upstream, http_client};
use mcpproxy_oauth::gateway::{GatewayLimits, read_passthrough, stdio};
use mcpproxy_oauth::upstream::state::Policy;

use super::{Common, Tuning, fail, start_with};

#[derive(Args, Debug)]
pub struct StdioArgs {
    /// The server's name in the config.
    server: String,
    #[command(flatten)]
    common: Common,
    /// Never open a browser by itself: a server needing a login answers with an error naming
    /// what to do until `auth login` (or a daemon) stores a token.
    #[arg(long)]
    non_interactive: bool,
    /// The longest message line accepted from stdin, e.g. 4MiB.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    max_message_bytes: usize,
    /// The largest JSON answer or SSE event relayed from the server.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    max_response_bytes: usize,
    /// Messages sent to the server at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000), default_value_t = 64)]
    max_in_flight: u32,
    /// The longest wait for the server's answer to begin, and between two pieces of it.
    #[arg(long, value_parser = positive_duration, default_value = "60s")]
    upstream_timeout: Duration,
    /// The longest a message waits for a token while a refresh or login runs, before it is
    /// answered with an error naming the server's phase.
    #[arg(long, value_parser = positive_duration, default_value = "30s")]
    token_wait: Duration,
}

pub async fn stdio(args: StdioArgs) -> ExitCode {
    let limits = GatewayLimits {
        max_request_bytes: args.max_message_bytes,
        max_response_bytes: args.max_response_bytes,
        max_in_flight: args.max_in_flight as usize,
        upstream_timeout: args.upstream_timeout,
        token_wait: args.token_wait,
        ..GatewayLimits::default()
    };
    let oauth_servers = match config::load(&args.common.config) {
        Ok(servers) => servers,
        Err(e) => return fail(e),
    };
    let metrics = GatewayMetrics::unregistered(&limits).server(&args.server);
    let client = http_client(&limits);
    let mut supervisor = None;
    let upstream = if let Some(server) = oauth_servers.iter().find(|s| s.name == args.server) {
        let links = AuthLinks::new(std::slice::from_ref(server));
        let policy = Policy {
            interactive: !args.non_interactive,
            ..Policy::default()
        };
        // One server, few threads: a bridge runs per client.
        let tuning = Tuning {
            flow_threads: Some(1),
            ..Tuning::default()
        };
        let handle = match start_with(
            &args.common,
            vec![server.clone()],
            policy,
            Some(&links),
            &tuning,
        )
        .await
        {
            Ok(handle) => handle,
            Err(e) => return fail(e),
        };
        let tokens = match handle.server_tokens(&server.name) {
            Ok(tokens) => tokens,
            Err(e) => return fail(e),
        };
        supervisor = Some(handle.clone());
        Upstream::with_oauth(
            &server.name,
            server.url.clone(),
            handle,
            tokens,
            Some(links),
            client,
            limits,
            metrics,
        )
    } else {
        let passthrough = match read_passthrough(&args.common.config) {
            Ok(servers) => servers,
            Err(e) => return fail(e),
        };
        let Some(server) = passthrough.into_iter().find(|s| s.name == args.server) else {
            let mut names: Vec<String> = oauth_servers.into_iter().map(|s| s.name).collect();
            names.extend(
                read_passthrough(&args.common.config)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| s.name),
            );
            return fail(format!(
                "no HTTP server named {:?} in {}; configured: {}",
                args.server,
                args.common.config.display(),
                names.join(", ")
            ));
        };
        Upstream::passthrough(
            &server.name,
            server.url,
            server.headers,
            client,
            limits,
            metrics,
        )
    };
    let upstream = Arc::new(upstream);
    tracing::info!(
        server = %upstream.name,
        oauth = upstream.has_oauth(),
        "stdio bridge started; it ends when stdin closes"
    );
    let input = stdio::read_lines(std::io::stdin(), upstream.limits.max_request_bytes);
    stdio::run(upstream, input, stdio::Output::writer(std::io::stdout())).await;
    if let Some(handle) = supervisor {
        handle.shutdown().await;
    }
    tracing::info!("stdin closed: stdio bridge stopped");
    ExitCode::SUCCESS
}
