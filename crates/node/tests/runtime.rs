//! Real-kernel tests of the node runtime: a node namespace made by the test, the pod bridge,
//! pod sandboxes with veths and infra processes, containers started through nsenter under their
//! shim (exit codes known to an adopting agent, signals forwarded), logs.
//! Needs root (skips loudly otherwise). Every namespace is `sy-` prefixed and removed on drop,
//! with every process still inside it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use switchyard_netns::{NetNs, NsGuard};
use switchyard_node::logs::{container_log_path, read_logs, LogOptions};
use switchyard_node::runtime::ContainerSpec;
use switchyard_node::sandbox::{host_veth_name, netns_name, PodNetwork, Sandbox, SandboxSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CIDR: &str = "10.244.7.0/24";

/// Kills every process left in the pod namespaces it knows, then deletes them (also when a
/// test fails half-way).
#[derive(Default)]
struct PodGuard {
    names: Vec<String>,
}

impl PodGuard {
    fn watch(&mut self, uid: &str) {
        self.names.push(netns_name(uid));
    }
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        for name in &self.names {
            if !NetNs::exists(name) {
                continue;
            }
            if let Ok(out) = std::process::Command::new("ip")
                .args(["netns", "pids", name])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            Signal::SIGKILL,
                        );
                    }
                }
            }
            NetNs::delete_blocking(name);
        }
    }
}

struct Node {
    // Dropped in field order: pods (and their processes) first, then the node namespace.
    pods: PodGuard,
    _node: NsGuard,
    ns: NetNs,
    state: tempfile::TempDir,
}

impl Node {
    async fn new() -> Option<Node> {
        if !switchyard_netns::can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return None;
        }
        let mut guard = NsGuard::new();
        let ns = guard
            .create(&switchyard_netns::unique_name("n"))
            .await
            .expect("node namespace");
        Some(Node {
            pods: PodGuard::default(),
            _node: guard,
            ns,
            state: tempfile::tempdir().expect("state dir"),
        })
    }

    async fn network(&self) -> PodNetwork {
        PodNetwork::setup(
            self.ns.clone(),
            CIDR.parse().expect("cidr"),
            self.state.path(),
        )
        .await
        .expect("pod network")
    }

    /// A sandbox spec with a UID unique to this test run.
    fn spec(&mut self, name: &str) -> SandboxSpec {
        let uid = format!("{}-{}-{name}", std::process::id(), unique());
        self.pods.watch(&uid);
        SandboxSpec {
            pod_uid: uid,
            namespace: "default".into(),
            name: name.into(),
            hostname: name.into(),
            resolv_conf: format!(
                "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n# {name}\n"
            ),
            hosts: format!("127.0.0.1\tlocalhost\n10.244.7.99\t{name}\n"),
        }
    }

    fn log_path(&self, sandbox: &Sandbox, container: &str) -> PathBuf {
        container_log_path(
            self.state.path(),
            &sandbox.namespace,
            &sandbox.name,
            &sandbox.pod_uid,
            container,
            0,
        )
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// This crate's container shim (the `switchyard` binary runs the same code).
fn shim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_container-shim"))
}

fn sh(name: &str, script: &str, log_path: PathBuf) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("GREETING".into(), "hello world".into())],
        working_dir: None,
        log_path,
        shim: shim(),
    }
}

async fn logs(path: &Path) -> String {
    if !path.exists() {
        return String::new(); // not written yet
    }
    let mut text = Vec::new();
    let mut stream = Box::pin(read_logs(path, LogOptions::default()));
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.expect("read logs"));
    }
    String::from_utf8(text).expect("utf8")
}

