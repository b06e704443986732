//! The statements both backends run word for word: SQLite reads `$1`, `$2`, ... as its
//! parameters 1, 2, ... in order of first appearance, as PostgreSQL does, and both know
//! `INSERT ... ON CONFLICT ... DO UPDATE` with `excluded`.

/// Writes a server's token (parameters: the columns in order, then `updated_at`, `flow_id`,
/// `dpop_key`, `dpop_jkt`); a new token clears the ambiguous mark.
pub(super) const UPSERT_TOKEN: &str = "INSERT INTO oauth_tokens (server_key, server_name, \
    server_url, resource, issuer, access_token, refresh_token, token_type, scope, expires_at, \
    obtained_at, updated_at, flow_id, dpop_key, dpop_jkt)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
    ON CONFLICT (server_key) DO UPDATE SET server_name = excluded.server_name,
      server_url = excluded.server_url, resource = excluded.resource, issuer = excluded.issuer,
      access_token = excluded.access_token, refresh_token = excluded.refresh_token,
      token_type = excluded.token_type, scope = excluded.scope, expires_at = excluded.expires_at,
      obtained_at = excluded.obtained_at, updated_at = excluded.updated_at,
      flow_id = excluded.flow_id, dpop_key = excluded.dpop_key, dpop_jkt = excluded.dpop_jkt,
      refresh_ambiguous_at = NULL, refresh_ambiguous_flow = NULL";

/// Writes a client identity, the row of its (server, issuer) replaced (`$14`: registered_at
/// of a new row, and updated_at).
pub(super) const UPSERT_CLIENT: &str = "INSERT INTO oauth_clients (server_key, issuer, \
    client_id, client_secret, token_endpoint_auth_method, source, redirect_uri, \
    authorization_endpoint, token_endpoint, revocation_endpoint, resource, \
    iss_parameter_supported, registration_json, registered_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)
    ON CONFLICT (server_key, issuer) DO UPDATE SET client_id = excluded.client_id,
      client_secret = excluded.client_secret,
      token_endpoint_auth_method = excluded.token_endpoint_auth_method,
      source = excluded.source, redirect_uri = excluded.redirect_uri,
      authorization_endpoint = excluded.authorization_endpoint,
      token_endpoint = excluded.token_endpoint,
      revocation_endpoint = excluded.revocation_endpoint, resource = excluded.resource,
      iss_parameter_supported = excluded.iss_parameter_supported,
      registration_json = excluded.registration_json, updated_at = excluded.updated_at";

/// The columns of a token read, in the order both backends map them.
pub(super) const TOKEN_COLUMNS: &str = "server_key, server_name, server_url, resource, issuer, \
    access_token, refresh_token, token_type, scope, expires_at, obtained_at, flow_id, dpop_key, \
    dpop_jkt";

/// The columns of a client read.
pub(super) const CLIENT_COLUMNS: &str = "server_key, issuer, client_id, client_secret, \
    token_endpoint_auth_method, source, redirect_uri, authorization_endpoint, token_endpoint, \
    revocation_endpoint, resource, iss_parameter_supported, registration_json";

/// The columns of a lease row.
pub(super) const LEASE_COLUMNS: &str = "server_key, owner, fence, flow_id, claimed_at, expires_at";
