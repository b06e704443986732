//! A secret a stored row holds (an access or refresh token, a client secret, a DPoP private
//! key), typed so it cannot leak by accident: its `Debug` shows only its length, it has no
//! `Display` and no `Serialize`, and its text is read only through [`Secret::expose`], which
//! the store calls where it seals and opens a value and the flows call where they build a
//! request. A token is named elsewhere by its [`fingerprint`], never by its text.

use std::fmt;

use sha2::{Digest, Sha256};

/// A secret value. Compare it, clone it, fingerprint it; read it only with [`Self::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's text: for sealing, opening and building a request only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A non-secret name for the value: the first 8 bytes of its SHA-256.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.0)
    }
}

/// The first 8 bytes of the SHA-256 of `text`: how a token is told apart from another without
/// its text (`TokenId`, `RefreshTokenId`).
pub fn fingerprint(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::telemetry::secrets::marker(&self.0))
    }
}

/// A secret column as read, before the store opens it (`Seal::reveal`).
impl rusqlite::types::FromSql for Secret {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(value).map(Secret)
    }
}

/// A secret column as read from PostgreSQL, before the store opens it.
impl<'a> tokio_postgres::types::FromSql<'a> for Secret {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        String::from_sql(ty, raw).map(Secret)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <String as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

/// Comparing with a text shows nothing of the secret (tests compare a loaded row with the
/// value they stored).
impl PartialEq<str> for Secret {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Secret {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_shows_its_length_only_and_compares_by_value() {
        let s = Secret::from("rt-0123456789-secret");
        assert_eq!(format!("{s:?}"), "[redacted:20]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted:20])");
        assert_eq!(s.expose(), "rt-0123456789-secret");
        assert_eq!(s, "rt-0123456789-secret");
        assert_ne!(s, Secret::new("rt-0123456789-other"));
        assert_eq!(s.fingerprint(), fingerprint("rt-0123456789-secret"));
        assert_ne!(s.fingerprint(), fingerprint("rt-0123456789-other"));
    }
}
