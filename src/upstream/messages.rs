//! The messages an `UpstreamActor` answers, and their answers (`handlers` says how).

use actix::prelude::*;

use super::state::{Failure, Millis, TokenId};
use crate::mcp::BearerChallenge;
use crate::oauth::dpop::Dpop;

/// A usable access token handed to a caller, with the flow that produced it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: oauth2::AccessToken,
    pub expires_at: Option<Millis>,
    /// The correlation ID of the flow this caller waited for, if it waited for one.
    pub flow_id: Option<String>,
    /// `Bearer`, or `DPoP`: then every request with the token carries a proof of `dpop`'s key.
    pub token_type: String,
    pub dpop: Option<Dpop>,
}

/// Why a server gave a caller no token: `failure` is the typed reason (match on it, not on
/// the message).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{server}: {failure}")]
pub struct UpstreamError {
    pub server: String,
    pub failure: Failure,
    pub flow_id: Option<String>,
}

pub type Reply = Result<Grant, UpstreamError>;

/// A caller needs a usable token: load, refresh or log in as needed (FR-001..003).
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct Reconnect;

/// `access_token()` found no usable snapshot.
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct AccessToken;

/// The upstream answered 401 to the token `token` (named by its id: no token text reaches
/// the actor in a report).
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct ReportUnauthorized {
    pub token: TokenId,
    pub challenge: Option<BearerChallenge>,
}

/// The upstream answered 403 to the token `token`; `challenge` is its `WWW-Authenticate`.
#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct ReportForbidden {
    pub token: TokenId,
    pub challenge: BearerChallenge,
}

#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct Login;

#[derive(Message)]
#[rtype(result = "Result<Grant, UpstreamError>")]
pub struct Refresh;

#[derive(Message)]
#[rtype(result = "Result<(), UpstreamError>")]
pub struct Logout;

#[derive(Message)]
#[rtype(result = "super::status::ServerStatus")]
pub struct GetStatus;

/// Shutdown: start nothing new, cancel a login (it only waits for a person), and answer once
/// a running refresh and any unsaved token are in the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// The store may have been changed by another process (sent by the store watcher).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckStore;

/// The MCP protocol version the embedding runtime negotiated (already checked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportProtocolVersion(pub String);
