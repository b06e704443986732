//! Log capture and the secret scan. A test binary has one global subscriber, installed by the
//! first capture it asks for: `captured_logs` (tracing's own JSON format) or `project_logs`
//! (the project's `JsonLayer`, span fields flattened as `serve` writes them); a binary uses
//! one of the two.

use std::sync::{Arc, Mutex, OnceLock};

use mcpproxy_oauth::telemetry::logging::{JsonLayer, SharedWriter};
use oauth_test_server::OAuthTestServer;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where a capture writes: shared bytes.
#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

fn text_of(buffer: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// Every log line this test binary writes from now on, at trace level as JSON (one global
/// subscriber per binary; later calls share it). For tests that scan logs for secrets.
pub fn captured_logs() -> String {
    let buffer = LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .json()
            .with_writer(move || Sink(writer.clone()))
            .init();
        buffer
    });
    text_of(buffer)
}

/// Every log line this test binary writes from now on, at trace level, through the project's
/// JSON layer (one global subscriber per binary; later calls share it).
pub fn project_logs() -> String {
    let buffer = LOGS.get_or_init(|| {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let writer: SharedWriter = Arc::new(Mutex::new(Box::new(Sink(bytes.clone()))));
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("trace"))
            .with(JsonLayer::new(writer))
            .init();
        bytes
    });
    text_of(buffer)
}

/// [`project_logs`], a JSON value a line.
pub fn project_log_lines() -> Vec<Value> {
    project_logs()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect()
}

/// Fails if any secret the server issued appears in `text`.
pub fn assert_no_secret(srv: &OAuthTestServer, text: &str) {
    for secret in srv.secrets().all() {
        assert!(!text.contains(secret), "a secret leaked into: {text}");
    }
}

/// `assert_no_secret` for text that may carry an authorization link a person must open: a
/// `state` may appear there (as `state=...` in the URL), and nowhere else.
pub fn assert_no_secret_but_auth_links(srv: &OAuthTestServer, text: &str) {
    let secrets = srv.secrets();
    for secret in secrets
        .all()
        .filter(|s| !secrets.states.iter().any(|st| st == s))
    {
        assert!(!text.contains(secret), "a secret leaked into: {text}");
    }
    for state in &secrets.states {
        for (at, _) in text.match_indices(state.as_str()) {
            assert!(
                text[..at].ends_with("state="),
                "a state appears outside an authorization link: {text}"
            );
        }
    }
}