async fn echo_roundtrip(from: &NetNs, to: SocketAddr) -> std::io::Result<()> {
    let mut s = from
        .connect_tcp(to, Duration::from_secs(3))
        .await
        .map_err(std::io::Error::other)?;
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// A TCP echo listener inside `ns` on `ip:7777` (served by the test process).
fn tcp_echo(ns: &NetNs, ip: IpAddr) -> SocketAddr {
    let listener = ns
        .bind_tcp(SocketAddr::new(ip, 7777))
        .expect("bind in namespace");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn two_sandboxes_get_their_ips_and_reach_each_other_and_the_gateway() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    assert_eq!(
        network.gateway(),
        "10.244.7.1".parse::<IpAddr>().expect("ip")
    );
    let (spec_a, spec_b) = (node.spec("pod-a"), node.spec("pod-b"));
    let a = network.create_sandbox(&spec_a).await.expect("sandbox a");
    let b = network.create_sandbox(&spec_b).await.expect("sandbox b");
    let cidr: ipnet::IpNet = CIDR.parse().expect("cidr");
    assert!(cidr.contains(&a.ip) && cidr.contains(&b.ip) && a.ip != b.ip);
    assert_ne!(a.ip, network.gateway());
    assert_eq!(a.netns.name(), Some(netns_name(&spec_a.pod_uid).as_str()));
    // eth0 carries the pod IP; the default route goes via the gateway.
    let addrs = a
        .netns
        .ip(&["-o", "addr", "show", "eth0"])
        .await
        .expect("ip");
    assert!(addrs.contains(&format!("{}/24", a.ip)), "{addrs}");
    let routes = a.netns.ip(&["route"]).await.expect("routes");
    assert!(
        routes.contains("default via 10.244.7.1 dev eth0"),
        "{routes}"
    );
    // The host side is on the bridge with hairpin on.
    let veth = host_veth_name(&spec_a.pod_uid);
    let link = node
        .ns
        .ip(&["-d", "link", "show", &veth])
        .await
        .expect("host veth");
    assert!(
        link.contains("master sy-br0") && link.contains("hairpin on"),
        "{link}"
    );
    // Pod to pod across the bridge, both ways, and pod to the gateway.
    let at_a = tcp_echo(&a.netns, a.ip);
    let at_b = tcp_echo(&b.netns, b.ip);
    echo_roundtrip(&b.netns, at_a).await.expect("b -> a");
    echo_roundtrip(&a.netns, at_b).await.expect("a -> b");
    let at_gateway = tcp_echo(&node.ns, network.gateway());
    echo_roundtrip(&a.netns, at_gateway)
        .await
        .expect("a -> gateway");
    // Hairpin: a pod reaches itself through its own IP.
    echo_roundtrip(&a.netns, at_a).await.expect("a -> a");
    // Creating again returns the same sandbox (same IP).
    let again = network.create_sandbox(&spec_a).await.expect("again");
    assert_eq!((again.ip, again.infra_pid), (a.ip, a.infra_pid));
    network
        .destroy_sandbox(&spec_a.pod_uid)
        .await
        .expect("destroy a");
    network
        .destroy_sandbox(&spec_b.pod_uid)
        .await
        .expect("destroy b");
}

#[tokio::test]
async fn containers_see_the_pods_hostname_files_env_and_localhost() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let spec = node.spec("web-0");
    let pod = network.create_sandbox(&spec).await.expect("sandbox");
    let log = node.log_path(&pod, "show");
    let mut c = pod
        .start_container(&sh(
            "show",
            "echo host=$(hostname); cat /etc/resolv.conf /etc/hosts; env | sort; pwd; echo oops >&2",
            log.clone(),
        ))
        .await
        .expect("start");
    let exit = c.wait().await;
    assert_eq!((exit.exit_code, exit.signal), (0, None));
    let text = logs(&log).await;
    assert!(text.contains("host=web-0\n"), "{text}");
    assert!(text.contains(&spec.resolv_conf), "{text}");
    assert!(text.contains(&spec.hosts), "{text}");
    assert!(text.contains("\nGREETING=hello world\n"), "{text}");
    assert!(text.contains("\nHOSTNAME=web-0\n"), "{text}");
    assert!(text.contains(&format!(
        "PATH={}\n",
        switchyard_node::runtime::DEFAULT_PATH
    )));
    assert!(!text.contains("CARGO"), "the agent's env leaked: {text}");
    assert!(text.contains("\n/\n") && text.contains("oops\n"), "{text}");
    let raw = std::fs::read_to_string(&log).expect("raw log");
    assert!(raw.lines().any(|l| l.ends_with(" stderr F oops")), "{raw}");
    // The host's own files and hostname are untouched.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").expect("host resolv.conf");
    assert!(!host_resolv.contains("# web-0"));
    assert_ne!(switchyard_node::echo::hostname(), "web-0");

    // A second container shares the pod's loopback: it reaches a listener on 127.0.0.1 made in
    // the pod's network namespace.
    let listener = pod
        .netns
        .bind_tcp("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut talker = pod
        .start_container(&ContainerSpec {
            name: "talker".into(),
            argv: vec![
                "bash".into(),
                "-c".into(),
                format!("echo \"from $HOSTNAME\" > /dev/tcp/127.0.0.1/{port}"),
            ],
            env: vec![],
            working_dir: Some("/tmp".into()),
            log_path: node.log_path(&pod, "talker"),
            shim: shim(),
        })
        .await
        .expect("talker");
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("a connection in time")
        .expect("accept");
    let mut got = String::new();
    s.read_to_string(&mut got).await.expect("read");
    assert_eq!(got, "from web-0\n");
    assert_eq!(talker.wait().await.exit_code, 0);
    network
        .destroy_sandbox(&spec.pod_uid)
        .await
        .expect("destroy");
}

#[tokio::test]
async fn exec_returns_exit_codes_and_output_and_times_out() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let spec = node.spec("exec-pod");
    let pod = network.create_sandbox(&spec).await.expect("sandbox");
    let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
    let out = pod
        .exec(
            &argv("hostname; echo err >&2; exit 4"),
            &[],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 4);
    assert_eq!(out.stdout, b"exec-pod\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.timed_out);
    let ok = pod
        .exec(
            &argv("grep -c ndots /etc/resolv.conf"),
            &[],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!((ok.exit_code, ok.stdout.as_slice()), (0, b"1\n".as_slice()));
    let started = std::time::Instant::now();
    let slow = pod
        .exec(&argv("sleep 30"), &[], Duration::from_millis(300))
        .await
        .expect("exec");
    assert!(slow.timed_out && slow.exit_code == 137, "{slow:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    network
        .destroy_sandbox(&spec.pod_uid)
        .await
        .expect("destroy");
}

#[tokio::test]
async fn wait_reports_exit_codes_and_signals_and_logs_can_be_followed() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let spec = node.spec("life");
    let pod = network.create_sandbox(&spec).await.expect("sandbox");
    let mut quitter = pod
        .start_container(&sh("quit", "exit 3", node.log_path(&pod, "quit")))
        .await
        .expect("start");
    assert_eq!(quitter.wait().await.exit_code, 3);
    assert_eq!(quitter.wait().await.exit_code, 3, "wait again is fine");

    let log = node.log_path(&pod, "ticker");
    let mut ticker = pod
        .start_container(&sh(
            "ticker",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done",
            log.clone(),
        ))
        .await
        .expect("start");
    assert!(ticker.is_running());
    // Follow sees new lines as they are written.
    let mut follow = Box::pin(read_logs(
        &log,
        LogOptions {
            follow: true,
            ..Default::default()
        },
    ));
    let mut seen = String::new();
    while !seen.contains("tick 5\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("lines in time")
            .expect("stream open")
            .expect("read");
        seen.push_str(std::str::from_utf8(&chunk).expect("utf8"));
    }
    assert!(seen.starts_with("tick 1\n"), "{seen}");
    drop(follow);
    let tail = {
        let mut s = Box::pin(read_logs(
            &log,
            LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        ));
        let mut text = Vec::new();
        while let Some(c) = s.next().await {
            text.extend_from_slice(&c.expect("read"));
        }
        String::from_utf8(text).expect("utf8")
    };
    assert_eq!(tail.lines().count(), 2, "{tail}");
    // A cancelled wait leaves the container running; SIGTERM ends it with a signal.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), ticker.wait())
            .await
            .is_err()
    );
    ticker.signal(Signal::SIGTERM).expect("signal");
    let exit = tokio::time::timeout(Duration::from_secs(10), ticker.wait())
        .await
        .expect("ends after SIGTERM");
    assert_eq!((exit.exit_code, exit.signal), (143, Some(15)));
    // `kubectl logs -f` of an ended container returns.
    let mut followed = Box::pin(read_logs(
        &log,
        LogOptions {
            follow: true,
            tail_lines: Some(1),
            ..Default::default()
        },
    ));
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0;
        while let Some(chunk) = followed.next().await {
            n += chunk.expect("read").len();
        }
        n
    })
    .await
    .expect("following an ended container's log ends");
    assert!(rest > 0);
    ticker
        .signal(Signal::SIGKILL)
        .expect("signalling an ended container is fine");
    network
        .destroy_sandbox(&spec.pod_uid)
        .await
        .expect("destroy");
}

