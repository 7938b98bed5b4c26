//! `switchyard dns` against a `switchyard server`: the binary answers cluster names from the
//! API's Services, on loopback only.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use switchyard_testkit::{ChildGuard, ServerProcess};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn ask(addr: SocketAddr, name: &str) -> Option<Message> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut q = Message::new(0x5a5a, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket.send_to(&q.to_vec().ok()?, addr).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

#[test]
fn the_dns_binary_answers_the_kubernetes_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(binary(), dir.path(), &["--no-controllers"]).expect("server");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(binary())
        .arg("dns")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .arg("--listen")
        .arg(listen.to_string())
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dns starts");
    let _dns = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(m) = ask(listen, "kubernetes.default.svc.cluster.local.") {
            if m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty() {
                break m;
            }
        }
        assert!(Instant::now() < deadline, "no answer from switchyard dns");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ips: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(ips, ["10.96.0.1"]);
    let missing = ask(listen, "nope.default.svc.cluster.local.").expect("reply");
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
}

/// One A query for `name` to `server`, sent from inside `ns`.
fn ask_in(ns: &switchyard_netns::NetNs, server: SocketAddr, name: &str) -> Option<Message> {
    let name = name.to_string();
    ns.run(move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let mut q = Message::new(0x1234, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii(&name).ok()?, RecordType::A));
        socket.send_to(&q.to_vec().ok()?, server).ok()?;
        let mut buf = [0u8; 4096];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Message::from_vec(&buf[..n]).ok()
    })
    .ok()
    .flatten()
}

/// GET `path` over HTTP/1.1 from inside `ns`: (status, body).
async fn http_get_in(
    ns: &switchyard_netns::NetNs,
    addr: SocketAddr,
    path: &str,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = ns.connect_tcp(addr, Duration::from_secs(2)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: dns\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// `switchyard dns --netns N --advertise-address A`: the sockets are inside the namespace, the
/// instance is a ready endpoint of kube-system/kube-dns while it runs, it removes slices of
/// instances whose Lease expired, and it removes its own slice and Lease on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_instance_in_a_namespace_is_a_kube_dns_endpoint_until_it_stops() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};
    use switchyard_testkit::wait_for;

    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: cannot create network namespaces here");
        return;
    }
    const WAIT: Duration = Duration::from_secs(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(binary(), dir.path(), &["--no-controllers"]).expect("server");
    // Declared before the DNS child: dropped after it, so the namespace outlives the process.
    let mut namespaces = switchyard_netns::NsGuard::new();
    let ns_name = switchyard_netns::unique_name("dns");
    let ns = namespaces.create(&ns_name).await.expect("netns");
    ns.ip(&["addr", "add", "10.250.0.1/32", "dev", "lo"])
        .await
        .expect("address in the namespace");
    let child = Command::new(binary())
        .arg("dns")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["--netns", &ns_name])
        .args(["--listen", "10.250.0.1:53"])
        .args(["--metrics-listen", "10.250.0.1:9153"])
        .args(["--advertise-address", "10.250.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dns starts");
    let mut dns = ChildGuard(child);

    let client = switchyard_testkit::client_from_kubeconfig(&server.kubeconfig())
        .await
        .expect("client");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");

    // The instance answers inside the namespace.
    let dns_addr: SocketAddr = "10.250.0.1:53".parse().expect("addr");
    let answer = wait_for(WAIT, "an answer inside the namespace", || async {
        ask_in(&ns, dns_addr, "kubernetes.default.svc.cluster.local.")
            .filter(|m| m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
    })
    .await
    .expect("answer");
    assert!(matches!(&answer.answers[0].data, RData::A(a) if a.0.to_string() == "10.96.0.1"));

    // Its endpoint is ready once synced, with the Service's port names.
    let slice = wait_for(WAIT, "a ready kube-dns endpoint", || async {
        let slice = slices.get_opt("kube-dns-10-250-0-1").await.ok()??;
        let ready = slice.endpoints.first()?.conditions.as_ref()?.ready?;
        ready.then_some(slice)
    })
    .await
    .expect("slice");
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("kube-dns")
    );
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("switchyard-dns")
    );
    assert_eq!(slice.endpoints[0].addresses, ["10.250.0.1"]);
    let ports: Vec<(String, i32, String)> = slice
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".to_string(), 53, "TCP".to_string()),
            ("metrics".to_string(), 9153, "TCP".to_string()),
        ]
    );
    assert!(leases
        .get_opt("switchyard-dns-10-250-0-1")
        .await
        .expect("get lease")
        .is_some());

    // Metrics and readiness, inside the namespace.
    let metrics_addr: SocketAddr = "10.250.0.1:9153".parse().expect("addr");
    let (status, _) = http_get_in(&ns, metrics_addr, "/ready")
        .await
        .expect("/ready");
    assert_eq!(status, 200);
    let (status, text) = http_get_in(&ns, metrics_addr, "/metrics")
        .await
        .expect("/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "coredns_dns_requests_total{server=\"dns://10.250.0.1:53\",zone=\"cluster.local.\""
        ),
        "{text}"
    );

    // A crashed instance: its slice stays, its Lease expired an hour ago. The live one removes it.
    let stale_lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "switchyard-dns-crashed"},
        "spec": {"holderIdentity": "crashed", "leaseDurationSeconds": 15,
                 "renewTime": "2020-01-01T00:00:00.000000Z"}
    }))
    .expect("lease");
    leases
        .create(&PostParams::default(), &stale_lease)
        .await
        .expect("create stale lease");
    let mut stale_slice = slice.clone();
    stale_slice.metadata = kube::api::ObjectMeta {
        name: Some("kube-dns-crashed".into()),
        labels: slice.metadata.labels.clone(),
        ..Default::default()
    };
    stale_slice.endpoints[0].addresses = vec!["10.250.0.2".into()];
    slices
        .create(&PostParams::default(), &stale_slice)
        .await
        .expect("create stale slice");
    wait_for(WAIT, "the crashed instance's slice removed", || async {
        slices
            .get_opt("kube-dns-crashed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("stale slice removed");
    assert!(slices
        .get_opt("kube-dns-10-250-0-1")
        .await
        .expect("get")
        .is_some());

    // SIGTERM: the instance leaves the Service's endpoints before exiting.
    let status = Command::new("kill")
        .args(["-TERM", &dns.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = dns.0.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "the dns process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert!(slices
        .get_opt("kube-dns-10-250-0-1")
        .await
        .expect("get")
        .is_none());
    assert!(leases
        .get_opt("switchyard-dns-10-250-0-1")
        .await
        .expect("get")
        .is_none());
}
