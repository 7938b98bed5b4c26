//! Real packets through the generated rules, in network namespaces made for each test.
//!
//! Topology (all namespaces `sy-…`, deleted by a guard also on failure), dual-stack:
//!
//! ```text
//!   client 192.168.67.2 ──veth── 192.168.67.1 [node] 10.244.1.1 ──veth── pod pN 10.244.1.(10+N)
//!          fd00:67::2              fd00:67::1      fd00:10:244:1::1        fd00:10:244:1::(10+N)
//! ```
//!
//! IPv6 addresses are added with `nodad`, so they are usable at once (no wait for duplicate
//! address detection).
//!
//! Pods are routed point-to-point (each pod a /32 behind its own veth, as Calico does) rather
//! than bridged: on a plain bridge, pod-to-pod replies through a ClusterIP would bypass the
//! node's conntrack unless `br_netfilter` were loaded, which is machine-wide. The node forwards
//! both families (inside its namespace only) and has default routes to the client, so
//! ClusterIPs are routable from the node as on a real host. Every pod runs a TCP server (greets
//! with its name and the client address it saw, then echoes) and a UDP server (answers its
//! name) on port 8080 of both families.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard};
use switchyard_proxy::model::{
    Endpoint, Protocol, ServicePort, ServicePortInfo, ServicePortName, Snapshot,
};
use switchyard_proxy::nftables::{Family, NodeConfig, Scheduler};
use switchyard_proxy::proxier::{NftDataPlane, SyncKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

const NODE_IP: &str = "192.168.67.1";
const NODE_IP6: &str = "fd00:67::1";
const NODE_NAME: &str = "node-a";

struct Pod {
    name: String,
    ns: NetNs,
    ip: IpAddr,
    ip6: IpAddr,
}

struct Topology {
    node: NetNs,
    client: NetNs,
    pods: Vec<Pod>,
    servers: Vec<JoinHandle<()>>,
    // Last: namespaces are deleted after the servers are stopped.
    _guard: NsGuard,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

async fn sh(ns: &NetNs, args: &[&str]) {
    ns.ip(args)
        .await
        .unwrap_or_else(|e| panic!("ip {args:?} in {}: {e}", ns.display_name()));
}

async fn topology(pods: usize) -> Topology {
    let mut guard = NsGuard::new();
    let node = guard.create(&unique_name("n")).await.expect("node ns");
    let client = guard.create(&unique_name("c")).await.expect("client ns");
    let client_name = client.name().expect("named").to_string();
    switchyard_netns::run_checked(node.command("sysctl").args([
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]))
    .await
    .expect("forwarding in the node namespace");
    // Client link.
    sh(
        &node,
        &[
            "link",
            "add",
            "vc",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client_name,
        ],
    )
    .await;
    sh(&node, &["addr", "add", "192.168.67.1/24", "dev", "vc"]).await;
    sh(&node, &["link", "set", "vc", "up"]).await;
    sh(&client, &["addr", "add", "192.168.67.2/24", "dev", "eth0"]).await;
    sh(&client, &["link", "set", "eth0", "up"]).await;
    sh(&node, &["route", "add", "default", "via", "192.168.67.2"]).await;
    sh(
        &node,
        &["addr", "add", "fd00:67::1/64", "dev", "vc", "nodad"],
    )
    .await;
    sh(
        &client,
        &["addr", "add", "fd00:67::2/64", "dev", "eth0", "nodad"],
    )
    .await;
    sh(
        &node,
        &["-6", "route", "add", "default", "via", "fd00:67::2"],
    )
    .await;
    for net in ["fd00:96::/112", "2001:db8:2::/64", "2001:db8:51::/64"] {
        sh(&client, &["-6", "route", "add", net, "via", NODE_IP6]).await;
    }
    // ClusterIPs and external IPs are reached through the node.
    sh(&client, &["route", "add", "10.96.0.0/12", "via", NODE_IP]).await;
    sh(&client, &["route", "add", "192.0.2.0/24", "via", NODE_IP]).await;
    sh(
        &client,
        &["route", "add", "198.51.100.0/24", "via", NODE_IP],
    )
    .await;
    let mut topo = Topology {
        node: node.clone(),
        client,
        pods: Vec::new(),
        servers: Vec::new(),
        _guard: NsGuard::new(),
    };
    for i in 0..pods {
        let pod_ns = guard.create(&unique_name("p")).await.expect("pod ns");
        let pod_ns_name = pod_ns.name().expect("named").to_string();
        let pod_ip = format!("10.244.1.{}", 10 + i);
        let host_if = format!("vp{i}");
        sh(
            &node,
            &[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pod_ns_name,
            ],
        )
        .await;
        sh(&node, &["addr", "add", "10.244.1.1/32", "dev", &host_if]).await;
        sh(&node, &["link", "set", &host_if, "up"]).await;
        sh(
            &node,
            &["route", "add", &format!("{pod_ip}/32"), "dev", &host_if],
        )
        .await;
        sh(
            &pod_ns,
            &["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"],
        )
        .await;
        sh(&pod_ns, &["link", "set", "eth0", "up"]).await;
        sh(&pod_ns, &["route", "add", "10.244.1.1", "dev", "eth0"]).await;
        sh(&pod_ns, &["route", "add", "default", "via", "10.244.1.1"]).await;
        let pod_ip6 = format!("fd00:10:244:1::{}", 10 + i);
        let host6 = "fd00:10:244:1::1";
        sh(
            &node,
            &[
                "addr",
                "add",
                &format!("{host6}/128"),
                "dev",
                &host_if,
                "nodad",
            ],
        )
        .await;
        sh(
            &node,
            &[
                "-6",
                "route",
                "add",
                &format!("{pod_ip6}/128"),
                "dev",
                &host_if,
            ],
        )
        .await;
        sh(
            &pod_ns,
            &[
                "addr",
                "add",
                &format!("{pod_ip6}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        )
        .await;
        sh(&pod_ns, &["-6", "route", "add", host6, "dev", "eth0"]).await;
        sh(&pod_ns, &["-6", "route", "add", "default", "via", host6]).await;
        let name = format!("p{i}");
        topo.servers.extend(serve(&pod_ns, &name));
        topo.pods.push(Pod {
            name,
            ns: pod_ns,
            ip: ip(&pod_ip),
            ip6: ip(&pod_ip6),
        });
    }
    topo._guard = guard;
    topo
}

/// A TCP server greeting with `name` then echoing, and a UDP server answering `name`, each on
/// one dual-stack socket (IPv4 clients appear as IPv4 addresses in the greeting).
fn serve(ns: &NetNs, name: &str) -> Vec<JoinHandle<()>> {
    let tcp = ns
        .bind_tcp("[::]:8080".parse().expect("addr"))
        .expect("bind tcp");
    let udp = ns
        .bind_udp("[::]:8080".parse().expect("addr"))
        .expect("bind udp");
    let tcp_name = name.to_string();
    let udp_name = name.to_string();
    vec![
        tokio::spawn(async move {
            while let Ok((mut stream, peer)) = tcp.accept().await {
                let name = tcp_name.clone();
                tokio::spawn(async move {
                    let greeting = format!("{name} {}\n", peer.ip().to_canonical());
                    let _ = stream.write_all(greeting.as_bytes()).await;
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        }),
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((_, peer)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(udp_name.as_bytes(), peer).await;
            }
        }),
    ]
}

/// Connects from `ns` to `addr` and returns the answering pod's name.
async fn fetch(ns: &NetNs, addr: &str) -> std::io::Result<String> {
    let greeting = greet(ns, addr).await?;
    Ok(greeting.split(' ').next().unwrap_or_default().to_string())
}

/// Connects from `ns` to `addr` and returns the greeting: the pod's name and the source address
/// the pod saw.
async fn greet(ns: &NetNs, addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let stream = ns
        .connect_tcp(addr, Duration::from_secs(3))
        .await
        .map_err(|e| match e {
            switchyard_netns::Error::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(3), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no greeting"))??;
    Ok(line.trim().to_string())
}

/// A UDP socket in `ns` on an ephemeral port of `peer`'s family.
fn udp_socket_for(ns: &NetNs, peer: &SocketAddr) -> tokio::net::UdpSocket {
    let any = if peer.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    ns.bind_udp(any.parse().expect("addr")).expect("bind")
}

async fn fetch_udp(ns: &NetNs, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("addr");
    let socket = udp_socket_for(ns, &addr);
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        socket.send_to(b"who", addr).await.expect("send");
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
        {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no UDP answer from {addr}");
}

fn node_config() -> NodeConfig {
    NodeConfig {
        node_name: NODE_NAME.into(),
        node_port_ips: vec![ip(NODE_IP), ip(NODE_IP6)],
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:10:244::/56".parse().expect("cidr"),
        ],
        masquerade_all: false,
        scheduler: Scheduler::Random,
    }
}

/// A service on `cluster_ips` (one address, or a dual-stack pair "10.96.0.30,fd00:96::30")
/// whose endpoints are `pods`' addresses of the families of its ClusterIPs.
fn service(
    name: &str,
    cluster_ips: &str,
    port: u16,
    protocol: Protocol,
    pods: &[&Pod],
) -> (ServicePortName, ServicePort) {
    let cluster_ips: Vec<IpAddr> = cluster_ips.split(',').map(ip).collect();
    let mut info = ServicePortInfo::cluster_ip(cluster_ips[0], port, protocol);
    info.cluster_ips.clone_from(&cluster_ips);
    let endpoints = pods
        .iter()
        .flat_map(|p| {
            cluster_ips
                .iter()
                .map(|c| if c.is_ipv4() { p.ip } else { p.ip6 })
        })
        .map(|a| Endpoint::ready(a, 8080, Some(NODE_NAME)))
        .collect();
    (
        ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port_name: String::new(),
            protocol,
        },
        ServicePort { info, endpoints },
    )
}

macro_rules! require_namespaces {
    () => {
        if !can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return;
        }
    };
}

async fn answers(ns: &NetNs, addr: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            fetch(ns, addr)
                .await
                .unwrap_or_else(|e| panic!("{addr} from {}: {e}", ns.display_name())),
        );
    }
    out
}

/// A data plane for `node` whose first (full) sync programmed `snapshot`.
async fn programmed(node: &NetNs, snapshot: &Snapshot) -> NftDataPlane {
    let mut plane = NftDataPlane::new(node.clone(), node_config());
    assert_eq!(
        plane.sync_snapshot(snapshot).await.expect("sync"),
        SyncKind::Full
    );
    plane
}

fn distinct(v: &[String]) -> std::collections::BTreeSet<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn cluster_ip_spreads_over_pods_from_the_node_from_a_pod_and_from_outside() {
    require_namespaces!();
    let topo = topology(3).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let snapshot: Snapshot = [service("web", "10.96.0.10", 80, Protocol::Tcp, &all)]
        .into_iter()
        .collect();
    let _plane = programmed(&topo.node, &snapshot).await;

    let from_node = answers(&topo.node, "10.96.0.10:80", 30).await;
    assert!(distinct(&from_node).len() >= 2, "node: {from_node:?}");
    let names: Vec<&str> = topo.pods.iter().map(|p| p.name.as_str()).collect();
    assert!(
        from_node.iter().all(|n| names.contains(&n.as_str())),
        "{from_node:?}"
    );
    let from_pod = answers(&topo.pods[0].ns, "10.96.0.10:80", 30).await;
    assert!(distinct(&from_pod).len() >= 2, "pod: {from_pod:?}");
    // From outside the cluster CIDR: masqueraded, so replies come back through the node.
    let from_client = answers(&topo.client, "10.96.0.10:80", 10).await;
    assert!(!from_client.is_empty());
}

#[tokio::test]
async fn node_port_and_external_ip_answer_the_client_and_hairpin_reaches_the_pod_itself() {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let (n, mut p) = service("web", "10.96.0.10", 80, Protocol::Tcp, &all);
    p.info.node_port = Some(30080);
    p.info.external_ips = vec![ip("192.0.2.10")];
    let self_only = service("self", "10.96.0.11", 80, Protocol::Tcp, &all[..1]);
    let snapshot: Snapshot = [(n, p), self_only].into_iter().collect();
    let _plane = programmed(&topo.node, &snapshot).await;

    let via_node_port = answers(&topo.client, "192.168.67.1:30080", 20).await;
    assert_eq!(distinct(&via_node_port).len(), 2, "{via_node_port:?}");
    let via_external_ip = answers(&topo.client, "192.0.2.10:80", 5).await;
    assert!(!via_external_ip.is_empty());
    // NodePorts are not on loopback (CVE-2020-8558).
    assert!(fetch(&topo.node, "127.0.0.1:30080").await.is_err());
    // Hairpin: p0 reaches itself through its service.
    assert_eq!(
        answers(&topo.pods[0].ns, "10.96.0.11:80", 3).await,
        vec!["p0"; 3]
    );
}

#[tokio::test]
async fn a_service_without_endpoints_refuses_connections_at_once() {
    require_namespaces!();
    let topo = topology(1).await;
    let (n, mut p) = service("empty", "10.96.0.12", 80, Protocol::Tcp, &[]);
    p.info.node_port = Some(30081);
    let snapshot: Snapshot = [(n, p)].into_iter().collect();
    let _plane = programmed(&topo.node, &snapshot).await;
    for (ns, addr) in [
        (&topo.node, "10.96.0.12:80"),
        (&topo.pods[0].ns, "10.96.0.12:80"),
        (&topo.client, "192.168.67.1:30081"),
    ] {
        let started = std::time::Instant::now();
        let err = fetch(ns, addr).await.expect_err("no endpoints");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr} from {}: {err}",
            ns.display_name()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused, not timed out"
        );
    }
}

#[tokio::test]
async fn client_ip_affinity_sticks_and_spreads_when_switched_off() {
    require_namespaces!();
    let topo = topology(3).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let (n, mut p) = service("sticky", "10.96.0.13", 80, Protocol::Tcp, &all);
    p.info.session_affinity_seconds = Some(60);
    let mut plane = programmed(&topo.node, &[(n.clone(), p.clone())].into_iter().collect()).await;
    for client in [&topo.client, &topo.pods[1].ns] {
        let got = answers(client, "10.96.0.13:80", 15).await;
        assert_eq!(distinct(&got).len(), 1, "affinity: {got:?}");
    }
    p.info.session_affinity_seconds = None;
    plane
        .sync_snapshot(&[(n, p)].into_iter().collect())
        .await
        .expect("sync");
    let got = answers(&topo.client, "10.96.0.13:80", 30).await;
    assert!(distinct(&got).len() >= 2, "no affinity: {got:?}");
}

#[tokio::test]
async fn a_removed_endpoint_gets_no_new_connections_after_a_partial_sync() {
    require_namespaces!();
    let topo = topology(3).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let other = service("other", "10.96.0.15", 80, Protocol::Tcp, &all);
    let snapshot: Snapshot = [
        service("web", "10.96.0.14", 80, Protocol::Tcp, &all),
        other.clone(),
    ]
    .into_iter()
    .collect();
    let mut plane = programmed(&topo.node, &snapshot).await;
    let before = answers(&topo.pods[0].ns, "10.96.0.14:80", 30).await;
    assert!(distinct(&before).contains("p1"), "{before:?}");

    let remaining = [&topo.pods[0], &topo.pods[2]];
    let snapshot: Snapshot = [
        service("web", "10.96.0.14", 80, Protocol::Tcp, &remaining),
        other,
    ]
    .into_iter()
    .collect();
    assert_eq!(
        plane.sync_snapshot(&snapshot).await.expect("sync"),
        SyncKind::Partial
    );
    let after = answers(&topo.pods[0].ns, "10.96.0.14:80", 30).await;
    assert!(!distinct(&after).contains("p1"), "{after:?}");
    assert_eq!(distinct(&after).len(), 2, "{after:?}");
    // The untouched service still reaches all three.
    let other_answers = answers(&topo.client, "10.96.0.15:80", 40).await;
    assert_eq!(distinct(&other_answers).len(), 3, "{other_answers:?}");

    // Deleting the service: partial again, and it is gone (nothing answers on its IP).
    let snapshot: Snapshot = [service("other", "10.96.0.15", 80, Protocol::Tcp, &all)]
        .into_iter()
        .collect();
    assert_eq!(
        plane.sync_snapshot(&snapshot).await.expect("sync"),
        SyncKind::Partial
    );
    let table = topo
        .node
        .nft(&["list", "table", "ip", "switchyard"], None)
        .await
        .expect("list");
    assert!(!table.contains("10.96.0.14"), "{table}");
    assert!(!table.contains("default/web/"), "{table}");
}

#[tokio::test]
async fn external_traffic_policy_local_keeps_the_client_address_and_uses_local_endpoints() {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let (n, mut p) = service("local", "10.96.0.17", 80, Protocol::Tcp, &all);
    // p1 counts as another node's endpoint.
    p.endpoints[1].node_name = Some("node-b".into());
    p.info.node_port = Some(30082);
    p.info.external_policy_local = true;
    let (cn, mut cp) = service("cluster", "10.96.0.18", 80, Protocol::Tcp, &all[..1]);
    cp.info.node_port = Some(30083);
    let snapshot: Snapshot = [(n, p), (cn, cp)].into_iter().collect();
    let _plane = programmed(&topo.node, &snapshot).await;
    for _ in 0..10 {
        let greeting = greet(&topo.client, "192.168.67.1:30082")
            .await
            .expect("local");
        assert_eq!(
            greeting, "p0 192.168.67.2",
            "local endpoint only, client address kept"
        );
    }
    // Pods still reach both endpoints through the ClusterIP.
    let from_pod = answers(&topo.pods[0].ns, "10.96.0.17:80", 30).await;
    assert_eq!(distinct(&from_pod).len(), 2, "{from_pod:?}");
    // Under the Cluster policy the client is masqueraded to the node's address.
    let greeting = greet(&topo.client, "192.168.67.1:30083")
        .await
        .expect("cluster");
    assert_eq!(greeting, "p0 10.244.1.1");
}

#[tokio::test]
async fn load_balancer_source_ranges_drop_other_clients() {
    source_ranges_drop_other_clients(
        ("10.96.0.19", "198.51.100.9"),
        ("203.0.113.0/24", "192.168.67.0/24"),
    )
    .await;
}

#[tokio::test]
async fn ipv6_load_balancer_source_ranges_drop_other_clients() {
    source_ranges_drop_other_clients(
        ("fd00:96::19", "2001:db8:51::9"),
        ("2001:db8:113::/64", "fd00:67::/64"),
    )
    .await;
}

/// `(cluster IP, LoadBalancer IP)`, `(a range without the client, the client's range)`: the
/// client is dropped (a timeout, not a refusal) until its range is added.
async fn source_ranges_drop_other_clients(
    (cluster_ip, lb_ip): (&str, &str),
    (other, client): (&str, &str),
) {
    require_namespaces!();
    let topo = topology(1).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let (n, mut p) = service("lb", cluster_ip, 80, Protocol::Tcp, &all);
    p.info.node_port = Some(30084);
    p.info.load_balancer_ips = vec![ip(lb_ip)];
    p.info.load_balancer_source_ranges = vec![other.parse().expect("net")];
    let mut plane = programmed(&topo.node, &[(n.clone(), p.clone())].into_iter().collect()).await;
    let lb = SocketAddr::new(ip(lb_ip), 80);
    let err = topo
        .client
        .connect_tcp(lb, Duration::from_millis(500))
        .await
        .expect_err("the client is not in the source ranges");
    assert!(
        err.to_string().contains("timed out"),
        "dropped, not refused: {err}"
    );
    p.info
        .load_balancer_source_ranges
        .push(client.parse().expect("net"));
    assert_eq!(
        plane
            .sync_snapshot(&[(n, p)].into_iter().collect())
            .await
            .expect("sync"),
        SyncKind::Partial
    );
    assert_eq!(
        fetch(&topo.client, &lb.to_string()).await.expect("allowed"),
        "p0"
    );
}

#[tokio::test]
async fn udp_services_answer() {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let snapshot: Snapshot = [service("dns", "10.96.0.53", 53, Protocol::Udp, &all)]
        .into_iter()
        .collect();
    let _plane = programmed(&topo.node, &snapshot).await;
    let answer = fetch_udp(&topo.pods[0].ns, "10.96.0.53:53").await;
    assert!(answer == "p0" || answer == "p1", "{answer}");
    let answer = fetch_udp(&topo.node, "10.96.0.53:53").await;
    assert!(answer == "p0" || answer == "p1", "{answer}");
}

#[tokio::test]
async fn udp_clients_move_off_a_removed_endpoint_at_once() {
    udp_clients_move_off_a_removed_endpoint("10.96.0.54").await;
}

#[tokio::test]
async fn ipv6_udp_clients_move_off_a_removed_endpoint_at_once() {
    udp_clients_move_off_a_removed_endpoint("fd00:96::53").await;
}

/// A UDP client keeps its endpoint while it lasts; when the endpoint is removed (its pod
/// still running), the stale conntrack entry goes and the next datagram reaches another pod.
async fn udp_clients_move_off_a_removed_endpoint(cluster_ip: &str) {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let dns = |pods: &[&Pod]| -> Snapshot {
        [service("dns", cluster_ip, 53, Protocol::Udp, pods)]
            .into_iter()
            .collect()
    };
    let mut plane = programmed(&topo.node, &dns(&all)).await;
    let addr = SocketAddr::new(ip(cluster_ip), 53);
    // One client socket: every datagram belongs to the same conntrack entry.
    let socket = udp_socket_for(&topo.client, &addr);
    let ask = || async {
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            socket.send_to(b"who", addr).await.expect("send");
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
            {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        panic!("no UDP answer");
    };
    let first = ask().await;
    assert_eq!(ask().await, first, "same flow, same endpoint");
    let remaining: Vec<&Pod> = topo.pods.iter().filter(|p| p.name != first).collect();
    assert_eq!(
        plane.sync_snapshot(&dns(&remaining)).await.expect("sync"),
        SyncKind::Partial
    );
    // The removed pod still runs and would answer a stale conntrack entry.
    assert_eq!(ask().await, remaining[0].name, "the stale flow was deleted");
}

#[tokio::test]
async fn a_restarted_proxy_replaces_the_table_without_breaking_established_connections() {
    require_namespaces!();
    restart_keeps_an_established_connection(node_config()).await;
}

#[tokio::test]
async fn a_new_configuration_replaces_the_table_without_breaking_established_connections() {
    require_namespaces!();
    // What a ConfigMap change does: a new proxy with masqueradeAll and round robin.
    restart_keeps_an_established_connection(NodeConfig {
        masquerade_all: true,
        scheduler: Scheduler::RoundRobin,
        ..node_config()
    })
    .await;
}

/// Connects through a ClusterIP, then lets a fresh data plane with `next` replace the table
/// (its first sync is full) and checks the connection still echoes.
async fn restart_keeps_an_established_connection(next: NodeConfig) {
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let snapshot: Snapshot = [service("web", "10.96.0.16", 80, Protocol::Tcp, &all)]
        .into_iter()
        .collect();
    let _plane = programmed(&topo.node, &snapshot).await;

    let stream = topo
        .client
        .connect_tcp(
            "10.96.0.16:80".parse().expect("addr"),
            Duration::from_secs(3),
        )
        .await
        .expect("connect");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("greeting");

    // A new proxy process: fresh state, first sync is full and replaces the table.
    let mut restarted = NftDataPlane::new(topo.node.clone(), next);
    assert_eq!(
        restarted.sync_snapshot(&snapshot).await.expect("sync"),
        SyncKind::Full
    );
    for i in 0..3 {
        let msg = format!("ping {i}\n");
        reader
            .get_mut()
            .write_all(msg.as_bytes())
            .await
            .expect("write");
        let mut echo = String::new();
        tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut echo))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(echo, msg);
    }
}

#[tokio::test]
async fn every_golden_ruleset_loads_into_the_kernel() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("g")).await.expect("ns");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let (mut checked, mut checked_ipv6) = (0, 0);
    for entry in std::fs::read_dir(&dir).expect("testdata") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        if !text.starts_with("add table") {
            continue; // partial transactions need their base; the builder tests cover them
        }
        ns.nft(&["-f", "-"], Some(&text))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
        if text.starts_with("add table ip6 ") {
            checked_ipv6 += 1;
        }
    }
    assert!(checked >= 12, "only {checked} goldens");
    assert!(checked_ipv6 >= 6, "only {checked_ipv6} IPv6 goldens");
}

