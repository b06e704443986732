//! The one HTTP client for all OAuth traffic. It never follows redirects (oauth2's docs warn
//! that following them on token calls enables SSRF), bounds every request in time and every
//! response in size, and refuses plain `http` except on loopback. It is also the single place
//! where OAuth requests and responses can be observed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use super::dpop::Dpop;
use super::error::{Endpoint, OAuthError};
use crate::telemetry::redact;

/// Responses larger than this are refused: no OAuth document comes close.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct OAuthHttp {
    client: reqwest::Client,
    timeout: Duration,
    max_body_bytes: usize,
}

/// A response read in full (within the size cap). `Debug` shows the status, the headers
/// redacted and the body's size: a token response body is all secrets.
pub struct HttpReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes());
                (
                    name.to_string(),
                    redact::header_value(name.as_str(), &value),
                )
            })
            .collect();
        f.debug_struct("HttpReply")
            .field("status", &self.status)
            .field("headers", &headers)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl HttpReply {
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }

    /// The error a failed reply means: the OAuth error its body names (RFC 6749 §5.2), else
    /// its HTTP status; with `Retry-After` either way.
    pub fn error(&self, endpoint: Endpoint) -> OAuthError {
        let body: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .and_then(|v| v.as_str())
                .map(String::from)
        };
        match field("error") {
            Some(code) => OAuthError::Server {
                endpoint,
                code,
                description: field("error_description"),
                status: Some(self.status.as_u16()),
                retry_after: self.retry_after(),
            },
            None => OAuthError::Http {
                endpoint,
                status: self.status.as_u16(),
                retry_after: self.retry_after(),
            },
        }
    }

    /// Parses a JSON body, reporting only the shape problem (never the body itself, which may
    /// hold secrets).
    pub fn json<T: DeserializeOwned>(&self, endpoint: Endpoint) -> Result<T, OAuthError> {
        serde_json::from_slice(&self.body).map_err(|e| OAuthError::Malformed {
            endpoint,
            reason: format!(
                "invalid JSON (line {}, column {}: {})",
                e.line(),
                e.column(),
                classify_json_error(&e)
            ),
        })
    }
}

fn classify_json_error(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// The longest `Retry-After` honoured: a server asking for longer is retried after an hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// `Retry-After` (RFC 9110 §10.2.3), in delta-seconds or as an HTTP-date, capped at
/// [`MAX_RETRY_AFTER`] (a cap is logged). A date in the past means "now".
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

fn retry_after_at(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let asked = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    if asked > MAX_RETRY_AFTER {
        tracing::warn!(
            retry_after = value,
            capped_to_s = MAX_RETRY_AFTER.as_secs(),
            "the server asked to wait longer than the cap; retrying after the cap"
        );
        return Some(MAX_RETRY_AFTER);
    }
    Some(asked)
}

/// OAuth endpoints must be https; plain http is allowed only on loopback (RFC 8252 §8.3).
pub fn require_secure_url(url: &Url) -> Result<(), OAuthError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        _ => Err(OAuthError::InsecureUrl {
            url: url.to_string(),
        }),
    }
}

/// Parses the URL of an OAuth endpoint (`what`: "token endpoint", ...) and requires it
/// secure ([`require_secure_url`]).
pub fn secure_endpoint_url(what: &str, endpoint: &str) -> Result<Url, OAuthError> {
    let url = Url::parse(endpoint)
        .map_err(|_| OAuthError::Discovery(format!("invalid {what} {endpoint:?}")))?;
    require_secure_url(&url)?;
    Ok(url)
}

pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl Default for OAuthHttp {
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT)
    }
}

