//! Checks of single values; each returns the message for a field's error.

use std::net::IpAddr;

use crate::duration::parse_duration;
use crate::networking::StringMatch;

/// Retry conditions the proxy implements (besides numeric status codes).
const RETRY_ON: [&str; 6] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    // Always on in our proxy (a refused stream never reached the app);
    // accepted so that Istio configs that name it validate.
    "refused-stream",
    "retriable-status-codes",
];

pub(super) fn check_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port {port} must be in 1..=65535"))
    }
}

pub(super) fn check_percent(value: f64) -> Result<(), String> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("percentage {value} must be in 0..=100"))
    }
}

pub(super) fn check_duration(value: &str) -> Result<(), String> {
    parse_duration(value).map(|_| ()).map_err(|e| e.to_string())
}

/// A duration that means something only above zero.
pub(super) fn check_positive_duration(value: &str) -> Result<(), String> {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => Err(format!("duration {value:?} must be more than 0")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// An RFC 1123 label: lowercase letters, digits and `-`, at most 63.
pub(super) fn check_dns_label(value: &str) -> Result<(), String> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} must be a DNS label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ))
    }
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253.
pub(super) fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.len() <= 253 && value.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!("{value:?} must be a lowercase DNS name (RFC 1123)"))
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A host name as resources write it: a DNS name, optionally `*.`-prefixed
/// when `wildcard` is allowed.
pub(super) fn check_host(host: &str, wildcard: bool) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".to_string());
    }
    let name = match host.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => return Err(format!("host {host:?} must not be a wildcard here")),
        None => host,
    };
    if name.contains('*') {
        return Err(format!(
            "host {host:?}: a wildcard is only allowed as a leading \"*.\""
        ));
    }
    if name.len() <= 253 && name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "host {host:?} must be a lowercase DNS name (RFC 1123){}",
            if wildcard {
                ", optionally starting with \"*.\""
            } else {
                ""
            }
        ))
    }
}

/// Whether `pattern` (a host, maybe `*.`-prefixed) covers `host`.
pub(super) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

/// A gateway reference in a VirtualService: `mesh`, `name` or `namespace/name`.
pub(super) fn check_gateway_ref(gw: &str) -> Result<(), String> {
    let ok = match gw.split_once('/') {
        Some((ns, name)) => is_dns_label(ns) && check_dns_subdomain(name).is_ok(),
        None => check_dns_subdomain(gw).is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "gateway {gw:?} must be \"mesh\", a Gateway name or namespace/name"
        ))
    }
}

/// A Gateway server host: `[namespace/]host`, namespace `.`, `*` or a name.
pub(super) fn check_gateway_host(value: &str) -> Result<(), String> {
    let (ns, host) = value.split_once('/').unwrap_or(("*", value));
    if ns != "*" && ns != "." && !is_dns_label(ns) {
        return Err(format!(
            "{value:?}: namespace part must be \".\", \"*\" or a namespace name"
        ));
    }
    if host == "*" {
        Ok(())
    } else {
        check_host(host, true)
    }
}

/// At most one kind of match; exactly one unless `allow_empty`; a regex compiles.
pub(super) fn check_string_match(m: &StringMatch, allow_empty: bool) -> Result<(), String> {
    let set = usize::from(m.exact.is_some())
        + usize::from(m.prefix.is_some())
        + usize::from(m.regex.is_some());
    if set > 1 {
        return Err("set only one of exact, prefix and regex".to_string());
    }
    if set == 0 && !allow_empty {
        return Err("one of exact, prefix and regex is required".to_string());
    }
    if let Some(re) = &m.regex {
        regex::Regex::new(re).map_err(|e| format!("invalid regex {re:?}: {}", regex_reason(&e)))?;
    }
    Ok(())
}

/// The one-line reason of a regex error (its Display spans several lines
/// with a caret under the problem).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// An HTTP header name (RFC 9110 token); lowercase when used in a match,
/// as Istio requires.
pub(super) fn check_header_name(name: &str, lowercase: bool) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if lowercase && name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("header name {name:?} must be lowercase"));
    }
    Ok(())
}

pub(super) fn check_uri_path(uri: &str) -> Result<(), String> {
    if uri.starts_with('/') && !uri.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(format!("{uri:?} must be a path starting with '/'"))
    }
}

/// `host` or `host:port`.
pub(super) fn check_authority(authority: &str) -> Result<(), String> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u32>().is_ok_and(|n| check_port(n).is_ok()));
    let host_ok = host.parse::<IpAddr>().is_ok() || check_host(host, false).is_ok();
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("{authority:?} must be host or host:port"))
    }
}

pub(super) fn check_retry_on(value: &str) -> Result<(), String> {
    for cond in value.split(',').map(str::trim) {
        let status = cond.parse::<u32>().is_ok_and(|n| (100..=599).contains(&n));
        if !status && !RETRY_ON.contains(&cond) {
            return Err(format!(
                "unsupported retry condition {cond:?} (supported: {}, or a status code)",
                RETRY_ON.join(", ")
            ));
        }
    }
    Ok(())
}

pub(super) fn check_ip_or_cidr(value: &str) -> Result<(), String> {
    let ok = match value.split_once('/') {
        None => value.parse::<IpAddr>().is_ok(),
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} must be an IP address or CIDR"))
    }
}

/// An authorization value: non-empty, `*` only as the first or last character.
pub(super) fn check_wildcard_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    let inner = value.strip_prefix('*').unwrap_or(value);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') {
        return Err(format!(
            "{value:?}: '*' is only allowed at the start or the end"
        ));
    }
    Ok(())
}

pub(super) fn check_method(value: &str) -> Result<(), String> {
    if value == "*" || (!value.is_empty() && value.bytes().all(|b| b.is_ascii_uppercase())) {
        Ok(())
    } else {
        Err(format!(
            "method {value:?} must be an uppercase HTTP method (e.g. GET) or \"*\""
        ))
    }
}

pub(super) fn check_auth_path(value: &str) -> Result<(), String> {
    check_wildcard_value(value)?;
    if value.starts_with('/') || value.starts_with('*') {
        Ok(())
    } else {
        Err(format!("path {value:?} must start with '/' or '*'"))
    }
}
