//! Packet-flow tables: the behaviour of the proxy as data, one table per service shape, each
//! row a packet and what must become of it. Both backends are held to them: the nftables rules
//! through the packet tracer ([`super::trace`]), the userspace backend through real sockets in a
//! network namespace (`tests/userspace.rs`, which compiles this file through `#[path]`).
//!
//! A row's `nftables` outcome is the reference (kube-proxy's nftables mode). Its `userspace`
//! column says how the userspace backend relates to it: the same (the masquerade bit aside: the
//! userspace proxy always connects from its own address), a different outcome with the reason,
//! or not applicable with the reason. Nothing is skipped silently.
//!
//! IPv6 tables (`ip6 switchyard`, KEP-563) repeat the IPv4 shapes with the node's IPv6 address
//! and pod network ([`super::fixtures::node`]); a packet is traced through the table of its
//! family, so a dual-stack Service's rows show each ClusterIP reaching only its own family's
//! endpoints.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::fixtures::{ip, node, spn, web, web6};
use crate::model::{Endpoint, Protocol, ServicePort, ServicePortInfo, Snapshot};
use crate::nftables::{NodeConfig, Scheduler};

/// Where a packet comes from, which decides the hooks it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A pod of this node (arrives on an interface: prerouting).
    Pod,
    /// The node itself (local output); its source is one of the node's addresses.
    Node,
    /// A host outside the cluster (prerouting).
    Outside,
}

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) from: Origin,
    pub(crate) source: IpAddr,
    pub(crate) protocol: Protocol,
    pub(crate) destination: IpAddr,
    pub(crate) port: u16,
}

/// What becomes of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// DNATed to one of `endpoints` (every one of them possible), source masqueraded or kept.
    Endpoints {
        endpoints: BTreeSet<SocketAddr>,
        masqueraded: bool,
    },
    Drop,
    /// Refused: TCP reset or ICMP port unreachable.
    Reject,
    /// Not a service: accepted as it is.
    Untouched,
}

/// How the userspace backend relates to a row's nftables outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Userspace {
    /// The same outcome; `Untouched` means nothing of the proxy's answers (refused).
    Same,
    /// A different outcome, for the reason given.
    Differs { outcome: Outcome, why: &'static str },
    /// Not observable, or not offered, in userspace.
    NotApplicable(&'static str),
}

/// One row: a packet (with the affinity state its client has), and its expected outcomes.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) packet: Packet,
    /// The endpoint whose affinity set holds the client's address (`sessionAffinity: ClientIP`).
    pub(crate) affinity: Option<SocketAddr>,
    pub(crate) nftables: Outcome,
    pub(crate) userspace: Userspace,
}

/// One service shape on one node, and its rows.
#[derive(Clone, Debug)]
pub(crate) struct FlowTable {
    pub(crate) name: &'static str,
    pub(crate) node: NodeConfig,
    pub(crate) snapshot: Snapshot,
    pub(crate) rows: Vec<Row>,
}

/// A pod of node-a that is no endpoint, a host outside the cluster, and node-a's address.
const POD: &str = "10.244.1.5";
const OUTSIDE: &str = "198.18.0.9";
const NODE: &str = "192.168.67.1";
const CLUSTER_IP: &str = "10.96.0.10";

/// The same over IPv6: a pod of node-a, an outside host, node-a's IPv6 address, the ClusterIP.
const POD6: &str = "fd00:10:244:1::5";
const OUTSIDE6: &str = "2001:db8:18::9";
const NODE6: &str = "fd00:67::1";
const CLUSTER_IP6: &str = "fd00:96::a";
const LB_IP6: &str = "2001:db8:51::9";

const POLICY_FOR_EVERYONE: &str = "the userspace backend applies externalTrafficPolicy Local to \
    every client of an external address, pods and the node too (nftables short-circuits them to \
    all endpoints)";
const REFUSES_INSTEAD: &str =
    "the userspace backend has no listener without usable endpoints: the kernel refuses";

fn packet(from: Origin, source: &str, protocol: Protocol, to: &str, port: u16) -> Packet {
    Packet {
        from,
        source: ip(source),
        protocol,
        destination: ip(to),
        port,
    }
}

fn tcp(from: Origin, source: &str, to: &str, port: u16) -> Packet {
    packet(from, source, Protocol::Tcp, to, port)
}

fn udp(from: Origin, source: &str, to: &str, port: u16) -> Packet {
    packet(from, source, Protocol::Udp, to, port)
}

