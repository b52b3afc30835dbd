//! `meshctl route`, `canary` and `stat`: the VirtualServices and
//! DestinationRules they render (golden files under `tests/golden/route/`
//! and `tests/golden/canary/`), the proxies' metrics read through a fake
//! API server, and the command line's help and errors.
//!
//! Regenerate the golden files after an intended change with
//!
//!     UPDATE_GOLDEN=1 cargo test -p meshctl --test route_canary

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use clap::Parser;
use mesh_api::resource::ResourceSet;
use meshctl::canary::render::{self as canary, Phase, StartSpec};
use meshctl::route::render::{self as route, Resources, Target};
use meshctl::route::CreateArgs;

// ---------------------------------------------------------------------------
// Helpers

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("running meshctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(name)
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with UPDATE_GOLDEN=1 cargo test -p meshctl --test route_canary",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} is stale (first difference at line {}):\n  golden: {:?}\n  actual: {:?}\n\
             If the change is intended: UPDATE_GOLDEN=1 cargo test -p meshctl --test route_canary",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

/// The resources as YAML documents, VirtualService first; asserts they
/// pass `mesh_api::validate`.
fn render(res: &Resources) -> String {
    let errors = route::validate(res, &ResourceSet::default());
    assert!(errors.is_empty(), "invalid: {errors:#?}");
    let mut out = String::new();
    if let Some(vs) = &res.vs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(vs).unwrap());
    }
    if let Some(dr) = &res.dr {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(dr).unwrap());
    }
    out
}

fn target() -> Target {
    Target {
        namespace: "shop".into(),
        service: "reviews".into(),
    }
}

#[derive(Parser)]
struct CreateCli {
    #[command(flatten)]
    args: CreateArgs,
}

/// `meshctl route create ARGS` applied to `current`, as the command does
/// it (flags parsed by the real argument definitions).
fn route_create(current: &Resources, args: &str) -> Resources {
    let argv: Vec<&str> = std::iter::once("create")
        .chain(args.split_whitespace())
        .collect();
    let cli = CreateCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{args}: {e}"));
    let spec = cli.args.spec().unwrap();
    route::create_route(
        current,
        &target(),
        &spec,
        &cli.args.subset_label,
        &format!("meshctl route create {args}"),
    )
}

// ---------------------------------------------------------------------------
// route: golden resources

#[test]
fn route_create_by_header_golden() {
    let res = route_create(
        &Resources::default(),
        "reviews jason --match-header End-User=jason --to-subset v2",
    );
    check_golden("route/create-header.yaml", &render(&res));
}

#[test]
fn route_create_path_retries_timeouts_and_split_golden() {
    let res = route_create(
        &Resources::default(),
        "reviews default --weight v1=90 --weight v2=10 --timeout 3s",
    );
    // A route with conditions goes before the catch-all one.
    let res = route_create(
        &res,
        "reviews api --match-path-prefix /api/ --match-method get --to-subset v1 --timeout 2s \
         --retries 3 --retry-on 5xx,connect-failure --per-try-timeout 500ms",
    );
    let res = route_create(
        &res,
        "reviews beta --match-header-regex cookie=.*beta=1.* --match-path /ratings --to-subset v3 \
         --subset-label track",
    );
    let names: Vec<_> = res
        .vs
        .as_ref()
        .unwrap()
        .spec
        .http
        .iter()
        .map(|r| r.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["api", "beta", "default"]);
    check_golden("route/create-path-retries-timeout.yaml", &render(&res));

    // Replacing a route keeps its place; an existing subset is kept as is.
    let replaced = route_create(
        &res,
        "reviews api --match-path-prefix /v2/api/ --to-subset v3",
    );
    let names: Vec<_> = replaced
        .vs
        .as_ref()
        .unwrap()
        .spec
        .http
        .iter()
        .map(|r| r.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["api", "beta", "default"]);
    check_golden("route/replace.yaml", &render(&replaced));

    // Delete: the route goes, subsets stay; the last route takes the VS.
    let deleted =
        route::delete_route(&replaced, "beta", "meshctl route delete reviews beta").unwrap();
    check_golden("route/delete.yaml", &render(&deleted));
    let e = route::delete_route(&deleted, "nope", "x").unwrap_err();
    assert!(
        e.contains("no route \"nope\"") && e.contains("api, default"),
        "{e}"
    );
    let mut last = deleted;
    for r in ["api", "default"] {
        last = route::delete_route(&last, r, "x").unwrap();
    }
    assert!(last.vs.is_none() && last.dr.is_some());
}

