//! The loopback redirect listener (RFC 8252 §7.3): binds 127.0.0.1 on an ephemeral or configured
//! port, waits for exactly one valid callback, shows the browser an honest page (success or the
//! error), and closes. A callback with the wrong `state` is refused and logged; the listener
//! keeps waiting for the real one. Stray requests (favicons, preconnects) are answered or
//! ignored without disturbing the wait.
//!
//! A login can also hear its authorization response without its own listener: a URL pasted
//! back (`auth login --paste`, the API, the page) or a redirect to the daemon's public callback
//! path, both delivered through [`Callbacks`] and judged by the same [`judge`] as a loopback
//! redirect. The one who delivered it hears the verdict; a refused delivery leaves the login
//! waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::error::{Endpoint, OAuthError};

const CALLBACK_PATH: &str = "/callback";
const MAX_REQUEST_HEAD: usize = 16 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct CallbackListener {
    listener: TcpListener,
    redirect_uri: String,
}

/// What a valid callback must carry. `Debug` hides `state`.
#[derive(Clone)]
pub struct ExpectedCallback {
    pub state: String,
    pub issuer: String,
    /// The server promised `iss` (RFC 9207 `authorization_response_iss_parameter_supported`).
    pub iss_required: bool,
}

impl std::fmt::Debug for ExpectedCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpectedCallback")
            .field("state", &crate::telemetry::secrets::marker(&self.state))
            .field("issuer", &self.issuer)
            .field("iss_required", &self.iss_required)
            .finish()
    }
}

impl CallbackListener {
    /// Binds 127.0.0.1:`port` (0 = ephemeral).
    pub async fn bind(port: u16) -> Result<Self, OAuthError> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            OAuthError::Callback(format!(
                "cannot listen for the OAuth redirect on 127.0.0.1:{port}: {e}; free the port or \
                 choose another redirect port"
            ))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| OAuthError::Callback(e.to_string()))?
            .port();
        Ok(CallbackListener {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}{CALLBACK_PATH}"),
        })
    }

    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Waits for the one valid callback and returns its authorization code. The caller bounds
    /// the wait (a user may take minutes).
    pub async fn wait_for_code(&self, expected: ExpectedCallback) -> Result<String, OAuthError> {
        let expected = Arc::new(expected);
        let (outcomes, mut received) = mpsc::channel::<Result<String, OAuthError>>(4);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (expected, outcomes) = (expected.clone(), outcomes.clone());
                    // The flow's span goes along: these lines keep its correlation_id.
                    tokio::spawn(
                        async move {
                            if let Some(outcome) = handle_connection(stream, &expected).await {
                                let _ = outcomes.send(outcome).await;
                            }
                        }
                        .instrument(tracing::Span::current()),
                    );
                }
                Some(outcome) = received.recv() => return outcome,
            }
        }
    }
}

/// Logins waiting for their authorization response, by server name: where a pasted URL (CLI,
/// API, page) or a redirect to the daemon's public callback path is delivered. One per
/// supervisor, shared by its flows and its API.
#[derive(Clone, Default)]
pub struct Callbacks {
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
}

struct Waiting {
    state: String,
    deliveries: mpsc::Sender<Delivery>,
}

/// A response delivered to a waiting login, and where its verdict goes.
pub struct Delivery {
    params: HashMap<String, String>,
    answer: oneshot::Sender<Result<(), DeliveryError>>,
}

/// The verdict on a delivered response. Messages never quote the URL or its code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No login of that server (or with that `state`) is waiting.
    #[error("{0}")]
    NotWaiting(String),
    /// The text is not an authorization response.
    #[error("{0}")]
    NotAResponse(String),
    /// Refused (wrong `state`, `iss`, a code the token endpoint refused): the login keeps
    /// waiting for the right one.
    #[error("{0} The login keeps waiting for the right URL.")]
    Refused(String),
    /// The login ended with this error (the authorization server's own `error=`, or an
    /// exchange that failed for another reason than the code).
    #[error("the login failed: {0}")]
    Failed(String),
}

impl DeliveryError {
    /// The API's error code for it.
    pub fn code(&self) -> &'static str {
        match self {
            DeliveryError::NotWaiting(_) => "no_login_waiting",
            DeliveryError::NotAResponse(_) => "not_an_authorization_response",
            DeliveryError::Refused(_) => "response_refused",
            DeliveryError::Failed(_) => "login_failed",
        }
    }
}

