-- mcpproxy-oauth token store, schema version 6.
-- DPoP (RFC 9449): a token bound to a key is refreshed, and used, only with proofs of that key,
-- so the key lives with the token. `dpop_key` is the ES256 private scalar (base64url, 32
-- bytes), a secret column (sealed like access_token when the store is encrypted); `dpop_jkt` is
-- its public RFC 7638 thumbprint (the `cnf.jkt` of the bound tokens), readable by anyone. Both
-- are NULL for a Bearer token. A logout deletes the row, key included: the next login makes a
-- new key.
ALTER TABLE oauth_tokens ADD COLUMN dpop_key TEXT;
ALTER TABLE oauth_tokens ADD COLUMN dpop_jkt TEXT;