/// Partial syncs of a table with many services change exactly the one service (timings at
/// 1k–30k services are in `benches/controlplane.rs`).
#[tokio::test]
async fn partial_syncs_at_scale_change_only_the_changed_service() {
    require_namespaces!();
    let (services, endpoints) = (300usize, 10usize);
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("s")).await.expect("ns");
    let mut snapshot = Snapshot::new();
    for i in 0..services {
        let cluster_ip = format!("10.96.{}.{}", i / 256, i % 256);
        let (n, mut p) = service(&format!("svc-{i}"), &cluster_ip, 80, Protocol::Tcp, &[]);
        p.endpoints = (0..endpoints)
            .map(|e| {
                let ip = ip(&format!("10.{}.{}.{}", 128 + e, i / 256, i % 256));
                Endpoint::ready(ip, 8080, Some(NODE_NAME))
            })
            .collect();
        snapshot.insert(n, p);
    }
    let mut plane = NftDataPlane::new(ns.clone(), node_config());
    assert_eq!(
        plane.sync_snapshot(&snapshot).await.expect("full"),
        SyncKind::Full
    );
    let chains = |text: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with("chain "))
            .count()
    };
    let before = ns.nft(&["list", "chains", "ip"], None).await.expect("list");
    // One service loses an endpoint: found by diffing the whole snapshot.
    let key = snapshot.keys().nth(services / 2).expect("key").clone();
    let gone = snapshot
        .get_mut(&key)
        .and_then(|p| p.endpoints.pop())
        .expect("endpoint");
    assert_eq!(
        plane.sync_snapshot(&snapshot).await.expect("partial"),
        SyncKind::Partial
    );
    // Another, applying only that service (what the proxy's loop does).
    let gone_too = snapshot
        .get_mut(&key)
        .and_then(|p| p.endpoints.pop())
        .expect("endpoint");
    let rules = switchyard_proxy::nftables::build_service(
        snapshot.iter().filter(|(n, _)| **n == key),
        plane.node(),
        Family::V4,
    );
    let kind = plane
        .sync_services(Family::V4, [(key.service(), rules)].into_iter().collect())
        .await
        .expect("one service");
    assert_eq!(kind, SyncKind::Partial);
    let after = ns.nft(&["list", "chains", "ip"], None).await.expect("list");
    assert_eq!(
        chains(&after),
        chains(&before) - 2,
        "two endpoint chains fewer"
    );
    for ep in [gone, gone_too] {
        let suffix = format!("__{}/8080", ep.ip);
        assert!(
            before.contains(&suffix) && !after.contains(&suffix),
            "{suffix}"
        );
    }
    // The kernel's table is exactly what a full sync of the snapshot writes.
    let table = ns
        .nft(&["list", "table", "ip", "switchyard"], None)
        .await
        .expect("list");
    let mut fresh = NftDataPlane::new(ns.clone(), node_config());
    fresh.sync_snapshot(&snapshot).await.expect("full");
    let rebuilt = ns
        .nft(&["list", "table", "ip", "switchyard"], None)
        .await
        .expect("list");
    assert!(
        table == rebuilt,
        "partial syncs left a different table than a full sync"
    );
}

