//! What a test server instance does: token lifetimes, which features are on, and which
//! faults are armed from the start. Every field has a default that behaves like a
//! well-mannered production server, so a test only states what it changes.

use std::time::Duration;

use crate::dpop::NonceRotation;
use crate::faults::Fault;
use crate::grants::{IdpPolicy, JwtClient, TrustedIssuer};

/// The configuration of one test server instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port on 127.0.0.1; 0 picks an ephemeral port (read it back with `OAuthTestServer::url`).
    pub port: u16,
    /// Lifetime of access tokens. Announced `expires_in` is this, rounded up to whole seconds.
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens, counted from their issue (each rotation starts anew).
    pub refresh_token_ttl: Duration,
    /// Lifetime of authorization codes.
    pub code_ttl: Duration,
    /// Serve RFC 7591 dynamic client registration at `/register`.
    pub dynamic_registration: bool,
    /// Hand out refresh tokens at all.
    pub issue_refresh_tokens: bool,
    /// Rotate the refresh token on every use; reuse of a rotated one revokes its family.
    pub rotate_refresh_tokens: bool,
    /// Require an RFC 8707 `resource` equal to the MCP endpoint on authorize and token requests.
    pub require_resource: bool,
    /// Show a login + consent page at `/authorize` instead of approving at once.
    pub interactive: bool,
    /// Put the issuer under this path (e.g. `/tenant1`), with path-aware well-known locations.
    pub issuer_path: Option<String>,
    /// `scopes_supported` of both metadata documents.
    pub scopes_supported: Vec<String>,
    /// A pre-registered client: (client_id, client_secret). No secret makes it public.
    pub preregistered_client: Option<(String, Option<String>)>,
    /// List `offline_access` in the authorization server's metadata (not the resource's) and
    /// accept it, as a server that issues refresh tokens only on request does (SEP-2207).
    pub offline_access: bool,
    /// Tools that need an extra scope: (tool name, scope). Missing it yields 403 insufficient_scope.
    pub tool_scopes: Vec<(String, String)>,
    /// `(issuer, n)`: after `n` MCP requests with a valid token, the resource moves to the
    /// authorization server `issuer` (another test server: they share the signing key). Its
    /// metadata then names that server, and tokens of this one are refused with 401 "the
    /// authorization server has changed" (SEP-2352).
    pub authorization_server_moves: Option<(String, u64)>,
    /// Speak only the stateless MCP 2026-07-28 wire: `server/discover` instead of `initialize`,
    /// and every request must carry the `MCP-Protocol-Version` header and the same version in
    /// `params._meta` (else HTTP 400 with a JSON-RPC error, -32022 for another version).
    pub mcp_stateless: bool,
    /// Answer MCP requests as `text/event-stream` instead of JSON.
    pub mcp_sse_responses: bool,
    /// Serve every MCP method but `tools/call` without looking at the token (an anonymous
    /// `initialize` and `tools/list` succeed); `tools/call` still needs a valid one (401).
    pub mcp_anonymous_discovery: bool,
    /// Announce this `expires_in` (seconds) in every token response instead of the TTL; the
    /// JWT keeps the real TTL. A server sending absurd lifetimes (`i64::MAX`, `u64::MAX`).
    pub announced_expires_in: Option<u64>,
    /// Faults armed at start (the `--token-error`/`--refresh-error` flags).
    pub faults: Vec<Fault>,
    /// Serve the RFC 8628 device authorization grant (`/device_authorization`, the
    /// verification page `/device`, `grant_type=urn:ietf:params:oauth:grant-type:device_code`)
    /// and list its endpoint in the metadata.
    pub device_grant: bool,
    /// The `interval` (seconds) announced for device code polling; RFC 8628's default is 5.
    pub device_interval_secs: u64,
    /// Lifetime of a device code (`expires_in`).
    pub device_code_ttl: Duration,
    /// Answer `slow_down` to the first this many polls of each device code (besides polls
    /// that come sooner than the interval, which always get `slow_down`).
    pub device_slow_down_polls: u32,
    /// A hostile device authorization server: announce these instead of the real verification
    /// URIs and user code (each `None` keeps the real one). The real user code still approves
    /// at `/device`; a client that checks what it shows never gets that far.
    pub device_announced: DeviceAnnounced,
    /// DPoP (RFC 9449): advertise `dpop_signing_alg_values_supported: ["ES256"]`, check any
    /// proof presented, and bind the tokens of a request with a valid proof (`cnf.jkt`,
    /// `token_type: DPoP`). Bearer tokens are still issued to clients without a proof.
    pub dpop: bool,
    /// DPoP is required: a token request without a proof is refused, the MCP endpoint takes
    /// only DPoP-bound tokens with the DPoP scheme, its challenges use the DPoP scheme and the
    /// resource metadata says `dpop_bound_access_tokens_required`. Implies `dpop`.
    pub dpop_required: bool,
    /// Require server nonces in proofs (`use_dpop_nonce` + `DPoP-Nonce`, RFC 9449 §8/§9), at
    /// the token and the MCP endpoint, each with its own nonce. Implies `dpop`.
    pub dpop_nonce: Option<NonceRotation>,
    /// Serve the `client_credentials` grant (RFC 6749 §4.4) to confidential clients, without a
    /// refresh token, and list it in the metadata.
    pub client_credentials: bool,
    /// Accept `private_key_jwt` client authentication (RFC 7523 §2.2) from clients registered
    /// with a `jwks` or `jwks_uri`, and list it with its signing algorithms (ES256, RS256).
    pub private_key_jwt: bool,
    /// Pre-registered `private_key_jwt` clients: a client ID and its public keys.
    pub jwt_clients: Vec<JwtClient>,
    /// Play the enterprise IdP: RFC 8693 token exchange of an ID token this server issued (or
    /// one of its refresh tokens) for an ID-JAG (`urn:ietf:params:oauth:token-type:id-jag`,
    /// SEP-990), under `idp_policy`.
    pub idp: bool,
    /// Which token exchanges the IdP grants; the others are refused with `access_denied`.
    pub idp_policy: IdpPolicy,
    /// Lifetime of the ID-JAGs and ID tokens the IdP issues.
    pub id_jag_ttl: Duration,
    /// `(client ID at this IdP, client ID at the resource authorization server)`: the
    /// `client_id` claim an ID-JAG carries for a client (SEP-990's client ID mapping). A
    /// client without an entry keeps its own ID.
    pub idp_client_ids: Vec<(String, String)>,
    /// Serve the RFC 7523 `urn:ietf:params:oauth:grant-type:jwt-bearer` grant (no refresh
    /// token), for the issuers below, and list it in the metadata.
    pub jwt_bearer: bool,
    /// IdPs whose ID-JAGs (`typ: oauth-id-jag+jwt`) the jwt-bearer grant accepts, from an
    /// authenticated client named in the grant's `client_id` claim.
    pub trusted_idps: Vec<TrustedIssuer>,
    /// Platforms whose workload JWTs (a Kubernetes projected service account token, a SPIFFE
    /// JWT-SVID) the jwt-bearer grant accepts, with no client registration.
    pub trusted_workload_issuers: Vec<TrustedIssuer>,
}

