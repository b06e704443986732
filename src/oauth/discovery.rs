//! Discovery, in the MCP authorization specification's order: protected resource metadata
//! (RFC 9728) from the challenge's `resource_metadata`, else the path-aware well-known
//! location, else the root; then the authorization server's metadata (RFC 8414 / OIDC) at the
//! locations defined for issuers with and without a path. Servers of the 2025-03-26 revision
//! publish no resource metadata: their authorization server lives at the MCP server's origin,
//! with default endpoints when even its metadata is missing.
//!
//! URL construction and validation are pure functions; `discover` does the fetching.

use url::Url;

use super::challenge::BearerChallenge;
use super::error::{Endpoint, OAuthError};
use super::http::{OAuthHttp, require_secure_url};
pub use super::metadata::{
    AuthorizationServerMetadata, Discovery, MetadataSource, ProtectedResourceMetadata,
};

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Protected resource metadata locations for a server URL without a `resource_metadata` hint:
/// the path-aware one (when the URL has a path), then the root (RFC 9728 §3.1).
pub fn protected_resource_metadata_urls(server_url: &Url) -> Vec<Url> {
    let origin = origin_of(server_url);
    let path = server_url.path().trim_end_matches('/');
    let mut urls = Vec::new();
    if !path.is_empty() {
        urls.push(format!(
            "{origin}/.well-known/oauth-protected-resource{path}"
        ));
    }
    urls.push(format!("{origin}/.well-known/oauth-protected-resource"));
    urls.into_iter()
        .filter_map(|u| Url::parse(&u).ok())
        .collect()
}

