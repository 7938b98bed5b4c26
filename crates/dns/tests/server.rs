//! The DNS server end to end: an in-process API server, the watches, and real UDP/TCP sockets on
//! 127.0.0.1, with a tiny fake upstream for forwarded names.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use kube::api::{Api, DeleteParams, PostParams};
use switchyard_dns::forward::{Forwarder, ForwarderConfig};
use switchyard_dns::server::Dns;
use switchyard_dns::sources::run_watches;
use switchyard_dns::zone::{Zone, ZoneConfig};
use switchyard_testkit::{wait_for, InProcessServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// What the fake upstream answers for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
const WAIT: Duration = Duration::from_secs(20);

/// A DNS server on 127.0.0.1 (UDP and TCP on their own ports), its tasks aborted on drop.
struct Running {
    dns: Arc<Dns>,
    udp: SocketAddr,
    tcp: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// A fake upstream on 127.0.0.1 answering A [`UPSTREAM_ANSWER`] to everything over UDP.
async fn fake_upstream() -> Result<(SocketAddr, JoinHandle<()>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buffer = vec![0; 65_535];
        while let Ok((len, source)) = socket.recv_from(&mut buffer).await {
            let Ok(request) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let mut reply = Message::response(request.metadata.id, OpCode::Query);
            reply.metadata.recursion_desired = request.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            reply.queries = request.queries.clone();
            if let Some(question) = request.queries.first() {
                reply.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A(UPSTREAM_ANSWER)),
                ));
            }
            if request.edns.is_some() {
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                reply.set_edns(edns);
            }
            let bytes = reply.to_vec().expect("encodable");
            let _ = socket.send_to(&bytes, source).await;
        }
    });
    Ok((addr, task))
}

/// Starts the DNS server; with `client`, also the watches feeding it.
async fn start_dns(client: Option<kube::Client>) -> Result<Running> {
    let (upstream, upstream_task) = fake_upstream().await?;
    let forwarder = Forwarder::new(ForwarderConfig {
        upstreams: vec![upstream],
        ..ForwarderConfig::default()
    });
    let dns = Arc::new(Dns::new(
        Zone::new(ZoneConfig::default()),
        forwarder,
        vec!["127.0.0.0/8".parse()?],
    ));
    let udp_socket = UdpSocket::bind("127.0.0.1:0").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (udp, tcp) = (udp_socket.local_addr()?, listener.local_addr()?);
    let mut tasks = vec![
        upstream_task,
        tokio::spawn(Arc::clone(&dns).serve_udp(udp_socket)),
        tokio::spawn(Arc::clone(&dns).serve_tcp(listener)),
    ];
    if let Some(client) = client {
        tasks.push(tokio::spawn(run_watches(client, Arc::clone(&dns))));
    }
    Ok(Running {
        dns,
        udp,
        tcp,
        tasks,
    })
}

fn query(name: &str, record_type: RecordType) -> Message {
    let mut query = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii(name).expect("valid name"),
        record_type,
    ));
    query
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(4242);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn ask_udp(server: SocketAddr, query: &Message) -> Result<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&query.to_vec()?, server).await?;
    let mut buffer = vec![0; 65_535];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .context("no UDP reply")??;
    let reply = Message::from_vec(&buffer[..len])?;
    anyhow::ensure!(reply.metadata.id == query.metadata.id, "reply id differs");
    Ok(reply)
}

async fn ask_tcp_on(stream: &mut TcpStream, query: &Message) -> Result<Message> {
    let bytes = query.to_vec()?;
    stream
        .write_all(&u16::try_from(bytes.len())?.to_be_bytes())
        .await?;
    stream.write_all(&bytes).await?;
    let mut len = [0; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    let reply = Message::from_vec(&reply)?;
    anyhow::ensure!(reply.metadata.id == query.metadata.id, "reply id differs");
    Ok(reply)
}

async fn ask_tcp(server: SocketAddr, query: &Message) -> Result<Message> {
    let mut stream = TcpStream::connect(server).await?;
    ask_tcp_on(&mut stream, query).await
}

fn addresses(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(A(ip)) => Some(IpAddr::V4(*ip)),
            _ => None,
        })
        .collect()
}

async fn create_service(client: &kube::Client, name: &str, headless: bool) -> Result<String> {
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    let mut spec = serde_json::json!({
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "selector": {"app": name},
    });
    if headless {
        spec["clusterIP"] = "None".into();
    }
    let service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))?;
    let created = services.create(&PostParams::default(), &service).await?;
    Ok(created
        .spec
        .and_then(|spec| spec.cluster_ip)
        .unwrap_or_default())
}

