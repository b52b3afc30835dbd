//! The proxy's runtime model: a `ProxyConfig` compiled into lookup tables.
//!
//! A `MeshState` is immutable; a new config builds a new one and swaps it in
//! atomically, so in-flight requests finish on the state they started with.
//! Endpoint statistics are carried from the previous state by address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::config::v1 as pb;
use rand::Rng;

use crate::balance::{Algorithm, Balancer, Endpoint, HashKey};
use crate::resilience::{ConnPolicy, OutlierPolicy, PoolLimits};
use crate::routing::RequestMatcher;

mod gateway;
pub use gateway::{normalize_host, GatewayListenerState, TlsSource, VirtualHostState};

/// How long protocol detection waits for the client's first bytes. Long
/// enough for a slow client on a loaded node; server-speaks-first protocols
/// should be listed as opaque instead of relying on this timeout.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Server-speaks-first ports proxied as opaque TCP without waiting for the
/// client (SMTP, submission, MySQL, Galera, PostgreSQL, Redis,
/// Elasticsearch transport, memcached): the same defaults as Linkerd.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// A config that cannot be applied, naming the field that is wrong.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("cannot parse config: {0}")]
    Parse(String),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Proxy-wide settings from `ProxyConfig.settings`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub opaque_ports: HashSet<u16>,
    pub detect_timeout: Duration,
    pub access_log: bool,
}

/// The compiled config.
#[derive(Debug)]
pub struct MeshState {
    pub version: String,
    /// Host names the config's DNS-resolved endpoints need resolved.
    pub dns_names: Vec<String>,
    /// The config as received, for `/config_dump`.
    pub config: pb::ProxyConfig,
    pub settings: Settings,
    services: Vec<ServiceState>,
    by_name: HashMap<String, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    endpoints: HashMap<SocketAddr, Arc<Endpoint>>,
    /// Gateway listeners (a gateway proxy's config), by configured order.
    pub gateways: Vec<GatewayListenerState>,
}

/// The protocol a service port declares.
pub type Protocol = pb::Protocol;

/// A service and everything needed to route to it.
#[derive(Debug)]
pub struct ServiceState {
    pub name: String,
    pub namespace: String,
    pub ports: Vec<(u16, Protocol)>,
    pub routes: Vec<Route>,
    /// Balancers by (subset, service port); subset "" is all endpoints.
    backends: Backends,
    /// Weighted TCP destinations by port (0 = any port).
    pub tcp_routes: Vec<TcpRoute>,
    /// Names of the subsets the destination policy declares.
    pub subsets: Vec<String>,
}

/// Balancers by (subset, service port); subset "" is all endpoints. A short
/// list: a linear scan beats hashing a key per request.
type Backends = Vec<((String, u16), Arc<Balancer>)>;

/// Where a route sends a request.
#[derive(Debug, Clone)]
pub struct RouteDestination {
    /// Index in the route's configured destinations (for their header ops).
    pub index: usize,
    pub service: usize,
    pub subset: String,
    /// 0: the port the request arrived on.
    pub port: u16,
    pub weight: u32,
}

/// A compiled HTTP route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matchers: Vec<RequestMatcher>,
    pub destinations: Vec<RouteDestination>,
    total_weight: u32,
    pub timeout: Option<Duration>,
    pub retry: Option<crate::policy::RetryPolicy>,
    /// Where copies of the requests go, and what share of them.
    pub mirror: Option<(RouteDestination, f64)>,
    /// The route as configured, for the features built on it.
    pub spec: pb::HttpRoute,
}

/// A compiled TCP route.
#[derive(Debug)]
pub struct TcpRoute {
    pub port: u16,
    pub destinations: Vec<RouteDestination>,
    total_weight: u32,
}

impl MeshState {
    /// An empty state: nothing configured, every destination passes through.
    pub fn empty() -> Self {
        Self::compile(pb::ProxyConfig::default(), None).expect("the empty config is valid")
    }

    /// Parses a config file's text (YAML or JSON).
    pub fn parse(text: &str) -> Result<pb::ProxyConfig, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Compiles a config, reusing endpoint statistics from `previous`.
    pub fn compile(
        config: pb::ProxyConfig,
        previous: Option<&MeshState>,
    ) -> Result<Self, ConfigError> {
        Self::compile_with_dns(config, previous, &DnsCache::default())
    }

