//! Reads what `server_view` needs from a running supervisor: its status, the server's recent
//! flow rows from the database, the last failure's trace, and the pending authorization link.

use super::links::AuthLinks;
use super::view::{AuthLinkView, ServerView, ViewInputs, server_view};
use crate::clock::now_ms;
use crate::supervisor::{SupervisorError, SupervisorHandle};
use crate::upstream::actor::ServerStatus;

/// Flow rows read per server: enough to find the last successful refresh in practice.
const FLOWS_PER_SERVER: u32 = 50;

pub async fn view_of(
    handle: &SupervisorHandle,
    links: &AuthLinks,
    status: &ServerStatus,
) -> Result<ServerView, SupervisorError> {
    let flows = handle
        .flows(Some(status.name.clone()), None, FLOWS_PER_SERVER)
        .await?;
    let last_failed = status.last_flow.as_ref().filter(|id| {
        flows
            .iter()
            .any(|f| &f.flow_id == *id && f.state == "failed")
    });
    let trace = match last_failed {
        Some(id) => handle.flow_trace(id).await?,
        None => Vec::new(),
    };
    // Only shown: a lease that cannot be read now leaves the field empty.
    let lease = handle.lease(&status.server_key).await.unwrap_or_default();
    let login_link = links.for_server(status).map(|l| AuthLinkView {
        url: l.url.to_string(),
        browser_opened: l.browser_opened,
        browser_error: l.browser_error,
    });
    Ok(server_view(
        status,
        ViewInputs {
            flows: &flows,
            last_failure: trace.iter().rev().find(|e| e.step == "failed"),
            login_link,
            lease: lease.as_ref(),
            now: now_ms(),
        },
    ))
}

/// Every server's view, sorted by name.
pub async fn views(
    handle: &SupervisorHandle,
    links: &AuthLinks,
) -> Result<Vec<ServerView>, SupervisorError> {
    let mut out = Vec::new();
    for status in handle.status().await? {
        out.push(view_of(handle, links, &status).await?);
    }
    Ok(out)
}

/// One server's view; `Ok(None)` when it is not configured.
pub async fn view(
    handle: &SupervisorHandle,
    links: &AuthLinks,
    name: &str,
) -> Result<Option<ServerView>, SupervisorError> {
    match handle.server_status(name).await {
        Ok(status) => Ok(Some(view_of(handle, links, &status).await?)),
        Err(SupervisorError::UnknownServer { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
