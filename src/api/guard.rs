//! The request guard, wrapped around the whole App: every route on the listener passes it,
//! the page, `/metrics` and the gateway's `/mcp/` paths included. Only a GET to a configured
//! public callback path (`oauth.callback_url`) does not: the browser the authorization server
//! sends there has no key and the proxy's Host; `state` and PKCE guard it. In order:
//!
//! 1. **Host**, on a loopback listener: exactly `localhost`, `127.0.0.1`, `[::1]` (or the
//!    address bound) with the listener's port. A name that merely resolves to loopback
//!    (`127.0.0.1.evil.example`, DNS rebinding) is refused: the browser would send the
//!    attacker's page's cookies-free requests there as if same-origin.
//! 2. **Origin**, when present: on a loopback listener one of the names above with the port;
//!    elsewhere the request's own `Host`. Another site's page cannot drive the API even
//!    though a simple cross-site POST needs no preflight.
//! 3. **The API key**: `X-API-Key`, `Authorization: Bearer KEY`, `?apikey=KEY`, or the page's
//!    cookie (HttpOnly, SameSite=Strict: never sent by another site's request).
//!
//! Refusals use the API's one JSON error shape (403 `forbidden_host` / `forbidden_origin`,
//! 401 `unauthorized`), except under `/mcp/`: there every refusal is 403 with a JSON-RPC error
//! body, never 401, because an MCP client would answer a 401 by starting an OAuth login of its
//! own against this daemon. No refusal quotes what was presented.

use std::net::{IpAddr, SocketAddr};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::{HttpMessage, HttpResponse};
use serde_json::json;

use super::auth::ApiKey;
use super::error::error;

/// The query parameter that may carry the key (the URL `serve` prints).
pub const KEY_PARAM: &str = "apikey";
/// Paths under this prefix belong to MCP clients: refusals there are JSON-RPC 403s.
pub const MCP_PREFIX: &str = "/mcp/";

/// What the guard checks against; in the App's data.
#[derive(Debug, Clone)]
pub struct Guard {
    key: ApiKey,
    /// The bound address (its real port, when `listen` asked for port 0).
    bound: SocketAddr,
    /// Public callback paths: a browser redirected there by an authorization server (through a
    /// reverse proxy, with the proxy's Host) has no key; `state` and PKCE protect them.
    callback_paths: std::sync::Arc<[String]>,
}

/// How a request proved it has the key (in the request's extensions once admitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVia {
    Header,
    Query,
    Cookie,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Host,
    Origin,
    Key,
}

impl Guard {
    pub fn new(key: ApiKey, bound: SocketAddr) -> Self {
        Guard {
            key,
            bound,
            callback_paths: std::sync::Arc::from(Vec::new()),
        }
    }

    /// Lets a GET to one of `paths` (the public callback paths) through unchecked.
    pub fn with_callback_paths(mut self, paths: &[String]) -> Self {
        self.callback_paths = std::sync::Arc::from(paths.to_vec());
        self
    }

    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    /// The page's cookie name: with the port, since cookies are kept per host, not per port
    /// (two daemons on one machine must not overwrite each other's).
    pub fn cookie_name(&self) -> String {
        format!("mcpproxy_oauth_{}", self.bound.port())
    }

    fn loopback(&self) -> bool {
        self.bound.ip().is_loopback()
    }

