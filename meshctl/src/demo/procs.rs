//! The demo's child processes: started with their output in a log file,
//! watched for unexpected exits, and always stopped when the demo ends
//! (SIGTERM, then SIGKILL after a grace period). As a last resort, each
//! child gets SIGKILL from the kernel if meshctl itself dies (Linux
//! `PR_SET_PDEATHSIG`), so a killed demo leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How long children get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// One running child.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

/// A child that exited while it should have been running.
#[derive(Debug, Clone)]
pub struct Exited {
    pub name: String,
    pub status: ExitStatus,
    pub log: PathBuf,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited unexpectedly ({}); its log: {}",
            self.name,
            self.status,
            self.log.display()
        )
    }
}

impl std::error::Error for Exited {}

/// Starts, watches and stops the demo's processes.
#[derive(Debug)]
pub struct Supervisor {
    log_dir: PathBuf,
    procs: Vec<Proc>,
}

/// Environment variables that would change how a child behaves behind the
/// demo's back (they are settings of the mesh binaries and demo apps); the
/// demo passes everything it means as flags instead.
fn inherited_setting(name: &str) -> bool {
    (name.starts_with("MESH_") && name != "MESH_LOG_FORMAT")
        || name.starts_with("POD_")
        || matches!(
            name,
            "SERVICE_ACCOUNT" | "KUBECONFIG" | "PORT" | "FAIL_RATE" | "DELAY_MS"
        )
}

impl Supervisor {
    /// Logs go to `log_dir/<name>.log`.
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        Self {
            log_dir: log_dir.into(),
            procs: Vec::new(),
        }
    }

    /// The log file of the process called `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Every process's name and log file, in start order.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.log.clone()))
            .collect()
    }

    /// Starts `program args` with `env`, stdout and stderr to its log file,
    /// in its own process group (a terminal's ctrl-c reaches meshctl only,
    /// which then stops the children in order).
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<()> {
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating {}", self.log_dir.display()))?;
        let log = self.log_path(name);
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening log file {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if inherited_setting(&k.to_string_lossy()) {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            exited: None,
        });
        Ok(())
    }

    /// Fails with the first child that has exited.
    pub fn check(&mut self) -> Result<(), Exited> {
        for p in &mut self.procs {
            if p.exited.is_none() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    p.exited = Some(status);
                }
            }
            if let Some(status) = p.exited {
                return Err(Exited {
                    name: p.name.clone(),
                    status,
                    log: p.log.clone(),
                });
            }
        }
        Ok(())
    }

    /// Stops every child: SIGTERM to all, then SIGKILL to those still
    /// running after the grace period. Idempotent.
    pub async fn shutdown(&mut self) {
        // Clients first (the reverse of start order), so that servers see
        // their callers go before they do.
        for p in self.procs.iter_mut().rev() {
            if p.exited.is_some() {
                continue;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = Some(status);
                continue;
            }
            if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + GRACE;
        for p in &mut self.procs {
            if p.exited.is_some() {
                continue;
            }
            match tokio::time::timeout_at(deadline, p.child.wait()).await {
                Ok(Ok(status)) => p.exited = Some(status),
                _ => {
                    let _ = p.child.kill().await;
                    p.exited = p.child.try_wait().ok().flatten();
                }
            }
        }
    }
}

impl Drop for Supervisor {
    /// A fallback when `shutdown` did not run: SIGKILL whatever is left.
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.exited.is_none() {
                let _ = p.child.start_kill();
            }
        }
    }
}

/// The last `lines` lines of a log file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Asks the kernel to SIGKILL the child when meshctl dies, however it dies.
/// The signal follows the thread that forked: meshctl runs a single-threaded
/// runtime, so that thread lives as long as the process.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls async-signal-safe functions (prctl, getppid, _exit); it
    // allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody will stop us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_exits_and_stops_children() {
        let dir = tempfile::tempdir().unwrap();
        let mut sup = Supervisor::new(dir.path());
        sup.spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "echo started; exec sleep 30".into()],
            &[],
        )
        .unwrap();
        sup.spawn(
            "quitter",
            Path::new("/bin/sh"),
            &["-c".into(), "echo bye >&2; exit 3".into()],
            &[],
        )
        .unwrap();
        let mut exited = None;
        for _ in 0..100 {
            if let Err(e) = sup.check() {
                exited = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = exited.expect("the quitter's exit is reported");
        assert_eq!(e.name, "quitter");
        assert_eq!(e.status.code(), Some(3));
        assert_eq!(tail(&e.log, 5), "bye");
        // On a busy machine the sleeper's shell may not have run yet.
        for _ in 0..250 {
            if tail(&sup.log_path("sleeper"), 1) == "started" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = std::time::Instant::now();
        sup.shutdown().await;
        assert!(started.elapsed() < GRACE, "sleep stops on SIGTERM");
        assert!(sup.procs.iter().all(|p| p.exited.is_some()));
        assert_eq!(tail(&sup.log_path("sleeper"), 1), "started");
    }

    #[test]
    fn missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let mut sup = Supervisor::new(dir.path());
        let err = sup
            .spawn("ghost", Path::new("/nonexistent/ghost"), &[], &[])
            .unwrap_err();
        assert!(format!("{err:#}").contains("starting ghost (/nonexistent/ghost)"));
    }

    #[test]
    fn strips_mesh_settings_only() {
        assert!(inherited_setting("MESH_CONFIG"));
        assert!(inherited_setting("POD_NAMESPACE"));
        assert!(!inherited_setting("MESH_LOG_FORMAT"));
        assert!(!inherited_setting("PATH"));
        assert!(!inherited_setting("RUST_LOG"));
    }
}
