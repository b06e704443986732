//! What the machine knows about a token: when it was obtained and expires, whether it has a
//! refresh token, whether the upstream refused it, and an id that tells tokens apart. No
//! secret ever enters the machine.

use super::Millis;
use crate::store::{Secret, fingerprint};

/// A token's identity without its secret: the first 8 bytes of the SHA-256 of its access
/// token. Reports about a token (a 401, a 403, a save) name it by this id, so the machine
/// can tell the current token from an older one, and the actor never compares token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TokenId(u64);

impl TokenId {
    pub fn of(access_token: &str) -> TokenId {
        TokenId(fingerprint(access_token))
    }

    /// The id of a stored access token.
    pub fn of_secret(access_token: &Secret) -> TokenId {
        TokenId(access_token.fingerprint())
    }
}

/// What the machine knows about the current token. No secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts {
    pub id: TokenId,
    pub obtained_at: Millis,
    /// `None`: the server did not say; the token is used until refused.
    pub expires_at: Option<Millis>,
    pub has_refresh_token: bool,
    /// The upstream answered 401 to this token.
    pub refused: bool,
}

impl TokenFacts {
    fn lifetime(&self) -> Option<Millis> {
        self.expires_at
            .map(|e| e.saturating_sub(self.obtained_at).max(0))
    }

    /// How long before expiry a token stops being handed out.
    pub fn safety_margin(&self) -> Millis {
        self.lifetime().map(|l| (l / 10).min(5_000)).unwrap_or(0)
    }

    /// When the token stops being handed out (`None`: never, by time).
    pub fn unusable_at(&self) -> Option<Millis> {
        self.expires_at
            .map(|e| e.saturating_sub(self.safety_margin()))
    }

    /// Valid for at least the safety margin at `now`, and not refused.
    pub fn usable(&self, now: Millis) -> bool {
        !self.refused && self.unusable_at().is_none_or(|u| now < u)
    }

    /// Refused this early (within half its lifetime, at most 5 s, after issue), a token was
    /// bad from the start: the server is issuing unusable tokens, and refreshing at once would
    /// loop.
    pub fn refused_when_fresh(&self, now: Millis) -> bool {
        let window = self.lifetime().map(|l| (l / 2).min(5_000)).unwrap_or(5_000);
        now.saturating_sub(self.obtained_at) < window
    }

    /// When to refresh ahead of expiry: 75% of the lifetime, minus `jitter` (0..1) of 5% of it.
    pub fn refresh_at(&self, jitter: f64) -> Option<Millis> {
        let lifetime = self.lifetime()?;
        let spread = (lifetime as f64 * 0.05 * jitter.clamp(0.0, 1.0)) as Millis;
        Some(
            self.obtained_at
                .saturating_add(lifetime / 4 * 3)
                .saturating_sub(spread),
        )
    }

    /// The last moment to refresh a token whose refresh token is not in the store yet: one
    /// safety margin before it stops being handed out. Until then it keeps serving, so a
    /// refresh token the store does not hold is spent again only when it must be (a crash
    /// meanwhile leaves the store with a refresh token the server has not rotated away).
    pub fn last_refresh_at(&self) -> Option<Millis> {
        self.unusable_at()
            .map(|u| u.saturating_sub(self.safety_margin()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_tell_tokens_apart_and_do_not_show_them() {
        let a = TokenId::of("access-token-a");
        assert_eq!(a, TokenId::of("access-token-a"));
        assert_ne!(a, TokenId::of("access-token-b"));
        assert!(!format!("{a:?}").contains("access"));
    }

    #[test]
    fn the_last_refresh_comes_one_margin_before_the_token_stops_being_handed_out() {
        let t = TokenFacts {
            id: TokenId::default(),
            obtained_at: 0,
            expires_at: Some(3_600_000),
            has_refresh_token: true,
            refused: false,
        };
        assert_eq!(t.unusable_at(), Some(3_595_000));
        assert_eq!(t.last_refresh_at(), Some(3_590_000));
        assert!(t.refresh_at(0.0).unwrap() < t.last_refresh_at().unwrap());
    }
}
