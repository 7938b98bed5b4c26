//! The pure nftables rule builder: a [`Snapshot`] (plus this node's facts) → the desired
//! contents of our table, and the text of the `nft -f` transactions that get the kernel there:
//! a full one that replaces the whole table atomically, and a partial one that touches only the
//! services that changed. No IO here; [`crate::proxier`] applies the text.
//!
//! The layout follows kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go):
//!
//! - one table per IP family, `ip switchyard` and `ip6 switchyard`, so nothing of anyone
//!   else's is ever touched (kube-proxy runs one proxier per family, each with its own table);
//! - base chains at kube-proxy's hooks and priorities: `nat-prerouting`/`nat-output` jump to
//!   `services`, `nat-postrouting` to `masquerading`; `filter-*` chains at priority -110
//!   (before DNAT) REJECT new connections to services without endpoints and apply
//!   `loadBalancerSourceRanges`;
//! - O(1) dispatch through verdict maps: `service-ips` (`ipv4_addr . inet_proto . inet_service`,
//!   `ipv6_addr . …` in the `ip6` table) for ClusterIPs, externalIPs and LoadBalancer ingress
//!   IPs, `service-nodeports` (`inet_proto . inet_service`) for NodePorts on the addresses in the
//!   `nodeport-ips` set (never 127.0.0.1 nor ::1: CVE-2020-8558),
//!   `no-endpoint-services`/`no-endpoint-nodeports` for REJECT/DROP, `firewall-ips` for source
//!   ranges;
//! - endpoint choice by a cascade of `numgen random mod k == 0 goto endpoint-…` rules (no
//!   per-service anonymous maps: the kernel makes those O(n²) to load; see PERFORMANCE.md);
//! - per service port: `service-…` (all usable endpoints), `local-…` (this node's endpoints, for
//!   `Local` traffic policies), `external-…` (masquerade and policy for external traffic),
//!   `firewall-…` (source ranges), and per endpoint `endpoint-…` (hairpin masquerade, affinity
//!   update, DNAT) with an `affinity-…` set when `sessionAffinity: ClientIP`.
//!
//! Masquerading is by mark, as in kube-proxy: `mark-for-masquerade` ORs 0x4000 into the packet
//! mark; `masquerading` (postrouting) masquerades marked packets and clears the bit.
//!
//! Dual-stack Services (KEP-563) are built once per [`Family`]: the same layout, with `ip6`
//! matches, `ipv6_addr` keys, `dnat to [fd00::a]:8080`, `jhash ip6 saddr` and ICMPv6 rejects in
//! the `ip6` table. Families never mix: a family's table holds only that family's ClusterIPs,
//! external and LoadBalancer IPs, NodePort addresses, endpoints, source ranges and cluster CIDR,
//! so an IPv4 ClusterIP never gets an IPv6 endpoint (DNAT cannot change a packet's family).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::model::{Endpoint, ServiceKey, ServicePort, ServicePortName, Snapshot};

/// Our tables' name (one in family `ip`, one in `ip6`).
pub const TABLE: &str = "switchyard";
/// The masquerade mark bit (kube-proxy's `--masquerade-bit` 14 → 0x4000).
pub const MASQUERADE_MARK: u32 = 0x4000;

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";

/// An IP family: each has its own table, built from the same snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// The `ip switchyard` table.
    #[default]
    V4,
    /// The `ip6 switchyard` table.
    V6,
}

impl Family {
    /// Both families, IPv4 first (the order tables are synced in).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The nftables family of the table, which is also the keyword of address matches
    /// (`ip saddr`, `ip6 daddr`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of `net`.
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The nft type of one address.
    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// The ICMP message refusing a non-TCP connection.
    fn port_unreachable(self) -> &'static str {
        match self {
            Family::V4 => "icmp type port-unreachable",
            Family::V6 => "icmpv6 type port-unreachable",
        }
    }

    /// The addresses of `ips` in this family.
    fn pick(self, ips: &[IpAddr]) -> impl Iterator<Item = &IpAddr> {
        ips.iter().filter(move |ip| Family::of(ip) == self)
    }
}

