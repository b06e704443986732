-- mcpproxy-oauth token store, schema version 7.
-- A client identity belongs to the authorization server it was registered with (or
-- configured for): when a resource moves to another authorization server and back (SEP-2352),
-- each server's client is kept and reused there, never presented at the other. The key of
-- oauth_clients becomes (server_key, issuer); the rows are copied as they are (a sealed
-- client_secret keeps its associated data, which names the table, column and server_key).
CREATE TABLE oauth_clients_by_issuer (
    server_key             TEXT NOT NULL,
    issuer                 TEXT NOT NULL,
    client_id              TEXT NOT NULL,
    client_secret          TEXT,
    token_endpoint_auth_method TEXT NOT NULL,
    source                 TEXT NOT NULL CHECK (source IN ('configured', 'metadata_document', 'registered')),
    redirect_uri           TEXT NOT NULL,
    authorization_endpoint TEXT NOT NULL,
    token_endpoint         TEXT NOT NULL,
    revocation_endpoint    TEXT,
    resource               TEXT NOT NULL,
    iss_parameter_supported INTEGER NOT NULL DEFAULT 0,
    registration_json      TEXT,
    registered_at          INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    PRIMARY KEY (server_key, issuer)
);
INSERT INTO oauth_clients_by_issuer
    (server_key, issuer, client_id, client_secret, token_endpoint_auth_method, source, redirect_uri,
     authorization_endpoint, token_endpoint, revocation_endpoint, resource, iss_parameter_supported,
     registration_json, registered_at, updated_at)
SELECT server_key, issuer, client_id, client_secret, token_endpoint_auth_method, source, redirect_uri,
       authorization_endpoint, token_endpoint, revocation_endpoint, resource, iss_parameter_supported,
       registration_json, registered_at, updated_at
FROM oauth_clients;
DROP TABLE oauth_clients;
ALTER TABLE oauth_clients_by_issuer RENAME TO oauth_clients;
