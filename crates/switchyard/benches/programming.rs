//! Network programming latency and proxy memory at scale (issue 5's control-plane figures),
//! through the real binaries: `switchyard server` (embedded store, no controllers) and
//! `switchyard proxy` programming a `sy-` namespace.
//!
//! At 1,000 / 10,000 / 30,000 Services × 10 endpoints (selector-less Services with their
//! EndpointSlices written directly; the endpoints are addresses nothing answers on), a fresh
//! proxy is started and measured: time from its start to rules live (a canary service answers
//! through its ClusterIP), the full sync's own duration (its `/metrics`), and its RSS. Then a
//! probe Service is flipped ROUNDS times between no endpoint (connections refused: REJECT) and
//! one live endpoint (a listener in a pod namespace): network programming latency is the time
//! from the API write of the EndpointSlice to the first connection from the node that shows the
//! new state. Beside it, in the same run, the floor any proxy has: the time from the same write
//! to a plain watch of EndpointSlices delivering it.
//!
//! Changes are 1.2 s apart: the proxy's default `--min-sync-period` is 1 s (kube-proxy's), so a
//! change right after a sync would wait for it; spaced changes measure the pipeline itself.
//!
//! Run: `cargo bench -p switchyard --bench programming` (root, nftables). Knobs:
//! `PROGRAMMING_SCALES=1000,10000` (default 1000,10000,30000), `PROGRAMMING_ROUNDS=20`,
//! `PROGRAMMING_SHOW_LOG=1` prints each proxy's log.
//! Goal (issue 5): one-service incremental sync ≤ 10 ms at 10,000 services, so latency well
//! under 100 ms on top of the watch floor.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard};
use switchyard_testkit::ServerProcess;

const ENDPOINTS: usize = 10;
const NAMESPACE: &str = "default";
/// The probe's pod: a listener at POD_IP:8080 in its own namespace.
const POD_IP: &str = "10.244.0.2";
const NODE_NAME: &str = "bench-node";
/// Changes this far apart hit an idle proxy (see the module doc).
const SPACING: Duration = Duration::from_millis(1200);

