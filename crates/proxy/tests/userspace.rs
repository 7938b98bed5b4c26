//! The userspace backend with real sockets in a network namespace of its own: service IPs on
//! the namespace's loopback, backends as servers inside it. The packet-flow tables of the
//! nftables tracer (`src/nftables/flows.rs`) run here too, IPv6 ones included (the
//! namespace's loopback takes IPv6 addresses too), each connection made from the row's source
//! address so that `loadBalancerSourceRanges` can be judged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard};
use switchyard_proxy::userspace::{self, BackendSet, Balance, Frontend, UserspaceProxy, L4};
// The shared fixtures and tables below name them as `crate::model` and `crate::nftables`.
use switchyard_proxy::{model, nftables};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../src/nftables/fixtures.rs"]
mod fixtures;
// The packet's origin and the affinity state are for the nftables tracer: this backend does
// not look at them.
#[allow(dead_code)]
#[path = "../src/nftables/flows.rs"]
mod flows;

/// A TCP and a UDP server inside `ns` at `addr` answering `name` to every connection/datagram.
fn backend(ns: &NetNs, addr: &str, name: &str) -> Vec<tokio::task::JoinHandle<()>> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let tcp = ns.bind_tcp(addr).expect("bind backend");
    let udp = ns.bind_udp(addr).expect("bind backend udp");
    let name: Arc<str> = name.into();
    let udp_name = name.clone();
    vec![
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(name.as_bytes()).await;
                });
            }
        }),
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let Ok((_, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let _ = udp.send_to(udp_name.as_bytes(), from).await;
            }
        }),
    ]
}

/// The answer of the server reached at `addr` (its error kind kept: refused, timed out, ...).
async fn ask_tcp(ns: &NetNs, addr: SocketAddr) -> std::io::Result<String> {
    let s = ns
        .connect_tcp(addr, Duration::from_secs(5))
        .await
        .map_err(|e| match e {
            switchyard_netns::Error::Io(e) => e,
            other => std::io::Error::other(other),
        })?;
    answer(s).await
}

/// As [`ask_tcp`], from `source` (an address of the namespace), giving up connecting after
/// `timeout`.
async fn ask_tcp_from(
    ns: &NetNs,
    source: IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<String> {
    let socket = ns
        .run(move || {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(source, 0))?;
            Ok::<_, std::io::Error>(socket)
        })
        .map_err(std::io::Error::other)??;
    let s = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    answer(s).await
}

