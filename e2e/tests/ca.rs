//! mesh-ca against a real API server: `KubeTokenReview` accepts ServiceAccount
//! tokens with audience `mesh-ca` (TokenRequest API, as a projected token
//! would be) and maps them to the right SPIFFE identity; another
//! ServiceAccount's token cannot obtain that identity; wrong-audience and
//! forged tokens are UNAUTHENTICATED. The CA runs in this test process (gRPC
//! over TLS on loopback). Compiled only with `--features e2e` (see e2e/run).
#![cfg(feature = "e2e")]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::{client, TestNamespace};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use mesh_ca::auth::{AuthError, KubeTokenReview, TokenAuthenticator};
use mesh_ca::client::{ClientError, Code, SignResponse};
use mesh_ca::csr::new_workload_csr;
use mesh_ca::{Authority, ServerConfig, WorkloadIdentity};
use serde_json::json;

async fn token(ns: &TestNamespace, sa: &str, audience: &str) -> Result<String> {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let resp = ns
        .api::<ServiceAccount>()
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for {sa} ({audience})"))?;
    resp.status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("TokenRequest without a token")
}

fn code(r: Result<SignResponse, ClientError>) -> Result<Code> {
    match r {
        Ok(_) => bail!("signed, but should have been refused"),
        Err(ClientError::Status(s)) => Ok(s.code()),
        Err(e) => bail!("transport error instead of a status: {e}"),
    }
}

#[tokio::test]
async fn ca_authenticates_service_account_tokens_with_token_review() -> Result<()> {
    let c = client().await?;
    let ns = TestNamespace::new(&c, "ca", &[]).await?;
    for sa in ["alpha", "beta"] {
        let obj: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa}}))?;
        ns.api::<ServiceAccount>()
            .create(&PostParams::default(), &obj)
            .await?;
    }
    let alpha = token(&ns, "alpha", mesh_api::CA_TOKEN_AUDIENCE).await?;
    let beta = token(&ns, "beta", mesh_api::CA_TOKEN_AUDIENCE).await?;
    let alpha_other_aud = token(&ns, "alpha", "someone-else").await?;
    // Same header and claims, broken signature.
    let forged = {
        let mut parts: Vec<String> = alpha.split('.').map(str::to_string).collect();
        ensure!(parts.len() == 3, "not a JWT");
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };

    // The authenticator alone, against the real TokenReview API.
    let review = KubeTokenReview::new(c.clone(), mesh_api::CA_TOKEN_AUDIENCE);
    let sa = review
        .authenticate(&alpha)
        .await
        .map_err(|e| anyhow::anyhow!("alpha's token rejected: {e}"))?;
    ensure!(
        sa.namespace == ns.name && sa.service_account == "alpha",
        "mapped to {sa:?}"
    );
    for (what, t) in [("wrong audience", &alpha_other_aud), ("forged", &forged)] {
        match review.authenticate(t).await {
            Err(AuthError::Rejected(_)) | Err(AuthError::WrongAudience(_)) => {}
            other => bail!("{what} token: {other:?}"),
        }
    }

    // The whole CA, in process, with TokenReview.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let authority = Arc::new(Authority::generate()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = mesh_ca::serve(
        listener,
        authority.clone(),
        Arc::new(review),
        ServerConfig::default(),
    )
    .await?;
    let endpoint = format!("https://127.0.0.1:{}", server.local_addr.port());
    let bundle = authority.trust_bundle_pem().concat();
    let alpha_id = WorkloadIdentity::new("cluster.local", &ns.name, "alpha")?;
    let sign = |token: String, csr: String| {
        let endpoint = endpoint.clone();
        let bundle = bundle.clone();
        async move {
            mesh_ca::client::sign(&endpoint, &bundle, &token, &csr, Duration::from_secs(600)).await
        }
    };

    // alpha's token → a leaf for alpha's identity (CSR with and without SAN).
    for san in [None, Some(&alpha_id)] {
        let (_, csr) = new_workload_csr(san)?;
        let resp = sign(alpha.clone(), csr)
            .await
            .map_err(|e| anyhow::anyhow!("alpha's CSR refused: {e}"))?;
        let uris = mesh_ca::client::uri_sans(&resp.cert_chain_pem[0])?;
        ensure!(uris == vec![alpha_id.uri()], "leaf SANs {uris:?}");
    }
    let signed = authority.metrics().signed.get();

    // beta's token cannot obtain alpha's identity.
    let (_, alpha_csr) = new_workload_csr(Some(&alpha_id))?;
    ensure!(code(sign(beta.clone(), alpha_csr.clone()).await)? == Code::PermissionDenied);
    // Wrong audience, forged, garbage: UNAUTHENTICATED.
    for t in [alpha_other_aud, forged, "not-a-jwt".to_string()] {
        let got = code(sign(t, alpha_csr.clone()).await)?;
        ensure!(got == Code::Unauthenticated, "got {got:?}");
    }
    ensure!(
        authority.metrics().signed.get() == signed,
        "a refused request was signed"
    );
    Ok(())
}

