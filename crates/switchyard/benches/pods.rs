//! Benchmark of issue 4: pods on one node, with the real binaries. `switchyard server` on
//! loopback and `switchyard node` in a node namespace made here; N pause pods are created at
//! once and the figures are
//! - created → Ready (from the create call's return to the watch event showing Ready=True),
//!   p50/p99/max;
//! - delete-all → all gone (the agent deletes a pod from the API only once its sandbox is gone);
//! - the node agent's VmRSS with 0 pods and with N pods (and each container shim's memory);
//!
//! side by side with the floor cost: N sandboxes created and destroyed directly through
//! `switchyard_node::sandbox` (no API, no agent), alone and with a pause container under its
//! shim.
//!
//! `cargo bench -p switchyard --bench pods` runs 100 pods (add `--profile dev` to skip the
//! optimised build); without `--bench` (as `cargo test --all-targets` runs it) it is a 5-pod
//! smoke run. Needs root (skips loudly otherwise); gives up with a message after 5 minutes.
//! Every namespace is `sy-` prefixed and removed with what runs in it, also on failure.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use serde_json::json;
use switchyard_netns::{NetNs, NsGuard};
use switchyard_node::catalog::ImageCatalog;
use switchyard_node::runtime::ContainerSpec;
use switchyard_node::sandbox::{netns_name, PodNetwork, SandboxSpec};
use switchyard_testkit::{wait_for, ChildGuard, ServerProcess};
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(300);
const NODE_IP: &str = "192.168.86.2";
const PAUSE: &str = "registry.k8s.io/pause:3.10";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn main() -> ExitCode {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: the pods benchmark needs root to create network namespaces");
        return ExitCode::SUCCESS;
    }
    let pods = if std::env::args().any(|a| a == "--bench") {
        100
    } else {
        5
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::time::timeout(BOUND, bench(pods))
            .await
            .unwrap_or_else(|_| bail!("gave up after {BOUND:?}"))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pods benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sorted durations and their percentiles.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut all: Vec<Duration>) -> Self {
        all.sort();
        Latencies(all)
    }

    /// The nearest-rank percentile.
    fn pct(&self, p: usize) -> Duration {
        let rank = (self.0.len() * p).div_ceil(100).max(1);
        self.0[rank - 1]
    }

    fn row(&self, what: &str, total: Duration) -> String {
        format!(
            "{what:<46} {:>9} {:>9} {:>9} {:>9}",
            ms(self.pct(50)),
            ms(self.pct(99)),
            ms(self.pct(100)),
            ms(total)
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `RssAnon`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

async fn bench(n: usize) -> Result<()> {
    let mut guard = NsGuard::new();
    let (sandbox_only, with_pause) = baseline(&mut guard, n).await?;
    let agent = through_the_agent(&mut guard, n).await?;
    println!();
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "optimised build"
    };
    println!("{n} pods on one node, pause image, {build}; all = first start to last done");
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p99", "max", "all"
    );
    println!(
        "{}",
        agent
            .ready
            .row("switchyard node: created -> Ready", agent.all_ready)
    );
    println!(
        "{}",
        sandbox_only.create.row(
            "floor: create_sandbox (all at once)",
            sandbox_only.all_created
        )
    );
    println!(
        "{}",
        with_pause.create.row(
            "floor: create_sandbox + pause under its shim",
            with_pause.all_created
        )
    );
    println!(
        "{:<46} {:>39}",
        "switchyard node: delete-all -> all gone",
        ms(agent.teardown)
    );
    println!(
        "{:<46} {:>39}",
        "floor: destroy_sandbox x n (all at once)",
        ms(sandbox_only.teardown)
    );
    println!(
        "{:<46} {:>39}",
        "floor: destroy_sandbox x n, with pause",
        ms(with_pause.teardown)
    );
    let per_pod = agent.rss_full.saturating_sub(agent.rss_idle) / n as u64;
    println!(
        "node agent VmRSS: {} KiB with 0 pods, {} KiB with {n} pods ({per_pod} KiB per pod)",
        agent.rss_idle, agent.rss_full
    );
    println!(
        "each container's shim: VmRSS {} KiB, of which {} KiB its own (RssAnon; the rest are the binary's shared pages)",
        agent.shim_rss, agent.shim_anon
    );
    Ok(())
}

struct Floor {
    create: Latencies,
    all_created: Duration,
    teardown: Duration,
}

/// `n` sandboxes (each with a pause container under its shim when `pause`) created at once
/// directly through the node crate, then destroyed at once.
async fn floor(guard: &mut NsGuard, n: usize, pause: bool) -> Result<Floor> {
    let ns = guard
        .create(&switchyard_netns::unique_name("bf"))
        .await
        .context("baseline node namespace")?;
    let state = tempfile::tempdir()?;
    let network = PodNetwork::setup(ns, "10.244.9.0/24".parse()?, state.path()).await?;
    let tag = format!("{}-{}", std::process::id(), u8::from(pause));
    let specs: Vec<SandboxSpec> = (0..n)
        .map(|i| SandboxSpec {
            pod_uid: format!("bench-{tag}-{i}"),
            namespace: "default".into(),
            name: format!("p{i}"),
            hostname: format!("p{i}"),
            resolv_conf: "nameserver 10.96.0.10\n".into(),
            hosts: "127.0.0.1\tlocalhost\n".into(),
        })
        .collect();
    for spec in &specs {
        guard.adopt(&netns_name(&spec.pod_uid));
    }
    let (argv, env) = ImageCatalog::builtin(binary()).argv(PAUSE, &[], &[], "default", "p")?;
    let started = Instant::now();
    let results = futures::future::join_all(specs.iter().map(|spec| {
        let network = network.clone();
        let container = ContainerSpec {
            name: "pause".into(),
            argv: argv.clone(),
            env: env.clone(),
            working_dir: None,
            log_path: state.path().join("logs").join(&spec.pod_uid),
            shim: binary().to_path_buf(),
        };
        async move {
            let t = Instant::now();
            let sandbox = network.create_sandbox(spec).await?;
            if pause {
                sandbox.start_container(&container).await?;
            }
            anyhow::Ok(t.elapsed())
        }
    }))
    .await;
    let all_created = started.elapsed();
    let create = Latencies::new(results.into_iter().collect::<Result<_>>()?);
    let started = Instant::now();
    futures::future::join_all(specs.iter().map(|s| network.destroy_sandbox(&s.pod_uid)))
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    Ok(Floor {
        create,
        all_created,
        teardown: started.elapsed(),
    })
}

