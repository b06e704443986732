//! The credential kinds a server may be configured with instead of an interactive login
//! (`"oauth": {"grant": ...}` in the config, `connect --grant ...`), and the one function that
//! turns a kind into a token at the server's authorization server ([`obtain`]):
//!
//! - [`GrantConfig::ClientCredentials`]: the client as itself, with a secret
//!   (`client_secret_basic` / `_post`) or a private key (`private_key_jwt`);
//! - [`GrantConfig::Enterprise`]: the user's ID token at the enterprise IdP, exchanged for an
//!   ID-JAG (RFC 8693), redeemed with the jwt-bearer grant (SEP-990);
//! - [`GrantConfig::Workload`]: a platform JWT read from a file, redeemed with the jwt-bearer
//!   grant and no client authentication (SEP-1933).
//!
//! Secrets (client secrets, keys, ID tokens, workload JWTs) are named by where they live (a
//! file, an environment variable) and read at every grant: a rotated file is picked up, and
//! nothing secret sits in the config value longer than one request. What is read is
//! registered with the log scrubber before it can reach a log line. A source that cannot be
//! read is a permanent [`GrantError::Credential`] naming the source, never its content.

use std::fmt;
use std::path::{Path, PathBuf};

use oauth2::ClientSecret;

use super::client_key::{ClientKey, SigningAlg};
use super::jwt_bearer::{self, Assertion};
use super::token_exchange::{self, IdJagTarget, SubjectToken};
use super::{ClientAuth, GrantClient, GrantError, TokenServer, client_credentials};
use crate::oauth::dpop::Dpop;
use crate::oauth::http::OAuthHttp;
use crate::oauth::token::TokenSet;

/// The largest secret file read (a JWT of a few kilobytes; a key is read by [`ClientKey`]).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where a secret lives. `Debug` and `Display` name the place, never the value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config itself (registered with the log scrubber when read).
    Inline(String),
    /// A file, read (and trimmed) at every use.
    File(PathBuf),
    /// An environment variable, read at every use.
    Env(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("the value in the config"),
            SecretSource::File(path) => write!(f, "the file {}", path.display()),
            SecretSource::Env(name) => write!(f, "the environment variable {name}"),
        }
    }
}

impl SecretSource {
    /// The secret now, trimmed, registered with the log scrubber. `what` names it in errors.
    pub fn read(&self, what: &str) -> Result<String, GrantError> {
        let error = |reason: String| GrantError::Credential {
            what: what.to_string(),
            source_name: self.to_string(),
            reason,
        };
        let value = match self {
            SecretSource::Inline(value) => value.clone(),
            SecretSource::Env(name) => std::env::var(name).map_err(|e| error(e.to_string()))?,
            SecretSource::File(path) => read_bounded(path).map_err(error)?,
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(error("it is empty".into()));
        }
        crate::telemetry::secrets::register(&value);
        Ok(value)
    }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "it is larger than {MAX_SECRET_FILE_BYTES} bytes, more than any secret or JWT; is it the right file?"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())
}

/// How a configured client proves itself at a token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuthConfig {
    /// A public client (`client_id` in the form).
    None,
    SecretBasic(SecretSource),
    SecretPost(SecretSource),
    /// `private_key_jwt` with a PEM private key, usually a file (`alg`: from the key when not
    /// given).
    PrivateKeyJwt {
        key: SecretSource,
        alg: Option<SigningAlg>,
        kid: Option<String>,
    },
}

impl ClientAuthConfig {
    /// The RFC 8414 name of the method.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuthConfig::None => "none",
            ClientAuthConfig::SecretBasic(_) => "client_secret_basic",
            ClientAuthConfig::SecretPost(_) => "client_secret_post",
            ClientAuthConfig::PrivateKeyJwt { .. } => "private_key_jwt",
        }
    }
}

/// A client as configured: its ID and how it authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfigured {
    pub client_id: String,
    pub auth: ClientAuthConfig,
}

impl ClientConfigured {
    /// The client with its secret or key read now.
    pub fn load(&self) -> Result<GrantClient, GrantError> {
        let secret =
            |source: &SecretSource| source.read("the client secret").map(ClientSecret::new);
        let auth = match &self.auth {
            ClientAuthConfig::None => ClientAuth::None,
            ClientAuthConfig::SecretBasic(source) => ClientAuth::SecretBasic(secret(source)?),
            ClientAuthConfig::SecretPost(source) => ClientAuth::SecretPost(secret(source)?),
            ClientAuthConfig::PrivateKeyJwt { key, alg, kid } => {
                let key = match key {
                    SecretSource::File(path) => ClientKey::read_pem_file(path, *alg)?,
                    other => {
                        let pem = other.read("the client key")?;
                        ClientKey::from_pem(pem.as_bytes(), *alg, &other.to_string())?
                    }
                };
                ClientAuth::PrivateKeyJwt(match kid {
                    Some(kid) => key.with_kid(kid.clone()),
                    None => key,
                })
            }
        };
        Ok(GrantClient::new(self.client_id.clone(), auth))
    }
}

