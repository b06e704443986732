//! The client queries on PostgreSQL, as on SQLite (`store::clients`): a client identity per
//! (server, issuer), the secret sealed, RFC 7592's management token never stored.

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Transaction};

use super::super::clients::opened_client;
use super::super::error::StoreError;
use super::super::model::{StoredClient, StoredToken, without_management_token};
use super::super::sql::{CLIENT_COLUMNS, UPSERT_CLIENT};
use super::PgStore;
use crate::clock::now_ms;

fn client_of(row: &Row) -> StoredClient {
    StoredClient {
        server_key: row.get(0),
        issuer: row.get(1),
        client_id: row.get(2),
        client_secret: row.get(3),
        token_endpoint_auth_method: row.get(4),
        source: row.get(5),
        redirect_uri: row.get(6),
        authorization_endpoint: row.get(7),
        token_endpoint: row.get(8),
        revocation_endpoint: row.get(9),
        resource: row.get(10),
        iss_parameter_supported: row.get(11),
        registration_json: row.get(12),
    }
}

impl PgStore {
    async fn query_client(
        &self,
        client: &(impl GenericClient + Sync),
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<StoredClient>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients {filter}");
        let row = self
            .row_with(client, "reading a client", &sql, params)
            .await?;
        row.as_ref()
            .map(|r| opened_client(self.seal(), self.place(), client_of(r)))
            .transpose()
    }

    /// The client a stored token is refreshed with, read with `client`: the one of the
    /// token's issuer; the newest one without a token or for a token that names no issuer.
    pub(super) async fn client_for_token_with(
        &self,
        client: &(impl GenericClient + Sync),
        server_key: &str,
        token: Option<&StoredToken>,
    ) -> Result<Option<StoredClient>, StoreError> {
        match token.and_then(|t| t.issuer.as_deref()) {
            Some(issuer) => {
                self.query_client(
                    client,
                    "WHERE server_key = $1 AND issuer = $2",
                    &[&server_key, &issuer],
                )
                .await
            }
            None => {
                self.query_client(
                    client,
                    "WHERE server_key = $1 ORDER BY updated_at DESC, registered_at DESC, issuer \
                     DESC LIMIT 1",
                    &[&server_key],
                )
                .await
            }
        }
    }

    /// The server's client identity at the authorization server `issuer` (exact comparison).
    pub async fn load_client_for(
        &self,
        server_key: &str,
        issuer: &str,
    ) -> Result<Option<StoredClient>, StoreError> {
        self.pooled("reading a client", async |client| {
            let filter = "WHERE server_key = $1 AND issuer = $2";
            self.query_client(client, filter, &[&server_key, &issuer])
                .await
        })
        .await
    }

    /// A server's token and the client it is refreshed with.
    pub async fn load_token_and_client(
        &self,
        server_key: &str,
    ) -> Result<(Option<StoredToken>, Option<StoredClient>), StoreError> {
        self.pooled("reading a token and its client", async |client| {
            let token = self.load_token_with(client, server_key).await?;
            let stored = self
                .client_for_token_with(client, server_key, token.as_ref())
                .await?;
            Ok((token, stored))
        })
        .await
    }

    /// Writes a client identity inside `tx`: the row of its (server, issuer), replaced.
    pub(super) async fn save_client_in(
        &self,
        tx: &Transaction<'_>,
        c: &StoredClient,
    ) -> Result<(), StoreError> {
        self.check_key(tx).await?;
        let secret = self
            .seal()
            .hide("client_secret", &c.server_key, c.client_secret.as_ref());
        let registration = c.registration_json.as_deref().map(without_management_token);
        tx.execute(
            UPSERT_CLIENT,
            &[
                &c.server_key,
                &c.issuer,
                &c.client_id,
                &secret,
                &c.token_endpoint_auth_method,
                &c.source,
                &c.redirect_uri,
                &c.authorization_endpoint,
                &c.token_endpoint,
                &c.revocation_endpoint,
                &c.resource,
                &c.iss_parameter_supported,
                &registration,
                &now_ms(),
            ],
        )
        .await
        .map_err(|e| self.fail("saving a client", &e))?;
        Ok(())
    }

    /// Writes a client identity in its own transaction.
    pub async fn save_client(&self, stored: &StoredClient) -> Result<(), StoreError> {
        self.in_transaction("saving a client", async |tx| {
            self.save_client_in(tx, stored).await
        })
        .await
    }
}
