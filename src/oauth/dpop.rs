//! DPoP (RFC 9449) on the client side: one ES256 key per server, proofs for token and
//! resource requests, and the nonces servers hand out.
//!
//! - The key is P-256 (`p256`, already in the tree through the test server's JWT crate):
//!   ES256 is the one algorithm every DPoP server must accept in practice, and the MCP DPoP
//!   extension names it. Its private half is 32 bytes, held in memory by the caller (`connect`
//!   makes one per run; the daemon keeps one per server in the store, with the tokens bound
//!   to it); `Debug` shows only the public thumbprint.
//! - A proof is a fresh JWS each time: a random `jti`, `iat` now, `htm`/`htu` of the request
//!   (`htu` without query and fragment, §4.2), `ath` = base64url(SHA-256(access token)) on
//!   resource requests, and the server's `nonce` when one is known.
//! - Nonces (§8, §9) are remembered per `htu`: the token endpoint and the MCP endpoint are
//!   different servers in RFC 9449's picture and hand out their own. A `DPoP-Nonce` header on
//!   any answer replaces the remembered one; a `use_dpop_nonce` refusal is retried once with
//!   the new nonce (the retry is the caller's, bounded to one per request). The book is bounded
//!   ([`MAX_NONCES`] entries).
//! - Proofs are short-lived credentials: the `DPoP` header is redacted in every log line
//!   (telemetry/redact.rs), and no proof is ever logged or put into an error.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand::RngCore as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::challenge::BearerChallenge;
use super::metadata::Discovery;

/// The JWS algorithm of every proof.
pub const ALG: &str = "ES256";
/// Nonces remembered at most (one per endpoint used; a handful in practice).
pub const MAX_NONCES: usize = 32;

/// The `DPoP-Nonce` response header.
pub const NONCE_HEADER: &str = "dpop-nonce";

