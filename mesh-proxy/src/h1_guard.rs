//! The proxy's HTTP/1 edge: a strict scanner in front of hyper that refuses
//! request smuggling before a single byte reaches the HTTP stack.
//!
//! hyper follows RFC 9112's lenient options (a request with both
//! `Content-Length` and `Transfer-Encoding` is read as chunked, identical
//! duplicate `Content-Length`s are merged). A proxy sits between two parsers
//! that may disagree, so it must not accept what anyone could frame
//! differently: such requests get `400` and the connection is closed.
//!
//! The scanner validates every request head and follows body framing
//! (`Content-Length` or chunked) so that pipelined requests are checked too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest request head accepted; larger heads get `431`. Generous for
/// cookies and JWTs, small enough that 10,000 idle clients stay cheap.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one request; more gets `431`.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) before it is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: String,
}

impl Reject {
    fn bad(reason: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: reason.into(),
        }
    }

    fn too_large(reason: impl Into<String>) -> Self {
        Self {
            status: 431,
            reason: reason.into(),
        }
    }

    /// The full HTTP/1.1 response that tells the client why.
    pub fn response(&self) -> Vec<u8> {
        let phrase = match self.status {
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let body = format!("mesh-proxy: {}\n", self.reason);
        format!(
            "HTTP/1.1 {} {phrase}\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
}

/// Incremental validator of an HTTP/1 request byte stream.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Bytes of an incomplete head, chunk line or trailer line.
    partial: BytesMut,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Self {
            state: State::Head,
            partial: BytesMut::new(),
        }
    }

    /// Feeds bytes from the client; appends the bytes that are proven well
    /// framed to `out`. After an error the scanner must not be used again.
    pub fn push(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), Reject> {
        while !input.is_empty() {
            match self.state {
                State::Head | State::ChunkSize | State::Trailers | State::ChunkDataEnd => {
                    // Line-oriented states: collect until the terminator.
                    let (needle, limit): (&[u8], usize) = match self.state {
                        State::Head => (b"\r\n\r\n", MAX_HEAD_BYTES),
                        State::Trailers => (b"\r\n", MAX_HEAD_BYTES),
                        State::ChunkDataEnd => (b"\r\n", 2),
                        _ => (b"\r\n", MAX_CHUNK_LINE),
                    };
                    let before = self.partial.len();
                    // Search from a little before the old end, in case the
                    // terminator straddles two reads.
                    let from = before.saturating_sub(needle.len() - 1);
                    self.partial.extend_from_slice(input);
                    // Only the first `limit` bytes of a unit count, so that
                    // the verdict does not depend on how the bytes were
                    // split into reads: a terminator past the limit is too
                    // late, and a bare LF past it comes after "too long".
                    let found = find(&self.partial[from..], needle)
                        .map(|i| from + i + needle.len())
                        .filter(|end| *end <= limit);
                    match found {
                        None => {
                            // A lone LF can never complete a CRLF line: refuse
                            // now rather than wait for the size limit.
                            let seen = self.partial.len().min(limit);
                            if bare_lf_from(&self.partial[..seen], before) {
                                return Err(Reject::bad("bare LF in request framing"));
                            }
                            if self.partial.len() >= limit {
                                return Err(match self.state {
                                    State::Head => Reject::too_large(format!(
                                        "request head larger than {MAX_HEAD_BYTES} bytes"
                                    )),
                                    State::ChunkDataEnd => {
                                        Reject::bad("chunk data not followed by CRLF")
                                    }
                                    _ => Reject::bad("chunk size or trailer line too long"),
                                });
                            }
                            return Ok(());
                        }
                        Some(end) => {
                            let consumed_from_input = end - before;
                            let unit = self.partial.split_to(end);
                            self.partial.clear();
                            input = &input[consumed_from_input..];
                            self.finish_unit(&unit)?;
                            out.extend_from_slice(&unit);
                        }
                    }
                }
                State::Fixed(n) | State::ChunkData(n) => {
                    let take = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = n - take as u64;
                    self.state = match (&self.state, left) {
                        (State::Fixed(_), 0) => State::Head,
                        (State::Fixed(_), l) => State::Fixed(l),
                        (_, 0) => State::ChunkDataEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
            }
        }
        Ok(())
    }

    /// Validates a complete unit (head, chunk line, CRLF or trailer line)
    /// and moves to the next state.
    fn finish_unit(&mut self, unit: &[u8]) -> Result<(), Reject> {
        match self.state {
            State::Head => {
                self.state = check_head(unit)?;
            }
            State::ChunkSize => {
                if has_bare_lf(unit) {
                    return Err(Reject::bad("bare LF in chunk size line"));
                }
                let line = &unit[..unit.len() - 2];
                if has_ctl(line) {
                    return Err(Reject::bad("control character in chunk size line"));
                }
                let size = line.split(|b| *b == b';').next().unwrap_or(&[]);
                let size = parse_hex(size)?;
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                };
            }
            State::ChunkDataEnd => {
                if unit != b"\r\n" {
                    return Err(Reject::bad("chunk data not followed by CRLF"));
                }
                self.state = State::ChunkSize;
            }
            State::Trailers => {
                if has_bare_lf(unit) {
                    return Err(Reject::bad("bare LF in trailers"));
                }
                if has_ctl(&unit[..unit.len() - 2]) {
                    return Err(Reject::bad("control character in trailers"));
                }
                if unit == b"\r\n" {
                    self.state = State::Head;
                } else if unit[0] == b' ' || unit[0] == b'\t' {
                    return Err(Reject::bad("obsolete line folding in trailers"));
                }
            }
            State::Fixed(_) | State::ChunkData(_) => unreachable!("not line-oriented"),
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `b` holds a control character other than HTAB (a bare CR, NUL,
/// DEL...): nothing a chunk line or trailer may carry, and what parsers
/// disagree on.
fn has_ctl(b: &[u8]) -> bool {
    b.iter().any(|c| (*c < 0x20 && *c != b'\t') || *c == 0x7f)
}

fn has_bare_lf(b: &[u8]) -> bool {
    bare_lf_from(b, 0)
}

/// Whether `b[start..]` has an LF not preceded by CR (looking back one byte
/// before `start`), so repeated calls over a growing buffer stay linear.
fn bare_lf_from(b: &[u8], start: usize) -> bool {
    (start..b.len()).any(|i| b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

fn parse_hex(s: &[u8]) -> Result<u64, Reject> {
    // No sign, no whitespace, at most 16 hex digits (fits u64).
    if s.is_empty() || s.len() > 16 || !s.iter().all(u8::is_ascii_hexdigit) {
        return Err(Reject::bad(format!(
            "invalid chunk size {:?}",
            String::from_utf8_lossy(&s[..s.len().min(32)])
        )));
    }
    let text = std::str::from_utf8(s).map_err(|_| Reject::bad("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| Reject::bad("chunk size overflows"))
}

/// Validates one complete request head and returns the body's framing.
fn check_head(head: &[u8]) -> Result<State, Reject> {
    if has_bare_lf(head) {
        return Err(Reject::bad("bare LF in request head"));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Reject::bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::too_large(format!(
                "more than {MAX_HEADERS} header fields"
            )))
        }
        Err(e) => return Err(Reject::bad(format!("malformed request head: {e}"))),
    }
    let http10 = req.version == Some(0);
    let mut content_length: Option<u64> = None;
    let mut te = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(Reject::bad("more than one Content-Length"));
            }
            let v = h.value;
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Reject::bad(format!(
                    "invalid Content-Length {:?}",
                    String::from_utf8_lossy(&v[..v.len().min(32)])
                )));
            }
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Reject::bad("Content-Length overflows"))?;
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te {
                return Err(Reject::bad("more than one Transfer-Encoding"));
            }
            if http10 {
                return Err(Reject::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            let v = String::from_utf8_lossy(h.value);
            if !v.trim().eq_ignore_ascii_case("chunked") {
                return Err(Reject::bad(format!(
                    "unsupported Transfer-Encoding {:?} (only chunked)",
                    v.chars().take(32).collect::<String>()
                )));
            }
            te = true;
        }
    }
    match (content_length, te) {
        (Some(_), true) => Err(Reject::bad(
            "both Content-Length and Transfer-Encoding (ambiguous framing)",
        )),
        (_, true) => Ok(State::ChunkSize),
        (Some(0) | None, false) => Ok(State::Head),
        (Some(n), false) => Ok(State::Fixed(n)),
    }
}

/// Called once when a request is refused.
pub type RejectHook = Box<dyn FnOnce(&Reject) + Send>;

/// An I/O wrapper that runs the client's bytes through a [`Scanner`] and, on
/// a violation, answers the client itself and ends the stream.
pub struct GuardedIo<I> {
    inner: I,
    scanner: Scanner,
    ready: BytesMut,
    /// A refusal being written to the client.
    rejecting: Option<(Vec<u8>, usize)>,
    done: bool,
    on_reject: Option<RejectHook>,
}

impl<I> GuardedIo<I> {
    pub fn new(inner: I) -> Self {
        Self {
            inner,
            scanner: Scanner::new(),
            ready: BytesMut::new(),
            rejecting: None,
            done: false,
            on_reject: None,
        }
    }

    /// Calls `f` once if a request is refused (for logs and metrics).
    pub fn on_reject(mut self, f: impl FnOnce(&Reject) + Send + 'static) -> Self {
        self.on_reject = Some(Box::new(f));
        self
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if let Some((resp, written)) = &mut this.rejecting {
                while *written < resp.len() {
                    match Pin::new(&mut this.inner).poll_write(cx, &resp[*written..]) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            *written = resp.len();
                        }
                        Poll::Ready(Ok(n)) => *written += n,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if Pin::new(&mut this.inner).poll_shutdown(cx).is_pending() {
                    return Poll::Pending;
                }
                this.done = true;
                // End of stream: hyper closes the connection.
                return Poll::Ready(Ok(()));
            }
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    if let Err(reject) = this.scanner.push(rb.filled(), &mut this.ready) {
                        tracing::debug!(status = reject.status, reason = %reject.reason, "refused request");
                        if let Some(f) = this.on_reject.take() {
                            f(&reject);
                        }
                        // Drop what hyper has not seen yet: only the refusal goes out.
                        this.ready.clear();
                        this.rejecting = Some((reject.response(), 0));
                    }
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for GuardedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.rejecting.is_some() {
            // The refusal owns the stream now; swallow late writes.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rejecting.is_some() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Fuzzing entry point: the bytes of one client connection, as an app or
/// a peer proxy might send them. The scanner passes on an unchanged prefix
/// of what it was given, never more, and whether it refuses (and with which
/// status), and what it passed on, is the same however the bytes were split
/// into reads.
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    fn scan(data: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> (Option<u16>, Vec<u8>) {
        let mut s = Scanner::new();
        let mut out = BytesMut::new();
        let mut fed = 0;
        while fed < data.len() {
            let n = sizes
                .next()
                .unwrap_or(usize::MAX)
                .clamp(1, data.len() - fed);
            let r = s.push(&data[fed..fed + n], &mut out);
            fed += n;
            assert!(out.len() <= fed, "passed on {} of {fed} bytes", out.len());
            assert_eq!(out[..], data[..out.len()], "passed on altered bytes");
            if let Err(reject) = r {
                assert!(matches!(reject.status, 400 | 431), "{reject:?}");
                return (Some(reject.status), out.to_vec());
            }
        }
        (None, out.to_vec())
    }
    let whole = scan(data, &mut std::iter::once(usize::MAX));
    let bytewise = scan(data, &mut std::iter::repeat(1));
    let mut sizes = data.iter().map(|b| usize::from(*b) * 37 % 4099 + 1);
    let uneven = scan(data, &mut sizes);
    // A refused connection forwards nothing past the refusal, but how much
    // was forwarded before it may differ: compare decisions, and what was
    // forwarded when nothing was refused.
    assert_eq!(whole.0, bytewise.0, "whole vs byte by byte");
    assert_eq!(whole.0, uneven.0, "whole vs uneven reads");
    if whole.0.is_none() {
        assert_eq!(whole.1, bytewise.1);
        assert_eq!(whole.1, uneven.1);
    }
}

#[cfg(test)]
mod tests;
