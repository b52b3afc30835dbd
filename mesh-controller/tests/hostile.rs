//! Hostile input on the config stream, over real mTLS gRPC on loopback:
//! oversized and malformed messages, bytes that are not HTTP/2, a proxy
//! claiming another identity or namespace, and floods of streams. Each is
//! refused (a status naming the reason, or a closed connection), and after
//! each a well-behaved proxy on another connection still gets its full
//! config promptly, and one connected all along still gets updates.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{issue, names, service, start, start_with, Fixture};
use mesh_controller::identity::Material;
use mesh_controller::limits::{StreamLimits, MAX_CONCURRENT_STREAMS_PER_CONNECTION};
use mesh_controller::server::MAX_REQUEST_BYTES;
use mesh_controller::testing::{self, write_atomic as write, Stream};
use mesh_proto::config::v1::{discovery_request, Ack, DiscoveryRequest, Hello};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const SHOP_VIEW: [&str; 2] = ["cart.shop.svc.cluster.local", "web.shop.svc.cluster.local"];

fn hello(ns: &str, sa: &str, pod: &str) -> Hello {
    Hello {
        pod: pod.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        ..Default::default()
    }
}

/// The status a stream ended with: at open, or as its first message.
async fn refusal(open: Result<Stream, tonic::Status>) -> tonic::Status {
    match open {
        Err(e) => e,
        Ok(mut s) => s.next().await.expect_err("the stream is refused"),
    }
}

/// A proxy connected before the attack, kept to the end.
struct Bystander {
    stream: Stream,
    probes: usize,
}

impl Bystander {
    async fn connect(f: &Fixture) -> Bystander {
        let me = issue(&f.ca, "shop", "web");
        let mut stream = Stream::open_with(
            f.controller.grpc_addr,
            &me,
            hello("shop", "web", "bystander"),
        )
        .await
        .unwrap();
        let first = stream.next().await.unwrap();
        assert_eq!(names(&first), SHOP_VIEW);
        stream.ack(&first).await;
        Bystander { stream, probes: 0 }
    }

    /// A new Service in its namespace reaches it.
    async fn still_updated(&mut self, f: &Fixture) {
        self.probes += 1;
        let name = format!("probe{}", self.probes);
        write(&f.dir, &format!("{name}.yaml"), &service("shop", &name));
        let want = format!("{name}.shop.svc.cluster.local");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .stream
                .next()
                .await
                .expect("the bystander's stream is up");
            self.stream.ack(&r).await;
            if names(&r).contains(&want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{want} never reached the bystander"
            );
        }
    }
}

/// A new proxy on its own connection gets its full view within 5 s.
async fn a_new_proxy_is_served(f: &Fixture, pod: &str) {
    let me = issue(&f.ca, "shop", "cart");
    let t = Instant::now();
    let mut s = Stream::open_with(f.controller.grpc_addr, &me, hello("shop", "cart", pod))
        .await
        .expect("a well-behaved proxy is served");
    let first = s.next().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(first.full);
    let got = names(&first);
    for want in SHOP_VIEW {
        assert!(got.iter().any(|n| n == want), "{want} missing from {got:?}");
    }
    assert!(
        got.iter().all(|n| n.contains(".shop.")),
        "outside its namespace: {got:?}"
    );
    let config = first.config.as_ref().unwrap();
    assert!(!config.trust_bundle_pem.is_empty());
    assert!(config.inbound.is_some());
    s.ack(&first).await;
}

