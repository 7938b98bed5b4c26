//! Data-plane benchmark (issue 5): what a new connection pays to go through a ClusterIP, for
//! our nftables ruleset, for kube-proxy's iptables layout (the baseline, generated here) and
//! for the userspace backend, at 100, 10,000 and 30,000 services × 2 endpoints, next to the
//! same connection made straight to the pod IP (the floor).
//!
//! Topology, fresh for every layout and service count so rules and conntrack never mix (all
//! namespaces `sy-…`, deleted by an [`NsGuard`] also on failure or panic):
//!
//! ```text
//!   client pod 10.244.1.20 ──veth── [node 10.244.1.1] ──veth── pod p0 10.244.1.10:8080
//!                                                      └─veth── pod p1 10.244.1.11:8080
//! ```
//!
//! The client is a pod of the node (a /32 behind its own veth, routed as in tests/dataplane.rs),
//! so its SYN to a ClusterIP takes the "pod → service" path: DNAT in the node's prerouting hook,
//! forwarded to a pod. The pod-IP row makes the same trip without a service; in the iptables
//! layout its first packet still walks all of `KUBE-SERVICES` (every new connection does), so
//! each layout gets its own floor, and `none` (no rules at all) is the absolute one. For the
//! userspace backend the ClusterIPs live on the node's loopback and the proxy relays.
//!
//! Every service is `ClusterIP:80` with the same two endpoints (the two pods). Measured are the
//! LAST service in iptables order (the worst case of the linear `KUBE-SERVICES` chain) and the
//! middle one. Per target: `DATAPLANE_CONNECTS` sequential TCP connects (p50/p99 of the
//! handshake), then HTTP requests (one per connection, `Connection: close`) for `DATAPLANE_SECONDS` with one client and again with
//! `DATAPLANE_CLIENTS` clients in parallel, then bulk throughput: 256 MiB on one connection
//! (median of 3), where the userspace backend's `splice(2)` relay shows. Connections end with RST from the client, so no
//! TIME_WAIT piles up on any side across the thousands of connections per target.
//!
//! ```text
//! cargo bench -p switchyard-proxy --bench dataplane --no-run   # then run the printed binary:
//! DATAPLANE_SERVICES=100,10000 DATAPLANE_LAYOUTS=nftables,iptables target/release/deps/dataplane-…
//! ```
//!
//! Knobs (environment): `DATAPLANE_SERVICES` (default `100,10000,30000`), `DATAPLANE_LAYOUTS`
//! (`none,nftables,iptables,userspace`), `DATAPLANE_CONNECTS` (2000), `DATAPLANE_SECONDS` (3),
//! `DATAPLANE_CLIENTS` (4). Needs root; installs Debian's `iptables` (iptables-nft) with apt if
//! it is missing. Progress goes to stderr, the markdown tables to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use switchyard_netns::{can_create_namespaces, run_checked, run_with_input, unique_name};
use switchyard_netns::{NetNs, NsGuard};
use switchyard_proxy::model::{
    Endpoint, Protocol, ServicePort, ServicePortInfo, ServicePortName, Snapshot,
};
use switchyard_proxy::nftables::{self, NodeConfig, Scheduler};
use switchyard_proxy::proxier::NftApplier;
use switchyard_proxy::userspace::{self, Balance, UserspaceProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NODE_NAME: &str = "bench-node";
/// The node's address on every pod veth (the pods' gateway).
const GATEWAY: &str = "10.244.1.1";
const POD_IPS: [&str; 2] = ["10.244.1.10", "10.244.1.11"];
const CLIENT_IP: &str = "10.244.1.20";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const POD_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const NAMESPACE: &str = "bench";
/// ClusterIPs are 10.96.0.10, 10.96.0.11, … (30,000 services end at 10.96.117.57).
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// kube-proxy drops the per-endpoint rule comments above this many endpoints
/// (`largeClusterEndpointsThreshold` in pkg/proxy/iptables/proxier.go).
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;
/// One connect or request that takes longer than this counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound of requests per throughput run, whatever the time budget.
const MAX_REQUESTS: usize = 50_000;
/// Connects before measuring (neighbour entries, caches, the proxy's first accept).
const WARMUP: usize = 50;
/// Spare descriptors the userspace run needs beyond one listener per service.
const FD_HEADROOM: usize = 2_000;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
/// A request for [`BULK_BYTES`] of body on one connection (the bulk-throughput row).
const BULK_REQUEST: &[u8] = b"GET /bulk HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const BULK_BYTES: usize = 256 << 20;
/// Bulk transfers per target; the median is reported.
const BULK_ROUNDS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layout {
    /// No rules at all: the pod-IP floor of the machine.
    None,
    Nftables,
    Iptables,
    Userspace,
}

impl Layout {
    fn parse(s: &str) -> Option<Layout> {
        match s {
            "none" => Some(Layout::None),
            "nftables" => Some(Layout::Nftables),
            "iptables" => Some(Layout::Iptables),
            "userspace" => Some(Layout::Userspace),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Layout::None => "none (no rules)",
            Layout::Nftables => "switchyard nftables",
            Layout::Iptables => "kube-proxy iptables layout",
            Layout::Userspace => "switchyard userspace",
        }
    }
}

/// What to run, from the environment.
struct Settings {
    services: Vec<usize>,
    layouts: Vec<Layout>,
    connects: usize,
    budget: Duration,
    clients: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let list = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
        let number = |name: &str, default: usize| -> anyhow::Result<usize> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(v) => v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{name}={v:?}: expected a positive number")),
            }
        };
        let services = list("DATAPLANE_SERVICES", "100,10000,30000")
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (2..=60_000).contains(n))
                    .with_context(|| {
                        format!("DATAPLANE_SERVICES: {s:?} is not a count from 2 to 60000")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut layouts = list("DATAPLANE_LAYOUTS", "none,nftables,iptables,userspace")
            .split(',')
            .map(|s| {
                Layout::parse(s.trim()).with_context(|| {
                    format!("DATAPLANE_LAYOUTS: unknown layout {s:?} (none, nftables, iptables, userspace)")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        layouts.sort();
        layouts.dedup();
        Ok(Settings {
            services,
            layouts,
            connects: number("DATAPLANE_CONNECTS", 2000)?,
            budget: Duration::from_secs(number("DATAPLANE_SECONDS", 3)? as u64),
            clients: number("DATAPLANE_CLIENTS", 4)?,
        })
    }
}

fn main() {
    // Bad knobs: one line and exit 64 before anything is created.
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dataplane: {e:#}");
            std::process::exit(64);
        }
    };
    if !can_create_namespaces() {
        eprintln!("dataplane: SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(settings)) {
        eprintln!("dataplane: {e:#}");
        std::process::exit(1);
    }
}

/// One measured target of one configuration.
struct Row {
    layout: Layout,
    services: usize,
    target: &'static str,
    connect: Latency,
    sequential: Throughput,
    parallel: Throughput,
    /// Bytes per second on one long connection.
    bulk: f64,
}

/// What loading a configuration's rules cost.
struct Load {
    layout: Layout,
    services: usize,
    objects: String,
    build: Duration,
    load: Duration,
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut notes = vec![machine_note().await];
    let mut iptables_ok = false;
    if settings.layouts.contains(&Layout::Iptables) {
        match ensure_iptables().await {
            Ok(version) => {
                iptables_ok = true;
                notes.push(format!(
                    "baseline loaded with `iptables-restore` from {version}: Debian's iptables is \
                 iptables-nft, so the rules are nftables rules with xt matches, still walked \
                 one by one (`KUBE-SERVICES` is a linear chain either way)"
                ));
            }
            Err(e) => notes.push(format!("iptables layout skipped: {e:#}")),
        }
    }
    let mut rows = Vec::new();
    let mut loads = Vec::new();
    for layout in &settings.layouts {
        let counts: Vec<usize> = if *layout == Layout::None {
            vec![0]
        } else {
            settings.services.clone()
        };
        for services in counts {
            if *layout == Layout::Iptables && !iptables_ok {
                continue;
            }
            if *layout == Layout::Userspace {
                let limit = open_files_limit();
                if services + FD_HEADROOM > limit {
                    notes.push(format!(
                        "userspace at {services} services skipped: one listener per service \
                         needs more than this process's open-files limit ({limit})"
                    ));
                    continue;
                }
            }
            eprintln!("== {} × {services} services", layout.label());
            match measure(*layout, services, &settings).await {
                Ok((load, mut measured)) => {
                    loads.extend(load);
                    rows.append(&mut measured);
                }
                Err(e) => notes.push(format!(
                    "{} × {services} services failed: {e:#}",
                    layout.label()
                )),
            }
        }
    }
    print!("{}", report(&settings, &rows, &loads, &notes));
    Ok(())
}

/// Builds one configuration, measures its targets and tears it down.
async fn measure(
    layout: Layout,
    services: usize,
    settings: &Settings,
) -> anyhow::Result<(Option<Load>, Vec<Row>)> {
    let topo = Topology::create().await?;
    let list = bench_services(services);
    // nftables and iptables rules live in the node namespace and go with it; the userspace
    // proxy must outlive the measurements.
    let mut proxy = None;
    let load = match layout {
        Layout::None => None,
        Layout::Nftables => Some(load_nftables(&topo.node, &list).await?),
        Layout::Iptables => Some(load_iptables(&topo.node, &list).await?),
        Layout::Userspace => {
            let (load, running) = load_userspace(&topo.node, &list).await?;
            proxy = Some(running);
            Some(load)
        }
    };
    if let Some(load) = &load {
        eprintln!(
            "   {}: built in {:.2?}, loaded in {:.2?}",
            load.objects, load.build, load.load
        );
    }
    let pod: SocketAddr = SocketAddr::new(ip(POD_IPS[0]), POD_PORT);
    let mut targets = vec![("pod IP (floor)", pod)];
    if let (Some(last), Some(middle)) = (list.last(), list.get(list.len() / 2)) {
        targets.push(("ClusterIP, last service", last.frontend()));
        targets.push(("ClusterIP, middle service", middle.frontend()));
    }
    let mut rows = Vec::new();
    for (target, addr) in targets {
        // Anything that does not answer now would only measure timeouts.
        topo.on_client(request(addr))
            .await
            .with_context(|| format!("{target} {addr} does not answer"))?;
        let connect = topo
            .on_client(connect_latencies(addr, settings.connects))
            .await?;
        let sequential = topo.on_client(throughput(addr, 1, settings.budget)).await?;
        let parallel = topo
            .on_client(throughput(addr, settings.clients, settings.budget))
            .await?;
        let bulk = topo.on_client(bulk(addr)).await?;
        eprintln!(
            "   {target}: connect p50 {:.0?} p99 {:.0?}, {:.0} req/s, {:.0} req/s ×{}, bulk {:.0} MB/s",
            connect.p50,
            connect.p99,
            sequential.per_second(),
            parallel.per_second(),
            settings.clients,
            bulk / 1e6
        );
        rows.push(Row {
            layout,
            services,
            target,
            connect,
            sequential,
            parallel,
            bulk,
        });
    }
    drop(proxy);
    Ok((load, rows))
}

/// One synthetic service: `bench/svc-NNNNN`, ClusterIP:80 → both pods.
struct BenchService {
    name: String,
    cluster_ip: Ipv4Addr,
}

impl BenchService {
    fn frontend(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.cluster_ip), SERVICE_PORT)
    }

    /// kube-proxy's `ServicePortName.String()` for an unnamed port.
    fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}", self.name)
    }
}

