//! One watch loop per kind: kube's watcher (relist + watch, with the
//! default backoff) turned into [`Change`]s.
//!
//! - `Init`, `InitApply`*, `InitDone` (a (re)list) become one
//!   [`Change::Replace`] with everything listed, so objects deleted while
//!   the watch was down disappear.
//! - `Apply` becomes [`Change::Upsert`]; `Delete` becomes [`Change::Delete`].
//! - Errors never end the loop: the watcher recovers on the next poll (after
//!   the backoff). They are logged once per streak (and every few minutes
//!   while it lasts), with a hint for the usual causes (CRD not installed,
//!   RBAC).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::world::{Change, Kind, ObjKey, Object};

/// What a watch loop reports to the source's forwarder.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A change to pass on.
    Change(Change),
    /// Listing the kind failed before its first complete list;
    /// `not_found` when the API server does not serve the kind at all.
    Unavailable { kind: Kind, not_found: bool },
}

/// What became of an applied object.
#[derive(Debug)]
pub(crate) enum Applied {
    /// Report it.
    Object(Object),
    /// It cannot be used (malformed). The mesh keeps the last version that
    /// could be read, when there is one, and treats it as absent otherwise.
    Rejected(ObjKey, Option<Object>),
}

/// How a watch loop handles the objects of one kind.
pub(crate) trait Handler<K>: Send + 'static {
    /// The collection the objects go to.
    fn kind(&self) -> Kind;
    /// The kind for people, plural: `Pods`, `virtualservices.networking.mesh.dev`.
    fn what(&self) -> &str;
    /// What a 404 on list means, when there is a likely reason (replaces
    /// the error in the log).
    fn not_found_hint(&self) -> Option<String> {
        None
    }
    /// A (re)list begins.
    fn relist_started(&mut self) {}
    /// A (re)list is complete.
    fn relist_done(&mut self) {}
    /// An object was listed, added or changed.
    fn apply(&mut self, obj: K) -> Applied;
    /// An object was deleted; returns its key.
    fn delete(&mut self, obj: K) -> ObjKey;
}

/// A built-in Kubernetes kind, converted by a function.
pub(crate) struct Builtin<K> {
    kind: Kind,
    what: &'static str,
    convert: fn(K) -> Object,
}

impl<K> Builtin<K> {
    pub fn new(kind: Kind, what: &'static str, convert: fn(K) -> Object) -> Self {
        Self {
            kind,
            what,
            convert,
        }
    }
}

impl<K> Handler<K> for Builtin<K>
where
    K: Resource + Send + 'static,
{
    fn kind(&self) -> Kind {
        self.kind
    }

    fn what(&self) -> &str {
        self.what
    }

    fn apply(&mut self, obj: K) -> Applied {
        Applied::Object((self.convert)(obj))
    }

    fn delete(&mut self, obj: K) -> ObjKey {
        ObjKey::of(&obj)
    }
}

/// Watches every object of `api` until `stop` or until `tx` closes,
/// reporting through `handler`.
pub(crate) async fn watch<K, H>(
    api: Api<K>,
    mut handler: H,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    H: Handler<K>,
{
    let kind = handler.kind();
    let mut events =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    let mut converter = Converter::default();
    let mut errors = ErrorStreak::default();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else {
            // The watcher never ends on its own; stop quietly if it does.
            warn!("watch of {} ended", handler.what());
            return;
        };
        let msg = match event {
            Ok(event) => {
                if !matches!(event, Event::Init) {
                    errors.recovered(handler.what());
                }
                converter.convert(&mut handler, event).map(Msg::Change)
            }
            Err(e) => {
                let not_found = is_not_found(&e);
                let hint = if not_found {
                    handler.not_found_hint()
                } else {
                    None
                };
                errors.record(handler.what(), &e, hint);
                (!converter.synced).then_some(Msg::Unavailable { kind, not_found })
            }
        };
        if let Some(msg) = msg {
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = tx.send(msg) => if sent.is_err() { return },
            }
        }
    }
}

/// Turns watcher events into changes, buffering (re)lists.
#[derive(Default)]
struct Converter {
    /// Objects of the (re)list in progress.
    relist: Option<Vec<Object>>,
    /// A first list completed.
    synced: bool,
}