/// The most text taken as a pasted URL (a browser's address bar holds far less).
const MAX_PASTED: usize = 8 * 1024;

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("Callbacks")
            .field("waiting", &names)
            .finish()
    }
}

impl Callbacks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `server`'s login, waiting for the response to `state`, until the inbox drops.
    pub fn expect(&self, server: &str, state: &str) -> Inbox {
        let (deliveries, receiver) = mpsc::channel(4);
        self.lock().insert(
            server.to_string(),
            Waiting {
                state: state.to_string(),
                deliveries,
            },
        );
        Inbox {
            receiver,
            callbacks: self.clone(),
            server: server.to_string(),
            state: state.to_string(),
        }
    }

    /// Whether a login of `server` waits for its response.
    pub fn is_waiting(&self, server: &str) -> bool {
        self.lock().contains_key(server)
    }

    /// Delivers the URL a browser ended on (pasted by a person) to `server`'s waiting login and
    /// returns its verdict once the login has judged it (and exchanged its code).
    pub async fn paste(&self, server: &str, pasted: &str) -> Result<(), DeliveryError> {
        let params = response_params(pasted)?;
        let sender = self.lock().get(server).map(|w| w.deliveries.clone());
        let Some(sender) = sender else {
            return Err(DeliveryError::NotWaiting(format!(
                "no login of {server} is waiting for its authorization response: start one \
                 (auth login --paste, or POST /api/v1/servers/{server}/login), open its link, \
                 then paste the address the browser ended on"
            )));
        };
        deliver(sender, params).await
    }

    /// Delivers a redirect to the daemon's public callback path (its query string) to the
    /// login waiting for its `state`.
    pub async fn redirected(&self, query: &str) -> Result<(), DeliveryError> {
        let params = response_params(&format!("?{query}"))?;
        let state = params.get("state").cloned().unwrap_or_default();
        let sender = self
            .lock()
            .values()
            .find(|w| !state.is_empty() && w.state == state)
            .map(|w| w.deliveries.clone());
        let Some(sender) = sender else {
            return Err(DeliveryError::NotWaiting(
                "no sign-in in progress here matches this response (it may have finished, \
                 timed out or been started again); start the login again"
                    .into(),
            ));
        };
        deliver(sender, params).await
    }
}

async fn deliver(
    sender: mpsc::Sender<Delivery>,
    params: HashMap<String, String>,
) -> Result<(), DeliveryError> {
    let gone = || {
        DeliveryError::NotWaiting(
            "the login this response was for ended before it was judged; start the login again"
                .into(),
        )
    };
    let (answer, verdict) = oneshot::channel();
    sender
        .send(Delivery { params, answer })
        .await
        .map_err(|_| gone())?;
    verdict.await.map_err(|_| gone())?
}

/// The parameters of a pasted authorization response: the whole URL, or its query. Its code
/// is registered as a secret before anything else looks at it.
fn response_params(pasted: &str) -> Result<HashMap<String, String>, DeliveryError> {
    let text = pasted.trim();
    let not_a_response = || {
        DeliveryError::NotAResponse(
            "this is not the address the browser ended on: it has no state and no code or \
             error parameter; copy the whole address from the browser's address bar after \
             approving (the page itself may say it cannot be reached)"
                .into(),
        )
    };
    if text.len() > MAX_PASTED {
        return Err(DeliveryError::NotAResponse(format!(
            "the pasted text is longer than {MAX_PASTED} bytes; paste only the address the \
             browser ended on"
        )));
    }
    crate::telemetry::secrets::register(text);
    let query = match url::Url::parse(text) {
        Ok(url) => url.query().unwrap_or_default().to_string(),
        Err(_) => text.trim_start_matches('?').to_string(),
    };
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let Some(code) = params.get("code") {
        crate::telemetry::secrets::register(code);
    }
    let carries = |k: &str| params.get(k).is_some_and(|v| !v.is_empty());
    if !carries("state") || !(carries("code") || carries("error")) {
        return Err(not_a_response());
    }
    Ok(params)
}

/// A waiting login's end of [`Callbacks`]: it leaves the registry when dropped (unless a newer
/// login of the same server took its place).
pub struct Inbox {
    receiver: mpsc::Receiver<Delivery>,
    callbacks: Callbacks,
    server: String,
    state: String,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut waiting = self.callbacks.lock();
        if waiting
            .get(&self.server)
            .is_some_and(|w| w.state == self.state)
        {
            waiting.remove(&self.server);
        }
    }
}