fn bench_services(n: usize) -> Vec<BenchService> {
    let first = u32::from(FIRST_CLUSTER_IP);
    (0..n)
        .map(|i| BenchService {
            name: format!("svc-{i:05}"),
            cluster_ip: Ipv4Addr::from(first + i as u32),
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a literal address")
}

fn node_config() -> NodeConfig {
    NodeConfig {
        node_name: NODE_NAME.into(),
        node_port_ips: Vec::new(),
        cluster_cidrs: vec![CLUSTER_CIDR.parse().expect("a literal CIDR")],
        masquerade_all: false,
        scheduler: Scheduler::Random,
    }
}

fn snapshot(list: &[BenchService]) -> Snapshot {
    list.iter()
        .map(|s| {
            (
                ServicePortName {
                    namespace: NAMESPACE.into(),
                    name: s.name.clone(),
                    port_name: String::new(),
                    protocol: Protocol::Tcp,
                },
                ServicePort {
                    info: ServicePortInfo::cluster_ip(
                        IpAddr::V4(s.cluster_ip),
                        SERVICE_PORT,
                        Protocol::Tcp,
                    ),
                    endpoints: POD_IPS
                        .iter()
                        .map(|p| Endpoint::ready(ip(p), POD_PORT, Some(NODE_NAME)))
                        .collect(),
                },
            )
        })
        .collect()
}

async fn load_nftables(node: &NetNs, list: &[BenchService]) -> anyhow::Result<Load> {
    let started = Instant::now();
    let ruleset = nftables::build(&snapshot(list), &node_config(), nftables::Family::V4);
    let transaction = nftables::full_transaction(&ruleset);
    let build = started.elapsed();
    let started = Instant::now();
    NftApplier::new(node.clone())
        .apply(&transaction)
        .await
        .context("nft -f")?;
    let load = started.elapsed();
    let (chains, elements) = ruleset.counts();
    let rules: usize = ruleset
        .services
        .values()
        .flat_map(|s| s.chains.values())
        .map(Vec::len)
        .sum();
    Ok(Load {
        layout: Layout::Nftables,
        services: list.len(),
        objects: format!("{chains} chains, {rules} rules, {elements} map elements"),
        build,
        load,
    })
}

async fn load_iptables(node: &NetNs, list: &[BenchService]) -> anyhow::Result<Load> {
    let started = Instant::now();
    let text = kube_proxy_iptables(list);
    let build = started.elapsed();
    let started = Instant::now();
    run_with_input(&mut node.command("iptables-restore"), &text)
        .await
        .context("iptables-restore")?;
    let load = started.elapsed();
    let chains = text
        .lines()
        .filter(|l| l.starts_with(':') && l.contains(" - "))
        .count();
    let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
    Ok(Load {
        layout: Layout::Iptables,
        services: list.len(),
        objects: format!("{chains} chains, {rules} rules"),
        build,
        load,
    })
}

async fn load_userspace(
    node: &NetNs,
    list: &[BenchService],
) -> anyhow::Result<(Load, UserspaceProxy)> {
    let started = Instant::now();
    let frontends = userspace::frontends(&snapshot(list), &node_config(), Balance::RoundRobin);
    let build = started.elapsed();
    let started = Instant::now();
    // The proxy adds each missing ClusterIP to the loopback with one `ip` command; one batch
    // does the same for all of them much faster (the proxy keeps addresses that are present).
    let mut batch = String::new();
    for s in list {
        let _ = writeln!(batch, "address add {}/32 dev lo", s.cluster_ip);
    }
    run_with_input(node.command("ip").args(["-batch", "-"]), &batch)
        .await
        .context("ip -batch (ClusterIPs on the node's loopback)")?;
    let mut proxy = UserspaceProxy::new(node.clone(), 2)?;
    if let Err(errors) = proxy.sync(&frontends).await {
        let first = errors.first().map(ToString::to_string).unwrap_or_default();
        bail!("{} frontends failed, first: {first}", errors.len());
    }
    let load = started.elapsed();
    let listening = proxy.metrics().listening;
    Ok((
        Load {
            layout: Layout::Userspace,
            services: list.len(),
            objects: format!("{listening} listeners"),
            build,
            load,
        },
        proxy,
    ))
}

/// `iptables-restore` input in kube-proxy's iptables layout for `list` (each service
/// `-m comment`ed as kube-proxy does, endpoint comments dropped above 1,000 endpoints):
///
/// - nat: `PREROUTING`/`OUTPUT` jump to `KUBE-SERVICES`, which has one rule per ClusterIP
///   jumping to `KUBE-SVC-<hash>` (then the `KUBE-NODEPORTS` rule, last, as kube-proxy keeps
///   it); `KUBE-SVC-…` marks off-cluster sources for masquerade and picks an endpoint with
///   `statistic --mode random --probability 1/(n-i)`; `KUBE-SEP-<hash>` marks hairpin traffic
///   and DNATs; `POSTROUTING` → `KUBE-POSTROUTING` masquerades marked packets;
/// - filter: the fixed `KUBE-FORWARD`, `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`,
///   `KUBE-NODEPORTS` and `KUBE-PROXY-FIREWALL` hooks (empty chains apart from `KUBE-FORWARD`
///   while every service has endpoints).
///
/// Chain names as kube-proxy's `servicePortChainName`/`servicePortEndpointChainName`.
fn kube_proxy_iptables(list: &[BenchService]) -> String {
    let comments = list.len() * POD_IPS.len() <= LARGE_CLUSTER_ENDPOINTS;
    let mut chains = String::new();
    let mut services = String::new();
    let mut rules = String::new();
    for s in list {
        let spn = s.port_name();
        let svc = kube_chain("KUBE-SVC-", &format!("{spn}tcp"));
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            services,
            "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {SERVICE_PORT} -j {svc}",
            s.cluster_ip
        );
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{spn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            s.cluster_ip
        );
        let n = POD_IPS.len();
        for (i, pod) in POD_IPS.iter().enumerate() {
            let endpoint = format!("{pod}:{POD_PORT}");
            let sep = kube_chain("KUBE-SEP-", &format!("{spn}tcp{endpoint}"));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let svc_comment = if comments {
                format!("-m comment --comment \"{spn} -> {endpoint}\" ")
            } else {
                String::new()
            };
            let sep_comment = if comments {
                format!("-m comment --comment {spn} ")
            } else {
                String::new()
            };
            if i + 1 < n {
                let probability = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} {svc_comment}-m statistic --mode random --probability {probability:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} {svc_comment}-j {sep}");
            }
            let _ = writeln!(rules, "-A {sep} {sep_comment}-s {pod}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} {sep_comment}-m tcp -p tcp -j DNAT --to-destination {endpoint}"
            );
        }
    }
    let mut out = String::with_capacity(list.len() * 700 + 4096);
    out.push_str(
        "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
",
    );
    out.push_str(&chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
",
    );
    out.push_str(&services);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// `prefix` + the first 16 characters of base32(sha256(`input`)): 16 characters are 80 bits,
/// the first 10 bytes of the digest.
fn kube_chain(prefix: &str, input: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let hash: String = (0..16)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect();
    format!("{prefix}{hash}")
}

/// Installs Debian's `iptables` if `iptables-restore` is missing; returns its version line.
async fn ensure_iptables() -> anyhow::Result<String> {
    let status = run_checked(tokio::process::Command::new("dpkg-query").args([
        "-W",
        "-f=${Status}",
        "iptables",
    ]))
    .await
    .unwrap_or_default();
    if status != "install ok installed" {
        eprintln!("iptables is not installed: apt-get install -y --no-install-recommends iptables");
        let output = tokio::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "iptables"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .kill_on_drop(true)
            .output()
            .await
            .context("running apt-get")?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if line.starts_with("Setting up") || line.starts_with("Unpacking") {
                eprintln!("   {line}");
            }
        }
        if !output.status.success() {
            bail!(
                "apt-get install iptables failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    } else {
        eprintln!("iptables is installed (dpkg-query); nothing to install");
    }
    let version = run_checked(tokio::process::Command::new("iptables").arg("--version"))
        .await
        .context("iptables --version")?;
    Ok(version.trim().to_string())
}

/// The soft limit of open files of this process (from /proc, no syscall needed).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(1024)
}

async fn machine_note() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nft = run_checked(tokio::process::Command::new("nft").arg("--version"))
        .await
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "kernel {}, {}, {cores} cores shared with other builds (client, pods and proxy on the \
         same cores: compare within a run, not across machines)",
        kernel.trim(),
        nft.trim()
    )
}

