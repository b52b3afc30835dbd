//! Command line of `mesh-proxy`: `run` (the sidecar) and `init` (the init
//! container that installs the iptables redirect).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::init::InitArgs;

/// The mesh's sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "mesh-proxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the sidecar container's command).
    ///
    /// Example: mesh-proxy run --config proxy.yaml --listen 127.0.0.1:18080=echo.demo:80
    Run(Box<RunArgs>),
    /// Install the iptables rules that redirect the pod's traffic to the proxy
    /// (the init container's command).
    ///
    /// Example: mesh-proxy init --dry-run --exclude-inbound-ports 9090
    Init(InitArgs),
}

/// Settings of `mesh-proxy run`. Every flag can also be set by the
/// environment variable shown in `--help`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Proxy configuration file (YAML or JSON, the `ProxyConfig` message of
    /// `proto/mesh/config/v1/config.proto`); reloaded when it changes.
    #[arg(long, env = "MESH_CONFIG")]
    pub config: Option<PathBuf>,

    /// Transparent outbound listener (iptables-redirected app traffic).
    #[arg(long, env = "MESH_OUTBOUND_ADDR", default_value = "0.0.0.0:15001")]
    pub outbound_addr: SocketAddr,

    /// Transparent inbound listener (redirected traffic to the app).
    #[arg(long, env = "MESH_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,

    /// Admin endpoint: /ready, /live, /config_dump. Keep it on localhost.
    #[arg(long, env = "MESH_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics endpoint: /metrics.
    #[arg(long, env = "MESH_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Do not open the transparent outbound/inbound listeners (explicit mode:
    /// only the --listen listeners, no iptables needed).
    #[arg(long, env = "MESH_NO_TRANSPARENT")]
    pub no_transparent: bool,

    /// Explicit outbound listener: BIND=SERVICE:PORT, e.g.
    /// 127.0.0.1:18080=echo.default.svc.cluster.local:80. Repeatable.
    #[arg(long = "listen", value_name = "BIND=SERVICE:PORT", value_parser = parse_explicit)]
    pub listen: Vec<ExplicitListener>,

    /// Where inbound traffic goes when its original destination is unknown
    /// (explicit mode: the local app's address).
    #[arg(long, env = "MESH_INBOUND_FORWARD")]
    pub inbound_forward: Option<SocketAddr>,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "MESH_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How long a client may take to send a whole HTTP/1 request head, and
    /// how long a keep-alive connection may sit idle between requests,
    /// before the proxy closes it (slowloris protection).
    #[arg(long, env = "MESH_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How often the proxy sends an HTTP/2 PING on its connections to other
    /// mesh proxies and from downstream clients, to find peers gone without
    /// closing (a node that died, a silent partition). 0s turns the pings
    /// off. Plaintext and TLS-origination upstreams (apps, servers
    /// outside the mesh) are never pinged: gRPC servers refuse frequent
    /// pings.
    #[arg(long, env = "MESH_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed
    /// (its requests fail and new ones open a new connection).
    #[arg(long, env = "MESH_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Workload name used as the source label in metrics.
    #[arg(long, env = "MESH_WORKLOAD", default_value = "unknown")]
    pub workload: String,

    /// Namespace of this workload.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Pod name of this workload.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod: String,

    /// Write one JSON access-log line per request to stdout (overrides the
    /// config's `settings.accessLog` when set).
    #[arg(long, env = "MESH_ACCESS_LOG")]
    pub access_log: bool,

    /// Workload certificate chain (PEM, leaf first) for mesh mTLS, when not
    /// using the CA (e.g. a gateway with a mounted Secret). Needs
    /// --identity-key and --trust-bundle.
    #[arg(long, env = "MESH_IDENTITY_CERT", requires_all = ["identity_key", "trust_bundle"])]
    pub identity_cert: Option<PathBuf>,

    /// Private key (PEM) for --identity-cert.
    #[arg(long, env = "MESH_IDENTITY_KEY")]
    pub identity_key: Option<PathBuf>,

    /// Trust bundle (PEM roots) for --identity-cert.
    #[arg(long, env = "MESH_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,

    /// mesh-controller's config stream (`host:port`); when set, the config
    /// comes from the controller over mesh mTLS instead of --config.
    #[arg(long, env = "MESH_CONTROLLER_ADDR", conflicts_with = "config")]
    pub controller_addr: Option<String>,

    /// SPIFFE ID the controller must present; default: the mesh-controller
    /// ServiceAccount in mesh-system of this trust domain.
    #[arg(long, env = "MESH_CONTROLLER_IDENTITY")]
    pub controller_identity: Option<String>,

    /// Pod IP, sent to the controller in the hello.
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,

    /// mesh-ca address; when set, the proxy makes its key in memory and gets
    /// its certificate from the CA, renewing at half-life.
    #[arg(long, env = "MESH_CA_ADDR")]
    pub ca_addr: Option<String>,

    /// PEM roots the CA's serving certificate chains to (the `mesh-root-ca`
    /// ConfigMap in a pod).
    #[arg(
        long,
        env = "MESH_CA_ROOT",
        default_value = "/var/run/mesh/root-ca/root-cert.pem"
    )]
    pub ca_root: PathBuf,

    /// TLS name of the CA's serving certificate.
    #[arg(
        long,
        env = "MESH_CA_SERVER_NAME",
        default_value = "mesh-ca.mesh-system.svc"
    )]
    pub ca_server_name: String,

    /// Token that proves this workload's ServiceAccount to the CA (the
    /// projected token with audience mesh-ca, or a local-mode bootstrap token).
    #[arg(
        long,
        env = "MESH_CA_TOKEN_FILE",
        default_value = "/var/run/secrets/mesh/tokens/mesh-ca-token"
    )]
    pub ca_token_file: PathBuf,

    /// Trust domain of the mesh.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = mesh_api::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// ServiceAccount of this workload.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,

    /// Requested certificate lifetime.
    #[arg(long, env = "MESH_IDENTITY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub identity_ttl: Duration,

    /// Address gateway listeners bind (the ports come from the Gateway
    /// resources that select this pod).
    #[arg(long, env = "MESH_GATEWAY_BIND_IP", default_value = "0.0.0.0")]
    pub gateway_bind_ip: std::net::IpAddr,

    /// Where a gateway finds the certificates its Gateway servers name in
    /// `tls.credentialName`: `DIR/<name>/tls.crt` and `tls.key` (mount each
    /// `kubernetes.io/tls` Secret there).
    #[arg(
        long,
        env = "MESH_GATEWAY_CREDENTIALS_DIR",
        default_value = "/etc/mesh/gateway-credentials"
    )]
    pub gateway_credentials_dir: PathBuf,

    /// The app's kubelet probes that the injector rewrote to
    /// `:15020/app-health/...`, as JSON (path → original check); set by
    /// the injector.
    #[arg(
        long,
        env = "MESH_APP_PROBES",
        default_value = "",
        hide_env_values = true
    )]
    pub app_probes: String,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "MESH_LOG", default_value = "info")]
    pub log: String,
}