impl OAuthHttp {
    pub fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("mcpproxy-oauth/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with these settings always builds");
        OAuthHttp {
            client,
            timeout,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub async fn get(&self, endpoint: Endpoint, url: &Url) -> Result<HttpReply, OAuthError> {
        require_secure_url(url)?;
        self.send(
            endpoint,
            self.client
                .get(url.clone())
                .header("accept", "application/json"),
        )
        .await
    }

    pub async fn post_json(
        &self,
        endpoint: Endpoint,
        url: &Url,
        body: &serde_json::Value,
    ) -> Result<HttpReply, OAuthError> {
        require_secure_url(url)?;
        self.send(
            endpoint,
            self.client
                .post(url.clone())
                .header("accept", "application/json")
                .json(body),
        )
        .await
    }

    /// Sends a request and reads its body within the size cap. At debug level both directions
    /// are logged (target `mcpproxy_oauth::http`), redacted: method, URL, headers, body shape,
    /// status and duration.
    pub async fn send(
        &self,
        endpoint: Endpoint,
        request: RequestBuilder,
    ) -> Result<HttpReply, OAuthError> {
        let request = request.build().map_err(|e| OAuthError::Transport {
            endpoint,
            reason: format!("cannot build the request: {}", innermost_reason(&e)),
        })?;
        let method = request.method().to_string();
        let url = redact::url(request.url().as_str());
        if tracing::enabled!(target: "mcpproxy_oauth::http", tracing::Level::DEBUG) {
            let content_type = request
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let body = request
                .body()
                .and_then(|b| b.as_bytes())
                .map(|b| redact::body(content_type, b))
                .unwrap_or(serde_json::Value::Null);
            tracing::debug!(
                target: "mcpproxy_oauth::http",
                endpoint = %endpoint, method, url,
                request_headers = %headers_json(request.headers()), request_body = %body,
                "oauth request"
            );
        }
        let started = Instant::now();
        let outcome = self.exchange(endpoint, request).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(reply) => {
                let content_type = reply
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                tracing::debug!(
                    target: "mcpproxy_oauth::http",
                    endpoint = %endpoint, method, url, status = reply.status.as_u16(), duration_ms,
                    response_headers = %headers_json(&reply.headers),
                    response_body = %redact::body(content_type, &reply.body),
                    "oauth response"
                )
            }
            Err(e) => tracing::debug!(
                target: "mcpproxy_oauth::http",
                endpoint = %endpoint, method, url, duration_ms, error = %e,
                "oauth request failed"
            ),
        }
        outcome
    }

    async fn exchange(
        &self,
        endpoint: Endpoint,
        request: reqwest::Request,
    ) -> Result<HttpReply, OAuthError> {
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(|e| self.transport_error(endpoint, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if response
            .content_length()
            .is_some_and(|len| len > self.max_body_bytes as u64)
        {
            return Err(self.too_large(endpoint));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(endpoint, e))?
        {
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(self.too_large(endpoint));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpReply {
            status,
            headers,
            body,
        })
    }

    fn too_large(&self, endpoint: Endpoint) -> OAuthError {
        OAuthError::Malformed {
            endpoint,
            reason: format!("response larger than {} bytes", self.max_body_bytes),
        }
    }

    fn transport_error(&self, endpoint: Endpoint, e: reqwest::Error) -> OAuthError {
        if e.is_timeout() {
            return OAuthError::Timeout {
                endpoint,
                after: self.timeout,
            };
        }
        OAuthError::Transport {
            endpoint,
            reason: innermost_reason(&e),
        }
    }

    /// An oauth2 HTTP client for one token-endpoint call, remembering the response's status
    /// and headers (oauth2 keeps neither, and `Retry-After` decides the backoff). With `dpop`,
    /// a proof on the request (RFC 9449 §5) and one retry with the server's nonce after
    /// `use_dpop_nonce` (§8).
    pub fn token_call<'a>(&'a self, dpop: Option<&'a Dpop>) -> TokenCall<'a> {
        TokenCall {
            http: self,
            last_reply: Mutex::new(None),
            dpop,
        }
    }
}

/// Headers as a JSON object, secret values redacted.
pub fn headers_json(headers: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let shown = redact::header_value(name.as_str(), value.to_str().unwrap_or("[binary]"));
        map.insert(name.as_str().to_string(), serde_json::Value::String(shown));
    }
    serde_json::Value::Object(map)
}

/// The innermost cause of a transport error ("connection refused", "connection closed before
/// message completed"), without the URL.
fn innermost_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

pub struct TokenCall<'a> {
    http: &'a OAuthHttp,
    last_reply: Mutex<Option<(StatusCode, HeaderMap)>>,
    dpop: Option<&'a Dpop>,
}

