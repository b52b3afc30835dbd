//! A test client of the config stream (feature `testing`): what a proxy
//! does on the wire, without the proxy. For tests and benchmarks only: it
//! accepts any server certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::config::v1::{
    config_discovery_client::ConfigDiscoveryClient, discovery_request, Ack, DiscoveryRequest,
    DiscoveryResponse, Hello,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;

use crate::identity::Material;

/// A workload certificate made for a test.
pub struct Issued {
    pub material: Material,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The key, PKCS#8 PEM.
    pub key_pem: String,
    pub trust_bundle_pem: String,
}

/// Makes a P-256 key and a CSR for `ns/sa` (trust domain `cluster.local`)
/// and has `sign` sign it (a mesh-ca authority in tests): `sign` gets the
/// identity and the CSR and returns the chain and the trust bundle (PEM).
pub fn issue(
    ns: &str,
    sa: &str,
    sign: impl FnOnce(&mesh_api::WorkloadIdentity, &str) -> (Vec<String>, Vec<String>),
) -> Issued {
    let id = mesh_api::WorkloadIdentity::new("cluster.local", ns, sa).expect("a valid identity");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let mut params = rcgen::CertificateParams::default();
    let uri = id.uri().as_str().try_into().expect("a URI SAN");
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .expect("a CSR");
    let (chain, bundle) = sign(&id, &csr);
    let chain_pem = chain.join("\n");
    let chain_der: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("a PEM chain");
    let not_after = x509_parser::parse_x509_certificate(chain_der[0].as_ref())
        .ok()
        .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
        .expect("a leaf with a validity");
    Issued {
        material: Material {
            chain: chain_der,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            trust_bundle_pem: bundle.clone(),
            not_after,
        },
        chain_pem,
        key_pem: key.serialize_pem(),
        trust_bundle_pem: bundle.join("\n"),
    }
}

/// Writes `dir/file` atomically (write, then rename), so that a directory
/// poller never reads half a file.
pub fn write_atomic(dir: &std::path::Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("writing a temporary file");
    std::fs::rename(&tmp, dir.join(file)).expect("renaming into place");
}

/// Accepts any server certificate: these tests are about the server's
/// side (the proxy's verification of the controller is tested with the
/// real proxy).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client TLS config presenting `me` (and accepting any server).
pub fn client_config(me: &Material) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(me.chain.clone(), me.key.clone_key())
        .expect("a usable client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A client TLS config presenting no certificate (and accepting any server).
pub fn client_config_without_certificate() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A gRPC channel to the controller at `addr` over mTLS with `config`.
pub async fn channel_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(
                    rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                    tcp,
                )
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(connector)
        .await
}

/// [`channel_with`] presenting `me`.
pub async fn channel(addr: SocketAddr, me: &Material) -> tonic::transport::Channel {
    channel_with(addr, client_config(me))
        .await
        .expect("connecting to the controller")
}

/// One proxy's stream.
pub struct Stream {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: tonic::Streaming<DiscoveryResponse>,
}

impl Stream {
    /// Opens a stream as `ns/sa` (pod `<sa>-1`), resuming from `resume`.
    pub async fn open(
        addr: SocketAddr,
        me: &Material,
        ns: &str,
        sa: &str,
        resume: &str,
    ) -> Result<Stream, tonic::Status> {
        let hello = Hello {
            pod: format!("{sa}-1"),
            namespace: ns.into(),
            service_account: sa.into(),
            resume_version: resume.into(),
            ..Default::default()
        };
        Self::open_with(addr, me, hello).await
    }

    /// Opens a stream with `hello`.
    pub async fn open_with(
        addr: SocketAddr,
        me: &Material,
        hello: Hello,
    ) -> Result<Stream, tonic::Status> {
        Self::open_on(channel(addr, me).await, hello).await
    }

    /// Opens a stream with `hello` on `channel` (one connection can carry
    /// several streams).
    pub async fn open_on(
        channel: tonic::transport::Channel,
        hello: Hello,
    ) -> Result<Stream, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(DiscoveryRequest {
            kind: Some(discovery_request::Kind::Hello(hello)),
        })
        .await
        .expect("the request channel is open");
        let rx = ConfigDiscoveryClient::new(channel)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Stream { tx, rx })
    }

    pub async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")?
            .ok_or_else(|| tonic::Status::cancelled("stream ended"))
    }

    pub async fn ack(&self, r: &DiscoveryResponse) {
        self.tx
            .send(DiscoveryRequest {
                kind: Some(discovery_request::Kind::Ack(Ack {
                    version: r.version.clone(),
                    nonce: r.nonce.clone(),
                })),
            })
            .await
            .unwrap();
    }
}