async fn baseline(guard: &mut NsGuard, n: usize) -> Result<(Floor, Floor)> {
    Ok((floor(guard, n, false).await?, floor(guard, n, true).await?))
}

struct AgentFigures {
    ready: Latencies,
    all_ready: Duration,
    teardown: Duration,
    rss_idle: u64,
    rss_full: u64,
    shim_rss: u64,
    shim_anon: u64,
}

fn start_node(kubeconfig: &Path, ns: &NetNs, root: &Path) -> Result<ChildGuard> {
    let child = Command::new(binary())
        .arg("node")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", "bench-node", "--node-ip", NODE_IP])
        .args(["--netns", ns.name().context("named namespace")?])
        .arg("--root-dir")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start switchyard node")?;
    Ok(ChildGuard(child))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The container shims the agent `pid` started (its children running `container-shim`).
fn shims_of(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
    };
    let is_shim = |p: u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"container-shim"))
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| parent_of(*p) == Some(pid) && is_shim(*p))
        .collect()
}

async fn through_the_agent(guard: &mut NsGuard, n: usize) -> Result<AgentFigures> {
    let data = tempfile::tempdir()?;
    let server = ServerProcess::start(binary(), data.path(), &[])?;
    let client = switchyard_testkit::client_from_kubeconfig(&server.kubeconfig()).await?;
    let ns = guard
        .create(&switchyard_netns::unique_name("bn"))
        .await
        .context("node namespace")?;
    ns.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ])
    .await?;
    ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "lan0"])
        .await?;
    for link in ["lan0", "lan1"] {
        ns.ip(&["link", "set", link, "up"]).await?;
    }
    let root = tempfile::tempdir()?;
    let node = start_node(&server.kubeconfig(), &ns, root.path())?;
    let node_pid = node.0.id();
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(Duration::from_secs(60), "node bench-node Ready", || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let node = nodes.get_opt("bench-node").await.ok()??;
        let ready = node
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && node.spec?.pod_cidr.is_some()).then_some(())
    })
    .await?;
    // The pod network is set up once the podCIDR is known: the bridge shows it.
    wait_for(Duration::from_secs(60), "the pod bridge", || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ns.ip(&["link", "show", "sy-br0"]).await.ok().map(drop)
    })
    .await?;
    let rss_idle = status_kib(node_pid, "VmRSS")?;

    // Ready times from a watch, started before the first create.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn({
        let pods = pods.clone();
        async move {
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
                    if is_ready(&p) {
                        let _ =
                            ready_tx.send((p.metadata.name.unwrap_or_default(), Instant::now()));
                    }
                }
            }
        }
    });
    let mut created: HashMap<String, Instant> = HashMap::new();
    let first = Instant::now();
    for i in 0..n {
        let name = format!("pause-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "pause", "image": PAUSE}]}
        }))?;
        let pod = pods.create(&PostParams::default(), &pod).await?;
        created.insert(name, Instant::now());
        guard.adopt(&netns_name(pod.metadata.uid.as_deref().unwrap_or_default()));
    }
    let mut ready_at: HashMap<String, Instant> = HashMap::new();
    while ready_at.len() < n {
        let Some((name, at)) = ready_rx.recv().await else {
            bail!("the pod watch ended");
        };
        ready_at.entry(name).or_insert(at);
    }
    watch.abort();
    let all_ready = ready_at
        .values()
        .max()
        .map_or(Duration::ZERO, |t| *t - first);
    let ready = Latencies::new(
        ready_at
            .iter()
            .map(|(name, at)| at.duration_since(created[name]))
            .collect(),
    );
    let rss_full = status_kib(node_pid, "VmRSS")?;
    let shims: Vec<(u64, u64)> = shims_of(node_pid)
        .into_iter()
        .filter_map(|p| Some((status_kib(p, "VmRSS").ok()?, status_kib(p, "RssAnon").ok()?)))
        .collect();
    if shims.len() != n {
        bail!("{} container shims for {n} pods", shims.len());
    }
    let shim_rss = shims.iter().map(|s| s.0).sum::<u64>() / n as u64;
    let shim_anon = shims.iter().map(|s| s.1).sum::<u64>() / n as u64;

    let started = Instant::now();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for(Duration::from_secs(120), "all pods gone", || async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await?;
    let teardown = started.elapsed();
    drop(node);
    drop(server);
    Ok(AgentFigures {
        ready,
        all_ready,
        teardown,
        rss_idle,
        rss_full,
        shim_rss,
        shim_anon,
    })
}
