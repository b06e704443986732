//! The login flow: under the server's lock, a browser login (or a device login, RFC 8628)
//! with a client fit for the authorization server it goes to, and the token saved with that
//! client. It reports another process's login instead when one stored a token meanwhile. A
//! browser login also takes its response pasted back or at the daemon's public callback URL
//! (`rt.callbacks`, `oauth.callback_url`).
//!
//! Logins are bounded like refreshes: a login waits for a slot of the scheduler's login
//! limit before it takes the lock, and for a browser tab before it opens the browser; both
//! are held until it ends, however it ends. One that fails before its browser opened, for a
//! reason that passes, says so ([`FlowOutcome::LoginFailedBeforeBrowser`]): nobody was asked.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tracing::Instrument;

use super::rows::{TokenRow, endpoint_from_stored, rebased, stored_client};
use super::{FlowContext, FlowOutcome, SaveError, failure_details, token_details};
use crate::config::UpstreamConfig;
use crate::mcp::BearerChallenge;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::client_identity::ClientSource;
use crate::oauth::device::DevicePrompt;
use crate::oauth::discovery::{Discovery, discover};
use crate::oauth::dpop::{self, Dpop};
use crate::oauth::login::{Headless, LoginSettings, prepare_login};
use crate::oauth::scope::{select_scope, union, with_offline_access};
use crate::oauth::token::{TokenEndpoint, TokenSet};
use crate::oauth::{ErrorClass, OAuthError};
use crate::store::{StoredClient, StoredToken};
use crate::telemetry::flow_logger::{FlowKind, FlowStep};
use crate::upstream::flows::{Fence, Runtime};
use crate::upstream::state::LoginPlan;

/// Why a login queued at shutdown gave up.
const SHUTTING_DOWN: &str = "the daemon is shutting down; no browser was opened";

/// A value a running login publishes for status (its authorization URL, its device prompt).
pub type Published<T> = Arc<std::sync::Mutex<Option<T>>>;

/// What a login flow starts from.
pub struct LoginRequest {
    /// The client identity of an earlier login, reused unless the plan wants a fresh one.
    pub previous: Option<TokenEndpoint>,
    /// The machine's plan (a fresh client, more scope, whether to report a newer token).
    pub plan: LoginPlan,
    pub challenge: Option<BearerChallenge>,
    /// Where the authorization URL is published for status while the login waits (so a user
    /// whose browser did not open can use it). Not a secret: the PKCE verifier stays here.
    pub auth_url: Published<String>,
    /// Where a device login (`UpstreamConfig::device_code`) publishes its user code,
    /// verification URL and expiry for status while it polls; emptied when it ends.
    pub device_prompt: Published<DevicePrompt>,
    /// The actor's DPoP key (and the nonces seen), proven when this login uses DPoP.
    pub dpop: Dpop,
}

/// Which client identity a login went with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginClient {
    /// It failed before choosing one (the lock, discovery): it says nothing about a client.
    NotTried,
    /// A stored or previous client of this source.
    Reused(ClientSource),
    /// A new one (configured, metadata document or a registration).
    New,
}

impl LoginClient {
    /// A client the authorization server registered for us (not one from the config), which
    /// it may have forgotten.
    fn dynamic(self, config: &UpstreamConfig) -> bool {
        let registered = match self {
            LoginClient::NotTried => false,
            LoginClient::Reused(source) => source == ClientSource::Registered,
            LoginClient::New => true,
        };
        registered && config.client.client_id.is_none()
    }
}

pub async fn login(
    rt: Arc<Runtime>,
    config: Arc<UpstreamConfig>,
    flow_id: String,
    fence: Fence,
    request: LoginRequest,
) -> FlowOutcome {
    let cx = FlowContext::new(&rt, &config, &flow_id, FlowKind::Login, &fence);
    run(&cx, request).instrument(cx.span()).await
}

