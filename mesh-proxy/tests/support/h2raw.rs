//! A hand-rolled HTTP/2 client that writes frames byte by byte, so tests can
//! send what well-behaved libraries refuse to: forbidden and malformed
//! header fields, pseudo-header misuse, rapid resets, stream floods.
//!
//! Header blocks are HPACK literals without indexing and without Huffman
//! coding (RFC 7541 6.2.2): every field is sent exactly as given.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113 7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame on the wire.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix; `first` holds the bits above it.
fn hpack_int(first: u8, n: u32, v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut v = v - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields (never indexed, no Huffman).
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(0, 7, name.len(), &mut out);
        out.extend_from_slice(name);
        hpack_int(0, 7, value.len(), &mut out);
        out.extend_from_slice(value);
    }
    out
}

/// The four pseudo-headers of a plain GET.
pub fn get(path: &str, authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b":method".to_vec(), b"GET".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), authority.as_bytes().to_vec()),
    ]
}

/// A HEADERS frame (END_HEADERS, and END_STREAM when `end`).
pub fn headers_frame(stream: u32, fields: &[(Vec<u8>, Vec<u8>)], end: bool) -> Vec<u8> {
    let refs: Vec<(&[u8], &[u8])> = fields
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    let flags = END_HEADERS | if end { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block(&refs))
}

/// A header block too big for one frame: HEADERS then CONTINUATION frames
/// of at most the default maximum frame size (16 KiB).
pub fn headers_frames(stream: u32, fields: &[(Vec<u8>, Vec<u8>)], end: bool) -> Vec<u8> {
    const MAX: usize = 16 * 1024;
    let refs: Vec<(&[u8], &[u8])> = fields
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    let b = block(&refs);
    let pieces: Vec<&[u8]> = b.chunks(MAX).collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let (ty, mut flags) = if i == 0 {
            (HEADERS, if end { END_STREAM } else { 0 })
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        out.extend(frame(ty, flags, stream, piece));
    }
    out
}

pub fn rst_frame(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A received frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.ty {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// How one stream ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response: the `:status` when it was a static-table one
    /// (200, 204, 206, 304, 400, 404, 500), and the body.
    Response(Option<u16>, Vec<u8>),
    Reset(u32),
    GoAway(u32),
    /// The connection ended (or went quiet) without an answer.
    Closed,
}

/// A raw HTTP/2 connection (prior knowledge, over TCP or TLS).
pub struct RawH2<S = TcpStream> {
    pub s: S,
    buf: Vec<u8>,
}

impl RawH2<TcpStream> {
    /// Connects in cleartext and says hello.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::handshake(TcpStream::connect(addr).await.unwrap()).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    /// Sends the preface and an empty SETTINGS frame on `s`.
    pub async fn handshake(mut s: S) -> Self {
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        s.write_all(&hello).await.unwrap();
        Self { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await
    }

    /// The next frame, answering SETTINGS and PING on the way; `None` on
    /// EOF, error or `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.ty == SETTINGS && f.flags & ACK == 0 {
                        let _ = self.s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    if f.ty == PING && f.flags & ACK == 0 {
                        let _ = self.s.write_all(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                    return Some(f);
                }
            }
            let mut tmp = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until `stream` ends: its response, its reset, or the
    /// connection's GOAWAY or end.
    pub async fn outcome(&mut self, stream: u32, timeout: Duration) -> Outcome {
        let mut status = None;
        let mut got_headers = false;
        let mut body = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next_frame(left).await else {
                return if got_headers {
                    Outcome::Response(status, body)
                } else {
                    Outcome::Closed
                };
            };
            match f.ty {
                GOAWAY => {
                    // Streams the server processed still complete; ours
                    // did not if we got here without END_STREAM.
                    let last = u32::from_be_bytes([
                        f.payload[0],
                        f.payload[1],
                        f.payload[2],
                        f.payload[3],
                    ]) & 0x7fff_ffff;
                    if last < stream || f.error_code() != Some(0) {
                        return Outcome::GoAway(f.error_code().unwrap_or(0));
                    }
                }
                RST_STREAM if f.stream == stream => {
                    return Outcome::Reset(f.error_code().unwrap_or(0))
                }
                HEADERS if f.stream == stream => {
                    if !got_headers {
                        status = static_status(&f.payload);
                        got_headers = true;
                    }
                    if f.flags & END_STREAM != 0 {
                        return Outcome::Response(status, body);
                    }
                }
                DATA if f.stream == stream => {
                    body.extend_from_slice(&f.payload);
                    if f.flags & END_STREAM != 0 {
                        return Outcome::Response(status, body);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The `:status` of a response header block, when it is the first field
/// (as servers send it): an indexed static-table status, or a literal with
/// the static `:status` name (plain or Huffman-coded digits). `None` for
/// anything else (a dynamic-table reference, say).
pub fn static_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    let name_index = match first {
        0x88 => return Some(200),
        0x89 => return Some(204),
        0x8a => return Some(206),
        0x8b => return Some(304),
        0x8c => return Some(400),
        0x8d => return Some(404),
        0x8e => return Some(500),
        b if b & 0xc0 == 0x40 => b & 0x3f,
        b if b & 0xe0 == 0x00 => b & 0x0f,
        _ => return None,
    };
    if !(8..=14).contains(&name_index) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(2..2 + len)?;
    let digits = if len_byte & 0x80 == 0 {
        value.to_vec()
    } else {
        huffman_digits(value)?
    };
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B:
/// `0`-`2` are 5-bit codes 0-2, `3`-`9` are 6-bit codes 0x19-0x1f).
fn huffman_digits(b: &[u8]) -> Option<Vec<u8>> {
    let bits: Vec<u8> = b
        .iter()
        .flat_map(|x| (0..8).rev().map(move |i| (x >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| -> Option<u8> {
        let s = bits.get(at..at + n)?;
        Some(s.iter().fold(0u8, |a, b| (a << 1) | b))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while bits.len() - at >= 5 {
        let five = take(at, 5)?;
        if five <= 2 {
            out.push(b'0' + five);
            at += 5;
            continue;
        }
        match take(at, 6) {
            Some(six @ 0x19..=0x1f) => {
                out.push(b'3' + (six - 0x19));
                at += 6;
            }
            // EOS padding (all ones) ends the string.
            _ => break,
        }
    }
    Some(out)
}
