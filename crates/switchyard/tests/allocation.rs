//! Black-box tests of Service ClusterIP and NodePort allocation and of the durability of
//! acknowledged writes: the real `switchyard server` binary runs as a child process over its
//! embedded SQLite store, and a kube-rs client talks to it over HTTPS, as any Kubernetes client
//! would. The server is killed with SIGKILL (never stopped politely) wherever a test restarts it,
//! because that is the restart that must not lose a write or hand out an IP twice.
//!
//! What Kubernetes promises and these tests hold Switchyard to: every Service that needs a
//! ClusterIP gets one no other Service has, from the configured range, never the `kubernetes`
//! Service's; NodePorts are likewise unique; a write acknowledged with 201 survives a crash; and
//! IPs and ports come back to the pool when a Service is deleted or stops needing them
//! (`pkg/registry/core/service/storage` in kubernetes/kubernetes).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use switchyard_testkit::{client_from_kubeconfig, ServerProcess};

/// The default `--service-cluster-ip-range` and the `kubernetes` Service's address in it.
const DEFAULT_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// Start the server on `dir` and connect a client to it.
async fn start(dir: &Path, extra: &[&str]) -> Result<(ServerProcess, Client)> {
    let server = ServerProcess::start(binary(), dir, extra)?;
    let client = client_from_kubeconfig(&server.kubeconfig()).await?;
    Ok((server, client))
}

fn services(client: &Client) -> Api<Service> {
    Api::namespaced(client.clone(), "default")
}

/// A Service of `type_` named `name`, with one TCP port (two for NodePort services, so that a
/// service holds more than one node port).
fn service(name: &str, type_: &str) -> Service {
    let ports = if type_ == "NodePort" {
        json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}])
    } else {
        json!([{"name": "http", "port": 80}])
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": type_, "selector": {"app": name}, "ports": ports}
    }))
    .expect("a valid Service")
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default()
}

fn node_ports(svc: &Service) -> Vec<i32> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ps| ps.iter().filter_map(|p| p.node_port).collect())
        .unwrap_or_default()
}

fn uid(svc: &Service) -> String {
    svc.metadata.uid.clone().unwrap_or_default()
}

fn name(svc: &Service) -> String {
    svc.metadata.name.clone().unwrap_or_default()
}

fn in_range(ip: &str, (net, bits): (Ipv4Addr, u8)) -> bool {
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        return false;
    };
    let mask = u32::MAX << (32 - bits);
    let (ip, net) = (u32::from(ip), u32::from(net));
    let host = ip & !mask;
    ip & mask == net && host != 0 && host != !mask
}

/// Create `names` concurrently, one tokio task each, all through `client`.
async fn create_concurrently(
    client: &Client,
    names: Vec<String>,
    type_: &str,
) -> Result<Vec<Service>> {
    let tasks: Vec<_> = names
        .into_iter()
        .map(|n| {
            let api = services(client);
            let svc = service(&n, type_);
            tokio::spawn(async move { api.create(&PostParams::default(), &svc).await })
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        created.push(t.await?.context("concurrent create")?);
    }
    Ok(created)
}

/// Every service in the default namespace, by name.
async fn all_services(client: &Client) -> Result<BTreeMap<String, Service>> {
    let list = services(client).list(&ListParams::default()).await?;
    Ok(list.items.into_iter().map(|s| (name(&s), s)).collect())
}

/// Fails if two services share a ClusterIP or a node port.
fn assert_no_shared_allocations<'a>(all: impl IntoIterator<Item = &'a Service>) {
    let mut ips: BTreeMap<String, String> = BTreeMap::new();
    let mut ports: BTreeMap<i32, String> = BTreeMap::new();
    for s in all {
        let ip = cluster_ip(s);
        if !ip.is_empty() && ip != "None" {
            if let Some(other) = ips.insert(ip.clone(), name(s)) {
                panic!("{} and {other} share the ClusterIP {ip}", name(s));
            }
        }
        for p in node_ports(s) {
            if let Some(other) = ports.insert(p, name(s)) {
                panic!("{} and {other} share the node port {p}", name(s));
            }
        }
    }
}