    /// Whether `authority` (`host[:port]`) names this loopback listener exactly.
    fn is_own_loopback_authority(&self, authority: &str) -> bool {
        let port = self.bound.port();
        let (host, given_port) = split_authority(authority);
        let port_ok = match given_port {
            Some(p) => p == port,
            // A browser omits the default port only.
            None => port == 80,
        };
        if !port_ok {
            return false;
        }
        let host = host.to_ascii_lowercase();
        let bound_ip = match self.bound.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]") || host == bound_ip
    }

    /// The checks, in order; `Ok` says how the key was presented.
    pub fn check(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        headers: &header::HeaderMap,
        query: &str,
    ) -> Result<KeyVia, Refusal> {
        if self.loopback() && !host.is_some_and(|h| self.is_own_loopback_authority(h)) {
            return Err(Refusal::Host);
        }
        if let Some(origin) = origin {
            let authority = origin
                .strip_prefix("http://")
                .filter(|rest| !rest.is_empty() && !rest.contains('/'));
            let allowed = match authority {
                Some(a) if self.loopback() => self.is_own_loopback_authority(a),
                Some(a) => host.is_some_and(|h| a.eq_ignore_ascii_case(h)),
                None => false,
            };
            if !allowed {
                return Err(Refusal::Origin);
            }
        }
        self.presented_key(headers, query).ok_or(Refusal::Key)
    }

    /// Which of the accepted places holds the key, if any does.
    fn presented_key(&self, headers: &header::HeaderMap, query: &str) -> Option<KeyVia> {
        let header_value = |name: header::HeaderName| {
            headers
                .get_all(name)
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
        };
        let by_header = header_value(header::HeaderName::from_static("x-api-key"))
            .into_iter()
            .any(|v| self.key.matches(v))
            || header_value(header::AUTHORIZATION).into_iter().any(|v| {
                let v = v.trim_start();
                v.get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
                    && self.key.matches(&v[7..])
            });
        if by_header {
            return Some(KeyVia::Header);
        }
        if url::form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == KEY_PARAM && self.key.matches(&v))
        {
            return Some(KeyVia::Query);
        }
        let cookie_name = self.cookie_name();
        let by_cookie = header_value(header::COOKIE).into_iter().any(|line| {
            line.split(';').any(|pair| {
                pair.trim()
                    .split_once('=')
                    .is_some_and(|(k, v)| k == cookie_name && self.key.matches_cookie(v))
            })
        });
        by_cookie.then_some(KeyVia::Cookie)
    }
}

/// `host[:port]` split; an IPv6 literal keeps its brackets. A port that is not a number
/// makes the whole authority the host (and so refused).
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    match port.map(str::parse::<u16>) {
        None => (host, None),
        Some(Ok(p)) => (host, Some(p)),
        Some(Err(_)) => (authority, Some(0)),
    }
}

/// The refusal as an answer: JSON-RPC 403 under `/mcp/`, the API's error shape elsewhere.
pub fn refusal_response(path: &str, refusal: Refusal, port: u16) -> HttpResponse {
    let (status, code, message) = match refusal {
        Refusal::Host => (
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!(
                "this Host is not how this daemon is reached; use http://127.0.0.1:{port}/ (or localhost, [::1])"
            ),
        ),
        Refusal::Origin => (
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "requests from another web origin are refused; use the page this daemon serves, or a \
             client without an Origin header"
                .to_string(),
        ),
        Refusal::Key => (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key: send it as 'X-API-Key: KEY', 'Authorization: Bearer KEY' or \
             '?apikey=KEY'; serve prints the page's URL with it, and keeps it in DATA_DIR/api-key \
             unless --api-key-file or MCPPROXY_OAUTH_API_KEY gives it"
                .to_string(),
        ),
    };
    if path.starts_with(MCP_PREFIX) {
        // Never 401 here: an MCP client would start its own OAuth login against us.
        return HttpResponse::Forbidden().json(json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": -32001, "message": message, "data": {"code": code}},
        }));
    }
    if refusal == Refusal::Key && path == "/" {
        return HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(format!(
                "<!doctype html><meta charset=\"utf-8\"><title>mcpproxy-oauth</title>\
                 <p>This page needs the daemon's API key. Open the URL <code>serve</code> printed \
                 when it started (<code>http://127.0.0.1:{port}/?apikey=KEY</code>); the key is in \
                 <code>DATA_DIR/api-key</code> unless <code>--api-key-file</code> or \
                 <code>MCPPROXY_OAUTH_API_KEY</code> gives it.</p>"
            ));
    }
    error(status, code, message)
}

