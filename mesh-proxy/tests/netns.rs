//! Transparent interception in real network namespaces with real iptables.
//!
//! A client namespace gets the rules of `mesh-proxy init` and runs the proxy
//! as UID 1337; three server namespaces sit behind a "service IP" that only
//! the proxy's config knows. A client that knows nothing of the proxy dials
//! the service IP: its gRPC calls are spread per request, opaque TCP passes
//! byte-exact, and the proxy's own upstream traffic is not looped back.
//!
//! Needs root, `ip`, `iptables` and `setpriv` (CI has them). Set
//! MESH_SKIP_NETNS=1 to skip on a machine without root.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use mesh_testapps::echo::echo_client::EchoClient;
use mesh_testapps::echo::EchoRequest;
use support::netns::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUBNET: &str = "10.77.0";

fn setup() -> Topology {
    let t = Topology::new(
        "mt",
        SUBNET,
        &[("c", 1), ("s1", 11), ("s2", 12), ("s3", 13)],
    );
    // Service IPs exist only in the proxy's config; the client just needs a route.
    in_ns(
        &t.ns("c"),
        &["ip", "route", "add", "10.77.100.0/24", "dev", "eth0"],
    );
    t
}

#[test]
fn transparent_interception_in_network_namespaces() {
    if !netns_enabled("the network-namespace test") {
        return;
    }
    let mut t = setup();
    let proxy_bin = env!("CARGO_BIN_EXE_mesh-proxy");
    let client = t.ns("c");

    // The init container's job, for real.
    let out = Command::new("ip")
        .args(["netns", "exec", &client, proxy_bin, "init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running it again is idempotent: the same rules, no duplicate jumps.
    let rules = |ns: &str| {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "iptables-save", "-t", "nat"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let first = rules(&client);
    let out = Command::new("ip")
        .args(["netns", "exec", &client, proxy_bin, "init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(first, rules(&client), "re-running init changes nothing");
    assert_eq!(
        first
            .iter()
            .filter(|l| l.contains("-j MESH_OUTPUT"))
            .count(),
        1
    );

    // Servers: gRPC echo on :8080 and TCP echo on :9000 in each namespace.
    let servers: Vec<_> = [("s1", 11), ("s2", 12), ("s3", 13)]
        .into_iter()
        .map(|(n, host)| {
            let ns = t.ns(n);
            (
                n,
                bind_in(&ns, &format!("{SUBNET}.{host}:8080")),
                bind_in(&ns, &format!("{SUBNET}.{host}:9000")),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, grpc, echo) in servers {
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        rt.block_on(async {
            serve_grpc(tokio::net::TcpListener::from_std(grpc).unwrap(), name);
            serve_tcp_echo(tokio::net::TcpListener::from_std(echo).unwrap());
        });
    }

    let config = format!(
        r#"
version: "netns-1"
services:
  - name: echo.test.svc.cluster.local
    addresses: ["10.77.100.1"]
    ports: [{{port: 80, protocol: GRPC}}]
    endpoints:
      - {{address: "{SUBNET}.11", ports: {{"80": 8080}}, pod: s1}}
      - {{address: "{SUBNET}.12", ports: {{"80": 8080}}, pod: s2}}
      - {{address: "{SUBNET}.13", ports: {{"80": 8080}}, pod: s3}}
  - name: tcpecho.test.svc.cluster.local
    addresses: ["10.77.100.2"]
    ports: [{{port: 9000, protocol: TCP}}]
    endpoints:
      - {{address: "{SUBNET}.11", ports: {{"9000": 9000}}, pod: s1}}
"#
    );
    let cfg_path = t.dir.path().join("proxy.yaml");
    std::fs::write(&cfg_path, config).unwrap();
    std::fs::set_permissions(
        &cfg_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let uid = mesh_api::PROXY_UID.to_string();
    t.children.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &client,
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
                proxy_bin,
                "run",
            ])
            .arg("--config")
            .arg(&cfg_path)
            .args(["--workload", "netns-client", "--log", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .expect("proxy starts"),
    );

    // Wait for the proxy, from inside the client namespace.
    let ready = block_in_ns(&client, || async {
        for _ in 0..100 {
            if let Ok(mut s) = tokio::net::TcpStream::connect("127.0.0.1:15000").await {
                let _ = s
                    .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
                let mut out = String::new();
                let _ = s.read_to_string(&mut out).await;
                if out.starts_with("HTTP/1.1 200") {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(ready, "proxy became ready in the client namespace");

    // The app: one gRPC channel to the service IP, 3,000 calls.
    const N: usize = 3000;
    let counts: HashMap<String, usize> = block_in_ns(&client, || async {
        let channel = tonic::transport::Endpoint::from_static("http://10.77.100.1:80")
            .connect()
            .await
            .expect("connect through the redirect");
        let client = EchoClient::new(channel);
        futures::stream::iter(0..N)
            .map(|_| {
                let mut c = client.clone();
                async move {
                    c.echo(EchoRequest::default())
                        .await
                        .expect("rpc")
                        .into_inner()
                        .pod
                }
            })
            .buffer_unordered(8)
            .fold(HashMap::new(), |mut m, pod| async move {
                *m.entry(pod).or_default() += 1;
                m
            })
            .await
    });
    assert_even(&counts, N, 3, 0.05);

    // Opaque TCP through a service IP, and to an unknown destination
    // (passthrough): byte-exact, with half-close.
    for target in ["10.77.100.2:9000", "10.77.0.12:9000"] {
        let addr: SocketAddr = target.parse().unwrap();
        let got = block_in_ns(&client, move || echo_round_trip(addr, 1_000_000));
        assert!(got, "TCP echo via {target} is byte-exact");
    }

    let metrics = block_in_ns(&client, || async {
        let mut s = tokio::net::TcpStream::connect("127.0.0.1:15020")
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    });
    let requests: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("mesh_requests_total{") && l.contains("echo.test.svc.cluster.local")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        requests, N as f64,
        "every call went through the proxy once:\n{metrics}"
    );
    // Had the proxy's own upstream connections been redirected back to it,
    // they would show up as passthrough TCP to the pod IPs.
    for ip in ["10.77.0.11", "10.77.0.13"] {
        assert!(
            !metrics.contains(&format!("destination_service=\"{ip}\"")),
            "proxy traffic to {ip} was looped back:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("destination_service=\"10.77.0.12\""),
        "passthrough counted"
    );
    assert!(metrics.contains("destination_service=\"tcpecho.test.svc.cluster.local\""));
    drop(rt);
}
