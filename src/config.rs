//! The upstream server list, read from mcpproxy's `mcp_config.json` shape:
//! `{"mcpServers": [{"name", "url", "oauth": {"client_id", "client_secret", "scopes",
//! "redirect_port", "extra_params", "device_code", "dpop", "grant", "callback_url"}}]}`.
//! `oauth.grant` names a credential kind that replaces the interactive login
//! (`client_credentials`, `enterprise`, `workload`; see `parse_grant` for each kind's fields): its
//! secrets are named by file or environment variable and read at each grant. `oauth.callback_url`
//! is a public redirect URI in place of the loopback listener. Servers with an `oauth` object (it may be empty) are
//! the ones this subsystem keeps authorized. Unknown fields are ignored; a bad field is an
//! error naming the server and the exact sub-field, with the type expected and never the
//! value (it may be a secret); valid JSON of another shape is a "wrong shape" error. The read
//! is bounded (`MAX_CONFIG_BYTES`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use std::io::Read;
use url::Url;

use crate::oauth::client_identity::ClientConfig;
use crate::oauth::grants::client_key::SigningAlg;
use crate::oauth::grants::credentials::{
    ClientAuthConfig, ClientConfigured, GrantConfig, IdpConfig, SecretSource,
};

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

/// The `oauth` object of a server, read field by field by `parse_oauth`.
#[derive(Default)]
struct RawOAuth {
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Vec<String>,
    redirect_port: Option<u16>,
    extra_params: BTreeMap<String, String>,
    client_metadata_url: Option<String>,
    device_code: bool,
    dpop: bool,
    grant: Option<GrantConfig>,
    callback_url: Option<String>,
}

/// The JSON type of a value, for messages that must not echo the value (it may be a secret).
fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
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
                "a device login is an interactive login; a server with oauth.grant has none (remove one of them)".into(),
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

/// Paths of the daemon's listener a callback URL cannot take: they serve something else.
const RESERVED_PATHS: &[&str] = &["/", "/metrics", "/api/", "/mcp/"];

/// A public callback URL (the redirect URI of a daemon behind a reverse proxy): `https`, or
/// `http` on a loopback address (RFC 8252 §7.3, OAuth 2.1 §2.3.1); no user, query or fragment;
/// a path the daemon's listener can serve for it. Errors say what to change.
pub fn callback_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| {
        format!(
            "{text:?} is not a URL ({e}); give the public address that reaches the daemon's \
             callback, e.g. https://proxy.example/oauth/callback"
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{url} is plain http on a non-loopback host: the authorization code would cross \
                 the network in clear; use https (terminated by the reverse proxy), or http on \
                 127.0.0.1, [::1] or localhost"
            ));
        }
        other => {
            return Err(format!(
                "{url} has the scheme {other}: a callback URL is https (or http on loopback)"
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it holds a user name or password; remove them".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{url} has a query or fragment: the authorization server appends its own query \
             (RFC 6749 §3.1.2); give the bare address"
        ));
    }
    let path = url.path();
    if RESERVED_PATHS
        .iter()
        .any(|r| path == *r || (r.ends_with('/') && r.len() > 1 && path.starts_with(r)))
    {
        return Err(format!(
            "{url} has the path {path}, which the daemon's listener serves for something else; \
             use a path of its own such as /oauth/callback"
        ));
    }
    Ok(url)
}