impl RunArgs {
    /// The config stream settings, when --controller-addr is set.
    pub fn discovery_config(&self) -> anyhow::Result<Option<crate::discovery::DiscoveryConfig>> {
        let Some(addr) = &self.controller_addr else {
            return Ok(None);
        };
        let controller_identity = match &self.controller_identity {
            Some(id) => id.clone(),
            None => mesh_api::WorkloadIdentity::new(
                &self.trust_domain,
                mesh_api::INSTALL_NAMESPACE,
                "mesh-controller",
            )
            .map_err(|e| anyhow::anyhow!("controller identity: {e}"))?
            .uri(),
        };
        Ok(Some(crate::discovery::DiscoveryConfig {
            addr: addr.clone(),
            controller_identity,
            hello: mesh_proto::config::v1::Hello {
                pod: self.pod.clone(),
                namespace: self.namespace.clone(),
                service_account: self.service_account.clone(),
                ips: if self.pod_ip.is_empty() {
                    vec![]
                } else {
                    vec![self.pod_ip.clone()]
                },
                proxy_version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            },
        }))
    }

    /// The CA client settings, when --ca-addr is set.
    pub fn ca_client_config(&self) -> anyhow::Result<Option<crate::identity::CaClientConfig>> {
        let Some(addr) = &self.ca_addr else {
            return Ok(None);
        };
        let id = mesh_api::WorkloadIdentity::new(
            &self.trust_domain,
            &self.namespace,
            &self.service_account,
        )
        .map_err(|e| anyhow::anyhow!("workload identity: {e}"))?;
        Ok(Some(crate::identity::CaClientConfig {
            ca_addr: addr.clone(),
            ca_server_name: self.ca_server_name.clone(),
            ca_root: self.ca_root.clone(),
            token_file: self.ca_token_file.clone(),
            identity: id.uri(),
            ttl: self.identity_ttl,
        }))
    }
}

/// An explicit outbound listener: a local address that stands for one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplicitListener {
    pub bind: SocketAddr,
    pub service: String,
    pub port: u16,
}

fn parse_explicit(s: &str) -> Result<ExplicitListener, String> {
    let (bind, target) = s
        .split_once('=')
        .ok_or_else(|| format!("expected BIND=SERVICE:PORT, got {s:?}"))?;
    let bind: SocketAddr = bind
        .parse()
        .map_err(|e| format!("bad bind address {bind:?}: {e}"))?;
    let (service, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("expected SERVICE:PORT after '=', got {target:?}"))?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("bad port {port:?}: {e}"))?;
    if service.is_empty() {
        return Err("empty service name".into());
    }
    Ok(ExplicitListener {
        bind,
        service: service.to_string(),
        port,
    })
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use e.g. 250ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the parsed command line and turns errors into an exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => {
            crate::telemetry::init_logging(&args.log);
            // One crypto provider for every TLS user in the process (tonic, ours).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mesh-proxy: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(crate::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("mesh-proxy failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init(args) => match crate::init::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-proxy init: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_explicit_listener() {
        let l = parse_explicit("127.0.0.1:18080=echo.default.svc.cluster.local:80").unwrap();
        assert_eq!(l.bind, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(l.service, "echo.default.svc.cluster.local");
        assert_eq!(l.port, 80);
        assert!(parse_explicit("127.0.0.1:1=svc").is_err());
        assert!(parse_explicit("nope=svc:80").is_err());
    }

    #[test]
    fn header_read_timeout_defaults_to_the_constant() {
        let Command::Run(args) = Cli::parse_from(["mesh-proxy", "run"]).command else {
            unreachable!()
        };
        assert_eq!(args.header_read_timeout, crate::HEADER_READ_TIMEOUT);
        assert_eq!(args.keepalive_interval, Duration::from_secs(10));
        assert_eq!(args.keepalive_timeout, Duration::from_secs(5));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