#[tokio::test]
async fn a_second_setup_keeps_sandboxes_ips_and_running_containers() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let (spec_a, spec_b) = (node.spec("keep-a"), node.spec("keep-b"));
    let (a, b, pid) = {
        let network = node.network().await;
        let a = network.create_sandbox(&spec_a).await.expect("a");
        let b = network.create_sandbox(&spec_b).await.expect("b");
        let c = a
            .start_container(&sh(
                "sleeper",
                "echo up; exec sleep 300",
                node.log_path(&a, "sleeper"),
            ))
            .await
            .expect("start");
        (a, b, c.pid())
        // The agent "restarts": its PodNetwork and Container handles are gone.
    };
    let network = node.network().await;
    let mut found: Vec<(String, IpAddr)> = network
        .sandboxes()
        .into_iter()
        .map(|s| (s.pod_uid, s.ip))
        .collect();
    found.sort();
    let mut want = vec![
        (spec_a.pod_uid.clone(), a.ip),
        (spec_b.pod_uid.clone(), b.ip),
    ];
    want.sort();
    assert_eq!(found, want);
    let again = network.create_sandbox(&spec_a).await.expect("re-create");
    assert_eq!((again.ip, again.infra_pid), (a.ip, a.infra_pid));
    let adopted = again.adopt_containers();
    assert_eq!(adopted.len(), 1);
    let (record, mut container) = adopted.into_iter().next().expect("one");
    assert_eq!((record.name.as_str(), container.pid()), ("sleeper", pid));
    // A new pod gets a new IP, not one of the kept ones.
    let spec_c = node.spec("keep-c");
    let c = network.create_sandbox(&spec_c).await.expect("c");
    assert!(c.ip != a.ip && c.ip != b.ip);
    container.signal(Signal::SIGKILL).expect("kill");
    tokio::time::timeout(Duration::from_secs(10), container.wait())
        .await
        .expect("the adopted container's end is noticed");
    for uid in [&spec_a.pod_uid, &spec_b.pod_uid, &spec_c.pod_uid] {
        network.destroy_sandbox(uid).await.expect("destroy");
    }
}

