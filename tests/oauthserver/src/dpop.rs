//! DPoP (RFC 9449) as a server checks it: proof validation (§4.3), key thumbprints (RFC 7638),
//! server nonces (§8, §9) and the refusal reasons the stats count.
//!
//! Only ES256 is accepted: it is what the client under test signs with, and a server that
//! advertises exactly what it checks keeps the test honest. `iat` is compared with the wall
//! clock, not the adjustable test clock: the test clock moves token lifetimes, and the
//! client signing the proof knows nothing of it.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::state::random_token;

/// How far a proof's `iat` may be from the server's wall clock, either way (seconds).
pub const IAT_WINDOW_S: i64 = 300;

/// A proof that passed every check of §4.3 except replay and nonce, which need the state.
#[derive(Debug, Clone)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof's public key, base64url.
    pub jkt: String,
    pub jti: String,
    pub nonce: Option<String>,
    pub ath: Option<String>,
}

/// Why a proof was refused, as the stats count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, wrong `typ`/`alg`/`htm`/`htu`/`iat`/`ath`, bad signature, several headers.
    BadProof,
    /// A `jti` seen before.
    Replay,
    /// No nonce, or not the current one.
    Nonce,
    /// A key other than the one the token (or refresh token) is bound to.
    KeyMismatch,
    /// No proof where one is required.
    Missing,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadProof => "bad_proof",
            Refusal::Replay => "replay",
            Refusal::Nonce => "nonce",
            Refusal::KeyMismatch => "key_mismatch",
            Refusal::Missing => "missing",
        }
    }
}

/// The URI a proof's `htu` is compared with: no query, no fragment (§4.3 item 9).
pub fn htu_of(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url[..end].to_string()
}

/// base64url(SHA-256(access token)): the `ath` claim of a resource request (§4.2).
pub fn ath_of(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// RFC 7638 thumbprint of an EC P-256 JWK: SHA-256 over the required members in
/// lexicographic order, without whitespace.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let (crv, kty, x, y) = (
        jwk.get("crv")?.as_str()?,
        jwk.get("kty")?.as_str()?,
        jwk.get("x")?.as_str()?,
        jwk.get("y")?.as_str()?,
    );
    let canonical = serde_json::json!({"crv": crv, "kty": kty, "x": x, "y": y}).to_string();
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// Checks a proof's syntax and signature and its `htm`, `htu` and `iat` (§4.3 items 1-10).
/// `now_s` is the wall clock in unix seconds.
pub fn verify(proof: &str, method: &str, url: &str, now_s: i64) -> Result<Proof, String> {
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the DPoP proof is not a compact JWS".into());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
    let json = |part: &str| decode(part).and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let header = json(h).ok_or("the DPoP proof header is not base64url JSON")?;
    let payload = json(p).ok_or("the DPoP proof payload is not base64url JSON")?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err("typ must be dpop+jwt".into());
    }
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err("alg must be ES256".into());
    }
    let jwk = header.get("jwk").ok_or("the proof has no jwk header")?;
    if jwk.get("d").is_some() {
        return Err("the jwk must not hold a private key".into());
    }
    if jwk.get("kty").and_then(Value::as_str) != Some("EC")
        || jwk.get("crv").and_then(Value::as_str) != Some("P-256")
    {
        return Err("the jwk must be an EC P-256 key".into());
    }
    let coordinate = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(decode)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
    };
    let (Some(x), Some(y)) = (coordinate("x"), coordinate("y")) else {
        return Err("the jwk coordinates are not 32-byte base64url values".into());
    };
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    let key =
        VerifyingKey::from_encoded_point(&point).map_err(|_| "the jwk is not a P-256 point")?;
    let signature = decode(s)
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or("the proof signature is not a 64-byte ES256 signature")?;
    key.verify(format!("{h}.{p}").as_bytes(), &signature)
        .map_err(|_| "the DPoP proof signature does not verify")?;
    let claim = |name: &str| payload.get(name).and_then(Value::as_str).map(String::from);
    let jti = claim("jti")
        .filter(|j| !j.is_empty())
        .ok_or("the proof has no jti")?;
    if claim("htm").as_deref() != Some(method) {
        return Err(format!("htm must be {method}"));
    }
    let htu = claim("htu").ok_or("the proof has no htu")?;
    if htu.contains(['?', '#']) || htu != htu_of(url) {
        return Err(format!("htu must be {}", htu_of(url)));
    }
    let iat = payload
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("the proof has no numeric iat")?;
    if (now_s - iat).abs() > IAT_WINDOW_S {
        return Err("the proof's iat is outside the accepted window".into());
    }
    Ok(Proof {
        jkt: thumbprint(jwk).ok_or("the jwk has no thumbprint")?,
        jti,
        nonce: claim("nonce"),
        ath: claim("ath"),
    })
}

/// The `cnf.jkt` of an access token this server signed (read after its signature checked).
pub fn token_jkt(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.pointer("/cnf/jkt")?.as_str().map(String::from)
}

/// How the server hands out nonces (§8, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRotation {
    /// Each nonce is good for one request; every answer carries the next one.
    EveryRequest,
    /// A nonce is good until this many milliseconds after it was issued.
    EveryMs(u64),
}