#[tokio::test]
async fn a_failed_partial_sync_makes_the_next_sync_full() {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let mut plane = NftDataPlane::new(topo.node.clone(), node_config());
    let snapshot: Snapshot = [service("web", "10.96.0.20", 80, Protocol::Tcp, &all)]
        .into_iter()
        .collect();
    plane.sync_snapshot(&snapshot).await.expect("sync");
    // Someone removes our table behind our back: the partial transaction cannot apply.
    topo.node
        .nft(&["delete", "table", "ip", "switchyard"], None)
        .await
        .expect("delete");
    let snapshot: Snapshot = [service("web", "10.96.0.20", 80, Protocol::Tcp, &all[..1])]
        .into_iter()
        .collect();
    assert!(plane.sync_snapshot(&snapshot).await.is_err());
    assert!(plane.needs_full_sync());
    assert_eq!(
        plane.sync_snapshot(&snapshot).await.expect("resync"),
        SyncKind::Full
    );
    assert_eq!(answers(&topo.node, "10.96.0.20:80", 5).await, vec!["p0"; 5]);
}

#[tokio::test]
async fn an_ipv6_cluster_ip_spreads_over_pods_from_the_node_and_from_a_pod() {
    require_namespaces!();
    let topo = topology(3).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let snapshot: Snapshot = [service("web6", "fd00:96::10", 80, Protocol::Tcp, &all)]
        .into_iter()
        .collect();
    let _plane = programmed(&topo.node, &snapshot).await;
    let from_node = answers(&topo.node, "[fd00:96::10]:80", 30).await;
    assert!(distinct(&from_node).len() >= 2, "node: {from_node:?}");
    let from_pod = answers(&topo.pods[0].ns, "[fd00:96::10]:80", 30).await;
    assert!(distinct(&from_pod).len() >= 2, "pod: {from_pod:?}");
    // A pod reaches other pods with its own address (inside the cluster CIDR: no masquerade).
    let seen = sources_seen_by_others(&topo.pods[1], "[fd00:96::10]:80", 10).await;
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s == "fd00:10:244:1::11"),
        "{seen:?}"
    );
    // The IPv4 table got nothing of it.
    let table = topo
        .node
        .nft(&["list", "table", "ip", "switchyard"], None)
        .await
        .expect("list");
    assert!(!table.contains("fd00"), "{table}");
}

