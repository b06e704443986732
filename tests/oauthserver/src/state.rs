//! Everything the server remembers: clients, codes, refresh token families, counters, the
//! secrets it issued, armed faults, and its clock. One `std::sync::Mutex` guards it all; it is
//! never held across an `.await`, so handlers stay short and the server stays simple.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::faults::FaultBook;
use crate::grants::{IdpPolicy, JtiBook, KeySource, TrustedIssuer};
use crate::jwt::Signer;

/// How a client authenticates at the token and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
    /// RFC 7523 §2.2: a JWT signed with a key of the client's registered `jwks` / `jwks_uri`.
    PrivateKeyJwt,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub client_secret: Option<String>,
    /// The methods this client may use: one for a registered client, as registered.
    pub auth_methods: Vec<AuthMethod>,
    /// Empty means any loopback redirect URI (a pre-registered native client).
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    /// The public keys of a `private_key_jwt` client.
    pub keys: Option<KeySource>,
}

/// A pending or issued authorization code, or an interactive request awaiting consent.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub scope: String,
    pub resource: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub request: AuthorizationRequest,
    pub expires_at_ms: i64,
    /// Set when the code is redeemed; a second redemption revokes this family.
    pub redeemed_family: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshStatus {
    Active,
    /// Already exchanged for a newer one; presenting it again is reuse.
    Rotated,
    Revoked,
}

#[derive(Debug, Clone)]
pub struct RefreshRecord {
    pub family: u64,
    pub client_id: String,
    pub scope: String,
    pub resource: Option<String>,
    pub expires_at_ms: i64,
    pub status: RefreshStatus,
    /// RFC 9449 §5: the thumbprint of the key a DPoP-bound grant was issued to; a refresh must
    /// present a proof of the same key.
    pub jkt: Option<String>,
}

/// Counters a test reads through `GET /control/stats` or `OAuthTestServer::stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub authorize_requests: u64,
    /// Token requests by `grant_type`.
    pub token_requests: BTreeMap<String, u64>,
    /// Error responses of the token endpoint by OAuth error code (injected ones included).
    pub token_errors: BTreeMap<String, u64>,
    pub registrations: u64,
    /// The `application_type` of each registration, in order (`None`: omitted).
    pub registered_application_types: Vec<Option<String>>,
    pub revocations: u64,
    pub mcp_requests: u64,
    pub mcp_401: u64,
    pub mcp_403: u64,
    /// Every `resource` parameter received, on authorize and token requests, in order.
    pub resources_received: Vec<String>,
    /// Faults that fired, by target.
    pub faults_fired: BTreeMap<String, u64>,
    /// Presentations of an already rotated refresh token (each revoked a family).
    pub refresh_token_reuse: u64,
    /// RFC 8628 device authorization requests answered with a device code.
    #[serde(default)]
    pub device_authorizations: u64,
    /// Token requests with `grant_type=urn:ietf:params:oauth:grant-type:device_code`.
    #[serde(default)]
    pub device_polls: u64,
    /// Polls answered `slow_down` (configured ones and polls sooner than the interval).
    #[serde(default)]
    pub device_slow_downs: u64,
    /// Milliseconds between consecutive polls of the same device code, in order.
    #[serde(default)]
    pub device_poll_gaps_ms: Vec<u64>,
    /// DPoP proofs refused, by reason: bad_proof, replay, nonce, key_mismatch, missing.
    #[serde(default)]
    pub dpop_refusals: BTreeMap<String, u64>,
    /// Access tokens issued bound to a DPoP key (`cnf.jkt`).
    #[serde(default)]
    pub dpop_bound_tokens: u64,
    /// MCP requests accepted with a DPoP-bound token and a valid proof.
    #[serde(default)]
    pub mcp_dpop_requests: u64,
    /// `private_key_jwt` client assertions accepted (RFC 7523 §2.2).
    #[serde(default)]
    pub client_assertions: u64,
    /// Client assertions refused, by reason: malformed, signature, audience, expired,
    /// replay, mismatch.
    #[serde(default)]
    pub client_assertion_refusals: BTreeMap<String, u64>,
    /// `client_credentials` grants that issued a token.
    #[serde(default)]
    pub client_credentials_grants: u64,
    /// ID-JAGs the IdP issued (RFC 8693 token exchanges granted).
    #[serde(default)]
    pub id_jags_issued: u64,
    /// Token exchanges the IdP's policy refused with `access_denied`.
    #[serde(default)]
    pub token_exchange_denials: u64,
    /// jwt-bearer grants that issued a token, by assertion kind: `id_jag`, `workload`.
    #[serde(default)]
    pub jwt_bearer_grants: BTreeMap<String, u64>,
    /// jwt-bearer assertions refused, by reason: malformed, signature, untrusted_issuer,
    /// audience, expired, replay, mismatch, typ.
    #[serde(default)]
    pub jwt_bearer_refusals: BTreeMap<String, u64>,
}

