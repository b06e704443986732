//! Observability: redaction shared by every writer, the JSON log layer, and flow traces.

pub mod flow_logger;
pub mod logging;
pub mod redact;
pub mod trace;
