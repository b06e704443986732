//! The flow claim, the one operation both backends offer for "one flow per server, across
//! processes and hosts, claimed before any token request": `Store::claim` takes the server's
//! lease (SQLite: the OS file lock, then the lease row; PostgreSQL: the lease row in one
//! transaction), records the flow and re-reads the token under it. The `Claim` it returns is
//! what the flow writes with (fenced), marks an unanswered refresh with, and ends with
//! (releasing the lease). A claim dropped without `finish` (a cancelled or panicked flow) is
//! released in the background; one `abandon`ed is left as a crash leaves it.
//!
//! ```text
//! claim ─ lease taken (fence n) + flow row + token re-read ─┬─ newer token: adopt, finish(Succeeded)
//!                                                           ├─ ambiguous: re-read, decide
//!                                                           └─ token request ─ finish(Saved): written
//!                                                                             only WHERE fence = n
//! ```

use std::time::{Duration, Instant};

use super::backend::Store;
use super::error::StoreError;
use super::lease::{ClaimRead, ClaimRequest, FlowEnd, LeaseRef, LeaseRow, RefreshTokenId};
use super::lease::{WriteGuard, Written};
use super::lock::{self, FlowLock};
use super::model::{StoredClient, StoredToken};
use super::postgres::Attempt;

/// How often a PostgreSQL claim that waits looks at a held lease again, besides being woken
/// by the holder's release (which is heard at once): a holder that died is seen once its
/// lease expires.
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// A server's lease, held by one flow of this instance.
pub struct Claim {
    store: Store,
    lease: LeaseRef,
    read: ClaimRead,
    waited: bool,
    /// SQLite: the file lock that makes the claim exclusive; released when the claim goes.
    _file_lock: Option<FlowLock>,
    /// Not finished yet: dropping it releases the lease in the background.
    open: bool,
}

/// One attempt at a claim that was not granted: another flow holds the lease.
#[derive(Debug)]
pub struct Busy {
    /// Its lease row, where it has one (a process of a build before leases holds only the
    /// SQLite file lock).
    pub holder: Option<LeaseRow>,
}

impl Claim {
    /// The lease as data (server, owner, flow, fence).
    pub fn lease(&self) -> &LeaseRef {
        &self.lease
    }

    /// What was read under the lease: the token another instance may have written meanwhile,
    /// its client, whether a login wrote it, and an ambiguous mark.
    pub fn read(&self) -> &ClaimRead {
        &self.read
    }

    /// Takes what was read (the claim keeps an empty read).
    pub fn take_read(&mut self) -> ClaimRead {
        std::mem::take(&mut self.read)
    }

    /// Whether another flow held the lease when this claim asked: a login that waited adopts
    /// the token that flow stored.
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Saves `token` (and `client`) under the lease, which is kept: only while the lease row
    /// holds this claim's fence and `guard` allows.
    pub async fn save(
        &self,
        token: &StoredToken,
        client: Option<&StoredClient>,
        guard: Option<&WriteGuard>,
    ) -> Result<Written, StoreError> {
        self.store
            .save_under_lease(&self.lease, token, client, guard)
            .await
    }

    /// Marks the stored token ambiguous: a refresh presenting `presented` was sent and its
    /// answer never came (the server may have rotated the refresh token). Only under this
    /// claim's fence and while the row holds that refresh token; the next claim reports it.
    pub async fn mark_ambiguous(&self, presented: RefreshTokenId) -> Result<bool, StoreError> {
        match &self.store {
            Store::Sqlite(s) => {
                let lease = self.lease.clone();
                s.registry()
                    .write(move |db| db.mark_ambiguous(&lease, presented))
                    .await
            }
            Store::Postgres(pg) => pg.mark_ambiguous(&self.lease, presented).await,
        }
    }

    /// Ends the flow as `end` says, in one transaction with the lease's release (and, for
    /// `Saved`, the fenced save). On `Ok` the claim is over; on `Err` nothing changed and the
    /// claim still holds: finish again, or drop it (which releases it).
    pub async fn finish(&mut self, end: FlowEnd<'_>) -> Result<Written, StoreError> {
        let written = match &self.store {
            Store::Sqlite(s) => {
                let lease = self.lease.clone();
                let end = owned_end(end);
                s.registry()
                    .write(move |db| db.finish_claim(&lease, &end.as_end()))
                    .await?
            }
            Store::Postgres(pg) => pg.finish_claim(&self.lease, &end).await?,
        };
        self.open = false;
        self._file_lock = None;
        Ok(written)
    }

    /// Leaves the lease as a process that died leaves it: nothing is released (SQLite: the
    /// file lock goes, as the kernel drops it; PostgreSQL: the row holds until it expires).
    /// Returns the lease, whose writes are refused once another claim took it over.
    #[doc(hidden)]
    pub fn abandon(mut self) -> LeaseRef {
        self.open = false;
        self.lease.clone()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // SQLite: the file lock is held until the row is released, so the next claim of the
        // server finds the flow closed and the lease free.
        let file_lock = self._file_lock.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime to release on: the lease expires by itself
        };
        let (store, lease) = (self.store.clone(), self.lease.clone());
        let error = "the flow ended without finishing (cancelled, or it failed)";
        runtime.spawn(async move {
            let released = match &store {
                Store::Sqlite(s) => {
                    let lease = lease.clone();
                    s.registry()
                        .write(move |db| db.release_claim(&lease, error))
                        .await
                }
                Store::Postgres(pg) => pg.release(&lease, error).await,
            };
            drop(file_lock);
            if let Err(e) = released {
                tracing::warn!(
                    server_key = %lease.server_key, error = %e,
                    "a dropped claim could not be released; its lease expires by itself"
                );
            }
        });
    }
}

