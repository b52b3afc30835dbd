//! Gateway listeners, compiled: per port, virtual hosts looked up by the
//! request's host (exact name in O(1), then the longest `*.` wildcard, then
//! `*`), each with its routes compiled like a service's.

use std::collections::HashMap;

use mesh_proto::config::v1 as pb;

use super::{compile_route, invalid, port_u16, ConfigError, Route, RouteDestination, ServiceState};

/// Where a listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Plain HTTP.
    None,
    /// Inline PEM (config files, tests).
    Inline { cert_pem: String, key_pem: String },
    /// A mounted `kubernetes.io/tls` Secret of this name.
    Credential(String),
}

/// One compiled gateway listener.
#[derive(Debug)]
pub struct GatewayListenerState {
    pub port: u16,
    pub name: String,
    pub tls: TlsSource,
    pub vhosts: Vec<VirtualHostState>,
    exact: HashMap<String, usize>,
    /// `(".example.com", vhost)`, longest suffix first.
    wildcards: Vec<(String, usize)>,
    any: Option<usize>,
}

/// The routes of a set of hosts.
#[derive(Debug)]
pub struct VirtualHostState {
    pub hosts: Vec<String>,
    pub routes: Vec<Route>,
}

/// The host part of a `Host`/`:authority` value, lower-cased, without port
/// and without a trailing dot.
pub fn normalize_host(authority: &str) -> String {
    // Trailing dots may sit on the host or after the port (`a.:80`, `a:80.`).
    let authority = authority.trim_end_matches('.');
    let host = match authority.rsplit_once(':') {
        // IPv6 literals keep their brackets; a port follows the last colon.
        // A colon left in an unbracketed host means it was no port: keep
        // the value whole, so that normalizing twice changes nothing.
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit())
                && !h.ends_with(':')
                && (!h.contains(':') || (h.starts_with('[') && h.ends_with(']'))) =>
        {
            h
        }
        _ => authority,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl GatewayListenerState {
    /// The virtual host serving `host` (already normalized).
    pub fn vhost(&self, host: &str) -> Option<&VirtualHostState> {
        if let Some(&i) = self.exact.get(host) {
            return Some(&self.vhosts[i]);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, i)| &self.vhosts[*i])
            .or_else(|| self.any.map(|i| &self.vhosts[i]))
    }
}

/// A route destination without a port goes to the service's port when it
/// has exactly one (a gateway's port says nothing about the backend's).
fn default_port(d: &mut RouteDestination, services: &[ServiceState]) {
    if d.port == 0 {
        if let [(p, _)] = services[d.service].ports.as_slice() {
            d.port = *p;
        }
    }
}

