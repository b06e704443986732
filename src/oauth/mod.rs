//! The OAuth protocol engine for one upstream MCP server: the resource's challenges
//! (`WWW-Authenticate`), discovery, client identity, scope selection, authorization code + PKCE
//! through a loopback redirect, device logins, DPoP, and token requests. No actors, no storage
//! and no MCP here: the supervisor and `connect` drive these pieces, and the MCP client uses
//! them (its challenges and DPoP proofs are this engine's).

pub mod browser;
pub mod callback;
pub(crate) mod challenge;
pub mod client_identity;
pub(crate) mod device;
pub mod discovery;
pub mod dpop;
pub mod error;
pub mod grants;
pub mod http;
pub mod login;
pub(crate) mod metadata;
pub mod scope;
pub mod token;

pub use error::{Endpoint, ErrorClass, OAuthError};