async fn run(cx: &FlowContext<'_>, request: LoginRequest) -> FlowOutcome {
    let LoginRequest {
        previous,
        plan,
        challenge,
        auth_url,
        device_prompt,
        dpop,
    } = request;
    cx.hook();
    let (rt, config) = (cx.rt, cx.config);
    // Queued behind the login limit before the lock, discovery and registration.
    let Some(_slot) = rt.scheduler.login_slot().await else {
        return FlowOutcome::LoginFailed {
            error: SHUTTING_DOWN.into(),
            dynamic_client: false,
        };
    };
    cx.event(
        FlowStep::Started,
        json!({"server_url": config.url.as_str(), "fresh_client": plan.fresh_client}),
    );
    let started = Instant::now();
    let not_tried = |error: String| FlowOutcome::LoginFailed {
        error,
        dynamic_client: false,
    };
    // Waiting for the lock (PostgreSQL: the lease) means another flow of this server ran
    // when this login was asked for: a login it completed is this one's answer too (one
    // browser for both).
    let began = match cx.begin(rt.login_timeout, rt.login_timeout).await {
        Ok(began) => began,
        Err(e) => {
            cx.event(FlowStep::Failed, json!({"error": e.to_string()}));
            return not_tried(e.to_string());
        }
    };
    let (_lock, waited) = (began._lock, began.waited);
    let start = began.read.unwrap_or_default();
    let newer = start.token.filter(|t| {
        plan.adopt && (t.obtained_at >= plan.requested_at || (waited && start.token_by_login))
    });
    if let Some(stored) = newer {
        tracing::info!("another process logged in meanwhile");
        cx.event(
            FlowStep::Adopted,
            json!({"reason": "another process logged in meanwhile", "expires_at": stored.expires_at}),
        );
        cx.finish(None).await;
        return FlowOutcome::StoreAhead { token: stored };
    }
    let previous = match plan.fresh_client {
        true => None,
        false => previous.or_else(|| start.client.as_ref().map(endpoint_from_stored)),
    };
    let mut tried = LoginClient::NotTried;
    let login = Login {
        previous,
        reuse_stored_client: !plan.fresh_client,
        challenge,
        auth_url,
        device_prompt,
        step_up_scope: plan.step_up_scope,
        dpop,
    };
    let mut shown = false;
    let obtained = obtain(cx, login, &mut tried, &mut shown);
    let result = tokio::time::timeout(rt.login_timeout, obtained).await;
    // `Some`: a failure that passes, with the server's Retry-After.
    let (error, passes) = match result {
        Ok(Ok((token, endpoint, client))) => {
            return save(cx, token, endpoint, client, started).await;
        }
        Ok(Err(e)) => {
            let permanent = e.class() == ErrorClass::Permanent;
            cx.event(
                FlowStep::Failed,
                failure_details(&e, permanent, started.elapsed()),
            );
            let passes = match e.class() {
                ErrorClass::Transient { retry_after } => Some(retry_after),
                ErrorClass::Permanent => None,
            };
            (e.to_string(), passes)
        }
        Err(_) => {
            let error = format!("the login was not completed within {:?}", rt.login_timeout);
            cx.event(FlowStep::Failed, json!({"error": error}));
            (error, Some(None))
        }
    };
    tracing::warn!(error = %error, browser_opened = shown, "login failed");
    cx.finish(Some(error.clone())).await;
    if let Some(retry_after) = passes.filter(|_| !shown) {
        let retry_after = retry_after.map(|d| d.as_millis() as crate::clock::Millis);
        return FlowOutcome::LoginFailedBeforeBrowser { error, retry_after };
    }
    FlowOutcome::LoginFailed {
        error,
        dynamic_client: tried.dynamic(config),
    }
}

