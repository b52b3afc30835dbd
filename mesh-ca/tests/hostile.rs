//! Hostile input against the CA, over real gRPC+TLS on loopback: a flood of
//! CSRs from one identity, oversized and malformed CSRs, CSRs asking for
//! more than the token gives, and bytes that are not TLS. Each is refused
//! (with a status naming the reason, or by closing the connection) while
//! other workloads keep getting certificates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_ca::auth::{AuthFuture, StaticTokens, TokenAuthenticator};
use mesh_ca::client::{self, ClientError};
use mesh_ca::csr::new_workload_csr;
use mesh_ca::server::RETRY_PUSHBACK_METADATA;
use mesh_ca::{Authority, CachedAuthenticator, ServerConfig, WorkloadIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const WEB: &str = "web-token-0123";
const DB: &str = "db-token-45678";
const TOKENS: &str = r#"
"web-token-0123": {namespace: shop, serviceAccount: web}
"db-token-45678": {namespace: data, serviceAccount: pg}
"#;

struct Ca {
    authority: Arc<Authority>,
    endpoint: String,
    addr: std::net::SocketAddr,
    bundle: String,
}

async fn start(auth: Arc<dyn TokenAuthenticator>, config: ServerConfig) -> Ca {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let authority = Arc::new(Authority::generate().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = mesh_ca::serve(listener, authority.clone(), auth, config)
        .await
        .unwrap();
    Ca {
        bundle: authority.trust_bundle_pem().concat(),
        authority,
        endpoint: format!("https://127.0.0.1:{}", server.local_addr.port()),
        addr: server.local_addr,
    }
}

fn static_tokens() -> Arc<dyn TokenAuthenticator> {
    Arc::new(StaticTokens::from_yaml(TOKENS).unwrap())
}

fn status(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a status, got {other}"),
    }
}

fn refusals(authority: &Authority, reason: &str) -> u64 {
    authority
        .metrics()
        .refusals
        .with_label_values(&[reason])
        .get()
}

/// What kube mode's TokenReview does, minus the API server: each review
/// takes 5 ms and is counted.
struct CountedReview {
    tokens: StaticTokens,
    reviews: AtomicUsize,
}

impl TokenAuthenticator for CountedReview {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.tokens.authenticate(token).await
        })
    }
}

/// Lets the test read the review count of the authenticator it gave away.
struct Shared(Arc<CachedAuthenticator<CountedReview>>);

impl TokenAuthenticator for Shared {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        self.0.authenticate(token)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_flood_from_one_identity_is_refused_while_another_identity_is_signed() {
    const FLOOD: usize = 2_000;
    const WORKERS: usize = 256;
    const CONNECTIONS: usize = 8;
    let auth = Arc::new(CachedAuthenticator::new(CountedReview {
        tokens: StaticTokens::from_yaml(TOKENS).unwrap(),
        reviews: AtomicUsize::new(0),
    }));
    // The default limits: 10 signings per second per identity, burst 20.
    let config = ServerConfig::default();
    let (rate, burst) = (config.rate_per_sec, config.burst);
    let ca = start(Arc::new(Shared(auth.clone())), config).await;
    let (_, csr) = new_workload_csr(None).unwrap();
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(client::connect(&ca.endpoint, &ca.bundle).await.unwrap());
    }

