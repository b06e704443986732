//! RS256 access tokens: issued as JWTs so a resource server can validate them offline, and
//! published through `/jwks.json`.
//!
//! The key pair is a fixed test key shipped in `keys/`: tokens survive a restart of the test
//! server, and no key generation slows down every test. It protects nothing real.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};

const TEST_KEY_PEM: &str = include_str!("../keys/test-signing-key.pem");
const KEY_ID: &str = "oauth-test-server-1";

/// The claims of every access token this server issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    /// Whole seconds; rounded up so the token never expires before its announced `expires_in`.
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
}

/// Signs and checks access tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwks: serde_json::Value,
}

impl Signer {
    pub fn test_key() -> Self {
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(TEST_KEY_PEM)
            .expect("the bundled test key is a valid PKCS#8 RSA key");
        let n = URL_SAFE_NO_PAD.encode(private.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(private.e().to_bytes_be());
        let decoding =
            DecodingKey::from_rsa_components(&n, &e).expect("components of a valid RSA key");
        let encoding = EncodingKey::from_rsa_pem(TEST_KEY_PEM.as_bytes())
            .expect("the bundled test key is a valid RSA PEM");
        let jwks = serde_json::json!({
            "keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": KEY_ID, "n": n, "e": e}]
        });
        Signer {
            encoding,
            decoding,
            jwks,
        }
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// Signs any claims set (the access token claims, or those plus `cnf` for DPoP).
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("RS256 signing cannot fail")
    }

    /// Signs claims with an explicit `typ` header (`oauth-id-jag+jwt` for an ID-JAG).
    pub fn sign_typed<C: Serialize>(&self, claims: &C, typ: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.to_string());
        header.typ = Some(typ.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("RS256 signing cannot fail")
    }

    /// The claims of a JWT this key signed, whatever they are; `None` when the signature does
    /// not verify. Every claim is the caller's to check.
    pub fn verified_claims(&self, token: &str) -> Option<serde_json::Value> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }

    /// Checks signature, issuer and audience. Expiry is checked by the caller against the
    /// server's own (adjustable) clock, with millisecond precision and no leeway.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<AccessClaims, String> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    format!("the token's audience is not {audience}")
                }
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                    format!("the token's issuer is not {issuer}")
                }
                _ => "the token is not a valid access token of this server".to_string(),
            })
    }

    /// Reads the claims of a token this server signed, whatever its age (for revocation).
    pub fn claims_ignoring_expiry(&self, token: &str) -> Option<AccessClaims> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }
}
