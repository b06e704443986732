//! The OAuth protocol engine for one upstream MCP server: discovery, client identity, scope
//! selection, authorization code + PKCE through a loopback redirect, and token requests. No
//! actors and no storage here: the supervisor drives these pieces.

pub mod browser;
pub mod callback;
pub mod client_identity;
pub mod device;
pub mod diagnose;
pub mod discovery;
pub mod dpop;
pub mod error;
pub mod grants;
pub mod http;
pub mod login;
pub mod scope;
pub mod token;

pub use error::{Endpoint, ErrorClass, OAuthError};
