//! A client's private key for `private_key_jwt` (RFC 7523 §2.2), read from a PEM file, and the
//! client assertions it signs. ES256 (P-256, PKCS#8) and RS256 (RSA, PKCS#8 or PKCS#1).
//!
//! The key never leaves this type: `Debug` shows the algorithm and key ID only, errors name
//! the file and what is wrong with it, never its content. A key is checked when it is loaded
//! (a probe signature), so a bad file fails at start, not at the first token request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// How long a client assertion is valid: long enough for one request, short enough that a
/// leaked one is useless (RFC 7523 §3 item 4 leaves it to the client).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The largest key file read: a PEM private key is a few kilobytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The signing algorithms a client key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    Es256,
    Rs256,
}

impl SigningAlg {
    /// `ES256` / `RS256` (case-insensitive), as configs and `token_endpoint_auth_signing_alg_
    /// values_supported` write them.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "ES256" => Some(Self::Es256),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Self::Es256 => Algorithm::ES256,
            Self::Rs256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client key cannot be used. Names the file (or "the key") and the fix; never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientKeyError {
    #[error("cannot read the client key file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "{source_name} is not a PEM private key (expected -----BEGIN PRIVATE KEY----- or \
         -----BEGIN RSA PRIVATE KEY-----)"
    )]
    NotPem { source_name: String },
    #[error(
        "{source_name} is an EC key in SEC1 form (BEGIN EC PRIVATE KEY); convert it to PKCS#8: \
         openssl pkcs8 -topk8 -nocrypt -in KEY.pem -out KEY.p8.pem"
    )]
    Sec1 { source_name: String },
    #[error(
        "{source_name} is encrypted; give an unencrypted PKCS#8 key (openssl pkcs8 -topk8 \
         -nocrypt -in KEY.pem -out KEY.p8.pem) and protect the file instead"
    )]
    Encrypted { source_name: String },
    #[error(
        "{source_name} cannot sign {alg}: {reason} (ES256 needs a P-256 key, RS256 an RSA key of at least 2048 bits)"
    )]
    Unusable {
        source_name: String,
        alg: SigningAlg,
        reason: String,
    },
}

/// A client's private key and the algorithm it signs with. `Debug` shows no key material.
#[derive(Clone)]
pub struct ClientKey {
    alg: SigningAlg,
    key: EncodingKey,
    kid: Option<String>,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// Reads a PEM key file. `alg` is the algorithm to sign with; `None` takes it from the key
    /// (EC: ES256, RSA: RS256).
    pub fn read_pem_file(path: &Path, alg: Option<SigningAlg>) -> Result<Self, ClientKeyError> {
        let read_error = |reason: String| ClientKeyError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| read_error(e.to_string()))?
            .len();
        if size > MAX_KEY_FILE_BYTES {
            return Err(read_error(format!(
                "it is {size} bytes, larger than any PEM private key ({MAX_KEY_FILE_BYTES} at most)"
            )));
        }
        let pem = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
        Self::from_pem(&pem, alg, &path.display().to_string())
    }

    /// A key from PEM text; `source_name` names it in errors (a file, "the context").
    pub fn from_pem(
        pem: &[u8],
        alg: Option<SigningAlg>,
        source_name: &str,
    ) -> Result<Self, ClientKeyError> {
        let name = || source_name.to_string();
        let text = String::from_utf8_lossy(pem);
        let label = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"));
        match label {
            Some("PRIVATE KEY") | Some("RSA PRIVATE KEY") => {}
            Some("EC PRIVATE KEY") => {
                return Err(ClientKeyError::Sec1 {
                    source_name: name(),
                });
            }
            Some("ENCRYPTED PRIVATE KEY") => {
                return Err(ClientKeyError::Encrypted {
                    source_name: name(),
                });
            }
            _ => {
                return Err(ClientKeyError::NotPem {
                    source_name: name(),
                });
            }
        }
        let rsa_only = label == Some("RSA PRIVATE KEY");
        let candidates: &[SigningAlg] = match alg {
            Some(alg) => &[alg][..],
            None if rsa_only => &[SigningAlg::Rs256],
            None => &[SigningAlg::Es256, SigningAlg::Rs256],
        };
        let mut last_reason = String::new();
        for &alg in candidates {
            let loaded = match alg {
                SigningAlg::Es256 => EncodingKey::from_ec_pem(pem),
                SigningAlg::Rs256 => EncodingKey::from_rsa_pem(pem),
            };
            let key = match loaded {
                Ok(key) => ClientKey {
                    alg,
                    key,
                    kid: None,
                },
                Err(e) => {
                    last_reason = key_error_reason(&e);
                    continue;
                }
            };
            // A PKCS#8 key of another type or curve loads, and fails only when it signs.
            match jsonwebtoken::encode(
                &Header::new(alg.algorithm()),
                &serde_json::json!({}),
                &key.key,
            ) {
                Ok(_) => return Ok(key),
                Err(e) => last_reason = key_error_reason(&e),
            }
        }
        Err(ClientKeyError::Unusable {
            source_name: name(),
            alg: alg.unwrap_or(candidates[0]),
            reason: last_reason,
        })
    }

    /// Names the key in the assertions' `kid` header, for a server holding several keys of
    /// the client.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// A client assertion (RFC 7523 §2.2, §3): `iss` = `sub` = `client_id`, `aud` =
    /// `audience` (the authorization server's issuer, which every server accepts; RFC 7523
    /// also allows the token endpoint), `iat` = `now`, `exp` = `now` + [`ASSERTION_LIFETIME`],
    /// a fresh `jti`. Registered with the log scrubber.
    pub fn client_assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<ClientAssertion, ClientKeyError> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = Header::new(self.alg.algorithm());
        header.kid = self.kid.clone();
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            ClientKeyError::Unusable {
                source_name: "the client key".into(),
                alg: self.alg,
                reason: key_error_reason(&e),
            }
        })?;
        crate::telemetry::secrets::register(&jwt);
        Ok(ClientAssertion(jwt))
    }
}

