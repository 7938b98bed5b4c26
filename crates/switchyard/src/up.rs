//! `switchyard up` and `switchyard down`: a whole cluster on one machine, inside network
//! namespaces of its own, so nothing on the host's network changes.
//!
//! Layout (prefix `sy-` by default):
//! - `sy-lan`: the bridge of one L2 segment, 192.168.67.0/24 (where the seeds' MetalLB pool
//!   192.168.67.120-200 lives);
//! - `sy-node-1`..`sy-node-N`: one namespace per node at 192.168.67.(10+i), each running a
//!   `switchyard node` (pods, proxy, L2 announcer); node 1 also runs the cluster DNS,
//!   registered as the endpoint of kube-system/kube-dns (10.96.0.10);
//! - `sy-client`: 192.168.67.2, "a machine outside the cluster on the same network" for NodePort
//!   and LoadBalancer traffic (also the nodes' default gateway, which forwards nothing);
//! - the API server with the embedded store and the controllers in this machine's own namespace
//!   on 127.0.0.1, as `switchyard server`.
//!
//! Every component is a child process of the same binary with its log in `DATA_DIR/logs/`.
//! What was started is recorded in `DATA_DIR/up.json`, so `switchyard down` can stop the
//! processes (by PID, only ours) and remove the namespaces after a crash. Ctrl-C does the same.
//! The store, certificates and kubeconfig stay in the data dir: `up` again brings the same
//! cluster back (the nodes start their pods afresh).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use switchyard_netns::{NetNs, Segment};

use crate::wait_for_signal;

/// The segment's network: nodes at .11, .12, ..., the client at .2.
const LAN_PREFIX: &str = "192.168.67";
const LAN_BITS: u8 = 24;
const CLIENT_HOST: u8 = 2;
const FIRST_NODE_HOST: u8 = 10;
const MAX_NODES: u8 = 9;

/// The example workload applied to a new cluster: the seeds' MetalLB pool, then myapp behind a
/// Service of every type.
const EXAMPLES: [(&str, &str); 2] = [
    (
        "examples/metallb.yaml",
        include_str!("../../../examples/metallb.yaml"),
    ),
    (
        "examples/myapp.yaml",
        include_str!("../../../examples/myapp.yaml"),
    ),
];

/// The proxy's configuration, as kubeadm keeps it: ConfigMap kube-system/kube-proxy, key
/// `config.conf`. Created once; every node follows it, so an edit takes effect on every node
/// without restarting anything.
const PROXY_CONFIG_MAP_NAMESPACE: &str = "kube-system";
const PROXY_CONFIG_MAP: &str = "kube-proxy";
const PROXY_CONFIG: &str = "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
# nftables when `nft` is available, else the userspace proxy.
mode: \"\"
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 0.0.0.0:10249
nftables:
  syncPeriod: 30s
  minSyncPeriod: 1s
  masqueradeAll: false
ipvs:
  scheduler: \"\"
";

async fn ensure_proxy_config_map(client: &kube::Client) -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), PROXY_CONFIG_MAP_NAMESPACE);
    if api.get_opt(PROXY_CONFIG_MAP).await?.is_some() {
        return Ok(());
    }
    let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": PROXY_CONFIG_MAP, "labels": {"app": "kube-proxy"}},
        "data": {"config.conf": PROXY_CONFIG},
    }))?;
    match api.create(&Default::default(), &config_map).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating ConfigMap kube-system/kube-proxy"),
    }
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the store, certificates, admin.kubeconfig, node state and logs live.
    #[arg(long, default_value = "./switchyard-data")]
    data_dir: PathBuf,
    /// How many nodes (1-9), each in its own network namespace.
    #[arg(long, default_value_t = 1)]
    nodes: u8,
    /// The API server's HTTPS port on 127.0.0.1 (0: any free port; see the kubeconfig).
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Port range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Do not apply the example workload to a new cluster.
    #[arg(long)]
    no_example: bool,
    /// Prefix of the network namespaces' names (tests run several clusters side by side).
    #[arg(long, default_value = "sy-", hide = true)]
    name_prefix: String,
}