/// Namespaces of one configuration and the servers in them.
struct Topology {
    node: NetNs,
    client: Option<tokio::runtime::Runtime>,
    servers: Vec<JoinHandle<()>>,
    // Last: the namespaces are deleted after the servers and the client are stopped.
    _guard: NsGuard,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
        if let Some(rt) = self.client.take() {
            rt.shutdown_background();
        }
    }
}

impl Topology {
    async fn create() -> anyhow::Result<Topology> {
        let mut guard = NsGuard::new();
        let node = guard.create(&unique_name("bn")).await?;
        run_checked(
            node.command("sysctl")
                .args(["-qw", "net.ipv4.ip_forward=1"]),
        )
        .await
        .context("ip_forward in the node namespace")?;
        let mut servers = Vec::new();
        for (i, pod_ip) in POD_IPS.iter().enumerate() {
            let pod = guard.create(&unique_name("bp")).await?;
            attach_pod(&node, &pod, &format!("vp{i}"), pod_ip).await?;
            let listener = pod.bind_tcp(SocketAddr::new(ip(pod_ip), POD_PORT))?;
            servers.push(tokio::spawn(serve_http(listener)));
        }
        let client_ns = guard.create(&unique_name("bc")).await?;
        attach_pod(&node, &client_ns, "vcl", CLIENT_IP).await?;
        let client = client_ns.runtime("sy-bench-client", 2)?;
        Ok(Topology {
            node,
            client: Some(client),
            servers,
            _guard: guard,
        })
    }

