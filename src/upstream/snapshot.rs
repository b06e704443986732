//! What callers may read without asking the actor: the published token of one server. The
//! hand-out deadline and the clock to check it with are worked out once, when the actor
//! publishes it, so the hot path is one clock read and one compare.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::state::Millis;
use crate::clock::coarse;
use crate::oauth::dpop::Dpop;

pub struct TokenSnapshot {
    pub access_token: oauth2::AccessToken,
    pub expires_at: Option<Millis>,
    pub safety_margin: Millis,
    /// Handed out while the clock reads less than this (`expires_at - safety_margin`).
    until: Millis,
    /// The margin is wide enough for the coarse clock (`clock::coarse`).
    coarse: bool,
    /// `Bearer`, or `DPoP` for a token bound to `dpop`'s key (RFC 9449).
    pub token_type: String,
    /// The key (and the nonces seen) to prove possession with, for a DPoP-bound token.
    pub dpop: Option<Dpop>,
}

impl TokenSnapshot {
    pub fn new(
        access_token: oauth2::AccessToken,
        expires_at: Option<Millis>,
        safety_margin: Millis,
    ) -> Self {
        TokenSnapshot {
            access_token,
            expires_at,
            safety_margin,
            until: expires_at.map_or(Millis::MAX, |e| e.saturating_sub(safety_margin)),
            coarse: coarse::coarse_is_safe(safety_margin),
            token_type: "Bearer".into(),
            dpop: None,
        }
    }

    /// The token's type and, for a DPoP-bound one, its key.
    pub fn bound(mut self, token_type: &str, dpop: Option<Dpop>) -> Self {
        self.token_type = token_type.to_string();
        self.dpop = dpop;
        self
    }

    pub fn usable(&self, now: Millis) -> bool {
        now < self.until
    }

    /// Usable now, by the cheapest system clock that is safe for this token.
    #[inline]
    pub fn usable_now(&self) -> bool {
        self.expires_at.is_none() || coarse::now_for(self.coarse) < self.until
    }
}

pub type Snapshot = Arc<ArcSwapOption<TokenSnapshot>>;
