//! What the assertion grants need besides the endpoint: where public keys come from (a JWKS
//! given inline or fetched from a `jwks_uri`), who is trusted to sign what, the IdP's policy,
//! and the checks every signed JWT goes through (algorithm, key, signature). The grants
//! themselves are in `routes/grants.rs`.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

// The grant types, token types and assertion type of these grants (a test names them too).
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// The `typ` header of an ID-JAG.
pub const ID_JAG_TYP: &str = "oauth-id-jag+jwt";

/// The signing algorithms accepted on client assertions and assertion grants (and listed in
/// `token_endpoint_auth_signing_alg_values_supported`).
pub const SIGNING_ALGS: [&str; 2] = ["ES256", "RS256"];

/// Where a party's public keys are.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// A JWKS document (`{"keys": [...]}`), as registered (RFC 7591 `jwks`).
    Jwks(Value),
    /// A URL serving the JWKS (RFC 7591 `jwks_uri`), fetched on every use (so a test can
    /// rotate keys), within [`FETCH_TIMEOUT`].
    JwksUri(String),
}

/// How long fetching a `jwks_uri` may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read from a `jwks_uri`.
const MAX_JWKS_BYTES: usize = 64 * 1024;

impl KeySource {
    /// The JWKS document: the inline one, or the one its URI serves now.
    pub async fn resolve(&self) -> Result<Value, String> {
        match self {
            KeySource::Jwks(jwks) => Ok(jwks.clone()),
            KeySource::JwksUri(uri) => fetch_jwks(uri).await,
        }
    }
}

async fn fetch_jwks(uri: &str) -> Result<Value, String> {
    let url = url::Url::parse(uri).map_err(|_| format!("jwks_uri {uri:?} is not a URL"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!(
            "jwks_uri {uri} must be https (plain http on loopback only)"
        ));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch jwks_uri {uri}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "jwks_uri {uri} answered HTTP {}",
            response.status()
        ));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("cannot read jwks_uri {uri}: {e}"))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "jwks_uri {uri} served more than {MAX_JWKS_BYTES} bytes"
        ));
    }
    serde_json::from_slice(&body).map_err(|_| format!("jwks_uri {uri} did not serve JSON"))
}

/// A pre-registered `private_key_jwt` client (RFC 7523 §2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtClient {
    pub client_id: String,
    pub keys: KeySource,
}

impl JwtClient {
    /// `client_id` with the test ES256 key's JWKS (`test_keys::CLIENT_ES256_PEM` signs).
    pub fn es256(client_id: &str) -> JwtClient {
        JwtClient {
            client_id: client_id.into(),
            keys: KeySource::Jwks(crate::test_keys::client_es256_jwks()),
        }
    }

    /// `client_id` with the test RS256 key's JWKS (`test_keys::CLIENT_RS256_PEM` signs).
    pub fn rs256(client_id: &str) -> JwtClient {
        JwtClient {
            client_id: client_id.into(),
            keys: KeySource::Jwks(crate::test_keys::client_rs256_jwks()),
        }
    }
}

/// An issuer whose JWTs an assertion grant accepts: an enterprise IdP's ID-JAGs, or a
/// platform's workload JWTs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedIssuer {
    /// Compared exactly with the JWT's `iss`.
    pub issuer: String,
    pub keys: KeySource,
    /// One more `aud` accepted besides this server's issuer and token endpoint (a Kubernetes
    /// projected token's configured audience, say).
    pub audience: Option<String>,
}

impl TrustedIssuer {
    pub fn new(issuer: impl Into<String>, keys: KeySource) -> Self {
        TrustedIssuer {
            issuer: issuer.into(),
            keys,
            audience: None,
        }
    }

    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }
}

/// Which RFC 8693 exchanges for an ID-JAG the IdP grants (its administrator's policy); the
/// others are refused with `access_denied`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdpPolicy {
    #[default]
    AllowAll,
    DenyAll,
    /// Only ID-JAGs for these authorization servers (`audience`).
    AllowAudiences(Vec<String>),
}

impl IdpPolicy {
    pub fn allows(&self, audience: &str) -> bool {
        match self {
            IdpPolicy::AllowAll => true,
            IdpPolicy::DenyAll => false,
            IdpPolicy::AllowAudiences(allowed) => allowed.iter().any(|a| a == audience),
        }
    }
}

/// Why a signed JWT was refused, as the stats count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Not a JWT, an algorithm not accepted, a missing claim.
    Malformed,
    /// No key of the signer verifies it (or none could be had).
    Signature,
    UntrustedIssuer,
    Audience,
    Expired,
    /// A single-use `jti` presented again.
    Replay,
    /// The `client_id` (ID-JAG), `iss`/`sub` (client assertion) or resource do not match.
    Mismatch,
    /// An ID-JAG without `typ: oauth-id-jag+jwt`.
    Typ,
}