    /// Compiles a config; endpoints of DNS-resolved services (ServiceEntry
    /// `resolution: DNS`) get the addresses `dns` has for their names (none
    /// yet when it has none).
    pub fn compile_with_dns(
        config: pb::ProxyConfig,
        previous: Option<&MeshState>,
        dns: &DnsCache,
    ) -> Result<Self, ConfigError> {
        // An enum value this proxy does not know (from a newer controller,
        // or corrupted) would read as the default (PERMISSIVE, ALLOW, ...),
        // and /config_dump could not show the config: refuse it.
        serde_json::to_writer(std::io::sink(), &config).map_err(|e| {
            invalid(
                "config",
                format!("{e} (an enum value this proxy does not know)"),
            )
        })?;
        let settings = compile_settings(config.settings.as_ref())?;

        let mut by_name = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            if s.name.is_empty() {
                return Err(invalid(format!("services[{i}].name"), "must not be empty"));
            }
            for name in std::iter::once(&s.name).chain(s.aliases.iter()) {
                if by_name.insert(name.clone(), i).is_some() {
                    return Err(invalid(
                        format!("services[{i}].name"),
                        format!("{name:?} is defined twice"),
                    ));
                }
            }
        }

        let mut by_addr = HashMap::new();
        let mut endpoints: HashMap<SocketAddr, Arc<Endpoint>> = HashMap::new();
        let mut services = Vec::with_capacity(config.services.len());
        for (i, s) in config.services.iter().enumerate() {
            let field = format!("services[{i}]");
            let ports = compile_ports(s, &field)?;
            for (a, addr) in s.addresses.iter().enumerate() {
                let ip: IpAddr = addr.parse().map_err(|_| {
                    invalid(
                        format!("{field}.addresses[{a}]"),
                        format!("{addr:?} is not an IP"),
                    )
                })?;
                for (port, _) in &ports {
                    if let Some(other) = by_addr.insert(SocketAddr::new(ip, *port), i) {
                        return Err(invalid(
                            format!("{field}.addresses[{a}]"),
                            format!(
                                "{ip}:{port} is also claimed by {}",
                                config.services[other].name
                            ),
                        ));
                    }
                }
            }
            let backends = compile_backends(s, &ports, &field, previous, &mut endpoints, dns)?;
            services.push(ServiceState {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                ports,
                routes: Vec::new(),
                backends,
                tcp_routes: Vec::new(),
                subsets: s
                    .policy
                    .iter()
                    .flat_map(|p| p.subsets.iter().map(|ss| ss.name.clone()))
                    .collect(),
            });
        }

        // Routes refer to services by name, so they compile once all exist.
        for (i, s) in config.services.iter().enumerate() {
            let field = format!("services[{i}]");
            let mut routes = Vec::with_capacity(s.http_routes.len());
            for (r, route) in s.http_routes.iter().enumerate() {
                routes.push(compile_route(
                    route,
                    &format!("{field}.httpRoutes[{r}]"),
                    &by_name,
                    &services,
                )?);
            }
            let mut tcp_routes = Vec::with_capacity(s.tcp_routes.len());
            for (r, route) in s.tcp_routes.iter().enumerate() {
                let f = format!("{field}.tcpRoutes[{r}]");
                let destinations =
                    compile_destinations(&route.destinations, &f, &by_name, &services)?;
                tcp_routes.push(TcpRoute {
                    port: port_u16(route.port, &format!("{f}.port"))?,
                    total_weight: destinations.iter().map(|d| d.weight).sum(),
                    destinations,
                });
            }
            services[i].routes = routes;
            services[i].tcp_routes = tcp_routes;
        }

        let gateways = gateway::compile_gateways(&config.gateway_listeners, &by_name, &services)?;