    // The flood: WORKERS requests in flight at all times over 8 connections,
    // until FLOOD were sent and the other identity has its certificate.
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (channel, csr) = (channels[w % CONNECTIONS].clone(), csr.clone());
        let (sent, stop) = (sent.clone(), stop.clone());
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            while sent.fetch_add(1, Ordering::SeqCst) < FLOOD || !stop.load(Ordering::SeqCst) {
                let r = client::sign_on(channel.clone(), WEB, &csr, Duration::ZERO).await;
                outcomes.push(r.map(|_| ()).map_err(status));
            }
            outcomes
        });
    }
    // Once the flood is being refused, another workload asks.
    let deadline = Instant::now() + Duration::from_secs(30);
    while refusals(&ca.authority, "rate_limited") < 100 {
        assert!(Instant::now() < deadline, "the flood never got refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    let (_, db_csr) = new_workload_csr(None).unwrap();
    let db = client::sign(&ca.endpoint, &ca.bundle, DB, &db_csr, Duration::ZERO)
        .await
        .expect("the other identity is signed during the flood");
    let db_took = asked.elapsed();
    assert_eq!(
        client::uri_sans(&db.cert_chain_pem[0]).unwrap(),
        [WorkloadIdentity::new("cluster.local", "data", "pg")
            .unwrap()
            .uri()]
    );
    // The workers only stop now: the signing above happened during the flood.
    stop.store(true, Ordering::SeqCst);
    // Every flood request is answered (no unbounded queue): collect them all.
    let mut outcomes = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = workers.join_next().await {
            outcomes.extend(r.unwrap());
        }
    })
    .await;
    assert!(all.is_ok(), "flood requests still pending after 60 s");
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "flood: {} requests in {elapsed:.2} s; the other identity was signed in {db_took:?}",
        outcomes.len()
    );
    assert!(outcomes.len() >= FLOOD);
    assert!(
        db_took < Duration::from_secs(10),
        "the other identity waited {db_took:?}"
    );
    let signed = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused: Vec<&tonic::Status> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    // At most the burst plus the rate over the flood's duration were signed.
    let allowed = f64::from(burst) + rate * elapsed + 1.0;
    assert!(
        signed as f64 <= allowed && signed >= burst as usize,
        "{signed} signed in {elapsed:.2} s; the limit allows {allowed:.0}"
    );
    assert_eq!(signed + refused.len(), outcomes.len());
    for s in &refused {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    }
    let first = refused[0];
    assert!(
        first
            .message()
            .contains("per-identity rate limit of 10/s (burst 20)"),
        "{}",
        first.message()
    );
    assert!(first.message().contains("retry in"), "{}", first.message());
    let pushback: u64 = first
        .metadata()
        .get(RETRY_PUSHBACK_METADATA)
        .expect("a retry pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1_000).contains(&pushback), "{pushback} ms");
    assert_eq!(
        ca.authority.metrics().signed.get() as usize,
        signed + 1,
        "the flood's signings and the other identity's"
    );
    // The flood cost the "API server" one review per token and cache
    // lifetime (10 s), not one per request.
    let reviews = auth_reviews(&auth);
    assert!(
        reviews <= 2 + (elapsed / 10.0).ceil() as usize,
        "{reviews} token reviews"
    );
    assert_eq!(
        refusals(&ca.authority, "rate_limited") as usize,
        refused.len()
    );
}

#[tokio::test]
async fn a_flood_costs_one_token_review_per_token() {
    // The same over gRPC, counting reviews: 500 concurrent requests with one
    // token, 500 with a forged one.
    let auth = Arc::new(CachedAuthenticator::new(CountedReview {
        tokens: StaticTokens::from_yaml(TOKENS).unwrap(),
        reviews: AtomicUsize::new(0),
    }));
    // No refill during the test: exactly the burst is signed.
    let config = ServerConfig {
        rate_per_sec: 0.001,
        ..Default::default()
    };
    let started = Instant::now();
    let ca = start(Arc::new(Shared(auth.clone())), config).await;
    let (_, csr) = new_workload_csr(None).unwrap();
    let channel = client::connect(&ca.endpoint, &ca.bundle).await.unwrap();
    // One answer first, so that the client has the server's HTTP/2 settings:
    // it then queues streams beyond the 64 the CA allows on a connection
    // instead of opening them (the CA refuses those: REFUSED_STREAM).
    let e = client::sign_on(channel.clone(), "forged-token-000", &csr, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(status(e).code(), Code::Unauthenticated);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1_000 {
        let (channel, csr) = (channel.clone(), csr.clone());
        let token = if i % 2 == 0 { WEB } else { "forged-token-000" };
        tasks.spawn(async move { client::sign_on(channel, token, &csr, Duration::ZERO).await });
    }
    let mut codes = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let code = r
            .unwrap()
            .map(|_| Code::Ok)
            .unwrap_or_else(|e| status(e).code());
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    assert_eq!(codes.get("Unauthenticated"), Some(&500), "{codes:?}");
    assert_eq!(codes.get("Ok"), Some(&20), "the burst: {codes:?}");
    assert_eq!(codes.get("ResourceExhausted"), Some(&480), "{codes:?}");
    let reviews = auth_reviews(&auth);
    let lifetimes = (started.elapsed().as_secs_f64() / 10.0).ceil() as usize;
    assert!(
        (2..=2 * lifetimes).contains(&reviews),
        "{reviews} reviews for 2 tokens"
    );
}

fn auth_reviews(auth: &CachedAuthenticator<CountedReview>) -> usize {
    auth.inner().reviews.load(Ordering::SeqCst)
}

/// A CSR for `key` with `f` applied to its parameters.
fn csr_with(
    alg: &'static rcgen::SignatureAlgorithm,
    f: impl FnOnce(&mut rcgen::CertificateParams),
) -> String {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::default();
    f(&mut params);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().unwrap())
}

