//! Opening the authorization URL. The `BROWSER` environment variable (a command given the URL,
//! `%s` marking where it goes) and `--browser-command` win; otherwise the platform's opener;
//! with `--no-browser` the URL is printed for the user to open.

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

    /// Opens `url` without waiting for the browser to exit.
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
        let mut child = command.spawn().map_err(|e| {
            OAuthError::Browser(format!("{e}; set BROWSER, pass --browser-command, or use --no-browser and open the URL yourself"))
        })?;
        // Reap the child whenever it exits; a real browser may outlive the flow.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }
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