#[tokio::test]
async fn destroy_kills_everything_removes_namespace_and_veth_and_frees_the_ip() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let spec = node.spec("doomed");
    let pod = network.create_sandbox(&spec).await.expect("sandbox");
    let c = pod
        .start_container(&sh(
            "bg",
            "sleep 300 & sleep 300",
            node.log_path(&pod, "bg"),
        ))
        .await
        .expect("start");
    let (infra, pid) = (pod.infra_pid, c.pid());
    network
        .destroy_sandbox(&spec.pod_uid)
        .await
        .expect("destroy");
    network
        .destroy_sandbox(&spec.pod_uid)
        .await
        .expect("idempotent");
    assert!(!NetNs::exists(&netns_name(&spec.pod_uid)));
    assert!(node
        .ns
        .ip(&["link", "show", &host_veth_name(&spec.pod_uid)])
        .await
        .is_err());
    for p in [infra, pid] {
        let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false);
        assert!(!alive, "process {p} survived the sandbox");
    }
    assert!(network.sandboxes().is_empty());
    let ipam = std::fs::read_to_string(node.state.path().join("ipam.json")).expect("ipam");
    assert!(!ipam.contains(&spec.pod_uid), "{ipam}");
    assert!(!node
        .state
        .path()
        .join("sandboxes")
        .join(&spec.pod_uid)
        .exists());
}

#[tokio::test]
async fn a_failed_creation_leaves_nothing_behind() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let mut spec = node.spec("bad");
    // `hostname` refuses a name longer than 64 bytes: the infra process fails.
    spec.hostname = "x".repeat(100);
    let err = network
        .create_sandbox(&spec)
        .await
        .expect_err("bad hostname");
    assert!(err.to_string().contains("infra"), "{err}");
    assert!(!NetNs::exists(&netns_name(&spec.pod_uid)));
    assert!(network.sandboxes().is_empty());
    let ipam = std::fs::read_to_string(node.state.path().join("ipam.json")).expect("ipam");
    assert!(!ipam.contains(&spec.pod_uid), "{ipam}");
    assert!(!node
        .state
        .path()
        .join("sandboxes")
        .join(format!("{}.json", spec.pod_uid))
        .exists());
}

