//! P-256 leaf signings per second on one thread: the CA's whole sign path
//! without gRPC (CSR parse + signature check + identity check + leaf
//! issue + PEM), the CSRs made beforehand as workloads would.
//!
//!     cargo run --release -p mesh-ca --example sign-bench -- [SECONDS]
//!
//! Prints one JSON object; `bench/ca` runs it pinned to one core.

use std::time::{Duration, Instant};

use mesh_api::WorkloadIdentity;
use mesh_ca::csr::new_workload_csr;
use mesh_ca::Authority;

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5.0);
    let authority = Authority::generate()?;
    let id = WorkloadIdentity::new("cluster.local", "bench", "client")?;
    let csrs: Vec<String> = (0..256)
        .map(|_| new_workload_csr(Some(&id)).map(|(_, c)| c))
        .collect::<Result<_, _>>()?;
    let ttl = Duration::from_secs(24 * 3600);
    // Warm up.
    for c in csrs.iter().take(64) {
        authority.sign(&id, c, ttl)?;
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < secs {
        for c in &csrs {
            std::hint::black_box(authority.sign(&id, c, ttl)?);
            n += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let per_sec = n as f64 / elapsed;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "ca-sign",
            "target": "mesh-ca",
            "signed": n,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "sign_per_sec_per_core": per_sec.round(),
            "mean_us": ((elapsed / n as f64) * 1e7).round() / 10.0,
        })
    );
    Ok(())
}
