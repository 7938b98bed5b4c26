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
        (
            &["--healthz-bind-address", "everywhere"][..],
            "--healthz-bind-address",
        ),
        (
            &["--metrics-bind-address", "127.0.0.1:http"][..],
            "--metrics-bind-address",
        ),
        (&["--config-map", "kube-proxy"][..], "--config-map"),
        (
            &[
                "--config-map",
                "kube-system/kube-proxy",
                "--config",
                "x.yaml",
            ][..],
            "--config-map",
        ),
        (
            &["--config", "/nonexistent/kube-proxy.yaml"][..],
            "--config",
        ),
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

/// A test namespace and a `switchyard server` (no controllers) for the proxy binary to use.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    guard: NsGuard,
    name: String,
    ns: switchyard_netns::NetNs,
    dir: tempfile::TempDir,
    server: ServerProcess,
}

impl Fixture {
    /// `None` (with a loud message) where namespaces cannot be made.
    fn start() -> Option<Fixture> {
        if !can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return None;
        }
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let mut guard = NsGuard::new();
        let name = unique_name("b");
        let ns = runtime.block_on(guard.create(&name)).expect("ns");
        let dir = tempfile::tempdir().expect("tempdir");
        let server =
            ServerProcess::start(binary(), dir.path(), &["--no-controllers"]).expect("server");
        Some(Fixture {
            runtime,
            guard,
            name,
            ns,
            dir,
            server,
        })
    }
}

#[test]
fn the_proxy_binary_programs_the_kubernetes_service_into_its_namespace() {
    let Some(Fixture {
        runtime,
        guard: _guard,
        name,
        ns,
        dir: _dir,
        server,
    }) = Fixture::start()
    else {
        return;
    };
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

#[test]
fn a_config_file_with_a_bad_field_exits_64_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
    for (body, field) in [
        (
            format!("{head}nftables:\n  masqueradeEverything: true\n"),
            "masqueradeEverything",
        ),
        (
            format!("{head}nftables:\n  syncPeriod: 30\n"),
            "nftables.syncPeriod",
        ),
        (format!("{head}ipvs:\n  scheduler: wlc\n"), "ipvs.scheduler"),
        (format!("{head}mode: kernelspace\n"), "mode"),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n".into(),
            "kind",
        ),
    ] {
        let path = dir.path().join("kube-proxy.yaml");
        std::fs::write(&path, &body).expect("write");
        let out = Command::new(binary())
            .arg("proxy")
            .args(["--kubeconfig", "/nonexistent", "--hostname-override", "n1"])
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{body}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{body}: {stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
        assert!(stderr.contains("--config"), "{stderr}");
    }
}

#[test]
fn the_proxy_binary_serves_health_and_metrics_inside_its_namespace_from_a_config_file() {
    let Some(Fixture {
        runtime,
        guard: _guard,
        name,
        ns,
        dir,
        server,
    }) = Fixture::start()
    else {
        return;
    };
    let config = dir.path().join("kube-proxy.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: nftables\nclusterCIDR: 10.244.0.0/16\nmetricsBindAddress: 127.0.0.1:19249\n\
         nftables:\n  minSyncPeriod: 100ms\n",
    )
    .expect("write");
    let child = Command::new(binary())
        .arg("proxy")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["--hostname-override", "node-a", "--netns", &name])
        .arg("--config")
        .arg(&config)
        // Ignored with --config, as kube-proxy ignores its flags.
        .args(["--metrics-bind-address", "127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("proxy starts");
    let _proxy = ChildGuard(child);
    let get = |port: u16, path: &str| -> Option<String> {
        runtime.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut s = ns.connect_tcp(addr, Duration::from_secs(2)).await.ok()?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            Some(out)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthz = get(10256, "/healthz").unwrap_or_default();
        if healthz.starts_with("HTTP/1.1 200") {
            assert!(healthz.contains("\"nodeEligible\": true"), "{healthz}");
            break;
        }
        assert!(Instant::now() < deadline, "never healthy: {healthz}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = get(19249, "/metrics").expect("metrics on the file's address");
    assert!(
        metrics.contains(
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} "
        ),
        "{metrics}"
    );
}