/// Resolves `name` A over UDP until it has an answer.
async fn resolved(running: &Running, name: &str) -> Result<Message> {
    wait_for(WAIT, name, || async {
        let reply = ask_udp(running.udp, &query(name, RecordType::A))
            .await
            .ok()?;
        (reply.metadata.response_code == ResponseCode::NoError && !reply.answers.is_empty())
            .then_some(reply)
    })
    .await
}

#[tokio::test]
async fn zone_names_answer_servfail_until_the_watches_have_synced() -> Result<()> {
    let running = start_dns(None).await?;
    let reply = ask_udp(
        running.udp,
        &query("kubernetes.default.svc.cluster.local.", RecordType::A),
    )
    .await?;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());
    assert!(!running.dns.is_synced());

    // Reverse names too: the PTR of a Service IP is not known before the sync either.
    let reverse = ask_udp(
        running.udp,
        &query("1.0.96.10.in-addr.arpa.", RecordType::PTR),
    )
    .await?;
    assert_eq!(reverse.metadata.response_code, ResponseCode::ServFail);
    Ok(())
}

#[tokio::test]
async fn a_cluster_ip_service_resolves_over_udp_and_tcp_with_aa_and_its_deletion_is_nxdomain(
) -> Result<()> {
    let api = InProcessServer::start().await?;
    let client = api.client().await?;
    let running = start_dns(Some(client.clone())).await?;
    wait_for(WAIT, "sync", || async {
        running.dns.is_synced().then_some(())
    })
    .await?;

    // The API server's own Service takes the first address of the service range.
    let kubernetes = resolved(&running, "kubernetes.default.svc.cluster.local.").await?;
    assert_eq!(addresses(&kubernetes), vec![IpAddr::from([10, 96, 0, 1])]);
    let reverse = ask_udp(
        running.udp,
        &query("1.0.96.10.in-addr.arpa.", RecordType::PTR),
    )
    .await?;
    assert!(reverse.metadata.authoritative);
    let targets: Vec<String> = reverse
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::PTR(target) => Some(target.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(targets, ["kubernetes.default.svc.cluster.local."]);

    let cluster_ip: IpAddr = create_service(&client, "web", false).await?.parse()?;
    let name = "web.default.svc.cluster.local.";
    let over_udp = resolved(&running, name).await?;
    assert_eq!(addresses(&over_udp), vec![cluster_ip]);
    assert!(over_udp.metadata.authoritative);
    assert!(over_udp.metadata.recursion_available);
    assert!(over_udp.metadata.recursion_desired);
    assert_eq!(over_udp.queries, query(name, RecordType::A).queries);

    let over_tcp = ask_tcp(running.tcp, &query(name, RecordType::A)).await?;
    assert_eq!(addresses(&over_tcp), vec![cluster_ip]);
    assert!(over_tcp.metadata.authoritative);

    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    services.delete("web", &DeleteParams::default()).await?;
    wait_for(WAIT, "NXDOMAIN after deletion", || async {
        let reply = ask_udp(running.udp, &query(name, RecordType::A))
            .await
            .ok()?;
        (reply.metadata.response_code == ResponseCode::NXDomain).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_large_headless_answer_is_truncated_over_udp_and_whole_over_tcp() -> Result<()> {
    let api = InProcessServer::start().await?;
    let client = api.client().await?;
    let running = start_dns(Some(client.clone())).await?;
    create_service(&client, "many", true).await?;
    let endpoints: Vec<_> = (1..=60)
        .map(|i| serde_json::json!({"addresses": [format!("10.244.1.{i}")], "conditions": {"ready": true}}))
        .collect();
    let slice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "many-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "many"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))?;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    slices.create(&PostParams::default(), &slice).await?;

    let name = "many.default.svc.cluster.local.";
    wait_for(WAIT, "60 addresses", || async {
        let reply = ask_tcp(running.tcp, &query(name, RecordType::A))
            .await
            .ok()?;
        (reply.answers.len() == 60).then_some(())
    })
    .await?;
    // Several queries on one connection.
    let mut stream = TcpStream::connect(running.tcp).await?;
    let _first = ask_tcp_on(&mut stream, &query(name, RecordType::A)).await?;
    let whole = ask_tcp_on(&mut stream, &query(name, RecordType::A)).await?;
    assert_eq!(whole.answers.len(), 60);
    assert!(!whole.metadata.truncation);
    assert!(whole.metadata.authoritative);

    let small = ask_udp(running.udp, &query(name, RecordType::A)).await?;
    assert!(small.metadata.truncation);
    assert!(!small.answers.is_empty() && small.answers.len() < 60);
    assert!(small.to_vec()?.len() <= 512);

    // With EDNS(0) the client's larger payload holds everything; our OPT says 1232.
    let mut with_edns = query(name, RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.set_edns(edns);
    let big = ask_udp(running.udp, &with_edns).await?;
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 60);
    assert_eq!(big.edns.as_ref().map(Edns::max_payload), Some(1232));
    Ok(())
}

#[tokio::test]
async fn zone_transfers_are_refused() -> Result<()> {
    let running = start_dns(None).await?;
    running.dns.mark_synced();
    let reply = ask_tcp(running.tcp, &query("cluster.local.", RecordType::AXFR)).await?;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.answers.is_empty());
    Ok(())
}

#[tokio::test]
async fn other_names_are_forwarded_only_for_clients_in_the_recursion_networks() -> Result<()> {
    let running = start_dns(None).await?;
    let name = "example.org.";
    let forwarded = ask_udp(running.udp, &query(name, RecordType::A)).await?;
    assert_eq!(forwarded.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&forwarded), vec![IpAddr::V4(UPSTREAM_ANSWER)]);
    assert!(!forwarded.metadata.authoritative);

    let outsider: SocketAddr = "192.0.2.1:5353".parse()?;
    let insider: SocketAddr = "127.0.0.1:5353".parse()?;
    // The same bytes from an insider first: the answer comes from the forwarder's cache, and the
    // server keeps it encoded; the outsider must still not get it.
    let same_query = query(name, RecordType::A).to_vec()?;
    for _ in 0..2 {
        let bytes = running
            .dns
            .handle(&same_query, insider, true)
            .await
            .context("a reply")?;
        assert_eq!(
            addresses(&Message::from_vec(&bytes)?),
            vec![IpAddr::V4(UPSTREAM_ANSWER)]
        );
    }
    let bytes = running
        .dns
        .handle(&same_query, outsider, true)
        .await
        .context("a reply")?;
    let refused = Message::from_vec(&bytes)?;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(refused.answers.is_empty());
    Ok(())
}

#[tokio::test]
async fn sockets_bound_together_share_one_port_and_each_answers_its_clients() -> Result<()> {
    let dns = Arc::new(Dns::new(
        Zone::new(ZoneConfig::default()),
        Forwarder::new(ForwarderConfig::default()),
        Vec::new(),
    ));
    dns.mark_synced();
    let sockets = switchyard_dns::server::bind_udp("127.0.0.1:0".parse()?, 2)?;
    let ports: Vec<u16> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0], ports[1], "one port for both sockets");
    let server = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(Arc::clone(&dns).serve_udp(socket)))
        .collect();
    // Clients on many source ports: the kernel hashes them over both sockets; every one of
    // them is answered.
    for _ in 0..16 {
        let reply = ask_udp(
            server,
            &query("dns-version.cluster.local.", RecordType::TXT),
        )
        .await?;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
    }
    tasks.iter().for_each(JoinHandle::abort);
    Ok(())
}

