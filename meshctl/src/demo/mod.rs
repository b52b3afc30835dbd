//! `meshctl demo`: a whole mesh on loopback, no cluster needed.
//!
//! It starts mesh-ca (local mode), mesh-controller (local mode, reading a
//! generated config directory), six demo backends each behind its own
//! mesh-proxy (mTLS inbound), and one client proxy with explicit listeners;
//! waits until every proxy has ACKed its config; then sends gRPC calls over
//! one channel and HTTP requests over one connection through the client
//! proxy and shows how they were balanced, split and secured. See
//! `docs/local-mode.md`.

/// `println!` that ignores a closed stdout (`meshctl demo | head`) instead
/// of panicking: the demo still stops its processes and exits normally.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` (flushed) that ignores a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout();
        let _ = write!(o, $($arg)*);
        let _ = o.flush();
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod manifests;
mod plan;
mod procs;
mod traffic;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use admin::{ResourceStatus, SyncReport};
use manifests::ROUTES_FILE;
use plan::{local, service_host, spiffe_id, App, Plan, CLIENT, NAMESPACE};
use procs::Supervisor;
use traffic::Tally;

/// The route the demo starts with: web v1 / v2 weights.
const START_WEIGHTS: (u32, u32) = (90, 10);
/// The route `--once` switches to, to show a live change.
const CHANGED_WEIGHTS: (u32, u32) = (50, 50);
/// `--once` accepts each gRPC backend's share within 1/3 ± this.
const GRPC_TOLERANCE: f64 = 0.10;
/// `--once` accepts the v2 share within the route's weight ± this (90/10).
const CANARY_TOLERANCE: f64 = 0.06;
/// ... and within ± this after the change to 50/50.
const CHANGED_TOLERANCE: f64 = 0.10;
/// Fewest gRPC calls / HTTP requests for which `--once` asserts shares.
const MIN_GRPC_CALLS: u64 = 300;
const MIN_HTTP_REQUESTS: u64 = 1000;

/// The binaries the demo runs, with the package that builds each.
const BINARIES: [(&str, &str); 5] = [
    ("mesh-ca", "mesh-ca"),
    ("mesh-controller", "mesh-controller"),
    ("mesh-proxy", "mesh-proxy"),
    ("grpc-echo", "mesh-testapps"),
    ("http-echo", "mesh-testapps"),
];

/// One line for `meshctl --help`.
pub const ABOUT: &str =
    "Run a whole mesh on this machine, no cluster: CA, controller, proxies and demo \
backends on loopback; show per-request balancing, a canary split, mTLS and a live route change";

/// `meshctl demo --help`.
pub const LONG_ABOUT: &str = "\
Run a whole mesh on this machine, no cluster needed.

Starts mesh-ca (local mode), mesh-controller (local mode), three grpc-echo and
three http-echo backends (web: two v1, one v2), each behind its own mesh-proxy
that accepts only mTLS, and a client mesh-proxy with one listener per service.
Every proxy gets its identity from mesh-ca and its config from the controller.
Once all proxies are SYNCED, meshctl sends gRPC calls over ONE channel and HTTP
requests over ONE keep-alive connection through the client proxy and shows:
each call balanced over the three gRPC backends, web split 90/10 between v1 and
v2, and every request arriving over mTLS with the client's SPIFFE identity.

Then it stays up: edit WORK/mesh/web-routes.yaml (e.g. weights 50/50) and watch
the split follow; it re-measures every --interval, or when you press Enter.
Ctrl-C stops every process. With --once it runs the checks, changes the route
itself, and exits.

Ports (127.0.0.1, from --base-port B, default 27000):
  B+0 / B+1       client proxy admin (/config_dump) / metrics
  B+2             client proxy listener for grpc-echo.demo:9090 (gRPC)
  B+3             client proxy listener for web.demo:80 (HTTP)
  B+4 / B+5       mesh-ca (TLS) / its metrics
  B+6 / B+7       mesh-controller config stream (mTLS) / admin (/debug/syncz)
  B+10k + 0..3    backend k = 1..6: app, its proxy's mTLS inbound, admin, metrics

Work directory (a temporary one unless --dir):
  mesh/           the controller's config: Services, EndpointSlices, Pods,
                  mesh resources; web-routes.yaml holds the 90/10 split
  ca/             mesh-ca's root, intermediate and trust-bundle.pem
  ca-tokens.yaml  bootstrap tokens (token -> namespace and ServiceAccount)
  tokens/         each ServiceAccount's token
  logs/NAME.log   every process's output

Needs, next to meshctl (or in --bin-dir): mesh-ca, mesh-controller, mesh-proxy,
grpc-echo and http-echo; scripts/demo builds them and runs this.

Exit status: 0 when the demo ran (with --once: every check passed); 1 when
something failed (the logs are kept and their paths printed); 2 for bad usage.
See docs/local-mode.md.";

