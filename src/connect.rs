//! A one-shot connection to one MCP server: `initialize`, `tools/list` and optionally a
//! `tools/call`, running whatever OAuth the server demands on the way.
//!
//! The decisions are the daemon's: every 401 and 403 goes into the supervisor's state machine
//! ([`crate::upstream::state::step`]) through a thin driver ([`Driver`]) that performs its
//! effects here (no store, no lock, no timers: one process, one run) and keeps no policy of
//! its own. So a 401 is answered by a refresh when a refresh token is at hand, else by a
//! login; a 403 `insufficient_scope` naming scope not yet granted by a login for the union of
//! scopes, at most `max_step_ups` times (any other 403 is `forbidden`); a refresh that fails
//! transiently ends the run with the daemon's explanation (a one-shot run does not wait out a
//! backoff). Where a run differs from a daemon it says so in the machine's [`Policy`]: at most
//! [`MAX_AUTHORIZATIONS`] logins (`max_logins`), and no client registered again before a
//! refresh (`reregister` off: a registered client the server rejects is replaced by a login
//! that registers a new one).
//!
//! With `device_code` the logins use the RFC 8628 device grant (`oauth::device`) instead of a
//! browser redirect.
//!
//! After a refusal of a token that was accepted (the machine's plans say `after_refusal`),
//! the protected resource metadata is read again before the refresh or the login: when it
//! names another authorization server (SEP-2352), the refresh fails as
//! `AuthorizationServerMoved` without presenting the old server's refresh token, and the login
//! happens at the new one, with its own registration. Client identities are kept by issuer, so
//! one server's client is never presented at another.
//!
//! With `--grant` (client credentials, enterprise-managed authorization, workload identity;
//! [`GrantArgs`]) the run never logs in: the machine's policy is a grant server's, and where it
//! asks for a refresh (the first token too) the configured grant runs once
//! ([`credentials::obtain`]). A failed grant ends the run with its error (no retry, no other
//! grant): the conformance suite's workload scenario checks exactly that.
//!
//! DPoP (RFC 9449) is used when `--dpop` asks for it or the resource requires it
//! ([`crate::oauth::dpop::policy`]): one key for the run, a proof on every token request and,
//! with a DPoP-bound token, on every MCP request.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tracing::Instrument;
use url::Url;

use crate::clock::now_ms;
use crate::mcp::{BearerChallenge, McpClient, McpError};
use crate::oauth::OAuthError;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::client_identity::ClientConfig;
use crate::oauth::discovery::{Discovery, discover};
use crate::oauth::dpop::{self, Dpop, DpopKey};
use crate::oauth::grants::client_key::SigningAlg;
use crate::oauth::grants::credentials::{
    self, ClientAuthConfig, ClientConfigured, GrantConfig, GrantTarget, IdpConfig, SecretSource,
};
use crate::oauth::grants::{GrantError, TokenServer};
use crate::oauth::http::OAuthHttp;
use crate::oauth::login::{LoginSettings, browser_login};
use crate::oauth::scope::{select_scope, with_offline_access};
use crate::oauth::token::{TokenEndpoint, TokenSet};
use crate::upstream::state::{
    Effect, Event, Failure, LoginPlan, LoginReason, Policy, RefreshFailure, RefreshPlan,
    Resolution, State, TokenFacts, TokenId, step,
};

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

/// Runs the whole connection within `options.timeout`.
pub async fn connect(options: ConnectOptions) -> Result<ConnectReport, ConnectError> {
    let deadline = options.timeout;
    tokio::time::timeout(deadline, run(options))
        .await
        .map_err(|_| ConnectError::Timeout(deadline))?
}

async fn run(options: ConnectOptions) -> Result<ConnectReport, ConnectError> {
    let mut mcp = McpClient::new(options.server_url.clone(), options.timeout);
    let mut auth = Driver::new(Authorizer::new(options.clone()));

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
        authorizations: auth.auth.authorizations,
        refreshes: auth.auth.refreshes,
        token: auth.auth.token,
    })
}

enum Step<'a> {
    Initialize,
    ListTools,
    CallTool(&'a str, &'a Value),
}

