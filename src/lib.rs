//! mcpproxy-oauth: the OAuth subsystem of an MCP proxy.
//!
//! - [`oauth`]: the protocol engine (discovery, registration, PKCE login, token requests).
//! - [`mcp`]: a minimal MCP Streamable HTTP client that turns 401/403 into typed challenges.
//!
//! See ARCHITECTURE.md for how the pieces fit.

pub mod api;
pub mod auth_links;
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
