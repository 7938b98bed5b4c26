//! The node's pod network and pod sandboxes (the role of a CRI runtime's sandbox plus the
//! `bridge` CNI plugin with `host-local` IPAM).
//!
//! Layout, all inside the node's network namespace (`--netns`, or the agent's own):
//! - bridge `sy-br0` holding the gateway address (the pod CIDR's first host); `ip_forward` and
//!   `bridge-nf-call-iptables` set in that namespace only; routes to other nodes' pod CIDRs
//!   (`cidr via node_ip`, [`PodNetwork::sync_routes`]); the nftables table `switchyard-node`
//!   masquerading pod traffic to destinations outside every pod CIDR (servers outside the
//!   cluster cannot route replies to pod IPs; pod-to-pod traffic keeps its source), as CNI
//!   plugins' `ipMasq` does;
//! - per pod: network namespace `sy-p-<10 hex of sha256(uid)>`, veth pair (host side
//!   `syv<8 hex>` on the bridge with hairpin on, pod side renamed `eth0`), the pod IP on eth0,
//!   default route via the gateway, lo up;
//! - per pod an **infra process** (`unshare --uts --mount` inside the pod's network namespace)
//!   that sets the pod's hostname in its own UTS namespace, bind-mounts the sandbox's
//!   `resolv.conf` and `hosts` over `/etc/resolv.conf` and `/etc/hosts` in its own (private)
//!   mount namespace, then sleeps. Containers and exec join its namespaces with
//!   `nsenter --target PID --net --uts --mount` ([`crate::runtime`]), so they share localhost,
//!   see the pod's hostname and files, and the host's root stays untouched. It plays the pause
//!   container's role.
//!
//! State in `state_dir`: `ipam.json` ([`crate::ipam`]), `routes.json`, and per sandbox
//! `sandboxes/<uid>.json` (written before the namespace is created, so a crash leaves nothing
//! that a restart cannot find) and `sandboxes/<uid>/` (resolv.conf, hosts, container output
//! FIFOs, records and the shims' exit files).
//!
//! Must never: touch interfaces, routes or sysctls outside the node's namespace and the pods'
//! namespaces; kill a process not found in a sandbox it created.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use switchyard_netns::NetNs;
use tokio::io::AsyncBufReadExt;

use crate::ipam::{Ipam, IpamError};
use crate::runtime::{Container, ContainerRecord, ContainerSpec, ExecOutput};

/// The bridge every pod's veth is attached to.
pub const BRIDGE: &str = "sy-br0";

/// The node's own nftables table (pod egress masquerade), apart from the proxy's.
pub const NODE_TABLE: &str = "switchyard-node";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// IP allocation failed (exhausted CIDR: retryable after pods go away).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// An `ip`/namespace operation failed (usually retryable: the next create repairs).
    #[error("{context}: {source}")]
    Net {
        context: String,
        #[source]
        source: switchyard_netns::Error,
    },
    /// The infra process (hostname, resolv.conf, hosts) could not be started.
    #[error("pod sandbox {netns}: cannot start the infra process: {message}")]
    Infra { netns: String, message: String },
    /// Reading or writing state files, or starting a process, failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox has no running infra process (it must be re-created with `create_sandbox`).
    #[error("pod sandbox of {pod_uid} is not running")]
    NotRunning { pod_uid: String },
}

fn net(context: impl Into<String>) -> impl FnOnce(switchyard_netns::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Net { context, source }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// What the agent asks for.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    /// Already resolved by the agent (spec.hostname or pod name).
    pub hostname: String,
    /// File contents, from dnsconfig.
    pub resolv_conf: String,
    /// File contents, from dnsconfig.
    pub hosts: String,
}

/// A pod's sandbox.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    /// Named `sy-p-<10 hex of a hash of the UID>`.
    pub netns: NetNs,
    pub ip: IpAddr,
    pub hostname: String,
    /// The infra process whose UTS and mount namespaces containers join.
    pub infra_pid: u32,
    /// `state_dir/sandboxes/<uid>`: resolv.conf, hosts, container FIFOs, records and exit files.
    pub dir: PathBuf,
}