#[tokio::test]
async fn routes_to_other_nodes_are_synced_and_stale_ones_removed() {
    let Some(node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    // The next hops must be on a connected network: give the node one.
    node.ns
        .ip(&[
            "link", "add", "sy-d0", "type", "veth", "peer", "name", "sy-d1",
        ])
        .await
        .expect("veth (no dummy module here)");
    node.ns
        .ip(&["addr", "add", "192.168.77.1/24", "dev", "sy-d0"])
        .await
        .expect("addr");
    node.ns
        .ip(&["link", "set", "sy-d0", "up"])
        .await
        .expect("up");
    let r = |c: &str, v: &str| (c.parse().expect("cidr"), v.parse().expect("ip"));
    network
        .sync_routes(&[
            r("10.244.8.0/24", "192.168.77.2"),
            r("10.244.9.0/24", "192.168.77.3"),
        ])
        .await
        .expect("sync");
    let routes = node.ns.ip(&["route"]).await.expect("routes");
    assert!(
        routes.contains("10.244.8.0/24 via 192.168.77.2"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.9.0/24 via 192.168.77.3"),
        "{routes}"
    );
    // A restarted agent still knows what it synced: stale routes go, changed ones move.
    let network = node.network().await;
    network
        .sync_routes(&[r("10.244.9.0/24", "192.168.77.4")])
        .await
        .expect("resync");
    let routes = node.ns.ip(&["route"]).await.expect("routes");
    assert!(!routes.contains("10.244.8.0/24"), "{routes}");
    assert!(
        routes.contains("10.244.9.0/24 via 192.168.77.4"),
        "{routes}"
    );
}

/// Figures for the benchmark (run with `--ignored --nocapture`): 100 sandboxes created
/// at once, each with one container, then destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn bench_hundred_sandboxes_created_concurrently() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let specs: Vec<SandboxSpec> = (0..100).map(|i| node.spec(&format!("b{i}"))).collect();
    let started = std::time::Instant::now();
    let results = futures::future::join_all(specs.iter().map(|spec| {
        let network = network.clone();
        let log = container_log_path(
            node.state.path(),
            "default",
            &spec.name,
            &spec.pod_uid,
            "c",
            0,
        );
        async move {
            let t = std::time::Instant::now();
            let pod = network.create_sandbox(spec).await.expect("sandbox");
            let c = pod
                .start_container(&sh("c", "exec sleep 300", log))
                .await
                .expect("container");
            (t.elapsed(), c)
        }
    }))
    .await;
    let total = started.elapsed();
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let ips: std::collections::HashSet<IpAddr> = network.sandboxes().iter().map(|s| s.ip).collect();
    assert_eq!(ips.len(), 100, "every pod has its own IP");
    let started = std::time::Instant::now();
    futures::future::join_all(
        specs
            .iter()
            .map(|spec| network.destroy_sandbox(&spec.pod_uid)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<()>, _>>()
    .expect("destroy");
    let teardown = started.elapsed();
    eprintln!(
        "BENCH 100 sandboxes+containers: all started in {total:?}; per pod p50 {:?} p99 {:?}; teardown of all {teardown:?}",
        latencies[49], latencies[98]
    );
    drop(results);
}

/// The "agent" of `containers_survive_a_killed_agent_and_are_adopted_with_their_logs`: run as a
/// separate process (this test binary again), it creates a sandbox with a chatty container,
/// says READY and waits to be killed.
#[tokio::test]
#[ignore = "helper process of another test"]
async fn helper_agent_process_for_the_kill_test() {
    let (Ok(node), Ok(state), Ok(uid)) = (
        std::env::var("SY_TEST_NODE_NS"),
        std::env::var("SY_TEST_STATE"),
        std::env::var("SY_TEST_POD_UID"),
    ) else {
        return;
    };
    let ns = NetNs::open(&node).expect("node namespace");
    let network = PodNetwork::setup(ns, CIDR.parse().expect("cidr"), Path::new(&state))
        .await
        .expect("pod network");
    let spec = SandboxSpec {
        pod_uid: uid.clone(),
        namespace: "default".into(),
        name: "chatty".into(),
        hostname: "chatty".into(),
        resolv_conf: String::new(),
        hosts: String::new(),
    };
    let pod = network.create_sandbox(&spec).await.expect("sandbox");
    let log = container_log_path(Path::new(&state), "default", "chatty", &uid, "c", 0);
    let c = pod
        .start_container(&sh(
            "c",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.01; done",
            log,
        ))
        .await
        .expect("container");
    println!("READY {}", c.pid());
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn containers_survive_a_killed_agent_and_are_adopted_with_their_logs() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let uid = node.spec("chatty").pod_uid;
    let log = container_log_path(node.state.path(), "default", "chatty", &uid, "c", 0);
    let mut agent = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "helper_agent_process_for_the_kill_test",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("SY_TEST_NODE_NS", node.ns.name().expect("named"))
        .env("SY_TEST_STATE", node.state.path())
        .env("SY_TEST_POD_UID", &uid)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("agent process");
    let mut lines = tokio::io::BufReader::new(agent.stdout.take().expect("stdout")).lines();
    use tokio::io::AsyncBufReadExt;
    let pid: u32 = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .expect("agent ended early");
            if let Some(pid) = line.strip_prefix("READY ") {
                return pid.parse().expect("pid");
            }
        }
    })
    .await
    .expect("the agent is ready in time");
    let ticks = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
            .collect()
    };
    switchyard_testkit::wait_for(Duration::from_secs(10), "ticks in the log", || async {
        (ticks(&logs(&log).await).len() >= 5).then_some(())
    })
    .await
    .expect("ticks");
    // kill -9 the agent; the container keeps ticking (into the FIFO) meanwhile.
    agent.start_kill().expect("kill the agent");
    agent.wait().await.expect("reap the agent");
    tokio::time::sleep(Duration::from_millis(300)).await; // downtime, on purpose
    let network = node.network().await;
    let pod = network.sandbox(&uid).expect("the sandbox survived");
    let adopted = pod.adopt_containers();
    assert_eq!(adopted.len(), 1);
    let (_, mut container) = adopted.into_iter().next().expect("one");
    assert_eq!(container.pid(), pid);
    assert!(container.is_running());
    let before = ticks(&logs(&log).await).last().copied().expect("ticks");
    // The log goes on with no gap: what was written during the downtime is not lost.
    let seen = switchyard_testkit::wait_for(Duration::from_secs(10), "more ticks", || async {
        let t = ticks(&logs(&log).await);
        (t.last().copied().unwrap_or(0) > before + 50).then_some(t)
    })
    .await
    .expect("the log keeps growing after adoption");
    // What the container wrote while no agent ran waited in the FIFO. Only lines already read
    // into the dead agent's memory (a few at most) can be lost.
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "ticks in order");
    let worst_gap = seen.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
    assert!(
        worst_gap <= 10,
        "{} ticks lost across the agent's death",
        worst_gap - 1
    );
    container.signal(Signal::SIGKILL).expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(10), container.wait())
        .await
        .expect("the end of an adopted container is noticed");
    assert_eq!(
        (exit.exit_code, exit.signal),
        (137, Some(9)),
        "the shim of a dead agent's container recorded the kill"
    );
    network.destroy_sandbox(&uid).await.expect("destroy");
}

