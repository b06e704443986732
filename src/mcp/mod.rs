//! A minimal MCP Streamable HTTP client: enough to initialize a session, list and call tools,
//! and turn the server's 401/403 into typed OAuth challenges.

pub mod client;

pub use crate::oauth::challenge::{BearerChallenge, Challenge, parse_www_authenticate};
pub use client::{McpClient, McpError};
