//! Request smuggling at both HTTP edges of the proxy (the app's outbound
//! listener and the inbound listener in front of the app), against a raw
//! back end that records every byte: each ambiguous request is refused with
//! 400 (or normalized, where said), and nothing ambiguous, and no second
//! request hidden in the first, ever reaches the back end.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::h2raw::{self, Outcome, RawH2};
use support::recorder::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: a loaded 2-core CI machine.
const WAIT: Duration = Duration::from_secs(10);

/// Appended to every hostile request: if the proxy framed the first request
/// differently from the back end, this is what would arrive as a second one.
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";

struct Edges {
    proxy: TestProxy,
    backend: Recorder,
}

impl Edges {
    /// (name, address) of each HTTP edge.
    fn sides(&self) -> [(&'static str, SocketAddr); 2] {
        [
            ("outbound", self.proxy.listener(0)),
            ("inbound", self.proxy.running.inbound_addr.unwrap()),
        ]
    }
}

/// One proxy with an outbound listener for `web` and an inbound listener
/// (PERMISSIVE, plaintext) for the local app; both lead to `backend`.
async fn edges_to(backend: Recorder, extra_yaml: &str) -> Edges {
    let yaml = format!(
        r#"
settings:
  detectTimeoutMs: 300
services:
  - name: web
    ports: [{{port: 80, protocol: HTTP1}}]
    endpoints: [{{address: "127.0.0.1", ports: {{"80": {}}}}}]
{extra_yaml}"#,
        backend.addr.port()
    );
    let proxy = start_proxy(
        &yaml,
        &["web:80"],
        &[
            "--inbound-addr",
            "127.0.0.1:0",
            "--inbound-forward",
            &backend.addr.to_string(),
        ],
    )
    .await;
    Edges { proxy, backend }
}

async fn edges() -> Edges {
    edges_to(recording_backend().await, "").await
}

/// Every smuggling variant of the hardening issue, as the client sends it
/// (the smuggled follow-up is appended by the test).
fn refused_variants() -> Vec<(&'static str, Vec<u8>)> {
    let post = |headers: &str, body: &str| {
        format!("POST /a HTTP/1.1\r\nHost: web\r\n{headers}\r\n{body}").into_bytes()
    };
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    vec![
        (
            "CL+TE",
            post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "TE+CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "duplicate equal CL",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "different CLs",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ),
        ("CL list 5, 6", post("Content-Length: 5, 6\r\n", "hello!")),
        ("CL list 5, 5", post("Content-Length: 5, 5\r\n", "hello")),
        ("CL +5", post("Content-Length: +5\r\n", "hello")),
        ("CL -1", post("Content-Length: -1\r\n", "")),
        ("CL 0x5", post("Content-Length: 0x5\r\n", "hello")),
        (
            "CL overflow",
            post("Content-Length: 99999999999999999999999\r\n", "hello"),
        ),
        (
            "CL with space inside",
            post("Content-Length: 1 0\r\n", "hello"),
        ),
        ("chunk size +5", chunked("+5\r\nhello\r\n0\r\n\r\n")),
        ("chunk size -5", chunked("-5\r\nhello\r\n0\r\n\r\n")),
        ("chunk size 0x5", chunked("0x5\r\nhello\r\n0\r\n\r\n")),
        (
            "chunk size overflow",
            chunked("ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
        ),
        ("chunk size with space", chunked("5 \r\nhello\r\n0\r\n\r\n")),
        (
            "chunk extension with bare LF",
            chunked("5;ext\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk extension with bare CR",
            chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk extension with NUL",
            chunked("5;a\0b\r\nhello\r\n0\r\n\r\n"),
        ),
        ("chunk data too long", chunked("5\r\nhelloXX\r\n0\r\n\r\n")),
        (
            "obs-fold in a header",
            post("X-A: a\r\n b\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "obs-fold in Transfer-Encoding",
            post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "obs-fold in trailers",
            chunked("5\r\nhello\r\n0\r\nx-t: a\r\n b\r\n\r\n"),
        ),
        (
            "bare LF line endings",
            b"POST /a HTTP/1.1\nHost: web\nContent-Length: 5\n\nhello".to_vec(),
        ),
        (
            "one bare LF in the head",
            b"POST /a HTTP/1.1\r\nHost: web\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "bare CR ending the request line",
            b"POST /a HTTP/1.1\rHost: web\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        ),
        (
            "TE identity, chunked",
            post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"),
        ),
        ("TE gzip", post("Transfer-Encoding: gzip\r\n", "hello")),
        (
            "TE gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE chunked twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "TE in HTTP/1.0",
            b"POST /a HTTP/1.0\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "space before colon",
            post("Content-Length : 5\r\n", "hello"),
        ),
        (
            "tab before colon",
            post("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"),
        ),
        ("NUL in a header value", post("X-A: a\0b\r\n", "")),
        ("CR in a header value", post("X-A: a\rb\r\n", "")),
        ("DEL in a header value", post("X-A: a\x7fb\r\n", "")),
        ("space in a header name", post("X A: b\r\n", "")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_smuggling_variant_gets_400_and_nothing_reaches_the_backend() {
    let e = edges().await;
    let cases = refused_variants();
    for (side, addr) in e.sides() {
        for (what, req) in &cases {
            let mut bytes = req.clone();
            bytes.extend_from_slice(SMUGGLED);
            let answer = raw_exchange(addr, &bytes, WAIT).await;
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{side} {what}: {answer:?}"
            );
            assert!(answer.contains("connection: close"), "{side} {what}");
            assert!(answer.contains("\r\n\r\nmesh-proxy: "), "{side} {what}");
            assert_eq!(count_responses(&answer), 1, "{side} {what}: {answer:?}");
        }
    }
    // Nothing at all reached the back end: not the request, not the
    // smuggled one, not a byte.
    let log = e.backend.log();
    assert!(log.requests.is_empty(), "{:?}", log.requests);
    assert!(
        log.raw().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&log.raw())
    );
    // Each refusal is counted, per side.
    let text = scrape(e.proxy.running.metrics_addr).await;
    for side in ["outbound", "inbound"] {
        let series = format!(
            "mesh_refused_requests_total{{code=\"400\",direction=\"{side}\"}} {}",
            cases.len()
        );
        assert!(text.contains(&series), "{series} in\n{text}");
    }
    // The control: a plain request on each side does reach it.
    for (side, addr) in e.sides() {
        let answer = raw_exchange(
            addr,
            b"GET /fine HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
            WAIT,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{side}: {answer}");
    }
    let paths: Vec<String> = e
        .backend
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, ["/fine", "/fine"]);
    e.proxy.running.shutdown().await;
}

/// A body-level violation found after the head was already forwarded (the
/// proxy streams): the client gets 400, the upstream request is cut off
/// mid-body on a connection that is closed, never reused, and the smuggled
/// request never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_chunk_after_the_head_was_forwarded_aborts_the_upstream_connection() {
    let e = edges().await;
    let bad_bodies: &[&[u8]] = &[
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        b"5;ext\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
    ];
    let mut expected_heads = 0;
    for (side, addr) in e.sides() {
        for body in bad_bodies {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(
                b"POST /chunked HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
            expected_heads += 1;
            // The head travels on before the body is read.
            assert!(
                e.backend
                    .wait_until(WAIT, |l| {
                        l.conns
                            .iter()
                            .filter(|c| c.starts_with(b"POST /chunked HTTP/1.1\r\n"))
                            .count()
                            == expected_heads
                    })
                    .await,
                "{side}: the head was forwarded"
            );
            let mut rest = body.to_vec();
            rest.extend_from_slice(SMUGGLED);
            s.write_all(&rest).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
            let answer = String::from_utf8_lossy(&out);
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{side} {:?}: {answer}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(count_responses(&answer), 1, "{answer}");
        }
    }
    // Every upstream connection that carried a cut-off request is closed,
    // and none of them ever completed a request.
    assert!(
        e.backend
            .wait_until(WAIT, |l| l.closed.iter().all(|c| *c))
            .await,
        "upstream connections closed: {:?}",
        e.backend.log().closed
    );
    let log = e.backend.log();
    assert_eq!(
        log.conns.len(),
        expected_heads,
        "one connection per cut-off request"
    );
    assert!(log.requests.is_empty(), "{:?}", log.requests);
    assert!(!log.saw("smuggled"));
    for c in &log.conns {
        // Only the head, and at most the well-formed part of the body.
        assert!(
            !String::from_utf8_lossy(c).contains("hello"),
            "{:?}",
            String::from_utf8_lossy(c)
        );
    }
    e.proxy.running.shutdown().await;
}

/// What the proxy accepts it normalizes: the back end gets one clean
/// request framed by the proxy, never the client's framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_framing_is_normalized_before_the_backend() {
    let e = edges().await;
    for (side, addr) in e.sides() {
        let before = e.backend.requests().len();
        // Chunked with extensions, odd-case hex and a trailer, pipelined
        // with a second request: the back end gets the body de-extended,
        // and the second request separately.
        let answer = raw_exchange(
            addr,
            b"POST /chunked HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: Chunked\r\n\r\n\
              3;name=\"v\"\r\nhel\r\n2;x\r\nlo\r\n0\r\nx-trailer: t\r\n\r\n\
              POST /second HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            WAIT,
        )
        .await;
        assert_eq!(count_responses(&answer), 2, "{side}: {answer}");
        assert!(
            e.backend
                .wait_until(WAIT, |l| l.requests.len() == before + 2)
                .await,
            "{side}"
        );
        let reqs = e.backend.requests();
        let (first, second) = (&reqs[before], &reqs[before + 1]);
        assert_eq!(first.path, "/chunked");
        assert_eq!(first.body, b"hello");
        let raw = String::from_utf8_lossy(&first.raw_body);
        assert!(
            !raw.contains("name=") && !raw.contains(";x"),
            "{side}: extensions dropped: {raw:?}"
        );
        assert!(
            first.header("content-length").is_none() || first.all("transfer-encoding").is_empty()
        );
        assert_eq!(second.path, "/second");
        assert_eq!(second.body, b"abc");
        assert_eq!(second.all("content-length"), ["3"]);
        assert!(second.all("transfer-encoding").is_empty());
        // HTTP/1.0 with a Content-Length is sent on as HTTP/1.1 with it.
        let before = e.backend.requests().len();
        let answer = raw_exchange(
            addr,
            b"POST /ten HTTP/1.0\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi",
            WAIT,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.0 200"), "{side}: {answer}");
        let reqs = e.backend.requests();
        assert_eq!(reqs.len(), before + 1);
        assert_eq!(reqs[before].body, b"hi");
        assert_eq!(reqs[before].all("content-length"), ["2"]);
    }
    e.proxy.running.shutdown().await;
}

/// A client that stalls in the middle of its request line (past the
/// protocol-detection timeout) is still parsed as HTTP/1 and checked, not
/// waved through as opaque TCP with its framing unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_split_across_the_detection_timeout_is_still_checked() {
    let e = edges().await;
    for (side, addr) in e.sides() {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /a HT").await.unwrap();
        // Detection gives up after 300 ms; stall well past it.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let mut rest =
            b"TP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec();
        rest.extend_from_slice(SMUGGLED);
        s.write_all(&rest).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 400"), "{side}: {answer}");
    }
    let log = e.backend.log();
    assert!(
        log.raw().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&log.raw())
    );
    e.proxy.running.shutdown().await;
}

/// A back end that answers an upgrade request with `200 OK` (not `101`)
/// and keeps talking: the proxy never tunnels, the client's next bytes are
/// parsed (and checked) as a new request by the proxy, and the back end's
/// extra bytes never reach the client as a response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_to_an_upgrade_does_not_open_a_tunnel() {
    let backend = recording_backend_with(std::sync::Arc::new(|seen: &Seen| {
        if seen.path == "/ws" {
            // The response, then bytes that would be a second response if
            // anyone mistook the connection for a tunnel.
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\ninjected"
                .to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
        }
    }))
    .await;
    let e = edges_to(backend, "").await;
    for (side, addr) in e.sides() {
        let before = e.backend.requests().len();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let first = read_response(&mut s).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{side}: {first}");
        assert!(first.ends_with("\r\n\r\nok"), "{side}: {first}");
        // What would be tunnel data is, to the proxy, the next request; an
        // ambiguous one is refused like any other.
        let mut next = b"POST /next HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
        next.extend_from_slice(SMUGGLED);
        s.write_all(&next).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        let rest = String::from_utf8_lossy(&out);
        assert!(rest.starts_with("HTTP/1.1 400"), "{side}: {rest}");
        assert!(!rest.contains("injected"), "{side}: {rest}");
        let reqs = e.backend.requests();
        assert_eq!(reqs.len(), before + 1, "{side}: {reqs:?}");
        // The back end got a plain GET: the upgrade is hop-by-hop and the
        // proxy does not offer one.
        assert!(
            reqs[before].header("upgrade").is_none(),
            "{:?}",
            reqs[before]
        );
        assert!(
            reqs[before].header("connection").is_none(),
            "{:?}",
            reqs[before]
        );
        // A clean request on the same edge still works.
        let answer = raw_exchange(
            addr,
            b"GET /after HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
            WAIT,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with("ok") && !answer.contains("injected"),
            "{answer}"
        );
    }
    assert!(!e.backend.log().saw("smuggled"));
    assert!(!e.backend.log().saw("/next"));
    e.proxy.running.shutdown().await;
}

/// A back end that answers `101 Switching Protocols` although the proxy
/// never asked for an upgrade: the client gets 502, not a tunnel; and a
/// `CONNECT` is refused with 405 before anything is sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_101_or_a_connect_never_opens_a_tunnel() {
    let backend = recording_backend_with(std::sync::Arc::new(|_: &Seen| {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec()
    }))
    .await;
    let e = edges_to(backend, "").await;
    // Were the connection a tunnel, these bytes would reach the back end
    // raw; to the proxy they are an ambiguous request, refused.
    let mut follow_up = b"POST /next HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
    follow_up.extend_from_slice(SMUGGLED);
    for (side, addr) in e.sides() {
        for (req, status) in [
            (
                &b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"[..],
                "HTTP/1.1 502",
            ),
            (
                b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
                "HTTP/1.1 405",
            ),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let head = read_response(&mut s).await;
            assert!(head.starts_with(status), "{side}: {head}");
            s.write_all(&follow_up).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
            let rest = String::from_utf8_lossy(&out);
            assert!(rest.starts_with("HTTP/1.1 400"), "{side}: {rest}");
        }
    }
    let log = e.backend.log();
    // Only the two upgrade requests went upstream, as plain GETs.
    let paths: Vec<&str> = log.requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/ws", "/ws"]);
    assert!(log.requests.iter().all(|r| r.header("upgrade").is_none()));
    assert!(!log.saw("smuggled") && !log.saw("/next") && !log.saw("CONNECT"));
    e.proxy.running.shutdown().await;
}

/// Reads one response (head and a Content-Length body) from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
            }
        }
        match tokio::time::timeout(WAIT, s.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            _ => return String::from_utf8_lossy(&buf).to_string(),
        }
    }
}

