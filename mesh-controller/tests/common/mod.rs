//! What the config-stream tests share: a controller in local mode (a
//! directory of YAML) on loopback, certificates from a real mesh-ca
//! authority, and a few YAML documents.
#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;
use std::time::Duration;

use mesh_controller::identity::{Material, ServerTls};
use mesh_controller::limits::StreamLimits;
use mesh_controller::push::Debounce;
use mesh_controller::run::{ControllerConfig, Running};
use mesh_controller::server::StreamConfig;
use mesh_controller::source::dir::DirSource;
use mesh_controller::testing::{self, write_atomic as write};
use mesh_controller::translate::TranslateConfig;
use mesh_proto::config::v1::DiscoveryResponse;

pub fn issue(ca: &mesh_ca::authority::Authority, ns: &str, sa: &str) -> Material {
    testing::issue(ns, sa, |id, csr| {
        let leaf = ca.sign(id, csr, Duration::from_secs(3600)).unwrap();
        (leaf.cert_chain_pem, leaf.trust_bundle_pem)
    })
    .material
}

pub fn service(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
    )
}

pub fn slice(ns: &str, name: &str, ips: &[&str]) -> String {
    let eps: String = ips
        .iter()
        .map(|ip| format!("  - addresses: [{ip}]\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
    )
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub ca: mesh_ca::authority::Authority,
    pub controller: Running,
}

/// A controller serving `shop/web` (one endpoint), `shop/cart` and
/// `other/private`, with the default stream limits.
pub async fn start() -> Fixture {
    start_with(StreamLimits::default()).await
}

/// [`start`] with `limits` on open streams.
pub async fn start_with(limits: StreamLimits) -> Fixture {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    write(
        &dir,
        "web.yaml",
        &(service("shop", "web") + "---\n" + &slice("shop", "web", &["10.0.0.1"])),
    );
    write(&dir, "cart.yaml", &service("shop", "cart"));
    write(&dir, "other.yaml", &service("other", "private"));
    let ca = mesh_ca::authority::Authority::generate().unwrap();
    let tls = ServerTls::from_material(&issue(&ca, "mesh-system", "mesh-controller")).unwrap();
    let source = Arc::new(DirSource::new(&dir, Duration::from_millis(50)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller = mesh_controller::run::start_with_limits(
        source,
        tls,
        listener,
        None,
        ControllerConfig {
            translate: TranslateConfig::default(),
            debounce: Debounce {
                quiet: Duration::from_millis(20),
                max_wait: Duration::from_millis(200),
            },
            stream: StreamConfig {
                trust_domain: "cluster.local".into(),
                require_pod: false,
                max_concurrent_sends: 4,
            },
        },
        limits,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    Fixture {
        _dir: tmp,
        dir,
        ca,
        controller,
    }
}

/// The service names of a response, sorted.
pub fn names(r: &DiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r
        .config
        .as_ref()
        .map(|c| c.services.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    n.sort();
    n
}
