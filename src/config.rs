//! The upstream server list, read from mcpproxy's `mcp_config.json` shape:
//! `{"mcpServers": [{"name", "url", "oauth": {"client_id", "client_secret", "scopes",
//! "redirect_port", "extra_params"}}]}`. Servers with an `oauth` object (it may be empty) are
//! the ones this subsystem keeps authorized. Unknown fields are ignored; a bad field is an
//! error naming the server and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::oauth::client_identity::ClientConfig;

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
        }
    }
}

/// `{name}_{first 16 hex digits of sha256("name|url")}`, as mcpproxy keys its token store.
pub fn server_key(name: &str, url: &str) -> String {
    let digest = Sha256::digest(format!("{name}|{url}").as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{name}_{hex}")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the config {path} is not valid JSON: {reason}")]
    Syntax { path: String, reason: String },
    #[error("server {server}: field {field}: {reason}")]
    Field {
        server: String,
        field: String,
        reason: String,
    },
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(rename = "mcpServers", default)]
    mcp_servers: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct RawOAuth {
    client_id: Option<String>,
    client_secret: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    redirect_port: Option<u16>,
    #[serde(default)]
    extra_params: BTreeMap<String, String>,
    client_metadata_url: Option<String>,
}

pub fn load(path: &Path) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Syntax { reason, .. } => ConfigError::Syntax {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

pub fn parse(text: &str) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let raw: RawConfig = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        path: String::new(),
        reason: e.to_string(),
    })?;
    let mut servers: Vec<UpstreamConfig> = Vec::new();
    for (index, entry) in raw.mcp_servers.iter().enumerate() {
        let name = match entry.get("name") {
            Some(serde_json::Value::String(n)) if !n.trim().is_empty() => n.clone(),
            _ => {
                return Err(ConfigError::Field {
                    server: format!("#{}", index + 1),
                    field: "name".into(),
                    reason: "a non-empty string is required".into(),
                });
            }
        };
        let field = |field: &str, reason: String| ConfigError::Field {
            server: name.clone(),
            field: field.into(),
            reason,
        };
        let Some(oauth) = entry.get("oauth") else {
            continue;
        };
        let oauth: RawOAuth = match oauth {
            serde_json::Value::Null => RawOAuth::default(),
            value => {
                serde_json::from_value(value.clone()).map_err(|e| field("oauth", e.to_string()))?
            }
        };
        let url = entry.get("url").and_then(|u| u.as_str()).ok_or_else(|| {
            field(
                "url",
                "an http(s) URL is required for an OAuth server".into(),
            )
        })?;
        let url =
            Url::parse(url).map_err(|e| field("url", format!("{url:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(field("url", format!("{url} is not http(s)")));
        }
        if servers.iter().any(|s| s.name == name) {
            return Err(field("name", "another server has the same name".into()));
        }
        let mut server = UpstreamConfig::new(&name, url);
        server.client.client_id = oauth.client_id.filter(|c| !c.is_empty());
        server.client.client_secret = oauth.client_secret.filter(|c| !c.is_empty());
        server.client.client_metadata_url = oauth.client_metadata_url;
        if server.client.client_secret.is_some() && server.client.client_id.is_none() {
            return Err(field(
                "oauth.client_secret",
                "a client_secret needs a client_id".into(),
            ));
        }
        server.scope = (!oauth.scopes.is_empty()).then(|| oauth.scopes.join(" "));
        server.redirect_port = oauth.redirect_port.unwrap_or(0);
        server.extra_params = oauth.extra_params;
        servers.push(server);
    }
    Ok(servers)
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

    #[test]
    fn oauth_servers_are_read_and_others_skipped() {
        let servers = parse(r#"{"mcpServers": [
            {"name": "local", "command": "npx", "args": []},
            {"name": "plain", "url": "https://plain.example/mcp"},
            {"name": "gh", "url": "https://gh.example/mcp", "protocol": "http", "oauth": {"client_id": "abc", "client_secret": "s", "scopes": ["repo", "read:org"], "redirect_port": 8765, "extra_params": {"audience": "x"}, "future_field": 1}},
            {"name": "dyn", "url": "http://127.0.0.1:9000/mcp", "oauth": {}}
        ], "other": true}"#).unwrap();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["gh", "dyn"]);
        let gh = &servers[0];
        assert_eq!(gh.client.client_id.as_deref(), Some("abc"));
        assert_eq!(gh.scope.as_deref(), Some("repo read:org"));
        assert_eq!(gh.redirect_port, 8765);
        assert_eq!(gh.extra_params["audience"], "x");
        assert!(servers[1].client.client_id.is_none());
    }

    #[test]
    fn bad_fields_are_named_with_their_server() {
        let cases = [
            (
                r#"{"mcpServers": [{"name": "a", "oauth": {}}]}"#,
                "server a: field url",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "ftp://x", "oauth": {}}]}"#,
                "server a: field url",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": {"redirect_port": "high"}}]}"#,
                "server a: field oauth",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": {"client_secret": "s"}}]}"#,
                "server a: field oauth.client_secret",
            ),
            (
                r#"{"mcpServers": [{"url": "https://x", "oauth": {}}]}"#,
                "server #1: field name",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": {}}, {"name": "a", "url": "https://y", "oauth": {}}]}"#,
                "server a: field name",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{e}");
        }
        assert!(matches!(
            parse("{not json"),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
