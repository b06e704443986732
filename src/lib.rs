//! mcpproxy-oauth: the OAuth subsystem of an MCP proxy. It keeps a set of OAuth-protected
//! upstream MCP servers authorized (discovery, registration, login, refresh, a token store
//! shared by several processes), serves them to MCP clients through a gateway, and answers
//! operators over an HTTP API.
//!
//! The API, what the `mcpproxy-oauth` binary, the tests and the benchmarks build on:
//! - [`supervisor`]: [`supervisor::SupervisorHandle`] runs one actor per server
//!   (`SupervisorHandle::start` with a [`supervisor::SupervisorConfig`]) and hands out their
//!   access tokens, statuses and flows; the library's main entry point.
//! - [`config`]: the server list read from mcpproxy's `mcp_config.json`
//!   ([`config::load`], [`config::UpstreamConfig`]).
//! - [`connect`]: a one-shot connection to one MCP server ([`connect::connect`]), running the
//!   same state machine as the daemon.
//! - [`api`]: the operator's HTTP API, events, metrics and web page ([`api::ApiServer`],
//!   [`api::AuthLinks`]); [`gateway`]: the `/mcp/{server}` passthrough and the stdio bridge.
//! - [`store`]: the token store (SQLite or PostgreSQL) behind [`store::Store`]; its schema and
//!   sealed columns are public because other processes share the database.
//! - [`upstream`]: one server's pure state machine (`upstream::state`) and its actor;
//!   [`scheduler`]: the deadlines of every actor on one timer.
//! - [`oauth`]: the protocol engine (discovery, client identity, PKCE and device login, token
//!   requests, grants, DPoP); [`mcp`]: a minimal MCP Streamable HTTP client that turns 401/403
//!   into typed challenges.
//! - [`diagnose`], [`telemetry`] (logs, flow traces, the registry of known secrets) and
//!   [`clock`] (the one clock, manual in tests).
//!
//! Not API, so `pub(crate)`: the browser-link book behind `api::AuthLinks`; within [`api`] and
//! [`gateway`] the modules only their own handlers use (error shape, event pump, metrics
//! registry, header rules, the relay, the 503 answer) and the gateway's request/answer types;
//! within [`oauth`] the challenge parser (re-exported by [`mcp`]), the metadata types
//! (re-exported by `oauth::discovery`) and the device login. The rest of the engine stays
//! `pub` because the integration tests drive it directly against a real OAuth server.
//!
//! See ARCHITECTURE.md for how the pieces fit.

pub mod api;
pub(crate) mod auth_links;
pub mod clock;
pub mod config;
pub mod connect;
pub mod diagnose;
pub mod gateway;
pub mod mcp;
pub mod oauth;
pub mod scheduler;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod upstream;

/// README.md's Rust examples, compiled by `cargo test` as doctests (and run where they need no
/// network), so that they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