    /// Runs `f` on the client pod's runtime (its sockets are the client namespace's).
    async fn on_client<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        let rt = self.client.as_ref().context("the client runtime is gone")?;
        rt.spawn(f).await.context("the client task panicked")?
    }
}

/// A pod namespace behind its own veth `host_if` on the node, routed as a /32 (as Calico does).
async fn attach_pod(node: &NetNs, pod: &NetNs, host_if: &str, pod_ip: &str) -> anyhow::Result<()> {
    let pod_name = pod.name().context("a named namespace")?;
    let pod_cidr = format!("{pod_ip}/32");
    let gateway_cidr = format!("{GATEWAY}/32");
    let node_side: [&[&str]; 4] = [
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pod_name,
        ],
        &["addr", "add", &gateway_cidr, "dev", host_if],
        &["link", "set", host_if, "up"],
        &["route", "add", &pod_cidr, "dev", host_if],
    ];
    for args in node_side {
        node.ip(args).await?;
    }
    let pod_side: [&[&str]; 4] = [
        &["addr", "add", &pod_cidr, "dev", "eth0"],
        &["link", "set", "eth0", "up"],
        &["route", "add", GATEWAY, "dev", "eth0"],
        &["route", "add", "default", "via", GATEWAY],
    ];
    for args in pod_side {
        pod.ip(args).await?;
    }
    Ok(())
}

