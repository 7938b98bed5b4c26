//! The node agent's loop (kubelet's role): registers the Node and keeps its status, renews the
//! node's Lease, sets up the pod network once the podcidr controller gave the node a CIDR,
//! routes the other nodes' pod CIDRs, and runs the pods bound to this node: one worker task per
//! pod (sandbox, init containers, containers with restart back-off and probes, the pod's status,
//! graceful termination).
//!
//! The agent never kills pods when it stops: dropping an [`Agent`] aborts its tasks only; a new
//! agent re-adopts the sandboxes and containers (same IPs) and removes the sandboxes of pods
//! that no longer exist. It writes pod status only through the status subresource, and deletes
//! a pod (grace 0, UID precondition) only after its sandbox is gone.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container as ContainerSpecK8s, Node, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use switchyard_netns::NetNs;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::catalog::ImageCatalog;
use crate::probes::{ProbeKind, ProbeTarget};
use crate::runtime::{Container, ContainerSpec, ExitInfo};
use crate::sandbox::{PodNetwork, Sandbox, SandboxSpec};
use crate::{dnsconfig, envvars, logs, probes, Config};

/// The agent's intervals. Defaults are kubelet's.
#[derive(Clone, Debug)]
pub struct Timings {
    /// How often the Lease is renewed (kubelet: `nodeLeaseDurationSeconds` × 0.25 = 10 s).
    pub lease_renew_interval: Duration,
    /// The Lease's `leaseDurationSeconds` (kubelet: 40).
    pub lease_duration_seconds: i32,
    /// How often the Node's status is posted (kubelet's `nodeStatusUpdateFrequency`: 10 s).
    pub status_update_interval: Duration,
    /// The first crash-loop delay (kubelet: 10 s), doubled per restart.
    pub backoff_initial: Duration,
    /// The longest crash-loop delay (kubelet: 5 min).
    pub backoff_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_renew_interval: Duration::from_secs(10),
            lease_duration_seconds: 40,
            status_update_interval: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Where the agent is in its start.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Failed(String),
}

/// A running node agent. Dropping it stops the agent; the pods keep running.
pub struct Agent {
    task: tokio::task::JoinHandle<()>,
    phase: watch::Receiver<Phase>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Agent {
    /// Start the agent with kubelet's timings.
    pub async fn start(client: Client, config: Config) -> anyhow::Result<Agent> {
        Self::start_with(client, config, Timings::default()).await
    }

    /// Start the agent with the given timings (tests use short ones).
    pub async fn start_with(
        client: Client,
        config: Config,
        timings: Timings,
    ) -> anyhow::Result<Agent> {
        let node_ns = match &config.netns {
            Some(name) => {
                NetNs::open(name).with_context(|| format!("open network namespace {name}"))?
            }
            None => NetNs::current(),
        };
        let mut catalog = ImageCatalog::builtin(&config.self_exe);
        if let Some(file) = &config.image_catalog {
            catalog
                .load_file(file)
                .with_context(|| format!("load image catalog {}", file.display()))?;
        }
        std::fs::create_dir_all(&config.root_dir)
            .with_context(|| format!("create {}", config.root_dir.display()))?;
        let host_resolv_conf = std::fs::read_to_string("/etc/resolv.conf").ok();
        let shared = Arc::new(Shared {
            client,
            config,
            kubelet_port: std::sync::atomic::AtomicU16::new(
                switchyard_api::node::DEFAULT_KUBELET_PORT,
            ),
            timings,
            node_ns,
            catalog,
            host_resolv_conf,
        });
        let (phase_tx, phase) = watch::channel(Phase::Starting);
        let task = tokio::spawn(async move {
            if let Err(e) = run(shared, &phase_tx).await {
                tracing::error!(error = %format!("{e:#}"), "node agent stopped");
                let _ = phase_tx.send(Phase::Failed(format!("{e:#}")));
            }
        });
        Ok(Agent { task, phase })
    }

    /// Wait until the Node is registered and the pod network is set up (or the agent failed).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let mut phase = self.phase.clone();
        let seen = phase
            .wait_for(|p| *p != Phase::Starting)
            .await
            .map_err(|_| anyhow::anyhow!("node agent stopped before it was ready"))?
            .clone();
        match seen {
            Phase::Failed(e) => anyhow::bail!("node agent failed: {e}"),
            _ => Ok(()),
        }
    }

    /// Whether the agent's task has ended (it failed; see the log).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// What every task of the agent reads.
struct Shared {
    client: Client,
    config: Config,
    /// The kubelet endpoint's port once it listens (for `daemonEndpoints`).
    kubelet_port: std::sync::atomic::AtomicU16,
    timings: Timings,
    node_ns: NetNs,
    catalog: ImageCatalog,
    host_resolv_conf: Option<String>,
}

async fn run(shared: Arc<Shared>, phase: &watch::Sender<Phase>) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let node = register_node(&shared).await?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    {
        let shared = shared.clone();
        tasks.spawn(async move { lease_loop(&shared, &node_uid).await });
    }
    {
        let shared = shared.clone();
        tasks.spawn(async move { node_status_loop(&shared).await });
    }
    let pod_cidr = wait_for_pod_cidr(&shared).await?;
    let network = PodNetwork::setup(shared.node_ns.clone(), pod_cidr, &shared.config.root_dir)
        .await
        .context("set up the pod network")?;
    let network = Arc::new(network);
    tracing::info!(node = %shared.config.node_name, %pod_cidr, "pod network ready");
    let _kubelet = match &shared.config.kubelet {
        Some(endpoint) => Some(serve_kubelet(&shared, endpoint, network.clone()).await?),
        None => None,
    };
    {
        let shared = shared.clone();
        let network = network.clone();
        tasks.spawn(async move { routes_loop(&shared, &network).await });
    }
    let _ = phase.send(Phase::Ready);
    pods_loop(shared, network).await;
    Ok(())
}

// ---- the Node ----

