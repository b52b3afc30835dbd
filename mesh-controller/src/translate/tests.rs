use super::*;
use crate::world::{Change, Object};

fn vs(name: &str, created: &str, host: &str, regex: &str) -> Arc<MeshResource> {
    let yaml = format!(
        "apiVersion: networking.mesh.dev/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [{host}]\n  http:\n    - match: [{{uri: {{regex: \"{regex}\"}}}}]\n      route: [{{destination: {{host: {host}}}}}]\n"
    );
    Arc::new(mesh_api::parse_yaml(&yaml).unwrap().remove(0))
}

fn service(name: &str) -> Object {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
    );
    Object::Service(Arc::new(serde_yaml::from_str(&yaml).unwrap()))
}

fn status<'a>(s: &'a Snapshot, name: &str) -> &'a ResourceStatus {
    s.statuses
        .iter()
        .find(|st| st.resource.name == name)
        .unwrap()
}

fn regex_of(s: &Snapshot, host: &str) -> String {
    format!("{:?}", s.services[host].proto.http_routes[0].matches[0].uri)
}

const WEB: &str = "web.shop.svc.cluster.local";

#[test]
fn export_lists() {
    assert_eq!(Export::parse("*"), Export::All);
    assert_eq!(Export::parse("a, b,*"), Export::All);
    let e = Export::parse(". , a,b");
    assert!(e.allows("own", "own") && e.allows("own", "a") && !e.allows("own", "c"));
    assert!(!Export::parse("").allows("own", "x"));
}

#[test]
fn port_protocol_from_app_protocol_then_name() {
    let port = |name: &str, app: Option<&str>| KubeServicePort {
        name: Some(name.into()),
        app_protocol: app.map(String::from),
        port: 80,
        ..Default::default()
    };
    assert_eq!(port_protocol(&port("http-web", None)), pb::Protocol::Http1);
    assert_eq!(port_protocol(&port("grpc", None)), pb::Protocol::Grpc);
    assert_eq!(
        port_protocol(&port("web", Some("kubernetes.io/h2c"))),
        pb::Protocol::Http2
    );
    assert_eq!(
        port_protocol(&port("http", Some("grpc"))),
        pb::Protocol::Grpc
    );
    assert_eq!(
        port_protocol(&port("metrics", None)),
        pb::Protocol::Unspecified
    );
}

#[test]
fn an_invalid_new_version_keeps_the_last_good_one() {
    let mut world = World::default();
    world.apply(Change::Upsert(service("web")));
    world.apply(Change::Upsert(Object::Mesh(vs(
        "web",
        "2026-01-01T00:00:00Z",
        "web",
        "^/good",
    ))));
    let mut t = Translator::new(TranslateConfig::default());
    let s1 = t.build(&world, None, Arc::default());
    assert!(status(&s1, "web").accepted);
    assert!(regex_of(&s1, WEB).contains("good"));

    world.apply(Change::Upsert(Object::Mesh(vs(
        "web",
        "2026-01-01T00:00:00Z",
        "web",
        "(bad",
    ))));
    let s2 = t.build(&world, None, Arc::default());
    let st = status(&s2, "web");
    assert!(!st.accepted);
    assert_eq!(st.reason, "Invalid");
    assert!(
        st.message.contains("spec.http[0].match[0].uri"),
        "{}",
        st.message
    );
    assert!(
        regex_of(&s2, WEB).contains("good"),
        "the last good version stays"
    );
    // Unchanged content keeps its Arc: streams diff by pointer.
    assert!(Arc::ptr_eq(
        &s1.services[WEB].proto,
        &s2.services[WEB].proto
    ));

    // A resource that was never valid stays out.
    world.apply(Change::Upsert(Object::Mesh(vs(
        "other",
        "2026-01-02T00:00:00Z",
        "cart",
        "(bad",
    ))));
    world.apply(Change::Upsert(service("cart")));
    let s3 = t.build(&world, None, Arc::default());
    assert!(!status(&s3, "other").accepted);
    assert!(!status(&s3, "other").message.contains("stays in effect"));
    assert!(s3.services["cart.shop.svc.cluster.local"]
        .proto
        .http_routes
        .is_empty());
}

#[test]
fn of_two_virtual_services_for_one_host_the_older_wins() {
    let mut world = World::default();
    world.apply(Change::Upsert(service("web")));
    world.apply(Change::Upsert(Object::Mesh(vs(
        "b-old",
        "2026-01-01T00:00:00Z",
        "web",
        "^/old",
    ))));
    world.apply(Change::Upsert(Object::Mesh(vs(
        "a-new",
        "2026-02-01T00:00:00Z",
        "web",
        "^/new",
    ))));
    let mut t = Translator::new(TranslateConfig::default());
    let s = t.build(&world, None, Arc::default());
    assert!(status(&s, "b-old").accepted);
    let st = status(&s, "a-new");
    assert!(!st.accepted);
    assert!(
        st.message
            .contains("already claimed by VirtualService shop/b-old"),
        "{}",
        st.message
    );
    assert!(regex_of(&s, WEB).contains("old"));
}

#[test]
fn incremental_builds_touch_only_named_services() {
    let mut world = World::default();
    world.apply(Change::Upsert(service("web")));
    world.apply(Change::Upsert(service("cart")));
    let mut t = Translator::new(TranslateConfig::default());
    let s1 = t.build(&world, None, Arc::default());
    let slice = serde_yaml::from_str(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.9]}]\n",
    )
    .unwrap();
    let touched = world.apply(Change::Upsert(Object::EndpointSlice(Arc::new(slice))));
    assert!(!touched.full);
    let s2 = t.build(&world, Some(&touched.services), Arc::default());
    assert_eq!(s2.version, s1.version + 1);
    assert_eq!(s2.services[WEB].proto.endpoints[0].address, "10.0.0.9");
    let cart = "cart.shop.svc.cluster.local";
    assert!(Arc::ptr_eq(
        &s1.services[cart].proto,
        &s2.services[cart].proto
    ));
    assert_ne!(s1.services[WEB].hash, s2.services[WEB].hash);
}
