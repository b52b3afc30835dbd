//! Logs, request IDs and W3C trace context.

use http::{HeaderMap, HeaderValue};
use rand::Rng;

/// Header carrying the request's ID across every hop.
pub const REQUEST_ID: &str = "x-request-id";
/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Sets up structured logging to stderr (JSON when `MESH_LOG_FORMAT=json`).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("MESH_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Makes sure the request has an `x-request-id` and a `traceparent` whose
/// parent is a new span for this hop; returns the request ID.
pub fn propagate(headers: &mut HeaderMap) -> HeaderValue {
    let mut rng = rand::rng();
    let id = match headers.get(REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
        _ => {
            let b: [u8; 16] = rng.random();
            let v = HeaderValue::from_str(&uuid_v4(b)).expect("hex is a valid header");
            headers.insert(REQUEST_ID, v.clone());
            v
        }
    };
    let span: u64 = rng.random::<u64>() | 1;
    let tp = match headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        Some((trace, flags)) => format!("00-{trace}-{span:016x}-{flags}"),
        None => {
            let trace: u128 = rng.random::<u128>() | 1;
            format!("00-{trace:032x}-{span:016x}-01")
        }
    };
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_str(&tp).expect("hex is a valid header"),
    );
    id
}

fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Returns (trace-id, flags) of a valid version-00 traceparent.
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let mut parts = v.split('-');
    let (ver, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = ver == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace != "0".repeat(32)
        && parent != "0".repeat(16);
    valid.then_some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = uuid_v4([0xab; 16]);
        assert_eq!(u, "abababab-abab-4bab-abab-abababababab");
    }

    #[test]
    fn creates_ids_when_absent() {
        let mut h = HeaderMap::new();
        let id = propagate(&mut h);
        assert_eq!(id.len(), 36);
        let tp = h.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert!(parse_traceparent(tp).is_some(), "{tp}");
    }

    #[test]
    fn keeps_trace_and_request_id() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc".parse().unwrap());
        h.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(propagate(&mut h), "abc");
        let tp = h.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "a new span id for this hop: {tp}"
        );
        assert!(tp.ends_with("-01"));
    }

    #[test]
    fn replaces_invalid_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "garbage".parse().unwrap());
        propagate(&mut h);
        assert!(parse_traceparent(h.get(TRACEPARENT).unwrap().to_str().unwrap()).is_some());
    }
}
