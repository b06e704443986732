//! The client queries: a server holds a client identity per authorization server (by issuer,
//! exact comparison); a refresh uses the client of its token's issuer. The client secret is
//! sealed, and RFC 7592's management token is never stored.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use super::error::StoreError;
use super::model::{StoredClient, StoredToken, from_columns, without_management_token};
use super::sealing::Seal;
use super::sql::{CLIENT_COLUMNS, UPSERT_CLIENT};
use super::token_store::TokenStore;
use crate::clock::now_ms;

/// A client row's secret opened with the store's seal (and registered with the log scrubber).
pub(super) fn opened_client(
    seal: &Seal,
    path: &Path,
    client: StoredClient,
) -> Result<StoredClient, StoreError> {
    let (key, stored) = (&client.server_key, client.client_secret.clone());
    Ok(StoredClient {
        client_secret: seal.reveal(path, "client_secret", key, stored)?,
        ..client
    })
}

impl TokenStore {
    /// The server's newest client identity (of the authorization server it last used).
    pub fn load_client(&self, server_key: &str) -> Result<Option<StoredClient>, StoreError> {
        self.query_client(
            "WHERE server_key = ?1 ORDER BY updated_at DESC, rowid DESC LIMIT 1",
            params![server_key],
        )
    }

    /// The server's client identity at the authorization server `issuer` (exact comparison).
    pub fn load_client_for(
        &self,
        server_key: &str,
        issuer: &str,
    ) -> Result<Option<StoredClient>, StoreError> {
        self.query_client(
            "WHERE server_key = ?1 AND issuer = ?2",
            params![server_key, issuer],
        )
    }

    /// The client a stored token is refreshed with: the one of the token's issuer; the newest
    /// one for a token that names no issuer (rows from before issuers were recorded) and
    /// without a token.
    pub fn client_for_token(
        &self,
        server_key: &str,
        token: Option<&StoredToken>,
    ) -> Result<Option<StoredClient>, StoreError> {
        match token.and_then(|t| t.issuer.as_deref()) {
            Some(issuer) => self.load_client_for(server_key, issuer),
            None => self.load_client(server_key),
        }
    }

    /// A server's token and the client it is refreshed with ([`Self::client_for_token`]).
    pub fn load_token_and_client(
        &self,
        server_key: &str,
    ) -> Result<(Option<StoredToken>, Option<StoredClient>), StoreError> {
        let token = self.load_token(server_key)?;
        let client = self.client_for_token(server_key, token.as_ref())?;
        Ok((token, client))
    }

    fn query_client(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<StoredClient>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients {filter}");
        let client = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params, |r| {
                from_columns! {
                    r => StoredClient: server_key, issuer, client_id, client_secret,
                    token_endpoint_auth_method, source, redirect_uri, authorization_endpoint,
                    token_endpoint, revocation_endpoint, resource, iss_parameter_supported,
                    registration_json
                }
            })
            .optional()?;
        client
            .map(|c| opened_client(&self.seal, &self.path, c))
            .transpose()
    }

    /// Writes a client identity durably: the row of its (server, issuer), replaced if present.
    pub fn save_client(&mut self, c: &StoredClient) -> Result<(), StoreError> {
        let now = now_ms();
        let secret = self
            .seal
            .hide("client_secret", &c.server_key, c.client_secret.as_ref());
        let registration = c.registration_json.as_deref().map(without_management_token);
        self.write_sealed(
            UPSERT_CLIENT,
            params![
                c.server_key,
                c.issuer,
                c.client_id,
                secret,
                c.token_endpoint_auth_method,
                c.source,
                c.redirect_uri,
                c.authorization_endpoint,
                c.token_endpoint,
                c.revocation_endpoint,
                c.resource,
                c.iss_parameter_supported,
                registration,
                now
            ],
        )
    }
}
