-- mcpproxy-oauth token store, schema version 4.
-- Facts about the store itself. `key_check`: a fixed text sealed with the store key
-- (XChaCha20-Poly1305); present exactly when the secret columns (oauth_tokens.access_token,
-- oauth_tokens.refresh_token, oauth_clients.client_secret) hold sealed values (`enc1:...`).
CREATE TABLE oauth_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