fn pem(label: &str, der: &[u8]) -> String {
    mesh_ca::authority::pem_encode(label, der)
}

#[tokio::test]
async fn oversized_and_malformed_csrs_are_refused_naming_the_reason() {
    // A high burst: this test is about the checks, not the rate limit.
    let ca = start(
        static_tokens(),
        ServerConfig {
            burst: 1_000,
            ..Default::default()
        },
    )
    .await;
    let web = WorkloadIdentity::new("cluster.local", "shop", "web").unwrap();
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    let (_, good) = new_workload_csr(Some(&web)).unwrap();
    let good_der = x509_parser::pem::parse_x509_pem(good.as_bytes())
        .unwrap()
        .1
        .contents;
    let mut bad_sig = good_der.clone();
    let n = bad_sig.len();
    bad_sig[n - 3] ^= 0x55;
    let mut cert_params = rcgen::CertificateParams::default();
    cert_params.subject_alt_names = vec![uri(&web.uri())];
    let a_cert = cert_params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    // (name, token, CSR PEM, code, words the message must contain, metric reason)
    let cases: Vec<(&str, &str, String, Code, &str, &str)> = vec![
        (
            "1 MiB CSR",
            WEB,
            "A".repeat(1 << 20),
            Code::OutOfRange,
            "the limit is: 65536 bytes",
            "",
        ),
        (
            "60 KiB of text (under the size cap)",
            WEB,
            "B".repeat(60 << 10),
            Code::InvalidArgument,
            "invalid CSR: no PEM block",
            "invalid_csr",
        ),
        (
            "PEM of garbage DER",
            WEB,
            pem("CERTIFICATE REQUEST", b"\x30\x82\xff\xff garbage"),
            Code::InvalidArgument,
            "not a PKCS#10 request",
            "invalid_csr",
        ),
        (
            "truncated DER",
            WEB,
            pem("CERTIFICATE REQUEST", &good_der[..good_der.len() / 2]),
            Code::InvalidArgument,
            "not a PKCS#10 request",
            "invalid_csr",
        ),
        (
            "wrong signature",
            WEB,
            pem("CERTIFICATE REQUEST", &bad_sig),
            Code::InvalidArgument,
            "signature does not verify",
            "invalid_csr",
        ),
        (
            "a certificate, not a CSR",
            WEB,
            a_cert,
            Code::InvalidArgument,
            "want \"CERTIFICATE REQUEST\"",
            "invalid_csr",
        ),
        (
            "two CSRs",
            WEB,
            format!("{good}{good}"),
            Code::InvalidArgument,
            "more than one PEM block",
            "invalid_csr",
        ),
        (
            "another ServiceAccount's SPIFFE ID",
            WEB,
            new_workload_csr(Some(
                &WorkloadIdentity::new("cluster.local", "shop", "admin").unwrap(),
            ))
            .unwrap()
            .1,
            Code::PermissionDenied,
            "spiffe://cluster.local/ns/shop/sa/admin",
            "identity_mismatch",
        ),
        (
            "the right SPIFFE ID with another token (data/pg)",
            DB,
            good.clone(),
            Code::PermissionDenied,
            "the caller's identity is spiffe://cluster.local/ns/data/sa/pg",
            "identity_mismatch",
        ),
        (
            "an extra URI SAN",
            WEB,
            csr_with(p256, |p| {
                p.subject_alt_names = vec![uri(&web.uri()), uri("spiffe://cluster.local/ns/x/sa/y")]
            }),
            Code::PermissionDenied,
            "2 subject alternative names",
            "identity_mismatch",
        ),
        (
            "a DNS SAN",
            WEB,
            csr_with(p256, |p| {
                p.subject_alt_names = vec![rcgen::SanType::DnsName(
                    "kubernetes.default.svc".try_into().unwrap(),
                )]
            }),
            Code::PermissionDenied,
            "kubernetes.default.svc",
            "identity_mismatch",
        ),
        (
            "an IP SAN",
            WEB,
            csr_with(p256, |p| {
                p.subject_alt_names = vec![rcgen::SanType::IpAddress([10, 0, 0, 1].into())]
            }),
            Code::PermissionDenied,
            "SAN",
            "identity_mismatch",
        ),
        (
            "CA:true",
            WEB,
            csr_with(p256, |p| {
                p.subject_alt_names = vec![uri(&web.uri())];
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }),
            Code::PermissionDenied,
            "basicConstraints CA:true, but a workload certificate is never a CA",
            "ca_requested",
        ),
        (
            "keyCertSign",
            WEB,
            csr_with(p256, |p| {
                p.key_usages = vec![
                    rcgen::KeyUsagePurpose::DigitalSignature,
                    rcgen::KeyUsagePurpose::KeyCertSign,
                ]
            }),
            Code::PermissionDenied,
            "never a CA",
            "ca_requested",
        ),
        (
            "a P-384 key",
            WEB,
            csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, |_| {}),
            Code::InvalidArgument,
            "only ECDSA P-256 keys are accepted",
            "unsupported_key",
        ),
    ];
    for (name, token, csr, code, words, reason) in &cases {
        let before = (!reason.is_empty()).then(|| refusals(&ca.authority, reason));
        let e = client::sign(&ca.endpoint, &ca.bundle, token, csr, Duration::ZERO)
            .await
            .map(|_| ())
            .map_err(status)
            .expect_err(name);
        assert_eq!(e.code(), *code, "{name}: {}", e.message());
        assert!(
            e.message().contains(words),
            "{name}: {:?} does not say {words:?}",
            e.message()
        );
        if let Some(before) = before {
            assert_eq!(refusals(&ca.authority, reason), before + 1, "{name}");
        }
    }
    assert_eq!(ca.authority.metrics().signed.get(), 0, "a refusal signed");
    // The same connection-less client still gets its certificate.
    client::sign(&ca.endpoint, &ca.bundle, WEB, &good, Duration::ZERO)
        .await
        .unwrap();
}

