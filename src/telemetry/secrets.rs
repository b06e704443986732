//! The per-process registry of secret values, and the scrubber every text sink uses.
//!
//! Field-name redaction (`redact`) catches a secret under its own name; it cannot catch a
//! server that echoes a refresh token inside `error_description`, a challenge field or an
//! unknown JSON key. So every secret this process holds or sends (tokens, the client secret,
//! an authorization code, a PKCE verifier, `state`, the encryption key) is registered here when
//! it is created, loaded or received, and the log layers, the flows-table writer and the CLI
//! pass text through [`scrub`] before it leaves the process.
//!
//! Cost: a scrub is a `contains` loop over the registered values, O(secrets x text length),
//! with no allocation when nothing matches. The set is small and bounded (at most
//! [`CAPACITY`] values, oldest forgotten first: a proxy holds a few per server), so a log line
//! costs microseconds. Values shorter than [`MIN_LEN`] are not registered: they would scrub
//! ordinary words and no real secret is that short.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, LazyLock, RwLock};

/// The most values remembered; the oldest is forgotten first.
pub const CAPACITY: usize = 512;
/// Shorter values are not treated as secrets (see the module docs).
pub const MIN_LEN: usize = 8;

/// The values in arrival order (for forgetting the oldest), and the same values hashed: a
/// refresh registers its new tokens, and a linear search of 512 JWTs that share their first
/// few dozen bytes showed in the refresh's profile.
#[derive(Default)]
struct Registered {
    order: VecDeque<Arc<str>>,
    known: HashSet<Arc<str>>,
}

static SECRETS: LazyLock<RwLock<Registered>> = LazyLock::new(RwLock::default);

/// What a secret is shown as wherever it is redacted: its length, never its text
/// (`[redacted:43]`), so a reader still sees that a value was there and how big it was.
pub fn marker(secret: &str) -> String {
    format!("[redacted:{}]", secret.len())
}

/// Remembers `secret` so [`scrub`] replaces it wherever it appears.
pub fn register(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    let mut set = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if set.known.contains(secret) {
        return;
    }
    if set.order.len() >= CAPACITY
        && let Some(oldest) = set.order.pop_front()
    {
        set.known.remove(&oldest);
    }
    let secret: Arc<str> = secret.into();
    set.known.insert(secret.clone());
    set.order.push_back(secret);
}

/// Registers each present value.
pub fn register_all<'a>(secrets: impl IntoIterator<Item = Option<&'a str>>) {
    for secret in secrets.into_iter().flatten() {
        register(secret);
    }
}

/// `text` with every registered secret replaced by its redaction marker (`[redacted:43]`).
pub fn scrub(text: &str) -> Cow<'_, str> {
    let set = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    // Longest first would matter only for secrets containing each other; a marker never
    // contains a secret (MIN_LEN > the marker's digits), so one pass per value is enough.
    for secret in set.order.iter() {
        if out.contains(&**secret) {
            out = Cow::Owned(out.replace(&**secret, &marker(secret)));
        }
    }
    out
}

/// Every string in `value` scrubbed, except under the keys in `keep` (an authorization URL a
/// person must open carries its `state` on purpose).
pub fn scrub_json(value: &mut serde_json::Value, keep: &[&str]) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = scrub(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_json(v, keep)),
        Value::Object(map) => map
            .iter_mut()
            .filter(|(k, _)| !keep.contains(&k.as_str()))
            .for_each(|(_, v)| scrub_json(v, keep)),
        _ => {}
    }
}

/// How many values are registered (for tests and the benchmark).
pub fn len() -> usize {
    SECRETS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .order
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_scrubbed_anywhere_in_text() {
        register("rt-0123456789-echoed");
        register("short");
        let text = "could not refresh rt-0123456789-echoed (again: rt-0123456789-echoed)";
        assert_eq!(
            scrub(text),
            "could not refresh [redacted:20] (again: [redacted:20])"
        );
        assert_eq!(scrub("a short word"), "a short word");
        assert!(matches!(scrub("nothing here"), Cow::Borrowed(_)));
        let mut answer = serde_json::json!({
            "last_error": {"error": "echoed rt-0123456789-echoed"},
            "login_link": {"url": "http://as/authorize?state=rt-0123456789-echoed"},
            "list": ["rt-0123456789-echoed", 3]
        });
        scrub_json(&mut answer, &["login_link"]);
        assert_eq!(
            answer,
            serde_json::json!({
                "last_error": {"error": "echoed [redacted:20]"},
                "login_link": {"url": "http://as/authorize?state=rt-0123456789-echoed"},
                "list": ["[redacted:20]", 3]
            })
        );
    }
}
