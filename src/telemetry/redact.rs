//! Redaction, in one place, for every writer: HTTP headers, URL query strings, form bodies and
//! JSON bodies. Secrets are replaced by a marker that keeps their length (`[redacted:43]`), so
//! a log still shows that a value was there and how big it was; keys, token types, scopes,
//! lifetimes and OAuth error codes stay readable.
//!
//! Names are compared with case, `_` and `-` ignored, so `accessToken`, `Access-Token` and
//! `access_token` are one name. Strings that are not under a secret name still pass through
//! the registry of known secrets (`secrets::scrub`): a server echoing a token under an
//! unknown key or inside `error_description` is caught there.

use serde_json::Value;

use super::secrets::{self, marker};

/// Header names whose values are secrets.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "dpop",
    "mcp-session-id",
];

/// Field names whose values are secrets, wherever they appear (query, form, JSON), compared
/// case-insensitively.
const SECRET_FIELDS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "code",
    "code_verifier",
    "assertion",
    "client_assertion",
    "password",
    "token",
    "subject_token",
    "actor_token",
    "device_code",
    "registration_access_token",
    "state",
    "api_key",
    "x_api_key",
    "auth_token",
    "x_auth_token",
    "session_token",
    "dpop",
    "secret",
    "private_key",
];

/// A name with case, `_` and `-` ignored: `accessToken` == `access_token` == `Access-Token`.
fn normalized(name: &str) -> impl Iterator<Item = char> + '_ {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
}

fn same_name(a: &str, b: &str) -> bool {
    normalized(a).eq(normalized(b))
}

pub fn is_secret_field(name: &str) -> bool {
    SECRET_FIELDS.iter().any(|f| same_name(f, name))
}

pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| same_name(h, name))
}

/// A header value fit for a log: secret headers keep only their scheme (`Bearer [redacted:812]`).
pub fn header_value(name: &str, value: &str) -> String {
    if !is_secret_header(name) {
        return secrets::scrub(value).into_owned();
    }
    match value.split_once(' ') {
        Some((scheme, rest))
            if matches!(
                scheme.to_ascii_lowercase().as_str(),
                "bearer" | "basic" | "dpop"
            ) =>
        {
            format!("{scheme} {}", marker(rest))
        }
        _ => marker(value),
    }
}

/// An `application/x-www-form-urlencoded` string (a query or a form body) with secret values
/// replaced.
pub fn form(encoded: &str) -> String {
    url::form_urlencoded::parse(encoded.as_bytes())
        .map(|(k, v)| {
            if is_secret_field(&k) {
                (k.into_owned(), marker(&v))
            } else {
                (k.into_owned(), secrets::scrub(&v).into_owned())
            }
        })
        .fold(
            url::form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(&k, &v);
                s
            },
        )
        .finish()
}

/// A URL with its secret query parameters replaced, any userinfo dropped, and its fragment
/// redacted like a query (an implicit-grant style `#access_token=...`) or, when it is not a
/// form, replaced by a marker.
pub fn url(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return "[unparseable URL]".into();
    };
    let _ = parsed.set_password(None);
    let _ = parsed.set_username("");
    if let Some(query) = parsed.query().map(String::from) {
        parsed.set_query(Some(&form(&query)));
    }
    if let Some(fragment) = parsed.fragment().map(String::from) {
        let shown = if fragment.contains('=') {
            form(&fragment)
        } else {
            marker(&fragment)
        };
        parsed.set_fragment(Some(&shown));
    }
    secrets::scrub(parsed.as_str()).into_owned()
}

/// The shape of a JSON value: keys kept, secret values replaced by a marker with their length,
/// secret headers (`{"Authorization": "Bearer ..."}`) keep their scheme only, other strings
/// kept (error codes, descriptions, token types, scopes, URLs) with known secrets scrubbed.
pub fn json_shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    // Secrets are strings; a numeric `code` (a JSON-RPC error) stays readable.
                    let shown = match v {
                        Value::String(s) if is_secret_field(k) => Value::String(marker(s)),
                        Value::String(s) if is_secret_header(k) => {
                            Value::String(header_value(k, s))
                        }
                        other => json_shape(other),
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(json_shape).collect()),
        Value::String(s) => Value::String(secrets::scrub(s).into_owned()),
        other => other.clone(),
    }
}