impl Stats {
    pub fn token_requests_for(&self, grant_type: &str) -> u64 {
        self.token_requests.get(grant_type).copied().unwrap_or(0)
    }

    /// (client registrations, authorization requests): what a moved authorization server
    /// costs a client, one of each at most.
    pub fn registrations_and_logins(&self) -> (u64, u64) {
        (self.registrations, self.authorize_requests)
    }

    /// DPoP refusals for one reason (`replay`, `nonce`, `bad_proof`, `key_mismatch`, `missing`).
    pub fn dpop_refusals_for(&self, reason: &str) -> u64 {
        self.dpop_refusals.get(reason).copied().unwrap_or(0)
    }

    /// jwt-bearer grants that issued a token for one assertion kind (`id_jag`, `workload`).
    pub fn jwt_bearer_grants_for(&self, kind: &str) -> u64 {
        self.jwt_bearer_grants.get(kind).copied().unwrap_or(0)
    }

    /// jwt-bearer assertions refused for one reason.
    pub fn jwt_bearer_refusals_for(&self, reason: &str) -> u64 {
        self.jwt_bearer_refusals.get(reason).copied().unwrap_or(0)
    }

    /// Client assertions refused for one reason.
    pub fn client_assertion_refusals_for(&self, reason: &str) -> u64 {
        self.client_assertion_refusals
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

/// Every secret the server issued, by kind, so tests can prove none leaks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Secrets {
    pub access_tokens: Vec<String>,
    pub refresh_tokens: Vec<String>,
    pub authorization_codes: Vec<String>,
    /// Issued at registration, and the pre-registered client's.
    pub client_secrets: Vec<String>,
    /// Received, not issued: the clients' PKCE verifiers and `state` values.
    #[serde(default)]
    pub code_verifiers: Vec<String>,
    #[serde(default)]
    pub states: Vec<String>,
    /// RFC 8628 device codes issued (the user codes are meant to be shown: not here).
    #[serde(default)]
    pub device_codes: Vec<String>,
    /// Received: every DPoP proof a client presented.
    #[serde(default)]
    pub dpop_proofs: Vec<String>,
    /// ID tokens the IdP issued (the subject tokens of token exchanges).
    #[serde(default)]
    pub id_tokens: Vec<String>,
    /// ID-JAGs the IdP issued.
    #[serde(default)]
    pub id_jags: Vec<String>,
    /// Received: every client assertion (`private_key_jwt`), subject token and jwt-bearer
    /// `assertion` presented (workload JWTs among them).
    #[serde(default)]
    pub assertions: Vec<String>,
}

impl Secrets {
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.access_tokens
            .iter()
            .chain(&self.refresh_tokens)
            .chain(&self.authorization_codes)
            .chain(&self.client_secrets)
            .chain(&self.code_verifiers)
            .chain(&self.states)
            .chain(&self.device_codes)
            .chain(&self.dpop_proofs)
            .chain(&self.id_tokens)
            .chain(&self.id_jags)
            .chain(&self.assertions)
            .map(String::as_str)
    }
}

#[derive(Default)]
pub struct Inner {
    pub clients: HashMap<String, Client>,
    pub codes: HashMap<String, CodeGrant>,
    pub refresh_tokens: HashMap<String, RefreshRecord>,
    /// Access token ids issued per family, so revoking a family revokes its access tokens.
    pub family_access_jtis: HashMap<u64, Vec<String>>,
    pub revoked_jtis: HashSet<String>,
    pub interactive_requests: HashMap<String, AuthorizationRequest>,
    pub next_family: u64,
    pub stats: Stats,
    pub secrets: Secrets,
    pub faults: FaultBook,
    /// MCP requests that presented a valid token (for `authorization_server_moves`).
    pub accepted_mcp_requests: u64,
    /// Set by `OAuthTestServer::trust_authorization_server`: the issuer the MCP endpoint
    /// trusts from now on, over `Config::authorization_server_moves`.
    pub trusted_issuer: Option<String>,
    /// RFC 8628 device authorizations by device code.
    pub device_grants: HashMap<String, crate::routes::device::DeviceGrant>,
    /// DPoP nonces of the token endpoint and of the MCP endpoint, and the proofs' `jti`s.
    pub dpop_token_nonce: crate::dpop::NonceBook,
    pub dpop_mcp_nonce: crate::dpop::NonceBook,
    pub dpop_jtis: crate::dpop::ReplayBook,
    /// `jti`s of client assertions and ID-JAGs, each accepted once.
    pub assertion_jtis: JtiBook,
    /// `jti`s of the ID tokens the IdP issued: a subject token must be one of them.
    pub id_token_jtis: HashSet<String>,
    /// The IdP's policy (`Config::idp_policy`, changed at run time by the control API).
    pub idp_policy: IdpPolicy,
    /// Issuers the jwt-bearer grant trusts (`Config::trusted_idps`,
    /// `Config::trusted_workload_issuers`, plus those added at run time).
    pub trusted_idps: Vec<TrustedIssuer>,
    pub trusted_workload_issuers: Vec<TrustedIssuer>,
}

