//! What a `connect` run takes, what a successful one reports, and the errors it ends with. The
//! run, the driver and the authorizer all speak these types.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::mcp::McpError;
use crate::oauth::OAuthError;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::client_identity::ClientConfig;
use crate::oauth::grants::GrantError;
use crate::oauth::grants::credentials::GrantConfig;
use crate::oauth::token::TokenSet;
use crate::upstream::state::Failure;

/// Authorization requests allowed in one run (the MCP specification asks clients to bound
/// step-up retries).
pub const MAX_AUTHORIZATIONS: u32 = 3;

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub server_url: Url,
    pub client: ClientConfig,
    /// Overrides scope selection for the first authorization.
    pub scope: Option<String>,
    pub browser: BrowserLauncher,
    /// Port of the loopback redirect listener (0 = ephemeral).
    pub redirect_port: u16,
    pub call_tool: Option<(String, Value)>,
    /// The whole run's deadline, login included.
    pub timeout: Duration,
    /// Log in with the RFC 8628 device grant (`--device-code`) instead of a browser redirect.
    pub device_code: bool,
    /// Use DPoP (RFC 9449) even where the resource does not require it (`--dpop`).
    pub dpop: bool,
    /// Obtain tokens with this grant instead of a login (`--grant`).
    pub grant: Option<GrantConfig>,
}

impl ConnectOptions {
    /// A run against `server_url` that opens logins with `browser`: a dynamically registered
    /// or metadata-document client, the usual scope selection, an ephemeral redirect port, no
    /// tool call, a browser login, DPoP only where the resource requires it, two minutes in
    /// all.
    pub fn new(server_url: Url, browser: BrowserLauncher) -> Self {
        ConnectOptions {
            server_url,
            client: ClientConfig::default(),
            scope: None,
            browser,
            redirect_port: 0,
            call_tool: None,
            timeout: Duration::from_secs(120),
            device_code: false,
            dpop: false,
            grant: None,
        }
    }
}

/// What a successful run saw.
#[derive(Debug)]
pub struct ConnectReport {
    /// The server's answer to the opening request (a 2026-07-28 discover result or an
    /// initialize result; [`crate::mcp::client::server_info`] reads either).
    pub server_info: Value,
    /// The MCP protocol version spoken.
    pub protocol_version: Option<String>,
    pub tools: Value,
    pub tool_result: Option<Value>,
    pub authorizations: u32,
    pub refreshes: u32,
    pub token: Option<TokenSet>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Mcp(#[from] McpError),
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("gave up after {0:?} (the --timeout deadline)")]
    Timeout(Duration),
    /// The state machine's answer when no engine error explains it better.
    #[error(transparent)]
    Policy(Failure),
    /// The machine neither handed out a token nor failed within its bound of steps: a bug of
    /// the policy, never an answer about the server.
    #[error(
        "the authorization policy reached no decision after {steps} steps (it stopped in phase \
         {phase}); this is a bug: rerun with --log-level debug and report the log"
    )]
    Undecided { steps: usize, phase: &'static str },
}
