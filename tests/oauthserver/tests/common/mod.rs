//! A minimal protocol walker for the server's own tests: registration, PKCE, the authorization
//! redirect (read, not followed), token requests and MCP calls, over real loopback HTTP.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth_test_server::{Config, Fault, FaultKind, FaultTarget, OAuthTestServer};
use rand::RngCore;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const REDIRECT_URI: &str = "http://127.0.0.1:5555/callback";

pub async fn start(config: Config) -> OAuthTestServer {
    OAuthTestServer::start(config)
        .await
        .expect("the test server starts on loopback")
}

/// The test server with `config` and a public client registered at it.
pub async fn with_public_client(config: Config) -> (OAuthTestServer, Registered) {
    let srv = start(config).await;
    let reg = register(&srv, "none").await;
    (srv, reg)
}

/// The test server with `config`, a public client and the token response of its login.
pub async fn logged_in_with(config: Config) -> (OAuthTestServer, Registered, Value) {
    let (srv, reg) = with_public_client(config).await;
    let tokens = login(&srv, &reg).await;
    (srv, reg, tokens)
}

/// Arms `kind` at `target` for the next request only.
pub fn arm_once(srv: &OAuthTestServer, target: FaultTarget, kind: FaultKind) {
    srv.inject(Fault::new(target, kind).times(1))
        .expect("the fault is valid for its target");
}

/// A token response's field as text (`access_token`, `refresh_token`).
pub fn field<'a>(tokens: &'a Value, name: &str) -> &'a str {
    tokens[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {tokens}"))
}

