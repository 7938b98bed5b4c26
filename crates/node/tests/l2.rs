//! The L2 speaker on a real segment: node namespaces and a client namespace on one bridge (in a
//! namespace of its own), 192.168.67.0/24 and fd00:67::/64. Only the announcing node answers
//! ARP or Neighbor Solicitation for the IP; a takeover moves the client's neighbour entry to
//! the new node (gratuitous ARP, unsolicited Neighbor Advertisement). With the announcer and an
//! API server: one node announces, which one follows the Service's policy, the nodes' labels
//! and their liveness.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard, Segment};
use switchyard_node::announce::Announcement;
use switchyard_node::l2::Speaker;
use switchyard_node::ndp::solicited_node_multicast;
use switchyard_testkit::wait_for;

async fn mac_of(ns: &NetNs, dev: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", dev]).await.expect("ip link");
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC")
        .to_string()
}

/// Host `i` of a segment: `192.168.67.<i>` and `fd00:67::<i>`.
fn host_ips(i: u8) -> (String, String) {
    (format!("192.168.67.{i}"), format!("fd00:67::{i}"))
}

/// Namespaces `(tag, host number)` attached to a new segment as `eth0` with both addresses of
/// [`host_ips`]; `guard` deletes them all. The IPv6 address skips duplicate address detection
/// (unique by construction) so it is usable at once.
async fn hosts_on_a_segment(guard: &mut NsGuard, hosts: &[(&str, u8)]) -> Vec<NetNs> {
    let lan_name = unique_name("lan");
    guard.adopt(&lan_name);
    let lan = Segment::create(&lan_name).await.expect("lan");
    let mut out = Vec::new();
    for (tag, i) in hosts {
        let ns = guard.create(&unique_name(tag)).await.expect("host");
        let (v4, v6) = host_ips(*i);
        lan.attach(&ns, &format!("p-{tag}"), "eth0", &format!("{v4}/24"))
            .await
            .expect("attach");
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])
        .await
        .expect("IPv6 address");
        out.push(ns);
    }
    out
}

/// The client's neighbour entry for `ip`, if resolved.
async fn neighbour(client: &NetNs, ip: &str) -> Option<String> {
    let out = client.ip(&["neigh", "show", ip]).await.ok()?;
    let mut words = out.split_whitespace().skip_while(|w| *w != "lladdr");
    words.next()?;
    words.next().map(str::to_string)
}

/// A UDP socket in the client to send to `vip` from (of the IP's family).
fn probe_socket(client: &NetNs, vip: &str) -> tokio::net::UdpSocket {
    let ip: IpAddr = vip.parse().expect("ip");
    let any = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    client.bind_udp(any.parse().expect("addr")).expect("udp")
}

fn discard_port(vip: &str) -> SocketAddr {
    SocketAddr::new(vip.parse().expect("ip"), 9)
}

/// Send to `vip` from the client until its neighbour entry names one of `macs`; that MAC.
async fn resolve(
    client: &NetNs,
    probe: &tokio::net::UdpSocket,
    vip: &str,
    macs: &[String],
) -> String {
    wait_for(
        Duration::from_secs(10),
        "the client resolves the IP",
        || async {
            let _ = probe.send_to(b"x", discard_port(vip)).await;
            neighbour(client, vip).await.filter(|m| macs.contains(m))
        },
    )
    .await
    .expect("resolved")
}

/// Forget the client's neighbour entries, send once to `vip` and wait until the resolution
/// fails (the kernel gives up after its solicitations go unanswered).
async fn resolution_fails(client: &NetNs, probe: &tokio::net::UdpSocket, vip: &str) {
    client
        .ip(&["neigh", "flush", "dev", "eth0"])
        .await
        .expect("flush");
    let _ = probe.send_to(b"x", discard_port(vip)).await;
    wait_for(
        Duration::from_secs(10),
        "the client's resolution of the IP to fail",
        || async {
            let out = client.ip(&["neigh", "show", vip]).await.ok()?;
            out.contains("FAILED").then_some(())
        },
    )
    .await
    .expect("unanswered");
}