/// Authorization server metadata locations for an issuer, in the MCP specification's order:
/// with a path, RFC 8414's path insertion, OIDC's path insertion, then OIDC's path append;
/// without one, RFC 8414 then OIDC.
pub fn authorization_server_metadata_urls(issuer: &Url) -> Vec<Url> {
    let origin = origin_of(issuer);
    let path = issuer.path().trim_end_matches('/');
    let urls = if path.is_empty() {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server"),
            format!("{origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ]
    };
    urls.into_iter()
        .filter_map(|u| Url::parse(&u).ok())
        .collect()
}

/// Whether a protected resource's `resource` identifies this server URL: the same origin and
/// either the same path or a prefix of it ending at a path boundary (RFC 9728 §3.3, MCP's
/// canonical server URI).
pub fn resource_matches(server_url: &Url, resource: &str) -> bool {
    let Ok(resource) = Url::parse(resource) else {
        return false;
    };
    if resource.fragment().is_some() || origin_of(&resource) != origin_of(server_url) {
        return false;
    }
    let resource_path = resource.path().trim_end_matches('/');
    let server_path = server_url.path().trim_end_matches('/');
    resource_path.is_empty()
        || server_path == resource_path
        || server_path
            .strip_prefix(resource_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Issuer identifiers compare exactly, except for the trailing slash URL parsers add to a bare
/// origin.
pub fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Checks fetched authorization server metadata: the issuer it names, PKCE S256 support, and
/// endpoints that are absolute secure URLs.
pub fn validate_authorization_server_metadata(
    metadata: &AuthorizationServerMetadata,
    expected_issuer: &str,
    source: MetadataSource,
) -> Result<(), OAuthError> {
    let issuer_ok = match source {
        MetadataSource::ProtectedResource => same_issuer(&metadata.issuer, expected_issuer),
        // Legacy servers put the issuer where they like on the origin (e.g. `/oauth`).
        _ => Url::parse(&metadata.issuer)
            .ok()
            .zip(Url::parse(expected_issuer).ok())
            .is_some_and(|(found, expected)| origin_of(&found) == origin_of(&expected)),
    };
    if !issuer_ok {
        return Err(OAuthError::IssuerMismatch {
            expected: expected_issuer.into(),
            found: metadata.issuer.clone(),
        });
    }
    let s256 = metadata
        .code_challenge_methods_supported
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m == "S256"));
    if !s256 {
        return Err(OAuthError::Discovery(format!(
            "the authorization server {} does not advertise PKCE S256 \
             (code_challenge_methods_supported); refusing to authorize",
            metadata.issuer
        )));
    }
    let endpoints = [
        Some(&metadata.authorization_endpoint),
        Some(&metadata.token_endpoint),
        metadata.registration_endpoint.as_ref(),
        metadata.revocation_endpoint.as_ref(),
    ];
    for endpoint in endpoints.into_iter().flatten() {
        let url = Url::parse(endpoint).map_err(|_| {
            OAuthError::Discovery(format!(
                "the authorization server metadata has an invalid endpoint URL {endpoint:?}"
            ))
        })?;
        require_secure_url(&url)?;
    }
    Ok(())
}

/// Legacy default endpoints at the MCP server's origin (2025-03-26 §2.3.3).
fn legacy_default_metadata(server_url: &Url) -> AuthorizationServerMetadata {
    let origin = origin_of(server_url);
    AuthorizationServerMetadata {
        issuer: origin.clone(),
        authorization_endpoint: format!("{origin}/authorize"),
        token_endpoint: format!("{origin}/token"),
        registration_endpoint: Some(format!("{origin}/register")),
        revocation_endpoint: None,
        scopes_supported: None,
        code_challenge_methods_supported: Some(vec!["S256".into()]),
        token_endpoint_auth_methods_supported: None,
        authorization_response_iss_parameter_supported: false,
        client_id_metadata_document_supported: false,
        device_authorization_endpoint: None,
        dpop_signing_alg_values_supported: None,
    }
}

/// Fetches the first of `urls` that answers 200; other statuses mean "not here". Transport
/// failures and unusable bodies stop the search: they are errors, not absences.
async fn first_document<T: serde::de::DeserializeOwned>(
    http: &OAuthHttp,
    endpoint: Endpoint,
    urls: &[Url],
) -> Result<Option<(Url, T)>, OAuthError> {
    for url in urls {
        let reply = http.get(endpoint, url).await?;
        if reply.status.is_success() {
            return Ok(Some((url.clone(), reply.json(endpoint)?)));
        }
        if reply.status.is_server_error() || reply.status.as_u16() == 429 {
            return Err(OAuthError::Http {
                endpoint,
                status: reply.status.as_u16(),
                retry_after: reply.retry_after(),
            });
        }
    }
    Ok(None)
}

/// The protected resource metadata of `server_url` (from the challenge's `resource_metadata`
/// hint when there is one), or `None` when the server publishes none.
pub async fn protected_resource_metadata(
    http: &OAuthHttp,
    server_url: &Url,
    challenge: Option<&BearerChallenge>,
) -> Result<Option<ProtectedResourceMetadata>, OAuthError> {
    let prm_urls = match challenge.and_then(|c| c.resource_metadata.as_deref()) {
        Some(hint) => vec![Url::parse(hint).map_err(|_| {
            OAuthError::Discovery(format!(
                "the server's resource_metadata {hint:?} is not a valid URL"
            ))
        })?],
        None => protected_resource_metadata_urls(server_url),
    };
    Ok(
        first_document(http, Endpoint::ProtectedResourceMetadata, &prm_urls)
            .await?
            .map(|(_, metadata): (Url, ProtectedResourceMetadata)| metadata),
    )
}

/// Runs discovery for `server_url`, using the 401 challenge's hints when there was one.
pub async fn discover(
    http: &OAuthHttp,
    server_url: &Url,
    challenge: Option<&BearerChallenge>,
) -> Result<Discovery, OAuthError> {
    let Some(protected) = protected_resource_metadata(http, server_url, challenge).await? else {
        return discover_legacy(http, server_url).await;
    };
    if !resource_matches(server_url, &protected.resource) {
        return Err(OAuthError::ResourceMismatch {
            server_url: server_url.to_string(),
            resource: protected.resource.clone(),
        });
    }
    let issuer = protected.authorization_servers.first().ok_or_else(|| {
        OAuthError::Discovery(format!(
            "the protected resource metadata of {server_url} names no authorization server"
        ))
    })?;
    let issuer_url = Url::parse(issuer).map_err(|_| {
        OAuthError::Discovery(format!(
            "the authorization server {issuer:?} is not a valid URL"
        ))
    })?;
    let metadata_urls = authorization_server_metadata_urls(&issuer_url);
    let (_, metadata): (Url, AuthorizationServerMetadata) =
        first_document(http, Endpoint::AuthorizationServerMetadata, &metadata_urls)
            .await?
            .ok_or_else(|| {
                OAuthError::Discovery(format!(
                    "no authorization server metadata for {issuer} (tried {})",
                    metadata_urls
                        .iter()
                        .map(Url::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
    validate_authorization_server_metadata(&metadata, issuer, MetadataSource::ProtectedResource)?;
    Ok(Discovery {
        resource: protected.resource.clone(),
        protected_resource: Some(protected),
        authorization_server: metadata,
        source: MetadataSource::ProtectedResource,
    })
}

async fn discover_legacy(http: &OAuthHttp, server_url: &Url) -> Result<Discovery, OAuthError> {
    let origin = Url::parse(&origin_of(server_url))
        .map_err(|_| OAuthError::Discovery(format!("{server_url} has no origin")))?;
    let metadata_urls = authorization_server_metadata_urls(&origin);
    let resource = canonical_resource(server_url);
    match first_document::<AuthorizationServerMetadata>(
        http,
        Endpoint::AuthorizationServerMetadata,
        &metadata_urls,
    )
    .await?
    {
        Some((_, metadata)) => {
            validate_authorization_server_metadata(
                &metadata,
                origin.as_str(),
                MetadataSource::LegacyMetadata,
            )?;
            Ok(Discovery {
                resource,
                protected_resource: None,
                authorization_server: metadata,
                source: MetadataSource::LegacyMetadata,
            })
        }
        None => Ok(Discovery {
            resource,
            protected_resource: None,
            authorization_server: legacy_default_metadata(server_url),
            source: MetadataSource::LegacyDefaultEndpoints,
        }),
    }
}

/// The server URL as an RFC 8707 resource: no fragment.
pub fn canonical_resource(server_url: &Url) -> String {
    let mut url = server_url.clone();
    url.set_fragment(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: Vec<Url>) -> Vec<String> {
        list.into_iter().map(String::from).collect()
    }

    #[test]
    fn protected_resource_metadata_locations() {
        let u = |s: &str| urls(protected_resource_metadata_urls(&Url::parse(s).unwrap()));
        assert_eq!(
            u("https://mcp.example/mcp"),
            [
                "https://mcp.example/.well-known/oauth-protected-resource/mcp",
                "https://mcp.example/.well-known/oauth-protected-resource",
            ]
        );
        assert_eq!(
            u("https://mcp.example:8443/a/b/"),
            [
                "https://mcp.example:8443/.well-known/oauth-protected-resource/a/b",
                "https://mcp.example:8443/.well-known/oauth-protected-resource",
            ]
        );
        assert_eq!(
            u("https://mcp.example"),
            ["https://mcp.example/.well-known/oauth-protected-resource"]
        );
        assert_eq!(
            u("https://mcp.example/?q=1"),
            ["https://mcp.example/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn authorization_server_metadata_locations() {
        let u = |s: &str| urls(authorization_server_metadata_urls(&Url::parse(s).unwrap()));
        assert_eq!(
            u("https://as.example"),
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration",
            ]
        );
        assert_eq!(u("https://as.example/"), u("https://as.example"));
        assert_eq!(
            u("https://as.example/tenant1"),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant1",
                "https://as.example/.well-known/openid-configuration/tenant1",
                "https://as.example/tenant1/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            u("http://127.0.0.1:9/realms/x/"),
            [
                "http://127.0.0.1:9/.well-known/oauth-authorization-server/realms/x",
                "http://127.0.0.1:9/.well-known/openid-configuration/realms/x",
                "http://127.0.0.1:9/realms/x/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn resource_matching() {
        let server = Url::parse("https://mcp.example/api/mcp").unwrap();
        for ok in [
            "https://mcp.example/api/mcp",
            "https://mcp.example/api/mcp/",
            "https://mcp.example/api",
            "https://mcp.example",
            "https://mcp.example/",
        ] {
            assert!(resource_matches(&server, ok), "{ok}");
        }
        for bad in [
            "https://mcp.example/ap",
            "https://mcp.example/api/mcp/sub",
            "https://evil.example/api/mcp",
            "http://mcp.example/api/mcp",
            "https://mcp.example:444/api/mcp",
            "https://mcp.example/api/mcp#x",
            "not a url",
        ] {
            assert!(!resource_matches(&server, bad), "{bad}");
        }
    }

    fn metadata(issuer: &str) -> AuthorizationServerMetadata {
        let mut m = legacy_default_metadata(&Url::parse(issuer).unwrap());
        m.issuer = issuer.into();
        m
    }

    #[test]
    fn metadata_validation() {
        let ok = metadata("https://as.example/tenant1");
        assert!(
            validate_authorization_server_metadata(
                &ok,
                "https://as.example/tenant1",
                MetadataSource::ProtectedResource
            )
            .is_ok()
        );
        assert!(
            validate_authorization_server_metadata(
                &metadata("https://as.example"),
                "https://as.example/",
                MetadataSource::ProtectedResource
            )
            .is_ok()
        );
        assert!(matches!(
            validate_authorization_server_metadata(
                &ok,
                "https://as.example/tenant2",
                MetadataSource::ProtectedResource
            ),
            Err(OAuthError::IssuerMismatch { .. })
        ));
        assert!(
            validate_authorization_server_metadata(
                &ok,
                "https://as.example",
                MetadataSource::LegacyMetadata
            )
            .is_ok(),
            "legacy: same origin is enough"
        );
        assert!(matches!(
            validate_authorization_server_metadata(
                &metadata("https://evil.example/oauth"),
                "https://as.example",
                MetadataSource::LegacyMetadata
            ),
            Err(OAuthError::IssuerMismatch { .. })
        ));
        // Without S256 among the PKCE methods (only `plain`, or none named), it is refused.
        for methods in [Some(vec!["plain".to_string()]), None] {
            let mut no_pkce = ok.clone();
            no_pkce.code_challenge_methods_supported = methods.clone();
            assert!(
                matches!(
                    validate_authorization_server_metadata(
                        &no_pkce,
                        &ok.issuer,
                        MetadataSource::ProtectedResource
                    ),
                    Err(OAuthError::Discovery(_))
                ),
                "PKCE methods {methods:?}"
            );
        }
        let mut insecure = ok.clone();
        insecure.token_endpoint = "http://as.example/token".into();
        assert!(matches!(
            validate_authorization_server_metadata(
                &insecure,
                &ok.issuer,
                MetadataSource::ProtectedResource
            ),
            Err(OAuthError::InsecureUrl { .. })
        ));
    }

    #[test]
    fn legacy_defaults_live_at_the_origin() {
        let m = legacy_default_metadata(&Url::parse("http://localhost:3000/mcp").unwrap());
        assert_eq!(m.authorization_endpoint, "http://localhost:3000/authorize");
        assert_eq!(m.token_endpoint, "http://localhost:3000/token");
        assert_eq!(
            m.registration_endpoint.as_deref(),
            Some("http://localhost:3000/register")
        );
    }
}