/// MCP attempts of one step: each failed one feeds the machine, which runs at most one flow
/// per attempt; the login bound ends a run long before this.
const MAX_ATTEMPTS_PER_STEP: u32 = 8;

/// Runs one MCP step, answering auth challenges until it succeeds or the bounds are reached.
async fn with_authorization(
    driver: &mut Driver,
    mcp: &mut McpClient,
    step: Step<'_>,
) -> Result<Value, ConnectError> {
    for _ in 0..MAX_ATTEMPTS_PER_STEP {
        let token = driver
            .auth
            .token
            .as_ref()
            .map(|t| t.access_token.secret().clone());
        let token = token.as_deref();
        mcp.set_dpop(driver.auth.dpop_for_token());
        let result = match &step {
            Step::Initialize => mcp.initialize(token).await,
            Step::ListTools => mcp.list_tools(token).await,
            Step::CallTool(name, args) => mcp.call_tool(token, name, (*args).clone()).await,
        };
        match result {
            Ok(value) => return Ok(value),
            Err(McpError::Unauthorized(challenge)) => {
                driver
                    .ask(Event::Refused { token: None }, &challenge)
                    .await?;
            }
            // Any other 403 ends the run with the server's own answer (the machine would only
            // call it forbidden).
            Err(McpError::Forbidden(challenge)) if challenge.is_insufficient_scope() => {
                let event = Event::Forbidden {
                    token: None,
                    insufficient_scope: challenge.is_insufficient_scope(),
                    granted: driver.auth.token.as_ref().and_then(|t| t.scope.clone()),
                    demanded: challenge.scope.clone(),
                };
                driver.ask(event, &challenge).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ConnectError::OAuth(OAuthError::TooManyAuthorizations {
        attempts: driver.auth.authorizations,
    }))
}

/// The daemon's state machine with connect's effects: what it asks for (load, refresh, login)
/// runs here at once and its result goes back in, until it answers the caller.
struct Driver {
    state: State,
    auth: Authorizer,
    /// The engine error behind the machine's last failed flow, returned typed.
    last_error: Option<ConnectError>,
    /// The resource metadata was read again since the last refusal: once per refusal is
    /// enough, whether the refresh or the login reads it.
    reread_since_refusal: bool,
}

/// Machine events one question may take (a load, a refresh, a login and their results).
const MAX_EVENTS_PER_QUESTION: usize = 16;

impl Driver {
    fn new(auth: Authorizer) -> Self {
        // The daemon's policy, with a run's differences: the browser opens at once (the user
        // ran `connect` for it), logins are bounded, and nothing is registered again.
        let policy = Policy {
            interactive: true,
            max_logins: Some(MAX_AUTHORIZATIONS),
            reregister: false,
            grant: auth.options.grant.is_some(),
            ..Policy::default()
        };
        Driver {
            state: State::new(policy, 0.0),
            auth,
            last_error: None,
            reread_since_refusal: false,
        }
    }

    /// Feeds `event`, performing the machine's effects, until it answers: `Ok` when a usable
    /// token is at hand.
    async fn ask(&mut self, event: Event, challenge: &BearerChallenge) -> Result<(), ConnectError> {
        if matches!(event, Event::Refused { .. }) {
            self.reread_since_refusal = false;
        }
        let mut queue = VecDeque::from([event]);
        let mut answer = None;
        for _ in 0..MAX_EVENTS_PER_QUESTION {
            let Some(event) = queue.pop_front() else {
                break;
            };
            let (next, effects) = step(&self.state, event, now_ms());
            self.state = next;
            for effect in effects {
                match effect {
                    // Nothing is stored between runs: what this run holds is the "store".
                    Effect::LoadToken => queue.push_back(Event::Loaded {
                        generation: self.state.generation,
                        token: self.auth.token.as_ref().map(token_facts),
                    }),
                    Effect::StartRefresh(plan) => {
                        queue.push_back(self.refresh(plan, challenge).await?)
                    }
                    Effect::StartLogin(plan) => queue.push_back(self.login(plan, challenge).await?),
                    Effect::ResolveWaiters(resolution) | Effect::AnswerCaller(resolution) => {
                        answer = Some(resolution)
                    }
                    Effect::DropRefreshToken => {
                        if let Some(token) = self.auth.token.as_mut() {
                            token.refresh_token = None;
                        }
                    }
                    Effect::ForgetToken => self.auth.token = None,
                    Effect::AnnounceReauthentication { reason } => {
                        tracing::info!(reason = %reason, "re-authentication required: {reason}")
                    }
                    // Every token of a run is "saved" (there is no store), no run logs out or
                    // drains, and no flow outlives its effect here.
                    Effect::SaveToken
                    | Effect::RevokeAndDelete
                    | Effect::CancelFlow
                    | Effect::Drained => {}
                }
            }
        }
        match answer {
            Some(Resolution::Ready) => Ok(()),
            Some(Resolution::Failed(failure)) => Err(self.explain(failure)),
            None => Err(ConnectError::Undecided {
                steps: MAX_EVENTS_PER_QUESTION,
                phase: self.state.phase.name(),
            }),
        }
    }

    /// The engine's own error where one explains the failure, else the machine's.
    fn explain(&mut self, failure: Failure) -> ConnectError {
        match (&failure, self.last_error.take()) {
            (
                Failure::NeedsLogin {
                    reason: LoginReason::StepUpLimit { .. } | LoginReason::LoginLimit { .. },
                },
                _,
            ) => ConnectError::OAuth(OAuthError::TooManyAuthorizations {
                attempts: self.auth.authorizations,
            }),
            (
                Failure::NeedsLogin { .. }
                | Failure::LoginFailed { .. }
                | Failure::BackingOff { .. }
                | Failure::Retrying { .. }
                | Failure::ClientRejected { .. },
                Some(e),
            ) => e,
            _ => ConnectError::Policy(failure),
        }
    }

    /// After a refusal (the plan says so), the resource's metadata once more: the issuer it
    /// names now, if it is another one.
    async fn moved_since_refusal(
        &mut self,
        after_refusal: bool,
        challenge: &BearerChallenge,
    ) -> Result<Option<String>, ConnectError> {
        if !after_refusal || std::mem::replace(&mut self.reread_since_refusal, true) {
            return Ok(None);
        }
        Ok(self.auth.rediscover(challenge).await?)
    }

    async fn refresh(
        &mut self,
        plan: RefreshPlan,
        challenge: &BearerChallenge,
    ) -> Result<Event, ConnectError> {
        let generation = self.state.generation;
        if let Some(issuer) = self
            .moved_since_refusal(plan.after_refusal, challenge)
            .await?
        {
            return Ok(Event::RefreshFailed {
                generation,
                failure: RefreshFailure::AuthorizationServerMoved {
                    issuer: issuer.clone(),
                },
                error: format!("the resource moved to the authorization server {issuer}"),
            });
        }
        if self.auth.options.grant.is_some() {
            return Ok(self.grant(challenge).await);
        }
        // `plan.reregister` never comes: the policy has `reregister` off.
        Ok(match self.auth.refresh(plan.omit_scope).await {
            Ok(token) => Event::TokenObtained {
                generation,
                token: token_facts(&token),
                saved: true,
            },
            Err(e) => {
                let source = self.auth.endpoint.as_ref().map(|e| e.client.source);
                let failure = RefreshFailure::classify(&e, source);
                self.failed(generation, failure, e, "refresh")
            }
        })
    }

    async fn login(
        &mut self,
        plan: LoginPlan,
        challenge: &BearerChallenge,
    ) -> Result<Event, ConnectError> {
        let generation = self.state.generation;
        if self.auth.options.grant.is_some() {
            // A grant server never logs in: the grant runs, and its failure is the login's.
            return Ok(match self.grant(challenge).await {
                Event::RefreshFailed { error, .. } => Event::LoginFailed {
                    generation,
                    error,
                    dynamic_client: false,
                },
                event => event,
            });
        }
        self.moved_since_refusal(plan.after_refusal, challenge)
            .await?;
        if plan.fresh_client {
            // The server rejected the registered client: this login registers a new one.
            self.auth.endpoint = None;
        }
        let scope = match plan.step_up_scope {
            Some(scope) => Ok(self.auth.for_refresh_tokens(Some(scope))),
            None => self.auth.initial_scope(challenge).await,
        };
        let result = match scope {
            Ok(scope) => self.auth.authorize(challenge, scope).await,
            Err(e) => Err(e),
        };
        Ok(match (result, self.auth.token.as_ref()) {
            (Ok(()), Some(token)) => Event::TokenObtained {
                generation,
                token: token_facts(token),
                saved: true,
            },
            (Ok(()), None) => unreachable!("a login that succeeds sets the token"),
            (Err(e), _) => {
                let error = e.to_string();
                self.last_error = Some(e.into());
                Event::LoginFailed {
                    generation,
                    error,
                    dynamic_client: false,
                }
            }
        })
    }
}

impl Driver {
    /// Runs the configured grant once; its token or its failure, as the machine's event.
    async fn grant(&mut self, challenge: &BearerChallenge) -> Event {
        let generation = self.state.generation;
        match self.auth.grant(challenge).await {
            Ok(token) => Event::TokenObtained {
                generation,
                token: token_facts(&token),
                saved: true,
            },
            Err(e) => {
                let failure = crate::upstream::flows::grant_failure(&e);
                self.failed(generation, failure, e, "grant")
            }
        }
    }

    /// A refresh or grant (`what`) failed with `e`: kept to explain the run's end, and told
    /// to the machine as `failure`.
    fn failed(
        &mut self,
        generation: u64,
        failure: RefreshFailure,
        e: impl Into<ConnectError> + std::fmt::Display,
        what: &str,
    ) -> Event {
        tracing::warn!(error = %e, failure = ?failure, "{what} failed");
        let error = e.to_string();
        self.last_error = Some(e.into());
        Event::RefreshFailed {
            generation,
            failure,
            error,
        }
    }
}

/// The machine's facts about a token of this run.
fn token_facts(token: &TokenSet) -> TokenFacts {
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    TokenFacts {
        id: TokenId::of(token.access_token.secret()),
        obtained_at: ms(token.obtained_at),
        expires_at: token.expires_at.map(ms),
        has_refresh_token: token.refresh_token.is_some(),
        refused: false,
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
    /// and the new server's issuer returned: the next login registers at, and only talks to,
    /// the new one (the machine stops using the old refresh token).
    async fn rediscover(
        &mut self,
        challenge: &BearerChallenge,
    ) -> Result<Option<String>, OAuthError> {
        let Some(previous) = self.discovery.take() else {
            return Ok(None);
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
            let moved_to = new.clone();
            if let Some(endpoint) = self.endpoint.take() {
                self.other_clients.insert(old.clone(), endpoint);
            }
            self.endpoint = self.other_clients.remove(new);
            self.discovery = Some(found);
            return Ok(Some(moved_to));
        }
        self.discovery = Some(found);
        Ok(None)
    }

    /// The DPoP state to present the current token with: only a DPoP-bound one.
    fn dpop_for_token(&self) -> Option<Dpop> {
        let bound = self
            .token
            .as_ref()
            .is_some_and(|t| dpop::is_dpop_type(&t.token_type));
        self.dpop.clone().filter(|_| bound)
    }

    /// Decides DPoP for the next login ([`dpop::policy`]); one key for the whole run.
    fn settle_dpop(&mut self, discovery: &Discovery, challenge: &BearerChallenge) {
        let Some(required) = dpop::policy(self.options.dpop, discovery, Some(challenge)) else {
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

    /// Refreshes with the run's refresh token (`omit_scope`: without `scope`, after the
    /// server refused it).
    async fn refresh(&mut self, omit_scope: bool) -> Result<TokenSet, OAuthError> {
        let (Some(endpoint), Some(token)) = (&self.endpoint, &self.token) else {
            return Err(OAuthError::Callback(
                "no client identity to refresh with".into(),
            ));
        };
        let Some(refresh_token) = token.refresh_token.clone() else {
            return Err(OAuthError::Callback("no refresh token".into()));
        };
        let scope = if omit_scope {
            None
        } else {
            token.scope.as_deref()
        };
        let span = tracing::info_span!(
            "oauth_flow",
            correlation_id = %uuid::Uuid::new_v4(),
            server = %self.options.server_url,
            flow_kind = "refresh",
        );
        let fresh = endpoint
            .refresh(
                &self.http,
                &refresh_token,
                scope,
                SystemTime::now(),
                self.dpop.as_ref(),
            )
            .instrument(span)
            .await?;
        self.refreshes += 1;
        tracing::info!(
            rotated =
                fresh.refresh_token.as_ref().map(|r| r.secret()) != Some(refresh_token.secret()),
            "access token refreshed"
        );
        self.token = Some(fresh);
        Ok(self.token.clone().expect("set above"))
    }

    /// Runs the configured grant at the server's authorization server (discovered once).
    async fn grant(&mut self, challenge: &BearerChallenge) -> Result<TokenSet, GrantError> {
        let grant = self
            .options
            .grant
            .clone()
            .expect("grant runs only with --grant");
        let discovery = self.discovery(challenge).await?.clone();
        self.settle_dpop(&discovery, challenge);
        let scope = self
            .options
            .scope
            .clone()
            .or_else(|| select_scope(challenge.scope.as_deref(), discovery.resource_scopes()));
        let target = GrantTarget {
            server: TokenServer::from(&discovery.authorization_server),
            resource: discovery.resource.clone(),
            scope,
        };
        let span = tracing::info_span!(
            "oauth_flow",
            correlation_id = %uuid::Uuid::new_v4(),
            server = %self.options.server_url,
            flow_kind = "grant",
            grant = grant.kind(),
        );
        self.authorizations += 1;
        let token = credentials::obtain(&self.http, &grant, &target, self.dpop.as_ref())
            .instrument(span)
            .await?;
        tracing::info!(grant = grant.kind(), "token granted");
        self.token = Some(token);
        Ok(self.token.clone().expect("set above"))
    }

    /// Runs one browser (or device) login for `scope`.
    async fn authorize(
        &mut self,
        challenge: &BearerChallenge,
        scope: Option<String>,
    ) -> Result<(), OAuthError> {
        let span = tracing::info_span!(
            "oauth_flow",
            correlation_id = %uuid::Uuid::new_v4(),
            server = %self.options.server_url,
            flow_kind = "login",
        );
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
        let (endpoint, token) = if self.options.device_code {
            let show = crate::oauth::device::shown_with(self.options.browser.clone());
            crate::oauth::device::device_login(
                &self.http,
                &discovery,
                &self.options.client,
                self.endpoint.take(),
                scope.as_deref(),
                &show,
                self.dpop.as_ref(),
            )
            .await?
        } else {
            browser_login(
                &self.http,
                &discovery,
                &self.settings,
                self.endpoint.take(),
                scope.as_deref(),
                self.dpop.as_ref(),
            )
            .await?
        };
        self.token = Some(token);
        self.endpoint = Some(endpoint);
        Ok(())
    }
}

/// `connect`'s grant flags: the same credential kinds as a server's `oauth.grant`, on the
/// command line. Secrets come from files or the environment (the command line is visible to
/// other users); under the MCP conformance runner, what a flag leaves out is taken from its
/// `MCP_CONFORMANCE_CONTEXT` (see [`grant_config`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GrantArgs {
    /// Obtain tokens with this grant instead of a login: client_credentials, enterprise or
    /// workload.
    #[arg(long, value_parser = ["client_credentials", "enterprise", "workload"])]
    pub grant: Option<String>,
    /// The client's secret in this file (client_credentials; enterprise: at the MCP
    /// authorization server). Else --client-secret / MCPPROXY_OAUTH_CLIENT_SECRET.
    #[arg(long)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// client_secret_basic (the default) or client_secret_post.
    #[arg(long, value_parser = ["client_secret_basic", "client_secret_post"])]
    pub token_endpoint_auth_method: Option<String>,
    /// private_key_jwt: the client's PEM private key (PKCS#8 EC P-256 or RSA).
    #[arg(long)]
    pub client_key_file: Option<std::path::PathBuf>,
    /// The key's signing algorithm, ES256 or RS256 (default: from the key).
    #[arg(long)]
    pub client_key_alg: Option<String>,
    /// enterprise: the IdP's token endpoint.
    #[arg(long)]
    pub idp_token_endpoint: Option<String>,
    /// enterprise: the IdP's issuer (default: its token endpoint).
    #[arg(long)]
    pub idp_issuer: Option<String>,
    /// enterprise: this client's ID at the IdP.
    #[arg(long)]
    pub idp_client_id: Option<String>,
    /// enterprise: the user's ID token from the IdP, in this file (else MCPPROXY_OAUTH_ID_TOKEN).
    #[arg(long)]
    pub id_token_file: Option<std::path::PathBuf>,
    /// workload: the platform's JWT in this file (else MCPPROXY_OAUTH_WORKLOAD_TOKEN).
    #[arg(long)]
    pub workload_token_file: Option<std::path::PathBuf>,
}

/// The grant `args` ask for, its missing parts taken from the environment variables named in
/// the flags' help and then from the conformance runner's `context` (`client_id`,
/// `client_secret`, `private_key_pem`, `signing_algorithm`, `idp_*`, `valid_jwt`); `client_id`
/// and `client_secret` are `--client-id` and `--client-secret` as given.
pub fn grant_config(
    args: &GrantArgs,
    client_id: Option<String>,
    client_secret: Option<String>,
    context: Option<&Value>,
) -> Result<Option<GrantConfig>, String> {
    let Some(kind) = args.grant.as_deref() else {
        return Ok(None);
    };
    let from_context = |key: &str| {
        context
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|_| SecretSource::Env(name.into()))
    };
    let file = |path: &Option<std::path::PathBuf>| path.clone().map(SecretSource::File);
    let client_id = client_id.or_else(|| from_context("client_id"));
    let alg = match args
        .client_key_alg
        .clone()
        .or_else(|| from_context("signing_algorithm"))
    {
        Some(alg) => Some(
            SigningAlg::parse(&alg)
                .ok_or_else(|| format!("--client-key-alg {alg:?} is not ES256 or RS256"))?,
        ),
        None => None,
    };
    let secret = file(&args.client_secret_file)
        .or_else(|| client_secret.map(SecretSource::Inline))
        .or_else(|| from_context("client_secret").map(SecretSource::Inline));
    let key = file(&args.client_key_file)
        .or_else(|| from_context("private_key_pem").map(SecretSource::Inline));
    let auth = match (key, secret, args.token_endpoint_auth_method.as_deref()) {
        (Some(key), _, _) => ClientAuthConfig::PrivateKeyJwt {
            key,
            alg,
            kid: None,
        },
        (None, Some(secret), Some("client_secret_post")) => ClientAuthConfig::SecretPost(secret),
        (None, Some(secret), _) => ClientAuthConfig::SecretBasic(secret),
        (None, None, _) => ClientAuthConfig::None,
    };
    let client = |auth: ClientAuthConfig| -> Result<ClientConfigured, String> {
        Ok(ClientConfigured {
            client_id: client_id
                .clone()
                .ok_or_else(|| format!("--grant {kind} needs --client-id"))?,
            auth,
        })
    };
    Ok(Some(match kind {
        "client_credentials" => {
            if auth == ClientAuthConfig::None {
                return Err(
                    "--grant client_credentials needs a client secret (--client-secret-file, \
                     MCPPROXY_OAUTH_CLIENT_SECRET) or a key (--client-key-file)"
                        .into(),
                );
            }
            GrantConfig::ClientCredentials {
                client: client(auth)?,
            }
        }
        "enterprise" => {
            let token_endpoint = args
                .idp_token_endpoint
                .clone()
                .or_else(|| from_context("idp_token_endpoint"))
                .ok_or("--grant enterprise needs --idp-token-endpoint")?;
            let idp_client_id = args
                .idp_client_id
                .clone()
                .or_else(|| from_context("idp_client_id"))
                .ok_or("--grant enterprise needs --idp-client-id")?;
            let subject = file(&args.id_token_file)
                .or_else(|| env("MCPPROXY_OAUTH_ID_TOKEN"))
                .or_else(|| from_context("idp_id_token").map(SecretSource::Inline))
                .ok_or("--grant enterprise needs --id-token-file (or MCPPROXY_OAUTH_ID_TOKEN)")?;
            GrantConfig::Enterprise {
                idp: IdpConfig {
                    issuer: args
                        .idp_issuer
                        .clone()
                        .or_else(|| from_context("idp_issuer"))
                        .unwrap_or_else(|| token_endpoint.clone()),
                    token_endpoint,
                    client: ClientConfigured {
                        client_id: idp_client_id,
                        auth: ClientAuthConfig::None,
                    },
                },
                subject,
                subject_is_refresh_token: false,
                client: client(auth)?,
            }
        }
        "workload" => GrantConfig::Workload {
            token: file(&args.workload_token_file)
                .or_else(|| env("MCPPROXY_OAUTH_WORKLOAD_TOKEN"))
                .or_else(|| from_context("valid_jwt").map(SecretSource::Inline))
                .ok_or(
                    "--grant workload needs --workload-token-file (or MCPPROXY_OAUTH_WORKLOAD_TOKEN)",
                )?,
        },
        other => return Err(format!("--grant {other:?} is not a grant this build knows")),
    }))
}

#[cfg(test)]
mod grant_flag_tests {
    use super::*;

    fn args(grant: &str) -> GrantArgs {
        GrantArgs {
            grant: Some(grant.into()),
            ..GrantArgs::default()
        }
    }

    #[test]
    fn flags_and_the_conformance_context_give_each_kind() {
        assert_eq!(
            grant_config(&GrantArgs::default(), None, None, None),
            Ok(None)
        );
        let context = serde_json::json!({
            "client_id": "cc", "client_secret": "s3cret-from-context",
            "private_key_pem": "-----BEGIN PRIVATE KEY-----", "signing_algorithm": "ES256",
            "idp_client_id": "idp-c", "idp_id_token": "id.token.jwt",
            "idp_issuer": "http://127.0.0.1:1", "idp_token_endpoint": "http://127.0.0.1:1/token",
            "valid_jwt": "workload.jwt.value",
        });
        let cc = grant_config(&args("client_credentials"), None, None, Some(&context))
            .unwrap()
            .unwrap();
        assert!(
            matches!(&cc, GrantConfig::ClientCredentials { client } if client.client_id == "cc" && client.auth.method() == "private_key_jwt"),
            "a key in the context wins: {cc:?}"
        );
        let basic = grant_config(
            &args("client_credentials"),
            Some("flag-client".into()),
            Some("flag-secret".into()),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(
            matches!(&basic, GrantConfig::ClientCredentials { client } if client.client_id == "flag-client" && client.auth == ClientAuthConfig::SecretBasic(SecretSource::Inline("flag-secret".into())))
        );
        let GrantConfig::Enterprise {
            idp,
            subject,
            client,
            ..
        } = grant_config(&args("enterprise"), None, None, Some(&context))
            .unwrap()
            .unwrap()
        else {
            panic!("enterprise")
        };
        assert_eq!(idp.client.client_id, "idp-c");
        assert_eq!(subject, SecretSource::Inline("id.token.jwt".into()));
        assert_eq!(client.client_id, "cc");
        assert_eq!(
            grant_config(&args("workload"), None, None, Some(&context)).unwrap(),
            Some(GrantConfig::Workload {
                token: SecretSource::Inline("workload.jwt.value".into())
            })
        );
    }

    #[test]
    fn a_missing_part_is_named() {
        for (kind, says) in [
            ("client_credentials", "needs a client secret"),
            ("enterprise", "--idp-token-endpoint"),
            ("workload", "--workload-token-file"),
        ] {
            let e = grant_config(&args(kind), Some("c".into()), None, None).unwrap_err();
            assert!(e.contains(says), "{kind}: {e}");
        }
    }
}
