//! Authorization bypass attempts at the inbound proxy: every spelling of a
//! path or host gets the decision its normalized form gets, and the app
//! receives exactly what was decided on (the normalized path, the decided
//! host), or the request is refused with 400 when it cannot be normalized
//! safely (encoded slashes and backslashes).
//!
//! Decisions documented here:
//! - Path matching is case-sensitive (as Istio's): `/ADMIN` is not `/admin`,
//!   and the app receives `/ADMIN`, the path that was allowed.
//! - A fragment never reaches the app: the request line parser drops it, so
//!   `/admin#x` is decided (and forwarded) as `/admin`.
//! - Only one level of percent-decoding: `/%2561dmin` is `/%2561dmin`, not
//!   `/admin` (an app that decodes twice is outside what the proxy can judge).
//! - Hosts compare case-insensitively, without the port and a trailing dot;
//!   the authority in an absolute URI (or HTTP/2 `:authority`) wins over a
//!   `Host` header, for the decision and for what the app receives.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::h2raw::{self, Outcome, RawH2};
use support::recorder::*;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// Each raw request path and what it normalizes to (`None`: refused, 400).
const PATHS: &[(&str, Option<&str>)] = &[
    ("/admin", Some("/admin")),
    ("/admin/x", Some("/admin/x")),
    ("//admin", Some("/admin")),
    ("///admin//x", Some("/admin/x")),
    ("/./admin", Some("/admin")),
    ("/x/../admin", Some("/admin")),
    ("/x/y/../../admin", Some("/admin")),
    ("/../admin", Some("/admin")),
    ("/%61dmin", Some("/admin")),
    ("/%61%64%6D%69%6E", Some("/admin")),
    ("/%2e%2e/admin", Some("/admin")),
    ("/%2E%2E/admin", Some("/admin")),
    ("/.%2e/admin", Some("/admin")),
    ("/%2e/admin", Some("/admin")),
    ("/public/%2e%2e/admin", Some("/admin")),
    ("/public/../admin", Some("/admin")),
    ("/public/./x", Some("/public/x")),
    ("//public//x", Some("/public/x")),
    ("/public/x/", Some("/public/x/")),
    ("/public/x?q=/../admin", Some("/public/x?q=/../admin")),
    ("/admin?x=1", Some("/admin?x=1")),
    ("/admin#frag", Some("/admin")),
    ("/public/x#/../../admin", Some("/public/x")),
    ("/ADMIN", Some("/ADMIN")),
    ("/%41DMIN", Some("/ADMIN")),
    ("/%2561dmin", Some("/%2561dmin")),
    ("/admin;jsessionid=1", Some("/admin;jsessionid=1")),
    ("/admin%00", Some("/admin%00")),
    ("%2Fadmin", None),
    ("/%2Fadmin", None),
    ("/admin%2F..", None),
    ("/admin%2f..", None),
    ("/public/..%2Fadmin", None),
    ("/public/%2e%2e%2Fadmin", None),
    ("/public\\..\\admin", None),
    ("/%5Cadmin", None),
    ("/public/%5c..%5cadmin", None),
    ("/admin%23x", None),
    ("/admin%zz", None),
];

/// The two policy sets under test, as the decision each makes for a
/// normalized path.
fn deny_admin(path: &str) -> u16 {
    if path.starts_with("/admin") {
        403
    } else {
        200
    }
}

fn allow_public(path: &str) -> u16 {
    if path.starts_with("/public/") {
        200
    } else {
        403
    }
}

const DENY_ADMIN: &str = r#"
    - name: app/deny-admin
      action: DENY
      rules: [{paths: ["/admin*"]}]
    - name: app/deny-internal-host
      action: DENY
      rules: [{hosts: ["internal.default.svc.cluster.local"]}]
"#;

const ALLOW_PUBLIC: &str = r#"
    - name: app/public-only
      action: ALLOW
      rules: [{paths: ["/public/*"]}]
"#;

