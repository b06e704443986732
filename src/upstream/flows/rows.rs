//! The stored rows a flow reads and writes, mapped to and from the protocol engine's values:
//! a token set becomes a `StoredToken` (and its machine facts), a client identity a
//! `StoredClient`, and back. The store's vocabulary (`source` as text) is converted here, at
//! its boundary, exhaustively.

use std::time::SystemTime;

use crate::config::UpstreamConfig;
use crate::oauth::client_identity::{ClientCredentials, ClientSource, TokenAuthMethod};
use crate::oauth::discovery::Discovery;
use crate::oauth::dpop::{BadKey, Dpop, DpopKey};
use crate::oauth::token::{TokenEndpoint, TokenSet};
use crate::store::{Secret, StoredClient, StoredDpopKey, StoredToken};
use crate::upstream::state::{Millis, TokenFacts, TokenId};

/// The facts the state machine needs about a stored token.
pub fn facts(token: &StoredToken) -> TokenFacts {
    TokenFacts {
        id: TokenId::of_secret(&token.access_token),
        obtained_at: token.obtained_at,
        expires_at: token.expires_at,
        has_refresh_token: token.refresh_token.is_some(),
        refused: false,
    }
}

/// A stored token's access token as handed to a caller, who sends it in its requests.
pub fn handed_out(token: &StoredToken) -> oauth2::AccessToken {
    oauth2::AccessToken::new(token.access_token.expose().to_string())
}

fn unix_ms(t: SystemTime) -> Millis {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// `set` as obtained at `now` on the daemon's clock: its expiry keeps its lifetime. (A login's
/// token endpoint call reads the system clock; a daemon on another clock counts from its own.)
pub fn rebased(mut set: TokenSet, now: SystemTime) -> TokenSet {
    set.expires_at =
        set.expires_at.map(
            |expires_at| match expires_at.duration_since(set.obtained_at) {
                Ok(lifetime) => now + lifetime,
                Err(expired) => now - expired.duration(),
            },
        );
    set.obtained_at = now;
    set
}

/// What a token set is stored as.
pub struct TokenRow<'a> {
    pub config: &'a UpstreamConfig,
    /// The resource the token is for (RFC 8707).
    pub resource: &'a str,
    pub issuer: Option<String>,
    pub flow_id: &'a str,
    /// The key the token request was proven with.
    pub dpop: Option<&'a Dpop>,
}

impl TokenRow<'_> {
    pub fn of(&self, set: &TokenSet) -> StoredToken {
        let config = self.config;
        StoredToken {
            server_key: config.server_key.clone(),
            server_name: config.name.clone(),
            server_url: config.url.to_string(),
            resource: Some(self.resource.to_string()),
            issuer: self.issuer.clone(),
            access_token: Secret::new(set.access_token.secret().as_str()),
            refresh_token: set
                .refresh_token
                .as_ref()
                .map(|r| Secret::new(r.secret().as_str())),
            token_type: set.token_type.clone(),
            scope: set.scope.clone(),
            expires_at: set.expires_at.map(unix_ms),
            obtained_at: unix_ms(set.obtained_at),
            flow_id: Some(self.flow_id.to_string()),
            // A server that bound the tokens to the key refuses a refresh without it, and a
            // resource refuses the access token.
            dpop: self.dpop.map(|d| StoredDpopKey {
                private_key: d.key().encoded_secret().into(),
                jkt: d.key().thumbprint().to_string(),
            }),
        }
    }
}

/// The DPoP state a stored token is used with: `known` (the actor's, with the nonces it has
/// seen) when it holds the token's key, else one rebuilt from the stored key. `None` for a
/// token without a key.
pub fn dpop_binding(token: &StoredToken, known: Option<&Dpop>) -> Result<Option<Dpop>, BadKey> {
    let Some(stored) = &token.dpop else {
        return Ok(None);
    };
    if let Some(known) = known.filter(|d| d.key().thumbprint() == stored.jkt) {
        return Ok(Some(known.clone()));
    }
    let key = DpopKey::from_encoded_secret(stored.private_key.expose(), &stored.jkt)?;
    Ok(Some(Dpop::new(key)))
}

/// A client source as the store writes it.
fn source_text(source: ClientSource) -> &'static str {
    match source {
        ClientSource::Configured => "configured",
        ClientSource::MetadataDocument => "metadata_document",
        ClientSource::Registered => "registered",
    }
}

/// A client source as the store holds it. Rows written before sources were recorded, and
/// any text this build does not know, are registered clients: the one kind whose refusal
/// makes a new registration worth trying.
fn source_of(stored: &str) -> ClientSource {
    [
        ClientSource::Configured,
        ClientSource::MetadataDocument,
        ClientSource::Registered,
    ]
    .into_iter()
    .find(|s| source_text(*s) == stored)
    .unwrap_or(ClientSource::Registered)
}

/// Rebuilds the token endpoint (client identity included) from its stored row.
pub fn endpoint_from_stored(client: &StoredClient) -> TokenEndpoint {
    TokenEndpoint {
        authorization_endpoint: client.authorization_endpoint.clone(),
        token_endpoint: client.token_endpoint.clone(),
        client: ClientCredentials {
            client_id: client.client_id.clone(),
            client_secret: (client.client_secret.as_ref())
                .map(|s| oauth2::ClientSecret::new(s.expose().to_string())),
            auth_method: TokenAuthMethod::parse(&client.token_endpoint_auth_method)
                .unwrap_or(TokenAuthMethod::None),
            source: source_of(&client.source),
            registration: client
                .registration_json
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok()),
        },
        redirect_uri: client.redirect_uri.clone(),
        resource: client.resource.clone(),
    }
}

/// The client row of `endpoint`, found by `discovery`.
pub fn stored_client(
    config: &UpstreamConfig,
    discovery: &Discovery,
    endpoint: &TokenEndpoint,
) -> StoredClient {
    let metadata = &discovery.authorization_server;
    StoredClient {
        server_key: config.server_key.clone(),
        issuer: metadata.issuer.clone(),
        client_id: endpoint.client.client_id.clone(),
        client_secret: endpoint
            .client
            .client_secret
            .as_ref()
            .map(|s| Secret::new(s.secret().as_str())),
        token_endpoint_auth_method: endpoint.client.auth_method.as_str().into(),
        source: source_text(endpoint.client.source).into(),
        redirect_uri: endpoint.redirect_uri.clone(),
        authorization_endpoint: endpoint.authorization_endpoint.clone(),
        token_endpoint: endpoint.token_endpoint.clone(),
        revocation_endpoint: metadata.revocation_endpoint.clone(),
        resource: endpoint.resource.clone(),
        iss_parameter_supported: metadata.authorization_response_iss_parameter_supported,
        registration_json: endpoint
            .client
            .registration
            .as_ref()
            .map(|r| serde_json::Value::Object(r.clone()).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_sources_round_trip_through_the_store() {
        for source in [
            ClientSource::Configured,
            ClientSource::MetadataDocument,
            ClientSource::Registered,
        ] {
            assert_eq!(source_of(source_text(source)), source);
        }
        assert_eq!(source_of("from_an_older_build"), ClientSource::Registered);
    }
}