/// A tiny HTTP responder: reads a request head, answers 200, waits for the client to close and
/// closes with RST. Nobody keeps a TIME_WAIT socket: a server TIME_WAIT would meet the same
/// client port again through another ClusterIP (the DNAT hides it from the client's kernel)
/// and stall that SYN for a retransmission.
async fn serve_http(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(128);
            let mut buf = [0u8; 512];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            if head.starts_with(b"GET /bulk ") {
                // The body, then close (FIN): the client reads to the end.
                let chunk = vec![0x5au8; 1 << 20];
                for _ in 0..BULK_BYTES / chunk.len() {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = stream.shutdown().await;
                return;
            }
            if stream.write_all(RESPONSE).await.is_err() {
                return;
            }
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = stream.set_zero_linger();
        });
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))
}

/// One HTTP request on a new connection; the client closes with RST once it has the answer
/// (see [`serve_http`]).
async fn request(addr: SocketAddr) -> anyhow::Result<()> {
    let exchange = async {
        let mut stream = connect(addr).await?;
        stream.write_all(REQUEST).await?;
        let mut answer = vec![0u8; RESPONSE.len()];
        stream.read_exact(&mut answer).await?;
        anyhow::ensure!(
            answer == RESPONSE,
            "unexpected answer {:?}",
            String::from_utf8_lossy(&answer)
        );
        stream.set_zero_linger()?;
        Ok(())
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .with_context(|| format!("request to {addr} timed out"))?
}

/// One long connection carrying [`BULK_BYTES`] from the server: bytes per second, the median
/// of [`BULK_ROUNDS`] transfers.
async fn bulk(addr: SocketAddr) -> anyhow::Result<f64> {
    let mut rates = Vec::with_capacity(BULK_ROUNDS);
    for _ in 0..BULK_ROUNDS {
        let mut stream = connect(addr).await?;
        let started = Instant::now();
        stream.write_all(BULK_REQUEST).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut received = 0usize;
        loop {
            let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf))
                .await
                .with_context(|| format!("bulk transfer from {addr} stalled"))??;
            if n == 0 {
                break;
            }
            received += n;
        }
        anyhow::ensure!(
            received == BULK_BYTES,
            "bulk transfer from {addr}: {received} of {BULK_BYTES} bytes"
        );
        rates.push(received as f64 / started.elapsed().as_secs_f64().max(1e-9));
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// Handshake times of `n` sequential connects (after a warm-up), closed with RST.
#[derive(Clone, Copy, Debug)]
struct Latency {
    p50: Duration,
    p99: Duration,
    failed: usize,
}

async fn connect_latencies(addr: SocketAddr, n: usize) -> anyhow::Result<Latency> {
    for _ in 0..WARMUP {
        connect(addr).await?.set_zero_linger()?;
    }
    let mut times = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let started = Instant::now();
        match connect(addr).await {
            Ok(stream) => {
                times.push(started.elapsed());
                // RST instead of FIN: no TIME_WAIT, so thousands of connects never run out of ports.
                stream.set_zero_linger()?;
            }
            Err(_) => failed += 1,
        }
    }
    anyhow::ensure!(!times.is_empty(), "all {n} connects to {addr} failed");
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        p50: at(0.50),
        p99: at(0.99),
        failed,
    })
}