/// An inbound proxy (PERMISSIVE: plaintext accepted) with `policies`,
/// forwarding to `app`.
async fn permissive_inbound(policies: &str, app: SocketAddr) -> TestProxy {
    inbound_only(
        &format!("inbound:\n  mode: PERMISSIVE\n  authorization:{policies}"),
        app,
    )
    .await
}

/// `GET target` over HTTP/1.1 with `host`: the status and the body.
async fn h1(addr: SocketAddr, target: &str, host: &str) -> (u16, String) {
    let answer = raw_exchange(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        WAIT,
    )
    .await;
    let status = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// The status of a raw HTTP/2 GET with `path` and `authority` (and any
/// `extra` fields), on a connection of its own.
async fn h2(addr: SocketAddr, path: &[u8], authority: &str, extra: &[(&str, &str)]) -> u16 {
    let mut fields = vec![
        (b":method".to_vec(), b"GET".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.to_vec()),
        (b":authority".to_vec(), authority.as_bytes().to_vec()),
    ];
    fields.extend(
        extra
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    let mut c = RawH2::connect(addr).await;
    c.send(&h2raw::headers_frame(1, &fields, true))
        .await
        .unwrap();
    match c.outcome(1, WAIT).await {
        Outcome::Response(Some(s), _) => s,
        // Refused by the HTTP/2 layer itself (a `:path` not starting with
        // `/`): as good as a 400 here.
        Outcome::Reset(h2raw::PROTOCOL_ERROR) => 400,
        other => panic!("{path:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_path_tricks_get_the_normalized_paths_decision_and_the_app_gets_that_path() {
    let app = recording_backend().await;
    for (policies, decide) in [
        (DENY_ADMIN, deny_admin as fn(&str) -> u16),
        (ALLOW_PUBLIC, allow_public),
    ] {
        let p = permissive_inbound(policies, app.addr).await;
        let inbound = p.running.inbound_addr.unwrap();
        for (raw, normalized) in PATHS {
            let before = app.requests().len();
            let (status, answer) = h1(inbound, raw, "web").await;
            let Some(norm) = normalized else {
                assert_eq!(status, 400, "{raw} is refused: {answer}");
                assert_eq!(app.requests().len(), before, "{raw} reached the app");
                continue;
            };
            let path_only = norm.split('?').next().unwrap();
            assert_eq!(status, decide(path_only), "{raw} ({norm}): {answer}");
            // The same decision as the normalized request itself.
            let (direct, _) = h1(inbound, norm, "web").await;
            assert_eq!(status, direct, "{raw} vs {norm}");
            let got: Vec<String> = app.requests()[before..]
                .iter()
                .map(|r| r.path.clone())
                .collect();
            if status == 200 {
                // What the app got is what was decided on, both times.
                assert_eq!(got, [*norm, *norm], "{raw}");
            } else {
                assert!(answer.contains("x-mesh-error: rbac"), "{raw}: {answer}");
                assert!(got.is_empty(), "{raw} reached the app: {got:?}");
            }
        }
        p.running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_host_tricks_get_the_normalized_hosts_decision() {
    let app = recording_backend().await;
    let p = permissive_inbound(DENY_ADMIN, app.addr).await;
    let inbound = p.running.inbound_addr.unwrap();
    for host in [
        "internal.default.svc.cluster.local",
        "INTERNAL.Default.svc.cluster.local",
        "internal.default.svc.cluster.local.",
        "Internal.Default.Svc.Cluster.Local.",
        "internal.default.svc.cluster.local:8080",
        "internal.default.svc.cluster.local.:8080",
    ] {
        let (status, answer) = h1(inbound, "/x", host).await;
        assert_eq!(status, 403, "{host}: {answer}");
    }
    for host in [
        "web.default.svc.cluster.local",
        "internal.default.svc.cluster.local.evil",
        "xinternal.default.svc.cluster.local",
    ] {
        let (status, answer) = h1(inbound, "/x", host).await;
        assert_eq!(status, 200, "{host}: {answer}");
    }
    let denied_host = |h: &str| {
        let h = h.to_ascii_lowercase();
        let h = h.rsplit_once(':').map_or(h.as_str(), |(h, _)| h);
        h.trim_end_matches('.') == "internal.default.svc.cluster.local"
    };
    assert_eq!(app.requests().len(), 3);
    assert!(app
        .requests()
        .iter()
        .all(|r| !denied_host(&r.header("host").unwrap())));
    // An absolute URI's authority is the host (RFC 9112 3.2.2): decided on,
    // and what the app gets in Host, whatever Host header came with it.
    let before = app.requests().len();
    let (status, answer) = h1(
        inbound,
        "http://web.default.svc.cluster.local/x",
        "internal.default.svc.cluster.local",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let reqs = app.requests();
    assert_eq!(reqs.len(), before + 1);
    assert_eq!(reqs[before].path, "/x", "origin-form to the app");
    assert_eq!(
        reqs[before].all("host"),
        ["web.default.svc.cluster.local"],
        "the app gets the host that was allowed"
    );
    let (status, answer) = h1(
        inbound,
        "http://INTERNAL.default.svc.cluster.local./x",
        "web.default.svc.cluster.local",
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(app.requests().len(), before + 1);
    // Paths in absolute URIs are normalized like any other.
    let (status, answer) = h1(inbound, "http://web/x/..//%61dmin", "web").await;
    assert_eq!(status, 403, "{answer}");
    p.running.shutdown().await;
}

/// The same over HTTP/2 (prior knowledge, as a plaintext client would
/// send it): the `:path` bytes are sent exactly as listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_path_and_authority_tricks_get_the_same_decisions() {
    let (app, seen) = hyper_recording_backend().await;
    for (policies, decide) in [
        (DENY_ADMIN, deny_admin as fn(&str) -> u16),
        (ALLOW_PUBLIC, allow_public),
    ] {
        let p = permissive_inbound(policies, app).await;
        let inbound = p.running.inbound_addr.unwrap();
        for (raw, normalized) in PATHS {
            let before = seen.lock().unwrap().len();
            let status = h2(inbound, raw.as_bytes(), "web", &[]).await;
            let Some(norm) = normalized else {
                assert_eq!(status, 400, "{raw} is refused");
                assert_eq!(seen.lock().unwrap().len(), before, "{raw} reached the app");
                continue;
            };
            let path_only = norm.split('?').next().unwrap();
            assert_eq!(status, decide(path_only), "{raw} ({norm})");
            assert_eq!(
                status,
                h2(inbound, norm.as_bytes(), "web", &[]).await,
                "{raw} vs {norm}"
            );
            let got: Vec<String> = seen.lock().unwrap()[before..]
                .iter()
                .map(|r| r.uri.path_and_query().unwrap().to_string())
                .collect();
            if status == 200 {
                assert_eq!(got, [*norm, *norm], "{raw}");
            } else {
                assert!(got.is_empty(), "{raw} reached the app: {got:?}");
            }
        }
        p.running.shutdown().await;
    }
    let p = permissive_inbound(DENY_ADMIN, app).await;
    let inbound = p.running.inbound_addr.unwrap();
    for authority in [
        "internal.default.svc.cluster.local",
        "INTERNAL.Default.svc.cluster.local.",
        "internal.default.svc.cluster.local.:80",
    ] {
        assert_eq!(h2(inbound, b"/x", authority, &[]).await, 403, "{authority}");
    }
    // `:authority` decides; a conflicting `host` field does not reach the app.
    let before = seen.lock().unwrap().len();
    let status = h2(
        inbound,
        b"/x",
        "web.default.svc.cluster.local",
        &[("host", "internal.default.svc.cluster.local")],
    )
    .await;
    assert_eq!(status, 200);
    let got = seen.lock().unwrap()[before].clone();
    assert_eq!(
        got.uri.authority().map(|a| a.as_str()),
        Some("web.default.svc.cluster.local")
    );
    assert!(got
        .headers
        .get_all("host")
        .iter()
        .all(|h| !h.as_bytes().starts_with(b"internal")));
    p.running.shutdown().await;
}
