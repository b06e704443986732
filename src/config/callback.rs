//! `oauth.callback_url` (and `serve --callback-url`): a public redirect URI in place of the
//! loopback listener, checked for a scheme, host and path the daemon can safely serve.

use url::Url;

/// Paths of the daemon's listener a callback URL cannot take: they serve something else.
const RESERVED_PATHS: &[&str] = &["/", "/metrics", "/api/", "/mcp/"];

/// A public callback URL (the redirect URI of a daemon behind a reverse proxy): `https`, or
/// `http` on a loopback address (RFC 8252 §7.3, OAuth 2.1 §2.3.1); no user, query or fragment;
/// a path the daemon's listener can serve for it. Errors say what to change.
pub fn callback_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| {
        format!(
            "{text:?} is not a URL ({e}); give the public address that reaches the daemon's \
             callback, e.g. https://proxy.example/oauth/callback"
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{url} is plain http on a non-loopback host: the authorization code would cross \
                 the network in clear; use https (terminated by the reverse proxy), or http on \
                 127.0.0.1, [::1] or localhost"
            ));
        }
        other => {
            return Err(format!(
                "{url} has the scheme {other}: a callback URL is https (or http on loopback)"
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it holds a user name or password; remove them".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{url} has a query or fragment: the authorization server appends its own query \
             (RFC 6749 §3.1.2); give the bare address"
        ));
    }
    let path = url.path();
    if RESERVED_PATHS
        .iter()
        .any(|r| path == *r || (r.ends_with('/') && r.len() > 1 && path.starts_with(r)))
    {
        return Err(format!(
            "{url} has the path {path}, which the daemon's listener serves for something else; \
             use a path of its own such as /oauth/callback"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn callback_urls_are_https_or_loopback_http_with_a_path_of_their_own() {
        for good in [
            "https://proxy.example/oauth/callback",
            "http://127.0.0.1:8080/oauth/callback",
            "http://[::1]:9/cb",
            "http://localhost/cb",
        ] {
            assert_eq!(callback_url(good).unwrap().as_str(), good);
        }
        for (bad, says) in [
            ("http://proxy.example/oauth/callback", "use https"),
            ("ftp://proxy.example/cb", "scheme ftp"),
            ("https://proxy.example/cb?x=1", "query or fragment"),
            ("https://proxy.example/cb#f", "query or fragment"),
            ("https://proxy.example", "path /"),
            ("https://proxy.example/api/v1/cb", "path /api/v1/cb"),
            ("https://proxy.example/mcp/x", "path /mcp/x"),
            ("https://u:p@proxy.example/cb", "user name or password"),
            ("proxy.example/cb", "not a URL"),
        ] {
            let e = callback_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let servers = parse(
            r#"{"mcpServers": [
                {"name": "a", "url": "https://a.example/mcp",
                 "oauth": {"callback_url": "https://p.example/oauth/callback"}},
                {"name": "b", "url": "https://b.example/mcp", "oauth": {}}]}"#,
        )
        .unwrap();
        assert_eq!(
            servers[0].callback_url.as_ref().unwrap().as_str(),
            "https://p.example/oauth/callback"
        );
        assert!(servers[1].callback_url.is_none());
        let e = parse(
            r#"{"mcpServers": [{"name": "a", "url": "https://a.example/mcp",
                "oauth": {"callback_url": "http://p.example/cb"}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("server a: field oauth.callback_url: ") && e.contains("use https"),
            "{e}"
        );
    }
}
