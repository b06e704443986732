//! Authorization links: the daemon's browser launcher, wrapped so the operator surfaces know,
//! per server, the last authorization URL, whether the browser opened, and why not. A browser
//! that cannot open no longer fails the login: the flow keeps waiting for its callback while
//! the web page shows the link for a person to open (the URL holds a PKCE challenge and a
//! state, never a verifier, code or token).
//!
//! Which server a URL is for: its `resource` parameter names the server's URL. Two servers
//! may share a URL (two accounts on one service); then the URL is matched with the
//! `auth_url` the server's actor publishes in its status while its login waits (set before
//! the launcher runs), looked up by a task right after the launch, or at the next read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;
use url::Url;

use crate::clock::now_ms;
use crate::config::UpstreamConfig;
use crate::oauth::browser::BrowserLauncher;
use crate::oauth::discovery::resource_matches;
use crate::supervisor::SupervisorHandle;
use crate::upstream::actor::ServerStatus;

/// The last authorization request of one server.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthLink {
    pub url: Url,
    pub browser_opened: bool,
    pub browser_error: Option<String>,
    pub at: i64,
}

#[derive(Default)]
struct Book {
    links: HashMap<String, AuthLink>,
    /// Links whose `resource` names several configured servers, until a status tells whose.
    ambiguous: VecDeque<AuthLink>,
    /// Counts every link recorded, so a waiter can tell a new one from an old one.
    version: u64,
}

/// Ambiguous links kept at most (a login makes one; older ones are long over).
const AMBIGUOUS_KEPT: usize = 32;

/// Shared by the wrapped launcher (writer) and the API (reader). Cheap to clone.
#[derive(Clone)]
pub struct AuthLinks {
    book: Arc<Mutex<Book>>,
    changed: watch::Sender<u64>,
    /// (name, url) of every configured server, to tell which server a URL is for.
    servers: Arc<Vec<(String, Url)>>,
    /// The supervisor, once the API runs: its statuses tell servers sharing a URL apart.
    supervisor: Arc<OnceLock<SupervisorHandle>>,
}

impl AuthLinks {
    pub fn new(servers: &[UpstreamConfig]) -> Self {
        AuthLinks {
            book: Arc::default(),
            changed: watch::channel(0).0,
            servers: Arc::new(
                servers
                    .iter()
                    .map(|s| (s.name.clone(), s.url.clone()))
                    .collect(),
            ),
            supervisor: Arc::default(),
        }
    }

    /// Lets links of servers that share a URL be told apart by the servers' statuses.
    pub fn attach(&self, supervisor: SupervisorHandle) {
        let _ = self.supervisor.set(supervisor);
    }

    /// A launcher that records every URL, then hands it to `inner`.
    pub fn wrap(&self, inner: BrowserLauncher) -> BrowserLauncher {
        let links = self.clone();
        // `--no-browser` prints the link on stderr: for the page, nothing was opened.
        let print_only = matches!(inner, BrowserLauncher::PrintOnly);
        BrowserLauncher::handler(move |url: Url| {
            let outcome = inner.open(&url);
            let error = match outcome {
                Err(e) => Some(e.to_string()),
                Ok(()) if print_only => {
                    Some("--no-browser: the link is printed, not opened".to_string())
                }
                Ok(()) => None,
            };
            match &error {
                Some(e) => {
                    tracing::warn!(
                        error = %e,
                        "the browser could not be opened; the authorization link is on the web page \
                         and in GET /api/v1/servers/NAME/login's answer"
                    )
                }
                None => tracing::debug!("browser opened for authorization"),
            }
            links.record(url, error);
        })
    }