/// The client addresses other pods saw in `n` connections from `pod` to `addr` (a connection
/// that lands on `pod` itself is hairpin-masqueraded, so it is left out).
async fn sources_seen_by_others(pod: &Pod, addr: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let greeting = greet(&pod.ns, addr)
            .await
            .unwrap_or_else(|e| panic!("{addr} from {}: {e}", pod.name));
        let (name, source) = greeting.split_once(' ').expect("name and address");
        if name != pod.name {
            seen.push(source.to_string());
        }
    }
    seen
}

#[tokio::test]
async fn an_ipv6_node_port_answers_an_external_client_on_the_nodes_ipv6_address() {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let (n, mut p) = service("np6", "fd00:96::11", 80, Protocol::Tcp, &all);
    p.info.node_port = Some(30090);
    p.info.external_ips = vec![ip("2001:db8:2::10")];
    let _plane = programmed(&topo.node, &[(n, p)].into_iter().collect()).await;
    let via_node_port = answers(&topo.client, "[fd00:67::1]:30090", 20).await;
    assert_eq!(distinct(&via_node_port).len(), 2, "{via_node_port:?}");
    // Cluster policy: the client is masqueraded to the node's address towards the pod.
    let greeting = greet(&topo.client, "[fd00:67::1]:30090")
        .await
        .expect("node port");
    assert!(greeting.ends_with(" fd00:10:244:1::1"), "{greeting}");
    let via_external_ip = answers(&topo.client, "[2001:db8:2::10]:80", 5).await;
    assert!(!via_external_ip.is_empty());
    // NodePorts are not on ::1 (CVE-2020-8558), nor on the IPv4 address for an IPv6 service.
    assert!(fetch(&topo.node, "[::1]:30090").await.is_err());
    assert!(fetch(&topo.client, "192.168.67.1:30090").await.is_err());
}

