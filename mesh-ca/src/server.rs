//! The `mesh.ca.v1.Certificates` gRPC service over TLS.
//!
//! A request goes: bearer token → authenticator (TokenReview or the token
//! file) → identity `spiffe://<td>/ns/<ns>/sa/<sa>` → per-identity rate limit
//! → TTL policy → CSR checks and signing. Each step's refusal has its own gRPC
//! code, metric reason and audit line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use mesh_api::WorkloadIdentity;
use mesh_proto::ca::v1::certificates_server::{Certificates, CertificatesServer};
use mesh_proto::ca::v1::{SignRequest, SignResponse};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::auth::{AuthError, TokenAuthenticator};
use crate::authority::{Authority, SignError};
use crate::config::{
    TtlPolicy, DEFAULT_BURST, DEFAULT_RATE_PER_SEC, MAX_CONCURRENT_REQUESTS_PER_CONNECTION,
    MAX_CONCURRENT_STREAMS_PER_CONNECTION, MAX_REQUEST_BYTES, SERVING_CERT_VALIDITY,
    SERVING_DNS_NAMES,
};
use crate::csr::CsrError;
use crate::ratelimit::RateLimiter;

/// Tracing target of the audit log (one line per decision).
pub const AUDIT_TARGET: &str = "mesh_ca::audit";
/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request still running after this is ended (a signing takes
/// milliseconds; a TokenReview at most its own 5 s deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the serving certificate is checked for renewal.
const SERVING_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Metadata of a rate-limit refusal: milliseconds until the caller's
/// identity may sign again (gRPC's retry pushback, see gRFC A6).
pub const RETRY_PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";

/// Settings of the signing service.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Trust domain of issued identities (`cluster.local`).
    pub trust_domain: String,
    /// Default and maximum leaf lifetimes.
    pub ttl: TtlPolicy,
    /// Per-identity signings per second.
    pub rate_per_sec: f64,
    /// Per-identity burst.
    pub burst: u32,
    /// Extra DNS names for the serving certificate (besides the defaults).
    pub extra_dns_names: Vec<String>,
    /// Extra IPs for the serving certificate (besides 127.0.0.1).
    pub extra_ips: Vec<IpAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            trust_domain: mesh_api::DEFAULT_TRUST_DOMAIN.to_string(),
            ttl: TtlPolicy::default(),
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            burst: DEFAULT_BURST,
            extra_dns_names: vec![],
            extra_ips: vec![],
        }
    }
}

impl ServerConfig {
    fn serving_names(&self) -> (Vec<String>, Vec<IpAddr>) {
        let mut dns: Vec<String> = SERVING_DNS_NAMES.iter().map(|s| s.to_string()).collect();
        dns.extend(self.extra_dns_names.iter().cloned());
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        ips.extend(self.extra_ips.iter().copied());
        (dns, ips)
    }
}

/// The signing service (also usable without the network, e.g. behind another server).
pub struct CertificateService {
    authority: Arc<Authority>,
    authenticator: Arc<dyn TokenAuthenticator>,
    config: ServerConfig,
    limiter: RateLimiter,
}

impl CertificateService {
    /// A service over `authority` that authenticates with `authenticator`.
    pub fn new(
        authority: Arc<Authority>,
        authenticator: Arc<dyn TokenAuthenticator>,
        config: ServerConfig,
    ) -> Self {
        let limiter = RateLimiter::new(config.rate_per_sec, config.burst);
        Self {
            authority,
            authenticator,
            config,
            limiter,
        }
    }

