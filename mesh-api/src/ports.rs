//! Well-known ports of the mesh (see ARCHITECTURE.md, "Kubernetes surface").

/// Proxy outbound listener: the app's redirected outbound TCP arrives here.
pub const PROXY_OUTBOUND: u16 = 15001;
/// Proxy inbound listener: redirected inbound TCP and mTLS from peers.
pub const PROXY_INBOUND: u16 = 15006;
/// Proxy admin (localhost only): `/ready`, `/live`, `/config_dump`.
pub const PROXY_ADMIN: u16 = 15000;
/// Proxy Prometheus metrics: `/metrics`.
pub const PROXY_METRICS: u16 = 15020;
/// Controller config stream (gRPC over mTLS).
pub const CONTROLLER_XDS: u16 = 15010;
/// CA signing API (gRPC over TLS, token-authenticated).
pub const CA_GRPC: u16 = 15012;
/// Injector webhook (HTTPS).
pub const INJECTOR_HTTPS: u16 = 9443;

/// Ports the proxy never intercepts, whatever the configuration says: its own.
pub const PROXY_PORTS: [u16; 4] = [PROXY_OUTBOUND, PROXY_INBOUND, PROXY_ADMIN, PROXY_METRICS];