#[tokio::test]
async fn a_burst_of_queries_is_answered_each_with_its_own_id_and_question() -> Result<()> {
    let running = start_dns(None).await?;
    running.dns.mark_synced();
    // More queries than one batch takes (64), sent before reading any reply, from one client:
    // they wait on the server's socket together (100 small datagrams fit its receive buffer).
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    let names = ["dns-version.cluster.local.", "missing.cluster.local."];
    let mut asked = std::collections::HashMap::new();
    for n in 0..100u16 {
        let mut query = query(names[usize::from(n) % 2], RecordType::TXT);
        query.metadata.id = n;
        client.send_to(&query.to_vec()?, running.udp).await?;
        asked.insert(n, names[usize::from(n) % 2]);
    }
    let mut buffer = vec![0; 65_535];
    while !asked.is_empty() {
        let (len, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buffer))
            .await
            .with_context(|| format!("{} queries unanswered", asked.len()))??;
        let reply = Message::from_vec(&buffer[..len])?;
        let name = asked
            .remove(&reply.metadata.id)
            .context("a reply to no query, or a second one")?;
        assert_eq!(reply.queries[0].name().to_string(), name);
        let rcode = if name.starts_with("dns-version") {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        assert_eq!(reply.metadata.response_code, rcode);
    }
    Ok(())
}