/// Kube mode storage and publication: the CA is created once in a Secret and
/// loaded back unchanged; the trust bundle lands as ConfigMap `mesh-root-ca`
/// in every namespace (a pod may opt in anywhere), but not in kube-system.
#[tokio::test]
async fn ca_keeps_its_root_in_a_secret_and_publishes_the_bundle() -> Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use mesh_ca::publish::BundlePublisher;
    use mesh_ca::CaStore;

    let c = client().await?;
    let meshed = TestNamespace::new(&c, "ca-meshed", &[("mesh-injection", "enabled")]).await?;
    let plain = TestNamespace::new(&c, "ca-plain", &[]).await?;
    // The Secret goes in the test namespace so the real mesh-system is untouched.
    let store = CaStore::Kube {
        client: c.clone(),
        namespace: meshed.name.clone(),
        name: "mesh-ca".into(),
    };
    let first = Authority::load_or_create(&store, None).await?;
    let second = Authority::load_or_create(&store, None).await?;
    ensure!(
        first.material() == second.material(),
        "second start made a new CA"
    );
    let secret = meshed.api::<Secret>().get("mesh-ca").await?;
    let keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
    for k in [
        "root-cert.pem",
        "root-key.pem",
        "ca-cert.pem",
        "ca-key.pem",
        "trust-bundle.pem",
    ] {
        ensure!(keys.iter().any(|x| x == k), "secret lacks {k}: {keys:?}");
    }

    let written = BundlePublisher::Kube(c.clone())
        .publish(&first.trust_bundle_pem())
        .await?;
    ensure!(written >= 1, "published nowhere");
    let cm = meshed.api::<ConfigMap>().get("mesh-root-ca").await?;
    let bundle = cm
        .data
        .unwrap_or_default()
        .get("root-cert.pem")
        .cloned()
        .unwrap_or_default();
    ensure!(
        bundle == first.trust_bundle_pem().concat(),
        "ConfigMap bundle differs"
    );
    ensure!(
        plain
            .api::<ConfigMap>()
            .get_opt("mesh-root-ca")
            .await?
            .is_some(),
        "bundle not published in an unlabelled namespace (pods may opt in there)"
    );
    ensure!(
        kube::Api::<ConfigMap>::namespaced(c.clone(), "kube-system")
            .get_opt("mesh-root-ca")
            .await?
            .is_none(),
        "bundle published in kube-system"
    );
    // Leave the cluster's other namespaces as they were.
    let all = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone())
        .list(&Default::default())
        .await?;
    for ns in all.items.iter().filter_map(|n| n.metadata.name.as_deref()) {
        if ns != meshed.name && ns != plain.name {
            let _ = kube::Api::<ConfigMap>::namespaced(c.clone(), ns)
                .delete("mesh-root-ca", &Default::default())
                .await;
        }
    }
    Ok(())
}
