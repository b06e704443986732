//! Headless login: the RFC 8628 device authorization grant. The client asks the
//! authorization server's `device_authorization_endpoint` for a device code and a user code,
//! shows the person the user code and where to enter it, and polls the token endpoint until
//! the person has answered.
//!
//! Polling honours the announced `interval` (5 s when absent), adds 5 s for every `slow_down`
//! (RFC 8628 §3.5), and stops at the code's `expires_in` and after [`MAX_POLLS`] polls,
//! whichever comes first. `access_denied` and `expired_token` end the login with their own
//! errors. The user code and verification URL are for the person (logged and shown); the device
//! code is a secret: it is registered with the log scrubber and never logged.
//!
//! What the server announces for the person is checked before anything shows it: the
//! verification URIs must be `https` (or `http` on a loopback address), without credentials,
//! at most [`MAX_URI_LEN`] bytes; the user code at most [`MAX_USER_CODE_CHARS`] characters,
//! without control characters. Anything else ends the login with an error naming the field
//! (never quoting it), before the browser command, a log line or the status sees it.

use std::fmt;
use std::time::{Duration, SystemTime};

use oauth2::basic::BasicTokenResponse;
use serde::Serialize;
use url::Url;

use super::browser::BrowserLauncher;
use super::client_identity::{
    ClientConfig, ClientCredentials, ClientSource, DEVICE_CODE_GRANT_TYPE, obtain_device_client,
};
use super::dpop::Dpop;
use super::error::{Endpoint, ErrorClass, OAuthError};
use super::http::{OAuthHttp, is_loopback, secure_endpoint_url};
use super::metadata::Discovery;
use super::token::{TokenEndpoint, TokenSet, client_authenticated, token_set};

/// Polls of one device code at most, whatever its lifetime and interval.
pub const MAX_POLLS: u32 = 360;

/// RFC 8628 §3.2: the interval when the server announces none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest interval between polls, whatever the server announces.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest lifetime believed for a device code (an hour): the login ends by then.
const MAX_CODE_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest user code shown. RFC 8628 §6.1 suggests about 8 characters for a person to
/// type; a longer one is no code for a person (and could fill a terminal or a page).
pub const MAX_USER_CODE_CHARS: usize = 64;
/// The longest verification URI accepted, in bytes.
pub const MAX_URI_LEN: usize = 2048;

/// What the person is shown: the user code and where to enter it. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePrompt {
    pub user_code: String,
    pub verification_uri: String,
    /// The verification URI with the user code in it, when the server offers one.
    pub verification_uri_complete: Option<String>,
    /// When the device code expires (unix milliseconds).
    pub expires_at: i64,
}

impl DevicePrompt {
    /// The sentence shown on the terminal.
    pub fn instructions(&self) -> String {
        let mut text = format!(
            "To sign in, open {} and enter the code {}",
            self.verification_uri, self.user_code
        );
        if let Some(complete) = &self.verification_uri_complete {
            text.push_str(&format!(" (or open {complete})"));
        }
        text
    }
}

