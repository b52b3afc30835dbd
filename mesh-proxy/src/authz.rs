//! Inbound authorization: PeerAuthentication modes and AuthorizationPolicy
//! evaluation, with request paths normalized first so that `//admin`,
//! `/./admin`, `/%61dmin` and `/x/../admin` cannot slip past a rule on
//! `/admin`.
//!
//! Semantics follow Istio: any matching DENY policy denies; with no ALLOW
//! policy everything else is allowed; with ALLOW policies, a request must
//! match one of them.

use mesh_proto::config::v1 as pb;

/// What authorization sees of a request or connection.
#[derive(Debug, Default)]
pub struct Subject<'a> {
    /// The caller's SPIFFE ID, when it came over mesh mTLS.
    pub principal: Option<&'a str>,
    /// Normalized path; `None` for TCP connections.
    pub path: Option<&'a str>,
    pub method: Option<&'a str>,
    pub host: Option<&'a str>,
    pub port: u16,
}

/// The decision and the policy that made it.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// Why a path was refused before authorization.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("encoded slash or backslash in path")]
    EncodedSlash,
    #[error("fragment in request path")]
    Fragment,
    #[error("bad percent-encoding in path")]
    BadEscape,
    #[error("path must start with /")]
    NotAbsolute,
}

/// Normalizes a request path: decodes percent-encoded unreserved
/// characters, merges slashes, resolves `.` and `..`, and refuses encoded
/// slashes, backslashes and fragments (which back ends decode differently).
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if path.contains('#') {
        return Err(PathError::Fragment);
    }
    if path.contains('\\') {
        return Err(PathError::EncodedSlash);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Percent-decoding of unreserved characters only (RFC 3986 6.2.2.2).
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            // Two hex digits exactly (from_str_radix alone takes "+1").
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(PathError::BadEscape);
            }
            let s = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
            let v = u8::from_str_radix(s, 16).map_err(|_| PathError::BadEscape)?;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSlash),
                b'#' => return Err(PathError::Fragment),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    decoded.push(v as char)
                }
                _ => decoded.push_str(&format!("%{v:02X}")),
            }
            i += 3;
        } else {
            // A whole character: UTF-8 paths pass through unchanged.
            let c = path[i..].chars().next().ok_or(PathError::BadEscape)?;
            decoded.push(c);
            i += c.len_utf8();
        }
    }
    let trailing = decoded.ends_with('/') && decoded.len() > 1;
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut norm = String::with_capacity(decoded.len());
    for s in &out {
        norm.push('/');
        norm.push_str(s);
    }
    if norm.is_empty() || (trailing && !norm.ends_with('/')) {
        norm.push('/');
    }
    Ok(norm)
}

/// Istio-style string match: exact, `prefix*`, `*suffix`, or `*`.
fn glob(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(p) = pattern.strip_suffix('*') {
        value.starts_with(p)
    } else if let Some(s) = pattern.strip_prefix('*') {
        value.ends_with(s)
    } else {
        pattern == value
    }
}

fn host_eq(pattern: &str, host: &str) -> bool {
    let norm = |h: &str| h.trim_end_matches('.').to_ascii_lowercase();
    glob(&norm(pattern), &norm(host))
}