/// The `oauth` object, field by field, so an error names the exact sub-field
/// (`oauth.redirect_port`) and the type it wanted, without echoing the value.
fn parse_oauth(value: &serde_json::Value) -> Result<RawOAuth, (String, String)> {
    let object = match value {
        serde_json::Value::Null => return Ok(RawOAuth::default()),
        serde_json::Value::Object(object) => object,
        other => {
            return Err((
                "oauth".into(),
                format!(
                    "an object is expected (it may be empty: {{}}), not {}",
                    json_type(other)
                ),
            ));
        }
    };
    let bad = |name: &str, wanted: &str, got: &serde_json::Value| {
        (
            format!("oauth.{name}"),
            format!("{wanted} is expected, not {}", json_type(got)),
        )
    };
    let string = |name: &str| -> Result<Option<String>, (String, String)> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(name, "a string", other)),
        }
    };
    let boolean = |name: &str| -> Result<bool, (String, String)> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(false),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(name, "true or false", other)),
        }
    };
    let scopes = match object.get("scopes") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                (
                    "oauth.scopes".to_string(),
                    "an array of strings is expected, and an item is not a string".to_string(),
                )
            })?,
        Some(other) => return Err(bad("scopes", "an array of strings", other)),
    };
    let redirect_port = match object.get("redirect_port") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
                Some(port) => Some(port),
                None => {
                    return Err((
                        "oauth.redirect_port".into(),
                        format!(
                            "{n} is not a port: a whole number from 0 to 65535 is expected (0: any free port)"
                        ),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(bad(
                "redirect_port",
                "a whole number from 0 to 65535 (a TCP port)",
                other,
            ));
        }
    };
    let extra_params = match object.get("extra_params") {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(serde_json::Value::Object(params)) => params
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(v) => Ok((k.clone(), v.clone())),
                other => Err(bad(&format!("extra_params.{k}"), "a string", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad("extra_params", "an object of strings", other)),
    };
    let grant = match object.get("grant") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(kind)) => Some(parse_grant(kind, object)?),
        Some(other) => {
            return Err(bad(
                "grant",
                "\"client_credentials\", \"enterprise\" or \"workload\"",
                other,
            ));
        }
    };
    Ok(RawOAuth {
        grant,
        device_code: boolean("device_code")?,
        client_id: string("client_id")?,
        client_secret: string("client_secret")?,
        scopes,
        redirect_port,
        extra_params,
        client_metadata_url: string("client_metadata_url")?,
        dpop: boolean("dpop")?,
        callback_url: string("callback_url")?,
    })
}

/// A string field of `object` (`None` when absent or null); errors name `prefix` + `name`.
fn string_field(
    object: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    name: &str,
) -> Result<Option<String>, (String, String)> {
    match object.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(serde_json::Value::String(_)) => Err((
            format!("{prefix}{name}"),
            "a non-empty string is expected, not an empty one".into(),
        )),
        Some(other) => Err((
            format!("{prefix}{name}"),
            format!("a string is expected, not {}", json_type(other)),
        )),
    }
}

/// One secret given by at most one of `{base}` (inline), `{base}_file` and `{base}_env`.
fn secret_field(
    object: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    base: &str,
) -> Result<Option<SecretSource>, (String, String)> {
    let inline = string_field(object, prefix, base)?.map(SecretSource::Inline);
    let file = string_field(object, prefix, &format!("{base}_file"))?
        .map(|f| SecretSource::File(PathBuf::from(f)));
    let env = string_field(object, prefix, &format!("{base}_env"))?.map(SecretSource::Env);
    let mut given = [inline, file, env].into_iter().flatten();
    let first = given.next();
    if given.next().is_some() {
        return Err((
            format!("{prefix}{base}"),
            format!("give one of {base}, {base}_file and {base}_env, not several"),
        ));
    }
    Ok(first)
}