/// Says hello on `s` and reads the server's answer.
async fn answer(mut s: tokio::net::TcpStream) -> std::io::Result<String> {
    s.write_all(b"hi").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The answer to a datagram sent to `addr` from a new socket (a new flow) on `source`; refused
/// when the ICMP port unreachable comes back.
async fn ask_udp(ns: &NetNs, source: IpAddr, addr: SocketAddr) -> std::io::Result<String> {
    let sock = ns.bind_udp(SocketAddr::new(source, 0)).expect("bind");
    sock.connect(addr).await?;
    sock.send(b"hi").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no UDP answer"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn frontend(ip: &str, port: u16, protocol: L4) -> Frontend {
    Frontend {
        ip: ip.parse().expect("ip"),
        port,
        protocol,
    }
}

fn backends(addrs: &[&str], balance: Balance, affinity: Option<Duration>) -> BackendSet {
    BackendSet {
        endpoints: addrs.iter().map(|a| a.parse().expect("addr")).collect(),
        balance,
        affinity,
        source_ranges: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_proxy_balances_fails_over_and_refuses() {
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("us")).await.expect("namespace");
    let _servers: Vec<_> = [
        ("127.0.0.2:8001", "a"),
        ("127.0.0.2:8002", "b"),
        ("127.0.0.2:8003", "c"),
    ]
    .into_iter()
    .flat_map(|(addr, name)| backend(&ns, addr, name))
    .collect();
    let mut proxy = UserspaceProxy::new(ns.clone(), 1).expect("proxy");
    let web = frontend("10.96.0.50", 80, L4::Tcp);
    let dns = frontend("10.96.0.50", 53, L4::Udp);
    let sticky = frontend("10.96.0.51", 80, L4::Tcp);
    let empty = frontend("10.96.0.52", 80, L4::Tcp);
    // One backend address has nothing listening: connections fall over to the next.
    let all = [
        "127.0.0.2:8001",
        "127.0.0.2:8002",
        "127.0.0.2:8003",
        "127.0.0.2:8009",
    ];
    let mut desired = BTreeMap::from([
        (web, backends(&all, Balance::RoundRobin, None)),
        (dns, backends(&all[..3], Balance::RoundRobin, None)),
        (
            sticky,
            backends(
                &all[..3],
                Balance::RoundRobin,
                Some(Duration::from_secs(60)),
            ),
        ),
        (empty, backends(&[], Balance::RoundRobin, None)),
    ]);
    proxy.sync(&desired).await.expect("sync");

    let web_addr: SocketAddr = "10.96.0.50:80".parse().expect("addr");
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        seen.insert(
            ask_tcp(&ns, web_addr)
                .await
                .expect("answer through the proxy"),
        );
    }
    assert_eq!(seen, BTreeSet::from(["a".into(), "b".into(), "c".into()]));
    assert!(
        proxy.metrics().connect_failures >= 1,
        "the dead backend was tried"
    );

    let mut udp_seen = BTreeSet::new();
    for _ in 0..6 {
        udp_seen.insert(
            ask_udp(
                &ns,
                "127.0.0.1".parse().expect("ip"),
                "10.96.0.50:53".parse().expect("addr"),
            )
            .await
            .expect("a UDP answer"),
        );
    }
    assert!(udp_seen.len() >= 2, "UDP flows spread: {udp_seen:?}");

    let sticky_addr: SocketAddr = "10.96.0.51:80".parse().expect("addr");
    let first = ask_tcp(&ns, sticky_addr).await.expect("answer");
    for _ in 0..5 {
        assert_eq!(ask_tcp(&ns, sticky_addr).await.expect("answer"), first);
    }

    // No endpoints: refused at once, never a hang.
    let refused = ask_tcp(&ns, "10.96.0.52:80".parse().expect("addr")).await;
    assert!(refused.is_err(), "{refused:?}");

    // Endpoints change in place: only "c" remains for web.
    desired.insert(
        web,
        backends(&["127.0.0.2:8003"], Balance::RoundRobin, None),
    );
    // The empty service gets an endpoint: now it listens.
    desired.insert(
        empty,
        backends(&["127.0.0.2:8001"], Balance::RoundRobin, None),
    );
    // The sticky service goes away: its IP leaves the loopback.
    desired.remove(&sticky);
    proxy.sync(&desired).await.expect("sync");
    for _ in 0..4 {
        assert_eq!(ask_tcp(&ns, web_addr).await.expect("answer"), "c");
    }
    assert_eq!(
        ask_tcp(&ns, "10.96.0.52:80".parse().expect("addr"))
            .await
            .expect("answer"),
        "a"
    );
    let lo = ns
        .ip(&["-o", "addr", "show", "dev", "lo"])
        .await
        .expect("ip addr");
    assert!(
        lo.contains("10.96.0.50/32") && !lo.contains("10.96.0.51/32"),
        "{lo}"
    );
    assert!(ask_tcp(&ns, sticky_addr).await.is_err());

    drop(proxy);
}

/// `--proxy-mode userspace` end to end: Services and EndpointSlices from the API become
/// listeners on the service IPs of the node's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_loop_drives_the_userspace_backend() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};
    use switchyard_proxy::{Proxy, ProxyConfig, ProxyMode};
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("usa")).await.expect("namespace");
    // Endpoints may not be loopback addresses: the "pod" gets one of its own.
    ns.ip(&["addr", "add", "10.1.0.3/32", "dev", "lo"])
        .await
        .expect("pod address");
    let _servers: Vec<_> = [("10.1.0.3:8001", "a"), ("10.1.0.3:8002", "b")]
        .into_iter()
        .flat_map(|(addr, name)| backend(&ns, addr, name))
        .collect();
    let server = switchyard_testkit::InProcessServer::start()
        .await
        .expect("server");
    let client = server.client().await.expect("client");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "web"},
                "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}))
            .expect("svc"),
        )
        .await
        .expect("create svc");
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a cluster IP");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.3"], "conditions": {"ready": true}}],
                "ports": [{"port": 8001, "protocol": "TCP"}]}))
            .expect("slice"),
        )
        .await
        .expect("create slice");
    let proxy = Proxy::start(
        client,
        ProxyConfig {
            node_name: "node-a".into(),
            netns: ns.clone(),
            min_sync_period: Duration::from_millis(50),
            mode: ProxyMode::Userspace(Balance::RoundRobin),
            ..ProxyConfig::default()
        },
    );
    let addr: SocketAddr = format!("{cluster_ip}:80").parse().expect("addr");
    let answer =
        switchyard_testkit::wait_for(Duration::from_secs(20), "the service answers", || {
            let ns = ns.clone();
            async move { ask_tcp(&ns, addr).await.ok() }
        })
        .await
        .expect("answer");
    assert_eq!(answer, "a");
    assert!(proxy.is_synced());
    // No nftables table was made.
    let tables = ns.nft(&["list", "tables"], None).await.unwrap_or_default();
    assert!(!tables.contains("switchyard"), "{tables}");
}

