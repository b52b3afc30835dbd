//! HTTP route matching: the compiled form of `HttpRoute.matches`.
//!
//! Routes are tried in declared order and the first match wins, as in
//! Istio's VirtualService.

use std::collections::BTreeMap;

use mesh_proto::config::v1 as pb;
use regex::Regex;

use crate::model::ConfigError;

/// A compiled string matcher.
#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StrMatch {
    pub fn compile(m: &pb::StringMatch, field: &str) -> Result<Option<Self>, ConfigError> {
        use pb::string_match::Kind;
        Ok(match &m.kind {
            None => None,
            Some(Kind::Exact(s)) => Some(Self::Exact(s.clone())),
            Some(Kind::Prefix(s)) => Some(Self::Prefix(s.clone())),
            Some(Kind::Regex(r)) => {
                // Anchored like Istio (RE2 full match).
                let re = Regex::new(&format!("^(?:{r})$")).map_err(|e| ConfigError::Invalid {
                    field: field.to_string(),
                    reason: format!("regex {r:?} does not compile: {e}"),
                })?;
                Some(Self::Regex(re))
            }
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(s) => v == s,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(v),
        }
    }
}

/// How a header must look.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: http::HeaderName,
    pub value: Option<StrMatch>,
    pub absent: bool,
}

/// One compiled `HttpMatch`: every set condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RequestMatcher {
    pub uri: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<(String, Option<StrMatch>)>,
    pub source_labels: BTreeMap<String, String>,
    pub port: u16,
}

/// What a request offers for matching.
pub struct RequestInfo<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: &'a http::HeaderMap,
    pub port: u16,
    pub source_labels: &'a BTreeMap<String, String>,
}

impl RequestMatcher {
    pub fn compile(m: &pb::HttpMatch, field: &str) -> Result<Self, ConfigError> {
        let sm = |v: &Option<pb::StringMatch>, f: &str| -> Result<Option<StrMatch>, ConfigError> {
            match v {
                Some(v) => StrMatch::compile(v, &format!("{field}.{f}")),
                None => Ok(None),
            }
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::Invalid {
                    field: format!("{field}.headers[{i}].name"),
                    reason: format!("{:?} is not a valid header name", h.name),
                })?;
            headers.push(HeaderMatcher {
                name,
                value: sm(&h.value, &format!("headers[{i}].value"))?,
                absent: h.absent,
            });
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for (i, q) in m.query_params.iter().enumerate() {
            query.push((
                q.name.clone(),
                sm(&q.value, &format!("queryParams[{i}].value"))?,
            ));
        }
        Ok(Self {
            uri: sm(&m.uri, "uri")?,
            method: sm(&m.method, "method")?,
            headers,
            query,
            source_labels: m.source_labels.clone().into_iter().collect(),
            port: u16::try_from(m.port).map_err(|_| ConfigError::Invalid {
                field: format!("{field}.port"),
                reason: format!("{} is not a port", m.port),
            })?,
        })
    }

    pub fn matches(&self, r: &RequestInfo<'_>) -> bool {
        if self.port != 0 && self.port != r.port {
            return false;
        }
        if let Some(m) = &self.uri {
            if !m.matches(r.path) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(r.method.as_str()) {
                return false;
            }
        }
        for h in &self.headers {
            let v = r.headers.get(&h.name);
            let ok = match (h.absent, v, &h.value) {
                (true, v, _) => v.is_none(),
                (false, None, _) => false,
                (false, Some(_), None) => true,
                (false, Some(v), Some(m)) => v.to_str().map(|v| m.matches(v)).unwrap_or(false),
            };
            if !ok {
                return false;
            }
        }
        for (name, m) in &self.query {
            let found = r
                .query
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                })
                .next();
            let ok = match (found, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(m)) => m.matches(v),
            };
            if !ok {
                return false;
            }
        }
        self.source_labels
            .iter()
            .all(|(k, v)| r.source_labels.get(k) == Some(v))
    }
}

