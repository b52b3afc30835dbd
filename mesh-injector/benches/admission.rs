//! Admission latency of the injector: `cargo bench -p mesh-injector --bench
//! admission` (add `-- --quick` for a smoke run).
//!
//! Two scenarios with a Deployment-style pod (two containers, three probes,
//! two volumes, owner reference, tolerations):
//! - `admission-handler`: the handler function alone (parse the review,
//!   decide, build and encode the patch, encode the response);
//! - `admission-https-keepalive`: the real HTTPS server on loopback, one
//!   keep-alive HTTP/1.1 connection, requests one after another, timed at
//!   the client (so it includes the client's own TLS and HTTP work and the
//!   loopback round trip: an upper bound of what the API server waits).
//!
//! Results go to `docs/benchmarks/results/injector.json`. Target: p99 ≤ 2 ms.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_injector::server::AdmissionHandler;
use mesh_injector::InjectorConfig;
use serde_json::{json, Value};

const TARGET_P99_MS: f64 = 2.0;

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn summary(scenario: &str, mut samples: Vec<Duration>, extra: Value) -> Value {
    samples.sort();
    let n = samples.len();
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / n as f64 * 1e3;
    let p99 = percentile(&samples, 0.99);
    let mut v = json!({
        "scenario": scenario,
        "target": "mesh-injector",
        "n": n,
        "p50_ms": round3(percentile(&samples, 0.50)),
        "p90_ms": round3(percentile(&samples, 0.90)),
        "p99_ms": round3(p99),
        "p999_ms": round3(percentile(&samples, 0.999)),
        "max_ms": round3(samples[n - 1].as_secs_f64() * 1e3),
        "mean_ms": round3(mean),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": p99 <= TARGET_P99_MS,
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
    v
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    json!({ "cpu": cpu, "cores": cores, "kernel": kernel })
}

/// CPU seconds (user + system) this process used so far.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5); index 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// The 1-minute load average: the machine is shared, so say how busy it was.
fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(-1.0)
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (warmup, n_handler, n_https) = if quick {
        (100, 1_000, 500)
    } else {
        (1_000, 20_000, 10_000)
    };
    let body = common::review("bench-uid", "shop", "Pod", common::deployment_pod());

    // The handler function alone.
    let handler = AdmissionHandler::new(InjectorConfig::default(), true);
    let (_, response) = handler.review(&body).expect("review");
    for _ in 0..warmup {
        let _ = handler.review(&body);
    }
    let mut samples = Vec::with_capacity(n_handler);
    let cpu_before = process_cpu_seconds();
    for _ in 0..n_handler {
        let t = Instant::now();
        let r = handler.review(&body);
        samples.push(t.elapsed());
        assert!(r.is_ok());
    }
    let cpu_us = (process_cpu_seconds() - cpu_before) / n_handler as f64 * 1e6;
    let handler_row = summary(
        "admission-handler",
        samples,
        json!({
            "request_bytes": body.len(),
            "response_bytes": response.len(),
            "cpu_us_per_admission": cpu_us.round(),
        }),
    );

    // Through the HTTPS server, one keep-alive connection.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let https_row = rt.block_on(async {
        let server = common::start(true).await;
        let mut client = common::Client::connect(&server).await;
        for _ in 0..warmup {
            let (status, _) = client.request("POST", "/inject", body.clone()).await;
            assert_eq!(status, 200);
        }
        let mut samples = Vec::with_capacity(n_https);
        for _ in 0..n_https {
            let req = body.clone();
            let t = Instant::now();
            let (status, _) = client.request("POST", "/inject", req).await;
            samples.push(t.elapsed());
            assert_eq!(status, 200);
        }
        summary(
            "admission-https-keepalive",
            samples,
            json!({ "connections": 1, "protocol": "http1+tls1.3", "request_bytes": body.len() }),
        )
    });

    let date = now_utc();
    let load = load_1m();
    let rows: Vec<Value> = [handler_row, https_row]
        .into_iter()
        .map(|mut r| {
            if let Some(o) = r.as_object_mut() {
                o.insert("machine".into(), machine());
                o.insert("quick".into(), json!(quick));
                o.insert("load_1m".into(), json!(load));
                o.insert("date".into(), json!(date));
            }
            r
        })
        .collect();
    for r in &rows {
        println!(
            "{:<28} p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  (target p99 <= {TARGET_P99_MS} ms: {})",
            r["scenario"].as_str().unwrap_or(""),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["p999_ms"].as_f64().unwrap_or(0.0),
            if r["meets_target"] == true { "met" } else { "missed" },
        );
    }
    let out =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks/results/injector.json");
    let text = serde_json::to_string_pretty(&rows).expect("json") + "\n";
    match std::fs::write(&out, text) {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => eprintln!("writing {}: {e}", out.display()),
    }
}
