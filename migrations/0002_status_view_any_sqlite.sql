-- The status view must read the same with any SQLite a user has: unixepoch('subsec') needs
-- 3.42 (Debian 12's sqlite3 is 3.40, where it is NULL and every token read as 'valid').
-- julianday('now') exists in every version and has millisecond precision.
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
