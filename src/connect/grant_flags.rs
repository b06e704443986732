//! `connect --grant`: the credential kinds of a server's `oauth.grant`, given as flags, with
//! what a flag leaves out taken from the environment or the MCP conformance runner's context.

use serde_json::Value;

use crate::oauth::grants::client_key::SigningAlg;
use crate::oauth::grants::credentials::{
    ClientAuthConfig, ClientConfigured, GrantConfig, IdpConfig, SecretSource,
};

/// `connect`'s grant flags: the same credential kinds as a server's `oauth.grant`, on the
/// command line. Secrets come from files or the environment (the command line is visible to
/// other users); under the MCP conformance runner, what a flag leaves out is taken from its
/// `MCP_CONFORMANCE_CONTEXT` (see [`grant_config`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GrantArgs {
    /// Obtain tokens with this grant instead of a login: client_credentials, enterprise or
    /// workload.
    #[arg(long, value_parser = ["client_credentials", "enterprise", "workload"])]
    pub grant: Option<String>,
    /// The client's secret in this file (client_credentials; enterprise: at the MCP
    /// authorization server). Else --client-secret / MCPPROXY_OAUTH_CLIENT_SECRET.
    #[arg(long)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// client_secret_basic (the default) or client_secret_post.
    #[arg(long, value_parser = ["client_secret_basic", "client_secret_post"])]
    pub token_endpoint_auth_method: Option<String>,
    /// private_key_jwt: the client's PEM private key (PKCS#8 EC P-256 or RSA).
    #[arg(long)]
    pub client_key_file: Option<std::path::PathBuf>,
    /// The key's signing algorithm, ES256 or RS256 (default: from the key).
    #[arg(long)]
    pub client_key_alg: Option<String>,
    /// enterprise: the IdP's token endpoint.
    #[arg(long)]
    pub idp_token_endpoint: Option<String>,
    /// enterprise: the IdP's issuer (default: its token endpoint).
    #[arg(long)]
    pub idp_issuer: Option<String>,
    /// enterprise: this client's ID at the IdP.
    #[arg(long)]
    pub idp_client_id: Option<String>,
    /// enterprise: the user's ID token from the IdP, in this file (else MCPPROXY_OAUTH_ID_TOKEN).
    #[arg(long)]
    pub id_token_file: Option<std::path::PathBuf>,
    /// workload: the platform's JWT in this file (else MCPPROXY_OAUTH_WORKLOAD_TOKEN).
    #[arg(long)]
    pub workload_token_file: Option<std::path::PathBuf>,
}