/// A device authorization in flight: the prompt, the secret device code, the interval.
pub struct DeviceAuthorization {
    pub prompt: DevicePrompt,
    device_code: String,
    pub interval: Duration,
    /// The code's lifetime as announced (clamped to an hour).
    pub lifetime: Duration,
    /// The scope asked for: the granted one when the token answer names none (RFC 6749 §5.1).
    scope: Option<String>,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("prompt", &self.prompt)
            .field("interval", &self.interval)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// RFC 8628 §3.2, the fields used.
#[derive(serde::Deserialize)]
struct AuthorizationResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// A device authorization answer the login cannot show: the field, and what it must be.
fn unshowable(field: &str, must: &str) -> OAuthError {
    OAuthError::Malformed {
        endpoint: Endpoint::Authorization,
        reason: format!(
            "the device authorization's {field} {must}; the login stopped before showing it \
             (nothing was opened): report it to the authorization server's operator"
        ),
    }
}

/// A verification URI fit to show and open: `https`, or `http` on a loopback address, with a
/// host and without credentials (`https://bank.example@evil.example/`), bounded in length.
/// Returned as the URL parser writes it (control characters a server slipped in are gone).
fn checked_uri(field: &str, uri: &str) -> Result<String, OAuthError> {
    let must = "must be an https URL (or http on a loopback address) without credentials, at \
                most 2048 bytes";
    let url = (uri.len() <= MAX_URI_LEN)
        .then(|| Url::parse(uri).ok())
        .flatten()
        .filter(|url| match url.scheme() {
            "https" => url.host().is_some(),
            "http" => is_loopback(url),
            _ => false,
        })
        .filter(|url| url.username().is_empty() && url.password().is_none())
        .ok_or_else(|| unshowable(field, must))?;
    Ok(url.to_string())
}

/// A user code fit to show: 1 to [`MAX_USER_CODE_CHARS`] characters, none a control
/// character (an escape sequence would redraw the operator's terminal).
fn checked_user_code(code: &str) -> Result<String, OAuthError> {
    let chars = code.chars().count();
    if chars == 0 || chars > MAX_USER_CODE_CHARS || code.chars().any(char::is_control) {
        return Err(unshowable(
            "user_code",
            "must be 1 to 64 characters, none of them a control character",
        ));
    }
    Ok(code.to_string())
}

/// The interval between polls for a server's `interval`: a 0 would poll without pause and a
/// huge one overflow the clock, so at least a second and at most the code's longest life.
fn announced_interval(interval: Option<u64>) -> Duration {
    interval
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(MIN_INTERVAL, MAX_CODE_LIFETIME)
}

/// Asks `device_authorization_endpoint` for a device code (RFC 8628 §3.1), as `endpoint`'s
/// client, for `scope` and the endpoint's RFC 8707 resource.
pub async fn request_authorization(
    http: &OAuthHttp,
    endpoint: &TokenEndpoint,
    device_authorization_endpoint: &str,
    scope: Option<&str>,
    now: SystemTime,
) -> Result<DeviceAuthorization, OAuthError> {
    let url = secure_endpoint_url(
        "device authorization endpoint",
        device_authorization_endpoint,
    )?;
    let mut form = vec![("resource", endpoint.resource.clone())];
    if let Some(scope) = scope.filter(|s| !s.is_empty()) {
        form.push(("scope", scope.to_string()));
    }
    let request = client_authenticated(http.client().post(url), &mut form, &endpoint.client);
    let reply = http
        .send(Endpoint::Authorization, request.form(&form))
        .await?;
    if !reply.status.is_success() {
        return Err(reply.error(Endpoint::Authorization));
    }
    let answer: AuthorizationResponse = reply.json(Endpoint::Authorization)?;
    crate::telemetry::secrets::register(&answer.device_code);
    let lifetime = Duration::from_secs(answer.expires_in).min(MAX_CODE_LIFETIME);
    if lifetime.is_zero() || answer.device_code.is_empty() || answer.user_code.is_empty() {
        return Err(OAuthError::Malformed {
            endpoint: Endpoint::Authorization,
            reason: "the device authorization response has an empty code or expires_in 0".into(),
        });
    }
    let expires_at = now
        .checked_add(lifetime)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(i64::MAX);
    let complete = answer.verification_uri_complete.as_deref();
    Ok(DeviceAuthorization {
        prompt: DevicePrompt {
            user_code: checked_user_code(&answer.user_code)?,
            verification_uri: checked_uri("verification_uri", &answer.verification_uri)?,
            verification_uri_complete: complete
                .map(|uri| checked_uri("verification_uri_complete", uri))
                .transpose()?,
            expires_at,
        },
        device_code: answer.device_code,
        interval: announced_interval(answer.interval),
        lifetime,
        scope: scope.filter(|s| !s.is_empty()).map(String::from),
    })
}

/// Polls the token endpoint until the person answered (RFC 8628 §3.4, §3.5). Waits
/// `interval` before each poll, 5 s longer after each `slow_down`, twice as long (at most a
/// minute) after a transient failure of the token endpoint; gives up when the next poll would
/// come after the code's lifetime or after [`MAX_POLLS`] polls.
/// With `dpop`, every poll carries a proof (RFC 9449 §5) and a `use_dpop_nonce` answer is
/// one more poll (with the nonce it brought).
pub async fn poll_for_token(
    http: &OAuthHttp,
    endpoint: &TokenEndpoint,
    authorization: &DeviceAuthorization,
    dpop: Option<&Dpop>,
) -> Result<TokenSet, OAuthError> {
    let started = tokio::time::Instant::now();
    let give_up_at = started + authorization.lifetime;
    let expired = || OAuthError::DeviceCodeExpired {
        after: started.elapsed(),
    };
    let url = secure_endpoint_url("token endpoint", &endpoint.token_endpoint)?;
    let mut interval = authorization.interval;
    for poll in 1..=MAX_POLLS {
        let at = tokio::time::Instant::now() + interval;
        if at > give_up_at {
            return Err(expired());
        }
        tokio::time::sleep_until(at).await;
        let mut form = vec![
            ("grant_type", DEVICE_CODE_GRANT_TYPE.to_string()),
            ("device_code", authorization.device_code.clone()),
            ("resource", endpoint.resource.clone()),
        ];
        let mut request =
            client_authenticated(http.client().post(url.clone()), &mut form, &endpoint.client);
        if let Some(dpop) = dpop {
            request = request.header("dpop", dpop.header("POST", url.as_str(), None));
        }
        let reply = match http.send(Endpoint::Token, request.form(&form)).await {
            Ok(reply) => reply,
            Err(e) if e.class() != ErrorClass::Permanent => {
                interval = polling_slower(poll, interval, &e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let fresh_nonce = dpop.is_some_and(|d| d.remember_nonce(url.as_str(), &reply.headers));
        if reply.status.is_success() {
            let response: BasicTokenResponse = reply.json(Endpoint::Token)?;
            let set = token_set(
                response,
                None,
                authorization.scope.as_deref(),
                SystemTime::now(),
                dpop,
            )?;
            tracing::info!(
                polls = poll,
                scope = set.scope.as_deref().unwrap_or(""),
                has_refresh_token = set.refresh_token.is_some(),
                "device login approved"
            );
            return Ok(set);
        }
        let error = reply.error(Endpoint::Token);
        match error.oauth_code() {
            Some("use_dpop_nonce") if fresh_nonce => {
                tracing::debug!(
                    poll,
                    "device login: the token endpoint handed out a DPoP nonce"
                );
            }
            Some("authorization_pending") => {
                tracing::debug!(poll, "device login: authorization pending");
            }
            Some("slow_down") => {
                interval += Duration::from_secs(5);
                tracing::info!(
                    poll,
                    interval_secs = interval.as_secs(),
                    "device login: the server asked to slow down"
                );
            }
            Some("access_denied") => {
                return Err(OAuthError::DeviceAccessDenied {
                    verification_uri: authorization.prompt.verification_uri.clone(),
                });
            }
            Some("expired_token") => return Err(expired()),
            // A 5xx, 429 or `temporarily_unavailable` says nothing about the code: poll on,
            // more slowly (RFC 8628 §3.5), within the code's lifetime.
            _ if error.class() != ErrorClass::Permanent => {
                interval = polling_slower(poll, interval, &error);
            }
            _ => return Err(error),
        }
    }
    Err(OAuthError::TooManyPolls { polls: MAX_POLLS })
}

/// The interval after a transient failure: doubled (at most a minute), and never sooner than
/// the server's `Retry-After`.
/// [`backed_off`], said in the log: the token endpoint failed in a way that says nothing about
/// the device code.
fn polling_slower(poll: u32, interval: Duration, error: &OAuthError) -> Duration {
    let interval = backed_off(interval, error);
    tracing::warn!(
        poll,
        error = %error,
        interval_secs = interval.as_secs(),
        "device login: the token endpoint failed; polling more slowly"
    );
    interval
}

fn backed_off(interval: Duration, error: &OAuthError) -> Duration {
    let retry_after = match error.class() {
        ErrorClass::Transient { retry_after } => retry_after.unwrap_or_default(),
        ErrorClass::Permanent => Duration::ZERO,
    };
    (interval * 2)
        .min(MAX_BACKOFF_INTERVAL)
        .max(retry_after.min(MAX_BACKOFF_INTERVAL))
}

/// The longest interval transient failures stretch polling to.
const MAX_BACKOFF_INTERVAL: Duration = Duration::from_secs(60);

/// Runs one device login: client identity (reusing `previous` where given), the device
/// authorization, the prompt shown through `show` (and logged), then polling. Fails at once
/// with [`OAuthError::DeviceGrantUnsupported`] when the server offers no device endpoint.
pub async fn device_login(
    http: &OAuthHttp,
    discovery: &Discovery,
    client: &ClientConfig,
    previous: Option<TokenEndpoint>,
    scope: Option<&str>,
    show: &(dyn Fn(&DevicePrompt) + Send + Sync),
    dpop: Option<&Dpop>,
) -> Result<(TokenEndpoint, TokenSet), OAuthError> {
    let metadata = &discovery.authorization_server;
    let Some(device_endpoint) = metadata.device_authorization_endpoint.clone() else {
        return Err(OAuthError::DeviceGrantUnsupported {
            issuer: metadata.issuer.clone(),
        });
    };
    let endpoint = match previous.filter(|p| registered_for_device_grant(&p.client)) {
        Some(endpoint) => endpoint,
        None => {
            let client = obtain_device_client(http, client, metadata, scope).await?;
            tracing::info!(
                client_id = %client.client_id,
                source = ?client.source,
                auth_method = client.auth_method.as_str(),
                "client identity ready"
            );
            TokenEndpoint::new(metadata, client, String::new(), discovery.resource.clone())
        }
    };
    let authorization =
        request_authorization(http, &endpoint, &device_endpoint, scope, SystemTime::now()).await?;
    let prompt = &authorization.prompt;
    tracing::info!(
        user_code = %prompt.user_code,
        verification_uri = %prompt.verification_uri,
        verification_uri_complete = prompt.verification_uri_complete.as_deref().unwrap_or(""),
        expires_at = prompt.expires_at,
        interval_secs = authorization.interval.as_secs(),
        "device login: waiting for the user to enter the code"
    );
    show(prompt);
    let token = poll_for_token(http, &endpoint, &authorization, dpop).await?;
    Ok((endpoint, token))
}

/// Whether a client of an earlier login may poll with a device code: a configured client or a
/// metadata document (the user chose them), or a registration that asked for the device grant.
/// A client registered for the redirect flow alone is not reused (a server may refuse it
/// `unauthorized_client`); a new one is registered.
fn registered_for_device_grant(client: &ClientCredentials) -> bool {
    if client.source != ClientSource::Registered {
        return true;
    }
    client
        .registration
        .as_ref()
        .and_then(|r| r.get("grant_types"))
        .and_then(serde_json::Value::as_array)
        .is_some_and(|grants| grants.iter().any(|g| g == DEVICE_CODE_GRANT_TYPE))
}

/// How a device login shows its prompt to a person at a terminal: the instructions on stderr
/// (control characters made inert). A launcher the user or the embedding program chose (a
/// browser command, a handler) is also given the verification URL; the platform opener is
/// not, since a device login is for hosts without a browser.
pub fn shown_with(browser: BrowserLauncher) -> impl Fn(&DevicePrompt) + Send + Sync {
    move |prompt: &DevicePrompt| {
        eprintln!("{}", crate::telemetry::inert::safe(&prompt.instructions()));
        if matches!(
            browser,
            BrowserLauncher::Command(_) | BrowserLauncher::Handler(_)
        ) {
            let url = prompt
                .verification_uri_complete
                .as_deref()
                .unwrap_or(&prompt.verification_uri);
            match Url::parse(url) {
                Ok(url) => {
                    if let Err(e) = browser.open(&url) {
                        tracing::warn!(error = %e, "the verification URL could not be opened");
                    }
                }
                Err(_) => {
                    tracing::warn!("the verification URL is not a URL; enter the code by hand")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_names_the_code_and_both_urls() {
        let prompt = DevicePrompt {
            user_code: "BCDF-GHJK".into(),
            verification_uri: "https://as.example/device".into(),
            verification_uri_complete: Some("https://as.example/device?user_code=BCDF-GHJK".into()),
            expires_at: 0,
        };
        let text = prompt.instructions();
        assert!(text.contains("https://as.example/device and enter the code BCDF-GHJK"));
        assert!(text.contains("(or open https://as.example/device?user_code=BCDF-GHJK)"));
    }

    #[test]
    fn only_clients_registered_for_the_device_grant_are_reused() {
        let registered = |grants: serde_json::Value| ClientCredentials {
            client_id: "c".into(),
            client_secret: None,
            auth_method: super::super::client_identity::TokenAuthMethod::None,
            source: ClientSource::Registered,
            registration: Some(
                serde_json::json!({"grant_types": grants})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        };
        assert!(registered_for_device_grant(&registered(serde_json::json!(
            [DEVICE_CODE_GRANT_TYPE, "refresh_token"]
        ))));
        assert!(!registered_for_device_grant(&registered(
            serde_json::json!(["authorization_code", "refresh_token"])
        )));
        let mut configured = registered(serde_json::json!([]));
        configured.source = ClientSource::Configured;
        assert!(registered_for_device_grant(&configured));
    }

    #[test]
    fn a_servers_interval_is_kept_within_a_second_and_an_hour() {
        assert_eq!(announced_interval(None), DEFAULT_INTERVAL);
        assert_eq!(announced_interval(Some(7)), Duration::from_secs(7));
        assert_eq!(
            announced_interval(Some(0)),
            MIN_INTERVAL,
            "no polling without pause"
        );
        assert_eq!(
            announced_interval(Some(u64::MAX)),
            MAX_CODE_LIFETIME,
            "no clock overflow"
        );
    }

    #[test]
    fn only_https_or_loopback_verification_uris_and_short_user_codes_are_shown() {
        for good in [
            "https://as.example/device",
            "http://127.0.0.1:9000/device?user_code=BCDF-GHJK",
            "http://localhost/device",
            "http://[::1]:8080/device",
        ] {
            assert!(checked_uri("verification_uri", good).is_ok(), "{good}");
        }
        assert_eq!(
            checked_uri("verification_uri", "https://as.example/de\nvice").unwrap(),
            "https://as.example/device",
            "shown as parsed, never as given"
        );
        let long = format!("https://as.example/{}", "a".repeat(MAX_URI_LEN));
        for bad in [
            "javascript:alert(document.cookie)//",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "http://as.example/device",
            "http://127.0.0.1.evil.example/device",
            "https://bank.example@evil.example/device",
            "/device",
            "",
            &long,
        ] {
            let message = checked_uri("verification_uri_complete", bad)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("verification_uri_complete must be an https URL"),
                "{bad}: {message}"
            );
            assert!(
                bad.len() < 3 || !message.contains(bad),
                "not quoted: {message}"
            );
        }
        assert_eq!(checked_user_code("BCDF-GHJK").unwrap(), "BCDF-GHJK");
        assert!(checked_user_code(&"W".repeat(MAX_USER_CODE_CHARS)).is_ok());
        for bad in [
            String::new(),
            "W".repeat(MAX_USER_CODE_CHARS + 1),
            "AB\u{1b}[2JCD".into(),
        ] {
            let message = checked_user_code(&bad).unwrap_err().to_string();
            assert!(
                message.contains("user_code must be 1 to 64 characters"),
                "{message}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_device_code() {
        let authorization = DeviceAuthorization {
            prompt: DevicePrompt {
                user_code: "BCDF-GHJK".into(),
                verification_uri: "https://as.example/device".into(),
                verification_uri_complete: None,
                expires_at: 0,
            },
            device_code: "dc_very_secret_value".into(),
            interval: DEFAULT_INTERVAL,
            lifetime: MAX_CODE_LIFETIME,
            scope: None,
        };
        let shown = format!("{authorization:?}");
        assert!(shown.contains("BCDF-GHJK"));
        assert!(!shown.contains("dc_very_secret_value"));
    }
}