/// For an IPv6 `vip`: wait until `host`'s `eth0` is (or is not) a member of the solicited-node
/// group of `vip`, where solicitations for it arrive. Nothing for IPv4.
async fn wait_group_membership(host: &NetNs, vip: &str, member: bool) {
    let Ok(IpAddr::V6(ip)) = vip.parse::<IpAddr>() else {
        return;
    };
    let group = format!("inet6 {}", solicited_node_multicast(ip));
    wait_for(
        Duration::from_secs(5),
        &format!("membership of {group}: {member}"),
        || async {
            let out = host
                .ip(&["-6", "maddr", "show", "dev", "eth0"])
                .await
                .ok()?;
            (out.lines().any(|l| l.trim() == group) == member).then_some(())
        },
    )
    .await
    .expect("membership");
}

fn announce(ip: &str) -> Vec<Announcement> {
    vec![Announcement {
        ip: ip.parse().expect("ip"),
        service: "default/web".into(),
        interfaces: None,
    }]
}

/// Two speakers and a client: only the announcing speaker answers for `vip`; a takeover moves
/// the client's entry, and afterwards only the new owner answers.
async fn only_the_announcer_answers_and_a_takeover_moves_the_neighbour(vip: &str) {
    if !can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let mut guard = NsGuard::new();
    let hosts = hosts_on_a_segment(&mut guard, &[("a", 11), ("b", 12), ("c", 2)]).await;
    let (a, b, client) = (&hosts[0], &hosts[1], &hosts[2]);
    let (mac_a, mac_b) = (mac_of(a, "eth0").await, mac_of(b, "eth0").await);
    let speaker_a = Speaker::start(a).expect("speaker a");
    let speaker_b = Speaker::start(b).expect("speaker b");
    assert_eq!(speaker_a.interfaces(), vec!["eth0".to_string()]);

    speaker_a.sync(&announce(vip));
    let probe = probe_socket(client, vip);
    let macs = [mac_a.clone(), mac_b.clone()];
    let resolved = resolve(client, &probe, vip, &macs).await;
    assert_eq!(resolved, mac_a, "the announcing node answered");
    // Counted right after the reply left.
    wait_for(Duration::from_secs(5), "a's reply counted", || async {
        (speaker_a.metrics().replies_sent >= 1).then_some(())
    })
    .await
    .expect("counted");
    let ip: IpAddr = vip.parse().expect("ip");
    assert!(speaker_a.counters()[&ip].requests_received >= 1);
    assert_eq!(
        speaker_b.metrics().requests_received,
        0,
        "strict: b ignores"
    );
    assert_eq!(
        speaker_b.metrics().replies_sent,
        0,
        "strict: b never answers"
    );
    assert_eq!(speaker_a.metrics().announced, 1);
    wait_group_membership(a, vip, true).await;
    wait_group_membership(b, vip, false).await;

    // Takeover: a withdraws, b announces; b's announcement moves the client's entry.
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
        "b's takeover announcements counted",
        || async { (speaker_b.counters()[&ip].gratuitous_sent >= 3).then_some(()) },
    )
    .await
    .expect("counted: at once, after 250 ms and after 1 s");
    assert_eq!(speaker_b.metrics().takeovers, 1);
    wait_group_membership(a, vip, false).await;
    wait_group_membership(b, vip, true).await;

    // Only b answers fresh requests now: flush the entry and resolve again.
    client
        .ip(&["neigh", "flush", "dev", "eth0"])
        .await
        .expect("flush");
    let replies_a = speaker_a.metrics().replies_sent;
    let again = resolve(client, &probe, vip, &macs).await;
    assert_eq!(again, mac_b);
    assert_eq!(speaker_a.metrics().replies_sent, replies_a);
    assert_eq!(speaker_b.metrics().announced, 1);

    // Nobody announces: nobody answers.
    speaker_b.sync(&[]);
    let replies = (
        speaker_a.metrics().replies_sent,
        speaker_b.metrics().replies_sent,
    );
    resolution_fails(client, &probe, vip).await;
    assert_eq!(
        (
            speaker_a.metrics().replies_sent,
            speaker_b.metrics().replies_sent
        ),
        replies
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_only_the_announcer_answers_arp_and_a_takeover_moves_the_neighbour() {
    only_the_announcer_answers_and_a_takeover_moves_the_neighbour("192.168.67.150").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_the_announcer_answers_solicitations_and_a_takeover_moves_the_neighbour() {
    only_the_announcer_answers_and_a_takeover_moves_the_neighbour("fd00:67::150").await;
}

mod announcer {
    use super::*;
    use k8s_openapi::api::core::v1::{Event, Namespace, Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use serde_json::json;
    use switchyard_node::announce::{elect, EXCLUDE_LABEL};
    use switchyard_node::announcer::{Announcer, AnnouncerConfig};
    use switchyard_testkit::InProcessServer;

    const VIP: &str = "192.168.67.150";
    const VIP6: &str = "fd00:67::150";

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

    fn node_name(i: usize) -> String {
        format!("node-{}", i + 1)
    }

    /// An API server, three Ready nodes (`node-1`..`node-3`, in namespaces on one segment) and a
    /// client namespace; the pool `first-pool` (192.168.67.120-200) with an L2Advertisement.
    /// Announcers start when the test has set up what they must see first.
    struct Cluster {
        // Dropped first: the announcers stop before their namespaces go.
        announcers: Vec<Option<Announcer>>,
        vip: &'static str,
        client: kube::Client,
        cm: kube::Client,
        nodes_ns: Vec<NetNs>,
        client_ns: NetNs,
        macs: Vec<String>,
        _server: InProcessServer,
        _guard: NsGuard,
    }

    impl Cluster {
        /// `None` (the test skips) where namespaces cannot be created. `web` will have `vip`.
        async fn start(vip: &'static str) -> Option<Cluster> {
            if !can_create_namespaces() {
                eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
                return None;
            }
            let server = InProcessServer::start().await.expect("server");
            let client = server.client().await.expect("client");
            let cm = server.controller_manager_client().await.expect("cm client");
            let mut guard = NsGuard::new();
            let mut hosts =
                hosts_on_a_segment(&mut guard, &[("n1", 11), ("n2", 12), ("n3", 13), ("cl", 2)])
                    .await;
            let client_ns = hosts.pop().expect("client");
            let nodes: Api<Node> = Api::all(client.clone());
            let mut macs = Vec::new();
            for (i, ns) in hosts.iter().enumerate() {
                let name = node_name(i);
                create(&nodes, json!({"metadata": {"name": name}})).await;
                let status = json!({"status": {
                    "addresses": [{"type": "InternalIP", "address": host_ips(11 + i as u8).0}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
                nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .expect("node status");
                macs.push(mac_of(ns, "eth0").await);
            }
            let namespaces: Api<Namespace> = Api::all(client.clone());
            create(&namespaces, json!({"metadata": {"name": "metallb-system"}})).await;
            create(
                &Api::<switchyard_api::metallb::IPAddressPool>::namespaced(
                    client.clone(),
                    "metallb-system",
                ),
                json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                "metadata": {"name": "first-pool"},
                "spec": {"addresses": ["192.168.67.120-192.168.67.200", "fd00:67::120-fd00:67::200"]}}),
            )
            .await;
            create(
                &Api::<switchyard_api::metallb::L2Advertisement>::namespaced(
                    client.clone(),
                    "metallb-system",
                ),
                json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                "metadata": {"name": "example"},
                "spec": {"ipAddressPools": ["first-pool"]}}),
            )
            .await;
            Some(Cluster {
                announcers: Vec::new(),
                vip,
                client,
                cm,
                nodes_ns: hosts,
                client_ns,
                macs,
                _server: server,
                _guard: guard,
            })
        }

        fn services(&self) -> Api<Service> {
            Api::namespaced(self.client.clone(), "default")
        }

        fn slices(&self) -> Api<EndpointSlice> {
            Api::namespaced(self.client.clone(), "default")
        }

        /// The LoadBalancer Service `web` with `externalTrafficPolicy: policy`, given the IP
        /// (as the LoadBalancer controller would).
        async fn create_service(&self, policy: &str) {
            create(
                &self.services(),
                json!({"metadata": {"name": "web"},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                         "ports": [{"port": 80}]}}),
            )
            .await;
            let lb = json!({"status": {"loadBalancer": {"ingress": [{"ip": self.vip, "ipMode": "VIP"}]}}});
            Api::<Service>::namespaced(self.cm.clone(), "default")
                .patch_status("web", &PatchParams::default(), &Patch::Merge(&lb))
                .await
                .expect("lb status");
        }

        /// The endpoints of `web`: one ready endpoint on node `i`.
        fn endpoints_on(i: usize) -> serde_json::Value {
            json!([{"addresses": ["10.244.1.5"], "nodeName": node_name(i),
                    "conditions": {"ready": true, "serving": true}}])
        }

        async fn create_slice_on(&self, i: usize) {
            create(
                &self.slices(),
                json!({"metadata": {"name": "web-1",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": Self::endpoints_on(i),
                "ports": [{"port": 80, "protocol": "TCP"}]}),
            )
            .await;
        }

        async fn move_endpoint_to(&self, i: usize) {
            let patch = json!({"endpoints": Self::endpoints_on(i)});
            self.slices()
                .patch("web-1", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("move the endpoint");
        }

        async fn label_node(&self, i: usize, key: &str) {
            let patch = json!({"metadata": {"labels": {key: ""}}});
            Api::<Node>::all(self.client.clone())
                .patch(
                    &node_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .expect("label");
        }

        fn start_announcers(&mut self) {
            for (i, ns) in self.nodes_ns.iter().enumerate() {
                let ip: IpAddr = host_ips(11 + i as u8).0.parse().expect("ip");
                let config = AnnouncerConfig::new(&node_name(i), ip);
                self.announcers.push(Some(
                    Announcer::start(self.client.clone(), ns, config).expect("announcer"),
                ));
            }
        }

        fn announcer(&self, i: usize) -> &Announcer {
            self.announcers[i].as_ref().expect("a running announcer")
        }

        /// How many IPs each node announces (0 for a dead one).
        fn announcing(&self) -> Vec<usize> {
            self.announcers
                .iter()
                .map(|a| a.as_ref().map_or(0, |a| a.metrics().announced))
                .collect()
        }

        /// Wait until node `i` alone announces.
        async fn wait_announcing_only(&self, i: usize) {
            let expected: Vec<usize> = (0..self.nodes_ns.len())
                .map(|n| usize::from(n == i))
                .collect();
            wait_for(
                Duration::from_secs(10),
                &format!("{} alone to announce", node_name(i)),
                || async { (self.announcing() == expected).then_some(()) },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}: {:?}", self.announcing()));
        }

        fn probe(&self) -> tokio::net::UdpSocket {
            probe_socket(&self.client_ns, self.vip)
        }

        /// The node whose MAC the client resolves the IP to.
        async fn resolve(&self, probe: &tokio::net::UdpSocket) -> usize {
            let mac = resolve(&self.client_ns, probe, self.vip, &self.macs).await;
            self.macs
                .iter()
                .position(|m| *m == mac)
                .expect("a node's MAC")
        }

        /// Wait until the client's entry for the IP names node `i` (moved there by its
        /// gratuitous ARP, without the client asking).
        async fn wait_neighbour_is(&self, i: usize) {
            wait_for(
                Duration::from_secs(10),
                &format!("the client's entry to move to {}", node_name(i)),
                || async {
                    (neighbour(&self.client_ns, self.vip).await.as_ref() == Some(&self.macs[i]))
                        .then_some(())
                },
            )
            .await
            .expect("moved");
        }

        /// Replies sent by every node so far.
        fn replies(&self) -> Vec<u64> {
            self.announcers
                .iter()
                .map(|a| a.as_ref().map_or(0, |a| a.metrics().replies_sent))
                .collect()
        }

        /// Node `i` dies: its agent and its link.
        async fn kill(&mut self, i: usize) {
            self.announcers[i] = None;
            self.nodes_ns[i]
                .ip(&["link", "set", "eth0", "down"])
                .await
                .expect("link down");
        }
    }

    /// Three nodes announce one LoadBalancer IP: exactly one answers; when it dies (agent and
    /// link), another takes over and the client's neighbour entry follows.
    async fn one_announcer_and_sub_second_failover(vip: &'static str) {
        let Some(mut cluster) = Cluster::start(vip).await else {
            return;
        };
        cluster.create_service("Cluster").await;
        cluster.create_slice_on(0).await;
        cluster.start_announcers();
        let probe = cluster.probe();
        let owner = cluster.resolve(&probe).await;
        let announcing = cluster.announcing();
        assert_eq!(announcing.iter().sum::<usize>(), 1, "{announcing:?}");
        assert_eq!(announcing[owner], 1);

        // The Service says who announces.
        let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
        let owner_name = node_name(owner);
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

        let killed = Instant::now();
        cluster.kill(owner).await;
        let owner_mac = cluster.macs[owner].clone();
        let new_mac = wait_for(
            Duration::from_secs(10),
            "another node takes over",
            || async {
                neighbour(&cluster.client_ns, cluster.vip)
                    .await
                    .filter(|m| *m != owner_mac && cluster.macs.contains(m))
            },
        )
        .await
        .expect("takeover");
        let took = killed.elapsed();
        eprintln!("failover: {took:?} (from {owner_mac} to {new_mac})");
        assert!(took < Duration::from_secs(2), "failover took {took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ipv4_one_announcer_and_sub_second_failover() {
        one_announcer_and_sub_second_failover(VIP).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ipv6_one_announcer_and_sub_second_failover() {
        one_announcer_and_sub_second_failover(VIP6).await;
    }

    /// `externalTrafficPolicy: Local`: only the node with the ready local endpoint announces,
    /// and when the endpoint moves to another node, so does the announcement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_policy_announces_from_the_endpoints_node_and_follows_it() {
        let Some(mut cluster) = Cluster::start(VIP).await else {
            return;
        };
        cluster.create_service("Local").await;
        cluster.create_slice_on(1).await;
        cluster.start_announcers();
        let probe = cluster.probe();
        assert_eq!(
            cluster.resolve(&probe).await,
            1,
            "node-2 hosts the endpoint"
        );
        cluster.wait_announcing_only(1).await;

        cluster.move_endpoint_to(2).await;
        cluster.wait_neighbour_is(2).await;
        cluster.wait_announcing_only(2).await;
        // Asked afresh, only node-3 answers.
        cluster
            .client_ns
            .ip(&["neigh", "flush", "dev", "eth0"])
            .await
            .expect("flush");
        let replies = cluster.replies();
        assert_eq!(cluster.resolve(&probe).await, 2);
        let after = cluster.replies();
        assert_eq!((after[0], after[1]), (replies[0], replies[1]), "{after:?}");
    }

    /// Deleting the Service stops every announcement: the client's ARP goes unanswered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_the_service_stops_all_announcements() {
        let Some(mut cluster) = Cluster::start(VIP).await else {
            return;
        };
        cluster.create_service("Cluster").await;
        cluster.create_slice_on(0).await;
        cluster.start_announcers();
        let probe = cluster.probe();
        let owner = cluster.resolve(&probe).await;
        cluster.wait_announcing_only(owner).await;

        cluster
            .services()
            .delete("web", &DeleteParams::default())
            .await
            .expect("delete");
        wait_for(Duration::from_secs(10), "no node to announce", || async {
            (cluster.announcing() == [0, 0, 0]).then_some(())
        })
        .await
        .expect("withdrawn");
        let replies = cluster.replies();
        resolution_fails(&cluster.client_ns, &probe, cluster.vip).await;
        assert_eq!(cluster.replies(), replies, "nobody answered");
    }

    /// A node labelled `node.kubernetes.io/exclude-from-external-load-balancers` never
    /// announces: not when it would win the election, not when it is the last other node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_excluded_node_never_announces() {
        let Some(mut cluster) = Cluster::start(VIP).await else {
            return;
        };
        let names: Vec<String> = (0..3).map(node_name).collect();
        let winner =
            elect(VIP.parse().expect("ip"), names.iter().map(String::as_str)).expect("a winner");
        let excluded = names.iter().position(|n| n == winner).expect("a node");
        cluster.label_node(excluded, EXCLUDE_LABEL).await;
        cluster.create_service("Cluster").await;
        // Its endpoint on the excluded node too: that is no reason to announce from it.
        cluster.create_slice_on(excluded).await;
        cluster.start_announcers();
        let probe = cluster.probe();
        let owner = cluster.resolve(&probe).await;
        assert_ne!(owner, excluded);
        cluster.wait_announcing_only(owner).await;

        cluster.kill(owner).await;
        let last = (0..3)
            .find(|i| *i != owner && *i != excluded)
            .expect("a node");
        cluster.wait_neighbour_is(last).await;
        cluster.wait_announcing_only(last).await;
        let never = cluster.announcer(excluded).metrics();
        assert_eq!((never.takeovers, never.replies_sent), (0, 0), "{never:?}");
    }
}