const SERVER_ID: &str = "spiffe://cluster.local/ns/server/sa/web";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/frontend";

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn field(n: &str, v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (n.as_bytes().to_vec(), v.to_vec())
}

/// A GET for `/h2` with `extra` fields after the pseudo-headers.
fn h2_get(extra: Fields) -> Fields {
    let mut f = h2raw::get("/h2", "web");
    f.extend(extra);
    f
}

fn fields(list: &[(&str, &[u8])]) -> Fields {
    list.iter().map(|(n, v)| field(n, v)).collect()
}

/// HTTP/2 header blocks that must never turn into an HTTP/1 request:
/// connection-specific fields (forbidden in HTTP/2), CR/LF/NUL that would
/// inject lines into an HTTP/1 head, and pseudo-header misuse.
fn forbidden_h2_requests() -> Vec<(&'static str, Fields)> {
    let get4 = |m: &[u8], p: &[u8], a: &[u8]| {
        fields(&[
            (":method", m),
            (":scheme", b"http"),
            (":path", p),
            (":authority", a),
        ])
    };
    vec![
        ("connection", h2_get(vec![field("connection", b"close")])),
        (
            "keep-alive",
            h2_get(vec![field("keep-alive", b"timeout=5")]),
        ),
        (
            "proxy-connection",
            h2_get(vec![field("proxy-connection", b"keep-alive")]),
        ),
        (
            "transfer-encoding",
            h2_get(vec![field("transfer-encoding", b"chunked")]),
        ),
        ("upgrade", h2_get(vec![field("upgrade", b"websocket")])),
        ("te: gzip", h2_get(vec![field("te", b"gzip")])),
        (
            "te: trailers, gzip",
            h2_get(vec![field("te", b"trailers, gzip")]),
        ),
        (
            "CRLF in a value",
            h2_get(vec![field("x-a", b"a\r\nTransfer-Encoding: chunked")]),
        ),
        (
            "LF in a value",
            h2_get(vec![field("x-a", b"a\nx-injected: 1")]),
        ),
        (
            "CR in a value",
            h2_get(vec![field("x-a", b"a\rx-injected: 1")]),
        ),
        ("NUL in a value", h2_get(vec![field("x-a", b"a\0b")])),
        (
            "CRLF in a name",
            h2_get(vec![field("x-a\r\nx-injected", b"1")]),
        ),
        ("colon in a name", h2_get(vec![field("x-a:b", b"1")])),
        ("space in a name", h2_get(vec![field("x a", b"1")])),
        ("upper-case name", h2_get(vec![field("X-Injected", b"1")])),
        ("empty name", h2_get(vec![field("", b"1")])),
        (
            "CRLF in :path",
            get4(
                b"GET",
                b"/h2 HTTP/1.1\r\nHost: web\r\n\r\nGET /smuggled",
                b"web",
            ),
        ),
        ("space in :path", get4(b"GET", b"/h2 HTTP/1.1", b"web")),
        (
            "CRLF in :method",
            get4(b"GET /smuggled HTTP/1.1\r\nx:", b"/h2", b"web"),
        ),
        (
            "CRLF in :authority",
            get4(b"GET", b"/h2", b"web\r\nx-injected: 1"),
        ),
        (
            "no :path",
            fields(&[
                (":method", b"GET"),
                (":scheme", b"http"),
                (":authority", b"web"),
            ]),
        ),
        ("empty :path", get4(b"GET", b"", b"web")),
        (
            "two :path",
            fields(&[
                (":method", b"GET"),
                (":scheme", b"http"),
                (":path", b"/h2"),
                (":path", b"/smuggled"),
                (":authority", b"web"),
            ]),
        ),
        (
            "pseudo-header after a regular one",
            fields(&[
                (":method", b"GET"),
                (":scheme", b"http"),
                ("x-a", b"1"),
                (":path", b"/h2"),
                (":authority", b"web"),
            ]),
        ),
        (
            "unknown pseudo-header",
            h2_get(vec![field(":smuggle", b"GET /smuggled")]),
        ),
        (
            "response pseudo-header",
            h2_get(vec![field(":status", b"200")]),
        ),
        (
            "content-length +5",
            h2_get(vec![field("content-length", b"+5")]),
        ),
        (
            "two content-lengths",
            h2_get(vec![
                field("content-length", b"0"),
                field("content-length", b"5"),
            ]),
        ),
    ]
}

