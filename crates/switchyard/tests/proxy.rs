//! `switchyard proxy`: bad flags exit 64 with one line; against a `switchyard server` the binary
//! programs the rules of a network namespace made for the test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_netns::{can_create_namespaces, unique_name, NsGuard};
use switchyard_testkit::{ChildGuard, ServerProcess};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

#[test]
fn bad_proxy_flags_exit_64_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (&["--ipvs-scheduler", "wlc"][..], "--ipvs-scheduler"),
        (&["--proxy-mode", "iptables"][..], "--proxy-mode"),
        (&["--ipvs-scheduler", "lc"][..], "--ipvs-scheduler"),
        (&["--cluster-cidr", "10.244.0.0/99"][..], "--cluster-cidr"),
        (
            &["--nodeport-addresses", "192.168.0.0/16,nope"][..],
            "--nodeport-addresses",
        ),
        (&["--netns", "sy-does-not-exist"][..], "--netns"),
    ] {
        let out = Command::new(binary())
            .arg("proxy")
            .args(["--kubeconfig", "/nonexistent", "--hostname-override", "n1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn the_proxy_binary_programs_the_kubernetes_service_into_its_namespace() {
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut guard = NsGuard::new();
    let name = unique_name("b");
    let ns = runtime.block_on(guard.create(&name)).expect("ns");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(binary(), dir.path(), &["--no-controllers"]).expect("server");
    let child = Command::new(binary())
        .arg("proxy")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["--hostname-override", "node-a", "--netns", &name])
        .args([
            "--cluster-cidr",
            "10.244.0.0/16",
            "--min-sync-period",
            "100ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("proxy starts");
    let _proxy = ChildGuard(child);
    // The `kubernetes` Service's ClusterIP (first address of the default 10.96.0.0/12).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table = runtime
            .block_on(ns.nft(&["list", "map", "ip", "switchyard", "service-ips"], None))
            .unwrap_or_default();
        let no_endpoints = runtime
            .block_on(ns.nft(
                &["list", "map", "ip", "switchyard", "no-endpoint-services"],
                None,
            ))
            .unwrap_or_default();
        if table.contains("10.96.0.1 . tcp . 443") || no_endpoints.contains("10.96.0.1 . tcp . 443")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rules for the kubernetes service:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
