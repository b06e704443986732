//! A one-shot connection to one MCP server: `initialize`, `tools/list` and optionally a
//! `tools/call`, running whatever OAuth the server demands on the way.
//!
//! The decisions are the daemon's: every 401 and 403 goes into the supervisor's state machine
//! ([`crate::upstream::state::step`]) through a thin driver (`driver`) that performs its
//! effects here (no store, no lock, no timers: one process, one run) and keeps no policy of
//! its own. So a 401 is answered by a refresh when a refresh token is at hand, else by a
//! login; a 403 `insufficient_scope` naming scope not yet granted by a login for the union of
//! scopes, at most `max_step_ups` times (any other 403 is `forbidden`); a refresh that fails
//! transiently ends the run with the daemon's explanation (a one-shot run does not wait out a
//! backoff). Where a run differs from a daemon it says so in the machine's
//! [`Policy`](crate::upstream::state::Policy): at most [`MAX_AUTHORIZATIONS`] logins
//! (`max_logins`), and no client registered again before a
//! refresh (`reregister` off: a registered client the server rejects is replaced by a login
//! that registers a new one).
//!
//! With `device_code` the logins use the RFC 8628 device grant (`oauth::device`) instead of a
//! browser redirect.
//!
//! After a refusal of a token that was accepted (the machine's plans say `after_refusal`),
//! the protected resource metadata is read again before the refresh or the login: when it
//! names another authorization server (SEP-2352), the refresh fails as
//! `AuthorizationServerMoved` without presenting the old server's refresh token, and the login
//! happens at the new one, with its own registration. Client identities are kept by issuer, so
//! one server's client is never presented at another.
//!
//! With `--grant` (client credentials, enterprise-managed authorization, workload identity;
//! [`GrantArgs`]) the run never logs in: the machine's policy is a grant server's, and where it
//! asks for a refresh (the first token too) the configured grant runs once
//! ([`crate::oauth::grants::credentials::obtain`]). A failed grant ends the run with its error (no retry, no other
//! grant): the conformance suite's workload scenario checks exactly that.
//!
//! DPoP (RFC 9449) is used when `--dpop` asks for it or the resource requires it
//! ([`crate::oauth::dpop::policy`]): one key for the run, a proof on every token request and,
//! with a DPoP-bound token, on every MCP request.
//!
//! - `options`: what a run takes (`ConnectOptions`), reports and fails with
//! - `run`: the run itself, one MCP step at a time, each retried under the machine's answers
//! - `driver`: the daemon's state machine, its effects performed at once for one run
//! - `authorizer`: the OAuth side of a run: discovery, client identity, DPoP, the flows
//! - `grant_flags`: the `--grant` flags and the conformance context, read into a grant

mod authorizer;
mod driver;
mod grant_flags;
mod options;
mod run;

pub use grant_flags::{GrantArgs, grant_config};
pub use options::{ConnectError, ConnectOptions, ConnectReport, MAX_AUTHORIZATIONS};
pub use run::connect;