fn sctp(from: Origin, source: &str, to: &str, port: u16) -> Packet {
    packet(from, source, Protocol::Sctp, to, port)
}

/// DNAT to one of `endpoints` (`ip:port`).
fn to(endpoints: &[&str], masqueraded: bool) -> Outcome {
    Outcome::Endpoints {
        endpoints: endpoints
            .iter()
            .map(|e| e.parse().expect("ip:port"))
            .collect(),
        masqueraded,
    }
}

impl Row {
    fn new(packet: Packet, nftables: Outcome) -> Row {
        Row {
            packet,
            affinity: None,
            nftables,
            userspace: Userspace::Same,
        }
    }

    fn userspace_differs(mut self, outcome: Outcome, why: &'static str) -> Row {
        self.userspace = Userspace::Differs { outcome, why };
        self
    }

    fn not_in_userspace(mut self, why: &'static str) -> Row {
        self.userspace = Userspace::NotApplicable(why);
        self
    }

    fn with_affinity_to(mut self, endpoint: &str) -> Row {
        self.affinity = Some(endpoint.parse().expect("ip:port"));
        self
    }
}

fn table(
    name: &'static str,
    node: NodeConfig,
    ports: Vec<(crate::model::ServicePortName, ServicePort)>,
    rows: Vec<Row>,
) -> FlowTable {
    FlowTable {
        name,
        node,
        snapshot: ports.into_iter().collect(),
        rows,
    }
}

/// `web` with one endpoint on this node (10.244.1.2) and one on node-b (10.244.2.2).
fn web_local_and_remote() -> (crate::model::ServicePortName, ServicePort) {
    web(&[("10.244.1.2", "node-a"), ("10.244.2.2", "node-b")])
}

const BOTH: [&str; 2] = ["10.244.1.2:8080", "10.244.2.2:8080"];
const LOCAL: [&str; 1] = ["10.244.1.2:8080"];

/// `web6` with one endpoint on this node (fd00:10:244:1::2) and one on node-b.
fn web6_local_and_remote() -> (crate::model::ServicePortName, ServicePort) {
    web6(&[
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:2::2", "node-b"),
    ])
}

const BOTH6: [&str; 2] = ["[fd00:10:244:1::2]:8080", "[fd00:10:244:2::2]:8080"];
const LOCAL6: [&str; 1] = ["[fd00:10:244:1::2]:8080"];

/// Every table, IPv4 then IPv6 and dual-stack.
pub(crate) fn tables() -> Vec<FlowTable> {
    let mut tables = ipv4_tables();
    tables.extend(ipv6_tables());
    tables
}

