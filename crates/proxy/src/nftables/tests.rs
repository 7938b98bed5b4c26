//! Golden tests of the generated rulesets, one per service shape, and of partial transactions.
//! Regenerate after an intended change with `SWITCHYARD_UPDATE_GOLDEN=1 cargo test -p
//! switchyard-proxy` and review the diff; every golden full ruleset is also loaded into a real
//! kernel by `tests/dataplane.rs` (`nft -c`), so goldens cannot hold rules nft would reject.

use super::fixtures::{ip, node, spn, web, web6};
use super::*;
use crate::model::{Endpoint, Protocol, ServicePortInfo};

fn check_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(format!("{name}.nft"));
    if std::env::var_os("SWITCHYARD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with SWITCHYARD_UPDATE_GOLDEN=1)",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{name}: generated ruleset differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

fn golden(name: &str, ports: Vec<(ServicePortName, ServicePort)>, node: &NodeConfig) -> String {
    golden_of(name, ports, node, Family::V4)
}

fn golden_of(
    name: &str,
    ports: Vec<(ServicePortName, ServicePort)>,
    node: &NodeConfig,
    family: Family,
) -> String {
    let snapshot: Snapshot = ports.into_iter().collect();
    let text = full_transaction(&build(&snapshot, node, family));
    check_golden(name, &text);
    text
}

/// `build` of one family (the IPv4 table unless said otherwise).
fn build4(snapshot: &Snapshot, node: &NodeConfig) -> Ruleset {
    build(snapshot, node, Family::V4)
}

#[test]
fn chain_names_are_stable_and_bounded() {
    let s = spn("web", "http", Protocol::Tcp);
    let name = service_chain_name("service", &s, 80);
    assert_eq!(name, service_chain_name("service", &s, 80));
    assert!(
        name.starts_with("service-") && name.ends_with("-default/web/tcp/http"),
        "{name}"
    );
    let unnamed = spn("web", "", Protocol::Udp);
    assert!(service_chain_name("service", &unnamed, 53).ends_with("-default/web/udp/53"));
    let long = ServicePortName {
        namespace: "n".repeat(63),
        name: "s".repeat(63),
        port_name: "p".repeat(15),
        protocol: Protocol::Sctp,
    };
    let ep = Endpoint::ready(ip("255.255.255.255"), 65535, None);
    assert!(endpoint_chain_name("endpoint", &long, 65535, &ep).len() <= 189);
    assert!(service_chain_name("external", &long, 1).len() <= 166);
}

#[test]
fn cluster_ip_with_two_endpoints() {
    let text = golden(
        "cluster_ip",
        vec![web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-b")])],
        &node(),
    );
    assert!(text.contains("numgen random mod 2 == 0 goto endpoint-"));
    assert!(
        !text.contains("vmap {"),
        "no anonymous maps with the random scheduler"
    );
    assert!(text.contains("10.96.0.10 . tcp . 80 : goto service-"));
    assert!(text.contains(
        "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    ));
    assert!(
        text.contains("ip saddr 10.244.1.2 jump mark-for-masquerade"),
        "hairpin"
    );
    assert!(
        text.contains("elements = { 10.244.1.1, 192.168.67.1 }"),
        "never 127.0.0.1"
    );
}

#[test]
fn services_without_endpoints_reject() {
    let mut dns = (
        spn("dns", "dns", Protocol::Udp),
        ServicePort {
            info: ServicePortInfo::cluster_ip(ip("10.96.0.53"), 53, Protocol::Udp),
            endpoints: vec![],
        },
    );
    dns.1.info.node_port = Some(30053);
    let text = golden("no_endpoints", vec![web(&[]), dns], &node());
    assert!(text.contains("10.96.0.10 . tcp . 80 : goto reject-chain"));
    assert!(text.contains("10.96.0.53 . udp . 53 : goto reject-chain"));
    assert!(text.contains("udp . 30053 : goto reject-chain"));
    assert!(!text.contains("dnat to"), "no endpoint chains");
}

#[test]
fn node_port_under_cluster_policy_masquerades() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.2.2", "node-b")]);
    p.info.node_port = Some(30080);
    p.info.external_ips = vec![ip("192.0.2.10")];
    let text = golden("node_port_cluster", vec![(n, p)], &node());
    assert!(text.contains("tcp . 30080 : goto external-"));
    assert!(text.contains("192.0.2.10 . tcp . 80 : goto external-"));
    assert!(text.contains("\t\tjump mark-for-masquerade\n\t\tgoto service-"));
}

#[test]
fn node_port_under_local_policy_keeps_the_source_and_uses_local_endpoints() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.2.2", "node-b")]);
    p.info.node_port = Some(30080);
    p.info.external_policy_local = true;
    let text = golden("node_port_local", vec![(n.clone(), p.clone())], &node());
    assert!(text.contains("goto local-"));
    assert!(text.contains("ip saddr 10.244.0.0/16 goto service-"));
    // The local chain only knows the local endpoint.
    let local_chain = service_chain_name("local", &n, 80);
    let ruleset = build4(&[(n.clone(), p.clone())].into_iter().collect(), &node());
    let rules = &ruleset.services[&n.service()].chains[&local_chain];
    assert_eq!(rules.len(), 1);
    assert!(rules[0].starts_with("goto endpoint-") && rules[0].ends_with("__10.244.1.2/8080"));

    // No local endpoint: external traffic is dropped, pods still get through.
    let mut remote_only = p;
    remote_only.endpoints.remove(0);
    let ruleset = build4(&[(n.clone(), remote_only)].into_iter().collect(), &node());
    let ext = &ruleset.services[&n.service()].chains[&service_chain_name("external", &n, 80)];
    assert_eq!(ext.last().map(String::as_str), Some("drop"));
}

#[test]
fn internal_policy_local_without_local_endpoints_drops() {
    let (n, mut p) = web(&[("10.244.2.2", "node-b")]);
    p.info.internal_policy_local = true;
    let text = golden("internal_local", vec![(n, p)], &node());
    assert!(text.contains("10.96.0.10 . tcp . 80 : drop"));
}

#[test]
fn client_ip_affinity_uses_per_endpoint_sets_with_the_timeout() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    p.info.session_affinity_seconds = Some(60);
    let text = golden("affinity", vec![(n, p)], &node());
    assert!(text.contains("flags dynamic,timeout; timeout 60s;"));
    assert!(text.contains("update @affinity-"));
    assert!(text.contains("ip saddr @affinity-"));
}

#[test]
fn load_balancer_source_ranges_drop_other_sources() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a")]);
    p.info.node_port = Some(30080);
    p.info.load_balancer_ips = vec![ip("198.51.100.9")];
    p.info.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().expect("net")];
    let text = golden("load_balancer", vec![(n, p)], &node());
    assert!(text.contains("198.51.100.9 . tcp . 80 : goto firewall-"));
    assert!(text.contains("ip saddr != { 203.0.113.0/24 } drop"));
}