/// The grant `args` ask for, its missing parts taken from the environment variables named in
/// the flags' help and then from the conformance runner's `context` (`client_id`,
/// `client_secret`, `private_key_pem`, `signing_algorithm`, `idp_*`, `valid_jwt`); `client_id`
/// and `client_secret` are `--client-id` and `--client-secret` as given.
pub fn grant_config(
    args: &GrantArgs,
    client_id: Option<String>,
    client_secret: Option<String>,
    context: Option<&Value>,
) -> Result<Option<GrantConfig>, String> {
    let Some(kind) = args.grant.as_deref() else {
        return Ok(None);
    };
    let from_context = |key: &str| {
        context
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|_| SecretSource::Env(name.into()))
    };
    let file = |path: &Option<std::path::PathBuf>| path.clone().map(SecretSource::File);
    let client_id = client_id.or_else(|| from_context("client_id"));
    let alg = match args
        .client_key_alg
        .clone()
        .or_else(|| from_context("signing_algorithm"))
    {
        Some(alg) => Some(
            SigningAlg::parse(&alg)
                .ok_or_else(|| format!("--client-key-alg {alg:?} is not ES256 or RS256"))?,
        ),
        None => None,
    };
    let secret = file(&args.client_secret_file)
        .or_else(|| client_secret.map(SecretSource::Inline))
        .or_else(|| from_context("client_secret").map(SecretSource::Inline));
    let key = file(&args.client_key_file)
        .or_else(|| from_context("private_key_pem").map(SecretSource::Inline));
    let auth = match (key, secret, args.token_endpoint_auth_method.as_deref()) {
        (Some(key), _, _) => ClientAuthConfig::PrivateKeyJwt {
            key,
            alg,
            kid: None,
        },
        (None, Some(secret), Some("client_secret_post")) => ClientAuthConfig::SecretPost(secret),
        (None, Some(secret), _) => ClientAuthConfig::SecretBasic(secret),
        (None, None, _) => ClientAuthConfig::None,
    };
    let client = |auth: ClientAuthConfig| -> Result<ClientConfigured, String> {
        Ok(ClientConfigured {
            client_id: client_id
                .clone()
                .ok_or_else(|| format!("--grant {kind} needs --client-id"))?,
            auth,
        })
    };
    Ok(Some(match kind {
        "client_credentials" => {
            if auth == ClientAuthConfig::None {
                return Err(
                    "--grant client_credentials needs a client secret (--client-secret-file, \
                     MCPPROXY_OAUTH_CLIENT_SECRET) or a key (--client-key-file)"
                        .into(),
                );
            }
            GrantConfig::ClientCredentials {
                client: client(auth)?,
            }
        }
        "enterprise" => {
            let token_endpoint = args
                .idp_token_endpoint
                .clone()
                .or_else(|| from_context("idp_token_endpoint"))
                .ok_or("--grant enterprise needs --idp-token-endpoint")?;
            let idp_client_id = args
                .idp_client_id
                .clone()
                .or_else(|| from_context("idp_client_id"))
                .ok_or("--grant enterprise needs --idp-client-id")?;
            let subject = file(&args.id_token_file)
                .or_else(|| env("MCPPROXY_OAUTH_ID_TOKEN"))
                .or_else(|| from_context("idp_id_token").map(SecretSource::Inline))
                .ok_or("--grant enterprise needs --id-token-file (or MCPPROXY_OAUTH_ID_TOKEN)")?;
            GrantConfig::Enterprise {
                idp: IdpConfig {
                    issuer: args
                        .idp_issuer
                        .clone()
                        .or_else(|| from_context("idp_issuer"))
                        .unwrap_or_else(|| token_endpoint.clone()),
                    token_endpoint,
                    client: ClientConfigured {
                        client_id: idp_client_id,
                        auth: ClientAuthConfig::None,
                    },
                },
                subject,
                subject_is_refresh_token: false,
                client: client(auth)?,
            }
        }
        "workload" => GrantConfig::Workload {
            token: file(&args.workload_token_file)
                .or_else(|| env("MCPPROXY_OAUTH_WORKLOAD_TOKEN"))
                .or_else(|| from_context("valid_jwt").map(SecretSource::Inline))
                .ok_or(
                    "--grant workload needs --workload-token-file (or MCPPROXY_OAUTH_WORKLOAD_TOKEN)",
                )?,
        },
        other => return Err(format!("--grant {other:?} is not a grant this build knows")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(grant: &str) -> GrantArgs {
        GrantArgs {
            grant: Some(grant.into()),
            ..GrantArgs::default()
        }
    }

    #[test]
    fn flags_and_the_conformance_context_give_each_kind() {
        assert_eq!(
            grant_config(&GrantArgs::default(), None, None, None),
            Ok(None)
        );
        let context = serde_json::json!({
            "client_id": "cc", "client_secret": "s3cret-from-context",
            "private_key_pem": "-----BEGIN PRIVATE KEY-----", "signing_algorithm": "ES256",
            "idp_client_id": "idp-c", "idp_id_token": "id.token.jwt",
            "idp_issuer": "http://127.0.0.1:1", "idp_token_endpoint": "http://127.0.0.1:1/token",
            "valid_jwt": "workload.jwt.value",
        });
        let cc = grant_config(&args("client_credentials"), None, None, Some(&context))
            .unwrap()
            .unwrap();
        assert!(
            matches!(&cc, GrantConfig::ClientCredentials { client }
                if client.client_id == "cc" && client.auth.method() == "private_key_jwt"),
            "a key in the context wins: {cc:?}"
        );
        let basic = grant_config(
            &args("client_credentials"),
            Some("flag-client".into()),
            Some("flag-secret".into()),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(&basic, GrantConfig::ClientCredentials { client }
                if client.client_id == "flag-client"
                    && client.auth
                        == ClientAuthConfig::SecretBasic(SecretSource::Inline("flag-secret".into()))));
        let GrantConfig::Enterprise {
            idp,
            subject,
            client,
            ..
        } = grant_config(&args("enterprise"), None, None, Some(&context))
            .unwrap()
            .unwrap()
        else {
            panic!("enterprise")
        };
        assert_eq!(idp.client.client_id, "idp-c");
        assert_eq!(subject, SecretSource::Inline("id.token.jwt".into()));
        assert_eq!(client.client_id, "cc");
        assert_eq!(
            grant_config(&args("workload"), None, None, Some(&context)).unwrap(),
            Some(GrantConfig::Workload {
                token: SecretSource::Inline("workload.jwt.value".into())
            })
        );
    }

    #[test]
    fn a_missing_part_is_named() {
        for (kind, says) in [
            ("client_credentials", "needs a client secret"),
            ("enterprise", "--idp-token-endpoint"),
            ("workload", "--workload-token-file"),
        ] {
            let e = grant_config(&args(kind), Some("c".into()), None, None).unwrap_err();
            assert!(e.contains(says), "{kind}: {e}");
        }
    }
}