    /// The tonic service, with the request size cap.
    pub fn into_server(self) -> CertificatesServer<Self> {
        CertificatesServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES)
    }

    async fn decide(
        &self,
        token: Option<&str>,
        req: &SignRequest,
        peer: &str,
        identity_out: &mut Option<WorkloadIdentity>,
    ) -> Result<SignResponse, Refusal> {
        let token = token.ok_or(Refusal::Auth(AuthError::Missing))?;
        let sa = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(Refusal::Auth)?;
        let identity = WorkloadIdentity::new(
            &self.config.trust_domain,
            &sa.namespace,
            &sa.service_account,
        )
        .map_err(|e| Refusal::Auth(AuthError::Rejected(e.to_string())))?;
        *identity_out = Some(identity.clone());
        if let Err(retry_after) = self.limiter.acquire(&identity.uri(), Instant::now()) {
            return Err(Refusal::RateLimited {
                rate: self.limiter.rate(),
                burst: self.limiter.burst(),
                retry_after,
            });
        }
        let ttl = self
            .config
            .ttl
            .resolve(req.ttl_seconds)
            .map_err(|e| Refusal::Ttl(e.to_string()))?;
        let leaf = self
            .authority
            .sign(&identity, &req.csr_pem, ttl)
            .map_err(Refusal::Sign)?;
        let not_after = leaf
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        tracing::info!(
            target: AUDIT_TARGET,
            decision = "signed",
            identity = %identity,
            serial = %leaf.serial_hex,
            not_after,
            ttl_seconds = ttl.as_secs(),
            peer = %peer,
            "signed workload certificate"
        );
        Ok(SignResponse {
            cert_chain_pem: leaf.cert_chain_pem,
            trust_bundle_pem: leaf.trust_bundle_pem,
        })
    }
}

/// Why a request was refused; decides the gRPC code and the metric reason.
#[derive(Debug)]
enum Refusal {
    Auth(AuthError),
    RateLimited {
        rate: f64,
        burst: u32,
        retry_after: Duration,
    },
    Ttl(String),
    Sign(SignError),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Auth(AuthError::Missing) => "missing_token",
            Refusal::Auth(AuthError::Unavailable(_)) => "auth_unavailable",
            Refusal::Auth(AuthError::WrongAudience(_)) => "wrong_audience",
            Refusal::Auth(_) => "unauthenticated",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::Ttl(_) => "invalid_ttl",
            Refusal::Sign(SignError::Csr(CsrError::IdentityMismatch { .. })) => "identity_mismatch",
            Refusal::Sign(SignError::Csr(CsrError::CaRequested(_))) => "ca_requested",
            Refusal::Sign(SignError::Csr(CsrError::UnsupportedKey(_))) => "unsupported_key",
            Refusal::Sign(SignError::Csr(CsrError::Invalid(_))) => "invalid_csr",
            Refusal::Sign(SignError::Internal(_)) => "internal",
        }
    }

    fn status(&self) -> Status {
        match self {
            Refusal::Auth(AuthError::Unavailable(m)) => {
                Status::unavailable(format!("cannot check the token now: {m}"))
            }
            Refusal::Auth(e) => Status::unauthenticated(e.to_string()),
            Refusal::RateLimited {
                rate,
                burst,
                retry_after,
            } => {
                // Round up: retrying at the hint must find a token.
                let ms = u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_add(1);
                let mut status = Status::resource_exhausted(format!(
                    "too many signing requests for this identity: over the per-identity \
                     rate limit of {rate}/s (burst {burst}); retry in {ms} ms, with backoff"
                ));
                // gRPC's standard retry hint (honoured by gRPC retry policies).
                status
                    .metadata_mut()
                    .insert(RETRY_PUSHBACK_METADATA, ms.into());
                status
            }
            Refusal::Ttl(m) => Status::invalid_argument(m.clone()),
            Refusal::Sign(SignError::Csr(
                e @ (CsrError::IdentityMismatch { .. } | CsrError::CaRequested(_)),
            )) => Status::permission_denied(e.to_string()),
            Refusal::Sign(SignError::Csr(e)) => Status::invalid_argument(e.to_string()),
            Refusal::Sign(e @ SignError::Internal(_)) => Status::internal(e.to_string()),
        }
    }
}