#[test]
fn schedulers_udp_sctp_and_masquerade_all() {
    let mut config = node();
    config.scheduler = Scheduler::RoundRobin;
    config.masquerade_all = true;
    let (_, mut udp) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    udp.info.protocol = Protocol::Udp;
    let (_, mut sctp) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    sctp.info.protocol = Protocol::Sctp;
    sctp.info.port = 9000;
    let text = golden(
        "rr_udp_sctp",
        vec![
            (spn("dns", "dns", Protocol::Udp), udp.clone()),
            (spn("sig", "sig", Protocol::Sctp), sctp),
        ],
        &config,
    );
    assert!(text.contains("numgen inc mod 2 vmap"));
    assert!(text.contains("meta l4proto sctp dnat to 10.244.1.2:8080"));
    assert!(text.contains("ip daddr 10.96.0.10 udp dport 80 jump mark-for-masquerade"));
    config.scheduler = Scheduler::SourceHash;
    let snapshot: Snapshot = [(spn("dns", "dns", Protocol::Udp), udp)]
        .into_iter()
        .collect();
    let text = full_transaction(&build4(&snapshot, &config));
    assert!(text.contains("jhash ip saddr mod 2 seed 0x5357 == 0 goto endpoint-"));
}

#[test]
fn terminating_endpoints_are_used_only_when_none_is_ready() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    p.endpoints[0].ready = false;
    p.endpoints[0].terminating = true;
    let ruleset = build4(&[(n.clone(), p.clone())].into_iter().collect(), &node());
    let chains = &ruleset.services[&n.service()].chains;
    assert!(chains.keys().all(|c| !c.ends_with("__10.244.1.2/8080")));
    p.endpoints[1].ready = false;
    p.endpoints[1].serving = false;
    p.endpoints[1].terminating = true;
    let ruleset = build4(&[(n.clone(), p)].into_iter().collect(), &node());
    let chains = &ruleset.services[&n.service()].chains;
    assert!(chains.keys().any(|c| c.ends_with("__10.244.1.2/8080")));
    assert!(chains.keys().all(|c| !c.ends_with("__10.244.1.3/8080")));
}

