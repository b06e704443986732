-- mcpproxy-oauth token store, schema version 2.
-- The status view read the clock with unixepoch('subsec'), which needs SQLite 3.42: an older
-- reader (Debian 12's sqlite3 is 3.40) got NULL for the time and called every token `valid`.
-- julianday('now') works on every SQLite; the arithmetic gives unix milliseconds.
DROP VIEW oauth_token_status;
CREATE VIEW oauth_token_status AS
SELECT
    server_key,
    server_name,
    server_url,
    CASE
        WHEN expires_at IS NULL THEN 'valid'
        WHEN expires_at <= CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) THEN 'expired'
        WHEN expires_at - CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) < 300000 THEN 'expiring'
        ELSE 'valid'
    END AS status,
    expires_at,
    refresh_token IS NOT NULL AS has_refresh_token,
    scope,
    updated_at
FROM oauth_tokens;
