//! Key pairs committed for tests, which protect nothing: the client keys a `private_key_jwt`
//! client under test signs its assertions with (PEM, in the forms a user may hold them), their
//! public JWKs to register at the server, and the platform key of [`crate::Platform`].

use serde_json::{Value, json};

/// An ES256 (P-256) client key, PKCS#8.
pub const CLIENT_ES256_PEM: &str = include_str!("../keys/client-es256.pem");
/// The same key in SEC1 form (`BEGIN EC PRIVATE KEY`), as `openssl ecparam -genkey` writes it.
pub const CLIENT_ES256_SEC1_PEM: &str = include_str!("../keys/client-es256-sec1.pem");
/// An RS256 (RSA 2048) client key, PKCS#8.
pub const CLIENT_RS256_PEM: &str = include_str!("../keys/client-rs256.pem");
/// The same key in PKCS#1 form (`BEGIN RSA PRIVATE KEY`).
pub const CLIENT_RS256_PKCS1_PEM: &str = include_str!("../keys/client-rs256-pkcs1.pem");

pub(crate) const PLATFORM_ES256_PEM: &str = include_str!("../keys/platform-es256.pem");

const CLIENT_ES256_JWK: &str = include_str!("../keys/client-es256.jwk.json");
const CLIENT_RS256_JWK: &str = include_str!("../keys/client-rs256.jwk.json");
const PLATFORM_ES256_JWK: &str = include_str!("../keys/platform-es256.jwk.json");

fn jwks(jwk: &str) -> Value {
    let jwk: Value = serde_json::from_str(jwk).expect("a committed JWK is JSON");
    json!({"keys": [jwk]})
}

/// The public half of [`CLIENT_ES256_PEM`] as a JWK Set (`kid: client-es256`).
pub fn client_es256_jwks() -> Value {
    jwks(CLIENT_ES256_JWK)
}

/// The public half of [`CLIENT_RS256_PEM`] as a JWK Set (`kid: client-rs256`).
pub fn client_rs256_jwks() -> Value {
    jwks(CLIENT_RS256_JWK)
}

/// The platform's public key as a JWK Set (`kid: platform-1`).
pub fn platform_jwks() -> Value {
    jwks(PLATFORM_ES256_JWK)
}
