//! The hot path: the tokens a caller holds (`SharedAccessToken`) and the handle on one
//! server's tokens (`ServerTokens`), read from the published snapshot without a lock, a
//! message or an allocation; and the lookup of a server by name.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use actix::Addr;

use super::SupervisorError;
use crate::upstream::actor::{self, Grant, Snapshot, TokenSnapshot, UpstreamActor};

pub(super) struct Upstream {
    pub addr: Addr<UpstreamActor>,
    pub snapshot: Snapshot,
}

/// The servers by name. Names come from the operator's config, not from the network, so the
/// lookup on the hot path hashes with FNV-1a (a few ns for a short name) instead of SipHash's
/// flood resistance.
pub(super) type Upstreams = HashMap<String, Upstream, BuildHasherDefault<NameHasher>>;

/// FNV-1a, 64 bits.
pub(super) struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A usable access token as handed out: a shared, immutable value (cloning it is a reference
/// count, not a copy of the secret). `Debug` shows no secret and there is no `Display`.
#[derive(Clone)]
pub struct SharedAccessToken(Arc<TokenSnapshot>);

impl SharedAccessToken {
    /// The token itself, for the `Authorization` header.
    pub fn secret(&self) -> &String {
        self.0.access_token.secret()
    }

    /// When it expires (unix ms), if the server said.
    pub fn expires_at(&self) -> Option<i64> {
        self.0.expires_at
    }

    /// `Bearer`, or `DPoP` for a token bound to the server's key (RFC 9449): the scheme of
    /// the `Authorization` header, and the sign that each request needs [`Self::dpop_proof`].
    pub fn token_type(&self) -> &str {
        &self.0.token_type
    }

    /// Whether requests with this token must carry a DPoP proof (its type is `DPoP`).
    pub fn is_dpop(&self) -> bool {
        crate::oauth::dpop::is_dpop_type(&self.0.token_type)
    }

    /// The `Authorization` header value: `Bearer <token>` or `DPoP <token>` (a secret).
    pub fn authorization(&self) -> String {
        let scheme = if self.is_dpop() { "DPoP" } else { "Bearer" };
        format!("{scheme} {}", self.secret())
    }

    /// For a DPoP-bound token: the `DPoP` header value for one request (RFC 9449 §4, §7), a
    /// fresh proof each call, with `ath` of this token and the nonce the resource last
    /// handed out for `url`. `None` for a Bearer token (and for a DPoP token whose stored key
    /// cannot be used: the resource refuses it, and the 401 reported leads to a login). A
    /// proof is a short-lived credential: never log it.
    pub fn dpop_proof(&self, method: &str, url: &str) -> Option<String> {
        let dpop = self.0.dpop.as_ref().filter(|_| self.is_dpop())?;
        Some(dpop.proof(method, url, Some(self.secret())))
    }

    /// Give every answer of the resource to this: a `DPoP-Nonce` header (RFC 9449 §9) is
    /// remembered for the next proofs to `url`. Returns whether the answer brought one: a 401
    /// `error="use_dpop_nonce"` that did is retried once with a new proof, and is not a reason
    /// to `report_unauthorized` (the token is fine).
    pub fn remember_dpop_nonce(&self, url: &str, headers: &http::HeaderMap) -> bool {
        self.0
            .dpop
            .as_ref()
            .is_some_and(|dpop| dpop.remember_nonce(url, headers))
    }
}

impl std::fmt::Debug for SharedAccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAccessToken")
            .field("expires_at", &self.0.expires_at)
            .field("token_type", &self.0.token_type)
            .finish_non_exhaustive()
    }
}

impl From<Grant> for SharedAccessToken {
    fn from(grant: Grant) -> Self {
        SharedAccessToken(Arc::new(
            TokenSnapshot::new(grant.access_token, grant.expires_at, 0)
                .bound(&grant.token_type, grant.dpop),
        ))
    }
}

/// The hot path: the published snapshot if it is still usable. No lock, no message, no
/// allocation (the snapshot's `Arc` is shared); one clock read, coarse where the token's
/// safety margin allows it (`clock`).
#[inline]
pub(super) fn usable_token(snapshot: &Snapshot) -> Option<SharedAccessToken> {
    let guard = snapshot.load();
    let token = guard.as_ref()?;
    token
        .usable_now()
        .then(|| SharedAccessToken(Arc::clone(token)))
}

/// A handle on one server's tokens (`Send + Sync + Clone`), from `SupervisorHandle::server_tokens`.
#[derive(Clone)]
pub struct ServerTokens {
    pub(super) snapshot: Snapshot,
    pub(super) addr: Addr<UpstreamActor>,
}

impl ServerTokens {
    /// The published token if it is still usable: a lock-free read, no message.
    pub fn cached_access_token(&self) -> Option<SharedAccessToken> {
        usable_token(&self.snapshot)
    }

    /// A token valid for at least its safety margin, asking the server's actor only when the
    /// published one is not.
    pub async fn access_token(&self) -> Result<SharedAccessToken, SupervisorError> {
        if let Some(token) = self.cached_access_token() {
            return Ok(token);
        }
        Ok(self
            .addr
            .send(actor::AccessToken)
            .await
            .map_err(|_| SupervisorError::Stopped)??
            .into())
    }
}