/// Reads until the server closes the connection (EOF or reset); fails if it
/// is still open after 5 s.
async fn closed_by_server(mut s: tokio::net::TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // e.g. a TLS alert
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: the connection is still open");
}

/// The first bytes a real client sends: its ClientHello record.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("mesh-ca").unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

#[tokio::test]
async fn garbage_on_the_tls_port_closes_the_connection_and_the_ca_keeps_serving() {
    let ca = start(static_tokens(), ServerConfig::default()).await;
    let hello = client_hello();
    let mut random = vec![0u8; 4096];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "plain HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "plain HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            false,
        ),
        ("4 KiB of noise", random, false),
        (
            "a handshake record longer than TLS allows",
            vec![0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3],
            false,
        ),
        (
            "half a ClientHello, then the client stops sending",
            hello[..hello.len() / 2].to_vec(),
            true,
        ),
    ];
    for (what, bytes, half_close) in cases {
        let mut s = tokio::net::TcpStream::connect(ca.addr).await.unwrap();
        let _ = s.write_all(&bytes).await;
        if half_close {
            s.shutdown().await.unwrap();
        }
        closed_by_server(s, what).await;
    }
    // Garbage inside a good TLS connection: not HTTP/2, closed too.
    let tls = tokio_rustls::TlsConnector::from(tls_client(&ca));
    let tcp = tokio::net::TcpStream::connect(ca.addr).await.unwrap();
    let mut inside = tls
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    inside
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), inside.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "HTTP/1 inside TLS: the connection is still open");

    // 100 connections that never finish their ClientHello hold no one up.
    let mut stuck = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(ca.addr).await.unwrap();
        s.write_all(&hello[..hello.len() / 2]).await.unwrap();
        stuck.push(s);
    }
    let (_, csr) = new_workload_csr(None).unwrap();
    let t = Instant::now();
    client::sign(&ca.endpoint, &ca.bundle, WEB, &csr, Duration::ZERO)
        .await
        .expect("still serving");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(stuck);
    assert_eq!(ca.authority.metrics().signed.get(), 1);
}

fn tls_client(ca: &Ca) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.bundle.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}