#[test]
fn a_partial_transaction_touches_only_the_changed_service() {
    let (web_name, web_port) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    let db = (
        spn("db", "sql", Protocol::Tcp),
        ServicePort {
            info: ServicePortInfo::cluster_ip(ip("10.96.0.20"), 5432, Protocol::Tcp),
            endpoints: vec![Endpoint::ready(ip("10.244.1.9"), 5432, Some("node-a"))],
        },
    );
    let before: Snapshot = [(web_name.clone(), web_port.clone()), db.clone()]
        .into_iter()
        .collect();
    let old = build4(&before, &node());
    // One endpoint of web goes away.
    let mut web_after = web_port.clone();
    web_after.endpoints.remove(1);
    let after: Snapshot = [(web_name.clone(), web_after), db].into_iter().collect();
    let new = build4(&after, &node());
    let key = web_name.service();
    let text = partial_transaction(
        Family::V4,
        [(old.services.get(&key), new.services.get(&key))],
    )
    .expect("incremental");
    check_golden("partial_remove_endpoint", &text);
    assert!(!text.contains("default/db/"), "db is untouched:\n{text}");
    assert!(text.contains("delete chain ip switchyard endpoint-"));
    assert!(text.contains("__10.244.1.3/8080"));
    assert!(
        !text.contains("service-ips"),
        "the verdict did not change:\n{text}"
    );

    // Removing a service: elements first, then its chains.
    let text =
        partial_transaction(Family::V4, [(old.services.get(&key), None)]).expect("incremental");
    check_golden("partial_delete_service", &text);
    let element = text.find("delete element").expect("element deleted");
    let chain = text.find("delete chain").expect("chain deleted");
    assert!(element < chain);

    // Unchanged: nothing to do.
    let text = partial_transaction(
        Family::V4,
        [(old.services.get(&key), old.services.get(&key))],
    );
    assert_eq!(text.as_deref(), Some(""));
}

#[test]
fn a_changed_affinity_timeout_needs_a_full_sync() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a")]);
    p.info.session_affinity_seconds = Some(60);
    let old = build4(&[(n.clone(), p.clone())].into_iter().collect(), &node());
    p.info.session_affinity_seconds = Some(120);
    let new = build4(&[(n.clone(), p)].into_iter().collect(), &node());
    let key = n.service();
    assert!(partial_transaction(
        Family::V4,
        [(old.services.get(&key), new.services.get(&key))]
    )
    .is_none());
}

#[test]
fn ipv6_cluster_ip_gets_its_own_table_with_ip6_matches() {
    let text = golden_of(
        "ipv6_cluster_ip",
        vec![web6(&[
            ("fd00:10:244:1::2", "node-a"),
            ("fd00:10:244:1::3", "node-b"),
        ])],
        &node(),
        Family::V6,
    );
    assert!(text.starts_with("add table ip6 switchyard\ndelete table ip6 switchyard\n"));
    assert!(text.contains("type ipv6_addr . inet_proto . inet_service : verdict"));
    assert!(text.contains("\t\tip6 daddr . meta l4proto . th dport vmap @service-ips\n"));
    assert!(text.contains("fd00:96::a . tcp . 80 : goto service-"));
    assert!(text.contains(
        "ip6 daddr fd00:96::a tcp dport 80 ip6 saddr != fd00:10:244::/56 jump mark-for-masquerade"
    ));
    assert!(text.contains("ip6 saddr fd00:10:244:1::2 jump mark-for-masquerade"));
    assert!(text.contains("meta l4proto tcp dnat to [fd00:10:244:1::2]:8080"));
    assert!(text.contains("reject with icmpv6 type port-unreachable"));
    assert!(text.contains("meta l4proto tcp reject with tcp reset"));
    assert!(
        text.contains("elements = { fd00:67::1 }"),
        "node addresses of the family, never ::1"
    );
    assert!(!text.contains("10.96.0.10") && !text.contains("ip saddr"));
}