/// `cluster.local/ns/a/sa/b` form of a SPIFFE ID, as Istio writes principals.
fn principal_form(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

fn namespace_of(id: &str) -> Option<&str> {
    let p = principal_form(id);
    let mut it = p.split('/');
    let _td = it.next()?;
    (it.next()? == "ns").then_some(())?;
    it.next()
}

fn any_or_empty(list: &[String], f: impl Fn(&str) -> bool) -> bool {
    list.is_empty() || list.iter().any(|p| f(p))
}

fn none_of(list: &[String], f: impl Fn(&str) -> bool) -> bool {
    !list.iter().any(|p| f(p))
}

/// Whether a rule matches. For TCP subjects (no path), rules with HTTP-only
/// fields never match an ALLOW policy, and have those fields ignored in a
/// DENY policy (failing closed either way).
fn rule_matches(rule: &pb::AuthorizationRule, s: &Subject<'_>, deny: bool) -> bool {
    let http_fields = !rule.paths.is_empty()
        || !rule.not_paths.is_empty()
        || !rule.methods.is_empty()
        || !rule.not_methods.is_empty()
        || !rule.hosts.is_empty();
    if s.path.is_none() && http_fields && !deny {
        return false;
    }
    let principal = s.principal.map(principal_form);
    let ns = s.principal.and_then(namespace_of);
    let by_principal = |p: &str| {
        principal
            .map(|v| glob(principal_form(p), v))
            .unwrap_or(false)
    };
    let by_ns = |p: &str| ns.map(|v| glob(p, v)).unwrap_or(false);
    let ok_source = any_or_empty(&rule.principals, by_principal)
        && none_of(&rule.not_principals, by_principal)
        && any_or_empty(&rule.namespaces, by_ns)
        && none_of(&rule.not_namespaces, by_ns);
    if !ok_source {
        return false;
    }
    let port_ok = (rule.ports.is_empty() || rule.ports.contains(&u32::from(s.port)))
        && !rule.not_ports.contains(&u32::from(s.port));
    if !port_ok {
        return false;
    }
    let Some(path) = s.path else {
        return true;
    };
    let method = s.method.unwrap_or("");
    let by_path = |p: &str| glob(p, path);
    let by_method = |m: &str| m.eq_ignore_ascii_case(method);
    any_or_empty(&rule.paths, by_path)
        && none_of(&rule.not_paths, by_path)
        && any_or_empty(&rule.methods, by_method)
        && none_of(&rule.not_methods, by_method)
        && any_or_empty(&rule.hosts, |h| {
            s.host.map(|v| host_eq(h, v)).unwrap_or(false)
        })
}

/// Evaluates the workload's authorization policies for one subject.
pub fn authorize(policies: &[pb::AuthorizationPolicy], s: &Subject<'_>) -> Decision {
    use pb::authorization_policy::Action;
    for p in policies.iter().filter(|p| p.action() == Action::Deny) {
        if p.rules.iter().any(|r| rule_matches(r, s, true)) {
            return Decision::Deny(format!("denied by policy {}", p.name));
        }
    }
    let allows: Vec<_> = policies
        .iter()
        .filter(|p| p.action() == Action::Allow)
        .collect();
    if allows.is_empty()
        || allows
            .iter()
            .any(|p| p.rules.iter().any(|r| rule_matches(r, s, false)))
    {
        Decision::Allow
    } else {
        Decision::Deny("no ALLOW policy matches".into())
    }
}

/// The peer-authentication mode for a port.
pub fn mode_for(policy: Option<&pb::InboundPolicy>, port: u16) -> pb::PeerAuthMode {
    match policy {
        None => pb::PeerAuthMode::Permissive,
        Some(p) => p
            .port_modes
            .get(&u32::from(port))
            .and_then(|m| pb::PeerAuthMode::try_from(*m).ok())
            .unwrap_or(p.mode()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_bypass_attempts() {
        for p in [
            "/admin",
            "//admin",
            "/./admin",
            "/%61dmin",
            "/x/../admin",
            "/%2e/admin",
            "/a/b/../../admin",
            "/%2E%2E/admin",
        ] {
            assert_eq!(normalize_path(p).unwrap(), "/admin", "{p}");
        }
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/../..").unwrap(), "/");
        assert_eq!(normalize_path("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize_path("/admin%2Fx"), Err(PathError::EncodedSlash));
        assert_eq!(normalize_path("/admin%2fx"), Err(PathError::EncodedSlash));
        assert_eq!(normalize_path("/admin%5Cx"), Err(PathError::EncodedSlash));
        assert_eq!(normalize_path("/admin\\x"), Err(PathError::EncodedSlash));
        assert_eq!(normalize_path("/admin#x"), Err(PathError::Fragment));
        assert_eq!(normalize_path("/admin%23x"), Err(PathError::Fragment));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%+1"), Err(PathError::BadEscape));
        assert_eq!(
            normalize_path("/caf%C3%A9/é/🍕").unwrap(),
            "/caf%C3%A9/é/🍕"
        );
    }

    fn policy(action: i32, rule: serde_json::Value) -> pb::AuthorizationPolicy {
        serde_json::from_value(serde_json::json!({
            "name": "ns/p", "action": if action == 1 { "DENY" } else { "ALLOW" }, "rules": [rule]
        }))
        .unwrap()
    }

    #[test]
    fn deny_then_allow_semantics() {
        let deny_admin = policy(1, serde_json::json!({"paths": ["/admin*"]}));
        let allow_web = policy(
            0,
            serde_json::json!({"principals": ["cluster.local/ns/web/sa/*"]}),
        );
        let web = "spiffe://cluster.local/ns/web/sa/frontend";
        let other = "spiffe://cluster.local/ns/other/sa/x";
        let s = |p: Option<&'static str>, path: &'static str| Subject {
            principal: p,
            path: Some(path),
            method: Some("GET"),
            host: Some("svc"),
            port: 80,
        };
        let ps = vec![deny_admin.clone(), allow_web.clone()];
        assert_eq!(authorize(&ps, &s(Some(web), "/")), Decision::Allow);
        assert!(matches!(
            authorize(&ps, &s(Some(web), "/admin/x")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            authorize(&ps, &s(Some(other), "/")),
            Decision::Deny(_)
        ));
        assert!(matches!(authorize(&ps, &s(None, "/")), Decision::Deny(_)));
        assert_eq!(authorize(&[deny_admin], &s(None, "/x")), Decision::Allow);
        assert_eq!(authorize(&[], &s(None, "/admin")), Decision::Allow);
    }

    #[test]
    fn namespaces_methods_hosts_ports() {
        let deny_ns = policy(1, serde_json::json!({"namespaces": ["bad"]}));
        let s = Subject {
            principal: Some("spiffe://cluster.local/ns/bad/sa/x"),
            path: Some("/"),
            method: Some("GET"),
            host: Some("Svc.Example."),
            port: 8080,
        };
        assert!(matches!(authorize(&[deny_ns], &s), Decision::Deny(_)));
        let allow = policy(
            0,
            serde_json::json!({"methods": ["get"], "hosts": ["svc.example"], "ports": [8080]}),
        );
        assert_eq!(authorize(std::slice::from_ref(&allow), &s), Decision::Allow);
        let s2 = Subject { port: 9090, ..s };
        assert!(matches!(authorize(&[allow], &s2), Decision::Deny(_)));
    }

    #[test]
    fn tcp_fails_closed_on_http_fields() {
        let allow_path = policy(0, serde_json::json!({"paths": ["/x"]}));
        let tcp = Subject {
            principal: None,
            path: None,
            method: None,
            host: None,
            port: 5432,
        };
        assert!(matches!(authorize(&[allow_path], &tcp), Decision::Deny(_)));
        let deny_path = policy(1, serde_json::json!({"paths": ["/x"], "ports": [5432]}));
        assert!(matches!(authorize(&[deny_path], &tcp), Decision::Deny(_)));
    }
}