#[derive(Clone, Copy, Debug)]
struct Throughput {
    done: usize,
    failed: usize,
    elapsed: Duration,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Requests from `clients` concurrent loops until `budget` is spent (or [`MAX_REQUESTS`]).
async fn throughput(
    addr: SocketAddr,
    clients: usize,
    budget: Duration,
) -> anyhow::Result<Throughput> {
    let started = Instant::now();
    let deadline = started + budget;
    let per_client = MAX_REQUESTS / clients;
    let loops: Vec<JoinHandle<(usize, usize)>> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let (mut done, mut failed) = (0, 0);
                while Instant::now() < deadline && done + failed < per_client {
                    match request(addr).await {
                        Ok(()) => done += 1,
                        Err(_) => failed += 1,
                    }
                }
                (done, failed)
            })
        })
        .collect();
    let mut total = Throughput {
        done: 0,
        failed: 0,
        elapsed: Duration::ZERO,
    };
    for l in loops {
        let (done, failed) = l.await.context("a client loop panicked")?;
        total.done += done;
        total.failed += failed;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// The markdown report: the per-packet table, the load table and the notes.
fn report(settings: &Settings, rows: &[Row], loads: &[Load], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nClient: a pod on the node ({CLIENT_IP}); {} sequential connects per row; requests for {:?} with 1 and {} clients.\n",
        settings.connects, settings.budget, settings.clients
    );
    let _ = writeln!(
        out,
        "| layout | services | target | connect p50 | connect p99 | req/s, 1 client | req/s, {} clients | bulk MB/s | p50 / floor | req/s / floor | bulk / floor | failed |",
        settings.clients
    );
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let floors: BTreeMap<(Layout, usize), &Row> = rows
        .iter()
        .filter(|r| r.target.starts_with("pod IP"))
        .map(|r| ((r.layout, r.services), r))
        .collect();
    for r in rows {
        let (p50_ratio, rps_ratio, bulk_ratio) = match floors.get(&(r.layout, r.services)) {
            Some(f) => (
                format!(
                    "{:.2}",
                    r.connect.p50.as_secs_f64() / f.connect.p50.as_secs_f64().max(1e-9)
                ),
                format!(
                    "{:.2}",
                    r.sequential.per_second() / f.sequential.per_second().max(1e-9)
                ),
                format!("{:.2}", r.bulk / f.bulk.max(1e-9)),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let services = if r.layout == Layout::None {
            "–".to_string()
        } else {
            thousands(r.services)
        };
        let _ = writeln!(
            out,
            "| {} | {services} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {p50_ratio} | {rps_ratio} | {bulk_ratio} | {} |",
            r.layout.label(),
            r.target,
            micros(r.connect.p50),
            micros(r.connect.p99),
            r.sequential.per_second(),
            r.parallel.per_second(),
            r.bulk / 1e6,
            r.connect.failed + r.sequential.failed + r.parallel.failed,
        );
    }
    if !loads.is_empty() {
        out.push_str("\n| layout | services | loaded objects | build | load |\n");
        out.push_str("|---|---:|---|---:|---:|\n");
        for l in loads {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2?} | {:.2?} |",
                l.layout.label(),
                thousands(l.services),
                l.objects,
                l.build,
                l.load
            );
        }
    }
    out.push('\n');
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

fn thousands(n: usize) -> String {
    let mut groups = Vec::new();
    let mut rest = n;
    loop {
        groups.push(rest % 1000);
        rest /= 1000;
        if rest == 0 {
            break;
        }
    }
    let mut out = String::new();
    for (i, group) in groups.iter().rev().enumerate() {
        if i == 0 {
            let _ = write!(out, "{group}");
        } else {
            let _ = write!(out, ",{group:03}");
        }
    }
    out
}
