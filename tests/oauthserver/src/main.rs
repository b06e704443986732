//! `oauth-test-server`: runs the OAuth test server until Ctrl-C.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use oauth_test_server::{
    Config, Fault, FaultKind, FaultTarget, IdpPolicy, JwtClient, KeySource, OAuthTestServer,
    TrustedIssuer,
};

/// A real OAuth 2.1 authorization server and protected MCP endpoint, for tests only.
/// Durations accept 500ms, 30s, 3m, 24h.
#[derive(Parser, Debug)]
#[command(name = "oauth-test-server", version)]
struct Args {
    /// Port on 127.0.0.1 (0 = ephemeral). The first line printed is `listening on URL`.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    access_token_ttl: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    refresh_token_ttl: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    code_ttl: Duration,
    /// Do not offer dynamic client registration.
    #[arg(long)]
    no_dcr: bool,
    /// Never issue refresh tokens.
    #[arg(long)]
    no_refresh_token: bool,
    /// Keep refresh tokens unchanged on use instead of rotating them.
    #[arg(long)]
    no_rotation: bool,
    /// Require `resource` (RFC 8707) equal to the MCP endpoint.
    #[arg(long)]
    require_resource: bool,
    /// Show a login + consent page instead of approving at once.
    #[arg(long)]
    interactive: bool,
    /// Put the issuer under a path, e.g. /tenant1.
    #[arg(long)]
    issuer_path: Option<String>,
    /// Space-separated scopes_supported.
    #[arg(long, default_value = "mcp:read mcp:write")]
    scopes_supported: String,
    /// A pre-registered client id.
    #[arg(long)]
    client_id: Option<String>,
    /// The pre-registered client's secret (omit for a public client).
    #[arg(long, requires = "client_id")]
    client_secret: Option<String>,
    /// A tool needing an extra scope, as TOOL=SCOPE (repeatable).
    #[arg(long = "tool-scope", value_parser = parse_tool_scope)]
    tool_scopes: Vec<(String, String)>,
    /// Answer MCP requests as text/event-stream.
    #[arg(long)]
    mcp_sse: bool,
    /// Announce this expires_in (seconds) instead of the TTL; the JWT keeps the TTL.
    #[arg(long)]
    announced_expires_in: Option<u64>,
    /// Inject this fault on authorization_code token requests.
    #[arg(long)]
    token_error: Option<FaultKind>,
    /// Inject this fault on refresh_token requests.
    #[arg(long)]
    refresh_error: Option<FaultKind>,
    /// Inject the faults above N times, then recover (default: until cleared).
    #[arg(long)]
    fault_count: Option<u32>,
    /// Speak DPoP (RFC 9449): check proofs, bind tokens of requests that carry one.
    #[arg(long)]
    dpop: bool,
    /// Require DPoP: no proof, no token; the MCP endpoint takes only DPoP-bound tokens.
    #[arg(long)]
    dpop_required: bool,
    /// Serve the client_credentials grant to confidential clients (no refresh token).
    #[arg(long)]
    client_credentials: bool,
    /// Accept private_key_jwt client authentication (ES256, RS256).
    #[arg(long)]
    private_key_jwt: bool,
    /// A pre-registered private_key_jwt client, as ID=JWKS where JWKS is a JWK Set file or a
    /// jwks_uri (repeatable; implies --private-key-jwt).
    #[arg(long = "jwt-client", value_parser = parse_keyed)]
    jwt_clients: Vec<(String, KeySource)>,
    /// Play the enterprise IdP: RFC 8693 token exchange of its ID tokens for ID-JAGs.
    #[arg(long)]
    idp: bool,
    /// The IdP refuses every token exchange with access_denied.
    #[arg(long, requires = "idp")]
    idp_deny_all: bool,
    /// Serve the RFC 7523 jwt-bearer grant (no refresh token).
    #[arg(long)]
    jwt_bearer: bool,
    /// Accept ID-JAGs of this IdP, as ISSUER=JWKS (a JWK Set file or a jwks_uri; repeatable).
    #[arg(long = "trust-idp", value_parser = parse_keyed, requires = "jwt_bearer")]
    trusted_idps: Vec<(String, KeySource)>,
    /// Accept workload JWTs of this platform, as ISSUER=JWKS (repeatable).
    #[arg(long = "trust-workload-issuer", value_parser = parse_keyed, requires = "jwt_bearer")]
    trusted_workload_issuers: Vec<(String, KeySource)>,
}

