//! How fast a new Service resolves (issue 6: "within 100 ms of its creation", p99): an
//! in-process API server, our watches and our server on 127.0.0.1. N Services (default 200,
//! `PROPAGATION_SERVICES`) are created one after another; for each, the time from the create
//! call's return to the first NOERROR answer with its ClusterIP (polled over UDP). Side by side,
//! the baseline: the time from the same return to the Service's event on a plain kube-rs watch
//! of its own, the floor any watch-fed DNS can reach.
//!
//! Run: `cargo bench -p switchyard-dns --bench propagation`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use switchyard_dns::forward::{Forwarder, ForwarderConfig};
use switchyard_dns::server::Dns;
use switchyard_dns::sources::run_watches;
use switchyard_dns::zone::{Zone, ZoneConfig};
use switchyard_testkit::{wait_for, InProcessServer};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Whether `server` answers `name` with NOERROR and at least one record, within 20 ms.
async fn resolves(socket: &UdpSocket, server: SocketAddr, name: &Name, id: u16) -> bool {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(name.clone(), RecordType::A));
    let Ok(bytes) = query.to_vec() else {
        return false;
    };
    if socket.send_to(&bytes, server).await.is_err() {
        return false;
    }
    let mut buffer = [0; 1500];
    let deadline = Instant::now() + Duration::from_millis(20);
    while let Ok(Ok((len, _))) =
        tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer)).await
    {
        if let Ok(reply) = Message::from_vec(&buffer[..len]) {
            if reply.metadata.id == id {
                return reply.metadata.response_code == ResponseCode::NoError
                    && !reply.answers.is_empty();
            }
        }
    }
    false
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(label: &str, mut values: Vec<Duration>) {
    values.sort();
    println!(
        "{label:<40} p50 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}  (n={})",
        percentile(&values, 50.0),
        percentile(&values, 99.0),
        values.last().copied().unwrap_or_default(),
        values.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n: usize = std::env::var("PROPAGATION_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let api = InProcessServer::start().await?;
    let client = api.client().await?;

    let dns = Arc::new(Dns::new(
        Zone::new(ZoneConfig::default()),
        Forwarder::new(ForwarderConfig::default()),
        Vec::new(),
    ));
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let server = udp.local_addr()?;
    let mut tasks = vec![
        tokio::spawn(Arc::clone(&dns).serve_udp(udp)),
        tokio::spawn(run_watches(client.clone(), Arc::clone(&dns))),
    ];
    wait_for(Duration::from_secs(20), "the zone synced", || async {
        dns.is_synced().then_some(())
    })
    .await?;

    // The baseline: a plain watch of Services, noting when each name's event arrives.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        let services = Api::<Service>::all(client.clone());
        tasks.push(tokio::spawn(async move {
            let mut events = watcher(services, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                if let watcher::Event::Apply(service) = event {
                    if let Some(name) = service.metadata.name {
                        seen.lock()
                            .expect("not poisoned")
                            .entry(name)
                            .or_insert_with(Instant::now);
                    }
                }
            }
        }));
    }

    let api_services = Api::<Service>::namespaced(client, "default");
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let (mut dns_latency, mut watch_latency, mut create_latency) =
        (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("prop-{i}");
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }))?;
        let before = Instant::now();
        api_services
            .create(&PostParams::default(), &service)
            .await
            .context("create")?;
        let created = Instant::now();
        create_latency.push(created - before);
        let fqdn = Name::from_ascii(format!("{name}.default.svc.cluster.local."))?;
        let mut id: u16 = 0;
        loop {
            id = id.wrapping_add(1);
            if resolves(&socket, server, &fqdn, id).await {
                dns_latency.push(created.elapsed());
                break;
            }
            anyhow::ensure!(
                created.elapsed() < Duration::from_secs(10),
                "{name} never resolved"
            );
        }
        let watched = wait_for(Duration::from_secs(10), "the watch event", || async {
            seen.lock().expect("not poisoned").get(&name).copied()
        })
        .await?;
        watch_latency.push(watched.saturating_duration_since(created));
    }
    println!(
        "propagation: {n} services created one after another (in-process API server, memory store)"
    );
    summary("create call (API round trip)", create_latency);
    summary("baseline: plain kube-rs watch event", watch_latency);
    println!("  (0 ns: the watch event arrived before the create call returned)");
    let p99_goal = Duration::from_millis(100);
    let mut sorted = dns_latency.clone();
    sorted.sort();
    summary("switchyard dns: first NOERROR answer", dns_latency);
    println!(
        "goal p99 < {p99_goal:?}: {}",
        if percentile(&sorted, 99.0) < p99_goal {
            "met"
        } else {
            "NOT met"
        }
    );
    tasks.iter().for_each(|t| t.abort());
    Ok(())
}