#[test]
fn route_summaries_read_like_the_flags() {
    let res = route_create(
        &Resources::default(),
        "reviews api --match-path-prefix /api/ --match-header x-a=1 --to-subset v1 --retries 2 --retry-on 5xx",
    );
    let s = route::summarize(res.vs.as_ref().unwrap());
    assert_eq!(s[0].match_, "path^=/api/ & header:x-a=1");
    assert_eq!(s[0].destinations, ["v1"]);
    assert_eq!(s[0].retries.as_deref(), Some("2 on 5xx"));
}

#[test]
fn invalid_routes_are_refused_with_the_validation_error() {
    // Two catch-all routes: the second is unreachable.
    let res = route_create(&Resources::default(), "reviews a --to-subset v1");
    let res = route_create(&res, "reviews b --to-subset v2");
    let errors = route::validate(&res, &ResourceSet::default());
    assert!(
        errors
            .iter()
            .any(|e| e.contains("VirtualService shop/reviews") && e.contains("spec.http[1]")),
        "{errors:#?}"
    );
    // A bad regex.
    let res = route_create(
        &Resources::default(),
        "reviews a --match-path-regex ([ --to-subset v1",
    );
    let errors = route::validate(&res, &ResourceSet::default());
    assert!(errors.iter().any(|e| e.contains("uri")), "{errors:#?}");
}

#[test]
fn route_flags_that_clap_cannot_check_are_usage_errors() {
    for (args, says) in [
        ("reviews a --weight v1=90 --weight v2=20", "sum to 110"),
        ("reviews a --weight v1=50", "single --weight must be 100"),
        (
            "reviews a --match-header x=1 --match-header-prefix x=2",
            "matched twice",
        ),
        ("reviews a --weight v1=50 --weight v1=50", "weighted twice"),
    ] {
        let argv: Vec<&str> = std::iter::once("create")
            .chain(args.split_whitespace())
            .collect();
        let cli = CreateCli::try_parse_from(&argv).unwrap();
        let e = cli.args.spec().unwrap_err();
        assert_eq!(e.exit_code(), 2, "{args}");
        assert!(e.to_string().contains(says), "{args}: {e}");
    }
}

// ---------------------------------------------------------------------------
// canary: golden resources

fn spec() -> StartSpec {
    StartSpec {
        stable: "v1".into(),
        canary: "v2".into(),
        subset_label: "version".into(),
    }
}

