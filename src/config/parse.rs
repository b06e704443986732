//! Reading the config: the bounded file read, the JSON shape (`mcpServers`, each entry's `name`
//! and `url`), and the checks that span fields. Errors name the server and field, never a value.

use std::io::Read;
use std::path::Path;

use url::Url;

use super::callback::callback_url;
use super::fields::json_type;
use super::oauth::parse_oauth;
use super::server::UpstreamConfig;

/// The largest config read (4 MiB): mcpproxy configs are kilobytes; a bigger file (or
/// `/dev/zero`) is the wrong file, and reading it whole would cost memory without bound.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the config {path} is not valid JSON: {reason}")]
    Syntax { path: String, reason: String },
    #[error("the config {path} is valid JSON of the wrong shape: {reason}")]
    Shape { path: String, reason: String },
    #[error("server {server}: field {field}: {reason}")]
    Field {
        server: String,
        field: String,
        reason: String,
    },
}

/// What the config should look like, for "wrong shape" messages.
const EXPECTED: &str =
    r#"expected {"mcpServers": [{"name": "...", "url": "https://...", "oauth": {...}}, ...]}"#;

pub fn load(path: &Path) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let shown = path.display().to_string();
    let read = |reason: String| ConfigError::Read {
        path: shown.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read(e.to_string()))?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file at the limit from a bigger one.
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read(format!(
            "it is larger than {} MiB, far more than any mcp_config.json; is it the right file?",
            MAX_CONFIG_BYTES / (1024 * 1024)
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        read(format!(
            "it is not UTF-8 text (invalid byte at offset {}); is it the right file?",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Syntax { reason, .. } => ConfigError::Syntax {
            path: shown.clone(),
            reason,
        },
        ConfigError::Shape { reason, .. } => ConfigError::Shape {
            path: shown.clone(),
            reason,
        },
        other => other,
    })
}

pub fn parse(text: &str) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let root: serde_json::Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        path: String::new(),
        reason: e.to_string(),
    })?;
    let shape = |reason: String| ConfigError::Shape {
        path: String::new(),
        reason,
    };
    let Some(root) = root.as_object() else {
        return Err(shape(format!(
            "the top level is {}; {EXPECTED}",
            json_type(&root)
        )));
    };
    let entries: &[serde_json::Value] = match root.get("mcpServers") {
        None | Some(serde_json::Value::Null) => &[],
        Some(serde_json::Value::Array(entries)) => entries,
        Some(other) => {
            return Err(shape(format!(
                "\"mcpServers\" is {}, not an array of servers; {EXPECTED}",
                json_type(other)
            )));
        }
    };
    let mut servers: Vec<UpstreamConfig> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(entry) = entry.as_object() else {
            return Err(shape(format!(
                "server #{} in \"mcpServers\" is {}, not an object; {EXPECTED}",
                index + 1,
                json_type(entry)
            )));
        };
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
        let oauth = parse_oauth(oauth).map_err(|(sub, reason)| field(&sub, reason))?;
        let url = entry.get("url").and_then(|u| u.as_str()).ok_or_else(|| {
            field(
                "url",
                "an http(s) URL is required for an OAuth server".into(),
            )
        })?;
        let url = parse_url(url).map_err(|reason| field("url", reason))?;
        if servers.iter().any(|s| s.name == name) {
            return Err(field("name", "another server has the same name".into()));
        }
        let mut server = UpstreamConfig::new(&name, url);
        server.client.client_id = oauth.client_id.filter(|c| !c.is_empty());
        server.client.client_secret = oauth
            .client_secret
            .filter(|c| !c.is_empty())
            .map(oauth2::ClientSecret::new);
        crate::telemetry::secrets::register_all([server
            .client
            .client_secret
            .as_ref()
            .map(|s| s.secret().as_str())]);
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
        server.device_code = oauth.device_code;
        server.dpop = oauth.dpop;
        if oauth.grant.is_some() && oauth.device_code {
            return Err(field(
                "oauth.device_code",
                "a device login is an interactive login; a server with oauth.grant has none \
                 (remove one of them)"
                    .into(),
            ));
        }
        server.grant = oauth.grant;
        server.callback_url = match oauth.callback_url {
            Some(text) => {
                Some(callback_url(&text).map_err(|reason| field("oauth.callback_url", reason))?)
            }
            None => None,
        };
        servers.push(server);
    }
    Ok(servers)
}

