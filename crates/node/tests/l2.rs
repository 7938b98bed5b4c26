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
    let target: std::net::SocketAddr = format!("{vip}:9").parse().expect("addr");
    let resolved = wait_for(
        Duration::from_secs(5),
        "the client resolves the IP",
        || async {
            let _ = probe.send_to(b"x", target).await;
            neighbour(client, vip)
                .await
                .filter(|m| *m == mac_a || *m == mac_b)
        },
    )
    .await
    .expect("resolved");
    assert_eq!(resolved, mac_a, "the announcing node answered");
    assert!(speaker_a.metrics().replies_sent >= 1);
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
    assert!(speaker_b.metrics().gratuitous_sent >= 1);
    assert_eq!(speaker_b.metrics().takeovers, 1);

    // Only b answers fresh requests now: flush the entry and resolve again.
    client
        .ip(&["neigh", "flush", "dev", "eth0"])
        .await
        .expect("flush");
    let replies_a = speaker_a.metrics().replies_sent;
    let again = wait_for(
        Duration::from_secs(5),
        "the client resolves again",
        || async {
            let _ = probe.send_to(b"x", target).await;
            neighbour(client, vip)
                .await
                .filter(|m| *m == mac_a || *m == mac_b)
        },
    )
    .await
    .expect("resolved");
    assert_eq!(again, mac_b);
    assert_eq!(speaker_a.metrics().replies_sent, replies_a);
    let announced: BTreeSet<IpAddr> = [vip.parse().expect("ip")].into();
    assert_eq!(speaker_b.metrics().announced, announced.len());
}