/// The bearer token of `req`, if well formed.
fn bearer_token<T>(req: &Request<T>) -> Option<String> {
    let v = req
        .metadata()
        .get(mesh_api::svid::AUTHORIZATION_METADATA)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

#[tonic::async_trait]
impl Certificates for CertificateService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let start = Instant::now();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let token = bearer_token(&request);
        let req = request.into_inner();
        let mut identity = None;
        let result = self
            .decide(token.as_deref(), &req, &peer, &mut identity)
            .await;
        let metrics = self.authority.metrics();
        metrics.sign_duration.observe(start.elapsed().as_secs_f64());
        let identity = identity.map(|i| i.to_string()).unwrap_or_default();
        match result {
            Ok(resp) => {
                metrics.signed.inc();
                tracing::debug!(%peer, %identity, "sign ok");
                Ok(Response::new(resp))
            }
            Err(refusal) => {
                metrics.refused(refusal.reason());
                let status = refusal.status();
                tracing::info!(
                    target: AUDIT_TARGET,
                    decision = "refused",
                    identity = %identity,
                    reason = refusal.reason(),
                    code = ?status.code(),
                    message = status.message(),
                    peer = %peer,
                    "refused signing request"
                );
                Err(status)
            }
        }
    }
}

/// The CA's serving certificate, swapped when re-issued.
#[derive(Debug)]
struct ServingCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certified_key(
    authority: &Authority,
    config: &ServerConfig,
) -> anyhow::Result<(Arc<CertifiedKey>, SystemTime)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (dns, ips) = config.serving_names();
    let (chain, key) = authority.issue_serving_cert(&dns, &ips, SERVING_CERT_VALIDITY)?;
    let certs = chain
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    let renew_at = SystemTime::now() + SERVING_CERT_VALIDITY / 2;
    Ok((Arc::new(CertifiedKey::new(certs, signer)), renew_at))
}

/// A running CA server.
pub struct RunningServer {
    /// Where it listens.
    pub local_addr: SocketAddr,
    /// The server task; ends with the server's error, if any.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// Serves the signing API over TLS on `listener`, with a serving
/// certificate issued by `authority` (renewed at half-life and when the
/// intermediate changes). Returns at once; the server runs in a task.
pub async fn serve(
    listener: TcpListener,
    authority: Arc<Authority>,
    authenticator: Arc<dyn TokenAuthenticator>,
    config: ServerConfig,
) -> anyhow::Result<RunningServer> {
    let local_addr = listener.local_addr()?;
    let (ck, mut renew_at) = certified_key(&authority, &config)?;
    let serving = Arc::new(ServingCert(ArcSwap::new(ck)));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(serving.clone());
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    // Renew the serving certificate at half-life or after an intermediate change.
    {
        let authority = authority.clone();
        let config = config.clone();
        let serving = serving.clone();
        let mut generation = authority.generation();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SERVING_CHECK_INTERVAL);
            loop {
                tick.tick().await;
                let g = authority.generation();
                if g == generation && SystemTime::now() < renew_at {
                    continue;
                }
                match certified_key(&authority, &config) {
                    Ok((ck, r)) => {
                        serving.0.store(ck);
                        renew_at = r;
                        generation = g;
                        tracing::info!("renewed the CA's serving certificate");
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing serving certificate failed"),
                }
            }
        });
    }

    // Accept TCP, handshake TLS off the accept loop, hand streams to tonic.
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>,
    >(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let service = CertificateService::new(authority, authenticator, config).into_server();
    let handle = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .timeout(REQUEST_TIMEOUT)
            .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS_PER_CONNECTION)
            .add_service(service)
            .serve_with_incoming(ReceiverStream::new(rx))
            .await?;
        Ok(())
    });
    tracing::info!(%local_addr, "CA serving gRPC over TLS");
    Ok(RunningServer { local_addr, handle })
}

/// Maps a gRPC code to whether the client should retry (for callers' logs).
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

#[cfg(test)]
mod tests;