#[test]
fn canary_lifecycle_golden() {
    let t = target();
    let started = canary::start(
        &Resources::default(),
        &t,
        &spec(),
        10,
        Phase::Running,
        "meshctl canary start reviews --stable v1 --canary v2 --weight 10",
    )
    .unwrap();
    check_golden("canary/start.yaml", &render(&started));
    let st = canary::status(&started, &t).unwrap();
    assert_eq!((st.stable.weight, st.canary.weight), (90, 10));
    assert_eq!(st.phase, Phase::Running);

    let set = canary::set_weight(
        &started,
        &t,
        50,
        Phase::Running,
        None,
        "meshctl canary set-weight reviews 50",
    )
    .unwrap();
    check_golden("canary/set-weight.yaml", &render(&set));

    let promoted = canary::promote(&set, &t, false, "meshctl canary promote reviews").unwrap();
    assert_eq!(promoted.len(), 1);
    check_golden("canary/promote.yaml", &render(&promoted[0]));
    let st = canary::status(&promoted[0], &t).unwrap();
    assert_eq!(
        (st.stable.weight, st.canary.weight, st.phase),
        (0, 100, Phase::Promoted)
    );

    let steps =
        canary::promote(&set, &t, true, "meshctl canary promote reviews --finalize").unwrap();
    assert_eq!(steps.len(), 3);
    // Every intermediate state is valid, and no request ever goes to a
    // subset selecting v1 once promoted.
    for s in &steps {
        render(s);
        let st = canary::status(s, &t).unwrap();
        assert!(
            st.stable.weight == 0 || st.stable.labels["version"] == "v2",
            "{st:?}"
        );
    }
    check_golden("canary/promote-finalize.yaml", &render(&steps[2]));
    let st = canary::status(&steps[2], &t).unwrap();
    assert_eq!(
        (st.stable.version.as_str(), st.stable.weight, st.phase),
        ("v2", 100, Phase::Finalized)
    );
    // A finalized canary cannot be moved; a new one can start.
    assert!(canary::set_weight(&steps[2], &t, 10, Phase::Running, None, "x").is_err());
    let next = StartSpec {
        stable: "v2".into(),
        canary: "v3".into(),
        ..spec()
    };
    let again = canary::start(&steps[2], &t, &next, 5, Phase::Running, "x").unwrap();
    render(&again);

    let aborted = canary::abort(
        &set,
        &t,
        Phase::Aborted,
        None,
        "meshctl canary abort reviews",
    )
    .unwrap();
    check_golden("canary/abort.yaml", &render(&aborted));
    let rolled = canary::abort(
        &set,
        &t,
        Phase::RolledBack,
        Some("success rate 80.00% < 99%".into()),
        "x",
    )
    .unwrap();
    let st = canary::status(&rolled, &t).unwrap();
    assert_eq!((st.canary.weight, st.phase), (0, Phase::RolledBack));
    assert_eq!(st.reason.as_deref(), Some("success rate 80.00% < 99%"));
}

#[test]
fn canary_keeps_header_routes_first_and_refuses_other_catch_alls() {
    let t = target();
    let res = route_create(
        &Resources::default(),
        "reviews testers --match-header x-tester=1 --to-subset v2",
    );
    let started = canary::start(
        &res,
        &t,
        &spec(),
        20,
        Phase::Running,
        "meshctl canary start reviews --stable v1 --canary v2 --weight 20",
    )
    .unwrap();
    let names: Vec<_> = started
        .vs
        .as_ref()
        .unwrap()
        .spec
        .http
        .iter()
        .map(|r| r.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["testers", "canary"]);
    check_golden("canary/start-with-routes.yaml", &render(&started));

    let res = route_create(&Resources::default(), "reviews default --to-subset v1");
    let e = canary::start(&res, &t, &spec(), 20, Phase::Running, "x").unwrap_err();
    assert!(
        e.to_string()
            .contains("meshctl route delete reviews default"),
        "{e}"
    );
}

#[test]
fn canary_commands_need_a_canary() {
    let t = target();
    for r in [
        canary::set_weight(&Resources::default(), &t, 10, Phase::Running, None, "x").map(|_| ()),
        canary::abort(&Resources::default(), &t, Phase::Aborted, None, "x").map(|_| ()),
        canary::promote(&Resources::default(), &t, false, "x").map(|_| ()),
        canary::status(&Resources::default(), &t).map(|_| ()),
    ] {
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string().contains("meshctl canary start reviews"),
            "{e}"
        );
    }
}

// ---------------------------------------------------------------------------
// A fake API server: answers from a function of (method, path).

type Handler = dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync;

fn fake_api(handler: Arc<Handler>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let (status, body) = handler(&method, &path, &String::from_utf8_lossy(&body));
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

const VERSION: &str = r#"{"major":"1","minor":"34","gitVersion":"v1.34.0","gitCommit":"x","gitTreeState":"clean","buildDate":"2025-01-01T00:00:00Z","goVersion":"go1.24","compiler":"gc","platform":"linux/amd64"}"#;

fn not_found(what: &str) -> (u16, String) {
    (
        404,
        format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{what} not found","reason":"NotFound","code":404}}"#
        ),
    )
}

