//! The L2 speaker on a real segment: two node namespaces and a client namespace on one bridge
//! (in a namespace of its own), 192.168.67.0/24. Only the announcing node answers ARP for the
//! IP; a takeover moves the client's neighbour entry to the new node by gratuitous ARP.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard, Segment};
use switchyard_node::announce::Announcement;
use switchyard_node::l2::Speaker;
use switchyard_testkit::wait_for;

async fn mac_of(ns: &NetNs, dev: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", dev]).await.expect("ip link");
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC")
        .to_string()
}

/// The client's neighbour entry for `ip`, if resolved.
async fn neighbour(client: &NetNs, ip: &str) -> Option<String> {
    let out = client.ip(&["neigh", "show", ip]).await.ok()?;
    let mut words = out.split_whitespace().skip_while(|w| *w != "lladdr");
    words.next()?;
    words.next().map(str::to_string)
}

/// Send to `vip` from the client until its neighbour entry names one of `macs`; that MAC.
async fn resolve(
    client: &NetNs,
    probe: &tokio::net::UdpSocket,
    vip: &str,
    macs: &[String],
) -> String {
    let target: std::net::SocketAddr = format!("{vip}:9").parse().expect("addr");
    wait_for(
        Duration::from_secs(10),
        "the client resolves the IP",
        || async {
            let _ = probe.send_to(b"x", target).await;
            neighbour(client, vip).await.filter(|m| macs.contains(m))
        },
    )
    .await
    .expect("resolved")
}

