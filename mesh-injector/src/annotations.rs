//! Pod annotations the injector reads and writes, and their parsers. A bad
//! value is an [`AnnotationError`] that names the annotation, so the webhook
//! can deny the pod with a message the user can act on.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// `"true"` opts a pod in outside labelled namespaces, `"false"` opts it
/// out. Also read as a pod *label* (the webhook's object selector can only
/// see labels).
pub const INJECT: &str = mesh_api::INJECT_ANNOTATION;
/// Written on every injected pod; the value is the injector's version.
pub const INJECTED: &str = "mesh.dev/injected";
/// Inbound ports that bypass the proxy (comma-separated).
pub const EXCLUDE_INBOUND_PORTS: &str = "mesh.dev/exclude-inbound-ports";
/// Inbound ports that go through the proxy: comma-separated, or `*` (all,
/// the default).
pub const INCLUDE_INBOUND_PORTS: &str = "mesh.dev/include-inbound-ports";
/// Outbound destination ports that bypass the proxy (comma-separated).
pub const EXCLUDE_OUTBOUND_PORTS: &str = "mesh.dev/exclude-outbound-ports";
/// Outbound destination IPv4 CIDRs that bypass the proxy (comma-separated).
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "mesh.dev/exclude-outbound-cidrs";
/// CPU request of the proxy (Kubernetes quantity).
pub const PROXY_CPU: &str = "mesh.dev/proxy-cpu";
/// Memory request of the proxy.
pub const PROXY_MEMORY: &str = "mesh.dev/proxy-memory";
/// CPU limit of the proxy.
pub const PROXY_CPU_LIMIT: &str = "mesh.dev/proxy-cpu-limit";
/// Memory limit of the proxy.
pub const PROXY_MEMORY_LIMIT: &str = "mesh.dev/proxy-memory-limit";
/// `"false"` keeps the app's probes as they are.
pub const REWRITE_PROBES: &str = "mesh.dev/rewrite-probes";

/// A pod annotation (or label) with a value the injector cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} {reason}")]
pub struct AnnotationError {
    /// The annotation's key.
    pub annotation: String,
    /// The value found.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(annotation: &str, value: &str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `"true"` or `"false"`, nothing else: a typo must not silently mean one of
/// them.
pub fn parse_bool(annotation: &str, value: &str) -> Result<bool, AnnotationError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(annotation, value, "is not \"true\" or \"false\"")),
    }
}

/// A comma-separated list of ports (1–65535), as `mesh-proxy init` reads it.
/// Returned normalised (`"8080,9090"`).
pub fn parse_ports(annotation: &str, value: &str) -> Result<String, AnnotationError> {
    let mut out = Vec::new();
    for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p.parse::<u16>() {
            Ok(n) if n != 0 => out.push(n.to_string()),
            _ => {
                return Err(bad(
                    annotation,
                    value,
                    format!("has {p:?}, which is not a port (1-65535)"),
                ))
            }
        }
    }
    Ok(out.join(","))
}

/// Like [`parse_ports`], or `*` for every port.
pub fn parse_include_ports(annotation: &str, value: &str) -> Result<String, AnnotationError> {
    if value.trim() == "*" {
        return Ok("*".into());
    }
    parse_ports(annotation, value)
}

