//! The `switchyard server` command line: bad configuration and a data directory already in use
//! end with exit code 64 and a one-line message, before anything is served or overwritten. The
//! hidden `switchyard container-shim`: exit codes and signals of its command, passed on and
//! recorded.

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

fn shim(dir: &Path, command: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("container-shim")
        .arg(dir)
        .arg("--")
        .args(command)
        .output()
        .expect("runs")
}

fn exit_file(dir: &Path) -> (Option<i64>, Option<i64>) {
    let exit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("exit.json")).expect("exit file"))
            .expect("json");
    (exit["exit_code"].as_i64(), exit["signal"].as_i64())
}

#[test]
fn the_container_shim_passes_on_and_records_exit_codes_and_signals() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The agent makes it a FIFO; any file will do as the container's stdout.
    std::fs::write(dir.path().join("stdout"), "").expect("stdout file");
    let out = shim(dir.path(), &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.starts_with("started ") && report.lines().count() == 1,
        "{report}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stdout")).expect("stdout"),
        "out\n"
    );
    assert_eq!(exit_file(dir.path()), (Some(3), None));

    // The container starts with no signal blocked or ignored by the shim.
    let out = shim(dir.path(), &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143), "128 + SIGTERM");
    assert_eq!(exit_file(dir.path()), (Some(143), Some(15)));

    let out = shim(dir.path(), &["/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("error "),
        "{out:?}"
    );
}

#[test]
fn a_bad_container_shim_command_line_exits_64_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [vec![], vec!["sh"]] {
        let out = Command::new(binary())
            .arg("container-shim")
            .arg(dir.path())
            .args(&args)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
