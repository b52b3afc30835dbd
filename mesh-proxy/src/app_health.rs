//! Kubelet probes of the app, through the proxy (`/app-health/...` on the
//! metrics port 15020).
//!
//! Under STRICT mTLS the app's ports accept only mesh mTLS, so the kubelet's
//! plain-text probes would fail. The injector rewrites each app probe to
//! `GET :15020/app-health/<container>/<livez|readyz|startupz>` and passes
//! the original checks in `MESH_APP_PROBES` (a JSON object keyed by those
//! paths); the proxy runs the original check against the pod IP (its own
//! connections are never redirected) and answers 200 or 503. Only the
//! probe's own check is exposed, never the port. See docs/injector.md.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// One app probe's check, as the kubelet would run it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    #[serde(default)]
    pub tcp_socket: Option<TcpSocket>,
    #[serde(default)]
    pub grpc: Option<Grpc>,
    #[serde(default = "one")]
    pub timeout_seconds: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    #[serde(default = "root")]
    pub path: String,
    pub port: u16,
    #[serde(default = "http_scheme")]
    pub scheme: String,
    #[serde(default)]
    pub http_headers: Vec<NameValue>,
}

fn root() -> String {
    "/".into()
}

fn http_scheme() -> String {
    "HTTP".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TcpSocket {
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Grpc {
    pub port: u16,
    #[serde(default)]
    pub service: String,
}

/// The app's probes by rewritten path, and where the app listens.
#[derive(Debug, Clone, Default)]
pub struct AppProbes {
    pub probes: HashMap<String, AppProbe>,
    pub pod_ip: Option<IpAddr>,
}

impl AppProbes {
    /// From `MESH_APP_PROBES` (empty: none).
    pub fn parse(json: &str, pod_ip: &str) -> Result<Self, String> {
        let probes = if json.trim().is_empty() {
            HashMap::new()
        } else {
            serde_json::from_str(json).map_err(|e| format!("MESH_APP_PROBES: {e}"))?
        };
        Ok(Self {
            probes,
            pod_ip: pod_ip.parse().ok(),
        })
    }

    /// Runs the probe at `path`: 404 for an unknown path.
    pub async fn check(&self, path: &str) -> (StatusCode, String) {
        let Some(probe) = self.probes.get(path) else {
            return (StatusCode::NOT_FOUND, format!("no app probe at {path}\n"));
        };
        let ip = self
            .pod_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
        let result = tokio::time::timeout(timeout, run(probe, ip)).await;
        match result {
            Ok(Ok(status)) => (status, format!("{}\n", status.as_u16())),
            Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no answer within {timeout:?}\n"),
            ),
        }
    }
}

async fn run(probe: &AppProbe, ip: IpAddr) -> Result<StatusCode, String> {
    if let Some(h) = &probe.http_get {
        return http_check(h, ip).await;
    }
    if let Some(t) = &probe.tcp_socket {
        tokio::net::TcpStream::connect(SocketAddr::new(ip, t.port))
            .await
            .map_err(|e| format!("connect {ip}:{}: {e}", t.port))?;
        return Ok(StatusCode::OK);
    }
    if let Some(g) = &probe.grpc {
        return grpc_check(g, ip).await;
    }
    Err("the probe has no check".into())
}

async fn http_check(h: &HttpGet, ip: IpAddr) -> Result<StatusCode, String> {
    let addr = SocketAddr::new(ip, h.port);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut req = http::Request::get(&h.path).header(http::header::HOST, addr.to_string());
    for hv in &h.http_headers {
        req = req.header(hv.name.as_str(), hv.value.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("probe request: {e}"))?;
    let status = if h.scheme.eq_ignore_ascii_case("HTTPS") {
        // As the kubelet: TLS without verifying the certificate.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {addr}: {e}"))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    // Like the kubelet: 200-399 passes; anything else fails the probe.
    Ok(if (200..400).contains(&status.as_u16()) {
        status
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

async fn send<I>(io: I, req: http::Request<Empty<Bytes>>) -> Result<StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("probe: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("probe: {e}"))?;
    Ok(resp.status())
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// 1 = SERVING.
    #[prost(int32, tag = "1")]
    status: i32,
}

async fn grpc_check(g: &Grpc, ip: IpAddr) -> Result<StatusCode, String> {
    let uri = format!("http://{}", SocketAddr::new(ip, g.port));
    let channel = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect {uri}: {e}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| format!("gRPC {uri}: {e}"))?;
    let resp: tonic::Response<HealthCheckResponse> = client
        .unary(
            tonic::Request::new(HealthCheckRequest {
                service: g.service.clone(),
            }),
            http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(|s| format!("gRPC health check: {}", s.message()))?;
    if resp.get_ref().status == 1 {
        Ok(StatusCode::OK)
    } else {
        Err(format!(
            "gRPC health status {} (not SERVING)",
            resp.get_ref().status
        ))
    }
}

/// Accepts any server certificate (HTTPS probes, as the kubelet does).
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
