//! What discovery learns about one MCP server: the protected resource's metadata (RFC 9728),
//! its authorization server's (RFC 8414 / OIDC), and how they were found. Plain data, read by
//! everything that acts on a discovery (client identity, token requests, the DPoP policy);
//! `discovery` does the finding.

use serde::{Deserialize, Serialize};

/// RFC 9728 protected resource metadata (the fields we use; others are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// RFC 9728 §2 / RFC 9449: the resource takes only DPoP-bound tokens.
    #[serde(default)]
    pub dpop_bound_access_tokens_required: bool,
}

/// RFC 8414 authorization server metadata (the fields we use; others are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizationServerMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    /// RFC 8628 §4: where a device login starts, when the server offers one.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// RFC 9449 §5.1: the proof algorithms the token endpoint accepts (`None`: no DPoP said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

/// Everything discovery learned about one MCP server.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The RFC 8707 `resource` to send on authorization and token requests.
    pub resource: String,
    pub protected_resource: Option<ProtectedResourceMetadata>,
    pub authorization_server: AuthorizationServerMetadata,
    /// How the authorization server was found.
    pub source: MetadataSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataSource {
    /// Through protected resource metadata (the current specification).
    ProtectedResource,
    /// 2025-03-26: authorization server metadata at the MCP server's origin.
    LegacyMetadata,
    /// 2025-03-26: no metadata at all; `/authorize`, `/token`, `/register` at the origin.
    LegacyDefaultEndpoints,
}

impl Discovery {
    /// The scopes a resource advertises, for scope selection.
    pub fn resource_scopes(&self) -> Option<&[String]> {
        self.protected_resource
            .as_ref()?
            .scopes_supported
            .as_deref()
    }
}
