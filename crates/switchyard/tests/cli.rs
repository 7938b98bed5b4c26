//! The `switchyard server` command line: bad configuration and a data directory already in use
//! end with exit code 64 and a one-line message, before anything is served or overwritten.

use std::path::Path;
use std::process::Command;

use switchyard_testkit::ServerProcess;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn server(data_dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("server")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--secure-port", "0"])
        .args(extra)
        .output()
        .expect("runs")
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused_and_leaves_the_first_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ServerProcess::start(binary(), dir.path(), &[]).expect("first server starts");
    let kubeconfig_before = std::fs::read(first.kubeconfig()).expect("kubeconfig");
    let out = server(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another switchyard server is using --data-dir"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(first.kubeconfig()).expect("kubeconfig"),
        kubeconfig_before
    );
}

#[test]
fn the_data_dir_is_free_again_once_its_server_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = ServerProcess::start(binary(), dir.path(), &[]).expect("first server starts");
    first.kill();
    ServerProcess::start(binary(), dir.path(), &[]).expect("a new server takes over the directory");
}

#[test]
fn bad_ranges_exit_64_with_a_message_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, value) in [
        ("--service-node-port-range", "32767-30000"),
        ("--service-cluster-ip-range", "10.0.0.0/33"),
        ("--cluster-cidr", "not-a-cidr"),
    ] {
        let out = server(dir.path(), &[flag, value]);
        assert_eq!(out.status.code(), Some(64), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
}

#[test]
fn bad_controller_settings_exit_64_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, expected) in [
        (
            &["--leader-elect-renew-deadline", "20s"][..],
            "leaseDuration must be greater than renewDeadline",
        ),
        (
            &["--leader-elect-retry-period", "9s"][..],
            "renewDeadline must be greater than retryPeriod",
        ),
        (&["--node-cidr-mask-size", "8"][..], "--node-cidr-mask-size"),
        (
            &["--node-monitor-grace-period", "forty"][..],
            "invalid duration",
        ),
    ] {
        let out = server(dir.path(), args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(
            matches!(out.status.code(), Some(64) | Some(2)),
            "{args:?}: {:?}",
            out.status
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Nothing was written for a refused configuration.
    assert!(!dir.path().join("admin.kubeconfig").exists());
}

#[test]
fn the_controller_manager_needs_a_readable_kubeconfig() {
    let out = Command::new(binary())
        .args([
            "controller-manager",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
}