/// After an attack: the bystander is updated and a new proxy is served.
async fn others_unharmed(f: &Fixture, by: &mut Bystander, what: &str) {
    by.still_updated(f).await;
    a_new_proxy_is_served(f, &format!("after-{what}")).await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_naming_the_limit() {
    let f = start().await;
    let mut by = Bystander::connect(&f).await;
    let me = issue(&f.ca, "shop", "web");
    let addr = f.controller.grpc_addr;
    let limit = MAX_REQUEST_BYTES.to_string();

    // An 8 MiB hello (labels): refused before it is buffered.
    let mut big = hello("shop", "web", "big");
    big.labels.insert("padding".into(), "x".repeat(8 << 20));
    let e = refusal(Stream::open_with(addr, &me, big).await).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains(&limit), "{}", e.message());
    others_unharmed(&f, &mut by, "big-hello").await;

    // An 8 MiB pod name: the same.
    let e = refusal(Stream::open_with(addr, &me, hello("shop", "web", &"p".repeat(8 << 20))).await)
        .await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A pod name that fits the message but no Kubernetes name.
    let e =
        refusal(Stream::open_with(addr, &me, hello("shop", "web", &"p".repeat(300))).await).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 253"), "{}", e.message());

    // An 8 MiB ACK on an established stream ends that stream only.
    let mut s = Stream::open_with(addr, &me, hello("shop", "web", "acker"))
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    s.tx.send(DiscoveryRequest {
        kind: Some(discovery_request::Kind::Ack(Ack {
            version: "v".repeat(8 << 20),
            nonce: first.nonce.clone(),
        })),
    })
    .await
    .unwrap();
    let e = s.next().await.expect_err("the stream is ended");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains(&limit), "{}", e.message());
    let refused = f
        .controller
        .metrics
        .refused
        .with_label_values(&["message_too_large"])
        .get();
    assert_eq!(refused, 3);
    others_unharmed(&f, &mut by, "big-ack").await;
    f.controller.shutdown().await;
}

/// Sends one raw gRPC request on the stream's path with `body` as its
/// bytes (and `headers`), returns the gRPC status it ends with.
async fn raw_request(
    channel: &tonic::transport::Channel,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> tonic::Status {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://controller{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        channel.clone().oneshot(req.body(body).unwrap()),
    )
    .await
    .expect("an answer within 5 s")
    .expect("an HTTP/2 response");
    assert_eq!(resp.status(), 200);
    if let Some(s) = tonic::Status::from_header_map(resp.headers()) {
        return s;
    }
    let collected = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the response ends within 5 s")
        .expect("a response body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    tonic::Status::from_header_map(&trailers).expect("a grpc-status")
}

/// (what, path, headers, body, expected code, words the message must contain)
type RawCase = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    Code,
    &'static str,
);

