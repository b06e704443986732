//! Observability: redaction shared by every writer, the JSON log layer, and flow traces.

pub mod logging;
pub mod redact;
