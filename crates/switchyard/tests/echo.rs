//! The built-in echo image end to end: `myapp:v1` from the image catalog runs
//! `switchyard echo-server` as a container in a real pod sandbox; another pod reaches it over the
//! bridge (HTTP and UDP) and a second container of the same pod reaches it over localhost.
//! Needs root (skips loudly otherwise).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchyard_netns::{NetNs, NsGuard};
use switchyard_node::catalog::ImageCatalog;
use switchyard_node::logs::{container_log_path, read_logs, LogOptions};
use switchyard_node::runtime::ContainerSpec;
use switchyard_node::sandbox::{netns_name, PodNetwork, SandboxSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills what is left in the pod namespaces and deletes them, also when the test fails.
struct PodGuard(Vec<String>);

impl Drop for PodGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            if !NetNs::exists(name) {
                continue;
            }
            if let Ok(out) = std::process::Command::new("ip")
                .args(["netns", "pids", name])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", pid])
                        .status();
                }
            }
            NetNs::delete_blocking(name);
        }
    }
}

fn spec(name: &str) -> SandboxSpec {
    SandboxSpec {
        pod_uid: format!("echo-{}-{name}", std::process::id()),
        namespace: "default".into(),
        name: name.into(),
        hostname: name.into(),
        resolv_conf: "nameserver 10.96.0.10\noptions ndots:5\n".into(),
        hosts: "127.0.0.1\tlocalhost\n".into(),
    }
}

async fn http_get(from: &NetNs, to: SocketAddr, path: &str) -> Option<String> {
    let mut s = from.connect_tcp(to, Duration::from_secs(1)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

async fn log_text(path: &Path) -> String {
    use futures::StreamExt;
    let mut stream = Box::pin(read_logs(path, LogOptions::default()));
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.expect("read logs"));
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn myapp_answers_with_its_pod_identity_over_the_bridge_udp_and_localhost() {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let (spec_a, spec_b) = (spec("myapp-abc"), spec("client"));
    let _pods = PodGuard(vec![
        netns_name(&spec_a.pod_uid),
        netns_name(&spec_b.pod_uid),
    ]);
    let mut node_guard = NsGuard::new();
    let node = node_guard
        .create(&switchyard_netns::unique_name("e"))
        .await
        .expect("node namespace");
    let state = tempfile::tempdir().expect("state");
    let network = PodNetwork::setup(node, "10.244.7.0/24".parse().expect("cidr"), state.path())
        .await
        .expect("pod network");
    let a = network.create_sandbox(&spec_a).await.expect("pod a");
    let b = network.create_sandbox(&spec_b).await.expect("pod b");

    let catalog = ImageCatalog::builtin(Path::new(env!("CARGO_BIN_EXE_switchyard")));
    let (argv, env) = catalog
        .argv("myapp:v1", &[], &[], "default", "myapp-abc")
        .expect("myapp is built in");
    let log = |c: &str| container_log_path(state.path(), "default", "myapp-abc", &a.pod_uid, c, 0);
    let mut web = a
        .start_container(&ContainerSpec {
            name: "web".into(),
            argv,
            env,
            working_dir: None,
            log_path: log("web"),
            shim: env!("CARGO_BIN_EXE_switchyard").into(),
        })
        .await
        .expect("start the echo server");

    // From pod b, over the bridge.
    let target = SocketAddr::new(a.ip, 80);
    let answer = switchyard_testkit::wait_for(Duration::from_secs(20), "the echo server", || {
        http_get(&b.netns, target, "/")
    })
    .await
    .expect("answer");
    let body = answer.split("\r\n\r\n").nth(1).expect("body");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "pod: default/myapp-abc".to_string(),
            "hostname: myapp-abc".to_string(),
            format!("ip: {}", a.ip),
            "version: v1".to_string(),
        ]
    );
    assert!(
        lines[4].starts_with(&format!("client: {}:", b.ip)),
        "{body}"
    );
    let health = http_get(&b.netns, target, "/healthz")
        .await
        .expect("healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );

    // UDP on the same port.
    let udp = b
        .netns
        .bind_udp(SocketAddr::new(b.ip, 0))
        .expect("udp socket in pod b");
    udp.send_to(b"hello", target).await.expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
        .await
        .expect("a UDP answer in time")
        .expect("recv");
    assert_eq!(from, target);
    let text = std::str::from_utf8(&buf[..n]).expect("utf8");
    assert!(
        text.contains(&format!("ip: {}\nversion: v1\n", a.ip)),
        "{text}"
    );

    // A second container of the pod reaches it over localhost.
    let mut sidecar = a
        .start_container(&ContainerSpec {
            name: "sidecar".into(),
            argv: vec![
                "curl".into(),
                "-sS".into(),
                "--max-time".into(),
                "5".into(),
                "http://127.0.0.1:80/".into(),
            ],
            env: vec![],
            working_dir: None,
            log_path: log("sidecar"),
            shim: env!("CARGO_BIN_EXE_switchyard").into(),
        })
        .await
        .expect("sidecar");
    assert_eq!(sidecar.wait().await.exit_code, 0);
    let text = log_text(&log("sidecar")).await;
    assert!(
        text.contains("hostname: myapp-abc\nip: 127.0.0.1\n"),
        "{text}"
    );
    // An exec probe against it.
    let healthz = || async {
        let argv = ["curl", "-sf", "http://localhost/healthz"].map(String::from);
        a.exec(&argv, &[], Duration::from_secs(5))
            .await
            .expect("exec")
    };
    let probe = healthz().await;
    assert_eq!(
        (probe.exit_code, probe.stdout.as_slice()),
        (0, b"ok\n".as_slice())
    );

    // On SIGTERM it keeps answering for its shutdown delay, then exits 0.
    web.signal(nix_sigterm()).expect("sigterm");
    assert_eq!(healthz().await.exit_code, 0, "no answer while draining");
    let exit = tokio::time::timeout(Duration::from_secs(10), web.wait())
        .await
        .expect("the echo server stops after SIGTERM");
    assert_eq!((exit.exit_code, exit.signal), (0, None));
    network
        .destroy_sandbox(&a.pod_uid)
        .await
        .expect("destroy a");
    network
        .destroy_sandbox(&b.pod_uid)
        .await
        .expect("destroy b");
}

fn nix_sigterm() -> switchyard_node::runtime::Signal {
    switchyard_node::runtime::Signal::SIGTERM
}
