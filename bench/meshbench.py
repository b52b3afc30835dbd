"""Helpers shared by the bench/ scripts (imported, not run).

Process handling (spawn pinned to a core, stop), /proc readings (VmRSS,
utime+stime), tool installs (Debian packages, fortio built from its Go
module and cached under ~/.cache/mesh-bench/fortio-<version>/), mTLS test
certificates (openssl, P-256, SPIFFE URI SANs), exact percentiles and the
median/spread of repeated runs.
"""
import json, os, platform, shutil, signal, statistics, subprocess, socket, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where results and the README go: docs/benchmarks/, or elsewhere (bench/run --quick points it at a
# scratch copy so that a smoke run leaves the checked-in figures alone).
DOCS = Path(os.environ.get("MESH_BENCH_DOCS") or ROOT / "docs" / "benchmarks")
RESULTS = DOCS / "results"
REL = ROOT / "target" / "release"
FORTIO_VERSION = os.environ.get("MESH_BENCH_FORTIO", "v1.66.5")  # the last release without the grol dependency
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mesh-bench"
HZ = os.sysconf("SC_CLK_TCK")
NO_BUILD = bool(os.environ.get("MESH_BENCH_NO_BUILD"))


def sh(*a, **kw):
    return subprocess.run(a, check=True, **kw)


def apt_install(pkgs):
    """Install Debian packages whose marker binary/module is missing: [(package, check)]."""
    need = [p for p, ok in pkgs if not ok()]
    if not need:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", *need, env=env)


def have(binary):
    return lambda: shutil.which(binary) is not None


def have_module(mod):
    def ok():
        # Debian's python3-* packages are for the system interpreter (not a pyenv or venv one).
        py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
        return subprocess.run([py, "-c", f"import {mod}"], capture_output=True).returncode == 0
    return ok


def cargo_build(*args):
    if NO_BUILD:
        return
    sh("cargo", "build", "--release", "-q", *args, cwd=ROOT)


def fortio():
    """Path of the fortio binary, built with `go install` once per version."""
    exe = CACHE / f"fortio-{FORTIO_VERSION}" / "fortio"
    if exe.exists():
        return str(exe)
    if not shutil.which("go"):
        apt_install([("golang-go", have("go"))])
    print(f"building fortio {FORTIO_VERSION} (go install, cached in {exe.parent})", flush=True)
    exe.parent.mkdir(parents=True, exist_ok=True)
    sh("go", "install", f"fortio.org/fortio@{FORTIO_VERSION}",
       env={**os.environ, "GOBIN": str(exe.parent), "CGO_ENABLED": "0"}, cwd=str(exe.parent))
    return str(exe)


class Procs:
    def __init__(self):
        self.procs = []

    def spawn(self, args, cpu=None, env=None, log=None):
        if cpu is not None and shutil.which("taskset"):
            args = ["taskset", "-c", str(cpu)] + list(args)
        out = open(log, "w") if log else subprocess.DEVNULL
        p = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def wait_http(url, timeout=20):
    import urllib.request
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def cpu_seconds(pids):
    t = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return t / HZ


class Sampler:
    """CPU (utime+stime) and peak VmRSS of some processes over a phase."""

    def __init__(self, pids):
        import threading
        self.pids, self.peak = list(pids), 0.0
        self.t0, self.c0 = time.time(), cpu_seconds(self.pids)
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stop_ev.is_set():
            self.peak = max(self.peak, rss_mb(self.pids))
            time.sleep(0.2)

    def done(self):
        self.stop_ev.set()
        self.th.join()
        cores = (cpu_seconds(self.pids) - self.c0) / (time.time() - self.t0)
        return round(cores, 4), round(max(self.peak, rss_mb(self.pids)), 2)


def percentiles(samples_ms):
    d = sorted(samples_ms)
    if not d:
        return {}
    q = lambda p: round(d[min(len(d) - 1, int(p * len(d)))], 3)
    return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "p999_ms": q(0.999), "samples": len(d)}


def median_row(runs, keys):
    """One row from repeated runs: the median of each key, and [min, max] in `spread`."""
    row = dict(runs[0])
    spread = {}
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if not vals:
            row[k] = None
            continue
        m = statistics.median(vals)
        row[k] = round(m, 4) if isinstance(m, float) else m
        if len(vals) > 1:
            spread[k] = [min(vals), max(vals)]
    row["repeats"] = len(runs)
    row["spread"] = spread
    return row


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def write_json(name, rows):
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / name
    dest.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {dest}", flush=True)


SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"


def make_certs(work):
    """A P-256 root and two SPIFFE leaves (client, server) with openssl."""
    work = Path(work)
    apt_install([("openssl", have("openssl"))])

    def run(*a):
        sh("openssl", *a, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "root.key")
    run("req", "-x509", "-new", "-key", "root.key", "-subj", "/O=mesh-bench/CN=mesh-bench root", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "root.pem")
    out = {"root": work / "root.pem"}
    for name, spiffe in [("server", SERVER_ID), ("client", CLIENT_ID)]:
        (work / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,URI:{spiffe}\n")
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key")
        run("req", "-new", "-key", f"{name}.key", "-subj", "/O=mesh-bench", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
        out[name] = (work / f"{name}.pem", work / f"{name}.key")
    return out


def version_of(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:
        return None
