//! `mesh-proxy init`: the init container's job. Writes the nat-table rules
//! that send the pod's TCP traffic through the proxy, then exits.
//!
//! Outbound TCP from the app goes to 15001, except traffic from the proxy
//! itself (UID/GID 1337, so it is never looped) and to loopback; inbound
//! TCP to the pod goes to 15006, except the proxy's own ports. The rules are
//! fed to `iptables-restore` in one transaction, so a half-applied set can
//! not happen, and re-running replaces our chains instead of adding to them.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use mesh_api::ports;

/// Settings of `mesh-proxy init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    pub dry_run: bool,

    /// UID the proxy runs as; its traffic is not redirected.
    #[arg(long, env = "MESH_PROXY_UID", default_value_t = mesh_api::PROXY_UID)]
    pub proxy_uid: u32,

    /// GID the proxy runs as; its traffic is not redirected.
    #[arg(long, env = "MESH_PROXY_GID", default_value_t = mesh_api::PROXY_UID)]
    pub proxy_gid: u32,

    /// Port of the proxy's outbound listener.
    #[arg(long, default_value_t = ports::PROXY_OUTBOUND)]
    pub outbound_port: u16,

    /// Port of the proxy's inbound listener.
    #[arg(long, default_value_t = ports::PROXY_INBOUND)]
    pub inbound_port: u16,

    /// Inbound ports to redirect: a comma-separated list, or `*` for all.
    #[arg(long, env = "MESH_INCLUDE_INBOUND_PORTS", default_value = "*")]
    pub include_inbound_ports: String,

    /// Inbound ports never redirected (comma-separated).
    #[arg(long, env = "MESH_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: String,

    /// Outbound destination ports never redirected (comma-separated).
    #[arg(long, env = "MESH_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub exclude_outbound_ports: String,

    /// Outbound destination CIDRs never redirected (comma-separated).
    #[arg(long, env = "MESH_EXCLUDE_OUTBOUND_CIDRS", default_value = "")]
    pub exclude_outbound_cidrs: String,

    /// Which iptables to use; `auto` picks the one the node already uses.
    #[arg(long, value_enum, env = "MESH_IPTABLES_MODE", default_value_t = IptablesMode::Auto)]
    pub iptables_mode: IptablesMode,
}

/// iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IptablesMode {
    Auto,
    Nft,
    Legacy,
}

/// Chains we own; every one is flushed and rebuilt on each run.
pub const CHAINS: [&str; 4] = [
    "MESH_INBOUND",
    "MESH_IN_REDIRECT",
    "MESH_OUTPUT",
    "MESH_REDIRECT",
];

fn parse_ports(s: &str, what: &str) -> anyhow::Result<Vec<u16>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("{what}: {p:?} is not a port"))
        })
        .collect()
}

fn parse_cidrs(s: &str, what: &str) -> anyhow::Result<Vec<String>> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (ip, len) = c.split_once('/').unwrap_or((c, "32"));
            let ip: std::net::Ipv4Addr = ip
                .parse()
                .with_context(|| format!("{what}: {c:?} is not an IPv4 CIDR"))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .with_context(|| format!("{what}: {c:?} has a bad prefix length"))?;
            Ok(format!("{ip}/{len}"))
        })
        .collect()
}

/// The rules as `iptables-restore --noflush` input. `with_jumps` adds the
/// jumps from the built-in chains (left out when they already exist).
pub fn render(args: &InitArgs, with_jumps: bool) -> anyhow::Result<String> {
    let exclude_in = parse_ports(&args.exclude_inbound_ports, "--exclude-inbound-ports")?;
    let exclude_out = parse_ports(&args.exclude_outbound_ports, "--exclude-outbound-ports")?;
    let cidrs = parse_cidrs(&args.exclude_outbound_cidrs, "--exclude-outbound-cidrs")?;
    let include_in = match args.include_inbound_ports.trim() {
        "*" => None,
        s => Some(parse_ports(s, "--include-inbound-ports")?),
    };

    let mut r = String::from("*nat\n");
    for c in CHAINS {
        r.push_str(&format!(":{c} - [0:0]\n"));
    }
    if with_jumps {
        r.push_str("-A PREROUTING -p tcp -j MESH_INBOUND\n");
        r.push_str("-A OUTPUT -p tcp -j MESH_OUTPUT\n");
    }
    // Inbound: the proxy's own ports are never redirected (kubelet probes
    // and Prometheus reach them directly).
    for p in ports::PROXY_PORTS.iter().chain(exclude_in.iter()) {
        r.push_str(&format!("-A MESH_INBOUND -p tcp --dport {p} -j RETURN\n"));
    }
    match &include_in {
        None => r.push_str("-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT\n"),
        Some(list) => {
            for p in list {
                r.push_str(&format!(
                    "-A MESH_INBOUND -p tcp --dport {p} -j MESH_IN_REDIRECT\n"
                ));
            }
        }
    }
    r.push_str(&format!(
        "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        args.inbound_port
    ));
    // Outbound: the proxy's own traffic must leave untouched, or it loops.
    r.push_str(&format!(
        "-A MESH_OUTPUT -m owner --uid-owner {} -j RETURN\n",
        args.proxy_uid
    ));
    r.push_str(&format!(
        "-A MESH_OUTPUT -m owner --gid-owner {} -j RETURN\n",
        args.proxy_gid
    ));
    r.push_str("-A MESH_OUTPUT -o lo -j RETURN\n");
    r.push_str("-A MESH_OUTPUT -d 127.0.0.0/8 -j RETURN\n");
    for p in &exclude_out {
        r.push_str(&format!("-A MESH_OUTPUT -p tcp --dport {p} -j RETURN\n"));
    }
    for c in &cidrs {
        r.push_str(&format!("-A MESH_OUTPUT -d {c} -j RETURN\n"));
    }
    r.push_str("-A MESH_OUTPUT -p tcp -j MESH_REDIRECT\n");
    r.push_str(&format!(
        "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        args.outbound_port
    ));
    r.push_str("COMMIT\n");
    Ok(r)
}

