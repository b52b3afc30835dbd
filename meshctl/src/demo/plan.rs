//! What the demo runs and where: every process, its ports and its identity.
//!
//! All ports are on loopback and derived from one base port, so that two
//! demos (or a demo and the tests) can run side by side with different
//! bases:
//!
//! | port | what |
//! | --- | --- |
//! | base+0, +1 | client proxy admin, metrics |
//! | base+2 | client proxy listener for `grpc-echo.demo:9090` |
//! | base+3 | client proxy listener for `web.demo:80` |
//! | base+4, +5 | mesh-ca gRPC (TLS), metrics |
//! | base+6, +7 | mesh-controller config stream (mTLS), admin |
//! | base+10·(k+1) + 0..3 | backend k: app, its proxy's inbound (mTLS), admin, metrics |

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{bail, Result};

/// The namespace every demo workload runs in.
pub const NAMESPACE: &str = "demo";
/// The client proxy's pod, ServiceAccount and workload name.
pub const CLIENT: &str = "demo-client";
/// The gRPC service.
pub const GRPC_SERVICE: &str = "grpc-echo";
/// The gRPC service's port.
pub const GRPC_PORT: u16 = 9090;
/// The HTTP service.
pub const WEB_SERVICE: &str = "web";
/// The HTTP service's port.
pub const WEB_PORT: u16 = 80;
/// Highest offset from the base port that the demo uses.
pub const LAST_OFFSET: u16 = 10 * 6 + 3;

/// Which demo app a backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// `grpc-echo` (service `grpc-echo`, port 9090).
    GrpcEcho,
    /// `http-echo` (service `web`, port 80).
    HttpEcho,
}

impl App {
    /// The binary that runs it.
    pub fn binary(self) -> &'static str {
        match self {
            App::GrpcEcho => "grpc-echo",
            App::HttpEcho => "http-echo",
        }
    }

    /// The Service it backs (also its ServiceAccount and `app` label).
    pub fn service(self) -> &'static str {
        match self {
            App::GrpcEcho => GRPC_SERVICE,
            App::HttpEcho => WEB_SERVICE,
        }
    }

    /// The Service's port.
    pub fn service_port(self) -> u16 {
        match self {
            App::GrpcEcho => GRPC_PORT,
            App::HttpEcho => WEB_PORT,
        }
    }

    /// The Service port's name, which tells the controller its protocol.
    pub fn port_name(self) -> &'static str {
        match self {
            App::GrpcEcho => "grpc",
            App::HttpEcho => "http",
        }
    }
}

/// One backend pod: the app and the proxy in front of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub app: App,
    /// Pod name, e.g. `web-v2-1`.
    pub pod: String,
    /// `version` label.
    pub version: &'static str,
    /// The app listens here (plaintext, reached only through its proxy).
    pub app_port: u16,
    /// The pod's proxy accepts mesh mTLS here (`mesh.dev/inbound-port`).
    pub inbound_port: u16,
    /// The pod's proxy admin endpoint.
    pub admin_port: u16,
    /// The pod's proxy metrics endpoint.
    pub metrics_port: u16,
}

impl Backend {
    /// The proxy's log / process name.
    pub fn proxy_name(&self) -> String {
        format!("proxy-{}", self.pod)
    }
}

/// Every port and name of one demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub base: u16,
    pub client_admin: u16,
    pub client_metrics: u16,
    pub client_grpc: u16,
    pub client_web: u16,
    pub ca_grpc: u16,
    pub ca_metrics: u16,
    pub controller_stream: u16,
    pub controller_admin: u16,
    pub backends: Vec<Backend>,
}

