//! One browser login, start to finish: bind the loopback redirect listener, settle the client
//! identity, build the PKCE authorization request, open the browser, wait for the one valid
//! callback, exchange the code. Callers bound the wait (a person may take minutes).
//!
//! Without a local browser ([`Headless`]): the redirect URI may be a public callback URL (a
//! reverse proxy's) instead of the loopback listener, and the response may be delivered
//! through [`Callbacks`] (pasted back, or redirected to the daemon's callback path). Every
//! response goes through the same judge and the same code exchange; a delivered one whose code
//! the token endpoint refuses (a replayed or foreign code) is answered and the login waits on.
//!
//! A login is two halves, [`prepare_login`] and [`PreparedLogin::open_browser`], so a daemon
//! can wait between them for a browser tab, and can tell a failure before the browser (in
//! registration, or in the discovery before it) for what it is: the authorization server was
//! unreachable or unwell, and no person was asked anything.

use std::time::SystemTime;

use url::Url;

use super::browser::BrowserLauncher;
use super::callback::{CallbackListener, Callbacks, ExpectedCallback, Received, next_response};
use super::client_identity::{ClientConfig, obtain_client};
use super::dpop::Dpop;
use super::error::{CodeMeaning, Endpoint, ErrorCode, OAuthError};
use super::http::OAuthHttp;
use super::metadata::Discovery;
use super::token::{PendingAuthorization, TokenEndpoint, TokenSet};

/// What a login needs besides the discovery result.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    pub client: ClientConfig,
    pub browser: BrowserLauncher,
    /// Port of the redirect listener (0 = ephemeral).
    pub redirect_port: u16,
    /// Extra authorization request parameters (e.g. a provider's `audience`).
    pub extra_params: Vec<(String, String)>,
}

/// How a login may finish without a redirect to its own loopback listener.
#[derive(Debug, Clone, Default)]
pub struct Headless {
    /// The public redirect URI (a reverse proxy's, a container's published port), used instead
    /// of a loopback listener; its responses arrive through `deliveries`.
    pub callback_url: Option<Url>,
    /// Where pasted URLs and redirects to the public callback path reach this login, and the
    /// server name they are delivered under.
    pub deliveries: Option<(Callbacks, String)>,
}

/// Runs a browser login. `previous` is the endpoint (client identity included) of an earlier
/// login, reused when its redirect URI is still ours, so a login does not register again. With
/// `dpop`, the code exchange carries a proof of its key (RFC 9449 §5).
pub async fn browser_login(
    http: &OAuthHttp,
    discovery: &Discovery,
    settings: &LoginSettings,
    previous: Option<TokenEndpoint>,
    scope: Option<&str>,
    dpop: Option<&Dpop>,
) -> Result<(TokenEndpoint, TokenSet), OAuthError> {
    let headless = Headless::default();
    let prepared = prepare_login(http, discovery, settings, previous, scope, &headless).await?;
    prepared.open_browser(http, settings, dpop, &headless).await
}

/// A browser login up to the browser: the redirect listener bound, the client identity
/// settled (registered if need be), the authorization request built. Nobody has seen it yet.
pub struct PreparedLogin {
    listener: Option<CallbackListener>,
    endpoint: TokenEndpoint,
    pending: PendingAuthorization,
    expected: ExpectedCallback,
    scope: Option<String>,
}

/// The first half of a browser login (headless or not): everything before the browser opens.
pub async fn prepare_login(
    http: &OAuthHttp,
    discovery: &Discovery,
    settings: &LoginSettings,
    previous: Option<TokenEndpoint>,
    scope: Option<&str>,
    headless: &Headless,
) -> Result<PreparedLogin, OAuthError> {
    let (listener, redirect_uri) = match &headless.callback_url {
        Some(_) if headless.deliveries.is_none() => {
            return Err(OAuthError::Callback(
                "a public callback URL needs the daemon that serves its path (serve --listen); \
                 this command cannot receive it"
                    .into(),
            ));
        }
        Some(url) => (None, url.to_string()),
        None => {
            let listener = bind_listener(previous.as_ref(), settings).await?;
            let uri = listener.redirect_uri().to_string();
            (Some(listener), uri)
        }
    };
    let endpoint = match previous {
        Some(endpoint) if endpoint.redirect_uri == redirect_uri => endpoint,
        _ => {
            let client = obtain_client(
                http,
                &settings.client,
                &discovery.authorization_server,
                &redirect_uri,
                scope,
            )
            .await?;
            tracing::info!(
                client_id = %client.client_id,
                source = ?client.source,
                auth_method = client.auth_method.as_str(),
                "client identity ready"
            );
            TokenEndpoint::new(
                &discovery.authorization_server,
                client,
                redirect_uri,
                discovery.resource.clone(),
            )
        }
    };
    let pending = endpoint.authorization_request(scope, &settings.extra_params)?;
    let expected = ExpectedCallback {
        state: pending.state.clone(),
        issuer: discovery.authorization_server.issuer.clone(),
        iss_required: discovery
            .authorization_server
            .authorization_response_iss_parameter_supported,
    };
    Ok(PreparedLogin {
        listener,
        endpoint,
        pending,
        expected,
        scope: scope.map(str::to_string),
    })
}