/// Whether this process has CAP_NET_ADMIN (bit 12 of CapEff).
fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    let caps = u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()?;
    Some(caps & (1 << 12) != 0)
}

fn count_rules(save: &str) -> Option<usize> {
    let out = Command::new(save).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .count()
    })
}

/// Picks the iptables binary prefix: the backend that already holds rules
/// (the node's kube-proxy or CNI wrote them), else the system default.
fn pick_backend(mode: IptablesMode) -> &'static str {
    match mode {
        IptablesMode::Nft => "iptables-nft",
        IptablesMode::Legacy => "iptables-legacy",
        IptablesMode::Auto => {
            let legacy = count_rules("iptables-legacy-save");
            let nft = count_rules("iptables-nft-save");
            match (legacy, nft) {
                (Some(l), Some(n)) if l > n => "iptables-legacy",
                (Some(l), Some(n)) if n > l => "iptables-nft",
                (Some(_), None) => "iptables-legacy",
                (None, Some(_)) => "iptables-nft",
                _ => "iptables",
            }
        }
    }
}

/// Applies the rules (or prints them with `--dry-run`).
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    if args.dry_run {
        print!("{}", render(args, true)?);
        return Ok(());
    }
    // Validate flags before touching anything.
    render(args, true)?;
    if has_net_admin() == Some(false) {
        bail!(
            "missing the NET_ADMIN capability: the init container needs NET_ADMIN and NET_RAW to write iptables rules"
        );
    }
    let bin = pick_backend(args.iptables_mode);
    // Jumps from built-in chains survive --noflush: add them only once.
    let jumps_exist = Command::new(bin)
        .args([
            "-t",
            "nat",
            "-C",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            "MESH_OUTPUT",
        ])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let rules = render(args, !jumps_exist)?;
    let restore = format!("{bin}-restore");
    let mut child = Command::new(&restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {restore} (is iptables installed?)"))?;
    child
        .stdin
        .take()
        .context("stdin of iptables-restore")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Permission denied") || err.contains("Operation not permitted") {
            bail!("{restore} was refused ({}): the init container needs the NET_ADMIN and NET_RAW capabilities", err.trim());
        }
        bail!("{restore} failed: {}", err.trim());
    }
    eprintln!("mesh-proxy init: iptables rules applied with {bin}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut v = vec!["t"];
        v.extend_from_slice(extra);
        T::parse_from(v).init
    }

    #[test]
    fn default_rules() {
        let r = render(&args(&[]), true).unwrap();
        assert!(r.starts_with("*nat\n:MESH_INBOUND - [0:0]\n"));
        assert!(r.contains("-A OUTPUT -p tcp -j MESH_OUTPUT\n"));
        assert!(r.contains("-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(r.contains("-A MESH_OUTPUT -m owner --gid-owner 1337 -j RETURN\n"));
        assert!(r.contains("-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        assert!(r.contains("-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
        assert!(r.contains("-A MESH_INBOUND -p tcp --dport 15020 -j RETURN\n"));
        assert!(r.ends_with("COMMIT\n"));
        // The owner exclusion comes before the redirect.
        assert!(r.find("--uid-owner").unwrap() < r.find("-j MESH_REDIRECT").unwrap());
    }

    #[test]
    fn exclusions_and_includes() {
        let r = render(
            &args(&[
                "--exclude-outbound-ports",
                "3306, 6379",
                "--exclude-outbound-cidrs",
                "10.0.0.0/8,192.168.1.1",
                "--include-inbound-ports",
                "8080,9090",
            ]),
            false,
        )
        .unwrap();
        assert!(!r.contains("-A OUTPUT"));
        assert!(r.contains("-A MESH_OUTPUT -p tcp --dport 3306 -j RETURN\n"));
        assert!(r.contains("-A MESH_OUTPUT -p tcp --dport 6379 -j RETURN\n"));
        assert!(r.contains("-A MESH_OUTPUT -d 10.0.0.0/8 -j RETURN\n"));
        assert!(r.contains("-A MESH_OUTPUT -d 192.168.1.1/32 -j RETURN\n"));
        assert!(r.contains("-A MESH_INBOUND -p tcp --dport 8080 -j MESH_IN_REDIRECT\n"));
        assert!(!r.contains("-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT\n"));
    }

    #[test]
    fn bad_flags_name_themselves() {
        let e = render(&args(&["--exclude-outbound-ports", "http"]), true).unwrap_err();
        assert!(e.to_string().contains("--exclude-outbound-ports"), "{e}");
        let e = render(&args(&["--exclude-outbound-cidrs", "10.0.0.0/40"]), true).unwrap_err();
        assert!(e.to_string().contains("--exclude-outbound-cidrs"), "{e}");
    }
}
