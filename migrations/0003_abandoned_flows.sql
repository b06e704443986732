-- mcpproxy-oauth token store, schema version 3.
-- A flow whose process died (kill -9, a crash) stayed `running` forever. At start, a running
-- flow whose lock is free is closed as `abandoned`; the CHECK needs the new state, and SQLite
-- changes a CHECK only by rebuilding the table.
CREATE TABLE oauth_flows_v3 (
    flow_id          TEXT PRIMARY KEY,
    server_key       TEXT NOT NULL,
    server_name      TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('refresh', 'login')),
    state            TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'abandoned')),
    owner            TEXT NOT NULL,
    lease_expires_at INTEGER,
    started_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    error            TEXT
);
INSERT INTO oauth_flows_v3 (flow_id, server_key, server_name, kind, state, owner, lease_expires_at, started_at, finished_at, error)
SELECT flow_id, server_key, server_name, kind, state, owner, lease_expires_at, started_at, finished_at, error FROM oauth_flows;
DROP TABLE oauth_flows;
ALTER TABLE oauth_flows_v3 RENAME TO oauth_flows;
CREATE INDEX oauth_flows_by_server ON oauth_flows (server_key, started_at);
