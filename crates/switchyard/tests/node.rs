//! `switchyard node` as a binary: bad flags exit 64 with one line; against a
//! `switchyard server` it registers its Node inside its own network namespace, runs a
//! `myapp:v1` pod (the built-in echo server) that answers HTTP on its pod IP, serves its logs
//! and exec, keeps it running across a `kill -9` and restart of the agent (same IP, logs still
//! served), and completes its deletion.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_netns::{NetNs, NsGuard};
use switchyard_testkit::{wait_for, ChildGuard, Kubectl, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

#[test]
fn bad_flags_exit_64_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("none.kubeconfig");
    let cases: &[(&[&str], &str)] = &[
        (&["--cluster-dns", "not-an-ip"], "--cluster-dns"),
        (&["--node-ip", "300.1.1.1"], "--node-ip"),
        (&["--netns", "sy-nonexistent0"], "--netns"),
        (&["--node-name", "Bad_Name"], "--node-name"),
        (
            &["--node-ip", "10.0.0.1", "--node-name", "n1"],
            "--kubeconfig",
        ),
    ];
    for (args, flag) in cases {
        let out = Command::new(binary())
            .arg("node")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--root-dir"])
            .arg(dir.path())
            .args(*args)
            .stdin(Stdio::null())
            .output()
            .expect("run switchyard node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

fn start_node(kubeconfig: &Path, ns: &NetNs, root: &Path) -> ChildGuard {
    let child = Command::new(binary())
        .arg("node")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", "bin-node", "--node-ip", "192.168.79.2"])
        .args(["--netns", ns.name().expect("named namespace")])
        .arg("--root-dir")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("switchyard node starts");
    ChildGuard(child)
}

async fn http_get(ns: &NetNs, addr: std::net::SocketAddr) -> Option<String> {
    let mut stream = ns.connect_tcp(addr, Duration::from_secs(1)).await.ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_binary_runs_an_echo_pod_and_survives_kill_9() {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: cannot create network namespaces (not root?)");
        return;
    }
    let Some(kubectl_bin) = switchyard_testkit::kubectl_path() else {
        eprintln!("SKIPPED: no kubectl");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(binary(), dir.path(), &[]).expect("server");
    let kubectl = Kubectl::new(kubectl_bin, &server.kubeconfig());
    let mut guard = NsGuard::new();
    let ns = guard
        .create(&switchyard_netns::unique_name("nb"))
        .await
        .expect("node namespace");
    ns.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ])
    .await
    .expect("veth");
    ns.ip(&["addr", "add", "192.168.79.2/24", "dev", "lan0"])
        .await
        .expect("addr");
    for link in ["lan0", "lan1"] {
        ns.ip(&["link", "set", link, "up"]).await.expect("up");
    }
    let root = tempfile::tempdir().expect("root dir");
    let mut node = start_node(&server.kubeconfig(), &ns, root.path());
    let wait = Duration::from_secs(60);
    wait_for(wait, "node bin-node Ready", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = kubectl.run(&[
            "get",
            "node",
            "bin-node",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out.stdout.trim() == "True").then_some(())
    })
    .await
    .expect("node ready");
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: app
    image: myapp:v1
    readinessProbe:
      httpGet: {path: /healthz, port: 80}
      periodSeconds: 1
"#;
    let applied = kubectl.run_with_stdin(&["apply", "-f", "-"], manifest);
    assert!(applied.stdout.contains("created"), "{applied:?}");
    let ip = wait_for(wait, "pod echo Ready with an IP", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = kubectl.run(&[
            "get",
            "pod",
            "echo",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.podIP}",
        ]);
        let text = out.stdout.trim().to_string();
        let (ready, ip) = text.split_once(' ')?;
        (ready == "True").then(|| ip.to_string())
    })
    .await
    .expect("pod ready");
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().expect("pod addr");
    let body = wait_for(wait, "the echo answer", || http_get(&ns, addr))
        .await
        .expect("echo answers");
    assert!(body.contains("echo"), "{body}");
    assert!(body.contains(&ip), "{body}");
    // kubectl exec and logs reach the pod through the API server and the node's endpoint.
    let host = kubectl.run(&["exec", "echo", "--", "hostname"]);
    assert_eq!(host.stdout, "echo\n", "{host:?}");
    let logs = kubectl.run(&["logs", "echo"]);
    assert!(
        logs.stdout.contains("listening on 0.0.0.0:80"),
        "the echo server's first line: {logs:?}"
    );

    // kill -9 of the agent: the pod keeps answering; a new agent keeps its IP.
    let _ = node.0.kill();
    let _ = node.0.wait();
    assert!(
        http_get(&ns, addr).await.is_some(),
        "pod answers with the agent dead"
    );
    let mut node2 = start_node(&server.kubeconfig(), &ns, root.path());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = kubectl.run(&["get", "pod", "echo", "-o", "jsonpath={.status.podIP}"]);
    assert_eq!(out.stdout.trim(), ip);
    assert!(http_get(&ns, addr).await.is_some());
    // The new agent serves the adopted container's log.
    let logs = wait_for(wait, "kubectl logs from the new agent", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = kubectl.run(&["logs", "echo"]);
        out.stdout
            .contains("listening on 0.0.0.0:80")
            .then_some(out)
    })
    .await
    .expect("logs after the restart");
    assert!(logs.success, "{logs:?}");

    // Deletion completes through the agent; the sandbox goes away.
    let deleted = kubectl.run(&["delete", "pod", "echo", "--timeout=60s"]);
    assert!(deleted.stdout.contains("deleted"), "{deleted:?}");
    wait_for(wait, "pod echo gone", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = kubectl.run(&["get", "pod", "echo", "--ignore-not-found", "-o", "name"]);
        out.stdout.trim().is_empty().then_some(())
    })
    .await
    .expect("pod gone");
    assert!(
        http_get(&ns, addr).await.is_none(),
        "nothing answers on the old IP"
    );

    // The cleanup command removes what the node made: the pod bridge and its state.
    let _ = node2.0.kill();
    let _ = node2.0.wait();
    assert!(ns.ip(&["link", "show", "sy-br0"]).await.is_ok());
    let out = Command::new(binary())
        .args(["node", "--cleanup", "--netns", ns.name().expect("named")])
        .arg("--root-dir")
        .arg(root.path())
        .output()
        .expect("cleanup runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ns.ip(&["link", "show", "sy-br0"]).await.is_err(),
        "the bridge is gone"
    );
    assert!(
        !root.path().join("ipam.json").exists(),
        "the IPAM state is gone"
    );
}
