//! `auth doctor` and `GET /api/v1/servers/{name}/diagnose`: walks what a login needs, step by
//! step, without a browser and without side effects, and names the first failing step with the
//! HTTP status, the error and what to do.
//!
//! 1. the MCP endpoint answers an unauthenticated `initialize` with 401 and a Bearer challenge;
//! 2. discovery finds the authorization server (protected resource + authorization server
//!    metadata, or the 2025-03-26 fallbacks);
//! 3. a client identity is possible (configured, client ID metadata document, or dynamic
//!    registration offered; registration itself is not run: it would create a client);
//! 4. the token endpoint answers OAuth: a refresh with a made-up token must get an OAuth error
//!    body (400/401 `invalid_grant`-like), not a 5xx, a timeout or HTML.
//!
//! No secret is sent (the probe's token is made up, no client secret is used) or shown.

use std::time::Duration;

use serde::Serialize;
use url::Url;

use crate::config::UpstreamConfig;
use crate::mcp::{McpClient, McpError};
use crate::oauth::discovery::discover;
use crate::oauth::error::{Endpoint, OAuthError};
use crate::oauth::http::OAuthHttp;
use crate::oauth::metadata::MetadataSource;

/// The refresh token the token endpoint probe presents: obviously not a real one.
const PROBE_TOKEN: &str = "mcpproxy-oauth-diagnose-probe-not-a-token";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub url: Option<String>,
    pub status: Option<u16>,
    pub detail: String,
    /// What to do, on a failed step.
    pub action: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Diagnosis {
    pub server: String,
    pub ok: bool,
    /// The first failing step's name.
    pub failed_step: Option<&'static str>,
    pub steps: Vec<Step>,
}

fn status_of(e: &OAuthError) -> Option<u16> {
    match e {
        OAuthError::Server { status, .. } => *status,
        OAuthError::Http { status, .. } => Some(*status),
        _ => None,
    }
}

fn step(
    name: &'static str,
    url: Option<&str>,
    result: Result<String, (Option<u16>, String, String)>,
) -> Step {
    match result {
        Ok(detail) => Step {
            step: name,
            ok: true,
            url: url.map(String::from),
            status: None,
            detail,
            action: None,
        },
        Err((status, detail, action)) => Step {
            step: name,
            ok: false,
            url: url.map(String::from),
            status,
            detail,
            action: Some(action),
        },
    }
}