#[tokio::test]
async fn adopted_containers_report_their_exit_codes_and_signals_reach_them_through_the_shim() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let work = tempfile::tempdir().expect("work dir");
    let go = work.path().join("go");
    let spec = node.spec("adopted");
    let shims = {
        let network = node.network().await;
        let pod = network.create_sandbox(&spec).await.expect("sandbox");
        let quits = pod
            .start_container(&sh(
                "quits",
                &format!("until [ -f {} ]; do sleep 0.05; done; exit 3", go.display()),
                node.log_path(&pod, "quits"),
            ))
            .await
            .expect("start");
        let trapper = pod
            .start_container(&sh(
                "trapper",
                "trap 'echo got TERM; exit 7' TERM; while true; do sleep 0.05; done",
                node.log_path(&pod, "trapper"),
            ))
            .await
            .expect("start");
        assert_ne!(quits.pid(), quits.shim_pid(), "the shim is the parent");
        (quits.shim_pid(), trapper.shim_pid())
        // The agent "restarts": its handles are gone, the shims stay.
    };
    let network = node.network().await;
    let pod = network.sandbox(&spec.pod_uid).expect("sandbox kept");
    let mut adopted: std::collections::HashMap<String, _> = pod
        .adopt_containers()
        .into_iter()
        .map(|(record, c)| (record.name, c))
        .collect();
    let mut quits = adopted.remove("quits").expect("quits adopted");
    let mut trapper = adopted.remove("trapper").expect("trapper adopted");
    assert_eq!((quits.shim_pid(), trapper.shim_pid()), shims);
    assert!(quits.is_running() && trapper.is_running());

    // Not our child, yet its exit code is known.
    std::fs::write(&go, "").expect("go");
    let exit = tokio::time::timeout(Duration::from_secs(10), quits.wait())
        .await
        .expect("quits ends");
    assert_eq!((exit.exit_code, exit.signal), (3, None));

    // A signal to the shim reaches the container, whose trap decides the exit code.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(trapper.shim_pid() as i32),
        Signal::SIGTERM,
    )
    .expect("signal the shim");
    let exit = tokio::time::timeout(Duration::from_secs(10), trapper.wait())
        .await
        .expect("trapper ends");
    assert_eq!((exit.exit_code, exit.signal), (7, None));
    assert!(
        logs(&node.log_path(&pod, "trapper"))
            .await
            .contains("got TERM"),
        "the trap ran"
    );

    // Ended while no agent watched: the next agent still learns how.
    let again: std::collections::HashMap<String, _> = pod
        .adopt_containers()
        .into_iter()
        .map(|(record, c)| (record.name, c))
        .collect();
    let mut ended = again
        .into_iter()
        .find(|(n, _)| n == "quits")
        .expect("quits")
        .1;
    assert!(!ended.is_running());
    assert_eq!(ended.wait().await.exit_code, 3);
    network
        .destroy_sandbox(&spec.pod_uid)
        .await
        .expect("destroy");
}