/// `NAME=JWKS`, JWKS an http(s) URL (a jwks_uri) or the path of a JWK Set file.
fn parse_keyed(s: &str) -> Result<(String, KeySource), String> {
    // The name may itself be a URL (an issuer): split at the last `=`.
    let Some((name, keys)) = s
        .rsplit_once('=')
        .filter(|(n, k)| !n.is_empty() && !k.is_empty())
    else {
        return Err(format!("expected NAME=JWKS (a file or a URL), got {s:?}"));
    };
    if keys.starts_with("http://") || keys.starts_with("https://") {
        return Ok((name.into(), KeySource::JwksUri(keys.into())));
    }
    let text = std::fs::read_to_string(keys).map_err(|e| format!("cannot read {keys}: {e}"))?;
    let jwks: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| format!("{keys} is not JSON"))?;
    if !jwks.get("keys").is_some_and(|k| k.is_array()) {
        return Err(format!("{keys} is not a JWK Set ({{\"keys\": [...]}})"));
    }
    Ok((name.into(), KeySource::Jwks(jwks)))
}

fn parse_tool_scope(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((tool, scope)) if !tool.is_empty() && !scope.is_empty() => {
            Ok((tool.into(), scope.into()))
        }
        _ => Err(format!("expected TOOL=SCOPE, got {s:?}")),
    }
}

impl Args {
    fn into_config(self) -> Config {
        let mut faults = Vec::new();
        for (target, kind) in [
            (FaultTarget::Token, self.token_error),
            (FaultTarget::Refresh, self.refresh_error),
        ] {
            if let Some(kind) = kind {
                faults.push(Fault {
                    target,
                    kind,
                    count: self.fault_count,
                    delay_ms: None,
                });
            }
        }
        Config {
            port: self.port,
            access_token_ttl: self.access_token_ttl,
            refresh_token_ttl: self.refresh_token_ttl,
            code_ttl: self.code_ttl,
            dynamic_registration: !self.no_dcr,
            issue_refresh_tokens: !self.no_refresh_token,
            rotate_refresh_tokens: !self.no_rotation,
            require_resource: self.require_resource,
            interactive: self.interactive,
            issuer_path: self.issuer_path,
            scopes_supported: self
                .scopes_supported
                .split_whitespace()
                .map(String::from)
                .collect(),
            preregistered_client: self.client_id.map(|id| (id, self.client_secret)),
            offline_access: false,
            tool_scopes: self.tool_scopes,
            authorization_server_moves: None,
            mcp_stateless: false,
            mcp_sse_responses: self.mcp_sse,
            announced_expires_in: self.announced_expires_in,
            faults,
            dpop: self.dpop,
            dpop_required: self.dpop_required,
            dpop_nonce: None,
            client_credentials: self.client_credentials,
            private_key_jwt: self.private_key_jwt || !self.jwt_clients.is_empty(),
            jwt_clients: self
                .jwt_clients
                .into_iter()
                .map(|(client_id, keys)| JwtClient { client_id, keys })
                .collect(),
            idp: self.idp,
            idp_policy: if self.idp_deny_all {
                IdpPolicy::DenyAll
            } else {
                IdpPolicy::AllowAll
            },
            jwt_bearer: self.jwt_bearer,
            trusted_idps: trusted(self.trusted_idps),
            trusted_workload_issuers: trusted(self.trusted_workload_issuers),
            ..Config::default()
        }
    }
}

fn trusted(issuers: Vec<(String, KeySource)>) -> Vec<TrustedIssuer> {
    issuers
        .into_iter()
        .map(|(issuer, keys)| TrustedIssuer::new(issuer, keys))
        .collect()
}

#[tokio::main]
async fn main() {
    let config = Args::parse().into_config();
    let port = config.port;
    let server = match OAuthTestServer::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("oauth-test-server: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", server.url());
    println!("issuer {}", server.issuer());
    println!("mcp endpoint {}", server.mcp_url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
}