/// A client's ID and authentication under `prefix` (`oauth.` or `oauth.idp.`): a secret
/// (`client_secret`, `_file`, `_env`; `token_endpoint_auth_method` `client_secret_basic`, the
/// default, or `client_secret_post`) or a key (`client_key_file`, `client_key_alg`,
/// `client_key_id`), or neither (`required_auth` false: a public client).
fn client_field(
    object: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    required_auth: bool,
) -> Result<ClientConfigured, (String, String)> {
    let client_id = string_field(object, prefix, "client_id")?.ok_or_else(|| {
        (
            format!("{prefix}client_id"),
            "a client_id is required for this grant".to_string(),
        )
    })?;
    let secret = secret_field(object, prefix, "client_secret")?;
    let key = secret_field(object, prefix, "client_key")?;
    let alg = match string_field(object, prefix, "client_key_alg")? {
        None => None,
        Some(alg) => Some(SigningAlg::parse(&alg).ok_or_else(|| {
            (
                format!("{prefix}client_key_alg"),
                format!("{alg:?} is not ES256 or RS256"),
            )
        })?),
    };
    let kid = string_field(object, prefix, "client_key_id")?;
    let method = string_field(object, prefix, "token_endpoint_auth_method")?;
    let auth = match (secret, key, method.as_deref()) {
        (Some(_), Some(_), _) => {
            return Err((
                format!("{prefix}client_key_file"),
                "give a client secret or a client key, not both".into(),
            ));
        }
        (Some(secret), None, None | Some("client_secret_basic")) => {
            ClientAuthConfig::SecretBasic(secret)
        }
        (Some(secret), None, Some("client_secret_post")) => ClientAuthConfig::SecretPost(secret),
        (None, Some(key), None | Some("private_key_jwt")) => {
            ClientAuthConfig::PrivateKeyJwt { key, alg, kid }
        }
        (None, None, None | Some("none")) if !required_auth => ClientAuthConfig::None,
        (None, None, _) => {
            return Err((
                format!("{prefix}client_secret"),
                "this client needs client_secret_file (or client_secret_env, client_secret) or client_key_file".into(),
            ));
        }
        (_, _, Some(other)) => {
            return Err((
                format!("{prefix}token_endpoint_auth_method"),
                format!(
                    "{other:?} does not go with the credential given (client_secret_basic or client_secret_post with a secret, private_key_jwt with a key)"
                ),
            ));
        }
    };
    Ok(ClientConfigured { client_id, auth })
}

