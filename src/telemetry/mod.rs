//! Observability: redaction shared by every writer, the registry of known secrets, inert
//! text for terminals, the log layers, and flow traces.

pub mod flow_logger;
pub mod inert;
pub mod logging;
pub mod redact;
pub mod secrets;
pub mod trace;