fn ipv4_tables() -> Vec<FlowTable> {
    use Origin::{Node, Outside, Pod};
    vec![
        table(
            "ClusterIP with endpoints",
            node(),
            vec![web_local_and_remote()],
            vec![
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), to(&BOTH, false)),
                // From outside the pod network: masqueraded so replies come back this way.
                Row::new(tcp(Node, NODE, CLUSTER_IP, 80), to(&BOTH, true)),
                Row::new(tcp(Outside, OUTSIDE, CLUSTER_IP, 80), to(&BOTH, true)),
                Row::new(tcp(Pod, POD, CLUSTER_IP, 81), Outcome::Untouched),
                Row::new(udp(Pod, POD, CLUSTER_IP, 80), Outcome::Untouched),
            ],
        ),
        table(
            "hairpin",
            node(),
            vec![web(&[("10.244.1.2", "node-a")])],
            vec![
                // A pod reaching itself through its service: masqueraded, or it would answer
                // itself from its own address and drop the reply.
                Row::new(
                    tcp(Pod, "10.244.1.2", CLUSTER_IP, 80),
                    to(&["10.244.1.2:8080"], true),
                ),
                Row::new(
                    tcp(Pod, POD, CLUSTER_IP, 80),
                    to(&["10.244.1.2:8080"], false),
                ),
            ],
        ),
        table(
            "no endpoints",
            node(),
            vec![web(&[]), {
                let mut dns = ServicePort {
                    info: ServicePortInfo::cluster_ip(ip("10.96.0.53"), 53, Protocol::Udp),
                    endpoints: vec![],
                };
                dns.info.node_port = Some(30053);
                (spn("dns", "dns", Protocol::Udp), dns)
            }],
            vec![
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), Outcome::Reject),
                Row::new(tcp(Node, NODE, CLUSTER_IP, 80), Outcome::Reject),
                Row::new(udp(Pod, POD, "10.96.0.53", 53), Outcome::Reject),
                Row::new(udp(Outside, OUTSIDE, NODE, 30053), Outcome::Reject),
                // Never a NodePort on 127.0.0.1 (CVE-2020-8558).
                Row::new(
                    udp(Node, "127.0.0.1", "127.0.0.1", 30053),
                    Outcome::Untouched,
                ),
            ],
        ),
        table(
            "NodePort and externalIPs, externalTrafficPolicy Cluster",
            node(),
            vec![{
                let (name, mut port) = web_local_and_remote();
                port.info.node_port = Some(30080);
                port.info.external_ips = vec![ip("192.0.2.10")];
                (name, port)
            }],
            vec![
                Row::new(tcp(Outside, OUTSIDE, NODE, 30080), to(&BOTH, true)),
                Row::new(tcp(Outside, OUTSIDE, "10.244.1.1", 30080), to(&BOTH, true)),
                Row::new(tcp(Pod, POD, NODE, 30080), to(&BOTH, true)),
                Row::new(tcp(Outside, OUTSIDE, "192.0.2.10", 80), to(&BOTH, true)),
                Row::new(
                    tcp(Outside, OUTSIDE, "127.0.0.1", 30080),
                    Outcome::Untouched,
                ),
                Row::new(
                    tcp(Node, "127.0.0.1", "127.0.0.1", 30080),
                    Outcome::Untouched,
                ),
                Row::new(tcp(Outside, OUTSIDE, NODE, 30081), Outcome::Untouched),
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), to(&BOTH, false)),
            ],
        ),
        table(
            "externalTrafficPolicy Local",
            node(),
            vec![{
                let (name, mut port) = web_local_and_remote();
                port.info.node_port = Some(30080);
                port.info.load_balancer_ips = vec![ip("198.51.100.9")];
                port.info.external_policy_local = true;
                (name, port)
            }],
            vec![
                // External clients reach only this node's endpoints, with their own address.
                Row::new(tcp(Outside, OUTSIDE, NODE, 30080), to(&LOCAL, false)),
                Row::new(tcp(Outside, OUTSIDE, "198.51.100.9", 80), to(&LOCAL, false)),
                // Pods and the node itself go to every endpoint (kube-proxy's short circuit).
                Row::new(tcp(Pod, POD, "198.51.100.9", 80), to(&BOTH, false))
                    .userspace_differs(to(&LOCAL, false), POLICY_FOR_EVERYONE),
                Row::new(tcp(Node, NODE, NODE, 30080), to(&BOTH, true))
                    .userspace_differs(to(&LOCAL, false), POLICY_FOR_EVERYONE),
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), to(&BOTH, false)),
            ],
        ),
        table(
            "externalTrafficPolicy Local without a local endpoint",
            node(),
            vec![{
                let (name, mut port) = web(&[("10.244.2.2", "node-b")]);
                port.info.node_port = Some(30080);
                port.info.external_policy_local = true;
                (name, port)
            }],
            vec![
                Row::new(tcp(Outside, OUTSIDE, NODE, 30080), Outcome::Drop)
                    .userspace_differs(Outcome::Reject, REFUSES_INSTEAD),
                Row::new(tcp(Pod, POD, NODE, 30080), to(&["10.244.2.2:8080"], false))
                    .userspace_differs(Outcome::Reject, POLICY_FOR_EVERYONE),
            ],
        ),
        table(
            "internalTrafficPolicy Local",
            node(),
            vec![{
                let (name, mut port) = web_local_and_remote();
                port.info.internal_policy_local = true;
                (name, port)
            }],
            vec![
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), to(&LOCAL, false)),
                Row::new(tcp(Outside, OUTSIDE, CLUSTER_IP, 80), to(&LOCAL, true)),
            ],
        ),
        table(
            "internalTrafficPolicy Local without a local endpoint",
            node(),
            vec![{
                let (name, mut port) = web(&[("10.244.2.2", "node-b")]);
                port.info.internal_policy_local = true;
                (name, port)
            }],
            vec![Row::new(tcp(Pod, POD, CLUSTER_IP, 80), Outcome::Drop)
                .userspace_differs(Outcome::Reject, REFUSES_INSTEAD)],
        ),
        table(
            "loadBalancerSourceRanges",
            node(),
            vec![{
                let (name, mut port) = web(&[("10.244.1.2", "node-a")]);
                port.info.node_port = Some(30080);
                port.info.load_balancer_ips = vec![ip("198.51.100.9")];
                port.info.load_balancer_source_ranges =
                    vec!["203.0.113.0/24".parse().expect("net")];
                (name, port)
            }],
            vec![
                Row::new(
                    tcp(Outside, "203.0.113.7", "198.51.100.9", 80),
                    to(&LOCAL, true),
                ),
                Row::new(tcp(Outside, OUTSIDE, "198.51.100.9", 80), Outcome::Drop),
                // The node is not in the ranges either (kube-proxy allows it only when it is).
                Row::new(tcp(Node, NODE, "198.51.100.9", 80), Outcome::Drop),
                // The ranges guard the LoadBalancer IPs only, not the NodePort.
                Row::new(tcp(Outside, OUTSIDE, NODE, 30080), to(&LOCAL, true)),
            ],
        ),
        table(
            "terminating endpoints as the fallback",
            node(),
            vec![{
                let (name, mut port) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
                for ep in &mut port.endpoints {
                    ep.ready = false;
                    ep.terminating = true;
                }
                port.endpoints[1].serving = false;
                (name, port)
            }],
            vec![Row::new(
                tcp(Pod, POD, CLUSTER_IP, 80),
                to(&["10.244.1.2:8080"], false),
            )],
        ),
        table(
            "a ready endpoint before terminating ones",
            node(),
            vec![{
                let (name, mut port) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
                port.endpoints[0].ready = false;
                port.endpoints[0].terminating = true;
                (name, port)
            }],
            vec![Row::new(
                tcp(Pod, POD, CLUSTER_IP, 80),
                to(&["10.244.1.3:8080"], false),
            )],
        ),
        table(
            "sessionAffinity ClientIP",
            node(),
            vec![{
                let (name, mut port) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
                port.info.session_affinity_seconds = Some(60);
                (name, port)
            }],
            vec![
                Row::new(
                    tcp(Pod, POD, CLUSTER_IP, 80),
                    to(&["10.244.1.2:8080", "10.244.1.3:8080"], false),
                )
                .not_in_userspace(
                    "one client is pinned by its first connection; stickiness is covered by \
                     userspace_proxy_balances_fails_over_and_refuses",
                ),
                Row::new(
                    tcp(Pod, POD, CLUSTER_IP, 80),
                    to(&["10.244.1.3:8080"], false),
                )
                .with_affinity_to("10.244.1.3:8080")
                .not_in_userspace("the userspace backend's affinity state cannot be preset"),
            ],
        ),
        table(
            "UDP and SCTP, round robin, masqueradeAll",
            NodeConfig {
                scheduler: Scheduler::RoundRobin,
                masquerade_all: true,
                ..node()
            },
            {
                let two = [("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")];
                let (_, mut dns) = web(&two);
                dns.info.protocol = Protocol::Udp;
                let (_, mut sig) = web(&two);
                sig.info.protocol = Protocol::Sctp;
                sig.info.port = 9000;
                vec![
                    (spn("dns", "dns", Protocol::Udp), dns),
                    (spn("sig", "sig", Protocol::Sctp), sig),
                ]
            },
            vec![
                Row::new(
                    udp(Pod, POD, CLUSTER_IP, 80),
                    to(&["10.244.1.2:8080", "10.244.1.3:8080"], true),
                ),
                Row::new(
                    sctp(Pod, POD, CLUSTER_IP, 9000),
                    to(&["10.244.1.2:8080", "10.244.1.3:8080"], true),
                )
                .not_in_userspace("the userspace backend carries TCP and UDP only"),
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), Outcome::Untouched),
                Row::new(udp(Pod, POD, CLUSTER_IP, 9000), Outcome::Untouched),
            ],
        ),
        table(
            "source hash",
            NodeConfig {
                scheduler: Scheduler::SourceHash,
                ..node()
            },
            vec![web(&[
                ("10.244.1.2", "node-a"),
                ("10.244.1.3", "node-a"),
                ("10.244.2.2", "node-b"),
            ])],
            vec![Row::new(
                tcp(Pod, POD, CLUSTER_IP, 80),
                to(
                    &["10.244.1.2:8080", "10.244.1.3:8080", "10.244.2.2:8080"],
                    false,
                ),
            )],
        ),
    ]
}

