mod common;

use common::*;
use oauth_test_server::Config;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_public_client_registers_logs_in_calls_tools_and_refreshes() {
    let (srv, reg) = with_public_client(Config::default()).await;
    assert!(
        reg.client_secret.is_none(),
        "a public client gets no secret"
    );
    let tokens = login(&srv, &reg).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    let access = tokens["access_token"].as_str().unwrap();

    let init = mcp(&srv, Some(access), "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})).await;
    assert_eq!(init.status(), StatusCode::OK);
    assert!(init.headers().contains_key("mcp-session-id"));
    let body = body_of(init).await;
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
    let list = body_of(mcp(&srv, Some(access), "tools/list", json!({})).await).await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "get_time"]);
    let echo = json!({"name": "echo", "arguments": {"message": "hi"}});
    let echo = body_of(mcp(&srv, Some(access), "tools/call", echo).await).await;
    assert_eq!(echo["result"]["content"][0]["text"], "hi");

    let refreshed = refresh(&srv, &reg, field(&tokens, "refresh_token")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed = body_of(refreshed).await;
    assert_ne!(
        refreshed["refresh_token"], tokens["refresh_token"],
        "refresh tokens rotate"
    );
    assert_ne!(refreshed["access_token"], tokens["access_token"]);
    assert_eq!(
        ping(&srv, refreshed["access_token"].as_str()).await,
        StatusCode::OK
    );

    let stats = srv.stats();
    assert_eq!(stats.authorize_requests, 1);
    assert_eq!(stats.token_requests_for("authorization_code"), 1);
    assert_eq!(stats.token_requests_for("refresh_token"), 1);
    assert_eq!(stats.registrations, 1);
    assert_eq!(stats.mcp_requests, 4);
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
    let (srv, reg, first) = logged_in_with(Config::default()).await;
    let old_refresh = field(&first, "refresh_token");
    let second = body_of(refresh(&srv, &reg, old_refresh).await).await;

    let reuse = refresh(&srv, &reg, old_refresh).await;
    assert_eq!(reuse.status(), StatusCode::BAD_REQUEST);
    assert_eq!(oauth_error_code(reuse).await, "invalid_grant");
    // The newest refresh token and the family's access tokens are dead too.
    let newest = refresh(&srv, &reg, field(&second, "refresh_token")).await;
    assert_eq!(oauth_error_code(newest).await, "invalid_grant");
    let call = ping(&srv, second["access_token"].as_str()).await;
    assert_eq!(call, StatusCode::UNAUTHORIZED);
    assert_eq!(srv.stats().refresh_token_reuse, 1);
}

#[tokio::test]
async fn without_rotation_the_refresh_token_stays_and_none_is_returned() {
    let (srv, reg, tokens) =
        logged_in_with(Config::with(|c| c.rotate_refresh_tokens = false)).await;
    let rt = field(&tokens, "refresh_token");
    for _ in 0..2 {
        let body = body_of(refresh(&srv, &reg, rt).await).await;
        assert!(
            body.get("refresh_token").is_none(),
            "the client keeps its refresh token (RFC 6749 §6)"
        );
        assert!(body["access_token"].is_string());
    }
}

#[tokio::test]
async fn no_refresh_token_mode_issues_none() {
    let (_srv, _reg, tokens) =
        logged_in_with(Config::with(|c| c.issue_refresh_tokens = false)).await;
    assert!(tokens.get("refresh_token").is_none());
}

#[tokio::test]
async fn confidential_clients_must_authenticate_as_registered() {
    let srv = start(Config::default()).await;
    for method in ["client_secret_basic", "client_secret_post"] {
        let reg = register(&srv, method).await;
        assert!(reg.client_secret.is_some(), "{method} client gets a secret");
        let tokens = login(&srv, &reg).await;
        assert!(tokens["access_token"].is_string(), "{method}");

        // The other method, or the right method with a wrong secret, is invalid_client (401).
        let other = if method == "client_secret_basic" {
            "client_secret_post"
        } else {
            "client_secret_basic"
        };
        let wrong_method = Registered {
            method: other.into(),
            ..reg.clone()
        };
        let (code, verifier) = authorize(&srv, &reg, &[]).await;
        let response = exchange(&srv, &wrong_method, &code, &verifier).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} used as {other}"
        );
        assert_eq!(oauth_error_code(response).await, "invalid_client");
        let wrong_secret = Registered {
            client_secret: Some("nope".into()),
            ..reg.clone()
        };
        let response = refresh(&srv, &wrong_secret, field(&tokens, "refresh_token")).await;
        assert_eq!(oauth_error_code(response).await, "invalid_client");
    }
    let public = register(&srv, "none").await;
    let response = token_request(
        &srv,
        &Registered {
            method: "none".into(),
            client_id: "nobody".into(),
            ..public
        },
        &[("grant_type", "refresh_token"), ("refresh_token", "x")],
    )
    .await;
    assert_eq!(oauth_error_code(response).await, "invalid_client");
    assert_eq!(srv.stats().token_errors["invalid_client"], 5);
}