/// Saves the login's token with its client, marking the flow succeeded (one transaction). A
/// save that fails keeps the token: it serves from memory while the machine retries the save.
async fn save(
    cx: &FlowContext<'_>,
    token: StoredToken,
    endpoint: TokenEndpoint,
    client: StoredClient,
    started: Instant,
) -> FlowOutcome {
    let saved = match cx.save(&token, Some(client.clone()), true).await {
        Ok(()) => true,
        Err(SaveError::Fenced) => {
            let error = "a logout or a newer login overtook this login; its token is discarded";
            cx.event(FlowStep::Failed, json!({"error": error}));
            cx.finish(Some(error.into())).await;
            return FlowOutcome::LoginFailed {
                error: error.into(),
                dynamic_client: false,
            };
        }
        Err(SaveError::Store(e)) => {
            tracing::error!(
                error = %e,
                "the new token could not be stored; it is kept in memory and its save is retried",
            );
            // The flow's end was in the failed transaction: recorded on its own.
            cx.finish(None).await;
            false
        }
    };
    cx.event(
        FlowStep::TokenObtained,
        token_details(&token, saved, started.elapsed()),
    );
    FlowOutcome::Token {
        token,
        endpoint: Some(endpoint),
        saved,
        client: (!saved).then_some(client),
    }
}

/// What a login asks for, past the lock and the look at the store.
struct Login {
    previous: Option<TokenEndpoint>,
    /// A client stored for the authorization server the login goes to may be reused (not
    /// after a failed login with a registered client: that server may have forgotten it).
    reuse_stored_client: bool,
    challenge: Option<BearerChallenge>,
    auth_url: Published<String>,
    device_prompt: Published<DevicePrompt>,
    step_up_scope: Option<String>,
    dpop: Dpop,
}

/// Discovery, the client, the browser (or device) login: the token and client to store.
/// `shown`: set once a person may have been asked (the browser opened, a device prompt shown).
async fn obtain(
    cx: &FlowContext<'_>,
    login: Login,
    tried: &mut LoginClient,
    shown: &mut bool,
) -> Result<(StoredToken, TokenEndpoint, StoredClient), OAuthError> {
    let (rt, config) = (cx.rt, cx.config);
    let Login {
        previous,
        reuse_stored_client,
        challenge,
        auth_url,
        device_prompt,
        step_up_scope,
        dpop,
    } = login;
    let discovery = discover(&rt.http, &config.url, challenge.as_ref()).await?;
    // DPoP where the config asks for it or the resource requires it, with the actor's key;
    // the tokens are stored with it.
    let dpop = dpop::policy(config.dpop, &discovery, challenge.as_ref())
        .map(|required| dpop.with_required(required));
    let scope = config.scope.clone().or_else(|| {
        select_scope(
            challenge.as_ref().and_then(|c| c.scope.as_deref()),
            discovery.resource_scopes(),
        )
    });
    let scope = match step_up_scope {
        Some(more) => union(scope.as_deref(), Some(&more)),
        None => scope,
    };
    // A daemon wants refresh tokens: `offline_access` where the server lists it (SEP-2207).
    let listed = discovery.authorization_server.scopes_supported.as_deref();
    let scope = with_offline_access(scope, listed);
    // A stored client is reused only at the authorization server it was registered with:
    // the previous one if that is where the login goes, else the one stored for that server
    // (a resource that moved away and back, SEP-2352), else a new one is obtained.
    let at_this_server =
        |p: &TokenEndpoint| p.token_endpoint == discovery.authorization_server.token_endpoint;
    let previous = match previous.filter(at_this_server) {
        Some(previous) => Some(previous),
        None if reuse_stored_client => {
            let issuer = &discovery.authorization_server.issuer;
            stored_client_at(cx, issuer).await.filter(at_this_server)
        }
        None => None,
    };
    *tried = previous
        .as_ref()
        .map_or(LoginClient::New, |p| LoginClient::Reused(p.client.source));
    let (endpoint, set) = if config.device_code {
        let login = DeviceLogin {
            discovery: &discovery,
            previous,
            scope: scope.as_deref(),
            slot: device_prompt,
            dpop: dpop.as_ref(),
        };
        *shown = true;
        device_login_published(cx, login).await?
    } else {
        let settings = LoginSettings {
            client: config.client.clone(),
            browser: publishing(rt.browser.clone(), auth_url),
            redirect_port: config.redirect_port,
            extra_params: config.extra_params.clone().into_iter().collect(),
        };
        // A pasted URL or a redirect to the daemon's public callback path may finish it too.
        let headless = Headless {
            callback_url: config.callback_url.clone(),
            deliveries: Some((rt.callbacks.clone(), config.name.clone())),
        };
        let http = &rt.http;
        let scope = scope.as_deref();
        let prepared =
            prepare_login(http, &discovery, &settings, previous, scope, &headless).await?;
        // A person answers a few tabs at once: wait for one, and keep it until the end.
        let Some(_tab) = rt.scheduler.tab_slot().await else {
            return Err(OAuthError::Browser(SHUTTING_DOWN.into()));
        };
        *shown = true;
        prepared
            .open_browser(http, &settings, dpop.as_ref(), &headless)
            .await?
    };
    let set = rebased(set, rt.clock.system_time());
    let row = TokenRow {
        config,
        resource: &endpoint.resource,
        issuer: Some(discovery.authorization_server.issuer.clone()),
        flow_id: cx.flow_id,
        dpop: dpop.as_ref(),
    };
    let token = row.of(&set);
    let client = stored_client(config, &discovery, &endpoint);
    Ok((token, endpoint, client))
}

