mod common;

use common::*;
use oauth_test_server::Config;
use reqwest::StatusCode;
use serde_json::Value;

async fn fetch(url: String) -> (StatusCode, Value) {
    let response = http().get(&url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `srv`'s `/.well-known/{document}` URL.
fn well_known(srv: &oauth_test_server::OAuthTestServer, document: &str) -> String {
    format!("{}/.well-known/{document}", srv.url())
}

/// The document `srv` serves at `/.well-known/{first}` (with 200), which `/.well-known/{second}`
/// serves as well.
async fn served_at_both(
    srv: &oauth_test_server::OAuthTestServer,
    first: &str,
    second: &str,
) -> Value {
    let (status, doc) = fetch(well_known(srv, first)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, again) = fetch(well_known(srv, second)).await;
    assert_eq!(doc, again, "{first} and {second} serve the same document");
    doc
}

#[tokio::test]
async fn authorization_server_metadata_is_served_at_both_discovery_locations() {
    let srv = start(Config::default()).await;
    let rfc8414 = served_at_both(&srv, "oauth-authorization-server", "openid-configuration").await;
    assert_eq!(rfc8414["issuer"], srv.issuer());
    assert_eq!(
        rfc8414["authorization_endpoint"],
        format!("{}/authorize", srv.issuer())
    );
    assert_eq!(rfc8414["token_endpoint"], format!("{}/token", srv.issuer()));
    assert_eq!(
        rfc8414["registration_endpoint"],
        format!("{}/register", srv.issuer())
    );
    assert_eq!(
        rfc8414["revocation_endpoint"],
        format!("{}/revoke", srv.issuer())
    );
    assert_eq!(
        rfc8414["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        rfc8414["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        rfc8414["token_endpoint_auth_methods_supported"],
        serde_json::json!(["none", "client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        rfc8414["scopes_supported"],
        serde_json::json!(["mcp:read", "mcp:write"])
    );
    assert_eq!(
        rfc8414["authorization_response_iss_parameter_supported"],
        true
    );
}

#[tokio::test]
async fn protected_resource_metadata_is_served_at_path_and_root() {
    let srv = start(Config::default()).await;
    let path_aware = served_at_both(
        &srv,
        "oauth-protected-resource/mcp",
        "oauth-protected-resource",
    )
    .await;
    assert_eq!(path_aware["resource"], srv.mcp_url());
    assert_eq!(
        path_aware["authorization_servers"],
        serde_json::json!([srv.issuer()])
    );
    assert_eq!(
        path_aware["scopes_supported"],
        serde_json::json!(["mcp:read", "mcp:write"])
    );
}

#[tokio::test]
async fn an_issuer_path_moves_the_endpoints_and_uses_path_aware_locations() {
    let srv = start(Config::with(|c| c.issuer_path = Some("/tenant1".into()))).await;
    assert_eq!(srv.issuer(), format!("{}/tenant1", srv.url()));
    for location in [
        "/.well-known/oauth-authorization-server/tenant1",
        "/.well-known/openid-configuration/tenant1",
        "/tenant1/.well-known/openid-configuration",
    ] {
        let (status, doc) = fetch(format!("{}{location}", srv.url())).await;
        assert_eq!(status, StatusCode::OK, "{location}");
        assert_eq!(doc["issuer"], srv.issuer(), "{location}");
        assert_eq!(
            doc["token_endpoint"],
            format!("{}/tenant1/token", srv.url())
        );
    }
    let (status, _) = fetch(well_known(&srv, "oauth-authorization-server")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the root location is not the issuer's"
    );
    let (_, prm) = fetch(well_known(&srv, "oauth-protected-resource/mcp")).await;
    assert_eq!(
        prm["authorization_servers"],
        serde_json::json!([srv.issuer()])
    );
    // The whole flow works under the path.
    let reg = register(&srv, "none").await;
    let tokens = login(&srv, &reg).await;
    assert_eq!(
        ping(&srv, tokens["access_token"].as_str()).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_dcr_there_is_no_registration_endpoint() {
    let srv = start(Config::with(|c| c.dynamic_registration = false)).await;
    let doc = as_metadata(&srv).await;
    assert!(doc.get("registration_endpoint").is_none());
    let response = post_json(format!("{}/register", srv.url()), &serde_json::json!({})).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn access_tokens_are_rs256_jwts_that_verify_against_the_jwks() {
    let srv = start(Config::default()).await;
    let (status, jwks) = fetch(format!("{}/jwks.json", srv.url())).await;
    assert_eq!(status, StatusCode::OK);
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    let reg = register(&srv, "none").await;
    let tokens = login(&srv, &reg).await;
    let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[srv.mcp_url()]);
    validation.set_issuer(&[srv.issuer()]);
    let data =
        jsonwebtoken::decode::<Value>(field(&tokens, "access_token"), &decoding, &validation)
            .expect("the token verifies with the published key");
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
    ] {
        assert!(data.claims.get(claim).is_some(), "claim {claim} present");
    }
    assert_eq!(data.claims["client_id"], reg.client_id);
}