#[tokio::test]
async fn dropping_serve_udp_closes_its_socket() -> Result<()> {
    let dns = Arc::new(Dns::new(
        Zone::new(ZoneConfig::default()),
        Forwarder::new(ForwarderConfig::default()),
        Vec::new(),
    ));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let task = tokio::spawn(Arc::clone(&dns).serve_udp(socket));
    // Answered (SERVFAIL before the sync): the socket is being served.
    let reply = ask_udp(addr, &query("dns-version.cluster.local.", RecordType::TXT)).await?;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    task.abort();
    // The port is free again once nothing holds the socket any more.
    wait_for(
        WAIT,
        "the socket to close after its serve_udp was dropped",
        || async { std::net::UdpSocket::bind(addr).ok() },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_idle_tcp_connection_is_closed() -> Result<()> {
    let dns = Arc::new(
        Dns::new(
            Zone::new(ZoneConfig::default()),
            Forwarder::new(ForwarderConfig::default()),
            Vec::new(),
        )
        .with_tcp_idle_timeout(Duration::from_millis(200)),
    );
    dns.mark_synced();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(Arc::clone(&dns).serve_tcp(listener));
    let mut stream = TcpStream::connect(addr).await?;
    let reply = ask_tcp_on(
        &mut stream,
        &query("nothing.default.svc.cluster.local.", RecordType::A),
    )
    .await?;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let mut byte = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await?;
    assert_eq!(read?, 0, "the server closes the idle connection");
    server.abort();
    Ok(())
}

#[tokio::test]
async fn forwarding_without_an_upstream_is_servfail() -> Result<()> {
    let dns = Dns::new(
        Zone::new(ZoneConfig::default()),
        Forwarder::new(ForwarderConfig::default()),
        vec!["127.0.0.0/8".parse()?],
    );
    let client: SocketAddr = "127.0.0.1:5353".parse()?;
    let bytes = dns
        .handle(
            &query("example.org.", RecordType::A).to_vec()?,
            client,
            false,
        )
        .await
        .context("a reply")?;
    let reply = Message::from_vec(&bytes)?;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.metadata.recursion_available);
    Ok(())
}

#[tokio::test]
async fn malformed_and_unsupported_queries_get_formerr_notimp_or_nothing() -> Result<()> {
    let running = start_dns(None).await?;
    let client: SocketAddr = "127.0.0.1:5353".parse()?;

    assert_eq!(running.dns.handle(&[1, 2, 3], client, true).await, None);

    // A valid header announcing a question that is not there.
    let mut truncated = query("example.org.", RecordType::A).to_vec()?;
    truncated.truncate(14);
    let formerr = Message::from_vec(
        &running
            .dns
            .handle(&truncated, client, true)
            .await
            .context("reply")?,
    )?;
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);

    let mut two = query("a.example.org.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("b.example.org.")?,
        RecordType::A,
    ));
    let reply = Message::from_vec(
        &running
            .dns
            .handle(&two.to_vec()?, client, true)
            .await
            .context("reply")?,
    )?;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    let mut status = query("example.org.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    let reply = Message::from_vec(
        &running
            .dns
            .handle(&status.to_vec()?, client, true)
            .await
            .context("reply")?,
    )?;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);

    // EDNS version 1 is not ours: BADVERS, with our version-0 OPT.
    let mut with_opt = query("example.org.", RecordType::A);
    with_opt.set_edns(Edns::new());
    let mut edns_v1 = with_opt.to_vec()?;
    // The OPT record ends the message: TYPE(2) CLASS(2) TTL(4: ext-rcode, version, flags) RDLEN(2).
    let version_at = edns_v1.len() - 5;
    edns_v1[version_at] = 1;
    let reply = Message::from_vec(
        &running
            .dns
            .handle(&edns_v1, client, true)
            .await
            .context("reply")?,
    )?;
    // 16 is BADVERS in an OPT reply (RFC 6891); hickory decodes 16 as BADSIG, its TSIG twin.
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert_eq!(reply.edns.as_ref().map(Edns::version), Some(0));

    // Responses are never answered.
    let mut response = query("example.org.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        running.dns.handle(&response.to_vec()?, client, true).await,
        None
    );
    Ok(())
}

