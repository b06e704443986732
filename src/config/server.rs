//! One configured upstream server (`UpstreamConfig`) and its store key. Every layer that acts for
//! a server takes this record; how it is read from JSON lives in `parse`.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use url::Url;

use crate::oauth::client_identity::ClientConfig;
use crate::oauth::grants::credentials::GrantConfig;

/// One OAuth-protected upstream server.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Url,
    /// Stable for a (name, url) pair; compatible with mcpproxy's key.
    pub server_key: String,
    pub client: ClientConfig,
    /// Scopes to request instead of the server's challenge or advertised scopes.
    pub scope: Option<String>,
    /// Fixed loopback redirect port (0 = ephemeral).
    pub redirect_port: u16,
    /// Extra authorization request parameters (e.g. a provider's `audience`).
    pub extra_params: BTreeMap<String, String>,
    /// Log in with the RFC 8628 device authorization grant instead of a browser redirect
    /// (`"device_code": true`): for hosts without a browser.
    pub device_code: bool,
    /// `oauth.dpop`: use DPoP-bound tokens (RFC 9449) even where the server does not require
    /// them (where it does, they are used anyway).
    pub dpop: bool,
    /// `oauth.grant`: the server's tokens come from this credential kind (client credentials,
    /// enterprise-managed authorization, workload identity), never from a browser login.
    pub grant: Option<GrantConfig>,
    /// `oauth.callback_url`: the public redirect URI (a reverse proxy's, for a daemon in a
    /// container or on a remote host) instead of a loopback listener; the daemon's API
    /// listener serves its path. `serve --callback-url` sets it for servers without one.
    pub callback_url: Option<Url>,
}

impl UpstreamConfig {
    /// A server with default OAuth settings (dynamic registration, discovered scopes).
    pub fn new(name: &str, url: Url) -> Self {
        UpstreamConfig {
            name: name.to_string(),
            server_key: server_key(name, url.as_str()),
            url,
            client: ClientConfig {
                client_name: Some("mcpproxy-oauth".into()),
                ..ClientConfig::default()
            },
            scope: None,
            redirect_port: 0,
            extra_params: BTreeMap::new(),
            device_code: false,
            dpop: false,
            grant: None,
            callback_url: None,
        }
    }
}

/// `{name}_{first 16 hex digits of sha256("name|url")}`, as mcpproxy keys its token store.
pub fn server_key(name: &str, url: &str) -> String {
    let digest = Sha256::digest(format!("{name}|{url}").as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{name}_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_are_stable_and_mcpproxy_compatible() {
        let key = server_key("github", "https://api.githubcopilot.com/mcp/");
        assert!(
            key.starts_with("github_") && key.len() == "github_".len() + 16,
            "{key}"
        );
        assert_eq!(
            key,
            server_key("github", "https://api.githubcopilot.com/mcp/")
        );
        assert_ne!(key, server_key("github", "https://other.example/mcp"));
        let digest = Sha256::digest(b"a|b");
        assert_eq!(
            server_key("a", "b"),
            format!(
                "a_{}",
                digest
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
    }
}
