//! The oracle: the same partial transactions applied by `nft -f` in one namespace and by the
//! netlink encoder in another must leave the same table (as `nft list table` prints it). Every
//! service shape of the goldens, added from nothing, with endpoints removed and added, and
//! deleted. Plus: a batch the kernel rejects names its line and changes nothing.

use super::*;
use crate::model::{Endpoint, Protocol, ServicePort, ServicePortInfo, ServicePortName, Snapshot};
use crate::nftables::fixtures::{ip, node, spn, web, web6};
use crate::nftables::{self, build, full_transaction, Family, NodeConfig, Scheduler, ServiceRules};
use switchyard_netns::{can_create_namespaces, unique_name, NsGuard};

macro_rules! require_namespaces {
    () => {
        if !can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return;
        }
    };
}

/// A named service shape: its ports, and the node its rules are built for.
type Shape = (
    &'static str,
    Vec<(ServicePortName, ServicePort)>,
    NodeConfig,
);

/// The golden shapes (see `nftables/tests.rs`), each with the node it is built for. Shapes
/// with anonymous sets or maps are in [`shapes_nft_applies`].
fn shapes() -> Vec<Shape> {
    let mut out = Vec::new();
    out.push((
        "cluster_ip",
        vec![web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-b")])],
        node(),
    ));
    let mut dns = (
        spn("dns", "dns", Protocol::Udp),
        ServicePort {
            info: ServicePortInfo::cluster_ip(ip("10.96.0.53"), 53, Protocol::Udp),
            endpoints: vec![],
        },
    );
    dns.1.info.node_port = Some(30053);
    out.push(("no_endpoints", vec![web(&[]), dns], node()));
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.2.2", "node-b")]);
    p.info.node_port = Some(30080);
    p.info.external_ips = vec![ip("192.0.2.10")];
    out.push(("node_port_cluster", vec![(n, p)], node()));
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.2.2", "node-b")]);
    p.info.node_port = Some(30080);
    p.info.external_policy_local = true;
    out.push(("node_port_local", vec![(n, p)], node()));
    let (n, mut p) = web(&[("10.244.2.2", "node-b"), ("10.244.1.4", "node-a")]);
    p.info.internal_policy_local = true;
    out.push(("internal_local", vec![(n, p)], node()));
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    p.info.session_affinity_seconds = Some(60);
    out.push(("affinity", vec![(n, p)], node()));
    let mut sh = node();
    sh.scheduler = Scheduler::SourceHash;
    sh.masquerade_all = true;
    let (_, mut sctp) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    sctp.info.protocol = Protocol::Sctp;
    sctp.info.port = 9000;
    out.push((
        "sh_sctp_masquerade_all",
        vec![(spn("sig", "sig", Protocol::Sctp), sctp)],
        sh,
    ));
    let mut prefix = node();
    prefix.cluster_cidrs = vec!["10.240.0.0/12".parse().expect("cidr")];
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.2.2", "node-b")]);
    p.info.node_port = Some(30081);
    p.info.external_policy_local = true;
    out.push(("cluster_cidr_off_byte", vec![(n, p)], prefix));
    out.extend(shapes_ipv6());
    out
}

/// The IPv6 shapes (the `ip6 switchyard` table).
fn shapes_ipv6() -> Vec<Shape> {
    let two = [
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:2::2", "node-b"),
    ];
    let local = [
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:1::3", "node-a"),
    ];
    let mut out = vec![
        ("ipv6_cluster_ip", vec![web6(&two)], node()),
        ("ipv6_no_endpoints", vec![web6(&[])], node()),
    ];
    let (n, mut p) = web6(&two);
    p.info.node_port = Some(30080);
    p.info.external_ips = vec![ip("2001:db8::10")];
    out.push(("ipv6_node_port_cluster", vec![(n, p)], node()));
    let (n, mut p) = web6(&two);
    p.info.node_port = Some(30080);
    p.info.external_policy_local = true;
    out.push(("ipv6_node_port_local", vec![(n, p)], node()));
    let (n, mut p) = web6(&local);
    p.info.session_affinity_seconds = Some(60);
    out.push(("ipv6_affinity", vec![(n, p)], node()));
    let mut sh = node();
    sh.scheduler = Scheduler::SourceHash;
    sh.masquerade_all = true;
    out.push(("ipv6_sh_masquerade_all", vec![web6(&local)], sh));
    out
}

/// The family of a shape's table (its first ClusterIP's).
fn family_of(ports: &[(ServicePortName, ServicePort)]) -> Family {
    ports
        .iter()
        .flat_map(|(_, p)| p.info.cluster_ips.first())
        .map(Family::of)
        .next()
        .unwrap_or_default()
}

/// Shapes whose rules hold anonymous sets or maps: the encoder refuses them.
fn shapes_nft_applies() -> Vec<Shape> {
    let (n, mut p) = web(&[("10.244.1.2", "node-a")]);
    p.info.node_port = Some(30080);
    p.info.load_balancer_ips = vec![ip("198.51.100.9")];
    p.info.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().expect("net")];
    let mut rr = node();
    rr.scheduler = Scheduler::RoundRobin;
    vec![
        ("load_balancer", vec![(n, p)], node()),
        (
            "rr",
            vec![web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")])],
            rr,
        ),
    ]
}

fn rules_of(ports: &[(ServicePortName, ServicePort)], node: &NodeConfig) -> Option<ServiceRules> {
    nftables::build_service(ports.iter().map(|(n, p)| (n, p)), node, family_of(ports))
}

/// Every port loses its last endpoint.
fn one_endpoint_less(
    ports: &[(ServicePortName, ServicePort)],
) -> Vec<(ServicePortName, ServicePort)> {
    let mut ports = ports.to_vec();
    for (_, p) in &mut ports {
        p.endpoints.pop();
    }
    ports
}

/// Every port gains a local endpoint.
fn one_endpoint_more(
    ports: &[(ServicePortName, ServicePort)],
) -> Vec<(ServicePortName, ServicePort)> {
    let extra = match family_of(ports) {
        Family::V4 => ip("10.244.1.99"),
        Family::V6 => ip("fd00:10:244:1::99"),
    };
    let mut ports = ports.to_vec();
    for (_, p) in &mut ports {
        p.endpoints
            .push(Endpoint::ready(extra, 8080, Some("node-a")));
    }
    ports
}

/// The steps a shape goes through: added, endpoints removed, endpoints added, deleted.
fn transactions(ports: &[(ServicePortName, ServicePort)], node: &NodeConfig) -> Vec<String> {
    let states = [
        None,
        rules_of(ports, node),
        rules_of(&one_endpoint_less(ports), node),
        rules_of(&one_endpoint_more(ports), node),
        None,
    ];
    states
        .windows(2)
        .map(|w| {
            nftables::partial_transaction(family_of(ports), [(w[0].as_ref(), w[1].as_ref())])
                .expect("incremental")
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// Two namespaces holding the same full rulesets of both families (one unrelated IPv4 service
/// in them), one to be changed by `nft -f`, the other by netlink.
async fn twin_tables(guard: &mut NsGuard) -> (NetNs, NetNs) {
    let bystander: Snapshot = [(
        spn("db", "sql", Protocol::Tcp),
        ServicePort {
            info: ServicePortInfo::cluster_ip(ip("10.96.0.20"), 5432, Protocol::Tcp),
            endpoints: vec![Endpoint::ready(ip("10.244.1.9"), 5432, Some("node-a"))],
        },
    )]
    .into_iter()
    .collect();
    let mut out = Vec::new();
    for tag in ["a", "b"] {
        let ns = guard.create(&unique_name(tag)).await.expect("namespace");
        for family in Family::ALL {
            let full = full_transaction(&build(&bystander, &node(), family));
            ns.nft(&["-f", "-"], Some(&full))
                .await
                .expect("full ruleset");
        }
        out.push(ns);
    }
    let b = out.pop().expect("two");
    let a = out.pop().expect("two");
    (a, b)
}

async fn table(ns: &NetNs) -> String {
    ns.nft(&["list", "table", Family::V4.nft(), TABLE], None)
        .await
        .expect("list table")
}

/// The table as the kernel holds it: every rule's expressions with their registers and bytes
/// (`--debug=netlink`), every element's bytes, then the listing. Elements of a set are sorted:
/// the kernel walks a hash set in the order of its per-set random seed.
async fn expressions(ns: &NetNs, family: Family) -> String {
    let text = ns
        .nft(
            &["--debug=netlink", "list", "table", family.nft(), TABLE],
            None,
        )
        .await
        .expect("list table");
    let mut out = String::with_capacity(text.len());
    let mut elements: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with("\telement ") {
            elements.push(line);
            continue;
        }
        elements.sort_unstable();
        for element in elements.drain(..) {
            out.push_str(element);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn netlink_leaves_the_same_table_as_nft_for_every_service_shape() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let (by_nft, by_netlink) = twin_tables(&mut guard).await;
    let mut socket = Socket::open(&by_netlink).expect("socket");
    let mut applied = 0;
    for (name, ports, node) in shapes() {
        for text in transactions(&ports, &node) {
            by_nft
                .nft(&["-f", "-"], Some(&text))
                .await
                .unwrap_or_else(|e| panic!("{name}: nft: {e}\n{text}"));
            socket
                .apply(&text)
                .unwrap_or_else(|e| panic!("{name}: netlink: {e}\n{text}"));
            let family = family_of(&ports);
            let (expected, actual) = (
                expressions(&by_nft, family).await,
                expressions(&by_netlink, family).await,
            );
            assert!(
                expected == actual,
                "{name}: tables differ after\n{text}\n--- nft\n{expected}\n--- netlink\n{actual}"
            );
            applied += 1;
        }
    }
    assert!(applied >= 50, "only {applied} transactions compared");
}

#[test]
fn anonymous_sets_and_maps_are_left_to_nft() {
    for (name, ports, node) in shapes_nft_applies() {
        let text =
            nftables::partial_transaction(Family::V4, [(None, rules_of(&ports, &node).as_ref())])
                .expect("incremental");
        match encode(&text, 1) {
            Err(Error::Unsupported { line, .. }) => assert!(line.contains(" { "), "{name}: {line}"),
            other => panic!("{name}: expected unsupported, got {other:?}"),
        }
    }
}

#[test]
fn lines_outside_partial_transactions_are_invalid() {
    for line in [
        "add table ip switchyard",
        "add chain ip other-table x",
        "add chain inet switchyard x",
        "add rule ip switchyard x ip daddr 10.0.0.1 counter accept",
        "add element ip switchyard unknown-map { 10.0.0.1 . tcp . 80 : drop }",
        "delete element ip switchyard service-ips { 10.0.0.1 . tcp }",
    ] {
        assert!(
            matches!(encode(line, 1), Err(Error::Invalid { .. })),
            "{line:?} encoded"
        );
    }
}

#[tokio::test]
async fn a_rejected_batch_names_its_line_and_changes_nothing() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let (ns, _) = twin_tables(&mut guard).await;
    let before = table(&ns).await;
    let mut socket = Socket::open(&ns).expect("socket");
    let text = "add chain ip switchyard service-new\n\
                add rule ip switchyard service-new goto endpoint-missing\n\
                add element ip switchyard service-ips { 10.96.0.30 . tcp . 80 : goto service-new }\n";
    match socket.apply(text) {
        Err(Error::Rejected { line, errno }) => {
            assert_eq!(
                line,
                "add rule ip switchyard service-new goto endpoint-missing"
            );
            assert_eq!(errno, nix::errno::Errno::ENOENT);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(table(&ns).await, before, "nothing of the batch applied");
    // The socket still works after a rejection.
    socket
        .apply("add chain ip switchyard service-new\n")
        .expect("apply");
    assert!(table(&ns).await.contains("chain service-new"));
}

/// Rules beyond the builder's service chains (its base chains, other prefixes and spellings):
/// every term the encoder speaks, checked against nft the same way.
#[tokio::test]
async fn every_expression_the_encoder_speaks_is_encoded_as_nft_does() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let (by_nft, by_netlink) = twin_tables(&mut guard).await;
    let mut socket = Socket::open(&by_netlink).expect("socket");
    let rules = [
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        "ip saddr != @nodeport-ips drop",
        "meta mark & 0x4000 == 0 return",
        "meta mark set meta mark ^ 0x4000",
        "meta mark set meta mark | 0x4000",
        "meta mark 0x10 accept",
        "ip saddr 10.0.0.0/9 drop",
        "ip saddr != 10.240.0.0/12 drop",
        "ip daddr 0.0.0.0/0 drop",
        "ip daddr 10.1.2.3/32 drop",
        "ip daddr 10.1.0.0/16 udp dport 53 accept",
        "ip daddr 10.1.2.3 sctp dport 9000 accept",
        "meta l4proto udp th dport 53 accept",
        "numgen inc mod 3 == 0 goto reject-chain",
        "jhash ip saddr mod 5 seed 0x5359 == 0 goto reject-chain",
        "fib saddr type local accept",
        "update @probe-set { ip daddr }",
        "ip saddr @probe-set return",
        "meta l4proto udp dnat to 10.244.1.2:53",
    ];
    let mut text = String::from(
        "add set ip switchyard probe-set { type ipv4_addr; flags dynamic,timeout; timeout 5s; }\n\
         add chain ip switchyard probe\n",
    );
    for rule in rules {
        text.push_str(&format!("add rule ip switchyard probe {rule}\n"));
    }
    by_nft.nft(&["-f", "-"], Some(&text)).await.expect("nft");
    socket.apply(&text).expect("netlink");
    let (expected, actual) = (
        expressions(&by_nft, Family::V4).await,
        expressions(&by_netlink, Family::V4).await,
    );
    assert!(
        expected == actual,
        "--- nft\n{expected}\n--- netlink\n{actual}"
    );
}