#[tokio::test]
async fn an_ipv6_service_without_endpoints_refuses_connections() {
    require_namespaces!();
    let topo = topology(1).await;
    let (n, mut p) = service("empty6", "fd00:96::12", 80, Protocol::Tcp, &[]);
    p.info.node_port = Some(30091);
    let _plane = programmed(&topo.node, &[(n, p)].into_iter().collect()).await;
    for (ns, addr) in [
        (&topo.node, "[fd00:96::12]:80"),
        (&topo.pods[0].ns, "[fd00:96::12]:80"),
        (&topo.client, "[fd00:67::1]:30091"),
    ] {
        // A TCP reset: refused, not a timeout of an unanswered SYN.
        let err = fetch(ns, addr).await.expect_err("no endpoints");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr} from {}: {err}",
            ns.display_name()
        );
    }
}

#[tokio::test]
async fn a_dual_stack_service_answers_on_both_cluster_ips_in_the_clients_family() {
    require_namespaces!();
    let topo = topology(3).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let dual = "10.96.0.30,fd00:96::30";
    let other = service("other", "10.96.0.31,fd00:96::31", 80, Protocol::Tcp, &all);
    let snapshot: Snapshot = [
        service("dual", dual, 80, Protocol::Tcp, &all),
        other.clone(),
    ]
    .into_iter()
    .collect();
    let mut plane = programmed(&topo.node, &snapshot).await;
    for (addr, source) in [
        ("10.96.0.30:80", "10.244.1.10"),
        ("[fd00:96::30]:80", "fd00:10:244:1::10"),
    ] {
        let from_pod = answers(&topo.pods[0].ns, addr, 30).await;
        assert!(distinct(&from_pod).len() >= 2, "{addr}: {from_pod:?}");
        let from_node = answers(&topo.node, addr, 10).await;
        assert!(!from_node.is_empty());
        // Families never mix: the endpoint sees the pod's address of the ClusterIP's family.
        let seen = sources_seen_by_others(&topo.pods[0], addr, 10).await;
        assert!(
            !seen.is_empty() && seen.iter().all(|s| s == source),
            "{addr}: {seen:?}"
        );
    }

    // p1 goes away: both tables change in a partial sync, neither sends to p1 any more.
    let remaining = [&topo.pods[0], &topo.pods[2]];
    let snapshot: Snapshot = [service("dual", dual, 80, Protocol::Tcp, &remaining), other]
        .into_iter()
        .collect();
    assert_eq!(
        plane.sync_snapshot(&snapshot).await.expect("sync"),
        SyncKind::Partial
    );
    for addr in ["10.96.0.30:80", "[fd00:96::30]:80"] {
        let after = answers(&topo.pods[0].ns, addr, 30).await;
        assert!(!distinct(&after).contains("p1"), "{addr}: {after:?}");
        assert_eq!(distinct(&after).len(), 2, "{addr}: {after:?}");
    }
    let other_answers = answers(&topo.client, "[fd00:96::31]:80", 40).await;
    assert_eq!(distinct(&other_answers).len(), 3, "{other_answers:?}");
}