/// What `sandboxes/<uid>.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxRecord {
    pod_uid: String,
    namespace: String,
    name: String,
    netns: String,
    host_veth: String,
    ip: IpAddr,
    hostname: String,
    /// 0 while being created.
    infra_pid: u32,
    infra_start_ticks: u64,
}

/// The network namespace name of a pod: `sy-p-` + 10 hex digits of sha256(uid) (15 chars, the
/// interface-name limit `unique_name` also keeps).
pub fn netns_name(pod_uid: &str) -> String {
    format!("sy-p-{}", &hex_hash(pod_uid)[..10])
}

/// The host side of a pod's veth: `syv` + 8 hex digits of sha256(uid) (11 chars ≤ 15).
pub fn host_veth_name(pod_uid: &str) -> String {
    format!("syv{}", &hex_hash(pod_uid)[..8])
}

fn hex_hash(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node's pod network. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct PodNetwork {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node_ns: NetNs,
    cidr: IpNet,
    gateway: IpAddr,
    state_dir: PathBuf,
    ipam: Mutex<Ipam>,
    records: Mutex<BTreeMap<String, SandboxRecord>>,
    /// Serialises create/destroy of one pod (its namespace and veth operations must not
    /// interleave); different pods proceed in parallel.
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    routes: tokio::sync::Mutex<Vec<(IpNet, IpAddr)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PodNetwork {
    /// Idempotent: a second call (agent restart) finds the bridge and the persisted IPAM state
    /// in `state_dir` and keeps every existing sandbox. Records whose namespace is gone are
    /// cleaned up (their IPs released).
    pub async fn setup(
        node_ns: NetNs,
        pod_cidr: IpNet,
        state_dir: &Path,
    ) -> Result<PodNetwork, SandboxError> {
        let pod_cidr = pod_cidr.trunc();
        let sandboxes_dir = state_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir)
            .map_err(io(format!("create {}", sandboxes_dir.display())))?;
        let ipam = Ipam::open(&state_dir.join("ipam.json"), pod_cidr)?;
        let gateway = Ipam::gateway_of(pod_cidr);
        let ns = &node_ns;
        if ns.ip(&["link", "show", BRIDGE]).await.is_err() {
            ns.ip(&["link", "add", BRIDGE, "type", "bridge"])
                .await
                .map_err(net("create the pod bridge"))?;
        }
        let gw = format!("{gateway}/{}", pod_cidr.prefix_len());
        ns.ip(&["addr", "replace", &gw, "dev", BRIDGE])
            .await
            .map_err(net("address the pod bridge"))?;
        ns.ip(&["link", "set", BRIDGE, "up"])
            .await
            .map_err(net("bring the pod bridge up"))?;
        let forward = match pod_cidr {
            IpNet::V4(_) => "net.ipv4.ip_forward=1",
            IpNet::V6(_) => "net.ipv6.conf.all.forwarding=1",
        };
        switchyard_netns::run_checked(ns.command("sysctl").args(["-qw", forward]))
            .await
            .map_err(net("enable forwarding in the node namespace"))?;
        // Needs br_netfilter; without it the proxy's rules still see routed traffic, only
        // bridged pod-to-pod-on-this-node traffic bypasses them, so a warning is enough.
        if let Err(e) = switchyard_netns::run_checked(
            ns.command("sysctl")
                .args(["-qw", "net.bridge.bridge-nf-call-iptables=1"]),
        )
        .await
        {
            tracing::warn!(error = %e, "bridge-nf-call-iptables not set (br_netfilter missing?)");
        }
        let routes: Vec<(IpNet, IpAddr)> =
            read_json::<Vec<(String, IpAddr)>>(&state_dir.join("routes.json"))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(cidr, via)| Some((cidr.parse().ok()?, via)))
                .collect();
        let network = PodNetwork {
            inner: Arc::new(Inner {
                node_ns,
                cidr: pod_cidr,
                gateway,
                state_dir: state_dir.to_path_buf(),
                ipam: Mutex::new(ipam),
                records: Mutex::new(BTreeMap::new()),
                ops: Mutex::new(HashMap::new()),
                routes: tokio::sync::Mutex::new(routes),
            }),
        };
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(&sandboxes_dir)
            .map_err(io(format!("read {}", sandboxes_dir.display())))?
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match read_json::<SandboxRecord>(&path) {
                Some(r) if NetNs::exists(&r.netns) => {
                    lock(&network.inner.records).insert(r.pod_uid.clone(), r);
                }
                Some(r) => stale.push(r.pod_uid),
                None => tracing::warn!(path = %path.display(), "unreadable sandbox record"),
            }
        }
        for uid in stale {
            tracing::info!(pod_uid = %uid, "sandbox namespace gone; cleaning up its record");
            network.destroy_sandbox(&uid).await?;
        }
        // An IP allocated just before a crash, with no sandbox record written yet.
        let orphans: Vec<String> = {
            let records = lock(&network.inner.records);
            lock(&network.inner.ipam)
                .allocations()
                .filter(|(uid, _)| !records.contains_key(*uid))
                .map(|(uid, _)| uid.to_string())
                .collect()
        };
        for uid in orphans {
            tracing::info!(pod_uid = %uid, "releasing an IP that has no sandbox");
            lock(&network.inner.ipam).release(&uid)?;
        }
        Ok(network)
    }

    pub fn pod_cidr(&self) -> IpNet {
        self.inner.cidr
    }

    pub fn gateway(&self) -> IpAddr {
        self.inner.gateway
    }

    pub fn node_ns(&self) -> &NetNs {
        &self.inner.node_ns
    }

    /// Routes in the node namespace to the other nodes' pod CIDRs (`cidr via node_ip`),
    /// replacing the previously synced set (adds new, removes stale).
    pub async fn sync_routes(&self, routes: &[(IpNet, IpAddr)]) -> Result<(), SandboxError> {
        let mut synced = self.inner.routes.lock().await;
        let ns = &self.inner.node_ns;
        for (cidr, via) in routes {
            let (c, v) = (cidr.trunc().to_string(), via.to_string());
            ns.ip(&["route", "replace", &c, "via", &v])
                .await
                .map_err(net(format!("route {c} via {v}")))?;
        }
        for (cidr, via) in synced.iter() {
            if !routes.iter().any(|(c, _)| c.trunc() == cidr.trunc()) {
                let (c, v) = (cidr.trunc().to_string(), via.to_string());
                if let Err(e) = ns.ip(&["route", "del", &c, "via", &v]).await {
                    tracing::debug!(route = %c, error = %e, "stale route already gone");
                }
            }
        }
        self.sync_egress_masquerade(routes).await;
        *synced = routes.to_vec();
        let persisted: Vec<(String, IpAddr)> =
            synced.iter().map(|(c, v)| (c.to_string(), *v)).collect();
        let bytes = serde_json::to_vec(&persisted).map_err(|e| SandboxError::Io {
            context: "encode routes".into(),
            source: std::io::Error::other(e),
        })?;
        crate::ipam::write_atomically(&self.inner.state_dir.join("routes.json"), &bytes)
            .map_err(io("persist routes"))
    }

    /// The `switchyard-node` table: masquerade what leaves this node's pod CIDR for an
    /// address outside every pod CIDR (this node's and `routes`'). Replaced atomically. Without
    /// `nft` pods still reach every pod and service, only not servers outside the cluster.
    async fn sync_egress_masquerade(&self, routes: &[(IpNet, IpAddr)]) {
        let own = self.inner.cidr.trunc();
        let (family, addr_type) = match own {
            IpNet::V4(_) => ("ip", "ipv4_addr"),
            IpNet::V6(_) => ("ip6", "ipv6_addr"),
        };
        let cidrs: Vec<String> = std::iter::once(own)
            .chain(routes.iter().map(|(c, _)| c.trunc()))
            .filter(|c| c.addr().is_ipv4() == own.addr().is_ipv4())
            .map(|c| c.to_string())
            .collect();
        let ruleset = format!(
            "add table {family} {NODE_TABLE}\ndelete table {family} {NODE_TABLE}\n\
             table {family} {NODE_TABLE} {{\n\
             \tset pod-cidrs {{ type {addr_type}; flags interval; elements = {{ {} }} }}\n\
             \tchain egress {{\n\
             \t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n\
             \t\t{family} saddr {own} {family} daddr != @pod-cidrs masquerade\n\
             \t}}\n}}\n",
            cidrs.join(", ")
        );
        if let Err(e) = self.inner.node_ns.nft(&["-f", "-"], Some(&ruleset)).await {
            tracing::warn!(error = %e, "cannot install the pod egress masquerade");
        }
    }

    fn op_lock(&self, pod_uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.ops)
            .entry(pod_uid.to_string())
            .or_default()
            .clone()
    }

    /// The sandbox of one pod, if it exists.
    pub fn sandbox(&self, pod_uid: &str) -> Option<Sandbox> {
        let record = lock(&self.inner.records).get(pod_uid).cloned()?;
        NetNs::exists(&record.netns)
            .then(|| self.sandbox_of(&record))
            .flatten()
    }

    fn record_path(&self, pod_uid: &str) -> PathBuf {
        self.inner
            .state_dir
            .join("sandboxes")
            .join(format!("{pod_uid}.json"))
    }

    fn sandbox_dir(&self, pod_uid: &str) -> PathBuf {
        self.inner.state_dir.join("sandboxes").join(pod_uid)
    }

    fn persist(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| SandboxError::Io {
            context: "encode sandbox record".into(),
            source: std::io::Error::other(e),
        })?;
        crate::ipam::write_atomically(&self.record_path(&record.pod_uid), &bytes)
            .map_err(io("persist sandbox record"))?;
        lock(&self.inner.records).insert(record.pod_uid.clone(), record.clone());
        Ok(())
    }

    fn sandbox_of(&self, r: &SandboxRecord) -> Option<Sandbox> {
        Some(Sandbox {
            pod_uid: r.pod_uid.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            netns: NetNs::open(&r.netns).ok()?,
            ip: r.ip,
            hostname: r.hostname.clone(),
            infra_pid: r.infra_pid,
            dir: self.sandbox_dir(&r.pod_uid),
        })
    }

    /// Create the pod's sandbox, or return the existing one for this pod UID (after an agent
    /// restart: same namespace, same IP). Writes resolv.conf/hosts (given as text) for it; what
    /// is missing of an existing one (veth, address, infra process) is repaired.
    pub async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        let op = self.op_lock(&spec.pod_uid);
        let _op = op.lock().await;
        let existing = lock(&self.inner.records).get(&spec.pod_uid).cloned();
        let fresh = existing.is_none();
        let result = self.create_locked(spec, existing).await;
        if let Err(e) = &result {
            tracing::warn!(pod_uid = %spec.pod_uid, error = %e, "sandbox creation failed");
            if fresh {
                // Leave nothing behind of a sandbox that never worked.
                if let Err(cleanup) = self.destroy_locked(&spec.pod_uid).await {
                    tracing::warn!(pod_uid = %spec.pod_uid, error = %cleanup, "cleanup failed");
                }
            }
        }
        result
    }

    async fn create_locked(
        &self,
        spec: &SandboxSpec,
        existing: Option<SandboxRecord>,
    ) -> Result<Sandbox, SandboxError> {
        let dir = self.sandbox_dir(&spec.pod_uid);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        // Written in place (never renamed): the infra process has them bind-mounted.
        for (file, text) in [("resolv.conf", &spec.resolv_conf), ("hosts", &spec.hosts)] {
            std::fs::write(dir.join(file), text).map_err(io(format!("write {file}")))?;
        }
        if let Some(r) = &existing {
            let infra_alive = r.infra_pid != 0
                && crate::runtime::proc_start_ticks(r.infra_pid) == Some(r.infra_start_ticks)
                && !crate::runtime::is_zombie(r.infra_pid);
            let wired = NetNs::exists(&r.netns)
                && self
                    .inner
                    .node_ns
                    .ip(&["link", "show", &r.host_veth])
                    .await
                    .is_ok();
            if infra_alive && wired {
                if let Some(sandbox) = self.sandbox_of(r) {
                    return Ok(sandbox);
                }
            }
        }
        let ip = lock(&self.inner.ipam).allocate(&spec.pod_uid)?;
        let mut record = SandboxRecord {
            pod_uid: spec.pod_uid.clone(),
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            netns: netns_name(&spec.pod_uid),
            host_veth: host_veth_name(&spec.pod_uid),
            ip,
            hostname: spec.hostname.clone(),
            infra_pid: existing.as_ref().map_or(0, |r| r.infra_pid),
            infra_start_ticks: existing.as_ref().map_or(0, |r| r.infra_start_ticks),
        };
        // The record first: whatever exists afterwards, a restart finds and can remove it.
        self.persist(&record)?;
        remove_stale_placeholder(&record.netns);
        let fresh = !NetNs::exists(&record.netns);
        if fresh {
            switchyard_netns::run_checked(tokio::process::Command::new("ip").args([
                "netns",
                "add",
                &record.netns,
            ]))
            .await
            .map_err(net(format!("create namespace {}", record.netns)))?;
        }
        let pod_ns =
            NetNs::open(&record.netns).map_err(net(format!("open namespace {}", record.netns)))?;
        self.wire(&record, &pod_ns, fresh).await?;
        let infra_alive = record.infra_pid != 0
            && crate::runtime::proc_start_ticks(record.infra_pid) == Some(record.infra_start_ticks);
        if !infra_alive {
            let pid = start_infra(&record.netns, &spec.hostname, &dir).await?;
            record.infra_pid = pid;
            record.infra_start_ticks = crate::runtime::proc_start_ticks(pid).unwrap_or(0);
            self.persist(&record)?;
        }
        tracing::info!(pod_uid = %record.pod_uid, netns = %record.netns, ip = %ip, "sandbox ready");
        self.sandbox_of(&record)
            .ok_or_else(|| SandboxError::NotRunning {
                pod_uid: record.pod_uid.clone(),
            })
    }

    /// The veth pair, the pod's address and default route, lo up: one `ip -batch` in each
    /// namespace (process spawns dominate pod start time). Idempotent: for a sandbox that
    /// existed before (`fresh` false) a half-wired pair is replaced.
    async fn wire(
        &self,
        r: &SandboxRecord,
        pod_ns: &NetNs,
        fresh: bool,
    ) -> Result<(), SandboxError> {
        let node = &self.inner.node_ns;
        let context = |what: &str| format!("pod sandbox {}: {what}", r.netns);
        let (host_ok, pod_ok) = if fresh {
            (false, false)
        } else {
            (
                node.ip(&["link", "show", &r.host_veth]).await.is_ok(),
                pod_ns.ip(&["link", "show", "eth0"]).await.is_ok(),
            )
        };
        let mut node_batch = String::new();
        if !(host_ok && pod_ok) {
            if host_ok {
                node_batch.push_str(&format!("link del {}\n", r.host_veth));
            }
            if pod_ok {
                let _ = pod_ns.ip(&["link", "del", "eth0"]).await;
            }
            node_batch.push_str(&format!(
                "link add {} type veth peer name eth0 netns {}\n",
                r.host_veth, r.netns
            ));
        }
        node_batch.push_str(&format!(
            "link set {veth} master {BRIDGE}\nlink set {veth} type bridge_slave hairpin on\nlink set {veth} up\n",
            veth = r.host_veth
        ));
        ip_batch(node, &node_batch)
            .await
            .map_err(net(context("host side of the veth")))?;
        let pod_batch = format!(
            "link set lo up\naddr replace {ip}/{prefix} dev eth0\nlink set eth0 up\nroute replace default via {gw} dev eth0\n",
            ip = r.ip,
            prefix = self.inner.cidr.prefix_len(),
            gw = self.inner.gateway,
        );
        ip_batch(pod_ns, &pod_batch)
            .await
            .map_err(net(context("pod side of the veth")))?;
        Ok(())
    }

    /// The pod network recorded in `state_dir`, if one was set up there (for the cleanup
    /// command, which does not know the pod CIDR).
    pub async fn open_existing(
        node_ns: NetNs,
        state_dir: &Path,
    ) -> Result<Option<PodNetwork>, SandboxError> {
        match crate::ipam::recorded_cidr(&state_dir.join("ipam.json")) {
            Some(cidr) => Ok(Some(PodNetwork::setup(node_ns, cidr, state_dir).await?)),
            None => Ok(None),
        }
    }

    /// Remove everything this pod network created (the node's cleanup command): every sandbox
    /// (processes killed, namespaces, veths, IPs), the routes it synced, the bridge, and its
    /// state files. Idempotent.
    pub async fn teardown(self) -> Result<(), SandboxError> {
        let uids: Vec<String> = lock(&self.inner.records).keys().cloned().collect();
        for uid in uids {
            self.destroy_sandbox(&uid).await?;
        }
        self.sync_routes(&[]).await?;
        for family in ["ip", "ip6"] {
            let _ = self
                .inner
                .node_ns
                .nft(&["delete", "table", family, NODE_TABLE], None)
                .await;
        }
        if self
            .inner
            .node_ns
            .ip(&["link", "show", BRIDGE])
            .await
            .is_ok()
        {
            self.inner
                .node_ns
                .ip(&["link", "del", BRIDGE])
                .await
                .map_err(net("delete the pod bridge"))?;
        }
        for file in ["ipam.json", "routes.json"] {
            match std::fs::remove_file(self.inner.state_dir.join(file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("remove {file}"))(e)),
            }
        }
        let _ = std::fs::remove_dir(self.inner.state_dir.join("sandboxes"));
        Ok(())
    }

    /// Sandboxes found on this node (persisted records whose namespace still exists), for
    /// re-adoption and garbage collection after a restart.
    pub fn sandboxes(&self) -> Vec<Sandbox> {
        let records: Vec<SandboxRecord> = lock(&self.inner.records).values().cloned().collect();
        records
            .iter()
            .filter(|r| NetNs::exists(&r.netns))
            .filter_map(|r| self.sandbox_of(r))
            .collect()
    }

    /// Kill whatever still runs in it, delete its namespace and veth, release its IP. Idempotent.
    pub async fn destroy_sandbox(&self, pod_uid: &str) -> Result<(), SandboxError> {
        let op = self.op_lock(pod_uid);
        let result = {
            let _op = op.lock().await;
            self.destroy_locked(pod_uid).await
        };
        // Forget the lock of a pod that is gone (unless someone else is waiting on it).
        let mut ops = lock(&self.inner.ops);
        if Arc::strong_count(&op) == 2 {
            ops.remove(pod_uid);
        }
        result
    }

    async fn destroy_locked(&self, pod_uid: &str) -> Result<(), SandboxError> {
        let record = lock(&self.inner.records).get(pod_uid).cloned();
        let netns = record
            .as_ref()
            .map_or_else(|| netns_name(pod_uid), |r| r.netns.clone());
        let host_veth = record
            .as_ref()
            .map_or_else(|| host_veth_name(pod_uid), |r| r.host_veth.clone());
        // Every process in the pod's network namespace is one this sandbox started (the infra
        // process, containers, execs and their children).
        let mut pids = pids_in_netns(&netns).await;
        if let Some(r) = &record {
            if r.infra_pid != 0
                && crate::runtime::proc_start_ticks(r.infra_pid) == Some(r.infra_start_ticks)
            {
                pids.push(r.infra_pid);
            }
        }
        kill_and_reap(&pids).await;
        if let Err(e) = self.inner.node_ns.ip(&["link", "del", &host_veth]).await {
            tracing::debug!(veth = %host_veth, error = %e, "host veth already gone");
        }
        remove_stale_placeholder(&netns);
        NetNs::delete(&netns)
            .await
            .map_err(net(format!("delete namespace {netns}")))?;
        lock(&self.inner.ipam).release(pod_uid)?;
        let dir = self.sandbox_dir(pod_uid);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("remove {}", dir.display()))(e)),
        }
        match std::fs::remove_file(self.record_path(pod_uid)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove sandbox record")(e)),
        }
        lock(&self.inner.records).remove(pod_uid);
        tracing::info!(pod_uid = %pod_uid, netns = %netns, "sandbox destroyed");
        Ok(())
    }
}