/// One HTTP/1.1 GET of `path` on `addr`: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: dns\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn metrics_count_queries_under_coredns_names_and_ready_waits_for_the_sync() -> Result<()> {
    let api = InProcessServer::start().await?;
    let client = api.client().await?;
    let running = start_dns(None).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let metrics = listener.local_addr()?;
    let http = tokio::spawn(switchyard_dns::metrics::serve_http(
        Arc::clone(&running.dns),
        listener,
    ));
    assert_eq!(http_get(metrics, "/healthz").await?.0, 200);
    assert_eq!(http_get(metrics, "/ready").await?.0, 503, "not synced yet");

    let watches = tokio::spawn(run_watches(client, Arc::clone(&running.dns)));
    wait_for(WAIT, "/ready 200 after the first sync", || async {
        (http_get(metrics, "/ready").await.ok()?.0 == 200).then_some(())
    })
    .await?;
    let kubernetes = query("kubernetes.default.svc.cluster.local.", RecordType::A);
    ask_udp(running.udp, &kubernetes).await?;
    ask_tcp(running.tcp, &kubernetes).await?;
    ask_udp(
        running.udp,
        &query("nope.default.svc.cluster.local.", RecordType::AAAA),
    )
    .await?;
    // Twice: the second is a cache hit.
    ask_udp(running.udp, &query("example.com.", RecordType::A)).await?;
    ask_udp(running.udp, &query("example.com.", RecordType::A)).await?;

    let (status, text) = http_get(metrics, "/metrics").await?;
    assert_eq!(status, 200);
    let value = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    };
    let server = "server=\"dns://:53\"";
    for (series, expected) in [
        (format!("coredns_dns_requests_total{{{server},zone=\"cluster.local.\",view=\"\",proto=\"udp\",family=\"1\",type=\"A\"}}"), 1.0),
        (format!("coredns_dns_requests_total{{{server},zone=\"cluster.local.\",view=\"\",proto=\"tcp\",family=\"1\",type=\"A\"}}"), 1.0),
        (format!("coredns_dns_requests_total{{{server},zone=\"cluster.local.\",view=\"\",proto=\"udp\",family=\"1\",type=\"AAAA\"}}"), 1.0),
        (format!("coredns_dns_requests_total{{{server},zone=\".\",view=\"\",proto=\"udp\",family=\"1\",type=\"A\"}}"), 2.0),
        (format!("coredns_dns_responses_total{{{server},zone=\"cluster.local.\",view=\"\",rcode=\"NOERROR\",plugin=\"kubernetes\"}}"), 2.0),
        (format!("coredns_dns_responses_total{{{server},zone=\"cluster.local.\",view=\"\",rcode=\"NXDOMAIN\",plugin=\"kubernetes\"}}"), 1.0),
        (format!("coredns_dns_responses_total{{{server},zone=\".\",view=\"\",rcode=\"NOERROR\",plugin=\"forward\"}}"), 2.0),
        (format!("coredns_dns_request_duration_seconds_count{{{server},zone=\"cluster.local.\",view=\"\",type=\"A\"}}"), 2.0),
        (format!("coredns_cache_hits_total{{{server},type=\"success\""), 1.0),
        (format!("coredns_cache_misses_total{{{server}"), 1.0),
        (format!("coredns_cache_entries{{{server},type=\"success\""), 1.0),
        ("coredns_forward_requests_total{to=".to_string(), 1.0),
        ("coredns_forward_responses_total{to=".to_string(), 1.0),
        ("switchyard_dns_zone_synced ".to_string(), 1.0),
        ("coredns_build_info{".to_string(), 1.0),
    ] {
        assert_eq!(value(&series), Some(expected), "{series} in\n{text}");
    }
    watches.abort();
    http.abort();
    Ok(())
}

/// The answer section as `TYPE data` lines, sorted (records of one set come in any order).
fn rendered_answers(reply: &Message) -> Vec<String> {
    let mut lines: Vec<String> = reply
        .answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    lines.sort();
    lines
}