/// How a service chain picks among its endpoints (the seeds' IPVS schedulers, in nftables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheduler {
    /// `numgen random`: kube-proxy's behaviour.
    #[default]
    Random,
    /// `numgen inc`: round robin per service chain.
    RoundRobin,
    /// `jhash ip saddr` (`ip6 saddr`): one client source always lands on the same endpoint
    /// (while the endpoint set is unchanged).
    SourceHash,
}

impl std::str::FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" | "" => Ok(Scheduler::Random),
            "rr" => Ok(Scheduler::RoundRobin),
            "sh" => Ok(Scheduler::SourceHash),
            other => Err(format!("unknown scheduler {other:?}: use random, rr or sh")),
        }
    }
}

/// This node's facts the rules depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_name: String,
    /// Addresses NodePorts answer on, of both families. Loopback addresses are never used.
    pub node_port_ips: Vec<IpAddr>,
    /// The pod network, at most one CIDR per family (kube-proxy's `clusterCIDR`, dual-stack
    /// `"10.244.0.0/16,fd00:10:244::/56"`): traffic to ClusterIPs from outside it is
    /// masqueraded. A family without one masquerades no such traffic, as kube-proxy's.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic to services (kube-proxy's `--masquerade-all`).
    pub masquerade_all: bool,
    pub scheduler: Scheduler,
}

impl NodeConfig {
    /// The cluster CIDR of `family` (the first one given).
    pub fn cluster_cidr(&self, family: Family) -> Option<IpNet> {
        self.cluster_cidrs
            .iter()
            .copied()
            .find(|c| Family::of_net(c) == family)
    }
}

/// The rules of one Service (all its ports): chains, affinity sets and map elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chain name → its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → its declaration body (affinity sets).
    pub sets: BTreeMap<String, String>,
    /// (map, key) → verdict.
    pub elements: BTreeMap<(&'static str, String), String>,
    /// UDP flows these rules DNAT: when one disappears, its conntrack entries must go, or
    /// clients keep sending to the old endpoint (UDP has no connection to break).
    pub udp_flows: BTreeSet<UdpFlow>,
}

/// Where UDP traffic to a service arrives, and the endpoint it is sent to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UdpFlow {
    /// A service address and port (ClusterIP, external or LB IP), or `None` with a NodePort.
    pub address: Option<IpAddr>,
    pub port: u16,
    pub endpoint: IpAddr,
}

impl UdpFlow {
    /// `conntrack` arguments deleting this flow's entries (the tool takes the family from the
    /// addresses).
    pub fn conntrack_delete_args(&self) -> Vec<String> {
        let mut args = vec!["-D".to_string(), "-p".into(), "udp".into()];
        if let Some(address) = self.address {
            args.extend(["--orig-dst".into(), address.to_string()]);
        }
        args.extend([
            "--orig-port-dst".into(),
            self.port.to_string(),
            "--reply-src".into(),
            self.endpoint.to_string(),
        ]);
        args
    }
}

/// Everything one family's table should contain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Which table.
    pub family: Family,
    /// The base chains, sets and maps (without elements): depends only on [`NodeConfig`] and
    /// the family.
    pub base: String,
    pub services: BTreeMap<ServiceKey, ServiceRules>,
}

impl Ruleset {
    /// Number of chains, sets and map elements (for metrics).
    pub fn counts(&self) -> (usize, usize) {
        let chains = self.services.values().map(|s| s.chains.len()).sum();
        let elements = self.services.values().map(|s| s.elements.len()).sum();
        (chains, elements)
    }
}

