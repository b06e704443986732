//! A server's `oauth` object, field by field (client, scopes, redirect port, extra parameters,
//! device login, DPoP, grant, callback URL), so an error names the exact sub-field.

use std::collections::BTreeMap;

use crate::oauth::grants::credentials::GrantConfig;

use super::fields::json_type;
use super::grant::parse_grant;

/// The `oauth` object of a server, read field by field by `parse_oauth`.
#[derive(Default)]
pub(super) struct RawOAuth {
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) scopes: Vec<String>,
    pub(super) redirect_port: Option<u16>,
    pub(super) extra_params: BTreeMap<String, String>,
    pub(super) client_metadata_url: Option<String>,
    pub(super) device_code: bool,
    pub(super) dpop: bool,
    pub(super) grant: Option<GrantConfig>,
    pub(super) callback_url: Option<String>,
}

/// The `oauth` object, field by field, so an error names the exact sub-field
/// (`oauth.redirect_port`) and the type it wanted, without echoing the value.
pub(super) fn parse_oauth(value: &serde_json::Value) -> Result<RawOAuth, (String, String)> {
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

#[cfg(test)]
mod tests {
    use crate::config::parse;

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