#[derive(clap::Args)]
pub struct DownArgs {
    /// The data dir of the cluster `switchyard up` started.
    #[arg(long, default_value = "./switchyard-data")]
    data_dir: PathBuf,
}

/// What `up` started, recorded for `down`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    /// PIDs of the component processes, with what they are.
    processes: Vec<(u32, String)>,
    /// The nodes' names, root dirs and namespaces.
    nodes: Vec<NodeRecord>,
    /// Every namespace made, in creation order.
    namespaces: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeRecord {
    name: String,
    netns: String,
    root_dir: PathBuf,
}

fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("up.json")
}

impl Record {
    fn load(data_dir: &Path) -> Result<Option<Record>> {
        let path = record_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not Switchyard's record", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, data_dir: &Path) -> Result<()> {
        let path = record_path(data_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The recorded processes still running this binary.
    fn live_processes(&self) -> Vec<(u32, String)> {
        self.processes
            .iter()
            .filter(|(pid, _)| is_switchyard(*pid))
            .cloned()
            .collect()
    }
}

/// Whether `pid` runs the switchyard binary (a recorded PID may have been reused since).
fn is_switchyard(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let Ok(me) = std::env::current_exe() else {
        return false;
    };
    exe == me
        || exe
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("switchyard"))
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// SIGTERM the recorded processes, SIGKILL what is left after `grace`.
async fn stop_processes(processes: &[(u32, String)], grace: Duration) {
    for (pid, _) in processes {
        if is_switchyard(*pid) {
            signal(*pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && processes.iter().any(|(pid, _)| is_switchyard(*pid)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (pid, what) in processes {
        if is_switchyard(*pid) {
            eprintln!("switchyard: {what} (pid {pid}) did not stop; killing it");
            signal(*pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Remove what a record names: processes, the nodes' pods and pod networks, namespaces.
async fn tear_down(record: &Record) {
    stop_processes(&record.processes, Duration::from_secs(10)).await;
    for node in &record.nodes {
        if NetNs::exists(&node.netns) {
            match NetNs::open(&node.netns) {
                Ok(ns) => {
                    match switchyard_node::sandbox::PodNetwork::open_existing(ns, &node.root_dir)
                        .await
                    {
                        Ok(Some(network)) => {
                            if let Err(e) = network.teardown().await {
                                eprintln!("switchyard: removing the pods of {}: {e}", node.name);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => eprintln!("switchyard: pods of {}: {e}", node.name),
                    }
                }
                Err(e) => eprintln!("switchyard: {}: {e}", node.netns),
            }
        }
    }
    for name in record.namespaces.iter().rev() {
        switchyard_netns::kill_processes_in(name);
        if let Err(e) = NetNs::delete(name).await {
            eprintln!("switchyard: deleting network namespace {name}: {e}");
        }
    }
}

pub async fn down(args: DownArgs) -> ExitCode {
    let record = match Record::load(&args.data_dir) {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!(
                "switchyard: nothing to clean up: no cluster was started from {}",
                args.data_dir.display()
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(64);
        }
    };
    tear_down(&record).await;
    let _ = std::fs::remove_file(record_path(&args.data_dir));
    eprintln!(
        "switchyard: stopped the cluster of {} and removed its network namespaces",
        args.data_dir.display()
    );
    ExitCode::SUCCESS
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("switchyard: {message}");
    ExitCode::from(64)
}

/// A prefix usable in namespace and node names.
fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 20
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub async fn up(args: UpArgs) -> ExitCode {
    if !(1..=MAX_NODES).contains(&args.nodes) {
        return usage(format!("--nodes {}: must be 1 to {MAX_NODES}", args.nodes));
    }
    if !valid_prefix(&args.name_prefix) {
        return usage(format!(
            "--name-prefix {:?}: lower case letters, digits and '-' only",
            args.name_prefix
        ));
    }
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("switchyard: up needs root and iproute2 (`ip`) to create network namespaces");
        return ExitCode::from(69);
    }
    if let Err(e) = std::fs::create_dir_all(args.data_dir.join("logs")) {
        return usage(format!("--data-dir {}: {e}", args.data_dir.display()));
    }
    let data_dir = match args.data_dir.canonicalize() {
        Ok(d) => d,
        Err(e) => return usage(format!("--data-dir {}: {e}", args.data_dir.display())),
    };
    match Record::load(&data_dir) {
        Ok(Some(old)) => {
            let live = old.live_processes();
            if let Some((pid, what)) = live.first() {
                return usage(format!(
                    "a cluster from {} is running ({what}, pid {pid}); stop it first (Ctrl-C, or switchyard down --data-dir {})",
                    data_dir.display(),
                    data_dir.display()
                ));
            }
            eprintln!("switchyard: cleaning up after an earlier run that did not stop");
            tear_down(&old).await;
        }
        Ok(None) => {}
        Err(e) => return usage(format!("{e:#}")),
    }
    let mut cluster = Cluster {
        data_dir: data_dir.clone(),
        record: Record::default(),
        components: Vec::new(),
    };
    let result = tokio::select! {
        r = cluster.start(&args) => r,
        _ = wait_for_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let code = match result {
        Ok(()) => {
            tokio::select! {
                _ = wait_for_signal() => {}
                _ = cluster.supervise() => {}
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            eprintln!("switchyard: logs are in {}/logs", data_dir.display());
            ExitCode::FAILURE
        }
    };
    eprintln!("switchyard: stopping...");
    tear_down(&cluster.record).await;
    let _ = std::fs::remove_file(record_path(&data_dir));
    eprintln!(
        "switchyard: stopped; the cluster's data stays in {}",
        data_dir.display()
    );
    code
}

struct Cluster {
    data_dir: PathBuf,
    record: Record,
    components: Vec<Component>,
}

/// One child process and how to start it again.
struct Component {
    what: String,
    log: String,
    args: Vec<String>,
    child: tokio::process::Child,
    started: Instant,
    /// The wait before the next restart after a quick exit (doubling to 30 s).
    backoff: Duration,
}

/// A component that ran at least this long restarts after the shortest back-off.
const STABLE_RUN: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Cluster {
    fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    fn note_namespace(&mut self, name: &str) -> Result<()> {
        self.record.namespaces.push(name.to_string());
        self.record.save(&self.data_dir)
    }

    /// Start `switchyard ARGS` with its output in `logs/<log>.log`.
    fn spawn(&mut self, what: &str, log: &str, args: &[String]) -> Result<()> {
        let child = self.launch(what, log, args)?;
        self.components.push(Component {
            what: what.to_string(),
            log: log.to_string(),
            args: args.to_vec(),
            child,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
        });
        Ok(())
    }

    fn launch(&mut self, what: &str, log: &str, args: &[String]) -> Result<tokio::process::Child> {
        let exe = std::env::current_exe().context("finding the switchyard executable")?;
        let log_path = self.data_dir.join("logs").join(format!("{log}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = tokio::process::Command::new(exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // A Ctrl-C in the terminal reaches only `up`, which then stops the children in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id().context("the child has no pid")?;
        self.record.processes.retain(|(_, w)| w != what);
        self.record.processes.push((pid, what.to_string()));
        self.record.save(&self.data_dir)?;
        Ok(child)
    }

    /// Keep every component running: one that exits (a crash, a `kill`) is started again after
    /// a back-off, as a service manager would, and the restart is logged. Runs until cancelled.
    async fn supervise(&mut self) {
        loop {
            let waits = self
                .components
                .iter_mut()
                .enumerate()
                .map(|(i, c)| Box::pin(async move { (i, describe(c.child.wait().await)) }));
            let ((i, status), _, _) = futures::future::select_all(waits).await;
            let component = &mut self.components[i];
            if component.started.elapsed() >= STABLE_RUN {
                component.backoff = FIRST_BACKOFF;
            }
            let wait = component.backoff;
            component.backoff = (wait * 2).min(MAX_BACKOFF);
            step(&format!(
                "{} exited ({status}); starting it again in {wait:?} (log: {}/logs/{}.log)",
                component.what,
                self.data_dir.display(),
                component.log
            ));
            tokio::time::sleep(wait).await;
            let (what, log, args) = {
                let c = &self.components[i];
                (c.what.clone(), c.log.clone(), c.args.clone())
            };
            match self.launch(&what, &log, &args) {
                Ok(child) => {
                    let c = &mut self.components[i];
                    c.child = child;
                    c.started = Instant::now();
                }
                Err(e) => {
                    step(&format!("cannot start {what} again: {e:#}"));
                    // Try again after the next back-off.
                    let c = &mut self.components[i];
                    tokio::time::sleep(c.backoff).await;
                }
            }
        }
    }

    async fn start(&mut self, args: &UpArgs) -> Result<()> {
        let prefix = &args.name_prefix;
        let fresh = !self.data_dir.join("store.db").exists();
        step(&format!(
            "setting up the network: segment {LAN_PREFIX}.0/{LAN_BITS} in {prefix}lan, {} node namespace(s), client {prefix}client",
            args.nodes
        ));
        let lan_name = format!("{prefix}lan");
        self.note_namespace(&lan_name)?;
        let lan = Segment::create(&lan_name).await?;
        let client_name = format!("{prefix}client");
        self.note_namespace(&client_name)?;
        let client_ns = NetNs::create(&client_name).await?;
        lan.attach(
            &client_ns,
            "client",
            "eth0",
            &format!("{LAN_PREFIX}.{CLIENT_HOST}/{LAN_BITS}"),
        )
        .await?;
        let mut nodes = Vec::new();
        for i in 1..=args.nodes {
            let name = format!("node-{i}");
            let netns = format!("{prefix}node-{i}");
            let ip = format!("{LAN_PREFIX}.{}", FIRST_NODE_HOST + i);
            self.note_namespace(&netns)?;
            let ns = NetNs::create(&netns).await?;
            lan.attach(&ns, &name, "eth0", &format!("{ip}/{LAN_BITS}"))
                .await?;
            // Traffic for addresses the node has no route to (a ClusterIP before DNAT) needs
            // some route; the client forwards nothing, so nothing leaves the segment.
            ns.ip(&[
                "route",
                "replace",
                "default",
                "via",
                &format!("{LAN_PREFIX}.{CLIENT_HOST}"),
            ])
            .await?;
            let root_dir = self.data_dir.join("nodes").join(&name);
            self.record.nodes.push(NodeRecord {
                name: name.clone(),
                netns: netns.clone(),
                root_dir: root_dir.clone(),
            });
            nodes.push((name, netns, ip, root_dir));
        }
        self.record.save(&self.data_dir)?;

        step(&format!(
            "starting the API server (store in {}) on https://127.0.0.1:{}",
            self.data_dir.display(),
            args.secure_port
        ));
        let _ = std::fs::remove_file(self.kubeconfig());
        self.spawn(
            "the API server",
            "server",
            &[
                "server".into(),
                "--data-dir".into(),
                self.data_dir.display().to_string(),
                "--secure-port".into(),
                args.secure_port.to_string(),
                "--service-node-port-range".into(),
                args.service_node_port_range.clone(),
            ],
        )?;
        let client = self.wait_for_api().await?;

        ensure_proxy_config_map(&client).await?;
        let kubeconfig = self.kubeconfig().display().to_string();
        for (name, netns, ip, root_dir) in &nodes {
            step(&format!("starting node {name} ({ip}) in {netns}"));
            self.spawn(
                &format!("node {name}"),
                name,
                &[
                    "node".into(),
                    "--kubeconfig".into(),
                    kubeconfig.clone(),
                    "--node-name".into(),
                    name.clone(),
                    "--node-ip".into(),
                    ip.clone(),
                    "--netns".into(),
                    netns.clone(),
                    "--root-dir".into(),
                    root_dir.display().to_string(),
                    "--config-map".into(),
                    format!("{PROXY_CONFIG_MAP_NAMESPACE}/{PROXY_CONFIG_MAP}"),
                ],
            )?;
        }
        let (_, dns_ns, dns_ip, _) = &nodes[0];
        step(&format!(
            "starting the cluster DNS in {dns_ns} ({dns_ip}:53, kube-system/kube-dns 10.96.0.10)"
        ));
        self.spawn(
            "the DNS",
            "dns",
            &[
                "dns".into(),
                "--kubeconfig".into(),
                kubeconfig.clone(),
                "--netns".into(),
                dns_ns.clone(),
                // The node's own address: 10.96.0.10:53 on the same node stays free for a
                // userspace proxy.
                "--listen".into(),
                format!("{dns_ip}:53"),
                "--metrics-listen".into(),
                format!("{dns_ip}:9153"),
                "--advertise-address".into(),
                dns_ip.clone(),
            ],
        )?;
        self.wait_for_nodes(&client, args.nodes as usize).await?;
        if fresh && !args.no_example {
            for (file, yaml) in EXAMPLES {
                step(&format!("applying {file}"));
                apply(&client, yaml)
                    .await
                    .with_context(|| format!("applying {file}"))?;
            }
        }
        self.wait_for_example(&client).await?;
        self.summary(&client, args).await;
        Ok(())
    }

    /// Wait for the server's kubeconfig and a successful request; fail early if it exits.
    async fn wait_for_api(&mut self) -> Result<kube::Client> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.components[0].child.try_wait()? {
                bail!("the API server exited ({})", describe(Ok(status)));
            }
            if self.kubeconfig().exists() {
                if let Ok(client) =
                    switchyard_controllers::client_from_kubeconfig(&self.kubeconfig()).await
                {
                    if client.apiserver_version().await.is_ok() {
                        return Ok(client);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the API server did not answer within 60s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `want` nodes report Ready with a heartbeat from this run (a restarted
    /// cluster's Nodes still say Ready from before).
    async fn wait_for_nodes(&mut self, client: &kube::Client, want: usize) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut shown = usize::MAX;
        loop {
            for c in &mut self.components {
                if let Some(status) = c.child.try_wait()? {
                    bail!("{} exited ({})", c.what, describe(Ok(status)));
                }
            }
            let ready = nodes
                .list(&ListParams::default())
                .await
                .map(|l| l.items.iter().filter(|n| node_ready(n, since)).count())
                .unwrap_or(0);
            if ready != shown {
                step(&format!("nodes Ready: {ready}/{want}"));
                shown = ready;
            }
            if ready >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {ready} of {want} nodes became Ready within 120s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until the example Deployment is available, showing progress.
    async fn wait_for_example(&mut self, client: &kube::Client) -> Result<()> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut shown = (-1, -1);
        loop {
            let (ready, want) = match deployments.get_opt("myapp").await? {
                Some(d) => (
                    d.status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0),
                    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                ),
                None => return Ok(()),
            };
            if (ready, want) != shown {
                step(&format!("deployment myapp: {ready}/{want} pods ready"));
                shown = (ready, want);
            }
            if ready >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("deployment myapp: only {ready} of {want} pods ready within 120s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn summary(&self, client: &kube::Client, args: &UpArgs) {
        let prefix = &args.name_prefix;
        let kubeconfig = self.kubeconfig();
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let svc = |name: &str| {
            let services = services.clone();
            let name = name.to_string();
            async move { services.get_opt(&name).await.ok().flatten() }
        };
        let mut try_lines = Vec::new();
        if let Some(s) = svc("myapp").await {
            if let Some(ip) = s.spec.as_ref().and_then(|s| s.cluster_ip.clone()) {
                try_lines.push(format!(
                    "  ip netns exec {prefix}node-1 curl -s http://{ip}/          # the ClusterIP, from a node"
                ));
            }
        }
        try_lines.push(
            "  kubectl exec deploy/myapp -- wget -qO- http://myapp   # from a pod, by name"
                .to_string(),
        );
        try_lines.push(format!(
            "  ip netns exec {prefix}node-1 dig +short @10.96.0.10 myapp.default.svc.cluster.local"
        ));
        if let Some(s) = svc("myapp-nodeport").await {
            if let Some(port) = s
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .and_then(|p| p.first())
                .and_then(|p| p.node_port)
            {
                try_lines.push(format!(
                    "  ip netns exec {prefix}client curl -s http://{LAN_PREFIX}.{}:{port}/   # NodePort, from outside",
                    FIRST_NODE_HOST + 1
                ));
            }
        }
        if let Some(s) = svc("myapp-lb").await {
            if let Some(ip) = s
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .and_then(|i| i.first())
                .and_then(|i| i.ip.clone())
            {
                try_lines.push(format!(
                    "  ip netns exec {prefix}client curl -s http://{ip}/     # LoadBalancer, from outside"
                ));
            }
        }
        let url = kube::config::Kubeconfig::read_from(&kubeconfig)
            .ok()
            .and_then(|k| k.clusters.into_iter().next())
            .and_then(|c| c.cluster)
            .and_then(|c| c.server)
            .unwrap_or_else(|| format!("https://127.0.0.1:{}", args.secure_port));
        println!(
            "\nSwitchyard is up: API server {url}, {n} node(s) ({prefix}node-1..{n} at {LAN_PREFIX}.{first}..), DNS 10.96.0.10, client namespace {prefix}client ({LAN_PREFIX}.{CLIENT_HOST}).\n\n  export KUBECONFIG={kc}\n  kubectl get nodes,pods,svc -o wide\n{lines}\n\nLogs: {logs}/logs. Ctrl-C stops everything and removes the namespaces (after a crash: switchyard down --data-dir {dd}).",
            n = args.nodes,
            first = FIRST_NODE_HOST + 1,
            kc = kubeconfig.display(),
            lines = try_lines.join("\n"),
            logs = self.data_dir.display(),
            dd = self.data_dir.display(),
        );
    }
}

fn step(message: &str) {
    eprintln!("switchyard: {message}");
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Whether the node is Ready by a heartbeat at or after `since`.
fn node_ready(node: &Node, since: jiff::Timestamp) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.last_heartbeat_time.as_ref().is_some_and(|t| t.0 >= since)
            })
        })
}

/// Apply every document of a multi-document YAML (server-side apply), recording it in the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation as `kubectl apply` does, so
/// a user's later `kubectl apply -f` of a changed file merges cleanly.
pub async fn apply(client: &kube::Client, yaml: &str) -> Result<()> {
    use serde::Deserialize as _;
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = serde_json::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let last_applied = format!("{}\n", serde_json::to_string(&value)?);
        if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            let annotations = metadata
                .entry("annotations")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    serde_json::Value::String(last_applied),
                );
            }
        }
        let object: DynamicObject =
            serde_json::from_value(value.clone()).context("not a Kubernetes object")?;
        let types = object
            .types
            .clone()
            .context("a document without apiVersion/kind")?;
        let gvk = kube::api::GroupVersionKind::try_from(&types)?;
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
        let name = object
            .metadata
            .name
            .clone()
            .context("a document without a name")?;
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            ),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("switchyard-up").force(),
            &Patch::Apply(value),
        )
        .await
        .with_context(|| format!("{} {name}", gvk.kind))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_name_safe() {
        assert!(valid_prefix("sy-"));
        assert!(valid_prefix("sy-t1a2-"));
        for bad in ["", "SY-", "sy_", "sy-/", "a-very-long-prefix-indeed-"] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn the_embedded_examples_parse_as_objects() {
        use serde::Deserialize as _;
        for (file, yaml) in EXAMPLES {
            for document in serde_yaml::Deserializer::from_str(yaml) {
                let value = serde_json::Value::deserialize(document).expect("YAML");
                let object: DynamicObject = serde_json::from_value(value).expect("an object");
                assert!(object.types.is_some(), "{file}");
                assert!(object.metadata.name.is_some(), "{file}");
            }
        }
    }
}
