//! `kubectl logs` end to end through the API server to a node's kubelet endpoint, which reads
//! the CRI log files the runtime writes.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use switchyard_node::logs::container_log_path;
use switchyard_node::server::KubeletServer;
use switchyard_testkit::{kubectl_path, InProcessServer, Kubectl};

/// Node `node-1` whose kubelet endpoint is `kubelet`, and `pod` (bound to it) in `default`.
async fn node_with_pod(
    client: &kube::Client,
    kubelet: std::net::SocketAddr,
    pod: serde_json::Value,
) -> Api<Pod> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = serde_json::json!({"metadata": {"name": "node-1", "annotations": {
        switchyard_api::node::KUBELET_ENDPOINT_ANNOTATION: kubelet.to_string()}}});
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node).expect("node"),
        )
        .await
        .expect("create node");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).expect("pod"),
    )
    .await
    .expect("create pod");
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_reads_the_nodes_files() {
    let Some(kubectl) = kubectl_path() else {
        eprintln!("SKIPPED: kubectl not found (the test command installs it; v1.32 expected at /usr/bin/kubectl)");
        return;
    };
    let server = InProcessServer::start().await.expect("server");
    let client = server.client().await.expect("client");
    let root = tempfile::tempdir().expect("root");
    let uid_dir = "0b7c2a0e-1111-2222-3333-444455556666";
    let log = container_log_path(root.path(), "default", "web", uid_dir, "app", 0);
    std::fs::create_dir_all(log.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &log,
        "2026-11-22T07:00:00.000000000Z stdout F first line\n\
         2026-11-22T07:00:01.000000000Z stderr F second line\n\
         2026-11-22T07:00:02.000000000Z stdout P third \n\
         2026-11-22T07:00:02.500000000Z stdout F line\n",
    )
    .expect("write log");

    let ca = std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca.crt");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let kubelet = KubeletServer::start(
        listener,
        root.path().to_path_buf(),
        "node-1",
        &ca,
        std::sync::Arc::new(|_: &str, _: &str| None),
    )
    .expect("kubelet");

    let pods = node_with_pod(
        &client,
        kubelet.local_addr(),
        serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {"nodeName": "node-1", "containers": [
                    {"name": "app", "image": "myapp:v1"}, {"name": "side", "image": "busybox"}]},
        }),
    )
    .await;
    let status = serde_json::json!({"status": {"phase": "Running", "containerStatuses": [
        {"name": "app", "image": "myapp:v1", "imageID": "", "ready": true, "restartCount": 0,
         "state": {"running": {"startedAt": "2026-11-22T07:00:00Z"}}},
        {"name": "side", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "ErrImagePull"}}}]}});
    pods.patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");

    let k = Kubectl::new(kubectl, server.kubeconfig());
    let t = std::time::Instant::now();
    let all = k.ok(&["logs", "web", "-c", "app"]).expect("kubectl logs");
    eprintln!("kubectl logs in {:?}", t.elapsed());
    assert_eq!(all, "first line\nsecond line\nthird line\n");
    let tail = k
        .ok(&["logs", "web", "-c", "app", "--tail=1"])
        .expect("tail");
    assert_eq!(tail, "third line\n");
    let stamped = k
        .ok(&["logs", "web", "-c", "app", "--timestamps", "--tail=1"])
        .expect("timestamps");
    assert!(stamped.starts_with("2026-11-22T07:00:02"), "{stamped}");

    // kubectl picks the first container itself; the API asks for one.
    let t = std::time::Instant::now();
    let ambiguous = pods
        .logs("web", &kube::api::LogParams::default())
        .await
        .expect_err("two containers, none named");
    assert!(
        ambiguous
            .to_string()
            .contains("a container name must be specified for pod web, choose one of: [app side]"),
        "{ambiguous}"
    );
    eprintln!("api error in {:?}", t.elapsed());
    let waiting = k.run(&["logs", "web", "-c", "side"]);
    assert!(
        waiting.stderr.contains("is waiting to start: ErrImagePull"),
        "{}",
        waiting.stderr
    );
    let unknown = k.run(&["logs", "web", "-c", "nope"]);
    assert!(
        unknown
            .stderr
            .contains("container nope is not valid for pod web"),
        "{}",
        unknown.stderr
    );

    // Follow: new lines arrive while the stream is open.
    let mut follow = k
        .spawn(&["logs", "-f", "web", "-c", "app"])
        .expect("follow");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    std::io::Write::write_all(
        &mut f,
        b"2026-11-22T07:00:03.000000000Z stdout F fourth line\n",
    )
    .expect("append");
    let stdout = follow.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l == "fourth line") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no followed line within 10 s; saw {seen:?}"),
        }
    }
    assert_eq!(seen[..3], ["first line", "second line", "third line"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_runs_in_the_pods_sandbox() {
    use switchyard_node::sandbox::{netns_name, PodNetwork, SandboxSpec};
    let Some(kubectl) = kubectl_path() else {
        eprintln!("SKIPPED: kubectl not found (the test command installs it; v1.32 expected at /usr/bin/kubectl)");
        return;
    };
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let mut guard = switchyard_netns::NsGuard::new();
    let node_ns = guard
        .create(&switchyard_netns::unique_name("n"))
        .await
        .expect("node namespace");
    let state = tempfile::tempdir().expect("state");
    let network = PodNetwork::setup(
        node_ns,
        "10.244.9.0/24".parse().expect("cidr"),
        state.path(),
    )
    .await
    .expect("pod network");
    let uid = format!("exec-{}", std::process::id());
    guard.adopt(&netns_name(&uid));
    let sandbox = network
        .create_sandbox(&SandboxSpec {
            pod_uid: uid.clone(),
            namespace: "default".into(),
            name: "shell".into(),
            hostname: "shell-host".into(),
            resolv_conf: "nameserver 10.96.0.10\n".into(),
            hosts: "127.0.0.1\tlocalhost\n".into(),
        })
        .await
        .expect("sandbox");
    let pod_ip = sandbox.ip;

    let server = InProcessServer::start().await.expect("server");
    let client = server.client().await.expect("client");
    let ca = std::fs::read(server.dir.path().join("pki/ca.crt")).expect("ca.crt");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let found = sandbox.clone();
    let kubelet = KubeletServer::start(
        listener,
        state.path().to_path_buf(),
        "node-1",
        &ca,
        std::sync::Arc::new(move |ns: &str, name: &str| {
            (ns == "default" && name == "shell").then(|| found.clone())
        }),
    )
    .expect("kubelet");
    node_with_pod(
        &client,
        kubelet.local_addr(),
        serde_json::json!({
                "metadata": {"name": "shell"},
                "spec": {"nodeName": "node-1", "containers": [{"name": "sh", "image": "busybox"}]},
        }),
    )
    .await;

    let k = Kubectl::new(kubectl, server.kubeconfig());
    // The pod's UTS and network namespaces.
    let host = k
        .ok(&["exec", "shell", "--", "hostname"])
        .expect("exec hostname");
    assert_eq!(host, "shell-host\n");
    let addrs = k
        .ok(&[
            "exec", "shell", "-c", "sh", "--", "ip", "-o", "-4", "addr", "show", "eth0",
        ])
        .expect("exec ip");
    assert!(addrs.contains(&pod_ip.to_string()), "{addrs}");
    // Separate streams and the exit code.
    let out = k.run(&[
        "exec",
        "shell",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert!(!out.success);
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err"), "{}", out.stderr);
    assert!(out.stderr.contains("exit code 3"), "{}", out.stderr);
    // Standard input.
    let echoed = k.run_with_stdin(
        &["exec", "-i", "shell", "--", "tr", "a-z", "A-Z"],
        "hello pod\n",
    );
    assert!(echoed.success, "{}", echoed.stderr);
    assert_eq!(echoed.stdout, "HELLO POD\n");
    // A pod not on the node and an unknown container are refused with clear messages.
    let unknown = k.run(&["exec", "shell", "-c", "nope", "--", "true"]);
    assert!(
        unknown
            .stderr
            .contains("container nope is not valid for pod shell"),
        "{}",
        unknown.stderr
    );

    drop(kubelet);
    network.destroy_sandbox(&uid).await.expect("destroy");
}