/// A stable, short hash of `s`: 8 characters of base32 (RFC 4648 alphabet) of its SHA-256, as
/// kube-proxy names its chains.
fn hash8(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    // 40 bits = 8 base32 characters.
    let mut bits: u64 = 0;
    for b in &digest[..5] {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..8)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// `ns/name/proto/port` where port is the port's name, or its number for an unnamed port (port
/// names must contain a letter, so the two cannot collide).
fn port_suffix(spn: &ServicePortName, port: u16) -> String {
    let port_part = if spn.port_name.is_empty() {
        port.to_string()
    } else {
        spn.port_name.clone()
    };
    format!(
        "{}/{}/{}/{}",
        spn.namespace,
        spn.name,
        spn.protocol.nft(),
        port_part
    )
}

/// `<prefix>-<hash>-ns/name/proto/port`. Length: namespace and name ≤ 63, protocol ≤ 4, port
/// name ≤ 15, so ≤ 9 + 8 + 1 + 63 + 1 + 63 + 1 + 4 + 1 + 15 = 166 characters, well under nft's
/// 256-character limit for chain and set names.
pub fn service_chain_name(prefix: &str, spn: &ServicePortName, port: u16) -> String {
    let suffix = port_suffix(spn, port);
    format!("{prefix}-{}-{suffix}", hash8(&suffix))
}

/// `<prefix>-<hash>-ns/name/proto/port__ip/port`, with the colons of an IPv6 address written as
/// dots (nft names cannot hold a colon): ≤ 166 + 2 + 39 + 1 + 5 = 213 characters.
pub fn endpoint_chain_name(
    prefix: &str,
    spn: &ServicePortName,
    port: u16,
    ep: &Endpoint,
) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    let suffix = format!("{}__{ip}/{}", port_suffix(spn, port), ep.port);
    format!("{prefix}-{}-{suffix}", hash8(&suffix))
}

/// The base of `family`'s table: sets, maps (without elements) and the fixed chains.
pub fn base(node: &NodeConfig, family: Family) -> String {
    let mut out = String::new();
    let nodeport_ips: Vec<String> = family
        .pick(&node.node_port_ips)
        .filter(|ip| !ip.is_loopback())
        .map(ToString::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let _ = writeln!(out, "\tset {NODEPORT_IPS} {{");
    let _ = writeln!(out, "\t\ttype {}", family.addr_type());
    if !nodeport_ips.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", nodeport_ips.join(", "));
    }
    out.push_str("\t}\n");
    let masq = MASQUERADE_MARK;
    let (ip, unreachable) = (family.nft(), family.port_unreachable());
    let fixed = format!(
        "\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}}
\tchain nat-output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}}
\tchain nat-postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump masquerading
\t}}
\tchain filter-prerouting {{
\t\ttype filter hook prerouting priority -110; policy accept;
\t\tct state new jump firewall-check
\t}}
\tchain filter-input {{
\t\ttype filter hook input priority -110; policy accept;
\t\tct state new jump nodeport-endpoints-check
\t\tct state new jump service-endpoints-check
\t}}
\tchain filter-forward {{
\t\ttype filter hook forward priority -110; policy accept;
\t\tct state new jump service-endpoints-check
\t}}
\tchain filter-output {{
\t\ttype filter hook output priority -110; policy accept;
\t\tct state new jump nodeport-endpoints-check
\t\tct state new jump service-endpoints-check
\t\tct state new jump firewall-check
\t}}
\tchain services {{
\t\t{ip} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}
\t\t{ip} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}
\t}}
\tchain masquerading {{
\t\tmeta mark & {masq:#x} == 0 return
\t\tmeta mark set meta mark ^ {masq:#x}
\t\tmasquerade fully-random
\t}}
\tchain mark-for-masquerade {{
\t\tmeta mark set meta mark | {masq:#x}
\t}}
\tchain service-endpoints-check {{
\t\t{ip} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}
\t}}
\tchain nodeport-endpoints-check {{
\t\t{ip} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}
\t}}
\tchain firewall-check {{
\t\t{ip} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}
\t}}
\tchain reject-chain {{
\t\tmeta l4proto tcp reject with tcp reset
\t\treject with {unreachable}
\t}}
"
    );
    out.push_str(&fixed);
    out
}

/// Our verdict maps, and whether their key starts with an address of the table's family.
const MAPS: [(&str, bool); 5] = [
    (SERVICE_IPS, true),
    (SERVICE_NODEPORTS, false),
    (NO_ENDPOINT_SERVICES, true),
    (NO_ENDPOINT_NODEPORTS, false),
    (FIREWALL_IPS, true),
];

