use super::*;

fn config(yaml: &str) -> pb::ProxyConfig {
    MeshState::parse(yaml).expect("valid yaml")
}

const TWO_SUBSETS: &str = r#"
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
      subsets:
        - {name: v1, labels: {version: v1}}
        - {name: v2, labels: {version: v2}, loadBalancer: {kind: ROUND_ROBIN}}
    httpRoutes:
      - destinations:
          - {destination: {service: echo, subset: v1}, weight: 90}
          - {destination: {service: echo, subset: v2}, weight: 10}
"#;

#[test]
fn lookups_by_vip_and_name() {
    let s = MeshState::compile(config(TWO_SUBSETS), None).unwrap();
    let idx = s.service_by_addr("10.96.0.10:80".parse().unwrap()).unwrap();
    assert_eq!(s.service(idx).name, "echo.demo.svc.cluster.local");
    assert_eq!(s.service_by_name("echo"), Some(idx));
    assert!(s
        .service_by_addr("10.96.0.10:81".parse().unwrap())
        .is_none());
    let all = s.backend(idx, "", 80).unwrap();
    assert_eq!(all.endpoints().len(), 2);
    let v2 = s.backend(idx, "v2", 80).unwrap();
    assert_eq!(v2.endpoints().len(), 1);
    assert_eq!(v2.endpoints()[0].addr, "10.0.0.2:8080".parse().unwrap());
    assert_eq!(v2.algorithm(), &Algorithm::RoundRobin);
}

#[test]
fn weighted_split() {
    let s = MeshState::compile(config(TWO_SUBSETS), None).unwrap();
    let route = &s.service(0).routes[0];
    let v2 = (0..10_000)
        .filter(|_| route.pick().unwrap().subset == "v2")
        .count();
    assert!((800..=1200).contains(&v2), "{v2}");
}

#[test]
fn endpoint_stats_survive_reload() {
    let a = MeshState::compile(config(TWO_SUBSETS), None).unwrap();
    let ep = a.backend(0, "", 80).unwrap().endpoints()[0].clone();
    let _inflight = ep.start();
    let b = MeshState::compile(config(TWO_SUBSETS), Some(&a)).unwrap();
    let ep2 = b.backend(0, "", 80).unwrap().endpoints()[0].clone();
    assert!(Arc::ptr_eq(&ep, &ep2));
    assert_eq!(ep2.in_flight(), 1);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            TWO_SUBSETS.replace("subset: v2}", "subset: v3}"),
            "services[0].httpRoutes[0].destinations[1].destination.subset",
        ),
        (
            TWO_SUBSETS.replace("{service: echo, subset: v1}", "{service: nope}"),
            "services[0].httpRoutes[0].destinations[0].destination.service",
        ),
        (
            TWO_SUBSETS.replace("10.96.0.10", "not-an-ip"),
            "services[0].addresses[0]",
        ),
        (
            TWO_SUBSETS.replace("10.0.0.2", "bogus"),
            "services[0].endpoints[1].address",
        ),
    ];
    for (yaml, field) in cases {
        let err = MeshState::compile(config(&yaml), None).unwrap_err();
        assert!(err.to_string().starts_with(field), "{err} vs {field}");
    }
}

#[test]
fn unknown_fields_and_garbage_are_parse_errors() {
    assert!(matches!(
        MeshState::parse("services: [{nmae: x}]"),
        Err(ConfigError::Parse(_))
    ));
    assert!(matches!(
        MeshState::parse(": : :"),
        Err(ConfigError::Parse(_))
    ));
}

#[test]
fn duplicate_vip_is_refused() {
    let yaml = r#"
services:
  - {name: a, addresses: ["10.96.0.1"], ports: [{port: 80}]}
  - {name: b, addresses: ["10.96.0.1"], ports: [{port: 80}]}
"#;
    let err = MeshState::compile(config(yaml), None).unwrap_err();
    assert!(err.to_string().contains("also claimed by a"), "{err}");
}

#[test]
fn fuzz_logic_smoke() {
    use prost::Message;
    let full = pb::DiscoveryResponse {
        version: "2".into(),
        nonce: "n".into(),
        full: true,
        config: Some(config(TWO_SUBSETS)),
        ..Default::default()
    };
    let incremental = pb::DiscoveryResponse {
        full: false,
        removed_services: vec!["echo.demo.svc.cluster.local".into()],
        ..full.clone()
    };
    for resp in [full, incremental] {
        let bytes = resp.encode_to_vec();
        fuzz_logic(&bytes);
        for cut in (0..bytes.len()).step_by(11) {
            fuzz_logic(&bytes[..cut]);
        }
        for i in (0..bytes.len()).step_by(5) {
            let mut b = bytes.clone();
            b[i] = b[i].wrapping_add(1);
            fuzz_logic(&b);
        }
    }
    fuzz_logic(b"");
}

#[test]
fn fuzz_regressions_replay() {
    mesh_api::fuzzing::replay_regressions("config_stream", fuzz_logic);
}

#[test]
fn unknown_enum_values_are_refused() {
    // From the config stream (protobuf), an enum value this proxy does not
    // know would read as the default; files (JSON names) cannot carry one.
    let mut cfg = config(TWO_SUBSETS);
    cfg.services[0].ports[0].protocol = 33;
    let err = MeshState::compile(cfg, None).unwrap_err();
    assert!(err.to_string().contains("does not know"), "{err}");
    let mut cfg = config(TWO_SUBSETS);
    cfg.inbound = Some(pb::InboundPolicy {
        mode: 7,
        ..Default::default()
    });
    assert!(MeshState::compile(cfg, None).is_err());
}