/// Compiles the config's gateway listeners; a port may appear once.
pub(super) fn compile_gateways(
    listeners: &[pb::GatewayListener],
    by_name: &HashMap<String, usize>,
    services: &[ServiceState],
) -> Result<Vec<GatewayListenerState>, ConfigError> {
    let mut out: Vec<GatewayListenerState> = Vec::with_capacity(listeners.len());
    for (l, gl) in listeners.iter().enumerate() {
        let field = format!("gatewayListeners[{l}]");
        let port = port_u16(gl.port, &format!("{field}.port"))?;
        if port == 0 {
            return Err(invalid(format!("{field}.port"), "a listener needs a port"));
        }
        if out.iter().any(|o| o.port == port) {
            return Err(invalid(
                format!("{field}.port"),
                format!("port {port} is configured twice"),
            ));
        }
        let tls = match (
            gl.tls_cert_pem.is_empty(),
            gl.tls_key_pem.is_empty(),
            gl.credential_name.is_empty(),
        ) {
            (false, false, _) => TlsSource::Inline {
                cert_pem: gl.tls_cert_pem.clone(),
                key_pem: gl.tls_key_pem.clone(),
            },
            (true, true, false) => TlsSource::Credential(gl.credential_name.clone()),
            (true, true, true) => TlsSource::None,
            _ => {
                return Err(invalid(
                    format!("{field}.tlsCertPem"),
                    "a certificate needs both tlsCertPem and tlsKeyPem",
                ))
            }
        };
        let mut state = GatewayListenerState {
            port,
            name: gl.name.clone(),
            tls,
            vhosts: Vec::with_capacity(gl.virtual_hosts.len()),
            exact: HashMap::new(),
            wildcards: Vec::new(),
            any: None,
        };
        for (v, vh) in gl.virtual_hosts.iter().enumerate() {
            let vf = format!("{field}.virtualHosts[{v}]");
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (r, route) in vh.routes.iter().enumerate() {
                let mut compiled =
                    compile_route(route, &format!("{vf}.routes[{r}]"), by_name, services)?;
                for d in &mut compiled.destinations {
                    default_port(d, services);
                }
                if let Some((m, _)) = &mut compiled.mirror {
                    default_port(m, services);
                }
                routes.push(compiled);
            }
            let idx = state.vhosts.len();
            let mut hosts = Vec::with_capacity(vh.hosts.len());
            for (h, host) in vh.hosts.iter().enumerate() {
                let host = normalize_host(host);
                let taken = if host == "*" {
                    state.any.replace(idx).is_some()
                } else if let Some(suffix) = host.strip_prefix('*') {
                    if !suffix.starts_with('.') {
                        return Err(invalid(
                            format!("{vf}.hosts[{h}]"),
                            format!("{host:?}: a wildcard must be \"*\" or start with \"*.\""),
                        ));
                    }
                    let dup = state.wildcards.iter().any(|(s, _)| s == suffix);
                    state.wildcards.push((suffix.to_string(), idx));
                    dup
                } else {
                    state.exact.insert(host.clone(), idx).is_some()
                };
                if taken {
                    return Err(invalid(
                        format!("{vf}.hosts[{h}]"),
                        format!("host {host:?} is bound twice on port {port}"),
                    ));
                }
                hosts.push(host);
            }
            state.vhosts.push(VirtualHostState { hosts, routes });
        }
        state
            .wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        out.push(state);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("a.b"), "a.b");
        // A fixed point: normalizing twice changes nothing.
        for h in ["a:80.", "a.:80", "a:1:2", "[::1]:80", "x.:1.:2"] {
            let once = normalize_host(h);
            assert_eq!(normalize_host(&once), once, "{h}");
        }
        assert_eq!(normalize_host("Example.com:80."), "example.com");
    }

    fn listener(hosts: &[&[&str]]) -> pb::GatewayListener {
        pb::GatewayListener {
            port: 8080,
            virtual_hosts: hosts
                .iter()
                .map(|hs| pb::VirtualHost {
                    hosts: hs.iter().map(|h| h.to_string()).collect(),
                    routes: vec![],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exact_then_longest_wildcard_then_any() {
        let l = compile_gateways(
            &[listener(&[
                &["shop.example.com"],
                &["*.example.com"],
                &["*.eu.example.com"],
                &["*"],
            ])],
            &HashMap::new(),
            &[],
        )
        .unwrap();
        let pick = |h: &str| l[0].vhost(h).map(|v| v.hosts[0].clone());
        assert_eq!(
            pick("shop.example.com").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(pick("api.example.com").as_deref(), Some("*.example.com"));
        assert_eq!(
            pick("x.eu.example.com").as_deref(),
            Some("*.eu.example.com")
        );
        // A wildcard needs at least one label before the suffix.
        assert_eq!(pick("example.com").as_deref(), Some("*"));
        assert_eq!(pick("other.org").as_deref(), Some("*"));
    }

    #[test]
    fn conflicts_and_bad_hosts_name_the_field() {
        let e = compile_gateways(
            &[listener(&[&["a.example.com"], &["A.example.com"]])],
            &HashMap::new(),
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("gatewayListeners[0].virtualHosts[1].hosts[0]"),
            "{e}"
        );
        let e =
            compile_gateways(&[listener(&[&["*example.com"]])], &HashMap::new(), &[]).unwrap_err();
        assert!(e.to_string().contains("wildcard"), "{e}");
        let mut twice = vec![listener(&[]), listener(&[])];
        twice[1].name = "again".into();
        let e = compile_gateways(&twice, &HashMap::new(), &[]).unwrap_err();
        assert!(e.to_string().contains("configured twice"), "{e}");
        let half = pb::GatewayListener {
            port: 8443,
            tls_cert_pem: "x".into(),
            ..Default::default()
        };
        let e = compile_gateways(&[half], &HashMap::new(), &[]).unwrap_err();
        assert!(e.to_string().contains("tlsKeyPem"), "{e}");
    }
}