fn refused_at_h2(out: &Outcome) -> bool {
    matches!(
        out,
        Outcome::Reset(h2raw::PROTOCOL_ERROR)
            | Outcome::GoAway(h2raw::PROTOCOL_ERROR)
            | Outcome::GoAway(0x9) // COMPRESSION_ERROR
            | Outcome::Response(Some(400), _)
    )
}

/// HTTP/2 to HTTP/1: a mesh peer's HTTP/2 request marked
/// `x-mesh-orig-proto: HTTP/1.1` is given to the app as HTTP/1.1 (the one
/// place the proxy downgrades). Forbidden fields and line injection are
/// refused at the HTTP/2 layer, on that edge and on the app's outbound
/// HTTP/2 edge; neither back end ever sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_with_forbidden_or_injected_fields_never_reach_a_backend() {
    use mesh_proxy::testca::TestCa;
    use mesh_proxy::tls::{MeshTls, TlsMaterial, ALPN_H2};
    let app = recording_backend().await;
    let (h2_addr, h2_seen) = hyper_recording_backend().await;
    let yaml = format!(
        "services:\n  - name: web\n    ports: [{{port: 80}}]\n    endpoints: [{{address: \"127.0.0.1\", ports: {{\"80\": {}}}}}]\n",
        h2_addr.port()
    );
    let proxy = start_proxy(
        &yaml,
        &["web:80"],
        &[
            "--inbound-addr",
            "127.0.0.1:0",
            "--inbound-forward",
            &app.addr.to_string(),
        ],
    )
    .await;
    let ca = TestCa::new("smuggling");
    give_certificate(&proxy, &ca, SERVER_ID);
    let peer = MeshTls::default();
    let (chain, key) = ca.issue(CLIENT_ID);
    peer.set(TlsMaterial::from_pem(&chain, &key, &ca.root_pem()).unwrap())
        .unwrap();
    let inbound = proxy.running.inbound_addr.unwrap();
    let mesh_peer = || async {
        let tcp = TcpStream::connect(inbound).await.unwrap();
        let tls = mesh_proxy::pool::connect_mesh_tls(&peer, inbound, SERVER_ID, ALPN_H2, tcp)
            .await
            .unwrap();
        RawH2::handshake(tls).await
    };
    let orig_h1 = field("x-mesh-orig-proto", b"HTTP/1.1");

    for (what, f) in forbidden_h2_requests() {
        // The app's outbound edge (HTTP/2 on to the service).
        let mut c = RawH2::connect(proxy.listener(0)).await;
        c.send(&h2raw::headers_frame(1, &f, true)).await.unwrap();
        let out = c.outcome(1, WAIT).await;
        assert!(refused_at_h2(&out), "outbound {what}: {out:?}");
        // A mesh peer, downgraded to HTTP/1.1 for the app.
        let mut f = f;
        f.push(orig_h1.clone());
        let mut c = mesh_peer().await;
        c.send(&h2raw::headers_frame(1, &f, true)).await.unwrap();
        let out = c.outcome(1, WAIT).await;
        assert!(refused_at_h2(&out), "inbound {what}: {out:?}");
    }
    assert!(
        h2_seen.lock().unwrap().is_empty(),
        "{:?}",
        h2_seen.lock().unwrap()
    );
    let log = app.log();
    assert!(
        log.raw().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&log.raw())
    );

    // The control: the same hand-made frames, well formed, get through; the
    // app gets HTTP/1.1 with only the fields that were sent (and the
    // proxy's own).
    let ok = h2_get(vec![
        field("x-a", b"1"),
        field("te", b"trailers"),
        orig_h1.clone(),
    ]);
    let mut c = mesh_peer().await;
    c.send(&h2raw::headers_frame(1, &ok, true)).await.unwrap();
    assert_eq!(
        c.outcome(1, WAIT).await,
        Outcome::Response(Some(200), b"ok".to_vec())
    );
    let mut c = RawH2::connect(proxy.listener(0)).await;
    c.send(&h2raw::headers_frame(1, &ok, true)).await.unwrap();
    assert_eq!(
        c.outcome(1, WAIT).await,
        Outcome::Response(Some(200), b"ok".to_vec())
    );
    assert_eq!(h2_seen.lock().unwrap().len(), 1);
    let reqs = app.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.version),
        ("GET", "/h2", 1)
    );
    assert_eq!(r.all("x-a"), ["1"]);
    assert_eq!(r.all("host"), ["web"]);
    assert!(r.header("x-mesh-orig-proto").is_none(), "{r:?}");
    assert!(r.all("x-forwarded-client-cert")[0].ends_with(&format!("URI={CLIENT_ID}")));
    proxy.running.shutdown().await;
}