/// An ES256 key pair for DPoP proofs.
pub struct DpopKey {
    signing: SigningKey,
    /// The public JWK: `{"crv","kty","x","y"}`.
    jwk: serde_json::Value,
    thumbprint: String,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &ALG)
            .field("jkt", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// Bytes given as a private key that are not a P-256 scalar.
#[derive(Debug, thiserror::Error)]
#[error("the DPoP key is not a P-256 private key: {0}")]
pub struct BadKey(&'static str);

impl DpopKey {
    /// A new random key.
    pub fn generate() -> Self {
        // A random 32-byte string is a valid scalar except with probability ~2^-32; the loop
        // is bounded all the same.
        for _ in 0..16 {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(key) = Self::from_secret_bytes(&bytes) {
                return key;
            }
        }
        unreachable!("16 random 32-byte strings in a row were not P-256 scalars")
    }

    /// The key whose private scalar is `bytes` (32 bytes, big-endian), as
    /// [`Self::secret_bytes`] gives it.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, BadKey> {
        if bytes.len() != 32 {
            return Err(BadKey("it is not 32 bytes long"));
        }
        let signing =
            SigningKey::from_slice(bytes).map_err(|_| BadKey("it is out of the curve's range"))?;
        let point = signing.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(BadKey("its public point is the identity"));
        };
        let jwk = json!({
            "crv": "P-256",
            "kty": "EC",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        });
        // RFC 7638: the required members in lexicographic order, no whitespace; serde_json
        // writes an object's keys sorted (no preserve_order feature) and compact.
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        Ok(DpopKey {
            signing,
            jwk,
            thumbprint,
        })
    }

    /// The private scalar (for a caller that keeps the key). Never log it.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes().into()
    }

    /// The private scalar as text (base64url), as the store keeps it. A secret: it is
    /// registered with the log scrubber.
    pub fn encoded_secret(&self) -> String {
        let encoded = URL_SAFE_NO_PAD.encode(self.secret_bytes());
        crate::telemetry::secrets::register(&encoded);
        encoded
    }

    /// The key [`Self::encoded_secret`] gave, checked against the thumbprint stored beside it
    /// (a key that does not match it is not the one the tokens are bound to).
    pub fn from_encoded_secret(encoded: &str, jkt: &str) -> Result<Self, BadKey> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded.trim())
            .map_err(|_| BadKey("it is not base64url"))?;
        let key = Self::from_secret_bytes(&bytes)?;
        if key.thumbprint != jkt {
            return Err(BadKey("its thumbprint is not the one stored beside it"));
        }
        Ok(key)
    }

    /// RFC 7638 SHA-256 thumbprint of the public key (the `cnf.jkt` of bound tokens).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A fresh proof for `method` at `url`; `access_token` adds `ath` (resource requests),
    /// `nonce` the server's nonce.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: SystemTime,
    ) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": ALG, "jwk": self.jwk});
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut claims = json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": method,
            "htu": htu(url),
            "iat": iat,
        });
        if let Some(token) = access_token {
            claims["ath"] = ath(token).into();
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// Whether a server's requests use DPoP, and whether it is required (see
/// [`Dpop::with_required`]): used when the config asks for it (`"dpop": true`) or the resource
/// requires it, by its metadata (`dpop_bound_access_tokens_required`) or by challenging only
/// with the DPoP scheme (what the MCP DPoP extension's servers do). `None`: plain Bearer.
pub fn policy(
    configured: bool,
    discovery: &Discovery,
    challenge: Option<&BearerChallenge>,
) -> Option<bool> {
    let required = challenge.is_some_and(|c| c.dpop_only)
        || discovery
            .protected_resource
            .as_ref()
            .is_some_and(|p| p.dpop_bound_access_tokens_required);
    if !(configured || required) {
        return None;
    }
    if let Some(algs) = &discovery
        .authorization_server
        .dpop_signing_alg_values_supported
        && !algs.iter().any(|a| a == ALG)
    {
        tracing::warn!(
            algs = algs.join(" "),
            "the authorization server does not list ES256 for DPoP proofs; trying ES256 anyway"
        );
    }
    Some(required)
}

/// Whether a `token_type` says the token is DPoP-bound (RFC 9449 §5; case-insensitive, as
/// RFC 6749 §7.1 has token types).
pub fn is_dpop_type(token_type: &str) -> bool {
    token_type.eq_ignore_ascii_case("dpop")
}

/// The `htu` of a request URL: without query and fragment (RFC 9449 §4.2).
pub fn htu(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// base64url(SHA-256(access token)), the `ath` claim.
pub fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// One server's DPoP state: its key and the nonces its endpoints handed out. Cheap to clone
/// (shared), safe to use from several tasks.
#[derive(Clone)]
pub struct Dpop {
    key: Arc<DpopKey>,
    nonces: Arc<Mutex<HashMap<String, String>>>,
    required: bool,
}

impl fmt::Debug for Dpop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dpop")
            .field("key", &self.key)
            .field("required", &self.required)
            .finish()
    }
}

impl Dpop {
    pub fn new(key: DpopKey) -> Self {
        Dpop {
            key: Arc::new(key),
            nonces: Arc::new(Mutex::new(HashMap::new())),
            required: false,
        }
    }

    /// Marks DPoP as required by the resource (its metadata says
    /// `dpop_bound_access_tokens_required`, or it challenges only with the DPoP scheme): a
    /// Bearer token from the authorization server is then refused instead of used.
    pub fn with_required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn key(&self) -> &DpopKey {
        &self.key
    }

    /// A proof for `method` at `url` with the nonce remembered for that `htu`, if any.
    pub fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> String {
        let nonce = self.nonce(url);
        self.key.proof(
            method,
            url,
            access_token,
            nonce.as_deref(),
            SystemTime::now(),
        )
    }

    /// [`Self::proof`] as a `DPoP` header value, marked sensitive (as `bearer_auth` marks its
    /// header) so HTTP layers keep it out of their own debug output. A proof is base64url and
    /// dots: always a valid header value.
    pub fn header(&self, method: &str, url: &str, access_token: Option<&str>) -> http::HeaderValue {
        let mut value = http::HeaderValue::from_str(&self.proof(method, url, access_token))
            .expect("a JWS in compact form is a valid header value");
        value.set_sensitive(true);
        value
    }

