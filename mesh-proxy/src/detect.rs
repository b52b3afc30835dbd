//! Protocol detection on a connection's first bytes.
//!
//! HTTP/2 is recognised by its connection preface (prior knowledge, which is
//! what gRPC uses in the clear), TLS by a handshake record header, HTTP/1 by
//! a request line; anything else, or nothing within the timeout, is opaque TCP.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tls,
    Opaque,
}

/// The HTTP/2 connection preface (RFC 9113, 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes we read at most to find an HTTP/1 request line. A longer
/// first line that starts like one (`METHOD SP`) is HTTP/1, for the guard to
/// bound (431 past 64 KiB); anything else is not buffered further.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// Classifies a prefix: `None` means more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // HTTP/2 preface, or a prefix of it.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Protocol::Http2)
        } else {
            None
        };
    }
    // TLS handshake record: content type 22, version 3.x.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(0x03) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    // HTTP/1: METHOD SP target SP HTTP/1.x CRLF
    let method_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    // No method is this long: opaque, with or without the space after it
    // (deciding only without would depend on where a read ended).
    if method_len == 0 || method_len > 32 {
        return Some(Protocol::Opaque);
    }
    if method_len == buf.len() {
        return None;
    }
    if buf[method_len] != b' ' {
        return Some(Protocol::Opaque);
    }
    // Only the first MAX_DETECT_BYTES count, so that the answer for a
    // prefix stands for every longer one.
    let window = &buf[..buf.len().min(MAX_DETECT_BYTES)];
    match window.iter().position(|b| *b == b'\n') {
        Some(eol) => {
            let line = &buf[..eol];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // A CR inside the line is an HTTP/1 request with a bare CR
            // (`GET / HTTP/1.1\rHost: ...`): the guard refuses it, rather
            // than it passing untouched as opaque bytes.
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") || line.contains(&b'\r')
            {
                Some(Protocol::Http1)
            } else {
                Some(Protocol::Opaque)
            }
        }
        // `METHOD SP` and a target this long: an HTTP/1 request with a long
        // URL, for the guard and hyper to judge (431 past their limits).
        None if buf.len() >= MAX_DETECT_BYTES => Some(Protocol::Http1),
        None => None,
    }
}

/// What bytes that did not complete a decision are, when the client stops
/// sending (detection timed out, or it half-closed). Silence is opaque (the
/// server may speak first); the start of an HTTP/1 request line stays
/// HTTP/1, so that a client cannot skip the framing checks by pausing
/// mid-line; a partial HTTP/2 preface is HTTP/2.
pub fn undecided(buf: &[u8]) -> Protocol {
    let n = buf.len().min(H2_PREFACE.len());
    if buf.is_empty() {
        Protocol::Opaque
    } else if buf[..n] == H2_PREFACE[..n] {
        Protocol::Http2
    } else if is_tchar(buf[0]) {
        // classify() leaves only `METHOD` or `METHOD SP ...` undecided.
        Protocol::Http1
    } else {
        Protocol::Opaque
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, the peer stops sending, or
/// `timeout` passes. Returns the protocol and the bytes read, which the caller
/// must replay in front of the stream.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<(Protocol, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = classify(&buf) {
            return Ok((p, buf));
        }
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok((undecided(&buf), buf));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            // Timed out, or the client half-closed.
            Err(_) | Ok(Ok(0)) => return Ok((undecided(&buf), buf)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Fuzzing entry point: `data` is what a client sends first. What
/// [`detect`] decides must not depend on how those bytes were split into
/// reads (all at once, byte by byte, or in uneven pieces), and the bytes
/// it hands back for replay are exactly a prefix of what was sent.
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// The client: `data` in reads of the sizes `sizes` yields, then EOF.
    struct Client<'a, I> {
        data: &'a [u8],
        sizes: I,
    }
    impl<I: Iterator<Item = usize> + Unpin> AsyncRead for Client<'_, I> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let want = self.sizes.next().unwrap_or(usize::MAX).max(1);
            let n = want.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
    }
    let run = |sizes: &mut dyn Iterator<Item = usize>| -> Protocol {
        let sizes: Vec<usize> = sizes.take(data.len() + 1).collect();
        let mut client = Client {
            data,
            sizes: sizes.into_iter(),
        };
        let (p, buf) = RT
            .with(|rt| rt.block_on(detect(&mut client, Duration::from_secs(3600))))
            .expect("reads do not fail");
        assert!(
            buf.len() <= data.len(),
            "claimed {} of {} bytes",
            buf.len(),
            data.len()
        );
        assert_eq!(
            buf[..],
            data[..buf.len()],
            "replay differs from what was read"
        );
        p
    };
    let whole = run(&mut std::iter::once(usize::MAX));
    let bytewise = run(&mut std::iter::repeat(1));
    let uneven = run(&mut data.iter().map(|b| usize::from(*b % 64) + 1));
    assert_eq!(whole, bytewise, "all at once vs byte by byte");
    assert_eq!(whole, uneven, "all at once vs uneven reads");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_logic_smoke() {
        let seeds: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            H2_PREFACE,
            b"PRI * HTTP/1.1\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"SSH-2.0-OpenSSH\r\n",
            b"",
        ];
        for s in seeds {
            fuzz_logic(s);
        }
        let mut x = 0x2545_f491_u32;
        for len in 0..300 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    b"GET /HTP1.\r\n \x16\x03"[(x % 14) as usize]
                })
                .collect();
            fuzz_logic(&data);
        }
        // A request line longer than the detection window, sent at once.
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES + 10, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\n");
        fuzz_logic(&long);
        // A method longer than any: opaque whether the space came with it.
        fuzz_logic(b"SS-2.OpenSSH_9.6F-.OpenSSHF-PRI2R ");
    }

    #[test]
    fn fuzz_regressions_replay() {
        mesh_api::fuzzing::replay_regressions("detect", fuzz_logic);
    }

    #[test]
    fn classifies() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST /a?b HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HTTP/1.1"), None);
        assert_eq!(classify(b"GET"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Protocol::Tls));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b"\x00\x01\x02"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / FTP/1.1\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Protocol::Opaque));
        // "PRI" alone could be either; a mismatch with the preface is HTTP/1 or opaque.
        assert_eq!(classify(b"PRI"), None);
        // A bare CR in the request line is HTTP/1's to refuse.
        assert_eq!(
            classify(b"GET / HTTP/1.1\rHost: x\r\n"),
            Some(Protocol::Http1)
        );
        // A long URL is still HTTP/1.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_DETECT_BYTES));
        assert_eq!(classify(&long), Some(Protocol::Http1));
        long.extend(b" HTTP/1.1\r\n");
        assert_eq!(classify(&long), Some(Protocol::Http1));
    }

    #[test]
    fn undecided_bytes() {
        assert_eq!(undecided(b""), Protocol::Opaque);
        assert_eq!(undecided(b"G"), Protocol::Http1);
        assert_eq!(undecided(b"POST /a HT"), Protocol::Http1);
        assert_eq!(undecided(b"PRI * HTTP/2.0\r\n"), Protocol::Http2);
        assert_eq!(undecided(&[0x16]), Protocol::Opaque);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out_as_opaque() {
        let (mut client, _server) = tokio::io::duplex(64);
        let (p, buf) = detect(&mut client, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn detects_across_reads() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            b.write_all(b"GET /x ").await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            b.write_all(b"HTTP/1.1\r\n").await.unwrap();
            b
        });
        let (p, buf) = detect(&mut a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        assert_eq!(&buf[..], b"GET /x HTTP/1.1\r\n");
        drop(writer.await);
    }
}
