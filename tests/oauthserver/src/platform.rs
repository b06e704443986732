//! A workload platform for tests: it mints the JWTs a workload finds in a file, shaped as a
//! Kubernetes projected service account token or a SPIFFE JWT-SVID, signed with the committed
//! platform key (ES256). An authorization server trusts it through [`Platform::trusted`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::grants::{KeySource, TrustedIssuer};
use crate::state::random_token;
use crate::test_keys::{PLATFORM_ES256_PEM, platform_jwks};

/// Which token shape the platform mints.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// `sub: system:serviceaccount:NAMESPACE:NAME` and the `kubernetes.io` claim.
    Kubernetes {
        namespace: String,
        service_account: String,
    },
    /// `sub: spiffe://TRUST-DOMAIN/PATH`, no `jti` (a JWT-SVID needs none).
    Spiffe { spiffe_id: String },
}

/// A platform issuing workload JWTs. Times come from the wall clock, as a real platform's do.
pub struct Platform {
    issuer: String,
    shape: Shape,
    key: EncodingKey,
}

impl Platform {
    /// A Kubernetes cluster whose service account issuer is `issuer`, minting tokens for the
    /// service account `mcp/mcp-client`.
    pub fn kubernetes(issuer: &str) -> Self {
        Self::new(
            issuer,
            Shape::Kubernetes {
                namespace: "mcp".into(),
                service_account: "mcp-client".into(),
            },
        )
    }

    /// A SPIFFE trust domain whose JWT issuer is `issuer`, minting JWT-SVIDs for `spiffe_id`.
    pub fn spiffe(issuer: &str, spiffe_id: &str) -> Self {
        Self::new(
            issuer,
            Shape::Spiffe {
                spiffe_id: spiffe_id.into(),
            },
        )
    }

    fn new(issuer: &str, shape: Shape) -> Self {
        Platform {
            issuer: issuer.into(),
            shape,
            key: EncodingKey::from_ec_pem(PLATFORM_ES256_PEM.as_bytes())
                .expect("the committed platform key is a PKCS#8 P-256 key"),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `sub` of every token it mints.
    pub fn subject(&self) -> String {
        match &self.shape {
            Shape::Kubernetes {
                namespace,
                service_account,
            } => format!("system:serviceaccount:{namespace}:{service_account}"),
            Shape::Spiffe { spiffe_id } => spiffe_id.clone(),
        }
    }

    /// The platform as an authorization server trusts it: its issuer and JWKS.
    pub fn trusted(&self) -> TrustedIssuer {
        TrustedIssuer::new(self.issuer.clone(), KeySource::Jwks(platform_jwks()))
    }

    /// A token for `audience`, valid for `lifetime` from now.
    pub fn token(&self, audience: &str, lifetime: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        self.mint(audience, now, now + lifetime.as_secs() as i64)
    }

    /// A token for `audience` that expired a minute ago.
    pub fn expired_token(&self, audience: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        self.mint(audience, now - 3600, now - 60)
    }

    fn mint(&self, audience: &str, iat: i64, exp: i64) -> String {
        let mut claims = json!({
            "iss": self.issuer,
            "sub": self.subject(),
            "aud": [audience],
            "iat": iat,
            "exp": exp,
        });
        if let Shape::Kubernetes {
            namespace,
            service_account,
        } = &self.shape
        {
            claims["nbf"] = iat.into();
            claims["jti"] = random_token("k8s_").into();
            claims["kubernetes.io"] = json!({
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": "6f1c0e9e-5d1f-4c2a-9b1e-2a7d3c4b5e6f"},
                "pod": {"name": "mcp-client-0", "uid": "0b7c2d4e-1f3a-4e5b-8c6d-7e8f9a0b1c2d"},
            });
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("platform-1".into());
        jsonwebtoken::encode(&header, &claims as &Value, &self.key)
            .expect("ES256 signing with the platform key cannot fail")
    }
}