/// A server URL: http(s), and no user name or password in it (they would be logged, stored
/// and sent as Basic auth). Messages never echo a URL that may hold a password.
fn parse_url(text: &str) -> Result<Url, String> {
    let userinfo = "it holds a user name or password (`user:password@`), which would be logged, \
                    stored and sent to the server; remove them (a pre-registered client goes in \
                    oauth.client_id and oauth.client_secret)";
    let url = Url::parse(text).map_err(|e| {
        if text.contains('@') {
            format!("it is not a URL ({e}); {userinfo}")
        } else {
            format!("{text:?} is not a URL: {e}")
        }
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(userinfo.into());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{url} is not http(s)"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_servers_are_read_and_others_skipped() {
        let servers = parse(
            r#"{"mcpServers": [
            {"name": "local", "command": "npx", "args": []},
            {"name": "plain", "url": "https://plain.example/mcp"},
            {"name": "gh", "url": "https://gh.example/mcp", "protocol": "http", "oauth": {
                "client_id": "abc", "client_secret": "s", "scopes": ["repo", "read:org"],
                "redirect_port": 8765, "extra_params": {"audience": "x"}, "future_field": 1}},
            {"name": "dyn", "url": "http://127.0.0.1:9000/mcp", "oauth": {}}
        ], "other": true}"#,
        )
        .unwrap();
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
                "server a: field oauth.redirect_port: a whole number from 0 to 65535 (a TCP port) \
                 is expected, not a string",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": {"redirect_port": 70000}}]}"#,
                "server a: field oauth.redirect_port: 70000 is not a port",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": {"scopes": "repo"}}]}"#,
                "server a: field oauth.scopes: an array of strings is expected, not a string",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": {"extra_params": {"audience": 1}}}]}"#,
                "server a: field oauth.extra_params.audience: a string is expected, not a number",
            ),
            (
                r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": true}]}"#,
                "server a: field oauth: an object is expected",
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
                concat!(
                    r#"{"mcpServers": [{"name": "a", "url": "https://x", "oauth": {}}, "#,
                    r#"{"name": "a", "url": "https://y", "oauth": {}}]}"#
                ),
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

    #[test]
    fn valid_json_of_the_wrong_shape_says_so_and_what_was_expected() {
        for (text, says) in [
            (
                r#"{"mcpServers": {"gh": {"url": "https://x", "oauth": {}}}}"#,
                r#""mcpServers" is an object, not an array of servers"#,
            ),
            (r#"[1, 2]"#, "the top level is an array"),
            (
                r#"{"mcpServers": ["gh"]}"#,
                "server #1 in \"mcpServers\" is a string",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, ConfigError::Shape { .. }), "{e}");
            let message = e.to_string();
            assert!(
                message.contains("valid JSON of the wrong shape")
                    && message.contains(says)
                    && message.contains(r#"expected {"mcpServers": [{"name""#),
                "{message}"
            );
        }
    }

    #[test]
    fn a_url_with_a_user_or_password_is_refused_without_echoing_it() {
        for url in [
            "https://alice:hunter2-secret@gh.example/mcp",
            "https://alice@gh.example/mcp",
            "ftp://alice:hunter2-secret@gh.example/mcp",
            "https://alice:hunter2-secret@[bad/mcp",
        ] {
            let text = serde_json::json!({"mcpServers": [{"name": "gh", "url": url, "oauth": {}}]});
            let message = parse(&text.to_string()).unwrap_err().to_string();
            assert!(
                message.starts_with("server gh: field url:")
                    && message.contains("user name or password"),
                "{message}"
            );
            assert!(
                !message.contains("hunter2"),
                "the password is not echoed: {message}"
            );
        }
    }

    #[test]
    fn the_read_is_bounded_and_names_the_file() {
        let started = std::time::Instant::now();
        let message = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            message.contains("/dev/zero") && message.contains("larger than 4 MiB"),
            "{message}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "fast: {:?}",
            started.elapsed()
        );
        let dir = std::env::temp_dir().join(format!("mcpproxy-oauth-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let shape = dir.join("shape.json");
        std::fs::write(&shape, r#"{"mcpServers": {}}"#).unwrap();
        let message = load(&shape).unwrap_err().to_string();
        assert!(
            message.contains(&shape.display().to_string()) && message.contains("wrong shape"),
            "{message}"
        );
    }
}