/// A comma-separated list of IPv4 CIDRs (a bare address means /32):
/// `mesh-proxy init` writes IPv4 rules only, so anything else would make the
/// init container fail at pod start instead of here.
pub fn parse_cidrs(annotation: &str, value: &str) -> Result<String, AnnotationError> {
    let mut out = Vec::new();
    for c in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (ip, len) = c.split_once('/').unwrap_or((c, "32"));
        if ip.parse::<Ipv4Addr>().is_err() {
            return Err(bad(
                annotation,
                value,
                format!("has {c:?}, which is not an IPv4 CIDR (e.g. 10.0.0.0/8)"),
            ));
        }
        match len.parse::<u8>() {
            Ok(l) if l <= 32 => out.push(format!("{ip}/{l}")),
            _ => {
                return Err(bad(
                    annotation,
                    value,
                    format!("has {c:?}, whose prefix length is not 0-32"),
                ))
            }
        }
    }
    Ok(out.join(","))
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1e3`), checked
/// with the API server's grammar so that a typo is refused with the
/// annotation's name rather than by pod validation with a field path the user
/// never wrote. Negative values are refused.
pub fn parse_quantity(annotation: &str, value: &str) -> Result<String, AnnotationError> {
    const SUFFIXES: [&str; 16] = [
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let v = value.trim();
    let v_unsigned = v.strip_prefix('+').unwrap_or(v);
    let num_end = v_unsigned
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v_unsigned.len());
    let (num, suffix) = v_unsigned.split_at(num_end);
    let num_ok = !num.is_empty()
        && num != "."
        && num.matches('.').count() <= 1
        && num.chars().any(|c| c.is_ascii_digit());
    let exponent_ok = |s: &str| {
        let Some(rest) = s.strip_prefix(['e', 'E']) else {
            return false;
        };
        let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    if num_ok && (SUFFIXES.contains(&suffix) || exponent_ok(suffix)) {
        Ok(v.to_string())
    } else {
        Err(bad(
            annotation,
            value,
            "is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)",
        ))
    }
}

/// A duration as `mesh-proxy run` parses it: one number and a unit of `ms`,
/// `s`, `m` or `h` (`250ms`, `5s`, `1.5m`).
pub fn parse_proxy_duration(annotation: &str, value: &str) -> Result<String, AnnotationError> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num_ok = num.parse::<f64>().is_ok_and(|n| n.is_finite());
    if num_ok && matches!(unit, "ms" | "s" | "m" | "h") {
        Ok(v.to_string())
    } else {
        Err(bad(
            annotation,
            value,
            "is not a duration of the form <number><ms|s|m|h> (e.g. 5s)",
        ))
    }
}

/// The per-pod settings found in annotations, already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSettings {
    /// `mesh.dev/exclude-inbound-ports`, normalised.
    pub exclude_inbound_ports: String,
    /// `mesh.dev/include-inbound-ports`, normalised (`*` by default).
    pub include_inbound_ports: String,
    /// `mesh.dev/exclude-outbound-ports`, normalised.
    pub exclude_outbound_ports: String,
    /// `mesh.dev/exclude-outbound-cidrs`, normalised.
    pub exclude_outbound_cidrs: String,
    /// `mesh.dev/proxy-cpu`.
    pub cpu_request: Option<String>,
    /// `mesh.dev/proxy-memory`.
    pub memory_request: Option<String>,
    /// `mesh.dev/proxy-cpu-limit`.
    pub cpu_limit: Option<String>,
    /// `mesh.dev/proxy-memory-limit`.
    pub memory_limit: Option<String>,
    /// `mesh.dev/rewrite-probes`, when set.
    pub rewrite_probes: Option<bool>,
}

impl PodSettings {
    /// Reads and validates every annotation the injector knows; the first bad
    /// one (in a fixed order) is the error.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Result<Self, AnnotationError> {
        let get = |k: &str| a.get(k).map(String::as_str);
        let list = |k: &str, parse: fn(&str, &str) -> Result<String, AnnotationError>| {
            get(k).map(|v| parse(k, v)).transpose()
        };
        let quantity = |k: &str| get(k).map(|v| parse_quantity(k, v)).transpose();
        Ok(Self {
            exclude_inbound_ports: list(EXCLUDE_INBOUND_PORTS, parse_ports)?.unwrap_or_default(),
            include_inbound_ports: list(INCLUDE_INBOUND_PORTS, parse_include_ports)?
                .unwrap_or_else(|| "*".into()),
            exclude_outbound_ports: list(EXCLUDE_OUTBOUND_PORTS, parse_ports)?.unwrap_or_default(),
            exclude_outbound_cidrs: list(EXCLUDE_OUTBOUND_CIDRS, parse_cidrs)?.unwrap_or_default(),
            cpu_request: quantity(PROXY_CPU)?,
            memory_request: quantity(PROXY_MEMORY)?,
            cpu_limit: quantity(PROXY_CPU_LIMIT)?,
            memory_limit: quantity(PROXY_MEMORY_LIMIT)?,
            rewrite_probes: get(REWRITE_PROBES)
                .map(|v| parse_bool(REWRITE_PROBES, v))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_normalised_and_checked() {
        assert_eq!(parse_ports("a", " 8080, 9090 ,").unwrap(), "8080,9090");
        assert_eq!(parse_ports("a", "").unwrap(), "");
        let e = parse_ports(EXCLUDE_INBOUND_PORTS, "8080,http").unwrap_err();
        assert_eq!(e.annotation, EXCLUDE_INBOUND_PORTS);
        assert!(e.to_string().contains("\"http\""), "{e}");
        assert!(parse_ports("a", "0").is_err());
        assert!(parse_ports("a", "65536").is_err());
        assert!(parse_ports("a", "-1").is_err());
        assert_eq!(parse_include_ports("a", " * ").unwrap(), "*");
        assert!(parse_include_ports("a", "*,80").is_err());
    }

    #[test]
    fn cidrs_are_ipv4_only() {
        assert_eq!(
            parse_cidrs("a", "10.0.0.0/8, 169.254.169.254").unwrap(),
            "10.0.0.0/8,169.254.169.254/32"
        );
        assert!(parse_cidrs("a", "10.0.0.0/33").is_err());
        assert!(parse_cidrs("a", "fd00::/8").is_err());
        assert!(parse_cidrs("a", "10.0.0/8").is_err());
        let e = parse_cidrs(EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/x").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("annotation mesh.dev/exclude-outbound-cidrs:"));
    }

    #[test]
    fn quantities_follow_the_api_server_grammar() {
        for ok in ["100m", "0.5", "1", "64Mi", "1Gi", "1e3", "2E-1", ".5", "+1"] {
            assert!(parse_quantity("a", ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "lots", "-1", "1.2.3", "64MiB", "1 Gi", "m", ".", "1e", "1x",
        ] {
            assert!(parse_quantity("a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_follow_the_proxy_grammar() {
        for ok in ["5s", "250ms", "1.5m", "24h"] {
            assert!(parse_proxy_duration("a", ok).is_ok(), "{ok}");
        }
        // The proxy reads one number and one unit; `1m30s` would stop it.
        for bad in ["", "5", "1m30s", "5 s", "s", "5d"] {
            assert!(parse_proxy_duration("a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bools_are_strict() {
        assert!(parse_bool("a", "true").unwrap());
        assert!(!parse_bool("a", "false").unwrap());
        assert!(parse_bool("a", "yes").is_err());
        assert!(parse_bool("a", "True").is_err());
    }

    #[test]
    fn settings_default_and_first_error() {
        let s = PodSettings::from_annotations(&BTreeMap::new()).unwrap();
        assert_eq!(s.include_inbound_ports, "*");
        assert_eq!(s.cpu_request, None);
        let a = BTreeMap::from([
            (PROXY_MEMORY_LIMIT.to_string(), "big".to_string()),
            (EXCLUDE_OUTBOUND_PORTS.to_string(), "53".to_string()),
        ]);
        let e = PodSettings::from_annotations(&a).unwrap_err();
        assert_eq!(e.annotation, PROXY_MEMORY_LIMIT);
        let a = BTreeMap::from([(REWRITE_PROBES.to_string(), "no".to_string())]);
        assert_eq!(
            PodSettings::from_annotations(&a).unwrap_err().annotation,
            REWRITE_PROBES
        );
    }
}
