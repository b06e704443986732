//! `oauth.grant`: the credential kinds that replace the interactive login (`client_credentials`,
//! `enterprise`, `workload`), with the client authentication each takes. Secrets are named by
//! file or environment variable and read at each grant, never here.

use url::Url;

use crate::oauth::grants::client_key::SigningAlg;
use crate::oauth::grants::credentials::{
    ClientAuthConfig, ClientConfigured, GrantConfig, IdpConfig, SecretSource,
};

use super::fields::{json_type, secret_field, string_field};

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
                    "{other:?} does not go with the credential given (client_secret_basic or \
                     client_secret_post with a secret, private_key_jwt with a key)"
                ),
            ));
        }
    };
    Ok(ClientConfigured { client_id, auth })
}

/// `oauth.grant` and the fields of its kind.
pub(super) fn parse_grant(
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
    use crate::config::parse;

    fn grant_of(oauth: serde_json::Value) -> Result<Option<GrantConfig>, String> {
        let text = serde_json::json!({"mcpServers": [{"name": "g", "url": "https://g.example/mcp", "oauth": oauth}]});
        parse(&text.to_string())
            .map(|mut servers| servers.remove(0).grant)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_grant_kind_reads_its_fields() {
        use serde_json::json;
        let cc = grant_of(json!({"grant": "client_credentials", "client_id": "svc",
            "client_secret_file": "/run/secret"}))
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
        let post = grant_of(json!({"grant": "client_credentials", "client_id": "svc",
            "client_secret_env": "SVC_SECRET", "token_endpoint_auth_method": "client_secret_post"}))
        .unwrap()
        .unwrap();
        assert!(matches!(post, GrantConfig::ClientCredentials { client }
                if client.auth == ClientAuthConfig::SecretPost(SecretSource::Env("SVC_SECRET".into()))));
        let jwt = grant_of(json!({"grant": "client_credentials", "client_id": "svc",
            "client_key_file": "/k.pem", "client_key_alg": "es256", "client_key_id": "k1"}))
        .unwrap()
        .unwrap();
        assert!(matches!(jwt, GrantConfig::ClientCredentials { client }
        if client.auth == ClientAuthConfig::PrivateKeyJwt {
            key: SecretSource::File("/k.pem".into()),
            alg: Some(SigningAlg::Es256),
            kid: Some("k1".into()),
        }));
        let enterprise = grant_of(
            json!({"grant": "enterprise", "client_id": "mcp-client", "client_secret_file": "/s",
            "idp": {"issuer": "https://idp.example", "token_endpoint": "https://idp.example/token",
                    "client_id": "idp-client"},
            "id_token_file": "/id"}),
        )
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
                json!({"grant": "client_credentials", "client_id": "c",
                       "client_secret": "inline-secret-9f2e", "client_secret_file": "/s"}),
                "field oauth.client_secret: give one of",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c", "client_secret_file": "/s",
                       "client_key_file": "/k"}),
                "field oauth.client_key_file: give a client secret or a client key",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c", "client_key_file": "/k",
                       "client_key_alg": "HS256"}),
                "field oauth.client_key_alg",
            ),
            (
                json!({"grant": "client_credentials", "client_id": "c",
                       "client_secret": "inline-secret-9f2e", "token_endpoint_auth_method": "private_key_jwt"}),
                "field oauth.token_endpoint_auth_method",
            ),
            (
                json!({"grant": "enterprise", "client_id": "c", "id_token_file": "/i"}),
                "field oauth.idp: the enterprise IdP is required",
            ),
            (
                json!({"grant": "enterprise", "client_id": "c", "idp": {"client_id": "i"},
                       "id_token_file": "/i"}),
                "field oauth.idp.token_endpoint",
            ),
            (
                json!({"grant": "enterprise", "client_id": "c",
                       "idp": {"token_endpoint": "https://i/t", "client_id": "i"}}),
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
}