#[tokio::test]
async fn a_preregistered_client_may_use_basic_or_post() {
    let srv = start(Config::with(|c| {
        c.preregistered_client = Some(("pre".into(), Some("pre-secret".into())))
    }))
    .await;
    for method in ["client_secret_basic", "client_secret_post"] {
        let reg = Registered {
            client_id: "pre".into(),
            client_secret: Some("pre-secret".into()),
            method: method.into(),
        };
        let tokens = login(&srv, &reg).await;
        assert!(tokens["access_token"].is_string());
    }
}

#[tokio::test]
async fn codes_are_single_use_and_a_second_use_revokes_their_tokens() {
    let (srv, reg) = with_public_client(Config::default()).await;
    let (code, verifier) = authorize(&srv, &reg, &[]).await;
    let first = body_of(exchange(&srv, &reg, &code, &verifier).await).await;
    let again = exchange(&srv, &reg, &code, &verifier).await;
    assert_eq!(oauth_error_code(again).await, "invalid_grant");
    assert_eq!(
        ping(&srv, first["access_token"].as_str()).await,
        StatusCode::UNAUTHORIZED,
        "tokens of a replayed code are revoked"
    );
}

#[tokio::test]
async fn pkce_is_required_with_s256_only() {
    let (srv, reg) = with_public_client(Config::default()).await;
    let base = [
        ("response_type", "code"),
        ("client_id", reg.client_id.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("state", "s1"),
    ];
    let cases: [&[(&str, &str)]; 3] = [
        &[],
        &[("code_challenge", "abc")],
        &[
            ("code_challenge", "abc"),
            ("code_challenge_method", "plain"),
        ],
    ];
    for extra in cases {
        let mut params = base.to_vec();
        params.extend_from_slice(extra);
        let q = redirect_params(&authorize_raw(&srv, &params).await);
        assert_eq!(q["error"], "invalid_request", "{extra:?}");
        assert_eq!(q["state"], "s1");
        assert_eq!(q["iss"], srv.issuer());
        assert!(!q.contains_key("code"));
    }
    let (code, _) = authorize(&srv, &reg, &[]).await;
    let wrong = exchange(
        &srv,
        &reg,
        &code,
        "a-verifier-that-does-not-match-the-challenge-at-all",
    )
    .await;
    assert_eq!(oauth_error_code(wrong).await, "invalid_grant");
}

#[tokio::test]
async fn loopback_redirects_match_on_any_port_but_unknown_ones_get_an_error_page() {
    let (srv, reg) = with_public_client(Config::default()).await;
    let pkce = pkce();
    let params = |redirect: &'static str| {
        let mut params = code_request(&reg, &pkce.challenge, &[]);
        params[2].1 = redirect;
        params
    };
    let ok = authorize_raw(&srv, &params("http://127.0.0.1:49999/callback")).await;
    assert!(redirect_params(&ok).contains_key("code"));
    let evil = authorize_raw(&srv, &params("https://evil.example/callback")).await;
    assert_eq!(
        evil.status(),
        StatusCode::BAD_REQUEST,
        "never redirect to an unregistered URI"
    );
    let unknown_client = authorize_raw(
        &srv,
        &[
            ("response_type", "code"),
            ("client_id", "nobody"),
            ("redirect_uri", REDIRECT_URI),
        ],
    )
    .await;
    assert_eq!(unknown_client.status(), StatusCode::BAD_REQUEST);
    assert!(
        unknown_client
            .text()
            .await
            .unwrap()
            .contains("Unknown client_id")
    );
}

#[tokio::test]
async fn unknown_scopes_are_refused() {
    let (srv, reg) = with_public_client(Config::default()).await;
    let q = authorize_redirect(&srv, &reg, &[("scope", "mcp:read admin")]).await;
    assert_eq!(q["error"], "invalid_scope");
}

#[tokio::test]
async fn require_resource_checks_rfc8707_and_the_audience_follows_it() {
    let (srv, reg) = with_public_client(Config::with(|c| c.require_resource = true)).await;
    let q = authorize_redirect(&srv, &reg, &[]).await;
    assert_eq!(
        q["error"], "invalid_target",
        "a missing resource is refused"
    );

    let resource = srv.mcp_url();
    let (code, verifier) = authorize(&srv, &reg, &[("resource", &resource)]).await;
    let no_resource = exchange(&srv, &reg, &code, &verifier).await;
    assert_eq!(
        oauth_error_code(no_resource).await,
        "invalid_target",
        "the token request needs it too"
    );

    let (code, verifier) = authorize(&srv, &reg, &[("resource", &resource)]).await;
    let with_resource = [("resource", resource.as_str())];
    let response = exchange_with(&srv, &reg, &code, &verifier, &with_resource).await;
    let tokens = body_of(response).await;
    let refreshed = token_request(
        &srv,
        &reg,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", field(&tokens, "refresh_token")),
            ("resource", &resource),
        ],
    )
    .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    assert_eq!(
        ping(&srv, tokens["access_token"].as_str()).await,
        StatusCode::OK
    );
    let stats = srv.stats();
    assert_eq!(
        stats.resources_received.len(),
        4,
        "{:?}",
        stats.resources_received
    );
    assert!(stats.resources_received.iter().all(|r| *r == resource));
}

