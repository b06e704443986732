-- mcpproxy-oauth token store, schema version 1.
-- This schema is a public interface: other processes (the mcpproxy runtime, an operator with
-- the sqlite3 shell) read it. Change it only through a new migration file.
-- Times are INTEGER unix milliseconds.

-- The client identity used at each server's authorization server, with the endpoints a refresh
-- needs, so a restart refreshes without discovery.
CREATE TABLE oauth_clients (
    server_key             TEXT PRIMARY KEY,
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
    updated_at             INTEGER NOT NULL
);

-- One row per server with a token.
CREATE TABLE oauth_tokens (
    server_key         TEXT PRIMARY KEY,
    server_name        TEXT NOT NULL,
    server_url         TEXT NOT NULL,
    resource           TEXT,
    issuer             TEXT,
    access_token       TEXT NOT NULL,
    refresh_token      TEXT,
    token_type         TEXT NOT NULL DEFAULT 'Bearer',
    scope              TEXT,
    expires_at         INTEGER,
    refresh_expires_at INTEGER,
    obtained_at        INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    flow_id            TEXT
);

-- Every flow (a refresh or a login): its history, and the lease that shows which process runs
-- the flow of a server right now. The OS file lock beside the database is what enforces one
-- flow per server; the lease makes it visible, and an expired lease is stale.
CREATE TABLE oauth_flows (
    flow_id          TEXT PRIMARY KEY,
    server_key       TEXT NOT NULL,
    server_name      TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('refresh', 'login')),
    state            TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    owner            TEXT NOT NULL,
    lease_expires_at INTEGER,
    started_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    error            TEXT
);
CREATE INDEX oauth_flows_by_server ON oauth_flows (server_key, started_at);

-- Token status without secrets, for anyone to read.
CREATE VIEW oauth_token_status AS
SELECT
    server_key,
    server_name,
    server_url,
    CASE
        WHEN expires_at IS NULL THEN 'valid'
        WHEN expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER) THEN 'expired'
        WHEN expires_at - CAST(unixepoch('subsec') * 1000 AS INTEGER) < 300000 THEN 'expiring'
        ELSE 'valid'
    END AS status,
    expires_at,
    refresh_token IS NOT NULL AS has_refresh_token,
    scope,
    updated_at
FROM oauth_tokens;