fn status_of(e: &kube::Error) -> Option<(u16, String, String)> {
    match e {
        kube::Error::Api(s) => Some((s.code, s.reason.clone(), s.message.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_creates_get_distinct_cluster_ips_in_range_and_node_ports_too(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, client) = start(dir.path(), &[]).await?;

    let kubernetes = services(&client).get("kubernetes").await?;
    assert_eq!(cluster_ip(&kubernetes), KUBERNETES_SERVICE_IP);

    let created = create_concurrently(
        &client,
        (0..200).map(|i| format!("svc-{i}")).collect(),
        "ClusterIP",
    )
    .await?;
    let ips: BTreeSet<String> = created.iter().map(cluster_ip).collect();
    assert_eq!(
        ips.len(),
        200,
        "200 services, {} distinct ClusterIPs",
        ips.len()
    );
    for ip in &ips {
        assert!(in_range(ip, DEFAULT_RANGE), "{ip} is outside 10.96.0.0/12");
        assert_ne!(
            ip, KUBERNETES_SERVICE_IP,
            "a service got the kubernetes service's IP"
        );
    }

    let node_port_services = create_concurrently(
        &client,
        (0..100).map(|i| format!("np-{i}")).collect(),
        "NodePort",
    )
    .await?;
    let mut seen = HashSet::new();
    for s in &node_port_services {
        let ports = node_ports(s);
        assert_eq!(ports.len(), 2, "{} has node ports {ports:?}", name(s));
        for p in ports {
            assert!(
                (30000..=32767).contains(&p),
                "node port {p} is outside 30000-32767"
            );
            assert!(seen.insert(p), "node port {p} handed out twice");
        }
    }

    // What the server stores agrees with what it answered.
    let all = all_services(&client).await?;
    assert_eq!(all.len(), 301);
    for s in created.iter().chain(&node_port_services) {
        assert_eq!(cluster_ip(&all[&name(s)]), cluster_ip(s));
        assert_eq!(node_ports(&all[&name(s)]), node_ports(s));
    }
    assert_no_shared_allocations(all.values());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_has_the_same_services_and_gives_new_services_fresh_ips() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, client) = start(dir.path(), &[]).await?;
    let mut before = create_concurrently(
        &client,
        (0..40).map(|i| format!("a-{i}")).collect(),
        "ClusterIP",
    )
    .await?;
    before.extend(
        create_concurrently(
            &client,
            (0..10).map(|i| format!("n-{i}")).collect(),
            "NodePort",
        )
        .await?,
    );
    let before_all = all_services(&client).await?;

    server.kill();
    let (_server, client) = start(dir.path(), &[]).await?;

    let after = all_services(&client).await?;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before_all.keys().collect::<Vec<_>>()
    );
    for s in &before {
        let again = &after[&name(s)];
        assert_eq!(uid(again), uid(s), "uid of {}", name(s));
        assert_eq!(cluster_ip(again), cluster_ip(s), "ClusterIP of {}", name(s));
        assert_eq!(
            node_ports(again),
            node_ports(s),
            "node ports of {}",
            name(s)
        );
    }

    let new = create_concurrently(
        &client,
        (0..40).map(|i| format!("b-{i}")).collect(),
        "ClusterIP",
    )
    .await?;
    let new_np = create_concurrently(
        &client,
        (0..10).map(|i| format!("m-{i}")).collect(),
        "NodePort",
    )
    .await?;
    let old_ips: HashSet<String> = after.values().map(cluster_ip).collect();
    let old_ports: HashSet<i32> = after.values().flat_map(node_ports).collect();
    for s in new.iter().chain(&new_np) {
        assert!(
            !old_ips.contains(&cluster_ip(s)),
            "{} got {}, held before the restart",
            name(s),
            cluster_ip(s)
        );
        for p in node_ports(s) {
            assert!(
                !old_ports.contains(&p),
                "{} got node port {p}, held before the restart",
                name(s)
            );
        }
    }
    assert_no_shared_allocations(all_services(&client).await?.values());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_create_burst_loses_no_acknowledged_service() -> Result<()> {
    const WRITERS: usize = 16;
    const KILL_AFTER_ACKS: usize = 300;
    let dir = tempfile::tempdir()?;
    let (server, client) = start(dir.path(), &[]).await?;
    let server = Arc::new(Mutex::new(server));

    let acked: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let (enough_tx, mut enough_rx) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let api = services(&client);
            let (acked, count, enough_tx) = (acked.clone(), count.clone(), enough_tx.clone());
            tokio::spawn(async move {
                // Write until the server is gone; the first error ends this writer.
                for i in 0.. {
                    let type_ = if i % 4 == 0 { "NodePort" } else { "ClusterIP" };
                    match api
                        .create(
                            &PostParams::default(),
                            &service(&format!("w{w}-{i}"), type_),
                        )
                        .await
                    {
                        Ok(s) => {
                            acked
                                .lock()
                                .expect("acks")
                                .push((name(&s), cluster_ip(&s), uid(&s)));
                            if count.fetch_add(1, Ordering::SeqCst) + 1 >= KILL_AFTER_ACKS {
                                let _ = enough_tx.send(true);
                            }
                        }
                        Err(_) => return i,
                    }
                }
                unreachable!("a writer only stops on an error")
            })
        })
        .collect();
    drop(enough_tx);

    // The killer: SIGKILL once enough creates were acknowledged, while the writers keep going.
    tokio::time::timeout(Duration::from_secs(120), enough_rx.wait_for(|v| *v))
        .await
        .context("the burst did not reach enough acknowledged creates")??;
    server.lock().expect("server").kill();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .context("a writer hung on a dead server")??;
    }
    let acked = acked.lock().expect("acks").clone();
    assert!(acked.len() >= KILL_AFTER_ACKS);

    let (_server, client) = start(dir.path(), &[]).await?;
    let after = all_services(&client).await?;
    let mut lost = Vec::new();
    for (n, ip, u) in &acked {
        match after.get(n) {
            None => lost.push(n.clone()),
            Some(s) => {
                assert_eq!(&cluster_ip(s), ip, "{n} came back with another ClusterIP");
                assert_eq!(&uid(s), u, "{n} came back with another uid");
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged creates lost after SIGKILL: {lost:?}",
        lost.len()
    );
    // kubernetes + the acknowledged ones + those committed but not acknowledged before the kill.
    eprintln!(
        "{} creates acknowledged before SIGKILL; {} services after restart",
        acked.len(),
        after.len()
    );
    assert_no_shared_allocations(after.values());

    // Creates that were in flight at the kill and committed still hold their IPs and ports: new
    // services never get them.
    let new = create_concurrently(
        &client,
        (0..50).map(|i| format!("after-{i}")).collect(),
        "NodePort",
    )
    .await?;
    let all = all_services(&client).await?;
    assert_eq!(all.len(), after.len() + new.len());
    assert_no_shared_allocations(all.values());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_service_releases_its_ip_and_node_port_for_a_service_that_asks_for_them(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, client) = start(dir.path(), &[]).await?;
    let api = services(&client);
    let first = api
        .create(&PostParams::default(), &service("first", "NodePort"))
        .await?;
    let (ip, ports) = (cluster_ip(&first), node_ports(&first));

    let mut wants = service("second", "NodePort");
    {
        let spec = wants.spec.as_mut().expect("spec");
        spec.cluster_ip = Some(ip.clone());
        for (p, np) in spec.ports.as_mut().expect("ports").iter_mut().zip(&ports) {
            p.node_port = Some(*np);
        }
    }
    let err = api
        .create(&PostParams::default(), &wants)
        .await
        .expect_err("the IP and ports are taken");
    let (code, reason, message) = status_of(&err).context("an API error")?;
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
    assert!(message.contains("already allocated"), "{message}");

    api.delete("first", &DeleteParams::default()).await?;
    let second = api.create(&PostParams::default(), &wants).await?;
    assert_eq!(cluster_ip(&second), ip);
    assert_eq!(node_ports(&second), ports);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_node_port_service_to_cluster_ip_releases_its_node_ports() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, client) = start(dir.path(), &[]).await?;
    let api = services(&client);
    let svc = api
        .create(&PostParams::default(), &service("np", "NodePort"))
        .await?;
    let ports = node_ports(&svc);
    assert_eq!(ports.len(), 2);

    // A merge patch of the type alone: the allocated node ports stay in the object sent, and the
    // server drops them because the new type does not use them (dropTypeDependentFields).
    let changed = api
        .patch(
            "np",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await?;
    assert_eq!(node_ports(&changed), Vec::<i32>::new());
    assert_eq!(
        cluster_ip(&changed),
        cluster_ip(&svc),
        "the ClusterIP is kept"
    );

    let mut wants = service("np2", "NodePort");
    for (p, np) in wants
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("ports")
        .iter_mut()
        .zip(&ports)
    {
        p.node_port = Some(*np);
    }
    let got = api.create(&PostParams::default(), &wants).await?;
    assert_eq!(node_ports(&got), ports);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_cluster_ip_service_to_external_name_releases_its_ip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, client) = start(dir.path(), &[]).await?;
    let api = services(&client);
    let svc = api
        .create(&PostParams::default(), &service("web", "ClusterIP"))
        .await?;
    let ip = cluster_ip(&svc);

    let changed = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ExternalName", "externalName": "example.com", "selector": null}})),
        )
        .await?;
    assert_eq!(
        cluster_ip(&changed),
        "",
        "an ExternalName service has no ClusterIP"
    );

    let mut wants = service("web2", "ClusterIP");
    wants.spec.as_mut().expect("spec").cluster_ip = Some(ip.clone());
    let got = api.create(&PostParams::default(), &wants).await?;
    assert_eq!(cluster_ip(&got), ip);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_ip_range_refuses_the_next_service_until_one_is_deleted() -> Result<()> {
    // 10.0.0.0/28: 14 usable addresses (neither network nor broadcast); 10.0.0.1 is the
    // kubernetes service's and 10.0.0.10 kube-dns's, so 12 are left.
    const FREE: usize = 12;
    let dir = tempfile::tempdir()?;
    let (_server, client) =
        start(dir.path(), &["--service-cluster-ip-range", "10.0.0.0/28"]).await?;
    let api = services(&client);

    // More creates than addresses, all at once: exactly FREE succeed, the rest are refused.
    let tasks: Vec<_> = (0..FREE + 7)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                api.create(
                    &PostParams::default(),
                    &service(&format!("s{i}"), "ClusterIP"),
                )
                .await
            })
        })
        .collect();
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await? {
            Ok(s) => ok.push(s),
            Err(e) => {
                refused.push(status_of(&e).with_context(|| format!("not an API error: {e}"))?)
            }
        }
    }
    assert_eq!(ok.len(), FREE, "refused: {refused:?}");
    for (code, reason, message) in &refused {
        assert_eq!((*code, reason.as_str()), (500, "InternalError"));
        assert_eq!(
            message,
            "Internal error occurred: failed to allocate a serviceIP: range is full"
        );
    }
    let all = all_services(&client).await?;
    assert_eq!(
        all.len(),
        FREE + 1,
        "the kubernetes service and ours in default"
    );
    assert_no_shared_allocations(all.values());
    for s in all.values() {
        assert!(
            in_range(&cluster_ip(s), (Ipv4Addr::new(10, 0, 0, 0), 28)),
            "{}",
            cluster_ip(s)
        );
    }

    let err = api
        .create(&PostParams::default(), &service("one-more", "ClusterIP"))
        .await
        .expect_err("full");
    assert_eq!(status_of(&err).map(|s| s.0), Some(500));

    let freed = cluster_ip(&ok[0]);
    api.delete(&name(&ok[0]), &DeleteParams::default()).await?;
    let got = api
        .create(&PostParams::default(), &service("one-more", "ClusterIP"))
        .await?;
    assert_eq!(
        cluster_ip(&got),
        freed,
        "the only free address is the one just released"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_port_range_refuses_the_next_node_port_service() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, client) =
        start(dir.path(), &["--service-node-port-range", "30000-30005"]).await?;
    let api = services(&client);
    // Three services of two node ports each fill the six ports.
    let created = create_concurrently(
        &client,
        (0..3).map(|i| format!("np{i}")).collect(),
        "NodePort",
    )
    .await?;
    assert_no_shared_allocations(&created);
    let err = api
        .create(&PostParams::default(), &service("np3", "NodePort"))
        .await
        .expect_err("full");
    let (code, _, message) = status_of(&err).context("an API error")?;
    assert_eq!(code, 500);
    assert_eq!(
        message,
        "Internal error occurred: failed to allocate a nodePort: range is full"
    );
    // A ClusterIP service needs no node port and is still created.
    api.create(&PostParams::default(), &service("plain", "ClusterIP"))
        .await?;
    api.delete("np0", &DeleteParams::default()).await?;
    api.create(&PostParams::default(), &service("np3", "NodePort"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_of_one_port_share_one_allocated_node_port() -> Result<()> {
    // kube-apiserver's initNodePorts allocates one node port per port number, so DNS over TCP
    // and UDP on port 53 is reachable on the same node port.
    let dir = tempfile::tempdir()?;
    let (_server, client) = start(dir.path(), &[]).await?;
    let api = services(&client);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"},
        "spec": {"type": "NodePort", "selector": {"app": "dns"}, "ports": [
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"}]}
    }))?;
    let got = api.create(&PostParams::default(), &svc).await?;
    let ports = node_ports(&got);
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert_eq!(
        ports[0], ports[1],
        "TCP and UDP 53 got different node ports: {ports:?}"
    );
    assert_ne!(ports[0], ports[2]);

    // A node port asked for on one of them is used for both.
    let svc2: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns2"},
        "spec": {"type": "NodePort", "selector": {"app": "dns"}, "ports": [
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "dns-udp", "port": 53, "protocol": "UDP", "nodePort": 30053}]}
    }))?;
    let got2 = api.create(&PostParams::default(), &svc2).await?;
    assert_eq!(node_ports(&got2), vec![30053, 30053]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_finalizer_releases_what_the_stored_service_held_and_nothing_else(
) -> Result<()> {
    // The update that removes the last finalizer of a terminating service deletes it. It must
    // release the node ports the stored service holds, not those named in the update: here the
    // update also names another service's node port.
    let dir = tempfile::tempdir()?;
    let (_server, client) = start(dir.path(), &[]).await?;
    let api = services(&client);
    let mut held = service("held", "NodePort");
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let held = api.create(&PostParams::default(), &held).await?;
    let other = api
        .create(&PostParams::default(), &service("other", "NodePort"))
        .await?;
    let (held_ports, other_ports) = (node_ports(&held), node_ports(&other));

    api.delete("held", &DeleteParams::default()).await?;
    let mut last = api.get("held").await?;
    last.metadata.finalizers = None;
    for (p, np) in last
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("ports")
        .iter_mut()
        .zip(&other_ports)
    {
        p.node_port = Some(*np);
    }
    // Kubernetes deletes it without allocating (BeforeUpdate runs, BeginUpdate does not) and
    // releases what the deleted, stored object held: nothing of `other`'s.
    api.replace("held", &PostParams::default(), &last).await?;
    assert!(
        api.get_opt("held").await?.is_none(),
        "held is gone once its finalizer is"
    );

    let mut thief = service("thief", "NodePort");
    for (p, np) in thief
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("ports")
        .iter_mut()
        .zip(&other_ports)
    {
        p.node_port = Some(*np);
    }
    let err = api
        .create(&PostParams::default(), &thief)
        .await
        .expect_err("other still holds its ports");
    assert_eq!(status_of(&err).map(|s| s.0), Some(422));

    let mut heir = service("heir", "NodePort");
    for (p, np) in heir
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("ports")
        .iter_mut()
        .zip(&held_ports)
    {
        p.node_port = Some(*np);
    }
    api.create(&PostParams::default(), &heir)
        .await
        .context("held's ports are free once it is gone")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_without_node_port_allocation_still_holds_the_node_ports_it_asks_for(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, client) = start(dir.path(), &[]).await?;
    let api = services(&client);
    let lb = |name: &str, node_port: Option<i32>| -> Result<Service> {
        let mut port = json!({"name": "http", "port": 80});
        if let Some(np) = node_port {
            port["nodePort"] = json!(np);
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                     "selector": {"app": name}, "ports": [port]}
        }))?)
    };
    let none = api
        .create(&PostParams::default(), &lb("none", None)?)
        .await?;
    assert_eq!(
        node_ports(&none),
        Vec::<i32>::new(),
        "no node port is allocated"
    );
    let asked = api
        .create(&PostParams::default(), &lb("asked", Some(30080))?)
        .await?;
    assert_eq!(node_ports(&asked), vec![30080]);

    // The port is held: asking for it again is refused as for any taken node port.
    let err = api
        .create(&PostParams::default(), &lb("again", Some(30080))?)
        .await
        .expect_err("taken");
    let (code, reason, message) = status_of(&err).context("an API error")?;
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
    assert!(
        message.contains("provided port is already allocated"),
        "{message}"
    );
    let err = api
        .create(&PostParams::default(), &lb("outside", Some(80))?)
        .await
        .expect_err("out of range");
    assert_eq!(status_of(&err).map(|s| s.0), Some(422));
    Ok(())
}
