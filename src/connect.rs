//! A one-shot connection to one MCP server: `initialize`, `tools/list` and optionally a
//! `tools/call`, running whatever OAuth the server demands on the way. A 401 is answered by a
//! refresh when a refresh token is at hand, else by discovery and a browser login; a 403
//! `insufficient_scope` by a new login with the union of scopes. At most
//! [`MAX_AUTHORIZATIONS`] authorization requests are made in one run.
//!
//! A 401 after a token was accepted re-reads the protected resource metadata: when it names
//! another authorization server (SEP-2352), the client and tokens of the old one are set aside
//! and the login happens at the new one, with its own registration. Client identities are kept
//! by issuer, so one server's client is never presented at another.
//!
//! DPoP (RFC 9449) is used when `--dpop` asks for it or the resource requires it
//! ([`crate::oauth::dpop::policy`]): one key for the run, a proof on every token request and,
//! with a DPoP-bound token, on every MCP request.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tracing::Instrument;
use url::Url;

use crate::mcp::{BearerChallenge, McpClient, McpError};
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::client_identity::ClientConfig;
use crate::oauth::discovery::{Discovery, discover};
use crate::oauth::dpop::{self, Dpop, DpopKey};
use crate::oauth::http::OAuthHttp;
use crate::oauth::login::{LoginSettings, browser_login_dpop};
use crate::oauth::scope::{select_scope, union, with_offline_access};
use crate::oauth::token::{TokenEndpoint, TokenSet};
use crate::oauth::{ErrorClass, OAuthError};

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
    /// Use DPoP (RFC 9449) even where the resource does not require it (`--dpop`).
    pub dpop: bool,
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
    #[error("gave up after {0:?} (the --timeout deadline)")]
    Timeout(Duration),
}

/// Runs the whole connection within `options.timeout`.
pub async fn connect(options: ConnectOptions) -> Result<ConnectReport, ConnectError> {
    let deadline = options.timeout;
    tokio::time::timeout(deadline, run(options))
        .await
        .map_err(|_| ConnectError::Timeout(deadline))?
}

async fn run(options: ConnectOptions) -> Result<ConnectReport, ConnectError> {
    let mut mcp = McpClient::new(options.server_url.clone(), options.timeout);
    let mut auth = Authorizer::new(options.clone());

    let server_info = with_authorization(&mut auth, &mut mcp, Step::Initialize).await?;
    let tools = with_authorization(&mut auth, &mut mcp, Step::ListTools).await?;
    let tool_result = match &options.call_tool {
        Some((name, args)) => {
            Some(with_authorization(&mut auth, &mut mcp, Step::CallTool(name, args)).await?)
        }
        None => None,
    };
    Ok(ConnectReport {
        server_info,
        protocol_version: mcp.protocol_version().map(String::from),
        tools,
        tool_result,
        authorizations: auth.authorizations,
        refreshes: auth.refreshes,
        token: auth.token,
    })
}

enum Step<'a> {
    Initialize,
    ListTools,
    CallTool(&'a str, &'a Value),
}

