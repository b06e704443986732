//! Reads what `server_view` needs from a running supervisor: its status, the server's recent
//! flow rows from the database, the last failure's trace, and the pending authorization link.
//! The database is read for the history alone: while it cannot be read (a PostgreSQL that is
//! down), every server is still shown from the supervisor's memory, its history fields empty,
//! and the list says the store is unreachable.

use super::view::{AuthLinkView, ServerView, ViewInputs, server_view};
use crate::auth_links::AuthLinks;
use crate::clock::now_ms;
use crate::store::StoreHealth;
use crate::supervisor::{SupervisorError, SupervisorHandle};
use crate::upstream::actor::ServerStatus;

/// Flow rows read per server: enough to find the last successful refresh in practice.
const FLOWS_PER_SERVER: u32 = 50;

/// One server's view. With `store_up` false the database is not asked (it is known to be
/// unreachable: each read would wait for the store's deadline); a read that fails anyway
/// leaves its fields empty rather than hiding the server.
pub async fn view_of(
    handle: &SupervisorHandle,
    links: &AuthLinks,
    status: &ServerStatus,
    store_up: bool,
) -> ServerView {
    let flows = if store_up {
        let name = Some(status.name.clone());
        let read = handle.flows(name, None, FLOWS_PER_SERVER).await;
        read.unwrap_or_default()
    } else {
        Vec::new()
    };
    let last_failed = status.last_flow.as_ref().filter(|id| {
        flows
            .iter()
            .any(|f| &f.flow_id == *id && f.state == "failed")
    });
    let trace = match last_failed {
        Some(id) => handle.flow_trace(id).await.unwrap_or_default(),
        None => Vec::new(),
    };
    // Only shown: a lease that cannot be read now leaves the field empty.
    let lease = if store_up {
        handle.lease(&status.server_key).await.unwrap_or_default()
    } else {
        None
    };
    let login_link = links.for_server(status).map(|l| AuthLinkView {
        url: l.url.to_string(),
        browser_opened: l.browser_opened,
        browser_error: l.browser_error,
    });
    server_view(
        status,
        ViewInputs {
            flows: &flows,
            last_failure: trace.iter().rev().find(|e| e.step == "failed"),
            login_link,
            lease: lease.as_ref(),
            now: now_ms(),
        },
    )
}

/// Every server's view, sorted by name, and the store's health, checked once first (bounded)
/// so an unreachable database costs one deadline, not one per server.
pub async fn views(
    handle: &SupervisorHandle,
    links: &AuthLinks,
) -> Result<(Vec<ServerView>, StoreHealth), SupervisorError> {
    let store = handle.store_health().await;
    let mut out = Vec::new();
    for status in handle.status().await? {
        out.push(view_of(handle, links, &status, store.reachable).await);
    }
    Ok((out, store))
}

/// One server's view; `Ok(None)` when it is not configured.
pub async fn view(
    handle: &SupervisorHandle,
    links: &AuthLinks,
    name: &str,
) -> Result<Option<ServerView>, SupervisorError> {
    match handle.server_status(name).await {
        Ok(status) => Ok(Some(view_of(handle, links, &status, true).await)),
        Err(SupervisorError::UnknownServer { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