#[tokio::test]
async fn a_failure_in_one_family_makes_only_that_familys_next_sync_full() {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let dual = "10.96.0.32,fd00:96::32";
    let mut plane = NftDataPlane::new(topo.node.clone(), node_config());
    plane
        .sync_snapshot(
            &[service("web", dual, 80, Protocol::Tcp, &all)]
                .into_iter()
                .collect(),
        )
        .await
        .expect("sync");
    // Someone removes our IPv6 table behind our back: its partial transaction cannot apply.
    topo.node
        .nft(&["delete", "table", "ip6", "switchyard"], None)
        .await
        .expect("delete");
    let snapshot: Snapshot = [service("web", dual, 80, Protocol::Tcp, &all[..1])]
        .into_iter()
        .collect();
    assert!(plane.sync_snapshot(&snapshot).await.is_err());
    assert!(plane.needs_full_sync_of(Family::V6));
    assert!(
        !plane.needs_full_sync_of(Family::V4),
        "IPv4 applied its change"
    );
    assert!(plane.applied(Family::V4).is_some());
    assert_eq!(
        plane.sync_snapshot(&snapshot).await.expect("resync"),
        SyncKind::Full
    );
    assert_eq!(
        answers(&topo.node, "[fd00:96::32]:80", 5).await,
        vec!["p0"; 5]
    );
    assert_eq!(answers(&topo.node, "10.96.0.32:80", 5).await, vec!["p0"; 5]);
}