/// A body fit for a log, by content type: JSON as its redacted shape, forms redacted, anything
/// else described by size only (it may be an HTML page, or hold anything).
pub fn body(content_type: Option<&str>, bytes: &[u8]) -> Value {
    let content_type = content_type.unwrap_or("").to_ascii_lowercase();
    if bytes.is_empty() {
        return Value::Null;
    }
    if content_type.contains("json") {
        return match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => json_shape(&v),
            Err(_) => Value::String(format!("[{} bytes of invalid JSON]", bytes.len())),
        };
    }
    if content_type.contains("x-www-form-urlencoded") {
        return Value::String(form(&String::from_utf8_lossy(bytes)));
    }
    Value::String(format!(
        "[{} bytes of {}]",
        bytes.len(),
        if content_type.is_empty() {
            "unknown type"
        } else {
            &content_type
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_keep_their_scheme_only() {
        assert_eq!(
            header_value("Authorization", "Bearer abc.def"),
            "Bearer [redacted:7]"
        );
        assert_eq!(
            header_value("authorization", "Basic dXNlcjpwYXNz"),
            "Basic [redacted:12]"
        );
        assert_eq!(
            header_value("Set-Cookie", "sid=123; HttpOnly"),
            "[redacted:17]"
        );
        assert_eq!(
            header_value("Content-Type", "application/json"),
            "application/json"
        );
    }

    #[test]
    fn queries_forms_and_urls() {
        assert_eq!(
            form("grant_type=refresh_token&refresh_token=rt_secret&client_id=abc"),
            "grant_type=refresh_token&refresh_token=%5Bredacted%3A9%5D&client_id=abc"
        );
        let u = url("http://user:pw@127.0.0.1:9/cb?code=c0de&state=st4te&iss=http%3A%2F%2Fas");
        assert!(
            !u.contains("c0de") && !u.contains("st4te") && !u.contains("pw"),
            "{u}"
        );
        assert!(u.contains("iss=http%3A%2F%2Fas"));
        assert_eq!(url("not a url"), "[unparseable URL]");
    }

    #[test]
    fn json_shapes_keep_keys_and_error_codes() {
        let token = json!({"access_token": "eyJ...", "token_type": "Bearer", "expires_in": 3600,
                           "refresh_token": "rt_x", "scope": "a b",
                           "nested": {"ID_TOKEN": "x", "list": [{"client_secret": "s"}]}});
        let shape = json_shape(&token);
        assert_eq!(
            shape,
            json!({"access_token": "[redacted:6]", "token_type": "Bearer", "expires_in": 3600,
                   "refresh_token": "[redacted:4]", "scope": "a b",
                   "nested": {"ID_TOKEN": "[redacted:1]", "list": [{"client_secret": "[redacted:1]"}]}})
        );
        let error = json!({"error": "invalid_grant", "error_description": "refresh token expired"});
        assert_eq!(json_shape(&error), error);
        let rpc =
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "not found"}});
        assert_eq!(
            json_shape(&rpc),
            rpc,
            "JSON-RPC error codes are numbers, not secrets"
        );
    }

    #[test]
    fn other_spellings_and_headers_are_secret_names() {
        for name in [
            "accessToken",
            "RefreshToken",
            "clientSecret",
            "api_key",
            "apiKey",
            "x-auth-token",
            "DPoP",
            "codeVerifier",
            "registrationAccessToken",
        ] {
            assert!(is_secret_field(name), "{name}");
        }
        for name in ["X-Auth-Token", "DPoP", "x-api-key", "Api-Key"] {
            assert!(is_secret_header(name), "{name}");
        }
        assert!(!is_secret_field("token_type") && !is_secret_field("expiresIn"));
        let shape = json_shape(
            &json!({"accessToken": "abc", "headers": {"Authorization": "Bearer xyz", "DPoP": "proof"}}),
        );
        assert_eq!(
            shape,
            json!({"accessToken": "[redacted:3]",
                   "headers": {"Authorization": "Bearer [redacted:3]", "DPoP": "[redacted:5]"}})
        );
    }

    #[test]
    fn fragments_and_known_secrets_are_redacted() {
        let u = url("http://127.0.0.1:9/cb#access_token=fr4gm3nt&token_type=bearer");
        assert!(
            !u.contains("fr4gm3nt") && u.contains("token_type=bearer"),
            "{u}"
        );
        assert_eq!(url("http://h/p#anchor"), "http://h/p#[redacted:6]");
        secrets::register("echoed-refresh-token-123");
        let shape = json_shape(&json!({
            "error_description": "could not refresh echoed-refresh-token-123",
            "unknown_key": ["echoed-refresh-token-123"]
        }));
        assert!(
            !shape.to_string().contains("echoed-refresh-token-123"),
            "{shape}"
        );
        assert!(
            form("error_description=bad+echoed-refresh-token-123").contains("%5Bredacted%3A24%5D")
        );
    }

    #[test]
    fn bodies_by_content_type() {
        assert_eq!(
            body(Some("application/json"), br#"{"code":"x"}"#),
            json!({"code": "[redacted:1]"})
        );
        assert_eq!(
            body(Some("application/json"), b"{trunc"),
            json!("[6 bytes of invalid JSON]")
        );
        assert_eq!(
            body(Some("text/html"), b"<p>hi</p>"),
            json!("[9 bytes of text/html]")
        );
        assert_eq!(
            body(
                Some("application/x-www-form-urlencoded"),
                b"code_verifier=abc&x=1"
            ),
            json!("code_verifier=%5Bredacted%3A3%5D&x=1")
        );
        assert_eq!(body(None, b""), Value::Null);
    }
}