impl Converter {
    fn convert<K, H: Handler<K>>(&mut self, handler: &mut H, event: Event<K>) -> Option<Change> {
        let kind = handler.kind();
        match event {
            Event::Init => {
                debug!("listing {}", handler.what());
                self.relist = Some(Vec::new());
                handler.relist_started();
                None
            }
            Event::InitApply(obj) => {
                if let Applied::Object(obj) | Applied::Rejected(_, Some(obj)) = handler.apply(obj) {
                    self.relist.get_or_insert_with(Vec::new).push(obj);
                }
                None
            }
            Event::InitDone => {
                handler.relist_done();
                let objects = self.relist.take().unwrap_or_default();
                debug!(count = objects.len(), "listed {}", handler.what());
                self.synced = true;
                Some(Change::Replace(kind, objects))
            }
            Event::Apply(obj) => Some(match handler.apply(obj) {
                Applied::Object(obj) => Change::Upsert(obj),
                Applied::Rejected(_, Some(last_good)) => Change::Upsert(last_good),
                Applied::Rejected(key, None) => Change::Delete(kind, key),
            }),
            Event::Delete(obj) => Some(Change::Delete(kind, handler.delete(obj))),
        }
    }
}

fn api_error(e: &watcher::Error) -> Option<&kube::Error> {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        _ => None,
    }
}

/// The HTTP status code of an API error. (kube's `Status::is_not_found`
/// and friends compare the reason only, and a plain 404 from a path the API
/// server does not serve, such as a missing CRD, carries no reason.)
fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::WatchError(s) => Some(s.code),
        _ => match api_error(e) {
            Some(kube::Error::Api(s)) => Some(s.code),
            _ => None,
        },
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    status_code(e) == Some(404)
}

fn is_forbidden(e: &watcher::Error) -> bool {
    status_code(e) == Some(403)
}

/// An object the typed watcher could not decode: it is skipped (the watch
/// goes on), so say so loudly.
fn is_decode_error(e: &watcher::Error) -> bool {
    matches!(api_error(e), Some(kube::Error::SerdeError(_)))
}

/// How often a lasting failure is logged again at `warn`.
const REPEAT_WARNING: Duration = Duration::from_secs(300);

/// Logs a streak of errors once at `warn` (then at `debug`, and again at
/// `warn` every [`REPEAT_WARNING`]), and the recovery at `info`.
#[derive(Default)]
struct ErrorStreak {
    count: u64,
    last_warning: Option<Instant>,
}

impl ErrorStreak {
    fn record(&mut self, what: &str, e: &watcher::Error, hint: Option<String>) {
        if is_decode_error(e) && matches!(e, watcher::Error::WatchFailed(_)) {
            // One event lost; the watch goes on.
            error!(
                "watching {what}: an object could not be decoded and was skipped: {e}; \
                 the mesh keeps its previous version until the object changes again"
            );
            return;
        }
        self.count += 1;
        // A missing CRD's 404 says nothing useful beyond the hint.
        let text = match hint {
            Some(hint) => hint,
            None if is_forbidden(e) => {
                format!("{e} (forbidden: the controller's RBAC must allow list and watch)")
            }
            None => e.to_string(),
        };
        let due = self
            .last_warning
            .is_none_or(|t| t.elapsed() >= REPEAT_WARNING);
        if due {
            self.last_warning = Some(Instant::now());
            warn!(
                failures = self.count,
                "watching {what}: {text}; retrying with backoff"
            );
        } else {
            debug!(failures = self.count, "watching {what}: {text}; retrying");
        }
    }

    fn recovered(&mut self, what: &str) {
        if self.count > 0 {
            info!(failures = self.count, "watching {what} again");
        }
        self.count = 0;
        self.last_warning = None;
    }
}

/// The default converters of the built-in kinds.
pub(crate) mod builtin {
    use super::*;
    use crate::world::{NamespaceInfo, PodInfo};
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    pub fn services() -> Builtin<Service> {
        Builtin::new(Kind::Service, "Services", |s| Object::Service(Arc::new(s)))
    }

    pub fn endpoint_slices() -> Builtin<EndpointSlice> {
        Builtin::new(Kind::EndpointSlice, "EndpointSlices", |s| {
            Object::EndpointSlice(Arc::new(s))
        })
    }

    pub fn pods() -> Builtin<Pod> {
        Builtin::new(Kind::Pod, "Pods", |p| {
            Object::Pod(Arc::new(PodInfo::from_pod(&p)))
        })
    }