/// `ip` on the namespace's loopback (`/128 nodad` for IPv6: no duplicate address detection to
/// wait for), unless the namespace has it already.
async fn add_address(ns: &NetNs, ip: IpAddr) {
    let present = ns.ip(&["-o", "addr", "show"]).await.expect("ip addr");
    let has = present
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<IpAddr>().ok())
        .any(|a| a == ip);
    if has {
        return;
    }
    let (cidr, extra) = match ip {
        IpAddr::V4(_) => (format!("{ip}/32"), None),
        IpAddr::V6(_) => (format!("{ip}/128"), Some("nodad")),
    };
    let mut args = vec!["addr", "add", &cidr, "dev", "lo"];
    args.extend(extra);
    ns.ip(&args).await.expect("add address");
}

/// How long a dropped connection is waited for before it counts as dropped (no answer can
/// come: the SYN is gone; the wait only has to outlast a refusal or an answer on loopback).
const DROP_WAIT: Duration = Duration::from_secs(2);

/// One row's packet as connections (or datagrams) from its source address inside `ns`: the
/// endpoints reached (each backend answers its own `ip:port`) must be exactly the expected
/// ones; a refusal is expected for `Reject`, and for `Untouched` (nothing of the proxy's
/// listens there: the namespace's kernel refuses, or has no route when the address is nobody's
/// in the namespace); no answer within [`DROP_WAIT`] for `Drop`.
async fn check_flow(
    ns: &NetNs,
    packet: &flows::Packet,
    expected: &flows::Outcome,
) -> Result<(), String> {
    add_address(ns, packet.source).await;
    let addr = SocketAddr::new(packet.destination, packet.port);
    let ask = |timeout| async move {
        match packet.protocol {
            model::Protocol::Tcp => ask_tcp_from(ns, packet.source, addr, timeout).await,
            model::Protocol::Udp => ask_udp(ns, packet.source, addr).await,
            model::Protocol::Sctp => Err(std::io::Error::other("no SCTP in userspace")),
        }
    };
    let connect_timeout = Duration::from_secs(5);
    match expected {
        flows::Outcome::Endpoints { endpoints, .. } => {
            // Round robin: twice round the endpoints reaches each of them.
            let mut seen = BTreeSet::new();
            for _ in 0..2 * endpoints.len() {
                let answer = ask(connect_timeout)
                    .await
                    .map_err(|e| format!("no answer: {e}"))?;
                let endpoint: SocketAddr = answer
                    .parse()
                    .map_err(|_| format!("answer {answer:?} from no endpoint"))?;
                seen.insert(endpoint);
            }
            if &seen == endpoints {
                Ok(())
            } else {
                Err(format!("reached {seen:?}"))
            }
        }
        flows::Outcome::Reject | flows::Outcome::Untouched => {
            let untouched = *expected == flows::Outcome::Untouched;
            match ask(connect_timeout).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                Err(e) if untouched && e.kind() == std::io::ErrorKind::NetworkUnreachable => Ok(()),
                Err(e) => Err(format!("not refused: {e}")),
                Ok(answer) => Err(format!("answered {answer:?}")),
            }
        }
        flows::Outcome::Drop if packet.protocol == model::Protocol::Tcp => {
            match ask(DROP_WAIT).await {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
                Err(e) => Err(format!("not dropped: {e}")),
                Ok(answer) => Err(format!("answered {answer:?}")),
            }
        }
        flows::Outcome::Drop => Err("only TCP drops are checked: mark the row".into()),
    }
}