impl Inner {
    /// Revokes every refresh token of a family and every access token issued in it.
    pub fn revoke_family(&mut self, family: u64) {
        for record in self.refresh_tokens.values_mut() {
            if record.family == family {
                record.status = RefreshStatus::Revoked;
            }
        }
        if let Some(jtis) = self.family_access_jtis.get(&family) {
            self.revoked_jtis.extend(jtis.iter().cloned());
        }
    }

    pub fn count_token_error(&mut self, code: &str) {
        *self.stats.token_errors.entry(code.to_string()).or_default() += 1;
    }

    /// Adds a pre-registered `private_key_jwt` client.
    pub fn add_jwt_client(&mut self, client: &crate::grants::JwtClient) {
        self.clients.insert(
            client.client_id.clone(),
            Client {
                client_id: client.client_id.clone(),
                client_secret: None,
                auth_methods: vec![AuthMethod::PrivateKeyJwt],
                redirect_uris: Vec::new(),
                client_name: Some("pre-registered private_key_jwt client".into()),
                keys: Some(client.keys.clone()),
            },
        );
    }
}

/// The state shared by all handlers of one server.
pub struct Shared {
    pub config: Config,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base_url: String,
    pub signer: Signer,
    clock_offset_ms: AtomicI64,
    inner: Mutex<Inner>,
}

pub type AppState = Arc<Shared>;

impl Shared {
    pub fn new(config: Config, base_url: String) -> Self {
        let mut inner = Inner::default();
        for fault in &config.faults {
            inner.faults.arm(fault.clone());
        }
        if let Some((client_id, secret)) = &config.preregistered_client {
            inner.secrets.client_secrets.extend(secret.clone());
            let auth_methods = match secret {
                Some(_) => vec![AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost],
                None => vec![AuthMethod::None],
            };
            inner.clients.insert(
                client_id.clone(),
                Client {
                    client_id: client_id.clone(),
                    client_secret: secret.clone(),
                    auth_methods,
                    redirect_uris: Vec::new(),
                    client_name: Some("pre-registered client".into()),
                    keys: None,
                },
            );
        }
        for client in &config.jwt_clients {
            inner.add_jwt_client(client);
        }
        inner.idp_policy = config.idp_policy.clone();
        inner.trusted_idps = config.trusted_idps.clone();
        inner.trusted_workload_issuers = config.trusted_workload_issuers.clone();
        Shared {
            config,
            base_url,
            signer: Signer::test_key(),
            clock_offset_ms: AtomicI64::new(0),
            inner: Mutex::new(inner),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler must not wedge every later test request.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The server's notion of now, in unix milliseconds (wall clock plus the test offset).
    pub fn now_ms(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        wall as i64 + self.clock_offset_ms.load(Ordering::SeqCst)
    }

    /// Moves the server's clock forward: codes and tokens expire without the test sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn issuer(&self) -> String {
        format!("{}{}", self.base_url, self.config.issuer_prefix())
    }

    /// The protected MCP endpoint, which is also its RFC 8707 resource identifier.
    pub fn mcp_resource(&self) -> String {
        format!("{}/mcp", self.base_url)
    }

    /// The authorization server the MCP endpoint trusts now: this server, or the one it moved
    /// to (`Config::authorization_server_moves`).
    pub fn resource_issuer(&self) -> String {
        let (accepted, trusted) = {
            let inner = self.lock();
            (inner.accepted_mcp_requests, inner.trusted_issuer.clone())
        };
        if let Some(trusted) = trusted {
            return trusted;
        }
        match &self.config.authorization_server_moves {
            Some((issuer, after)) if accepted >= *after => issuer.clone(),
            _ => self.issuer(),
        }
    }

    pub fn resource_metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp", self.base_url)
    }
}

/// A fresh unguessable token with a readable prefix (the prefix helps a human reading a log
/// tell what leaked, should anything ever leak).
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}