fn ipv6_tables() -> Vec<FlowTable> {
    use Origin::{Node, Outside, Pod};
    vec![
        table(
            "IPv6 ClusterIP with endpoints",
            node(),
            vec![web6_local_and_remote()],
            vec![
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 80), to(&BOTH6, false)),
                Row::new(tcp(Node, NODE6, CLUSTER_IP6, 80), to(&BOTH6, true)),
                Row::new(tcp(Outside, OUTSIDE6, CLUSTER_IP6, 80), to(&BOTH6, true)),
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 81), Outcome::Untouched),
                Row::new(udp(Pod, POD6, CLUSTER_IP6, 80), Outcome::Untouched),
                // The IPv4 ClusterIP of a single-stack IPv6 Service does not exist.
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), Outcome::Untouched),
            ],
        ),
        table(
            "IPv6 hairpin",
            node(),
            vec![web6(&[("fd00:10:244:1::2", "node-a")])],
            vec![
                Row::new(
                    tcp(Pod, "fd00:10:244:1::2", CLUSTER_IP6, 80),
                    to(&LOCAL6, true),
                ),
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 80), to(&LOCAL6, false)),
            ],
        ),
        table(
            "IPv6 no endpoints",
            node(),
            vec![web6(&[]), {
                let mut dns = ServicePort {
                    info: ServicePortInfo::cluster_ip(ip("fd00:96::35"), 53, Protocol::Udp),
                    endpoints: vec![],
                };
                dns.info.node_port = Some(30053);
                (spn("dns", "dns", Protocol::Udp), dns)
            }],
            vec![
                // TCP reset, ICMPv6 port unreachable.
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 80), Outcome::Reject),
                Row::new(tcp(Node, NODE6, CLUSTER_IP6, 80), Outcome::Reject),
                Row::new(udp(Pod, POD6, "fd00:96::35", 53), Outcome::Reject),
                Row::new(udp(Outside, OUTSIDE6, NODE6, 30053), Outcome::Reject),
                // Never a NodePort on ::1 (CVE-2020-8558).
                Row::new(udp(Node, "::1", "::1", 30053), Outcome::Untouched),
            ],
        ),
        table(
            "IPv6 NodePort and externalIPs, externalTrafficPolicy Cluster",
            node(),
            vec![{
                let (name, mut port) = web6_local_and_remote();
                port.info.node_port = Some(30080);
                // An IPv4 external IP of a single-stack IPv6 Service is served by neither table.
                port.info.external_ips = vec![ip("2001:db8:10::10"), ip("192.0.2.10")];
                (name, port)
            }],
            vec![
                Row::new(tcp(Outside, OUTSIDE6, NODE6, 30080), to(&BOTH6, true)),
                Row::new(tcp(Pod, POD6, NODE6, 30080), to(&BOTH6, true)),
                Row::new(
                    tcp(Outside, OUTSIDE6, "2001:db8:10::10", 80),
                    to(&BOTH6, true),
                ),
                Row::new(tcp(Outside, OUTSIDE6, "::1", 30080), Outcome::Untouched),
                Row::new(tcp(Node, "::1", "::1", 30080), Outcome::Untouched),
                Row::new(tcp(Outside, OUTSIDE6, NODE6, 30081), Outcome::Untouched),
                // Nor is the IPv4 NodePort opened for it.
                Row::new(tcp(Outside, OUTSIDE, NODE, 30080), Outcome::Untouched),
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 80), to(&BOTH6, false)),
            ],
        ),
        table(
            "IPv6 externalTrafficPolicy Local",
            node(),
            vec![{
                let (name, mut port) = web6_local_and_remote();
                port.info.node_port = Some(30080);
                port.info.load_balancer_ips = vec![ip(LB_IP6)];
                port.info.external_policy_local = true;
                (name, port)
            }],
            vec![
                Row::new(tcp(Outside, OUTSIDE6, NODE6, 30080), to(&LOCAL6, false)),
                Row::new(tcp(Outside, OUTSIDE6, LB_IP6, 80), to(&LOCAL6, false)),
                Row::new(tcp(Pod, POD6, LB_IP6, 80), to(&BOTH6, false))
                    .userspace_differs(to(&LOCAL6, false), POLICY_FOR_EVERYONE),
                Row::new(tcp(Node, NODE6, NODE6, 30080), to(&BOTH6, true))
                    .userspace_differs(to(&LOCAL6, false), POLICY_FOR_EVERYONE),
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 80), to(&BOTH6, false)),
            ],
        ),
        table(
            "IPv6 loadBalancerSourceRanges",
            node(),
            vec![{
                let (name, mut port) = web6(&[("fd00:10:244:1::2", "node-a")]);
                port.info.node_port = Some(30080);
                port.info.load_balancer_ips = vec![ip(LB_IP6)];
                // The IPv4 range does not open the IPv6 address to IPv4 sources, nor does it
                // close it to IPv6 ones.
                port.info.load_balancer_source_ranges = vec![
                    "2001:db8:113::/64".parse().expect("net"),
                    "203.0.113.0/24".parse().expect("net"),
                ];
                (name, port)
            }],
            vec![
                Row::new(
                    tcp(Outside, "2001:db8:113::7", LB_IP6, 80),
                    to(&LOCAL6, true),
                ),
                Row::new(tcp(Outside, OUTSIDE6, LB_IP6, 80), Outcome::Drop),
                Row::new(tcp(Node, NODE6, LB_IP6, 80), Outcome::Drop),
                Row::new(tcp(Outside, OUTSIDE6, NODE6, 30080), to(&LOCAL6, true)),
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 80), to(&LOCAL6, false)),
            ],
        ),
        table(
            "IPv6 sessionAffinity ClientIP",
            node(),
            vec![{
                let (name, mut port) = web6(&[
                    ("fd00:10:244:1::2", "node-a"),
                    ("fd00:10:244:1::3", "node-a"),
                ]);
                port.info.session_affinity_seconds = Some(60);
                (name, port)
            }],
            vec![
                Row::new(
                    tcp(Pod, POD6, CLUSTER_IP6, 80),
                    to(
                        &["[fd00:10:244:1::2]:8080", "[fd00:10:244:1::3]:8080"],
                        false,
                    ),
                )
                .not_in_userspace(
                    "one client is pinned by its first connection; stickiness is covered by \
                     userspace_proxy_balances_fails_over_and_refuses",
                ),
                Row::new(
                    tcp(Pod, POD6, CLUSTER_IP6, 80),
                    to(&["[fd00:10:244:1::3]:8080"], false),
                )
                .with_affinity_to("[fd00:10:244:1::3]:8080")
                .not_in_userspace("the userspace backend's affinity state cannot be preset"),
            ],
        ),
        table(
            "IPv6 source hash",
            NodeConfig {
                scheduler: Scheduler::SourceHash,
                ..node()
            },
            vec![web6(&[
                ("fd00:10:244:1::2", "node-a"),
                ("fd00:10:244:1::3", "node-a"),
                ("fd00:10:244:2::2", "node-b"),
            ])],
            vec![Row::new(
                tcp(Pod, POD6, CLUSTER_IP6, 80),
                to(
                    &[
                        "[fd00:10:244:1::2]:8080",
                        "[fd00:10:244:1::3]:8080",
                        "[fd00:10:244:2::2]:8080",
                    ],
                    false,
                ),
            )],
        ),
        table(
            "dual-stack ClusterIP",
            node(),
            vec![{
                let (name, mut port) = web(&[
                    ("10.244.1.2", "node-a"),
                    ("10.244.2.2", "node-b"),
                    ("fd00:10:244:1::2", "node-a"),
                    ("fd00:10:244:2::2", "node-b"),
                ]);
                port.info.cluster_ips = vec![ip(CLUSTER_IP), ip(CLUSTER_IP6)];
                port.info.node_port = Some(30080);
                (name, port)
            }],
            vec![
                // Each family's ClusterIP and NodePort reach only that family's endpoints.
                Row::new(tcp(Pod, POD, CLUSTER_IP, 80), to(&BOTH, false)),
                Row::new(tcp(Pod, POD6, CLUSTER_IP6, 80), to(&BOTH6, false)),
                Row::new(tcp(Node, NODE, CLUSTER_IP, 80), to(&BOTH, true)),
                Row::new(tcp(Node, NODE6, CLUSTER_IP6, 80), to(&BOTH6, true)),
                Row::new(tcp(Outside, OUTSIDE, NODE, 30080), to(&BOTH, true)),
                Row::new(tcp(Outside, OUTSIDE6, NODE6, 30080), to(&BOTH6, true)),
            ],
        ),
    ]
}

/// Every endpoint address of a table (the userspace test runs a server on each).
pub(crate) fn endpoints(table: &FlowTable) -> BTreeSet<SocketAddr> {
    table
        .snapshot
        .values()
        .flat_map(|port| &port.endpoints)
        .map(|e: &Endpoint| SocketAddr::new(e.ip, e.port))
        .collect()
}