#[test]
fn ipv6_endpoint_chain_names_hold_no_colon() {
    let ep = Endpoint::ready(ip("fd00:10:244:1::2"), 8080, None);
    let name = endpoint_chain_name("endpoint", &spn("web", "http", Protocol::Tcp), 80, &ep);
    assert!(
        name.ends_with("-default/web/tcp/http__fd00.10.244.1..2/8080"),
        "{name}"
    );
    let long = ServicePortName {
        namespace: "n".repeat(63),
        name: "s".repeat(63),
        port_name: "p".repeat(15),
        protocol: Protocol::Sctp,
    };
    let widest = Endpoint::ready(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 65535, None);
    assert_eq!(
        endpoint_chain_name("endpoint", &long, 65535, &widest).len(),
        213
    );
}

#[test]
fn ipv6_services_without_endpoints_reject_with_icmpv6() {
    let (n, mut p) = web6(&[]);
    p.info.node_port = Some(30080);
    let text = golden_of("ipv6_no_endpoints", vec![(n, p)], &node(), Family::V6);
    assert!(text.contains("fd00:96::a . tcp . 80 : goto reject-chain"));
    assert!(text.contains("tcp . 30080 : goto reject-chain"));
    assert!(!text.contains("dnat to"), "no endpoint chains");
}

#[test]
fn ipv6_node_port_and_external_ip_masquerade_under_cluster_policy() {
    let (n, mut p) = web6(&[
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:2::2", "node-b"),
    ]);
    p.info.node_port = Some(30080);
    p.info.external_ips = vec![ip("2001:db8:2::10"), ip("192.0.2.10")];
    let text = golden_of("ipv6_node_port_cluster", vec![(n, p)], &node(), Family::V6);
    assert!(text
        .contains("\t\tip6 daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n"));
    assert!(text.contains("tcp . 30080 : goto external-"));
    assert!(text.contains("2001:db8:2::10 . tcp . 80 : goto external-"));
    assert!(
        !text.contains("192.0.2.10"),
        "the IPv4 external IP is the other table's"
    );
    assert!(text.contains("\t\tjump mark-for-masquerade\n\t\tgoto service-"));
}

#[test]
fn ipv6_local_policy_keeps_the_source_and_uses_local_endpoints() {
    let (n, mut p) = web6(&[
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:2::2", "node-b"),
    ]);
    p.info.node_port = Some(30080);
    p.info.external_policy_local = true;
    let text = golden_of(
        "ipv6_node_port_local",
        vec![(n.clone(), p.clone())],
        &node(),
        Family::V6,
    );
    assert!(text.contains("ip6 saddr fd00:10:244::/56 goto service-"));
    assert!(text.contains("fib saddr type local goto service-"));
    let ruleset = build(&[(n.clone(), p)].into_iter().collect(), &node(), Family::V6);
    let local = &ruleset.services[&n.service()].chains[&service_chain_name("local", &n, 80)];
    assert_eq!(local.len(), 1);
    assert!(local[0].ends_with("__fd00.10.244.1..2/8080"), "{local:?}");
}

#[test]
fn ipv6_client_ip_affinity_uses_ipv6_sets() {
    let (n, mut p) = web6(&[
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:1::3", "node-a"),
    ]);
    p.info.session_affinity_seconds = Some(60);
    let text = golden_of("ipv6_affinity", vec![(n, p)], &node(), Family::V6);
    assert!(text.contains("{ type ipv6_addr; flags dynamic,timeout; timeout 60s; }"));
    assert!(text.contains("update @affinity-") && text.contains("{ ip6 saddr }"));
    assert!(text.contains("ip6 saddr @affinity-"));
}

#[test]
fn ipv6_load_balancer_source_ranges_drop_other_sources() {
    let (n, mut p) = web6(&[("fd00:10:244:1::2", "node-a")]);
    p.info.node_port = Some(30080);
    p.info.load_balancer_ips = vec![ip("2001:db8:51::9"), ip("198.51.100.9")];
    p.info.load_balancer_source_ranges = vec![
        "2001:db8:113::/64".parse().expect("net"),
        "203.0.113.0/24".parse().expect("net"),
    ];
    let text = golden_of("ipv6_load_balancer", vec![(n, p)], &node(), Family::V6);
    assert!(text.contains("2001:db8:51::9 . tcp . 80 : goto firewall-"));
    assert!(text.contains("ip6 saddr != { 2001:db8:113::/64 } drop"));
    assert!(!text.contains("203.0.113.0/24") && !text.contains("198.51.100.9"));
}

