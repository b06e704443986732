//! The upstream server list, read from mcpproxy's `mcp_config.json` shape:
//! `{"mcpServers": [{"name", "url", "oauth": {"client_id", "client_secret", "scopes",
//! "redirect_port", "extra_params", "device_code", "dpop", "grant", "callback_url"}}]}`.
//! `oauth.grant` names a credential kind that replaces the interactive login
//! (`client_credentials`, `enterprise`, `workload`; see `parse_grant` for each kind's fields): its
//! secrets are named by file or environment variable and read at each grant. `oauth.callback_url`
//! is a public redirect URI in place of the loopback listener. Servers with an `oauth` object (it may be empty) are
//! the ones this subsystem keeps authorized. Unknown fields are ignored; a bad field is an
//! error naming the server and the exact sub-field, with the type expected and never the
//! value (it may be a secret); valid JSON of another shape is a "wrong shape" error. The read
//! is bounded (`MAX_CONFIG_BYTES`).
//!
//! - `server`: `UpstreamConfig`, one server as every layer takes it, and its store key
//! - `parse`: the bounded read and the file's shape; errors that name server and field
//! - `oauth`: a server's `oauth` object, field by field
//! - `grant`: `oauth.grant`, the credential kinds that replace the browser login
//! - `callback`: `oauth.callback_url`, a public redirect URI
//! - `fields`: the field readers they share (strings, secrets by file or variable)

mod callback;
mod fields;
mod grant;
mod oauth;
mod parse;
mod server;

pub use callback::callback_url;
pub use parse::{ConfigError, MAX_CONFIG_BYTES, load, parse};
pub use server::{UpstreamConfig, server_key};