/// What jsonwebtoken says is wrong with a key, in words that hold no key material.
fn key_error_reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidEcdsaKey => "not a P-256 EC key".into(),
        ErrorKind::InvalidRsaKey(_) => "not a usable RSA key".into(),
        ErrorKind::InvalidKeyFormat => "not a private key of this type".into(),
        ErrorKind::InvalidAlgorithm => "the key is of another type".into(),
        _ => "the key does not sign".into(),
    }
}

/// A signed client assertion. A secret (it authenticates the client until it expires):
/// `Debug` shows its length only.
#[derive(Clone)]
pub struct ClientAssertion(String);

impl ClientAssertion {
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientAssertion([redacted:{}])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_A_KEY: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn labels_that_cannot_be_keys_get_their_own_fix() {
        let sec1 = b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            ClientKey::from_pem(sec1, None, "k.pem"),
            Err(ClientKeyError::Sec1 { .. })
        ));
        let encrypted =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = ClientKey::from_pem(encrypted, None, "k.pem").unwrap_err();
        assert!(matches!(e, ClientKeyError::Encrypted { .. }));
        assert!(e.to_string().contains("k.pem"), "{e}");
        for bad in [NOT_A_KEY.as_bytes(), b"", b"hello"] {
            assert!(matches!(
                ClientKey::from_pem(bad, None, "k.pem"),
                Err(ClientKeyError::NotPem { .. })
            ));
        }
    }

    #[test]
    fn a_garbled_key_is_unusable_and_the_message_holds_none_of_it() {
        let garbled = "-----BEGIN PRIVATE KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n-----END PRIVATE KEY-----\n";
        let e =
            ClientKey::from_pem(garbled.as_bytes(), Some(SigningAlg::Es256), "k.pem").unwrap_err();
        assert!(
            matches!(
                e,
                ClientKeyError::Unusable {
                    alg: SigningAlg::Es256,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.to_string().contains("QUJDREVG"), "{e}");
    }

    // The committed test keys of the OAuth test server (they protect nothing).
    const ES256_PKCS8: &str = include_str!("../../../tests/oauthserver/keys/client-es256.pem");
    const RS256_PKCS1: &str =
        include_str!("../../../tests/oauthserver/keys/client-rs256-pkcs1.pem");
    const RS256_PKCS8: &str = include_str!("../../../tests/oauthserver/keys/client-rs256.pem");

    fn decoded(jwt: &str, part: usize) -> serde_json::Value {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(part).unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn keys_load_in_their_usual_forms_and_the_algorithm_follows_the_key() {
        for (pem, alg) in [
            (ES256_PKCS8, SigningAlg::Es256),
            (RS256_PKCS1, SigningAlg::Rs256),
            (RS256_PKCS8, SigningAlg::Rs256),
        ] {
            assert_eq!(
                ClientKey::from_pem(pem.as_bytes(), None, "k")
                    .unwrap()
                    .alg(),
                alg
            );
            assert_eq!(
                ClientKey::from_pem(pem.as_bytes(), Some(alg), "k")
                    .unwrap()
                    .alg(),
                alg
            );
        }
        for (pem, wrong) in [
            (ES256_PKCS8, SigningAlg::Rs256),
            (RS256_PKCS8, SigningAlg::Es256),
        ] {
            let e = ClientKey::from_pem(pem.as_bytes(), Some(wrong), "k.pem").unwrap_err();
            assert!(
                matches!(e, ClientKeyError::Unusable { alg, .. } if alg == wrong),
                "{e:?}"
            );
        }
    }

    #[test]
    fn an_assertion_has_rfc_7523s_claims() {
        let key = ClientKey::from_pem(ES256_PKCS8.as_bytes(), None, "k")
            .unwrap()
            .with_kid("k1");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = key
            .client_assertion("client-1", "https://as.example", now)
            .unwrap();
        let second = key
            .client_assertion("client-1", "https://as.example", now)
            .unwrap();
        let header = decoded(first.secret(), 0);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "k1");
        let claims = decoded(first.secret(), 1);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://as.example");
        assert_eq!(claims["iat"], 1_800_000_000u64);
        assert_eq!(claims["exp"], 1_800_000_060u64);
        assert_ne!(
            claims["jti"],
            decoded(second.secret(), 1)["jti"],
            "a fresh jti each time"
        );
        assert!(!format!("{key:?}").contains("BEGIN"), "{key:?}");
    }

    #[test]
    fn algorithms_parse_without_case() {
        assert_eq!(SigningAlg::parse("es256"), Some(SigningAlg::Es256));
        assert_eq!(SigningAlg::parse("RS256"), Some(SigningAlg::Rs256));
        assert_eq!(SigningAlg::parse("HS256"), None);
    }

    #[test]
    fn an_assertion_debug_shows_no_token() {
        let assertion = ClientAssertion("eyJhbGciOiJFUzI1NiJ9.e30.c2ln".into());
        assert_eq!(format!("{assertion:?}"), "ClientAssertion([redacted:29])");
    }
}