/// Whether a token endpoint answer is RFC 9449 §8's "use this nonce": HTTP 400 with
/// `error: use_dpop_nonce`.
fn is_use_dpop_nonce(reply: &HttpReply) -> bool {
    reply.status == StatusCode::BAD_REQUEST
        && reply.error(Endpoint::Token).oauth_code() == Some("use_dpop_nonce")
}

impl TokenCall<'_> {
    /// Status and `Retry-After` of the response, if one arrived.
    pub fn reply_status(&self) -> Option<(u16, Option<Duration>)> {
        let last = self.last_reply.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .map(|(status, headers)| (status.as_u16(), retry_after(headers)))
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for TokenCall<'_> {
    type Error = OAuthError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, OAuthError>> + Send + Sync + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let url = Url::parse(&request.uri().to_string())
                .map_err(|e| OAuthError::Discovery(format!("invalid token endpoint URL: {e}")))?;
            require_secure_url(&url)?;
            let (parts, body) = request.into_parts();
            let build = || {
                let mut builder = self
                    .http
                    .client
                    .request(parts.method.clone(), url.clone())
                    .headers(parts.headers.clone())
                    .body(body.clone());
                if let Some(dpop) = self.dpop {
                    builder = builder.header(
                        "dpop",
                        dpop.header(parts.method.as_str(), url.as_str(), None),
                    );
                }
                builder
            };
            let mut reply = self.http.send(Endpoint::Token, build()).await?;
            if let Some(dpop) = self.dpop {
                // §8: a nonce on any answer is the one to use next; a refusal asking for one is
                // retried once, with a fresh proof carrying it.
                let fresh_nonce = dpop.remember_nonce(url.as_str(), &reply.headers);
                if fresh_nonce && is_use_dpop_nonce(&reply) {
                    tracing::debug!(
                        target: "mcpproxy_oauth::http",
                        "the token endpoint asked for a DPoP nonce; retrying once with it"
                    );
                    reply = self.http.send(Endpoint::Token, build()).await?;
                    dpop.remember_nonce(url.as_str(), &reply.headers);
                }
            }
            *self.last_reply.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((reply.status, reply.headers.clone()));
            let mut builder = http::Response::builder().status(reply.status);
            if let Some(headers) = builder.headers_mut() {
                *headers = reply.headers;
            }
            builder.body(reply.body).map_err(|e| OAuthError::Malformed {
                endpoint: Endpoint::Token,
                reason: e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "https://as.example/token",
            "http://127.0.0.1:8080/t",
            "http://localhost/t",
            "http://[::1]:9/t",
            "http://127.8.9.1/t",
        ] {
            assert!(require_secure_url(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://as.example/token",
            "http://10.0.0.1/t",
            "ftp://127.0.0.1/t",
            "http://localhost.evil.example/t",
        ] {
            assert!(
                matches!(
                    require_secure_url(&Url::parse(bad).unwrap()),
                    Err(OAuthError::InsecureUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn retry_after_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER), "capped");
        headers.insert(RETRY_AFTER, u64::MAX.to_string().parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER), "clamped");
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_at(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after_at(&headers, now),
            Some(Duration::ZERO),
            "past: now"
        );
        headers.insert(
            RETRY_AFTER,
            "Thu, 22 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after_at(&headers, now),
            Some(MAX_RETRY_AFTER),
            "capped"
        );
    }
}