impl JwtRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtRefusal::Malformed => "malformed",
            JwtRefusal::Signature => "signature",
            JwtRefusal::UntrustedIssuer => "untrusted_issuer",
            JwtRefusal::Audience => "audience",
            JwtRefusal::Expired => "expired",
            JwtRefusal::Replay => "replay",
            JwtRefusal::Mismatch => "mismatch",
            JwtRefusal::Typ => "typ",
        }
    }
}

/// A refusal and the `error_description` that explains it.
pub type Refused = (JwtRefusal, String);

/// The header and claims of a JWT, read without checking anything (to find who signed it).
pub fn peek(token: &str) -> Option<(Header, Value)> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let payload = token.split('.').nth(1)?;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    Some((header, serde_json::from_slice(&bytes).ok()?))
}

/// Checks a JWT's algorithm (ES256 or RS256) and signature against a JWKS: the key named by
/// `kid`, else any key of the algorithm's type. Claims are the caller's to check.
pub fn verify(token: &str, jwks: &Value) -> Result<(Header, Value), Refused> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        (
            JwtRefusal::Malformed,
            "the assertion is not a JWT".to_string(),
        )
    })?;
    let (alg, ec) = match header.alg {
        Algorithm::ES256 => (Algorithm::ES256, true),
        Algorithm::RS256 => (Algorithm::RS256, false),
        other => {
            return Err((
                JwtRefusal::Malformed,
                format!("signing algorithm {other:?} is not accepted (ES256, RS256)"),
            ));
        }
    };
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|_| {
        (
            JwtRefusal::Signature,
            "the signer's JWKS does not parse".to_string(),
        )
    })?;
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.required_spec_claims.clear();
    let candidates = set.keys.iter().filter(|jwk| match &header.kid {
        Some(kid) => jwk.common.key_id.as_deref() == Some(kid.as_str()),
        None => match jwk.algorithm {
            AlgorithmParameters::EllipticCurve(_) => ec,
            AlgorithmParameters::RSA(_) => !ec,
            _ => false,
        },
    });
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if let Ok(data) = jsonwebtoken::decode::<Value>(token, &key, &validation) {
            return Ok((header, data.claims));
        }
    }
    Err((
        JwtRefusal::Signature,
        "no key of the signer verifies the assertion's signature".to_string(),
    ))
}

/// A claim as a string.
pub fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// `aud` as a list (RFC 7519 §4.1.3: a string or an array of strings).
pub fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `aud` names one of `accepted`, a trailing slash aside.
pub fn audience_matches(claims: &Value, accepted: &[&str]) -> bool {
    let trim = |s: &str| s.trim_end_matches('/').to_string();
    audiences(claims)
        .iter()
        .any(|a| accepted.iter().any(|ok| trim(ok) == trim(a)))
}

/// `exp` in unix seconds, required.
pub fn expiry_s(claims: &Value) -> Result<i64, Refused> {
    claims.get("exp").and_then(Value::as_i64).ok_or((
        JwtRefusal::Malformed,
        "the assertion has no exp".to_string(),
    ))
}

/// Single-use `jti`s (RFC 7523 §3 item 7), each remembered until its JWT expires.
#[derive(Debug, Default)]
pub struct JtiBook {
    seen: HashMap<String, i64>,
}

impl JtiBook {
    /// Records `jti` (of a JWT expiring at `exp_s`); false when it was presented before.
    pub fn first_use(&mut self, jti: &str, exp_s: i64, now_s: i64) -> bool {
        self.seen.retain(|_, exp| *exp >= now_s);
        self.seen.insert(jti.to_string(), exp_s).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_allow_what_they_name() {
        assert!(IdpPolicy::AllowAll.allows("https://as.example"));
        assert!(!IdpPolicy::DenyAll.allows("https://as.example"));
        let some = IdpPolicy::AllowAudiences(vec!["https://as.example".into()]);
        assert!(some.allows("https://as.example"));
        assert!(!some.allows("https://other.example"));
        let json = serde_json::to_value(&some).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"allow_audiences": ["https://as.example"]})
        );
        assert_eq!(serde_json::from_value::<IdpPolicy>(json).unwrap(), some);
    }

    #[test]
    fn a_jti_is_used_once_until_it_expires() {
        let mut book = JtiBook::default();
        assert!(book.first_use("a", 100, 50));
        assert!(!book.first_use("a", 100, 60));
        assert!(book.first_use("b", 100, 60));
        // Expired entries are forgotten: the JWT itself is refused as expired by then.
        assert!(book.first_use("a", 200, 150));
    }

    #[test]
    fn audiences_are_a_string_or_an_array() {
        let one = serde_json::json!({"aud": "https://as.example/"});
        assert!(audience_matches(&one, &["https://as.example"]));
        let many = serde_json::json!({"aud": ["x", "https://as.example/token"]});
        assert!(audience_matches(&many, &["https://as.example/token"]));
        assert!(!audience_matches(&many, &["https://as.example"]));
        assert!(!audience_matches(&serde_json::json!({}), &["x"]));
    }
}
