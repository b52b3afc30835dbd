//! Golden validation errors: each case is YAML (one or more resources) and the
//! exact errors `validate_set` reports for it, as `kind ns/name: field: message`.

use mesh_api::validate::validate_set;
use mesh_api::{parse_yaml, ResourceSet};

/// A DestinationRule for `reviews` with subsets v1 and v2, that cases reuse.
const REVIEWS_DR: &str = r#"
apiVersion: networking.mesh.dev/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn errors_of(yaml: &str) -> Vec<String> {
    let resources = parse_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let set: ResourceSet = resources.into_iter().collect();
    validate_set(&set).iter().map(ToString::to_string).collect()
}

/// A VirtualService `r` in `default` for host `reviews` with `http` as its routes.
fn vs_with_http(http: &str) -> String {
    format!(
        "apiVersion: networking.mesh.dev/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n{http}\n---\n{REVIEWS_DR}"
    )
}

#[test]
fn golden_validation_errors() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "bad regex",
            vs_with_http(
                "  - match: [{uri: {regex: \"/books/(\"}}]\n    route: [{destination: {host: reviews}}]",
            ),
            vec![
                "VirtualService default/r: spec.http[0].match[0].uri: invalid regex \"/books/(\": unclosed group",
            ],
        ),
        (
            "weights summing to 90",
            vs_with_http(
                "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 60}\n    - {destination: {host: reviews, subset: v2}, weight: 30}",
            ),
            vec![
                "VirtualService default/r: spec.http[0].route: weights sum to 90; with several destinations they must sum to 100",
            ],
        ),
        (
            "weight out of range",
            vs_with_http(
                "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 110}\n    - {destination: {host: reviews, subset: v2}, weight: -10}",
            ),
            vec![
                "VirtualService default/r: spec.http[0].route[0].weight: weight 110 must be in 0..=100",
                "VirtualService default/r: spec.http[0].route[1].weight: weight -10 must be in 0..=100",
            ],
        ),
        (
            "unknown subset",
            vs_with_http("  - route: [{destination: {host: reviews, subset: v3}}]"),
            vec![
                "VirtualService default/r: spec.http[0].route[0].destination.subset: unknown subset \"v3\" for host reviews.default.svc.cluster.local: DestinationRule default/reviews defines [v1, v2]",
            ],
        ),
        (
            "subset without any DestinationRule",
            r#"
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: r, namespace: default}
spec:
  hosts: [ratings]
  http:
  - mirror: {host: ratings, subset: canary}
    route: [{destination: {host: ratings}}]
