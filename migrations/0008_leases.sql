-- mcpproxy-oauth token store, schema version 8.
-- Cross-instance single flight (#21), the same tables on SQLite and on PostgreSQL
-- (migrations/postgres/): a lease row per server, taken before any token request, and a mark
-- on a token whose refresh was sent but never answered.
--
-- oauth_leases: who runs the flow of a server now. `fence` grows by one at every claim, so a
-- write made under an older claim (a holder that stalled past its expiry and was taken over)
-- is refused: tokens are written only while the lease row still holds the writer's fence.
-- `expires_at` is NULL once the lease is released. On SQLite the per-server OS file lock is
-- what makes a claim exclusive; the row records it and carries the fence.
CREATE TABLE oauth_leases (
    server_key TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    fence      INTEGER NOT NULL,
    flow_id    TEXT,
    claimed_at INTEGER NOT NULL,
    expires_at INTEGER
);

-- A refresh whose answer never came (a timeout after sending): the server may have rotated
-- the refresh token. The next claim reports it so the flow re-reads first; a save of a new
-- token clears it.
ALTER TABLE oauth_tokens ADD COLUMN refresh_ambiguous_at INTEGER;
ALTER TABLE oauth_tokens ADD COLUMN refresh_ambiguous_flow TEXT;