/// A launcher that publishes the URL before handing it to `browser`.
fn publishing(browser: BrowserLauncher, auth_url: Published<String>) -> BrowserLauncher {
    BrowserLauncher::handler(move |url: url::Url| {
        *auth_url.lock().unwrap_or_else(|p| p.into_inner()) = Some(url.to_string());
        if let Err(e) = browser.open(&url) {
            tracing::warn!(error = %e, "the browser could not be opened; the authorization URL is in the status");
        }
    })
}

/// The client stored for this server at the authorization server `issuer`, if any and if the
/// store answers (a failed read only means a new registration).
async fn stored_client_at(cx: &FlowContext<'_>, issuer: &str) -> Option<TokenEndpoint> {
    let (key, issuer) = (cx.config.server_key.clone(), issuer.to_string());
    let client = cx.rt.store.load_client_for(&key, &issuer).await;
    match client {
        Ok(Some(client)) => {
            tracing::info!(
                client_id = %client.client_id,
                issuer = %client.issuer,
                "reusing the client stored for this authorization server",
            );
            Some(endpoint_from_stored(&client))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the stored clients; obtaining a new client identity");
            None
        }
    }
}

/// What a device login goes with.
struct DeviceLogin<'a> {
    discovery: &'a Discovery,
    previous: Option<TokenEndpoint>,
    scope: Option<&'a str>,
    slot: Published<DevicePrompt>,
    dpop: Option<&'a Dpop>,
}

/// A device login (RFC 8628) whose prompt is published for status (and shown through the
/// daemon's launcher) while it polls, and taken down when it ends, however it ends.
async fn device_login_published(
    cx: &FlowContext<'_>,
    login: DeviceLogin<'_>,
) -> Result<(TokenEndpoint, TokenSet), OAuthError> {
    let shown = crate::oauth::device::shown_with(cx.rt.browser.clone());
    let published = login.slot.clone();
    let show = move |prompt: &DevicePrompt| {
        *published.lock().unwrap_or_else(|p| p.into_inner()) = Some(prompt.clone());
        shown(prompt);
    };
    let result = crate::oauth::device::device_login(
        &cx.rt.http,
        login.discovery,
        &cx.config.client,
        login.previous,
        login.scope,
        &show,
        login.dpop,
    )
    .await;
    *login.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    result
}