#[tokio::test]
async fn revocation_kills_refresh_families_and_access_tokens() {
    let (srv, reg, tokens) = logged_in_with(Config::default()).await;
    let revoke = |token: String| {
        let reg = reg.clone();
        let url = format!("{}/revoke", srv.issuer());
        async move {
            http()
                .post(url)
                .form(&[
                    ("token", token.as_str()),
                    ("client_id", reg.client_id.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let (access, rt) = (
        field(&tokens, "access_token"),
        field(&tokens, "refresh_token"),
    );
    assert_eq!(revoke(access.into()).await.status(), StatusCode::OK);
    assert_eq!(ping(&srv, Some(access)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(revoke(rt.into()).await.status(), StatusCode::OK);
    assert_eq!(
        oauth_error_code(refresh(&srv, &reg, rt).await).await,
        "invalid_grant"
    );
    assert_eq!(
        revoke("not-a-token".into()).await.status(),
        StatusCode::OK,
        "unknown tokens are fine (RFC 7009)"
    );
    assert_eq!(srv.stats().revocations, 3);
}

#[tokio::test]
async fn revoke_all_over_the_control_api_invalidates_every_refresh_token() {
    let (srv, reg, a) = logged_in_with(Config::default()).await;
    let b = login(&srv, &reg).await;
    let response = http()
        .post(format!("{}/control/revoke-all", srv.url()))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    for tokens in [a, b] {
        let refused = refresh(&srv, &reg, field(&tokens, "refresh_token")).await;
        assert_eq!(oauth_error_code(refused).await, "invalid_grant");
    }
}

#[tokio::test]
async fn interactive_mode_shows_a_consent_page_and_honours_the_decision() {
    let (srv, reg) = with_public_client(Config::with(|c| c.interactive = true)).await;
    let pkce = pkce();
    let params = code_request(
        &reg,
        &pkce.challenge,
        &[("state", "st"), ("scope", "mcp:read")],
    );
    for (decision, expect) in [("approve", "code"), ("deny", "error")] {
        let page = authorize_raw(&srv, &params).await;
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(
            html.contains("walker") && html.contains("mcp:read"),
            "the page names the client and scope"
        );
        let request_id = html
            .split("name=\"request_id\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let decide = |decision: &'static str| {
            http()
                .post(format!("{}/authorize", srv.issuer()))
                .form(&[
                    ("request_id", request_id.clone()),
                    ("decision", decision.into()),
                ])
                .send()
        };
        let response = decide(decision).await.unwrap();
        let q = redirect_params(&response);
        assert!(q.contains_key(expect), "{decision}: {q:?}");
        assert_eq!(q["state"], "st");
        if decision == "deny" {
            assert_eq!(q["error"], "access_denied");
        }
        // The request cannot be answered twice.
        let replay = decide("approve").await.unwrap();
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn sse_mode_answers_mcp_requests_as_an_event_stream() {
    let (srv, _reg, tokens) = logged_in_with(Config::with(|c| c.mcp_sse_responses = true)).await;
    let response = mcp(&srv, tokens["access_token"].as_str(), "ping", json!({})).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.starts_with("event: message\ndata: {"), "{text}");
    assert!(text.contains("\"result\":{}"));
}

#[tokio::test]
async fn registration_validates_client_metadata() {
    let srv = start(Config::default()).await;
    let post = |body: serde_json::Value| {
        http()
            .post(format!("{}/register", srv.url()))
            .json(&body)
            .send()
    };
    let missing = post(json!({"client_name": "x"})).await.unwrap();
    assert_eq!(oauth_error_code(missing).await, "invalid_redirect_uri");
    let bad_method = post(
        json!({"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "private_key_jwt"}),
    )
    .await
    .unwrap();
    assert_eq!(
        oauth_error_code(bad_method).await,
        "invalid_client_metadata"
    );
    let default_method = body_of(
        post(json!({"redirect_uris": [REDIRECT_URI], "software_id": "kept"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        default_method["token_endpoint_auth_method"], "client_secret_basic",
        "RFC 7591 default"
    );
    assert_eq!(default_method["software_id"], "kept", "metadata is echoed");
    assert_eq!(default_method["client_secret_expires_at"], 0);
}

#[tokio::test]
async fn control_secrets_lists_every_issued_secret() {
    let srv = start(Config::default()).await;
    let reg = register(&srv, "client_secret_post").await;
    let tokens = login(&srv, &reg).await;
    let secrets = get_json(format!("{}/control/secrets", srv.url())).await;
    let all = secrets.to_string();
    for s in [
        field(&tokens, "access_token"),
        field(&tokens, "refresh_token"),
        reg.client_secret.as_deref().unwrap(),
    ] {
        assert!(all.contains(s));
    }
    assert_eq!(secrets["authorization_codes"].as_array().unwrap().len(), 1);
    let secrets = srv.secrets();
    assert_eq!(
        (secrets.code_verifiers.len(), secrets.states.len()),
        (1, 1),
        "the verifier and state received are listed too"
    );
    assert_eq!(secrets.all().count(), 6);
}