impl Plan {
    /// The demo's layout from `base` (see the module docs).
    pub fn new(base: u16) -> Result<Self> {
        if !(1024..=u16::MAX - LAST_OFFSET).contains(&base) {
            bail!(
                "base port {base} is out of range: it must be between 1024 and {} (the demo uses {} ports from it)",
                u16::MAX - LAST_OFFSET,
                LAST_OFFSET + 1
            );
        }
        let specs = [
            (App::GrpcEcho, "grpc-echo-1", "v1"),
            (App::GrpcEcho, "grpc-echo-2", "v1"),
            (App::GrpcEcho, "grpc-echo-3", "v1"),
            (App::HttpEcho, "web-v1-1", "v1"),
            (App::HttpEcho, "web-v1-2", "v1"),
            (App::HttpEcho, "web-v2-1", "v2"),
        ];
        let backends = specs
            .iter()
            .enumerate()
            .map(|(k, (app, pod, version))| {
                let first = base + 10 * (k as u16 + 1);
                Backend {
                    app: *app,
                    pod: (*pod).to_string(),
                    version,
                    app_port: first,
                    inbound_port: first + 1,
                    admin_port: first + 2,
                    metrics_port: first + 3,
                }
            })
            .collect();
        Ok(Self {
            base,
            client_admin: base,
            client_metrics: base + 1,
            client_grpc: base + 2,
            client_web: base + 3,
            ca_grpc: base + 4,
            ca_metrics: base + 5,
            controller_stream: base + 6,
            controller_admin: base + 7,
            backends,
        })
    }

    /// Backends of one app.
    pub fn backends_of(&self, app: App) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(move |b| b.app == app)
    }

    /// Every pod whose proxy connects to the controller (backends and the client).
    pub fn proxy_pods(&self) -> Vec<String> {
        let mut pods: Vec<String> = self.backends.iter().map(|b| b.pod.clone()).collect();
        pods.push(CLIENT.to_string());
        pods
    }

    /// Every port the demo listens on, with what it is for (to check they are free).
    pub fn ports(&self) -> Vec<(u16, String)> {
        let mut out = vec![
            (self.client_admin, "client proxy admin".to_string()),
            (self.client_metrics, "client proxy metrics".to_string()),
            (
                self.client_grpc,
                "client proxy grpc-echo listener".to_string(),
            ),
            (self.client_web, "client proxy web listener".to_string()),
            (self.ca_grpc, "mesh-ca".to_string()),
            (self.ca_metrics, "mesh-ca metrics".to_string()),
            (
                self.controller_stream,
                "mesh-controller config stream".to_string(),
            ),
            (self.controller_admin, "mesh-controller admin".to_string()),
        ];
        for b in &self.backends {
            out.push((b.app_port, format!("{} ({})", b.pod, b.app.binary())));
            out.push((b.inbound_port, format!("{} proxy inbound", b.pod)));
            out.push((b.admin_port, format!("{} proxy admin", b.pod)));
            out.push((b.metrics_port, format!("{} proxy metrics", b.pod)));
        }
        out
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// The SPIFFE ID of a demo ServiceAccount.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!(
        "spiffe://{}/ns/{namespace}/sa/{service_account}",
        mesh_api::DEFAULT_TRUST_DOMAIN
    )
}

/// The fully qualified name of a demo Service.
pub fn service_host(service: &str) -> String {
    format!("{service}.{NAMESPACE}.svc.cluster.local")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_within_range() {
        let plan = Plan::new(27000).unwrap();
        let mut ports: Vec<u16> = plan.ports().into_iter().map(|(p, _)| p).collect();
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port is used twice");
        assert_eq!(*ports.last().unwrap(), 27000 + LAST_OFFSET);
        assert_eq!(plan.backends_of(App::GrpcEcho).count(), 3);
        assert_eq!(
            plan.backends_of(App::HttpEcho)
                .filter(|b| b.version == "v2")
                .count(),
            1
        );
        assert_eq!(plan.proxy_pods().len(), 7);
    }

    #[test]
    fn refuses_bases_that_do_not_fit() {
        assert!(Plan::new(80).is_err());
        assert!(Plan::new(u16::MAX - 10).is_err());
        assert!(Plan::new(u16::MAX - LAST_OFFSET).is_ok());
    }

    #[test]
    fn identities() {
        assert_eq!(
            spiffe_id("demo", "web"),
            "spiffe://cluster.local/ns/demo/sa/web"
        );
        assert_eq!(service_host("web"), "web.demo.svc.cluster.local");
    }
}
