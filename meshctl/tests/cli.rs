//! The command line as a user meets it: help, and the errors that come
//! before anything starts. (`scripts/demo --once` runs the demo itself.)

use std::process::Command;

fn meshctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("running meshctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_only_what_exists() {
    let (code, out, _) = meshctl(&["--help"]);
    assert_eq!(code, 0);
    for command in [
        "demo",
        "install",
        "upgrade",
        "uninstall",
        "inject",
        "check",
        "route",
        "canary",
        "proxy-status",
        "proxy-config",
        "stat",
        "version",
    ] {
        assert!(out.contains(&format!("  {command} ")), "{out}");
        let (code, help, _) = meshctl(&[command, "--help"]);
        assert_eq!(code, 0, "{command} --help");
        assert!(help.contains("Usage: meshctl"), "{command}: {help}");
    }
}

#[test]
fn demo_help_documents_ports_files_and_flags() {
    let (code, out, _) = meshctl(&["demo", "--help"]);
    assert_eq!(code, 0);
    for needle in [
        "--once",
        "--check",
        "--base-port",
        "--dir",
        "web-routes.yaml",
        "B+7",
        "/debug/syncz",
        "docs/local-mode.md",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn missing_binaries_are_named_before_anything_starts() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = meshctl(&[
        "demo",
        "--once",
        "--bin-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mesh-controller"), "{err}");
    assert!(
        err.contains(
            "cargo build --release -p mesh-ca -p mesh-controller -p mesh-proxy -p mesh-testapps"
        ),
        "{err}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let (code, _, err) = meshctl(&["demo", "--base-port", "80"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("base port 80"), "{err}");
    let (code, _, err) = meshctl(&["demo", "--timeout", "soon"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = meshctl(&["demo", "--once", "--grpc-calls", "10"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least 300"), "{err}");
    let (code, _, _) = meshctl(&["demo", "--once", "--check"]);
    assert_eq!(code, 2);
}
