-- mcpproxy-oauth token store on PostgreSQL, schema version 1.
-- The same tables, columns and status view as the SQLite store at its schema version 8
-- (migrations/0001_init.sql to 0008_leases.sql; tests/store_postgres.rs compares the two), so
-- the documented schema reads the same on both. Differences in type only: BIGINT for SQLite's
-- INTEGER, and BOOLEAN where SQLite, which has no boolean type, keeps 0/1 in an INTEGER
-- (oauth_clients.iss_parameter_supported). Times are unix milliseconds, written by the process
-- that writes the row, except the lease's claimed_at and expires_at, which the database's own
-- clock sets, so instances on several hosts compare a lease's expiry with one clock.
-- Schema versions are counted in oauth_meta ('schema_version'), and applied under a
-- transaction-level advisory lock, so instances starting together migrate once.

CREATE TABLE oauth_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE oauth_clients (
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
    iss_parameter_supported BOOLEAN NOT NULL DEFAULT FALSE,
    registration_json      TEXT,
    registered_at          BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    PRIMARY KEY (server_key, issuer)
);

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
    expires_at         BIGINT,
    refresh_expires_at BIGINT,
    obtained_at        BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    flow_id            TEXT,
    dpop_key           TEXT,
    dpop_jkt           TEXT,
    refresh_ambiguous_at   BIGINT,
    refresh_ambiguous_flow TEXT
);

CREATE TABLE oauth_flows (
    flow_id          TEXT PRIMARY KEY,
    server_key       TEXT NOT NULL,
    server_name      TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('refresh', 'login')),
    state            TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'abandoned')),
    owner            TEXT NOT NULL,
    lease_expires_at BIGINT,
    started_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    error            TEXT
);
CREATE INDEX oauth_flows_by_server ON oauth_flows (server_key, started_at);
CREATE INDEX oauth_flows_by_start ON oauth_flows (started_at);

-- Who runs the flow of a server now: taken in a transaction before any token request, one
-- fence higher at every claim; tokens are written only while the row holds the writer's
-- fence; expires_at is NULL once released, and an expired lease may be taken over.
CREATE TABLE oauth_leases (
    server_key TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    fence      BIGINT NOT NULL,
    flow_id    TEXT,
    claimed_at BIGINT NOT NULL,
    expires_at BIGINT
);

-- Token status without secrets, for anyone to read (psql), as on SQLite.
CREATE VIEW oauth_token_status AS
SELECT
    server_key,
    server_name,
    server_url,
    CASE
        WHEN expires_at IS NULL THEN 'valid'
        WHEN expires_at <= (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT THEN 'expired'
        WHEN expires_at - (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT < 300000 THEN 'expiring'
        ELSE 'valid'
    END AS status,
    expires_at,
    refresh_token IS NOT NULL AS has_refresh_token,
    scope,
    updated_at
FROM oauth_tokens;

-- Every instance LISTENs on mcpproxy_oauth_changes: a token written or deleted, and a lease
-- released, are announced at commit ('token:<server_key>', 'lease:<server_key>'), whoever
-- wrote them (an instance, the CLI, an operator's psql).
CREATE FUNCTION oauth_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'mcpproxy_oauth_changes',
        TG_ARGV[0] || ':' || CASE TG_OP WHEN 'DELETE' THEN OLD.server_key ELSE NEW.server_key END
    );
    RETURN NULL;
END
$$;
CREATE TRIGGER oauth_tokens_announce AFTER INSERT OR UPDATE OR DELETE ON oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION oauth_announce_change('token');
CREATE TRIGGER oauth_leases_announce AFTER UPDATE ON oauth_leases
    FOR EACH ROW WHEN (NEW.expires_at IS NULL AND OLD.expires_at IS NOT NULL)
    EXECUTE FUNCTION oauth_announce_change('lease');
