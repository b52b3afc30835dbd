//! Reaching the cluster: `--kubeconfig` / `--context`, and one clear error
//! (with its own exit code) when there is no cluster to talk to.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::Client;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command failed (or refused, e.g. uninstall without `--yes`).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad flags or arguments (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no cluster configured or reachable.
pub const EXIT_UNREACHABLE: u8 = 3;

/// How long to wait for the API server to answer its first request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags every cluster command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster ServiceAccount).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// Why there is no usable cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be read or has no such context.
    #[error("cannot load the cluster configuration from {source_desc}: {message}")]
    Config {
        /// Which kubeconfig (or "in-cluster config").
        source_desc: String,
        /// What went wrong, one line.
        message: String,
    },
    /// The API server did not answer.
    #[error("cannot reach the Kubernetes API server at {server} (from {source_desc}): {message}")]
    Unreachable {
        /// The server URL.
        server: String,
        /// Which kubeconfig.
        source_desc: String,
        /// What went wrong, one line.
        message: String,
    },
}

impl ClusterArgs {
    /// Which kubeconfig will be used, for messages.
    pub fn describe(&self) -> String {
        let file = match (&self.kubeconfig, std::env::var_os("KUBECONFIG")) {
            (Some(p), _) => format!("--kubeconfig {}", p.display()),
            (None, Some(v)) if !v.is_empty() => format!("KUBECONFIG={}", v.to_string_lossy()),
            _ => "~/.kube/config or the in-cluster config".to_string(),
        };
        match &self.context {
            Some(c) => format!("{file}, context {c}"),
            None => file,
        }
    }

    async fn config(&self) -> Result<Config, ClusterError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let err = |e: &dyn std::fmt::Display| ClusterError::Config {
            source_desc: self.describe(),
            message: one_line(e),
        };
        match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| err(&e))
            }
            (None, Some(_)) => Config::from_kubeconfig(&options).await.map_err(|e| err(&e)),
            (None, None) => Config::infer().await.map_err(|e| err(&e)),
        }
    }

    /// A client for the cluster, after checking that its API server
    /// answers (GET /version).
    pub async fn connect(&self) -> Result<Client, ClusterError> {
        // kube uses rustls with ring; the process may not have chosen a
        // provider yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = self.config().await?;
        config.connect_timeout = Some(PROBE_TIMEOUT);
        let server = config.cluster_url.to_string();
        let unreachable = |message: String| ClusterError::Unreachable {
            server: server.clone(),
            source_desc: self.describe(),
            message,
        };
        let client = Client::try_from(config).map_err(|e| unreachable(one_line(&e)))?;
        match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(client),
            Ok(Err(e)) => Err(unreachable(one_line(&e))),
            Err(_) => Err(unreachable(format!(
                "no answer within {}s",
                PROBE_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// An error and its causes on one line (`a: b: c`).
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_kubeconfig_is_a_config_error() {
        let args = ClusterArgs {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            context: None,
        };
        let Err(e) = args.connect().await else {
            panic!("connected")
        };
        assert!(matches!(e, ClusterError::Config { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("--kubeconfig /nonexistent/kubeconfig"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n\
                 users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
                 current-context: x\n"
            ),
        )
        .unwrap();
        let args = ClusterArgs {
            kubeconfig: Some(path),
            context: None,
        };
        let Err(e) = args.connect().await else {
            panic!("connected")
        };
        assert!(matches!(e, ClusterError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");

        let args = ClusterArgs {
            context: Some("nope".into()),
            ..args
        };
        let Err(e) = args.connect().await else {
            panic!("connected")
        };
        assert!(matches!(e, ClusterError::Config { .. }), "{e}");
    }
}
