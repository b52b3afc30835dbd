//! Hosts in network namespaces for the tests that need a real network:
//! a hub namespace with a bridge, and one namespace per host on a veth
//! into it, each with `eth0` at `SUBNET.N/24`. Everything is deleted on
//! drop, children killed first.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use nix::sched::{setns, CloneFlags};

/// Hub plus hosts; `children` are killed and namespaces deleted on drop.
pub struct Topology {
    pub prefix: String,
    pub subnet: String,
    pub children: Vec<Child>,
    hosts: Vec<String>,
    /// World-readable scratch directory (the proxy may run as UID 1337).
    pub dir: tempfile::TempDir,
}

impl Topology {
    /// Namespaces `{prefix}{name}` for `hosts` (name, last octet of the
    /// address) plus the hub `{prefix}h`. `tag` keeps parallel tests apart.
    pub fn new(tag: &str, subnet: &str, hosts: &[(&str, u8)]) -> Topology {
        let prefix = format!("{tag}{}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("mesh-netns")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let t = Topology {
            prefix,
            subnet: subnet.to_string(),
            children: Vec::new(),
            hosts: hosts.iter().map(|(n, _)| n.to_string()).collect(),
            dir,
        };
        let hub = t.ns("h");
        for n in t.hosts.iter().map(String::as_str).chain(["h"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &t.ns(n)])
                .stderr(Stdio::null())
                .status();
            sh(&["ip", "netns", "add", &t.ns(n)]);
            in_ns(&t.ns(n), &["ip", "link", "set", "lo", "up"]);
        }
        in_ns(&hub, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&hub, &["ip", "link", "set", "br0", "up"]);
        for (n, host) in hosts {
            let ns = t.ns(n);
            let (a, b) = (format!("{}v{n}", t.prefix), format!("{}e{n}", t.prefix));
            sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
            sh(&["ip", "link", "set", &a, "netns", &hub]);
            sh(&["ip", "link", "set", &b, "netns", &ns]);
            in_ns(&hub, &["ip", "link", "set", &a, "master", "br0"]);
            in_ns(&hub, &["ip", "link", "set", &a, "up"]);
            in_ns(&ns, &["ip", "link", "set", &b, "name", "eth0"]);
            let addr = format!("{subnet}.{host}/24");
            in_ns(&ns, &["ip", "addr", "add", &addr, "dev", "eth0"]);
            in_ns(&ns, &["ip", "link", "set", "eth0", "up"]);
        }
        t
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.hosts.iter().map(String::as_str).chain(["h"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
    }
}

/// Whether the network-namespace tests can run; they need root. With
/// MESH_SKIP_NETNS=1 they are skipped (said on stderr), otherwise a
/// non-root run fails rather than passing silently.
pub fn netns_enabled(test: &str) -> bool {
    if std::env::var("MESH_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("MESH_SKIP_NETNS=1: not running {test}");
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (network namespaces, iptables); set MESH_SKIP_NETNS=1 to skip"
    );
    true
}

/// Runs a command; panics with its stderr when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command inside namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v);
}

/// Runs `f` on a thread inside network namespace `ns`; sockets it creates
/// stay in that namespace after the thread ends.
pub fn with_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).expect("netns file");
        setns(fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Runs an async block to completion inside `ns`, on its own runtime.
pub fn block_in_ns<T, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    with_netns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

/// A non-blocking listener bound inside `ns`.
pub fn bind_in(ns: &str, addr: &str) -> std::net::TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    with_netns(ns, move || {
        let l = std::net::TcpListener::bind(addr).expect("bind in netns");
        l.set_nonblocking(true).unwrap();
        l
    })
}