#[tokio::test]
async fn ipv6_client_ip_affinity_sticks() {
    require_namespaces!();
    let topo = topology(3).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let (n, mut p) = service("sticky6", "fd00:96::13", 80, Protocol::Tcp, &all);
    p.info.session_affinity_seconds = Some(60);
    let _plane = programmed(&topo.node, &[(n, p)].into_iter().collect()).await;
    for client in [&topo.client, &topo.pods[1].ns] {
        let got = answers(client, "[fd00:96::13]:80", 15).await;
        assert_eq!(distinct(&got).len(), 1, "affinity: {got:?}");
    }
}

#[tokio::test]
async fn ipv6_external_traffic_policy_local_keeps_the_client_address() {
    require_namespaces!();
    let topo = topology(2).await;
    let all: Vec<&Pod> = topo.pods.iter().collect();
    let (n, mut p) = service("local6", "fd00:96::17", 80, Protocol::Tcp, &all);
    // p1 counts as another node's endpoint.
    p.endpoints[1].node_name = Some("node-b".into());
    p.info.node_port = Some(30092);
    p.info.external_policy_local = true;
    let _plane = programmed(&topo.node, &[(n, p)].into_iter().collect()).await;
    for _ in 0..10 {
        let greeting = greet(&topo.client, "[fd00:67::1]:30092")
            .await
            .expect("local");
        assert_eq!(
            greeting, "p0 fd00:67::2",
            "local endpoint only, client address kept"
        );
    }
}
