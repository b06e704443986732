//! One browser login, start to finish: bind the loopback redirect listener, settle the client
//! identity, build the PKCE authorization request, open the browser, wait for the one valid
//! callback, exchange the code. Callers bound the wait (a person may take minutes).

use std::time::SystemTime;

use url::Url;

use super::browser::BrowserLauncher;
use super::callback::{CallbackListener, ExpectedCallback};
use super::client_identity::{ClientConfig, obtain_client};
use super::dpop::Dpop;
use super::error::OAuthError;
use super::http::OAuthHttp;
use super::metadata::Discovery;
use super::token::{TokenEndpoint, TokenSet};

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
    let port = previous
        .as_ref()
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
    let redirect_uri = listener.redirect_uri().to_string();
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
    tracing::info!(
        scope = scope.unwrap_or(""),
        "opening the browser for authorization"
    );
    settings.browser.open(&pending.url)?;
    let expected = ExpectedCallback {
        state: pending.state.clone(),
        issuer: discovery.authorization_server.issuer.clone(),
        iss_required: discovery
            .authorization_server
            .authorization_response_iss_parameter_supported,
    };
    let code = listener.wait_for_code(expected).await?;
    let token = endpoint
        .exchange_code(http, &code, &pending, SystemTime::now(), dpop)
        .await?;
    tracing::info!(
        scope = token.scope.as_deref().unwrap_or(""),
        has_refresh_token = token.refresh_token.is_some(),
        token_type = %token.token_type,
        "authorization complete"
    );
    Ok((endpoint, token))
}