#[test]
fn the_source_hash_scheduler_hashes_the_ipv6_source() {
    let mut config = node();
    config.scheduler = Scheduler::SourceHash;
    let snapshot: Snapshot = [web6(&[
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:1::3", "node-a"),
    ])]
    .into_iter()
    .collect();
    let text = full_transaction(&build(&snapshot, &config, Family::V6));
    assert!(text.contains("jhash ip6 saddr mod 2 seed 0x5357 == 0 goto endpoint-"));
}

#[test]
fn a_dual_stack_service_gets_each_family_only_in_its_own_table() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a")]);
    p.info.cluster_ips.push(ip("fd00:96::a"));
    p.info.protocol = Protocol::Udp;
    p.endpoints.push(Endpoint::ready(
        ip("fd00:10:244:1::2"),
        8080,
        Some("node-a"),
    ));
    let snapshot: Snapshot = [(n.clone(), p)].into_iter().collect();
    let v4 = build(&snapshot, &node(), Family::V4);
    let v6 = build(&snapshot, &node(), Family::V6);
    let text4 = full_transaction(&v4);
    let text6 = full_transaction(&v6);
    assert!(text4.contains("10.96.0.10 . udp . 80 : goto service-"));
    assert!(text4.contains("dnat to 10.244.1.2:8080"));
    assert!(!text4.contains("fd00"), "{text4}");
    assert!(text6.contains("fd00:96::a . udp . 80 : goto service-"));
    assert!(text6.contains("dnat to [fd00:10:244:1::2]:8080"));
    assert!(
        !text6.contains("10.96.0.10") && !text6.contains("10.244.1.2"),
        "{text6}"
    );
    // Stale UDP flows are per family too.
    let flows6 = &v6.services[&n.service()].udp_flows;
    assert_eq!(flows6.len(), 1);
    let flow = flows6.iter().next().expect("one flow");
    assert_eq!(flow.address, Some(ip("fd00:96::a")));
    assert_eq!(
        flow.conntrack_delete_args().join(" "),
        "-D -p udp --orig-dst fd00:96::a --orig-port-dst 80 --reply-src fd00:10:244:1::2"
    );
    assert!(v4.services[&n.service()]
        .udp_flows
        .iter()
        .all(|f| f.endpoint == ip("10.244.1.2")));
}

#[test]
fn an_ipv6_partial_transaction_addresses_the_ip6_table() {
    let (n, p) = web6(&[
        ("fd00:10:244:1::2", "node-a"),
        ("fd00:10:244:1::3", "node-a"),
    ]);
    let old = build(
        &[(n.clone(), p.clone())].into_iter().collect(),
        &node(),
        Family::V6,
    );
    let mut after = p;
    after.endpoints.remove(1);
    let new = build(
        &[(n.clone(), after)].into_iter().collect(),
        &node(),
        Family::V6,
    );
    let key = n.service();
    let text = partial_transaction(
        Family::V6,
        [(old.services.get(&key), new.services.get(&key))],
    )
    .expect("incremental");
    check_golden("ipv6_partial_remove_endpoint", &text);
    assert!(
        text.lines().all(|l| l.contains(" ip6 switchyard ")),
        "{text}"
    );
    assert!(text.contains("delete chain ip6 switchyard endpoint-"));
}

#[test]
fn a_single_stack_service_is_not_in_the_other_familys_table() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a")]);
    p.info.node_port = Some(30080);
    p.info.external_ips = vec![ip("2001:db8:2::10")];
    p.endpoints.push(Endpoint::ready(
        ip("fd00:10:244:1::2"),
        8080,
        Some("node-a"),
    ));
    let snapshot: Snapshot = [(n, p)].into_iter().collect();
    // No IPv6 ClusterIP: no NodePort on the node's IPv6 addresses, no IPv6 external IP.
    assert!(build(&snapshot, &node(), Family::V6).services.is_empty());
    let v4 = full_transaction(&build(&snapshot, &node(), Family::V4));
    assert!(v4.contains("tcp . 30080 : goto external-"));
    assert!(!v4.contains("2001:db8") && !v4.contains("fd00"), "{v4}");
}
