//! Encryption at rest of the store's secret columns: XChaCha20-Poly1305 (RustCrypto
//! `chacha20poly1305`), a random 192-bit nonce per value (random nonces of that size never
//! collide in practice), and the value's place as associated data, so a ciphertext moved to
//! another row or column fails to open instead of being used as another server's token.
//!
//! A stored value is `enc1:` + base64url(nonce || ciphertext || tag). The associated data is
//! `mcpproxy-oauth:v1:<table>.<column>:<server_key>`. Pure: no I/O here (key sources live in
//! `keys`, the columns in `db`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The prefix of every sealed value.
pub const PREFIX: &str = "enc1:";
const NONCE_LEN: usize = 24;

/// A 256-bit store key. `Debug` shows nothing of it; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey([redacted])")
    }
}

impl StoreKey {
    /// A new random key from the OS generator.
    pub fn generate() -> Self {
        StoreKey(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// A key from its 32 bytes (a key file of raw bytes).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        StoreKey(bytes)
    }

    /// Reads the text form (standard base64 of 32 bytes, surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "it is not base64".to_string())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("it holds {} bytes, a key is 32", b.len()))?;
        Ok(StoreKey(bytes))
    }

    /// The text form written to a key file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn aead(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

/// Where a sealed value lives: its associated data.
pub fn place(table: &str, column: &str, server_key: &str) -> String {
    format!("mcpproxy-oauth:v1:{table}.{column}:{server_key}")
}

/// Encrypts `plaintext` for `place`.
pub fn seal(key: &StoreKey, place: &str, plaintext: &str) -> String {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let sealed = key
        .aead()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext.as_bytes(),
                aad: place.as_bytes(),
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any message under 256 GiB");
    let mut bytes = nonce.to_vec();
    bytes.extend_from_slice(&sealed);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Why a stored value could not be opened. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not in the sealed format (a plain-text value, or truncated).
    NotSealed,
    /// The tag did not verify: another key, another place, or altered bytes.
    Rejected,
}

/// Decrypts a value sealed for `place`.
pub fn open(key: &StoreKey, place: &str, stored: &str) -> Result<String, OpenError> {
    let body = stored.strip_prefix(PREFIX).ok_or(OpenError::NotSealed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| OpenError::NotSealed)?;
    if bytes.len() < NONCE_LEN + 16 {
        return Err(OpenError::NotSealed);
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let plain = key
        .aead()
        .decrypt(
            &XNonce::from(<[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| OpenError::NotSealed)?),
            Payload {
                msg: sealed,
                aad: place.as_bytes(),
            },
        )
        .map_err(|_| OpenError::Rejected)?;
    String::from_utf8(plain).map_err(|_| OpenError::Rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_with_their_key_and_place() {
        let key = StoreKey::generate();
        let here = place("oauth_tokens", "access_token", "srv_1");
        let sealed = seal(&key, &here, "eyJ.secret");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("secret"));
        assert_ne!(sealed, seal(&key, &here, "eyJ.secret"), "a nonce per value");
        assert_eq!(open(&key, &here, &sealed).unwrap(), "eyJ.secret");
        let elsewhere = place("oauth_tokens", "access_token", "srv_2");
        assert_eq!(open(&key, &elsewhere, &sealed), Err(OpenError::Rejected));
        assert_eq!(
            open(&StoreKey::generate(), &here, &sealed),
            Err(OpenError::Rejected)
        );
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open(&key, &here, &String::from_utf8(altered).unwrap()),
            Err(OpenError::Rejected)
        );
        assert_eq!(open(&key, &here, "eyJ.plain"), Err(OpenError::NotSealed));
        assert_eq!(
            StoreKey::from_base64(&key.to_base64()).unwrap(),
            key,
            "the text form round-trips"
        );
        assert!(StoreKey::from_base64("c2hvcnQ=").is_err());
        assert_eq!(format!("{key:?}"), "StoreKey([redacted])");
    }
}