fn main() {
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let scales: Vec<usize> = std::env::var("PROGRAMMING_SCALES")
        .unwrap_or_else(|_| "1000,10000,30000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("PROGRAMMING_SCALES: numbers"))
        .collect();
    let rounds: usize = std::env::var("PROGRAMMING_ROUNDS")
        .ok()
        .map(|s| s.parse().expect("PROGRAMMING_ROUNDS: a number"))
        .unwrap_or(20);
    let binary = Path::new(env!("CARGO_BIN_EXE_switchyard"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut guard = NsGuard::new();
    let (node, node_name, pod) = runtime.block_on(topology(&mut guard));
    // The pod's server: accepts and closes.
    let listener = runtime
        .block_on(async { pod.bind_tcp(format!("{POD_IP}:8080").parse().expect("addr")) })
        .expect("listen in the pod");
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let probe_runtime = node.runtime("probe", 1).expect("a runtime in the node");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(binary, dir.path(), &["--no-controllers"]).expect("server");
    let client = runtime
        .block_on(switchyard_testkit::client_from_kubeconfig(
            &server.kubeconfig(),
        ))
        .expect("client");

    let canary = runtime.block_on(create_service(&client, "canary", Some(POD_IP)));
    let probe_ip = runtime.block_on(create_service(&client, "probe", None));
    let mut loaded = 0;
    let mut rows = Vec::new();
    for scale in scales {
        let started = Instant::now();
        runtime.block_on(preload(&client, loaded, scale));
        eprintln!(
            "{scale} services x {ENDPOINTS} endpoints written in {:.1?}",
            started.elapsed()
        );
        loaded = scale;

        // A stopped proxy leaves its tables (established connections keep flowing); each
        // scale starts from none, so its first full sync is what makes the canary answer.
        for family in ["ip", "ip6"] {
            let _ = runtime.block_on(node.nft(&["delete", "table", family, "switchyard"], None));
        }
        let log = dir.path().join(format!("proxy-{scale}.log"));
        let mut proxy = ProxyProcess::start(binary, &server.kubeconfig(), &node_name, &log);
        let live = in_node(
            &probe_runtime,
            wait_until(canary, true, Duration::from_secs(600)),
        )
        .unwrap_or_else(|| panic!("the canary never answered at {scale}"));
        let start_to_live = live.duration_since(proxy.started);
        // The first full sync's own duration (the only one so far; recorded just after the
        // rules went live, so wait for its count).
        let full_sync = in_node(&probe_runtime, async {
            let full = "kubeproxy_sync_full_proxy_rules_duration_seconds";
            for _ in 0..6000 {
                if metric(&format!("{full}_count")).await >= Some(1.0) {
                    return metric(&format!("{full}_sum")).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        })
        .map(Duration::from_secs_f64);
        let rss = rss_kib(proxy.child.id());

        let (latencies, floors) =
            runtime.block_on(flips(&client, &probe_runtime, probe_ip, rounds));
        proxy.stop();
        if std::env::var_os("PROGRAMMING_SHOW_LOG").is_some() {
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        rows.push(Row {
            scale,
            start_to_live,
            full_sync,
            rss,
            latencies,
            floors,
        });
        print_table(&rows);
    }
    drop(server);
    probe_runtime.shutdown_background();
    drop(guard);
}

/// Runs `f` on the node's runtime: its worker threads are inside the node namespace (the
/// calling thread is not, so never `block_on` a socket-making future there).
fn in_node<T: Send + 'static>(
    node: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    node.block_on(node.spawn(f)).expect("a task in the node")
}

struct Row {
    scale: usize,
    start_to_live: Duration,
    full_sync: Option<Duration>,
    rss: Option<u64>,
    latencies: Vec<Duration>,
    floors: Vec<Duration>,
}

fn print_table(rows: &[Row]) {
    println!();
    println!("services x{ENDPOINTS} | start->live | full sync | proxy RSS | programming p50 / p99 | watch floor p50 / p99");
    for r in rows {
        println!(
            "{:>8} | {:>11.2?} | {:>9} | {:>9} | {:>9.1?} / {:>9.1?} | {:>9.1?} / {:>9.1?}",
            r.scale,
            r.start_to_live,
            r.full_sync
                .map(|d| format!("{d:.2?}"))
                .unwrap_or_else(|| "-".into()),
            r.rss
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            percentile(&r.latencies, 50),
            percentile(&r.latencies, 99),
            percentile(&r.floors, 50),
            percentile(&r.floors, 99),
        );
    }
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

/// The node namespace (the proxy's) and a pod namespace behind a veth, addressed 10.244.0.0/24.
async fn topology(guard: &mut NsGuard) -> (NetNs, String, NetNs) {
    let node_name = unique_name("pn");
    let node = guard.create(&node_name).await.expect("node ns");
    let pod = guard.create(&unique_name("pp")).await.expect("pod ns");
    let pod_name = pod.name().expect("named").to_string();
    let steps: [(&NetNs, Vec<&str>); 6] = [
        (
            &node,
            vec![
                "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", &pod_name,
            ],
        ),
        (&node, vec!["addr", "add", "10.244.0.1/24", "dev", "vp"]),
        (&node, vec!["link", "set", "vp", "up"]),
        (&pod, vec!["addr", "add", "10.244.0.2/24", "dev", "eth0"]),
        (&pod, vec!["link", "set", "eth0", "up"]),
        // ClusterIPs leave towards the pod network (DNAT picks the real destination).
        (&node, vec!["route", "add", "10.96.0.0/12", "dev", "vp"]),
    ];
    for (ns, args) in steps {
        ns.ip(&args).await.expect("ip");
    }
    (node, node_name, pod)
}

/// A selector-less Service (port 80/TCP) and its EndpointSlice: one endpoint at `endpoint`:8080
/// or none. Returns the ClusterIP:80.
async fn create_service(client: &kube::Client, name: &str, endpoint: Option<&str>) -> SocketAddr {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let created = services
        .create(&PostParams::default(), &service(name))
        .await
        .expect("create service");
    let ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let endpoints: Vec<String> = endpoint.into_iter().map(str::to_string).collect();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    slices
        .create(&PostParams::default(), &slice(name, &endpoints))
        .await
        .expect("create slice");
    format!("{ip}:80").parse().expect("ClusterIP:80")
}

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))
    .expect("service")
}

fn slice(service: &str, endpoints: &[String]) -> EndpointSlice {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{service}-1"),
            "labels": {"kubernetes.io/service-name": service},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|ip| serde_json::json!({
            "addresses": [ip],
            "conditions": {"ready": true},
            "nodeName": NODE_NAME,
        })).collect::<Vec<_>>(),
    }))
    .expect("slice")
}

