use super::*;

fn scan(input: &[u8]) -> Result<Vec<u8>, Reject> {
    let mut s = Scanner::new();
    let mut out = BytesMut::new();
    // Byte by byte, to exercise every boundary.
    for b in input {
        s.push(std::slice::from_ref(b), &mut out)?;
    }
    Ok(out.to_vec())
}

fn scan_whole(input: &[u8]) -> Result<Vec<u8>, Reject> {
    let mut s = Scanner::new();
    let mut out = BytesMut::new();
    s.push(input, &mut out)?;
    Ok(out.to_vec())
}

fn status(input: &[u8]) -> u16 {
    let a = scan(input).map(|_| 200).unwrap_or_else(|r| r.status);
    let b = scan_whole(input).map(|_| 200).unwrap_or_else(|r| r.status);
    assert_eq!(a, b, "byte-wise and whole scans disagree");
    a
}

#[test]
fn passes_good_requests_unchanged() {
    let reqs: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    for r in reqs {
        assert_eq!(scan(r).unwrap(), r.to_vec());
        assert_eq!(scan_whole(r).unwrap(), r.to_vec());
    }
}

#[test]
fn holds_back_an_incomplete_head() {
    let mut s = Scanner::new();
    let mut out = BytesMut::new();
    s.push(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut out).unwrap();
    assert!(out.is_empty());
    s.push(b"\r\n", &mut out).unwrap();
    assert_eq!(&out[..], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
}

#[test]
fn refuses_smuggling() {
    let bad: &[(&[u8], &str)] = &[
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "CL+TE",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "TE+CL",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "dup CL",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "diff CL",
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "+CL"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "overflow CL",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "list CL",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "TE gzip",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "TE list",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "dup TE",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "TE in 1.0",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
            "+chunk",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            "chunk overflow",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            "bare LF chunk",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            "no CRLF after data",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",
            "bare CR in chunk extension",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x00\r\nhello\r\n0\r\n\r\n",
            "NUL in chunk extension",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: a\rb\r\n\r\n",
            "bare CR in trailer",
        ),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF head"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "obs-fold"),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", "space in name"),
        (b"\x00\x01garbage\r\n\r\n", "garbage"),
    ];
    for (req, what) in bad {
        assert_eq!(status(req), 400, "{what} was not refused");
    }
}

#[test]
fn oversized_heads_get_431() {
    let mut big = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
    assert_eq!(status(&big), 431);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..(MAX_HEADERS + 5) {
        many.extend(format!("x-{i}: 1\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(status(&many), 431);
}

#[test]
fn response_names_the_problem() {
    let r = scan(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n").unwrap_err();
    let text = String::from_utf8(r.response()).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("more than one Content-Length"), "{text}");
}

#[test]
fn fuzz_logic_smoke() {
    for seed in 0..200u32 {
        let data: Vec<u8> = (0..300)
            .map(|i| ((i * 31 + seed * 17) % 251) as u8)
            .collect();
        fuzz_logic(&data);
    }
    fuzz_logic(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nff\r\n");
}

#[test]
fn fuzz_regressions_replay() {
    mesh_api::fuzzing::replay_regressions("h1_edge", fuzz_logic);
}
