//! The hot path: the tokens a caller holds (`SharedAccessToken`) and the handle on one
//! server's tokens (`ServerTokens`), read from the published snapshot without a lock, a
//! message or an allocation; and the lookup of a server by name.

use std::sync::Arc;

use actix::Addr;

use super::SupervisorError;
use crate::upstream::actor::{self, Grant, Snapshot, TokenSnapshot, UpstreamActor};

pub(super) struct Upstream {
    pub addr: Addr<UpstreamActor>,
    pub snapshot: Snapshot,
}

/// The servers by name, built once at start and never changed, so reads take no lock. An
/// open-addressed table (at most half full) of indexes into the servers, probed linearly from
/// the name's hash. Names come from the operator's config, not from the network, so the hash
/// reads the name a word at a time with one or two multiplies (`name_hash`) instead of paying
/// for SipHash's flood resistance; the full hash is kept beside each name, so a probe compares
/// the names' bytes only when the hashes are equal.
pub(super) type Upstreams = ByName<Upstream>;

/// A table by name, read without a lock (see `Upstreams`).
pub(super) struct ByName<T> {
    servers: Box<[Named<T>]>,
    /// Indexes into `servers`; `EMPTY` ends a probe. The length is a power of two.
    slots: Box<[u32]>,
}

struct Named<T> {
    hash: u64,
    name: Box<str>,
    value: T,
}

const EMPTY: u32 = u32::MAX;

impl<T> ByName<T> {
    /// The table of these values; a name given twice keeps its last value (as a map's
    /// insert would).
    pub(super) fn new(named: Vec<(String, T)>) -> Self {
        let mut servers: Vec<Named<T>> = Vec::with_capacity(named.len());
        let mut slots = vec![EMPTY; (named.len() * 2).next_power_of_two().max(2)];
        let mask = slots.len() - 1;
        for (name, value) in named {
            let hash = name_hash(name.as_bytes());
            let mut i = hash as usize & mask;
            loop {
                match slots[i] {
                    EMPTY => {
                        slots[i] = u32::try_from(servers.len()).expect("fewer than 2^32 servers");
                        servers.push(Named {
                            hash,
                            name: name.into_boxed_str(),
                            value,
                        });
                        break;
                    }
                    s if *servers[s as usize].name == *name => {
                        servers[s as usize].value = value;
                        break;
                    }
                    _ => i = (i + 1) & mask,
                }
            }
        }
        ByName {
            servers: servers.into_boxed_slice(),
            slots: slots.into_boxed_slice(),
        }
    }

    /// The value of this name: one hash, usually one probe, no allocation.
    #[inline]
    pub(super) fn get(&self, name: &str) -> Option<&T> {
        let hash = name_hash(name.as_bytes());
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let slot = *self.slots.get(i)?;
            let server = self.servers.get(slot as usize)?; // EMPTY is past the end
            if server.hash == hash && *server.name == *name {
                return Some(&server.value);
            }
            i = (i + 1) & mask;
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.servers.iter().map(|s| &s.value)
    }
}

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;

/// The high and low halves of the 128-bit product, folded (every input bit moves both).
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline]
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline]
fn half(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u64::from(u32::from_le_bytes(w))
}

/// A name's hash: up to 16 bytes are read as two (overlapping) words and folded once, longer
/// names fold 16 bytes at a time. Not flood-resistant (see `Upstreams`).
#[inline]
pub(super) fn name_hash(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let (mut a, mut b, mut seed) = (0u64, 0u64, K0 ^ len as u64);
    if len > 16 {
        let mut rest = bytes;
        while rest.len() > 16 {
            seed = fold(word(rest, 0) ^ K0, word(rest, 8) ^ seed);
            rest = &rest[16..];
        }
        (a, b) = (word(bytes, len - 16), word(bytes, len - 8));
    } else if len >= 8 {
        (a, b) = (word(bytes, 0), word(bytes, len - 8));
    } else if len >= 4 {
        (a, b) = (half(bytes, 0), half(bytes, len - 4));
    } else if len > 0 {
        a = (u64::from(bytes[0]) << 16)
            | (u64::from(bytes[len / 2]) << 8)
            | u64::from(bytes[len - 1]);
    }
    fold(a ^ K1, b ^ seed)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of every length up to 40 (each word-reading branch of the hash, and the
    /// 16-byte loop), many alike but for one byte.
    fn names() -> Vec<String> {
        let mut names: Vec<String> = (0..=40).map(|n| "s".repeat(n)).collect();
        names.extend((0..2_000).map(|i| format!("srv-{i:05}")));
        names.extend((0..200).map(|i| format!("github-enterprise-{i}-mcp.example.com/{i}")));
        names
    }

    #[test]
    fn every_name_finds_its_own_value_and_no_other_name_finds_one() {
        let names = names();
        let table = ByName::new(
            names
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, n)| (n, i))
                .collect(),
        );
        for (i, name) in names.iter().enumerate() {
            assert_eq!(table.get(name), Some(&i), "{name:?}");
        }
        let long = "s".repeat(41);
        for unknown in [
            "",
            "srv-02000",
            "srv-0000",
            "srv-000000",
            "S",
            long.as_str(),
            "github",
        ] {
            let known = names.iter().position(|n| n == unknown);
            assert_eq!(table.get(unknown), known.as_ref(), "{unknown:?}");
        }
        assert_eq!(table.values().count(), names.len());
    }

    #[test]
    fn an_empty_table_finds_nothing_and_a_name_given_twice_keeps_its_last_value() {
        let empty: ByName<u8> = ByName::new(Vec::new());
        assert_eq!(empty.get("srv"), None);
        let table = ByName::new(vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 3)]);
        assert_eq!((table.get("a"), table.get("b")), (Some(&3), Some(&2)));
        assert_eq!(table.values().count(), 2);
    }

    #[test]
    fn names_that_differ_in_one_byte_hash_apart() {
        // Every byte of a name moves its hash, at every length the hash reads differently.
        for len in 1..=40 {
            let base = vec![b'a'; len];
            for at in 0..len {
                let mut other = base.clone();
                other[at] = b'b';
                assert_ne!(
                    name_hash(&base),
                    name_hash(&other),
                    "length {len}, byte {at}"
                );
            }
        }
        assert_ne!(name_hash(b"ab"), name_hash(b"ab\0"));
    }
}
