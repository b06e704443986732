//! Who the client is at the authorization server, in this order: a configured client (ID and
//! optional secret), a client ID metadata document URL when the server supports them and one is
//! configured, RFC 7591 dynamic registration, else a clear error asking for a client ID.

use std::fmt;

use serde_json::{Map, Value, json};
use url::Url;

use super::error::{Endpoint, OAuthError};
use super::http::OAuthHttp;
use super::metadata::AuthorizationServerMetadata;

/// The device authorization grant (RFC 8628 §3.4): what a device client registers for, and
/// the grant type of the token requests that poll.
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl TokenAuthMethod {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSource {
    Configured,
    MetadataDocument,
    Registered,
}

/// A client identity ready for authorization and token requests.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Option<oauth2::ClientSecret>,
    pub auth_method: TokenAuthMethod,
    pub source: ClientSource,
    /// The registration response without its secret, kept for reuse (RFC 7591 §3.2.1).
    pub registration: Option<Map<String, Value>>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("has_client_secret", &self.client_secret.is_some())
            .field("auth_method", &self.auth_method)
            .field("source", &self.source)
            .finish()
    }
}

/// What the user configured about the client. The secret is an `oauth2::ClientSecret`, whose
/// `Debug` is redacted and which has no `Display`, from the config file or command line on.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    pub client_id: Option<String>,
    pub client_secret: Option<oauth2::ClientSecret>,
    /// A client ID metadata document URL, used as the client ID where supported.
    pub client_metadata_url: Option<String>,
    pub client_name: Option<String>,
}

/// Picks the token endpoint authentication method: the one registered, else the best the server
/// supports for the credentials we hold (RFC 8414's default is client_secret_basic).
pub fn choose_auth_method(
    registered: Option<&str>,
    has_secret: bool,
    supported: Option<&[String]>,
) -> TokenAuthMethod {
    if let Some(method) = registered.and_then(TokenAuthMethod::parse)
        && (has_secret || method == TokenAuthMethod::None)
    {
        return method;
    }
    if !has_secret {
        return TokenAuthMethod::None;
    }
    let Some(supported) = supported else {
        return TokenAuthMethod::ClientSecretBasic;
    };
    [
        TokenAuthMethod::ClientSecretBasic,
        TokenAuthMethod::ClientSecretPost,
        TokenAuthMethod::None,
    ]
    .into_iter()
    .find(|m| supported.iter().any(|s| s == m.as_str()))
    .unwrap_or(TokenAuthMethod::ClientSecretBasic)
}

/// The method to ask for when registering: a public client where the server allows it
/// (RFC 8252 §8.4: native apps cannot keep secrets), else the first secret-based method.
fn method_to_register(supported: Option<&[String]>) -> TokenAuthMethod {
    match supported {
        None => TokenAuthMethod::None,
        Some(list) if list.iter().any(|m| m == "none") => TokenAuthMethod::None,
        Some(list) => [
            TokenAuthMethod::ClientSecretBasic,
            TokenAuthMethod::ClientSecretPost,
        ]
        .into_iter()
        .find(|m| list.iter().any(|s| s == m.as_str()))
        .unwrap_or(TokenAuthMethod::None),
    }
}

/// Resolves the client identity for one authorization server.
pub async fn obtain_client(
    http: &OAuthHttp,
    config: &ClientConfig,
    metadata: &AuthorizationServerMetadata,
    redirect_uri: &str,
    scope: Option<&str>,
) -> Result<ClientCredentials, OAuthError> {
    obtain(http, config, metadata, Some(redirect_uri), scope).await
}

/// Resolves the client identity for a device login (RFC 8628): as [`obtain_client`], but a
/// registration asks for the device grant and names no redirect URI.
pub async fn obtain_device_client(
    http: &OAuthHttp,
    config: &ClientConfig,
    metadata: &AuthorizationServerMetadata,
    scope: Option<&str>,
) -> Result<ClientCredentials, OAuthError> {
    obtain(http, config, metadata, None, scope).await
}

async fn obtain(
    http: &OAuthHttp,
    config: &ClientConfig,
    metadata: &AuthorizationServerMetadata,
    redirect_uri: Option<&str>,
    scope: Option<&str>,
) -> Result<ClientCredentials, OAuthError> {
    let supported = metadata.token_endpoint_auth_methods_supported.as_deref();
    if let Some(client_id) = &config.client_id {
        let secret = config.client_secret.clone();
        crate::telemetry::secrets::register_all([secret.as_ref().map(|s| s.secret().as_str())]);
        return Ok(ClientCredentials {
            client_id: client_id.clone(),
            auth_method: choose_auth_method(None, secret.is_some(), supported),
            client_secret: secret,
            source: ClientSource::Configured,
            registration: None,
        });
    }
    if metadata.client_id_metadata_document_supported
        && let Some(url) = &config.client_metadata_url
    {
        return Ok(ClientCredentials {
            client_id: url.clone(),
            client_secret: None,
            auth_method: TokenAuthMethod::None,
            source: ClientSource::MetadataDocument,
            registration: None,
        });
    }
    let Some(registration_endpoint) = &metadata.registration_endpoint else {
        return Err(OAuthError::NoClientIdentity {
            issuer: metadata.issuer.clone(),
        });
    };
    register(
        http,
        config,
        registration_endpoint,
        method_to_register(supported),
        redirect_uri,
        scope,
        supported,
    )
    .await
}

