//! gRPC echo server (`mesh.testapps.echo.v1.Echo`): answers with the pod name.
//!
//! Env: `PORT` (9090), `POD_NAME`, `POD_NAMESPACE`, `FAIL_RATE` (0.0-1.0: answer
//! UNAVAILABLE to that fraction), `DELAY_MS`.

use std::collections::HashMap;
use std::time::Duration;

use mesh_testapps::echo::echo_server::{Echo, EchoServer};
use mesh_testapps::echo::{EchoReply, EchoRequest};
use mesh_testapps::{env_f64, pod_name, pod_namespace};
use tonic::{Code, Request, Response, Status};

struct Svc {
    pod: String,
    namespace: String,
    fail_rate: f64,
    delay_ms: u64,
}

#[tonic::async_trait]
impl Echo for Svc {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let metadata: HashMap<String, String> = req
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let r = req.into_inner();
        let delay = if r.delay_ms > 0 {
            u64::from(r.delay_ms)
        } else {
            self.delay_ms
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if r.fail_code != 0 {
            return Err(Status::new(
                Code::from_i32(r.fail_code),
                format!("requested failure from {}", self.pod),
            ));
        }
        if self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate {
            return Err(Status::unavailable(format!(
                "injected failure from {}",
                self.pod
            )));
        }
        Ok(Response::new(EchoReply {
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            message: r.message,
            metadata,
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9090);
    let svc = Svc {
        pod: pod_name(),
        namespace: pod_namespace(),
        fail_rate: env_f64("FAIL_RATE", 0.0),
        delay_ms: env_f64("DELAY_MS", 0.0) as u64,
    };
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    eprintln!("grpc-echo: pod {} listening on {addr}", svc.pod);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    };
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(svc))
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
