//! The OAuth test server: a real OAuth 2.1 authorization server and a protected MCP endpoint,
//! with short TTLs and fault injection, that tests start in-process on an ephemeral port.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use oauth_test_server::{Config, OAuthTestServer};
//! let server = OAuthTestServer::start(Config::default()).await?;
//! println!("MCP endpoint: {}", server.mcp_url());
//! # Ok(()) }
//! ```

pub mod config;
mod dpop;
pub mod faults;
pub mod grants;
mod jwt;
pub mod platform;
mod routes;
mod serve;
mod state;
pub mod test_keys;

use std::sync::Arc;
use std::time::Duration;

pub use config::{Config, DeviceAnnounced};
pub use dpop::NonceRotation;
pub use faults::{Fault, FaultKind, FaultTarget};
pub use grants::{IdpPolicy, JwtClient, KeySource, TrustedIssuer};
pub use platform::Platform;
pub use state::{Secrets, Stats};

/// A running test server. Dropping it stops the server and closes every connection.
pub struct OAuthTestServer {
    state: state::AppState,
    task: tokio::task::JoinHandle<()>,
}

impl OAuthTestServer {
    /// Binds 127.0.0.1 on `config.port` (0 = ephemeral) and serves in the background.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        for fault in &config.faults {
            fault
                .validate()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let state = Arc::new(state::Shared::new(config, base_url));
        let app = routes::router(state.clone());
        let task = tokio::spawn(serve::accept_loop(listener, app));
        Ok(OAuthTestServer { state, task })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.state.base_url
    }

    /// The issuer: the base URL plus the configured issuer path, if any.
    pub fn issuer(&self) -> String {
        self.state.issuer()
    }

    /// The protected MCP endpoint (and its RFC 8707 resource identifier).
    pub fn mcp_url(&self) -> String {
        self.state.mcp_resource()
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().stats.clone()
    }

    /// Every secret the server ever issued, for tests that prove none of them leaked.
    pub fn secrets(&self) -> Secrets {
        self.state.lock().secrets.clone()
    }

    /// Arms a fault (replacing any other fault of the same target).
    pub fn inject(&self, fault: Fault) -> Result<(), String> {
        fault.validate()?;
        self.state.lock().faults.arm(fault);
        Ok(())
    }

    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// Moves the server's clock forward, so codes and tokens expire without the test sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.state.advance_clock(by);
    }

    /// From now on the MCP endpoint trusts (and its resource metadata names) the
    /// authorization server `issuer`, e.g. this server's own again after a move.
    pub fn trust_authorization_server(&self, issuer: &str) {
        self.state.lock().trusted_issuer = Some(issuer.to_string());
    }

    /// The server's signing keys (`/jwks.json`): what an authorization server trusting this
    /// one as an IdP verifies its ID-JAGs with.
    pub fn jwks(&self) -> serde_json::Value {
        self.state.signer.jwks().clone()
    }

    /// This server as an issuer another one trusts (its issuer and its JWKS, inline).
    pub fn as_trusted_issuer(&self) -> TrustedIssuer {
        TrustedIssuer::new(self.issuer(), KeySource::Jwks(self.jwks()))
    }

    /// An ID token for `client_id` about `subject`: what an SSO login at this server as the
    /// enterprise IdP hands the client (`POST /control/id-token` over HTTP).
    pub fn issue_id_token(&self, client_id: &str, subject: &str) -> String {
        let mut inner = self.state.lock();
        routes::grants::issue_id_token(&self.state, &mut inner, client_id, subject)
    }

    /// From now on the IdP grants token exchanges under `policy`.
    pub fn set_idp_policy(&self, policy: IdpPolicy) {
        self.state.lock().idp_policy = policy;
    }

    /// From now on the jwt-bearer grant accepts ID-JAGs of `idp`.
    pub fn trust_idp(&self, idp: TrustedIssuer) {
        self.state.lock().trusted_idps.push(idp);
    }

    /// From now on the jwt-bearer grant accepts workload JWTs of `platform`.
    pub fn trust_workload_issuer(&self, platform: TrustedIssuer) {
        self.state.lock().trusted_workload_issuers.push(platform);
    }

    /// Registers a `private_key_jwt` client.
    pub fn register_jwt_client(&self, client: JwtClient) {
        self.state.lock().add_jwt_client(&client);
    }

    /// Stops the server and waits until its listener is closed.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for OAuthTestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