/// Runs one MCP step, answering auth challenges until it succeeds or the bounds are reached.
async fn with_authorization(
    auth: &mut Authorizer,
    mcp: &mut McpClient,
    step: Step<'_>,
) -> Result<Value, ConnectError> {
    let mut refreshed_for_this_step = false;
    loop {
        let token = auth.token.as_ref().map(|t| t.access_token.secret().clone());
        let token = token.as_deref();
        mcp.set_dpop(auth.dpop_for_token());
        let result = match &step {
            Step::Initialize => mcp.initialize(token).await,
            Step::ListTools => mcp.list_tools(token).await,
            Step::CallTool(name, args) => mcp.call_tool(token, name, (*args).clone()).await,
        };
        match result {
            Ok(value) => return Ok(value),
            Err(McpError::Unauthorized(challenge)) => {
                if auth.token.is_some() {
                    auth.rediscover(&challenge).await?;
                }
                if !refreshed_for_this_step && auth.try_refresh().await? {
                    refreshed_for_this_step = true;
                    continue;
                }
                let scope = auth.initial_scope(&challenge).await?;
                auth.authorize(&challenge, scope).await?;
            }
            Err(McpError::Forbidden(challenge)) if challenge.is_insufficient_scope() => {
                let granted = auth.token.as_ref().and_then(|t| t.scope.clone());
                let scope =
                    auth.for_refresh_tokens(union(granted.as_deref(), challenge.scope.as_deref()));
                tracing::info!(
                    scope = scope.as_deref().unwrap_or(""),
                    "insufficient_scope: authorizing again with more scopes"
                );
                auth.authorize(&challenge, scope).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The OAuth side of one run: discovery and client identity found once, tokens as they come.
struct Authorizer {
    options: ConnectOptions,
    settings: LoginSettings,
    http: OAuthHttp,
    discovery: Option<Discovery>,
    /// The client identity (and token endpoint) at the current authorization server.
    endpoint: Option<TokenEndpoint>,
    /// Client identities at authorization servers this run used before, by issuer.
    other_clients: HashMap<String, TokenEndpoint>,
    token: Option<TokenSet>,
    /// This run's DPoP key and nonces, once the policy asked for DPoP.
    dpop: Option<Dpop>,
    authorizations: u32,
    refreshes: u32,
}

impl Authorizer {
    fn new(options: ConnectOptions) -> Self {
        let settings = LoginSettings {
            client: options.client.clone(),
            browser: options.browser.clone(),
            redirect_port: options.redirect_port,
            extra_params: Vec::new(),
        };
        Authorizer {
            options,
            settings,
            http: OAuthHttp::default(),
            discovery: None,
            endpoint: None,
            other_clients: HashMap::new(),
            token: None,
            dpop: None,
            authorizations: 0,
            refreshes: 0,
        }
    }

    async fn discovery(&mut self, challenge: &BearerChallenge) -> Result<&Discovery, OAuthError> {
        if self.discovery.is_none() {
            let found = discover(&self.http, &self.options.server_url, Some(challenge)).await?;
            tracing::info!(
                issuer = %found.authorization_server.issuer,
                resource = %found.resource,
                source = ?found.source,
                "discovered the authorization server"
            );
            self.discovery = Some(found);
        }
        Ok(self.discovery.as_ref().expect("set above"))
    }

    /// Reads the protected resource metadata again after a token was refused. When it names
    /// another authorization server, the old server's client identity is set aside (by issuer)
    /// and its tokens dropped: the next login registers at, and only talks to, the new one.
    async fn rediscover(&mut self, challenge: &BearerChallenge) -> Result<(), OAuthError> {
        let Some(previous) = self.discovery.take() else {
            return Ok(());
        };
        let found = discover(&self.http, &self.options.server_url, Some(challenge)).await?;
        let (old, new) = (
            &previous.authorization_server.issuer,
            &found.authorization_server.issuer,
        );
        if old != new {
            tracing::warn!(
                previous_issuer = %old,
                issuer = %new,
                "the protected resource names another authorization server; signing in there"
            );
            if let Some(endpoint) = self.endpoint.take() {
                self.other_clients.insert(old.clone(), endpoint);
            }
            self.endpoint = self.other_clients.remove(new);
            self.token = None;
        }
        self.discovery = Some(found);
        Ok(())
    }

    /// The DPoP state to present the current token with: only a DPoP-bound one.
    fn dpop_for_token(&self) -> Option<Dpop> {
        let bound = self
            .token
            .as_ref()
            .is_some_and(|t| t.token_type.eq_ignore_ascii_case("dpop"));
        self.dpop.clone().filter(|_| bound)
    }

    /// Decides DPoP for the next login ([`dpop::policy`]); one key for the whole run.
    fn settle_dpop(&mut self, discovery: &Discovery, challenge: &BearerChallenge) {
        let Some(required) = dpop::policy(self.options.dpop, discovery, challenge) else {
            return;
        };
        if self.dpop.is_none() {
            tracing::info!(required, "using DPoP-bound tokens (RFC 9449)");
        }
        let dpop = self
            .dpop
            .take()
            .unwrap_or_else(|| Dpop::new(DpopKey::generate()));
        self.dpop = Some(dpop.with_required(required || self.dpop_required()));
    }

    fn dpop_required(&self) -> bool {
        self.dpop.as_ref().is_some_and(Dpop::required)
    }

    /// `scope` as requested from the current authorization server by a client that wants
    /// refresh tokens (`offline_access` where listed, SEP-2207).
    fn for_refresh_tokens(&self, scope: Option<String>) -> Option<String> {
        let listed = self
            .discovery
            .as_ref()
            .and_then(|d| d.authorization_server.scopes_supported.as_deref());
        with_offline_access(scope, listed)
    }

    /// The scope of the first authorization: `--scope` as given, else the challenge's, else
    /// the resource's, with `offline_access` where the authorization server lists it.
    async fn initial_scope(
        &mut self,
        challenge: &BearerChallenge,
    ) -> Result<Option<String>, OAuthError> {
        if let Some(scope) = self.options.scope.clone() {
            return Ok(Some(scope));
        }
        let discovery = self.discovery(challenge).await?;
        let scope = select_scope(challenge.scope.as_deref(), discovery.resource_scopes());
        Ok(self.for_refresh_tokens(scope))
    }

    /// Refreshes when a refresh token is at hand. `Ok(false)`: nothing to refresh with, or the
    /// refresh token is no longer accepted (a login follows).
    async fn try_refresh(&mut self) -> Result<bool, OAuthError> {
        let (Some(endpoint), Some(token)) = (&self.endpoint, &self.token) else {
            return Ok(false);
        };
        let Some(refresh_token) = token.refresh_token.clone() else {
            return Ok(false);
        };
        let span = tracing::info_span!("oauth_flow", correlation_id = %uuid::Uuid::new_v4(), server = %self.options.server_url, flow_kind = "refresh");
        let refreshed = endpoint
            .refresh_dpop(
                &self.http,
                &refresh_token,
                token.scope.as_deref(),
                SystemTime::now(),
                self.dpop.as_ref(),
            )
            .instrument(span)
            .await;
        match refreshed {
            Ok(fresh) => {
                self.refreshes += 1;
                tracing::info!(
                    rotated = fresh.refresh_token.as_ref().map(|r| r.secret())
                        != Some(refresh_token.secret()),
                    "access token refreshed"
                );
                self.token = Some(fresh);
                Ok(true)
            }
            Err(e) if e.class() == ErrorClass::Permanent => {
                tracing::warn!(error = %e, "refresh refused; re-authentication required");
                if let Some(token) = self.token.as_mut() {
                    token.refresh_token = None;
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one browser login for `scope`, within the run's authorization bound.
    async fn authorize(
        &mut self,
        challenge: &BearerChallenge,
        scope: Option<String>,
    ) -> Result<(), OAuthError> {
        if self.authorizations >= MAX_AUTHORIZATIONS {
            return Err(OAuthError::TooManyAuthorizations {
                attempts: self.authorizations,
            });
        }
        let span = tracing::info_span!("oauth_flow", correlation_id = %uuid::Uuid::new_v4(), server = %self.options.server_url, flow_kind = "login");
        self.authorize_in(challenge, scope).instrument(span).await
    }

    async fn authorize_in(
        &mut self,
        challenge: &BearerChallenge,
        scope: Option<String>,
    ) -> Result<(), OAuthError> {
        let discovery = self.discovery(challenge).await?.clone();
        self.settle_dpop(&discovery, challenge);
        self.authorizations += 1;
        let (endpoint, token) = browser_login_dpop(
            &self.http,
            &discovery,
            &self.settings,
            self.endpoint.take(),
            scope.as_deref(),
            self.dpop.as_ref(),
        )
        .await?;
        self.token = Some(token);
        self.endpoint = Some(endpoint);
        Ok(())
    }
}
