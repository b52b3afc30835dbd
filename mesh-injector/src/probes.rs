//! Kubelet probes under STRICT mTLS.
//!
//! The kubelet probes from the node, in plain text, so once the app's port
//! only accepts mesh mTLS its probes would fail. Excluding probed ports from
//! the redirect would open the app port to plain text from anywhere in the
//! cluster, so instead each `httpGet`, `tcpSocket` and `grpc` probe of an app
//! container is rewritten to an `httpGet` on the proxy's port 15020 (which is
//! never redirected) at `/app-health/<container>/<livez|readyz|startupz>`.
//! The original handlers go to the proxy in the `MESH_APP_PROBES`
//! environment variable; the proxy runs the original check against
//! `POD_IP:<port>` (its own connections bypass the redirect) and answers the
//! kubelet with the outcome. Only the probe's own check is exposed, not the
//! port. `exec` probes run inside the container and need nothing.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

/// Environment variable of the proxy that holds the original probes: a JSON
/// object from the rewritten path to the original check (see the module doc).
pub const APP_PROBES_ENV: &str = "MESH_APP_PROBES";
/// Path prefix of the rewritten probes on the proxy's metrics port.
pub const APP_HEALTH_PREFIX: &str = "/app-health";

/// The rewritten probes of one pod.
#[derive(Debug, Default)]
pub(crate) struct ProbeRewrite {
    /// `replace` operations, with paths into the pod as it was.
    pub ops: Vec<PatchOperation>,
    /// Rewritten path → original check, for [`APP_PROBES_ENV`].
    pub probes: BTreeMap<String, Value>,
}

/// Kubernetes' probe fields and the path segment each one gets.
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The probe of `field` of a container.
fn probe<'c>(c: &'c Container, field: &str) -> Option<&'c Probe> {
    match field {
        "livenessProbe" => c.liveness_probe.as_ref(),
        "readinessProbe" => c.readiness_probe.as_ref(),
        _ => c.startup_probe.as_ref(),
    }
}

/// A probe port as a number: named ports are looked up in the container's
/// ports. `None` when it cannot be resolved (the kubelet would fail the same
/// probe; we leave it as it is rather than refuse a pod the API server
/// accepts), or when it is one of the proxy's own ports.
fn resolve_port(c: &Container, port: &IntOrString) -> Option<i32> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))?
                .container_port
        }
    };
    let proxy_port = mesh_api::ports::PROXY_PORTS
        .iter()
        .any(|p| i32::from(*p) == n);
    (1..=65535)
        .contains(&n)
        .then_some(n)
        .filter(|_| !proxy_port)
}

/// The original check as the proxy needs it, or `None` when the probe is not
/// one to rewrite (exec, an explicit `host`, unresolvable port).
fn original_check(c: &Container, p: &Probe) -> Option<Value> {
    let timeout = p.timeout_seconds.unwrap_or(1);
    if let Some(h) = &p.http_get {
        // A probe with `host` set does not reach this pod at all.
        if h.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        let port = resolve_port(c, &h.port)?;
        let mut get = json!({
            "path": h.path.as_deref().unwrap_or("/"),
            "port": port,
            "scheme": h.scheme.as_deref().unwrap_or("HTTP"),
        });
        if let Some(headers) = h.http_headers.as_ref().filter(|h| !h.is_empty()) {
            get["httpHeaders"] = serde_json::to_value(headers).ok()?;
        }
        return Some(json!({ "httpGet": get, "timeoutSeconds": timeout }));
    }
    if let Some(t) = &p.tcp_socket {
        if t.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        let port = resolve_port(c, &t.port)?;
        return Some(json!({ "tcpSocket": { "port": port }, "timeoutSeconds": timeout }));
    }
    if let Some(g) = &p.grpc {
        let port = resolve_port(c, &IntOrString::Int(g.port))?;
        return Some(json!({
            "grpc": { "port": port, "service": g.service.as_deref().unwrap_or("") },
            "timeoutSeconds": timeout,
        }));
    }
    None
}

/// Rewrites the probes of `containers`, found at `base` (e.g.
/// `["spec", "containers"]`) in the pod. `only` filters which containers
/// count (init containers: only restartable sidecars have probes).
pub(crate) fn rewrite(
    out: &mut ProbeRewrite,
    base: [&str; 2],
    containers: &[Container],
    only: impl Fn(&Container) -> bool,
) -> Result<(), serde_json::Error> {
    for (i, c) in containers.iter().enumerate() {
        if !only(c) {
            continue;
        }
        for (field, kind) in PROBES {
            let Some(p) = probe(c, field) else { continue };
            let Some(check) = original_check(c, p) else {
                continue;
            };
            let path = format!("{APP_HEALTH_PREFIX}/{}/{kind}", c.name);
            let rewritten = Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(path.clone()),
                    port: IntOrString::Int(i32::from(mesh_api::ports::PROXY_METRICS)),
                    scheme: Some("HTTP".into()),
                    ..Default::default()
                }),
                tcp_socket: None,
                grpc: None,
                exec: None,
                ..p.clone()
            };
            let index = i.to_string();
            out.ops.push(PatchOperation::Replace(ReplaceOperation {
                path: PointerBuf::from_tokens([base[0], base[1], index.as_str(), field]),
                value: serde_json::to_value(&rewritten)?,
            }));
            out.probes.insert(path, check);
        }
    }
    Ok(())
}