        let dns_names = config
            .services
            .iter()
            .filter(|s| s.resolution == pb::Resolution::Dns as i32)
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.address.parse::<IpAddr>().is_err())
            .map(|e| e.address.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(Self {
            version: config.version.clone(),
            dns_names,
            config,
            settings,
            services,
            by_name,
            by_addr,
            endpoints,
            gateways,
        })
    }

    /// The gateway listener on `port`.
    pub fn gateway(&self, port: u16) -> Option<&GatewayListenerState> {
        self.gateways.iter().find(|g| g.port == port)
    }

    /// The service behind a virtual IP and port, in O(1).
    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    /// The service with this name or alias, in O(1).
    pub fn service_by_name(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn service(&self, idx: usize) -> &ServiceState {
        &self.services[idx]
    }

    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// The balancer for a service's subset and port.
    pub fn backend(&self, service: usize, subset: &str, port: u16) -> Option<&Arc<Balancer>> {
        self.services
            .get(service)?
            .backends
            .iter()
            .find(|((s, p), _)| *p == port && s == subset)
            .map(|(_, b)| b)
    }

    /// The workload's AuthorizationPolicies (inbound).
    pub fn authorization_policies(&self) -> &[pb::AuthorizationPolicy] {
        self.config
            .inbound
            .as_ref()
            .map(|p| p.authorization.as_slice())
            .unwrap_or(&[])
    }

    /// Every endpoint known to this state, by address.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }
}

impl ServiceState {
    pub fn protocol(&self, port: u16) -> Option<Protocol> {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, pr)| *pr)
    }
}

/// Which route a request takes.
#[derive(Debug)]
pub enum RouteChoice<'a> {
    /// The service has no routes: the default route to itself.
    Default,
    Route(&'a Route),
    /// Routes exist and none matches.
    NoMatch,
}

