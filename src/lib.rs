//! mcpproxy-oauth: the OAuth subsystem of an MCP proxy.
//!
//! The protocol engine, the supervisor and the observability layers land module by module; see
//! ARCHITECTURE.md for what exists today.
