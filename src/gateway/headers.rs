//! Which headers cross the gateway, each way. Everything not named here passes unchanged, so
//! the MCP headers (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`,
//! `Last-Event-ID`, `Accept`, `Content-Type`, ...) go through both ways.
//!
//! Towards the upstream: the hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header
//! it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`, `Trailer`)
//! and `Host`/`Content-Length` (set again for the upstream connection) are dropped; so are the
//! client's credentials (`Authorization`, `Proxy-Authorization`, `Cookie`, `X-API-Key`, `DPoP`:
//! the gateway's token and proof replace them), `Origin` and `Referer` (they name this
//! listener, and a `Referer` may carry `?apikey=`), the forwarding headers a client could forge
//! (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`), `Expect` (the body is already read) and
//! `Accept-Encoding` (answers are relayed as they are, and an SSE stream is checked event by
//! event). `Via` (RFC 9110 §7.6.3) is added both ways.
//!
//! Towards the client: hop-by-hop headers, `Content-Length` (set from the relayed body),
//! `WWW-Authenticate` (a challenge would start the client's own OAuth against this gateway),
//! `Set-Cookie` (every server shares this listener's origin) and `DPoP-Nonce` (it is for the
//! gateway's own proofs) are dropped.

use actix_web::http::header::HeaderMap as ClientHeaders;
use reqwest::header::{HeaderMap as UpstreamHeaders, HeaderName, HeaderValue};

/// What this gateway calls itself in `Via`.
pub const VIA: &str = "1.1 mcpproxy-oauth";

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const NOT_UPSTREAM: &[&str] = &[
    "host",
    "content-length",
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "dpop",
    "origin",
    "referer",
    "forwarded",
    "x-real-ip",
    "expect",
    "accept-encoding",
];

const NOT_TO_CLIENT: &[&str] = &[
    "content-length",
    "www-authenticate",
    "proxy-authenticate",
    "set-cookie",
    "dpop-nonce",
];

/// The names listed in `Connection` headers (lowercase): hop-by-hop for this connection.
fn connection_listed<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether a client's request header (lowercase name) goes upstream.
fn goes_upstream(name: &str, listed: &[String]) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || NOT_UPSTREAM.contains(&name)
        || name.starts_with("x-forwarded-")
        || name == "via"
        || listed.iter().any(|l| l == name))
}

/// Whether an upstream answer's header (lowercase name) goes back to the client.
fn goes_to_client(name: &str, listed: &[String]) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || NOT_TO_CLIENT.contains(&name)
        || name == "via"
        || listed.iter().any(|l| l == name))
}

/// `Via` with this hop appended to what earlier hops wrote.
fn via<'a>(earlier: impl Iterator<Item = &'a [u8]>) -> Option<HeaderValue> {
    let mut hops: Vec<&str> = earlier
        .filter_map(|v| std::str::from_utf8(v).ok())
        .collect();
    hops.push(VIA);
    HeaderValue::from_str(&hops.join(", ")).ok()
}

/// The headers of the client's request that go upstream.
pub fn to_upstream(incoming: &ClientHeaders) -> UpstreamHeaders {
    let listed = connection_listed(incoming.get_all("connection").map(|v| v.as_bytes()));
    let mut out = UpstreamHeaders::with_capacity(incoming.len() + 1);
    for (name, value) in incoming {
        if !goes_upstream(name.as_str(), &listed) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(name, value);
        }
    }
    if let Some(v) = via(incoming.get_all("via").map(|v| v.as_bytes())) {
        out.insert("via", v);
    }
    out
}

/// The upstream answer's headers that go back to the client, as (name, value) pairs for
/// actix's response builder (`Via` apart: [`via_to_client`]).
pub fn to_client(upstream: &UpstreamHeaders) -> impl Iterator<Item = (&str, &[u8])> {
    let listed = connection_listed(upstream.get_all("connection").iter().map(|v| v.as_bytes()));
    upstream
        .iter()
        .filter(move |(name, _)| goes_to_client(name.as_str(), &listed))
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
}

/// The `Via` value for an answer relayed from `upstream`.
pub fn via_to_client(upstream: &UpstreamHeaders) -> Option<HeaderValue> {
    via(upstream.get_all("via").iter().map(|v| v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName as AName, HeaderValue as AValue};

    fn client(headers: &[(&str, &str)]) -> ClientHeaders {
        let mut map = ClientHeaders::new();
        for (n, v) in headers {
            map.append(
                AName::from_bytes(n.as_bytes()).unwrap(),
                AValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_here_and_mcp_headers_go_up() {
        let incoming = client(&[
            ("authorization", "Bearer the-clients-own"),
            ("x-api-key", "gateway-key-0123456789"),
            ("cookie", "session=1"),
            ("dpop", "client.proof"),
            ("proxy-authorization", "Basic x"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("host", "127.0.0.1:8080"),
            ("content-length", "12"),
            ("origin", "http://127.0.0.1:8080"),
            (
                "referer",
                "http://127.0.0.1:8080/mcp/x?apikey=gateway-key-0123456789",
            ),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept-encoding", "gzip"),
            ("mcp-session-id", "s-1"),
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("last-event-id", "42"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("user-agent", "sdk"),
        ]);
        let out = to_upstream(&incoming);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        for kept in [
            "mcp-session-id",
            "mcp-protocol-version",
            "mcp-method",
            "mcp-name",
            "last-event-id",
            "accept",
            "content-type",
            "user-agent",
            "via",
        ] {
            assert!(names.contains(&kept), "{kept} must go upstream: {names:?}");
        }
        assert_eq!(names.len(), 9, "nothing else goes upstream: {names:?}");
        assert_eq!(out["via"], VIA);
        assert_eq!(out["last-event-id"], "42");
    }

    #[test]
    fn challenges_cookies_and_nonces_stay_upstream_and_the_rest_comes_back() {
        let mut upstream = UpstreamHeaders::new();
        for (n, v) in [
            ("www-authenticate", "Bearer resource_metadata=\"x\""),
            ("set-cookie", "a=b"),
            ("dpop-nonce", "n-1"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "s-2"),
            ("retry-after", "3"),
            ("via", "1.1 upstream-lb"),
        ] {
            upstream.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let back: Vec<&str> = to_client(&upstream).map(|(n, _)| n).collect();
        assert_eq!(back, ["content-type", "mcp-session-id", "retry-after"]);
        assert_eq!(
            via_to_client(&upstream).unwrap(),
            "1.1 upstream-lb, 1.1 mcpproxy-oauth"
        );
    }
}
