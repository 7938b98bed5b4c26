//! The userspace backend with real sockets in a network namespace of its own: service IPs on
//! the namespace's loopback, backends as servers inside it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard};
use switchyard_proxy::userspace::{BackendSet, Balance, Frontend, UserspaceProxy, L4};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP and a UDP server inside `ns` at `addr` answering `name` to every connection/datagram.
fn backend(ns: &NetNs, addr: &str, name: &'static str) -> Vec<tokio::task::JoinHandle<()>> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let tcp = ns.bind_tcp(addr).expect("bind backend");
    let udp = ns.bind_udp(addr).expect("bind backend udp");
    vec![
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
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
                let _ = udp.send_to(name.as_bytes(), from).await;
            }
        }),
    ]
}

async fn ask_tcp(ns: &NetNs, addr: SocketAddr) -> std::io::Result<String> {
    let mut s = ns
        .connect_tcp(addr, Duration::from_secs(5))
        .await
        .map_err(std::io::Error::other)?;
    s.write_all(b"hi").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

async fn ask_udp(ns: &NetNs, addr: SocketAddr) -> String {
    let sock = ns
        .bind_udp("0.0.0.0:0".parse().expect("addr"))
        .expect("bind");
    sock.connect(addr).await.expect("connect");
    sock.send(b"hi").await.expect("send");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("a UDP answer in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
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
        udp_seen.insert(ask_udp(&ns, "10.96.0.50:53".parse().expect("addr")).await);
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