/// `oauth.grant` and the fields of its kind.
fn parse_grant(
    kind: &str,
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<GrantConfig, (String, String)> {
    let required = |source: Option<SecretSource>, field: &str, what: &str| {
        source.ok_or_else(|| {
            (
                format!("oauth.{field}_file"),
                format!("{what} is required: give {field}_file (or {field}_env)"),
            )
        })
    };
    match kind {
        "client_credentials" => Ok(GrantConfig::ClientCredentials {
            client: client_field(object, "oauth.", true)?,
        }),
        "enterprise" => {
            let idp = match object.get("idp") {
                Some(serde_json::Value::Object(idp)) => idp,
                None | Some(serde_json::Value::Null) => {
                    return Err((
                        "oauth.idp".into(),
                        r#"the enterprise IdP is required: {"issuer", "token_endpoint", "client_id", ...}"#.into(),
                    ));
                }
                Some(other) => {
                    return Err((
                        "oauth.idp".into(),
                        format!("an object is expected, not {}", json_type(other)),
                    ));
                }
            };
            let token_endpoint =
                string_field(idp, "oauth.idp.", "token_endpoint")?.ok_or_else(|| {
                    (
                        "oauth.idp.token_endpoint".to_string(),
                        "the IdP's token endpoint (an https URL) is required".to_string(),
                    )
                })?;
            if Url::parse(&token_endpoint).is_err() {
                return Err((
                    "oauth.idp.token_endpoint".into(),
                    format!("{token_endpoint:?} is not a URL"),
                ));
            }
            let issuer = string_field(idp, "oauth.idp.", "issuer")?
                .unwrap_or_else(|| token_endpoint.clone());
            let id_token = secret_field(object, "oauth.", "id_token")?;
            let refresh_token = secret_field(object, "oauth.", "idp_refresh_token")?;
            let (subject, subject_is_refresh_token) = match (id_token, refresh_token) {
                (Some(_), Some(_)) => {
                    return Err((
                        "oauth.idp_refresh_token".into(),
                        "give an ID token or an IdP refresh token, not both".into(),
                    ));
                }
                (None, Some(refresh)) => (refresh, true),
                (id_token, None) => (
                    required(id_token, "id_token", "the user's ID token")?,
                    false,
                ),
            };
            Ok(GrantConfig::Enterprise {
                idp: IdpConfig {
                    issuer,
                    token_endpoint,
                    client: client_field(idp, "oauth.idp.", false)?,
                },
                subject,
                subject_is_refresh_token,
                client: client_field(object, "oauth.", false)?,
            })
        }
        "workload" => Ok(GrantConfig::Workload {
            token: required(
                secret_field(object, "oauth.", "token")?,
                "token",
                "the workload's platform JWT",
            )?,
        }),
        other => Err((
            "oauth.grant".into(),
            format!(
                "{other:?} is not a grant this build knows: \"client_credentials\", \"enterprise\" or \"workload\""
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant_of(oauth: serde_json::Value) -> Result<Option<GrantConfig>, String> {
        let text = serde_json::json!({"mcpServers": [{"name": "g", "url": "https://g.example/mcp", "oauth": oauth}]});
        parse(&text.to_string())
            .map(|mut servers| servers.remove(0).grant)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_grant_kind_reads_its_fields() {
        use serde_json::json;
        let cc = grant_of(json!({"grant": "client_credentials", "client_id": "svc", "client_secret_file": "/run/secret"}))
            .unwrap()
            .unwrap();
        assert_eq!(
            cc,
            GrantConfig::ClientCredentials {
                client: ClientConfigured {
                    client_id: "svc".into(),
                    auth: ClientAuthConfig::SecretBasic(SecretSource::File("/run/secret".into())),
                }
            }
        );
        let post = grant_of(json!({"grant": "client_credentials", "client_id": "svc", "client_secret_env": "SVC_SECRET", "token_endpoint_auth_method": "client_secret_post"}))
            .unwrap()
            .unwrap();
        assert!(
            matches!(post, GrantConfig::ClientCredentials { client } if client.auth == ClientAuthConfig::SecretPost(SecretSource::Env("SVC_SECRET".into())))
        );
        let jwt = grant_of(json!({"grant": "client_credentials", "client_id": "svc", "client_key_file": "/k.pem", "client_key_alg": "es256", "client_key_id": "k1"}))
            .unwrap()
            .unwrap();
        assert!(
            matches!(jwt, GrantConfig::ClientCredentials { client } if client.auth == ClientAuthConfig::PrivateKeyJwt { key: SecretSource::File("/k.pem".into()), alg: Some(SigningAlg::Es256), kid: Some("k1".into()) })
        );
        let enterprise = grant_of(json!({"grant": "enterprise", "client_id": "mcp-client", "client_secret_file": "/s",
            "idp": {"issuer": "https://idp.example", "token_endpoint": "https://idp.example/token", "client_id": "idp-client"},
            "id_token_file": "/id"}))
        .unwrap()
        .unwrap();
        let GrantConfig::Enterprise {
            idp,
            subject,
            subject_is_refresh_token,
            client,
        } = enterprise
        else {
            panic!("{enterprise:?}")
        };
        assert_eq!(
            (idp.issuer.as_str(), idp.client.auth.method()),
            ("https://idp.example", "none")
        );
        assert_eq!(subject, SecretSource::File("/id".into()));
        assert!(!subject_is_refresh_token);
        assert_eq!(client.auth.method(), "client_secret_basic");
        let workload =
            grant_of(json!({"grant": "workload", "token_file": "/var/run/token"})).unwrap();
        assert_eq!(
            workload,
            Some(GrantConfig::Workload {
                token: SecretSource::File("/var/run/token".into())
            })
        );
        assert_eq!(
            grant_of(json!({})).unwrap(),
            None,
            "no grant: an interactive login"
        );
    }

    #[test]
    fn malformed_grants_name_the_field_and_never_echo_a_secret() {
        use serde_json::json;
        for (oauth, expected) in [
            (
                json!({"grant": "password"}),
                "field oauth.grant: \"password\" is not a grant",
            ),
            (json!({"grant": 1}), "field oauth.grant:"),
            (
                json!({"grant": "client_credentials", "client_secret_file": "/s"}),
                "field oauth.client_id: a client_id is required",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c"}),
                "field oauth.client_secret: this client needs",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c", "client_secret": "inline-secret-9f2e", "client_secret_file": "/s"}),
                "field oauth.client_secret: give one of",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c", "client_secret_file": "/s", "client_key_file": "/k"}),
                "field oauth.client_key_file: give a client secret or a client key",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c", "client_key_file": "/k", "client_key_alg": "HS256"}),
                "field oauth.client_key_alg",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c", "client_secret": "inline-secret-9f2e", "token_endpoint_auth_method": "private_key_jwt"}),
                "field oauth.token_endpoint_auth_method",
            ),
            (
                json!({"grant": "enterprise", "client_id": "c", "id_token_file": "/i"}),
                "field oauth.idp: the enterprise IdP is required",
            ),
            (
                json!({"grant": "enterprise", "client_id": "c", "idp": {"client_id": "i"}, "id_token_file": "/i"}),
                "field oauth.idp.token_endpoint",
            ),
            (
                json!({"grant": "enterprise", "client_id": "c", "idp": {"token_endpoint": "https://i/t", "client_id": "i"}}),
                "field oauth.id_token_file: the user's ID token is required",
            ),
            (
                json!({"grant": "workload"}),
                "field oauth.token_file: the workload's platform JWT is required",
            ),
            (
                json!({"grant": "workload", "token_file": ""}),
                "field oauth.token_file: a non-empty string",
            ),
            (
                json!({"grant": "workload", "token_file": "/t", "device_code": true}),
                "field oauth.device_code",
            ),
        ] {
            let e = grant_of(oauth.clone()).unwrap_err();
            assert!(
                e.starts_with(&format!("server g: {expected}")),
                "{oauth}: {e}"
            );
            assert!(!e.contains("inline-secret-9f2e"), "{e}");
        }
    }

    #[test]
    fn dpop_is_a_boolean_and_off_by_default() {
        let servers = parse(concat!(
            r#"{"mcpServers": [{"name": "a", "url": "https://a.example/mcp", "oauth": {"dpop": true}}, "#,
            r#"{"name": "b", "url": "https://b.example/mcp", "oauth": {}}]}"#
        ))
        .unwrap();
        assert!(servers[0].dpop && !servers[1].dpop);
        let e = parse(
            r#"{"mcpServers": [{"name": "a", "url": "https://a.example/mcp", "oauth": {"dpop": "yes"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "server a: field oauth.dpop: true or false is expected, not a string"
        );
    }

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

    #[test]
    fn callback_urls_are_https_or_loopback_http_with_a_path_of_their_own() {
        for good in [
            "https://proxy.example/oauth/callback",
            "http://127.0.0.1:8080/oauth/callback",
            "http://[::1]:9/cb",
            "http://localhost/cb",
        ] {
            assert_eq!(callback_url(good).unwrap().as_str(), good);
        }
        for (bad, says) in [
            ("http://proxy.example/oauth/callback", "use https"),
            ("ftp://proxy.example/cb", "scheme ftp"),
            ("https://proxy.example/cb?x=1", "query or fragment"),
            ("https://proxy.example/cb#f", "query or fragment"),
            ("https://proxy.example", "path /"),
            ("https://proxy.example/api/v1/cb", "path /api/v1/cb"),
            ("https://proxy.example/mcp/x", "path /mcp/x"),
            ("https://u:p@proxy.example/cb", "user name or password"),
            ("proxy.example/cb", "not a URL"),
        ] {
            let e = callback_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let servers = parse(
            r#"{"mcpServers": [{"name": "a", "url": "https://a.example/mcp", "oauth": {"callback_url": "https://p.example/oauth/callback"}},
                               {"name": "b", "url": "https://b.example/mcp", "oauth": {}}]}"#,
        )
        .unwrap();
        assert_eq!(
            servers[0].callback_url.as_ref().unwrap().as_str(),
            "https://p.example/oauth/callback"
        );
        assert!(servers[1].callback_url.is_none());
        let e = parse(
            r#"{"mcpServers": [{"name": "a", "url": "https://a.example/mcp", "oauth": {"callback_url": "http://p.example/cb"}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("server a: field oauth.callback_url: ") && e.contains("use https"),
            "{e}"
        );
    }

    #[test]
    fn device_code_is_a_boolean_option() {
        let servers = parse(
            r#"{"mcpServers": [{"name": "a", "url": "https://a.example/mcp", "oauth": {"device_code": true}},
                               {"name": "b", "url": "https://b.example/mcp", "oauth": {}}]}"#,
        )
        .unwrap();
        assert!(servers[0].device_code);
        assert!(!servers[1].device_code, "off by default");
        let message = parse(
            r#"{"mcpServers": [{"name": "a", "url": "https://a.example/mcp", "oauth": {"device_code": "yes"}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            message,
            "server a: field oauth.device_code: true or false is expected, not a string"
        );
    }
}