/// One server role's nonce (the token endpoint and the MCP endpoint keep their own).
#[derive(Debug, Default)]
pub struct NonceBook {
    current: Option<(String, i64)>,
}

impl NonceBook {
    /// The nonce valid now, rotated first when its time is up.
    pub fn current(&mut self, rotation: NonceRotation, now_ms: i64) -> String {
        let stale = match (&self.current, rotation) {
            (None, _) => true,
            (Some((_, issued)), NonceRotation::EveryMs(ms)) => now_ms - issued >= ms as i64,
            (Some(_), NonceRotation::EveryRequest) => false,
        };
        if stale {
            self.current = Some((random_token("nonce_"), now_ms));
        }
        self.current.as_ref().expect("set above").0.clone()
    }

    /// Whether `presented` is the valid nonce; a nonce good for one request is spent here.
    pub fn accept(
        &mut self,
        rotation: NonceRotation,
        presented: Option<&str>,
        now_ms: i64,
    ) -> bool {
        let current = self.current(rotation, now_ms);
        let ok = presented == Some(current.as_str());
        if ok && rotation == NonceRotation::EveryRequest {
            self.current = None;
        }
        ok
    }
}

/// `jti`s seen within the `iat` window, so a replay is refused; older ones are forgotten (a
/// proof that old is refused for its `iat` anyway), which bounds the memory.
#[derive(Debug, Default)]
pub struct ReplayBook {
    seen: HashMap<String, i64>,
}

impl ReplayBook {
    /// Records `jti`; false when it was seen before.
    pub fn first_use(&mut self, jti: &str, now_s: i64) -> bool {
        self.seen.retain(|_, at| now_s - *at <= 2 * IAT_WINDOW_S);
        self.seen.insert(jti.to_string(), now_s).is_none()
    }
}

/// The server's wall clock in unix seconds (for `iat` and replay).
pub fn wall_clock_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Which endpoint checks a proof: each keeps its own nonce (an authorization server and a
/// resource server are separate servers in RFC 9449's picture).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Token,
    Mcp,
}

/// A refused proof: why (for the stats) and what the error description says.
#[derive(Debug, Clone)]
pub struct Refused {
    pub why: Refusal,
    pub description: String,
}

impl crate::state::Inner {
    /// Checks the request's `DPoP` header, if any (`Ok(None)`: no proof), for `method` at
    /// `url`: §4.3, then the nonce when the server asks for one, then replay. Every refusal
    /// is counted in `Stats::dpop_refusals`; every proof received is kept in
    /// `Secrets::dpop_proofs` (tests prove none leaks).
    pub fn check_dpop(
        &mut self,
        config: &crate::config::Config,
        headers: &axum::http::HeaderMap,
        role: Role,
        method: &str,
        url: &str,
        now_ms: i64,
    ) -> Result<Option<Proof>, Refused> {
        let values: Vec<&str> = headers
            .get_all("dpop")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let outcome = match values.as_slice() {
            [] => return Ok(None),
            [one] if !one.contains(',') => {
                self.secrets.dpop_proofs.push(one.to_string());
                self.check_one(config, role, one, method, url, now_ms)
            }
            _ => Err(Refused {
                why: Refusal::BadProof,
                description: "more than one DPoP proof".into(),
            }),
        };
        if let Err(refused) = &outcome {
            self.count_dpop_refusal(refused.why);
        }
        outcome.map(Some)
    }

    fn check_one(
        &mut self,
        config: &crate::config::Config,
        role: Role,
        proof: &str,
        method: &str,
        url: &str,
        now_ms: i64,
    ) -> Result<Proof, Refused> {
        let now_s = wall_clock_s();
        let proof = verify(proof, method, url, now_s).map_err(|description| Refused {
            why: Refusal::BadProof,
            description,
        })?;
        if let Some(rotation) = config.dpop_nonce {
            let book = match role {
                Role::Token => &mut self.dpop_token_nonce,
                Role::Mcp => &mut self.dpop_mcp_nonce,
            };
            if !book.accept(rotation, proof.nonce.as_deref(), now_ms) {
                return Err(Refused {
                    why: Refusal::Nonce,
                    description: "the authorization server requires a DPoP nonce".into(),
                });
            }
        }
        if !self.dpop_jtis.first_use(&proof.jti, now_s) {
            return Err(Refused {
                why: Refusal::Replay,
                description: "the DPoP proof was used before (jti replay)".into(),
            });
        }
        Ok(proof)
    }

    pub fn count_dpop_refusal(&mut self, why: Refusal) {
        *self
            .stats
            .dpop_refusals
            .entry(why.as_str().to_string())
            .or_default() += 1;
    }

    /// The nonce to announce in a `DPoP-Nonce` header, when the server uses nonces.
    pub fn dpop_nonce_for(
        &mut self,
        config: &crate::config::Config,
        role: Role,
        now_ms: i64,
    ) -> Option<String> {
        let rotation = config.dpop_nonce?;
        let book = match role {
            Role::Token => &mut self.dpop_token_nonce,
            Role::Mcp => &mut self.dpop_mcp_nonce,
        };
        Some(book.current(rotation, now_ms))
    }
}
