//! One request to one upstream server, with its token: the gateway's handler and the stdio
//! bridge both send through [`Upstream::send`].
//!
//! - The token comes from the server's lock-free snapshot (`ServerTokens`); only when it is not
//!   usable is the server's actor asked, for at most `token_wait`.
//! - A DPoP-bound token gets a fresh proof per request; every answer's `DPoP-Nonce` is
//!   remembered, and a 401 `use_dpop_nonce` that brought one is sent again once.
//! - A 401 is reported to the actor (`report_unauthorized`: one refresh however many requests
//!   report the same token) and the request is sent once more with the new token. A 403
//!   `insufficient_scope` goes to `report_forbidden` (the step-up) and is sent once more with
//!   what it brings; a 403 that more scope would not cure is relayed (without its challenge).
//! - No usable token: the request goes without one (a server may answer `initialize`
//!   anonymously); if the upstream then asks for a token, the client gets [`Unavailable`]
//!   (503), never the 401.
//! - A server without `oauth` in the config is relayed unchanged, its 401s included.

use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use tokio::time::timeout;
use url::Url;

use super::limits::{GatewayLimits, Gauge};
use super::metrics::ServerMetrics;
use super::unavailable::Unavailable;
use crate::auth_links::AuthLinks;
use crate::mcp::BearerChallenge;
use crate::store::db::now_ms;
use crate::supervisor::{ServerTokens, SharedAccessToken, SupervisorError, SupervisorHandle};

/// The client for every upstream: no redirects followed (a 3xx is relayed), bounded connects,
/// no total timeout (an SSE answer may last; the gateway bounds each wait itself), kept-alive
/// connections. Not `OAuthHttp`: its whole-request timeout and body cap would cut streams.
pub fn http_client(limits: &GatewayLimits) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.upstream_timeout.min(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("a reqwest client with these settings always builds")
}

/// How the gateway reaches one server.
pub struct Upstream {
    pub name: String,
    url: Url,
    oauth: Option<OAuth>,
    /// Headers the config gives a server without `oauth` (its own static credentials).
    static_headers: HeaderMap,
    client: reqwest::Client,
    pub limits: GatewayLimits,
    pub metrics: ServerMetrics,
    pub in_flight: Gauge,
    pub sse_streams: Gauge,
}

/// A server the daemon keeps authorized.
struct OAuth {
    tokens: ServerTokens,
    handle: SupervisorHandle,
    links: Option<AuthLinks>,
}

/// A request as it goes upstream (its headers already filtered).
pub(crate) struct Outgoing {
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The upstream's answer, with what it took.
pub(crate) struct Answer {
    pub response: reqwest::Response,
    /// The flow the request waited for or caused (a refresh after a 401), if any.
    pub correlation_id: Option<String>,
    /// Times the request was sent again (a new token, a DPoP nonce).
    pub retries: u8,
}

/// Why there is no answer to relay.
#[derive(Debug)]
pub(crate) enum Failed {
    /// No usable token, and the upstream wants one: 503.
    Unavailable(Unavailable),
    /// No answer began within `upstream_timeout`: 504.
    Timeout,
    /// The connection failed: 502.
    Transport(String),
}

impl Upstream {
    /// A server the daemon keeps authorized (`tokens` from `SupervisorHandle::server_tokens`).
    #[allow(clippy::too_many_arguments)]
    pub fn with_oauth(
        name: &str,
        url: Url,
        handle: SupervisorHandle,
        tokens: ServerTokens,
        links: Option<AuthLinks>,
        client: reqwest::Client,
        limits: GatewayLimits,
        metrics: ServerMetrics,
    ) -> Self {
        let mut upstream = Self::passthrough(name, url, HeaderMap::new(), client, limits, metrics);
        upstream.oauth = Some(OAuth {
            tokens,
            handle,
            links,
        });
        upstream
    }