/// A response's JSON body.
pub async fn body_of(response: Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// GET `url`; its JSON body.
pub async fn get_json(url: String) -> Value {
    body_of(http().get(url).send().await.unwrap()).await
}

/// POST `body` as JSON to `url`.
pub async fn post_json(url: String, body: &Value) -> Response {
    http().post(url).json(body).send().await.unwrap()
}

/// The authorization server metadata at the RFC 8414 location of the server's root.
pub async fn as_metadata(srv: &OAuthTestServer) -> Value {
    get_json(format!(
        "{}/.well-known/oauth-authorization-server",
        srv.url()
    ))
    .await
}

thread_local! {
    // Building a client loads the system's root certificates (~60 ms); libtest runs each test
    // on its own thread with its own runtime, so one client per thread is one per test.
    static HTTP: reqwest::Client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
}

/// An HTTP client that never follows redirects and never waits more than 10 s.
pub fn http() -> reqwest::Client {
    HTTP.with(Clone::clone)
}

#[derive(Debug, Clone)]
pub struct Registered {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub method: String,
}

pub async fn register(srv: &OAuthTestServer, method: &str) -> Registered {
    let response = http()
        .post(format!("{}/register", srv.issuer()))
        .json(&json!({"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": method,
                      "client_name": "walker", "grant_types": ["authorization_code", "refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "registration answers 201"
    );
    let body: Value = response.json().await.unwrap();
    Registered {
        client_id: body["client_id"].as_str().unwrap().to_string(),
        client_secret: body["client_secret"].as_str().map(String::from),
        method: body["token_endpoint_auth_method"]
            .as_str()
            .unwrap()
            .to_string(),
    }
}

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

pub fn pkce() -> Pkce {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

/// Sends an authorization request with the given parameters; returns the response.
pub async fn authorize_raw(srv: &OAuthTestServer, params: &[(&str, &str)]) -> Response {
    http()
        .get(format!("{}/authorize", srv.issuer()))
        .query(params)
        .send()
        .await
        .unwrap()
}

/// The query parameters of the 302's Location.
pub fn redirect_params(response: &Response) -> HashMap<String, String> {
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "authorization answers with a redirect"
    );
    let location = response.headers()["location"].to_str().unwrap();
    let url = url::Url::parse(location).unwrap();
    assert!(
        location.starts_with("http://127.0.0.1:"),
        "redirects to the loopback client: {location}"
    );
    url.query_pairs().into_owned().collect()
}

/// An authorization request's parameters for `reg` with `challenge` (S256), then `extra`.
pub fn code_request<'a>(
    reg: &'a Registered,
    challenge: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", reg.client_id.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    params.extend_from_slice(extra);
    params
}

/// The redirect's parameters of an authorization request for `reg` with a fresh PKCE
/// challenge and `extra`.
pub async fn authorize_redirect(
    srv: &OAuthTestServer,
    reg: &Registered,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let pkce = pkce();
    redirect_params(&authorize_raw(srv, &code_request(reg, &pkce.challenge, extra)).await)
}

/// A standard authorization request; returns the code and the PKCE verifier.
pub async fn authorize(
    srv: &OAuthTestServer,
    reg: &Registered,
    extra: &[(&str, &str)],
) -> (String, String) {
    let pkce = pkce();
    let mut with_state = vec![("state", "xyz")];
    with_state.extend_from_slice(extra);
    let response = authorize_raw(srv, &code_request(reg, &pkce.challenge, &with_state)).await;
    let q = redirect_params(&response);
    assert_eq!(q.get("state").map(String::as_str), Some("xyz"));
    assert_eq!(q.get("iss"), Some(&srv.issuer()), "RFC 9207 iss is sent");
    let code = q
        .get("code")
        .unwrap_or_else(|| panic!("no code in redirect: {q:?}"))
        .clone();
    (code, pkce.verifier)
}

/// A token request authenticated as the client registered.
pub async fn token_request(
    srv: &OAuthTestServer,
    reg: &Registered,
    form: &[(&str, &str)],
) -> Response {
    let mut form: Vec<(&str, &str)> = form.to_vec();
    let mut request = http().post(format!("{}/token", srv.issuer()));
    match reg.method.as_str() {
        "client_secret_basic" => {
            request = request.basic_auth(&reg.client_id, reg.client_secret.as_deref());
        }
        "client_secret_post" => {
            form.push(("client_id", &reg.client_id));
            form.push(("client_secret", reg.client_secret.as_deref().unwrap()));
        }
        _ => form.push(("client_id", &reg.client_id)),
    }
    request.form(&form).send().await.unwrap()
}

pub async fn exchange(
    srv: &OAuthTestServer,
    reg: &Registered,
    code: &str,
    verifier: &str,
) -> Response {
    exchange_with(srv, reg, code, verifier, &[]).await
}

/// The code exchange with `extra` parameters (a `resource`).
pub async fn exchange_with(
    srv: &OAuthTestServer,
    reg: &Registered,
    code: &str,
    verifier: &str,
    extra: &[(&str, &str)],
) -> Response {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", verifier),
    ];
    form.extend_from_slice(extra);
    token_request(srv, reg, &form).await
}

/// An authorization with `extra` parameters and its code exchanged; the token response body.
pub async fn login_with(srv: &OAuthTestServer, reg: &Registered, extra: &[(&str, &str)]) -> Value {
    let (code, verifier) = authorize(srv, reg, extra).await;
    body_of(exchange(srv, reg, &code, &verifier).await).await
}

/// Registration, authorization and code exchange; returns the token response body.
pub async fn login(srv: &OAuthTestServer, reg: &Registered) -> Value {
    let (code, verifier) = authorize(srv, reg, &[]).await;
    let response = exchange(srv, reg, &code, &verifier).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

pub async fn refresh(srv: &OAuthTestServer, reg: &Registered, refresh_token: &str) -> Response {
    token_request(
        srv,
        reg,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

pub async fn mcp(
    srv: &OAuthTestServer,
    token: Option<&str>,
    method: &str,
    params: Value,
) -> Response {
    let mut request = http()
        .post(srv.mcp_url())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The status of a `ping` with `token`.
pub async fn ping(srv: &OAuthTestServer, token: Option<&str>) -> StatusCode {
    mcp(srv, token, "ping", json!({})).await.status()
}

pub async fn oauth_error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_string()
}

pub fn challenge(response: &Response) -> String {
    response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string()
}