/// Record shapes of the Kubernetes DNS specification 1.1.0 fed through the real watches of an
/// API server and asked over the wire: UDP and TCP must give the same rcode, AA bit and
/// answers, and negative answers carry the zone's SOA. (Every shape in detail, pods by
/// hostname/subdomain included, is in the zone's own table test.)
#[tokio::test]
async fn specification_record_shapes_answer_alike_over_udp_and_tcp() -> Result<()> {
    let api = InProcessServer::start().await?;
    let client = api.client().await?;
    let web_ip = create_service(&client, "web", false).await?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    for service in [
        serde_json::json!({"metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
        serde_json::json!({"metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
    ] {
        services
            .create(&PostParams::default(), &serde_json::from_value(service)?)
            .await?;
    }
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    let slice = serde_json::json!({
        "metadata": {"name": "db-manual", "labels": {"kubernetes.io/service-name": "db",
                     "endpointslice.kubernetes.io/managed-by": "test"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.6"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.7"], "conditions": {"ready": false}}
        ],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    });
    slices
        .create(&PostParams::default(), &serde_json::from_value(slice)?)
        .await?;
    let running = start_dns(Some(client)).await?;
    resolved(&running, "db-0.db.default.svc.cluster.local.").await?;
    resolved(&running, "web.default.svc.cluster.local.").await?;

    let web_ptr = {
        let octets: Vec<&str> = web_ip.split('.').rev().collect();
        format!("{}.in-addr.arpa.", octets.join("."))
    };
    let web = "web.default.svc.cluster.local.";
    let cases: Vec<(&str, RecordType, ResponseCode, Vec<String>)> = vec![
        ("dns-version.cluster.local.", RecordType::TXT, ResponseCode::NoError,
            vec!["dns-version.cluster.local. TXT 1.1.0".into()]),
        (web, RecordType::A, ResponseCode::NoError, vec![format!("{web} A {web_ip}")]),
        ("WEB.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError,
            vec![format!("WEB.default.svc.cluster.local. A {web_ip}")]),
        (web, RecordType::AAAA, ResponseCode::NoError, vec![]),
        ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV, ResponseCode::NoError,
            vec![format!("_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 {web}")]),
        (&web_ptr, RecordType::PTR, ResponseCode::NoError, vec![format!("{web_ptr} PTR {web}")]),
        ("db.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec![
            "db.default.svc.cluster.local. A 10.244.1.5".into(),
            "db.default.svc.cluster.local. A 10.244.1.6".into(),
        ]),
        ("db-0.db.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError,
            vec!["db-0.db.default.svc.cluster.local. A 10.244.1.5".into()]),
        ("10-244-1-6.db.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError,
            vec!["10-244-1-6.db.default.svc.cluster.local. A 10.244.1.6".into()]),
        ("10-244-1-7.db.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain, vec![]),
        ("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV, ResponseCode::NoError, vec![
            "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 10-244-1-6.db.default.svc.cluster.local.".into(),
            "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-0.db.default.svc.cluster.local.".into(),
        ]),
        ("5.1.244.10.in-addr.arpa.", RecordType::PTR, ResponseCode::NoError,
            vec!["5.1.244.10.in-addr.arpa. PTR db-0.db.default.svc.cluster.local.".into()]),
        ("ext.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec![
            format!("ext.default.svc.cluster.local. CNAME {web}"),
            format!("{web} A {web_ip}"),
        ]),
        ("10-244-0-9.default.pod.cluster.local.", RecordType::A, ResponseCode::NoError,
            vec!["10-244-0-9.default.pod.cluster.local. A 10.244.0.9".into()]),
        ("nope.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain, vec![]),
        ("default.svc.cluster.local.", RecordType::A, ResponseCode::NoError, vec![]),
    ];
    for (name, record_type, rcode, expected) in cases {
        let question = query(name, record_type);
        let udp = ask_udp(running.udp, &question).await?;
        let tcp = ask_tcp(running.tcp, &question).await?;
        for (transport, reply) in [("udp", &udp), ("tcp", &tcp)] {
            let what = format!("{name} {record_type} over {transport}");
            assert_eq!(reply.metadata.response_code, rcode, "{what}");
            assert!(reply.metadata.authoritative, "{what}: AA");
            let mut expected = expected.clone();
            expected.sort();
            assert_eq!(rendered_answers(reply), expected, "{what}");
            if expected.is_empty() {
                assert!(
                    reply
                        .authorities
                        .iter()
                        .any(|r| r.record_type() == RecordType::SOA),
                    "{what}: SOA in the authority section"
                );
            }
        }
        assert_eq!(
            rendered_answers(&udp),
            rendered_answers(&tcp),
            "{name} {record_type}"
        );
    }
    Ok(())
}