#[tokio::test]
async fn setup_releases_ips_of_sandboxes_that_never_got_a_record() {
    let Some(node) = Node::new().await else {
        return;
    };
    // A crash right after the allocation, before the sandbox record was written.
    let ipam_path = node.state.path().join("ipam.json");
    {
        let mut ipam = switchyard_node::ipam::Ipam::open(&ipam_path, CIDR.parse().expect("cidr"))
            .expect("ipam");
        ipam.allocate("crashed-uid").expect("allocate");
    }
    let _network = node.network().await;
    let ipam = std::fs::read_to_string(&ipam_path).expect("ipam");
    assert!(!ipam.contains("crashed-uid"), "{ipam}");
}

#[tokio::test]
async fn teardown_removes_everything_the_node_created() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let spec = node.spec("gone");
    let pod = network.create_sandbox(&spec).await.expect("sandbox");
    let c = pod
        .start_container(&sh("c", "exec sleep 300", node.log_path(&pod, "c")))
        .await
        .expect("start");
    network.teardown().await.expect("teardown");
    assert!(!NetNs::exists(&netns_name(&spec.pod_uid)));
    assert!(node.ns.ip(&["link", "show", "sy-br0"]).await.is_err());
    assert!(!node.state.path().join("ipam.json").exists());
    assert!(!c.is_running());
    // And a node can start over on the same state dir.
    let again = node.network().await;
    assert!(again.sandboxes().is_empty());
    again.teardown().await.expect("teardown again");
}

#[tokio::test]
async fn a_stale_namespace_file_does_not_block_the_pods_sandbox() {
    let Some(mut node) = Node::new().await else {
        return;
    };
    let network = node.network().await;
    let spec = node.spec("stale");
    // What an interrupted `ip netns add` leaves: the file, with no namespace mounted on it.
    std::fs::create_dir_all(switchyard_netns::NETNS_DIR).expect("netns dir");
    std::fs::write(NetNs::path_of(&netns_name(&spec.pod_uid)), b"").expect("placeholder");
    let pod = network.create_sandbox(&spec).await.expect("sandbox");
    let out = pod
        .exec(&["hostname".into()], &[], Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"stale\n");
    network
        .destroy_sandbox(&spec.pod_uid)
        .await
        .expect("destroy");
    assert!(!NetNs::exists(&netns_name(&spec.pod_uid)));
}
