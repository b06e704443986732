//! The gateway: any MCP client uses the configured servers through this daemon, by URL
//! (`/mcp/{server}` on the `serve --listen` listener, a Streamable HTTP passthrough) or over
//! stdio (`mcpproxy-oauth stdio <server>`), and never sees a 401 of ours: the daemon's token
//! goes on each request, and while there is none the client hears 503 with `Retry-After`.
//!
//! - `servers`: the config's servers without `oauth` (relayed unchanged)
//! - `upstream`: one request to one server with its token (401 report and retry, step-up,
//!   DPoP proofs and nonces), shared by the handler and the bridge
//! - `headers`: which headers cross, each way
//! - `unavailable`: the 503 answer (phase, what to do, the login link)
//! - `proxy`: the `/mcp/{server}` handler
//! - `relay`: the answer's body streamed back within bounds
//! - `limits`: the bounds and their flags; `metrics`: per server, on the API's registry
//! - `stdio`: the stdio bridge; `sse`: its event stream reader

pub(crate) mod headers;
pub mod limits;
pub mod metrics;
pub(crate) mod proxy;
pub(crate) mod relay;
pub mod servers;
pub(crate) mod sse;
pub mod stdio;
pub(crate) mod unavailable;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::web;

pub use limits::{GatewayFlags, GatewayLimits};
pub use servers::{Passthrough, read_passthrough};

use crate::auth_links::AuthLinks;
use crate::supervisor::SupervisorHandle;
use metrics::GatewayMetrics;
use upstream::Upstream;

/// What the gateway serves besides the supervisor's servers.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    pub limits: GatewayLimits,
    /// Servers without `oauth`, relayed unchanged.
    pub passthrough: Vec<Passthrough>,
}

/// Every server's upstream, by name (`app_data` of the API's App).
pub struct Gateway {
    upstreams: HashMap<String, Arc<Upstream>>,
    /// The configured names, sorted, for "unknown server" answers.
    pub names: Vec<String>,
    pub metrics: GatewayMetrics,
}

impl Gateway {
    /// The upstreams of every server the supervisor keeps authorized (tokens from their
    /// lock-free snapshots) and of `config.passthrough`; metrics on `registry`.
    pub async fn new(
        handle: &SupervisorHandle,
        links: Option<&AuthLinks>,
        config: &GatewayConfig,
        registry: &prometheus::Registry,
    ) -> Gateway {
        let metrics = GatewayMetrics::register(registry, &config.limits);
        let client = upstream::http_client(&config.limits);
        let mut upstreams = HashMap::new();
        let statuses = handle.status().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the gateway cannot list the servers: /mcp/ serves none of the OAuth servers");
            Vec::new()
        });
        for status in statuses {
            let (Ok(url), Ok(tokens)) = (
                url::Url::parse(&status.url),
                handle.server_tokens(&status.name),
            ) else {
                continue;
            };
            let upstream = Upstream::with_oauth(
                &status.name,
                url,
                handle.clone(),
                tokens,
                links.cloned(),
                client.clone(),
                config.limits.clone(),
                metrics.server(&status.name),
            );
            upstreams.insert(status.name, Arc::new(upstream));
        }
        for server in &config.passthrough {
            if upstreams.contains_key(&server.name) {
                tracing::warn!(
                    server = %server.name,
                    "a server without oauth has the name of an OAuth server; the gateway serves \
                     the OAuth one"
                );
                continue;
            }
            let upstream = Upstream::passthrough(
                &server.name,
                server.url.clone(),
                server.headers.clone(),
                client.clone(),
                config.limits.clone(),
                metrics.server(&server.name),
            );
            upstreams.insert(server.name.clone(), Arc::new(upstream));
        }
        let mut names: Vec<String> = upstreams.keys().cloned().collect();
        names.sort();
        Gateway {
            upstreams,
            names,
            metrics,
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }
}

/// Registers `/mcp/{server}` (POST, GET, DELETE). Needs `web::Data<Gateway>` in the App, and
/// must come before the API's catch-all scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        // The App-wide guard (api/guard.rs) has checked Host, Origin and the API key.
        web::scope("/mcp")
            .service(web::resource("/{server}").to(proxy::proxy))
            .default_service(web::to(no_such_path)),
    );
}

/// A path under `/mcp/` that is not one server's: nothing is relayed.
async fn no_such_path(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    let shown = crate::telemetry::inert::safe(req.path());
    actix_web::HttpResponse::NotFound().json(serde_json::json!({
        "jsonrpc": "2.0", "id": null,
        "error": {"code": -32000, "message": format!(
            "mcpproxy-oauth: no such path {shown:?}; a server is reached at /mcp/{{server}}"
        )},
    }))
}