fn announce(ip: &str) -> Vec<Announcement> {
    vec![Announcement {
        ip: ip.parse().expect("ip"),
        service: "default/web".into(),
        interfaces: None,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_announcer_answers_and_a_takeover_moves_the_neighbour() {
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let mut guard = NsGuard::new();
    let lan_name = unique_name("lan");
    guard.adopt(&lan_name);
    let lan = Segment::create(&lan_name).await.expect("lan");
    let mut hosts = Vec::new();
    for (tag, addr) in [
        ("a", "192.168.67.11/24"),
        ("b", "192.168.67.12/24"),
        ("c", "192.168.67.2/24"),
    ] {
        let ns = guard.create(&unique_name(tag)).await.expect("host");
        lan.attach(&ns, &format!("p-{tag}"), "eth0", addr)
            .await
            .expect("attach");
        hosts.push(ns);
    }
    let (a, b, client) = (&hosts[0], &hosts[1], &hosts[2]);
    let (mac_a, mac_b) = (mac_of(a, "eth0").await, mac_of(b, "eth0").await);
    let speaker_a = Speaker::start(a).expect("speaker a");
    let speaker_b = Speaker::start(b).expect("speaker b");
    assert_eq!(speaker_a.interfaces(), vec!["eth0".to_string()]);

    let vip = "192.168.67.150";
    speaker_a.sync(&announce(vip));
    let probe = client
        .bind_udp("0.0.0.0:0".parse().expect("addr"))
        .expect("udp");
    let macs = [mac_a.clone(), mac_b.clone()];
    let resolved = resolve(client, &probe, vip, &macs).await;
    assert_eq!(resolved, mac_a, "the announcing node answered");
    // Counted right after the reply left.
    wait_for(Duration::from_secs(5), "a's reply counted", || async {
        (speaker_a.metrics().replies_sent >= 1).then_some(())
    })
    .await
    .expect("counted");
    assert_eq!(
        speaker_b.metrics().replies_sent,
        0,
        "strict: b never answers"
    );
    assert_eq!(speaker_a.metrics().announced, 1);

    // Takeover: a withdraws, b announces; b's gratuitous ARP moves the client's entry.
    let started = Instant::now();
    speaker_a.sync(&[]);
    let changes = speaker_b.sync(&announce(vip));
    assert_eq!(changes.len(), 1);
    wait_for(
        Duration::from_secs(5),
        "the client's entry moves to b",
        || async {
            (neighbour(client, vip).await.as_deref() == Some(mac_b.as_str())).then_some(())
        },
    )
    .await
    .expect("moved");
    eprintln!("takeover seen by the client after {:?}", started.elapsed());
    wait_for(
        Duration::from_secs(5),
        "b's gratuitous ARP counted",
        || async { (speaker_b.metrics().gratuitous_sent >= 1).then_some(()) },
    )
    .await
    .expect("counted");
    assert_eq!(speaker_b.metrics().takeovers, 1);

    // Only b answers fresh requests now: flush the entry and resolve again.
    client
        .ip(&["neigh", "flush", "dev", "eth0"])
        .await
        .expect("flush");
    let replies_a = speaker_a.metrics().replies_sent;
    let again = resolve(client, &probe, vip, &macs).await;
    assert_eq!(again, mac_b);
    assert_eq!(speaker_a.metrics().replies_sent, replies_a);
    let announced: BTreeSet<IpAddr> = [vip.parse().expect("ip")].into();
    assert_eq!(speaker_b.metrics().announced, announced.len());
}

mod failover {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
    use switchyard_node::announcer::{Announcer, AnnouncerConfig};
    use switchyard_testkit::InProcessServer;

    async fn create<K>(api: &Api<K>, json: serde_json::Value) -> K
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json).expect("object"),
        )
        .await
        .expect("create")
    }

    /// Three nodes announce one LoadBalancer IP: exactly one answers; when it dies (agent and
    /// link), another takes over and the client's neighbour entry follows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_announcer_and_sub_second_failover() {
        if !can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return;
        }
        let server = InProcessServer::start().await.expect("server");
        let client = server.client().await.expect("client");
        let cm = server.controller_manager_client().await.expect("cm client");

        let mut guard = NsGuard::new();
        let lan_name = unique_name("lan");
        guard.adopt(&lan_name);
        let lan = Segment::create(&lan_name).await.expect("lan");
        let mut nodes_ns = Vec::new();
        let nodes: Api<Node> = Api::all(client.clone());
        for i in 1..=3 {
            let ns = guard
                .create(&unique_name(&format!("n{i}")))
                .await
                .expect("node ns");
            let ip = format!("192.168.67.1{i}");
            lan.attach(&ns, &format!("p-n{i}"), "eth0", &format!("{ip}/24"))
                .await
                .expect("attach");
            let name = format!("node-{i}");
            create(&nodes, serde_json::json!({"metadata": {"name": name}})).await;
            let status = serde_json::json!({"status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("node status");
            nodes_ns.push(ns);
        }
        let client_ns = guard.create(&unique_name("cl")).await.expect("client ns");
        lan.attach(&client_ns, "p-cl", "eth0", "192.168.67.2/24")
            .await
            .expect("attach");

        let namespaces: Api<Namespace> = Api::all(client.clone());
        create(
            &namespaces,
            serde_json::json!({"metadata": {"name": "metallb-system"}}),
        )
        .await;
        let pools: Api<switchyard_api::metallb::IPAddressPool> =
            Api::namespaced(client.clone(), "metallb-system");
        create(
            &pools,
            serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "first-pool"},
            "spec": {"addresses": ["192.168.67.120-192.168.67.200"]}}),
        )
        .await;
        let ads: Api<switchyard_api::metallb::L2Advertisement> =
            Api::namespaced(client.clone(), "metallb-system");
        create(
            &ads,
            serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "example"},
            "spec": {"ipAddressPools": ["first-pool"]}}),
        )
        .await;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        create(
            &services,
            serde_json::json!({"metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
        )
        .await;
        let vip = "192.168.67.150";
        let lb = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": vip, "ipMode": "VIP"}]}}});
        Api::<Service>::namespaced(cm, "default")
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&lb))
            .await
            .expect("lb status");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        create(
            &slices,
            serde_json::json!({"metadata": {"name": "web-1",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-1",
                           "conditions": {"ready": true, "serving": true}}],
            "ports": [{"port": 80, "protocol": "TCP"}]}),
        )
        .await;

        let mut announcers: Vec<Option<Announcer>> = Vec::new();
        let mut macs = Vec::new();
        for (i, ns) in nodes_ns.iter().enumerate() {
            let ip: IpAddr = format!("192.168.67.1{}", i + 1).parse().expect("ip");
            let config = AnnouncerConfig::new(&format!("node-{}", i + 1), ip);
            announcers.push(Some(
                Announcer::start(client.clone(), ns, config).expect("announcer"),
            ));
            macs.push(mac_of(ns, "eth0").await);
        }
        let probe = client_ns
            .bind_udp("0.0.0.0:0".parse().expect("addr"))
            .expect("udp");
        let owner_mac = resolve(&client_ns, &probe, vip, &macs).await;
        let owner = macs
            .iter()
            .position(|m| *m == owner_mac)
            .expect("a node's MAC");
        let announcing: Vec<usize> = announcers
            .iter()
            .map(|a| a.as_ref().map_or(0, |a| a.metrics().announced))
            .collect();
        assert_eq!(announcing.iter().sum::<usize>(), 1, "{announcing:?}");
        assert_eq!(announcing[owner], 1);

        // The Service says who announces.
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(client.clone(), "default");
        let owner_name = format!("node-{}", owner + 1);
        wait_for(
            Duration::from_secs(10),
            "the nodeAssigned event",
            || async {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("nodeAssigned")
                            && e.message
                                .as_deref()
                                .is_some_and(|m| m.contains(&owner_name))
                    })
                    .then_some(())
            },
        )
        .await
        .expect("event");

        // Kill the announcing node: its agent and its link.
        let killed = Instant::now();
        announcers[owner] = None;
        nodes_ns[owner]
            .ip(&["link", "set", "eth0", "down"])
            .await
            .expect("link down");
        let new_mac = wait_for(
            Duration::from_secs(10),
            "another node takes over",
            || async {
                neighbour(&client_ns, vip)
                    .await
                    .filter(|m| *m != owner_mac && macs.contains(m))
            },
        )
        .await
        .expect("takeover");
        let took = killed.elapsed();
        eprintln!("failover: {took:?} (from {owner_mac} to {new_mac})");
        assert!(took < Duration::from_secs(2), "failover took {took:?}");
    }
}