/// The middleware: refuses what `Guard::check` refuses, and notes how the key came.
pub async fn guard<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(guard) = req.app_data::<Data<Guard>>().cloned() else {
        // An App built without a guard serves nothing.
        let response = error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request guard is not configured",
        );
        return Ok(req.into_response(response).map_into_right_body());
    };
    if req.method() == actix_web::http::Method::GET
        && guard.callback_paths.iter().any(|p| p == req.path())
    {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let text = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{0}invalid"))
    };
    let checked = guard.check(
        text(header::HOST),
        text(header::ORIGIN),
        req.headers(),
        req.query_string(),
    );
    match checked {
        Ok(via) => {
            req.extensions_mut().insert(via);
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(refusal) => {
            let response = refusal_response(req.path(), refusal, guard.bound.port());
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef-key";

    fn guard(bound: &str) -> Guard {
        Guard::new(ApiKey::new(KEY).unwrap(), bound.parse().unwrap())
    }

    fn with_key() -> header::HeaderMap {
        let mut h = header::HeaderMap::new();
        h.insert(
            header::HeaderName::from_static("x-api-key"),
            header::HeaderValue::from_static(KEY),
        );
        h
    }

    /// Asserts that `check` admits each of `accepted` (by the header key) and refuses each of
    /// `refused` for `refusal`.
    fn sorts(
        accepted: &[&str],
        refused: &[&str],
        refusal: Refusal,
        check: impl Fn(&str) -> Result<KeyVia, Refusal>,
    ) {
        for value in accepted {
            assert_eq!(check(value), Ok(KeyVia::Header), "{value:?}");
        }
        for value in refused {
            assert_eq!(check(value), Err(refusal), "{value:?}");
        }
    }

    #[test]
    fn a_loopback_listener_accepts_only_its_own_names_and_port() {
        let g = guard("127.0.0.1:8080");
        let h = with_key();
        let accepted = [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
        ];
        let refused = [
            "127.0.0.1.evil.example:8080",
            "127.0.0.2:8080",
            "127.1:8080",
            "localhost.:8080",
            "evil.example:8080",
            "127.0.0.1:8081",
            "127.0.0.1",
            "127.0.0.1:8080x",
            "",
        ];
        sorts(&accepted, &refused, Refusal::Host, |host| {
            g.check(Some(host), None, &h, "")
        });
        assert_eq!(g.check(None, None, &h, ""), Err(Refusal::Host), "no Host");
        assert_eq!(
            guard("127.0.0.5:80").check(Some("127.0.0.5"), None, &h, ""),
            Ok(KeyVia::Header),
            "the bound address, default port"
        );
    }

    #[test]
    fn an_origin_must_be_one_of_the_loopback_names() {
        let g = guard("127.0.0.1:8080");
        let h = with_key();
        let host = Some("127.0.0.1:8080");
        let accepted = [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ];
        let refused = [
            "http://127.0.0.1.evil.example:8080",
            "http://evil.example",
            "https://127.0.0.1:8080",
            "http://127.0.0.1:9999",
            "null",
            "http://127.0.0.1:8080/x",
        ];
        sorts(&accepted, &refused, Refusal::Origin, |origin| {
            g.check(host, Some(origin), &h, "")
        });
        // Elsewhere the Origin must be the request's own Host.
        let g = guard("0.0.0.0:8080");
        assert_eq!(
            g.check(Some("box.lan:8080"), Some("http://box.lan:8080"), &h, ""),
            Ok(KeyVia::Header)
        );
        assert_eq!(
            g.check(Some("box.lan:8080"), Some("http://evil.example"), &h, ""),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn the_key_is_taken_from_each_documented_place() {
        let g = guard("127.0.0.1:8080");
        let host = Some("127.0.0.1:8080");
        let none = header::HeaderMap::new();
        assert_eq!(g.check(host, None, &none, ""), Err(Refusal::Key));
        assert_eq!(g.check(host, None, &with_key(), ""), Ok(KeyVia::Header));
        let mut bearer = header::HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
        );
        assert_eq!(g.check(host, None, &bearer, ""), Ok(KeyVia::Header));
        assert_eq!(
            g.check(host, None, &none, &format!("x=1&apikey={KEY}")),
            Ok(KeyVia::Query)
        );
        assert_eq!(
            g.check(host, None, &none, "apikey=wrong-wrong-wrong-wrong"),
            Err(Refusal::Key)
        );
        let mut cookie = header::HeaderMap::new();
        let value = format!("other=1; {}={}", g.cookie_name(), g.key().cookie_value());
        cookie.insert(
            header::COOKIE,
            header::HeaderValue::from_str(&value).unwrap(),
        );
        assert_eq!(g.check(host, None, &cookie, ""), Ok(KeyVia::Cookie));
        let mut raw = header::HeaderMap::new();
        let value = format!("{}={KEY}", g.cookie_name());
        raw.insert(
            header::COOKIE,
            header::HeaderValue::from_str(&value).unwrap(),
        );
        assert_eq!(
            g.check(host, None, &raw, ""),
            Err(Refusal::Key),
            "the cookie is not the key"
        );
    }

    #[test]
    fn mcp_paths_are_refused_with_403_and_json_rpc() {
        for refusal in [Refusal::Host, Refusal::Origin, Refusal::Key] {
            let r = refusal_response("/mcp/github", refusal, 8080);
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{refusal:?}");
        }
        assert_eq!(
            refusal_response("/api/v1/servers", Refusal::Key, 8080).status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