/// Runs the steps in order, stopping at the first that fails (later ones depend on it).
pub async fn diagnose(http: &OAuthHttp, server: &UpstreamConfig, timeout: Duration) -> Diagnosis {
    let mut steps = Vec::new();
    let done = |steps: Vec<Step>| Diagnosis {
        server: server.name.clone(),
        ok: steps.iter().all(|s| s.ok),
        failed_step: steps.iter().find(|s| !s.ok).map(|s| s.step),
        steps,
    };

    // 1. The MCP endpoint.
    let mut mcp = McpClient::new(server.url.clone(), timeout);
    let challenge = match mcp.initialize(None).await {
        Err(McpError::Unauthorized(challenge)) => {
            steps.push(step(
                "mcp endpoint",
                Some(server.url.as_str()),
                Ok(format!(
                    "answers 401 with a Bearer challenge{}",
                    challenge
                        .resource_metadata
                        .as_deref()
                        .map(|r| format!(" naming resource metadata {r}"))
                        .unwrap_or_default()
                )),
            ));
            Some(challenge)
        }
        Ok(_) => {
            steps.push(step(
                "mcp endpoint",
                Some(server.url.as_str()),
                Ok("answers without authorization: no OAuth needed right now".into()),
            ));
            None
        }
        Err(e) => {
            steps.push(step(
                "mcp endpoint",
                Some(server.url.as_str()),
                Err((
                    None,
                    e.to_string(),
                    "check the server's url in the config and that the server runs".into(),
                )),
            ));
            return done(steps);
        }
    };

    // 2. Discovery.
    let discovery = match discover(http, &server.url, challenge.as_ref()).await {
        Ok(d) => {
            let via = match d.source {
                MetadataSource::ProtectedResource => "protected resource metadata",
                MetadataSource::LegacyMetadata => "2025-03-26 metadata at the server's origin",
                MetadataSource::LegacyDefaultEndpoints => "2025-03-26 default endpoints",
            };
            steps.push(step(
                "discovery",
                Some(&d.authorization_server.issuer),
                Ok(format!(
                    "authorization server {} found through {via}; resource {}",
                    d.authorization_server.issuer, d.resource
                )),
            ));
            d
        }
        Err(e) => {
            let action = match &e {
                OAuthError::IssuerMismatch { .. } | OAuthError::ResourceMismatch { .. } => {
                    "the server's metadata contradicts itself: report it to the server's operator"
                }
                _ => {
                    "the server publishes no usable OAuth metadata: check the url, or report it to \
                     the server's operator"
                }
            };
            steps.push(step(
                "discovery",
                None,
                Err((status_of(&e), e.to_string(), action.into())),
            ));
            return done(steps);
        }
    };
    let metadata = &discovery.authorization_server;

    // 3. Client identity.
    let identity = if server.client.client_id.is_some() {
        Ok("a client_id is configured".to_string())
    } else if server.client.client_metadata_url.is_some()
        && metadata.client_id_metadata_document_supported
    {
        Ok("the configured client ID metadata document is supported".to_string())
    } else if let Some(registration) = &metadata.registration_endpoint {
        Ok(format!(
            "dynamic registration is offered at {registration} (not run: it would create a client)"
        ))
    } else {
        Err((
            None,
            "the authorization server offers no dynamic registration and no client_id is configured".to_string(),
            "register a client with the provider and set oauth.client_id (and client_secret) in the config".to_string(),
        ))
    };
    let failed = identity.is_err();
    steps.push(step(
        "client identity",
        metadata.registration_endpoint.as_deref(),
        identity,
    ));
    if failed {
        return done(steps);
    }

    // 4. The token endpoint answers OAuth to a made-up refresh token.
    let token_url = metadata.token_endpoint.clone();
    let probe = async {
        let url = Url::parse(&token_url).map_err(|_| {
            (
                None,
                format!("the token endpoint {token_url:?} is not a URL"),
                "report it to the server's operator".to_string(),
            )
        })?;
        let client_id = server
            .client
            .client_id
            .clone()
            .unwrap_or_else(|| "mcpproxy-oauth-diagnose".into());
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", PROBE_TOKEN),
            ("client_id", client_id.as_str()),
            ("resource", discovery.resource.as_str()),
        ];
        let reply = http
            .send(
                Endpoint::Token,
                http.client()
                    .post(url)
                    .form(&form)
                    .header("accept", "application/json"),
            )
            .await
            .map_err(|e| {
                (
                    status_of(&e),
                    e.to_string(),
                    "the token endpoint is unreachable or too slow: retry later, or report it to \
                     the server's operator"
                        .to_string(),
                )
            })?;
        let status = reply.status.as_u16();
        let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from));
        match (status, code) {
            (400 | 401, Some(code)) => Ok(format!(
                "answers OAuth: {code} (HTTP {status}) to a made-up refresh token, as it should"
            )),
            (s, _) if s >= 500 => Err((
                Some(s),
                format!("the token endpoint answered HTTP {s}"),
                "the authorization server is failing: retry later, or report it to the server's \
                 operator"
                    .to_string(),
            )),
            (s, code) => {
                let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                Err((
                    Some(s),
                    format!("the token endpoint answered HTTP {s}{code} instead of an OAuth error"),
                    "the token endpoint does not speak OAuth 2: check the server's metadata"
                        .to_string(),
                ))
            }
        }
    };
    steps.push(step(
        "token endpoint",
        Some(&metadata.token_endpoint),
        probe.await,
    ));
    done(steps)
}