/// Fuzzing entry point: route matching and the normalization of request
/// paths and hosts. `data` is up to three lines: a request target
/// (`/path?query`), a route condition (`HttpMatch` in its JSON mapping,
/// or any text, used as an exact and a prefix match), and a `Host` value.
///
/// Checked: a normalized path is a fixed point of the normalization, has no
/// empty, `.` or `..` segment, no backslash, no encoded slash or backslash
/// and no encoded unreserved character, and can be put back into the
/// request (the inbound side forwards it); host normalization is a fixed
/// point too; a route condition on the path means exactly what it says
/// (exact, prefix, anchored regex), on the raw and on the normalized path.
#[cfg(any(test, fuzzing))]
pub fn fuzz_logic(data: &[u8]) {
    use crate::authz::normalize_path;

    let mut lines = data.splitn(3, |b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let condition = lines.next().unwrap_or_default();
    let host = String::from_utf8_lossy(lines.next().unwrap_or_default());

    // Normalization must cope with any text, not only what hyper accepts,
    // and refuse any `%` that does not start an escape.
    let text = String::from_utf8_lossy(target);
    if let Ok(n) = normalize_path(&text) {
        check_normalized(&n);
        let b = text.as_bytes();
        for (i, _) in text.match_indices('%') {
            let hex = b.get(i + 1..i + 3).unwrap_or_default();
            assert!(
                hex.len() == 2 && hex.iter().all(u8::is_ascii_hexdigit),
                "bad escape accepted in {text:?}"
            );
        }
    }
    let h = crate::model::normalize_host(&host);
    assert_eq!(crate::model::normalize_host(&h), h, "host {host:?}");
    assert!(
        !h.ends_with('.') && !h.bytes().any(|b| b.is_ascii_uppercase()),
        "{h:?}"
    );

    // What the proxy sees: a request target hyper parsed.
    let Ok(uri) = http::uri::PathAndQuery::try_from(target) else {
        return;
    };
    let normalized = normalize_path(uri.path());
    if let Ok(n) = &normalized {
        check_normalized(n);
        // The inbound side forwards the normalized path: it must parse.
        let pq = match uri.query() {
            Some(q) => format!("{n}?{q}"),
            None => n.clone(),
        };
        assert!(
            http::uri::PathAndQuery::try_from(pq.as_str()).is_ok(),
            "normalized {n:?} (from {:?}) cannot be forwarded",
            uri.path()
        );
    }

    let conditions: Vec<pb::HttpMatch> = match serde_json::from_slice::<pb::HttpMatch>(condition) {
        Ok(m) => vec![m],
        Err(_) => {
            let text = String::from_utf8_lossy(condition).into_owned();
            use pb::string_match::Kind;
            [Kind::Exact(text.clone()), Kind::Prefix(text)]
                .into_iter()
                .map(|k| pb::HttpMatch {
                    uri: Some(pb::StringMatch { kind: Some(k) }),
                    ..Default::default()
                })
                .collect()
        }
    };
    let method = http::Method::GET;
    let headers = http::HeaderMap::new();
    let labels = BTreeMap::new();
    for m in &conditions {
        let Ok(compiled) = RequestMatcher::compile(m, "fuzz") else {
            continue;
        };
        let paths = std::iter::once(uri.path()).chain(normalized.as_deref().ok());
        for path in paths {
            let info = RequestInfo {
                path,
                query: uri.query(),
                method: &method,
                headers: &headers,
                port: 80,
                source_labels: &labels,
            };
            let matched = compiled.matches(&info);
            // Only the path condition: the decision is the condition's.
            let only_uri = m.headers.is_empty()
                && m.method.is_none()
                && m.query_params.is_empty()
                && m.source_labels.is_empty()
                && (m.port == 0 || m.port == 80);
            if only_uri {
                use pb::string_match::Kind;
                let want = match m.uri.as_ref().and_then(|u| u.kind.as_ref()) {
                    None => true,
                    Some(Kind::Exact(s)) => path == s,
                    Some(Kind::Prefix(p)) => path.starts_with(p.as_str()),
                    Some(Kind::Regex(_)) => matched,
                };
                assert_eq!(matched, want, "{m:?} on {path:?}");
            }
            // A regex condition is anchored: the path itself, escaped,
            // matches it and nothing longer.
            if let Ok(Some(exact)) = StrMatch::compile(
                &pb::StringMatch {
                    kind: Some(pb::string_match::Kind::Regex(regex::escape(path))),
                },
                "fuzz",
            ) {
                assert!(exact.matches(path), "{path:?}");
                assert!(!exact.matches(&format!("{path}x")), "{path:?} not anchored");
            }
        }
    }
}

/// What every normalized path looks like.
#[cfg(any(test, fuzzing))]
fn check_normalized(n: &str) {
    use crate::authz::normalize_path;
    assert!(n.starts_with('/'), "{n:?}");
    assert_eq!(normalize_path(n).as_deref(), Ok(n), "not a fixed point");
    let inner = n.strip_suffix('/').unwrap_or(n);
    for seg in inner.split('/').skip(1) {
        assert!(!matches!(seg, "" | "." | ".."), "segment {seg:?} in {n:?}");
    }
    assert!(!n.contains('\\') && !n.contains('#'), "{n:?}");
    let b = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let hex = b.get(i + 1..i + 3).expect("complete escape");
        let v = std::str::from_utf8(hex)
            .ok()
            .filter(|h| {
                h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            })
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("bad escape in {n:?}"));
        assert!(
            !(v.is_ascii_alphanumeric() || b"-._~/\\#".contains(&v)),
            "%{v:02X} left encoded in {n:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_logic_smoke() {
        let seeds: &[&[u8]] = &[
            b"/api/v1/users?id=7\n{\"uri\":{\"prefix\":\"/api\"}}\nshop.example.com:8080",
            b"//admin/./x/../%61dmin%2e%2E\n/admin\nExample.COM.",
            b"/a%2Fb\n{\"uri\":{\"regex\":\"/a.*\"},\"port\":80}\n[::1]:80",
            b"/%7e/~/%7E?q=1&v=2\n{\"queryParams\":[{\"name\":\"v\",\"value\":{\"exact\":\"2\"}}]}\n",
            b"*\n\n",
            b"",
        ];
        for s in seeds {
            fuzz_logic(s);
        }
        let mut x = 0x9e37_79b9_u32;
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    b"/./a%2e2F5c7E:.\n?=&Aa"[(x % 21) as usize]
                })
                .collect();
            fuzz_logic(&data);
        }
    }

    fn info<'a>(
        path: &'a str,
        query: Option<&'a str>,
        method: &'a http::Method,
        headers: &'a http::HeaderMap,
        labels: &'a BTreeMap<String, String>,
    ) -> RequestInfo<'a> {
        RequestInfo {
            path,
            query,
            method,
            headers,
            port: 80,
            source_labels: labels,
        }
    }

    #[test]
    fn fuzz_regressions_replay() {
        mesh_api::fuzzing::replay_regressions("route_match", fuzz_logic);
    }

    #[test]
    fn matches_every_condition() {
        let m: pb::HttpMatch = serde_json::from_value(serde_json::json!({
            "uri": {"prefix": "/api"},
            "method": {"exact": "GET"},
            "headers": [
                {"name": "X-Canary", "value": {"regex": "yes|true"}},
                {"name": "x-debug", "absent": true}
            ],
            "queryParams": [{"name": "v", "value": {"exact": "2"}}],
            "sourceLabels": {"app": "web"}
        }))
        .unwrap();
        let m = RequestMatcher::compile(&m, "routes[0].matches[0]").unwrap();
        let get = http::Method::GET;
        let mut h = http::HeaderMap::new();
        h.insert("x-canary", "true".parse().unwrap());
        let labels: BTreeMap<_, _> = [("app".to_string(), "web".to_string())].into();
        assert!(m.matches(&info("/api/x", Some("a=1&v=2"), &get, &h, &labels)));
        assert!(!m.matches(&info("/web", Some("v=2"), &get, &h, &labels)));
        assert!(!m.matches(&info("/api", Some("v=3"), &get, &h, &labels)));
        assert!(!m.matches(&info("/api", Some("v=2"), &http::Method::POST, &h, &labels)));
        assert!(!m.matches(&info("/api", Some("v=2"), &get, &h, &BTreeMap::new())));
        // regex is anchored: "truer" does not match yes|true
        let mut h2 = h.clone();
        h2.insert("x-canary", "truer".parse().unwrap());
        assert!(!m.matches(&info("/api", Some("v=2"), &get, &h2, &labels)));
        h.insert("x-debug", "1".parse().unwrap());
        assert!(!m.matches(&info("/api", Some("v=2"), &get, &h, &labels)));
    }

    #[test]
    fn bad_regex_names_the_field() {
        let m: pb::HttpMatch =
            serde_json::from_value(serde_json::json!({"uri": {"regex": "(["}})).unwrap();
        let err = RequestMatcher::compile(&m, "services[0].httpRoutes[1].matches[0]").unwrap_err();
        assert!(
            err.to_string()
                .contains("services[0].httpRoutes[1].matches[0].uri"),
            "{err}"
        );
    }
}
