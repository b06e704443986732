//! The rows the store takes in and hands out: a server's token (with the DPoP key it is bound
//! to), a client identity, a line of the status view, a flow's history row, what a flow reads
//! when it starts, and how much flow history is kept. A row holds each secret as a
//! [`Secret`], so its derived `Debug` shows none.

use super::secret::Secret;

/// Reads a row type from a result row whose columns are its fields, in the order written:
/// `from_columns! { r => FlowRow: flow_id, server_name, ... }` reads column 0 into `flow_id`,
/// column 1 into `server_name`, and so on; the first column that does not read is the error.
macro_rules! from_columns {
    ($row:expr => $ty:ident: $($field:ident),+ $(,)?) => {{
        let row = $row;
        let mut column = 0usize..;
        Ok($ty { $($field: row.get(column.next().unwrap_or_default())?),+ })
    }};
}
pub(super) use from_columns;

/// A persisted token. `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredToken {
    pub server_key: String,
    pub server_name: String,
    pub server_url: String,
    pub resource: Option<String>,
    pub issuer: Option<String>,
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub token_type: String,
    pub scope: Option<String>,
    pub expires_at: Option<i64>,
    pub obtained_at: i64,
    pub flow_id: Option<String>,
    /// The DPoP key the token is bound to (RFC 9449), if any.
    pub dpop: Option<StoredDpopKey>,
}

/// A DPoP key as stored: the private scalar (base64url, a secret) and its public thumbprint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDpopKey {
    pub private_key: Secret,
    pub jkt: String,
}

/// A persisted client identity with the endpoints a refresh needs. `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredClient {
    pub server_key: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub token_endpoint_auth_method: String,
    pub source: String,
    pub redirect_uri: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub resource: String,
    pub iss_parameter_supported: bool,
    pub registration_json: Option<String>,
}

/// A registration response without RFC 7592's management token (older builds stored it):
/// the one form in which `StoredClient::registration_json` is written.
pub(super) fn without_management_token(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.remove("registration_access_token");
            serde_json::Value::Object(map).to_string()
        }
        _ => json.to_string(),
    }
}

/// One row of the `oauth_token_status` view.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenStatusRow {
    pub server_key: String,
    pub server_name: String,
    pub server_url: String,
    pub status: String,
    pub expires_at: Option<i64>,
    pub has_refresh_token: bool,
    pub scope: Option<String>,
    pub updated_at: i64,
}

/// One row of `oauth_flows`: a flow's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlowRow {
    pub flow_id: String,
    pub server_name: String,
    pub kind: String,
    pub state: String,
    pub owner: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

/// What a flow reads when it starts, in the same registry job that records it.
#[derive(Debug, Default)]
pub struct FlowStart {
    /// The flow row could not be written (only history is at stake: the flow goes on).
    pub not_recorded: Option<String>,
    pub token: Option<StoredToken>,
    pub client: Option<StoredClient>,
    /// The stored token was written by a login flow.
    pub token_by_login: bool,
}

/// How much flow history `oauth_flows` keeps. Running flows and the flow that wrote a stored
/// token are always kept; any other flow goes when it is older than `max_age` or not among the
/// newest `max_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRetention {
    pub max_age: std::time::Duration,
    pub max_count: u32,
    /// Rows deleted per pruning step at most, so one step never holds the registry long.
    pub batch: u32,
    /// A pruning step runs after this many recorded flows (and at open).
    pub every_flows: u32,
}

impl Default for FlowRetention {
    /// 30 days, 10,000 flows; 500 rows a step, a step every 256 flows.
    fn default() -> Self {
        FlowRetention {
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
            max_count: 10_000,
            batch: 500,
            every_flows: 256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lease::ClaimRead;
    use super::*;

    const SECRETS: [&str; 4] = [
        "at-secret-value-0001",
        "rt-secret-value-0002",
        "dpop-private-scalar-0003",
        "client-secret-value-0004",
    ];

    fn token() -> StoredToken {
        StoredToken {
            server_key: "k".into(),
            server_name: "srv".into(),
            server_url: "http://127.0.0.1:1/mcp".into(),
            resource: None,
            issuer: None,
            access_token: SECRETS[0].into(),
            refresh_token: Some(SECRETS[1].into()),
            token_type: "DPoP".into(),
            scope: Some("read".into()),
            expires_at: Some(2),
            obtained_at: 1,
            flow_id: Some("f-1".into()),
            dpop: Some(StoredDpopKey {
                private_key: SECRETS[2].into(),
                jkt: "jkt-shown".into(),
            }),
        }
    }

    fn client() -> StoredClient {
        StoredClient {
            server_key: "k".into(),
            issuer: "http://127.0.0.1:2".into(),
            client_id: "cid-shown".into(),
            client_secret: Some(SECRETS[3].into()),
            token_endpoint_auth_method: "client_secret_post".into(),
            source: "configured".into(),
            redirect_uri: "http://127.0.0.1:3/callback".into(),
            authorization_endpoint: "http://127.0.0.1:2/authorize".into(),
            token_endpoint: "http://127.0.0.1:2/token".into(),
            revocation_endpoint: None,
            resource: "http://127.0.0.1:1/mcp".into(),
            iss_parameter_supported: true,
            registration_json: None,
        }
    }

    #[test]
    fn every_row_that_holds_a_secret_shows_none_in_its_debug() {
        let start = FlowStart {
            not_recorded: None,
            token: Some(token()),
            client: Some(client()),
            token_by_login: true,
        };
        let read = ClaimRead {
            token: Some(token()),
            client: Some(client()),
            token_by_login: false,
            ambiguous: None,
        };
        let shown = [
            format!("{:?}", token()),
            format!("{:?}", token().dpop),
            format!("{:?}", client()),
            format!("{start:?}"),
            format!("{read:?}"),
        ];
        for text in &shown {
            for secret in SECRETS {
                assert!(!text.contains(secret), "{secret} shown in {text}");
            }
            assert!(
                text.contains("[redacted:"),
                "a redacted value is marked: {text}"
            );
        }
        // What is not secret is still shown.
        assert!(shown[0].contains("jkt-shown") && shown[2].contains("cid-shown"));
    }
}
