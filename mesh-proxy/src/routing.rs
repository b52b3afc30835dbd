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

#[cfg(test)]
mod tests {
    use super::*;

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
