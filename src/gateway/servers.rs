//! The servers of the config that have no `oauth` object, which `config::load` leaves out:
//! the gateway relays them unchanged, so a whole `mcp_config.json` works behind one listener.
//! A server may give `"headers"` (a string map, e.g. its own static `Authorization`): they are
//! added to every request, and their values are registered as secrets (never logged). Entries
//! without a `url` (stdio servers started with `command`) are skipped.

use std::io::Read;
use std::path::Path;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::config::{ConfigError, MAX_CONFIG_BYTES};

/// A server relayed as it is.
#[derive(Clone)]
pub struct Passthrough {
    pub name: String,
    pub url: Url,
    pub headers: HeaderMap,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.keys().map(|k| k.as_str()).collect();
        f.debug_struct("Passthrough")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("header_names", &names)
            .finish()
    }
}

/// The config's servers without `oauth` (after `config::load` accepted the file).
pub fn read_passthrough(path: &Path) -> Result<Vec<Passthrough>, ConfigError> {
    let shown = path.display().to_string();
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text))
        .map_err(|e| ConfigError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    parse_passthrough(&text)
}

pub fn parse_passthrough(text: &str) -> Result<Vec<Passthrough>, ConfigError> {
    let root: serde_json::Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        path: String::new(),
        reason: e.to_string(),
    })?;
    let entries = root
        .get("mcpServers")
        .and_then(|s| s.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out: Vec<Passthrough> = Vec::new();
    for entry in entries {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        let (Some(name), None) = (
            entry.get("name").and_then(|n| n.as_str()),
            entry.get("oauth"),
        ) else {
            continue;
        };
        let field = |field: &str, reason: String| ConfigError::Field {
            server: name.to_string(),
            field: field.into(),
            reason,
        };
        let Some(url) = entry.get("url").and_then(|u| u.as_str()) else {
            tracing::debug!(
                server = name,
                "no url: not an HTTP server, the gateway skips it"
            );
            continue;
        };
        let url = Url::parse(url).map_err(|e| field("url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(field(
                "url",
                "an http(s) URL without a user name or password is required (put credentials in \"headers\")".into(),
            ));
        }
        if out.iter().any(|p| p.name == name) {
            return Err(field("name", "another server has the same name".into()));
        }
        let mut headers = HeaderMap::new();
        if let Some(given) = entry.get("headers") {
            let Some(given) = given.as_object() else {
                return Err(field("headers", "an object of strings is expected".into()));
            };
            for (key, value) in given {
                let shown = format!("headers.{key}");
                let value = value
                    .as_str()
                    .ok_or_else(|| field(&shown, "a string is expected".into()))?;
                crate::telemetry::secrets::register(value);
                let name = HeaderName::from_bytes(key.as_bytes())
                    .map_err(|_| field(&shown, "not a valid header name".into()))?;
                let mut value = HeaderValue::from_str(value)
                    .map_err(|_| field(&shown, "the value is not a valid header value".into()))?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }
        out.push(Passthrough {
            name: name.to_string(),
            url,
            headers,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_without_oauth_are_read_with_their_headers() {
        let text = r#"{"mcpServers": [
            {"name": "managed", "url": "http://127.0.0.1:1/mcp", "oauth": {}},
            {"name": "open", "url": "http://127.0.0.1:2/mcp"},
            {"name": "keyed", "url": "https://api.example/mcp", "headers": {"X-Api-Token": "passthrough-secret-123"}},
            {"name": "local", "command": "npx", "args": ["server"]}
        ]}"#;
        let servers = parse_passthrough(text).unwrap();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["open", "keyed"]);
        assert_eq!(servers[1].headers["x-api-token"], "passthrough-secret-123");
        let shown = format!("{:?}", servers[1]);
        assert!(
            !shown.contains("passthrough-secret-123") && shown.contains("x-api-token"),
            "{shown}"
        );
    }

    #[test]
    fn bad_entries_name_the_server_and_field() {
        let err = parse_passthrough(r#"{"mcpServers": [{"name": "a", "url": "ftp://x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("server a: field url"), "{err}");
        let err = parse_passthrough(
            r#"{"mcpServers": [{"name": "a", "url": "http://x", "headers": {"X": 1}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("field headers.X"), "{err}");
        let err = parse_passthrough(r#"{"mcpServers": [{"name": "a", "url": "http://u:p@x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("u:p"), "{err}");
    }
}
