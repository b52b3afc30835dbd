//! The `mesh-ca` binary: `serve` in local mode (bootstrap token file, CA
//! directory, metrics endpoint) and the root rotation steps.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_ca::client::{self, ClientError, Code};
use mesh_ca::csr::new_workload_csr;
use mesh_ca::{Authority, CaStore};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-ca");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn serve_local_mode_end_to_end() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "\"dev-token-web-0001\": {namespace: default, serviceAccount: web}\n",
    )
    .unwrap();
    let (grpc, metrics) = (free_port(), free_port());
    let _child = Kill(
        Command::new(BIN)
            .args(["serve", "--local-dir"])
            .arg(&ca_dir)
            .arg("--tokens-file")
            .arg(&tokens)
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--metrics", &format!("127.0.0.1:{metrics}")])
            .args(["--max-ttl", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The bundle file appears once the CA is initialised.
    let bundle_path = ca_dir.join("trust-bundle.pem");
    let start = Instant::now();
    let endpoint = format!("https://127.0.0.1:{grpc}");
    let (_, csr) = new_workload_csr(None).unwrap();
    let resp = loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "CA did not come up"
        );
        if let Ok(bundle) = std::fs::read_to_string(&bundle_path) {
            match client::sign(
                &endpoint,
                &bundle,
                "dev-token-web-0001",
                &csr,
                Duration::ZERO,
            )
            .await
            {
                Ok(r) => break r,
                Err(ClientError::Transport(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        client::uri_sans(&resp.cert_chain_pem[0]).unwrap(),
        vec!["spiffe://cluster.local/ns/default/sa/web".to_string()]
    );
    let bundle = std::fs::read_to_string(&bundle_path).unwrap();
    let e = client::sign(
        &endpoint,
        &bundle,
        "wrong-token-00000",
        &csr,
        Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::Status(s) if s.code() == Code::Unauthenticated));
    // Keys are private.
    use std::os::unix::fs::PermissionsExt;
    for k in ["root-key.pem", "ca-key.pem"] {
        let mode = std::fs::metadata(ca_dir.join(k))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{k} is readable by others");
    }
    // Metrics.
    let text = http_get(&format!("127.0.0.1:{metrics}"), "/metrics")
        .await
        .unwrap();
    assert!(
        text.contains("mesh_ca_certificates_signed_total 1"),
        "{text}"
    );
    assert!(
        text.contains("mesh_ca_refusals_total{reason=\"unauthenticated\"} 1"),
        "{text}"
    );
    assert!(text.contains("mesh_ca_cert_expiry_timestamp_seconds{cert=\"root\"}"));
}

fn run(args: &[&str], dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--local-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mesh-ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn openssl_verify(roots: &str, inter: &str, leaf: &str, dir: &Path) -> bool {
    std::fs::write(dir.join("r.pem"), roots).unwrap();
    std::fs::write(dir.join("i.pem"), inter).unwrap();
    std::fs::write(dir.join("l.pem"), leaf).unwrap();
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join("r.pem"))
        .arg("-untrusted")
        .arg(dir.join("i.pem"))
        .arg(dir.join("l.pem"))
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn root_rotation_stage_activate_retire() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let store = CaStore::Local(ca.clone());
    let id = mesh_ca::WorkloadIdentity::new("cluster.local", "default", "web").unwrap();
    let (_, csr) = new_workload_csr(None).unwrap();
    let old = Authority::load_or_create(&store, None).await.unwrap();
    let old_leaf = old.sign(&id, &csr, Duration::from_secs(600)).unwrap();
    let old_root = old.material().root_cert_pem;

    run(&["root", "stage"], &ca);
    let staged = Authority::load_or_create(&store, None).await.unwrap();
    assert_eq!(staged.trust_bundle_pem().len(), 2);
    assert_eq!(
        staged.material().root_cert_pem,
        old_root,
        "stage must not switch the signer"
    );

    run(&["root", "activate"], &ca);
    let active = Authority::load_or_create(&store, None).await.unwrap();
    assert_ne!(active.material().root_cert_pem, old_root);
    assert!(active.material().staged_root.is_none());
    let bundle = active.trust_bundle_pem().concat();
    let new_leaf = active.sign(&id, &csr, Duration::from_secs(600)).unwrap();
    // During the overlap both old and new leaves verify with the bundle.
    let tmp = dir.path();
    assert!(openssl_verify(
        &bundle,
        &old_leaf.cert_chain_pem[1],
        &old_leaf.cert_chain_pem[0],
        tmp
    ));
    assert!(openssl_verify(
        &bundle,
        &new_leaf.cert_chain_pem[1],
        &new_leaf.cert_chain_pem[0],
        tmp
    ));

    run(&["root", "retire"], &ca);
    let retired = Authority::load_or_create(&store, None).await.unwrap();
    let bundle = retired.trust_bundle_pem();
    assert_eq!(bundle.len(), 1);
    let bundle = bundle.concat();
    assert!(openssl_verify(
        &bundle,
        &new_leaf.cert_chain_pem[1],
        &new_leaf.cert_chain_pem[0],
        tmp
    ));
    assert!(!openssl_verify(
        &bundle,
        &old_leaf.cert_chain_pem[1],
        &old_leaf.cert_chain_pem[0],
        tmp
    ));
}

#[test]
fn help_and_bad_flags() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--local-dir",
        "--tokens-file",
        "--kube",
        "--trust-domain",
        "--max-ttl",
        "--plugin-cert",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
    let out = Command::new(BIN).args(["serve"]).output().unwrap();
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args([
            "serve",
            "--local-dir",
            "/tmp/x",
            "--tokens-file",
            "/nonexistent",
            "--max-ttl",
            "5y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