/// What ended a wait for the authorization response.
pub enum Received {
    /// A redirect to the loopback listener carried this code.
    Redirect(String),
    /// A delivered response carried this code; its deliverer waits for the verdict.
    Delivered { code: String, answer: Answer },
}

/// Where the verdict on a delivered response goes.
pub struct Answer(oneshot::Sender<Result<(), DeliveryError>>);

impl Answer {
    pub fn accepted(self) {
        let _ = self.0.send(Ok(()));
    }

    /// The code was refused; the login keeps waiting.
    pub fn refused(self, why: String) {
        let _ = self.0.send(Err(DeliveryError::Refused(why)));
    }

    /// The login ends with `error`.
    pub fn failed(self, error: &OAuthError) {
        let _ = self.0.send(Err(DeliveryError::Failed(error.to_string())));
    }
}

/// Waits for the next authorization response that passes [`judge`]: a redirect to `listener`
/// or a delivery to `inbox`. A delivery the judge refuses is answered with why, and the wait
/// goes on; one that carries the authorization server's own error ends it, as a redirect does.
pub async fn next_response(
    listener: Option<&CallbackListener>,
    mut inbox: Option<&mut Inbox>,
    expected: &ExpectedCallback,
) -> Result<Received, OAuthError> {
    let redirect = async {
        match listener {
            Some(listener) => listener.wait_for_code(expected.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(redirect);
    loop {
        let delivery = async {
            match inbox.as_mut() {
                Some(inbox) => inbox.receiver.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            code = &mut redirect => return code.map(Received::Redirect),
            Some(delivery) = delivery => {
                let Delivery { params, answer } = delivery;
                let (_, _, message, outcome) = judge(&params, expected);
                match outcome {
                    Some(Ok(code)) => return Ok(Received::Delivered { code, answer: Answer(answer) }),
                    Some(Err(e @ OAuthError::Server { .. })) => {
                        Answer(answer).failed(&e);
                        return Err(e);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(
                            error = %e,
                            "refused a delivered authorization response; the login keeps waiting"
                        );
                        let _ = answer.send(Err(DeliveryError::Refused(message)));
                    }
                    None => {
                        let _ = answer.send(Err(DeliveryError::Refused(message)));
                    }
                }
            }
        }
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    expected: &ExpectedCallback,
) -> Option<Result<String, OAuthError>> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .ok()??;
    let target = head.lines().next()?.split_whitespace().nth(1)?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path != CALLBACK_PATH {
        respond(
            &mut stream,
            404,
            "Not found",
            "This address only receives OAuth redirects.",
        )
        .await;
        return None;
    }
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (status, title, message, outcome) = judge(&params, expected);
    respond(&mut stream, status, title, &message).await;
    outcome
}

/// Decides what a callback means: `None` outcome keeps the listener waiting.
fn judge(
    params: &HashMap<String, String>,
    expected: &ExpectedCallback,
) -> (
    u16,
    &'static str,
    String,
    Option<Result<String, OAuthError>>,
) {
    if params.get("state").map(String::as_str) != Some(expected.state.as_str()) {
        tracing::warn!(
            endpoint = "redirect callback",
            "rejected an OAuth callback whose state does not match the running sign-in"
        );
        let page = "This response does not belong to the sign-in in progress (state mismatch), so \
                    it was ignored. If you started a new sign-in, finish that one.";
        return (400, "Sign-in response rejected", page.into(), None);
    }
    match params.get("iss") {
        // RFC 9207 §2.4: simple string comparison, no URL normalization of any kind (a
        // trailing slash, case or default port that differs is a different issuer).
        Some(iss) if *iss != expected.issuer => {
            let e = OAuthError::IssuerMismatch {
                expected: expected.issuer.clone(),
                found: iss.clone(),
            };
            return (
                400,
                "Sign-in failed",
                format!(
                    "The response came from an unexpected authorization server ({iss}); it was refused."
                ),
                Some(Err(e)),
            );
        }
        None if expected.iss_required => {
            let e = OAuthError::Callback(format!(
                "the authorization response has no iss parameter although {} promised one (RFC 9207); refused",
                expected.issuer
            ));
            return (
                400,
                "Sign-in failed",
                "The response did not say which authorization server sent it; it was refused."
                    .into(),
                Some(Err(e)),
            );
        }
        _ => {}
    }
    if let Some(code) = params.get("error") {
        let description = params.get("error_description").cloned();
        let shown = description
            .clone()
            .unwrap_or_else(|| "no description".into());
        let e = OAuthError::Server {
            endpoint: Endpoint::Authorization,
            code: code.clone(),
            description,
            status: None,
            retry_after: None,
        };
        return (
            400,
            "Sign-in failed",
            format!("The authorization server answered {code}: {shown}."),
            Some(Err(e)),
        );
    }
    match params.get("code").filter(|c| !c.is_empty()) {
        Some(code) => {
            crate::telemetry::secrets::register(code);
            (
                200,
                "Signed in",
                "Authorization complete. You can close this tab and return to mcpproxy-oauth."
                    .into(),
                Some(Ok(code.clone())),
            )
        }
        None => (
            400,
            "Sign-in failed",
            "The response carried neither a code nor an error.".into(),
            Some(Err(OAuthError::Callback(
                "the authorization response carried neither a code nor an error".into(),
            ))),
        ),
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buffer.len() + n > MAX_REQUEST_HEAD {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buffer).ok()
}

async fn respond(stream: &mut TcpStream, status: u16, title: &str, message: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{}</p></body></html>",
        html_escape(message)
    );
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/html; charset=utf-8\r\n\
         cache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(iss_required: bool) -> ExpectedCallback {
        ExpectedCallback {
            state: "st".into(),
            issuer: "https://as.example".into(),
            iss_required,
        }
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_callback_decision_table() {
        let (_, _, _, o) = judge(
            &params(&[("state", "other"), ("code", "c")]),
            &expected(false),
        );
        assert!(o.is_none(), "a wrong state keeps waiting");
        let (s, _, _, o) = judge(&params(&[("state", "st"), ("code", "c")]), &expected(false));
        assert_eq!((s, o.unwrap().unwrap()), (200, "c".to_string()));
        let (_, _, _, o) = judge(&params(&[("state", "st"), ("code", "c")]), &expected(true));
        assert!(
            matches!(o, Some(Err(OAuthError::Callback(_)))),
            "iss promised but missing"
        );
        let (_, _, _, o) = judge(
            &params(&[
                ("state", "st"),
                ("code", "c"),
                ("iss", "https://as.example"),
            ]),
            &expected(true),
        );
        assert!(matches!(o, Some(Ok(_))));
        for normalized in [
            "https://as.example/",
            "HTTPS://as.example",
            "https://AS.example",
            "https://as.example:443",
            "https://as.exampl%65",
        ] {
            let (status, _, _, o) = judge(
                &params(&[("state", "st"), ("code", "c"), ("iss", normalized)]),
                &expected(true),
            );
            assert!(
                matches!(o, Some(Err(OAuthError::IssuerMismatch { .. }))) && status == 400,
                "{normalized} only matches after normalization and must be refused"
            );
        }
        let (_, _, _, o) = judge(
            &params(&[
                ("state", "st"),
                ("code", "c"),
                ("iss", "https://evil.example"),
            ]),
            &expected(false),
        );
        assert!(matches!(o, Some(Err(OAuthError::IssuerMismatch { .. }))));
        let (_, _, page, o) = judge(
            &params(&[
                ("state", "st"),
                ("error", "access_denied"),
                ("error_description", "<b>no</b>"),
            ]),
            &expected(false),
        );
        assert!(
            matches!(o, Some(Err(OAuthError::Server { ref code, .. })) if code == "access_denied")
        );
        assert!(page.contains("access_denied"));
        let (_, _, _, o) = judge(&params(&[("state", "st")]), &expected(false));
        assert!(matches!(o, Some(Err(OAuthError::Callback(_)))));
    }

    #[tokio::test]
    async fn deliveries_are_judged_like_redirects_and_only_the_right_one_or_an_error_ends_the_wait()
    {
        let callbacks = Callbacks::default();
        let url = |pairs: &str| format!("http://127.0.0.1:1/callback?{pairs}");
        let not_waiting = callbacks.paste("a", &url("state=st&code=code-1234")).await;
        assert!(matches!(not_waiting, Err(DeliveryError::NotWaiting(_))));
        let mut inbox = callbacks.expect("a", "st");
        assert!(callbacks.is_waiting("a"));
        let expected = expected(true);
        let good = "state=st&code=the-code-5678&iss=https%3A%2F%2Fas.example";
        // The login's side: it answers as `browser_login` does after its code exchange.
        let login = async {
            let received = next_response(None, Some(&mut inbox), &expected).await;
            let Ok(Received::Delivered { code, answer }) = received else {
                panic!("the first response that passes the judge is handed over");
            };
            assert_eq!(code, "the-code-5678");
            answer.refused("the authorization server refused this code".into());
            let received = next_response(None, Some(&mut inbox), &expected).await;
            let Ok(Received::Delivered { answer, .. }) = received else {
                panic!("the wait goes on after a refused code");
            };
            answer.accepted();
            let ended = next_response(None, Some(&mut inbox), &expected).await;
            assert!(
                matches!(ended, Err(OAuthError::Server { ref code, .. }) if code == "access_denied")
            );
        };
        let person = async {
            let nothing = callbacks.paste("a", "https://example.com/").await;
            assert!(
                matches!(nothing, Err(DeliveryError::NotAResponse(_))),
                "{nothing:?}"
            );
            type Answer = Result<(), DeliveryError>;
            /// Pasted (or else redirected), the query, and what it must be answered.
            type Delivery<'a> = (bool, &'a str, fn(&Answer) -> bool);
            // The deliveries, in turn.
            let deliveries: [Delivery; 7] = [
                (
                    true,
                    "state=forged&code=code-1234&iss=https://as.example",
                    |a| matches!(a, Err(DeliveryError::Refused(m)) if m.contains("state mismatch")),
                ),
                // A foreign issuer, then none where the server promised one.
                (
                    true,
                    "state=st&code=code-1234&iss=https://evil.example",
                    |a| matches!(a, Err(DeliveryError::Refused(_))),
                ),
                (true, "state=st&code=code-1234", |a| {
                    matches!(a, Err(DeliveryError::Refused(_)))
                }),
                (false, "state=other&code=code-1234", |a| {
                    matches!(a, Err(DeliveryError::NotWaiting(_)))
                }),
                // The refused code, replayed.
                (false, good, |a| matches!(a, Err(DeliveryError::Refused(_)))),
                (true, good, |a| a.is_ok()),
                (
                    true,
                    "state=st&error=access_denied&iss=https://as.example",
                    |a| matches!(a, Err(DeliveryError::Failed(_))),
                ),
            ];
            for (pasted, query, expected) in deliveries {
                let answer = if pasted {
                    callbacks.paste("a", &url(query)).await
                } else {
                    callbacks.redirected(query).await
                };
                assert!(expected(&answer), "{query}: {answer:?}");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(login, person)
        })
        .await
        .expect("every delivery is answered");
        assert!(
            crate::telemetry::secrets::scrub("x the-code-5678 x").contains("[redacted:"),
            "a delivered code is registered as a secret"
        );
        drop(inbox);
        assert!(
            !callbacks.is_waiting("a"),
            "a login that ended leaves the registry"
        );
    }

    #[tokio::test]
    async fn one_valid_callback_over_real_sockets_after_strays_and_a_forgery() {
        let listener = CallbackListener::bind(0).await.unwrap();
        let uri = listener.redirect_uri().to_string();
        assert!(uri.starts_with("http://127.0.0.1:") && uri.ends_with("/callback"));
        let waiting = tokio::spawn(async move { listener.wait_for_code(expected(false)).await });
        let http = reqwest::Client::new();
        let base = uri.trim_end_matches("/callback").to_string();
        let get = |url: String| http.get(url).send();
        let stray = get(format!("{base}/favicon.ico")).await.unwrap();
        assert_eq!(stray.status(), 404);
        let forged = get(format!("{uri}?state=forged&code=evil")).await.unwrap();
        assert_eq!(forged.status(), 400);
        assert!(forged.text().await.unwrap().contains("state mismatch"));
        let real = get(format!("{uri}?state=st&code=the-code")).await.unwrap();
        assert_eq!(real.status(), 200);
        assert!(
            real.text()
                .await
                .unwrap()
                .contains("Authorization complete")
        );
        let code = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the listener returns")
            .unwrap()
            .unwrap();
        assert_eq!(code, "the-code");
    }
}