/// A map's type line in `family`'s table.
fn map_type(family: Family, keyed_by_address: bool) -> String {
    if keyed_by_address {
        format!(
            "{} . inet_proto . inet_service : verdict",
            family.addr_type()
        )
    } else {
        "inet_proto . inet_service : verdict".to_string()
    }
}

/// The desired ruleset of `family`'s table for a whole snapshot.
pub fn build(snapshot: &Snapshot, node: &NodeConfig, family: Family) -> Ruleset {
    let mut services: BTreeMap<ServiceKey, ServiceRules> = BTreeMap::new();
    for (spn, port) in snapshot {
        let rules = services.entry(spn.service()).or_default();
        add_service_port(rules, spn, port, node, family);
    }
    services.retain(|_, r| *r != ServiceRules::default());
    Ruleset {
        family,
        base: base(node, family),
        services,
    }
}

/// The rules of one service in `family`'s table from its ports (all with
/// `spn.service() == key`); `None` when the service needs no rules there.
pub fn build_service<'a>(
    ports: impl IntoIterator<Item = (&'a ServicePortName, &'a ServicePort)>,
    node: &NodeConfig,
    family: Family,
) -> Option<ServiceRules> {
    let mut rules = ServiceRules::default();
    for (spn, port) in ports {
        add_service_port(&mut rules, spn, port, node, family);
    }
    (rules != ServiceRules::default()).then_some(rules)
}

/// Rules choosing one of `eps` (each has an `endpoint-…` chain): affinity lookups first, then
/// the scheduler's pick.
fn load_balance(
    rules: &mut Vec<String>,
    spn: &ServicePortName,
    port: u16,
    eps: &[&Endpoint],
    affinity: bool,
    scheduler: Scheduler,
    family: Family,
) {
    let ip = family.nft();
    if affinity {
        for ep in eps {
            rules.push(format!(
                "{ip} saddr @{} goto {}",
                endpoint_chain_name("affinity", spn, port, ep),
                endpoint_chain_name("endpoint", spn, port, ep)
            ));
        }
    }
    if let [ep] = eps {
        rules.push(format!(
            "goto {}",
            endpoint_chain_name("endpoint", spn, port, ep)
        ));
        return;
    }
    let n = eps.len();
    if scheduler == Scheduler::RoundRobin {
        // One counter for the whole choice needs a map; it is an anonymous set per service,
        // which the kernel names by scanning every set of the table (O(n²) for n services,
        // see PERFORMANCE.md), so only round robin pays for it.
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                format!(
                    "{i} : goto {}",
                    endpoint_chain_name("endpoint", spn, port, ep)
                )
            })
            .collect();
        rules.push(format!("numgen inc mod {n} vmap {{ {} }}", arms.join(", ")));
        return;
    }
    // A cascade, as kube-proxy's iptables mode does with `statistic`: endpoint i is taken with
    // probability 1/(n-i) among those left, so each is chosen with probability 1/n. No sets, so
    // the table loads in linear time; only a connection's first packet walks the cascade.
    for (i, ep) in eps[..n - 1].iter().enumerate() {
        let draw = match scheduler {
            Scheduler::SourceHash => {
                format!("jhash {ip} saddr mod {} seed {:#x}", n - i, 0x5357 + i)
            }
            _ => format!("numgen random mod {}", n - i),
        };
        rules.push(format!(
            "{draw} == 0 goto {}",
            endpoint_chain_name("endpoint", spn, port, ep)
        ));
    }
    rules.push(format!(
        "goto {}",
        endpoint_chain_name("endpoint", spn, port, eps[n - 1])
    ));
}