fn kubeconfig(dir: &tempfile::TempDir, addr: SocketAddr) -> PathBuf {
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: shop\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn scrape_reads_pods_through_the_api_server_pod_proxy() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let addr = fake_api(Arc::new(move |_, path: &str, _: &str| match path {
        "/api/v1/namespaces/shop/pods/reviews-v2-1:15020/proxy/metrics" => {
            // Each scrape, 100 more requests of which 5 failed, 95 of them
            // under 10ms.
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            (
                200,
                format!(
                    "# TYPE mesh_requests_total counter\n\
                     mesh_requests_total{{direction=\"inbound\",code=\"200\",source_workload=\"web\"}} {}\n\
                     mesh_requests_total{{direction=\"inbound\",code=\"503\",source_workload=\"web\"}} {}\n\
                     mesh_requests_total{{direction=\"outbound\",code=\"500\",source_workload=\"reviews\"}} 999\n\
                     mesh_request_duration_seconds_bucket{{direction=\"inbound\",source_workload=\"web\",le=\"0.01\"}} {}\n\
                     mesh_request_duration_seconds_bucket{{direction=\"inbound\",source_workload=\"web\",le=\"1\"}} {}\n\
                     mesh_request_duration_seconds_bucket{{direction=\"inbound\",source_workload=\"web\",le=\"+Inf\"}} {}\n",
                    95 * n,
                    5 * n,
                    95 * n,
                    100 * n,
                    100 * n
                ),
            )
        }
        p => not_found(p),
    }));
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let pods = [
        ("shop".to_string(), "reviews-v2-1".to_string()),
        ("shop".to_string(), "gone".to_string()),
    ]
    .into_iter()
    .collect();
    let first = meshctl::scrape::scrape(&client, &pods).await;
    let second = meshctl::scrape::scrape(&client, &pods).await;
    assert_eq!(second.errors.len(), 1, "{:?}", second.errors);
    assert!(second.errors.contains_key("shop/gone"));
    let delta = second.delta(&first);
    let st = meshctl::scrape::Stats::of(
        delta.iter().map(|(_, s)| s),
        Some(std::time::Duration::from_secs(10)),
    );
    assert_eq!((st.requests, st.errors), (100, 5));
    assert_eq!(st.success_rate, Some(95.0));
    assert_eq!(st.rps, Some(10.0));
    // 95 of 100 within 10ms: p50 interpolated inside the first bucket;
    // p99 inside (10ms, 1s].
    assert!(
        (st.p50_ms.unwrap() - 50.0 / 95.0 * 10.0).abs() < 1e-6,
        "{st:?}"
    );
    assert!(
        (st.p99_ms.unwrap() - (10.0 + 990.0 * 4.0 / 5.0)).abs() < 1e-6,
        "{st:?}"
    );
}

// ---------------------------------------------------------------------------
// The command line

#[test]
fn every_command_has_help_with_examples() {
    for cmd in [
        &["route", "--help"][..],
        &["route", "create", "--help"],
        &["route", "show", "--help"],
        &["route", "list", "--help"],
        &["route", "delete", "--help"],
        &["canary", "--help"],
        &["canary", "start", "--help"],
        &["canary", "set-weight", "--help"],
        &["canary", "promote", "--help"],
        &["canary", "abort", "--help"],
        &["canary", "status", "--help"],
        &["stat", "--help"],
    ] {
        let out = meshctl(cmd);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}: {}", text(&out.stderr));
        assert!(
            stdout.contains("Examples:"),
            "{cmd:?} has no examples:\n{stdout}"
        );
        assert!(stdout.contains("meshctl "), "{cmd:?}:\n{stdout}");
        if cmd.len() > 2 || cmd[0] == "stat" {
            for flag in ["--namespace", "--output", "--kubeconfig", "Exit codes:"] {
                assert!(
                    stdout.contains(flag),
                    "{cmd:?} help lacks {flag}:\n{stdout}"
                );
            }
        }
    }
    let out = text(&meshctl(&["canary", "start", "--help"]).stdout);
    for flag in [
        "--step",
        "--interval",
        "--max-weight",
        "--min-success-rate",
        "--max-p99",
        "--min-requests",
        "--max-waits",
        "--finalize",
    ] {
        assert!(out.contains(flag), "canary start --help lacks {flag}");
    }
    let out = text(&meshctl(&["route", "create", "--help"]).stdout);
    for flag in [
        "--match-header",
        "--match-path-prefix",
        "--to-subset",
        "--weight",
        "--retries",
        "--retry-on",
        "--per-try-timeout",
        "--timeout",
        "--subset-label",
    ] {
        assert!(out.contains(flag), "route create --help lacks {flag}");
    }
}