/// What a device authorization answer announces instead of the real values (see
/// `Config::device_announced`).
#[derive(Debug, Clone, Default)]
pub struct DeviceAnnounced {
    /// Replaces `verification_uri` (and the start of `verification_uri_complete`).
    pub verification_uri: Option<String>,
    /// Replaces `verification_uri_complete` alone.
    pub verification_uri_complete: Option<String>,
    /// Replaces `user_code` in the answer.
    pub user_code: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 0,
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(24 * 3600),
            code_ttl: Duration::from_secs(60),
            dynamic_registration: true,
            issue_refresh_tokens: true,
            rotate_refresh_tokens: true,
            require_resource: false,
            interactive: false,
            issuer_path: None,
            scopes_supported: vec!["mcp:read".into(), "mcp:write".into()],
            preregistered_client: None,
            offline_access: false,
            tool_scopes: Vec::new(),
            authorization_server_moves: None,
            mcp_stateless: false,
            mcp_sse_responses: false,
            mcp_anonymous_discovery: false,
            announced_expires_in: None,
            faults: Vec::new(),
            device_grant: false,
            device_interval_secs: 5,
            device_code_ttl: Duration::from_secs(600),
            device_slow_down_polls: 0,
            device_announced: DeviceAnnounced::default(),
            dpop: false,
            dpop_required: false,
            dpop_nonce: None,
            client_credentials: false,
            private_key_jwt: false,
            jwt_clients: Vec::new(),
            idp: false,
            idp_policy: IdpPolicy::AllowAll,
            id_jag_ttl: Duration::from_secs(300),
            idp_client_ids: Vec::new(),
            jwt_bearer: false,
            trusted_idps: Vec::new(),
            trusted_workload_issuers: Vec::new(),
        }
    }
}

impl Config {
    /// The default config as `configure` changes it: a test states the one setting it changes.
    pub fn with(configure: impl FnOnce(&mut Config)) -> Config {
        let mut config = Config::default();
        configure(&mut config);
        config
    }

    /// Whether proofs are checked and tokens bound at all.
    pub fn dpop_enabled(&self) -> bool {
        self.dpop || self.dpop_required || self.dpop_nonce.is_some()
    }

    /// The issuer path normalised to `""` or `/segment...` without a trailing slash.
    pub(crate) fn issuer_prefix(&self) -> String {
        match self.issuer_path.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => format!("/{p}"),
        }
    }

    /// Every scope the server knows: `scopes_supported` plus the scopes tools demand.
    pub(crate) fn all_scopes(&self) -> Vec<String> {
        let mut scopes = self.scopes_supported.clone();
        for (_, scope) in &self.tool_scopes {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        scopes
    }

    /// What the authorization server lists and accepts: every scope, and `offline_access`
    /// when configured.
    pub(crate) fn authorization_server_scopes(&self) -> Vec<String> {
        let mut scopes = self.all_scopes();
        if self.offline_access && !scopes.iter().any(|s| s == "offline_access") {
            scopes.push("offline_access".into());
        }
        scopes
    }

    /// The scope named in a 401 challenge: the supported scopes that no tool reserves.
    pub(crate) fn base_scopes(&self) -> Vec<String> {
        self.scopes_supported
            .iter()
            .filter(|s| !self.tool_scopes.iter().any(|(_, t)| t == *s))
            .cloned()
            .collect()
    }
}