impl PreparedLogin {
    /// The second half: opens the browser, waits for the one valid response, exchanges its
    /// code.
    pub async fn open_browser(
        self,
        http: &OAuthHttp,
        settings: &LoginSettings,
        dpop: Option<&Dpop>,
        headless: &Headless,
    ) -> Result<(TokenEndpoint, TokenSet), OAuthError> {
        let PreparedLogin {
            listener,
            endpoint,
            pending,
            expected,
            scope,
        } = self;
        // Registered before the link is shown: a person may paste back at once.
        let mut inbox = headless
            .deliveries
            .as_ref()
            .map(|(callbacks, server)| callbacks.expect(server, &pending.state));
        tracing::info!(
            scope = scope.as_deref().unwrap_or(""),
            "opening the browser for authorization"
        );
        settings.browser.open(&pending.url)?;
        let now = SystemTime::now;
        let token = loop {
            match next_response(listener.as_ref(), inbox.as_mut(), &expected).await? {
                Received::Redirect(code) => {
                    break endpoint
                        .exchange_code(http, &code, &pending, now(), dpop)
                        .await?;
                }
                Received::Delivered { code, answer } => {
                    match endpoint
                        .exchange_code(http, &code, &pending, now(), dpop)
                        .await
                    {
                        Ok(token) => {
                            answer.accepted();
                            break token;
                        }
                        Err(e) if code_refused(&e) => {
                            tracing::warn!(
                                error = %e,
                                "the token endpoint refused a delivered authorization code; the \
                                 login keeps waiting"
                            );
                            answer.refused(format!(
                                "The authorization server refused this response's code ({e}): it \
                                 was used already or belongs to another sign-in."
                            ));
                        }
                        Err(e) => {
                            answer.failed(&e);
                            return Err(e);
                        }
                    }
                }
            }
        };
        drop(inbox);
        tracing::info!(
            scope = token.scope.as_deref().unwrap_or(""),
            has_refresh_token = token.refresh_token.is_some(),
            token_type = %token.token_type,
            "authorization complete"
        );
        Ok((endpoint, token))
    }
}

/// The token endpoint refused the code itself (`invalid_grant`): a replayed code, or one from
/// another sign-in. The PKCE verifier this login holds stays good for its own code.
fn code_refused(e: &OAuthError) -> bool {
    matches!(e, OAuthError::Server { endpoint: Endpoint::Token, code, .. }
        if ErrorCode::parse(code).meaning() == CodeMeaning::GrantDead)
}

/// The loopback redirect listener: on the port of `previous`'s redirect URI when it has one.
async fn bind_listener(
    previous: Option<&TokenEndpoint>,
    settings: &LoginSettings,
) -> Result<CallbackListener, OAuthError> {
    let port = previous
        .and_then(|e| Url::parse(&e.redirect_uri).ok())
        .and_then(|u| u.port())
        .unwrap_or(settings.redirect_port);
    // The registered client's port may be taken (another program, another login): another
    // loopback port works, at the cost of registering again for its redirect URI.
    let listener = match CallbackListener::bind(port).await {
        Ok(listener) => listener,
        Err(e) if port != settings.redirect_port || port != 0 => {
            let fallback = if port != settings.redirect_port {
                settings.redirect_port
            } else {
                0
            };
            tracing::warn!(port, fallback, error = %e, "the redirect port is busy; using another loopback port");
            match CallbackListener::bind(fallback).await {
                Ok(listener) => listener,
                Err(_) if fallback != 0 => CallbackListener::bind(0).await?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    Ok(listener)
}