/// Start the kubelet endpoint (logs, exec) and tell the API server where it is.
async fn serve_kubelet(
    shared: &Shared,
    endpoint: &crate::KubeletEndpoint,
    network: Arc<PodNetwork>,
) -> anyhow::Result<crate::server::KubeletServer> {
    let listener = tokio::net::TcpListener::bind(endpoint.listen)
        .await
        .with_context(|| format!("kubelet endpoint: listen on {}", endpoint.listen))?;
    let lookup: crate::server::SandboxLookup = Arc::new(move |ns: &str, name: &str| {
        network
            .sandboxes()
            .into_iter()
            .find(|s| s.namespace == ns && s.name == name)
    });
    let server = crate::server::KubeletServer::start(
        listener,
        shared.config.root_dir.clone(),
        &shared.config.node_name,
        &endpoint.client_ca_pem,
        lookup,
    )?;
    let addr = server.local_addr();
    shared
        .kubelet_port
        .store(addr.port(), std::sync::atomic::Ordering::Relaxed);
    // Where the API server reaches it: the annotation unless it is the node's own address.
    let annotation = (addr.ip() != shared.config.node_ip).then(|| addr.to_string());
    let api: Api<Node> = Api::all(shared.client.clone());
    let patch = json!({"metadata": {"annotations": {
        switchyard_api::node::KUBELET_ENDPOINT_ANNOTATION: annotation}}});
    api.patch(
        &shared.config.node_name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .context("annotate the node with its kubelet endpoint")?;
    post_node_status(shared).await?;
    tracing::info!(node = %shared.config.node_name, %addr, "kubelet endpoint serving");
    Ok(server)
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` of /proc/meminfo as a Kubernetes quantity (`<n>Ki`).
fn memory_capacity() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("0");
    format!("{kib}Ki")
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".to_string())
}

/// Kubernetes `Time` (RFC 3339, seconds).
fn k8s_time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Kubernetes `MicroTime` (RFC 3339, microseconds).
fn k8s_micro_time(ts: jiff::Timestamp) -> String {
    format!(
        "{}.{:06}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        ts.subsec_microsecond()
    )
}

async fn register_node(shared: &Shared) -> anyhow::Result<Node> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let name = &shared.config.node_name;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch(),
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch(),
            }
        }
    }))?;
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            match api.get_opt(name).await? {
                Some(node) => anyhow::Ok(node),
                None => match api.create(&PostParams::default(), &node).await {
                    Ok(n) => Ok(n),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(name).await?),
                    Err(e) => Err(e.into()),
                },
            }
        };
        match attempt.await {
            Ok(node) => {
                post_node_status(shared).await?;
                tracing::info!(node = %name, "node registered");
                return Ok(node);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot register the node; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The Node's status as kubelet posts it. Condition transition times are kept from `current`
/// while a condition's status does not change.
fn node_status(
    config: &Config,
    kubelet_port: u16,
    current: Option<&Node>,
    now: jiff::Timestamp,
) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = memory_capacity();
    let resources =
        json!({"cpu": cpus.to_string(), "memory": memory, "pods": "110", "ephemeral-storage": "0"});
    let existing = |kind: &str| {
        current
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind))
            .map(|c| {
                (
                    c.status.clone(),
                    c.last_transition_time.as_ref().map(|t| t.0),
                )
            })
    };
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        let transition = match existing(kind) {
            Some((s, Some(t))) if s == status => k8s_time(t),
            _ => k8s_time(now),
        };
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": k8s_time(now), "lastTransitionTime": transition,
        })
    };
    json!({
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": config.node_ip.to_string()},
                {"type": "Hostname", "address": config.node_name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "machineID": read_trimmed("/etc/machine-id"),
                "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
                "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": concat!("switchyard://", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": concat!("v1.33.0-switchyard-", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
        }
    })
}

async fn post_node_status(shared: &Shared) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let name = &shared.config.node_name;
    let current = api.get_opt(name).await?;
    let port = shared
        .kubelet_port
        .load(std::sync::atomic::Ordering::Relaxed);
    let status = node_status(
        &shared.config,
        port,
        current.as_ref(),
        jiff::Timestamp::now(),
    );
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("post the node's status")?;
    Ok(())
}

async fn node_status_loop(shared: &Shared) {
    loop {
        tokio::time::sleep(shared.timings.status_update_interval).await;
        if let Err(e) = post_node_status(shared).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot post the node's status");
        }
    }
}

async fn renew_lease(shared: &Shared, node_uid: &str) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let name = &shared.config.node_name;
    let spec = json!({
        "holderIdentity": name,
        "leaseDurationSeconds": shared.timings.lease_duration_seconds,
        "renewTime": k8s_micro_time(jiff::Timestamp::now()),
    });
    if api.get_opt(name).await?.is_some() {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await?;
        return Ok(());
    }
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}],
        },
        "spec": spec,
    }))?;
    api.create(&PostParams::default(), &lease).await?;
    Ok(())
}

async fn lease_loop(shared: &Shared, node_uid: &str) {
    loop {
        if let Err(e) = renew_lease(shared, node_uid).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot renew the node's lease");
        }
        tokio::time::sleep(shared.timings.lease_renew_interval).await;
    }
}

async fn wait_for_pod_cidr(shared: &Shared) -> anyhow::Result<ipnet::IpNet> {
    let api: Api<Node> = Api::all(shared.client.clone());
    loop {
        match api.get_opt(&shared.config.node_name).await {
            Ok(Some(node)) => {
                if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                    return cidr
                        .parse()
                        .with_context(|| format!("the node's podCIDR {cidr:?}"));
                }
            }
            Ok(None) => {
                // Deleted under us: register again.
                register_node(shared).await?;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the node"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ---- routes to the other nodes ----

fn node_route(node: &Node) -> Option<(ipnet::IpNet, IpAddr)> {
    let cidr = node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    let ip = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((cidr, ip))
}

async fn routes_loop(shared: &Shared, network: &PodNetwork) {
    let api: Api<Node> = Api::all(shared.client.clone());
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut nodes: BTreeMap<String, (ipnet::IpNet, IpAddr)> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, (ipnet::IpNet, IpAddr)>> = None;
    let mut synced: Option<Vec<(ipnet::IpNet, IpAddr)>> = None;
    while let Some(event) = stream.next().await {
        let mut changed = false;
        match event {
            Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(node)) => {
                if let (Some(l), Some(route)) = (listing.as_mut(), node_route(&node)) {
                    l.insert(node.metadata.name.clone().unwrap_or_default(), route);
                }
            }
            Ok(watcher::Event::InitDone) => {
                nodes = listing.take().unwrap_or_default();
                changed = true;
            }
            Ok(watcher::Event::Apply(node)) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                match node_route(&node) {
                    Some(route) => nodes.insert(name, route),
                    None => nodes.remove(&name),
                };
                changed = true;
            }
            Ok(watcher::Event::Delete(node)) => {
                nodes.remove(node.metadata.name.as_deref().unwrap_or_default());
                changed = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if !changed {
            continue;
        }
        let own_cidr = network.pod_cidr();
        let routes: Vec<_> = nodes
            .iter()
            .filter(|(name, (cidr, _))| **name != shared.config.node_name && *cidr != own_cidr)
            .map(|(_, r)| *r)
            .collect();
        if synced.as_ref() == Some(&routes) {
            continue;
        }
        match network.sync_routes(&routes).await {
            Ok(()) => synced = Some(routes),
            Err(e) => tracing::warn!(error = %e, "cannot sync routes to other nodes"),
        }
    }
}

// ---- pods ----

async fn pods_loop(shared: Arc<Shared>, network: Arc<PodNetwork>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let selector = format!("spec.nodeName={}", shared.config.node_name);
    let mut stream = watcher(api, watcher::Config::default().fields(&selector)).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut listing: Option<HashMap<String, Pod>> = None;
    let mut collected_garbage = false;
    while let Some(event) = stream.next().await {
        let mut applied: Vec<Pod> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(pod.metadata.uid.clone().unwrap_or_default(), pod);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                removed = workers
                    .keys()
                    .filter(|uid| !listed.contains_key(*uid))
                    .cloned()
                    .collect();
                if !collected_garbage {
                    collected_garbage = true;
                    for sandbox in network.sandboxes() {
                        if !listed.contains_key(&sandbox.pod_uid) {
                            tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name),
                                "removing the sandbox of a pod that no longer exists");
                            if let Err(e) = network.destroy_sandbox(&sandbox.pod_uid).await {
                                tracing::warn!(error = %e, "cannot remove a stale sandbox");
                            }
                        }
                    }
                }
                applied = listed.into_values().collect();
            }
            Ok(watcher::Event::Apply(pod)) => applied.push(pod),
            Ok(watcher::Event::Delete(pod)) => {
                removed.push(pod.metadata.uid.clone().unwrap_or_default())
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        for uid in removed {
            if let Some(tx) = workers.remove(&uid) {
                let _ = tx.send(None);
            }
        }
        for pod in applied {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if let Some(tx) = workers.get(&uid) {
                if tx.send(Some(pod.clone())).is_ok() {
                    continue;
                }
            }
            let (tx, rx) = watch::channel(Some(pod));
            workers.insert(uid, tx);
            let worker = PodWorker {
                shared: shared.clone(),
                network: network.clone(),
                pod: rx,
            };
            tasks.spawn(worker.run());
        }
        // Forget finished workers.
        workers.retain(|_, tx| !tx.is_closed());
        while tasks.try_join_next().is_some() {}
    }
}

/// The state of one container as the status reports it.
#[derive(Clone, Debug, Default)]
struct ContainerState {
    state: Value,
    last_state: Value,
    ready: bool,
    started: bool,
    restart_count: i32,
    container_id: Option<String>,
    /// Ran to completion with exit 0 (init containers).
    completed: bool,
    /// Ever ran (terminated at least once).
    terminated_once: bool,
    running: bool,
}

fn waiting(reason: &str, message: Option<String>) -> Value {
    match message {
        Some(m) => json!({"waiting": {"reason": reason, "message": m}}),
        None => json!({"waiting": {"reason": reason}}),
    }
}

/// Everything the pod's status is made of; shared by the pod's tasks.
#[derive(Default)]
struct PodState {
    pod_ip: Option<IpAddr>,
    start_time: Option<String>,
    init: Vec<ContainerState>,
    containers: Vec<ContainerState>,
    initialized: bool,
    init_failed: bool,
    terminating: bool,
}

#[derive(Clone)]
struct PodHandle {
    state: Arc<Mutex<PodState>>,
    changed: Arc<Notify>,
}

impl PodHandle {
    fn update(&self, f: impl FnOnce(&mut PodState)) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut state);
        }
        self.changed.notify_one();
    }

    fn container(&self, init: bool, index: usize, f: impl FnOnce(&mut ContainerState)) {
        self.update(|s| {
            let list = if init { &mut s.init } else { &mut s.containers };
            if let Some(c) = list.get_mut(index) {
                f(c);
            }
        })
    }
}

/// kubelet's `getPhase` over the container states.
fn pod_phase(state: &PodState, restart_policy: &str) -> &'static str {
    if state.init_failed {
        return "Failed";
    }
    if !state.initialized {
        return "Pending";
    }
    let (mut running, mut stopped, mut succeeded, mut waiting_count) = (0, 0, 0, 0);
    for c in &state.containers {
        if c.state.get("running").is_some() {
            running += 1;
        } else if let Some(t) = c.state.get("terminated") {
            stopped += 1;
            if t.get("exitCode").and_then(Value::as_i64) == Some(0) {
                succeeded += 1;
            }
        } else if c.last_state.get("terminated").is_some() {
            stopped += 1;
        } else {
            waiting_count += 1;
        }
    }
    if waiting_count > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition_value(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Value {
    let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }});
    if !ok {
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
    }
    c
}

/// The pod's `status` (the patch body's value), from the state, the pod (spec and the
/// conditions of others, like PodScheduled) and the node.
fn pod_status(pod: &Pod, state: &PodState, node_ip: IpAddr, now: jiff::Timestamp) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let phase = pod_phase(state, policy);
    let status_of = |spec: &ContainerSpecK8s, c: &ContainerState| {
        let mut v = json!({
            "name": spec.name,
            "state": c.state,
            "lastState": c.last_state,
            "ready": c.ready && !state.terminating,
            "started": c.started,
            "restartCount": c.restart_count,
            "image": spec.image.clone().unwrap_or_default(),
            "imageID": format!("switchyard-catalog://{}", spec.image.clone().unwrap_or_default()),
        });
        if let Some(id) = &c.container_id {
            v["containerID"] = json!(id);
        }
        v
    };
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .zip(&state.containers)
        .map(|(s, c)| status_of(s, c))
        .collect();
    let init: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .zip(&state.init)
        .map(|(s, c)| status_of(s, c))
        .collect();
    let unready: Vec<&str> = spec
        .containers
        .iter()
        .zip(&state.containers)
        .filter(|(_, c)| !c.ready || state.terminating)
        .map(|(s, _)| s.name.as_str())
        .collect();
    let uninitialized: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .zip(&state.init)
        .filter(|(_, c)| !c.completed)
        .map(|(s, _)| s.name.as_str())
        .collect();
    let containers_ready = unready.is_empty();
    let finished = phase == "Succeeded" || phase == "Failed";
    let mut conditions = vec![
        condition_value(
            "PodReadyToStartContainers",
            state.pod_ip.is_some() && !finished,
            None,
            None,
        ),
        condition_value(
            "Initialized",
            state.initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                uninitialized.join(" ")
            )),
        ),
        condition_value(
            "ContainersReady",
            containers_ready,
            Some(if finished {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            (!finished).then(|| format!("containers with unready status: [{}]", unready.join(" "))),
        ),
        condition_value(
            "Ready",
            containers_ready,
            Some(if finished {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            (!finished).then(|| format!("containers with unready status: [{}]", unready.join(" "))),
        ),
    ];
    // Transition times: kept while a condition's status is unchanged.
    let existing = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in &mut conditions {
        let kind = c["type"].as_str().unwrap_or_default().to_string();
        let prior = existing.iter().find(|e| e.type_ == kind);
        let time = match prior {
            Some(p) if Some(p.status.as_str()) == c["status"].as_str() => p
                .last_transition_time
                .as_ref()
                .map_or_else(|| k8s_time(now), |t| k8s_time(t.0)),
            _ => k8s_time(now),
        };
        c["lastTransitionTime"] = json!(time);
    }
    // Keep the conditions others own (PodScheduled, readiness gates' conditions).
    let ours = [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ];
    let mut all: Vec<Value> = existing
        .iter()
        .filter(|c| !ours.contains(&c.type_.as_str()))
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    all.extend(conditions);
    let mut status = json!({
        "phase": phase,
        "conditions": all,
        "hostIP": node_ip.to_string(),
        "hostIPs": [{"ip": node_ip.to_string()}],
        "containerStatuses": containers,
        "qosClass": "BestEffort",
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    if let Some(ip) = state.pod_ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    if let Some(t) = &state.start_time {
        status["startTime"] = json!(t);
    }
    status
}

/// Why a container run ended.
enum RunEnd {
    Exited(ExitInfo),
    /// Killed after a liveness (or startup) failure: restart per restartPolicy.
    Unhealthy(ExitInfo),
    /// Killed because the pod is terminating.
    Stopped,
}

struct PodWorker {
    shared: Arc<Shared>,
    network: Arc<PodNetwork>,
    pod: watch::Receiver<Option<Pod>>,
}

fn grace_of(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(seconds as u64)
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl PodWorker {
    fn latest(&self) -> Option<Pod> {
        self.pod.borrow().clone()
    }

    async fn run(mut self) {
        let Some(pod) = self.latest() else { return };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &namespace);
        let has_sandbox = self.network.sandboxes().iter().any(|s| s.pod_uid == uid);
        if pod.metadata.deletion_timestamp.is_some() && !has_sandbox {
            self.finish_deletion(&api, &name, &uid).await;
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !has_sandbox && matches!(phase, Some("Succeeded" | "Failed")) {
            // Finished before (and its sandbox torn down): nothing to run; wait for deletion.
            self.idle_until_deleted(&api, &name, &uid).await;
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let init_specs = spec.init_containers.clone().unwrap_or_default();
        let handle = PodHandle {
            state: Arc::new(Mutex::new(PodState {
                start_time: Some(
                    pod.status
                        .as_ref()
                        .and_then(|s| s.start_time.as_ref())
                        .map_or_else(|| k8s_time(jiff::Timestamp::now()), |t| k8s_time(t.0)),
                ),
                init: vec![
                    ContainerState {
                        state: waiting("PodInitializing", None),
                        ..Default::default()
                    };
                    init_specs.len()
                ],
                containers: vec![
                    ContainerState {
                        state: waiting("ContainerCreating", None),
                        ..Default::default()
                    };
                    spec.containers.len()
                ],
                initialized: init_specs.is_empty(),
                ..Default::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let mut status_task = tokio::spawn(status_loop(
            api.clone(),
            name.clone(),
            self.pod.clone(),
            handle.clone(),
            self.shared.config.node_ip,
        ));
        let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
        let runner = self.run_pod(pod.clone(), handle.clone(), stop_rx);
        tokio::pin!(runner);
        // Run until the pod is deleted (deletionTimestamp, or gone from the API).
        let mut runner_done = false;
        let mut gone = false;
        let mut pod_rx = self.pod.clone();
        loop {
            let deleting = match &*pod_rx.borrow() {
                None => {
                    gone = true;
                    true
                }
                Some(p) => p.metadata.deletion_timestamp.is_some(),
            };
            if deleting {
                break;
            }
            tokio::select! {
                _ = &mut runner, if !runner_done => runner_done = true,
                changed = pod_rx.changed() => {
                    if changed.is_err() {
                        gone = true;
                        break;
                    }
                }
            }
        }
        let latest = self.latest().unwrap_or(pod);
        let grace = grace_of(&latest);
        tracing::info!(pod = %pod_key(&latest), ?grace, "terminating pod");
        handle.update(|s| s.terminating = true);
        let _ = stop_tx.send(Some(grace));
        if !runner_done {
            runner.await;
        }
        if let Err(e) = self.network.destroy_sandbox(&uid).await {
            tracing::warn!(error = %e, pod = %pod_key(&latest), "cannot remove the sandbox");
        }
        handle.update(|s| s.pod_ip = None);
        // Let the last status (containers terminated) reach the API before the delete.
        tokio::time::sleep(Duration::from_millis(50)).await;
        status_task.abort();
        let _ = (&mut status_task).await;
        if !gone {
            self.finish_deletion(&api, &name, &uid).await;
        }
    }

    async fn idle_until_deleted(&mut self, api: &Api<Pod>, name: &str, uid: &str) {
        loop {
            match &*self.pod.borrow() {
                None => return,
                Some(p) if p.metadata.deletion_timestamp.is_some() => break,
                Some(_) => {}
            }
            if self.pod.changed().await.is_err() {
                return;
            }
        }
        self.finish_deletion(api, name, uid).await;
    }

    /// Complete a graceful deletion: delete with grace 0, only this incarnation (UID).
    async fn finish_deletion(&self, api: &Api<Pod>, name: &str, uid: &str) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for _ in 0..10 {
            match api.delete(name, &params).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => {
                    tracing::warn!(error = %e, pod = name, "cannot complete the pod's deletion");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Sandbox, init containers, then the containers (until they end per restartPolicy or
    /// `stop` is set).
    async fn run_pod(
        &self,
        pod: Pod,
        handle: PodHandle,
        mut stop: watch::Receiver<Option<Duration>>,
    ) {
        let cluster_domain = &self.shared.config.cluster_domain;
        let (hostname, _) = dnsconfig::pod_hostname_and_domain(&pod, cluster_domain);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // The IP is allocated by create_sandbox; the hosts file needs it. Create the sandbox
        // (or find the existing one), then rewrite with the IP known: create_sandbox returns
        // the same sandbox for the same UID.
        let resolv_conf = dnsconfig::resolv_conf(
            &pod,
            &self.shared.config.cluster_dns,
            cluster_domain,
            self.shared.host_resolv_conf.as_deref(),
        );
        let mut existing_ip = self
            .network
            .sandboxes()
            .into_iter()
            .find(|s| s.pod_uid == uid)
            .map(|s| s.ip);
        let mut sandbox_spec = SandboxSpec {
            pod_uid: uid.clone(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            hostname,
            resolv_conf,
            hosts: dnsconfig::hosts_file(&pod, existing_ip.as_slice(), cluster_domain),
        };
        let mut delay = Duration::from_millis(200);
        let sandbox = loop {
            if stop.borrow().is_some() {
                return;
            }
            match self.network.create_sandbox(&sandbox_spec).await {
                Ok(sandbox) => {
                    if existing_ip == Some(sandbox.ip) {
                        break sandbox;
                    }
                    // First creation: now the IP is known, the hosts file with it (the same
                    // UID returns the same sandbox, its files rewritten in place).
                    sandbox_spec.hosts = dnsconfig::hosts_file(&pod, &[sandbox.ip], cluster_domain);
                    existing_ip = Some(sandbox.ip);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, pod = %pod_key(&pod), "cannot create the sandbox");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        handle.update(|s| s.pod_ip = Some(sandbox.ip));
        let adopted: HashMap<String, Container> = sandbox
            .adopt_containers()
            .into_iter()
            .map(|(record, container)| (record.name, container))
            .collect();
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let prior = pod.status.clone().unwrap_or_default();
        let prior_restarts = |init: bool, name: &str| {
            let list = if init {
                prior.init_container_statuses.as_ref()
            } else {
                prior.container_statuses.as_ref()
            };
            list.and_then(|l| l.iter().find(|c| c.name == name))
                .map(|c| {
                    // A container that ran before this agent saw it die counts one restart.
                    let was_running = c.state.as_ref().is_some_and(|s| s.running.is_some());
                    (
                        c.restart_count,
                        was_running,
                        c.state.as_ref().and_then(|s| s.terminated.clone()),
                    )
                })
        };
        let prior_initialized = prior
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Initialized" && c.status == "True");
        let init_specs = spec.init_containers.clone().unwrap_or_default();
        let any_adopted = spec
            .containers
            .iter()
            .any(|c| adopted.contains_key(&c.name));
        if !(init_specs.is_empty() || prior_initialized || any_adopted) {
            for (i, c) in init_specs.iter().enumerate() {
                let runner = ContainerRunner {
                    shared: &self.shared,
                    sandbox: &sandbox,
                    pod: &pod,
                    spec: c,
                    init: true,
                    index: i,
                    handle: &handle,
                };
                let ok = runner
                    .supervise(None, 0, &policy, stop.clone(), self.pod.clone())
                    .await;
                if !ok {
                    if stop.borrow().is_none() {
                        handle.update(|s| s.init_failed = true);
                    }
                    return;
                }
            }
        } else if !init_specs.is_empty() {
            // Initialized by an earlier agent.
            handle.update(|s| {
                for (i, c) in s.init.iter_mut().enumerate() {
                    c.completed = true;
                    c.state = prior
                        .init_container_statuses
                        .as_ref()
                        .and_then(|l| l.get(i))
                        .and_then(|st| serde_json::to_value(&st.state).ok())
                        .unwrap_or_else(
                            || json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                        );
                }
            });
        }
        handle.update(|s| s.initialized = true);
        let mut adopted = adopted;
        let mut runs = Vec::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let adopt = adopted.remove(&c.name);
            let (restarts, was_running, last) = prior_restarts(false, &c.name).unwrap_or_default();
            let restarts = if adopt.is_none() && (was_running || last.is_some()) {
                restarts + 1
            } else {
                restarts
            };
            let shared = &self.shared;
            let sandbox = &sandbox;
            let pod = &pod;
            let handle = &handle;
            let policy = policy.as_str();
            let stop = stop.clone();
            let pod_rx = self.pod.clone();
            runs.push(async move {
                let runner = ContainerRunner {
                    shared,
                    sandbox,
                    pod,
                    spec: c,
                    init: false,
                    index: i,
                    handle,
                };
                runner
                    .supervise(adopt, restarts, policy, stop, pod_rx)
                    .await
            });
        }
        futures::future::join_all(runs).await;
    }
}

/// Patch the pod's status whenever the state changes (coalesced; unchanged bodies skipped).
async fn status_loop(
    api: Api<Pod>,
    name: String,
    pod: watch::Receiver<Option<Pod>>,
    handle: PodHandle,
    node_ip: IpAddr,
) {
    let mut last: Option<Value> = None;
    loop {
        let current = pod.borrow().clone();
        let Some(current) = current else { return };
        let status = {
            let state = handle.state.lock().unwrap_or_else(|p| p.into_inner());
            pod_status(&current, &state, node_ip, jiff::Timestamp::now())
        };
        // Compare without transition times (they only change with statuses).
        let mut comparable = status.clone();
        if let Some(conds) = comparable["conditions"].as_array_mut() {
            for c in conds {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
        if last.as_ref() != Some(&comparable) {
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
            {
                Ok(_) => last = Some(comparable),
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(error = %e, pod = %name, "cannot update the pod's status");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        handle.changed.notified().await;
    }
}

/// One container of one pod.
struct ContainerRunner<'a> {
    shared: &'a Shared,
    sandbox: &'a Sandbox,
    pod: &'a Pod,
    spec: &'a ContainerSpecK8s,
    init: bool,
    index: usize,
    handle: &'a PodHandle,
}

impl ContainerRunner<'_> {
    fn set(&self, f: impl FnOnce(&mut ContainerState)) {
        self.handle.container(self.init, self.index, f);
    }

    fn container_id(&self, restart: i32) -> String {
        format!(
            "switchyard://{}-{}-{restart}",
            self.pod.metadata.uid.as_deref().unwrap_or_default(),
            self.spec.name
        )
    }

    /// The argv and env, or (reason, message) for a waiting state.
    async fn prepare(&self, restart: i32) -> Result<ContainerSpec, (String, String)> {
        let pod = self.pod;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let image = self.spec.image.clone().unwrap_or_default();
        let command = self.spec.command.clone().unwrap_or_default();
        let args = self.spec.args.clone().unwrap_or_default();
        let (argv, image_env) = self
            .shared
            .catalog
            .argv(&image, &command, &args, &namespace, &name)
            .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?;
        let config_error = |e: String| ("CreateContainerConfigError".to_string(), e);
        let client = &self.shared.client;
        // The services that exist now (kubelet: at container start).
        let mut services: Vec<Service> = Api::<Service>::namespaced(client.clone(), &namespace)
            .list(&Default::default())
            .await
            .map_err(|e| config_error(format!("list services: {e}")))?
            .items;
        if namespace != "default" {
            if let Ok(Some(master)) = Api::<Service>::namespaced(client.clone(), "default")
                .get_opt("kubernetes")
                .await
            {
                services.push(master);
            }
        }
        let enable_links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let service_env = envvars::service_env(&services, enable_links, &namespace);
        let mut configmaps = BTreeMap::new();
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        for cm in envvars::referenced_configmaps(std::slice::from_ref(self.spec)) {
            if let Some(found) = cm_api
                .get_opt(&cm)
                .await
                .map_err(|e| config_error(format!("get configmap {cm}: {e}")))?
            {
                configmaps.insert(cm, found);
            }
        }
        let mut env_pod = pod.clone();
        let status = env_pod.status.get_or_insert_with(Default::default);
        status.pod_ip = Some(self.sandbox.ip.to_string());
        status.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
            ip: self.sandbox.ip.to_string(),
        }]);
        status.host_ip = Some(self.shared.config.node_ip.to_string());
        status.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: self.shared.config.node_ip.to_string(),
        }]);
        let own = envvars::container_env(&env_pod, self.spec, &service_env, &configmaps)
            .map_err(|e| config_error(e.to_string()))?;
        // The image's env first; the container's wins (as a container runtime merges them).
        let mut env: Vec<(String, String)> = image_env
            .into_iter()
            .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
            .collect();
        env.extend(own);
        let argv = envvars::expand_argv(&argv, &env);
        Ok(ContainerSpec {
            name: self.spec.name.clone(),
            argv,
            env,
            working_dir: self.spec.working_dir.clone(),
            log_path: logs::container_log_path(
                &self.shared.config.root_dir,
                &namespace,
                &name,
                pod.metadata.uid.as_deref().unwrap_or_default(),
                &self.spec.name,
                restart.max(0) as u32,
            ),
            shim: self.shared.config.self_exe.clone(),
        })
    }

    /// Run the container, restarting it per `policy` with back-off, until it ends for good or
    /// `stop` is set. Returns whether it finished successfully (init containers).
    async fn supervise(
        &self,
        mut adopted: Option<Container>,
        mut restarts: i32,
        policy: &str,
        mut stop: watch::Receiver<Option<Duration>>,
        pod_rx: watch::Receiver<Option<Pod>>,
    ) -> bool {
        let timings = &self.shared.timings;
        let mut backoff: Option<Duration> = None;
        let mut first = true;
        loop {
            if stop.borrow().is_some() {
                return false;
            }
            // Start (or adopt).
            let (container, env) = match adopted.take() {
                Some(c) => {
                    let env = self
                        .prepare(restarts)
                        .await
                        .map(|s| s.env)
                        .unwrap_or_default();
                    (c, env)
                }
                None => {
                    if !first {
                        restarts += 1;
                    }
                    let spec = match self.prepare(restarts).await {
                        Ok(spec) => spec,
                        Err((reason, message)) => {
                            if !first {
                                restarts -= 1;
                            }
                            tracing::warn!(pod = %pod_key(self.pod), container = %self.spec.name, %reason, %message, "cannot start container");
                            self.set(|c| {
                                c.state = waiting(&reason, Some(message.clone()));
                                c.ready = false;
                            });
                            let delay = next_backoff(&mut backoff, timings);
                            let image = self.spec.image.clone().unwrap_or_default();
                            if reason == "ErrImagePull" {
                                if wait_or_stop(&mut stop, delay.min(Duration::from_secs(1))).await
                                {
                                    return false;
                                }
                                self.set(|c| {
                                    c.state = waiting(
                                        "ImagePullBackOff",
                                        Some(format!("Back-off pulling image \"{image}\"")),
                                    )
                                });
                            }
                            if wait_or_stop(&mut stop, delay).await {
                                return false;
                            }
                            continue;
                        }
                    };
                    match self.sandbox.start_container(&spec).await {
                        Ok(c) => (c, spec.env),
                        Err(e) => {
                            if !first {
                                restarts -= 1;
                            }
                            self.set(|c| {
                                c.state = waiting("RunContainerError", Some(e.to_string()));
                            });
                            let delay = next_backoff(&mut backoff, timings);
                            if wait_or_stop(&mut stop, delay).await {
                                return false;
                            }
                            continue;
                        }
                    }
                }
            };
            first = false;
            let started_at = container.started_at();
            let container_id = self.container_id(restarts);
            let has_startup = self.spec.startup_probe.is_some() && !self.init;
            let has_readiness = self.spec.readiness_probe.is_some() && !self.init;
            // An adopted container may have ended while no agent ran: never shown running.
            let running = container.is_running();
            self.set(|c| {
                if running {
                    c.state = json!({"running": {"startedAt": k8s_time(started_at)}});
                }
                c.restart_count = restarts;
                c.container_id = Some(container_id.clone());
                c.started = running && !has_startup;
                c.ready = running && !has_startup && !has_readiness;
                c.running = running;
            });
            let end = self.run_once(container, env, &mut stop).await;
            let exit = match end {
                RunEnd::Exited(e) | RunEnd::Unhealthy(e) => e,
                RunEnd::Stopped => {
                    return false;
                }
            };
            let exit_code = match exit.signal {
                Some(sig) if exit.exit_code <= 0 => 128 + sig,
                _ => exit.exit_code,
            };
            let reason = if exit_code == 0 { "Completed" } else { "Error" };
            let terminated = json!({"terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": k8s_time(started_at),
                "finishedAt": k8s_time(exit.finished_at),
                "containerID": container_id,
            }});
            let restart = match policy {
                "Never" => false,
                "OnFailure" => exit_code != 0,
                _ => !self.init || exit_code != 0,
            };
            if !restart {
                self.set(|c| {
                    c.state = terminated.clone();
                    c.ready = false;
                    c.running = false;
                    c.completed = exit_code == 0;
                    c.terminated_once = true;
                });
                if self.init {
                    return exit_code == 0;
                }
                // Finished for good: stay until the pod is deleted.
                let _ = stop.wait_for(Option::is_some).await;
                return exit_code == 0;
            }
            if self.init && exit_code == 0 {
                self.set(|c| {
                    c.state = terminated.clone();
                    c.completed = true;
                    c.running = false;
                });
                return true;
            }
            // Back-off (kubelet: the first restart is immediate, then 10 s doubling to 5 min;
            // reset after a run of 10 minutes).
            let ran = jiff::Timestamp::now().duration_since(started_at);
            if ran > jiff::SignedDuration::from_secs(600) {
                backoff = None;
            }
            let delay = match backoff {
                None => {
                    backoff = Some(Duration::ZERO);
                    Duration::ZERO
                }
                Some(_) => next_backoff(&mut backoff, timings),
            };
            let pod_name = pod_rx
                .borrow()
                .as_ref()
                .map(|p| {
                    format!(
                        "{}_{}({})",
                        p.metadata.name.as_deref().unwrap_or_default(),
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        p.metadata.uid.as_deref().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            self.set(|c| {
                c.last_state = terminated.clone();
                c.ready = false;
                c.running = false;
                c.terminated_once = true;
                c.state = if delay.is_zero() {
                    terminated.clone()
                } else {
                    waiting(
                        "CrashLoopBackOff",
                        Some(format!(
                            "back-off {}s restarting failed container={} pod={pod_name}",
                            delay.as_secs(),
                            self.spec.name
                        )),
                    )
                };
            });
            if wait_or_stop(&mut stop, delay).await {
                return false;
            }
        }
    }

    /// One run of a started container: probes, until it exits, fails its liveness/startup
    /// probe, or the pod stops.
    async fn run_once(
        &self,
        mut container: Container,
        env: Vec<(String, String)>,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> RunEnd {
        let target = ProbeTarget {
            node_ns: self.shared.node_ns.clone(),
            sandbox: self.sandbox.clone(),
            ports: self.spec.ports.clone().unwrap_or_default(),
            env,
        };
        let (tx, mut rx) = mpsc::channel(8);
        let mut probers = JoinSet::new();
        let start_main_probes = |probers: &mut JoinSet<()>| {
            if self.init {
                return;
            }
            if let Some(p) = &self.spec.liveness_probe {
                probers.spawn(probes::run_prober(
                    ProbeKind::Liveness,
                    p.clone(),
                    target.clone(),
                    tx.clone(),
                ));
            }
            if let Some(p) = &self.spec.readiness_probe {
                probers.spawn(probes::run_prober(
                    ProbeKind::Readiness,
                    p.clone(),
                    target.clone(),
                    tx.clone(),
                ));
            }
        };
        match (&self.spec.startup_probe, self.init) {
            (Some(p), false) => {
                probers.spawn(probes::run_prober(
                    ProbeKind::Startup,
                    p.clone(),
                    target.clone(),
                    tx.clone(),
                ));
            }
            _ => start_main_probes(&mut probers),
        }
        let kill_grace = Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        loop {
            tokio::select! {
                exit = container.wait() => return RunEnd::Exited(exit),
                grace = async { stop.wait_for(Option::is_some).await.ok().and_then(|g| *g) } => {
                    let grace = grace.unwrap_or(Duration::ZERO);
                    probers.abort_all();
                    self.set(|c| c.ready = false);
                    let exit = terminate(&mut container, grace).await;
                    let code = match exit.signal { Some(s) => 128 + s, None => exit.exit_code };
                    self.set(|c| {
                        c.running = false;
                        c.state = json!({"terminated": {
                            "exitCode": code,
                            "reason": if code == 0 { "Completed" } else { "Error" },
                            "startedAt": k8s_time(container.started_at()),
                            "finishedAt": k8s_time(exit.finished_at),
                        }});
                    });
                    return RunEnd::Stopped;
                }
                Some((kind, ok, message)) = rx.recv() => match (kind, ok) {
                    (ProbeKind::Startup, true) => {
                        self.set(|c| {
                            c.started = true;
                            c.ready = self.spec.readiness_probe.is_none();
                        });
                        start_main_probes(&mut probers);
                    }
                    (ProbeKind::Readiness, ok) => self.set(|c| c.ready = ok && c.started),
                    (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                        tracing::info!(pod = %pod_key(self.pod), container = %self.spec.name, %message,
                            "container failed its {kind:?} probe, will be restarted");
                        probers.abort_all();
                        self.set(|c| c.ready = false);
                        let exit = terminate(&mut container, kill_grace).await;
                        return RunEnd::Unhealthy(exit);
                    }
                    (ProbeKind::Liveness, true) => {}
                }
            }
        }
    }
}

/// SIGTERM, up to `grace` for it to exit, then SIGKILL.
async fn terminate(container: &mut Container, grace: Duration) -> ExitInfo {
    if !grace.is_zero() {
        let _ = container.signal(Signal::SIGTERM);
        if let Ok(exit) = tokio::time::timeout(grace, container.wait()).await {
            return exit;
        }
    }
    let _ = container.signal(Signal::SIGKILL);
    container.wait().await
}

fn next_backoff(backoff: &mut Option<Duration>, timings: &Timings) -> Duration {
    let next = match *backoff {
        None => timings.backoff_initial,
        Some(d) if d.is_zero() => timings.backoff_initial,
        Some(d) => (d * 2).min(timings.backoff_max),
    };
    *backoff = Some(next);
    next
}

/// Sleep `delay`; true if the pod is stopping (then stop now).
async fn wait_or_stop(stop: &mut watch::Receiver<Option<Duration>>, delay: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(Option::is_some) => true,
    };
    stopped || stop.borrow().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}
        }))
        .expect("pod")
    }

    fn running() -> ContainerState {
        ContainerState {
            state: json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
            ready: true,
            started: true,
            ..Default::default()
        }
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState {
            state: json!({"terminated": {"exitCode": code}}),
            ..Default::default()
        }
    }

    #[test]
    fn phase_follows_kubelet_get_phase() {
        let state = |containers: Vec<ContainerState>| PodState {
            initialized: true,
            containers,
            ..Default::default()
        };
        let cases = [
            ("Always", vec![running(), running()], "Running"),
            (
                "Always",
                vec![running(), ContainerState::default()],
                "Pending",
            ),
            ("Always", vec![terminated(0), terminated(1)], "Running"),
            ("Never", vec![terminated(0), terminated(0)], "Succeeded"),
            ("Never", vec![terminated(0), terminated(2)], "Failed"),
            ("OnFailure", vec![terminated(0), terminated(0)], "Succeeded"),
            ("OnFailure", vec![terminated(0), terminated(2)], "Running"),
            ("Never", vec![running(), terminated(2)], "Running"),
        ];
        for (policy, containers, want) in cases {
            assert_eq!(pod_phase(&state(containers), policy), want, "{policy}");
        }
        let uninitialized = PodState::default();
        assert_eq!(pod_phase(&uninitialized, "Always"), "Pending");
    }

    #[test]
    fn status_keeps_pod_scheduled_and_reports_readiness() {
        let p = pod("Always");
        let mut unready = running();
        unready.ready = false;
        let state = PodState {
            initialized: true,
            pod_ip: Some("10.244.1.9".parse().expect("ip")),
            containers: vec![running(), unready],
            ..Default::default()
        };
        let status = pod_status(
            &p,
            &state,
            "192.168.0.2".parse().expect("ip"),
            jiff::Timestamp::now(),
        );
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.244.1.9");
        assert_eq!(status["hostIPs"][0]["ip"], "192.168.0.2");
        let conds = status["conditions"].as_array().expect("conditions");
        let get = |t: &str| conds.iter().find(|c| c["type"] == t).expect(t).clone();
        assert_eq!(get("PodScheduled")["status"], "True");
        assert_eq!(get("PodReadyToStartContainers")["status"], "True");
        assert_eq!(get("Initialized")["status"], "True");
        assert_eq!(get("Ready")["status"], "False");
        assert_eq!(
            get("ContainersReady")["message"],
            "containers with unready status: [b]"
        );
        assert_eq!(status["containerStatuses"][1]["ready"], false);
        assert_eq!(status["containerStatuses"][0]["ready"], true);
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let timings = Timings::default();
        let mut b = None;
        let seq: Vec<u64> = (0..7)
            .map(|_| next_backoff(&mut b, &timings).as_secs())
            .collect();
        assert_eq!(seq, [10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn micro_time_has_six_digits() {
        let ts: jiff::Timestamp = "2026-11-22T07:00:00.123456789Z".parse().expect("ts");
        assert_eq!(k8s_micro_time(ts), "2026-11-22T07:00:00.123456Z");
        assert_eq!(k8s_time(ts), "2026-11-22T07:00:00Z");
    }
}