/// A `FlowEnd` that owns its rows, to move into the SQLite registry's job.
// Built once per finish and moved once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum OwnedEnd {
    Saved {
        token: StoredToken,
        client: Option<StoredClient>,
        guard: Option<WriteGuard>,
    },
    Succeeded,
    Failed(String),
}

fn owned_end(end: FlowEnd<'_>) -> OwnedEnd {
    match end {
        FlowEnd::Saved {
            token,
            client,
            guard,
        } => OwnedEnd::Saved {
            token: token.clone(),
            client: client.cloned(),
            guard,
        },
        FlowEnd::Succeeded => OwnedEnd::Succeeded,
        FlowEnd::Failed(error) => OwnedEnd::Failed(error),
    }
}

impl OwnedEnd {
    fn as_end(&self) -> FlowEnd<'_> {
        match self {
            OwnedEnd::Saved {
                token,
                client,
                guard,
            } => FlowEnd::Saved {
                token,
                client: client.as_ref(),
                guard: guard.clone(),
            },
            OwnedEnd::Succeeded => FlowEnd::Succeeded,
            OwnedEnd::Failed(error) => FlowEnd::Failed(error.clone()),
        }
    }
}

impl Store {
    /// Claims the server `request` names before any token request: waits up to
    /// `request.wait` for a lease another flow holds (then `StoreError::LockTimeout`), records
    /// the flow and re-reads the token under the lease.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<Claim, StoreError> {
        match self {
            Store::Sqlite(_) => self.claim_sqlite(request).await,
            Store::Postgres(_) => self.claim_postgres(request).await,
        }
    }

    /// One attempt, no wait: the claim, or who holds the lease.
    pub async fn try_claim(
        &self,
        request: &ClaimRequest,
    ) -> Result<Result<Claim, Busy>, StoreError> {
        let once = ClaimRequest {
            wait: Duration::ZERO,
            ..request.clone()
        };
        match self.claim(&once).await {
            Ok(claim) => Ok(Ok(claim)),
            Err(StoreError::LockTimeout { .. }) => Ok(Err(Busy {
                holder: self.lease(&request.server_key).await?,
            })),
            Err(e) => Err(e),
        }
    }

    fn new_claim(
        &self,
        request: &ClaimRequest,
        fence: i64,
        read: ClaimRead,
        waited: bool,
        file_lock: Option<FlowLock>,
    ) -> Claim {
        Claim {
            store: self.clone(),
            lease: LeaseRef {
                server_key: request.server_key.clone(),
                owner: request.owner.clone(),
                flow_id: request.flow_id.clone(),
                fence,
            },
            read,
            waited,
            _file_lock: file_lock,
            open: true,
        }
    }

    async fn claim_sqlite(&self, request: &ClaimRequest) -> Result<Claim, StoreError> {
        let Store::Sqlite(s) = self else {
            unreachable!("called for SQLite stores only")
        };
        let key = &request.server_key;
        let (file_lock, waited) = match lock::try_acquire(s.lock_dir(), key)? {
            Some(held) => (held, false),
            None if request.wait.is_zero() => {
                return Err(StoreError::LockTimeout {
                    server_key: key.clone(),
                    waited_ms: 0,
                });
            }
            None => (lock::acquire(s.lock_dir(), key, request.wait).await?, true),
        };
        let lease = LeaseRef {
            server_key: key.clone(),
            owner: request.owner.clone(),
            flow_id: request.flow_id.clone(),
            fence: 0,
        };
        let (name, kind) = (request.server_name.clone(), request.kind);
        let lease_ms = millis(request.lease);
        let (fence, read) = s
            .registry()
            .call(move |db| db.claim_and_read(&lease, &name, kind, lease_ms))
            .await?;
        Ok(self.new_claim(request, fence, read, waited, Some(file_lock)))
    }

    async fn claim_postgres(&self, request: &ClaimRequest) -> Result<Claim, StoreError> {
        let Store::Postgres(pg) = self else {
            unreachable!("called for PostgreSQL stores only")
        };
        let started = Instant::now();
        // Subscribed before the first look, so a release in between is not missed.
        let mut changes = pg.listener().subscribe();
        let lease = LeaseRef {
            server_key: request.server_key.clone(),
            owner: request.owner.clone(),
            flow_id: request.flow_id.clone(),
            fence: 0,
        };
        let lease_ms = millis(request.lease);
        let mut waited = false;
        loop {
            match pg
                .try_claim(&lease, &request.server_name, request.kind, lease_ms)
                .await?
            {
                Attempt::Claimed { fence, read } => {
                    return Ok(self.new_claim(request, fence, read, waited, None));
                }
                Attempt::Busy(_) => {
                    let left = request.wait.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(StoreError::LockTimeout {
                            server_key: request.server_key.clone(),
                            waited_ms: started.elapsed().as_millis() as u64,
                        });
                    }
                    waited = true;
                    let released = async {
                        loop {
                            match changes.recv().await {
                                Ok(super::changes::StoreChange::Lease(key))
                                    if key == request.server_key =>
                                {
                                    return;
                                }
                                Ok(_) => {}
                                // Lagged or closed: look again now.
                                Err(_) => return,
                            }
                        }
                    };
                    let _ = tokio::time::timeout(left.min(CLAIM_POLL), released).await;
                }
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