    /// A server without `oauth`: relayed unchanged, with the config's headers.
    pub fn passthrough(
        name: &str,
        url: Url,
        static_headers: HeaderMap,
        client: reqwest::Client,
        limits: GatewayLimits,
        metrics: ServerMetrics,
    ) -> Self {
        Upstream {
            name: name.to_string(),
            url,
            oauth: None,
            static_headers,
            client,
            in_flight: Gauge::new(limits.max_in_flight),
            sse_streams: Gauge::new(limits.max_sse_streams),
            limits,
            metrics,
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn has_oauth(&self) -> bool {
        self.oauth.is_some()
    }

    /// Sends `out`, with the server's token where it has `oauth`; see the module doc.
    pub(crate) async fn send(&self, out: &Outgoing) -> Result<Answer, Failed> {
        let Some(oauth) = &self.oauth else {
            let response = self.exchange(out, None).await?;
            return Ok(Answer {
                response,
                correlation_id: None,
                retries: 0,
            });
        };
        let mut correlation_id = None;
        let (mut token, missing) = match self.token(oauth).await {
            Ok((token, flow)) => {
                correlation_id = flow;
                (Some(token), None)
            }
            Err(unavailable) => (None, Some(unavailable)),
        };
        let (mut retries, mut nonce_retried, mut token_retried) = (0u8, false, false);
        loop {
            let response = self.exchange(out, token.as_ref()).await?;
            let status = response.status();
            let new_nonce = token
                .as_ref()
                .is_some_and(|t| t.remember_dpop_nonce(self.url.as_str(), response.headers()));
            if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
                return Ok(Answer {
                    response,
                    correlation_id,
                    retries,
                });
            }
            let Some(current) = token.clone() else {
                // Sent without a token because none was usable; the server wants one.
                return Err(Failed::Unavailable(missing.unwrap_or_else(|| {
                    Unavailable::still_waiting(self.login_link(oauth))
                })));
            };
            let challenge = BearerChallenge::from_headers(
                response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let asks_nonce = challenge
                .as_ref()
                .and_then(|c| c.error.as_deref())
                .is_some_and(|e| e == "use_dpop_nonce");
            if status == StatusCode::UNAUTHORIZED && current.is_dpop() && asks_nonce && new_nonce {
                if nonce_retried {
                    return Err(Failed::Unavailable(Unavailable::refused_again(
                        correlation_id,
                    )));
                }
                nonce_retried = true;
                retries += 1;
                self.metrics.retried("dpop_nonce");
                continue;
            }
            let insufficient_scope = challenge
                .as_ref()
                .is_some_and(BearerChallenge::is_insufficient_scope);
            if status == StatusCode::FORBIDDEN && !insufficient_scope {
                // More scope would not help: the server's own refusal, relayed.
                return Ok(Answer {
                    response,
                    correlation_id,
                    retries,
                });
            }
            if token_retried {
                return Err(Failed::Unavailable(Unavailable::refused_again(
                    correlation_id,
                )));
            }
            token_retried = true;
            // A 403 is kept: if more scope cannot help, it is the answer.
            let refusal = (status == StatusCode::FORBIDDEN).then_some(response);
            let report = async {
                if status == StatusCode::UNAUTHORIZED {
                    oauth
                        .handle
                        .report_unauthorized(&self.name, current.secret(), challenge)
                        .await
                } else {
                    let challenge = challenge.unwrap_or_default();
                    oauth
                        .handle
                        .report_forbidden(&self.name, current.secret(), challenge)
                        .await
                }
            };
            match timeout(self.limits.token_wait, report).await {
                Ok(Ok(grant)) => {
                    correlation_id = grant.flow_id.clone().or(correlation_id);
                    token = Some(grant.into());
                    retries += 1;
                    self.metrics.retried(if status == StatusCode::UNAUTHORIZED {
                        "unauthorized"
                    } else {
                        "insufficient_scope"
                    });
                }
                Ok(Err(SupervisorError::Upstream(e)))
                    if matches!(e.failure, crate::upstream::state::Failure::Forbidden { .. })
                        && refusal.is_some() =>
                {
                    // A demand already granted: a login would bring the same token. The
                    // server's own 403 is the answer.
                    return Ok(Answer {
                        response: refusal.expect("checked"),
                        correlation_id,
                        retries,
                    });
                }
                Ok(Err(e)) => {
                    return Err(Failed::Unavailable(Unavailable::from_error(&e, now_ms())));
                }
                Err(_) => {
                    return Err(Failed::Unavailable(Unavailable::still_waiting(
                        self.login_link(oauth),
                    )));
                }
            }
        }
    }

    /// A usable token: the snapshot's, else the actor's within `token_wait`. The flow's
    /// correlation ID comes along when one ran for it.
    async fn token(
        &self,
        oauth: &OAuth,
    ) -> Result<(SharedAccessToken, Option<String>), Unavailable> {
        if let Some(token) = oauth.tokens.cached_access_token() {
            return Ok((token, None));
        }
        match timeout(self.limits.token_wait, oauth.handle.reconnect(&self.name)).await {
            Ok(Ok(grant)) => {
                let flow = grant.flow_id.clone();
                Ok((grant.into(), flow))
            }
            Ok(Err(e)) => Err(Unavailable::from_error(&e, now_ms())),
            Err(_) => Err(Unavailable::still_waiting(self.login_link(oauth))),
        }
    }

    /// The authorization URL of a login waiting for a person, where the daemon knows it.
    fn login_link(&self, oauth: &OAuth) -> Option<String> {
        oauth
            .links
            .as_ref()
            .and_then(|links| links.get(&self.name))
            .map(|link| link.url.to_string())
    }

    /// One exchange: until the answer's headers, within `upstream_timeout`.
    async fn exchange(
        &self,
        out: &Outgoing,
        token: Option<&SharedAccessToken>,
    ) -> Result<reqwest::Response, Failed> {
        let mut headers = out.headers.clone();
        for (name, value) in &self.static_headers {
            headers.insert(name, value.clone());
        }
        if let Some(token) = token {
            if let Ok(mut value) = HeaderValue::from_str(&token.authorization()) {
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            if let Some(proof) = token.dpop_proof(out.method.as_str(), self.url.as_str())
                && let Ok(mut value) = HeaderValue::from_str(&proof)
            {
                value.set_sensitive(true);
                headers.insert("dpop", value);
            }
        }
        let mut request = self
            .client
            .request(out.method.clone(), self.url.clone())
            .headers(headers);
        if !out.body.is_empty() {
            request = request.body(out.body.clone());
        }
        let started = Instant::now();
        match timeout(self.limits.upstream_timeout, request.send()).await {
            Err(_) => {
                self.metrics.refused("upstream_timeout");
                Err(Failed::Timeout)
            }
            Ok(Err(e)) => Err(Failed::Transport(transport_reason(&e))),
            Ok(Ok(response)) => {
                self.metrics
                    .upstream_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(response)
            }
        }
    }
}

/// Why a connection failed, in words that hold no URL (its query could hold a credential).
fn transport_reason(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let what = if e.is_connect() {
        "cannot connect to the server"
    } else if e.is_timeout() {
        "the server did not answer in time"
    } else {
        "the exchange with the server failed"
    };
    crate::telemetry::secrets::scrub(&format!("{what}: {cause}")).into_owned()
}
