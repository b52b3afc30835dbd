//! The config stream over real mTLS on loopback: a controller in local mode
//! (a directory of YAML) and gRPC clients holding certificates from a real
//! mesh-ca authority.

mod common;

use std::time::Duration;

use common::{issue, names, service, slice, start};
use mesh_controller::testing::{write_atomic as write, Stream};
use mesh_proto::config::v1::{discovery_request, DiscoveryRequest, DiscoveryResponse, Nack};

#[tokio::test]
async fn full_then_incremental_updates_and_removals() {
    let f = start().await;
    let me = issue(&f.ca, "shop", "web");
    let mut s = Stream::open(f.controller.grpc_addr, &me, "shop", "web", "")
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    assert!(first.full);
    // Its own namespace only: not other/private.
    assert_eq!(
        names(&first),
        ["cart.shop.svc.cluster.local", "web.shop.svc.cluster.local"]
    );
    let config = first.config.as_ref().unwrap();
    assert!(
        !config.trust_bundle_pem.is_empty(),
        "the trust bundle is sent"
    );
    assert!(config.inbound.is_some());
    s.ack(&first).await;

    // An endpoint change: only that service, incrementally.
    write(
        &f.dir,
        "web.yaml",
        &(service("shop", "web") + "---\n" + &slice("shop", "web", &["10.0.0.1", "10.0.0.2"])),
    );
    let update = s.next().await.unwrap();
    assert!(!update.full);
    assert_eq!(names(&update), ["web.shop.svc.cluster.local"]);
    let web = &update.config.as_ref().unwrap().services[0];
    assert_eq!(web.endpoints.len(), 2);
    assert_eq!(web.endpoints[1].ports.get(&80), Some(&8080));
    assert_ne!(update.version, first.version);
    s.ack(&update).await;

    // A deletion.
    std::fs::remove_file(f.dir.join("cart.yaml")).unwrap();
    let removal = s.next().await.unwrap();
    assert!(!removal.full);
    assert_eq!(removal.removed_services, ["cart.shop.svc.cluster.local"]);
    assert!(names(&removal).is_empty());
    s.ack(&removal).await;

    // The sync registry shows the proxy in sync at that version.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let latest = f.controller.snapshots.borrow().as_ref().unwrap().version;
    let report = f.controller.sync.report(latest);
    assert_eq!(report.proxies.len(), 1);
    assert_eq!(report.proxies[0].proxy.acked, removal.version);
    assert_eq!(report.proxies[0].status, "SYNCED");
    f.controller.shutdown().await;
}

#[tokio::test]
async fn a_hello_for_another_identity_is_refused() {
    let f = start().await;
    let me = issue(&f.ca, "shop", "web");
    let mut s = match Stream::open(f.controller.grpc_addr, &me, "shop", "admin", "").await {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
            return;
        }
    };
    let e = s.next().await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message()
            .contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{e}"
    );
    f.controller.shutdown().await;
}

#[tokio::test]
async fn a_nack_makes_the_next_response_full_and_resume_skips_known_content() {
    let f = start().await;
    let me = issue(&f.ca, "shop", "web");
    let mut s = Stream::open(f.controller.grpc_addr, &me, "shop", "web", "")
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    s.tx.send(DiscoveryRequest {
        kind: Some(discovery_request::Kind::Nack(Nack {
            version: first.version.clone(),
            nonce: first.nonce.clone(),
            reason: "services[0].ports: test refusal".into(),
        })),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let latest = f.controller.snapshots.borrow().as_ref().unwrap().version;
    let report = f.controller.sync.report(latest);
    assert_eq!(report.proxies[0].status, "NACKED");
    assert_eq!(
        report.proxies[0].proxy.nacked.as_ref().unwrap().1,
        "services[0].ports: test refusal"
    );
    write(&f.dir, "new.yaml", &service("shop", "new"));
    let next = s.next().await.unwrap();
    assert!(next.full, "after a NACK the controller resends everything");
    assert_eq!(names(&next).len(), 3);
    s.ack(&next).await;
    drop(s);

    // Reconnect claiming exactly this content: nothing is resent.
    let mut again = Stream::open(f.controller.grpc_addr, &me, "shop", "web", &next.version)
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), again.rx.message()).await;
    assert!(
        quiet.is_err(),
        "no response for content the proxy has: {quiet:?}"
    );
    // Another version: a full response.
    let mut stale = Stream::open(
        f.controller.grpc_addr,
        &me,
        "shop",
        "web",
        "1.0123456789abcdef",
    )
    .await
    .unwrap();
    assert!(stale.next().await.unwrap().full);
    f.controller.shutdown().await;
}

#[tokio::test]
async fn an_invalid_update_keeps_the_last_good_route_and_says_why() {
    let f = start().await;
    let vs = |regex: &str| {
        format!(
            "apiVersion: networking.mesh.dev/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hosts: [web]\n  http:\n    - match: [{{uri: {{regex: \"{regex}\"}}}}]\n      route: [{{destination: {{host: web}}}}]\n"
        )
    };
    write(&f.dir, "vs.yaml", &vs("^/good/.*"));
    let me = issue(&f.ca, "shop", "web");
    let mut s = Stream::open(f.controller.grpc_addr, &me, "shop", "web", "")
        .await
        .unwrap();
    let mut r = s.next().await.unwrap();
    let route_regex = |r: &DiscoveryResponse| {
        r.config
            .as_ref()
            .unwrap()
            .services
            .iter()
            .find(|s| s.name.starts_with("web."))
            .map(|s| format!("{:?}", s.http_routes[0].matches[0].uri))
    };
    // The first response may predate the VirtualService.
    while route_regex(&r).is_none_or(|m| !m.contains("good")) {
        s.ack(&r).await;
        r = s.next().await.unwrap();
    }
    s.ack(&r).await;
    write(&f.dir, "vs.yaml", &vs("^/bad/(unclosed"));
    // The status says why; the model keeps the last good route.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snap = f.controller.snapshots.borrow().clone().unwrap();
        let st = snap
            .statuses
            .iter()
            .find(|s| s.resource.name == "web")
            .unwrap()
            .clone();
        if !st.accepted {
            assert!(
                st.message.contains("spec.http[0].match[0].uri"),
                "{}",
                st.message
            );
            assert!(
                st.message.contains("last accepted version stays"),
                "{}",
                st.message
            );
            let web = snap.services.get("web.shop.svc.cluster.local").unwrap();
            assert!(format!("{:?}", web.proto.http_routes[0].matches[0].uri).contains("good"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never turned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing was pushed for the invalid version.
    let quiet = tokio::time::timeout(Duration::from_millis(300), s.rx.message()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    f.controller.shutdown().await;
}
