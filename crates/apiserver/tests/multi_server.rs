//! Several API servers over one store, as in an HA control plane: allocation is decided by store
//! transactions, not by any one server's memory, so concurrent creates through different servers
//! never hand out the same ClusterIP or NodePort, and a watch on one server sees writes made
//! through another.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use switchyard_store::memory::MemoryStore;
use switchyard_store::SharedStore;
use switchyard_testkit::InProcessServer;

fn node_port_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]},
    }))
    .expect("service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_through_two_servers_never_share_an_ip_or_port() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    // A small port range makes collisions between the servers' independent picks likely.
    let narrow =
        |c: &mut switchyard_apiserver::Config| c.service_node_port_range = "30000-30299".into();
    let a = InProcessServer::start_with(store.clone(), narrow)
        .await
        .expect("server a");
    let b = InProcessServer::start_with(store.clone(), narrow)
        .await
        .expect("server b");
    let clients = [
        a.client().await.expect("client a"),
        b.client().await.expect("client b"),
    ];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let api: Api<Service> = Api::namespaced(clients[i % 2].clone(), "default");
        tasks.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &node_port_service(&format!("s{i}")))
                .await
        }));
    }
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let svc = t.await.expect("task").expect("create succeeds");
        let spec = svc.spec.expect("spec");
        assert!(
            ips.insert(spec.cluster_ip.expect("cluster IP")),
            "duplicate cluster IP"
        );
        let port = spec.ports.expect("ports")[0].node_port.expect("node port");
        assert!(ports.insert(port), "duplicate node port {port}");
    }
    assert_eq!((ips.len(), ports.len()), (200, 200));
}

#[tokio::test]
async fn a_watch_on_one_server_sees_writes_made_through_another() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = InProcessServer::start_with(store.clone(), |_| {})
        .await
        .expect("server a");
    let b = InProcessServer::start_with(store.clone(), |_| {})
        .await
        .expect("server b");
    let on_a: Api<Service> = Api::namespaced(a.client().await.expect("client a"), "default");
    let on_b: Api<Service> = Api::namespaced(b.client().await.expect("client b"), "default");
    let rv = on_b
        .list(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut events = on_b
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    on_a.create(&PostParams::default(), &node_port_service("from-a"))
        .await
        .expect("create on a");
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = events.next().await {
            if let Ok(WatchEvent::Added(svc)) = ev {
                return svc.metadata.name;
            }
        }
        None
    })
    .await
    .expect("event within the timeout");
    assert_eq!(seen.as_deref(), Some("from-a"));
}
