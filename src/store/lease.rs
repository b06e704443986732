//! The flow claim's vocabulary, the same on both backends: a lease per server (who holds it,
//! its fence number, until when), what a claim asks for and reads under the lease, the mark of
//! a refresh whose answer never came, what a fenced write did, and a refresh token's
//! non-secret id. Data only: the SQLite side is in `leases`, PostgreSQL's in `postgres`, the
//! claim handle in `backend`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::model::{StoredClient, StoredToken};
use super::secret::{Secret, fingerprint};

/// A refresh token named without its secret: the first 8 bytes of its SHA-256. A flow names
/// the refresh token it presented (refused with `invalid_grant`, or whose answer never came)
/// by it, and the store acts only while the row still holds that very token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefreshTokenId(u64);

impl RefreshTokenId {
    pub fn of(refresh_token: &str) -> Self {
        RefreshTokenId(fingerprint(refresh_token))
    }

    pub fn of_secret(refresh_token: &Secret) -> Self {
        RefreshTokenId(refresh_token.fingerprint())
    }
}

impl fmt::Debug for RefreshTokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefreshTokenId({:016x})", self.0)
    }
}

/// A claim's lease as data: the server, whose it is, the flow it runs, and its fence number
/// (one higher at every claim of the server). Writes under the claim carry it; the store
/// refuses them once the row holds another fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub server_key: String,
    pub owner: String,
    pub flow_id: String,
    pub fence: i64,
}

/// A server's lease row: who holds it (or last held it), the fence, and until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRow {
    pub server_key: String,
    pub owner: String,
    pub fence: i64,
    pub flow_id: Option<String>,
    pub claimed_at: i64,
    /// `None`: released.
    pub expires_at: Option<i64>,
}

/// What a flow asks for when it claims a server.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub server_key: String,
    pub server_name: String,
    /// The flow's correlation ID (its `oauth_flows` row).
    pub flow_id: String,
    /// `refresh` or `login`.
    pub kind: &'static str,
    /// Which instance claims (`oauth_flows.owner`, `oauth_leases.owner`).
    pub owner: String,
    /// How long the lease holds without a release: longer than the flow's HTTP deadline (see
    /// [`lease_for`]), so a live holder is never taken over mid-request.
    pub lease: Duration,
    /// How long to wait for a lease another flow holds (zero: one attempt).
    pub wait: Duration,
}

/// The margin a lease keeps beyond the flow's own deadline.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The lease for a flow whose token requests end within `deadline` (a refresh's HTTP
/// timeout, a login's timeout): the deadline plus [`LEASE_MARGIN`].
pub fn lease_for(deadline: Duration) -> Duration {
    deadline.saturating_add(LEASE_MARGIN)
}

/// A refresh sent under an earlier claim whose answer never came: the server may have
/// consumed (and rotated) the refresh token the row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    /// When the refresh was marked (unix ms, the marking process's clock).
    pub since: i64,
    /// The flow that sent it.
    pub flow_id: Option<String>,
}

/// What a claim read under its lease, in the same transaction that took it: another instance
/// may have refreshed or logged in meanwhile (the caller adopts its token and sends nothing),
/// or left a refresh ambiguous (the caller decides with that in mind).
#[derive(Debug, Default)]
pub struct ClaimRead {
    pub token: Option<StoredToken>,
    pub client: Option<StoredClient>,
    /// The stored token was written by a login flow.
    pub token_by_login: bool,
    pub ambiguous: Option<Ambiguous>,
}

impl ClaimRead {
    /// The stored token, if it is not the one the caller holds (compared by access token):
    /// another instance wrote it after the caller's last read.
    pub fn newer_than(&self, current: &StoredToken) -> Option<&StoredToken> {
        self.token
            .as_ref()
            .filter(|t| t.access_token != current.access_token)
    }
}

/// What a write under a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written (and, for a finish, the flow recorded and the lease released).
    Done,
    /// Refused: the lease row holds another fence (this claim was taken over); nothing was
    /// written and nothing released.
    LeaseLost { fence_now: Option<i64> },
    /// Refused: the caller's guard said the flow was overtaken (a logout, a newer login);
    /// nothing was written. A finish still recorded the flow and released the lease.
    Overtaken,
}

/// Checked right before a claim's write, inside its transaction: false means the flow was
/// overtaken in this process (the actor's generation moved on) and nothing is written.
#[derive(Clone)]
pub struct WriteGuard(Arc<dyn Fn() -> bool + Send + Sync>);

impl WriteGuard {
    pub fn new(still_current: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        WriteGuard(Arc::new(still_current))
    }

    pub(super) fn allows(guard: Option<&WriteGuard>) -> bool {
        guard.is_none_or(|g| (g.0)())
    }
}

impl fmt::Debug for WriteGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteGuard")
    }
}

/// How a claimed flow ends.
#[derive(Debug)]
pub enum FlowEnd<'a> {
    /// The flow obtained `token` (with `client`, a client identity it obtained): saved under
    /// the fence, the flow marked succeeded and the lease released, in one transaction.
    Saved {
        token: &'a StoredToken,
        client: Option<&'a StoredClient>,
        guard: Option<WriteGuard>,
    },
    /// Nothing to write (it adopted another instance's token): succeeded, released.
    Succeeded,
    /// Failed with this error (scrubbed of known secrets before it is stored): released.
    Failed(String),
}

/// What ending a claimed flow writes, the same on both backends (after the fence check).
pub(super) struct EndPlan<'a> {
    /// The token (and client) to save.
    pub save: Option<(&'a StoredToken, Option<&'a StoredClient>)>,
    /// The flow's error (`None`: it succeeded).
    pub error: Option<&'a str>,
    pub written: Written,
}

impl FlowEnd<'_> {
    /// What ending this way writes: a save that the guard refuses is recorded as overtaken.
    pub(super) fn plan(&self) -> EndPlan<'_> {
        match self {
            FlowEnd::Saved {
                token,
                client,
                guard,
            } if WriteGuard::allows(guard.as_ref()) => EndPlan {
                save: Some((token, *client)),
                error: None,
                written: Written::Done,
            },
            FlowEnd::Saved { .. } => EndPlan {
                save: None,
                error: Some("overtaken (a logout or a newer login)"),
                written: Written::Overtaken,
            },
            FlowEnd::Succeeded => EndPlan {
                save: None,
                error: None,
                written: Written::Done,
            },
            FlowEnd::Failed(error) => EndPlan {
                save: None,
                error: Some(error),
                written: Written::Done,
            },
        }
    }
}

/// What a claimed flow whose lease was taken over records as its end.
pub(super) const LEASE_TAKEN_OVER: &str = "its lease was taken over";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_token_id_tells_tokens_apart_and_shows_no_secret() {
        // Told apart by their fingerprint (`secret`'s test); the same id, held or stored.
        let id = RefreshTokenId::of("rt-secret-value-0001");
        assert_eq!(
            id,
            RefreshTokenId::of_secret(&"rt-secret-value-0001".into())
        );
        assert_ne!(id, RefreshTokenId::of("rt-secret-value-0002"));
        let shown = format!("{id:?}");
        assert!(!shown.contains("secret") && shown.len() == "RefreshTokenId()".len() + 16);
        assert_eq!(
            lease_for(Duration::from_secs(60)),
            Duration::from_secs(90),
            "a lease outlives the request it covers"
        );
    }
}