fn assert_clean_failure(out: &Output, code: i32, says: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for s in says {
        assert!(err.contains(s), "stderr lacks {s:?}: {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_usage_error() {
    let k = ["--kubeconfig", "/nonexistent/kubeconfig"];
    let with = |args: &[&str]| -> Output {
        let mut v = args.to_vec();
        v.extend_from_slice(&k);
        meshctl(&v)
    };
    // Weights over 100: exit 2 before any cluster is needed.
    assert_clean_failure(
        &with(&["canary", "set-weight", "reviews", "150"]),
        2,
        &["150"],
    );
    assert_clean_failure(
        &with(&[
            "canary", "start", "reviews", "--stable", "v1", "--canary", "v2", "--weight", "101",
        ]),
        2,
        &["101"],
    );
    assert_clean_failure(
        &with(&[
            "canary", "start", "reviews", "--stable", "v1", "--canary", "v1",
        ]),
        2,
        &["two versions"],
    );
    assert_clean_failure(
        &with(&[
            "canary",
            "start",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--step",
            "10",
            "--weight",
            "60",
            "--max-weight",
            "50",
        ]),
        2,
        &["--max-weight"],
    );
    assert_clean_failure(
        &with(&[
            "canary",
            "start",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--interval",
            "1m",
        ]),
        2,
        &["--step"],
    );
    assert_clean_failure(
        &with(&["route", "create", "reviews", "a", "--weight", "v1=120"]),
        2,
        &["over 100"],
    );
    assert_clean_failure(
        &with(&[
            "route", "create", "reviews", "a", "--weight", "v1=60", "--weight", "v2=60",
        ]),
        2,
        &["sum to 120"],
    );
    assert_clean_failure(
        &with(&["route", "create", "reviews", "a", "--timeout", "soon"]),
        2,
        &["soon"],
    );
    assert_clean_failure(
        &with(&["route", "create", "reviews", "a", "--retry-on", "5xx"]),
        2,
        &["--retries"],
    );
    assert_clean_failure(
        &with(&[
            "route",
            "create",
            "reviews",
            "a",
            "--match-path",
            "/x",
            "--match-path-prefix",
            "/y",
        ]),
        2,
        &["--match-path"],
    );
    assert_clean_failure(
        &with(&["route", "create", "reviews", "Bad_Name"]),
        2,
        &["not a valid name"],
    );
    assert_clean_failure(&with(&["route", "delete", "reviews"]), 2, &["<ROUTE>"]);
    assert_clean_failure(&with(&["stat", "pod/x"]), 2, &["deploy/NAME"]);
    assert_clean_failure(&with(&["route", "list", "-o", "xml"]), 2, &["xml"]);
}

#[test]
fn no_cluster_is_exit_3_naming_the_kubeconfig() {
    for args in [
        &["route", "create", "reviews", "a", "--to-subset", "v1"][..],
        &["route", "show", "reviews"],
        &["route", "list", "-A"],
        &["route", "delete", "reviews", "a"],
        &[
            "canary", "start", "reviews", "--stable", "v1", "--canary", "v2", "--weight", "10",
        ],
        &["canary", "set-weight", "reviews", "20"],
        &["canary", "promote", "reviews"],
        &["canary", "abort", "reviews"],
        &["canary", "status", "reviews", "-o", "json"],
        &["stat", "-n", "shop"],
    ] {
        let mut v = args.to_vec();
        v.extend_from_slice(&["--kubeconfig", "/nonexistent/kubeconfig"]);
        let out = meshctl(&v);
        assert_clean_failure(
            &out,
            3,
            &["meshctl: error:", "--kubeconfig /nonexistent/kubeconfig"],
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn unknown_service_is_exit_1_naming_it() {
    let addr = fake_api(Arc::new(|_, path: &str, _: &str| match path {
        "/version" => (200, VERSION.to_string()),
        p => not_found(p),
    }));
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&dir, addr);
    let kc = kc.to_str().unwrap();
    for args in [
        &["route", "create", "nosuch", "a", "--to-subset", "v1"][..],
        &["route", "show", "nosuch"],
        &[
            "canary", "start", "nosuch", "--stable", "v1", "--canary", "v2",
        ],
        &["canary", "set-weight", "nosuch", "30"],
        &["canary", "status", "nosuch"],
        &["stat", "svc/nosuch"],
    ] {
        let mut v = args.to_vec();
        v.extend_from_slice(&["--kubeconfig", kc]);
        // The namespace comes from the kubeconfig's context.
        assert_clean_failure(
            &meshctl(&v),
            1,
            &["no Service \"nosuch\" in namespace \"shop\""],
        );
    }
    let out = meshctl(&["stat", "deploy/nosuch", "-n", "other", "--kubeconfig", kc]);
    assert_clean_failure(
        &out,
        1,
        &["no Deployment \"nosuch\" in namespace \"other\""],
    );
}

#[test]
fn canary_start_applies_validated_resources_with_server_side_apply() {
    let patches = Arc::new(std::sync::Mutex::new(
        Vec::<(String, serde_json::Value)>::new(),
    ));
    let p = patches.clone();
    let addr = fake_api(Arc::new(move |method: &str, path: &str, body: &str| {
        let list = |kind: &str| {
            (
                200,
                format!(
                    r#"{{"apiVersion":"networking.mesh.dev/v1","kind":"{kind}List","metadata":{{}},"items":[]}}"#
                ),
            )
        };
        match (method, path.split('?').next().unwrap_or_default()) {
            ("GET", "/version") => (200, VERSION.to_string()),
            ("GET", "/api/v1/namespaces/shop/services/reviews") => (
                200,
                r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"reviews","namespace":"shop"},"spec":{"selector":{"app":"reviews"}}}"#.to_string(),
            ),
            ("GET", "/apis/networking.mesh.dev/v1/namespaces/shop/virtualservices") => list("VirtualService"),
            ("GET", "/apis/networking.mesh.dev/v1/namespaces/shop/destinationrules") => list("DestinationRule"),
            ("PATCH", _) => {
                let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
                p.lock().unwrap().push((path.to_string(), v.clone()));
                v["metadata"]["resourceVersion"] = "7".into();
                (200, v.to_string())
            }
            (_, p) => not_found(p),
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&dir, addr);
    let out = meshctl(&[
        "canary",
        "start",
        "reviews",
        "--stable",
        "v1",
        "--canary",
        "v2",
        "--weight",
        "10",
        "-o",
        "json",
        "--kubeconfig",
        kc.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["phase"], "running");
    assert_eq!(status["stable"]["weight"], 90);
    assert_eq!(status["canary"]["weight"], 10);
    assert_eq!(status["canary"]["labels"]["version"], "v2");
    let err = text(&out.stderr);
    assert!(
        err.contains("destinationrule/reviews created")
            && err.contains("virtualservice/reviews created"),
        "{err}"
    );
    let patches = patches.lock().unwrap();
    // The DestinationRule first (its subsets exist before a route uses them).
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(patches[0]
        .0
        .starts_with("/apis/networking.mesh.dev/v1/namespaces/shop/destinationrules/reviews?"));
    assert!(patches[1]
        .0
        .starts_with("/apis/networking.mesh.dev/v1/namespaces/shop/virtualservices/reviews?"));
    for (path, body) in patches.iter() {
        assert!(
            path.contains("fieldManager=meshctl") && path.contains("force=true"),
            "{path}"
        );
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshctl"
        );
        assert!(body["metadata"].get("managedFields").is_none());
    }
    assert_eq!(patches[1].1["spec"]["http"][0]["route"][1]["weight"], 10);
}