    pub fn namespaces() -> Builtin<Namespace> {
        Builtin::new(Kind::Namespace, "Namespaces", |n| {
            Object::Namespace(Arc::new(NamespaceInfo::from_namespace(&n)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::Status;
    use serde_json::json;

    fn pod(name: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"containers": [], "serviceAccountName": "sa"},
            "status": {"podIPs": [{"ip": ip}]},
        }))
        .expect("a pod")
    }

    fn keys(change: &Change) -> Vec<String> {
        match change {
            Change::Replace(_, objs) => objs.iter().map(|o| o.key().to_string()).collect(),
            Change::Upsert(o) => vec![o.key().to_string()],
            Change::Delete(_, k) => vec![k.to_string()],
        }
    }

    #[test]
    fn relist_is_one_replace_and_live_events_pass_through() {
        let mut h = builtin::pods();
        let mut c = Converter::default();
        assert!(c.convert(&mut h, Event::Init).is_none());
        assert!(c
            .convert(&mut h, Event::InitApply(pod("a", "10.0.0.1")))
            .is_none());
        assert!(c
            .convert(&mut h, Event::InitApply(pod("b", "10.0.0.2")))
            .is_none());
        assert!(!c.synced);
        let replace = c.convert(&mut h, Event::InitDone).expect("replace");
        assert!(matches!(replace, Change::Replace(Kind::Pod, _)));
        assert_eq!(keys(&replace), ["ns/a", "ns/b"]);
        assert!(c.synced);

        let up = c
            .convert(&mut h, Event::Apply(pod("c", "10.0.0.3")))
            .expect("upsert");
        match &up {
            Change::Upsert(Object::Pod(p)) => {
                assert_eq!(p.ips, ["10.0.0.3"]);
                assert_eq!(p.service_account, "sa");
            }
            other => panic!("unexpected {other:?}"),
        }
        let del = c
            .convert(&mut h, Event::Delete(pod("a", "10.0.0.1")))
            .expect("delete");
        assert!(matches!(del, Change::Delete(Kind::Pod, _)));
        assert_eq!(keys(&del), ["ns/a"]);

        // A relist restarted midway (Init again) starts from scratch.
        c.convert(&mut h, Event::Init);
        c.convert(&mut h, Event::InitApply(pod("x", "10.0.0.9")));
        c.convert(&mut h, Event::Init);
        c.convert(&mut h, Event::InitApply(pod("b", "10.0.0.2")));
        let replace = c.convert(&mut h, Event::InitDone).expect("replace");
        assert_eq!(keys(&replace), ["ns/b"]);
    }

    struct Rejecting;

    impl Handler<Pod> for Rejecting {
        fn kind(&self) -> Kind {
            Kind::Mesh("VirtualService")
        }
        fn what(&self) -> &str {
            "test objects"
        }
        fn apply(&mut self, obj: Pod) -> Applied {
            Applied::Rejected(ObjKey::of(&obj), None)
        }
        fn delete(&mut self, obj: Pod) -> ObjKey {
            ObjKey::of(&obj)
        }
    }

    #[test]
    fn rejected_objects_are_absent() {
        let mut c = Converter::default();
        c.convert(&mut Rejecting, Event::Init);
        c.convert(&mut Rejecting, Event::InitApply(pod("bad", "10.0.0.1")));
        let replace = c.convert(&mut Rejecting, Event::InitDone).expect("replace");
        assert!(keys(&replace).is_empty());
        // A malformed object that was never readable stays absent.
        let del = c
            .convert(&mut Rejecting, Event::Apply(pod("bad", "10.0.0.1")))
            .expect("delete");
        assert!(matches!(
            del,
            Change::Delete(Kind::Mesh("VirtualService"), _)
        ));
        assert_eq!(keys(&del), ["ns/bad"]);
    }

    #[test]
    fn classifies_errors() {
        let status = |code: u16, reason: &str| {
            let mut s = Status::failure("x", reason);
            s.code = code;
            Box::new(s)
        };
        // A missing CRD: a bare 404 without a Kubernetes reason.
        let nf = watcher::Error::InitialListFailed(kube::Error::Api(status(
            404,
            "Failed to parse error data",
        )));
        assert!(is_not_found(&nf));
        assert!(!is_forbidden(&nf));
        let fb = watcher::Error::WatchStartFailed(kube::Error::Api(status(403, "Forbidden")));
        assert!(is_forbidden(&fb));
        let gone = watcher::Error::WatchError(status(410, "Expired"));
        assert!(!is_not_found(&gone));
        let serde = serde_json::from_str::<u32>("x").expect_err("not a number");
        let de = watcher::Error::WatchFailed(kube::Error::SerdeError(serde));
        assert!(is_decode_error(&de));
        assert!(!is_not_found(&de));
    }
}