    pub fn nonce(&self, url: &str) -> Option<String> {
        self.book().get(htu(url)).cloned()
    }

    /// Remembers the `DPoP-Nonce` of an answer from `url`, if it carries one. Returns whether
    /// it did (a `use_dpop_nonce` refusal without one cannot be retried usefully).
    pub fn remember_nonce(&self, url: &str, headers: &http::HeaderMap) -> bool {
        let Some(nonce) = headers
            .get(NONCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|n| !n.is_empty())
        else {
            return false;
        };
        let mut book = self.book();
        if book.len() >= MAX_NONCES && !book.contains_key(htu(url)) {
            book.clear();
        }
        book.insert(htu(url).to_string(), nonce.to_string());
        true
    }

    fn book(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.nonces.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_carries_what_rfc_9449_asks_and_verifies() {
        use p256::ecdsa::signature::Verifier as _;
        let key = DpopKey::generate();
        let proof = key.proof(
            "POST",
            "https://as.example/token?x=1#f",
            Some("at"),
            Some("n1"),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        );
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert!(
            header["jwk"].get("d").is_none(),
            "no private key in the proof"
        );
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://as.example/token");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nonce"], "n1");
        assert_eq!(claims["ath"], ath("at"));
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        key.signing
            .verifying_key()
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the proof verifies with its own jwk");
        let again = key.proof(
            "POST",
            "https://as.example/token",
            None,
            None,
            SystemTime::now(),
        );
        assert_ne!(
            decode(again.split('.').nth(1).unwrap())["jti"],
            claims["jti"]
        );
    }

    #[test]
    fn a_stored_key_comes_back_the_same_and_debug_hides_it() {
        let key = DpopKey::generate();
        let again = DpopKey::from_secret_bytes(&key.secret_bytes()).unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint());
        let stored = DpopKey::from_encoded_secret(&key.encoded_secret(), key.thumbprint()).unwrap();
        assert_eq!(stored.thumbprint(), key.thumbprint());
        let other = DpopKey::generate();
        assert!(
            DpopKey::from_encoded_secret(&key.encoded_secret(), other.thumbprint()).is_err(),
            "a key whose thumbprint differs from the stored one is refused"
        );
        assert!(DpopKey::from_encoded_secret("not base64!", key.thumbprint()).is_err());
        let shown = format!("{key:?}");
        let secret = URL_SAFE_NO_PAD.encode(key.secret_bytes());
        assert!(!shown.contains(&secret) && shown.contains(key.thumbprint()));
        assert!(
            DpopKey::from_secret_bytes(&[0u8; 32]).is_err(),
            "zero is no scalar"
        );
        assert!(DpopKey::from_secret_bytes(&[1u8; 31]).is_err());
    }

    #[test]
    fn the_thumbprint_is_rfc_7638() {
        // RFC 7638 §3.1's canonical form for EC keys: crv, kty, x, y in that order.
        let key = DpopKey::generate();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            key.jwk["x"].as_str().unwrap(),
            key.jwk["y"].as_str().unwrap()
        );
        assert_eq!(
            key.thumbprint(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn nonces_are_kept_per_endpoint_and_bounded() {
        let dpop = Dpop::new(DpopKey::generate());
        let mut headers = http::HeaderMap::new();
        assert!(!dpop.remember_nonce("https://as.example/token", &headers));
        headers.insert(NONCE_HEADER, "n-as".parse().unwrap());
        assert!(dpop.remember_nonce("https://as.example/token?a=b", &headers));
        assert_eq!(
            dpop.nonce("https://as.example/token").as_deref(),
            Some("n-as")
        );
        assert_eq!(dpop.nonce("https://rs.example/mcp"), None);
        for i in 0..(MAX_NONCES * 2) {
            dpop.remember_nonce(&format!("https://rs{i}.example/mcp"), &headers);
        }
        assert!(dpop.book().len() <= MAX_NONCES);
    }
}