/// Services `from..to`, each with ENDPOINTS endpoints nothing answers on.
async fn preload(client: &kube::Client, from: usize, to: usize) {
    futures::stream::iter(from..to)
        .map(|i| {
            let client = client.clone();
            async move {
                let name = format!("svc-{i}");
                let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
                services
                    .create(&PostParams::default(), &service(&name))
                    .await?;
                let endpoints: Vec<String> = (0..ENDPOINTS)
                    .map(|e| format!("10.{}.{}.{}", 128 + e, (i / 256) % 256, i % 256))
                    .collect();
                let slices: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
                slices
                    .create(&PostParams::default(), &slice(&name, &endpoints))
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_for_each(|()| async { Ok(()) })
        .await
        .expect("preload");
}

/// Flips the probe service `rounds` times each way (no endpoint ↔ the pod) and returns, per
/// change, the time from the API write to the node seeing it, and to a watch delivering it.
async fn flips(
    client: &kube::Client,
    probe: &tokio::runtime::Runtime,
    target: SocketAddr,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let arrivals: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let current = slices.get("probe-1").await.expect("probe slice");
    let version = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let mut events = slices
        .watch(
            &WatchParams::default().labels("kubernetes.io/service-name=probe"),
            &version,
        )
        .await
        .expect("watch")
        .boxed();
    let seen = arrivals.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            if let WatchEvent::Modified(slice) = event {
                let version = slice.metadata.resource_version.unwrap_or_default();
                seen.lock()
                    .expect("arrivals")
                    .push((version, Instant::now()));
            }
        }
    });
    let (mut latencies, mut floors) = (Vec::new(), Vec::new());
    for change in 0..rounds * 2 {
        let live = change % 2 == 0;
        tokio::time::sleep(SPACING).await;
        let endpoints: Vec<String> = if live { vec![POD_IP.into()] } else { vec![] };
        let mut next = slice("probe", &endpoints);
        next.metadata.resource_version = None;
        let written = Instant::now();
        let replaced = slices
            .replace("probe-1", &PostParams::default(), &next)
            .await
            .expect("replace probe slice");
        let reached = probe
            .spawn(wait_until(target, live, Duration::from_secs(30)))
            .await
            .expect("a task in the node")
            .unwrap_or_else(|| panic!("change {change} was never programmed"));
        latencies.push(reached.duration_since(written));
        let version = replaced.metadata.resource_version.unwrap_or_default();
        let floor = switchyard_testkit::eventually(Duration::from_secs(10), || {
            let seen = arrivals.lock().expect("arrivals");
            seen.iter().find(|(v, _)| *v == version).map(|(_, at)| *at)
        })
        .await
        .expect("the watch delivered the change");
        floors.push(floor.duration_since(written));
    }
    watcher.abort();
    (latencies, floors)
}

/// Polls `target` from the node every millisecond until connecting succeeds (`live`) or is
/// refused or times out (`!live`); the instant it first did. `None` past `deadline`.
async fn wait_until(target: SocketAddr, live: bool, deadline: Duration) -> Option<Instant> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let connected = matches!(
            tokio::time::timeout(
                Duration::from_millis(50),
                tokio::net::TcpStream::connect(target)
            )
            .await,
            Ok(Ok(_))
        );
        if connected == live {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// The value of the first sample of `name` on the proxy's `/metrics` (inside the node).
async fn metric(name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:10249")
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A `switchyard proxy` programming the node namespace; SIGTERM (by PID) when stopped or dropped.
struct ProxyProcess {
    child: Child,
    started: Instant,
}

impl ProxyProcess {
    fn start(binary: &Path, kubeconfig: &Path, netns: &str, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("proxy log");
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("proxy")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--hostname-override", NODE_NAME, "--netns", netns])
            .args(["--cluster-cidr", "10.244.0.0/16"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start switchyard proxy");
        ProxyProcess { child, started }
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
