//! Golden tests of the generated rulesets, one per service shape, and of partial transactions.
//! Regenerate after an intended change with `SWITCHYARD_UPDATE_GOLDEN=1 cargo test -p
//! switchyard-proxy` and review the diff; every golden full ruleset is also loaded into a real
//! kernel by `tests/dataplane.rs` (`nft -c`), so goldens cannot hold rules nft would reject.

use super::*;
use crate::model::{Endpoint, Protocol, ServicePortInfo};

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub(crate) fn spn(name: &str, port_name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
    }
}

pub(crate) fn node() -> NodeConfig {
    NodeConfig {
        node_name: "node-a".into(),
        node_port_ips: vec![ip("192.168.67.1"), ip("127.0.0.1"), ip("10.244.1.1")],
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
        masquerade_all: false,
        scheduler: Scheduler::Random,
    }
}

pub(crate) fn web(endpoints: &[(&str, &str)]) -> (ServicePortName, ServicePort) {
    (
        spn("web", "http", Protocol::Tcp),
        ServicePort {
            info: ServicePortInfo::cluster_ip(ip("10.96.0.10"), 80, Protocol::Tcp),
            endpoints: endpoints
                .iter()
                .map(|(e, node)| Endpoint::ready(ip(e), 8080, Some(node)))
                .collect(),
        },
    )
}

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
    let snapshot: Snapshot = ports.into_iter().collect();
    let text = full_transaction(&build(&snapshot, node));
    check_golden(name, &text);
    text
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
    let ruleset = build(&[(n.clone(), p.clone())].into_iter().collect(), &node());
    let rules = &ruleset.services[&n.service()].chains[&local_chain];
    assert_eq!(rules.len(), 1);
    assert!(rules[0].starts_with("goto endpoint-") && rules[0].ends_with("__10.244.1.2/8080"));

    // No local endpoint: external traffic is dropped, pods still get through.
    let mut remote_only = p;
    remote_only.endpoints.remove(0);
    let ruleset = build(&[(n.clone(), remote_only)].into_iter().collect(), &node());
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
    let text = full_transaction(&build(&snapshot, &config));
    assert!(text.contains("jhash ip saddr mod 2 seed 0x5357 == 0 goto endpoint-"));
}

#[test]
fn terminating_endpoints_are_used_only_when_none_is_ready() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a"), ("10.244.1.3", "node-a")]);
    p.endpoints[0].ready = false;
    p.endpoints[0].terminating = true;
    let ruleset = build(&[(n.clone(), p.clone())].into_iter().collect(), &node());
    let chains = &ruleset.services[&n.service()].chains;
    assert!(chains.keys().all(|c| !c.ends_with("__10.244.1.2/8080")));
    p.endpoints[1].ready = false;
    p.endpoints[1].serving = false;
    p.endpoints[1].terminating = true;
    let ruleset = build(&[(n.clone(), p)].into_iter().collect(), &node());
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
    let old = build(&before, &node());
    // One endpoint of web goes away.
    let mut web_after = web_port.clone();
    web_after.endpoints.remove(1);
    let after: Snapshot = [(web_name.clone(), web_after), db].into_iter().collect();
    let new = build(&after, &node());
    let key = web_name.service();
    let text = partial_transaction([(old.services.get(&key), new.services.get(&key))])
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
    let text = partial_transaction([(old.services.get(&key), None)]).expect("incremental");
    check_golden("partial_delete_service", &text);
    let element = text.find("delete element").expect("element deleted");
    let chain = text.find("delete chain").expect("chain deleted");
    assert!(element < chain);

    // Unchanged: nothing to do.
    let text = partial_transaction([(old.services.get(&key), old.services.get(&key))]);
    assert_eq!(text.as_deref(), Some(""));
}

#[test]
fn a_changed_affinity_timeout_needs_a_full_sync() {
    let (n, mut p) = web(&[("10.244.1.2", "node-a")]);
    p.info.session_affinity_seconds = Some(60);
    let old = build(&[(n.clone(), p.clone())].into_iter().collect(), &node());
    p.info.session_affinity_seconds = Some(120);
    let new = build(&[(n.clone(), p)].into_iter().collect(), &node());
    let key = n.service();
    assert!(partial_transaction([(old.services.get(&key), new.services.get(&key))]).is_none());
}
