//! The loopback redirect listener (RFC 8252 §7.3): binds 127.0.0.1 on an ephemeral or configured
//! port, waits for exactly one valid callback, shows the browser an honest page (success or the
//! error), and closes. A callback with the wrong `state` is refused and logged; the listener
//! keeps waiting for the real one. Stray requests (favicons, preconnects) are answered or
//! ignored without disturbing the wait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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
    pub async fn wait_for_code(self, expected: ExpectedCallback) -> Result<String, OAuthError> {
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
    async fn one_valid_callback_over_real_sockets_after_strays_and_a_forgery() {
        let listener = CallbackListener::bind(0).await.unwrap();
        let uri = listener.redirect_uri().to_string();
        assert!(uri.starts_with("http://127.0.0.1:") && uri.ends_with("/callback"));
        let waiting = tokio::spawn(listener.wait_for_code(expected(false)));
        let http = reqwest::Client::new();
        let base = uri.trim_end_matches("/callback").to_string();
        let stray = http
            .get(format!("{base}/favicon.ico"))
            .send()
            .await
            .unwrap();
        assert_eq!(stray.status(), 404);
        let forged = http
            .get(format!("{uri}?state=forged&code=evil"))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 400);
        assert!(forged.text().await.unwrap().contains("state mismatch"));
        let real = http
            .get(format!("{uri}?state=st&code=the-code"))
            .send()
            .await
            .unwrap();
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
