//! The OAuth side of one run: discovery and the client identity found once (kept by issuer,
//! so a client is never presented at another server), the DPoP key, and the flows the driver
//! asks for: refresh, grant, browser or device login.

use std::collections::HashMap;
use std::time::SystemTime;

use tracing::Instrument;

use crate::mcp::BearerChallenge;
use crate::oauth::OAuthError;
use crate::oauth::discovery::{Discovery, discover};
use crate::oauth::dpop::{self, Dpop, DpopKey};
use crate::oauth::grants::credentials::{self, GrantTarget};
use crate::oauth::grants::{GrantError, TokenServer};
use crate::oauth::http::OAuthHttp;
use crate::oauth::login::{LoginSettings, browser_login};
use crate::oauth::scope::{select_scope, with_offline_access};
use crate::oauth::token::{TokenEndpoint, TokenSet};

use super::options::ConnectOptions;

/// The OAuth side of one run: discovery and client identity found once, tokens as they come.
pub(super) struct Authorizer {
    pub(super) options: ConnectOptions,
    settings: LoginSettings,
    http: OAuthHttp,
    discovery: Option<Discovery>,
    /// The client identity (and token endpoint) at the current authorization server.
    pub(super) endpoint: Option<TokenEndpoint>,
    /// Client identities at authorization servers this run used before, by issuer.
    other_clients: HashMap<String, TokenEndpoint>,
    pub(super) token: Option<TokenSet>,
    /// This run's DPoP key and nonces, once the policy asked for DPoP.
    dpop: Option<Dpop>,
    pub(super) authorizations: u32,
    pub(super) refreshes: u32,
}

impl Authorizer {
    pub(super) fn new(options: ConnectOptions) -> Self {
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
        let found = match self.discovery.take() {
            Some(known) => known,
            None => {
                let found = discover(&self.http, &self.options.server_url, Some(challenge)).await?;
                tracing::info!(
                    issuer = %found.authorization_server.issuer,
                    resource = %found.resource,
                    source = ?found.source,
                    "discovered the authorization server"
                );
                found
            }
        };
        Ok(self.discovery.insert(found))
    }

    /// Reads the protected resource metadata again after a token was refused. When it names
    /// another authorization server, the old server's client identity is set aside (by issuer)
    /// and the new server's issuer returned: the next login registers at, and only talks to,
    /// the new one (the machine stops using the old refresh token).
    pub(super) async fn rediscover(
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
    pub(super) fn dpop_for_token(&self) -> Option<Dpop> {
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
    pub(super) fn for_refresh_tokens(&self, scope: Option<String>) -> Option<String> {
        let listed = self
            .discovery
            .as_ref()
            .and_then(|d| d.authorization_server.scopes_supported.as_deref());
        with_offline_access(scope, listed)
    }

    /// The scope of the first authorization: `--scope` as given, else the challenge's, else
    /// the resource's, with `offline_access` where the authorization server lists it.
    pub(super) async fn initial_scope(
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
    pub(super) async fn refresh(&mut self, omit_scope: bool) -> Result<TokenSet, OAuthError> {
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
        Ok(self.token.insert(fresh).clone())
    }

    /// Runs the configured grant at the server's authorization server (discovered once).
    pub(super) async fn grant(
        &mut self,
        challenge: &BearerChallenge,
    ) -> Result<TokenSet, GrantError> {
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
    pub(super) async fn authorize(
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