impl ServiceState {
    /// The first route (in declared order) whose matchers accept `info`.
    pub fn select_route(&self, info: &crate::routing::RequestInfo<'_>) -> RouteChoice<'_> {
        if self.routes.is_empty() {
            return RouteChoice::Default;
        }
        match self
            .routes
            .iter()
            .find(|r| r.matchers.is_empty() || r.matchers.iter().any(|m| m.matches(info)))
        {
            Some(r) => RouteChoice::Route(r),
            None => RouteChoice::NoMatch,
        }
    }
}

impl Route {
    /// Picks one of the weighted destinations.
    pub fn pick(&self) -> Option<&RouteDestination> {
        pick_weighted(&self.destinations, self.total_weight)
    }
}

impl TcpRoute {
    pub fn pick(&self) -> Option<&RouteDestination> {
        pick_weighted(&self.destinations, self.total_weight)
    }
}

fn pick_weighted(dests: &[RouteDestination], total: u32) -> Option<&RouteDestination> {
    match dests.len() {
        0 => None,
        1 => dests.first(),
        _ if total == 0 => dests.first(),
        _ => {
            let mut x = rand::rng().random_range(0..total);
            for d in dests {
                if x < d.weight {
                    return Some(d);
                }
                x -= d.weight;
            }
            dests.last()
        }
    }
}

fn port_u16(p: u32, field: &str) -> Result<u16, ConfigError> {
    u16::try_from(p).map_err(|_| invalid(field, format!("{p} is not a port")))
}

fn compile_settings(s: Option<&pb::ProxySettings>) -> Result<Settings, ConfigError> {
    let default = pb::ProxySettings::default();
    let s = s.unwrap_or(&default);
    let opaque_ports = if s.opaque_ports.is_empty() {
        DEFAULT_OPAQUE_PORTS.into_iter().collect()
    } else {
        s.opaque_ports
            .iter()
            .enumerate()
            .map(|(i, p)| port_u16(*p, &format!("settings.opaquePorts[{i}]")))
            .collect::<Result<_, _>>()?
    };
    Ok(Settings {
        opaque_ports,
        detect_timeout: match s.detect_timeout_ms {
            0 => DEFAULT_DETECT_TIMEOUT,
            ms => Duration::from_millis(ms),
        },
        access_log: s.access_log,
    })
}

fn compile_ports(s: &pb::Service, field: &str) -> Result<Vec<(u16, Protocol)>, ConfigError> {
    let mut ports = Vec::with_capacity(s.ports.len());
    for (p, sp) in s.ports.iter().enumerate() {
        let port = port_u16(sp.port, &format!("{field}.ports[{p}].port"))?;
        if port == 0 {
            return Err(invalid(format!("{field}.ports[{p}].port"), "must not be 0"));
        }
        ports.push((port, sp.protocol()));
    }
    Ok(ports)
}

fn algorithm(lb: Option<&pb::LoadBalancer>, field: &str) -> Result<Algorithm, ConfigError> {
    use pb::load_balancer::Kind;
    let Some(lb) = lb else {
        return Ok(Algorithm::P2cEwma);
    };
    Ok(match lb.kind() {
        Kind::P2cEwma => Algorithm::P2cEwma,
        Kind::RoundRobin => Algorithm::RoundRobin,
        Kind::LeastRequest => Algorithm::LeastRequest,
        Kind::Random => Algorithm::Random,
        Kind::ConsistentHash => {
            use pb::consistent_hash::Key;
            let key = lb.consistent_hash.as_ref().and_then(|h| h.key.as_ref());
            let key = match key {
                Some(Key::HeaderName(h)) => HashKey::Header(
                    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(
                        |_| {
                            invalid(
                                format!("{field}.consistentHash.headerName"),
                                "bad header name",
                            )
                        },
                    )?,
                ),
                Some(Key::CookieName(c)) => HashKey::Cookie(c.clone()),
                Some(Key::UseSourceIp(true)) => HashKey::SourceIp,
                _ => {
                    return Err(invalid(
                        format!("{field}.consistentHash"),
                        "CONSISTENT_HASH needs headerName, cookieName or useSourceIp",
                    ))
                }
            };
            Algorithm::ConsistentHash(key)
        }
    })
}

fn compile_backends(
    s: &pb::Service,
    ports: &[(u16, Protocol)],
    field: &str,
    previous: Option<&MeshState>,
    all: &mut HashMap<SocketAddr, Arc<Endpoint>>,
    dns: &DnsCache,
) -> Result<Backends, ConfigError> {
    let policy = s.policy.clone().unwrap_or_default();
    let tls = origination(policy.tls.as_ref(), s, &format!("{field}.policy.tls"))?;
    let service_alg = algorithm(
        policy.load_balancer.as_ref(),
        &format!("{field}.policy.loadBalancer"),
    )?;

    // Endpoints per service port, with their labels for subsets.
    let mut per_port: HashMap<u16, Vec<Arc<Endpoint>>> = HashMap::new();
    for (e, ep) in s.endpoints.iter().enumerate() {
        let ef = format!("{field}.endpoints[{e}]");
        let ips: Vec<IpAddr> = match ep.address.parse() {
            Ok(ip) => vec![ip],
            Err(_) if s.resolution == pb::Resolution::Dns as i32 => {
                dns.0.get(&ep.address).cloned().unwrap_or_default()
            }
            Err(_) => {
                return Err(invalid(
                    format!("{ef}.address"),
                    format!(
                        "{:?} is not an IP (host names need resolution: RESOLUTION_DNS)",
                        ep.address
                    ),
                ))
            }
        };
        for (ip, (port, _)) in ips
            .iter()
            .flat_map(|ip| ports.iter().map(move |p| (*ip, p)))
        {
            let target = match ep.ports.get(&u32::from(*port)) {
                Some(p) => port_u16(*p, &format!("{ef}.ports"))?,
                None if ep.ports.is_empty() => *port,
                None => continue,
            };
            let dial_port = match ep.mesh_port {
                0 => target,
                p => port_u16(p, &format!("{ef}.meshPort"))?,
            };
            let addr = SocketAddr::new(ip, dial_port);
            let endpoint = all
                .entry(addr)
                .or_insert_with(|| endpoint_state(addr, ep, previous, tls.as_ref()))
                .clone();
            per_port.entry(*port).or_default().push(endpoint);
        }
    }

    let mut backends = Vec::new();
    for (port, _) in ports {
        let eps = per_port.remove(port).unwrap_or_default();
        for subset in &policy.subsets {
            let sf = format!("{field}.policy.subsets[{}]", subset.name);
            let alg = match &subset.load_balancer {
                Some(lb) => algorithm(Some(lb), &format!("{sf}.loadBalancer"))?,
                None => service_alg.clone(),
            };
            let members = eps
                .iter()
                .filter(|e| {
                    subset
                        .labels
                        .iter()
                        .all(|(k, v)| e.labels.get(k) == Some(v))
                })
                .cloned()
                .collect();
            let outlier = OutlierPolicy::compile(
                subset
                    .outlier_detection
                    .as_ref()
                    .or(policy.outlier_detection.as_ref()),
            );
            let pool = subset
                .connection_pool
                .as_ref()
                .or(policy.connection_pool.as_ref());
            let limits = PoolLimits::compile(pool);
            backends.push((
                (subset.name.clone(), *port),
                Arc::new(
                    Balancer::new(members, alg)
                        .with_resilience(outlier, limits)
                        .with_conn_policy(ConnPolicy::compile(pool)),
                ),
            ));
        }
        let outlier = OutlierPolicy::compile(policy.outlier_detection.as_ref());
        let limits = PoolLimits::compile(policy.connection_pool.as_ref());
        backends.push((
            (String::new(), *port),
            Arc::new(
                Balancer::new(eps, service_alg.clone())
                    .with_resilience(outlier, limits)
                    .with_conn_policy(ConnPolicy::compile(policy.connection_pool.as_ref())),
            ),
        ));
    }
    Ok(backends)
}

fn endpoint_state(
    addr: SocketAddr,
    ep: &pb::Endpoint,
    previous: Option<&MeshState>,
    tls: Option<&Arc<crate::pool::OriginationTls>>,
) -> Arc<Endpoint> {
    let labels: BTreeMap<String, String> = ep.labels.clone().into_iter().collect();
    let identity: Option<Arc<str>> = (!ep.identity.is_empty()).then(|| ep.identity.as_str().into());
    let same_tls = |prev: &Endpoint| match (&prev.tls, tls) {
        (None, None) => true,
        (Some(a), Some(b)) => a.server_name == b.server_name && Arc::ptr_eq(&a.h1, &b.h1),
        _ => false,
    };
    if let Some(prev) = previous.and_then(|p| p.endpoints.get(&addr)) {
        if prev.labels == labels
            && prev.identity == identity
            && prev.pod == ep.pod
            && same_tls(prev)
        {
            return prev.clone();
        }
    }
    let mut e = Endpoint::new(addr);
    e.workload = labels
        .get("app")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .cloned()
        .unwrap_or_else(|| {
            if ep.pod.is_empty() {
                "unknown".into()
            } else {
                ep.pod.clone()
            }
        });
    e.labels = labels;
    e.identity = identity;
    e.tls = tls.cloned();
    e.pod = ep.pod.clone();
    Arc::new(e)
}

/// Addresses of the host names of DNS-resolved services, as the proxy
/// resolved them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DnsCache(pub HashMap<String, Vec<IpAddr>>);

/// TLS origination for a service (`policy.tls.mode: SIMPLE`).
fn origination(
    tls: Option<&pb::UpstreamTls>,
    s: &pb::Service,
    field: &str,
) -> Result<Option<Arc<crate::pool::OriginationTls>>, ConfigError> {
    use pb::upstream_tls::Mode;
    let Some(tls) = tls else { return Ok(None) };
    match Mode::try_from(tls.mode).unwrap_or(Mode::Auto) {
        Mode::Auto | Mode::Disable => Ok(None),
        Mode::Simple | Mode::Mutual => {
            let client = if tls.mode == Mode::Mutual as i32 {
                let read = |path: &str, f: &str| {
                    if path.is_empty() {
                        return Err(invalid(
                            format!("{field}.{f}"),
                            "MUTUAL needs a client certificate and key",
                        ));
                    }
                    std::fs::read_to_string(path)
                        .map_err(|e| invalid(format!("{field}.{f}"), format!("{path}: {e}")))
                };
                Some((
                    read(&tls.client_certificate_path, "clientCertificatePath")?,
                    read(&tls.private_key_path, "privateKeyPath")?,
                ))
            } else {
                None
            };
            // The name checked against the server's certificate: the first
            // subjectAltName asked for, else the SNI, else the service name.
            let name = tls
                .subject_alt_names
                .first()
                .filter(|n| !n.is_empty())
                .or(Some(&tls.sni).filter(|n| !n.is_empty()))
                .unwrap_or(&s.name);
            crate::pool::OriginationTls::new(name, &tls.ca_certificates_pem, client)
                .map(|t| Some(Arc::new(t)))
                .map_err(|e| invalid(field.to_string(), e))
        }
    }
}

/// Resolves one destination: (service index, subset, port).
fn compile_destination(
    dest: Option<&pb::Destination>,
    df: &str,
    by_name: &HashMap<String, usize>,
    services: &[ServiceState],
) -> Result<(usize, String, u16), ConfigError> {
    let dest = dest.ok_or_else(|| invalid(df, "missing"))?;
    let service = *by_name.get(&dest.service).ok_or_else(|| {
        invalid(
            format!("{df}.service"),
            format!("unknown service {:?}", dest.service),
        )
    })?;
    let port = port_u16(dest.port, &format!("{df}.port"))?;
    if !dest.subset.is_empty() && !services[service].subsets.contains(&dest.subset) {
        return Err(invalid(
            format!("{df}.subset"),
            format!("service {} has no subset {:?}", dest.service, dest.subset),
        ));
    }
    Ok((service, dest.subset.clone(), port))
}

fn compile_destinations(
    dests: &[pb::WeightedDestination],
    field: &str,
    by_name: &HashMap<String, usize>,
    services: &[ServiceState],
) -> Result<Vec<RouteDestination>, ConfigError> {
    let mut out = Vec::with_capacity(dests.len());
    for (d, wd) in dests.iter().enumerate() {
        let df = format!("{field}.destinations[{d}].destination");
        let (service, subset, port) =
            compile_destination(wd.destination.as_ref(), &df, by_name, services)?;
        out.push(RouteDestination {
            index: d,
            service,
            subset,
            port,
            weight: if dests.len() == 1 && wd.weight == 0 {
                100
            } else {
                wd.weight
            },
        });
    }
    Ok(out)
}

fn compile_route(
    route: &pb::HttpRoute,
    field: &str,
    by_name: &HashMap<String, usize>,
    services: &[ServiceState],
) -> Result<Route, ConfigError> {
    let matchers = route
        .matches
        .iter()
        .enumerate()
        .map(|(m, hm)| RequestMatcher::compile(hm, &format!("{field}.matches[{m}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let destinations = compile_destinations(&route.destinations, field, by_name, services)?;
    if destinations.is_empty() && route.redirect.is_none() {
        return Err(invalid(
            format!("{field}.destinations"),
            "a route needs at least one destination or a redirect",
        ));
    }
    let retry = crate::policy::RetryPolicy::compile(route.retry.as_ref())
        .map_err(|e| invalid(format!("{field}.retry.retryOn"), e))?;
    let mirror = match &route.mirror {
        None => None,
        Some(m) => {
            let df = format!("{field}.mirror.destination");
            let (service, subset, port) =
                compile_destination(m.destination.as_ref(), &df, by_name, services)?;
            if !(0.0..=100.0).contains(&m.percentage) {
                return Err(invalid(
                    format!("{field}.mirror.percentage"),
                    "must be between 0 and 100",
                ));
            }
            let dest = RouteDestination {
                index: 0,
                service,
                subset,
                port,
                weight: 100,
            };
            Some((dest, m.percentage))
        }
    };
    Ok(Route {
        name: route.name.clone(),
        matchers,
        total_weight: destinations.iter().map(|d| d.weight).sum(),
        destinations,
        timeout: (route.timeout_ms > 0).then(|| Duration::from_millis(route.timeout_ms)),
        retry,
        mirror,
        spec: route.clone(),
    })
}

/// Fuzzing entry point: `data` is a `DiscoveryResponse` as the config
/// stream delivers it (protobuf). It is applied the way the proxy applies
/// it ([`crate::discovery::merge`] onto the current config, then
/// [`MeshState::compile_with_dns`]), onto nothing (a new proxy) and onto a
/// small working config. Nothing panics; a rejected config has a reason
/// for the NACK; an accepted one is usable: it can be dumped, compiles
/// again to the same services, and routing, picking, outlier detection
/// and gateway lookups work on it.
///
/// TLS origination's client certificate and key paths are cleared first:
/// reading files the input names is not what is being tested.
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    use prost::Message;

    const BASE: &str = r#"
version: "1"
services:
  - name: echo.demo.svc.cluster.local
    aliases: [echo]
    addresses: ["10.96.0.10"]
    ports: [{port: 80}]
    endpoints:
      - {address: 10.0.0.1, ports: {"80": 8080}, labels: {version: v1}}
      - {address: 10.0.0.2, ports: {"80": 8080}, labels: {version: v2}}
    policy:
      subsets: [{name: v1, labels: {version: v1}}]
      outlierDetection: {consecutive5xx: 1}
    httpRoutes:
      - matches: [{uri: {prefix: /v1}}]
        destinations: [{destination: {service: echo, subset: v1}}]
      - destinations: [{destination: {service: echo}}]
"#;
    let Ok(resp) = pb::DiscoveryResponse::decode(data) else {
        return;
    };
    let base = MeshState::parse(BASE).expect("the base config parses");
    for current in [pb::ProxyConfig::default(), base] {
        let previous = MeshState::compile(current.clone(), None).expect("the base compiles");
        let mut next = crate::discovery::merge(&current, &resp);
        for s in &mut next.services {
            if let Some(tls) = s.policy.as_mut().and_then(|p| p.tls.as_mut()) {
                tls.client_certificate_path.clear();
                tls.private_key_path.clear();
            }
        }
        match MeshState::compile_with_dns(next.clone(), Some(&previous), &DnsCache::default()) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(state) => {
                exercise(&state);
                let again = MeshState::compile(next, None).expect("compiles twice");
                assert_eq!(again.services().len(), state.services().len());
            }
        }
    }
}

/// Uses a compiled state the way requests do.
#[cfg(any(test, fuzzing))]
fn exercise(state: &MeshState) {
    use crate::balance::PickContext;
    use crate::resilience::Health;

    serde_json::to_string(&state.config).expect("config_dump");
    let method = http::Method::GET;
    let headers = http::HeaderMap::new();
    let labels = BTreeMap::new();
    let check_route = |route: &Route| {
        for d in route
            .destinations
            .iter()
            .chain(route.mirror.as_ref().map(|m| &m.0))
        {
            assert!(d.service < state.services().len(), "{d:?}");
        }
        if !route.destinations.is_empty() {
            let d = route.pick().expect("a route with destinations picks one");
            assert!(d.service < state.services().len());
        }
        let uri = http::Uri::from_static("/v1/a?b=c");
        let _ = crate::policy::apply_rewrite(&uri, &route.spec);
        if let Some(r) = &route.spec.redirect {
            let _ = crate::policy::redirect_location(r, &route.spec, &uri, Some("h"));
        }
    };
    for (i, svc) in state.services().iter().enumerate() {
        assert_eq!(state.service_by_name(&svc.name), Some(i));
        for (port, _) in &svc.ports {
            assert!(svc.protocol(*port).is_some());
            for path in ["/", "/v1/a"] {
                let info = crate::routing::RequestInfo {
                    path,
                    query: Some("a=1"),
                    method: &method,
                    headers: &headers,
                    port: *port,
                    source_labels: &labels,
                };
                if let RouteChoice::Route(r) = svc.select_route(&info) {
                    check_route(r);
                }
            }
            for subset in std::iter::once("").chain(svc.subsets.iter().map(String::as_str)) {
                let Some(b) = state.backend(i, subset, *port) else {
                    panic!("no backend for {}/{subset}:{port}", svc.name);
                };
                // A few failures, then a success, as requests report them.
                if let Some(e) = b.pick(&PickContext::default(), |_| true) {
                    for health in [Health::GatewayError, Health::ServerError, Health::Success] {
                        b.record(&e, health);
                    }
                }
            }
        }
        for t in &svc.tcp_routes {
            if let Some(d) = t.pick() {
                assert!(d.service < state.services().len());
            }
        }
    }
    for g in &state.gateways {
        assert_eq!(state.gateway(g.port).map(|x| x.port), Some(g.port));
        for vh in &g.vhosts {
            for h in &vh.hosts {
                let _ = g.vhost(&normalize_host(h));
            }
            vh.routes.iter().for_each(check_route);
        }
    }
}

#[cfg(test)]
mod tests;
