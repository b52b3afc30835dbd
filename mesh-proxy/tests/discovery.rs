//! The proxy's side of the config stream against a stand-in controller
//! (a real tonic server over mTLS): full and incremental updates, ACK and
//! NACK with the reason, last good config kept, resume after reconnect.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use mesh_proto::config::v1::{
    config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer},
    discovery_request::Kind,
    DiscoveryRequest, DiscoveryResponse, ProxyConfig,
};
use mesh_proxy::testca::TestCa;
use mesh_proxy::tls::TlsMaterial;
use support::*;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

const CONTROLLER_ID: &str = "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller";

/// A controller that plays a script: each stream gets the responses the
/// test sends, and every request from the proxy is reported back.
struct Scripted {
    streams: mpsc::UnboundedSender<(
        mpsc::UnboundedReceiver<DiscoveryRequest>,
        mpsc::UnboundedSender<DiscoveryResponse>,
    )>,
}

type RespStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for Scripted {
    type StreamStream = RespStream;

    async fn stream(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (resp_tx, mut resp_rx) = mpsc::unbounded_channel::<DiscoveryResponse>();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let _ = self.streams.send((req_rx, resp_tx));
        let out = futures::stream::poll_fn(move |cx| resp_rx.poll_recv(cx).map(|o| o.map(Ok)));
        Ok(Response::new(Box::pin(out)))
    }
}

async fn start_controller(
    ca: &TestCa,
    addr: SocketAddr,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<(
        mpsc::UnboundedReceiver<DiscoveryRequest>,
        mpsc::UnboundedSender<DiscoveryResponse>,
    )>,
) {
    let (chain, key) = ca.issue(CONTROLLER_ID);
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.root_pem()));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut listener = None;
    for _ in 0..50 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            listener = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = listener.expect("controller port");
    let incoming =
        futures::stream::unfold(
            l,
            |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) },
        );
    let handle = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(ConfigDiscoveryServer::new(Scripted { streams: tx }))
            .serve_with_incoming(incoming)
            .await;
    });
    (handle, rx)
}

fn web_config(version: &str, backend: SocketAddr, extra_route: &str) -> ProxyConfig {
    let yaml = format!(
        "version: \"{version}\"\nservices:\n  - name: web\n    ports: [{{port: 80, protocol: HTTP1}}]\n    endpoints: [{{address: \"127.0.0.1\", ports: {{\"80\": {}}}}}]\n{extra_route}",
        backend.port()
    );
    mesh_proxy::model::MeshState::parse(&yaml).unwrap()
}

async fn next_request(rx: &mut mpsc::UnboundedReceiver<DiscoveryRequest>) -> Kind {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a request from the proxy")
        .expect("stream open")
        .kind
        .expect("a kind")
}

async fn body(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_config_is_applied_acked_nacked_and_resumed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new("mesh");
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ctrl_addr = probe.local_addr().unwrap();
    drop(probe);
    let (server, mut streams) = start_controller(&ca, ctrl_addr).await;
    let a = http_backend("a").await;
    let b = http_backend("b").await;

    let dir = tempfile::tempdir().unwrap();
    let argv = [
        "mesh-proxy",
        "run",
        "--no-transparent",
        "--controller-addr",
        &ctrl_addr.to_string(),
        "--admin-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0=web:80",
        "--namespace",
        "shop",
        "--service-account",
        "frontend",
        "--pod",
        "frontend-1",
    ];
    let mesh_proxy::cli::Command::Run(args) =
        <mesh_proxy::cli::Cli as clap::Parser>::parse_from(argv).command
    else {
        unreachable!()
    };
    let running = mesh_proxy::start(*args).await.unwrap();
    let (chain, key) = ca.issue("spiffe://cluster.local/ns/shop/sa/frontend");
    running
        .shared
        .tls
        .set(TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap())
        .unwrap();
    let listener = running.explicit_addrs[0];
    drop(dir);

    // Hello, then a full snapshot: applied and ACKed.
    let (mut reqs, resps) = tokio::time::timeout(Duration::from_secs(10), streams.recv())
        .await
        .unwrap()
        .unwrap();
    match next_request(&mut reqs).await {
        Kind::Hello(h) => {
            assert_eq!(
                (
                    h.namespace.as_str(),
                    h.service_account.as_str(),
                    h.pod.as_str()
                ),
                ("shop", "frontend", "frontend-1")
            );
            assert_eq!(h.resume_version, "");
        }
        other => panic!("expected hello, got {other:?}"),
    }
    resps
        .send(DiscoveryResponse {
            version: "1".into(),
            nonce: "n1".into(),
            full: true,
            config: Some(web_config("1", a, "")),
            ..Default::default()
        })
        .unwrap();
    match next_request(&mut reqs).await {
        Kind::Ack(ack) => assert_eq!((ack.version.as_str(), ack.nonce.as_str()), ("1", "n1")),
        other => panic!("expected ACK, got {other:?}"),
    }
    assert!(body(listener).await.ends_with("a"));

    // A broken update (bad regex): NACK with the reason, old config kept.
    let bad = web_config("2", b, "    httpRoutes: [{matches: [{uri: {regex: \"([\"}}], destinations: [{destination: {service: web}}]}]\n");
    resps
        .send(DiscoveryResponse {
            version: "2".into(),
            nonce: "n2".into(),
            full: false,
            config: Some(bad),
            ..Default::default()
        })
        .unwrap();
    match next_request(&mut reqs).await {
        Kind::Nack(n) => {
            assert_eq!(n.version, "2");
            assert!(n.reason.contains("regex"), "{}", n.reason);
            assert!(
                n.reason
                    .contains("services[0].httpRoutes[0].matches[0].uri"),
                "{}",
                n.reason
            );
        }
        other => panic!("expected NACK, got {other:?}"),
    }
    assert!(
        body(listener).await.ends_with("a"),
        "last good config still serves"
    );

    // An incremental update moving the endpoint: applied.
    resps
        .send(DiscoveryResponse {
            version: "3".into(),
            nonce: "n3".into(),
            full: false,
            config: Some(web_config("3", b, "")),
            ..Default::default()
        })
        .unwrap();
    assert!(matches!(next_request(&mut reqs).await, Kind::Ack(a) if a.version == "3"));
    assert!(body(listener).await.ends_with("b"));

    // The controller goes away: traffic continues on the last config.
    server.abort();
    let _ = server.await;
    drop(resps);
    for _ in 0..5 {
        assert!(body(listener).await.ends_with("b"));
    }
    // It comes back: the proxy reconnects and says what it has.
    let (_server, mut streams) = start_controller(&ca, ctrl_addr).await;
    let (mut reqs, _resps) = tokio::time::timeout(Duration::from_secs(20), streams.recv())
        .await
        .unwrap()
        .unwrap();
    match next_request(&mut reqs).await {
        Kind::Hello(h) => assert_eq!(h.resume_version, "3"),
        other => panic!("expected hello, got {other:?}"),
    }
    running.shutdown().await;
}