async fn register(
    http: &OAuthHttp,
    config: &ClientConfig,
    registration_endpoint: &str,
    method: TokenAuthMethod,
    redirect_uri: Option<&str>,
    scope: Option<&str>,
    supported: Option<&[String]>,
) -> Result<ClientCredentials, OAuthError> {
    let url = Url::parse(registration_endpoint).map_err(|_| {
        OAuthError::Discovery(format!(
            "invalid registration endpoint {registration_endpoint:?}"
        ))
    })?;
    // A loopback-redirect CLI is a native application (OpenID Connect Registration
    // `application_type`, required by the MCP 2026-07-28 registration rules, SEP-837).
    let mut request = json!({
        "application_type": "native",
        "client_name": config.client_name.as_deref().unwrap_or("mcpproxy-oauth"),
        "redirect_uris": redirect_uri.into_iter().collect::<Vec<_>>(),
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method.as_str(),
    });
    if redirect_uri.is_none() {
        // A device login (RFC 8628): no redirect, no authorization endpoint response.
        request["grant_types"] = json!([DEVICE_CODE_GRANT_TYPE, "refresh_token"]);
        request["response_types"] = json!([]);
    }
    if let Some(scope) = scope {
        request["scope"] = scope.into();
    }
    let reply = http
        .post_json(Endpoint::Registration, &url, &request)
        .await?;
    if !reply.status.is_success() {
        return Err(reply.error(Endpoint::Registration));
    }
    let mut response: Map<String, Value> = reply.json(Endpoint::Registration)?;
    let client_id = response
        .get("client_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| OAuthError::Malformed {
            endpoint: Endpoint::Registration,
            reason: "no client_id in the registration response".into(),
        })?
        .to_string();
    let secret = response
        .remove("client_secret")
        .and_then(|v| v.as_str().map(String::from));
    // RFC 7592's management token is never used here: dropped, so it is never stored.
    let management = response.remove("registration_access_token");
    crate::telemetry::secrets::register_all([
        secret.as_deref(),
        management.as_ref().and_then(Value::as_str),
    ]);
    let registered_method = response
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str);
    Ok(ClientCredentials {
        client_id,
        auth_method: choose_auth_method(registered_method, secret.is_some(), supported),
        client_secret: secret.map(oauth2::ClientSecret::new),
        source: ClientSource::Registered,
        registration: Some(response),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenAuthMethod::{ClientSecretBasic, ClientSecretPost};

    fn list(methods: &[&str]) -> Vec<String> {
        methods.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn auth_method_selection() {
        assert_eq!(
            choose_auth_method(Some("client_secret_post"), true, None),
            ClientSecretPost,
            "registered wins"
        );
        assert_eq!(
            choose_auth_method(Some("none"), true, Some(&list(&["client_secret_basic"]))),
            TokenAuthMethod::None
        );
        assert_eq!(
            choose_auth_method(Some("client_secret_basic"), false, None),
            TokenAuthMethod::None,
            "no secret, no secret method"
        );
        assert_eq!(
            choose_auth_method(None, true, Some(&list(&["none"]))),
            TokenAuthMethod::None,
            "the server only takes public clients"
        );
        assert_eq!(
            choose_auth_method(
                None,
                true,
                Some(&list(&["client_secret_post", "client_secret_basic"]))
            ),
            ClientSecretBasic
        );
        assert_eq!(
            choose_auth_method(None, true, Some(&list(&["client_secret_post"]))),
            ClientSecretPost
        );
        assert_eq!(
            choose_auth_method(None, true, None),
            ClientSecretBasic,
            "RFC 8414 default"
        );
        assert_eq!(
            choose_auth_method(Some("private_key_jwt"), false, None),
            TokenAuthMethod::None
        );
    }

    #[test]
    fn registration_asks_for_a_public_client_where_allowed() {
        assert_eq!(method_to_register(None), TokenAuthMethod::None);
        assert_eq!(
            method_to_register(Some(&list(&["client_secret_basic", "none"]))),
            TokenAuthMethod::None
        );
        assert_eq!(
            method_to_register(Some(&list(&["client_secret_post"]))),
            ClientSecretPost
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = ClientCredentials {
            client_id: "id".into(),
            client_secret: Some(oauth2::ClientSecret::new("s3cr3t-value".into())),
            auth_method: ClientSecretBasic,
            source: ClientSource::Registered,
            registration: None,
        };
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }
}
