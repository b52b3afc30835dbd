//! Route selection cost against the number of services (a benchmark, not a
//! test): the proxy's lookups must stay flat as the mesh grows.
//!
//! For 10, 1,000 and 10,000 services (each with a VIP, a header route, a
//! prefix route and a default route, and 3 endpoints), measures one
//! request's routing work: VIP:port → service, route match, weighted
//! destination, balancer lookup and endpoint pick. Prints a table and
//! writes `docs/benchmarks/results/routing.json` when `ROUTING_BENCH_OUT`
//! names the file.
//!
//! `cargo bench -p mesh-proxy --bench routing`

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use mesh_proxy::balance::PickContext;
use mesh_proxy::model::{MeshState, RouteChoice};
use mesh_proxy::routing::RequestInfo;

fn config(n: usize) -> String {
    let mut y = String::from("version: \"bench\"\nservices:\n");
    for i in 0..n {
        let vip = Ipv4Addr::from(0x0a60_0000u32 + i as u32);
        y.push_str(&format!(
            "  - name: svc-{i}.ns.svc.cluster.local\n    addresses: [\"{vip}\"]\n    ports: [{{port: 80, protocol: HTTP1}}]\n    endpoints:\n"
        ));
        for e in 0..3 {
            let ip = Ipv4Addr::from(0x0a00_0000u32 + (i * 3 + e) as u32);
            y.push_str(&format!(
                "      - {{address: \"{ip}\", ports: {{\"80\": 8080}}, labels: {{version: v{}}}}}\n",
                e % 2 + 1
            ));
        }
        y.push_str(&format!(
            "    policy:\n      subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n    httpRoutes:\n      - matches: [{{headers: [{{name: x-canary, value: {{exact: \"yes\"}}}}]}}]\n        destinations: [{{destination: {{service: svc-{i}.ns.svc.cluster.local, subset: v2}}}}]\n      - matches: [{{uri: {{prefix: /api/}}}}]\n        destinations:\n          - {{destination: {{service: svc-{i}.ns.svc.cluster.local, subset: v1}}, weight: 90}}\n          - {{destination: {{service: svc-{i}.ns.svc.cluster.local, subset: v2}}, weight: 10}}\n      - destinations: [{{destination: {{service: svc-{i}.ns.svc.cluster.local}}}}]\n"
        ));
    }
    y
}

/// Nanoseconds per routed request, for `n` services, with requests spread
/// over `working_set` of them (all of them: every lookup misses the CPU
/// caches at 10,000; a sidecar's usual few: the lookups' own cost).
fn measure(n: usize, working_set: usize) -> f64 {
    let state = MeshState::compile(MeshState::parse(&config(n)).unwrap(), None).unwrap();
    let method = http::Method::GET;
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("bench"));
    let labels = BTreeMap::new();
    let ctx = PickContext::default();
    let iterations = 400_000usize;
    let mut sink = 0usize;
    let started = Instant::now();
    for k in 0..iterations {
        // Spread lookups over all services (cache effects included).
        let i = ((k * 7919) % working_set) * (n / working_set);
        let vip = SocketAddr::from((Ipv4Addr::from(0x0a60_0000u32 + i as u32), 80));
        let svc_idx = state.service_by_addr(vip).expect("the VIP is known");
        let svc = state.service(svc_idx);
        let info = RequestInfo {
            path: "/api/orders",
            query: None,
            method: &method,
            headers: &headers,
            port: 80,
            source_labels: &labels,
        };
        let (dest, subset) = match svc.select_route(&info) {
            RouteChoice::Route(r) => {
                let d = r.pick().expect("a destination");
                (d.service, d.subset.as_str())
            }
            _ => (svc_idx, ""),
        };
        let ep = state
            .backend(dest, subset, 80)
            .and_then(|b| b.pick(&ctx, |_| true))
            .expect("an endpoint");
        sink = sink.wrapping_add(ep.addr.port() as usize);
    }
    let ns = started.elapsed().as_nanos() as f64 / iterations as f64;
    std::hint::black_box(sink);
    ns
}

fn main() {
    let sizes = [10usize, 1_000, 10_000];
    let mut rows = Vec::new();
    for n in sizes {
        // Best of three runs: the machine is shared.
        let best = |ws: usize| (0..3).map(|_| measure(n, ws)).fold(f64::INFINITY, f64::min);
        let hot = best(10);
        let all = best(n);
        println!("{n:>6} services: {hot:>7.1} ns per routed request (10 services in use), {all:>7.1} ns (all in use)");
        rows.push((n, hot, all));
    }
    let ratio = rows[2].1 / rows[0].1;
    let ratio_all = rows[2].2 / rows[0].2;
    println!("10,000 vs 10 services: {ratio:.2}x with 10 in use (target ≤ 2x), {ratio_all:.2}x with all in use");
    if let Ok(path) = std::env::var("ROUTING_BENCH_OUT") {
        let json = serde_json::json!({
            "benchmark": "route selection per request (VIP lookup, route match, weighted pick, endpoint pick)",
            "command": "cargo bench -p mesh-proxy --bench routing",
            "results": rows.iter().map(|(n, hot, all)| serde_json::json!({
                "services": n,
                "ns_per_request_10_in_use": (hot * 10.0).round() / 10.0,
                "ns_per_request_all_in_use": (all * 10.0).round() / 10.0,
            })).collect::<Vec<_>>(),
            "ratio_10000_vs_10": (ratio * 100.0).round() / 100.0,
            "ratio_10000_vs_10_all_in_use": (ratio_all * 100.0).round() / 100.0,
            "target_ratio": 2.0,
            "met": ratio <= 2.0,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
        println!("wrote {path}");
    }
}