/// The enterprise IdP of [`GrantConfig::Enterprise`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpConfig {
    /// Its issuer (client assertions' audience there; errors name it).
    pub issuer: String,
    pub token_endpoint: String,
    /// This client at the IdP.
    pub client: ClientConfigured,
}

/// A credential kind: how the server's tokens are obtained without a user at a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantConfig {
    ClientCredentials {
        client: ClientConfigured,
    },
    Enterprise {
        idp: IdpConfig,
        /// The user's ID token from the IdP (or, with `subject_is_refresh_token`, a refresh
        /// token of this client there).
        subject: SecretSource,
        subject_is_refresh_token: bool,
        /// This client at the MCP authorization server (the one the ID-JAG names).
        client: ClientConfigured,
    },
    Workload {
        /// The platform's JWT (a Kubernetes projected token, a SPIFFE JWT-SVID), re-read at
        /// every grant: the platform rotates it.
        token: SecretSource,
    },
}

impl GrantConfig {
    /// The config's name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            GrantConfig::ClientCredentials { .. } => "client_credentials",
            GrantConfig::Enterprise { .. } => "enterprise",
            GrantConfig::Workload { .. } => "workload",
        }
    }
}

/// Where the token is asked for: the MCP server's authorization server, the resource (RFC
/// 8707) and the scope.
#[derive(Debug, Clone)]
pub struct GrantTarget {
    pub server: TokenServer,
    pub resource: String,
    pub scope: Option<String>,
}

/// Runs the configured grant once: every secret read now, one token request at the
/// authorization server (and, for `enterprise`, one exchange at the IdP before it).
pub async fn obtain(
    http: &OAuthHttp,
    config: &GrantConfig,
    target: &GrantTarget,
    dpop: Option<&Dpop>,
) -> Result<TokenSet, GrantError> {
    let (scope, resource) = (target.scope.as_deref(), Some(target.resource.as_str()));
    match config {
        GrantConfig::ClientCredentials { client } => {
            let client = client.load()?;
            client_credentials::obtain(http, &target.server, &client, scope, resource, dpop).await
        }
        GrantConfig::Enterprise {
            idp,
            subject,
            subject_is_refresh_token,
            client,
        } => {
            let subject = if *subject_is_refresh_token {
                SubjectToken::RefreshToken(subject.read("the IdP refresh token")?)
            } else {
                SubjectToken::IdToken(subject.read("the ID token")?)
            };
            let idp_server = TokenServer {
                issuer: idp.issuer.clone(),
                token_endpoint: idp.token_endpoint.clone(),
            };
            let id_jag_target = IdJagTarget {
                audience: target.server.issuer.clone(),
                resource: Some(target.resource.clone()),
                scope: target.scope.clone(),
            };
            let idp_client = idp.client.load()?;
            let id_jag =
                token_exchange::exchange(http, &idp_server, &idp_client, &subject, &id_jag_target)
                    .await?;
            let client = client.load()?;
            let assertion = Assertion::from(&id_jag);
            jwt_bearer::obtain(
                http,
                &target.server,
                Some(&client),
                &assertion,
                scope,
                resource,
                dpop,
            )
            .await
        }
        GrantConfig::Workload { token } => {
            let assertion = Assertion::workload(&token.read("the workload token")?);
            jwt_bearer::obtain(
                http,
                &target.server,
                None,
                &assertion,
                scope,
                resource,
                dpop,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_named_never_shown_and_read_fresh_each_time() {
        let dir = std::env::temp_dir().join(format!("grants-src-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first-workload-jwt-value\n").unwrap();
        let source = SecretSource::File(file.clone());
        assert_eq!(source.read("t").unwrap(), "first-workload-jwt-value");
        std::fs::write(&file, "second-workload-jwt-value").unwrap();
        assert_eq!(source.read("t").unwrap(), "second-workload-jwt-value");
        let inline = SecretSource::Inline("inline-secret-value-1".into());
        assert!(!format!("{inline:?} {inline}").contains("inline-secret-value-1"));

        std::fs::write(&file, "  \n").unwrap();
        let e = source.read("the workload token").unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let missing = SecretSource::File(dir.join("absent"));
        let e = missing.read("the client secret").unwrap_err();
        assert!(
            e.to_string().contains("the client secret") && e.to_string().contains("absent"),
            "{e}"
        );
        assert!(!e.is_transient());
        let env = SecretSource::Env("MCPPROXY_OAUTH_TEST_UNSET_VARIABLE_7f3".into());
        assert!(
            env.read("the ID token")
                .unwrap_err()
                .to_string()
                .contains("MCPPROXY_OAUTH_TEST_UNSET_VARIABLE_7f3")
        );
    }
}