/// A gRPC frame: flag, big-endian length, bytes.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test]
async fn malformed_frames_get_an_error_status_and_garbage_closes_the_connection() {
    let f = start().await;
    let mut by = Bystander::connect(&f).await;
    let me = issue(&f.ca, "shop", "web");
    let addr = f.controller.grpc_addr;
    let path = "/mesh.config.v1.ConfigDiscovery/Stream";
    let ack_first = DiscoveryRequest {
        kind: Some(discovery_request::Kind::Ack(Ack::default())),
    }
    .encode_to_vec();
    let hello_bytes = DiscoveryRequest {
        kind: Some(discovery_request::Kind::Hello(hello("shop", "web", "raw"))),
    }
    .encode_to_vec();
    let mut announces_8mib = vec![0];
    announces_8mib.extend_from_slice(&(8u32 << 20).to_be_bytes());
    let cases: Vec<RawCase> = vec![
        (
            "garbage protobuf",
            path,
            vec![],
            frame(0, &[0xff; 16]),
            Code::InvalidArgument,
            "malformed request message",
        ),
        (
            "a truncated length prefix",
            path,
            vec![],
            vec![0, 0, 0],
            Code::Internal,
            "Unexpected EOF",
        ),
        (
            "a frame shorter than its length",
            path,
            vec![],
            frame(0, &[0x0a; 100])[..40].to_vec(),
            Code::Internal,
            "Unexpected EOF",
        ),
        (
            "the compressed flag, no compression negotiated",
            path,
            vec![],
            frame(1, &hello_bytes),
            Code::Internal,
            "compressed-flag",
        ),
        (
            "the compressed flag with grpc-encoding: gzip (not supported)",
            path,
            vec![("grpc-encoding", "gzip")],
            frame(1, &hello_bytes),
            Code::Internal,
            "compressed-flag",
        ),
        (
            "an unknown flag",
            path,
            vec![],
            frame(7, &hello_bytes),
            Code::Internal,
            "compression flag: 7",
        ),
        (
            "a frame announcing 8 MiB",
            path,
            vec![],
            announces_8mib,
            Code::ResourceExhausted,
            "over the limit of 1048576 bytes",
        ),
        (
            "an empty message",
            path,
            vec![],
            frame(0, &[]),
            Code::InvalidArgument,
            "the first message must be a hello",
        ),
        (
            "an ACK before the hello",
            path,
            vec![],
            frame(0, &ack_first),
            Code::InvalidArgument,
            "the first message must be a hello",
        ),
        (
            "no message at all",
            path,
            vec![],
            vec![],
            Code::Cancelled,
            "before the hello",
        ),
        (
            "another method",
            "/mesh.config.v1.ConfigDiscovery/Other",
            vec![],
            frame(0, &hello_bytes),
            Code::Unimplemented,
            "",
        ),
    ];
    let channel = testing::channel(addr, &me).await;
    for (what, path, headers, body, code, words) in cases {
        let s = raw_request(&channel, path, &headers, body).await;
        assert_eq!(s.code(), code, "{what}: {s:?}");
        assert!(
            s.message().contains(words),
            "{what}: {:?} does not say {words:?}",
            s.message()
        );
    }
    // The same connection still works for a good hello.
    let mut s = Stream::open_on(channel.clone(), hello("shop", "web", "same-connection"))
        .await
        .unwrap();
    assert_eq!(names(&s.next().await.unwrap()), SHOP_VIEW);
    others_unharmed(&f, &mut by, "malformed").await;

    // Bytes that are not TLS, or TLS without a client certificate: closed.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (what, bytes) in [
        (
            "plain HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "plain HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        ("4 KiB of noise", noise),
        (
            "a TLS record longer than TLS allows",
            vec![0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3],
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(&bytes).await;
        closed_by_server(tcp, what).await;
    }
    // Good mTLS, then bytes that are not HTTP/2: the connection is closed.
    for (what, bytes) in [
        (
            "HTTP/1.1 inside mTLS",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "the HTTP/2 preface, then a garbage frame",
            // A DATA frame on stream 0 where the SETTINGS frame must be.
            [
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
                &[0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            ]
            .concat(),
        ),
    ] {
        let mut tls = mtls(addr, testing::client_config(&me)).await;
        tls.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "{what}: the connection is still open");
    }
    others_unharmed(&f, &mut by, "garbage").await;
    f.controller.shutdown().await;
}

async fn mtls(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .unwrap()
}

/// Reads until the server closes the connection; fails after 5 s.
async fn closed_by_server(mut s: tokio::net::TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: the connection is still open");
}

/// A client certificate the mesh's CA did not issue as a workload
/// certificate: `material` with `chain_pem`/`key_pem`.
fn material(chain_pem: &[String], key_pem: &str) -> Material {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = chain_pem
        .iter()
        .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
        .collect::<Result<_, _>>()
        .unwrap();
    Material {
        chain,
        key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        trust_bundle_pem: vec![],
        not_after: std::time::SystemTime::now() + Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn a_proxy_claiming_another_identity_is_refused_and_sees_only_its_namespace() {
    let f = start().await;
    let mut by = Bystander::connect(&f).await;
    let addr = f.controller.grpc_addr;
    let me = issue(&f.ca, "shop", "web");
    let my_id = "spiffe://cluster.local/ns/shop/sa/web";

    // The hello names another ServiceAccount, namespace, or both.
    for (ns, sa) in [
        ("shop", "admin"),
        ("other", "web"),
        ("mesh-system", "mesh-controller"),
    ] {
        let e = refusal(Stream::open_with(addr, &me, hello(ns, sa, "liar")).await).await;
        assert_eq!(e.code(), Code::PermissionDenied, "{ns}/{sa}: {e:?}");
        assert!(e.message().contains(my_id), "{}", e.message());
        assert!(
            e.message().contains(&format!("/ns/{ns}/sa/{sa}")),
            "{}",
            e.message()
        );
    }
    // A hello that names no valid identity at all.
    let e = refusal(Stream::open_with(addr, &me, hello("Not_A_Namespace", "web", "x")).await).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let refused = f
        .controller
        .metrics
        .refused
        .with_label_values(&["identity_mismatch"])
        .get();
    assert_eq!(refused, 3);

    // Certificates that are not this mesh's workload certificates: the TLS
    // handshake fails, no config is sent.
    let stranger = mesh_ca::authority::Authority::generate().unwrap();
    let (serving_chain, serving_key) =
        f.ca.issue_serving_cert(&["web.shop".to_string()], &[], Duration::from_secs(3600))
            .unwrap();
    for (what, config) in [
        (
            "another CA's certificate for shop/web",
            testing::client_config(&issue(&stranger, "shop", "web")),
        ),
        (
            "a mesh certificate that is not for clients",
            testing::client_config(&material(&serving_chain, &serving_key)),
        ),
        (
            "no client certificate",
            testing::client_config_without_certificate(),
        ),
    ] {
        // The client may finish its side of the TLS 1.3 handshake before
        // the controller refuses the certificate: then the stream fails.
        if let Ok(ch) = testing::channel_with(addr, config).await {
            let e = refusal(Stream::open_on(ch, hello("shop", "web", "forged")).await).await;
            assert!(
                matches!(
                    e.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                ),
                "{what}: {e:?}"
            );
        }
    }
    assert_eq!(
        f.controller.metrics.connected.get(),
        1,
        "only the bystander"
    );

    // An accepted proxy sees its namespace only, and a second hello on its
    // stream (claiming `other`) changes nothing.
    let mut s = Stream::open_with(addr, &me, hello("shop", "web", "web-2"))
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    assert_eq!(names(&first), SHOP_VIEW, "not other/private");
    s.ack(&first).await;
    s.tx.send(DiscoveryRequest {
        kind: Some(discovery_request::Kind::Hello(hello(
            "other", "web", "web-2",
        ))),
    })
    .await
    .unwrap();
    write(&f.dir, "secret.yaml", &service("other", "secret"));
    write(&f.dir, "mine.yaml", &service("shop", "mine"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.next().await.unwrap();
        s.ack(&r).await;
        let got = names(&r);
        assert!(
            got.iter().all(|n| n.contains(".shop.")),
            "outside its namespace: {got:?}"
        );
        if got.contains(&"mine.shop.svc.cluster.local".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "the update never came");
    }
    // What the controller would send it, per its own view: shop only.
    let snap = f.controller.synced().await;
    assert!(snap.services.contains_key("secret.other.svc.cluster.local"));
    others_unharmed(&f, &mut by, "claims").await;
    f.controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_on_one_connection_are_capped() {
    let f = start().await;
    let mut by = Bystander::connect(&f).await;
    let me = issue(&f.ca, "shop", "web");
    let channel = testing::channel(f.controller.grpc_addr, &me).await;
    // One stream first, so that the client knows the server's HTTP/2
    // settings and queues what is over the limit instead of sending it.
    // It stays open: one of the connection's streams.
    let mut warm = Stream::open_on(channel.clone(), hello("shop", "web", "warm"))
        .await
        .unwrap();
    warm.next().await.unwrap();
    let cap = MAX_CONCURRENT_STREAMS_PER_CONNECTION as i64;
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..1_000 {
        let ch = channel.clone();
        flood.spawn(async move {
            let mut s = Stream::open_on(ch, hello("shop", "web", &format!("flood-{i}"))).await?;
            let first = s.next().await?;
            s.ack(&first).await;
            // Hold the stream open until the test ends.
            std::future::pending::<()>().await;
            Ok::<_, tonic::Status>(())
        });
    }
    let connected = || f.controller.metrics.connected.get();
    let deadline = Instant::now() + Duration::from_secs(20);
    while connected() < cap + 1 {
        assert!(
            Instant::now() < deadline,
            "only {} streams opened",
            connected()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The rest wait on the client; the controller never holds more.
    for _ in 0..20 {
        assert!(
            connected() <= cap + 1,
            "{} streams from one connection",
            connected() - 1
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    others_unharmed(&f, &mut by, "one-connection-flood").await;
    // The client goes away: every slot is freed at once, without waiting
    // for a config change.
    flood.abort_all();
    while flood.join_next().await.is_some() {}
    drop((warm, channel));
    let deadline = Instant::now() + Duration::from_secs(5);
    while connected() != 1 {
        assert!(Instant::now() < deadline, "{} streams left", connected());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_pod_and_per_identity_are_capped_and_freed() {
    let limits = StreamLimits {
        per_pod: 4,
        per_identity: 20,
    };
    let f = start_with(limits).await;
    let mut by = Bystander::connect(&f).await;
    let addr = f.controller.grpc_addr;
    let cart = issue(&f.ca, "shop", "cart");
    let cart_id = "spiffe://cluster.local/ns/shop/sa/cart";
    let open = |pod: String| {
        let cart = &cart;
        async move {
            match Stream::open_with(addr, cart, hello("shop", "cart", &pod)).await {
                Err(e) => Err(e),
                Ok(mut s) => match s.next().await {
                    Ok(r) => {
                        s.ack(&r).await;
                        Ok(s)
                    }
                    Err(e) => Err(e),
                },
            }
        }
    };
    // Six streams claiming one pod: four served, two refused.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..6 {
        match open("cart-dup".into()).await {
            Ok(s) => held.push(s),
            Err(e) => refused.push(e),
        }
    }
    assert_eq!((held.len(), refused.len()), (4, 2));
    for e in &refused {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("the limit is 4 per pod"),
            "{}",
            e.message()
        );
    }
    // Thirty more pods of the same identity: sixteen fit under 20.
    let mut over = Vec::new();
    for i in 0..30 {
        match open(format!("cart-{i}")).await {
            Ok(s) => held.push(s),
            Err(e) => over.push(e),
        }
    }
    assert_eq!((held.len(), over.len()), (20, 14));
    for e in &over {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains(cart_id) && e.message().contains("the limit is 20 per identity"),
            "{}",
            e.message()
        );
    }
    let too_many = f
        .controller
        .metrics
        .refused
        .with_label_values(&["too_many_streams"])
        .get();
    assert_eq!(too_many, 16);
    // Other identities are not affected.
    by.still_updated(&f).await;
    let me = issue(&f.ca, "shop", "web");
    let mut web = Stream::open_with(addr, &me, hello("shop", "web", "web-2"))
        .await
        .unwrap();
    assert_eq!(names(&web.next().await.unwrap()).len(), SHOP_VIEW.len() + 1);

    // Closing streams frees their slots promptly, with no config change.
    held.drain(..4); // the four streams of cart-dup
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match open("cart-dup".into()).await {
            Ok(s) => {
                held.push(s);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                assert!(Instant::now() < deadline, "slots not freed: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // A reconnect flood of one pod: 50 connect/drop cycles leave nothing behind.
    drop(held);
    for i in 0..50 {
        let mut tries = 0;
        loop {
            match open("churn".into()).await {
                Ok(s) => {
                    drop(s);
                    break;
                }
                Err(e) => {
                    // Over the pod limit until the dropped ones are noticed.
                    assert_eq!(e.code(), Code::ResourceExhausted, "cycle {i}: {e:?}");
                    tries += 1;
                    assert!(tries < 250, "cycle {i}: never served again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.controller.metrics.connected.get() != 2 {
        assert!(
            Instant::now() < deadline,
            "{} streams open, want the bystander and web-2",
            f.controller.metrics.connected.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a_new_proxy_is_served(&f, "after-churn").await;
    drop(web);
    f.controller.shutdown().await;
}
