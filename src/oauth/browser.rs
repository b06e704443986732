//! Opening the authorization URL. The `BROWSER` environment variable (a command given the URL,
//! `%s` marking where it goes) and `--browser-command` win; otherwise the platform's opener;
//! with `--no-browser` the URL is printed for the user to open. A browser that cannot be
//! opened falls back to printing the URL.

use std::fmt;
use std::process::Stdio;
use std::sync::Arc;

use url::Url;

use super::error::OAuthError;

/// A function given the authorization URL: how an embedding program (or a test) shows it.
#[derive(Clone)]
pub struct UrlHandler(pub Arc<dyn Fn(Url) + Send + Sync>);

impl fmt::Debug for UrlHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlHandler")
    }
}

impl PartialEq for UrlHandler {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum BrowserLauncher {
    /// A shell command; the URL replaces `%s`, or is appended as the last argument.
    Command(String),
    /// `xdg-open` / `open`.
    Platform,
    /// Print the URL on stderr and wait.
    PrintOnly,
    /// Hand the URL to the embedding program.
    Handler(UrlHandler),
}

impl BrowserLauncher {
    pub fn handler(f: impl Fn(Url) + Send + Sync + 'static) -> Self {
        BrowserLauncher::Handler(UrlHandler(Arc::new(f)))
    }

    /// `--no-browser`, then `--browser-command`, then `$BROWSER`, then the platform opener.
    pub fn from_settings(command: Option<String>, no_browser: bool) -> Self {
        if no_browser {
            return BrowserLauncher::PrintOnly;
        }
        command
            .or_else(|| std::env::var("BROWSER").ok())
            .filter(|c| !c.trim().is_empty())
            .map(BrowserLauncher::Command)
            .unwrap_or(BrowserLauncher::Platform)
    }

    /// Opens `url` without waiting for the browser to exit. A command that cannot start, or
    /// exits non-zero, is a failed launch, not a failed login: the URL is printed and logged
    /// (it holds no secret: the PKCE verifier never leaves this process) so the user can open
    /// it by hand, and the login keeps waiting for the callback.
    pub fn open(&self, url: &Url) -> Result<(), OAuthError> {
        let mut command = match self {
            BrowserLauncher::Handler(handler) => {
                (handler.0)(url.clone());
                return Ok(());
            }
            BrowserLauncher::PrintOnly => {
                eprintln!("Open this URL in a browser to authorize:\n  {url}");
                return Ok(());
            }
            BrowserLauncher::Command(template) => {
                let script = if template.contains("%s") {
                    template.replace("%s", "\"$1\"")
                } else {
                    format!("{template} \"$1\"")
                };
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(script).arg("sh").arg(url.as_str());
                c
            }
            BrowserLauncher::Platform => {
                let opener = if cfg!(target_os = "macos") {
                    "open"
                } else {
                    "xdg-open"
                };
                let mut c = tokio::process::Command::new(opener);
                c.arg(url.as_str());
                c
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(false);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                failed_launch(url, &format!("it cannot start: {e}"));
                return Ok(());
            }
        };
        // Reap the child whenever it exits; a real browser may outlive the flow.
        let url = url.clone();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) if !status.success() => {
                    failed_launch(&url, &format!("it exited with {status}"))
                }
                Ok(_) => {}
                Err(e) => failed_launch(&url, &format!("waiting for it failed: {e}")),
            }
        });
        Ok(())
    }
}

/// Tells the user, on stderr and in the log, to open the URL by hand.
fn failed_launch(url: &Url, reason: &str) {
    tracing::warn!(
        %url,
        reason,
        "the browser command failed; open the authorization URL by hand: the login keeps waiting"
    );
    eprintln!(
        "The browser could not be opened ({reason}); set BROWSER or pass --browser-command to fix that.\n\
         Open this URL in a browser to authorize (the login keeps waiting):\n  {url}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_precedence() {
        assert_eq!(
            BrowserLauncher::from_settings(Some("x".into()), true),
            BrowserLauncher::PrintOnly
        );
        assert_eq!(
            BrowserLauncher::from_settings(Some("firefox".into()), false),
            BrowserLauncher::Command("firefox".into())
        );
    }

    #[tokio::test]
    async fn a_command_receives_the_url_intact() {
        let dir = std::env::temp_dir().join(format!("browser-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("url.txt");
        let url = Url::parse("http://127.0.0.1:1/authorize?a=1&b=two%20words&state=x'y").unwrap();
        // Appended as the last argument, and substituted for %s.
        for template in [
            format!("f() {{ echo \"$1\" > {}; }}; f", out.display()),
            format!("echo %s > {}", out.display()),
        ] {
            let _ = std::fs::remove_file(&out);
            BrowserLauncher::Command(template.clone())
                .open(&url)
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let written = loop {
                if let Ok(s) = std::fs::read_to_string(&out)
                    && !s.is_empty()
                {
                    break s;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the command never ran: {template}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            assert_eq!(written.trim_end(), url.as_str(), "{template}");
        }
    }
}