"#
            .to_string(),
            vec![
                "VirtualService default/r: spec.http[0].mirror.subset: subset \"canary\" is used but no DestinationRule for host ratings.default.svc.cluster.local defines subsets",
            ],
        ),
        (
            "conflicting hosts",
            r#"
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: b-second, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: a-first, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: other-namespace, namespace: staging}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
"#
            .to_string(),
            vec![
                "VirtualService default/b-second: spec.hosts[0]: host reviews.default.svc.cluster.local (gateway mesh) is already claimed by VirtualService default/a-first",
            ],
        ),
        (
            "route after a catch-all is unreachable",
            vs_with_http(
                "  - route: [{destination: {host: reviews}}]\n  - match: [{uri: {prefix: /admin}}]\n    route: [{destination: {host: reviews}}]",
            ),
            vec![
                "VirtualService default/r: spec.http[1]: route is unreachable: spec.http[0] before it matches every request",
            ],
        ),
        (
            "bad duration",
            vs_with_http("  - timeout: 5 seconds\n    route: [{destination: {host: reviews}}]"),
            vec![
                "VirtualService default/r: spec.http[0].timeout: invalid duration \"5 seconds\": unknown or missing unit \" seconds\" (use h, m, s, ms, us or ns)",
            ],
        ),
        (
            "percentage 150",
            vs_with_http(
                "  - fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}\n    route: [{destination: {host: reviews}}]",
            ),
            vec![
                "VirtualService default/r: spec.http[0].fault.delay.percentage.value: percentage 150 must be in 0..=100",
            ],
        ),
        (
            "abort needs exactly one status, gRPC by name",
            vs_with_http(
                "  - fault: {abort: {grpcStatus: NOPE}}\n    route: [{destination: {host: reviews}}]",
            ),
            vec![
                "VirtualService default/r: spec.http[0].fault.abort.grpcStatus: unknown gRPC status \"NOPE\" (use a name such as UNAVAILABLE)",
            ],
        ),
        (
            "malformed host and port",
            vs_with_http(
                "  - match: [{port: 70000, headers: {X-User: {exact: a}}}]\n    route: [{destination: {host: Reviews_Svc, port: {number: 0}}}]\n  - route: [{destination: {host: reviews}}]",
            ),
            vec![
                "VirtualService default/r: spec.http[0].match[0].headers[X-User]: header name \"X-User\" must be lowercase",
                "VirtualService default/r: spec.http[0].match[0].port: port 70000 must be in 1..=65535",
                "VirtualService default/r: spec.http[0].route[0].destination.host: host \"Reviews_Svc\" must be a lowercase DNS name (RFC 1123)",
                "VirtualService default/r: spec.http[0].route[0].destination.port.number: port 0 must be in 1..=65535",
            ],
        ),
        (
            "withoutHeaders supports absence only; redirect excludes route",
            vs_with_http(
                "  - match: [{withoutHeaders: {x-debug: {exact: \"1\"}}}]\n    redirect: {uri: /v2, redirectCode: 404}\n    route: [{destination: {host: reviews}}]",
            ),
            vec![
                "VirtualService default/r: spec.http[0].match[0].withoutHeaders[x-debug]: only header absence is supported: use an empty match ({}) in withoutHeaders",
                "VirtualService default/r: spec.http[0].redirect: redirect cannot be combined with route",
                "VirtualService default/r: spec.http[0].redirect.redirectCode: redirect code 404 must be one of 301, 302, 303, 307, 308",
            ],
        ),
        (
            "retries",
            vs_with_http(
                "  - retries: {attempts: 2, perTryTimeout: 2x, retryOn: \"5xx,cancelled\"}\n    route: [{destination: {host: reviews}}]",
            ),
            vec![
                "VirtualService default/r: spec.http[0].retries.perTryTimeout: invalid duration \"2x\": unknown or missing unit \"x\" (use h, m, s, ms, us or ns)",
                "VirtualService default/r: spec.http[0].retries.retryOn: unsupported retry condition \"cancelled\" (supported: 5xx, gateway-error, reset, connect-failure, refused-stream, retriable-status-codes, or a status code)",
            ],
        ),
        (
            "tcp weights and unreachable tcp route",
            r#"
apiVersion: networking.mesh.dev/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - route:
    - {destination: {host: db}, weight: 50}
    - {destination: {host: db-replica}, weight: 40}
  - match: [{port: 5432}]
    route: [{destination: {host: db}}]
"#
            .to_string(),
            vec![
                "VirtualService default/db: spec.tcp[0].route: weights sum to 90; with several destinations they must sum to 100",
                "VirtualService default/db: spec.tcp[1]: route is unreachable: spec.tcp[0] before it matches every connection",
            ],
        ),
        (
            "destination rule policies",
            r#"
apiVersion: networking.mesh.dev/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
      consistentHash: {useSourceIp: true}
    connectionPool: {tcp: {connectTimeout: soon}}
    outlierDetection: {maxEjectionPercent: 150, interval: 10}
    tls: {mode: ISTIO_MUTUAL, sni: reviews}
  subsets:
  - {name: v1}
  - {name: v1}
  - name: V2
    trafficPolicy: {loadBalancer: {consistentHash: {}}}
"#
            .to_string(),
            vec![
                "DestinationRule default/reviews: spec.trafficPolicy.loadBalancer: set only one of simple and consistentHash",
                "DestinationRule default/reviews: spec.trafficPolicy.connectionPool.tcp.connectTimeout: invalid duration \"soon\": expected a number followed by a unit (h, m, s, ms, us, ns), e.g. \"5s\" or \"100ms\"",
                "DestinationRule default/reviews: spec.trafficPolicy.outlierDetection.interval: invalid duration \"10\": unknown or missing unit \"\" (use h, m, s, ms, us or ns)",
                "DestinationRule default/reviews: spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 150 must be in 0..=100",
                "DestinationRule default/reviews: spec.trafficPolicy.tls: sni, caCertificates and subjectAltNames are only for modes SIMPLE and MUTUAL",
                "DestinationRule default/reviews: spec.subsets[1].name: duplicate subset \"v1\"",
                "DestinationRule default/reviews: spec.subsets[2].name: \"V2\" must be a DNS label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)",
                "DestinationRule default/reviews: spec.subsets[2].trafficPolicy.loadBalancer.consistentHash: exactly one of httpHeaderName, httpCookie and useSourceIp: true is required",
            ],
        ),
        (
            "two destination rules for one host",
            format!("{REVIEWS_DR}---\napiVersion: networking.mesh.dev/v1\nkind: DestinationRule\nmetadata: {{name: reviews-2, namespace: default}}\nspec: {{host: reviews.default.svc.cluster.local}}\n"),
            vec![
                "DestinationRule default/reviews-2: spec.host: host reviews.default.svc.cluster.local already has DestinationRule default/reviews",
            ],
        ),
        (
            "service entry",
            r#"
apiVersion: networking.mesh.dev/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: ["*.example.com"]
  addresses: [10.0.0.0/40]
  ports:
  - {number: 443, name: https, protocol: TLS}
  - {number: 443, name: https}
  resolution: STATIC
  endpoints:
  - {address: api.example.com, ports: {grpc: 8443}}
"#
            .to_string(),
            vec![
                "ServiceEntry default/ext: spec.addresses[0]: \"10.0.0.0/40\" must be an IP address or CIDR",
                "ServiceEntry default/ext: spec.ports[1].number: duplicate port 443",
                "ServiceEntry default/ext: spec.ports[1].name: duplicate port name \"https\"",
                "ServiceEntry default/ext: spec.endpoints[0].address: \"api.example.com\" must be an IP address with resolution STATIC",
                "ServiceEntry default/ext: spec.endpoints[0].ports[grpc]: no port named \"grpc\" in spec.ports",
            ],
        ),
        (
            "gateway",
            r#"
apiVersion: networking.mesh.dev/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {app: gateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["foo/bar/baz"]
    tls: {mode: SIMPLE, credentialName: cert}
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
"#
            .to_string(),
            vec![
                "Gateway default/edge: spec.servers[0].tls.credentialName: credentialName (a kubernetes.io/tls Secret) is required",
                "Gateway default/edge: spec.servers[1].hosts[0]: host \"bar/baz\" must be a lowercase DNS name (RFC 1123), optionally starting with \"*.\"",
                "Gateway default/edge: spec.servers[1].tls: tls is only allowed on HTTPS servers",
                "Gateway default/edge: spec.servers[2].port.protocol: protocol TCP is not supported by the mesh gateway yet (use HTTP or HTTPS)",
            ],
        ),
        (
            "peer authentication",
            r#"
apiVersion: security.mesh.dev/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    "http": {mode: DISABLE}
---
apiVersion: security.mesh.dev/v1
kind: PeerAuthentication
metadata: {name: second, namespace: default}
spec:
  mtls: {mode: PERMISSIVE}
"#
            .to_string(),
            vec![
                "PeerAuthentication default/default: spec.portLevelMtls: portLevelMtls needs a selector with matchLabels (ports belong to workloads)",
                "PeerAuthentication default/default: spec.portLevelMtls[http]: \"http\" is not a port number",
                "PeerAuthentication default/second: spec.selector: namespace default already has a namespace-wide PeerAuthentication (default)",
            ],
        ),
        (
            "authorization policy",
            r#"
apiVersion: security.mesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: default}
spec:
  action: DENY
  rules:
  - from:
    - source: {}
    - source: {principals: ["cluster.local/*/sa/x"]}
    to:
    - operation: {ports: ["http", "99999"], methods: [get], paths: [admin]}
"#
            .to_string(),
            vec![
                "AuthorizationPolicy default/ap: spec.rules[0].from[0].source: source must set at least one field",
                "AuthorizationPolicy default/ap: spec.rules[0].from[1].source.principals[0]: \"cluster.local/*/sa/x\": '*' is only allowed at the start or the end",
                "AuthorizationPolicy default/ap: spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number",
                "AuthorizationPolicy default/ap: spec.rules[0].to[0].operation.ports[1]: port 99999 must be in 1..=65535",
                "AuthorizationPolicy default/ap: spec.rules[0].to[0].operation.methods[0]: method \"get\" must be an uppercase HTTP method (e.g. GET) or \"*\"",
                "AuthorizationPolicy default/ap: spec.rules[0].to[0].operation.paths[0]: path \"admin\" must start with '/' or '*'",
            ],
        ),
    ];

    let mut failures = Vec::new();
    for (name, yaml, want) in &cases {
        let got = errors_of(yaml);
        if got != *want {
            failures.push(format!(
                "case {name:?}\n  want:\n    {}\n  got:\n    {}",
                want.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn unknown_fields_are_parse_errors_naming_the_field() {
    let cases = [
        (
            "typo in a route",
            "apiVersion: networking.mesh.dev/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - matchx: []\n",
            "unknown field `matchx`",
        ),
        (
            "Istio field we do not support",
            "apiVersion: networking.mesh.dev/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    portLevelSettings: []\n",
            "unknown field `portLevelSettings`",
        ),
        (
            "typo at the top of spec",
            "apiVersion: security.mesh.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: r}\nspec:\n  actoin: DENY\n",
            "unknown field `actoin`",
        ),
        (
            "unknown enum value",
            "apiVersion: security.mesh.dev/v1\nkind: PeerAuthentication\nmetadata: {name: r}\nspec:\n  mtls: {mode: STRICTEST}\n",
            "unknown variant `STRICTEST`",
        ),
        (
            "second document",
            "apiVersion: networking.mesh.dev/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n---\napiVersion: networking.mesh.dev/v1\nkind: Gateway\nmetadata: {name: h}\nspec:\n  selectr: {}\n",
            "document 2 (line 6): spec: unknown field `selectr`",
        ),
        (
            "not a mesh kind",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {}\n",
            "networking.istio.io/v1/VirtualService is not a mesh resource",
        ),
    ];
    for (name, yaml, want) in cases {
        match parse_yaml(yaml) {
            Ok(parsed) => panic!("{name}: parsed {parsed:?}"),
            Err(e) => assert!(
                e.to_string().contains(want),
                "{name}: error {:?} does not contain {want:?}",
                e.to_string()
            ),
        }
    }
}