    /// The configured servers whose URL is the link's `resource`.
    fn servers_of(&self, url: &Url) -> Vec<String> {
        let Some(resource) = url
            .query_pairs()
            .find(|(k, _)| k == "resource")
            .map(|(_, v)| v.into_owned())
        else {
            return Vec::new();
        };
        self.servers
            .iter()
            .filter(|(_, server_url)| resource_matches(server_url, &resource))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn record(&self, url: Url, browser_error: Option<String>) {
        let link = AuthLink {
            browser_opened: browser_error.is_none(),
            url,
            browser_error,
            at: now_ms(),
        };
        let servers = self.servers_of(&link.url);
        let version = {
            let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
            match servers.as_slice() {
                [] => {
                    tracing::warn!("an authorization URL matched no configured server");
                    return;
                }
                [server] => {
                    book.links.insert(server.clone(), link.clone());
                }
                _ => {
                    if book.ambiguous.len() == AMBIGUOUS_KEPT {
                        book.ambiguous.pop_front();
                    }
                    book.ambiguous.push_back(link.clone());
                }
            }
            book.version += 1;
            book.version
        };
        if servers.len() > 1 {
            self.resolve_soon(link.url);
        }
        self.changed.send_replace(version);
    }

    /// Asks the supervisor (on a task: the launcher, inside a flow, never waits) which
    /// server's waiting login published `url`.
    fn resolve_soon(&self, url: Url) {
        let (Some(supervisor), Ok(runtime)) = (
            self.supervisor.get().cloned(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let links = self.clone();
        runtime.spawn(async move {
            let Ok(statuses) = supervisor.status().await else {
                return;
            };
            if let Some(status) = statuses
                .iter()
                .find(|s| s.auth_url.as_deref() == Some(url.as_str()))
                && links.for_server(status).is_some()
            {
                let version = {
                    let mut book = links.book.lock().unwrap_or_else(|p| p.into_inner());
                    book.version += 1;
                    book.version
                };
                links.changed.send_replace(version);
            }
        });
    }

    /// The server's link: its own, or the ambiguous one its status published.
    pub fn for_server(&self, status: &ServerStatus) -> Option<AuthLink> {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(published) = status.auth_url.as_deref()
            && let Some(at) = book
                .ambiguous
                .iter()
                .position(|l| l.url.as_str() == published)
            && let Some(link) = book.ambiguous.remove(at)
        {
            book.links.insert(status.name.clone(), link);
        }
        book.links.get(&status.name).cloned()
    }

    pub fn get(&self, server: &str) -> Option<AuthLink> {
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.links.get(server).cloned()
    }

    /// Forgets a server's link once its login is over (a used link would only confuse).
    pub fn clear(&self, server: &str) {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.links.remove(server);
    }

    /// Notified on every new link.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until `server` has a link recorded at or after `since` (unix ms). Callers bound it.
    pub async fn wait_for(&self, server: &str, since: i64) -> AuthLink {
        let mut changes = self.watch();
        loop {
            if let Some(link) = self.get(server).filter(|l| l.at >= since) {
                return link;
            }
            if changes.changed().await.is_err() {
                // The sender lives as long as `self`: this cannot end, but must not spin.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> Vec<UpstreamConfig> {
        vec![
            UpstreamConfig::new("a", Url::parse("http://127.0.0.1:1/mcp").unwrap()),
            UpstreamConfig::new("b", Url::parse("http://127.0.0.1:2/mcp").unwrap()),
        ]
    }

    #[tokio::test]
    async fn links_are_recorded_for_the_right_server() {
        let links = AuthLinks::new(&servers());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let inner_seen = seen.clone();
        let launcher = links.wrap(BrowserLauncher::handler(move |u: Url| {
            inner_seen.lock().unwrap().push(u)
        }));
        let url = Url::parse(
            "http://127.0.0.1:9/authorize?client_id=c&resource=http%3A%2F%2F127.0.0.1%3A2%2Fmcp",
        )
        .unwrap();
        let since = now_ms();
        launcher.open(&url).unwrap();
        let link = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            links.wait_for("b", since),
        )
        .await
        .expect("the link is recorded");
        assert_eq!(link.url, url);
        assert!(link.browser_opened && link.browser_error.is_none());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![url.clone()],
            "the inner launcher got it"
        );
        assert!(links.get("a").is_none(), "recorded for b only");
        let print_only = links.wrap(BrowserLauncher::PrintOnly);
        print_only.open(&url).unwrap();
        let link = links.get("b").unwrap();
        assert!(!link.browser_opened, "a printed link was not opened");
        assert!(link.browser_error.unwrap().contains("--no-browser"));
        links.record(url.clone(), Some("no browser".into()));
        let link = links.get("b").unwrap();
        assert!(!link.browser_opened);
        assert_eq!(link.browser_error.as_deref(), Some("no browser"));
        links.clear("b");
        assert!(links.get("b").is_none());
    }
}