fn add_service_port(
    rules: &mut ServiceRules,
    spn: &ServicePortName,
    sp: &ServicePort,
    node: &NodeConfig,
    family: Family,
) {
    let info = &sp.info;
    let ip = family.nft();
    let cluster_ips: Vec<&IpAddr> = family.pick(&info.cluster_ips).collect();
    let external_ips: Vec<&IpAddr> = family
        .pick(&info.external_ips)
        .chain(family.pick(&info.load_balancer_ips))
        .collect();
    // A service is in a family's table only with a ClusterIP of that family, as kube-proxy's
    // per-family proxiers take it (`GetClusterIPByFamily`): a single-stack IPv4 Service's
    // IPv6 external IPs, say, are not served, and its NodePort is not opened on IPv6.
    if cluster_ips.is_empty() {
        return;
    }
    let port = info.port;
    let proto = info.protocol.nft();
    let usable = sp.usable_endpoints(&node.node_name);
    let of_family = |e: &&Endpoint| Family::of(&e.ip) == family;
    let all: Vec<&Endpoint> = usable.all.iter().filter(of_family).collect();
    let local: Vec<&Endpoint> = usable.local.iter().filter(of_family).collect();
    let affinity = info.session_affinity_seconds;
    let service_chain = service_chain_name("service", spn, port);
    let local_chain = service_chain_name("local", spn, port);
    let external_chain = service_chain_name("external", spn, port);
    let needs_local =
        info.internal_policy_local || (info.external_policy_local && info.is_external());

    // Traffic to a ClusterIP from outside the pod network (the node itself, other hosts) is
    // masqueraded so replies come back through this node.
    let cluster_cidr = node.cluster_cidr(family);
    let masquerade_rules: Vec<String> = cluster_ips
        .iter()
        .filter_map(|addr| {
            if node.masquerade_all {
                Some(format!("{ip} daddr {addr} {proto} dport {port} jump mark-for-masquerade"))
            } else {
                cluster_cidr.map(|cidr| {
                    format!(
                        "{ip} daddr {addr} {proto} dport {port} {ip} saddr != {cidr} jump mark-for-masquerade"
                    )
                })
            }
        })
        .collect();

    // Endpoint chains: every endpoint either policy may choose.
    let mut chosen: BTreeMap<(IpAddr, u16), &Endpoint> = BTreeMap::new();
    for ep in all
        .iter()
        .chain(if needs_local { local.iter() } else { [].iter() })
    {
        chosen.insert((ep.ip, ep.port), ep);
    }
    if info.protocol == crate::model::Protocol::Udp {
        for ep in chosen.values() {
            for front in cluster_ips.iter().chain(&external_ips) {
                rules.udp_flows.insert(UdpFlow {
                    address: Some(**front),
                    port,
                    endpoint: ep.ip,
                });
            }
            if let Some(node_port) = info.node_port {
                rules.udp_flows.insert(UdpFlow {
                    address: None,
                    port: node_port,
                    endpoint: ep.ip,
                });
            }
        }
    }
    for ep in chosen.values() {
        let name = endpoint_chain_name("endpoint", spn, port, ep);
        let mut chain = vec![format!("{ip} saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(timeout) = affinity {
            let set = endpoint_chain_name("affinity", spn, port, ep);
            chain.push(format!("update @{set} {{ {ip} saddr }}"));
            rules.sets.insert(
                set,
                format!(
                    "type {}; flags dynamic,timeout; timeout {timeout}s;",
                    family.addr_type()
                ),
            );
        }
        // `ip:port`, or `[ip]:port` for IPv6, as nft's `dnat to` takes them.
        chain.push(format!(
            "meta l4proto {proto} dnat to {}",
            SocketAddr::new(ep.ip, ep.port)
        ));
        rules.chains.insert(name, chain);
    }
    if !all.is_empty() {
        let mut chain = masquerade_rules.clone();
        load_balance(
            &mut chain,
            spn,
            port,
            &all,
            affinity.is_some(),
            node.scheduler,
            family,
        );
        rules.chains.insert(service_chain.clone(), chain);
    }
    if needs_local && !local.is_empty() {
        let mut chain = if info.internal_policy_local {
            masquerade_rules.clone()
        } else {
            Vec::new()
        };
        load_balance(
            &mut chain,
            spn,
            port,
            &local,
            affinity.is_some(),
            node.scheduler,
            family,
        );
        rules.chains.insert(local_chain.clone(), chain);
    }

    // ClusterIPs: internalTrafficPolicy picks the chain. With no endpoint at all the service
    // REJECTs (connection refused); with endpoints only elsewhere under a Local policy it drops,
    // as kube-proxy does.
    let reject_or_drop = if all.is_empty() {
        "goto reject-chain".to_string()
    } else {
        "drop".to_string()
    };
    let cluster_target = if info.internal_policy_local {
        (!local.is_empty()).then(|| local_chain.clone())
    } else {
        (!all.is_empty()).then(|| service_chain.clone())
    };
    for addr in &cluster_ips {
        let key = format!("{addr} . {proto} . {port}");
        match &cluster_target {
            Some(chain) => rules
                .elements
                .insert((SERVICE_IPS, key), format!("goto {chain}")),
            None => rules
                .elements
                .insert((NO_ENDPOINT_SERVICES, key), reject_or_drop.clone()),
        };
    }

    // External traffic: NodePorts, externalIPs, LoadBalancer IPs.
    if !info.is_external() {
        return;
    }
    if !all.is_empty() {
        let mut chain = Vec::new();
        if info.external_policy_local {
            // Pods and the node itself reach an external address of a Local service through
            // the cluster-wide chain (kube-proxy's "short circuit"): only traffic from outside
            // is limited to local endpoints, and it keeps its source address.
            if let Some(cidr) = cluster_cidr {
                chain.push(format!("{ip} saddr {cidr} goto {service_chain}"));
            }
            chain.push("fib saddr type local jump mark-for-masquerade".to_string());
            chain.push(format!("fib saddr type local goto {service_chain}"));
            if local.is_empty() {
                chain.push("drop".to_string());
            } else {
                chain.push(format!("goto {local_chain}"));
            }
        } else {
            chain.push("jump mark-for-masquerade".to_string());
            chain.push(format!("goto {service_chain}"));
        }
        rules.chains.insert(external_chain.clone(), chain);
    }
    let external_verdict = if all.is_empty() {
        None
    } else {
        Some(format!("goto {external_chain}"))
    };
    for addr in &external_ips {
        let key = format!("{addr} . {proto} . {port}");
        match &external_verdict {
            Some(v) => rules.elements.insert((SERVICE_IPS, key), v.clone()),
            None => rules
                .elements
                .insert((NO_ENDPOINT_SERVICES, key), "goto reject-chain".to_string()),
        };
    }
    if let Some(node_port) = info.node_port {
        let key = format!("{proto} . {node_port}");
        match &external_verdict {
            Some(v) => rules.elements.insert((SERVICE_NODEPORTS, key), v.clone()),
            None => rules.elements.insert(
                (NO_ENDPOINT_NODEPORTS, key),
                "goto reject-chain".to_string(),
            ),
        };
    }

    // loadBalancerSourceRanges: only the listed sources reach the LoadBalancer IPs.
    let ranges: Vec<String> = info
        .load_balancer_source_ranges
        .iter()
        .filter(|n| Family::of_net(n) == family)
        .map(ToString::to_string)
        .collect();
    let lb_ips: Vec<&IpAddr> = family.pick(&info.load_balancer_ips).collect();
    if !ranges.is_empty() && !lb_ips.is_empty() {
        let firewall_chain = service_chain_name("firewall", spn, port);
        rules.chains.insert(
            firewall_chain.clone(),
            vec![format!("{ip} saddr != {{ {} }} drop", ranges.join(", "))],
        );
        for addr in lb_ips {
            rules.elements.insert(
                (FIREWALL_IPS, format!("{addr} . {proto} . {port}")),
                format!("goto {firewall_chain}"),
            );
        }
    }
}

/// The full transaction of the ruleset's family: creates its table if missing and replaces all
/// of it in one atomic step (`add table` makes the `delete table` safe on a first run;
/// conntrack entries of established connections survive, so they keep flowing).
pub fn full_transaction(ruleset: &Ruleset) -> String {
    let mut out = String::with_capacity(256 + ruleset.services.len() * 1024);
    let table = format!("{} {TABLE}", ruleset.family.nft());
    let _ = writeln!(out, "add table {table}");
    let _ = writeln!(out, "delete table {table}");
    let _ = writeln!(out, "table {table} {{");
    out.push_str(&ruleset.base);
    for (map, keyed_by_address) in MAPS {
        let _ = writeln!(out, "\tmap {map} {{");
        let _ = writeln!(
            out,
            "\t\ttype {}",
            map_type(ruleset.family, keyed_by_address)
        );
        let mut first = true;
        for rules in ruleset.services.values() {
            for ((m, key), verdict) in &rules.elements {
                if *m != map {
                    continue;
                }
                out.push_str(if first {
                    "\t\telements = { "
                } else {
                    ",\n\t\t\t"
                });
                first = false;
                let _ = write!(out, "{key} : {verdict}");
            }
        }
        if !first {
            out.push_str(" }\n");
        }
        out.push_str("\t}\n");
    }
    for rules in ruleset.services.values() {
        for (name, body) in &rules.sets {
            let _ = writeln!(out, "\tset {name} {{ {body} }}");
        }
        for (name, chain) in &rules.chains {
            let _ = writeln!(out, "\tchain {name} {{");
            for rule in chain {
                let _ = writeln!(out, "\t\t{rule}");
            }
            out.push_str("\t}\n");
        }
    }
    out.push_str("}\n");
    out
}

/// A transaction moving the services in `changes` from their old rules to their new ones in
/// `family`'s table, touching nothing else. `None` when it cannot be done incrementally (an affinity set changed
/// its declaration): the caller then does a full sync.
///
/// Order matters within the one atomic transaction: new sets and chains are created (and
/// changed chains flushed) before rules refer to them; map elements are deleted before they are
/// re-added with a new verdict; chains and sets that are gone are flushed, then deleted, last,
/// when nothing refers to them any more.
pub fn partial_transaction<'a>(
    family: Family,
    changes: impl IntoIterator<Item = (Option<&'a ServiceRules>, Option<&'a ServiceRules>)>,
) -> Option<String> {
    let table = format!("{} {TABLE}", family.nft());
    let empty = ServiceRules::default();
    let mut create = String::new();
    let mut fill = String::new();
    let mut delete_elements = String::new();
    let mut add_elements = String::new();
    let mut flush_gone = String::new();
    let mut delete_gone = String::new();
    for (old, new) in changes {
        let old = old.unwrap_or(&empty);
        let new = new.unwrap_or(&empty);
        for (name, body) in &new.sets {
            match old.sets.get(name) {
                Some(old_body) if old_body != body => return None,
                Some(_) => {}
                None => {
                    let _ = writeln!(create, "add set {table} {name} {{ {body} }}");
                }
            }
        }
        for (name, chain) in &new.chains {
            if old.chains.get(name) == Some(chain) {
                continue;
            }
            let _ = writeln!(create, "add chain {table} {name}");
            if old.chains.contains_key(name) {
                let _ = writeln!(create, "flush chain {table} {name}");
            }
            for rule in chain {
                let _ = writeln!(fill, "add rule {table} {name} {rule}");
            }
        }
        for ((map, key), verdict) in &old.elements {
            if new.elements.get(&(*map, key.clone())) != Some(verdict) {
                let _ = writeln!(delete_elements, "delete element {table} {map} {{ {key} }}");
            }
        }
        for ((map, key), verdict) in &new.elements {
            if old.elements.get(&(*map, key.clone())) != Some(verdict) {
                let _ = writeln!(
                    add_elements,
                    "add element {table} {map} {{ {key} : {verdict} }}"
                );
            }
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                let _ = writeln!(flush_gone, "flush chain {table} {name}");
                let _ = writeln!(delete_gone, "delete chain {table} {name}");
            }
        }
        for name in old.sets.keys() {
            if !new.sets.contains_key(name) {
                let _ = writeln!(delete_gone, "delete set {table} {name}");
            }
        }
    }
    // Sets are deleted after all chains (rules referring to them are gone by then).
    let (chains, sets): (Vec<&str>, Vec<&str>) = delete_gone
        .lines()
        .partition(|l| l.starts_with("delete chain"));
    let mut out = create;
    out.push_str(&fill);
    out.push_str(&delete_elements);
    out.push_str(&add_elements);
    out.push_str(&flush_gone);
    for line in chains.into_iter().chain(sets) {
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}

pub mod netlink;
pub mod rule;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod flows;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace;