/// Flags of `meshctl demo` (see [`LONG_ABOUT`]).
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Run the checks and exit: per-request gRPC balancing (each backend
    /// 33% ± 10%), the canary split (v2 10% ± 6%), mTLS on every request,
    /// plaintext refused, then a live route change to 50/50 (every proxy
    /// SYNCED at the new version, v2 50% ± 10%). Exit 0 if all pass, else 1.
    #[arg(long, conflicts_with = "check")]
    pub once: bool,

    /// Start nothing: measure a demo that is already running on
    /// --base-port (e.g. after editing its route file) and print the spread,
    /// the split and what the client proxy's route is.
    #[arg(long)]
    pub check: bool,

    /// First port of the demo's range (it uses 64 ports from here).
    #[arg(long, env = "MESH_DEMO_PORT_BASE", default_value_t = 27000)]
    pub base_port: u16,

    /// Work directory (config, CA, tokens, logs); created if missing and
    /// never deleted. Default: a new temporary directory, deleted on exit
    /// unless --keep or a failure.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Keep the temporary work directory on exit.
    #[arg(long)]
    pub keep: bool,

    /// Where the mesh and demo binaries are. Default: meshctl's own directory.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// gRPC calls per measurement, all over one channel.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub grpc_calls: u64,

    /// gRPC calls in flight at once on that channel.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// HTTP requests per measurement, one after the other over one
    /// keep-alive connection.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_requests: u64,

    /// How long to wait for the processes to start and the proxies to sync.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Interactive mode: how often to measure and print the split again
    /// (Enter measures at once).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use e.g. 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    };
    if !(0.0..=86400.0).contains(&secs) || (secs == 0.0 && n != 0.0) {
        return Err(format!("duration {s:?} is out of range"));
    }
    if secs == 0.0 {
        return Err(format!("duration {s:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs `meshctl demo`.
pub async fn run(args: DemoArgs) -> ExitCode {
    if args.check {
        return match check_running(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                errln!("meshctl demo --check: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.once && (args.grpc_calls < MIN_GRPC_CALLS || args.http_requests < MIN_HTTP_REQUESTS) {
        errln!(
            "meshctl demo --once: the shares are checked over at least {MIN_GRPC_CALLS} gRPC \
             calls and {MIN_HTTP_REQUESTS} HTTP requests (got --grpc-calls {} --http-requests {})",
            args.grpc_calls,
            args.http_requests
        );
        return ExitCode::from(2);
    }
    let setup = match Setup::prepare(&args) {
        Ok(s) => s,
        Err(e) => {
            errln!("meshctl demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut sup = Supervisor::new(setup.work.path.join("logs"));
    let started = Instant::now();
    let outcome = tokio::select! {
        r = demo(&args, &setup, &mut sup) => match r {
            Ok(passed) => Outcome::Done { passed },
            Err(e) => Outcome::Failed(e),
        },
        why = interrupted() => Outcome::Interrupted(why),
    };
    if let Outcome::Failed(e) = &outcome {
        report_failure(e, &sup, &setup.work.path);
    }
    out!("== stopping {} processes ... ", sup.logs().len());
    sup.shutdown().await;
    outln!("done");
    // A failure's logs are kept for reading; an interrupted or finished demo
    // cleans up after itself unless asked not to.
    let failed = matches!(
        outcome,
        Outcome::Failed(_) | Outcome::Done { passed: false }
    );
    let logs = setup.work.path.join("logs");
    setup.work.finish(args.keep || failed);
    match outcome {
        Outcome::Done { passed: true } => {
            if args.once {
                outln!(
                    "== all checks passed ({:.1}s)",
                    started.elapsed().as_secs_f64()
                );
            }
            ExitCode::SUCCESS
        }
        Outcome::Done { passed: false } => {
            errln!(
                "== some checks FAILED (above); logs kept in {}",
                logs.display()
            );
            ExitCode::FAILURE
        }
        Outcome::Failed(_) => ExitCode::FAILURE,
        Outcome::Interrupted(why) => {
            outln!("== {why}: stopped");
            if args.once {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

enum Outcome {
    /// The demo ran; with `--once`, whether every check passed.
    Done {
        passed: bool,
    },
    Failed(anyhow::Error),
    Interrupted(&'static str),
}

/// Resolves on ctrl-c, SIGTERM or SIGHUP.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "ctrl-c",
        _ = recv(term.as_mut()) => "SIGTERM",
        _ = recv(hup.as_mut()) => "SIGHUP",
    }
}

fn report_failure(e: &anyhow::Error, sup: &Supervisor, work: &Path) {
    errln!();
    errln!("meshctl demo: FAILED: {e:#}");
    if let Some(exited) = e.downcast_ref::<procs::Exited>() {
        errln!("--- last lines of {}:", exited.log.display());
        errln!("{}", procs::tail(&exited.log, 20));
        errln!("---");
    }
    let logs = sup.logs();
    if !logs.is_empty() {
        errln!("logs (kept in {}):", work.display());
        for (name, path) in logs {
            errln!("  {name:<22} {}", path.display());
        }
    }
}

/// Everything decided before the first process starts.
struct Setup {
    bins: PathBuf,
    plan: Plan,
    work: WorkDir,
}

impl Setup {
    fn prepare(args: &DemoArgs) -> Result<Self> {
        let plan = Plan::new(args.base_port)?;
        let bins = find_binaries(args.bin_dir.as_deref())?;
        check_ports_free(&plan)?;
        let work = WorkDir::create(args.dir.as_deref())?;
        Ok(Self { bins, plan, work })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    fn config_dir(&self) -> PathBuf {
        self.work.path.join("mesh")
    }

    fn routes_file(&self) -> PathBuf {
        self.config_dir().join(ROUTES_FILE)
    }

    fn bundle(&self) -> PathBuf {
        self.work.path.join("ca").join("trust-bundle.pem")
    }
}

/// The binaries' directory; an error names every missing one and the
/// command that builds them.
fn find_binaries(bin_dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .context("finding meshctl's own path")?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("meshctl's path has no directory"))?,
    };
    let missing: Vec<(&str, &str)> = BINARIES
        .iter()
        .filter(|(bin, _)| !is_executable(&dir.join(bin)))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(dir);
    }
    let names: Vec<&str> = missing.iter().map(|(b, _)| *b).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    let build: String = packages.iter().map(|p| format!(" -p {p}")).collect();
    bail!(
        "the demo needs {} in {}, and {} missing.\n  build: cargo build --release{build}\n  (scripts/demo builds everything it needs, then runs the demo)",
        names.join(", "),
        dir.display(),
        if names.len() == 1 { "it is" } else { "they are" },
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails, naming the port and its use, when one of the demo's ports is taken.
fn check_ports_free(plan: &Plan) -> Result<()> {
    for (port, what) in plan.ports() {
        // The demo apps listen on every address; the rest on loopback.
        // (One at a time: the first would hold the port against the second.)
        let free = std::net::TcpListener::bind(("0.0.0.0", port))
            .map(drop)
            .and_then(|()| std::net::TcpListener::bind(("127.0.0.1", port)).map(drop));
        if let Err(e) = free {
            bail!(
                "port {port} ({what}) is not free: {e}. Is another demo running? Stop it, or use other ports with --base-port (the demo uses {}-{})",
                plan.base,
                plan.base + plan::LAST_OFFSET
            );
        }
    }
    Ok(())
}

/// The work directory: given (kept), or temporary (deleted unless kept).
struct WorkDir {
    path: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    fn create(dir: Option<&Path>) -> Result<Self> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                let path = d
                    .canonicalize()
                    .with_context(|| format!("resolving {}", d.display()))?;
                Ok(Self { path, temp: None })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("mesh-demo.")
                    .tempdir()
                    .context("creating a temporary work directory")?;
                Ok(Self {
                    path: temp.path().to_path_buf(),
                    temp: Some(temp),
                })
            }
        }
    }

    /// Deletes a temporary directory unless `keep`.
    fn finish(self, keep: bool) {
        if let Some(t) = self.temp {
            if keep {
                let p = t.keep();
                outln!("   work dir kept: {}", p.display());
            } else if let Err(e) = t.close() {
                errln!(
                    "meshctl demo: could not delete {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// Polls `probe` every 100 ms until it yields a value, failing at once if a
/// child exits, and with the probe's last word after `timeout`.
async fn wait_for<T, F, Fut>(
    sup: &mut Supervisor,
    timeout: Duration,
    what: &str,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>>>,
{
    let start = Instant::now();
    loop {
        sup.check()?;
        let state = match probe().await? {
            Ok(v) => return Ok(v),
            Err(state) => state,
        };
        if start.elapsed() > timeout {
            bail!("{what}: not done after {timeout:?}\n{state}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every demo proxy is SYNCED at snapshot `min_snapshot` or
/// later; returns the report.
async fn wait_synced(
    sup: &mut Supervisor,
    plan: &Plan,
    timeout: Duration,
    min_snapshot: u64,
) -> Result<SyncReport> {
    let admin = local(plan.controller_admin);
    let pods = plan.proxy_pods();
    wait_for(
        sup,
        timeout,
        &format!(
            "waiting for {} proxies to be SYNCED (http://{admin}/debug/syncz)",
            pods.len()
        ),
        || {
            let pods = pods.clone();
            async move {
                let report: SyncReport = match admin::get_json(admin, "/debug/syncz").await {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(format!("{e:#}"))),
                };
                let min = min_snapshot.max(1);
                if report.all_synced(NAMESPACE, &pods, min)? {
                    Ok(Ok(report))
                } else {
                    Ok(Err(report.describe(NAMESPACE, &pods)))
                }
            }
        },
    )
    .await
}

/// Prints `== what ... ` and, when `f` is done, `ok (time)`.
async fn step<T>(what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    out!("== {what} ... ");
    let start = Instant::now();
    match f.await {
        Ok(v) => {
            outln!("ok ({:.1}s)", start.elapsed().as_secs_f64());
            Ok(v)
        }
        Err(e) => {
            outln!("failed");
            Err(e)
        }
    }
}

/// Flags every demo proxy shares: identity from mesh-ca, config from the
/// controller, explicit mode.
fn proxy_args(setup: &Setup, pod: &str, service_account: &str) -> Vec<String> {
    let plan = &setup.plan;
    vec![
        "run".into(),
        "--no-transparent".into(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--pod".into(),
        pod.into(),
        "--service-account".into(),
        service_account.into(),
        "--workload".into(),
        service_account.into(),
        "--controller-addr".into(),
        local(plan.controller_stream).to_string(),
        "--controller-identity".into(),
        spiffe_id(mesh_api::INSTALL_NAMESPACE, "mesh-controller"),
        "--ca-addr".into(),
        format!("https://{}", local(plan.ca_grpc)),
        "--ca-root".into(),
        setup.bundle().display().to_string(),
        "--ca-server-name".into(),
        "localhost".into(),
        "--ca-token-file".into(),
        manifests::token_path(&setup.work.path, service_account)
            .display()
            .to_string(),
        "--drain-timeout".into(),
        "1s".into(),
    ]
}

fn flag(name: &str, value: impl ToString) -> [String; 2] {
    [name.to_string(), value.to_string()]
}

/// Starts everything and waits until the mesh is in sync.
async fn start_mesh(args: &DemoArgs, setup: &Setup, sup: &mut Supervisor) -> Result<SyncReport> {
    let plan = &setup.plan;
    let work = &setup.work.path;
    let ca_tokens = manifests::write_tokens(work)?;
    manifests::write_config_dir(&setup.config_dir(), plan, START_WEIGHTS.0, START_WEIGHTS.1)?;

    // mesh-ca: the CA kept in WORK/ca, bootstrap tokens instead of TokenReview.
    let ca_args: Vec<String> = [
        vec!["serve".to_string()],
        flag("--local-dir", work.join("ca").display()).into(),
        flag("--tokens-file", ca_tokens.display()).into(),
        flag("--listen", local(plan.ca_grpc)).into(),
        flag("--metrics", local(plan.ca_metrics)).into(),
    ]
    .concat();
    sup.spawn("mesh-ca", &setup.bin("mesh-ca"), &ca_args, &[])?;
    let bundle = setup.bundle();
    let ca_metrics = local(plan.ca_metrics);
    step(
        &format!("starting mesh-ca on {} (local mode)", local(plan.ca_grpc)),
        wait_for(sup, args.timeout, "waiting for mesh-ca", || {
            let bundle = bundle.clone();
            async move {
                if !bundle.is_file() {
                    return Ok(Err(format!("{} not written yet", bundle.display())));
                }
                match admin::get(ca_metrics, "/metrics").await {
                    Ok((200, _)) => Ok(Ok(())),
                    Ok((s, _)) => Ok(Err(format!("metrics answered {s}"))),
                    Err(e) => Ok(Err(format!("{e:#}"))),
                }
            }
        }),
    )
    .await?;

    // mesh-controller in local mode, its certificate from mesh-ca.
    let ctl_args: Vec<String> = [
        flag("--config-dir", setup.config_dir().display()),
        flag("--listen", local(plan.controller_stream)),
        flag("--admin", local(plan.controller_admin)),
        flag("--ca-addr", format!("https://{}", local(plan.ca_grpc))),
        flag("--ca-root", bundle.display()),
        flag("--ca-server-name", "localhost"),
        flag(
            "--ca-token-file",
            manifests::token_path(work, "mesh-controller").display(),
        ),
        flag("--namespace", mesh_api::INSTALL_NAMESPACE),
        flag("--service-account", "mesh-controller"),
    ]
    .concat();
    sup.spawn(
        "mesh-controller",
        &setup.bin("mesh-controller"),
        &ctl_args,
        &[],
    )?;
    let ctl_admin = local(plan.controller_admin);
    step(
        &format!(
            "starting mesh-controller on {} (local mode: {})",
            local(plan.controller_stream),
            setup.config_dir().display()
        ),
        wait_for(
            sup,
            args.timeout,
            "waiting for mesh-controller /ready",
            || async move {
                match admin::get(ctl_admin, "/ready").await {
                    Ok((200, _)) => Ok(Ok(())),
                    Ok((s, body)) => Ok(Err(format!("/ready answered {s}: {}", body.trim()))),
                    Err(e) => Ok(Err(format!("{e:#}"))),
                }
            },
        ),
    )
    .await?;

    // The backends, each behind its own proxy.
    for b in &plan.backends {
        let env = [
            ("PORT", b.app_port.to_string()),
            ("POD_NAME", b.pod.clone()),
            ("POD_NAMESPACE", NAMESPACE.to_string()),
        ];
        sup.spawn(&b.pod, &setup.bin(b.app.binary()), &[], &env)?;
        let mut a = proxy_args(setup, &b.pod, b.app.service());
        a.extend(flag("--inbound-addr", local(b.inbound_port)));
        a.extend(flag("--inbound-forward", local(b.app_port)));
        a.extend(flag("--admin-addr", local(b.admin_port)));
        a.extend(flag("--metrics-addr", local(b.metrics_port)));
        sup.spawn(&b.proxy_name(), &setup.bin("mesh-proxy"), &a, &[])?;
    }
    // The client: explicit listeners, one per service.
    let mut a = proxy_args(setup, CLIENT, CLIENT);
    a.extend(flag("--admin-addr", local(plan.client_admin)));
    a.extend(flag("--metrics-addr", local(plan.client_metrics)));
    a.extend(flag(
        "--listen",
        format!(
            "{}={}:{}",
            local(plan.client_grpc),
            service_host(plan::GRPC_SERVICE),
            plan::GRPC_PORT
        ),
    ));
    a.extend(flag(
        "--listen",
        format!(
            "{}={}:{}",
            local(plan.client_web),
            service_host(plan::WEB_SERVICE),
            plan::WEB_PORT
        ),
    ));
    sup.spawn("proxy-demo-client", &setup.bin("mesh-proxy"), &a, &[])?;

    let admins: Vec<(String, SocketAddr)> = plan
        .backends
        .iter()
        .map(|b| (b.pod.clone(), local(b.admin_port)))
        .chain([(CLIENT.to_string(), local(plan.client_admin))])
        .collect();
    step(
        &format!(
            "starting {} backends, each behind its own mesh-proxy, and a client proxy",
            plan.backends.len()
        ),
        wait_for(sup, args.timeout, "waiting for the proxies' /ready", || {
            let admins = admins.clone();
            async move {
                let mut waiting = Vec::new();
                for (pod, addr) in &admins {
                    if !admin::ready(*addr).await {
                        waiting.push(format!("  {pod}: http://{addr}/ready is not 200 yet"));
                    }
                }
                Ok(if waiting.is_empty() {
                    Ok(())
                } else {
                    Err(waiting.join("\n"))
                })
            }
        }),
    )
    .await?;
    let report = step(
        &format!(
            "waiting for {} proxies to be SYNCED (controller /debug/syncz)",
            plan.proxy_pods().len()
        ),
        wait_synced(sup, plan, args.timeout, 1),
    )
    .await?;
    Ok(report)
}

/// Starts the demo, shows the traffic, then either checks and exits
/// (`--once`) or stays up. `Ok(false)`: a check failed.
async fn demo(args: &DemoArgs, setup: &Setup, sup: &mut Supervisor) -> Result<bool> {
    let plan = &setup.plan;
    outln!("== meshctl demo: a whole mesh on loopback, no cluster");
    outln!("   work dir: {}", setup.work.path.display());
    outln!("   binaries: {}", setup.bins.display());
    let t0 = Instant::now();
    let report = start_mesh(args, setup, sup).await?;
    outln!(
        "   mesh up in {:.1}s: {} proxies SYNCED at controller snapshot {}",
        t0.elapsed().as_secs_f64(),
        plan.proxy_pods().len(),
        report.latest_snapshot
    );
    outln!(
        "   client proxy: grpc-echo on {}, web on {}",
        local(plan.client_grpc),
        local(plan.client_web)
    );

    let mut checks = Checks::default();
    let m = measure(plan, args.grpc_calls, args.concurrency, args.http_requests).await?;
    sup.check()?;
    print_measurement(plan, args, &m, Some(START_WEIGHTS));
    checks.grpc_spread(&m.grpc);
    checks.share(
        "canary split",
        &m.http,
        plan,
        f64::from(START_WEIGHTS.1) / 100.0,
        CANARY_TOLERANCE,
    );
    checks.mtls(&m);
    let probe_backend = plan
        .backends_of(App::HttpEcho)
        .next()
        .ok_or_else(|| anyhow!("no web backend"))?;
    let probe_addr = local(probe_backend.inbound_port);
    let probe = traffic::plaintext_refused(probe_addr).await;
    match &probe {
        Ok(how) => outln!(
            "   plaintext straight to {}'s proxy ({probe_addr}): refused ({how}),\n   \
             as PeerAuthentication STRICT in mesh/mtls.yaml says",
            probe_backend.pod
        ),
        Err(got) => outln!(
            "   plaintext to {}'s proxy ({probe_addr}): {got}",
            probe_backend.pod
        ),
    }
    checks.record(
        "STRICT mTLS: plaintext to a backend's proxy is refused",
        probe.is_ok(),
        probe.clone().unwrap_or_else(|e| e),
    );

    if args.once {
        change_route(args, setup, sup, &mut checks).await?;
        checks.print();
        return Ok(checks.passed());
    }
    checks.print();
    interactive(args, setup, sup).await?;
    Ok(true)
}

/// `--once`: switch web to 50/50, wait until every proxy has the new
/// version, and check that the split followed.
async fn change_route(
    args: &DemoArgs,
    setup: &Setup,
    sup: &mut Supervisor,
    checks: &mut Checks,
) -> Result<()> {
    let plan = &setup.plan;
    let ctl_admin = local(plan.controller_admin);
    let before: SyncReport = admin::get_json(ctl_admin, "/debug/syncz").await?;
    let client_before = before
        .proxy(NAMESPACE, CLIENT)
        .map(|p| p.acked.clone())
        .unwrap_or_default();
    let (v1, v2) = CHANGED_WEIGHTS;
    outln!();
    let written = Instant::now();
    manifests::write_atomic(&setup.routes_file(), &manifests::web_routes(v1, v2))?;
    let after = step(
        &format!("changing the route: v1 {v1} / v2 {v2} in mesh/{ROUTES_FILE}"),
        wait_synced(sup, plan, args.timeout, before.latest_snapshot + 1),
    )
    .await?;
    let client_after = after
        .proxy(NAMESPACE, CLIENT)
        .map(|p| p.acked.clone())
        .unwrap_or_default();
    outln!(
        "   controller snapshot {} -> {}, client proxy config {client_before} -> {client_after}",
        before.latest_snapshot,
        after.latest_snapshot,
    );
    outln!(
        "   every proxy SYNCED {:.0} ms after the write",
        written.elapsed().as_secs_f64() * 1000.0
    );
    checks.record(
        "route change: every proxy SYNCED at a new version",
        client_after != client_before,
        format!("client proxy {client_before} -> {client_after}"),
    );
    let http = traffic::http(
        local(plan.client_web),
        &service_host(plan::WEB_SERVICE),
        args.http_requests,
        &spiffe_id(NAMESPACE, CLIENT),
    )
    .await?;
    sup.check()?;
    print_http(plan, &http, Some(CHANGED_WEIGHTS));
    checks.share(
        "route change: split follows",
        &http,
        plan,
        f64::from(v2) / 100.0,
        CHANGED_TOLERANCE,
    );
    Ok(())
}

/// One round of traffic.
struct Measurement {
    grpc: Tally,
    http: Tally,
}

async fn measure(
    plan: &Plan,
    grpc_calls: u64,
    concurrency: u16,
    http_requests: u64,
) -> Result<Measurement> {
    let caller = spiffe_id(NAMESPACE, CLIENT);
    let grpc = traffic::grpc(
        local(plan.client_grpc),
        grpc_calls,
        usize::from(concurrency),
        &caller,
    )
    .await
    .context("gRPC through the client proxy")?;
    let http = traffic::http(
        local(plan.client_web),
        &service_host(plan::WEB_SERVICE),
        http_requests,
        &caller,
    )
    .await
    .context("HTTP through the client proxy")?;
    Ok(Measurement { grpc, http })
}

fn bar(share: f64) -> String {
    "█".repeat((share.clamp(0.0, 1.0) * 36.0).round() as usize)
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

fn print_measurement(plan: &Plan, args: &DemoArgs, m: &Measurement, route: Option<(u32, u32)>) {
    outln!();
    outln!(
        "== gRPC: {} calls to grpc-echo over ONE channel, {} in flight",
        m.grpc.sent,
        args.concurrency
    );
    for b in plan.backends_of(App::GrpcEcho) {
        let n = m.grpc.by_pod.get(&b.pod).copied().unwrap_or(0);
        let share = pct(n, m.grpc.ok());
        outln!(
            "   {:<12} {n:>6} {share:>5.1}%  {}",
            b.pod,
            bar(share / 100.0)
        );
    }
    print_errors(&m.grpc);
    outln!(
        "   ({:.0} calls/s; kube-proxy balances connections: one channel would stick to one pod)",
        m.grpc.sent as f64 / m.grpc.elapsed.as_secs_f64().max(1e-9)
    );
    print_http(plan, &m.http, route);
    outln!();
    outln!("== mTLS between the proxies");
    outln!(
        "   {}/{} gRPC and {}/{} HTTP answers name the caller {}",
        m.grpc.from_client,
        m.grpc.ok(),
        m.http.from_client,
        m.http.ok(),
        spiffe_id(NAMESPACE, CLIENT)
    );
    outln!("   in x-forwarded-client-cert, which a backend's proxy sets only for a verified");
    outln!("   mTLS peer, e.g.");
    if let Some(x) = m.http.xfcc_sample.as_ref().or(m.grpc.xfcc_sample.as_ref()) {
        outln!("     {x}");
    }
}

fn print_http(plan: &Plan, t: &Tally, route: Option<(u32, u32)>) {
    outln!();
    let route = route
        .map(|(a, b)| format!(", route v1 {a} / v2 {b}"))
        .unwrap_or_default();
    outln!(
        "== HTTP: {} requests to web over ONE keep-alive connection{route}",
        t.sent
    );
    for version in ["v1", "v2"] {
        let pods: Vec<_> = plan
            .backends_of(App::HttpEcho)
            .filter(|b| b.version == version)
            .map(|b| (b.pod.as_str(), t.by_pod.get(&b.pod).copied().unwrap_or(0)))
            .collect();
        let n: u64 = pods.iter().map(|(_, n)| n).sum();
        let share = pct(n, t.ok());
        let detail: Vec<String> = pods.iter().map(|(p, n)| format!("{p} {n}")).collect();
        outln!(
            "   {version} {n:>6} {share:>5.1}%  {:<36} {}",
            bar(share / 100.0),
            detail.join(", ")
        );
    }
    print_errors(t);
}

fn print_errors(t: &Tally) {
    if t.failed() > 0 {
        outln!("   {} failed:", t.failed());
        for (e, n) in &t.errors {
            outln!("     {n:>6} {e}");
        }
    }
}

/// The `--once` checks, and their report.
#[derive(Default)]
struct Checks {
    results: Vec<(String, bool, String)>,
}

impl Checks {
    fn record(&mut self, what: &str, ok: bool, detail: String) {
        self.results.push((what.to_string(), ok, detail));
    }

    fn passed(&self) -> bool {
        self.results.iter().all(|(_, ok, _)| *ok)
    }

    fn print(&self) {
        outln!();
        outln!("== checks");
        for (what, ok, detail) in &self.results {
            outln!("   {} {what}: {detail}", if *ok { "ok  " } else { "FAIL" });
        }
    }

    fn no_failures(&mut self, what: &str, t: &Tally) -> bool {
        if t.failed() == 0 {
            return true;
        }
        let (e, n) = t.top_error().unwrap_or(("?", 0));
        self.record(
            what,
            false,
            format!("{} of {} failed (e.g. {n}x {e})", t.failed(), t.sent),
        );
        false
    }

    fn grpc_spread(&mut self, t: &Tally) {
        let what = "per-request gRPC balancing";
        if !self.no_failures(what, t) {
            return;
        }
        let shares: Vec<f64> = t
            .by_pod
            .values()
            .map(|n| *n as f64 / t.ok() as f64)
            .collect();
        let even = 1.0 / 3.0;
        let ok = shares.len() == 3 && shares.iter().all(|s| (s - even).abs() <= GRPC_TOLERANCE);
        let list: Vec<String> = shares
            .iter()
            .map(|s| format!("{:.1}%", s * 100.0))
            .collect();
        self.record(
            what,
            ok,
            format!(
                "{} backends answered one channel, shares {} (each must be 33.3% ± {:.0}%)",
                shares.len(),
                list.join(" / "),
                GRPC_TOLERANCE * 100.0
            ),
        );
    }

    fn share(&mut self, what: &str, t: &Tally, plan: &Plan, want: f64, tolerance: f64) {
        if !self.no_failures(what, t) {
            return;
        }
        let v2: u64 = plan
            .backends_of(App::HttpEcho)
            .filter(|b| b.version == "v2")
            .map(|b| t.by_pod.get(&b.pod).copied().unwrap_or(0))
            .sum();
        let share = v2 as f64 / t.ok().max(1) as f64;
        self.record(
            what,
            (share - want).abs() <= tolerance,
            format!(
                "v2 got {:.1}% of {} requests (must be {:.0}% ± {:.0}%)",
                share * 100.0,
                t.ok(),
                want * 100.0,
                tolerance * 100.0
            ),
        );
    }

    fn mtls(&mut self, m: &Measurement) {
        let ok = m.grpc.from_client == m.grpc.ok()
            && m.http.from_client == m.http.ok()
            && m.grpc.ok() + m.http.ok() > 0;
        self.record(
            "mTLS on every request",
            ok,
            format!(
                "{}/{} gRPC and {}/{} HTTP answers carry the client's verified identity",
                m.grpc.from_client,
                m.grpc.ok(),
                m.http.from_client,
                m.http.ok()
            ),
        );
    }
}

/// Interactive mode: say how to play, then measure every `--interval` (or
/// on Enter) until interrupted.
async fn interactive(args: &DemoArgs, setup: &Setup, sup: &mut Supervisor) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let plan = &setup.plan;
    let base_flag = if plan.base == 27000 {
        String::new()
    } else {
        format!(" --base-port {}", plan.base)
    };
    outln!();
    outln!("== the demo keeps running. Try:");
    outln!("   $EDITOR {}", setup.routes_file().display());
    outln!("       e.g. weights 50/50 (they must add up to 100), then save: the controller");
    outln!("       re-reads it within half a second and streams it to every proxy");
    outln!("   meshctl demo --check{base_flag}      # measure again, from another terminal");
    outln!(
        "   curl -s http://{}/                # one request to web: which pod, and who called it",
        local(plan.client_web)
    );
    outln!(
        "   curl -s http://{}/debug/syncz     # each proxy's config version and ACK",
        local(plan.controller_admin)
    );
    outln!(
        "   curl -s http://{}/config_dump     # what the client proxy runs",
        local(plan.client_admin)
    );
    outln!(
        "   curl -s http://{}/metrics | grep mesh_requests_total",
        local(plan.client_metrics)
    );
    outln!("   logs: {}/", setup.work.path.join("logs").display());
    outln!(
        "Every {:?} (or when you press Enter) meshctl sends {} gRPC calls and {} HTTP\n\
         requests and prints the split. Ctrl-C stops everything.",
        args.interval,
        (args.grpc_calls / 5).max(30),
        (args.http_requests / 5).max(100),
    );
    let mut stdin = Some(tokio::io::BufReader::new(tokio::io::stdin()).lines());
    let start = Instant::now();
    let mut last_note = String::new();
    loop {
        let line = async {
            match stdin.as_mut() {
                Some(s) => s.next_line().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            l = line => {
                if !matches!(l, Ok(Some(_))) {
                    // EOF or no terminal: go on with the timer only.
                    stdin = None;
                    continue;
                }
            }
            _ = tokio::time::sleep(args.interval) => {}
        }
        sup.check()?;
        let note = route_note(setup).await;
        if note != last_note {
            outln!("   {note}");
            last_note = note;
        }
        let m = measure(
            plan,
            (args.grpc_calls / 5).max(30),
            args.concurrency,
            (args.http_requests / 5).max(100),
        )
        .await?;
        outln!(
            "   [+{:>4}s] {}",
            start.elapsed().as_secs(),
            one_line(plan, &m)
        );
    }
}

/// The split and spread of one measurement, on one line.
fn one_line(plan: &Plan, m: &Measurement) -> String {
    let v2: u64 = plan
        .backends_of(App::HttpEcho)
        .filter(|b| b.version == "v2")
        .map(|b| m.http.by_pod.get(&b.pod).copied().unwrap_or(0))
        .sum();
    let ok = m.http.ok();
    let grpc: Vec<String> = plan
        .backends_of(App::GrpcEcho)
        .map(|b| m.grpc.by_pod.get(&b.pod).copied().unwrap_or(0).to_string())
        .collect();
    let mut line = format!(
        "web v1 {:>5.1}% v2 {:>5.1}% | grpc-echo {} | mTLS {}/{}",
        pct(ok - v2, ok),
        pct(v2, ok),
        grpc.join("/"),
        m.grpc.from_client + m.http.from_client,
        m.grpc.ok() + m.http.ok()
    );
    let failed = m.grpc.failed() + m.http.failed();
    if failed > 0 {
        let e = m
            .http
            .top_error()
            .or(m.grpc.top_error())
            .map(|(e, _)| e.to_string())
            .unwrap_or_default();
        line.push_str(&format!(" | {failed} FAILED (e.g. {e})"));
    }
    line
}

/// What the route file asks for, whether the controller accepted it, and
/// whether the proxies have it.
async fn route_note(setup: &Setup) -> String {
    let plan = &setup.plan;
    let file = setup.routes_file();
    let wanted = match std::fs::read_to_string(&file) {
        Ok(text) => match manifests::read_weights(&text) {
            Ok((a, b)) => format!("route file: v1 {a} / v2 {b}"),
            Err(e) => format!("route file: {e}"),
        },
        Err(e) => format!("route file {}: {e}", file.display()),
    };
    let ctl = local(plan.controller_admin);
    let rejected: Vec<String> =
        match admin::get_json::<Vec<ResourceStatus>>(ctl, "/debug/status").await {
            Ok(st) => st
                .into_iter()
                .filter(|s| !s.accepted)
                .map(|s| {
                    format!(
                        "{} {}/{} NOT accepted: {}",
                        s.kind, s.namespace, s.name, s.message
                    )
                })
                .collect(),
            Err(e) => vec![format!("controller status: {e:#}")],
        };
    let synced = match admin::get_json::<SyncReport>(ctl, "/debug/syncz").await {
        Ok(r) => {
            let pods = plan.proxy_pods();
            let n = pods
                .iter()
                .filter(|p| {
                    r.proxy(NAMESPACE, p)
                        .is_some_and(|s| s.status == "SYNCED" && s.snapshot >= r.latest_snapshot)
                })
                .count();
            format!(
                "{n}/{} proxies SYNCED at snapshot {}",
                pods.len(),
                r.latest_snapshot
            )
        }
        Err(e) => format!("syncz: {e:#}"),
    };
    let mut note = format!("{wanted}; {synced}");
    for r in rejected {
        note.push_str("\n   ");
        note.push_str(&r);
    }
    note
}

/// `--check`: measure a running demo.
async fn check_running(args: &DemoArgs) -> Result<bool> {
    let plan = Plan::new(args.base_port)?;
    let ctl = local(plan.controller_admin);
    let report: SyncReport = admin::get_json(ctl, "/debug/syncz").await.map_err(|e| {
        anyhow!(
            "no demo answers on port {} ({e:#}). Start one with `meshctl demo` (or scripts/demo){}",
            plan.controller_admin,
            if plan.base == 27000 {
                String::new()
            } else {
                format!(" --base-port {}", plan.base)
            }
        )
    })?;
    let pods = plan.proxy_pods();
    let synced = pods
        .iter()
        .filter(|p| {
            report
                .proxy(NAMESPACE, p)
                .is_some_and(|s| s.status == "SYNCED")
        })
        .count();
    outln!(
        "== demo on {}-{}: {synced}/{} proxies SYNCED at controller snapshot {}",
        plan.base,
        plan.base + plan::LAST_OFFSET,
        pods.len(),
        report.latest_snapshot
    );
    if synced < pods.len() {
        outln!("{}", report.describe(NAMESPACE, &pods));
    }
    if let Ok(st) = admin::get_json::<Vec<ResourceStatus>>(ctl, "/debug/status").await {
        for s in st.iter().filter(|s| !s.accepted) {
            outln!(
                "   {} {}/{} NOT accepted: {}",
                s.kind,
                s.namespace,
                s.name,
                s.message
            );
        }
    }
    let route = client_route(local(plan.client_admin)).await;
    match &route {
        Ok((a, b)) => outln!("   the client proxy routes web v1 {a} / v2 {b}"),
        Err(e) => outln!("   the client proxy's route: {e:#}"),
    }
    let m = measure(&plan, args.grpc_calls, args.concurrency, args.http_requests).await?;
    print_measurement(&plan, args, &m, route.ok());
    Ok(m.grpc.failed() == 0 && m.http.failed() == 0)
}

/// The v1/v2 weights of web's first route in the client proxy's running
/// config (`/config_dump`).
async fn client_route(admin_addr: SocketAddr) -> Result<(u32, u32)> {
    let dump: serde_json::Value = admin::get_json(admin_addr, "/config_dump").await?;
    let host = service_host(plan::WEB_SERVICE);
    // The running config is under `config` (next to version and stats).
    let services = dump
        .get("config")
        .unwrap_or(&dump)
        .get("services")
        .and_then(|s| s.as_array())
        .ok_or_else(|| anyhow!("no services in the client proxy's config"))?;
    let web = services
        .iter()
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(&host))
        .ok_or_else(|| anyhow!("the client proxy has no service {host}"))?;
    let Some(route) = web
        .get("httpRoutes")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("destinations"))
        .and_then(|d| d.as_array())
    else {
        return Ok((100, 0));
    };
    let (mut v1, mut v2) = (0, 0);
    let single = route.len() == 1;
    for d in route {
        let weight = d
            .get("weight")
            .and_then(|w| w.as_u64())
            .map(|w| u32::try_from(w).unwrap_or(u32::MAX))
            .unwrap_or(if single { 100 } else { 0 });
        match d
            .get("destination")
            .and_then(|d| d.get("subset"))
            .and_then(|s| s.as_str())
        {
            Some("v1") => v1 += weight,
            Some("v2") => v2 += weight,
            other => bail!("web routes to subset {other:?}, not v1/v2"),
        }
    }
    Ok((v1, v2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn missing_binaries_are_named_with_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh-ca"), "").unwrap();
        let err = find_binaries(Some(dir.path())).unwrap_err().to_string();
        for b in [
            "mesh-ca",
            "mesh-controller",
            "mesh-proxy",
            "grpc-echo",
            "http-echo",
        ] {
            assert!(err.contains(b), "{err}");
        }
        assert!(
            err.contains("cargo build --release -p mesh-ca -p mesh-controller -p mesh-proxy -p mesh-testapps"),
            "{err}"
        );
        for (b, _) in BINARIES {
            let p = dir.path().join(b);
            std::fs::write(&p, "").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(find_binaries(Some(dir.path())).unwrap(), dir.path());
    }

    #[test]
    fn busy_port_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // A plan whose controller admin port is the busy one.
        let Ok(plan) = Plan::new(port - 7) else {
            return;
        };
        let err = check_ports_free(&plan).unwrap_err().to_string();
        assert!(
            err.contains("is not free") && err.contains("--base-port"),
            "{err}"
        );
        // (An earlier port of the range may be taken by something else.)
        if err.contains(&format!("port {port} ")) {
            assert!(
                err.contains(&format!("port {port} (mesh-controller admin)")),
                "{err}"
            );
        }
    }

    #[test]
    fn checks_judge_spread_and_share() {
        let plan = Plan::new(27000).unwrap();
        let mut even = Tally::default();
        for (pod, n) in [
            ("grpc-echo-1", 100),
            ("grpc-echo-2", 95),
            ("grpc-echo-3", 105),
        ] {
            even.by_pod.insert(pod.into(), n);
        }
        even.sent = 300;
        let mut skewed = even.clone();
        skewed.by_pod.insert("grpc-echo-1".into(), 300);
        let mut c = Checks::default();
        c.grpc_spread(&even);
        assert!(c.passed());
        c.grpc_spread(&skewed);
        assert!(!c.passed());

        let mut web = Tally::default();
        web.by_pod.insert("web-v1-1".into(), 450);
        web.by_pod.insert("web-v1-2".into(), 450);
        web.by_pod.insert("web-v2-1".into(), 100);
        let mut c = Checks::default();
        c.share("split", &web, &plan, 0.10, 0.06);
        assert!(c.passed(), "{:?}", c.results);
        c.share("split", &web, &plan, 0.50, 0.10);
        assert!(!c.passed());

        let mut failing = web.clone();
        failing.errors.insert("HTTP 503".into(), 1);
        let mut c = Checks::default();
        c.share("split", &failing, &plan, 0.10, 0.06);
        assert!(!c.passed());
        assert!(c.results[0].2.contains("HTTP 503"));
    }
}
