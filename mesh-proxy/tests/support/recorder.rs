//! A raw HTTP/1 back end that records every byte it receives, parses the
//! requests itself (no hyper, so that it sees exactly what the proxy sent)
//! and answers each with a canned response.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the back end parsed it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index of the connection it came on (in accept order).
    pub conn: usize,
    pub method: String,
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The request head exactly as received.
    pub head: Vec<u8>,
    /// The body bytes exactly as received (chunk framing included).
    pub raw_body: Vec<u8>,
}

impl Seen {
    /// Every value of header `name` (case-insensitive).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
            .collect()
    }

    /// The single value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }
}

/// Everything the back end saw.
#[derive(Debug, Clone, Default)]
pub struct RecLog {
    /// Raw bytes per connection.
    pub conns: Vec<Vec<u8>>,
    /// Whether each connection has ended (EOF, error, or closed by us).
    pub closed: Vec<bool>,
    pub requests: Vec<Seen>,
    /// Connections whose bytes did not parse as HTTP/1 (answered 400, closed).
    pub garbage: usize,
}

impl RecLog {
    /// All bytes received, connections concatenated in accept order.
    pub fn raw(&self) -> Vec<u8> {
        self.conns.concat()
    }

    /// Whether `needle` occurs in any connection's bytes (case-insensitive).
    pub fn saw(&self, needle: &str) -> bool {
        let n = needle.to_ascii_lowercase();
        self.conns
            .iter()
            .any(|c| String::from_utf8_lossy(c).to_ascii_lowercase().contains(&n))
    }
}

/// Makes the response bytes for a request.
pub type Responder = Arc<dyn Fn(&Seen) -> Vec<u8> + Send + Sync>;

struct RecState {
    log: Mutex<RecLog>,
    changed: tokio::sync::Notify,
}

/// A running recording back end.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    state: Arc<RecState>,
}

impl Recorder {
    pub fn log(&self) -> RecLog {
        self.state.log.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log().requests
    }

    /// Waits (up to `timeout`) until `f` holds for the log; returns whether it did.
    pub async fn wait_until(&self, timeout: Duration, f: impl Fn(&RecLog) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if f(&self.state.log.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return f(&self.state.log.lock().unwrap());
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut RecLog)) {
        f(&mut self.state.log.lock().unwrap());
        self.state.changed.notify_waiters();
    }
}

/// `HTTP/1.1 200 OK` with body `ok`, keep-alive.
pub fn ok_response() -> Responder {
    Arc::new(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
}

/// A recording back end answering every request with `200 ok`.
pub async fn recording_backend() -> Recorder {
    recording_backend_with(ok_response()).await
}

/// A recording back end answering with `respond`. A response containing
/// `connection: close` closes the connection after it is written.
pub async fn recording_backend_with(respond: Responder) -> Recorder {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rec = Recorder {
        addr: l.local_addr().unwrap(),
        state: Arc::new(RecState {
            log: Mutex::new(RecLog::default()),
            changed: tokio::sync::Notify::new(),
        }),
    };
    let r = rec.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let mut idx = 0;
            r.update(|log| {
                idx = log.conns.len();
                log.conns.push(Vec::new());
                log.closed.push(false);
            });
            tokio::spawn(serve_conn(r.clone(), idx, s, respond.clone()));
        }
    });
    rec
}

async fn serve_conn(rec: Recorder, idx: usize, mut s: tokio::net::TcpStream, respond: Responder) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    'conn: loop {
        let n = match s.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        rec.update(|log| log.conns[idx].extend_from_slice(&tmp[..n]));
        buf.extend_from_slice(&tmp[..n]);
        loop {
            match parse_request(&buf, idx) {
                Parsed::Incomplete => break,
                Parsed::Garbage => {
                    rec.update(|log| log.garbage += 1);
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    break 'conn;
                }
                Parsed::Request(seen, used) => {
                    buf.drain(..used);
                    let resp = respond(&seen);
                    let close = String::from_utf8_lossy(&resp)
                        .to_ascii_lowercase()
                        .contains("\r\nconnection: close\r\n")
                        || seen
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    rec.update(|log| log.requests.push(seen));
                    if s.write_all(&resp).await.is_err() || close {
                        break 'conn;
                    }
                }
            }
        }
    }
    let _ = s.shutdown().await;
    rec.update(|log| log.closed[idx] = true);
}

enum Parsed {
    Incomplete,
    Garbage,
    Request(Seen, usize),
}

fn parse_request(buf: &[u8], conn: usize) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return if buf.len() > 1 << 20 {
            Parsed::Garbage
        } else {
            Parsed::Incomplete
        };
    };
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Parsed::Garbage,
    }
    let hs: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    let get = |n: &str| {
        hs.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
            .collect::<Vec<_>>()
    };
    let te = get("transfer-encoding");
    let cl = get("content-length");
    let rest = &buf[end..];
    let (body, used) = if !te.is_empty() {
        if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") || !cl.is_empty() {
            return Parsed::Garbage;
        }
        match dechunk(rest) {
            Chunked::Incomplete => return Parsed::Incomplete,
            Chunked::Bad => return Parsed::Garbage,
            Chunked::Done(body, used) => (body, used),
        }
    } else if !cl.is_empty() {
        let Some(n) = (cl.len() == 1)
            .then(|| cl[0].parse::<usize>().ok())
            .flatten()
        else {
            return Parsed::Garbage;
        };
        if rest.len() < n {
            return Parsed::Incomplete;
        }
        (rest[..n].to_vec(), n)
    } else {
        (Vec::new(), 0)
    };
    Parsed::Request(
        Seen {
            conn,
            method: req.method.unwrap_or("").to_string(),
            path: req.path.unwrap_or("").to_string(),
            version: req.version.unwrap_or(1),
            headers: hs,
            body,
            head: buf[..end].to_vec(),
            raw_body: rest[..used].to_vec(),
        },
        end + used,
    )
}

enum Chunked {
    Incomplete,
    Bad,
    Done(Vec<u8>, usize),
}

/// Strict chunked decoding (CRLF only, plain hex sizes, extensions allowed).
fn dechunk(b: &[u8]) -> Chunked {
    let mut body = Vec::new();
    let mut i = 0;
    loop {
        let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
            return Chunked::Incomplete;
        };
        let line = &b[i..i + eol];
        let size = line.split(|c| *c == b';').next().unwrap_or(&[]);
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
        else {
            return Chunked::Bad;
        };
        i += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
                    return Chunked::Incomplete;
                };
                i += eol + 2;
                if eol == 0 {
                    return Chunked::Done(body, i);
                }
            }
        }
        if b.len() < i + size + 2 {
            return Chunked::Incomplete;
        }
        body.extend_from_slice(&b[i..i + size]);
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Chunked::Bad;
        }
        i += size + 2;
    }
}

/// The heads of the requests a hyper back end got.
pub type SeenParts = Arc<Mutex<Vec<http::request::Parts>>>;

/// An HTTP/1 and HTTP/2 (h2c) back end built on hyper that records the head
/// of every request and answers `200 ok`.
pub async fn hyper_recording_backend() -> (SocketAddr, SeenParts) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let seen: SeenParts = Default::default();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, _) = req.into_parts();
                            seen.lock().unwrap().push(parts);
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Room for everything the proxy lets through (and adds).
                b.http1().max_headers(256);
                let _ = b.serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, seen)
}