/// A `/run/netns/NAME` file with no namespace mounted on it (left by an `ip netns add` or
/// `delete` that was interrupted) makes every `ip -n NAME` fail; it is removed so the pod's
/// namespace can be created again. Only called for this pod's own (UID-derived) name.
fn remove_stale_placeholder(name: &str) {
    use std::os::unix::fs::MetadataExt;
    let path = NetNs::path_of(name);
    let (Ok(file), Ok(nsfs)) = (
        std::fs::metadata(&path),
        std::fs::metadata("/proc/self/ns/net"),
    ) else {
        return;
    };
    if file.dev() != nsfs.dev() {
        tracing::warn!(netns = %name, "removing a namespace file with no namespace mounted");
        let _ = std::fs::remove_file(&path);
    }
}

/// `ip [-n NAME] -batch -` with `commands`, one per line.
async fn ip_batch(ns: &NetNs, commands: &str) -> Result<String, switchyard_netns::Error> {
    let mut c = tokio::process::Command::new("ip");
    if let Some(name) = ns.name() {
        c.args(["-n", name]);
    }
    c.args(["-batch", "-"]);
    switchyard_netns::run_with_input(&mut c, commands).await
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// PIDs of processes in the named network namespace (`ip netns pids`).
async fn pids_in_netns(name: &str) -> Vec<u32> {
    if !NetNs::exists(name) {
        return Vec::new();
    }
    match switchyard_netns::run_checked(
        tokio::process::Command::new("ip").args(["netns", "pids", name]),
    )
    .await
    {
        Ok(out) => out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(e) => {
            tracing::warn!(netns = %name, error = %e, "cannot list the sandbox's processes");
            Vec::new()
        }
    }
}

/// SIGKILL each PID and wait (bounded) until they are gone.
async fn kill_and_reap(pids: &[u32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap_or(i32::MAX)),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pids
        .iter()
        .any(|p| crate::runtime::proc_start_ticks(*p).is_some() && !crate::runtime::is_zombie(*p))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start the infra process of a sandbox: inside the pod's network namespace, new UTS and
/// private mount namespaces, hostname set, resolv.conf and hosts bind-mounted; returns its PID
/// once all that is done.
async fn start_infra(netns: &str, hostname: &str, dir: &Path) -> Result<u32, SandboxError> {
    const SCRIPT: &str = r#"hostname "$1" && mount --bind "$2" /etc/resolv.conf && mount --bind "$3" /etc/hosts && echo ready && exec sleep infinity </dev/null >/dev/null 2>&1"#;
    let fail = |message: String| SandboxError::Infra {
        netns: netns.to_string(),
        message,
    };
    let mut child = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", NetNs::path_of(netns).display()))
        .args([
            "--",
            "unshare",
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SCRIPT,
            "sy-infra",
            hostname,
        ])
        .arg(dir.join("resolv.conf"))
        .arg(dir.join("hosts"))
        .env_clear()
        .env("PATH", crate::runtime::DEFAULT_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Not in the agent's process group: a ^C to the agent must not take pods down.
        .process_group(0)
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("no stdout".into()))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    match ready {
        Ok(Ok(Some(line))) if line == "ready" => {
            // Reaped by tokio's orphan reaper when it ends; it outlives the agent by design.
            drop(child);
            Ok(pid)
        }
        other => {
            let _ = child.start_kill();
            let output = child.wait_with_output().await;
            let stderr = output
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                .unwrap_or_default();
            Err(fail(format!("{other:?}: {stderr}")))
        }
    }
}

impl Sandbox {
    fn fifo_dir(&self, container: &str) -> PathBuf {
        self.dir.join("containers").join(container)
    }

    fn check_running(&self) -> Result<(), SandboxError> {
        if self.infra_pid == 0 || crate::runtime::proc_start_ticks(self.infra_pid).is_none() {
            return Err(SandboxError::NotRunning {
                pod_uid: self.pod_uid.clone(),
            });
        }
        Ok(())
    }

    /// Start one container process in the sandbox: its network namespace, its own UTS namespace
    /// (the pod's hostname) and a mount namespace where /etc/resolv.conf and /etc/hosts are the
    /// pod's. stdout/stderr go to the log files (logs.rs). Env is exactly `spec.env` plus PATH
    /// (if not given) and HOSTNAME, like a container runtime. The container's record is persisted
    /// for [`Sandbox::adopt_containers`].
    pub async fn start_container(&self, spec: &ContainerSpec) -> Result<Container, SandboxError> {
        self.check_running()?;
        let fifo_dir = self.fifo_dir(&spec.name);
        let container = crate::runtime::start(self.infra_pid, &self.hostname, &fifo_dir, spec)
            .await
            .map_err(io(format!(
                "start container {} in pod {}/{}",
                spec.name, self.namespace, self.name
            )))?;
        let record = container.record(&spec.name, &spec.log_path);
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| SandboxError::Io {
            context: "encode container record".into(),
            source: std::io::Error::other(e),
        })?;
        crate::ipam::write_atomically(&fifo_dir.join("record.json"), &bytes)
            .map_err(io("persist container record"))?;
        Ok(container)
    }

    /// The containers of this sandbox an earlier agent started (after an agent restart), by
    /// name, with their log files: those still running, and those that ended since, with the
    /// exit status their shim wrote. Their output is drained into their logs again.
    pub fn adopt_containers(&self) -> Vec<(ContainerRecord, Container)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("containers")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let record: ContainerRecord = read_json(&e.path().join("record.json"))?;
                let container = Container::adopt(&record, &e.path())?;
                Some((record, container))
            })
            .collect()
    }

    /// Run a command in the sandbox's namespaces, collect exit code and output (exec probes).
    /// Killed after `timeout`.
    pub async fn exec(
        &self,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        self.check_running()?;
        crate::runtime::exec(self.infra_pid, &self.hostname, argv, env, timeout)
            .await
            .map_err(io(format!(
                "exec {:?} in pod {}/{}",
                argv.first(),
                self.namespace,
                self.name
            )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_interface_name_limit_and_are_stable() {
        let ns = netns_name("6f1c0e4e-8a8e-4f4b-9d2e-1f0c7d3b2a11");
        assert_eq!(ns.len(), 15, "{ns}");
        assert!(ns.starts_with("sy-p-"));
        assert_eq!(ns, netns_name("6f1c0e4e-8a8e-4f4b-9d2e-1f0c7d3b2a11"));
        assert_ne!(ns, netns_name("another"));
        let veth = host_veth_name("6f1c0e4e-8a8e-4f4b-9d2e-1f0c7d3b2a11");
        assert_eq!(veth.len(), 11);
        assert!(veth.starts_with("syv"));
    }
}