/// The packet-flow tables against the userspace backend: per table a namespace with a server on
/// every endpoint (its address on the loopback) and the proxy's frontends for the shape, then
/// every row that applies, from inside the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packet_flow_tables_hold_for_the_userspace_backend() {
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let mut guard = NsGuard::new();
    let mut failures = Vec::new();
    let mut ran = 0;
    for table in flows::tables() {
        let ns = guard.create(&unique_name("usf")).await.expect("namespace");
        let endpoints = flows::endpoints(&table);
        let ips: BTreeSet<IpAddr> = endpoints.iter().map(SocketAddr::ip).collect();
        for ip in ips {
            add_address(&ns, ip).await;
        }
        let servers: Vec<_> = endpoints
            .iter()
            .flat_map(|e| backend(&ns, &e.to_string(), &e.to_string()))
            .collect();
        let mut proxy = UserspaceProxy::new(ns.clone(), 1).expect("proxy");
        let frontends = userspace::frontends(&table.snapshot, &table.node, Balance::RoundRobin);
        proxy.sync(&frontends).await.expect("sync");
        for row in &table.rows {
            let expected = match &row.userspace {
                flows::Userspace::Same => &row.nftables,
                flows::Userspace::Differs { outcome, why } => {
                    eprintln!("{}: {:?}: differs: {why}", table.name, row.packet);
                    outcome
                }
                flows::Userspace::NotApplicable(why) => {
                    eprintln!("{}: {:?}: not applicable: {why}", table.name, row.packet);
                    continue;
                }
            };
            ran += 1;
            if let Err(e) = check_flow(&ns, &row.packet, expected).await {
                failures.push(format!(
                    "{}: {:?}\n    expected {expected:?}: {e}",
                    table.name, row.packet
                ));
            }
        }
        drop(proxy);
        servers.iter().for_each(|s| s.abort());
    }
    assert!(ran >= 70, "only {ran} rows ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `loadBalancerSourceRanges` on a live frontend: sources outside the ranges get no answer at
/// all (TCP and UDP, IPv4 and IPv6), and changed ranges take effect on the listener already
/// open, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ranges_drop_other_sources_and_follow_changes() {
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("usr")).await.expect("namespace");
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    let (inside, outside) = (ip("203.0.113.7"), ip("198.18.0.9"));
    let (inside6, outside6) = (ip("2001:db8:113::7"), ip("2001:db8:18::9"));
    for a in [
        inside,
        outside,
        inside6,
        outside6,
        ip("10.1.0.3"),
        ip("fd00::3"),
    ] {
        add_address(&ns, a).await;
    }
    let _servers: Vec<_> = ["10.1.0.3:8001", "[fd00::3]:8001"]
        .into_iter()
        .flat_map(|addr| backend(&ns, addr, addr))
        .collect();
    let firewalled = |endpoint: &str, ranges: &[&str]| BackendSet {
        source_ranges: ranges.iter().map(|r| r.parse().expect("net")).collect(),
        ..backends(&[endpoint], Balance::RoundRobin, None)
    };
    let lb_tcp = frontend("198.51.100.9", 80, L4::Tcp);
    let lb_udp = frontend("198.51.100.9", 80, L4::Udp);
    let lb6 = frontend("2001:db8:51::9", 80, L4::Tcp);
    let mut proxy = UserspaceProxy::new(ns.clone(), 1).expect("proxy");
    let mut desired = BTreeMap::from([
        (lb_tcp, firewalled("10.1.0.3:8001", &["203.0.113.0/24"])),
        (lb_udp, firewalled("10.1.0.3:8001", &["203.0.113.0/24"])),
        (lb6, firewalled("[fd00::3]:8001", &["2001:db8:113::/64"])),
    ]);
    proxy.sync(&desired).await.expect("sync");
    let lb: SocketAddr = "198.51.100.9:80".parse().expect("addr");
    let lb6_addr: SocketAddr = "[2001:db8:51::9]:80".parse().expect("addr");
    let answered = |r: std::io::Result<String>| r.is_ok();
    let dropped = |r: std::io::Result<String>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut);
    let tcp = |source, addr, timeout| ask_tcp_from(&ns, source, addr, timeout);
    let long = Duration::from_secs(5);
    assert!(answered(tcp(inside, lb, long).await));
    assert!(dropped(tcp(outside, lb, DROP_WAIT).await));
    assert!(answered(ask_udp(&ns, inside, lb).await));
    assert!(dropped(ask_udp(&ns, outside, lb).await));
    assert!(answered(tcp(inside6, lb6_addr, long).await));
    assert!(dropped(tcp(outside6, lb6_addr, DROP_WAIT).await));

    // New ranges refit the open listener: the other source is in now, the first one out.
    desired.insert(lb_tcp, firewalled("10.1.0.3:8001", &["198.18.0.0/15"]));
    proxy.sync(&desired).await.expect("sync");
    assert!(answered(tcp(outside, lb, long).await));
    assert!(dropped(tcp(inside, lb, DROP_WAIT).await));
    // No ranges: everyone.
    desired.insert(lb_tcp, firewalled("10.1.0.3:8001", &[]));
    proxy.sync(&desired).await.expect("sync");
    assert!(answered(tcp(inside, lb, long).await));
    assert!(answered(tcp(outside, lb, long).await));
    drop(proxy);
}
