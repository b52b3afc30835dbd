//! Wire APIs of the mesh, generated from `proto/` with tonic and prost.
//!
//! - [`config::v1`]: `ConfigDiscovery.Stream`, the controller → proxy config
//!   stream, and `ProxyConfig`, the model the proxy runs (also read from files).
//! - [`ca::v1`]: `Certificates.Sign`, the CA's signing API.
//!
//! Every message also implements serde `Serialize`/`Deserialize` in the
//! canonical proto3 JSON mapping (camelCase fields, enums as names).
#![forbid(unsafe_code)]
#![allow(clippy::all)]

/// Configuration discovery (`mesh.config.v1`).
pub mod config {
    /// Version 1 of the config API.
    pub mod v1 {
        #![allow(missing_docs)]
        tonic::include_proto!("mesh.config.v1");
        include!(concat!(env!("OUT_DIR"), "/mesh.config.v1.serde.rs"));
    }
}

/// Certificate signing (`mesh.ca.v1`).
pub mod ca {
    /// Version 1 of the CA API.
    pub mod v1 {
        #![allow(missing_docs)]
        tonic::include_proto!("mesh.ca.v1");
        include!(concat!(env!("OUT_DIR"), "/mesh.ca.v1.serde.rs"));
    }
}

#[cfg(test)]
mod tests {
    use super::config::v1::*;

    #[test]
    fn proxy_config_reads_from_yaml_in_json_mapping() {
        let yaml = r#"
version: "7"
services:
  - name: echo.default.svc.cluster.local
    addresses: ["10.96.0.10"]
    ports: [{port: 80, protocol: HTTP1}]
    endpoints:
      - address: 10.0.0.1
        ports: {"80": 8080}
    policy:
      loadBalancer: {kind: ROUND_ROBIN}
inbound:
  mode: STRICT
"#;
        let cfg: ProxyConfig = serde_yaml::from_str(yaml).expect("valid yaml");
        assert_eq!(cfg.version, "7");
        let svc = &cfg.services[0];
        assert_eq!(svc.ports[0].protocol(), Protocol::Http1);
        assert_eq!(svc.endpoints[0].ports.get(&80), Some(&8080));
        assert_eq!(
            svc.policy
                .as_ref()
                .unwrap()
                .load_balancer
                .as_ref()
                .unwrap()
                .kind(),
            load_balancer::Kind::RoundRobin
        );
        assert_eq!(cfg.inbound.unwrap().mode(), PeerAuthMode::Strict);
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = serde_json::from_str::<ProxyConfig>(r#"{"servces": []}"#).unwrap_err();
        assert!(err.to_string().contains("servces"), "{err}");
    }
}
